/* gw_conn.c — one client connection: accepts it on a loop's listener, runs
 * TLS through bufferevent_openssl, feeds the bytes to the request parser and
 * hands each whole request to the layer above (srv->conn_ops: gw_req.c),
 * one at a time; keeps the header, idle and lingering-close timers; closes.
 * It knows nothing of routes, billing or workers.
 *
 * Invariants:
 *  - one request at a time (c->req); pipelined requests wait in the parser's
 *    buffer, and a busy connection stops reading once a whole further request
 *    could be buffered;
 *  - a connection whose output holds more than max_output_bytes starts no
 *    further request and reads nothing until the client has read it down to
 *    the low-water mark, so a client that pipelines without reading costs a
 *    bounded amount of memory;
 *  - separate timers: the TLS handshake (handshake_timeout_ms), a request's
 *    head from its first byte (header_timeout_ms, 408), silence while its body
 *    arrives (body_timeout_ms, 408), keep-alive idle (idle_timeout_ms); and a
 *    write timeout (write_timeout_ms): a client that takes no byte of pending
 *    output for that long is closed, which abandons its request (the worker
 *    connection is closed, cancelling the generation, and what was generated
 *    is settled);
 *  - past max_connections (for the whole process) a new connection gets a
 *    503 after its handshake and is closed; past an eighth more it is closed
 *    at once;
 *  - work that could re-enter (the next pipelined request, closing) goes
 *    through the kick event, never directly from a callback;
 *  - a connection freed under a request tells the layer above first
 *    (conn_ops->abort), which settles and frees the request. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "gw-int.h"

enum { TIMER_NONE, TIMER_HANDSHAKE, TIMER_HEADER, TIMER_BODY, TIMER_IDLE, TIMER_LINGER };

static void gw_conn_kick(gw_conn_t *c) { event_active(c->kick, EV_TIMEOUT, 1); }

struct evbuffer *gw_conn_out(gw_conn_t *c) { return bufferevent_get_output(c->bev); }

/* bufferevent_openssl calls SSL_write once per chain of the output, and each
 * call is a TLS record of its own and a write(2) of its own (and, on
 * loopback, a delivery and a wake-up of the reader).  An evbuffer's chains
 * hold ~1 KiB (libevent's smallest) until a piece needs more, so a head and
 * its body, or a chunk's size line, data and CRLF, straddled two chains: a
 * 1 KiB chat answer went out as records of 976 and 48 bytes, two writes.
 * Output that fits one record is made one chain first (a copy of at most
 * 16 KiB, where a write costs several µs), so it leaves in one record and one
 * write(2); longer output keeps its chains (gw_req_head already puts a whole
 * answer in one).  The write event is the one that writes (below), and a
 * blocked SSL_write retried from a moved buffer is allowed
 * (bufferevent_openssl sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER). */
static void gw_conn_coalesce(struct evbuffer *o, size_t n) {
    if (n <= GW_TLS_RECORD_MAX && evbuffer_peek(o, -1, NULL, NULL, 0) > 1) evbuffer_pullup(o, -1);
}

/* bufferevent_openssl writes its output only from its write event, which it
 * adds when bytes are queued (bufferevent_flush does nothing for it), so an
 * answer used to wait for the next epoll_wait and cost two epoll_ctl (the
 * write event's add, then its delete once the output was empty).  Activating
 * the write event runs the same code (consider_writing: SSL_write while it
 * may, the event kept only for what the socket did not take) after the
 * current callback, in this loop iteration; with the epoll changelist
 * (gw_event_base_new) the add and the delete then cancel out.  The event is
 * the one of `struct bufferevent` (event2/bufferevent_struct.h). */
void gw_conn_flush(gw_conn_t *c) {
    struct evbuffer *o = bufferevent_get_output(c->bev);
    size_t n = evbuffer_get_length(o);
    if (!c->handshaken || c->held || !n) return;
    gw_conn_coalesce(o, n);
    event_active(&c->bev->ev_write, EV_WRITE, 1);
}

/* Held output (gw_settle.c: an answer waits for the journal write of its
 * usage row).  Writing is disabled on the bufferevent, which also takes its
 * write event off the loop's active list should epoll have readied it in this
 * iteration; gw_conn_flush does nothing meanwhile.  The loop's jflush_ev,
 * activated by the settlement after the events already active, writes the
 * journal, then releases every held connection in this iteration. */
