/* bill_admin.c — the admin API's HTTP plumbing: plain HTTP/1.1 (evhttp) on a
 * loopback address, `Authorization: Bearer <admin token>` on every route but
 * /health, JSON in and out, OpenAI-style error bodies.  Endpoints are listed
 * in billing/README.md; their SQL and handlers live in bill_admin_<resource>.c.
 * The embedding program's pages (the gateway's /metrics) need no token on a
 * loopback listener, the operator's own machine; on any other address they
 * need one too (page_route), as everything but /health does.
 *
 * Tokens: the bootstrap token (var/admin.token) is the root admin, compared
 * in memory; any other bearer is looked up by its keyed hash in admin_tokens
 * (one statement, no cache, so a revocation counts from the next request).
 * A `readonly` token may only GET; anything else is 403 before routing.
 *
 * Writes (adm_write) are audited by their own statement (admin_audit, actor =
 * the token's name) and idempotent under an `Idempotency-Key` header: the
 * answer is stored by the same statement as the write, so a write and its
 * stored answer commit together or not at all.  The same key again replays
 * the stored answer (same status; header Idempotent-Replayed: true); the same
 * key with another method, path, query or body is 422.  Two requests racing
 * with one key: the loser's statement fails (on the key's primary key, or on
 * what the winner's write did first) and rolls back; a keyed write that fails
 * reads the key's record again and replays the winner's answer, answering its
 * own error only when there is none.
 *
 * Bodies are read by bill_body_parse (common/tg_json: numbers keep their
 * text, never a double; no member twice; no U+0000 in a string), and a 400
 * about one input names it in the error's "param" (adm_field_error).
 *
 * Each request becomes at most a few SQL statements on the shared pool; a
 * statement builds the response JSON itself (json_build_object), so money
 * leaves PostgreSQL as exact decimal strings and is never a JSON number. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "tg_hex.h"
#include "tg_httpguard.h"
#include "bill_admin-int.h"
#include "tg_json.h"

#define MAX_BODY 65536
/* evhttp's own limit, a backstop: tg_httpguard answers a body over MAX_BODY
 * (JSON 413) before evhttp reads it, where evhttp answered bodies over 1 MiB
 * with its own HTML page (libevent 2.1 has no hook for that answer). */
#define MAX_BODY_READ (1 << 20)
#define MAX_HEAD 16384
#define MAX_CONNS 256               /* an operator's tools, scrapers, the dashboard's gateway */
#define MAX_BUFFERED (16u << 20)    /* request bytes being received by all connections */
#define REQUEST_TIMEOUT_S 30
#define IDLE_TIMEOUT_S 60
#define MAX_SEG 6
#define IDEM_MAX 255

enum { ST_AUTH, ST_READ, ST_LOOKUP, ST_WRITE };

/* bill_admin.c's side of a request (r->priv). */
typedef struct adm_priv {
    TAILQ_ENTRY(adm_priv) link;
    adm_req_t pub;
    bill_pg_job_t *job;
    int stage;
    int readonly;
    const char *notfound;
    const char *ctype;          /* of a read's answer; NULL: JSON */
    int status;                 /* of a write's answer */
    int looked_up;              /* the idempotency record was read again after a failed write */
    int err_status;             /* that write's own error, answered when no record was found */
    const char *err_code;
    char err_msg[512];
    const char *secret_field;   /* a value to show once (adm_write) */
    char secret[64];
    char *sql;                  /* a write's composed statement */
    char **params;              /* its parameters (n + 4) */
    int nparams;
    char idem[IDEM_MAX + 1];    /* Idempotency-Key, or "" */
    char hash[65];              /* SHA-256 of method, path, query, body */
} adm_priv_t;

TAILQ_HEAD(adm_q, adm_priv);

struct bill_admin {
    struct event_base *base;
    bill_pg_t *pg;
    const bill_settler_t *settler; /* not owned */
    struct evhttp *http;
    tg_httpguard_t *guard;     /* JSON for malformed and oversized requests; connections and bytes bounded */
    char *token;
    char *secret;
    struct adm_q pending;
    struct adm_page *pages;    /* bill_admin_page */
    int loopback;              /* listens on a loopback address: pages need no token */
    bill_page_fn settle_fn;    /* bill_admin_settlement: answers GET settlement instead */
    void *settle_arg;
};

static const adm_router_fn routers[] = {
    bill_admin_accounts_route, bill_admin_keys_route,   bill_admin_prices_route,
    bill_admin_invoices_route, bill_admin_tokens_route,  bill_report_route,
    bill_admin_users_route,
};

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
    case 413: return "Content Too Large";
    case 422: return "Unprocessable Entity";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

static void send_raw(struct evhttp_request *req, int st, const char *ctype, const char *body) {
    struct evbuffer *out = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      ctype ? ctype : "application/json");
    if (out) {
        evbuffer_add(out, body, strlen(body));
        if (!*body || body[strlen(body) - 1] != '\n') evbuffer_add(out, "\n", 1);
    }
    evhttp_send_reply(req, st, reason(st), out);
    if (out) evbuffer_free(out);
}

static void json_str_or_null(tg_buf_t *b, const char *s) {
    if (s) tg_json_write_str(b, s, strlen(s));
    else tg_buf_puts(b, "null");
}

