/* Unit tests of common/tg_buf.c (growth, printf into the room left, the
 * printf-free number writers, consume, free) and the JSON string
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

/* printf into the room left (one vsnprintf) or, when it does not fit,
 * after growing: the same bytes either way, at every boundary. */
static void test_printf_room(void) {
    for (size_t pre = 0; pre < 140; pre++) {
        tg_buf_t b = {0};
        char want[400];
        memset(want, 'x', pre);
        want[pre] = '\0';
        if (pre) tg_buf_put(&b, want, pre);
        size_t cap0 = b.cap;
        CHECK_EQ_I(tg_buf_printf(&b, "%s|%d|%s", "abc", 12345, "0123456789012345678901234567890123456789"), 0);
        snprintf(want + pre, sizeof want - pre, "%s|%d|%s", "abc", 12345, "0123456789012345678901234567890123456789");
        CHECK_EQ_S(b.p, want);
        CHECK_EQ_I(b.len, strlen(want));
        CHECK(b.cap >= cap0 && b.len < b.cap);
        CHECK_EQ_I(tg_buf_printf(&b, "%s", ""), 0);
        CHECK_EQ_I(b.len, strlen(want));
        tg_buf_free(&b);
    }
}

/* The printf-free writers give what printf gives. */
static void test_numbers(void) {
    static const long long v[] = {0, 1, -1, 9, 10, 999, 1000, -1000, 1234, -5, 123456789012LL, INT64_MAX, INT64_MIN,
                                  INT64_MIN + 1};
    char want[64];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        tg_buf_t b = {0};
        CHECK_EQ_I(tg_buf_put_i64(&b, v[i]), 0);
        snprintf(want, sizeof want, "%lld", v[i]);
        CHECK_EQ_S(b.p, want);
        tg_buf_free(&b);
        if (v[i] > -1000000000000LL && v[i] < 1000000000000LL) { /* exact in a double: printf is the reference */
            CHECK_EQ_I(tg_buf_put_fixed(&b, v[i], 3), 0);
            snprintf(want, sizeof want, "%.3f", (double)v[i] / 1000.0);
            CHECK_EQ_S(b.p, want);
            tg_buf_free(&b);
        }
    }
    /* every power of ten and its neighbours, and a sweep: as printf writes them */
    int bad = 0;
    unsigned long long x = 88172645463325252ULL;
    for (int i = 0; i < 20000; i++) {
        long long w;
        if (i < 57) { /* 10^0 .. 10^18 */
            long long p = 1;
            for (int k = 0; k < i / 3; k++) p *= 10;
            w = p + (i % 3) - 1;
        } else {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            w = (long long)(x >> (i % 64));
            if (i % 2) w = -w;
        }
        tg_buf_t c = {0};
        tg_buf_put_i64(&c, w);
        snprintf(want, sizeof want, "%lld", w);
        bad += !c.p || strcmp(c.p, want) != 0;
        tg_buf_free(&c);
    }
    CHECK_EQ_I(bad, 0);
    tg_buf_t b = {0};
    tg_buf_put_fixed(&b, INT64_MIN, 3);
    CHECK_EQ_S(b.p, "-9223372036854775.808");
    tg_buf_free(&b);
    tg_buf_put_fixed(&b, 42, 0);
    tg_buf_puts(&b, ",");
    tg_buf_put_fixed(&b, -7, 2);
    CHECK_EQ_S(b.p, "42,-0.07");
    tg_buf_free(&b);
}

static void test_oom_sticky(void) {
    tg_buf_t b = {0};
    b.oom = 1; /* as after a failed allocation */
    CHECK_EQ_I(tg_buf_put(&b, "x", 1), -1);
    CHECK_EQ_I(tg_buf_printf(&b, "%d", 1), -1);
    CHECK_EQ_I(tg_buf_puts(&b, "x"), -1);
    CHECK_EQ_I(tg_buf_put_i64(&b, 1), -1);
    CHECK_EQ_I(tg_buf_put_fixed(&b, 1, 3), -1);
    CHECK(b.p == NULL && b.len == 0);
    tg_buf_free(&b);
    CHECK_EQ_I(tg_buf_put(&b, "x", 1), 0); /* free clears it */
    CHECK_EQ_S(b.p, "x");
    tg_buf_free(&b);
}

/* tg_buf_reserve: room for exactly what a writer will put, so writing that
 * much neither moves nor grows the buffer; an empty one reads as ""; an
 * impossible size is an oom like a failed write. */
static void test_reserve(void) {
    tg_buf_t b = {0};
    CHECK_EQ_I(tg_buf_reserve(&b, 1000), 0);
    CHECK(b.p != NULL && b.len == 0 && b.cap == 1001);
    CHECK_EQ_S(b.p, "");
    char *p0 = b.p;
    char x[1000];
    memset(x, 'a', sizeof x);
    for (int i = 0; i < 10; i++) CHECK_EQ_I(tg_buf_put(&b, x, 100), 0);
    CHECK(b.p == p0 && b.cap == 1001 && b.len == 1000 && b.p[1000] == '\0');
    CHECK_EQ_I(tg_buf_reserve(&b, 0), 0); /* the NUL's byte is there: nothing to do */
    CHECK(b.p == p0 && b.cap == 1001);
    CHECK_EQ_I(tg_buf_reserve(&b, 24), 0); /* from len: room for 24 more */
    CHECK(b.cap == 1025 && !memcmp(b.p, x, 1000) && b.p[1000] == '\0');
    CHECK_EQ_I(tg_buf_reserve(&b, SIZE_MAX - 10), -1);
    CHECK(b.oom && b.len == 1000);
    CHECK_EQ_I(tg_buf_put(&b, "x", 1), -1);
    tg_buf_free(&b);
}

TG_TEST_MAIN(test_buf, test_printf_room, test_numbers, test_oom_sticky, test_reserve)
