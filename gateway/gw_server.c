/* gw_server.c — the TLS front door: accepts connections, feeds bytes to the
 * request parser, routes each request, runs the admission chain of a chat
 * completion and writes answers, access-log lines and settlements.
 *
 * Invariants:
 *  - a connection answers one request at a time (pipelined requests wait in
 *    the parser's buffer) and every answer carries X-Request-Id;
 *  - a request's memory, its pending billing/Redis calls, its worker
 *    connection and its concurrency slot all hang on its pool, so freeing the
 *    pool (gw_req_free) releases everything whatever state it was in;
 *  - work that could re-enter (next pipelined request, closing) goes through
 *    the connection's kick event, never directly from a callback;
 *  - a request that reached a worker is settled exactly once (gw_req_free). */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "gw-int.h"
#include "api.h"
#include "tg_json.h"
#include "tok.h"

enum { TIMER_NONE, TIMER_HEADER, TIMER_IDLE, TIMER_LINGER };

static void gw_conn_free(gw_conn_t *c);
static int gw_req_peek_limits(gw_req_t *r, gw_rl_cb then);
static void gw_conn_kick(gw_conn_t *c);
static void gw_req_free(gw_req_t *r);
static void gw_server_maybe_exit(gw_server_t *s);

/* ---- responses ------------------------------------------------------------ */

struct evbuffer *gw_req_out(gw_req_t *r) { return bufferevent_get_output(r->conn->bev); }

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
    if (r->srv->shutting_down) r->keep_alive = 0;
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

static void gw_req_body(gw_req_t *r, const char *ctype, int status, const char *body, size_t len) {
    gw_req_head(r, status, ctype, (int64_t)len);
    if (!r->client_gone) evbuffer_add(gw_req_out(r), body, len);
}

void gw_req_error(gw_req_t *r, int status, const char *type, const char *code, const char *param,
                  const char *msg) {
    gw_buf_t b = {0};
    r->error_code = code;
    gw_buf_printf(&b, "{\"error\":{\"message\":\"");
    gw_buf_json_str(&b, msg, strlen(msg));
    gw_buf_printf(&b, "\",\"type\":\"%s\",\"param\":", type);
    if (param) gw_buf_printf(&b, "\"%s\"", param);
    else gw_buf_printf(&b, "null");
    if (code) gw_buf_printf(&b, ",\"code\":\"%s\"}}\n", code);
    else gw_buf_printf(&b, ",\"code\":null}}\n");
    if (!b.p) {
        r->keep_alive = 0;
        gw_req_body(r, "application/json", status, "", 0);
    } else {
        gw_req_body(r, "application/json", status, b.p, b.len);
    }
    gw_buf_free(&b);
    gw_req_finish(r);
}

/* ---- access log, settlement ------------------------------------------------ */

