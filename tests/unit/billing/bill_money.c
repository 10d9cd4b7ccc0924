/* Unit tests of billing/bill_money.c: exact cost arithmetic, USD parsing and
 * display rounding, the keyed hash of API keys, key generation. */
#include <limits.h>

#include "tg_test.h"

#include "../../../billing/bill_money.c"

static void test_cost_exact(void) {
    bill_price_t p = {.input_cache_miss = 270000, .input_cache_hit = 70000, .output = 1100000}; /* $0.27, $0.07, $1.10 per 1M tokens */
    CHECK_EQ_I(bill_cost_pico(&p, 0, 0, 0), 0);
    CHECK_EQ_I(bill_cost_pico(&p, 1, 0, 0), 270000);           /* one token: 0.27 micro-USD */
    CHECK_EQ_I(bill_cost_pico(&p, 1000000, 0, 0), 270000000000LL); /* 1M tokens: $0.27 */
    CHECK_EQ_I(bill_cost_pico(&p, 700, 300, 500), 700LL * 270000 + 300LL * 70000 + 500LL * 1100000);
    /* cache hit and miss priced separately */
    CHECK(bill_cost_pico(&p, 0, 1000, 0) != bill_cost_pico(&p, 1000, 0, 0));
    bill_price_t one = {.input_cache_miss = 1, .input_cache_hit = 1, .output = 1};
    CHECK_EQ_I(bill_cost_pico(&one, 3, 4, 5), 12);
}

static void test_cost_large_and_overflow(void) {
    bill_price_t p = {.input_cache_miss = 270000, .input_cache_hit = 70000, .output = 1100000};
    /* 1e12 tokens of output at $1.10/1M = $1.1M = 1.1e18 pico: still exact */
    CHECK_EQ_I(bill_cost_pico(&p, 0, 0, 1000000000000LL), 1100000000000000000LL);
    CHECK_EQ_I(bill_cost_pico(&p, 0, 0, 10000000000000LL), -1); /* 1.1e19 > INT64_MAX */
    CHECK_EQ_I(bill_cost_pico(&p, INT64_MAX, 0, 0), -1);
    /* each term fits, the sum does not */
    bill_price_t big = {.input_cache_miss = 1000000, .input_cache_hit = 1000000, .output = 1000000};
    CHECK_EQ_I(bill_cost_pico(&big, 4000000000000LL, 4000000000000LL, 4000000000000LL), -1);
    CHECK_EQ_I(bill_cost_pico(&big, 3000000000000LL, 3000000000000LL, 3000000000000LL), 9000000000000000000LL);
    CHECK_EQ_I(bill_cost_pico(&p, -1, 0, 0), -1);
    CHECK_EQ_I(bill_cost_pico(&p, 0, -1, 0), -1);
    CHECK_EQ_I(bill_cost_pico(&p, 0, 0, -1), -1);
    bill_price_t neg = {.input_cache_miss = -1, .input_cache_hit = 0, .output = 0};
    CHECK_EQ_I(bill_cost_pico(&neg, 1, 0, 0), -1);
    CHECK_EQ_I(bill_cost_pico(NULL, 1, 0, 0), -1);
}

static void test_usd_parse(void) {
    int64_t v = -7;
    CHECK_EQ_I(bill_usd_parse("5", &v), 0);
    CHECK_EQ_I(v, 5000000000000LL);
    CHECK_EQ_I(bill_usd_parse("5.00", &v), 0);
    CHECK_EQ_I(v, 5000000000000LL);
    CHECK_EQ_I(bill_usd_parse("0.000001", &v), 0);
    CHECK_EQ_I(v, 1000000);
    CHECK_EQ_I(bill_usd_parse("0.000000000001", &v), 0);
    CHECK_EQ_I(v, 1);
    CHECK_EQ_I(bill_usd_parse("0", &v), 0);
    CHECK_EQ_I(v, 0);
    CHECK_EQ_I(bill_usd_parse("0012.5", &v), 0);
    CHECK_EQ_I(v, 12500000000000LL);
    CHECK_EQ_I(bill_usd_parse("9223372.036854775807", &v), 0); /* INT64_MAX pico */
    CHECK_EQ_I(v, INT64_MAX);
    v = 42;
    const char *bad[] = {"", "-1", "+1", "abc", "1e3", "1.", ".5", "1.2.3", " 1", "1 ", "0x10", "1,5",
                         "0.0000000000001", "9223372.036854775808", "99999999999999999999", "5.00USD", "nan"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_I(bill_usd_parse(bad[i], &v), -1);
        CHECK_EQ_I(v, 42); /* untouched on error */
    }
    CHECK_EQ_I(bill_usd_parse(NULL, &v), -1);
}

