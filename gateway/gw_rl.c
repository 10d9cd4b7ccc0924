/* gw_rl.c — per-key and per-customer limits: requests per minute, tokens per
 * minute and requests in flight, exact across gateway instances.
 *
 * Each subject (a key "{k:<id>}", a customer "{c:<id>}": one Cluster hash tag
 * each) has two Redis keys: tg:rl:{x:<id>}, a hash holding the GCRA state of
 * its RPM and TPM buckets (gw_rl_local.c explains the maths; the script below
 * does the same to the unit), and tg:conc:{x:<id>}, a sorted set of the
 * request ids in flight scored by the expiry of their lease.  One script call
 * per subject checks all three limits and takes all or nothing, atomically;
 * the key's and the customer's calls are sent together (one round trip; on a
 * cluster they may go to two masters in parallel), and when one refuses while
 * the other took, the other is given back (UNDO), without waiting.
 *
 * After admission nothing waits on Redis: when the request ends its slot is
 * freed and its TPM charge corrected with the tokens really used (DONE), and
 * every lease_ms/3 the leases of requests still running are renewed (RENEW);
 * these are pipelined with whatever else the loop sends and no reply is
 * awaited.  A gateway that dies stops renewing: its leases expire within
 * lease_ms and the slots free themselves.
 *
 * Redis slow or down: every call has a timer (redis_timeout_ms; hiredis'
 * adapter has none).  Without an answer, the decision is made by the
 * in-process limiter (same GCRA, this instance only), or, with
 * redis_fail_closed, the request is refused (503).  The in-process table
 * mirrors every admission Redis makes, so it is warm when Redis goes away.
 *
 * A call belongs to the caller from gw_rl_check to gw_rl_finish; Redis ops
 * are detached when the call no longer wants them (gw_rl_redis.c owns them
 * until hiredis calls back). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/hiredis.h>

#include "gw-int.h"
#include "tg_mem.h"
#include "tg_str.h"

/* KEYS[1] tg:rl:{x:id} (hash: rd rt rl td tt tl, and one field per quota
 *         lease, "L<tag>.<seq>" = "requests tokens expiry": what the lease
 *         holds, which does not drain), KEYS[2] tg:conc:{x:id} (zset)
 * ARGV op, rpm, tpm, conc, n (tokens), member (request id), lease_ms, and for
 *      take, lfill: quota lease name, requests, tokens and slots wanted beyond
 *            the request's own, index of the lease's first new slot, then the
 *            report: requests and (net) tokens the lease used since its last
 *            report;
 *      lret: lease name, requests given back, slots [from, to) given back
 *            (n tokens given back), the report; the lease keeps [0, from),
 *            its running requests' slots: those an outage lost are made
 *            again (else a lost one below `from` and a live one above it
 *            would leave Redis a running request short);
 *      lrenew: lease name, slots in use, slots [0, to) renewed, the report
 * A report moves what the lease used from its holding to the draining debt;
 * a lease not renewed within lease_ms (its gateway died) counts its holding
 * as used then.  Slots that expired meanwhile (a Redis outage, a stalled
 * gateway): renew and lrenew make again those of running requests (they are
 * in flight, even above the limit: takes then wait for them to end), never
 * a lease's free ones; lrenew answers how many of [0, to) it lacks.
 * -> {ok, why, requests remaining, ms until full, tokens remaining, ms until
 *     full, retry ms (-1 never), in flight, requests, tokens and slots granted
 *     to the lease (lrenew: slots lacking)} */
