/* bill_money.c — exact money arithmetic and API-key material.
 *
 * Prices are integer micro-USD per 1M tokens, so n tokens at price p cost
 * exactly n*p pico-USD (1e-6 USD / 1e6 tokens = 1e-12 USD per token per
 * micro-USD of price).  Costs are int64 pico-USD (up to ~9.2 million USD per
 * request); anything that would overflow is an error (-1), never wrapped.
 * USD strings are parsed exactly (at most 12 decimals, nothing is rounded);
 * display rounds half away from zero to 6 decimals and never feeds back
 * into a balance. */
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_CTX states of the keyed hash (bill_hmac below) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "tg_hex.h"
#include "bill-int.h"

static int mul_add(int64_t *acc, int64_t n, int64_t p) {
    int64_t t;
    if (__builtin_mul_overflow(n, p, &t)) return -1;
    if (__builtin_add_overflow(*acc, t, acc)) return -1;
    return 0;
}

int64_t bill_cost_pico(const bill_price_t *p, int64_t cache_miss_tokens, int64_t cache_hit_tokens,
                       int64_t completion_tokens) {
    if (!p || cache_miss_tokens < 0 || cache_hit_tokens < 0 || completion_tokens < 0 ||
        p->input_cache_miss < 0 || p->input_cache_hit < 0 || p->output < 0)
        return -1;
    int64_t c = 0;
    if (mul_add(&c, cache_miss_tokens, p->input_cache_miss) ||
        mul_add(&c, cache_hit_tokens, p->input_cache_hit) || mul_add(&c, completion_tokens, p->output))
        return -1;
    return c;
}

int bill_usd_parse(const char *s, int64_t *pico) {
    if (!s || !*s) return -1;
    int64_t v = 0;
    const char *q = s;
    int ndig = 0;
    for (; *q >= '0' && *q <= '9'; q++, ndig++)
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *q - '0', &v)) return -1;
    if (ndig == 0) return -1;
    int nfrac = 0;
    if (*q == '.') {
        q++;
        for (; *q >= '0' && *q <= '9'; q++, nfrac++) {
            if (nfrac == 12) return -1; /* finer than a pico-USD: not exact */
            if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *q - '0', &v)) return -1;
        }
        if (nfrac == 0) return -1;
    }
    if (*q) return -1;
    for (; nfrac < 12; nfrac++)
        if (__builtin_mul_overflow(v, 10, &v)) return -1;
    *pico = v;
    return 0;
}

int bill_usd_format_dec(const char *s, char *out, size_t outlen) {
    int neg = 0;
    if (!s) return -1;
    if (*s == '-') neg = 1, s++;
    while (*s == '0' && s[1]) s++; /* leading zeros */
    size_t n = strlen(s);
    if (n == 0 || n > 200) return -1;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return -1;
    /* Pad to at least 13 digits so there is one integer digit before the 12
     * decimals, then keep 6 decimals and round on the 7th digit. */
    char d[216];
    size_t pad = n < 13 ? 13 - n : 0;
    memset(d, '0', pad);
    memcpy(d + pad, s, n);
    n += pad;
    d[n] = 0;
    size_t keep = n - 6; /* digits up to the 6th decimal */
    int up = d[keep] >= '5';
    d[keep] = 0;
    if (up) {
        size_t i = keep;
        while (i > 0 && d[i - 1] == '9') d[--i] = '0';
        if (i == 0) {
            memmove(d + 1, d, keep + 1);
            d[0] = '1';
            keep++;
        } else {
            d[i - 1]++;
        }
    }
    /* integer part d[0 .. keep-6), decimals d[keep-6 .. keep) */
    size_t ip = keep - 6;
    const char *ipart = d;
    while (ip > 1 && *ipart == '0') ipart++, ip--;
    int allzero = 1;
    for (size_t i = 0; i < keep; i++)
        if (d[i] != '0') allzero = 0;
    int w = snprintf(out, outlen, "%s%.*s.%.6s", neg && !allzero ? "-" : "", (int)ip, ipart, d + keep - 6);
    return w < 0 || (size_t)w >= outlen ? -1 : 0;
}

