/* Unit tests of billing/bill_receipt.c: a receipt verifies with the key's
 * public half, carries the settlement's numbers (cost = bill_cost_pico), and
 * any change to its payload or signature makes the signature fail. */
#include <stdlib.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "tg_test.h"

#include "../../../billing/bill_receipt.c"

static char dir[] = "/tmp/bill-receipt-test.XXXXXX";

static EVP_PKEY *make_key(const char *path) {
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    FILE *f = fopen(path, "w");
    if (!k || !f) return NULL;
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    return k;
}

/* 1 when rc's signature verifies with k. */
static int verify(EVP_PKEY *k, const char *rc) {
    const char *dot2 = strrchr(rc, '.');
    uint8_t sig[80];
    if (!dot2 || tg_b64url_decode(dot2 + 1, strlen(dot2 + 1), sig) != 64) return 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k) == 1 &&
             EVP_DigestVerify(ctx, sig, 64, (const uint8_t *)rc, (size_t)(dot2 - rc)) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

static cJSON *payload(const char *rc) {
    const char *d1 = strchr(rc, '.'), *d2 = strrchr(rc, '.');
    static uint8_t p[8192];
    long n = tg_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), p);
    return n < 0 ? NULL : cJSON_ParseWithLength((const char *)p, (size_t)n);
}

static void test_sign_verify_tamper(void) {
    char path[128], path2[128], err[256] = "";
    snprintf(path, sizeof path, "%s/receipt.key", dir);
    snprintf(path2, sizeof path2, "%s/other.key", dir);
    EVP_PKEY *k = make_key(path), *other = make_key(path2);
    CHECK(k && other);
    bill_receipts_t *r = bill_receipts_new(path, err, sizeof err);
    CHECK(r != NULL);
    if (!r || !k || !other) return;
    bill_usage_t u;
    memset(&u, 0, sizeof u);
    snprintf(u.request_id, sizeof u.request_id, "0190f0e2-7a3b-7c00-8000-000000000001");
    u.key_id = 7;
    u.customer_id = 3;
    u.model = "m \"quoted\"";
    u.price = (bill_price_t){.input_cache_miss = 270000, .input_cache_hit = 70000, .output = 1100000};
    u.prompt_tokens = 1000;
    u.prompt_cache_hit_tokens = 400;
    u.completion_tokens = 50;
    u.reasoning_tokens = 20;
    u.http_status = 200;
    u.received_us = 1764300000123456LL;
    char rc[BILL_RECEIPT_MAX];
    long n = bill_receipts_sign(r, &u, NULL, rc, sizeof rc);
    CHECK(n > 0 && (size_t)n == strlen(rc));
    CHECK(!strncmp(rc, "tgr1.", 5));
    CHECK(verify(k, rc));
    CHECK(!verify(other, rc));
    cJSON *j = payload(rc);
    CHECK(j != NULL);
    CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "cost_pico")), "245000000")); /* 600*270000 + 400*70000 + 50*1100000 */
    CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "model")), "m \"quoted\""));
    CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "received_at")), "2025-11-28T03:20:00.123456Z"));
    CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "kid")), r->kid));
    CHECK_EQ_I(cJSON_GetObjectItem(j, "prompt_cache_miss_tokens")->valueint, 600);
    cJSON_Delete(j);
    /* every single-character change of the signed part or the signature fails */
    int bad = 0;
    for (long i = 5; i < n; i++) {
        if (rc[i] == '.') continue;
        char c = rc[i];
        rc[i] = c == 'A' ? 'B' : 'A';
        bad += verify(k, rc);
        rc[i] = c;
    }
    CHECK_EQ_I(bad, 0);
    CHECK(verify(k, rc));
    CHECK_EQ_I(bill_receipts_sign(r, &u, NULL, rc, 100), -1); /* too small a buffer */
    /* the published key names the same kid */
    CHECK(strstr(bill_receipts_key_json(r), r->kid) != NULL);
    bill_receipts_free(r);
    /* not an Ed25519 key */
    FILE *f = fopen(path2, "w");
    fputs("not a key\n", f);
    fclose(f);
    CHECK(bill_receipts_new(path2, err, sizeof err) == NULL);
    CHECK(strstr(err, "Ed25519") != NULL);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    test_sign_verify_tamper();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 1;
    printf("%s: %d checks, %d failed\n", __FILE__, tg_test_checks, tg_test_fails);
    return tg_test_fails ? 1 : 0;
}