void gw_conn_hold(gw_conn_t *c) {
    if (c->held) return;
    c->held = 1;
    bufferevent_disable(c->bev, EV_WRITE);
    c->hprev = NULL;
    c->hnext = c->loop->held;
    if (c->hnext) c->hnext->hprev = c;
    c->loop->held = c;
}

static void gw_conn_unhold(gw_conn_t *c) {
    if (c->hprev) c->hprev->hnext = c->hnext;
    else c->loop->held = c->hnext;
    if (c->hnext) c->hnext->hprev = c->hprev;
    c->hprev = c->hnext = NULL;
    c->held = 0;
}

void gw_conn_release_held(gw_loop_t *l) {
    gw_conn_t *c;
    while ((c = l->held)) {
        gw_conn_unhold(c);
        bufferevent_enable(c->bev, EV_WRITE);
        gw_conn_flush(c);
    }
}

/* The TLS context reads ahead (gw_tls.c): a read(2) may bring more than one
 * record, and OpenSSL keeps the records it has not decrypted yet.  The
 * socket no longer shows them, and bufferevent_openssl stops reading once
 * SSL_pending() (decrypted bytes only) is 0, so a request whose last record
 * came in the same read as an earlier one would wait for bytes that never
 * come.  Whenever reading is on and OpenSSL holds such records, the read
 * event is run again (its callback reads them out, no system call). */
static void gw_conn_read_buffered(gw_conn_t *c) {
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    if (ssl && c->handshaken && (bufferevent_get_enabled(c->bev) & EV_READ) && SSL_has_pending(ssl))
        event_active(&c->bev->ev_read, EV_READ, 1);
}

/* Arm the connection's timer for kind; an armed timer of the same kind keeps
 * its deadline unless restart (the body timer restarts on every byte). */
static void gw_conn_arm(gw_conn_t *c, int kind, int restart) {
    if (c->timer_kind == kind && !restart) return;
    const gw_config_t *cfg = c->loop->srv->cfg;
    int64_t ms = kind == TIMER_HANDSHAKE ? cfg->handshake_timeout_ms
                 : kind == TIMER_HEADER  ? cfg->header_timeout_ms
                 : kind == TIMER_BODY    ? cfg->body_timeout_ms
                                         : cfg->idle_timeout_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    /* from now, not from the loop's cached time (taken when this round of
     * callbacks began: a round that ran long, or a thread descheduled on a
     * busy host, would make the timeout fire that much early) */
    event_base_update_cache_time(c->loop->base);
    event_add(c->timer, &tv);
    c->timer_kind = kind;
}

void gw_conn_begin(gw_conn_t *c, gw_req_t *r) {
    c->req = r;
    c->loop->nbusy++;
    if (c->timer) event_del(c->timer);
    c->timer_kind = TIMER_NONE;
}

void gw_conn_end(gw_conn_t *c) {
    c->req = NULL;
    c->loop->nbusy--;
}

void gw_conn_next(gw_conn_t *c, int keep_alive) {
    c->served++;
    if (!keep_alive || c->loop->shutting_down) c->closing = 1;
    gw_conn_flush(c);
    gw_conn_kick(c);
    gw_loop_maybe_exit(c->loop);
}

/* Answer input that could not be parsed, then close. */
static void gw_conn_bad_request(gw_conn_t *c, int status, const char *msg) {
    c->linger = gw_http_parser_busy(&c->parser) || c->parser.cur != NULL;
    c->loop->srv->conn_ops->request(c, NULL, status, msg);
}

static void gw_conn_process(gw_conn_t *c) {
    if (c->in_process) return;
    c->in_process = 1;
    size_t cap = (size_t)c->loop->srv->cfg->max_output_bytes;
    while (!c->req && !c->closing) {
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) > cap) {
            c->out_blocked = 1; /* gw_conn_on_write goes on once the client has read */
            break;
        }
        gw_http_req_t *h = NULL;
        int rc = gw_http_parser_next(&c->parser, &h);
        if (rc == GW_AGAIN) {
            if (!c->handshaken) break;
            gw_conn_arm(c, c->parser.cur ? TIMER_BODY : gw_http_parser_busy(&c->parser) || !c->served ? TIMER_HEADER : TIMER_IDLE, 0);
            break;
        }
        if (rc == GW_CONTINUE) {
            evbuffer_add_printf(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
            continue;
        }
        if (rc == GW_ERROR) {
            gw_conn_bad_request(c, c->parser.err_status, c->parser.err_msg);
            break;
        }
        c->loop->srv->conn_ops->request(c, h, 0, NULL);
    }
    /* a busy connection keeps at most one more request's worth of input */
    if (c->out_blocked || (c->req && c->parser.in.len > c->parser.max_header + c->parser.max_body))
        bufferevent_disable(c->bev, EV_READ);
    else if (!c->closing)
        bufferevent_enable(c->bev, EV_READ);
    c->in_process = 0;
    gw_conn_read_buffered(c); /* every path that turns reading on comes through here or the linger */
}

