/* tg_httpguard.c — the gate in front of evhttp (see tg_httpguard.h).
 *
 * Each connection (conn_t) keeps two buffers of its own: `in`, bytes read and
 * not yet parsed, and `req`, the request being received (its raw bytes, as
 * they came).  A complete request moves from `req` to the bufferevent's input,
 * where evhttp reads it; until then evhttp sees nothing of it.  The guard
 * holds a reference on every bufferevent it made, so that it can tell when
 * evhttp has freed one (its callbacks are gone) and only then lets it go:
 * that is how a connection is known to be over (evhttp 2.1 says nothing).
 *
 * Invariants: g->buffered is the sum of len(in) + len(req) over live
 * connections; a conn counted in g->conns is one accepted under the cap; a
 * target starting with TG_HTTPGUARD_PREFIX reaches evhttp only from
 * refuse(). */
#include "tg_httpguard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>

enum {
    R_LINE, R_VERSION, R_TARGET, R_METHOD, R_HEADER, R_FOLD, R_CLEN, R_TE, R_TE10, R_BODYLESS, R_CHUNK, R_TRAILER,
    R_EXPECT, R_HEAD_BIG, R_BODY_BIG, R_TIMEOUT, R_BUSY, R_CONNS, R_N
};

static const struct {
    int status;
    const char *code, *msg;
} REASONS[R_N] = {
    [R_LINE] = {400, "invalid_request", "Malformed request line (want METHOD SP /target SP HTTP/1.x)."},
    [R_VERSION] = {400, "unsupported_http_version", "Only HTTP/1.0 and HTTP/1.1 are served here."},
    [R_TARGET] = {400, "invalid_request", "Malformed request target (want an absolute path: /...)."},
    [R_METHOD] = {501, "method_not_implemented", "Unknown or unsupported HTTP method."},
    [R_HEADER] = {400, "invalid_request", "Malformed header line (want NAME: VALUE, no control characters)."},
    [R_FOLD] = {400, "invalid_request", "Obsolete line folding in a header is not accepted."},
    [R_CLEN] = {400, "invalid_request", "Invalid Content-Length (one, digits only)."},
    [R_TE] = {400, "invalid_request",
              "Transfer-Encoding must be chunked, and not come with a Content-Length."},
    [R_TE10] = {400, "invalid_request", "Transfer-Encoding is not allowed in an HTTP/1.0 request."},
    [R_BODYLESS] = {400, "invalid_request", "A HEAD or TRACE request cannot have a body."},
    [R_CHUNK] = {400, "invalid_request", "Malformed chunked body."},
    [R_TRAILER] = {400, "invalid_request", "Trailer fields in a chunked body are not accepted."},
    [R_EXPECT] = {417, "expectation_failed", "Only Expect: 100-continue is understood."},
    [R_HEAD_BIG] = {431, "header_too_large", "The request line and headers are over %zu bytes."},
    [R_BODY_BIG] = {413, "request_too_large", "The request body is over the limit of %zu bytes."},
    [R_TIMEOUT] = {408, "request_timeout", "The request did not arrive whole within %d s."},
    [R_BUSY] = {503, "server_busy",
                "Too much request data is being received at once (%zu bytes buffered at most); retry."},
    [R_CONNS] = {503, "too_many_connections", "Too many open connections (at most %d); retry."},
};

enum { S_HEAD, S_BODY, S_CHUNK_SIZE, S_CHUNK_DATA, S_CHUNK_CRLF, S_TRAILER, S_SKIP, S_DISCARD };

