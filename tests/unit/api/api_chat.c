/* Unit tests for api/api_chat.c, the request reader the gateway and the
 * engine share: strict parameters (unknown -> 400 naming it, OpenAI's
 * shape), tools and tool_choice, response_format, logit_bias, top_k, the one
 * max_tokens rule, tojson, and the rendered prompt against the reference
 * vectors (tests/tokenizer/vectors/chat.jsonl, rendered by @huggingface/jinja,
 * tools included).
 *
 *   api_chat VECTORS_DIR */
#include "../../../api/api_chat.c"

#include <cjson/cJSON.h>

#include "tg_test.h"

#include <arpa/inet.h>
#include <math.h>
#include <time.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

static const char *vec_dir = "tests/tokenizer/vectors";

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"
#define TOOL(n) "{\"type\":\"function\",\"function\":{\"name\":\"" n "\",\"parameters\":{\"type\":\"object\"}}}"

#define U1 "{\"role\":\"user\",\"content\":\"hi\"}"
#define U10 U1 "," U1 "," U1 "," U1 "," U1 "," U1 "," U1 "," U1 "," U1 "," U1

static int parse(const char *body, api_chat_req_t *r, api_err_t *e) {
    memset(e, 0, sizeof *e);
    return api_chat_req_parse(r, body, strlen(body), e);
}

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

/* Every refusal that names a message's path (written only when refused)
 * and the top-level names, whole: message, type, param and code as the
 * reader gave them before the paths were made lazy (main at 1766595). */
#define M12 "{\"model\":\"m\",\"messages\":[" U10 "," U1 ","
static void test_error_paths(void) {
    static const char *const cases[][2] = {
        /* a body (M12: the 12th message after 11 good ones); its error */
        {M12 "1]}",
         "{\"error\":{\"message\":\"Invalid type for 'messages[11]': expected an object, but got number.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11]\",\"code\":\"invalid_type\"}}"},
        {M12 "{\"role\":\"user\",\"content\":\"a\",\"bogus\":1}]}",
         "{\"error\":{\"message\":\"Unrecognized message argument supplied: messages[11].bogus\",\"type\":\"invalid_request_error\",\"param\":\"messages[11]\",\"code\":\"unknown_parameter\"}}"},
        {M12 "{\"role\":\"user\",\"content\":\"a\",\"function_call\":{}}]}",
         "{\"error\":{\"message\":\"Unsupported parameter: 'messages[11].function_call' is not supported by this server.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].function_call\",\"code\":\"unsupported_parameter\"}}"},
        {M12 "{\"content\":\"a\"}]}",
         "{\"error\":{\"message\":\"Missing required parameter: 'messages[11].role'.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].role\",\"code\":\"missing_required_parameter\"}}"},
        {M12 "{\"role\":1,\"content\":\"a\"}]}",
         "{\"error\":{\"message\":\"Invalid type for 'messages[11].role': expected a string, but got number.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].role\",\"code\":\"invalid_type\"}}"},
        {M12 "{\"role\":\"bogus\",\"content\":\"a\"}]}",
         "{\"error\":{\"message\":\"Invalid value for 'messages[11].role': 'bogus'. Supported values are: 'system', 'developer', 'user', 'assistant' and 'tool'.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].role\",\"code\":\"invalid_value\"}}"},
        {M12 "{\"role\":\"user\",\"content\":\"a\",\"prefix\":1}]}",
         "{\"error\":{\"message\":\"Invalid type for 'messages[11].prefix': expected a boolean, but got number.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].prefix\",\"code\":\"invalid_type\"}}"},
        {M12 "{\"role\":\"user\",\"content\":\"a\",\"prefix\":true}]}",
         "{\"error\":{\"message\":\"Invalid 'messages[11].prefix': only the last message may be a prefix, an assistant's with its text as a string 'content' and no 'tool_calls'.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].prefix\",\"code\":\"invalid_value\"}}"},
        {M12 "{\"role\":\"user\",\"content\":1}]}",
         "{\"error\":{\"message\":\"Invalid type for 'messages[11].content': expected a string or an array of content parts, but got number.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].content\",\"code\":\"invalid_type\"}}"},
        {M12 "{\"role\":\"user\",\"content\":[]}]}",
         "{\"error\":{\"message\":\"Invalid 'messages[11].content': empty array. Expected an array with minimum length 1.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].content\",\"code\":\"empty_array\"}}"},
        {M12 "{\"role\":\"user\",\"content\":[1]}]}",
         "{\"error\":{\"message\":\"Invalid 'messages[11].content[0]': expected an object with a 'type'.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].content\",\"code\":\"invalid_type\"}}"},
        {M12 "{\"role\":\"user\",\"content\":[{\"type\":\"image\"}]}]}",
         "{\"error\":{\"message\":\"Invalid 'messages[11].content[0].type': 'image' is not supported by this model; only 'text'.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].content\",\"code\":\"invalid_value\"}}"},
        {M12 "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]}",
         "{\"error\":{\"message\":\"Invalid 'messages[11].content[0].text': expected a string.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].content\",\"code\":\"invalid_type\"}}"},
        {M12 "{\"role\":\"assistant\"}]}",
         "{\"error\":{\"message\":\"Missing required parameter: 'messages[11].content' (an assistant message needs 'content' or 'tool_calls').\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].content\",\"code\":\"missing_required_parameter\"}}"},
        {M12 "{\"role\":\"user\"}]}",
         "{\"error\":{\"message\":\"Missing required parameter: 'messages[11].content'.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].content\",\"code\":\"missing_required_parameter\"}}"},
        {M12 "{\"role\":\"tool\",\"content\":\"a\"}]}",
         "{\"error\":{\"message\":\"Missing required parameter: 'messages[11].tool_call_id'.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].tool_call_id\",\"code\":\"missing_required_parameter\"}}"},
        {M12 "{\"role\":\"tool\",\"content\":\"a\",\"tool_call_id\":1}]}",
         "{\"error\":{\"message\":\"Invalid type for 'messages[11].tool_call_id': expected a string, but got number.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].tool_call_id\",\"code\":\"invalid_type\"}}"},
        {M12 "{\"role\":\"assistant\",\"tool_calls\":1}]}",
         "{\"error\":{\"message\":\"Invalid type for 'messages[11].tool_calls': expected an array.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].tool_calls\",\"code\":\"invalid_type\"}}"},
        {M12 "{\"role\":\"assistant\",\"tool_calls\":[{\"function\":1}]}]}",
         "{\"error\":{\"message\":\"Invalid 'messages[11].tool_calls[0]': expected {\\\"type\\\":\\\"function\\\",\\\"function\\\":{\\\"name\\\",\\\"arguments\\\"}} with string name and arguments (name, id and type without U+0000).\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].tool_calls\",\"code\":\"invalid_value\"}}"},
        {M12 "{\"role\":\"assistant\",\"tool_calls\":[{\"type\":\"x\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}]}",
         "{\"error\":{\"message\":\"Invalid value for 'messages[11].tool_calls[0].type': 'x'. Supported values are: 'function'.\",\"type\":\"invalid_request_error\",\"param\":\"messages[11].tool_calls[0].type\",\"code\":\"invalid_value\"}}"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"bogus\":1}",
         "{\"error\":{\"message\":\"Unrecognized request argument supplied: bogus\",\"type\":\"invalid_request_error\",\"param\":\"bogus\",\"code\":\"unknown_parameter\"}}"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"u\"}],\"functions\":[]}",
         "{\"error\":{\"message\":\"Unsupported parameter: 'functions' is not supported by this server.\",\"type\":\"invalid_request_error\",\"param\":\"functions\",\"code\":\"unsupported_parameter\"}}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        api_chat_req_t r;
        api_err_t e;
        CHECK_EQ_I(parse(cases[i][0], &r, &e), -1);
        char *j = api_err_json(&e);
        CHECK(j != NULL);
        if (j) CHECK_EQ_S(j, cases[i][1]);
        free(j);
    }
}

static void test_unknown_parameters(void) {
    api_chat_req_t r;
    api_err_t e;
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"foo\":1}", &r, &e), -1);
    char *j = api_err_json(&e);
    CHECK_EQ_S(j, "{\"error\":{\"message\":\"Unrecognized request argument supplied: foo\",\"type\":"
                  "\"invalid_request_error\",\"param\":\"foo\",\"code\":\"unknown_parameter\"}}");
    free(j);
    expect_400("{\"model\":\"m\"," MSG ",\"min_p\":0.1}", "min_p", "unknown_parameter");
    expect_400("{\"model\":\"m\"," MSG ",\"repetition_penalty\":1.1}", "repetition_penalty", "unknown_parameter");
    expect_400("{\"model\":\"m\"," MSG ",\"stream_options\":{\"include_usage\":true,\"x\":1}}", "stream_options",
               "unknown_parameter");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\",\"nme\":\"x\"}]}", "messages[0]",
               "unknown_parameter");
    /* known to OpenAI/DeepSeek, not served here: a clear 400, never ignored */
    expect_400("{\"model\":\"m\"," MSG ",\"functions\":[]}", "functions", "unsupported_parameter");
    expect_400("{\"model\":\"m\"," MSG ",\"audio\":{}}", "audio", "unsupported_parameter");
    expect_400("{\"model\":\"m\"," MSG ",\"store\":true}", "store", "unsupported_parameter");
    expect_400("{\"model\":\"m\"," MSG ",\"response_format\":{\"type\":\"json_schema\"}}",
               "response_format.json_schema", "missing_required_parameter");
    expect_400("{\"model\":\"m\"," MSG ",\"n\":17}", "n", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"n\":0}", "n", "invalid_value");
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"n\":16}", &r, &e), 0);
    CHECK_EQ_I(r.n, 16);
    api_chat_req_free(&r);
    /* chat prefix completion: only the last message, an assistant's text */
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":\"x\",\"prefix\":true}," U1 "]}",
               "messages[0].prefix", "invalid_value");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"prefix\":true}]}",
               "messages[0].prefix", "invalid_value");
    expect_400("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":\"x\",\"prefix\":1}]}",
               "messages[1].prefix", "invalid_type");
    expect_400("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":null,\"prefix\":true,"
               "\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}]}", "messages[1].prefix",
               "invalid_value");
    expect_400("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":\"{\",\"prefix\":true}],"
               "\"response_format\":{\"type\":\"json_object\"}}", "messages[1].prefix", "invalid_value");
    /* an assistant message with neither content nor tool_calls: its content is named */
    expect_400("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":null}," U1 "]}",
               "messages[1].content", "missing_required_parameter");
    expect_400("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"tool_calls\":[]}," U1 "]}",
               "messages[1].content", "missing_required_parameter");
    /* an empty array of content parts, as OpenAI: a 400 */
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[]}]}", "messages[0].content",
               "empty_array");
    /* a two-digit index in a path (written without printf: api_chat.c path_at) */
    expect_400("{\"model\":\"m\",\"messages\":[" U10 ",{\"role\":\"user\",\"content\":\"x\",\"nme\":1}]}",
               "messages[10]", "unknown_parameter");
    expect_400("{\"model\":\"m\",\"messages\":[" U10 ",{\"role\":\"user\",\"content\":7}]}", "messages[10].content",
               NULL);
    /* duplicates: the gateway and the engine must not read different values */
    expect_400("{\"model\":\"m\"," MSG ",\"max_tokens\":1,\"max_tokens\":9}", "max_tokens", "invalid_value");
    /* identifiers are accepted (shape checked) */
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"user\":\"u1\",\"metadata\":{\"a\":\"b\"},\"store\":false,"
                     "\"service_tier\":\"auto\",\"n\":1}", &r, &e), 0);
    api_chat_req_free(&r);
    expect_400("{\"model\":\"m\"," MSG ",\"user\":5}", "user", "invalid_type");
    /* what the pinned OpenAI SDK types also offer: cache hints accepted, obfuscation a no-op */
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"prompt_cache_retention\":\"24h\",\"prompt_cache_options\":"
                     "{\"ttl\":\"30m\"},\"stream\":true,\"stream_options\":{\"include_obfuscation\":false,"
                     "\"include_usage\":true}}", &r, &e), 0);
    CHECK_EQ_I(r.include_usage, 1);
    api_chat_req_free(&r);
    expect_400("{\"model\":\"m\"," MSG ",\"prompt_cache_retention\":1}", "prompt_cache_retention", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"prompt_cache_options\":\"x\"}", "prompt_cache_options", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"stream_options\":{\"include_obfuscation\":1}}",
               "stream_options.include_obfuscation", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"moderation\":{\"model\":\"x\"}}", "moderation", "unsupported_parameter");
}

