/* gw_proxy.c — one chat completion on a worker: pick a worker that serves
 * the model (prefix affinity within a load slack, else the fewest requests in
 * flight), send the client's JSON over plain HTTP/1.1 (kept-alive connections
 * reused) with X-Request-Id, and relay the answer.
 *
 * Streams (worker answers 200 text/event-stream): the worker's body is
 * de-chunked, split into SSE events and each event goes to the client as one
 * chunk as soon as it is whole.  The gateway always asks the worker for
 * stream_options.include_usage so it learns the usage; the usage-only chunk
 * is dropped on the way when the client did not ask for it.  When the
 * client's output buffer passes stream_high_water, reading the worker pauses
 * until it drains to half (backpressure).
 * Anything else (non-streaming answers, worker errors) is buffered whole and
 * passed through with its status; the usage of a JSON answer is read.
 *
 * Failures: a worker that refuses the connection (or does not accept it in
 * time) is marked and the next one serving the model is tried; none left ->
 * 502.  No answer head within
 * upstream_timeout_ms -> 504.  A stream broken or stalled after it started
 * ends with an SSE error event.  The worker connection is closed whenever the
 * request dies (client gone), which cancels the generation on the worker. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/ssl.h>

#include "api.h"
#include "gw-int.h"
#include "tg_json.h"
#include "tg_mem.h"
#include "tok.h"

#define GW_UP_MAX_HEAD 65536
#define GW_UP_MAX_BODY (64 << 20)
#define GW_UP_MAX_EVENT (16 << 20)

static void gw_up_on_read(struct bufferevent *bev, void *arg);
static void gw_up_on_event(struct bufferevent *bev, short what, void *arg);

/* ---- kept-alive worker connections ----------------------------------------
 * An answer that ended cleanly (framed by Content-Length or chunked, no
 * "Connection: close", nothing extra after it) leaves its connection in the
 * worker's idle list; the next request to that worker takes it.  An idle
 * connection that reads anything, closes, or stays idle 30 s is dropped, and
 * one whose socket already holds an end (or bytes) is dropped when taken.
 *
 * Retries (gateway/README.md "Worker pool"): a request goes to another worker
 * only when it provably never reached the first one's scheduler: the
 * connection failed, or closed before the request was fully written (a
 * worker reads the whole body before it runs anything), or an own worker
 * answered 503 (it refuses before its scheduler: queue full, draining).  A
 * request fully written on a connection that then closed unanswered may have
 * run: it is answered 502, never sent again. */

#define GW_UP_MAX_IDLE 1024

/* ---- reading a kept worker connection -------------------------------------
 * libevent's socket bufferevent reads through evbuffer_read, which asks the
 * kernel how much is readable (ioctl FIONREAD) before every read and reads at
 * most 4 KiB per loop iteration: a system call more per answer, and ten loop
 * iterations for a 40 KiB answer.  A plain (not TLS) connection that is kept
 * is read by an event of its own from the moment it is first parked until it
 * is closed: up to 4 KiB + 64 KiB per readv(2), into its bufferevent's input.  Parked,
 * the event watches it (anything readable, or 30 s idle: dropped); taken by a
 * request, the same event reads the answer and calls what the bufferevent
 * would (gw_up_on_read; gw_up_on_event with BEV_EVENT_READING and EOF, ERROR
 * or TIMEOUT), its timeout the upstream timeout, restarted by every read as
 * the bufferevent's read timeout is.  The event stays added across requests
 * (its timeout is changed in place), so taking and parking change nothing in
 * epoll: a delete and an add of the same descriptor in one loop iteration cost
 * an epoll_ctl(MOD).  The bufferevent keeps the rest: writing, its write
 * timeout, connecting.  A fresh connection is read by its bufferevent until
 * it is first parked; a TLS one always. */
#define GW_UP_READ_INLINE 4000 /* reserved in the input: its chain, with libevent's header, 4 KiB */
#define GW_UP_SPILL 65536       /* the rest of one read */

typedef struct gw_upconn {
    struct gw_upconn *next;
    gw_upstream_t *w;
    struct bufferevent *bev;
    struct event rd;   /* the read event (own) */
    int own;           /* rd is assigned and added: the bufferevent never reads */
    gw_req_t *r;       /* the request it serves; NULL: parked */
} gw_upconn_t;

/* Close u (parked or not), free it. */
static void gw_upconn_close(gw_upconn_t *u) {
    if (u->own) event_del(&u->rd);
    bufferevent_free(u->bev);
    free(u);
}

static void gw_upconn_drop(gw_upconn_t *u) {
    for (gw_upconn_t **pp = &u->w->idle; *pp; pp = &(*pp)->next)
        if (*pp == u) {
            *pp = u->next;
            u->w->nidle--;
            break;
        }
    gw_upconn_close(u);
}

static void gw_upconn_on_read(struct bufferevent *bev, void *arg) { gw_upconn_drop(arg); }
static void gw_upconn_on_event(struct bufferevent *bev, short what, void *arg) { gw_upconn_drop(arg); }

static void gw_up_timeout(const gw_req_t *r, struct timeval *t) {
    int64_t ms = r->srv->cfg->upstream_timeout_ms;
    t->tv_sec = (time_t)(ms / 1000);
    t->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

static void gw_upconn_read_cb(evutil_socket_t fd, short what, void *arg) {
    gw_upconn_t *u = arg;
    gw_req_t *r = u->r;
    if (!r) { /* parked: an end, stray bytes or 30 s idle */
        gw_upconn_drop(u);
        return;
    }
    if ((what & EV_TIMEOUT) && !(what & EV_READ)) {
        event_del(&u->rd); /* as a bufferevent stops reading after an event */
        gw_up_on_event(u->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, r);
        return;
    }
    /* into the input's last chain (a small one: answers are mostly small), and what does not fit
     * there into the loop's spill buffer, copied to the input after: one readv for up to 64 KiB
     * without a 64 KiB chain per answer */
    gw_loop_t *l = r->loop;
    if (!l->up_spill) l->up_spill = malloc(GW_UP_SPILL);
    struct evbuffer *in = bufferevent_get_input(u->bev);
    struct evbuffer_iovec v[1];
    ssize_t n = -1;
    int err = ENOMEM;
    evbuffer_unfreeze(in, 0); /* a socket bufferevent's input is frozen at its end outside its own read */
    if (l->up_spill && evbuffer_reserve_space(in, GW_UP_READ_INLINE, v, 1) == 1) {
        struct iovec iov[2] = {{v[0].iov_base, v[0].iov_len}, {l->up_spill, GW_UP_SPILL}};
        n = readv(fd, iov, 2);
        err = errno;
        size_t got = n > 0 ? (size_t)n : 0, first = got < v[0].iov_len ? got : v[0].iov_len;
        v[0].iov_len = first;
        evbuffer_commit_space(in, v, 1);
        if (got > first && evbuffer_add(in, l->up_spill, got - first) != 0) n = -1, err = ENOMEM;
    }
    evbuffer_freeze(in, 0);
    if (n > 0) {
        gw_up_on_read(u->bev, r); /* may end and free r, and release u */
        return;
    }
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)) return;
    event_del(&u->rd);
    errno = err;
    gw_up_on_event(u->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), r);
}

