/* bill_admin.c — the admin API: plain HTTP/1.1 (evhttp) on a loopback
 * address, `Authorization: Bearer <admin token>` on every route, JSON in and
 * out, OpenAI-style error bodies.  Endpoints are listed in billing/README.md.
 *
 * Each request becomes at most one SQL statement on the shared pool; the
 * statement builds the response JSON itself (json_build_object), so money
 * leaves PostgreSQL as exact decimal strings and is never a JSON number.
 * Money coming in is a JSON string, parsed exactly in C (bill_usd_parse). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>

#include "bill-int.h"

#define MAX_BODY 65536

typedef struct actx {
    TAILQ_ENTRY(actx) link;
    bill_admin_t *a;
    struct evhttp_request *req;
    bill_pg_job_t *job;
    const char *notfound; /* message when the statement returns no row */
    char key[52];         /* a new API key to show once, or "" */
} actx_t;

TAILQ_HEAD(actx_q, actx);

struct bill_admin {
    struct event_base *base;
    bill_pg_t *pg;
    const bill_settler_t *settler; /* not owned */
    struct evhttp *http;
    char *token;
    char *secret;
    struct actx_q pending;
};

/* ---- SQL: each returns one row with one JSON text column, or no row ---- */

#define CUSTJ                                                                                   \
    "json_build_object('id', c.id, 'name', c.name, 'balance_pico', c.balance_pico::text,"       \
    " 'balance_usd', tg_usd(c.balance_pico), 'created_at', c.created_at)"

static const char SQL_CUST_LIST[] =
    "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg(" CUSTJ
    " ORDER BY c.id), '[]'))::text FROM customers c";

static const char SQL_CUST_GET[] = "SELECT " CUSTJ "::text FROM customers c WHERE c.name = $1";

static const char SQL_CUST_CREATE[] =
    "WITH c AS (INSERT INTO customers (name) VALUES ($1) RETURNING id, name, created_at),"
    " l AS (INSERT INTO ledger (customer_id, kind, amount_pico, note)"
    "   SELECT id, 'topup', $2::numeric, 'initial credit' FROM c WHERE $2::numeric > 0 RETURNING amount_pico)"
    " SELECT json_build_object('id', c.id, 'name', c.name, 'balance_pico', b.v::text,"
    " 'balance_usd', tg_usd(b.v), 'created_at', c.created_at)::text"
    " FROM c, (SELECT coalesce(sum(amount_pico), 0) AS v FROM l) b";

static const char SQL_BALANCE[] =
    "SELECT json_build_object('customer', c.name, 'customer_id', c.id, 'balance_pico',"
    " c.balance_pico::text, 'balance_usd', tg_usd(c.balance_pico))::text FROM customers c WHERE c.name = $1";

/* A key as the admin API shows it (k: an api_keys row, c: its customer). */
#define KEYJ                                                                                    \
    "json_build_object('id', k.id, 'customer', c.name, 'prefix', k.prefix, 'name', k.name,"     \
    " 'state', tg_key_state(k.revoked_at, k.expires_at, k.replaced_by),"                        \
    " 'active', tg_key_state(k.revoked_at, k.expires_at, k.replaced_by) IN ('active', 'expiring')," \
    " 'rpm', k.rpm, 'tpm', k.tpm, 'concurrency', k.concurrency, 'models', k.models,"           \
    " 'expires_at', k.expires_at, 'created_at', k.created_at, 'revoked_at', k.revoked_at,"      \
    " 'last_used_at', k.last_used_at, 'last_used_ip', host(k.last_used_ip),"                    \
    " 'rotated_from', k.rotated_from, 'replaced_by', k.replaced_by)"

/* Every key write also appends to admin_audit: who, what, before, after
 * (the row without its key_hash). */
#define AUDIT(action, target, before, after)                                                   \
    " a AS (INSERT INTO admin_audit (actor, action, target, before, after)"                    \
    "   SELECT 'admin', '" action "', " target ", " before ", " after " FROM "

/* A JSON array of model names ($n::json) as text[]. */
#define MODELS_ARR(n) "(SELECT array_agg(x) FROM json_array_elements_text(" n "::json) x)"

static const char SQL_KEY_LIST[] =
    "SELECT json_build_object('object', 'list', 'customer', c.name, 'data', coalesce((SELECT"
    " json_agg(" KEYJ " ORDER BY k.id) FROM api_keys k WHERE k.customer_id = c.id), '[]'))::text"
    " FROM customers c WHERE c.name = $1";

/* $1 customer, $2 hash, $3 prefix, $4-$6 limits, $7 name, $8 expires_at,
 * $9 expires_in_seconds, $10 models (JSON array or NULL) */
static const char SQL_KEY_CREATE[] =
    "WITH k AS (INSERT INTO api_keys (customer_id, key_hash, prefix, rpm, tpm, concurrency, name,"
    "   expires_at, models)"
    "   SELECT c.id, $2, $3, $4::int, $5::int, $6::int, coalesce($7, ''),"
    "   tg_key_expiry($8::timestamptz, $9::bigint), " MODELS_ARR("$10")
    "   FROM customers c WHERE c.name = $1 RETURNING *),"
    AUDIT("key.create", "'key:' || k.id", "NULL", "to_jsonb(k) - 'key_hash'") "k)"
    " SELECT " KEYJ "::text FROM k JOIN customers c ON c.id = k.customer_id";

/* $1 id, $2 name, $3-$5 limits, $6 models: 'keep'|'all'|'set', $7 models JSON,
 * $8 expiry: 'keep'|'never'|'set', $9 expires_at, $10 expires_in_seconds */
