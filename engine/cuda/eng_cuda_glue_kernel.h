/* eng_cuda_glue_kernel.h — the per-token kernels (embed, RMSNorm, RoPE, KV
 * store, add, add + RMSNorm, SwiGLU, gather, argmax; included by
 * eng_cuda.cu).  CUDA built-ins only, so that tests/engine/cuda_emu_kernels.cc
 * runs the same source on the host. */
#ifndef ENG_CUDA_GLUE_KERNEL_H
#define ENG_CUDA_GLUE_KERNEL_H

/* x [T, D] = widened rows ids[t] of emb */
__global__ void k_embed(cu_w_t w, const int32_t *ids, float *x) {
    int t = blockIdx.x;
    int64_t r = ids[t];
    for (int64_t c = threadIdx.x; c < w.cols; c += blockDim.x) x[(size_t)t * w.cols + c] = cu_wval(w, r, c);
}

/* out = x * rsqrt(mean(x^2) + eps) * w, the sum of squares in double (as the CPU) */
__global__ void k_rmsnorm(float *out, int ldo, const float *x, int ldx, const float *w, int n, float eps) {
    __shared__ double part[32];
    const float *xt = x + (size_t)blockIdx.x * ldx;
    float *ot = out + (size_t)blockIdx.x * ldo;
    double ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xt[i] * xt[i];
    for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        double v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0;
        for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    float r = (float)(1.0 / sqrt(part[0] / n + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) ot[i] = xt[i] * r * w[i];
}

__global__ void k_rope(float *x, int ld, int nh, int hs, int off, int rd, int interleaved, const int32_t *pos,
                       const float *cs, const float *sn) {
    int t = blockIdx.x, half = rd / 2;
    const float *c = cs + (size_t)pos[t] * half, *s = sn + (size_t)pos[t] * half;
    for (int k = threadIdx.x; k < nh * half; k += blockDim.x) {
        int h = k / half, i = k % half;
        float *v = x + (size_t)t * ld + (size_t)h * hs + off;
        int a = interleaved ? 2 * i : i, bb = interleaved ? 2 * i + 1 : i + half;
        float x0 = v[a], x1 = v[bb];
        v[a] = x0 * c[i] - x1 * s[i];
        v[bb] = x0 * s[i] + x1 * c[i];
    }
}

__global__ void k_kv_store(float *cache, const int64_t *dst, const float *src, int lds, int width) {
    int t = blockIdx.x;
    for (int i = threadIdx.x; i < width; i += blockDim.x) cache[dst[t] + i] = src[(size_t)t * lds + i];
}

__global__ void k_add(float *y, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

/* x += y, then xn = x * rsqrt(mean(x^2) + eps) * w: one pass over the row for both */
__global__ void k_add_rmsnorm(float *x, const float *y, const float *w, float *xn, int n, float eps) {
    __shared__ double part[32];
    float *xt = x + (size_t)blockIdx.x * n, *ot = xn + (size_t)blockIdx.x * n;
    const float *yt = y + (size_t)blockIdx.x * n;
    double ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xt[i] + yt[i];
        xt[i] = v;
        ss += (double)v * v;
    }
    for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        double v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0;
        for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    float r = (float)(1.0 / sqrt(part[0] / n + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) ot[i] = xt[i] * r * w[i];
}

__global__ void k_swiglu(float *g, const float *u, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

__global__ void k_gather(float *dst, const float *src, const int32_t *rows, int width) {
    int i = blockIdx.x;
    for (int c = threadIdx.x; c < width; c += blockDim.x)
        dst[(size_t)i * width + c] = src[(size_t)rows[i] * width + c];
}

/* ids[i] = argmax of row i, lowest id on ties, NaNs never chosen (a row of
 * NaNs gives 0), as the CPU backend's (greedy sampling on the device) */
__global__ void k_argmax(const float *l, int vocab, int32_t *ids) {
    __shared__ float bv[256];
    __shared__ int bi[256];
    const float *row = l + (size_t)blockIdx.x * vocab;
    float best = -INFINITY;
    int bid = -1;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x)
        if (row[v] == row[v] && (bid < 0 || row[v] > best)) best = row[v], bid = v;
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = bid;
    __syncthreads();
    for (int s = blockDim.x / 2; s; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = bv[threadIdx.x + s];
            int oi = bi[threadIdx.x + s];
            if (oi >= 0 && (bi[threadIdx.x] < 0 || ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x]))) {
                bv[threadIdx.x] = ov;
                bi[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) ids[blockIdx.x] = bi[0] < 0 ? 0 : bi[0];
}

#endif
