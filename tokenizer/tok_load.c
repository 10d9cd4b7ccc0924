/* tok_load.c — read a Hugging Face tokenizer.json of the byte-level BPE kind
 * into an immutable tok_t: vocab (by bytes), merges (by pair of ids, with
 * rank), added tokens (a trie for leftmost-longest matching), the
 * pre-tokenizer chain (PCRE2, with the DeepSeek-V3 chain on a hand-written
 * fast path) and the id -> bytes table used by decode.  Anything this code
 * cannot reproduce exactly (normalizers, other models, other decoders) is
 * refused with a message naming it. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg_err.h"
#include "tg_file.h"
#include "tg_grow.h"
#include "tok-int.h"

/* GPT-2 bytes_to_unicode: printable bytes map to themselves, the rest to
 * 256 + k in byte order. */
const uint16_t tok_b2u[256] = {
    256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271,
    272, 273, 274, 275, 276, 277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287,
    288, 33,  34,  35,  36,  37,  38,  39,  40,  41,  42,  43,  44,  45,  46,  47,
    48,  49,  50,  51,  52,  53,  54,  55,  56,  57,  58,  59,  60,  61,  62,  63,
    64,  65,  66,  67,  68,  69,  70,  71,  72,  73,  74,  75,  76,  77,  78,  79,
    80,  81,  82,  83,  84,  85,  86,  87,  88,  89,  90,  91,  92,  93,  94,  95,
    96,  97,  98,  99,  100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 289,
    290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 300, 301, 302, 303, 304, 305,
    306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321,
    322, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 323, 174, 175,
    176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191,
    192, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 204, 205, 206, 207,
    208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223,
    224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239,
    240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255,
};

int tok_u2b(uint32_t cp) {
    if (cp >= 256 && cp <= 323) {
        /* the k-th non-printable byte */
        static int16_t inv[68];
        static int ready;
        if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
            int16_t tmp[68];
            for (int b = 0; b < 256; b++)
                if (tok_b2u[b] >= 256) tmp[tok_b2u[b] - 256] = (int16_t)b;
            memcpy(inv, tmp, sizeof inv);
            __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
        }
        return inv[cp - 256];
    }
    if (cp < 256 && tok_b2u[cp] == cp) return (int)cp;
    return -1;
}

/* Byte-level token string -> raw bytes written to dst (capacity >= strlen(s)).
 * Returns the byte count, or -1 when some character is not byte-level. */
static long bytelevel_to_bytes(const char *s, size_t n, char *dst) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint8_t c = (uint8_t)s[i];
        if (c >= 33 && c <= 126) { /* printable ASCII stands for itself */
            dst[o++] = (char)c;
            i++;
            continue;
        }
        size_t bad;
        int l = tg_utf8_seq((const uint8_t *)s + i, n - i, &bad);
        if (l <= 0) return -1;
        uint32_t cp;
        tg_utf8_next((const uint8_t *)s + i, &cp);
        int b = tok_u2b(cp);
        if (b < 0) return -1;
        dst[o++] = (char)b;
        i += (size_t)l;
    }
    return (long)o;
}

int32_t tok_vocab_find(const tok_t *t, const char *s, size_t n) {
    uint32_t h = tok_hash(s, n);
    for (uint32_t i = h & t->vmask;; i = (i + 1) & t->vmask) {
        const tok_slot_t *e = &t->vslots[i];
        if (e->id < 0) return -1;
        if (e->hash == h && e->len == n && !memcmp(t->text + e->off, s, n)) return e->id;
    }
}

static void vocab_insert(tok_t *t, int32_t id) {
    const char *s = t->text + t->off[id];
    size_t n = t->off[id + 1] - t->off[id];
    uint32_t h = tok_hash(s, n);
    uint32_t i = h & t->vmask;
    while (t->vslots[i].id >= 0) i = (i + 1) & t->vmask;
    t->vslots[i].hash = h;
    t->vslots[i].id = id;
    t->vslots[i].off = t->off[id];
    t->vslots[i].len = (uint32_t)n;
}

static inline uint32_t pair_hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

