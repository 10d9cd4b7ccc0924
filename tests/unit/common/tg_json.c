/* Unit tests for common/tg_json.c: JSONTestSuite-style accept/reject cases
 * (written here), NUL round trip, surrogates, exact int64 edges, depth
 * limits, huge strings, every truncation and every one-byte change of a
 * document, error offsets, member editing and the string writer. */
#include <stdlib.h>

#include "tg_json.h"
#include "tg_test.h"

typedef struct {
    const char *name, *text;
    size_t len; /* 0: strlen(text) */
} tcase_t;

static int parses(const char *t, size_t n) {
    tg_json_t *j = tg_json_parse(t, n, NULL, NULL);
    tg_json_free(j);
    return j != NULL;
}

#define Y(name, text) {name, text, sizeof text - 1}
static const tcase_t y_cases[] = {
    Y("y_array_empty", "[]"),
    Y("y_array_ws", " [ 1 , 2 ,3 ] "),
    Y("y_array_nested", "[[[]],[{}]]"),
    Y("y_object_empty", "{}"),
    Y("y_object_basic", "{\"a\":1,\"b\":[true,false,null]}"),
    Y("y_object_dup_key", "{\"a\":1,\"a\":2}"),
    Y("y_object_empty_key", "{\"\":0}"),
    Y("y_number_0", "0"),
    Y("y_number_neg0", "-0"),
    Y("y_number_frac", "1.5"),
    Y("y_number_exp", "1E+2"),
    Y("y_number_exp_neg", "-1.25e-10"),
    Y("y_number_huge_exp", "1e999"),
    Y("y_number_big_int", "123456789012345678901234567890"),
    Y("y_string_empty", "\"\""),
    Y("y_string_escapes", "\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\""),
    Y("y_string_u_escape", "\"\\u00e9\\u20AC\""),
    Y("y_string_nul_escape", "\"a\\u0000b\""),
    Y("y_string_pair", "\"\\ud83d\\ude00\""),
    Y("y_string_utf8", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\""),
    Y("y_string_max_cp", "\"\xf4\x8f\xbf\xbf\""),
    Y("y_string_del", "\"\x7f\""),
    Y("y_string_noncharacter", "\"\xef\xbf\xbf\""),
    Y("y_literal_true", "true"),
    Y("y_literal_null", " null\n"),
    Y("y_ws_all", "\t\r\n [\t\r\n ]\t\r\n "),
};

static const tcase_t n_cases[] = {
    Y("n_empty", ""),
    Y("n_ws_only", "  "),
    Y("n_array_trailing_comma", "[1,]"),
    Y("n_array_leading_comma", "[,1]"),
    Y("n_array_unclosed", "[1"),
    Y("n_array_extra_close", "[1]]"),
    Y("n_array_colon", "[1:2]"),
    Y("n_object_trailing_comma", "{\"a\":1,}"),
    Y("n_object_unquoted_key", "{a:1}"),
    Y("n_object_single_quote", "{'a':1}"),
    Y("n_object_no_colon", "{\"a\" 1}"),
    Y("n_object_number_key", "{1:1}"),
    Y("n_object_unclosed", "{\"a\":1"),
    Y("n_two_values", "1 2"),
    Y("n_trailing_garbage", "{}x"),
    Y("n_number_leading_zero", "01"),
    Y("n_number_plus", "+1"),
    Y("n_number_dot_start", ".5"),
    Y("n_number_dot_end", "1."),
    Y("n_number_exp_empty", "1e"),
    Y("n_number_exp_sign_only", "1e+"),
    Y("n_number_hex", "0x10"),
    Y("n_number_nan", "NaN"),
    Y("n_number_inf", "Infinity"),
    Y("n_number_neg_only", "-"),
    Y("n_number_neg_space", "- 1"),
    Y("n_literal_caps", "True"),
    Y("n_literal_short", "nul"),
    Y("n_literal_long", "nulll"),
    Y("n_string_unterminated", "\"abc"),
    Y("n_string_single_quote", "'a'"),
    Y("n_string_raw_newline", "\"a\nb\""),
    Y("n_string_raw_tab", "\"a\tb\""),
    Y("n_string_raw_nul", "\"a\0b\""),
    Y("n_string_bad_escape", "\"\\x41\""),
    Y("n_string_escape_eof", "\"\\"),
    Y("n_string_short_u", "\"\\u12\""),
    Y("n_string_bad_hex", "\"\\u12G4\""),
    Y("n_string_lone_high", "\"\\ud800\""),
    Y("n_string_lone_low", "\"\\udc00\""),
    Y("n_string_high_high", "\"\\ud800\\ud800\""),
    Y("n_string_high_then_char", "\"\\ud800\\u0041\""),
    Y("n_string_reversed_pair", "\"\\udc00\\ud800\""),
    Y("n_string_high_at_end", "\"\\ud83d\""),
    Y("n_utf8_overlong_2", "\"\xc0\x80\""),
    Y("n_utf8_overlong_3", "\"\xe0\x80\x80\""),
    Y("n_utf8_overlong_4", "\"\xf0\x80\x80\x80\""),
    Y("n_utf8_surrogate_raw", "\"\xed\xa0\x80\""),
    Y("n_utf8_too_big", "\"\xf4\x90\x80\x80\""),
    Y("n_utf8_f5", "\"\xf5\x80\x80\x80\""),
    Y("n_utf8_ff", "\"\xff\""),
    Y("n_utf8_stray_cont", "\"\x80\""),
    Y("n_utf8_truncated", "\"\xe2\x82\""),
    Y("n_utf8_truncated_eof", "\"\xe2\x82"),
    Y("n_utf8_outside_string", "[\xc3\xa9]"),
    Y("n_bom", "\xef\xbb\xbf{}"),
    Y("n_comment", "[1 /* x */]"),
    Y("n_nul_after", "{}\0"),
    Y("n_vertical_tab_ws", "[\v1]"),
};

