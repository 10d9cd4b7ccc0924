/* gw-int.h — private structures of the gateway; nothing outside gateway/
 * (and its unit tests) includes this.
 *
 * Parsers here do no I/O (bytes in; a message, "need more" or an error out);
 * the libevent adapters in gw_server.c and gw_proxy.c do the reading and
 * writing. */
#ifndef GW_INT_H
#define GW_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/socket.h>

#include "bill.h"
#include "tg_buf.h"
#include "tg_clock.h"
#include "tg_json.h"
#include "gw.h"

/* common/tg_json.h (not included: the gateway's pure units build without -Icommon) */
typedef struct tg_json tg_json_t;

/* One return vocabulary for the module. */
enum {
    GW_OK = 0,
    GW_AGAIN = 1,     /* need more bytes */
    GW_CONTINUE = 2,  /* request head with Expect: 100-continue parsed; body pending */
    GW_ERROR = -1,
};

/* ---- byte buffer: tg_buf_t (common/tg_buf.h); JSON string text:
 * tg_json_write_str / tg_json_write_chars (common/tg_json.h) ---------------- */

/* ---- request pool (gw_pool.c) -------------------------------------------
 * Memory that lives exactly as long as one request; cleanup handlers run in
 * reverse order of registration when the pool dies (sockets, timers, pending
 * Redis/billing calls hang on it). */

typedef struct gw_pool gw_pool_t;
typedef void (*gw_cleanup_fn)(void *arg);

gw_pool_t *gw_pool_new(void);
void *gw_palloc(gw_pool_t *p, size_t n); /* zeroed; NULL when out of memory */
char *gw_pstrndup(gw_pool_t *p, const char *s, size_t n);
int gw_pool_cleanup_add(gw_pool_t *p, gw_cleanup_fn fn, void *arg);
void gw_pool_free(gw_pool_t *p); /* accepts NULL */

/* The calling thread's cache of fixed-size per-request blocks (gw_pool.c:
 * why, and its bounds).  gw_block_get returns an uninitialised block of class
 * cls (NULL when out of memory), owned by the caller until gw_block_put
 * (accepts NULL) gives it back, on any thread: the block joins that thread's
 * list, or is freed when the list holds GW_BLOCK_CACHE_MAX.  A thread that
 * put blocks calls gw_block_cache_drain before it ends (the event loops'
 * threads, the process at exit). */
enum {
    GW_BLOCK_POOL,
    GW_BLOCK_POOL_MORE,
    GW_BLOCK_HTTP_REQ,
    GW_BLOCK_EV_2K, /* libevent's own allocations of 1 KiB + 9 to 16 KiB (its evbuffer chains) */
    GW_BLOCK_EV_4K,
    GW_BLOCK_EV_8K,
    GW_BLOCK_EV_16K,
    GW_BLOCK_NCLASSES
};
#define GW_BLOCK_CACHE_MAX 64 /* per class and thread: 64 x (4 + 4 + 3.3 + 2 + 4 + 8 + 16 KiB) at most */
void *gw_block_get(int cls);
void gw_block_put(int cls, void *p);
unsigned gw_block_cached(int cls); /* blocks in this thread's list of cls */
void gw_block_cache_drain(void);

/* libevent's allocator (event_set_mem_functions, before any other libevent
 * call): malloc, realloc and free, except that a block of 2 to 16 KiB (an
 * evbuffer chain: libevent sizes them in powers of two from 1 KiB, above
 * glibc's per-thread cache) comes from and goes back to the block cache
 * (GW_BLOCK_EV_*).  Every block is a plain malloc block either way, so free()
 * and gw_ev_free take each other's. */
void *gw_ev_malloc(size_t n);
void *gw_ev_realloc(void *p, size_t n);
void gw_ev_free(void *p);

/* ---- chunked transfer decoding (gw_http.c) ------------------------------ */

typedef struct {
    int state;
    uint64_t remaining; /* bytes left in the current chunk */
    int ndigits;
    int done;           /* saw the last chunk and the trailer */
    size_t line_len;    /* length of the current size/trailer line, bounded */
    size_t trailer_bytes; /* trailer section received (counted with the head's limits) */
    int trailer_fields;
    int ext;            /* in the size line: saw the ';' of an extension */
    int colon;          /* in a trailer line: past its name's ':' */
} gw_chunked_t;

/* Decode len bytes of a chunked body, appending the payload to out.
 * Returns the number of input bytes consumed (less than len only once the
 * body is complete: c->done), or -1 on malformed framing or out of memory. */
ssize_t gw_chunked_feed(gw_chunked_t *c, const char *in, size_t len, tg_buf_t *out);

/* ---- HTTP/1.1 request parser (gw_http.c) -------------------------------- */

#define GW_HTTP_MAX_HEADERS 100     /* header fields, trailer fields included (431) */
#define GW_HTTP_MAX_REQUEST_LINE 8192 /* request line without its CRLF (414) */