const char gw_rl_script[] =
    "local h, z = KEYS[1], KEYS[2]\n"
    "local op = ARGV[1]\n"
    "local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "local n, member, lease = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])\n"
    "local W = 60000\n"
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"
    "if op == 'renew' then\n" /* the request runs: its slot, expired or not */
    "  redis.call('ZADD', z, now + lease, member)\n"
    "  redis.call('PEXPIRE', z, lease)\n"
    "  return {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}\n"
    "end\n"
    "local lacking = 0\n"
    "if op == 'lrenew' then\n" /* expired slots: made again for running requests only */
    "  local used, have, lost = tonumber(ARGV[9]), 0, {}\n"
    "  for j = 0, tonumber(ARGV[10]) - 1 do\n"
    "    local m = ARGV[8] .. ':' .. j\n"
    "    local sc = redis.call('ZSCORE', z, m)\n"
    "    if sc and tonumber(sc) > now then redis.call('ZADD', z, now + lease, m); have = have + 1\n"
    "    else lost[#lost + 1] = m end\n"
    "  end\n"
    "  for _, m in ipairs(lost) do\n"
    "    if have < used then redis.call('ZADD', z, now + lease, m); have = have + 1\n"
    "    else lacking = lacking + 1 end\n"
    "  end\n"
    "  redis.call('PEXPIRE', z, lease)\n"
    "end\n"
    "local function idiv(a, b)\n" /* exact floor(a / b), 0 <= a < 2^53, b > 0 */
    "  local q = math.floor(a / b)\n"
    "  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local function cdiv(a, b)\n"
    "  local q = idiv(a, b)\n"
    "  if q * b < a then q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local s = redis.call('HGETALL', h)\n"
    "local f = {}\n"
    "for i = 1, #s, 2 do f[s[i]] = s[i + 1] end\n"
    "local function drain(d, t, l, lim)\n"
    "  d, t, l = tonumber(d) or 0, tonumber(t) or now, tonumber(l) or 0\n"
    "  if lim <= 0 then return 0, now end\n"
    "  if l > 0 and l ~= lim and d > 0 then d = math.ceil(d / l * lim) end\n"
    "  local el = now - t\n"
    "  if el > 0 and d > 0 then\n"
    "    if el * lim >= d then d = 0 else d = d - el * lim end\n"
    "  end\n"
    "  if now > t or d == 0 then t = now end\n"
    "  return d, t\n"
    "end\n"
    "local rd, rt = drain(f.rd, f.rt, f.rl, rpm)\n"
    "local td, tt = drain(f.td, f.tt, f.tl, tpm)\n"
    "local function fits(d, lim, k)\n"
    "  if lim <= 0 then return true end\n"
    "  if k > lim then return false end\n"
    "  return d + k * W <= lim * W\n"
    "end\n"
    "local function charge(d, k)\n"
    "  d = d + k * W\n"
    "  if d < 0 then d = 0 end\n"
    "  return d\n"
    "end\n"
    "local function retry(d, lim, k)\n"
    "  if k > lim then return -1 end\n"
    "  local over = d + k * W - lim * W\n"
    "  if over > 0 then return cdiv(over, lim) end\n"
    "  return 0\n"
    "end\n"
    /* quota leases: what each holds is charged (it never drains while held);
     * one reported used, or one whose gateway stopped renewing, drains */
    "local ls, dirty = {}, {}\n"
    "for k, v in pairs(f) do\n"
    "  if string.byte(k, 1) == 76 then\n"
    "    local a, b, e = string.match(v, '^(%-?%d+) (%-?%d+) (%d+)$')\n"
    "    if e then ls[k] = {tonumber(a), tonumber(b), tonumber(e)} end\n"
    "  end\n"
    "end\n"
    "for k, x in pairs(ls) do\n"
    "  if x[3] <= now then\n"
    "    if rpm > 0 and x[1] > 0 then rd = charge(rd, x[1]) end\n"
    "    if tpm > 0 and x[2] > 0 then td = charge(td, x[2]) end\n"
    "    x[1], x[2] = 0, 0\n"
    "    dirty[k] = x\n"
    "  end\n"
    "end\n"
    "local lname = ARGV[8]\n"
    "local rix = ({take = 13, lfill = 13, lret = 12, lrenew = 11})[op]\n"
    "local lx\n"
    "if lname and rix then\n"
    "  lx = ls[lname] or {0, 0, 0}\n"
    "  ls[lname], dirty[lname] = lx, lx\n"
    "  lx[3] = now + lease\n"
    "  local ur, ut = tonumber(ARGV[rix]) or 0, tonumber(ARGV[rix + 1]) or 0\n"
    "  lx[1], lx[2] = lx[1] - ur, lx[2] - ut\n"
    "  if rpm > 0 then rd = charge(rd, ur) end\n"
    "  if tpm > 0 then td = charge(td, ut) end\n"
    "  if op == 'lret' then lx[1], lx[2] = lx[1] - tonumber(ARGV[9]), lx[2] - n end\n"
    "end\n"
    "local hr, ht = 0, 0\n"
    "for k, x in pairs(ls) do\n"
    "  if x[1] > 0 then hr = hr + x[1] end\n"
    "  if x[2] > 0 then ht = ht + x[2] end\n"
    "end\n"
    "local ok, why, wait, inflight = 1, 0, 0, 0\n"
    "local gr, gt, gc = 0, 0, 0\n"
    "if op == 'take' or op == 'peek' or op == 'lfill' then\n"
    "  if n < 0 then n = 0 end\n"
    "  if conc > 0 then\n"
    "    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)\n"
    "    inflight = redis.call('ZCARD', z)\n"
    "  end\n"
    "  if op == 'lfill' then\n" /* a lease running low asks for more, for no request */
    "  elseif not fits(rd + hr * W, rpm, 1) then ok, why, wait = 0, 1, retry(rd + hr * W, rpm, 1)\n"
    "  elseif not fits(td + ht * W, tpm, n) then ok, why, wait = 0, 2, retry(td + ht * W, tpm, n)\n"
    "  elseif conc > 0 and inflight >= conc then ok, why, wait = 0, 3, 1000 end\n"
    "  if op == 'take' and ok == 1 then\n"
    "    if rpm > 0 then rd = charge(rd, 1) end\n"
    "    if tpm > 0 then td = charge(td, n) end\n"
    "    if conc > 0 then\n"
    "      redis.call('ZADD', z, now + lease, member)\n"
    "      redis.call('PEXPIRE', z, lease)\n"
    "      inflight = inflight + 1\n"
    "    end\n"
    "  end\n"
    /* a quota lease: at most a sixteenth of what is left, so that a limit
     * near its end is decided request by request, here */
    "  if ok == 1 and op ~= 'peek' and lx then\n"
    "      if rpm > 0 then\n"
    "        local room = idiv(rpm * W - math.min(rd + hr * W, rpm * W), W)\n"
    "        if room >= 64 then gr = math.min(tonumber(ARGV[9]), idiv(room, 16)) end\n"
    "        lx[1], hr = lx[1] + gr, hr + gr\n"
    "      end\n"
    "      if tpm > 0 then\n"
    "        local room = idiv(tpm * W - math.min(td + ht * W, tpm * W), W)\n"
    "        if room >= 4096 then gt = math.min(tonumber(ARGV[10]), idiv(room, 16)) end\n"
    "        lx[2], ht = lx[2] + gt, ht + gt\n"
    "      end\n"
    "      if conc > 0 then\n"
    "        local room = conc - math.min(inflight, conc)\n"
    "        if room >= 64 then gc = math.min(tonumber(ARGV[11]), idiv(room, 16)) end\n"
    "        local base = tonumber(ARGV[12])\n"
    "        for j = base, base + gc - 1 do redis.call('ZADD', z, now + lease, ARGV[8] .. ':' .. j) end\n"
    "        inflight = inflight + gc\n"
    "      end\n"
    "  end\n"
    "elseif op == 'lret' then\n" /* the holding went down above; the lease keeps [0, used) */
    "  local used = tonumber(ARGV[10])\n"
    "  for j = used, tonumber(ARGV[11]) - 1 do redis.call('ZREM', z, ARGV[8] .. ':' .. j) end\n"
    "  for j = 0, used - 1 do\n" /* a running request's slot lost in an outage may sit below used */
    "    local m = ARGV[8] .. ':' .. j\n"
    "    local sc = redis.call('ZSCORE', z, m)\n"
    "    if not sc or tonumber(sc) <= now then redis.call('ZADD', z, now + lease, m); redis.call('PEXPIRE', z, lease) end\n"
    "  end\n"
    "elseif op == 'lrenew' then\n"
    "else\n" /* done, undo */
    "  if op == 'undo' and rpm > 0 then rd = charge(rd, -1) end\n"
    "  if tpm > 0 then td = charge(td, -n) end\n"
    "  redis.call('ZREM', z, member)\n"
    "end\n"
    "local rde, tde = rd + hr * W, td + ht * W\n" /* the debt and what leases hold */
    "if op ~= 'peek' then\n"
    "  local ttl, nl = 0, 0\n"
    "  if rpm > 0 and rde > 0 then ttl = cdiv(rde, rpm) end\n"
    "  if tpm > 0 and tde > 0 then local x = cdiv(tde, tpm); if x > ttl then ttl = x end end\n"
    "  for k, x in pairs(ls) do\n"
    "    if dirty[k] and x[1] == 0 and x[2] == 0 then ls[k] = nil; redis.call('HDEL', h, k)\n"
    "    elseif dirty[k] then redis.call('HSET', h, k, string.format('%d %d %d', x[1], x[2], x[3])) end\n"
    "    if ls[k] then nl = nl + 1 end\n"
    "  end\n"
    "  if nl > 0 then ttl = ttl + lease end\n" /* a lease expired then still drains */
    "  if ttl > 0 then\n"
    "    redis.call('HSET', h, 'rd', rd, 'rt', rt, 'rl', rpm, 'td', td, 'tt', tt, 'tl', tpm)\n"
    "    redis.call('PEXPIRE', h, ttl + 1000)\n"
    "  else\n"
    "    redis.call('DEL', h)\n"
    "  end\n"
    "end\n"
    "local rrem, rres, trem, tres = 0, 0, 0, 0\n"
    "if rpm > 0 then\n"
    "  if rpm * W > rde then rrem = idiv(rpm * W - rde, W) end\n"
    "  if rde > 0 then rres = cdiv(rde, rpm) end\n"
    "end\n"
    "if tpm > 0 then\n"
    "  if tpm * W > tde then trem = idiv(tpm * W - tde, W) end\n"
    "  if tde > 0 then tres = cdiv(tde, tpm) end\n"
    "end\n"
    "if op == 'lrenew' then gc = lacking end\n"
    "return {ok, why, rrem, rres, trem, tres, wait, inflight, gr, gt, gc}\n";

static const char *const op_names[] = {"take", "peek", "done", "undo", "renew", "force", "lret", "lrenew", "lfill"};

typedef struct {
    char kind;                 /* 'k' key, 'c' customer */
    int64_t id;
    gw_rl_limits_t lim;
    char hkey[48], zkey[48];
} gw_rl_subj_t;

typedef struct gw_rl_lease gw_rl_lease_t;

