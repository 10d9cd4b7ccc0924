/* bill_lease.c — balance holds that cannot overspend, without a PostgreSQL
 * round trip per request: credit leases (billing/README.md "Holds").
 *
 * Each holder (one per bill_t, i.e. per gateway event loop) leases credit
 * per API key from PostgreSQL in chunks (LEASE_SQL: one statement that locks
 * the customer row and grants at most what the balance, minus every active
 * lease of the customer, and the key's and customer's spending limits, minus
 * what was spent in the period and every active lease, allow).  Admission
 * then holds a request's maximum cost against the local lease:
 *
 *     available = granted - held - pending - committed - shrinking
 *
 *   held       open holds (requests admitted, not settled)
 *   pending    costs of settled requests whose usage row has not committed
 *   committed  costs committed (debited) that still count in the lease row
 *   shrinking  the part of committed being taken off the lease row now
 *
 * A settled cost moves held -> pending (bill_lease_settle), pending ->
 * committed when its row commits (bill_lease_committed, from the settler),
 * and committed leaves the lease row in the periodic statement (TICK_SQL), so
 * PostgreSQL's `balance - sum(leases)` only moves after the debit it mirrors
 * has committed: it can be understated for a moment, never overstated.  A
 * cost larger than its hold (a worker counting more than the gateway) is
 * still charged; it is counted (overruns) and can take the lease below zero
 * locally, which forces a new grant before the next hold.
 *
 * The same periodic statement renews this holder's leases (expires_at), gives
 * back leases idle for idle_ms (marked `releasing` first: no hold is taken
 * from a lease while its row is being deleted), and reaps expired leases of
 * dead holders.  At start, once the settler has replayed what an earlier run
 * of this spool directory left, that run's leases are dropped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/rand.h>

#include "bill-int.h"
#include "tg_str.h"

#define TICK_MS 500

typedef struct lease {
    struct lease *next;
    int64_t key_id, customer_id;
    int64_t granted, held, pending, committed, shrinking;
    int64_t last_use_us;
    int64_t want;       /* what the grant in flight asked for */
    int64_t prefetch_after_us; /* no early grant before (one fell short of what it asked) */
    int grant_inflight, releasing, release_sent;
    int grant_early;    /* the grant in flight is a top-up asked with no hold waiting */
    bill_pg_job_t *job; /* the grant in flight */
    TAILQ_HEAD(, bill_req) waiters;
    bill_lease_t *owner;
} lease_t;

typedef struct ticket {
    struct ticket *next;
    char request_id[37];
    int64_t key_id, cost;
} ticket_t;

struct bill_lease {
    bill_t *b;
    char holder[80], spool_id[40];
    lease_t **tab;
    size_t cap, n;
    ticket_t **tk;
    size_t tkcap, ntk;
    struct event *tick;
    bill_pg_job_t *tick_job;
    int old_dropped, tick_dropping;
    int64_t last_tick_ok_us;
    int64_t open_holds;
    int64_t chunk, ttl_ms, idle_us;
    uint64_t grants, grant_refusals, overruns, holds_total, hold_waits;
};

/* ---- SQL ------------------------------------------------------------------ */

/* $1 holder, $2 key, $3 customer, $4 need, $5 want, $6 ttl ms -> granted
 * (0: refused), then the room left under each constraint (NULL: no such
 * limit): balance, key day, key month, customer day, customer month.  A
 * function (migrations/0014): it reads the other leases after taking the
 * customer's row lock, which one statement under READ COMMITTED cannot. */
static const char LEASE_SQL[] =
    "SELECT granted::text, bal::text, kd::text, km::text, cd::text, cm::text"
    " FROM tg_lease_grant($1, $2::bigint, $3::bigint, $4::numeric, $5::numeric, $6::bigint)";

/* $1 holder, $2 keys to shrink, $3 their amounts, $4 keys to give back,
 * $5 ttl ms, $6 the spool id's earlier holders to drop ('' : none). */
