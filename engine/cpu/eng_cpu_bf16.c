/* eng_cpu_bf16.c — bf16 matmuls on AVX512-BF16 (VDPBF16PS), the "avx512bf16"
 * ISA level: a CPU with AVX-512 and its bf16 dot product but no AMX (AMD
 * Zen 4 and later; Intel parts with AMX take the "amx" level).
 *
 *   Y [n, rows r0..r1) = X [n, C] @ W^T,   W bf16 [R, C] read in place
 *
 * VDPBF16PS multiplies 16 pairs of bf16 by 16 pairs and adds each pair's two
 * products into a fp32 lane: 32 multiply-adds per instruction, where a fp32
 * FMA does 16, and the weights need no widening.  x is fp32; it is split once
 * per matmul into two bf16 parts, x = hi + lo (hi = bf16(x), lo = bf16(x -
 * hi), round to nearest even, as the amx level does), and every block of 32
 * columns adds W.hi then W.lo: a product keeps ~16 bits of x (relative error
 * ~2^-17; x rounded to bf16 alone, 2^-9, would need ~1e-2 of tolerance on the
 * goldens instead of 1e-3).  So a row-token pair takes two instructions per
 * 32 columns, as two FMAs of 16 do: the multiplies cost the same, and what
 * the level saves is the widening of every weight (two instructions per 16
 * columns) and half the weight loads.
 *
 * Prepared activations (eng_cpu_bf16_xprep), per token: Cp = 32 ceil(C / 32)
 * bf16 of hi then Cp of lo, zeros past C, so token t's parts are at
 * xp + t 2 Cp and xp + t 2 Cp + Cp (every row 64-byte aligned).
 *
 * Tiles: nr <= 4 weight rows by nt <= 4 tokens, one zmm accumulator per pair,
 * lanes along the columns (a row's 32 columns are one 64-byte load, in
 * place), a horizontal sum at the end.
 *
 * One token: two rows per tile, or four with TOLLGATE_ENGINE_BF16_ROWS=4.
 * A row-token pair's two VDPBF16PS per block are one dependent chain, so a
 * tile of r rows is r chains: with the weights in cache one thread runs 19
 * GB/s of rows with one row per tile, 36 with two, 72 with four (Zen 4).  Two
 * rows cap both cores at ~72 GB/s, under the 55-83 GB/s a pure read gets
 * when this host is quiet; from L3 four rows streamed 77-82% of a read
 * against two's 52-67%.  From DRAM, on the loaded host, four rows were
 * slower (the matmul steps of a token 0.92-0.97x; the decode bench, with
 * 1 MB chunks besides, ~7 points less of the same-round read), so two stay
 * the default until a quiet host shows four better (engine/README.md,
 * "session 13").  The four-row tiles
 * prefetch the tile after next as one run of bytes (the rows of a chunk are
 * contiguous), the first tile of a call both tiles ahead of it; four rows
 * that prefetched as the batched tiles do streamed DRAM 3-10% slower still.
 *
 * Invariance: an output is its row's and its token's blocks in column order
 * (hi then lo in each), then the same horizontal sum, whatever the tile's
 * shape, the batch, the row range or the thread: bit identical across them
 * (tested). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_cpu.h"

#define BF_T "avx512f,avx512bw,avx512vl,avx512bf16"
/* weights prefetched this many bytes ahead in the next tile's rows, into L2
 * (as the FMA tiles: rows are a page apart, beyond the hardware prefetcher).
 * 2048 and not 512: a batch-1 tile streamed 1.06-1.19x faster on Zen 4
 * (same-round medians of 31 alternated rounds, 1024x2048, 2048x1024 and
 * 8192x2048 weights, 1 and 2 threads); 3072 and 4096 were no better */
#ifndef BF_PF
#define BF_PF 2048
#endif

