/* tg_mem.h — zeroed allocation for small per-request objects.
 *
 * glibc before 2.41 serves calloc without its per-thread cache (calloc
 * always takes _int_malloc's path), while malloc takes from it; the chunks
 * calloc'd objects free then fill that cache and the next calloc misses it
 * again.  tg_zalloc is malloc + memset: the per-thread cache for both ends.
 * For objects made and freed per request; large tables keep calloc (the
 * kernel's zero pages). */
#ifndef TG_MEM_H
#define TG_MEM_H

#include <stdlib.h>
#include <string.h>

/* n zeroed bytes, or NULL.  Freed with free().  The empty asm keeps GCC
 * from folding the malloc and memset back into a calloc (its strlen pass
 * does, at -O2), which is the path this exists to avoid. */
static inline void *tg_zalloc(size_t n) {
    void *p = malloc(n);
    if (p) {
        __asm__ volatile("" : : "r"(p) : "memory");
        memset(p, 0, n);
    }
    return p;
}

/* n zeroed elements of size bytes (calloc's arguments, its overflow check),
 * or NULL. */
static inline void *tg_zalloc_n(size_t n, size_t size) {
    if (size && n > (size_t)-1 / size) return NULL;
    return tg_zalloc(n * size);
}

#endif
