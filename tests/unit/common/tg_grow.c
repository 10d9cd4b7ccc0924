/* Unit tests for common/tg_grow.h: first capacity, doubling with contents
 * kept, no reallocation while there is room, refusal on size overflow. */
#include <stdint.h>
#include <stdlib.h>

#include "tg_grow.h"
#include "tg_test.h"

static void test_grow(void) {
    int *v = NULL;
    size_t n = 0, cap = 0;
    size_t first_cap = 0;
    for (int i = 0; i < 1000; i++) {
        int *nv = tg_grow(v, n, &cap, sizeof *v, 4);
        if (!nv) break;
        v = nv;
        if (i == 0) first_cap = cap;
        v[n++] = i;
    }
    CHECK_EQ_I(n, 1000);
    CHECK_EQ_I(first_cap, 4);
    CHECK_EQ_I(cap, 1024);
    int ok = 1;
    for (int i = 0; i < 1000; i++) ok &= v[i] == i;
    CHECK(ok);
    CHECK(tg_grow(v, 10, &cap, sizeof *v, 4) == v); /* room: same array */
    free(v);
}

static void test_overflow(void) {
    char *v = malloc(1);
    size_t cap = 1;
    CHECK(tg_grow(v, 1, &cap, SIZE_MAX / 2 + 1, 1) == NULL); /* 2 elements overflow */
    CHECK_EQ_I(cap, 1); /* unchanged, v still ours */
    free(v);
}

TG_TEST_MAIN(test_grow, test_overflow)
