/* gw_dash.c — the dashboards at /dashboard/: static files and the JSON API.
 *
 * The gateway only carries bytes here: /dashboard/api/... goes to billing
 * (bill_dash, billing/bill_dash*.c: sessions, CSRF, the views' SQL), whose
 * answer is sent back as is; every other /dashboard/ path is one of the files
 * of `dashboard_dir` (default build/web, assembled by `make` from web/ and the
 * pinned npm packages), read once at start into memory, so a path never
 * reaches the file system and nothing can be served from outside that folder.
 *
 * For the operator's view of the worker pool, the gateway reads each worker's
 * /metrics (Prometheus text) every 2 s while that view is being looked at (an
 * operator's request in the last 60 s), and hands billing a JSON snapshot
 * when billing asks for one, which it does only for an operator's session
 * (so no one else's request makes the gateway poll): per worker
 * the gateway's own view (in flight, failures, back-off) and the engine's
 * gauges (sequences, queue depth, KV cache), tokens/s from the difference of
 * two readings, and every other unlabelled sample. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "gw-int.h"

#define DASH_MAX_FILE (8 << 20)
#define DASH_MAX_FILES 64
#define POLL_MS 2000
#define WATCH_S 60

typedef struct {
    char name[64];            /* "index.html", "vendor/chart.umd.js" */
    const char *ctype;
    char *data;
    size_t len;
} gw_dash_file_t;

typedef struct gw_dash_worker {
    struct gw_dash *d;        /* back pointer for the poll's callback */
    struct evhttp_connection *conn;
    int polled, up, busy;
    int64_t at_us;            /* last good reading */
    double completion, prev_completion, tokens_per_s;
    int64_t prev_at_us;
    char *samples;            /* JSON object members "name":value of the last reading */
} gw_dash_worker_t;

struct gw_dash {
    struct event_base *base;
    const gw_config_t *cfg;
    gw_dash_file_t files[DASH_MAX_FILES];
    int nfiles;
    gw_dash_worker_t *w;
    struct event *poll;
    int64_t watched_until_us;
};

/* ---- static files --------------------------------------------------------- */

static const char *gw_dash_ctype(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return "application/octet-stream";
    if (!strcmp(dot, ".html")) return "text/html; charset=utf-8";
    if (!strcmp(dot, ".js")) return "text/javascript; charset=utf-8";
    if (!strcmp(dot, ".css")) return "text/css; charset=utf-8";
    if (!strcmp(dot, ".svg")) return "image/svg+xml";
    if (!strcmp(dot, ".png")) return "image/png";
    if (!strcmp(dot, ".json")) return "application/json";
    return "application/octet-stream";
}