/* The answer is out and the connection must close.  When the client may
 * still be sending (an error answered before its body was read), read and
 * discard for a moment first ("lingering close"), so that it can read the
 * answer instead of getting a reset in the middle of its upload. */
static void gw_conn_closed_flushed(gw_conn_t *c) {
    if (c->linger && !c->loop->shutting_down) {
        c->linger = 0;
        bufferevent_enable(c->bev, EV_READ);
        struct timeval tv = {2, 0};
        event_add(c->timer, &tv);
        c->timer_kind = TIMER_LINGER;
        gw_conn_read_buffered(c);
        return;
    }
    if (c->timer_kind != TIMER_LINGER) gw_conn_free(c);
}

static void gw_conn_on_kick(evutil_socket_t fd, short what, void *arg) {
    gw_conn_t *c = arg;
    if (c->closing) {
        if (c->timer_kind != TIMER_LINGER) bufferevent_disable(c->bev, EV_READ);
        if (!c->req && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) gw_conn_closed_flushed(c);
        return;
    }
    gw_conn_process(c);
}

static void gw_conn_on_read(struct bufferevent *bev, void *arg) {
    gw_conn_t *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->closing) {
        c->lingered += evbuffer_get_length(in);
        evbuffer_drain(in, evbuffer_get_length(in));
        if (c->lingered > (size_t)64 << 20) gw_conn_free(c); /* enough politeness */
        else gw_conn_read_buffered(c);
        return;
    }
    size_t n;
    if (c->parser.cur && evbuffer_get_length(in)) gw_conn_arm(c, TIMER_BODY, 1); /* the body moves */
    while ((n = evbuffer_get_length(in)) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
        if (gw_http_parser_feed(&c->parser, v.iov_base, v.iov_len) != GW_OK) {
            c->closing = 1;
            break;
        }
        evbuffer_drain(in, v.iov_len);
    }
    if (c->closing) {
        gw_conn_kick(c);
        gw_conn_read_buffered(c); /* lingering: read (and discard) what is held too */
        return;
    }
    gw_conn_process(c);
}

static void gw_conn_on_write(struct bufferevent *bev, void *arg) {
    gw_conn_t *c = arg;
    if (c->req) c->loop->srv->conn_ops->writable(c);
    if (c->out_blocked && !c->req) { /* below the low-water mark: take the next pipelined request */
        c->out_blocked = 0;
        gw_conn_kick(c);
    }
    if (c->closing && !c->req && evbuffer_get_length(bufferevent_get_output(bev)) == 0) gw_conn_closed_flushed(c);
}

static void gw_conn_on_event(struct bufferevent *bev, short what, void *arg) {
    gw_conn_t *c = arg;
    if (what & BEV_EVENT_CONNECTED) { /* the TLS handshake is done */
        c->handshaken = 1;
        if (c->refused) { /* past max_connections: say so, then close */
            c->loop->m.connections_refused++;
            c->loop->srv->conn_ops->request(c, NULL, 503, "Too many connections, retry later");
            return;
        }
        gw_conn_arm(c, TIMER_HEADER, 1); /* the first request */
        gw_conn_process(c);
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_WRITING)) c->loop->m.write_timeouts++;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) gw_conn_free(c);
}

static void gw_conn_on_timer(evutil_socket_t fd, short what, void *arg) {
    gw_conn_t *c = arg;
    int kind = c->timer_kind;
    c->timer_kind = TIMER_NONE;
    if (kind == TIMER_LINGER) {
        gw_conn_free(c);
        return;
    }
    if (c->req) return;
    if (kind == TIMER_HEADER && !c->closing && gw_http_parser_busy(&c->parser)) {
        gw_conn_bad_request(c, 408, "Request not received in time");
        return;
    }
    if (kind == TIMER_BODY && !c->closing) {
        gw_conn_bad_request(c, 408, "Request body not received in time");
        return;
    }
    gw_conn_free(c);
}

/* Close a connection; a request in flight is abandoned (the layer above
 * settles it with what is known and closes its worker connection). */