struct gw_rl {
    struct event_base *base;
    gw_rl_opts_t o;
    gw_redis_t *redis;         /* NULL: in-process limits only */
    gw_rl_local_t *local;      /* shared by every loop: touched under *mu */
    gw_authfail_t *af;         /* likewise */
    pthread_mutex_t *mu;
    pthread_mutex_t own_mu;
    int owner;                 /* local, af and own_mu are this one's (not borrowed) */
    struct event *tick;        /* lease renewal, sweep of the local table */
    gw_rl_call_t *held;        /* admitted calls holding a Redis lease */
    gw_rl_stats_t st;
    int freeing;
    struct gw_rl_leases *lt;   /* the process's quota leases: the first loop's, under *mu */
    struct gw_rl_leases *own_lt;
};

/* Quota leases by subject, one table per process (every loop admits from it). */
struct gw_rl_leases {
    gw_rl_lease_t *b[256];     /* GW_RL_LEASE_BUCKETS */
    size_t n;
    char tag[24];              /* random: names this process's leases in Redis */
    uint64_t seq;
    pthread_mutex_t *mu;       /* the limiter's lock, which guards the table */
    struct gw_rl *owner;       /* the first loop's limiter: renews the leases, gets the replies */
};

struct gw_rl_call {
    gw_rl_t *rl;
    gw_rl_cb cb;
    void *arg;
    int op;
    int nsub;
    gw_rl_subj_t sub[2];
    int64_t tokens;
    char member[40];
    struct event *timer;       /* &timer_ev: answers at once (active) or at the Redis deadline */
    struct event timer_ev;
    gw_redis_op_t *rop[2];
    int npending;
    int failed;                /* a Redis call came back without a verdict */
    int replied[2];
    gw_rl_verdict_t v[2];
    int answered;              /* the callback ran (or the caller gave up) */
    int admitted;
    int redis_sent[2];         /* a take went to Redis: free the slot there at the end */
    int redis_took[2];         /* Redis took for this subject: correct TPM there too */
    int local_took;            /* the in-process table holds this request */
    int leased;                /* in rl->held */
    gw_rl_lease_t *lease[2];   /* the loop's quota lease of each subject (NULL: none) */
    int lease_took[2];         /* admitted from it, no Redis call */
    int refill[2];             /* the take asked for more for the lease */
    int from_leases;           /* every subject admitted from a lease: answered from the timer */
    gw_rl_call_t *prev, *next;
    gw_rl_result_t res;
};

static int64_t now_ms(void) { return tg_wall_us() / 1000; }

/* ---- Redis calls ----------------------------------------------------------- */

#define GW_RL_MAX_X 7 /* script arguments beyond the first seven */

static gw_redis_op_t *send_opx(gw_rl_t *rl, const gw_rl_subj_t *s, int op, int64_t n, const char *member,
                               int nx, const char *const *x, gw_redis_cb cb, void *arg) {
    char a[5][24];
    snprintf(a[0], sizeof a[0], "%lld", (long long)s->lim.rpm);
    snprintf(a[1], sizeof a[1], "%lld", (long long)s->lim.tpm);
    snprintf(a[2], sizeof a[2], "%lld", (long long)s->lim.conc);
    snprintf(a[3], sizeof a[3], "%lld", (long long)n);
    snprintf(a[4], sizeof a[4], "%lld", (long long)rl->o.lease_ms);
    const char *keys[2] = {s->hkey, s->zkey};
    const char *args[7 + GW_RL_MAX_X] = {op_names[op], a[0], a[1], a[2], a[3], member, a[4]};
    if (nx > GW_RL_MAX_X) nx = GW_RL_MAX_X;
    for (int i = 0; i < nx; i++) args[7 + i] = x[i];
    return gw_redis_eval(rl->redis, 2, keys, 7 + nx, args, cb, arg);
}

static gw_redis_op_t *send_op(gw_rl_t *rl, const gw_rl_subj_t *s, int op, int64_t n, const char *member,
                              gw_redis_cb cb, void *arg) {
    return send_opx(rl, s, op, n, member, 0, NULL, cb, arg);
}

static void on_fire_and_forget(struct redisReply *rep, void *arg) { (void)rep, (void)arg; }

/* Pipelined, no reply awaited; nothing when the node is down (a lease then
 * expires by itself). */
static void send_async(gw_rl_t *rl, const gw_rl_subj_t *s, int op, int64_t n, const char *member) {
    if (rl->redis) send_op(rl, s, op, n, member, on_fire_and_forget, NULL);
}

/* ---- quota leases -----------------------------------------------------------
 * A loop that takes a request's limits from Redis asks for more at the same
 * time: up to GW_RL_LEASE_REQS requests, GW_RL_LEASE_TOKS times the request's
 * tokens and GW_RL_LEASE_SLOTS concurrency slots, of which the script grants
 * at most a sixteenth of what the limit has left, and nothing while less than
 * 64 requests, 4096 tokens or 64 slots are left (so a small limit, or one
 * close to its end, is decided request by request in Redis, exactly).  What is
 * granted is charged in Redis at once: the loop then admits requests from its
 * lease without a round trip, and every instance together never passes the
 * limit.  Leased slots are zset members "<lease>:<j>" renewed with the
 * requests' leases, so they too expire when the gateway dies.  A lease idle
 * GW_RL_LEASE_IDLE_MS gives back what it did not use.
 *
 * What a lease holds is a field of the subject's hash that does not drain:
 * only what the lease reports used (with its next fill, renewal or return;
 * ur/ut below) moves to the draining debt, so the bucket never refills for
 * units the lease can still hand out, and every window holds at most what
 * GCRA allows (gateway/README.md "Quota leases").  A lease that stops
 * renewing (its gateway died) counts as used when it expires.  The cost: while
 * another instance holds unused grant, a request may be refused that
 * per-request decisions would have passed (at most a sixteenth of the room
 * per instance, for at most GW_RL_LEASE_IDLE_MS). */

#define GW_RL_LEASE_REQS 256
#define GW_RL_LEASE_TOKS 256
#define GW_RL_LEASE_SLOTS 64
#define GW_RL_LEASE_IDLE_MS 1000
#define GW_RL_LEASE_BUCKETS 256

struct gw_rl_lease {
    struct gw_rl_lease *next;  /* in its bucket */
    gw_rl_subj_t sub;          /* subject and the limits the grant was made under */
    char name[48];
    int64_t req, tok;          /* granted, not used */
    int64_t ur, ut;            /* used since the last report to Redis: requests, tokens (net) */
    int64_t held, used;        /* slots "<name>:0" .. held-1; used of them by requests in flight */
    int64_t lacking;           /* of the free ones (held - used), how many Redis no longer has (expired in
                                  an outage): never admitted on; the last renewal's answer */
    int renewing;              /* renewals awaiting their answer (the lease outlives them) */
    int64_t refs;              /* requests in flight admitted from it */
    int refilling;             /* a take asking for more is in flight (its new slots start at `held`) */
    struct gw_rl_leases *lt;   /* its table (the lock) */
    int granted;               /* the last grant gave something (else no background fill) */
    int64_t last_ms;
    gw_rl_verdict_t seen;      /* Redis's last answer for the subject (headers) */
};

static unsigned lease_bucket(char kind, int64_t id) {
    uint64_t h = ((uint64_t)id * 0x9E3779B97F4A7C15ULL) ^ (uint64_t)(unsigned char)kind;
    return (unsigned)(h >> 56) % GW_RL_LEASE_BUCKETS;
}

