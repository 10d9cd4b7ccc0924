/* gw_rl-int.h — private interface of the gateway's rate limiter (included by
 * gw-int.h; nothing outside gateway/ and its unit tests includes it).
 *
 *   gw_rl_local.c  pure parts, no I/O: the GCRA arithmetic (the same maths as
 *                  the Lua script in gw_rl.c), the in-process limiter table
 *                  used when Redis cannot answer, and the failed-auth
 *                  throttle (a bounded table per client address);
 *   gw_rl_redis.c  async Redis client over hiredis + libevent, standalone or
 *                  Cluster (CRC16 slot routing, CLUSTER SLOTS map, MOVED/ASK);
 *   gw_rl.c        the limiter the server calls: one admission per request
 *                  (key and customer scripts in the same round trip), release
 *                  and TPM correction at completion, lease renewal, local
 *                  fallback or fail-closed.
 *
 * Units: time in ms, limits per GW_RL_WINDOW_MS (one minute).  Included by
 * gw-int.h after tg_buf_t. */
#ifndef GW_RL_INT_H
#define GW_RL_INT_H

#include <stddef.h>
#include <stdint.h>

struct event_base;

#define GW_RL_WINDOW_MS 60000

/* ---- GCRA (gw_rl_local.c) ------------------------------------------------
 * A bucket of capacity L units (the per-minute limit) refilled at L per
 * minute, kept as its "debt" d scaled by W*L so that every quantity is an
 * integer: one unit costs W (= GW_RL_WINDOW_MS), the debt drains by L per ms,
 * and n units fit when d + n*W <= W*L.  A full burst of L passes at once and
 * the L+1st waits W/L ms.  d <= W*L + (forced charges), so every value stays
 * below 2^53 (exact in the Lua script's doubles too) for L < 2^31. */
typedef struct {
    int64_t d;   /* debt: one unit costs W, drains by L per ms */
    int64_t t;   /* when d was last brought up to date (ms) */
    int64_t l;   /* the limit d is scaled for (a changed limit rescales) */
} gw_gcra_t;

/* Bring g up to `now` for limit lim (> 0): rescale on a limit change, drain. */
void gw_gcra_drain(gw_gcra_t *g, int64_t lim, int64_t now);
/* 1 when n units fit now (after gw_gcra_drain). */
int gw_gcra_fits(const gw_gcra_t *g, int64_t lim, int64_t n);
/* Add n units of debt (n < 0 gives back, never below zero). */
void gw_gcra_charge(gw_gcra_t *g, int64_t n);
int64_t gw_gcra_remaining(const gw_gcra_t *g, int64_t lim); /* units that fit now, >= 0 */
int64_t gw_gcra_reset_ms(const gw_gcra_t *g, int64_t lim);  /* until the bucket is full again */
/* Until n units fit; -1 when n > lim (never). */
int64_t gw_gcra_retry_ms(const gw_gcra_t *g, int64_t lim, int64_t n);

/* ---- one limiter decision ------------------------------------------------ */

typedef struct {
    int64_t rpm, tpm, conc;   /* 0: none */
} gw_rl_limits_t;

enum { GW_RL_WHY_NONE = 0, GW_RL_WHY_REQUESTS = 1, GW_RL_WHY_TOKENS = 2, GW_RL_WHY_CONCURRENCY = 3 };

/* What one subject (a key or a customer) answered. */
typedef struct {
    int ok;                   /* admitted (take) / would admit (peek) */
    int why;                  /* GW_RL_WHY_* when !ok */
    int64_t rrem, rreset;     /* requests remaining, ms until full */
    int64_t trem, treset;     /* tokens remaining, ms until full */
    int64_t retry;            /* when !ok: ms until it could pass; -1 never */
    int64_t inflight;         /* concurrency slots in use (after a take) */
    int64_t gr, gt, gc;       /* granted to the loop's quota lease: requests, tokens, slots */
} gw_rl_verdict_t;

/* Operations of the script and of the local table. */
enum {
    GW_RL_OP_TAKE = 0,  /* check every limit; take all or nothing */
    GW_RL_OP_PEEK,      /* state only */
    GW_RL_OP_DONE,      /* request finished: free its slot; n tokens back (n < 0: charge more) */
    GW_RL_OP_UNDO,      /* a take another subject refused: one request and n tokens back, slot freed */
    GW_RL_OP_RENEW,     /* extend the request's concurrency lease */
    GW_RL_OP_FORCE,     /* local only: take without checking (mirror of a Redis decision) */
    GW_RL_OP_LRET,      /* Redis only: a quota lease gives back requests, tokens and slots */
    GW_RL_OP_LRENEW,    /* Redis only: extend a quota lease's slots */
    GW_RL_OP_LFILL,     /* Redis only: more for a quota lease running low (no request) */
};