static void test_sampling_parameters(void) {
    api_chat_req_t r;
    api_err_t e;
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"top_k\":40,\"logit_bias\":{\"15\":-100,\"7\":2.5},\"seed\":-1}",
                     &r, &e), 0);
    CHECK_EQ_I(r.top_k, 40);
    CHECK_EQ_I(r.n_bias, 2);
    CHECK(r.bias[0].id == 15 && r.bias[0].bias == -100 && r.bias[1].id == 7 && r.bias[1].bias == 2.5f);
    CHECK(r.has_seed && r.seed == UINT64_MAX);
    CHECK_EQ_I(api_chat_check_vocab(&r, 16, &e), 0);
    CHECK_EQ_I(api_chat_check_vocab(&r, 15, &e), -1);
    CHECK_EQ_S(e.param, "logit_bias");
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"top_k\":-1}", &r, &e), 0);
    CHECK_EQ_I(r.top_k, 0);
    api_chat_req_free(&r);
    expect_400("{\"model\":\"m\"," MSG ",\"top_k\":-2}", "top_k", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"top_k\":1.5}", "top_k", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"logit_bias\":{\"x\":1}}", "logit_bias", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"logit_bias\":{\"-1\":1}}", "logit_bias", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"logit_bias\":{\"1\":101}}", "logit_bias", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"logit_bias\":[1]}", "logit_bias", "invalid_type");
    /* the documented ranges, both ends (OpenAI's and DeepSeek's): temperature 0..2, top_p 0..1,
     * penalties -2..2, top_logprobs 0..20 with logprobs */
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"temperature\":2,\"top_p\":0,\"frequency_penalty\":-2,"
                     "\"presence_penalty\":2,\"logprobs\":true,\"top_logprobs\":20,\"user\":\"u\"}", &r, &e), 0);
    CHECK(r.temperature == 2 && r.top_p == 0 && r.frequency_penalty == -2 && r.presence_penalty == 2);
    CHECK(r.logprobs && r.top_logprobs == 20);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"temperature\":0,\"top_p\":1,\"frequency_penalty\":2,"
                     "\"presence_penalty\":-2,\"logprobs\":true,\"top_logprobs\":0}", &r, &e), 0);
    api_chat_req_free(&r);
    expect_400("{\"model\":\"m\"," MSG ",\"temperature\":2.001}", "temperature", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"temperature\":-0.001}", "temperature", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"top_p\":1.01}", "top_p", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"frequency_penalty\":2.01}", "frequency_penalty", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"presence_penalty\":-2.01}", "presence_penalty", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"presence_penalty\":\"1\"}", "presence_penalty", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"logprobs\":true,\"top_logprobs\":-1}", "top_logprobs", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"logprobs\":false,\"top_logprobs\":1}", "top_logprobs", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"user\":5}", "user", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"response_format\":{\"type\":\"yaml\"}}", "response_format.type",
               "invalid_value");
    /* no type at all: missing, as OpenAI says it (it was an invalid_value) */
    expect_400("{\"model\":\"m\"," MSG ",\"response_format\":{}}", "response_format.type",
               "missing_required_parameter");
}

/* One number for both sides: the smaller of max_tokens and max_completion_tokens. */
static void test_max_tokens(void) {
    api_chat_req_t r;
    api_err_t e;
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"max_tokens\":50,\"max_completion_tokens\":20}", &r, &e), 0);
    CHECK_EQ_I(r.max_tokens, 20);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"max_completion_tokens\":50,\"max_tokens\":20}", &r, &e), 0);
    CHECK_EQ_I(r.max_tokens, 20);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"max_completion_tokens\":50}", &r, &e), 0);
    CHECK_EQ_I(r.max_tokens, 50);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"max_tokens\":null,\"max_completion_tokens\":null}", &r, &e), 0);
    CHECK_EQ_I(r.max_tokens, 0);
    api_chat_req_free(&r);
}

static void test_tools(void) {
    api_chat_req_t r;
    api_err_t e;
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"tools\":[" TOOL("a") "," TOOL("b_c-1") "]}", &r, &e), 0);
    CHECK_EQ_I(r.n_tools, 2);
    CHECK_EQ_I(r.tool_choice, API_TOOL_CHOICE_AUTO);
    CHECK(r.parallel_tool_calls);
    CHECK_EQ_S(r.tools[1].json, "{\"type\": \"function\", \"function\": {\"name\": \"b_c-1\", \"parameters\": "
                                "{\"type\": \"object\"}}}");
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"tools\":[" TOOL("a") "," TOOL("b") "],\"tool_choice\":"
                     "{\"type\":\"function\",\"function\":{\"name\":\"b\"}},\"parallel_tool_calls\":false}", &r, &e), 0);
    CHECK(r.tool_choice == API_TOOL_CHOICE_NAMED && r.tool_named == 1 && !r.parallel_tool_calls);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"tools\":[" TOOL("a") "],\"tool_choice\":\"required\"}", &r, &e), 0);
    CHECK_EQ_I(r.tool_choice, API_TOOL_CHOICE_REQUIRED);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"tool_choice\":\"none\"}", &r, &e), 0);
    CHECK_EQ_I(r.tool_choice, API_TOOL_CHOICE_NONE);
    api_chat_req_free(&r);
    expect_400("{\"model\":\"m\"," MSG ",\"tool_choice\":\"required\"}", "tool_choice", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"tools\":[" TOOL("a") "],\"tool_choice\":\"always\"}", "tool_choice",
               "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"tools\":[" TOOL("a") "],\"tool_choice\":{\"type\":\"function\","
               "\"function\":{\"name\":\"zz\"}}}", "tool_choice", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"tools\":[" TOOL("a b") "]}", "tools[0].function.name", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"tools\":[" TOOL("a") "," TOOL("a") "]}", "tools[1].function.name",
               "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"tools\":[{\"type\":\"retrieval\"}]}", "tools[0].type", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\","
               "\"parameters\":[]}}]}", "tools[0].function.parameters", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"tools\":{}}", "tools", "invalid_type");
    expect_400("{\"model\":\"m\"," MSG ",\"tools\":[" TOOL("a") "],\"tool_choice\":\"required\","
               "\"response_format\":{\"type\":\"json_object\"}}", "response_format", "invalid_value");
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"response_format\":{\"type\":\"json_object\"}}", &r, &e), 0);
    CHECK_EQ_I(r.format, API_FORMAT_JSON_OBJECT);
    api_chat_req_free(&r);
    /* Mixtral's template has no tools */
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"tools\":[" TOOL("a") "]}", &r, &e), 0);
    size_t n;
    CHECK(api_chat_render(&r, TOK_TMPL_MIXTRAL, &n, &e) == NULL);
    CHECK_EQ_S(e.param, "tools");
    api_chat_req_free(&r);
}

/* Messages from JSON: parts, object arguments, NUL bytes, refusals (the
 * checks tok_unit.c had when the tokenizer also read JSON). */