static const char SQL_KEY_UPDATE[] =
    "WITH old AS (SELECT * FROM api_keys WHERE id = $1::bigint AND revoked_at IS NULL FOR UPDATE),"
    " k AS (UPDATE api_keys SET name = coalesce($2, name), rpm = coalesce($3::int, rpm),"
    "   tpm = coalesce($4::int, tpm), concurrency = coalesce($5::int, concurrency),"
    "   models = CASE $6 WHEN 'keep' THEN models WHEN 'all' THEN NULL ELSE " MODELS_ARR("$7") " END,"
    "   expires_at = CASE $8 WHEN 'keep' THEN expires_at WHEN 'never' THEN NULL"
    "     ELSE tg_key_expiry($9::timestamptz, $10::bigint) END"
    "   WHERE id = (SELECT id FROM old) RETURNING *),"
    AUDIT("key.update", "'key:' || k.id", "to_jsonb(old) - 'key_hash'", "to_jsonb(k) - 'key_hash'") "old, k)"
    " SELECT " KEYJ "::text FROM k JOIN customers c ON c.id = k.customer_id";

/* $1 old id, $2 new hash, $3 new prefix, $4 grace seconds, $5 new expires_at,
 * $6 new expires_in_seconds.  The new key copies name, limits and scope; the
 * old one works until now + grace (or its own earlier expiry). */
static const char SQL_KEY_ROTATE[] =
    "WITH old AS (SELECT * FROM api_keys WHERE id = $1::bigint AND revoked_at IS NULL AND replaced_by IS NULL"
    "   AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE),"
    " n AS (INSERT INTO api_keys (customer_id, key_hash, prefix, rpm, tpm, concurrency, name, models,"
    "   expires_at, rotated_from)"
    "   SELECT customer_id, $2, $3, rpm, tpm, concurrency, name, models,"
    "   tg_key_expiry($5::timestamptz, $6::bigint), id FROM old RETURNING *),"
    " o AS (UPDATE api_keys k SET replaced_by = n.id,"
    "   expires_at = least(coalesce(k.expires_at, 'infinity'), now() + $4::bigint * interval '1 second')"
    "   FROM n WHERE k.id = n.rotated_from RETURNING k.*),"
    AUDIT("key.rotate", "'key:' || old.id", "to_jsonb(old) - 'key_hash'",
          "jsonb_build_object('old', to_jsonb(o) - 'key_hash', 'new', to_jsonb(n) - 'key_hash')") "old, o, n)"
    " SELECT (jsonb_build_object('old', (SELECT " KEYJ " FROM o k JOIN customers c ON c.id = k.customer_id))"
    "   || (SELECT " KEYJ "::jsonb FROM n k JOIN customers c ON c.id = k.customer_id))::text";

static const char SQL_KEY_REVOKE[] =
    "WITH old AS (SELECT * FROM api_keys WHERE id = $1::bigint FOR UPDATE),"
    " k AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = (SELECT id FROM old)"
    "   RETURNING *),"
    AUDIT("key.revoke", "'key:' || k.id", "to_jsonb(old) - 'key_hash'", "to_jsonb(k) - 'key_hash'") "old, k)"
    " SELECT " KEYJ "::text FROM k JOIN customers c ON c.id = k.customer_id";

static const char SQL_CREDIT[] =
    "WITH l AS (INSERT INTO ledger (customer_id, kind, amount_pico, note)"
    "   SELECT id, 'topup', $2::numeric, $3 FROM customers WHERE name = $1 RETURNING id, customer_id, amount_pico)"
    " SELECT json_build_object('customer', c.name, 'ledger_id', l.id, 'added_pico', l.amount_pico::text,"
    " 'added_usd', tg_usd(l.amount_pico), 'balance_pico', (c.balance_pico + l.amount_pico)::text,"
    " 'balance_usd', tg_usd(c.balance_pico + l.amount_pico))::text"
    " FROM l JOIN customers c ON c.id = l.customer_id";

#define USAGE_WHERE " u.customer_id = c.id AND u.received_at >= $2::timestamptz AND u.received_at < $3::timestamptz"

static const char SQL_USAGE[] =
    "SELECT json_build_object('object', 'list', 'customer', c.name, 'from', $2::timestamptz, 'to', $3::timestamptz,"
    " 'totals', (SELECT json_build_object('requests', count(*),"
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
    "   'cost_pico', x.cost_pico::text, 'cost_usd', tg_usd(x.cost_pico), 'http_status', x.http_status,"
    "   'stream', x.stream, 'received_at', x.received_at, 'first_byte_at', x.first_byte_at,"
    "   'finished_at', x.finished_at) ORDER BY x.received_at DESC, x.request_id)"
    "   FROM (SELECT * FROM usage u WHERE" USAGE_WHERE " ORDER BY u.received_at DESC, u.request_id"
    "   LIMIT $4::int) x), '[]'))::text"
    " FROM customers c WHERE c.name = $1";