typedef struct {
    const char *name, *value; /* point into the request's head; NUL-terminated */
    size_t name_len, value_len;
} gw_hdr_t;

typedef struct {
    char *head;               /* owned copy of the head, cut into strings */
    const char *method, *target;
    int minor;                /* HTTP/1.<minor> */
    gw_hdr_t hdrs[GW_HTTP_MAX_HEADERS];
    int nhdrs;
    int64_t content_length;   /* -1: none */
    int chunked, keep_alive, expect_continue;
    char *body;               /* owned, NUL-terminated; NULL when empty */
    size_t body_len;
} gw_http_req_t;

typedef struct {
    size_t max_header, max_body;
    tg_buf_t in;              /* received, not yet consumed */
    size_t scan;              /* head bytes already searched for the blank line */
    int state;
    gw_http_req_t *cur;       /* request whose body is being read */
    gw_chunked_t ch;
    tg_buf_t body;
    int continue_reported;
    int err_status;           /* after GW_ERROR: 400, 413, 414, 431, 501, 505 */
    size_t head_len;          /* head of the request whose body is being read (trailer limit) */
    const char *err_msg;
} gw_http_parser_t;

void gw_http_parser_init(gw_http_parser_t *p, size_t max_header, size_t max_body);
void gw_http_parser_release(gw_http_parser_t *p);
int gw_http_parser_feed(gw_http_parser_t *p, const void *data, size_t len);
/* GW_OK: *out is a complete request (caller frees with gw_http_req_free);
 * GW_AGAIN: need more; GW_CONTINUE: once per request whose head asked for
 * 100-continue; GW_ERROR: p->err_status / p->err_msg say why, the stream
 * cannot be resynchronised (close after answering). */
int gw_http_parser_next(gw_http_parser_t *p, gw_http_req_t **out);
/* Nonzero while a request is partly received. */
int gw_http_parser_busy(const gw_http_parser_t *p);
void gw_http_req_free(gw_http_req_t *r); /* accepts NULL */
/* Header value by case-insensitive name (first match), or NULL. */
const char *gw_http_header(const gw_http_req_t *r, const char *name);
/* A Content-Type value (RFC 9110 §8.3): common/tg_http_media.c's reading
 * (GW_HTTP_MEDIA_* = TG_HTTP_MEDIA_*), shared with the engine worker. */
enum { GW_HTTP_MEDIA_JSON = 0, GW_HTTP_MEDIA_NOT_JSON = -1, GW_HTTP_MEDIA_BAD_CHARSET = -2 };
int gw_http_json_media(const char *v);

/* Response head of an upstream (worker) reply. */
typedef struct {
    int status;
    int64_t content_length;   /* -1: none */
    int chunked, close;
    char content_type[128];
} gw_http_resp_t;

/* Parse a response head from buf.  Returns the head's length (> 0), 0 when
 * more bytes are needed, -1 on a malformed or oversized (> max) head. */
long gw_http_resp_parse(const char *buf, size_t len, size_t max, gw_http_resp_t *r);

const char *gw_http_reason(int status);

/* A response head to the client, as gw_req_head decided it. */
typedef struct {
    int status;
    const char *date;           /* the Date value (gw_http_date) */
    const char *request_id;
    const char *content_type;   /* NULL: none */
    int64_t content_length;     /* -1: none */
    int chunked;                /* Transfer-Encoding: chunked (and Cache-Control: no-cache) */
    const char *extra;          /* header lines ("Name: value\r\n"...), or NULL */
    int64_t rl_limit, rl_remaining, rl_reset_ms;    /* rl_limit > 0: x-ratelimit-*-requests */
    int64_t tpm_limit, tpm_remaining, tpm_reset_ms; /* tpm_limit > 0: x-ratelimit-*-tokens */
    int64_t retry_after_s;      /* >= 0: retry-after */
    const char *receipt;        /* x-tollgate-receipt, or NULL */
    int cors;                   /* a /v1 answer: readable by a page of any origin */
    int keep_alive;
} gw_http_head_t;
/* Append the head's bytes to b (no printf: every answer has one). */
void gw_http_head_write(tg_buf_t *b, const gw_http_head_t *h);
/* The IMF-fixdate of now ("Sun, 06 Nov 1994 08:49:37 GMT"), formatted once a
 * second per thread; valid until the thread's next call. */
const char *gw_http_date(time_t now);

/* ---- SSE event splitter (gw_sse.c) --------------------------------------- */

typedef struct {
    tg_buf_t buf;
    size_t scan;
} gw_sse_t;

int gw_sse_feed(gw_sse_t *s, const char *data, size_t len);
/* GW_OK: [*ev, *ev+*len) is one whole event including its blank line, valid
 * until the next call; GW_AGAIN: no whole event buffered. */
