/* gw_pool.c — the request pool: a list of blocks and a stack of cleanup
 * handlers that die together; and the per-thread block cache that the
 * fixed-size per-request blocks (the pool with its first block, the pool's
 * 4 KiB blocks, the parsed request head) come from.
 *
 * The block cache: those blocks are above glibc's per-thread cache (tcache,
 * 1 KiB), so each malloc and free of one took the arena's slow path
 * (_int_malloc, malloc_consolidate: 6-7 us of the gateway's ~40 us per
 * request, gateway/README.md "Bench").  A freed block goes onto a free list of
 * its class, kept by the thread that freed it (each event loop is one thread:
 * one loop owns its lists, nothing crosses threads, no lock), at most
 * GW_BLOCK_CACHE_MAX per class; beyond that it goes back to malloc, so the
 * cache never holds more than GW_BLOCK_CACHE_MAX blocks of each class per
 * thread however many requests a pipelining client queues.  A thread drains
 * its lists before it ends (gw_block_cache_drain).  Under ASan a cached block
 * is poisoned whole (its list link included): a use after free of a request
 * block is still reported (use-after-poison), as it would be without the
 * cache.  libevent's evbuffer chains of 2 to 16 KiB (four a request, each
 * malloc's slow path both ways) take the same lists through its allocator
 * hooks (gw_ev_malloc, gw_ev_free). */
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw-int.h"

#if defined(__SANITIZE_ADDRESS__)
#define GW_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GW_ASAN 1
#endif
#endif
#ifdef GW_ASAN
#include <sanitizer/asan_interface.h>
#define GW_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define GW_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define GW_POISON(p, n) ((void)(p), (void)(n))
#define GW_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* ---- block cache ---------------------------------------------------------- */

typedef struct gw_free_block {
    struct gw_free_block *next;
} gw_free_block_t;

typedef struct {
    gw_free_block_t *head;
    unsigned n;
} gw_block_list_t;

static _Thread_local gw_block_list_t gw_block_lists[GW_BLOCK_NCLASSES];

#define GW_POOL_BLOCK 4096

/* ---- pool ---------------------------------------------------------------- */

typedef struct gw_pool_block {
    struct gw_pool_block *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
} gw_pool_block_t;

typedef struct gw_cleanup {
    struct gw_cleanup *next;
    gw_cleanup_fn fn;
    void *arg;
} gw_cleanup_t;

struct gw_pool {
    gw_pool_block_t *blocks;
    gw_cleanup_t *cleanups;
    _Alignas(16) unsigned char first[]; /* the first block, in the pool's own allocation */
};

/* The size of a block of class cls. */
static size_t gw_block_size(int cls) {
    switch (cls) {
    case GW_BLOCK_POOL: return sizeof(gw_pool_t) + sizeof(gw_pool_block_t) + GW_POOL_BLOCK;
    case GW_BLOCK_POOL_MORE: return sizeof(gw_pool_block_t) + GW_POOL_BLOCK;
    case GW_BLOCK_HTTP_REQ: return sizeof(gw_http_req_t);
    default: return (size_t)2048 << (cls - GW_BLOCK_EV_2K); /* GW_BLOCK_EV_*: 2, 4, 8, 16 KiB */
    }
}

void *gw_block_get(int cls) {
    gw_block_list_t *l = &gw_block_lists[cls];
    gw_free_block_t *b = l->head;
    if (!b) return malloc(gw_block_size(cls));
    GW_UNPOISON(b, gw_block_size(cls));
    l->head = b->next;
    l->n--;
    return b;
}

void gw_block_put(int cls, void *p) {
    if (!p) return;
    gw_block_list_t *l = &gw_block_lists[cls];
    if (l->n >= GW_BLOCK_CACHE_MAX) {
        free(p);
        return;
    }
    gw_free_block_t *b = p;
    b->next = l->head;
    l->head = b;
    l->n++;
    GW_POISON(b, gw_block_size(cls));
}

unsigned gw_block_cached(int cls) { return gw_block_lists[cls].n; }

