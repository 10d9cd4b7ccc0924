/* eng_server_req.c — the engine's side of a chat completion that does not
 * depend on the model: the max_tokens rule against the context, the think
 * mode, the tool-call block parser, and OpenAI-shaped responses and SSE
 * events.  Pure: bytes in, structs or bytes out.  Requests are read and
 * validated by api/ (the reader the gateway shares). */
#include "eng_server.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(ENG_MAX_STOP == API_MAX_STOP, "stop limits agree");
_Static_assert(ENG_MAX_TOP_LOGPROBS == API_MAX_TOP_LOGPROBS, "top_logprobs limits agree");

#define BAD(param, code, ...) api_err(e, 400, "invalid_request_error", param, code, __VA_ARGS__)

int eng_chat_max_tokens(const api_chat_req_t *r, int n_prompt, const eng_limits_t *lim, int *out,
                        eng_api_err_t *e) {
    long room = (long)lim->context - n_prompt;
    const char *what = r->cmpl ? "prompt" : "messages"; /* /v1/completions has a prompt, chat has messages */
    if (room < 1)
        return BAD(what, "context_length_exceeded",
                   "This model's maximum context length is %d tokens. However, your %s resulted "
                   "in %d tokens. Please reduce the length of the %s.", lim->context, what, n_prompt, what);
    if (r->max_tokens > room)
        return BAD("max_tokens", "context_length_exceeded",
                   "This model's maximum context length is %d tokens. However, you requested %ld "
                   "tokens (%d in the %s, %ld in the completion). Please reduce the length of "
                   "the %s or completion.", lim->context, n_prompt + r->max_tokens, n_prompt, what,
                   r->max_tokens, what);
    if (r->max_tokens > 0)
        *out = (int)r->max_tokens;
    else
        *out = (int)(room < lim->default_max ? room : lim->default_max);
    return 0;
}

eng_think_mode_t eng_chat_think_mode(int tmpl_kind, const char *prompt, size_t n) {
    if (tmpl_kind != TOK_TMPL_DEEPSEEK_R1) return ENG_THINK_OFF;
    while (n && (prompt[n - 1] == '\n' || prompt[n - 1] == ' ')) n--;
    if (n >= 7 && !memcmp(prompt + n - 7, "<think>", 7)) return ENG_THINK_IN;
    return ENG_THINK_DETECT;
}

/* ---- responses ------------------------------------------------------------ */

const char *eng_finish_name(eng_finish_t f) {
    switch (f) {
    case ENG_FINISH_STOP: return "stop";
    case ENG_FINISH_LENGTH: return "length";
    case ENG_FINISH_TOOL_CALLS: return "tool_calls";
    default: return NULL;
    }
}

/* Responses are written as text (not through cJSON) so that generated text
 * holding NUL bytes stays whole: tg_json_write_str escapes it as \u0000. */

static void put_lit(tg_buf_t *b, const char *s) { tg_buf_put(b, s, strlen(s)); }

static void put_str(tg_buf_t *b, const char *s, size_t n) { tg_json_write_str(b, s, n); }

/* The usage object, DeepSeek and OpenAI fields together. */
static void put_usage(tg_buf_t *b, const eng_usage_t *u) {
    char t[512];
    int n = snprintf(t, sizeof t,
                     "{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%lld,"
                     "\"prompt_cache_hit_tokens\":%d,\"prompt_cache_miss_tokens\":%d,"
                     "\"prompt_tokens_details\":{\"cached_tokens\":%d},"
                     "\"completion_tokens_details\":{\"reasoning_tokens\":%d}}",
                     u->prompt_tokens, u->completion_tokens,
                     (long long)u->prompt_tokens + u->completion_tokens, u->cached_tokens,
                     u->prompt_tokens - u->cached_tokens, u->cached_tokens, u->reasoning_tokens);
    tg_buf_put(b, t, (size_t)n);
}

static void put_head(tg_buf_t *b, const char *id, long long created, const char *model,
                     const char *object) {
    char t[48];
    put_lit(b, "{\"id\":");
    put_str(b, id, strlen(id));
    put_lit(b, ",\"object\":");
    put_str(b, object, strlen(object));
    snprintf(t, sizeof t, ",\"created\":%lld,\"model\":", created);
    put_lit(b, t);
    put_str(b, model, strlen(model));
    put_lit(b, ",\"system_fingerprint\":\"fp_tollgate\",\"choices\":[");
}

