/* bill_admin_accounts.c — customers, balances, the ledger (credits,
 * adjustments, refunds, each with a reason) and usage, for the admin API.
 *
 * The balance changes only through ledger rows (0001's triggers); every
 * ledger write here is one statement that inserts the row and its
 * admin_audit record (balance before and after), so both commit or neither. */
#include <stdio.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "bill_admin-int.h"

#define CUSTJ                                                                                   \
    "json_build_object('id', c.id, 'name', c.name, 'balance_pico', c.balance_pico::text,"       \
    " 'balance_usd', tg_usd(c.balance_pico), 'created_at', c.created_at, 'closed_at', c.closed_at)"

static const char SQL_CUST_LIST[] =
    "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg(" CUSTJ
    " ORDER BY c.id), '[]'))::text FROM customers c";

static const char SQL_CUST_GET[] = "SELECT " CUSTJ "::text FROM customers c WHERE c.name = $1";

/* $1 name, $2 initial credit (pico, may be 0) */
static const char SQL_CUST_CREATE[] =
    "WITH c AS (INSERT INTO customers (name) VALUES ($1) RETURNING id, name, created_at),"
    " l AS (INSERT INTO ledger (customer_id, kind, amount_pico, note)"
    "   SELECT id, 'topup', $2::numeric, 'initial credit' FROM c WHERE $2::numeric > 0 RETURNING amount_pico),"
    " resp AS (SELECT json_build_object('id', c.id, 'name', c.name, 'balance_pico', b.v::text,"
    "   'balance_usd', tg_usd(b.v), 'created_at', c.created_at)::text AS body"
    "   FROM c, (SELECT coalesce(sum(amount_pico), 0) AS v FROM l) b),"
    ADM_AUDIT("a", "'customer.create'", "'customer:' || c.name", "NULL",
              "jsonb_build_object('id', c.id, 'name', c.name, 'balance_pico', b.v::text)",
              "c, (SELECT coalesce(sum(amount_pico), 0) AS v FROM l) b");

/* $1 name, $2/$4 daily/monthly: 'keep'|'set' with $3/$5 pico-USD (NULL: none). */
static const char SQL_CUST_SPEND[] =
    "WITH old AS (SELECT * FROM customers WHERE name = $1 FOR UPDATE),"
    " c AS (UPDATE customers SET daily_limit_pico = CASE $2 WHEN 'keep' THEN daily_limit_pico ELSE $3::bigint END,"
    "   monthly_limit_pico = CASE $4 WHEN 'keep' THEN monthly_limit_pico ELSE $5::bigint END"
    "   WHERE id = (SELECT id FROM old) RETURNING *),"
    ADM_AUDIT("a", "'customer.spending_limits'", "'customer:' || c.name",
              "jsonb_build_object('daily_limit_pico', old.daily_limit_pico, 'monthly_limit_pico', old.monthly_limit_pico)",
              "jsonb_build_object('daily_limit_pico', c.daily_limit_pico, 'monthly_limit_pico', c.monthly_limit_pico)",
              "old, c")
    ", resp AS (SELECT json_build_object('customer', c.name, 'daily_limit_pico', c.daily_limit_pico::text,"
    "   'daily_limit_usd', tg_usd(c.daily_limit_pico), 'monthly_limit_pico', c.monthly_limit_pico::text,"
    "   'monthly_limit_usd', tg_usd(c.monthly_limit_pico))::text AS body FROM c)";

/* $1 name: close the customer (final; migrations/0020_customer_close.sql): closed_at (announced on
 * tg_customer, read by admission with every key), its keys and dashboard logins revoked, its
 * dashboard sessions ended.  Closing twice keeps the first time and revokes nothing more. */
