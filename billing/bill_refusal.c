/* bill_refusal.c — counts of authenticated requests answered without a usage
 * row (402 insufficient balance, 429 rate or concurrency limit, 5xx before a
 * worker was asked), added to the hourly rollups (usage_hourly.refused_402,
 * refused_429, refused_5xx) in batches.
 *
 * bill_refusal() adds one to a counter in memory, keyed by (UTC hour,
 * customer, key, model); every FLUSH_MS the counters go to PostgreSQL in ONE
 * statement (an upsert in primary-key order, like the settlement batch), so a
 * flood of 429s costs PostgreSQL one statement per second per gateway, not one
 * per request.
 *
 * At least once, not exactly once (documented in billing/README.md): a batch
 * that fails is merged back and sent again, so a batch that committed but whose
 * answer was lost (a timeout, a connection broken at the commit) is counted
 * twice; a crash loses the counts of the last FLUSH_MS; more than MAX_ENTRIES
 * distinct counters waiting (PostgreSQL down for long) drops new ones, counted
 * in `dropped`.  None of this touches money: refusals carry no cost. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "bill-int.h"
#include "mtr.h"
#include "tg_json.h"

#define FLUSH_MS 1000
#define BUCKETS 1024
#define MAX_ENTRIES 100000
#define MAX_BATCH 4096

typedef struct rentry {
    struct rentry *next; /* hash chain, or the batch in flight */
    int64_t hour_s;      /* Unix seconds of the UTC hour */
    int64_t customer_id, key_id;
    int64_t n402, n429, n5xx;
    char model[];
} rentry_t;

struct bill_refusals {
    struct event_base *base;
    bill_pg_t *pg;
    struct event *timer;
    rentry_t *tab[BUCKETS];
    long nentries;
    rentry_t *inflight; /* the batch PostgreSQL is running */
    bill_pg_job_t *job;
    uint64_t added, written, dropped;
};

/* The hourly rows (the main statement), then the daily rows (migration 0015;
 * a WITH statement nobody reads runs after the main one): the lock order of
 * every rollup writer. */
static const char REFUSAL_SQL[] =
    "WITH t AS (SELECT c, timestamptz 'epoch' + hs * interval '1 second' AS hr, k, m, a, b, d"
    " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[])"
    " AS t(c, hs, k, m, a, b, d) WHERE EXISTS (SELECT 1 FROM customers WHERE id = c)),"
    " dd AS (INSERT INTO usage_daily AS x (customer_id, day, refused_402, refused_429, refused_5xx)"
    " SELECT c, date_trunc('day', hr, 'UTC'), sum(a), sum(b), sum(d) FROM t GROUP BY 1, 2 ORDER BY 1, 2"
    " ON CONFLICT (customer_id, day) DO UPDATE SET"
    " refused_402 = x.refused_402 + excluded.refused_402, refused_429 = x.refused_429 + excluded.refused_429,"
    " refused_5xx = x.refused_5xx + excluded.refused_5xx)"
    " INSERT INTO usage_hourly AS h (customer_id, hour, key_id, model, refused_402, refused_429, refused_5xx)"
    " SELECT c, hr, k, m, a, b, d FROM t"
    " ORDER BY 1, 2, 3, 4"
    " ON CONFLICT (customer_id, hour, key_id, model) DO UPDATE SET"
    " refused_402 = h.refused_402 + excluded.refused_402, refused_429 = h.refused_429 + excluded.refused_429,"
    " refused_5xx = h.refused_5xx + excluded.refused_5xx";

enum { NCOL = 7 };