static void test_suite_cases(void) {
    for (size_t i = 0; i < sizeof y_cases / sizeof y_cases[0]; i++) {
        tg_json_err_t err;
        tg_json_t *j = tg_json_parse(y_cases[i].text, y_cases[i].len, NULL, &err);
        if (!j) fprintf(stderr, "%s: %s\n", y_cases[i].name, err.text);
        CHECK(j != NULL);
        tg_json_free(j);
    }
    for (size_t i = 0; i < sizeof n_cases / sizeof n_cases[0]; i++) {
        tg_json_err_t err = {0};
        tg_json_t *j = tg_json_parse(n_cases[i].text, n_cases[i].len, NULL, &err);
        if (j) fprintf(stderr, "%s: accepted\n", n_cases[i].name);
        CHECK(j == NULL);
        CHECK(err.msg != NULL && !strncmp(err.text, "Invalid JSON at byte ", 21));
        CHECK(err.offset <= n_cases[i].len);
        tg_json_free(j);
    }
}

static void test_error_messages(void) {
    tg_json_err_t err;
    CHECK(!tg_json_parse("{\"model\": \"abc", 14, NULL, &err));
    CHECK_EQ_S(err.text, "Invalid JSON at byte 10: unterminated string");
    CHECK(!tg_json_parse("[1,2,]", 6, NULL, &err));
    CHECK_EQ_I(err.offset, 5);
    CHECK_EQ_S(err.msg, "expected a value");
    CHECK(!tg_json_parse("\"ab\\ud800\"", 10, NULL, &err));
    CHECK_EQ_S(err.text, "Invalid JSON at byte 3: lone surrogate in \\u escape");
    CHECK(!tg_json_parse("\"ab\xff\"", 5, NULL, &err));
    CHECK_EQ_S(err.text, "Invalid JSON at byte 3: invalid UTF-8 in string");
    CHECK(!tg_json_parse("{} {}", 5, NULL, &err));
    CHECK_EQ_I(err.offset, 3);
    tg_json_opts_t o = {.max_bytes = 4};
    CHECK(!tg_json_parse("[1,2]", 5, &o, &err));
    CHECK_EQ_S(err.msg, "document too large");
    CHECK(tg_json_parse(NULL, 0, NULL, &err) == NULL);
}

