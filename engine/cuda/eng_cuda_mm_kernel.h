/* eng_cuda_mm_kernel.h — the FMA matmul and MoE kernels (included by
 * eng_cuda_mm.cu, which describes them).  CUDA built-ins only, so that
 * tests/engine/cuda_emu_kernels.cc runs the same source on the host. */
#ifndef ENG_CUDA_MM_KERNEL_H
#define ENG_CUDA_MM_KERNEL_H

#define MM_WARPS 8      /* rows per block */
#define MM_NT 4         /* tokens per pass over a row */
#define MM_BLAS_MIN 64  /* tokens from which the cuBLAS path is taken */

/* 8 consecutive weights of row r from column c (c % 8 == 0, cols % 8 == 0), widened */
template <int DT>
__device__ __forceinline__ void ld8(const cu_w_t &w, int64_t r, int64_t c, float *o) {
    int64_t i = r * w.cols + c;
    if (DT == ENG_DT_F32) {
        float4 a = *(const float4 *)((const float *)w.data + i), b = *(const float4 *)((const float *)w.data + i + 4);
        o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w, o[4] = b.x, o[5] = b.y, o[6] = b.z, o[7] = b.w;
    } else if (DT == ENG_DT_BF16 || DT == ENG_DT_F16) {
        uint4 v = *(const uint4 *)((const uint16_t *)w.data + i);
        uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (DT == ENG_DT_BF16) {
                o[2 * k] = __uint_as_float(u[k] << 16);
                o[2 * k + 1] = __uint_as_float(u[k] & 0xffff0000u);
            } else {
                o[2 * k] = cu_f16((uint16_t)(u[k] & 0xffff));
                o[2 * k + 1] = cu_f16((uint16_t)(u[k] >> 16));
            }
        }
    } else {
        uint2 v = *(const uint2 *)((const uint8_t *)w.data + i);
        uint32_t u[2] = {v.x, v.y};
        float s = DT == ENG_DT_F8_E4M3 ? w.scale[(r / 128) * w.scale_cols + c / 128] : w.scale[r * w.scale_cols + c / w.qblk];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            uint8_t b = (uint8_t)(u[k >> 2] >> (8 * (k & 3)));
            o[k] = (DT == ENG_DT_F8_E4M3 ? cu_f8(b) : (float)(int8_t)b) * s;
        }
    }
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float silu_f(float v) { return v / (1.0f + expf(-v)); }

/* Rows of W (and W2: SwiGLU fused, y = silu(W x) * (W2 x)) for n tokens of x
 * [n, C] -> y [n, ldy]; one warp per row r. */
template <int DT>
__device__ void mm_row(const cu_w_t &w, const cu_w_t *w2, int64_t r, const float *x, int n, float *y, int64_t ldy) {
    int lane = threadIdx.x & 31;
    int64_t C = w.cols;
    int vec = (C & 7) == 0;
    for (int t0 = 0; t0 < n; t0 += MM_NT) {
        int nt = n - t0 < MM_NT ? n - t0 : MM_NT;
        float acc[MM_NT], acc2[MM_NT];
#pragma unroll
        for (int j = 0; j < MM_NT; j++) acc[j] = acc2[j] = 0.0f;
        const float *xt = x + (size_t)t0 * C;
        if (vec) {
#pragma unroll 2
            for (int64_t c = (int64_t)lane * 8; c < C; c += 256) {
                float wv[8], wv2[8];
                ld8<DT>(w, r, c, wv);
                if (w2) ld8<DT>(*w2, r, c, wv2);
#pragma unroll
                for (int j = 0; j < MM_NT; j++) {
                    if (j < nt) {
                        const float4 *xp = (const float4 *)(xt + (size_t)j * C + c);
                        float4 a = xp[0], b = xp[1];
                        float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                        for (int k = 0; k < 8; k++) acc[j] = fmaf(wv[k], xv[k], acc[j]);
                        if (w2)
#pragma unroll
                            for (int k = 0; k < 8; k++) acc2[j] = fmaf(wv2[k], xv[k], acc2[j]);
                    }
                }
            }
        } else {
            for (int64_t c = lane; c < C; c += 32) {
                float wv = cu_wval(w, r, c), wv2 = w2 ? cu_wval(*w2, r, c) : 0.0f;
#pragma unroll
                for (int j = 0; j < MM_NT; j++)
                    if (j < nt) {
                        float xv = xt[(size_t)j * C + c];
                        acc[j] = fmaf(wv, xv, acc[j]);
                        acc2[j] = fmaf(wv2, xv, acc2[j]);
                    }
            }
        }
#pragma unroll
        for (int j = 0; j < MM_NT; j++) {
            float a = warp_sum(acc[j]), a2 = w2 ? warp_sum(acc2[j]) : 0.0f;
            if (lane == 0 && j < nt) y[(size_t)(t0 + j) * ldy + r] = w2 ? silu_f(a) * a2 : a;
        }
    }
}

