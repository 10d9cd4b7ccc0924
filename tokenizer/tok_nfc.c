/* tok_nfc.c — Unicode NFC (canonical decomposition, canonical ordering,
 * canonical composition; UAX #15) for tokenizers whose normalizer is NFC
 * (Qwen style).  Data from tok_nfc_tab.c; Hangul syllables by the algorithm.
 * Most text is left untouched by NFC: a per-code-point "safe" bit (a starter
 * that NFC keeps and that never composes with what precedes it) lets such
 * text through without a copy. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tok-int.h"

extern const uint32_t tok_nfc_n_decomp, tok_nfc_n_ccc, tok_nfc_n_comp;
extern const uint32_t tok_nfc_decomp[][3], tok_nfc_decomp_cps[], tok_nfc_ccc[][2], tok_nfc_comp[][3];

#define SBASE 0xAC00
#define LBASE 0x1100
#define VBASE 0x1161
#define TBASE 0x11A7
#define LCOUNT 19
#define VCOUNT 21
#define TCOUNT 28
#define NCOUNT (VCOUNT * TCOUNT)
#define SCOUNT (LCOUNT * NCOUNT)

static uint8_t unsafe_bits[0x110000 / 8];
static uint8_t *ccc_of;        /* 0x110000 entries, 0 for starters */
static uint64_t *comp_keys;    /* sorted (first << 21 | second) */
static uint32_t *comp_vals;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void mark_unsafe(uint32_t c) { unsafe_bits[c >> 3] |= (uint8_t)(1u << (c & 7)); }
static int is_unsafe(uint32_t c) { return unsafe_bits[c >> 3] >> (c & 7) & 1; }

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void init(void) {
    ccc_of = calloc(0x110000, 1);
    comp_keys = malloc(tok_nfc_n_comp * sizeof *comp_keys);
    comp_vals = malloc(tok_nfc_n_comp * sizeof *comp_vals);
    if (!ccc_of || !comp_keys || !comp_vals) abort(); /* 1 MiB at start-up */
    for (uint32_t i = 0; i < tok_nfc_n_ccc; i++) {
        ccc_of[tok_nfc_ccc[i][0]] = (uint8_t)tok_nfc_ccc[i][1];
        mark_unsafe(tok_nfc_ccc[i][0]);
    }
    /* pack (key, value) to sort together */
    uint64_t *tmp = malloc(tok_nfc_n_comp * sizeof *tmp * 2);
    if (!tmp) abort();
    for (uint32_t i = 0; i < tok_nfc_n_comp; i++) {
        tmp[2 * i] = (uint64_t)tok_nfc_comp[i][0] << 21 | tok_nfc_comp[i][1];
        tmp[2 * i + 1] = tok_nfc_comp[i][2];
        mark_unsafe(tok_nfc_comp[i][1]); /* composes with what precedes it */
    }
    qsort(tmp, tok_nfc_n_comp, 2 * sizeof *tmp, cmp_u64);
    for (uint32_t i = 0; i < tok_nfc_n_comp; i++) {
        comp_keys[i] = tmp[2 * i];
        comp_vals[i] = (uint32_t)tmp[2 * i + 1];
    }
    free(tmp);
    /* characters NFC changes: they decompose and are not primary composites */
    uint8_t *is_comp = calloc(0x110000 / 8, 1);
    if (!is_comp) abort();
    for (uint32_t i = 0; i < tok_nfc_n_comp; i++)
        is_comp[tok_nfc_comp[i][2] >> 3] |= (uint8_t)(1u << (tok_nfc_comp[i][2] & 7));
    for (uint32_t i = 0; i < tok_nfc_n_decomp; i++) {
        uint32_t c = tok_nfc_decomp[i][0];
        if (!(is_comp[c >> 3] >> (c & 7) & 1)) mark_unsafe(c);
    }
    free(is_comp);
    for (uint32_t c = VBASE; c < VBASE + VCOUNT; c++) mark_unsafe(c);
    for (uint32_t c = TBASE + 1; c < TBASE + TCOUNT; c++) mark_unsafe(c);
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    uint64_t k = (uint64_t)a << 21 | b;
    size_t lo = 0, hi = tok_nfc_n_comp;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (comp_keys[m] < k) lo = m + 1;
        else hi = m;
    }
    return lo < tok_nfc_n_comp && comp_keys[lo] == k ? comp_vals[lo] : 0;
}

