/* Unit tests of metering/mtr_spool.c: the record byte format, torn and
 * corrupt records, appends and reading a file back. */
#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

#include "tg_test.h"

#include "../../../metering/mtr_spool.c"

static mtr_usage_t sample(int i) {
    mtr_usage_t u;
    memset(&u, 0, sizeof u);
    snprintf(u.request_id, sizeof u.request_id, "0190f0e2-7a3b-7c00-8000-%012d", i);
    u.key_id = 42 + i;
    u.customer_id = 7;
    u.model = i % 2 ? "deepseek-v3-demo" : "m";
    u.price = (mtr_price_t){270000, 70000, 1100000};
    u.prompt_tokens = 1000 + i;
    u.prompt_cache_hit_tokens = 300;
    u.completion_tokens = 500;
    u.reasoning_tokens = 20;
    u.http_status = 200;
    u.stream = i % 2;
    u.received_us = 1764300000000000LL + i;
    u.first_byte_us = i % 3 ? 1764300000100000LL : 0;
    u.finished_us = 1764300000900000LL;
    return u;
}

static int same(const mtr_usage_t *a, const mtr_usage_t *b) {
    return !strcmp(a->request_id, b->request_id) && a->key_id == b->key_id && a->customer_id == b->customer_id &&
           !strcmp(a->model, b->model) && a->price.input_cache_miss == b->price.input_cache_miss &&
           a->price.input_cache_hit == b->price.input_cache_hit && a->price.output == b->price.output &&
           a->prompt_tokens == b->prompt_tokens && a->prompt_cache_hit_tokens == b->prompt_cache_hit_tokens &&
           a->completion_tokens == b->completion_tokens && a->reasoning_tokens == b->reasoning_tokens &&
           a->http_status == b->http_status && a->stream == b->stream && a->received_us == b->received_us &&
           a->first_byte_us == b->first_byte_us && a->finished_us == b->finished_us &&
           a->price.price_id == b->price.price_id && a->price.override_id == b->price.override_id;
}

