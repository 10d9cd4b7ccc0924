/* Unit tests of gateway/gw_uuid.c: format (version 7, variant 10),
 * timestamp field, strict order within a millisecond and across a clock
 * step back. */
#include <stdlib.h>
#include <string.h>

#include "../../../gateway/gw-int.h"
#include "tg_test.h"

static int well_formed(const char *u) {
    if (strlen(u) != 36) return 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (u[i] != '-') return 0;
        } else if (!strchr("0123456789abcdef", u[i])) {
            return 0;
        }
    }
    return u[14] == '7' && strchr("89ab", u[19]) != NULL;
}

static void test_format_and_time(void) {
    char u[37];
    gw_uuid7_at(u, 0x0123456789abULL);
    CHECK(well_formed(u));
    CHECK(!strncmp(u, "01234567-89ab-7", 15));
    gw_uuid7(u);
    CHECK(well_formed(u));
    char hex[13];
    memcpy(hex, u, 8);
    memcpy(hex + 8, u + 9, 4);
    hex[12] = '\0';
    long long ms = strtoll(hex, NULL, 16);
    long long now = tg_wall_us() / 1000;
    CHECK(ms <= now && ms > now - 5000);
}

static void test_order(void) {
    char prev[37], u[37];
    gw_uuid7(prev);
    int bad = 0;
    for (int i = 0; i < 100000; i++) { /* many per millisecond: the counter orders them */
        gw_uuid7(u);
        if (strcmp(prev, u) >= 0 || !well_formed(u)) bad++;
        memcpy(prev, u, 37);
    }
    CHECK_EQ_I(bad, 0);
    /* the clock steps back: still increasing */
    gw_uuid7_at(u, 1000);
    CHECK(strcmp(prev, u) < 0);
    memcpy(prev, u, 37);
    for (int i = 0; i < 5000; i++) { /* past the 12-bit counter within one ms */
        gw_uuid7_at(u, 1000);
        if (strcmp(prev, u) >= 0 || !well_formed(u)) bad++;
        memcpy(prev, u, 37);
    }
    CHECK_EQ_I(bad, 0);
}

static void test_unique(void) {
    char a[37], b[37];
    gw_uuid7_at(a, 5);
    gw_uuid7_at(b, 5);
    CHECK(strcmp(a, b) != 0);
    CHECK(memcmp(a + 24, b + 24, 12) != 0); /* random tail differs */
}

TG_TEST_MAIN(test_format_and_time, test_order, test_unique)