static const char SQL_CUST_CLOSE[] =
    "WITH old AS (SELECT * FROM customers WHERE name = $1 FOR UPDATE),"
    " c AS (UPDATE customers SET closed_at = coalesce(customers.closed_at, now()) FROM old"
    "   WHERE customers.id = old.id RETURNING customers.*),"
    " k AS (UPDATE api_keys SET revoked_at = now() WHERE customer_id = (SELECT id FROM old) AND revoked_at IS NULL"
    "   RETURNING id),"
    " u AS (UPDATE dash_users SET revoked_at = now() WHERE customer_id = (SELECT id FROM old) AND revoked_at IS NULL"
    "   RETURNING id),"
    " s AS (DELETE FROM dash_sessions WHERE customer_id = (SELECT id FROM old) RETURNING 1),"
    " n AS (SELECT (SELECT count(*) FROM k) AS keys, (SELECT count(*) FROM u) AS logins,"
    "   (SELECT count(*) FROM s) AS sessions),"
    ADM_AUDIT("a", "'customer.close'", "'customer:' || c.name", "jsonb_build_object('closed_at', old.closed_at)",
              "jsonb_build_object('closed_at', c.closed_at, 'keys_revoked', n.keys, 'logins_revoked', n.logins,"
              " 'sessions_ended', n.sessions)",
              "old, c, n")
    ", resp AS (SELECT (" CUSTJ "::jsonb || jsonb_build_object('keys_revoked', n.keys, 'logins_revoked', n.logins,"
    "   'sessions_ended', n.sessions))::text AS body FROM c, n)";

static const char SQL_BALANCE[] =
    "SELECT json_build_object('customer', c.name, 'customer_id', c.id, 'balance_pico',"
    " c.balance_pico::text, 'balance_usd', tg_usd(c.balance_pico))::text FROM customers c WHERE c.name = $1";

/* A customer's rate limits, over all its keys (0 = none; gateway/README.md
 * "Rate limits").  Set: $1 customer, $2-$4 rpm, tpm, concurrency (NULL: keep). */
#define CUST_LIMITSJ                                                                            \
    "json_build_object('customer', c.name, 'customer_id', c.id, 'rpm', c.rpm, 'tpm', c.tpm,"   \
    " 'concurrency', c.concurrency)"
static const char SQL_CUST_LIMITS_GET[] = "SELECT " CUST_LIMITSJ "::text FROM customers c WHERE c.name = $1";
static const char SQL_CUST_LIMITS_SET[] =
    "WITH old AS (SELECT * FROM customers WHERE name = $1 FOR UPDATE),"
    " c AS (UPDATE customers SET rpm = coalesce($2::int, rpm), tpm = coalesce($3::int, tpm),"
    "   concurrency = coalesce($4::int, concurrency) WHERE id = (SELECT id FROM old) RETURNING *),"
    " resp AS (SELECT " CUST_LIMITSJ "::text AS body FROM c),"
    ADM_AUDIT("a", "'customer.limits'", "'customer:' || c.name",
              "jsonb_build_object('rpm', old.rpm, 'tpm', old.tpm, 'concurrency', old.concurrency)",
              "jsonb_build_object('rpm', c.rpm, 'tpm', c.tpm, 'concurrency', c.concurrency)", "old, c");

static void customer_limits_set(adm_req_t *r, const char *cust) {
    tg_json_t *j = adm_body(r);
    if (!j) return;
    long lim[3] = {-1, -1, -1};
    const char *names[3] = {"rpm", "tpm", "concurrency"};
    char sl[3][16];
    int ok = 1;
    for (int i = 0; i < 3 && ok; i++) {
        ok = adm_int_field(r, j, names[i], 2147483647L, &lim[i]) == 0;
        snprintf(sl[i], sizeof sl[i], "%ld", lim[i]);
    }
    if (ok) {
        const char *p[] = {cust, lim[0] >= 0 ? sl[0] : NULL, lim[1] >= 0 ? sl[1] : NULL, lim[2] >= 0 ? sl[2] : NULL};
        adm_write(r, SQL_CUST_LIMITS_SET, 4, p, "no such customer", 200, NULL, NULL);
    }
    tg_json_free(j);
}

/* One ledger row made by an admin: $1 customer, $2 kind, $3 signed pico,
 * $4 reason.  A refund may not exceed the balance (FOR UPDATE: no credit can
 * slip in or out between the check and the insert). */
