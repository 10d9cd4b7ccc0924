/* bill_report.c — the report endpoints of the admin API (routed here by
 * bill_admin.c): usage and cost by hour or day per customer, top customers by
 * spend, balance over time, and one usage row by request id (what
 * `tollgatectl receipt verify` compares a receipt with).
 *
 * Usage and spend read the rollups only, never the usage table: whole UTC
 * days of a period from the daily rollups (usage_daily) where a report needs
 * no key or model (top customers, usage by day without a split), the rest
 * from the hourly rollups (usage_hourly); balance over time reads the rollups for the usage debits and
 * the few other ledger rows of one customer (ledger_customer_credits).  Like every admin statement, each builds
 * its JSON in PostgreSQL: money leaves as decimal strings of pico-USD (and
 * USD rounded to 6 decimals for display), token sums as decimal strings,
 * counts as numbers.
 *
 * Periods are [from, to) on whole UTC hours: a rollup row counts when its
 * hour starts in [from, to).  Days are UTC days. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/http.h>

#include "bill_admin-int.h"

/* One rollup group's sums as JSON members (x is the grouped row). */
#define SUMJ                                                                                            \
    "'requests', x.requests::text, 'prompt_cache_hit_tokens', x.hit::text, 'prompt_cache_miss_tokens', x.miss::text," \
    " 'completion_tokens', x.completion::text, 'reasoning_tokens', x.reasoning::text,"                 \
    " 'cost_pico', x.cost::text, 'cost_usd', tg_usd(x.cost), 'failed_5xx', x.failed_5xx::text,"       \
    " 'refused_402', x.refused_402::text, 'refused_429', x.refused_429::text, 'refused_5xx', x.refused_5xx::text"

#define SUMS                                                                                            \
    "sum(h.requests) AS requests, sum(h.prompt_cache_hit_tokens) AS hit, sum(h.prompt_cache_miss_tokens) AS miss," \
    " sum(h.completion_tokens) AS completion, sum(h.reasoning_tokens) AS reasoning, sum(h.cost_pico) AS cost,"   \
    " sum(h.failed_5xx) AS failed_5xx, sum(h.refused_402) AS refused_402, sum(h.refused_429) AS refused_429,"  \
    " sum(h.refused_5xx) AS refused_5xx"

/* The rollup columns SUMS adds up, as read from either table. */
#define ROLLCOLS                                                                                        \
    "requests, prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico," \
    " failed_5xx, refused_402, refused_429, refused_5xx"

/* A period [t0, t1) read from both rollups (one row w, from the CTE named
 * `r` holding t0, t1 and `use`, whether the daily rollups may serve): the
 * whole UTC days [d0, d1) inside it from usage_daily, the hours before d0 and
 * from d1 on from usage_hourly.  When the daily rollups may not serve (or no
 * whole day is inside), d0 = d1 = t1: every hour from usage_hourly. */
#define SPLIT_DAYS                                                                                      \
    " w AS (SELECT t0, t1, CASE WHEN use AND dd0 < dd1 THEN dd0 ELSE t1 END AS d0,"                    \
    "   CASE WHEN use AND dd0 < dd1 THEN dd1 ELSE t1 END AS d1 FROM"                                    \
    "   (SELECT t0, t1, use, date_trunc('day', t0 - interval '1 microsecond', 'UTC') + interval '24 hours' AS dd0," \
    "     date_trunc('day', t1, 'UTC') AS dd1 FROM r) r)"

/* $1 customer, $2 from, $3 to, $4 'hour'|'day', $5 split by key, $6 split by
 * model.  By day without a split, the whole days come from the daily rollups. */
