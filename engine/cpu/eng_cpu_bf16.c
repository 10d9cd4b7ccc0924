/* eng_cpu_bf16.c — bf16 matmuls on AVX512-BF16 (VDPBF16PS), the "avx512bf16"
 * ISA level: a CPU with AVX-512 and its bf16 dot product but no AMX (AMD
 * Zen 4 and later; Intel parts with AMX take the "amx" level).
 *
 *   Y [n, rows r0..r1) = X [n, C] @ W^T,   W bf16 [R, C], in rows or re-laid
 *                                           at load into T16 groups (below)
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
 * place), a horizontal sum at the end.  One token on T16 weights: a whole
 * group of 16 rows, 16 accumulators (group_one).
 *
 * One token on weights in rows (only outside the model: the backend re-lays
 * every bf16 weight it is given): two rows per tile.  A row-token pair's two
 * VDPBF16PS per block are one dependent chain, so a tile of r rows is r
 * chains: with the weights in cache one thread ran 19 GB/s with one row per
 * tile, 36 with two, 72 with four; group_one's 16 chains ran 72 GB/s where
 * the two-row tile ran 43 (Zen 4, one thread, 512 KB in L2).  (Until
 * 2026-12-01 the model's weights stayed in rows, and four-row one-token tiles
 * were tried behind TOLLGATE_ENGINE_BF16_ROWS=4: from DRAM they lost to two
 * rows; engine/README.md, sessions 13 and 14.)
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

/* out[t * ldo + i] = W[i] . x_t for i < NR, t < NT; W: row 0's first block,
 * rows ldw elements apart, blocks bs (32 in rows, 512 in T16 groups); X:
 * token 0's hi part, tokens ldx elements apart, lo Cp after hi.  Prefetch per block of 32
 * columns: the first pfr rows of the next tile (pfo elements further: T16's
 * next group), BF_PF bytes ahead. */
static inline __attribute__((always_inline, target(BF_T))) void tile(const uint16_t *W, int64_t ldw, int64_t bs,
                                                                   int64_t C, const uint16_t *X, int64_t ldx,
                                                                   int64_t Cp, int NR, int NT, float *out, int64_t ldo,
                                                                   int pfr, int64_t pfo) {
    __m512 acc[4][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) acc[i][t] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= C; k += 32, W += bs) {
        __m512i w[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++) if (i < pfr)
            _mm_prefetch((const char *)(W + (i + NR) * ldw + pfo) + BF_PF, _MM_HINT_T1);
        _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++) w[i] = _mm512_loadu_si512(W + i * ldw);
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
        _Pragma("GCC unroll 4") for (int i = 0; i < NR; i++) w[i] = _mm512_maskz_loadu_epi16(m, W + i * ldw);
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
    __attribute__((target(BF_T))) static void tile_##NR##x##NT(const uint16_t *W, int64_t ldw, int64_t bs,       \
                                                                int64_t C, const uint16_t *X, int64_t ldx,        \
                                                                int64_t Cp, float *out, int64_t ldo, int pfr,     \
                                                                int64_t pfo) {                                    \
        tile(W, ldw, bs, C, X, ldx, Cp, NR, NT, out, ldo, pfr, pfo);                                              \
    }
BF_TILE(1, 1) BF_TILE(1, 2) BF_TILE(1, 3) BF_TILE(1, 4)
BF_TILE(2, 1) BF_TILE(2, 2) BF_TILE(2, 3) BF_TILE(2, 4)
BF_TILE(3, 1) BF_TILE(3, 2) BF_TILE(3, 3) BF_TILE(3, 4)
BF_TILE(4, 1) BF_TILE(4, 2) BF_TILE(4, 3) BF_TILE(4, 4)
#undef BF_TILE