static void test_nul_round_trip(void) {
    const char t[] = "{\"content\":\"a\\u0000b\\u0000\",\"k\\u0000x\":1}";
    tg_json_t *j = tg_json_parse(t, sizeof t - 1, NULL, NULL);
    CHECK(j != NULL);
    size_t n = 0;
    const char *s = tg_json_str(tg_json_get(j, "content"), &n);
    CHECK_EQ_I(n, 4);
    CHECK(s && !memcmp(s, "a\0b\0", 5)); /* and NUL-terminated after */
    CHECK(tg_json_get(j, "k") == NULL);
    CHECK(tg_json_getn(j, "k\0x", 3) != NULL);
    tg_buf_t b = {0};
    CHECK_EQ_I(tg_json_write(&b, j), 0);
    CHECK_EQ_S(b.p, "{\"content\":\"a\\u0000b\\u0000\",\"k\\u0000x\":1}");
    tg_json_t *j2 = tg_json_parse(b.p, b.len, NULL, NULL);
    s = tg_json_str(tg_json_get(j2, "content"), &n);
    CHECK(s && n == 4 && !memcmp(s, "a\0b\0", 4));
    tg_json_free(j2);
    tg_buf_free(&b);
    tg_json_free(j);
}

static void test_surrogates(void) {
    tg_json_t *j = tg_json_parse("\"\\ud83d\\ude00\\uD834\\uDD1E\"", 26, NULL, NULL);
    size_t n = 0;
    const char *s = tg_json_str(j, &n);
    CHECK(s && n == 8 && !memcmp(s, "\xf0\x9f\x98\x80\xf0\x9d\x84\x9e", 8));
    tg_json_free(j);
    j = tg_json_parse("\"\\uffff\\u0800\\u07ff\\u0080\\u007f\"", 32, NULL, NULL);
    s = tg_json_str(j, &n);
    CHECK(s && n == 3 + 3 + 2 + 2 + 1 && !memcmp(s, "\xef\xbf\xbf\xe0\xa0\x80\xdf\xbf\xc2\x80\x7f", 11));
    tg_json_free(j);
}

static void test_int64(void) {
    struct {
        const char *t;
        int ok;
        int64_t v;
    } c[] = {
        {"0", 1, 0},
        {"-0", 1, 0},
        {"42", 1, 42},
        {"9223372036854775807", 1, INT64_MAX},
        {"9223372036854775808", 0, 0},
        {"-9223372036854775808", 1, INT64_MIN},
        {"-9223372036854775809", 0, 0},
        {"18446744073709551616", 0, 0},
        {"99999999999999999999999", 0, 0},
        {"9007199254740993", 1, 9007199254740993LL}, /* 2^53 + 1: a double cannot */
        {"1.0", 0, 0},
        {"1e3", 0, 0},
        {"1E3", 0, 0},
        {"-5", 1, -5},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        tg_json_t *j = tg_json_parse(c[i].t, strlen(c[i].t), NULL, NULL);
        int64_t v = 12345;
        int rc = tg_json_int64(j, &v);
        CHECK_EQ_I(rc, c[i].ok ? 0 : -1);
        if (c[i].ok) CHECK_EQ_I(v, c[i].v);
        CHECK_EQ_S(tg_json_num_text(j, NULL), c[i].t);
        tg_json_free(j);
    }
    tg_json_t *j = tg_json_parse("[\"1\",true,null,-1.5e2,1e400]", 28, NULL, NULL);
    int64_t v;
    double d = 0;
    CHECK_EQ_I(tg_json_int64(tg_json_at(j, 0), &v), -1);
    CHECK_EQ_I(tg_json_int64(tg_json_at(j, 1), &v), -1);
    CHECK_EQ_I(tg_json_double(tg_json_at(j, 2), &d), -1);
    CHECK_EQ_I(tg_json_double(tg_json_at(j, 3), &d), 0);
    CHECK(d == -150.0);
    CHECK_EQ_I(tg_json_double(tg_json_at(j, 4), &d), 0);
    CHECK(d > 1e308);
    CHECK_EQ_I(tg_json_int64(NULL, &v), -1);
    tg_json_free(j);
}

static char *nest(int depth, size_t *len) {
    char *t = malloc(2 * (size_t)depth + 1);
    memset(t, '[', (size_t)depth);
    memset(t + depth, ']', (size_t)depth);
    *len = 2 * (size_t)depth;
    return t;
}

static void test_depth(void) {
    size_t n;
    char *t = nest(TG_JSON_MAX_DEPTH, &n);
    CHECK(parses(t, n));
    free(t);
    t = nest(TG_JSON_MAX_DEPTH + 1, &n);
    tg_json_err_t err;
    CHECK(tg_json_parse(t, n, NULL, &err) == NULL);
    CHECK_EQ_S(err.msg, "nesting too deep");
    CHECK_EQ_I(err.offset, TG_JSON_MAX_DEPTH);
    tg_json_opts_t o = {.max_depth = 3};
    CHECK(!tg_json_parse("[[[[]]]]", 8, &o, NULL));
    free(t);
    /* a bomb: a million opening brackets, objects too */
    size_t big = 1000000;
    t = malloc(big);
    memset(t, '[', big);
    CHECK(!parses(t, big));
    for (size_t i = 0; i + 5 <= big; i += 5) memcpy(t + i, "{\"a\":", 5);
    CHECK(!parses(t, big));
    free(t);
}