const char BILL_REPORT_USAGE_SQL[] =
    "WITH c AS (SELECT id, name FROM customers WHERE name = $1),"
    " r AS (SELECT $2::timestamptz AS t0, $3::timestamptz AS t1, $4 = 'day' AND NOT $5::bool AND NOT $6::bool AS use),"
    SPLIT_DAYS ","
    " h AS (SELECT h.hour AS at, h.key_id, h.model, " ROLLCOLS " FROM usage_hourly h, c, w"
    "   WHERE h.customer_id = c.id AND h.hour >= w.t0 AND h.hour < w.d0"
    "   UNION ALL SELECT h.hour, h.key_id, h.model, " ROLLCOLS " FROM usage_hourly h, c, w"
    "   WHERE h.customer_id = c.id AND h.hour >= w.d1 AND h.hour < w.t1"
    "   UNION ALL SELECT d.day, NULL, NULL, " ROLLCOLS " FROM usage_daily d, c, w"
    "   WHERE d.customer_id = c.id AND d.day >= w.d0 AND d.day < w.d1),"
    " x AS (SELECT date_trunc($4, h.at, 'UTC') AS period, CASE WHEN $5::bool THEN h.key_id END AS key_id,"
    "   CASE WHEN $6::bool THEN h.model END AS model, " SUMS
    "   FROM h GROUP BY 1, 2, 3),"
    " t AS (SELECT coalesce(sum(requests), 0) AS requests, coalesce(sum(hit), 0) AS hit,"
    "   coalesce(sum(miss), 0) AS miss, coalesce(sum(completion), 0) AS completion,"
    "   coalesce(sum(reasoning), 0) AS reasoning, coalesce(sum(cost), 0) AS cost,"
    "   coalesce(sum(failed_5xx), 0) AS failed_5xx, coalesce(sum(refused_402), 0) AS refused_402,"
    "   coalesce(sum(refused_429), 0) AS refused_429, coalesce(sum(refused_5xx), 0) AS refused_5xx FROM x)"
    " SELECT json_build_object('object', 'report', 'report', 'usage', 'customer', c.name, 'customer_id', c.id,"
    " 'by', $4, 'from', " ADM_PERIOD_FROM("$2::timestamptz", "$3::timestamptz") ", 'to', $3::timestamptz,"
    " 'split', CASE WHEN $5::bool AND $6::bool THEN 'key,model' WHEN $5::bool THEN 'key'"
    "   WHEN $6::bool THEN 'model' END,"
    " 'totals', (SELECT json_build_object(" SUMJ ") FROM t x),"
    " 'data', coalesce((SELECT json_agg(json_strip_nulls(json_build_object('period', x.period, 'key_id', x.key_id,"
    "   'model', x.model, " SUMJ ")) ORDER BY x.period, x.key_id, x.model) FROM x), '[]'))::text"
    " FROM c";

/* $1 from, $2 to, $3 limit: the customers with the highest cost in [from, to),
 * found on the (day) and (hour) indexes alone (whole days from the daily
 * rollups: about 31 rows per customer for a month, not 744+), then their sums
 * by primary key. */