static const char TICK_SQL[] =
    "WITH s AS (UPDATE credit_leases l SET amount_pico = greatest(l.amount_pico - v.d, 0),"
    "   expires_at = now() + $5::bigint * interval '1 millisecond'"
    "   FROM unnest($2::bigint[], $3::numeric[]) AS v(k, d) WHERE l.holder = $1 AND l.key_id = v.k RETURNING 1),"
    " g AS (DELETE FROM credit_leases WHERE holder = $1 AND key_id = ANY ($4::bigint[]) RETURNING 1),"
    " n AS (UPDATE credit_leases SET expires_at = now() + $5::bigint * interval '1 millisecond'"
    "   WHERE holder = $1 AND NOT (key_id = ANY ($2::bigint[]) OR key_id = ANY ($4::bigint[])) RETURNING 1),"
    " o AS (DELETE FROM credit_leases WHERE $6 <> '' AND holder LIKE $6 || ':%' AND holder <> $1 RETURNING 1),"
    " x AS (DELETE FROM credit_leases WHERE expires_at < now() AND holder <> $1 RETURNING 1)"
    " SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM g), (SELECT count(*) FROM o)";

/* ---- tables --------------------------------------------------------------- */

static size_t lslot(const bill_lease_t *L, int64_t key_id) {
    return (size_t)(((uint64_t)key_id * 0x9E3779B97F4A7C15ULL) >> 20) & (L->cap - 1);
}

static lease_t *lease_find(bill_lease_t *L, int64_t key_id) {
    lease_t *l = L->tab[lslot(L, key_id)];
    while (l && l->key_id != key_id) l = l->next;
    return l;
}

static lease_t *lease_get(bill_lease_t *L, int64_t key_id, int64_t customer_id) {
    lease_t *l = lease_find(L, key_id);
    if (l) return l;
    if (L->n >= L->cap) { /* grow */
        size_t ncap = L->cap * 2;
        lease_t **nt = calloc(ncap, sizeof *nt);
        if (!nt) return NULL;
        for (size_t i = 0; i < L->cap; i++)
            for (lease_t *e = L->tab[i], *nx; e; e = nx) {
                nx = e->next;
                size_t h = (size_t)(((uint64_t)e->key_id * 0x9E3779B97F4A7C15ULL) >> 20) & (ncap - 1);
                e->next = nt[h];
                nt[h] = e;
            }
        free(L->tab);
        L->tab = nt;
        L->cap = ncap;
    }
    if (!(l = calloc(1, sizeof *l))) return NULL;
    l->key_id = key_id;
    l->customer_id = customer_id;
    l->owner = L;
    TAILQ_INIT(&l->waiters);
    size_t h = lslot(L, key_id);
    l->next = L->tab[h];
    L->tab[h] = l;
    L->n++;
    return l;
}

static void lease_drop(bill_lease_t *L, lease_t *l) {
    lease_t **p = &L->tab[lslot(L, l->key_id)];
    while (*p != l) p = &(*p)->next;
    *p = l->next;
    L->n--;
    free(l);
}

static int64_t avail(const lease_t *l) {
    if (l->releasing) return 0;
    return l->granted - l->held - l->pending - l->committed - l->shrinking;
}

static size_t tslot(const bill_lease_t *L, const char *rid) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *rid; rid++) h = (h ^ (unsigned char)*rid) * 0x100000001b3ULL;
    return (size_t)h & (L->tkcap - 1);
}

static int ticket_put(bill_lease_t *L, const char *rid, int64_t key_id, int64_t cost) {
    if (L->ntk >= L->tkcap) {
        size_t ncap = L->tkcap * 2;
        ticket_t **nt = calloc(ncap, sizeof *nt);
        if (!nt) return -1;
        ticket_t **old = L->tk;
        size_t ocap = L->tkcap;
        L->tk = nt;
        L->tkcap = ncap;
        for (size_t i = 0; i < ocap; i++)
            for (ticket_t *e = old[i], *nx; e; e = nx) {
                nx = e->next;
                size_t h = tslot(L, e->request_id);
                e->next = nt[h];
                nt[h] = e;
            }
        free(old);
    }
    ticket_t *t = malloc(sizeof *t);
    if (!t) return -1;
    tg_str_copy(t->request_id, sizeof t->request_id, rid);
    t->key_id = key_id;
    t->cost = cost;
    size_t h = tslot(L, t->request_id);
    t->next = L->tk[h];
    L->tk[h] = t;
    L->ntk++;
    return 0;
}