static const char SQL_INVOICE[] =
    "WITH c AS (SELECT * FROM customers WHERE name = $1),"
    " p AS (SELECT ($2 || '-01')::timestamp AT TIME ZONE 'UTC' AS t0,"
    "   (($2 || '-01')::timestamp + interval '1 month') AT TIME ZONE 'UTC' AS t1),"
    " u AS (SELECT u.* FROM usage u, c, p WHERE u.customer_id = c.id AND u.received_at >= p.t0 AND u.received_at < p.t1),"
    " x AS (SELECT model, 'input_cache_miss' AS cls, price_input_cache_miss AS price, prompt_cache_miss_tokens AS n FROM u"
    "   UNION ALL SELECT model, 'input_cache_hit', price_input_cache_hit, prompt_cache_hit_tokens FROM u"
    "   UNION ALL SELECT model, 'output', price_output, completion_tokens FROM u),"
    " lines AS (SELECT model, cls, price, sum(n) AS n, sum(n::numeric * price) AS amount FROM x"
    "   GROUP BY model, cls, price HAVING sum(n) > 0)"
    " SELECT json_build_object('object', 'invoice', 'customer', c.name, 'month', $2, 'currency', 'USD',"
    " 'period_start', p.t0, 'period_end', p.t1,"
    " 'lines', coalesce((SELECT json_agg(json_build_object('model', model, 'token_class', cls,"
    "   'unit_price_micro_usd_per_1m', price::text, 'tokens', n::text, 'amount_pico', amount::text,"
    "   'amount_usd', tg_usd(amount)) ORDER BY model, cls, price) FROM lines), '[]'),"
    " 'requests', (SELECT count(*) FROM u),"
    " 'total_pico', (SELECT coalesce(sum(cost_pico), 0) FROM u)::text,"
    " 'total_usd', tg_usd((SELECT coalesce(sum(cost_pico), 0) FROM u)),"
    " 'credits_pico', (SELECT coalesce(sum(amount_pico), 0) FROM ledger l WHERE l.customer_id = c.id"
    "   AND l.kind <> 'usage' AND l.created_at >= p.t0 AND l.created_at < p.t1)::text,"
    " 'balance_pico', c.balance_pico::text, 'balance_usd', tg_usd(c.balance_pico))::text"
    " FROM c, p";

#define PRICEJ                                                                                  \
    "json_build_object('model', model, 'input_cache_miss', input_cache_miss::text,"            \
    " 'input_cache_hit', input_cache_hit::text, 'output', output::text, 'effective_from', effective_from," \
    " 'band', CASE WHEN band_start IS NULL THEN NULL ELSE to_char(band_start, 'HH24:MI') || '-' ||" \
    " to_char(band_end, 'HH24:MI') END, 'active_now', id = (SELECT t.id FROM tg_price(model, now()) t))"

static const char SQL_PRICE_SET[] =
    "INSERT INTO model_prices (model, input_cache_miss, input_cache_hit, output, effective_from,"
    " band_start, band_end)"
    " VALUES ($1, $2::bigint, $3::bigint, $4::bigint, coalesce($5::timestamptz, now()), $6::time, $7::time)"
    " RETURNING " PRICEJ "::text";

/* The schedule in force now: each model's latest base price and the bands
 * set after it. */
static const char SQL_PRICE_LIST[] =
    "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg(" PRICEJ
    " ORDER BY model, band_start NULLS FIRST, effective_from), '[]'))::text FROM model_prices p"
    " WHERE effective_from <= now() AND effective_from >= (SELECT max(b.effective_from) FROM model_prices b"
    "   WHERE b.model = p.model AND b.band_start IS NULL AND b.effective_from <= now())";

static const char SQL_PRICE_HISTORY[] =
    "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg(" PRICEJ
    " ORDER BY model, effective_from, id), '[]'))::text FROM model_prices";

/* ---- replies ------------------------------------------------------------ */

static const char *reason(int st) {
    switch (st) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

static void reply_raw(struct evhttp_request *req, int st, const char *body) {
    struct evbuffer *out = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    if (out) {
        evbuffer_add(out, body, strlen(body));
        evbuffer_add(out, "\n", 1);
    }
    evhttp_send_reply(req, st, reason(st), out);
    if (out) evbuffer_free(out);
}

static void reply_error(struct evhttp_request *req, int st, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void reply_error(struct evhttp_request *req, int st, const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *type = st == 401 ? "authentication_error"
                       : st == 404 ? "not_found_error"
                       : st == 409 ? "conflict_error"
                       : st == 503 ? "service_unavailable_error"
                       : st >= 500 ? "api_error"
                                   : "invalid_request_error";
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type);
    cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    char *body = cJSON_PrintUnformatted(root);
    reply_raw(req, st, body ? body : "{\"error\":{\"message\":\"out of memory\",\"type\":\"api_error\","
                                     "\"param\":null,\"code\":null}}");
    free(body);
    cJSON_Delete(root);
}

/* ---- running one statement for a request -------------------------------- */

static void query_done(PGresult *res, const char *err, void *arg) {
    actx_t *x = arg;
    TAILQ_REMOVE(&x->a->pending, x, link);
    struct evhttp_request *req = x->req;
    if (!res) {
        reply_error(req, 503, "database_unavailable", "%s", err ? err : "database unavailable");
    } else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        if (!state) state = "";
        if (!msg) msg = "database error";
        const char *cons = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
        if (!strcmp(state, "23505") && cons && !strcmp(cons, "customers_name_key"))
            reply_error(req, 409, "already_exists", "a customer with this name already exists");
        else if (!strcmp(state, "23505"))
            reply_error(req, 409, "already_exists", "already exists: %s", msg);
        else if (!strncmp(state, "22", 2) || !strncmp(state, "23", 2))
            reply_error(req, 400, "invalid_value", "%s", msg);
        else {
            fprintf(stderr, "bill: admin statement failed: %s", PQresultErrorMessage(res));
            reply_error(req, 500, "database_error", "database error (%s)", state);
        }
    } else if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
        reply_error(req, 404, "not_found", "%s", x->notfound ? x->notfound : "not found");
    } else if (x->key[0]) {
        /* Show the new key once: splice it in front of the row's JSON. */
        const char *j = PQgetvalue(res, 0, 0);
        size_t n = strlen(j) + 80;
        char *body = malloc(n);
        if (body && j[0] == '{') {
            snprintf(body, n, "{\"key\":\"%s\",%s", x->key, j + 1);
            reply_raw(req, 201, body);
        } else {
            reply_error(req, 500, NULL, "out of memory");
        }
        free(body);
    } else {
        reply_raw(req, 200, PQgetvalue(res, 0, 0));
    }
    OPENSSL_cleanse(x->key, sizeof x->key);
    free(x);
}