void gw_conn_free(gw_conn_t *c) {
    gw_loop_t *l = c->loop;
    if (c->req) l->srv->conn_ops->abort(c);
    if (c->held) gw_conn_unhold(c);
    if (c->prev) c->prev->next = c->next;
    else l->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->bev) bufferevent_free(c->bev);
    if (c->timer) event_free(c->timer);
    if (c->kick) event_free(c->kick);
    gw_http_parser_release(&c->parser);
    l->m.connections--;
    __atomic_fetch_sub(&l->srv->nconns, 1, __ATOMIC_RELAXED);
    free(c);
    gw_loop_maybe_exit(l);
}

void gw_conn_close_idle(gw_loop_t *l) {
    gw_conn_t *c = l->conns;
    while (c) {
        gw_conn_t *n = c->next;
        if (!c->req) gw_conn_free(c);
        c = n;
    }
}

void gw_conn_stop_all(gw_loop_t *l) {
    gw_conn_t *c = l->conns;
    while (c) {
        gw_conn_t *n = c->next; /* ending c's request may close c, never another */
        if (c->req) l->srv->conn_ops->stop(c);
        c = n;
    }
}

void gw_conn_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg) {
    gw_loop_t *l = arg;
    const gw_config_t *cfg = l->srv->cfg;
    int64_t n = __atomic_add_fetch(&l->srv->nconns, 1, __ATOMIC_RELAXED);
    int refuse = n > cfg->max_connections;
    if (l->shutting_down || n > cfg->max_connections + cfg->max_connections / 8 + 1) {
        __atomic_fetch_sub(&l->srv->nconns, 1, __ATOMIC_RELAXED);
        l->m.connections_refused++;
        evutil_closesocket(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    gw_conn_t *c = calloc(1, sizeof *c);
    SSL *ssl = c ? gw_tls_new_ssl(l->srv) : NULL;
    if (!ssl) {
        free(c);
        __atomic_fetch_sub(&l->srv->nconns, 1, __ATOMIC_RELAXED);
        evutil_closesocket(fd);
        return;
    }
    c->loop = l;
    c->refused = refuse;
    c->bev = bufferevent_openssl_socket_new(l->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                            BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!c->bev) {
        SSL_free(ssl);
        free(c);
        __atomic_fetch_sub(&l->srv->nconns, 1, __ATOMIC_RELAXED);
        evutil_closesocket(fd);
        return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    c->timer = evtimer_new(l->base, gw_conn_on_timer, c);
    c->kick = event_new(l->base, -1, 0, gw_conn_on_kick, c);
    gw_http_parser_init(&c->parser, (size_t)cfg->max_header_bytes, (size_t)cfg->max_body_bytes);
    c->next = l->conns;
    if (l->conns) l->conns->prev = c;
    l->conns = c;
    l->m.connections++;
    l->m.connections_total++;
    if (!c->timer || !c->kick) {
        gw_conn_free(c);
        return;
    }
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, host, sizeof host);
    else if (sa->sa_family == AF_INET6) inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof host);
    snprintf(c->peer, sizeof c->peer, "%s", host);
    bufferevent_setcb(c->bev, gw_conn_on_read, gw_conn_on_write, gw_conn_on_event, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, (size_t)cfg->stream_high_water / 2, 0);
    struct timeval wt = {(time_t)(cfg->write_timeout_ms / 1000), (suseconds_t)(cfg->write_timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(c->bev, NULL, &wt);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    gw_conn_arm(c, TIMER_HANDSHAKE, 1);
}

/* accept() failed (out of descriptors, most likely): pause accepting for
 * 100 ms instead of spinning on a listening socket that stays readable. */
void gw_conn_accept_error(struct evconnlistener *lis, void *arg) {
    gw_loop_t *l = arg;
    int e = EVUTIL_SOCKET_ERROR();
    fprintf(stderr, "tollgate: accept: %s; pausing 100 ms\n", evutil_socket_error_to_string(e));
    evconnlistener_disable(lis);
    struct timeval tv = {0, 100000};
    event_add(l->accept_pause, &tv);
}

void gw_conn_accept_resume(evutil_socket_t fd, short what, void *arg) {
    gw_loop_t *l = arg;
    if (!l->shutting_down && l->lis) evconnlistener_enable(l->lis);
}

void gw_loop_maybe_exit(gw_loop_t *l) {
    if (l->shutting_down && !l->conns) event_base_loopexit(l->base, NULL);
}