static const uint32_t *decomp_find(uint32_t c, uint32_t *n) {
    size_t lo = 0, hi = tok_nfc_n_decomp;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (tok_nfc_decomp[m][0] < c) lo = m + 1;
        else hi = m;
    }
    if (lo < tok_nfc_n_decomp && tok_nfc_decomp[lo][0] == c) {
        *n = tok_nfc_decomp[lo][2];
        return tok_nfc_decomp_cps + tok_nfc_decomp[lo][1];
    }
    return NULL;
}

int tok_nfc(const char *s, size_t n, char **res, size_t *outlen) {
    pthread_once(&once, init);
    *res = NULL;
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0, ncp = 0;
    int unsafe = 0;
    while (i < n) {
        uint32_t c;
        if (p[i] < 0x80) c = p[i], i++;
        else i += (size_t)tg_utf8_next(p + i, &c);
        ncp++;
        if (c >= 0x80 && is_unsafe(c)) unsafe = 1;
    }
    if (!unsafe) return 0;
    /* decompose: a character expands to at most 18 (the longest NFD) */
    uint32_t *d = malloc((ncp * 18 + 4) * sizeof *d);
    if (!d) return -1;
    size_t nd = 0;
    for (i = 0; i < n;) {
        uint32_t c, k;
        if (p[i] < 0x80) c = p[i], i++;
        else i += (size_t)tg_utf8_next(p + i, &c);
        const uint32_t *x;
        if (c >= SBASE && c < SBASE + SCOUNT) {
            uint32_t si = c - SBASE;
            d[nd++] = LBASE + si / NCOUNT;
            d[nd++] = VBASE + (si % NCOUNT) / TCOUNT;
            if (si % TCOUNT) d[nd++] = TBASE + si % TCOUNT;
        } else if (c >= 0xC0 && (x = decomp_find(c, &k))) {
            memcpy(d + nd, x, k * sizeof *d);
            nd += k;
        } else {
            d[nd++] = c;
        }
    }
    /* canonical ordering: stable insertion sort of each run of non-starters */
    for (size_t a = 1; a < nd; a++) {
        uint32_t v = d[a];
        uint8_t cv = ccc_of[v];
        if (!cv) continue;
        size_t b = a;
        while (b > 0 && ccc_of[d[b - 1]] > cv) {
            d[b] = d[b - 1];
            b--;
        }
        d[b] = v;
    }
    /* compose (UAX #15 sample algorithm) */
    size_t starter = 0, out = 1;
    int last = nd ? ccc_of[d[0]] : 0;
    if (last) last = 256; /* a leading non-starter composes with nothing */
    for (size_t a = 1; a < nd; a++) {
        uint32_t ch = d[a];
        int cls = ccc_of[ch];
        uint32_t comp = last == 256 ? 0 : compose(d[starter], ch);
        if (comp && (last < cls || last == 0)) {
            d[starter] = comp;
        } else {
            if (cls == 0) starter = out;
            last = cls;
            d[out++] = ch;
        }
    }
    if (!nd) out = 0;
    char *o = malloc(out * 4 + 1);
    if (!o) {
        free(d);
        return -1;
    }
    size_t ol = 0;
    for (size_t a = 0; a < out; a++) ol += tg_utf8_put(o + ol, d[a]);
    o[ol] = 0;
    free(d);
    *outlen = ol;
    *res = o;
    return 1;
}
