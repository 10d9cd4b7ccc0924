/* bill.h — accounts as the gateway sees them: API-key authentication, balance
 * admission, prices, exact cost arithmetic, and settlement of a finished
 * request (usage row + debit, exactly once).  Also runs the admin API.
 *
 * Everything runs on the gateway's libevent loop; PostgreSQL is driven through
 * libpq's non-blocking API, never blocking the loop.  Callbacks are always
 * invoked from the loop, never re-entrantly from inside the call that
 * started them.
 *
 * Money: prices are integer micro-USD per 1M tokens, so n tokens at price p
 * cost exactly n*p pico-USD.  Costs are int64 pico-USD; balances are NUMERIC
 * pico-USD in PostgreSQL. */
#ifndef BILL_H
#define BILL_H

#include <stddef.h>
#include <stdint.h>

#include "mtr.h"

struct event_base;

typedef struct bill bill_t;
typedef struct bill_req bill_req_t;

typedef struct {
    const char *pg_conninfo;     /* libpq connection string */
    const char *admin_listen;    /* "127.0.0.1:8444"; NULL: no admin API */
    const char *admin_token;     /* bearer token required by the admin API */
    const char *key_secret;      /* secret of the keyed hash of API keys (hex) */
    const char *spool_dir;       /* where settlements wait while PG is down */
    int pg_pool_size;            /* PostgreSQL connections; 0: 4 */
    int pg_timeout_ms;           /* deadline of one statement; 0: 5000 */
    int last_used_flush_ms;      /* keys' last_used_at/ip written at most this often; 0: 60000 */
    int key_cache_ttl_ms;        /* a cached key is re-read after this while change notices
                                    flow (LISTEN up); 0: 60000 */
    int key_cache_fallback_ms;   /* ... and after this while they do not; 0: 1000 */
    int key_negative_ttl_ms;     /* an unknown key is remembered this long; 0: 5000 */
    int price_cache_ms;          /* a model's price is re-read after this; 0: 1000 */
    int64_t lease_chunk_pico;    /* credit leased beyond what the waiting holds need; 0: $0.05 */
    int lease_ttl_ms;            /* a lease not renewed for this long is reaped; 0: 60000 */
    int lease_idle_ms;           /* an unused lease is given back after this; 0: 2000 */
    int invoice_finalize_after_s; /* finalize last month's invoices this long after it ends (UTC);
                                     <= 0: never automatically (tollgatectl invoice finalize) */
    const char *receipt_key;     /* PEM Ed25519 private key signing usage receipts; NULL or "": none */
    int journal_group;           /* 1: bill_settle keeps its journal record until bill_journal_flush
                                    (one write(2) per loop iteration); 0: written within bill_settle */
    int *journal_disk_failing;   /* shared by the bill_t of one process whose spool directories are on
                                    one disk (an int that outlives them, 0 at first): a journal write
                                    failing in one makes bill_journal_writable 0 in all until a probe
                                    succeeds; NULL: this bill_t's own failures only */
} bill_opts_t;

/* Prices of one model (micro-USD per 1M tokens) and their version: the
 * metering record's type (metering/mtr.h owns it). */
typedef mtr_price_t bill_price_t;

typedef enum {
    BILL_OK = 0,
    BILL_UNAUTHORIZED,   /* unknown or revoked key -> 401 */
    BILL_KEY_EXPIRED,    /* past its expiry (or a rotated key past its grace) -> 401 */
    BILL_MODEL_NOT_ALLOWED, /* the key's scope does not hold the model -> 403 */
    BILL_SPEND_LIMIT,    /* a spending limit of the key or customer -> 402 */
    BILL_NO_BALANCE,     /* balance <= 0 -> 402 */
    BILL_NO_PRICE,       /* model has no price -> 404/500 */
    BILL_ERROR,          /* database unavailable etc. -> 503 */
} bill_status_t;

/* What admission learned about a request's key. */
typedef struct {
    int64_t key_id;
    int64_t customer_id;
    int32_t rpm, tpm, concurrency; /* limits of the key; 0 = none */
    int32_t cust_rpm, cust_tpm, cust_concurrency; /* limits of its customer (all its keys together); 0 = none */
    bill_price_t price;            /* snapshot used to bill this request */
    const char *models_json;       /* the key's allowed models as a JSON array of strings,
                                      NULL: every model; valid only during the callback */
} bill_key_t;