static void pair_insert(tok_t *t, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint32_t i = pair_hash(k) & t->pmask;; i = (i + 1) & t->pmask) {
        if (t->pairs[i].key == UINT64_MAX) {
            t->pairs[i].key = k;
            t->pairs[i].rank = rank;
            t->pairs[i].merged = merged;
            return;
        }
        if (t->pairs[i].key == k) return; /* duplicate merge: the first (lowest rank) wins */
    }
}

static uint32_t pow2_at_least(size_t n) {
    uint32_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

/* ---- regex translation ------------------------------------------------------ */

/* Oniguruma's \s: 0009-000D, 0085, and the Zs, Zl, Zp categories. */
#define TOK_WS_CLASS "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

/* Rewrite \s and \S so PCRE2 agrees with Oniguruma (PCRE2's \s also matches
 * U+180E).  Returns malloc'd pattern or NULL. */
static char *regex_translate(const char *p) {
    size_t n = strlen(p);
    char *o = malloc(n * 64 + 1);
    if (!o) return NULL;
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            if (d == 's') {
                k += (size_t)sprintf(o + k, in_class ? "%s" : "[%s]", TOK_WS_CLASS);
                i++;
                continue;
            }
            if (d == 'S' && !in_class) {
                k += (size_t)sprintf(o + k, "[^%s]", TOK_WS_CLASS);
                i++;
                continue;
            }
            o[k++] = c;
            o[k++] = d;
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[k++] = c;
            /* a ']' right after '[' or '[^' is literal */
            if (i + 1 < n && p[i + 1] == '^') o[k++] = p[++i];
            if (i + 1 < n && p[i + 1] == ']') o[k++] = p[++i];
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        o[k++] = c;
    }
    o[k] = 0;
    return o;
}

/* The DeepSeek-V3 pre-tokenizer patterns, recognised to use the fast path. */
static const char *const ds3_patterns[3] = {
    "\\p{N}{1,3}",
    "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
    ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
     " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
};

static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static pcre2_code *regex_compile(const char *pat, int literal, char *err, size_t errlen,
                                 const char *path) {
    char *tr = literal ? NULL : regex_translate(pat);
    if (!literal && !tr) return NULL;
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(literal ? pat : tr), PCRE2_ZERO_TERMINATED, opts,
                                   &ec, &eo, NULL);
    free(tr);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        tg_errf(err, errlen, "%s: pre-tokenizer regex not supported (%s at %zu): %s", path,
             (char *)msg, (size_t)eo, pat);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if no JIT */
    return re;
}

static int pre_add(tok_t *t, size_t *cap, tok_pre_t p) {
    tok_pre_t *v = tg_grow(t->pre, t->n_pre, cap, sizeof *v, 4);
    if (!v) return -1;
    t->pre = v;
    t->pre[t->n_pre++] = p;
    return 0;
}

static int is_true(const cJSON *j) { return cJSON_IsTrue(j); }

