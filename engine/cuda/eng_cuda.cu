/* eng_cuda.cu — the CUDA backend: device selection, memory (weights uploaded
 * once with cudaMalloc in their stored type; a size-exact cache for the
 * forward pass's buffers; the KV pool), host<->device copies, the per-token
 * kernels (embed, RMSNorm, RoPE, KV store, add, SwiGLU, gather, argmax) and the
 * ops table.  Matmuls and the MoE experts: eng_cuda_mm.cu; attention:
 * eng_cuda_attn.cu; the router: eng_cuda_route.cu.
 *
 * Everything runs on one stream per backend in call order; get() and argmax
 * wait for it.  A machine without a usable device gets "no CUDA device ..."
 * from the constructor (the registry passes it on to `--device cuda:N`). */
#include <stdlib.h>
#include <string.h>

#include "eng_cuda-int.h"
#include "eng_cuda_glue_kernel.h"

/* ---- memory ------------------------------------------------------------------- */

static int live_add(cu_be_t *b, void *p, size_t n) {
    if (b->n_live == b->cap_live) {
        int cap = b->cap_live ? 2 * b->cap_live : 256;
        cu_block_t *nl = (cu_block_t *)realloc(b->live, cap * sizeof *nl);
        if (!nl) return -1;
        b->live = nl;
        b->cap_live = cap;
    }
    b->live[b->n_live].p = p;
    b->live[b->n_live].n = n;
    b->n_live++;
    return 0;
}

static size_t live_take(cu_be_t *b, void *p) {
    for (int i = b->n_live - 1; i >= 0; i--)
        if (b->live[i].p == p) {
            size_t n = b->live[i].n;
            b->live[i] = b->live[--b->n_live];
            return n;
        }
    return 0;
}

static void cache_drop(cu_be_t *b) {
    CU_WARN(cudaStreamSynchronize(b->st));
    for (int i = 0; i < b->n_cache; i++) CU_WARN(cudaFree(b->cache[i].p));
    b->n_cache = 0;
}

void *eng_cuda_alloc(cu_be_t *b, size_t n) {
    if (!n) n = 4;
    n = (n + 255) & ~(size_t)255;
    void *p = NULL;
    for (int i = 0; i < b->n_cache; i++)
        if (b->cache[i].n == n) {
            p = b->cache[i].p;
            b->cache[i] = b->cache[--b->n_cache];
            break;
        }
    if (!p) {
        cudaError_t e = cudaMalloc(&p, n);
        if (e != cudaSuccess) { /* give the cache back and try once more */
            (void)cudaGetLastError();
            cache_drop(b);
            e = cudaMalloc(&p, n);
            if (e != cudaSuccess) {
                (void)cudaGetLastError();
                fprintf(stderr, "cuda: %s:%d: cudaMalloc(%zu): %s\n", __FILE__, __LINE__, n, cudaGetErrorString(e));
                return NULL;
            }
        }
    }
    if (live_add(b, p, n)) {
        CU_WARN(cudaFree(p));
        return NULL;
    }
    return p;
}

/* A released buffer may still be read by queued kernels: it is handed out
 * again only to later ops on the same stream, which run after them. */
void eng_cuda_release(cu_be_t *b, void *p) {
    if (!p) return;
    size_t n = live_take(b, p);
    if (n && b->n_cache < CU_CACHE) {
        b->cache[b->n_cache].p = p;
        b->cache[b->n_cache].n = n;
        b->n_cache++;
        return;
    }
    CU_WARN(cudaStreamSynchronize(b->st));
    cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) fprintf(stderr, "cuda: %s:%d: cudaFree: %s\n", __FILE__, __LINE__, cudaGetErrorString(e));
}

