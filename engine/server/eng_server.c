/* eng_server.c — `tollgate-engine serve`: the worker's OpenAI-compatible HTTP
 * server.  libevent's evhttp runs on the main (loop) thread; one scheduler
 * thread (eng_sched.c) owns the model.  Requests are validated and tokenized
 * here, submitted as jobs, and the scheduler's events (text deltas, the last
 * event with usage) come back through eng_sched_take() when the scheduler
 * activates wake_ev.
 *
 * Invariants: a call_t lives until its job's last event has been handled
 * (even when the client went away first); after the connection's close
 * callback fired, the request is detached by evhttp and is only freed by our
 * final evhttp_send_reply/_end, never touched otherwise. */
#include "eng_server.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "eng_cmd.h"
#include "tg_http_media.h"
#include "tg_httpguard.h"
#include "tg_prefix.h"
#include "tg_utf8.h"

#define MAX_BODY (8 << 20) /* bytes of a request body we answer with an OpenAI 413 */

/* ---- metrics -------------------------------------------------------------- */

static const double TTFT_BUCKETS[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double TPOT_BUCKETS[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
#define N_TTFT (sizeof TTFT_BUCKETS / sizeof TTFT_BUCKETS[0])
#define N_TPOT (sizeof TPOT_BUCKETS / sizeof TPOT_BUCKETS[0])

typedef struct {
    unsigned long long counts[16]; /* per bucket (not cumulative), last = +Inf */
    double sum;
    unsigned long long n;
} histo_t;

static void histo_observe(histo_t *h, const double *b, size_t nb, double v) {
    size_t i = 0;
    while (i < nb && v > b[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->n++;
}

static const int CODES[] = {200, 400, 404, 405, 413, 499, 500, 503};
#define N_CODES (sizeof CODES / sizeof CODES[0])

typedef struct {
    unsigned long long requests[N_CODES + 1]; /* chat completions by status; last: other */
    unsigned long long prompt_tokens, completion_tokens, reasoning_tokens, cancelled;
    histo_t ttft, tpot;
} metrics_t;

/* ---- server state --------------------------------------------------------- */

typedef struct call call_t;

typedef struct {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    tg_httpguard_t *guard;   /* connection cap, bytes being received, JSON for malformed requests */
    struct event *wake_ev, *sig_int, *sig_term, *grace_ev, *keepalive_ev;
    eng_model_t *model;
    tok_t *tok;
    int tmpl;
    const char *model_name;
    long long started_at;
    eng_sched_t *sched;
    eng_limits_t lim;
    eng_vocab_t *vocab;      /* token bytes for constrained decoding */
    eng_tool_ids_t tool_ids; /* tool-call markers; has_tools: all present */
    int has_tools;
    int32_t vocab_rows;
    size_t kv_bytes_per_token;
    metrics_t met;
    call_t *calls; /* in flight, doubly linked */
    int n_calls, draining;
    int pending_flush; /* final replies handed to evhttp, not yet written out */
    unsigned long ticks;
    int keepalive_s;
    struct event *accept_ev;     /* re-enables accepting after a refusal (on_accept_error) */
    unsigned long accept_err_tick; /* tick of the last refusal; 0: none in this episode */
    unsigned long long accept_errs;
    size_t trim_mark;            /* free heap bytes after the last malloc_trim (on_tick) */
    unsigned long long id_counter;
} srv_t;

/* One choice of a call (n > 1: n of them, each its own job and sampling). */
typedef struct {
    call_t *call;
    int index;
    eng_job_t *job;    /* NULL: never submitted (the queue was full) */
    int done, got_first;
    int64_t t_last;
    tg_buf_t content, reasoning;
    cJSON *lp_content; /* non-streaming logprobs entries, when asked for */
    cJSON *lp_legacy;  /* completions: the legacy logprobs object being built (not streaming) */
    long text_off;     /* completions: characters of text so far (legacy text_offset) */
    tg_buf_t tool;    /* the tool-call block so far (tools given) */
    eng_tool_call_t *calls;
    size_t n_calls, calls_sent; /* parsed; sent in stream chunks */
    eng_finish_t finish;
    eng_usage_t u;
} choice_t;

struct call {
    srv_t *srv;
    call_t *prev, *next;
    struct evhttp_request *req;
    struct evhttp_connection *conn;
    int stream, include_usage, gone, hung_up, started, reasoning_model;
    int cmpl;          /* POST /v1/completions: text_completion answers */
    int legacy_lp;     /* completions with logprobs: the legacy format */
    int chat_lp;       /* chat with logprobs: "logprobs":{"content":[...]} even when no token is listed */
    char id[160];      /* "chatcmpl-..." or "cmpl-..." */
    char req_id[130];  /* X-Request-Id */
    long long created;
    int64_t t_start;
    int n, n_done;
    choice_t *ch;      /* (n) */
    /* a choice that failed fails the call (the others are cancelled): the first failure */
    int bad_status;    /* 0: none; 500 or 503 */
    const char *bad_code;
    char bad_msg[200];
};

static const char *status_reason(int code) {
    switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

static void count_status(srv_t *S, int code) {
    for (size_t i = 0; i < N_CODES; i++)
        if (CODES[i] == code) {
            S->met.requests[i]++;
            return;
        }
    S->met.requests[N_CODES]++;
}

/* The body goes into the request's own output buffer (no buffer to make);
 * when even that cannot take it, the body is dropped and the status stays. */
static void send_json(struct evhttp_request *req, int code, const char *body) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
    evhttp_send_reply(req, code, status_reason(code), NULL);
}

#define OOM_JSON "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":\"engine_error\"}}"

static void send_err(struct evhttp_request *req, const eng_api_err_t *e) {
    char *j = eng_api_err_json(e);
    send_json(req, e->status, j ? j : OOM_JSON);
    free(j);
}

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ---- calls ---------------------------------------------------------------- */

/* While draining, leave the loop once no call is in flight and every final
 * reply has been written (or after 2 s, for replies whose socket died). */
static void maybe_exit(srv_t *S) {
    if (!S->draining || S->n_calls) return;
    if (S->pending_flush == 0) {
        event_base_loopexit(S->base, NULL);
    } else {
        struct timeval tv = {2, 0};
        event_base_loopexit(S->base, &tv);
    }
}

static void on_sent(struct evhttp_request *req, void *arg) {
    srv_t *S = arg;
    S->pending_flush--;
    maybe_exit(S);
}

static void call_free(call_t *c) {
    if (!c) return;
    for (int i = 0; c->ch && i < c->n; i++) {
        choice_t *h = &c->ch[i];
        tg_buf_free(&h->content);
        tg_buf_free(&h->reasoning);
        tg_buf_free(&h->tool);
        eng_tool_calls_free(h->calls, h->n_calls);
        cJSON_Delete(h->lp_content);
        cJSON_Delete(h->lp_legacy);
    }
    free(c->ch);
    free(c);
}

/* Cancel every choice still running. */
static void call_cancel(call_t *c) {
    for (int i = 0; i < c->n; i++)
        if (c->ch[i].job && !c->ch[i].done) eng_sched_cancel(c->srv->sched, c->ch[i].job);
}

static void call_unlink_free(call_t *c) {
    srv_t *S = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        S->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    S->n_calls--;
    call_free(c);
    maybe_exit(S);
}

static void on_conn_close(struct evhttp_connection *conn, void *arg) {
    call_t *c = arg;
    c->gone = 1;
    c->conn = NULL;
    call_cancel(c);
}

/* One SSE event; -1 when it could not be made (json NULL: its JSON could
 * not be) or queued, out of memory: the caller fails the call, so that a
 * stream that lost an event never ends with [DONE] as if it were whole. */
static int sse_send(call_t *c, const char *json) {
    size_t n = 0;
    char *ev = json ? eng_sse_event(json, &n) : NULL;
    struct evbuffer *b = ev ? evbuffer_new() : NULL;
    int rc = b && evbuffer_add(b, ev, n) == 0 ? 0 : -1;
    if (!rc) evhttp_send_reply_chunk(c->req, b);
    if (b) evbuffer_free(b);
    free(ev);
    return rc;
}

/* The out-of-memory error event, framed already: it needs no malloc, only
 * libevent's small allocations, which wait for memory (ev_mem_realloc), so
 * a stream that failed for want of memory still ends with an error event
 * (a job's last event comes at once: it is allocated when submitted). */
static void sse_send_oom(call_t *c) {
    static const char ev[] = "data: " OOM_JSON "\n\n";
    struct evbuffer *b = evbuffer_new();
    if (b && evbuffer_add(b, ev, sizeof ev - 1) == 0) evhttp_send_reply_chunk(c->req, b);
    if (b) evbuffer_free(b);
}

static void call_fail(call_t *c, int status, const char *code, const char *msg);

/* An allocation for call c failed: it fails (500 engine_error; its choices are cancelled). */
static void call_oom(call_t *c) {
    call_fail(c, 500, "engine_error", "The engine failed: out of memory while building the answer.");
}

/* A chunk of choice `index`.  lp: logprobs object for the chunk, taken over (NULL -> null) */
static void sse_chunk(call_t *c, int index, const char *role, const char *content, size_t content_len,
                      const char *reasoning, size_t reasoning_len, eng_finish_t fin, cJSON *lp) {
    char *j = c->cmpl ? eng_resp_text_chunk(index, c->id, c->created, c->srv->model_name, content, content_len, fin,
                                            c->include_usage, NULL, lp)
                      : eng_resp_chunk_at(index, c->id, c->created, c->srv->model_name, role, content, content_len,
                                reasoning, reasoning_len, fin, c->include_usage, NULL, lp);
    if (sse_send(c, j)) call_oom(c);
    free(j);
}

/* A whole answer's body j (malloc'd, NULL when it could not be built: a
 * 500 instead), sent and freed.  Returns the status sent. */
static int send_answer(call_t *c, char *j) {
    int code = j ? 200 : 500;
    send_json(c->req, code, j ? j : OOM_JSON);
    free(j);
    return code;
}

/* Every choice has ended: finish the HTTP exchange (or just free the
 * detached request when the client is gone), account, free the call.  Usage
 * is the request's: the prompt once (as OpenAI counts n), the cache hits of
 * the choice that had fewest, completion and reasoning tokens summed. */
static void call_finish(call_t *c) {
    srv_t *S = c->srv;
    eng_usage_t u = {0, 0, 0, -1};
    for (int i = 0; i < c->n; i++) {
        const choice_t *h = &c->ch[i];
        if (!h->job) continue;
        if (h->u.prompt_tokens > u.prompt_tokens) u.prompt_tokens = h->u.prompt_tokens;
        if (u.cached_tokens < 0 || h->u.cached_tokens < u.cached_tokens) u.cached_tokens = h->u.cached_tokens;
        u.completion_tokens += h->u.completion_tokens;
        u.reasoning_tokens += h->u.reasoning_tokens;
    }
    if (u.cached_tokens < 0) u.cached_tokens = 0;
    eng_finish_t fin = c->ch[0].finish;
    int code = 200;
    S->met.prompt_tokens += (unsigned long long)u.prompt_tokens;
    S->met.completion_tokens += (unsigned long long)u.completion_tokens;
    S->met.reasoning_tokens += (unsigned long long)u.reasoning_tokens;
    if (c->gone || c->hung_up) {
        code = 499;
        S->met.cancelled++;
    }
    if (c->gone) {
        if (c->started)
            evhttp_send_reply_end(c->req); /* detached: this frees it */
        else
            evhttp_send_reply(c->req, 499, "Client Closed Request", NULL);
    } else {
        evhttp_connection_set_closecb(c->conn, NULL, NULL);
        evhttp_request_set_on_complete_cb(c->req, on_sent, S);
        S->pending_flush++;
        if (c->bad_status) {
            eng_api_err_t e;
            /* 503 only when nothing was generated: the gateway may send a 503 elsewhere */
            eng_api_err(&e, c->bad_status == 503 && u.completion_tokens ? 500 : c->bad_status, "server_error", NULL,
                        c->bad_code, "%s", c->bad_msg);
            if (code != 499) code = e.status;
            if (c->started) {
                char *j = eng_api_err_json(&e);
                if (!j || sse_send(c, j)) sse_send_oom(c);
                free(j);
                evhttp_send_reply_end(c->req); /* no [DONE]: the stream is not whole */
            } else {
                send_err(c->req, &e);
            }
        } else if (c->stream) {
            int bad = 0;
            if (c->include_usage) {
                char *j = c->cmpl ? eng_resp_text_chunk(0, c->id, c->created, S->model_name, NULL, 0, ENG_FINISH_NONE,
                                                        0, &u, NULL)
                                  : eng_resp_chunk(c->id, c->created, S->model_name, NULL, NULL, 0, NULL, 0,
                                                   ENG_FINISH_NONE, 0, &u, NULL);
                bad = sse_send(c, j);
                free(j);
            }
            if (bad) { /* the usage chunk was lost: an error event instead of [DONE] */
                code = 500;
                sse_send_oom(c);
            } else {
                struct evbuffer *b = evbuffer_new();
                if (b) {
                    evbuffer_add(b, "data: [DONE]\n\n", 14);
                    evhttp_send_reply_chunk(c->req, b);
                    evbuffer_free(b);
                }
            }
            evhttp_send_reply_end(c->req);
        } else if (c->cmpl) {
            eng_text_choice_t chs[API_MAX_N];
            for (int i = 0; i < c->n; i++) {
                choice_t *h = &c->ch[i];
                chs[i] = (eng_text_choice_t){h->content.p ? h->content.p : "", h->content.len, h->finish,
                                             h->lp_legacy};
                h->lp_legacy = NULL;
            }
            char *j = eng_resp_text_completion(c->id, c->created, S->model_name, chs, c->n, &u);
            if (send_answer(c, j) != 200) code = 500;
        } else {
            eng_choice_t chs[API_MAX_N];
            int lp_oom = 0; /* a choice's logprobs could not be built: the out-of-memory 500, not an answer without them */
            for (int i = 0; i < c->n; i++) {
                choice_t *h = &c->ch[i];
                cJSON *lp = NULL;
                if (!h->lp_content && c->chat_lp && !(h->lp_content = cJSON_CreateArray())) /* none listed: []
                                                                                    * (a stop string cut every token) */
                    lp_oom = 1;
                if (h->lp_content) {
                    lp = cJSON_CreateObject();
                    if (!lp || !cJSON_AddItemToObject(lp, "content", h->lp_content)) {
                        cJSON_Delete(h->lp_content);
                        cJSON_Delete(lp);
                        lp = NULL;
                        lp_oom = 1;
                    }
                    h->lp_content = NULL;
                }
                const char *content = h->content.p ? h->content.p : "";
                if (h->n_calls && !h->content.len) content = NULL; /* only tool calls: content null */
                chs[i] = (eng_choice_t){content, h->content.len,
                                        c->reasoning_model ? (h->reasoning.p ? h->reasoning.p : "") : NULL,
                                        h->reasoning.len, h->calls, h->n_calls, h->finish, lp};
            }
            char *j = lp_oom ? NULL : eng_resp_completion_n(c->id, c->created, S->model_name, chs, c->n, &u);
            for (int i = 0; lp_oom && i < c->n; i++) cJSON_Delete(chs[i].logprobs); /* else the answer took them */
            if (send_answer(c, j) != 200) code = 500;
        }
    }
    count_status(S, code);
    log_line("{\"ts\":%lld,\"event\":\"%s\",\"request_id\":\"%s\",\"status\":%d,\"stream\":%s,\"n\":%d,"
             "\"finish_reason\":\"%s\",\"prompt_tokens\":%d,\"cached_tokens\":%d,\"completion_tokens\":%d,"
             "\"reasoning_tokens\":%d,\"ms\":%.1f}",
             (long long)time(NULL), c->cmpl ? "completion" : "chat", c->req_id, code, c->stream ? "true" : "false", c->n,
             c->bad_status ? (c->bad_status == 500 && !strcmp(c->bad_code, "engine_error") ? "error" : "cancelled")
             : eng_finish_name(fin) ? eng_finish_name(fin) : "error",
             u.prompt_tokens, u.cached_tokens, u.completion_tokens, u.reasoning_tokens,
             (double)(tg_mono_ns() - c->t_start) / 1e6);
    call_unlink_free(c);
}

/* The first failure of a choice fails the call; the other choices are cancelled. */
static void call_fail(call_t *c, int status, const char *code, const char *msg) {
    if (c->bad_status) return;
    c->bad_status = status;
    c->bad_code = code;
    snprintf(c->bad_msg, sizeof c->bad_msg, "%s", msg);
    call_cancel(c);
}

/* A choice's last event: its finish (a stream gets its finish chunk), the
 * call's end once every choice has ended. */
static void choice_end(choice_t *h, const eng_ev_t *ev) {
    call_t *c = h->call;
    h->done = 1;
    c->n_done++;
    /* an answer that ended (EOS) after a tool-call block: "tool_calls" */
    h->finish = ev->finish == ENG_FINISH_STOP && h->n_calls ? ENG_FINISH_TOOL_CALLS : ev->finish;
    h->u = (eng_usage_t){ev->prompt_tokens, ev->completion_tokens, ev->reasoning_tokens, ev->cached_tokens};
    if (ev->finish == ENG_FINISH_ERROR) {
        char m[200];
        snprintf(m, sizeof m, "The engine failed: %s", ev->err);
        call_fail(c, 500, "engine_error", m);
    } else if (ev->finish == ENG_FINISH_CANCELLED) {
        call_fail(c, 503, "server_shutting_down", "The worker is shutting down; the request was cancelled.");
    } else if (c->stream && !c->gone && !c->bad_status) {
        sse_chunk(c, h->index, NULL, NULL, 0, NULL, 0, h->finish, NULL);
    }
    if (c->n_done == c->n) call_finish(c);
}

/* Bytes of the tool-call block: parse the calls completed so far; a stream
 * gets each call in a chunk as soon as it is complete. */
static void call_tool_bytes(choice_t *h, const char *b, size_t n) {
    call_t *c = h->call;
    if (tg_buf_put(&h->tool, b, n) ||
        eng_tool_calls_parse(h->tool.p, h->tool.len, &h->calls, &h->n_calls) < 0) {
        call_oom(c);
        return;
    }
    if (c->stream && h->n_calls > h->calls_sent && !c->bad_status) {
        char *j = eng_resp_chunk_tools_at(h->index, c->id, c->created, c->srv->model_name, h->calls, h->calls_sent,
                                          h->n_calls - h->calls_sent, c->include_usage);
        if (sse_send(c, j)) call_oom(c);
        free(j);
        h->calls_sent = h->n_calls;
    }
}

/* Scheduler events: runs on the loop thread when the scheduler wakes it. */
static void on_wake(evutil_socket_t fd, short what, void *arg) {
    srv_t *S = arg;
    eng_ev_t *ev = eng_sched_take(S->sched);
    while (ev) {
        eng_ev_t *next = ev->next;
        choice_t *h = ev->user;
        call_t *c = h->call;
        if (ev->new_tokens) {
            if (ev->first_token)
                histo_observe(&S->met.ttft, TTFT_BUCKETS, N_TTFT, (double)(ev->t_ns - c->t_start) / 1e9);
            else
                histo_observe(&S->met.tpot, TPOT_BUCKETS, N_TPOT, (double)(ev->t_ns - h->t_last) / 1e9);
            h->t_last = ev->t_ns;
            h->got_first = 1;
        }
        cJSON *lp = NULL; /* the event's entries (eng_ev_t.lp: none, one, or several at once) */
        if (ev->n_lp && !c->gone && c->legacy_lp) { /* completions: the legacy format */
            cJSON *into = c->stream ? cJSON_CreateObject() : h->lp_legacy ? h->lp_legacy
                                                                      : (h->lp_legacy = cJSON_CreateObject());
            for (int k = 0; k < ev->n_lp; k++)
                if (!into || eng_logprob_legacy_add(into, S->tok, &ev->lp[k], &h->text_off)) {
                    call_oom(c);
                    break;
                }
            if (c->stream && into && !c->bad_status)
                sse_chunk(c, h->index, NULL, ev->content.p ? ev->content.p : "", ev->content.len, NULL, 0,
                          ENG_FINISH_NONE, into); /* taken over */
            else if (c->stream)
                cJSON_Delete(into);
            if (c->stream) ev->content.len = 0; /* sent with its logprobs */
        } else if (ev->n_lp && !c->gone) {
            if (!(lp = cJSON_CreateArray())) call_oom(c);
            for (int k = 0; lp && k < ev->n_lp; k++) {
                cJSON *e = eng_logprob_json(S->tok, &ev->lp[k]);
                if (!e) {
                    cJSON_Delete(lp), lp = NULL;
                    call_oom(c);
                    break;
                }
                cJSON_AddItemToArray(lp, e);
            }
        }
        if (!c->gone && c->stream && !c->bad_status) {
            cJSON *lpo = NULL; /* {"content":[entries]} for this event's chunk */
            if (lp && (lpo = cJSON_CreateObject())) {
                if (!cJSON_AddItemToObject(lpo, "content", lp)) { /* its key's copy: out of memory */
                    cJSON_Delete(lp);
                    cJSON_Delete(lpo);
                    lpo = NULL;
                    call_oom(c); /* not a chunk without its entries */
                }
                lp = NULL;
            } else if (lp) {
                call_oom(c);
            }
            if (ev->reasoning.len && !c->bad_status) {
                sse_chunk(c, h->index, NULL, NULL, 0, ev->reasoning.p, ev->reasoning.len, ENG_FINISH_NONE,
                          ev->content.len ? NULL : lpo);
                if (!ev->content.len) lpo = NULL;
            }
            if ((ev->content.len || lpo) && !c->bad_status) {
                sse_chunk(c, h->index, NULL, ev->content.p ? ev->content.p : "", ev->content.len, NULL, 0,
                          ENG_FINISH_NONE, lpo);
                lpo = NULL;
            }
            cJSON_Delete(lpo); /* left over when the call failed above: nothing more goes out */
        } else if (!c->gone) {
            if (lp) {
                if (!h->lp_content && !(h->lp_content = cJSON_CreateArray())) call_oom(c);
                cJSON *e;
                while (h->lp_content && (e = cJSON_DetachItemFromArray(lp, 0)))
                    cJSON_AddItemToArray(h->lp_content, e);
            }
            if (tg_buf_put(&h->content, ev->content.p ? ev->content.p : "", ev->content.len) ||
                       tg_buf_put(&h->reasoning, ev->reasoning.p ? ev->reasoning.p : "", ev->reasoning.len)) {
                call_oom(c); /* out of memory: the answer would lose text */
            }
        }
        cJSON_Delete(lp); /* the emptied array, or what OOM left over */
        if (ev->tool.len && !c->gone) call_tool_bytes(h, ev->tool.p, ev->tool.len);
        if (ev->finish != ENG_FINISH_NONE) choice_end(h, ev);
        eng_ev_free(ev);
        ev = next;
    }
}

static void wake_from_sched(void *arg) { event_active((struct event *)arg, EV_READ, 0); }

/* Once a second: evhttp does not read from a connection while it waits for
 * our reply, so a client that hangs up on a non-streaming request is found by
 * peeking at its socket (EOF or reset -> cancel the job; the reply then goes
 * nowhere).  Every keepalive_s seconds: an SSE comment to streams still
 * waiting for their first token. */
static void on_tick(evutil_socket_t fd, short what, void *arg) {
    srv_t *S = arg;
    S->ticks++;
    if (S->accept_err_tick && S->ticks > S->accept_err_tick + 1) { /* a tick without a refusal */
        log_line("{\"event\":\"accepting\",\"refused\":%llu}", S->accept_errs);
        S->accept_err_tick = 0;
        S->accept_errs = 0;
    }
    /* Give freed heap back to the system when idle: request bodies (up to 32
     * MiB a connection, in 4 KiB blocks) leave the heap fragmented, and glibc
     * keeps such memory; after 50 connections sent 30 MiB each and closed,
     * the worker kept 1.7 GB resident.  Only after the free bytes grew by 64
     * MiB since the last trim, so an idle worker does not trim every second. */
    if (!S->n_calls) {
        struct mallinfo2 mi = mallinfo2();
        if (mi.fordblks > S->trim_mark + (64u << 20)) {
            malloc_trim(0);
            S->trim_mark = mallinfo2().fordblks;
        } else if (mi.fordblks < S->trim_mark) {
            S->trim_mark = mi.fordblks;
        }
    }
    for (call_t *c = S->calls; c; c = c->next) {
        if (c->gone || c->hung_up) continue;
        struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn);
        evutil_socket_t sfd = bev ? bufferevent_getfd(bev) : -1;
        char b1;
        if (sfd >= 0) {
            ssize_t r = recv(sfd, &b1, 1, MSG_PEEK | MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                c->hung_up = 1;
                call_cancel(c);
                continue;
            }
        }
        int got_first = 0;
        for (int i = 0; i < c->n; i++) got_first |= c->ch[i].got_first;
        if (S->ticks % (unsigned long)S->keepalive_s || !c->started || got_first) continue;
        struct evbuffer *b = evbuffer_new();
        if (!b) continue;
        evbuffer_add(b, ": keep-alive\n\n", 14);
        evhttp_send_reply_chunk(c->req, b);
        evbuffer_free(b);
    }
}

/* ---- handlers -------------------------------------------------------------- */

static int id_char_ok(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_' || ch == '.' || ch == ':';
}

static void make_request_id(srv_t *S, struct evhttp_request *req, char *out, size_t outlen) {
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Id");
    if (h) {
        size_t n = strlen(h), ok = n > 0 && n < outlen && n <= 128;
        for (size_t i = 0; ok && i < n; i++) ok = id_char_ok(h[i]);
        if (ok) {
            memcpy(out, h, n + 1);
            return;
        }
    }
    /* UUIDv7: 48-bit Unix milliseconds, version 7, variant 10, random rest */
    unsigned char r[16] = {0};
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        uint64_t x = (uint64_t)tg_mono_ns() ^ (++S->id_counter << 40);
        memcpy(r + 8, &x, 8);
    }
    uint64_t ms = (uint64_t)(tg_wall_us() / 1000);
    for (int i = 0; i < 6; i++) r[i] = (unsigned char)(ms >> (40 - 8 * i));
    r[6] = (unsigned char)(0x70 | (r[6] & 0x0f));
    r[8] = (unsigned char)(0x80 | (r[8] & 0x3f));
    snprintf(out, outlen,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
}

static uint64_t random_seed(srv_t *S) {
    uint64_t x;
    if (getrandom(&x, sizeof x, 0) != (ssize_t)sizeof x) x = (uint64_t)tg_mono_ns() ^ ++S->id_counter;
    return x;
}

/* The constraint of a request (engine/SERVER.md): the tool-call grammar
 * (required or named); under "auto" text or a JSON answer in which the
 * tool-call block may open; the JSON or schema grammar; or, for plain text,
 * a grammar that only keeps the tool markers out (they are not special
 * tokens: sampled, they would show in the content).  0, or -1 with e filled. */
static int chat_constraint(srv_t *S, const api_chat_req_t *r, eng_job_spec_t *spec, api_err_t *e) {
    spec->gram_trigger = spec->tool_trigger = -1;
    if (r->n_tools && !S->has_tools)
        return api_err(e, 400, "invalid_request_error", "tools", "unsupported_parameter",
                       "Unsupported parameter: this model's chat template has no tool calls.");
    int32_t eos = tok_eos(S->tok);
    int json = r->format != API_FORMAT_TEXT;
    const api_schema_t *sc = r->format == API_FORMAT_JSON_SCHEMA ? &r->schema : NULL;
    int tools = r->n_tools && r->tool_choice != API_TOOL_CHOICE_NONE;
    const char *names[API_MAX_TOOLS];
    size_t lens[API_MAX_TOOLS];
    int roots[API_MAX_TOOLS]; /* strict tools: their arguments' schema in r->tool_schema */
    int n = 0;
    for (size_t i = 0; tools && i < r->n_tools; i++) {
        if (r->tool_choice == API_TOOL_CHOICE_NAMED && (int)i != r->tool_named) continue;
        names[n] = r->tools[i].name;
        roots[n] = r->tools[i].root;
        lens[n++] = r->tools[i].name_len;
    }
    int parallel = r->parallel_tool_calls && r->tool_choice != API_TOOL_CHOICE_NAMED;
    if (tools && r->tool_choice != API_TOOL_CHOICE_AUTO)
        spec->gram = eng_gram_tools(S->vocab, eos, &S->tool_ids, names, lens, n, parallel, roots, &r->tool_schema);
    else if (tools)
        spec->gram = eng_gram_auto(S->vocab, eos, &S->tool_ids, names, lens, n, parallel, json, sc, roots,
                                   &r->tool_schema);
    else if (sc)
        spec->gram = eng_gram_schema(S->vocab, eos, sc);
    else if (json)
        spec->gram = eng_gram_json(S->vocab, eos);
    else if (S->tool_ids.n_marks)
        spec->gram = eng_gram_auto(S->vocab, eos, &S->tool_ids, NULL, NULL, 0, 0, 0, NULL, NULL, NULL);
    else
        return 0;
    if (!spec->gram) return api_err(e, 500, "server_error", NULL, NULL, "out of memory");
    if (tools) spec->tool_trigger = S->tool_ids.calls_begin;
    return 0;
}

/* POST /v1/chat/completions, or with cmpl POST /v1/completions (the same
 * path: read by api/'s completions reader, its prompt rendered by
 * api_cmpl_render, no constraint or think split, text_completion answers). */
static void handle_chat(srv_t *S, struct evhttp_request *req, int cmpl) {
    api_err_t e;
    api_chat_req_t r;
    eng_job_spec_t spec;
    char *prompt = NULL;
    int32_t *ids = NULL;
    call_t *c = NULL;
    memset(&spec, 0, sizeof spec);
    memset(&r, 0, sizeof r);
    char req_id[130];
    make_request_id(S, req, req_id, sizeof req_id);
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Request-Id", req_id);

    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        api_err(&e, 405, "invalid_request_error", NULL, "method_not_allowed",
                "Only POST is allowed on %s.", cmpl ? "/v1/completions" : "/v1/chat/completions");
        goto fail;
    }
    if (S->draining) {
        api_err(&e, 503, "server_error", NULL, "server_shutting_down", "The worker is shutting down.");
        goto fail;
    }
    /* The body is JSON, as the gateway asks (tg_http_media.h): Content-Type application/json (charset
     * utf-8 if one is named) or none; another media type is refused by name, not guessed at */
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    int media = ct ? tg_http_json_media(ct) : TG_HTTP_MEDIA_JSON;
    if (media != TG_HTTP_MEDIA_JSON) {
        api_err(&e, 400, "invalid_request_error", NULL, "invalid_content_type", "Invalid Content-Type header '%.120s': %s",
                ct, media == TG_HTTP_MEDIA_BAD_CHARSET ? "the body must be JSON in UTF-8 (charset=utf-8)"
                                                     : "the request body must be JSON, sent as 'Content-Type: application/json'");
        goto fail;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > MAX_BODY) {
        api_err(&e, 413, "invalid_request_error", NULL, "request_too_large",
                "The request body is %zu bytes; the limit is %d.", len, MAX_BODY);
        goto fail;
    }
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : ""; /* one block: may allocate */
    if (!body) {
        api_err(&e, 500, "server_error", NULL, "engine_error", "out of memory for the request body");
        goto fail;
    }
    if ((cmpl ? api_cmpl_req_parse : api_chat_req_parse)(&r, body, len, &e)) goto fail;
    if (strcmp(r.model, S->model_name)) {
        api_err(&e, 404, "invalid_request_error", NULL, "model_not_found", /* param null, as OpenAI */
                "The model `%.200s` does not exist or you do not have access to it.", r.model);
        goto fail;
    }
    int32_t n_allowed = tok_n_vocab(S->tok) < S->vocab_rows ? tok_n_vocab(S->tok) : S->vocab_rows;
    if (api_chat_check_vocab(&r, n_allowed, &e)) goto fail;
    if (!cmpl && r.logprobs && S->tmpl == TOK_TMPL_DEEPSEEK_R1) {
        /* as DeepSeek's reasoner: its answer is split into reasoning_content and content (leading
         * whitespace dropped), so per-token entries could not join to either */
        api_err(&e, 400, "invalid_request_error", "logprobs", "unsupported_parameter",
                "Unsupported parameter: 'logprobs' is not supported with a reasoning model.");
        goto fail;
    }
    size_t prompt_len = 0;
    if (!(prompt = api_chat_render(&r, (tok_tmpl_kind_t)S->tmpl, &prompt_len, &e))) goto fail;
    long n = tok_encode(S->tok, prompt, prompt_len, 1, &ids);
    if (n < 0 && tg_utf8_valid(prompt, prompt_len)) { /* valid text: the tokenizer ran out of memory */
        api_err(&e, 500, "server_error", NULL, "engine_error", "out of memory while tokenizing the prompt");
        goto fail;
    }
    if (n < 0) {
        api_err(&e, 400, "invalid_request_error", cmpl ? "prompt" : "messages", "invalid_value",
                "The %s could not be tokenized.", cmpl ? "prompt" : "messages");
        goto fail;
    }
    /* A max_tokens the gateway wrote in because the client gave none (it says
     * so: X-Tollgate-Default-Max-Tokens, the same value) is a default, not
     * the client's: capped by the context left like ours, never a 400 for a
     * prompt that fits (engine/SERVER.md). */
    eng_limits_t lim = S->lim;
    const char *dh = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Tollgate-Default-Max-Tokens");
    char *dend;
    long dv = dh ? strtol(dh, &dend, 10) : 0;
    if (dh && *dh >= '0' && *dh <= '9' && !*dend && dv >= 1 && dv == r.max_tokens) {
        if (dv < lim.default_max) lim.default_max = (int)dv;
        r.max_tokens = 0;
    }
    int max_tokens;
    if (eng_chat_max_tokens(&r, (int)(n > 0x7fffffff ? 0x7fffffff : n), &lim, &max_tokens, &e)) goto fail;
    if (n == 0) {
        api_err(&e, 400, "invalid_request_error", cmpl ? "prompt" : "messages", "invalid_value",
                "The rendered prompt is empty.");
        goto fail;
    }
    for (long i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= S->vocab_rows) {
            api_err(&e, 500, "server_error", NULL, "engine_error",
                    "Token id %d is outside the model's vocabulary (%d rows): the tokenizer "
                    "does not match the model.", (int)ids[i], (int)S->vocab_rows);
            goto fail;
        }
    if (cmpl) /* a completion continues the text: nothing constrained */
        spec.gram_trigger = spec.tool_trigger = -1;
    else if (chat_constraint(S, &r, &spec, &e))
        goto fail;
    spec.prompt = ids;
    ids = NULL;
    spec.n_prompt = (int)n;
    spec.max_tokens = max_tokens;
    spec.sp.temperature = (float)r.temperature;
    spec.sp.top_p = (float)r.top_p;
    spec.sp.presence_penalty = (float)r.presence_penalty;
    spec.sp.frequency_penalty = (float)r.frequency_penalty;
    spec.sp.top_k = r.top_k;
    if (r.n_bias) {
        if (!(spec.bias = malloc(r.n_bias * sizeof *spec.bias))) goto oom;
        for (size_t i = 0; i < r.n_bias; i++) spec.bias[i] = (eng_bias_t){r.bias[i].id, r.bias[i].bias};
        spec.n_bias = (int)r.n_bias;
    }
    spec.seed = r.has_seed ? r.seed : random_seed(S);
    for (int i = 0; i < r.n_stop; i++) {
        /* by length: a stop string may hold NUL (strndup would cut it there) */
        spec.stop[i] = malloc(r.stop_len[i] + 1);
        if (!spec.stop[i]) goto oom;
        memcpy(spec.stop[i], r.stop[i], r.stop_len[i]);
        spec.stop[i][r.stop_len[i]] = 0;
        spec.stop_len[i] = r.stop_len[i];
    }
    spec.n_stop = r.n_stop;
    spec.think = cmpl ? ENG_THINK_OFF : eng_chat_think_mode(S->tmpl, prompt, prompt_len);
    spec.logprobs = r.logprobs;
    spec.top_logprobs = r.top_logprobs;
    /* the prefix cache's namespace: the gateway names one per customer, whose
     * prompts then never meet another's cached blocks (common/tg_prefix.h);
     * without the header, the default namespace */
    const char *ns = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Cache-Namespace");
    if (ns && *ns) spec.cache_root = tg_prefix_root(ns, strlen(ns));

    c = calloc(1, sizeof *c);
    if (!c || !(c->ch = calloc((size_t)r.n, sizeof *c->ch))) goto oom;
    c->n = r.n;
    for (int i = 0; i < c->n; i++) c->ch[i].call = c, c->ch[i].index = i;
    c->srv = S;
    c->req = req;
    c->stream = r.stream;
    c->include_usage = r.stream && r.include_usage;
    c->reasoning_model = spec.think != ENG_THINK_OFF;
    c->created = (long long)time(NULL);
    c->t_start = tg_mono_ns();
    memcpy(c->req_id, req_id, sizeof req_id);
    snprintf(c->id, sizeof c->id, "%s-%s", cmpl ? "cmpl" : "chatcmpl", req_id);
    c->cmpl = cmpl;
    c->legacy_lp = cmpl && r.cmpl_logprobs >= 0;
    c->chat_lp = !cmpl && r.logprobs;
    for (int i = 0; cmpl && r.echo && i < c->n; i++) { /* echo: the text starts with the prompt */
        choice_t *h = &c->ch[i];
        for (size_t k = 0; k < r.prompt_len; k++) h->text_off += ((unsigned char)r.prompt[k] & 0xC0) != 0x80;
        if (!c->stream && tg_buf_put(&h->content, r.prompt ? r.prompt : "", r.prompt_len)) goto oom;
    }
    /* n > 1: each further choice is its own job (copies of the prompt, stops,
     * bias; its own grammar state; the seed mixed with its index, so choice 0
     * is what n = 1 would give) */
    eng_job_spec_t more[API_MAX_N];
    int n_more = 0;
    for (int i = 1; i < c->n; i++) {
        eng_job_spec_t *m = &more[n_more++];
        *m = spec;
        m->prompt = NULL, m->bias = NULL, m->gram = NULL;
        for (int k = 0; k < ENG_MAX_STOP; k++) m->stop[k] = NULL;
        if (!(m->prompt = malloc((size_t)spec.n_prompt * sizeof *m->prompt))) goto oom_more;
        memcpy(m->prompt, spec.prompt, (size_t)spec.n_prompt * sizeof *m->prompt);
        if (spec.n_bias) {
            if (!(m->bias = malloc((size_t)spec.n_bias * sizeof *m->bias))) goto oom_more;
            memcpy(m->bias, spec.bias, (size_t)spec.n_bias * sizeof *m->bias);
        }
        for (int k = 0; k < spec.n_stop; k++) {
            if (!(m->stop[k] = malloc(spec.stop_len[k] + 1))) goto oom_more;
            memcpy(m->stop[k], spec.stop[k], spec.stop_len[k] + 1);
        }
        if (!cmpl && chat_constraint(S, &r, m, &e)) goto fail_more;
        uint64_t x = spec.seed + 0x9e3779b97f4a7c15ULL * (uint64_t)i; /* splitmix64 of seed + i * golden */
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        m->seed = x ^ (x >> 31);
    }
    int rc = eng_sched_submit(S->sched, &spec, &c->ch[0], &c->ch[0].job); /* takes spec's allocations */
    if (rc == ENG_SUBMIT_FULL || rc == ENG_SUBMIT_CLOSED) {
        api_err(&e, 503, "server_error", NULL, rc == ENG_SUBMIT_FULL ? "server_overloaded" : "server_shutting_down",
                rc == ENG_SUBMIT_FULL ? "The worker is overloaded (queue full); retry later."
                                      : "The worker is shutting down.");
        memset(&spec, 0, sizeof spec);
        goto fail_more;
    }
    memset(&spec, 0, sizeof spec);
    if (rc) goto oom_more;
    for (int i = 1; i < c->n; i++) {
        choice_t *h = &c->ch[i];
        if (c->bad_status) { /* an earlier one was refused: this one is not sent */
            eng_job_spec_t *m = &more[i - 1];
            free(m->prompt);
            free(m->bias);
            eng_gram_free(m->gram);
            for (int k = 0; k < ENG_MAX_STOP; k++) free(m->stop[k]);
            h->done = 1;
            c->n_done++;
            continue;
        }
        rc = eng_sched_submit(S->sched, &more[i - 1], h, &h->job);
        if (rc == ENG_SUBMIT_OK) continue;
        /* not taken: the call fails (503 when nothing was generated), the choices taken are cancelled */
        h->job = NULL;
        h->done = 1;
        c->n_done++;
        call_fail(c, rc == ENG_SUBMIT_FULL || rc == ENG_SUBMIT_CLOSED ? 503 : 500,
                  rc == ENG_SUBMIT_FULL ? "server_overloaded" : rc == ENG_SUBMIT_CLOSED ? "server_shutting_down"
                                                                                     : "engine_error",
                  rc == ENG_SUBMIT_FULL ? "The worker is overloaded (queue full); retry later."
                  : rc == ENG_SUBMIT_CLOSED ? "The worker is shutting down." : "out of memory");
    }
    c->next = S->calls;
    if (S->calls) S->calls->prev = c;
    S->calls = c;
    S->n_calls++;
    c->conn = evhttp_request_get_connection(req);
    evhttp_connection_set_closecb(c->conn, on_conn_close, c);
    if (c->stream) {
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        evhttp_add_header(h, "Content-Type", "text/event-stream");
        evhttp_add_header(h, "Cache-Control", "no-cache");
        evhttp_send_reply_start(req, 200, "OK");
        c->started = 1;
        for (int i = 0; i < c->n; i++) {
            if (!cmpl) sse_chunk(c, i, "assistant", "", 0, NULL, 0, ENG_FINISH_NONE, NULL);
            else if (r.echo) sse_chunk(c, i, NULL, r.prompt ? r.prompt : "", r.prompt_len, NULL, 0, ENG_FINISH_NONE, NULL);
        }
    }
    free(prompt);
    api_chat_req_free(&r);
    /* the body is not needed again: give its memory back now, not when the
     * answer is done (tg_httpguard bounds the bytes being received, and
     * counts them as freed once handed over) */
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
oom_more:
    api_err(&e, 500, "server_error", NULL, NULL, "out of memory");
fail_more:
    for (int i = 0; i < n_more; i++) {
        free(more[i].prompt);
        free(more[i].bias);
        eng_gram_free(more[i].gram);
        for (int k = 0; k < ENG_MAX_STOP; k++) free(more[i].stop[k]);
    }
    goto fail;
oom:
    api_err(&e, 500, "server_error", NULL, NULL, "out of memory");
fail:
    api_chat_req_free(&r);
    call_free(c);
    free(prompt);
    free(ids);
    free(spec.prompt);
    free(spec.bias);
    eng_gram_free(spec.gram);
    for (int i = 0; i < ENG_MAX_STOP; i++) free(spec.stop[i]);
    count_status(S, e.status);
    log_line("{\"ts\":%lld,\"event\":\"%s\",\"request_id\":\"%s\",\"status\":%d,\"error\":\"%s\"}",
             (long long)time(NULL), cmpl ? "completion" : "chat", req_id, e.status, e.code ? e.code : "");
    send_err(req, &e);
}

static void handle_models(srv_t *S, struct evhttp_request *req, const char *one) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", S->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)S->started_at);
    cJSON_AddStringToObject(m, "owned_by", "tollgate");
    cJSON_AddNumberToObject(m, "context_length", S->lim.context);
    cJSON *root = m;
    if (!one) {
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "object", "list");
        cJSON *d = cJSON_AddArrayToObject(root, "data");
        cJSON_AddItemToArray(d, m);
    } else if (strcmp(one, S->model_name)) {
        cJSON_Delete(m);
        eng_api_err_t e;
        eng_api_err(&e, 404, "invalid_request_error", NULL, "model_not_found",
                    "The model `%.200s` does not exist or you do not have access to it.", one);
        send_err(req, &e);
        return;
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    send_json(req, s ? 200 : 500, s ? s : "{}");
    free(s);
}

static void handle_health(srv_t *S, struct evhttp_request *req) {
    eng_sched_stats_t st;
    eng_sched_stats(S->sched, &st);
    char buf[512];
    snprintf(buf, sizeof buf, "{\"status\":\"%s\",\"model\":\"%s\",\"active\":%d,\"queued\":%d}",
             S->draining ? "draining" : "ok", S->model_name, st.active, st.queued);
    send_json(req, S->draining ? 503 : 200, buf);
}

static void histo_print(struct evbuffer *b, const char *name, const char *help, const histo_t *h,
                        const double *bk, size_t nb) {
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long long cum = 0;
    for (size_t i = 0; i < nb; i++) {
        cum += h->counts[i];
        evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bk[i], cum);
    }
    evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, h->n,
                        name, h->sum, name, h->n);
}

