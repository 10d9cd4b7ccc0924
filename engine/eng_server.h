/* eng_server.h — the worker's OpenAI-compatible HTTP API (private to
 * engine/): request validation and response/SSE building, pure functions
 * that eng_server.c's libevent adapter drives.  No I/O here. */
#ifndef ENG_SERVER_H
#define ENG_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "eng_sched.h"
#include "tg_json.h"
#include "tok.h"

/* An OpenAI-style error: HTTP status and the body's fields. */
typedef struct {
    int status;
    char message[320];
    const char *type;  /* "invalid_request_error", "server_error", ... */
    char param[48];    /* "" -> null */
    const char *code;  /* NULL -> null */
} eng_api_err_t;

/* Fill e; returns -1 so callers can `return eng_api_err(...)`. */
int eng_api_err(eng_api_err_t *e, int status, const char *type, const char *param,
                const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* {"error":{"message","type","param","code"}}; malloc'd, NULL on OOM. */
char *eng_api_err_json(const eng_api_err_t *e);

/* A validated POST /v1/chat/completions body. */
typedef struct {
    tg_json_t *root;         /* owns every string below unless noted */
    const char *model;
    tok_chat_msg_t *msgs;    /* content/arguments with lengths: may hold NUL */
    size_t n_msgs;
    tok_tool_call_t *calls;  /* storage behind msgs[].tool_calls */
    char **owned;            /* joined content parts, freed with the request */
    size_t n_owned;
    long max_tokens;         /* 0: not given */
    double temperature, top_p, presence_penalty, frequency_penalty;
    int has_seed;
    uint64_t seed;           /* exact; any integer in [-2^63, 2^64-1], negative as two's complement */
    const char *stop[ENG_MAX_STOP]; /* may hold NUL: see stop_len */
    size_t stop_len[ENG_MAX_STOP];
    int n_stop;
    int stream, include_usage;
    int logprobs, top_logprobs; /* top_logprobs 0..ENG_MAX_TOP_LOGPROBS */
} eng_chat_req_t;

/* Parse and validate; on error fills e (status 400) and returns -1, and the
 * request needs no free.  On success the caller frees with eng_chat_req_free. */
int eng_chat_req_parse(eng_chat_req_t *r, const char *body, size_t len, eng_api_err_t *e);
void eng_chat_req_free(eng_chat_req_t *r);

typedef struct {
    int prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens;
} eng_usage_t;


const char *eng_finish_name(eng_finish_t f); /* "stop", "length", or NULL */

/* A whole chat.completion body (malloc'd, one line).  content and reasoning
 * are content_len / reasoning_len bytes (NUL bytes are written as \u0000);
 * reasoning may be NULL.  logprobs: the choice's {"content":[...]} object,
 * taken over (NULL -> null). */
char *eng_resp_completion(const char *id, long long created, const char *model,
                          const char *content, size_t content_len, const char *reasoning,
                          size_t reasoning_len, eng_finish_t finish, const eng_usage_t *u,
                          cJSON *logprobs);

/* One chat.completion.chunk body (malloc'd, one line).  role, content,
 * reasoning: NULL to omit from delta (content and reasoning with lengths, as
 * above).  finish NONE -> null.  usage_null: add "usage":null (when the
 * client asked for include_usage).  usage: non-NULL -> "choices":[] and this
 * usage (the final usage chunk).  logprobs: taken over (NULL -> null). */
char *eng_resp_chunk(const char *id, long long created, const char *model, const char *role,
                     const char *content, size_t content_len, const char *reasoning,
                     size_t reasoning_len, eng_finish_t finish, int usage_null,
                     const eng_usage_t *usage, cJSON *logprobs);

/* One logprobs "content" entry for a generated token: {"token","logprob",
 * "bytes","top_logprobs":[...]}.  Token text comes from tok_decode (special
 * tokens as their text; a token that is a partial UTF-8 character shows as
 * U+FFFD, and "bytes" are those of the shown text).  NULL on OOM. */
cJSON *eng_logprob_json(const tok_t *t, const eng_logprob_t *lp);

/* Frame one SSE event: "data: <json>\n\n".  json must be one line (cJSON's
 * unformatted output is).  Returns malloc'd text and its length, NULL if the
 * payload has a newline or on OOM. */
char *eng_sse_event(const char *json, size_t *len);

/* Server-side knobs derived from the model and the request. */
typedef struct {
    int context;      /* tokens the model instance supports */
    int default_max;  /* cap for the default max_tokens (4096) */
} eng_limits_t;

/* Decide max_tokens for a prompt of n_prompt tokens; 400 context_length_exceeded
 * when the prompt leaves no room or max_tokens exceeds it. */
int eng_chat_max_tokens(const eng_chat_req_t *r, int n_prompt, const eng_limits_t *lim, int *out,
                        eng_api_err_t *e);

/* The think mode for a rendered prompt (len bytes) of the given template kind. */
eng_think_mode_t eng_chat_think_mode(int tmpl_kind, const char *prompt, size_t len);

#endif