typedef void (*bill_admit_cb)(bill_status_t st, const bill_key_t *key, void *arg);

/* A balance hold: the most a request may cost, reserved before it runs. */
typedef struct {
    int64_t key_id, customer_id;
    int64_t amount;              /* pico-USD */
    int taken;                   /* 1 until settled or released */
    struct mtr_jfile *stream_rec; /* the stream's provisional row (bill_stream_begin), until settled */
} bill_hold_t;

/* Which constraint refused a hold. */
typedef enum {
    BILL_LIMIT_BALANCE = 0,
    BILL_LIMIT_KEY_DAY,
    BILL_LIMIT_KEY_MONTH,
    BILL_LIMIT_CUSTOMER_DAY,
    BILL_LIMIT_CUSTOMER_MONTH,
} bill_limit_t;

typedef struct {
    int64_t needed_pico;         /* what the request may cost */
    int64_t available_pico;      /* what the binding constraint had left */
    int limit;                   /* bill_limit_t */
} bill_hold_info_t;

typedef void (*bill_hold_cb)(bill_status_t st, const bill_hold_info_t *info, void *arg);

typedef struct {
    int64_t leases, leased_pico;     /* this holder's leases and what they hold in PostgreSQL */
    int64_t open_holds, held_pico;   /* holds of requests in flight */
    uint64_t holds_total, grants, grant_refusals, overruns;
    uint64_t hold_waits;             /* holds that waited for a grant: PostgreSQL on the request's path */
    uint64_t cache_hits, cache_misses, invalidations;
    int64_t last_invalidation_ms;    /* Unix time (ms) this loop's latest key-change notice came (0: none) */
    int listening;                   /* key-change notices flow */
} bill_hold_stats_t;

bill_t *bill_new(struct event_base *base, const bill_opts_t *opts, char *err, size_t errlen);
void bill_free(bill_t *b); /* accepts NULL; flushes pending settlements to the spool */

/* Authenticate api_key (as sent after "Bearer "), check its expiry and
 * model scope, the customer's balance, and look up the model's price.
 * peer (the client's address, may be NULL) becomes the key's last_used_ip:
 * uses are remembered in memory and written in one statement per
 * last_used_flush_ms, never per request.  cb is called once, from the loop,
 * unless the request is cancelled first.  Returns NULL only when out of memory.
 * The returned handle is freed just before cb runs: do not cancel it after.
 * Keys and prices come from an in-memory cache filled on a miss; every
 * change to a key (revocation, expiry, scope, limits) is pushed by PostgreSQL
 * (LISTEN/NOTIFY) and evicts it at once; while those notices cannot flow,
 * entries older than key_cache_fallback_ms are re-read.  The balance is not
 * read here: bill_hold checks it.  On a miss with PostgreSQL unreachable cb
 * gets BILL_ERROR within pg_timeout_ms (at once when every pool connection is
 * known to be down). */
bill_req_t *bill_admit(bill_t *b, const char *api_key, const char *model, const char *peer, bill_admit_cb cb,
                       void *arg);
void bill_cancel(bill_req_t *r); /* cb will not be called; accepts NULL */

/* The customer's balance as GET /user/balance answers it, DeepSeek's shape in
 * USD: {"is_available","balance_infos":[{"currency":"USD","total_balance",
 * "granted_balance","topped_up_balance","total_balance_pico"}]} (amounts
 * decimal strings, bill_usd_format's rounding; the pico-USD one exact).
 * "is_available": a request with key key_id (0: none) would be admitted now:
 * balance left, the customer open, room under every spending limit of the
 * customer and of the key.  One read of PostgreSQL (settled usage only: what
 * is still in a journal is not in it yet).  cb gets the body, valid during the call, or NULL when
 * PostgreSQL could not answer or the customer does not exist.  cb is called
 * once, from the loop, unless cancelled with bill_cancel.  NULL: ENOMEM. */
typedef void (*bill_balance_cb)(const char *json, void *arg);
bill_req_t *bill_balance(bill_t *b, int64_t customer_id, int64_t key_id, bill_balance_cb cb, void *arg);

