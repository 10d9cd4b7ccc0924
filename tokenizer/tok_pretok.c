/* tok_pretok.c — the pre-tokenizer chain: each Split refines every current
 * piece with its regex (PCRE2 JIT, subject = the piece alone, as Hugging Face
 * runs the regex on each split's own string), then ByteLevel (optionally with
 * the GPT-2 regex).  Spans are byte offsets into the segment; input is valid
 * UTF-8, so PCRE2 runs with PCRE2_NO_UTF_CHECK. */
#include <stdlib.h>
#include <string.h>

#include "tg_grow.h"
#include "tok-int.h"

/* One (start, end, is_match) part of a piece, before behaviour is applied. */
typedef struct {
    uint32_t a, b;
    int m;
} part_t;

typedef struct {
    part_t *v;
    size_t n, cap;
} parts_t;

static int parts_push(parts_t *p, uint32_t a, uint32_t b, int m) {
    part_t *v = tg_grow(p->v, p->n, &p->cap, sizeof *v, 64);
    if (!v) return -1;
    p->v = v;
    p->v[p->n++] = (part_t){a, b, m};
    return 0;
}

/* Split [a, b) of text by re with the given behaviour, appending to out. */
static int split_span(const tok_pre_t *pre, const char *text, uint32_t a, uint32_t b,
                      pcre2_match_data *md, parts_t *parts, tok_spans_t *out) {
    parts->n = 0;
    PCRE2_SPTR subj = (PCRE2_SPTR)(text + a);
    PCRE2_SIZE len = b - a, pos = 0, prev = 0;
    while (pos <= len) {
        int rc = pcre2_match(pre->re, subj, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break; /* the rest is a gap */
        if (rc < 0) return -1;                /* a match limit: fail, never guess */
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        PCRE2_SIZE ms = ov[0], me = ov[1];
        if (me == ms) { /* empty match: skip one character */
            if (ms >= len) break;
            pos = ms + 1;
            while (pos < len && (subj[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (ms > prev && parts_push(parts, a + (uint32_t)prev, a + (uint32_t)ms, 0)) return -1;
        if (parts_push(parts, a + (uint32_t)ms, a + (uint32_t)me, 1)) return -1;
        prev = pos = me;
    }
    if (prev < len && parts_push(parts, a + (uint32_t)prev, b, 0)) return -1;
    if (pre->invert)
        for (size_t i = 0; i < parts->n; i++) parts->v[i].m = !parts->v[i].m;

    size_t first = out->n;
    switch (pre->behavior) {
    case TOK_SPLIT_ISOLATED:
        for (size_t i = 0; i < parts->n; i++)
            if (tok_spans_push(out, parts->v[i].a, parts->v[i].b)) return -1;
        break;
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < parts->n; i++)
            if (!parts->v[i].m && tok_spans_push(out, parts->v[i].a, parts->v[i].b)) return -1;
        break;
    case TOK_SPLIT_MERGED_PREV: {
        int prev_m = 0;
        for (size_t i = 0; i < parts->n; i++) {
            if (parts->v[i].m && !prev_m && out->n > first) out->v[out->n - 1].end = parts->v[i].b;
            else if (tok_spans_push(out, parts->v[i].a, parts->v[i].b)) return -1;
            prev_m = parts->v[i].m;
        }
        break;
    }
    case TOK_SPLIT_MERGED_NEXT: {
        int prev_m = 0;
        for (size_t j = parts->n; j-- > 0;) {
            if (parts->v[j].m && !prev_m && out->n > first) out->v[out->n - 1].start = parts->v[j].a;
            else if (tok_spans_push(out, parts->v[j].a, parts->v[j].b)) return -1;
            prev_m = parts->v[j].m;
        }
        /* built back to front: reverse */
        for (size_t i = first, j = out->n - 1; i < j; i++, j--) {
            tok_span_t tmp = out->v[i];
            out->v[i] = out->v[j];
            out->v[j] = tmp;
        }
        break;
    }
    }
    return 0;
}

int tok_pre_uses_regex(const tok_t *t) {
    for (size_t i = t->n_pre && t->pre[0].fast ? 3 : 0; i < t->n_pre; i++)
        if (t->pre[i].re) return 1;
    return 0;
}

int tok_pretokenize(const tok_t *t, const char *text, size_t len, tok_spans_t *out,
                    pcre2_match_data *md) {
    out->n = 0;
    if (!len) return 0;
    size_t i0 = 0;
    if (t->n_pre && t->pre[0].fast) {
        if (tok_pre_ds3(text, len, out)) return -1;
        i0 = 3;
    } else if (tok_spans_push(out, 0, (uint32_t)len)) {
        return -1;
    }
    tok_spans_t tmp = {0};
    parts_t parts = {0};
    int rc = 0;
    for (size_t i = i0; i < t->n_pre; i++) {
        const tok_pre_t *pre = &t->pre[i];
        if (!pre->re) continue; /* ByteLevel without regex: mapping happens in BPE */
        tmp.n = 0;
        for (size_t j = 0; j < out->n; j++)
            if (split_span(pre, text, out->v[j].start, out->v[j].end, md, &parts, &tmp)) {
                rc = -1;
                goto done;
            }
        tok_spans_t sw = *out;
        *out = tmp;
        tmp = sw;
    }
done:
    free(tmp.v);
    free(parts.v);
    return rc;
}
