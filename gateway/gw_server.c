/* gw_server.c — the process: reads the secrets, makes the TLS context, loads
 * the tokenizer, starts the event loop(s) — each with its listener, billing,
 * Redis limiter and worker state — and stops them: SIGTERM stops accepting,
 * closes idle connections and lets requests in flight finish for
 * shutdown_grace_ms.  Requests are answered by the layers below
 * (gw_conn.c -> gw_req.c -> the handlers named in gw_routes.c). */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "gw-int.h"
#include "tg_work.h"
#include "tok.h"

static char *gw_read_secret(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = '\0';
    if (!n) {
        snprintf(err, errlen, "%s: empty", path);
        return NULL;
    }
    char *s = strdup(buf);
    memset(buf, 0, sizeof buf);
    if (!s) snprintf(err, errlen, "out of memory");
    return s;
}

/* The grace is over.  The requests still running are ended as a failed
 * worker would end them, so each client gets an answer it can read (a 503,
 * or a stream's error event and its end) and each is settled with what was
 * seen; their last bytes get GW_STOP_FLUSH_MS to leave, then the loop ends
 * (connections still open are closed).  Before (2026-11-30) the loop ended at
 * once: a stream's client saw its chunked body cut off mid-way, no error, no
 * end, and a plain request's connection closed without an answer. */
#define GW_STOP_FLUSH_MS 1000
static void gw_on_grace(evutil_socket_t fd, short what, void *arg) {
    gw_loop_t *l = arg;
    if (l->grace_over) {
        event_base_loopexit(l->base, NULL);
        return;
    }
    l->grace_over = 1;
    gw_conn_stop_all(l);
    struct timeval tv = {GW_STOP_FLUSH_MS / 1000, (GW_STOP_FLUSH_MS % 1000) * 1000};
    event_add(l->grace, &tv);
    gw_loop_maybe_exit(l);
}

static void gw_loop_shutdown(gw_loop_t *l) {
    if (l->shutting_down) return;
    l->shutting_down = 1;
    if (l->lis) evconnlistener_free(l->lis); /* closes the socket: new connections are refused at once */
    l->lis = NULL;
    gw_conn_close_idle(l);
    int64_t ms = l->srv->cfg->shutdown_grace_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    event_add(l->grace, &tv);
    gw_loop_maybe_exit(l);
}

static void gw_on_stop(evutil_socket_t fd, short what, void *arg) { gw_loop_shutdown(arg); }

/* On the first loop's thread (the signal's): the others are told through
 * their stop event, each shuts down on its own thread. */
void gw_server_shutdown(gw_server_t *s) {
    for (int i = 0; i < s->nloops; i++) {
        if (i == 0) gw_loop_shutdown(&s->loops[0]);
        else gw_loop_wake(&s->loops[i], s->loops[i].stop_ev);
    }
}

/* An event loop's base.  epoll's change list folds the enable/disable pairs
 * a bufferevent makes within one loop iteration into one epoll_ctl (or none).
 * No lock: only the loop's own thread calls into its base (other threads
 * wake it through gw_loop_wake); a locked base took and released its mutex
 * about 38 times per request (every event_add, event_del, event_active). */
struct event_base *gw_event_base_new(void) {
    struct event_config *ec = event_config_new();
    if (!ec) return NULL;
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    struct event_base *b = event_base_new_with_config(ec);
    event_config_free(ec);
    return b;
}

/* One loop's own parts: billing, the Redis limiter, worker state, the
 * listener. */