/* ,"logprobs":<lp or null>,"finish_reason":<name or null>} — lp freed */
static void put_choice_tail(tg_buf_t *b, cJSON *logprobs, eng_finish_t f) {
    put_lit(b, ",\"logprobs\":");
    if (logprobs) {
        char *s = cJSON_PrintUnformatted(logprobs);
        if (s) put_lit(b, s);
        else b->oom = 1;
        free(s);
        cJSON_Delete(logprobs);
    } else {
        put_lit(b, "null");
    }
    const char *fn = eng_finish_name(f);
    put_lit(b, ",\"finish_reason\":");
    if (fn) put_str(b, fn, strlen(fn));
    else put_lit(b, "null");
    put_lit(b, "}");
}

static char *buf_done(tg_buf_t *b) {
    if (b->oom) {
        tg_buf_free(b);
        return NULL;
    }
    return b->p;
}

/* One tool call: {"index"?,"id","type","function":{"name","arguments"}} of
 * choice `choice`. */
static void put_call(tg_buf_t *b, const char *id, const eng_tool_call_t *c, size_t i, int with_index,
                     int choice) {
    char t[64];
    put_lit(b, "{");
    if (with_index) {
        snprintf(t, sizeof t, "\"index\":%zu,", i);
        put_lit(b, t);
    }
    /* call ids: "call_<i>_" (choice 0) or "call_<choice>_<i>_" + the completion id without its
     * "chatcmpl-" (request ids have no '_': ids never collide) */
    tg_buf_t cid = {0};
    if (choice) snprintf(t, sizeof t, "call_%d_%zu_", choice, i);
    else snprintf(t, sizeof t, "call_%zu_", i);
    tg_buf_put(&cid, t, strlen(t));
    const char *tail = strncmp(id, "chatcmpl-", 9) ? id : id + 9;
    tg_buf_put(&cid, tail, strlen(tail));
    put_lit(b, "\"id\":");
    put_str(b, cid.p ? cid.p : "", cid.len);
    tg_buf_free(&cid);
    put_lit(b, ",\"type\":\"function\",\"function\":{\"name\":");
    put_str(b, c->name, strlen(c->name));
    put_lit(b, ",\"arguments\":");
    put_str(b, c->arguments, c->arguments_len);
    put_lit(b, "}}");
}

char *eng_resp_completion_n(const char *id, long long created, const char *model, const eng_choice_t *ch, int n,
                            const eng_usage_t *u) {
    tg_buf_t b = {0};
    put_head(&b, id, created, model, "chat.completion");
    for (int k = 0; k < n; k++) {
        const eng_choice_t *c = &ch[k];
        char t[48];
        snprintf(t, sizeof t, "%s{\"index\":%d,", k ? "," : "", k);
        put_lit(&b, t);
        put_lit(&b, "\"message\":{\"role\":\"assistant\",\"content\":");
        if (c->content) put_str(&b, c->content, c->content_len);
        else put_lit(&b, "null");
        if (c->reasoning) {
            put_lit(&b, ",\"reasoning_content\":");
            put_str(&b, c->reasoning, c->reasoning_len);
        }
        if (c->n_calls) {
            put_lit(&b, ",\"tool_calls\":[");
            for (size_t i = 0; i < c->n_calls; i++) {
                if (i) put_lit(&b, ",");
                put_call(&b, id, &c->calls[i], i, 0, k);
            }
            put_lit(&b, "]");
        }
        put_lit(&b, "}");
        put_choice_tail(&b, c->logprobs, c->finish);
    }
    put_lit(&b, "],\"usage\":");
    put_usage(&b, u);
    put_lit(&b, "}");
    return buf_done(&b);
}

char *eng_resp_completion(const char *id, long long created, const char *model,
                          const char *content, size_t content_len, const char *reasoning,
                          size_t reasoning_len, const eng_tool_call_t *calls, size_t n_calls,
                          eng_finish_t finish, const eng_usage_t *u, cJSON *logprobs) {
    eng_choice_t c = {content, content_len, reasoning, reasoning_len, calls, n_calls, finish, logprobs};
    return eng_resp_completion_n(id, created, model, &c, 1, u);
}

/* The usage-only chunk's end (empty choices, then usage) after put_head;
 * logprobs, unused there, is freed. */
static char *usage_chunk_done(tg_buf_t *b, const eng_usage_t *usage, cJSON *logprobs) {
    cJSON_Delete(logprobs);
    put_lit(b, "],\"usage\":");
    put_usage(b, usage);
    put_lit(b, "}");
    return buf_done(b);
}

