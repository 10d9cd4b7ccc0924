/* tok.h — byte-level BPE tokenizer (Hugging Face tokenizer.json) and chat
 * templates, shared by the engine (to run the model) and the gateway (to count
 * prompt tokens before admission).
 *
 * A loaded tok_t is immutable and may be used from many threads at once.
 * Token ids are int32_t.  All functions that allocate say who frees. */
#ifndef TOK_H
#define TOK_H

#include <stddef.h>
#include <stdint.h>

typedef struct tok tok_t;
typedef struct tok_stream tok_stream_t;

/* Load a tokenizer.json.  On failure returns NULL and writes a message naming
 * the file and what is unsupported or malformed into err. */
tok_t *tok_load(const char *path, char *err, size_t errlen);
void tok_free(tok_t *t); /* accepts NULL */

/* Number of ids (vocab + added tokens); ids are < tok_n_vocab(). */
int32_t tok_n_vocab(const tok_t *t);
/* Id of an exact token string (vocab or added), or -1. */
int32_t tok_id(const tok_t *t, const char *token);
/* The special ids most callers need; -1 when the tokenizer has none. */
int32_t tok_bos(const tok_t *t);
int32_t tok_eos(const tok_t *t);

/* Encode len bytes of UTF-8 text (embedded NUL allowed).  When allow_special
 * is nonzero, added/special tokens in the text are matched as themselves;
 * otherwise they are tokenized as plain text.  No BOS is added.
 * On success returns the number of ids and sets *ids (caller frees with
 * free()); returns -1 on invalid UTF-8 or out of memory. */
long tok_encode(const tok_t *t, const char *text, size_t len, int allow_special, int32_t **ids);

/* Count only (same result as tok_encode's return), no allocation for the caller. */
long tok_count(const tok_t *t, const char *text, size_t len, int allow_special);
/* The count (tok_count's) and the first min(count, cap) ids in first[0..cap),
 * without an array for all of them (the gateway needs the count and its
 * prompt's first block for worker affinity).  -1 as tok_count. */
long tok_count_first(const tok_t *t, const char *text, size_t len, int allow_special, int32_t *first, size_t cap);

/* Decode ids to UTF-8 (special tokens included as their text unless
 * skip_special).  Returns a NUL-terminated string the caller frees, length in
 * *len; NULL on an id out of range or out of memory.  Bytes that do not form
 * valid UTF-8 become U+FFFD. */
char *tok_decode(const tok_t *t, const int32_t *ids, size_t n, int skip_special, size_t *len);

/* Incremental decode for streaming: push one id at a time; each push returns
 * the bytes that became complete UTF-8 (possibly none).  tok_stream_flush
 * returns what is left (incomplete sequences as U+FFFD). */
tok_stream_t *tok_stream_new(const tok_t *t, int skip_special);
void tok_stream_free(tok_stream_t *s); /* accepts NULL */
/* Returns a pointer into the stream's buffer valid until the next call, and
 * its length in *len; NULL on a bad id. */
const char *tok_stream_push(tok_stream_t *s, int32_t id, size_t *len);
const char *tok_stream_flush(tok_stream_t *s, size_t *len);

/* tg_utf8_valid and the rest of the UTF-8 codec: common/tg_utf8.h. */
#include "tg_utf8.h"

/* Bytes of memory one loaded tokenizer holds (tables, strings, regexes). */
size_t tok_mem(const tok_t *t);

/* ---- chat templates ---------------------------------------------------- */

typedef enum {
    TOK_TMPL_DEEPSEEK_V3 = 0, /* also V2.5 style */
    TOK_TMPL_DEEPSEEK_R1,
    TOK_TMPL_MIXTRAL,         /* [INST] ... [/INST] */
} tok_tmpl_kind_t;

/* Text fields are C strings, except content and arguments, which may hold
 * NUL bytes: give their byte length in content_len / arguments_len.  A length
 * of 0 means "NUL-terminated" (the length is strlen), so zero-initialised
 * structs keep working and an empty text is "" either way. */
typedef struct {
    const char *id;        /* tool call id */
    const char *name;      /* function name */
    const char *arguments; /* JSON text */
    const char *type;      /* tool type; NULL means "function" */
    size_t arguments_len;  /* bytes of arguments; 0: strlen(arguments) */
} tok_tool_call_t;