static void run(bill_admin_t *a, struct evhttp_request *req, const char *sql, int n, const char *const *params,
                const char *notfound, const char *key) {
    actx_t *x = calloc(1, sizeof *x);
    if (!x) {
        reply_error(req, 500, NULL, "out of memory");
        return;
    }
    x->a = a;
    x->req = req;
    x->notfound = notfound;
    if (key) snprintf(x->key, sizeof x->key, "%s", key);
    x->job = bill_pg_query(a->pg, sql, n, params, query_done, x);
    if (!x->job) {
        free(x);
        reply_error(req, 500, NULL, "out of memory");
        return;
    }
    TAILQ_INSERT_TAIL(&a->pending, x, link);
}

/* ---- input helpers ------------------------------------------------------ */

static int name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || !strchr("._@-", c))) return 0;
    }
    return 1;
}

/* The request body as a JSON object (caller frees), or NULL after replying 400. */
static cJSON *body_json(struct evhttp_request *req) {
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    if (n == 0) return cJSON_CreateObject();
    char *s = malloc(n + 1);
    if (!s) {
        reply_error(req, 500, NULL, "out of memory");
        return NULL;
    }
    evbuffer_copyout(in, s, n);
    s[n] = 0;
    cJSON *j = cJSON_ParseWithLength(s, n);
    free(s);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        reply_error(req, 400, "invalid_json", "the body must be a JSON object");
        return NULL;
    }
    return j;
}

/* An optional small non-negative integer field (a JSON integer or a string of
 * digits).  Returns 0 (absent: *v untouched), -1 after replying 400. */
static int int_field(struct evhttp_request *req, cJSON *j, const char *name, long max, long *v) {
    cJSON *f = cJSON_GetObjectItemCaseSensitive(j, name);
    if (!f || cJSON_IsNull(f)) return 0;
    if (cJSON_IsNumber(f)) {
        double d = f->valuedouble;
        if (d >= 0 && d <= max && d == (double)(long)d) {
            *v = (long)d;
            return 0;
        }
    } else if (cJSON_IsString(f) && f->valuestring[0] && strspn(f->valuestring, "0123456789") ==
                                                             strlen(f->valuestring) &&
               strlen(f->valuestring) <= 18) {
        long long x = strtoll(f->valuestring, NULL, 10);
        if (x <= max) {
            *v = (long)x;
            return 0;
        }
    }
    reply_error(req, 400, "invalid_value", "%s must be an integer from 0 to %ld", name, max);
    return -1;
}

/* A required money-like integer given as a string of digits ("270000"). */
static int digits_field(struct evhttp_request *req, cJSON *j, const char *name, char out[24]) {
    cJSON *f = cJSON_GetObjectItemCaseSensitive(j, name);
    const char *s = cJSON_IsString(f) ? f->valuestring : NULL;
    if (!s || !*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 13) {
        reply_error(req, 400, "invalid_value",
                    "%s must be a string of digits: integer micro-USD per 1M tokens, at most 1e12", name);
        return -1;
    }
    long long v = strtoll(s, NULL, 10);
    if (v > 1000000000000LL) {
        reply_error(req, 400, "invalid_value", "%s is above 1e12 micro-USD per 1M tokens", name);
        return -1;
    }
    snprintf(out, 24, "%lld", v);
    return 0;
}

/* A USD amount given as a JSON string, exact.  Returns 0 or -1 after replying. */
static int usd_field(struct evhttp_request *req, cJSON *j, const char *name, int required, int positive,
                     char out[24]) {
    cJSON *f = cJSON_GetObjectItemCaseSensitive(j, name);
    if (!f || cJSON_IsNull(f)) {
        if (!required) {
            snprintf(out, 24, "0");
            return 0;
        }
        reply_error(req, 400, "missing_field", "%s is required (a decimal string of USD, e.g. \"5.00\")", name);
        return -1;
    }
    int64_t pico;
    if (!cJSON_IsString(f) || bill_usd_parse(f->valuestring, &pico) != 0) {
        reply_error(req, 400, "invalid_amount",
                    "%s must be a non-negative decimal string of USD with at most 12 decimals, "
                    "e.g. \"5\", \"5.00\", \"0.000001\"", name);
        return -1;
    }
    if (positive && pico == 0) {
        reply_error(req, 400, "invalid_amount", "%s must be more than zero", name);
        return -1;
    }
    snprintf(out, 24, "%lld", (long long)pico);
    return 0;
}

/* ---- routes ------------------------------------------------------------- */

static void customers_create(bill_admin_t *a, struct evhttp_request *req) {
    cJSON *j = body_json(req);
    if (!j) return;
    cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "name");
    char credit[24];
    if (!cJSON_IsString(n) || !name_ok(n->valuestring)) {
        reply_error(req, 400, "invalid_name",
                    "name must be 1-64 characters of letters, digits and ._@- (starting with a letter or digit)");
    } else if (usd_field(req, j, "credit_usd", 0, 0, credit) == 0) {
        const char *p[] = {n->valuestring, credit};
        run(a, req, SQL_CUST_CREATE, 2, p, NULL, NULL);
    }
    cJSON_Delete(j);
}

