/* eng.h — the engine's model API: load a Hugging Face model folder of a
 * supported MoE architecture and run its forward pass over sequences.
 *
 * Ownership: eng_model_t owns the mmapped weights and the backend (thread
 * pool); eng_seq_t owns one sequence's KV cache.  A model may be used by one
 * forward call at a time (the caller serialises; batching is done by passing
 * several sequences to one call).  Every *_free accepts NULL. */
#ifndef ENG_H
#define ENG_H

#include <stddef.h>
#include <stdint.h>

typedef struct eng_model eng_model_t;
typedef struct eng_seq eng_seq_t;

typedef enum {
    ENG_ARCH_DEEPSEEK_V3 = 0,
    ENG_ARCH_DEEPSEEK_V2,
    ENG_ARCH_MIXTRAL,
} eng_arch_t;

typedef struct {
    const char *device;   /* "cpu" (default), later "cuda:N" */
    int n_threads;        /* 0: all cores */
    int quant_int8;       /* quantize matmul weights to int8 at load */
    int max_seq_len;      /* 0: config max_position_embeddings */
    size_t kv_bytes;      /* KV cache budget (0: eng_kv_default_bytes()) */
} eng_load_opts_t;

typedef struct {
    eng_arch_t arch;
    const char *arch_name;   /* config.json "architectures"[0] */
    int32_t vocab_size;      /* rows of lm_head */
    int n_layers;
    int max_seq_len;         /* the context this model instance supports */
    int32_t bos_id, eos_id;  /* from config.json; -1 if absent */
    size_t kv_bytes_per_token;
} eng_model_info_t;

/* Load dir/config.json and the folder's safetensors files.  On failure returns NULL and
 * writes a message naming the file and tensor into err. */
eng_model_t *eng_model_load(const char *dir, const eng_load_opts_t *opts, char *err, size_t errlen);
void eng_model_free(eng_model_t *m);
const eng_model_info_t *eng_model_info(const eng_model_t *m);

/* ---- the KV cache (eng_kv.c) ----------------------------------------------------
 * The model owns one pool: kv_bytes cut into blocks of TG_PREFIX_BLOCK tokens
 * (every layer's rows of those tokens).  Sequences hold blocks; full blocks
 * are kept under their prefix key (common/tg_prefix.h) after their sequence
 * ends, until their memory is needed (LRU), so a later prompt with the same
 * start reuses them.  Everything here is for one thread at a time (the
 * caller of eng_forward). */

#define ENG_KV_FULL (-2) /* not enough free or evictable blocks */

typedef struct {
    int block_tokens;       /* tokens per block */
    int blocks_total;
    int blocks_used;        /* held by at least one sequence */
    int blocks_cached;      /* held by none, kept for prefix hits (evicted oldest first) */
    int blocks_free;        /* holding nothing */
    size_t bytes_per_block;
    uint64_t evictions;     /* cached blocks taken for new tokens */
} eng_kv_stats_t;

/* A quarter of the machine's memory, at most 64 GiB: the default budget. */
size_t eng_kv_default_bytes(void);
void eng_kv_stats(const eng_model_t *m, eng_kv_stats_t *out);
/* Blocks a reservation may take now (free + cached). */
int eng_kv_available_blocks(const eng_model_t *m);
/* Blocks the pool has in all. */
int eng_kv_total_blocks(const eng_model_t *m);

/* A new empty sequence able to hold up to max_len tokens (0: model max).
 * Holds no block yet.  NULL on out of memory. */
eng_seq_t *eng_seq_new(eng_model_t *m, int max_len);
/* Gives its blocks back (registered full blocks stay cached).  Accepts NULL. */
void eng_seq_free(eng_seq_t *s);
int eng_seq_len(const eng_seq_t *s);
int eng_seq_blocks(const eng_seq_t *s);
/* Blocks the sequence lacks to hold len tokens. */
int eng_seq_blocks_needed(const eng_seq_t *s, int len);
/* Take the blocks to hold len tokens: 0, ENG_KV_FULL (nothing taken), or -1
 * when len exceeds the sequence's max_len. */