/* Load dir/rel (a folder) recursively, one level of subfolders. */
static void gw_dash_load_dir(gw_dash_t *d, const char *dir, const char *rel, int depth) {
    char path[512];
    snprintf(path, sizeof path, "%s%s%s", dir, *rel ? "/" : "", rel);
    DIR *dh = opendir(path);
    if (!dh) return;
    struct dirent *e;
    while ((e = readdir(dh)) && d->nfiles < DASH_MAX_FILES) {
        if (e->d_name[0] == '.') continue;
        char name[64], full[600];
        if ((size_t)snprintf(name, sizeof name, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >= sizeof name) continue;
        snprintf(full, sizeof full, "%s/%s", dir, name);
        struct stat st;
        if (stat(full, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < 1) gw_dash_load_dir(d, dir, name, depth + 1);
            continue;
        }
        if (!S_ISREG(st.st_mode) || st.st_size > DASH_MAX_FILE) continue;
        FILE *f = fopen(full, "rb");
        char *data = f ? malloc((size_t)st.st_size + 1) : NULL;
        if (data && fread(data, 1, (size_t)st.st_size, f) == (size_t)st.st_size) {
            gw_dash_file_t *g = &d->files[d->nfiles++];
            snprintf(g->name, sizeof g->name, "%s", name);
            g->ctype = gw_dash_ctype(name);
            g->data = data;
            g->len = (size_t)st.st_size;
            data = NULL;
        }
        free(data);
        if (f) fclose(f);
    }
    closedir(dh);
}

static const gw_dash_file_t *gw_dash_file(const gw_dash_t *d, const char *name, size_t n) {
    for (int i = 0; i < d->nfiles; i++)
        if (strlen(d->files[i].name) == n && !memcmp(d->files[i].name, name, n)) return &d->files[i];
    return NULL;
}

/* Headers of every dashboard answer: no framing by others, no sniffing, and
 * scripts, styles and pictures from this origin only. */
static const char GW_DASH_HEADERS[] =
    "X-Content-Type-Options: nosniff\r\n"
    "X-Frame-Options: DENY\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Content-Security-Policy: default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'\r\n";

static void gw_dash_send(gw_req_t *r, int status, const char *ctype, const char *extra, const char *body,
                         size_t len) {
    size_t n = strlen(GW_DASH_HEADERS) + (extra ? strlen(extra) : 0) + 1;
    char *h = gw_palloc(r->pool, n);
    if (h) snprintf(h, n, "%s%s", GW_DASH_HEADERS, extra ? extra : "");
    r->extra_headers = h;
    gw_req_head(r, status, ctype, (int64_t)len);
    if (!r->client_gone && strcmp(r->http->method, "HEAD") != 0) evbuffer_add(gw_req_out(r), body, len);
    gw_req_finish(r);
}

/* An error of the gateway's own under /dashboard/ (no such file, a method, out
 * of memory): the API's JSON error with the dashboard's headers, as every
 * other dashboard answer (before 2026-12-01 these had no nosniff, framing or
 * cache headers).  allow: the Allow header's value for a 405, else NULL. */
static void gw_dash_error(gw_req_t *r, int status, const char *type, const char *code, const char *allow,
                          const char *msg) {
    size_t n = strlen(GW_DASH_HEADERS) + sizeof "Cache-Control: no-store\r\n" + (allow ? strlen(allow) + 9 : 0);
    char *h = gw_palloc(r->pool, n);
    if (h) snprintf(h, n, "%s%s%s%sCache-Control: no-store\r\n", GW_DASH_HEADERS, allow ? "Allow: " : "",
                    allow ? allow : "", allow ? "\r\n" : "");
    r->extra_headers = h;
    gw_req_error(r, status, type, code, NULL, msg);
}

/* ---- the worker pool (operator's view) --------------------------------------- */

static void gw_dash_poll_cb(evutil_socket_t fd, short what, void *arg);

/* The samples without labels of a Prometheus text body, as JSON members. */
static char *gw_dash_samples(const char *body, size_t len, double *completion) {
    tg_buf_t b = {0};
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        char line[256];
        if (n > 0 && n < sizeof line && p[0] != '#') {
            memcpy(line, p, n);
            line[n] = 0;
            char *sp = strchr(line, ' ');
            if (sp && !memchr(line, '{', (size_t)(sp - line))) {
                *sp = 0;
                char *ve;
                double v = strtod(sp + 1, &ve);
                if (ve != sp + 1 && v == v) {
                    if (!strcmp(line, "tollgate_engine_completion_tokens_total")) *completion = v;
                    tg_buf_printf(&b, "%s\"%s\":%.17g", b.len ? "," : "", line, v);
                }
            }
        }
        p += n + 1;
    }
    if (!b.p) return strdup("");
    return b.p;
}

