/* Unit tests for engine/server/eng_server_req.c and the request reader it uses
 * (api/api_chat.c, tested further in tests/unit/api/): request validation
 * (each 400 case names its parameter), response and chunk shapes, tool-call
 * blocks, SSE framing, the max_tokens / context rule. */
#include "../../../engine/server/eng_server_req.c"
#include "../../../api/api_chat.c"

#include "tg_test.h"

static int parse(const char *body, api_chat_req_t *r, api_err_t *e) {
    memset(e, 0, sizeof *e);
    return api_chat_req_parse(r, body, strlen(body), e);
}

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static void expect_400(const char *body, const char *param, const char *code) {
    api_chat_req_t r;
    api_err_t e;
    int rc = parse(body, &r, &e);
    CHECK_EQ_I(rc, -1);
    CHECK_EQ_I(e.status, 400);
    CHECK_EQ_S(e.type, "invalid_request_error");
    if (param) CHECK_EQ_S(e.param, param);
    if (code) CHECK_EQ_S(e.code, code);
    if (rc == 0) {
        fprintf(stderr, "  body accepted: %s\n", body);
        api_chat_req_free(&r);
    }
}

static void test_valid_request(void) {
    api_chat_req_t r;
    api_err_t e;
    const char *b = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\","
                    "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"42\"}],"
                    "\"max_tokens\":7,\"temperature\":0,\"top_p\":0.5,\"seed\":12345,\"stop\":[\"x\",\"yz\"],"
                    "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"n\":1,\"logprobs\":false,"
                    "\"presence_penalty\":0.5}";
    CHECK_EQ_I(parse(b, &r, &e), 0);
    CHECK_EQ_S(r.model, "m");
    CHECK_EQ_I(r.n_msgs, 4);
    CHECK_EQ_S(r.msgs[1].content, "ab");
    CHECK_EQ_S(r.msgs[0].role, "system");
    CHECK(r.msgs[2].content == NULL);
    CHECK_EQ_I(r.msgs[2].n_tool_calls, 1);
    CHECK_EQ_S(r.msgs[2].tool_calls[0].name, "f");
    CHECK_EQ_S(r.msgs[3].content, "42");
    CHECK_EQ_I(r.max_tokens, 7);
    CHECK(r.temperature == 0 && r.top_p == 0.5 && r.presence_penalty == 0.5);
    CHECK(r.has_seed && r.seed == 12345);
    CHECK_EQ_I(r.n_stop, 2);
    CHECK_EQ_S(r.stop[1], "yz");
    CHECK(r.stream && r.include_usage);
    CHECK(!r.logprobs && r.top_logprobs == 0);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"logprobs\":true,\"top_logprobs\":3}", &r, &e), 0);
    CHECK(r.logprobs && r.top_logprobs == 3);
    api_chat_req_free(&r);
    /* defaults; max_completion_tokens; string stop; developer -> system */
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"d\"}],"
                     "\"max_completion_tokens\":3,\"stop\":\"\\n\"}", &r, &e), 0);
    CHECK(r.temperature == 1 && r.top_p == 1 && !r.has_seed && !r.stream);
    CHECK_EQ_I(r.max_tokens, 3);
    CHECK_EQ_I(r.n_stop, 1);
    CHECK_EQ_S(r.stop[0], "\n");
    CHECK_EQ_S(r.msgs[0].role, "system");
    api_chat_req_free(&r);
}