char *eng_resp_chunk(const char *id, long long created, const char *model, const char *role,
                     const char *content, size_t content_len, const char *reasoning,
                     size_t reasoning_len, eng_finish_t finish, int usage_null,
                     const eng_usage_t *usage, cJSON *logprobs) {
    return eng_resp_chunk_at(0, id, created, model, role, content, content_len, reasoning, reasoning_len, finish,
                             usage_null, usage, logprobs);
}

char *eng_resp_chunk_at(int index, const char *id, long long created, const char *model, const char *role,
                        const char *content, size_t content_len, const char *reasoning,
                        size_t reasoning_len, eng_finish_t finish, int usage_null,
                        const eng_usage_t *usage, cJSON *logprobs) {
    tg_buf_t b = {0};
    put_head(&b, id, created, model, "chat.completion.chunk");
    if (usage) return usage_chunk_done(&b, usage, logprobs);
    char t[32];
    snprintf(t, sizeof t, "{\"index\":%d,", index);
    put_lit(&b, t);
    put_lit(&b, "\"delta\":{");
    const char *sep = "";
    if (role) {
        put_lit(&b, "\"role\":");
        put_str(&b, role, strlen(role));
        sep = ",";
    }
    if (content) {
        put_lit(&b, sep);
        put_lit(&b, "\"content\":");
        put_str(&b, content, content_len);
        sep = ",";
    }
    if (reasoning) {
        put_lit(&b, sep);
        put_lit(&b, "\"reasoning_content\":");
        put_str(&b, reasoning, reasoning_len);
    }
    put_lit(&b, "}");
    put_choice_tail(&b, logprobs, finish);
    put_lit(&b, "]");
    if (usage_null) put_lit(&b, ",\"usage\":null");
    put_lit(&b, "}");
    return buf_done(&b);
}

char *eng_resp_chunk_tools(const char *id, long long created, const char *model, const eng_tool_call_t *calls,
                           size_t first, size_t n, int usage_null) {
    return eng_resp_chunk_tools_at(0, id, created, model, calls, first, n, usage_null);
}

char *eng_resp_chunk_tools_at(int index, const char *id, long long created, const char *model,
                              const eng_tool_call_t *calls, size_t first, size_t n, int usage_null) {
    tg_buf_t b = {0};
    put_head(&b, id, created, model, "chat.completion.chunk");
    char t[32];
    snprintf(t, sizeof t, "{\"index\":%d,", index);
    put_lit(&b, t);
    put_lit(&b, "\"delta\":{\"tool_calls\":[");
    for (size_t i = first; i < first + n; i++) {
        if (i > first) put_lit(&b, ",");
        put_call(&b, id, &calls[i], i, 1, index);
    }
    put_lit(&b, "]}");
    put_choice_tail(&b, NULL, ENG_FINISH_NONE);
    put_lit(&b, "]");
    if (usage_null) put_lit(&b, ",\"usage\":null");
    put_lit(&b, "}");
    return buf_done(&b);
}

/* ---- text_completion (POST /v1/completions) ------------------------------------ */

/* {"text":...,"index":k,"logprobs":...,"finish_reason":...} */
static void put_text_choice(tg_buf_t *b, int index, const char *text, size_t len, cJSON *logprobs, eng_finish_t f) {
    char t[32];
    put_lit(b, "{\"text\":");
    put_str(b, text ? text : "", text ? len : 0);
    snprintf(t, sizeof t, ",\"index\":%d", index);
    put_lit(b, t);
    put_choice_tail(b, logprobs, f);
}

char *eng_resp_text_completion(const char *id, long long created, const char *model, const eng_text_choice_t *ch,
                               int n, const eng_usage_t *u) {
    tg_buf_t b = {0};
    put_head(&b, id, created, model, "text_completion");
    for (int k = 0; k < n; k++) {
        if (k) put_lit(&b, ",");
        put_text_choice(&b, k, ch[k].text, ch[k].text_len, ch[k].logprobs, ch[k].finish);
    }
    put_lit(&b, "],\"usage\":");
    put_usage(&b, u);
    put_lit(&b, "}");
    return buf_done(&b);
}

char *eng_resp_text_chunk(int index, const char *id, long long created, const char *model, const char *text,
                          size_t text_len, eng_finish_t finish, int usage_null, const eng_usage_t *usage,
                          cJSON *logprobs) {
    tg_buf_t b = {0};
    put_head(&b, id, created, model, "text_completion");
    if (usage) return usage_chunk_done(&b, usage, logprobs);
    put_text_choice(&b, index, text, text_len, logprobs, finish);
    put_lit(&b, "]");
    if (usage_null) put_lit(&b, ",\"usage\":null");
    put_lit(&b, "}");
    return buf_done(&b);
}

