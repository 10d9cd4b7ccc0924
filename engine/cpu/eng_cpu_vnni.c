/* eng_cpu_vnni.c — int8 x int8 matmuls on AVX512-VNNI (VPDPBUSD) for int8
 * weights (ENG_DT_I8, `--int8`), on the avx512 and amx ISA levels when the CPU
 * has VNNI.
 *
 *   y[t][r] = sum over blocks b, in block order, of
 *             fma((float)S[t][r][b], sw[r][b] * sx[t][b], y)      (y starts at 0)
 *   S[t][r][b] = sum over the block's columns c of qw[r][c] * qx[t][c]  (exact, int32)
 *
 * The weights are int8 with one scale per qblk columns of each row (as
 * quantize_w stores them); each token's activations are quantized the same
 * way, per qblk-column block, once per matmul step (eng_cpu_vnni_xprep):
 * sx = amax / 127, qx = round-to-nearest-even(x / sx) (x * (1 / sx)), a
 * block of zeros gets sx = 0.
 *
 * VPDPBUSD multiplies unsigned by signed bytes, so x is stored as
 * u = qx + 128 (0..255) and vtile() subtracts 128 * sum(qw) per (row,
 * block), which it computes with the same instruction from the weight bytes
 * it has loaded anyway (one VPDPBUSD per 16 rows and 4 columns, shared by the
 * tile's tokens); tile_r4() flips the roles (see there).  Why not AMX-INT8 (TDPBSSD, s8 x s8, no correction): it
 * needs the weights re-laid at upload like the bf16 tiles and an int32 tile
 * drained at every 128-column block boundary; VNNI reads the int8 rows in
 * place, costs no memory and no upload step, and keeps the code small.
 *
 * Two kernels, the same arithmetic: tile_r4() (one token: lanes along the
 * columns, a horizontal sum per block) and vtile() (2 or more tokens: lanes
 * along 16 rows, each 64 columns of the rows transposed in registers and
 * shared by the tile's tokens).
 *
 * Invariance: each output is its own lane: the int32 block sums are exact and
 * the float combination runs in block order with the same operands whatever
 * the tile shape, the batch, the row range or the thread, so outputs are bit
 * identical across them (tested).  The integer sums fit int32: |S| <= qblk *
 * 127 * 255 (qblk <= 65,000).  */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "eng_cpu.h"
#include "eng_cpu_simd.h"

#define VNNI_T "avx512f,avx512bw,avx512vl,avx512vnni,fma"
/* one token: weights prefetched this many bytes ahead of the loads (a single
 * token does too little work per byte for the hardware prefetcher alone to
 * keep the stream full: a 65 MB matrix streamed at 0.67x the FMA tiles without,
 * 0.88-0.95x with 512 bytes; 256-2048 measured) */
#ifndef VNNI_PF
#define VNNI_PF 512
#endif

int eng_cpu_vnni_probe(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

/* bytes per token of quantized x (a multiple of 64, so every token's row is aligned) */
static inline int64_t x_ld(int64_t C) { return (C + 63) / 64 * 64; }
static inline int64_t n_blocks(int64_t C, int qblk) { return (C + qblk - 1) / qblk; }

size_t eng_cpu_vnni_xbytes(int n, int64_t C, int qblk) {
    return (size_t)n * ((size_t)x_ld(C) + (size_t)n_blocks(C, qblk) * sizeof(float));
}

const uint8_t *eng_cpu_vnni_xq(const void *xp, int n, int64_t C, int qblk, int t) {
    (void)n, (void)qblk;
    return (const uint8_t *)xp + (int64_t)t * x_ld(C);
}

const float *eng_cpu_vnni_xs(const void *xp, int n, int64_t C, int qblk, int t) {
    return (const float *)((const uint8_t *)xp + (int64_t)n * x_ld(C)) + (int64_t)t * n_blocks(C, qblk);
}

/* one token: u[c] = round(x[c] / sx) + 128, sx per block.  cvtps rounds to
 * nearest even under the default MXCSR, as lrintf does. */
__attribute__((target(VNNI_T))) static void quant_token(const float *x, int64_t C, int qblk, uint8_t *u, float *sx) {
    for (int64_t c0 = 0, b = 0; c0 < C; c0 += qblk, b++) {
        int64_t len = C - c0 < qblk ? C - c0 : qblk;
        __m512 m = _mm512_setzero_ps();
        for (int64_t c = 0; c < len; c += 16) {
            __mmask16 k = len - c >= 16 ? 0xffff : (__mmask16)((1u << (len - c)) - 1);
            m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + c0 + c)));
        }
        float amax = _mm512_reduce_max_ps(m), s = amax / 127.0f, inv = s > 0 ? 1.0f / s : 0;
        sx[b] = s;
        __m512 vi = _mm512_set1_ps(inv);
        for (int64_t c = 0; c < len; c += 16) {
            __mmask16 k = len - c >= 16 ? 0xffff : (__mmask16)((1u << (len - c)) - 1);
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + c0 + c), vi));
            q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
            _mm512_mask_cvtepi32_storeu_epi8(u + c0 + c, k, _mm512_add_epi32(q, _mm512_set1_epi32(128)));
        }
    }
}

