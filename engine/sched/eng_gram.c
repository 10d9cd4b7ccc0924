/* eng_gram.c — the JSON and tool-call grammars of eng_gram.h: a byte state
 * machine (gst_t, small and copied by value), the vocabulary sorted by bytes
 * for the mask walk, and the budget rule.
 *
 * Invariant: a gst_t describes everything the machine needs; feed() either
 * advances it over one byte or refuses without touching it, so the mask walk
 * can keep one state per prefix length and reuse it for every token that
 * shares that prefix.
 *
 * A schema (response_format json_schema) adds to the JSON machine: the node
 * of the value to come (vnode: its types, enum texts), the innermost schema
 * container (snode, and for an object the first property that may still come,
 * sp: members come in the schema's order, optional ones may be skipped), and
 * how many schema-free containers are open inside it (gdepth).  The schema is
 * a tree, so leaving a container goes back to its node's parent, with sp
 * restored from the node's index among the parent's properties: the state
 * stays small and copied by value. */
#include "eng_gram.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- vocabulary index ------------------------------------------------------ */

struct eng_vocab {
    const tok_t *tok;
    int32_t n;         /* ids [0, n) */
    int32_t *order;    /* (n_order) ids of non-added tokens with bytes, sorted by bytes */
    uint16_t *lcp;     /* (n_order) common prefix with the previous id in order */
    int32_t n_order;
    int maxlen;
};

/* qsort has no context argument (qsort_r differs between libcs): the
 * tokenizer being sorted, under a lock so that two indexes may be built at once */
static const tok_t *sort_tok;
static pthread_mutex_t sort_mu = PTHREAD_MUTEX_INITIALIZER;

static int cmp_bytes(const void *a, const void *b) {
    size_t la, lb;
    const char *sa = tok_token_bytes(sort_tok, *(const int32_t *)a, &la);
    const char *sb = tok_token_bytes(sort_tok, *(const int32_t *)b, &lb);
    int c = memcmp(sa, sb, la < lb ? la : lb);
    if (c) return c;
    if (la != lb) return la < lb ? -1 : 1;
    return *(const int32_t *)a < *(const int32_t *)b ? -1 : 1;
}

eng_vocab_t *eng_vocab_new(const tok_t *t, int32_t n) {
    eng_vocab_t *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->tok = t;
    v->n = n < tok_n_vocab(t) ? n : tok_n_vocab(t);
    v->order = malloc((size_t)(v->n > 0 ? v->n : 1) * sizeof *v->order);
    v->lcp = malloc((size_t)(v->n > 0 ? v->n : 1) * sizeof *v->lcp);
    if (!v->order || !v->lcp) {
        eng_vocab_free(v);
        return NULL;
    }
    for (int32_t id = 0; id < v->n; id++) {
        size_t len;
        if (tok_is_added(t, id) || !tok_token_bytes(t, id, &len) || !len || len > 60000) continue;
        v->order[v->n_order++] = id;
        if ((int)len > v->maxlen) v->maxlen = (int)len;
    }
    pthread_mutex_lock(&sort_mu);
    sort_tok = t;
    qsort(v->order, (size_t)v->n_order, sizeof *v->order, cmp_bytes);
    sort_tok = NULL;
    pthread_mutex_unlock(&sort_mu);
    for (int32_t i = 0; i < v->n_order; i++) {
        size_t la = 0, lb = 0, k = 0;
        const char *a = i ? tok_token_bytes(t, v->order[i - 1], &la) : "";
        const char *b = tok_token_bytes(t, v->order[i], &lb);
        while (k < la && k < lb && a[k] == b[k]) k++;
        v->lcp[i] = (uint16_t)k;
    }
    return v;
}

void eng_vocab_free(eng_vocab_t *v) {
    if (!v) return;
    free(v->order);
    free(v->lcp);
    free(v);
}

int eng_tool_ids(const tok_t *t, eng_tool_ids_t *ids) {
    ids->calls_begin = tok_id(t, "<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81" "begin\xef\xbd\x9c>");
    ids->calls_end = tok_id(t, "<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81" "end\xef\xbd\x9c>");
    ids->call_begin = tok_id(t, "<\xef\xbd\x9ctool\xe2\x96\x81" "call\xe2\x96\x81" "begin\xef\xbd\x9c>");
    ids->call_end = tok_id(t, "<\xef\xbd\x9ctool\xe2\x96\x81" "call\xe2\x96\x81" "end\xef\xbd\x9c>");
    ids->sep = tok_id(t, "<\xef\xbd\x9ctool\xe2\x96\x81" "sep\xef\xbd\x9c>");
    static const char *const MARKS[] = { /* every tool marker of DeepSeek-V3's vocabulary */
        "calls\xe2\x96\x81" "begin", "calls\xe2\x96\x81" "end", "call\xe2\x96\x81" "begin",
        "call\xe2\x96\x81" "end", "outputs\xe2\x96\x81" "begin", "outputs\xe2\x96\x81" "end",
        "output\xe2\x96\x81" "begin", "output\xe2\x96\x81" "end", "sep",
    };
    ids->n_marks = 0;
    for (size_t i = 0; i < sizeof MARKS / sizeof MARKS[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "<\xef\xbd\x9ctool\xe2\x96\x81%s\xef\xbd\x9c>", MARKS[i]);
        int32_t id = tok_id(t, name);
        if (id >= 0) ids->marks[ids->n_marks++] = id;
    }
    return ids->calls_begin >= 0 && ids->calls_end >= 0 && ids->call_begin >= 0 && ids->call_end >= 0 &&
                   ids->sep >= 0
               ? 0
               : -1;
}

/* ---- the machine --------------------------------------------------------------- */

enum { /* program elements */
    E_CALLS_BEGIN, E_CALL_BEGIN, E_FUNCTION, E_SEP, E_NAME, E_FENCE, E_JSON, E_FENCE_END, E_CALL_END,
    E_NEXT,        /* <｜tool▁calls▁end｜>, or "\n" before another call */
    E_CALL_BEGIN2, /* <｜tool▁call▁begin｜> of a further call */
    E_EOS,
    E_TEXT,        /* free text; the tool-call block may open (with names); other tool markers banned */
    E_ALT,         /* a JSON answer, or the tool-call block */
};

enum { /* JSON states */
    J_TOP, J_OBJ_FIRST, J_OBJ_KEY, J_COLON, J_VALUE, J_ARR_FIRST, J_AFTER, J_STR, J_ESC, J_HEX, J_NUM, J_LIT,
    J_DONE, /* the top-level value is complete */
    J_KEY,  /* a schema object's member name, matched against its properties (cand, lpos) */
    J_ENUM, /* a schema enum value, matched against its texts (cand, lpos) */
    J_XKEY, /* a schema object's member name that may also be another's (additionalProperties a schema):
             * cand the properties it may still be, xall every property it still starts like */
};

enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };

#define MAX_DEPTH 32
/* A number the schema does not bound: at most 20 digits before the point and
 * 20 after, an exponent of at most 2 digits, so that a reader of doubles
 * gets a finite number, nonzero when it is (a 400-digit integer is Infinity
 * to JavaScript's JSON.parse, 1e999 too); a sampled number otherwise runs on
 * while digits stay likely. */
#define NUM_DIGITS 20
#define NUM_EXP_DIGITS 2
#define MAX_WS 24
#define MAX_CALLS 16

static const char LIT_FUNCTION[] = "function";
static const char LIT_FENCE[] = "\n```json\n";
static const char LIT_FENCE_END[] = "\n```";
static const char *const LITS[] = {"true", "false", "null"};

typedef struct {
    union {
        uint64_t cand;  /* J_KEY, J_ENUM: bit i: candidate i still matches */
        api_num_t nst;  /* J_NUM with nbd: the number so far against its bounds */
        api_fmt_t fst;  /* J_STR of a value with a "format": where in it (api_fmt.c) */
    };
    uint64_t xall;  /* J_XKEY: bit i: the name so far starts property i's (which it must not equal) */
    uint32_t stack; /* bit d: the container at depth d+1 is an object */
    uint16_t pos, nlo, nhi;
    uint16_t lpos;  /* J_KEY, J_ENUM: bytes matched */
    int32_t close;  /* bytes that close the open containers (a schema object's required members included) */
    int16_t snode;  /* schema: the innermost schema container (-1: none) */
    int16_t vnode;  /* schema: the node of the value to come (-1: any value) */
    uint8_t el, js, num, lit, litpos, depth, u8need, u8lo, u8hi, hex, hexd, ws, skey, ncalls;
    uint8_t sp;     /* schema object: the first property that may still come */
    uint8_t gdepth; /* schema-free containers open inside the innermost schema one */
    uint8_t nint;   /* J_NUM: an integer (no fraction, no exponent) */
    uint8_t intool; /* inside the tool-call block */
    uint8_t schema; /* the JSON value follows a schema (response_format's, or a strict tool's parameters) */
    uint8_t nbd;    /* J_NUM: the number's node has bounds (nst follows it) */
    uint8_t nacnt;  /* schema arrays with minItems/maxItems open: acnt[0 .. nacnt) */
    uint8_t sfl;    /* J_STR of a schema string value: SF_FMT (its node has a format), SF_LEN (length bounds) */
    uint16_t slen;  /* J_STR of a schema string value: characters so far (saturating) */
    uint16_t acnt[API_SCHEMA_MAX_ADEPTH]; /* their elements so far, innermost last (saturating) */
} gst_t; /* copied once per byte of the mask walk: kept small */

enum { SF_FMT = 1, SF_LEN = 2 }; /* gst_t.sfl: set when a string value starts, so a byte of text looks at no node */

typedef enum { G_JSON, G_TOOLS, G_TEXT } gkind_t;

struct eng_gram {
    const eng_vocab_t *v;
    gkind_t kind;
    int32_t eos;
    eng_tool_ids_t ids;
    char **names; /* sorted */
    size_t *name_len;
    int *name_root;  /* per name: the root node of its arguments' schema in sc (strict), or -1: any object */
    int *name_args;  /* per name: bytes of its shortest arguments */
    int n_names, parallel, min_call; /* min_call: bytes of the shortest name and its arguments */
    /* Schemas in one table (api_schema_append): response_format json_schema's
     * (its root rf_root, or -1) and the strict tools' (name_root).  Per object
     * node the bytes its still-required members need (rtail) and the cheapest
     * member that may come next (mmin), both indexed by roff[node] + the next
     * property */
    int rf_root;
    api_schema_t sc;
    int32_t *roff, *rtail, *mmin;
    gst_t st;
    gst_t *stk;   /* (maxlen + 1) states of the mask walk */
    uint8_t *allow;
};

static int is_ws(unsigned c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* j over the set bits of the 64-bit mask m, lowest first (candidate
 * properties and enum values: most are out after a byte or two, and a mask
 * walk feeds a byte per token) */
#define FOR_BITS(j, m) for (uint64_t m_ = (m); m_ && ((j) = __builtin_ctzll(m_), 1); m_ &= m_ - 1)

static int sch(const eng_gram_t *g, const gst_t *s) { return s->schema; }
/* The innermost container is a schema object or array (not a schema-free one). */
static int in_schema(const eng_gram_t *g, const gst_t *s) { return sch(g, s) && !s->gdepth && s->snode >= 0; }

static const api_schema_node_t *node(const eng_gram_t *g, int i) { return &g->sc.nodes[i]; }
static const api_schema_prop_t *prop(const eng_gram_t *g, int n, int j) {
    return &g->sc.props[g->sc.nodes[n].prop0 + j];
}
/* Bytes closing schema object n when property p is the next that may come. */
static int obj_close(const eng_gram_t *g, int n, int p) { return g->rtail[g->roff[n] + p] + 1; }

static int top_is_obj(const gst_t *s) { return s->depth && (s->stack >> (s->depth - 1) & 1); }

/* Bytes the elements still owed to bounded array n need, cnt written: the
 * shortest of each up to its minItems (a tuple's each its own), the commas
 * between (the first has none). */
static int arr_rest(const eng_gram_t *g, int n, int cnt) {
    if (cnt >= node(g, n)->min_items) return 0;
    return api_schema_elems_len(&g->sc, n, cnt, node(g, n)->min_items);
}

/* The innermost container is a bounded schema array (its count: acnt[nacnt - 1]). */
static int in_barr(const eng_gram_t *g, const gst_t *s) {
    return in_schema(g, s) && !top_is_obj(s) && api_schema_arr_bounded(node(g, s->snode));
}

/* One more element of the bounded array on top: 0, or -1 past maxItems. */
static int arr_elem(const eng_gram_t *g, gst_t *s) {
    const api_schema_node_t *nd = node(g, s->snode);
    uint16_t *cnt = &s->acnt[s->nacnt - 1];
    if (nd->max_items >= 0 && *cnt >= nd->max_items) return -1;
    s->close -= arr_rest(g, s->snode, *cnt) - arr_rest(g, s->snode, *cnt + 1);
    if (*cnt < API_SCHEMA_COUNT_MAX) ++*cnt;
    return 0;
}

/* The schema node of the string value being written with bounds on its length, or NULL. */
static const api_schema_node_t *str_node(const eng_gram_t *g, const gst_t *s) {
    return s->sfl & SF_LEN ? node(g, s->vnode) : NULL;
}

/* The node of the string value being written when it has a "format", or NULL. */
static const api_schema_node_t *fmt_node(const eng_gram_t *g, const gst_t *s) {
    return s->sfl & SF_FMT ? node(g, s->vnode) : NULL;
}

/* Characters a bounded string still owes (minLength). */
static int str_rest(const eng_gram_t *g, const gst_t *s) {
    const api_schema_node_t *nd = str_node(g, s);
    return nd && s->slen < nd->min_chars ? nd->min_chars - s->slen : 0;
}

/* A UTF-8 lead byte c of a string's text: the range of the next byte set
 * (no overlongs, no surrogates); 0, or -1 when c leads no character. */
static int u8_lead(gst_t *s, unsigned c) {
    if (c >= 0xC2 && c <= 0xDF) s->u8need = 1, s->u8lo = 0x80, s->u8hi = 0xBF;
    else if (c == 0xE0) s->u8need = 2, s->u8lo = 0xA0, s->u8hi = 0xBF;
    else if (c == 0xED) s->u8need = 2, s->u8lo = 0x80, s->u8hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) s->u8need = 2, s->u8lo = 0x80, s->u8hi = 0xBF;
    else if (c == 0xF0) s->u8need = 3, s->u8lo = 0x90, s->u8hi = 0xBF;
    else if (c >= 0xF1 && c <= 0xF3) s->u8need = 3, s->u8lo = 0x80, s->u8hi = 0xBF;
    else if (c == 0xF4) s->u8need = 3, s->u8lo = 0x80, s->u8hi = 0x8F;
    else return -1;
    return 0;
}