static int gw_loop_init(gw_loop_t *l, gw_server_t *s, int index, struct event_base *base, const char *token,
                        const char *secret, char *err, size_t errlen) {
    const gw_config_t *cfg = s->cfg;
    l->srv = s;
    l->index = index;
    l->mail_fd = -1;
    l->base = base;
    if (!(l->stop_ev = event_new(base, -1, 0, gw_on_stop, l))) return GW_ERROR;
    if (gw_loop_mail_init(l) != GW_OK) return GW_ERROR;
    if (!(l->jflush_ev = event_new(base, -1, 0, gw_settle_flush_cb, l))) return GW_ERROR;
    const char *fault = getenv("TOLLGATE_FAULT");
    l->fault_journal_stall = fault && !strcmp(fault, "journal-stall");
    if (!(l->work = tg_work_new(base, 1))) return GW_ERROR;
    if (gw_log_init(l) != GW_OK) return GW_ERROR;
    if (!(l->up = calloc((size_t)cfg->nworkers, sizeof *l->up))) return GW_ERROR;
    for (int i = 0; i < cfg->nworkers; i++) {
        l->up[i].cfg = &cfg->workers[i];
        l->up[i].index = i;
        l->up[i].bo = &s->backoff[i];
    }
    gw_rl_opts_t ro = {
        .redis = cfg->redis,
        .cluster = (int)cfg->redis_cluster,
        .timeout_ms = (int)cfg->redis_timeout_ms,
        .fail_closed = (int)cfg->redis_fail_closed,
        .lease_ms = cfg->concurrency_lease_ms,
        .auth_fail_limit = cfg->auth_fail_limit,
        .auth_fail_window_ms = cfg->auth_fail_window_ms,
        .auth_fail_block_ms = cfg->auth_fail_block_ms,
        .auth_fail_table = cfg->auth_fail_table,
        .share = index ? s->loops[0].rl : NULL, /* one in-process limiter and auth throttle per process */
    };
    if (!(l->rl = gw_rl_new(base, &ro, err, errlen))) return GW_ERROR;
    /* each loop's billing has its own spool (and lease holder, named after it) */
    char spool[4096];
    snprintf(spool, sizeof spool, "%s/loop%d", cfg->spool_dir, index);
    bill_opts_t bo = {
        .pg_conninfo = cfg->postgres,
        .admin_listen = index == 0 && cfg->admin_listen && *cfg->admin_listen ? cfg->admin_listen : NULL,
        .admin_token = token,
        .key_secret = secret,
        .spool_dir = spool,
        .last_used_flush_ms = (int)cfg->key_last_used_flush_ms,
        .key_cache_ttl_ms = (int)cfg->key_cache_ttl_ms,
        .key_cache_fallback_ms = (int)cfg->key_cache_fallback_ms,
        .key_negative_ttl_ms = (int)cfg->key_negative_ttl_ms,
        .price_cache_ms = (int)cfg->price_cache_ms,
        .lease_chunk_pico = cfg->lease_chunk_pico,
        .lease_ttl_ms = (int)cfg->lease_ttl_ms,
        .lease_idle_ms = (int)cfg->lease_idle_ms,
        .invoice_finalize_after_s = (int)cfg->invoice_finalize_after_s,
        .receipt_key = cfg->receipt_key && *cfg->receipt_key && access(cfg->receipt_key, F_OK) == 0 ? cfg->receipt_key
                                                                                                   : NULL,
        .journal_group = 1, /* one journal write per loop iteration (gw_settle.c) */
        .journal_disk_failing = &s->journal_disk_failing, /* the loops' spools share spool_dir's disk */
    };
    if (!bo.receipt_key && cfg->receipt_key && *cfg->receipt_key && index == 0)
        fprintf(stderr, "tollgate: warning: no usage receipts: %s: %s\n", cfg->receipt_key, strerror(errno));
    char berr[256] = "";
    l->bill = bill_new(base, &bo, berr, sizeof berr);
    if (!l->bill) {
        snprintf(err, errlen, "billing: %s", berr[0] ? berr : "start-up failed");
        return GW_ERROR;
    }

    char host[256];
    int port;
    if (gw_split_hostport(cfg->listen, host, sizeof host, &port) != GW_OK) {
        snprintf(err, errlen, "listen: bad address \"%s\" (want host:port)", cfg->listen);
        return GW_ERROR;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai) || !ai) {
        snprintf(err, errlen, "listen: cannot resolve %s", host);
        return GW_ERROR;
    }
    /* every loop binds the port: the kernel spreads connections (SO_REUSEPORT) */
    l->lis = evconnlistener_new_bind(base, gw_conn_accept, l,
                                     LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_FREE, 1024,
                                     ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!l->lis) {
        snprintf(err, errlen, "listen %s: %s", cfg->listen, strerror(errno));
        return GW_ERROR;
    }
    evconnlistener_set_error_cb(l->lis, gw_conn_accept_error);
    if (!(l->grace = evtimer_new(base, gw_on_grace, l))) return GW_ERROR;
    if (!(l->accept_pause = evtimer_new(base, gw_conn_accept_resume, l))) return GW_ERROR;
    if (!(l->dash = gw_dash_new(base, cfg))) return GW_ERROR;
    if (gw_admin_loop_init(l) != GW_OK) return GW_ERROR;
    return GW_OK;
}

