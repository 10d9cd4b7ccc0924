/* tg_str.h — the two string writes the hot paths used snprintf for:
 * a bounded copy (snprintf(d, cap, "%s", s)) and a decimal integer
 * (snprintf(d, cap, "%lld", v)), without printf's format walk.
 *
 *   char id[40], n[TG_STR_I64];
 *   tg_str_copy(id, sizeof id, request_id);   // truncated at 39 bytes, NUL-terminated
 *   size_t len = tg_str_i64(n, -42);           // "-42", 3
 */
#ifndef TG_STR_H
#define TG_STR_H

#include <stddef.h>
#include <string.h>

#define TG_STR_I64 21 /* "-9223372036854775808" and its NUL */

/* Copy s into d (cap > 0 bytes) as snprintf(d, cap, "%s", s) does: at most
 * cap - 1 bytes, always NUL-terminated.  Returns the bytes copied. */
static inline size_t tg_str_copy(char *d, size_t cap, const char *s) {
    size_t n = strnlen(s, cap - 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return n;
}

/* Write v in decimal, as "%lld" does, NUL-terminated, into d (TG_STR_I64
 * bytes at least).  Returns the length.  Two digits a step (a settlement row
 * writes six 16-digit microsecond times). */
static inline size_t tg_str_i64(char d[TG_STR_I64], long long v) {
    static const char pairs[201] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                                   "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                                   "8081828384858687888990919293949596979899";
    char t[TG_STR_I64];
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v; /* LLONG_MIN too */
    char *q = t + sizeof t;
    while (u >= 100) {
        unsigned r = (unsigned)(u % 100);
        u /= 100;
        q -= 2;
        memcpy(q, pairs + 2 * r, 2);
    }
    if (u >= 10) {
        q -= 2;
        memcpy(q, pairs + 2 * u, 2);
    } else {
        *--q = (char)('0' + u);
    }
    if (v < 0) *--q = '-';
    size_t n = (size_t)(t + sizeof t - q);
    memcpy(d, q, n);
    d[n] = '\0';
    return n;
}

#endif