static void gw_access_log(gw_req_t *r) {
    FILE *f = r->srv->alog;
    if (!f) return;
    gw_buf_t b = {0};
    time_t sec = (time_t)(r->received_us / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char ts[40];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    gw_buf_printf(&b, "{\"ts\":\"%s.%06lldZ\",\"request_id\":\"%s\",\"remote\":\"%s\",\"method\":\"", ts,
                  (long long)(r->received_us % 1000000), r->id, r->conn->peer);
    if (r->http) gw_buf_json_str(&b, r->http->method, strlen(r->http->method));
    gw_buf_printf(&b, "\",\"path\":\"");
    if (r->http) gw_buf_json_str(&b, r->http->target, strnlen(r->http->target, 512));
    gw_buf_printf(&b, "\",\"status\":%d", r->status);
    if (r->admitted) gw_buf_printf(&b, ",\"key_id\":%lld,\"customer_id\":%lld", (long long)r->key.key_id,
                                   (long long)r->key.customer_id);
    if (r->model) {
        gw_buf_printf(&b, ",\"model\":\"");
        gw_buf_json_str(&b, r->model, strlen(r->model));
        gw_buf_printf(&b, "\",\"stream\":%s", r->stream ? "true" : "false");
    }
    if (r->proxied)
        gw_buf_printf(&b, ",\"worker\":\"%s\",\"prompt_tokens\":%lld,\"prompt_cache_hit_tokens\":%lld,"
                          "\"completion_tokens\":%lld,\"reasoning_tokens\":%lld,\"usage_reported\":%s",
                      r->worker_url ? r->worker_url : "", (long long)r->prompt_tokens, (long long)r->cache_hit_tokens,
                      (long long)r->completion_tokens, (long long)r->reasoning_tokens,
                      r->have_usage ? "true" : "false");
    if (r->error_code) gw_buf_printf(&b, ",\"error\":\"%s\"", r->error_code);
    if (r->client_gone) gw_buf_printf(&b, ",\"client_aborted\":true");
    gw_buf_printf(&b, ",\"ttfb_ms\":%.3f,\"duration_ms\":%.3f}\n",
                  r->first_byte_us ? (r->first_byte_us - r->received_us) / 1000.0 : -1.0,
                  (r->finished_us - r->received_us) / 1000.0);
    if (b.p) {
        fwrite(b.p, 1, b.len, f);
        fflush(f);
    }
    gw_buf_free(&b);
}

/* The gateway's own count of the prompt: the request rendered by api/ (the
 * reader the engine uses: messages, tools, the model's chat template),
 * tokenized (about 18 ms per MiB, bounded by max_body_bytes, on the loop).
 * -1 when no tokenizer is loaded or the template refuses the conversation.
 * Text may hold U+0000: the rendered prompt holds the NUL bytes and the
 * tokenizer counts them as text, as the engine does. */
static int64_t gw_prompt_count_json(gw_server_t *s, const api_chat_req_t *chat) {
    api_err_t e;
    size_t tl = 0;
    char *text = api_chat_render(chat, (tok_tmpl_kind_t)s->tmpl, &tl, &e);
    if (!text) return -1;
    long t = tok_count(s->tok, text, tl, 1);
    free(text);
    return t >= 0 ? t : -1;
}

static int64_t gw_req_prompt_count(gw_req_t *r) {
    if (r->prompt_est != -1) return r->prompt_est;
    r->prompt_est = -2;
    gw_server_t *s = r->srv;
    if (!s->tok) return -1;
    int64_t n = gw_prompt_count_json(s, r->chat);
    if (n >= 0) r->prompt_est = n;
    return n;
}

/* Settle once: r->proxied is 1 while a worker was asked and 2 once settled.
 * Called at the latest from gw_req_free; a finished answer settles before its
 * last bytes are queued for the client (gw_req_settle_done), so that a client
 * holding a complete answer always has a durable usage row (bill_settle
 * journals it before returning).  Before, not after: queuing bytes on the TLS
 * bufferevent may SSL_write them at once (libevent's output callback). */
static void gw_req_settle(gw_req_t *r) {
    if (r->proxied != 1 || !r->admitted || !r->srv->bill) return;
    r->proxied = 2;
    bill_usage_t u;
    memset(&u, 0, sizeof u);
    memcpy(u.request_id, r->id, sizeof u.request_id);
    u.key_id = r->key.key_id;
    u.customer_id = r->key.customer_id;
    u.model = r->model;
    u.price = r->key.price;
    if (!r->have_usage && r->up_head_done && r->resp.status == 200) {
        /* a 200 answer without usage (a cut stream): our own prompt count,
         * one completion token per text chunk seen */
        int64_t p = gw_req_prompt_count(r);
        r->prompt_tokens = p > 0 ? p : 0;
        r->cache_hit_tokens = 0;
        r->completion_tokens = r->chunks;
    }
    u.prompt_tokens = r->prompt_tokens;
    u.prompt_cache_hit_tokens = r->cache_hit_tokens;
    u.completion_tokens = r->completion_tokens;
    u.reasoning_tokens = r->reasoning_tokens;
    u.http_status = r->status;
    u.stream = r->stream;
    u.received_us = r->received_us;
    u.first_byte_us = r->first_byte_us;
    u.finished_us = r->finished_us;
    bill_settle(r->srv->bill, &u, &r->hold);
    char rc[BILL_RECEIPT_MAX];
    long rn = bill_receipt(r->srv->bill, &u, rc, sizeof rc);
    char *rp = rn > 0 ? gw_palloc(r->pool, (size_t)rn + 1) : NULL;
    if (rp) r->receipt = memcpy(rp, rc, (size_t)rn + 1);
    gw_metrics_t *m = &r->srv->m;
    m->tokens_prompt += (uint64_t)u.prompt_tokens;
    m->tokens_cache_hit += (uint64_t)u.prompt_cache_hit_tokens;
    m->tokens_completion += (uint64_t)u.completion_tokens;
    m->tokens_reasoning += (uint64_t)u.reasoning_tokens;
}

/* The last bytes of the answer (status `status`: a whole body, a stream's
 * "data: [DONE]" or end) are about to be queued for the client: settle now
 * with the usage known (declared in gw_proxy.c).  A client already gone is
 * settled by gw_req_free, with its 499. */
void gw_req_settle_done(gw_req_t *r, int status) {
    if (r->proxied != 1 || r->client_gone) return;
    r->status = status;
    r->finished_us = gw_now_us();
    gw_req_settle(r);
}

/* Read token counts from an OpenAI/DeepSeek usage object: exact integers
 * (tg_json_int64, never through a double) in 0..1e12; anything else is
 * rejected. */
static int gw_usage_int(const tg_json_t *x, int64_t *out) {
    return tg_json_int64(x, out) == 0 && *out >= 0 && *out <= 1000000000000LL ? GW_OK : GW_ERROR;
}

int gw_req_usage_from_json(gw_req_t *r, const tg_json_t *u) {
    if (tg_json_type(u) != TG_JSON_OBJECT) return GW_ERROR;
    const char *names[] = {"prompt_tokens", "completion_tokens", "prompt_cache_hit_tokens"};
    int64_t v[3] = {0, 0, -1};
    for (int i = 0; i < 3; i++) {
        const tg_json_t *x = tg_json_get(u, names[i]);
        if (!x) {
            if (i < 2) return GW_ERROR;
            continue;
        }
        if (gw_usage_int(x, &v[i]) != GW_OK) return GW_ERROR;
    }
    if (v[2] < 0) { /* OpenAI shape only */
        const tg_json_t *c = tg_json_get(tg_json_get(u, "prompt_tokens_details"), "cached_tokens");
        if (gw_usage_int(c, &v[2]) != GW_OK) v[2] = 0;
    }
    if (v[2] > v[0]) v[2] = v[0];
    int64_t reasoning;
    if (gw_usage_int(tg_json_get(tg_json_get(u, "completion_tokens_details"), "reasoning_tokens"), &reasoning) != GW_OK)
        reasoning = 0;
    if (reasoning > v[1]) reasoning = v[1];
    r->prompt_tokens = v[0];
    r->completion_tokens = v[1];
    r->cache_hit_tokens = v[2];
    r->reasoning_tokens = reasoning;
    r->have_usage = 1;
    return GW_OK;
}

/* ---- request lifecycle ----------------------------------------------------- */

static void gw_req_cleanup_http(void *arg) { gw_http_req_free(arg); }
static void gw_req_cleanup_json(void *arg) { tg_json_free(arg); }
static void gw_req_cleanup_chat(void *arg) {
    api_chat_req_free(arg);
    free(arg);
}

static void gw_req_cleanup_calls(void *arg) {
    gw_req_t *r = arg;
    bill_cancel(r->admit);
    r->admit = NULL;
    bill_cancel(r->hold_req);
    r->hold_req = NULL;
    bill_hold_release(r->srv->bill, &r->hold); /* not settled: nothing was billed */
    /* frees the concurrency slots; corrects TPM with the tokens settled
     * (none when no worker was reached: the whole charge comes back) */
    gw_rl_finish(r->rl_call, r->proxied ? r->prompt_tokens + r->completion_tokens : 0);
    r->rl_call = NULL;
    gw_proxy_release(r);
    gw_buf_free(&r->payload);
    gw_buf_free(&r->body);
    gw_buf_free(&r->scratch);
    gw_sse_release(&r->sse);
}

static gw_req_t *gw_req_new(gw_conn_t *c, gw_http_req_t *h) {
    gw_pool_t *pool = gw_pool_new();
    gw_req_t *r = pool ? gw_palloc(pool, sizeof *r) : NULL;
    if (!r) {
        gw_pool_free(pool);
        gw_http_req_free(h);
        return NULL;
    }
    r->pool = pool;
    r->srv = c->srv;
    r->conn = c;
    r->http = h;
    r->received_us = gw_now_us();
    r->route = GW_ROUTE_OTHER;
    r->keep_alive = h ? h->keep_alive : 0;
    r->prompt_est = -1;
    gw_uuid7(r->id);
    if (h && gw_pool_cleanup_add(pool, gw_req_cleanup_http, h) != GW_OK) { /* h is not the pool's yet */
        gw_pool_free(pool);
        gw_http_req_free(h);
        return NULL;
    }
    if (gw_pool_cleanup_add(pool, gw_req_cleanup_calls, r) != GW_OK) {
        gw_pool_free(pool); /* frees h */
        return NULL;
    }
    c->req = r;
    c->srv->nbusy++;
    if (c->timer) event_del(c->timer);
    c->timer_kind = TIMER_NONE;
    return r;
}

/* Account for a finished or abandoned request and free it. */
static void gw_req_free(gw_req_t *r) {
    gw_server_t *s = r->srv;
    gw_conn_t *c = r->conn;
    if (!r->finished_us) r->finished_us = gw_now_us();
    if (r->client_gone && !r->head_sent) r->status = 499; /* nginx's "client closed request" */
    if (r->route == GW_ROUTE_CHAT) s->m.inflight--;
    gw_req_settle(r);
    if (r->admitted && !r->proxied) /* a 429 or 5xx (or 402) without a usage row: counted in the rollup */
        bill_refusal(s->bill, r->key.customer_id, r->key.key_id, r->model, r->status);
    gw_access_log(r);
    gw_metrics_observe(&s->m, r->route, r->status, (r->finished_us - r->received_us) / 1e6,
                       r->first_byte_us ? (r->first_byte_us - r->received_us) / 1e6 : -1);
    c->req = NULL;
    s->nbusy--;
    gw_pool_free(r->pool);
}

/* The answer is fully queued: account, free, move to the next request. */
void gw_req_finish(gw_req_t *r) {
    if (r->done) return;
    r->done = 1;
    gw_conn_t *c = r->conn;
    if (!r->keep_alive) c->closing = 1;
    r->finished_us = gw_now_us();
    gw_req_free(r);
    gw_conn_kick(c);
    gw_server_maybe_exit(c->srv);
}

/* ---- routes ---------------------------------------------------------------- */

static int gw_model_known(const gw_config_t *cfg, const char *model) {
    for (int i = 0; i < cfg->nworkers; i++)
        for (int j = 0; j < cfg->workers[i].nmodels; j++)
            if (!strcmp(cfg->workers[i].models[j], model)) return 1;
    return 0;
}

/* 1 when the key's scope (a parsed JSON array of model names, NULL: every
 * model) holds model. */
static int gw_scope_allows(const tg_json_t *scope, const char *model) {
    if (!scope) return 1;
    for (size_t i = 0; i < tg_json_len(scope); i++) {
        size_t n;
        const char *m = tg_json_str(tg_json_at(scope, i), &n);
        if (m && n == strlen(model) && !memcmp(m, model, n)) return 1;
    }
    return 0;
}

static void gw_model_not_allowed(gw_req_t *r, const char *model) {
    char msg[300];
    snprintf(msg, sizeof msg, "This api key may not use the model '%.200s'", model);
    gw_req_error(r, 403, "permission_error", "model_not_allowed", "model", msg);
}

/* scope: the key's allowed models (NULL: all); /v1/models lists only those. */
static void gw_route_models_answer(gw_req_t *r, const tg_json_t *scope) {
    const gw_config_t *cfg = r->srv->cfg;
    gw_buf_t b = {0};
    if (r->model) { /* GET /v1/models/{id} */
        if (!gw_model_known(cfg, r->model)) {
            char msg[300];
            snprintf(msg, sizeof msg, "The model '%.200s' does not exist", r->model);
            gw_req_error(r, 404, "invalid_request_error", "model_not_found", "model", msg);
            return;
        }
        if (!gw_scope_allows(scope, r->model)) {
            gw_model_not_allowed(r, r->model);
            return;
        }
        gw_buf_printf(&b, "{\"id\":\"");
        gw_buf_json_str(&b, r->model, strlen(r->model));
        gw_buf_printf(&b, "\",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"tollgate\"}\n",
                      (long long)r->srv->started);
        if (!b.p) gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
        else {
            gw_req_body(r, "application/json", 200, b.p, b.len);
            gw_req_finish(r);
        }
        gw_buf_free(&b);
        return;
    }
    gw_buf_printf(&b, "{\"object\":\"list\",\"data\":[");
    int first = 1;
    for (int i = 0; i < cfg->nworkers; i++)
        for (int j = 0; j < cfg->workers[i].nmodels; j++) {
            const char *m = cfg->workers[i].models[j];
            int dup = 0; /* the same model on several workers is listed once */
            for (int k = 0; k <= i && !dup; k++)
                for (int l = 0; l < (k == i ? j : cfg->workers[k].nmodels); l++)
                    if (!strcmp(cfg->workers[k].models[l], m)) dup = 1;
            if (dup || !gw_scope_allows(scope, m)) continue;
            gw_buf_printf(&b, "%s{\"id\":\"", first ? "" : ",");
            gw_buf_json_str(&b, m, strlen(m));
            gw_buf_printf(&b, "\",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"tollgate\"}",
                          (long long)r->srv->started);
            first = 0;
        }
    gw_buf_printf(&b, "]}\n");
    if (!b.p) gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
    else {
        gw_req_body(r, "application/json", 200, b.p, b.len);
        gw_req_finish(r);
    }
    gw_buf_free(&b);
}

static void gw_admit_error(gw_req_t *r, bill_status_t st) {
    if (st == BILL_UNAUTHORIZED || st == BILL_KEY_EXPIRED) gw_rl_auth_failed(r->srv->rl, r->conn->peer);
    switch (st) {
    case BILL_UNAUTHORIZED:
        gw_req_error(r, 401, "invalid_request_error", "invalid_api_key", NULL,
                     "Authentication Fails, Your api key is invalid or revoked");
        break;
    case BILL_KEY_EXPIRED:
        gw_req_error(r, 401, "invalid_request_error", "api_key_expired", NULL,
                     "Authentication Fails, Your api key has expired");
        break;
    case BILL_MODEL_NOT_ALLOWED:
        gw_model_not_allowed(r, r->model ? r->model : "");
        break;
    case BILL_NO_BALANCE:
        gw_req_error(r, 402, "invalid_request_error", "insufficient_balance", NULL, "Insufficient Balance");
        break;
    case BILL_NO_PRICE:
        gw_req_error(r, 404, "invalid_request_error", "model_not_found", "model", "The model has no price");
        break;
    default:
        gw_req_error(r, 503, "server_error", "service_unavailable", NULL,
                     "Accounts are temporarily unavailable, retry later");
        break;
    }
}

static void gw_models_answer_scoped(gw_req_t *r) {
    tg_json_t *scope = NULL;
    if (r->scope_json) {
        tg_json_err_t jerr;
        scope = tg_json_parse(r->scope_json, strlen(r->scope_json), NULL, &jerr);
        if (!scope) {
            gw_req_error(r, 500, "server_error", NULL, NULL, "the key's model scope is unreadable");
            return;
        }
    }
    gw_route_models_answer(r, scope);
    tg_json_free(scope);
}

static void gw_models_limits(int verdict, const gw_rl_result_t *res, void *arg) {
    gw_req_t *r = arg;
    r->have_rl = verdict != GW_RL_UNAVAILABLE;
    r->rl = *res;
    gw_models_answer_scoped(r);
}

/* A key with no balance may still list.  The answer waits for a look at the
 * key's limits (the x-ratelimit-* headers; nothing is taken). */
static void gw_models_admitted(bill_status_t st, const bill_key_t *key, void *arg) {
    gw_req_t *r = arg;
    r->admit = NULL;
    if (st != BILL_OK && st != BILL_NO_BALANCE && st != BILL_NO_PRICE && st != BILL_MODEL_NOT_ALLOWED) {
        gw_admit_error(r, st);
        return;
    }
    r->key = *key;
    r->key.models_json = NULL;
    if (key->models_json && !(r->scope_json = gw_pstrndup(r->pool, key->models_json, strlen(key->models_json)))) {
        gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    if (gw_req_peek_limits(r, gw_models_limits) != GW_OK) gw_models_answer_scoped(r);
}

/* Bearer token of the request, or NULL (answered 401). */
static const char *gw_req_bearer(gw_req_t *r) {
    int64_t retry_ms;
    if (gw_rl_auth_blocked(r->srv->rl, r->conn->peer, &retry_ms)) { /* before any key lookup */
        r->srv->m.ratelimited++;
        r->have_rl = 1;
        memset(&r->rl, 0, sizeof r->rl);
        r->rl.retry_ms = retry_ms;
        gw_req_error(r, 429, "rate_limit_error", "too_many_failed_authentications", NULL,
                     "Too many failed authentications from this address; retry later");
        return NULL;
    }
    const char *a = gw_http_header(r->http, "authorization");
    const char *msg = "Authentication Fails, no api key given (Authorization: Bearer <key>)";
    if (a) {
        if (strncasecmp(a, "Bearer ", 7)) {
            msg = "Authentication Fails, malformed Authorization header (want: Bearer <key>)";
        } else {
            const char *k = a + 7;
            while (*k == ' ') k++;
            size_t n = strlen(k);
            int ok = n > 0 && n <= 256;
            for (size_t i = 0; ok && i < n; i++)
                if ((unsigned char)k[i] <= 0x20 || (unsigned char)k[i] >= 0x7f) ok = 0;
            if (ok) return k;
            msg = "Authentication Fails, malformed api key";
        }
    }
    gw_rl_auth_failed(r->srv->rl, r->conn->peer);
    gw_req_error(r, 401, "invalid_request_error", "invalid_api_key", NULL, msg);
    return NULL;
}

/* A mistyped or made-up key (wrong shape or checksum) is refused here,
 * right where it would be looked up, without touching the cache, Redis or
 * PostgreSQL.  Returns 1 when answered (401). */
static int gw_key_refused_offline(gw_req_t *r, const char *key) {
    if (bill_key_shape(key) != BILL_KEY_BAD) return 0;
    r->srv->m.key_format_rejects++;
    gw_req_error(r, 401, "invalid_request_error", "invalid_api_key", NULL,
                 "Authentication Fails, Your api key is invalid (not a key this service issued: wrong shape or "
                 "checksum)");
    return 1;
}

static void gw_route_models(gw_req_t *r) {
    const char *key = gw_req_bearer(r);
    if (!key) return;
    const gw_config_t *cfg = r->srv->cfg;
    if (!r->srv->bill) {
        gw_admit_error(r, BILL_ERROR);
        return;
    }
    if (gw_key_refused_offline(r, key)) return;
    r->admit = bill_admit(r->srv->bill, key, cfg->workers[0].models[0], r->conn->peer, gw_models_admitted, r);
    if (!r->admit) gw_admit_error(r, BILL_ERROR);
}

static void gw_route_metrics(gw_req_t *r) {
    gw_buf_t b = {0};
    r->srv->m.redis_errors = gw_rl_stats(r->srv->rl)->redis_errors;
    gw_metrics_render(&r->srv->m, r->srv->cfg, gw_rl_connected(r->srv->rl), &b);
    bill_hold_stats_t hs;
    bill_hold_stats(r->srv->bill, &hs);
    gw_metrics_render_holds(&r->srv->m, &hs, &b);
    gw_rl_metrics(r->srv->rl, &b);
    gw_metrics_render_money(r->srv->bill, &b);
    if (!b.p) gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
    else {
        gw_req_body(r, "text/plain; version=0.0.4", 200, b.p, b.len);
        gw_req_finish(r);
    }
    gw_buf_free(&b);
}

/* -- chat completions: validate -> admit -> rate limit -> concurrency -> hold -> proxy */

/* The most this request may cost: the prompt (the gateway's own count, or
 * its bytes when there is no tokenizer: a token is at least one byte) at the
 * cache-miss price plus the completion cap at the output price. */
static int64_t gw_req_max_cost(gw_req_t *r) {
    int64_t p = gw_req_prompt_count(r);
    if (p < 0) p = (int64_t)r->http->body_len + 64;
    int64_t c = bill_cost_pico(&r->key.price, p, 0, r->completion_cap);
    return c < 0 ? INT64_MAX : c;
}

static void gw_chat_held(bill_status_t st, const bill_hold_info_t *info, void *arg) {
    gw_req_t *r = arg;
    r->hold_req = NULL;
    if (st == BILL_OK) {
        gw_proxy_start(r);
        return;
    }
    if (st != BILL_NO_BALANCE && st != BILL_SPEND_LIMIT) {
        gw_admit_error(r, st);
        return;
    }
    static const char *const what[] = {"balance", "key's daily spending limit", "key's monthly spending limit",
                                       "account's daily spending limit", "account's monthly spending limit"};
    char need[32], have[32], msg[400];
    bill_usd_str(info ? info->needed_pico : 0, need);
    bill_usd_str(info ? info->available_pico : 0, have);
    int lim = info && info->limit >= 0 && info->limit <= BILL_LIMIT_CUSTOMER_MONTH ? info->limit : 0;
    snprintf(msg, sizeof msg,
             "%s: this request may cost up to $%s (%lld prompt tokens and up to %lld completion tokens); "
             "the %s leaves $%s",
             st == BILL_NO_BALANCE ? "Insufficient Balance" : "Spending limit reached", need,
             (long long)(gw_req_prompt_count(r) > 0 ? gw_req_prompt_count(r) : 0), (long long)r->completion_cap,
             what[lim], have);
    r->srv->m.refused_balance++;
    gw_req_error(r, 402, "invalid_request_error", st == BILL_NO_BALANCE ? "insufficient_balance" : "spending_limit_exceeded",
                 NULL, msg);
}

static void gw_chat_hold(gw_req_t *r) {
    r->hold_req = bill_hold(r->srv->bill, &r->key, gw_req_max_cost(r), &r->hold, gw_chat_held, r);
    if (!r->hold_req) gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
}

/* The limits of the request's key (its own, else the configured defaults)
 * and of its customer (no defaults: 0 is none). */
static void gw_req_limits(gw_req_t *r, gw_rl_limits_t *key, gw_rl_limits_t *cust) {
    const gw_config_t *cfg = r->srv->cfg;
    key->rpm = r->key.rpm > 0 ? r->key.rpm : cfg->default_rpm;
    key->tpm = r->key.tpm > 0 ? r->key.tpm : cfg->default_tpm;
    key->conc = r->key.concurrency > 0 ? r->key.concurrency : cfg->default_concurrency;
    cust->rpm = r->key.cust_rpm;
    cust->tpm = r->key.cust_tpm;
    cust->conc = r->key.cust_concurrency;
}

static int gw_limits_any(const gw_rl_limits_t *l) { return l->rpm > 0 || l->tpm > 0 || l->conc > 0; }

/* An answer after authentication that is not an admission (a refusal by
 * billing, /v1/models) still carries the x-ratelimit-* headers: the limits'
 * state is looked at (not taken) first, then `then` answers. */
static int gw_req_peek_limits(gw_req_t *r, gw_rl_cb then) {
    gw_rl_limits_t kl, cl;
    gw_req_limits(r, &kl, &cl);
    if (!gw_limits_any(&kl) && !gw_limits_any(&cl)) return GW_ERROR;
    r->rl_call = gw_rl_check(r->srv->rl, GW_RL_OP_PEEK, r->key.key_id, &kl, r->key.customer_id, &cl, 0, r->id,
                             then, r);
    return r->rl_call ? GW_OK : GW_ERROR;
}

static void gw_chat_ratelimited(int verdict, const gw_rl_result_t *res, void *arg) {
    gw_req_t *r = arg;
    gw_server_t *s = r->srv;
    r->have_rl = 1;
    r->rl = *res;
    if (verdict == GW_RL_UNAVAILABLE) { /* redis_fail_closed */
        r->have_rl = 0;
        gw_req_error(r, 503, "server_error", "service_unavailable", NULL,
                     "Rate limiting is temporarily unavailable, retry later");
        return;
    }
    if (verdict == GW_RL_LIMITED) {
        s->m.ratelimited++;
        char msg[240];
        const char *who = res->customer ? "this account" : "this key";
        int64_t after = res->retry_ms < 0 ? -1 : (res->retry_ms + 999) / 1000;
        if (res->why == GW_RL_WHY_CONCURRENCY) {
            snprintf(msg, sizeof msg, "Too many requests in flight for %s (limit %lld)", who,
                     (long long)res->conc_limit);
            gw_req_error(r, 429, "rate_limit_error", "concurrency_limit_exceeded", NULL, msg);
        } else if (res->why == GW_RL_WHY_TOKENS) {
            if (after < 0)
                snprintf(msg, sizeof msg, "Request too large: it needs about %lld tokens, above the limit of %lld "
                         "tokens per minute for %s", (long long)r->tpm_tokens, (long long)res->tpm_limit, who);
            else
                snprintf(msg, sizeof msg, "Rate limit reached: %lld tokens per minute for %s (this request needs "
                         "about %lld); retry after %llds", (long long)res->tpm_limit, who, (long long)r->tpm_tokens,
                         (long long)after);
            gw_req_error(r, 429, "rate_limit_error", "tokens_rate_limit_exceeded", NULL, msg);
        } else {
            snprintf(msg, sizeof msg, "Rate limit reached: %lld requests per minute for %s; retry after %llds",
                     (long long)res->limit, who, (long long)after);
            gw_req_error(r, 429, "rate_limit_error", "rate_limit_exceeded", NULL, msg);
        }
        return;
    }
    gw_chat_hold(r);
}

/* The TPM charge: the prompt (the gateway's own count) and the most the
 * answer may take (max_tokens / max_completion_tokens as api/ reads them).
 * The charge is corrected with the tokens really used when the request ends. */
static int64_t gw_req_tpm_charge(gw_req_t *r) {
    int64_t p = gw_req_prompt_count(r);
    if (p < 0) p = (int64_t)r->http->body_len / 4; /* no tokenizer: a rough byte estimate */
    /* the completion limit as api/ reads it (or default_max_tokens, forwarded), clamped
     * so that the charge stays exact in the limiter's arithmetic */
    int64_t m = r->completion_cap < 0 ? 0 : r->completion_cap > 1000000000 ? 1000000000 : r->completion_cap;
    return p + m;
}

static void gw_chat_refused_limits(int verdict, const gw_rl_result_t *res, void *arg) {
    gw_req_t *r = arg;
    r->have_rl = verdict != GW_RL_UNAVAILABLE;
    r->rl = *res;
    gw_admit_error(r, r->admit_st);
}

static void gw_chat_admitted(bill_status_t st, const bill_key_t *key, void *arg) {
    gw_req_t *r = arg;
    r->admit = NULL;
    if (st == BILL_NO_BALANCE) bill_refusal(r->srv->bill, key->customer_id, key->key_id, r->model, 402);
    if (st != BILL_OK) {
        if (st == BILL_MODEL_NOT_ALLOWED || st == BILL_NO_BALANCE || st == BILL_NO_PRICE) { /* a known key */
            r->key = *key;
            r->key.models_json = NULL;
            r->admit_st = st;
            if (gw_req_peek_limits(r, gw_chat_refused_limits) == GW_OK) return;
        }
        gw_admit_error(r, st);
        return;
    }
    r->admitted = 1;
    r->key = *key;
    r->key.models_json = NULL; /* points into the admission's result, gone after this call */
    gw_rl_limits_t kl, cl;
    gw_req_limits(r, &kl, &cl);
    if (!gw_limits_any(&kl) && !gw_limits_any(&cl)) {
        gw_chat_hold(r);
        return;
    }
    if (kl.tpm > 0 || cl.tpm > 0) r->tpm_tokens = gw_req_tpm_charge(r);
    r->rl_call = gw_rl_check(r->srv->rl, GW_RL_OP_TAKE, key->key_id, &kl, key->customer_id, &cl, r->tpm_tokens, r->id,
                             gw_chat_ratelimited, r);
    if (!r->rl_call) gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
}

static void gw_route_chat(gw_req_t *r) {
    gw_server_t *s = r->srv;
    s->m.inflight++;
    if (strcmp(r->http->method, "POST")) {
        gw_req_error(r, 405, "invalid_request_error", "method_not_allowed", NULL, "Use POST for this endpoint");
        return;
    }
    const char *key = gw_req_bearer(r);
    if (!key) return;
    r->api_key = key;
    /* Strict JSON (tg_json): raw invalid UTF-8, lone surrogates and broken
     * syntax are a 400 here, before anything is counted or forwarded; text
     * may hold U+0000 and integers stay exact. */
    tg_json_err_t jerr;
    tg_json_t *j = r->http->body ? tg_json_parse(r->http->body, r->http->body_len, NULL, &jerr) : NULL;
    if (!j || gw_pool_cleanup_add(r->pool, gw_req_cleanup_json, j) != GW_OK) {
        char msg[200];
        snprintf(msg, sizeof msg, "Failed to parse the request body as JSON: %s",
                 !r->http->body ? "the body is empty" : j ? "out of memory" : jerr.text);
        tg_json_free(j);
        gw_req_error(r, 400, "invalid_request_error", "invalid_request", NULL, msg);
        return;
    }
    r->json = j;
    if (tg_json_type(j) != TG_JSON_OBJECT) {
        gw_req_error(r, 400, "invalid_request_error", "invalid_request", NULL, "The request body must be a JSON object");
        return;
    }
    /* The shared reader (api/): the engine accepts and refuses exactly the
     * same bodies, so a request it would refuse (an unknown parameter, a bad
     * value, a duplicate key) is a 400 here, before admission: never billed. */
    api_chat_req_t *chat = calloc(1, sizeof *chat);
    api_err_t e;
    if (!chat || gw_pool_cleanup_add(r->pool, gw_req_cleanup_chat, chat) != GW_OK) {
        free(chat);
        gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    r->chat = chat;
    if (api_chat_req_read(chat, j, &e)) {
        gw_req_error(r, e.status, e.type ? e.type : "invalid_request_error", e.code, e.param[0] ? e.param : NULL,
                     e.message);
        return;
    }
    r->model = chat->model;
    r->stream = chat->stream;
    r->client_usage = chat->include_usage;
    if (!gw_model_known(s->cfg, r->model)) {
        char msg[300];
        snprintf(msg, sizeof msg, "The model '%.200s' does not exist", r->model);
        gw_req_error(r, 404, "invalid_request_error", "model_not_found", "model", msg);
        return;
    }
    /* The completion cap the hold and TPM are charged with: the limit as api/
     * reads it (the one the worker caps generation by), else
     * default_max_tokens, which is then written into the forwarded request so
     * that the worker keeps to it. */
    r->completion_cap = chat->max_tokens;
    if (r->completion_cap <= 0) {
        r->completion_cap = s->cfg->default_max_tokens;
        r->inject_max_tokens = s->cfg->default_max_tokens;
    }
    if (!s->bill) {
        gw_admit_error(r, BILL_ERROR);
        return;
    }
    if (gw_key_refused_offline(r, key)) return;
    r->admit = bill_admit(s->bill, key, r->model, r->conn->peer, gw_chat_admitted, r);
    if (!r->admit) gw_admit_error(r, BILL_ERROR);
}

static int gw_hexdigit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void gw_req_route(gw_req_t *r) {
    const char *t = r->http->target;
    size_t n = strcspn(t, "?");
    const char *m = r->http->method;
    if (n == 20 && !strncmp(t, "/v1/chat/completions", n)) {
        r->route = GW_ROUTE_CHAT;
        gw_route_chat(r);
    } else if ((n == 10 && !strncmp(t, "/v1/models", n)) || (n > 11 && !strncmp(t, "/v1/models/", 11))) {
        r->route = GW_ROUTE_MODELS;
        if (n > 11) { /* one model; its id percent-decoded */
            char *id = gw_palloc(r->pool, n - 11 + 1);
            size_t k = 0;
            for (size_t i = 11; id && i < n; i++) {
                int hi, lo;
                if (t[i] == '%' && i + 2 < n && (hi = gw_hexdigit(t[i + 1])) >= 0 && (lo = gw_hexdigit(t[i + 2])) >= 0) {
                    id[k++] = (char)(hi * 16 + lo);
                    i += 2;
                } else {
                    id[k++] = t[i];
                }
            }
            if (id) id[k] = '\0';
            r->model = id ? id : "";
        }
        if (strcmp(m, "GET")) gw_req_error(r, 405, "invalid_request_error", "method_not_allowed", NULL, "Use GET");
        else gw_route_models(r);
    } else if (n == 8 && !strncmp(t, "/metrics", n)) {
        r->route = GW_ROUTE_METRICS;
        if (strcmp(m, "GET")) gw_req_error(r, 405, "invalid_request_error", "method_not_allowed", NULL, "Use GET");
        else gw_route_metrics(r);
    } else if (n >= 10 && !strncmp(t, "/dashboard", 10) && (n == 10 || t[10] == '/')) {
        gw_dash_route(r);
    } else if (n == 15 && !strncmp(t, "/v1/receipt-key", n)) { /* the key that signs usage receipts */
        const char *k = bill_receipt_key_json(r->srv->bill);
        if (!k) gw_req_error(r, 404, "invalid_request_error", "not_found", NULL, "Usage receipts are not signed here");
        else {
            gw_req_body(r, "application/json", 200, k, strlen(k));
            gw_req_finish(r);
        }
    } else if (n == 7 && !strncmp(t, "/health", n)) {
        r->route = GW_ROUTE_HEALTH;
        static const char ok[] = "{\"status\":\"ok\"}\n";
        gw_req_body(r, "application/json", 200, ok, sizeof ok - 1);
        gw_req_finish(r);
    } else {
        char msg[300];
        snprintf(msg, sizeof msg, "No route for %.16s %.200s", m, t);
        gw_req_error(r, 404, "invalid_request_error", "not_found", NULL, msg);
    }
}

/* ---- connections ----------------------------------------------------------- */

static void gw_conn_arm(gw_conn_t *c, int kind) {
    if (c->timer_kind == kind) return;
    const gw_config_t *cfg = c->srv->cfg;
    int64_t ms = kind == TIMER_HEADER ? cfg->header_timeout_ms : cfg->idle_timeout_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    event_add(c->timer, &tv);
    c->timer_kind = kind;
}

/* Answer a request that could not be parsed, then close. */
static void gw_conn_bad_request(gw_conn_t *c, int status, const char *msg) {
    gw_req_t *r = gw_req_new(c, NULL);
    if (!r) {
        c->closing = 1;
        gw_conn_kick(c);
        return;
    }
    r->keep_alive = 0;
    c->linger = gw_http_parser_busy(&c->parser) || c->parser.cur != NULL;
    const char *code = status == 413 ? "request_too_large" : status == 431 ? "header_too_large"
                                                       : status == 408 ? "request_timeout" : "invalid_request";
    gw_req_error(r, status, "invalid_request_error", code, NULL, msg);
}

static void gw_conn_process(gw_conn_t *c) {
    if (c->in_process) return;
    c->in_process = 1;
    while (!c->req && !c->closing) {
        gw_http_req_t *h = NULL;
        int rc = gw_http_parser_next(&c->parser, &h);
        if (rc == GW_AGAIN) {
            gw_conn_arm(c, gw_http_parser_busy(&c->parser) ? TIMER_HEADER : TIMER_IDLE);
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
        gw_req_t *r = gw_req_new(c, h);
        if (!r) {
            c->closing = 1;
            gw_conn_kick(c);
            break;
        }
        gw_req_route(r);
    }
    /* a busy connection keeps at most one more request's worth of input */
    if (c->req && c->parser.in.len > c->parser.max_header + c->parser.max_body)
        bufferevent_disable(c->bev, EV_READ);
    else if (!c->closing)
        bufferevent_enable(c->bev, EV_READ);
    c->in_process = 0;
}

/* The answer is out and the connection must close.  When the client may
 * still be sending (an error answered before its body was read), read and
 * discard for a moment first ("lingering close"), so that it can read the
 * answer instead of getting a reset in the middle of its upload. */
static void gw_conn_closed_flushed(gw_conn_t *c) {
    if (c->linger && !c->srv->shutting_down) {
        c->linger = 0;
        bufferevent_enable(c->bev, EV_READ);
        struct timeval tv = {2, 0};
        event_add(c->timer, &tv);
        c->timer_kind = TIMER_LINGER;
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

static void gw_conn_kick(gw_conn_t *c) { event_active(c->kick, EV_TIMEOUT, 1); }

static void gw_conn_on_read(struct bufferevent *bev, void *arg) {
    gw_conn_t *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->closing) {
        c->lingered += evbuffer_get_length(in);
        evbuffer_drain(in, evbuffer_get_length(in));
        if (c->lingered > (size_t)64 << 20) gw_conn_free(c); /* enough politeness */
        return;
    }
    size_t n;
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
        return;
    }
    gw_conn_process(c);
}

static void gw_conn_on_write(struct bufferevent *bev, void *arg) {
    gw_conn_t *c = arg;
    if (c->req && c->req->up_paused) gw_proxy_resume(c->req);
    if (c->closing && !c->req && evbuffer_get_length(bufferevent_get_output(bev)) == 0) gw_conn_closed_flushed(c);
}

static void gw_conn_on_event(struct bufferevent *bev, short what, void *arg) {
    gw_conn_t *c = arg;
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
    gw_conn_free(c);
}

/* Close a connection; a request in flight is abandoned (settled with what is
 * known, the worker connection closed). */
static void gw_conn_free(gw_conn_t *c) {
    gw_server_t *s = c->srv;
    if (c->req) {
        gw_req_t *r = c->req;
        if (!r->done) s->m.client_aborts++;
        r->client_gone = 1;
        gw_req_free(r);
    }
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if (c->bev) bufferevent_free(c->bev);
    if (c->timer) event_free(c->timer);
    if (c->kick) event_free(c->kick);
    gw_http_parser_release(&c->parser);
    s->m.connections--;
    free(c);
    gw_server_maybe_exit(s);
}

static void gw_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg) {
    gw_server_t *s = arg;
    const gw_config_t *cfg = s->cfg;
    if (s->shutting_down || s->m.connections >= cfg->max_connections) {
        evutil_closesocket(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    gw_conn_t *c = calloc(1, sizeof *c);
    SSL *ssl = c ? SSL_new(s->ssl) : NULL;
    if (!ssl) {
        free(c);
        evutil_closesocket(fd);
        return;
    }
    c->srv = s;
    c->bev = bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                            BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!c->bev) {
        SSL_free(ssl);
        free(c);
        evutil_closesocket(fd);
        return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    c->timer = evtimer_new(s->base, gw_conn_on_timer, c);
    c->kick = event_new(s->base, -1, 0, gw_conn_on_kick, c);
    gw_http_parser_init(&c->parser, (size_t)cfg->max_header_bytes, (size_t)cfg->max_body_bytes);
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->m.connections++;
    s->m.connections_total++;
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
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    gw_conn_arm(c, TIMER_HEADER); /* the handshake and the first request */
}

/* ---- server ----------------------------------------------------------------- */

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

static SSL_CTX *gw_tls_ctx(const gw_config_t *cfg, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        snprintf(err, errlen, "tls_cert %s: %s", cfg->tls_cert, ERR_reason_error_string(ERR_get_error()));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "tls_key %s: %s", cfg->tls_key, ERR_reason_error_string(ERR_get_error()));
        goto fail;
    }
    return ctx;
fail:
    if (!*err) snprintf(err, errlen, "TLS set-up failed");
    SSL_CTX_free(ctx);
    return NULL;
}

/* accept() failed (out of descriptors, most likely): pause accepting for
 * 100 ms instead of spinning on a listening socket that stays readable. */
static void gw_on_accept_error(struct evconnlistener *l, void *arg) {
    gw_server_t *s = arg;
    int e = EVUTIL_SOCKET_ERROR();
    fprintf(stderr, "tollgate: accept: %s; pausing 100 ms\n", evutil_socket_error_to_string(e));
    evconnlistener_disable(l);
    struct timeval tv = {0, 100000};
    event_add(s->accept_pause, &tv);
}

static void gw_on_accept_resume(evutil_socket_t fd, short what, void *arg) {
    gw_server_t *s = arg;
    if (!s->shutting_down) evconnlistener_enable(s->lis);
}

static void gw_on_grace(evutil_socket_t fd, short what, void *arg) {
    gw_server_t *s = arg;
    event_base_loopexit(s->base, NULL);
}

/* Once shutting down, the loop ends when the last connection has flushed
 * its answer and closed (or when the grace timer fires). */
static void gw_server_maybe_exit(gw_server_t *s) {
    if (s->shutting_down && !s->conns) event_base_loopexit(s->base, NULL);
}

void gw_server_shutdown(gw_server_t *s) {
    if (s->shutting_down) return;
    s->shutting_down = 1;
    if (s->lis) evconnlistener_disable(s->lis);
    gw_conn_t *c = s->conns;
    while (c) {
        gw_conn_t *n = c->next;
        if (!c->req) gw_conn_free(c);
        c = n;
    }
    struct timeval tv = {(time_t)(s->cfg->shutdown_grace_ms / 1000), (suseconds_t)(s->cfg->shutdown_grace_ms % 1000) * 1000};
    event_add(s->grace, &tv);
    gw_server_maybe_exit(s);
}

gw_server_t *gw_server_new(struct event_base *base, const gw_config_t *cfg, char *err, size_t errlen) {
    char *token = NULL, *secret = NULL;
    *err = '\0';
    gw_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->base = base;
    s->cfg = cfg;
    s->started = gw_now_us() / 1000000;
    if (!(s->ssl = gw_tls_ctx(cfg, err, errlen))) goto fail;
    if (!(token = gw_read_secret(cfg->admin_token_file, err, errlen))) goto fail;
    if (!(secret = gw_read_secret(cfg->key_secret_file, err, errlen))) goto fail;
    if (cfg->access_log && *cfg->access_log) {
        if (!strcmp(cfg->access_log, "-")) s->alog = stdout;
        else if (!(s->alog = fopen(cfg->access_log, "a"))) {
            snprintf(err, errlen, "access_log %s: %s", cfg->access_log, strerror(errno));
            goto fail;
        }
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
    };
    if (!(s->rl = gw_rl_new(base, &ro, err, errlen))) goto fail;
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
    bill_opts_t bo = {
        .pg_conninfo = cfg->postgres,
        .admin_listen = cfg->admin_listen && *cfg->admin_listen ? cfg->admin_listen : NULL,
        .admin_token = token,
        .key_secret = secret,
        .spool_dir = cfg->spool_dir,
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
    };
    if (!bo.receipt_key && cfg->receipt_key && *cfg->receipt_key)
        fprintf(stderr, "tollgate: warning: no usage receipts: %s: %s\n", cfg->receipt_key, strerror(errno));
    char berr[256] = "";
    s->bill = bill_new(base, &bo, berr, sizeof berr);
    if (!s->bill) {
        snprintf(err, errlen, "billing: %s", berr[0] ? berr : "start-up failed");
        goto fail;
    }

    char host[256];
    int port;
    if (gw_split_hostport(cfg->listen, host, sizeof host, &port) != GW_OK) {
        snprintf(err, errlen, "listen: bad address \"%s\" (want host:port)", cfg->listen);
        goto fail;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai) || !ai) {
        snprintf(err, errlen, "listen: cannot resolve %s", host);
        goto fail;
    }
    s->lis = evconnlistener_new_bind(base, gw_on_accept, s, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE, 1024,
                                     ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!s->lis) {
        snprintf(err, errlen, "listen %s: %s", cfg->listen, strerror(errno));
        goto fail;
    }
    evconnlistener_set_error_cb(s->lis, gw_on_accept_error);
    if (!(s->dash = gw_dash_new(base, cfg))) goto fail;
    if (!(s->grace = evtimer_new(base, gw_on_grace, s))) goto fail;
    if (!(s->accept_pause = evtimer_new(base, gw_on_accept_resume, s))) goto fail;
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
    s->shutting_down = 1;
    while (s->conns) gw_conn_free(s->conns); /* settles what was in flight */
    if (s->lis) evconnlistener_free(s->lis);
    gw_proxy_close_idle((gw_config_t *)s->cfg);
    gw_rl_free(s->rl);
    gw_dash_free(s->dash);
    bill_free(s->bill); /* flushes settlements */
    if (s->grace) event_free(s->grace);
    if (s->accept_pause) event_free(s->accept_pause);
    if (s->ssl) SSL_CTX_free(s->ssl);
    tok_free(s->tok);
    if (s->alog && s->alog != stdout) fclose(s->alog);
    free(s);
}