static ticket_t *ticket_take(bill_lease_t *L, const char *rid) {
    ticket_t **p = &L->tk[tslot(L, rid)];
    while (*p && strcmp((*p)->request_id, rid)) p = &(*p)->next;
    ticket_t *t = *p;
    if (t) {
        *p = t->next;
        L->ntk--;
    }
    return t;
}

/* ---- granting ------------------------------------------------------------- */

static void lease_grant(bill_lease_t *L, lease_t *l);

/* One log line from a libpq message (which may hold several lines). */
static void log_pg(const char *what, const char *msg) {
    char line[400];
    snprintf(line, sizeof line, "%s", msg ? msg : "?");
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    size_t n = strlen(line);
    while (n && line[n - 1] == ' ') line[--n] = 0;
    fprintf(stderr, "bill: %s: %s\n", what, line);
}

/* r's hold comes out of l (which has room for it). */
static void hold_take(bill_lease_t *L, lease_t *l, bill_req_t *r) {
    l->held += r->amount;
    r->hold->key_id = l->key_id;
    r->hold->customer_id = l->customer_id;
    r->hold->amount = r->amount;
    r->hold->taken = 1;
    L->holds_total++;
    L->open_holds++;
}

/* Answer waiter r (taken off its lease's queue by the caller). */
static void waiter_answer(bill_req_t *r, bill_status_t st, const bill_hold_info_t *info) {
    bill_hold_cb cb = r->hold_cb;
    void *arg = r->arg;
    free(r);
    cb(st, info, arg);
}

/* Serve the queue of l from its lease; refuse (st) the waiters that cannot
 * fit when no further grant can help (done = 1). */
static void lease_serve(bill_lease_t *L, lease_t *l, int done, bill_status_t st, const bill_hold_info_t *info) {
    bill_req_t *r, *nx;
    for (r = TAILQ_FIRST(&l->waiters); r; r = nx) {
        nx = TAILQ_NEXT(r, link);
        if (avail(l) >= r->amount) {
            TAILQ_REMOVE(&l->waiters, r, link);
            hold_take(L, l, r);
            waiter_answer(r, BILL_OK, NULL);
        } else if (done) {
            TAILQ_REMOVE(&l->waiters, r, link);
            bill_hold_info_t in = info ? *info : (bill_hold_info_t){0};
            in.needed_pico = r->amount;
            waiter_answer(r, st, &in);
        }
    }
    if (!done && !TAILQ_EMPTY(&l->waiters) && !l->grant_inflight && !l->releasing) lease_grant(L, l);
}

static int64_t dec_or(const char *s, int64_t dflt, int *isnull) {
    if (isnull) *isnull = !s || !*s;
    if (!s || !*s) return dflt;
    /* NUMERIC text; rooms above int64 are capped (more than anyone needs) */
    if (strlen(s) > 18 && s[0] != '-') return INT64_MAX;
    if (strlen(s) > 19) return INT64_MIN;
    return strtoll(s, NULL, 10);
}