void *eng_cuda_scratch(cu_be_t *b, int k, size_t n) {
    if (n <= b->scr_n[k] && b->scr[k]) return b->scr[k];
    if (k == SCR_ATT2) { /* the block tables it held are gone */
        free(b->pages_h);
        b->pages_h = NULL;
        b->pages_n = 0;
    }
    if (b->scr[k]) {
        CU_WARN(cudaStreamSynchronize(b->st)); /* queued kernels may still use it */
        CU_WARN(cudaFree(b->scr[k]));
        b->scr[k] = NULL;
        b->scr_n[k] = 0;
    }
    size_t want = n < 4096 ? 4096 : n + n / 4;
    cudaError_t e = cudaMalloc(&b->scr[k], want);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        b->scr[k] = NULL;
        fprintf(stderr, "cuda: %s:%d: cudaMalloc(%zu) for scratch: %s\n", __FILE__, __LINE__, want,
                cudaGetErrorString(e));
        return NULL;
    }
    b->scr_n[k] = want;
    return b->scr[k];
}

#define RING_BYTES (8u << 20)

/* Small copies go through a pinned ring: cudaMemcpyAsync from pinned memory
 * does not wait for the stream, so the host keeps queueing work.  A slot is
 * reused only after the stream has passed it (the wrap synchronises). */
int eng_cuda_h2d(cu_be_t *b, void *dst, const void *src, size_t n) {
    if (!n) return 0;
    size_t need = (n + 255) & ~(size_t)255;
    if (!b->ring || need > b->ring_n / 4) { /* large, or no ring: pageable copy (waits for the stream) */
        CU_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, b->st));
        return 0;
    }
    if (b->ring_off + need > b->ring_n) {
        CU_CHECK(cudaStreamSynchronize(b->st));
        b->ring_off = 0;
    }
    char *slot = b->ring + b->ring_off;
    memcpy(slot, src, n);
    b->ring_off += need;
    CU_CHECK(cudaMemcpyAsync(dst, slot, n, cudaMemcpyHostToDevice, b->st));
    return 0;
}

static cu_be_t *CB(eng_backend_t *be) { return (cu_be_t *)be; }

static const char *cu_describe(eng_backend_t *be) { return CB(be)->desc; }
static void *cu_alloc(eng_backend_t *be, size_t n) { return eng_cuda_alloc(CB(be), n); }
static void cu_release(eng_backend_t *be, void *p) { eng_cuda_release(CB(be), p); }

static void *cu_kv_alloc(eng_backend_t *be, size_t n) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n ? n : 4);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        fprintf(stderr, "cuda: %s:%d: cudaMalloc(%zu) for the KV cache: %s\n", __FILE__, __LINE__, n,
                cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void cu_kv_release(eng_backend_t *be, void *p, size_t n) {
    if (!p) return;
    CU_WARN(cudaStreamSynchronize(CB(be)->st));
    cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) fprintf(stderr, "cuda: %s:%d: cudaFree: %s\n", __FILE__, __LINE__, cudaGetErrorString(e));
}

/* From pageable host memory cudaMemcpyAsync returns once src has been staged,
 * so the caller may reuse src at once. */
static int cu_set(eng_backend_t *be, void *dst, const void *src, size_t n) { return eng_cuda_h2d(CB(be), dst, src, n); }

static int cu_get(eng_backend_t *be, void *dst, const void *src, size_t n) {
    if (!n) return 0;
    CU_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, CB(be)->st));
    CU_CHECK(cudaStreamSynchronize(CB(be)->st));
    return 0;
}

static int cu_copy(eng_backend_t *be, void *dst, const void *src, size_t n) {
    if (!n) return 0;
    CU_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, CB(be)->st));
    return 0;
}

static int own(cu_be_t *b, void *p) {
    if (b->n_owned == b->cap_owned) {
        int cap = b->cap_owned ? 2 * b->cap_owned : 1024;
        void **no = (void **)realloc(b->owned, cap * sizeof *no);
        if (!no) return -1;
        b->owned = no;
        b->cap_owned = cap;
    }
    b->owned[b->n_owned++] = p;
    return 0;
}

