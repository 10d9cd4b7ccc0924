/* eng_cuda_sample_kernel.h — the sampling kernel and its device helpers
 * (included by eng_cuda_sample.cu; the maths are described there).  Uses
 * nothing but CUDA built-ins, so that tests/engine/cuda_emu_sample.cc can run
 * the same source on the host, one thread per CUDA thread, with barriers
 * and shuffles emulated. */
#ifndef ENG_CUDA_SAMPLE_KERNEL_H
#define ENG_CUDA_SAMPLE_KERNEL_H

#define SNT 512 /* threads per row */

typedef struct {
    float temperature, top_p;
    int top_k, na;
    double u;
} cu_sreq_t;

__device__ __forceinline__ unsigned long long skey(float p, int i) {
    return ((unsigned long long)__float_as_uint(p) << 32) | (unsigned long long)(0xffffffffu - (uint32_t)i);
}

/* Block sums with one fixed shape (warp shuffles, then warp 0): every thread
 * gets the total.  sh: 32 slots; the leading barrier lets calls follow each
 * other on the same slots. */
template <typename T> __device__ T block_sum(T v, T *sh) {
    for (int o = 16; o; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = l < SNT / 32 ? sh[l] : (T)0;
        for (int o = 16; o; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (l == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

/* The k-th largest key (1-based) among ids with p > 0 and key >= floor:
 * radix select, 8 bits a pass from the top.  k <= the number of such ids. */
__device__ unsigned long long select_count(const float *p, int na, unsigned long long floor, unsigned long long k,
                                           unsigned long long *h, long long *sel) {
    unsigned long long prefix = 0, mask = 0, rem = k;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += SNT) h[b] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < na; i += SNT) {
            float v = p[i];
            if (!(v > 0)) continue;
            unsigned long long key = skey(v, i);
            if (key >= floor && (key & mask) == prefix) atomicAdd(&h[(key >> shift) & 255], 1ull);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int b = 255;
            for (; b > 0; b--) {
                if (h[b] >= rem) break;
                rem -= h[b];
            }
            *sel = b;
        }
        __syncthreads();
        prefix |= (unsigned long long)*sel << shift;
        mask |= 255ull << shift;
    }
    __syncthreads(); /* *sel is read by every thread before anyone writes it again */
    return prefix;
}

/* The largest key T (among ids with p > 0 and key >= floor) such that the
 * fixed-point mass of keys >= T reaches want; floor when the whole set's mass
 * does not (rounding).  Masses: round(p * 2^fb), at most 2^62 in all. */
__device__ unsigned long long select_mass(const float *p, int na, unsigned long long floor, unsigned long long want,
                                          double scale, unsigned long long *h, long long *sel) {
    unsigned long long prefix = 0, mask = 0, rem = want ? want : 1;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += SNT) h[b] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < na; i += SNT) {
            float v = p[i];
            if (!(v > 0)) continue;
            unsigned long long key = skey(v, i);
            if (key >= floor && (key & mask) == prefix)
                atomicAdd(&h[(key >> shift) & 255], __double2ull_rn((double)v * scale));
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int b = 255;
            for (; b >= 0; b--) {
                if (h[b] >= rem) break;
                rem -= h[b];
            }
            *sel = b; /* -1: the mass never reaches want (only possible in the first pass) */
        }
        __syncthreads();
        long long s = *sel;
        __syncthreads();
        if (s < 0) return floor;
        prefix |= (unsigned long long)s << shift;
        mask |= 255ull << shift;
    }
    return prefix;
}

