/* bill_dash_views.c — what the dashboards show: the SQL and handlers of the
 * customer's view and the operator's view (routed here by bill_dash.c once
 * the session is known).
 *
 * Every customer statement takes the customer id as $1 from the session
 * (c->who), never from the request: a key id, a month or a request cursor in
 * the request only narrows what that customer owns, so guessing another
 * customer's ids finds nothing (404 or an empty list).
 *
 * Charts and totals read the hourly rollups (usage_hourly) and the ledger
 * through (customer_id, created_at) indexes, never the usage table; the
 * request log pages through usage by its (customer_id, received_at) and
 * (customer_id, key_id, received_at) indexes, keyset-paginated.  Invoices are
 * the admin API's own statement (BILL_INVOICE_SQL: the finalized document as
 * stored, else the draft), JSON and CSV, so the page is the invoice.  Money
 * leaves PostgreSQL as decimal strings of pico-USD (and USD rounded to 6
 * decimals for display); never a JSON number. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>


#include "bill_admin-int.h"
#include "bill_dash-int.h"

/* Sums of a group of rollup rows h, and the same as JSON members of x: every
 * sum a string of digits, counters too (a JSON number is a double to the
 * browser, exact only to 2^53), as the admin API's reports write them. */
#define SUMS                                                                                            \
    "sum(h.requests) AS requests, sum(h.prompt_cache_hit_tokens) AS hit, sum(h.prompt_cache_miss_tokens) AS miss," \
    " sum(h.completion_tokens) AS completion, sum(h.reasoning_tokens) AS reasoning, sum(h.cost_pico) AS cost,"   \
    " sum(h.failed_5xx) AS failed_5xx, sum(h.refused_402) AS refused_402, sum(h.refused_429) AS refused_429,"  \
    " sum(h.refused_5xx) AS refused_5xx"
#define SUMJ                                                                                            \
    "'requests', x.requests::text, 'prompt_cache_hit_tokens', x.hit::text, 'prompt_cache_miss_tokens', x.miss::text," \
    " 'completion_tokens', x.completion::text, 'reasoning_tokens', x.reasoning::text,"                 \
    " 'cost_pico', x.cost::text, 'cost_usd', tg_usd(x.cost), 'failed_5xx', x.failed_5xx::text,"       \
    " 'refused_402', x.refused_402::text, 'refused_429', x.refused_429::text, 'refused_5xx', x.refused_5xx::text"

/* $1 customer id.  Balance, this month's and today's spend (rollups), the
 * customer's spending limits and headroom, and the credit history (ledger
 * rows other than usage debits, newest first, through the partial index). */
static const char OVERVIEW_SQL[] =
    "WITH c AS (SELECT * FROM customers WHERE id = $1::bigint),"
    " m AS (SELECT date_trunc('month', now(), 'UTC') AS t0, date_trunc('day', now(), 'UTC') AS d0),"
    " x AS (SELECT coalesce(sum(h.cost_pico), 0) AS month_cost,"
    "   coalesce(sum(h.cost_pico) FILTER (WHERE h.hour >= m.d0), 0) AS day_cost,"
    "   coalesce(sum(h.requests), 0) AS requests FROM usage_hourly h, m"
    "   WHERE h.customer_id = $1::bigint AND h.hour >= m.t0),"
    " l AS (SELECT * FROM ledger WHERE customer_id = $1::bigint AND kind <> 'usage'"
    "   ORDER BY created_at DESC, id DESC LIMIT 100)"
    " SELECT json_build_object('customer', c.name, 'customer_id', c.id,"
    " 'balance_pico', c.balance_pico::text, 'balance_usd', tg_usd(c.balance_pico),"
    " 'month', to_char(m.t0 AT TIME ZONE 'UTC', 'YYYY-MM'),"
    " 'month_cost_pico', x.month_cost::text, 'month_cost_usd', tg_usd(x.month_cost), 'month_requests', x.requests::text,"
    " 'today_cost_pico', x.day_cost::text, 'today_cost_usd', tg_usd(x.day_cost),"
    " 'daily_limit_pico', c.daily_limit_pico::text, 'daily_limit_usd', tg_usd(c.daily_limit_pico),"
    " 'monthly_limit_pico', c.monthly_limit_pico::text, 'monthly_limit_usd', tg_usd(c.monthly_limit_pico),"
    " 'daily_headroom_pico', (c.daily_limit_pico - x.day_cost)::text,"
    " 'daily_headroom_usd', tg_usd(c.daily_limit_pico - x.day_cost),"
    " 'monthly_headroom_pico', (c.monthly_limit_pico - x.month_cost)::text,"
    " 'monthly_headroom_usd', tg_usd(c.monthly_limit_pico - x.month_cost),"
    " 'credits', coalesce((SELECT json_agg(json_build_object('id', l.id, 'kind', l.kind,"
    "   'amount_pico', l.amount_pico::text, 'amount_usd', tg_usd(l.amount_pico), 'note', l.note,"
    "   'created_at', l.created_at) ORDER BY l.created_at DESC, l.id DESC) FROM l), '[]'))::text"
    " FROM c, m, x";