/* ---- the in-process limiter (gw_rl_local.c) -------------------------------
 * Same GCRA per subject, plus a count of requests in flight.  Entries live
 * while they hold debt or requests; gw_rl_local_sweep drops the rest. */
typedef struct gw_rl_local gw_rl_local_t;

gw_rl_local_t *gw_rl_local_new(void);
void gw_rl_local_free(gw_rl_local_t *t); /* accepts NULL */
/* Apply op to subject (kind 'k' key / 'c' customer, id) with limits lim, n
 * tokens, at now (ms).  Fills v (may be NULL).  GW_OK, or GW_ERROR (out of
 * memory: then v->ok is 1, nothing is remembered). */
int gw_rl_local_op(gw_rl_local_t *t, int op, char kind, int64_t id, const gw_rl_limits_t *lim, int64_t n,
                   int64_t now, gw_rl_verdict_t *v);
void gw_rl_local_sweep(gw_rl_local_t *t, int64_t now);
size_t gw_rl_local_size(const gw_rl_local_t *t);

/* ---- failed-auth throttle (gw_rl_local.c) ---------------------------------
 * Per client address, in this process: `limit` failed authentications
 * within window_ms (a GCRA of capacity limit) block the address for
 * block_ms.  A fixed table of `entries` (8-way buckets; the least recently
 * seen unblocked entry of a bucket makes room), so memory is bounded whatever
 * the number of addresses. */
typedef struct gw_authfail gw_authfail_t;

gw_authfail_t *gw_authfail_new(int64_t limit, int64_t window_ms, int64_t block_ms, size_t entries);
void gw_authfail_free(gw_authfail_t *a); /* accepts NULL */
/* 1 while addr is blocked (*retry_ms: until when), else 0. */
int gw_authfail_blocked(gw_authfail_t *a, const char *addr, int64_t now, int64_t *retry_ms);
/* One failed authentication from addr; returns 1 when it blocked the address. */
int gw_authfail_record(gw_authfail_t *a, const char *addr, int64_t now);

/* ---- Redis client (gw_rl_redis.c) ------------------------------------------ */

struct redisReply;
typedef struct gw_redis gw_redis_t;
typedef struct gw_redis_op gw_redis_op_t;
/* rep: the reply (valid during the call only), NULL when the command failed
 * (connection lost, node unknown, too many redirects). */
typedef void (*gw_redis_cb)(struct redisReply *rep, void *arg);

typedef struct {
    uint64_t moved, ask, refreshes, errors;
} gw_redis_stats_t;

/* addrs: "host:port[,host:port...]"; cluster 0: the first is the server;
 * cluster 1: seeds, the masters are found with CLUSTER SLOTS.  script is
 * loaded on every node (SCRIPT LOAD) and borrowed for EVAL on NOSCRIPT.
 * Connects in the background.  NULL with err on a bad address. */
gw_redis_t *gw_redis_new(struct event_base *base, const char *addrs, int cluster, const char *script, char *err,
                         size_t errlen);
void gw_redis_free(gw_redis_t *r); /* accepts NULL; pending callbacks are not called */
/* Standalone: connected.  Cluster: every slot has a connected master. */
int gw_redis_up(const gw_redis_t *r);
/* Whether the node serving the slot of key is connected. */
int gw_redis_slot_up(const gw_redis_t *r, const char *key);
void gw_redis_stats(const gw_redis_t *r, gw_redis_stats_t *st);
/* Cluster slot of a key: CRC16 (XMODEM) of its {hash tag}, or of the whole
 * key without one, mod 16384. */
unsigned gw_redis_slot(const char *key, size_t len);
/* EVALSHA of the script with keys (all in keys[0]'s slot) and args, routed to
 * the master of that slot.  NULL when that node is not connected (nothing
 * sent, no callback).  Else cb runs once from the loop (never inside this
 * call) unless the op is detached first.  Args are copied. */
gw_redis_op_t *gw_redis_eval(gw_redis_t *r, int nkeys, const char *const *keys, int nargs, const char *const *args,
                             gw_redis_cb cb, void *arg);
/* The caller no longer wants the answer; drop: the node seems stuck (a
 * timeout), so its connection is closed and made again. */
void gw_redis_op_detach(gw_redis_op_t *op, int drop);

/* ---- the limiter (gw_rl.c) ----------------------------------------------- */

typedef struct gw_rl gw_rl_t;
typedef struct gw_rl_call gw_rl_call_t;

