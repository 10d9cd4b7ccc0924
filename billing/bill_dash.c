/* bill_dash.c — the dashboard API's plumbing: one call per request the
 * gateway hands over (bill_dash), sessions, logins and their throttle, CSRF,
 * replies.  The views' SQL lives in bill_dash_views.c.
 *
 * Sessions: POST login with {"api_key"} or {"login","password"} makes a row
 * in dash_sessions (migration 0012) keyed by HMAC-SHA256(key secret, token);
 * the token goes to the browser only as the cookie
 * `tg_session=<64 hex>; Path=/dashboard/; HttpOnly; Secure; SameSite=Strict`.
 * Every other call first reads the session (one statement): unknown, expired,
 * its login revoked, or the API key it signed in with revoked or expired ->
 * 401.  Invariants:
 *   - a customer's views are bound to the session's customer id, never to an
 *     id from the request (bill_dash_views.c takes it from c->who only);
 *   - a session signed in with a restricted API key (any limit, model list,
 *     spending limit or expiry) makes no key and revokes none but its own: a
 *     key never makes a key wider than itself (bill_dash_views.c);
 *   - every write (any method but GET) carries X-CSRF-Token equal to the
 *     session's csrf token (constant-time compare), and an Origin header, when
 *     the browser sends one, must be https://<Host>;
 *   - login failures count per client address and per login name in
 *     dash_login_throttle, in the same statement as the check, so every
 *     gateway shares the count: 5 failures of one login or 50 from one address
 *     within 15 minutes lock that subject for 15 minutes (429 + Retry-After),
 *     even for the right password. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/crypto.h>

#include "bill_dash-int.h"

#define SESSION_TTL_S 43200 /* 12 h */
#define COOKIE "tg_session"

enum { ST_NONE, ST_SESSION, ST_LOGIN, ST_READ };

/* ---- the call's life ------------------------------------------------------ */

static void call_free(dash_call_t *c) {
    if (!c) return;
    bill_pg_cancel(c->job);
    if (c->kick) event_free(c->kick);
    free(c->path);
    free(c->query);
    free(c->cookie);
    free(c->csrf);
    free(c->origin);
    free(c->host);
    free(c->peer);
    if (c->body) OPENSSL_cleanse(c->body, c->body_len);
    free(c->body);
    evhttp_clear_headers(&c->q);
    for (int i = 0; i < c->nseg; i++) free(c->seg[i]);
    free(c->headers);
    free(c->out);
    if (c->splice) OPENSSL_cleanse(c->splice, strlen(c->splice));
    free(c->splice);
    OPENSSL_cleanse(c->token, sizeof c->token);
    free(c);
}

/* The answer is ready: call back from the loop. */
static void deliver(evutil_socket_t fd, short what, void *arg) {
    dash_call_t *c = arg;
    (void)fd;
    (void)what;
    TAILQ_REMOVE(&c->b->dash_calls, c, link);
    bill_dash_resp_t r = {
        .status = c->status,
        .content_type = c->ctype ? c->ctype : "application/json",
        .headers = c->headers ? c->headers : "",
        .body = c->out ? c->out : "",
        .body_len = c->out ? c->out_len : 0,
    };
    c->cb(&r, c->arg);
    call_free(c);
}

void dash_header(dash_call_t *c, const char *name, const char *value) {
    size_t old = c->headers ? strlen(c->headers) : 0, n = old + strlen(name) + strlen(value) + 5;
    char *h = realloc(c->headers, n);
    if (!h) return; /* the header is lost, not the answer */
    snprintf(h + old, n - old, "%s: %s\r\n", name, value);
    c->headers = h;
}

void dash_reply(dash_call_t *c, int status, const char *ctype, const char *body, size_t len) {
    c->status = status;
    c->ctype = ctype;
    free(c->out);
    c->out = malloc(len + 1);
    if (!c->out) {
        c->status = 500;
        c->out_len = 0;
    } else {
        memcpy(c->out, body, len);
        c->out[len] = 0;
        c->out_len = len;
    }
    dash_header(c, "Cache-Control", "no-store");
    event_active(c->kick, EV_TIMEOUT, 1);
}

static void dash_error_v(dash_call_t *c, int status, const char *code, const char *param, const char *fmt,
                         va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    char *body = bill_error_json(status, code, param, msg);
    if (body) dash_reply(c, status, NULL, body, strlen(body));
    else dash_reply(c, 500, NULL, "", 0);
    free(body);
}

