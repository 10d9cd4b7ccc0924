/* eng_model_int.h — private to engine/: the safetensors reader, the weight
 * descriptor shared by the model and its backends, the backend ops table and
 * the model/sequence structs.  Nothing outside engine/ includes this.
 *
 * Invariants: every eng_w_t points into an mmapped safetensors file (or, with
 * int8 quantization, into a buffer the model owns, or after upload_w into the
 * backend's copy, whose source pages the model then drops); the model never
 * keeps two copies of a matmul weight.  Activations and the KV cache are fp32. */
#ifndef ENG_MODEL_INT_H
#define ENG_MODEL_INT_H

#include <stddef.h>
#include <stdint.h>

#include "eng.h"

/* ---- safetensors (eng_st.c) ------------------------------------------- */

typedef enum {
    ENG_DT_F32 = 0,
    ENG_DT_BF16,
    ENG_DT_F16,
    ENG_DT_F8_E4M3,
    ENG_DT_I8,      /* load-time int8 quantization only (never read from a file as a weight) */
    ENG_DT_OTHER,   /* a dtype the header may name but the engine cannot compute with */
} eng_dtype_t;

#define ENG_ST_MAX_DIMS 8

typedef struct {
    char *name;
    char dtype_name[16];       /* as written in the header, e.g. "F8_E4M3" */
    eng_dtype_t dt;
    int elem_size;             /* bytes per element */
    int ndim;
    int64_t shape[ENG_ST_MAX_DIMS];
    const uint8_t *data;       /* into the mapping; NULL until the file is mapped */
    uint64_t begin, end;       /* byte offsets relative to the data section */
    const char *file;          /* the shard it lives in (owned by eng_st_t) */
} eng_st_tensor_t;

typedef struct eng_st eng_st_t;

/* Parse a safetensors file held in buf[0..size) (the whole file).  On success
 * *out holds *n tensors whose data pointers point into buf; every offset, size
 * and shape has been checked against size.  fname only names the file in
 * errors.  Returns 0, or -1 with a message in err. */
int eng_st_parse(const uint8_t *buf, size_t size, const char *fname, eng_st_tensor_t **out, int *n,
                 char *err, size_t errlen);
void eng_st_tensors_free(eng_st_tensor_t *t, int n);

/* mmap every shard of a Hugging Face folder (model.safetensors.index.json,
 * else model.safetensors, else every *.safetensors) and index its tensors. */
eng_st_t *eng_st_open_dir(const char *dir, char *err, size_t errlen);
const eng_st_tensor_t *eng_st_find(const eng_st_t *st, const char *name);
void eng_st_free(eng_st_t *st);

/* fp8 e4m3 and half conversions (eng_st.c) */
float eng_f8e4m3_to_f32(uint8_t v);
uint8_t eng_f32_to_f8e4m3(float f);
float eng_bf16_to_f32(uint16_t v);
uint16_t eng_f32_to_bf16(float f);
float eng_f16_to_f32(uint16_t v);
uint16_t eng_f32_to_f16(float f);

/* ---- weights ------------------------------------------------------------ */

/* A 2-D matmul weight W [rows, cols], row-major (out_features x in_features).
 *  F8_E4M3: w[r][c] = fp8[r][c] * scale[(r/128) * scale_cols + c/128]
 *  I8:      w[r][c] = q[r][c] * scale[r * scale_cols + c/blk]  (blk = cols/scale_cols, per row or block)
 *  otherwise scale is NULL. */
typedef struct {
    eng_dtype_t dt;
    int64_t rows, cols;
    const void *data;
    const float *scale;
    int64_t scale_cols;
    int32_t qblk;             /* I8: columns per scale (cols for per-row) */
    int32_t layout;           /* ENG_W_ROWS, or how a backend re-laid it at upload (ENG_W_AMX) */
    const char *name;         /* the checkpoint tensor name (owned by eng_st_t) */
} eng_w_t;

