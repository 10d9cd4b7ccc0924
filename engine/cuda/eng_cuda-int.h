/* eng_cuda-int.h — private to engine/cuda/: the CUDA backend's struct, the
 * checked-call macros and the kernels' entry points (one .cu per op family).
 *
 * Invariants: every tensor the model hands this backend is device memory
 * (cudaMalloc: weights in their stored type, fp32 activations, the KV pool);
 * every op is queued on the backend's one stream, in call order; only get()
 * and the ops that return host values (argmax, MoE routing for tracing via
 * get) wait for the stream.  Every CUDA and cuBLAS call goes through
 * CU_CHECK / CUBLAS_CHECK, which print file:line and the error and make the
 * op return -1. */
#ifndef ENG_CUDA_INT_H
#define ENG_CUDA_INT_H

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

extern "C" {
#include "eng_model_int.h"
}

#define CU_CHECK(call)                                                                                   \
    do {                                                                                                 \
        cudaError_t e_ = (call);                                                                         \
        if (e_ != cudaSuccess) {                                                                         \
            fprintf(stderr, "cuda: %s:%d: %s: %s (%d)\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_), \
                    (int)e_);                                                                            \
            return -1;                                                                                   \
        }                                                                                                \
    } while (0)

#define CUBLAS_CHECK(call)                                                                               \
    do {                                                                                                 \
        cublasStatus_t s_ = (call);                                                                      \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                               \
            fprintf(stderr, "cublas: %s:%d: %s: %s (%d)\n", __FILE__, __LINE__, #call,                   \
                    cublasGetStatusString(s_), (int)s_);                                                 \
            return -1;                                                                                   \
        }                                                                                                \
    } while (0)

/* teardown and clean-up paths, which cannot fail the op: the error is still
 * reported with file:line */
#define CU_WARN(call)                                                                                    \
    do {                                                                                                 \
        cudaError_t e_ = (call);                                                                         \
        if (e_ != cudaSuccess)                                                                           \
            fprintf(stderr, "cuda: %s:%d: %s: %s (%d)\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_), \
                    (int)e_);                                                                            \
    } while (0)

/* a kernel's dynamic shared memory (a macro: tests/engine/cuda_emu.h maps it to host memory) */
#ifndef CU_DYN_SHARED
#define CU_DYN_SHARED(type, name) extern __shared__ type name[]
#endif

/* a kernel launch, k<<<grid, block, smem, st>>>(args): a macro, so that
 * tests/engine/cuda_emu_inc/ can run the whole backend on the host */
#ifndef CU_LAUNCH
#define CU_LAUNCH(k, grid, block, smem, st, ...) k<<<grid, block, smem, st>>>(__VA_ARGS__)
#endif

/* a kernel launch: the launch error (bad configuration) checked at once */
#define CU_LAUNCHED() CU_CHECK(cudaGetLastError())

typedef struct {
    void *p;
    size_t n;
} cu_block_t;

#define CU_CACHE 256

#define SCR_N 12 /* scratch slots (the SCR_ enum below) */

typedef struct {
    eng_backend_t base;
    int dev;
    cudaStream_t st;
    cublasHandle_t blas;
    char desc[320];
    /* freed blocks kept for reuse by exact size (a forward allocates the same sizes every step) */
    cu_block_t cache[CU_CACHE];
    int n_cache;
    cu_block_t *live;       /* allocations handed out (their sizes) */
    int n_live, cap_live;
    /* everything uploaded (weights, scales, vectors): freed with the backend */
    void **owned;
    int n_owned, cap_owned;
    /* per-op scratch, grown on demand */
    void *scr[SCR_N];
    size_t scr_n[SCR_N];
    /* pinned staging ring for small host->device copies (a copy from pageable
     * memory waits for the whole stream first); wrapping waits for the stream */
    char *ring;
    size_t ring_n, ring_off;
    /* the last block tables uploaded for attention (the same for every layer of a forward) */
    int32_t *pages_h;
    size_t pages_n;
    /* the device copy of each MoE layer's expert table, by (eg, eg[0].data) */
    struct cu_moe_tab *moe_tabs;
    int n_moe_tabs;
} cu_be_t;

enum { SCR_IDX = 0, SCR_ATT, SCR_ATT2, SCR_MOE, SCR_MM, SCR_HOST_ATT, SCR_SAMPLE, SCR_PROB, SCR_MOE_TC, SCR_MOE_PTR };

/* dst (device) = src (host, n bytes), queued on the stream; src may be reused at once */
int eng_cuda_h2d(cu_be_t *b, void *dst, const void *src, size_t n);
/* scratch slot k of at least n bytes (device memory); NULL on failure */
void *eng_cuda_scratch(cu_be_t *b, int k, size_t n);
/* pinned-free helper: device memory through the backend's cache */
void *eng_cuda_alloc(cu_be_t *b, size_t n);
void eng_cuda_release(cu_be_t *b, void *p);

/* eng_cuda_mm.cu */
int eng_cuda_matmul(eng_backend_t *be, const eng_w_t *w, const float *x, int n, float *y);
int eng_cuda_matmul_multi(eng_backend_t *be, const eng_mm_t *jobs, int njobs);
int eng_cuda_moe(eng_backend_t *be, const eng_moe_t *moe, const float *x, int T, int K, const int32_t *sel,
                 const float *wts, float *y);
void eng_cuda_moe_tabs_free(cu_be_t *b);
/* eng_cuda_attn.cu */
int eng_cuda_attn_mla(eng_backend_t *be, const eng_w_t *kv_b, int H, int dn, int dr, int dv, int c, float scale,
                      const float *q, const eng_attn_seq_t *seqs, int nseq, float *out);
int eng_cuda_attn_gqa(eng_backend_t *be, int H, int kvh, int hd, float scale, const float *q,
                      const eng_attn_seq_t *seqs, int nseq, float *out);
/* eng_cuda_sample.cu: the sample op (temperature, top-k, top-p, the draw) */
int eng_cuda_sample(eng_backend_t *be, const float *logits, int n, int vocab, eng_sample_req_t *req);
/* eng_cuda_route.cu */
int eng_cuda_route(eng_backend_t *be, const eng_route_t *r, const float *logits, int T, int32_t *sel, float *wts);

#include "eng_cuda_w.h"

#endif
