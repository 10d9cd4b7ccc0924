/* eng_cuda_mm.cu — matmuls on the device: Y [n, R] = X [n, C] @ W^T with W in
 * its stored type (F32, BF16, F16, FP8 e4m3 with 128x128 block scales, int8
 * with row-block scales), and the MoE layer's grouped expert matmuls.
 *
 * Decode-sized batches (n < MM_BLAS_MIN): one warp per output row streams the
 * row once, 8 weights per lane per step (16-byte loads of bf16), widened in
 * registers, against up to MM_NT tokens at a time; fp32 accumulation.  This is
 * the bandwidth-bound path the batch-1 roofline is about.
 * Larger batches, bf16 weights: tensor cores through cublasGemmEx, the weights
 * as stored, the activations split into two bf16 parts (hi = bf16(x), lo =
 * bf16(x - hi), ~16 bits of x kept, as the CPU's AMX level), fp32
 * accumulation: Y = W hi + W lo, two GEMMs.  Other dtypes: the rows are
 * widened to fp32 in chunks and cuBLAS sgemm does the product (fp32 maths, no
 * TF32).  TOLLGATE_CUDA_TC=0 sends bf16 to the sgemm path too (A/B on a GPU).
 * MoE: routing ids stay on the device.  One kernel sorts the (token, slot)
 * pairs by expert (ranges per expert), one gathers the tokens, one grouped
 * kernel runs every expert's gate and up over its own tokens with SwiGLU
 * fused, one the downs, one adds the slots in order (+ the shared expert).
 * bf16 experts with at least MOE_TC_PER_EXPERT pairs per expert on average
 * (prefill, large batches) run on tensor cores instead: the counts come to
 * the host once per layer and cublasGemmGroupedBatchedEx does every expert's
 * GEMMs in one call per pass (moe_tc). */
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>

#include "eng_cuda-int.h"
#include "eng_cuda_mm_kernel.h"

static int launch_batch(cu_be_t *b, mm_batch_t *mb) {
    if (!mb->nj) return 0;
    int64_t maxr = 0;
    for (int i = 0; i < mb->nj; i++) maxr = mb->j[i].w.rows > maxr ? mb->j[i].w.rows : maxr;
    dim3 g((unsigned)((maxr + MM_WARPS - 1) / MM_WARPS), (unsigned)mb->nj);
    switch (mb->j[0].w.dt) {
    case ENG_DT_F32: CU_LAUNCH(k_mm<ENG_DT_F32>, g, MM_WARPS * 32, 0, b->st, *mb); break;
    case ENG_DT_BF16: CU_LAUNCH(k_mm<ENG_DT_BF16>, g, MM_WARPS * 32, 0, b->st, *mb); break;
    case ENG_DT_F16: CU_LAUNCH(k_mm<ENG_DT_F16>, g, MM_WARPS * 32, 0, b->st, *mb); break;
    case ENG_DT_F8_E4M3: CU_LAUNCH(k_mm<ENG_DT_F8_E4M3>, g, MM_WARPS * 32, 0, b->st, *mb); break;
    case ENG_DT_I8: CU_LAUNCH(k_mm<ENG_DT_I8>, g, MM_WARPS * 32, 0, b->st, *mb); break;
    default: fprintf(stderr, "cuda: %s:%d: unsupported weight dtype %d\n", __FILE__, __LINE__, mb->j[0].w.dt); return -1;
    }
    CU_LAUNCHED();
    mb->nj = 0;
    return 0;
}

/* rows [r0, r1) of w widened to fp32: out [r1-r0, C] */
__global__ void k_widen(cu_w_t w, int64_t r0, int64_t r1, float *out) {
    int64_t n = (r1 - r0) * w.cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = cu_wval(w, r0 + i / w.cols, i % w.cols);
}

/* Y [n, R] = X [n, C] @ W^T through cuBLAS on fp32 row chunks (column-major:
 * Y^T [R, n] = W [R, C] (stored as C x R col-major, op T) * X^T [C, n]). */
