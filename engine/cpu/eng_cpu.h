/* eng_cpu.h — the CPU backend's internals: thread pool and kernels.  Only
 * engine/cpu/ and the engine's tests include this. */
#ifndef ENG_CPU_H
#define ENG_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "eng_model_int.h"

typedef struct eng_cpu_pool eng_cpu_pool_t;

/* n threads in all, the caller included (n <= 1: run inline). */
eng_cpu_pool_t *eng_cpu_pool_new(int n);
void eng_cpu_pool_free(eng_cpu_pool_t *p);
int eng_cpu_pool_size(const eng_cpu_pool_t *p);
void eng_cpu_pool_run(eng_cpu_pool_t *p, void (*fn)(void *arg, int i, int n), void *arg);
/* The same for a job whose threads take their work from a shared counter:
 * any subset of the threads completes it, so a worker that has not started
 * when the caller runs out of work is left out (fn(arg, i, n) may run for
 * only some i; 0 always). */
void eng_cpu_pool_run_any(eng_cpu_pool_t *p, void (*fn)(void *arg, int i, int n), void *arg);

/* The instruction set the kernels chose at start-up: "amx" (AVX-512, and AMX
 * tiles for bf16 weights), "avx512bf16" (AVX-512, and its bf16 dot product
 * for bf16 weights: a CPU without AMX), "avx512", "avx2" or "scalar".  On
 * avx512 and above, int8 weights run on AVX512-VNNI where the CPU has it
 * (eng_cpu_vnni_uses).  TOLLGATE_ENGINE_ISA=scalar|avx2|avx512|avx512bf16|amx
 * forces a lower one. */
const char *eng_cpu_isa(void);

/* a [n] . b [n] in fp32, with an accumulation order that depends only on n. */
float eng_cpu_dot(const float *a, const float *b, int n);
/* y [n] += a * x [n] */
void eng_cpu_axpy(float *y, float a, const float *x, int n);
/* y [n] += a[d] * rows[d * ldr ...] for d = 0..nr-1 in order: the same result as nr eng_cpu_axpy calls */
void eng_cpu_axpy_rows(float *y, const float *a, const float *rows, size_t ldr, int nr, int n);
/* s[k] = e^(s[k] - m) for k < n, every s[k] <= m (softmax weights; AVX-512: a polynomial within ~1 ulp of expf) */
void eng_cpu_exp_shift(float *s, int n, float m);
/* g [n] = silu(g) * u (SwiGLU; AVX-512: e^x by the polynomial above, within ~1 ulp of the expf form) */
void eng_cpu_swiglu(float *g, const float *u, size_t n);
/* out[k] = eng_cpu_dot(x, rows + k * ldr, n) for k = 0..nr-1 (the same values) */
void eng_cpu_dot_rows(const float *x, const float *rows, size_t ldr, int nr, int n, float *out);
/* y[h * ldy ..] += a[h * lda + d] * rows[d * ldr ..] for h < nh, d in order:
 * the same values as one eng_cpu_axpy_rows per vector, each row loaded once
 * per block of vectors */
void eng_cpu_axpy_rows_multi(float *y, size_t ldy, const float *a, size_t lda, int nh, const float *rows, size_t ldr,
                             int nr, int n);
/* One tile of nr <= 16 cache rows of attention with a running softmax, for
 * nh <= 16 heads at once: head h's query is lane h of qT [n][16], and
 * part + h * ldp holds its o [c], m, l.  With s_k = scale * sum_{d < n}
 * rows_k[d] qT[d][h] (d in order, one fma each) and m' = max(m, s_k):
 * o = o e^(m - m') + sum_k e^(s_k - m') rows_k[0..c), l likewise, m = m'.
 * A head's numbers depend on its lane alone, never on nh or the other heads.
 * pbuf: 256 floats of scratch.  next, next_bytes: memory to prefetch while
 * the scores are summed (the next tile's rows; NULL, 0: none). */
void eng_cpu_attn_tile16(const float *qT, int nh, int n, int c, float scale, const float *rows, size_t ldr, int nr,
                         float *part, size_t ldp, float *pbuf, const void *next, size_t next_bytes);