const char BILL_REPORT_TOP_SQL[] =
    "WITH r AS (SELECT $1::timestamptz AS t0, $2::timestamptz AS t1, true AS use)," SPLIT_DAYS ","
    " s AS (SELECT customer_id, sum(cost_pico) AS cost FROM"
    "   (SELECT h.customer_id, h.cost_pico FROM usage_hourly h, w WHERE h.hour >= w.t0 AND h.hour < w.d0"
    "    UNION ALL SELECT h.customer_id, h.cost_pico FROM usage_hourly h, w WHERE h.hour >= w.d1 AND h.hour < w.t1"
    "    UNION ALL SELECT d.customer_id, d.cost_pico FROM usage_daily d, w WHERE d.day >= w.d0 AND d.day < w.d1) u"
    "   GROUP BY 1),"
    " top AS (SELECT customer_id, cost FROM s ORDER BY cost DESC, customer_id LIMIT $3::int),"
    " x AS (SELECT top.customer_id, row_number() OVER (ORDER BY top.cost DESC, top.customer_id) AS rank, d.*"
    "   FROM top, w, LATERAL (SELECT " SUMS " FROM"
    "     (SELECT " ROLLCOLS " FROM usage_hourly h WHERE h.customer_id = top.customer_id AND h.hour >= w.t0"
    "      AND h.hour < w.d0"
    "      UNION ALL SELECT " ROLLCOLS " FROM usage_hourly h WHERE h.customer_id = top.customer_id"
    "      AND h.hour >= w.d1 AND h.hour < w.t1"
    "      UNION ALL SELECT " ROLLCOLS " FROM usage_daily d WHERE d.customer_id = top.customer_id"
    "      AND d.day >= w.d0 AND d.day < w.d1) h) d)"
    " SELECT json_build_object('object', 'report', 'report', 'top',"
    " 'from', " ADM_PERIOD_FROM("$1::timestamptz", "$2::timestamptz") ", 'to', $2::timestamptz,"
    " 'limit', $3::int, 'customers', (SELECT count(*) FROM s)::text,"
    " 'total_cost_pico', (SELECT coalesce(sum(cost), 0) FROM s)::text,"
    " 'total_cost_usd', tg_usd((SELECT coalesce(sum(cost), 0) FROM s)),"
    " 'data', coalesce((SELECT json_agg(json_build_object('rank', x.rank, 'customer', c.name,"
    "   'customer_id', x.customer_id, " SUMJ ") ORDER BY x.rank) FROM x JOIN customers c ON c.id = x.customer_id),"
    "   '[]'))::text";

/* $1 customer, $2 from, $3 to, $4 'hour'|'day': the balance at the end of
 * each period in [from, to) (at most 10000 periods: more, or an infinite bound,
 * is an error, SQLSTATE 22023; generate_series would never end on an infinite
 * one, a LIMIT does not stop it), without one ledger row
 * per request: usage debits come from the hourly rollups (by the hour the
 * request arrived), the other ledger rows (top-ups, adjustments, refunds; a
 * few, on the partial index ledger_customer_credits) by their time.  The
 * balance at from is the balance now minus every movement since; the last
 * period's balance is the balance now when `to` is now or later. */
const char BILL_REPORT_BALANCE_SQL[] =
    "WITH c AS (SELECT id, name, balance_pico FROM customers WHERE name = $1),"
    " p AS (SELECT date_trunc($4, $2::timestamptz, 'UTC') AS t0, $3::timestamptz AS t1,"
    "   CASE $4 WHEN 'hour' THEN interval '1 hour' ELSE interval '24 hours' END AS step),"
    " cr AS (SELECT l.created_at AS at, l.amount_pico AS amount FROM ledger l, c, p"
    "   WHERE l.customer_id = c.id AND l.kind <> 'usage' AND l.created_at >= p.t0),"
    " us AS (SELECT h.hour AS at, h.cost_pico AS cost FROM usage_hourly h, c, p"
    "   WHERE h.customer_id = c.id AND h.hour >= p.t0 AND h.cost_pico <> 0),"
    " o AS (SELECT c.balance_pico - coalesce((SELECT sum(amount) FROM cr), 0)"
    "   + coalesce((SELECT sum(cost) FROM us), 0) AS v FROM c),"
    " m AS (SELECT date_trunc($4, at, 'UTC') AS t, sum(credits) AS credits, sum(debits) AS debits FROM"
    "   (SELECT at, greatest(amount, 0) AS credits, greatest(-amount, 0) AS debits FROM cr"
    "    UNION ALL SELECT at, 0, cost FROM us) x, p WHERE at < p.t1 GROUP BY 1),"
    " b AS (SELECT g AS t FROM p, generate_series(p.t0, CASE WHEN isfinite(p.t0) AND isfinite(p.t1)"
    "   AND p.t1 <= p.t0 + p.step * 10000 THEN p.t1 - interval '1 microsecond' ELSE tg_raise('the balance report"
    " covers at most 10000 periods (hours or days) between two finite times: from ' || p.t0 || ' to ' || p.t1"
    " || ' by ' || $4 || ' is more: narrow the period, or report by day')::timestamptz END, p.step) g),"
    " x AS (SELECT b.t, coalesce(m.credits, 0) AS credits, coalesce(m.debits, 0) AS debits,"
    "   o.v + sum(coalesce(m.credits, 0) - coalesce(m.debits, 0)) OVER (ORDER BY b.t) AS balance"
    "   FROM b CROSS JOIN o LEFT JOIN m ON m.t = b.t)"
    " SELECT json_build_object('object', 'report', 'report', 'balance', 'customer', c.name, 'customer_id', c.id,"
    " 'by', $4, 'from', " ADM_PERIOD_FROM("p.t0", "p.t1") ", 'to', p.t1,"
    " 'opening_balance_pico', o.v::text, 'opening_balance_usd', tg_usd(o.v),"
    " 'balance_pico', c.balance_pico::text, 'balance_usd', tg_usd(c.balance_pico),"
    " 'data', coalesce((SELECT json_agg(json_build_object('period', x.t, 'credits_pico', x.credits::text,"
    "   'debits_pico', x.debits::text, 'balance_pico', x.balance::text, 'balance_usd', tg_usd(x.balance))"
    "   ORDER BY x.t) FROM x), '[]'))::text"
    " FROM c, p, o";