int gw_sse_next(gw_sse_t *s, const char **ev, size_t *len);
/* Remaining partial bytes (after the stream ended). */
size_t gw_sse_pending(const gw_sse_t *s);
/* Concatenated data: lines of one event (joined by \n) into out; returns
 * GW_OK, or GW_AGAIN when the event has no data line. */
int gw_sse_data(const char *ev, size_t len, tg_buf_t *out);
void gw_sse_release(gw_sse_t *s);

/* ---- UUIDv7 (gw_uuid.c) -------------------------------------------------- */

/* 36 chars + NUL, strictly increasing within this process. */
void gw_uuid7(char out[37]);
/* Same, with a given Unix time in ms (for tests). */
void gw_uuid7_at(char out[37], uint64_t unix_ms);
/* n bytes from the kernel's CSPRNG (through a per-thread pool). */
void gw_uuid_random_bytes(unsigned char *p, size_t n);


/* ---- configuration (gw_config.c) ----------------------------------------- */

/* One configured worker: what the config says (read-only after load).  What
 * each event loop learns about it at run time (requests in flight, back-off,
 * kept-alive connections) lives in that loop's gw_upstream_t. */
typedef struct {
    char *url;                /* "http://host:port" */
    char host[256];
    int port;
    char **models;
    int nmodels;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    /* the pool (gw_pool.c, gateway/README.md "Worker pool") */
    char **command;           /* argv (NULL-terminated) the gateway starts; NULL: attached, not started */
    char *log;                /* the started worker's stdout and stderr (appended); NULL: the gateway's */
    int tls;                  /* "https://": an external upstream over TLS */
    char *api_key;            /* sent as Authorization: Bearer (the client's key never is); NULL: none */
    char *tls_ca;             /* CA file verifying an https upstream; NULL: the system's */
    char *health_path;        /* GET for health checks ("/health"; "/v1/models" for OpenAI-compatible servers) */
    int start_timeout_ms;     /* an own worker not healthy this long after its start is killed (restarted) */
} gw_worker_t;

struct gw_config {
    char *config_file;
    char *listen, *admin_listen, *tls_cert, *tls_key, *postgres, *redis;
    char *admin_token_file, *key_secret_file, *spool_dir, *access_log;
    char *dashboard_dir;
    char *receipt_key;         /* Ed25519 PEM signing usage receipts; "" or a missing file: none */
    int64_t max_body_bytes, max_header_bytes, max_connections;
    int64_t loops;             /* event loops; 0: one per core */
    int64_t default_rpm, default_tpm, default_concurrency;
    char *tokenizer, *chat_template;
    int64_t handshake_timeout_ms, header_timeout_ms, body_timeout_ms, idle_timeout_ms, write_timeout_ms;
    int64_t max_output_bytes;
    int64_t upstream_timeout_ms, upstream_connect_timeout_ms;
    int64_t redis_timeout_ms, redis_fail_closed, redis_cluster, shutdown_grace_ms, stream_high_water;
    int64_t concurrency_lease_ms;
    int64_t auth_fail_limit, auth_fail_window_ms, auth_fail_block_ms, auth_fail_table;
    int64_t key_last_used_flush_ms;
    int64_t key_cache_ttl_ms, key_cache_fallback_ms, key_negative_ttl_ms, price_cache_ms;
    int64_t lease_chunk_pico, lease_ttl_ms, lease_idle_ms;
    int64_t default_max_tokens;
    int64_t max_tokens_limit;
    int64_t invoice_finalize_after_s;
    int64_t upstream_keepalive;
    gw_worker_t *workers;
    int nworkers;
};

/* Parse the "workers" array (JSON text) into c; GW_OK or GW_ERROR. */
int gw_config_set_workers(gw_config_t *c, const char *json, char *err, size_t errlen);
/* Split "host:port" / "[v6]:port"; GW_OK or GW_ERROR. */
int gw_split_hostport(const char *s, char *host, size_t hostlen, int *port);

/* ---- rate limits (gw_rl.c, gw_rl_local.c, gw_rl_redis.c) ------------------ */

#include "gw_rl-int.h"

/* ---- metrics (gw_metrics.c) ---------------------------------------------- */

enum { GW_ROUTE_CHAT, GW_ROUTE_MODELS, GW_ROUTE_METRICS, GW_ROUTE_HEALTH, GW_ROUTE_OTHER, GW_ROUTE_COMPLETIONS,
       GW_ROUTE_N };

typedef struct {
    uint64_t requests[GW_ROUTE_N][600];
    uint64_t dur_buckets[12], dur_count;
    double dur_sum;
    uint64_t ttfb_buckets[12], ttfb_count;
    double ttfb_sum;
    uint64_t tokens_prompt, tokens_cache_hit, tokens_completion, tokens_reasoning;
    uint64_t upstream_errors, upstream_timeouts, ratelimited, redis_errors, client_aborts;
    uint64_t key_format_rejects, refused_balance, refused_journal;
    uint64_t upstream_connects, upstream_reuses;
    uint64_t upstream_usage_disagreements; /* an external upstream's prompt_tokens != our count */
    uint64_t connections_total, connections_refused, write_timeouts;
    int64_t connections, inflight;
} gw_metrics_t;