static void test_huge_string(void) {
    size_t n = 8u << 20; /* 8 MiB of "\u0000" escapes and text */
    char *t = malloc(n + 2);
    t[0] = '"';
    for (size_t i = 1; i + 8 <= n + 1; i += 8) memcpy(t + i, "ab\\u0000", 8);
    t[n + 1] = '"';
    tg_json_t *j = tg_json_parse(t, n + 2, NULL, NULL);
    size_t len = 0;
    const char *s = tg_json_str(j, &len);
    CHECK(s != NULL);
    CHECK_EQ_I(len, n / 8 * 3);
    CHECK(s && s[0] == 'a' && s[2] == '\0' && s[len - 1] == '\0' && s[len - 3] == 'a');
    tg_json_free(j);
    free(t);
}

/* A document whose every proper prefix is invalid JSON: each truncation must
 * be refused (never read past len), and each one-byte change must parse or
 * fail cleanly; when it parses, writing it back must parse again. */
static void test_every_split(void) {
    const char doc[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9 \\ud83d\\ude00 \xe2\x82\xac\\u0000!\"}],"
                       "\"max_tokens\":9223372036854775807,\"t\":-1.5e-3,\"s\":[true,false,null]}";
    size_t n = sizeof doc - 1;
    CHECK(parses(doc, n));
    for (size_t cut = 0; cut < n; cut++) {
        char *t = malloc(cut ? cut : 1); /* exact size: ASan sees any over-read */
        memcpy(t, doc, cut);
        tg_json_err_t err;
        tg_json_t *j = tg_json_parse(t, cut, NULL, &err);
        CHECK(j == NULL);
        CHECK(err.offset <= cut);
        free(t);
    }
    static const unsigned char subst[] = {0, '"', '\\', '{', ']', ',', ':', 'u', '0', 0x80, 0xC3, 0xED, 0xFF, ' '};
    char *t = malloc(n);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < sizeof subst; k++) {
            memcpy(t, doc, n);
            t[i] = (char)subst[k];
            tg_json_t *j = tg_json_parse(t, n, NULL, NULL);
            if (j) {
                tg_buf_t b = {0};
                CHECK_EQ_I(tg_json_write(&b, j), 0);
                CHECK(parses(b.p, b.len));
                tg_buf_free(&b);
            }
            tg_json_free(j);
        }
    }
    free(t);
}

static void test_accessors(void) {
    const char t[] = " {\"a\":1, \"b\":[10,20,30], \"a\":\"last\", \"o\":{\"x\":null}} ";
    tg_json_t *j = tg_json_parse(t, sizeof t - 1, NULL, NULL);
    CHECK_EQ_I(tg_json_type(j), TG_JSON_OBJECT);
    CHECK_EQ_I(tg_json_len(j), 4);
    CHECK_EQ_S(tg_json_str(tg_json_get(j, "a"), NULL), "last"); /* last wins */
    size_t kl = 0;
    CHECK_EQ_S(tg_json_dup_key(j, &kl, NULL), "a");
    CHECK_EQ_I(kl, 1);
    CHECK(tg_json_dup_key(tg_json_get(j, "o"), NULL, NULL) == NULL);
    tg_json_t *b = tg_json_get(j, "b");
    CHECK_EQ_I(tg_json_len(b), 3);
    int64_t v = 0;
    CHECK_EQ_I(tg_json_int64(tg_json_at(b, 2), &v), 0);
    CHECK_EQ_I(v, 30);
    CHECK(tg_json_at(b, 3) == NULL);
    int64_t sum = 0;
    tg_json_t *it;
    TG_JSON_FOREACH(it, b) {
        CHECK_EQ_I(tg_json_int64(it, &v), 0);
        sum += v;
    }
    CHECK_EQ_I(sum, 60);
    const char *keys[] = {"a", "b", "a", "o"};
    size_t i = 0;
    TG_JSON_FOREACH(it, j) CHECK_EQ_S(tg_json_key(it, NULL), keys[i++]);
    CHECK_EQ_I(i, 4);
    CHECK_EQ_I(tg_json_type(tg_json_get(tg_json_get(j, "o"), "x")), TG_JSON_NULL);
    CHECK_EQ_I(tg_json_type(tg_json_get(j, "missing")), TG_JSON_NONE);
    CHECK(tg_json_get(b, "a") == NULL);   /* not an object */
    CHECK(tg_json_str(b, NULL) == NULL);  /* not a string */
    CHECK(tg_json_key(j, NULL) == NULL);  /* the root is no member */
    CHECK_EQ_I(tg_json_len(tg_json_get(j, "a")), 0);
    CHECK(tg_json_first(NULL) == NULL && tg_json_next(NULL) == NULL);
    int bv = 7;
    CHECK_EQ_I(tg_json_bool(b, &bv), -1);
    CHECK(!tg_json_is_true(NULL));
    size_t off, len;
    tg_json_span(b, &off, &len);
    CHECK(len == 10 && !memcmp(t + off, "[10,20,30]", 10));
    tg_json_key_span(b, &off, &len);
    CHECK(len == 3 && !memcmp(t + off, "\"b\"", 3));
    tg_json_span(j, &off, &len);
    CHECK_EQ_I(off, 1);
    CHECK_EQ_I(len, sizeof t - 3);
    CHECK_EQ_S(tg_json_type_name(tg_json_type(b)), "array");
    tg_json_free(j);
    tg_json_free(NULL);
}

