/* eng_cpu_amx.c — bf16 matmuls on Intel AMX (TDPBF16PS), the "amx" ISA level.
 *
 *   Y [n, rows r0..r1) = X [n, C] @ W^T,   W bf16 [R, C] re-laid once into tiles
 *
 * AMX multiplies bf16 by bf16 into fp32.  The weights are bf16 already; the
 * fp32 activations are split once per matmul into two bf16 parts,
 * x = hi + lo (hi = bf16(x), lo = bf16(x - hi), both rounded to nearest
 * even), and every k-block adds W.hi then W.lo, so a product keeps ~16 bits
 * of x (relative error ~2^-17, against 2^-9 for x rounded to bf16 alone):
 * the goldens' 1e-3 tolerance holds with two orders of magnitude to spare.
 *
 * Layout: the weights are the A operand, re-laid at load time (the backend's
 * upload_w) into 16 x 32 tiles that a tile load reads in place (below, "tiled
 * weights"); the prepared activations are the B operand, in AMX's pair
 * layout, per (group of up to 16 tokens, block of 32 columns) one hi tile
 * then one lo tile of 16 rows x w dwords, w = min(n, 16) tokens:
 *   xp[((g * KB + kb) * 2 + part) * 32 w + kk * 2 w + m * 2 + p]
 *      = part(x[16 g + m][32 kb + 2 kk + p])       (0 past n or C)
 * A batch of fewer than 16 tokens uses tiles only as wide as the batch (a
 * decode at batch 1 reads 128 bytes of x per 4 KB of weights, not 2 KB).
 * The result tile is [16 rows][w tokens], transposed into y on the way out.
 *
 * Invariance: an output element is the accumulation, in k order, of its
 * weight row against its token's column; no other token or row enters it,
 * whatever the tile's width or fill, so results do not depend on the batch,
 * on the tile shape or on the thread (tested bit for bit). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "eng_cpu.h"
#include "eng_cpu_simd.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

#define AMX_RG 4      /* row groups of 16 (result tiles) sharing each pair of x tiles */
/* Weights are prefetched AMX_PF bytes ahead of the tile loads.  Tiles are not
 * renamed, so a tile load waits for the multiplies that read its register and
 * then for memory: without the prefetch a batch-1 stream ran at 84% of a pure
 * read on one thread, with it at 100-105% (2026-11-30, 4 MB matrices; 4 KB
 * ahead or into L2 only: 88-97%, non-temporal: much worse). */
#ifndef AMX_PF
#define AMX_PF 1024
#endif

int eng_cpu_amx_probe(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
        !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512bf16"))
        return 0;
    /* Linux hands out the 8 KB tile state only on request (once per process) */
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

/* tokens per B tile (its width in dwords) for a batch of n */
static inline int tile_w(int n) { return n < 16 ? n : 16; }

size_t eng_cpu_amx_xbytes(int n, int64_t C) {
    size_t groups = ((size_t)n + 15) / 16, kb = ((size_t)C + 31) / 32;
    return groups * kb * 2 * 32 * (size_t)tile_w(n) * sizeof(uint16_t);
}

/* hi and lo parts of 32 floats, as 16 dwords each (pairs of bf16, even k
 * low).  VCVTNE2PS2BF16 rounds to nearest even, as the bit arithmetic here
 * did before it; it also flushes denormals, which TDPBF16PS reads as zero
 * anyway, so the tile products are the same. */
static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512bf16"))) void split32(__m512 a, __m512 b,
                                                                                              __m512i *hi,
                                                                                              __m512i *lo) {
    __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a); /* words 0-15: a, 16-31: b */
    __m512 ha = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
    __m512 hb = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
    *hi = h;
    *lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, hb), _mm512_sub_ps(a, ha));
}

/* Per (token group, 32-column block): each token's 16 dwords of hi and of lo
 * (one zmm each), transposed so that dword kk of the w tokens is row kk of
 * the tile.  (Scattering each token's dwords to stride w took ~30% of a
 * 64-token matmul; the transposes take a few percent.) */
void eng_cpu_amx_xprep(const float *x, int n, int64_t C, uint16_t *xp) {
    eng_cpu_amx_xprep_groups(x, NULL, n, C, xp, 0, (n + 15) / 16);
}