static void handle_metrics(srv_t *S, struct evhttp_request *req) {
    eng_sched_stats_t st;
    eng_sched_stats(S->sched, &st);
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    const metrics_t *m = &S->met;
    evbuffer_add_printf(b, "# HELP tollgate_engine_requests_total Chat and text completion requests by HTTP status.\n"
                           "# TYPE tollgate_engine_requests_total counter\n");
    for (size_t i = 0; i < N_CODES; i++)
        evbuffer_add_printf(b, "tollgate_engine_requests_total{code=\"%d\"} %llu\n", CODES[i], m->requests[i]);
    evbuffer_add_printf(b, "tollgate_engine_requests_total{code=\"other\"} %llu\n", m->requests[N_CODES]);
    tg_httpguard_stats_t gs;
    tg_httpguard_stats(S->guard, &gs);
    evbuffer_add_printf(b,
        "# HELP tollgate_engine_http_connections Open HTTP connections (at most --max-conns).\n"
        "# TYPE tollgate_engine_http_connections gauge\ntollgate_engine_http_connections %llu\n"
        "# HELP tollgate_engine_http_buffered_bytes Request bytes being received (at most --max-buffered).\n"
        "# TYPE tollgate_engine_http_buffered_bytes gauge\ntollgate_engine_http_buffered_bytes %llu\n"
        "# HELP tollgate_engine_http_refused_total Connections and requests refused before they were read whole.\n"
        "# TYPE tollgate_engine_http_refused_total counter\n"
        "tollgate_engine_http_refused_total{reason=\"connections\"} %llu\n"
        "tollgate_engine_http_refused_total{reason=\"malformed\"} %llu\n"
        "tollgate_engine_http_refused_total{reason=\"method\"} %llu\n"
        "tollgate_engine_http_refused_total{reason=\"too_large\"} %llu\n"
        "tollgate_engine_http_refused_total{reason=\"timeout\"} %llu\n"
        "tollgate_engine_http_refused_total{reason=\"buffered\"} %llu\n"
        "# HELP tollgate_engine_http_idle_closed_total Connections closed after --idle-timeout without a request.\n"
        "# TYPE tollgate_engine_http_idle_closed_total counter\ntollgate_engine_http_idle_closed_total %llu\n",
        gs.conns, gs.buffered, gs.refused_conns, gs.bad_request, gs.bad_method, gs.too_large, gs.timeout, gs.busy,
        gs.idle_closed);
    evbuffer_add_printf(b,
        "# HELP tollgate_engine_prompt_tokens_total Prompt tokens fed to the model.\n"
        "# TYPE tollgate_engine_prompt_tokens_total counter\ntollgate_engine_prompt_tokens_total %llu\n"
        "# HELP tollgate_engine_completion_tokens_total Tokens generated (EOS included).\n"
        "# TYPE tollgate_engine_completion_tokens_total counter\ntollgate_engine_completion_tokens_total %llu\n"
        "# HELP tollgate_engine_reasoning_tokens_total Generated tokens inside <think>.\n"
        "# TYPE tollgate_engine_reasoning_tokens_total counter\ntollgate_engine_reasoning_tokens_total %llu\n"
        "# HELP tollgate_engine_requests_cancelled_total Requests whose client went away.\n"
        "# TYPE tollgate_engine_requests_cancelled_total counter\ntollgate_engine_requests_cancelled_total %llu\n"
        "# HELP tollgate_engine_active_sequences Sequences in the running batch.\n"
        "# TYPE tollgate_engine_active_sequences gauge\ntollgate_engine_active_sequences %d\n"
        "# HELP tollgate_engine_queue_depth Requests waiting for a batch slot.\n"
        "# TYPE tollgate_engine_queue_depth gauge\ntollgate_engine_queue_depth %d\n"
        "# HELP tollgate_engine_requests_in_flight HTTP chat requests not yet answered.\n"
        "# TYPE tollgate_engine_requests_in_flight gauge\ntollgate_engine_requests_in_flight %d\n"
        "# HELP tollgate_engine_kv_cache_tokens Tokens held in the KV caches of running sequences.\n"
        "# TYPE tollgate_engine_kv_cache_tokens gauge\ntollgate_engine_kv_cache_tokens %ld\n"
        "# HELP tollgate_engine_kv_cache_bytes Bytes of KV cache those tokens use.\n"
        "# TYPE tollgate_engine_kv_cache_bytes gauge\ntollgate_engine_kv_cache_bytes %.0f\n"
        "# HELP tollgate_engine_forward_steps_total Batched forward calls.\n"
        "# TYPE tollgate_engine_forward_steps_total counter\ntollgate_engine_forward_steps_total %llu\n"
        "# HELP tollgate_engine_forward_seconds_total Time spent in forward calls.\n"
        "# TYPE tollgate_engine_forward_seconds_total counter\ntollgate_engine_forward_seconds_total %.6f\n",
        m->prompt_tokens, m->completion_tokens, m->reasoning_tokens, m->cancelled, st.active, st.queued,
        S->n_calls, st.kv_tokens, (double)st.kv_tokens * (double)S->kv_bytes_per_token,
        (unsigned long long)st.steps, (double)st.forward_ns / 1e9);
    double hit_ratio = st.admitted_prompt_tokens ? (double)st.cached_prompt_tokens / (double)st.admitted_prompt_tokens : 0;
    evbuffer_add_printf(b,
        "# HELP tollgate_engine_kv_block_tokens Tokens per KV cache block.\n"
        "# TYPE tollgate_engine_kv_block_tokens gauge\ntollgate_engine_kv_block_tokens %d\n"
        "# HELP tollgate_engine_kv_blocks_total Blocks in the KV cache budget (--kv-mem).\n"
        "# TYPE tollgate_engine_kv_blocks_total gauge\ntollgate_engine_kv_blocks_total %d\n"
        "# HELP tollgate_engine_kv_blocks_used Blocks held by running sequences.\n"
        "# TYPE tollgate_engine_kv_blocks_used gauge\ntollgate_engine_kv_blocks_used %d\n"
        "# HELP tollgate_engine_kv_blocks_cached Blocks held by no sequence, kept for prefix hits (evictable).\n"
        "# TYPE tollgate_engine_kv_blocks_cached gauge\ntollgate_engine_kv_blocks_cached %d\n"
        "# HELP tollgate_engine_kv_blocks_free Blocks holding nothing.\n"
        "# TYPE tollgate_engine_kv_blocks_free gauge\ntollgate_engine_kv_blocks_free %d\n"
        "# HELP tollgate_engine_kv_block_evictions_total Cached blocks reused for new tokens (LRU).\n"
        "# TYPE tollgate_engine_kv_block_evictions_total counter\ntollgate_engine_kv_block_evictions_total %llu\n"
        "# HELP tollgate_engine_preemptions_total Running sequences sent back to the queue for want of KV blocks.\n"
        "# TYPE tollgate_engine_preemptions_total counter\ntollgate_engine_preemptions_total %llu\n"
        "# HELP tollgate_engine_prefix_cache_prompt_tokens_total Prompt tokens of admitted requests.\n"
        "# TYPE tollgate_engine_prefix_cache_prompt_tokens_total counter\ntollgate_engine_prefix_cache_prompt_tokens_total %llu\n"
        "# HELP tollgate_engine_prefix_cache_hit_tokens_total Of those, tokens whose KV came from the prefix cache.\n"
        "# TYPE tollgate_engine_prefix_cache_hit_tokens_total counter\ntollgate_engine_prefix_cache_hit_tokens_total %llu\n"
        "# HELP tollgate_engine_prefix_cache_hit_ratio hit_tokens_total / prompt_tokens_total since start.\n"
        "# TYPE tollgate_engine_prefix_cache_hit_ratio gauge\ntollgate_engine_prefix_cache_hit_ratio %.6f\n",
        st.kv.block_tokens, st.kv.blocks_total, st.kv.blocks_used, st.kv.blocks_cached, st.kv.blocks_free,
        (unsigned long long)st.kv.evictions, (unsigned long long)st.preemptions,
        (unsigned long long)st.admitted_prompt_tokens, (unsigned long long)st.cached_prompt_tokens, hit_ratio);
    histo_print(b, "tollgate_engine_time_to_first_token_seconds",
                "Request arrival to first generated token.", &m->ttft, TTFT_BUCKETS, N_TTFT);
    histo_print(b, "tollgate_engine_time_per_output_token_seconds",
                "Time between consecutive generated tokens of a request.", &m->tpot, TPOT_BUCKETS, N_TPOT);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void on_request(struct evhttp_request *req, void *arg) {
    srv_t *S = arg;
    if (tg_httpguard_answer(S->guard, req)) return; /* refused before it reached us */
    const char *uri = evhttp_request_get_uri(req);
    char path[256];
    size_t n = strcspn(uri, "?");
    if (n >= sizeof path) n = sizeof path - 1;
    memcpy(path, uri, n);
    path[n] = 0;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    int get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;
    eng_api_err_t e;
    if (!strcmp(path, "/v1/chat/completions") || !strcmp(path, "/chat/completions")) {
        handle_chat(S, req, 0);
        return;
    }
    if (!strcmp(path, "/v1/completions") || !strcmp(path, "/completions")) {
        handle_chat(S, req, 1);
        return;
    }
    int models = !strcmp(path, "/v1/models") || !strcmp(path, "/models");
    int model = !strncmp(path, "/v1/models/", 11) || !strncmp(path, "/models/", 8);
    if (!get && (models || model || !strcmp(path, "/health") || !strcmp(path, "/metrics"))) {
        /* a known endpoint, the wrong method: 405 with Allow (RFC 9110 §15.5.6), as JSON */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        eng_api_err(&e, 405, "invalid_request_error", NULL, "method_not_allowed",
                    "Method not allowed on %.200s; use GET or HEAD.", path);
        send_err(req, &e);
    } else if (models) {
        handle_models(S, req, NULL);
    } else if (model) {
        char *name = evhttp_uridecode(path + (path[1] == 'v' ? 11 : 8), 0, NULL);
        handle_models(S, req, name ? name : "");
        free(name);
    } else if (!strcmp(path, "/health")) {
        handle_health(S, req);
    } else if (!strcmp(path, "/metrics")) {
        handle_metrics(S, req);
    } else {
        eng_api_err(&e, 404, "invalid_request_error", NULL, "not_found", "Unknown path %.200s", path);
        send_err(req, &e);
    }
}

/* ---- libevent's memory ------------------------------------------------------ */

/* libevent 2.1 does not survive some of its own allocation failures: a
 * request object or a connection that fails half-built is freed through
 * pointers still NULL (evhttp_request_new, evhttp_connection_base_bufferevent_new:
 * SIGSEGV), and a header line it cannot copy leaves the connection waiting
 * for bytes that already came (evbuffer_readln: the request hangs until the
 * client gives up).  So its small allocations (event_set_mem_functions) do
 * not fail: one that fails is tried again a millisecond later until memory
 * is back, as the scheduler does with its events (the loop waits meanwhile).
 * A large one (a body's blocks: up to 32 MiB) fails as before; the paths
 * that make those answer the one request or close its connection.  Only
 * once the loop runs: at start-up a failure fails (serve exits 1 with a
 * message; waiting there would hang a worker that can never start). */
#define EV_MEM_WAIT_MAX (64 << 10)
static int ev_mem_wait; /* set before the loop starts; only the loop thread allocates through libevent */
static int ev_mem_wait_s = 30; /* --memory-wait: how long one allocation waits before the worker gives up */

/* The wait is bounded: memory that does not come back within --memory-wait
 * seconds will not let the loop answer anything (every answer allocates),
 * and a NULL would crash libevent, so the worker says why on stderr (write:
 * no allocation) and exits with status 3, for its supervisor to start it
 * again; its clients see their connections close (before, it waited forever
 * and so did they). */
static void *ev_mem_realloc(void *p, size_t n) {
    struct timespec t0 = {0, 0};
    for (;;) {
        void *q = p ? realloc(p, n) : malloc(n);
        if (q || !ev_mem_wait || n > EV_MEM_WAIT_MAX) return q;
        struct timespec now, ts = {0, 1000000};
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!t0.tv_sec && !t0.tv_nsec) t0 = now;
        else if (now.tv_sec - t0.tv_sec >= ev_mem_wait_s) {
            static const char msg[] = "{\"event\":\"fatal\",\"error\":\"out of memory: no memory came back within "
                                      "--memory-wait; exiting with status 3\"}\n";
            (void)!write(2, msg, sizeof msg - 1);
            _exit(3);
        }
        nanosleep(&ts, NULL);
    }
}

