/* tg_utf8.h — the one UTF-8 codec (RFC 3629: no surrogates, no overlongs, at
 * most U+10FFFF), shared by the JSON reader, the tokenizer and the API.
 *
 * tg_utf8_seq follows the "maximal subpart" rule (Unicode 3.9, as Rust's
 * String::from_utf8_lossy and so Hugging Face decode use it): an invalid
 * sequence is replaced by one U+FFFD per maximal invalid subpart. */
#ifndef TG_UTF8_H
#define TG_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length (1..4) of the valid sequence at s[0..n), 0 when s starts with an
 * invalid one (*bad: the length of its maximal invalid subpart, at least 1),
 * or -1 when s[0..n) is a valid but incomplete prefix.  n >= 1. */
int tg_utf8_seq(const uint8_t *s, size_t n, size_t *bad);

/* 1 when s[0..len) is all valid UTF-8 (ASCII runs 8 bytes at a time). */
int tg_utf8_valid(const char *s, size_t len);

/* Decode the code point at s (valid UTF-8 assumed); returns its length. */
static inline int tg_utf8_next(const uint8_t *s, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
          (s[3] & 0x3F);
    return 4;
}

/* Encode cp (at most U+10FFFF, not a surrogate) at o; returns its length (1..4). */
static inline size_t tg_utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

#endif
