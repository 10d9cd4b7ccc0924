/* Unit tests of common/tg_b64.c: RFC 4648 vectors (url alphabet, no padding),
 * round trips of every length, and what the decoder refuses. */
#include <string.h>

#include "tg_test.h"

#include "tg_b64.h"

static void test_vectors(void) {
    const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *want[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char out[16];
        size_t n = tg_b64url_encode(in[i], strlen(in[i]), out);
        CHECK_EQ_I(n, strlen(want[i]));
        CHECK(!strcmp(out, want[i]));
        CHECK_EQ_I(TG_B64URL_LEN(strlen(in[i])), strlen(want[i]));
        uint8_t back[16];
        CHECK_EQ_I(tg_b64url_decode(want[i], strlen(want[i]), back), strlen(in[i]));
        CHECK(!memcmp(back, in[i], strlen(in[i])));
    }
    uint8_t hi[] = {0xfb, 0xff, 0xbf};
    char out[8];
    tg_b64url_encode(hi, 3, out);
    CHECK(!strcmp(out, "-_-_")); /* the url alphabet, not + and / */
}

static void test_roundtrip_and_refusals(void) {
    uint8_t b[64], back[64];
    char e[96];
    for (int i = 0; i < 64; i++) b[i] = (uint8_t)(i * 37 + 11);
    for (size_t n = 0; n <= 64; n++) {
        size_t m = tg_b64url_encode(b, n, e);
        CHECK_EQ_I(tg_b64url_decode(e, m, back), n);
        CHECK(!memcmp(back, b, n));
    }
    CHECK_EQ_I(tg_b64url_decode("Zg==", 4, back), -1); /* padding */
    CHECK_EQ_I(tg_b64url_decode("Zm9v+", 5, back), -1);
    CHECK_EQ_I(tg_b64url_decode("Zm+v", 4, back), -1); /* standard alphabet */
    CHECK_EQ_I(tg_b64url_decode("Zh", 2, back), -1);   /* non-zero leftover bits: a second encoding of "f" */
    CHECK_EQ_I(tg_b64url_decode("Z", 1, back), -1);
}

TG_TEST_MAIN(test_vectors, test_roundtrip_and_refusals)
