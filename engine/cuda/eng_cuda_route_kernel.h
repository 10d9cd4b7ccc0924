/* eng_cuda_route_kernel.h — the router kernel (included by
 * eng_cuda_route.cu, which describes it).  CUDA built-ins only, so that
 * tests/engine/cuda_emu_kernels.cc runs the same source on the host. */
#ifndef ENG_CUDA_ROUTE_KERNEL_H
#define ENG_CUDA_ROUTE_KERNEL_H

#define RT_WARPS 4

/* the better of two candidates: a valid one, then the larger score, then the lower id */
__device__ __forceinline__ void rt_better(float &v, int &i, float ov, int oi) {
    if (oi < 0) return;
    if (i < 0 || ov > v || (ov == v && oi < i)) v = ov, i = oi;
}

__global__ void k_route(eng_route_t r, const float *logits, int T, int32_t *sel, float *wts) {
    CU_DYN_SHARED(float, sm); /* per warp: s [E], b [E], gs [G] */
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = blockIdx.x * RT_WARPS + warp;
    if (t >= T) return;
    int E = r.E, G = r.n_group, per = E / G, K = r.topk;
    float *s = sm + (size_t)warp * (2 * E + G), *b = s + E, *gs = b + E;
    const float *lg = logits + (size_t)t * E;
    if (r.sigmoid) {
        for (int e = lane; e < E; e += 32) s[e] = 1.0f / (1.0f + expf(-lg[e]));
    } else {
        float mx = -INFINITY, sum = 0.0f;
        for (int e = lane; e < E; e += 32) mx = fmaxf(mx, lg[e]);
        for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        for (int e = lane; e < E; e += 32) sum += (s[e] = expf(lg[e] - mx));
        for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        for (int e = lane; e < E; e += 32) s[e] /= sum;
    }
    for (int e = lane; e < E; e += 32) b[e] = r.bias ? s[e] + r.bias[e] : s[e];
    __syncwarp();
    if (G > 1 && r.topk_group < G) {
        for (int g = lane; g < G; g += 32) {
            float m1 = -INFINITY, m2 = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (b[e] > m1) m2 = m1, m1 = b[e];
                else if (b[e] > m2) m2 = b[e];
            }
            gs[g] = r.bias ? (per > 1 ? m1 + m2 : m1) : m1;
        }
        __syncwarp();
        if (lane == 0) { /* keep the topk_group best groups: mark the others' gs NaN-free flag */
            unsigned char keep[256];
            for (int g = 0; g < G; g++) keep[g] = 0;
            for (int k = 0; k < r.topk_group; k++) {
                int best = -1;
                for (int g = 0; g < G; g++)
                    if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
                keep[best] = 1;
            }
            for (int g = 0; g < G; g++) gs[g] = keep[g] ? 1.0f : 0.0f;
        }
        __syncwarp();
        for (int e = lane; e < E; e += 32)
            if (gs[e / per] == 0.0f) b[e] = -INFINITY;
        __syncwarp();
    }
    float wt[32]; /* lane 0's weights, topk <= 32 */
    int32_t *so = sel + (size_t)t * K;
    for (int k = 0; k < K; k++) {
        float v = -INFINITY;
        int bi = -1;
        for (int e = lane; e < E; e += 32)
            if (!isnan(b[e])) rt_better(v, bi, b[e], e);
        for (int o = 16; o; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, v, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            rt_better(v, bi, ov, oi);
        }
        if (lane == 0) {
            if (bi < 0) /* NaN scores: the lowest unused id */
                for (int e = 0; e < E && bi < 0; e++) {
                    int used = 0;
                    for (int j = 0; j < k; j++) used |= so[j] == e;
                    if (!used) bi = e;
                }
            so[k] = bi;
            b[bi] = __int_as_float(0x7fc00000);
            wt[k] = s[bi];
        }
        __syncwarp();
    }
    if (lane == 0) {
        float sum = 0.0f;
        for (int k = 0; k < K; k++) sum += wt[k];
        int normed = r.norm_topk && K > 1;
        if (normed)
            for (int k = 0; k < K; k++) wt[k] /= sum;
        if (r.scale_after_norm || !normed)
            for (int k = 0; k < K; k++) wt[k] *= r.routed_scale;
        for (int k = 0; k < K; k++) wts[(size_t)t * K + k] = wt[k];
    }
}

#endif