/* The schema object on top may take a member other than its properties now:
 * its additionalProperties is a schema and no required property is left. */
static int extra_ok(const eng_gram_t *g, const gst_t *s) {
    return node(g, s->snode)->extra >= 0 && !g->rtail[g->roff[s->snode] + s->sp];
}

/* JSON: a value is complete. */
static void value_done(gst_t *s) { s->js = s->depth ? J_AFTER : J_DONE; }

static int json_feed(const eng_gram_t *g, gst_t *s, unsigned c);

/* One byte of an enum value; 0 or -1. */
static int enum_feed(const eng_gram_t *g, gst_t *s, unsigned c) {
    const api_schema_node_t *nd = node(g, s->vnode);
    uint64_t nc = 0;
    int complete = 0, j;
    FOR_BITS(j, s->cand) {
        const api_schema_lit_t *l = &g->sc.lits[nd->lit0 + j];
        if (l->len > s->lpos && (unsigned char)g->sc.arena[l->off + s->lpos] == c) nc |= 1ull << j;
        if (l->len == s->lpos) complete = 1;
    }
    if (nc) {
        s->cand = nc;
        s->lpos++;
        return 0;
    }
    if (!complete) return -1;
    value_done(s); /* the value ended before c (a number such as 1 beside 12) */
    if (s->js == J_DONE) return -1;
    return json_feed(g, s, c);
}

/* Start a value with byte c; 0 or -1. */
static int value_start(const eng_gram_t *g, gst_t *s, unsigned c) {
    int vn = sch(g, s) ? s->vnode : -1;
    const api_schema_node_t *nd = vn >= 0 ? node(g, vn) : NULL;
    int types = nd ? nd->types : API_ST_ANY;
    if (nd && nd->n_enum > 0) {
        s->js = J_ENUM;
        s->cand = nd->n_enum == 64 ? ~0ull : (1ull << nd->n_enum) - 1;
        s->lpos = 0;
        return enum_feed(g, s, c);
    }
    if (nd && api_num_bounded(nd) && (types & (API_ST_INT | API_ST_NUM)) && (c == '-' || (c >= '0' && c <= '9'))) {
        s->nst = (api_num_t){0};
        if (api_num_step(nd, &s->nst, c)) return -1;
        s->js = J_NUM, s->nbd = 1;
        return 0;
    }
    s->nbd = 0;
    switch (c) {
    case '"':
        if (!(types & API_ST_STR)) return -1;
        s->js = J_STR, s->skey = 0, s->slen = 0;
        s->sfl = (uint8_t)(nd ? (nd->sfmt ? SF_FMT : 0) | (api_schema_str_bounded(nd) ? SF_LEN : 0) : 0);
        if (s->sfl & SF_FMT) api_fmt_init(nd->sfmt, &s->fst);
        return 0;
    case '{':
    case '[':
        if (!(types & (c == '{' ? API_ST_OBJ : API_ST_ARR)) || s->depth >= MAX_DEPTH) return -1;
        if (c == '{') s->stack |= 1u << s->depth;
        else s->stack &= ~(1u << s->depth);
        s->depth++;
        if (nd && (c == '[' || nd->n_props >= 0)) { /* a schema container */
            s->snode = (int16_t)vn;
            s->sp = 0;
            s->close += c == '{' ? obj_close(g, vn, 0) : 1;
            s->vnode = c == '[' ? (int16_t)api_schema_elem(&g->sc, vn, 0) : -1;
            if (c == '[' && api_schema_arr_bounded(nd)) { /* count its elements */
                if (s->nacnt >= API_SCHEMA_MAX_ADEPTH) return -1;
                s->acnt[s->nacnt++] = 0;
                s->close += arr_rest(g, vn, 0);
            }
        } else { /* any value, or an object with any members: schema-free inside */
            if (sch(g, s)) s->gdepth++;
            s->close++;
            s->vnode = -1;
        }
        s->js = c == '{' ? J_OBJ_FIRST : J_ARR_FIRST;
        return 0;
    case '-': s->js = J_NUM, s->num = N_MINUS, s->litpos = 0; break;
    case '0': s->js = J_NUM, s->num = N_ZERO, s->litpos = 1; break;
    case 't': s->js = J_LIT, s->lit = 0, s->litpos = 1; return types & API_ST_BOOL ? 0 : -1;
    case 'f': s->js = J_LIT, s->lit = 1, s->litpos = 1; return types & API_ST_BOOL ? 0 : -1;
    case 'n': s->js = J_LIT, s->lit = 2, s->litpos = 1; return types & API_ST_NULL ? 0 : -1;
    default:
        if (c < '1' || c > '9') return -1;
        s->js = J_NUM, s->num = N_INT, s->litpos = 1;
        break;
    }
    /* a number */
    if (!(types & (API_ST_INT | API_ST_NUM))) return -1;
    s->nint = !(types & API_ST_NUM);
    return 0;
}

