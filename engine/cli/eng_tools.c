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
 * JSON is read and strings written with tg_json (not cJSON), so that an
 * embedded NUL (\u0000) survives both ways.  A bad line stops the run with a message
 * naming the line on stderr and exit status 1. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "eng_cmd.h"
#include "tg_grow.h"
#include "tg_json.h"
#include "tok.h"

static const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

/* Parse one line [p, e) as a JSON value (surrounding whitespace allowed).
 * Returns the document (free with tg_json_free), or NULL with *msg set:
 * `what` when the line does not even start like the wanted value (open is
 * its first character), else the reader's "Invalid JSON at byte N: ...". */
static tg_json_t *parse_line(const char *p, const char *e, char open, const char *what,
                             tg_json_err_t *err, const char **msg) {
    tg_json_t *j = tg_json_parse(p, (size_t)(e - p), NULL, err);
    if (!j) {
        const char *q = skip_ws(p, e);
        *msg = q < e && *q == open ? err->text : what;
    }
    return j;
}

/* Parse a line holding one JSON string into *s, *n (bytes owned by *doc,
 * which the caller frees; may hold NUL).  Returns NULL or an error (static,
 * or in *err). */
static const char *parse_json_string(const char *p, const char *e, tg_json_err_t *err, tg_json_t **doc,
                                     const char **s, size_t *n) {
    static const char what[] = "expected a JSON string";
    const char *msg = NULL;
    *doc = parse_line(p, e, '"', what, err, &msg);
    if (!*doc) return msg;
    if ((*s = tg_json_str(*doc, n))) return NULL;
    tg_json_free(*doc);
    *doc = NULL;
    return what;
}

/* Parse a line holding a JSON array of non-negative integer ids below limit
 * into *ids (grown as needed, *cap elements).  Returns NULL or an error
 * (static, or in *err). */
static const char *parse_id_array(const char *p, const char *e, tg_json_err_t *err, int32_t **ids,
                                  size_t *n, size_t *cap, int32_t limit) {
    static const char what[] = "expected a JSON array of token ids";
    const char *msg = NULL;
    *n = 0;
    tg_json_t *doc = parse_line(p, e, '[', what, err, &msg), *v;
    if (!doc) return msg;
    if (tg_json_type(doc) != TG_JSON_ARRAY) msg = what;
    TG_JSON_FOREACH(v, doc) {
        if (msg) break;
        const char *num = tg_json_num_text(v, NULL);
        int64_t id = 0;
        if (!num || num[0] == '-') msg = "expected a non-negative integer id";
        else if (strpbrk(num, ".eE")) msg = "token ids must be integers";
        else if (tg_json_int64(v, &id) || id >= limit) msg = "token id out of range";
        else {
            int32_t *nv = tg_grow(*ids, *n, cap, sizeof *nv, 64);
            if (!nv) msg = "out of memory";
            else *ids = nv, (*ids)[(*n)++] = (int32_t)id;
        }
    }
    tg_json_free(doc);
    return msg;
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

/* What a line filter keeps between lines. */
typedef struct {
    tok_t *t;
    int flag;            /* --no-special / --skip-special */
    tg_json_err_t jerr;  /* holds the message of a JSON syntax error */
    int32_t *ids;        /* detokenize: the ids of the line */
    size_t icap;
} filter_t;

/* One input line [p, e) to one output line in out (without the newline).
 * Returns NULL or the error message for "line N: ...". */
typedef const char *(*filter_line_fn)(filter_t *f, const char *p, const char *e, tg_buf_t *out);

static const char *tokenize_line(filter_t *f, const char *p, const char *e, tg_buf_t *out) {
    tg_json_t *doc;
    const char *str;
    size_t slen;
    const char *msg = parse_json_string(p, e, &f->jerr, &doc, &str, &slen);
    if (msg) return msg;
    int32_t *ids = NULL;
    long n = tok_encode(f->t, str, slen, !f->flag, &ids);
    tg_json_free(doc);
    if (n < 0) return "cannot tokenize";
    tg_buf_put(out, "[", 1);
    for (long i = 0; i < n; i++) {
        char num[16];
        int k = snprintf(num, sizeof num, i ? ",%d" : "%d", (int)ids[i]);
        tg_buf_put(out, num, (size_t)k);
    }
    tg_buf_put(out, "]", 1);
    free(ids);
    return NULL;
}

static const char *detokenize_line(filter_t *f, const char *p, const char *e, tg_buf_t *out) {
    size_t n, len;
    const char *msg = parse_id_array(p, e, &f->jerr, &f->ids, &n, &f->icap, tok_n_vocab(f->t));
    if (msg) return msg;
    char *s = tok_decode(f->t, f->ids, n, f->flag, &len);
    if (!s) return "cannot decode";
    tg_json_write_str(out, s, len);
    free(s);
    return NULL;
}

/* stdin to stdout line by line through fn (blank lines skipped); the first
 * bad line stops the run with status 1, a model that does not load is 2. */
static int run_filter(const char *cmd, const char *flagname, int argc, char **argv, filter_line_fn fn) {
    filter_t f = {0};
    if (!(f.t = open_model(cmd, argc, argv, &f.flag, flagname))) return 2;
    char *line = NULL;
    size_t lcap = 0, lineno = 0;
    ssize_t ln;
    tg_buf_t out = {0};
    int rc = 0;
    while ((ln = getline(&line, &lcap, stdin)) >= 0) {
        lineno++;
        const char *e = line + ln;
        if (skip_ws(line, e) == e) continue; /* blank line */
        out.len = 0;
        const char *msg = fn(&f, line, e, &out);
        if (msg) {
            fprintf(stderr, "tollgate-engine %s: line %zu: %s\n", cmd, lineno, msg);
            rc = 1;
            break;
        }
        tg_buf_put(&out, "\n", 1);
        if (out.oom || fwrite(out.p, 1, out.len, stdout) != out.len) {
            fprintf(stderr, "tollgate-engine %s: %s\n", cmd, out.oom ? "out of memory" : strerror(errno));
            rc = 1;
            break;
        }
    }
    fflush(stdout);
    free(line);
    free(f.ids);
    tg_buf_free(&out);
    tok_free(f.t);
    return rc;
}

int eng_cmd_tokenize(int argc, char **argv) {
    return run_filter("tokenize", "--no-special", argc, argv, tokenize_line);
}

int eng_cmd_detokenize(int argc, char **argv) {
    return run_filter("detokenize", "--skip-special", argc, argv, detokenize_line);
}