static gw_rl_lease_t *lease_find(gw_rl_t *rl, const gw_rl_subj_t *s, int create) {
    unsigned b = lease_bucket(s->kind, s->id);
    for (gw_rl_lease_t *l = rl->lt->b[b]; l; l = l->next)
        if (l->sub.kind == s->kind && l->sub.id == s->id) return l;
    if (!create) return NULL;
    gw_rl_lease_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->sub = *s;
    l->lt = rl->lt;
    snprintf(l->name, sizeof l->name, "L%s.%llu", rl->lt->tag, (unsigned long long)++rl->lt->seq);
    l->last_ms = now_ms();
    l->next = rl->lt->b[b];
    rl->lt->b[b] = l;
    rl->lt->n++;
    return l;
}

/* The lease's use since its last report, as two script arguments; counted
 * as reported from now (a call that never reaches Redis leaves the units in
 * the holding there: counted, never lost). */
static void lease_report(gw_rl_lease_t *l, char r[2][24]) {
    snprintf(r[0], sizeof r[0], "%lld", (long long)l->ur);
    snprintf(r[1], sizeof r[1], "%lld", (long long)l->ut);
    l->ur = l->ut = 0;
}

/* The report was not sent: it goes with the next one. */
static void lease_unreport(gw_rl_lease_t *l, char r[2][24]) {
    l->ur += strtoll(r[0], NULL, 10);
    l->ut += strtoll(r[1], NULL, 10);
}

/* Give back what the lease holds unused (requests, tokens, free slots). */
static void lease_return(gw_rl_t *rl, gw_rl_lease_t *l) {
    int64_t req = l->sub.lim.rpm > 0 ? l->req : 0, tok = l->sub.lim.tpm > 0 ? l->tok : 0; /* tok < 0: a debt */
    if (req > 0 || tok != 0 || l->held > l->used || l->ur != 0 || l->ut != 0) {
        char a[3][24], r[2][24];
        snprintf(a[0], sizeof a[0], "%lld", (long long)req);
        snprintf(a[1], sizeof a[1], "%lld", (long long)l->used);
        snprintf(a[2], sizeof a[2], "%lld", (long long)l->held);
        lease_report(l, r);
        const char *x[6] = {l->name, a[0], a[1], a[2], r[0], r[1]};
        if (rl->redis && !send_opx(rl, &l->sub, GW_RL_OP_LRET, tok, "-", 6, x, on_fire_and_forget, NULL))
            lease_unreport(l, r); /* the node is down: the holding expires there, counted as used */
    }
    l->req = 0;
    l->tok = 0;
    l->held = l->used;
    l->lacking = 0; /* no free slot left; the running ones' are [0, used), made again by the lret */
}

/* lease_return, but slots only when no refill is in flight (its new slots are
 * numbered from `held`). */
static void lease_return_safe(gw_rl_t *rl, gw_rl_lease_t *l) {
    if (!l->refilling) {
        lease_return(rl, l);
        return;
    }
    int64_t held = l->held, lacking = l->lacking;
    l->held = l->used; /* no slots given back now */
    int64_t keep = held;
    lease_return(rl, l);
    l->held = keep;
    l->lacking = lacking; /* the free slots stay, and so does what Redis lacks of them */
}

static int same_limits(const gw_rl_limits_t *a, const gw_rl_limits_t *b) {
    return a->rpm == b->rpm && a->tpm == b->tpm && a->conc == b->conc;
}

/* Admit one request of n tokens from the lease, or 0 (ask Redis). */
static int lease_take(gw_rl_t *rl, gw_rl_lease_t *l, const gw_rl_subj_t *s, int64_t n) {
    if (!same_limits(&l->sub.lim, &s->lim)) { /* the limits changed: start again under the new ones */
        lease_return_safe(rl, l);
        l->sub.lim = s->lim;
        memset(&l->seen, 0, sizeof l->seen);
        return 0;
    }
    if (l->sub.lim.rpm > 0 && l->req < 1) return 0;
    if (l->sub.lim.tpm > 0 && l->tok < n) return 0;
    if (l->sub.lim.conc > 0 && l->held - l->used - l->lacking < 1) return 0;
    if (l->sub.lim.rpm > 0) l->req--, l->ur++;
    if (l->sub.lim.tpm > 0) l->tok -= n, l->ut += n;
    if (l->sub.lim.conc > 0) l->used++;
    l->refs++;
    l->last_ms = now_ms();
    return 1;
}

/* A request admitted from the lease ended: its slot comes back to the lease,
 * and the tokens it did not use (back < 0: it used more than it was charged;
 * the lease owes them, paid from its next grant or when it is given back). */
static void lease_put(gw_rl_lease_t *l, int64_t back) {
    if (l->sub.lim.conc > 0 && l->used > 0) l->used--;
    if (l->sub.lim.tpm > 0) l->tok += back, l->ut -= back;
    l->refs--;
    l->last_ms = now_ms();
}

/* The script granted the lease more (with a take for this subject). */
static void lease_grant(gw_rl_lease_t *l, const gw_rl_subj_t *s, const gw_rl_verdict_t *v) {
    if (!same_limits(&l->sub.lim, &s->lim)) return; /* granted under limits the lease no longer has: expire */
    l->req += v->gr;
    l->tok += v->gt;
    l->held += v->gc;
    l->granted = v->gr > 0 || v->gt > 0 || v->gc > 0;
    l->seen = *v;
    l->last_ms = now_ms();
}

/* A request admitted from the lease was refused by another subject. */
static void lease_unput(gw_rl_lease_t *l, int64_t n) {
    if (l->sub.lim.rpm > 0) l->req++, l->ur--;
    if (l->sub.lim.tpm > 0) l->tok += n, l->ut -= n;
    if (l->sub.lim.conc > 0 && l->used > 0) l->used--;
    l->refs--;
}

static int parse_verdict(const redisReply *rep, gw_rl_verdict_t *v);

/* Slots are asked for only when the free ones run low: each is a zset member
 * to add, renew and remove. */
static int lease_slots_wanted(const gw_rl_lease_t *l) {
    return l->held - l->used - l->lacking < GW_RL_LEASE_SLOTS / 4 ? GW_RL_LEASE_SLOTS : 0;
}

static void on_fill(struct redisReply *rep, void *arg) {
    gw_rl_lease_t *l = arg;
    gw_rl_verdict_t v;
    pthread_mutex_lock(l->lt->mu);
    if (parse_verdict(rep, &v) == GW_OK && v.ok) lease_grant(l, &l->sub, &v);
    l->refilling = 0;
    pthread_mutex_unlock(l->lt->mu);
}

/* After a request took from it: a lease down to a quarter of what it asks
 * for is filled again in the background, so requests rarely find it empty
 * (and wait for Redis). */