/* Park the connection of a request that ended cleanly (u: its own-read
 * connection, or NULL for one read by its bufferevent). */
static void gw_upconn_park(gw_upstream_t *w, struct bufferevent *bev, gw_upconn_t *u) {
    if (!u && w->nidle < GW_UP_MAX_IDLE && (u = tg_zalloc(sizeof *u))) {
        u->bev = bev;
        u->w = w;
        /* a plain socket from now on read by its own event (above); TLS by its bufferevent */
        if (!w->cfg->tls && event_assign(&u->rd, bufferevent_get_base(bev), bufferevent_getfd(bev),
                                         EV_READ | EV_PERSIST, gw_upconn_read_cb, u) == 0) {
            bufferevent_disable(bev, EV_READ);
            u->own = 1;
        }
    }
    if (!u || w->nidle >= GW_UP_MAX_IDLE) {
        if (u) gw_upconn_close(u);
        else bufferevent_free(bev);
        return;
    }
    u->r = NULL;
    u->next = w->idle;
    w->idle = u;
    w->nidle++;
    bufferevent_setcb(bev, gw_upconn_on_read, NULL, gw_upconn_on_event, u);
    struct timeval idle = {30, 0};
    if (u->own) {
        bufferevent_set_timeouts(bev, NULL, NULL);
        event_add(&u->rd, &idle); /* still added (unless an event stopped it): only its timeout changes */
    } else {
        bufferevent_set_timeouts(bev, &idle, NULL);
        bufferevent_enable(bev, EV_READ);
    }
}

/* Stop reading r's worker connection (a stream's client is behind), and go on. */
static void gw_up_read_pause(gw_req_t *r) {
    if (r->upc && r->upc->own) event_del(&r->upc->rd);
    else bufferevent_disable(r->up, EV_READ);
}

static void gw_up_read_resume(gw_req_t *r) {
    if (r->upc && r->upc->own) {
        struct timeval t;
        gw_up_timeout(r, &t);
        event_add(&r->upc->rd, &t);
    } else {
        bufferevent_enable(r->up, EV_READ);
    }
}

