/* eng_gram.h — grammar-constrained decoding (private to engine/): a byte
 * state machine over the bytes the model emits, and a mask over the
 * vocabulary that leaves only the tokens whose bytes keep the output valid.
 *
 * Grammars:
 *  - JSON: one JSON object (RFC 8259; strings valid UTF-8 without control
 *    characters or lone surrogate escapes; nesting at most 32; numbers of
 *    at most 20 digits before the point and 20 after, exponents of 2, so
 *    that doubles read them finite), then EOS.
 *    `response_format: {"type":"json_object"}`.
 *  - SCHEMA: the same, valid against a compiled json_schema (api.h): member
 *    names from "properties" in their order, every "required" one present,
 *    values of the types, enum texts and items the schema says.
 *  - TOOLS: DeepSeek-V3's tool-call block, as its chat template writes it:
 *      <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nOBJECT\n```<｜tool▁call▁end｜>
 *      [\n<｜tool▁call▁begin｜>... more calls when parallel]<｜tool▁calls▁end｜> EOS
 *    NAME one of the request's function names, OBJECT as in JSON, or, for a
 *    `strict: true` function, as in SCHEMA against that function's
 *    parameters (the NAME, once complete, picks the schema).  The
 *    <｜...｜> markers are single added tokens, matched by id.
 *  - AUTO (tool_choice "auto", or no tools): free text in which no tool marker
 *    appears except the block's opener (with tools), which starts TOOLS; or,
 *    with a JSON response_format, a JSON (or SCHEMA) answer or the block.
 *
 * Budget: the mask also keeps the output closable within the tokens left:
 * a token is allowed only when the bytes still needed to finish (every one
 * of them a token at worst: byte-level BPE has a token per byte) plus EOS fit
 * in what remains after it.  So an answer whose max_tokens covers the
 * shortest completion ends with EOS and parses; below that (JSON: "{}" and
 * EOS, 2 tokens with DeepSeek's vocabulary), the mask falls back to validity
 * alone and the answer ends with "length".
 *
 * Cost: the vocabulary is sorted by bytes once (eng_vocab_new); a mask walks
 * it in that order, sharing the machine's state across common prefixes and
 * skipping every token that extends a prefix already refused, so most of the
 * 128K tokens cost one comparison. */
#ifndef ENG_GRAM_H
#define ENG_GRAM_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "tok.h"

typedef struct eng_vocab eng_vocab_t;

/* The token bytes index over ids [0, n) of t (added tokens are left out of
 * the byte walk).  Immutable once built; t must outlive it.  NULL on OOM. */
eng_vocab_t *eng_vocab_new(const tok_t *t, int32_t n);
void eng_vocab_free(eng_vocab_t *v); /* accepts NULL */

/* The tool-call marker ids of a DeepSeek tokenizer; -1 when absent. */
typedef struct {
    int32_t calls_begin, calls_end, call_begin, call_end, sep;
    int32_t marks[9]; /* every tool marker present (outputs ones too): never text */
    int n_marks;
} eng_tool_ids_t;
/* 0 when all five markers exist in t, else -1. */
int eng_tool_ids(const tok_t *t, eng_tool_ids_t *ids);

typedef struct eng_gram eng_gram_t;

/* A JSON-object grammar ending with eos.  NULL on OOM. */
eng_gram_t *eng_gram_json(const eng_vocab_t *v, int32_t eos);
/* A tool-call grammar over n_names function names (copied); parallel: more
 * than one call allowed (at most 16).  Strict tools: roots[i] >= 0 is the
 * node of tsc (api_chat_req_t.tool_schema, copied) that name i's arguments
 * follow; -1 (or roots NULL) any JSON object.  NULL on OOM or bad arguments. */
eng_gram_t *eng_gram_tools(const eng_vocab_t *v, int32_t eos, const eng_tool_ids_t *ids,
                           const char *const *names, const size_t *name_len, int n_names, int parallel,
                           const int *roots, const api_schema_t *tsc);
/* A JSON-object grammar valid against a compiled schema (copied).  NULL on
 * OOM or an empty schema. */
eng_gram_t *eng_gram_schema(const eng_vocab_t *v, int32_t eos, const api_schema_t *sc);
/* tool_choice "auto" (n_names >= 1) or text without tools (n_names 0):
 * json 0: free text where no tool marker is sampled but the block's opener
 * (with names), which starts the tool-call grammar; json 1 (with names): a
 * JSON object (against sc when not NULL) or the tool-call block.  roots and
 * tsc as for eng_gram_tools.  NULL on OOM or bad arguments. */
eng_gram_t *eng_gram_auto(const eng_vocab_t *v, int32_t eos, const eng_tool_ids_t *ids, const char *const *names,
                          const size_t *name_len, int n_names, int parallel, int json, const api_schema_t *sc,
                          const int *roots, const api_schema_t *tsc);
void eng_gram_free(eng_gram_t *g); /* accepts NULL */

/* Set logits[id] = -inf for every id in [0, n) the grammar does not allow
 * next, given `remaining` tokens left including this one (see Budget).
 * Returns how many ids stay allowed (>= 1 unless the grammar is stuck). */
int eng_gram_mask(eng_gram_t *g, int remaining, float *logits, int32_t n);
/* Advance over a sampled id: 0, or -1 when the grammar does not allow it
 * (the state is then unchanged). */
int eng_gram_accept(eng_gram_t *g, int32_t id);
/* 1 when the grammar is complete (only EOS may follow). */
int eng_gram_done(const eng_gram_t *g);
/* Bytes still needed to complete from the current state, EOS not counted. */
int eng_gram_close_cost(const eng_gram_t *g);

#endif