/* Parse one pre-tokenizer object; returns 0, or -1 with err set. */
static int pre_parse(tok_t *t, size_t *cap, const cJSON *p, int *saw_bytelevel, char *err,
                     size_t errlen, const char *path) {
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "type"));
    if (!type) {
        tg_errf(err, errlen, "%s: pre_tokenizer without a type", path);
        return -1;
    }
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(arr)) {
            tg_errf(err, errlen, "%s: Sequence pre_tokenizer without pretokenizers", path);
            return -1;
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) if (pre_parse(t, cap, e, saw_bytelevel, err, errlen, path)) return -1;
        return 0;
    }
    tok_pre_t pre = {0};
    if (!strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *rx = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(pat, "Regex"));
        const char *lit = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(pat, "String"));
        const char *beh = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "behavior"));
        if ((!rx && !lit) || !beh) {
            tg_errf(err, errlen, "%s: Split pre_tokenizer needs pattern and behavior", path);
            return -1;
        }
        if (!strcmp(beh, "Isolated")) pre.behavior = TOK_SPLIT_ISOLATED;
        else if (!strcmp(beh, "Removed")) pre.behavior = TOK_SPLIT_REMOVED;
        else if (!strcmp(beh, "MergedWithPrevious")) pre.behavior = TOK_SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) pre.behavior = TOK_SPLIT_MERGED_NEXT;
        else {
            tg_errf(err, errlen, "%s: Split behavior '%s' is not supported", path, beh);
            return -1;
        }
        pre.kind = TOK_PRE_SPLIT;
        pre.invert = is_true(cJSON_GetObjectItemCaseSensitive(p, "invert"));
        pre.re = regex_compile(rx ? rx : lit, !rx, err, errlen, path);
        if (!pre.re) return -1;
    } else if (!strcmp(type, "ByteLevel")) {
        pre.kind = TOK_PRE_BYTELEVEL;
        pre.add_prefix_space = is_true(cJSON_GetObjectItemCaseSensitive(p, "add_prefix_space"));
        const cJSON *ur = cJSON_GetObjectItemCaseSensitive(p, "use_regex");
        if (!ur || is_true(ur)) {
            pre.re = regex_compile(gpt2_pattern, 0, err, errlen, path);
            if (!pre.re) return -1;
        }
        *saw_bytelevel = 1;
    } else if (!strcmp(type, "Digits")) { /* each digit alone, or runs of digits (char::is_numeric) */
        pre.kind = TOK_PRE_SPLIT;
        pre.behavior = TOK_SPLIT_ISOLATED;
        int each = is_true(cJSON_GetObjectItemCaseSensitive(p, "individual_digits"));
        pre.re = regex_compile(each ? "\\p{N}" : "\\p{N}+", 0, err, errlen, path);
        if (!pre.re) return -1;
    } else {
        tg_errf(err, errlen, "%s: pre_tokenizer type '%s' is not supported (only Sequence, Split, Digits, ByteLevel)",
             path, type);
        return -1;
    }
    if (pre_add(t, cap, pre)) {
        pcre2_code_free(pre.re);
        tg_errf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    return 0;
}

/* Mark the DeepSeek-V3 Split chain for the hand-written fast path when the
 * first three pre-tokenizers are exactly its patterns. */
static void pre_detect_fast(tok_t *t, const cJSON *root) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
    if (t->n_pre != 4 || cJSON_GetArraySize(arr) != 4) return;
    for (int i = 0; i < 3; i++) {
        const cJSON *e = cJSON_GetArrayItem(arr, i);
        const char *rx = cJSON_GetStringValue(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(e, "pattern"), "Regex"));
        if (!rx || strcmp(rx, ds3_patterns[i]) || t->pre[i].behavior != TOK_SPLIT_ISOLATED ||
            t->pre[i].invert)
            return;
    }
    if (t->pre[3].kind != TOK_PRE_BYTELEVEL || t->pre[3].re || t->pre[3].add_prefix_space) return;
    if (getenv("TOK_NO_FAST")) return; /* for comparing the two paths */
    t->pre[0].fast = 1;
}

/* ---- added tokens ------------------------------------------------------------ */

static int trie_build(tok_t *t) {
    size_t cap = 64;
    t->trie = malloc(cap * sizeof *t->trie);
    if (!t->trie) return -1;
    t->trie[0] = (tok_trie_node_t){-1, -1, -1, 0};
    t->trie[1] = (tok_trie_node_t){-1, -1, -1, 0};
    t->n_trie = 2;
    for (size_t a = 0; a < t->n_added; a++) {
        const tok_added_t *ad = &t->added[a];
        if (!ad->len) continue;
        t->added_first[ad->normalized][(uint8_t)ad->content[0]] = 1;
        int32_t node = ad->normalized;
        for (size_t i = 0; i < ad->len; i++) {
            uint8_t b = (uint8_t)ad->content[i];
            int32_t c = t->trie[node].child;
            while (c >= 0 && t->trie[c].byte != b) c = t->trie[c].sibling;
            if (c < 0) {
                tok_trie_node_t *v = tg_grow(t->trie, t->n_trie, &cap, sizeof *v, 64);
                if (!v) return -1;
                t->trie = v;
                c = (int32_t)t->n_trie++;
                t->trie[c] = (tok_trie_node_t){-1, t->trie[node].child, -1, b};
                t->trie[node].child = c;
            }
            node = c;
        }
        if (t->trie[node].added < 0) t->trie[node].added = (int32_t)a;
    }
    for (int r = 0; r < 2; r++) {
        int n = 0;
        t->added_one[r] = -1;
        for (int b = 0; b < 256; b++)
            if (t->added_first[r][b]) n++, t->added_one[r] = b;
        if (n != 1) t->added_one[r] = -1;
    }
    t->mem_bytes += cap * sizeof *t->trie;
    return 0;
}