/* Close the innermost container with c ('}' or ']'); 0 or -1. */
static int close_with(const eng_gram_t *g, gst_t *s, unsigned c) {
    if (!s->depth || (c == '}') != top_is_obj(s)) return -1;
    if (in_schema(g, s)) {
        int n = s->snode;
        if (c == '}') {
            if (g->rtail[g->roff[n] + s->sp]) return -1; /* a required member is missing */
            s->close -= obj_close(g, n, s->sp);
        } else {
            if (api_schema_arr_bounded(node(g, n))) { /* minItems met: nothing owed */
                if (s->acnt[s->nacnt - 1] < node(g, n)->min_items) return -1;
                s->nacnt--;
            }
            s->close--;
        }
        const api_schema_node_t *nd = node(g, n);
        s->snode = nd->parent;
        if (nd->pidx >= 0) s->sp = (uint8_t)(nd->pidx + 1);
        else if (nd->parent >= 0 && node(g, nd->parent)->extra == n) /* another member's value: no property after it */
            s->sp = (uint8_t)node(g, nd->parent)->n_props;
        s->vnode = -1;
    } else {
        if (s->gdepth) s->gdepth--;
        s->close--;
    }
    s->depth--;
    value_done(s);
    return 0;
}

/* The properties of the schema object on top that may come next (bits):
 * from sp up to and including the first required one. */
static uint64_t key_cands(const eng_gram_t *g, const gst_t *s) {
    int n = s->snode, np = node(g, n)->n_props;
    uint64_t m = 0;
    for (int j = s->sp; j < np; j++) {
        m |= 1ull << j;
        if (prop(g, n, j)->required) break;
    }
    return m;
}

/* One byte of a schema member name; 0 or -1. */
static int key_feed(const eng_gram_t *g, gst_t *s, unsigned c) {
    int n = s->snode, j;
    uint64_t nc = 0;
    FOR_BITS(j, s->cand) {
        const api_schema_prop_t *p = prop(g, n, j);
        if (p->len > s->lpos && (unsigned char)g->sc.arena[p->off + s->lpos] == c) nc |= 1ull << j;
    }
    if (!nc) return -1;
    s->cand = nc;
    s->lpos++;
    FOR_BITS(j, nc) {
        if (prop(g, n, j)->len != s->lpos) continue;
        /* complete (the closing quote: no other name goes on from here) */
        s->js = J_COLON;
        s->vnode = prop(g, n, j)->node;
        s->close = s->close - obj_close(g, n, s->sp) + obj_close(g, n, j + 1);
        s->sp = (uint8_t)(j + 1);
        break;
    }
    return 0;
}

/* One byte of a member name that is a property's or another (J_XKEY): a
 * property's completes as key_feed has it; another takes any name but the
 * properties' (a value of theirs under the other members' schema would be
 * wrong), not empty, without escapes, UTF-8, at most API_SCHEMA_MAX_LIT bytes,
 * and no property may follow it (sp goes past them); 0 or -1. */
static int xkey_feed(const eng_gram_t *g, gst_t *s, unsigned c) {
    int n = s->snode, np = node(g, n)->n_props;
    uint64_t xall = 0;
    int j;
    FOR_BITS(j, s->xall) {
        const api_schema_prop_t *p = prop(g, n, j);
        if (p->len > s->lpos && (unsigned char)g->sc.arena[p->off + s->lpos] == c) xall |= 1ull << j;
    }
    if (c == '"' && !s->u8need) {
        gst_t t = *s;
        t.js = J_KEY;
        if (t.cand && !key_feed(g, &t, c) && t.js == J_COLON) { /* a property's name */
            *s = t;
            return 0;
        }
        FOR_BITS(j, xall)
            if (prop(g, n, j)->len == s->lpos + 1u) return -1; /* a property's, out of turn */
        if (s->lpos < 2) return -1;
        s->js = J_COLON;
        s->vnode = node(g, n)->extra;
        s->close = s->close - obj_close(g, n, s->sp) + obj_close(g, n, np);
        s->sp = (uint8_t)np;
        return 0;
    }
    if (c == '\\' || c < 0x20 || c == 0x7F || c == '"') { /* only a property's name (an escape of its own) */
        gst_t t = *s;
        t.js = J_KEY;
        if (!t.cand || s->u8need || key_feed(g, &t, c)) return -1;
        *s = t;
        return 0;
    }
    gst_t t = *s;
    if (t.u8need) { /* the rest of a character: its lead made room for it */
        if (c < t.u8lo || c > t.u8hi) return -1;
        t.u8need--;
        t.u8lo = 0x80, t.u8hi = 0xBF;
    } else {
        if (c >= 0x80 && u8_lead(&t, c)) return -1;
        if (t.lpos + t.u8need >= API_SCHEMA_MAX_LIT) return -1; /* the whole character within the limit */
    }
    uint64_t nc = 0;
    FOR_BITS(j, t.cand) {
        const api_schema_prop_t *p = prop(g, n, j);
        if (p->len > t.lpos && (unsigned char)g->sc.arena[p->off + t.lpos] == c) nc |= 1ull << j;
    }
    t.cand = nc, t.xall = xall, t.lpos++;
    *s = t;
    return 0;
}

/* One byte of a string value with a format (node nd): its text is ASCII
 * without escapes, closed only when complete; 0 or -1. */
static int fmt_feed(const api_schema_node_t *nd, gst_t *s, unsigned c) {
    if (c != '"') return api_fmt_step(nd->sfmt, &s->fst, c);
    if (api_fmt_rest(nd->sfmt, &s->fst)) return -1;
    value_done(s);
    return 0;
}

