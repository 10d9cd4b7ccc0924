/* bill_key.c — the shape of API keys: generation and the offline check.
 *
 *   sk-tg1-IIIIIIIISSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSCCCCCC
 *   prefix  key id  secret (32 base62, ~190 bits)  checksum
 *
 * The checksum is CRC-32 (zlib's polynomial, as OpenSSL-free code here) of
 * the 47 characters before it, written as 6 base62 digits, most significant
 * first (62^6 > 2^32).  It is not a secret: it only lets every gateway refuse
 * a mistyped or made-up key before touching its cache, Redis or PostgreSQL
 * (as GitHub's tokens do).  The key id is random and public: it is the
 * display prefix ("sk-tg1-IIIIIIII"). */
#include <stdint.h>
#include <string.h>

#include <openssl/rand.h>

#include "tg_hex.h"
#include "bill-int.h"

#define HEAD "sk-tg1-"
#define HEAD_LEN 7
#define ID_LEN 8
#define SECRET_LEN 32
#define CRC_LEN 6

static const char B62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static uint32_t crc32_of(const char *s, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= (unsigned char)s[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return c ^ 0xFFFFFFFFu;
}

static void crc_b62(uint32_t v, char out[CRC_LEN]) {
    for (int i = CRC_LEN - 1; i >= 0; i--) {
        out[i] = B62[v % 62];
        v /= 62;
    }
}

static int is_b62(char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

bill_key_shape_t bill_key_shape(const char *k) {
    size_t n = k ? strlen(k) : 0;
    if (n == BILL_KEY_LEN && !memcmp(k, HEAD, HEAD_LEN)) {
        for (size_t i = HEAD_LEN; i < n; i++)
            if (!is_b62(k[i])) return BILL_KEY_BAD;
        char want[CRC_LEN];
        crc_b62(crc32_of(k, n - CRC_LEN), want);
        return memcmp(want, k + n - CRC_LEN, CRC_LEN) ? BILL_KEY_BAD : BILL_KEY_CURRENT;
    }
    if (n == 51 && !memcmp(k, "sk-", 3)) {
        for (size_t i = 3; i < n; i++)
            if (!((k[i] >= '0' && k[i] <= '9') || (k[i] >= 'a' && k[i] <= 'f'))) return BILL_KEY_BAD;
        return BILL_KEY_LEGACY;
    }
    return BILL_KEY_BAD;
}

int bill_key_generate(char out[BILL_KEY_LEN + 1], char prefix[16]) {
    unsigned char r[ID_LEN + SECRET_LEN];
    if (RAND_bytes(r, sizeof r) != 1) return -1;
    memcpy(out, HEAD, HEAD_LEN);
    for (size_t i = 0; i < sizeof r; i++) {
        /* 248 = 4 * 62: reject-free mapping would bias; redraw the rare high bytes */
        while (r[i] >= 248)
            if (RAND_bytes(&r[i], 1) != 1) return -1;
        out[HEAD_LEN + i] = B62[r[i] % 62];
    }
    crc_b62(crc32_of(out, BILL_KEY_LEN - CRC_LEN), out + BILL_KEY_LEN - CRC_LEN);
    out[BILL_KEY_LEN] = 0;
    memcpy(prefix, out, HEAD_LEN + ID_LEN);
    prefix[HEAD_LEN + ID_LEN] = 0;
    return 0;
}

int bill_random_hex(char *out, size_t nbytes) {
    unsigned char r[64];
    if (nbytes > sizeof r || RAND_bytes(r, (int)nbytes) != 1) return -1;
    tg_hex_encode(r, nbytes, out);
    return 0;
}