/* ---- T16: weights re-laid in groups of 16 rows (eng_w_t.layout ENG_W_T16) ----
 *
 * Rows padded to a multiple of 16 and columns to 32, with zeros; a group's
 * block kb is its 16 rows' columns 32 kb .. 32 kb + 31, 1 KB in row order:
 *   T[((r / 16) KB + c / 32) 512 + (r % 16) 32 + c % 32] = W[r][c]
 * One token sweeps a group with 16 independent sums, so its bytes are one run
 * read front to back.  In rows, a batch-1 tile reads two rows 4 KB apart and
 * the prefetches two more: four streams a tile, which Zen 4's prefetchers and
 * DRAM served at 77-84% of a pure read of the same bytes, against 88-95% for
 * the one run (two threads, 1 GB of 1024-7168-column weights, 256 KB chunks,
 * same-round medians; scratch bench 2026-12-01).  Batched tiles read four
 * rows of a group, each block 1 KB on.  Every output is the same sequence of
 * VDPBF16PS (block order, hi then lo) and the same horizontal sum as in rows:
 * the layouts give the same bits (tested). */

size_t eng_cpu_bf16_t16_elems(int64_t R, int64_t C) { return (size_t)((R + 15) / 16 * 16) * (size_t)x_cp(C); }

void eng_cpu_w_block16(const uint16_t *W, int64_t R, int64_t C, int64_t r, int64_t kb, uint16_t *t) {
    for (int i = 0; i < 16; i++) {
        int64_t row = r + i, c0 = kb * 32, nc = row >= R ? 0 : C - c0 < 32 ? C - c0 : 32;
        if (nc) memcpy(t + i * 32, W + row * C + c0, (size_t)nc * sizeof(uint16_t));
        memset(t + i * 32 + nc, 0, (size_t)(32 - nc) * sizeof(uint16_t));
    }
}

void eng_cpu_bf16_t16_w(const uint16_t *W, int64_t R, int64_t C, uint16_t *dst) {
    int64_t KB = x_cp(C) / 32, Rp = (R + 15) / 16 * 16;
    for (int64_t g = 0; g < Rp; g += 16)
        for (int64_t kb = 0; kb < KB; kb++) eng_cpu_w_block16(W, R, C, g, kb, dst + (g / 16 * KB + kb) * 512);
}

const uint16_t *eng_cpu_bf16_t16_row_at(const uint16_t *T, int64_t C, int64_t r, int64_t *step) {
    if (step) *step = 512;
    return T + (r / 16) * (x_cp(C) / 32) * 512 + (r % 16) * 32;
}

/* group_one's prefetch distance: its group is one run, and 4 KB ahead
 * streamed 1.05-1.07x faster than 2 KB on Zen 4 in isolation (two threads,
 * 1 GB of 1024x2048 T16 groups in 1 MB runs against a pure read, same-round
 * medians of 7 and 11 rounds: 85.9/86.6% of the read against 80.1/81.3%);
 * 6 and 8 KB were no better.  In the whole decode on a quiet host the two
 * distances gave the same GB/s (4 alternated pairs, engine/README.md
 * session 15). */
#ifndef BF_PF_ONE
#define BF_PF_ONE 4096
#endif

/* one token, one group: out[i] = row i . x for i < 16; the run is prefetched
 * BF_PF_ONE bytes ahead up to pend (this call's last group: the next chunk is
 * likely another thread's) */
/* up to this many tokens run group_one per token (the second on from L2) */
#ifndef BF_GROUP_TOKENS
#define BF_GROUP_TOKENS 2
#endif

__attribute__((target(BF_T))) static void group_one(const uint16_t *G, int64_t KB, const uint16_t *X, int64_t Cp,
                                                    float *out, const char *pend) {
    __m512 acc[16];
    _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < KB; kb++, G += 512) {
        const char *pf = (const char *)G + BF_PF_ONE;
        if (pf < pend) /* pend NULL: no prefetch (the group is in cache) */ _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) _mm_prefetch(pf + 64 * i, _MM_HINT_T1);
        __m512bh h = (__m512bh)_mm512_load_si512(X + 32 * kb), l = (__m512bh)_mm512_load_si512(X + Cp + 32 * kb);
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) {
            __m512i w = _mm512_load_si512(G + 32 * i);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)w, h);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)w, l);
        }
    }
    _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) out[i] = _mm512_reduce_add_ps(acc[i]);
}