void dash_error(dash_call_t *c, int status, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    dash_error_v(c, status, code, NULL, fmt, ap);
    va_end(ap);
}

void dash_field_error(dash_call_t *c, const char *code, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    dash_error_v(c, 400, code, param, fmt, ap);
    va_end(ap);
}

tg_json_t *dash_body(dash_call_t *c) {
    bill_body_err_t e;
    tg_json_t *j = bill_body_parse(c->body ? c->body : "", c->body ? c->body_len : 0, &e);
    if (!j && !e.code) dash_error(c, 500, NULL, "out of memory");
    else if (!j) dash_field_error(c, e.code, e.param[0] ? e.param : NULL, "%s", e.msg);
    return j;
}

void dash_bad_method(dash_call_t *c, const char *allow) {
    dash_header(c, "Allow", allow);
    dash_error(c, 405, "method_not_allowed", "use %s", allow);
}

const char *dash_param(dash_call_t *c, const char *name) { return evhttp_find_header(&c->q, name); }

/* ---- statements ------------------------------------------------------------ */

static void on_result(PGresult *res, const char *err, void *arg);

static void submit(dash_call_t *c, int stage, const char *sql, int n, const char *const *params) {
    c->stage = stage;
    c->job = bill_pg_query(c->b->pg, sql, n, params, on_result, c);
    if (!c->job) dash_error(c, 500, NULL, "out of memory");
    else if (c->is_get) bill_pg_job_retry_ok(c->job);
}

void dash_read(dash_call_t *c, const char *sql, int n, const char *const *params, const char *notfound) {
    c->notfound = notfound;
    submit(c, ST_READ, sql, n, params);
}

/* ---- sessions ------------------------------------------------------------- */

/* Whether API key k has any restriction: a session signed in with it makes
 * no key and revokes none but its own (bill_dash_views.c). */
#define KEY_RESTRICTED                                                                                 \
    "(k.rpm <> 0 OR k.tpm <> 0 OR k.concurrency <> 0 OR k.models IS NOT NULL OR k.expires_at IS NOT NULL" \
    " OR k.daily_limit_pico IS NOT NULL OR k.monthly_limit_pico IS NOT NULL)"

/* $1 token hash */
static const char SESSION_SQL[] =
    "SELECT s.role, coalesce(s.customer_id::text, ''), coalesce(c.name, ''), coalesce(s.key_id::text, ''),"
    " coalesce(u.login, k.prefix, ''), s.csrf,"
    " coalesce(" KEY_RESTRICTED ", false)"
    " FROM dash_sessions s LEFT JOIN customers c ON c.id = s.customer_id"
    " LEFT JOIN dash_users u ON u.id = s.user_id LEFT JOIN api_keys k ON k.id = s.key_id"
    " WHERE s.token_hash = $1 AND s.expires_at > now()"
    " AND (s.user_id IS NULL OR u.revoked_at IS NULL) AND c.closed_at IS NULL"
    " AND (s.key_id IS NULL OR (k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())))";

/* $1 kind 'key'|'user', $2 credential hash, $3 login (NULL for a key), $4
 * client address, $5 new session's token hash, $6 its csrf token, $7 ttl
 * seconds.  One statement: the throttle, the credential, the session, the
 * failure count (or the login's count cleared), and a few expired sessions
 * swept.  Row: 'ok'|'bad'|'throttled', seconds locked, the session JSON. */