/* out [row] = {id, draw used}; prob [rows, ld] scratch. */
__global__ void __launch_bounds__(SNT) k_sample(const float *logits, int ld, const cu_sreq_t *rq, float *prob,
                                                int32_t *out) {
    __shared__ float s_v[SNT];
    __shared__ int s_i[SNT], s_j[SNT];
    __shared__ double s_d[32];
    __shared__ unsigned long long s_u[32];
    __shared__ unsigned long long s_h[256];
    __shared__ double s_scan[SNT];
    __shared__ long long s_sel;
    const int row = blockIdx.x, tid = threadIdx.x;
    const cu_sreq_t q = rq[row];
    const float *l = logits + (size_t)row * ld;
    float *p = prob + (size_t)row * ld;
    const int na = q.na;
    if (na <= 0) {
        if (tid == 0) out[2 * row] = -1, out[2 * row + 1] = 0;
        return;
    }

    /* 1. argmax */
    float bv = 0.0f;
    int bi = -1;
    for (int i = tid; i < na; i += SNT) {
        float v = l[i];
        if (v != v) continue;
        if (bi < 0 || v > bv) bv = v, bi = i;
    }
    s_v[tid] = bv;
    s_i[tid] = bi;
    __syncthreads();
    for (int s = SNT / 2; s; s >>= 1) {
        if (tid < s) {
            float ov = s_v[tid + s];
            int oi = s_i[tid + s];
            if (oi >= 0 && (s_i[tid] < 0 || ov > s_v[tid] || (ov == s_v[tid] && oi < s_i[tid]))) {
                s_v[tid] = ov;
                s_i[tid] = oi;
            }
        }
        __syncthreads();
    }
    const int best = s_i[0] < 0 ? 0 : s_i[0];
    const float mx = l[best];
    if (!(q.temperature > 0) || !(q.top_p > 0) || q.top_k == 1 || !isfinite(mx)) {
        if (tid == 0) out[2 * row] = best, out[2 * row + 1] = 0;
        return; /* the same branch for every thread */
    }

    /* 2. probabilities, their sum, how many are > 0 */
    const float inv_t = 1.0f / q.temperature;
    double sum = 0;
    unsigned long long m = 0;
    for (int i = tid; i < na; i += SNT) {
        float e = (float)exp((double)((l[i] - mx) * inv_t));
        e = e == e ? e : 0.0f;
        p[i] = e;
        sum += e;
        m += e > 0;
    }
    __syncthreads(); /* p[] written by every thread before the passes read it */
    sum = block_sum(sum, s_d);
    m = block_sum(m, s_u);

    /* 3./4. the kept set: ids with p > 0 and key >= thr */
    const int plain = q.top_p >= 1.0f && !(q.top_k > 0 && q.top_k < na);
    unsigned long long thr = 1; /* every key with p > 0 is >= 2^32 */
    if (!plain) {
        double sumk = sum;
        if (q.top_k > 0 && (unsigned long long)q.top_k < m) {
            thr = select_count(p, na, 1, (unsigned long long)q.top_k, s_h, &s_sel);
            double part = 0;
            for (int i = tid; i < na; i += SNT)
                if (p[i] > 0 && skey(p[i], i) >= thr) part += p[i];
            sumk = block_sum(part, s_d);
        }
        if (q.top_p < 1.0f) {
            int bits = 32 - __clz(na);
            double scale = ldexp(1.0, 62 - bits);
            thr = select_mass(p, na, thr, __double2ull_rn((double)q.top_p * sumk * scale), scale, s_h, &s_sel);
        }
    }

    /* the draw: contiguous chunks per thread, an exclusive scan of the chunk
     * sums (one thread, fixed order), then each thread walks its chunk */
    const int chunk = (na + SNT - 1) / SNT, lo = tid * chunk, hi = lo + chunk < na ? lo + chunk : na;
    double loc = 0;
    for (int i = lo; i < hi; i++)
        if (p[i] > 0 && skey(p[i], i) >= thr) loc += p[i];
    s_scan[tid] = loc;
    __syncthreads();
    if (tid == 0) {
        double acc = 0;
        for (int t = 0; t < SNT; t++) {
            double v = s_scan[t];
            s_scan[t] = acc;
            acc += v;
        }
        s_d[0] = acc; /* block_sum's slots are free: its last read was before the barrier above */
    }
    __syncthreads();
    const double target = q.u * s_d[0];
    double run = s_scan[tid];
    int cand = 0x7fffffff, last = -1;
    for (int i = lo; i < hi; i++)
        if (p[i] > 0 && skey(p[i], i) >= thr) {
            last = i;
            run += p[i];
            if (run > target) {
                cand = i;
                break;
            }
        }
    __syncthreads(); /* everyone has read s_d[0] and s_scan before s_i/s_j are reused */
    s_i[tid] = cand;
    s_j[tid] = last;
    __syncthreads();
    for (int s = SNT / 2; s; s >>= 1) {
        if (tid < s) {
            if (s_i[tid + s] < s_i[tid]) s_i[tid] = s_i[tid + s];
            if (s_j[tid + s] > s_j[tid]) s_j[tid] = s_j[tid + s];
        }
        __syncthreads();
    }
    if (tid == 0) {
        int id = s_i[0];
        if (id == 0x7fffffff) id = plain ? best : s_j[0];
        if (id < 0) id = best; /* an empty set cannot happen: best has p = 1 */
        out[2 * row] = id;
        out[2 * row + 1] = 1;
    }
}

#endif