static void test_render(void) {
    api_chat_req_t r;
    api_err_t e;
    size_t n;
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                     "{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{"
                     "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1}}},{\"function\":{\"name\":"
                     "\"g\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\"r\"}]}", &r, &e), 0);
    char *s = api_chat_render(&r, TOK_TMPL_DEEPSEEK_V3, &n, &e);
    CHECK_EQ_S(s, "<｜begin▁of▁sentence｜><｜User｜>ab<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"
                  "<｜tool▁sep｜>f\n```json\n{\"x\":1}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>g"
                  "\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜>"
                  "<｜tool▁output▁begin｜>r<｜tool▁output▁end｜><｜tool▁outputs▁end｜>");
    free(s);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"s\\u0000t\"},{\"role\":\"user\","
                     "\"content\":[{\"type\":\"text\",\"text\":\"a\\u0000\"},{\"type\":\"text\",\"text\":\"b\"}]}]}", &r, &e), 0);
    s = api_chat_render(&r, TOK_TMPL_DEEPSEEK_V3, &n, &e);
    static const char want[] = "<｜begin▁of▁sentence｜>s\0t<｜User｜>a\0b<｜Assistant｜>";
    CHECK(s && n == sizeof want - 1 && !memcmp(s, want, n));
    free(s);
    api_chat_req_free(&r);
    /* reasoning_content in an input message (an earlier answer echoed back, as DeepSeek's thinking-mode
     * guide has clients do): accepted, and the prompt is the same as without it (api/README.md) */
    static const char *const RC[] = {
        "{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":\"x\",\"reasoning_content\":"
        "\"QZX reasoning\"}," U1 "]}",
        "{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":\"x\"}," U1 "]}",
    };
    char *rc_prompt[2][2] = {{0}};
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_I(parse(RC[i], &r, &e), 0);
        rc_prompt[i][0] = api_chat_render(&r, TOK_TMPL_DEEPSEEK_V3, &n, &e);
        rc_prompt[i][1] = api_chat_render(&r, TOK_TMPL_DEEPSEEK_R1, &n, &e);
        api_chat_req_free(&r);
    }
    for (int k = 0; k < 2; k++) {
        CHECK(rc_prompt[0][k] && rc_prompt[1][k] && !strcmp(rc_prompt[0][k], rc_prompt[1][k]));
        CHECK(rc_prompt[0][k] && !strstr(rc_prompt[0][k], "QZX"));
        free(rc_prompt[0][k]), free(rc_prompt[1][k]);
    }
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\\ud800b\"}]}", NULL, "invalid_utf8");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":"
               "\"f\\u0000\",\"arguments\":\"{}\"}}]}]}", "messages[0].tool_calls", "invalid_value");
    /* a call's type is "function" (OpenAI refuses others; it was rendered into the prompt as given) */
    expect_400("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"tool_calls\":[{\"type\":\"function\","
               "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}},{\"type\":\"shell\",\"function\":{\"name\":\"g\","
               "\"arguments\":\"{}\"}}]}]}", "messages[1].tool_calls[1].type", "invalid_value");
    /* an assistant message echoed with OpenAI's null function_call and audio is accepted (they
     * were 400 unknown_parameter); a value is unsupported, never ignored */
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":\"a\","
                     "\"function_call\":null,\"audio\":null,\"refusal\":null}]}", &r, &e), 0);
    api_chat_req_free(&r);
    expect_400("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":\"a\","
               "\"function_call\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}", "messages[1].function_call",
               "unsupported_parameter");
    expect_400("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"audio\":{\"id\":\"x\"}}]}",
               "messages[1].audio", "unsupported_parameter");
    /* DeepSeek's chat prefix completion: the answer starts with the prefix (no end of sentence after it) */
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"s\"}," U1 ",{\"role\":"
                     "\"assistant\",\"content\":\"```python\\n\",\"prefix\":true}],\"stop\":[\"```\"]}", &r, &e), 0);
    CHECK_EQ_I(r.prefix, 1);
    s = api_chat_render(&r, TOK_TMPL_DEEPSEEK_V3, &n, &e);
    CHECK_EQ_S(s, "<｜begin▁of▁sentence｜>s<｜User｜>hi<｜Assistant｜>```python\n");
    free(s);
    CHECK(api_chat_render(&r, TOK_TMPL_DEEPSEEK_R1, &n, &e) == NULL);
    CHECK_EQ_S(e.param, "messages[2].prefix");
    CHECK_EQ_S(e.code, "unsupported_parameter");
    api_chat_req_free(&r);
    /* after a tool's output: the template's own continuation, then the prefix */
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
                     "[{\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c\","
                     "\"content\":\"r\"},{\"role\":\"assistant\",\"content\":\"It is\",\"prefix\":true}]}", &r, &e), 0);
    s = api_chat_render(&r, TOK_TMPL_DEEPSEEK_V3, &n, &e);
    CHECK(s && strstr(s, "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>It is") && n == strlen(s) &&
          !strcmp(s + n - 5, "It is"));
    free(s);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":\"Sure\",\"prefix\":true}]}",
                     &r, &e), 0);
    s = api_chat_render(&r, TOK_TMPL_MIXTRAL, &n, &e);
    CHECK(s && n > 4 && !strcmp(s + n - 4, "Sure") && !strstr(s, "</s>"));
    free(s);
    api_chat_req_free(&r);
    /* an assistant's content parts may be OpenAI's refusal parts (echoed back): their text is what it said;
     * a user's may not */
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":[{\"type\":\"refusal\","
                     "\"refusal\":\"No.\"},{\"type\":\"text\",\"text\":\" Sorry\"}]}," U1 "]}", &r, &e), 0);
    s = api_chat_render(&r, TOK_TMPL_DEEPSEEK_V3, &n, &e);
    CHECK(s && strstr(s, "<｜Assistant｜>No. Sorry<｜end▁of▁sentence｜>"));
    free(s);
    api_chat_req_free(&r);
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"refusal\",\"refusal\":\"x\"}]}]}",
               "messages[0].content", "invalid_value");
    expect_400("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":[{\"type\":\"refusal\"}]}]}",
               "messages[1].content", "invalid_type");
    /* "prefix": false is a plain message */
    CHECK_EQ_I(parse("{\"model\":\"m\",\"messages\":[" U1 ",{\"role\":\"assistant\",\"content\":\"a\",\"prefix\":false},"
                     U1 "]}", &r, &e), 0);
    CHECK_EQ_I(r.prefix, 0);
    api_chat_req_free(&r);
}

static void test_tojson(void) {
    const char *src = "{\"a\":1.50,\"b\":\"\\u00e9\\n\\u0001\\\"/\",\"c\":[1,2,{\"d\":null,\"e\":true}],\"f\":{}}";
    tg_json_t *v = tg_json_parse(src, strlen(src), NULL, NULL);
    tg_buf_t b = {0};
    CHECK_EQ_I(api_tojson(&b, v), 0);
    CHECK_EQ_S(b.p, "{\"a\": 1.50, \"b\": \"é\\n\\u0001\\\"/\", \"c\": [1, 2, {\"d\": null, \"e\": true}], \"f\": {}}");
    tg_buf_free(&b);
    tg_json_free(v);
}

/* Every reference conversation through the reader: the request body built
 * from the vector's messages (and tools) renders to the reference text. */
static void test_vectors(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s/chat.jsonl", vec_dir);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0, total = 0, same = 0, tools = 0, tools_same = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        const char *kind = cJSON_GetStringValue(cJSON_GetObjectItem(j, "kind"));
        tok_tmpl_kind_t k = !strcmp(kind, "deepseek_v3")   ? TOK_TMPL_DEEPSEEK_V3
                            : !strcmp(kind, "deepseek_r1") ? TOK_TMPL_DEEPSEEK_R1
                                                           : TOK_TMPL_MIXTRAL;
        int agp = cJSON_IsTrue(cJSON_GetObjectItem(j, "add_generation_prompt"));
        total++;
        if (!agp) { /* the reader always adds the generation prompt */
            same++;
            cJSON_Delete(j);
            continue;
        }
        cJSON *body = cJSON_CreateObject();
        cJSON_AddStringToObject(body, "model", "m");
        cJSON *msgs = cJSON_Duplicate(cJSON_GetObjectItem(j, "messages"), 1), *mi;
        cJSON_ArrayForEach(mi, msgs) /* the API requires a tool message's call id; the templates never show it */
            if (!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(mi, "role")) ?: "", "tool") &&
                !cJSON_GetObjectItem(mi, "tool_call_id"))
                cJSON_AddStringToObject(mi, "tool_call_id", "call_0");
        cJSON_AddItemToObject(body, "messages", msgs);
        cJSON *tl = cJSON_GetObjectItem(j, "tools");
        if (tl) cJSON_AddItemToObject(body, "tools", cJSON_Duplicate(tl, 1));
        char *bs = cJSON_PrintUnformatted(body);
        api_chat_req_t r;
        api_err_t e;
        size_t n = 0;
        char *text = NULL;
        if (!api_chat_req_parse(&r, bs, strlen(bs), &e)) {
            text = api_chat_render(&r, k, &n, &e);
            if (tl) {
                tools++;
                int ok = (int)r.n_tools == cJSON_GetArraySize(tl);
                for (size_t i = 0; ok && i < r.n_tools; i++)
                    ok = !strcmp(r.tools[i].json,
                                 cJSON_GetStringValue(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "tools_json"), (int)i)));
                tools_same += ok;
            }
            api_chat_req_free(&r);
        } else {
            fprintf(stderr, "vector refused: %s\n", e.message);
        }
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(j, "text"));
        if (text && !strcmp(text, want)) same++;
        else fprintf(stderr, "render mismatch (%s):\n  want %s\n  got  %s\n", kind, want, text ? text : "(null)");
        free(text);
        free(bs);
        cJSON_Delete(body);
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    printf("api vectors: %zu/%zu rendered identically, tojson %zu/%zu\n", same, total, tools_same, tools);
    CHECK(total >= 60);
    CHECK_EQ_I(same, total);
    CHECK(tools >= 8);
    CHECK_EQ_I(tools_same, tools);
}

/* response_format json_schema: the compiled table, and every refusal names what it refuses */
#define RF(schema) "{\"model\":\"m\"," MSG ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":" \
                   "{\"name\":\"s\",\"strict\":true,\"schema\":" schema "}}}"
static void test_json_schema(void) {
    api_chat_req_t r;
    api_err_t e;
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"title\":\"t\",\"properties\":{\"a\":{\"type\":\"string\"},"
                        "\"b\":{\"type\":[\"integer\",\"null\"]},\"c\":{\"enum\":[\"x\",1,1]},"
                        "\"d\":{\"type\":\"array\",\"items\":{\"type\":\"boolean\"}}},"
                        "\"required\":[\"a\",\"c\"],\"additionalProperties\":false}"), &r, &e), 0);
    CHECK_EQ_I(r.format, API_FORMAT_JSON_SCHEMA);
    CHECK_EQ_I(r.schema.n_nodes, 6);
    CHECK_EQ_I(r.schema.nodes[0].n_props, 4);
    CHECK_EQ_I(r.schema.nodes[0].types, API_ST_OBJ);
    CHECK_EQ_I(r.schema.nodes[2].types, API_ST_INT | API_ST_NULL);
    CHECK_EQ_I(r.schema.nodes[3].n_enum, 2); /* equal values kept once */
    CHECK_EQ_I(r.schema.nodes[4].items, 5);
    /* {"a":"","c":1}: 2 + "a":"" (6) + , + "c":1 (5) */
    CHECK_EQ_I(r.schema.nodes[0].min_len, 14);
    CHECK(r.schema.props[0].required && !r.schema.props[1].required && r.schema.props[2].required);
    CHECK(r.schema.props[0].len == 3 && !memcmp(r.schema.arena + r.schema.props[0].off, "\"a\"", 3));
    api_chat_req_free(&r);
    /* unsupported keywords: a 400 naming every one (and where the first is) */
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"properties\":{\"age\":{\"type\":\"integer\",\"contains\":2},"
                        "\"s\":{\"type\":\"string\",\"pattern\":\"x\",\"contains\":1}}}"), &r, &e), -1);
    CHECK_EQ_I(e.status, 400);
    CHECK_EQ_S(e.param, "response_format.json_schema.schema");
    CHECK_EQ_S(e.code, "unsupported_parameter");
    CHECK(strstr(e.message, "'contains', 'pattern'") && strstr(e.message, "properties.age"));
    if (!strstr(e.message, "'contains', 'pattern'")) fprintf(stderr, "  %s\n", e.message);
    static const char *unsupported[] = {"allOf", "format", "pattern", "patternProperties", "not",
                                        "uniqueItems", "if", "dependentRequired", "minProperties", "contains"};
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++) {
        char b[512], want[64];
        snprintf(b, sizeof b, RF("{\"type\":\"object\",\"%s\":1}"), unsupported[i]);
        snprintf(want, sizeof want, "'%s'", unsupported[i]);
        CHECK_EQ_I(parse(b, &r, &e), -1);
        CHECK(strstr(e.message, want) != NULL);
        CHECK_EQ_S(e.code, "unsupported_parameter");
    }
    /* additionalProperties a schema: the other members' (a record without properties, or after them);
     * propertyNames only as {"type":"string"}; strict mode still wants false, as OpenAI's */
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"properties\":{\"r\":{\"type\":\"object\",\"propertyNames\":"
                        "{\"type\":\"string\"},\"additionalProperties\":{\"type\":\"number\"}},\"m\":{\"type\":"
                        "\"object\",\"properties\":{\"a\":{\"type\":\"string\"}},\"additionalProperties\":"
                        "{\"type\":\"boolean\"}}}}"), &r, &e), 0);
    CHECK(r.schema.nodes[1].n_props == 0 && r.schema.nodes[1].extra == 2 && r.schema.nodes[2].types == API_ST_NUM);
    CHECK(r.schema.nodes[3].n_props == 1 && r.schema.nodes[3].extra == 5 && r.schema.nodes[0].extra == API_SCHEMA_NONE);
    api_chat_req_free(&r);
    expect_400(RF("{\"type\":\"object\",\"propertyNames\":{\"pattern\":\"^a\"},\"additionalProperties\":{}}"),
               "response_format.json_schema.schema", "unsupported_parameter");
    expect_400(RF("{\"type\":\"object\",\"additionalProperties\":[]}"), "response_format.json_schema.schema", NULL);
    expect_400("{\"model\":\"m\"," MSG ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
               "\"strict\":true,\"parameters\":{\"type\":\"object\",\"properties\":{},\"required\":[],"
               "\"additionalProperties\":{\"type\":\"string\"}}}}]}", "tools[0].function.parameters", NULL);
    /* malformed */
    expect_400(RF("{\"type\":\"array\"}"), "response_format.json_schema.schema", "invalid_value");
    expect_400(RF("{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}"),
               "response_format.json_schema.schema", "invalid_value");
    expect_400(RF("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"strin\"}}}"),
               "response_format.json_schema.schema", "invalid_value");
    expect_400(RF("{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[]}}}"),
               "response_format.json_schema.schema", "invalid_value");
    expect_400(RF("{\"type\":\"object\",\"properties\":{\"a\":{},\"a\":{}}}"),
               "response_format.json_schema.schema", "invalid_value");
    expect_400(RF("[]"), "response_format.json_schema.schema", "invalid_value");
    expect_400("{\"model\":\"m\"," MSG ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":"
               "{\"schema\":{\"type\":\"object\"}}}}", "response_format.json_schema.name",
               "missing_required_parameter");
    expect_400("{\"model\":\"m\"," MSG ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":"
               "{\"name\":\"x\",\"schema\":{\"type\":\"object\"},\"extra\":1}}}", "response_format.json_schema",
               "unknown_parameter");
    expect_400("{\"model\":\"m\"," MSG ",\"response_format\":{\"type\":\"json_object\",\"x\":1}}",
               "response_format", "unknown_parameter");
    /* a tool message names the call it answers */
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"content\":\"r\"}]}",
               "messages[0].tool_call_id", "missing_required_parameter");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"tool\","
               "\"tool_call_id\":null,\"content\":\"r\"}]}", "messages[1].tool_call_id", "missing_required_parameter");
    expect_400("{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"tool_call_id\":7,\"content\":\"r\"}]}",
               "messages[0].tool_call_id", "invalid_type");
    /* $ref, allOf of one, anyOf: what is not a finite tree of type-distinct branches is refused, named */
    CHECK_EQ_I(parse(RF("{\"$defs\":{\"A\":{\"type\":\"string\"}},\"type\":\"object\",\"properties\":{"
                        "\"a\":{\"$ref\":\"#/$defs/A\"},\"b\":{\"anyOf\":[{\"$ref\":\"#/$defs/A\"},{\"type\":\"null\"}]},"
                        "\"c\":{\"allOf\":[{\"$ref\":\"#/$defs/A\"}],\"title\":\"C\"}}}"), &r, &e), 0);
    CHECK_EQ_I(r.schema.nodes[r.schema.props[1].node].types, API_ST_STR | API_ST_NULL);
    api_chat_req_free(&r);
    CHECK_EQ_I(parse(RF("{\"$defs\":{\"N\":{\"type\":\"object\",\"properties\":{\"n\":{\"$ref\":\"#/$defs/N\"}}}},"
                        "\"type\":\"object\",\"properties\":{\"n\":{\"$ref\":\"#/$defs/N\"}}}"), &r, &e), -1);
    CHECK(strstr(e.message, "recursive") != NULL);
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/$defs/missing\"}}}"), &r, &e), -1);
    CHECK(strstr(e.message, "'$ref' at properties.a") != NULL);
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"properties\":{\"a\":{\"anyOf\":[{\"type\":\"integer\"},"
                        "{\"type\":\"number\"}]}}}"), &r, &e), -1);
    CHECK(strstr(e.message, "differ in type") != NULL);
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"properties\":{\"a\":{\"anyOf\":[{\"enum\":[1]},"
                        "{\"type\":\"string\"}]}}}"), &r, &e), -1);
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"properties\":{\"a\":{\"allOf\":[{\"type\":\"string\"},"
                        "{\"type\":\"string\"}]}}}"), &r, &e), -1);
    CHECK(strstr(e.message, "'allOf'") != NULL);
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/$defs/A\",\"minimum\":1}},"
                        "\"$defs\":{\"A\":{\"type\":\"integer\"}}}"), &r, &e), -1);
    CHECK(strstr(e.message, "'minimum'") != NULL);
    /* 17 nested schemas: too deep */
    char deep[2048] = "{\"type\":\"object\",\"properties\":{\"a\":";
    for (int i = 0; i < 17; i++) strcat(deep, "{\"type\":\"array\",\"items\":");
    strcat(deep, "{}");
    for (int i = 0; i < 17; i++) strcat(deep, "}");
    strcat(deep, "}}");
    char body[4096];
    snprintf(body, sizeof body, RF("%s"), deep);
    expect_400(body, "response_format.json_schema.schema", "invalid_value");
}

