/* api_chat.c — the one reader of OpenAI chat-completions requests (see
 * api.h).  Validation follows OpenAI's API: wrong types and out-of-range
 * values are 400 invalid_request_error naming the parameter; a top-level
 * parameter that neither OpenAI nor DeepSeek knows is 400
 * "Unrecognized request argument supplied: NAME"; one that they know but this
 * server cannot honour is 400 unsupported_parameter.  Nothing is silently
 * ignored except the identifiers listed as such in api/README.md. */
#include "api.h"
#include "api-int.h"
#include "tg_mem.h"
#include "tg_prefix.h"
#include "tg_str.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


int api_err(api_err_t *e, int status, const char *type, const char *param, const char *code,
            const char *fmt, ...) {
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

char *api_err_json(const api_err_t *e) {
    tg_buf_t b = {0};
    const char *type = e->type ? e->type : "invalid_request_error";
    tg_buf_put(&b, "{\"error\":{\"message\":", 20);
    tg_json_write_str(&b, e->message, strnlen(e->message, sizeof e->message));
    tg_buf_put(&b, ",\"type\":", 8);
    tg_json_write_str(&b, type, strlen(type));
    tg_buf_put(&b, ",\"param\":", 9);
    if (e->param[0]) tg_json_write_str(&b, e->param, strnlen(e->param, sizeof e->param));
    else tg_buf_put(&b, "null", 4);
    tg_buf_put(&b, ",\"code\":", 8);
    if (e->code) tg_json_write_str(&b, e->code, strlen(e->code));
    else tg_buf_put(&b, "null", 4);
    tg_buf_put(&b, "}}", 2);
    if (b.oom) {
        tg_buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* ---- helpers ---------------------------------------------------------------- */

#define BAD(param, code, ...) api_err(e, 400, "invalid_request_error", param, code, __VA_ARGS__)
#define OOM() api_err(e, 500, "server_error", NULL, NULL, "out of memory")

/* p = "<pre>[<i>]<post>", as snprintf(p, cap, "%s[%zu]%s", ...) writes it
 * (truncated alike): a parameter's path for its error.  Returns p. */
static char *path_at(char *p, size_t cap, const char *pre, size_t i, const char *post) {
    char t[160], d[TG_STR_I64];
    size_t a = strlen(pre), b = tg_str_i64(d, (long long)i), c = strlen(post);
    if (a + b + c + 3 > sizeof t) {
        snprintf(p, cap, "%s[%zu]%s", pre, i, post);
        return p;
    }
    memcpy(t, pre, a);
    t[a] = '[';
    memcpy(t + a + 1, d, b);
    t[a + 1 + b] = ']';
    memcpy(t + a + 2 + b, post, c + 1);
    tg_str_copy(p, cap, t);
    return p;
}

/* The path of message i's member post ("" for the message) in the local p,
 * written only for an error: BAD(MSG_AT(".role"), ..., p). */
#define MSG_AT(post) path_at(p, sizeof p, "messages", i, post)

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

/* A string without U+0000 (names and ids are C strings for the template). */
static const char *cstr(const tg_json_t *v) {
    size_t n;
    const char *s = tg_json_str(v, &n);
    return s && !memchr(s, 0, n) ? s : NULL;
}

/* A number field in [lo, hi] or null/absent (keeps *out). */
static int get_num(const tg_json_t *root, const char *name, double lo, double hi, double *out, api_err_t *e) {
    const tg_json_t *v = tg_json_get(root, name);
    double d;
    if (is_null(v)) return 0;
    if (tg_json_double(v, &d))
        return BAD(name, "invalid_type", "Invalid type for '%s': expected a number, but got %s.", name,
                   type_name(v));
    if (!(d >= lo && d <= hi))
        return BAD(name, "invalid_value", "Invalid '%s': %g is out of range [%g, %g].", name, d, lo, hi);
    *out = d;
    return 0;
}

/* An integer in [lo, hi] or null/absent (*given = 0).  Integers are read
 * exactly from their text; "7.0" counts as 7 (as a double would). */
static int get_int_v(const tg_json_t *v, const char *name, int64_t lo, int64_t hi, int64_t *out, int *given,
                     api_err_t *e) {
    int64_t x;
    double d;
    *given = 0;
    if (is_null(v)) return 0;
    if (tg_json_int64(v, &x)) {
        if (tg_json_double(v, &d) || d != floor(d))
            return BAD(name, "invalid_type", "Invalid type for '%s': expected an integer, but got %s.", name,
                       tg_json_type(v) == TG_JSON_NUMBER ? "a decimal" : type_name(v));
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

static int get_int(const tg_json_t *root, const char *name, int64_t lo, int64_t hi, int64_t *out, int *given,
                   api_err_t *e) {
    return get_int_v(tg_json_get(root, name), name, lo, hi, out, given, e);
}

static int get_bool(const tg_json_t *root, const char *name, int *out, api_err_t *e) {
    const tg_json_t *v = tg_json_get(root, name);
    if (is_null(v)) return 0;
    if (tg_json_bool(v, out))
        return BAD(name, "invalid_type", "Invalid type for '%s': expected a boolean, but got %s.", name,
                   type_name(v));
    return 0;
}

/* seed: any integer in [-2^63, 2^64-1], read exactly.  A negative seed is
 * its two's complement (so -1 and 18446744073709551615 are the same seed). */
static int get_seed(api_chat_req_t *r, const tg_json_t *root, api_err_t *e) {
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

static int keep(api_chat_req_t *r, char *s) {
    char **o = realloc(r->owned, (r->n_owned + 1) * sizeof *o);
    if (!o) {
        free(s);
        return -1;
    }
    r->owned = o;
    r->owned[r->n_owned++] = s;
    return 0;
}

/* ---- tojson ------------------------------------------------------------------- */

int api_tojson(tg_buf_t *b, const tg_json_t *v) {
    const tg_json_t *m;
    size_t n;
    const char *s;
    switch (tg_json_type(v)) {
    case TG_JSON_OBJECT:
    case TG_JSON_ARRAY: {
        int obj = tg_json_type(v) == TG_JSON_OBJECT, first = 1;
        tg_buf_put(b, obj ? "{" : "[", 1);
        TG_JSON_FOREACH(m, v) {
            if (!first) tg_buf_put(b, ", ", 2);
            first = 0;
            if (obj) {
                s = tg_json_key(m, &n);
                tg_json_write_str(b, s, n);
                tg_buf_put(b, ": ", 2);
            }
            if (api_tojson(b, m)) return -1;
        }
        tg_buf_put(b, obj ? "}" : "]", 1);
        break;
    }
    default:
        if (tg_json_write(b, v)) return -1;
    }
    return b->oom ? -1 : 0;
}

/* ---- messages ----------------------------------------------------------------- */

/* content: a string, or an array of {type:"text", text} parts, joined with
 * no separator.  U+0000 is text: the length goes to *len. */
static int get_content(api_chat_req_t *r, const tg_json_t *m, size_t i, int assistant, const char **out,
                       size_t *len, api_err_t *e) {
    char p[48];
    const tg_json_t *c = tg_json_get(m, "content");
    *out = NULL;
    *len = 0;
    if (is_null(c)) return 0;
    if (tg_json_type(c) == TG_JSON_STRING) {
        *out = tg_json_str(c, len);
        return 0;
    }
    if (tg_json_type(c) != TG_JSON_ARRAY)
        return BAD(MSG_AT(".content"), "invalid_type",
                   "Invalid type for '%s': expected a string or an array of content parts, but got %s.", p,
                   type_name(c));
    if (!tg_json_len(c))
        return BAD(MSG_AT(".content"), "empty_array",
                   "Invalid '%s': empty array. Expected an array with minimum length 1.", p);
    size_t total = 0, k = 0, n;
    const tg_json_t *part;
    TG_JSON_FOREACH(part, c) {
        const tg_json_t *ty = tg_json_get(part, "type");
        const tg_json_t *tx = tg_json_get(part, "text");
        if (tg_json_type(part) != TG_JSON_OBJECT || tg_json_type(ty) != TG_JSON_STRING)
            return BAD(MSG_AT(".content"), "invalid_type", "Invalid '%s[%zu]': expected an object with a 'type'.", p, k);
        /* an assistant's refusal part (OpenAI's, echoed back by clients) is what it said */
        int refusal = assistant && str_is(ty, "refusal");
        if (refusal) tx = tg_json_get(part, "refusal");
        if (!str_is(ty, "text") && !refusal)
            return BAD(MSG_AT(".content"), "invalid_value",
                       "Invalid '%s[%zu].type': '%.64s' is not supported by this model; only 'text'%s.", p, k,
                       tg_json_str(ty, NULL), assistant ? " and 'refusal'" : "");
        if (!tg_json_str(tx, &n))
            return BAD(MSG_AT(".content"), "invalid_type", "Invalid '%s[%zu].%s': expected a string.", p, k,
                       refusal ? "refusal" : "text");
        total += n;
        k++;
    }
    char *s = malloc(total + 1), *w = s;
    if (!s) return OOM();
    TG_JSON_FOREACH(part, c) {
        const char *t = tg_json_str(tg_json_get(part, str_is(tg_json_get(part, "type"), "refusal") ? "refusal" : "text"), &n);
        memcpy(w, t, n);
        w += n;
    }
    *w = 0;
    if (keep(r, s)) return OOM();
    *out = s;
    *len = total;
    return 0;
}

static int get_tool_calls(api_chat_req_t *r, const tg_json_t *tc, size_t i, size_t *used, tok_chat_msg_t *msg,
                          api_err_t *e) {
    char p[48];
    if (is_null(tc)) return 0;
    if (tg_json_type(tc) != TG_JSON_ARRAY)
        return BAD(MSG_AT(".tool_calls"), "invalid_type", "Invalid type for '%s': expected an array.", p);
    msg->tool_calls = r->calls + *used;
    const tg_json_t *c;
    size_t k = 0;
    TG_JSON_FOREACH(c, tc) {
        const tg_json_t *f = tg_json_get(c, "function");
        const tg_json_t *id = tg_json_get(c, "id");
        const tg_json_t *ty = tg_json_get(c, "type");
        const tg_json_t *name = tg_json_get(f, "name");
        const tg_json_t *args = tg_json_get(f, "arguments");
        int args_ok = tg_json_type(args) == TG_JSON_STRING || tg_json_type(args) == TG_JSON_OBJECT;
        if (tg_json_type(f) != TG_JSON_OBJECT || !cstr(name) || !args_ok || (!is_null(id) && !cstr(id)) ||
            (!is_null(ty) && !cstr(ty)))
            return BAD(MSG_AT(".tool_calls"), "invalid_value",
                       "Invalid '%s[%zu]': expected {\"type\":\"function\",\"function\":{\"name\","
                       "\"arguments\"}} with string name and arguments (name, id and type without "
                       "U+0000).", p, k);
        if (!is_null(ty) && !str_is(ty, "function")) { /* as OpenAI: the only kind a template renders */
            char q[64];
            path_at(q, sizeof q, MSG_AT(".tool_calls"), k, ".type");
            return BAD(q, "invalid_value", "Invalid value for '%s': '%.64s'. Supported values are: 'function'.", q,
                       cstr(ty));
        }
        tok_tool_call_t *t = &r->calls[(*used)++];
        t->id = cstr(id) ? cstr(id) : "";
        t->type = cstr(ty); /* NULL: "function" */
        t->name = cstr(name);
        if (tg_json_type(args) == TG_JSON_STRING) {
            t->arguments = tg_json_str(args, &t->arguments_len);
        } else { /* an object: its compact JSON text */
            tg_buf_t b = {0};
            if (tg_json_write(&b, args) || keep(r, b.p)) {
                tg_buf_free(&b);
                return OOM();
            }
            t->arguments = b.p;
            t->arguments_len = b.len;
        }
        k++;
    }
    msg->n_tool_calls = k;
    return 0;
}

/* Members a message may have (OpenAI's and DeepSeek's); anything else is 400.
 * 2: known to OpenAI (an assistant message's deprecated function_call, its
 * audio), not served here: null is accepted, as clients echo it, a value is
 * 400 unsupported_parameter. */
static int msg_key_known(const char *k, size_t n) {
    static const char *const keys[] = {"role", "content", "name", "tool_calls", "tool_call_id",
                                       "reasoning_content", "refusal", "prefix"};
    static const char *const unsupported[] = {"function_call", "audio"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (n == strlen(keys[i]) && !memcmp(k, keys[i], n)) return 1;
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        if (n == strlen(unsupported[i]) && !memcmp(k, unsupported[i], n)) return 2;
    return 0;
}

static int parse_messages(api_chat_req_t *r, const tg_json_t *ms, api_err_t *e) {
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
    r->msgs = tg_zalloc_n(n, sizeof *r->msgs); /* per request: not calloc (tg_mem.h) */
    r->calls = tg_zalloc_n(n_calls ? n_calls : 1, sizeof *r->calls);
    if (!r->msgs || !r->calls) return OOM();
    size_t i = 0, used = 0;
    TG_JSON_FOREACH(m, ms) {
        char p[48];
        if (tg_json_type(m) != TG_JSON_OBJECT)
            return BAD(MSG_AT(""), "invalid_type", "Invalid type for '%s': expected an object, but got %s.", p,
                       type_name(m));
        const tg_json_t *k;
        TG_JSON_FOREACH(k, m) {
            size_t kl;
            const char *ks = tg_json_key(k, &kl);
            int known = msg_key_known(ks, kl);
            if (!known)
                return BAD(MSG_AT(""), "unknown_parameter", "Unrecognized message argument supplied: %s.%.*s", p,
                           (int)(kl > 64 ? 64 : kl), ks);
            if (known == 2 && !is_null(k)) {
                char q[64];
                snprintf(q, sizeof q, "%s.%.*s", MSG_AT(""), (int)kl, ks);
                return BAD(q, "unsupported_parameter", "Unsupported parameter: '%s' is not supported by this server.",
                           q);
            }
        }
        const tg_json_t *role = tg_json_get(m, "role");
        if (!role) return BAD(MSG_AT(".role"), "missing_required_parameter", "Missing required parameter: '%s'.", p);
        if (tg_json_type(role) != TG_JSON_STRING)
            return BAD(MSG_AT(".role"), "invalid_type", "Invalid type for '%s': expected a string, but got %s.", p,
                       type_name(role));
        static const char *const roles[] = {"system", "user", "assistant", "tool", "developer"};
        const char *rs = NULL;
        for (size_t q = 0; q < sizeof roles / sizeof *roles; q++)
            if (str_is(role, roles[q])) rs = roles[q];
        if (!rs)
            return BAD(MSG_AT(".role"), "invalid_value",
                       "Invalid value for '%s': '%.64s'. Supported values are: 'system', 'developer', "
                       "'user', 'assistant' and 'tool'.", p, tg_json_str(role, NULL));
        if (!strcmp(rs, "developer")) rs = "system"; /* OpenAI's newer name for system */
        /* DeepSeek's chat prefix completion: the last message, an assistant's
         * text, is the start of the answer (api_chat_render) */
        const tg_json_t *pre = tg_json_get(m, "prefix");
        int prefix = 0;
        if (!is_null(pre) && tg_json_bool(pre, &prefix))
            return BAD(MSG_AT(".prefix"), "invalid_type", "Invalid type for '%s': expected a boolean, but got %s.", p,
                       type_name(pre));
        if (prefix && (i + 1 != n || strcmp(rs, "assistant") || !is_null(tg_json_get(m, "tool_calls")) ||
                       tg_json_type(tg_json_get(m, "content")) != TG_JSON_STRING))
            return BAD(MSG_AT(".prefix"), "invalid_value",
                       "Invalid '%s': only the last message may be a prefix, an assistant's with its text as a "
                       "string 'content' and no 'tool_calls'.", p);
        r->prefix = prefix;
        tok_chat_msg_t *msg = &r->msgs[i];
        msg->role = rs;
        if (get_content(r, m, i, !strcmp(rs, "assistant"), &msg->content, &msg->content_len, e)) return -1;
        if (!strcmp(rs, "assistant")) {
            if (get_tool_calls(r, tg_json_get(m, "tool_calls"), i, &used, msg, e)) return -1;
            if (!msg->content && !msg->n_tool_calls)
                return BAD(MSG_AT(".content"), "missing_required_parameter",
                           "Missing required parameter: '%s' (an assistant message needs 'content' or "
                           "'tool_calls').", p);
        } else if (!msg->content) {
            return BAD(MSG_AT(".content"), "missing_required_parameter", "Missing required parameter: '%s'.", p);
        }
        if (!strcmp(rs, "tool")) { /* the call it answers (OpenAI and DeepSeek require it; templates do not show it) */
            const tg_json_t *id = tg_json_get(m, "tool_call_id");
            if (is_null(id))
                return BAD(MSG_AT(".tool_call_id"), "missing_required_parameter", "Missing required parameter: '%s'.", p);
            if (tg_json_type(id) != TG_JSON_STRING)
                return BAD(MSG_AT(".tool_call_id"), "invalid_type", "Invalid type for '%s': expected a string, but got %s.", p,
                           type_name(id));
        }
        i++;
    }
    r->n_msgs = n;
    return 0;
}

/* ---- parameters ----------------------------------------------------------------- */

static int parse_stop(api_chat_req_t *r, const tg_json_t *st, api_err_t *e) {
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
    if (tg_json_len(st) > API_MAX_STOP)
        return BAD("stop", "invalid_value", "Invalid 'stop': at most %d stop sequences are allowed.", API_MAX_STOP);
    const tg_json_t *s;
    int k = 0;
    TG_JSON_FOREACH(s, st) {
        size_t n;
        const char *t = tg_json_str(s, &n);
        if (!t) return BAD("stop", "invalid_type", "Invalid type for 'stop[%d]': expected a string.", k);
        k++;
        if (!n) continue;
        r->stop[r->n_stop] = t;
        r->stop_len[r->n_stop++] = n;
    }
    return 0;
}

/* A function name as OpenAI allows it: [A-Za-z0-9_-]{1,64}. */
static int name_ok(const char *s, size_t n) {
    if (!s || n < 1 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Tool i's parameters when it is strict (absent: no arguments, so {}),
 * compiled under strict mode's rules into r->tool_schema.  0 or -1. */
static int parse_tool_schema(api_chat_req_t *r, size_t i, const tg_json_t *pa, api_err_t *e) {
    static const char NONE[] = "{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}";
    char p[48];
    path_at(p, sizeof p, "tools", i, ".function.parameters");
    tg_json_t *doc = NULL;
    if (is_null(pa) && !(pa = doc = tg_json_parse(NONE, sizeof NONE - 1, NULL, NULL))) return OOM();
    api_schema_t sc;
    int rc = api_schema_compile_as(&sc, pa, p, API_SCHEMA_STRICT, e);
    tg_json_free(doc);
    if (rc) return -1;
    if (r->tool_schema.n_nodes + sc.n_nodes > API_TOOLS_MAX_NODES ||
        r->tool_schema.n_lits + sc.n_lits > API_TOOLS_MAX_LITS) {
        api_schema_free(&sc);
        return BAD(p, "invalid_value",
                   "Invalid '%s': the strict tools' schemas hold more than %d schemas or %d enum values in all.", p,
                   API_TOOLS_MAX_NODES, API_TOOLS_MAX_LITS);
    }
    int root = api_schema_append(&r->tool_schema, &sc);
    api_schema_free(&sc);
    if (root < 0) return OOM();
    r->tools[i].root = root;
    return 0;
}

static int parse_tools(api_chat_req_t *r, const tg_json_t *tools, api_err_t *e) {
    if (is_null(tools)) return 0;
    if (tg_json_type(tools) != TG_JSON_ARRAY)
        return BAD("tools", "invalid_type", "Invalid type for 'tools': expected an array, but got %s.",
                   type_name(tools));
    size_t n = tg_json_len(tools);
    if (n > API_MAX_TOOLS)
        return BAD("tools", "invalid_value", "Invalid 'tools': at most %d tools are allowed.", API_MAX_TOOLS);
    if (!n) return 0;
    if (!(r->tools = calloc(n, sizeof *r->tools))) return OOM();
    const tg_json_t *t;
    TG_JSON_FOREACH(t, tools) {
        char p[48];
        size_t i = r->n_tools;
        path_at(p, sizeof p, "tools", i, "");
        if (tg_json_type(t) != TG_JSON_OBJECT)
            return BAD(p, "invalid_type", "Invalid type for '%s': expected an object, but got %s.", p, type_name(t));
        const tg_json_t *k;
        TG_JSON_FOREACH(k, t) {
            size_t kl;
            const char *ks = tg_json_key(k, &kl);
            if (!(kl == 4 && !memcmp(ks, "type", 4)) && !(kl == 8 && !memcmp(ks, "function", 8)))
                return BAD(p, "unknown_parameter", "Unrecognized argument supplied: %s.%.*s", p,
                           (int)(kl > 64 ? 64 : kl), ks);
        }
        if (!str_is(tg_json_get(t, "type"), "function")) {
            path_at(p, sizeof p, "tools", i, ".type");
            return BAD(p, "invalid_value", "Invalid value for '%s': only 'function' tools are supported.", p);
        }
        const tg_json_t *f = tg_json_get(t, "function");
        path_at(p, sizeof p, "tools", i, ".function");
        if (tg_json_type(f) != TG_JSON_OBJECT)
            return BAD(p, "missing_required_parameter", "Missing required parameter: '%s' (an object).", p);
        TG_JSON_FOREACH(k, f) {
            size_t kl;
            const char *ks = tg_json_key(k, &kl);
            static const char *const fk[] = {"name", "description", "parameters", "strict"};
            int known = 0;
            for (size_t q = 0; q < 4; q++) known |= kl == strlen(fk[q]) && !memcmp(ks, fk[q], kl);
            if (!known)
                return BAD(p, "unknown_parameter", "Unrecognized argument supplied: %s.%.*s", p,
                           (int)(kl > 64 ? 64 : kl), ks);
        }
        size_t nl;
        const char *name = tg_json_str(tg_json_get(f, "name"), &nl);
        path_at(p, sizeof p, "tools", i, ".function.name");
        if (!name_ok(name, nl))
            return BAD(p, "invalid_value",
                       "Invalid '%s': a function name is 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'.", p);
        for (size_t q = 0; q < i; q++)
            if (r->tools[q].name_len == nl && !memcmp(r->tools[q].name, name, nl))
                return BAD(p, "invalid_value", "Invalid '%s': the function name '%s' is given twice.", p, name);
        const tg_json_t *d = tg_json_get(f, "description");
        if (!is_null(d) && tg_json_type(d) != TG_JSON_STRING) {
            path_at(p, sizeof p, "tools", i, ".function.description");
            return BAD(p, "invalid_type", "Invalid type for '%s': expected a string.", p);
        }
        const tg_json_t *pa = tg_json_get(f, "parameters");
        if (!is_null(pa) && tg_json_type(pa) != TG_JSON_OBJECT) {
            path_at(p, sizeof p, "tools", i, ".function.parameters");
            return BAD(p, "invalid_type", "Invalid type for '%s': expected a JSON Schema object.", p);
        }
        const tg_json_t *st = tg_json_get(f, "strict");
        int sv;
        if (!is_null(st) && tg_json_bool(st, &sv)) {
            path_at(p, sizeof p, "tools", i, ".function.strict");
            return BAD(p, "invalid_type", "Invalid type for '%s': expected a boolean.", p);
        }
        tg_buf_t b = {0};
        if (api_tojson(&b, t)) {
            tg_buf_free(&b);
            return OOM();
        }
        r->tools[i].name = name;
        r->tools[i].name_len = nl;
        r->tools[i].json = b.p;
        r->tools[i].json_len = b.len;
        r->tools[i].strict = !is_null(st) && sv;
        r->tools[i].root = -1;
        r->n_tools++;
        if (r->tools[i].strict && parse_tool_schema(r, i, pa, e)) return -1;
    }
    return 0;
}

static int parse_tool_choice(api_chat_req_t *r, const tg_json_t *tc, api_err_t *e) {
    r->tool_choice = r->n_tools ? API_TOOL_CHOICE_AUTO : API_TOOL_CHOICE_NONE;
    if (is_null(tc)) return 0;
    if (tg_json_type(tc) == TG_JSON_STRING) {
        if (str_is(tc, "none")) r->tool_choice = API_TOOL_CHOICE_NONE;
        else if (str_is(tc, "auto")) r->tool_choice = API_TOOL_CHOICE_AUTO;
        else if (str_is(tc, "required")) r->tool_choice = API_TOOL_CHOICE_REQUIRED;
        else
            return BAD("tool_choice", "invalid_value",
                       "Invalid value for 'tool_choice': '%.64s'. Supported values are: 'none', 'auto' and "
                       "'required', or {\"type\":\"function\",\"function\":{\"name\":...}}.", tg_json_str(tc, NULL));
    } else if (tg_json_type(tc) == TG_JSON_OBJECT) {
        size_t nl;
        const char *name = tg_json_str(tg_json_get(tg_json_get(tc, "function"), "name"), &nl);
        if (!str_is(tg_json_get(tc, "type"), "function") || !name)
            return BAD("tool_choice", "invalid_value",
                       "Invalid 'tool_choice': expected {\"type\":\"function\",\"function\":{\"name\":...}}.");
        r->tool_choice = API_TOOL_CHOICE_NAMED;
        r->tool_named = -1;
        for (size_t i = 0; i < r->n_tools; i++)
            if (r->tools[i].name_len == nl && !memcmp(r->tools[i].name, name, nl)) r->tool_named = (int)i;
        if (r->tool_named < 0)
            return BAD("tool_choice", "invalid_value",
                       "Invalid 'tool_choice': no function named '%.64s' in 'tools'.",
                       memchr(name, 0, nl) ? "?" : name);
    } else {
        return BAD("tool_choice", "invalid_type",
                   "Invalid type for 'tool_choice': expected a string or an object, but got %s.", type_name(tc));
    }
    if (r->tool_choice != API_TOOL_CHOICE_NONE && !r->n_tools)
        return BAD("tool_choice", "invalid_value",
                   "Invalid 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.");
    return 0;
}

/* ---- response_format json_schema ------------------------------------------
 * api_schema_compile walks the schema once, depth first, and writes a node
 * per (sub)schema.  Keywords: type (a name or a list), properties, required,
 * items (one schema), prefixItems (a tuple; draft 7's items array and
 * additionalItems alike), enum, const, additionalProperties (a boolean, or
 * the schema of members other than the properties), the
 * bounds, multipleOf, format (and zod's patterns beside them), and the
 * annotations title, description, default, examples, $schema, $id, $comment;
 * "$ref" to "#/$defs/NAME" (or "#/definitions/NAME") is compiled in place
 * (a recursive one is refused), "allOf" of one schema is that schema, and
 * "anyOf"/"oneOf" of schemas whose types do not overlap (Pydantic's and zod's
 * optional fields: a type and null) is one node with the union of the types
 * (enum values and null/boolean merge into one enum).
 * Any other keyword is collected (its name and where it first appears) and
 * refused by name: a keyword the grammar would not enforce is never accepted
 * silently. */

typedef struct {
    api_schema_t *sc;
    tg_buf_t arena;
    int cap_nodes, cap_props, cap_lits;
    char bad[160];       /* unsupported keywords seen, "'a', 'b'" */
    int n_bad;
    char bad_at[96];     /* where the first one is */
    int oom;
    const tg_json_t *root;                          /* for "$ref": "#/$defs/NAME" */
    const tg_json_t *refs[API_SCHEMA_MAX_DEPTH + 2]; /* the $ref targets being compiled (recursion) */
    int n_refs;
    const char *param;   /* the parameter errors name: "response_format.json_schema.schema", ... */
    int strict;          /* API_SCHEMA_STRICT: OpenAI's strict-mode rules on top (see api_schema_compile_as) */
} sc_ctx_t;

static const char *const SC_ANNOT[] = {"title", "description", "default", "examples", "$schema", "$id", "$comment"};

static int sc_grow(void **p, int *cap, int n, size_t el) {
    if (n < *cap) return 0;
    int nc = *cap ? *cap * 2 : 16;
    void *q = realloc(*p, (size_t)nc * el);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

/* Put JSON text into the arena: its offset, or -1 out of memory. */
static long sc_put(sc_ctx_t *c, const char *s, size_t n) {
    size_t off = c->arena.len;
    if (tg_buf_put(&c->arena, s, n)) return -1;
    return (long)off;
}

static void sc_bad(sc_ctx_t *c, const char *kw, size_t n, const char *path) {
    if (!c->n_bad) snprintf(c->bad_at, sizeof c->bad_at, "%s", *path ? path : "the root");
    char q[48];
    snprintf(q, sizeof q, "'%.*s'", (int)(n > 40 ? 40 : n), kw);
    if (strstr(c->bad, q)) return; /* each named once */
    size_t l = strlen(c->bad);
    if (l + strlen(q) + 3 < sizeof c->bad) snprintf(c->bad + l, sizeof c->bad - l, "%s%s", l ? ", " : "", q);
    c->n_bad++;
}

/* A 400 invalid_value naming c->param: "Invalid 'PARAM': " and the message. */
static int sc_err(const sc_ctx_t *c, api_err_t *e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int sc_err(const sc_ctx_t *c, api_err_t *e, const char *fmt, ...) {
    char m[sizeof e->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return BAD(c->param, "invalid_value", "Invalid '%s': %s", c->param, m);
}
#define SC_BAD(...) sc_err(c, e, __VA_ARGS__)

static int sc_type_bit(const tg_json_t *t) {
    static const struct { const char *n; int bit; } T[] = {
        {"null", API_ST_NULL}, {"boolean", API_ST_BOOL}, {"integer", API_ST_INT}, {"number", API_ST_NUM},
        {"string", API_ST_STR}, {"array", API_ST_ARR},   {"object", API_ST_OBJ},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (str_is(t, T[i].n)) return T[i].bit;
    return 0;
}

int32_t api_schema_elems_len(const api_schema_t *sc, int n, int i0, int count) {
    const api_schema_node_t *nd = &sc->nodes[n];
    int64_t t = 0;
    int i = i0;
    for (; i < count && i < nd->n_tup; i++) { /* the tuple's elements, each its own */
        int e = api_schema_elem(sc, n, i);
        t += (i ? 1 : 0) + sc->nodes[e].min_len;
    }
    if (i < count) { /* then items: the same for each */
        int64_t im = nd->items >= 0 ? sc->nodes[nd->items].min_len : 1;
        t += (int64_t)(count - i) * (1 + im) - (i == 0);
    }
    return t > API_SCHEMA_LEN_MAX ? API_SCHEMA_LEN_MAX : (int32_t)t;
}

/* Shortest valid value of a node, in bytes (at most API_SCHEMA_LEN_MAX). */
static int32_t sc_min_len(const api_schema_t *sc, int ni) {
    const api_schema_node_t *n = &sc->nodes[ni];
    if (n->n_enum > 0) {
        int32_t m = INT32_MAX;
        for (int i = 0; i < n->n_enum; i++)
            if ((int32_t)sc->lits[n->lit0 + i].len < m) m = (int32_t)sc->lits[n->lit0 + i].len;
        return m;
    }
    int64_t m = INT64_MAX;
    if (n->types & (API_ST_INT | API_ST_NUM)) {
        api_num_t start = {0};
        m = api_num_bounded(n) ? api_num_cost(n, &start) : 1;
    }
    if (n->types & API_ST_STR) {
        api_fmt_t f;
        api_fmt_init(n->sfmt, &f);
        int64_t l = 2 + (n->sfmt ? api_fmt_rest(n->sfmt, &f) : n->min_chars);
        if (l < m) m = l;
    }
    if (n->types & API_ST_ARR) { /* "[" the elements "]": minItems of the cheapest, commas between */
        int64_t a = 2 + (int64_t)api_schema_elems_len(sc, ni, 0, n->min_items);
        if (a < m) m = a;
    }
    if ((n->types & (API_ST_NULL | API_ST_BOOL)) && m > 4) m = 4;
    if (n->types & API_ST_OBJ) {
        int64_t o = 2, k = 0;
        for (int i = 0; i < n->n_props; i++) {
            const api_schema_prop_t *p = &sc->props[n->prop0 + i];
            if (!p->required) continue;
            o += (k++ ? 1 : 0) + (int64_t)p->len + 1 + sc->nodes[p->node].min_len;
        }
        if (o < m) m = o;
    }
    return m > API_SCHEMA_LEN_MAX ? API_SCHEMA_LEN_MAX : (int32_t)m;
}

static int sc_node(sc_ctx_t *c, const tg_json_t *v, int parent, int pidx, int depth, char *path, size_t pl,
                   api_err_t *e);

/* The bounds keywords, each enforced by the grammar: numbers (api_num.c),
 * elements of arrays, characters of strings. */
enum { SC_MIN, SC_MAX, SC_XMIN, SC_XMAX, SC_MIN_ITEMS, SC_MAX_ITEMS, SC_MIN_LEN, SC_MAX_LEN, SC_N_BOUNDS };
static const char *const SC_BOUNDS[SC_N_BOUNDS] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                                                   "minItems", "maxItems", "minLength", "maxLength"};

static int sc_bound_kw(const char *k, size_t kl) {
    for (int i = 0; i < SC_N_BOUNDS; i++)
        if (kl == strlen(SC_BOUNDS[i]) && !memcmp(k, SC_BOUNDS[i], kl)) return i;
    return -1;
}

/* zod v4's patterns beside its formats (z.toJSONSchema, as openai-node's zodResponseFormat sends them) */
#define ZOD_DATE "^(?:(?:\\d\\d[2468][048]|\\d\\d[13579][26]|\\d\\d0[48]|[02468][048]00|[13579][26]00)-02-29|\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|(?:02)-(?:0[1-9]|1\\d|2[0-8])))$"
#define ZOD_DATETIME "^(?:(?:\\d\\d[2468][048]|\\d\\d[13579][26]|\\d\\d0[48]|[02468][048]00|[13579][26]00)-02-29|\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|(?:02)-(?:0[1-9]|1\\d|2[0-8])))T(?:(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d+)?(?:Z))$"
#define ZOD_DATETIME_OFFSET "^(?:(?:\\d\\d[2468][048]|\\d\\d[13579][26]|\\d\\d0[48]|[02468][048]00|[13579][26]00)-02-29|\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|(?:02)-(?:0[1-9]|1\\d|2[0-8])))T(?:(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d+)?(?:Z|([+-](?:[01]\\d|2[0-3]):[0-5]\\d)))$"
#define ZOD_UUID "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$"

/* zod v4 (4.6.7) beside format email, hostname, ipv4, ipv6, duration; z.iso.time() (no format) */
#define ZOD_TIME "^(?:[01]\\d|2[0-3]):[0-5]\\d(?::[0-5]\\d(?:\\.\\d+)?)?$"
#define ZOD_TIME_S "^(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d$"
#define ZOD_HHMM "^(?:[01]\\d|2[0-3]):[0-5]\\d$"
#define ZOD_EMAIL "^(?:[A-Za-z0-9_'+\\-]+\\.)*[A-Za-z0-9_'+\\-]*[A-Za-z0-9_+-]@(?:[A-Za-z0-9][A-Za-z0-9\\-]*\\.)+[A-Za-z]{2,}$"
#define ZOD_HOSTNAME "^(?=.{1,253}\\.?$)[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\\.[a-zA-Z0-9](?:[-0-9a-zA-Z]{0,61}[0-9a-zA-Z])?)*\\.?$"
#define ZOD_IPV4 "^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])$"
#define ZOD_IPV6 "^(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:((:[0-9a-fA-F]{1,4}){1,6})|:((:[0-9a-fA-F]{1,4}){1,7}|:))$"
#define ZOD_DURATION "^P(?:(\\d+W)|(?!.*W)(?=\\d|T\\d)(\\d+Y)?(\\d+M)?(\\d+D)?(T(?=\\d)(\\d+H)?(\\d+M)?(\\d+([.,]\\d+)?S)?)?)$"

typedef __int128 sc_i128;

/* A JSON number's source text as D * 10^X (D the significant digits, at most
 * 36 of them, no trailing zeros): 0, or -1 (too many digits). */
static int sc_dec(const char *t, int *neg, sc_i128 *D, long *X) {
    *neg = *t == '-';
    t += *neg;
    char dg[64];
    int nd = 0, nfrac = 0, frac = 0;
    long ex = 0;
    for (; *t && *t != 'e' && *t != 'E'; t++) {
        if (*t == '.') {
            frac = 1;
            continue;
        }
        if (!nd && *t == '0') { /* leading zeros */
            nfrac += frac;
            continue;
        }
        if (nd >= 36) return -1;
        dg[nd++] = *t;
        nfrac += frac;
    }
    if (*t) ex = strtol(t + 1, NULL, 10); /* saturates at LONG_MIN/MAX: far beyond any bound */
    long x = ex > 100000 ? 100000 : ex < -100000 ? -100000 : ex;
    x -= nfrac;
    while (nd && dg[nd - 1] == '0') nd--, x++;
    *D = 0;
    for (int i = 0; i < nd; i++) *D = *D * 10 + (dg[i] - '0');
    *X = nd ? x : 0;
    return 0;
}

/* value D * 10^X (sign neg) in units of 10^-F, rounded inwards (up for a
 * lower bound, down for an upper one); *inexact when it moved. */
static sc_i128 sc_scaled(int neg, sc_i128 D, long X, int F, int upper, int *inexact) {
    const sc_i128 INF = (sc_i128)1 << 100;
    long p = X + F;
    sc_i128 q = D, r = 0;
    *inexact = 0;
    if (p >= 0) {
        for (long i = 0; i < p && q; i++)
            if ((q *= 10) > INF) {
                q = INF;
                break;
            }
    } else if (p < -36) {
        q = 0, r = D;
    } else {
        sc_i128 d = 1;
        for (long i = 0; i < -p; i++) d *= 10;
        q = D / d, r = D % d;
    }
    if (r) *inexact = 1;
    /* up: ceil(+q.r) = q+1, ceil(-q.r) = -q; down: floor(+q.r) = q, floor(-q.r) = -q-1 */
    if (!neg) return q + (r && !upper);
    return -q - (r && upper);
}

/* minimum, maximum, exclusiveMinimum, exclusiveMaximum (numbers, or the
 * draft-4 booleans), minItems, maxItems, minLength, maxLength of node ni. */
static int sc_bounds(sc_ctx_t *c, int ni, const tg_json_t *const *bnd, const char *const *fmt, const tg_json_t *mul,
                     const char *where, api_err_t *e) {
    api_schema_node_t *nd = &c->sc->nodes[ni];
    int x4[2] = {0, 0}; /* draft 4: exclusiveMinimum / exclusiveMaximum true makes minimum / maximum exclusive */
    int F = 0, neg[6];
    sc_i128 D[6];
    long X[6];
    const char *txt[6] = {0}; /* minimum .. exclusiveMaximum, then the format's range (inclusive) */
    for (int i = 0; i < 6; i++) {
        const tg_json_t *v = i < 4 ? bnd[i] : NULL;
        int b;
        if (i >= 4) {
            if (!(txt[i] = fmt ? fmt[i - 4] : NULL)) continue;
        } else if (!v) {
            continue;
        } else if (i >= SC_XMIN && !tg_json_bool(v, &b)) {
            x4[i - SC_XMIN] = b;
            continue;
        } else if (!(txt[i] = tg_json_num_text(v, NULL))) {
            return SC_BAD("'%s' at %s must be a number.", SC_BOUNDS[i], where);
        }
        if (sc_dec(txt[i], &neg[i], &D[i], &X[i]))
            return SC_BAD("'%s' at %s has more than 36 significant digits.", SC_BOUNDS[i < 4 ? i : 0], where);
        if (-X[i] > F) F = -X[i] > API_NUM_MAX_SCALE ? API_NUM_MAX_SCALE : (int)-X[i];
    }
    /* multipleOf: a positive number of at most API_NUM_MAX_SCALE decimal places, which the scale then covers */
    int mneg = 0;
    sc_i128 mD = 0;
    long mX = 0;
    if (mul) {
        const char *mt = tg_json_num_text(mul, NULL);
        if (!mt || sc_dec(mt, &mneg, &mD, &mX) || mneg || !mD)
            return SC_BAD("'multipleOf' at %s must be a number above 0 (of at most 36 significant digits).", where);
        if (-mX > API_NUM_MAX_SCALE)
            return SC_BAD("'multipleOf' at %s has more than %d decimal places.", where, API_NUM_MAX_SCALE);
        if (-mX > F) F = (int)-mX;
    }
    int has[2] = {0, 0}, ex[2] = {0, 0};
    sc_i128 lim[2] = {0, 0};
    for (int i = 0; i < 6; i++) {
        if (!txt[i]) continue;
        int up = i == SC_MAX || i == SC_XMAX || i == 5, inexact;
        int x = (i >= SC_XMIN && i < 4) || (i < 4 && x4[up]);
        sc_i128 v = sc_scaled(neg[i], D[i], X[i], F, up, &inexact);
        if (inexact) x = 0; /* rounded inwards: the bound itself is out of reach anyway */
        if (up ? v < -API_NUM_LIMIT : v > API_NUM_LIMIT)
            return SC_BAD("'%s' at %s is beyond the supported range (magnitudes up to 1e%d).", SC_BOUNDS[i < 4 ? i : 0],
                          where, 18 - F);
        if (up ? v > API_NUM_LIMIT : v < -API_NUM_LIMIT) v = up ? API_NUM_LIMIT : -API_NUM_LIMIT, x = 0;
        /* the tighter of minimum / exclusiveMinimum (maximum / exclusiveMaximum) */
        if (!has[up] || (up ? v < lim[up] : v > lim[up])) lim[up] = v, ex[up] = x;
        else if (v == lim[up]) ex[up] |= x;
        has[up] = 1;
    }
    sc_i128 mu = 0; /* multipleOf in units of 10^-F (beyond the limit: only 0 is a multiple in range) */
    if (mul) {
        int inexact;
        mu = sc_scaled(0, mD, mX, F, 0, &inexact);
        if (mu > API_NUM_LIMIT) mu = API_NUM_LIMIT + 1;
        if (!(nd->types & API_ST_NUM)) { /* integers: the whole numbers that are multiples, lcm(10^F, mu) / 10^F */
            sc_i128 S = 1, a = mu, b;
            for (int i = 0; i < F; i++) S *= 10;
            for (b = S; b;) {
                sc_i128 t = a % b;
                a = b, b = t;
            }
            mu = mu / a; /* lcm / S = mu / gcd(S, mu) */
            if (mu > API_NUM_LIMIT) mu = API_NUM_LIMIT + 1;
            if (mu == 1) mu = 0; /* every integer */
            if (!has[0] && !has[1]) F = 0;
        }
    }
    if (!(nd->types & API_ST_NUM) && (has[0] || has[1])) { /* integers only: inclusive integer bounds */
        sc_i128 S = 1;
        for (int i = 0; i < F; i++) S *= 10;
        if (has[0]) {
            sc_i128 q = lim[0] / S, r = lim[0] % S; /* truncated */
            lim[0] = q + (r > 0) + (!r && ex[0]);
        }
        if (has[1]) {
            sc_i128 q = lim[1] / S, r = lim[1] % S;
            lim[1] = q - (r < 0) - (!r && ex[1]);
        }
        ex[0] = ex[1] = 0, F = 0;
    }
    if (has[0] && has[1] && (lim[0] > lim[1] || (lim[0] == lim[1] && (ex[0] || ex[1]))))
        return SC_BAD("no %s at %s is within its bounds.", nd->types & API_ST_NUM ? "number" : "integer", where);
    nd->nscale = (uint8_t)F;
    nd->nb = (uint8_t)((has[0] ? API_NB_LO : 0) | (has[1] ? API_NB_HI : 0) | (ex[0] ? API_NB_LO_EX : 0) |
                       (ex[1] ? API_NB_HI_EX : 0));
    nd->nlo = (int64_t)lim[0], nd->nhi = (int64_t)lim[1];
    nd->nmul = (int64_t)mu;
    if (mu && (nd->types & (API_ST_INT | API_ST_NUM))) { /* some multiple within the bounds (0 is one of every) */
        api_num_t start = {0};
        if (api_num_cost(nd, &start) >= API_NUM_NEVER)
            return SC_BAD("no %s at %s is a multiple of its 'multipleOf' within its bounds.",
                          nd->types & API_ST_NUM ? "number" : "integer", where);
    }
    /* counts: minItems, maxItems, minLength, maxLength */
    for (int i = SC_MIN_ITEMS; i <= SC_MAX_LEN; i++) {
        if (!bnd[i]) continue;
        int64_t v;
        int64_t cap = i == SC_MIN_ITEMS ? API_SCHEMA_MAX_ITEMS_MIN : i == SC_MIN_LEN ? API_SCHEMA_MAX_CHARS_MIN : INT32_MAX;
        if (tg_json_int64(bnd[i], &v) || v < 0)
            return SC_BAD("'%s' at %s must be a non-negative integer.", SC_BOUNDS[i], where);
        if (v > cap) {
            if (i == SC_MIN_ITEMS || i == SC_MIN_LEN)
                return SC_BAD("'%s' at %s is above %lld, the most supported.", SC_BOUNDS[i], where, (long long)cap);
            v = cap; /* a maximum this large is no limit within any context */
        }
        int32_t *f = i == SC_MIN_ITEMS ? &nd->min_items : i == SC_MAX_ITEMS ? &nd->max_items
                   : i == SC_MIN_LEN   ? &nd->min_chars : &nd->max_chars;
        *f = (int32_t)v;
    }
    if (nd->max_items >= 0 && nd->min_items > nd->max_items)
        return SC_BAD("'minItems' at %s is above 'maxItems'.", where);
    if (nd->max_chars >= 0 && nd->min_chars > nd->max_chars)
        return SC_BAD("'minLength' at %s is above 'maxLength'.", where);
    return 0;
}

static int sc_is_annot(const char *k, size_t kl) {
    for (size_t a = 0; a < sizeof SC_ANNOT / sizeof SC_ANNOT[0]; a++)
        if (kl == strlen(SC_ANNOT[a]) && !memcmp(k, SC_ANNOT[a], kl)) return 1;
    return (kl == 5 && !memcmp(k, "$defs", 5)) || (kl == 11 && !memcmp(k, "definitions", 11));
}

/* The schema a "$ref" names: "#/$defs/NAME" or "#/definitions/NAME" of the
 * document (~1 and ~0 unescaped), "#" for the root; NULL when it is none. */
static const tg_json_t *sc_ref(const sc_ctx_t *c, const tg_json_t *ref) {
    size_t n;
    const char *s = tg_json_str(ref, &n);
    if (!s) return NULL;
    if (n == 1 && s[0] == '#') return c->root;
    static const char *const PRE[] = {"#/$defs/", "#/definitions/"};
    for (int i = 0; i < 2; i++) {
        size_t pl = strlen(PRE[i]);
        if (n <= pl || memcmp(s, PRE[i], pl)) continue;
        char name[256];
        size_t k = 0;
        for (size_t j = pl; j < n; j++) {
            char ch = s[j];
            if (ch == '/' || k + 1 >= sizeof name) return NULL; /* deeper pointers: not supported */
            if (ch == '~' && j + 1 < n && (s[j + 1] == '0' || s[j + 1] == '1')) ch = s[++j] == '0' ? '~' : '/';
            name[k++] = ch;
        }
        return tg_json_getn(tg_json_get(c->root, i ? "definitions" : "$defs"), name, k);
    }
    return NULL;
}

/* anyOf / oneOf of schemas that differ in type: merged into node ni. */
static int sc_any(sc_ctx_t *c, int ni, const tg_json_t *any, int depth, char *path, size_t pl, api_err_t *e) {
    api_schema_t *sc = c->sc;
    const char *where = *path ? path : "the root";
    size_t nb = tg_json_len(any);
    if (tg_json_type(any) != TG_JSON_ARRAY || nb < 1 || nb > 16)
        return SC_BAD("'anyOf' at %s must be an array of 1 to 16 schemas.", where);
    int br[16], types = 0, obj = -1, arr = -1, enums = 0;
    for (size_t i = 0; i < nb; i++) {
        size_t l2 = (size_t)snprintf(path + pl, pl < 95 ? 96 - pl : 0, "%sanyOf[%zu]", pl ? "." : "", i);
        if (pl + l2 >= 95) l2 = 95 - pl;
        br[i] = sc_node(c, tg_json_at(any, i), ni, -1, depth + 1, path, pl + l2, e);
        path[pl] = 0;
        if (br[i] < 0) return -1;
        const api_schema_node_t *b = &sc->nodes[br[i]];
        if (b->n_enum) {
            enums++;
            continue;
        }
        int num = API_ST_INT | API_ST_NUM;
        if ((types & b->types) || ((types & num) && (b->types & num)))
            return SC_BAD("Unsupported 'anyOf' at %s: its schemas must differ in type (a string or null, an object "
                          "or null, ...), as the grammar picks the branch by the value's first byte.", where);
        types |= b->types;
        if (b->types & API_ST_OBJ) obj = br[i];
        if (b->types & API_ST_ARR) arr = br[i];
    }
    api_schema_node_t *nd = &sc->nodes[ni];
    if (enums) { /* one enum: the branches' values, null, true, false */
        if (types & ~(API_ST_NULL | API_ST_BOOL))
            return SC_BAD("Unsupported 'anyOf' at %s: enum or const values beside a string, number, array or "
                          "object schema.", where);
        int lit0 = sc->n_lits, n = 0;
        static const char *const L[] = {"null", "true", "false"};
        for (size_t i = 0; i < nb + 3; i++) {
            uint32_t off, len;
            if (i < nb) {
                const api_schema_node_t *b = &sc->nodes[br[i]];
                for (int k = 0; k < b->n_enum; k++) {
                    off = sc->lits[b->lit0 + k].off, len = sc->lits[b->lit0 + k].len;
                    int dup = 0;
                    for (int j = lit0; j < sc->n_lits; j++)
                        dup |= sc->lits[j].len == len && !memcmp(c->arena.p + sc->lits[j].off, c->arena.p + off, len);
                    if (dup) continue;
                    if (n >= API_SCHEMA_MAX_ENUM ||
                        sc_grow((void **)&sc->lits, &c->cap_lits, sc->n_lits, sizeof *sc->lits))
                        return n >= API_SCHEMA_MAX_ENUM ? SC_BAD("more "
                                                                 "than %d values at %s.", API_SCHEMA_MAX_ENUM, where)
                                                        : OOM();
                    sc->lits[sc->n_lits].off = off, sc->lits[sc->n_lits++].len = len, n++;
                }
                continue;
            }
            int bit = i == nb ? API_ST_NULL : API_ST_BOOL;
            if (!(types & bit)) continue;
            long o = sc_put(c, L[i - nb], strlen(L[i - nb]));
            if (o < 0 || sc_grow((void **)&sc->lits, &c->cap_lits, sc->n_lits, sizeof *sc->lits)) return OOM();
            sc->lits[sc->n_lits].off = (uint32_t)o, sc->lits[sc->n_lits++].len = (uint32_t)strlen(L[i - nb]), n++;
        }
        nd = &sc->nodes[ni];
        nd->lit0 = (int16_t)lit0;
        nd->n_enum = (int16_t)n;
        nd->types = 0;
    } else {
        nd->types = (uint8_t)types;
        for (size_t i = 0; i < nb; i++) { /* each branch's bounds: its type's, now this node's */
            const api_schema_node_t *b = &sc->nodes[br[i]];
            if (b->types & (API_ST_INT | API_ST_NUM))
                nd->nb = b->nb, nd->nscale = b->nscale, nd->nlo = b->nlo, nd->nhi = b->nhi, nd->nmul = b->nmul;
            if (b->types & API_ST_ARR) nd->min_items = b->min_items, nd->max_items = b->max_items;
            if (b->types & API_ST_STR) nd->min_chars = b->min_chars, nd->max_chars = b->max_chars, nd->sfmt = b->sfmt;
        }
        if (obj >= 0) { /* the object branch's members are this node's (their parent too) */
            nd->prop0 = sc->nodes[obj].prop0;
            nd->n_props = sc->nodes[obj].n_props;
            for (int j = 0; j < nd->n_props; j++) sc->nodes[sc->props[nd->prop0 + j].node].parent = (int16_t)ni;
            nd->extra = sc->nodes[obj].extra;
            if (nd->extra >= 0) sc->nodes[nd->extra].parent = (int16_t)ni;
        }
        if (arr >= 0) {
            nd->items = sc->nodes[arr].items;
            if (nd->items >= 0) sc->nodes[nd->items].parent = (int16_t)ni;
            nd->tup0 = sc->nodes[arr].tup0, nd->n_tup = sc->nodes[arr].n_tup;
            for (int j = 0; j < nd->n_tup; j++) sc->nodes[sc->props[nd->tup0 + j].node].parent = (int16_t)ni;
        }
    }
    nd->min_len = sc_min_len(sc, ni);
    return ni;
}

/* A member name as JSON text (b, from tg_json_write_str) with U+2028 and
 * U+2029 put back raw: the writer escapes them, but the grammar matches
 * names byte for byte and lets another member (additionalProperties a
 * schema) have any name without escapes, so an escaped property name would
 * leave its raw twin (the same name, decoded) to the other members' schema. */
static void sc_raw_seps(tg_buf_t *b) {
    size_t i = 1, o = 1;
    while (i < b->len) {
        if (b->p[i] == '\\' && i + 5 < b->len && b->p[i + 1] == 'u' && !memcmp(b->p + i + 2, "202", 3) &&
            (b->p[i + 5] == '8' || b->p[i + 5] == '9')) {
            b->p[o++] = (char)0xE2, b->p[o++] = (char)0x80, b->p[o++] = (char)(b->p[i + 5] == '8' ? 0xA8 : 0xA9);
            i += 6;
            continue;
        }
        size_t k = b->p[i] != '\\' ? 1 : b->p[i + 1] == 'u' ? 6 : 2; /* one character, or one escape */
        while (k-- && i < b->len) b->p[o++] = b->p[i++];
    }
    b->len = o;
    b->p[o] = 0;
}

/* "properties" and "required" of node ni. */
static int sc_props(sc_ctx_t *c, int ni, const tg_json_t *props, const tg_json_t *req, int depth, char *path,
                    size_t pl, api_err_t *e) {
    api_schema_t *sc = c->sc;
    size_t n = tg_json_len(props);
    if (n > API_SCHEMA_MAX_PROPS)
        return SC_BAD("%zu properties at %s (at most %d).", n,
                      *path ? path : "the root", API_SCHEMA_MAX_PROPS);
    int oom = 0;
    size_t dl;
    const char *dup = tg_json_dup_key(props, &dl, &oom);
    if (oom) return OOM();
    if (dup)
        return SC_BAD("property '%.*s' given twice at %s.",
                      (int)(dl > 64 ? 64 : dl), dup, *path ? path : "the root");
    /* reserve the node's property slots first: children compile after them */
    int prop0 = sc->n_props;
    for (size_t i = 0; i < n; i++) {
        if (sc_grow((void **)&sc->props, &c->cap_props, sc->n_props, sizeof *sc->props)) return OOM();
        memset(&sc->props[sc->n_props++], 0, sizeof *sc->props);
    }
    sc->nodes[ni].prop0 = (int16_t)prop0;
    sc->nodes[ni].n_props = (int16_t)n;
    size_t i = 0;
    const tg_json_t *m;
    TG_JSON_FOREACH(m, props) {
        size_t kl;
        const char *k = tg_json_key(m, &kl);
        tg_buf_t kb = {0};
        tg_json_write_str(&kb, k, kl);
        if (kb.oom) return OOM();
        sc_raw_seps(&kb);
        if (kb.len > API_SCHEMA_MAX_LIT) {
            tg_buf_free(&kb);
            return SC_BAD("a property name longer than %d bytes "
                          "at %s.", API_SCHEMA_MAX_LIT - 2, *path ? path : "the root");
        }
        long off = sc_put(c, kb.p, kb.len);
        size_t klen = kb.len;
        tg_buf_free(&kb);
        if (off < 0) return OOM();
        size_t l2 = (size_t)snprintf(path + pl, pl < 95 ? 96 - pl : 0, "%sproperties.%.*s", pl ? "." : "",
                                     (int)(kl > 24 ? 24 : kl), k);
        if (pl + l2 >= 95) l2 = 95 - pl;
        int child = sc_node(c, m, ni, (int)i, depth + 1, path, pl + l2, e);
        path[pl] = 0;
        if (child < 0) return -1;
        api_schema_prop_t *p = &sc->props[prop0 + i];
        p->off = (uint32_t)off;
        p->len = (uint32_t)klen;
        p->node = (int16_t)child;
        i++;
    }
    if (is_null(req)) return 0;
    if (tg_json_type(req) != TG_JSON_ARRAY)
        return SC_BAD("'required' at %s must be an array of property names.", *path ? path : "the root");
    const tg_json_t *r;
    TG_JSON_FOREACH(r, req) {
        size_t rl;
        const char *rs = tg_json_str(r, &rl);
        int found = -1;
        for (size_t j = 0; rs && j < n; j++) {
            size_t kl;
            const char *k = tg_json_key(tg_json_at(props, j), &kl);
            if (kl == rl && !memcmp(k, rs, rl)) found = (int)j;
        }
        if (found < 0)
            return SC_BAD("'required' at %s names %s%.*s%s, "
                          "which is not in 'properties'.", *path ? path : "the root", rs ? "'" : "a non-string",
                          rs ? (int)(rl > 64 ? 64 : rl) : 0, rs ? rs : "", rs ? "'" : "");
        if (sc->props[prop0 + found].required)
            return SC_BAD("'required' at %s names '%.*s' twice.",
                          *path ? path : "the root", (int)(rl > 64 ? 64 : rl), rs);
        sc->props[prop0 + found].required = 1;
    }
    return 0;
}

/* Compile the schema v into a new node: its index, or -1 with e filled. */
static int sc_node(sc_ctx_t *c, const tg_json_t *v, int parent, int pidx, int depth, char *path, size_t pl,
                   api_err_t *e) {
    api_schema_t *sc = c->sc;
    const char *where = *path ? path : "the root";
    if (tg_json_type(v) != TG_JSON_OBJECT)
        return SC_BAD("the schema at %s must be an object, but got %s.", where, type_name(v));
    if (depth > API_SCHEMA_MAX_DEPTH)
        return SC_BAD("nested deeper than %d schemas at %s.", API_SCHEMA_MAX_DEPTH, where);
    if (sc->n_nodes >= API_SCHEMA_MAX_NODES)
        return SC_BAD("more than %d schemas.", API_SCHEMA_MAX_NODES);
    /* "$ref", and "allOf" of one schema: that schema, compiled here (beside them: annotations only) */
    const tg_json_t *ref = tg_json_get(v, "$ref"), *all = tg_json_get(v, "allOf"), *m;
    if (ref || (all && tg_json_type(all) == TG_JSON_ARRAY && tg_json_len(all) == 1)) {
        TG_JSON_FOREACH(m, v) {
            size_t kl;
            const char *k = tg_json_key(m, &kl);
            if (!sc_is_annot(k, kl) && !(kl == 4 && !memcmp(k, "$ref", 4)) && !(kl == 5 && !memcmp(k, "allOf", 5)))
                sc_bad(c, memchr(k, 0, kl) ? "?" : k, memchr(k, 0, kl) ? 1 : (kl > 40 ? 40 : kl), path);
        }
        if (ref && all)
            return SC_BAD("Unsupported schema at %s: '$ref' and 'allOf' together.", where);
        const tg_json_t *target = ref ? sc_ref(c, ref) : tg_json_at(all, 0);
        if (!target)
            return SC_BAD("Unsupported '$ref' at %s: only \"#/$defs/NAME\" or \"#/definitions/NAME\" of this schema "
                          "(or \"#\").", where);
        for (int i = 0; ref && i < c->n_refs; i++)
            if (c->refs[i] == target)
                return SC_BAD("Unsupported '$ref' at %s: a recursive schema (the grammar is a finite tree).", where);
        if (ref && c->n_refs >= (int)(sizeof c->refs / sizeof c->refs[0]))
            return SC_BAD("'$ref' nested too deep at %s.", where);
        if (ref) c->refs[c->n_refs++] = target;
        int r = sc_node(c, target, parent, pidx, depth + 1, path, pl, e);
        if (ref) c->n_refs--;
        return r;
    }
    if (sc_grow((void **)&sc->nodes, &c->cap_nodes, sc->n_nodes, sizeof *sc->nodes)) return OOM();
    int ni = sc->n_nodes++;
    api_schema_node_t *nd = &sc->nodes[ni];
    memset(nd, 0, sizeof *nd);
    nd->parent = (int16_t)parent;
    nd->pidx = (int16_t)pidx;
    nd->items = API_SCHEMA_NONE;
    nd->extra = API_SCHEMA_NONE;
    nd->n_props = -1;
    nd->max_items = nd->max_chars = -1;
    const tg_json_t *type = NULL, *props = NULL, *req = NULL, *items = NULL, *en = NULL, *cn = NULL, *any = NULL;
    const tg_json_t *bnd[SC_N_BOUNDS] = {0}, *fmt = NULL, *pat = NULL; /* minimum, ..., maxLength (SC_BOUNDS) */
    const tg_json_t *mul = NULL, *pfx = NULL, *addi = NULL;
    int addl = -1; /* additionalProperties: -1 absent (or a schema: xschema), 0 false, 1 true */
    const tg_json_t *xschema = NULL, *pnames = NULL;
    TG_JSON_FOREACH(m, v) {
        size_t kl;
        const char *k = tg_json_key(m, &kl);
#define KW(s) (kl == sizeof s - 1 && !memcmp(k, s, kl))
        if (KW("type")) type = m;
        else if (KW("properties")) props = m;
        else if (KW("required")) req = m;
        else if (KW("items")) items = m;
        else if (KW("enum")) en = m;
        else if (KW("const")) cn = m;
        else if (KW("anyOf") || KW("oneOf")) any = m; /* branches of different types: one matches, so the same */
        else if (sc_bound_kw(k, kl) >= 0) bnd[sc_bound_kw(k, kl)] = m;
        else if (KW("format")) fmt = m; /* a number's range (below), else refused */
        else if (KW("pattern")) pat = m; /* one of zod's for a format (below), else refused */
        else if (KW("multipleOf")) mul = m; /* numbers: enforced with the bounds (api_num.c) */
        else if (KW("prefixItems")) pfx = m; /* a tuple (2020-12); draft 7's is "items" as an array */
        else if (KW("additionalItems")) addi = m; /* draft 7: the elements after an "items" array */
        else if (KW("uniqueItems")) {
            int u;
            if (tg_json_bool(m, &u)) sc_bad(c, "uniqueItems", 11, path);
            else if (u) /* a grammar keeps no set of the elements written (nor does OpenAI's strict mode) */
                return SC_BAD("Unsupported 'uniqueItems' at %s: decoding cannot keep an array's elements distinct "
                              "(OpenAI's structured outputs do not support it either); drop it and check for "
                              "duplicates after parsing.", where);
        }
        else if (KW("additionalProperties")) {
            if (tg_json_bool(m, &addl)) xschema = m; /* the other members' schema (below) */
        } else if (KW("propertyNames")) {
            pnames = m; /* {"type":"string"} (zod's z.record(z.string(), ...)) says nothing: taken */
        } else if (!sc_is_annot(k, kl)) {
            sc_bad(c, memchr(k, 0, kl) ? "?" : k, memchr(k, 0, kl) ? 1 : (kl > 40 ? 40 : kl), path);
        }
#undef KW
    }
    if (c->strict && !any && !type && !en && !cn)
        return SC_BAD("strict mode needs a 'type' (or 'enum', 'const', 'anyOf', '$ref') in the schema at %s.", where);
    for (int i = 0; i < SC_N_BOUNDS; i++)
        if (bnd[i] && (any || en || cn))
            return SC_BAD("Unsupported '%s' at %s beside '%s'.", SC_BOUNDS[i], where,
                          any ? "anyOf' or 'oneOf" : en ? "enum" : "const");
    if (mul && (any || en || cn))
        return SC_BAD("Unsupported 'multipleOf' at %s beside '%s'.", where,
                      any ? "anyOf' or 'oneOf" : en ? "enum" : "const");
    if (pnames) {
        int only_type = tg_json_type(pnames) == TG_JSON_OBJECT && str_is(tg_json_get(pnames, "type"), "string");
        const tg_json_t *pm;
        TG_JSON_FOREACH(pm, pnames) {
            size_t pkl;
            const char *pk = tg_json_key(pm, &pkl);
            if (!(pkl == 4 && !memcmp(pk, "type", 4)) && !sc_is_annot(pk, pkl)) only_type = 0;
        }
        if (!only_type) sc_bad(c, "propertyNames", 13, path); /* a constraint on names: not enforced */
    }
    if (any && fmt) sc_bad(c, "format", 6, path);
    if (any && pat) sc_bad(c, "pattern", 7, path);
    if (any) {
        if (type || props || req || items || en || cn || pfx || addi)
            return SC_BAD("Unsupported schema at %s: 'anyOf' (or 'oneOf') beside 'type', 'properties', 'required', "
                          "'items', 'prefixItems', 'enum' or 'const'.", where);
        return sc_any(c, ni, any, depth, path, pl, e);
    }
    int types = 0;
    if (tg_json_type(type) == TG_JSON_STRING) {
        if (!(types = sc_type_bit(type))) goto bad_type;
    } else if (tg_json_type(type) == TG_JSON_ARRAY && tg_json_len(type)) {
        const tg_json_t *t;
        TG_JSON_FOREACH(t, type) {
            int b = sc_type_bit(t);
            if (!b || (types & b)) goto bad_type;
            types |= b;
        }
    } else if (type) {
        goto bad_type;
    }
    if (en && cn)
        return SC_BAD("'enum' and 'const' together at %s.", where);
    if (en || cn) {
        if (en && (tg_json_type(en) != TG_JSON_ARRAY || !tg_json_len(en) || tg_json_len(en) > API_SCHEMA_MAX_ENUM))
            return SC_BAD("'enum' at %s must be an array of 1 to %d values.", where, API_SCHEMA_MAX_ENUM);
        nd->lit0 = (int16_t)sc->n_lits;
        size_t ne = en ? tg_json_len(en) : 1;
        for (size_t i = 0; i < ne; i++) {
            const tg_json_t *x = en ? tg_json_at(en, i) : cn;
            tg_buf_t b = {0};
            tg_json_write(&b, x);
            if (b.oom) return OOM();
            if (b.len > API_SCHEMA_MAX_LIT) {
                tg_buf_free(&b);
                return SC_BAD("an enum value longer than %d bytes at %s.", API_SCHEMA_MAX_LIT, where);
            }
            long off = sc_put(c, b.p, b.len);
            size_t bl = b.len;
            tg_buf_free(&b);
            if (off < 0 || sc_grow((void **)&sc->lits, &c->cap_lits, sc->n_lits, sizeof *sc->lits)) return OOM();
            nd = &sc->nodes[ni];
            for (int j = nd->lit0; j < sc->n_lits; j++) /* equal values: the grammar keeps one */
                if (sc->lits[j].len == bl && !memcmp(c->arena.p + sc->lits[j].off, c->arena.p + off, bl)) goto next;
            sc->lits[sc->n_lits].off = (uint32_t)off;
            sc->lits[sc->n_lits++].len = (uint32_t)bl;
            nd->n_enum++;
        next:;
        }
    }
    if (!type) { /* inferred from the keywords, else any value */
        types = props || req ? API_ST_OBJ : items || pfx ? API_ST_ARR : API_ST_ANY;
    }
    nd->types = (uint8_t)types;
    /* "format" of a number schema (zod v4's z.int32(), z.uint32(), z.float32(), ...): the type's range,
     * enforced as bounds; any other format (of strings: date-time, email, ...) is not enforced: refused */
    static const struct { const char *name, *lo, *hi; } NUMFMT[] = {
        {"int32", "-2147483648", "2147483647"}, {"uint32", "0", "4294967295"},
        {"int64", "-9223372036854775808", "9223372036854775807"}, {"uint64", "0", "18446744073709551615"},
        {"safeint", "-9007199254740991", "9007199254740991"},
        {"float32", "-3.4028234663852886e38", "3.4028234663852886e38"},
        {"float64", "-1.7976931348623157e308", "1.7976931348623157e308"},
    };
    static const struct { const char *name; int kind; } STRFMT[] = {
        {"date", API_SF_DATE}, {"time", API_SF_TIME}, {"date-time", API_SF_DATETIME}, {"uuid", API_SF_UUID},
        {"email", API_SF_EMAIL}, {"hostname", API_SF_HOSTNAME}, {"ipv4", API_SF_IPV4}, {"ipv6", API_SF_IPV6},
        {"duration", API_SF_DURATION},
    };
    /* zod v4 writes these formats with a pattern beside them (z.iso.date(), z.iso.datetime() and its
     * {offset: true}, z.uuid(), z.email(), ...): byte for byte one of these, the pattern is kept by writing
     * the part of the format it allows (date-time only with "Z"; uuids of versions 1-8, variant 10xx; the
     * subsets api_fmt.c writes of the others match zod's patterns as they are).  z.iso.time() writes a
     * pattern and no format: a time of day without offset (RFC 3339's "time" format needs one, so the
     * pattern alone is followed: hh:mm:ss with an optional fraction, or what its precision asks) */
    static const struct { int kind, refined; const char *pattern; } ZODPAT[] = {
        {API_SF_DATE, API_SF_DATE, ZOD_DATE},
        {API_SF_DATETIME, API_SF_DATETIME_Z, ZOD_DATETIME},
        {API_SF_DATETIME, API_SF_DATETIME, ZOD_DATETIME_OFFSET},
        {API_SF_UUID, API_SF_UUID_V, ZOD_UUID},
        {API_SF_EMAIL, API_SF_EMAIL, ZOD_EMAIL},
        {API_SF_HOSTNAME, API_SF_HOSTNAME, ZOD_HOSTNAME},
        {API_SF_IPV4, API_SF_IPV4, ZOD_IPV4},
        {API_SF_IPV6, API_SF_IPV6, ZOD_IPV6},
        {API_SF_DURATION, API_SF_DURATION, ZOD_DURATION},
        {API_SF_NONE, API_SF_TIME_LOCAL, ZOD_TIME},
        {API_SF_NONE, API_SF_TIME_LOCAL_S, ZOD_TIME_S},
        {API_SF_NONE, API_SF_HHMM, ZOD_HHMM},
    };
    const char *fmt_range[2] = {NULL, NULL};
    if (fmt) {
        int known = 0;
        for (size_t i = 0; i < sizeof STRFMT / sizeof *STRFMT; i++)
            if (str_is(fmt, STRFMT[i].name) && (types & API_ST_STR)) {
                if (bnd[SC_MIN_LEN] || bnd[SC_MAX_LEN])
                    return SC_BAD("Unsupported 'format' at %s beside 'minLength' or 'maxLength'.", where);
                sc->nodes[ni].sfmt = (uint8_t)STRFMT[i].kind, known = 1;
            }
        for (size_t i = 0; i < sizeof NUMFMT / sizeof *NUMFMT && type; i++)
            if (str_is(fmt, NUMFMT[i].name) && (types & (API_ST_INT | API_ST_NUM)) &&
                !(types & ~(API_ST_INT | API_ST_NUM | API_ST_NULL)))
                fmt_range[0] = NUMFMT[i].lo, fmt_range[1] = NUMFMT[i].hi, known = 1;
        if (!known) sc_bad(c, "format", 6, path);
    }
    if (pat) {
        int kept = 0;
        for (size_t i = 0; i < sizeof ZODPAT / sizeof *ZODPAT; i++)
            if (sc->nodes[ni].sfmt == ZODPAT[i].kind && (types & API_ST_STR) && str_is(pat, ZODPAT[i].pattern)) {
                if (!fmt && (bnd[SC_MIN_LEN] || bnd[SC_MAX_LEN]))
                    return SC_BAD("Unsupported 'pattern' at %s beside 'minLength' or 'maxLength'.", where);
                sc->nodes[ni].sfmt = (uint8_t)ZODPAT[i].refined, kept = 1;
                break;
            }
        if (!kept) sc_bad(c, "pattern", 7, path); /* a regular expression the grammar does not run */
    }
    if (sc_bounds(c, ni, bnd, fmt ? fmt_range : NULL, mul, where, e)) return -1;
    if ((props || req) && !(types & API_ST_OBJ))
        return SC_BAD("'properties' at %s without type 'object'.", where);
    if ((items || pfx) && !(types & API_ST_ARR))
        return SC_BAD("'%s' at %s without type 'array'.", items ? "items" : "prefixItems", where);
    /* A tuple: prefixItems (then items for the rest), or draft 7's items array (then additionalItems);
     * the rest false: no element after the tuple's (maxItems at most their count) */
    const tg_json_t *tup = pfx ? pfx : tg_json_type(items) == TG_JSON_ARRAY ? items : NULL;
    const tg_json_t *rest = pfx ? items : tup ? addi : items;
    if (pfx && tg_json_type(items) == TG_JSON_ARRAY)
        return SC_BAD("'prefixItems' and an 'items' array together at %s.", where);
    if (tup && (tg_json_type(tup) != TG_JSON_ARRAY || !tg_json_len(tup) || tg_json_len(tup) > API_SCHEMA_MAX_PROPS))
        return SC_BAD("'%s' at %s must be an array of 1 to %d schemas.", pfx ? "prefixItems" : "items", where,
                      API_SCHEMA_MAX_PROPS);
    int rest_b = -1; /* the rest given as a boolean schema */
    if (rest && !tg_json_bool(rest, &rest_b)) rest = NULL;
    if (rest_b == 0 && !tup) { /* "items": false alone: only [] */
        if (sc->nodes[ni].min_items > 0)
            return SC_BAD("'minItems' at %s is above 0, but 'items' is false (no element is allowed).", where);
        sc->nodes[ni].max_items = 0;
    }
    if (props && tg_json_type(props) != TG_JSON_OBJECT)
        return SC_BAD("'properties' at %s must be an object.", where);
    if (req && !props)
        return SC_BAD("'required' at %s without 'properties'.", where);
    if (c->strict && (types & API_ST_OBJ) && !(sc->nodes[ni].n_enum) && addl != 0)
        return SC_BAD("strict mode needs \"additionalProperties\": false in the object schema at %s.", where);
    if (props && sc_props(c, ni, props, req, depth, path, pl, e)) return -1;
    if (!props && (addl == 0 || xschema) && (types & API_ST_OBJ)) { /* no properties: {}, or the others only */
        sc->nodes[ni].prop0 = (int16_t)sc->n_props;
        sc->nodes[ni].n_props = 0;
    }
    if (xschema) { /* additionalProperties a schema (zod's z.record(), Pydantic's dict[str, X]) */
        if (!(types & API_ST_OBJ))
            return SC_BAD("'additionalProperties' at %s without type 'object'.", where);
        size_t l2 = (size_t)snprintf(path + pl, pl < 95 ? 96 - pl : 0, "%sadditionalProperties", pl ? "." : "");
        if (pl + l2 >= 95) l2 = 95 - pl;
        int child = sc_node(c, xschema, ni, -1, depth + 1, path, pl + l2, e);
        path[pl] = 0;
        if (child < 0) return -1;
        sc->nodes[ni].extra = (int16_t)child;
    }
    for (int i = 0; c->strict && i < sc->nodes[ni].n_props; i++) {
        const api_schema_prop_t *p = &sc->props[sc->nodes[ni].prop0 + i];
        if (!p->required)
            return SC_BAD("strict mode needs every property in 'required': %.*s at %s is not.",
                          (int)(p->len > 66 ? 66 : p->len), c->arena.p + p->off, where);
    }
    if (tup) {
        size_t n = tg_json_len(tup);
        int t0 = sc->n_props; /* the slots first: the elements compile after them */
        for (size_t i = 0; i < n; i++) {
            if (sc_grow((void **)&sc->props, &c->cap_props, sc->n_props, sizeof *sc->props)) return OOM();
            memset(&sc->props[sc->n_props++], 0, sizeof *sc->props);
        }
        sc->nodes[ni].tup0 = (int16_t)t0;
        sc->nodes[ni].n_tup = (int16_t)n;
        for (size_t i = 0; i < n; i++) {
            size_t l2 = (size_t)snprintf(path + pl, pl < 95 ? 96 - pl : 0, "%s%s[%zu]", pl ? "." : "",
                                         pfx ? "prefixItems" : "items", i);
            if (pl + l2 >= 95) l2 = 95 - pl;
            int child = sc_node(c, tg_json_at(tup, i), ni, -1, depth + 1, path, pl + l2, e);
            path[pl] = 0;
            if (child < 0) return -1;
            sc->props[t0 + i].node = (int16_t)child;
        }
        api_schema_node_t *an = &sc->nodes[ni];
        if (rest_b == 0 && (an->max_items < 0 || an->max_items > (int32_t)n)) an->max_items = (int32_t)n;
        if (an->max_items >= 0 && an->min_items > an->max_items)
            return SC_BAD("'minItems' at %s is above the elements the tuple allows.", where);
    }
    if (rest) {
        size_t l2 = (size_t)snprintf(path + pl, pl < 95 ? 96 - pl : 0, "%s%s", pl ? "." : "",
                                     tup && !pfx ? "additionalItems" : "items");
        if (pl + l2 >= 95) l2 = 95 - pl;
        int child = sc_node(c, rest, ni, -1, depth + 1, path, pl + l2, e);
        path[pl] = 0;
        if (child < 0) return -1;
        sc->nodes[ni].items = (int16_t)child;
    }
    sc->nodes[ni].min_len = sc_min_len(sc, ni);
    return ni;
bad_type:
    return SC_BAD("'type' at %s must be one of 'object', 'array', "
                  "'string', 'number', 'integer', 'boolean', 'null', or a list of distinct ones.", where);
}

int api_schema_append(api_schema_t *dst, const api_schema_t *src) {
    int nn = dst->n_nodes, np = dst->n_props, nl = dst->n_lits;
    size_t na = dst->arena_len;
    if (src->n_nodes < 1 || nn + src->n_nodes > INT16_MAX || np + src->n_props > INT16_MAX ||
        nl + src->n_lits > INT16_MAX || na + src->arena_len > UINT32_MAX)
        return -1;
    void *q;
    if (!(q = realloc(dst->nodes, (size_t)(nn + src->n_nodes) * sizeof *dst->nodes))) return -1;
    dst->nodes = q;
    if (!(q = realloc(dst->props, (size_t)(np + src->n_props + 1) * sizeof *dst->props))) return -1;
    dst->props = q;
    if (!(q = realloc(dst->lits, (size_t)(nl + src->n_lits + 1) * sizeof *dst->lits))) return -1;
    dst->lits = q;
    if (!(q = realloc(dst->arena, na + src->arena_len + 1))) return -1;
    dst->arena = q;
    for (int i = 0; i < src->n_nodes; i++) {
        api_schema_node_t *d = &dst->nodes[nn + i];
        *d = src->nodes[i];
        if (d->parent != API_SCHEMA_NONE) d->parent = (int16_t)(d->parent + nn);
        if (d->items != API_SCHEMA_NONE) d->items = (int16_t)(d->items + nn);
        if (d->extra != API_SCHEMA_NONE) d->extra = (int16_t)(d->extra + nn);
        d->prop0 = (int16_t)(d->prop0 + np);
        d->tup0 = (int16_t)(d->tup0 + np);
        d->lit0 = (int16_t)(d->lit0 + nl);
    }
    for (int i = 0; i < src->n_props; i++) {
        dst->props[np + i] = src->props[i];
        dst->props[np + i].node = (int16_t)(src->props[i].node + nn);
        dst->props[np + i].off += (uint32_t)na;
    }
    for (int i = 0; i < src->n_lits; i++) {
        dst->lits[nl + i] = src->lits[i];
        dst->lits[nl + i].off += (uint32_t)na;
    }
    if (src->arena_len) memcpy(dst->arena + na, src->arena, src->arena_len);
    dst->n_nodes += src->n_nodes, dst->n_props += src->n_props, dst->n_lits += src->n_lits;
    dst->arena_len += src->arena_len;
    return nn;
}

void api_schema_free(api_schema_t *sc) {
    free(sc->nodes);
    free(sc->props);
    free(sc->lits);
    free(sc->arena);
    memset(sc, 0, sizeof *sc);
}

int api_schema_compile(api_schema_t *sc, const tg_json_t *schema, api_err_t *e) {
    return api_schema_compile_as(sc, schema, "response_format.json_schema.schema", 0, e);
}

int api_schema_compile_as(api_schema_t *sc, const tg_json_t *schema, const char *param, int flags,
                          api_err_t *e) {
    sc_ctx_t c = {.sc = sc, .root = schema, .param = param, .strict = !!(flags & API_SCHEMA_STRICT)};
    char path[96] = "";
    memset(sc, 0, sizeof *sc);
    int root = sc_node(&c, schema, API_SCHEMA_NONE, -1, 0, path, 0, e);
    sc->arena = c.arena.p;
    sc->arena_len = c.arena.len;
    if (root < 0) goto fail;
    if (c.n_bad) {
        BAD(param, "unsupported_parameter",
            "Unsupported %s in '%s': %s (first at %s). Supported: type, properties, required, items, "
            "prefixItems (or an items array and additionalItems), enum, "
            "const, anyOf/oneOf (of different types), $ref to $defs, additionalProperties (a boolean or a schema), minimum, "
            "maximum, exclusiveMinimum, exclusiveMaximum, multipleOf, minItems, maxItems, minLength, maxLength, "
            "format (date, time, date-time, duration, email, hostname, ipv4, ipv6, uuid), and the "
            "annotations title, description, default, examples, $schema, $id, $comment.",
            c.n_bad > 1 ? "keywords" : "keyword", param, c.bad, c.bad_at);
        goto fail;
    }
    for (int i = 0; i < sc->n_nodes; i++) { /* arrays with minItems/maxItems inside each other: counted per level */
        int d = 0;
        for (int n = i; n != API_SCHEMA_NONE; n = sc->nodes[n].parent) d += api_schema_arr_bounded(&sc->nodes[n]);
        if (d > API_SCHEMA_MAX_ADEPTH) {
            sc_err(&c, e, "more than %d arrays with 'minItems' or 'maxItems' inside each other.",
                   API_SCHEMA_MAX_ADEPTH);
            goto fail;
        }
    }
    if (sc->n_lits > API_SCHEMA_MAX_LITS) {
        sc_err(&c, e, "more than %d enum and const values in all.", API_SCHEMA_MAX_LITS);
        goto fail;
    }
    if (sc->nodes[0].types != API_ST_OBJ || sc->nodes[0].n_enum) {
        sc_err(&c, e, "the root must be an object schema "
               "(\"type\": \"object\").");
        goto fail;
    }
    return 0;
fail:
    api_schema_free(sc);
    return -1;
}

static int parse_response_format(api_chat_req_t *r, const tg_json_t *rf, api_err_t *e) {
    if (is_null(rf)) return 0;
    if (tg_json_type(rf) != TG_JSON_OBJECT)
        return BAD("response_format", "invalid_type",
                   "Invalid type for 'response_format': expected an object, but got %s.", type_name(rf));
    const tg_json_t *t = tg_json_get(rf, "type"), *m;
    if (!t)
        return BAD("response_format.type", "missing_required_parameter",
                   "Missing required parameter: 'response_format.type'.");
    if (str_is(t, "text")) r->format = API_FORMAT_TEXT;
    else if (str_is(t, "json_object")) r->format = API_FORMAT_JSON_OBJECT;
    else if (str_is(t, "json_schema")) r->format = API_FORMAT_JSON_SCHEMA;
    else
        return BAD("response_format.type", "invalid_value",
                   "Invalid value for 'response_format.type': supported values are 'text', 'json_object' and "
                   "'json_schema'.");
    TG_JSON_FOREACH(m, rf) {
        size_t kl;
        const char *k = tg_json_key(m, &kl);
        if ((kl == 4 && !memcmp(k, "type", 4)) ||
            (kl == 11 && !memcmp(k, "json_schema", 11) && r->format == API_FORMAT_JSON_SCHEMA))
            continue;
        return BAD("response_format", "unknown_parameter", "Unrecognized argument in 'response_format': %.*s",
                   (int)(kl > 64 ? 64 : kl), memchr(k, 0, kl) ? "?" : k);
    }
    if (r->format != API_FORMAT_JSON_SCHEMA) return 0;
    const tg_json_t *js = tg_json_get(rf, "json_schema");
    if (tg_json_type(js) != TG_JSON_OBJECT)
        return BAD("response_format.json_schema", js ? "invalid_type" : "missing_required_parameter",
                   "Missing or invalid 'response_format.json_schema': expected an object with 'name' and 'schema'.");
    const tg_json_t *name = NULL, *schema = NULL;
    TG_JSON_FOREACH(m, js) {
        size_t kl;
        const char *k = tg_json_key(m, &kl);
        if (kl == 4 && !memcmp(k, "name", 4)) name = m;
        else if (kl == 6 && !memcmp(k, "schema", 6)) schema = m;
        else if (kl == 6 && !memcmp(k, "strict", 6)) {
            if (!is_null(m) && tg_json_type(m) != TG_JSON_BOOL)
                return BAD("response_format.json_schema.strict", "invalid_type",
                           "Invalid type for 'response_format.json_schema.strict': expected a boolean.");
        } else if (kl == 11 && !memcmp(k, "description", 11)) {
            if (tg_json_type(m) != TG_JSON_STRING)
                return BAD("response_format.json_schema.description", "invalid_type",
                           "Invalid type for 'response_format.json_schema.description': expected a string.");
        } else {
            return BAD("response_format.json_schema", "unknown_parameter",
                       "Unrecognized argument in 'response_format.json_schema': %.*s", (int)(kl > 64 ? 64 : kl),
                       memchr(k, 0, kl) ? "?" : k);
        }
    }
    size_t nl;
    const char *ns = tg_json_str(name, &nl);
    int ok = ns && nl >= 1 && nl <= 64;
    for (size_t i = 0; ok && i < nl; i++) ok = isalnum((unsigned char)ns[i]) || ns[i] == '_' || ns[i] == '-';
    if (!ok)
        return BAD("response_format.json_schema.name", name ? "invalid_value" : "missing_required_parameter",
                   "Invalid 'response_format.json_schema.name': 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'.");
    if (!schema)
        return BAD("response_format.json_schema.schema", "missing_required_parameter",
                   "Missing required parameter: 'response_format.json_schema.schema'.");
    return api_schema_compile(&r->schema, schema, e);
}

static int parse_logit_bias(api_chat_req_t *r, const tg_json_t *lb, api_err_t *e) {
    if (is_null(lb)) return 0;
    if (tg_json_type(lb) != TG_JSON_OBJECT)
        return BAD("logit_bias", "invalid_type", "Invalid type for 'logit_bias': expected an object, but got %s.",
                   type_name(lb));
    size_t n = tg_json_len(lb);
    if (n > API_MAX_LOGIT_BIAS)
        return BAD("logit_bias", "invalid_value", "Invalid 'logit_bias': at most %d entries are allowed.",
                   API_MAX_LOGIT_BIAS);
    if (!n) return 0;
    if (!(r->bias = calloc(n, sizeof *r->bias))) return OOM();
    const tg_json_t *m;
    TG_JSON_FOREACH(m, lb) {
        size_t kl;
        const char *k = tg_json_key(m, &kl);
        long long id = 0;
        int ok = kl > 0 && kl <= 9;
        for (size_t i = 0; ok && i < kl; i++) {
            ok = k[i] >= '0' && k[i] <= '9';
            id = id * 10 + (k[i] - '0');
        }
        if (!ok)
            return BAD("logit_bias", "invalid_value",
                       "Invalid 'logit_bias': keys are token ids (decimal integers), but got '%.40s'.", ok ? "" : k);
        double d;
        if (tg_json_double(m, &d) || !(d >= -100 && d <= 100))
            return BAD("logit_bias", "invalid_value",
                       "Invalid 'logit_bias[%lld]': expected a number in [-100, 100].", id);
        r->bias[r->n_bias].id = (int32_t)id;
        r->bias[r->n_bias].bias = (float)d;
        r->n_bias++;
    }
    return 0;
}

/* ---- top-level parameters --------------------------------------------------------- */

typedef enum {
    P_READ,        /* read and honoured below */
    P_IDENT,       /* an identifier or metadata for the caller's records: accepted, no effect on output */
    P_UNSUPPORTED, /* OpenAI or DeepSeek know it; this server cannot honour it: 400 */
} pkind_t;

static const struct {
    const char *name;
    pkind_t kind;
} PARAMS[] = {
    {"model", P_READ}, {"messages", P_READ}, {"max_tokens", P_READ}, {"max_completion_tokens", P_READ},
    {"temperature", P_READ}, {"top_p", P_READ}, {"top_k", P_READ}, {"presence_penalty", P_READ},
    {"frequency_penalty", P_READ}, {"logit_bias", P_READ}, {"logprobs", P_READ}, {"top_logprobs", P_READ},
    {"n", P_READ}, {"seed", P_READ}, {"stop", P_READ}, {"stream", P_READ}, {"stream_options", P_READ},
    {"tools", P_READ}, {"tool_choice", P_READ}, {"parallel_tool_calls", P_READ}, {"response_format", P_READ},
    {"user", P_IDENT}, {"metadata", P_IDENT}, {"store", P_IDENT}, {"service_tier", P_IDENT},
    {"prompt_cache_key", P_IDENT}, {"safety_identifier", P_IDENT}, {"prompt_cache_retention", P_IDENT},
    {"prompt_cache_options", P_IDENT},
    {"functions", P_UNSUPPORTED}, {"function_call", P_UNSUPPORTED}, {"audio", P_UNSUPPORTED},
    {"modalities", P_UNSUPPORTED}, {"prediction", P_UNSUPPORTED}, {"web_search_options", P_UNSUPPORTED},
    {"reasoning_effort", P_UNSUPPORTED}, {"verbosity", P_UNSUPPORTED}, {"thinking", P_UNSUPPORTED},
    {"moderation", P_UNSUPPORTED},
};

/* The members of a completions body (api_completion.c reads prompt, suffix,
 * echo, logprobs and best_of; the rest as for chat). */
static const char *const CMPL_PARAMS[] = {
    "model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "top_k", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "n", "best_of", "seed", "stop", "stream", "stream_options",
    "echo", "user",
};

static int check_params(const tg_json_t *root, int cmpl, api_err_t *e) {
    const tg_json_t *m;
    int oom = 0;
    size_t dl;
    const char *dup = tg_json_dup_key(root, &dl, &oom);
    if (oom) return OOM();
    if (dup) {
        char p[64];
        snprintf(p, sizeof p, "%.*s", (int)(dl > 60 ? 60 : dl), memchr(dup, 0, dl) ? "?" : dup);
        return BAD(p, "invalid_value", "Duplicate key '%s' in the request body.", p);
    }
    TG_JSON_FOREACH(m, root) {
        size_t kl;
        const char *k = tg_json_key(m, &kl);
        int found = -1;
        for (size_t i = 0; !cmpl && i < sizeof PARAMS / sizeof *PARAMS && found < 0; i++)
            if (kl == strlen(PARAMS[i].name) && !memcmp(k, PARAMS[i].name, kl)) found = (int)i;
        for (size_t i = 0; cmpl && i < sizeof CMPL_PARAMS / sizeof *CMPL_PARAMS && found < 0; i++)
            if (kl == strlen(CMPL_PARAMS[i]) && !memcmp(k, CMPL_PARAMS[i], kl)) found = 0; /* "model": P_READ */
        if (memchr(k, 0, kl))
            return BAD(NULL, "unknown_parameter", "Unrecognized request argument supplied (a name holding U+0000).");
        if (found >= 0 && (PARAMS[found].kind != P_UNSUPPORTED || is_null(m))) continue;
        char p[64]; /* the name for the error */
        snprintf(p, sizeof p, "%.*s", (int)(kl > 60 ? 60 : kl), k);
        if (found < 0)
            return BAD(p, "unknown_parameter", "Unrecognized request argument supplied: %s", p);
        if (PARAMS[found].kind == P_UNSUPPORTED && !is_null(m))
            return BAD(p, "unsupported_parameter", "Unsupported parameter: '%s' is not supported by this server.", p);
    }
    /* the identifiers: shapes only */
    const tg_json_t *v = tg_json_get(root, "user");
    if (!is_null(v) && tg_json_type(v) != TG_JSON_STRING)
        return BAD("user", "invalid_type", "Invalid type for 'user': expected a string, but got %s.", type_name(v));
    v = tg_json_get(root, "metadata");
    if (!is_null(v) && tg_json_type(v) != TG_JSON_OBJECT)
        return BAD("metadata", "invalid_type", "Invalid type for 'metadata': expected an object, but got %s.",
                   type_name(v));
    v = tg_json_get(root, "store");
    int b;
    if (!is_null(v) && tg_json_bool(v, &b))
        return BAD("store", "invalid_type", "Invalid type for 'store': expected a boolean, but got %s.", type_name(v));
    if (!is_null(v) && b)
        return BAD("store", "unsupported_parameter",
                   "Unsupported value: 'store' true is not supported by this server (completions are not stored).");
    v = tg_json_get(root, "prompt_cache_options");
    if (!is_null(v) && tg_json_type(v) != TG_JSON_OBJECT)
        return BAD("prompt_cache_options", "invalid_type",
                   "Invalid type for 'prompt_cache_options': expected an object, but got %s.", type_name(v));
    static const char *const strs[] = {"service_tier", "prompt_cache_key", "safety_identifier",
                                       "prompt_cache_retention"};
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        v = tg_json_get(root, strs[i]);
        if (!is_null(v) && tg_json_type(v) != TG_JSON_STRING)
            return BAD(strs[i], "invalid_type", "Invalid type for '%s': expected a string, but got %s.", strs[i],
                       type_name(v));
    }
    return 0;
}

static int req_read(api_chat_req_t *r, const tg_json_t *root, int cmpl, api_err_t *e) {
    const tg_json_t *v;
    int own = r->own_root;
    tg_json_t *keep_root = r->root;
    memset(r, 0, sizeof *r);
    r->root = keep_root;
    r->own_root = own;
    r->temperature = 1.0;
    r->top_p = 1.0;
    r->parallel_tool_calls = 1;
    if (tg_json_type(root) != TG_JSON_OBJECT) {
        BAD(NULL, "invalid_json", "The request body must be a JSON object.");
        goto fail;
    }
    if (check_params(root, cmpl, e)) goto fail;
    v = tg_json_get(root, "model");
    if (!v) {
        BAD("model", "missing_required_parameter", "Missing required parameter: 'model'.");
        goto fail;
    }
    if (!(r->model = cstr(v)) || !r->model[0]) {
        BAD("model", "invalid_type", "Invalid type for 'model': expected a non-empty string without U+0000, but got %s.",
            tg_json_type(v) == TG_JSON_STRING ? "another string" : type_name(v));
        goto fail;
    }
    if (!cmpl && parse_messages(r, tg_json_get(root, "messages"), e)) goto fail;

    /* max_tokens and max_completion_tokens: the smaller when both are given */
    int64_t x, y;
    int gx, gy;
    if (get_int(root, "max_tokens", 1, API_MAX_TOKENS_LIMIT, &x, &gx, e)) goto fail;
    if (get_int(root, "max_completion_tokens", 1, API_MAX_TOKENS_LIMIT, &y, &gy, e)) goto fail;
    if (gx) r->max_tokens = (long)x;
    if (gy && (!gx || y < x)) r->max_tokens = (long)y;
    if (get_num(root, "temperature", 0, 2, &r->temperature, e)) goto fail;
    if (get_num(root, "top_p", 0, 1, &r->top_p, e)) goto fail;
    if (get_int(root, "top_k", -1, 1000000, &x, &gx, e)) goto fail;
    if (gx && x > 0) r->top_k = (int)x;
    if (get_num(root, "presence_penalty", -2, 2, &r->presence_penalty, e)) goto fail;
    if (get_num(root, "frequency_penalty", -2, 2, &r->frequency_penalty, e)) goto fail;
    if (get_seed(r, root, e)) goto fail;
    if (get_int(root, "n", -1000000000, 1000000000, &x, &gx, e)) goto fail;
    r->n = 1;
    if (gx && (x < 1 || x > API_MAX_N)) {
        BAD("n", "invalid_value", "Invalid 'n': %lld is out of range [1, %d].", (long long)x, API_MAX_N);
        goto fail;
    }
    if (gx) r->n = (int)x;
    if (!cmpl && get_bool(root, "logprobs", &r->logprobs, e)) goto fail;
    if (get_int(root, "top_logprobs", 0, API_MAX_TOP_LOGPROBS, &x, &gx, e)) goto fail; /* not a completions member */
    if (gx) {
        if (!r->logprobs) {
            BAD("top_logprobs", "invalid_value", "Invalid 'top_logprobs': it requires 'logprobs' to be true.");
            goto fail;
        }
        r->top_logprobs = (int)x;
    }
    if (parse_logit_bias(r, tg_json_get(root, "logit_bias"), e)) goto fail;
    if (parse_stop(r, tg_json_get(root, "stop"), e)) goto fail;
    if (get_bool(root, "stream", &r->stream, e)) goto fail;
    v = tg_json_get(root, "stream_options");
    if (!is_null(v)) {
        if (tg_json_type(v) != TG_JSON_OBJECT) {
            BAD("stream_options", "invalid_type", "Invalid type for 'stream_options': expected an object, but got %s.",
                type_name(v));
            goto fail;
        }
        const tg_json_t *k;
        TG_JSON_FOREACH(k, v) {
            size_t kl;
            const char *ks = tg_json_key(k, &kl);
            /* include_obfuscation: OpenAI pads deltas with random text against
             * side channels; there is no padding here, so false and true are alike */
            if (!(kl == 13 && !memcmp(ks, "include_usage", 13)) &&
                !(kl == 19 && !memcmp(ks, "include_obfuscation", 19))) {
                BAD("stream_options", "unknown_parameter", "Unrecognized request argument supplied: stream_options.%.*s",
                    (int)(kl > 64 ? 64 : kl), ks);
                goto fail;
            }
        }
        if (get_bool(v, "include_usage", &r->include_usage, e)) {
            snprintf(e->param, sizeof e->param, "stream_options.include_usage");
            goto fail;
        }
        int obf;
        if (get_bool(v, "include_obfuscation", &obf, e)) {
            snprintf(e->param, sizeof e->param, "stream_options.include_obfuscation");
            goto fail;
        }
    }
    if (parse_tools(r, tg_json_get(root, "tools"), e)) goto fail;
    if (parse_tool_choice(r, tg_json_get(root, "tool_choice"), e)) goto fail;
    if (get_bool(root, "parallel_tool_calls", &r->parallel_tool_calls, e)) goto fail;
    if (parse_response_format(r, tg_json_get(root, "response_format"), e)) goto fail;
    if (r->format != API_FORMAT_TEXT &&
        (r->tool_choice == API_TOOL_CHOICE_REQUIRED || r->tool_choice == API_TOOL_CHOICE_NAMED)) {
        BAD("response_format", "invalid_value",
            "Invalid 'response_format': a JSON answer cannot be combined with a required tool call.");
        goto fail;
    }
    if (r->prefix && (r->format != API_FORMAT_TEXT || r->tool_choice == API_TOOL_CHOICE_REQUIRED ||
                      r->tool_choice == API_TOOL_CHOICE_NAMED)) { /* their grammars start a fresh answer */
        char p[48];
        path_at(p, sizeof p, "messages", r->n_msgs - 1, ".prefix");
        BAD(p, "invalid_value", "Invalid '%s': a prefix cannot be continued as a %s.", p,
            r->format != API_FORMAT_TEXT ? "JSON answer ('response_format')" : "required tool call ('tool_choice')");
        goto fail;
    }
    if (cmpl && api_cmpl_members(r, root, e)) goto fail;
    return 0;
fail:
    api_chat_req_free(r);
    return -1;
}

int api_chat_req_read(api_chat_req_t *r, const tg_json_t *root, api_err_t *e) { return req_read(r, root, 0, e); }
int api_cmpl_req_read(api_chat_req_t *r, const tg_json_t *root, api_err_t *e) { return req_read(r, root, 1, e); }

/* The field of a body whose JSON nests deeper than the reader takes (the
 * bracket at byte off): the body is valid JSON up to there, so a scan of it
 * with a path of its first four levels finds where the bracket sits.  The
 * field is a schema's (response_format.json_schema.schema,
 * tools[i].function.parameters), else the top-level member; "" when the root
 * is no object. */
static void deep_field(const char *body, size_t len, size_t off, char *field, size_t cap) {
    enum { LV = 4 };
    char key[LV][64];
    size_t klen[LV] = {0}, idx[LV] = {0};
    int is_obj[LV] = {0}, want_key[LV] = {0}, d = 0; /* d: containers open; level d-1 the innermost */
    *field = 0;
    for (size_t i = 0; i < len && i < off; i++) {
        char c = body[i];
        if (c == '"') {
            size_t j = i + 1;
            while (j < len && body[j] != '"') j += body[j] == '\\' ? 2 : 1;
            if (d >= 1 && d <= LV && is_obj[d - 1] && want_key[d - 1]) {
                size_t n = j - i - 1 < sizeof key[0] - 1 ? j - i - 1 : sizeof key[0] - 1;
                memcpy(key[d - 1], body + i + 1, n);
                klen[d - 1] = n, want_key[d - 1] = 0;
            }
            i = j;
        } else if (c == '{' || c == '[') {
            if (d < LV) is_obj[d] = c == '{', want_key[d] = c == '{', idx[d] = 0, klen[d] = 0;
            d++;
        } else if (c == '}' || c == ']') {
            d--;
        } else if (c == ',' && d >= 1 && d <= LV) {
            if (is_obj[d - 1]) want_key[d - 1] = 1;
            else idx[d - 1]++;
        }
    }
    if (d < 1 || !is_obj[0]) return;
#define SEG_IS(l, s) (d > (l) && is_obj[l] && klen[l] == strlen(s) && !memcmp(key[l], s, klen[l]))
    if (SEG_IS(0, "response_format") && SEG_IS(1, "json_schema") && SEG_IS(2, "schema")) {
        tg_str_copy(field, cap, "response_format.json_schema.schema");
    } else if (SEG_IS(0, "tools") && d > 1 && !is_obj[1] && SEG_IS(2, "function") && SEG_IS(3, "parameters")) {
        path_at(field, cap, "tools", idx[1], ".function.parameters");
    } else {
        snprintf(field, cap, "%.*s", (int)klen[0], key[0]);
    }
#undef SEG_IS
}

int api_json_err(api_err_t *e, const char *body, size_t len, const tg_json_err_t *jerr) {
    if (jerr->msg && !strcmp(jerr->msg, "out of memory")) return OOM(); /* ours, not the client's: a 500 */
    if (jerr->msg && strstr(jerr->msg, "surrogate"))
        return BAD(NULL, "invalid_utf8", "A string in the request is not valid UTF-8: %s.", jerr->text);
    if (jerr->msg && !strcmp(jerr->msg, "nesting too deep")) {
        char f[64];
        deep_field(body, len, jerr->offset, f, sizeof f);
        if (*f)
            return BAD(f, "invalid_value", "Invalid '%s': nested deeper than %d arrays and objects (%s).", f,
                       TG_JSON_MAX_DEPTH, jerr->text);
    }
    return BAD(NULL, "invalid_json",
               "We could not parse the JSON body of your request (%s). The body must be a JSON object.", jerr->text);
}

static int req_parse(api_chat_req_t *r, const char *body, size_t len, int cmpl, api_err_t *e) {
    memset(r, 0, sizeof *r);
    if (!tg_utf8_valid(body, len)) return BAD(NULL, "invalid_utf8", "The request body is not valid UTF-8.");
    tg_json_err_t jerr;
    tg_json_t *root = tg_json_parse(body, len, NULL, &jerr);
    if (!root) return api_json_err(e, body, len, &jerr);
    r->root = root;
    r->own_root = 1;
    return req_read(r, root, cmpl, e);
}

int api_chat_req_parse(api_chat_req_t *r, const char *body, size_t len, api_err_t *e) {
    return req_parse(r, body, len, 0, e);
}
int api_cmpl_req_parse(api_chat_req_t *r, const char *body, size_t len, api_err_t *e) {
    return req_parse(r, body, len, 1, e);
}

void api_chat_req_free(api_chat_req_t *r) {
    for (size_t i = 0; i < r->n_owned; i++) free(r->owned[i]);
    free(r->owned);
    free(r->msgs);
    free(r->calls);
    for (size_t i = 0; i < r->n_tools; i++) free(r->tools[i].json);
    free(r->tools);
    api_schema_free(&r->tool_schema);
    free(r->bias);
    api_schema_free(&r->schema);
    if (r->own_root) tg_json_free(r->root);
    memset(r, 0, sizeof *r);
}

char *api_chat_render(const api_chat_req_t *r, tok_tmpl_kind_t kind, size_t *len, api_err_t *e) {
    if (r->cmpl) return api_cmpl_render(r, kind, len, e);
    const char *tj[API_MAX_TOOLS];
    size_t tl[API_MAX_TOOLS];
    for (size_t i = 0; i < r->n_tools; i++) {
        tj[i] = r->tools[i].json;
        tl[i] = r->tools[i].json_len;
    }
    char err[256];
    /* a prefix (DeepSeek's chat prefix completion): the conversation before
     * it with the generation prompt, then its text, the answer's start (the
     * template would close it with the end of sentence) */
    size_t n_msgs = r->n_msgs - (r->prefix ? 1 : 0);
    if (r->prefix && kind == TOK_TMPL_DEEPSEEK_R1) {
        char p[48];
        path_at(p, sizeof p, "messages", n_msgs, ".prefix");
        BAD(p, "unsupported_parameter", "Unsupported parameter: '%s': a prefix of a reasoning model's answer is not "
            "served (its generation prompt opens the reasoning).", p);
        return NULL;
    }
    char *s = tok_chat_render_tools(kind, r->msgs, n_msgs, tj, tl, r->n_tools, 1, len, err, sizeof err);
    if (!s) {
        if (!strcmp(err, "out of memory")) OOM();
        else BAD(r->n_tools && kind == TOK_TMPL_MIXTRAL ? "tools" : "messages", "invalid_value",
                 "Invalid '%s': %s", r->n_tools && kind == TOK_TMPL_MIXTRAL ? "tools" : "messages", err);
        return NULL;
    }
    if (r->prefix) {
        const tok_chat_msg_t *pm = &r->msgs[n_msgs];
        char *t = realloc(s, *len + pm->content_len + 1);
        if (!t) {
            free(s);
            OOM();
            return NULL;
        }
        memcpy(t + *len, pm->content, pm->content_len);
        *len += pm->content_len;
        t[*len] = 0;
        s = t;
    }
    return s;
}

int api_chat_check_vocab(const api_chat_req_t *r, int32_t n_vocab, api_err_t *e) {
    for (size_t i = 0; i < r->n_bias; i++)
        if (r->bias[i].id >= n_vocab)
            return BAD("logit_bias", "invalid_value",
                       "Invalid 'logit_bias': token id %d is outside the vocabulary (%d ids).", (int)r->bias[i].id,
                       (int)n_vocab);
    return 0;
}

/* ---- prefix key ------------------------------------------------------------- */

uint64_t api_chat_prefix_key(const api_chat_req_t *r, tok_tmpl_kind_t kind, const tok_t *tok) {
    api_err_t e;
    size_t n = 0;
    char *text = api_chat_render(r, kind, &n, &e);
    if (!text) return 0;
    /* the first blocks' tokens come from the prompt's start: cut it at a
     * character boundary far past them */
    size_t cut = n < 4096 ? n : 4096;
    while (cut < n && cut > 0 && ((unsigned char)text[cut] & 0xC0) == 0x80) cut--;
    int32_t *ids = NULL;
    long k = cut ? tok_encode(tok, text, cut, 1, &ids) : 0;
    free(text);
    uint64_t key = tg_prefix_affinity_key(ids, k);
    free(ids);
    return key;
}
