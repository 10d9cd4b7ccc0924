/* tok_json.c — fast reading of a tokenizer.json.  The two big members,
 * model.vocab (an object of token -> id) and model.merges (an array of
 * "a b" strings or ["a","b"] pairs), are parsed here straight into flat
 * arrays; the rest of the file (added tokens, pre-tokenizer, ...: small) is
 * handed to cJSON with those two values replaced by {} and [].  This keeps
 * tok_load well under the time of building a cJSON tree of 250,000 nodes. */
#include <stdlib.h>
#include <string.h>

#include "tg_grow.h"
#include "tok-int.h"

typedef struct {
    const char *p, *e;
} jp_t;

static void ws(jp_t *j) {
    while (j->p < j->e && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t')) j->p++;
}

/* Skip a string starting at '"'; returns 0 or -1. */
static int skip_string(jp_t *j) {
    if (j->p >= j->e || *j->p != '"') return -1;
    j->p++;
    while (j->p < j->e) {
        const char *q = memchr(j->p, '"', (size_t)(j->e - j->p));
        if (!q) return -1;
        /* count the backslashes before the quote */
        const char *b = q;
        while (b > j->p && b[-1] == '\\') b--;
        j->p = q + 1;
        if (((q - b) & 1) == 0) return 0;
    }
    return -1;
}

/* Skip any value. */
static int skip_value(jp_t *j) {
    ws(j);
    if (j->p >= j->e) return -1;
    char c = *j->p;
    if (c == '"') return skip_string(j);
    if (c == '{' || c == '[') {
        int depth = 0;
        while (j->p < j->e) {
            char d = *j->p;
            if (d == '"') {
                if (skip_string(j)) return -1;
                continue;
            }
            if (d == '{' || d == '[') depth++;
            else if (d == '}' || d == ']') {
                if (--depth == 0) {
                    j->p++;
                    return 0;
                }
            }
            j->p++;
        }
        return -1;
    }
    while (j->p < j->e && *j->p != ',' && *j->p != '}' && *j->p != ']' && *j->p != ' ' &&
           *j->p != '\n' && *j->p != '\r' && *j->p != '\t')
        j->p++;
    return 0;
}

static int hex4(const char *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                            : 16u;
        if (d > 15) return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

typedef struct {
    char *p;
    size_t n, cap;
} arena_t;

static int arena_reserve(arena_t *a, size_t more) {
    if (a->n + more <= a->cap) return 0;
    size_t nc = (a->n + more) * 2 + 4096;
    char *v = realloc(a->p, nc);
    if (!v) return -1;
    a->p = v;
    a->cap = nc;
    return 0;
}

/* Decode a JSON string at j->p into the arena, located by off and len. */
static int read_string(jp_t *j, arena_t *a, uint32_t *off, uint32_t *len) {
    if (j->p >= j->e || *j->p != '"') return -1;
    j->p++;
    const char *s = j->p;
    /* fast path: no escapes */
    const char *q = s;
    while (q < j->e && *q != '"' && *q != '\\') q++;
    if (q >= j->e) return -1;
    if (arena_reserve(a, (size_t)(q - s) + 8)) return -1;
    *off = (uint32_t)a->n;
    memcpy(a->p + a->n, s, (size_t)(q - s));
    a->n += (size_t)(q - s);
    j->p = q;
    while (*j->p != '"') {
        /* an escape */
        if (j->e - j->p < 2) return -1;
        char d = j->p[1];
        j->p += 2;
        char ch;
        switch (d) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            unsigned u, lo;
            if (j->e - j->p < 4 || hex4(j->p, &u)) return -1;
            j->p += 4;
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (j->e - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || hex4(j->p + 2, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                j->p += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            } else if (u >= 0xDC00 && u <= 0xDFFF) {
                return -1;
            }
            if (arena_reserve(a, 4)) return -1;
            a->n += tg_utf8_put(a->p + a->n, u);
            goto next;
        }
        default: return -1;
        }
        if (arena_reserve(a, 1)) return -1;
        a->p[a->n++] = ch;
    next:
        s = j->p;
        q = s;
        while (q < j->e && *q != '"' && *q != '\\') q++;
        if (q >= j->e) return -1;
        if (arena_reserve(a, (size_t)(q - s) + 8)) return -1;
        memcpy(a->p + a->n, s, (size_t)(q - s));
        a->n += (size_t)(q - s);
        j->p = q;
    }
    j->p++;
    *len = (uint32_t)(a->n - *off);
    if (arena_reserve(a, 1)) return -1;
    a->p[a->n++] = 0; /* NUL-terminate (not counted) */
    return 0;
}

static int read_id(jp_t *j, int32_t *id) {
    ws(j);
    int64_t v = 0;
    const char *s = j->p;
    while (j->p < j->e && *j->p >= '0' && *j->p <= '9') {
        v = v * 10 + (*j->p - '0');
        if (v > 16777216) return -1;
        j->p++;
    }
    if (j->p == s) return -1;
    if (j->p < j->e && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) return -1;
    *id = (int32_t)v;
    return 0;
}

/* Open a '{' or '[' list: 1 when it is empty (and closed), 0 when elements
 * follow, -1 when it does not start with open. */
static int list_open(jp_t *j, char open, char close) {
    ws(j);
    if (j->p >= j->e || *j->p != open) return -1;
    j->p++;
    ws(j);
    if (j->p < j->e && *j->p == close) {
        j->p++;
        return 1;
    }
    return 0;
}

/* After an element: 1 past a ',' (another follows), 0 past close, -1 else. */
static int list_next(jp_t *j, char close) {
    ws(j);
    if (j->p < j->e && (*j->p == ',' || *j->p == close)) return *j->p++ == ',';
    return -1;
}

static int parse_vocab(jp_t *j, arena_t *a, tok_json_t *o) {
    size_t cap = 0;
    int rc = list_open(j, '{', '}');
    if (rc) return rc < 0 ? -1 : 0;
    do {
        tok_json_str_t *v = tg_grow(o->vocab, o->n_vocab, &cap, sizeof *v, 1024);
        if (!v) return -1;
        o->vocab = v;
        tok_json_str_t *e = &o->vocab[o->n_vocab];
        ws(j);
        if (read_string(j, a, &e->off, &e->len)) return -1;
        ws(j);
        if (j->p >= j->e || *j->p != ':') return -1;
        j->p++;
        if (read_id(j, &e->id)) return -1;
        o->n_vocab++;
    } while ((rc = list_next(j, '}')) == 1);
    return rc;
}

static int parse_merges(jp_t *j, arena_t *a, tok_json_t *o) {
    size_t cap = 0;
    int rc = list_open(j, '[', ']');
    if (rc) return rc < 0 ? -1 : 0;
    do {
        tok_json_merge_t *v = tg_grow(o->merges, o->n_merges, &cap, sizeof *v, 1024);
        if (!v) return -1;
        o->merges = v;
        tok_json_merge_t *m = &o->merges[o->n_merges];
        ws(j);
        if (j->p < j->e && *j->p == '"') {
            uint32_t off, len;
            if (read_string(j, a, &off, &len)) return -1;
            const char *sp = memchr(a->p + off, ' ', len);
            if (!sp) {
                m->a_off = off, m->a_len = len, m->b_off = off + len, m->b_len = 0; /* refused later */
            } else {
                m->a_off = off, m->a_len = (uint32_t)(sp - (a->p + off));
                m->b_off = m->a_off + m->a_len + 1, m->b_len = len - m->a_len - 1;
            }
        } else if (j->p < j->e && *j->p == '[') {
            j->p++;
            ws(j);
            if (read_string(j, a, &m->a_off, &m->a_len)) return -1;
            ws(j);
            if (j->p >= j->e || *j->p != ',') return -1;
            j->p++;
            ws(j);
            if (read_string(j, a, &m->b_off, &m->b_len)) return -1;
            ws(j);
            if (j->p >= j->e || *j->p != ']') return -1;
            j->p++;
        } else {
            return -1;
        }
        o->n_merges++;
    } while ((rc = list_next(j, ']')) == 1);
    return rc;
}

/* Read "key": at j->p (a plain key, no escapes needed for the ones we look for). */
static int read_key(jp_t *j, const char **k, size_t *kn) {
    ws(j);
    if (j->p >= j->e || *j->p != '"') return -1;
    const char *s = j->p + 1;
    if (skip_string(j)) return -1;
    *k = s;
    *kn = (size_t)(j->p - 1 - s);
    ws(j);
    if (j->p >= j->e || *j->p != ':') return -1;
    j->p++;
    ws(j);
    return 0;
}

int tok_json_read(const char *buf, size_t len, tok_json_t *o) {
    memset(o, 0, sizeof *o);
    jp_t j = {buf, buf + len};
    arena_t a = {0};
    const char *vs = NULL, *ve = NULL, *ms = NULL, *me = NULL;
    ws(&j);
    if (j.p >= j.e || *j.p != '{') goto fail;
    j.p++;
    ws(&j);
    while (j.p < j.e && *j.p != '}') {
        const char *k;
        size_t kn;
        if (read_key(&j, &k, &kn)) goto fail;
        if (kn == 5 && !memcmp(k, "model", 5) && j.p < j.e && *j.p == '{') {
            j.p++;
            ws(&j);
            while (j.p < j.e && *j.p != '}') {
                if (read_key(&j, &k, &kn)) goto fail;
                if (kn == 5 && !memcmp(k, "vocab", 5) && !vs && *j.p == '{') {
                    vs = j.p;
                    if (parse_vocab(&j, &a, o)) goto fail;
                    ve = j.p;
                    o->has_vocab = 1;
                } else if (kn == 6 && !memcmp(k, "merges", 6) && !ms && *j.p == '[') {
                    ms = j.p;
                    if (parse_merges(&j, &a, o)) goto fail;
                    me = j.p;
                    o->has_merges = 1;
                } else if (skip_value(&j)) {
                    goto fail;
                }
                ws(&j);
                if (j.p < j.e && *j.p == ',') j.p++, ws(&j);
            }
            if (j.p >= j.e) goto fail;
            j.p++;
        } else if (skip_value(&j)) {
            goto fail;
        }
        ws(&j);
        if (j.p < j.e && *j.p == ',') j.p++, ws(&j);
    }
    if (j.p >= j.e) goto fail;
    /* the rest, with the two big values blanked, through cJSON */
    {
        char *rest = malloc(len + 8);
        if (!rest) goto fail;
        size_t n = 0;
        const char *cut[4] = {vs, ve, ms, me};
        const char *from = buf;
        /* blank in file order */
        int order = (vs && ms && ms < vs) ? 1 : 0;
        for (int pass = 0; pass < 2; pass++) {
            int which = pass ^ order; /* 0: vocab, 1: merges */
            const char *s = cut[2 * which], *e = cut[2 * which + 1];
            if (!s) continue;
            memcpy(rest + n, from, (size_t)(s - from));
            n += (size_t)(s - from);
            memcpy(rest + n, which ? "[]" : "{}", 2);
            n += 2;
            from = e;
        }
        memcpy(rest + n, from, (size_t)(buf + len - from));
        n += (size_t)(buf + len - from);
        o->root = cJSON_ParseWithLength(rest, n);
        free(rest);
        if (!o->root) goto fail;
    }
    o->arena = a.p;
    return 0;
fail:
    free(a.p);
    tok_json_free(o);
    return -1;
}

void tok_json_free(tok_json_t *o) {
    cJSON_Delete(o->root);
    free(o->arena);
    free(o->vocab);
    free(o->merges);
    memset(o, 0, sizeof *o);
}