void eng_cpu_vnni_xprep(const float *x, const int32_t *rows, int n, int64_t C, int qblk, void *xp, int t0, int t1) {
    for (int t = t0; t < t1 && t < n; t++)
        quant_token(x + (int64_t)(rows ? rows[t] : t) * C, C, qblk, (uint8_t *)eng_cpu_vnni_xq(xp, n, C, qblk, t),
                    (float *)eng_cpu_vnni_xs(xp, n, C, qblk, t));
}

/* 16 vectors of 16 int32 -> one vector, lane j = the sum of a[j]'s lanes.
 * Integer adds: exact, so the tree's order does not matter. */
static inline __attribute__((always_inline, target(VNNI_T))) __m512i hsum16(const __m512i a[16]) {
    __m512i b[8], c[4], d[2];
    for (int j = 0; j < 8; j++) /* 256-bit halves: lanes 0-1 a[j], 2-3 a[j+8] */
        b[j] = _mm512_add_epi32(_mm512_shuffle_i64x2(a[j], a[j + 8], 0x44), _mm512_shuffle_i64x2(a[j], a[j + 8], 0xee));
    for (int j = 0; j < 4; j++) /* 128-bit lanes: a[j], a[j+8], a[j+4], a[j+12] */
        c[j] = _mm512_add_epi32(_mm512_shuffle_i64x2(b[j], b[j + 4], 0x88), _mm512_shuffle_i64x2(b[j], b[j + 4], 0xdd));
    for (int j = 0; j < 2; j++)
        d[j] = _mm512_add_epi32(_mm512_unpacklo_epi32(c[j], c[j + 2]), _mm512_unpackhi_epi32(c[j], c[j + 2]));
    __m512i e = _mm512_add_epi32(_mm512_unpacklo_epi64(d[0], d[1]), _mm512_unpackhi_epi64(d[0], d[1]));
    /* e's lane 4 L + k holds a[{0,2,1,3}[k] + {0,8,4,12}[L]] */
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15), e);
}

/* One token, 4 rows (4 weight streams at a time: 16 rows at once streamed
 * a DRAM-resident matrix at 0.64x the FMA tiles), 4 blocks per pass, lane
 * i * 4 + p for row i and block b0 + p.  Here x is the signed operand and
 * the weights the unsigned one (w ^ 0x80 = w + 128), so the correction,
 * 128 * sum(qx) per block, comes from x once for the 4 rows:
 * sum (qw + 128) qx - 128 sum qx = S exactly.  The blocks' floats are then
 * combined in block order, as everywhere. */
