/* fuzz_key.c — libFuzzer target for the API-key shape check (bill_key_shape
 * in billing/bill_key.c, #included for its statics): any bytes as a key never
 * crash or read past the string, and a key's verdict holds its invariants:
 *  - CURRENT only for "sk-tg1-" + 46 base62 characters whose last 6 are the
 *    CRC-32 of the 47 before; LEGACY only for "sk-" + 48 lowercase hex;
 *  - a well-formed key built from the input is CURRENT, and changing any one
 *    of its characters (to another base62 character) makes it BAD.
 * Replayed over corpus_key by make test-billing-unit (fuzz/replay.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../billing/bill_key.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *k = malloc(size + 1);
    if (!k) return 0;
    memcpy(k, data, size);
    k[size] = 0;
    bill_key_shape_t s = bill_key_shape(k);
    size_t n = strlen(k);
    if (s == BILL_KEY_CURRENT) {
        if (n != BILL_KEY_LEN || memcmp(k, HEAD, HEAD_LEN)) abort();
        char want[CRC_LEN];
        crc_b62(crc32_of(k, n - CRC_LEN), want);
        if (memcmp(want, k + n - CRC_LEN, CRC_LEN)) abort();
    } else if (s == BILL_KEY_LEGACY) {
        if (n != 51 || memcmp(k, "sk-", 3)) abort();
    }
    free(k);
    /* a key made from the input: CURRENT; any one character changed: BAD */
    char key[BILL_KEY_LEN + 1];
    memcpy(key, HEAD, HEAD_LEN);
    for (size_t i = 0; i < ID_LEN + SECRET_LEN; i++) key[HEAD_LEN + i] = B62[(i < size ? data[i] : i) % 62];
    crc_b62(crc32_of(key, BILL_KEY_LEN - CRC_LEN), key + BILL_KEY_LEN - CRC_LEN);
    key[BILL_KEY_LEN] = 0;
    if (bill_key_shape(key) != BILL_KEY_CURRENT) abort();
    if (size >= 2) {
        size_t at = HEAD_LEN + data[size - 2] % (BILL_KEY_LEN - HEAD_LEN);
        char c = B62[data[size - 1] % 62];
        if (c != key[at]) {
            key[at] = c;
            if (bill_key_shape(key) != BILL_KEY_BAD) abort();
        }
    }
    return 0;
}