char *bill_error_json(int st, const char *code, const char *param, const char *msg) {
    const char *type = st == 401 ? "authentication_error"
                       : st == 403 ? "permission_error"
                       : st == 404 ? "not_found_error"
                       : st == 409 ? "conflict_error"
                       : st == 429 ? "rate_limit_error"
                       : st == 503 ? "service_unavailable_error"
                       : st >= 500 ? "api_error"
                                   : "invalid_request_error";
    tg_buf_t b = {0};
    tg_buf_puts(&b, "{\"error\":{\"message\":");
    json_str_or_null(&b, msg);
    tg_buf_printf(&b, ",\"type\":\"%s\",\"param\":", type);
    json_str_or_null(&b, param);
    tg_buf_puts(&b, ",\"code\":");
    json_str_or_null(&b, code);
    tg_buf_puts(&b, "}}");
    if (b.oom) {
        tg_buf_free(&b);
        return NULL;
    }
    return b.p; /* NUL-terminated */
}

static void send_error_param(struct evhttp_request *req, int st, const char *code, const char *param,
                             const char *msg) {
    char *body = bill_error_json(st, code, param, msg);
    send_raw(req, st, NULL,
             body ? body : "{\"error\":{\"message\":\"out of memory\",\"type\":\"api_error\",\"param\":null,\"code\":null}}");
    free(body);
}

static void send_error(struct evhttp_request *req, int st, const char *code, const char *msg) {
    send_error_param(req, st, code, NULL, msg);
}

static void priv_free(adm_priv_t *p) {
    if (!p) return;
    if (p->params) {
        for (int i = 0; i < p->nparams; i++) free(p->params[i]);
        free(p->params);
    }
    free(p->sql);
    OPENSSL_cleanse(p->secret, sizeof p->secret);
    free(p);
}

/* The request is answered: forget it. */
static void finish(adm_req_t *r) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    TAILQ_REMOVE(&r->a->pending, p, link);
    priv_free(p);
}

void adm_reply(adm_req_t *r, int status, const char *content_type, const char *body) {
    send_raw(r->req, status, content_type, body);
    finish(r);
}

void adm_error(adm_req_t *r, int st, const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    send_error(r->req, st, code, msg);
    finish(r);
}

void adm_field_error(adm_req_t *r, const char *code, const char *param, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    send_error_param(r->req, 400, code, param, msg);
    finish(r);
}

int adm_bad_method(adm_req_t *r, const char *allow) {
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", allow);
    adm_error(r, 405, "method_not_allowed", "method not allowed on this path (use %s)", allow);
    return 1;
}

/* ---- statements ----------------------------------------------------------- */

static void query_done(PGresult *res, const char *err, void *arg);

static int submit(adm_req_t *r, const char *sql, int n, const char *const *params) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    p->job = bill_pg_query(r->a->pg, sql, n, params, query_done, p);
    if (!p->job) {
        adm_error(r, 500, NULL, "out of memory");
        return -1;
    }
    return 0;
}

static const char LOOKUP_SQL[] =
    "SELECT request_hash, status, response FROM admin_idempotency WHERE actor = $1 AND key = $2";

static void lookup(adm_req_t *r) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    p->stage = ST_LOOKUP;
    const char *params[] = {r->actor, p->idem};
    submit(r, LOOKUP_SQL, 2, params);
}

static void write_now(adm_req_t *r) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    p->stage = ST_WRITE;
    submit(r, p->sql, p->nparams, (const char *const *)p->params);
}

/* A database error as an answer: kept in p (err_*) by db_error_keep, sent
 * by db_error_send. */
static void db_error_keep(adm_priv_t *p, PGresult *res) {
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *cons = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
    const char *what = NULL;
    if (!state) state = "";
    if (!msg) msg = "database error";
    p->err_status = 409;
    p->err_code = "already_exists";
    if (!strcmp(state, "23505") && cons && !strcmp(cons, "customers_name_key"))
        what = "a customer with this name already exists";
    else if (!strcmp(state, "23505") && cons && !strcmp(cons, "dash_users_login_key"))
        what = "a dashboard login with this name already exists";
    else if (!strcmp(state, "23505") && cons && !strcmp(cons, "admin_tokens_name_key"))
        what = "an admin token with this name already exists";
    if (what) {
        snprintf(p->err_msg, sizeof p->err_msg, "%s", what);
    } else if (!strcmp(state, "23505")) {
        snprintf(p->err_msg, sizeof p->err_msg, "already exists: %s", msg);
    } else if (!strcmp(state, "55P03") || !strcmp(state, "57014")) {
        /* lock_timeout (bill_pg.c) or a cancel: the statement was rolled back */
        p->err_status = 503;
        p->err_code = "database_busy";
        snprintf(p->err_msg, sizeof p->err_msg,
                 "database busy: the statement waited too long for a lock and was cancelled; nothing was written, "
                 "try again");
    } else if (!strcmp(state, "55000")) {
        p->err_code = "conflict";
        snprintf(p->err_msg, sizeof p->err_msg, "%s", msg);
    } else if (!strncmp(state, "22", 2) || !strncmp(state, "23", 2)) {
        p->err_status = 400;
        p->err_code = "invalid_value";
        snprintf(p->err_msg, sizeof p->err_msg, "%s", msg);
    } else {
        fprintf(stderr, "bill: admin statement failed: %s", PQresultErrorMessage(res));
        p->err_status = 500;
        p->err_code = "database_error";
        snprintf(p->err_msg, sizeof p->err_msg, "database error (%s)", state);
    }
}

static void db_error_send(adm_req_t *r) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    adm_error(r, p->err_status, p->err_code, "%s", p->err_msg);
}

static void dispatch(adm_req_t *r);
static int page_route(adm_req_t *r, const char *path);

