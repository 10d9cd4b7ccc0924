/* fuzz_gram.c — libFuzzer target: structured output end to end, from a
 * hostile schema to the text the grammar lets the model write.
 *
 * Input: byte 0 the mode, byte 1 the token budget (max_tokens), then a
 * schema (JSON text) up to the first NUL, then the "model's choices"; or,
 * with byte 0's high bit set, bytes from which fz_gen writes a schema of the
 * supported keywords (names and values chosen to collide), then the choices.
 * Modes: 0 response_format json_object; 1 json_schema with the schema; 2 a
 * strict tool with the schema as parameters beside a plain one, tool_choice
 * "required"; 3 the same tools under "auto" with response_format json_schema;
 * 4 the strict tool named in tool_choice.  The request goes through the API
 * reader (api_chat_req_parse) as the worker reads it, and the grammar is
 * built as the worker builds it (eng_server.c chat_constraint) over a small
 * real vocabulary (gram_tok.json: 1,500 ids of the DeepSeek-V3 tokenizer,
 * every byte one token, and its tool markers; gen_gram_tok.py).  Decoding:
 * each step takes the mask, picks one allowed id with two choice bytes, and,
 * once they run out, the allowed id that leaves the fewest bytes to write.
 *
 * Traps (each an invariant of engine/sched/eng_gram.h):
 *  - a refused request's error is the API's JSON with a 4xx status and a
 *    param naming the field;
 *  - the mask never allows nothing before EOS (no dead end) and never an id
 *    that eng_gram_accept refuses;
 *  - when the budget covers the shortest completion (close cost + EOS), the
 *    answer ends with EOS within it;
 *  - an answer that ended with EOS is strict JSON (common/tg_json) valid
 *    against the schema as the client sent it (fz_valid below, independent
 *    of the compiled table), or tool calls (eng_tool_calls_parse) whose names
 *    are the request's and whose arguments are JSON objects, valid against
 *    the strict tool's schema.
 * Per-step work is one mask over 1,514 ids; libFuzzer's -timeout and
 * -rss_limit_mb bound the rest (make fuzz-gram-run sets them).
 *
 *   make fuzz-gram        build build/fuzz/fuzz_gram (clang, address+undefined)
 *   make fuzz-gram-run    run it for FUZZ_SECONDS (default 60)
 * make test-engine-server replays fuzz/engine_server/corpus/gram through a
 * plain build (fuzz/replay.c).  The vocabulary: FUZZ_GRAM_TOK, default
 * fuzz/engine_server/gram_tok.json (run from the repository root). */
#include "../../engine/sched/eng_gram.c"
#include "../../engine/server/eng_server_req.c"

#include <math.h>

#define FZ_MAX_STEPS 4096

static tok_t *T;
static eng_vocab_t *V;
static eng_tool_ids_t IDS;
static float *LG;
static int32_t *ALLOWED;

static void fz_init(void) {
    const char *p = getenv("FUZZ_GRAM_TOK");
    char err[256];
    T = tok_load(p ? p : "fuzz/engine_server/gram_tok.json", err, sizeof err);
    if (!T) {
        fprintf(stderr, "fuzz_gram: %s\n", err);
        abort();
    }
    V = eng_vocab_new(T, tok_n_vocab(T));
    LG = malloc((size_t)tok_n_vocab(T) * sizeof *LG);
    ALLOWED = malloc((size_t)tok_n_vocab(T) * sizeof *ALLOWED);
    if (!V || !LG || !ALLOWED || eng_tool_ids(T, &IDS)) abort();
}

/* ---- a JSON Schema validator for the keywords api_schema_compile accepts ---- */

/* A JSON number's text as sign, digits (at most 36 significant) and exponent:
 * value = (neg ? -1 : 1) * D * 10^X.  -1 when it has more digits. */
static int fz_dec(const char *t, int *neg, __int128 *D, long *X) {
    int nd = 0;
    long x = 0;
    *neg = *t == '-';
    t += *neg;
    *D = 0;
    int frac = 0;
    for (; *t && *t != 'e' && *t != 'E'; t++) {
        if (*t == '.') {
            frac = 1;
            continue;
        }
        if (!nd && *t == '0') {
            x -= frac;
            continue;
        }
        if (nd >= 36) return -1;
        *D = *D * 10 + (*t - '0');
        nd++;
        x -= frac;
    }
    if (*t) {
        long e = strtol(t + 1, NULL, 10);
        x += e > 1000 ? 1000 : e < -1000 ? -1000 : e;
    }
    while (*D && *D % 10 == 0) *D /= 10, x++;
    *X = *D ? x : 0;
    return 0;
}

/* A JSON number text as sign, significant digits (no leading or trailing
 * zeros, at most 127 kept: more never decide a comparison here) and the
 * power of ten of the first: value = 0.d1d2... * 10^(*e). */
static void fz_sig(const char *t, int *neg, char *dg, int *nd, long *e) {
    *neg = *t == '-';
    t += *neg;
    long point = -1, i = 0, first = -1;
    *nd = 0;
    for (; *t && *t != 'e' && *t != 'E'; t++) {
        if (*t == '.') {
            point = i;
            continue;
        }
        if (first < 0 && *t != '0') first = i;
        if (first >= 0 && *nd < 127) dg[(*nd)++] = *t;
        i++;
    }
    if (point < 0) point = i;
    long x = *t ? strtol(t + 1, NULL, 10) : 0;
    x = x > 100000 ? 100000 : x < -100000 ? -100000 : x;
    while (*nd && dg[*nd - 1] == '0') (*nd)--;
    *e = first < 0 ? 0 : point - first + x;
}