static int mm_blas(cu_be_t *b, const eng_w_t *w, const float *x, int n, float *y) {
    int64_t R = w->rows, C = w->cols;
    int64_t chunk = (64ll << 20) / (C > 0 ? C : 1); /* 256 MB of fp32 rows at most */
    if (chunk < 1) chunk = 1;
    if (chunk > R) chunk = R;
    float *wf = (float *)eng_cuda_scratch(b, SCR_MM, (size_t)chunk * C * sizeof(float));
    if (!wf) return -1;
    const float one = 1.0f, zero = 0.0f;
    for (int64_t r0 = 0; r0 < R; r0 += chunk) {
        int64_t r1 = r0 + chunk < R ? r0 + chunk : R;
        if (w->dt == ENG_DT_F32) {
            CUBLAS_CHECK(cublasSgemm(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)(r1 - r0), n, (int)C, &one,
                                     (const float *)w->data + r0 * C, (int)C, x, (int)C, &zero, y + r0, (int)R));
            continue;
        }
        unsigned g = (unsigned)(((r1 - r0) * C + 255) / 256);
        CU_LAUNCH(k_widen, g > 65535u * 8 ? 65535u * 8 : g, 256, 0, b->st, cu_w(w), r0, r1, wf);
        CU_LAUNCHED();
        CUBLAS_CHECK(cublasSgemm(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)(r1 - r0), n, (int)C, &one, wf, (int)C, x,
                                 (int)C, &zero, y + r0, (int)R));
    }
    return 0;
}

/* x [n] -> hi [n], lo [n]: hi = bf16(x), lo = bf16(x - hi), both rounded to nearest even */
__global__ void k_split_bf16(const float *x, size_t n, __nv_bfloat16 *hi, __nv_bfloat16 *lo) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i];
        __nv_bfloat16 h = __float2bfloat16_rn(v);
        hi[i] = h;
        lo[i] = __float2bfloat16_rn(v - __bfloat162float(h));
    }
}

static int tc_on(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("TOLLGATE_CUDA_TC");
        on = !(e && *e == '0');
    }
    return on;
}

/* Y [n, R] = X [n, C] @ W^T for bf16 W on tensor cores (column-major as
 * mm_blas): Y^T = W^T' hi^T + W^T' lo^T, fp32 accumulation. */
static int mm_tc(cu_be_t *b, const eng_w_t *w, const float *x, int n, float *y) {
    int64_t R = w->rows, C = w->cols;
    size_t nc = (size_t)n * C;
    __nv_bfloat16 *hi = (__nv_bfloat16 *)eng_cuda_scratch(b, SCR_MM, 2 * nc * sizeof(__nv_bfloat16));
    if (!hi) return -1;
    __nv_bfloat16 *lo = hi + nc;
    size_t g = (nc + 255) / 256;
    CU_LAUNCH(k_split_bf16, (unsigned)(g > 65535u * 8 ? 65535u * 8 : g), 256, 0, b->st, x, nc, hi, lo);
    CU_LAUNCHED();
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)R, n, (int)C, &one, w->data, CUDA_R_16BF, (int)C,
                              hi, CUDA_R_16BF, (int)C, &zero, y, CUDA_R_32F, (int)R, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    CUBLAS_CHECK(cublasGemmEx(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)R, n, (int)C, &one, w->data, CUDA_R_16BF, (int)C,
                              lo, CUDA_R_16BF, (int)C, &one, y, CUDA_R_32F, (int)R, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    return 0;
}

int eng_cuda_matmul_multi(eng_backend_t *be, const eng_mm_t *jobs, int njobs) {
    cu_be_t *b = (cu_be_t *)be;
    mm_batch_t mb;
    mb.nj = 0;
    /* jobs of one dtype share a launch; a new dtype or a full batch launches */
    for (int i = 0; i < njobs; i++) {
        const eng_mm_t *J = &jobs[i];
        if (J->n <= 0 || J->w->rows <= 0) continue;
        if (J->n >= MM_BLAS_MIN) {
            if (J->w->dt == ENG_DT_BF16 && tc_on() ? mm_tc(b, J->w, J->x, J->n, J->y)
                                                   : mm_blas(b, J->w, J->x, J->n, J->y))
                return -1;
            continue;
        }
        if (mb.nj && (mb.nj == MM_JOBS || mb.j[0].w.dt != (int)J->w->dt) && launch_batch(b, &mb)) return -1;
        mm_job_t *m = &mb.j[mb.nj++];
        m->w = cu_w(J->w);
        m->x = J->x;
        m->y = J->y;
        m->n = J->n;
    }
    return launch_batch(b, &mb);
}

