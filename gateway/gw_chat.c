/* gw_chat.c — the POST /v1/chat/completions handler: its phases run in this
 * order, each one calling the next when it passes (some after a billing or
 * Redis round trip):
 *
 *   validate (method, key present, JSON, api/ reader, model served)
 *   -> admit (key shape offline, then bill_admit: key cache, price)
 *   -> limits (RPM, TPM, concurrency of the key and its customer: gw_rl.c)
 *   -> hold (balance through a credit lease)
 *   -> proxy (gw_proxy.c)
 *
 * Its finalize step settles what reached a worker (gw_settle.c) and counts a
 * refusal after admission.  Everything a phase leaves pending (billing and
 * Redis calls, the hold, the slot, the worker connection) is released by the
 * request pool's cleanup, whatever state the request dies in. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw-int.h"
#include "api.h"
#include "tg_json.h"
#include "tg_work.h"
#include "tok.h"

/* ---- pool cleanups ---------------------------------------------------------- */

static void gw_chat_cleanup_json(void *arg) { tg_json_free(arg); }
static void gw_chat_cleanup_req(void *arg) { api_chat_req_free(arg); } /* the struct is the pool's */

static void gw_chat_cleanup_calls(void *arg) {
    gw_req_t *r = arg;
    bill_cancel(r->admit);
    r->admit = NULL;
    bill_cancel(r->hold_req);
    r->hold_req = NULL;
    bill_hold_release(r->loop->bill, &r->hold); /* not settled: nothing was billed */
    /* frees the concurrency slots; corrects TPM with the tokens settled
     * (none when no worker was reached: the whole charge comes back) */
    gw_rl_finish(r->rl_call, r->proxied ? r->prompt_tokens + r->completion_tokens : 0);
    r->rl_call = NULL;
    gw_proxy_release(r);
    tg_buf_free(&r->payload);
    tg_buf_free(&r->body);
    tg_buf_free(&r->scratch);
    gw_sse_release(&r->sse);
}

/* ---- phases ------------------------------------------------------------------ */

/* The most this request may cost: the prompt (the gateway's own count, or
 * its bytes when there is no tokenizer: a token is at least one byte) at the
 * cache-miss price plus the completion cap at the output price. */
static int64_t gw_chat_max_cost(gw_req_t *r) {
    int64_t p = gw_settle_prompt_count(r);
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
        gw_auth_error(r, st);
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
             (long long)(gw_settle_prompt_count(r) > 0 ? gw_settle_prompt_count(r) : 0),
             (long long)r->completion_cap, what[lim], have);
    r->loop->m.refused_balance++;
    gw_req_error(r, 402, "invalid_request_error", st == BILL_NO_BALANCE ? "insufficient_balance" : "spending_limit_exceeded",
                 NULL, msg);
}

static void gw_chat_hold(gw_req_t *r) {
    if (!bill_journal_writable(r->loop->bill)) { /* its usage row could live in memory only: a kill would lose it */
        r->loop->m.refused_journal++;
        gw_req_error(r, 503, "server_error", "service_unavailable", NULL,
                     "Usage cannot be recorded right now (the gateway's usage journal cannot be written); "
                     "the request was not run, retry later");
        return;
    }
    r->hold_req = bill_hold(r->loop->bill, &r->key, gw_chat_max_cost(r), &r->hold, gw_chat_held, r);
    if (!r->hold_req) gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
}