/* a <=> b for two JSON number texts, exactly (decimal digits compared). */
static int fz_num_cmp(const char *a, const char *b) {
    int na, nb, la, lb;
    char da[128], db[128];
    long ea, eb;
    fz_sig(a, &na, da, &la, &ea);
    fz_sig(b, &nb, db, &lb, &eb);
    int sa = !la ? 0 : na ? -1 : 1, sb = !lb ? 0 : nb ? -1 : 1;
    if (sa != sb) return sa < sb ? -1 : 1;
    if (!sa) return 0;
    int c = ea != eb ? (ea < eb ? -1 : 1) : 0;
    for (int i = 0; !c && (i < la || i < lb); i++) {
        char x = i < la ? da[i] : '0', y = i < lb ? db[i] : '0';
        c = x != y ? (x < y ? -1 : 1) : 0;
    }
    return sa < 0 ? -c : c;
}

/* v (number text) is a whole multiple of m (number text > 0). */
static int fz_multiple(const char *v, const char *m) {
    int nv, nm;
    __int128 Dv, Dm;
    long Xv, Xm;
    if (fz_dec(v, &nv, &Dv, &Xv) || fz_dec(m, &nm, &Dm, &Xm) || !Dm) return 1; /* out of reach: not judged */
    if (!Dv) return 1;
    /* Dv*10^Xv / (Dm*10^Xm) integral: Dv*10^(Xv-Xm) divisible by Dm */
    long d = Xv - Xm;
    if (d < 0) { /* Dv / 10^-d must be a multiple of Dm: Dv divisible by Dm*10^-d */
        __int128 q = Dm;
        for (; d < 0; d++) {
            if (q > ((__int128)1 << 120) / 10) return 0;
            q *= 10;
        }
        return Dv % q == 0;
    }
    __int128 r = Dv % Dm;
    for (; d > 0 && r; d--) r = r * 10 % Dm;
    return r == 0;
}

static int fz_integral(const char *t) {
    int n;
    __int128 D;
    long X;
    if (fz_dec(t, &n, &D, &X)) return floorl(strtold(t, NULL)) == strtold(t, NULL);
    return X >= 0;
}

static int fz_equal(const tg_json_t *a, const tg_json_t *b);

static int fz_equal(const tg_json_t *a, const tg_json_t *b) {
    tg_json_type_t t = tg_json_type(a);
    if (t != tg_json_type(b)) return 0;
    size_t la, lb;
    const char *sa, *sb;
    const tg_json_t *x, *y;
    switch (t) {
    case TG_JSON_NULL: return 1;
    case TG_JSON_BOOL: return tg_json_is_true(a) == tg_json_is_true(b);
    case TG_JSON_NUMBER: return !fz_num_cmp(tg_json_num_text(a, NULL), tg_json_num_text(b, NULL));
    case TG_JSON_STRING:
        sa = tg_json_str(a, &la), sb = tg_json_str(b, &lb);
        return la == lb && !memcmp(sa, sb, la);
    case TG_JSON_ARRAY:
        if (tg_json_len(a) != tg_json_len(b)) return 0;
        for (x = tg_json_first(a), y = tg_json_first(b); x && y; x = tg_json_next(x), y = tg_json_next(y))
            if (!fz_equal(x, y)) return 0;
        return 1;
    case TG_JSON_OBJECT:
        if (tg_json_len(a) != tg_json_len(b)) return 0;
        TG_JSON_FOREACH(x, a) {
            sa = tg_json_key(x, &la);
            if (!fz_equal(x, tg_json_getn(b, sa, la))) return 0;
        }
        return 1;
    default: return 0;
    }
}

