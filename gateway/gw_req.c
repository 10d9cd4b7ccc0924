/* gw_req.c — one request's lifecycle, between its connection (below) and its
 * handler (above, reached only through gw_handler_t, as nginx's phase
 * handlers are): created from a parsed head with its own pool and request id,
 * routed (srv->route picks the handler), run, answered (head, body or an
 * OpenAI error), finished, and freed — the handler's finalize step first
 * (settlement), then the access-log line and the metrics.
 *
 * Invariants:
 *  - every answer carries X-Request-Id;
 *  - a request's memory and everything it holds hang on its pool, so freeing
 *    it (gw_req_free) releases everything whatever state it was in;
 *  - finalize runs exactly once per request, before the pool dies. */
#define _GNU_SOURCE /* strcasestr */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>

#include "gw-int.h"

static void gw_req_free(gw_req_t *r);

struct evbuffer *gw_req_out(gw_req_t *r) { return gw_conn_out(r->conn); }

void gw_req_hold(gw_req_t *r) { gw_conn_hold(r->conn); }

void gw_req_release_held(gw_loop_t *l) { gw_conn_release_held(l); }

void gw_req_head(gw_req_t *r, int status, const char *ctype, int64_t clen) {
    if (r->head_sent || r->client_gone) return;
    r->head_sent = 1;
    r->status = status;
    if (r->loop->shutting_down) r->keep_alive = 0;
    gw_http_head_t h = {.status = status, .date = gw_http_date(time(NULL)), .request_id = r->id,
                        .content_type = ctype, .content_length = clen, .extra = r->extra_headers,
                        .retry_after_s = -1, .receipt = r->receipt, .cors = r->cors};
    if (status == 204) h.content_length = -1; /* no body, and no Content-Length (RFC 9110 §8.6) */
    else if (clen < 0 && r->http && r->http->minor >= 1) h.chunked = r->client_chunked = 1;
    else if (clen < 0) r->keep_alive = 0; /* close-delimited */
    if (r->have_rl) {
        h.rl_limit = r->rl.limit, h.rl_remaining = r->rl.remaining, h.rl_reset_ms = r->rl.reset_ms;
        h.tpm_limit = r->rl.tpm_limit, h.tpm_remaining = r->rl.tpm_remaining, h.tpm_reset_ms = r->rl.tpm_reset_ms;
    }
    if (status == 429 && !(r->extra_headers && strcasestr(r->extra_headers, "retry-after:"))) {
        /* of the limit that refused (unless the answer has its own); a request that can never fit: a minute */
        int64_t ms = r->have_rl ? r->rl.retry_ms : 1000;
        if (ms < 0) ms = 60000;
        h.retry_after_s = ms > 1000 ? (ms + 999) / 1000 : 1;
    }
    h.keep_alive = r->keep_alive;
    /* assembled in the loop's scratch buffer (kept between answers), queued in one piece */
    tg_buf_t *b = &r->loop->scratch;
    tg_buf_consume(b, b->len);
    gw_http_head_write(b, &h);
    if (b->oom) { /* no head could be written: the connection cannot go on */
        tg_buf_free(b);
        r->keep_alive = 0;
        r->client_gone = 1;
        return;
    }
    /* a whole answer's head and body in one chain (its body follows at once):
     * bufferevent_openssl writes each chain as records of its own, so a head
     * in a chain of its own cost a record and a write(2) more (gw_conn.c) */
    struct evbuffer *o = gw_req_out(r);
    if (clen > 0 && (uint64_t)clen <= GW_ANSWER_ONE_CHAIN_MAX && !gw_req_is_head(r))
        evbuffer_expand(o, b->len + (size_t)clen);
    evbuffer_add(o, b->p, b->len);
    if (clen < 0) gw_conn_flush(r->conn); /* a stream's head goes out now; a whole answer's with its body */
}

int gw_req_is_head(const gw_req_t *r) { return r->http && !strcmp(r->http->method, "HEAD"); }

/* The answer to HEAD is the head GET would get, Content-Length included, and
 * no body (RFC 9110 §9.3.2): the client reads no body, so body bytes would be
 * taken for the start of the next answer on the connection. */
void gw_req_answer(gw_req_t *r, int status, const char *ctype, const char *body, size_t len) {
    gw_req_head(r, status, ctype, (int64_t)len);
    if (!r->client_gone && len && !gw_req_is_head(r)) evbuffer_add(gw_req_out(r), body, len);
    gw_req_finish(r);
}

void gw_req_method_not_allowed(gw_req_t *r, const char *allow) {
    size_t n = strlen(allow) + sizeof "Allow: \r\n";
    char *h = gw_palloc(r->pool, n);
    if (h) snprintf(h, n, "Allow: %s\r\n", allow);
    r->extra_headers = h;
    char msg[128];
    snprintf(msg, sizeof msg, "Method %.16s is not allowed on this endpoint; use %s", r->http->method, allow);
    gw_req_error(r, 405, "invalid_request_error", "method_not_allowed", NULL, msg);
}

void gw_req_error(gw_req_t *r, int status, const char *type, const char *code, const char *param,
                  const char *msg) {
    tg_buf_t b = {0};
    r->error_code = code;
    tg_buf_printf(&b, "{\"error\":{\"message\":\"");
    tg_json_write_chars(&b, msg, strlen(msg));
    tg_buf_printf(&b, "\",\"type\":\"%s\",\"param\":", type);
    if (param) tg_buf_printf(&b, "\"%s\"", param);
    else tg_buf_printf(&b, "null");
    if (code) tg_buf_printf(&b, ",\"code\":\"%s\"}}\n", code);
    else tg_buf_printf(&b, ",\"code\":null}}\n");
    if (!b.p) {
        r->keep_alive = 0;
        gw_req_answer(r, status, "application/json", "", 0);
    } else {
        gw_req_answer(r, status, "application/json", b.p, b.len);
    }
    tg_buf_free(&b);
}