static void test_400_cases(void) {
    expect_400("{not json", NULL, "invalid_json");
    expect_400("[1,2]", NULL, "invalid_json");
    expect_400("", NULL, "invalid_json");
    expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "model", "missing_required_parameter");
    expect_400("{\"model\":5," MSG "}", "model", "invalid_type");
    expect_400("{\"model\":\"m\"}", "messages", "missing_required_parameter");
    expect_400("{\"model\":\"m\",\"messages\":[]}", "messages", "empty_array");
    expect_400("{\"model\":\"m\",\"messages\":\"hi\"}", "messages", "invalid_type");
    expect_400("{\"model\":\"m\",\"messages\":[\"hi\"]}", "messages[0]", "invalid_type");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"king\",\"content\":\"hi\"}]}", "messages[0].role", "invalid_value");
    expect_400("{\"model\":\"m\",\"messages\":[{\"content\":\"hi\"}]}", "messages[0].role", "missing_required_parameter");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", "messages[0].content", "missing_required_parameter");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content", "invalid_type");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}",
               "messages[0].content", "invalid_value");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\"}]}", "messages[0].content",
               "missing_required_parameter");
    expect_400("{\"model\":\"m\"," MSG ",\"max_tokens\":0}", "max_tokens", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"max_tokens\":1.5}", "max_tokens", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"max_tokens\":\"5\"}", "max_tokens", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"max_completion_tokens\":-1}", "max_completion_tokens", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"temperature\":2.5}", "temperature", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"temperature\":\"hot\"}", "temperature", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"top_p\":1.5}", "top_p", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"presence_penalty\":3}", "presence_penalty", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"seed\":\"x\"}", "seed", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"n\":17}", "n", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"logprobs\":1}", "logprobs", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"top_logprobs\":2}", "top_logprobs", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\","
               "\"l\",\"m\",\"n\",\"o\",\"p\",\"q\"]}", "stop", "invalid_value"); /* 17: DeepSeek allows 16 */
    expect_400("{\"model\":\"m\"," MSG ",\"stop\":[1]}", "stop", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"stop\":5}", "stop", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"stream\":\"yes\"}", "stream", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"stream_options\":{\"include_usage\":1}}", "stream_options.include_usage", "invalid_type");
    /* U+0000 is text in contents, but not in names the template reads as C strings */
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"us\\u0000er\",\"content\":\"a\"}]}",
               "messages[0].role", "invalid_value");
    expect_400("{\"model\":\"m\\u0000\"," MSG "}", "model", "invalid_type");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":"
               "{\"name\":\"f\\u0000\",\"arguments\":\"{}\"}}]}]}", "messages[0].tool_calls", "invalid_value");
    /* invalid UTF-8, raw and via a lone surrogate escape */
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", NULL, "invalid_utf8");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xed\xa0\x80\"}]}", NULL, "invalid_utf8");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}", NULL, "invalid_utf8");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\\udc00x\"}]}", NULL, "invalid_utf8");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\\u0041\"}]}", NULL, "invalid_utf8");
    /* seeds: integers in [-2^63, 2^64-1] only */
    expect_400("{\"model\":\"m\"," MSG ",\"seed\":18446744073709551616}", "seed", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"seed\":-9223372036854775809}", "seed", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"seed\":1.5}", "seed", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"seed\":1e3}", "seed", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"max_tokens\":1e30}", "max_tokens", "invalid_value");
}

static void test_escaped_quotes_and_backslashes(void) {
    api_chat_req_t r;
    api_err_t e;
    /* \\u0000 after an escaped backslash is text, not a NUL escape */
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\\\"x\\\\u0000\"}]}", &r, &e), 0);
    CHECK_EQ_S(r.msgs[0].content, "q\"x\\u0000");
    api_chat_req_free(&r);
}

/* U+0000 in a content is kept, with the length, and the rendered prompt
 * holds it; seeds are exact integers. */