static const char SQL_LEDGER_ADD[] =
    "WITH c AS (SELECT * FROM customers WHERE name = $1 FOR UPDATE),"
    " l AS (INSERT INTO ledger (customer_id, kind, amount_pico, note)"
    "   SELECT c.id, $2, $3::numeric, $4 FROM c"
    "   WHERE CASE WHEN $2 <> 'refund' OR -$3::numeric <= c.balance_pico THEN true"
    "     ELSE tg_raise('a refund of ' || tg_usd(-$3::numeric) || ' USD is more than the balance of '"
    "                   || tg_usd(c.balance_pico) || ' USD') IS NULL END"
    "   RETURNING id, customer_id, kind, amount_pico, note, created_at),"
    ADM_AUDIT("a", "'ledger.' || l.kind", "'customer:' || c.name",
              "jsonb_build_object('balance_pico', c.balance_pico::text)",
              "jsonb_build_object('ledger_id', l.id, 'kind', l.kind, 'amount_pico', l.amount_pico::text,"
              " 'reason', l.note, 'balance_pico', (c.balance_pico + l.amount_pico)::text)",
              "l JOIN c ON c.id = l.customer_id")
    ", resp AS (SELECT json_build_object('customer', c.name, 'ledger_id', l.id, 'kind', l.kind,"
    "   'amount_pico', l.amount_pico::text, 'amount_usd', tg_usd(l.amount_pico), 'reason', l.note,"
    "   'added_pico', l.amount_pico::text, 'added_usd', tg_usd(l.amount_pico),"
    "   'balance_pico', (c.balance_pico + l.amount_pico)::text,"
    "   'balance_usd', tg_usd(c.balance_pico + l.amount_pico), 'created_at', l.created_at)::text AS body"
    "   FROM l JOIN c ON c.id = l.customer_id)";

/* $1 customer, $2 from, $3 to, $4 limit */
static const char SQL_LEDGER_LIST[] =
    "SELECT json_build_object('object', 'list', 'customer', c.name,"
    " 'from', " ADM_PERIOD_FROM("$2::timestamptz", "$3::timestamptz") ", 'to', $3::timestamptz,"
    " 'balance_pico', c.balance_pico::text,"
    " 'data', coalesce((SELECT json_agg(json_build_object('id', x.id, 'kind', x.kind, 'amount_pico',"
    "   x.amount_pico::text, 'amount_usd', tg_usd(x.amount_pico), 'reason', x.note, 'request_id', x.request_id,"
    "   'created_at', x.created_at) ORDER BY x.id DESC)"
    "   FROM (SELECT * FROM ledger l WHERE l.customer_id = c.id AND l.created_at >= $2::timestamptz"
    "     AND l.created_at < $3::timestamptz ORDER BY l.id DESC LIMIT $4::int) x), '[]'))::text"
    " FROM customers c WHERE c.name = $1";

#define USAGE_WHERE " u.customer_id = c.id AND u.received_at >= $2::timestamptz AND u.received_at < $3::timestamptz"