int eng_cuda_matmul(eng_backend_t *be, const eng_w_t *w, const float *x, int n, float *y) {
    eng_mm_t j = {w, x, n, y};
    return eng_cuda_matmul_multi(be, &j, 1);
}

/* ---- MoE ----------------------------------------------------------------------------- */

struct cu_moe_tab {
    const eng_w_t *key;       /* eg of the eng_moe_t */
    const void *key_data;     /* eg[0].data: a new upload at the same address is a new table */
    cu_exp_t *dev;            /* [E] */
};

void eng_cuda_moe_tabs_free(cu_be_t *b) {
    for (int i = 0; i < b->n_moe_tabs; i++) CU_WARN(cudaFree(b->moe_tabs[i].dev));
    free(b->moe_tabs);
    b->moe_tabs = NULL;
    b->n_moe_tabs = 0;
}

static cu_exp_t *moe_table(cu_be_t *b, const eng_moe_t *mo) {
    for (int i = 0; i < b->n_moe_tabs; i++)
        if (b->moe_tabs[i].key == mo->eg && b->moe_tabs[i].key_data == mo->eg[0].data) return b->moe_tabs[i].dev;
    cu_exp_t *h = (cu_exp_t *)calloc(mo->E, sizeof *h), *d = NULL;
    struct cu_moe_tab *nt = (struct cu_moe_tab *)realloc(b->moe_tabs, (b->n_moe_tabs + 1) * sizeof *nt);
    if (!h || !nt) {
        free(h);
        if (nt) b->moe_tabs = nt;
        return NULL;
    }
    b->moe_tabs = nt;
    for (int e = 0; e < mo->E; e++)
        h[e] = (cu_exp_t){mo->eg[e].data, mo->eu[e].data, mo->ed[e].data, mo->eg[e].scale, mo->eu[e].scale,
                          mo->ed[e].scale};
    cudaError_t err = cudaMalloc(&d, mo->E * sizeof *d);
    if (err == cudaSuccess) err = cudaMemcpyAsync(d, h, mo->E * sizeof *d, cudaMemcpyHostToDevice, b->st);
    free(h);
    if (err != cudaSuccess) {
        fprintf(stderr, "cuda: %s:%d: expert table: %s\n", __FILE__, __LINE__, cudaGetErrorString(err));
        if (d) CU_WARN(cudaFree(d));
        return NULL;
    }
    b->moe_tabs[b->n_moe_tabs++] = (struct cu_moe_tab){mo->eg, mo->eg[0].data, d};
    return d;
}

static int launch_moe_mm(cu_be_t *b, int dt, const cu_exp_t *tab, const int32_t *range, int down, int E, int64_t R,
                         int64_t C, int64_t scale_cols, int qblk, const float *xin, float *yout) {
    dim3 g((unsigned)((R + MM_WARPS - 1) / MM_WARPS), (unsigned)E);
    switch (dt) {
    case ENG_DT_F32: CU_LAUNCH(k_moe_mm<ENG_DT_F32>, g, MM_WARPS * 32, 0, b->st, tab, range, down, R, C, scale_cols, qblk, xin, yout); break;
    case ENG_DT_BF16: CU_LAUNCH(k_moe_mm<ENG_DT_BF16>, g, MM_WARPS * 32, 0, b->st, tab, range, down, R, C, scale_cols, qblk, xin, yout); break;
    case ENG_DT_F16: CU_LAUNCH(k_moe_mm<ENG_DT_F16>, g, MM_WARPS * 32, 0, b->st, tab, range, down, R, C, scale_cols, qblk, xin, yout); break;
    case ENG_DT_F8_E4M3: CU_LAUNCH(k_moe_mm<ENG_DT_F8_E4M3>, g, MM_WARPS * 32, 0, b->st, tab, range, down, R, C, scale_cols, qblk, xin, yout); break;
    case ENG_DT_I8: CU_LAUNCH(k_moe_mm<ENG_DT_I8>, g, MM_WARPS * 32, 0, b->st, tab, range, down, R, C, scale_cols, qblk, xin, yout); break;
    default: fprintf(stderr, "cuda: %s:%d: unsupported expert dtype %d\n", __FILE__, __LINE__, dt); return -1;
    }
    CU_LAUNCHED();
    return 0;
}