typedef struct conn conn_t;
struct conn {
    tg_httpguard_t *g;
    conn_t *prev, *next;
    struct bufferevent *bev;
    struct evbuffer_cb_entry *cbe;
    struct evbuffer *in, *req;
    struct event *timer;
    size_t held;          /* charged to g->buffered: len(in) + len(req) */
    int counted;          /* in g->conns (accepted under the cap) */
    int refuse_pending;   /* over the cap: answer 503 first thing */
    int busy, dead;
    int reading;          /* in on_input: the input's end is not frozen */
    time_t idle_since;    /* the sweep saw it waiting for a request since (0: not idle) */
    int state, in_request, nlines;
    size_t head_bytes, body_total;
    size_t scanned;       /* bytes at the start of c->in known to hold no line end */
    unsigned long long left; /* S_BODY, S_CHUNK_DATA, S_SKIP: bytes to come */
    int head_complete, has_cl, chunked, expect, close_wanted, keepalive_wanted, http10, bodyless;
};

struct tg_httpguard {
    struct event_base *base;
    tg_httpguard_opts_t o;
    conn_t *conns;
    struct event *sweep_ev;
    char *line; /* max_head + 1 */
    tg_httpguard_stats_t st;
};

static void conn_release(conn_t *c) {
    tg_httpguard_t *g = c->g;
    if (c->cbe) evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->cbe);
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    g->st.buffered -= c->held;
    if (c->counted) g->st.conns--;
    if (c->timer) event_free(c->timer);
    if (c->in) evbuffer_free(c->in);
    if (c->req) evbuffer_free(c->req);
    if (c->prev) c->prev->next = c->next;
    else g->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    bufferevent_decref(c->bev); /* the last reference: closes the socket */
    free(c);
}

/* evhttp freed its connection: bufferevent_free cleared the callbacks (all
 * three: while it writes an answer evhttp clears only the read callback). */
static int conn_gone(conn_t *c) {
    bufferevent_data_cb r = NULL, w = NULL;
    bufferevent_event_cb e = NULL;
    bufferevent_getcb(c->bev, &r, &w, &e, NULL);
    return !r && !w && !e;
}

/* evhttp is waiting for a request on c: it reads, with its read callback
 * (while it writes an answer it reads too, but only to see a close). */
static int evhttp_reading(conn_t *c) {
    bufferevent_data_cb r = NULL;
    bufferevent_getcb(c->bev, &r, NULL, NULL, NULL);
    return r && (bufferevent_get_enabled(c->bev) & EV_READ);
}

static void sweep(tg_httpguard_t *g) {
    for (conn_t *c = g->conns, *n; c; c = n) {
        n = c->next;
        if (!c->busy && (c->dead || conn_gone(c))) conn_release(c);
    }
}

/* Once a second: let go of what evhttp freed, and close connections that
 * waited for a request longer than idle_timeout_s (evhttp waiting to read,
 * nothing of a request received, nothing of an answer left to write). */
static void on_sweep(evutil_socket_t fd, short what, void *arg) {
    tg_httpguard_t *g = arg;
    sweep(g);
    time_t now = time(NULL);
    for (conn_t *c = g->conns, *n; c; c = n) {
        n = c->next;
        if (c->busy || c->dead || c->refuse_pending || c->in_request || evbuffer_get_length(c->in) ||
            evbuffer_get_length(bufferevent_get_input(c->bev)) || evbuffer_get_length(bufferevent_get_output(c->bev)) ||
            !evhttp_reading(c)) {
            c->idle_since = 0;
            continue;
        }
        if (!c->idle_since) {
            c->idle_since = now;
        } else if (now - c->idle_since >= g->o.idle_timeout_s) {
            void *evcon = NULL;
            bufferevent_getcb(c->bev, NULL, NULL, NULL, &evcon);
            g->st.idle_closed++;
            c->dead = 1;
            evhttp_connection_free(evcon); /* as its own timeout would: the socket closes, no answer */
        }
    }
}

static void recharge(conn_t *c) {
    size_t now = evbuffer_get_length(c->in) + evbuffer_get_length(c->req);
    c->g->st.buffered += now - c->held; /* unsigned wrap-around adds a negative difference */
    c->held = now;
}

