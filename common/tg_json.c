/* tg_json.c — strict RFC 8259 reader into a one-allocation DOM, and the
 * JSON string writer (see tg_json.h).
 *
 * One recursive-descent reader validates, counts and builds.  A document
 * that fits a scratch area on the stack (TG_JSON_SCRATCH bytes: its nodes
 * from the front, its strings and number texts in the last len + 1 bytes,
 * which they never exceed) is read once, built there, then copied into one
 * block of exactly its size and its pointers moved.  When the nodes outgrow
 * the scratch, the same pass goes on building nothing, only validating and
 * counting, and a second pass (which cannot fail) fills a block of exactly
 * the counted size.  The root is the first node of the block, so freeing
 * the root frees the document.  Recursion is bounded by max_depth.
 * Invariants of a built document: every string is valid UTF-8 (possibly
 * holding NUL) followed by a NUL; siblings are linked both ways. */
#include "tg_json.h"
#include "tg_utf8.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* stack bytes for a document read in one pass (its nodes and strings) */
#define TG_JSON_SCRATCH 16384

struct tg_json {
    tg_json_t *next, *prev;  /* siblings in the parent array/object */
    tg_json_t *child;        /* first element/member of a container */
    const char *key;         /* member name (decoded, NUL-terminated) or NULL */
    const char *s;           /* string bytes / number text, NUL-terminated */
    size_t key_len, len;     /* len: string/number length, or container count */
    size_t key_off, key_end; /* span of the quoted key in the source */
    size_t off, end;         /* span of the value in the source */
    unsigned char type, b;   /* tg_json_type_t; boolean value */
};

typedef struct {
    const unsigned char *start, *p, *end;
    int depth, max_depth;
    int build;               /* 0: validate and count; 1: also fill the block */
    size_t nodes, bytes;     /* counted whether building or not */
    tg_json_t *node_at;      /* cursors into the block (or the scratch) */
    tg_json_t *node_end;     /* building stops there (the scratch is full) */
    char *byte_at;
    const char *err;
    size_t err_off;
    /* tg_json_parse_member: the root object's member wanted, and where its
     * value is (the last one seen) */
    const char *want;
    size_t want_len;
    int found;
    size_t found_off, found_end;
    /* ... built in the same pass, in the scratch (nodes from its front, bytes
     * in the last len + 1 bytes of what is left of the text at the value's
     * start): mbuilt when the last one seen was built whole there */
    tg_json_t *scratch;
    size_t scratch_size;
    char *mbytes0;
    int mbuilt;
} tg_json_parser_t;

static int tg_fail(tg_json_parser_t *ps, const unsigned char *at, const char *msg) {
    if (!ps->err) {
        ps->err = msg;
        ps->err_off = (size_t)(at - ps->start);
    }
    return -1;
}

static inline __attribute__((always_inline)) void tg_skip_ws(tg_json_parser_t *ps) {
    if (ps->p < ps->end && *ps->p > ' ') return; /* compact JSON: most calls */
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static tg_json_t *tg_node(tg_json_parser_t *ps, int type, const unsigned char *at) {
    ps->nodes++;
    if (!ps->build) return NULL;
    if (ps->node_at == ps->node_end) { /* the scratch is full: go on counting */
        ps->build = 0;
        return NULL;
    }
    tg_json_t *v = ps->node_at++;
    memset(v, 0, sizeof *v);
    v->type = (unsigned char)type;
    v->off = (size_t)(at - ps->start);
    return v;
}

static int tg_hex4(const unsigned char *p) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when invalid
 * (overlong, surrogate, above U+10FFFF, truncated, stray continuation). */
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
    size_t bad;
    int n = tg_utf8_seq(p, (size_t)(end - p), &bad);
    return n > 0 ? (size_t)n : 0;
}

/* Nonzero when one of the 8 bytes in x may end a plain run: '"', '\\', a
 * control character or a non-ASCII byte.  Each term's lowest set bit marks a
 * byte that is one (a borrow only reaches bytes above a true one), so the
 * lowest set bit of the whole, read little-endian, is the first such byte. */
static inline uint64_t tg_special8(uint64_t x) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    return (x & high) | ((x - ones * 0x20) & ~x & high) | ((q - ones) & ~q & high) | ((b - ones) & ~b & high);
}

