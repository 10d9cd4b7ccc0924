/* eng_server.h — the worker's OpenAI-compatible HTTP API (private to
 * engine/): request validation and response/SSE building, pure functions
 * that eng_server.c's libevent adapter drives.  No I/O here. */
#ifndef ENG_SERVER_H
#define ENG_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "api.h"
#include "eng_sched.h"
#include "tg_json.h"
#include "tok.h"

/* Errors and requests are api/'s (the reader shared with the gateway). */
typedef api_err_t eng_api_err_t;
#define eng_api_err api_err
#define eng_api_err_json api_err_json

/* One tool call of the model's answer, parsed from its tool-call block. */
typedef struct {
    char *name;      /* malloc'd */
    char *arguments; /* malloc'd JSON text (as the model wrote it) */
    size_t arguments_len;
} eng_tool_call_t;

/* Parse the complete calls at the start of a DeepSeek-V3 tool-call block
 * (the bytes the model emitted from <｜tool▁calls▁begin｜> on, markers as
 * their text; the leading marker optional):
 *   <｜tool▁call▁begin｜>TYPE<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>
 * separated by optional "\n", closed by <｜tool▁calls▁end｜>.  Appends to
 * *calls (realloc'd; *n counts them) every complete call not already there
 * (the first *n are skipped, so it can be called again as the block grows).
 * Returns the number of complete calls in text, or -1 on out of memory.  A
 * call that does not have this shape ends the parse (what follows is not
 * parsed). */
int eng_tool_calls_parse(const char *text, size_t len, eng_tool_call_t **calls, size_t *n);
void eng_tool_calls_free(eng_tool_call_t *calls, size_t n);

typedef struct {
    int prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens;
} eng_usage_t;


const char *eng_finish_name(eng_finish_t f); /* "stop", "length", "tool_calls", or NULL */

/* A whole chat.completion body (malloc'd, one line).  content and reasoning
 * are content_len / reasoning_len bytes (NUL bytes are written as \u0000);
 * reasoning may be NULL; content NULL is written as null (an answer that is
 * only tool calls).  calls: n_calls tool calls, ids "call_<i>_<id>" from the
 * completion id.  logprobs: the choice's {"content":[...]} object, taken
 * over (NULL -> null). */
char *eng_resp_completion(const char *id, long long created, const char *model,
                          const char *content, size_t content_len, const char *reasoning,
                          size_t reasoning_len, const eng_tool_call_t *calls, size_t n_calls,
                          eng_finish_t finish, const eng_usage_t *u, cJSON *logprobs);

/* One choice of a chat.completion (fields as for eng_resp_completion). */
typedef struct {
    const char *content;
    size_t content_len;
    const char *reasoning;
    size_t reasoning_len;
    const eng_tool_call_t *calls;
    size_t n_calls;
    eng_finish_t finish;
    cJSON *logprobs; /* taken over */
} eng_choice_t;
/* A chat.completion with n choices (index 0..n-1; tool call ids of choice k
 * > 0 are "call_<k>_<i>_<id>"). */
char *eng_resp_completion_n(const char *id, long long created, const char *model, const eng_choice_t *ch, int n,
                            const eng_usage_t *u);

/* One chat.completion.chunk body (malloc'd, one line).  role, content,
 * reasoning: NULL to omit from delta (content and reasoning with lengths, as
 * above).  finish NONE -> null.  usage_null: add "usage":null (when the
 * client asked for include_usage).  usage: non-NULL -> "choices":[] and this
 * usage (the final usage chunk).  logprobs: taken over (NULL -> null). */
char *eng_resp_chunk(const char *id, long long created, const char *model, const char *role,
                     const char *content, size_t content_len, const char *reasoning,
                     size_t reasoning_len, eng_finish_t finish, int usage_null,
                     const eng_usage_t *usage, cJSON *logprobs);
/* The same for choice `index` (n > 1). */
char *eng_resp_chunk_at(int index, const char *id, long long created, const char *model, const char *role,
                        const char *content, size_t content_len, const char *reasoning,
                        size_t reasoning_len, eng_finish_t finish, int usage_null,
                        const eng_usage_t *usage, cJSON *logprobs);
/* A chunk whose delta is tool calls [first, first + n) of calls, each whole
 * ({"index","id","type","function":{"name","arguments"}}). */
char *eng_resp_chunk_tools(const char *id, long long created, const char *model, const eng_tool_call_t *calls,
                           size_t first, size_t n, int usage_null);
char *eng_resp_chunk_tools_at(int index, const char *id, long long created, const char *model,
                              const eng_tool_call_t *calls, size_t first, size_t n, int usage_null);

/* One logprobs "content" entry for a generated token: {"token","logprob",
 * "bytes","top_logprobs":[...]}.  Token text comes from tok_decode (special
 * tokens as their text; a token that is a partial UTF-8 character shows as
 * U+FFFD, and "bytes" are those of the shown text).  NULL on OOM. */
cJSON *eng_logprob_json(const tok_t *t, const eng_logprob_t *lp);

/* ---- POST /v1/completions (text_completion) -------------------------------- */

/* One choice of a text_completion: text (text_len bytes, NUL written as
 * \u0000), the legacy logprobs object (taken over; NULL -> null). */
typedef struct {
    const char *text;
    size_t text_len;
    eng_finish_t finish;
    cJSON *logprobs;
} eng_text_choice_t;
/* A whole text_completion body with n choices (malloc'd, one line). */
char *eng_resp_text_completion(const char *id, long long created, const char *model, const eng_text_choice_t *ch,
                               int n, const eng_usage_t *u);
/* One streamed text_completion chunk of choice `index` (text may be empty),
 * or with usage non-NULL the usage chunk ("choices":[]).  usage_null and
 * logprobs as for eng_resp_chunk_at. */
char *eng_resp_text_chunk(int index, const char *id, long long created, const char *model, const char *text,
                          size_t text_len, eng_finish_t finish, int usage_null, const eng_usage_t *usage,
                          cJSON *logprobs);
/* Append one generated token to a legacy logprobs object (OpenAI's
 * completions format: {"tokens","token_logprobs","top_logprobs","text_offset"},
 * arrays created on first use): its text (tok_decode of the id, special
 * tokens skipped as in the answer's text, so the tokens join to the text;
 * a partial UTF-8 character shows as U+FFFD), logprob, {token: logprob} of the top ones and the
 * chosen one, and *text_off, which then advances by the token text's
 * characters (code points).  0, or -1 out of memory. */
int eng_logprob_legacy_add(cJSON *obj, const tok_t *t, const eng_logprob_t *lp, long *text_off);

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
int eng_chat_max_tokens(const api_chat_req_t *r, int n_prompt, const eng_limits_t *lim, int *out,
                        eng_api_err_t *e);

/* The think mode for a rendered prompt (len bytes) of the given template kind. */
eng_think_mode_t eng_chat_think_mode(int tmpl_kind, const char *prompt, size_t len);

#endif