/* eng_w_t.layout.  ROWS: row-major as stored.  AMX (CPU backend, bf16, set by
 * its upload_w on the amx level): 16 x 32 tiles, the A operand of TDPBF16PS,
 * laid out so that a tile load reads 1 KB in place and 64 rows stream as one
 * run; rows padded to 16 and columns to 32 with zeros (eng_cpu_amx.c).  T16
 * (CPU backend, bf16, its upload_w on the avx512bf16 level): groups of 16
 * rows, each group's 32-column blocks 1 KB apart, so that one token's sweep
 * of a group reads one run (eng_cpu_bf16.c). */
enum { ENG_W_ROWS = 0, ENG_W_AMX = 1, ENG_W_T16 = 2 };

/* ---- backend interface --------------------------------------------------------
 *
 * The model reaches a backend only through this table (ggml's ggml_backend_i,
 * reduced to what a MoE forward pass needs).  Every pointer an op takes for
 * activations, weights or the KV cache is BACKEND memory: memory the backend
 * allocated (alloc, kv_alloc) or uploaded (upload, upload_w).  On the CPU
 * backend that is ordinary host memory (uploads are zero-copy); on CUDA it is
 * device memory, and the model never dereferences it.  Arguments marked
 * "host" are host memory read by the op before it returns.
 *
 * Errors: every op returns 0, or -1 when it could not get memory or the device
 * failed (its outputs are then undefined; nothing else changed).  No op aborts.
 * Numbers: the CPU backend is the reference; each output element is computed
 * the same way whatever the batch (batch invariance, bit-exact on the CPU).
 * Ops run in call order (a device backend queues them on one stream);
 * get() waits for everything queued before it. */

typedef struct eng_backend eng_backend_t;

/* One sequence's slice of a forward batch, for attention.  Its cache is
 * paged: position p of this layer is the row
 *   k + blocks[p / B] * stride + (p % B) * row
 * (row = c+dr floats for MLA, kvh*hd for GQA keys; v the same for values).
 * k and v are backend memory; blocks is host memory. */
typedef struct {
    int tok0;               /* index of its first new token in the batch */
    int n;                  /* new tokens */
    int pos0;               /* position of its first new token (= cache length before the call) */
    const int32_t *blocks;  /* its block table (host) */
    int B;                  /* tokens per block */
    size_t stride;          /* floats from one block to the next */
    const float *k;         /* block 0's rows of this layer (MLA: [B][c+dr]; GQA keys [B][kvh*hd]) */
    const float *v;         /* GQA: values, likewise; MLA: NULL */
} eng_attn_seq_t;

/* Row of position p in a paged cache (k or v of an eng_attn_seq_t). */
static inline const float *eng_attn_row(const eng_attn_seq_t *s, const float *base, int p, int row) {
    return base + (size_t)s->blocks[p / s->B] * s->stride + (size_t)(p % s->B) * row;
}

/* One matmul of a multi-matmul step: Y [n, w.rows] = X [n, w.cols] @ W^T. */
typedef struct {
    const eng_w_t *w;
    const float *x;
    int n;
    float *y;
} eng_mm_t;

/* The router of a MoE layer (REFERENCE-DEEPSEEK.md "MoE"). */
typedef struct {
    int E, topk, n_group, topk_group;
    int sigmoid;              /* scores: sigmoid (V3) or softmax (V2, Mixtral) */
    int norm_topk;            /* renormalise the k weights (when k > 1) */
    float routed_scale;
    int scale_after_norm;     /* V3: always scale; V2 (HF): scale only when not normalised */
    const float *bias;        /* [E] e_score_correction_bias (backend memory) or NULL */
} eng_route_t;

/* The experts of a MoE layer: E routed SwiGLU MLPs, and a shared one. */
typedef struct {
    int E, D, inter;          /* experts; hidden; moe_intermediate_size */
    const eng_w_t *eg, *eu, *ed;  /* E of [inter, D], [inter, D], [D, inter] */
    int has_shared, shared_inter;
    const eng_w_t *sg, *su, *sd;  /* [Is, D], [Is, D], [D, Is] */
} eng_moe_t;

