/* api.h — the OpenAI chat-completions request reader, shared by the gateway
 * (to refuse a bad request before admission, so it is never billed, and to
 * count the prompt) and the engine (to run it).  One reader, one set of
 * rules: both sides accept and refuse the same bodies, read the same
 * max_tokens and render the same prompt.
 *
 * Pure: bytes (or a parsed tg_json document) in, a validated request or an
 * OpenAI-shaped error out.  Layering: api/ uses common/ and tokenizer/ (the
 * chat templates); engine/ and gateway/ use api/; api/ uses neither. */
#ifndef API_H
#define API_H

#include <stddef.h>
#include <stdint.h>

#include "tg_json.h"
#include "tok.h"

/* An OpenAI-style error: HTTP status and the body's fields. */
typedef struct {
    int status;
    char message[320];
    const char *type;  /* "invalid_request_error", "server_error", ... */
    char param[64];    /* "" -> null */
    const char *code;  /* NULL -> null */
} api_err_t;

/* Fill e; returns -1 so callers can `return api_err(...)`. */
int api_err(api_err_t *e, int status, const char *type, const char *param, const char *code,
            const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* {"error":{"message","type","param","code"}}; malloc'd, NULL on OOM. */
char *api_err_json(const api_err_t *e);

#define API_MAX_STOP 16 /* DeepSeek's limit (OpenAI's is 4) */
#define API_MAX_TOP_LOGPROBS 20
#define API_MAX_TOOLS 128
#define API_MAX_LOGIT_BIAS 1024
#define API_MAX_TOKENS_LIMIT 1000000000L
#define API_MAX_N 16 /* choices per request (n) */

typedef enum {
    API_TOOL_CHOICE_AUTO = 0, /* default when tools are given */
    API_TOOL_CHOICE_NONE,     /* default without tools; never call one */
    API_TOOL_CHOICE_REQUIRED, /* call at least one */
    API_TOOL_CHOICE_NAMED,    /* call exactly tool_named */
} api_tool_choice_t;

typedef enum {
    API_FORMAT_TEXT = 0,
    API_FORMAT_JSON_OBJECT, /* grammar-constrained: the answer is one JSON object */
    API_FORMAT_JSON_SCHEMA, /* grammar-constrained: one JSON object valid against api_chat_req_t.schema */
} api_format_t;

/* ---- response_format json_schema, compiled ------------------------------------
 * The subset of JSON Schema the engine's grammar enforces (api/README.md
 * "Structured output"), as a flat table.  Strings live in one arena and are
 * referenced by offset, so the whole table is copied with memcpy. */

#define API_ST_NULL 0x01
#define API_ST_BOOL 0x02
#define API_ST_INT 0x04
#define API_ST_NUM 0x08 /* any JSON number (integers included) */
#define API_ST_STR 0x10
#define API_ST_ARR 0x20
#define API_ST_OBJ 0x40
#define API_ST_ANY 0x7f

#define API_SCHEMA_NONE (-1)        /* items/parent: none (any value; the root) */
#define API_SCHEMA_MAX_NODES 512
#define API_SCHEMA_MAX_PROPS 64     /* per object */
#define API_SCHEMA_MAX_ENUM 64      /* values of one enum */
#define API_SCHEMA_MAX_DEPTH 16     /* nesting of schemas */
#define API_SCHEMA_MAX_LIT 256      /* bytes of one property name or enum value, as JSON text */
#define API_SCHEMA_MAX_LITS 4096    /* enum and const values of one schema, in all */
#define API_TOOLS_MAX_NODES 4096    /* schemas of all strict tools of a request, in all */
#define API_TOOLS_MAX_LITS 16384    /* enum and const values of all strict tools of a request, in all */

typedef struct {
    uint8_t types;     /* API_ST_* allowed (ignored when n_enum > 0) */
    int16_t parent;    /* the node whose property or items this is; API_SCHEMA_NONE for the root */
    int16_t pidx;      /* its index among the parent's properties; -1 for array items and the root */
    int16_t items;     /* array items node (after the tuple's, if any); API_SCHEMA_NONE: any value */
    int16_t tup0, n_tup; /* prefixItems (or draft 7's items array): element i < n_tup follows
                          * props[tup0 + i].node (api_schema_elem); n_tup 0: none */
    int16_t prop0;     /* first property (api_schema_t.props) */
    int16_t n_props;   /* -1: an object with any members (no "properties") */
    int16_t extra;     /* additionalProperties given as a schema: members other than the properties,
                        * after them, follow this node; API_SCHEMA_NONE: none */
    int16_t lit0, n_enum; /* n_enum > 0: the value is one of lits[lit0 .. lit0 + n_enum) */
    int32_t min_len;   /* bytes of the shortest valid value */
    /* Numbers (minimum, maximum, exclusiveMinimum, exclusiveMaximum): the
     * bounds as exact integers in units of 10^-nscale (api_num.c).  An
     * integer-only node has them made inclusive integers (nscale 0). */
    uint8_t nb;        /* API_NB_* */
    uint8_t nscale;    /* 0..API_NUM_MAX_SCALE decimal places */
    int64_t nlo, nhi;  /* |bound| <= API_NUM_LIMIT units */
    int64_t nmul;      /* multipleOf in the same units (an integer-only node: whole numbers); 0: none */
    /* Arrays (minItems, maxItems): elements at least, at most (-1: no limit). */
    int32_t min_items, max_items;
    /* Strings (minLength, maxLength): characters (code points) at least, at most (-1: no limit). */
    int32_t min_chars, max_chars;
    uint8_t sfmt;      /* strings: API_SF_* "format" (api_fmt.c), 0: none */
} api_schema_node_t;

/* String formats the grammar writes (api_fmt.c): a subset of each, every value valid. */
enum {
    API_SF_NONE, API_SF_DATE, API_SF_TIME, API_SF_DATETIME, API_SF_UUID,
    API_SF_DATETIME_Z, /* date-time with the offset "Z" only (zod's default pattern) */
    API_SF_UUID_V,     /* uuid of versions 1-8, variant 10xx (zod's pattern) */
    API_SF_EMAIL, API_SF_HOSTNAME, API_SF_IPV4, API_SF_IPV6, API_SF_DURATION,
    API_SF_TIME_LOCAL,   /* hh:mm:ss with an optional fraction, no offset (zod's z.iso.time() pattern) */
    API_SF_TIME_LOCAL_S, /* hh:mm:ss, no fraction, no offset (z.iso.time({precision: 0})) */
    API_SF_HHMM,         /* hh:mm (z.iso.time({precision: -1})) */
};
typedef struct {
    uint16_t year;
    uint8_t stage, pos, month, d1, nfrac;
} api_fmt_t;
/* Start a string of format kind. */
void api_fmt_init(int kind, api_fmt_t *s);
/* One byte c of the string's text (no closing quote): 0 taken (some valid
 * string still starts so), -1 refused; s is unchanged unless 0. */
int api_fmt_step(int kind, api_fmt_t *s, unsigned c);
/* Bytes still needed before the closing quote may come (0: it may). */
int api_fmt_rest(int kind, const api_fmt_t *s);

#define API_NB_LO 1    /* nlo is a lower bound */
#define API_NB_HI 2    /* nhi is an upper bound */
#define API_NB_LO_EX 4 /* ... exclusive */
#define API_NB_HI_EX 8
#define API_NUM_MAX_SCALE 9            /* bounds are kept to 9 decimal places, rounded inwards */
/* Fraction digits beyond the scale a bounded number may have: a value just
 * inside an exclusive bound (0.99999... under 1) stays off it when a client
 * reads it as a double (more nines would round onto the bound). */
#define API_NUM_MAX_TAIL 6
/* Integer digits of a bounded number (one with no upper bound may pass
 * API_NUM_LIMIT): 20, so that a double reads it finite. */
#define API_NUM_MAX_INT 20
#define API_NUM_LIMIT 1000000000000000000LL /* 10^18 units: bounds beyond are brought in to it */
#define API_SCHEMA_MAX_ITEMS_MIN 4096  /* largest minItems */
#define API_SCHEMA_MAX_CHARS_MIN 4096  /* largest minLength */
#define API_SCHEMA_MAX_ADEPTH 4        /* arrays with minItems/maxItems open inside each other */
#define API_SCHEMA_COUNT_MAX 65535     /* elements and characters are counted up to this */
/* Lengths of shortest values (api_schema_node_t.min_len, api_schema_elems_len)
 * saturate here: beyond any token budget, and small enough that the grammar's
 * sums of them (64 members of 16 nested objects, 4 counted arrays) stay
 * within int32_t. */
#define API_SCHEMA_LEN_MAX (1 << 20)

/* A number being written against a bounded node (api_num.c): the digits so
 * far as a magnitude in the node's units.  Zeroed = nothing written yet. */
typedef struct {
    uint64_t m;     /* magnitude so far, in units of 10^-nscale */
    uint8_t phase;  /* API_NUM_* */
    uint8_t neg;    /* a '-' came */
    uint8_t fd;     /* fraction digits so far (at most nscale + API_NUM_MAX_TAIL) */
    uint8_t tail;   /* a nonzero fraction digit beyond nscale came */
    uint8_t big;    /* the magnitude passed API_NUM_LIMIT (beyond any bound) */
    uint8_t nint;   /* integer digits so far (at most API_NUM_MAX_INT) */
} api_num_t;
enum { API_NUM_START, API_NUM_MINUS, API_NUM_ZERO, API_NUM_INT, API_NUM_DOT, API_NUM_FRAC };
#define API_NUM_NEVER (1 << 20) /* api_num_cost: no valid end */

/* Does node nd count its arrays' elements (minItems, maxItems, a tuple)? bound its strings' characters? */
static inline int api_schema_arr_bounded(const api_schema_node_t *nd) {
    return (nd->types & API_ST_ARR) && (nd->min_items > 0 || nd->max_items >= 0 || nd->n_tup > 0);
}
static inline int api_schema_str_bounded(const api_schema_node_t *nd) { return nd->min_chars > 0 || nd->max_chars >= 0; }
/* Does node nd bound its numbers (a range, or multipleOf)? */
static inline int api_num_bounded(const api_schema_node_t *nd) { return nd->nb != 0 || nd->nmul != 0; }
/* One byte c of a number against nd's bounds (JSON's number syntax without
 * exponent; a fraction only when nd admits "number"): 0 taken (some valid
 * number still starts with what came), -1 refused (a number byte that would
 * leave none), 1 not a number byte (the number would end before c: check
 * api_num_cost(...) == 0).  s is unchanged unless 0. */
int api_num_step(const api_schema_node_t *nd, api_num_t *s, unsigned c);
/* Bytes still needed for a valid number from s (0: s itself is one, may end
 * now); API_NUM_NEVER when none can follow. */
int api_num_cost(const api_schema_node_t *nd, const api_num_t *s);

typedef struct {
    uint32_t off, len; /* the member name as JSON text, quotes included, in the arena */
    int16_t node;
    uint8_t required;
} api_schema_prop_t;

typedef struct {
    uint32_t off, len; /* one enum value as compact JSON text, in the arena */
} api_schema_lit_t;

typedef struct {
    api_schema_node_t *nodes; /* node 0 is the root (an object) */
    int n_nodes;
    api_schema_prop_t *props;
    int n_props;
    api_schema_lit_t *lits;
    int n_lits;
    char *arena;
    size_t arena_len;
} api_schema_t;

/* The node element i of array node n follows: its tuple's, else its items
 * (API_SCHEMA_NONE: any value). */
static inline int api_schema_elem(const api_schema_t *sc, int n, int i) {
    const api_schema_node_t *nd = &sc->nodes[n];
    return i < nd->n_tup ? sc->props[nd->tup0 + i].node : nd->items;
}
/* Bytes the elements i0 .. count-1 of array node n need at least, each with
 * the comma before it (the first element of all, i0 0, has none). */
int32_t api_schema_elems_len(const api_schema_t *sc, int n, int i0, int count);

/* Compile a JSON Schema document (the value of json_schema.schema) into sc.
 * 0, or -1 with a 400 in e naming what is unsupported or malformed (the
 * schema then needs no free).  api_schema_free frees sc's arrays. */
int api_schema_compile(api_schema_t *sc, const tg_json_t *schema, api_err_t *e);
/* The same, errors naming `param` (e.g. "tools[0].function.parameters");
 * flags API_SCHEMA_STRICT adds OpenAI's strict-mode rules (api/README.md
 * "Strict function tools"): every schema has a type (or enum, const, anyOf,
 * $ref), every object schema "additionalProperties": false and all of its
 * properties in "required". */
#define API_SCHEMA_STRICT 1
int api_schema_compile_as(api_schema_t *sc, const tg_json_t *schema, const char *param, int flags,
                          api_err_t *e);
void api_schema_free(api_schema_t *sc); /* accepts a zeroed one */
/* Append a copy of src's table to dst (indexes and arena offsets shifted), so
 * that several schemas share one table: returns the index of src's root in
 * dst, or -1 out of memory or when the table would outgrow its 16-bit
 * indexes (dst is then unchanged).  dst starts zeroed; api_schema_free. */
int api_schema_append(api_schema_t *dst, const api_schema_t *src);

/* One function tool.  json: the tool object as Jinja's tojson writes it
 * (", " and ": " separators, members in request order, numbers as sent),
 * which is how the chat template shows it to the model. */
typedef struct {
    const char *name; /* [A-Za-z0-9_-]{1,64} */
    size_t name_len;
    char *json;       /* owned */
    size_t json_len;
    int strict;       /* "strict": true: its arguments follow its parameters schema */
    int root;         /* strict: the node of api_chat_req_t.tool_schema its arguments follow; else -1 */
} api_tool_t;

typedef struct {
    int32_t id;  /* token id, >= 0 (the engine checks it against its vocabulary) */
    float bias;  /* -100..100, added to the logit */
} api_bias_t;

/* A validated POST /v1/chat/completions body.  Strings point into the JSON
 * document (root) unless noted. */
typedef struct api_chat_req {
    tg_json_t *root;         /* the document */
    int own_root;            /* api_chat_req_free frees root */
    const char *model;       /* without U+0000 */
    tok_chat_msg_t *msgs;    /* content/arguments with lengths: may hold NUL */
    size_t n_msgs;
    tok_tool_call_t *calls;  /* storage behind msgs[].tool_calls */
    char **owned;            /* joined content parts, written arguments */
    size_t n_owned;
    api_tool_t *tools;
    size_t n_tools;
    api_schema_t tool_schema; /* the strict tools' parameters, compiled into one table (owned) */
    api_tool_choice_t tool_choice;
    int tool_named;          /* index into tools for API_TOOL_CHOICE_NAMED */
    int parallel_tool_calls; /* default 1; 0: at most one call */
    api_format_t format;
    api_schema_t schema;     /* format == API_FORMAT_JSON_SCHEMA: compiled (owned) */
    /* The completion limit: with both max_tokens and max_completion_tokens the
     * smaller (see api/README.md); 0 when neither is given. */
    long max_tokens;
    double temperature, top_p, presence_penalty, frequency_penalty;
    int top_k;               /* 0: off */
    api_bias_t *bias;        /* owned */
    size_t n_bias;
    int has_seed;
    uint64_t seed;           /* exact; any integer in [-2^63, 2^64-1], negative as two's complement */
    const char *stop[API_MAX_STOP]; /* may hold NUL: see stop_len */
    size_t stop_len[API_MAX_STOP];
    int n_stop;
    int stream, include_usage;
    int logprobs, top_logprobs;
    int n;                   /* choices, 1..API_MAX_N (default 1): each sampled on its own */
    int prefix;              /* the last message is an assistant's with "prefix": true (DeepSeek's chat
                              * prefix completion): the answer continues its text (api_chat_render) */
    /* A POST /v1/completions body (api_cmpl_req_read; msgs is then empty and
     * api_chat_render renders prompt and suffix: api_cmpl_render). */
    int cmpl;
    const char *prompt;      /* into the document; may hold NUL */
    size_t prompt_len;
    const char *suffix;      /* NULL: none; else fill-in-the-middle (may be "") */
    size_t suffix_len;
    int echo;                /* the answer's text starts with the prompt */
    int cmpl_logprobs;       /* legacy logprobs: -1 not asked, else 0..API_MAX_CMPL_LOGPROBS
                              * alternatives (logprobs = 1, top_logprobs = this) */
} api_chat_req_t;

/* Parse len bytes and validate.  On error fills e (400 with the parameter
 * named) and returns -1; the request then needs no free.  On success the
 * caller frees with api_chat_req_free. */
int api_chat_req_parse(api_chat_req_t *r, const char *body, size_t len, api_err_t *e);
/* The 400 for a body tg_json_parse refused with jerr (a 500 when it ran out
 * of memory); always -1.  A body nested deeper than the reader takes names
 * the field it nests in (a schema's: "response_format.json_schema.schema",
 * "tools[0].function.parameters"; else the top-level member), code
 * invalid_value; other broken JSON is invalid_json with no param. */
int api_json_err(api_err_t *e, const char *body, size_t len, const tg_json_err_t *jerr);
/* The same over a document the caller already parsed with tg_json_parse
 * (borrowed: it must outlive r, and api_chat_req_free leaves it alone). */
int api_chat_req_read(api_chat_req_t *r, const tg_json_t *root, api_err_t *e);
void api_chat_req_free(api_chat_req_t *r); /* accepts a zeroed or freed request */

/* ---- POST /v1/completions (api_completion.c) ------------------------------------
 * The same struct, read by the same rules (api/README.md "Completions"):
 * model, prompt (a string, or an array of one string), suffix, max_tokens
 * (default API_CMPL_DEFAULT_MAX_TOKENS), temperature, top_p, top_k, stop,
 * stream, stream_options, seed, n, best_of (1 or n), presence_penalty,
 * frequency_penalty, logit_bias, logprobs (an integer 0..20), echo, user;
 * anything else is 400 as for chat.  Ownership as api_chat_req_parse/_read;
 * freed by api_chat_req_free. */
#define API_CMPL_DEFAULT_MAX_TOKENS 16 /* OpenAI's default for completions */
#define API_MAX_CMPL_LOGPROBS 20       /* DeepSeek's limit */
int api_cmpl_req_parse(api_chat_req_t *r, const char *body, size_t len, api_err_t *e);
int api_cmpl_req_read(api_chat_req_t *r, const tg_json_t *root, api_err_t *e);
/* The prompt text of a completions request: the BOS token's text, then the
 * prompt; with a suffix, DeepSeek's fill-in-the-middle format
 *   <BOS><｜fim▁begin｜>PROMPT<｜fim▁hole｜>SUFFIX<｜fim▁end｜>
 * (encoded with special tokens recognised, as chat prompts are).  malloc'd,
 * length in *len; NULL with a 400 on `suffix` for a template without FIM
 * tokens (Mixtral), or a 500 out of memory. */
char *api_cmpl_render(const api_chat_req_t *r, tok_tmpl_kind_t kind, size_t *len, api_err_t *e);
/* 0, or -1 with the 400 api_cmpl_render would give (a suffix the template
 * cannot express); no allocation. */
int api_cmpl_check(const api_chat_req_t *r, tok_tmpl_kind_t kind, api_err_t *e);

/* The prompt text: messages (and tools) through the chat template of `kind`
 * with the generation prompt.  malloc'd (may hold NUL bytes), length in *len;
 * NULL with a 400 in e when the template refuses the conversation.  A
 * completions request (r->cmpl) is rendered by api_cmpl_render. */
char *api_chat_render(const api_chat_req_t *r, tok_tmpl_kind_t kind, size_t *len, api_err_t *e);

/* The request's prefix key (common/tg_prefix.h): the chained hash of the
 * first TG_PREFIX_AFFINITY_BLOCKS blocks of token ids of its rendered prompt,
 * as the worker's prefix cache keys them (the same template, the same
 * tokenizer, special tokens recognised, BOS included); for a prompt shorter
 * than that, the hash of all its tokens (nothing cached to share, but the same
 * prompt still goes to the same worker).  0 when it cannot be rendered or
 * tokenized.
 * Only the first 4 KiB of the prompt are tokenized. */
uint64_t api_chat_prefix_key(const api_chat_req_t *r, tok_tmpl_kind_t kind, const tok_t *tok);

/* 400 naming the first logit_bias key that is not an id below n_vocab. */
int api_chat_check_vocab(const api_chat_req_t *r, int32_t n_vocab, api_err_t *e);

/* Append v as Jinja's `tojson` writes it: ", " and ": " separators, members
 * in source order, numbers as their source text, strings escaped as
 * tg_json_write_str does.  0, or -1 out of memory. */
int api_tojson(tg_buf_t *b, const tg_json_t *v);

#endif
