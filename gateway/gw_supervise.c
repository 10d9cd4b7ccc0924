/* gw_supervise.c — the worker pool's supervisor: starts the workers whose
 * config entry has a "command", health-checks every worker (GET /health with
 * a deadline, every second; the path is the entry's "health_path", an
 * external upstream's check carries its api_key), marks a failing or hung one
 * down so routing bypasses it, restarts an own worker that exited, stays hung,
 * or never became healthy within its "start_timeout_ms" with back-off, and stops the own workers when the gateway stops (after the
 * requests in flight drained).  Entries without "command" are attached to:
 * checked, never started.
 *
 * It runs on the first loop's thread.  What the other loops read of it (is
 * worker i up, since when) are atomics; everything else is its own.  The
 * TLS client contexts of https upstreams live here too (read-only once made,
 * SSL_new from any thread). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "gw-int.h"

#define GW_SUP_TICK_MS 1000      /* health-check period */
#define GW_SUP_DEADLINE_MS 2000  /* a check unanswered this long failed: hung */
#define GW_SUP_HANG_CHECKS 10    /* an own worker failing this many checks in a row (once up) is killed */
#define GW_SUP_BACKOFF_MIN_MS 500
#define GW_SUP_BACKOFF_MAX_MS 30000
#define GW_SUP_STOP_MS 5000      /* SIGTERM, then SIGKILL after this */

typedef struct gw_sup gw_sup_t;

typedef struct {
    gw_sup_t *sup;
    int index;
    const gw_worker_t *cfg;
    SSL_CTX *ctx;              /* https upstream: the client context */
    int up;                    /* atomic: routing may use it */
    int64_t up_since_us;       /* atomic: last change to up */
    pid_t pid;                 /* own worker running; 0: none */
    int started_once;
    int was_up;                /* healthy since its last start */
    int64_t started_us;        /* its last start */
    int start_killed;          /* killed for not becoming healthy in time (awaiting the reap) */
    int64_t next_start_us, backoff_ms;
    int consecutive;           /* failed checks in a row */
    uint64_t restarts, health_failures;
    struct bufferevent *hc;    /* the check in flight */
    int64_t hc_deadline_us;
} gw_sup_worker_t;

struct gw_sup {
    gw_server_t *srv;
    struct event_base *base;
    struct event *tick;
    gw_sup_worker_t *w;
    int n;
    int stopping;
};

static void gw_sup_set_up(gw_sup_worker_t *w, int up) {
    if (__atomic_load_n(&w->up, __ATOMIC_ACQUIRE) == up) return;
    __atomic_store_n(&w->up_since_us, tg_wall_us(), __ATOMIC_RELEASE);
    __atomic_store_n(&w->up, up, __ATOMIC_RELEASE);
    fprintf(stderr, "tollgate: worker %s %s\n", w->cfg->url, up ? "up" : "down");
}

int gw_sup_up(const gw_server_t *s, int i, int64_t *since_us) {
    if (!s->sup || i < 0 || i >= s->sup->n) {
        if (since_us) *since_us = 0;
        return 1;
    }
    gw_sup_worker_t *w = &s->sup->w[i];
    if (since_us) *since_us = __atomic_load_n(&w->up_since_us, __ATOMIC_ACQUIRE);
    return __atomic_load_n(&w->up, __ATOMIC_ACQUIRE);
}

struct ssl_ctx_st *gw_sup_tls_ctx(const gw_server_t *s, int i) {
    return s->sup && i >= 0 && i < s->sup->n ? s->sup->w[i].ctx : NULL;
}