/* The index of the byte of the lowest set bit of m (m nonzero), the bytes
 * numbered in memory order. */
static inline size_t tg_first_byte(uint64_t m) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (size_t)__builtin_ctzll(m) / 8;
#else
    (void)m; /* big-endian: a borrow may mark a byte before the first; the byte loop finds it */
    return 0;
#endif
}

/* The first byte in [p, end) that ends a plain run of string text ('"',
 * '\\', a control character or a non-ASCII byte), or end: 8 bytes a step. */
static inline const unsigned char *tg_plain_run(const unsigned char *p, const unsigned char *end) {
    for (uint64_t x, m; end - p >= 8; p += 8) {
        memcpy(&x, p, 8);
        if ((m = tg_special8(x))) {
            p += tg_first_byte(m);
            break;
        }
    }
    while (p < end && *p >= 0x20 && *p != '"' && *p != '\\' && *p < 0x80) p++;
    return p;
}

/* A string at ps->p (on the opening quote).  When building, decodes into
 * ps->byte_at and sets *out / *out_len.  The decoded form is never longer
 * than the source, so the count reserves the source length plus the NUL. */
static int tg_string(tg_json_parser_t *ps, const char **out, size_t *out_len) {
    const unsigned char *q = ps->p, *p = q + 1, *end = ps->end;
    char *d = ps->build ? ps->byte_at : NULL, *d0 = d;
    for (;;) {
        const unsigned char *r = tg_plain_run(p, end);
        if (d) {
            memcpy(d, p, (size_t)(r - p));
            d += r - p;
        }
        p = r;
        if (p >= end) return tg_fail(ps, q, "unterminated string");
        unsigned c = *p;
        if (c == '"') break;
        if (c < 0x20) return tg_fail(ps, p, "control character in string");
        if (c >= 0x80) {
            size_t n = utf8_len(p, end);
            if (!n) return tg_fail(ps, p, "invalid UTF-8 in string");
            if (d) {
                memcpy(d, p, n);
                d += n;
            }
            p += n;
            continue;
        }
        /* backslash */
        if (end - p < 2) return tg_fail(ps, q, "unterminated string");
        char e;
        switch (p[1]) {
        case '"': e = '"'; break;
        case '\\': e = '\\'; break;
        case '/': e = '/'; break;
        case 'b': e = '\b'; break;
        case 'f': e = '\f'; break;
        case 'n': e = '\n'; break;
        case 'r': e = '\r'; break;
        case 't': e = '\t'; break;
        case 'u': e = 0; break;
        default: return tg_fail(ps, p, "invalid escape in string");
        }
        if (p[1] != 'u') {
            if (d) *d++ = e;
            p += 2;
            continue;
        }
        int cp = end - p >= 6 ? tg_hex4(p + 2) : -1;
        if (cp < 0) return tg_fail(ps, p, "invalid \\u escape");
        if (cp >= 0xDC00 && cp <= 0xDFFF) return tg_fail(ps, p, "lone surrogate in \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            int lo = end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? tg_hex4(p + 8) : -1;
            if (lo < 0xDC00 || lo > 0xDFFF) return tg_fail(ps, p, "lone surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            p += 6;
        }
        if (d) d += tg_utf8_put(d, (uint32_t)cp);
        p += 6;
    }
    ps->bytes += (size_t)(p - q) + 1;
    if (d) {
        *d = '\0';
        *out = d0;
        *out_len = (size_t)(d - d0);
        ps->byte_at = d + 1;
    }
    ps->p = p + 1;
    return 0;
}

static int tg_number(tg_json_parser_t *ps, tg_json_t *v) {
    const unsigned char *s = ps->p, *p = s, *end = ps->end;
    if (p < end && *p == '-') p++;
    if (p >= end || *p < '0' || *p > '9') return tg_fail(ps, s, "invalid number");
    if (*p == '0') p++;
    else
        while (p < end && *p >= '0' && *p <= '9') p++;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return tg_fail(ps, p, "invalid number: digit expected after '.'");
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return tg_fail(ps, p, "invalid number: digit expected in exponent");
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    size_t n = (size_t)(p - s);
    ps->bytes += n + 1;
    if (v) {
        memcpy(ps->byte_at, s, n);
        ps->byte_at[n] = '\0';
        v->s = ps->byte_at;
        v->len = n;
        ps->byte_at += n + 1;
    }
    ps->p = p;
    return 0;
}

static int tg_value(tg_json_parser_t *ps, tg_json_t **out);

/* Does the key whose quoted text is start[q0..q1) (checked by tg_string)
 * decode to ps->want?  Without a backslash the bytes are the key; with one it
 * is decoded again into a small buffer (a decoded key is never longer than
 * its text, nor shorter than a twelfth of it: \uXXXX\uXXXX -> 4 bytes). */
static int tg_key_is_wanted(const tg_json_parser_t *ps, size_t q0, size_t q1) {
    const unsigned char *k = ps->start + q0 + 1;
    size_t n = q1 - q0 - 2;
    if (!memchr(k, '\\', n)) return n == ps->want_len && !memcmp(k, ps->want, n);
    char buf[512];
    if (n >= sizeof buf || n > 12 * ps->want_len + 12) return 0;
    tg_json_parser_t kp;
    memset(&kp, 0, sizeof kp);
    kp.start = ps->start;
    kp.p = ps->start + q0;
    kp.end = ps->start + q1;
    kp.build = 1;
    kp.byte_at = buf;
    const char *d = NULL;
    size_t dn = 0;
    return !tg_string(&kp, &d, &dn) && dn == ps->want_len && !memcmp(d, ps->want, dn);
}

static int tg_literal(tg_json_parser_t *ps, const char *word, size_t n) {
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n)) return tg_fail(ps, ps->p, "invalid literal");
    ps->p += n;
    return 0;
}