/* Hold `amount` pico-USD for a request of key (from bill_admit) against this
 * holder's credit lease: without a round trip while the lease has room;
 * otherwise one statement leases more (or refuses: BILL_NO_BALANCE,
 * BILL_SPEND_LIMIT, with *info saying how much was needed and available;
 * BILL_ERROR when PostgreSQL cannot be asked).  On BILL_OK *h is the hold:
 * give it to bill_settle, or to bill_hold_release when nothing is billed.
 * h must stay valid until cb runs or the request is cancelled.  cb is called
 * once, from the loop.  Returns NULL when out of memory. */
bill_req_t *bill_hold(bill_t *b, const bill_key_t *key, int64_t amount, bill_hold_t *h, bill_hold_cb cb, void *arg);
void bill_hold_release(bill_t *b, bill_hold_t *h); /* nothing spent; accepts an untaken hold */
void bill_hold_stats(const bill_t *b, bill_hold_stats_t *st);

/* API keys.  Current keys: "sk-tg1-" + 8-char key id + 32-char secret +
 * 6-char checksum, all base62 (BILL_KEY_LEN = 53 chars); the checksum is
 * CRC-32 of everything before it, so a mistyped or random key is refused
 * without a lookup.  Keys issued before (legacy: "sk-" + 48 lowercase hex)
 * carry no checksum and keep working. */
#define BILL_KEY_LEN 53
typedef enum {
    BILL_KEY_BAD = 0,   /* neither shape, or a wrong checksum: refuse at once */
    BILL_KEY_CURRENT,   /* well-formed with a correct checksum */
    BILL_KEY_LEGACY,    /* the old shape: look it up */
} bill_key_shape_t;
bill_key_shape_t bill_key_shape(const char *api_key);

/* Keyed hash of an API key: HMAC-SHA256(secret, key) as 64 hex chars + NUL. */
void bill_key_hash(const char *secret_hex, const char *api_key, char out[65]);
/* The same hash, keyed once: for the hot path (one per thread: not shared). */
typedef struct bill_hmac bill_hmac_t;
bill_hmac_t *bill_hmac_new(const char *secret_hex); /* NULL: out of memory */
void bill_hmac_free(bill_hmac_t *h);                /* accepts NULL */
int bill_hmac_hex(bill_hmac_t *h, const char *msg, char out[65]); /* 0, or -1 (then use bill_key_hash) */

/* pico-USD as USD rounded half away from zero to 6 decimals ("0.000282"). */
void bill_usd_str(int64_t pico, char out[32]);

/* Exact cost in pico-USD; returns -1 on overflow or negative input. */
int64_t bill_cost_pico(const bill_price_t *p, int64_t cache_miss_tokens, int64_t cache_hit_tokens,
                       int64_t completion_tokens);

/* One finished (or failed) request: the usage record, owned by metering/
 * (mtr.h, mtr_usage_t).  Strings are copied by bill_settle. */
typedef mtr_usage_t bill_usage_t;

/* Record the usage row and debit its cost, exactly once per request_id,
 * asynchronously (queued, retried, spooled when PG is down).  The cost is
 * bill_cost_pico(price, prompt - cache_hit, cache_hit, completion).  A row
 * that can never be written (bad UUID, cache_hit > prompt, cost overflow,
 * unknown customer) is logged and appended to <spool_dir>/rejected.jsonl. */
void bill_settle(bill_t *b, const bill_usage_t *u, bill_hold_t *h); /* h: its hold, released; may be NULL */
/* A stream's head is about to go out (its client may then hold part of an
 * answer): journal u, the row to bill if this process dies before the
 * stream is settled (the gateway's prompt count, no completion), written
 * before this returns.  Kept in h (from then on give h to bill_settle or
 * bill_hold_release); the stream's own row, once safe, replaces it.  A
 * failed write is logged and leaves h as it was. */
void bill_stream_begin(bill_t *b, const bill_usage_t *u, bill_hold_t *h);
/* A newer provisional row for the stream of h (more completion sent): written,
 * then the older one is let go.  A failed write keeps the older one. */
void bill_stream_update(bill_t *b, const bill_usage_t *u, bill_hold_t *h);
/* With opts.journal_group, bill_settle's journal record waits in memory for
 * bill_journal_flush, which writes every waiting record with one write(2)
 * (metering/mtr_journal.h, "Grouped appends"); billing flushes by itself
 * before PostgreSQL sees a row.  The caller flushes before the answer that
 * the row bills reaches its client.  bill_journal_held: 1 while records wait.
 * bill_journal_flush: 0, or -1 when the write failed (logged; those rows stay
 * in memory only, as when a journal write fails within bill_settle). */