static void auth_done(adm_req_t *r, PGresult *res) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    if (PQntuples(res) == 0) {
        adm_error(r, 401, "invalid_admin_token", "unknown or revoked admin token");
        return;
    }
    snprintf(r->actor, sizeof r->actor, "%s", PQgetvalue(res, 0, 0));
    p->readonly = strcmp(PQgetvalue(res, 0, 1), "admin") != 0;
    dispatch(r);
}

static void replay(adm_req_t *r, PGresult *res) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    if (strcmp(PQgetvalue(res, 0, 0), p->hash) != 0) {
        adm_error(r, 422, "idempotency_key_reused",
                  "the Idempotency-Key \"%s\" was already used for a different request (method, path or body); "
                  "use a new key for a new request",
                  p->idem);
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Idempotent-Replayed", "true");
    adm_reply(r, atoi(PQgetvalue(res, 0, 1)), NULL, PQgetvalue(res, 0, 2));
}

static void write_done(adm_req_t *r, PGresult *res) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
        adm_error(r, 404, "not_found", "%s", p->notfound ? p->notfound : "not found");
        return;
    }
    const char *j = PQgetvalue(res, 0, 0);
    if (!p->secret_field) {
        adm_reply(r, p->status, NULL, j);
        return;
    }
    /* Show the secret once: splice it in front of the row's JSON. */
    size_t n = strlen(j) + strlen(p->secret_field) + sizeof p->secret + 16;
    char *body = malloc(n);
    if (body && j[0] == '{') {
        snprintf(body, n, "{\"%s\":\"%s\",%s", p->secret_field, p->secret, j + 1);
        adm_reply(r, p->status, NULL, body);
        OPENSSL_cleanse(body, n);
    } else {
        adm_error(r, 500, NULL, "out of memory");
    }
    free(body);
}

static void query_done(PGresult *res, const char *err, void *arg) {
    adm_priv_t *p = arg;
    adm_req_t *r = &p->pub;
    p->job = NULL;
    if (!res) {
        adm_error(r, 503, "database_unavailable", "%s", err ? err : "database unavailable");
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        db_error_keep(p, res);
        if (p->stage == ST_WRITE && p->idem[0] && !p->looked_up) {
            /* Another request with this key may have committed while this one ran: its record's
             * primary key, the row it made (a customer's name) or what it changed (a balance a
             * refund now exceeds) failed this one.  Answer as that request did (or 422 for
             * another body); this write's own error only when no record exists. */
            p->looked_up = 1;
            lookup(r);
            return;
        }
        db_error_send(r);
        return;
    }
    switch (p->stage) {
    case ST_AUTH: auth_done(r, res); return;
    case ST_LOOKUP:
        if (PQntuples(res) > 0) replay(r, res);
        else if (p->looked_up) db_error_send(r);
        else write_now(r);
        return;
    case ST_WRITE: write_done(r, res); return;
    default:
        if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0))
            adm_error(r, 404, "not_found", "%s", p->notfound ? p->notfound : "not found");
        else
            adm_reply(r, 200, p->ctype, PQgetvalue(res, 0, 0));
    }
}

void adm_read_as(adm_req_t *r, const char *content_type) { ((adm_priv_t *)r->priv)->ctype = content_type; }

void adm_read(adm_req_t *r, const char *sql, int n, const char *const *params, const char *notfound) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    p->stage = ST_READ;
    p->notfound = notfound;
    submit(r, sql, n, params);
}

/* sql with `$actor` replaced by $<actor_n>, and the idempotency record and
 * final SELECT appended.  malloc'ed, NULL on ENOMEM. */
static char *compose(const char *sql, int n) {
    tg_buf_t b = {0};
    char num[64];
    const char *s = sql, *hit;
    int na = n + 1, nk = n + 2, nh = n + 3, ns = n + 4;
    while ((hit = strstr(s, "$actor"))) {
        tg_buf_put(&b, s, (size_t)(hit - s));
        tg_buf_put(&b, num, (size_t)snprintf(num, sizeof num, "$%d", na));
        s = hit + 6;
    }
    tg_buf_put(&b, s, strlen(s));
    char tail[512];
    int len = snprintf(tail, sizeof tail,
                       ", idem AS (INSERT INTO admin_idempotency (actor, key, request_hash, status, response)"
                       " SELECT $%d::text, $%d::text, $%d::text, $%d::int, body FROM resp"
                       " WHERE $%d::text IS NOT NULL AND body IS NOT NULL RETURNING 1)"
                       " SELECT body FROM resp",
                       na, nk, nh, ns, nk);
    tg_buf_put(&b, tail, (size_t)len);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

void adm_write(adm_req_t *r, const char *sql, int n, const char *const *params, const char *notfound,
               int status, const char *secret_field, const char *secret) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    char st[8];
    snprintf(st, sizeof st, "%d", status);
    p->notfound = notfound;
    p->status = status;
    p->secret_field = secret_field;
    if (secret) snprintf(p->secret, sizeof p->secret, "%s", secret);
    p->sql = compose(sql, n);
    p->nparams = n + 4;
    p->params = calloc((size_t)p->nparams, sizeof *p->params);
    int oom = !p->sql || !p->params;
    for (int i = 0; !oom && i < n; i++) oom = params[i] && !(p->params[i] = strdup(params[i]));
    const char *extra[4] = {r->actor, p->idem[0] ? p->idem : NULL, p->hash, st};
    for (int i = 0; !oom && i < 4; i++) oom = extra[i] && !(p->params[n + i] = strdup(extra[i]));
    if (oom) {
        adm_error(r, 500, NULL, "out of memory");
        return;
    }
    if (p->idem[0]) lookup(r);
    else write_now(r);
}