static void request_reset(conn_t *c) {
    c->state = S_HEAD;
    c->in_request = 0;
    c->nlines = 0;
    c->head_bytes = c->body_total = 0;
    c->left = 0;
    c->head_complete = c->has_cl = c->chunked = c->expect = c->close_wanted = c->keepalive_wanted = 0;
    c->http10 = c->bodyless = 0;
    if (c->timer) evtimer_del(c->timer);
}

/* Move c->req to the end of the bufferevent's input.  A socket
 * bufferevent keeps its input's end frozen but while it reads (and calls
 * on_input); from a timer it is thawed for the move. */
static void to_evhttp(conn_t *c) {
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (!c->reading) evbuffer_unfreeze(in, 0);
    if (evbuffer_add_buffer(in, c->req)) evbuffer_drain(c->req, evbuffer_get_length(c->req));
    if (!c->reading) evbuffer_freeze(in, 0);
}

/* Let evhttp read what was put in the bufferevent's input, when it is
 * reading (when it is not, it is busy with an earlier request and reads the
 * rest once that one is answered). */
static void kick(conn_t *c) {
    if (evhttp_reading(c)) bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS);
}

/* Refuse the request being received: the guard's own request in its place
 * (answered by tg_httpguard_answer); then the connection skips the refused
 * body (when the client can go on: a known length, keep-alive) or ends. */
static void refuse(conn_t *c, int reason) {
    tg_httpguard_t *g = c->g;
    int can_skip = (reason == R_BODY_BIG || reason == R_BUSY) && c->head_complete && c->has_cl && !c->expect &&
                   !c->close_wanted && (!c->http10 || c->keepalive_wanted);
    switch (reason) {
    case R_HEAD_BIG: case R_BODY_BIG: g->st.too_large++; break;
    case R_TIMEOUT: g->st.timeout++; break;
    case R_BUSY: g->st.busy++; break;
    case R_METHOD: g->st.bad_method++; break;
    case R_CONNS: g->st.refused_conns++; break;
    default: g->st.bad_request++;
    }
    evbuffer_drain(c->req, evbuffer_get_length(c->req));
    c->scanned = 0;
    char own[128];
    int n = snprintf(own, sizeof own, "GET " TG_HTTPGUARD_PREFIX "%d HTTP/1.1\r\nHost: guard\r\n%s\r\n", reason,
                     can_skip ? "" : "Connection: close\r\n");
    evbuffer_add(c->req, own, (size_t)n);
    to_evhttp(c);
    unsigned long long skip = c->left;
    request_reset(c);
    if (can_skip) {
        c->state = S_SKIP;
        c->left = skip;
        c->in_request = 1; /* the skipping has a deadline too */
        struct timeval tv = {g->o.request_timeout_s, 0};
        evtimer_add(c->timer, &tv);
    } else {
        c->state = S_DISCARD;
        evbuffer_drain(c->in, evbuffer_get_length(c->in));
    }
    recharge(c);
}

static int tchar(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* The request line; -1 when good, else the reason. */
static int check_request_line(conn_t *c, char *l, size_t n) {
    static const char *const methods[] = {"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"};
    char *sp1 = memchr(l, ' ', n);
    if (!sp1 || sp1 == l) return R_LINE;
    char *tgt = sp1 + 1, *sp2 = memchr(tgt, ' ', n - (size_t)(tgt - l));
    if (!sp2 || sp2 == tgt) return R_LINE;
    char *ver = sp2 + 1;
    size_t ml = (size_t)(sp1 - l), tl = (size_t)(sp2 - tgt), vl = n - (size_t)(ver - l);
    for (size_t i = 0; i < ml; i++)
        if (!tchar((unsigned char)l[i])) return R_LINE;
    if (memchr(ver, ' ', vl)) return R_LINE;
    if (vl == 8 && !memcmp(ver, "HTTP/1.1", 8)) c->http10 = 0;
    else if (vl == 8 && !memcmp(ver, "HTTP/1.0", 8)) c->http10 = 1;
    else if (vl >= 5 && !memcmp(ver, "HTTP/", 5)) return R_VERSION;
    else return R_LINE;
    int known = 0;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strlen(methods[i]) == ml && !memcmp(l, methods[i], ml)) known = 1;
    if (!known) return R_METHOD;
    c->bodyless = (ml == 4 && !memcmp(l, "HEAD", 4)) || (ml == 5 && !memcmp(l, "TRACE", 5));
    if (tgt[0] != '/') return R_TARGET;
    for (size_t i = 0; i < tl; i++)
        if ((unsigned char)tgt[i] <= 0x20 || (unsigned char)tgt[i] >= 0x7f) return R_TARGET;
    if (tl >= sizeof TG_HTTPGUARD_PREFIX - 1 && !memcmp(tgt, TG_HTTPGUARD_PREFIX, sizeof TG_HTTPGUARD_PREFIX - 1))
        return R_TARGET;
    tgt[tl] = 0;
    struct evhttp_uri *u = evhttp_uri_parse_with_flags(tgt, EVHTTP_URI_NONCONFORMANT);
    if (!u) return R_TARGET; /* (or out of memory: refused either way) */
    evhttp_uri_free(u);
    return -1;
}

