/* tg_b64.c — base64url without padding (tg_b64.h). */
#include "tg_b64.h"

static const char ALPHA[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t tg_b64url_encode(const void *p, size_t n, char *out) {
    const uint8_t *b = p;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8 | b[i + 2];
        out[o++] = ALPHA[v >> 18];
        out[o++] = ALPHA[(v >> 12) & 63];
        out[o++] = ALPHA[(v >> 6) & 63];
        out[o++] = ALPHA[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)b[i] << 16;
        out[o++] = ALPHA[v >> 18];
        out[o++] = ALPHA[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8;
        out[o++] = ALPHA[v >> 18];
        out[o++] = ALPHA[(v >> 12) & 63];
        out[o++] = ALPHA[(v >> 6) & 63];
    }
    out[o] = 0;
    return o;
}

static int val(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

long tg_b64url_decode(const char *s, size_t n, uint8_t *out) {
    if (n % 4 == 1) return -1;
    long o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = val(s[i]);
        if (v < 0) return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return -1; /* leftover bits must be zero */
    return o;
}