extern const double gw_metrics_bounds[12];
void gw_metrics_observe(gw_metrics_t *m, int route, int status, double dur_s, double ttfb_s);
/* Prometheus text exposition into out. */
struct gw_upstream;
/* Prometheus text exposition into out; up: the run-time state of each of
 * cfg's workers. */
void gw_metrics_render(const gw_metrics_t *m, const gw_config_t *cfg, const struct gw_upstream *up, int redis_up,
                       tg_buf_t *out);
/* Holds, credit leases and the key cache (bill_hold_stats). */
void gw_metrics_render_holds(const gw_metrics_t *m, const bill_hold_stats_t *h, tg_buf_t *o);
struct bill;
/* Settled cost of one model, exact (pico-USD). */
typedef struct {
    char model[128];
    unsigned __int128 pico;
} gw_cost_t;
#define GW_COSTS 65
/* A loop's settlement numbers (on its thread), added up over loops, rendered. */
typedef struct {
    bill_settle_stats_t st;
    gw_cost_t cost[GW_COSTS];
    int ncost;
} gw_money_t;
void gw_metrics_money_snap(const struct bill *b, gw_money_t *m);
void gw_metrics_money_add(gw_money_t *a, const gw_money_t *b, int first);
void gw_metrics_render_money(const gw_money_t *m, tg_buf_t *o); /* the settlement and cost metrics */

/* ---- the layers of a request ----------------------------------------------
 *
 *   gw_server.c   process: configuration, TLS context, event loops, shutdown
 *   gw_routes.c   which handler answers which path
 *   gw_conn.c     one client connection: TLS bytes -> parser -> requests, one
 *                 at a time; timeouts; closing.  Knows nothing of routes.
 *   gw_req.c      one request's lifecycle: created from a parsed head, run by
 *                 its handler, answered (head, body, error), finished, freed.
 *                 Calls outward only: the connection below (gw_conn_*), the
 *                 handler above through gw_handler_t.
 *   gw_chat.c     the chat-completions handler: validate -> admit -> limits ->
 *                 hold -> proxy; its finalize step settles
 *   gw_models.c   /v1/models, /health
 *   gw_admin.c    /metrics on the admin listener, gathered from every loop
 *   gw_auth.c     the Bearer key, admission errors (shared by the /v1 handlers)
 *   gw_proxy.c    the upstream: worker choice, HTTP to the worker, relay
 *   gw_settle.c   settlement of a proxied request: usage, the gateway's own
 *                 prompt count, bill_settle
 *   gw_log.c      the access log
 * Arrows point down this list (server -> routes -> chat -> proxy -> settle ->
 * req -> conn), never back up. */

struct event;
struct bufferevent;
struct evconnlistener;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct gw_conn gw_conn_t;
typedef struct gw_req gw_req_t;
typedef struct gw_loop gw_loop_t;

#include "bill.h"

/* A worker that refused a connection is skipped by every loop for a while:
 * one per worker in the process, read and written with relaxed atomics. */
typedef struct gw_backoff {
    int64_t down_until_us;    /* skipped while in the future (after a refused connection) */
    int64_t refused_us;       /* when; a health check passed since clears it */
    int64_t backoff_ms;
} gw_backoff_t;

/* What one event loop knows of one configured worker at run time. */
typedef struct gw_upstream {
    const gw_worker_t *cfg;
    int index;                /* in cfg->workers */
    int outstanding;
    uint64_t requests, failures;
    struct gw_backoff *bo;    /* the process's (every loop's) back-off of this worker */
    struct gw_upconn *idle;   /* kept-alive connections to reuse (gw_proxy.c) */
    int nidle;
} gw_upstream_t;

/* What the connection layer calls above it (gw_req.c provides it). */
typedef struct {
    /* A parsed request (h, owned by the callee), or h == NULL: input that could
     * not be parsed, to answer with status/msg before closing. */
    void (*request)(gw_conn_t *c, gw_http_req_t *h, int status, const char *msg);
    void (*writable)(gw_conn_t *c); /* output drained below the mark while c->req runs */
    void (*abort)(gw_conn_t *c);    /* the connection dies under c->req */
    void (*stop)(gw_conn_t *c);     /* the shutdown grace is over: end c->req now, with an answer */
} gw_conn_ops_t;

/* A route's handler: the request layer calls these, never the handler's file
 * directly (nginx's phase handlers). */