static int upload_bytes(cu_be_t *b, const void *host, size_t n, void **out) {
    void *p = NULL;
    CU_CHECK(cudaMalloc(&p, n ? n : 4));
    if (own(b, p)) {
        CU_WARN(cudaFree(p));
        return -1;
    }
    /* on the backend's stream: ordered before every kernel that reads it (a
     * plain cudaMemcpy from pageable memory may return before its DMA ends,
     * and the legacy stream does not order a non-blocking one) */
    if (n) CU_CHECK(cudaMemcpyAsync(p, host, n, cudaMemcpyHostToDevice, b->st));
    *out = p;
    return 0;
}

static size_t dt_size(eng_dtype_t dt) {
    switch (dt) {
    case ENG_DT_F32: return 4;
    case ENG_DT_BF16:
    case ENG_DT_F16: return 2;
    case ENG_DT_F8_E4M3:
    case ENG_DT_I8: return 1;
    default: return 0;
    }
}

/* The weight in its stored type (bf16 stays bf16, fp8 stays fp8 with its
 * 128x128 block scales), plain cudaMalloc, once. */
static int cu_upload_w(eng_backend_t *be, eng_w_t *w) {
    cu_be_t *b = CB(be);
    size_t es = dt_size(w->dt);
    if (!es) {
        fprintf(stderr, "cuda: %s:%d: tensor '%s': unsupported dtype %d\n", __FILE__, __LINE__,
                w->name ? w->name : "?", (int)w->dt);
        return -1;
    }
    void *d = NULL, *s = NULL;
    if (upload_bytes(b, w->data, (size_t)w->rows * w->cols * es, &d)) return -1;
    if (w->scale) {
        size_t ns = w->dt == ENG_DT_F8_E4M3 ? (size_t)((w->rows + 127) / 128) * w->scale_cols
                                            : (size_t)w->rows * w->scale_cols;
        if (upload_bytes(b, w->scale, ns * sizeof(float), &s)) return -1;
    }
    w->data = d;
    w->scale = (const float *)s;
    return 0;
}

static const float *cu_upload(eng_backend_t *be, const float *host, size_t n) {
    void *d = NULL;
    if (upload_bytes(CB(be), host, n * sizeof(float), &d)) return NULL;
    return (const float *)d;
}

/* ---- per-token kernels ------------------------------------------------------------- */

static unsigned blocks_for(size_t n, unsigned t) {
    size_t b = (n + t - 1) / t;
    return (unsigned)(b > 65535 * 16 ? 65535 * 16 : (b ? b : 1));
}

static int cu_embed(eng_backend_t *be, const eng_w_t *emb, const int32_t *ids, int T, float *x) {
    cu_be_t *b = CB(be);
    int32_t *d = (int32_t *)eng_cuda_scratch(b, SCR_IDX, (size_t)T * sizeof(int32_t));
    if (!d) return -1;
    if (eng_cuda_h2d(b, d, ids, (size_t)T * sizeof(int32_t))) return -1;
    CU_LAUNCH(k_embed, T, 256, 0, b->st, cu_w(emb), d, x);
    CU_LAUNCHED();
    return 0;
}

static int cu_rmsnorm(eng_backend_t *be, float *out, int ldo, const float *x, int ldx, const float *w, int T, int n,
                      float eps) {
    if (T <= 0) return 0;
    CU_LAUNCH(k_rmsnorm, T, 256, 0, CB(be)->st, out, ldo, x, ldx, w, n, eps);
    CU_LAUNCHED();
    return 0;
}

static int cu_rope(eng_backend_t *be, float *x, int T, int ld, int nh, int hs, int off, int rd, int interleaved,
                   const int32_t *pos, const float *cos, const float *sin) {
    if (T <= 0) return 0;
    CU_LAUNCH(k_rope, T, 128, 0, CB(be)->st, x, ld, nh, hs, off, rd, interleaved, pos, cos, sin);
    CU_LAUNCHED();
    return 0;
}