void bill_usd_format(int64_t pico, char out[32]) {
    char dec[24];
    snprintf(dec, sizeof dec, "%lld", (long long)pico);
    if (bill_usd_format_dec(dec, out, 32) != 0) snprintf(out, 32, "?");
}

/* The secret is hex (as `openssl rand -hex 32` writes it; surrounding
 * whitespace ignored); a secret that is not valid hex is used as raw bytes. */
static size_t secret_bytes(const char *secret_hex, unsigned char secret[512]) {
    size_t slen = 0;
    const char *s = secret_hex ? secret_hex : "";
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    int hex = n % 2 == 0 && n / 2 <= 512;
    if (hex && tg_hex_decode(s, n / 2, secret) == 0) {
        slen = n / 2;
    } else {
        slen = n < 512 ? n : 512;
        memcpy(secret, s, slen);
    }
    return slen;
}

void bill_key_hash(const char *secret_hex, const char *api_key, char out[65]) {
    unsigned char secret[512];
    size_t slen = secret_bytes(secret_hex, secret);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    const char *k = api_key ? api_key : "";
    HMAC(EVP_sha256(), secret, (int)slen, (const unsigned char *)k, strlen(k), md, &mdlen);
    tg_hex_encode(md, 32, out);
    OPENSSL_cleanse(secret, sizeof secret);
}

/* The same HMAC with the key's inner and outer SHA-256 states computed once
 * (RFC 2104: H(K^opad || H(K^ipad || m))): per call, two copies of a digest
 * state and the compressions the message needs, instead of a MAC object
 * fetched and keyed again (a tenth of the gateway's time per request).  The
 * states are OpenSSL's plain SHA256_CTX (deprecated in 3.0, still built):
 * copied by value, where EVP_MD_CTX_copy_ex allocated the provider's state
 * and dispatched every step through it (6.2k -> ~2.5k instructions a key). */
struct bill_hmac {
    SHA256_CTX in, out;
};

bill_hmac_t *bill_hmac_new(const char *secret_hex) {
    bill_hmac_t *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    unsigned char secret[512], k0[64] = {0}, pad[64];
    size_t slen = secret_bytes(secret_hex, secret);
    int ok = 1;
    if (slen > sizeof k0) { /* a long key is hashed first */
        unsigned int n = 0;
        ok = EVP_Digest(secret, slen, k0, &n, EVP_sha256(), NULL) == 1;
    } else {
        memcpy(k0, secret, slen);
    }
    for (int i = 0; ok && i < 64; i++) pad[i] = k0[i] ^ 0x36;
    ok = ok && SHA256_Init(&h->in) == 1 && SHA256_Update(&h->in, pad, sizeof pad) == 1;
    for (int i = 0; ok && i < 64; i++) pad[i] = k0[i] ^ 0x5c;
    ok = ok && SHA256_Init(&h->out) == 1 && SHA256_Update(&h->out, pad, sizeof pad) == 1;
    OPENSSL_cleanse(secret, sizeof secret);
    OPENSSL_cleanse(k0, sizeof k0);
    OPENSSL_cleanse(pad, sizeof pad);
    if (!ok) {
        bill_hmac_free(h);
        return NULL;
    }
    return h;
}

void bill_hmac_free(bill_hmac_t *h) {
    if (!h) return;
    OPENSSL_cleanse(h, sizeof *h);
    free(h);
}

int bill_hmac_hex(bill_hmac_t *h, const char *msg, char out[65]) {
    unsigned char ih[SHA256_DIGEST_LENGTH], md[SHA256_DIGEST_LENGTH];
    const char *m = msg ? msg : "";
    SHA256_CTX c = h->in;
    int ok = SHA256_Update(&c, m, strlen(m)) == 1 && SHA256_Final(ih, &c) == 1;
    c = h->out;
    ok = ok && SHA256_Update(&c, ih, sizeof ih) == 1 && SHA256_Final(md, &c) == 1;
    OPENSSL_cleanse(&c, sizeof c);
    if (!ok) return -1;
    tg_hex_encode(md, 32, out);
    return 0;
}

void bill_usd_str(int64_t pico, char out[32]) { bill_usd_format(pico, out); }