typedef struct {
    int route;                     /* GW_ROUTE_* (metrics) */
    void (*run)(gw_req_t *r);      /* answer the request (now or later) */
    void (*resume)(gw_req_t *r);   /* the client's output drained (backpressure); NULL: none */
    void (*finalize)(gw_req_t *r); /* just before the request is freed, whatever its state; NULL: none */
    /* the shutdown grace is over: end the request now with what the client can read (GW_OK), or
     * GW_ERROR to let the request layer answer 503 before the head; NULL: the latter */
    int (*stop)(gw_req_t *r);
} gw_handler_t;

/* A loop's numbers as of the last scrape (gw_admin.c). */
typedef struct {
    gw_metrics_t m;
    bill_hold_stats_t holds;
    int redis_up;
    gw_rl_snap_t rl;
    gw_money_t money;          /* the loop's settlement and cost numbers */
    struct {
        int outstanding;
        uint64_t failures;
    } *up;                     /* one per worker */
} gw_loop_snap_t;

/* One event loop: its own connections, billing (PostgreSQL connections, key
 * cache, credit-lease holder, settler), Redis connection, metrics and worker
 * state.  Touched only from its own thread. */
struct gw_loop {
    gw_server_t *srv;
    int index;
    struct event_base *base;
    struct evconnlistener *lis;
    bill_t *bill;
    gw_rl_t *rl;
    gw_metrics_t m;
    gw_conn_t *conns;          /* every open client connection */
    int nbusy;                 /* connections with a request in flight */
    int shutting_down;
    int grace_over;            /* the requests still running at the grace's end were ended */
    struct event *grace;
    struct event *accept_pause; /* accept() failed: retry later */
    gw_upstream_t *up;         /* one per cfg->workers[i] */
    unsigned rr;
    struct gw_dash *dash;      /* the dashboards (gw_dash.c) */
    struct event *snap_ev;     /* fill `snap` (activated by the first loop's scrape) */
    gw_loop_snap_t snap;
    struct event *stop_ev;     /* shut down (activated from the signal's loop) */
    /* Wake-ups from other threads (gw_loop_wake): the loop's base takes no
     * lock (EVENT_BASE_FLAG_NOLOCK), so another thread never touches it;
     * it names the events to activate here and writes to mail_fd. */
    int mail_fd;               /* eventfd; -1 before gw_loop_mail_init */
    struct event *mail_ev;
    pthread_mutex_t mail_mu;
    struct event *mail[4];     /* events to activate on this loop (distinct) */
    int nmail;
    struct tg_work *work;      /* the loop's worker thread: access-log writes, large prompts' counts */
    tg_buf_t alog;             /* access-log lines not yet handed to `work` (gw_log.c) */
    tg_buf_t scratch;          /* a head being assembled (client answer, worker request); reused */
    char *up_spill;            /* GW_UP_SPILL bytes: a worker answer's read beyond its input's chain (gw_proxy.c) */
    struct event *alog_ev;     /* hands them over GW_LOG_FLUSH_MS after the first */
    gw_conn_t *held;           /* connections whose output waits for the journal write (gw_settle.c) */
    struct event *jflush_ev;   /* writes the loop iteration's journal records, then releases `held` */
    int fault_journal_stall;   /* TOLLGATE_FAULT=journal-stall (tests): the write never comes (gw_settle.c) */
    pthread_t thread;          /* loops after the first run on their own thread */
    int started;
};

/* The process: what every loop shares (read-only after start, except where
 * said). */
struct gw_server {
    const gw_config_t *cfg;
    SSL_CTX *ssl;
    gw_loop_t *loops;
    int nloops;
    int journal_disk_failing;  /* the loops' journals share it (atomics): a write or an fdatasync failed, not yet probed */
    const gw_conn_ops_t *conn_ops;
    /* the handler for a request (sets r->route fields it needs) */
    const gw_handler_t *(*route)(gw_req_t *r);
    struct tok *tok;           /* prompt counting; NULL when not configured */
    int tmpl;
    FILE *alog;
    int64_t started;
    int64_t nconns;            /* open client connections, all loops (atomic) */
    gw_backoff_t *backoff;     /* one per worker, shared by the loops */
    int spool_lock;            /* flock of cfg->spool_dir (each loop's billing locks its loop<i>) */
    /* /metrics (gw_admin.c; first loop's thread) */
    struct gw_scrape *scrapes; /* waiting for the loops' snapshots */
    int scraping;
    int scrape_pending;        /* loops yet to fill their slot (atomic) */
    struct event *gathered;    /* on the first loop: every slot filled */
    struct gw_sup *sup;        /* the worker pool's supervisor (gw_supervise.c; first loop) */
};

struct gw_conn {
    gw_loop_t *loop;
    gw_conn_t *prev, *next;
    struct bufferevent *bev;
    gw_http_parser_t parser;
    gw_req_t *req;             /* the request being answered; one at a time */
    struct event *timer;       /* header / idle timeout */
    int timer_kind;
    struct event *kick;        /* deferred work: next pipelined request, close */
    int closing;               /* close once the output is flushed */
    int linger;                /* read and discard a while before closing */
    size_t lingered;
    int in_process;
    int handshaken;            /* the TLS handshake is done */
    int refused;               /* accepted past max_connections: answered 503, closed */
    int out_blocked;           /* output above max_output_bytes: no further request until it drains */
    int held;                  /* its output waits for the journal write (in loop->held) */
    gw_conn_t *hprev, *hnext;
    uint64_t served;           /* requests answered */
    char peer[64];
};

