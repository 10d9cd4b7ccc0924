/* gw_settle.c — settlement of a request that reached a worker: the usage it
 * reported (or, for a 200 answer cut before its usage, the gateway's own
 * prompt count and one completion token per text chunk seen, plus the tokens
 * of the tool calls seen) goes to
 * bill_settle exactly once, with the price snapshot from admission and the
 * balance hold, and into the token metrics.
 *
 * A finished answer settles before its last bytes are queued for the client
 * (gw_settle_done), so that a client holding a complete answer always has a
 * durable usage row (bill_settle journals it before returning).  Before, not
 * after: queuing bytes on the TLS bufferevent may SSL_write them at once.
 * Anything else settles when the request is freed (the chat handler's
 * finalize step). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>


#include "gw-int.h"
#include "api.h"
#include "tg_json.h"
#include "tg_prefix.h"
#include "tok.h"

/* The gateway's own count of the prompt: the request rendered by api/ (the
 * reader the engine uses: messages, tools, the model's chat template),
 * tokenized (about 18 ms per MiB, bounded by max_body_bytes).  -1 when no
 * tokenizer is loaded or the template refuses the conversation.  Text may
 * hold U+0000: the rendered prompt holds the NUL bytes and the tokenizer
 * counts them as text, as the engine does.  The same ids give the prompt's
 * prefix key for worker affinity (r->prefix_key), so the prompt is rendered
 * and tokenized once per request, not once for each. */
static int64_t gw_prompt_count_json(gw_req_t *r) {
    api_err_t e;
    size_t tl = 0;
    char *text = api_chat_render(r->chat, (tok_tmpl_kind_t)r->srv->tmpl, &tl, &e);
    if (!text) return -1;
    int32_t first[TG_PREFIX_AFFINITY_BLOCKS * TG_PREFIX_BLOCK]; /* all the affinity key reads */
    long t = tok_count_first(r->srv->tok, text, tl, 1, first, sizeof first / sizeof first[0]);
    free(text);
    if (t >= 0) {
        r->prefix_key = tg_prefix_affinity_key(first, t);
        r->have_prefix_key = 1;
    }
    return t >= 0 ? t : -1;
}

int64_t gw_settle_prompt_count(gw_req_t *r) {
    if (r->prompt_est != -1) return r->prompt_est;
    r->prompt_est = -2;
    if (!r->srv->tok || !r->chat) return -1;
    int64_t n = gw_prompt_count_json(r);
    if (n >= 0) r->prompt_est = n;
    return n;
}