typedef struct {
    const char *name;
    /* "cpu/avx512", "cuda:0/NVIDIA H200": the backend and what it runs on. */
    const char *(*describe)(eng_backend_t *be);

    /* -- memory -- */
    /* n bytes of backend memory (scratch, activations); NULL on failure. */
    void *(*alloc)(eng_backend_t *be, size_t n);
    void (*release)(eng_backend_t *be, void *p);  /* accepts NULL */
    /* The KV pool: n bytes, zero pages are not promised; NULL on failure. */
    void *(*kv_alloc)(eng_backend_t *be, size_t n);
    void (*kv_release)(eng_backend_t *be, void *p, size_t n);
    /* host -> backend, backend -> host (waits for queued ops), backend -> backend */
    int (*set)(eng_backend_t *be, void *dst, const void *src_host, size_t n);
    int (*get)(eng_backend_t *be, void *dst_host, const void *src, size_t n);
    int (*copy)(eng_backend_t *be, void *dst, const void *src, size_t n);
    /* Weights, once at load: w's data and scale now point to backend copies in
     * their stored type (the CPU uses the mapping in place, except on its amx
     * and avx512bf16 levels, where a bf16 weight is re-laid once into AMX
     * tiles or T16 groups: w->layout = ENG_W_AMX or ENG_W_T16).  Owned by the
     * backend until its free.  When w->data changed,
     * the caller may drop the source's pages (the backend never reads them
     * again).  upload: the same for an fp32 vector [n]; the
     * host copy must live as long as the backend (the CPU keeps using it). */
    int (*upload_w)(eng_backend_t *be, eng_w_t *w);
    const float *(*upload)(eng_backend_t *be, const float *host, size_t n);

    /* -- ops (all pointers backend memory unless marked host) -- */
    /* x [T, D] = rows ids[T] (host) of emb [vocab, D], widened to fp32 */
    int (*embed)(eng_backend_t *be, const eng_w_t *emb, const int32_t *ids, int T, float *x);
    /* x [T, n] rows (leading dims ldo, ldx): out = x * rsqrt(mean(x^2) + eps) * w
     * (sum of squares in double); out may equal x. */
    int (*rmsnorm)(eng_backend_t *be, float *out, int ldo, const float *x, int ldx, const float *w, int T, int n,
                   float eps);
    /* RoPE in place on nh heads of every row t of x [T, ld]: head h's rd values
     * start at x + t*ld + h*hs + off; pairs (2i,2i+1) when interleaved, else
     * (i, i+rd/2); angle from cos/sin [max_pos][rd/2] at row pos[t]. */
    int (*rope)(eng_backend_t *be, float *x, int T, int ld, int nh, int hs, int off, int rd, int interleaved,
                const int32_t *pos, const float *cos, const float *sin);
    /* cache[dst[t] .. + width) = src [t, 0..width) (row t at src + t*lds), t < T;
     * dst [T] are float offsets into one layer's cache. */
    int (*kv_store)(eng_backend_t *be, float *cache, const int64_t *dst, const float *src, int lds, int width,
                    int T);
    /* y [n] += x [n] */
    int (*add)(eng_backend_t *be, float *y, const float *x, size_t n);
    /* The residual add fused with the next norm: x [T, n] += y [T, n], then
     * xn [T, n] = rmsnorm(x; w) (the numbers of add then rmsnorm). */
    int (*add_rmsnorm)(eng_backend_t *be, float *x, const float *y, const float *w, float *xn, int T, int n,
                       float eps);
    /* g [n] = silu(g) * u */
    int (*swiglu)(eng_backend_t *be, float *g, const float *u, size_t n);
    /* dst [i] = src row rows[i] (host), i < n; rows of width floats. */
    int (*gather)(eng_backend_t *be, float *dst, const float *src, const int32_t *rows, int n, int width);
    /* Y [n, w.rows] = X [n, w.cols] @ W^T. */
    int (*matmul)(eng_backend_t *be, const eng_w_t *w, const float *x, int n, float *y);
    /* Several independent matmuls as one step (same numbers as one by one). */
    int (*matmul_multi)(eng_backend_t *be, const eng_mm_t *jobs, int njobs);
    /* MLA attention (absorbed) over the paged cache: q [T, H*(dn+dr)] with
     * RoPE applied, writes out [T, H*dv].  kv_b = W [H*(dn+dv), c].  Prefill
     * and decode tokens alike (causal within each sequence). */
    int (*attn_mla)(eng_backend_t *be, const eng_w_t *kv_b, int H, int dn, int dr, int dv, int c, float scale,
                    const float *q, const eng_attn_seq_t *seqs, int nseq, float *out);
    /* GQA attention: q [T, H*hd], out [T, H*hd]. */
    int (*attn_gqa)(eng_backend_t *be, int H, int kvh, int hd, float scale, const float *q,
                    const eng_attn_seq_t *seqs, int nseq, float *out);
    /* The gate: logits [T, E] -> sel [T, k] expert ids, wts [T, k] weights
     * (scores, correction bias, group-limited top-k, normalisation, scale). */
    int (*route)(eng_backend_t *be, const eng_route_t *r, const float *logits, int T, int32_t *sel, float *wts);
    /* y [T, D] = sum_j wts[t,j] * Expert_sel[t,j](x_t) + Shared(x_t): grouped
     * expert matmuls over the tokens routed to each expert, SwiGLU, combine in
     * slot order. */
    int (*moe)(eng_backend_t *be, const eng_moe_t *moe, const float *x, int T, int K, const int32_t *sel,
               const float *wts, float *y);
    /* ids [n] (host) = argmax of each row of logits [n, vocab] (lowest id on ties). */
    int (*argmax)(eng_backend_t *be, const float *logits, int n, int vocab, int32_t *ids);
    /* Optional (NULL: the host samples from a logits copy).  For each row i of
     * logits [n, vocab]: req[i] (host) gets id and used_u by the semantics of
     * eng_sample_pick_u over ids [0, req[i].n_allowed).  Waits for the result. */
    int (*sample)(eng_backend_t *be, const float *logits, int n, int vocab, eng_sample_req_t *req);
    void (*free)(eng_backend_t *be);
} eng_backend_ops_t;

