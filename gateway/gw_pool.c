/* gw_pool.c — the request pool: a list of blocks and a stack of cleanup
 * handlers that die together. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw-int.h"

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

#define GW_POOL_BLOCK 4096

/* One allocation for the pool and its first block: every request's pool
 * takes one, so this is one malloc and one free per request fewer. */
gw_pool_t *gw_pool_new(void) {
    gw_pool_t *p = malloc(sizeof *p + sizeof(gw_pool_block_t) + GW_POOL_BLOCK);
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
        gw_pool_block_t *nb = malloc(sizeof(*nb) + size);
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
        if ((unsigned char *)b != p->first) free(b);
        b = n;
    }
    free(p);
}