/* "name": optional string of at most 200 bytes.  *out: the name, or NULL
 * when absent.  Returns 0 or -1 after replying 400. */
static int name_field(struct evhttp_request *req, cJSON *j, const char **out) {
    cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "name");
    *out = NULL;
    if (!f || cJSON_IsNull(f)) return 0;
    if (!cJSON_IsString(f) || strlen(f->valuestring) > 200) {
        reply_error(req, 400, "invalid_value", "name must be a string of at most 200 bytes");
        return -1;
    }
    *out = f->valuestring;
    return 0;
}

/* "models": absent (*mode "keep"), null ("all": every model) or an array of
 * 1-64 model names of 1-200 bytes ("set"; *json: that array, malloc'ed).
 * Returns 0 or -1 after replying 400. */
static int models_field(struct evhttp_request *req, cJSON *j, const char **mode, char **json) {
    cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "models"), *m;
    *json = NULL;
    *mode = !f ? "keep" : cJSON_IsNull(f) ? "all" : "set";
    if (!f || cJSON_IsNull(f)) return 0;
    int n = cJSON_IsArray(f) ? cJSON_GetArraySize(f) : 0, ok = n >= 1 && n <= 64;
    cJSON_ArrayForEach(m, f) ok &= cJSON_IsString(m) && m->valuestring[0] && strlen(m->valuestring) <= 200;
    if (!ok || !(*json = cJSON_PrintUnformatted(f))) {
        reply_error(req, 400, "invalid_value",
                    "models must be null (every model) or an array of 1 to 64 model names (1-200 bytes each)");
        return -1;
    }
    return 0;
}

/* "expires_at" (a timestamp string, or null: never) and "expires_in_seconds"
 * (1 to 20 years), at most one of them.  *mode: "keep" when both are absent,
 * "never" for expires_at null, else "set" with *at or *in (a decimal string
 * in in[24]) filled.  Returns 0 or -1 after replying 400. */
static int expiry_fields(struct evhttp_request *req, cJSON *j, const char **mode, const char **at, char in[24]) {
    cJSON *fa = cJSON_GetObjectItemCaseSensitive(j, "expires_at");
    cJSON *fi = cJSON_GetObjectItemCaseSensitive(j, "expires_in_seconds");
    long secs = -1;
    *mode = "keep";
    *at = NULL;
    in[0] = 0;
    if (fa && fi && !cJSON_IsNull(fi)) {
        reply_error(req, 400, "invalid_value", "give expires_at or expires_in_seconds, not both");
        return -1;
    }
    if (fa) {
        if (cJSON_IsNull(fa)) {
            *mode = "never";
            return 0;
        }
        if (!cJSON_IsString(fa) || !fa->valuestring[0] || strlen(fa->valuestring) > 64) {
            reply_error(req, 400, "invalid_value", "expires_at must be a timestamp string (2026-12-31T00:00:00Z)");
            return -1;
        }
        *mode = "set";
        *at = fa->valuestring;
        return 0;
    }
    if (int_field(req, j, "expires_in_seconds", 20L * 366 * 86400, &secs) != 0) return -1;
    if (secs == 0) {
        reply_error(req, 400, "invalid_value", "expires_in_seconds must be at least 1");
        return -1;
    }
    if (secs > 0) {
        *mode = "set";
        snprintf(in, 24, "%ld", secs);
    }
    return 0;
}

/* A new key's secret, keyed hash and display prefix.  Returns 0 or -1 after
 * replying 500. */
static int new_key(bill_admin_t *a, struct evhttp_request *req, char key[52], char hash[65], char prefix[16]) {
    if (bill_key_generate(key) != 0) {
        reply_error(req, 500, NULL, "no random bytes");
        return -1;
    }
    bill_key_hash(a->secret, key, hash);
    snprintf(prefix, 16, "%.11s", key); /* "sk-" + 8 hex */
    return 0;
}

static void keys_create(bill_admin_t *a, struct evhttp_request *req, const char *cust) {
    cJSON *j = body_json(req);
    if (!j) return;
    long rpm = 0, tpm = 0, conc = 0;
    const char *name, *mmode, *emode, *at;
    char *models = NULL, in[24];
    if (int_field(req, j, "rpm", 2147483647L, &rpm) == 0 && int_field(req, j, "tpm", 2147483647L, &tpm) == 0 &&
        int_field(req, j, "concurrency", 2147483647L, &conc) == 0 && name_field(req, j, &name) == 0 &&
        models_field(req, j, &mmode, &models) == 0 && expiry_fields(req, j, &emode, &at, in) == 0) {
        char key[52], hash[65], prefix[16], s1[16], s2[16], s3[16];
        if (!strcmp(emode, "never")) emode = "keep"; /* a new key without expiry */
        if (new_key(a, req, key, hash, prefix) == 0) {
            snprintf(s1, sizeof s1, "%ld", rpm);
            snprintf(s2, sizeof s2, "%ld", tpm);
            snprintf(s3, sizeof s3, "%ld", conc);
            const char *p[] = {cust, hash, prefix, s1, s2, s3, name, at, in[0] ? in : NULL, models};
            run(a, req, SQL_KEY_CREATE, 10, p, "no such customer", key);
            OPENSSL_cleanse(key, sizeof key);
        }
    }
    free(models);
    cJSON_Delete(j);
}

