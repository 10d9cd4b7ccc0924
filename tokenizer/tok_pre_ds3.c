/* tok_pre_ds3.c — DeepSeek-V3's pre-tokenizer written by hand: the three
 * Split (Isolated) regexes of its tokenizer.json, run one after another on
 * each piece as Hugging Face does, without a regex engine:
 *
 *   1. \p{N}{1,3}
 *   2. [\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+
 *   3. A1 [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
 *      A2 [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
 *      A3  ?[\p{P}\p{S}]+[\r\n]*
 *      A4 \s*[\r\n]+      (ends after the last CR/LF of the whitespace run)
 *      A5 \s+(?!\S)       (the run, less its last character unless at the end)
 *      A6 \s+
 *
 * Matching is leftmost-first: at each position the alternatives are tried in
 * order; characters where none matches gather into a gap piece.  \s is
 * Oniguruma's (TAB..CR, U+0085, Zs, Zl, Zp).  Classes come from
 * tok_unicode_tab.c.  tests/unit/tokenizer/tok_unit.c checks this against the
 * PCRE2 path on random text. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tok-int.h"

enum {
    C_L = 1, C_N = 2, C_M = 4, C_P = 8, C_S = 16,
    C_WS = 32,   /* Oniguruma \s */
    C_CRLF = 64, /* \r or \n */
    C_CJK = 128, /* the explicit ranges of split 2 */
};

extern const uint32_t tok_unicode_n_ranges;
extern const uint32_t tok_unicode_ranges[];

static uint8_t cls_tab[0x110000];
static pthread_once_t cls_once = PTHREAD_ONCE_INIT;

