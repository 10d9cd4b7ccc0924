/* bill_admin-int.h — private to the admin API (billing/bill_admin*.c): one
 * admin request in progress, the statement runners, input helpers and the
 * resource routers.
 *
 * bill_admin.c owns the HTTP plumbing: authentication (the bootstrap root
 * token, or a named token looked up in admin_tokens), the readonly role (GET
 * only), Idempotency-Key handling and replies.  Each bill_admin_<resource>.c
 * holds the SQL and handlers of one resource and exposes one router.
 *
 * A handler answers through exactly one of: adm_read (a statement that
 * reads), adm_write (a statement that writes: audited, idempotent), or
 * adm_error / adm_reply.  Any of them ends the request: r is freed. */
#ifndef BILL_ADMIN_INT_H
#define BILL_ADMIN_INT_H

#include "bill-int.h"
#include "tg_json.h"

struct evhttp_request;
struct evkeyvalq;

#define ADM_GET 1   /* EVHTTP_REQ_GET */
#define ADM_POST 2  /* EVHTTP_REQ_POST */

typedef struct adm_req adm_req_t;

/* What a handler may read of its request. */
struct adm_req {
    bill_admin_t *a;
    struct evhttp_request *req;
    int method;             /* EVHTTP_REQ_* */
    char actor[72];         /* the token's name: "root" for the bootstrap token */
    const char *secret;     /* the server's key secret (hex), for keyed hashes */
    const bill_settler_t *settler;
    struct adm_priv *priv;  /* bill_admin.c's own state */
};

/* Write statements: a SQL text of the form
 *     WITH ... , resp AS (SELECT <json text> AS body FROM ...) [, ...]
 * (only CTEs, one of them named resp with one row, or none).  adm_write appends the idempotency record
 * and the final SELECT.  `$actor` in the text stands for the acting token's
 * name (for admin_audit rows); $1..$n are the statement's own parameters.
 * ADM_AUDIT(...) is the usual audit CTE. */
#define ADM_AUDIT(name, action, target, before, after, from)                                   \
    " " name " AS (INSERT INTO admin_audit (actor, action, target, before, after)"             \
    "   SELECT $actor, " action ", " target ", " before ", " after " FROM " from " RETURNING 1)"

/* SQL: the start f of a period [f, t) (timestamptz expressions), or an
 * error (SQLSTATE 22023, a 400) when f is after t: a reversed period is a
 * mistake, not a question with an empty answer (a reconcile over it "agreed"
 * having checked nothing).  Used where the answer shows `from`. */
#define ADM_PERIOD_FROM(f, t)                                                                           \
    "CASE WHEN " f " <= " t " THEN " f " ELSE tg_raise('from (' || " f " || ') is after to (' || " t        \
    " || '): give from before to')::timestamptz END"

/* Run a reading statement (one row, one JSON text column; no row -> 404
 * `notfound`) and answer 200 with its text. */
void adm_read(adm_req_t *r, const char *sql, int n, const char *const *params, const char *notfound);

/* The next adm_read answers with this content type (a static string)
 * instead of application/json. */
void adm_read_as(adm_req_t *r, const char *content_type);

/* Run a writing statement (see above) and answer `status` (200 or 201) with
 * the resp body, or 404 `notfound` when resp has no row.  secret_field and
 * secret (may be NULL): a value shown once — spliced in front of the body as
 * "secret_field":"secret", never stored (an idempotent replay answers the
 * body without it).  Only admin tokens get here (readonly ones are refused
 * before routing). */
void adm_write(adm_req_t *r, const char *sql, int n, const char *const *params, const char *notfound,
               int status, const char *secret_field, const char *secret);

/* Answer a body as is (a final newline is added), with a content type
 * (NULL: application/json). */