static unsigned bucket(int64_t hour_s, int64_t cust, int64_t key, const char *model) {
    uint64_t h = 1469598103934665603ULL;
    h = (h ^ (uint64_t)hour_s) * 1099511628211ULL;
    h = (h ^ (uint64_t)cust) * 1099511628211ULL;
    h = (h ^ (uint64_t)key) * 1099511628211ULL;
    for (const char *p = model; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return (unsigned)(h % BUCKETS);
}

/* The counter of (hour, customer, key, model), made when missing; NULL when
 * out of memory or MAX_ENTRIES are waiting. */
static rentry_t *entry(bill_refusals_t *r, int64_t hour_s, int64_t cust, int64_t key, const char *model) {
    unsigned b = bucket(hour_s, cust, key, model);
    for (rentry_t *e = r->tab[b]; e; e = e->next)
        if (e->hour_s == hour_s && e->customer_id == cust && e->key_id == key && !strcmp(e->model, model))
            return e;
    if (r->nentries >= MAX_ENTRIES) return NULL;
    size_t ml = strlen(model) + 1;
    rentry_t *e = calloc(1, sizeof *e + ml);
    if (!e) return NULL;
    e->hour_s = hour_s;
    e->customer_id = cust;
    e->key_id = key;
    memcpy(e->model, model, ml);
    e->next = r->tab[b];
    r->tab[b] = e;
    r->nentries++;
    return e;
}

static void arm(bill_refusals_t *r) {
    if (r->timer && !evtimer_pending(r->timer, NULL)) {
        struct timeval tv = {FLUSH_MS / 1000, (FLUSH_MS % 1000) * 1000};
        evtimer_add(r->timer, &tv);
    }
}

void bill_refusals_add(bill_refusals_t *r, int64_t customer_id, int64_t key_id, const char *model, int status,
                       int64_t now_s) {
    if (!r || customer_id <= 0 || !(status == 402 || status == 429 || (status >= 500 && status <= 599))) return;
    if (!model || !*model || strlen(model) > MTR_MODEL_MAX) model = "-";
    rentry_t *e = entry(r, now_s - now_s % 3600, customer_id, key_id > 0 ? key_id : 0, model);
    r->added++;
    if (!e) {
        r->dropped++;
        return;
    }
    if (status == 402) e->n402++;
    else if (status == 429) e->n429++;
    else e->n5xx++;
    arm(r);
}

/* Merge the entries of list l back into the table (a failed batch). */
static void merge_back(bill_refusals_t *r, rentry_t *l) {
    while (l) {
        rentry_t *next = l->next;
        rentry_t *e = entry(r, l->hour_s, l->customer_id, l->key_id, l->model);
        if (e) {
            e->n402 += l->n402;
            e->n429 += l->n429;
            e->n5xx += l->n5xx;
        } else {
            r->dropped += (uint64_t)(l->n402 + l->n429 + l->n5xx);
        }
        free(l);
        l = next;
    }
}

static void list_free(rentry_t *l) {
    while (l) {
        rentry_t *next = l->next;
        free(l);
        l = next;
    }
}

/* Take up to MAX_BATCH entries out of the table into a list; *n: how many. */
static rentry_t *take(bill_refusals_t *r, int *n) {
    rentry_t *l = NULL;
    *n = 0;
    for (int b = 0; b < BUCKETS && *n < MAX_BATCH; b++)
        while (r->tab[b] && *n < MAX_BATCH) {
            rentry_t *e = r->tab[b];
            r->tab[b] = e->next;
            e->next = l;
            l = e;
            r->nentries--;
            (*n)++;
        }
    return l;
}

/* The statement's array parameters for list l.  Returns 0 or -1. */
static int build_params(const rentry_t *l, char *params[NCOL]) {
    tg_buf_t col[NCOL];
    memset(col, 0, sizeof col);
    for (int c = 0; c < NCOL; c++) tg_buf_put(&col[c], "{", 1);
    for (const rentry_t *e = l; e; e = e->next) {
        char t[24];
        int64_t v[] = {e->customer_id, e->hour_s, e->key_id, 0, e->n402, e->n429, e->n5xx};
        for (int c = 0; c < NCOL; c++) {
            if (e != l) tg_buf_put(&col[c], ",", 1);
            if (c == 3) {
                tg_buf_put(&col[c], "\"", 1);
                for (const char *p = e->model; *p; p++) {
                    if (*p == '"' || *p == '\\') tg_buf_put(&col[c], "\\", 1);
                    tg_buf_put(&col[c], p, 1);
                }
                tg_buf_put(&col[c], "\"", 1);
            } else {
                tg_buf_put(&col[c], t, (size_t)snprintf(t, sizeof t, "%lld", (long long)v[c]));
            }
        }
    }
    int oom = 0;
    for (int c = 0; c < NCOL; c++) {
        tg_buf_put(&col[c], "}", 1);
        oom |= col[c].oom;
        params[c] = col[c].p;
    }
    if (oom) {
        for (int c = 0; c < NCOL; c++) free(params[c]);
        return -1;
    }
    return 0;
}

static void flush(bill_refusals_t *r);

static void batch_cb(PGresult *res, const char *err, void *arg) {
    bill_refusals_t *r = arg;
    r->job = NULL;
    rentry_t *l = r->inflight;
    r->inflight = NULL;
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        fprintf(stderr, "bill: refusal counters not written (sent again later): %s%s",
                err ? err : res ? PQresultErrorMessage(res) : "?\n", err ? "\n" : ""); /* one write: see bill.c */
        merge_back(r, l);
        arm(r);
        return;
    }
    for (const rentry_t *e = l; e; e = e->next) r->written += (uint64_t)(e->n402 + e->n429 + e->n5xx);
    list_free(l);
    if (r->nentries) flush(r); /* more than one batch waited */
}

