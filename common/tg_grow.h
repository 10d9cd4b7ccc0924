/* tg_grow.h — room for one more element of a growing array.
 *
 *   T *v = tg_grow(a->v, a->n, &a->cap, sizeof *v, 64);
 *   if (!v) return -1;            // out of memory: a->v is untouched
 *   a->v = v;
 *   a->v[a->n++] = x;
 */
#ifndef TG_GROW_H
#define TG_GROW_H

#include <stdint.h>
#include <stdlib.h>

/* Make room for element n of v, an array of *cap elements of size bytes:
 * when n == *cap the capacity doubles (from `first` when it is 0) and the
 * array is reallocated.  Returns the array, perhaps moved, or NULL when out
 * of memory (v and *cap unchanged; the caller still owns v). */
static inline void *tg_grow(void *v, size_t n, size_t *cap, size_t size, size_t first) {
    if (n < *cap) return v;
    size_t nc = *cap ? *cap * 2 : first;
    if (nc < n + 1) nc = n + 1;
    if (nc > SIZE_MAX / size) return NULL;
    void *nv = realloc(v, nc * size);
    if (nv) *cap = nc;
    return nv;
}

#endif