typedef void (*bf_tile_fn)(const uint16_t *, int64_t, int64_t, int64_t, const uint16_t *, int64_t, int64_t, float *,
                           int64_t, int, int64_t);
static const bf_tile_fn tiles[4][4] = {{tile_1x1, tile_1x2, tile_1x3, tile_1x4},
                                       {tile_2x1, tile_2x2, tile_2x3, tile_2x4},
                                       {tile_3x1, tile_3x2, tile_3x3, tile_3x4},
                                       {tile_4x1, tile_4x2, tile_4x3, tile_4x4}};

/* rows r0..r1 (r0 % 16 == 0) of T16 weights */
static void rows_t16(const uint16_t *T, int64_t R, int64_t C, const uint16_t *X, int n, int tc, float *y, int64_t r0,
                     int64_t r1) {
    int64_t Cp = x_cp(C), KB = Cp / 32, ldx = 2 * Cp;
    if (n <= BF_GROUP_TOKENS) { /* each token sweeps each group; a group is read from memory once */
        const char *pend = (const char *)(T + (r1 + 15) / 16 * 16 * Cp);
        for (int64_t g = r0; g < r1; g += 16)
            for (int t = 0; t < n; t++) {
                float part[16];
                int full = r1 - g >= 16;
                group_one(T + g * Cp, KB, X + t * ldx, Cp, full ? y + (int64_t)t * R + g : part, t ? NULL : pend);
                if (!full) memcpy(y + (int64_t)t * R + g, part, (size_t)(r1 - g) * sizeof(float));
            }
        return;
    }
    for (int t0 = 0; t0 < n; t0 += tc) {
        int t1 = t0 + tc < n ? t0 + tc : n;
        for (int64_t r = r0; r < r1; r += 4) {
            int nr = r1 - r < 4 ? (int)(r1 - r) : 4;
            int pfr = r1 - r - nr < nr ? (int)(r1 - r - nr) : nr; /* rows of the next tile that are this call's */
            /* the next tile's rows: 4 rows on in this group, or the next group's first four */
            int64_t pfo = r % 16 == 12 ? (KB - 1) * 512 : 0;
            const uint16_t *Wr = T + (r / 16) * KB * 512 + (r % 16) * 32;
            for (int t = t0; t < t1; t += 4) {
                int nt = t1 - t < 4 ? t1 - t : 4;
                tiles[nr - 1][nt - 1](Wr, 32, 512, Cp, X + (int64_t)t * ldx, ldx, Cp, y + (int64_t)t * R + r, R, pfr,
                                      pfo);
            }
        }
    }
}

void eng_cpu_bf16_rows(const eng_w_t *w, const void *xp, int n, float *y, int64_t r0, int64_t r1) {
    int64_t C = w->cols, R = w->rows, Cp = x_cp(C), ldx = 2 * Cp;
    const uint16_t *W = w->data, *X = xp;
    /* tokens in chunks whose parts stay in L2 (~384 KB); the weights are
     * re-read per chunk, which costs far less than L2 misses on x */
    int tc = (int)((384 << 10) / (ldx * 2)) / 4 * 4;
    if (tc < 4) tc = 4;
    if (w->layout == ENG_W_T16) {
        rows_t16(W, R, C, X, n, tc, y, r0, r1);
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
                tiles[nr - 1][nt - 1](W + r * C, C, 32, C, X + (int64_t)t * ldx, ldx, Cp, y + (int64_t)t * R + r, R, pfr,
                                      0);
            }
        }
    }
}