struct gw_req {
    gw_pool_t *pool;           /* owns this struct and everything below */
    gw_server_t *srv;
    gw_loop_t *loop;
    gw_conn_t *conn;
    const gw_handler_t *handler;
    gw_http_req_t *http;       /* owned: freed by a pool cleanup */
    char id[37];
    int route;
    int keep_alive;
    int64_t received_us, first_byte_us, finished_us;
    /* chat request */
    tg_json_t *json;           /* the request body (tg_json: NUL-safe, exact integers);
                                  owned: freed by a pool cleanup */
    struct api_chat_req *chat; /* the body as api/ read it; owned: freed by a pool cleanup */
    int cmpl;                  /* POST /v1/completions (chat->cmpl): proxied to the worker's /v1/completions */
    const char *model, *api_key;
    int stream, client_usage;
    bill_req_t *admit;
    int admitted;              /* passed billing admission */
    bill_key_t key;
    gw_rl_call_t *rl_call;     /* admission or look at the limits; finished by a pool cleanup */
    int have_rl;
    gw_rl_result_t rl;
    int64_t prompt_est;        /* gateway's own prompt count; -1 unknown */
    uint64_t prefix_key;       /* the prompt's affinity key, from the ids the count made */
    int have_prefix_key;
    struct gw_count_job *count_job; /* a large prompt being counted on the loop's worker thread */
    int64_t tpm_tokens;        /* what the TPM limit was charged */
    int64_t completion_cap;    /* most completion tokens this request may produce */
    int64_t inject_max_tokens; /* > 0: the client gave no cap; forward this one */
    bill_req_t *hold_req;      /* the hold being taken */
    bill_hold_t hold;          /* the balance hold (released or settled by the end) */
    bill_status_t admit_st;    /* an admission refusal answered once the limits are known */
    struct {                   /* a refusal of the body, answered once the key is known good (gw_chat.c) */
        int status;
        const char *type, *code, *param, *msg; /* copies in the pool */
    } refusal;
    char *scope_json;          /* /v1/models: the key's scope, copied into the pool */
    /* response */
    int status;                /* what the client got */
    int head_sent;
    int client_chunked;        /* response body is chunked to the client */
    int client_gone;
    int done;
    const char *error_code;
    const char *extra_headers; /* header lines ("Name: value\r\n"...) gw_req_head adds; NULL: none */
    int cors;                  /* a /v1 path: CORS headers on the answer (gw_routes_match) */
    /* upstream */
    gw_upstream_t *worker;
    const char *worker_url;    /* kept for the log after the worker is released */
    int up_eof, up_connected;
    int up_reused;             /* this worker connection served an earlier request */
    int up_reusable;           /* the answer ended cleanly: the connection may be kept */
    int no_reuse;              /* a kept connection failed: use fresh ones */
    int proxied;               /* 1: a worker was asked, settle; 2: settled (once) */
    int up_external;           /* the worker is an external (https) upstream: its usage is checked */
    const char *receipt;       /* the signed usage receipt once settled (pool), or NULL */
    uint64_t tried;            /* bit per worker index already tried */
    uint64_t affinity;         /* hash of the prompt's start; 0: none */
    struct bufferevent *up;
    struct gw_upconn *upc;     /* up came from the idle list (gw_proxy.c: read by its own event when plain); else NULL */
    int up_head_done, up_streaming, up_paused, up_got_bytes;
    gw_http_resp_t resp;
    gw_chunked_t ch;
    int64_t up_body_left;      /* Content-Length bytes still to come */
    tg_buf_t payload;          /* de-framed bytes not yet handled */
    tg_buf_t body;             /* buffered non-streaming reply */
    gw_sse_t sse;
    tg_buf_t scratch;
    /* usage */
    int have_usage;
    int64_t prompt_tokens, cache_hit_tokens, completion_tokens, reasoning_tokens;
    int64_t chunks;            /* content chunks seen (estimate for a cut stream) */
    int64_t prov_us;           /* tg_mono_us() of the stream's last provisional row (gw_settle_stream_update) */
    int64_t prov_completion;   /* the completion it said */
    uint32_t echoed;           /* completions with echo: choices whose echoed prompt was seen (bit = index) */
    int64_t counted_tokens;    /* completion tokens the gateway counted itself, for an answer without usage:
                                  a stream's tool calls (names and arguments), or a whole answer's
                                  messages (text, reasoning and tool calls) */
};

