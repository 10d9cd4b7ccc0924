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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include "gw-int.h"

static void gw_req_free(gw_req_t *r);

struct evbuffer *gw_req_out(gw_req_t *r) { return gw_conn_out(r->conn); }

/* x-ratelimit-reset-<what>: time until the window has room again, in the
 * Go duration style OpenAI uses ("59.982s", "250ms"). */
static void gw_reset_header(struct evbuffer *o, const char *what, int64_t ms) {
    if (ms < 1000) evbuffer_add_printf(o, "x-ratelimit-reset-%s: %lldms\r\n", what, (long long)ms);
    else evbuffer_add_printf(o, "x-ratelimit-reset-%s: %lld.%03llds\r\n", what, (long long)(ms / 1000),
                             (long long)(ms % 1000));
}

void gw_req_head(gw_req_t *r, int status, const char *ctype, int64_t clen) {
    if (r->head_sent || r->client_gone) return;
    r->head_sent = 1;
    r->status = status;
    if (r->loop->shutting_down) r->keep_alive = 0;
    struct evbuffer *o = gw_req_out(r);
    char date[40];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    evbuffer_add_printf(o, "HTTP/1.1 %d %s\r\nDate: %s\r\nX-Request-Id: %s\r\n", status, gw_http_reason(status),
                        date, r->id);
    if (ctype) evbuffer_add_printf(o, "Content-Type: %s\r\n", ctype);
    if (clen >= 0) {
        evbuffer_add_printf(o, "Content-Length: %lld\r\n", (long long)clen);
    } else if (r->http && r->http->minor >= 1) {
        evbuffer_add_printf(o, "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n");
        r->client_chunked = 1;
    } else {
        r->keep_alive = 0; /* close-delimited */
    }
    if (r->extra_headers) evbuffer_add(o, r->extra_headers, strlen(r->extra_headers));
    if (r->have_rl) {
        if (r->rl.limit > 0) {
            evbuffer_add_printf(o, "x-ratelimit-limit-requests: %lld\r\nx-ratelimit-remaining-requests: %lld\r\n",
                                (long long)r->rl.limit, (long long)r->rl.remaining);
            gw_reset_header(o, "requests", r->rl.reset_ms);
        }
        if (r->rl.tpm_limit > 0) {
            evbuffer_add_printf(o, "x-ratelimit-limit-tokens: %lld\r\nx-ratelimit-remaining-tokens: %lld\r\n",
                                (long long)r->rl.tpm_limit, (long long)r->rl.tpm_remaining);
            gw_reset_header(o, "tokens", r->rl.tpm_reset_ms);
        }
    }
    if (status == 429 && !(r->extra_headers && strcasestr(r->extra_headers, "retry-after:"))) {
        /* of the limit that refused (unless the answer has its own); a request that can never fit: a minute */
        int64_t ms = r->have_rl ? r->rl.retry_ms : 1000;
        if (ms < 0) ms = 60000;
        evbuffer_add_printf(o, "retry-after: %lld\r\n", ms > 1000 ? (long long)(ms + 999) / 1000 : 1LL);
    }
    if (r->receipt) evbuffer_add_printf(o, "x-tollgate-receipt: %s\r\n", r->receipt);
    evbuffer_add_printf(o, "Connection: %s\r\n\r\n", r->keep_alive ? "keep-alive" : "close");
}

void gw_req_answer(gw_req_t *r, int status, const char *ctype, const char *body, size_t len) {
    gw_req_head(r, status, ctype, (int64_t)len);
    if (!r->client_gone && len) evbuffer_add(gw_req_out(r), body, len);
    gw_req_finish(r);
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

const gw_conn_ops_t gw_req_conn_ops = {gw_req_on_request, gw_req_on_writable, gw_req_on_abort};

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
