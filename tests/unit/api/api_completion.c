/* Unit tests for api/api_completion.c: the completions body through the one
 * reader (members, defaults, every 400 naming its parameter), and its prompt
 * (BOS, DeepSeek's FIM format, Mixtral refusing a suffix).
 *
 *   api_completion */
#include "../../../api/api_completion.c"

#include "tg_test.h"

static int parse(const char *body, api_chat_req_t *r, api_err_t *e) {
    memset(e, 0, sizeof *e);
    return api_cmpl_req_parse(r, body, strlen(body), e);
}

static void expect_400(const char *body, const char *param, const char *code) {
    api_chat_req_t r;
    api_err_t e;
    int rc = parse(body, &r, &e);
    CHECK_EQ_I(rc, -1);
    CHECK_EQ_I(e.status, 400);
    CHECK_EQ_S(e.param, param);
    CHECK_EQ_S(e.code, code);
    if (rc == 0) {
        fprintf(stderr, "  body accepted: %s\n", body);
        api_chat_req_free(&r);
    }
}

static void test_members(void) {
    api_chat_req_t r;
    api_err_t e;
    CHECK_EQ_I(parse("{\"model\":\"m\",\"prompt\":\"a\\u0000b\"}", &r, &e), 0);
    CHECK(r.cmpl && r.prompt_len == 3 && !memcmp(r.prompt, "a\0b", 3) && !r.suffix);
    CHECK_EQ_I(r.max_tokens, API_CMPL_DEFAULT_MAX_TOKENS);
    CHECK_EQ_I(r.cmpl_logprobs, -1);
    CHECK_EQ_I(r.logprobs, 0);
    CHECK_EQ_I(r.n_msgs, 0);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\",\"prompt\":[\"p\"],\"suffix\":\"s\",\"max_tokens\":7,\"logprobs\":3,\"n\":2,"
                     "\"best_of\":2,\"echo\":false,\"stop\":[\"x\"],\"stream\":true,\"stream_options\":"
                     "{\"include_usage\":true},\"seed\":-1,\"user\":\"u\",\"top_k\":5,\"logit_bias\":{\"5\":1},"
                     "\"presence_penalty\":1,\"frequency_penalty\":1,\"temperature\":0.5,\"top_p\":0.9}", &r, &e), 0);
    CHECK(r.prompt_len == 1 && r.prompt[0] == 'p' && r.suffix_len == 1 && r.suffix[0] == 's');
    CHECK(r.max_tokens == 7 && r.cmpl_logprobs == 3 && r.logprobs == 1 && r.top_logprobs == 3 && r.n == 2);
    CHECK(r.n_stop == 1 && r.stream && r.include_usage && r.has_seed && r.seed == UINT64_MAX && r.top_k == 5);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\",\"prompt\":\"\",\"suffix\":null,\"logprobs\":null,\"best_of\":1,\"n\":3}", &r, &e), 0);
    CHECK(r.prompt_len == 0 && !r.suffix && r.cmpl_logprobs == -1 && r.n == 3);
    api_chat_req_free(&r);
}

static void test_400s(void) {
    expect_400("{\"model\":\"m\"}", "prompt", "missing_required_parameter");
    expect_400("{\"prompt\":\"a\"}", "model", "missing_required_parameter");
    expect_400("{\"model\":\"m\",\"prompt\":null}", "prompt", "invalid_type");
    expect_400("{\"model\":\"m\",\"prompt\":[1,2]}", "prompt", "invalid_value");
    expect_400("{\"model\":\"m\",\"prompt\":[]}", "prompt", "invalid_value");
    expect_400("{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}", "prompt", "invalid_value");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"suffix\":[]}", "suffix", "invalid_type");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"echo\":1}", "echo", "invalid_type");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"logprobs\":-1}", "logprobs", "invalid_value");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"logprobs\":21}", "logprobs", "invalid_value");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"logprobs\":1.5}", "logprobs", "invalid_type");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"logprobs\":true}", "logprobs", "invalid_type");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"logprobs\":0,\"echo\":true}", "logprobs", "unsupported_parameter");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"best_of\":2}", "best_of", "invalid_value");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"best_of\":0}", "best_of", "invalid_value");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"messages\":[]}", "messages", "unknown_parameter");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"top_logprobs\":1}", "top_logprobs", "unknown_parameter");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"max_completion_tokens\":1}", "max_completion_tokens",
               "unknown_parameter");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"tools\":[]}", "tools", "unknown_parameter");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"foo\":1}", "foo", "unknown_parameter");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"prompt\":\"b\"}", "prompt", "invalid_value");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"max_tokens\":0}", "max_tokens", "invalid_value");
    expect_400("{\"model\":\"m\",\"prompt\":\"a\",\"stream_options\":{\"x\":1}}", "stream_options", "unknown_parameter");
}

#define FIM_B "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define FIM_H "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>"
#define FIM_E "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>"
#define BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>"

static void test_render(void) {
    api_chat_req_t r;
    api_err_t e;
    size_t n;
    CHECK_EQ_I(parse("{\"model\":\"m\",\"prompt\":\"def f(\\u0000):\"}", &r, &e), 0);
    char *s = api_chat_render(&r, TOK_TMPL_DEEPSEEK_V3, &n, &e); /* dispatches on r.cmpl */
    CHECK(s && n == strlen(BOS) + 9 && !memcmp(s, BOS "def f(\0):", n));
    free(s);
    s = api_chat_render(&r, TOK_TMPL_MIXTRAL, &n, &e);
    CHECK(s && n == 12 && !memcmp(s, "<s>def f(\0):", n));
    free(s);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\",\"prompt\":\"P\",\"suffix\":\"S\"}", &r, &e), 0);
    for (int k = TOK_TMPL_DEEPSEEK_V3; k <= TOK_TMPL_DEEPSEEK_R1; k++) {
        s = api_cmpl_render(&r, (tok_tmpl_kind_t)k, &n, &e);
        CHECK(s && n == strlen(BOS FIM_B "P" FIM_H "S" FIM_E) && !memcmp(s, BOS FIM_B "P" FIM_H "S" FIM_E, n));
        free(s);
        CHECK_EQ_I(api_cmpl_check(&r, (tok_tmpl_kind_t)k, &e), 0);
    }
    memset(&e, 0, sizeof e);
    CHECK(!api_cmpl_render(&r, TOK_TMPL_MIXTRAL, &n, &e));
    CHECK_EQ_I(e.status, 400);
    CHECK_EQ_S(e.param, "suffix");
    CHECK_EQ_S(e.code, "unsupported_parameter");
    CHECK_EQ_I(api_cmpl_check(&r, TOK_TMPL_MIXTRAL, &e), -1);
    api_chat_req_free(&r);
}

TG_TEST_MAIN(test_members, test_400s, test_render)
