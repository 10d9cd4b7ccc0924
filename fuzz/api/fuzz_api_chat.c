/* libFuzzer target for the shared request reader (api/api_chat.c): any
 * bytes as a POST /v1/chat/completions body.  Invariants (a broken one
 * traps): a refusal is a 4xx/5xx with a message and a JSON error body; an
 * accepted request has a model, messages with valid UTF-8 contents, limits
 * in range, tools whose tojson text parses back as JSON, and renders with
 * every template kind or refuses with an error; a second read of the same
 * document gives the same result.  make test replays fuzz/api/corpus.
 *
 *   make fuzz-api       build build/fuzz/fuzz_api_chat (clang)
 *   make fuzz-api-run   run it for FUZZ_SECONDS (default 60) */
#include "../../api/api_chat.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    api_chat_req_t r;
    api_err_t e;
    memset(&e, 0, sizeof e);
    if (api_chat_req_parse(&r, (const char *)data, size, &e)) {
        char *j = api_err_json(&e);
        if (!j || e.status < 400 || e.status > 599 || !e.message[0]) __builtin_trap();
        tg_json_t *back = tg_json_parse(j, strlen(j), NULL, NULL);
        if (!back) __builtin_trap();
        tg_json_free(back);
        free(j);
        return 0;
    }
    if (!r.model || !r.model[0] || !r.n_msgs) __builtin_trap();
    for (size_t i = 0; i < r.n_msgs; i++) {
        const tok_chat_msg_t *m = &r.msgs[i];
        if (!m->role || (!m->content && !m->n_tool_calls)) __builtin_trap();
        size_t cl = m->content_len ? m->content_len : m->content ? strlen(m->content) : 0;
        if (m->content && !tg_utf8_valid(m->content, cl)) __builtin_trap();
    }
    if (r.max_tokens < 0 || r.max_tokens > API_MAX_TOKENS_LIMIT || r.n_stop > API_MAX_STOP ||
        r.top_logprobs > API_MAX_TOP_LOGPROBS || r.n_tools > API_MAX_TOOLS || r.top_k < 0)
        __builtin_trap();
    if ((r.tool_choice == API_TOOL_CHOICE_NAMED) && (r.tool_named < 0 || (size_t)r.tool_named >= r.n_tools))
        __builtin_trap();
    for (size_t i = 0; i < r.n_tools; i++) {
        tg_json_t *t = tg_json_parse(r.tools[i].json, r.tools[i].json_len, NULL, NULL);
        if (!t || tg_json_type(t) != TG_JSON_OBJECT) __builtin_trap();
        tg_json_free(t);
    }
    /* a compiled schema's bounds are in range and every node has a shortest value */
    const api_schema_t *scs[2] = {&r.schema, &r.tool_schema};
    for (int q = 0; q < 2; q++)
        for (int i = 0; i < scs[q]->n_nodes; i++) {
            const api_schema_node_t *nd = &scs[q]->nodes[i];
            api_num_t z = {0};
            if (nd->nscale > API_NUM_MAX_SCALE || nd->nlo < -API_NUM_LIMIT || nd->nhi > API_NUM_LIMIT ||
                nd->nhi < -API_NUM_LIMIT || nd->nlo > API_NUM_LIMIT ||
                ((nd->nb & API_NB_LO) && (nd->nb & API_NB_HI) && nd->nlo > nd->nhi) ||
                (nd->max_items >= 0 && nd->min_items > nd->max_items) ||
                (nd->max_chars >= 0 && nd->min_chars > nd->max_chars) || nd->min_len < 0 ||
                nd->min_len >= API_NUM_NEVER ||
                (api_num_bounded(nd) && (nd->types & (API_ST_INT | API_ST_NUM)) && api_num_cost(nd, &z) >= API_NUM_NEVER))
                __builtin_trap();
        }
    if (r.prefix && strcmp(r.msgs[r.n_msgs - 1].role, "assistant")) __builtin_trap();
    for (int k = TOK_TMPL_DEEPSEEK_V3; k <= TOK_TMPL_MIXTRAL; k++) {
        size_t n = 0;
        api_err_t e2;
        memset(&e2, 0, sizeof e2);
        char *s = api_chat_render(&r, (tok_tmpl_kind_t)k, &n, &e2);
        if (!s && (e2.status != 400 || !e2.message[0])) __builtin_trap();
        free(s);
    }
    /* the gateway's path: the same document, borrowed */
    api_chat_req_t r2;
    memset(&r2, 0, sizeof r2);
    if (api_chat_req_read(&r2, r.root, &e) || r2.max_tokens != r.max_tokens || r2.n_msgs != r.n_msgs ||
        r2.n_tools != r.n_tools || r2.stream != r.stream)
        __builtin_trap();
    api_chat_req_free(&r2);
    api_chat_req_free(&r);
    return 0;
}
