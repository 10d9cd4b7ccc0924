/* Unit tests of billing/bill_admin.c's pure parts: the request body reader
 * shared with the dashboard (bill_body_parse: strict JSON, numbers kept as
 * text, no member twice, no U+0000 in a string) and the error body
 * (bill_error_json: param named, text escaped), and adm_text_plain. */
#include "tg_test.h"

#include "../../../billing/bill_admin.c"

static tg_json_t *parse(const char *s, bill_body_err_t *e) { return bill_body_parse(s, strlen(s), e); }

static void test_body_numbers_keep_their_text(void) {
    bill_body_err_t e;
    tg_json_t *j = parse("{\"rpm\": 9007199254740993, \"a\": 60.000000000000001, \"b\": -0}", &e);
    int64_t v = 0;
    CHECK(j != NULL);
    CHECK(tg_json_int64(tg_json_get(j, "rpm"), &v) == 0);
    CHECK_EQ_I(v, 9007199254740993LL); /* 2^53 + 1: a double says ...992 */
    CHECK(tg_json_int64(tg_json_get(j, "a"), &v) != 0);
    CHECK_EQ_S(tg_json_num_text(tg_json_get(j, "a"), NULL), "60.000000000000001");
    CHECK_EQ_S(tg_json_num_text(tg_json_get(j, "b"), NULL), "-0");
    tg_json_free(j);
    /* no body is an empty object */
    j = bill_body_parse("", 0, &e);
    CHECK(j != NULL && tg_json_type(j) == TG_JSON_OBJECT && tg_json_len(j) == 0);
    tg_json_free(j);
}

static void test_body_refusals_name_the_member(void) {
    bill_body_err_t e;
    CHECK(parse("{\"name\": \"ab\\u0000cd\"}", &e) == NULL);
    CHECK_EQ_S(e.code, "invalid_value");
    CHECK_EQ_S(e.param, "name");
    CHECK(parse("{\"models\": [\"ok\", \"m\\u0000\"]}", &e) == NULL);
    CHECK_EQ_S(e.param, "models");
    CHECK(parse("{\"o\": {\"deep\": \"\\u0000\"}}", &e) == NULL);
    CHECK_EQ_S(e.param, "deep");
    CHECK(parse("{\"a\\u0000b\": 1}", &e) == NULL); /* in a member name */
    CHECK_EQ_S(e.code, "invalid_value");
    CHECK(parse("{\"usd\": \"1\", \"usd\": \"1000\"}", &e) == NULL);
    CHECK_EQ_S(e.code, "invalid_json");
    CHECK_EQ_S(e.param, "usd");
    static const char *const bad[] = {"{\"name\": \"\xff\"}", "{\"n\": \"\\ud800\"}", "{\"n\": \"\\udc00x\"}",
                                      "{\"n\": \"a\tb\"}", "[1]", "\"s\"", "{", "{} {}", "{\"n\": 01}", "{\"n\": NaN}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(parse(bad[i], &e) == NULL);
        CHECK_EQ_S(e.code, "invalid_json");
        CHECK_EQ_S(e.param, "");
    }
}

static void test_error_json(void) {
    char *b = bill_error_json(400, "invalid_value", "rpm", "rpm \"x\"\n\xff");
    CHECK_EQ_S(b, "{\"error\":{\"message\":\"rpm \\\"x\\\"\\n\xef\xbf\xbd\",\"type\":\"invalid_request_error\","
                  "\"param\":\"rpm\",\"code\":\"invalid_value\"}}");
    free(b);
    b = bill_error_json(404, NULL, NULL, "no");
    CHECK_EQ_S(b, "{\"error\":{\"message\":\"no\",\"type\":\"not_found_error\",\"param\":null,\"code\":null}}");
    free(b);
}

/* adm_text_plain: what a terminal would act on (C0, DEL, C1) is refused; the
 * rest of Unicode, quotes and markup included, is plain text. */
static void test_text_plain(void) {
    CHECK(adm_text_plain(""));
    CHECK(adm_text_plain("<script>alert(1)</script> \\ \" \xe2\x80\xa8 \xf0\x9f\x98\x80 \xc3\xa9 \xc2\xa0"));
    CHECK(!adm_text_plain("a\x1b[2J"));
    CHECK(!adm_text_plain("a\r\nb"));
    CHECK(!adm_text_plain("a\tb"));
    CHECK(!adm_text_plain("\x7f"));
    CHECK(!adm_text_plain("a\xc2\x9b" "31m")); /* U+009B, CSI */
    CHECK(!adm_text_plain("\xc2\x80"));
    CHECK(adm_text_plain("\xc2\xa0\xc3\x9b")); /* U+00A0, U+00DB */
}

TG_TEST_MAIN(test_body_numbers_keep_their_text, test_body_refusals_name_the_member, test_error_json, test_text_plain)