/* The wanted member's value starts at ps->p: build it in the scratch when
 * the rest of the text fits there (its bytes never exceed the rest's length
 * plus a NUL, as for a whole document); otherwise only validate it (then
 * tg_json_parse_member parses its span again). */
static void tg_member_begin(tg_json_parser_t *ps) {
    size_t rest = (size_t)(ps->end - ps->p);
    ps->mbuilt = 0;
    if (!ps->scratch || rest >= ps->scratch_size - 4 * sizeof(tg_json_t)) return;
    ps->mbytes0 = (char *)ps->scratch + ps->scratch_size - (rest + 1);
    ps->build = 1;
    ps->node_at = ps->scratch;
    ps->node_end = ps->scratch + (ps->scratch_size - (rest + 1)) / sizeof(tg_json_t);
    ps->byte_at = ps->mbytes0;
}

static int tg_container(tg_json_parser_t *ps, tg_json_t *v, int obj) {
    const unsigned char *open = ps->p;
    if (++ps->depth > ps->max_depth) return tg_fail(ps, open, "nesting too deep");
    ps->p++;
    tg_skip_ws(ps);
    tg_json_t *last = NULL;
    size_t count = 0;
    if (ps->p < ps->end && *ps->p == (obj ? '}' : ']')) {
        ps->p++;
    } else {
        for (;;) {
            const char *key = NULL;
            size_t key_len = 0, key_off = 0, key_end = 0;
            if (obj) {
                if (ps->p >= ps->end) return tg_fail(ps, ps->p, "unexpected end of input");
                if (*ps->p != '"') return tg_fail(ps, ps->p, "expected a string key");
                key_off = (size_t)(ps->p - ps->start);
                if (tg_string(ps, &key, &key_len)) return -1;
                key_end = (size_t)(ps->p - ps->start);
                tg_skip_ws(ps);
                if (ps->p >= ps->end) return tg_fail(ps, ps->p, "unexpected end of input");
                if (*ps->p != ':') return tg_fail(ps, ps->p, "expected ':'");
                ps->p++;
                tg_skip_ws(ps);
            }
            tg_json_t *kid = NULL;
            size_t val_off = (size_t)(ps->p - ps->start);
            int wanted = obj && ps->want && ps->depth == 1 && tg_key_is_wanted(ps, key_off, key_end);
            if (wanted) tg_member_begin(ps);
            if (tg_value(ps, &kid)) return -1;
            if (wanted) {
                ps->found = 1; /* the last one wins, as in tg_json_getn */
                ps->found_off = val_off;
                ps->found_end = (size_t)(ps->p - ps->start);
                ps->mbuilt = ps->build && kid; /* not when the scratch filled up */
                ps->build = 0;
                kid = NULL; /* a document of its own, not a child of the (unbuilt) root */
            }
            count++;
            if (kid) {
                if (obj) {
                    kid->key = key;
                    kid->key_len = key_len;
                    kid->key_off = key_off;
                    kid->key_end = key_end;
                }
                kid->prev = last;
                if (last) last->next = kid;
                else v->child = kid;
                last = kid;
            }
            tg_skip_ws(ps);
            if (ps->p >= ps->end) return tg_fail(ps, ps->p, "unexpected end of input");
            if (*ps->p == ',') {
                ps->p++;
                tg_skip_ws(ps);
                continue;
            }
            if (*ps->p == (obj ? '}' : ']')) {
                ps->p++;
                break;
            }
            return tg_fail(ps, ps->p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    if (v) v->len = count;
    ps->depth--;
    return 0;
}

static int tg_value(tg_json_parser_t *ps, tg_json_t **out) {
    if (ps->p >= ps->end) return tg_fail(ps, ps->p, "unexpected end of input");
    const unsigned char *at = ps->p;
    tg_json_t *v;
    int rc;
    switch (*at) {
    case '{':
    case '[':
        v = tg_node(ps, *at == '{' ? TG_JSON_OBJECT : TG_JSON_ARRAY, at);
        rc = tg_container(ps, v, *at == '{');
        break;
    case '"': {
        v = tg_node(ps, TG_JSON_STRING, at);
        const char *s = NULL;
        size_t n = 0;
        rc = tg_string(ps, &s, &n);
        if (v) v->s = s, v->len = n;
        break;
    }
    case 't':
        v = tg_node(ps, TG_JSON_BOOL, at);
        if (v) v->b = 1;
        rc = tg_literal(ps, "true", 4);
        break;
    case 'f':
        v = tg_node(ps, TG_JSON_BOOL, at);
        rc = tg_literal(ps, "false", 5);
        break;
    case 'n':
        v = tg_node(ps, TG_JSON_NULL, at);
        rc = tg_literal(ps, "null", 4);
        break;
    default:
        if (*at == '-' || (*at >= '0' && *at <= '9')) {
            v = tg_node(ps, TG_JSON_NUMBER, at);
            rc = tg_number(ps, v);
        } else {
            return tg_fail(ps, at, *at >= 0x80 && !utf8_len(at, ps->end) ? "invalid UTF-8" : "expected a value");
        }
    }
    if (rc) return -1;
    if (v) v->end = (size_t)(ps->p - ps->start);
    *out = v;
    return 0;
}

static int tg_document(tg_json_parser_t *ps, tg_json_t **root) {
    tg_skip_ws(ps);
    if (tg_value(ps, root)) return -1;
    tg_skip_ws(ps);
    if (ps->p != ps->end) return tg_fail(ps, ps->p, "unexpected data after the JSON value");
    return 0;
}

static void tg_err_set(tg_json_err_t *err, size_t off, const char *msg) {
    if (!err) return;
    err->offset = off;
    err->msg = msg;
    snprintf(err->text, sizeof err->text, "Invalid JSON at byte %zu: %s", off, msg);
}

/* a parser for len bytes under opts' limits; -1 (err set) when len is over them */
static int tg_parser_open(tg_json_parser_t *ps, size_t len, const tg_json_opts_t *opts, tg_json_err_t *err) {
    memset(ps, 0, sizeof *ps);
    ps->max_depth = opts && opts->max_depth > 0 ? opts->max_depth : TG_JSON_MAX_DEPTH;
    if (opts && opts->max_bytes && len > opts->max_bytes) {
        tg_err_set(err, opts->max_bytes, "document too large");
        return -1;
    }
    return 0;
}

/* The document built in the scratch (nodes [n0, ps->node_at), bytes [b0,
 * ps->byte_at)) as one block of exactly its size, its pointers moved there
 * and its spans made offsets from base (the document's first byte in the
 * text); NULL when out of memory. */
static tg_json_t *tg_scratch_copy(const tg_json_parser_t *ps, const tg_json_t *n0, const char *b0, size_t base) {
    size_t nodes = (size_t)(ps->node_at - n0), bytes = (size_t)(ps->byte_at - b0);
    tg_json_t *block = malloc(nodes * sizeof(tg_json_t) + bytes);
    if (!block) return NULL;
    char *bytes_to = (char *)(block + nodes);
    memcpy(block, n0, nodes * sizeof(tg_json_t));
    memcpy(bytes_to, b0, bytes);
#define TG_MOVE_NODE(f) (v->f = v->f ? block + (v->f - n0) : NULL)
#define TG_MOVE_BYTES(f) (v->f = v->f ? bytes_to + (v->f - b0) : NULL)
    for (tg_json_t *v = block; v < block + nodes; v++) {
        TG_MOVE_NODE(next);
        TG_MOVE_NODE(prev);
        TG_MOVE_NODE(child);
        TG_MOVE_BYTES(key);
        TG_MOVE_BYTES(s);
        if (base) {
            v->off -= base;
            v->end -= base;
            if (v->key) v->key_off -= base, v->key_end -= base;
        }
    }
#undef TG_MOVE_NODE
#undef TG_MOVE_BYTES
    return block;
}

tg_json_t *tg_json_parse(const char *text, size_t len, const tg_json_opts_t *opts, tg_json_err_t *err) {
    tg_json_parser_t ps;
    if (tg_parser_open(&ps, len, opts, err)) return NULL;
    if (!text && len) {
        tg_err_set(err, 0, "no text");
        return NULL;
    }
    static const unsigned char none[1];
    ps.start = ps.p = text ? (const unsigned char *)text : none;
    ps.end = ps.start + len;
    /* nodes from the scratch's front, bytes (at most len + 1) in its tail;
     * a text that leaves room for fewer than 4 nodes is only counted */
    tg_json_t scratch[TG_JSON_SCRATCH / sizeof(tg_json_t)];
    char *bytes0 = NULL;
    if (len < sizeof scratch - 4 * sizeof(tg_json_t)) {
        bytes0 = (char *)scratch + sizeof scratch - (len + 1);
        ps.build = 1;
        ps.node_at = scratch;
        ps.node_end = scratch + (sizeof scratch - (len + 1)) / sizeof(tg_json_t);
        ps.byte_at = bytes0;
    }
    tg_json_t *root = NULL;
    if (tg_document(&ps, &root)) {
        tg_err_set(err, ps.err_off, ps.err);
        return NULL;
    }
    if (ps.build) { /* built whole in the scratch */
        tg_json_t *block = tg_scratch_copy(&ps, scratch, bytes0, 0);
        if (!block) tg_err_set(err, 0, "out of memory");
        return block;
    }
    size_t nodes = ps.nodes, bytes = ps.bytes;
    if (nodes > (SIZE_MAX - bytes) / sizeof(tg_json_t)) {
        tg_err_set(err, 0, "out of memory");
        return NULL;
    }
    tg_json_t *block = malloc(nodes * sizeof(tg_json_t) + bytes);
    if (!block) {
        tg_err_set(err, 0, "out of memory");
        return NULL;
    }
    ps.p = ps.start;
    ps.depth = 0;
    ps.build = 1;
    ps.node_at = block;
    ps.node_end = block + nodes;
    ps.byte_at = (char *)(block + nodes);
    if (tg_document(&ps, &root) || root != block || !ps.build) { /* cannot happen: the count pass took the same text */
        free(block);
        tg_err_set(err, 0, "internal error");
        return NULL;
    }
    return root;
}

tg_json_t *tg_json_parse_member(const char *text, size_t len, const tg_json_opts_t *opts, const char *key,
                                size_t key_len, tg_json_err_t *err) {
    tg_json_parser_t ps;
    if (tg_parser_open(&ps, len, opts, err)) return NULL;
    if (!text || !key) {
        tg_err_set(err, 0, "no text");
        return NULL;
    }
    ps.start = ps.p = (const unsigned char *)text;
    ps.end = ps.start + len;
    ps.want = key;
    ps.want_len = key_len;
    tg_json_t scratch[TG_JSON_SCRATCH / sizeof(tg_json_t)];
    ps.scratch = scratch;
    ps.scratch_size = sizeof scratch;
    tg_json_t *root = NULL;
    if (tg_document(&ps, &root)) { /* one pass: checks all, builds only the member */
        tg_err_set(err, ps.err_off, ps.err);
        return NULL;
    }
    if (!ps.found) {
        tg_err_set(err, 0, "no such member of a root object");
        return NULL;
    }
    if (ps.mbuilt) {
        tg_json_t *block = tg_scratch_copy(&ps, scratch, ps.mbytes0, ps.found_off);
        if (!block) tg_err_set(err, 0, "out of memory");
        return block;
    }
    tg_json_opts_t o = {.max_depth = ps.max_depth}; /* too large for the scratch: its span again */
    return tg_json_parse(text + ps.found_off, ps.found_end - ps.found_off, &o, err);
}

void tg_json_free(tg_json_t *root) { free(root); }

tg_json_type_t tg_json_type(const tg_json_t *v) { return v ? (tg_json_type_t)v->type : TG_JSON_NONE; }

const char *tg_json_type_name(tg_json_type_t t) {
    static const char *const names[] = {"none", "null", "boolean", "number", "string", "array", "object"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

tg_json_t *tg_json_getn(const tg_json_t *obj, const char *key, size_t key_len) {
    if (!obj || obj->type != TG_JSON_OBJECT) return NULL;
    tg_json_t *found = NULL;
    for (tg_json_t *m = obj->child; m; m = m->next)
        if (m->key_len == key_len && !memcmp(m->key, key, key_len)) found = m;
    return found;
}


size_t tg_json_len(const tg_json_t *v) {
    return v && (v->type == TG_JSON_ARRAY || v->type == TG_JSON_OBJECT) ? v->len : 0;
}

tg_json_t *tg_json_first(const tg_json_t *v) {
    return v && (v->type == TG_JSON_ARRAY || v->type == TG_JSON_OBJECT) ? v->child : NULL;
}

tg_json_t *tg_json_next(const tg_json_t *v) { return v ? v->next : NULL; }

tg_json_t *tg_json_at(const tg_json_t *v, size_t i) {
    tg_json_t *m = tg_json_first(v);
    while (m && i--) m = m->next;
    return m;
}

const char *tg_json_key(const tg_json_t *m, size_t *len) {
    if (!m || !m->key) return NULL;
    if (len) *len = m->key_len;
    return m->key;
}

const char *tg_json_str(const tg_json_t *v, size_t *len) {
    if (!v || v->type != TG_JSON_STRING) return NULL;
    if (len) *len = v->len;
    return v->s;
}

const char *tg_json_num_text(const tg_json_t *v, size_t *len) {
    if (!v || v->type != TG_JSON_NUMBER) return NULL;
    if (len) *len = v->len;
    return v->s;
}

int tg_json_int64(const tg_json_t *v, int64_t *out) {
    if (!v || v->type != TG_JSON_NUMBER) return -1;
    const char *p = v->s, *e = v->s + v->len;
    int neg = *p == '-';
    p += neg;
    uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, x = 0;
    for (; p < e; p++) {
        if (*p < '0' || *p > '9') return -1; /* '.', 'e', 'E' */
        unsigned d = (unsigned)(*p - '0');
        if (x > (lim - d) / 10) return -1;
        x = x * 10 + d;
    }
    *out = neg ? (x == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)x) : (int64_t)x;
    return 0;
}

int tg_json_double(const tg_json_t *v, double *out) {
    if (!v || v->type != TG_JSON_NUMBER) return -1;
    int saved = errno;
    *out = strtod(v->s, NULL); /* the grammar is a subset of strtod's; C locale assumed */
    errno = saved;
    return 0;
}

int tg_json_bool(const tg_json_t *v, int *out) {
    if (!v || v->type != TG_JSON_BOOL) return -1;
    *out = v->b;
    return 0;
}

int tg_json_is_true(const tg_json_t *v) { return v && v->type == TG_JSON_BOOL && v->b; }

void tg_json_span(const tg_json_t *v, size_t *off, size_t *len) {
    *off = v ? v->off : 0;
    *len = v ? v->end - v->off : 0;
}

void tg_json_key_span(const tg_json_t *m, size_t *off, size_t *len) {
    *off = m && m->key ? m->key_off : 0;
    *len = m && m->key ? m->key_end - m->key_off : 0;
}

int tg_json_member_cut(const tg_json_t *m, size_t *off, size_t *len) {
    if (!m || !m->key) return -1;
    if (m->next) { /* "k":v , "next"...  -> cut up to the next key */
        *off = m->key_off;
        *len = m->next->key_off - m->key_off;
    } else if (m->prev) { /* ..."prev":p , "k":v  -> cut from the end of prev */
        *off = m->prev->end;
        *len = m->end - m->prev->end;
    } else {
        *off = m->key_off;
        *len = m->end - m->key_off;
    }
    return 0;
}

static uint64_t tg_hash(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ULL;
    return h;
}

const char *tg_json_dup_key(const tg_json_t *obj, size_t *len, int *oom) {
    if (oom) *oom = 0;
    if (!obj || obj->type != TG_JSON_OBJECT || obj->len < 2) return NULL;
    size_t cap = 4;
    while (cap < obj->len * 2) cap *= 2;
    const tg_json_t *small[64]; /* a request body's few members: no allocation */
    const tg_json_t **tab = cap <= 64 ? memset(small, 0, cap * sizeof *tab) : calloc(cap, sizeof *tab);
    if (!tab) {
        if (oom) *oom = 1;
        return NULL;
    }
    const char *dup = NULL;
    for (const tg_json_t *m = obj->child; m && !dup; m = m->next) {
        size_t i = (size_t)tg_hash(m->key, m->key_len) & (cap - 1);
        for (; tab[i]; i = (i + 1) & (cap - 1))
            if (tab[i]->key_len == m->key_len && !memcmp(tab[i]->key, m->key, m->key_len)) {
                dup = m->key;
                if (len) *len = m->key_len;
                break;
            }
        if (!dup) tab[i] = m;
    }
    if (tab != small) free(tab);
    return dup;
}

/* ---- writing ---------------------------------------------------------------- */

int tg_json_write_str(tg_buf_t *b, const char *s, size_t len) {
    if (tg_buf_put(b, "\"", 1) || tg_json_write_chars(b, s, len)) return -1;
    return tg_buf_put(b, "\"", 1);
}

int tg_json_write_chars(tg_buf_t *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        const unsigned char *r = tg_plain_run(p, end);
        if (r > p && tg_buf_put(b, (const char *)p, (size_t)(r - p))) return -1;
        p = r;
        if (p >= end) break;
        unsigned c = *p;
        char esc[8];
        if (c >= 0x80) {
            size_t n = utf8_len(p, end);
            if (!n) { /* not UTF-8: U+FFFD for this byte */
                if (tg_buf_put(b, "\xEF\xBF\xBD", 3)) return -1;
                p++;
            } else if (n == 3 && p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
                if (tg_buf_put(b, p[2] == 0xA8 ? "\\u2028" : "\\u2029", 6)) return -1;
                p += 3;
            } else {
                if (tg_buf_put(b, (const char *)p, n)) return -1;
                p += n;
            }
            continue;
        }
        const char *e = NULL;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        }
        if (e) {
            if (tg_buf_put(b, e, 2)) return -1;
        } else {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            if (tg_buf_put(b, esc, 6)) return -1;
        }
        p++;
    }
    return 0;
}

int tg_json_write(tg_buf_t *b, const tg_json_t *v) {
    if (!v) return tg_buf_put(b, "null", 4);
    switch (v->type) {
    case TG_JSON_NULL: return tg_buf_put(b, "null", 4);
    case TG_JSON_BOOL: return v->b ? tg_buf_put(b, "true", 4) : tg_buf_put(b, "false", 5);
    case TG_JSON_NUMBER: return tg_buf_put(b, v->s, v->len);
    case TG_JSON_STRING: return tg_json_write_str(b, v->s, v->len);
    default: break;
    }
    int obj = v->type == TG_JSON_OBJECT;
    if (tg_buf_put(b, obj ? "{" : "[", 1)) return -1;
    for (const tg_json_t *m = v->child; m; m = m->next) {
        if (m != v->child && tg_buf_put(b, ",", 1)) return -1;
        if (obj && (tg_json_write_str(b, m->key, m->key_len) || tg_buf_put(b, ":", 1))) return -1;
        if (tg_json_write(b, m)) return -1;
    }
    return tg_buf_put(b, obj ? "}" : "]", 1);
}