/* $1 customer id, $2 from, $3 to, $4 'hour'|'day', $5 key id or NULL, $6
 * model or NULL: sums per period from the rollups, the totals, and what the
 * selectors offer (the customer's keys by prefix, the models in the period). */
static const char USAGE_SQL[] =
    "WITH x AS (SELECT date_trunc($4, h.hour, 'UTC') AS period, " SUMS
    "   FROM usage_hourly h WHERE h.customer_id = $1::bigint AND h.hour >= $2::timestamptz"
    "   AND h.hour < $3::timestamptz AND ($5::bigint IS NULL OR h.key_id = $5::bigint)"
    "   AND ($6::text IS NULL OR h.model = $6::text) GROUP BY 1),"
    " t AS (SELECT coalesce(sum(requests), 0) AS requests, coalesce(sum(hit), 0) AS hit,"
    "   coalesce(sum(miss), 0) AS miss, coalesce(sum(completion), 0) AS completion,"
    "   coalesce(sum(reasoning), 0) AS reasoning, coalesce(sum(cost), 0) AS cost,"
    "   coalesce(sum(failed_5xx), 0) AS failed_5xx, coalesce(sum(refused_402), 0) AS refused_402,"
    "   coalesce(sum(refused_429), 0) AS refused_429, coalesce(sum(refused_5xx), 0) AS refused_5xx FROM x)"
    " SELECT json_build_object('object', 'report', 'report', 'usage', 'by', $4::text,"
    " 'from', $2::timestamptz, 'to', $3::timestamptz, 'key_id', $5::bigint, 'model', $6::text,"
    " 'totals', (SELECT json_build_object(" SUMJ ") FROM t x),"
    " 'data', coalesce((SELECT json_agg(json_build_object('period', x.period, " SUMJ ") ORDER BY x.period)"
    "   FROM x), '[]'),"
    " 'keys', coalesce((SELECT json_agg(json_build_object('id', k.id, 'prefix', k.prefix, 'name', k.name)"
    "   ORDER BY k.id) FROM api_keys k WHERE k.customer_id = $1::bigint), '[]'),"
    " 'models', coalesce((SELECT json_agg(DISTINCT h.model) FROM usage_hourly h WHERE h.customer_id = $1::bigint"
    "   AND h.hour >= $2::timestamptz AND h.hour < $3::timestamptz), '[]'))::text";

/* A key as the customer sees it: prefix only, never the hash. */
#define DKEYJ                                                                                   \
    "json_build_object('id', k.id, 'prefix', k.prefix, 'name', k.name,"                         \
    " 'state', tg_key_state(k.revoked_at, k.expires_at, k.replaced_by),"                        \
    " 'rpm', k.rpm, 'tpm', k.tpm, 'concurrency', k.concurrency, 'models', k.models,"           \
    " 'expires_at', k.expires_at, 'created_at', k.created_at, 'revoked_at', k.revoked_at,"      \
    " 'last_used_at', k.last_used_at,"                                                          \
    " 'daily_limit_pico', k.daily_limit_pico::text, 'daily_limit_usd', tg_usd(k.daily_limit_pico),"   \
    " 'monthly_limit_pico', k.monthly_limit_pico::text, 'monthly_limit_usd', tg_usd(k.monthly_limit_pico))"

