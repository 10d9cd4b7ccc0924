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

static const char *type_name(const cJSON *v) {
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsNumber(v)) return "number";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsArray(v)) return "array";
    if (cJSON_IsObject(v)) return "object";
    return "null";
}

/* A number field in [lo, hi] or null/absent (keeps *out). */
static int get_num(const cJSON *root, const char *name, double lo, double hi, double *out,
                   eng_api_err_t *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v))
        return BAD(name, "invalid_type", "Invalid type for '%s': expected a number, but got %s.",
                   name, type_name(v));
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return BAD(name, "invalid_value", "Invalid '%s': %g is out of range [%g, %g].", name,
                   v->valuedouble, lo, hi);
    *out = v->valuedouble;
    return 0;
}

/* An integer field in [lo, hi] or null/absent (*given = 0). */
static int get_int(const cJSON *root, const char *name, double lo, double hi, double *out,
                   int *given, eng_api_err_t *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    *given = 0;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return BAD(name, "invalid_type", "Invalid type for '%s': expected an integer, but got %s.",
                   name, cJSON_IsNumber(v) ? "a decimal" : type_name(v));
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return BAD(name, "invalid_value", "Invalid '%s': %.0f is out of range [%.0f, %.0f].", name,
                   v->valuedouble, lo, hi);
    *out = v->valuedouble;
    *given = 1;
    return 0;
}

static int get_bool(const cJSON *root, const char *name, int *out, eng_api_err_t *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v))
        return BAD(name, "invalid_type", "Invalid type for '%s': expected a boolean, but got %s.",
                   name, type_name(v));
    *out = cJSON_IsTrue(v);
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
 * no separator (as tok_chat_render_json does, so the gateway's count agrees). */
static int get_content(eng_chat_req_t *r, const cJSON *m, size_t i, const char **out,
                       eng_api_err_t *e) {
    char p[48];
    snprintf(p, sizeof p, "messages[%zu].content", i);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    *out = NULL;
    if (!c || cJSON_IsNull(c)) return 0;
    if (cJSON_IsString(c)) {
        *out = c->valuestring;
        return 0;
    }
    if (!cJSON_IsArray(c))
        return BAD(p, "invalid_type",
                   "Invalid type for '%s': expected a string or an array of content parts, but got %s.",
                   p, type_name(c));
    size_t total = 0, k = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(ty))
            return BAD(p, "invalid_type", "Invalid '%s[%zu]': expected an object with a 'type'.", p, k);
        if (strcmp(ty->valuestring, "text"))
            return BAD(p, "invalid_value",
                       "Invalid '%s[%zu].type': '%s' is not supported by this model; only 'text'.",
                       p, k, ty->valuestring);
        if (!cJSON_IsString(tx))
            return BAD(p, "invalid_type", "Invalid '%s[%zu].text': expected a string.", p, k);
        total += strlen(tx->valuestring);
        k++;
    }
    char *s = malloc(total + 1), *w = s;
    if (!s) return eng_api_err(e, 500, "server_error", NULL, NULL, "out of memory");
    cJSON_ArrayForEach(part, c) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t n = strlen(t);
        memcpy(w, t, n);
        w += n;
    }
    *w = 0;
    if (keep(r, s)) return eng_api_err(e, 500, "server_error", NULL, NULL, "out of memory");
    *out = s;
    return 0;
}

static int get_tool_calls(eng_chat_req_t *r, const cJSON *tc, size_t i, size_t *used,
                          tok_chat_msg_t *msg, eng_api_err_t *e) {
    char p[48];
    snprintf(p, sizeof p, "messages[%zu].tool_calls", i);
    if (!tc || cJSON_IsNull(tc)) return 0;
    if (!cJSON_IsArray(tc))
        return BAD(p, "invalid_type", "Invalid type for '%s': expected an array.", p);
    msg->tool_calls = r->calls + *used;
    const cJSON *c;
    size_t k = 0;
    cJSON_ArrayForEach(c, tc) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(f, "arguments");
        if (!cJSON_IsObject(f) || !cJSON_IsString(name) || !cJSON_IsString(args))
            return BAD(p, "invalid_value",
                       "Invalid '%s[%zu]': expected {\"type\":\"function\",\"function\":{\"name\","
                       "\"arguments\"}} with string name and arguments.", p, k);
        tok_tool_call_t *t = &r->calls[(*used)++];
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(c, "type");
        t->id = cJSON_IsString(id) ? id->valuestring : "";
        t->type = cJSON_IsString(ty) ? ty->valuestring : NULL; /* NULL: "function" */
        t->name = name->valuestring;
        t->arguments = args->valuestring;
        k++;
    }
    msg->n_tool_calls = k;
    return 0;
}