__attribute__((target(VNNI_T))) static void tile_r4(const int8_t *W, const float *SW, int64_t C, int qblk, int64_t nb,
                                                     const uint8_t *XQ, const float *XS, int nr, float *y) {
    const int8_t *wr[4];
    for (int i = 0; i < 4; i++) wr[i] = W + (i < nr ? i : 0) * C;
    const __m512i k80 = _mm512_set1_epi8((char)0x80), ones = _mm512_set1_epi8(1);
    const __m512i byblock = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m128 yv = _mm_setzero_ps();
    for (int64_t b0 = 0; b0 < nb; b0 += 4) {
        int nbk = nb - b0 < 4 ? (int)(nb - b0) : 4;
        __m512i a[16], cx[4];
        #pragma GCC unroll 16
        for (int j = 0; j < 16; j++) a[j] = _mm512_setzero_si512();
        #pragma GCC unroll 16
        for (int p = 0; p < 4; p++) cx[p] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) { /* unrolled, so that a[] and cx[] stay in registers */
            if (p >= nbk) break;
            int64_t c0 = (b0 + p) * qblk, c1 = c0 + qblk < C ? c0 + qblk : C;
            for (int64_t c = c0; c < c1; c += 64) {
                __mmask64 k = c1 - c >= 64 ? ~0ull : (1ull << (c1 - c)) - 1;
                /* past the block the weights load as 0 and add (0 + 128) qx -
                 * 128 qx = 0, whatever qx is there */
                __m512i xs = _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, XQ + c), k80);
                cx[p] = _mm512_dpbusd_epi32(cx[p], ones, xs);
                #pragma GCC unroll 16
                for (int i = 0; i < 4; i++) _mm_prefetch((const char *)wr[i] + c + VNNI_PF, _MM_HINT_T0);
                #pragma GCC unroll 16
                for (int i = 0; i < 4; i++)
                    a[i * 4 + p] = _mm512_dpbusd_epi32(
                        a[i * 4 + p], _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, wr[i] + c), k80), xs);
            }
        }
        #pragma GCC unroll 16
        for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
            for (int p = 0; p < 4; p++) a[i * 4 + p] = _mm512_sub_epi32(a[i * 4 + p], _mm512_slli_epi32(cx[p], 7));
        __m512 f = _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(byblock, hsum16(a))); /* lane p * 4 + i */
        float fl[16];
        _mm512_storeu_ps(fl, f);
        for (int p = 0; p < nbk; p++) {
            int64_t b = b0 + p;
            float sc[4];
            for (int i = 0; i < 4; i++) sc[i] = SW[(i < nr ? i : 0) * nb + b] * XS[b];
            yv = _mm_fmadd_ps(_mm_loadu_ps(fl + p * 4), _mm_loadu_ps(sc), yv);
        }
    }
    float out[4];
    _mm_storeu_ps(out, yv);
    for (int i = 0; i < nr; i++) y[i] = out[i];
}

/* The same outputs as tile_r4(), lanes = 16 rows instead of columns: each 64
 * columns of the 16 rows are transposed in registers so that vector q holds
 * every row's 4 bytes of columns 4q..4q+3, and VPDPBUSD takes each token's 4
 * bytes broadcast: a lane accumulates its own row, so a block's sums need no
 * horizontal reduction (a first 4 rows x 4 tokens kernel with one spent
 * more on it than on the multiplies: 0.55x the FMA tiles), and the transpose is shared by the NT tokens.  Per lane the
 * block sums are the same exact integers and the combination the same
 * fma(float(S), sw * sx, y) in block order, so the outputs are bit identical
 * to tile_r4()'s (tested) and either kernel may serve any batch. */