static size_t fz_chars(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static int fz_digits(const char *s, int n) {
    for (int i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}
static int fz_num2(const char *s) { return (s[0] - '0') * 10 + s[1] - '0'; }

static int fz_date(const char *s, size_t n) {
    static const int DAYS[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (n != 10 || !fz_digits(s, 4) || s[4] != '-' || !fz_digits(s + 5, 2) || s[7] != '-' || !fz_digits(s + 8, 2))
        return 0;
    int y = atoi(s), m = fz_num2(s + 5), d = fz_num2(s + 8);
    if (m < 1 || m > 12 || d < 1 || d > DAYS[m - 1]) return 0;
    return !(m == 2 && d == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)));
}

/* hh:mm[:ss[.f+]] then an offset (off 1: required, 0: none, -1: no seconds either) */
static int fz_time(const char *s, size_t n, int off) {
    if (n < 5 || !fz_digits(s, 2) || s[2] != ':' || !fz_digits(s + 3, 2)) return 0;
    if (fz_num2(s) > 23 || fz_num2(s + 3) > 59) return 0;
    size_t i = 5;
    if (off >= 0) {
        if (n < 8 || s[5] != ':' || !fz_digits(s + 6, 2) || fz_num2(s + 6) > 59) return 0;
        i = 8;
        if (i < n && s[i] == '.') {
            size_t j = ++i;
            while (i < n && s[i] >= '0' && s[i] <= '9') i++;
            if (i == j) return 0;
        }
    }
    if (off <= 0) return i == n;
    if (i < n && (s[i] == 'Z' || s[i] == 'z')) return i + 1 == n;
    return n - i == 6 && (s[i] == '+' || s[i] == '-') && fz_digits(s + i + 1, 2) && s[i + 3] == ':' &&
           fz_digits(s + i + 4, 2) && fz_num2(s + i + 1) <= 23 && fz_num2(s + i + 4) <= 59;
}

static int fz_hex(int c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static int fz_format(const char *f, const char *s, size_t n) {
    if (!strcmp(f, "date")) return fz_date(s, n);
    if (!strcmp(f, "time")) return fz_time(s, n, 1);
    if (!strcmp(f, "date-time")) return n > 11 && (s[10] == 'T' || s[10] == 't') && fz_date(s, 10) &&
                                        fz_time(s + 11, n - 11, 1);
    if (!strcmp(f, "uuid")) {
        if (n != 36) return 0;
        for (size_t i = 0; i < n; i++)
            if ((i == 8 || i == 13 || i == 18 || i == 23) ? s[i] != '-' : !fz_hex(s[i])) return 0;
        return 1;
    }
    if (!strcmp(f, "ipv4")) {
        int parts = 0;
        size_t i = 0;
        while (i < n) {
            size_t j = i;
            while (j < n && s[j] >= '0' && s[j] <= '9') j++;
            if (j == i || j - i > 3 || (j - i > 1 && s[i] == '0') || atoi(s + i) > 255) return 0;
            parts++;
            if (j == n) break;
            if (s[j] != '.') return 0;
            i = j + 1;
            if (i == n) return 0;
        }
        return parts == 4;
    }
    if (!strcmp(f, "email")) {
        const char *at = memchr(s, '@', n);
        return at && at > s && at < s + n - 3 && memchr(at + 1, '.', (size_t)(s + n - at - 1)) &&
               !memchr(at + 1, '@', (size_t)(s + n - at - 1));
    }
    if (!strcmp(f, "hostname") || !strcmp(f, "ipv6") || !strcmp(f, "duration")) {
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7F) return 0;
        return n > 0;
    }
    return 1; /* a number's format or one the compiler refuses */
}

/* The number formats' ranges (api_chat.c's table, written down again). */
static int fz_num_format(const char *f, const char *t) {
    static const struct { const char *name, *lo, *hi; } R[] = {
        {"int32", "-2147483648", "2147483647"},         {"uint32", "0", "4294967295"},
        {"int64", "-9223372036854775808", "9223372036854775807"}, {"uint64", "0", "18446744073709551615"},
        {"safeint", "-9007199254740991", "9007199254740991"},    {"float32", "-3.4028234663852886e38", "3.4028234663852886e38"},
        {"float64", "-1.7976931348623157e308", "1.7976931348623157e308"},
    };
    for (size_t i = 0; i < sizeof R / sizeof R[0]; i++)
        if (!strcmp(f, R[i].name)) return fz_num_cmp(t, R[i].lo) >= 0 && fz_num_cmp(t, R[i].hi) <= 0;
    return 1;
}

static const tg_json_t *fz_ref(const tg_json_t *root, const tg_json_t *ref) {
    size_t n;
    const char *s = tg_json_str(ref, &n);
    if (!s) return NULL;
    if (n == 1 && s[0] == '#') return root;
    static const char *const PRE[] = {"#/$defs/", "#/definitions/"};
    for (int i = 0; i < 2; i++) {
        size_t pl = strlen(PRE[i]);
        if (n <= pl || memcmp(s, PRE[i], pl)) continue;
        char name[512];
        size_t k = 0;
        for (size_t j = pl; j < n && k < sizeof name; j++) {
            if (s[j] == '~' && j + 1 < n && (s[j + 1] == '0' || s[j + 1] == '1')) {
                name[k++] = s[j + 1] == '0' ? '~' : '/';
                j++;
            } else {
                name[k++] = s[j];
            }
        }
        return tg_json_getn(tg_json_get(root, i ? "definitions" : "$defs"), name, k);
    }
    return NULL;
}

static int fz_type_ok(const char *t, size_t n, const tg_json_t *v) {
    tg_json_type_t vt = tg_json_type(v);
#define IS(s) (n == strlen(s) && !memcmp(t, s, n))
    if (IS("null")) return vt == TG_JSON_NULL;
    if (IS("boolean")) return vt == TG_JSON_BOOL;
    if (IS("number")) return vt == TG_JSON_NUMBER;
    if (IS("integer")) return vt == TG_JSON_NUMBER && fz_integral(tg_json_num_text(v, NULL));
    if (IS("string")) return vt == TG_JSON_STRING;
    if (IS("array")) return vt == TG_JSON_ARRAY;
    if (IS("object")) return vt == TG_JSON_OBJECT;
#undef IS
    return 0;
}

/* v valid against schema s of document root (the keywords of api/README.md
 * "Structured output"; patterns are zod's own, not run here). */
static int fz_valid(const tg_json_t *root, const tg_json_t *s, const tg_json_t *v, int depth) {
    if (depth > 200) return 0;
    int b;
    if (!tg_json_bool(s, &b)) return b;
    if (tg_json_type(s) != TG_JSON_OBJECT) return 0;
    const tg_json_t *k, *x;
    if ((k = tg_json_get(s, "$ref")) && !fz_valid(root, fz_ref(root, k), v, depth + 1)) return 0;
    if ((k = tg_json_get(s, "allOf")))
        TG_JSON_FOREACH(x, k) if (!fz_valid(root, x, v, depth + 1)) return 0;
    if ((k = tg_json_get(s, "anyOf"))) {
        int any = 0;
        TG_JSON_FOREACH(x, k) if (fz_valid(root, x, v, depth + 1)) { any = 1; break; }
        if (!any) return 0;
    }
    if ((k = tg_json_get(s, "oneOf"))) {
        int n = 0;
        TG_JSON_FOREACH(x, k) n += fz_valid(root, x, v, depth + 1);
        if (n != 1) return 0;
    }
    if ((k = tg_json_get(s, "const")) && !fz_equal(k, v)) return 0;
    if ((k = tg_json_get(s, "enum"))) {
        int any = 0;
        TG_JSON_FOREACH(x, k) any |= fz_equal(x, v);
        if (!any) return 0;
    }
    if ((k = tg_json_get(s, "type"))) {
        size_t n;
        const char *t = tg_json_str(k, &n);
        int ok = 0;
        if (t) ok = fz_type_ok(t, n, v);
        else TG_JSON_FOREACH(x, k) if ((t = tg_json_str(x, &n)) && fz_type_ok(t, n, v)) ok = 1;
        if (!ok) return 0;
    }
    const char *fmt = tg_json_str(tg_json_get(s, "format"), NULL);
    switch (tg_json_type(v)) {
    case TG_JSON_NUMBER: {
        const char *t = tg_json_num_text(v, NULL);
        if (!isfinite(strtod(t, NULL))) return 0; /* Infinity to a reader of doubles (JSON.parse) */
        static const char *const KW[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"};
        int x4[2] = {0, 0};
        for (int i = 2; i < 4; i++) tg_json_bool(tg_json_get(s, KW[i]), &x4[i - 2]);
        for (int i = 0; i < 4; i++) {
            const char *bt = tg_json_num_text(tg_json_get(s, KW[i]), NULL);
            if (!bt) continue;
            int c = fz_num_cmp(t, bt), ex = i >= 2 || x4[i];
            if (i % 2 == 0 ? (c < 0 || (ex && c == 0)) : (c > 0 || (ex && c == 0))) return 0;
        }
        const char *m = tg_json_num_text(tg_json_get(s, "multipleOf"), NULL);
        if (m && !fz_multiple(t, m)) return 0;
        if (fmt && !fz_num_format(fmt, t)) return 0;
        return 1;
    }
    case TG_JSON_STRING: {
        size_t n;
        const char *t = tg_json_str(v, &n);
        int64_t lim;
        size_t c = fz_chars(t, n);
        if (!tg_json_int64(tg_json_get(s, "minLength"), &lim) && (int64_t)c < lim) return 0;
        if (!tg_json_int64(tg_json_get(s, "maxLength"), &lim) && (int64_t)c > lim) return 0;
        if (fmt && !fz_format(fmt, t, n)) return 0;
        if (!fmt && tg_json_get(s, "pattern")) { /* zod's z.iso.time() patterns: a time without offset */
            const char *p = tg_json_str(tg_json_get(s, "pattern"), NULL);
            if (p && !fz_time(t, n, 0) && !fz_time(t, n, -1)) return 0;
        }
        return 1;
    }
    case TG_JSON_ARRAY: {
        int64_t lim, cnt = (int64_t)tg_json_len(v);
        if (!tg_json_int64(tg_json_get(s, "minItems"), &lim) && cnt < lim) return 0;
        if (!tg_json_int64(tg_json_get(s, "maxItems"), &lim) && cnt > lim) return 0;
        const tg_json_t *pre = tg_json_get(s, "prefixItems"), *items = tg_json_get(s, "items");
        const tg_json_t *rest = items;
        if (tg_json_type(items) == TG_JSON_ARRAY) pre = items, rest = tg_json_get(s, "additionalItems");
        const tg_json_t *p = tg_json_first(pre);
        TG_JSON_FOREACH(x, v) {
            if (p) {
                if (!fz_valid(root, p, x, depth + 1)) return 0;
                p = tg_json_next(p);
            } else if (rest && !fz_valid(root, rest, x, depth + 1)) {
                return 0;
            }
        }
        return 1;
    }
    case TG_JSON_OBJECT: {
        const tg_json_t *props = tg_json_get(s, "properties"), *add = tg_json_get(s, "additionalProperties");
        size_t dl;
        const char *dup = tg_json_dup_key(v, &dl, NULL);
        /* a property twice: strict readers take one of the values; two other members of one name, each
         * valid, are the documented leniency (api/README.md: the grammar keeps no set of names) */
        if (dup && tg_json_getn(props, dup, dl)) return 0;
        TG_JSON_FOREACH(x, v) {
            size_t kl;
            const char *key = tg_json_key(x, &kl);
            const tg_json_t *ps = tg_json_getn(props, key, kl);
            if (ps ? !fz_valid(root, ps, x, depth + 1) : add && !fz_valid(root, add, x, depth + 1)) return 0;
        }
        TG_JSON_FOREACH(x, tg_json_get(s, "required")) {
            size_t kl;
            const char *key = tg_json_str(x, &kl);
            if (key && !tg_json_getn(v, key, kl)) return 0;
        }
        return 1;
    }
    default: return 1;
    }
}

/* ---- the request and the walk ------------------------------------------------------ */

/* ---- schemas written from the input's bytes --------------------------------------------
 * With byte 0's high bit set, the schema is not the input's text but written
 * by fz_gen from the bytes that follow the budget: every keyword of the
 * subset, names and values chosen to collide (shared prefixes, U+2028, "",
 * escapes), bounds near their edges.  Most such schemas compile, so the walk
 * (the part a text mutation rarely reaches) gets most of the time. */

typedef struct {
    const uint8_t *p, *end;
} fz_rd_t;

static unsigned fz_byte(fz_rd_t *r) { return r->p < r->end ? *r->p++ : 0; }

static const char *const FZ_NAMES[] = {
    "\"a\"", "\"ab\"", "\"abc\"", "\"\"", "\"\\u2028\"", "\"a\\\"b\"", "\"\\u00e9\"", "\"b\"", "\"x y\"", "\"aa\"",
    "\"\\\\u2028\"", "\"\\u0000\"", "\"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\"", "\"\xe2\x80\xa9\"",
    "\"1\"", "\"12\"",
};
static const char *const FZ_VALUES[] = {
    "1", "12", "-0", "1.5", "1e2", "0.1", "null", "true", "false", "\"\"", "\"a\"", "\"ab\"", "\"abc\"",
    "\"\\u2028\"", "{\"k\":[1]}", "[]", "{}", "[1,\"a\"]", "\"xxxxxxxxxxxxxxxxxxxxxxxx1\"", "\"xxxxxxxxxxxxxxxxxxxxxxxx2\"",
    "-9007199254740991", "18446744073709551615", "1e-9", "\"\\\\\"",
};
static const char *const FZ_NUMS[] = {
    "0", "1", "-1", "0.5", "-0.5", "3", "10", "0.001", "1e-9", "255", "2147483647", "-2147483648", "1e18", "1.5e3",
    "9007199254740991", "0.1", "100", "-273.15", "7", "1e300",
};
static const char *const FZ_FORMATS[] = {"date", "time", "date-time", "uuid", "email", "hostname", "ipv4",
                                         "ipv6", "duration", "int32", "uint64", "float32"};
static const char *const FZ_TYPES[] = {"string", "integer", "number", "boolean", "null", "array", "object"};

#define FZ_PICK(r, a) a[fz_byte(r) % (sizeof a / sizeof a[0])]

static int fz_strict; /* a strict tool's parameters: objects closed, every member required */

static void fz_gen(fz_rd_t *r, tg_buf_t *b, int depth, int root, int ndefs);

static void fz_gen_obj(fz_rd_t *r, tg_buf_t *b, int depth, int ndefs) {
    unsigned f = fz_byte(r);
    int np = (int)(f % 6), req[6] = {0};
    const char *names[6];
    tg_buf_puts(b, "\"type\":\"object\"");
    if (np || (f & 0x40)) {
        tg_buf_puts(b, ",\"properties\":{");
        int k = 0;
        for (int i = 0; i < np; i++) {
            const char *n = FZ_PICK(r, FZ_NAMES);
            int dup = 0;
            for (int j = 0; j < k; j++) dup |= !strcmp(names[j], n);
            if (dup) continue;
            names[k] = n;
            req[k] = fz_byte(r) & 1;
            tg_buf_puts(b, k ? "," : ""), tg_buf_puts(b, n), tg_buf_puts(b, ":");
            fz_gen(r, b, depth + 1, 0, ndefs);
            k++;
        }
        tg_buf_puts(b, "},\"required\":[");
        for (int i = 0, c = 0; i < k; i++)
            if (req[i] || (f & 0x80) || fz_strict) tg_buf_puts(b, c++ ? "," : ""), tg_buf_puts(b, names[i]);
        tg_buf_puts(b, "]");
    }
    switch (fz_strict ? 0 : (f >> 3) & 3) {
    case 0: tg_buf_puts(b, ",\"additionalProperties\":false"); break;
    case 1: tg_buf_puts(b, ",\"additionalProperties\":"), fz_gen(r, b, depth + 1, 0, ndefs); break;
    case 2: tg_buf_puts(b, ",\"additionalProperties\":true"); break;
    default: break;
    }
}

static void fz_gen(fz_rd_t *r, tg_buf_t *b, int depth, int root, int ndefs) {
    unsigned k = root ? 8 : depth >= 5 ? fz_byte(r) % 7 : fz_byte(r) % 13, f = fz_byte(r);
    char t[64];
    tg_buf_puts(b, "{");
    switch (k) {
    case 0: /* string */
        tg_buf_puts(b, "\"type\":\"string\"");
        if (f & 1) snprintf(t, sizeof t, ",\"minLength\":%u", fz_byte(r) % 8), tg_buf_puts(b, t);
        if (f & 2) snprintf(t, sizeof t, ",\"maxLength\":%u", fz_byte(r) % 8), tg_buf_puts(b, t);
        if ((f & 12) == 4) tg_buf_puts(b, ",\"format\":\""), tg_buf_puts(b, FZ_PICK(r, FZ_FORMATS)), tg_buf_puts(b, "\"");
        break;
    case 1: /* integer */
    case 2: /* number */
        tg_buf_puts(b, k == 1 ? "\"type\":\"integer\"" : "\"type\":\"number\"");
        if ((f & 3) == 1) tg_buf_puts(b, ",\"minimum\":"), tg_buf_puts(b, FZ_PICK(r, FZ_NUMS));
        if ((f & 3) == 2) tg_buf_puts(b, ",\"maximum\":"), tg_buf_puts(b, FZ_PICK(r, FZ_NUMS));
        if ((f & 12) == 4) tg_buf_puts(b, ",\"exclusiveMinimum\":"), tg_buf_puts(b, FZ_PICK(r, FZ_NUMS));
        if ((f & 12) == 8) tg_buf_puts(b, ",\"exclusiveMaximum\":"), tg_buf_puts(b, FZ_PICK(r, FZ_NUMS));
        if ((f & 48) == 16) tg_buf_puts(b, ",\"multipleOf\":"), tg_buf_puts(b, FZ_PICK(r, FZ_NUMS));
        if ((f & 192) == 64) tg_buf_puts(b, ",\"format\":\""), tg_buf_puts(b, FZ_PICK(r, FZ_FORMATS)), tg_buf_puts(b, "\"");
        break;
    case 3: tg_buf_puts(b, "\"type\":\"boolean\""); break;
    case 4: tg_buf_puts(b, "\"type\":\"null\""); break;
    case 5: /* enum */
    case 6: { /* const */
        int n = k == 6 ? 1 : 1 + (int)(f % 5);
        tg_buf_puts(b, k == 6 ? "\"const\":" : "\"enum\":[");
        for (int i = 0; i < n; i++) tg_buf_puts(b, i ? "," : ""), tg_buf_puts(b, FZ_PICK(r, FZ_VALUES));
        if (k == 5) tg_buf_puts(b, "]");
        break;
    }
    case 7: /* array */
        tg_buf_puts(b, "\"type\":\"array\"");
        if (f & 1) {
            int n = 1 + (int)(fz_byte(r) % 3);
            tg_buf_puts(b, ",\"prefixItems\":[");
            for (int i = 0; i < n; i++) tg_buf_puts(b, i ? "," : ""), fz_gen(r, b, depth + 1, 0, ndefs);
            tg_buf_puts(b, "]");
        }
        if (f & 2) tg_buf_puts(b, ",\"items\":"), fz_gen(r, b, depth + 1, 0, ndefs);
        else if (f & 4) tg_buf_puts(b, ",\"items\":false");
        if (f & 8) snprintf(t, sizeof t, ",\"minItems\":%u", fz_byte(r) % 5), tg_buf_puts(b, t);
        if (f & 16) snprintf(t, sizeof t, ",\"maxItems\":%u", fz_byte(r) % 5), tg_buf_puts(b, t);
        break;
    case 8: fz_gen_obj(r, b, depth, ndefs); break;
    case 9: { /* anyOf */
        int n = 1 + (int)(f % 3);
        tg_buf_puts(b, "\"anyOf\":[");
        for (int i = 0; i < n; i++) tg_buf_puts(b, i ? "," : ""), fz_gen(r, b, depth + 1, 0, ndefs);
        tg_buf_puts(b, ",{\"type\":\"null\"}]");
        break;
    }
    case 10: /* a list of types */
        tg_buf_puts(b, "\"type\":[\""), tg_buf_puts(b, FZ_PICK(r, FZ_TYPES)), tg_buf_puts(b, "\",\"null\"]");
        break;
    case 11: /* a $ref */
        if (ndefs) snprintf(t, sizeof t, "\"$ref\":\"#/$defs/D%u\"", f % (unsigned)ndefs);
        else snprintf(t, sizeof t, "\"type\":\"null\"");
        tg_buf_puts(b, t);
        break;
    default: /* allOf of one */
        tg_buf_puts(b, "\"allOf\":["), fz_gen(r, b, depth + 1, 0, ndefs), tg_buf_puts(b, "]");
        break;
    }
    tg_buf_puts(b, "}");
}

/* The schema the bytes r describe: an object root, with 0-2 $defs. */
static char *fz_gen_schema(fz_rd_t *r, size_t *len) {
    tg_buf_t b = {0};
    int ndefs = (int)(fz_byte(r) % 3);
    tg_buf_puts(&b, "{");
    if (ndefs) {
        tg_buf_puts(&b, "\"$defs\":{");
        for (int i = 0; i < ndefs; i++) {
            char t[16];
            snprintf(t, sizeof t, "%s\"D%d\":", i ? "," : "", i);
            tg_buf_puts(&b, t);
            fz_gen(r, &b, 2, 0, 0); /* defs refer to no defs: no recursion */
        }
        tg_buf_puts(&b, "},");
    }
    tg_buf_t root = {0};
    fz_gen(r, &root, 0, 1, ndefs);
    tg_buf_put(&b, root.p + 1, root.len - 1); /* the root's members after the $defs */
    tg_buf_free(&root);
    *len = b.len;
    return b.p;
}

/* The body of mode m around schema text s (n bytes). */
static char *fz_body(int m, const char *s, size_t n) {
    static const char *const PRE[] = {
        "",
        ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"fz\",\"schema\":",
        ",\"tool_choice\":\"required\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"fz\",\"strict\":true,"
        "\"parameters\":",
        ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"fz\",\"schema\":",
        ",\"parallel_tool_calls\":false,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"fz\"}},"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"fz\",\"strict\":true,\"parameters\":",
    };
    static const char PLAIN_TOOL[] = "{\"type\":\"function\",\"function\":{\"name\":\"fy\",\"parameters\":{\"type\":\"object\"}}}";
    tg_buf_t b = {0};
    tg_buf_puts(&b, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]");
    tg_buf_puts(&b, PRE[m]);
    if (m == 0) {
        tg_buf_puts(&b, ",\"response_format\":{\"type\":\"json_object\"}}");
        return b.p;
    }
    tg_buf_put(&b, s, n);
    if (m == 1) tg_buf_puts(&b, "}}}");
    else if (m == 2) tg_buf_puts(&b, "}},"), tg_buf_puts(&b, PLAIN_TOOL), tg_buf_puts(&b, "]}");
    else if (m == 3) {
        tg_buf_puts(&b, "}},\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"fz\",\"strict\":true,\"parameters\":");
        tg_buf_put(&b, s, n);
        tg_buf_puts(&b, "}},"), tg_buf_puts(&b, PLAIN_TOOL), tg_buf_puts(&b, "]}");
    } else tg_buf_puts(&b, "}}]}");
    return b.p;
}

/* The grammar of r, as eng_server.c's chat_constraint builds it. */
static eng_gram_t *fz_gram(const api_chat_req_t *r) {
    int32_t eos = tok_eos(T);
    int json = r->format != API_FORMAT_TEXT;
    const api_schema_t *sc = r->format == API_FORMAT_JSON_SCHEMA ? &r->schema : NULL;
    int tools = r->n_tools && r->tool_choice != API_TOOL_CHOICE_NONE;
    const char *names[API_MAX_TOOLS];
    size_t lens[API_MAX_TOOLS];
    int roots[API_MAX_TOOLS];
    int n = 0;
    for (size_t i = 0; tools && i < r->n_tools; i++) {
        if (r->tool_choice == API_TOOL_CHOICE_NAMED && (int)i != r->tool_named) continue;
        names[n] = r->tools[i].name, roots[n] = r->tools[i].root, lens[n++] = r->tools[i].name_len;
    }
    int parallel = r->parallel_tool_calls && r->tool_choice != API_TOOL_CHOICE_NAMED;
    if (tools && r->tool_choice != API_TOOL_CHOICE_AUTO)
        return eng_gram_tools(V, eos, &IDS, names, lens, n, parallel, roots, &r->tool_schema);
    if (tools) return eng_gram_auto(V, eos, &IDS, names, lens, n, parallel, json, sc, roots, &r->tool_schema);
    if (sc) return eng_gram_schema(V, eos, sc);
    if (json) return eng_gram_json(V, eos);
    return eng_gram_auto(V, eos, &IDS, NULL, NULL, 0, 0, 0, NULL, NULL, NULL);
}

/* The allowed id after which the fewest bytes are left (EOS first). */
static int32_t fz_greedy(eng_gram_t *g, int count) {
    int32_t best = ALLOWED[0];
    int bc = 1 << 30;
    for (int i = 0; i < count; i++) {
        int32_t id = ALLOWED[i];
        if (id == tok_eos(T)) return id;
        eng_gram_t c = *g;
        if (eng_gram_accept(&c, id)) __builtin_trap(); /* allowed, refused */
        int k = eng_gram_close_cost(&c);
        if (k < bc) bc = k, best = id;
    }
    return best;
}

/* The answer's JSON (a JSON object) valid against the schema doc (NULL: any object). */
/* Every number in v finite as a double. */
static int fz_finite(const tg_json_t *v) {
    const tg_json_t *x;
    if (tg_json_type(v) == TG_JSON_NUMBER) return isfinite(strtod(tg_json_num_text(v, NULL), NULL));
    TG_JSON_FOREACH(x, v) if (!fz_finite(x)) return 0;
    return 1;
}

static void fz_check_json(const char *s, size_t n, const tg_json_t *doc) {
    tg_json_t *j = tg_json_parse(s, n, NULL, NULL);
    if (!j || tg_json_type(j) != TG_JSON_OBJECT) __builtin_trap(); /* not strict JSON */
    if (doc && !fz_valid(doc, doc, j, 0)) __builtin_trap();        /* not valid against the schema */
    if (!fz_finite(j)) __builtin_trap();                           /* a number a double reader makes Infinity */
    tg_json_free(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!T) fz_init();
    if (size < 2) return 0;
    int mode = data[0] % 5, bb = data[1];
    int budget = bb < 192 ? bb + 1 : bb < 255 ? 64 * (bb - 191) : FZ_MAX_STEPS;
    const char *s = (const char *)data + 2;
    size_t rest = size - 2, sl;
    const uint8_t *ch, *ch_end = data + size;
    char *gen = NULL;
    if (data[0] & 0x80) { /* the schema written from the bytes; the rest are the choices */
        fz_rd_t rd = {data + 2, data + size};
        fz_strict = mode >= 2;
        s = gen = fz_gen_schema(&rd, &sl);
        ch = rd.p;
    } else {
        const uint8_t *nul = memchr(s, 0, rest);
        sl = nul ? (size_t)((const char *)nul - s) : rest;
        ch = nul ? nul + 1 : data + size;
    }
    if (getenv("FUZZ_GRAM_VERBOSE") && gen) fprintf(stderr, "schema: %.*s\n", (int)sl, s);

    char *body = fz_body(mode, s, sl);
    if (!body) {
        free(gen);
        return 0;
    }
    api_chat_req_t r;
    api_err_t e;
    if (api_chat_req_parse(&r, body, strlen(body), &e)) {
        char *j = api_err_json(&e);
        tg_json_t *ej = j ? tg_json_parse(j, strlen(j), NULL, NULL) : NULL;
        const tg_json_t *eo = tg_json_get(ej, "error");
        if (!ej || e.status < 400 || e.status > 499 || !tg_json_str(tg_json_get(eo, "message"), NULL) ||
            !tg_json_str(tg_json_get(eo, "type"), NULL) || !tg_json_get(eo, "param") || !tg_json_get(eo, "code"))
            __builtin_trap();
        /* a body that is JSON is refused with the field named */
        tg_json_t *bj = tg_json_parse(body, strlen(body), NULL, NULL);
        if (bj && e.status == 400 && !e.param[0]) __builtin_trap();
        tg_json_free(bj);
        if (getenv("FUZZ_GRAM_VERBOSE")) fprintf(stderr, "refused: %d %s (%s)\n", e.status, e.message, e.param);
        tg_json_free(ej);
        free(j);
        free(body);
        free(gen);
        return 0;
    }
    /* the schema as the client sent it, for the validator */
    tg_json_t *doc = mode ? tg_json_parse(s, sl, NULL, NULL) : NULL;
    if (mode && !doc) __builtin_trap(); /* the reader took a body whose schema is not JSON */

    eng_gram_t *g = fz_gram(&r);
    if (!g) __builtin_trap(); /* the reader took it, the grammar refused it: a 500 */
    int32_t nv = tok_n_vocab(T), eos = tok_eos(T);
    int need = eng_gram_close_cost(g) + 1, ended = 0, steps = 0, greedy = 0;
    tg_buf_t out = {0};
    for (; steps < budget; steps++) {
        for (int32_t i = 0; i < nv; i++) LG[i] = 0;
        int allowed = eng_gram_mask(g, budget - steps, LG, nv), count = 0;
        for (int32_t i = 0; i < nv; i++)
            if (isfinite(LG[i])) ALLOWED[count++] = i;
        if (allowed != count || !count) __builtin_trap(); /* a dead end, or a count that lies */
        int32_t id;
        if (ch + 2 <= ch_end) {
            id = ALLOWED[(ch[0] | ch[1] << 8) % count];
            ch += 2;
        } else {
            /* past the choices: toward the shortest close; with no complete answer in the budget,
             * a few steps of validity only are enough */
            if (need > budget && ++greedy > 64) break;
            id = fz_greedy(g, count);
        }
        if (id == eos) {
            ended = 1;
            steps++;
            break;
        }
        if (eng_gram_accept(g, id)) __builtin_trap(); /* the mask allowed what accept refuses */
        if (getenv("FUZZ_GRAM_TRACE")) {
            size_t tn;
            const char *tb = tok_token_bytes(T, id, &tn);
            fprintf(stderr, "step %d left %d allowed %d cost %d: %.*s\n", steps, budget - steps, count,
                    eng_gram_close_cost(g), (int)tn, tb);
        }
        size_t n;
        const char *b = tok_token_bytes(T, id, &n);
        if (b) tg_buf_put(&out, b, n);
    }
    if (getenv("FUZZ_GRAM_VERBOSE"))
        fprintf(stderr, "mode %d budget %d need %d steps %d %s: %.*s\n", mode, budget, need, steps,
                ended ? "eos" : "length", (int)out.len, out.p ? out.p : "");
    if (need <= budget && !ended) __builtin_trap(); /* the budget covered an answer and it did not end */
    if (ended) {
        const char *text = out.p ? out.p : "";
        size_t tl = out.len;
        static const char CALLS[] = "<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81" "begin\xef\xbd\x9c>";
        int in_tools = r.n_tools && (r.tool_choice != API_TOOL_CHOICE_AUTO ||
                                     (tl >= sizeof CALLS - 1 && !memcmp(text, CALLS, sizeof CALLS - 1)));
        if (in_tools) {
            eng_tool_call_t *calls = NULL;
            size_t nc = 0;
            int k = eng_tool_calls_parse(text, tl, &calls, &nc);
            if (k < 1) __builtin_trap(); /* a tool answer without a complete call */
            for (size_t i = 0; i < nc; i++) {
                int strict = !strcmp(calls[i].name, "fz");
                if (!strict && strcmp(calls[i].name, "fy")) __builtin_trap(); /* a name not asked for */
                fz_check_json(calls[i].arguments, calls[i].arguments_len, strict ? doc : NULL);
            }
            eng_tool_calls_free(calls, nc);
        } else if (r.format != API_FORMAT_TEXT) {
            fz_check_json(text, tl, r.format == API_FORMAT_JSON_SCHEMA ? doc : NULL);
        }
    }
    tg_buf_free(&out);
    tg_json_free(doc);
    eng_gram_free(g);
    api_chat_req_free(&r);
    free(body);
    free(gen);
    return 0;
}
