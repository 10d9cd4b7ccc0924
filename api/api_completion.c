/* api_completion.c — POST /v1/completions (OpenAI's legacy completions,
 * DeepSeek's FIM completion at /beta/completions): the members only its body
 * has, and its prompt.  The members it shares with chat (sampling, stop,
 * stream, n, seed, logit_bias, the unknown-parameter 400) are read by
 * api_chat.c's one reader (api_cmpl_req_read), so both endpoints accept and
 * refuse alike.
 *
 * The prompt is the BOS token's text and the prompt; with a suffix,
 * DeepSeek's fill-in-the-middle format: BOS <｜fim▁begin｜> prompt
 * <｜fim▁hole｜> suffix <｜fim▁end｜>.  It is encoded with special tokens
 * recognised, like a rendered chat prompt, so the gateway's count and the
 * worker's prompt_tokens agree. */
#include "api-int.h"

#include <stdlib.h>
#include <string.h>

#define BAD(param, code, ...) api_err(e, 400, "invalid_request_error", param, code, __VA_ARGS__)

#define FW_BAR "\xef\xbd\x9c" /* U+FF5C */
#define LOW "\xe2\x96\x81"    /* U+2581 */
#define DS_BOS "<" FW_BAR "begin" LOW "of" LOW "sentence" FW_BAR ">"
#define FIM_BEGIN "<" FW_BAR "fim" LOW "begin" FW_BAR ">"
#define FIM_HOLE "<" FW_BAR "fim" LOW "hole" FW_BAR ">"
#define FIM_END "<" FW_BAR "fim" LOW "end" FW_BAR ">"

static int is_null(const tg_json_t *v) { return !v || tg_json_type(v) == TG_JSON_NULL; }

static const char *kind_name(const tg_json_t *v) {
    switch (tg_json_type(v)) {
    case TG_JSON_NULL: return "null";
    case TG_JSON_BOOL: return "a boolean";
    case TG_JSON_NUMBER: return "a number";
    case TG_JSON_STRING: return "a string";
    case TG_JSON_ARRAY: return "an array";
    default: return "an object";
    }
}

/* An integer member in [lo, hi]; *given 0 when absent or null. */
static int get_small_int(const tg_json_t *root, const char *name, int lo, int hi, int *out, int *given,
                         api_err_t *e) {
    const tg_json_t *v = tg_json_get(root, name);
    int64_t x;
    *given = 0;
    if (is_null(v)) return 0;
    if (tg_json_type(v) != TG_JSON_NUMBER || tg_json_int64(v, &x))
        return BAD(name, "invalid_type", "Invalid type for '%s': expected an integer, but got %s.", name,
                   tg_json_type(v) == TG_JSON_NUMBER ? "a decimal" : kind_name(v));
    if (x < lo || x > hi)
        return BAD(name, "invalid_value", "Invalid '%s': %lld is out of range [%d, %d].", name, (long long)x, lo, hi);
    *out = (int)x;
    *given = 1;
    return 0;
}

int api_cmpl_members(api_chat_req_t *r, const tg_json_t *root, api_err_t *e) {
    r->cmpl = 1;
    r->cmpl_logprobs = -1;
    /* prompt: a string, or an array holding one string (what SDKs send for a
     * list of one); token-id arrays and batches of prompts are not served */
    const tg_json_t *p = tg_json_get(root, "prompt");
    if (!p) return BAD("prompt", "missing_required_parameter", "Missing required parameter: 'prompt'.");
    if (tg_json_type(p) == TG_JSON_ARRAY) {
        if (tg_json_len(p) != 1 || tg_json_type(tg_json_at(p, 0)) != TG_JSON_STRING)
            return BAD("prompt", "invalid_value",
                       "Invalid 'prompt': expected a string or an array of one string; token ids and several "
                       "prompts in one request are not supported.");
        p = tg_json_at(p, 0);
    }
    if (tg_json_type(p) != TG_JSON_STRING)
        return BAD("prompt", "invalid_type", "Invalid type for 'prompt': expected a string, but got %s.",
                   kind_name(p));
    r->prompt = tg_json_str(p, &r->prompt_len);
    const tg_json_t *s = tg_json_get(root, "suffix");
    if (!is_null(s)) {
        if (tg_json_type(s) != TG_JSON_STRING)
            return BAD("suffix", "invalid_type", "Invalid type for 'suffix': expected a string, but got %s.",
                       kind_name(s));
        r->suffix = tg_json_str(s, &r->suffix_len);
    }
    const tg_json_t *ec = tg_json_get(root, "echo");
    if (!is_null(ec) && tg_json_bool(ec, &r->echo))
        return BAD("echo", "invalid_type", "Invalid type for 'echo': expected a boolean, but got %s.", kind_name(ec));
    int k, given;
    if (get_small_int(root, "logprobs", 0, API_MAX_CMPL_LOGPROBS, &k, &given, e)) return -1;
    if (given) {
        r->cmpl_logprobs = k;
        r->logprobs = 1;
        r->top_logprobs = k;
    }
    if (given && r->echo)
        return BAD("logprobs", "unsupported_parameter",
                   "Unsupported parameter: 'logprobs' together with 'echo' (log-probabilities of the prompt's "
                   "tokens) is not supported; ask for one of them.");
    if (get_small_int(root, "best_of", 1, API_MAX_N, &k, &given, e)) return -1;
    if (given && k != 1 && k != r->n)
        return BAD("best_of", "invalid_value",
                   "Invalid 'best_of': %d; only best_of equal to n (%d) or 1 is supported (every choice sampled is "
                   "returned).", k, r->n);
    if (r->max_tokens <= 0) r->max_tokens = API_CMPL_DEFAULT_MAX_TOKENS;
    return 0;
}

int api_cmpl_check(const api_chat_req_t *r, tok_tmpl_kind_t kind, api_err_t *e) {
    if (r->suffix && kind == TOK_TMPL_MIXTRAL)
        return BAD("suffix", "unsupported_parameter",
                   "Unsupported parameter: 'suffix' (fill-in-the-middle) needs a model whose tokenizer has FIM "
                   "tokens; this model's has none.");
    return 0;
}

char *api_cmpl_render(const api_chat_req_t *r, tok_tmpl_kind_t kind, size_t *len, api_err_t *e) {
    if (api_cmpl_check(r, kind, e)) return NULL;
    tg_buf_t b = {0};
    tg_buf_puts(&b, kind == TOK_TMPL_MIXTRAL ? "<s>" : DS_BOS);
    if (r->suffix) tg_buf_puts(&b, FIM_BEGIN);
    tg_buf_put(&b, r->prompt ? r->prompt : "", r->prompt_len);
    if (r->suffix) {
        tg_buf_puts(&b, FIM_HOLE);
        tg_buf_put(&b, r->suffix, r->suffix_len);
        tg_buf_puts(&b, FIM_END);
    }
    if (b.oom || !b.p) {
        tg_buf_free(&b);
        api_err(e, 500, "server_error", NULL, NULL, "out of memory");
        return NULL;
    }
    *len = b.len;
    return b.p;
}