void gw_settle(gw_req_t *r) {
    bill_t *bill = r->loop->bill;
    if (r->proxied != 1 || !r->admitted || !bill) return;
    r->proxied = 2;
    bill_usage_t u;
    memset(&u, 0, sizeof u);
    memcpy(u.request_id, r->id, sizeof u.request_id);
    u.key_id = r->key.key_id;
    u.customer_id = r->key.customer_id;
    u.model = r->model;
    u.price = r->key.price;
    if (!r->have_usage && r->up_head_done && r->resp.status == 200) {
        /* a 200 answer without usage (a cut stream, or an upstream that sent
         * none): our own prompt count, one completion token per text chunk
         * seen, and the tokens the gateway counted (gw_proxy.c) */
        int64_t p = gw_settle_prompt_count(r);
        r->prompt_tokens = p > 0 ? p : 0;
        r->cache_hit_tokens = 0;
        r->completion_tokens = r->chunks + r->counted_tokens;
    }
    if (r->have_usage && r->up_external && r->srv->tok) { /* an external upstream's usage, checked */
        int64_t p = gw_settle_prompt_count(r);
        if (p >= 0 && p != r->prompt_tokens) r->loop->m.upstream_usage_disagreements++;
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
    bill_settle(bill, &u, &r->hold);
    if (bill_journal_held(bill)) { /* its journal record is written by jflush_ev, before the answer goes */
        gw_req_hold(r);
        event_active(r->loop->jflush_ev, EV_TIMEOUT, 1);
    }
    char rc[BILL_RECEIPT_MAX];
    long rn = bill_receipt(bill, &u, rc, sizeof rc);
    char *rp = rn > 0 ? gw_palloc(r->pool, (size_t)rn + 1) : NULL;
    if (rp) r->receipt = memcpy(rp, rc, (size_t)rn + 1);
    gw_metrics_t *m = &r->loop->m;
    m->tokens_prompt += (uint64_t)u.prompt_tokens;
    m->tokens_cache_hit += (uint64_t)u.prompt_cache_hit_tokens;
    m->tokens_completion += (uint64_t)u.completion_tokens;
    m->tokens_reasoning += (uint64_t)u.reasoning_tokens;
}

/* A stream's head is about to be queued for its client, who from then on may
 * hold part of an answer while the stream's own row waits for its end: a
 * provisional row is journaled first (bill_stream_begin: our prompt count,
 * no completion), billed only if this process dies before the stream is
 * settled.  Before (2026-11-30) a gateway killed mid-stream left no row at
 * all for a stream its client had read part of. */
static void gw_settle_provisional(gw_req_t *r, bill_usage_t *u, int64_t completion) {
    memset(u, 0, sizeof *u);
    memcpy(u->request_id, r->id, sizeof u->request_id);
    u->key_id = r->key.key_id;
    u->customer_id = r->key.customer_id;
    u->model = r->model;
    u->price = r->key.price;
    int64_t p = gw_settle_prompt_count(r);
    u->prompt_tokens = p > 0 ? p : 0;
    u->completion_tokens = completion;
    u->http_status = 200;
    u->stream = 1;
    u->received_us = r->received_us;
    u->first_byte_us = r->first_byte_us;
    u->finished_us = tg_wall_us();
    r->prov_us = tg_mono_us();
    r->prov_completion = completion;
}

void gw_settle_stream_begin(gw_req_t *r) {
    bill_t *bill = r->loop->bill;
    if (r->proxied != 1 || !r->admitted || !bill) return;
    bill_usage_t u;
    gw_settle_provisional(r, &u, 0);
    bill_stream_begin(bill, &u, &r->hold);
}

/* Chunks went out since the stream's last provisional row: a newer one, with
 * the completion counted as for a cut stream (a token per text chunk, the
 * tool calls' tokens), at once for the first chunks, then at most once a
 * second (GW_PROV_EVERY_US: a write(2) each); a crash then bills what its
 * client got up to that second. */
#define GW_PROV_EVERY_US 1000000
void gw_settle_stream_update(gw_req_t *r) {
    if (!r->hold.stream_rec || r->proxied != 1 || r->have_usage) return;
    int64_t c = r->chunks + r->counted_tokens;
    if (c <= r->prov_completion || (r->prov_completion && tg_mono_us() - r->prov_us < GW_PROV_EVERY_US)) return;
    bill_usage_t u;
    gw_settle_provisional(r, &u, c);
    bill_stream_update(r->loop->bill, &u, &r->hold);
}

static void gw_settle_fault_kill(evutil_socket_t fd, short what, void *arg) { raise(SIGKILL); }

void gw_settle_flush_cb(evutil_socket_t fd, short what, void *arg) {
    gw_loop_t *l = arg;
    if (l->fault_journal_stall) {
        /* Fault injection for the tests (TOLLGATE_FAULT=journal-stall): the
         * journal write stalls, as on a hung disk, and the process dies 2 s
         * later, as in a crash.  The answers waiting for this write must not
         * reach their clients meanwhile (tests/billing/test_gw_kill.py). */
        if (l->fault_journal_stall == 1) {
            l->fault_journal_stall = 2;
            struct timeval tv = {2, 0};
            event_base_once(l->base, -1, EV_TIMEOUT, gw_settle_fault_kill, NULL, &tv);
        }
        return;
    }
    bill_journal_flush(l->bill); /* a failure is logged: those rows are billed from memory */
    gw_req_release_held(l);
}

/* The last bytes of the answer (status `status`: a whole body, a stream's
 * "data: [DONE]" or end) are about to be queued for the client: settle now
 * with the usage known.  A client already gone is settled when the request
 * is freed, with the status it got: 499 when no head had gone out, else the
 * head's (a stream cut by its client keeps its 200, billed for the chunks
 * the gateway saw). */
void gw_settle_done(gw_req_t *r, int status) {
    if (r->proxied != 1 || r->client_gone) return;
    r->status = status;
    r->finished_us = tg_wall_us();
    gw_settle(r);
}

/* Read token counts from an OpenAI/DeepSeek usage object: exact integers
 * (tg_json_int64, never through a double) in 0..1e12; anything else is
 * rejected. */
static int gw_usage_int(const tg_json_t *x, int64_t *out) {
    return tg_json_int64(x, out) == 0 && *out >= 0 && *out <= 1000000000000LL ? GW_OK : GW_ERROR;
}

int gw_settle_usage_json(gw_req_t *r, const tg_json_t *u) {
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