static void test_nul_and_exact(void) {
    api_chat_req_t r;
    api_err_t e;
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"},"
                     "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"\\u0000\"},"
                     "{\"type\":\"text\",\"text\":\"z\"}],\"tool_calls\":[{\"function\":{\"name\":\"f\","
                     "\"arguments\":\"{\\\"k\\\":\\\"\\u0000\\\"}\"}}]}],"
                     "\"stop\":[\"x\\u0000y\"],\"seed\":9007199254740993}", &r, &e), 0);
    CHECK_EQ_I(r.msgs[0].content_len, 3);
    CHECK(r.msgs[0].content && !memcmp(r.msgs[0].content, "a\0b", 3));
    CHECK_EQ_I(r.msgs[1].content_len, 2);
    CHECK(r.msgs[1].content && !memcmp(r.msgs[1].content, "\0z", 2));
    CHECK_EQ_I(r.msgs[1].tool_calls[0].arguments_len, 9);
    CHECK_EQ_I(r.stop_len[0], 3);
    CHECK(r.has_seed && r.seed == 9007199254740993ull); /* 2^53 + 1: a double would say ...992 */
    char err[128];
    size_t n = 0;
    char *p = tok_chat_render_n(TOK_TMPL_DEEPSEEK_V3, r.msgs, r.n_msgs, 1, &n, err, sizeof err);
    static const char want[] = "<｜User｜>a\0b<｜Assistant｜>\0z";
    int found = 0;
    for (size_t i = 0; p && i + sizeof want - 1 <= n; i++) found |= !memcmp(p + i, want, sizeof want - 1);
    CHECK(found);
    free(p);
    api_chat_req_free(&r);
    static const struct { const char *text; uint64_t want; } seeds[] = {
        {"18446744073709551615", UINT64_MAX}, {"9223372036854775807", INT64_MAX},
        {"9223372036854775808", 1ull << 63}, {"-1", UINT64_MAX}, {"-9223372036854775808", 1ull << 63},
        {"0", 0}, {"12345678901234567890", 12345678901234567890ull}};
    for (size_t i = 0; i < sizeof seeds / sizeof *seeds; i++) {
        char b[256];
        snprintf(b, sizeof b, "{\"model\":\"m\"," MSG ",\"seed\":%s}", seeds[i].text);
        CHECK_EQ_I(parse(b, &r, &e), 0);
        CHECK(r.has_seed && r.seed == seeds[i].want);
        api_chat_req_free(&r);
    }
    /* generated text with NUL is written whole, as \u0000 */
    eng_usage_t u = {0};
    char *s = eng_resp_completion("c", 1, "m", "a\0b", 3, "r\0", 2, NULL, 0, ENG_FINISH_STOP, &u, NULL);
    CHECK(s && strstr(s, "\"content\":\"a\\u0000b\",\"reasoning_content\":\"r\\u0000\"") != NULL);
    free(s);
    s = eng_resp_chunk("c", 1, "m", NULL, "\0", 1, NULL, 0, ENG_FINISH_NONE, 0, NULL, NULL);
    CHECK(s && strstr(s, "\"delta\":{\"content\":\"\\u0000\"}") != NULL);
    free(s);
}

/* A logprobs entry of a token that is a NUL byte keeps it in "token" (needs
 * the tokenizer `make tokenizer-data` fetches, which make test-engine-server
 * depends on; without it a recorded skip, TG_SKIP). */