/* token groups g0..g1-1 only (16 tokens each): threads can share one x;
 * token t is row rows[t] of x (rows NULL: row t) */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void eng_cpu_amx_xprep_groups(const float *x,
                                                                                   const int32_t *rows, int n,
                                                                                   int64_t C, uint16_t *xp, int g0,
                                                                                   int g1) {
    int64_t KB = (C + 31) / 32;
    int w = tile_w(n);
    __mmask16 mw = (__mmask16)((1u << w) - 1);
    __m512i stride = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                        _mm512_set1_epi32(w));
    for (int g = g0; g < g1; g++)
        for (int64_t kb = 0; kb < KB; kb++) {
            uint32_t *hi = (uint32_t *)(xp + ((g * KB + kb) * 2) * 32 * w), *lo = hi + 16 * w;
            int64_t k = kb * 32, left = C - k;
            __mmask16 ma = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            __mmask16 mb = left >= 32 ? 0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
            __m512i h[16], l[16];
            for (int m = 0; m < (w < 8 ? w : 16); m++) {
                int t = g * 16 + m;
                if (m < w && t < n) {
                    const float *xr = x + (int64_t)(rows ? rows[t] : t) * C + k;
                    split32(_mm512_maskz_loadu_ps(ma, xr), _mm512_maskz_loadu_ps(mb, xr + 16), &h[m], &l[m]);
                } else {
                    h[m] = l[m] = _mm512_setzero_si512();
                }
            }
            if (w < 8) { /* a few tokens: each one's dwords to stride w */
                for (int m = 0; m < w; m++) {
                    _mm512_i32scatter_epi32(hi + m, stride, h[m], 4);
                    _mm512_i32scatter_epi32(lo + m, stride, l[m], 4);
                }
                continue;
            }
            eng_transpose16_epi32(h);
            eng_transpose16_epi32(l);
            for (int kk = 0; kk < 16; kk++) {
                _mm512_mask_storeu_epi32(hi + kk * w, mw, h[kk]);
                _mm512_mask_storeu_epi32(lo + kk * w, mw, l[kk]);
            }
        }
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) amx_cfg_t;

/* scratch the kernel needs: none now (partial sums stay in the tiles) */
size_t eng_cpu_amx_scratch_floats(int n, int64_t C) { return 16; }

/* an operation on each of the result tiles q < ng */
#define AMX_EACH(ng, OP0, OP1, OP2, OP3)                                                             \
    do {                                                                                             \
        OP0;                                                                                         \
        if ((ng) > 1) OP1;                                                                           \
        if ((ng) > 2) OP2;                                                                           \
        if ((ng) > 3) OP3;                                                                           \
    } while (0)

/* ---- weights laid out at load time as tiles (eng_w_t.layout ENG_W_AMX) -----
 *
 * Rows are padded to Rp = 16 * ceil(R / 16), columns to 32 * KB, KB = ceil(C / 32),
 * with zeros.  Rows go in super-groups of 64 (the AMX_RG result tiles of one
 * sweep); inside one, block kb of each of its nq 16-row tiles (nq = 4, fewer
 * in the last super-group), one after the other:
 *   tile (r = 64 s + 16 q, kb) at element  64 s * 32 KB + (kb * nq + q) * 512
 *   W[r][c] at                           tile(r - r % 16, c / 32) + (r % 16) * 32 + c % 32
 * So a tile load reads 1 KB in place (stride 64 bytes, no L1 set conflicts),
 * and a sweep of 64 rows over every column reads one contiguous run: a
 * decode step streams each weight byte once. */

size_t eng_cpu_amx_tiled_elems(int64_t R, int64_t C) {
    return (size_t)((R + 15) / 16 * 16) * (size_t)((C + 31) / 32 * 32);
}

/* element offset of the tile holding rows r..r+15 (r % 16 == 0), block kb; *step: elements to block kb+1 */
static inline size_t tile_off(int64_t R, int64_t KB, int64_t r, int64_t kb, int64_t *step) {
    int64_t Rp = (R + 15) / 16 * 16, s = r / 64, q = (r % 64) / 16;
    int64_t nq = (Rp - 64 * s) / 16 < 4 ? (Rp - 64 * s) / 16 : 4;
    if (step) *step = nq * 512;
    return (size_t)(64 * s * 32 * KB + (kb * nq + q) * 512);
}

void eng_cpu_amx_tile_w(const uint16_t *W, int64_t R, int64_t C, uint16_t *dst) {
    int64_t KB = (C + 31) / 32, Rp = (R + 15) / 16 * 16;
    for (int64_t r = 0; r < Rp; r += 16)
        for (int64_t kb = 0; kb < KB; kb++) eng_cpu_w_block16(W, R, C, r, kb, dst + tile_off(R, KB, r, kb, NULL));
}

/* row r's first 32 columns; *step: elements from one 32-column block of the row to the next */
const uint16_t *eng_cpu_amx_row_at(const uint16_t *T, int64_t R, int64_t C, int64_t r, int64_t *step) {
    return T + tile_off(R, (C + 31) / 32, r - r % 16, 0, step) + (r % 16) * 32;
}