/* Cutting any member out of an object leaves valid JSON without it. */
static void test_member_cut(void) {
    const char *docs[] = {"{\"a\":1}", "{ \"a\" : 1 , \"b\" : [2] , \"c\" : {\"d\":3} }", "{\"a\":1,\"a\":2}"};
    for (size_t d = 0; d < 3; d++) {
        tg_json_t *j = tg_json_parse(docs[d], strlen(docs[d]), NULL, NULL);
        size_t n = tg_json_len(j);
        for (size_t i = 0; i < n; i++) {
            tg_json_t *m = tg_json_at(j, i);
            size_t off, len;
            CHECK_EQ_I(tg_json_member_cut(m, &off, &len), 0);
            char buf[128];
            size_t tl = strlen(docs[d]);
            memcpy(buf, docs[d], off);
            memcpy(buf + off, docs[d] + off + len, tl - off - len);
            tg_json_t *k = tg_json_parse(buf, tl - len, NULL, NULL);
            CHECK(k != NULL);
            CHECK_EQ_I(tg_json_len(k), n - 1);
            tg_json_free(k);
        }
        CHECK_EQ_I(tg_json_member_cut(j, &(size_t){0}, &(size_t){0}), -1);
        tg_json_free(j);
    }
}

static void test_writer(void) {
    tg_buf_t b = {0};
    CHECK_EQ_I(tg_json_write_str(&b, "a\"b\\c\n\t\x01\x1f\x7f", 10), 0);
    CHECK_EQ_S(b.p, "\"a\\\"b\\\\c\\n\\t\\u0001\\u001f\x7f\"");
    b.len = 0;
    /* invalid UTF-8 -> U+FFFD each byte; valid kept; U+2028 escaped; NUL */
    CHECK_EQ_I(tg_json_write_str(&b, "\xff\xc3\xa9\xed\xa0\x80\xe2\x80\xa8\0z", 11), 0);
    CHECK_EQ_S(b.p, "\"\xef\xbf\xbd\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\\u2028\\u0000z\"");
    CHECK(parses(b.p, b.len));
    b.len = 0;
    CHECK_EQ_I(tg_json_write_str(&b, "", 0), 0);
    CHECK_EQ_S(b.p, "\"\"");
    tg_buf_free(&b);
    CHECK(b.p == NULL && b.len == 0);
    /* every byte value alone: the output always parses back */
    for (int c = 0; c < 256; c++) {
        char ch = (char)c;
        CHECK_EQ_I(tg_json_write_str(&b, &ch, 1), 0);
        size_t n = 0;
        tg_json_t *j = tg_json_parse(b.p, b.len, NULL, NULL);
        const char *s = tg_json_str(j, &n);
        CHECK(s != NULL);
        if (s && c < 0x80) CHECK(n == 1 && s[0] == ch);
        tg_json_free(j);
        b.len = 0;
    }
    /* compact writing keeps numbers exact */
    const char t[] = "{ \"n\" : 12345678901234567890123 , \"f\":[ 1.50E+3 ,-0], \"s\":\"\\u00e9\\/\" }";
    tg_json_t *j = tg_json_parse(t, sizeof t - 1, NULL, NULL);
    CHECK_EQ_I(tg_json_write(&b, j), 0);
    CHECK_EQ_S(b.p, "{\"n\":12345678901234567890123,\"f\":[1.50E+3,-0],\"s\":\"\xc3\xa9/\"}");
    tg_json_free(j);
    tg_buf_free(&b);
}