/* One byte of JSON; 0 or -1.  J_DONE refuses every byte. */
static int json_feed(const eng_gram_t *g, gst_t *s, unsigned c) {
    if (is_ws(c) && (s->js == J_OBJ_FIRST || s->js == J_OBJ_KEY || s->js == J_COLON ||
                     s->js == J_VALUE || s->js == J_ARR_FIRST || s->js == J_AFTER)) {
        if (s->ws >= MAX_WS) return -1;
        s->ws++;
        return 0;
    }
    if (s->js != J_STR && s->js != J_ESC && s->js != J_HEX) s->ws = 0;
    switch (s->js) {
    case J_TOP:
        if (c != '{') return -1;
        return value_start(g, s, c);
    case J_OBJ_FIRST:
        if (c == '}') return close_with(g, s, c);
        /* fall through */
    case J_OBJ_KEY:
        if (c != '"') return -1;
        if (in_schema(g, s)) {
            s->cand = key_cands(g, s);
            if (extra_ok(g, s)) { /* a property's name, or another member's */
                int np = node(g, s->snode)->n_props;
                s->xall = np >= 64 ? ~0ull : (1ull << np) - 1;
                s->js = J_XKEY, s->lpos = 1, s->u8need = 0;
                return 0;
            }
            if (!s->cand) return -1;
            s->js = J_KEY, s->lpos = 1;
            return 0;
        }
        s->js = J_STR, s->skey = 1, s->sfl = 0;
        return 0;
    case J_KEY: return key_feed(g, s, c);
    case J_XKEY: return xkey_feed(g, s, c);
    case J_ENUM: return enum_feed(g, s, c);
    case J_COLON:
        if (c != ':') return -1;
        s->js = J_VALUE;
        return 0;
    case J_ARR_FIRST:
        if (c == ']') return close_with(g, s, c);
        if (in_barr(g, s) && arr_elem(g, s)) return -1; /* the first element */
        /* fall through */
    case J_VALUE: return value_start(g, s, c);
    case J_AFTER:
        if (c == ',') {
            if (!top_is_obj(s)) {
                if (in_barr(g, s) && arr_elem(g, s)) return -1; /* maxItems reached */
                s->js = J_VALUE;
                /* the element's node: a tuple's by its index (the count, this one included), else items */
                s->vnode = !in_schema(g, s) ? -1
                         : in_barr(g, s) ? (int16_t)api_schema_elem(&g->sc, s->snode, s->acnt[s->nacnt - 1] - 1)
                                         : node(g, s->snode)->items;
            } else {
                if (in_schema(g, s) && s->sp >= node(g, s->snode)->n_props && node(g, s->snode)->extra < 0)
                    return -1; /* no member left */
                s->js = J_OBJ_KEY;
            }
            return 0;
        }
        if (c == '}' || c == ']') return close_with(g, s, c);
        return -1;
    case J_STR:
        if (s->sfl & SF_FMT) return fmt_feed(fmt_node(g, s), s, c);
        if (s->u8need) {
            if (c < s->u8lo || c > s->u8hi) return -1;
            s->u8need--;
            s->u8lo = 0x80, s->u8hi = 0xBF;
            return 0;
        }
        if (c == '"') {
            if ((s->sfl & SF_LEN) && str_rest(g, s)) return -1; /* minLength not reached */
            if (s->skey) s->js = J_COLON, s->vnode = -1;
            else value_done(s);
            return 0;
        }
        if (c < 0x20 || c == 0x7F) return -1; /* control characters: not in JSON strings (DEL: kept out too) */
        if (s->sfl & SF_LEN) { /* a character starts: an escape, ASCII or a lead byte */
            const api_schema_node_t *sn = str_node(g, s);
            if (sn->max_chars >= 0 && s->slen >= sn->max_chars) return -1;
            if (s->slen < API_SCHEMA_COUNT_MAX) s->slen++;
        }
        if (c == '\\') {
            s->js = J_ESC;
            return 0;
        }
        if (c < 0x80) return 0;
        return u8_lead(s, c); /* the allowed range of the next byte */
    case J_ESC:
        if (c == 'u') {
            s->js = J_HEX, s->hex = 4, s->hexd = 0;
            return 0;
        }
        if (!strchr("\"\\/bfnrt", (int)c) || !c) return -1;
        s->js = J_STR;
        return 0;
    case J_HEX: {
        int h = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (!h) return -1;
        /* no surrogate escapes (\uD800-\uDFFF): a lone one is invalid JSON text
         * for strict readers; characters above U+FFFF go as raw UTF-8 */
        if (s->hex == 4) s->hexd = c == 'd' || c == 'D';
        else if (s->hex == 3 && s->hexd && !(c >= '0' && c <= '7')) return -1;
        if (--s->hex == 0) s->js = J_STR;
        return 0;
    }
    case J_NUM: {
        if (s->nbd) { /* against the node's bounds (api_num.c) */
            const api_schema_node_t *nd = node(g, s->vnode);
            int r = api_num_step(nd, &s->nst, c);
            if (r <= 0) return r;
            if (api_num_cost(nd, &s->nst)) return -1; /* the number may not end here */
            value_done(s);
            if (s->js == J_DONE) return -1;
            return json_feed(g, s, c);
        }
        int d = c >= '0' && c <= '9';
        int frac = !s->nint; /* an integer has no fraction and no exponent */
        switch (s->num) {
        case N_MINUS:
            if (!d) return -1;
            s->num = c == '0' ? N_ZERO : N_INT, s->litpos = 1;
            return 0;
        case N_ZERO:
        case N_INT:
            if (d && s->num == N_INT) return s->litpos >= NUM_DIGITS ? -1 : (s->litpos++, 0);
            if (c == '.' && frac) return s->num = N_DOT, s->litpos = 0, 0;
            if ((c == 'e' || c == 'E') && frac) return s->num = N_E, 0;
            break; /* the number ends before c */
        case N_DOT:
            if (!d) return -1;
            s->num = N_FRAC, s->litpos = 1;
            return 0;
        case N_FRAC:
            if (d) return s->litpos >= NUM_DIGITS ? -1 : (s->litpos++, 0);
            if (c == 'e' || c == 'E') return s->num = N_E, 0;
            break;
        case N_E:
            if (c == '+' || c == '-') return s->num = N_ESIGN, 0;
            /* fall through */
        case N_ESIGN:
            if (!d) return -1;
            s->num = N_EXP, s->litpos = 1;
            return 0;
        case N_EXP:
            if (d) return s->litpos >= NUM_EXP_DIGITS ? -1 : (s->litpos++, 0);
            break;
        }
        value_done(s);
        if (s->js == J_DONE) return -1;
        return json_feed(g, s, c);
    }
    case J_LIT:
        if (c != (unsigned char)LITS[s->lit][s->litpos]) return -1;
        if (!LITS[s->lit][++s->litpos]) value_done(s);
        return 0;
    default: return -1; /* J_DONE */
    }
}

/* Bytes of the shortest value the node admits (-1: any value, "0"). */
static int vmin(const eng_gram_t *g, const gst_t *s) {
    return sch(g, s) && s->vnode >= 0 ? node(g, s->vnode)->min_len : 1;
}