/* Rows r0..r0+nr-1 of a weight, without an fp32 copy where the kernels can
 * read them in place (bf16 in AMX tiles): y [cols] += a[d] * W[r0 + d] in d
 * order (as eng_cpu_row_f32 + eng_cpu_axpy_rows), out[d] = dot(W[r0 + d], x)
 * (as eng_cpu_row_f32 + eng_cpu_dot): the same values either way.  buf:
 * [cols] floats for the rows that are copied. */
void eng_cpu_w_axpy_rows(const eng_w_t *w, int64_t r0, int nr, const float *a, float *y, float *buf);
void eng_cpu_w_dot_rows(const eng_w_t *w, int64_t r0, int nr, const float *x, float *out, float *buf);
/* the same for nt tokens: a + t * lda, y + t * ldy (x + t * ldx, out + t * ldo) for t < nt, the same
 * values as one call per token, each row read once per block of tokens */
void eng_cpu_w_axpy_rows_multi(const eng_w_t *w, int64_t r0, int nr, const float *a, size_t lda, int nt, float *y,
                               size_t ldy, float *buf);
void eng_cpu_w_dot_rows_multi(const eng_w_t *w, int64_t r0, int nr, const float *x, size_t ldx, int nt, float *out,
                              size_t ldo, float *buf);

/* A matmul of w over n tokens may want its activations prepared once (AMX:
 * split into bf16 hi and lo tiles): eng_cpu_xprep_bytes says how many bytes
 * (0: none), eng_cpu_xprep writes them into xp (64-byte aligned). */
size_t eng_cpu_xprep_bytes(const eng_w_t *w, int n);
void eng_cpu_xprep(const eng_w_t *w, const float *x, int n, void *xp);
/* the same, for the groups of 16 tokens g0..g1-1 of ceil(n / 16) (AMX: each group's tiles on their own),
 * token t being row rows[t] of x (rows NULL: row t; an MoE expert's tokens read in place) */
void eng_cpu_xprep_groups(const eng_w_t *w, const float *x, const int32_t *rows, int n, void *xp, int g0, int g1);

/* Rows per parallel chunk of a matmul of w over n tokens (a multiple of 16):
 * about ENG_CPU_CHUNK_COST weight elements x tokens of FMA work (256 KB of
 * bf16 at batch 1): large enough that taking a chunk costs little, small
 * enough to balance the threads. */
#define ENG_CPU_CHUNK_COST (128 << 10)
int64_t eng_cpu_chunk_rows(const eng_w_t *w, int n);

/* Y [n, rows r0..r1) = X [n, cols] @ W^T on the calling thread; ld = w->rows;
 * xp: the prepared activations when eng_cpu_xprep_bytes(w, n) > 0, else unused. */
void eng_cpu_matmul_rows(const eng_w_t *w, const float *x, const void *xp, int n, float *y, int64_t r0, int64_t r1,
                         float *rowbuf);

/* AMX (eng_cpu_amx.c): probe (and ask Linux for the tile state), the size
 * and layout of prepared activations. */
int eng_cpu_amx_probe(void);
size_t eng_cpu_amx_xbytes(int n, int64_t C);
void eng_cpu_amx_xprep(const float *x, int n, int64_t C, uint16_t *xp);
void eng_cpu_amx_xprep_groups(const float *x, const int32_t *rows, int n, int64_t C, uint16_t *xp, int g0, int g1);
/* Weights re-laid at load as AMX tiles (eng_w_t.layout ENG_W_AMX; the layout
 * is described in eng_cpu_amx.c): elements the tiled copy of a [R, C] bf16
 * weight takes; the re-laying (dst: that many elements, 64-byte aligned);
 * where row r's first 32 columns are and the elements to its next 32; and Y rows
 * r0..r1 (r0 % 16 == 0) with the tiles loaded in place. */