static void *ev_mem_malloc(size_t n) { return ev_mem_realloc(NULL, n); }

/* ---- lifecycle -------------------------------------------------------------- */

/* accept() failed, for want of file descriptors (EMFILE, ENFILE) or memory:
 * the listening socket stays readable, so libevent would try again at once,
 * forever, warning each time (a busy loop that wrote gigabytes of log within
 * minutes).  As nginx does, accepting pauses 100 ms (connections wait in the
 * backlog); one line says so, and one more when a tick passed without a
 * refusal (on_tick). */
static srv_t *accept_srv; /* the listener's own argument is the evhttp: the one server of the process */

static void on_accept_error(struct evconnlistener *l, void *arg) {
    srv_t *S = accept_srv;
    int err = EVUTIL_SOCKET_ERROR();
    if (!S->accept_err_tick)
        log_line("{\"event\":\"accept_paused\",\"error\":\"%s\"}", evutil_socket_error_to_string(err));
    S->accept_err_tick = S->ticks + 1;
    S->accept_errs++;
    struct timeval tv = {0, 100000};
    if (S->accept_ev && evtimer_add(S->accept_ev, &tv) == 0) evconnlistener_disable(l);
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg) {
    srv_t *S = arg;
    if (S->sock) evconnlistener_enable(evhttp_bound_socket_get_listener(S->sock));
}

