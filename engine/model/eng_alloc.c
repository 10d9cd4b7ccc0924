/* eng_alloc.c — the host allocation of the forward pass's and the backends'
 * scratch (eng_model_int.h).  A leaf: the model and every backend call it,
 * and it calls only malloc, so the backends need nothing of eng_model.c. */
#include <stdlib.h>

#include "eng_model_int.h"

static size_t max_alloc(void) {
    static size_t lim = 1; /* 1: not read yet; 0: no limit */
    size_t l = __atomic_load_n(&lim, __ATOMIC_RELAXED);
    if (l == 1) {
        const char *e = getenv("TOLLGATE_ENGINE_MAX_ALLOC");
        l = e && *e ? (size_t)strtoull(e, NULL, 10) : 0;
        if (l == 1) l = 2;
        __atomic_store_n(&lim, l, __ATOMIC_RELAXED);
    }
    return l;
}

void *eng_alloc(size_t n) {
    size_t l = max_alloc();
    if (l && n > l) return NULL;
    return malloc(n ? n : 1);
}