int eng_seq_reserve(eng_seq_t *s, int len);
/* Put the empty sequence s in the cache namespace whose root is root
 * (tg_prefix_root; 0: the default one): it attaches, and registers, only
 * blocks of that namespace.  0, or -1 when s is not empty. */
int eng_seq_namespace(eng_seq_t *s, uint64_t root);
/* Attach the cached KV of the longest run of full blocks that starts ids[0..n)
 * (at most n-1 tokens, so that the last one is computed and gives logits).
 * s must be empty.  Returns the tokens now in s (those reused). */
int eng_seq_prefix(eng_seq_t *s, const int32_t *ids, int n);
/* Drop all tokens from position len on (len <= current length).  0, or -1
 * when the block to be written again is shared and no block is free to copy
 * it into (nothing changed). */
int eng_seq_truncate(eng_seq_t *s, int len);

/* Append n tokens to each of nseq sequences and run the forward pass.
 * logits[i] (vocab_size floats, caller-owned) receives the logits of the last
 * new position of sequence i; pass logits[i] == NULL to skip.  Blocks the
 * sequences lack are reserved first.  Returns 0; ENG_KV_FULL when the pool
 * cannot hold the new tokens; or -1 with a message in err (too long, bad id,
 * out of memory).  On failure no sequence's length or content changes (it may
 * have gained blocks).  A sequence's logits do not depend on the other
 * sequences in the call (bit-exact batch invariance on the CPU backend). */
int eng_forward(eng_model_t *m, eng_seq_t **seqs, const int32_t *const *ids, const int *n,
                int nseq, float **logits, char *err, size_t errlen);

/* Sampling where the logits are (a device backend: no logits copy to the
 * host).  The semantics of eng_sample_pick_u (engine/sched/eng_sample.h) on
 * logits[0 .. n_allowed): greedy at temperature 0 or top_k 1, else
 * softmax(logits / T), top-k, top-p, and the draw u walked in id order. */
typedef struct {
    float temperature, top_p;
    int top_k;            /* 0: off */
    int32_t n_allowed;    /* ids the tokenizer knows (<= vocab_size) */
    double u;             /* the uniform draw in [0, 1) */
    int32_t id;           /* out: the token */
    int used_u;           /* out: 1 when u was consumed (0: a greedy pick, which draws nothing) */
} eng_sample_req_t;

/* 1 when the model's backend samples (eng_forward_sample's sample[i] may be
 * used), 0 when only logits come back. */
int eng_model_can_sample(const eng_model_t *m);
/* eng_forward, where sequence i may ask for a sampled token instead of its
 * logits: sample[i] (caller-owned; logits[i] must then be NULL) gets id and
 * used_u.  sample may be NULL (= eng_forward).  -1 when sample[i] is set and
 * the backend cannot sample. */
int eng_forward_sample(eng_model_t *m, eng_seq_t **seqs, const int32_t *const *ids, const int *n, int nseq,
                       float **logits, eng_sample_req_t **sample, char *err, size_t errlen);

/* Debugging and tests: the routed expert ids chosen for the last forward's
 * tokens (layer-major), or NULL when not recorded.  Recording is enabled by
 * eng_model_set_trace(m, 1). */
void eng_model_set_trace(eng_model_t *m, int on);
/* The trace of the last eng_forward: ids [n_layers][*n_tokens][*topk] in the
 * batch's token order (sequence 0's new tokens first); dense layers hold -1.
 * NULL when tracing is off or nothing ran.  Owned by the model. */
const int32_t *eng_model_trace(const eng_model_t *m, int *n_tokens, int *topk);
/* The backend's name and the kernel instruction set, e.g. "cpu/avx512". */
const char *eng_model_backend(const eng_model_t *m);

#endif