static void lease_low_water(gw_rl_t *rl, gw_rl_lease_t *l, int64_t n) {
    if (l->refilling || !rl->redis) return;
    int low = (l->sub.lim.rpm > 0 && l->req < GW_RL_LEASE_REQS / 4) ||
              (l->sub.lim.tpm > 0 && l->tok < GW_RL_LEASE_TOKS / 4 * (n > 0 ? n : 1)) ||
              (l->sub.lim.conc > 0 && l->held - l->used - l->lacking < GW_RL_LEASE_SLOTS / 4);
    if (!low || !l->granted) return; /* the last grant gave nothing (a small limit, or near its end) */
    char a[4][24], r[2][24];
    snprintf(a[0], sizeof a[0], "%d", GW_RL_LEASE_REQS);
    snprintf(a[1], sizeof a[1], "%lld", (long long)(GW_RL_LEASE_TOKS * (n > 0 ? n : 1)));
    snprintf(a[2], sizeof a[2], "%d", lease_slots_wanted(l));
    snprintf(a[3], sizeof a[3], "%lld", (long long)l->held);
    lease_report(l, r);
    const char *x[7] = {l->name, a[0], a[1], a[2], a[3], r[0], r[1]};
    if (send_opx(rl, &l->sub, GW_RL_OP_LFILL, 0, "-", 7, x, on_fill, l)) l->refilling = 1;
    else lease_unreport(l, r);
}

/* The renewal's answer: how many of the lease's slots Redis lacks (expired
 * while it could not renew: an outage, a stall).  Those of running requests
 * were made again; the free ones lacking are not admitted on (slots are
 * interchangeable, so a count is enough) until the lease gives its free
 * slots back: they are never made again (a grant needs room, a renewal
 * none). */
static void on_renew(struct redisReply *rep, void *arg) {
    gw_rl_lease_t *l = arg;
    gw_rl_verdict_t v;
    pthread_mutex_lock(l->lt->mu);
    l->renewing--;
    if (parse_verdict(rep, &v) == GW_OK) {
        int64_t free_slots = l->held - l->used > 0 ? l->held - l->used : 0;
        int64_t lacking = v.gc < 0 ? 0 : v.gc < free_slots ? v.gc : free_slots;
        if (lacking > l->lacking) l->lt->owner->st.lease_slots_lost += (uint64_t)(lacking - l->lacking);
        l->lacking = lacking;
    }
    pthread_mutex_unlock(l->lt->mu);
}

/* Renew the leases' slots; give back idle ones' grants and forget them. */
static void lease_tick(gw_rl_t *rl) {
    int64_t now = now_ms();
    for (int b = 0; b < GW_RL_LEASE_BUCKETS; b++)
        for (gw_rl_lease_t **pp = &rl->lt->b[b]; *pp;) {
            gw_rl_lease_t *l = *pp;
            if (now - l->last_ms >= GW_RL_LEASE_IDLE_MS) lease_return_safe(rl, l);
            /* renew the slots and the holding (else it expires in Redis, counted as used), and report */
            if ((l->held > 0 || l->req != 0 || l->tok != 0 || l->ur != 0 || l->ut != 0 || l->refs > 0) && rl->redis) {
                char a[2][24], r[2][24];
                snprintf(a[0], sizeof a[0], "%lld", (long long)l->used);
                snprintf(a[1], sizeof a[1], "%lld", (long long)l->held);
                lease_report(l, r);
                const char *x[5] = {l->name, a[0], a[1], r[0], r[1]};
                if (send_opx(rl, &l->sub, GW_RL_OP_LRENEW, 0, "-", 5, x, on_renew, l)) l->renewing++;
                else lease_unreport(l, r);
            }
            if (l->refs == 0 && l->held == 0 && l->req == 0 && l->tok == 0 && l->ur == 0 && l->ut == 0 &&
                !l->refilling && !l->renewing) {
                *pp = l->next;
                free(l);
                rl->lt->n--;
            } else {
                pp = &l->next;
            }
        }
}

static void lease_free_all(gw_rl_t *rl) {
    for (int b = 0; b < GW_RL_LEASE_BUCKETS; b++)
        while (rl->lt->b[b]) {
            gw_rl_lease_t *l = rl->lt->b[b];
            rl->lt->b[b] = l->next;
            lease_return(rl, l);
            free(l);
        }
}

/* ---- answers --------------------------------------------------------------- */

static void lease_link(gw_rl_call_t *c) {
    gw_rl_t *rl = c->rl;
    c->leased = 1;
    c->prev = NULL;
    c->next = rl->held;
    if (rl->held) rl->held->prev = c;
    rl->held = c;
}

static void lease_unlink(gw_rl_call_t *c) {
    if (!c->leased) return;
    if (c->prev) c->prev->next = c->next;
    else c->rl->held = c->next;
    if (c->next) c->next->prev = c->prev;
    c->leased = 0;
}

/* Headers: for each of requests and tokens the subject with the least room;
 * a refusal: the first subject (the key before its customer) that refused.
 * Room is Redis's (which counts every lease's holding as taken) plus what
 * this process's lease holds, so at most the limit; the cap only covers a
 * grant that reached the lease after Redis answered another call. */
static void build_result(gw_rl_call_t *c, const gw_rl_verdict_t *v) {
    gw_rl_result_t *r = &c->res;
    int haver = 0, havet = 0;
    for (int i = 0; i < c->nsub; i++) {
        const gw_rl_limits_t *l = &c->sub[i].lim;
        int64_t rrem = v[i].rrem < l->rpm ? v[i].rrem : l->rpm;
        int64_t trem = v[i].trem < l->tpm ? v[i].trem : l->tpm;
        if (l->rpm > 0 && (!haver || rrem < r->remaining)) {
            haver = 1;
            r->limit = l->rpm;
            r->remaining = rrem;
            r->reset_ms = v[i].rreset;
        }
        if (l->tpm > 0 && (!havet || trem < r->tpm_remaining)) {
            havet = 1;
            r->tpm_limit = l->tpm;
            r->tpm_remaining = trem;
            r->tpm_reset_ms = v[i].treset;
        }
    }
    for (int i = 0; i < c->nsub; i++)
        if (!v[i].ok) {
            r->why = v[i].why;
            r->customer = c->sub[i].kind == 'c';
            r->retry_ms = v[i].retry;
            r->conc_limit = c->sub[i].lim.conc;
            break;
        }
}

static void answer(gw_rl_call_t *c, int verdict) {
    if (c->answered) return;
    c->answered = 1;
    if (c->timer) event_del(c->timer);
    c->cb(verdict, &c->res, c->arg);
}

/* Give back to their leases the subjects admitted from them (the request
 * is refused, or decided again by the in-process limiter). */
static void lease_unput_call(gw_rl_call_t *c) {
    for (int i = 0; i < c->nsub; i++)
        if (c->lease_took[i]) {
            lease_unput(c->lease[i], c->tokens);
            c->lease_took[i] = 0;
        }
}

/* The call no longer waits for its refills' answers. */
static void lease_refill_end(gw_rl_call_t *c) {
    for (int i = 0; i < c->nsub; i++)
        if (c->refill[i]) {
            if (c->lease[i]) c->lease[i]->refilling = 0;
            c->refill[i] = 0;
        }
}

/* The in-process limiter decides (Redis did not answer, or is not used). */
static void decide_local(gw_rl_call_t *c) {
    gw_rl_t *rl = c->rl;
    gw_rl_verdict_t v[2];
    int64_t now = now_ms();
    int ok = 1;
    memset(v, 0, sizeof v);
    pthread_mutex_lock(rl->mu);
    for (int i = 0; i < c->nsub; i++) {
        gw_rl_local_op(rl->local, GW_RL_OP_PEEK, c->sub[i].kind, c->sub[i].id, &c->sub[i].lim, c->tokens, now, &v[i]);
        ok &= v[i].ok;
    }
    if (c->op == GW_RL_OP_TAKE && ok) {
        for (int i = 0; i < c->nsub; i++)
            gw_rl_local_op(rl->local, GW_RL_OP_FORCE, c->sub[i].kind, c->sub[i].id, &c->sub[i].lim, c->tokens, now,
                           &v[i]);
        c->local_took = 1;
        c->admitted = 1;
    }
    pthread_mutex_unlock(rl->mu);
    c->res.local = 1;
    build_result(c, v);
    answer(c, ok ? GW_RL_ALLOW : GW_RL_LIMITED);
}