static const char SQL_USAGE[] =
    "SELECT json_build_object('object', 'list', 'customer', c.name,"
    " 'from', " ADM_PERIOD_FROM("$2::timestamptz", "$3::timestamptz") ", 'to', $3::timestamptz,"
    " 'totals', (SELECT json_build_object('requests', count(*)::text,"
    "   'prompt_tokens', coalesce(sum(prompt_tokens), 0)::text,"
    "   'prompt_cache_hit_tokens', coalesce(sum(prompt_cache_hit_tokens), 0)::text,"
    "   'prompt_cache_miss_tokens', coalesce(sum(prompt_cache_miss_tokens), 0)::text,"
    "   'completion_tokens', coalesce(sum(completion_tokens), 0)::text,"
    "   'reasoning_tokens', coalesce(sum(reasoning_tokens), 0)::text,"
    "   'cost_pico', coalesce(sum(cost_pico), 0)::text, 'cost_usd', tg_usd(coalesce(sum(cost_pico), 0)))"
    "   FROM usage u WHERE" USAGE_WHERE "),"
    " 'data', coalesce((SELECT json_agg(json_build_object('request_id', x.request_id, 'key_id', x.key_id,"
    "   'model', x.model, 'prompt_tokens', x.prompt_tokens, 'prompt_cache_hit_tokens', x.prompt_cache_hit_tokens,"
    "   'prompt_cache_miss_tokens', x.prompt_cache_miss_tokens, 'completion_tokens', x.completion_tokens,"
    "   'reasoning_tokens', x.reasoning_tokens, 'price_input_cache_miss', x.price_input_cache_miss::text,"
    "   'price_input_cache_hit', x.price_input_cache_hit::text, 'price_output', x.price_output::text,"
    "   'price_id', x.price_id, 'override_id', x.override_id,"
    "   'cost_pico', x.cost_pico::text, 'cost_usd', tg_usd(x.cost_pico), 'http_status', x.http_status,"
    "   'stream', x.stream, 'received_at', x.received_at, 'first_byte_at', x.first_byte_at,"
    "   'finished_at', x.finished_at) ORDER BY x.received_at DESC, x.request_id)"
    "   FROM (SELECT * FROM usage u WHERE" USAGE_WHERE " ORDER BY u.received_at DESC, u.request_id"
    "   LIMIT $4::int) x), '[]'))::text"
    " FROM customers c WHERE c.name = $1";

static void customers_create(adm_req_t *r) {
    tg_json_t *j = adm_body(r);
    if (!j) return;
    tg_json_t *n = tg_json_get(j, "name");
    char credit[24];
    if (!adm_jstr(n) || !adm_name_ok(adm_jstr(n))) {
        adm_field_error(r, "invalid_name", "name",
                        "name must be 1-64 characters of letters, digits and ._@+- (starting with a letter or digit)");
    } else if (adm_usd_field(r, j, "credit_usd", 0, 0, 0, credit) == 0) {
        const char *p[] = {adm_jstr(n), credit};
        adm_write(r, SQL_CUST_CREATE, 2, p, NULL, 200, NULL, NULL);
    }
    tg_json_free(j);
}

/* POST .../credits (kind topup; "reason", or the older "note", optional),
 * .../adjustments (signed, reason required), .../refunds (reason required). */
static void ledger_add(adm_req_t *r, const char *cust, const char *kind) {
    tg_json_t *j = adm_body(r);
    if (!j) return;
    int topup = !strcmp(kind, "topup"), adjust = !strcmp(kind, "adjustment");
    char pico[24], neg[25];
    const char *why = NULL, *note = NULL;
    if (adm_usd_field(r, j, "usd", 1, 1, adjust, pico) == 0 &&
        adm_str_field(r, j, "reason", 1000, 0, &why) == 0 && adm_str_field(r, j, "note", 1000, 0, &note) == 0) {
        if (!why) why = note;
        if (!why && !topup) {
            adm_field_error(r, "missing_field", "reason", "reason is required: say why this %s is made", kind);
        } else {
            if (!strcmp(kind, "refund")) snprintf(neg, sizeof neg, "-%s", pico);
            const char *p[] = {cust, kind, !strcmp(kind, "refund") ? neg : pico, why ? why : "credit"};
            adm_write(r, SQL_LEDGER_ADD, 4, p, "no such customer", 200, NULL, NULL);
        }
    }
    tg_json_free(j);
}

/* POST .../spending-limits {"daily_limit_usd": "5.00"|null, "monthly_limit_usd": ...} */
static void spending_limits_set(adm_req_t *r, const char *cust) {
    tg_json_t *j = adm_body(r);
    if (!j) return;
    const char *dmode, *mmode;
    char dl[24], ml[24];
    if (adm_limit_field(r, j, "daily_limit_usd", &dmode, dl) == 0 &&
        adm_limit_field(r, j, "monthly_limit_usd", &mmode, ml) == 0) {
        const char *p[] = {cust, dmode, dl[0] ? dl : NULL, mmode, ml[0] ? ml : NULL};
        adm_write(r, SQL_CUST_SPEND, 5, p, "no such customer", 200, NULL, NULL);
    }
    tg_json_free(j);
}

