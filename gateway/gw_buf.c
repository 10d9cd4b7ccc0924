/* gw_buf.c — a growable byte buffer and the request pool.
 *
 * gw_buf_t always keeps a NUL after its bytes (when it holds any), so parsers
 * may use string functions on it; its len never counts that NUL.  A pool owns
 * a list of blocks and a stack of cleanup handlers; both die together. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw-int.h"

static int gw_buf_reserve(gw_buf_t *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return GW_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > ((size_t)-1) / 2) return GW_ERROR;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return GW_ERROR;
    b->p = p;
    b->cap = cap;
    return GW_OK;
}

int gw_buf_append(gw_buf_t *b, const void *data, size_t n) {
    if (gw_buf_reserve(b, n) != GW_OK) return GW_ERROR;
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return GW_OK;
}

int gw_buf_printf(gw_buf_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || gw_buf_reserve(b, (size_t)n) != GW_OK) return GW_ERROR;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return GW_OK;
}

void gw_buf_consume(gw_buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        if (b->p) b->p[0] = '\0';
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    b->p[b->len] = '\0';
}

void gw_buf_free(gw_buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int gw_buf_json_str(gw_buf_t *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int rc;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            rc = gw_buf_append(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            rc = gw_buf_printf(b, "\\u%04x", c);
        } else {
            rc = gw_buf_append(b, &s[i], 1);
        }
        if (rc != GW_OK) return GW_ERROR;
    }
    return GW_OK;
}

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
};

#define GW_POOL_BLOCK 4096

gw_pool_t *gw_pool_new(void) { return calloc(1, sizeof(gw_pool_t)); }

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
        free(b);
        b = n;
    }
    free(p);
}