static int cu_kv_store(eng_backend_t *be, float *cache, const int64_t *dst, const float *src, int lds, int width,
                       int T) {
    if (T <= 0) return 0;
    CU_LAUNCH(k_kv_store, T, 256, 0, CB(be)->st, cache, dst, src, lds, width);
    CU_LAUNCHED();
    return 0;
}

static int cu_add(eng_backend_t *be, float *y, const float *x, size_t n) {
    if (!n) return 0;
    CU_LAUNCH(k_add, blocks_for(n, 256), 256, 0, CB(be)->st, y, x, n);
    CU_LAUNCHED();
    return 0;
}

static int cu_add_rmsnorm(eng_backend_t *be, float *x, const float *y, const float *w, float *xn, int T, int n,
                          float eps) {
    if (T <= 0) return 0;
    CU_LAUNCH(k_add_rmsnorm, T, 256, 0, CB(be)->st, x, y, w, xn, n, eps);
    CU_LAUNCHED();
    return 0;
}

static int cu_swiglu(eng_backend_t *be, float *g, const float *u, size_t n) {
    if (!n) return 0;
    CU_LAUNCH(k_swiglu, blocks_for(n, 256), 256, 0, CB(be)->st, g, u, n);
    CU_LAUNCHED();
    return 0;
}

static int cu_gather(eng_backend_t *be, float *dst, const float *src, const int32_t *rows, int n, int width) {
    cu_be_t *b = CB(be);
    if (n <= 0) return 0;
    int32_t *d = (int32_t *)eng_cuda_scratch(b, SCR_IDX, (size_t)n * sizeof(int32_t));
    if (!d) return -1;
    if (eng_cuda_h2d(b, d, rows, (size_t)n * sizeof(int32_t))) return -1;
    CU_LAUNCH(k_gather, n, 256, 0, b->st, dst, src, d, width);
    CU_LAUNCHED();
    return 0;
}

static int cu_argmax(eng_backend_t *be, const float *logits, int n, int vocab, int32_t *ids) {
    cu_be_t *b = CB(be);
    if (n <= 0) return 0;
    int32_t *d = (int32_t *)eng_cuda_scratch(b, SCR_IDX, (size_t)n * sizeof(int32_t));
    if (!d) return -1;
    CU_LAUNCH(k_argmax, n, 256, 0, b->st, logits, vocab, d);
    CU_LAUNCHED();
    CU_CHECK(cudaMemcpyAsync(ids, d, (size_t)n * sizeof(int32_t), cudaMemcpyDeviceToHost, b->st));
    CU_CHECK(cudaStreamSynchronize(b->st));
    return 0;
}

/* ---- life cycle -------------------------------------------------------------------- */

static void cu_free(eng_backend_t *be) {
    if (!be) return;
    cu_be_t *b = CB(be);
    CU_WARN(cudaSetDevice(b->dev));
    if (b->st) CU_WARN(cudaStreamSynchronize(b->st));
    cache_drop(b);
    for (int i = 0; i < b->n_live; i++) CU_WARN(cudaFree(b->live[i].p));
    for (int i = 0; i < b->n_owned; i++) CU_WARN(cudaFree(b->owned[i]));
    for (int k = 0; k < SCR_N; k++)
        if (b->scr[k]) CU_WARN(cudaFree(b->scr[k]));
    eng_cuda_moe_tabs_free(b);
    if (b->ring) CU_WARN(cudaFreeHost(b->ring));
    free(b->pages_h);
    if (b->blas && cublasDestroy(b->blas) != CUBLAS_STATUS_SUCCESS) fprintf(stderr, "cublas: %s:%d: cublasDestroy failed\n", __FILE__, __LINE__);
    if (b->st) CU_WARN(cudaStreamDestroy(b->st));
    free(b->live);
    free(b->owned);
    free(b);
}