static int is_onig_space(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static void cls_init(void) {
    for (uint32_t i = 0; i < tok_unicode_n_ranges; i++) {
        uint32_t s = tok_unicode_ranges[i] >> 5, c = tok_unicode_ranges[i] & 31;
        uint32_t e = i + 1 < tok_unicode_n_ranges ? tok_unicode_ranges[i + 1] >> 5 : 0x110000;
        memset(cls_tab + s, (int)c, e - s);
    }
    for (uint32_t c = 0; c < 0x3100; c++)
        if (is_onig_space(c)) cls_tab[c] |= C_WS;
    cls_tab['\r'] |= C_CRLF;
    cls_tab['\n'] |= C_CRLF;
    for (uint32_t c = 0x4E00; c <= 0x9FA5; c++) cls_tab[c] |= C_CJK;
    for (uint32_t c = 0x3040; c <= 0x30FF; c++) cls_tab[c] |= C_CJK;
}

/* ASCII: 1 = the punctuation set of A1, 2 = A-Za-z */
static const uint8_t ascii_kind[128] = {
    ['!'] = 1, ['"'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1,
    [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, ['-'] = 1, ['.'] = 1, ['/'] = 1, [':'] = 1,
    [';'] = 1, ['<'] = 1, ['='] = 1, ['>'] = 1, ['?'] = 1, ['@'] = 1, ['['] = 1, ['\\'] = 1,
    [']'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['{'] = 1, ['|'] = 1, ['}'] = 1, ['~'] = 1,
    ['A' ... 'Z'] = 2, ['a' ... 'z'] = 2,
};

/* Per code point of the segment: its class and its byte offset. */
typedef struct {
    uint8_t *cls;
    uint32_t *cp;
    uint32_t *off; /* n + 1 entries */
    size_t n;
} cps_t;

static inline int is_ascii_punct(const cps_t *c, size_t i) {
    return c->cp[i] < 128 && ascii_kind[c->cp[i]] == 1;
}
static inline int is_ascii_alpha(const cps_t *c, size_t i) {
    return c->cp[i] < 128 && ascii_kind[c->cp[i]] == 2;
}

/* Match the alternatives of split 3 at i within [i, end); returns the match
 * end (> i) or i when none matches. */
static size_t match3(const cps_t *c, size_t i, size_t end) {
    const uint8_t *k = c->cls;
    uint8_t k0 = k[i];
    /* A1 */
    if (i + 1 < end && is_ascii_punct(c, i) && is_ascii_alpha(c, i + 1)) {
        size_t j = i + 1;
        while (j < end && is_ascii_alpha(c, j)) j++;
        return j;
    }
    /* A2 */
    if (!(k0 & (C_CRLF | C_L | C_P | C_S)) && i + 1 < end && (k[i + 1] & (C_L | C_M))) {
        size_t j = i + 1;
        while (j < end && (k[j] & (C_L | C_M))) j++;
        return j;
    }
    if (k0 & (C_L | C_M)) {
        size_t j = i;
        while (j < end && (k[j] & (C_L | C_M))) j++;
        return j;
    }
    /* A3 */
    {
        size_t j = i;
        if (c->cp[j] == ' ' && j + 1 < end && (k[j + 1] & (C_P | C_S))) j++;
        if (k[j] & (C_P | C_S)) {
            while (j < end && (k[j] & (C_P | C_S))) j++;
            while (j < end && (k[j] & C_CRLF)) j++;
            return j;
        }
    }
    if (!(k0 & C_WS)) return i;
    size_t e = i;
    while (e < end && (k[e] & C_WS)) e++;
    /* A4: through the last CR/LF of the run */
    for (size_t j = e; j > i; j--)
        if (k[j - 1] & C_CRLF) return j;
    /* A5 */
    if (e == end) return e;
    if (e - 1 > i) return e - 1;
    /* A6 */
    return e;
}

int tok_pre_ds3(const char *text, size_t len, tok_spans_t *out) {
    pthread_once(&cls_once, cls_init);
    out->n = 0;
    if (!len) return 0;
    cps_t c;
    uint8_t cls_small[256];
    uint32_t cp_small[256], off_small[257];
    void *big = NULL;
    if (len <= 256) {
        c.cls = cls_small, c.cp = cp_small, c.off = off_small;
    } else {
        big = malloc(len * (1 + 4 + 4) + 4);
        if (!big) return -1;
        c.cp = big;
        c.off = c.cp + len;
        c.cls = (uint8_t *)(c.off + len + 1);
    }
    const uint8_t *p = (const uint8_t *)text;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        c.off[n] = (uint32_t)i;
        if (p[i] < 0x80) cp = p[i], i++;
        else i += (size_t)tg_utf8_next(p + i, &cp);
        c.cp[n] = cp;
        c.cls[n] = cls_tab[cp];
        n++;
    }
    c.off[n] = (uint32_t)len;
    c.n = n;
    int rc = 0;
    /* split 1 gives pieces; within each, split 2; within each of those, split 3 */
    size_t a = 0;
    while (a < n && rc == 0) {
        size_t b = a;
        if (c.cls[a] & C_N) { /* one \p{N}{1,3} match */
            while (b < n && b - a < 3 && (c.cls[b] & C_N)) b++;
        } else {
            while (b < n && !(c.cls[b] & C_N)) b++;
        }
        /* split 2 within [a, b) */
        size_t x = a;
        while (x < b && rc == 0) {
            size_t y = x;
            if (c.cls[x] & C_CJK) {
                while (y < b && (c.cls[y] & C_CJK)) y++;
            } else {
                while (y < b && !(c.cls[y] & C_CJK)) y++;
            }
            /* split 3 within [x, y) */
            size_t i = x, gap = x;
            while (i < y) {
                size_t m = match3(&c, i, y);
                if (m == i) {
                    i++;
                    continue;
                }
                if (gap < i && tok_spans_push(out, c.off[gap], c.off[i])) rc = -1;
                if (tok_spans_push(out, c.off[i], c.off[m])) rc = -1;
                i = gap = m;
            }
            if (gap < y && tok_spans_push(out, c.off[gap], c.off[y])) rc = -1;
            x = y;
        }
        a = b;
    }
    free(big);
    return rc;
}

/* For tests: the class bits of a code point (see the enum above). */
int tok_ds3_class(uint32_t cp) {
    pthread_once(&cls_once, cls_init);
    return cp < 0x110000 ? cls_tab[cp] : 0;
}