/* Does the comma-separated list v (n bytes) hold token tok (any case)? */
static int has_token(const char *v, size_t n, const char *tok) {
    size_t tl = strlen(tok), i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t s = i;
        while (i < n && v[i] != ',') i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e - s == tl && !strncasecmp(v + s, tok, tl)) return 1;
    }
    return 0;
}

/* One header line; -1 when good, else the reason. */
static int check_header(conn_t *c, const char *l, size_t n) {
    if (l[0] == ' ' || l[0] == '\t') return R_FOLD;
    const char *colon = memchr(l, ':', n);
    if (!colon || colon == l) return R_HEADER;
    size_t nl = (size_t)(colon - l);
    for (size_t i = 0; i < nl; i++)
        if (!tchar((unsigned char)l[i])) return R_HEADER;
    const char *v = colon + 1, *end = l + n;
    for (const char *p = v; p < end; p++)
        if (((unsigned char)*p < 0x20 && *p != '\t') || (unsigned char)*p == 0x7f) return R_HEADER;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    size_t vl = (size_t)(end - v);
    if (nl == 14 && !strncasecmp(l, "Content-Length", 14)) {
        if (c->has_cl || vl == 0 || vl > 18) return R_CLEN;
        unsigned long long x = 0;
        for (size_t i = 0; i < vl; i++) {
            if (v[i] < '0' || v[i] > '9') return R_CLEN;
            x = x * 10 + (unsigned)(v[i] - '0');
        }
        c->has_cl = 1;
        c->left = x;
    } else if (nl == 17 && !strncasecmp(l, "Transfer-Encoding", 17)) {
        if (c->chunked || vl != 7 || strncasecmp(v, "chunked", 7)) return R_TE;
        c->chunked = 1;
    } else if (nl == 10 && !strncasecmp(l, "Connection", 10)) {
        if (has_token(v, vl, "close")) c->close_wanted = 1;
        if (has_token(v, vl, "keep-alive")) c->keepalive_wanted = 1;
    } else if (nl == 6 && !strncasecmp(l, "Expect", 6)) {
        if (vl != 12 || strncasecmp(v, "100-continue", 12)) return R_EXPECT;
        c->expect = 1;
    }
    return -1;
}

/* The request in c->req is whole: hand it to evhttp. */
static void pass(conn_t *c) {
    to_evhttp(c);
    request_reset(c);
    recharge(c);
}