static void on_grace(evutil_socket_t fd, short what, void *arg) {
    srv_t *S = arg;
    log_line("{\"event\":\"shutdown\",\"msg\":\"grace period over, cancelling %d requests\"}", S->n_calls);
    eng_sched_cancel_all(S->sched);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    srv_t *S = arg;
    if (S->draining) { /* second signal: cancel now */
        eng_sched_cancel_all(S->sched);
        return;
    }
    S->draining = 1;
    log_line("{\"event\":\"shutdown\",\"signal\":%d,\"in_flight\":%d}", (int)sig, S->n_calls);
    if (S->sock) {
        evhttp_del_accept_socket(S->http, S->sock);
        S->sock = NULL;
    }
    eng_sched_close(S->sched);
    if (S->n_calls == 0) {
        event_base_loopexit(S->base, NULL);
        return;
    }
    struct timeval tv = {30, 0};
    S->grace_ev = evtimer_new(S->base, on_grace, S);
    if (S->grace_ev) evtimer_add(S->grace_ev, &tv);
}

static int parse_listen(const char *s, char *host, size_t hostlen, int *port) {
    const char *colon = strrchr(s, ':');
    const char *h = "127.0.0.1", *p = s;
    size_t hl = strlen(h);
    if (colon) {
        h = s;
        hl = (size_t)(colon - s);
        p = colon + 1;
        if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
        if (hl == 0) h = "127.0.0.1", hl = strlen(h);
    }
    char *end;
    long v = strtol(p, &end, 10);
    if (*p == 0 || *end || v < 0 || v > 65535 || hl >= hostlen) return -1;
    memcpy(host, h, hl);
    host[hl] = 0;
    *port = (int)v;
    return 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: tollgate-engine serve --model DIR [--device cpu|cuda:N] [--threads N]\n"
            "         [--listen HOST:PORT] [--model-name NAME] [--max-batch N] [--max-queue N]\n"
            "         [--ctx N] [--kv-mem BYTES[K|M|G]] [--prefill-chunk N] [--decode-prefill N] [--int8]\n"
            "         [--keepalive SECONDS] [--default-max-tokens N]\n"
            "         [--max-conns N] [--max-buffered BYTES[K|M|G]] [--request-timeout SECONDS] [--idle-timeout SECONDS]\n"
            "         [--memory-wait SECONDS]\n"
            "  defaults: --listen 127.0.0.1:8500, --model-name = basename of DIR,\n"
            "            --max-batch 32 per thread (8..256), --max-queue 256,\n"
            "            --ctx = the model's max_position_embeddings (and at most what --kv-mem holds),\n"
            "            --kv-mem = a quarter of the machine's memory, --prefill-chunk 512,\n"
            "            --decode-prefill = prefill-chunk/8 (the most prompt tokens a step takes while streams decode;\n"
            "            the piece is sized so the streams' step grows at most 1.5x, at least 16 tokens),\n"
            "            --keepalive 5 (SSE comment interval while a stream waits),\n"
            "            --default-max-tokens 4096 (max_tokens of a request that gives none,\n"
            "            capped by the context left after the prompt),\n"
            "            --max-conns 512 (open connections; one more is answered 503 and closed),\n"
            "            --max-buffered 256M (request bytes being received by all connections at once;\n"
            "            the request that would pass it is answered 503), --request-timeout 60 (seconds\n"
            "            from a request's first byte to its last; 408 and the connection closed after),\n"
            "            --idle-timeout 60 (a connection waiting that long for a request is closed),\n"
            "            --memory-wait 30 (an allocation that fails is retried this long: then a request\n"
            "            being generated fails with a 500 (or an error event), and the HTTP loop, which\n"
            "            cannot answer anything without memory, exits with status 3)\n");
}

