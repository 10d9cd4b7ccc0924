/* eng_cuda_attn.cu — attention over the paged KV cache on the device.
 *
 * MLA, absorbed (decode and prefill alike; REFERENCE-DEEPSEEK.md):
 *   1. q_lat [T][H][c] = W_k_h^T q_nope_h            one block per (token, head)
 *   2. s_p = (q_lat . ckv_p + q_pe . kpe_p) * scale, p < len (causal), softmax in
 *      fp32, o_lat = sum_p prob_p ckv_p               one block per (token, head)
 *   3. out [T][H][dv] = W_v_h o_lat_h                one block per (token, head)
 * GQA: one block per (token, head): scores, softmax, weighted sum of values.
 * The cache is read through each token's block table (copied to the device
 * once per call with the tokens' lengths). */
#include <stdlib.h>
#include <string.h>

#include "eng_cuda-int.h"

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

/* Build the token table on the host and copy it (with the block tables) to the
 * device; checks that all sequences share one cache layout. */
static int pages_up(cu_be_t *b, const eng_attn_seq_t *seqs, int nseq, int *T_out, int *maxlen, pages_t *P) {
    int T = 0, nb = 0;
    *maxlen = 0;
    for (int i = 0; i < nseq; i++) {
        if (seqs[i].tok0 + seqs[i].n > T) T = seqs[i].tok0 + seqs[i].n;
        int len = seqs[i].pos0 + seqs[i].n;
        if (len > *maxlen) *maxlen = len;
        nb += (len + seqs[i].B - 1) / seqs[i].B;
        if (seqs[i].B != seqs[0].B || seqs[i].stride != seqs[0].stride || seqs[i].k != seqs[0].k ||
            seqs[i].v != seqs[0].v) {
            fprintf(stderr, "cuda: %s:%d: sequences of one call must share the cache layout\n", __FILE__, __LINE__);
            return -1;
        }
    }
    *T_out = T;
    if (!T) return 0;
    size_t n = 2 * (size_t)T + nb;
    int32_t *h = (int32_t *)malloc(n * sizeof(int32_t));
    if (!h) return -1;
    for (int i = 0, off = 2 * T; i < nseq; i++) {
        const eng_attn_seq_t *s = &seqs[i];
        int len = s->pos0 + s->n, nbl = (len + s->B - 1) / s->B;
        for (int k = 0; k < s->n; k++) {
            h[2 * (s->tok0 + k)] = s->pos0 + k + 1;
            h[2 * (s->tok0 + k) + 1] = off - 2 * T;
        }
        memcpy(h + off, s->blocks, nbl * sizeof(int32_t));
        off += nbl;
    }
    /* every layer of a forward passes the same tables: upload only when they change */
    int32_t *d = (int32_t *)eng_cuda_scratch(b, SCR_ATT2, n * sizeof(int32_t));
    if (!d) {
        free(h);
        return -1;
    }
    if (!(b->pages_h && b->pages_n == n && !memcmp(b->pages_h, h, n * sizeof(int32_t)))) {
        if (eng_cuda_h2d(b, d, h, n * sizeof(int32_t))) {
            free(h);
            return -1;
        }
        free(b->pages_h);
        b->pages_h = h; /* kept: the next call compares against it */
        b->pages_n = n;
    } else {
        free(h);
    }
    P->tokinfo = d;
    P->blocks = d + 2 * T;
    P->k = seqs[0].k;
    P->v = seqs[0].v;
    P->B = seqs[0].B;
    P->stride = (int64_t)seqs[0].stride;
    return 0;
}

/* ---- MLA ---------------------------------------------------------------------------- */

__global__ void k_mla_qlat(cu_w_t kvb, const float *q, int H, int dn, int dr, int dv, int c, float *qlat) {
    extern __shared__ float qn[]; /* [dn] */
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
    extern __shared__ float qs[]; /* [c + dr]: q_lat then q_pe */
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

int eng_cuda_attn_mla(eng_backend_t *be, const eng_w_t *kv_b, int H, int dn, int dr, int dv, int c, float scale,
                      const float *q, const eng_attn_seq_t *seqs, int nseq, float *out) {
    cu_be_t *b = (cu_be_t *)be;
    int T, maxlen;
    pages_t P;
    if (pages_up(b, seqs, nseq, &T, &maxlen, &P)) return -1;
    if (!T) return 0;
    size_t lat = (size_t)T * H * c * sizeof(float), scn = (size_t)T * H * maxlen * sizeof(float);
    char *p = (char *)eng_cuda_scratch(b, SCR_ATT, 2 * lat + scn);
    if (!p) return -1;
    float *qlat = (float *)p, *olat = (float *)(p + lat), *sc = (float *)(p + 2 * lat);
    cu_w_t w = cu_w(kv_b);
    k_mla_qlat<<<T * H, AT_THREADS, dn * sizeof(float), b->st>>>(w, q, H, dn, dr, dv, c, qlat);
    CU_LAUNCHED();
    k_mla_core<<<T * H, AT_THREADS, (c + dr) * sizeof(float), b->st>>>(P, q, qlat, H, dn, dr, c, scale, maxlen, sc, olat);
    CU_LAUNCHED();
    k_mla_out<<<T * H, AT_THREADS, 0, b->st>>>(w, olat, H, dn, dv, c, out);
    CU_LAUNCHED();
    return 0;
}

/* ---- GQA ----------------------------------------------------------------------------- */

__global__ void k_gqa(pages_t P, const float *q, int H, int kvh, int hd, float scale, int maxlen, float *sc,
                      float *out) {
    extern __shared__ float qh[]; /* [hd] */
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

int eng_cuda_attn_gqa(eng_backend_t *be, int H, int kvh, int hd, float scale, const float *q,
                      const eng_attn_seq_t *seqs, int nseq, float *out) {
    cu_be_t *b = (cu_be_t *)be;
    int T, maxlen;
    pages_t P;
    if (pages_up(b, seqs, nseq, &T, &maxlen, &P)) return -1;
    if (!T) return 0;
    float *sc = (float *)eng_cuda_scratch(b, SCR_ATT, (size_t)T * H * maxlen * sizeof(float));
    if (!sc) return -1;
    k_gqa<<<T * H, AT_THREADS, hd * sizeof(float), b->st>>>(P, q, H, kvh, hd, scale, maxlen, sc, out);
    CU_LAUNCHED();
    return 0;
}
