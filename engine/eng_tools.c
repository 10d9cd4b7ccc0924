/* eng_tools.c — `tollgate-engine tokenize` and `detokenize`: line-oriented
 * JSON filters over the model folder's tokenizer, for people debugging a
 * model and for tests.
 *
 * DIR is a model folder (its tokenizer.json is used) or a tokenizer.json itself.
 *
 *   tokenize --model DIR [--no-special]   stdin: one JSON string per line
 *                                         stdout: one JSON array of ids per line (no BOS;
 *                                         special tokens in the text are matched unless
 *                                         --no-special)
 *   detokenize --model DIR [--skip-special]  the reverse
 *
 * JSON strings are parsed and written here (not with cJSON) so that embedded
 * NUL (\u0000) survives both ways.  A bad line stops the run with a message
 * naming the line on stderr and exit status 1. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "eng_cmd.h"
#include "tok.h"

typedef struct {
    char *p;
    size_t n, cap;
} sbuf_t;

static int sb_grow(sbuf_t *b, size_t more) {
    if (b->n + more <= b->cap) return 0;
    size_t nc = (b->n + more) * 2 + 64;
    char *v = realloc(b->p, nc);
    if (!v) return -1;
    b->p = v;
    b->cap = nc;
    return 0;
}

static int sb_add(sbuf_t *b, const char *s, size_t n) {
    if (sb_grow(b, n)) return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

static const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

static int hex4(const char *p, const char *e, unsigned *v) {
    if (e - p < 4) return -1;
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

static void put_utf8(sbuf_t *b, uint32_t c) {
    char t[4];
    size_t n;
    if (c < 0x80) t[0] = (char)c, n = 1;
    else if (c < 0x800) t[0] = (char)(0xC0 | c >> 6), t[1] = (char)(0x80 | (c & 0x3F)), n = 2;
    else if (c < 0x10000)
        t[0] = (char)(0xE0 | c >> 12), t[1] = (char)(0x80 | ((c >> 6) & 0x3F)),
        t[2] = (char)(0x80 | (c & 0x3F)), n = 3;
    else
        t[0] = (char)(0xF0 | c >> 18), t[1] = (char)(0x80 | ((c >> 12) & 0x3F)),
        t[2] = (char)(0x80 | ((c >> 6) & 0x3F)), t[3] = (char)(0x80 | (c & 0x3F)), n = 4;
    sb_add(b, t, n);
}

/* Parse one JSON string filling the whole of [p, e) (surrounding whitespace
 * allowed) into out.  Returns NULL or an error message. */
static const char *parse_json_string(const char *p, const char *e, sbuf_t *out) {
    out->n = 0;
    p = skip_ws(p, e);
    if (p >= e || *p != '"') return "expected a JSON string";
    p++;
    for (;;) {
        if (p >= e) return "unterminated string";
        unsigned char c = (unsigned char)*p;
        if (c == '"') break;
        if (c < 0x20) return "control character in string (must be escaped)";
        if (c != '\\') {
            const char *q = p;
            while (q < e && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
            if (sb_add(out, p, (size_t)(q - p))) return "out of memory";
            p = q;
            continue;
        }
        if (++p >= e) return "bad escape";
        char d = *p++;
        switch (d) {
        case '"': sb_add(out, "\"", 1); break;
        case '\\': sb_add(out, "\\", 1); break;
        case '/': sb_add(out, "/", 1); break;
        case 'b': sb_add(out, "\b", 1); break;
        case 'f': sb_add(out, "\f", 1); break;
        case 'n': sb_add(out, "\n", 1); break;
        case 'r': sb_add(out, "\r", 1); break;
        case 't': sb_add(out, "\t", 1); break;
        case 'u': {
            unsigned u, lo;
            if (hex4(p, e, &u)) return "bad \\u escape";
            p += 4;
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, e, &lo) || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    return "lone surrogate in \\u escape (not valid UTF-8)";
                p += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            } else if (u >= 0xDC00 && u <= 0xDFFF) {
                return "lone surrogate in \\u escape (not valid UTF-8)";
            }
            put_utf8(out, u);
            break;
        }
        default: return "bad escape";
        }
    }
    p++;
    if (skip_ws(p, e) != e) return "trailing characters after the string";
    if (!tok_utf8_valid(out->p ? out->p : "", out->n)) return "string is not valid UTF-8";
    return NULL;
}

/* Write s[0..n) (valid UTF-8) as a JSON string. */
static void write_json_string(sbuf_t *b, const char *s, size_t n) {
    sb_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        sb_add(b, s + run, i - run);
        char esc[8];
        switch (c) {
        case '"': sb_add(b, "\\\"", 2); break;
        case '\\': sb_add(b, "\\\\", 2); break;
        case '\n': sb_add(b, "\\n", 2); break;
        case '\r': sb_add(b, "\\r", 2); break;
        case '\t': sb_add(b, "\\t", 2); break;
        case '\b': sb_add(b, "\\b", 2); break;
        case '\f': sb_add(b, "\\f", 2); break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_add(b, esc, 6);
        }
        run = i + 1;
    }
    sb_add(b, s + run, n - run);
    sb_add(b, "\"", 1);
}

