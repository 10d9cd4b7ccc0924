/* Unit tests of common/tg_buf.c (growth, consume, free) and the JSON string
 * text writer over it (tg_json_write_chars). */
#include <stdint.h>
#include <string.h>

#include "tg_buf.h"
#include "tg_json.h"
#include "tg_test.h"

static void test_buf(void) {
    tg_buf_t b = {0};
    for (int i = 0; i < 1000; i++) CHECK_EQ_I(tg_buf_printf(&b, "%03d,", i), 0);
    CHECK_EQ_I(b.len, 4000);
    CHECK(!strncmp(b.p, "000,001,", 8));
    CHECK_EQ_I(b.p[b.len], '\0');
    tg_buf_consume(&b, 3996);
    CHECK_EQ_S(b.p, "999,");
    tg_buf_consume(&b, 100);
    CHECK_EQ_I(b.len, 0);
    CHECK_EQ_S(b.p, "");
    tg_json_write_chars(&b, "a\"b\\c\n\x01\x7f\xc3\xa9\xff", 11);
    CHECK_EQ_S(b.p, "a\\\"b\\\\c\\n\\u0001\x7f\xc3\xa9\xef\xbf\xbd"); /* bad UTF-8 -> U+FFFD */
    tg_buf_free(&b);
    CHECK(b.p == NULL && b.len == 0 && b.cap == 0);
    tg_buf_free(&b); /* twice is fine */
}

static void test_oom_sticky(void) {
    tg_buf_t b = {0};
    b.oom = 1; /* as after a failed allocation */
    CHECK_EQ_I(tg_buf_put(&b, "x", 1), -1);
    CHECK_EQ_I(tg_buf_printf(&b, "%d", 1), -1);
    CHECK(b.p == NULL && b.len == 0);
    tg_buf_free(&b);
    CHECK_EQ_I(tg_buf_put(&b, "x", 1), 0); /* free clears it */
    CHECK_EQ_S(b.p, "x");
    tg_buf_free(&b);
}

TG_TEST_MAIN(test_buf, test_oom_sticky)