static const eng_backend_ops_t cu_ops = {
    /* .name = */ "cuda",
    /* .describe = */ cu_describe,
    /* .alloc = */ cu_alloc,
    /* .release = */ cu_release,
    /* .kv_alloc = */ cu_kv_alloc,
    /* .kv_release = */ cu_kv_release,
    /* .set = */ cu_set,
    /* .get = */ cu_get,
    /* .copy = */ cu_copy,
    /* .upload_w = */ cu_upload_w,
    /* .upload = */ cu_upload,
    /* .embed = */ cu_embed,
    /* .rmsnorm = */ cu_rmsnorm,
    /* .rope = */ cu_rope,
    /* .kv_store = */ cu_kv_store,
    /* .add = */ cu_add,
    /* .add_rmsnorm = */ cu_add_rmsnorm,
    /* .swiglu = */ cu_swiglu,
    /* .gather = */ cu_gather,
    /* .matmul = */ eng_cuda_matmul,
    /* .matmul_multi = */ eng_cuda_matmul_multi,
    /* .attn_mla = */ eng_cuda_attn_mla,
    /* .attn_gqa = */ eng_cuda_attn_gqa,
    /* .route = */ eng_cuda_route,
    /* .moe = */ eng_cuda_moe,
    /* .argmax = */ cu_argmax,
    /* .sample = */ eng_cuda_sample,
    /* .free = */ cu_free,
};

#define INIT_CHECK(call, what)                                                                           \
    do {                                                                                                 \
        cudaError_t e_ = (call);                                                                         \
        if (e_ != cudaSuccess) {                                                                         \
            snprintf(err, errlen, "cuda:%d: %s:%d: %s: %s", dev, __FILE__, __LINE__, what, cudaGetErrorString(e_)); \
            goto fail;                                                                                   \
        }                                                                                                \
    } while (0)

extern "C" eng_backend_t *eng_cuda_backend_new(int dev, char *err, size_t errlen) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        snprintf(err, errlen, "no CUDA device: cuda:%d was asked for, but %s", dev,
                 e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports 0 devices");
        (void)cudaGetLastError();
        return NULL;
    }
    if (dev < 0 || dev >= count) {
        snprintf(err, errlen, "no CUDA device cuda:%d: this machine has %d (cuda:0..cuda:%d)", dev, count, count - 1);
        return NULL;
    }
    cu_be_t *b = (cu_be_t *)calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errlen, "cuda: out of memory");
        return NULL;
    }
    b->dev = dev;
    b->base.ops = &cu_ops;
    b->base.n_threads = 1;
    cudaDeviceProp prop;
    INIT_CHECK(cudaSetDevice(dev), "cudaSetDevice");
    INIT_CHECK(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
    INIT_CHECK(cudaStreamCreateWithFlags(&b->st, cudaStreamNonBlocking), "cudaStreamCreate");
    {
        cublasStatus_t s = cublasCreate(&b->blas);
        if (s != CUBLAS_STATUS_SUCCESS) {
            snprintf(err, errlen, "cuda:%d: %s:%d: cublasCreate: %s", dev, __FILE__, __LINE__, cublasGetStatusString(s));
            b->blas = NULL;
            goto fail;
        }
        s = cublasSetStream(b->blas, b->st);
        if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetMathMode(b->blas, CUBLAS_DEFAULT_MATH); /* fp32, no TF32 */
        if (s != CUBLAS_STATUS_SUCCESS) {
            snprintf(err, errlen, "cuda:%d: %s:%d: cublasSetStream: %s", dev, __FILE__, __LINE__,
                     cublasGetStatusString(s));
            goto fail;
        }
    }
    INIT_CHECK(cudaHostAlloc((void **)&b->ring, RING_BYTES, cudaHostAllocDefault), "cudaHostAlloc");
    b->ring_n = RING_BYTES;
    snprintf(b->desc, sizeof b->desc, "cuda:%d/%s (sm_%d%d)", dev, prop.name, prop.major, prop.minor);
    return &b->base;
fail:
    cu_free(&b->base);
    return NULL;
}