static void test_usd_format(void) {
    char out[32];
    struct {
        int64_t pico;
        const char *want;
    } cases[] = {
        {0, "0.000000"},
        {1, "0.000000"},
        {499999, "0.000000"},
        {500000, "0.000001"}, /* half rounds up */
        {1000000, "0.000001"},
        {1499999, "0.000001"},
        {1500000, "0.000002"},
        {5000000000000LL, "5.000000"},
        {5000001000000LL, "5.000001"},
        {999999500000LL, "1.000000"}, /* carry into the integer part */
        {9999999500000LL, "10.000000"},
        {-1500000, "-0.000002"}, /* half away from zero */
        {-1, "0.000000"},         /* no "-0.000000" */
        {INT64_MAX, "9223372.036855"},
        {INT64_MIN, "-9223372.036855"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bill_usd_format(cases[i].pico, out);
        CHECK_EQ_S(out, cases[i].want);
    }
    char big[64];
    CHECK_EQ_I(bill_usd_format_dec("123456789012345678901234567890", big, sizeof big), 0);
    CHECK_EQ_S(big, "123456789012345678.901235");
    CHECK_EQ_I(bill_usd_format_dec("000", big, sizeof big), 0);
    CHECK_EQ_S(big, "0.000000");
    CHECK_EQ_I(bill_usd_format_dec("12a", big, sizeof big), -1);
    CHECK_EQ_I(bill_usd_format_dec("", big, sizeof big), -1);
    CHECK_EQ_I(bill_usd_format_dec("-", big, sizeof big), -1);
    CHECK_EQ_I(bill_usd_format_dec("5000000000000", big, 5), -1); /* too short an output */
    /* parse and format agree */
    int64_t v;
    CHECK_EQ_I(bill_usd_parse("1234.567891", &v), 0);
    bill_usd_format(v, out);
    CHECK_EQ_S(out, "1234.567891");
}

static void test_key_hash(void) {
    char h[65];
    /* RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?" */
    bill_key_hash("4a656665", "what do ya want for nothing?", h);
    CHECK_EQ_S(h, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* the secret file's newline does not change the hash */
    bill_key_hash("4a656665\n", "what do ya want for nothing?", h);
    CHECK_EQ_S(h, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* a secret that is not hex is used as raw bytes: "Jefe" itself */
    bill_key_hash("Jefe", "what do ya want for nothing?", h);
    CHECK_EQ_S(h, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* RFC 4231 test case 1: key 0x0b * 20, data "Hi There" */
    bill_key_hash("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "Hi There", h);
    CHECK_EQ_S(h, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    char h2[65];
    { /* the keyed-once HMAC equals HMAC() for short, 64-byte and long secrets, hex or not */
        const char *secrets[] = {"4a656665", "Jefe", "00", "  0b0b0b0b\n",
                                 "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
                                 "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
                                 "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
                                 "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
                                 "not hex at all, and longer than sixty-four bytes of key material, by a good margin"};
        const char *msgs[] = {"", "sk-a", "what do ya want for nothing?",
                              "sk-tg1-0000000a0123456789abcdef0123456789abcdefAAAAAA"};
        for (size_t i = 0; i < sizeof secrets / sizeof *secrets; i++) {
            bill_hmac_t *hm = bill_hmac_new(secrets[i]);
            CHECK(hm != NULL);
            for (size_t j = 0; hm && j < sizeof msgs / sizeof *msgs; j++) {
                char a[65], b[65];
                bill_key_hash(secrets[i], msgs[j], a);
                CHECK(bill_hmac_hex(hm, msgs[j], b) == 0);
                CHECK(strcmp(a, b) == 0);
            }
            bill_hmac_free(hm);
        }
        bill_hmac_t *hm = bill_hmac_new("4a656665");
        CHECK(hm && bill_hmac_hex(hm, "what do ya want for nothing?", h) == 0);
        CHECK(!strcmp(h, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
        bill_hmac_free(hm);
    }
    bill_key_hash("00", "sk-a", h);
    bill_key_hash("01", "sk-a", h2);
    CHECK(strcmp(h, h2) != 0);
}

static void test_key_generate(void) {
    char a[BILL_KEY_LEN + 1], b[BILL_KEY_LEN + 1], pa[16], pb[16];
    CHECK_EQ_I(bill_key_generate(a, pa), 0);
    CHECK_EQ_I(bill_key_generate(b, pb), 0);
    CHECK_EQ_I(strlen(a), 53);
    CHECK(strncmp(a, "sk-tg1-", 7) == 0);
    CHECK_EQ_I(strspn(a + 7, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"), 46);
    CHECK_EQ_I(strlen(pa), 15);
    CHECK(strncmp(a, pa, 15) == 0);
    CHECK(strcmp(a, b) != 0);
    CHECK_EQ_I(bill_key_shape(a), BILL_KEY_CURRENT);
    CHECK_EQ_I(bill_key_shape(b), BILL_KEY_CURRENT);
}

static void test_key_shape(void) {
    /* a fixed vector, checksum from Python's zlib.crc32 in base62 */
    CHECK_EQ_I(bill_key_shape("sk-tg1-AAAAAAAA0123456789abcdefghijABCDEFGHIJKL1NYjcG"), BILL_KEY_CURRENT);
    CHECK_EQ_I(bill_key_shape("sk-tg1-AAAAAAAA0123456789abcdefghijABCDEFGHIJKL1NYjcH"), BILL_KEY_BAD);
    char k[BILL_KEY_LEN + 1], p[16];
    CHECK_EQ_I(bill_key_generate(k, p), 0);
    /* every single-character change of a current key is caught */
    int caught = 0, tried = 0;
    static const char alt[] = "0aZ";
    for (int i = 7; i < BILL_KEY_LEN; i++) {
        for (int j = 0; j < 3; j++) {
            char m[BILL_KEY_LEN + 1];
            memcpy(m, k, sizeof m);
            if (m[i] == alt[j]) continue;
            m[i] = alt[j];
            tried++;
            caught += bill_key_shape(m) == BILL_KEY_BAD;
        }
    }
    CHECK_EQ_I(caught, tried);
    /* two swapped neighbours too */
    int swaps = 0, swapped = 0;
    for (int i = 7; i + 1 < BILL_KEY_LEN; i++) {
        char m[BILL_KEY_LEN + 1];
        memcpy(m, k, sizeof m);
        if (m[i] == m[i + 1]) continue;
        char t = m[i];
        m[i] = m[i + 1];
        m[i + 1] = t;
        swaps++;
        swapped += bill_key_shape(m) == BILL_KEY_BAD;
    }
    CHECK_EQ_I(swapped, swaps);
    CHECK_EQ_I(bill_key_shape("sk-0123456789abcdef0123456789abcdef0123456789abcdef"), BILL_KEY_LEGACY);
    CHECK_EQ_I(bill_key_shape("sk-0123456789abcdef0123456789abcdef0123456789abcdeF"), BILL_KEY_BAD);
    CHECK_EQ_I(bill_key_shape("sk-0123456789abcdef0123456789abcdef0123456789abcde"), BILL_KEY_BAD);
    CHECK_EQ_I(bill_key_shape(""), BILL_KEY_BAD);
    CHECK_EQ_I(bill_key_shape(NULL), BILL_KEY_BAD);
    CHECK_EQ_I(bill_key_shape("sk-tg1-"), BILL_KEY_BAD);
    k[20] = '-';
    CHECK_EQ_I(bill_key_shape(k), BILL_KEY_BAD);
}

TG_TEST_MAIN(test_cost_exact, test_cost_large_and_overflow, test_usd_parse, test_usd_format, test_key_hash,
             test_key_generate, test_key_shape)