static int32_t added_find(const tok_t *t, const char *s) {
    for (size_t i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].content, s)) return t->added[i].id;
    return -1;
}

/* bos/eos from tokenizer_config.json beside the tokenizer, else by name. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "content"));
}

static void special_ids(tok_t *t, const char *path) {
    t->bos = t->eos = -1;
    char cfgpath[4096];
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path + 1) : 0;
    snprintf(cfgpath, sizeof cfgpath, "%.*stokenizer_config.json", dl, path);
    size_t n;
    char *buf = tg_file_read(cfgpath, 0, &n);
    if (buf) {
        cJSON *cfg = cJSON_ParseWithLength(buf, n);
        if (cfg) {
            const char *b = config_token(cfg, "bos_token"), *e = config_token(cfg, "eos_token");
            if (b) t->bos = tok_id(t, b);
            if (e) t->eos = tok_id(t, e);
            cJSON_Delete(cfg);
        }
        free(buf);
    }
    static const char *bos_names[] = {("<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"),
                                      "<|begin_of_text|>", "<s>"};
    static const char *eos_names[] = {("<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"),
                                      "<|end_of_text|>", "<|endoftext|>", "</s>"};
    for (size_t i = 0; t->bos < 0 && i < sizeof bos_names / sizeof *bos_names; i++)
        t->bos = added_find(t, bos_names[i]);
    for (size_t i = 0; t->eos < 0 && i < sizeof eos_names / sizeof *eos_names; i++)
        t->eos = added_find(t, eos_names[i]);
}

/* ---- the loader ---------------------------------------------------------------- */

typedef struct {
    const char *s; /* token text as in the file */
    size_t n;
    int32_t id;
} raw_tok_t;

static int check_model(const cJSON *model, char *err, size_t errlen, const char *path) {
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(model, "type"));
    if (type && strcmp(type, "BPE")) {
        tg_errf(err, errlen, "%s: model type '%s' is not supported (only byte-level BPE)", path, type);
        return -1;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0)) {
        tg_errf(err, errlen, "%s: BPE dropout is not supported", path);
        return -1;
    }
    static const char *const nullish[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        v = cJSON_GetObjectItemCaseSensitive(model, nullish[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0])) {
            tg_errf(err, errlen, "%s: BPE %s is not supported", path, nullish[i]);
            return -1;
        }
    }
    if (is_true(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"))) {
        tg_errf(err, errlen, "%s: BPE byte_fallback (sentencepiece style) is not supported", path);
        return -1;
    }
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(model, "vocab")) ||
        !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(model, "merges"))) {
        tg_errf(err, errlen, "%s: BPE model needs a vocab object and a merges array", path);
        return -1;
    }
    return 0;
}

/* 0: no normalizer, 1: NFC, -1: refused (err set). */
static int check_normalizer(const cJSON *root, char *err, size_t errlen, const char *path) {
    const cJSON *nz = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (!nz || cJSON_IsNull(nz)) return 0;
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(nz, "type"));
    if (type && !strcmp(type, "NFC")) return 1;
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(nz, "normalizers");
        int n = cJSON_GetArraySize(arr);
        if (cJSON_IsArray(arr) && n == 0) return 0;
        const char *t0 = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, 0), "type"));
        if (n == 1 && t0 && !strcmp(t0, "NFC")) return 1;
        if (t0) type = t0;
    }
    tg_errf(err, errlen, "%s: normalizer '%s' is not supported (none or NFC only)", path, type ? type : "?");
    return -1;
}

static int check_decoder(const cJSON *root, char *err, size_t errlen, const char *path) {
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (!d || cJSON_IsNull(d)) return 0;
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "type"));
    if (type && !strcmp(type, "ByteLevel")) return 0;
    tg_errf(err, errlen, "%s: decoder '%s' is not supported (only ByteLevel)", path, type ? type : "?");
    return -1;
}