/* The member's value of tg_json_parse_member as the whole parse's
 * tg_json_get finds it, written compactly ("-" when none). */
static void member_text(const char *text, const char *key, char *got, char *want, size_t n) {
    tg_json_err_t e;
    tg_buf_t a = {0}, b = {0};
    tg_json_t *m = tg_json_parse_member(text, strlen(text), NULL, key, strlen(key), &e);
    tg_json_t *j = tg_json_parse(text, strlen(text), NULL, NULL);
    const tg_json_t *w = tg_json_get(j, key);
    if (m) tg_json_write(&a, m);
    if (w) tg_json_write(&b, w);
    snprintf(got, n, "%s", m ? (a.p ? a.p : "") : "-");
    snprintf(want, n, "%s", w ? (b.p ? b.p : "") : "-");
    tg_buf_free(&a);
    tg_buf_free(&b);
    tg_json_free(m);
    tg_json_free(j);
}

static void test_parse_member(void) {
    static const char *const cases[][3] = {
        /* text, key, the value written compactly ("-": none) */
        {"{\"id\":\"x\",\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":6}}", "usage",
         "{\"prompt_tokens\":12,\"completion_tokens\":6}"},
        {" { \"usage\" : 7 } ", "usage", "7"},
        {"{\"usage\":1,\"usage\":{\"a\":[1,2]}}", "usage", "{\"a\":[1,2]}"},        /* the last one */
        {"{\"\\u0075sage\":\"esc\"}", "usage", "\"esc\""},                      /* an escaped key */
        {"{\"a\":{\"usage\":1}}", "usage", "-"},                                     /* not at the root */
        {"[{\"usage\":1}]", "usage", "-"},                                           /* not an object */
        {"{\"usag\":1,\"usages\":2}", "usage", "-"},
        {"{\"u\\\"sage\":1,\"s\":\"\\\"usage\\\":3\"}", "usage", "-"},                /* in a string */
        {"{\"usage\":{\"x\":1},\"z\":[}", "usage", "-"},                          /* broken later: refused */
        {"{\"usage\":{\"x\":\"\xff\"}}", "usage", "-"},                            /* invalid UTF-8 */
        {"{\"usage\":null}", "usage", "null"},
    };
    char got[256], want[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        member_text(cases[i][0], cases[i][1], got, want, sizeof got);
        CHECK_EQ_S(got, cases[i][2]);
        CHECK_EQ_S(got, want); /* what the whole parse finds */
    }
    tg_json_err_t e;
    CHECK(tg_json_parse_member("{\"a\":1,}", 8, NULL, "a", 1, &e) == NULL);
    CHECK(e.offset == 7); /* the whole text's error */
    CHECK(tg_json_parse_member("{\"a\":1}", 7, NULL, "b", 1, &e) == NULL && e.msg);
    tg_json_t *v = tg_json_parse_member("{\"a\\u0000b\":1}", 14, NULL, "a\0b", 3, NULL);
    CHECK(v != NULL); /* a key holding NUL */
    tg_json_free(v);
    tg_json_opts_t o = {.max_depth = 2};
    CHECK(tg_json_parse_member("{\"a\":[[1]]}", 11, &o, "a", 1, &e) == NULL); /* depth counts from the root */
    /* spans are offsets in the value's own text, built in the one pass or not */
    const char *t = "{\"id\":\"x\", \"usage\": {\"p\":12, \"q\":[3]}}";
    size_t off, len;
    v = tg_json_parse_member(t, strlen(t), NULL, "usage", 5, NULL);
    tg_json_span(v, &off, &len);
    CHECK(off == 0 && len == strlen("{\"p\":12, \"q\":[3]}"));
    tg_json_key_span(tg_json_get(v, "q"), &off, &len);
    CHECK(off == 9 && len == 3);
    tg_json_span(tg_json_get(v, "q"), &off, &len);
    CHECK(off == 13 && len == 3);
    tg_json_span(tg_json_first(tg_json_get(v, "q")), &off, &len);
    CHECK(off == 14 && len == 1);
    tg_json_free(v);
    /* a member whose rest of the text outgrows the one pass's scratch (its
     * span parsed again), one that does not, and the last of two of them */
    size_t pad = 40000;
    char *big = malloc(pad + 64);
    for (int k = 0; k < 3; k++) {
        size_t n = 0;
        const char *head = k == 0 ? "{\"usage\":{\"a\":1},\"pad\":\"" : k == 1 ? "{\"pad\":\"" : "{\"usage\":[2],\"pad\":\"";
        memcpy(big + n, head, strlen(head));
        n += strlen(head);
        memset(big + n, 'x', pad);
        n += pad;
        const char *tail = k == 0 ? "\"}" : "\",\"usage\":{\"a\":1}}";
        memcpy(big + n, tail, strlen(tail));
        n += strlen(tail);
        v = tg_json_parse_member(big, n, NULL, "usage", 5, NULL);
        tg_buf_t w = {0};
        CHECK(v && tg_json_write(&w, v) == 0 && w.p && !strcmp(w.p, "{\"a\":1}"));
        tg_json_span(tg_json_get(v, "a"), &off, &len);
        CHECK(off == 5 && len == 1);
        tg_buf_free(&w);
        tg_json_free(v);
    }
    /* more nodes than the scratch holds in a short text: built by the second parse, whole */
    size_t n = 0;
    n += (size_t)sprintf(big + n, "{\"usage\":[");
    for (int k = 0; k < 400; k++) n += (size_t)sprintf(big + n, k ? ",%d" : "%d", k % 10);
    n += (size_t)sprintf(big + n, "]}");
    v = tg_json_parse_member(big, n, NULL, "usage", 5, NULL);
    CHECK(tg_json_len(v) == 400 && tg_json_type(tg_json_at(v, 399)) == TG_JSON_NUMBER);
    tg_json_free(v);
    free(big);
}