int bill_journal_held(const bill_t *b);
int bill_journal_flush(bill_t *b);
/* 1 while the journal takes records; 0 once a write failed (a full or
 * failing disk) until a later write or a probe (at most once a second, made
 * by this call) succeeds.  A row settled meanwhile lives in memory only and a
 * kill loses it: the caller admits nothing billable while this is 0. */
int bill_journal_writable(bill_t *b);

/* Signed usage receipts (bill_receipt.c has the format): the receipt of u as
 * settled, "tgr1.<payload>.<signature>", NUL-terminated, into out (cap bytes;
 * BILL_RECEIPT_MAX is always enough).  Returns its length, 0 when receipts are
 * off (no receipt_key), -1 on error (logged by nobody: the answer goes out
 * without a receipt). */
#define BILL_RECEIPT_MAX 12288
long bill_receipt(bill_t *b, const bill_usage_t *u, char *out, size_t cap);
/* The public key as JSON for GET /v1/receipt-key ({"object":"receipt_key",
 * "alg":"Ed25519","kid","public_key" (raw, base64url),"public_key_pem"}), or
 * NULL when receipts are off.  Owned by b. */
const char *bill_receipt_key_json(const bill_t *b);

/* Where the settlement queue stands: what bill_settle accepted and PostgreSQL
 * has not committed yet.  Tests wait for `idle` instead of sleeping; the admin
 * API serves it as GET /admin/v1/settlement. */
typedef struct {
    int64_t queued;           /* rows waiting in memory for a batch */
    int64_t in_flight;        /* rows of the batch PostgreSQL is running */
    int64_t spool_files;      /* journal/spool files not yet deleted (the open journal too) */
    int64_t spool_pending;    /* rows of those files not yet committed */
    int replay_pending;       /* 1: rows wait on disk only (PostgreSQL down, queue full, start) */
    uint64_t settled_total;   /* rows committed since start (re-sent duplicates included) */
    uint64_t inserted_total;  /* usage rows those commits inserted (a duplicate inserts none) */
    uint64_t debited_total;   /* ledger debits they inserted */
    uint64_t rejected_total;  /* rows given up for their data (logged, rejected.jsonl) */
    uint64_t copied_total;    /* of inserted_total, rows written by the COPY path (bill_settle.c) */
    uint64_t copy_fallbacks_total; /* COPY batches PostgreSQL refused, re-sent through the statement */
    int idle;                 /* 1: nothing queued, in flight or waiting to be replayed */
    int64_t journal_rows;     /* rows appended to the open journal file */
    int64_t journal_bytes;    /* its size */
    int64_t spool_bytes;      /* size of every journal/spool file not yet deleted (the open one too) */
    int pg_up;                /* 1: a PostgreSQL connection is ready or busy */
    uint64_t refusals_written; /* refusal counts written to usage_hourly (bill_refusal) */
    uint64_t refusals_dropped; /* refusal counts given up (too many waiting) */
    int64_t memory_only;      /* rows queued or in flight whose journal write failed (a full disk) and
                                 that no spool append has taken yet: a kill loses them */
    uint64_t unjournaled_total; /* rows whose journal write failed since start */
    int64_t found_files;      /* spool files found on disk (an earlier run's), not yet all committed:
                                 while any is left, its rows may not be in the balances yet */
    int earlier_streams;      /* 1: an earlier run's streams' provisional rows are not read or not all
                                 committed yet (they are not in the balances either) */
} bill_settle_stats_t;

/* Fill *st; b may be NULL (all zero, idle). */
void bill_settle_stats(const bill_t *b, bill_settle_stats_t *st);

/* The cost settled (usage rows inserted, duplicates not) since start for
 * model number i = 0, 1, ...: *model (valid until the next settlement) and
 * USD with all 12 decimals, exact ("0.000123450000").  Past 64 models the
 * rest is "other".  Returns 0, or -1 past the last model. */
int bill_settle_cost(const bill_t *b, int i, const char **model, char usd[48]);