/* $1 customer id: the keys, with this month's and today's spend per key from
 * the rollups and the headroom left under each spending limit. */
static const char KEYS_SQL[] =
    "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg((" DKEYJ "::jsonb ||"
    " jsonb_build_object('today_cost_pico', s.day::text, 'today_cost_usd', tg_usd(s.day),"
    "   'month_cost_pico', s.month::text, 'month_cost_usd', tg_usd(s.month),"
    "   'daily_headroom_pico', (k.daily_limit_pico - s.day)::text,"
    "   'daily_headroom_usd', tg_usd(k.daily_limit_pico - s.day),"
    "   'monthly_headroom_pico', (k.monthly_limit_pico - s.month)::text,"
    "   'monthly_headroom_usd', tg_usd(k.monthly_limit_pico - s.month))) ORDER BY k.id), '[]'))::text"
    " FROM api_keys k LEFT JOIN LATERAL (SELECT"
    "   coalesce(sum(h.cost_pico) FILTER (WHERE h.hour >= date_trunc('day', now(), 'UTC')), 0) AS day,"
    "   coalesce(sum(h.cost_pico), 0) AS month FROM usage_hourly h WHERE h.customer_id = $1::bigint"
    "   AND h.hour >= date_trunc('month', now(), 'UTC') AND h.key_id = k.id) s ON true"
    " WHERE k.customer_id = $1::bigint";

/* $1 customer id, $2 hash, $3 prefix, $4 name, $5/$6 daily/monthly spending
 * limit pico (NULL: none), $7 actor.  Audited like the admin API's create. */
static const char KEY_CREATE_SQL[] =
    "WITH k AS (INSERT INTO api_keys (customer_id, key_hash, prefix, name, daily_limit_pico, monthly_limit_pico)"
    "   VALUES ($1::bigint, $2, $3, coalesce($4, ''), $5::bigint, $6::bigint) RETURNING *),"
    " a AS (INSERT INTO admin_audit (actor, action, target, before, after)"
    "   SELECT $7, 'key.create', 'key:' || k.id, NULL, to_jsonb(k) - 'key_hash' FROM k RETURNING 1)"
    " SELECT " DKEYJ "::text FROM k";

/* $1 customer id, $2 key id, $3 actor: revoke one of the customer's own keys
 * (another customer's id finds no row: 404).  The api_keys trigger NOTIFYs
 * every gateway, whose key caches drop the key at once. */
static const char KEY_REVOKE_SQL[] =
    "WITH old AS (SELECT * FROM api_keys WHERE id = $2::bigint AND customer_id = $1::bigint FOR UPDATE),"
    " k AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = (SELECT id FROM old)"
    "   RETURNING *),"
    " a AS (INSERT INTO admin_audit (actor, action, target, before, after)"
    "   SELECT $3, 'key.revoke', 'key:' || k.id, to_jsonb(old) - 'key_hash', to_jsonb(k) - 'key_hash'"
    "   FROM old, k RETURNING 1)"
    " SELECT " DKEYJ "::text FROM k";

/* $1 customer id: months with usage (rollups) and the current month, with
 * their cost and requests. */
static const char INVOICES_SQL[] =
    "WITH x AS (SELECT date_trunc('month', h.hour, 'UTC') AS m, sum(h.cost_pico) AS cost,"
    "   sum(h.requests) AS requests FROM usage_hourly h WHERE h.customer_id = $1::bigint GROUP BY 1"
    "   UNION ALL SELECT date_trunc('month', now(), 'UTC'), 0, 0),"
    " y AS (SELECT m, sum(cost) AS cost, sum(requests) AS requests FROM x GROUP BY m)"
    " SELECT json_build_object('object', 'list', 'data', json_agg(json_build_object("
    "   'month', to_char(y.m AT TIME ZONE 'UTC', 'YYYY-MM'), 'total_pico', y.cost::text,"
    "   'total_usd', tg_usd(y.cost), 'requests', y.requests::text,"
    "   'status', CASE WHEN EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = $1::bigint"
    "     AND i.month = (y.m AT TIME ZONE 'UTC')::date) THEN 'finalized' ELSE 'draft' END,"
    "   'open', y.m = date_trunc('month', now(), 'UTC')) ORDER BY y.m DESC))::text FROM y";

