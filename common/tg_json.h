/* tg_json.h — a strict RFC 8259 JSON reader into a compact, read-only DOM,
 * and a writer for JSON strings.
 *
 * Why not cJSON: cJSON keeps strings NUL-terminated (a "\u0000" silently
 * truncates the text, and so the token count that is billed) and reads every
 * number as a double (integers above 2^53 change).  Here:
 *  - strings are decoded (escapes, surrogate pairs) into UTF-8 with an explicit
 *    length; U+0000 is ordinary text.  Raw invalid UTF-8, lone surrogates
 *    ("\ud800" alone, "\udc00") and raw control characters are errors;
 *  - numbers keep their source text: tg_json_int64 gives an exact int64 (and
 *    refuses fractions, exponents and overflow), tg_json_double a double;
 *  - every value remembers its byte span in the source, so a caller can edit
 *    the text (splice) without re-serialising the rest;
 *  - one document is one allocation, freed by tg_json_free(root);
 *  - duplicate object keys are kept; tg_json_get returns the LAST one (as most
 *    parsers do).  tg_json_dup_key finds duplicates for callers that must not
 *    accept them (a peer that reads the first one would see another request).
 *
 * Errors carry a 0-based byte offset and a short message, formatted for an
 * OpenAI-style 400 answer: "Invalid JSON at byte 17: unterminated string".
 *
 * From cJSON, mechanically:
 *   cJSON_ParseWithLength(p, n)          tg_json_parse(p, n, NULL, &err)
 *   cJSON_Delete(j)                      tg_json_free(j)
 *   cJSON_GetObjectItemCaseSensitive     tg_json_get(obj, "key")
 *   cJSON_IsString / IsNumber / IsArray  tg_json_type(v) == TG_JSON_STRING ...
 *   cJSON_IsTrue(v)                      tg_json_is_true(v)
 *   v->valuestring                       tg_json_str(v, &len)
 *   cJSON_GetArraySize(a)                tg_json_len(a)
 *   cJSON_ArrayForEach(m, a)             TG_JSON_FOREACH(m, a)
 *   m->string (member name)              tg_json_key(m, &len)
 *   cJSON_PrintUnformatted(v)            tg_json_write(&buf, v)
 * Every accessor accepts NULL (an absent member) and answers "not that type". */
#ifndef TG_JSON_H
#define TG_JSON_H

#include "tg_buf.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct tg_json tg_json_t;

typedef enum {
    TG_JSON_NONE = 0, /* tg_json_type(NULL): an absent member */
    TG_JSON_NULL,
    TG_JSON_BOOL,
    TG_JSON_NUMBER,
    TG_JSON_STRING,
    TG_JSON_ARRAY,
    TG_JSON_OBJECT,
} tg_json_type_t;

typedef struct {
    int max_depth;    /* nesting of arrays/objects; 0 means TG_JSON_MAX_DEPTH */
    size_t max_bytes; /* longest document accepted; 0 means no limit */
} tg_json_opts_t;

#define TG_JSON_MAX_DEPTH 128

typedef struct {
    size_t offset;   /* 0-based byte offset in the text where parsing stopped */
    const char *msg; /* static text, e.g. "unterminated string" */
    char text[128];  /* "Invalid JSON at byte 17: unterminated string" */
} tg_json_err_t;

/* Parse len bytes of text (need not be NUL-terminated) as one JSON value,
 * surrounded by optional whitespace.  Returns the root value, which owns the
 * whole document (free it with tg_json_free), or NULL with err filled (err
 * may be NULL).  opts may be NULL for the defaults. */
tg_json_t *tg_json_parse(const char *text, size_t len, const tg_json_opts_t *opts, tg_json_err_t *err);

/* The value of member key[0..key_len) of the root object of text, as a
 * document of its own: text is checked exactly as tg_json_parse checks it
 * (NULL, with err, for a text it refuses), but only that value is built.
 * NULL also when the root is not an object or has no such member (err then
 * says so); with duplicate keys, the last one (as tg_json_getn finds it).
 * Spans (tg_json_span) of the result are offsets in the value's own text.
 * One pass over the text and a small build: for a large document of which
 * one member is needed (a worker's answer and its usage). */
tg_json_t *tg_json_parse_member(const char *text, size_t len, const tg_json_opts_t *opts, const char *key,
                                size_t key_len, tg_json_err_t *err);

/* Free a document; root must be what tg_json_parse returned (or NULL). */
void tg_json_free(tg_json_t *root);