/* ---- input helpers ------------------------------------------------------ */

int adm_text_plain(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) return 0;
        if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) return 0; /* U+0080..U+009F (valid UTF-8 here) */
    }
    return 1;
}

int adm_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || !strchr("._@+-", c))) return 0;
    }
    return 1;
}

int adm_month_ok(const char *m) {
    return m && strlen(m) == 7 && strspn(m, "0123456789") == 4 && strncmp(m, "0000", 4) && m[4] == '-' &&
           m[5] >= '0' && m[5] <= '1' &&
           m[6] >= '0' && m[6] <= '9' && !(m[5] == '0' && m[6] == '0') && !(m[5] == '1' && m[6] > '2');
}

/* The member name under which the first string of v (value, member name, or
 * anything inside) holding U+0000 sits ("" at the top), or NULL when none. */
static const char *nul_inside(const tg_json_t *v, const char *under) {
    const tg_json_t *m;
    const char *s, *k;
    size_t n;
    switch (tg_json_type(v)) {
    case TG_JSON_STRING:
        s = tg_json_str(v, &n);
        return memchr(s, 0, n) ? under : NULL;
    case TG_JSON_ARRAY:
        TG_JSON_FOREACH(m, v)
            if ((s = nul_inside(m, under))) return s;
        return NULL;
    case TG_JSON_OBJECT:
        TG_JSON_FOREACH(m, v) {
            k = tg_json_key(m, &n);
            if (memchr(k, 0, n)) return k;
            if ((s = nul_inside(m, k))) return s;
        }
        return NULL;
    default:
        return NULL;
    }
}

tg_json_t *bill_body_parse(const char *text, size_t n, bill_body_err_t *e) {
    tg_json_err_t err;
    size_t klen;
    int oom = 0;
    const char *bad;
    tg_json_t *j = tg_json_parse(n ? text : "{}", n ? n : 2, NULL, &err);
    e->code = "invalid_json";
    e->param[0] = 0;
    if (!j) {
        snprintf(e->msg, sizeof e->msg, "the body must be a JSON object (%s)", err.text);
        return NULL;
    }
    if (tg_json_type(j) != TG_JSON_OBJECT) {
        snprintf(e->msg, sizeof e->msg, "the body must be a JSON object");
    } else if ((bad = tg_json_dup_key(j, &klen, &oom))) {
        snprintf(e->param, sizeof e->param, "%s", bad);
        snprintf(e->msg, sizeof e->msg, "%s is given more than once", e->param);
    } else if (oom) {
        e->code = NULL;
        snprintf(e->msg, sizeof e->msg, "out of memory");
    } else if ((bad = nul_inside(j, ""))) {
        e->code = "invalid_value";
        snprintf(e->param, sizeof e->param, "%s", bad);
        snprintf(e->msg, sizeof e->msg, "%s holds a NUL character (\\u0000), which no text here may hold",
                 *bad ? e->param : "the body");
    } else {
        return j;
    }
    tg_json_free(j);
    return NULL;
}

tg_json_t *adm_body(adm_req_t *r) {
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t n = evbuffer_get_length(in);
    const char *text = n ? (const char *)evbuffer_pullup(in, -1) : "";
    bill_body_err_t e;
    tg_json_t *j = text ? bill_body_parse(text, n, &e) : NULL;
    if (!text || (!j && !e.code)) adm_error(r, 500, NULL, "out of memory");
    else if (!j) adm_field_error(r, e.code, e.param[0] ? e.param : NULL, "%s", e.msg);
    return j;
}

int adm_int_field(adm_req_t *r, tg_json_t *j, const char *name, long max, long *v) {
    tg_json_t *f = tg_json_get(j, name);
    const char *s = adm_jstr(f), *num = tg_json_num_text(f, NULL);
    int64_t x;
    if (!f || adm_jnull(f)) return 0;
    if (num) { /* its text, exactly: a double would take 60.000000000000001 for 60 */
        if (num[0] != '-' && tg_json_int64(f, &x) == 0 && x <= max) {
            *v = (long)x;
            return 0;
        }
    } else if (s && s[0] && strspn(s, "0123456789") == strlen(s) && strlen(s) <= 18) {
        long long y = strtoll(s, NULL, 10);
        if (y <= max) {
            *v = (long)y;
            return 0;
        }
    }
    adm_field_error(r, "invalid_value", name,
                    "%s must be an integer from 0 to %ld, written as one (no fraction, exponent or sign)", name,
                    max);
    return -1;
}

int adm_digits_field(adm_req_t *r, tg_json_t *j, const char *name, char out[24]) {
    const char *s = adm_jstr(tg_json_get(j, name));
    if (!s || !*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 13) {
        adm_field_error(r, "invalid_value", name,
                        "%s must be a string of digits: integer micro-USD per 1M tokens, at most 1e12", name);
        return -1;
    }
    long long v = strtoll(s, NULL, 10);
    if (v > 1000000000000LL) {
        adm_field_error(r, "invalid_value", name, "%s is above 1e12 micro-USD per 1M tokens", name);
        return -1;
    }
    snprintf(out, 24, "%lld", v);
    return 0;
}