/* strict function tools: OpenAI's strict rules on top of json_schema's
 * subset, errors naming the tool's parameters; every strict tool's schema in
 * one table (tool_schema), non-strict ones left free */
#define ST(params) "{\"model\":\"m\"," MSG ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}," \
                   "{\"type\":\"function\",\"function\":{\"name\":\"g\",\"strict\":true,\"parameters\":" params "}}]}"
#define OBJ(props, req) "{\"type\":\"object\",\"properties\":" props ",\"required\":" req ",\"additionalProperties\":false}"
static void test_strict_tools(void) {
    api_chat_req_t r;
    api_err_t e;
    int rc = parse(ST(OBJ("{\"a\":{\"type\":\"string\"},\"b\":" OBJ("{\"c\":{\"enum\":[1,2]}}", "[\"c\"]") "}",
                          "[\"b\",\"a\"]")), &r, &e);
    CHECK_EQ_I(rc, 0);
    if (rc) fprintf(stderr, "  refused: %s\n", e.message);
    else {
        CHECK(!r.tools[0].strict && r.tools[0].root == -1 && r.tools[1].strict && r.tools[1].root == 0);
        CHECK_EQ_I(r.tool_schema.n_nodes, 4);
        CHECK_EQ_I(r.tool_schema.nodes[0].n_props, 2);
        CHECK_EQ_I(r.schema.n_nodes, 0); /* response_format's is apart */
        api_chat_req_free(&r);
    }
    /* two strict tools share the table: the second's indexes shifted past the first's */
    CHECK_EQ_I(parse("{\"model\":\"m\"," MSG ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
                     "\"strict\":true,\"parameters\":" OBJ("{\"x\":{\"enum\":[\"p\"]}}", "[\"x\"]") "}},"
                     "{\"type\":\"function\",\"function\":{\"name\":\"g\",\"strict\":true,\"parameters\":"
                     OBJ("{\"y\":{\"type\":\"array\",\"items\":{\"enum\":[\"q\"]}}}", "[\"y\"]") "}},"
                     "{\"type\":\"function\",\"function\":{\"name\":\"h\",\"strict\":true}}]}", &r, &e), 0);
    const api_schema_t *t = &r.tool_schema;
    CHECK(r.tools[0].root == 0 && r.tools[1].root == 2 && r.tools[2].root == 5);
    CHECK_EQ_I(t->nodes[2].n_props, 1);
    const api_schema_prop_t *y = &t->props[t->nodes[2].prop0];
    CHECK(y->len == 3 && !memcmp(t->arena + y->off, "\"y\"", 3) && y->node == 3);
    CHECK(t->nodes[3].parent == 2 && t->nodes[3].items == 4 && t->nodes[4].parent == 3);
    CHECK(t->nodes[4].n_enum == 1 && !memcmp(t->arena + t->lits[t->nodes[4].lit0].off, "\"q\"", 3));
    CHECK(t->nodes[5].types == API_ST_OBJ && t->nodes[5].n_props == 0); /* no parameters: {} */
    api_chat_req_free(&r);
    /* refusals, each naming the tool's parameters */
    const char *bad[] = {
        /* additionalProperties missing, or true, at the root or inside */
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
        "{\"type\":\"object\",\"properties\":{},\"additionalProperties\":true}",
        OBJ("{\"a\":{\"type\":\"object\",\"properties\":{}}}", "[\"a\"]"),
        /* a property not in required */
        OBJ("{\"a\":{\"type\":\"string\"},\"b\":{\"type\":\"string\"}}", "[\"a\"]"),
        OBJ("{\"a\":" OBJ("{\"c\":{\"type\":\"integer\"}}", "[]") "}", "[\"a\"]"),
        /* a schema without a type */
        OBJ("{\"a\":{\"description\":\"anything\"}}", "[\"a\"]"),
        /* json_schema's own refusals too: unsupported keywords, a non-object root */
        OBJ("{\"a\":{\"type\":\"string\",\"pattern\":\"x\"}}", "[\"a\"]"),
        "{\"type\":\"array\",\"items\":{\"type\":\"string\"}}",
        "{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{\"r\":{\"$ref\":\"#\"}},\"required\":[\"r\"]}",
    };
    const char *why[] = {"additionalProperties", "additionalProperties", "object schema at properties.a",
                         "\"b\" at the root", "\"c\" at properties.a", "'type'", "'pattern'", "root must be",
                         "recursive"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char b[1024];
        snprintf(b, sizeof b, ST("%s"), bad[i]);
        CHECK_EQ_I(parse(b, &r, &e), -1);
        CHECK_EQ_I(e.status, 400);
        CHECK_EQ_S(e.param, "tools[1].function.parameters");
        CHECK(strstr(e.message, why[i]) && strstr(e.message, "'tools[1].function.parameters'"));
        if (!strstr(e.message, why[i])) fprintf(stderr, "  %zu: %s\n", i, e.message);
    }
    /* the same schemas, not strict: accepted (any object), as before */
    for (size_t i = 0; i < 6; i++) {
        char b[1024];
        snprintf(b, sizeof b,
                 "{\"model\":\"m\"," MSG ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"g\","
                 "\"strict\":false,\"parameters\":%s}}]}", bad[i]);
        CHECK_EQ_I(parse(b, &r, &e), 0);
        CHECK_EQ_I(r.tool_schema.n_nodes, 0);
        api_chat_req_free(&r);
    }
    /* response_format keeps its rules (optional members; no type is any value) */
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"properties\":{\"a\":{}}}"), &r, &e), 0);
    api_chat_req_free(&r);
    /* an object without properties but additionalProperties false has no members */
    CHECK_EQ_I(parse(RF("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"object\","
                        "\"additionalProperties\":false}}}"), &r, &e), 0);
    CHECK_EQ_I(r.schema.nodes[1].n_props, 0);
    CHECK_EQ_I(r.schema.nodes[1].min_len, 2);
    api_chat_req_free(&r);
}

/* The gateway routes by the affinity key of the whole prompt's ids, which
 * its prompt count makes anyway (gateway/gw_settle.c): the same key as
 * api_chat_prefix_key, which tokenizes only the prompt's first 4 KiB (needs
 * the tokenizer `make tokenizer-data` fetches, which make test-api depends
 * on; without it a recorded skip, TG_SKIP). */
static void test_prefix_key_whole_prompt(void) {
    char err[256], why[300];
    tok_t *t = tok_load("build/data/deepseek-v3-tokenizer/tokenizer.json", err, sizeof err);
    if (!t) {
        snprintf(why, sizeof why, "no tokenizer (make tokenizer-data): %s", err);
        TG_SKIP(why);
        return;
    }
    static char body[40000], text[20000];
    const size_t lens[] = {0, 1, 5, 40, 63, 64, 200, 4000, 4100, 9000, 19000};
    uint64_t keys[sizeof lens / sizeof lens[0]];
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        for (size_t k = 0; k < lens[i]; k++) text[k] = "Say hello in 42 ways.   "[k % 24];
        text[lens[i]] = '\0';
        snprintf(body, sizeof body, "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"%s\"},"
                 "{\"role\":\"user\",\"content\":\"x%zu\"}]}", text, i);
        api_chat_req_t r;
        api_err_t e;
        CHECK_EQ_I(parse(body, &r, &e), 0);
        size_t n = 0;
        char *p = api_chat_render(&r, TOK_TMPL_DEEPSEEK_V3, &n, &e);
        int32_t *ids = NULL;
        long k = p ? tok_encode(t, p, n, 1, &ids) : -1;
        CHECK(k > 0 && k == tok_count(t, p, n, 1));
        keys[i] = tg_prefix_affinity_key(ids, k);
        CHECK(keys[i] != 0);
        CHECK(keys[i] == api_chat_prefix_key(&r, TOK_TMPL_DEEPSEEK_V3, t));
        for (size_t j = 0; j < i; j++) /* the same first block (16 tokens of the system text): the same key */
            if (lens[j] >= 200 || lens[j] < 40) CHECK((keys[j] == keys[i]) == (lens[j] >= 200));
        free(ids);
        free(p);
        api_chat_req_free(&r);
    }
    CHECK(tg_prefix_affinity_key(NULL, 0) == 0);
    tok_free(t);
}

