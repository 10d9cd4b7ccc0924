/* libFuzzer target for the completions reader (api/api_completion.c through
 * api_chat.c's one reader): any bytes as a POST /v1/completions body.
 * Invariants (a broken one traps): a refusal is a 4xx/5xx with a message and
 * a JSON error body; an accepted request is a completions request with a
 * model, a prompt of valid UTF-8, no messages, max_tokens in 1..limit,
 * legacy logprobs -1..20 mirrored in logprobs/top_logprobs, and renders with
 * every template kind (BOS first; a suffix in the FIM markers) or refuses a
 * suffix on Mixtral's with a 400; a second read of the same document gives
 * the same result.  make test-api replays fuzz/api/corpus-completion.
 *
 *   make fuzz-api-completion       build build/fuzz/fuzz_api_completion (clang)
 *   make fuzz-api-completion-run   run it for FUZZ_SECONDS (default 60) */
#include "../../api/api_completion.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    api_chat_req_t r;
    api_err_t e;
    memset(&e, 0, sizeof e);
    if (api_cmpl_req_parse(&r, (const char *)data, size, &e)) {
        char *j = api_err_json(&e);
        if (!j || e.status < 400 || e.status > 599 || !e.message[0]) __builtin_trap();
        tg_json_t *back = tg_json_parse(j, strlen(j), NULL, NULL);
        if (!back) __builtin_trap();
        tg_json_free(back);
        free(j);
        return 0;
    }
    if (!r.cmpl || !r.model || !r.model[0] || r.n_msgs || !r.prompt || !tg_utf8_valid(r.prompt, r.prompt_len))
        __builtin_trap();
    if (r.suffix && !tg_utf8_valid(r.suffix, r.suffix_len)) __builtin_trap();
    if (r.max_tokens < 1 || r.max_tokens > API_MAX_TOKENS_LIMIT || r.n < 1 || r.n > API_MAX_N ||
        r.cmpl_logprobs < -1 || r.cmpl_logprobs > API_MAX_CMPL_LOGPROBS ||
        r.logprobs != (r.cmpl_logprobs >= 0) || (r.logprobs && r.top_logprobs != r.cmpl_logprobs) ||
        (r.logprobs && r.echo) || r.n_tools || r.format != API_FORMAT_TEXT)
        __builtin_trap();
    for (int k = TOK_TMPL_DEEPSEEK_V3; k <= TOK_TMPL_MIXTRAL; k++) {
        size_t n = 0;
        api_err_t e2;
        memset(&e2, 0, sizeof e2);
        char *s = api_chat_render(&r, (tok_tmpl_kind_t)k, &n, &e2);
        if (!s) {
            if (e2.status != 400 || k != TOK_TMPL_MIXTRAL || !r.suffix || strcmp(e2.param, "suffix")) __builtin_trap();
            continue;
        }
        size_t want = r.prompt_len + (k == TOK_TMPL_MIXTRAL ? 3 : strlen(DS_BOS)) +
                      (r.suffix ? strlen(FIM_BEGIN FIM_HOLE FIM_END) + r.suffix_len : 0);
        if (n != want || memcmp(s, k == TOK_TMPL_MIXTRAL ? "<s>" : DS_BOS, k == TOK_TMPL_MIXTRAL ? 3 : strlen(DS_BOS)))
            __builtin_trap();
        free(s);
    }
    api_chat_req_t r2;
    memset(&r2, 0, sizeof r2);
    if (api_cmpl_req_read(&r2, r.root, &e) || r2.max_tokens != r.max_tokens || r2.prompt_len != r.prompt_len ||
        r2.suffix_len != r.suffix_len || r2.stream != r.stream || r2.echo != r.echo || r2.n != r.n)
        __builtin_trap();
    api_chat_req_free(&r2);
    api_chat_req_free(&r);
    return 0;
}
