/* tg_buf.h — the one growable byte buffer.
 *
 *   tg_buf_t b = {0};
 *   tg_buf_put(&b, "abc", 3);
 *   tg_buf_printf(&b, " %d", 42);
 *   use(b.p, b.len);               // b.p is NUL-terminated after every write
 *   tg_buf_free(&b);
 *
 * A failed allocation sets `oom`; later writes then do nothing and return -1,
 * so a writer may check once at the end. */
#ifndef TG_BUF_H
#define TG_BUF_H

#include <stddef.h>
#include <string.h>

typedef struct {
    char *p;    /* malloc'd; NUL after the bytes once anything was written; NULL while empty */
    size_t len, cap;
    int oom;    /* an allocation failed: later writes do nothing */
} tg_buf_t;

/* Append n bytes.  0, or -1 out of memory.  Inline when they fit the room
 * left (the hot paths append many short pieces: a head, a log line, a
 * settlement batch's literals); tg_buf_grow_put grows the buffer first. */
int tg_buf_grow_put(tg_buf_t *b, const void *s, size_t n);
static inline int tg_buf_put(tg_buf_t *b, const void *s, size_t n) {
    if (!b->p || b->oom || n >= b->cap - b->len) return tg_buf_grow_put(b, s, n);
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}
/* Append printf output (formatted once when it fits the room left).  0, or -1. */
int tg_buf_printf(tg_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append a NUL-terminated string (a literal's length is known at compile
 * time).  0, or -1. */
static inline int tg_buf_puts(tg_buf_t *b, const char *s) { return tg_buf_put(b, s, strlen(s)); }
/* Append v in decimal, as "%lld" writes it (no printf: hot paths).  0, or -1. */
int tg_buf_put_i64(tg_buf_t *b, long long v);
/* Append v / 10^decimals with exactly that many decimals, as "%.*f" writes
 * the exact quotient (-1 with 3 decimals: "-0.001"; -1000: "-1.000").  0, or -1. */
int tg_buf_put_fixed(tg_buf_t *b, long long v, int decimals);
/* Room for n more bytes (and the NUL) without growing again: one
 * allocation where a writer knows its size, instead of doubling from 64
 * bytes.  Writes nothing; 0, or -1 out of memory (sets oom, as a write). */
int tg_buf_reserve(tg_buf_t *b, size_t n);
/* Drop n bytes from the front (all of them when n >= len). */
void tg_buf_consume(tg_buf_t *b, size_t n);
/* Release the memory; b is empty and usable again.  Twice is fine. */
void tg_buf_free(tg_buf_t *b);

#endif