static const char LOGIN_SQL[] =
    "WITH subj AS (SELECT unnest(ARRAY['ip:' || $4::text] ||"
    "   CASE WHEN $3::text IS NULL THEN '{}'::text[] ELSE ARRAY['login:' || $3::text] END) AS subject),"
    " th AS (SELECT max(t.locked_until) AS until FROM dash_login_throttle t JOIN subj USING (subject)"
    "   WHERE t.locked_until > now()),"
    " who AS (SELECT NULL::bigint AS user_id, k.id AS key_id, k.customer_id, 'customer'::text AS role,"
    "     k.prefix AS login, " KEY_RESTRICTED " AS restricted FROM api_keys k"
    "     WHERE $1 = 'key' AND k.key_hash = $2 AND k.revoked_at IS NULL"
    "     AND (k.expires_at IS NULL OR k.expires_at > now())"
    "   UNION ALL SELECT u.id, NULL, u.customer_id, u.role, u.login, false FROM dash_users u"
    "     WHERE $1 = 'user' AND u.login = $3 AND u.password_hash = $2 AND u.revoked_at IS NULL),"
    " ok AS (SELECT * FROM who WHERE (SELECT until FROM th) IS NULL"
    "   AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = who.customer_id AND c.closed_at IS NOT NULL) LIMIT 1),"
    " s AS (INSERT INTO dash_sessions (token_hash, user_id, key_id, customer_id, role, csrf, expires_at)"
    "   SELECT $5, user_id, key_id, customer_id, role, $6, now() + $7::int * interval '1 second' FROM ok"
    "   RETURNING *),"
    " fail AS (INSERT INTO dash_login_throttle AS t (subject, failures, window_start)"
    "   SELECT subject, 1, now() FROM subj WHERE NOT EXISTS (SELECT 1 FROM ok) AND (SELECT until FROM th) IS NULL"
    "   ON CONFLICT (subject) DO UPDATE SET"
    "   failures = CASE WHEN t.window_start < now() - interval '15 minutes' THEN 1 ELSE t.failures + 1 END,"
    "   window_start = CASE WHEN t.window_start < now() - interval '15 minutes' THEN now() ELSE t.window_start END,"
    "   locked_until = CASE WHEN t.window_start >= now() - interval '15 minutes' AND t.failures + 1 >="
    "     CASE WHEN t.subject LIKE 'ip:%' THEN 50 ELSE 5 END THEN now() + interval '15 minutes' END"
    "   RETURNING 1),"
    " clr AS (DELETE FROM dash_login_throttle WHERE subject = 'login:' || $3::text AND EXISTS (SELECT 1 FROM s)"
    "   RETURNING 1),"
    " gc AS (DELETE FROM dash_sessions WHERE token_hash IN"
    "   (SELECT token_hash FROM dash_sessions WHERE expires_at < now() LIMIT 100) RETURNING 1)"
    " SELECT CASE WHEN (SELECT until FROM th) IS NOT NULL THEN 'throttled' WHEN EXISTS (SELECT 1 FROM s)"
    "   THEN 'ok' ELSE 'bad' END,"
    " coalesce(ceil(extract(epoch FROM (SELECT until FROM th) - now()))::bigint, 0)::text,"
    " (SELECT json_build_object('role', s.role, 'customer', c.name, 'customer_id', s.customer_id,"
    "   'login', (SELECT login FROM ok), 'signed_in_with', CASE WHEN s.key_id IS NULL THEN 'login' ELSE 'api_key' END,"
    "   'key_restricted', (SELECT restricted FROM ok), 'csrf', s.csrf, 'expires_at', s.expires_at)::text"
    "   FROM s LEFT JOIN customers c ON c.id = s.customer_id),"
    " (SELECT count(*) FROM fail) + (SELECT count(*) FROM clr) + (SELECT count(*) FROM gc)";

/* $1 token hash */
static const char LOGOUT_SQL[] =
    "WITH d AS (DELETE FROM dash_sessions WHERE token_hash = $1 RETURNING 1)"
    " SELECT json_build_object('signed_out', (SELECT count(*) FROM d) > 0)::text";

/* The session token from a Cookie header into out (64 hex), or "". */
static void cookie_token(const char *cookie, char out[72]) {
    out[0] = 0;
    for (const char *p = cookie; p && *p;) {
        while (*p == ' ' || *p == ';') p++;
        size_t n = strcspn(p, ";");
        if (n > sizeof COOKIE && !strncmp(p, COOKIE "=", sizeof COOKIE)) {
            const char *v = p + sizeof COOKIE;
            size_t vn = n - sizeof COOKIE;
            if (vn == 64 && strspn(v, "0123456789abcdef") >= 64) {
                memcpy(out, v, 64);
                out[64] = 0;
                return;
            }
        }
        p += n;
    }
}

static void set_cookie(dash_call_t *c, const char *token, int max_age) {
    char v[256];
    snprintf(v, sizeof v, COOKIE "=%s; Path=/dashboard/; Max-Age=%d; HttpOnly; Secure; SameSite=Strict", token,
             max_age);
    dash_header(c, "Set-Cookie", v);
}

/* 1 when a and b are equal, in time independent of where they differ. */
static int same_secret(const char *a, const char *b) {
    size_t n = strlen(a);
    return n > 0 && n == strlen(b) && CRYPTO_memcmp(a, b, n) == 0;
}