static void gw_dash_metrics_done(struct evhttp_request *req, void *arg) {
    gw_dash_worker_t *w = arg;
    w->busy = 0;
    w->polled = 1;
    if (!req || evhttp_request_get_response_code(req) != 200) {
        w->up = 0;
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const char *body = (const char *)evbuffer_pullup(in, -1);
    double completion = -1;
    char *s = gw_dash_samples(body ? body : "", body ? n : 0, &completion);
    if (!s) return;
    free(w->samples);
    w->samples = s;
    int64_t now = tg_wall_us();
    if (completion >= 0 && w->prev_at_us && completion >= w->prev_completion && now > w->prev_at_us)
        w->tokens_per_s = (completion - w->prev_completion) / ((now - w->prev_at_us) / 1e6);
    w->prev_completion = completion;
    w->prev_at_us = now;
    w->at_us = now;
    w->up = 1;
}

static void gw_dash_poll_now(gw_dash_t *d) {
    for (int i = 0; i < d->cfg->nworkers; i++) {
        gw_dash_worker_t *w = &d->w[i];
        const gw_worker_t *cw = &d->cfg->workers[i];
        if (w->busy) continue;
        if (!w->conn) {
            w->conn = evhttp_connection_base_new(d->base, NULL, cw->host, (unsigned short)cw->port);
            if (!w->conn) continue;
            evhttp_connection_set_timeout(w->conn, 2);
        }
        struct evhttp_request *req = evhttp_request_new(gw_dash_metrics_done, w);
        if (!req) continue;
        w->d = d;
        evhttp_add_header(evhttp_request_get_output_headers(req), "Host", cw->host);
        if (evhttp_make_request(w->conn, req, EVHTTP_REQ_GET, "/metrics") != 0) continue; /* req freed, cb not run */
        w->busy = 1;
    }
}

static void gw_dash_poll_cb(evutil_socket_t fd, short what, void *arg) {
    gw_dash_t *d = arg;
    (void)fd;
    (void)what;
    if (tg_wall_us() > d->watched_until_us) return; /* nobody looks: stop until asked again */
    gw_dash_poll_now(d);
    struct timeval tv = {POLL_MS / 1000, (POLL_MS % 1000) * 1000};
    evtimer_add(d->poll, &tv);
}

/* The pool as JSON (malloc'ed), and start watching it; up: the run-time
 * state of each worker as the asking request's loop sees it.  Called only
 * by billing, once it knows an operator asks (gw_dash_workers_cb). */
static char *gw_dash_workers_json(gw_dash_t *d, const gw_upstream_t *up) {
    int64_t now = tg_wall_us();
    if (now > d->watched_until_us) {
        d->watched_until_us = now + (int64_t)WATCH_S * 1000000;
        if (!evtimer_pending(d->poll, NULL)) event_active(d->poll, EV_TIMEOUT, 1);
    }
    d->watched_until_us = now + (int64_t)WATCH_S * 1000000;
    tg_buf_t b = {0};
    tg_buf_printf(&b, "{\"object\":\"list\",\"poll_ms\":%d,\"data\":[", POLL_MS);
    for (int i = 0; i < d->cfg->nworkers; i++) {
        const gw_worker_t *cw = &d->cfg->workers[i];
        const gw_upstream_t *u = &up[i];
        gw_dash_worker_t *w = &d->w[i];
        const char *state = __atomic_load_n(&u->bo->down_until_us, __ATOMIC_RELAXED) > now ? "backoff" : !w->polled ? "unknown" : w->up ? "up" : "down";
        tg_buf_printf(&b, "%s{\"url\":\"", i ? "," : "");
        tg_json_write_chars(&b, cw->url, strlen(cw->url));
        tg_buf_printf(&b, "\",\"models\":[");
        for (int j = 0; j < cw->nmodels; j++) {
            tg_buf_printf(&b, "%s\"", j ? "," : "");
            tg_json_write_chars(&b, cw->models[j], strlen(cw->models[j]));
            tg_buf_printf(&b, "\"");
        }
        tg_buf_printf(&b,
                      "],\"state\":\"%s\",\"outstanding\":%d,\"requests\":%llu,\"failures\":%llu,"
                      "\"tokens_per_s\":%.3f,\"read_ms_ago\":%lld,\"metrics\":{%s}}",
                      state, u->outstanding, (unsigned long long)u->requests, (unsigned long long)u->failures,
                      w->up ? w->tokens_per_s : 0.0, w->at_us ? (long long)((now - w->at_us) / 1000) : -1LL,
                      w->up && w->samples ? w->samples : "");
    }
    tg_buf_printf(&b, "]}");
    return b.p;
}

/* ---- the API -------------------------------------------------------------- */

typedef struct {
    gw_req_t *r;
    bill_dash_call_t *call;
} gw_dash_ctx_t;

static void gw_dash_ctx_cancel(void *arg) {
    gw_dash_ctx_t *x = arg;
    bill_dash_cancel(x->call);
    x->call = NULL;
}

/* bill_dash_req_t.workers: billing asks for the pool after the operator
 * check, never after the call is cancelled (so x->r is alive). */
static char *gw_dash_workers_cb(void *arg) {
    gw_dash_ctx_t *x = arg;
    gw_dash_t *d = x->r->loop->dash;
    return d ? gw_dash_workers_json(d, x->r->loop->up) : NULL;
}

static void gw_dash_api_done(const bill_dash_resp_t *resp, void *arg) {
    gw_dash_ctx_t *x = arg;
    x->call = NULL;
    gw_dash_send(x->r, resp->status, resp->content_type, resp->headers, resp->body, resp->body_len);
}

static void gw_dash_api(gw_req_t *r, const char *path, size_t n) {
    const char *t = r->http->target, *qm = strchr(t, '?');
    gw_dash_ctx_t *x = gw_palloc(r->pool, sizeof *x);
    char *p = gw_pstrndup(r->pool, path, n);
    if (!x || !p) {
        gw_dash_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    bill_dash_req_t q = {
        .method = r->http->method,
        .path = p,
        .query = qm ? qm + 1 : NULL,
        .cookie = gw_http_header(r->http, "Cookie"),
        .csrf = gw_http_header(r->http, "X-CSRF-Token"),
        .origin = gw_http_header(r->http, "Origin"),
        .host = gw_http_header(r->http, "Host"),
        .peer = r->conn->peer,
        .body = r->http->body,
        .body_len = r->http->body_len,
        .workers = gw_dash_workers_cb,
        .workers_arg = x,
    };
    x->r = r;
    x->call = bill_dash(r->loop->bill, &q, gw_dash_api_done, x);
    if (!x->call || gw_pool_cleanup_add(r->pool, gw_dash_ctx_cancel, x) != GW_OK) {
        bill_dash_cancel(x->call);
        x->call = NULL;
        gw_dash_error(r, 500, "server_error", NULL, NULL, "out of memory");
    }
}

static void gw_dash_route(gw_req_t *r) {
    gw_dash_t *d = r->loop->dash;
    const char *t = r->http->target, *m = r->http->method;
    size_t n = strcspn(t, "?#");
    static const char api[] = "/dashboard/api/";
    if (n == 10) { /* "/dashboard" */
        gw_dash_send(r, 301, "text/plain; charset=utf-8", "Location: /dashboard/\r\n", "", 0);
        return;
    }
    if (n > sizeof api - 1 && !strncmp(t, api, sizeof api - 1)) {
        gw_dash_api(r, t + sizeof api - 1, n - (sizeof api - 1));
        return;
    }
    if (strcmp(m, "GET") && strcmp(m, "HEAD")) {
        char msg[128];
        snprintf(msg, sizeof msg, "Method %.16s is not allowed on this endpoint; use GET, HEAD", m);
        gw_dash_error(r, 405, "invalid_request_error", "method_not_allowed", "GET, HEAD", msg);
        return;
    }
    const char *name = t + 11; /* after "/dashboard/" */
    size_t len = n - 11;
    if (len == 0) name = "index.html", len = 10;
    const gw_dash_file_t *f = d ? gw_dash_file(d, name, len) : NULL;
    if (!f) {
        gw_dash_error(r, 404, "invalid_request_error", "not_found", NULL,
                     d && d->nfiles ? "No such dashboard file"
                                    : "The dashboard's files are not built (make builds them into dashboard_dir)");
        return;
    }
    gw_dash_send(r, 200, f->ctype, "Cache-Control: no-cache\r\n", f->data, f->len);
}

gw_dash_t *gw_dash_new(struct event_base *base, const gw_config_t *cfg) {
    gw_dash_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->base = base;
    d->cfg = cfg;
    d->w = calloc((size_t)(cfg->nworkers > 0 ? cfg->nworkers : 1), sizeof *d->w);
    d->poll = evtimer_new(base, gw_dash_poll_cb, d);
    if (!d->w || !d->poll) {
        gw_dash_free(d);
        return NULL;
    }
    if (cfg->dashboard_dir && *cfg->dashboard_dir) gw_dash_load_dir(d, cfg->dashboard_dir, "", 0);
    if (!gw_dash_file(d, "index.html", 10))
        fprintf(stderr, "tollgate: warning: no dashboard files in %s (run make)\n",
                cfg->dashboard_dir ? cfg->dashboard_dir : "(none)");
    return d;
}

void gw_dash_free(gw_dash_t *d) {
    if (!d) return;
    for (int i = 0; i < d->nfiles; i++) free(d->files[i].data);
    if (d->w)
        for (int i = 0; i < d->cfg->nworkers; i++) {
            if (d->w[i].conn) evhttp_connection_free(d->w[i].conn); /* pending requests: callback with NULL */
            free(d->w[i].samples);
        }
    if (d->poll) event_free(d->poll);
    free(d->w);
    free(d);
}

const gw_handler_t gw_dash_handler = {GW_ROUTE_OTHER, gw_dash_route, NULL, NULL, NULL};