/* A client SSL for worker wc: SNI and name (or address) verification. */
struct ssl_st *gw_sup_tls_new(const gw_server_t *s, int i) {
    SSL_CTX *ctx = gw_sup_tls_ctx(s, i);
    SSL *ssl = ctx ? SSL_new(ctx) : NULL;
    if (!ssl) return NULL;
    const char *host = s->cfg->workers[i].host;
    unsigned char a[16];
    int ip = inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
    if (!ip) SSL_set_tlsext_host_name(ssl, host);
    X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
    if (ip ? !X509_VERIFY_PARAM_set1_ip_asc(vp, host) : !SSL_set1_host(ssl, host)) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/* ---- health check ----------------------------------------------------------- */

/* SIGKILL an own worker and whatever it started (its process group, made
 * at fork; the pid alone if the child has not made it yet). */
static void gw_sup_kill(gw_sup_worker_t *w) {
    if (w->pid <= 0) return;
    if (kill(-w->pid, SIGKILL) != 0) kill(w->pid, SIGKILL);
}

static void gw_sup_hc_end(gw_sup_worker_t *w, int ok) {
    if (w->hc) bufferevent_free(w->hc);
    w->hc = NULL;
    if (ok) {
        w->consecutive = 0;
        w->was_up = 1;
        w->backoff_ms = 0;
        gw_sup_set_up(w, 1);
        return;
    }
    w->health_failures++;
    w->consecutive++;
    gw_sup_set_up(w, 0);
    if (w->pid > 0 && w->was_up && w->consecutive >= GW_SUP_HANG_CHECKS) {
        fprintf(stderr, "tollgate: worker %s hung (%d checks failed): killing it\n", w->cfg->url, w->consecutive);
        gw_sup_kill(w); /* reaped and restarted by the tick */
        w->consecutive = 0;
    }
}

static void gw_sup_hc_read(struct bufferevent *bev, void *arg) {
    gw_sup_worker_t *w = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n = evbuffer_get_length(in);
    if (n < 12) return;
    char line[13];
    evbuffer_copyout(in, line, 12);
    line[12] = '\0';
    gw_sup_hc_end(w, !strncmp(line, "HTTP/1.", 7) && !strncmp(line + 8, " 200", 4));
}

static void gw_sup_hc_event(struct bufferevent *bev, short what, void *arg) {
    gw_sup_worker_t *w = arg;
    if (what & BEV_EVENT_CONNECTED) return;
    gw_sup_hc_end(w, 0);
}

static void gw_sup_hc_start(gw_sup_worker_t *w) {
    const gw_worker_t *wc = w->cfg;
    struct event_base *base = w->sup->base;
    int fl = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (wc->tls) {
        SSL *ssl = gw_sup_tls_new(w->sup->srv, w->index);
        w->hc = ssl ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, fl) : NULL;
        if (!w->hc && ssl) SSL_free(ssl);
        if (w->hc) bufferevent_openssl_set_allow_dirty_shutdown(w->hc, 1);
    } else {
        w->hc = bufferevent_socket_new(base, -1, fl);
    }
    if (!w->hc) return;
    w->hc_deadline_us = tg_wall_us() + GW_SUP_DEADLINE_MS * 1000LL;
    struct timeval tv = {GW_SUP_DEADLINE_MS / 1000, (GW_SUP_DEADLINE_MS % 1000) * 1000};
    bufferevent_set_timeouts(w->hc, &tv, &tv);
    bufferevent_setcb(w->hc, gw_sup_hc_read, NULL, gw_sup_hc_event, w);
    struct evbuffer *o = bufferevent_get_output(w->hc);
    evbuffer_add_printf(o, "GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nConnection: close\r\n",
                        wc->health_path ? wc->health_path : "/health", strchr(wc->host, ':') ? "[" : "", wc->host,
                        strchr(wc->host, ':') ? "]" : "", wc->port);
    if (wc->api_key) evbuffer_add_printf(o, "Authorization: Bearer %s\r\n", wc->api_key);
    evbuffer_add(o, "\r\n", 2);
    bufferevent_enable(w->hc, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(w->hc, (struct sockaddr *)&wc->addr, (int)wc->addrlen) < 0) gw_sup_hc_end(w, 0);
}

/* ---- own workers -------------------------------------------------------------- */

static void gw_sup_spawn(gw_sup_worker_t *w) {
    char *const *argv = w->cfg->command;
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "tollgate: worker %s: fork: %s\n", w->cfg->url, strerror(errno));
        return;
    }
    if (pid == 0) {
        /* the child: its own process group (a terminal's Ctrl-C reaches the
         * gateway, which stops it after draining); dies with the gateway;
         * none of the gateway's descriptors */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (w->cfg->log) {
            int fd = open(w->cfg->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
        }
#ifdef SYS_close_range
        if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
            for (int fd = 3; fd < 65536; fd++) close(fd);
        execvp(argv[0], argv);
        _exit(127);
    }
    if (w->started_once) w->restarts++;
    w->started_once = 1;
    w->pid = pid;
    w->was_up = 0;
    w->started_us = tg_wall_us();
    w->start_killed = 0;
    w->consecutive = 0;
    fprintf(stderr, "tollgate: worker %s: started %s (pid %d)\n", w->cfg->url, argv[0], (int)pid);
}