enum { GW_RL_ALLOW = 0, GW_RL_LIMITED = 1, GW_RL_UNAVAILABLE = 2 };

/* Rate-limit headers and the reason of a refusal, for the client. */
typedef struct {
    int64_t limit, remaining;
    int64_t reset_ms;         /* until the request bucket is full again */
    int64_t tpm_limit, tpm_remaining, tpm_reset_ms;
    int why;                  /* when limited: GW_RL_WHY_* */
    int customer;             /* when limited: 1 the customer's limit, 0 the key's */
    int64_t retry_ms;         /* when limited: until it could pass; -1 never (tokens > limit) */
    int64_t conc_limit;       /* of the subject that refused (why concurrency) */
    int local;                /* decided by the in-process fallback */
} gw_rl_result_t;

typedef struct {
    uint64_t redis_errors;    /* calls Redis did not answer in time (or no connection) */
    uint64_t local_decisions; /* admissions decided by the in-process limiter instead */
    uint64_t fail_closed;     /* refused with 503 (redis_fail_closed) */
    uint64_t auth_throttled;  /* answered 429 by the failed-auth throttle */
    uint64_t auth_blocks;     /* addresses blocked */
    uint64_t lease_admits;    /* admitted from the loop's quota leases, no Redis round trip */
    uint64_t lease_slots_lost; /* free leased slots found expired in Redis, no longer admitted on */
} gw_rl_stats_t;

typedef struct {
    const char *redis;        /* "" or NULL: no Redis, the in-process limiter only */
    int cluster;
    int timeout_ms;
    int fail_closed;
    int64_t lease_ms;         /* concurrency lease; renewed every lease_ms/3 */
    int64_t auth_fail_limit, auth_fail_window_ms, auth_fail_block_ms, auth_fail_table;
    struct gw_rl *share;      /* another loop's limiter whose in-process table and failed-auth
                                 throttle this one uses too (under its mutex); it must outlive
                                 this one.  NULL: own ones */
} gw_rl_opts_t;

typedef void (*gw_rl_cb)(int verdict, const gw_rl_result_t *r, void *arg);

/* NULL with err (bad Redis address, out of memory). */
gw_rl_t *gw_rl_new(struct event_base *base, const gw_rl_opts_t *o, char *err, size_t errlen);
void gw_rl_free(gw_rl_t *rl); /* accepts NULL; pending callbacks are not called */
int gw_rl_connected(const gw_rl_t *rl);
const gw_rl_stats_t *gw_rl_stats(const gw_rl_t *rl);
/* Append the limiter's Prometheus lines to out. */
void gw_rl_metrics(const gw_rl_t *rl, tg_buf_t *out);
/* The same numbers as a value, to sum over event loops (gw_admin.c). */
typedef struct {
    gw_rl_stats_t st;
    uint64_t moved, ask, refreshes;
    size_t local_entries;
} gw_rl_snap_t;
void gw_rl_snapshot(const gw_rl_t *rl, gw_rl_snap_t *sn); /* rl may be NULL */
void gw_rl_snapshot_add(gw_rl_snap_t *sum, const gw_rl_snap_t *sn);
void gw_rl_metrics_snap(const gw_rl_snap_t *sn, tg_buf_t *out);

/* Admission (op GW_RL_OP_TAKE) or a look at the state (GW_RL_OP_PEEK) of a
 * key (key_id, key limits) and its customer (cust_id, customer limits; zero
 * limits: not asked), charging `tokens` to TPM; member is the request id.
 * cb runs once from the loop, never inside this call.  The call belongs to
 * the caller until gw_rl_finish, which must be called exactly once (also
 * when the callback never ran).  NULL: out of memory. */
gw_rl_call_t *gw_rl_check(gw_rl_t *rl, int op, int64_t key_id, const gw_rl_limits_t *key_lim, int64_t cust_id,
                          const gw_rl_limits_t *cust_lim, int64_t tokens, const char *member, gw_rl_cb cb,
                          void *arg);
/* The request is over: cancels a pending callback; for an admitted request
 * frees its concurrency slots and corrects TPM with used tokens (-1:
 * unknown, no correction).  Pipelined, no reply awaited.  Accepts NULL. */
void gw_rl_finish(gw_rl_call_t *c, int64_t used_tokens);

/* Failed-auth throttle: 1 when peer is blocked (answer 429, retry_ms) */
int gw_rl_auth_blocked(gw_rl_t *rl, const char *peer, int64_t *retry_ms);
void gw_rl_auth_failed(gw_rl_t *rl, const char *peer);

/* The Lua script (for tests). */
extern const char gw_rl_script[];

#endif