static void grant_done(PGresult *res, const char *err, void *arg) {
    lease_t *l = arg;
    bill_lease_t *L = l->owner;
    l->job = NULL;
    l->grant_inflight = 0;
    int early = l->grant_early;
    l->grant_early = 0;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        log_pg("credit lease failed", err ? err : res ? PQresultErrorMessage(res) : "?");
        lease_serve(L, l, 1, BILL_ERROR, NULL);
        return;
    }
    int64_t g = dec_or(PQgetvalue(res, 0, 0), 0, NULL);
    bill_hold_info_t info = {0};
    info.available_pico = INT64_MAX;
    info.limit = BILL_LIMIT_BALANCE;
    static const int kinds[5] = {BILL_LIMIT_BALANCE, BILL_LIMIT_KEY_DAY, BILL_LIMIT_KEY_MONTH,
                                 BILL_LIMIT_CUSTOMER_DAY, BILL_LIMIT_CUSTOMER_MONTH};
    for (int i = 0; i < 5; i++) {
        int isnull;
        int64_t v = dec_or(PQgetisnull(res, 0, 1 + i) ? NULL : PQgetvalue(res, 0, 1 + i), 0, &isnull);
        if (!isnull && v < info.available_pico) {
            info.available_pico = v;
            info.limit = kinds[i];
        }
    }
    if (info.available_pico < 0) info.available_pico = 0;
    info.available_pico += avail(l) > 0 ? avail(l) : 0; /* what this holder could still give */
    if (g > 0) {
        L->grants++;
        l->granted += g;
    } else {
        L->grant_refusals++;
    }
    int full = g > 0 && g >= l->want;
    if (!full) l->prefetch_after_us = tg_mono_us() + TICK_MS * 1000;
    /* A top-up asked for nobody in particular: holds that queued behind it
     * are not refused by its answer but get a grant of their own (asked with
     * their need) when it falls short. */
    int done = !full && !early;
    lease_serve(L, l, done, info.limit == BILL_LIMIT_BALANCE ? BILL_NO_BALANCE : BILL_SPEND_LIMIT, &info);
}

static void lease_grant(bill_lease_t *L, lease_t *l) {
    int64_t need = 0, total = 0;
    bill_req_t *r;
    TAILQ_FOREACH(r, &l->waiters, link) {
        if (!need) need = r->amount - avail(l);
        total += r->amount;
    }
    total -= avail(l);
    if (need <= 0) need = 1;
    if (total < need) total = need;
    l->want = total + L->chunk;
    char holder[80], key[24], cust[24], sneed[24], swant[24], ttl[24];
    snprintf(holder, sizeof holder, "%s", L->holder);
    snprintf(key, sizeof key, "%lld", (long long)l->key_id);
    snprintf(cust, sizeof cust, "%lld", (long long)l->customer_id);
    snprintf(sneed, sizeof sneed, "%lld", (long long)need);
    snprintf(swant, sizeof swant, "%lld", (long long)l->want);
    snprintf(ttl, sizeof ttl, "%lld", (long long)L->ttl_ms);
    const char *p[] = {holder, key, cust, sneed, swant, ttl};
    l->job = bill_pg_query(L->b->pg, LEASE_SQL, 6, p, grant_done, l);
    if (!l->job) {
        lease_serve(L, l, 1, BILL_ERROR, NULL);
        return;
    }
    bill_pg_job_prepared(l->job, "tg_lease_grant");
    /* A grant re-sent after a broken connection may have committed twice:
     * PostgreSQL then reserves more than this holder counts, never less. */
    bill_pg_job_retry_ok(l->job);
    l->grant_inflight = 1;
    l->grant_early = TAILQ_EMPTY(&l->waiters);
}

/* ---- the public side ------------------------------------------------------ */

int bill_lease_hold(bill_lease_t *L, bill_req_t *r) {
    lease_t *l = lease_get(L, r->key.key_id, r->key.customer_id);
    if (!l) return -1;
    l->last_use_us = tg_mono_us();
    TAILQ_INSERT_TAIL(&l->waiters, r, link);
    r->lease = l;
    if (TAILQ_FIRST(&l->waiters) == r && avail(l) >= r->amount) {
        /* the common case: taken from the local lease, answered from the loop.
         * Below half a chunk the lease is topped up in the background, so
         * that in the steady state no hold waits for PostgreSQL (a grant
         * waits for the customer row, which a settlement batch may hold). */
        TAILQ_REMOVE(&l->waiters, r, link);
        hold_take(L, l, r);
        r->lease = NULL;
        if (avail(l) < L->chunk / 2 && !l->grant_inflight && !l->releasing && l->last_use_us >= l->prefetch_after_us)
            lease_grant(L, l);
        return 1;
    }
    L->hold_waits++;
    if (!l->grant_inflight && !l->releasing) lease_grant(L, l);
    return 0;
}