static void gw_loop_release(gw_loop_t *l) {
    if (!l->srv) return;
    l->shutting_down = 1;
    while (l->conns) gw_conn_free(l->conns); /* settles what was in flight */
    gw_log_release(l);     /* the gathered access-log lines go to the worker thread ... */
    tg_work_free(l->work); /* ... which writes them; counts of freed requests dropped */
    tg_buf_free(&l->alog);
    tg_buf_free(&l->scratch);
    free(l->up_spill);
    l->up_spill = NULL;
    l->work = NULL;
    if (l->lis) evconnlistener_free(l->lis);
    if (l->up) gw_proxy_close_idle(l);
    gw_rl_free(l->rl);
    gw_dash_free(l->dash);
    bill_free(l->bill); /* flushes settlements */
    if (l->jflush_ev) event_free(l->jflush_ev);
    if (l->grace) event_free(l->grace);
    if (l->accept_pause) event_free(l->accept_pause);
    gw_admin_loop_release(l);
    if (l->stop_ev) event_free(l->stop_ev);
    gw_loop_mail_release(l);
    free(l->up);
    if (l->index > 0 && l->base) event_base_free(l->base);
}

static void *gw_loop_thread(void *arg) {
    gw_loop_t *l = arg;
    event_base_dispatch(l->base);
    gw_block_cache_drain(); /* what this loop's requests left in its thread's cache */
    return NULL;
}

int gw_server_start(gw_server_t *s, char *err, size_t errlen) {
    for (int i = 1; i < s->nloops; i++) {
        int e = pthread_create(&s->loops[i].thread, NULL, gw_loop_thread, &s->loops[i]);
        if (e) {
            snprintf(err, errlen, "cannot start event loop %d: %s", i, strerror(e));
            gw_server_shutdown(s);
            return GW_ERROR;
        }
        s->loops[i].started = 1;
    }
    return GW_OK;
}

int gw_server_loops(const gw_server_t *s) { return s->nloops; }

void gw_server_join(gw_server_t *s) {
    for (int i = 1; i < s->nloops; i++)
        if (s->loops[i].started) {
            pthread_join(s->loops[i].thread, NULL);
            s->loops[i].started = 0;
        }
}

/* The number of event loops: cfg->loops, else one per core. */
/* Moves a spool's journal files into the first loop's, and those of its
 * cut streams' provisional rows (<spool>/streams) into the first loop's
 * streams, so that loop replays both: the journal's rows first, then the
 * streams' (bill_settle.c).  Without the second, a restart with fewer loops
 * left the dropped loops' cut streams unbilled. */
static int spool_adopt(const char *from, const char *spool0, char *err, size_t errlen) {
    char a[4200], b[4200];
    if (mtr_spool_adopt(from, spool0, err, errlen) != 0) return -1;
    snprintf(a, sizeof a, "%s/streams", from);
    snprintf(b, sizeof b, "%s/streams", spool0);
    if (mkdir(spool0, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "spool directory %s: %s", spool0, strerror(errno));
        return -1;
    }
    return access(a, F_OK) == 0 ? mtr_spool_adopt(a, b, err, errlen) : 0;
}

