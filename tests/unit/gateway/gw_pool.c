/* Unit tests of gateway/gw_pool.c: the request pool (alignment, big blocks,
 * the first block in the pool's own allocation, cleanup order). */
#include <stdint.h>
#include <string.h>

#include "../../../gateway/gw-int.h"
#include "tg_test.h"

static int order[4], norder;
static void note(void *arg) { order[norder++] = (int)(intptr_t)arg; }

static void test_pool(void) {
    gw_pool_t *p = gw_pool_new();
    char *small = gw_palloc(p, 3);
    CHECK(((uintptr_t)small & 15) == 0);
    char *big = gw_palloc(p, 100000); /* larger than a block */
    CHECK(big != NULL && ((uintptr_t)big & 15) == 0);
    memset(big, 0xab, 100000);
    char *after = gw_palloc(p, 16);
    CHECK(after != NULL && (after + 16 <= big || after >= big + 100000)); /* no overlap */
    int zero = 1;
    char *z = gw_palloc(p, 64);
    for (int i = 0; i < 64; i++) zero &= z[i] == 0;
    CHECK(zero);
    CHECK_EQ_S(gw_pstrndup(p, "hello world", 5), "hello");
    norder = 0;
    gw_pool_cleanup_add(p, note, (void *)1);
    gw_pool_cleanup_add(p, note, (void *)2);
    gw_pool_cleanup_add(p, note, (void *)3);
    gw_pool_free(p);
    CHECK_EQ_I(norder, 3);
    CHECK(order[0] == 3 && order[1] == 2 && order[2] == 1); /* reverse order of registration */
    gw_pool_free(NULL);
}

/* Small pieces across the first block (the pool's own allocation) and the
 * blocks after it, a big one between: each piece keeps its bytes (ASan
 * sees any overlap or overflow) and the pool frees every block. */
static void test_pool_blocks(void) {
    gw_pool_t *p = gw_pool_new();
    unsigned char *v[600];
    for (int i = 0; i < 600; i++) {
        size_t n = 1 + (size_t)(i * 37 % 200);
        v[i] = gw_palloc(p, n);
        CHECK(v[i] != NULL && ((uintptr_t)v[i] & 15) == 0);
        memset(v[i], i & 0xff, n);
        if (i == 300) CHECK(gw_palloc(p, 3000) != NULL); /* above half a block: a block of its own */
    }
    int same = 1;
    for (int i = 0; i < 600; i++)
        for (size_t k = 0; k < 1 + (size_t)(i * 37 % 200); k++) same &= v[i][k] == (i & 0xff);
    CHECK(same);
    gw_pool_free(p);
}

TG_TEST_MAIN(test_pool, test_pool_blocks)