/* $1 customer id, $2 from, $3 to, $4 key id or NULL, $5 model or NULL, $6
 * status or NULL, $7/$8 cursor (received_at in Unix microseconds, request id)
 * or NULL, $9 page size: the request log, newest first. */
static const char REQUESTS_SQL[] =
    "WITH r AS (SELECT u.*, (extract(epoch FROM u.received_at) * 1000000)::bigint AS us FROM usage u"
    "   WHERE u.customer_id = $1::bigint AND u.received_at >= $2::timestamptz AND u.received_at < $3::timestamptz"
    "   AND ($4::bigint IS NULL OR u.key_id = $4::bigint) AND ($5::text IS NULL OR u.model = $5::text)"
    "   AND ($6::int IS NULL OR u.http_status = $6::int)"
    "   AND ($7::bigint IS NULL OR (u.received_at, u.request_id) <"
    "     ('epoch'::timestamptz + $7::bigint * interval '1 microsecond', $8::uuid))"
    "   ORDER BY u.received_at DESC, u.request_id DESC LIMIT $9::int + 1),"
    " p AS (SELECT * FROM r ORDER BY received_at DESC, request_id DESC LIMIT $9::int)"
    " SELECT json_build_object('object', 'list', 'has_more', (SELECT count(*) FROM r) > $9::int,"
    " 'next', CASE WHEN (SELECT count(*) FROM r) > $9::int THEN"
    "   (SELECT p.us::text || ',' || p.request_id FROM p ORDER BY p.received_at, p.request_id LIMIT 1) END,"
    " 'data', coalesce((SELECT json_agg(json_build_object('request_id', p.request_id, 'received_at', p.received_at,"
    "   'key_id', p.key_id, 'key_prefix', k.prefix, 'model', p.model, 'http_status', p.http_status,"
    "   'stream', p.stream, 'prompt_cache_hit_tokens', p.prompt_cache_hit_tokens,"
    "   'prompt_cache_miss_tokens', p.prompt_cache_miss_tokens, 'completion_tokens', p.completion_tokens,"
    "   'reasoning_tokens', p.reasoning_tokens, 'cost_pico', p.cost_pico::text, 'cost_usd', tg_usd(p.cost_pico),"
    "   'duration_ms', round(extract(epoch FROM p.finished_at - p.received_at) * 1000))"
    "   ORDER BY p.received_at DESC, p.request_id DESC) FROM p LEFT JOIN api_keys k ON k.id = p.key_id), '[]'))::text";

/* $1 from, $2 to, $3 limit (BILL_REPORT_TOP_SQL's parameters): revenue and
 * tokens by model and by customer (the top report), revenue per day, the
 * customers nearest to zero, and keys and customers near a spending limit
 * (open customers only: a closed one can neither top up nor spend). */
