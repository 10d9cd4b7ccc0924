/* bill_dash-int.h — private to the dashboard API (billing/bill_dash*.c): one
 * call in progress and the helpers its handlers answer through.
 *
 * bill_dash.c owns the plumbing: the call's life, sessions (cookie -> one
 * statement), logins and their throttle, CSRF and Origin checks, replies.
 * bill_dash_views.c holds the SQL and handlers of the customer's and the
 * operator's views.  A handler answers through exactly one of dash_read (one
 * statement whose single row is one JSON text column), dash_reply or
 * dash_error; any of them ends the call. */
#ifndef BILL_DASH_INT_H
#define BILL_DASH_INT_H

#include <sys/queue.h>

#include <event2/keyvalq_struct.h>

#include "bill-int.h"

#define DASH_MAX_SEG 4

typedef struct bill_dash_call dash_call_t;

/* Who is signed in (from the session row). */
typedef struct {
    char role[16];          /* "customer" or "operator" */
    char customer_id[24];   /* decimal; "" for an operator */
    char customer[72];      /* the customer's name; "" for an operator */
    char key_id[24];        /* the API key the session signed in with; "" for a login */
    char login[72];         /* the login, or the key's prefix */
    char csrf[72];          /* what writes must echo in X-CSRF-Token */
    int key_restricted;     /* signed in with a key that has a limit, a model list, a spending limit or an expiry */
} dash_who_t;

struct bill_dash_call {
    TAILQ_ENTRY(bill_dash_call) link; /* b->dash_calls */
    bill_t *b;
    bill_dash_cb cb;
    void *arg;
    struct event *kick;     /* answers from the loop, never inside bill_dash() */
    bill_pg_job_t *job;
    int stage;
    const char *notfound;   /* dash_read's 404 message */
    int is_get;
    char method[8];
    char *path, *query, *cookie, *csrf, *origin, *host, *peer, *body;
    size_t body_len;
    char *(*workers)(void *arg); /* bill_dash_req_t's: the pool, asked for only in the operator's view */
    void *workers_arg;
    struct evkeyvalq q;     /* the query, decoded */
    char *seg[DASH_MAX_SEG];
    int nseg;
    char token[72];         /* the session cookie's value, or a new session's */
    dash_who_t who;
    /* the answer */
    int status;
    const char *ctype;
    char *headers;          /* malloc'ed header lines */
    char *out;              /* malloc'ed body */
    size_t out_len;
    char *splice;           /* a secret shown once: spliced in front of the row's JSON */
    const char *splice_field;
    const char *attachment; /* Content-Disposition filename, or NULL */
    char attach_name[96];
};

/* Run one reading (or audited writing) statement and answer 200 with its one
 * JSON text column; no row or NULL -> 404 `notfound`.  ctype NULL: JSON. */
void dash_read(dash_call_t *c, const char *sql, int n, const char *const *params, const char *notfound);
void dash_reply(dash_call_t *c, int status, const char *ctype, const char *body, size_t len);
void dash_error(dash_call_t *c, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A 400 about one input (a body member or a query parameter), named in the
 * error's "param". */
void dash_field_error(dash_call_t *c, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The call's body as a JSON object (bill_body_parse; free with tg_json_free),
 * or NULL after answering 400. */
tg_json_t *dash_body(dash_call_t *c);
/* Add a header line ("Name: value") to the answer. */
void dash_header(dash_call_t *c, const char *name, const char *value);
/* Answer 405 (the path exists, the method does not) with an Allow header
 * listing the path's methods ("GET, POST"). */
void dash_bad_method(dash_call_t *c, const char *allow);
const char *dash_param(dash_call_t *c, const char *name); /* a query parameter, NULL when absent */

/* The views (bill_dash_views.c): answer c, signed in as c->who.  Returns 0
 * when no view has this path (the caller answers 404). */
int bill_dash_views_route(dash_call_t *c);
/* The methods a view's path has ("GET", "POST", "GET, POST"), NULL when no
 * view has this path. */
const char *bill_dash_views_allowed(const dash_call_t *c);

/* Calls in flight, cancelled by bill_free. */
void bill_dash_free_all(bill_t *b);

#endif
