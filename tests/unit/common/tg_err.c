/* Unit tests for common/tg_err.c: formatting, truncation, no buffer. */
#include "tg_err.h"
#include "tg_test.h"

static void test_errf(void) {
    char err[8] = "x";
    tg_errf(err, sizeof err, "%s: %d", "ab", 5);
    CHECK_EQ_S(err, "ab: 5");
    tg_errf(err, sizeof err, "%s", "0123456789");
    CHECK_EQ_S(err, "0123456"); /* truncated, terminated */
    tg_errf(NULL, 10, "ignored %d", 1);
    tg_errf(err, 0, "ignored");
    CHECK_EQ_S(err, "0123456");
}

TG_TEST_MAIN(test_errf)