tok_t *tok_load(const char *path, char *err, size_t errlen) {
    size_t flen = 0;
    char *buf = tg_file_read(path, 0, &flen);
    if (!buf) {
        tg_errf(err, errlen, "%s: %s", path, strerror(errno ? errno : EIO));
        return NULL;
    }
    tok_json_t js;
    int jrc = tok_json_read(buf, flen, &js);
    free(buf);
    cJSON *root = js.root;
    tok_t *t = NULL;
    raw_tok_t *raw = NULL;
    if (jrc || !cJSON_IsObject(root)) {
        tg_errf(err, errlen, "%s: not valid JSON (or a vocab/merges entry of the wrong shape)", path);
        goto fail;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        tg_errf(err, errlen, "%s: no model object", path);
        goto fail;
    }
    if (!js.has_vocab || !js.has_merges) {
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(model, "type"));
        if (type && strcmp(type, "BPE"))
            tg_errf(err, errlen, "%s: model type '%s' is not supported (only byte-level BPE)", path, type);
        else
            tg_errf(err, errlen, "%s: BPE model needs a vocab object and a merges array", path);
        goto fail;
    }
    int nfc = check_normalizer(root, err, errlen, path);
    if (check_model(model, err, errlen, path) || nfc < 0 || check_decoder(root, err, errlen, path))
        goto fail;
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    if (pp && !cJSON_IsNull(pp)) {
        const char *ty = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(pp, "type"));
        /* ByteLevel post-processing only trims offsets; TemplateProcessing
         * only adds BOS/EOS, which tok_encode never adds. */
        if (!ty || (strcmp(ty, "ByteLevel") && strcmp(ty, "TemplateProcessing") &&
                    strcmp(ty, "Sequence"))) {
            tg_errf(err, errlen, "%s: post_processor '%s' is not supported", path, ty ? ty : "?");
            goto fail;
        }
    }

    t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->mem_bytes = sizeof *t;
    t->nfc = nfc;
    static uint64_t serial_next;
    t->serial = __atomic_add_fetch(&serial_next, 1, __ATOMIC_RELAXED);

    /* pre-tokenizer chain */
    int saw_bl = 0;
    size_t pcap = 0;
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (pre && !cJSON_IsNull(pre) && pre_parse(t, &pcap, pre, &saw_bl, err, errlen, path)) goto fail;
    if (!saw_bl) {
        tg_errf(err, errlen, "%s: no ByteLevel pre_tokenizer: only byte-level BPE tokenizers are supported",
             path);
        goto fail;
    }
    for (size_t i = 1; i < t->n_pre; i++)
        if (t->pre[i].kind == TOK_PRE_BYTELEVEL && t->pre[i].add_prefix_space) {
            tg_errf(err, errlen, "%s: ByteLevel add_prefix_space after another pre-tokenizer is not supported",
                 path);
            goto fail;
        }
    pre_detect_fast(t, root);
    t->ignore_merges = is_true(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));

    /* collect vocab + added tokens, find the id range */
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    size_t nv = js.n_vocab, na = cJSON_IsArray(added) ? (size_t)cJSON_GetArraySize(added) : 0;
    raw = malloc((nv + 1) * sizeof *raw);
    t->added = calloc(na + 1, sizeof *t->added);
    if (!raw || !t->added) goto oom;
    int64_t maxid = -1;
    size_t k = 0;
    const cJSON *e;
    for (size_t i = 0; i < nv; i++) {
        raw[k].s = js.arena + js.vocab[i].off;
        raw[k].n = js.vocab[i].len;
        raw[k].id = js.vocab[i].id;
        if (raw[k].id > maxid) maxid = raw[k].id;
        k++;
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *idj = cJSON_GetObjectItemCaseSensitive(e, "id");
        const char *c = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "content"));
        if (!cJSON_IsNumber(idj) || idj->valuedouble < 0 || idj->valuedouble > 16777216 || !c) {
            tg_errf(err, errlen, "%s: added token without id or content", path);
            goto fail;
        }
        tok_added_t *ad = &t->added[t->n_added++];
        ad->id = (int32_t)idj->valuedouble;
        ad->len = strlen(c);
        ad->content = strdup(c);
        if (!ad->content) goto oom;
        t->mem_bytes += ad->len + 1 + sizeof *ad;
        ad->special = is_true(cJSON_GetObjectItemCaseSensitive(e, "special"));
        ad->lstrip = is_true(cJSON_GetObjectItemCaseSensitive(e, "lstrip"));
        ad->rstrip = is_true(cJSON_GetObjectItemCaseSensitive(e, "rstrip"));
        ad->single_word = is_true(cJSON_GetObjectItemCaseSensitive(e, "single_word"));
        const cJSON *nz = cJSON_GetObjectItemCaseSensitive(e, "normalized");
        ad->normalized = nz ? (uint8_t)is_true(nz) : (uint8_t)!ad->special; /* HF's default */
        if (ad->single_word) {
            tg_errf(err, errlen, "%s: added token with single_word is not supported", path);
            goto fail;
        }
        if (ad->id > maxid) maxid = ad->id;
    }
    if (maxid < 0) {
        tg_errf(err, errlen, "%s: empty vocab", path);
        goto fail;
    }
    t->n_vocab = (int32_t)(maxid + 1);

    /* id -> bytes: vocab entries decoded from byte-level; added tokens as their text */
    size_t textcap = 0;
    for (size_t i = 0; i < k; i++) textcap += raw[i].n;
    for (size_t i = 0; i < t->n_added; i++) textcap += t->added[i].len;
    char *text = malloc(textcap + 1);
    uint32_t *len = calloc((size_t)t->n_vocab + 1, sizeof *len);
    t->off = calloc((size_t)t->n_vocab + 1, sizeof *t->off);
    t->is_special = calloc((size_t)t->n_vocab, 1);
    t->is_added = calloc((size_t)t->n_vocab, 1);
    char **where = calloc((size_t)t->n_vocab, sizeof *where);
    if (!text || !len || !t->off || !t->is_special || !t->is_added || !where) {
        free(text), free(len), free(where);
        goto oom;
    }
    /* decode into a scratch area first, then lay out by id */
    char *scratch = malloc(textcap + 1);
    if (!scratch) {
        free(text), free(len), free(where);
        goto oom;
    }
    size_t so = 0;
    for (size_t i = 0; i < k; i++) {
        long bl = bytelevel_to_bytes(raw[i].s, raw[i].n, scratch + so);
        if (bl < 0) { /* not byte-level text: the decoder keeps it as it is */
            memcpy(scratch + so, raw[i].s, raw[i].n);
            bl = (long)raw[i].n;
        }
        where[raw[i].id] = scratch + so;
        len[raw[i].id] = (uint32_t)bl;
        so += (size_t)bl;
    }
    for (size_t i = 0; i < t->n_added; i++) {
        tok_added_t *ad = &t->added[i];
        /* the ByteLevel decoder also runs over added tokens: when all their
         * characters are byte-level ones, they decode to those bytes */
        long bl = bytelevel_to_bytes(ad->content, ad->len, scratch + so);
        if (bl < 0) {
            memcpy(scratch + so, ad->content, ad->len);
            bl = (long)ad->len;
        }
        where[ad->id] = scratch + so;
        len[ad->id] = (uint32_t)bl;
        so += (size_t)bl;
        t->is_added[ad->id] = 1;
        if (ad->special) t->is_special[ad->id] = 1;
    }
    uint32_t o = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->off[id] = o;
        if (where[id]) memcpy(text + o, where[id], len[id]);
        o += len[id];
    }
    t->off[t->n_vocab] = o;
    t->text = text;
    free(scratch), free(len), free(where);
    t->mem_bytes += textcap + ((size_t)t->n_vocab + 1) * sizeof *t->off + 2 * (size_t)t->n_vocab;

    /* vocab hash: model vocab ids only (added-only ids are matched by the trie) */
    t->vmask = pow2_at_least(k * 2) - 1;
    t->vslots = malloc(((size_t)t->vmask + 1) * sizeof *t->vslots);
    if (!t->vslots) goto oom;
    for (uint32_t i = 0; i <= t->vmask; i++) t->vslots[i].id = -1;
    t->mem_bytes += ((size_t)t->vmask + 1) * sizeof *t->vslots;
    /* duplicates (two entries with the same bytes) need no check: a lookup
     * meets the first one inserted first, as a check would keep it */
    for (size_t i = 0; i < k; i++) vocab_insert(t, raw[i].id);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = tok_vocab_find(t, &c, 1);
    }

    /* merges */
    size_t nm = js.n_merges;
    t->pmask = pow2_at_least(nm * 2 + 2) - 1;
    t->pairs = malloc(((size_t)t->pmask + 1) * sizeof *t->pairs);
    if (!t->pairs) goto oom;
    for (uint32_t i = 0; i <= t->pmask; i++) t->pairs[i].key = UINT64_MAX;
    t->mem_bytes += ((size_t)t->pmask + 1) * sizeof *t->pairs;
    {
        char tmp[1024];
        for (size_t rank = 0; rank < nm; rank++) {
            const tok_json_merge_t *m = &js.merges[rank];
            if (!m->a_len || !m->b_len) {
                tg_errf(err, errlen, "%s: merge %zu is malformed", path, rank);
                goto fail;
            }
            if ((size_t)m->a_len + m->b_len > sizeof tmp) {
                tg_errf(err, errlen, "%s: merge %zu is too long", path, rank);
                goto fail;
            }
            long la = bytelevel_to_bytes(js.arena + m->a_off, m->a_len, tmp);
            long lb = la > 0 ? bytelevel_to_bytes(js.arena + m->b_off, m->b_len, tmp + la) : -1;
            if (la <= 0 || lb <= 0) {
                tg_errf(err, errlen, "%s: merge %zu is not byte-level text", path, rank);
                goto fail;
            }
            int32_t ia = tok_vocab_find(t, tmp, (size_t)la), ib = tok_vocab_find(t, tmp + la, (size_t)lb);
            int32_t im = tok_vocab_find(t, tmp, (size_t)(la + lb));
            if (ia < 0 || ib < 0 || im < 0) {
                tg_errf(err, errlen, "%s: merge %zu refers to a token missing from the vocab", path, rank);
                goto fail;
            }
            pair_insert(t, ia, ib, (int32_t)rank, im);
        }
    }

    if (trie_build(t)) goto oom;
    special_ids(t, path);
    free(raw);
    tok_json_free(&js);
    return t;