int eng_cpu_bf16_probe(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

/* bf16 elements per part of one token (a multiple of 32: 64-byte rows) */
static inline int64_t x_cp(int64_t C) { return (C + 31) / 32 * 32; }

size_t eng_cpu_bf16_xbytes(int n, int64_t C) { return (size_t)n * 2 * (size_t)x_cp(C) * sizeof(uint16_t); }

/* tokens t0..t1-1 (of n): token t is row rows[t] of x (rows NULL: row t) */
__attribute__((target(BF_T))) void eng_cpu_bf16_xprep(const float *x, const int32_t *rows, int n, int64_t C,
                                                       void *xp, int t0, int t1) {
    int64_t Cp = x_cp(C);
    for (int t = t0; t < t1 && t < n; t++) {
        const float *xr = x + (int64_t)(rows ? rows[t] : t) * C;
        uint16_t *hi = (uint16_t *)xp + (int64_t)t * 2 * Cp, *lo = hi + Cp;
        for (int64_t k = 0; k < Cp; k += 32) {
            int64_t left = C - k;
            __mmask16 ma = left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
            __mmask16 mb = left >= 32 ? 0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
            __m512 a = _mm512_maskz_loadu_ps(ma, xr + k), b = _mm512_maskz_loadu_ps(mb, xr + k + 16);
            __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a); /* words 0-15: a, 16-31: b */
            __m512 ha = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
            __m512 hb =
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
            _mm512_store_si512((__m512i *)(hi + k), h);
            _mm512_store_si512((__m512i *)(lo + k), (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, hb), _mm512_sub_ps(a, ha)));
        }
    }
}

/* out[t * ldo + i] = W[i] . x_t for i < NR, t < NT; X: token 0's hi part,
 * tokens ldx elements apart, lo Cp after hi.  Prefetch per block of 32
 * columns: NL = 0, the first pfr rows of the next tile, BF_PF bytes ahead;
 * NL > 0, the next NL 64-byte lines of the run pf (at most pfn bytes). */
static inline __attribute__((always_inline, target(BF_T))) void tile(const uint16_t *W, int64_t ldw, int64_t C,
                                                                   const uint16_t *X, int64_t ldx, int64_t Cp,
                                                                   int NR, int NT, float *out, int64_t ldo, int pfr,
                                                                   const char *pf, int64_t pfn, int NL) {
    __m512 acc[4][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) acc[i][t] = _mm512_setzero_ps();
    int64_t k = 0, o = 0;
    for (; k + 32 <= C; k += 32, o += 64 * NL) {
        __m512i w[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++) if (!NL && i < pfr)
            _mm_prefetch((const char *)(W + (i + NR) * ldw + k) + BF_PF, _MM_HINT_T1);
        _Pragma("GCC unroll 8") for (int i = 0; i < NL; i++) if (o + 64 * i < pfn)
            _mm_prefetch(pf + o + 64 * i, _MM_HINT_T1);
        _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++) w[i] = _mm512_loadu_si512(W + i * ldw + k);
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {
            __m512bh h = (__m512bh)_mm512_load_si512(X + t * ldx + k), l = (__m512bh)_mm512_load_si512(X + t * ldx + Cp + k);
            _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++) {
                acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)w[i], h);
                acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)w[i], l);
            }
        }
    }
    if (k < C) { /* the last block: the row's end masked (x is 0 there) */
        __mmask32 m = (__mmask32)((1ull << (C - k)) - 1);
        __m512i w[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++) w[i] = _mm512_maskz_loadu_epi16(m, W + i * ldw + k);
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {
            __m512bh h = (__m512bh)_mm512_load_si512(X + t * ldx + k), l = (__m512bh)_mm512_load_si512(X + t * ldx + Cp + k);
            _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++) {
                acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)w[i], h);
                acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)w[i], l);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) out[t * ldo + i] = _mm512_reduce_add_ps(acc[i][t]);
}

#define BF_TILE(NR, NT)                                                                                           \
    __attribute__((target(BF_T))) static void tile_##NR##x##NT(const uint16_t *W, int64_t ldw, int64_t C,        \
                                                                const uint16_t *X, int64_t ldx, int64_t Cp,       \
                                                                float *out, int64_t ldo, int pfr) {               \
        tile(W, ldw, C, X, ldx, Cp, NR, NT, out, ldo, pfr, NULL, 0, 0);                                           \
    }
BF_TILE(1, 1) BF_TILE(1, 2) BF_TILE(1, 3) BF_TILE(1, 4)
BF_TILE(2, 1) BF_TILE(2, 2) BF_TILE(2, 3) BF_TILE(2, 4)
BF_TILE(3, 1) BF_TILE(3, 2) BF_TILE(3, 3) BF_TILE(3, 4)
BF_TILE(4, 1) BF_TILE(4, 2) BF_TILE(4, 3) BF_TILE(4, 4)
#undef BF_TILE