static void gw_chat_ratelimited(int verdict, const gw_rl_result_t *res, void *arg) {
    gw_req_t *r = arg;
    r->have_rl = 1;
    r->rl = *res;
    if (verdict == GW_RL_UNAVAILABLE) { /* redis_fail_closed */
        r->have_rl = 0;
        gw_req_error(r, 503, "server_error", "service_unavailable", NULL,
                     "Rate limiting is temporarily unavailable, retry later");
        return;
    }
    if (verdict == GW_RL_LIMITED) {
        r->loop->m.ratelimited++;
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
static int64_t gw_chat_tpm_charge(gw_req_t *r) {
    int64_t p = gw_settle_prompt_count(r);
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
    gw_auth_error(r, r->admit_st);
}

static void gw_chat_admitted(bill_status_t st, const bill_key_t *key, void *arg) {
    gw_req_t *r = arg;
    r->admit = NULL;
    gw_loop_t *l = r->loop;
    if (st == BILL_NO_BALANCE) bill_refusal(l->bill, key->customer_id, key->key_id, r->model, 402);
    if (st != BILL_OK) {
        if (st == BILL_MODEL_NOT_ALLOWED || st == BILL_NO_BALANCE || st == BILL_NO_PRICE) { /* a known key */
            r->key = *key;
            r->key.models_json = NULL;
            r->admit_st = st;
            if (gw_auth_peek_limits(r, gw_chat_refused_limits) == GW_OK) return;
        }
        gw_auth_error(r, st);
        return;
    }
    r->admitted = 1;
    r->key = *key;
    r->key.models_json = NULL; /* points into the admission's result, gone after this call */
    gw_rl_limits_t kl, cl;
    gw_auth_limits(r, &kl, &cl);
    if (!gw_auth_limits_any(&kl) && !gw_auth_limits_any(&cl)) {
        gw_chat_hold(r);
        return;
    }
    if (kl.tpm > 0 || cl.tpm > 0) r->tpm_tokens = gw_chat_tpm_charge(r);
    r->rl_call = gw_rl_check(l->rl, GW_RL_OP_TAKE, key->key_id, &kl, key->customer_id, &cl, r->tpm_tokens, r->id,
                             gw_chat_ratelimited, r);
    if (!r->rl_call) gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
}

static void gw_chat_admit(gw_req_t *r) {
    r->admit = bill_admit(r->loop->bill, r->api_key, r->model, r->conn->peer, gw_chat_admitted, r);
    if (!r->admit) gw_auth_error(r, BILL_ERROR);
}

/* A large prompt is counted on the loop's worker thread (about 18 ms per
 * MiB), so that the loop's other connections do not wait for it: the text
 * is rendered here (a copy the job owns), counted there, and the request
 * goes on to admission when the count is back.  A request freed meanwhile
 * only detaches from its job. */
struct gw_count_job {
    gw_req_t *r;               /* NULL once the request is gone */
    const struct tok *tok;
    char *text;
    size_t len;
    long n;
};

static void gw_count_run(void *arg) {
    struct gw_count_job *j = arg;
    j->n = tok_count(j->tok, j->text, j->len, 1);
}

static void gw_count_done(void *arg) {
    struct gw_count_job *j = arg;
    gw_req_t *r = j->r;
    long n = j->n;
    free(j->text);
    free(j);
    if (!r) return;
    r->count_job = NULL;
    r->prompt_est = n >= 0 ? n : -2;
    gw_chat_admit(r);
}

static void gw_count_detach(void *arg) {
    gw_req_t *r = arg;
    if (r->count_job) r->count_job->r = NULL;
}

static int gw_chat_count_async(gw_req_t *r) {
    api_err_t e;
    struct gw_count_job *j = calloc(1, sizeof *j);
    if (!j) return GW_ERROR;
    if (!(j->text = api_chat_render(r->chat, (tok_tmpl_kind_t)r->srv->tmpl, &j->len, &e))) {
        free(j);
        r->prompt_est = -2; /* the template refuses the conversation: no count, as on the loop */
        return GW_ERROR;
    }
    j->r = r;
    j->tok = r->srv->tok;
    if (gw_pool_cleanup_add(r->pool, gw_count_detach, r) != GW_OK ||
        tg_work_submit(r->loop->work, gw_count_run, gw_count_done, j) != 0) {
        free(j->text);
        free(j);
        return GW_ERROR; /* counted on the loop */
    }
    r->count_job = j;
    return GW_OK;
}

/* A body refused (400, an unknown model's 404) once the key has passed its
 * offline check: the key is looked up first (the key cache; no hold, nothing
 * taken) and an unknown, revoked or expired one is the 401, as OpenAI and
 * DeepSeek answer a bad key whatever the body holds.  Before, such a key
 * with a broken body or an unknown model got the 400/404, which also told a
 * caller without a valid key which models are served. */
static void gw_chat_refusal_keyed(bill_status_t st, const bill_key_t *key, void *arg) {
    gw_req_t *r = arg;
    (void)key;
    r->admit = NULL;
    if (st == BILL_UNAUTHORIZED || st == BILL_KEY_EXPIRED) {
        gw_auth_error(r, st);
        return;
    }
    /* a known key (or accounts unreachable: the body's own fault is still the answer) */
    gw_req_error(r, r->refusal.status, r->refusal.type, r->refusal.code, r->refusal.param, r->refusal.msg);
}

static void gw_chat_refuse(gw_req_t *r, int status, const char *type, const char *code, const char *param,
                           const char *msg) {
    gw_pool_t *p = r->pool;
#define GW_PDUP(s) ((s) ? gw_pstrndup(p, (s), strlen(s)) : NULL)
    r->refusal.status = status;
    r->refusal.type = GW_PDUP(type);
    r->refusal.code = GW_PDUP(code);
    r->refusal.param = GW_PDUP(param);
    r->refusal.msg = GW_PDUP(msg);
#undef GW_PDUP
    if (!r->loop->bill || !r->refusal.type || (code && !r->refusal.code) || (param && !r->refusal.param) ||
        !r->refusal.msg ||
        !(r->admit = bill_admit(r->loop->bill, r->api_key, r->srv->cfg->workers[0].models[0], r->conn->peer,
                                gw_chat_refusal_keyed, r)))
        gw_req_error(r, status, type, code, param, msg); /* no lookup possible: the body's answer */
}

/* POST /v1/chat/completions, or with cmpl POST /v1/completions and
 * /beta/completions: the same phases, the body read by api/'s completions
 * reader (its prompt rendered and counted by api_cmpl_render through
 * api_chat_render), proxied to the worker's /v1/completions. */
static void gw_chat_run_as(gw_req_t *r, int cmpl) {
    gw_loop_t *l = r->loop;
    const gw_config_t *cfg = r->srv->cfg;
    l->m.inflight++;
    if (gw_pool_cleanup_add(r->pool, gw_chat_cleanup_calls, r) != GW_OK) {
        gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    if (strcmp(r->http->method, "POST")) {
        gw_req_method_not_allowed(r, "POST");
        return;
    }
    const char *key = gw_auth_bearer(r);
    if (!key) return;
    r->api_key = key;
    if (gw_auth_refused_offline(r, key)) return; /* a made-up key is the 401 whatever the body */
    /* The body is JSON: Content-Type application/json (charset utf-8 if one is
     * named) or absent (curl users forget it; the body still has to parse);
     * another media type (a form, text) is refused by name, not guessed at */
    const char *ct = gw_http_header(r->http, "Content-Type");
    int media = ct ? gw_http_json_media(ct) : GW_HTTP_MEDIA_JSON;
    if (media != GW_HTTP_MEDIA_JSON) {
        char msg[300];
        snprintf(msg, sizeof msg, "Invalid Content-Type header '%.120s': %s", ct,
                 media == GW_HTTP_MEDIA_BAD_CHARSET ? "the body must be JSON in UTF-8 (charset=utf-8)"
                                                    : "the request body must be JSON, sent as 'Content-Type: application/json'");
        gw_chat_refuse(r, 400, "invalid_request_error", "invalid_content_type", NULL, msg);
        return;
    }
    /* Strict JSON (tg_json): raw invalid UTF-8, lone surrogates and broken
     * syntax are a 400 here, before anything is counted or forwarded; text
     * may hold U+0000 and integers stay exact. */
    tg_json_err_t jerr;
    tg_json_t *j = r->http->body ? tg_json_parse(r->http->body, r->http->body_len, NULL, &jerr) : NULL;
    api_err_t de; /* too deep inside a member: as the engine says it, the field named (a schema's, mostly) */
    if (!j && r->http->body && jerr.msg && !strcmp(jerr.msg, "nesting too deep") &&
        api_json_err(&de, r->http->body, r->http->body_len, &jerr) && de.param[0]) {
        gw_chat_refuse(r, de.status, de.type, de.code, de.param, de.message);
        return;
    }
    if (!j || gw_pool_cleanup_add(r->pool, gw_chat_cleanup_json, j) != GW_OK) {
        char msg[200];
        snprintf(msg, sizeof msg, "Failed to parse the request body as JSON: %s",
                 !r->http->body ? "the body is empty" : j ? "out of memory" : jerr.text);
        tg_json_free(j);
        gw_chat_refuse(r, 400, "invalid_request_error", "invalid_request", NULL, msg);
        return;
    }
    r->json = j;
    if (tg_json_type(j) != TG_JSON_OBJECT) {
        gw_chat_refuse(r, 400, "invalid_request_error", "invalid_request", NULL, "The request body must be a JSON object");
        return;
    }
    /* The shared reader (api/): the engine accepts and refuses exactly the
     * same bodies, so a request it would refuse (an unknown parameter, a bad
     * value, a duplicate key) is a 400 here, before admission: never billed. */
    api_chat_req_t *chat = gw_palloc(r->pool, sizeof *chat);
    api_err_t e;
    if (!chat || gw_pool_cleanup_add(r->pool, gw_chat_cleanup_req, chat) != GW_OK) {
        gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    memset(chat, 0, sizeof *chat);
    r->chat = chat;
    r->cmpl = cmpl;
    if ((cmpl ? api_cmpl_req_read : api_chat_req_read)(chat, j, &e) ||
        (cmpl && r->srv->tok && api_cmpl_check(chat, (tok_tmpl_kind_t)r->srv->tmpl, &e))) {
        gw_chat_refuse(r, e.status, e.type ? e.type : "invalid_request_error", e.code, e.param[0] ? e.param : NULL,
                     e.message);
        return;
    }
    r->model = chat->model;
    r->stream = chat->stream;
    r->client_usage = chat->include_usage;
    if (!gw_model_known(cfg, r->model)) {
        char msg[300];
        snprintf(msg, sizeof msg, "The model `%.200s` does not exist or you do not have access to it.", r->model);
        gw_chat_refuse(r, 404, "invalid_request_error", "model_not_found", NULL, msg); /* param null, as OpenAI */
        return;
    }
    /* The completion cap the hold and TPM are charged with: the limit as api/
     * reads it (the one the worker caps generation by), else
     * default_max_tokens, which is then written into the forwarded request so
     * that the worker keeps to it. */
    if (chat->max_tokens > cfg->max_tokens_limit) { /* else a large cap meets the balance hold first: a 402 */
        int64_t v; /* the parameter whose value api/ kept (the smaller of the two) */
        const char *param = !tg_json_int64(tg_json_get(j, "max_completion_tokens"), &v) && v == chat->max_tokens
                                ? "max_completion_tokens"
                                : "max_tokens";
        char msg[200];
        snprintf(msg, sizeof msg, "%s is too large: %ld. This model supports at most %lld completion tokens", param,
                 chat->max_tokens, (long long)cfg->max_tokens_limit);
        gw_chat_refuse(r, 400, "invalid_request_error", "invalid_value", param, msg);
        return;
    }
    r->completion_cap = chat->max_tokens;
    if (r->completion_cap <= 0) {
        r->completion_cap = cfg->default_max_tokens;
        r->inject_max_tokens = cfg->default_max_tokens;
    }
    if (chat->n > 1) r->completion_cap *= chat->n; /* n choices: each may take the limit (n <= API_MAX_N) */
    if (!l->bill) {
        gw_auth_error(r, BILL_ERROR);
        return;
    }
    if (r->srv->tok && r->http->body_len > GW_COUNT_OFFLOOP_BYTES && l->work && gw_chat_count_async(r) == GW_OK)
        return; /* admitted once counted */
    gw_chat_admit(r);
}

static void gw_chat_run(gw_req_t *r) { gw_chat_run_as(r, 0); }
static void gw_cmpl_run(gw_req_t *r) { gw_chat_run_as(r, 1); }

static void gw_chat_resume(gw_req_t *r) {
    if (r->up_paused) gw_proxy_resume(r);
}

static void gw_chat_finalize(gw_req_t *r) {
    r->loop->m.inflight--;
    gw_settle(r);
    if (r->admitted && !r->proxied) /* a 429 or 5xx (or 402) without a usage row: counted in the rollup */
        bill_refusal(r->loop->bill, r->key.customer_id, r->key.key_id, r->model, r->status);
}

const gw_handler_t gw_chat_handler = {GW_ROUTE_CHAT, gw_chat_run, gw_chat_resume, gw_chat_finalize, gw_proxy_stop};
const gw_handler_t gw_completions_handler = {GW_ROUTE_COMPLETIONS, gw_cmpl_run, gw_chat_resume, gw_chat_finalize,
                                             gw_proxy_stop};