/* The array member `name` of obj, created when missing. */
static cJSON *lp_arr(cJSON *obj, const char *name) {
    cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, name);
    return a ? a : cJSON_AddArrayToObject(obj, name);
}

int eng_logprob_legacy_add(cJSON *obj, const tok_t *t, const eng_logprob_t *lp, long *text_off) {
    cJSON *tokens = lp_arr(obj, "tokens"), *lps = lp_arr(obj, "token_logprobs"), *tops = lp_arr(obj, "top_logprobs"),
          *offs = lp_arr(obj, "text_offset");
    cJSON *top = cJSON_CreateObject(), *off = cJSON_CreateNumber((double)*text_off),
          *lv = cJSON_CreateNumber(lp->logprob);
    /* every item is checked: an entry dropped on a failed allocation shifted
     * the token's log-probs against its tokens in an answer that came whole */
    if (!tokens || !lps || !tops || !offs || !top || !off || !lv) {
        cJSON_Delete(top);
        cJSON_Delete(off);
        cJSON_Delete(lv);
        return -1;
    }
    cJSON_AddItemToArray(tops, top);
    cJSON_AddItemToArray(offs, off);
    cJSON_AddItemToArray(lps, lv);
    /* the chosen token, then the top ones (the chosen one once: a key is
     * written once, as the SDKs read a dict) */
    for (int i = -1; i < lp->n_top; i++) {
        int32_t id = i < 0 ? lp->id : lp->top_id[i];
        double v = i < 0 ? lp->logprob : lp->top_logprob[i];
        size_t n = 0;
        /* special tokens skipped, as in the answer's text: tokens join to the text */
        char *text = tok_decode(t, &id, 1, 1, &n);
        if (!text) return -1;
        /* cJSON strings end at NUL: a NUL byte in a token shows as "?" */
        for (size_t k = 0; k < n; k++)
            if (!text[k]) text[k] = '?';
        int bad = 0;
        if (i < 0) {
            cJSON *s = cJSON_CreateString(text);
            bad = !s || !cJSON_AddItemToArray(tokens, s);
            for (size_t k = 0; k < n; k++) *text_off += ((unsigned char)text[k] & 0xC0) != 0x80;
        }
        if (!bad && !cJSON_GetObjectItemCaseSensitive(top, text)) bad = !cJSON_AddNumberToObject(top, text, v);
        free(text);
        if (bad) return -1;
    }
    return 0;
}

/* ---- the tool-call block ------------------------------------------------------ */

#define FW_BAR "\xef\xbd\x9c" /* U+FF5C */
#define LOW "\xe2\x96\x81"    /* U+2581 */
#define M_CALLS_BEGIN "<" FW_BAR "tool" LOW "calls" LOW "begin" FW_BAR ">"
#define M_CALL_BEGIN "<" FW_BAR "tool" LOW "call" LOW "begin" FW_BAR ">"
#define M_CALL_END "<" FW_BAR "tool" LOW "call" LOW "end" FW_BAR ">"
#define M_SEP "<" FW_BAR "tool" LOW "sep" FW_BAR ">"

static const char *tc_find(const char *p, const char *end, const char *lit) {
    size_t n = strlen(lit);
    for (; p && p + n <= end; p++)
        if (*p == *lit && !memcmp(p, lit, n)) return p;
    return NULL;
}

static int starts(const char *p, const char *end, const char *lit) {
    size_t n = strlen(lit);
    return p + n <= end && !memcmp(p, lit, n);
}

