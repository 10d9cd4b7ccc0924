/* bill-int.h — private to billing/: the PostgreSQL connection pool driven by
 * libevent, the settlement queue, the admin API, and money helpers.  No other
 * folder includes this file. */
#ifndef BILL_INT_H
#define BILL_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <postgresql/libpq-fe.h>

#include "tg_buf.h"
#include "tg_clock.h"
#include "tg_json.h"
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

/* A new API key (BILL_KEY_LEN chars + NUL): "sk-tg1-", an 8-character key
 * id, a 32-character secret (base62, RAND_bytes) and a 6-character base62
 * CRC-32 of the rest.  prefix gets "sk-tg1-<id>" for display.  Returns 0 or -1. */
int bill_key_generate(char out[BILL_KEY_LEN + 1], char prefix[16]);

/* nbytes random bytes as 2*nbytes lowercase hex + NUL.  Returns 0 or -1. */
int bill_random_hex(char *out, size_t nbytes);

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
/* The same with every parameter in binary format (paramFormats 1): params[i]
 * holds lengths[i] bytes (copied), NULL is SQL NULL; the statement must fix
 * each parameter's type (a cast such as $1::bigint[]).  The result is text. */
bill_pg_job_t *bill_pg_query_binary(bill_pg_t *pg, const char *sql, int nparams, const char *const *params,
                                    const int *lengths, bill_pg_cb cb, void *arg);
/* Queue a simple query (no parameters; several statements run as one
 * transaction) whose COPY ... FROM STDIN statements read data[0], data[1],
 * ... in order (lengths[i] bytes each; a COPY past ncopy is failed).  Takes
 * ownership of data (an array of ncopy malloc'ed buffers, itself malloc'ed),
 * freed with the job, also when NULL is returned (ENOMEM).  cb gets the first
 * error result if a statement failed (the transaction is rolled back), else
 * the first statement's result. */