/* ---- numeric bounds (api_num.c) --------------------------------------------- */

/* The schema {"type":"object","properties":{"v": V}} compiled; node 1 is V. */
static int compile_v(const char *v, api_schema_t *sc, api_err_t *e) {
    char b[512];
    snprintf(b, sizeof b, "{\"type\":\"object\",\"properties\":{\"v\":%s}}", v);
    tg_json_t *j = tg_json_parse(b, strlen(b), NULL, NULL);
    int rc = j ? api_schema_compile(sc, j, e) : -1;
    tg_json_free(j);
    return rc;
}

/* The oracle, independent of api_num.c: t a JSON number without exponent
 * (strict syntax; a fraction only when frac) within [lo, hi] (open ends as
 * asked; has_* 0: none), compared as long doubles (exact enough for these
 * short decimals). */
typedef struct {
    const char *schema;
    int frac, has_lo, has_hi, lo_ex, hi_ex;
    long double lo, hi;
    long double mul; /* multipleOf (0: none), checked in billionths */
} num_case_t;

static int num_oracle(const num_case_t *k, const char *t) {
    const char *p = t + (*t == '-');
    if (!isdigit((unsigned char)*p)) return 0;
    if (*p == '0' && isdigit((unsigned char)p[1])) return 0;
    while (isdigit((unsigned char)*p)) p++;
    if (*p == '.') {
        if (!k->frac || !isdigit((unsigned char)p[1])) return 0;
        for (p++; isdigit((unsigned char)*p); p++) {}
    }
    if (*p) return 0;
    long double v = strtold(t, NULL);
    if (k->has_lo && (k->lo_ex ? !(v > k->lo) : !(v >= k->lo))) return 0;
    if (k->has_hi && (k->hi_ex ? !(v < k->hi) : !(v <= k->hi))) return 0;
    if (k->mul > 0 && (fabsl(v * 1e9L - roundl(v * 1e9L)) > 1e-3L || llroundl(v * 1e9L) % llroundl(k->mul * 1e9L)))
        return 0;
    return 1;
}

/* Every string over "-0123456789." up to 5 bytes, fed byte by byte: taken
 * to the end with cost 0 exactly when the oracle says valid; no live prefix
 * dead-ends; cost obeys its own recursion (0 at a valid end, else 1 + the
 * cheapest next byte's). */
static long num_walk(const api_schema_node_t *nd, const num_case_t *k, char *buf, int len, const api_num_t *st,
                     int *bad) {
    static const char AL[] = "-0123456789.";
    long n = 0;
    int cost = api_num_cost(nd, st);
    buf[len] = 0;
    if (len && (cost == 0) != num_oracle(k, buf)) {
        if ((*bad)++ < 5) fprintf(stderr, "  %s: '%s' cost %d, oracle %d\n", k->schema, buf, cost, num_oracle(k, buf));
    }
    if (cost >= API_NUM_NEVER) {
        if ((*bad)++ < 5) fprintf(stderr, "  %s: '%s' taken but dead\n", k->schema, buf);
        return 1;
    }
    int best = API_NUM_NEVER;
    for (const char *c = AL; *c; c++) {
        api_num_t t = *st;
        if (api_num_step(nd, &t, (unsigned char)*c)) continue;
        int ct = api_num_cost(nd, &t);
        if (ct + 1 < best) best = ct + 1;
        if (len < 5) {
            buf[len] = *c;
            n += num_walk(nd, k, buf, len + 1, &t, bad);
        } else {
            buf[len] = *c, buf[len + 1] = 0; /* the 6th byte: only whether the oracle agrees it can go on */
        }
    }
    buf[len] = 0;
    if (cost > 0 && cost != best && (*bad)++ < 5)
        fprintf(stderr, "  %s: '%s' cost %d but the cheapest next byte gives %d\n", k->schema, buf, cost, best);
    /* a valid string of the oracle's with this prefix and one more byte must be taken */
    for (const char *c = AL; *c && len < 5; c++) {
        buf[len] = *c, buf[len + 1] = 0;
        api_num_t t = *st;
        if (num_oracle(k, buf) && api_num_step(nd, &t, (unsigned char)*c) && (*bad)++ < 5)
            fprintf(stderr, "  %s: valid '%s' refused\n", k->schema, buf);
    }
    buf[len] = 0;
    return n + 1;
}

static void test_num_bounds(void) {
    static const num_case_t K[] = {
        {"{\"type\":\"integer\",\"minimum\":0,\"maximum\":100}", 0, 1, 1, 0, 0, 0, 100, 0},
        {"{\"type\":\"integer\",\"exclusiveMinimum\":0}", 0, 1, 0, 1, 0, 0, 0, 0},
        {"{\"type\":\"integer\",\"minimum\":-5,\"maximum\":-2}", 0, 1, 1, 0, 0, -5, -2, 0},
        {"{\"type\":\"integer\",\"minimum\":10}", 0, 1, 0, 0, 0, 10, 0, 0},
        {"{\"type\":\"integer\",\"minimum\":-9007199254740991,\"maximum\":9007199254740991}", 0, 1, 1, 0, 0,
         -9007199254740991.0L, 9007199254740991.0L, 0},
        {"{\"type\":\"integer\",\"minimum\":3.5,\"maximum\":7.2}", 0, 1, 1, 0, 0, 3.5L, 7.2L, 0},
        {"{\"type\":\"integer\",\"exclusiveMaximum\":0,\"minimum\":-1e2}", 0, 1, 1, 0, 1, -100, 0, 0},
        {"{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", 1, 1, 1, 0, 0, 0, 1, 0},
        {"{\"type\":\"number\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":1}", 1, 1, 1, 1, 1, 0, 1, 0},
        {"{\"type\":\"number\",\"minimum\":-1.5,\"maximum\":2.25}", 1, 1, 1, 0, 0, -1.5L, 2.25L, 0},
        {"{\"type\":\"number\",\"exclusiveMinimum\":0.5}", 1, 1, 0, 1, 0, 0.5L, 0, 0},
        {"{\"type\":\"number\",\"minimum\":1.25,\"maximum\":1.25}", 1, 1, 1, 0, 0, 1.25L, 1.25L, 0},
        {"{\"type\":\"number\",\"exclusiveMaximum\":0}", 1, 0, 1, 0, 1, 0, 0, 0},
        {"{\"type\":\"number\",\"minimum\":120,\"maximum\":125.5}", 1, 1, 1, 0, 0, 120, 125.5L, 0},
        {"{\"type\":[\"number\",\"null\"],\"minimum\":-0.05,\"exclusiveMaximum\":0.1}", 1, 1, 1, 0, 1, -0.05L, 0.1L, 0},
        {"{\"type\":\"number\",\"maximum\":1,\"exclusiveMaximum\":true,\"minimum\":0.999}", 1, 1, 1, 0, 1,
         0.999L, 1, 0},
        /* multipleOf, alone and with bounds (zod's .multipleOf(), .step()) */
        {"{\"type\":\"number\",\"multipleOf\":0.5}", 1, 0, 0, 0, 0, 0, 0, 0.5L},
        {"{\"type\":\"number\",\"multipleOf\":0.25,\"minimum\":0.3,\"maximum\":2}", 1, 1, 1, 0, 0, 0.3L, 2, 0.25L},
        {"{\"type\":\"number\",\"multipleOf\":7,\"exclusiveMinimum\":0}", 1, 1, 0, 1, 0, 0, 0, 7},
        {"{\"type\":\"number\",\"multipleOf\":0.01,\"minimum\":-1,\"maximum\":1}", 1, 1, 1, 0, 0, -1, 1, 0.01L},
        {"{\"type\":\"integer\",\"multipleOf\":3,\"minimum\":-10,\"maximum\":50}", 0, 1, 1, 0, 0, -10, 50, 3},
        {"{\"type\":\"integer\",\"multipleOf\":2.5}", 0, 0, 0, 0, 0, 0, 0, 5},
        {"{\"type\":\"integer\",\"multipleOf\":12,\"exclusiveMaximum\":-20}", 0, 0, 1, 0, 1, 0, -20, 12},
    };
    for (size_t i = 0; i < sizeof K / sizeof *K; i++) {
        api_schema_t sc;
        api_err_t e;
        if (compile_v(K[i].schema, &sc, &e)) {
            CHECK(0);
            fprintf(stderr, "  %s refused: %s\n", K[i].schema, e.message);
            continue;
        }
        char buf[16];
        int bad = 0;
        api_num_t st = {0};
        long n = num_walk(&sc.nodes[1], &K[i], buf, 0, &st, &bad);
        CHECK_EQ_I(bad, 0);
        CHECK(n >= 5);
        if (n < 5) fprintf(stderr, "  %s: %ld prefixes\n", K[i].schema, n);
        api_schema_free(&sc);
    }
    /* compiled: inward rounding, the tighter bound, integers made inclusive */
    api_schema_t sc;
    api_err_t e;
    /* multipleOf: in the bounds' units; an integer node's the whole multiples; refused when no multiple fits */
    CHECK_EQ_I(compile_v("{\"type\":\"number\",\"multipleOf\":0.05,\"maximum\":3.5}", &sc, &e), 0);
    CHECK(sc.nodes[1].nscale == 2 && sc.nodes[1].nmul == 5 && sc.nodes[1].nhi == 350);
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":\"integer\",\"multipleOf\":0.5}", &sc, &e), 0);
    CHECK(sc.nodes[1].nscale == 0 && sc.nodes[1].nmul == 0); /* every integer */
    api_schema_free(&sc);
    static const char *const MUL_BAD[] = {
        "{\"type\":\"integer\",\"multipleOf\":10,\"minimum\":1,\"maximum\":9}",
        "{\"type\":\"number\",\"multipleOf\":0}", "{\"type\":\"number\",\"multipleOf\":-2}",
        "{\"type\":\"number\",\"multipleOf\":\"2\"}", "{\"type\":\"number\",\"multipleOf\":1e-10}",
        "{\"enum\":[1,2],\"multipleOf\":2}",
    };
    for (size_t i = 0; i < sizeof MUL_BAD / sizeof *MUL_BAD; i++) {
        CHECK_EQ_I(compile_v(MUL_BAD[i], &sc, &e), -1);
        CHECK(strstr(e.message, "multipleOf") != NULL);
    }
    /* tuples: prefixItems (then items), or draft 7's items array (then additionalItems); a false rest
     * caps maxItems at the tuple's length; the shortest value has the elements minItems asks for */
    CHECK_EQ_I(compile_v("{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\",\"minLength\":3},"
                         "{\"type\":\"integer\"}],\"items\":false,\"minItems\":2}", &sc, &e), 0);
    CHECK(sc.nodes[1].n_tup == 2 && sc.nodes[1].max_items == 2 && sc.nodes[1].items == API_SCHEMA_NONE);
    CHECK(api_schema_elem(&sc, 1, 0) == 2 && api_schema_elem(&sc, 1, 1) == 3 && api_schema_elem(&sc, 1, 2) < 0);
    CHECK_EQ_I(sc.nodes[1].min_len, 2 + 5 + 1 + 1); /* ["xxx",0] */
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":\"array\",\"items\":[{\"type\":\"string\"}],\"additionalItems\":"
                         "{\"type\":\"number\"},\"minItems\":3}", &sc, &e), 0);
    CHECK(sc.nodes[1].n_tup == 1 && sc.nodes[1].items == 3 && sc.nodes[1].max_items == -1);
    CHECK_EQ_I(sc.nodes[1].min_len, 2 + 2 + 2 + 2); /* ["",0,0] */
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":\"array\",\"items\":false}", &sc, &e), 0);
    CHECK_EQ_I(sc.nodes[1].max_items, 0);
    api_schema_free(&sc);
    static const char *const TUP_BAD[] = {
        "{\"type\":\"array\",\"prefixItems\":[]}", "{\"type\":\"array\",\"prefixItems\":{}}",
        "{\"type\":\"array\",\"prefixItems\":[{}],\"items\":[{}]}",
        "{\"type\":\"array\",\"prefixItems\":[{}],\"items\":false,\"minItems\":2}",
        "{\"type\":\"string\",\"prefixItems\":[{}]}",
    };
    for (size_t i = 0; i < sizeof TUP_BAD / sizeof *TUP_BAD; i++) {
        CHECK_EQ_I(compile_v(TUP_BAD[i], &sc, &e), -1);
        if (!strstr(e.message, "Items")) fprintf(stderr, "  %s: %s\n", TUP_BAD[i], e.message);
    }
    /* uniqueItems: false is no constraint; true is a 400 that says why */
    CHECK_EQ_I(compile_v("{\"type\":\"array\",\"uniqueItems\":false}", &sc, &e), 0);
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":\"array\",\"uniqueItems\":true,\"items\":{\"type\":\"string\"}}", &sc, &e), -1);
    CHECK(strstr(e.message, "'uniqueItems'") && strstr(e.message, "distinct"));
    CHECK_EQ_I(compile_v("{\"type\":\"integer\",\"exclusiveMinimum\":2,\"minimum\":1,\"maximum\":9.9}", &sc, &e), 0);
    CHECK_EQ_I(sc.nodes[1].nb, API_NB_LO | API_NB_HI);
    CHECK(sc.nodes[1].nlo == 3 && sc.nodes[1].nhi == 9 && sc.nodes[1].nscale == 0);
    CHECK_EQ_I(sc.nodes[1].min_len, 1);
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":\"number\",\"minimum\":1e-12,\"maximum\":1e300}", &sc, &e), 0);
    CHECK(sc.nodes[1].nscale == 9 && sc.nodes[1].nlo == 1 && sc.nodes[1].nhi == API_NUM_LIMIT);
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":\"integer\",\"minimum\":1000}", &sc, &e), 0);
    CHECK_EQ_I(sc.nodes[1].min_len, 4); /* "1000" */
    CHECK_EQ_I(sc.nodes[0].min_len, 2); /* v is optional */
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":\"array\",\"minItems\":3,\"maxItems\":5,\"items\":{\"type\":\"string\","
                         "\"minLength\":2}}", &sc, &e), 0);
    CHECK(sc.nodes[1].min_items == 3 && sc.nodes[1].max_items == 5 && sc.nodes[2].min_chars == 2 &&
          sc.nodes[2].max_chars == -1);
    CHECK_EQ_I(sc.nodes[2].min_len, 4);                 /* "xx" */
    CHECK_EQ_I(sc.nodes[1].min_len, 2 + 3 * 4 + 2);     /* ["xx","xx","xx"] */
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"anyOf\":[{\"type\":\"integer\",\"minimum\":5},{\"type\":\"null\"}]}", &sc, &e), 0);
    CHECK(sc.nodes[1].nb == API_NB_LO && sc.nodes[1].nlo == 5 && sc.nodes[1].types == (API_ST_INT | API_ST_NULL));
    api_schema_free(&sc);
    /* a number's format (zod v4's z.int32(), z.uint32(), ...) is its type's range, enforced as bounds */
    CHECK_EQ_I(compile_v("{\"type\":\"integer\",\"format\":\"int32\"}", &sc, &e), 0);
    CHECK(sc.nodes[1].nb == (API_NB_LO | API_NB_HI) && sc.nodes[1].nlo == -2147483648LL && sc.nodes[1].nhi == 2147483647);
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":[\"integer\",\"null\"],\"format\":\"uint32\",\"minimum\":5,\"maximum\":1e12}", &sc,
                         &e), 0);
    CHECK(sc.nodes[1].nlo == 5 && sc.nodes[1].nhi == 4294967295LL); /* the tighter of each */
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":\"number\",\"format\":\"float32\"}", &sc, &e), 0);
    CHECK(sc.nodes[1].nlo == -API_NUM_LIMIT && sc.nodes[1].nhi == API_NUM_LIMIT); /* brought in to the limit */
    api_schema_free(&sc);
    static const char *const FMT[] = {"{\"type\":\"string\",\"format\":\"uri\"}",
                                      "{\"type\":\"string\",\"format\":\"int32\"}",
                                      "{\"type\":\"integer\",\"format\":\"int128\"}",
                                      "{\"format\":\"int32\"}",
                                      "{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"null\"}],\"format\":\"int32\"}"};
    for (size_t i = 0; i < sizeof FMT / sizeof *FMT; i++) {
        CHECK_EQ_I(compile_v(FMT[i], &sc, &e), -1);
        CHECK_EQ_S(e.code, "unsupported_parameter");
        CHECK(strstr(e.message, "'format'") && strstr(e.message, "properties.v"));
    }
    /* refused, each named */
    static const char *const BAD[] = {
        "{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}",
        "{\"type\":\"integer\",\"exclusiveMinimum\":1,\"exclusiveMaximum\":2}",
        "{\"type\":\"number\",\"exclusiveMinimum\":1,\"maximum\":1}",
        "{\"type\":\"number\",\"minimum\":\"1\"}",
        "{\"type\":\"number\",\"minimum\":1e30}",
        "{\"type\":\"array\",\"minItems\":-1}",
        "{\"type\":\"array\",\"minItems\":1.5}",
        "{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}",
        "{\"type\":\"array\",\"minItems\":5000}",
        "{\"type\":\"string\",\"minLength\":2,\"maxLength\":1}",
        "{\"enum\":[1,2],\"minimum\":1}",
        "{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"null\"}],\"minimum\":1}",
    };
    for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
        CHECK_EQ_I(compile_v(BAD[i], &sc, &e), -1);
        CHECK_EQ_I(e.status, 400);
        CHECK_EQ_S(e.code, "invalid_value");
        if (e.status == 400 && !strstr(e.message, "at properties.v")) fprintf(stderr, "  %s: %s\n", BAD[i], e.message);
        CHECK(strstr(e.message, "at properties.v") != NULL);
    }
    /* five arrays with minItems inside each other: the grammar counts four */
    char deep[512] = "{\"type\":\"string\"}";
    for (int i = 0; i < API_SCHEMA_MAX_ADEPTH + 1; i++) {
        char t[512];
        snprintf(t, sizeof t, "{\"type\":\"array\",\"minItems\":1,\"items\":%s}", deep);
        strcpy(deep, t);
    }
    CHECK_EQ_I(compile_v(deep, &sc, &e), -1);
    CHECK(strstr(e.message, "inside each other") != NULL);
}

