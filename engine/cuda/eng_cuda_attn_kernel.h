/* eng_cuda_attn_kernel.h — the attention kernels (included by
 * eng_cuda_attn.cu, which describes them).  CUDA built-ins only, so that
 * tests/engine/cuda_emu_kernels.cc runs the same source on the host. */
#ifndef ENG_CUDA_ATTN_KERNEL_H
#define ENG_CUDA_ATTN_KERNEL_H

#define AT_THREADS 256

__device__ __forceinline__ float a_warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float a_warp_max(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* block-wide sum or max of v (every thread gets it) */
__device__ float block_red(float v, int is_max) {
    __shared__ float red[32];
    __shared__ float res;
    v = is_max ? a_warp_max(v) : a_warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        int nw = blockDim.x >> 5;
        float u = threadIdx.x < nw ? red[threadIdx.x] : (is_max ? -INFINITY : 0.0f);
        u = is_max ? a_warp_max(u) : a_warp_sum(u);
        if (threadIdx.x == 0) res = u;
    }
    __syncthreads();
    float r = res;
    __syncthreads();
    return r;
}

/* tokinfo [T][2]: len (positions the token attends to), offset of its
 * sequence's block table in blocks[] */
typedef struct {
    const int32_t *tokinfo, *blocks;
    const float *k, *v;
    int B;
    int64_t stride;
} pages_t;

__device__ __forceinline__ const float *page_row(const pages_t &P, const float *base, int boff, int p, int row) {
    return base + (int64_t)P.blocks[boff + p / P.B] * P.stride + (int64_t)(p % P.B) * row;
}

/* ---- MLA ---------------------------------------------------------------------------- */

__global__ void k_mla_qlat(cu_w_t kvb, const float *q, int H, int dn, int dr, int dv, int c, float *qlat) {
    CU_DYN_SHARED(float, qn); /* [dn] */
    int t = blockIdx.x / H, h = blockIdx.x % H;
    const float *qh = q + (size_t)t * H * (dn + dr) + (size_t)h * (dn + dr);
    for (int d = threadIdx.x; d < dn; d += blockDim.x) qn[d] = qh[d];
    __syncthreads();
    for (int e = threadIdx.x; e < c; e += blockDim.x) {
        float acc = 0.0f;
        for (int d = 0; d < dn; d++) acc = fmaf(qn[d], cu_wval(kvb, (int64_t)h * (dn + dv) + d, e), acc);
        qlat[((size_t)t * H + h) * c + e] = acc;
    }
}

/* sc: [T*H][maxlen] scratch */
__global__ void k_mla_core(pages_t P, const float *q, const float *qlat, int H, int dn, int dr, int c, float scale,
                           int maxlen, float *sc, float *olat) {
    CU_DYN_SHARED(float, qs); /* [c + dr]: q_lat then q_pe */
    int t = blockIdx.x / H, h = blockIdx.x % H, W = c + dr;
    int len = P.tokinfo[2 * t], boff = P.tokinfo[2 * t + 1];
    const float *ql = qlat + ((size_t)t * H + h) * c, *qp = q + (size_t)t * H * (dn + dr) + (size_t)h * (dn + dr) + dn;
    for (int e = threadIdx.x; e < c; e += blockDim.x) qs[e] = ql[e];
    for (int e = threadIdx.x; e < dr; e += blockDim.x) qs[c + e] = qp[e];
    __syncthreads();
    float *s = sc + (size_t)blockIdx.x * maxlen;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int p = warp; p < len; p += nw) {
        const float *r = page_row(P, P.k, boff, p, W);
        float acc = 0.0f;
        for (int e = lane; e < W; e += 32) acc = fmaf(qs[e], r[e], acc);
        acc = a_warp_sum(acc);
        if (lane == 0) s[p] = acc * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int p = threadIdx.x; p < len; p += blockDim.x) mx = fmaxf(mx, s[p]);
    mx = block_red(mx, 1);
    float sum = 0.0f;
    for (int p = threadIdx.x; p < len; p += blockDim.x) {
        float v = expf(s[p] - mx);
        s[p] = v;
        sum += v;
    }
    sum = block_red(sum, 0); /* its barriers also publish s[] */
    float inv = 1.0f / sum;
    for (int e = threadIdx.x; e < c; e += blockDim.x) {
        float acc = 0.0f;
        for (int p = 0; p < len; p++) acc = fmaf(s[p], page_row(P, P.k, boff, p, W)[e], acc);
        olat[((size_t)t * H + h) * c + e] = acc * inv;
    }
}

__global__ void k_mla_out(cu_w_t kvb, const float *olat, int H, int dn, int dv, int c, float *out) {
    int t = blockIdx.x / H, h = blockIdx.x % H, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const float *o = olat + ((size_t)t * H + h) * c;
    for (int d = warp; d < dv; d += nw) {
        int64_t r = (int64_t)h * (dn + dv) + dn + d;
        float acc = 0.0f;
        for (int e = lane; e < c; e += 32) acc = fmaf(cu_wval(kvb, r, e), o[e], acc);
        acc = a_warp_sum(acc);
        if (lane == 0) out[(size_t)t * H * dv + (size_t)h * dv + d] = acc;
    }
}

/* ---- GQA ----------------------------------------------------------------------------- */

__global__ void k_gqa(pages_t P, const float *q, int H, int kvh, int hd, float scale, int maxlen, float *sc,
                      float *out) {
    CU_DYN_SHARED(float, qh); /* [hd] */
    int t = blockIdx.x / H, h = blockIdx.x % H, g = h / (H / kvh), W = kvh * hd;
    int len = P.tokinfo[2 * t], boff = P.tokinfo[2 * t + 1];
    for (int e = threadIdx.x; e < hd; e += blockDim.x) qh[e] = q[(size_t)t * H * hd + (size_t)h * hd + e];
    __syncthreads();
    float *s = sc + (size_t)blockIdx.x * maxlen;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int p = warp; p < len; p += nw) {
        const float *r = page_row(P, P.k, boff, p, W) + (size_t)g * hd;
        float acc = 0.0f;
        for (int e = lane; e < hd; e += 32) acc = fmaf(qh[e], r[e], acc);
        acc = a_warp_sum(acc);
        if (lane == 0) s[p] = acc * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int p = threadIdx.x; p < len; p += blockDim.x) mx = fmaxf(mx, s[p]);
    mx = block_red(mx, 1);
    float sum = 0.0f;
    for (int p = threadIdx.x; p < len; p += blockDim.x) {
        float v = expf(s[p] - mx);
        s[p] = v;
        sum += v;
    }
    sum = block_red(sum, 0);
    float inv = 1.0f / sum;
    for (int e = threadIdx.x; e < hd; e += blockDim.x) {
        float acc = 0.0f;
        for (int p = 0; p < len; p++) acc = fmaf(s[p], page_row(P, P.v, boff, p, W)[(size_t)g * hd + e], acc);
        out[(size_t)t * H * hd + (size_t)h * hd + e] = acc * inv;
    }
}

#endif