/* Bytes still needed to finish the JSON value. */
static int json_cost(const eng_gram_t *g, const gst_t *s) {
    int d = s->close, key = s->skey ? 2 : 0;
    switch (s->js) {
    case J_TOP: return sch(g, s) && s->vnode >= 0 ? node(g, s->vnode)->min_len : 2;
    case J_OBJ_FIRST: /* close counts a comma before each required member: the first has none */
        return in_schema(g, s) && g->rtail[g->roff[s->snode] + s->sp] ? d - 1 : d;
    case J_ARR_FIRST:
    case J_AFTER: return d;
    case J_OBJ_KEY: /* after a comma */
        if (in_schema(g, s)) /* a member must come: a required one is counted in close already, with the
                              * comma before it, which is written now */
            return d + (g->rtail[g->roff[s->snode] + s->sp] ? -1 : g->mmin[g->roff[s->snode] + s->sp]);
        return 4 + d;
    case J_COLON: return 1 + vmin(g, s) + d;
    case J_VALUE: return vmin(g, s) + d;
    case J_STR:
        if (s->sfl & SF_FMT) return api_fmt_rest(fmt_node(g, s)->sfmt, &s->fst) + 1 + d;
        return s->u8need + str_rest(g, s) + 1 + key + d;
    case J_ESC: return 2 + str_rest(g, s) + key + d;
    case J_HEX: return s->hex + 1 + str_rest(g, s) + key + d;
    case J_NUM:
        if (s->nbd) return api_num_cost(node(g, s->vnode), &s->nst) + d;
        return (s->num == N_MINUS || s->num == N_DOT || s->num == N_E || s->num == N_ESIGN) + d;
    case J_LIT: return (int)strlen(LITS[s->lit]) - s->litpos + d;
    case J_KEY:
    case J_XKEY: {
        int n = s->snode, np = node(g, n)->n_props, best = 1 << 20, j;
        FOR_BITS(j, s->cand) {
            const api_schema_prop_t *p = prop(g, n, j);
            int c = (int)p->len - s->lpos + 1 + node(g, p->node)->min_len - obj_close(g, n, s->sp) +
                    obj_close(g, n, j + 1);
            if (c < best) best = c;
        }
        if (s->js == J_XKEY) { /* another member: a byte more if the name is empty or a property's, '"', ':' */
            int eq = s->lpos < 2;
            FOR_BITS(j, s->xall) eq |= prop(g, n, j)->len == s->lpos + 1u;
            int c = eq + s->u8need + 2 + node(g, node(g, n)->extra)->min_len - obj_close(g, n, s->sp) +
                    obj_close(g, n, np);
            if (c < best) best = c;
        }
        return best + d;
    }
    case J_ENUM: {
        const api_schema_node_t *nd = node(g, s->vnode);
        int best = 1 << 20, j;
        FOR_BITS(j, s->cand) {
            const api_schema_lit_t *l = &g->sc.lits[nd->lit0 + j];
            if ((int)l->len >= s->lpos && (int)l->len - s->lpos < best)
                best = (int)l->len - s->lpos;
        }
        return best + d;
    }
    default: return 0;
    }
}

static int special_el(const eng_gram_t *g, int el, int32_t *id) {
    switch (el) {
    case E_CALLS_BEGIN: *id = g->ids.calls_begin; return 1;
    case E_CALL_BEGIN:
    case E_CALL_BEGIN2: *id = g->ids.call_begin; return 1;
    case E_SEP: *id = g->ids.sep; return 1;
    case E_CALL_END: *id = g->ids.call_end; return 1;
    case E_EOS: *id = g->eos; return 1;
    default: return 0;
    }
}

/* Start the top-level JSON object: of response_format, or (in the tool-call
 * block, its name complete: names[nlo]) of the call's arguments. */
static void json_begin(const eng_gram_t *g, gst_t *s) {
    s->js = J_TOP, s->depth = 0, s->stack = 0, s->ws = 0, s->u8need = 0;
    s->close = 0, s->gdepth = 0, s->snode = -1, s->sp = 0, s->nacnt = 0, s->nbd = 0;
    int root = s->intool ? g->name_root[s->nlo] : g->rf_root;
    s->schema = root >= 0;
    s->vnode = (int16_t)root; /* the schema's root, or -1: any object */
}

/* One byte of the program; 0 or -1. */
static int feed(const eng_gram_t *g, gst_t *s, unsigned c) {
    switch (s->el) {
    case E_TEXT: return 0;
    case E_ALT: /* a byte: the JSON answer */
        s->el = E_JSON, s->pos = 0;
        json_begin(g, s);
        /* fall through */
    case E_JSON:
        if (json_feed(g, s, c)) return -1;
        if (s->js == J_DONE) s->el = s->intool ? E_FENCE_END : E_EOS, s->pos = 0;
        return 0;
    case E_FUNCTION:
        if (c != (unsigned char)LIT_FUNCTION[s->pos]) return -1;
        if (!LIT_FUNCTION[++s->pos]) s->el = E_SEP, s->pos = 0;
        return 0;
    case E_NAME: {
        /* a name ends where the fence's "\n" begins (names have no "\n") */
        if (c == '\n') {
            if (s->nlo < s->nhi && g->name_len[s->nlo] == s->pos) {
                s->el = E_FENCE, s->pos = 1;
                return 0;
            }
            return -1;
        }
        int lo = s->nlo, hi = s->nhi;
        while (lo < hi && (g->name_len[lo] <= s->pos || (unsigned char)g->names[lo][s->pos] < c)) lo++;
        int h2 = lo;
        while (h2 < hi && g->name_len[h2] > s->pos && (unsigned char)g->names[h2][s->pos] == c) h2++;
        if (lo == h2) return -1;
        s->nlo = (uint16_t)lo, s->nhi = (uint16_t)h2, s->pos++;
        return 0;
    }
    case E_FENCE:
        if (c != (unsigned char)LIT_FENCE[s->pos]) return -1;
        if (!LIT_FENCE[++s->pos]) {
            s->el = E_JSON, s->pos = 0;
            json_begin(g, s);
        }
        return 0;
    case E_FENCE_END:
        if (c != (unsigned char)LIT_FENCE_END[s->pos]) return -1;
        if (!LIT_FENCE_END[++s->pos]) s->el = E_CALL_END, s->pos = 0;
        return 0;
    case E_NEXT:
        if (c != '\n' || !g->parallel || s->ncalls >= MAX_CALLS) return -1;
        s->el = E_CALL_BEGIN2;
        return 0;
    default: return -1; /* an element that is a marker token */
    }
}

/* Cost of a whole call from <｜tool▁call▁begin｜> through <｜tool▁calls▁end｜>. */
static int call_cost(const eng_gram_t *g) { return 1 + 8 + 1 + g->min_call + 9 + 4 + 1 + 1; }

static int cost(const eng_gram_t *g, const gst_t *s) {
    int tail_after_json = s->intool ? 4 + 1 + 1 : 0; /* fence end, call end, calls end */
    switch (s->el) {
    case E_TEXT: return 0;
    case E_ALT: {
        int j = g->rf_root >= 0 ? node(g, g->rf_root)->min_len : 2;
        return g->n_names && 1 + call_cost(g) < j ? 1 + call_cost(g) : j;
    }
    case E_CALLS_BEGIN: return 1 + call_cost(g);
    case E_CALL_BEGIN:
    case E_CALL_BEGIN2: return call_cost(g);
    case E_FUNCTION: return (int)(sizeof LIT_FUNCTION - 1) - s->pos + call_cost(g) - 1 - 8;
    case E_SEP: return call_cost(g) - 1 - 8;
    case E_NAME: {
        int best = 1 << 20;
        for (int i = s->nlo; i < s->nhi; i++) { /* the name's rest and its shortest arguments */
            int c = (int)g->name_len[i] - s->pos + g->name_args[i];
            if (c < best) best = c;
        }
        return best + 9 + tail_after_json;
    }
    case E_FENCE: return (int)(sizeof LIT_FENCE - 1) - s->pos + g->name_args[s->nlo] + tail_after_json;
    case E_JSON: return json_cost(g, s) + tail_after_json;
    case E_FENCE_END: return (int)(sizeof LIT_FENCE_END - 1) - s->pos + 2;
    case E_CALL_END: return 2;
    case E_NEXT: return 1;
    default: return 0;
    }
}