typedef struct {
    const char *role;    /* "system", "user", "assistant", "tool" */
    const char *content; /* may be NULL (assistant with tool calls) */
    const tok_tool_call_t *tool_calls;
    size_t n_tool_calls;
    size_t content_len;  /* bytes of content; 0: strlen(content) */
} tok_chat_msg_t;

/* Pick the template for a model folder from tokenizer_config.json (its
 * chat_template text) and/or config.json's architecture.  Returns -1 when
 * unknown. */
int tok_tmpl_detect(const char *model_dir);

/* Render messages to the prompt text exactly as the model's published
 * template does (BOS included as text).  Returns a string the caller frees
 * (NUL-terminated, but holding any NUL bytes of the contents), its length in
 * *out_len when out_len is not NULL; or NULL with a message in err (e.g.
 * unknown role).  Pass out_len whenever a content may hold NUL. */
char *tok_chat_render_n(tok_tmpl_kind_t kind, const tok_chat_msg_t *msgs, size_t n,
                        int add_generation_prompt, size_t *out_len, char *err, size_t errlen);
/* The same without the length (for NUL-free contents). */
char *tok_chat_render(tok_tmpl_kind_t kind, const tok_chat_msg_t *msgs, size_t n,
                      int add_generation_prompt, char *err, size_t errlen);

/* The same with tool definitions.  tools[i] is the i-th tool object of the
 * request as JSON text (tools_len[i] bytes), already serialized the way
 * Jinja's `tojson` writes it (", " and ": " separators; api/ does that).  The
 * published DeepSeek-V3 and R1 templates do not render tools; with n_tools >
 * 0 the system prompt is followed by the tool block of vLLM's
 * examples/tool_chat_template_deepseekv3.jinja (the de facto DeepSeek-V3
 * tool template; its text, without the template's stray whitespace), which
 * teaches the model the <｜tool▁calls▁begin｜> format it emits.  Mixtral's
 * template has no tools: an error. */
char *tok_chat_render_tools(tok_tmpl_kind_t kind, const tok_chat_msg_t *msgs, size_t n,
                            const char *const *tools, const size_t *tools_len, size_t n_tools,
                            int add_generation_prompt, size_t *out_len, char *err, size_t errlen);

/* Raw bytes of one id (byte-level decoded: a token may be part of a UTF-8
 * character; an added token is its content), *len bytes, not NUL-terminated;
 * NULL for an id out of range.  Points into the tokenizer. */
const char *tok_token_bytes(const tok_t *t, int32_t id, size_t *len);
/* 1 when id is an added token (special or not), else 0. */
int tok_is_added(const tok_t *t, int32_t id);

/* ---- DeepSeek-R1 reasoning ------------------------------------------------ */

/* Split a complete R1 completion (generated after the template's
 * "<｜Assistant｜><think>\n") into the reasoning (before "</think>", an
 * optional leading "<think>" dropped, surrounding whitespace trimmed) and the
 * content (after "</think>", leading whitespace trimmed).  Without "</think>"
 * everything is reasoning and content is "".  Both strings are malloc'd (caller
 * frees; they are NUL-terminated, so for text holding NUL bytes use
 * tok_r1_feed, which gives lengths).  Returns 1 when "</think>" was found, 0
 * when not, -1 out of memory. */
int tok_r1_split(const char *text, size_t len, char **reasoning, char **content);

/* The same split for streaming: zero-initialise a tok_r1_state_t, feed the
 * decoded text chunk by chunk; each call writes the reasoning and content
 * deltas into rout/cout (each at least n + 80 bytes) and their lengths into
 * rlen/clen.  tok_r1_finish releases held-back bytes at the end.  The
 * concatenated deltas equal tok_r1_split's results. */
typedef struct {
    int phase, lead, flush;
    size_t nhold, pending_nl;
    char hold[8];
    char nl[64];
} tok_r1_state_t;
void tok_r1_feed(tok_r1_state_t *st, const char *s, size_t n, char *rout, size_t *rlen,
                 char *cout, size_t *clen);
void tok_r1_finish(tok_r1_state_t *st, char *rout, size_t *rlen, char *cout, size_t *clen);

#endif