/* ---- string formats (api_fmt.c) --------------------------------------------- */

/* Feed t whole; 1 when every byte is taken and the string may close. */
static int fmt_takes(int kind, const char *t) {
    api_fmt_t f;
    api_fmt_init(kind, &f);
    for (; *t; t++)
        if (api_fmt_step(kind, &f, (unsigned char)*t)) return 0;
    return api_fmt_rest(kind, &f) == 0;
}

/* The oracle for dates, apart from api_fmt.c: timegm leaves a valid date as it is. */
static int date_valid(int y, int m, int d) {
    if (y < 1 || m < 1 || m > 12 || d < 1) return 0;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d, .tm_hour = 12};
    timegm(&tm);
    return tm.tm_year == y - 1900 && tm.tm_mon == m - 1 && tm.tm_mday == d;
}

/* PCRE2 match of the whole of t against pattern pat (anchored by the pattern itself). */
static int re_takes(const char *pat, const char *t) {
    int perr;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, 0, &perr, &eoff, NULL);
    pcre2_match_data *md = re ? pcre2_match_data_create_from_pattern(re, NULL) : NULL;
    int ok = re && md && pcre2_match(re, (PCRE2_SPTR)t, strlen(t), 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return ok;
}

/* The oracles of the formats written since 2026-12 (email, hostname, ipv4, ipv6, duration, zod's
 * offset-less times), apart from api_fmt.c: the C library's address parser, and regular expressions
 * written from RFC 3339 appendix A, RFC 1123 and RFC 5321 (length limits checked by hand). */
#define RE_DURATION "^P(?:(?:\\d+Y(?:\\d+M(?:\\d+D)?)?|\\d+M(?:\\d+D)?|\\d+D)" \
                    "(?:T(?:\\d+H(?:\\d+M(?:\\d+S)?)?|\\d+M(?:\\d+S)?|\\d+S))?" \
                    "|T(?:\\d+H(?:\\d+M(?:\\d+S)?)?|\\d+M(?:\\d+S)?|\\d+S)|\\d+W)$"
#define RE_LABEL "[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
#define RE_HOSTNAME "^" RE_LABEL "(?:\\." RE_LABEL ")*$"
#define RE_EMAIL "^[a-zA-Z0-9._+-]{1,64}@" RE_LABEL "(?:\\." RE_LABEL ")*\\.[a-zA-Z]{2,63}$"

static int fmt_valid(int kind, const char *t) {
    size_t n = strlen(t);
    unsigned char a[16];
    char back[64];
    switch (kind) {
    case API_SF_IPV4: /* inet_pton takes it, and prints it back the same (no leading zeros) */
        return inet_pton(AF_INET, t, a) == 1 && inet_ntop(AF_INET, a, back, sizeof back) && !strcmp(back, t);
    case API_SF_IPV6: return inet_pton(AF_INET6, t, a) == 1;
    case API_SF_HOSTNAME: return n <= 253 && re_takes(RE_HOSTNAME, t);
    case API_SF_EMAIL:
        return n <= 254 && re_takes(RE_EMAIL, t) && t[0] != '.' && !strstr(t, "..") && !strstr(t, ".@");
    case API_SF_DURATION: return re_takes(RE_DURATION, t);
    case API_SF_TIME_LOCAL: return re_takes("^(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d{1,6})?$", t);
    case API_SF_TIME_LOCAL_S: return re_takes("^(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d$", t);
    case API_SF_HHMM: return re_takes("^(?:[01]\\d|2[0-3]):[0-5]\\d$", t);
    }
    return 0;
}