/* Parse a JSON array of non-negative integer ids. Returns NULL or an error. */
static const char *parse_id_array(const char *p, const char *e, int32_t **ids, size_t *n,
                                  size_t *cap, int32_t limit) {
    *n = 0;
    p = skip_ws(p, e);
    if (p >= e || *p != '[') return "expected a JSON array of token ids";
    p = skip_ws(p + 1, e);
    if (p < e && *p == ']') goto end;
    for (;;) {
        if (p >= e || *p < '0' || *p > '9') return "expected a non-negative integer id";
        int64_t v = 0;
        const char *start = p;
        while (p < e && *p >= '0' && *p <= '9') {
            v = v * 10 + (*p - '0');
            if (v > INT32_MAX) return "token id out of range";
            p++;
        }
        if (p - start > 1 && *start == '0') return "bad number (leading zero)";
        if (p < e && (*p == '.' || *p == 'e' || *p == 'E')) return "token ids must be integers";
        if (v >= limit) return "token id out of range";
        if (*n == *cap) {
            size_t nc = *cap * 2 + 64;
            int32_t *nv = realloc(*ids, nc * sizeof *nv);
            if (!nv) return "out of memory";
            *ids = nv;
            *cap = nc;
        }
        (*ids)[(*n)++] = (int32_t)v;
        p = skip_ws(p, e);
        if (p < e && *p == ',') {
            p = skip_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == ']') break;
        return "expected ',' or ']'";
    }
end:
    if (skip_ws(p + 1, e) != e) return "trailing characters after the array";
    return NULL;
}

static tok_t *open_model(const char *cmd, int argc, char **argv, int *flag, const char *flagname) {
    const char *dir = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) dir = argv[++i];
        else if (!strncmp(argv[i], "--model=", 8)) dir = argv[i] + 8;
        else if (flagname && !strcmp(argv[i], flagname)) *flag = 1;
        else {
            fprintf(stderr, "tollgate-engine %s: unknown argument '%s'\n", cmd, argv[i]);
            dir = NULL;
            break;
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: tollgate-engine %s --model DIR [%s]\n", cmd, flagname);
        return NULL;
    }
    char path[4096], err[512];
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISREG(st.st_mode)) /* a tokenizer.json named directly */
        snprintf(path, sizeof path, "%s", dir);
    else
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    tok_t *t = tok_load(path, err, sizeof err);
    if (!t) fprintf(stderr, "tollgate-engine %s: %s\n", cmd, err);
    return t;
}

int eng_cmd_tokenize(int argc, char **argv) {
    int no_special = 0;
    tok_t *t = open_model("tokenize", argc, argv, &no_special, "--no-special");
    if (!t) return 2;
    char *line = NULL;
    size_t lcap = 0, lineno = 0;
    ssize_t ln;
    sbuf_t str = {0}, out = {0};
    int rc = 0;
    while ((ln = getline(&line, &lcap, stdin)) >= 0) {
        lineno++;
        const char *e = line + ln;
        if (skip_ws(line, e) == e) continue; /* blank line */
        const char *msg = parse_json_string(line, e, &str);
        if (msg) {
            fprintf(stderr, "tollgate-engine tokenize: line %zu: %s\n", lineno, msg);
            rc = 1;
            break;
        }
        int32_t *ids = NULL;
        long n = tok_encode(t, str.p ? str.p : "", str.n, !no_special, &ids);
        if (n < 0) {
            fprintf(stderr, "tollgate-engine tokenize: line %zu: cannot tokenize\n", lineno);
            rc = 1;
            break;
        }
        out.n = 0;
        sb_add(&out, "[", 1);
        for (long i = 0; i < n; i++) {
            char num[16];
            int k = snprintf(num, sizeof num, i ? ",%d" : "%d", (int)ids[i]);
            sb_add(&out, num, (size_t)k);
        }
        sb_add(&out, "]\n", 2);
        free(ids);
        if (fwrite(out.p, 1, out.n, stdout) != out.n) {
            fprintf(stderr, "tollgate-engine tokenize: write: %s\n", strerror(errno));
            rc = 1;
            break;
        }
    }
    fflush(stdout);
    free(line);
    free(str.p);
    free(out.p);
    tok_free(t);
    return rc;
}

int eng_cmd_detokenize(int argc, char **argv) {
    int skip_special = 0;
    tok_t *t = open_model("detokenize", argc, argv, &skip_special, "--skip-special");
    if (!t) return 2;
    char *line = NULL;
    size_t lcap = 0, lineno = 0, n = 0, icap = 0;
    int32_t *ids = NULL;
    ssize_t ln;
    sbuf_t out = {0};
    int rc = 0;
    while ((ln = getline(&line, &lcap, stdin)) >= 0) {
        lineno++;
        const char *e = line + ln;
        if (skip_ws(line, e) == e) continue;
        const char *msg = parse_id_array(line, e, &ids, &n, &icap, tok_n_vocab(t));
        if (msg) {
            fprintf(stderr, "tollgate-engine detokenize: line %zu: %s\n", lineno, msg);
            rc = 1;
            break;
        }
        size_t len;
        char *s = tok_decode(t, ids, n, skip_special, &len);
        if (!s) {
            fprintf(stderr, "tollgate-engine detokenize: line %zu: cannot decode\n", lineno);
            rc = 1;
            break;
        }
        out.n = 0;
        write_json_string(&out, s, len);
        sb_add(&out, "\n", 1);
        free(s);
        if (fwrite(out.p, 1, out.n, stdout) != out.n) {
            fprintf(stderr, "tollgate-engine detokenize: write: %s\n", strerror(errno));
            rc = 1;
            break;
        }
    }
    fflush(stdout);
    free(line);
    free(ids);
    free(out.p);
    tok_free(t);
    return rc;
}
