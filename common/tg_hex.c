/* tg_hex.c — hex encoding and decoding (tg_hex.h). */
#include "tg_hex.h"

void tg_hex_encode(const unsigned char *b, size_t n, char *out) {
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[b[i] >> 4];
        out[2 * i + 1] = hx[b[i] & 15];
    }
    out[2 * n] = '\0';
}

int tg_hex_val(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int tg_hex_decode(const char *s, size_t n, unsigned char *out) {
    for (size_t i = 0; i < n; i++) {
        int hi = tg_hex_val((unsigned char)s[2 * i]), lo = tg_hex_val((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}