/* Allocation of the forward pass's and the backends' host scratch.  malloc,
 * except that TOLLGATE_ENGINE_MAX_ALLOC=N (a test knob, read once) makes every
 * request above N bytes fail, as a machine out of memory would. */
void *eng_alloc(size_t n);

struct eng_backend {
    const eng_backend_ops_t *ops;
    int n_threads;
};

/* ---- backend registry (eng_backend.c) ----------------------------------------------
 * device: "cpu" (or NULL/""), "cuda" (= "cuda:0"), "cuda:N".  Returns the
 * backend, or NULL with a message in err: an unknown device, a backend this
 * build lacks (make CUDA=1), or a device that is not there. */
eng_backend_t *eng_backend_open(const char *device, int n_threads, char *err, size_t errlen);
/* The names the registry knows and whether this build has each, e.g. "cpu cuda(not built)". */
const char *eng_backend_list(void);

eng_backend_t *eng_cpu_backend_new(int n_threads, char *err, size_t errlen);
/* engine/cuda/ (make CUDA=1); device index dev. */
eng_backend_t *eng_cuda_backend_new(int dev, char *err, size_t errlen);

/* Weight row widened to fp32 on the host, portable C (load time only:
 * norms, int8 quantization).  out [w.cols]. */
void eng_w_row_f32(const eng_w_t *w, int64_t r, float *out);

/* ---- model ---------------------------------------------------------------- */

typedef struct {
    int moe;
    const float *attn_norm, *ffn_norm; /* [D] (backend memory, like every tensor here) */
    /* MLA (DeepSeek) */
    eng_w_t q_proj;                   /* [H*(dn+dr), D] when q_lora_rank == 0 */
    eng_w_t q_a, q_b;                 /* [ql, D], [H*(dn+dr), ql] */
    const float *q_a_norm;            /* [ql] */
    eng_w_t kv_a;                     /* [c+dr, D] */
    const float *kv_a_norm;           /* [c] */
    eng_w_t kv_b;                     /* [H*(dn+dv), c] */
    /* GQA (Mixtral) */
    eng_w_t wq, wk, wv;               /* [H*hd, D], [kvh*hd, D], [kvh*hd, D] */
    eng_w_t o_proj;                   /* [D, H*dv] */
    /* dense FFN */
    eng_w_t gate, up, down;           /* [I, D], [I, D], [D, I] */
    /* MoE */
    eng_w_t router;                   /* [E, D] */
    const float *router_bias;         /* [E] or NULL */
    eng_w_t *eg, *eu, *ed;            /* E of [Im, D], [Im, D], [D, Im] */
    int has_shared;
    eng_w_t sg, su, sd;               /* [Is, D], [Is, D], [D, Is] */
} eng_layer_t;