/* The head ended: what comes after it.  0 going on, 1 the request was refused. */
static int head_done(conn_t *c) {
    tg_httpguard_t *g = c->g;
    c->head_complete = 1;
    if (c->has_cl && c->chunked) return refuse(c, R_TE), 1;
    /* RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing */
    if (c->chunked && c->http10) return refuse(c, R_TE10), 1;
    if (c->bodyless && (c->chunked || (c->has_cl && c->left))) return refuse(c, R_BODYLESS), 1;
    if (c->has_cl && c->left > g->o.max_body) return refuse(c, R_BODY_BIG), 1;
    if (c->chunked) {
        c->state = S_CHUNK_SIZE;
    } else if (c->has_cl && c->left) {
        c->state = S_BODY;
    } else {
        pass(c);
        return 0;
    }
    /* evhttp would say 100 Continue on seeing the head; it sees it with the body.  Never to an
     * HTTP/1.0 client, which waits for no interim answer (RFC 9110 §10.1.1: ignored) */
    if (c->expect && !c->http10) {
        evutil_socket_t fd = bufferevent_getfd(c->bev);
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (fd >= 0 && !evbuffer_get_length(bufferevent_get_output(c->bev)) && evhttp_reading(c))
            (void)!send(fd, cont, sizeof cont - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    return 0;
}

/* Parse what is in c->in. */
static void process(conn_t *c) {
    tg_httpguard_t *g = c->g;
    for (;;) {
        size_t avail = evbuffer_get_length(c->in);
        if (!avail) break;
        if (c->state != S_HEAD && c->state != S_TRAILER && c->state != S_CHUNK_SIZE && c->state != S_CHUNK_CRLF)
            c->scanned = 0; /* not a line: bytes go from c->in's front */
        if (c->state == S_DISCARD) {
            evbuffer_drain(c->in, avail);
            break;
        }
        if (c->state == S_SKIP) {
            size_t n = avail < c->left ? avail : (size_t)c->left;
            evbuffer_drain(c->in, n);
            c->left -= n;
            if (c->left) break;
            request_reset(c);
            continue;
        }
        if (!c->in_request && c->state == S_HEAD) {
            /* empty lines before a request line are ignored (RFC 9112 §2.2: a
             * client may send CRLF after a body), and never reach evhttp; they
             * begin no request (no deadline: the idle sweep bounds them) */
            char two[2];
            size_t k = avail < 2 ? avail : 2;
            evbuffer_copyout(c->in, two, k);
            if (two[0] == '\n' || (k == 2 && two[0] == '\r' && two[1] == '\n')) {
                evbuffer_drain(c->in, two[0] == '\n' ? 1 : 2);
                c->scanned = 0;
                recharge(c);
                continue;
            }
            if (k == 1 && two[0] == '\r') break; /* its LF may follow */
        }
        if (!c->in_request) { /* the first byte of a request: its deadline starts */
            c->in_request = 1;
            struct timeval tv = {g->o.request_timeout_s, 0};
            evtimer_add(c->timer, &tv);
        }
        if (c->state == S_BODY || c->state == S_CHUNK_DATA) {
            size_t n = avail < c->left ? avail : (size_t)c->left;
            evbuffer_remove_buffer(c->in, c->req, n);
            c->left -= n;
            recharge(c);
            if (g->st.buffered > g->o.max_buffered) {
                refuse(c, R_BUSY);
                continue;
            }
            if (c->left) break;
            if (c->state == S_BODY) pass(c);
            else c->state = S_CHUNK_CRLF;
            continue;
        }
        /* a line: the request line, a header, a chunk size, the end of a chunk, a trailer.  The
         * search starts where the last one stopped (one byte back, for a CR before the LF): a
         * line that comes a byte at a time is not read over and over (64 KiB of it cost 2 GB
         * of scanning) */
        size_t eol_len = 0;
        struct evbuffer_ptr from;
        evbuffer_ptr_set(c->in, &from, c->scanned ? c->scanned - 1 : 0, EVBUFFER_PTR_SET);
        struct evbuffer_ptr p = evbuffer_search_eol(c->in, &from, &eol_len, EVBUFFER_EOL_CRLF);
        size_t cap = c->state == S_HEAD || c->state == S_TRAILER ? g->o.max_head - c->head_bytes : 64;
        if (p.pos < 0) { /* a line not whole yet */
            c->scanned = avail;
            if (avail <= cap) break;
            refuse(c, c->state == S_HEAD ? R_HEAD_BIG : R_CHUNK);
            continue;
        }
        c->scanned = 0;
        size_t ll = (size_t)p.pos;
        if (ll + eol_len > cap) {
            refuse(c, c->state == S_HEAD ? R_HEAD_BIG : R_CHUNK);
            continue;
        }
        char *l = g->line;
        evbuffer_copyout(c->in, l, ll);
        l[ll] = 0;
        evbuffer_remove_buffer(c->in, c->req, ll + eol_len);
        if (c->state == S_HEAD) c->head_bytes += ll + eol_len;
        recharge(c);
        if (g->st.buffered > g->o.max_buffered) {
            refuse(c, R_BUSY);
            continue;
        }
        int bad = -1;
        if (c->state != S_HEAD && eol_len != 2) {
            bad = R_CHUNK; /* chunk framing ends its lines in CRLF; a bare LF is no line end there */
        } else if (memchr(l, 0, ll)) {
            bad = c->state == S_HEAD ? (c->nlines ? R_HEADER : R_LINE) : R_CHUNK;
        } else if (c->state == S_HEAD) {
            if (c->nlines++ == 0) bad = check_request_line(c, l, ll);
            else if (ll == 0) {
                head_done(c);
                continue;
            } else bad = check_header(c, l, ll);
        } else if (c->state == S_CHUNK_SIZE) {
            unsigned long long sz = 0;
            if (ll == 0 || ll > 15) bad = R_CHUNK;
            for (size_t i = 0; bad < 0 && i < ll; i++) {
                int d = l[i] >= '0' && l[i] <= '9' ? l[i] - '0'
                      : l[i] >= 'a' && l[i] <= 'f' ? l[i] - 'a' + 10
                      : l[i] >= 'A' && l[i] <= 'F' ? l[i] - 'A' + 10 : -1;
                if (d < 0) bad = R_CHUNK;
                sz = sz * 16 + (unsigned)d;
            }
            if (bad < 0) {
                if (c->body_total + sz > g->o.max_body) bad = R_BODY_BIG;
                else if (sz == 0) c->state = S_TRAILER;
                else {
                    c->body_total += sz;
                    c->left = sz;
                    c->state = S_CHUNK_DATA;
                }
            }
        } else if (c->state == S_CHUNK_CRLF) {
            if (ll) bad = R_CHUNK;
            else c->state = S_CHUNK_SIZE;
        } else { /* S_TRAILER */
            if (ll) bad = R_TRAILER;
            else pass(c);
        }
        if (bad >= 0) refuse(c, bad);
    }
}

/* Bytes were read into the bufferevent's input: take the new ones (the last
 * n_added) into c->in before evhttp looks.  They are parsed once evhttp has
 * taken all it was given before (pipelined requests wait in c->in while it
 * answers one: evhttp reads during an answer, to see a close); evhttp
 * taking bytes (n_deleted) calls this too, and then the wait may end. */
static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
    conn_t *c = arg;
    if (c->busy) return;
    if (!info->n_added) {
        if (info->n_deleted && !c->dead && evbuffer_get_length(c->in) && !evbuffer_get_length(buf) &&
            !conn_gone(c)) {
            c->busy = 1;
            process(c);
            recharge(c);
            c->busy = 0;
        }
        return;
    }
    if (c->dead || conn_gone(c)) { /* evhttp let go: nobody reads this */
        c->dead = 1;
        c->busy = 1;
        evbuffer_drain(buf, evbuffer_get_length(buf));
        bufferevent_disable(c->bev, EV_READ);
        c->busy = 0;
        return;
    }
    c->busy = c->reading = 1;
    size_t len = evbuffer_get_length(buf), keep = len - info->n_added;
    /* The new bytes are copied into c->in, not moved: a read leaves its bytes in a chain of
     * up to 16 KiB, and moving chains kept one per read, so a client sending a byte per
     * packet made each byte cost 16 KiB (copies fill c->in's chains).  Then they leave buf's
     * end (what evhttp has not read yet stays at its front). */
    char tmp[4096];
    struct evbuffer_ptr at;
    int bad = evbuffer_ptr_set(buf, &at, keep, EVBUFFER_PTR_SET);
    for (size_t done = 0; !bad && done < info->n_added;) {
        size_t n = info->n_added - done < sizeof tmp ? info->n_added - done : sizeof tmp;
        bad = evbuffer_copyout_from(buf, &at, tmp, n) != (ev_ssize_t)n || evbuffer_add(c->in, tmp, n) ||
              evbuffer_ptr_set(buf, &at, n, EVBUFFER_PTR_ADD) < 0;
        done += n;
    }
    struct evbuffer *front = keep ? evbuffer_new() : NULL;
    if (bad || (keep && !front)) { /* out of memory: end the connection rather than pass bytes unchecked */
        if (front) evbuffer_free(front);
        evbuffer_drain(c->in, evbuffer_get_length(c->in));
        evbuffer_drain(buf, len);
        c->state = S_DISCARD;
        c->scanned = 0;
        recharge(c);
        c->busy = c->reading = 0;
        return;
    }
    if (front) evbuffer_remove_buffer(buf, front, keep);
    evbuffer_drain(buf, evbuffer_get_length(buf));
    if (front) {
        evbuffer_add_buffer(buf, front);
        evbuffer_free(front);
    }
    if (c->refuse_pending) {
        c->refuse_pending = 0;
        refuse(c, R_CONNS);
    }
    if (!keep) {
        process(c);
        recharge(c);
        c->busy = c->reading = 0;
        return;
    }
    if (c->state == S_SKIP) { /* a refused body's bytes never reach evhttp: they go by at once,
                                * even while evhttp has not read the refusal yet (kept, 10
                                * connections skipping 30 MiB each held 265 MB once in CI) */
        size_t avail = evbuffer_get_length(c->in), n = avail < c->left ? avail : (size_t)c->left;
        evbuffer_drain(c->in, n);
        c->left -= n;
        c->scanned = 0;
        if (!c->left) request_reset(c);
    }
    if (c->state != S_DISCARD) { /* waiting for evhttp: bounded like a request being received */
        recharge(c);
        if (evbuffer_get_length(c->in) > c->g->o.max_head + c->g->o.max_body ||
            c->g->st.buffered > c->g->o.max_buffered)
            refuse(c, R_BUSY); /* closes: what was pipelined after it goes unanswered */
    } else {
        evbuffer_drain(c->in, evbuffer_get_length(c->in));
        c->scanned = 0;
    }
    recharge(c);
    c->busy = c->reading = 0;
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    conn_t *c = arg;
    if (c->dead || conn_gone(c)) return;
    if (c->refuse_pending) {
        c->refuse_pending = 0;
        c->busy = 1;
        refuse(c, R_CONNS);
        c->busy = 0;
        kick(c);
        return;
    }
    if (!c->in_request) return;
    if (!evhttp_reading(c)) { /* evhttp is answering an earlier request */
        struct timeval tv = {1, 0};
        evtimer_add(c->timer, &tv);
        return;
    }
    c->busy = 1;
    refuse(c, R_TIMEOUT);
    c->busy = 0;
    kick(c);
}

static struct bufferevent *on_bev(struct event_base *base, void *arg) {
    tg_httpguard_t *g = arg;
    sweep(g);
    conn_t *c = calloc(1, sizeof *c);
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!c || !bev) goto fail;
    c->g = g;
    c->bev = bev;
    c->in = evbuffer_new();
    c->req = evbuffer_new();
    c->timer = evtimer_new(base, on_timer, c);
    c->cbe = evbuffer_add_cb(bufferevent_get_input(bev), on_input, c);
    if (!c->in || !c->req || !c->timer || !c->cbe) goto fail;
    bufferevent_incref(bev); /* ours, until evhttp has freed it (sweep) */
    if (g->st.conns >= (unsigned long long)g->o.max_conns) {
        c->refuse_pending = 1;
        struct timeval now = {0, 0};
        evtimer_add(c->timer, &now);
    } else {
        c->counted = 1;
        g->st.conns++;
    }
    c->next = g->conns;
    if (g->conns) g->conns->prev = c;
    g->conns = c;
    return bev;
fail:
    if (c) {
        if (c->in) evbuffer_free(c->in);
        if (c->req) evbuffer_free(c->req);
        if (c->timer) event_free(c->timer);
        free(c);
    }
    /* NULL: evhttp makes a bufferevent of its own, unguarded; with none, it
     * would fail the same way and close the socket */
    if (bev) bufferevent_free(bev);
    return NULL;
}