void bill_lease_cancel(bill_lease_t *L, bill_req_t *r) {
    lease_t *l = r->lease;
    if (l) TAILQ_REMOVE(&l->waiters, r, link);
}

void bill_lease_release(bill_lease_t *L, bill_hold_t *h) {
    if (!L || !h || !h->taken) return;
    lease_t *l = lease_find(L, h->key_id);
    h->taken = 0;
    L->open_holds--;
    if (!l) return;
    l->held -= h->amount;
    l->last_use_us = tg_mono_us();
    if (!TAILQ_EMPTY(&l->waiters)) lease_serve(L, l, 0, BILL_OK, NULL);
}

void bill_lease_settle(bill_lease_t *L, bill_hold_t *h, const char *request_id, int64_t cost) {
    if (!L || !h || !h->taken) return;
    lease_t *l = lease_find(L, h->key_id);
    h->taken = 0;
    L->open_holds--;
    if (!l) return;
    l->held -= h->amount;
    if (cost > h->amount) L->overruns++;
    if (cost > 0) {
        l->pending += cost;
        if (ticket_put(L, request_id, h->key_id, cost) != 0) { /* stays pending: conservative */
        }
    }
    l->last_use_us = tg_mono_us();
    if (!TAILQ_EMPTY(&l->waiters)) lease_serve(L, l, 0, BILL_OK, NULL);
}

void bill_lease_committed(bill_lease_t *L, const char *request_id) {
    if (!L || !L->ntk) return;
    ticket_t *t = ticket_take(L, request_id);
    if (!t) return;
    lease_t *l = lease_find(L, t->key_id);
    if (l) {
        l->pending -= t->cost;
        l->committed += t->cost;
    }
    free(t);
}

void bill_lease_stale(bill_lease_t *L, int64_t key_id, int64_t customer_id) {
    if (!L) return;
    for (size_t i = 0; i < L->cap; i++)
        for (lease_t *l = L->tab[i]; l; l = l->next) {
            if (key_id ? l->key_id != key_id : l->customer_id != customer_id) continue;
            int64_t a = avail(l);
            if (a > 0) l->committed += a; /* shrunk off the lease row by the next tick */
        }
}

/* ---- the periodic statement ---------------------------------------------- */

static int arr_add(char **p, size_t *len, size_t *cap, const char *s) {
    size_t n = strlen(s);
    if (*len + n + 2 > *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        while (*len + n + 2 > nc) nc *= 2;
        char *q = realloc(*p, nc);
        if (!q) return -1;
        *p = q;
        *cap = nc;
    }
    memcpy(*p + *len, s, n + 1);
    *len += n;
    return 0;
}