/* gw_tls.c: the TLS profile; reload on SIGHUP */
typedef struct ssl_st SSL;
SSL_CTX *gw_tls_ctx_new(const gw_config_t *cfg, char *err, size_t errlen);
SSL *gw_tls_new_ssl(gw_server_t *s);   /* with the current context; NULL when out of memory */
int gw_tls_reload(gw_server_t *s);     /* GW_OK, or GW_ERROR (logged; the old context stays) */

/* gw_conn.c: connections */
#define GW_TLS_RECORD_MAX 16384 /* the most plaintext one TLS record carries */
/* A whole answer up to this size is queued in one evbuffer chain, whatever its
 * size, so that it leaves in as few TLS records as it can (gw_req_head). */
#define GW_ANSWER_ONE_CHAIN_MAX (4u << 20)
void gw_conn_accept(struct evconnlistener *l, int fd, struct sockaddr *sa, int salen, void *arg); /* arg: loop */
void gw_conn_accept_error(struct evconnlistener *l, void *arg);
void gw_conn_accept_resume(int fd, short what, void *arg);
struct evbuffer *gw_conn_out(gw_conn_t *c);
/* Write what gw_conn_out holds in this loop iteration, not after waiting for
 * writability (see gw_conn.c). */
void gw_conn_flush(gw_conn_t *c);
/* The request layer took r as the connection's current request. */
void gw_conn_begin(gw_conn_t *c, gw_req_t *r);
/* The current request is freed (answered or abandoned). */
void gw_conn_end(gw_conn_t *c);
/* Its answer is fully queued: go on with the next pipelined request, or
 * close after flushing when !keep_alive. */
void gw_conn_next(gw_conn_t *c, int keep_alive);
/* Hold c's output: nothing more of it is written until gw_conn_release_held
 * (the journal record of its answer waits for its write: gw_settle.c). */
void gw_conn_hold(gw_conn_t *c);
/* Let every held connection of l write again (and write now). */
void gw_conn_release_held(gw_loop_t *l);
/* Shutting down: close every connection without a request in flight. */
void gw_conn_close_idle(gw_loop_t *l);
void gw_conn_stop_all(gw_loop_t *l); /* shutdown grace over: end every request in flight (conn_ops->stop) */
void gw_conn_free(gw_conn_t *c);
/* Once shutting down, the loop ends when its last connection closed. */
void gw_loop_maybe_exit(gw_loop_t *l);
/* gw_mail.c: from any thread, activate ev (an event of loop l's base) on
 * l's thread; the mailbox's set-up on l->base (mail_fd -1 before) and its
 * release. */
void gw_loop_wake(gw_loop_t *l, struct event *ev);
int gw_loop_mail_init(gw_loop_t *l);
void gw_loop_mail_release(gw_loop_t *l);

/* gw_req.c: the request lifecycle */
extern const gw_conn_ops_t gw_req_conn_ops;
void gw_req_error(gw_req_t *r, int status, const char *type, const char *code, const char *param,
                  const char *msg);
/* Write the response head; clen -1: body of unknown length (chunked, or
 * close-delimited to an HTTP/1.0 client). */
void gw_req_head(gw_req_t *r, int status, const char *ctype, int64_t clen);
/* A whole answer: head and body (no body to HEAD), then gw_req_finish. */
void gw_req_answer(gw_req_t *r, int status, const char *ctype, const char *body, size_t len);
int gw_req_is_head(const gw_req_t *r); /* the request's method is HEAD: its answer has no body */
/* 405 with Allow: allow (e.g. "GET, HEAD"), the methods the endpoint takes. */
void gw_req_method_not_allowed(gw_req_t *r, const char *allow);
void gw_req_finish(gw_req_t *r);
struct evbuffer *gw_req_out(gw_req_t *r);
/* r's answer (what is queued and what follows) waits until gw_req_release_held. */
void gw_req_hold(gw_req_t *r);
void gw_req_release_held(gw_loop_t *l);

/* gw_settle.c: settlement of a request that reached a worker */
/* Settle once (r->proxied 1 -> 2) with what is known; bill_settle journals it. */
void gw_settle(gw_req_t *r);
/* Settle now, before the last bytes of the answer are queued for the client;
 * later calls do nothing. */
void gw_settle_done(gw_req_t *r, int status);
void gw_settle_stream_begin(gw_req_t *r); /* a stream's head is about to go out: its provisional row */
void gw_settle_stream_update(gw_req_t *r); /* chunks went out: a newer provisional row, at most once a second */
/* The loop's jflush_ev: write the journal records of this loop iteration's
 * settlements (one write(2)), then let their answers out. */
void gw_settle_flush_cb(int fd, short what, void *arg);
/* Token counts from a usage object (exact integers 0..1e12); GW_OK, or
 * GW_ERROR when usage is absent or malformed. */
int gw_settle_usage_json(gw_req_t *r, const tg_json_t *usage);
/* The gateway's own prompt count of a chat request; -1 unknown. */
int64_t gw_settle_prompt_count(gw_req_t *r);