static void test_formats_more(void) {
    static const struct { int kind; const char *t; int ok; } C[] = {
        {API_SF_IPV4, "192.168.0.1", 1}, {API_SF_IPV4, "0.0.0.0", 1}, {API_SF_IPV4, "255.255.255.255", 1},
        {API_SF_IPV4, "256.1.1.1", 0}, {API_SF_IPV4, "01.1.1.1", 0}, {API_SF_IPV4, "1.1.1", 0},
        {API_SF_IPV4, "1.1.1.1.", 0}, {API_SF_IPV4, "1..1.1", 0}, {API_SF_IPV4, "1.1.1.1000", 0},
        {API_SF_IPV6, "2001:db8:0:0:0:0:0:1", 1}, {API_SF_IPV6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1},
        {API_SF_IPV6, "2001:db8::1", 0}, {API_SF_IPV6, "1:2:3:4:5:6:7", 0}, {API_SF_IPV6, "1:2:3:4:5:6:7:8:9", 0},
        {API_SF_IPV6, "12345:0:0:0:0:0:0:0", 0}, {API_SF_IPV6, "ABCD:0:0:0:0:0:0:0", 0},
        {API_SF_HOSTNAME, "example.com", 1}, {API_SF_HOSTNAME, "localhost", 1}, {API_SF_HOSTNAME, "a-b.c9", 1},
        {API_SF_HOSTNAME, "-a.com", 0}, {API_SF_HOSTNAME, "a-.com", 0}, {API_SF_HOSTNAME, "a..com", 0},
        {API_SF_HOSTNAME, "a.com.", 0}, {API_SF_HOSTNAME, "", 0}, {API_SF_HOSTNAME, "a_b.com", 0},
        {API_SF_HOSTNAME, "1a.com", 0},
        {API_SF_EMAIL, "ann.lee+x@mail.example.org", 1}, {API_SF_EMAIL, "a@b.cc", 1}, {API_SF_EMAIL, "a@b.c", 0},
        {API_SF_EMAIL, "a@bcd", 0}, {API_SF_EMAIL, ".a@b.cc", 0}, {API_SF_EMAIL, "a.@b.cc", 0},
        {API_SF_EMAIL, "a..b@b.cc", 0}, {API_SF_EMAIL, "a@b.c1", 0}, {API_SF_EMAIL, "@b.cc", 0},
        {API_SF_EMAIL, "a@-b.cc", 0}, {API_SF_EMAIL, "a@b-.cc", 0},
        {API_SF_DURATION, "P1Y2M3DT4H5M6S", 1}, {API_SF_DURATION, "PT36H", 1}, {API_SF_DURATION, "P3W", 1},
        {API_SF_DURATION, "P1D", 1}, {API_SF_DURATION, "PT5M30S", 1}, {API_SF_DURATION, "P", 0},
        {API_SF_DURATION, "PT", 0}, {API_SF_DURATION, "P1DT", 0}, {API_SF_DURATION, "P1Y2D", 0},
        {API_SF_DURATION, "PT1H2S", 0}, {API_SF_DURATION, "P1W2D", 0}, {API_SF_DURATION, "P2D1Y", 0},
        {API_SF_DURATION, "P1.5D", 0}, {API_SF_DURATION, "1D", 0},
        {API_SF_TIME_LOCAL, "23:59:59", 1}, {API_SF_TIME_LOCAL, "00:00:00.123456", 1},
        {API_SF_TIME_LOCAL, "12:00:00Z", 0}, {API_SF_TIME_LOCAL, "12:00", 0}, {API_SF_TIME_LOCAL, "24:00:00", 0},
        {API_SF_TIME_LOCAL_S, "12:00:00", 1}, {API_SF_TIME_LOCAL_S, "12:00:00.5", 0},
        {API_SF_HHMM, "09:30", 1}, {API_SF_HHMM, "09:30:00", 0}, {API_SF_HHMM, "9:30", 0},
    };
    for (size_t i = 0; i < sizeof C / sizeof *C; i++) {
        int got = fmt_takes(C[i].kind, C[i].t);
        if (got != C[i].ok) fprintf(stderr, "  format %d '%s': taken %d\n", C[i].kind, C[i].t, got);
        CHECK_EQ_I(got, C[i].ok);
        if (C[i].ok) CHECK(fmt_valid(C[i].kind, C[i].t));
    }
    /* random walks, biased to stop once complete: every byte taken leads on to a whole value the
     * oracles take; api_fmt_rest goes down by at most one a byte and is 0 exactly when the value may end */
    static const int K[] = {API_SF_IPV4, API_SF_IPV6, API_SF_HOSTNAME, API_SF_EMAIL, API_SF_DURATION,
                            API_SF_TIME_LOCAL, API_SF_TIME_LOCAL_S, API_SF_HHMM};
    uint64_t rs = 0x9e3779b97f4a7c15ULL;
    int walks = 0, good = 0;
    for (size_t k = 0; k < sizeof K / sizeof *K; k++)
        for (int w = 0; w < 400; w++) {
            int kind = K[k];
            api_fmt_t f;
            api_fmt_init(kind, &f);
            char out[300];
            int n = 0, ok = 1;
            for (;;) {
                int rest = api_fmt_rest(kind, &f);
                rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
                if (!rest && rs % 8 == 0) break;
                unsigned char c = 0;
                api_fmt_t t;
                int tries = 0;
                do {
                    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
                    c = (unsigned char)(0x20 + rs % 95);
                    t = f;
                } while (api_fmt_step(kind, &t, c) && ++tries < 20000);
                if (tries >= 20000) {
                    ok = rest == 0;
                    break;
                }
                ok &= api_fmt_rest(kind, &t) >= rest - 1;
                f = t;
                out[n++] = (char)c;
                if (n >= (int)sizeof out - 1) {
                    ok = 0;
                    break;
                }
            }
            out[n] = 0;
            int valid = ok && api_fmt_rest(kind, &f) == 0 && fmt_valid(kind, out);
            if (!valid) fprintf(stderr, "  walk %d: '%s'\n", kind, out);
            good += valid;
            walks++;
        }
    CHECK_EQ_I(good, walks);
    printf("format walks (email, hostname, ip, duration, zod times): %d/%d whole and valid\n", good, walks);
    /* formats of the grammar: compiled, not refused */
    static const char *const F[] = {"email", "hostname", "ipv4", "ipv6", "duration"};
    for (size_t i = 0; i < sizeof F / sizeof *F; i++) {
        char sch[128];
        snprintf(sch, sizeof sch, "{\"type\":\"string\",\"format\":\"%s\"}", F[i]);
        api_schema_t sc;
        api_err_t e;
        int rc = compile_v(sch, &sc, &e);
        if (rc) fprintf(stderr, "  %s: %s\n", F[i], e.message);
        CHECK_EQ_I(rc, 0);
        if (!rc) api_schema_free(&sc);
    }
}

static void test_formats(void) {
    char b[64];
    int bad = 0;
    for (int y = 0; y <= 2404; y++) /* every day of 2405 years, and months 0-13, days 0-32 */
        for (int m = 0; m <= 13; m++)
            for (int d = 0; d <= 32; d++) {
                snprintf(b, sizeof b, "%04d-%02d-%02d", y, m, d);
                if (fmt_takes(API_SF_DATE, b) != date_valid(y, m, d) && bad++ < 5)
                    fprintf(stderr, "  date %s: taken %d\n", b, fmt_takes(API_SF_DATE, b));
            }
    for (int h = 0; h <= 30; h++)
        for (int m = 0; m <= 65; m++)
            for (int sec = 0; sec <= 65; sec++) {
                snprintf(b, sizeof b, "%02d:%02d:%02dZ", h, m, sec);
                if (fmt_takes(API_SF_TIME, b) != (h < 24 && m < 60 && sec < 60) && bad++ < 5)
                    fprintf(stderr, "  time %s\n", b);
            }
    CHECK_EQ_I(bad, 0);
    static const char *const TIME_OK[] = {"23:59:59Z", "00:00:00.5+05:30", "12:30:00.123456-23:59", "01:02:03+00:00"};
    static const char *const TIME_BAD[] = {"12:00:00", "12:00:00.Z", "12:00:00.1234567Z", "12:00:00+24:00",
                                           "12:00:00+05:60", "12:00:00z", "24:00:00Z", "12:00:60Z", "1:00:00Z",
                                           "12:00:00+0530"};
    for (size_t i = 0; i < sizeof TIME_OK / sizeof *TIME_OK; i++) CHECK(fmt_takes(API_SF_TIME, TIME_OK[i]));
    for (size_t i = 0; i < sizeof TIME_BAD / sizeof *TIME_BAD; i++) CHECK(!fmt_takes(API_SF_TIME, TIME_BAD[i]));
    CHECK(fmt_takes(API_SF_DATETIME, "2024-02-29T23:59:59.25-07:00"));
    CHECK(!fmt_takes(API_SF_DATETIME, "2023-02-29T00:00:00Z"));
    CHECK(!fmt_takes(API_SF_DATETIME, "2024-02-28 00:00:00Z"));
    CHECK(!fmt_takes(API_SF_DATETIME, "2024-02-28"));
    CHECK(fmt_takes(API_SF_UUID, "123e4567-e89b-12d3-a456-426614174000"));
    CHECK(!fmt_takes(API_SF_UUID, "123E4567-e89b-12d3-a456-426614174000")); /* lower case is written */
    CHECK(!fmt_takes(API_SF_UUID, "123e4567e89b-12d3-a456-426614174000-"));
    CHECK(!fmt_takes(API_SF_UUID, "123e4567-e89b-12d3-a456-42661417400"));
    /* random walks: any printable byte taken is followed up to a whole value, which the oracles take;
     * api_fmt_rest is the fewest bytes left (each step takes it down by at most one) */
    uint64_t rs = 88172645463325252ULL;
    int walks = 0, good = 0;
    for (int kind = API_SF_DATE; kind <= API_SF_UUID; kind++)
        for (int w = 0; w < 300; w++) {
            api_fmt_t f;
            api_fmt_init(kind, &f);
            char out[80];
            int n = 0, ok = 1;
            while (n < 70) {
                int rest = api_fmt_rest(kind, &f);
                if (!rest && (rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17, rs % 3 == 0)) break;
                unsigned char c = 0;
                api_fmt_t t;
                int tries = 0;
                do {
                    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
                    c = (unsigned char)(0x20 + rs % 95);
                    t = f;
                } while (api_fmt_step(kind, &t, c) && ++tries < 100000);
                if (tries >= 100000) {
                    ok = rest == 0; /* nothing more may come: only when complete */
                    break;
                }
                ok &= api_fmt_rest(kind, &t) >= rest - 1;
                f = t;
                out[n++] = (char)c;
            }
            out[n] = 0;
            int y, mo, d, h, mi, sec;
            char tail[40] = "";
            int valid = api_fmt_rest(kind, &f) == 0 && ok;
            if (kind == API_SF_DATE) valid &= sscanf(out, "%4d-%2d-%2d", &y, &mo, &d) == 3 && date_valid(y, mo, d);
            if (kind == API_SF_DATETIME)
                valid &= sscanf(out, "%4d-%2d-%2dT%2d:%2d:%2d%39s", &y, &mo, &d, &h, &mi, &sec, tail) == 7 &&
                         date_valid(y, mo, d) && h < 24 && mi < 60 && sec < 60;
            if (kind == API_SF_UUID) valid &= n == 36 && out[8] == '-' && out[23] == '-';
            if (!valid) fprintf(stderr, "  walk %d: '%s'\n", kind, out);
            good += valid;
            walks++;
        }
    CHECK_EQ_I(good, walks);
    printf("format walks: %d/%d whole and valid\n", good, walks);
    /* zod v4's patterns beside its formats: recognised byte for byte, and what is written matches them
     * (PCRE2 runs each pattern on 400 random walks of the refined format) */
    static const struct { const char *fmt, *pat; int kind; } Z[] = {
        {"date", ZOD_DATE, API_SF_DATE}, {"date-time", ZOD_DATETIME, API_SF_DATETIME_Z},
        {"date-time", ZOD_DATETIME_OFFSET, API_SF_DATETIME}, {"uuid", ZOD_UUID, API_SF_UUID_V},
        {"email", ZOD_EMAIL, API_SF_EMAIL}, {"hostname", ZOD_HOSTNAME, API_SF_HOSTNAME},
        {"ipv4", ZOD_IPV4, API_SF_IPV4}, {"ipv6", ZOD_IPV6, API_SF_IPV6}, {"duration", ZOD_DURATION, API_SF_DURATION},
        {NULL, ZOD_TIME, API_SF_TIME_LOCAL}, {NULL, ZOD_TIME_S, API_SF_TIME_LOCAL_S}, {NULL, ZOD_HHMM, API_SF_HHMM},
    };
    for (size_t i = 0; i < sizeof Z / sizeof *Z; i++) {
        tg_buf_t sch = {0};
        if (Z[i].fmt) tg_buf_printf(&sch, "{\"type\":\"string\",\"format\":\"%s\",\"pattern\":", Z[i].fmt);
        else tg_buf_printf(&sch, "{\"type\":\"string\",\"pattern\":"); /* z.iso.time(): a pattern alone */
        tg_json_write_str(&sch, Z[i].pat, strlen(Z[i].pat));
        tg_buf_put(&sch, "}", 2);
        api_schema_t sc;
        api_err_t e;
        CHECK_EQ_I(compile_v(sch.p, &sc, &e), 0);
        CHECK_EQ_I(sc.n_nodes > 1 ? sc.nodes[1].sfmt : -1, Z[i].kind);
        if (sc.n_nodes) api_schema_free(&sc);
        tg_buf_free(&sch);
        int perr;
        PCRE2_SIZE eoff;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)Z[i].pat, PCRE2_ZERO_TERMINATED, 0, &perr, &eoff, NULL);
        pcre2_match_data *md = re ? pcre2_match_data_create_from_pattern(re, NULL) : NULL;
        CHECK(re && md);
        int matched = 0;
        for (int w = 0; re && md && w < 400; w++) {
            api_fmt_t f;
            api_fmt_init(Z[i].kind, &f);
            char out[300];
            int n = 0;
            while (n < 290 && (api_fmt_rest(Z[i].kind, &f) || (rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17, rs % 3))) {
                api_fmt_t t;
                unsigned char ch;
                int tries = 0;
                do {
                    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
                    ch = (unsigned char)(0x20 + rs % 95);
                    t = f;
                } while (api_fmt_step(Z[i].kind, &t, ch) && ++tries < 10000);
                if (tries >= 10000) break;
                f = t;
                out[n++] = (char)ch;
            }
            out[n] = 0;
            int ok = !api_fmt_rest(Z[i].kind, &f) &&
                     pcre2_match(re, (PCRE2_SPTR)out, (PCRE2_SIZE)n, 0, 0, md, NULL) >= 0;
            if (!ok) fprintf(stderr, "  %s: '%s' does not match zod's pattern\n", Z[i].fmt ? Z[i].fmt : "time", out);
            matched += ok;
        }
        CHECK_EQ_I(matched, 400);
        pcre2_match_data_free(md);
        pcre2_code_free(re);
    }
    CHECK(!fmt_takes(API_SF_DATETIME_Z, "2024-01-01T00:00:00+01:00"));
    CHECK(fmt_takes(API_SF_DATETIME_Z, "2024-01-01T00:00:00.5Z"));
    CHECK(!fmt_takes(API_SF_UUID_V, "123e4567-e89b-02d3-a456-426614174000")); /* version 0 */
    CHECK(!fmt_takes(API_SF_UUID_V, "123e4567-e89b-12d3-c456-426614174000")); /* variant 110x */
    CHECK(fmt_takes(API_SF_UUID_V, "123e4567-e89b-42d3-b456-426614174000"));
    /* any other pattern is still refused by name */
    api_schema_t sc;
    api_err_t e;
    CHECK_EQ_I(compile_v("{\"type\":\"string\",\"format\":\"date\",\"pattern\":\"^\\\\d{4}$\"}", &sc, &e), -1);
    CHECK(strstr(e.message, "'pattern'") != NULL);
}

