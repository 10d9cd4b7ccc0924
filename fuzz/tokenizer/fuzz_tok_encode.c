/* fuzz_tok_encode.c — libFuzzer target: encode arbitrary bytes (invalid UTF-8
 * must be refused, valid text must round-trip), decode arbitrary ids, stream
 * decode, NFC (valid UTF-8 out, idempotent), and render/split R1 text.  The tokenizer is the DeepSeek-V3 one
 * (TOK_FUZZ_TOKENIZER, default build/data/deepseek-v3-tokenizer/tokenizer.json). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok-int.h" /* tok_nfc */

static tok_t *T;

static tok_t *load(void) {
    const char *p = getenv("TOK_FUZZ_TOKENIZER");
    char err[512];
    tok_t *t = tok_load(p ? p : "build/data/deepseek-v3-tokenizer/tokenizer.json", err, sizeof err);
    if (!t) {
        fprintf(stderr, "fuzz_tok_encode: %s\n", err);
        abort();
    }
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!T) T = load();
    const char *s = (const char *)data;
    int32_t *ids = NULL;
    int allow = size && (data[0] & 1);
    long n = tok_encode(T, s, size, allow, &ids);
    if (!tg_utf8_valid(s, size)) {
        if (n != -1) abort();
    } else {
        if (n < 0) abort();
        if (tok_count(T, s, size, allow) != n) abort();
        size_t l;
        char *back = tok_decode(T, ids, (size_t)n, 0, &l);
        if (!back || l != size || memcmp(back, s, size)) abort();
        /* stream decode gives the same bytes */
        tok_stream_t *st = tok_stream_new(T, 0);
        size_t off = 0, pl;
        for (long i = 0; i < n; i++) {
            const char *p = tok_stream_push(st, ids[i], &pl);
            if (!p || off + pl > l || memcmp(back + off, p, pl)) abort();
            off += pl;
        }
        const char *p = tok_stream_flush(st, &pl);
        if (!p || off + pl != l) abort();
        tok_stream_free(st);
        free(back);
    }
    free(ids);
    /* the input as ids (any values): decode must never produce invalid UTF-8 */
    size_t k = size / 4;
    int32_t *v = malloc((k + 1) * sizeof *v);
    for (size_t i = 0; i < k; i++) {
        uint32_t x;
        memcpy(&x, data + 4 * i, 4);
        v[i] = (int32_t)(x % (uint32_t)(tok_n_vocab(T) + 2)) - 1; /* some out of range */
    }
    size_t dl;
    char *d = tok_decode(T, v, k, size & 1, &dl);
    if (d && !tg_utf8_valid(d, dl)) abort();
    free(d);
    free(v);
    if (tg_utf8_valid(s, size)) {
        char *nf = NULL, *nf2 = NULL;
        size_t nl = 0, nl2 = 0;
        if (tok_nfc(s, size, &nf, &nl) > 0) {
            if (!tg_utf8_valid(nf, nl)) abort();
            if (tok_nfc(nf, nl, &nf2, &nl2) > 0 && (nl2 != nl || memcmp(nf, nf2, nl))) abort();
        }
        free(nf), free(nf2);
    }
    /* R1 reasoning split: streamed in chunks == whole */
    char *r, *c;
    /* (tok_r1_split returns C strings: inputs with NUL are compared by the stream only) */
    if (!memchr(s, 0, size) && tok_r1_split(s, size, &r, &c) >= 0) {
        size_t chunk = size ? (size_t)(data[0] % 7) + 1 : 1;
        tok_r1_state_t st = {0};
        char *rs = malloc(size + 200), *cs = malloc(size + 200), rb[300], cb[300];
        size_t rl = 0, cl = 0, a, b;
        for (size_t i = 0; i < size; i += chunk) {
            size_t k = size - i < chunk ? size - i : chunk;
            tok_r1_feed(&st, s + i, k, rb, &a, cb, &b);
            memcpy(rs + rl, rb, a), rl += a;
            memcpy(cs + cl, cb, b), cl += b;
        }
        tok_r1_finish(&st, rb, &a, cb, &b);
        memcpy(rs + rl, rb, a), rl += a;
        memcpy(cs + cl, cb, b), cl += b;
        if (rl != strlen(r) || memcmp(rs, r, rl) || cl != strlen(c) || memcmp(cs, c, cl)) abort();
        free(rs), free(cs), free(r), free(c);
    }
    return 0;
}