int adm_usd_field(adm_req_t *r, tg_json_t *j, const char *name, int required, int positive, int signed_ok,
                  char out[24]) {
    tg_json_t *f = tg_json_get(j, name);
    if (!f || adm_jnull(f)) {
        if (!required) {
            snprintf(out, 24, "0");
            return 0;
        }
        adm_field_error(r, "missing_field", name, "%s is required (a decimal string of USD, e.g. \"5.00\")", name);
        return -1;
    }
    int64_t pico;
    const char *s = adm_jstr(f);
    int neg = signed_ok && s && s[0] == '-';
    if (!s || bill_usd_parse(s + neg, &pico) != 0) {
        adm_field_error(r, "invalid_amount", name,
                        "%s must be a %sdecimal string of USD with at most 12 decimals, at most 9223372.036854775807 "
                        "(int64 pico-USD), e.g. \"5\", \"5.00\", \"0.000001\"%s",
                        name, signed_ok ? "" : "non-negative ", signed_ok ? ", \"-1.50\"" : "");
        return -1;
    }
    if (positive && pico == 0) {
        adm_field_error(r, "invalid_amount", name, "%s must not be zero", name);
        return -1;
    }
    snprintf(out, 24, "%s%lld", neg && pico ? "-" : "", (long long)pico);
    return 0;
}

int adm_str_field(adm_req_t *r, tg_json_t *j, const char *name, size_t max, int required, const char **out) {
    tg_json_t *f = tg_json_get(j, name);
    const char *s = adm_jstr(f);
    *out = NULL;
    if (!f || adm_jnull(f)) {
        if (!required) return 0;
    } else if (s && s[0] && strlen(s) <= max) {
        *out = s;
        return 0;
    }
    adm_field_error(r, required && !f ? "missing_field" : "invalid_value", name,
                    "%s must be a string of 1 to %zu bytes%s", name, max, required ? " (required)" : "");
    return -1;
}

/* n digits at t (all of them digits) as a number, else -1. */
static int digits(const char *t, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (t[i] < '0' || t[i] > '9') return -1;
        v = v * 10 + (t[i] - '0');
    }
    return v;
}

static int date_ok(int y, int m, int d) {
    static const int D[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || m < 1 || m > 12 || d < 1 || d > D[m - 1]) return 0;
    return m != 2 || d < 29 || (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0));
}

int adm_time_valid(const char *t) {
    size_t n = strlen(t);
    if (!strcmp(t, "infinity") || !strcmp(t, "-infinity")) return 1;
    if (n && n <= 12 && strspn(t, "0123456789") == n) /* Unix seconds; 8 digits: a date */
        return n != 8 || date_ok(digits(t, 4), digits(t + 4, 2), digits(t + 6, 2));
    if (n < 10 || t[4] != '-' || t[7] != '-' || !date_ok(digits(t, 4), digits(t + 5, 2), digits(t + 8, 2))) return 0;
    const char *p = t + 10;
    if (!*p) return 1;
    if (*p != 'T' && *p != 't' && *p != ' ') return 0;
    p++; /* hh:mm[:ss[.fraction]] */
    int h = digits(p, 2), mi = p[0] && p[1] && p[2] == ':' ? digits(p + 3, 2) : -1;
    if (h < 0 || h > 23 || mi < 0 || mi > 59) return 0;
    p += 5;
    if (*p == ':') {
        int sec = digits(p + 1, 2);
        if (sec < 0 || sec > 59) return 0;
        p += 3;
        if (*p == '.') {
            size_t f = strspn(p + 1, "0123456789");
            if (!f || f > 9) return 0;
            p += 1 + f;
        }
    }
    if (!*p) return 1;
    if (!p[1] && (*p == 'Z' || *p == 'z')) return 1;
    if (*p != '+' && *p != '-') return 0;
    p++; /* the offset: hh, hh:mm or hhmm */
    int oh = digits(p, 2);
    if (oh < 0 || oh > 15) return 0;
    p += 2;
    if (!*p) return 1;
    if (*p == ':') p++;
    int om = digits(p, 2);
    return om >= 0 && om <= 59 && !p[2];
}

const char *adm_time_q(adm_req_t *r, struct evkeyvalq *q, const char *name, char out[40], int *bad) {
    const char *v = evhttp_find_header(q, name);
    if (!v || !*v) return NULL;
    if (!adm_time_valid(v)) {
        *bad = 1;
        adm_field_error(r, "invalid_value", name, "%s %s", name, ADM_TIME_RULE);
        return NULL;
    }
    return adm_epoch_to_iso(v, out);
}