bill_pg_job_t *bill_pg_copy(bill_pg_t *pg, const char *sql, int ncopy, char **data, const int *lengths,
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

/* Rows per settlement statement at most (one round trip, one transaction). */
#define BILL_SETTLE_BATCH 1024

/* journal_group: the journal's grouped appends (bill_opts_t.journal_group). */
bill_settler_t *bill_settler_new(struct event_base *base, bill_pg_t *pg, const char *spool_dir, int journal_group,
                                 char *err, size_t errlen);
/* prov: the stream's provisional record (bill_settler_stream_begin), done once the row is safe; or NULL */
void bill_settler_push(bill_settler_t *s, const bill_usage_t *u, struct mtr_jfile *prov);
struct mtr_jfile *bill_settler_stream_begin(bill_settler_t *s, const bill_usage_t *u);
void bill_settler_stream_done(bill_settler_t *s, struct mtr_jfile *prov);
int bill_settler_journal_held(const bill_settler_t *s);
int bill_settler_journal_flush(bill_settler_t *s);
int bill_settler_journal_writable(bill_settler_t *s);
void bill_settler_journal_share_disk(bill_settler_t *s, int *flag);
void bill_settler_on_up(void *settler); /* bill_pg_up_cb: replay the spool */
/* cb(request_id) for every row committed or given up (rejected). */
void bill_settler_on_commit(bill_settler_t *s, void (*cb)(const char *request_id, void *arg), void *arg);
void bill_settler_stats(const bill_settler_t *s, bill_settle_stats_t *st); /* s may be NULL */
/* The rows of customer_id that s holds (queued, or in a batch not yet
 * answered): their request ids and costs appended to ids and costs as
 * PostgreSQL array literals ("{uuid,...}", "{pico,...}"), for a balance read
 * to take off the rows its snapshot does not hold yet.  s may be NULL (empty
 * arrays).  Returns 0, or -1 out of memory. */
int bill_settler_pending(const bill_settler_t *s, int64_t customer_id, tg_buf_t *ids, tg_buf_t *costs);
/* Shut down: try a short blocking drain through conninfo, spool the rest. */
void bill_settler_free(bill_settler_t *s, const char *conninfo);

/* ---- admin API (bill_admin.c) ------------------------------------------ */

typedef struct bill_admin bill_admin_t;

/* settler (may be NULL) is read by GET /admin/v1/settlement; not owned. */
bill_admin_t *bill_admin_new(struct event_base *base, bill_pg_t *pg, const bill_settler_t *settler,
                             const char *listen, const char *token, const char *key_secret, char *err,
                             size_t errlen);
void bill_admin_free(bill_admin_t *a);
/* bill_admin_page (bill.h) on this listener. */
int bill_admin_add_page(bill_admin_t *a, const char *path, bill_page_fn fn, void *arg);
void bill_admin_set_settlement(bill_admin_t *a, bill_page_fn fn, void *arg);

/* The OpenAI-style error body of the admin API and the dashboards:
 * {"error":{"message":msg,"type":...,"param":param,"code":code}} (param, code NULL: null), the
 * type from the status (401 authentication_error, 403 permission_error, 404 not_found_error, 409
 * conflict_error, 429 rate_limit_error, 503 service_unavailable_error, other 5xx api_error,
 * else invalid_request_error).  malloc'd (the caller frees it), NULL when out of memory. */
char *bill_error_json(int status, const char *code, const char *param, const char *msg);

/* A request body of the admin or dashboard API (n bytes of text; none is {})
 * as a JSON object, read by common/tg_json: strict RFC 8259, numbers keep
 * their text (never a double), strings valid UTF-8.  Refused: anything but
 * an object, a member named twice, a string (or member name) holding U+0000
 * (PostgreSQL text cannot hold it, and a C string would silently end there:
 * "ab\u0000cd" was the name "ab").  Returns the object (free with
 * tg_json_free), or NULL with e filled for a 400 (e->code NULL: out of
 * memory, a 500). */
typedef struct {
    const char *code;   /* "invalid_json" or "invalid_value"; NULL: out of memory */
    char param[72];     /* the member at fault, "" when none */
    char msg[256];
} bill_body_err_t;
tg_json_t *bill_body_parse(const char *text, size_t n, bill_body_err_t *e);

/* ---- reports (bill_report.c) --------------------------------------------- */

/* GET /admin/v1/reports/{usage,top,balance}, GET /admin/v1/usage/{request_id}:
 * bill_report_route (bill_admin-int.h) answers those paths. */
extern const char BILL_REPORT_USAGE_SQL[], BILL_REPORT_TOP_SQL[], BILL_REPORT_BALANCE_SQL[];
/* The invoice document of one customer ($1 name) and month ($2 YYYY-MM) as
 * $3 'json' or 'csv' text: the finalized one as stored, else the draft
 * (bill_admin_invoices.c); the dashboards show the same statement's answer. */
extern const char BILL_INVOICE_SQL[];

/* ---- automatic invoice finalization (bill_invoice.c) -------------------- */

typedef struct bill_invoicer bill_invoicer_t;

/* Finalize the previous month's invoices once now is after_s past the end of
 * that month (UTC), checked every minute.  NULL on ENOMEM. */
bill_invoicer_t *bill_invoicer_new(struct event_base *base, bill_pg_t *pg, int after_s);
uint64_t bill_invoicer_runs(const bill_invoicer_t *v); /* months finalized by this process */
void bill_invoicer_free(bill_invoicer_t *v);           /* accepts NULL; cancels a statement in flight */

/* ---- the handle --------------------------------------------------------- */

/* ---- admission caches (bill_cache.c) ---------------------------------- */


typedef struct bill_cache bill_cache_t;

/* A key as admission needs it.  state: BILL_OK (a live or expired key: the
 * expiry is checked at each use), BILL_UNAUTHORIZED (unknown: a negative
 * entry, or revoked). */
typedef struct {
    int state;
    bill_key_t key;      /* key.models_json owned by the cache */
    int64_t expires_us;  /* CLOCK_REALTIME us of its expiry, 0: none */
    int64_t fetched_us;  /* tg_mono_us() when read from PostgreSQL */
    char *models_json;   /* the scope as JSON, NULL: every model */
} bill_cache_key_t;

typedef struct {
    int has_price;       /* 0: the model has no price */
    bill_price_t price;
    int64_t fetched_us;
} bill_cache_price_t;

bill_cache_t *bill_cache_new(void);
void bill_cache_free(bill_cache_t *c); /* accepts NULL */
void bill_cache_clear(bill_cache_t *c);
/* Lookups return the cached entry (valid until the next put/evict/clear) or NULL. */
const bill_cache_key_t *bill_cache_key(bill_cache_t *c, const char *hash);
int bill_cache_key_allows(bill_cache_t *c, const char *hash, const char *model); /* 1: in scope */
int bill_cache_put_key(bill_cache_t *c, const char *hash, const bill_cache_key_t *v); /* copies; 0 or -1 */
void bill_cache_evict_key(bill_cache_t *c, const char *hash);
void bill_cache_evict_customer(bill_cache_t *c, int64_t customer_id); /* its keys and prices */
const bill_cache_price_t *bill_cache_price(bill_cache_t *c, int64_t customer_id, const char *model);
int bill_cache_put_price(bill_cache_t *c, int64_t customer_id, const char *model, const bill_cache_price_t *v);
size_t bill_cache_size(const bill_cache_t *c);

/* ---- change notifications (bill_listen.c) ------------------------------ */

typedef struct bill_listen bill_listen_t;
typedef void (*bill_listen_cb)(const char *channel, const char *payload, void *arg);
typedef void (*bill_listen_state_cb)(int up, void *arg);

/* LISTEN on tg_key and tg_customer over a connection of its own, re-made
 * with back-off; state_cb(1) once listening (earlier changes may have been
 * missed), state_cb(0) when lost.  Returns NULL on ENOMEM. */
bill_listen_t *bill_listen_new(struct event_base *base, const char *conninfo, bill_listen_cb notify_cb,
                               bill_listen_state_cb state_cb, void *arg);
int bill_listen_up(const bill_listen_t *l);
void bill_listen_free(bill_listen_t *l); /* accepts NULL */

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

/* ---- credit leases (bill_lease.c) --------------------------------------- */

typedef struct bill_lease bill_lease_t;

/* One admission or hold in progress (bill.c); a hold waits on its lease's
 * queue (link) until a grant answers it. */
struct bill_req {
    TAILQ_ENTRY(bill_req) link;  /* bill_t.ready, or a lease's waiters */
    bill_t *b;
    int kind;                    /* 0: admission, 1: hold, 2: balance */
    int queued;                  /* in b->ready */
    bill_pg_job_t *job;
    void *arg;
    /* admission */
    bill_admit_cb cb;
    char peer[64], model[256], hash[65];
    bill_status_t st;
    bill_key_t key;
    char *models_json;
    uint64_t gen;                /* b->gen when the statement was sent */
    int refresh;                 /* a background re-read of a cached key and price: no one to answer */
    /* hold */
    int64_t amount;
    bill_hold_t *hold;
    bill_hold_cb hold_cb;
    void *lease;                 /* the lease whose queue holds it */
    /* balance */
    bill_balance_cb balance_cb;
};

typedef struct {
    int64_t leases, leased_pico, open_holds, held_pico;
    uint64_t holds_total, grants, grant_refusals, overruns;
    uint64_t hold_waits; /* holds that waited for a grant (the lease had no room) */
} bill_lease_stats_t;

bill_lease_t *bill_lease_new(bill_t *b, const char *spool_dir, const bill_opts_t *o, char *err, size_t errlen);
void bill_lease_free(bill_lease_t *L); /* accepts NULL */
/* Take r->amount for r->key from the local lease: 1 when taken now (r->hold
 * filled), 0 when r waits for a grant (answered through r->hold_cb), -1 on
 * ENOMEM. */
int bill_lease_hold(bill_lease_t *L, bill_req_t *r);
void bill_lease_cancel(bill_lease_t *L, bill_req_t *r);   /* r leaves its queue */
void bill_lease_release(bill_lease_t *L, bill_hold_t *h);
/* The request settled at cost: the hold goes, the cost stays reserved until
 * its usage row commits (bill_lease_committed with its request id). */
void bill_lease_settle(bill_lease_t *L, bill_hold_t *h, const char *request_id, int64_t cost);
void bill_lease_committed(bill_lease_t *L, const char *request_id);
/* The key (key_id > 0) or every key of the customer changed (limits, scope,
 * revocation): what their leases have not handed out yet is given back, so
 * the next hold needs a grant checked against the new settings. */
void bill_lease_stale(bill_lease_t *L, int64_t key_id, int64_t customer_id);
void bill_lease_stats(const bill_lease_t *L, bill_lease_stats_t *st);
const char *bill_lease_holder(const bill_lease_t *L);

TAILQ_HEAD(bill_req_q, bill_req);
/* ---- usage receipts (bill_receipt.c) ------------------------------------ */

typedef struct bill_receipts bill_receipts_t;

/* Load the Ed25519 private key (PEM) at path.  NULL with err on failure. */
bill_receipts_t *bill_receipts_new(const char *path, char *err, size_t errlen);
void bill_receipts_free(bill_receipts_t *r); /* accepts NULL */
const char *bill_receipts_key_json(const bill_receipts_t *r);
/* Sign u's receipt into out; price_version may be NULL.  Length or -1. */
long bill_receipts_sign(bill_receipts_t *r, const bill_usage_t *u, const char *price_version, char *out,
                        size_t cap);

struct bill {
    struct event_base *base;
    bill_pg_t *pg;
    bill_refusals_t *refusals;
    bill_receipts_t *receipts; /* NULL: no receipts */
    bill_keyuse_t *keyuse;
    bill_cache_t *cache;
    bill_listen_t *listen;
    int64_t key_ttl_us, fallback_ttl_us, neg_ttl_us, price_ttl_us;
    uint64_t gen;              /* bumped by every change notice */
    struct bill_req_q ready;   /* admissions answered from the cache, called back from `kick` */
    struct bill_req_q refreshing; /* background re-reads of cached keys and prices in flight */
    struct event *kick;
    bill_lease_t *lease;
    uint64_t cache_hits, cache_misses, invalidations;
    int64_t last_notice_ms;  /* Unix time (ms) the latest key-change notice came (0: none) */
    bill_settler_t *settler;
    bill_admin_t *admin;
    bill_invoicer_t *invoicer; /* NULL: no automatic finalization */
    char *conninfo;
    char *key_secret;
    bill_hmac_t *key_hmac;      /* key_secret, keyed once (NULL: bill_key_hash) */
    TAILQ_HEAD(bill_dash_q, bill_dash_call) dash_calls; /* dashboard API calls in flight (bill_dash.c) */
    int spool_lock; /* mtr_spool_lock's descriptor; -1: none */
};

#endif