/* $1 request id: the usage row, as GET /admin/v1/customers/{name}/usage shows rows. */
static const char USAGE_ROW_SQL[] =
    "SELECT json_build_object('object', 'usage', 'request_id', u.request_id, 'customer', c.name,"
    " 'customer_id', u.customer_id, 'key_id', u.key_id, 'model', u.model, 'prompt_tokens', u.prompt_tokens,"
    " 'prompt_cache_hit_tokens', u.prompt_cache_hit_tokens, 'prompt_cache_miss_tokens', u.prompt_cache_miss_tokens,"
    " 'completion_tokens', u.completion_tokens, 'reasoning_tokens', u.reasoning_tokens,"
    " 'price_input_cache_miss', u.price_input_cache_miss::text, 'price_input_cache_hit',"
    " u.price_input_cache_hit::text, 'price_output', u.price_output::text, 'cost_pico', u.cost_pico::text,"
    " 'cost_usd', tg_usd(u.cost_pico), 'http_status', u.http_status, 'stream', u.stream,"
    " 'received_at', u.received_at, 'finished_at', u.finished_at, 'price_id', u.price_id,"
    " 'override_id', u.override_id, 'price_version', CASE WHEN u.price_id IS NOT NULL OR u.override_id IS NOT NULL"
    "   THEN 'p' || coalesce(u.price_id, 0) || coalesce('.o' || u.override_id, '') END,"
    " 'invoice_month', to_char(u.received_at AT TIME ZONE 'UTC', 'YYYY-MM'))::text"
    " FROM usage u JOIN customers c ON c.id = u.customer_id WHERE u.request_id = $1::uuid";

static int uuid_ok(const char *s) {
    if (strlen(s) != 36) return 0;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return 0;
        }
    }
    return 1;
}

/* ?by=hour|day (default dflt); NULL (answered 400) when something else. */
static const char *by_param(adm_req_t *r, struct evkeyvalq *q, const char *dflt) {
    const char *by = evhttp_find_header(q, "by");
    if (!by) return dflt;
    if (!strcmp(by, "hour") || !strcmp(by, "day")) return by;
    adm_field_error(r, "invalid_value", "by", "%s", "by must be hour or day");
    return NULL;
}