/* Nonzero when a string in the JSON text has the escape \u0000 (cJSON would
 * silently cut the string there). */
static int has_nul_escape(const char *s, size_t n) {
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') {
            in_str = !in_str;
        } else if (in_str && s[i] == '\\' && i + 1 < n) {
            if (s[i + 1] == 'u' && i + 5 < n && !memcmp(s + i + 2, "0000", 4)) return 1;
            i++; /* skip the escaped character (it may be a quote) */
        }
    }
    return 0;
}

static int utf8_tree_ok(const cJSON *v) {
    for (; v; v = v->next) {
        if (v->string && !tok_utf8_valid(v->string, strlen(v->string))) return 0;
        if (cJSON_IsString(v) && !tok_utf8_valid(v->valuestring, strlen(v->valuestring))) return 0;
        if (v->child && !utf8_tree_ok(v->child)) return 0;
    }
    return 1;
}

static int parse_messages(eng_chat_req_t *r, const cJSON *ms, eng_api_err_t *e) {
    if (!ms) return BAD("messages", "missing_required_parameter", "Missing required parameter: 'messages'.");
    if (!cJSON_IsArray(ms))
        return BAD("messages", "invalid_type", "Invalid type for 'messages': expected an array, but got %s.",
                   type_name(ms));
    size_t n = (size_t)cJSON_GetArraySize(ms), n_calls = 0;
    if (n == 0)
        return BAD("messages", "empty_array",
                   "Invalid 'messages': empty array. Expected an array with minimum length 1.");
    const cJSON *m;
    cJSON_ArrayForEach(m, ms) {
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (cJSON_IsArray(tc)) n_calls += (size_t)cJSON_GetArraySize(tc);
    }
    r->msgs = calloc(n, sizeof *r->msgs);
    r->calls = calloc(n_calls ? n_calls : 1, sizeof *r->calls);
    if (!r->msgs || !r->calls) return eng_api_err(e, 500, "server_error", NULL, NULL, "out of memory");
    size_t i = 0, used = 0;
    cJSON_ArrayForEach(m, ms) {
        char p[48];
        snprintf(p, sizeof p, "messages[%zu]", i);
        if (!cJSON_IsObject(m))
            return BAD(p, "invalid_type", "Invalid type for '%s': expected an object, but got %s.", p,
                       type_name(m));
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(p, sizeof p, "messages[%zu].role", i);
        if (!role) return BAD(p, "missing_required_parameter", "Missing required parameter: '%s'.", p);
        if (!cJSON_IsString(role))
            return BAD(p, "invalid_type", "Invalid type for '%s': expected a string, but got %s.", p,
                       type_name(role));
        const char *rs = role->valuestring;
        tok_chat_msg_t *msg = &r->msgs[i];
        if (!strcmp(rs, "developer")) rs = "system"; /* OpenAI's newer name for system */
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") && strcmp(rs, "tool"))
            return BAD(p, "invalid_value",
                       "Invalid value for '%s': '%s'. Supported values are: 'system', 'developer', "
                       "'user', 'assistant' and 'tool'.", p, role->valuestring);
        msg->role = rs;
        if (get_content(r, m, i, &msg->content, e)) return -1;
        if (!strcmp(rs, "assistant")) {
            if (get_tool_calls(r, cJSON_GetObjectItemCaseSensitive(m, "tool_calls"), i, &used, msg, e))
                return -1;
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

static int parse_stop(eng_chat_req_t *r, const cJSON *st, eng_api_err_t *e) {
    if (!st || cJSON_IsNull(st)) return 0;
    if (cJSON_IsString(st)) {
        r->stop[0] = st->valuestring;
        r->stop_len[0] = strlen(st->valuestring);
        r->n_stop = r->stop_len[0] ? 1 : 0;
        return 0;
    }
    if (!cJSON_IsArray(st))
        return BAD("stop", "invalid_type",
                   "Invalid type for 'stop': expected a string or an array of strings, but got %s.",
                   type_name(st));
    if (cJSON_GetArraySize(st) > ENG_MAX_STOP)
        return BAD("stop", "invalid_value", "Invalid 'stop': at most %d stop sequences are allowed.",
                   ENG_MAX_STOP);
    const cJSON *s;
    cJSON_ArrayForEach(s, st) {
        if (!cJSON_IsString(s))
            return BAD("stop", "invalid_type", "Invalid type for 'stop[%d]': expected a string.", r->n_stop);
        if (!s->valuestring[0]) continue;
        r->stop[r->n_stop] = s->valuestring;
        r->stop_len[r->n_stop++] = strlen(s->valuestring);
    }
    return 0;
}

int eng_chat_req_parse(eng_chat_req_t *r, const char *body, size_t len, eng_api_err_t *e) {
    memset(r, 0, sizeof *r);
    r->temperature = 1.0;
    r->top_p = 1.0;
    if (!tok_utf8_valid(body, len))
        return BAD(NULL, "invalid_utf8", "The request body is not valid UTF-8.");
    if (has_nul_escape(body, len))
        return BAD(NULL, "invalid_value", "Strings may not contain NUL characters (\\u0000).");
    r->root = cJSON_ParseWithLength(body, len);
    if (!r->root) {
        return BAD(NULL, "invalid_json",
                   "We could not parse the JSON body of your request. The body must be a JSON object.");
    }
    const cJSON *root = r->root, *v;
    if (!cJSON_IsObject(root)) {
        BAD(NULL, "invalid_json", "The request body must be a JSON object.");
        goto fail;
    }
    if (!utf8_tree_ok(root->child)) {
        BAD(NULL, "invalid_utf8", "A string in the request is not valid UTF-8 (lone surrogate?).");
        goto fail;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!v) {
        BAD("model", "missing_required_parameter", "Missing required parameter: 'model'.");
        goto fail;
    }
    if (!cJSON_IsString(v)) {
        BAD("model", "invalid_type", "Invalid type for 'model': expected a string, but got %s.", type_name(v));
        goto fail;
    }
    r->model = v->valuestring;
    if (parse_messages(r, cJSON_GetObjectItemCaseSensitive(root, "messages"), e)) goto fail;

    double d;
    int given;
    if (get_int(root, "max_tokens", 1, 1e9, &d, &given, e)) goto fail;
    if (given) r->max_tokens = (long)d;
    if (get_int(root, "max_completion_tokens", 1, 1e9, &d, &given, e)) goto fail;
    if (given) r->max_tokens = (long)d;
    if (get_num(root, "temperature", 0, 2, &r->temperature, e)) goto fail;
    if (get_num(root, "top_p", 0, 1, &r->top_p, e)) goto fail;
    if (get_num(root, "presence_penalty", -2, 2, &r->presence_penalty, e)) goto fail;
    if (get_num(root, "frequency_penalty", -2, 2, &r->frequency_penalty, e)) goto fail;
    /* seeds travel as JSON numbers (doubles): exact up to 2^53; larger ones
     * are still deterministic, by their double value */
    if (get_int(root, "seed", -9.3e18, 1.85e19, &d, &given, e)) goto fail;
    if (given) {
        r->has_seed = 1;
        r->seed = d < 0 ? (uint64_t)(int64_t)d : d >= 1.8446744073709552e19 ? UINT64_MAX : (uint64_t)d;
    }
    if (get_int(root, "n", -1e9, 1e9, &d, &given, e)) goto fail;
    if (given && d != 1) {
        BAD("n", "invalid_value", "Invalid 'n': only n = 1 is supported.");
        goto fail;
    }
    if (get_bool(root, "logprobs", &r->logprobs, e)) goto fail;
    if (get_int(root, "top_logprobs", 0, ENG_MAX_TOP_LOGPROBS, &d, &given, e)) goto fail;
    if (given) {
        if (!r->logprobs) {
            BAD("top_logprobs", "invalid_value", "Invalid 'top_logprobs': it requires 'logprobs' to be true.");
            goto fail;
        }
        r->top_logprobs = (int)d;
    }
    if (parse_stop(r, cJSON_GetObjectItemCaseSensitive(root, "stop"), e)) goto fail;
    if (get_bool(root, "stream", &r->stream, e)) goto fail;
    v = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsObject(v)) {
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
    cJSON_Delete(r->root);
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

eng_think_mode_t eng_chat_think_mode(int tmpl_kind, const char *prompt) {
    if (tmpl_kind != TOK_TMPL_DEEPSEEK_R1) return ENG_THINK_OFF;
    size_t n = strlen(prompt);
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

cJSON *eng_usage_json(const eng_usage_t *u) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u->completion_tokens);
    cJSON_AddNumberToObject(o, "total_tokens", u->prompt_tokens + u->completion_tokens);
    cJSON_AddNumberToObject(o, "prompt_cache_hit_tokens", u->cached_tokens);
    cJSON_AddNumberToObject(o, "prompt_cache_miss_tokens", u->prompt_tokens - u->cached_tokens);
    cJSON *pd = cJSON_AddObjectToObject(o, "prompt_tokens_details");
    if (pd) cJSON_AddNumberToObject(pd, "cached_tokens", u->cached_tokens);
    cJSON *cd = cJSON_AddObjectToObject(o, "completion_tokens_details");
    if (cd) cJSON_AddNumberToObject(cd, "reasoning_tokens", u->reasoning_tokens);
    return o;
}

static cJSON *resp_head(const char *id, long long created, const char *model, const char *object) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "model", model);
    cJSON_AddStringToObject(o, "system_fingerprint", "fp_tollgate");
    return o;
}

static void add_finish(cJSON *c, eng_finish_t f) {
    const char *fn = eng_finish_name(f);
    if (fn)
        cJSON_AddStringToObject(c, "finish_reason", fn);
    else
        cJSON_AddNullToObject(c, "finish_reason");
}

static char *print_free(cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

char *eng_resp_completion(const char *id, long long created, const char *model,
                          const char *content, const char *reasoning, eng_finish_t finish,
                          const eng_usage_t *u, cJSON *logprobs) {
    cJSON *o = resp_head(id, created, model, "chat.completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *m = cJSON_AddObjectToObject(c, "message");
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON_AddStringToObject(m, "content", content ? content : "");
    if (reasoning) cJSON_AddStringToObject(m, "reasoning_content", reasoning);
    if (logprobs)
        cJSON_AddItemToObject(c, "logprobs", logprobs);
    else
        cJSON_AddNullToObject(c, "logprobs");
    add_finish(c, finish);
    cJSON_AddItemToObject(o, "usage", eng_usage_json(u));
    return print_free(o);
}

char *eng_resp_chunk(const char *id, long long created, const char *model, const char *role,
                     const char *content, const char *reasoning, eng_finish_t finish,
                     int usage_null, const eng_usage_t *usage, cJSON *logprobs) {
    cJSON *o = resp_head(id, created, model, "chat.completion.chunk");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    if (usage) {
        cJSON_Delete(logprobs);
        cJSON_AddItemToObject(o, "usage", eng_usage_json(usage));
        return print_free(o);
    }
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *d = cJSON_AddObjectToObject(c, "delta");
    if (role) cJSON_AddStringToObject(d, "role", role);
    if (content) cJSON_AddStringToObject(d, "content", content);
    if (reasoning) cJSON_AddStringToObject(d, "reasoning_content", reasoning);
    if (logprobs)
        cJSON_AddItemToObject(c, "logprobs", logprobs);
    else
        cJSON_AddNullToObject(c, "logprobs");
    add_finish(c, finish);
    if (usage_null) cJSON_AddNullToObject(o, "usage");
    return print_free(o);
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
    cJSON_AddStringToObject(o, "token", text ? text : "");
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