static void flush(bill_refusals_t *r) {
    if (r->job || !r->nentries) return;
    int n;
    rentry_t *l = take(r, &n);
    char *params[NCOL];
    if (build_params(l, params) != 0) {
        merge_back(r, l);
        arm(r);
        return;
    }
    r->job = bill_pg_query(r->pg, REFUSAL_SQL, NCOL, (const char *const *)params, batch_cb, r);
    for (int c = 0; c < NCOL; c++) free(params[c]);
    if (!r->job) {
        merge_back(r, l);
        arm(r);
        return;
    }
    bill_pg_job_prepared(r->job, "tg_refusals");
    r->inflight = l;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg) { flush(arg); }

bill_refusals_t *bill_refusals_new(struct event_base *base, bill_pg_t *pg) {
    bill_refusals_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->base = base;
    r->pg = pg;
    if (!(r->timer = evtimer_new(base, timer_cb, r))) {
        free(r);
        return NULL;
    }
    return r;
}

void bill_refusals_stats(const bill_refusals_t *r, uint64_t *added, uint64_t *written, uint64_t *dropped,
                         long *pending) {
    *added = r ? r->added : 0;
    *written = r ? r->written : 0;
    *dropped = r ? r->dropped : 0;
    *pending = r ? r->nentries : 0;
}

void bill_refusals_free(bill_refusals_t *r, const char *conninfo) {
    if (!r) return;
    if (r->job) { /* may still commit: then its counts are written twice (at least once) */
        bill_pg_cancel(r->job);
        r->job = NULL;
        merge_back(r, r->inflight);
        r->inflight = NULL;
    }
    if (conninfo && r->nentries) { /* one short synchronous attempt, as the settler's drain */
        const char *keys[] = {"dbname", "connect_timeout", "options", "application_name", NULL};
        const char *vals[] = {conninfo, "2", "-c statement_timeout=5000", "tollgate-drain", NULL};
        PGconn *conn = PQconnectdbParams(keys, vals, 1);
        while (PQstatus(conn) == CONNECTION_OK && r->nentries) {
            int n;
            rentry_t *l = take(r, &n);
            char *params[NCOL];
            if (build_params(l, params) != 0) {
                list_free(l);
                break;
            }
            PGresult *res = PQexecParams(conn, REFUSAL_SQL, NCOL, NULL, (const char *const *)params, NULL, NULL, 0);
            for (int c = 0; c < NCOL; c++) free(params[c]);
            int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
            PQclear(res);
            list_free(l);
            if (!ok) break;
        }
        PQfinish(conn);
    }
    for (int b = 0; b < BUCKETS; b++) list_free(r->tab[b]);
    if (r->timer) event_free(r->timer);
    free(r);
}