/* Every Redis call has answered, or the timer fired. */
static void decide(gw_rl_call_t *c, int timed_out) {
    gw_rl_t *rl = c->rl;
    for (int i = 0; i < c->nsub; i++)
        if (c->rop[i]) {
            gw_redis_op_detach(c->rop[i], timed_out);
            c->rop[i] = NULL;
        }
    int complete = !c->failed && !timed_out;
    for (int i = 0; i < c->nsub; i++) complete &= c->replied[i];
    if (complete) {
        int ok = 1;
        for (int i = 0; i < c->nsub; i++) ok &= c->v[i].ok;
        if (c->op == GW_RL_OP_TAKE) {
            if (ok) {
                int64_t now = now_ms();
                int lease = 0;
                pthread_mutex_lock(rl->mu);
                for (int i = 0; i < c->nsub; i++) {
                    c->redis_took[i] = c->redis_sent[i];
                    lease |= c->redis_sent[i] && c->sub[i].lim.conc > 0;
                    gw_rl_local_op(rl->local, GW_RL_OP_FORCE, c->sub[i].kind, c->sub[i].id, &c->sub[i].lim,
                                   c->tokens, now, NULL); /* the mirror */
                }
                pthread_mutex_unlock(rl->mu);
                c->local_took = 1;
                c->admitted = 1;
                if (lease) lease_link(c);
            } else {
                for (int i = 0; i < c->nsub; i++) /* give back what the other took */
                    if (c->v[i].ok && c->redis_sent[i]) send_async(rl, &c->sub[i], GW_RL_OP_UNDO, c->tokens, c->member);
                memset(c->redis_sent, 0, sizeof c->redis_sent);
                pthread_mutex_lock(rl->mu);
                lease_unput_call(c);
                pthread_mutex_unlock(rl->mu);
            }
        }
        pthread_mutex_lock(rl->mu);
        for (int i = 0; i < c->nsub; i++) { /* what this process's lease holds unused is still the client's */
            gw_rl_lease_t *l = c->lease_took[i] ? NULL : lease_find(rl, &c->sub[i], 0);
            if (l && same_limits(&l->sub.lim, &c->sub[i].lim)) {
                c->v[i].rrem += l->req;
                c->v[i].trem += l->tok > 0 ? l->tok : 0;
            }
        }
        pthread_mutex_unlock(rl->mu);
        build_result(c, c->v);
        answer(c, ok ? GW_RL_ALLOW : GW_RL_LIMITED);
        return;
    }
    rl->st.redis_errors++;
    pthread_mutex_lock(rl->mu);
    lease_refill_end(c);
    if (c->op == GW_RL_OP_TAKE) lease_unput_call(c); /* the in-process limiter decides for every subject */
    pthread_mutex_unlock(rl->mu);
    if (c->op == GW_RL_OP_TAKE) {
        for (int i = 0; i < c->nsub; i++) /* a partial take: give it back */
            if (c->replied[i] && c->v[i].ok && c->redis_sent[i]) {
                send_async(rl, &c->sub[i], GW_RL_OP_UNDO, c->tokens, c->member);
                c->redis_sent[i] = 0;
            }
        if (rl->o.fail_closed) {
            rl->st.fail_closed++;
            answer(c, GW_RL_UNAVAILABLE);
            return;
        }
        rl->st.local_decisions++;
    }
    decide_local(c);
}

static int parse_verdict(const redisReply *rep, gw_rl_verdict_t *v) {
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 11) return GW_ERROR;
    long long x[11];
    for (int i = 0; i < 11; i++) {
        if (rep->element[i]->type != REDIS_REPLY_INTEGER) return GW_ERROR;
        x[i] = rep->element[i]->integer;
    }
    v->ok = x[0] != 0;
    v->why = (int)x[1];
    v->rrem = x[2];
    v->rreset = x[3];
    v->trem = x[4];
    v->treset = x[5];
    v->retry = x[6];
    v->inflight = x[7];
    v->gr = x[8];
    v->gt = x[9];
    v->gc = x[10];
    return GW_OK;
}

static void on_reply_i(gw_rl_call_t *c, int i, struct redisReply *rep) {
    c->rop[i] = NULL;
    c->npending--;
    if (parse_verdict(rep, &c->v[i]) == GW_OK) {
        c->replied[i] = 1;
        if (c->refill[i] && c->lease[i]) {
            pthread_mutex_lock(c->rl->mu);
            lease_grant(c->lease[i], &c->sub[i], &c->v[i]);
            pthread_mutex_unlock(c->rl->mu);
        }
    } else {
        c->failed = 1;
    }
    if (c->refill[i] && c->lease[i]) {
        pthread_mutex_lock(c->rl->mu);
        c->lease[i]->refilling = 0;
        pthread_mutex_unlock(c->rl->mu);
    }
    c->refill[i] = 0;
    if (c->npending == 0 && !c->answered) decide(c, 0);
}

static void on_reply0(struct redisReply *rep, void *arg) { on_reply_i(arg, 0, rep); }
static void on_reply1(struct redisReply *rep, void *arg) { on_reply_i(arg, 1, rep); }

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    gw_rl_call_t *c = arg;
    if (c->answered) return;
    if (c->from_leases) answer(c, GW_RL_ALLOW);
    else if (c->npending > 0 || c->failed) decide(c, c->npending > 0);
    else if (!c->rl->redis || c->nsub == 0) decide_local(c);
    else decide(c, 0);
}

/* ---- public ---------------------------------------------------------------- */

static void subj_init(gw_rl_subj_t *s, char kind, int64_t id, const gw_rl_limits_t *lim) {
    s->kind = kind;
    s->id = id;
    s->lim = *lim;
    /* "tg:rl:{k:ID}" and "tg:conc:{k:ID}", as "%c:%lld" writes them (no printf per request) */
    char n[TG_STR_I64 + 4];
    n[0] = '{', n[1] = kind, n[2] = ':';
    size_t len = 3 + tg_str_i64(n + 3, (long long)id);
    n[len++] = '}';
    memcpy(s->hkey, "tg:rl:", 6);
    memcpy(s->hkey + 6, n, len);
    s->hkey[6 + len] = '\0';
    memcpy(s->zkey, "tg:conc:", 8);
    memcpy(s->zkey + 8, n, len);
    s->zkey[8 + len] = '\0';
}

static int limits_set(const gw_rl_limits_t *l) { return l && (l->rpm > 0 || l->tpm > 0 || l->conc > 0); }

