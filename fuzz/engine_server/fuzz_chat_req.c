/* libFuzzer target: POST /v1/chat/completions bodies through the shared
 * reader (api/api_chat.c, also fuzzed alone in fuzz/api/), the max_tokens
 * rule and the response builders (engine/server/eng_server_req.c).
 * A broken invariant traps.  make test-engine-server replays the seed corpus
 * fuzz/engine_server/corpus/chat_req through a plain build (fuzz/replay.c).
 *
 *   make fuzz-engine-server            build build/fuzz/fuzz_chat_req
 *   make fuzz-engine-server-run        run it for FUZZ_SECONDS (default 60)
 */
#include "../../engine/server/eng_server_req.c"
#include "../../api/api_chat.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    api_chat_req_t r;
    api_err_t e;
    if (api_chat_req_parse(&r, (const char *)data, size, &e)) {
        char *j = api_err_json(&e);
        if (!j || e.status < 400 || e.status > 599) __builtin_trap();
        free(j);
        return 0;
    }
    if (!r.model || !r.n_msgs) __builtin_trap();
    for (size_t i = 0; i < r.n_msgs; i++) {
        const tok_chat_msg_t *m = &r.msgs[i];
        if (!m->role || (!m->content && !m->n_tool_calls)) __builtin_trap();
        size_t cl = m->content_len ? m->content_len : m->content ? strlen(m->content) : 0;
        if (m->content && !tg_utf8_valid(m->content, cl)) __builtin_trap();
    }
    eng_limits_t lim = {.context = 4096, .default_max = 4096};
    int mt = 0;
    if (!eng_chat_max_tokens(&r, (int)(size % 5000), &lim, &mt, &e) && (mt < 1 || mt > 4096))
        __builtin_trap();
    eng_usage_t u = {(int)size, mt, 0, 0};
    const char *text = r.msgs[0].content ? r.msgs[0].content : "";
    size_t tl = r.msgs[0].content ? r.msgs[0].content_len : 0;
    char *a = eng_resp_completion("chatcmpl-x", 1, r.model, text, tl, NULL, 0, NULL, 0, ENG_FINISH_STOP, &u, NULL);
    char *b = eng_resp_chunk("chatcmpl-x", 1, r.model, NULL, text, tl, text, tl, ENG_FINISH_NONE, 1, NULL, NULL);
    size_t n;
    char *ev = b ? eng_sse_event(b, &n) : NULL;
    if (!a || !b || !ev) __builtin_trap(); /* output is always one line of JSON */
    free(a), free(b), free(ev);
    api_chat_req_free(&r);
    return 0;
}