/* one token, NR rows: the run pf prefetched NL lines per block */
#define BF_ONE(NR, NL)                                                                                            \
    __attribute__((target(BF_T))) static void one_##NR##_##NL(const uint16_t *W, int64_t C, const uint16_t *X,   \
                                                               int64_t Cp, float *out, const char *pf,          \
                                                               int64_t pfn) {                                    \
        tile(W, C, C, X, 0, Cp, NR, 1, out, 1, 0, pf, pfn, NL);                                                  \
    }
BF_ONE(1, 4) BF_ONE(2, 4) BF_ONE(3, 4) BF_ONE(4, 4) BF_ONE(4, 8)
#undef BF_ONE

/* TOLLGATE_ENGINE_BF16_ROWS=4: one token takes four rows per tile (read once) */
static int one_four(void) {
    static int v = -1;
    int f = __atomic_load_n(&v, __ATOMIC_RELAXED);
    if (f < 0) {
        const char *e = getenv("TOLLGATE_ENGINE_BF16_ROWS");
        f = e && atoi(e) == 4;
        __atomic_store_n(&v, f, __ATOMIC_RELAXED);
    }
    return f;
}

/* Y [1, rows r0..r1) = x . W^T, four rows a tile: the tile after next is
 * prefetched (the first tile prefetches the two after it) */
static void rows_one(const uint16_t *W, int64_t C, const uint16_t *X, int64_t Cp, float *y, int64_t r0,
                     int64_t r1) {
    const char *end = (const char *)(W + r1 * C);
    int64_t tb = 4 * C * 2; /* bytes of a whole tile */
    for (int64_t r = r0; r < r1; r += 4) {
        int nr = r1 - r < 4 ? (int)(r1 - r) : 4, first = r == r0 && nr == 4;
        const char *pf = (const char *)(W + (r + (first ? 4 : 8)) * C);
        int64_t pfn = pf < end ? (int64_t)(end - pf) : 0;
        if (pfn > (first ? 2 : 1) * tb) pfn = (first ? 2 : 1) * tb;
        if (first) one_4_8(W + r * C, C, X, Cp, y + r, pf, pfn);
        else if (nr == 4) one_4_4(W + r * C, C, X, Cp, y + r, pf, pfn);
        else if (nr == 3) one_3_4(W + r * C, C, X, Cp, y + r, pf, pfn);
        else if (nr == 2) one_2_4(W + r * C, C, X, Cp, y + r, pf, pfn);
        else one_1_4(W + r * C, C, X, Cp, y + r, pf, pfn);
    }
}

typedef void (*bf_tile_fn)(const uint16_t *, int64_t, int64_t, const uint16_t *, int64_t, int64_t, float *, int64_t,
                           int);
static const bf_tile_fn tiles[4][4] = {{tile_1x1, tile_1x2, tile_1x3, tile_1x4},
                                       {tile_2x1, tile_2x2, tile_2x3, tile_2x4},
                                       {tile_3x1, tile_3x2, tile_3x3, tile_3x4},
                                       {tile_4x1, tile_4x2, tile_4x3, tile_4x4}};

void eng_cpu_bf16_rows(const eng_w_t *w, const void *xp, int n, float *y, int64_t r0, int64_t r1) {
    int64_t C = w->cols, R = w->rows, Cp = x_cp(C), ldx = 2 * Cp;
    const uint16_t *W = w->data, *X = xp;
    /* tokens in chunks whose parts stay in L2 (~384 KB); the weights are
     * re-read per chunk, which costs far less than L2 misses on x */
    int tc = (int)((384 << 10) / (ldx * 2)) / 4 * 4;
    if (tc < 4) tc = 4;
    if (n == 1 && one_four()) {
        rows_one(W, C, X, Cp, y, r0, r1);
        return;
    }
    int step = n == 1 ? 2 : 4;
    for (int t0 = 0; t0 < n; t0 += tc) {
        int t1 = t0 + tc < n ? t0 + tc : n;
        for (int64_t r = r0; r < r1; r += step) {
            int nr = r1 - r < step ? (int)(r1 - r) : step;
            int pfr = r1 - r - nr < nr ? (int)(r1 - r - nr) : nr; /* rows of the next tile that are this call's */
            for (int t = t0; t < t1; t += 4) {
                int nt = t1 - t < 4 ? t1 - t : 4;
                tiles[nr - 1][nt - 1](W + r * C, C, C, X + (int64_t)t * ldx, ldx, Cp, y + (int64_t)t * R + r, R, pfr);
            }
        }
    }
}