/* An authenticated request (customer_id > 0) answered without a usage row:
 * 402 (insufficient balance, spending limit), 429 (rate or concurrency
 * limit) or 5xx before a worker was asked.  Counted in memory and added to
 * the hourly rollup (usage_hourly.refused_402/429/5xx) once a second in one
 * statement: at least once, not exactly once (billing/README.md).  Other
 * statuses are ignored; b may be NULL. */
void bill_refusal(bill_t *b, int64_t customer_id, int64_t key_id, const char *model, int http_status);

/* ---- dashboards (bill_dash.c) --------------------------------------------
 * The JSON API of the browser dashboards (GET/POST /dashboard/api/...): the
 * gateway hands each request here and sends back what comes out.  Sessions
 * live in PostgreSQL (migration 0012), so any gateway serves any browser.
 * Every customer query is bound to the session's customer id, never to an id
 * from the request.  billing/README.md "Dashboards" lists the endpoints. */
typedef struct bill_dash_call bill_dash_call_t;

typedef struct {
    const char *method;       /* "GET", "POST", ... */
    const char *path;         /* below /dashboard/api/ ("usage", "keys/7/revoke"), no query */
    const char *query;        /* after '?', percent-encoded; NULL: none */
    const char *cookie;       /* Cookie header; NULL: none */
    const char *csrf;         /* X-CSRF-Token header; NULL: none */
    const char *origin;       /* Origin header; NULL: none */
    const char *host;         /* Host header; NULL: none */
    const char *peer;         /* client address (login throttle); NULL: unknown */
    const char *body;         /* request body; NULL when empty */
    size_t body_len;
    /* The operator's view of the worker pool (GET admin/workers): billing
     * calls workers(workers_arg) on the loop only once the session is known
     * to be an operator's, and answers with what it returns (malloc'ed JSON;
     * NULL: an empty list).  The gateway starts or refreshes its poll of the
     * workers' /metrics in it, so that no other request (no session, a
     * customer's) makes it poll.  Never called after bill_dash_cancel, so
     * workers_arg needs to live only as long as the call.  NULL: no pool. */
    char *(*workers)(void *workers_arg);
    void *workers_arg;
} bill_dash_req_t;

typedef struct {
    int status;
    const char *content_type;
    const char *headers;      /* extra header lines, each ending in CRLF (Set-Cookie,
                                 Content-Disposition, Cache-Control); never NULL */
    const char *body;
    size_t body_len;
} bill_dash_resp_t;

/* resp and its strings are valid only during the call. */
typedef void (*bill_dash_cb)(const bill_dash_resp_t *resp, void *arg);

/* Answer one dashboard API request (q's strings are copied).  cb is called
 * exactly once, from the loop and never inside this call, unless the call is
 * cancelled first.  Returns NULL only when out of memory. */
bill_dash_call_t *bill_dash(bill_t *b, const bill_dash_req_t *q, bill_dash_cb cb, void *arg);
void bill_dash_cancel(bill_dash_call_t *c); /* cb will not be called; accepts NULL */

/* Pages the admin listener serves for the program that embeds billing (the
 * gateway's /metrics): GET (or HEAD: the same head, no body) `path` exactly, without the admin token on a
 * loopback listener (the operator's own machine; the default), with any admin token (readonly too) on any
 * other address.  fn runs on
 * the loop with a reply handle and answers with bill_page_reply exactly
 * once, now or later (the handle stays valid until then, even if the client
 * has gone).  Returns 0, or -1 when b has no admin listener or out of memory. */
typedef struct bill_page bill_page_t;
typedef void (*bill_page_fn)(bill_page_t *pg, void *arg);
int bill_admin_page(bill_t *b, const char *path, bill_page_fn fn, void *arg);
void bill_page_reply(bill_page_t *pg, int status, const char *content_type, const char *body, size_t len);
/* GET /admin/v1/settlement (after the admin token is checked) is answered by
 * fn instead of this handle's own queue: a program with several handles (one
 * per event loop) sums theirs (bill_settle_stats_json) and replies. */
int bill_admin_settlement(bill_t *b, bill_page_fn fn, void *arg);
/* The settlement stats as GET /admin/v1/settlement's JSON; returns its length. */
size_t bill_settle_stats_json(const bill_settle_stats_t *st, char *body, size_t n);

#endif