/* Hostile schemas (session 14, found by fuzz/engine_server/fuzz_gram.c): an
 * unsatisfiable one is a 400 naming it, never a grammar with a dead end; the
 * shortest lengths saturate instead of overflowing. */
static void test_schema_adversarial(void) {
    api_schema_t sc = {0};
    api_err_t e;
    /* "items": false admits only [], so minItems above 0 admits nothing (alone, or as an anyOf branch) */
    static const char *const NONE[] = {
        "{\"type\":\"array\",\"items\":false,\"minItems\":1}",
        "{\"type\":[\"array\",\"null\"],\"items\":false,\"minItems\":3}",
        "{\"anyOf\":[{\"type\":\"array\",\"items\":false,\"minItems\":1},{\"type\":\"null\"}]}",
    };
    for (size_t i = 0; i < sizeof NONE / sizeof *NONE; i++) {
        CHECK_EQ_I(compile_v(NONE[i], &sc, &e), -1);
        CHECK(e.status == 400 && !strcmp(e.param, "response_format.json_schema.schema") &&
              strstr(e.message, "'minItems' at properties.v") && strstr(e.message, "'items' is false"));
        if (!strstr(e.message, "'items' is false")) fprintf(stderr, "  %s: %s\n", NONE[i], e.message);
    }
    CHECK_EQ_I(compile_v("{\"type\":\"array\",\"items\":false,\"minItems\":0}", &sc, &e), 0);
    CHECK_EQ_I(sc.nodes[1].max_items, 0);
    api_schema_free(&sc);
    /* 8 required members, each 4096 arrays of 4096 strings of 4096 characters: 2^39 bytes at least,
     * saturated (the sum overflowed int32_t: a negative shortest length) */
    tg_buf_t b = {0};
    tg_buf_puts(&b, "{\"type\":\"object\",\"required\":[\"p0\",\"p1\",\"p2\",\"p3\",\"p4\",\"p5\",\"p6\",\"p7\"],"
                    "\"properties\":{");
    for (int i = 0; i < 8; i++) {
        char m[200];
        snprintf(m, sizeof m, "%s\"p%d\":{\"type\":\"array\",\"minItems\":4096,\"items\":{\"type\":\"array\","
                 "\"minItems\":4096,\"items\":{\"type\":\"string\",\"minLength\":4096}}}", i ? "," : "", i);
        tg_buf_puts(&b, m);
    }
    tg_buf_puts(&b, "}}");
    tg_json_t *j = tg_json_parse(b.p, b.len, NULL, NULL);
    CHECK(j != NULL);
    CHECK_EQ_I(api_schema_compile(&sc, j, &e), 0);
    for (int i = 0; i < sc.n_nodes; i++) CHECK(sc.nodes[i].min_len >= 1 && sc.nodes[i].min_len <= API_SCHEMA_LEN_MAX);
    CHECK_EQ_I(sc.nodes[0].min_len, API_SCHEMA_LEN_MAX);
    api_schema_free(&sc);
    tg_json_free(j);
    tg_buf_free(&b);
}

/* Text through api_num_step: 0 when every byte is taken and the number may
 * end there (cost 0), else -1. */
static int num_takes(const api_schema_node_t *nd, const char *t) {
    api_num_t s = {0};
    for (; *t; t++)
        if (api_num_step(nd, &s, (unsigned char)*t)) return -1;
    return api_num_cost(nd, &s) ? -1 : 0;
}

/* A bounded number has at most API_NUM_MAX_TAIL fraction digits beyond its
 * scale: 0.99999999999999999999 is below 1, but a client reading doubles
 * gets 1.0, which exclusiveMaximum 1 refuses (session 14, fuzz_gram); and
 * at most API_NUM_MAX_INT integer digits. */
static void test_num_tail(void) {
    api_schema_t sc = {0};
    api_err_t e;
    CHECK_EQ_I(compile_v("{\"type\":\"number\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":1}", &sc, &e), 0);
    const api_schema_node_t *nd = &sc.nodes[1];
    CHECK_EQ_I(num_takes(nd, "0.5"), 0);
    CHECK_EQ_I(num_takes(nd, "0.999999"), 0);
    CHECK_EQ_I(num_takes(nd, "0.000001"), 0);
    CHECK_EQ_I(num_takes(nd, "0.9999999"), -1);
    CHECK_EQ_I(num_takes(nd, "0.99999999999999999999"), -1);
    CHECK_EQ_I(num_takes(nd, "0.0000001"), -1);
    api_num_t s = {0}; /* six zeros: no digit may follow that keeps it above 0, so the sixth is refused */
    const char *z = "0.00000";
    for (const char *p = z; *p; p++) CHECK_EQ_I(api_num_step(nd, &s, (unsigned char)*p), 0);
    CHECK_EQ_I(api_num_step(nd, &s, '0'), -1);
    CHECK_EQ_I(api_num_cost(nd, &s), 1);
    api_schema_free(&sc);
    CHECK_EQ_I(compile_v("{\"type\":\"number\",\"exclusiveMinimum\":1e-9}", &sc, &e), 0);
    nd = &sc.nodes[1];
    CHECK_EQ_I(num_takes(nd, "0.000000001000001"), 0);
    CHECK_EQ_I(num_takes(nd, "0.0000000010000001"), -1);
    CHECK_EQ_I(num_takes(nd, "0.000000001"), -1);
    api_schema_free(&sc);
    /* a lower bound only (zod's .positive(), Pydantic's ge=0): the integer part passes the limit, up to 20
     * digits (400 would be Infinity to a double reader) */
    CHECK_EQ_I(compile_v("{\"type\":\"integer\",\"minimum\":0}", &sc, &e), 0);
    nd = &sc.nodes[1];
    CHECK_EQ_I(num_takes(nd, "12345678901234567890"), 0);
    CHECK_EQ_I(num_takes(nd, "123456789012345678901"), -1);
    api_schema_free(&sc);
}

/* A body nested deeper than the JSON reader takes (128) is a 400 naming the
 * field it nests in: a schema 1,000 levels deep is the schema's fault. */
static void test_deep_body_names_field(void) {
    static const struct { const char *pre, *post, *param; } C[] = {
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":"
         "\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":", "}}}", "response_format.json_schema.schema"},
        {"{\"model\":\"m\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}},{\"type\":\"function\","
         "\"function\":{\"name\":\"f\",\"description\":\"[{,\\\"\",\"parameters\":", "}}]}", "tools[1].function.parameters"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":", "}]}", "messages"},
        {"", "", "properties"}, /* a top-level member of its own */
        {"[", "]", ""},         /* the root no object: no field */
    };
    for (size_t i = 0; i < sizeof C / sizeof *C; i++) {
        tg_buf_t b = {0};
        tg_buf_puts(&b, C[i].pre);
        for (int k = 0; k < 1000; k++) tg_buf_puts(&b, "{\"type\":\"object\",\"properties\":{\"a\":[");
        tg_buf_puts(&b, "{}");
        for (int k = 0; k < 1000; k++) tg_buf_puts(&b, "]}}");
        tg_buf_puts(&b, C[i].post);
        api_chat_req_t r;
        api_err_t e;
        CHECK_EQ_I(api_chat_req_parse(&r, b.p, b.len, &e), -1);
        CHECK_EQ_I(e.status, 400);
        CHECK_EQ_S(e.param, C[i].param);
        CHECK_EQ_S(e.code, *C[i].param ? "invalid_value" : "invalid_json");
        CHECK(strstr(e.message, "nesting too deep") != NULL);
        if (strcmp(e.param, C[i].param)) fprintf(stderr, "  case %zu: %s (%s)\n", i, e.param, e.message);
        tg_buf_free(&b);
    }
}

int main(int argc, char **argv) {
    if (argc > 1) vec_dir = argv[1];
    test_deep_body_names_field();
    test_num_tail();
    test_schema_adversarial();
    test_formats();
    test_formats_more();
    test_num_bounds();
    test_prefix_key_whole_prompt();
    test_error_paths();
    test_unknown_parameters();
    test_sampling_parameters();
    test_max_tokens();
    test_tools();
    test_render();
    test_json_schema();
    test_strict_tools();
    test_tojson();
    test_vectors();
    printf("%s: %d checks, %d failed, %d skipped\n", __FILE__, tg_test_checks, tg_test_fails, tg_test_skips);
    return tg_test_fails ? 1 : 0;
}