/* A string's end, escape or non-ASCII byte at every place in and across
 * the scanner's 8-byte words: found where it is (not before, not after). */
static void test_string_scan(void) {
    static const char *const specials[] = {"\\\"", "\\n", "\\u00e9", "\xc3\xa9", "\""};
    for (size_t s = 0; s < sizeof specials / sizeof specials[0]; s++)
        for (size_t at = 0; at < 20; at++) {
            char t[64], want[64];
            size_t n = 0, w = 0;
            t[n++] = '"';
            for (size_t i = 0; i < at; i++) t[n++] = want[w++] = (char)('a' + i);
            const char *sp = specials[s];
            memcpy(t + n, sp, strlen(sp));
            n += strlen(sp);
            const char *dec = s == 0 ? "\"" : s == 1 ? "\n" : s == 4 ? "" : "\xc3\xa9";
            memcpy(want + w, dec, strlen(dec));
            w += strlen(dec);
            if (s != 4) { /* s == 4: the closing quote itself */
                for (size_t i = 0; i < 9; i++) t[n++] = want[w++] = 'z';
                t[n++] = '"';
            }
            size_t len = 0;
            tg_json_t *j = tg_json_parse(t, n, NULL, NULL);
            const char *got = tg_json_str(j, &len);
            CHECK(got && len == w && !memcmp(got, want, w));
            tg_json_free(j);
            tg_json_err_t e; /* a control byte before the special one: refused where it is */
            t[at + 1] = '\x01';
            CHECK(tg_json_parse(t, n, NULL, &e) == NULL && e.offset == at + 1 && !strcmp(e.msg, "control character in string"));
        }
}

/* The writer's plain runs end at every special byte wherever it sits: a
 * string written and read back is the same. */
static void test_write_scan(void) {
    static const char specials[] = "\"\\\n\x01\x7f\xc3\xa9\xe2\x80\xa8";
    tg_buf_t b = {0};
    for (size_t s = 0; s < sizeof specials - 1; s += specials[s] == '\xc3' ? 2 : specials[s] == '\xe2' ? 3 : 1)
        for (size_t at = 0; at < 20; at++) {
            char t[40];
            size_t n = 0, k = specials[s] == '\xc3' ? 2 : specials[s] == '\xe2' ? 3 : 1;
            for (size_t i = 0; i < at; i++) t[n++] = (char)('a' + i);
            memcpy(t + n, specials + s, k);
            n += k;
            for (size_t i = 0; i < 9; i++) t[n++] = 'z';
            b.len = 0;
            CHECK_EQ_I(tg_json_write_str(&b, t, n), 0);
            size_t len = 0;
            tg_json_t *j = tg_json_parse(b.p, b.len, NULL, NULL);
            const char *got = tg_json_str(j, &len);
            CHECK(got && len == n && !memcmp(got, t, n));
            tg_json_free(j);
        }
    tg_buf_free(&b);
}

