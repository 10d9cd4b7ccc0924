/* tg_buf.c — the growable byte buffer (tg_buf.h). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg_buf.h"
#include "tg_str.h"

/* Room for n more bytes and the NUL. */
static int reserve(tg_buf_t *b, size_t n) {
    if (b->oom) return -1;
    if (b->p && n < b->cap - b->len) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len <= n) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return -1;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

int tg_buf_reserve(tg_buf_t *b, size_t n) {
    if (b->oom) return -1;
    if (b->p && n < b->cap - b->len) return 0;
    if (n > SIZE_MAX - 1 - b->len) {
        b->oom = 1;
        return -1;
    }
    size_t cap = b->len + n + 1;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    if (!b->p) p[0] = '\0';
    b->p = p;
    b->cap = cap;
    return 0;
}

int tg_buf_grow_put(tg_buf_t *b, const void *s, size_t n) {
    if (reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int tg_buf_printf(tg_buf_t *b, const char *fmt, ...) {
    if (b->oom) return -1;
    size_t room = b->p ? b->cap - b->len : 0; /* the NUL's byte included */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(room ? b->p + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < room) { /* it fitted: formatted once */
        b->len += (size_t)n;
        return 0;
    }
    if (room) b->p[b->len] = '\0'; /* a truncated try wrote past len */
    if (n < 0 || reserve(b, (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int tg_buf_put_i64(tg_buf_t *b, long long v) {
    char d[TG_STR_I64];
    return tg_buf_put(b, d, tg_str_i64(d, v));
}

int tg_buf_put_fixed(tg_buf_t *b, long long v, int decimals) {
    char d[48];
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    if (decimals < 0) decimals = 0;
    if (decimals > 19) decimals = 19;
    char *end = d + sizeof d, *q = end;
    for (int i = 0; i < decimals; i++) {
        *--q = (char)('0' + u % 10);
        u /= 10;
    }
    if (decimals) *--q = '.';
    do {
        *--q = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--q = '-';
    return tg_buf_put(b, q, (size_t)(end - q));
}

void tg_buf_consume(tg_buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        if (b->p) b->p[0] = '\0';
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    b->p[b->len] = '\0';
}

void tg_buf_free(tg_buf_t *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}