static void tick_done(PGresult *res, const char *err, void *arg) {
    bill_lease_t *L = arg;
    L->tick_job = NULL;
    int ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok) {
        log_pg("lease upkeep failed", err ? err : res ? PQresultErrorMessage(res) : "?");
    }
    for (size_t i = 0; i < L->cap; i++) {
        lease_t *l = L->tab[i], *nx;
        for (; l; l = nx) {
            nx = l->next;
            if (ok) l->granted -= l->shrinking;
            else l->committed += l->shrinking;
            l->shrinking = 0;
            if (l->release_sent) {
                l->release_sent = 0;
                l->releasing = 0;
                if (ok) {
                    l->granted = 0;
                    if (TAILQ_EMPTY(&l->waiters) && !l->held && !l->pending && !l->committed) lease_drop(L, l);
                    else lease_serve(L, l, 0, BILL_OK, NULL);
                } else if (!TAILQ_EMPTY(&l->waiters)) {
                    lease_serve(L, l, 0, BILL_OK, NULL);
                }
            }
        }
    }
    if (ok) {
        L->last_tick_ok_us = tg_mono_us();
        if (L->tick_dropping) L->old_dropped = 1;
    }
    L->tick_dropping = 0;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg) {
    bill_lease_t *L = arg;
    int64_t now = tg_mono_us();
    if (now - L->last_tick_ok_us > L->ttl_ms * 500) {
        /* Not renewed for half a lifetime: another holder may reap our rows.
         * Trust none of them; new holds wait for fresh grants. */
        for (size_t i = 0; i < L->cap; i++)
            for (lease_t *l = L->tab[i]; l; l = l->next) l->granted = l->shrinking = 0;
        L->last_tick_ok_us = now; /* once per half lifetime */
    }
    if (L->tick_job) return;
    char *sk = NULL, *sa = NULL, *rk = NULL;
    size_t skl = 0, skc = 0, sal = 0, sac = 0, rkl = 0, rkc = 0;
    int bad = arr_add(&sk, &skl, &skc, "{") | arr_add(&sa, &sal, &sac, "{") | arr_add(&rk, &rkl, &rkc, "{");
    int ns = 0, nr = 0;
    for (size_t i = 0; i < L->cap && !bad; i++)
        for (lease_t *l = L->tab[i]; l; l = l->next) {
            char v[48];
            if (l->committed > 0) {
                l->shrinking = l->committed;
                l->committed = 0;
                snprintf(v, sizeof v, "%s%lld", ns ? "," : "", (long long)l->key_id);
                bad |= arr_add(&sk, &skl, &skc, v);
                snprintf(v, sizeof v, "%s%lld", ns ? "," : "", (long long)l->shrinking);
                bad |= arr_add(&sa, &sal, &sac, v);
                ns++;
            } else if (!l->held && !l->pending && !l->shrinking && TAILQ_EMPTY(&l->waiters) && !l->grant_inflight &&
                       now - l->last_use_us > L->idle_us) {
                l->releasing = l->release_sent = 1;
                snprintf(v, sizeof v, "%s%lld", nr ? "," : "", (long long)l->key_id);
                bad |= arr_add(&rk, &rkl, &rkc, v);
                nr++;
            }
        }
    bad |= arr_add(&sk, &skl, &skc, "}") | arr_add(&sa, &sal, &sac, "}") | arr_add(&rk, &rkl, &rkc, "}");
    /* Earlier runs of this spool directory: their leases go once the settler
     * has replayed what they left and it has committed (their holds are then
     * all settled or void).  Not before the commit: until then their costs are
     * in no balance, and their leases are what keeps them reserved.  Before
     * (2026-11-30) they went as soon as the files were read: a gateway killed
     * while its rows could not commit, restarted, granted the whole balance
     * again (credit $0.0002, usage locked across the kill: $0.000386 spent).
     * The rows of its streams cut by its death (provisional rows, read once
     * its other rows committed) count too (earlier_streams). */
    bill_settle_stats_t st;
    bill_settle_stats(L->b, &st);
    L->tick_dropping = !L->old_dropped && !st.replay_pending && st.found_files == 0 && !st.earlier_streams;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)L->ttl_ms);
    const char *p[] = {L->holder, sk, sa, rk, ttl, L->tick_dropping ? L->spool_id : ""};
    if (!bad) {
        L->tick_job = bill_pg_query(L->b->pg, TICK_SQL, 6, p, tick_done, L);
        if (L->tick_job) bill_pg_job_prepared(L->tick_job, "tg_lease_tick");
    }
    if (bad || !L->tick_job) { /* undo the marks */
        for (size_t i = 0; i < L->cap; i++)
            for (lease_t *l = L->tab[i]; l; l = l->next) {
                l->committed += l->shrinking;
                l->shrinking = 0;
                l->releasing = l->release_sent = 0;
            }
        L->tick_dropping = 0;
    }
    free(sk);
    free(sa);
    free(rk);
}