void adm_reply(adm_req_t *r, int status, const char *content_type, const char *body);
void adm_error(adm_req_t *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A 400 about one input (a body member or a query parameter): "param" of the
 * error body names it. */
void adm_field_error(adm_req_t *r, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- input helpers (each returns 0, or -1 after answering 400) ----------- */

int adm_name_ok(const char *s);  /* a customer / token name: 1-64 of [A-Za-z0-9._@+-] */
/* 1 when s (valid UTF-8) holds no control character (C0, DEL, C1): a string a
 * customer writes (a key's name) that the operator's terminal shows
 * (tollgatectl's tables) must not move its cursor, retitle it or end a line. */
int adm_text_plain(const char *s);
int adm_month_ok(const char *m); /* "YYYY-MM" */
/* The request body as a JSON object (caller frees with tg_json_free), or NULL
 * after answering.  Read by common/tg_json (strict RFC 8259: numbers keep
 * their text, strings must be valid UTF-8); a member named twice, or a string
 * holding U+0000 (PostgreSQL text cannot, and a C string would silently end
 * there), is refused with a 400 naming it. */
tg_json_t *adm_body(adm_req_t *r);
/* The text of a string value, NULL when v is absent or not a string. */
static inline const char *adm_jstr(const tg_json_t *v) { return tg_json_str(v, NULL); }
static inline int adm_jnull(const tg_json_t *v) { return tg_json_type(v) == TG_JSON_NULL; }
/* An optional small non-negative integer: a JSON integer written as one
 * (no fraction, exponent or sign: "60", never 60.0, 6e1 or -0) or a string of
 * digits, at most max; exact, never through a double. */
int adm_int_field(adm_req_t *r, tg_json_t *j, const char *name, long max, long *v);
/* A required price: a string of digits, micro-USD per 1M tokens, <= 1e12. */
int adm_digits_field(adm_req_t *r, tg_json_t *j, const char *name, char out[24]);
/* A USD amount as a JSON string, exact, into pico-USD digits.  signed_ok:
 * a leading '-' is allowed (out then starts with '-'); positive: zero is
 * refused. */
int adm_usd_field(adm_req_t *r, tg_json_t *j, const char *name, int required, int positive, int signed_ok,
                  char out[24]);
/* A spending limit field (keys, customers): see bill_admin_keys.c. */
int adm_limit_field(adm_req_t *r, tg_json_t *j, const char *name, const char **mode, char out[24]);
/* An optional string of 1..max bytes; *out NULL when absent.  required:
 * absent is refused too. */
int adm_str_field(adm_req_t *r, tg_json_t *j, const char *name, size_t max, int required, const char **out);
/* Unix seconds ("1764300000", up to 12 digits but not 8) as an ISO timestamp
 * in UTC; anything else (8 digits: a date, 20261130) is returned as is for
 * PostgreSQL to read (or refuse with a 400). */
const char *adm_epoch_to_iso(const char *t, char out[40]);
/* Is t a time the API takes (ADM_TIME_RULE): Unix seconds (up to 12 digits),
 * a date of 8 digits (20261130), infinity, -infinity, or ISO 8601 / RFC 3339
 * YYYY-MM-DD, then optionally T (or a space) and hh:mm[:ss[.fraction]], then
 * optionally Z, +hh, +hh:mm or +hhmm (or -), every field in range.  Checked
 * here so that a bad value is a 400 naming its parameter, not PostgreSQL's
 * error text. */
#define ADM_TIME_RULE "must be Unix seconds or an ISO 8601 date or date-time (2026-11-30, 2026-11-30T12:00:00Z)"
int adm_time_valid(const char *t);
/* Query parameter `name` as a time, for SQL (adm_epoch_to_iso into out):
 * NULL when absent or empty (the caller's default applies); NULL and *bad set
 * when it is not a time, a 400 invalid_value naming it then sent. */
const char *adm_time_q(adm_req_t *r, struct evkeyvalq *q, const char *name, char out[40], int *bad);

/* ---- routers: 0 when the path is not theirs, else 1 (answered) ---------- */

typedef int (*adm_router_fn)(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q);

int bill_admin_accounts_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q);
int bill_admin_keys_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q);
int bill_admin_prices_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q);
int bill_admin_invoices_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q);
int bill_admin_tokens_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q);
int bill_admin_users_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q); /* dashboard logins */
/* GET /admin/v1/reports/{usage,top,balance}, GET /admin/v1/usage/{request_id} (bill_report.c) */
int bill_report_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q);

/* Answer 405 (the path exists, the method does not) with an Allow header
 * listing the methods it has ("GET, POST"); returns 1. */
int adm_bad_method(adm_req_t *r, const char *allow);

/* ---- named credentials (admin tokens, dashboard logins) ------------------ */

/* A new secret shown once: tag + 2 * nbytes random hex digits (nbytes <= 64)
 * into out (outlen bytes, room for all of it), and its keyed hash with the
 * server's key secret into hash.  0, or -1 after answering 500.  The caller
 * cleanses out when done. */
int adm_secret_new(adm_req_t *r, const char *tag, size_t nbytes, char *out, size_t outlen, char hash[65]);

/* A collection of named, revocable credentials under /admin/v1/<path>:
 *   GET  <path>                      list_sql (no parameters)
 *   POST <path>                      create(r)
 *   POST <path>/<name>/revoke        revoke_sql ($1 name; no row: 404 notfound),
 *   DELETE <path>/<name>             the same
 * A router's body: 0 when the path is not the collection's, else 1. */
typedef struct {
    const char *path;
    const char *list_sql;
    void (*create)(adm_req_t *r);
    const char *revoke_sql;
    const char *notfound;
} adm_named_t;
int adm_named_route(adm_req_t *r, char **seg, int nseg, const adm_named_t *c);

#endif