tg_httpguard_t *tg_httpguard_new(struct event_base *base, struct evhttp *http, const tg_httpguard_opts_t *o) {
    tg_httpguard_t *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->base = base;
    g->o = *o;
    g->line = malloc(o->max_head + 1 > 65 ? o->max_head + 1 : 65);
    g->sweep_ev = event_new(base, -1, EV_PERSIST, on_sweep, g);
    struct timeval tv = {1, 0};
    if (!g->line || !g->sweep_ev || event_add(g->sweep_ev, &tv)) {
        tg_httpguard_free(g);
        return NULL;
    }
    evhttp_set_bevcb(http, on_bev, g);
    return g;
}

void tg_httpguard_free(tg_httpguard_t *g) {
    if (!g) return;
    while (g->conns) conn_release(g->conns);
    if (g->sweep_ev) event_free(g->sweep_ev);
    free(g->line);
    free(g);
}

int tg_httpguard_answer(tg_httpguard_t *g, struct evhttp_request *req) {
    const char *uri = evhttp_request_get_uri(req);
    if (!uri || strncmp(uri, TG_HTTPGUARD_PREFIX, sizeof TG_HTTPGUARD_PREFIX - 1)) return 0;
    int r = atoi(uri + sizeof TG_HTTPGUARD_PREFIX - 1);

    if (r < 0 || r >= R_N) r = R_LINE;
    char msg[256];
    if (r == R_HEAD_BIG) snprintf(msg, sizeof msg, REASONS[r].msg, g->o.max_head);
    else if (r == R_BODY_BIG) snprintf(msg, sizeof msg, REASONS[r].msg, g->o.max_body);
    else if (r == R_TIMEOUT) snprintf(msg, sizeof msg, REASONS[r].msg, g->o.request_timeout_s);
    else if (r == R_BUSY) snprintf(msg, sizeof msg, REASONS[r].msg, g->o.max_buffered);
    else if (r == R_CONNS) snprintf(msg, sizeof msg, REASONS[r].msg, g->o.max_conns);
    else snprintf(msg, sizeof msg, "%s", REASONS[r].msg);
    int st = REASONS[r].status;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "application/json");
    if (st == 503) evhttp_add_header(h, "Retry-After", "1");
    const char *conn = evhttp_find_header(evhttp_request_get_input_headers(req), "Connection");
    if (conn && !strcasecmp(conn, "close")) evhttp_add_header(h, "Connection", "close");
    struct evbuffer *b = evhttp_request_get_output_buffer(req);
    /* the messages hold no character that JSON would escape */
    evbuffer_add_printf(b, "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}\n", msg,
                        st == 503 ? "server_error" : "invalid_request_error", REASONS[r].code);
    const char *phrase = st == 400 ? "Bad Request" : st == 408 ? "Request Timeout" : st == 413 ? "Payload Too Large"
                       : st == 417 ? "Expectation Failed" : st == 431 ? "Request Header Fields Too Large"
                       : st == 501 ? "Not Implemented" : "Service Unavailable";
    evhttp_send_reply(req, st, phrase, NULL);
    return 1;
}

void tg_httpguard_stats(const tg_httpguard_t *g, tg_httpguard_stats_t *out) { *out = g->st; }