static char *write_doc(const tg_json_t *j) {
    tg_buf_t b = {0};
    if (tg_json_write(&b, j) || tg_buf_put(&b, "", 1)) {
        tg_buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* A document read in one pass (in the parser's stack scratch, then moved
 * to its own block) keeps nothing that points into the scratch: another
 * document read after it (over the same stack) changes nothing of it.  And
 * one with more nodes than the scratch holds (the pass goes on counting,
 * then builds) reads as the same text counted first (after 17 KiB of
 * whitespace: longer than the scratch). */
static void test_one_pass(void) {
    const char a[] = "{\"k\":\"v\\u00e9\",\"n\":-12.5,\"l\":[true,null,{\"x\":\"\"}],\"z\":\"end\"}";
    const char b[] = "[\"qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq\",{\"yyyyyyyyyyyy\":[[[[99999]]]]},7,7,7,7,7,7,7]";
    tg_json_t *j = tg_json_parse(a, sizeof a - 1, NULL, NULL);
    tg_json_t *k = tg_json_parse(b, sizeof b - 1, NULL, NULL);
    CHECK(j && k);
    char *w = write_doc(j);
    CHECK(w && !strcmp(w, "{\"k\":\"v\xc3\xa9\",\"n\":-12.5,\"l\":[true,null,{\"x\":\"\"}],\"z\":\"end\"}"));
    free(w);
    size_t off, len;
    tg_json_t *z = tg_json_get(j, "z");
    CHECK(tg_json_member_cut(z, &off, &len) == 0 && off == 49 && len == 10); /* from the end of its prev */
    CHECK(tg_json_next(tg_json_first(j)) == tg_json_get(j, "n") && tg_json_len(tg_json_get(j, "l")) == 3);
    tg_json_free(j);
    tg_json_free(k);

    for (int count = 400; count <= 2000; count += 1600) { /* 5 KiB (in the scratch, its nodes not), 27 KiB */
        tg_buf_t t = {0}, p = {0};
        for (int i = 0; i < count; i++) tg_buf_puts(&t, i ? ",{\"a\":[1,\"s\"]}" : "[{\"a\":[1,\"s\"]}");
        tg_buf_puts(&t, "]");
        for (int i = 0; i < 17 * 1024; i++) tg_buf_puts(&p, " ");
        tg_buf_put(&p, t.p, t.len);
        tg_json_t *x = tg_json_parse(t.p, t.len, NULL, NULL), *y = tg_json_parse(p.p, p.len, NULL, NULL);
        char *wx = write_doc(x), *wy = write_doc(y);
        CHECK(x && tg_json_len(x) == (size_t)count && wx && wy && !strcmp(wx, wy) && strlen(wx) == t.len);
        tg_json_t *last = tg_json_at(x, (size_t)count - 1);
        tg_json_span(last, &off, &len);
        CHECK(off == t.len - 14 && len == 13);
        free(wx);
        free(wy);
        tg_json_free(x);
        tg_json_free(y);
        t.p[t.len - 2] = ','; /* refused at the same place (17 KiB later in the counted text) */
        p.p[p.len - 2] = ',';
        tg_json_err_t ex, ey;
        CHECK(!tg_json_parse(t.p, t.len, NULL, &ex) && !tg_json_parse(p.p, p.len, NULL, &ey));
        CHECK(ex.offset == t.len - 1 && ey.offset == ex.offset + 17 * 1024 && !strcmp(ex.msg, ey.msg));
        tg_buf_free(&t);
        tg_buf_free(&p);
    }
}

TG_TEST_MAIN(test_string_scan, test_write_scan, test_one_pass, test_suite_cases, test_error_messages, test_nul_round_trip, test_surrogates, test_int64, test_depth,
             test_huge_string, test_every_split, test_accessors, test_member_cut, test_writer, test_parse_member)