/* Nothing pending on an idle connection's socket: no end, no stray bytes. */
static int gw_upconn_quiet(struct bufferevent *bev) {
    char c;
    if (evbuffer_get_length(bufferevent_get_input(bev))) return 0;
    ssize_t n = recv(bufferevent_getfd(bev), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Write o to fd now.  A socket bufferevent keeps its output frozen at the
 * front except inside its own write callback, so a plain evbuffer_write on it
 * writes nothing (it did nothing here before, and every request waited for a
 * write event); the freeze is lifted for this one write, as libevent's write
 * callback does. */
static void gw_evbuffer_write_now(struct evbuffer *o, evutil_socket_t fd) {
    evbuffer_unfreeze(o, 1);
    (void)evbuffer_write(o, fd);
    evbuffer_freeze(o, 1);
}

/* An idle connection to w that can take a request, or NULL.  One whose
 * socket shows an end or bytes is closed. */
static gw_upconn_t *gw_upconn_take(gw_upstream_t *w) {
    while (w->idle) {
        gw_upconn_t *u = w->idle;
        w->idle = u->next;
        w->nidle--;
        u->next = NULL;
        if (gw_upconn_quiet(u->bev)) return u;
        gw_upconn_close(u); /* closed (or chattering) while idle: a request sent there could not be placed */
    }
    return NULL;
}

void gw_proxy_close_idle(gw_loop_t *l) {
    for (int i = 0; i < l->srv->cfg->nworkers; i++)
        while (l->up[i].idle) gw_upconn_drop(l->up[i].idle);
}

void gw_proxy_release(gw_req_t *r) {
    if (r->up) {
        gw_upconn_t *u = r->upc;
        if (u) u->r = NULL;
        if (r->up_reusable && r->worker && !evbuffer_get_length(bufferevent_get_input(r->up)))
            gw_upconn_park(r->worker, r->up, u);
        else if (u)
            gw_upconn_close(u);
        else
            bufferevent_free(r->up);
        r->up = NULL;
        r->upc = NULL;
        r->up_reusable = 0;
    }
    if (r->worker) {
        r->worker->outstanding--;
        r->worker = NULL; /* r->worker_url keeps the name for the log */
    }
}

/* Add "stream_options":{"include_usage":true} for a stream.  The client's
 * bytes are kept as they are (numbers such as a 64-bit seed must not go
 * through a double, text may hold \u0000): the change is spliced into the
 * text at the byte spans tg_json recorded.  gw_route_chat refused a body with
 * two "stream_options". */
static int gw_proxy_body_stream(const gw_http_req_t *h, int stream, const tg_json_t *json, tg_buf_t *out);

/* The body forwarded to the worker: the client's, with stream_options for a
 * stream (below) and, when inject_max_tokens > 0 (the client gave no cap),
 * "max_tokens":N, so the worker stops where the hold and the TPM charge
 * assumed: in place of the value of a "max_tokens":null the client sent (a
 * second member would be a duplicate key, which the worker refuses), else as
 * a new first member. */
int gw_proxy_body(const gw_http_req_t *h, int stream, const tg_json_t *json, int64_t inject_max_tokens,
                  tg_buf_t *out) {
    if (gw_proxy_body_stream(h, stream, json, out) != GW_OK) return GW_ERROR;
    if (inject_max_tokens <= 0) return GW_OK;
    size_t off, len;
    char put[48];
    const tg_json_t *mt = tg_json_get(json, "max_tokens");
    if (mt) { /* null: api/ read no cap from it, and gw_route_chat refused a body with two */
        tg_json_span(mt, &off, &len);
        /* the stream edits lie at the root's start or inside stream_options' value,
         * apart from this member: text after them moved by what they added */
        size_t at = off;
        if (stream) {
            const tg_json_t *so = tg_json_get(json, "stream_options");
            size_t soff = 0, slen;
            if (so) tg_json_span(so, &soff, &slen);
            if (off > soff) at = off + out->len - h->body_len;
        }
        if (at + len > out->len || len != 4 || memcmp(out->p + at, "null", 4)) return GW_ERROR;
        int n = snprintf(put, sizeof put, "%lld", (long long)inject_max_tokens);
        size_t tail = out->len - at - len;
        if ((size_t)n > len && tg_buf_put(out, put, (size_t)n - len) != GW_OK) return GW_ERROR; /* room */
        memmove(out->p + at + n, out->p + at + len, tail);
        memcpy(out->p + at, put, (size_t)n);
        out->len = at + (size_t)n + tail;
        return GW_OK;
    }
    tg_json_span(json, &off, &len);
    if (off >= out->len || out->p[off] != '{') return GW_ERROR;
    size_t i = off + 1;
    while (i < out->len && (out->p[i] == ' ' || out->p[i] == '\t' || out->p[i] == '\n' || out->p[i] == '\r')) i++;
    int empty = i < out->len && out->p[i] == '}';
    int n = snprintf(put, sizeof put, "\"max_tokens\":%lld%s", (long long)inject_max_tokens, empty ? "" : ",");
    if (tg_buf_put(out, put, (size_t)n) != GW_OK) return GW_ERROR; /* room, then move */
    memmove(out->p + off + 1 + n, out->p + off + 1, out->len - n - off - 1);
    memcpy(out->p + off + 1, put, (size_t)n);
    return GW_OK;
}

static int gw_proxy_body_stream(const gw_http_req_t *h, int stream, const tg_json_t *json, tg_buf_t *out) {
    out->len = 0;
    if (!stream) return tg_buf_put(out, h->body, h->body_len);
    const tg_json_t *so = tg_json_get(json, "stream_options");
    size_t off, len;
    const char *put;
    if (!so) { /* a new first member */
        tg_json_span(json, &off, &len);
        off += 1, len = 0;
        put = tg_json_len(json) ? "\"stream_options\":{\"include_usage\":true}," : "\"stream_options\":{\"include_usage\":true}";
    } else if (tg_json_type(so) != TG_JSON_OBJECT) { /* null or junk: replaced */
        tg_json_span(so, &off, &len);
        put = "{\"include_usage\":true}";
    } else if (tg_json_get(so, "include_usage")) { /* every include_usage set: a peer may read the first */
        size_t at = 0;
        const tg_json_t *m;
        TG_JSON_FOREACH(m, so) {
            size_t kl;
            const char *k = tg_json_key(m, &kl);
            if (kl != 13 || memcmp(k, "include_usage", 13)) continue;
            tg_json_span(m, &off, &len);
            if (off < at || off + len > h->body_len) return GW_ERROR;
            if (tg_buf_put(out, h->body + at, off - at) != GW_OK || tg_buf_put(out, "true", 4) != GW_OK)
                return GW_ERROR;
            at = off + len;
        }
        return tg_buf_put(out, h->body + at, h->body_len - at);
    } else { /* a new first member of stream_options */
        tg_json_span(so, &off, &len);
        off += 1, len = 0;
        put = tg_json_len(so) ? "\"include_usage\":true," : "\"include_usage\":true";
    }
    if (off + len > h->body_len) return GW_ERROR;
    if (tg_buf_put(out, h->body, off) != GW_OK || tg_buf_put(out, put, strlen(put)) != GW_OK) return GW_ERROR;
    return tg_buf_put(out, h->body + off + len, h->body_len - off - len);
}

/* A worker that refused a connection is skipped for a while (1 s, doubling
 * up to 30 s while it keeps refusing); one that answers is trusted again. */
static void gw_worker_refused(gw_upstream_t *w) {
    w->failures++;
    int64_t ms = __atomic_load_n(&w->bo->backoff_ms, __ATOMIC_RELAXED);
    ms = ms ? (ms * 2 > 30000 ? 30000 : ms * 2) : 1000;
    int64_t now = tg_wall_us();
    __atomic_store_n(&w->bo->backoff_ms, ms, __ATOMIC_RELAXED);
    __atomic_store_n(&w->bo->refused_us, now, __ATOMIC_RELAXED);
    __atomic_store_n(&w->bo->down_until_us, now + ms * 1000, __ATOMIC_RELAXED);
}

/* Skipped: refused a connection lately, on any loop (unless a health check
 * passed since), or failing its health checks (gw_supervise.c). */
static int gw_worker_down(gw_req_t *r, gw_upstream_t *w, int64_t now) {
    int64_t since;
    if (!gw_sup_up(r->srv, w->index, &since)) return 1;
    return __atomic_load_n(&w->bo->down_until_us, __ATOMIC_RELAXED) > now &&
           __atomic_load_n(&w->bo->refused_us, __ATOMIC_RELAXED) >= since;
}

static uint64_t gw_fnv(uint64_t h, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ULL;
    return h;
}

static uint64_t gw_mix(uint64_t x) { /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Prefix affinity: requests whose prompts start alike should meet the same
 * worker's prefix cache.  With a tokenizer (the gateway's own workers) the
 * key is the worker's own notion of a prefix: the chained hash of the first
 * KV block(s) of token ids of the rendered prompt (api_chat_prefix_key,
 * common/tg_prefix.h), so two requests get the same worker exactly when the
 * worker could serve the second one's first block(s) from its cache (a
 * shorter prompt: the hash of all its tokens).
 * Without a tokenizer: a hash of the first 256 bytes of the messages' roles
 * and text. */
static uint64_t gw_affinity_key(const gw_req_t *r) {
    if (r->srv->tok && r->chat && r->have_prefix_key) return r->prefix_key; /* tokenized once, by the count */
    if (r->srv->tok && r->chat) return api_chat_prefix_key(r->chat, (tok_tmpl_kind_t)r->srv->tmpl, r->srv->tok);
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t budget = 256;
    if (r->cmpl && r->chat) { /* completions: the prompt's first bytes */
        h = gw_fnv(h, r->chat->prompt ? r->chat->prompt : "", r->chat->prompt_len < budget ? r->chat->prompt_len : budget);
        return h ? h : 1;
    }
    const tg_json_t *m;
    TG_JSON_FOREACH(m, tg_json_get(r->json, "messages")) {
        size_t rn = 0, n = 0;
        const char *role = tg_json_str(tg_json_get(m, "role"), &rn);
        const char *content = tg_json_str(tg_json_get(m, "content"), &n);
        if (role) h = gw_fnv(h, role, rn);
        if (!content) break;
        if (n > budget) n = budget;
        h = gw_fnv(h, content, n);
        budget -= n;
        if (!budget) break;
    }
    return h ? h : 1;
}

/* Pick a worker serving r->model, not yet tried for this request; workers
 * marked down only when no other is left.  Among the rest: the one the
 * prompt's prefix hashes to (rendezvous hashing, so adding a worker moves
 * few prefixes), unless it has 2 more requests in flight than the least
 * busy one; then the least busy. */
static gw_upstream_t *gw_pick_worker(gw_req_t *r) {
    const gw_config_t *cfg = r->srv->cfg;
    gw_upstream_t *best = NULL, *pref = NULL;
    int besti = -1, prefi = -1, best_down = 0, pref_down = 0;
    uint64_t pref_score = 0;
    int64_t now = tg_wall_us();
    unsigned start = r->loop->rr++;
    for (int k = 0; k < cfg->nworkers; k++) {
        int i = (int)((start + (unsigned)k) % (unsigned)cfg->nworkers);
        if (i < 64 && (r->tried & (1ull << i))) continue;
        gw_upstream_t *w = &r->loop->up[i];
        const gw_worker_t *wc = w->cfg;
        int serves = 0;
        for (int j = 0; j < wc->nmodels && !serves; j++) serves = !strcmp(wc->models[j], r->model);
        if (!serves) continue;
        int down = gw_worker_down(r, w, now);
        if (!best || (best_down && !down) || (down == best_down && w->outstanding < best->outstanding))
            best = w, besti = i, best_down = down;
        uint64_t score = gw_mix(r->affinity ^ gw_fnv(0xcbf29ce484222325ULL, wc->url, strlen(wc->url)));
        if (!pref || (pref_down && !down) || (down == pref_down && score > pref_score))
            pref = w, prefi = i, pref_down = down, pref_score = score;
    }
    if (r->affinity && pref && pref_down == best_down && pref->outstanding <= best->outstanding + 2)
        best = pref, besti = prefi;
    if (best && besti < 64) r->tried |= 1ull << besti;
    return best;
}

static void gw_up_fail(gw_req_t *r, int status, const char *code, const char *msg);

/* Is a worker serving r->model left that this request has not tried? */
static int gw_worker_untried(const gw_req_t *r) {
    const gw_config_t *cfg = r->srv->cfg;
    for (int i = 0; i < cfg->nworkers; i++) {
        if (i < 64 && (r->tried & (1ull << i))) continue;
        const gw_worker_t *wc = &cfg->workers[i];
        for (int j = 0; j < wc->nmodels; j++)
            if (!strcmp(wc->models[j], r->model)) return 1;
    }
    return 0;
}

static void gw_up_connect(gw_req_t *r) {
    gw_loop_t *l = r->loop;
    gw_upstream_t *w = gw_pick_worker(r);
    const gw_worker_t *wc = w ? w->cfg : NULL;
    if (!w) {
        if (r->proxied) gw_up_fail(r, 502, "upstream_unavailable", "No inference worker could be reached");
        else gw_up_fail(r, 503, "no_worker", "No inference worker serves this model");
        return;
    }
    r->worker = w;
    r->worker_url = wc->url;
    r->up_got_bytes = r->up_eof = r->up_connected = 0;
    w->outstanding++;
    w->requests++;
    r->proxied = 1;
    const gw_config_t *cfg = l->srv->cfg;
    struct timeval rt = {(time_t)(cfg->upstream_timeout_ms / 1000), (suseconds_t)(cfg->upstream_timeout_ms % 1000) * 1000};
    struct timeval ct = {(time_t)(cfg->upstream_connect_timeout_ms / 1000),
                         (suseconds_t)(cfg->upstream_connect_timeout_ms % 1000) * 1000};
    r->upc = r->no_reuse ? NULL : gw_upconn_take(w);
    r->up = r->upc ? r->upc->bev : NULL;
    r->up_reused = r->up != NULL;
    r->up_external = wc->tls;
    if (!r->up && wc->tls) { /* an external upstream: TLS, its own key */
        SSL *ssl = gw_sup_tls_new(r->srv, w->index);
        r->up = ssl ? bufferevent_openssl_socket_new(l->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                     BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)
                    : NULL;
        if (r->up) bufferevent_openssl_set_allow_dirty_shutdown(r->up, 1);
        else if (ssl) SSL_free(ssl);
    } else if (!r->up) {
        r->up = bufferevent_socket_new(l->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    }
    if (!r->up) {
        gw_up_fail(r, 500, "internal_error", "out of memory");
        return;
    }
    bufferevent_setcb(r->up, gw_up_on_read, NULL, gw_up_on_event, r);
    bufferevent_set_timeouts(r->up, &rt, r->up_reused ? &rt : &ct);
    int direct = r->up_reused && !wc->tls; /* written at once below, not through a write event */
    if (direct) bufferevent_disable(r->up, EV_WRITE);
    struct evbuffer *o = bufferevent_get_output(r->up);
    tg_buf_t *h = &l->scratch; /* the head, assembled without printf */
    int v6 = strchr(wc->host, ':') != NULL;
    tg_buf_consume(h, h->len);
    tg_buf_puts(h, r->cmpl ? "POST /v1/completions HTTP/1.1\r\nHost: " : "POST /v1/chat/completions HTTP/1.1\r\nHost: ");
    if (v6) tg_buf_puts(h, "[");
    tg_buf_puts(h, wc->host);
    tg_buf_puts(h, v6 ? "]:" : ":");
    tg_buf_put_i64(h, wc->port);
    tg_buf_puts(h, r->stream ? "\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nX-Request-Id: "
                             : "\r\nContent-Type: application/json\r\nAccept: application/json\r\nX-Request-Id: ");
    tg_buf_puts(h, r->id);
    tg_buf_puts(h, "\r\nContent-Length: ");
    tg_buf_put_i64(h, (long long)r->scratch.len);
    tg_buf_puts(h, cfg->upstream_keepalive ? "\r\nConnection: keep-alive\r\n" : "\r\nConnection: close\r\n");
    if (!wc->tls) { /* one of ours: its prefix cache namespace is the customer's (common/tg_prefix.h) */
        tg_buf_puts(h, "X-Cache-Namespace: c");
        tg_buf_put_i64(h, r->key.customer_id);
        tg_buf_puts(h, "\r\n");
    }
    if (r->inject_max_tokens > 0 && !wc->tls) {
        /* the max_tokens written in is our default, not the client's: our worker
         * caps it by the context left instead of refusing a prompt that fits */
        tg_buf_puts(h, "X-Tollgate-Default-Max-Tokens: ");
        tg_buf_put_i64(h, r->inject_max_tokens);
        tg_buf_puts(h, "\r\n");
    }
    if (wc->api_key) {
        tg_buf_puts(h, "Authorization: Bearer ");
        tg_buf_puts(h, wc->api_key);
        tg_buf_puts(h, "\r\n");
    }
    tg_buf_puts(h, "\r\n");
    if (h->oom) {
        tg_buf_free(h);
        gw_up_fail(r, 500, "internal_error", "out of memory");
        return;
    }
    evbuffer_add(o, h->p, h->len);
    evbuffer_add(o, r->scratch.p, r->scratch.len);
    if (direct) {
        /* A kept connection is writable: write now, as nginx does, and wait for
         * writability only for what the socket did not take (no epoll change
         * to add and drop a write event per request).  On an error the bytes
         * stay queued: the write event then fails with them unsent, and the
         * request goes again on a fresh connection (gw_up_on_event). */
        gw_evbuffer_write_now(o, bufferevent_getfd(r->up));
        if (evbuffer_get_length(o)) bufferevent_enable(r->up, EV_WRITE);
        r->upc->r = r;
        gw_up_read_resume(r); /* own read: the event's timeout becomes the upstream timeout */
    } else {
        bufferevent_enable(r->up, EV_READ | EV_WRITE);
    }
    if (r->up_reused) {
        r->up_connected = 1;
        l->m.upstream_reuses++;
        return;
    }
    l->m.upstream_connects++;
    if (bufferevent_socket_connect(r->up, (struct sockaddr *)&wc->addr, (int)wc->addrlen) < 0) {
        gw_worker_refused(w); /* refusals come through the event callback; this is the rest */
        l->m.upstream_errors++;
        gw_proxy_release(r);
        gw_up_connect(r);
    }
}

void gw_proxy_start(gw_req_t *r) {
    /* the workers keep each customer's prefix cache apart (X-Cache-Namespace
     * below), so the same prompt of two customers is two prefixes: the
     * customer is part of the key */
    uint64_t a = gw_affinity_key(r);
    r->affinity = a ? gw_mix(a ^ (uint64_t)r->key.customer_id * 0x9e3779b97f4a7c15ULL) | 1 : 0;
    if (gw_proxy_body(r->http, r->stream, r->json, r->inject_max_tokens, &r->scratch) != GW_OK) {
        gw_req_error(r, 500, "server_error", "internal_error", NULL, "out of memory");
        return;
    }
    gw_up_connect(r);
}

/* Error before anything of the answer reached the client, or at the end of
 * a started stream. */
/* End r with an error: before the head an OpenAI error body (status), after
 * it (mid-stream) an error event and the stream's end; settled with what was
 * seen either way. */
static void gw_proxy_end_error(gw_req_t *r, int status, const char *code, const char *msg) {
    if (!r->head_sent) {
        gw_proxy_release(r);
        gw_settle_done(r, status); /* before the head: it carries the receipt */
        gw_req_error(r, status, "server_error", code, NULL, msg);
        return;
    }
    /* mid-stream: tell the client in the stream, then end it cleanly */
    r->error_code = code;
    tg_buf_t b = {0};
    tg_buf_printf(&b, "data: {\"error\":{\"message\":\"");
    tg_json_write_chars(&b, msg, strlen(msg));
    tg_buf_printf(&b, "\",\"type\":\"server_error\",\"param\":null,\"code\":\"%s\"}}\n\n", code);
    struct evbuffer *o = gw_req_out(r);
    if (b.p) {
        if (r->client_chunked) evbuffer_add_printf(o, "%zx\r\n", b.len);
        evbuffer_add(o, b.p, b.len);
        if (r->client_chunked) evbuffer_add(o, "\r\n", 2);
    }
    tg_buf_free(&b);
    if (r->client_chunked) evbuffer_add(o, "0\r\n\r\n", 5); /* the framing stays intact: keep-alive is fine */
    else r->keep_alive = 0;
    gw_proxy_release(r);
    gw_req_finish(r);
}

static void gw_up_fail(gw_req_t *r, int status, const char *code, const char *msg) {
    if (r->worker) r->worker->failures++;
    if (status == 504) r->loop->m.upstream_timeouts++;
    else if (status >= 500) r->loop->m.upstream_errors++;
    gw_proxy_end_error(r, status, code, msg);
}

int gw_proxy_stop(gw_req_t *r) {
    if (r->proxied != 1 || r->done) return GW_ERROR;
    gw_proxy_end_error(r, 503, "server_shutting_down",
                       r->head_sent ? "The gateway is shutting down; the answer was cut short"
                                    : "The gateway is shutting down; the request was not answered, retry");
    return GW_OK;
}

static void gw_client_chunk(gw_req_t *r, const char *p, size_t n) {
    struct evbuffer *o = gw_req_out(r);
    if (!n) return;
    size_t queued = evbuffer_get_length(o);
    if (r->client_chunked) evbuffer_add_printf(o, "%zx\r\n", n);
    evbuffer_add(o, p, n);
    if (r->client_chunked) evbuffer_add(o, "\r\n", 2);
    /* out now, unless earlier bytes still wait for the socket (then its
     * write event is armed: no write attempt per chunk to a slow reader) */
    if (!queued) gw_conn_flush(r->conn);
}

/* Does the JSON text have `field` with a non-empty string value?  A cheap
 * look, no parse: counts generated chunks for a stream cut before usage. */
static int gw_has_text(const char *json, const char *field) {
    const char *p = strstr(json, field);
    if (!p) return 0;
    p += strlen(field);
    while (*p == ' ') p++;
    if (*p++ != ':') return 0;
    while (*p == ' ') p++;
    return p[0] == '"' && p[1] != '"';
}

/* Does the JSON text have `field` with an object value?  Cheap look. */
static int gw_has_object(const char *json, const char *field) {
    for (const char *p = strstr(json, field); p; p = strstr(p + 1, field)) {
        const char *q = p + strlen(field);
        while (*q == ' ') q++;
        if (*q++ != ':') continue;
        while (*q == ' ') q++;
        if (*q == '{') return 1;
    }
    return 0;
}

/* Tokens of text a worker generated: counted with the model's tokenizer
 * (without one: a token per 4 bytes, rounded up). */
static int64_t gw_count_tokens(gw_req_t *r, const char *s, size_t n) {
    if (!s || !n) return 0;
    int32_t *ids = NULL;
    long t = r->srv->tok ? tok_encode(r->srv->tok, s, n, 0, &ids) : -1;
    free(ids);
    return t >= 0 ? t : (int64_t)((n + 3) / 4);
}

/* A completions request with echo: its answer's text starts with the prompt. */
static int gw_cmpl_echoes(const gw_req_t *r) { return r->cmpl && r->chat && r->chat->echo && r->chat->prompt_len; }

/* A completions stream with echo: is the chunk in d (JSON) a choice's echoed
 * prompt (its first text, the prompt whole; the worker sends it alone),
 * which generated nothing?  Choices seen are marked in r->echoed. */
static int gw_cmpl_echo_chunk(gw_req_t *r, const tg_buf_t *d) {
    tg_json_t *j = tg_json_parse(d->p, d->len, NULL, NULL);
    const tg_json_t *ch = tg_json_at(tg_json_get(j, "choices"), 0);
    int64_t i;
    size_t sl;
    const char *s = tg_json_str(tg_json_get(ch, "text"), &sl);
    int echo = 0;
    if (s && !tg_json_int64(tg_json_get(ch, "index"), &i) && i >= 0 && i < 32 && !(r->echoed & (1u << i))) {
        r->echoed |= 1u << i;
        echo = sl == r->chat->prompt_len && !memcmp(s, r->chat->prompt, sl);
    }
    tg_json_free(j);
    return echo;
}

/* The tokens of the choices of an answer (j; each choice's `part`: "delta"
 * in a stream's chunk, "message" in a whole answer): each tool call's
 * function name and arguments, and with text, the content and the
 * reasoning.  For the settlement of an answer without usage: a stream cut
 * before its usage counts a token per text chunk and these for its tool
 * calls (a worker sends a tool call in few chunks, ours each call whole, so
 * a token per chunk would bill a cut tool call as nothing); a whole answer
 * that came without usage (an upstream that reports none) counts all of it. */
static int64_t gw_choice_tokens(gw_req_t *r, const tg_json_t *j, const char *part, int text) {
    int64_t n = 0;
    const tg_json_t *ch, *tc;
    TG_JSON_FOREACH(ch, tg_json_get(j, "choices")) {
        const tg_json_t *m = tg_json_get(ch, part);
        size_t sl;
        const char *s;
        if (text) {
            s = tg_json_str(tg_json_get(ch, "text"), &sl); /* a text_completion's choice */
            if (s && gw_cmpl_echoes(r) && sl >= r->chat->prompt_len && !memcmp(s, r->chat->prompt, r->chat->prompt_len)) {
                s += r->chat->prompt_len; /* echo: the prompt is not generated text */
                sl -= r->chat->prompt_len;
            }
            n += gw_count_tokens(r, s, s ? sl : 0);
            s = tg_json_str(tg_json_get(m, "content"), &sl);
            n += gw_count_tokens(r, s, s ? sl : 0);
            s = tg_json_str(tg_json_get(m, "reasoning_content"), &sl);
            n += gw_count_tokens(r, s, s ? sl : 0);
        }
        TG_JSON_FOREACH(tc, tg_json_get(m, "tool_calls")) {
            const tg_json_t *f = tg_json_get(tc, "function");
            s = tg_json_str(tg_json_get(f, "name"), &sl);
            n += gw_count_tokens(r, s, s ? sl : 0);
            s = tg_json_str(tg_json_get(f, "arguments"), &sl);
            n += gw_count_tokens(r, s, s ? sl : 0);
        }
    }
    return n;
}

/* One SSE event from the worker: learn usage, maybe drop or trim it, forward. */

/* The usage-only chunk in r->body (its JSON) again, with the signed usage
 * receipt added as its last member "receipt". */
static void gw_stream_receipt_chunk(gw_req_t *r) {
    const tg_buf_t *d = &r->body;
    size_t end = d->len;
    while (end && d->p[end - 1] != '}') end--;
    tg_buf_t b = {0};
    if (end && tg_buf_put(&b, "data: ", 6) == GW_OK && tg_buf_put(&b, d->p, end - 1) == GW_OK &&
        tg_buf_put(&b, ",\"receipt\":\"", 12) == GW_OK && tg_buf_put(&b, r->receipt, strlen(r->receipt)) == GW_OK &&
        tg_buf_put(&b, "\"}\n\n", 4) == GW_OK)
        gw_client_chunk(r, b.p, b.len);
    tg_buf_free(&b);
}

/* The event's JSON in r->body again, without the member [off, off + cut), as
 * one SSE event to the client. */
static void gw_stream_event_cut(gw_req_t *r, size_t off, size_t cut) {
    const tg_buf_t *d = &r->body;
    tg_buf_t b = {0};
    if (tg_buf_put(&b, "data: ", 6) == GW_OK && tg_buf_put(&b, d->p, off) == GW_OK &&
        tg_buf_put(&b, d->p + off + cut, d->len - off - cut) == GW_OK && tg_buf_put(&b, "\n\n", 2) == GW_OK)
        gw_client_chunk(r, b.p, b.len);
    tg_buf_free(&b);
}

static void gw_stream_event(gw_req_t *r, const char *ev, size_t len) {
    tg_buf_t *d = &r->body; /* reused as scratch while streaming */
    if (gw_sse_data(ev, len, d) != GW_OK || d->len == 0 || d->p[0] != '{') {
        if (d->len == 6 && !memcmp(d->p, "[DONE]", 6)) gw_settle_done(r, r->status); /* before the client has it */
        gw_client_chunk(r, ev, len);
        return;
    }
    if (gw_has_text(d->p, "\"content\"") || gw_has_text(d->p, "\"reasoning_content\"") ||
        (r->cmpl && gw_has_text(d->p, "\"text\"") && !(gw_cmpl_echoes(r) && gw_cmpl_echo_chunk(r, d))))
        r->chunks++; /* a completions chunk's choices[].text, not an echoed prompt */
    if (strstr(d->p, "\"tool_calls\"")) { /* only the chunks that hold tool calls are parsed */
        tg_json_t *j = tg_json_parse(d->p, d->len, NULL, NULL);
        r->counted_tokens += gw_choice_tokens(r, j, "delta", 0);
        tg_json_free(j);
    }
    if (!gw_has_object(d->p, "\"usage\"")) { /* none, or "usage":null as in every chunk of a usage stream */
        /* The client did not ask for usage: no "usage" member at all, as OpenAI
         * sends it then (the worker, asked for usage by us, writes "usage":null
         * in every chunk).  Ours writes it last: cut without a parse (in valid
         * JSON that tail can only be a member of the root). */
        static const char tail[] = ",\"usage\":null}";
        const size_t tl = sizeof tail - 1;
        if (!r->client_usage && d->len > tl && !memcmp(d->p + d->len - tl, tail, tl)) {
            gw_stream_event_cut(r, d->len - tl, tl - 1);
            return;
        }
        if (r->client_usage || !strstr(d->p, "\"usage\"")) {
            gw_client_chunk(r, ev, len);
            return;
        }
    }
    tg_json_t *j = tg_json_parse(d->p, d->len, NULL, NULL);
    const tg_json_t *u = tg_json_get(j, "usage");
    if (tg_json_type(u) == TG_JSON_OBJECT) gw_settle_usage_json(r, u);
    if (r->client_usage || !u) {
        const tg_json_t *ch = tg_json_get(j, "choices");
        int final = r->client_usage && r->have_usage && tg_json_type(ch) == TG_JSON_ARRAY && tg_json_len(ch) == 0;
        tg_json_free(j);
        if (final) gw_settle_done(r, r->status); /* the usage-only chunk: settle now, it carries the receipt */
        if (final && r->receipt) gw_stream_receipt_chunk(r);
        else gw_client_chunk(r, ev, len);
        return;
    }
    /* the client did not ask for usage: the member goes, whatever its value */
    const tg_json_t *choices = tg_json_get(j, "choices");
    size_t off, cut;
    if (tg_json_type(choices) != TG_JSON_ARRAY || tg_json_len(choices) == 0 ||
        tg_json_member_cut(u, &off, &cut) != 0) {
        tg_json_free(j); /* the usage-only chunk: drop it */
        return;
    }
    tg_json_free(j);
    gw_stream_event_cut(r, off, cut); /* the event again without its usage member, the rest byte for byte */
}

/* Forward the whole events buffered so far.  Returns GW_ERROR when the
 * request was ended (and freed) here. */
static int gw_stream_payload(gw_req_t *r) {
    if (r->payload.len) {
        gw_sse_feed(&r->sse, r->payload.p, r->payload.len);
        r->payload.len = 0;
    }
    const char *ev;
    size_t len;
    while (gw_sse_next(&r->sse, &ev, &len) == GW_OK) gw_stream_event(r, ev, len);
    if (gw_sse_pending(&r->sse) > GW_UP_MAX_EVENT) { /* no event boundary in sight: a broken worker */
        gw_up_fail(r, 502, "upstream_error", "The inference worker sent an oversized stream event");
        return GW_ERROR;
    }
    gw_settle_stream_update(r); /* what the client got so far, should the process die now */
    struct evbuffer *o = gw_req_out(r);
    if (r->up && !r->up_paused && evbuffer_get_length(o) > (size_t)r->srv->cfg->stream_high_water) {
        gw_up_read_pause(r);
        r->up_paused = 1;
    }
    return GW_OK;
}

void gw_proxy_resume(gw_req_t *r) {
    if (!r->up_paused || !r->up) return;
    r->up_paused = 0;
    gw_up_read_resume(r);
    if (evbuffer_get_length(bufferevent_get_input(r->up))) gw_up_on_read(r->up, r); /* data that waited */
}

/* The worker's answer is complete. */
static void gw_up_complete(gw_req_t *r) {
    r->up_reusable = r->srv->cfg->upstream_keepalive && !r->resp.close &&
                     (r->resp.chunked ? r->ch.done : r->resp.content_length >= 0);
    if (r->up_streaming) {
        if (gw_stream_payload(r) != GW_OK) return;
        gw_settle_done(r, r->status); /* a stream without [DONE]: before its end goes out */
        size_t rest = gw_sse_pending(&r->sse);
        if (rest) gw_client_chunk(r, r->sse.buf.p + r->sse.buf.len - rest, rest);
        if (r->client_chunked && r->receipt) /* the receipt as a trailer field too */
            evbuffer_add_printf(gw_req_out(r), "0\r\nx-tollgate-receipt: %s\r\n\r\n", r->receipt);
        else if (r->client_chunked)
            evbuffer_add(gw_req_out(r), "0\r\n\r\n", 5);
        gw_proxy_release(r);
        gw_req_finish(r);
        return;
    }
    if (!r->body.len && r->payload.p) { /* the answer whole in payload: it becomes the body, no copy */
        tg_buf_t t = r->body;
        r->body = r->payload;
        r->payload = t;
        r->payload.len = 0;
    } else if (tg_buf_put(&r->body, r->payload.p, r->payload.len) != GW_OK) {
        gw_up_fail(r, 502, "upstream_error", "out of memory");
        return;
    }
    r->payload.len = 0;
    if (r->resp.status == 200) { /* the answer checked whole, only its usage built */
        tg_json_t *u = r->body.p ? tg_json_parse_member(r->body.p, r->body.len, NULL, "usage", 5, NULL) : NULL;
        if (gw_settle_usage_json(r, u) != GW_OK && r->body.p) { /* no usage: the gateway counts the answer */
            tg_json_t *j = tg_json_parse(r->body.p, r->body.len, NULL, NULL);
            r->counted_tokens = gw_choice_tokens(r, j, "message", 1);
            tg_json_free(j);
        }
        tg_json_free(u);
    }
    int status = r->resp.status;
    if (status < 200 || status > 599) status = 502;
    if (status >= 400) { /* the client gets an OpenAI error body whatever the worker wrote */
        tg_json_t *j = r->body.p ? tg_json_parse(r->body.p, r->body.len, NULL, NULL) : NULL;
        int openai = tg_json_type(tg_json_get(j, "error")) == TG_JSON_OBJECT;
        tg_json_free(j);
        if (!openai) {
            char msg[200];
            snprintf(msg, sizeof msg, "The inference worker answered %d %s", status, gw_http_reason(status));
            if (r->worker) r->worker->failures += status >= 500;
            gw_proxy_release(r);
            gw_settle_done(r, status); /* before the head: it carries the receipt */
            gw_req_error(r, status, status >= 500 ? "server_error" : "invalid_request_error", "upstream_error",
                         NULL, msg);
            return;
        }
    }
    gw_proxy_release(r);
    gw_settle_done(r, status); /* before the answer is queued: it may be written at once */
    gw_req_head(r, status, r->resp.content_type[0] ? r->resp.content_type : "application/json",
                (int64_t)r->body.len);
    if (r->body.len) evbuffer_add(gw_req_out(r), r->body.p, r->body.len);
    gw_req_finish(r);
}

/* De-frame what the worker sent into r->payload; returns 1 when the body is
 * complete, 0 for more, -1 on bad framing. */
static int gw_up_deframe(gw_req_t *r, struct evbuffer *in) {
    for (;;) {
        size_t n = evbuffer_get_length(in);
        if (!n) return 0;
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) return 0;
        const char *p = v.iov_base;
        size_t len = v.iov_len;
        if (r->resp.chunked) {
            ssize_t used = gw_chunked_feed(&r->ch, p, len, &r->payload);
            if (used < 0) return -1;
            evbuffer_drain(in, (size_t)used);
            if (r->ch.done) return 1;
        } else if (r->up_body_left >= 0) {
            size_t take = len < (uint64_t)r->up_body_left ? len : (size_t)r->up_body_left;
            /* room for the announced length at once (up to 64 KiB: a length
             * the worker claims is no reason to allocate it before it comes) */
            if (!r->payload.p && tg_buf_reserve(&r->payload, r->up_body_left < 65536 ? (size_t)r->up_body_left : 65536))
                return -1;
            if (tg_buf_put(&r->payload, p, take) != GW_OK) return -1;
            evbuffer_drain(in, take);
            r->up_body_left -= (int64_t)take;
            if (!r->up_body_left) return 1;
        } else {
            if (tg_buf_put(&r->payload, p, len) != GW_OK) return -1;
            evbuffer_drain(in, len);
        }
        if (r->body.len + r->payload.len > GW_UP_MAX_BODY && !r->up_streaming) return -1;
        if (r->up_streaming) return 0; /* handle this piece first (backpressure) */
    }
}

/* The worker closed after its head and all its bytes were handled. */
static void gw_up_eof(gw_req_t *r) {
    if (!r->resp.chunked && r->resp.content_length < 0) gw_up_complete(r); /* close-delimited body */
    else gw_up_fail(r, 502, "upstream_error", "The inference worker closed the connection early");
}

/* The answer is not all here: acknowledge what came at once.  A worker that
 * writes its head and body separately with Nagle on would otherwise wait for
 * our delayed ACK (~40 ms) on a kept-alive connection.  Linux clears the flag
 * again, so it is set per read that leaves the answer incomplete (an answer
 * read whole in one go costs no system call). */
static void gw_up_quickack(struct bufferevent *bev) {
#ifdef TCP_QUICKACK
    int one = 1;
    setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
#else
    (void)bev;
#endif
}

static void gw_up_on_read(struct bufferevent *bev, void *arg) {
    gw_req_t *r = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    r->up_got_bytes = 1;
    if (!r->up_head_done) {
        size_t n = evbuffer_get_length(in);
        size_t look = n < GW_UP_MAX_HEAD ? n : GW_UP_MAX_HEAD;
        const char *p = (const char *)evbuffer_pullup(in, (ssize_t)look);
        long hl = gw_http_resp_parse(p, look, GW_UP_MAX_HEAD - 1, &r->resp);
        if (hl < 0 || (hl == 0 && n >= GW_UP_MAX_HEAD)) {
            gw_up_fail(r, 502, "upstream_error", "The inference worker sent a malformed answer");
            return;
        }
        if (hl == 0) {
            gw_up_quickack(bev);
            return;
        }
        if (r->resp.status == 100) { /* interim answer: skip it */
            evbuffer_drain(in, (size_t)hl);
            gw_up_on_read(bev, arg);
            return;
        }
        if (r->resp.status == 503 && !r->up_external && gw_worker_untried(r)) {
            /* an own worker refused before its scheduler (overloaded, draining): another may take it */
            if (r->worker) gw_worker_refused(r->worker);
            r->loop->m.upstream_errors++;
            r->up_reusable = 0;
            gw_proxy_release(r);
            gw_up_connect(r);
            return;
        }
        evbuffer_drain(in, (size_t)hl);
        r->up_head_done = 1;
        r->first_byte_us = tg_wall_us();
        if (r->worker && __atomic_load_n(&r->worker->bo->backoff_ms, __ATOMIC_RELAXED)) { /* trusted again */
            __atomic_store_n(&r->worker->bo->backoff_ms, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&r->worker->bo->down_until_us, 0, __ATOMIC_RELAXED);
        }
        r->up_body_left = r->resp.content_length;
        memset(&r->ch, 0, sizeof r->ch);
        if (r->stream && r->resp.status == 200 && !strncasecmp(r->resp.content_type, "text/event-stream", 17)) {
            r->up_streaming = 1;
            gw_settle_stream_begin(r); /* journaled before the client holds any of it */
            gw_req_head(r, 200, "text/event-stream", -1);
        }
        if (r->resp.content_length == 0 && !r->resp.chunked) {
            gw_up_complete(r);
            return;
        }
    }
    for (;;) {
        int rc = gw_up_deframe(r, in);
        if (rc < 0) {
            gw_up_fail(r, 502, "upstream_error", "The inference worker sent a malformed answer");
            return;
        }
        if (r->up_streaming && gw_stream_payload(r) != GW_OK) return;
        if (rc == 1) {
            gw_up_complete(r);
            return;
        }
        if (r->up_paused) return;
        if (!evbuffer_get_length(in)) break;
    }
    if (r->up_eof) gw_up_eof(r);
    else gw_up_quickack(bev);
}

static void gw_up_on_event(struct bufferevent *bev, short what, void *arg) {
    gw_req_t *r = arg;
    if (what & BEV_EVENT_CONNECTED) {
        r->up_connected = 1;
        const gw_config_t *cfg = r->srv->cfg;
        struct timeval t = {(time_t)(cfg->upstream_timeout_ms / 1000),
                            (suseconds_t)(cfg->upstream_timeout_ms % 1000) * 1000};
        bufferevent_set_timeouts(bev, &t, &t);
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && !r->up_connected) { /* connect timed out: try another worker */
        if (r->worker) gw_worker_refused(r->worker);
        r->loop->m.upstream_errors++;
        gw_proxy_release(r);
        gw_up_connect(r);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        gw_up_fail(r, 504, "upstream_timeout", "The inference worker did not answer in time");
        return;
    }
    if ((what & BEV_EVENT_EOF) && r->up_head_done) {
        r->up_eof = 1;
        if (!evbuffer_get_length(bufferevent_get_input(bev))) gw_up_eof(r);
        return; /* else gw_up_on_read finishes once the paused bytes are handled */
    }
    /* the request not fully written: the worker cannot have run it */
    int unsent = r->up_connected && evbuffer_get_length(bufferevent_get_output(bev)) > 0;
    if (!r->up_got_bytes && !r->head_sent && r->up_reused && unsent) {
        /* a kept connection the worker had closed: send again on a fresh one, same worker allowed */
        int i = r->worker ? r->worker->index : -1;
        if (i >= 0 && i < 64) r->tried &= ~(1ull << i);
        r->no_reuse = 1;
        gw_proxy_release(r);
        gw_up_connect(r);
        return;
    }
    if (!r->up_got_bytes && !r->head_sent && r->up_connected && !unsent) {
        /* the worker had the whole request: it may have run it (and an external upstream billed
         * us), so it is not sent again */
        if (r->worker) gw_worker_refused(r->worker);
        gw_up_fail(r, 502, "upstream_error", "The upstream closed the connection without answering");
        return;
    }
    if (!r->up_got_bytes && !r->head_sent) { /* refused, or reset before the request was written: try another */
        if (r->worker) gw_worker_refused(r->worker);
        r->loop->m.upstream_errors++;
        gw_proxy_release(r);
        gw_up_connect(r);
        return;
    }
    gw_up_fail(r, 502, "upstream_error", "The inference worker closed the connection early");
}