static void key_update(bill_admin_t *a, struct evhttp_request *req, const char *id) {
    cJSON *j = body_json(req);
    if (!j) return;
    long lim[3] = {-1, -1, -1};
    const char *names[3] = {"rpm", "tpm", "concurrency"}, *name, *mmode, *emode, *at;
    char *models = NULL, in[24], sl[3][16];
    int ok = 1;
    for (int i = 0; i < 3 && ok; i++) {
        ok = int_field(req, j, names[i], 2147483647L, &lim[i]) == 0;
        snprintf(sl[i], sizeof sl[i], "%ld", lim[i]);
    }
    if (ok && name_field(req, j, &name) == 0 && models_field(req, j, &mmode, &models) == 0 &&
        expiry_fields(req, j, &emode, &at, in) == 0) {
        const char *p[] = {id, name, lim[0] >= 0 ? sl[0] : NULL, lim[1] >= 0 ? sl[1] : NULL,
                           lim[2] >= 0 ? sl[2] : NULL, mmode, models, emode, at, in[0] ? in : NULL};
        run(a, req, SQL_KEY_UPDATE, 10, p, "no such key, or it is revoked", NULL);
    }
    free(models);
    cJSON_Delete(j);
}

#define GRACE_DEFAULT_S 86400

static void key_rotate(bill_admin_t *a, struct evhttp_request *req, const char *id) {
    cJSON *j = body_json(req);
    if (!j) return;
    long grace = GRACE_DEFAULT_S;
    const char *emode, *at;
    char in[24], gs[24], key[52], hash[65], prefix[16];
    if (int_field(req, j, "grace_seconds", 366L * 86400, &grace) == 0 &&
        expiry_fields(req, j, &emode, &at, in) == 0 && new_key(a, req, key, hash, prefix) == 0) {
        snprintf(gs, sizeof gs, "%ld", grace);
        const char *p[] = {id, hash, prefix, gs, at, in[0] ? in : NULL};
        run(a, req, SQL_KEY_ROTATE, 6, p, "no such key that can be rotated (revoked, expired or already rotated)",
            key);
        OPENSSL_cleanse(key, sizeof key);
    }
    cJSON_Delete(j);
}

static void credits_add(bill_admin_t *a, struct evhttp_request *req, const char *cust) {
    cJSON *j = body_json(req);
    if (!j) return;
    char pico[24];
    if (usd_field(req, j, "usd", 1, 1, pico) == 0) {
        cJSON *note = cJSON_GetObjectItemCaseSensitive(j, "note");
        const char *p[] = {cust, pico, cJSON_IsString(note) ? note->valuestring : "credit"};
        run(a, req, SQL_CREDIT, 3, p, "no such customer", NULL);
    }
    cJSON_Delete(j);
}

static void prices_set(bill_admin_t *a, struct evhttp_request *req) {
    cJSON *j = body_json(req);
    if (!j) return;
    cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "model");
    cJSON *eff = cJSON_GetObjectItemCaseSensitive(j, "effective_from");
    cJSON *band = cJSON_GetObjectItemCaseSensitive(j, "band");
    char miss[24], hit[24], out[24], bs[8] = "", be[8] = "";
    if (band && !cJSON_IsNull(band)) {
        unsigned h1, m1, h2, m2;
        char tail;
        if (!cJSON_IsString(band) ||
            sscanf(band->valuestring, "%2u:%2u-%2u:%2u%c", &h1, &m1, &h2, &m2, &tail) != 4 ||
            strlen(band->valuestring) != 11 || h1 > 23 || h2 > 24 || m1 > 59 || m2 > 59 ||
            (h2 == 24 && m2 != 0) || (h1 == h2 % 24 && m1 == m2)) {
            reply_error(req, 400, "invalid_value",
                        "band must be \"HH:MM-HH:MM\" (UTC, start inclusive, end exclusive, may wrap midnight)");
            cJSON_Delete(j);
            return;
        }
        snprintf(bs, sizeof bs, "%02u:%02u", h1, m1);
        snprintf(be, sizeof be, "%02u:%02u", h2 % 24, m2);
    }
    if (!cJSON_IsString(m) || !m->valuestring[0] || strlen(m->valuestring) > 200) {
        reply_error(req, 400, "invalid_value", "model must be a non-empty string of at most 200 bytes");
    } else if (eff && !cJSON_IsNull(eff) && !cJSON_IsString(eff)) {
        reply_error(req, 400, "invalid_value", "effective_from must be a timestamp string");
    } else if (digits_field(req, j, "input_cache_miss", miss) == 0 &&
               digits_field(req, j, "input_cache_hit", hit) == 0 && digits_field(req, j, "output", out) == 0) {
        const char *p[] = {m->valuestring, miss, hit, out, cJSON_IsString(eff) ? eff->valuestring : NULL,
                           bs[0] ? bs : NULL, be[0] ? be : NULL};
        run(a, req, SQL_PRICE_SET, 7, p, NULL, NULL);
    }
    cJSON_Delete(j);
}

/* Unix seconds ("1764300000") as an ISO timestamp in UTC; anything else is
 * returned as is for PostgreSQL to read (or refuse with a 400). */
