/* Unit tests: common/tg_utf8 — tg_utf8_valid against a reference written
 * from RFC 3629's definition (decode, then refuse overlong forms, surrogates
 * and code points above U+10FFFF), on every string of one, two and three
 * bytes and on four-byte samples, each alone and after seven ASCII bytes
 * (so that the eight-byte ASCII scan hands it over mid-word). */
#include <stdint.h>
#include <string.h>

#include "tg_test.h"
#include "tg_utf8.h"

static int ref_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], cp, min;
        size_t need;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC0 && c < 0xE0) need = 1, cp = c & 0x1F, min = 0x80;
        else if (c >= 0xE0 && c < 0xF0) need = 2, cp = c & 0x0F, min = 0x800;
        else if (c >= 0xF0 && c < 0xF8) need = 3, cp = c & 0x07, min = 0x10000;
        else return 0;
        if (i + need >= n) return 0;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return 0;
        i += need + 1;
    }
    return 1;
}

static int both(const uint8_t *s, size_t n) {
    uint8_t b[16];
    memcpy(b, "abcdefg", 7);
    memcpy(b + 7, s, n);
    int a = tg_utf8_valid((const char *)s, n), c = tg_utf8_valid((const char *)b, n + 7);
    return a == ref_valid(s, n) && c == a;
}

static void test_every_short_string(void) {
    size_t bad = 0, n = 0;
    uint8_t s[4];
    for (uint32_t x = 0; x < 256; x++, n++) {
        s[0] = (uint8_t)x;
        bad += !both(s, 1);
    }
    for (uint32_t x = 0; x < 1u << 16; x++, n++) {
        s[0] = (uint8_t)(x >> 8), s[1] = (uint8_t)x;
        bad += !both(s, 2);
    }
    for (uint32_t x = 0; x < 1u << 24; x++) {
        if (x >> 16 < 0x80) continue; /* an ASCII first byte: the two-byte strings cover it */
        s[0] = (uint8_t)(x >> 16), s[1] = (uint8_t)(x >> 8), s[2] = (uint8_t)x;
        bad += !both(s, 3);
        n++;
    }
    uint32_t r = 12345;
    for (int k = 0; k < 1 << 22; k++, n++) { /* four bytes: lead bytes F0-F7 and neighbours, any rest */
        r = r * 1103515245u + 12345u;
        s[0] = (uint8_t)(0xE8 + (r >> 28)), s[1] = (uint8_t)(r >> 4), s[2] = (uint8_t)(r >> 12), s[3] = (uint8_t)(r >> 20);
        bad += !both(s, 4);
    }
    CHECK(n > 12000000);
    CHECK(bad == 0);
}

TG_TEST_MAIN(test_every_short_string)