/* <spool_dir>/holder: this spool directory's id, made once. */
static int spool_id(const char *dir, char out[40]) {
    char path[4096];
    snprintf(path, sizeof path, "%s/holder", dir);
    FILE *f = fopen(path, "r");
    if (f) {
        int ok = fgets(out, 40, f) != NULL;
        fclose(f);
        out[strcspn(out, "\r\n")] = 0;
        if (ok && strlen(out) == 32 && strspn(out, "0123456789abcdef") == 32) return 0;
    }
    unsigned char r[16];
    if (RAND_bytes(r, sizeof r) != 1) return -1;
    for (int i = 0; i < 16; i++) sprintf(out + 2 * i, "%02x", r[i]);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!(f = fopen(tmp, "w"))) return -1;
    int ok = fprintf(f, "%s\n", out) > 0;
    ok &= fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok &= fclose(f) == 0;
    return ok && rename(tmp, path) == 0 ? 0 : -1;
}

bill_lease_t *bill_lease_new(bill_t *b, const char *spool_dir, const bill_opts_t *o, char *err, size_t errlen) {
    bill_lease_t *L = calloc(1, sizeof *L);
    if (!L) goto oom;
    L->b = b;
    L->cap = L->tkcap = 256;
    L->tab = calloc(L->cap, sizeof *L->tab);
    L->tk = calloc(L->tkcap, sizeof *L->tk);
    if (!L->tab || !L->tk) goto oom;
    L->chunk = o->lease_chunk_pico > 0 ? o->lease_chunk_pico : 50000000000LL; /* $0.05 */
    L->ttl_ms = o->lease_ttl_ms > 0 ? o->lease_ttl_ms : 60000;
    L->idle_us = (int64_t)(o->lease_idle_ms > 0 ? o->lease_idle_ms : 2000) * 1000;
    L->last_tick_ok_us = tg_mono_us();
    if (spool_id(spool_dir, L->spool_id) != 0) {
        snprintf(err, errlen, "credit leases: cannot read or write %s/holder", spool_dir);
        bill_lease_free(L);
        return NULL;
    }
    unsigned char r[6];
    if (RAND_bytes(r, sizeof r) != 1) goto oom;
    snprintf(L->holder, sizeof L->holder, "%s:%02x%02x%02x%02x%02x%02x", L->spool_id, r[0], r[1], r[2], r[3], r[4],
             r[5]);
    if (!(L->tick = event_new(b->base, -1, EV_PERSIST, tick_cb, L))) goto oom;
    struct timeval tv = {0, TICK_MS * 1000};
    event_add(L->tick, &tv);
    return L;
oom:
    snprintf(err, errlen, "credit leases: out of memory");
    bill_lease_free(L);
    return NULL;
}

void bill_lease_stats(const bill_lease_t *L, bill_lease_stats_t *st) {
    memset(st, 0, sizeof *st);
    if (!L) return;
    for (size_t i = 0; i < L->cap; i++)
        for (lease_t *l = L->tab[i]; l; l = l->next) {
            st->leases++;
            st->leased_pico += l->granted;
            st->held_pico += l->held;
        }
    st->open_holds = L->open_holds;
    st->grants = L->grants;
    st->grant_refusals = L->grant_refusals;
    st->overruns = L->overruns;
    st->holds_total = L->holds_total;
    st->hold_waits = L->hold_waits;
}

const char *bill_lease_holder(const bill_lease_t *L) { return L ? L->holder : ""; }

void bill_lease_free(bill_lease_t *L) {
    if (!L) return;
    if (L->tick) event_free(L->tick);
    if (L->tab)
        for (size_t i = 0; i < L->cap; i++)
            for (lease_t *l = L->tab[i], *nx; l; l = nx) {
                nx = l->next;
                free(l);
            }
    if (L->tk)
        for (size_t i = 0; i < L->tkcap; i++)
            for (ticket_t *t = L->tk[i], *nx; t; t = nx) {
                nx = t->next;
                free(t);
            }
    free(L->tab);
    free(L->tk);
    free(L);
}