const char *adm_epoch_to_iso(const char *t, char out[40]) {
    /* 8 digits are a date (20261130, ISO 8601's basic form, as PostgreSQL
     * reads it): as Unix seconds they would be 1970-1973, which nobody means */
    if (!t || !*t || strlen(t) > 12 || strlen(t) == 8 || strspn(t, "0123456789") != strlen(t)) return t;
    time_t v = (time_t)strtoll(t, NULL, 10);
    struct tm tm;
    if (!gmtime_r(&v, &tm)) return t;
    strftime(out, 40, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return out;
}

/* ---- named credentials (admin tokens, dashboard logins) ------------------ */

int adm_secret_new(adm_req_t *r, const char *tag, size_t nbytes, char *out, size_t outlen, char hash[65]) {
    char hex[129];
    int rc = -1;
    if (strlen(tag) + 2 * nbytes >= outlen || bill_random_hex(hex, nbytes) != 0) {
        adm_error(r, 500, NULL, "no random bytes");
    } else {
        snprintf(out, outlen, "%s%s", tag, hex);
        bill_key_hash(r->secret, out, hash);
        rc = 0;
    }
    OPENSSL_cleanse(hex, sizeof hex);
    return rc;
}

int adm_named_route(adm_req_t *r, char **seg, int nseg, const adm_named_t *c) {
    if (nseg < 1 || strcmp(seg[0], c->path) != 0 || nseg > 3) return 0;
    if (nseg == 1) {
        if (r->method == EVHTTP_REQ_GET) adm_read(r, c->list_sql, 0, NULL, NULL);
        else if (r->method == EVHTTP_REQ_POST) c->create(r);
        else adm_bad_method(r, "GET, POST");
        return 1;
    }
    const char *p[] = {seg[1]};
    if (!adm_name_ok(seg[1])) return 0;
    if ((nseg == 3 && !strcmp(seg[2], "revoke") && r->method == EVHTTP_REQ_POST) ||
        (nseg == 2 && r->method == EVHTTP_REQ_DELETE))
        adm_write(r, c->revoke_sql, 1, p, c->notfound, 200, NULL, NULL);
    else if (nseg == 3 && strcmp(seg[2], "revoke")) return 0;
    else adm_bad_method(r, nseg == 3 ? "POST" : "DELETE");
    return 1;
}

/* ---- the settlement queue ------------------------------------------------- */

/* The settlement queue (bill_settle_stats_t), answered from memory: tests
 * wait for "idle" before they count rows. */
static bill_page_t *page_new(struct evhttp_request *req);

size_t bill_settle_stats_json(const bill_settle_stats_t *sp, char *body, size_t n) {
    const bill_settle_stats_t st = *sp;
    int w = snprintf(body, n,
             "{\"queued\":%lld,\"in_flight\":%lld,\"spool_files\":%lld,\"spool_pending\":%lld,"
             "\"replay_pending\":%s,\"settled_total\":%llu,\"inserted_total\":%llu,\"debited_total\":%llu,"
             "\"rejected_total\":%llu,\"copied_total\":%llu,\"copy_fallbacks_total\":%llu,\"idle\":%s}",
             (long long)st.queued, (long long)st.in_flight, (long long)st.spool_files, (long long)st.spool_pending,
             st.replay_pending ? "true" : "false", (unsigned long long)st.settled_total,
             (unsigned long long)st.inserted_total, (unsigned long long)st.debited_total,
             (unsigned long long)st.rejected_total, (unsigned long long)st.copied_total,
             (unsigned long long)st.copy_fallbacks_total, st.idle ? "true" : "false");
    return w < 0 ? 0 : (size_t)w < n ? (size_t)w : n - 1;
}

static void settlement_get(adm_req_t *r) {
    bill_admin_t *a = r->a;
    if (a->settle_fn) { /* the embedding program sums its settlers (several event loops) */
        bill_page_t *pg = page_new(r->req);
        if (!pg) {
            adm_error(r, 500, NULL, "out of memory");
            return;
        }
        finish(r);
        a->settle_fn(pg, a->settle_arg);
        return;
    }
    bill_settle_stats_t st;
    char body[512];
    bill_settler_stats(r->settler, &st);
    bill_settle_stats_json(&st, body, sizeof body);
    adm_reply(r, 200, NULL, body);
}

/* ---- routing -------------------------------------------------------------- */

/* The query string as RFC 3986 reads it: NAME=VALUE pairs split on '&', each
 * percent-decoded and nothing else, so '+' is a plus sign (a customer named
 * "a+b" is ?customer=a+b or a%2Bb) and a space is %20.  This is not form
 * decoding (application/x-www-form-urlencoded, where '+' is a space, as
 * evhttp_parse_query_str reads it): '+' meant two things there, and a name
 * with '+' could not be asked for by a client writing it as is.  A pair
 * without '=' has the value "".  0; -1 when a name or value holds an encoded
 * NUL (%00); -2 out of memory. */
static int query_parse(const char *query, struct evkeyvalq *q) {
    char *copy = strdup(query);
    int rc = copy ? 0 : -2;
    for (char *save = NULL, *t = copy ? strtok_r(copy, "&", &save) : NULL; t && !rc; t = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(t, '=');
        if (eq) *eq = 0;
        size_t kl = 0, vl = 0;
        char *k = evhttp_uridecode(t, 0, &kl), *v = evhttp_uridecode(eq ? eq + 1 : "", 0, &vl);
        if (!k || !v) rc = -2;
        else if (strlen(k) != kl || strlen(v) != vl) rc = -1;
        else if (evhttp_add_header(q, k, v) != 0) rc = -1; /* a CR or LF in it */
        free(k);
        free(v);
    }
    free(copy);
    return rc;
}

/* Route r by its path (after /admin/v1/).  Always answers. */
static void dispatch(adm_req_t *r) {
    adm_priv_t *p = (adm_priv_t *)r->priv;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(r->req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (path && page_route(r, path)) return; /* a page, on a listener that is not loopback: any token reads it */
    if (p->readonly && r->method != EVHTTP_REQ_GET) {
        adm_error(r, 403, "insufficient_role",
                  "the admin token \"%s\" is readonly: it may only read (GET); writes need a token with role admin",
                  r->actor);
        return;
    }
    static const char pfx[] = "/admin/v1/";
    if (!path || strncmp(path, pfx, sizeof pfx - 1) != 0) {
        adm_error(r, 404, "not_found", "no such admin endpoint (they live under /admin/v1/)");
        return;
    }
    char *copy = strdup(path + sizeof pfx - 1), *seg[MAX_SEG];
    int nseg = 0;
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    const char *query = evhttp_uri_get_query(uri);
    if (!copy) {
        adm_error(r, 500, NULL, "out of memory");
        return;
    }
    int qrc = query ? query_parse(query, &q) : 0;
    if (qrc == -2) {
        adm_error(r, 500, NULL, "out of memory");
        goto done;
    }
    if (qrc) {
        adm_error(r, 400, "invalid_query", "malformed query string (a name or value holds %%00, CR or LF)");
        goto done;
    }
    for (char *save = NULL, *t = strtok_r(copy, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        if (nseg == MAX_SEG) {
            adm_error(r, 404, "not_found", "no such admin endpoint");
            goto done;
        }
        size_t len = 0;
        seg[nseg] = evhttp_uridecode(t, 0, &len);
        if (!seg[nseg]) {
            adm_error(r, 500, NULL, "out of memory");
            goto done;
        }
        nseg++;
        if (strlen(seg[nseg - 1]) != len) { /* an encoded NUL */
            adm_error(r, 404, "not_found", "no such admin endpoint");
            goto done;
        }
    }
    if (nseg == 1 && !strcmp(seg[0], "settlement")) {
        if (r->method == EVHTTP_REQ_GET) settlement_get(r);
        else adm_bad_method(r, "GET");
        goto done;
    }
    for (size_t i = 0; i < sizeof routers / sizeof routers[0]; i++)
        if (routers[i](r, seg, nseg, &q)) goto done;
    adm_error(r, 404, "not_found", "no such admin endpoint");
done:
    for (int i = 0; i < nseg; i++) free(seg[i]);
    evhttp_clear_headers(&q);
    free(copy);
}

/* SHA-256 of method, path with query, and body, as hex. */
static void request_hash(struct evhttp_request *req, char out[65]) {
    unsigned char md[32];
    unsigned int mdlen = 0;
    char m[16];
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    const char *uri = evhttp_request_get_uri(req);
    snprintf(m, sizeof m, "%d\n", (int)evhttp_request_get_command(req));
    size_t n = evbuffer_get_length(in);
    unsigned char *body = n ? evbuffer_pullup(in, -1) : NULL;
    if (!c || !EVP_DigestInit_ex(c, EVP_sha256(), NULL) || !EVP_DigestUpdate(c, m, strlen(m)) ||
        !EVP_DigestUpdate(c, uri ? uri : "", uri ? strlen(uri) : 0) || !EVP_DigestUpdate(c, "\n", 1) ||
        (n && !EVP_DigestUpdate(c, body, n)) || !EVP_DigestFinal_ex(c, md, &mdlen))
        memset(md, 0, sizeof md);
    EVP_MD_CTX_free(c);
    tg_hex_encode(md, 32, out);
}

static const char AUTH_SQL[] = "SELECT name, role FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL";

static void gen_cb(struct evhttp_request *req, void *arg) {
    bill_admin_t *a = arg;
    if (tg_httpguard_answer(a->guard, req)) return; /* refused before it was read whole */
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (path && !strcmp(path, "/health")) {
        enum evhttp_cmd_type m = evhttp_request_get_command(req);
        if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) { /* it answered 200 to any method */
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
            send_error(req, 405, "method_not_allowed", "use GET or HEAD");
            return;
        }
        int up = bill_pg_up(a->pg);
        send_raw(req, up ? 200 : 503, NULL, up ? "{\"status\":\"ok\"}" : "{\"status\":\"database unavailable\"}");
        return;
    }
    struct evkeyvalq *hdr = evhttp_request_get_input_headers(req);
    const char *h = evhttp_find_header(hdr, "Authorization");
    if (h && strncasecmp(h, "Bearer ", 7) == 0) {
        h += 7;
        while (*h == ' ') h++;
    } else {
        h = NULL;
    }
    size_t n = h ? strlen(h) : 0, m = strlen(a->token);
    int root = h && n == m && CRYPTO_memcmp(h, a->token, n) == 0;
    if (!root && (!h || strncmp(h, "tga_", 4) != 0 || n != 52)) {
        send_error(req, 401, "invalid_admin_token",
                   "missing or wrong admin token (Authorization: Bearer <token from var/admin.token or "
                   "tollgatectl token create>)");
        return;
    }
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > MAX_BODY) {
        send_error(req, 413, "request_too_large", "request body too large (at most 65536 bytes)");
        return;
    }
    const char *idem = evhttp_find_header(hdr, "Idempotency-Key");
    if (idem && (!*idem || strlen(idem) > IDEM_MAX)) {
        send_error(req, 400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters");
        return;
    }
    adm_priv_t *p = calloc(1, sizeof *p);
    if (!p) {
        send_error(req, 500, NULL, "out of memory");
        return;
    }
    TAILQ_INSERT_TAIL(&a->pending, p, link);
    adm_req_t *r = &p->pub;
    r->a = a;
    r->req = req;
    r->method = (int)evhttp_request_get_command(req);
    r->secret = a->secret;
    r->settler = a->settler;
    r->priv = (struct adm_priv *)p;
    if (idem && r->method != EVHTTP_REQ_GET) snprintf(p->idem, sizeof p->idem, "%s", idem);
    request_hash(req, p->hash);
    if (root) {
        snprintf(r->actor, sizeof r->actor, "root");
        dispatch(r);
        return;
    }
    char th[65];
    bill_key_hash(a->secret, h, th);
    const char *params[] = {th};
    p->stage = ST_AUTH;
    submit(r, AUTH_SQL, 1, params);
}

/* ---- pages of the embedding program (bill_admin_page) -------------------- */

typedef struct adm_page {
    struct adm_page *next;
    bill_page_fn fn;
    void *arg;
    char *path;
} adm_page_t;

/* One GET of a page, between fn and bill_page_reply.  A client that goes
 * away meanwhile only marks it gone (the connection's close callback). */
struct bill_page {
    struct evhttp_request *req;
    struct evhttp_connection *conn;
    int gone;
};

static void page_conn_closed(struct evhttp_connection *conn, void *arg) {
    bill_page_t *pg = arg;
    pg->gone = 1;
}

static bill_page_t *page_new(struct evhttp_request *req) {
    bill_page_t *pg = calloc(1, sizeof *pg);
    if (!pg) return NULL;
    pg->req = req;
    pg->conn = evhttp_request_get_connection(req);
    if (pg->conn) evhttp_connection_set_closecb(pg->conn, page_conn_closed, pg);
    return pg;
}

static void page_cb(struct evhttp_request *req, void *arg) {
    adm_page_t *p = arg;
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) { /* HEAD: GET's head (bill_page_reply) */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        send_error(req, 405, "method_not_allowed", "use GET or HEAD");
        return;
    }
    bill_page_t *pg = page_new(req);
    if (!pg) {
        send_error(req, 500, NULL, "out of memory");
        return;
    }
    p->fn(pg, p->arg);
}

/* On a listener that is not loopback a page is not evhttp's callback: its
 * requests come through gen_cb, the token is checked, and dispatch hands them
 * here.  Returns 1 when path is a page (r is answered or handed on), else 0. */
static int page_route(adm_req_t *r, const char *path) {
    adm_page_t *p = r->a->pages;
    while (p && strcmp(p->path, path)) p = p->next;
    if (!p) return 0;
    if (r->method != EVHTTP_REQ_GET && r->method != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", "GET, HEAD");
        adm_error(r, 405, "method_not_allowed", "use GET or HEAD");
        return 1;
    }
    bill_page_t *pg = page_new(r->req);
    if (!pg) {
        adm_error(r, 500, NULL, "out of memory");
        return 1;
    }
    finish(r);
    p->fn(pg, p->arg);
    return 1;
}

void bill_admin_set_settlement(bill_admin_t *a, bill_page_fn fn, void *arg) {
    a->settle_fn = fn;
    a->settle_arg = arg;
}

void bill_page_reply(bill_page_t *pg, int status, const char *content_type, const char *body, size_t len) {
    if (!pg->gone) {
        if (pg->conn) evhttp_connection_set_closecb(pg->conn, NULL, NULL);
        int head = evhttp_request_get_command(pg->req) == EVHTTP_REQ_HEAD;
        struct evbuffer *out = evbuffer_new();
        if (out && !head) evbuffer_add(out, body, len);
        struct evkeyvalq *oh = evhttp_request_get_output_headers(pg->req);
        evhttp_add_header(oh, "Content-Type", content_type);
        if (head) { /* the head GET would get, no body (libevent would send one, and no Content-Length) */
            char cl[24];
            snprintf(cl, sizeof cl, "%zu", len);
            evhttp_add_header(oh, "Content-Length", cl);
        }
        evhttp_send_reply(pg->req, status, reason(status), out);
        if (out) evbuffer_free(out);
    }
    free(pg);
}

int bill_admin_add_page(bill_admin_t *a, const char *path, bill_page_fn fn, void *arg) {
    adm_page_t *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->fn = fn;
    p->arg = arg;
    if (!(p->path = strdup(path)) || (a->loopback && evhttp_set_cb(a->http, path, page_cb, p) != 0)) {
        free(p->path);
        free(p);
        return -1;
    }
    p->next = a->pages;
    a->pages = p;
    return 0;
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
    a->loopback = !strncmp(host, "127.", 4) || !strcmp(host, "localhost") || !strcmp(host, "[::1]") ||
                  !strcmp(host, "::1");
    if (!a->loopback)
        fprintf(stderr,
                "bill: the admin API listens on %s, which is not a loopback address: /metrics there needs the "
                "admin token too (Authorization: Bearer; a readonly token will do)\n",
                listen);
    if (host[0] == '[' && host[strlen(host) - 1] == ']') { /* [::1]:8444 */
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
    }
    a->token = strdup(token);
    a->secret = strdup(key_secret);
    a->http = evhttp_new(base);
    if (!a->token || !a->secret || !a->http) goto oom;
    tg_httpguard_opts_t go = {.max_conns = MAX_CONNS, .max_head = MAX_HEAD, .max_body = MAX_BODY,
                              .max_buffered = MAX_BUFFERED, .request_timeout_s = REQUEST_TIMEOUT_S,
                              .idle_timeout_s = IDLE_TIMEOUT_S};
    if (!(a->guard = tg_httpguard_new(base, a->http, &go))) goto oom;
    evhttp_set_max_body_size(a->http, MAX_BODY_READ);
    evhttp_set_max_headers_size(a->http, 2 * MAX_HEAD);
    evhttp_set_timeout(a->http, 30);
    /* every method reaches gen_cb, so an unknown one is the API's 405 with Allow, not evhttp's 501 page */
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_PATCH | EVHTTP_REQ_HEAD | EVHTTP_REQ_OPTIONS |
                                            EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
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
    adm_priv_t *p;
    while ((p = TAILQ_FIRST(&a->pending))) {
        TAILQ_REMOVE(&a->pending, p, link);
        bill_pg_cancel(p->job);
        priv_free(p);
    }
    if (a->http) evhttp_free(a->http);
    tg_httpguard_free(a->guard); /* after the evhttp: it lets go of the connections evhttp freed */
    while (a->pages) {
        struct adm_page *n = a->pages->next;
        free(a->pages->path);
        free(a->pages);
        a->pages = n;
    }
    if (a->token) OPENSSL_cleanse(a->token, strlen(a->token));
    free(a->token);
    free(a->secret);
    free(a);
}