static void login(dash_call_t *c) {
    tg_json_t *j = dash_body(c);
    if (!j) return;
    tg_json_t *fk = tg_json_get(j, "api_key"), *fl = tg_json_get(j, "login"), *fp = tg_json_get(j, "password");
    const char *kind, *cred, *name = NULL;
    if (tg_json_str(fk, NULL) && !fl && !fp) {
        kind = "key";
        cred = tg_json_str(fk, NULL);
    } else if (tg_json_str(fl, NULL) && tg_json_str(fp, NULL) && !fk) {
        kind = "user";
        cred = tg_json_str(fp, NULL);
        name = tg_json_str(fl, NULL);
        if (!*name || strlen(name) > 64) {
            dash_field_error(c, "invalid_value", "login", "login must be 1 to 64 characters");
            goto done;
        }
    } else {
        dash_error(c, 400, "invalid_value", "give either api_key, or login and password");
        goto done;
    }
    if (!name && bill_key_shape(cred) == BILL_KEY_BAD) {
        /* not a key this service issued (shape or checksum): refused without a statement, as the
         * gateway's /v1 refuses it; it cannot be a guess at a real key, so nothing to count */
        dash_error(c, 401, "invalid_credentials", "wrong API key, or wrong login or password");
        goto done;
    }
    if (strlen(cred) > 256) cred = ""; /* never matches; still counted as a failure */
    char hash[65], tok_hash[65], csrf[65];
    bill_key_hash(c->b->key_secret, cred, hash);
    if (bill_random_hex(c->token, 32) != 0 || bill_random_hex(csrf, 32) != 0) {
        dash_error(c, 500, NULL, "no random bytes");
        goto done;
    }
    bill_key_hash(c->b->key_secret, c->token, tok_hash);
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", SESSION_TTL_S);
    const char *p[] = {kind, hash, name, c->peer ? c->peer : "unknown", tok_hash, csrf, ttl};
    submit(c, ST_LOGIN, LOGIN_SQL, 7, p);
    OPENSSL_cleanse(csrf, sizeof csrf);
done:
    tg_json_free(j);
}

static void login_done(dash_call_t *c, PGresult *res) {
    const char *verdict = PQgetvalue(res, 0, 0);
    if (!strcmp(verdict, "ok")) {
        set_cookie(c, c->token, SESSION_TTL_S);
        const char *body = PQgetvalue(res, 0, 2);
        dash_reply(c, 200, NULL, body, strlen(body));
    } else if (!strcmp(verdict, "throttled")) {
        dash_header(c, "Retry-After", PQgetvalue(res, 0, 1));
        dash_error(c, 429, "login_throttled",
                   "too many failed sign-ins from this address or for this login; try again in %s s",
                   PQgetvalue(res, 0, 1));
    } else {
        dash_error(c, 401, "invalid_credentials", "wrong API key, or wrong login or password");
    }
}

static void route(dash_call_t *c);

/* GET session without a session: not an error, the page's first question. */
static int is_session_probe(const dash_call_t *c) { return c->is_get && c->nseg == 1 && !strcmp(c->seg[0], "session"); }

static void not_signed_in(dash_call_t *c) {
    static const char no[] = "{\"signed_in\":false}";
    dash_reply(c, 200, NULL, no, sizeof no - 1);
}

static void session_done(dash_call_t *c, PGresult *res) {
    if (PQntuples(res) == 0) {
        set_cookie(c, "", 0);
        if (is_session_probe(c)) return not_signed_in(c);
        dash_error(c, 401, "not_signed_in", "not signed in, or the session ended");
        return;
    }
    dash_who_t *w = &c->who;
    snprintf(w->role, sizeof w->role, "%s", PQgetvalue(res, 0, 0));
    snprintf(w->customer_id, sizeof w->customer_id, "%s", PQgetvalue(res, 0, 1));
    snprintf(w->customer, sizeof w->customer, "%s", PQgetvalue(res, 0, 2));
    snprintf(w->key_id, sizeof w->key_id, "%s", PQgetvalue(res, 0, 3));
    snprintf(w->login, sizeof w->login, "%s", PQgetvalue(res, 0, 4));
    snprintf(w->csrf, sizeof w->csrf, "%s", PQgetvalue(res, 0, 5));
    w->key_restricted = !strcmp(PQgetvalue(res, 0, 6), "t");
    if (!c->is_get && !(c->csrf && same_secret(w->csrf, c->csrf))) {
        dash_error(c, 403, "csrf_failed", "this write needs the session's X-CSRF-Token header");
        return;
    }
    route(c);
}

/* ---- results ------------------------------------------------------------- */