/* h, h2 [T, Is]; ysh [T, D] */
static int shared_expert(cu_be_t *b, const eng_moe_t *mo, const float *x, int T, float *h, float *h2, float *ysh) {
    const eng_w_t *g = mo->sg, *u = mo->su;
    if (T >= MM_BLAS_MIN || g->dt != u->dt) { /* two matmuls and a SwiGLU kernel */
        eng_mm_t j[2] = {{g, x, T, h}, {u, x, T, h2}};
        if (eng_cuda_matmul_multi(&b->base, j, 2)) return -1;
        if (b->base.ops->swiglu(&b->base, h, h2, (size_t)T * g->rows)) return -1;
    } else {
        unsigned gr = (unsigned)((g->rows + MM_WARPS - 1) / MM_WARPS);
        switch (g->dt) {
        case ENG_DT_F32: CU_LAUNCH(k_mm_swiglu<ENG_DT_F32>, gr, MM_WARPS * 32, 0, b->st, cu_w(g), cu_w(u), x, T, h); break;
        case ENG_DT_BF16: CU_LAUNCH(k_mm_swiglu<ENG_DT_BF16>, gr, MM_WARPS * 32, 0, b->st, cu_w(g), cu_w(u), x, T, h); break;
        case ENG_DT_F16: CU_LAUNCH(k_mm_swiglu<ENG_DT_F16>, gr, MM_WARPS * 32, 0, b->st, cu_w(g), cu_w(u), x, T, h); break;
        case ENG_DT_F8_E4M3: CU_LAUNCH(k_mm_swiglu<ENG_DT_F8_E4M3>, gr, MM_WARPS * 32, 0, b->st, cu_w(g), cu_w(u), x, T, h); break;
        case ENG_DT_I8: CU_LAUNCH(k_mm_swiglu<ENG_DT_I8>, gr, MM_WARPS * 32, 0, b->st, cu_w(g), cu_w(u), x, T, h); break;
        default: return -1;
        }
        CU_LAUNCHED();
    }
    return eng_cuda_matmul(&b->base, mo->sd, h, T, ysh);
}

#define A256(n) (((n) + 255) & ~(size_t)255)

/* Pairs per expert, on average, from which bf16 experts run on tensor cores */
#define MOE_TC_PER_EXPERT 8
#define MOE_TC_MAX_E 1024

static int moe_tc_refused; /* cuBLAS refused the grouped GEMM once: the FMA kernels from then on */

/* The routed experts on tensor cores (bf16 weights; xg [NK, D] holds the
 * pairs sorted by expert, range [E+1] their starts on the device).  The
 * per-expert counts come to the host (the one wait of this path), then
 * cublasGemmGroupedBatchedEx runs every active expert's gate and up over its
 * tokens (one group per expert, two problems: h [NK, Im] and u), SwiGLU, then
 * the downs into yslot [NK, D]; activations split into bf16 hi + lo as mm_tc,
 * fp32 accumulation.  Returns 0; -1 on a device error; 1 when cuBLAS refuses
 * the call (said once; the caller runs the FMA kernels). */
