/* bill_receipt.c — signed usage receipts: what one request was billed,
 * signed with the operator's Ed25519 key (OpenSSL EVP), so a customer can
 * check any response against its invoice without trusting the transport or
 * the dashboard.
 *
 * A receipt is three dot-separated parts, every part safe in an HTTP header
 * and in a JSON string:
 *
 *   tgr1.<payload>.<signature>
 *
 *   payload    base64url (no padding) of a compact JSON object, members in
 *              this order: v (1), kid, request_id, customer_id, key_id, model,
 *              prompt_tokens, prompt_cache_hit_tokens, prompt_cache_miss_tokens,
 *              completion_tokens, reasoning_tokens, price
 *              {input_cache_miss, input_cache_hit, output} (micro-USD per 1M
 *              tokens, strings), price_version ("p<model_prices.id>" or
 *              "p<id>.o<price_overrides.id>", as GET /admin/v1/usage/{id}
 *              shows it; null when unknown), cost_pico
 *              (string), http_status, received_at (UTC, microseconds)
 *   signature  base64url of the 64-byte Ed25519 signature of the ASCII bytes
 *              "tgr1.<payload>" (the first two parts with their dot)
 *
 * kid names the key: the first 16 hex digits of SHA-256 of the 32-byte raw
 * public key.  The cost is bill_cost_pico of the same numbers the settlement
 * uses, so a receipt equals its usage row.  Signing costs one EVP_DigestSign
 * (tens of microseconds) per response, on the loop. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "bill-int.h"
#include "tg_b64.h"
#include "tg_json.h"

struct bill_receipts {
    EVP_PKEY *key;
    EVP_MD_CTX *ctx;
    char kid[17];
    char *key_json; /* GET /v1/receipt-key */
};

bill_receipts_t *bill_receipts_new(const char *path, char *err, size_t errlen) {
    bill_receipts_t *r = calloc(1, sizeof *r);
    FILE *f = fopen(path, "r");
    BIO *mem = NULL;
    if (!r) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (!f) {
        snprintf(err, errlen, "receipt key %s: %s", path, strerror(errno));
        goto fail;
    }
    r->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    if (!r->key || EVP_PKEY_id(r->key) != EVP_PKEY_ED25519) {
        snprintf(err, errlen, "receipt key %s: not an Ed25519 private key in PEM (openssl genpkey -algorithm ed25519)",
                 path);
        goto fail;
    }
    uint8_t raw[32], dig[32];
    size_t rawlen = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(r->key, raw, &rawlen) != 1 || rawlen != 32 || !(r->ctx = EVP_MD_CTX_new()) ||
        !(mem = BIO_new(BIO_s_mem())) || PEM_write_bio_PUBKEY(mem, r->key) != 1) {
        snprintf(err, errlen, "receipt key %s: cannot derive its public key", path);
        goto fail;
    }
    SHA256(raw, sizeof raw, dig);
    for (int i = 0; i < 8; i++) snprintf(r->kid + 2 * i, 3, "%02x", dig[i]);
    char *pem;
    long pemlen = BIO_get_mem_data(mem, &pem);
    char rawb64[TG_B64URL_LEN(32) + 1];
    tg_b64url_encode(raw, sizeof raw, rawb64);
    tg_buf_t j = {0};
    char head[200];
    snprintf(head, sizeof head,
             "{\"object\":\"receipt_key\",\"alg\":\"Ed25519\",\"format\":\"tgr1\",\"kid\":\"%s\","
             "\"public_key\":\"%s\",\"public_key_pem\":",
             r->kid, rawb64);
    tg_buf_put(&j, head, strlen(head));
    tg_json_write_str(&j, pem, (size_t)pemlen);
    tg_buf_put(&j, "}", 1);
    if (j.oom) {
        tg_buf_free(&j);
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    r->key_json = j.p;
    BIO_free(mem);
    fclose(f);
    return r;
fail:
    BIO_free(mem);
    if (f) fclose(f);
    bill_receipts_free(r);
    return NULL;
}

void bill_receipts_free(bill_receipts_t *r) {
    if (!r) return;
    EVP_PKEY_free(r->key);
    EVP_MD_CTX_free(r->ctx);
    free(r->key_json);
    free(r);
}

const char *bill_receipts_key_json(const bill_receipts_t *r) { return r ? r->key_json : NULL; }

/* "2026-11-28T09:55:34.756539Z" */
static void iso_us(int64_t us, char out[40]) {
    time_t s = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char t[32];
    strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 40, "%.20s.%06lldZ", t, (long long)(us % 1000000));
}

long bill_receipts_sign(bill_receipts_t *r, const bill_usage_t *u, const char *price_version, char *out,
                        size_t cap) {
    if (!r || !u || !u->model) return -1;
    int64_t miss = u->prompt_tokens - u->prompt_cache_hit_tokens;
    int64_t cost = bill_cost_pico(&u->price, miss, u->prompt_cache_hit_tokens, u->completion_tokens);
    if (cost < 0 || miss < 0) return -1;
    tg_buf_t j = {0};
    char t[512], when[40];
    iso_us(u->received_us, when);
    snprintf(t, sizeof t, "{\"v\":1,\"kid\":\"%s\",\"request_id\":\"%.36s\",\"customer_id\":%lld,\"key_id\":%lld,"
             "\"model\":", r->kid, u->request_id, (long long)u->customer_id, (long long)u->key_id);
    tg_buf_put(&j, t, strlen(t));
    tg_json_write_str(&j, u->model, strlen(u->model));
    snprintf(t, sizeof t,
             ",\"prompt_tokens\":%lld,\"prompt_cache_hit_tokens\":%lld,\"prompt_cache_miss_tokens\":%lld,"
             "\"completion_tokens\":%lld,\"reasoning_tokens\":%lld,\"price\":{\"input_cache_miss\":\"%lld\","
             "\"input_cache_hit\":\"%lld\",\"output\":\"%lld\"},\"price_version\":",
             (long long)u->prompt_tokens, (long long)u->prompt_cache_hit_tokens, (long long)miss,
             (long long)u->completion_tokens, (long long)u->reasoning_tokens, (long long)u->price.input_cache_miss,
             (long long)u->price.input_cache_hit, (long long)u->price.output);
    tg_buf_put(&j, t, strlen(t));
    if (price_version) tg_json_write_str(&j, price_version, strlen(price_version));
    else tg_buf_put(&j, "null", 4);
    snprintf(t, sizeof t, ",\"cost_pico\":\"%lld\",\"http_status\":%d,\"received_at\":\"%s\"}", (long long)cost,
             u->http_status, when);
    tg_buf_put(&j, t, strlen(t));
    long n = -1;
    size_t plen = j.len, need = 5 + TG_B64URL_LEN(plen) + 1 + TG_B64URL_LEN(64) + 1;
    if (j.oom || need > cap) goto done;
    memcpy(out, "tgr1.", 5);
    size_t o = 5 + tg_b64url_encode(j.p, plen, out + 5);
    uint8_t sig[64];
    size_t siglen = sizeof sig;
    if (EVP_DigestSignInit(r->ctx, NULL, NULL, NULL, r->key) != 1 ||
        EVP_DigestSign(r->ctx, sig, &siglen, (const uint8_t *)out, o) != 1 || siglen != 64)
        goto done;
    out[o++] = '.';
    o += tg_b64url_encode(sig, siglen, out + o);
    n = (long)o;
done:
    tg_buf_free(&j);
    return n;
}