static const char ADMIN_OVERVIEW_HEAD[] =
    "WITH h AS (SELECT * FROM usage_hourly h WHERE h.hour >= $1::timestamptz AND h.hour < $2::timestamptz),"
    " bm AS (SELECT h.model, " SUMS " FROM h GROUP BY h.model),"
    " bd AS (SELECT date_trunc('day', h.hour, 'UTC') AS period, " SUMS " FROM h GROUP BY 1),"
    " mo AS (SELECT date_trunc('month', now(), 'UTC') AS t0, date_trunc('day', now(), 'UTC') AS d0),"
    " lim AS (SELECT 'key' AS kind, k.id, c.name AS customer, k.prefix, k.daily_limit_pico AS dl,"
    "     k.monthly_limit_pico AS ml, s.day, s.month FROM api_keys k JOIN customers c ON c.id = k.customer_id,"
    "     LATERAL (SELECT coalesce(sum(cost_pico) FILTER (WHERE hour >= (SELECT d0 FROM mo)), 0) AS day,"
    "       coalesce(sum(cost_pico), 0) AS month FROM usage_hourly u WHERE u.customer_id = k.customer_id"
    "       AND u.key_id = k.id AND u.hour >= (SELECT t0 FROM mo)) s"
    "     WHERE k.revoked_at IS NULL AND c.closed_at IS NULL"
    "     AND (k.daily_limit_pico IS NOT NULL OR k.monthly_limit_pico IS NOT NULL)"
    "   UNION ALL SELECT 'customer', c.id, c.name, NULL, c.daily_limit_pico, c.monthly_limit_pico, s.day, s.month"
    "     FROM customers c, LATERAL (SELECT"
    "       coalesce(sum(cost_pico) FILTER (WHERE hour >= (SELECT d0 FROM mo)), 0) AS day,"
    "       coalesce(sum(cost_pico), 0) AS month FROM usage_hourly u WHERE u.customer_id = c.id"
    "       AND u.hour >= (SELECT t0 FROM mo)) s"
    "     WHERE c.closed_at IS NULL AND (c.daily_limit_pico IS NOT NULL OR c.monthly_limit_pico IS NOT NULL)),"
    " near AS (SELECT *, greatest(CASE WHEN dl > 0 THEN day / dl WHEN dl = 0 THEN 1 END,"
    "   CASE WHEN ml > 0 THEN month / ml WHEN ml = 0 THEN 1 END) AS used FROM lim)"
    " SELECT json_build_object('object', 'report', 'report', 'operator', 'from', $1::timestamptz,"
    " 'to', $2::timestamptz,"
    " 'by_model', coalesce((SELECT json_agg(json_build_object('model', x.model, " SUMJ ") ORDER BY x.cost DESC,"
    "   x.model) FROM bm x), '[]'),"
    " 'by_day', coalesce((SELECT json_agg(json_build_object('period', x.period, " SUMJ ") ORDER BY x.period)"
    "   FROM bd x), '[]'),"
    " 'paying_customers', (SELECT count(*) FROM (SELECT 1 FROM h GROUP BY h.customer_id"
    "   HAVING sum(h.cost_pico) > 0) p)::text,"
    " 'top', (";
static const char ADMIN_OVERVIEW_TAIL[] =
    ")::json,"
    " 'near_zero', coalesce((SELECT json_agg(json_build_object('customer', c.name, 'customer_id', c.id,"
    "   'balance_pico', c.balance_pico::text, 'balance_usd', tg_usd(c.balance_pico)) ORDER BY c.balance_pico, c.id)"
    "   FROM (SELECT * FROM customers WHERE closed_at IS NULL ORDER BY balance_pico, id LIMIT 10) c), '[]'),"
    " 'near_limit', coalesce((SELECT json_agg(json_build_object('kind', n.kind, 'id', n.id, 'customer', n.customer,"
    "   'prefix', n.prefix, 'daily_limit_pico', n.dl::text, 'daily_limit_usd', tg_usd(n.dl),"
    "   'monthly_limit_pico', n.ml::text, 'monthly_limit_usd', tg_usd(n.ml),"
    "   'today_cost_pico', n.day::text, 'today_cost_usd', tg_usd(n.day), 'month_cost_pico', n.month::text,"
    "   'month_cost_usd', tg_usd(n.month), 'used_percent', floor(n.used * 100)::text)"
    "   ORDER BY n.used DESC, n.kind, n.id) FROM (SELECT * FROM near WHERE used >= 0.8 ORDER BY used DESC LIMIT 50) n),"
    "   '[]'))::text";

/* ---- parameters -------------------------------------------------------------- */

/* An optional id (digits, at most 18) into out; NULL when absent.  -1 after a 400. */
static int id_param(dash_call_t *c, const char *name, const char **out) {
    const char *v = dash_param(c, name);
    *out = NULL;
    if (!v || !*v) return 0;
    if (strlen(v) > 18 || strspn(v, "0123456789") != strlen(v)) {
        dash_field_error(c, "invalid_value", name, "%s must be an id (digits)", name);
        return -1;
    }
    *out = v;
    return 0;
}

/* An optional model filter (empty: none) of at most 200 bytes; a longer one
 * is a 400, not silently every model.  -1 after the 400. */
static int model_param(dash_call_t *c, const char **model) {
    if (*model && !**model) *model = NULL;
    if (*model && strlen(*model) > 200) {
        dash_field_error(c, "invalid_value", "model", "model must be a model name of at most 200 bytes");
        return -1;
    }
    return 0;
}