static int moe_tc(cu_be_t *b, const eng_moe_t *mo, int NK, const int32_t *range, const float *xg, float *h,
                  float *yslot) {
    int E = mo->E, D = mo->D, Im = mo->inter, G = 0, rc = -1;
    size_t nd = (size_t)NK * D, ni = (size_t)NK * Im;
    size_t sz_b = A256(2 * (nd + ni) * sizeof(__nv_bfloat16));
    char *sc = (char *)eng_cuda_scratch(b, SCR_MOE_TC, sz_b + ni * sizeof(float));
    void **dp = (void **)eng_cuda_scratch(b, SCR_MOE_PTR, (size_t)12 * E * sizeof(void *));
    /* host: range, then per group m n k lda ldb ldc size, 2 op arrays, alpha/beta; 12E pointers */
    size_t off_p = ((size_t)(E + 1) * 4 + 7) & ~(size_t)7; /* the pointers 8-aligned after the range */
    char *hb = (char *)malloc(off_p + (size_t)E * (12 * sizeof(void *) + 7 * sizeof(int) +
                                                   2 * sizeof(cublasOperation_t) + 2 * sizeof(float)));
    if (!sc || !dp || !hb) goto out;
    {
        __nv_bfloat16 *xhi = (__nv_bfloat16 *)sc, *xlo = xhi + nd, *hhi = xlo + nd, *hlo = hhi + ni;
        float *u = (float *)(sc + sz_b);
        int32_t *rh = (int32_t *)hb;
        void **hp = (void **)(hb + off_p);
        int *gm = (int *)(hp + 12 * E), *gn = gm + E, *gk = gn + E, *glda = gk + E, *gldb = glda + E,
            *gldc = gldb + E, *gsz = gldc + E;
        cublasOperation_t *ta = (cublasOperation_t *)(gsz + E), *tb = ta + E;
        float *one = (float *)(tb + E), *zero = one + E;
        cudaError_t ce = cudaMemcpyAsync(rh, range, (size_t)(E + 1) * sizeof(int32_t), cudaMemcpyDeviceToHost, b->st);
        if (ce == cudaSuccess) ce = cudaStreamSynchronize(b->st);
        if (ce != cudaSuccess) {
            fprintf(stderr, "cuda: %s:%d: expert counts to the host: %s\n", __FILE__, __LINE__, cudaGetErrorString(ce));
            goto out;
        }
        /* pointer arrays: gate/up [0,2G) A, [2G,4G) B hi, [4G,6G) B lo, [6G,8G) C; down from 8G: A, B hi, B lo, C */
        int ids[MOE_TC_MAX_E];
        for (int e = 0; e < E; e++)
            if (rh[e + 1] > rh[e]) ids[G++] = e;
        if (G == 0) {
            rc = 0;
            goto out;
        }
        for (int i = 0; i < G; i++) {
            int e = ids[i];
            size_t r0 = (size_t)rh[e];
            hp[2 * i] = (void *)mo->eg[e].data, hp[2 * i + 1] = (void *)mo->eu[e].data;
            hp[2 * G + 2 * i] = hp[2 * G + 2 * i + 1] = xhi + r0 * D;
            hp[4 * G + 2 * i] = hp[4 * G + 2 * i + 1] = xlo + r0 * D;
            hp[6 * G + 2 * i] = h + r0 * Im, hp[6 * G + 2 * i + 1] = u + r0 * Im;
            hp[8 * G + i] = (void *)mo->ed[e].data;
            hp[9 * G + i] = hhi + r0 * Im;
            hp[10 * G + i] = hlo + r0 * Im;
            hp[11 * G + i] = yslot + r0 * D;
            gn[i] = rh[e + 1] - rh[e];
            ta[i] = CUBLAS_OP_T, tb[i] = CUBLAS_OP_N;
            one[i] = 1.0f, zero[i] = 0.0f;
        }
        if (eng_cuda_h2d(b, dp, hp, (size_t)12 * G * sizeof(void *))) goto out;
        size_t gx = (nd + 255) / 256;
        CU_LAUNCH(k_split_bf16, (unsigned)(gx > 65535u * 8 ? 65535u * 8 : gx), 256, 0, b->st, xg, nd, xhi, xlo);
        CU_LAUNCHED();
        for (int pass = 0; pass < 4; pass++) { /* gate/up hi, gate/up lo, (SwiGLU, split), down hi, down lo */
            int down = pass >= 2, lo = pass & 1;
            for (int i = 0; i < G; i++) {
                gm[i] = down ? D : Im, gk[i] = down ? Im : D;
                glda[i] = gldb[i] = gk[i], gldc[i] = gm[i], gsz[i] = down ? 1 : 2;
            }
            if (pass == 2) {
                if (b->base.ops->swiglu(&b->base, h, u, ni)) goto out;
                size_t gh = (ni + 255) / 256;
                CU_LAUNCH(k_split_bf16, (unsigned)(gh > 65535u * 8 ? 65535u * 8 : gh), 256, 0, b->st, h, ni, hhi, hlo);
                CU_LAUNCHED();
            }
            void **P = dp + (down ? 8 * G : 0);
            int np = down ? G : 2 * G;
            cublasStatus_t st = cublasGemmGroupedBatchedEx(
                b->blas, ta, tb, gm, gn, gk, one, (const void *const *)P, CUDA_R_16BF, glda,
                (const void *const *)(P + (lo ? 2 : 1) * np), CUDA_R_16BF, gldb, lo ? one : zero, P + 3 * np,
                CUDA_R_32F, gldc, G, gsz, CUBLAS_COMPUTE_32F);
            if (st != CUBLAS_STATUS_SUCCESS) {
                fprintf(stderr, "cublas: %s:%d: cublasGemmGroupedBatchedEx (bf16 experts, %d groups): %s (%d)%s\n",
                        __FILE__, __LINE__, G, cublasGetStatusString(st), (int)st,
                        pass == 0 && st != CUBLAS_STATUS_EXECUTION_FAILED ? "; the FMA kernels take the experts" : "");
                if (pass == 0 && st != CUBLAS_STATUS_EXECUTION_FAILED) {
                    moe_tc_refused = 1;
                    rc = 1;
                }
                goto out;
            }
        }
        rc = 0;
    }
out:
    free(hb);
    return rc;
}

