/* eng_server_req.c — validation of chat completion requests and building of
 * OpenAI-shaped responses, errors and SSE events.  Pure: bytes in, structs or
 * bytes out.
 *
 * Validation follows OpenAI's API: wrong types and out-of-range values are 400
 * invalid_request_error naming the parameter; unknown fields are ignored. */
#include "eng_server.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int eng_api_err(eng_api_err_t *e, int status, const char *type, const char *param,
                const char *code, const char *fmt, ...) {
    va_list ap;
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

char *eng_api_err_json(const eng_api_err_t *e) {
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    if (!o) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON_AddStringToObject(o, "type", e->type ? e->type : "invalid_request_error");
    if (e->param[0])
        cJSON_AddStringToObject(o, "param", e->param);
    else
        cJSON_AddNullToObject(o, "param");
    if (e->code)
        cJSON_AddStringToObject(o, "code", e->code);
    else
        cJSON_AddNullToObject(o, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* ---- request parsing ------------------------------------------------------ */

#define BAD(param, code, ...) \
    eng_api_err(e, 400, "invalid_request_error", param, code, __VA_ARGS__)

static const char *type_name(const tg_json_t *v) {
    tg_json_type_t t = tg_json_type(v);
    return t == TG_JSON_NONE ? "null" : tg_json_type_name(t);
}

static int is_null(const tg_json_t *v) {
    return tg_json_type(v) == TG_JSON_NONE || tg_json_type(v) == TG_JSON_NULL;
}

/* A string value that is exactly lit. */
static int str_is(const tg_json_t *v, const char *lit) {
    size_t n;
    const char *s = tg_json_str(v, &n);
    return s && n == strlen(lit) && !memcmp(s, lit, n);
}

/* A number field in [lo, hi] or null/absent (keeps *out). */
static int get_num(const tg_json_t *root, const char *name, double lo, double hi, double *out,
                   eng_api_err_t *e) {
    const tg_json_t *v = tg_json_get(root, name);
    double d;
    if (is_null(v)) return 0;
    if (tg_json_double(v, &d))
        return BAD(name, "invalid_type", "Invalid type for '%s': expected a number, but got %s.",
                   name, type_name(v));
    if (!(d >= lo && d <= hi))
        return BAD(name, "invalid_value", "Invalid '%s': %g is out of range [%g, %g].", name, d, lo, hi);
    *out = d;
    return 0;
}

/* An integer field in [lo, hi] or null/absent (*given = 0).  Integers are
 * read exactly from their text; "7.0" counts as 7 (as a double would). */
static int get_int(const tg_json_t *root, const char *name, int64_t lo, int64_t hi, int64_t *out,
                   int *given, eng_api_err_t *e) {
    const tg_json_t *v = tg_json_get(root, name);
    int64_t x;
    double d;
    *given = 0;
    if (is_null(v)) return 0;
    if (tg_json_int64(v, &x)) {
        if (tg_json_double(v, &d) || d != floor(d))
            return BAD(name, "invalid_type", "Invalid type for '%s': expected an integer, but got %s.",
                       name, tg_json_type(v) == TG_JSON_NUMBER ? "a decimal" : type_name(v));
        if (!(d >= (double)lo && d <= (double)hi)) goto range;
        x = (int64_t)d;
    }
    if (x < lo || x > hi) goto range;
    *out = x;
    *given = 1;
    return 0;
range:;
    size_t n;
    const char *t = tg_json_num_text(v, &n);
    return BAD(name, "invalid_value", "Invalid '%s': %.40s is out of range [%lld, %lld].", name, t,
               (long long)lo, (long long)hi);
}

static int get_bool(const tg_json_t *root, const char *name, int *out, eng_api_err_t *e) {
    const tg_json_t *v = tg_json_get(root, name);
    if (is_null(v)) return 0;
    if (tg_json_bool(v, out))
        return BAD(name, "invalid_type", "Invalid type for '%s': expected a boolean, but got %s.",
                   name, type_name(v));
    return 0;
}

/* seed: any integer in [-2^63, 2^64-1], read exactly.  A negative seed is
 * its two's complement (so -1 and 18446744073709551615 are the same seed). */
static int get_seed(eng_chat_req_t *r, const tg_json_t *root, eng_api_err_t *e) {
    const tg_json_t *v = tg_json_get(root, "seed");
    if (is_null(v)) return 0;
    int64_t x;
    if (!tg_json_int64(v, &x)) {
        r->seed = (uint64_t)x;
        r->has_seed = 1;
        return 0;
    }
    size_t n;
    const char *t = tg_json_num_text(v, &n);
    if (!t || strpbrk(t, ".eE"))
        return BAD("seed", "invalid_type", "Invalid type for 'seed': expected an integer, but got %s.",
                   t ? "a decimal" : type_name(v));
    /* digits only, above INT64_MAX (a negative one below INT64_MIN) */
    uint64_t u = 0;
    int over = t[0] == '-';
    for (size_t i = 0; !over && i < n; i++) {
        unsigned dgt = (unsigned)(t[i] - '0');
        if (u > (UINT64_MAX - dgt) / 10) over = 1;
        else u = u * 10 + dgt;
    }
    if (over)
        return BAD("seed", "invalid_value",
                   "Invalid 'seed': %.40s is out of range [-9223372036854775808, 18446744073709551615].", t);
    r->seed = u;
    r->has_seed = 1;
    return 0;
}

static int keep(eng_chat_req_t *r, char *s) {
    char **o = realloc(r->owned, (r->n_owned + 1) * sizeof *o);
    if (!o) {
        free(s);
        return -1;
    }
    r->owned = o;
    r->owned[r->n_owned++] = s;
    return 0;
}

/* content: a string, or an array of {type:"text", text} parts, joined with
 * no separator (as tok_chat_render_json does, so the gateway's count agrees).
 * U+0000 is text: the length goes to *len. */
static int get_content(eng_chat_req_t *r, const tg_json_t *m, size_t i, const char **out, size_t *len,
                       eng_api_err_t *e) {
    char p[48];
    snprintf(p, sizeof p, "messages[%zu].content", i);
    const tg_json_t *c = tg_json_get(m, "content");
    *out = NULL;
    *len = 0;
    if (is_null(c)) return 0;
    if (tg_json_type(c) == TG_JSON_STRING) {
        *out = tg_json_str(c, len);
        return 0;
    }
    if (tg_json_type(c) != TG_JSON_ARRAY)
        return BAD(p, "invalid_type",
                   "Invalid type for '%s': expected a string or an array of content parts, but got %s.",
                   p, type_name(c));
    size_t total = 0, k = 0, n;
    const tg_json_t *part;
    TG_JSON_FOREACH(part, c) {
        const tg_json_t *ty = tg_json_get(part, "type");
        const tg_json_t *tx = tg_json_get(part, "text");
        if (tg_json_type(part) != TG_JSON_OBJECT || tg_json_type(ty) != TG_JSON_STRING)
            return BAD(p, "invalid_type", "Invalid '%s[%zu]': expected an object with a 'type'.", p, k);
        if (!str_is(ty, "text"))
            return BAD(p, "invalid_value",
                       "Invalid '%s[%zu].type': '%.64s' is not supported by this model; only 'text'.",
                       p, k, tg_json_str(ty, NULL));
        if (!tg_json_str(tx, &n))
            return BAD(p, "invalid_type", "Invalid '%s[%zu].text': expected a string.", p, k);
        total += n;
        k++;
    }
    char *s = malloc(total + 1), *w = s;
    if (!s) return eng_api_err(e, 500, "server_error", NULL, NULL, "out of memory");
    TG_JSON_FOREACH(part, c) {
        const char *t = tg_json_str(tg_json_get(part, "text"), &n);
        memcpy(w, t, n);
        w += n;
    }
    *w = 0;
    if (keep(r, s)) return eng_api_err(e, 500, "server_error", NULL, NULL, "out of memory");
    *out = s;
    *len = total;
    return 0;
}

/* A string without U+0000 (names and ids are C strings for the template). */
static const char *cstr(const tg_json_t *v) {
    size_t n;
    const char *s = tg_json_str(v, &n);
    return s && !memchr(s, 0, n) ? s : NULL;
}

static int get_tool_calls(eng_chat_req_t *r, const tg_json_t *tc, size_t i, size_t *used,
                          tok_chat_msg_t *msg, eng_api_err_t *e) {
    char p[48];
    snprintf(p, sizeof p, "messages[%zu].tool_calls", i);
    if (is_null(tc)) return 0;
    if (tg_json_type(tc) != TG_JSON_ARRAY)
        return BAD(p, "invalid_type", "Invalid type for '%s': expected an array.", p);
    msg->tool_calls = r->calls + *used;
    const tg_json_t *c;
    size_t k = 0;
    TG_JSON_FOREACH(c, tc) {
        const tg_json_t *f = tg_json_get(c, "function");
        const tg_json_t *id = tg_json_get(c, "id");
        const tg_json_t *ty = tg_json_get(c, "type");
        const tg_json_t *name = tg_json_get(f, "name");
        const tg_json_t *args = tg_json_get(f, "arguments");
        if (tg_json_type(f) != TG_JSON_OBJECT || !cstr(name) || tg_json_type(args) != TG_JSON_STRING ||
            (!is_null(id) && !cstr(id)) || (!is_null(ty) && !cstr(ty)))
            return BAD(p, "invalid_value",
                       "Invalid '%s[%zu]': expected {\"type\":\"function\",\"function\":{\"name\","
                       "\"arguments\"}} with string name and arguments (name, id and type without "
                       "U+0000).", p, k);
        tok_tool_call_t *t = &r->calls[(*used)++];
        t->id = cstr(id) ? cstr(id) : "";
        t->type = cstr(ty); /* NULL: "function" */
        t->name = cstr(name);
        t->arguments = tg_json_str(args, &t->arguments_len);
        k++;
    }
    msg->n_tool_calls = k;
    return 0;
}

static int parse_messages(eng_chat_req_t *r, const tg_json_t *ms, eng_api_err_t *e) {
    if (!ms) return BAD("messages", "missing_required_parameter", "Missing required parameter: 'messages'.");
    if (tg_json_type(ms) != TG_JSON_ARRAY)
        return BAD("messages", "invalid_type", "Invalid type for 'messages': expected an array, but got %s.",
                   type_name(ms));
    size_t n = tg_json_len(ms), n_calls = 0;
    if (n == 0)
        return BAD("messages", "empty_array",
                   "Invalid 'messages': empty array. Expected an array with minimum length 1.");
    const tg_json_t *m;
    TG_JSON_FOREACH(m, ms) {
        const tg_json_t *tc = tg_json_get(m, "tool_calls");
        if (tg_json_type(tc) == TG_JSON_ARRAY) n_calls += tg_json_len(tc);
    }
    r->msgs = calloc(n, sizeof *r->msgs);
    r->calls = calloc(n_calls ? n_calls : 1, sizeof *r->calls);
    if (!r->msgs || !r->calls) return eng_api_err(e, 500, "server_error", NULL, NULL, "out of memory");
    size_t i = 0, used = 0;
    TG_JSON_FOREACH(m, ms) {
        char p[48];
        snprintf(p, sizeof p, "messages[%zu]", i);
        if (tg_json_type(m) != TG_JSON_OBJECT)
            return BAD(p, "invalid_type", "Invalid type for '%s': expected an object, but got %s.", p,
                       type_name(m));
        const tg_json_t *role = tg_json_get(m, "role");
        snprintf(p, sizeof p, "messages[%zu].role", i);
        if (!role) return BAD(p, "missing_required_parameter", "Missing required parameter: '%s'.", p);
        if (tg_json_type(role) != TG_JSON_STRING)
            return BAD(p, "invalid_type", "Invalid type for '%s': expected a string, but got %s.", p,
                       type_name(role));
        static const char *const roles[] = {"system", "user", "assistant", "tool", "developer"};
        const char *rs = NULL;
        for (size_t k = 0; k < sizeof roles / sizeof *roles; k++)
            if (str_is(role, roles[k])) rs = roles[k];
        if (!rs)
            return BAD(p, "invalid_value",
                       "Invalid value for '%s': '%.64s'. Supported values are: 'system', 'developer', "
                       "'user', 'assistant' and 'tool'.", p, tg_json_str(role, NULL));
        if (!strcmp(rs, "developer")) rs = "system"; /* OpenAI's newer name for system */
        tok_chat_msg_t *msg = &r->msgs[i];
        msg->role = rs;
        if (get_content(r, m, i, &msg->content, &msg->content_len, e)) return -1;
        if (!strcmp(rs, "assistant")) {
            if (get_tool_calls(r, tg_json_get(m, "tool_calls"), i, &used, msg, e)) return -1;
            if (!msg->content && !msg->n_tool_calls)
                return BAD("messages", "invalid_value",
                           "Invalid 'messages[%zu]': an assistant message needs 'content' or "
                           "'tool_calls'.", i);
        } else if (!msg->content) {
            snprintf(p, sizeof p, "messages[%zu].content", i);
            return BAD(p, "missing_required_parameter", "Missing required parameter: '%s'.", p);
        }
        i++;
    }
    r->n_msgs = n;
    return 0;
}

static int parse_stop(eng_chat_req_t *r, const tg_json_t *st, eng_api_err_t *e) {
    if (is_null(st)) return 0;
    if (tg_json_type(st) == TG_JSON_STRING) {
        r->stop[0] = tg_json_str(st, &r->stop_len[0]);
        r->n_stop = r->stop_len[0] ? 1 : 0;
        return 0;
    }
    if (tg_json_type(st) != TG_JSON_ARRAY)
        return BAD("stop", "invalid_type",
                   "Invalid type for 'stop': expected a string or an array of strings, but got %s.",
                   type_name(st));
    if (tg_json_len(st) > ENG_MAX_STOP)
        return BAD("stop", "invalid_value", "Invalid 'stop': at most %d stop sequences are allowed.",
                   ENG_MAX_STOP);
    const tg_json_t *s;
    TG_JSON_FOREACH(s, st) {
        size_t n;
        const char *t = tg_json_str(s, &n);
        if (!t)
            return BAD("stop", "invalid_type", "Invalid type for 'stop[%d]': expected a string.", r->n_stop);
        if (!n) continue;
        r->stop[r->n_stop] = t;
        r->stop_len[r->n_stop++] = n;
    }
    return 0;
}

int eng_chat_req_parse(eng_chat_req_t *r, const char *body, size_t len, eng_api_err_t *e) {
    memset(r, 0, sizeof *r);
    r->temperature = 1.0;
    r->top_p = 1.0;
    if (!tok_utf8_valid(body, len))
        return BAD(NULL, "invalid_utf8", "The request body is not valid UTF-8.");
    tg_json_err_t jerr;
    r->root = tg_json_parse(body, len, NULL, &jerr);
    if (!r->root) {
        if (jerr.msg && strstr(jerr.msg, "surrogate"))
            return BAD(NULL, "invalid_utf8", "A string in the request is not valid UTF-8: %s.", jerr.text);
        return BAD(NULL, "invalid_json",
                   "We could not parse the JSON body of your request (%s). The body must be a JSON "
                   "object.", jerr.text);
    }
    const tg_json_t *root = r->root, *v;
    if (tg_json_type(root) != TG_JSON_OBJECT) {
        BAD(NULL, "invalid_json", "The request body must be a JSON object.");
        goto fail;
    }
    v = tg_json_get(root, "model");
    if (!v) {
        BAD("model", "missing_required_parameter", "Missing required parameter: 'model'.");
        goto fail;
    }
    if (!(r->model = cstr(v))) {
        BAD("model", "invalid_type", "Invalid type for 'model': expected a string without U+0000, but got %s.",
            type_name(v));
        goto fail;
    }
    if (parse_messages(r, tg_json_get(root, "messages"), e)) goto fail;

    int64_t x;
    int given;
    if (get_int(root, "max_tokens", 1, 1000000000, &x, &given, e)) goto fail;
    if (given) r->max_tokens = (long)x;
    if (get_int(root, "max_completion_tokens", 1, 1000000000, &x, &given, e)) goto fail;
    if (given) r->max_tokens = (long)x;
    if (get_num(root, "temperature", 0, 2, &r->temperature, e)) goto fail;
    if (get_num(root, "top_p", 0, 1, &r->top_p, e)) goto fail;
    if (get_num(root, "presence_penalty", -2, 2, &r->presence_penalty, e)) goto fail;
    if (get_num(root, "frequency_penalty", -2, 2, &r->frequency_penalty, e)) goto fail;
    if (get_seed(r, root, e)) goto fail;
    if (get_int(root, "n", -1000000000, 1000000000, &x, &given, e)) goto fail;
    if (given && x != 1) {
        BAD("n", "invalid_value", "Invalid 'n': only n = 1 is supported.");
        goto fail;
    }
    if (get_bool(root, "logprobs", &r->logprobs, e)) goto fail;
    if (get_int(root, "top_logprobs", 0, ENG_MAX_TOP_LOGPROBS, &x, &given, e)) goto fail;
    if (given) {
        if (!r->logprobs) {
            BAD("top_logprobs", "invalid_value", "Invalid 'top_logprobs': it requires 'logprobs' to be true.");
            goto fail;
        }
        r->top_logprobs = (int)x;
    }
    if (parse_stop(r, tg_json_get(root, "stop"), e)) goto fail;
    if (get_bool(root, "stream", &r->stream, e)) goto fail;
    v = tg_json_get(root, "stream_options");
    if (!is_null(v)) {
        if (tg_json_type(v) != TG_JSON_OBJECT) {
            BAD("stream_options", "invalid_type", "Invalid type for 'stream_options': expected an object, but got %s.",
                type_name(v));
            goto fail;
        }
        if (get_bool(v, "include_usage", &r->include_usage, e)) {
            snprintf(e->param, sizeof e->param, "stream_options.include_usage");
            goto fail;
        }
    }
    return 0;
fail:
    eng_chat_req_free(r);
    return -1;
}

void eng_chat_req_free(eng_chat_req_t *r) {
    for (size_t i = 0; i < r->n_owned; i++) free(r->owned[i]);
    free(r->owned);
    free(r->msgs);
    free(r->calls);
    tg_json_free(r->root);
    memset(r, 0, sizeof *r);
}

int eng_chat_max_tokens(const eng_chat_req_t *r, int n_prompt, const eng_limits_t *lim, int *out,
                        eng_api_err_t *e) {
    long room = (long)lim->context - n_prompt;
    if (room < 1)
        return BAD("messages", "context_length_exceeded",
                   "This model's maximum context length is %d tokens. However, your messages resulted "
                   "in %d tokens. Please reduce the length of the messages.", lim->context, n_prompt);
    if (r->max_tokens > room)
        return BAD("max_tokens", "context_length_exceeded",
                   "This model's maximum context length is %d tokens. However, you requested %ld "
                   "tokens (%d in the messages, %ld in the completion). Please reduce the length of "
                   "the messages or completion.", lim->context, n_prompt + r->max_tokens, n_prompt,
                   r->max_tokens);
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
    default: return NULL;
    }
}

/* Responses are written as text (not through cJSON) so that generated text
 * holding NUL bytes stays whole: tg_json_write_str escapes it as \u0000. */

static void put_lit(tg_json_buf_t *b, const char *s) { tg_json_buf_put(b, s, strlen(s)); }

static void put_str(tg_json_buf_t *b, const char *s, size_t n) { tg_json_write_str(b, s, n); }

/* The usage object, DeepSeek and OpenAI fields together. */
static void put_usage(tg_json_buf_t *b, const eng_usage_t *u) {
    char t[512];
    int n = snprintf(t, sizeof t,
                     "{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%lld,"
                     "\"prompt_cache_hit_tokens\":%d,\"prompt_cache_miss_tokens\":%d,"
                     "\"prompt_tokens_details\":{\"cached_tokens\":%d},"
                     "\"completion_tokens_details\":{\"reasoning_tokens\":%d}}",
                     u->prompt_tokens, u->completion_tokens,
                     (long long)u->prompt_tokens + u->completion_tokens, u->cached_tokens,
                     u->prompt_tokens - u->cached_tokens, u->cached_tokens, u->reasoning_tokens);
    tg_json_buf_put(b, t, (size_t)n);
}

static void put_head(tg_json_buf_t *b, const char *id, long long created, const char *model,
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
static void put_choice_tail(tg_json_buf_t *b, cJSON *logprobs, eng_finish_t f) {
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

static char *buf_done(tg_json_buf_t *b) {
    if (b->oom) {
        tg_json_buf_free(b);
        return NULL;
    }
    return b->p;
}

char *eng_resp_completion(const char *id, long long created, const char *model,
                          const char *content, size_t content_len, const char *reasoning,
                          size_t reasoning_len, eng_finish_t finish, const eng_usage_t *u,
                          cJSON *logprobs) {
    tg_json_buf_t b = {0};
    put_head(&b, id, created, model, "chat.completion");
    put_lit(&b, "{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    put_str(&b, content ? content : "", content ? content_len : 0);
    if (reasoning) {
        put_lit(&b, ",\"reasoning_content\":");
        put_str(&b, reasoning, reasoning_len);
    }
    put_lit(&b, "}");
    put_choice_tail(&b, logprobs, finish);
    put_lit(&b, "],\"usage\":");
    put_usage(&b, u);
    put_lit(&b, "}");
    return buf_done(&b);
}

char *eng_resp_chunk(const char *id, long long created, const char *model, const char *role,
                     const char *content, size_t content_len, const char *reasoning,
                     size_t reasoning_len, eng_finish_t finish, int usage_null,
                     const eng_usage_t *usage, cJSON *logprobs) {
    tg_json_buf_t b = {0};
    put_head(&b, id, created, model, "chat.completion.chunk");
    if (usage) {
        cJSON_Delete(logprobs);
        put_lit(&b, "],\"usage\":");
        put_usage(&b, usage);
        put_lit(&b, "}");
        return buf_done(&b);
    }
    put_lit(&b, "{\"index\":0,\"delta\":{");
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

static cJSON *token_json(const tok_t *t, int32_t id, double logprob) {
    size_t n = 0;
    char *text = tok_decode(t, &id, 1, 0, &n);
    cJSON *o = cJSON_CreateObject(), *b = cJSON_CreateArray();
    if (!o || !b) {
        free(text);
        cJSON_Delete(o);
        cJSON_Delete(b);
        return NULL;
    }
    /* the token text as a JSON string written by length (a token may be a
     * NUL byte; cJSON would cut it), added as raw JSON */
    tg_json_buf_t q = {0};
    tg_json_write_str(&q, text ? text : "", text ? n : 0);
    if (q.oom || !cJSON_AddRawToObject(o, "token", q.p)) {
        tg_json_buf_free(&q);
        free(text);
        cJSON_Delete(o);
        cJSON_Delete(b);
        return NULL;
    }
    tg_json_buf_free(&q);
    cJSON_AddNumberToObject(o, "logprob", logprob);
    for (size_t i = 0; text && i < n; i++) cJSON_AddItemToArray(b, cJSON_CreateNumber((unsigned char)text[i]));
    cJSON_AddItemToObject(o, "bytes", b);
    free(text);
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
        if (e) cJSON_AddItemToArray(top, e);
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
