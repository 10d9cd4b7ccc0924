/* Unit tests of gateway/gw_pool.c: the request pool (alignment, big blocks,
 * the first block in the pool's own allocation, cleanup order). */
#include <stdint.h>
#include <string.h>

#include "../../../gateway/gw-int.h"
#include "tg_test.h"
#ifdef TG_TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

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

/* The block cache: a freed pool's blocks come back to the next pool of this
 * thread, the lists keep at most GW_BLOCK_CACHE_MAX blocks each however
 * many pools die at once (a pipelining client), a drain frees them all, and
 * under ASan a cached block is poisoned (a use after free is still seen). */
static void test_block_cache(void) {
    gw_block_cache_drain();
    gw_pool_t *p = gw_pool_new();
    for (int i = 0; i < 3; i++) CHECK(gw_palloc(p, 1500) != NULL); /* the third: a second 4 KiB block */
    gw_pool_free(p);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_POOL), 1);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_POOL_MORE), 1);
#ifdef TG_TEST_ASAN
    CHECK(__asan_address_is_poisoned(p)); /* the cached pool: its bytes, its list link */
    CHECK(__asan_address_is_poisoned((char *)p + 1000));
#endif
    gw_pool_t *q = gw_pool_new();
    CHECK(q == p); /* the same block, from the cache */
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_POOL), 0);
    char *z = gw_palloc(q, 100);
    int zero = 1;
    for (int i = 0; i < 100; i++) zero &= z[i] == 0;
    CHECK(zero);
    gw_pool_free(q);

    enum { N = 3 * GW_BLOCK_CACHE_MAX };
    static gw_pool_t *many[N];
    for (int i = 0; i < N; i++) {
        many[i] = gw_pool_new();
        for (int k = 0; k < 3; k++) CHECK(many[i] != NULL && gw_palloc(many[i], 2000) != NULL); /* a second block each */
    }
    for (int i = 0; i < N; i++) gw_pool_free(many[i]);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_POOL), GW_BLOCK_CACHE_MAX);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_POOL_MORE), GW_BLOCK_CACHE_MAX);
    gw_block_cache_drain();
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_POOL), 0);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_POOL_MORE), 0);
    gw_block_put(GW_BLOCK_POOL, NULL); /* accepts NULL */
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_POOL), 0);
}

/* libevent's allocator: blocks of 2 to 32 KiB (by usable size) go to the
 * largest class they hold and come back for any request that class serves;
 * smaller and larger ones are plain malloc and free. */
static void test_ev_alloc(void) {
    gw_block_cache_drain();
    void *a = gw_ev_malloc(1024); /* a 1 KiB chain: malloc's per-thread cache serves it */
    CHECK(a != NULL);
    gw_ev_free(a);
    for (int c = GW_BLOCK_EV_2K; c <= GW_BLOCK_EV_16K; c++) CHECK_EQ_I((int)gw_block_cached(c), 0);
    void *b = gw_ev_malloc(3000); /* a 4 KiB block */
    CHECK(b != NULL);
    memset(b, 1, 4096);
    gw_ev_free(b);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_EV_4K), 1);
    CHECK(gw_ev_malloc(4096) == b); /* the same block back, for a request up to its class */
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_EV_4K), 0);
    void *c = gw_ev_realloc(b, 3000); /* resized outside the classes: 3000 usable bytes hold only 2 KiB */
    CHECK(c != NULL);
    gw_ev_free(c);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_EV_2K), 1);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_EV_4K), 0);
    void *d = gw_ev_malloc(2048);
    CHECK(d == c);
    memset(d, 2, 2048);
    free(d); /* plain free takes its blocks too */
    void *e = gw_ev_malloc(20000), *f = gw_ev_malloc(40000);
    CHECK(e && f);
    gw_ev_free(e); /* 20000 usable bytes: a 16 KiB block */
    gw_ev_free(f); /* above the classes: freed */
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_EV_16K), 1);
    void *g = gw_ev_malloc(16384);
    CHECK(g == e);
    memset(g, 3, 16384);
    gw_ev_free(g);
    gw_ev_free(NULL);
    static void *many[GW_BLOCK_CACHE_MAX + 8];
    for (int i = 0; i < GW_BLOCK_CACHE_MAX + 8; i++) many[i] = gw_ev_malloc(8192);
    for (int i = 0; i < GW_BLOCK_CACHE_MAX + 8; i++) gw_ev_free(many[i]);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_EV_8K), GW_BLOCK_CACHE_MAX);
    gw_block_cache_drain();
    for (int c2 = GW_BLOCK_EV_2K; c2 <= GW_BLOCK_EV_16K; c2++) CHECK_EQ_I((int)gw_block_cached(c2), 0);
}

TG_TEST_MAIN(test_pool, test_pool_blocks, test_block_cache, test_ev_alloc)
