/* tok-int.h — private structures of the tokenizer (not included outside
 * tokenizer/).  A tok_t is built once by tok_load and never written again, so
 * any number of threads may encode and decode with it at once. */
#ifndef TOK_INT_H
#define TOK_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "tg_grow.h"
#include "tok.h"

/* Split behaviours of a Hugging Face "Split" pre-tokenizer. */
enum tok_split_behavior {
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
};

enum tok_pre_kind {
    TOK_PRE_SPLIT,     /* a regex (or literal) split */
    TOK_PRE_BYTELEVEL, /* byte-level mapping, optionally with the GPT-2 regex */
};

typedef struct {
    enum tok_pre_kind kind;
    enum tok_split_behavior behavior;
    int invert;
    pcre2_code *re;    /* compiled with UTF|UCP|NO_UTF_CHECK use, JIT when available */
    int add_prefix_space;
    int fast;          /* 1: the DeepSeek-V3 split handled by tok_pre_ds3 (same result) */
} tok_pre_t;

/* One entry of an open-addressing byte-string table (vocab). */
typedef struct {
    uint32_t hash;
    int32_t id;   /* -1: empty */
    uint32_t off; /* the id's bytes: text + off, len bytes (saves one lookup) */
    uint32_t len;
} tok_slot_t;

/* Pair table: (left id, right id) -> merge rank and merged id. */
typedef struct {
    uint64_t key;  /* (uint64)left << 32 | right, UINT64_MAX: empty */
    int32_t rank;
    int32_t merged;
} tok_pair_t;

typedef struct {
    char *content;  /* UTF-8, NUL-terminated */
    size_t len;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
} tok_added_t;

/* Trie over the added tokens' bytes for leftmost-longest matching. */
typedef struct {
    int32_t child;   /* first child index, -1 none */
    int32_t sibling; /* next sibling, -1 none */
    int32_t added;   /* index into added[], -1 when no token ends here */
    uint8_t byte;
} tok_trie_node_t;

struct tok {
    int32_t n_vocab;       /* max id + 1 */
    /* id -> bytes the id stands for (decoded byte-level form; added tokens
     * as their content); tok_text + tok_off[id], length tok_off[id+1]-tok_off[id]. */
    char *text;
    uint32_t *off;
    uint8_t *is_special;   /* per id: 1 for special added tokens (skip_special) */
    uint8_t *is_added;     /* per id: 1 for added tokens */

    /* vocab: bytes -> id (model vocab only). */
    tok_slot_t *vslots;
    uint32_t vmask;

    tok_pair_t *pairs;
    uint32_t pmask;

    int32_t byte_id[256];  /* id of the single-byte token of each byte, -1 none */
    int ignore_merges;
    int nfc;               /* normalizer: NFC */

    tok_added_t *added;
    size_t n_added;
    /* node 0: root of the tokens matched on the raw text (normalized=false),
     * node 1: root of those matched on the normalized text (normalized=true),
     * in this order, as Hugging Face's AddedVocabulary does */
    tok_trie_node_t *trie;
    size_t n_trie;
    uint8_t added_first[2][256]; /* 1 when some token of that trie starts with this byte */
    int added_one[2];            /* that byte when it is the only one (memchr finds the
                                  * candidates: DeepSeek's all start with '<'), else -1 */

    tok_pre_t *pre;
    size_t n_pre;

    int32_t bos, eos;
    size_t mem_bytes; /* what tok_load allocated, for tok_mem */
    uint64_t serial;  /* unique per load: keys the per-thread word caches */
};

/* Hash of a byte string (FNV-1a variant). */
static inline uint32_t tok_hash(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

/* Vocab lookup of bytes; -1 when absent. */
int32_t tok_vocab_find(const tok_t *t, const char *s, size_t n);

/* The GPT-2 byte <-> unicode maps (byte b is written as code point tok_b2u[b]). */
extern const uint16_t tok_b2u[256];
/* Code point -> byte, -1 when the code point is not one of the 256. */
int tok_u2b(uint32_t cp);

/* UTF-8: tg_utf8_next, tg_utf8_seq, tg_utf8_put (common/tg_utf8.h). */
#include "tg_utf8.h"

/* ---- tokenizer.json reading (tok_json.c) ---------------------------------- */

#include <cjson/cJSON.h>

typedef struct {
    uint32_t off, len; /* in the arena */
    int32_t id;
} tok_json_str_t;

typedef struct {
    uint32_t a_off, a_len, b_off, b_len; /* b_len 0: malformed merge */
} tok_json_merge_t;

typedef struct {
    cJSON *root;            /* the file with model.vocab = {} and model.merges = [] */
    char *arena;            /* decoded strings of vocab and merges */
    tok_json_str_t *vocab;  /* in file order */
    size_t n_vocab;
    tok_json_merge_t *merges;
    size_t n_merges;
    int has_vocab, has_merges;
} tok_json_t;

/* Parse a tokenizer.json text; 0, or -1 when it is not valid JSON of the
 * expected shape (out is then empty). */
int tok_json_read(const char *buf, size_t len, tok_json_t *out);
void tok_json_free(tok_json_t *j);

/* ---- pre-tokenizer --------------------------------------------------------- */

/* A piece of text after pre-tokenization: [start, end) of the segment. */
typedef struct {
    uint32_t start, end;
} tok_span_t;

typedef struct {
    tok_span_t *v;
    size_t n, cap;
} tok_spans_t;

/* Pre-tokenize text[0..len) (valid UTF-8) into spans; returns 0, -1 on OOM. */
int tok_pretokenize(const tok_t *t, const char *text, size_t len, tok_spans_t *out,
                    pcre2_match_data *md);
/* Whether tok_pretokenize runs a regex (needs md); md may be NULL when not. */
int tok_pre_uses_regex(const tok_t *t);

/* The hand-written equivalent of DeepSeek-V3's three Split regexes. */
int tok_pre_ds3(const char *text, size_t len, tok_spans_t *out);

/* Append span; returns 0 or -1 on OOM.  Inline: the pre-tokenizers'
 * innermost append (tok_pretok.c and tok_pre_ds3.c both), and a file of its
 * own would hold five lines. */
static inline int tok_spans_push(tok_spans_t *s, uint32_t a, uint32_t b) {
    tok_span_t *v = tg_grow(s->v, s->n, &s->cap, sizeof *v, 64);
    if (!v) return -1;
    s->v = v;
    s->v[s->n++] = (tok_span_t){.start = a, .end = b};
    return 0;
}

/* NFC of s[0..n) (valid UTF-8): 0 when NFC leaves it unchanged (res NULL),
 * 1 with a malloc'd result in res (length in outlen), -1 out of memory. */
int tok_nfc(const char *s, size_t n, char **res, size_t *outlen);

/* ---- BPE ------------------------------------------------------------------- */

/* Sink for produced ids. */
typedef struct {
    int32_t *ids;   /* NULL: count only */
    size_t n, cap;
    int fixed;      /* ids holds cap slots and never grows: ids past them are counted only */
} tok_out_t;

int tok_out_push(tok_out_t *o, int32_t id);

/* BPE-encode one pre-tokenized piece (raw bytes). Returns 0, -1 on OOM. */
int tok_bpe_piece(const tok_t *t, const uint8_t *s, size_t n, tok_out_t *out);

#endif