static const char *epoch_to_iso(const char *t, char out[40]) {
    if (!t || !*t || strlen(t) > 12 || strspn(t, "0123456789") != strlen(t)) return t;
    time_t v = (time_t)strtoll(t, NULL, 10);
    struct tm tm;
    if (!gmtime_r(&v, &tm)) return t;
    strftime(out, 40, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return out;
}

static void usage_get(bill_admin_t *a, struct evhttp_request *req, const char *cust, struct evkeyvalq *q,
                      int invoice) {
    if (invoice) {
        const char *m = evhttp_find_header(q, "month");
        if (!m || strlen(m) != 7 || strspn(m, "0123456789") != 4 || m[4] != '-' || m[5] < '0' || m[5] > '1' ||
            m[6] < '0' || m[6] > '9' || (m[5] == '0' && m[6] == '0') || (m[5] == '1' && m[6] > '2')) {
            reply_error(req, 400, "invalid_value", "month must be YYYY-MM");
            return;
        }
        const char *p[] = {cust, m};
        run(a, req, SQL_INVOICE, 2, p, "no such customer", NULL);
        return;
    }
    const char *from = evhttp_find_header(q, "from"), *to = evhttp_find_header(q, "to");
    const char *limit = evhttp_find_header(q, "limit");
    if (limit && (!*limit || strspn(limit, "0123456789") != strlen(limit) || strlen(limit) > 6)) {
        reply_error(req, 400, "invalid_value", "limit must be an integer from 0 to 999999");
        return;
    }
    char f2[40], t2[40];
    from = epoch_to_iso(from, f2);
    to = epoch_to_iso(to, t2);
    const char *p[] = {cust, from && *from ? from : "-infinity", to && *to ? to : "infinity",
                       limit ? limit : "1000"};
    run(a, req, SQL_USAGE, 4, p, "no such customer", NULL);
}

/* The settlement queue (bill_settle_stats_t), answered from memory: tests
 * wait for "idle" before they count rows. */
static void settlement_get(bill_admin_t *a, struct evhttp_request *req) {
    bill_settle_stats_t st;
    char body[512];
    bill_settler_stats(a->settler, &st);
    snprintf(body, sizeof body,
             "{\"queued\":%lld,\"in_flight\":%lld,\"spool_files\":%lld,\"spool_pending\":%lld,"
             "\"replay_pending\":%s,\"settled_total\":%llu,\"inserted_total\":%llu,\"debited_total\":%llu,"
             "\"rejected_total\":%llu,\"idle\":%s}",
             (long long)st.queued, (long long)st.in_flight, (long long)st.spool_files,
             (long long)st.spool_pending, st.replay_pending ? "true" : "false",
             (unsigned long long)st.settled_total, (unsigned long long)st.inserted_total,
             (unsigned long long)st.debited_total, (unsigned long long)st.rejected_total,
             st.idle ? "true" : "false");
    reply_raw(req, 200, body);
}

static void route(bill_admin_t *a, struct evhttp_request *req, int method, char **seg, int nseg,
                  struct evkeyvalq *q) {
    const int GET = EVHTTP_REQ_GET, POST = EVHTTP_REQ_POST;
    if (nseg >= 2 && !strcmp(seg[0], "customers") && !name_ok(seg[1])) {
        reply_error(req, 404, "not_found", "no such customer");
        return;
    }
    if (nseg == 1 && !strcmp(seg[0], "customers")) {
        if (method == GET) return run(a, req, SQL_CUST_LIST, 0, NULL, NULL, NULL);
        if (method == POST) return customers_create(a, req);
    } else if (nseg >= 2 && !strcmp(seg[0], "customers")) {
        const char *p[] = {seg[1]};
        if (nseg == 2 && method == GET) return run(a, req, SQL_CUST_GET, 1, p, "no such customer", NULL);
        if (nseg == 3 && !strcmp(seg[2], "balance") && method == GET)
            return run(a, req, SQL_BALANCE, 1, p, "no such customer", NULL);
        if (nseg == 3 && !strcmp(seg[2], "keys")) {
            if (method == GET) return run(a, req, SQL_KEY_LIST, 1, p, "no such customer", NULL);
            if (method == POST) return keys_create(a, req, seg[1]);
        }
        if (nseg == 3 && !strcmp(seg[2], "credits") && method == POST) return credits_add(a, req, seg[1]);
        if (nseg == 3 && !strcmp(seg[2], "usage") && method == GET) return usage_get(a, req, seg[1], q, 0);
        if (nseg == 3 && !strcmp(seg[2], "invoice") && method == GET) return usage_get(a, req, seg[1], q, 1);
        if (nseg > 3) goto notfound;
        if (nseg == 3) {
            static const char *const subs[] = {"balance", "keys", "credits", "usage", "invoice"};
            int known = 0;
            for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) known |= !strcmp(seg[2], subs[i]);
            if (!known) goto notfound;
        }
    } else if (nseg >= 2 && !strcmp(seg[0], "keys")) {
        const char *id = seg[1];
        if (!*id || strspn(id, "0123456789") != strlen(id) || strlen(id) > 18) goto notfound;
        const char *p[] = {id};
        if ((nseg == 3 && !strcmp(seg[2], "revoke") && method == POST) ||
            (nseg == 2 && method == EVHTTP_REQ_DELETE))
            return run(a, req, SQL_KEY_REVOKE, 1, p, "no such key", NULL);
        if (nseg == 3 && !strcmp(seg[2], "rotate") && method == POST) return key_rotate(a, req, id);
        if (nseg == 2 && (method == EVHTTP_REQ_PATCH || method == POST)) return key_update(a, req, id);
        if (nseg > 3 || (nseg == 3 && strcmp(seg[2], "revoke") && strcmp(seg[2], "rotate"))) goto notfound;
    } else if (nseg == 1 && !strcmp(seg[0], "settlement")) {
        if (method == GET) return settlement_get(a, req);
    } else if (bill_report_route(a, req, method, seg, nseg, q)) { /* reports, usage/{id} (bill_report.c) */
        return;
    } else if (nseg == 1 && !strcmp(seg[0], "prices")) {
        if (method == GET) {
            const char *h = evhttp_find_header(q, "history");
            return run(a, req, h && !strcmp(h, "1") ? SQL_PRICE_HISTORY : SQL_PRICE_LIST, 0, NULL, NULL, NULL);
        }
        if (method == POST || method == EVHTTP_REQ_PUT) return prices_set(a, req);
    } else {
        goto notfound;
    }
    reply_error(req, 405, "method_not_allowed", "method not allowed on this path");
    return;
notfound:
    reply_error(req, 404, "not_found", "no such admin endpoint");
}