static void read_done(dash_call_t *c, PGresult *res) {
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
        dash_error(c, 404, "not_found", "%s", c->notfound ? c->notfound : "not found");
        return;
    }
    const char *v = PQgetvalue(res, 0, 0);
    size_t n = (size_t)PQgetlength(res, 0, 0);
    if (c->attachment) {
        char h[160];
        snprintf(h, sizeof h, "attachment; filename=\"%s\"", c->attachment);
        dash_header(c, "Content-Disposition", h);
    }
    if (c->splice && v[0] == '{') { /* a secret shown once, in front of the row's JSON */
        size_t m = n + strlen(c->splice) + strlen(c->splice_field) + 8;
        char *body = malloc(m);
        if (!body) {
            dash_error(c, 500, NULL, "out of memory");
            return;
        }
        int len = snprintf(body, m, "{\"%s\":\"%s\",%s", c->splice_field, c->splice, v + 1);
        dash_reply(c, 200, c->ctype, body, (size_t)len);
        OPENSSL_cleanse(body, m);
        free(body);
        return;
    }
    dash_reply(c, 200, c->ctype, v, n);
}

static void on_result(PGresult *res, const char *err, void *arg) {
    dash_call_t *c = arg;
    c->job = NULL;
    if (!res) {
        dash_error(c, 503, "database_unavailable", "%s", err ? err : "database unavailable");
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && !strcmp(state, "55000")) { /* e.g. a key for a customer closed meanwhile */
            const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            dash_error(c, 409, "conflict", "%s", msg ? msg : "conflict");
        } else if (state && (!strncmp(state, "22", 2) || !strncmp(state, "23", 2))) {
            const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            dash_error(c, 400, "invalid_value", "%s", msg ? msg : "invalid value");
        } else if (state && (!strcmp(state, "55P03") || !strcmp(state, "57014"))) { /* lock_timeout: bill_pg.c */
            dash_error(c, 503, "database_busy", "database busy: nothing was written, try again");
        } else {
            fprintf(stderr, "bill: dashboard statement failed: %s", PQresultErrorMessage(res));
            dash_error(c, 500, "database_error", "database error (%s)", state ? state : "?");
        }
        return;
    }
    switch (c->stage) {
    case ST_SESSION: session_done(c, res); return;
    case ST_LOGIN: login_done(c, res); return;
    default: read_done(c, res); return;
    }
}

/* ---- routing --------------------------------------------------------------- */

static void route(dash_call_t *c) {
    if (c->nseg == 1 && !strcmp(c->seg[0], "session")) {
        cJSON *o = cJSON_CreateObject();
        dash_who_t *w = &c->who;
        cJSON_AddBoolToObject(o, "signed_in", 1);
        cJSON_AddStringToObject(o, "role", w->role);
        if (w->customer[0]) {
            cJSON_AddStringToObject(o, "customer", w->customer);
            cJSON_AddRawToObject(o, "customer_id", w->customer_id);
        }
        cJSON_AddStringToObject(o, "login", w->login);
        cJSON_AddStringToObject(o, "signed_in_with", w->key_id[0] ? "api_key" : "login");
        cJSON_AddBoolToObject(o, "key_restricted", w->key_id[0] && w->key_restricted);
        cJSON_AddStringToObject(o, "csrf", w->csrf);
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (s) dash_reply(c, 200, NULL, s, strlen(s));
        else dash_error(c, 500, NULL, "out of memory");
        free(s);
        return;
    }
    if (c->nseg == 1 && !strcmp(c->seg[0], "logout")) {
        char th[65];
        bill_key_hash(c->b->key_secret, c->token, th);
        set_cookie(c, "", 0);
        const char *p[] = {th};
        dash_read(c, LOGOUT_SQL, 1, p, NULL);
        return;
    }
    if (!bill_dash_views_route(c)) dash_error(c, 404, "not_found", "no such dashboard endpoint");
}

/* "https://<host>" for the Origin check. */
static int origin_ok(const dash_call_t *c) {
    if (!c->origin) return 1; /* not a browser's cross-origin request; CSRF still applies */
    if (!c->host) return 0;
    return !strncmp(c->origin, "https://", 8) && !strcmp(c->origin + 8, c->host);
}

static char *dupn(const char *s) { return s ? strdup(s) : NULL; }

/* The methods of c's path ("GET", "POST", "GET, POST"), NULL when there is
 * no such endpoint: checked before the session, so every 405 carries Allow
 * and a method no endpoint has never reaches a handler. */