/* gw_log.c: the access log (one JSON line per request) */
void gw_log_request(gw_req_t *r);
/* Append r's access-log line (JSON, newline-terminated) to b. */
void gw_log_format(tg_buf_t *b, const gw_req_t *r);
struct event_base *gw_event_base_new(void);
/* Lines are gathered per loop and written by its worker thread in batches: at
 * GW_LOG_BATCH bytes, GW_LOG_FLUSH_MS after the first line of a batch, and
 * when the loop stops (gw_log_flush). */
#define GW_LOG_BATCH 65536
#define GW_LOG_FLUSH_MS 100
int gw_log_init(gw_loop_t *l);
void gw_log_flush(gw_loop_t *l);
void gw_log_release(gw_loop_t *l);
/* Prompts above this many body bytes are counted on the loop's worker thread. */
#define GW_COUNT_OFFLOOP_BYTES 65536

/* gw_chat.c, gw_models.c: handlers */
extern const gw_handler_t gw_chat_handler, gw_completions_handler, gw_models_handler, gw_health_handler, gw_receipt_key_handler,
    gw_notfound_handler, gw_preflight_handler, gw_options_star_handler, gw_balance_handler;

/* gw_dash.c: /dashboard/ (static files from dashboard_dir, the JSON API in
 * billing: bill_dash), and the worker pool's /metrics for the operator. */
typedef struct gw_dash gw_dash_t;
gw_dash_t *gw_dash_new(struct event_base *base, const gw_config_t *cfg); /* NULL: out of memory */
void gw_dash_free(gw_dash_t *d);                                         /* accepts NULL */
extern const gw_handler_t gw_dash_handler; /* a target starting with /dashboard */

/* gw_auth.c: shared by the /v1 handlers */
int gw_model_known(const gw_config_t *cfg, const char *model);
/* The request's Bearer key, or NULL (answered 401). */
const char *gw_auth_bearer(gw_req_t *r);
/* 1 when key has neither shape nor a right checksum (answered 401). */
int gw_auth_refused_offline(gw_req_t *r, const char *key);
/* Answer an admission status that is not BILL_OK. */
void gw_auth_error(gw_req_t *r, bill_status_t st);
void gw_auth_model_not_allowed(gw_req_t *r, const char *model); /* 403 */
/* The key's limits (its own, else the defaults) and its customer's. */
void gw_auth_limits(gw_req_t *r, gw_rl_limits_t *key, gw_rl_limits_t *cust);
int gw_auth_limits_any(const gw_rl_limits_t *l);
/* Look at (not take) the limits, then `then` answers; GW_ERROR: no limits (or
 * out of memory), answer at once. */
int gw_auth_peek_limits(gw_req_t *r, gw_rl_cb then);

/* gw_admin.c: /metrics on the admin listener, gathered from every loop */
int gw_admin_loop_init(gw_loop_t *l);
void gw_admin_loop_release(gw_loop_t *l);
int gw_admin_start(gw_server_t *s);   /* after every loop is set up */
void gw_admin_stop(gw_server_t *s);   /* after the loops stopped, before billing is freed */

/* gw_routes.c */
const gw_handler_t *gw_routes_match(gw_req_t *r);

/* gw_supervise.c: the worker pool's supervisor (first loop's thread) */
int gw_sup_start(gw_server_t *s, char *err, size_t errlen); /* after the loops are set up */
void gw_sup_stop(gw_server_t *s);     /* after the loops stopped: SIGTERM (then SIGKILL) own workers */
/* Whether worker i passes its health checks (any thread); *since_us: when that last changed. */
int gw_sup_up(const gw_server_t *s, int i, int64_t *since_us);
SSL *gw_sup_tls_new(const gw_server_t *s, int i); /* a client SSL for https worker i; NULL: none */
void gw_sup_metrics(const gw_server_t *s, tg_buf_t *o);

/* gw_proxy.c */
void gw_proxy_start(gw_req_t *r);
void gw_proxy_resume(gw_req_t *r);   /* client output drained below the mark */
void gw_proxy_release(gw_req_t *r);  /* close (or keep) the worker connection (pool cleanup) */
int gw_proxy_stop(gw_req_t *r);      /* shutdown grace over: end a proxied request (GW_ERROR: not proxied) */
void gw_proxy_close_idle(gw_loop_t *l); /* close kept-alive worker connections */
/* Body to send upstream: the client's bytes unchanged, except that a
 * stream gets stream_options.include_usage forced on by splicing the text
 * (json is the parsed h->body, an object without duplicate stream_options).
 * Returns GW_OK and fills out, or GW_ERROR (out of memory). */
int gw_proxy_body(const gw_http_req_t *h, int stream, const tg_json_t *json, int64_t inject_max_tokens,
                  tg_buf_t *out);

#endif