static void test_logprob_nul_token(void) {
    char err[256], why[300];
    tok_t *t = tok_load("build/data/deepseek-v3-tokenizer/tokenizer.json", err, sizeof err);
    if (!t) {
        snprintf(why, sizeof why, "no tokenizer (make tokenizer-data): %s", err);
        TG_SKIP(why);
        return;
    }
    int32_t id = tok_id(t, "\xc4\x80"); /* byte-level "Ā": the byte 0x00 */
    CHECK(id >= 0);
    eng_logprob_t lp = {.id = id, .logprob = -0.5, .n_top = 1};
    lp.top_id[0] = id;
    lp.top_logprob[0] = -0.5;
    cJSON *o = eng_logprob_json(t, &lp);
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    CHECK(s && strstr(s, "{\"token\":\"\\u0000\",\"logprob\":-0.5,\"bytes\":[0],\"top_logprobs\":"
                         "[{\"token\":\"\\u0000\",") == s);
    free(s);
    cJSON_Delete(o);
    /* a special token is skipped in the answer's text: its entry is "" with no bytes, so the
     * entries still join to the content (the top alternatives read the same way) */
    int32_t bos = tok_id(t, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>");
    CHECK(bos >= 0);
    eng_logprob_t sp = {.id = bos, .logprob = -0.25, .n_top = 2};
    sp.top_id[0] = bos, sp.top_logprob[0] = -0.25, sp.top_id[1] = id, sp.top_logprob[1] = -2;
    o = eng_logprob_json(t, &sp);
    s = o ? cJSON_PrintUnformatted(o) : NULL;
    CHECK_EQ_S(s, "{\"token\":\"\",\"logprob\":-0.25,\"bytes\":[],\"top_logprobs\":[{\"token\":\"\",\"logprob\":-0.25,"
                  "\"bytes\":[]},{\"token\":\"\\u0000\",\"logprob\":-2,\"bytes\":[0]}]}");
    free(s);
    cJSON_Delete(o);
    /* a token holding part of a character ("\xe4", the byte-level "\xc3\xa4"): its bytes are its own,
     * so the entries' bytes join to the content's UTF-8 (the token text can only show U+FFFD) */
    int32_t part = tok_id(t, "\xc3\xa4");
    CHECK(part >= 0);
    eng_logprob_t pp = {.id = part, .logprob = -1, .n_top = 0};
    o = eng_logprob_json(t, &pp);
    s = o ? cJSON_PrintUnformatted(o) : NULL;
    CHECK(s && strstr(s, "\"bytes\":[228]"));
    if (s && !strstr(s, "\"bytes\":[228]")) fprintf(stderr, "  %s\n", s);
    free(s);
    cJSON_Delete(o);
    tok_free(t);
}

static void test_error_json(void) {
    api_err_t e;
    eng_api_err(&e, 404, "invalid_request_error", "model", "model_not_found", "no %s", "such");
    char *j = eng_api_err_json(&e);
    CHECK_EQ_S(j, "{\"error\":{\"message\":\"no such\",\"type\":\"invalid_request_error\",\"param\":\"model\","
                  "\"code\":\"model_not_found\"}}");
    free(j);
    eng_api_err(&e, 400, "invalid_request_error", NULL, NULL, "x");
    j = eng_api_err_json(&e);
    CHECK_EQ_S(j, "{\"error\":{\"message\":\"x\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}");
    free(j);
}

static void test_max_tokens_rule(void) {
    api_chat_req_t r;
    memset(&r, 0, sizeof r);
    eng_limits_t lim = {.context = 100, .default_max = 4096};
    api_err_t e;
    int mt = 0;
    CHECK_EQ_I(eng_chat_max_tokens(&r, 30, &lim, &mt, &e), 0);
    CHECK_EQ_I(mt, 70); /* min(4096, context left) */
    lim.default_max = 16;
    CHECK_EQ_I(eng_chat_max_tokens(&r, 30, &lim, &mt, &e), 0);
    CHECK_EQ_I(mt, 16);
    r.max_tokens = 70;
    CHECK_EQ_I(eng_chat_max_tokens(&r, 30, &lim, &mt, &e), 0);
    CHECK_EQ_I(mt, 70);
    r.max_tokens = 71;
    CHECK_EQ_I(eng_chat_max_tokens(&r, 30, &lim, &mt, &e), -1);
    CHECK_EQ_S(e.code, "context_length_exceeded");
    r.max_tokens = 0;
    CHECK_EQ_I(eng_chat_max_tokens(&r, 100, &lim, &mt, &e), -1);
    CHECK_EQ_I(e.status, 400);
    CHECK_EQ_S(e.code, "context_length_exceeded");
    CHECK_EQ_S(e.param, "messages");
    /* /v1/completions: the prompt is what is too long, and the message says so */
    r.cmpl = 1;
    CHECK_EQ_I(eng_chat_max_tokens(&r, 100, &lim, &mt, &e), -1);
    CHECK_EQ_S(e.code, "context_length_exceeded");
    CHECK_EQ_S(e.param, "prompt");
    CHECK(strstr(e.message, "your prompt resulted in 100 tokens") && !strstr(e.message, "messages"));
    r.max_tokens = 71;
    CHECK_EQ_I(eng_chat_max_tokens(&r, 30, &lim, &mt, &e), -1);
    CHECK_EQ_S(e.param, "max_tokens");
    CHECK(strstr(e.message, "(30 in the prompt, 71 in the completion)") && !strstr(e.message, "messages"));
}

static void test_response_shapes(void) {
    eng_usage_t u = {.prompt_tokens = 10, .completion_tokens = 5, .reasoning_tokens = 2};
    char *s = eng_resp_completion("chatcmpl-1", 1700000000, "m", "hi \"there\"\n", 11, NULL, 0, NULL, 0, ENG_FINISH_LENGTH, &u, NULL);
    CHECK_EQ_S(s, "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"m\","
                  "\"system_fingerprint\":\"fp_tollgate\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                  "\"content\":\"hi \\\"there\\\"\\n\"},\"logprobs\":null,\"finish_reason\":\"length\"}],"
                  "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15,"
                  "\"prompt_cache_hit_tokens\":0,\"prompt_cache_miss_tokens\":10,\"prompt_tokens_details\":"
                  "{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":2}}}");
    free(s);
    s = eng_resp_chunk("chatcmpl-1", 1, "m", "assistant", "", 0, NULL, 0, ENG_FINISH_NONE, 1, NULL, NULL);
    CHECK_EQ_S(s, "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\","
                  "\"system_fingerprint\":\"fp_tollgate\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                  "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}");
    free(s);
    s = eng_resp_chunk("c", 1, "m", NULL, NULL, 0, "why", 3, ENG_FINISH_STOP, 0, NULL, NULL);
    CHECK(strstr(s, "\"delta\":{\"reasoning_content\":\"why\"}") != NULL);
    CHECK(strstr(s, "\"finish_reason\":\"stop\"") != NULL);
    CHECK(strstr(s, "usage") == NULL);
    free(s);
    s = eng_resp_chunk("c", 1, "m", NULL, NULL, 0, NULL, 0, ENG_FINISH_NONE, 1, &u, NULL);
    CHECK(strstr(s, "\"choices\":[],\"usage\":{\"prompt_tokens\":10,") != NULL);
    free(s);
}