/* ---- dense: up to MM_JOBS matmuls of one dtype in one launch ---------------------- */

#define MM_JOBS 16

typedef struct {
    cu_w_t w;
    const float *x;
    float *y;
    int n;
} mm_job_t;

typedef struct {
    mm_job_t j[MM_JOBS];
    int nj;
} mm_batch_t;

template <int DT>
__global__ void __launch_bounds__(MM_WARPS * 32) k_mm(mm_batch_t b) {
    const mm_job_t &J = b.j[blockIdx.y];
    int64_t r = (int64_t)blockIdx.x * MM_WARPS + (threadIdx.x >> 5);
    if (r >= J.w.rows) return;
    mm_row<DT>(J.w, NULL, r, J.x, J.n, J.y, J.w.rows);
}

/* The device copy of one layer's expert weights: pointers per expert. */
typedef struct {
    const void *g, *u, *d;
    const float *gs, *us, *ds;
} cu_exp_t;

/* One thread: counting sort of the (token, slot) pairs by expert, stable.
 * range [E+1]: expert e's pairs are rows range[e] .. range[e+1] of the sorted
 * order; tok_of [NK] sorted -> pair; pos_of [NK] pair -> sorted row. */
__global__ void k_moe_sort(const int32_t *sel, int NK, int E, int32_t *range, int32_t *tok_of, int32_t *pos_of) {
    if (threadIdx.x || blockIdx.x) return;
    for (int e = 0; e <= E; e++) range[e] = 0;
    for (int i = 0; i < NK; i++) range[sel[i] + 1]++;
    for (int e = 0; e < E; e++) range[e + 1] += range[e];
    /* fill with a running cursor per expert: pos_of doubles as the cursor store */
    for (int i = 0; i < NK; i++) pos_of[i] = -1;
    for (int i = 0; i < NK; i++) {
        int e = sel[i];
        int k = range[e];
        range[e] = k + 1;
        tok_of[k] = i;
        pos_of[i] = k;
    }
    for (int e = E; e > 0; e--) range[e] = range[e - 1];
    range[0] = 0;
}

__global__ void k_moe_gather(const float *x, const int32_t *tok_of, int K, int D, float *xg) {
    int i = blockIdx.x;
    const float *src = x + (size_t)(tok_of[i] / K) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) xg[(size_t)i * D + d] = src[d];
}

/* blockIdx.y = expert; blockIdx.x = row block.  down == 0: h = silu(g x) * (u x)
 * over [range[e], range[e+1]) rows of xg; down == 1: yslot = d h. */
template <int DT>
__global__ void __launch_bounds__(MM_WARPS * 32)
    k_moe_mm(const cu_exp_t *tab, const int32_t *range, int down, int64_t R, int64_t C, int64_t scale_cols, int qblk,
             const float *xin, float *yout) {
    int e = blockIdx.y;
    int s0 = range[e], n = range[e + 1] - s0;
    int64_t r = (int64_t)blockIdx.x * MM_WARPS + (threadIdx.x >> 5);
    if (n <= 0 || r >= R) return;
    const cu_exp_t &X = tab[e];
    cu_w_t w = {DT, down ? X.d : X.g, down ? X.ds : X.gs, R, C, scale_cols, qblk};
    cu_w_t w2 = {DT, X.u, X.us, R, C, scale_cols, qblk};
    mm_row<DT>(w, down ? NULL : &w2, r, xin + (size_t)s0 * C, n, yout + (size_t)s0 * R, R);
}

/* y [t] = sum_k wts[t,k] * yslot[pos_of[t*K+k]] (+ ysh [t]), slots in order */
__global__ void k_moe_combine(const float *yslot, const int32_t *pos_of, const float *wts, const float *ysh, int K,
                              int D, float *y) {
    int t = blockIdx.x;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int k = 0; k < K; k++) acc += wts[(size_t)t * K + k] * yslot[(size_t)pos_of[(size_t)t * K + k] * D + d];
        if (ysh) acc += ysh[(size_t)t * D + d];
        y[(size_t)t * D + d] = acc;
    }
}

/* shared expert: h = silu(g x) * (u x) in one launch, then y = d h */
template <int DT>
__global__ void __launch_bounds__(MM_WARPS * 32) k_mm_swiglu(cu_w_t g, cu_w_t u, const float *x, int n, float *h) {
    int64_t r = (int64_t)blockIdx.x * MM_WARPS + (threadIdx.x >> 5);
    if (r >= g.rows) return;
    mm_row<DT>(g, &u, r, x, n, h, g.rows);
}

#endif