gw_rl_call_t *gw_rl_check(gw_rl_t *rl, int op, int64_t key_id, const gw_rl_limits_t *key_lim, int64_t cust_id,
                          const gw_rl_limits_t *cust_lim, int64_t tokens, const char *member, gw_rl_cb cb,
                          void *arg) {
    gw_rl_call_t *c = tg_zalloc(sizeof *c);
    if (!c) return NULL;
    c->rl = rl;
    c->cb = cb;
    c->arg = arg;
    c->op = op == GW_RL_OP_PEEK ? GW_RL_OP_PEEK : GW_RL_OP_TAKE;
    c->tokens = tokens < 0 ? 0 : tokens;
    tg_str_copy(c->member, sizeof c->member, member);
    if (limits_set(key_lim)) subj_init(&c->sub[c->nsub++], 'k', key_id, key_lim);
    if (limits_set(cust_lim)) subj_init(&c->sub[c->nsub++], 'c', cust_id, cust_lim);
    if (evtimer_assign(&c->timer_ev, rl->base, on_timer, c) != 0) {
        free(c);
        return NULL;
    }
    c->timer = &c->timer_ev;
    struct timeval tv = {0, 0};
    int up = rl->redis != NULL && c->nsub > 0;
    for (int i = 0; up && i < c->nsub; i++) up = gw_redis_slot_up(rl->redis, c->sub[i].hkey);
    int need = (1 << c->nsub) - 1; /* subjects Redis must decide */
    if (up && c->op == GW_RL_OP_TAKE) {
        pthread_mutex_lock(rl->mu);
        for (int i = 0; i < c->nsub; i++) {
            c->lease[i] = lease_find(rl, &c->sub[i], 1);
            if (c->lease[i] && lease_take(rl, c->lease[i], &c->sub[i], c->tokens)) {
                c->lease_took[i] = 1;
                lease_low_water(rl, c->lease[i], c->tokens);
                need &= ~(1 << i);
                gw_rl_verdict_t *v = &c->v[i]; /* what the headers say: Redis's last answer and the lease */
                *v = c->lease[i]->seen;
                v->ok = 1;
                v->why = 0;
                v->rrem += c->lease[i]->req;
                v->trem += c->lease[i]->tok > 0 ? c->lease[i]->tok : 0;
                c->replied[i] = 1;
            }
        }
        if (!need) { /* every subject from the process's leases: no round trip */
            int64_t now = now_ms();
            for (int i = 0; i < c->nsub; i++)
                gw_rl_local_op(rl->local, GW_RL_OP_FORCE, c->sub[i].kind, c->sub[i].id, &c->sub[i].lim, c->tokens,
                               now, NULL); /* the mirror */
            pthread_mutex_unlock(rl->mu);
            c->local_took = 1;
            c->admitted = 1;
            c->from_leases = 1;
            rl->st.lease_admits++;
            build_result(c, c->v);
            event_active(c->timer, EV_TIMEOUT, 1); /* answered in this loop iteration, no timer heap */
            return c;
        }
        pthread_mutex_unlock(rl->mu);
    }
    if (up) {
        static const gw_redis_cb cbs[2] = {on_reply0, on_reply1};
        for (int i = 0; i < c->nsub; i++) {
            if (!(need & (1 << i))) continue;
            gw_rl_lease_t *l = c->op == GW_RL_OP_TAKE ? c->lease[i] : NULL;
            pthread_mutex_lock(rl->mu);
            int refill = l && !l->refilling;
            if (refill) l->refilling = c->refill[i] = 1; /* its new slots are numbered from held */
            int64_t base = l ? l->held : 0;
            int slots = l ? lease_slots_wanted(l) : 0;
            char r[2][24];
            if (refill) lease_report(l, r);
            pthread_mutex_unlock(rl->mu);
            if (refill) { /* ask for more for the lease at the same time */
                char a[4][24];
                snprintf(a[0], sizeof a[0], "%d", GW_RL_LEASE_REQS);
                snprintf(a[1], sizeof a[1], "%lld", (long long)(GW_RL_LEASE_TOKS * (c->tokens > 0 ? c->tokens : 1)));
                snprintf(a[2], sizeof a[2], "%d", slots);
                snprintf(a[3], sizeof a[3], "%lld", (long long)base);
                const char *x[7] = {l->name, a[0], a[1], a[2], a[3], r[0], r[1]};
                c->rop[i] = send_opx(rl, &c->sub[i], c->op, c->tokens, c->member, 7, x, cbs[i], c);
                if (!c->rop[i]) {
                    pthread_mutex_lock(rl->mu);
                    l->refilling = c->refill[i] = 0;
                    lease_unreport(l, r);
                    pthread_mutex_unlock(rl->mu);
                }
            } else {
                c->rop[i] = send_op(rl, &c->sub[i], c->op, c->tokens, c->member, cbs[i], c);
            }
            if (c->rop[i]) {
                c->npending++;
                c->redis_sent[i] = c->op == GW_RL_OP_TAKE;
            } else {
                c->failed = 1;
            }
        }
        if (c->npending > 0) {
            tv.tv_sec = rl->o.timeout_ms / 1000;
            tv.tv_usec = (rl->o.timeout_ms % 1000) * 1000;
        }
    } else if (rl->redis && c->nsub > 0) {
        c->failed = 1; /* a node is down: decided at once, counted as a Redis error */
    }
    event_add(c->timer, &tv);
    return c;
}

void gw_rl_finish(gw_rl_call_t *c, int64_t used_tokens) {
    if (!c) return;
    gw_rl_t *rl = c->rl;
    c->answered = 1;
    for (int i = 0; i < c->nsub; i++)
        if (c->rop[i]) {
            gw_redis_op_detach(c->rop[i], 0);
            c->rop[i] = NULL;
        }
    int64_t back = c->admitted && used_tokens >= 0 ? c->tokens - used_tokens : 0;
    pthread_mutex_lock(rl->mu);
    lease_refill_end(c);
    for (int i = 0; i < c->nsub; i++) {
        if (c->lease_took[i] && c->admitted) lease_put(c->lease[i], back);
        else if (c->lease_took[i]) lease_unput(c->lease[i], c->tokens); /* never answered */
    }
    pthread_mutex_unlock(rl->mu);
    for (int i = 0; i < c->nsub; i++) {
        if (c->lease_took[i]) continue;
        else if (c->redis_took[i]) send_async(rl, &c->sub[i], GW_RL_OP_DONE, back, c->member);
        else if (c->redis_sent[i]) send_async(rl, &c->sub[i], GW_RL_OP_DONE, 0, c->member); /* a slot, maybe */
    }
    if (c->local_took) {
        int64_t now = now_ms();
        pthread_mutex_lock(rl->mu);
        for (int i = 0; i < c->nsub; i++)
            gw_rl_local_op(rl->local, GW_RL_OP_DONE, c->sub[i].kind, c->sub[i].id, &c->sub[i].lim, back, now, NULL);
        pthread_mutex_unlock(rl->mu);
    }
    lease_unlink(c);
    event_del(c->timer);
    free(c);
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    gw_rl_t *rl = arg;
    if (rl->own_lt) { /* the first loop keeps the process's leases */
        pthread_mutex_lock(rl->mu);
        lease_tick(rl);
        pthread_mutex_unlock(rl->mu);
    }
    for (gw_rl_call_t *c = rl->held; c; c = c->next)
        for (int i = 0; i < c->nsub; i++)
            if (c->redis_took[i] && c->sub[i].lim.conc > 0) send_async(rl, &c->sub[i], GW_RL_OP_RENEW, 0, c->member);
    if (rl->owner) {
        pthread_mutex_lock(rl->mu);
        gw_rl_local_sweep(rl->local, now_ms());
        pthread_mutex_unlock(rl->mu);
    }
}