/* An own worker exited (or was killed): down; restart after the back-off. */
static void gw_sup_exited(gw_sup_worker_t *w, int st) {
    if (WIFSIGNALED(st))
        fprintf(stderr, "tollgate: worker %s (pid %d) killed by signal %d\n", w->cfg->url, (int)w->pid, WTERMSIG(st));
    else
        fprintf(stderr, "tollgate: worker %s (pid %d) exited %d\n", w->cfg->url, (int)w->pid, WEXITSTATUS(st));
    w->pid = 0;
    if (w->hc) bufferevent_free(w->hc);
    w->hc = NULL;
    gw_sup_set_up(w, 0);
    w->backoff_ms = w->backoff_ms ? w->backoff_ms * 2 : GW_SUP_BACKOFF_MIN_MS;
    if (w->backoff_ms > GW_SUP_BACKOFF_MAX_MS) w->backoff_ms = GW_SUP_BACKOFF_MAX_MS;
    w->next_start_us = tg_wall_us() + w->backoff_ms * 1000;
}

static void gw_sup_on_tick(evutil_socket_t fd, short what, void *arg) {
    gw_sup_t *sp = arg;
    if (sp->stopping) return;
    int64_t now = tg_wall_us();
    for (int i = 0; i < sp->n; i++) {
        gw_sup_worker_t *w = &sp->w[i];
        int st;
        if (w->pid > 0 && waitpid(w->pid, &st, WNOHANG) == w->pid) gw_sup_exited(w, st);
        if (w->cfg->command && w->pid == 0) {
            if (now >= w->next_start_us) gw_sup_spawn(w);
            if (w->pid == 0) continue;
        }
        if (w->pid > 0 && !w->was_up && !w->start_killed && w->cfg->start_timeout_ms > 0 &&
            now - w->started_us > w->cfg->start_timeout_ms * 1000LL) {
            /* never healthy since its start: killed, reaped by a later tick, restarted after the back-off */
            fprintf(stderr, "tollgate: worker %s (pid %d) not healthy %d ms after its start: killing it\n",
                    w->cfg->url, (int)w->pid, w->cfg->start_timeout_ms);
            gw_sup_kill(w);
            w->start_killed = 1;
            continue;
        }
        if (w->hc) {
            if (now > w->hc_deadline_us) gw_sup_hc_end(w, 0); /* hung: the timeout did not fire */
            continue;
        }
        gw_sup_hc_start(w);
    }
}

/* ---- start, stop, metrics ------------------------------------------------------ */