#define TCB "<｜tool▁calls▁begin｜>"
#define TC1 "<｜tool▁call▁begin｜>"
#define TCE "<｜tool▁call▁end｜>"
#define TCSE "<｜tool▁calls▁end｜>"
#define TSEP "<｜tool▁sep｜>"

/* A canned DeepSeek-V3 answer: two calls, parsed into the OpenAI shape. */
static void test_tool_calls_parse(void) {
    const char *text = TCB TC1 "function" TSEP "get_weather\n```json\n{\"city\": \"Paris\"}\n```" TCE
                       "\n" TC1 "function" TSEP "get_time\n```json\n{}\n```" TCE TCSE;
    eng_tool_call_t *calls = NULL;
    size_t n = 0;
    CHECK_EQ_I(eng_tool_calls_parse(text, strlen(text), &calls, &n), 2);
    CHECK_EQ_I(n, 2);
    CHECK_EQ_S(calls[0].name, "get_weather");
    CHECK_EQ_S(calls[0].arguments, "{\"city\": \"Paris\"}");
    CHECK_EQ_S(calls[1].name, "get_time");
    CHECK_EQ_S(calls[1].arguments, "{}");
    eng_usage_t u = {.prompt_tokens = 3, .completion_tokens = 4};
    char *s = eng_resp_completion("chatcmpl-x", 1, "m", NULL, 0, NULL, 0, calls, n, ENG_FINISH_TOOL_CALLS, &u, NULL);
    CHECK(s && strstr(s, "\"message\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":"
                         "\"call_0_x\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":"
                         "\"{\\\"city\\\": \\\"Paris\\\"}\"}},{\"id\":\"call_1_x\""));
    CHECK(s && strstr(s, "\"finish_reason\":\"tool_calls\""));
    free(s);
    s = eng_resp_chunk_tools("chatcmpl-x", 1, "m", calls, 1, 1, 1);
    CHECK(s && strstr(s, "\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_1_x\",\"type\":\"function\","
                         "\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]}"));
    CHECK(s && strstr(s, ",\"usage\":null}"));
    free(s);
    /* n choices: each its index; a later choice's call ids carry its number */
    eng_choice_t ch[2] = {{"a", 1, NULL, 0, NULL, 0, ENG_FINISH_LENGTH, NULL},
                          {NULL, 0, NULL, 0, calls, 1, ENG_FINISH_TOOL_CALLS, NULL}};
    s = eng_resp_completion_n("chatcmpl-x", 1, "m", ch, 2, &u);
    CHECK(s && strstr(s, "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"a\"},"
                         "\"logprobs\":null,\"finish_reason\":\"length\"},{\"index\":1,\"message\":{\"role\":"
                         "\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1_0_x\""));
    free(s);
    s = eng_resp_chunk_tools_at(2, "chatcmpl-x", 1, "m", calls, 1, 1, 0);
    CHECK(s && strstr(s, "\"choices\":[{\"index\":2,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2_1_x\""));
    free(s);
    s = eng_resp_chunk_at(3, "chatcmpl-x", 1, "m", NULL, "b", 1, NULL, 0, ENG_FINISH_NONE, 0, NULL, NULL);
    CHECK(s && strstr(s, "\"choices\":[{\"index\":3,\"delta\":{\"content\":\"b\"}"));
    free(s);
    eng_tool_calls_free(calls, n);
    /* growing block: calls appear once complete, each once */
    calls = NULL, n = 0;
    size_t len = strlen(text);
    int seen = 0;
    for (size_t i = 0; i <= len; i++) {
        int k = eng_tool_calls_parse(text, i, &calls, &n);
        CHECK(k >= seen && (size_t)k == n);
        seen = k;
    }
    CHECK_EQ_I(n, 2);
    eng_tool_calls_free(calls, n);
    /* text that is not a call block: nothing */
    calls = NULL, n = 0;
    CHECK_EQ_I(eng_tool_calls_parse("hello", 5, &calls, &n), 0);
    const char *bad = TCB TC1 "function" TSEP "f\n{}" TCE;
    CHECK_EQ_I(eng_tool_calls_parse(bad, strlen(bad), &calls, &n), 0);
    eng_tool_calls_free(calls, n);
}

