/* Unit tests for common/tg_mem.h: tg_zalloc's block is zeroed and, with
 * glibc, comes from malloc's per-thread cache (the chunk just freed), which
 * calloc there never takes from: the compiler must not have folded its
 * malloc and memset into a calloc. */
#include <stdint.h>


#include "tg_mem.h"
#include "tg_test.h"

static void test_zalloc(void) {
    for (size_t n = 16; n <= 1024; n *= 2) {
        unsigned char *a = malloc(n);
        CHECK(a != NULL);
        memset(a, 0xAA, n);
        free(a);
        unsigned char *b = tg_zalloc(n);
        CHECK(b != NULL);
        int zero = 1;
        for (size_t i = 0; b && i < n; i++) zero &= b[i] == 0;
        CHECK(zero);
#if defined(__GLIBC__) && !defined(TG_TEST_ASAN) /* ASan's allocator quarantines what is freed */
        CHECK(b == a); /* the per-thread cache's chunk: malloc's path, not calloc's */
#endif
        free(b);
    }
    CHECK(tg_zalloc_n((size_t)-1 / 2, 4) == NULL); /* n * size overflows */
    void *c = tg_zalloc_n(3, 8);
    CHECK(c != NULL);
    free(c);
}

TG_TEST_MAIN(test_zalloc)