static SSL_CTX *gw_sup_client_ctx(const gw_worker_t *wc, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = wc->tls_ca ? SSL_CTX_load_verify_locations(ctx, wc->tls_ca, NULL) : SSL_CTX_set_default_verify_paths(ctx);
    static const unsigned char alpn[] = "\x08http/1.1";
    if (!ok || SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1) != 0) {
        snprintf(err, errlen, "worker %s: cannot load its CA (%s)", wc->url, wc->tls_ca ? wc->tls_ca : "system");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int gw_sup_start(gw_server_t *s, char *err, size_t errlen) {
    const gw_config_t *cfg = s->cfg;
    gw_sup_t *sp = calloc(1, sizeof *sp);
    if (!sp || !(sp->w = calloc((size_t)cfg->nworkers, sizeof *sp->w))) {
        free(sp);
        snprintf(err, errlen, "out of memory");
        return GW_ERROR;
    }
    s->sup = sp;
    sp->srv = s;
    sp->base = s->loops[0].base;
    sp->n = cfg->nworkers;
    int64_t now = tg_wall_us();
    for (int i = 0; i < sp->n; i++) {
        gw_sup_worker_t *w = &sp->w[i];
        w->sup = sp;
        w->index = i;
        w->cfg = &cfg->workers[i];
        w->up = !w->cfg->command; /* attached: trusted until a check fails; own: once healthy */
        w->up_since_us = now;
        if (w->cfg->tls && !(w->ctx = gw_sup_client_ctx(w->cfg, err, errlen))) return GW_ERROR;
    }
    if (!(sp->tick = event_new(sp->base, -1, EV_PERSIST, gw_sup_on_tick, sp))) {
        snprintf(err, errlen, "out of memory");
        return GW_ERROR;
    }
    struct timeval tv = {GW_SUP_TICK_MS / 1000, (GW_SUP_TICK_MS % 1000) * 1000};
    event_add(sp->tick, &tv);
    for (int i = 0; i < sp->n; i++) /* own workers start now, checks begin at the first tick */
        if (sp->w[i].cfg->command) gw_sup_spawn(&sp->w[i]);
    return GW_OK;
}

/* After the loops stopped (requests in flight drained): SIGTERM the own
 * workers' process groups (a worker started by a wrapper script is the
 * wrapper's child: SIGTERM to the wrapper alone left it running), SIGKILL
 * what is left after GW_SUP_STOP_MS, and whatever of a group outlived its
 * leader once the leader is reaped. */
void gw_sup_stop(gw_server_t *s) {
    gw_sup_t *sp = s->sup;
    if (!sp) return;
    sp->stopping = 1;
    int left = 0;
    for (int i = 0; i < sp->n; i++)
        if (sp->w[i].pid > 0 && (kill(-sp->w[i].pid, SIGTERM) == 0 || kill(sp->w[i].pid, SIGTERM) == 0)) left++;
    int64_t until = tg_wall_us() + GW_SUP_STOP_MS * 1000LL;
    while (left) {
        left = 0;
        for (int i = 0; i < sp->n; i++) {
            gw_sup_worker_t *w = &sp->w[i];
            int st;
            if (w->pid > 0 && waitpid(w->pid, &st, WNOHANG) == w->pid) {
                kill(-w->pid, SIGKILL); /* its group's stragglers (ESRCH when none) */
                w->pid = 0;
            }
            if (w->pid > 0 && tg_wall_us() > until) {
                fprintf(stderr, "tollgate: worker %s (pid %d) ignored SIGTERM: SIGKILL\n", w->cfg->url, (int)w->pid);
                gw_sup_kill(w);
                waitpid(w->pid, &st, 0);
                w->pid = 0;
            }
            left += w->pid > 0;
        }
        if (left) usleep(20000);
    }
    for (int i = 0; i < sp->n; i++) {
        if (sp->w[i].hc) bufferevent_free(sp->w[i].hc);
        if (sp->w[i].ctx) SSL_CTX_free(sp->w[i].ctx);
    }
    if (sp->tick) event_free(sp->tick);
    free(sp->w);
    free(sp);
    s->sup = NULL;
}

/* The pool's part of /metrics (on the first loop's thread, as the supervisor). */
void gw_sup_metrics(const gw_server_t *s, tg_buf_t *o) {
    const gw_sup_t *sp = s->sup;
    if (!sp) return;
    tg_buf_printf(o, "# HELP tollgate_worker_up 1 while the worker passes its health checks.\n"
                     "# TYPE tollgate_worker_up gauge\n");
    for (int i = 0; i < sp->n; i++)
        tg_buf_printf(o, "tollgate_worker_up{worker=\"%s\"} %d\n", sp->w[i].cfg->url, sp->w[i].up);
    tg_buf_printf(o, "# HELP tollgate_worker_restarts_total Restarts of a worker the gateway runs.\n"
                     "# TYPE tollgate_worker_restarts_total counter\n");
    for (int i = 0; i < sp->n; i++)
        tg_buf_printf(o, "tollgate_worker_restarts_total{worker=\"%s\"} %llu\n", sp->w[i].cfg->url,
                      (unsigned long long)sp->w[i].restarts);
    tg_buf_printf(o, "# HELP tollgate_worker_health_failures_total Failed or timed-out health checks.\n"
                     "# TYPE tollgate_worker_health_failures_total counter\n");
    for (int i = 0; i < sp->n; i++)
        tg_buf_printf(o, "tollgate_worker_health_failures_total{worker=\"%s\"} %llu\n", sp->w[i].cfg->url,
                      (unsigned long long)sp->w[i].health_failures);
    tg_buf_printf(o, "# HELP tollgate_worker_pid The process id of a worker the gateway runs (0: none).\n"
                     "# TYPE tollgate_worker_pid gauge\n");
    for (int i = 0; i < sp->n; i++)
        if (sp->w[i].cfg->command)
            tg_buf_printf(o, "tollgate_worker_pid{worker=\"%s\"} %d\n", sp->w[i].cfg->url, (int)sp->w[i].pid);
}