oom:
    tg_errf(err, errlen, "%s: out of memory", path);
fail:
    free(raw);
    tok_free(t);
    tok_json_free(&js);
    return NULL;
}

void tok_free(tok_t *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
    free(t->pre);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->trie);
    free(t->text);
    free(t->off);
    free(t->is_special);
    free(t->is_added);
    free(t->vslots);
    free(t->pairs);
    free(t);
}

int32_t tok_n_vocab(const tok_t *t) { return t->n_vocab; }
int32_t tok_bos(const tok_t *t) { return t->bos; }
int32_t tok_eos(const tok_t *t) { return t->eos; }

const char *tok_token_bytes(const tok_t *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    *len = t->off[id + 1] - t->off[id];
    return t->text + t->off[id];
}

int tok_is_added(const tok_t *t, int32_t id) { return id >= 0 && id < t->n_vocab && t->is_added[id]; }

int32_t tok_id(const tok_t *t, const char *token) {
    int32_t id = added_find(t, token);
    if (id >= 0) return id;
    size_t n = strlen(token);
    char *tmp = malloc(n + 1);
    if (!tmp) return -1;
    long bl = bytelevel_to_bytes(token, n, tmp);
    id = bl > 0 ? tok_vocab_find(t, tmp, (size_t)bl) : -1;
    free(tmp);
    return id;
}

size_t tok_mem(const tok_t *t) {
    size_t m = t->mem_bytes;
    for (size_t i = 0; i < t->n_pre; i++) {
        size_t sz = 0;
        if (t->pre[i].re) pcre2_pattern_info(t->pre[i].re, PCRE2_INFO_SIZE, &sz);
        m += sz + sizeof t->pre[i];
    }
    return m;
}