static inline __attribute__((always_inline, target(VNNI_T))) void
vtile(const int8_t *W, const float *SW, int64_t C, int qblk, int64_t nb, const uint8_t *XQ, const float *XS,
      int64_t ldx, int NT, int nr, int nt, float *y, int64_t ldy) {
    const int8_t *wr[16];
    const uint8_t *xr[16];
    __m512i v[16];
    __m512 yb[16];
    for (int i = 0; i < 16; i++) wr[i] = W + (i < nr ? i : 0) * C;
    for (int t = 0; t < NT; t++) xr[t] = XQ + (t < nt ? t : 0) * ldx, yb[t] = _mm512_setzero_ps();
    __m512i swi = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                     _mm512_set1_epi32((int)nb));
    swi = _mm512_maskz_mov_epi32((__mmask16)((1u << nr) - 1), swi); /* rows past nr: row 0's scales */
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    for (int64_t b = 0; b < nb; b++) {
        int64_t c0 = b * qblk, c1 = c0 + qblk < C ? c0 + qblk : C;
        __m512i a[16], corr = _mm512_setzero_si512();
        for (int t = 0; t < NT; t++) a[t] = _mm512_setzero_si512();
        for (int64_t c = c0; c < c1; c += 64) {
            __mmask64 k = c1 - c >= 64 ? ~0ull : (1ull << (c1 - c)) - 1;
            int nq = c1 - c >= 64 ? 16 : (int)(c1 - c + 3) / 4;
            if (NT <= 8) /* few tokens: the stream needs the help (see VNNI_PF) */
                for (int i = 0; i < 16; i++) _mm_prefetch((const char *)wr[i] + c + VNNI_PF, _MM_HINT_T0);
            for (int i = 0; i < 16; i++) v[i] = _mm512_maskz_loadu_epi8(k, wr[i] + c);
            eng_transpose16_epi32(v);
            for (int q = 0; q < nq; q++) {
                corr = _mm512_dpbusd_epi32(corr, k128, v[q]);
                for (int t = 0; t < NT; t++) {
                    int32_t xq4;
                    memcpy(&xq4, xr[t] + c + 4 * q, 4);
                    a[t] = _mm512_dpbusd_epi32(a[t], _mm512_set1_epi32(xq4), v[q]);
                }
            }
        }
        __m512 sw = _mm512_i32gather_ps(_mm512_add_epi32(swi, _mm512_set1_epi32((int)b)), SW, 4);
        for (int t = 0; t < NT; t++) {
            __m512 sc = _mm512_mul_ps(sw, _mm512_set1_ps(XS[(t < nt ? t : 0) * nb + b]));
            yb[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a[t], corr)), sc, yb[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm512_mask_storeu_ps(y + t * ldy, (__mmask16)((1u << nr) - 1), yb[t]);
}

__attribute__((target(VNNI_T))) static void vtile_16(const int8_t *W, const float *SW, int64_t C, int qblk,
                                                      int64_t nb, const uint8_t *XQ, const float *XS, int64_t ldx,
                                                      int nr, int nt, float *y, int64_t ldy) {
    vtile(W, SW, C, qblk, nb, XQ, XS, ldx, 16, nr, nt, y, ldy);
}

__attribute__((target(VNNI_T))) static void vtile_8(const int8_t *W, const float *SW, int64_t C, int qblk,
                                                     int64_t nb, const uint8_t *XQ, const float *XS, int64_t ldx,
                                                     int nr, int nt, float *y, int64_t ldy) {
    vtile(W, SW, C, qblk, nb, XQ, XS, ldx, 8, nr, nt, y, ldy);
}

__attribute__((target(VNNI_T))) static void vtile_2(const int8_t *W, const float *SW, int64_t C, int qblk,
                                                     int64_t nb, const uint8_t *XQ, const float *XS, int64_t ldx,
                                                     int nr, int nt, float *y, int64_t ldy) {
    vtile(W, SW, C, qblk, nb, XQ, XS, ldx, 2, nr, nt, y, ldy);
}

__attribute__((target(VNNI_T))) static void vtile_4(const int8_t *W, const float *SW, int64_t C, int qblk,
                                                     int64_t nb, const uint8_t *XQ, const float *XS, int64_t ldx,
                                                     int nr, int nt, float *y, int64_t ldy) {
    vtile(W, SW, C, qblk, nb, XQ, XS, ldx, 4, nr, nt, y, ldy);
}

void eng_cpu_vnni_rows(const eng_w_t *w, const void *xp, int n, float *y, int64_t r0, int64_t r1) {
    int64_t C = w->cols, R = w->rows, nb = w->scale_cols;
    int qb = w->qblk;
    typedef void (*tile_fn)(const int8_t *, const float *, int64_t, int, int64_t, const uint8_t *, const float *,
                            int64_t, int, int, float *, int64_t);
    /* tokens in chunks whose quantized x stays in L2 (~384 KB) */
    int tc = (int)((384 << 10) / x_ld(C)) / 16 * 16;
    if (tc < 16) tc = 16;
    for (int t0 = 0; t0 < n; t0 += tc) {
        int t1 = t0 + tc < n ? t0 + tc : n;
        for (int64_t r = r0; r < r1; r += 16) {
            int nr = r1 - r < 16 ? (int)(r1 - r) : 16;
            const int8_t *W = (const int8_t *)w->data + r * C;
            for (int t = t0; t < t1;) {
                /* one token: lanes along the columns (4 rows x 4 blocks; a
                 * transpose would serve one token only); more: lanes along the rows, 16,
                 * 8 (from 5 tokens: a part-filled 8 beats 4 + 4), 4 or 2 tokens
                 * a tile (measured; engine/README.md).  Every kernel gives the
                 * same bits. */
                if (n == 1) {
                    for (int h = 0; h < nr; h += 4)
                        tile_r4(W + h * C, w->scale + (r + h) * nb, C, qb, nb, eng_cpu_vnni_xq(xp, n, C, qb, 0),
                                eng_cpu_vnni_xs(xp, n, C, qb, 0), nr - h < 4 ? nr - h : 4, y + r + h);
                    break;
                }
                int left = t1 - t, NT = left >= 16 ? 16 : left >= 5 ? 8 : left >= 3 ? 4 : 2;
                tile_fn fn = NT == 2 ? vtile_2 : NT == 16 ? vtile_16 : NT == 8 ? vtile_8 : vtile_4;
                int nt = left < NT ? left : NT;
                fn(W, w->scale + r * nb, C, qb, nb, eng_cpu_vnni_xq(xp, n, C, qb, t), eng_cpu_vnni_xs(xp, n, C, qb, t),
                   x_ld(C), nr, nt, y + (int64_t)t * R + r, R);
                t += nt;
            }
        }
    }
}