size_t eng_cpu_amx_tiled_elems(int64_t R, int64_t C);
void eng_cpu_amx_tile_w(const uint16_t *W, int64_t R, int64_t C, uint16_t *dst);
const uint16_t *eng_cpu_amx_row_at(const uint16_t *T, int64_t R, int64_t C, int64_t r, int64_t *step);
void eng_cpu_amx_rows_tiled(const uint16_t *T, int64_t R, int64_t C, const uint16_t *xp, int n, float *y,
                            int64_t ldy, int64_t r0, int64_t r1, float *scratch);
/* Weights the kernels want re-laid once at upload (bf16: AMX tiles on the amx
 * level, T16 groups on avx512bf16): the bytes of the copy (0: w is used in
 * place), and the copy itself into dst (64-byte aligned), returning the
 * layout to set in w->layout. */
size_t eng_cpu_w_relaid_bytes(const eng_w_t *w);
int eng_cpu_w_relay(const eng_w_t *w, void *dst);
/* floats of per-thread scratch eng_cpu_amx_rows_tiled needs for n tokens of C columns */
size_t eng_cpu_amx_scratch_floats(int n, int64_t C);
/* int8 x int8 (eng_cpu_vnni.c, AVX512-VNNI): int8 weights (ENG_DT_I8) on the
 * avx512 and amx levels of a CPU with VNNI.  Prepared activations: each
 * token's x quantized per qblk-column block (u8 = round(x / sx) + 128, sx =
 * amax / 127); its bytes; the tokens t0..t1-1 quantized into xp; where token
 * t's bytes (x_ld(C) apart) and block scales are; Y rows r0..r1 of n tokens. */
int eng_cpu_vnni_probe(void);
/* 1 when matmuls of w run int8 x int8 on VNNI in this process */
int eng_cpu_vnni_uses(const eng_w_t *w);
/* 1 when this process runs int8 weights on VNNI at all */
int eng_cpu_vnni_on(void);
size_t eng_cpu_vnni_xbytes(int n, int64_t C, int qblk);
void eng_cpu_vnni_xprep(const float *x, const int32_t *rows, int n, int64_t C, int qblk, void *xp, int t0, int t1);
const uint8_t *eng_cpu_vnni_xq(const void *xp, int n, int64_t C, int qblk, int t);
const float *eng_cpu_vnni_xs(const void *xp, int n, int64_t C, int qblk, int t);
void eng_cpu_vnni_rows(const eng_w_t *w, const void *xp, int n, float *y, int64_t r0, int64_t r1);
/* bf16 x bf16 (eng_cpu_bf16.c, AVX512-BF16): bf16 weights on the avx512bf16
 * level, in rows or re-laid at upload into T16 groups (elements of the copy,
 * the re-laying, where row r's first 32 columns are and the elements to its
 * next 32).  Prepared activations: each token's x split into bf16 hi and lo
 * parts; their bytes; tokens t0..t1-1 split into xp; Y rows r0..r1 (T16:
 * r0 % 16 == 0). */
size_t eng_cpu_bf16_t16_elems(int64_t R, int64_t C);
/* rows r..r+15, columns 32 kb..32 kb+31 of W [R, C] into the 16 x 32 block t,
 * zeros past R and C (both re-layings are made of these blocks) */
void eng_cpu_w_block16(const uint16_t *W, int64_t R, int64_t C, int64_t r, int64_t kb, uint16_t *t);
void eng_cpu_bf16_t16_w(const uint16_t *W, int64_t R, int64_t C, uint16_t *dst);
const uint16_t *eng_cpu_bf16_t16_row_at(const uint16_t *T, int64_t C, int64_t r, int64_t *step);
int eng_cpu_bf16_probe(void);
size_t eng_cpu_bf16_xbytes(int n, int64_t C);
void eng_cpu_bf16_xprep(const float *x, const int32_t *rows, int n, int64_t C, void *xp, int t0, int t1);
void eng_cpu_bf16_rows(const eng_w_t *w, const void *xp, int n, float *y, int64_t r0, int64_t r1);
/* floats of per-thread scratch (rowbuf) eng_cpu_matmul_rows needs */
size_t eng_cpu_rowbuf_floats(const eng_w_t *w, int n);

#endif