typedef struct {
    int D, n_layers, vocab, H;
    float eps;
    /* MLA */
    int q_lora, c, dn, dr, dv;
    /* GQA */
    int kvh, hd;
    int rope_interleaved;             /* DeepSeek: pairs (2i,2i+1); Mixtral: (i, i+hd/2) */
    float rope_theta;
    int first_dense, moe_freq;
    int inter, moe_inter, n_shared;
    int E, topk, n_group, topk_group;
    int sigmoid;                      /* scoring_func */
    int norm_topk;
    float routed_scale;
    int group_sum2;                   /* group score = sum of top-2 (V3, noaux_tc) vs max */
    int scale_after_norm;             /* V3: always scale; V2 (HF): scale only when not normalized */
    int max_pos;
    /* YaRN */
    int yarn;
    float yarn_factor, yarn_mscale, yarn_mscale_all, beta_fast, beta_slow;
    int orig_max_pos;
} eng_cfg_t;

/* ---- KV pool (eng_kv.c) -------------------------------------------------------- */

typedef struct eng_kv eng_kv_t;

eng_kv_t *eng_kv_new(eng_backend_t *be, int n_layers, int row, int has_v, size_t bytes, char *err, size_t errlen);
void eng_kv_free(eng_kv_t *kv);
void eng_kv_get_stats(const eng_kv_t *kv, eng_kv_stats_t *out);
int eng_kv_available(const eng_kv_t *kv);
int eng_kv_blocks_total(const eng_kv_t *kv);
int eng_kv_block_tokens(const eng_kv_t *kv);
size_t eng_kv_block_floats(const eng_kv_t *kv);
float *eng_kv_mem(const eng_kv_t *kv);
/* After a successful forward: register the sequence's newly filled blocks. */
void eng_seq_commit(eng_seq_t *s);
/* Where the forward pass writes token p's id and its rows (p < reserved length). */
int32_t *eng_seq_tok_slot(eng_seq_t *s, int p);
/* Backend memory: the host may dereference it only on the CPU backend. */
float *eng_seq_row(eng_seq_t *s, int layer, int p, int v);

struct eng_model {
    eng_model_info_t info;
    eng_kv_t *kv;                     /* the KV pool of every sequence */
    eng_cfg_t cfg;
    char arch_name[64];
    eng_st_t *st;
    eng_backend_t *be;
    eng_w_t embed, lm_head;
    const float *final_norm;          /* [D] */
    eng_layer_t *layers;
    const float *rope_cos, *rope_sin; /* [max_seq_len][rd/2] */
    float **vecs;                     /* host copies of the fp32 vectors above (the model owns them) */
    int n_vecs, cap_vecs;
    float attn_scale;
    void *owned;                      /* int8 quantized buffers (one block) */
    size_t owned_n;
    void **owned_list;
    /* tracing: routed expert ids of the last forward, [n_layers][T][topk] */
    int trace_on;
    int32_t *trace;
    int trace_T;
};

struct eng_seq {
    eng_model_t *m;
    eng_kv_t *kv;
    int len, max_len;
    int32_t *blocks;                  /* [cap_blocks] block ids; n_blocks held */
    int n_blocks, cap_blocks;
    int n_keyed;                      /* leading full blocks whose chain key is known */
    uint64_t key;                     /* chain key of block n_keyed-1 (root if none) */
    uint64_t root;                    /* the chain's root: its cache namespace (tg_prefix_root) */
};

/* Weight row helper of the CPU backend (eng_cpu_kernels.c). */
void eng_cpu_row_f32(const eng_w_t *w, int64_t r, float *out);

#endif