int eng_cuda_moe(eng_backend_t *be, const eng_moe_t *mo, const float *x, int T, int K, const int32_t *sel,
                 const float *wts, float *y) {
    cu_be_t *b = (cu_be_t *)be;
    int E = mo->E, D = mo->D, Im = mo->inter, NK = T * K, Is = mo->has_shared ? mo->shared_inter : 0;
    if (T <= 0) return 0;
    for (int e = 1; e < E; e++)
        if (mo->eg[e].dt != mo->eg[0].dt || mo->eu[e].dt != mo->eg[0].dt || mo->ed[e].dt != mo->eg[0].dt) {
            fprintf(stderr, "cuda: %s:%d: experts of mixed dtypes are not supported\n", __FILE__, __LINE__);
            return -1;
        }
    if (mo->eu[0].dt != mo->eg[0].dt || mo->ed[0].dt != mo->eg[0].dt) {
        fprintf(stderr, "cuda: %s:%d: experts of mixed dtypes are not supported\n", __FILE__, __LINE__);
        return -1;
    }
    cu_exp_t *tab = moe_table(b, mo);
    if (!tab) return -1;
    size_t sz_r = A256((E + 1) * sizeof(int32_t)), sz_i = A256((size_t)NK * sizeof(int32_t));
    size_t sz_xg = A256((size_t)NK * D * sizeof(float)), sz_h = A256((size_t)NK * Im * sizeof(float));
    size_t sz_s = A256((size_t)T * (Is ? Is : 1) * sizeof(float)), sz_y = A256((size_t)T * D * sizeof(float));
    char *p = (char *)eng_cuda_scratch(b, SCR_MOE, sz_r + 2 * sz_i + 2 * sz_xg + sz_h + 2 * sz_s + sz_y);
    if (!p) return -1;
    int32_t *range = (int32_t *)p, *tok_of = (int32_t *)(p += sz_r), *pos_of = (int32_t *)(p += sz_i);
    float *xg = (float *)(p += sz_i), *yslot = (float *)(p += sz_xg), *h = (float *)(p += sz_xg);
    float *sh = (float *)(p += sz_h), *sh2 = (float *)(p += sz_s), *ysh = (float *)(p += sz_s);
    CU_LAUNCH(k_moe_sort, 1, 1, 0, b->st, sel, NK, E, range, tok_of, pos_of);
    CU_LAUNCHED();
    CU_LAUNCH(k_moe_gather, NK, 256, 0, b->st, x, tok_of, K, D, xg);
    CU_LAUNCHED();
    const eng_w_t *g0 = &mo->eg[0], *d0 = &mo->ed[0];
    int tc = 1; /* 0: the tensor cores took the experts */
    if (g0->dt == ENG_DT_BF16 && NK >= MOE_TC_PER_EXPERT * E && E <= MOE_TC_MAX_E && tc_on() && !moe_tc_refused &&
        (tc = moe_tc(b, mo, NK, range, xg, h, yslot)) < 0)
        return -1;
    if (tc && (launch_moe_mm(b, g0->dt, tab, range, 0, E, Im, D, g0->scale_cols, g0->qblk, xg, h) ||
               launch_moe_mm(b, d0->dt, tab, range, 1, E, D, Im, d0->scale_cols, d0->qblk, h, yslot)))
        return -1;
    if (Is && shared_expert(b, mo, x, T, sh, sh2, ysh)) return -1;
    CU_LAUNCH(k_moe_combine, T, 256, 0, b->st, yslot, pos_of, wts, Is ? ysh : NULL, K, D, y);
    CU_LAUNCHED();
    return 0;
}