tg_json_type_t tg_json_type(const tg_json_t *v);
const char *tg_json_type_name(tg_json_type_t t); /* "string", "object", ... */

/* Object member by exact key (bytes compared, so a key may hold NUL via
 * tg_json_getn).  The last member with that key wins.  NULL when v is not an
 * object or has no such member. */
tg_json_t *tg_json_getn(const tg_json_t *obj, const char *key, size_t key_len);
/* inline: a literal key's length is known at compile time (the readers
 * look up a few dozen members per request) */
static inline tg_json_t *tg_json_get(const tg_json_t *obj, const char *key) { return tg_json_getn(obj, key, strlen(key)); }

/* Elements of an array or members of an object (0 for anything else). */
size_t tg_json_len(const tg_json_t *v);
/* The i-th element or member, NULL past the end; walks from the start, so
 * loop with TG_JSON_FOREACH instead. */
tg_json_t *tg_json_at(const tg_json_t *v, size_t i);

/* Iteration over array elements or object members, in source order. */
tg_json_t *tg_json_first(const tg_json_t *v);
tg_json_t *tg_json_next(const tg_json_t *v);
#define TG_JSON_FOREACH(it, v) for ((it) = tg_json_first(v); (it); (it) = tg_json_next(it))

/* The member name of an object member (decoded, NUL-terminated, may hold
 * NUL: see *len); NULL for a value that is not an object member. */
const char *tg_json_key(const tg_json_t *member, size_t *len);

/* String value: decoded UTF-8, NUL-terminated for convenience, but may hold
 * NUL bytes: the length is *len (len may be NULL).  NULL when not a string.
 * The bytes live as long as the document. */
const char *tg_json_str(const tg_json_t *v, size_t *len);

/* Number: its exact source text (e.g. "-12.5e3"), NUL-terminated; NULL when
 * not a number. */
const char *tg_json_num_text(const tg_json_t *v, size_t *len);

/* Exact integer: 0 and *out set when v is a number written without fraction
 * or exponent that fits int64_t; -1 otherwise (wrong type, "1.0", "1e3",
 * 9223372036854775808). */
int tg_json_int64(const tg_json_t *v, int64_t *out);

/* Any number as a double (nearest; may be +-inf for huge exponents): 0, or -1
 * when v is not a number. */
int tg_json_double(const tg_json_t *v, double *out);

/* Booleans: tg_json_bool gives 0/1 in *out and returns 0, or -1 when v is not
 * a boolean.  tg_json_is_true: 1 only for true. */
int tg_json_bool(const tg_json_t *v, int *out);
int tg_json_is_true(const tg_json_t *v);

/* The value's bytes in the parsed text: [*off, *off + *len).  For an object
 * member, tg_json_key_span gives the span of its quoted key.  Use them to edit
 * the text without re-serialising it (see tg_json_member_cut). */
void tg_json_span(const tg_json_t *v, size_t *off, size_t *len);
void tg_json_key_span(const tg_json_t *member, size_t *off, size_t *len);

/* The bytes [*off, *off + *len) of the parsed text to delete so that `member`
 * leaves its object and the text stays valid JSON (its key, value and one
 * neighbouring comma).  Returns -1 when member is not an object member. */
int tg_json_member_cut(const tg_json_t *member, size_t *off, size_t *len);

/* A member name that occurs more than once in obj (the first such found),
 * or NULL when all are distinct or obj is not an object.  *len is its length.
 * Linear time (a temporary hash table); NULL also when out of memory is
 * reported through *oom (may be NULL). */
const char *tg_json_dup_key(const tg_json_t *obj, size_t *len, int *oom);

/* ---- writing ---------------------------------------------------------------- */

/* Writing goes into a tg_buf_t (common/tg_buf.h). */

/* Append s (len bytes) as a quoted JSON string: '"' '\\' and control
 * characters escaped (NUL as \u0000), U+2028/U+2029 escaped, and any byte
 * that is not part of valid UTF-8 replaced by U+FFFD, so the output is always
 * valid UTF-8 JSON.  0, or -1 out of memory. */
int tg_json_write_str(tg_buf_t *b, const char *s, size_t len);
/* The same without the quotes: the inside of a JSON string. */
int tg_json_write_chars(tg_buf_t *b, const char *s, size_t len);

/* Append v as compact JSON (numbers as their source text, strings escaped as
 * above, members in source order, duplicates kept).  0, or -1. */
int tg_json_write(tg_buf_t *b, const tg_json_t *v);

#endif