static int authorized(bill_admin_t *a, struct evhttp_request *req) {
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t n = strlen(h), m = strlen(a->token);
    return n == m && CRYPTO_memcmp(h, a->token, n) == 0;
}

static void gen_cb(struct evhttp_request *req, void *arg) {
    bill_admin_t *a = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path) path = "/";
    if (!strcmp(path, "/health")) {
        reply_raw(req, bill_pg_up(a->pg) ? 200 : 503,
                  bill_pg_up(a->pg) ? "{\"status\":\"ok\"}" : "{\"status\":\"database unavailable\"}");
        return;
    }
    if (!authorized(a, req)) {
        reply_error(req, 401, "invalid_admin_token",
                    "missing or wrong admin token (Authorization: Bearer <token from var/admin.token>)");
        return;
    }
    static const char pfx[] = "/admin/v1/";
    if (strncmp(path, pfx, sizeof pfx - 1) != 0) {
        reply_error(req, 404, "not_found", "no such admin endpoint (they live under /admin/v1/)");
        return;
    }
    char *copy = strdup(path + sizeof pfx - 1), *seg[6];
    int nseg = 0;
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    const char *query = evhttp_uri_get_query(uri);
    if (!copy) {
        reply_error(req, 500, NULL, "out of memory");
        return;
    }
    if (query && evhttp_parse_query_str(query, &q) != 0) {
        reply_error(req, 400, "invalid_query", "malformed query string");
        goto done;
    }
    for (char *save = NULL, *t = strtok_r(copy, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        if (nseg == 6) {
            reply_error(req, 404, "not_found", "no such admin endpoint");
            goto done;
        }
        size_t len = 0;
        seg[nseg] = evhttp_uridecode(t, 0, &len);
        if (!seg[nseg]) {
            reply_error(req, 500, NULL, "out of memory");
            goto done;
        }
        nseg++;
        if (strlen(seg[nseg - 1]) != len) { /* an encoded NUL */
            reply_error(req, 404, "not_found", "no such admin endpoint");
            goto done;
        }
    }
    route(a, req, evhttp_request_get_command(req), seg, nseg, &q);
done:
    for (int i = 0; i < nseg; i++) free(seg[i]);
    evhttp_clear_headers(&q);
    free(copy);
}

bill_admin_t *bill_admin_new(struct event_base *base, bill_pg_t *pg, const bill_settler_t *settler,
                             const char *listen, const char *token, const char *key_secret, char *err,
                             size_t errlen) {
    bill_admin_t *a = calloc(1, sizeof *a);
    char host[256];
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    long port = colon ? strtol(colon + 1, NULL, 10) : 0;
    if (!a) goto oom;
    TAILQ_INIT(&a->pending);
    a->base = base;
    a->pg = pg;
    a->settler = settler;
    if (!colon || port <= 0 || port > 65535 || (size_t)(colon - listen) >= sizeof host) {
        snprintf(err, errlen, "admin_listen %s: want HOST:PORT", listen ? listen : "(null)");
        goto fail;
    }
    memcpy(host, listen, colon - listen);
    host[colon - listen] = 0;
    if (strncmp(host, "127.", 4) && strcmp(host, "localhost") && strcmp(host, "[::1]") && strcmp(host, "::1"))
        fprintf(stderr, "bill: warning: the admin API listens on %s, which is not a loopback address\n", listen);
    if (host[0] == '[' && host[strlen(host) - 1] == ']') { /* [::1]:8444 */
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
    }
    a->token = strdup(token);
    a->secret = strdup(key_secret);
    a->http = evhttp_new(base);
    if (!a->token || !a->secret || !a->http) goto oom;
    evhttp_set_max_body_size(a->http, MAX_BODY);
    evhttp_set_max_headers_size(a->http, 16384);
    evhttp_set_timeout(a->http, 30);
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_PATCH);
    evhttp_set_gencb(a->http, gen_cb, a);
    if (!evhttp_bind_socket_with_handle(a->http, host, (unsigned short)port)) {
        snprintf(err, errlen, "admin API: cannot listen on %s", listen);
        goto fail;
    }
    return a;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    bill_admin_free(a);
    return NULL;
}

void bill_admin_free(bill_admin_t *a) {
    if (!a) return;
    actx_t *x;
    while ((x = TAILQ_FIRST(&a->pending))) {
        TAILQ_REMOVE(&a->pending, x, link);
        bill_pg_cancel(x->job);
        OPENSSL_cleanse(x->key, sizeof x->key);
        free(x);
    }
    if (a->http) evhttp_free(a->http);
    if (a->token) OPENSSL_cleanse(a->token, strlen(a->token));
    free(a->token);
    free(a->secret);
    free(a);
}

/* ---- for the routes of bill_report.c ------------------------------------ */

void bill_admin_query(bill_admin_t *a, struct evhttp_request *req, const char *sql, int n,
                      const char *const *params, const char *notfound) {
    run(a, req, sql, n, params, notfound, NULL);
}

void bill_admin_fail(struct evhttp_request *req, int st, const char *code, const char *msg) {
    reply_error(req, st, code, "%s", msg);
}

const char *bill_admin_time(const char *t, char out[40]) { return epoch_to_iso(t, out); }