/* from/to: Unix seconds or a timestamp PostgreSQL reads; defaults given. */
/* A time parameter: dflt when absent or empty; NULL with a 400 naming it
 * sent (*bad set) when it is not a time (adm_time_valid). */
static const char *time_param(dash_call_t *c, const char *name, char buf[40], const char *dflt, int *bad) {
    const char *v = dash_param(c, name);
    if (*bad) return NULL;
    if (!v || !*v) return dflt;
    if (!adm_time_valid(v)) {
        *bad = 1;
        dash_field_error(c, "invalid_value", name, "%s %s", name, ADM_TIME_RULE);
        return NULL;
    }
    return adm_epoch_to_iso(v, buf);
}

static char *actor(dash_call_t *c, char out[96]) {
    snprintf(out, 96, "dashboard:%s", c->who.login);
    return out;
}

/* ---- customer views ------------------------------------------------------------ */

static void usage_view(dash_call_t *c) {
    const char *by = dash_param(c, "by"), *key, *model = dash_param(c, "model");
    if (!by || !*by) by = "day";
    int hourly = !strcmp(by, "hour");
    if (!hourly && strcmp(by, "day")) return dash_field_error(c, "invalid_value", "by", "by must be hour or day");
    if (id_param(c, "key", &key) != 0) return;
    if (model_param(c, &model) != 0) return;
    /* default: the last 48 hours, or the last 30 days, whole periods up to now */
    time_t now = time(NULL), step = hourly ? 3600 : 86400;
    char fb[40], tb[40], fd[40];
    snprintf(fd, sizeof fd, "%lld", (long long)(now - now % step - (hourly ? 47 : 29) * step));
    int bad = 0;
    const char *from = time_param(c, "from", fb, adm_epoch_to_iso(fd, fb), &bad);
    const char *to = time_param(c, "to", tb, "infinity", &bad);
    if (bad) return;
    const char *p[] = {c->who.customer_id, from, to, by, key, model};
    dash_read(c, USAGE_SQL, 6, p, NULL);
}

/* A session signed in with a restricted key (rpm, tpm, concurrency, models, a
 * spending limit or an expiry) writes no key but its own: a key it made would
 * have none of those limits and outlive it (before 2026-12-01 a key limited to
 * 1 rpm, one model and $0.01 a day made an unlimited, never-expiring key).
 * 1 after answering 403. */
static int key_write_refused(dash_call_t *c, const char *what) {
    if (!c->who.key_id[0] || !c->who.key_restricted) return 0;
    dash_error(c, 403, "key_restricted",
               "the API key you signed in with has limits (rate, models, spending or expiry), so it cannot %s;"
               " sign in with a dashboard login or an unrestricted key", what);
    return 1;
}

static void keys_view(dash_call_t *c) {
    if (c->is_get) {
        const char *p[] = {c->who.customer_id};
        return dash_read(c, KEYS_SQL, 1, p, NULL);
    }
    if (key_write_refused(c, "make keys")) return;
    tg_json_t *j = dash_body(c);
    if (!j) return;
    tg_json_t *fn = tg_json_get(j, "name");
    const char *name = tg_json_str(fn, NULL);
    char lim[2][24];
    const char *limp[2] = {NULL, NULL};
    static const char *const lname[2] = {"daily_limit_usd", "monthly_limit_usd"};
    if (fn && tg_json_type(fn) != TG_JSON_NULL && (!name || strlen(name) > 200 || !adm_text_plain(name))) {
        tg_json_free(j);
        return dash_field_error(c, "invalid_value", "name",
                                "name must be a string of at most 200 bytes without control characters");
    }
    for (int i = 0; i < 2; i++) {
        tg_json_t *f = tg_json_get(j, lname[i]);
        const char *v = tg_json_str(f, NULL);
        int64_t pico;
        if (!f || tg_json_type(f) == TG_JSON_NULL || (v && !v[0])) continue;
        if (!v || bill_usd_parse(v, &pico) != 0) {
            tg_json_free(j);
            return dash_field_error(c, "invalid_amount", lname[i],
                                    "%s must be a decimal string of USD (at most 9223372.036854775807), e.g. \"5.00\"",
                                    lname[i]);
        }
        snprintf(lim[i], sizeof lim[i], "%lld", (long long)pico);
        limp[i] = lim[i];
    }
    char key[BILL_KEY_LEN + 1], prefix[16], hash[65], who[96];
    if (bill_key_generate(key, prefix) != 0) {
        tg_json_free(j);
        return dash_error(c, 500, NULL, "no random bytes");
    }
    bill_key_hash(c->b->key_secret, key, hash);
    c->splice = strdup(key);
    c->splice_field = "key";
    OPENSSL_cleanse(key, sizeof key);
    if (!c->splice) {
        tg_json_free(j);
        return dash_error(c, 500, NULL, "out of memory");
    }
    const char *p[] = {c->who.customer_id, hash, prefix, name, limp[0], limp[1], actor(c, who)};
    dash_read(c, KEY_CREATE_SQL, 7, p, NULL);
    tg_json_free(j);
}