static void usage_report(adm_req_t *r, struct evkeyvalq *q) {
    const char *cust = evhttp_find_header(q, "customer"), *split = evhttp_find_header(q, "split");
    const char *by = by_param(r, q, "day");
    if (!by) return;
    if (!cust || !*cust) return adm_field_error(r, "missing_parameter", "customer", "%s", "customer is required");
    int by_key = 0, by_model = 0;
    if (split) {
        if (!strcmp(split, "key")) by_key = 1;
        else if (!strcmp(split, "model")) by_model = 1;
        else if (!strcmp(split, "key,model") || !strcmp(split, "model,key")) by_key = by_model = 1;
        else if (*split)
            return adm_field_error(r, "invalid_value", "split", "%s", "split must be key, model or key,model");
    }
    char f2[40], t2[40];
    int bad = 0;
    const char *from = adm_time_q(r, q, "from", f2, &bad);
    const char *to = bad ? NULL : adm_time_q(r, q, "to", t2, &bad);
    if (bad) return;
    const char *p[] = {cust, from && *from ? from : "-infinity", to && *to ? to : "infinity", by,
                       by_key ? "t" : "f", by_model ? "t" : "f"};
    adm_read(r, BILL_REPORT_USAGE_SQL, 6, p, "no such customer");
}

/* An ISO UTC timestamp of Unix time t into out[40]. */
static const char *iso(time_t t, char out[40]) {
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 40, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return out;
}

static void top_report(adm_req_t *r, struct evkeyvalq *q) {
    const char *limit = evhttp_find_header(q, "limit");
    if (limit && (!*limit || strspn(limit, "0123456789") != strlen(limit) || strlen(limit) > 5 || atoi(limit) < 1))
        return adm_field_error(r, "invalid_value", "limit", "%s", "limit must be an integer from 1 to 99999");
    char f2[40], t2[40], month[40];
    int bad = 0;
    const char *from = adm_time_q(r, q, "from", f2, &bad);
    const char *to = bad ? NULL : adm_time_q(r, q, "to", t2, &bad);
    if (bad) return;
    if (!from || !*from) { /* default: from the start of the current UTC month */
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(month, sizeof month, "%04d-%02d-01T00:00:00Z", tm.tm_year + 1900, tm.tm_mon + 1);
        from = month;
    }
    const char *p[] = {from, to && *to ? to : "infinity", limit ? limit : "20"};
    adm_read(r, BILL_REPORT_TOP_SQL, 3, p, NULL);
}

static void balance_report(adm_req_t *r, struct evkeyvalq *q) {
    const char *cust = evhttp_find_header(q, "customer");
    const char *by = by_param(r, q, "day");
    if (!by) return;
    if (!cust || !*cust) return adm_field_error(r, "missing_parameter", "customer", "%s", "customer is required");
    char f2[40], t2[40], fd[40], td[40];
    int bad = 0;
    const char *from = adm_time_q(r, q, "from", f2, &bad);
    const char *to = bad ? NULL : adm_time_q(r, q, "to", t2, &bad);
    if (bad) return;
    time_t now = time(NULL);
    if (!to || !*to) to = iso(now + 1, td); /* default: up to now, the last 30 days (48 hours by hour) */
    if (!from || !*from) from = iso(now - (!strcmp(by, "day") ? 29 * 86400 : 47 * 3600), fd);
    const char *p[] = {cust, from, to, by};
    adm_read(r, BILL_REPORT_BALANCE_SQL, 4, p, "no such customer");
}

int bill_report_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q) {
    int method = r->method;
    if (nseg == 2 && !strcmp(seg[0], "reports")) {
        if (method != EVHTTP_REQ_GET) {
            adm_bad_method(r, "GET");
        } else if (!strcmp(seg[1], "usage")) {
            usage_report(r, q);
        } else if (!strcmp(seg[1], "top")) {
            top_report(r, q);
        } else if (!strcmp(seg[1], "balance")) {
            balance_report(r, q);
        } else {
            adm_error(r, 404, "not_found", "%s", "no such report (usage, top, balance)");
        }
        return 1;
    }
    if (nseg == 2 && !strcmp(seg[0], "usage")) {
        if (method != EVHTTP_REQ_GET) adm_bad_method(r, "GET");
        else if (!uuid_ok(seg[1])) adm_error(r, 404, "not_found", "%s", "no such request id");
        else {
            const char *p[] = {seg[1]};
            adm_read(r, USAGE_ROW_SQL, 1, p, "no usage row for this request id");
        }
        return 1;
    }
    return 0;
}
