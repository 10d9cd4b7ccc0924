/* tok_encode.c — text -> ids: validate UTF-8 once, cut the text at added
 * tokens (leftmost-longest, as Hugging Face's AddedVocabulary does) when the
 * caller allows them, pre-tokenize each remaining segment and BPE each piece. */
#include <stdlib.h>
#include <string.h>

#include "tok-int.h"

static int is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Longest added token of the trie at root starting at s[0..n); returns its
 * index or -1, and its length in mlen. */
static int32_t added_match(const tok_t *t, int32_t root, const uint8_t *s, size_t n, size_t *mlen) {
    int32_t node = root, best = -1;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->trie[node].child;
        while (c >= 0 && t->trie[c].byte != s[i]) c = t->trie[c].sibling;
        if (c < 0) break;
        node = c;
        if (t->trie[node].added >= 0) {
            best = t->trie[node].added;
            *mlen = i + 1;
        }
    }
    return best;
}

static int encode_segment(const tok_t *t, const char *s, size_t n, tok_out_t *out,
                          tok_spans_t *spans, pcre2_match_data *md) {
    if (!n) return 0;
    char *tmp = NULL;
    if (t->n_pre && t->pre[0].kind == TOK_PRE_BYTELEVEL && t->pre[0].add_prefix_space && s[0] != ' ') {
        tmp = malloc(n + 1);
        if (!tmp) return -1;
        tmp[0] = ' ';
        memcpy(tmp + 1, s, n);
        s = tmp;
        n++;
    }
    int rc = tok_pretokenize(t, s, n, spans, md);
    for (size_t i = 0; rc == 0 && i < spans->n; i++)
        rc = tok_bpe_piece(t, (const uint8_t *)s + spans->v[i].start,
                           spans->v[i].end - spans->v[i].start, out);
    free(tmp);
    return rc;
}

typedef struct {
    tok_out_t *out;
    tok_spans_t spans;
    pcre2_match_data *md;
    int allow; /* match added tokens */
} enc_ctx_t;

static int normalized(const tok_t *t, const char *s, size_t n, enc_ctx_t *c);

/* Cut text[0..len) at the added tokens of trie `root` (leftmost-longest);
 * the text between them goes to the next level: root 0 (tokens matched on the
 * raw text) hands its gaps to root 1 (tokens matched on the normalized text),
 * which hands its gaps to the pre-tokenizer and BPE. */
static int split_added(const tok_t *t, int32_t root, const char *text, size_t len, enc_ctx_t *c) {
    const uint8_t *p = (const uint8_t *)text;
    size_t seg = 0, i = 0;
    int one = t->added_one[root];
    while (i < len) {
        if (one >= 0) { /* the only first byte: the next candidate at once */
            const uint8_t *q = memchr(p + i, one, len - i);
            if (!q) break;
            i = (size_t)(q - p);
        } else if (!t->added_first[root][p[i]]) {
            i++;
            continue;
        }
        size_t ml = 0;
        int32_t a = added_match(t, root, p + i, len - i, &ml);
        if (a < 0) {
            i++;
            continue;
        }
        const tok_added_t *ad = &t->added[a];
        size_t ms = i, me = i + ml;
        if (ad->lstrip) /* swallow whitespace before the token */
            while (ms > seg) {
                size_t k = ms - 1;
                while (k > seg && (p[k] & 0xC0) == 0x80) k--;
                uint32_t cp;
                tg_utf8_next(p + k, &cp);
                if (!is_ws(cp)) break;
                ms = k;
            }
        if (ad->rstrip)
            while (me < len) {
                uint32_t cp;
                int l = tg_utf8_next(p + me, &cp);
                if (!is_ws(cp)) break;
                me += (size_t)l;
            }
        int rc = root == 0 ? normalized(t, text + seg, ms - seg, c)
                           : encode_segment(t, text + seg, ms - seg, c->out, &c->spans, c->md);
        if (rc || tok_out_push(c->out, ad->id)) return -1;
        seg = i = me;
    }
    return root == 0 ? normalized(t, text + seg, len - seg, c)
                     : encode_segment(t, text + seg, len - seg, c->out, &c->spans, c->md);
}

/* Normalize a piece between raw-matched added tokens, then match the
 * normalized added tokens in it (or, without special tokens, encode it). */
static int normalized(const tok_t *t, const char *s, size_t n, enc_ctx_t *c) {
    char *nf = NULL;
    size_t nn = 0;
    if (t->nfc) {
        int r = tok_nfc(s, n, &nf, &nn);
        if (r < 0) return -1;
        if (r > 0) s = nf, n = nn;
    }
    int rc = c->allow ? split_added(t, 1, s, n, c) : encode_segment(t, s, n, c->out, &c->spans, c->md);
    free(nf);
    return rc;
}

static int encode_all(const tok_t *t, const char *text, size_t len, int allow_special, tok_out_t *out) {
    if (!text && len) return -1;
    if (len >= UINT32_MAX || !tg_utf8_valid(text, len)) return -1;
    /* match data only for a pre-tokenizer that runs a regex (not DeepSeek-V3's
     * hand-written one): an allocation and its free per text otherwise */
    enc_ctx_t c = {out, {0}, NULL, allow_special && t->n_added};
    if (tok_pre_uses_regex(t) && !(c.md = pcre2_match_data_create(1, NULL))) return -1;
    int rc = c.allow ? split_added(t, 0, text, len, &c) : normalized(t, text, len, &c);
    free(c.spans.v);
    if (c.md) pcre2_match_data_free(c.md);
    return rc;
}

long tok_encode(const tok_t *t, const char *text, size_t len, int allow_special, int32_t **ids) {
    tok_out_t out = {0};
    size_t cap = len / 3 + 16;
    out.ids = malloc(cap * sizeof *out.ids);
    if (!out.ids) return -1;
    out.cap = cap;
    if (encode_all(t, text, len, allow_special, &out)) {
        free(out.ids);
        *ids = NULL;
        return -1;
    }
    *ids = out.ids;
    return (long)out.n;
}

long tok_count(const tok_t *t, const char *text, size_t len, int allow_special) {
    tok_out_t out = {0};
    if (encode_all(t, text, len, allow_special, &out)) return -1;
    return (long)out.n;
}

long tok_count_first(const tok_t *t, const char *text, size_t len, int allow_special, int32_t *first, size_t cap) {
    tok_out_t out = {first, 0, cap, 1};
    if (!first || !cap) out.ids = NULL, out.cap = 0; /* the count alone */
    if (encode_all(t, text, len, allow_special, &out)) return -1;
    return (long)out.n;
}