static void gw_req_cleanup_http(void *arg) { gw_http_req_free(arg); }

/* Why h's Host field refuses it (RFC 9112 §3.2: an HTTP/1.1 request without
 * one, any request with more than one or with an invalid value is a 400), or
 * NULL.  Allowed: uri-host [":" port] characters, an empty value included. */
static const char *gw_req_host_refused(const gw_http_req_t *h) {
    int n = 0;
    const char *v = NULL;
    for (int i = 0; i < h->nhdrs; i++)
        if (h->hdrs[i].name_len == 4 && !strcasecmp(h->hdrs[i].name, "host")) n++, v = h->hdrs[i].value;
    if (n > 1) return "More than one Host header";
    if (!n) return h->minor >= 1 ? "Missing Host header (required in HTTP/1.1)" : NULL;
    static const unsigned char host_char[256] = {
        ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1,
        ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1,
        [';'] = 1, ['='] = 1, [':'] = 1, ['%'] = 1, ['['] = 1, [']'] = 1,
    };
    for (const char *q = v; *q; q++)
        if (!host_char[(unsigned char)*q]) return "Invalid Host header";
    return NULL;
}

/* A request from connection c: h parsed (owned now), or h NULL for input that
 * could not be parsed (answered status/msg, then the connection closes). */
static void gw_req_on_request(gw_conn_t *c, gw_http_req_t *h, int status, const char *msg) {
    gw_pool_t *pool = gw_pool_new();
    gw_req_t *r = pool ? gw_palloc(pool, sizeof *r) : NULL;
    if (!r || (h && gw_pool_cleanup_add(pool, gw_req_cleanup_http, h) != GW_OK)) {
        gw_pool_free(pool);
        gw_http_req_free(h);
        gw_conn_next(c, 0);
        return;
    }
    r->pool = pool;
    r->loop = c->loop;
    r->srv = c->loop->srv;
    r->conn = c;
    r->http = h;
    r->received_us = tg_wall_us();
    r->route = GW_ROUTE_OTHER;
    r->keep_alive = h ? h->keep_alive : 0;
    r->prompt_est = -1;
    gw_uuid7(r->id);
    gw_conn_begin(c, r);
    if (!h) {
        const char *code = status == 413 ? "request_too_large" : status == 431 ? "header_too_large"
                           : status == 414 ? "request_line_too_long"
                           : status == 408 ? "request_timeout" : "invalid_request";
        if (status == 503) gw_req_error(r, 503, "server_error", "too_many_connections", NULL, msg);
        else gw_req_error(r, status, "invalid_request_error", code, NULL, msg);
        return;
    }
    const char *host = gw_req_host_refused(h);
    if (host) {
        gw_req_error(r, 400, "invalid_request_error", "invalid_request", NULL, host);
        return;
    }
    r->handler = r->srv->route(r);
    r->route = r->handler->route;
    r->handler->run(r);
}

static void gw_req_on_writable(gw_conn_t *c) {
    gw_req_t *r = c->req;
    if (r->handler && r->handler->resume) r->handler->resume(r);
}

static void gw_req_on_abort(gw_conn_t *c) {
    gw_req_t *r = c->req;
    if (!r->done) c->loop->m.client_aborts++;
    r->client_gone = 1;
    gw_req_free(r);
}

/* The shutdown grace is over with c->req still running: its handler ends it,
 * or, before the head, it is answered 503 server_shutting_down (what it was
 * waiting for is cancelled by its pool's cleanup); an answer already started
 * by another handler keeps going until the loop ends. */
static void gw_req_on_stop(gw_conn_t *c) {
    gw_req_t *r = c->req;
    r->keep_alive = 0;
    if (r->handler && r->handler->stop && r->handler->stop(r) == GW_OK) return;
    if (!r->head_sent)
        gw_req_error(r, 503, "server_error", "server_shutting_down", NULL,
                     "The gateway is shutting down; the request was not answered, retry");
}

const gw_conn_ops_t gw_req_conn_ops = {gw_req_on_request, gw_req_on_writable, gw_req_on_abort, gw_req_on_stop};

/* Account for a finished or abandoned request and free it. */
static void gw_req_free(gw_req_t *r) {
    gw_loop_t *l = r->loop;
    if (!r->finished_us) r->finished_us = tg_wall_us();
    if (r->client_gone && !r->head_sent) r->status = 499; /* nginx's "client closed request" */
    if (r->handler && r->handler->finalize) r->handler->finalize(r);
    gw_log_request(r);
    gw_metrics_observe(&l->m, r->route, r->status, (r->finished_us - r->received_us) / 1e6,
                       r->first_byte_us ? (r->first_byte_us - r->received_us) / 1e6 : -1);
    gw_conn_end(r->conn);
    gw_pool_free(r->pool);
}

/* The answer is fully queued: account, free, move to the next request. */
void gw_req_finish(gw_req_t *r) {
    if (r->done) return;
    r->done = 1;
    gw_conn_t *c = r->conn;
    int keep_alive = r->keep_alive;
    r->finished_us = tg_wall_us();
    gw_req_free(r);
    gw_conn_next(c, keep_alive);
}
