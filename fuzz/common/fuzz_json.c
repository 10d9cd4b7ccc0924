/* fuzz_json.c — libFuzzer target for common/tg_json.c.  Any input: parse
 * (depth limit small, so deep inputs are reached quickly); on success every
 * accessor is exercised, the compact writing must parse again and write the
 * same bytes (idempotent), and cutting each member of the root object out of
 * the text must leave valid JSON, tg_json_parse_member must find what the
 * whole parse finds, and the text read in one pass (short enough for the
 * parser's scratch, or with more nodes than it holds) must give what the
 * counted two passes give (the same text after PAD bytes of whitespace:
 * every offset PAD later).  Built as a libFuzzer program by
 * `make fuzz-common`, and with replay.c as a plain program by `make test-common`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tg_json.h"

static void walk(const tg_json_t *v) {
    int64_t i;
    double d;
    int b;
    size_t n, off;
    tg_json_int64(v, &i);
    tg_json_double(v, &d);
    tg_json_bool(v, &b);
    tg_json_str(v, &n);
    tg_json_span(v, &off, &n);
    tg_json_dup_key(v, &n, NULL);
    const tg_json_t *m;
    TG_JSON_FOREACH(m, v) {
        const char *k = tg_json_key(m, &n);
        if (k && tg_json_getn(v, k, n) == NULL) abort(); /* a member's own key finds a member */
        walk(m);
    }
}

/* Longer than tg_json.c's one-pass scratch (TG_JSON_SCRATCH, 16 KiB): a
 * text after this much whitespace is counted first, then built. */
#define PAD 17000

static int same_span(const tg_json_t *a, const tg_json_t *b, int key) {
    size_t ao, al, bo, bl;
    if (key) {
        tg_json_key_span(a, &ao, &al);
        tg_json_key_span(b, &bo, &bl);
    } else {
        tg_json_span(a, &ao, &al);
        tg_json_span(b, &bo, &bl);
    }
    return bo == ao + PAD && bl == al;
}

/* a (of the text) and b (of PAD whitespace and the text) alike in every
 * part and span; aborts otherwise */
static void same(const tg_json_t *a, const tg_json_t *b) {
    size_t an = 0, bn = 0, ao, al, bo, bl;
    const char *as, *bs;
    if (tg_json_type(a) != tg_json_type(b) || tg_json_len(a) != tg_json_len(b) || !same_span(a, b, 0)) abort();
    as = tg_json_key(a, &an), bs = tg_json_key(b, &bn);
    if (!as != !bs || (as && (an != bn || memcmp(as, bs, an) || as[an] || !same_span(a, b, 1)))) abort();
    as = tg_json_str(a, &an), bs = tg_json_str(b, &bn);
    if (!as != !bs || (as && (an != bn || memcmp(as, bs, an) || as[an]))) abort();
    as = tg_json_num_text(a, &an), bs = tg_json_num_text(b, &bn);
    if (!as != !bs || (as && (an != bn || memcmp(as, bs, an) || as[an]))) abort();
    if (tg_json_is_true(a) != tg_json_is_true(b)) abort();
    int ac = tg_json_member_cut(a, &ao, &al), bc = tg_json_member_cut(b, &bo, &bl); /* the links to prev and next */
    if (ac != bc || (!ac && (bo != ao + PAD || bl != al))) abort();
    const tg_json_t *x = tg_json_first(a), *y = tg_json_first(b);
    for (; x && y; x = tg_json_next(x), y = tg_json_next(y)) same(x, y);
    if (x || y) abort();
}

/* The one-pass read (j, or its refusal err) as the counted two passes. */
static void check_passes(const uint8_t *data, size_t size, const tg_json_opts_t *o, const tg_json_t *j,
                         const tg_json_err_t *err) {
    char *t = malloc(PAD + size);
    if (!t) return;
    memset(t, ' ', PAD);
    if (size) memcpy(t + PAD, data, size);
    tg_json_err_t e;
    tg_json_t *k = tg_json_parse(t, PAD + size, o, &e);
    if (!j != !k) abort();
    if (!j && (e.offset != err->offset + PAD || strcmp(e.msg, err->msg))) abort();
    if (j) same(j, k);
    tg_json_free(k);
    free(t);
}

/* tg_json_parse_member agrees with the whole parse: refused when it is, and
 * the member tg_json_getn finds, written the same. */
static void check_member(const uint8_t *data, size_t size, const tg_json_opts_t *o, const tg_json_t *j,
                         const char *key, size_t key_len) {
    tg_json_t *m = tg_json_parse_member((const char *)data, size, o, key, key_len, NULL);
    const tg_json_t *w = tg_json_getn(j, key, key_len);
    if (!m != !w) abort();
    if (m) {
        tg_buf_t a = {0}, b = {0};
        if (tg_json_write(&a, m) != tg_json_write(&b, w) || a.len != b.len || (a.len && memcmp(a.p, b.p, a.len)))
            abort();
        tg_buf_free(&a);
        tg_buf_free(&b);
    }
    tg_json_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tg_json_opts_t o = {.max_depth = 32};
    tg_json_err_t err;
    tg_json_t *j = tg_json_parse((const char *)data, size, &o, &err);
    check_passes(data, size, &o, j, &err);
    check_member(data, size, &o, j, "usage", 5);
    if (!j) {
        if (err.offset > size || !err.msg) abort();
        return 0;
    }
    size_t kn;
    const char *k0 = tg_json_type(j) == TG_JSON_OBJECT ? tg_json_key(tg_json_first(j), &kn) : NULL;
    if (k0) check_member(data, size, &o, j, k0, kn); /* any key, escaped or holding NUL */
    walk(j);
    tg_buf_t w1 = {0}, w2 = {0};
    if (tg_json_write(&w1, j) == 0) {
        tg_json_t *k = tg_json_parse(w1.p, w1.len, &o, &err);
        if (!k) abort();
        if (tg_json_write(&w2, k) == 0 && (w1.len != w2.len || memcmp(w1.p, w2.p, w1.len))) abort();
        tg_json_free(k);
    }
    tg_buf_free(&w1);
    tg_buf_free(&w2);
    const tg_json_t *m;
    size_t i = 0;
    TG_JSON_FOREACH(m, j) {
        size_t off, len;
        if (tg_json_type(j) != TG_JSON_OBJECT || i++ > 64) break;
        if (tg_json_member_cut(m, &off, &len) || off + len > size) abort();
        char *t = malloc(size - len + 1);
        if (!t) break;
        memcpy(t, data, off);
        memcpy(t + off, data + off + len, size - off - len);
        tg_json_t *k = tg_json_parse(t, size - len, &o, NULL);
        if (!k || tg_json_len(k) + 1 != tg_json_len(j)) abort();
        tg_json_free(k);
        free(t);
    }
    tg_json_free(j);
    return 0;
}