int eng_cmd_serve(int argc, char **argv) {
    const char *dir = NULL, *device = "cpu", *listen = "127.0.0.1:8500", *name = NULL;
    int threads = 0, max_batch = 0, max_queue = 256, ctx = 0, int8 = 0, keepalive = 5, prefill_chunk = 512;
    int decode_prefill = 0;
    long default_max = 4096;
    size_t kv_mem = 0, max_buffered = 256u << 20;
    int max_conns = 512, request_timeout = 60, memory_wait = 30, idle_timeout = 60;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--int8")) {
            int8 = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "serve: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        if (!strcmp(a, "--model")) dir = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--listen")) listen = v;
        else if (!strcmp(a, "--model-name")) name = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--max-batch")) max_batch = atoi(v);
        else if (!strcmp(a, "--max-queue")) max_queue = atoi(v);
        else if (!strcmp(a, "--keepalive")) keepalive = atoi(v);
        else if (!strcmp(a, "--ctx")) ctx = atoi(v);
        else if (!strcmp(a, "--prefill-chunk")) prefill_chunk = atoi(v);
        else if (!strcmp(a, "--decode-prefill")) decode_prefill = atoi(v);
        else if (!strcmp(a, "--max-conns")) max_conns = atoi(v);
        else if (!strcmp(a, "--request-timeout")) request_timeout = atoi(v);
        else if (!strcmp(a, "--memory-wait")) memory_wait = atoi(v);
        else if (!strcmp(a, "--idle-timeout")) idle_timeout = atoi(v);
        else if (!strcmp(a, "--kv-mem") || !strcmp(a, "--max-buffered")) {
            char *end;
            double x = strtod(v, &end);
            double mul = *end == 'K' || *end == 'k' ? 1024.0 : *end == 'M' || *end == 'm' ? 1048576.0
                         : *end == 'G' || *end == 'g' ? 1073741824.0 : 1.0;
            if (mul > 1) end++;
            if (!*v || *end || !(x > 0) || x * mul > 1e15) {
                fprintf(stderr, "serve: %s wants a size in bytes (suffix K, M or G), not '%s'\n", a, v);
                return 2;
            }
            if (!strcmp(a, "--kv-mem")) kv_mem = (size_t)(x * mul);
            else max_buffered = (size_t)(x * mul);
        }
        else if (!strcmp(a, "--default-max-tokens")) {
            char *end;
            default_max = strtol(v, &end, 10);
            if (!*v || *end || default_max < 1 || default_max > 1000000000) {
                fprintf(stderr, "serve: --default-max-tokens wants an integer 1..1000000000, not '%s'\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "serve: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (!dir) {
        fprintf(stderr, "serve: --model DIR is required\n");
        usage(stderr);
        return 2;
    }
    if (max_batch < 0 || max_batch > 256 || max_queue < 1 || threads < 0 || ctx < 0 || keepalive < 1 ||
        prefill_chunk < 16 || prefill_chunk > 65536 || decode_prefill < 0 || decode_prefill > prefill_chunk ||
        max_conns < 1 || request_timeout < 1 || idle_timeout < 1 || memory_wait < 1 || memory_wait > 86400) {
        fprintf(stderr, "serve: --max-batch must be 1..256, --max-queue and --keepalive >= 1, "
                        "--threads/--ctx >= 0, --prefill-chunk 16..65536, --decode-prefill 1..prefill-chunk, "
                        "--max-conns, --request-timeout and --idle-timeout >= 1, --memory-wait 1..86400\n");
        return 2;
    }
    char host[256];
    int port;
    if (parse_listen(listen, host, sizeof host, &port)) {
        fprintf(stderr, "serve: bad --listen '%s' (want HOST:PORT)\n", listen);
        return 2;
    }
    /* model name: the folder's basename */
    char namebuf[256];
    if (!name) {
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/') n--;
        size_t s = n;
        while (s > 0 && dir[s - 1] != '/') s--;
        snprintf(namebuf, sizeof namebuf, "%.*s", (int)(n - s), dir + s);
        name = namebuf;
    }

    int rc = 1;
    srv_t S;
    memset(&S, 0, sizeof S);
    S.model_name = name;
    S.keepalive_s = keepalive;
    S.started_at = (long long)time(NULL);
    char err[512], path[4096];
    signal(SIGPIPE, SIG_IGN);

    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    S.tok = tok_load(path, err, sizeof err);
    if (!S.tok) {
        fprintf(stderr, "serve: %s\n", err);
        goto out;
    }
    S.tmpl = tok_tmpl_detect(dir);
    if (S.tmpl < 0) {
        fprintf(stderr, "serve: no known chat template for %s; using DeepSeek-V3's\n", dir);
        S.tmpl = TOK_TMPL_DEEPSEEK_V3;
    }
    eng_load_opts_t lo = {.device = device, .n_threads = threads, .quant_int8 = int8, .max_seq_len = ctx,
                          .kv_bytes = kv_mem};
    S.model = eng_model_load(dir, &lo, err, sizeof err);
    if (!S.model) {
        fprintf(stderr, "serve: %s\n", err);
        goto out;
    }
    const eng_model_info_t *mi = eng_model_info(S.model);
    /* the context one request may have: the model's, and no more than the
     * whole KV budget holds (so a request that could never run is a 400) */
    eng_kv_stats_t kvs;
    eng_kv_stats(S.model, &kvs);
    long kv_tokens = (long)kvs.blocks_total * kvs.block_tokens;
    S.lim.context = kv_tokens < mi->max_seq_len ? (int)kv_tokens : mi->max_seq_len;
    if (!max_batch) { /* continuous batching sized to the machine: 32 sequences per thread */
        int nt = threads > 0 ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
        max_batch = nt * 32 < 8 ? 8 : nt * 32 > 256 ? 256 : nt * 32;
    }
    S.lim.default_max = (int)default_max;
    S.vocab_rows = mi->vocab_size;
    S.kv_bytes_per_token = mi->kv_bytes_per_token;
    /* constrained decoding: the vocabulary sorted by bytes (~50 ms, once) */
    S.vocab = eng_vocab_new(S.tok, tok_n_vocab(S.tok) < S.vocab_rows ? tok_n_vocab(S.tok) : S.vocab_rows);
    if (!S.vocab) {
        fprintf(stderr, "serve: out of memory for the vocabulary index\n");
        goto out;
    }
    S.has_tools = S.tmpl != TOK_TMPL_MIXTRAL && eng_tool_ids(S.tok, &S.tool_ids) == 0;

    event_set_mem_functions(ev_mem_malloc, ev_mem_realloc, free); /* before libevent allocates anything */
    if (evthread_use_pthreads()) {
        fprintf(stderr, "serve: libevent has no pthreads support\n");
        goto out;
    }
    S.base = event_base_new();
    S.http = S.base ? evhttp_new(S.base) : NULL;
    S.wake_ev = S.base ? event_new(S.base, -1, 0, on_wake, &S) : NULL;
    if (!S.http || !S.wake_ev) {
        fprintf(stderr, "serve: cannot set up the event loop\n");
        goto out;
    }
    /* the guard answers requests over these itself (JSON); evhttp's own limits are a backstop above them */
    tg_httpguard_opts_t go = {.max_conns = max_conns, .max_head = 64 << 10, .max_body = MAX_BODY,
                              .max_buffered = max_buffered, .request_timeout_s = request_timeout,
                              .idle_timeout_s = idle_timeout};
    S.guard = tg_httpguard_new(S.base, S.http, &go);
    if (!S.guard) {
        fprintf(stderr, "serve: cannot set up the event loop\n");
        goto out;
    }
    evhttp_set_max_body_size(S.http, 2 * MAX_BODY);
    evhttp_set_max_headers_size(S.http, 128 << 10);
    evhttp_set_timeout(S.http, 3600);
    /* every method evhttp parses reaches on_request, which answers a wrong one
     * with an OpenAI-shaped 405 (a method left out here gets evhttp's HTML 501) */
    evhttp_set_allowed_methods(S.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                           EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH |
                                           EVHTTP_REQ_TRACE);
    evhttp_set_gencb(S.http, on_request, &S);
    S.sock = evhttp_bind_socket_with_handle(S.http, host, (ev_uint16_t)port);
    if (!S.sock) {
        fprintf(stderr, "serve: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        goto out;
    }
    S.accept_ev = evtimer_new(S.base, on_accept_resume, &S);
    if (!S.accept_ev) {
        fprintf(stderr, "serve: cannot set up the event loop\n");
        goto out;
    }
    accept_srv = &S;
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(S.sock), on_accept_error);
    eng_sched_opts_t so = {.max_batch = max_batch, .max_queue = max_queue, .prefill_chunk = prefill_chunk,
                           .decode_prefill = decode_prefill, .mem_wait_ms = memory_wait * 1000};
    ev_mem_wait_s = memory_wait;
    S.sched = eng_sched_new(S.model, S.tok, &so, wake_from_sched, S.wake_ev, err, sizeof err);
    if (!S.sched) {
        fprintf(stderr, "serve: %s\n", err);
        goto out;
    }
    S.sig_int = evsignal_new(S.base, SIGINT, on_signal, &S);
    S.sig_term = evsignal_new(S.base, SIGTERM, on_signal, &S);
    S.keepalive_ev = event_new(S.base, -1, EV_PERSIST, on_tick, &S);
    struct timeval ka = {1, 0};
    if (!S.sig_int || !S.sig_term || !S.keepalive_ev || evsignal_add(S.sig_int, NULL) ||
        evsignal_add(S.sig_term, NULL) || event_add(S.keepalive_ev, &ka)) {
        fprintf(stderr, "serve: cannot install signal handlers\n");
        goto out;
    }
    log_line("{\"event\":\"listening\",\"addr\":\"%s:%d\",\"model\":\"%s\",\"context\":%d,"
             "\"max_batch\":%d,\"kv_blocks\":%d,\"kv_block_tokens\":%d,\"kv_bytes\":%zu,\"template\":%d}",
             host, port, name, S.lim.context, max_batch, kvs.blocks_total, kvs.block_tokens,
             (size_t)kvs.blocks_total * kvs.bytes_per_block, S.tmpl);
    ev_mem_wait = 1;
    event_base_dispatch(S.base);
    ev_mem_wait = 0; /* the clean-up below may fail its allocations again */
    rc = 0;
    log_line("{\"event\":\"stopped\"}");
out:
    if (S.sched) {
        eng_sched_free(S.sched); /* cancels what is left; its events are freed with it */
        /* calls still registered lost their events: free them (requests go with the http) */
        while (S.calls) {
            call_t *c = S.calls;
            S.calls = c->next;
            if (!c->gone) evhttp_connection_set_closecb(c->conn, NULL, NULL); /* evhttp_free below */
            call_free(c);
        }
    }
    if (S.sig_int) event_free(S.sig_int);
    if (S.sig_term) event_free(S.sig_term);
    if (S.keepalive_ev) event_free(S.keepalive_ev);
    if (S.grace_ev) event_free(S.grace_ev);
    if (S.accept_ev) event_free(S.accept_ev);
    if (S.http) evhttp_free(S.http);
    tg_httpguard_free(S.guard); /* after the evhttp: it lets go of the connections evhttp freed */
    if (S.wake_ev) event_free(S.wake_ev);
    if (S.base) event_base_free(S.base);
    eng_model_free(S.model);
    eng_vocab_free(S.vocab);
    tok_free(S.tok);
    return rc;
}
