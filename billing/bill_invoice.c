/* bill_invoice.c — finalizes last month's invoices automatically, a
 * configurable time after the month ends (UTC), from the gateway's loop.
 *
 * A timer checks once a minute (first 1 s after start): when now is past the
 * start of the current month plus after_s and this process has not finalized
 * the previous month yet, one statement runs tg_invoice_finalize_month for
 * it (every customer) and appends an admin_audit row (actor "auto") when it
 * finalized anything.  The SQL is idempotent and serialized per customer
 * (advisory lock), so any number of gateway instances may race; a failure
 * (PostgreSQL down) is retried at the next tick.  Months are finalized in
 * order only as far as the process is running: a month missed entirely (no
 * gateway running for a whole month) is left to `tollgatectl invoice
 * finalize`, and its usage is carried by the next invoice as late lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "bill-int.h"

#define TICK_S 60

struct bill_invoicer {
    bill_pg_t *pg;
    struct event *timer;
    bill_pg_job_t *job;
    int after_s;
    char done[16];    /* "YYYY-MM" finalized by this process, or "" */
    char running[16]; /* the month of the statement in flight */
    uint64_t runs;
};

static const char FINALIZE_SQL[] =
    "WITH r AS (SELECT tg_invoice_finalize_month(($1 || '-01')::date, 'auto', NULL) AS body),"
    " a AS (INSERT INTO admin_audit (actor, action, target, before, after)"
    "   SELECT 'auto', 'invoice.finalize', 'month:' || $1, NULL, body::jsonb FROM r"
    "   WHERE (body::json->>'finalized')::int > 0 RETURNING 1)"
    " SELECT body FROM r";

static void finalize_done(PGresult *res, const char *err, void *arg) {
    bill_invoicer_t *v = arg;
    v->job = NULL;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "bill: finalizing the invoices of %s failed (retried in %d s): %s%s", v->running, TICK_S,
                err ? err : PQresultErrorMessage(res), err ? "\n" : ""); /* one write: see bill.c */
        return;
    }
    memcpy(v->done, v->running, sizeof v->done);
    v->runs++;
}

/* The previous month "YYYY-MM" of now, and the start of the current month. */
static void last_month(time_t now, char out[16], time_t *month_start) {
    struct tm tm;
    gmtime_r(&now, &tm);
    int y = tm.tm_year + 1900, m = tm.tm_mon + 1;
    struct tm st = {.tm_year = tm.tm_year, .tm_mon = tm.tm_mon, .tm_mday = 1};
    *month_start = timegm(&st);
    if (--m == 0) m = 12, y--;
    snprintf(out, 16, "%04d-%02d", y % 10000, m);
}

static void tick(evutil_socket_t fd, short what, void *arg) {
    bill_invoicer_t *v = arg;
    struct timeval tv = {TICK_S, 0};
    event_add(v->timer, &tv);
    if (v->job) return;
    char prev[16];
    time_t start, now = time(NULL);
    last_month(now, prev, &start);
    if (now < start + v->after_s || !strcmp(prev, v->done)) return;
    memcpy(v->running, prev, sizeof v->running);
    const char *p[] = {prev};
    v->job = bill_pg_query(v->pg, FINALIZE_SQL, 1, p, finalize_done, v);
}

bill_invoicer_t *bill_invoicer_new(struct event_base *base, bill_pg_t *pg, int after_s) {
    bill_invoicer_t *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->pg = pg;
    v->after_s = after_s;
    v->timer = evtimer_new(base, tick, v);
    if (!v->timer) {
        free(v);
        return NULL;
    }
    struct timeval tv = {1, 0};
    event_add(v->timer, &tv);
    return v;
}

uint64_t bill_invoicer_runs(const bill_invoicer_t *v) { return v ? v->runs : 0; }

void bill_invoicer_free(bill_invoicer_t *v) {
    if (!v) return;
    bill_pg_cancel(v->job);
    event_free(v->timer);
    free(v);
}