/* Y rows r0..r1 (r0 % 16 == 0) for tiled weights T: per token group (16
 * tokens), per 64 rows (AMX_RG result tiles), every 32-column block adds W.hi
 * then W.lo into each result tile, which keeps its sums over all columns.
 * Token groups are the outer loop: the chunk's weights (at most 1 MB, see
 * eng_cpu_chunk_rows) come from L2 for every group after the first, and the x
 * tiles of one group (2 KB per block) stay near.  (With rows outermost each
 * 64 rows re-read every group's x tiles, 2 MB at 256 tokens, and spilled the
 * partial sums between sweeps.)  An output's sum is the same sequence of tile
 * products in k order either way. */
__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw"))) void
eng_cpu_amx_rows_tiled(const uint16_t *T, int64_t R, int64_t C, const uint16_t *xp, int n, float *y, int64_t ldy,
                       int64_t r0, int64_t r1, float *scratch) {
    amx_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    int G = (n + 15) / 16, w = tile_w(n);
    /* tiles 0-3: results [16 rows][w tokens]; 4 and 7: weights [16][32 bf16] (two, so that a
     * weight tile loads while the other is still being multiplied: tiles are not renamed);
     * 5, 6: x hi, lo [16 pairs][w] */
    for (int i = 0; i < 8; i++) cfg.colsb[i] = i == 4 || i == 7 ? 64 : (uint16_t)(4 * w), cfg.rows[i] = 16;
    _tile_loadconfig(&cfg);
    float cbuf[16 * 16] __attribute__((aligned(64)));
    int64_t KB = (C + 31) / 32, xt = 32 * w; /* elements of one x tile */
    const char *wend = (const char *)(T + eng_cpu_amx_tiled_elems(R, C));
    __m512i col = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                     _mm512_set1_epi32(w));
    for (int g = 0; g < G; g++) {
        const uint16_t *bt = xp + (size_t)g * KB * 2 * xt;
        int nt = n - g * 16 < 16 ? n - g * 16 : 16;
        for (int64_t r = r0; r < r1; r += 16 * AMX_RG) {
            int ng = (int)((r1 - r + 15) / 16);
            if (ng > AMX_RG) ng = AMX_RG;
            const uint16_t *A[AMX_RG];
            int64_t st[AMX_RG];
            for (int q = 0; q < ng; q++) A[q] = T + tile_off(R, KB, r + 16 * q, 0, &st[q]);
            AMX_EACH(ng, _tile_zero(0), _tile_zero(1), _tile_zero(2), _tile_zero(3));
            for (int64_t kb = 0; kb < KB; kb++) {
                if (g == 0) { /* this block's ng tiles are one run: prefetch as many lines AMX_PF further */
                    const char *pf = (const char *)(A[0] + kb * st[0]) + AMX_PF;
                    for (int l = 0; l < ng * 16 && pf + 64 * l < wend; l++) _mm_prefetch(pf + 64 * l, _MM_HINT_T0);
                }
                _tile_loadd(5, bt + kb * 2 * xt, 4 * w);
                _tile_loadd(6, bt + kb * 2 * xt + xt, 4 * w);
#define AMX_DT(q, a)                                                                                 \
    do {                                                                                             \
        _tile_loadd(a, A[q] + kb * st[q], 64);                                                       \
        _tile_dpbf16ps(q, a, 5);                                                                     \
        _tile_dpbf16ps(q, a, 6);                                                                     \
    } while (0)
                AMX_DT(0, 4);
                if (ng > 1) AMX_DT(1, 7);
                if (ng > 2) AMX_DT(2, 4);
                if (ng > 3) AMX_DT(3, 7);
#undef AMX_DT
            }
            for (int q = 0; q < ng; q++) {
                switch (q) {
                case 0: _tile_stored(0, cbuf, 4 * w); break;
                case 1: _tile_stored(1, cbuf, 4 * w); break;
                case 2: _tile_stored(2, cbuf, 4 * w); break;
                default: _tile_stored(3, cbuf, 4 * w); break;
                }
                int64_t rq = r + q * 16;
                int nr = r1 - rq < 16 ? (int)(r1 - rq) : 16;
                __mmask16 mr = (__mmask16)((1u << nr) - 1);
                for (int m = 0; m < nt; m++)
                    _mm512_mask_storeu_ps(y + (int64_t)(g * 16 + m) * ldy + rq, mr, _mm512_i32gather_ps(col, cbuf + m, 4));
            }
        }
    }
    _tile_release();
}