static const char *dash_allowed(const dash_call_t *c) {
    if (c->nseg == 1 && (!strcmp(c->seg[0], "login") || !strcmp(c->seg[0], "logout"))) return "POST";
    if (c->nseg == 1 && !strcmp(c->seg[0], "session")) return "GET, HEAD";
    return bill_dash_views_allowed(c);
}

/* 1 when method is one of allow's (a ", "-separated list). */
static int method_in(const char *method, const char *allow) {
    size_t n = strlen(method);
    for (const char *p = allow; *p; p += strspn(p, ", ")) {
        size_t m = strcspn(p, ", ");
        if (m == n && !strncmp(p, method, n)) return 1;
        p += m;
    }
    return 0;
}

bill_dash_call_t *bill_dash(bill_t *b, const bill_dash_req_t *q, bill_dash_cb cb, void *arg) {
    dash_call_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->b = b;
    c->cb = cb;
    c->arg = arg;
    TAILQ_INIT(&c->q);
    snprintf(c->method, sizeof c->method, "%s", q->method ? q->method : "");
    /* HEAD is GET without the body (the gateway leaves it out): a safe method, no CSRF token */
    c->is_get = !strcmp(c->method, "GET") || !strcmp(c->method, "HEAD");
    c->path = dupn(q->path ? q->path : "");
    c->query = dupn(q->query);
    c->cookie = dupn(q->cookie);
    c->csrf = dupn(q->csrf);
    c->origin = dupn(q->origin);
    c->host = dupn(q->host);
    c->peer = dupn(q->peer);
    c->workers = q->workers;
    c->workers_arg = q->workers_arg;
    if (q->body && q->body_len) {
        if ((c->body = malloc(q->body_len + 1))) {
            memcpy(c->body, q->body, q->body_len);
            c->body[q->body_len] = 0;
            c->body_len = q->body_len;
        }
    }
    c->kick = event_new(b->base, -1, 0, deliver, c);
    if (!c->kick || !c->path || (q->query && !c->query) || (q->cookie && !c->cookie) || (q->csrf && !c->csrf) ||
        (q->origin && !c->origin) || (q->host && !c->host) || (q->peer && !c->peer) ||
        (q->body_len && !c->body)) {
        call_free(c);
        return NULL;
    }
    TAILQ_INSERT_TAIL(&b->dash_calls, c, link);

    if (c->query && evhttp_parse_query_str(c->query, &c->q) != 0) {
        dash_error(c, 400, "invalid_query", "malformed query string");
        return c;
    }
    char *copy = strdup(c->path);
    if (!copy) {
        dash_error(c, 500, NULL, "out of memory");
        return c;
    }
    int bad = 0;
    for (char *save = NULL, *t = strtok_r(copy, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        size_t len = 0;
        if (c->nseg == DASH_MAX_SEG || !(c->seg[c->nseg] = evhttp_uridecode(t, 0, &len))) {
            bad = 1;
            break;
        }
        if (strlen(c->seg[c->nseg++]) != len) { /* an encoded NUL */
            bad = 1;
            break;
        }
    }
    free(copy);
    const char *allow = bad || c->nseg == 0 ? NULL : dash_allowed(c);
    if (!allow) {
        dash_error(c, 404, "not_found", "no such dashboard endpoint");
        return c;
    }
    if (!method_in(c->method, allow)) { /* before the session: a wrong method costs no statement */
        dash_bad_method(c, allow);
        return c;
    }
    if (!origin_ok(c)) {
        dash_error(c, 403, "bad_origin", "cross-origin request refused");
        return c;
    }
    if (c->nseg == 1 && !strcmp(c->seg[0], "login")) {
        login(c);
        return c;
    }
    cookie_token(c->cookie, c->token);
    if (!c->token[0]) {
        if (is_session_probe(c)) {
            not_signed_in(c);
            return c;
        }
        dash_error(c, 401, "not_signed_in", "not signed in");
        return c;
    }
    char th[65];
    bill_key_hash(b->key_secret, c->token, th);
    const char *p[] = {th};
    submit(c, ST_SESSION, SESSION_SQL, 1, p);
    return c;
}

void bill_dash_cancel(bill_dash_call_t *c) {
    if (!c) return;
    TAILQ_REMOVE(&c->b->dash_calls, c, link);
    call_free(c);
}

void bill_dash_free_all(bill_t *b) {
    dash_call_t *c;
    while ((c = TAILQ_FIRST(&b->dash_calls))) {
        TAILQ_REMOVE(&b->dash_calls, c, link);
        call_free(c);
    }
}