/* The byte-at-a-time table loop mtr_crc32 had before it took eight bytes a step. */
static uint32_t crc32_bytewise(const uint8_t *b, size_t n) {
    uint32_t t[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        t[i] = c;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = t[(c ^ b[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void test_crc32(void) {
    CHECK_EQ_I(mtr_crc32("123456789", 9), 0xCBF43926u); /* the standard check value */
    CHECK_EQ_I(mtr_crc32("", 0), 0);
    /* every length up to 300 and every alignment of the start: the bytewise values */
    uint8_t buf[320];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)((x = x * 1103515245u + 12345u) >> 16);
    int bad = 0;
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n <= 300; n++) bad += mtr_crc32(buf + off, n) != crc32_bytewise(buf + off, n);
    CHECK_EQ_I(bad, 0);
}

static void test_encode_layout(void) {
    mtr_usage_t u = sample(1);
    uint8_t b[MTR_REC_HDR + MTR_REC_MAX];
    size_t n = mtr_spool_encode(&u, b, sizeof b);
    CHECK_EQ_I(n, 12 + 139 + strlen(u.model));
    CHECK(memcmp(b, "TGS1", 4) == 0);
    CHECK_EQ_I(get_u(b + 4, 4), 139 + strlen(u.model));
    CHECK(memcmp(b + 12, u.request_id, 36) == 0);
    CHECK_EQ_I(get_u(b + 12 + 36, 8), 43);           /* key_id */
    CHECK_EQ_I(get_u(b + 12 + 92, 8), 500);          /* completion_tokens */
    CHECK_EQ_I(b[12 + 112], 1);                      /* stream */
    CHECK_EQ_I(get_u(b + 12 + 137, 2), strlen(u.model));
    CHECK(memcmp(b + 12 + 139, "deepseek-v3-demo", 16) == 0);
    CHECK_EQ_I(mtr_spool_encode(&u, b, 50), 0); /* too small a buffer */
    u.model = "";
    CHECK_EQ_I(mtr_spool_encode(&u, b, sizeof b), 0);
    char longm[MTR_MODEL_MAX + 2];
    memset(longm, 'x', sizeof longm - 1);
    longm[sizeof longm - 1] = 0;
    u.model = longm;
    CHECK_EQ_I(mtr_spool_encode(&u, b, sizeof b), 0);
}

static void test_roundtrip_torn_corrupt(void) {
    mtr_usage_t u = sample(3), v;
    u.key_id = -5; /* negative values survive */
    u.http_status = 503;
    uint8_t b[MTR_REC_HDR + MTR_REC_MAX];
    char model[MTR_MODEL_MAX + 1];
    size_t n = mtr_spool_encode(&u, b, sizeof b), used = 0;
    CHECK_EQ_I(mtr_spool_decode(b, n, &v, model, &used), 1);
    CHECK_EQ_I(used, n);
    CHECK(same(&u, &v));
    /* every proper prefix is "need more", never a record or an error */
    int prefix_ok = 1;
    for (size_t k = 0; k < n; k++)
        if (mtr_spool_decode(b, k, &v, model, &used) != 0) prefix_ok = 0;
    CHECK(prefix_ok);
    /* any flipped byte is detected */
    int flips_ok = 1;
    for (size_t k = 0; k < n; k++) {
        b[k] ^= 0x40;
        int d = mtr_spool_decode(b, n, &v, model, &used);
        if (d == 1) flips_ok = 0;
        b[k] ^= 0x40;
    }
    CHECK(flips_ok);
    b[0] = 'X';
    CHECK_EQ_I(mtr_spool_decode(b, 3, &v, model, &used), -1);
    /* an absurd length is corrupt, not "need more" forever */
    b[0] = 'T';
    b[5] = 0x7f;
    CHECK_EQ_I(mtr_spool_decode(b, n, &v, model, &used), -1);
}

typedef struct {
    mtr_usage_t got[16];
    char models[16][MTR_MODEL_MAX + 1];
    int n;
} collect_t;

static void collect(const mtr_usage_t *u, void *arg) {
    collect_t *c = arg;
    if (c->n == 16) return;
    c->got[c->n] = *u;
    strcpy(c->models[c->n], u->model);
    c->got[c->n].model = c->models[c->n];
    c->n++;
}

static void test_files(void) {
    char dir[] = "/tmp/mtr-test.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char sub[64];
    snprintf(sub, sizeof sub, "%s/a/spool", dir); /* created on demand */
    mtr_spool_t *sp = NULL;
    mtr_usage_t us[5];
    const mtr_usage_t *v[5];
    for (int i = 0; i < 5; i++) us[i] = sample(i), v[i] = &us[i];
    CHECK_EQ_I(mtr_spool_append(&sp, sub, v, 3), 0);
    CHECK_EQ_I(mtr_spool_append(&sp, sub, v + 3, 2), 0);
    char path[256];
    snprintf(path, sizeof path, "%s", sp->path);
    mtr_spool_close(sp);
    char **names;
    int n = mtr_spool_list(sub, &names);
    CHECK_EQ_I(n, 1);
    if (n == 1) CHECK(strstr(path, names[0]) != NULL);
    mtr_names_free(names, n);

    collect_t c = {.n = 0};
    int corrupt = -1;
    CHECK_EQ_I(mtr_spool_read(path, collect, &c, &corrupt), 5);
    CHECK_EQ_I(corrupt, 0);
    int all = c.n == 5;
    for (int i = 0; i < c.n && i < 5; i++) all &= same(&c.got[i], &us[i]);
    CHECK(all);

    /* a torn tail is ignored and is not corruption */
    FILE *f = fopen(path, "ab");
    fwrite("TGS1\x90\x00\x00", 1, 7, f);
    fclose(f);
    c.n = 0;
    CHECK_EQ_I(mtr_spool_read(path, collect, &c, &corrupt), 5);
    CHECK_EQ_I(corrupt, 0);

    /* garbage in the middle: the damaged record is lost, every other one is
     * delivered (the reader scans on to the next whole record), corrupt set.
     * Before (2026-11-30) the read stopped at the damage: 1 of the 4 intact. */
    f = fopen(path, "r+b");
    fseek(f, 12 + 139 + 1 + 12 + 20, SEEK_SET); /* inside the second record */
    fputc('#', f);
    fclose(f);
    c.n = 0;
    CHECK_EQ_I(mtr_spool_read(path, collect, &c, &corrupt), 4);
    CHECK_EQ_I(corrupt, 1);
    all = c.n == 4;
    for (int i = 0; i < c.n && i < 4; i++) all &= same(&c.got[i], &us[i ? i + 1 : 0]);
    CHECK(all);

    /* garbage bytes, a torn record and records between them, a torn tail:
     * each whole record once, in order */
    char mid[256];
    snprintf(mid, sizeof mid, "%s/mid.spool", dir);
    f = fopen(mid, "wb");
    uint8_t rec[MTR_REC_HDR + MTR_REC_MAX];
    size_t rl;
    static const char junk[] = "garbage TGS1 TGS2\0\0\0T";
    fwrite(junk, 1, sizeof junk - 1, f); /* bytes that only look like a start */
    rl = mtr_spool_encode(&us[0], rec, sizeof rec), fwrite(rec, 1, rl, f);
    rl = mtr_spool_encode(&us[1], rec, sizeof rec), fwrite(rec, 1, rl / 2, f); /* torn, not last */
    rl = mtr_spool_encode(&us[2], rec, sizeof rec), fwrite(rec, 1, rl, f);
    rl = mtr_spool_encode(&us[3], rec, sizeof rec), fwrite(rec, 1, rl, f);
    for (int k = 0; k < 70000; k++) fputc("TGS1x"[k % 5], f);               /* more than a read buffer */
    rl = mtr_spool_encode(&us[4], rec, sizeof rec), fwrite(rec, 1, rl, f);
    rl = mtr_spool_encode(&us[1], rec, sizeof rec), fwrite(rec, 1, rl - 1, f); /* torn tail */
    fclose(f);
    c.n = 0;
    CHECK_EQ_I(mtr_spool_read(mid, collect, &c, &corrupt), 4);
    CHECK_EQ_I(corrupt, 1);
    all = c.n == 4;
    for (int i = 0; i < c.n && i < 4; i++) all &= same(&c.got[i], &us[i ? i + 1 : 0]);
    CHECK(all);
    /* a torn tail alone, even one that holds a 'T', is not corruption */
    f = fopen(mid, "wb");
    rl = mtr_spool_encode(&us[0], rec, sizeof rec), fwrite(rec, 1, rl, f);
    rl = mtr_spool_encode(&us[1], rec, sizeof rec), fwrite(rec, 1, rl - 3, f);
    fclose(f);
    c.n = 0;
    CHECK_EQ_I(mtr_spool_read(mid, collect, &c, &corrupt), 1);
    CHECK_EQ_I(corrupt, 0);
    unlink(mid);
    CHECK_EQ_I(mtr_spool_read("/nonexistent/x.spool", collect, &c, &corrupt), -1);

    /* other files in the directory are not spool files */
    snprintf(path, sizeof path, "%s/rejected.jsonl", sub);
    f = fopen(path, "w");
    fclose(f);
    n = mtr_spool_list(sub, &names);
    CHECK_EQ_I(n, 1);
    mtr_names_free(names, n);
    CHECK_EQ_I(mtr_spool_list("/nonexistent-dir", &names), 0);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_EQ_I(system(cmd), 0);
}

/* The journal's calls: writes without fsync read back the same; two open
 * files have distinct names (O_EXCL keeps that true within a microsecond). */
static void test_journal_calls(void) {
    char dir[] = "/tmp/mtr-test.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    mtr_spool_t *a = NULL, *b = NULL;
    mtr_usage_t us[3];
    const mtr_usage_t *v[3];
    for (int i = 0; i < 3; i++) us[i] = sample(i), v[i] = &us[i];
    CHECK_EQ_I(mtr_spool_write(&a, dir, NULL, 0), 0); /* opens only */
    CHECK(a != NULL);
    for (int i = 0; i < 3; i++) CHECK_EQ_I(mtr_spool_write(&a, dir, v + i, 1), 0);
    CHECK_EQ_I(mtr_spool_sync(a), 0);
    CHECK_EQ_I(mtr_spool_sync(NULL), 0);
    CHECK_EQ_I(mtr_spool_write(&b, dir, v, 1), 0);
    CHECK(a && b && strcmp(mtr_spool_name(a), mtr_spool_name(b)) != 0);
    CHECK(a && strchr(mtr_spool_name(a), '/') == NULL && !strncmp(mtr_spool_name(a), "settle-", 7));
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, a ? mtr_spool_name(a) : "x");
    mtr_spool_close(a);
    mtr_spool_close(b);
    collect_t c = {.n = 0};
    int corrupt = -1, all;
    CHECK_EQ_I(mtr_spool_read(path, collect, &c, &corrupt), 3);
    all = c.n == 3;
    for (int i = 0; i < c.n && i < 3; i++) all &= same(&c.got[i], &us[i]);
    CHECK(all);
    char **names;
    int n = mtr_spool_list(dir, &names);
    CHECK_EQ_I(n, 2);
    mtr_names_free(names, n);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_EQ_I(system(cmd), 0);
}

/* Decoding random and mutated bytes never crashes, never reads past n, and
 * anything it accepts re-encodes to the same bytes. */
static void test_decode_garbage(void) {
    uint8_t b[MTR_REC_HDR + MTR_REC_MAX + 64], e[MTR_REC_HDR + MTR_REC_MAX];
    char model[MTR_MODEL_MAX + 1];
    uint32_t seed = 12345;
    int bad_roundtrip = 0, accepted = 0;
    for (int it = 0; it < 200000; it++) {
        mtr_usage_t u = sample(it), v;
        size_t n = mtr_spool_encode(&u, b, sizeof b);
        int nmut = it % 4;
        for (int k = 0; k < nmut; k++) {
            seed = seed * 1103515245u + 12345u;
            b[(seed >> 8) % n] ^= (uint8_t)(1u << ((seed >> 4) & 7));
        }
        if (it % 7 == 0) { /* truncations and pure noise */
            seed = seed * 1103515245u + 12345u;
            n = (seed >> 8) % (n + 1);
            if (it % 14 == 0)
                for (size_t k = 0; k < n; k++) b[k] = (uint8_t)(seed = seed * 1103515245u + 12345u) >> 24;
        }
        uint8_t *heap = malloc(n ? n : 1); /* exact size: ASan catches over-reads */
        memcpy(heap, b, n);
        size_t used;
        if (mtr_spool_decode(heap, n, &v, model, &used) == 1) {
            accepted++;
            size_t m = mtr_spool_encode(&v, e, sizeof e);
            if (m != used || memcmp(e, heap, m) != 0) bad_roundtrip++;
        }
        free(heap);
    }
    CHECK(accepted > 0);
    CHECK_EQ_I(bad_roundtrip, 0);
}

/* A row with its price version is a TGS2 record (16 more bytes after the
 * model); one without stays TGS1, byte for byte as before. */
static void test_price_version(void) {
    mtr_usage_t u = sample(2), v;
    uint8_t b[MTR_REC_HDR + MTR_REC_MAX];
    char model[MTR_MODEL_MAX + 1];
    size_t m = strlen(u.model), used = 0;
    u.price.price_id = 12;
    u.price.override_id = 7;
    size_t n = mtr_spool_encode(&u, b, sizeof b);
    CHECK_EQ_I(n, 12 + 155 + m);
    CHECK(memcmp(b, "TGS2", 4) == 0);
    CHECK_EQ_I(get_u(b + 12 + 139 + m, 8), 12);
    CHECK_EQ_I(get_u(b + 12 + 147 + m, 8), 7);
    CHECK_EQ_I(mtr_spool_decode(b, n, &v, model, &used), 1);
    CHECK_EQ_I(used, n);
    CHECK(same(&u, &v));
    u.price.price_id = 0; /* an override without a base price */
    n = mtr_spool_encode(&u, b, sizeof b);
    CHECK_EQ_I(mtr_spool_decode(b, n, &v, model, &used), 1);
    CHECK(same(&u, &v));
    u.price.override_id = 0;
    n = mtr_spool_encode(&u, b, sizeof b);
    CHECK_EQ_I(n, 12 + 139 + m);
    CHECK(memcmp(b, "TGS1", 4) == 0);
    CHECK_EQ_I(mtr_spool_decode(b, n, &v, model, &used), 1);
    CHECK(same(&u, &v));
    /* TGS2 with no version is refused (it would not re-encode the same) */
    u.price.price_id = 5;
    n = mtr_spool_encode(&u, b, sizeof b);
    memset(b + 12 + 139 + m, 0, 16);
    uint32_t crc = mtr_crc32(b + 12, n - 12);
    for (int i = 0; i < 4; i++) b[8 + i] = (uint8_t)(crc >> (8 * i));
    CHECK_EQ_I(mtr_spool_decode(b, n, &v, model, &used), -1);
}

TG_TEST_MAIN(test_crc32, test_encode_layout, test_price_version, test_roundtrip_torn_corrupt, test_files, test_journal_calls,
             test_decode_garbage)