static void key_revoke(dash_call_t *c, const char *id) {
    char who[96];
    if (strlen(id) > 18 || strspn(id, "0123456789") != strlen(id))
        return dash_error(c, 404, "not_found", "no such key");
    if (strcmp(id, c->who.key_id) != 0 && key_write_refused(c, "revoke other keys")) return;
    const char *p[] = {c->who.customer_id, id, actor(c, who)};
    dash_read(c, KEY_REVOKE_SQL, 3, p, "no such key");
}

static void invoice_view(dash_call_t *c, const char *month, int csv) {
    if (!adm_month_ok(month)) return dash_error(c, 404, "not_found", "no such invoice (months are YYYY-MM)");
    const char *p[] = {c->who.customer, month, csv ? "csv" : "json"};
    if (csv) {
        c->ctype = "text/csv; charset=utf-8";
        snprintf(c->attach_name, sizeof c->attach_name, "invoice-%s-%s.csv", c->who.customer, month);
        c->attachment = c->attach_name;
    }
    dash_read(c, BILL_INVOICE_SQL, 3, p, "no such invoice");
}

static void requests_view(dash_call_t *c) {
    const char *key, *model = dash_param(c, "model"), *status = dash_param(c, "status");
    const char *limit = dash_param(c, "limit"), *before = dash_param(c, "before");
    if (id_param(c, "key", &key) != 0) return;
    if (model_param(c, &model) != 0) return;
    if (status && !*status) status = NULL;
    if (status && (strlen(status) != 3 || strspn(status, "0123456789") != 3))
        return dash_field_error(c, "invalid_value", "status", "status must be an HTTP status (3 digits)");
    if (!limit || !*limit) limit = "50";
    if (strlen(limit) > 3 || strspn(limit, "0123456789") != strlen(limit) || atoi(limit) < 1 || atoi(limit) > 500)
        return dash_field_error(c, "invalid_value", "limit", "limit must be 1 to 500");
    char cur_us[24] = "", cur_id[40] = "";
    if (before && *before) { /* "<unix us>,<request id>" from the previous page's next */
        const char *comma = strchr(before, ',');
        size_t n = comma ? (size_t)(comma - before) : 0;
        if (!comma || n == 0 || n > 19 || strspn(before, "0123456789") != n || strlen(comma + 1) != 36 ||
            strspn(comma + 1, "0123456789abcdef-") != 36)
            return dash_field_error(c, "invalid_value", "before", "before must be a cursor from the previous page");
        memcpy(cur_us, before, n);
        cur_us[n] = 0;
        snprintf(cur_id, sizeof cur_id, "%s", comma + 1);
    }
    char fb[40], tb[40];
    int bad = 0;
    const char *from = time_param(c, "from", fb, "-infinity", &bad), *to = time_param(c, "to", tb, "infinity", &bad);
    if (bad) return;
    const char *p[] = {c->who.customer_id, from, to, key, model, status, cur_us[0] ? cur_us : NULL,
                       cur_id[0] ? cur_id : NULL, limit};
    dash_read(c, REQUESTS_SQL, 9, p, NULL);
}

/* ---- operator views ---------------------------------------------------------- */