/* ?from=T&to=T (Unix seconds or timestamps) into p[1], p[2]; -1 when one is
 * not a time (answered 400). */
static int range(adm_req_t *r, struct evkeyvalq *q, char f2[40], char t2[40], const char **from, const char **to) {
    int bad = 0;
    const char *f = adm_time_q(r, q, "from", f2, &bad);
    const char *t = bad ? NULL : adm_time_q(r, q, "to", t2, &bad);
    *from = f ? f : "-infinity";
    *to = t ? t : "infinity";
    return bad ? -1 : 0;
}

static void list_get(adm_req_t *r, const char *cust, struct evkeyvalq *q, const char *sql) {
    const char *limit = evhttp_find_header(q, "limit");
    if (limit && (!*limit || strspn(limit, "0123456789") != strlen(limit) || strlen(limit) > 6)) {
        adm_field_error(r, "invalid_value", "limit", "limit must be an integer from 0 to 999999");
        return;
    }
    char f2[40], t2[40];
    const char *p[4] = {cust, NULL, NULL, limit ? limit : "1000"};
    if (range(r, q, f2, t2, &p[1], &p[2])) return;
    adm_read(r, sql, 4, p, "no such customer");
}

int bill_admin_accounts_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q) {
    const int GET = EVHTTP_REQ_GET, POST = EVHTTP_REQ_POST;
    if (nseg < 1 || strcmp(seg[0], "customers") != 0 || nseg > 3) return 0;
    if (nseg == 1) {
        if (r->method == GET) adm_read(r, SQL_CUST_LIST, 0, NULL, NULL);
        else if (r->method == POST) customers_create(r);
        else adm_bad_method(r, "GET, POST");
        return 1;
    }
    if (!adm_name_ok(seg[1])) {
        adm_error(r, 404, "not_found", "no such customer");
        return 1;
    }
    const char *p[] = {seg[1]};
    if (nseg == 2) {
        if (r->method == GET) adm_read(r, SQL_CUST_GET, 1, p, "no such customer");
        else adm_bad_method(r, "GET");
        return 1;
    }
    const char *sub = seg[2];
    if (!strcmp(sub, "balance")) {
        if (r->method == GET) adm_read(r, SQL_BALANCE, 1, p, "no such customer");
        else adm_bad_method(r, "GET");
    } else if (!strcmp(sub, "credits") || !strcmp(sub, "adjustments") || !strcmp(sub, "refunds")) {
        if (r->method == POST)
            ledger_add(r, seg[1], sub[0] == 'c' ? "topup" : sub[0] == 'a' ? "adjustment" : "refund");
        else adm_bad_method(r, "POST");
    } else if (!strcmp(sub, "close")) {
        if (r->method == POST) adm_write(r, SQL_CUST_CLOSE, 1, p, "no such customer", 200, NULL, NULL);
        else adm_bad_method(r, "POST");
    } else if (!strcmp(sub, "spending-limits")) {
        if (r->method == POST || r->method == EVHTTP_REQ_PUT) spending_limits_set(r, seg[1]);
        else adm_bad_method(r, "POST, PUT");
    } else if (!strcmp(sub, "limits")) {
        if (r->method == GET) adm_read(r, SQL_CUST_LIMITS_GET, 1, p, "no such customer");
        else if (r->method == POST || r->method == EVHTTP_REQ_PATCH) customer_limits_set(r, seg[1]);
        else adm_bad_method(r, "GET, POST, PATCH");
    } else if (!strcmp(sub, "ledger")) {
        if (r->method == GET) list_get(r, seg[1], q, SQL_LEDGER_LIST);
        else adm_bad_method(r, "GET");
    } else if (!strcmp(sub, "usage")) {
        if (r->method == GET) list_get(r, seg[1], q, SQL_USAGE);
        else adm_bad_method(r, "GET");
    } else {
        return 0;
    }
    return 1;
}
