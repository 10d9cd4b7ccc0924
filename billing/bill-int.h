/* bill-int.h — private to billing/: the PostgreSQL connection pool driven by
 * libevent, the settlement queue, the admin API, and money helpers.  No other
 * folder includes this file. */
#ifndef BILL_INT_H
#define BILL_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <postgresql/libpq-fe.h>

#include "bill.h"

struct event;
struct event_base;
struct evhttp;

/* ---- money (bill_money.c) ---------------------------------------------- */

/* Parse a non-negative decimal USD amount ("5", "5.00", "0.000001"; at most
 * 12 decimals, no sign, no exponent) into pico-USD.  Returns 0, or -1 on
 * garbage, too many decimals or overflow of int64. */
int bill_usd_parse(const char *s, int64_t *pico);

/* Format pico-USD as USD rounded half away from zero to 6 decimals
 * ("5.000000", "-0.000002").  out needs 32 bytes. */
void bill_usd_format(int64_t pico, char out[32]);

/* The same for an arbitrarily long decimal integer string of pico-USD (a
 * NUMERIC balance).  Returns 0, or -1 when s is not [-]digits or out is short. */
int bill_usd_format_dec(const char *pico_dec, char *out, size_t outlen);

/* A new API key: "sk-" + 48 hex chars from RAND_bytes.  Returns 0 or -1. */
int bill_key_generate(char out[52]);

/* ---- PostgreSQL pool (bill_pg.c) --------------------------------------- */

typedef struct bill_pg bill_pg_t;
typedef struct bill_pg_job bill_pg_job_t;

/* Called once per job from the loop: res is the query's result (owned by the
 * pool, cleared after the callback returns) or NULL with err set when the
 * database could not be reached, the query failed to send, or timed out.
 * A result with an error status (PGRES_FATAL_ERROR) is passed as res. */
typedef void (*bill_pg_cb)(PGresult *res, const char *err, void *arg);

/* Called when a connection reaches the server after being down (and once
 * at start), so the settlement queue can replay its spool. */
typedef void (*bill_pg_up_cb)(void *arg);

bill_pg_t *bill_pg_new(struct event_base *base, const char *conninfo, int nconn, int timeout_ms,
                       bill_pg_up_cb up_cb, void *up_arg);
void bill_pg_free(bill_pg_t *pg); /* fails pending jobs without calling them back; accepts NULL */

/* Queue one statement with text parameters (copied; NULL entries are SQL
 * NULL).  cb runs later from the loop, never from inside this call.
 * Returns the job (valid until cb runs or bill_pg_cancel), NULL on ENOMEM. */
bill_pg_job_t *bill_pg_query(bill_pg_t *pg, const char *sql, int nparams, const char *const *params,
                             bill_pg_cb cb, void *arg);
void bill_pg_cancel(bill_pg_job_t *job); /* cb will not run; accepts NULL */
/* The job only reads: when its connection breaks under it (server restart,
 * terminated backend), run it again on another or a new connection instead of
 * failing it (at most once per pool connection, within its deadline). */
void bill_pg_job_retry_ok(bill_pg_job_t *job);
/* Run the job's SQL as the prepared statement `name` (a static string; one
 * SQL text per name), preparing it once per session.  Call right after
 * bill_pg_query, before the loop runs. */
void bill_pg_job_prepared(bill_pg_job_t *job, const char *name);
int bill_pg_up(const bill_pg_t *pg);     /* 1 when a connection is ready or busy */
void bill_pg_set_up_arg(bill_pg_t *pg, void *up_arg);

/* ---- settlement (bill_settle.c) ---------------------------------------- */

typedef struct bill_settler bill_settler_t;

bill_settler_t *bill_settler_new(struct event_base *base, bill_pg_t *pg, const char *spool_dir,
                                 char *err, size_t errlen);
void bill_settler_push(bill_settler_t *s, const bill_usage_t *u);
void bill_settler_on_up(void *settler); /* bill_pg_up_cb: replay the spool */
void bill_settler_stats(const bill_settler_t *s, bill_settle_stats_t *st); /* s may be NULL */
/* Shut down: try a short blocking drain through conninfo, spool the rest. */
void bill_settler_free(bill_settler_t *s, const char *conninfo);

/* ---- admin API (bill_admin.c) ------------------------------------------ */

typedef struct bill_admin bill_admin_t;

/* settler (may be NULL) is read by GET /admin/v1/settlement; not owned. */
bill_admin_t *bill_admin_new(struct event_base *base, bill_pg_t *pg, const bill_settler_t *settler,
                             const char *listen, const char *token, const char *key_secret, char *err,
                             size_t errlen);
void bill_admin_free(bill_admin_t *a);

/* ---- reports (bill_report.c) --------------------------------------------- */

/* GET /admin/v1/reports/{usage,top,balance}, GET /admin/v1/usage/{request_id}:
 * bill_report_route (bill_admin-int.h) answers those paths. */
extern const char BILL_REPORT_USAGE_SQL[], BILL_REPORT_TOP_SQL[], BILL_REPORT_BALANCE_SQL[];

/* ---- the handle --------------------------------------------------------- */

/* ---- keys' last use (bill_keyuse.c) ------------------------------------- */

typedef struct bill_keyuse bill_keyuse_t;

/* Remember uses in memory; every flush_ms (0: 60000) write the keys used
 * since the last flush in one UPDATE.  Returns NULL on ENOMEM. */
bill_keyuse_t *bill_keyuse_new(struct event_base *base, bill_pg_t *pg, int flush_ms);
void bill_keyuse_touch(bill_keyuse_t *u, int64_t key_id, const char *peer); /* peer may be NULL */
uint64_t bill_keyuse_writes(const bill_keyuse_t *u);                       /* rows sent so far */
void bill_keyuse_free(bill_keyuse_t *u); /* drops uses not yet written; accepts NULL */

/* ---- refusal counters (bill_refusal.c) ---------------------------------- */

typedef struct bill_refusals bill_refusals_t;

/* Counters in memory, written to usage_hourly every second.  NULL on ENOMEM. */
bill_refusals_t *bill_refusals_new(struct event_base *base, bill_pg_t *pg);
/* One more refusal (402, 429 or 5xx; other statuses are ignored) at now_s. */
void bill_refusals_add(bill_refusals_t *r, int64_t customer_id, int64_t key_id, const char *model, int status,
                       int64_t now_s);
void bill_refusals_stats(const bill_refusals_t *r, uint64_t *added, uint64_t *written, uint64_t *dropped,
                         long *pending);
/* A last synchronous attempt through conninfo (may be NULL), then free.  Accepts NULL. */
void bill_refusals_free(bill_refusals_t *r, const char *conninfo);

/* Settled cost of model number i (0..): its name and USD with 12 decimals
 * (exact).  Returns 0, or -1 past the last. */
int bill_settler_cost(const bill_settler_t *s, int i, const char **model, char usd[48]);

struct bill {
    struct event_base *base;
    bill_pg_t *pg;
    bill_refusals_t *refusals;
    bill_keyuse_t *keyuse;
    bill_settler_t *settler;
    bill_admin_t *admin;
    char *conninfo;
    char *key_secret;
};

#endif