/* ---- public ---------------------------------------------------------------------- */

static eng_gram_t *gram_new(const eng_vocab_t *v, int32_t eos, gkind_t kind) {
    eng_gram_t *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->v = v;
    g->eos = eos;
    g->kind = kind;
    g->rf_root = -1;
    g->stk = malloc((size_t)(v->maxlen + 1) * sizeof *g->stk);
    g->allow = malloc((size_t)(v->n > 0 ? v->n : 1));
    if (!g->stk || !g->allow) {
        eng_gram_free(g);
        return NULL;
    }
    return g;
}

/* Put the schemas in one table (response_format's rf first, then the strict
 * tools' tsc, whose roots shift by rf's nodes: *tshift) and tabulate, per
 * object node and next property, the bytes of the required members left
 * (rtail) and of the cheapest member that may come (mmin).  0, or -1 on OOM. */
static int gram_schema(eng_gram_t *g, const api_schema_t *rf, const api_schema_t *tsc, int *tshift) {
    api_schema_t *c = &g->sc;
    *tshift = 0;
    if (rf && rf->n_nodes) {
        if (api_schema_append(c, rf) < 0) return -1;
        g->rf_root = 0;
    }
    if (tsc && tsc->n_nodes && (*tshift = api_schema_append(c, tsc)) < 0) return -1;
    g->roff = malloc((size_t)(c->n_nodes ? c->n_nodes : 1) * sizeof *g->roff);
    size_t nt = 0;
    for (int i = 0; i < c->n_nodes; i++) nt += c->nodes[i].n_props >= 0 ? (size_t)c->nodes[i].n_props + 1 : 0;
    g->rtail = malloc((nt ? nt : 1) * sizeof *g->rtail);
    g->mmin = malloc((nt ? nt : 1) * sizeof *g->mmin);
    if (!g->roff || !g->rtail || !g->mmin) return -1;
    int32_t off = 0;
    for (int i = 0; i < c->n_nodes; i++) {
        int np = c->nodes[i].n_props;
        g->roff[i] = off;
        if (np < 0) continue;
        g->rtail[off + np] = 0;
        g->mmin[off + np] = 1 << 20; /* never needed: no member can come */
        for (int j = np - 1; j >= 0; j--) {
            const api_schema_prop_t *p = &c->props[c->nodes[i].prop0 + j];
            int32_t m = (int32_t)p->len + 1 + c->nodes[p->node].min_len;
            g->rtail[off + j] = g->rtail[off + j + 1] + (p->required ? 1 + m : 0);
            g->mmin[off + j] = p->required || m < g->mmin[off + j + 1] ? m : g->mmin[off + j + 1];
        }
        if (c->nodes[i].extra >= 0) { /* another member ("x":V) may come wherever no required one is left */
            int32_t xm = 4 + c->nodes[c->nodes[i].extra].min_len;
            for (int j = 0; j <= np; j++)
                if (!g->rtail[off + j] && xm < g->mmin[off + j]) g->mmin[off + j] = xm;
        }
        off += np + 1;
    }
    return 0;
}

eng_gram_t *eng_gram_json(const eng_vocab_t *v, int32_t eos) {
    eng_gram_t *g = gram_new(v, eos, G_JSON);
    if (!g) return NULL;
    g->st.el = E_JSON;
    json_begin(g, &g->st);
    return g;
}

eng_gram_t *eng_gram_schema(const eng_vocab_t *v, int32_t eos, const api_schema_t *sc) {
    if (!sc || sc->n_nodes < 1) return NULL;
    eng_gram_t *g = gram_new(v, eos, G_JSON);
    int shift;
    if (!g) return NULL;
    if (gram_schema(g, sc, NULL, &shift)) {
        eng_gram_free(g);
        return NULL;
    }
    g->st.el = E_JSON;
    json_begin(g, &g->st);
    return g;
}

typedef struct {
    const char *name;
    size_t len;
    int root;
} gname_t;

static int cmp_name(const void *a, const void *b) {
    const gname_t *x = a, *y = b;
    int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The names (copied, sorted) with their arguments' schema roots (roots NULL:
 * all any-object; else a root shifts by tshift into g->sc).  0 or -1. */
static int gram_names(eng_gram_t *g, const char *const *names, const size_t *name_len, const int *roots,
                      int tshift, int n_names) {
    if (n_names < 0 || n_names > 1000) return -1;
    size_t cap = (size_t)(n_names ? n_names : 1);
    gname_t *tmp = calloc(cap, sizeof *tmp);
    g->names = calloc(cap, sizeof *g->names);
    g->name_len = calloc(cap, sizeof *g->name_len);
    g->name_root = calloc(cap, sizeof *g->name_root);
    g->name_args = calloc(cap, sizeof *g->name_args);
    if (!tmp || !g->names || !g->name_len || !g->name_root || !g->name_args) goto fail;
    for (int i = 0; i < n_names; i++) {
        if (!name_len[i] || memchr(names[i], 0, name_len[i]) || memchr(names[i], '\n', name_len[i])) goto fail;
        int root = roots && roots[i] >= 0 ? roots[i] + tshift : -1;
        if (root >= g->sc.n_nodes) goto fail;
        tmp[i] = (gname_t){names[i], name_len[i], root};
    }
    qsort(tmp, (size_t)n_names, sizeof *tmp, cmp_name);
    g->min_call = 1 << 20;
    for (int i = 0; i < n_names; i++) {
        if (!(g->names[i] = malloc(tmp[i].len + 1))) goto fail;
        memcpy(g->names[i], tmp[i].name, tmp[i].len);
        g->names[i][tmp[i].len] = 0;
        g->n_names++;
        g->name_len[i] = tmp[i].len;
        g->name_root[i] = tmp[i].root;
        g->name_args[i] = tmp[i].root >= 0 ? node(g, tmp[i].root)->min_len : 2; /* "{}" */
        if ((int)g->name_len[i] + g->name_args[i] < g->min_call) g->min_call = (int)g->name_len[i] + g->name_args[i];
    }
    free(tmp);
    return 0;
fail:
    free(tmp);
    return -1;
}

eng_gram_t *eng_gram_tools(const eng_vocab_t *v, int32_t eos, const eng_tool_ids_t *ids,
                           const char *const *names, const size_t *name_len, int n_names, int parallel,
                           const int *roots, const api_schema_t *tsc) {
    if (n_names < 1) return NULL;
    eng_gram_t *g = gram_new(v, eos, G_TOOLS);
    int shift;
    if (!g) return NULL;
    g->ids = *ids;
    g->parallel = parallel;
    if (gram_schema(g, NULL, tsc, &shift) || gram_names(g, names, name_len, roots, shift, n_names)) goto fail;
    g->st.el = E_CALLS_BEGIN;
    return g;
fail:
    eng_gram_free(g);
    return NULL;
}