static void test_sse_framing(void) {
    size_t n = 0;
    char *s = eng_sse_event("{\"a\":\"x\\ny\"}", &n);
    CHECK_EQ_S(s, "data: {\"a\":\"x\\ny\"}\n\n");
    CHECK_EQ_I(n, strlen(s));
    free(s);
    CHECK(eng_sse_event("{\"a\":\n1}", &n) == NULL); /* a raw newline would break the framing */
    /* every chunk body is one line even when the text has newlines */
    char *j = eng_resp_chunk("c", 1, "m", NULL, "line1\nline2\r\n", 13, NULL, 0, ENG_FINISH_NONE, 0, NULL, NULL);
    s = eng_sse_event(j, &n);
    CHECK(s != NULL);
    free(s);
    free(j);
}

static void test_think_mode(void) {
#define TM(k, s) eng_chat_think_mode(k, s, sizeof s - 1)
    CHECK_EQ_I(TM(TOK_TMPL_DEEPSEEK_V3, "x<think>\n"), ENG_THINK_OFF);
    CHECK_EQ_I(TM(TOK_TMPL_DEEPSEEK_R1, "<｜Assistant｜><think>\n"), ENG_THINK_IN);
    CHECK_EQ_I(TM(TOK_TMPL_DEEPSEEK_R1, "<｜Assistant｜>"), ENG_THINK_DETECT);
    /* the end of the prompt is found by length, past a NUL in the content */
    CHECK_EQ_I(TM(TOK_TMPL_DEEPSEEK_R1, "a\0b<｜Assistant｜><think>\n"), ENG_THINK_IN);
#undef TM
}

TG_TEST_MAIN(test_tool_calls_parse, test_valid_request, test_400_cases, test_escaped_quotes_and_backslashes, test_error_json, test_max_tokens_rule, test_response_shapes,
             test_sse_framing, test_think_mode, test_nul_and_exact, test_logprob_nul_token)