void gw_block_cache_drain(void) {
    for (int cls = 0; cls < GW_BLOCK_NCLASSES; cls++) {
        gw_block_list_t *l = &gw_block_lists[cls];
        while (l->head) {
            gw_free_block_t *b = l->head;
            GW_UNPOISON(b, gw_block_size(cls));
            l->head = b->next;
            free(b);
        }
        l->n = 0;
    }
}

/* ---- libevent's allocator ------------------------------------------------- */

/* The class whose blocks hold n bytes (the smallest class of at least n), or
 * -1 for n that malloc's per-thread cache serves (up to 1 KiB + 8) or above
 * 16 KiB. */
static int gw_ev_class_for(size_t n) {
    if (n <= 1032 || n > 16384) return -1;
    int cls = GW_BLOCK_EV_2K;
    while (gw_block_size(cls) < n) cls++;
    return cls;
}

void *gw_ev_malloc(size_t n) {
    int cls = gw_ev_class_for(n);
    return cls < 0 ? malloc(n) : gw_block_get(cls);
}

void *gw_ev_realloc(void *p, size_t n) { return realloc(p, n); }

/* A block of 2 to 32 KiB goes to the largest class it holds (by its usable
 * size: at least what was asked of malloc, less than twice the class). */
void gw_ev_free(void *p) {
    if (!p) return;
    size_t u = malloc_usable_size(p);
    if (u < 2048 || u >= 32768) {
        free(p);
        return;
    }
    int cls = GW_BLOCK_EV_16K;
    while (gw_block_size(cls) > u) cls--;
    gw_block_put(cls, p);
}

/* What the thread that calls exit() still caches (the process's main thread:
 * unit tests and fuzz replays that never free a server) is freed before
 * LeakSanitizer's check at exit, which does not see these lists as roots. */
__attribute__((destructor)) static void gw_block_cache_exit(void) { gw_block_cache_drain(); }

/* One allocation for the pool and its first block: every request's pool
 * takes one, so this is one malloc and one free per request fewer. */
gw_pool_t *gw_pool_new(void) {
    gw_pool_t *p = gw_block_get(GW_BLOCK_POOL);
    if (!p) return NULL;
    gw_pool_block_t *b = (gw_pool_block_t *)p->first;
    b->next = NULL;
    b->used = 0;
    b->size = GW_POOL_BLOCK;
    p->blocks = b;
    p->cleanups = NULL;
    return p;
}

void *gw_palloc(gw_pool_t *p, size_t n) {
    n = (n + 15) & ~(size_t)15;
    gw_pool_block_t *b = p->blocks;
    if (!b || b->size - b->used < n) {
        size_t size = n > GW_POOL_BLOCK / 2 ? n : GW_POOL_BLOCK;
        gw_pool_block_t *nb = size == GW_POOL_BLOCK ? gw_block_get(GW_BLOCK_POOL_MORE) : malloc(sizeof(*nb) + size);
        if (!nb) return NULL;
        nb->used = 0;
        nb->size = size;
        if (b && n > GW_POOL_BLOCK / 2) { /* big one: keep the current block current */
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = b;
            p->blocks = nb;
        }
        b = nb;
    }
    void *r = b->data + b->used;
    b->used += n;
    memset(r, 0, n);
    return r;
}

char *gw_pstrndup(gw_pool_t *p, const char *s, size_t n) {
    char *r = gw_palloc(p, n + 1);
    if (!r) return NULL;
    memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

int gw_pool_cleanup_add(gw_pool_t *p, gw_cleanup_fn fn, void *arg) {
    gw_cleanup_t *c = gw_palloc(p, sizeof(*c));
    if (!c) return GW_ERROR;
    c->fn = fn;
    c->arg = arg;
    c->next = p->cleanups;
    p->cleanups = c;
    return GW_OK;
}

void gw_pool_free(gw_pool_t *p) {
    if (!p) return;
    for (gw_cleanup_t *c = p->cleanups; c; c = c->next) c->fn(c->arg);
    gw_pool_block_t *b = p->blocks;
    while (b) {
        gw_pool_block_t *n = b->next;
        if ((unsigned char *)b == p->first) {
        } else if (b->size == GW_POOL_BLOCK) {
            gw_block_put(GW_BLOCK_POOL_MORE, b);
        } else {
            free(b);
        }
        b = n;
    }
    gw_block_put(GW_BLOCK_POOL, p);
}