static int gw_nloops(const gw_config_t *cfg) {
    if (cfg->loops > 0) return (int)cfg->loops;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

gw_server_t *gw_server_new(struct event_base *base, const gw_config_t *cfg, char *err, size_t errlen) {
    char *token = NULL, *secret = NULL;
    *err = '\0';
    gw_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->cfg = cfg;
    s->spool_lock = -1;
    s->conn_ops = &gw_req_conn_ops;
    s->route = gw_routes_match;
    s->started = tg_wall_us() / 1000000;
    if (!(s->ssl = gw_tls_ctx_new(cfg, err, errlen))) goto fail;
    if (!(token = gw_read_secret(cfg->admin_token_file, err, errlen))) goto fail;
    if (!(secret = gw_read_secret(cfg->key_secret_file, err, errlen))) goto fail;
    if (cfg->access_log && *cfg->access_log) {
        if (!strcmp(cfg->access_log, "-")) s->alog = stdout;
        else if (!(s->alog = fopen(cfg->access_log, "a"))) {
            snprintf(err, errlen, "access_log %s: %s", cfg->access_log, strerror(errno));
            goto fail;
        }
    }
    if (cfg->chat_template && !strcmp(cfg->chat_template, "deepseek_v3")) s->tmpl = TOK_TMPL_DEEPSEEK_V3;
    else if (cfg->chat_template && !strcmp(cfg->chat_template, "deepseek_r1")) s->tmpl = TOK_TMPL_DEEPSEEK_R1;
    else if (cfg->chat_template && !strcmp(cfg->chat_template, "mixtral")) s->tmpl = TOK_TMPL_MIXTRAL;
    else {
        snprintf(err, errlen, "chat_template: want deepseek_v3, deepseek_r1 or mixtral");
        goto fail;
    }
    if (cfg->tokenizer && *cfg->tokenizer) {
        char terr[256];
        if (!(s->tok = tok_load(cfg->tokenizer, terr, sizeof terr)))
            fprintf(stderr, "tollgate: warning: no prompt counting (TPM estimates from bytes): %s\n", terr);
    }
    /* One gateway per spool directory (its loops have a subdirectory each);
     * rows a single-loop run left in the directory itself go to the first
     * loop's, which replays them. */
    if ((s->spool_lock = mtr_spool_lock(cfg->spool_dir, err, errlen)) < 0) goto fail;
    char spool0[4096];
    snprintf(spool0, sizeof spool0, "%s/loop0", cfg->spool_dir);
    if (spool_adopt(cfg->spool_dir, spool0, err, errlen) != 0) goto fail;
    s->nloops = gw_nloops(cfg);
    for (int j = s->nloops; j < 256; j++) { /* ... and those of loops an earlier run had, this one has not */
        char old[4096];
        snprintf(old, sizeof old, "%s/loop%d", cfg->spool_dir, j);
        if (access(old, F_OK) == 0 && spool_adopt(old, spool0, err, errlen) != 0) goto fail;
    }
    if (!(s->backoff = calloc((size_t)cfg->nworkers + 1, sizeof *s->backoff))) goto fail;
    if (!(s->loops = calloc((size_t)s->nloops, sizeof *s->loops))) goto fail;
    for (int i = 0; i < s->nloops; i++) {
        struct event_base *lb = i == 0 ? base : gw_event_base_new();
        if (!lb) goto fail;
        if (gw_loop_init(&s->loops[i], s, i, lb, token, secret, err, errlen) != GW_OK) {
            if (!s->loops[i].srv && i > 0) event_base_free(lb);
            goto fail;
        }
    }
    if (gw_admin_start(s) != GW_OK) goto fail;
    if (gw_sup_start(s, err, errlen) != GW_OK) goto fail;
    free(token);
    free(secret);
    return s;
fail:
    if (!*err) snprintf(err, errlen, "out of memory");
    free(token);
    free(secret);
    gw_server_free(s);
    return NULL;
}

void gw_server_free(gw_server_t *s) {
    if (!s) return;
    gw_admin_stop(s);
    gw_server_join(s);
    gw_sup_stop(s); /* every loop has drained: stop the workers the gateway started */
    /* last to first: the first loop owns what the others borrow (the in-process limiter) */
    for (int i = s->nloops - 1; s->loops && i >= 0; i--) gw_loop_release(&s->loops[i]);
    free(s->loops);
    free(s->backoff);
    mtr_spool_unlock(s->spool_lock);
    if (s->ssl) SSL_CTX_free(s->ssl);
    tok_free(s->tok);
    if (s->alog && s->alog != stdout) fclose(s->alog);
    free(s);
    gw_block_cache_drain(); /* the first loop's, and what the loops' release put */
}

void gw_server_reload(gw_server_t *s) { gw_tls_reload(s); }