eng_gram_t *eng_gram_auto(const eng_vocab_t *v, int32_t eos, const eng_tool_ids_t *ids, const char *const *names,
                          const size_t *name_len, int n_names, int parallel, int json, const api_schema_t *sc,
                          const int *roots, const api_schema_t *tsc) {
    eng_gram_t *g = gram_new(v, eos, G_TEXT);
    int shift;
    if (!g) return NULL;
    g->ids = *ids;
    g->parallel = parallel;
    if (gram_schema(g, sc, tsc, &shift) || gram_names(g, names, name_len, roots, shift, n_names)) goto fail;
    if (json && !n_names) goto fail; /* plain JSON: eng_gram_json / eng_gram_schema */
    g->st.el = json ? E_ALT : E_TEXT;
    return g;
fail:
    eng_gram_free(g);
    return NULL;
}

void eng_gram_free(eng_gram_t *g) {
    if (!g) return;
    for (int i = 0; g->names && i < g->n_names; i++) free(g->names[i]);
    free(g->names);
    free(g->name_len);
    free(g->name_root);
    free(g->name_args);
    free(g->sc.nodes);
    free(g->sc.props);
    free(g->sc.lits);
    free(g->sc.arena);
    free(g->roff);
    free(g->rtail);
    free(g->mmin);
    free(g->stk);
    free(g->allow);
    free(g);
}

static int is_marker(const eng_gram_t *g, int32_t id) {
    for (int i = 0; i < g->ids.n_marks; i++)
        if (g->ids.marks[i] == id) return 1;
    return 0;
}

/* Advance s over a marker id (an element that is a token). */
static int accept_special(const eng_gram_t *g, gst_t *s, int32_t id) {
    int32_t want;
    if (s->el == E_NEXT && id == g->ids.calls_end) {
        s->el = E_EOS;
        return 0;
    }
    if ((s->el == E_TEXT || s->el == E_ALT) && g->n_names && id == g->ids.calls_begin) {
        s->el = E_CALL_BEGIN, s->intool = 1;
        return 0;
    }
    if (s->el == E_TEXT) return is_marker(g, id) ? -1 : 0; /* other added tokens are text */
    if (!special_el(g, s->el, &want) || id != want || s->el == E_EOS) return -1;
    switch (s->el) {
    case E_CALLS_BEGIN: s->el = E_CALL_BEGIN, s->intool = 1; break;
    case E_CALL_BEGIN:
    case E_CALL_BEGIN2: s->el = E_FUNCTION, s->pos = 0; break;
    case E_SEP: s->el = E_NAME, s->pos = 0, s->nlo = 0, s->nhi = (uint16_t)g->n_names; break;
    case E_CALL_END: s->el = E_NEXT, s->ncalls++; break;
    }
    return 0;
}

int eng_gram_done(const eng_gram_t *g) { return g->st.el == E_EOS; }
int eng_gram_close_cost(const eng_gram_t *g) { return cost(g, &g->st); }

int eng_gram_accept(eng_gram_t *g, int32_t id) {
    gst_t s = g->st;
    const tok_t *t = g->v->tok;
    if (id == g->eos) return g->st.el == E_EOS || g->st.el == E_TEXT ? 0 : -1;
    if (id < 0 || id >= g->v->n) return -1;
    if (tok_is_added(t, id)) {
        if (accept_special(g, &s, id)) return -1;
    } else if (s.el != E_TEXT) {
        size_t n;
        const char *b = tok_token_bytes(t, id, &n);
        if (!b || !n) return -1;
        for (size_t i = 0; i < n; i++)
            if (feed(g, &s, (unsigned char)b[i])) return -1;
    }
    g->st = s;
    return 0;
}

/* Fill g->allow for the current state; budget < 0: validity only. */
static int walk(eng_gram_t *g, int budget) {
    const eng_vocab_t *v = g->v;
    const tok_t *t = v->tok;
    int count = 0;
    memset(g->allow, 0, (size_t)v->n);
    /* marker tokens and EOS */
    int32_t want;
    gst_t s;
    int el = g->st.el;
    if (special_el(g, el, &want) || el == E_NEXT || el == E_ALT) {
        int32_t cand = el == E_NEXT ? g->ids.calls_end : el == E_ALT ? g->ids.calls_begin : want;
        s = g->st;
        if (cand >= 0 && cand < v->n) {
            if (cand == g->eos) {
                if (el == E_EOS) g->allow[cand] = 1, count++;
            } else if (!accept_special(g, &s, cand) && !(budget >= 0 && cost(g, &s) + 1 > budget)) {
                g->allow[cand] = 1;
                count++;
            }
        }
        if (el != E_NEXT && el != E_ALT) return count; /* a marker, nothing else */
    }
    /* byte tokens, in sorted order, states shared along common prefixes */
    g->stk[0] = g->st;
    int valid = 0; /* g->stk[0..valid] hold the states of the previous token's first bytes */
    for (int32_t i = 0; i < v->n_order; i++) {
        int l = v->lcp[i];
        if (l > valid) continue; /* extends a prefix already refused */
        int32_t id = v->order[i];
        size_t n;
        const unsigned char *b = (const unsigned char *)tok_token_bytes(t, id, &n);
        int k = l, ok = 1;
        for (; k < (int)n; k++) {
            g->stk[k + 1] = g->stk[k];
            if (feed(g, &g->stk[k + 1], b[k])) {
                ok = 0;
                break;
            }
        }
        valid = k;
        if (!ok) continue;
        if (budget >= 0 && cost(g, &g->stk[n]) + 1 > budget) continue;
        g->allow[id] = 1;
        count++;
    }
    return count;
}

int eng_gram_mask(eng_gram_t *g, int remaining, float *logits, int32_t n) {
    int32_t m = n < g->v->n ? n : g->v->n;
    if (g->st.el == E_TEXT) { /* free text: only the tool markers are out (the block's opener when it fits) */
        int banned = 0;
        for (int i = 0; i < g->ids.n_marks; i++) {
            int32_t id = g->ids.marks[i];
            if (id < 0 || id >= m) continue;
            if (id == g->ids.calls_begin && g->n_names && call_cost(g) + 1 <= remaining - 1) continue;
            logits[id] = -INFINITY;
            banned++;
        }
        for (int32_t id = m; id < n; id++) logits[id] = -INFINITY;
        return m - banned;
    }
    /* after this token, `remaining - 1` are left: the rest of the grammar and EOS must fit */
    int count = walk(g, remaining - 1);
    if (!count) count = walk(g, -1);
    for (int32_t id = 0; id < m; id++)
        if (!g->allow[id]) logits[id] = -INFINITY;
    for (int32_t id = m; id < n; id++) logits[id] = -INFINITY;
    return count;
}