int eng_tool_calls_parse(const char *text, size_t len, eng_tool_call_t **calls, size_t *n) {
    const char *p = text, *end = text + len;
    size_t k = 0;
    if (starts(p, end, M_CALLS_BEGIN)) p += strlen(M_CALLS_BEGIN);
    for (;;) {
        if (starts(p, end, "\n") && k) p++;
        if (!starts(p, end, M_CALL_BEGIN)) break;
        const char *q = p + strlen(M_CALL_BEGIN);
        const char *sep = tc_find(q, end, M_SEP);
        if (!sep) break;
        const char *name = sep + strlen(M_SEP);
        const char *nl = memchr(name, '\n', (size_t)(end - name));
        if (!nl || nl == name || !starts(nl, end, "\n```json\n")) break;
        const char *args = nl + 9;
        const char *close = tc_find(args, end, "\n```" M_CALL_END);
        if (!close) break;
        if (k >= *n) { /* a new complete call */
            eng_tool_call_t *v = realloc(*calls, (k + 1) * sizeof *v);
            if (!v) return -1;
            *calls = v;
            eng_tool_call_t *c = &v[k];
            c->name = malloc((size_t)(nl - name) + 1);
            c->arguments = malloc((size_t)(close - args) + 1);
            if (!c->name || !c->arguments) {
                free(c->name), free(c->arguments);
                return -1;
            }
            memcpy(c->name, name, (size_t)(nl - name));
            c->name[nl - name] = 0;
            memcpy(c->arguments, args, (size_t)(close - args));
            c->arguments[close - args] = 0;
            c->arguments_len = (size_t)(close - args);
            *n = k + 1;
        }
        k++;
        p = close + 4 + strlen(M_CALL_END);
    }
    return (int)k;
}

void eng_tool_calls_free(eng_tool_call_t *calls, size_t n) {
    for (size_t i = 0; calls && i < n; i++) {
        free(calls[i].name);
        free(calls[i].arguments);
    }
    free(calls);
}

/* A chat log-probs entry.  A special token (the BOS, FIM markers) is "" with
 * no bytes, as the answer's text skips it (tok_stream_new(.., 1)) and the
 * legacy completions entries do: the entries' tokens join to the content
 * and their bytes to its UTF-8. */
static cJSON *token_json(const tok_t *t, int32_t id, double logprob) {
    size_t n = 0;
    char *text = tok_decode(t, &id, 1, 1, &n);
    cJSON *o = cJSON_CreateObject(), *b = cJSON_CreateArray();
    if (!text || !o || !b) { /* text: the ids are the tokenizer's, only memory can lack */
        free(text);
        cJSON_Delete(o);
        cJSON_Delete(b);
        return NULL;
    }
    /* the token text as a JSON string written by length (a token may be a
     * NUL byte; cJSON would cut it), added as raw JSON */
    tg_buf_t q = {0};
    tg_json_write_str(&q, text ? text : "", text ? n : 0);
    if (q.oom || !cJSON_AddRawToObject(o, "token", q.p)) {
        tg_buf_free(&q);
        free(text);
        cJSON_Delete(o);
        cJSON_Delete(b);
        return NULL;
    }
    tg_buf_free(&q);
    /* every item checked: one dropped on a failed allocation made an entry
     * without its logprob or with bytes missing, in an answer that came whole */
    int bad = !cJSON_AddNumberToObject(o, "logprob", logprob);
    /* bytes: the token's own, so a character split over tokens joins whole
     * (its token text shows U+FFFD for the part); none for a skipped one */
    size_t rn = 0;
    const char *raw = n ? tok_token_bytes(t, id, &rn) : NULL;
    if (!raw) raw = text, rn = n;
    for (size_t i = 0; !bad && raw && i < rn; i++) {
        cJSON *x = cJSON_CreateNumber((unsigned char)raw[i]);
        bad = !x || !cJSON_AddItemToArray(b, x);
    }
    free(text);
    if (bad || !cJSON_AddItemToObject(o, "bytes", b)) {
        cJSON_Delete(o);
        cJSON_Delete(b);
        return NULL;
    }
    return o;
}

cJSON *eng_logprob_json(const tok_t *t, const eng_logprob_t *lp) {
    cJSON *o = token_json(t, lp->id, lp->logprob);
    cJSON *top = o ? cJSON_AddArrayToObject(o, "top_logprobs") : NULL;
    if (!top) {
        cJSON_Delete(o);
        return NULL;
    }
    for (int i = 0; i < lp->n_top; i++) {
        cJSON *e = token_json(t, lp->top_id[i], lp->top_logprob[i]);
        if (!e) { /* not an entry short */
            cJSON_Delete(o);
            return NULL;
        }
        cJSON_AddItemToArray(top, e);
    }
    return o;
}

char *eng_sse_event(const char *json, size_t *len) {
    size_t n = strlen(json);
    if (memchr(json, '\n', n) || memchr(json, '\r', n)) return NULL;
    char *s = malloc(n + 9);
    if (!s) return NULL;
    memcpy(s, "data: ", 6);
    memcpy(s + 6, json, n);
    memcpy(s + 6 + n, "\n\n", 3);
    *len = n + 8;
    return s;
}