gw_rl_t *gw_rl_new(struct event_base *base, const gw_rl_opts_t *o, char *err, size_t errlen) {
    gw_rl_t *rl = calloc(1, sizeof *rl);
    if (!rl) goto oom;
    rl->base = base;
    rl->o = *o;

    rl->o.redis = NULL;
    if (rl->o.lease_ms < 1000) rl->o.lease_ms = 1000;
    if (rl->o.timeout_ms < 1) rl->o.timeout_ms = 1;
    if (o->share) { /* one process, one in-process limit: the loops share the tables */
        rl->lt = o->share->lt;
        rl->local = o->share->local;
        rl->af = o->share->af;
        rl->mu = o->share->mu;
    } else {
        pthread_mutex_init(&rl->own_mu, NULL);
        rl->mu = &rl->own_mu;
        rl->owner = 1;
        if (!(rl->lt = rl->own_lt = calloc(1, sizeof *rl->lt))) goto oom;
        rl->lt->mu = rl->mu;
        rl->lt->owner = rl;
        unsigned char r[8];
        gw_uuid_random_bytes(r, sizeof r);
        for (int i = 0; i < 8; i++) snprintf(rl->lt->tag + 2 * i, 3, "%02x", r[i]);
        if (!(rl->local = gw_rl_local_new())) goto oom;
        if (o->auth_fail_limit > 0 &&
            !(rl->af = gw_authfail_new(o->auth_fail_limit, o->auth_fail_window_ms, o->auth_fail_block_ms,
                                       o->auth_fail_table > 0 ? (size_t)o->auth_fail_table : 16384)))
            goto oom;
    }
    if (o->redis && *o->redis && !(rl->redis = gw_redis_new(base, o->redis, o->cluster, gw_rl_script, err, errlen))) {
        gw_rl_free(rl);
        return NULL;
    }
    if (!(rl->tick = event_new(base, -1, EV_PERSIST, on_tick, rl))) goto oom;
    int64_t every = rl->o.lease_ms / 3;
    struct timeval tv = {(time_t)(every / 1000), (suseconds_t)(every % 1000) * 1000};
    event_add(rl->tick, &tv);
    return rl;
oom:
    snprintf(err, errlen, "out of memory");
    gw_rl_free(rl);
    return NULL;
}

void gw_rl_free(gw_rl_t *rl) {
    if (!rl) return;
    rl->freeing = 1;
    if (rl->own_lt) lease_free_all(rl); /* grants given back (sent if the connection still takes them) */
    free(rl->own_lt);
    gw_redis_free(rl->redis);
    if (rl->owner) {
        gw_rl_local_free(rl->local);
        gw_authfail_free(rl->af);
        pthread_mutex_destroy(&rl->own_mu);
    }
    if (rl->tick) event_free(rl->tick);
    free(rl);
}

int gw_rl_connected(const gw_rl_t *rl) { return rl && gw_redis_up(rl->redis); }

const gw_rl_stats_t *gw_rl_stats(const gw_rl_t *rl) { return &rl->st; }

int gw_rl_auth_blocked(gw_rl_t *rl, const char *peer, int64_t *retry_ms) {
    if (!rl->af) return 0;
    pthread_mutex_lock(rl->mu);
    int blocked = gw_authfail_blocked(rl->af, peer, now_ms(), retry_ms);
    pthread_mutex_unlock(rl->mu);
    if (!blocked) return 0;
    rl->st.auth_throttled++;
    return 1;
}

void gw_rl_auth_failed(gw_rl_t *rl, const char *peer) {
    if (!rl->af) return;
    pthread_mutex_lock(rl->mu);
    int blocks = gw_authfail_record(rl->af, peer, now_ms());
    pthread_mutex_unlock(rl->mu);
    if (blocks) {
        rl->st.auth_blocks++;
        fprintf(stderr, "tollgate: %s: too many failed authentications; refused for %lld ms\n", peer,
                (long long)rl->o.auth_fail_block_ms);
    }
}

static void counter(tg_buf_t *o, const char *name, const char *help, uint64_t v) {
    tg_buf_printf(o, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, (unsigned long long)v);
}

void gw_rl_snapshot(const gw_rl_t *rl, gw_rl_snap_t *sn) {
    memset(sn, 0, sizeof *sn);
    if (!rl) return;
    gw_redis_stats_t rs;
    gw_redis_stats(rl->redis, &rs);
    sn->st = rl->st;
    sn->moved = rs.moved;
    sn->ask = rs.ask;
    sn->refreshes = rs.refreshes;
    if (rl->owner) { /* the shared table counted once */
        pthread_mutex_lock(rl->mu);
        sn->local_entries = gw_rl_local_size(rl->local);
        pthread_mutex_unlock(rl->mu);
    }
}

void gw_rl_snapshot_add(gw_rl_snap_t *a, const gw_rl_snap_t *b) {
    a->st.redis_errors += b->st.redis_errors;
    a->st.local_decisions += b->st.local_decisions;
    a->st.fail_closed += b->st.fail_closed;
    a->st.auth_throttled += b->st.auth_throttled;
    a->st.auth_blocks += b->st.auth_blocks;
    a->st.lease_admits += b->st.lease_admits;
    a->st.lease_slots_lost += b->st.lease_slots_lost;
    a->moved += b->moved;
    a->ask += b->ask;
    a->refreshes += b->refreshes;
    a->local_entries += b->local_entries;
}

void gw_rl_metrics_snap(const gw_rl_snap_t *sn, tg_buf_t *o) {
    counter(o, "tollgate_ratelimit_local_decisions_total",
            "Admissions decided by the in-process limiter because Redis did not answer.", sn->st.local_decisions);
    counter(o, "tollgate_ratelimit_fail_closed_total", "Requests refused with 503 because Redis did not answer "
            "(redis_fail_closed).", sn->st.fail_closed);
    counter(o, "tollgate_auth_throttled_total", "Requests refused with 429 by the failed-auth throttle.",
            sn->st.auth_throttled);
    counter(o, "tollgate_auth_blocks_total", "Client addresses blocked after repeated failed authentication.",
            sn->st.auth_blocks);
    counter(o, "tollgate_ratelimit_lease_admissions_total",
            "Admissions decided from the loop's quota leases (no Redis round trip).", sn->st.lease_admits);
    counter(o, "tollgate_ratelimit_lease_slots_lost_total",
            "Free concurrency slots of quota leases found expired in Redis (an outage), no longer admitted on.",
            sn->st.lease_slots_lost);
    counter(o, "tollgate_redis_moved_total", "MOVED redirections followed (Redis Cluster).", sn->moved);
    counter(o, "tollgate_redis_ask_total", "ASK redirections followed (Redis Cluster).", sn->ask);
    counter(o, "tollgate_redis_slot_refreshes_total", "Cluster slot maps read (CLUSTER SLOTS).", sn->refreshes);
    tg_buf_printf(o, "# HELP tollgate_ratelimit_local_entries Subjects in the in-process limiter table.\n"
                     "# TYPE tollgate_ratelimit_local_entries gauge\ntollgate_ratelimit_local_entries %zu\n",
                  sn->local_entries);
}

void gw_rl_metrics(const gw_rl_t *rl, tg_buf_t *o) {
    gw_rl_snap_t sn;
    gw_rl_snapshot(rl, &sn);
    gw_rl_metrics_snap(&sn, o);
}