static void admin_overview(dash_call_t *c) {
    static char *sql; /* ADMIN_OVERVIEW_HEAD BILL_REPORT_TOP_SQL ADMIN_OVERVIEW_TAIL, made once */
    if (!sql) {
        size_t n = strlen(ADMIN_OVERVIEW_HEAD) + strlen(BILL_REPORT_TOP_SQL) + strlen(ADMIN_OVERVIEW_TAIL) + 1;
        char *s = malloc(n);
        if (!s) return dash_error(c, 500, NULL, "out of memory");
        snprintf(s, n, "%s%s%s", ADMIN_OVERVIEW_HEAD, BILL_REPORT_TOP_SQL, ADMIN_OVERVIEW_TAIL);
        sql = s;
    }
    char fb[40], tb[40];
    int bad = 0;
    const char *from = time_param(c, "from", fb, NULL, &bad), *to = time_param(c, "to", tb, "infinity", &bad);
    if (bad) return;
    const char *p[] = {from ? from : "-infinity", to, "20"};
    dash_read(c, sql, 3, p, NULL);
}

/* Reached only after the operator check in bill_dash_views_route: asking the
 * gateway for the pool starts its poll of the workers, which nobody else's
 * request may do (before 2026-12-01 the gateway made the snapshot, and so
 * polled, before billing knew who asked). */
static void admin_workers(dash_call_t *c) {
    char *j = c->workers ? c->workers(c->workers_arg) : NULL;
    const char *w = j ? j : "{\"object\":\"list\",\"data\":[]}";
    dash_reply(c, 200, NULL, w, strlen(w));
    free(j);
}

const char *bill_dash_views_allowed(const dash_call_t *c) {
    char *const *s = c->seg;
    int n = c->nseg;
    if (!strcmp(s[0], "admin"))
        return n == 2 && (!strcmp(s[1], "overview") || !strcmp(s[1], "workers")) ? "GET, HEAD" : NULL;
    if (n == 1 && !strcmp(s[0], "keys")) return "GET, HEAD, POST";
    if (n == 3 && !strcmp(s[0], "keys") && !strcmp(s[2], "revoke")) return "POST";
    if (n == 1 && (!strcmp(s[0], "overview") || !strcmp(s[0], "usage") || !strcmp(s[0], "invoices") ||
                   !strcmp(s[0], "requests")))
        return "GET, HEAD";
    if (!strcmp(s[0], "invoices") && (n == 2 || (n == 3 && !strcmp(s[2], "csv")))) return "GET, HEAD";
    return NULL;
}

int bill_dash_views_route(dash_call_t *c) {
    char **s = c->seg;
    int n = c->nseg, get = c->is_get;
    if (!strcmp(s[0], "admin")) {
        if (strcmp(c->who.role, "operator") != 0) {
            dash_error(c, 403, "operator_only", "the operator's view needs an operator login");
            return 1;
        }
        if (n == 2 && !strcmp(s[1], "overview") && get) admin_overview(c);
        else if (n == 2 && !strcmp(s[1], "workers") && get) admin_workers(c);
        else return 0;
        return 1;
    }
    if (strcmp(c->who.role, "customer") != 0 || !c->who.customer_id[0]) {
        dash_error(c, 403, "customer_only", "this view belongs to a customer login");
        return 1;
    }
    const char *cust[] = {c->who.customer_id};
    if (n == 1 && !strcmp(s[0], "overview") && get) dash_read(c, OVERVIEW_SQL, 1, cust, "no such customer");
    else if (n == 1 && !strcmp(s[0], "usage") && get) usage_view(c);
    else if (n == 1 && !strcmp(s[0], "keys")) keys_view(c);
    else if (n == 3 && !strcmp(s[0], "keys") && !strcmp(s[2], "revoke") && !get) key_revoke(c, s[1]);
    else if (n == 1 && !strcmp(s[0], "invoices") && get) dash_read(c, INVOICES_SQL, 1, cust, NULL);
    else if (n == 2 && !strcmp(s[0], "invoices") && get) invoice_view(c, s[1], 0);
    else if (n == 3 && !strcmp(s[0], "invoices") && !strcmp(s[2], "csv") && get) invoice_view(c, s[1], 1);
    else if (n == 1 && !strcmp(s[0], "requests") && get) requests_view(c);
    else return 0;
    return 1;
}
