/* eng_cpu_amx.c — bf16 matmuls on Intel AMX (TDPBF16PS), the "amx" ISA level.
 *
 *   Y [n, rows r0..r1) = X [n, C] @ W^T,   W bf16 [R, C] read in place
 *
 * AMX multiplies bf16 by bf16 into fp32.  The weights are bf16 already; the
 * fp32 activations are split once per matmul into two bf16 parts,
 * x = hi + lo (hi = bf16(x), lo = bf16(x - hi), both rounded to nearest
 * even), and every k-block adds W.hi then W.lo, so a product keeps ~16 bits
 * of x (relative error ~2^-17, against 2^-9 for x rounded to bf16 alone):
 * the goldens' 1e-3 tolerance holds with two orders of magnitude to spare.
 *
 * Layout: the weights are the A operand (16 rows of W x 32 columns, loaded
 * with the row stride: no copy, no repacking); the prepared activations are
 * the B operand, in AMX's pair layout, per (group of 16 tokens, block of 32
 * columns) one hi tile then one lo tile of 16 x 16 dwords:
 *   xp[((g * KB + kb) * 2 + part) * 512 + kk * 32 + m * 2 + p]
 *      = part(x[16 g + m][32 kb + 2 kk + p])       (0 past n or C)
 * The result tile is [16 rows][16 tokens], transposed into y on the way out.
 *
 * Invariance: an output element is the accumulation, in k order, of its
 * weight row against its token's column; no other token or row enters it,
 * whatever the tile's fill, so results do not depend on the batch, on the
 * tile shape or on the thread (tested bit for bit). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "eng_cpu.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

#define AMX_RG 4      /* row groups of 16 (result tiles) sharing each pair of x tiles */
#define AMX_P 256     /* columns per sweep of the token groups (partial sums spilled between sweeps) */
#define AMX_P1 2048   /* columns packed at a time: rows read whole and in order (up to 2048 columns) */
#ifndef AMX_PFD
#define AMX_PFD 1024  /* elements (2 KB) ahead in the weight stream */
#endif

int eng_cpu_amx_probe(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
        !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw"))
        return 0;
    /* Linux hands out the 8 KB tile state only on request (once per process) */
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

size_t eng_cpu_amx_xbytes(int n, int64_t C) {
    size_t groups = ((size_t)n + 15) / 16, kb = ((size_t)C + 31) / 32;
    return groups * kb * 2 * 512 * sizeof(uint16_t);
}

/* bf16 of 16 floats, rounded to nearest even (no NaNs reach here) */
static inline __attribute__((always_inline, target("avx512f,avx512bw"))) __m512i bf16_rne(__m512 v) {
    __m512i b = _mm512_castps_si512(v);
    __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1))));
    return _mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u));
}

/* hi and lo parts of 32 floats, as 16 dwords each (pairs of bf16, even k low) */
static inline __attribute__((always_inline, target("avx512f,avx512bw"))) void split32(__m512 a, __m512 b, __m512i *hi,
                                                                                   __m512i *lo) {
    __m512i ha = bf16_rne(a), hb = bf16_rne(b);
    __m512i la = bf16_rne(_mm512_sub_ps(a, _mm512_castsi512_ps(ha)));
    __m512i lb = bf16_rne(_mm512_sub_ps(b, _mm512_castsi512_ps(hb)));
    /* the top halves of 32 dwords -> 32 words in k order */
    __m512i idx = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25,
                                   23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    *hi = _mm512_permutex2var_epi16(ha, idx, hb);
    *lo = _mm512_permutex2var_epi16(la, idx, lb);
}

__attribute__((target("avx512f,avx512bw"))) void eng_cpu_amx_xprep(const float *x, int n, int64_t C, uint16_t *xp) {
    int64_t KB = (C + 31) / 32;
    int G = (n + 15) / 16;
    /* dword kk of a token's 32 columns goes to row kk of the tile: stride 16 dwords */
    __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                      _mm512_set1_epi32(16));
    for (int g = 0; g < G; g++)
        for (int64_t kb = 0; kb < KB; kb++) {
            uint32_t *hi = (uint32_t *)(xp + ((g * KB + kb) * 2) * 512), *lo = hi + 256;
            int64_t k = kb * 32, left = C - k;
            __mmask16 ma = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            __mmask16 mb = left >= 32 ? 0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
            for (int m = 0; m < 16; m++) {
                int t = g * 16 + m;
                __m512i h, l;
                if (t < n) {
                    const float *xr = x + (int64_t)t * C + k;
                    split32(_mm512_maskz_loadu_ps(ma, xr), _mm512_maskz_loadu_ps(mb, xr + 16), &h, &l);
                } else {
                    h = l = _mm512_setzero_si512();
                }
                _mm512_i32scatter_epi32(hi + m, rows, h, 4);
                _mm512_i32scatter_epi32(lo + m, rows, l, 4);
            }
        }
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) amx_cfg_t;

static int64_t panel_cols(int n, int64_t C) {
    int64_t c32 = (C + 31) / 32 * 32;
    return c32 < AMX_P1 ? c32 : AMX_P1;
}

/* scratch: the packed panel (16 * AMX_RG rows x P1 bf16: 256 KB, in L2), then the partial
 * sums of every token group when there are several (AMX_RG tiles each) */
size_t eng_cpu_amx_scratch_floats(int n, int64_t C) {
    return (size_t)AMX_RG * 8 * panel_cols(n, C) + (n > 16 ? (size_t)AMX_RG * ((n + 15) / 16) * 256 : 0) + 16;
}

/* Copy rows r..r+16*ng (those < r1) x columns k0..k0+32*nkb (those < C) of W
 * into abuf as tiles [q][j][16 rows][32 columns], zeros elsewhere: row by
 * row, so the weights stream sequentially, and the tiles then load from L1
 * with a 64-byte stride (rows of W are a multiple of 4 KB apart in the
 * bench model: loaded in place, a tile's 16 lines would share one L1 set). */
static inline __attribute__((always_inline, target("avx512f,avx512bw"))) void
a_pack(const uint16_t *W, int64_t C, int64_t r, int64_t r1, int ng, int64_t k0, int nkb, int64_t P, uint16_t *abuf) {
    for (int q = 0; q < ng; q++)
        for (int i = 0; i < 16; i++) {
            int64_t row = r + q * 16 + i;
            uint16_t *d = abuf + (size_t)q * P / 32 * 512 + i * 32;
            if (row >= r1) {
                for (int j = 0; j < nkb; j++) _mm512_store_si512((void *)(d + j * 512), _mm512_setzero_si512());
                continue;
            }
            const uint16_t *src = W + row * C + k0;
            int64_t left = C - k0;
            for (int j = 0; j < nkb; j++) {
                _mm_prefetch((const char *)(src + j * 32 + AMX_PFD), _MM_HINT_T1);
                int64_t lj = left - j * 32;
                __m512i v = lj >= 32 ? _mm512_loadu_si512(src + j * 32)
                                     : _mm512_maskz_loadu_epi16((__mmask32)((1u << lj) - 1), src + j * 32);
                _mm512_store_si512((void *)(d + j * 512), v);
            }
        }
}

#define AMX_DP(q)                                                                                    \
    do {                                                                                             \
        _tile_loadd(4, ab + (size_t)(q) * (P / 32) * 512 + (ks + j) * 512, 64);                      \
        _tile_dpbf16ps(q, 4, 5);                                                                     \
        _tile_dpbf16ps(q, 4, 6);                                                                     \
    } while (0)

/* C tiles q < ng: zero, load from or store to the spill slots of token group g */
#define AMX_EACH(ng, OP0, OP1, OP2, OP3)                                                             \
    do {                                                                                             \
        OP0;                                                                                         \
        if ((ng) > 1) OP1;                                                                           \
        if ((ng) > 2) OP2;                                                                           \
        if ((ng) > 3) OP3;                                                                           \
    } while (0)

__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw"))) void
eng_cpu_amx_rows(const uint16_t *W, int64_t C, const uint16_t *xp, int n, float *y, int64_t ldy, int64_t r0,
                 int64_t r1, float *scratch) {
    amx_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 7; i++) cfg.colsb[i] = 64, cfg.rows[i] = 16;
    _tile_loadconfig(&cfg);
    float cbuf[16 * 16] __attribute__((aligned(64)));
    int64_t P = panel_cols(n, C);
    uint16_t *ab = (uint16_t *)(((uintptr_t)scratch + 63) / 64 * 64);
    float *spill = (float *)(ab + (size_t)AMX_RG * 16 * P);
    int64_t KB = (C + 31) / 32;
    int G = (n + 15) / 16;
    for (int64_t r = r0; r < r1; r += 16 * AMX_RG) {
        int ng = (int)((r1 - r + 15) / 16);
        if (ng > AMX_RG) ng = AMX_RG;
        /* pack up to AMX_P1 columns of 64 rows (whole rows of the bench
         * model: one sequential read), then sweep them in AMX_P-column steps
         * when several token groups take turns (one group: one step) */
        for (int64_t kp = 0; kp < C; kp += P) {
            int npk = (int)((C - kp < P ? C - kp : P) + 31) / 32, sub = G > 1 ? AMX_P / 32 : npk;
            a_pack(W, C, r, r1, ng, kp, npk, P, ab);
            for (int ks = 0; ks < npk; ks += sub) {
                int64_t k0 = kp + (int64_t)ks * 32;
                int nkb = npk - ks < sub ? npk - ks : sub;
                int first = k0 == 0, last = k0 + (int64_t)nkb * 32 >= C;
                for (int g = 0; g < G; g++) {
                    float *sp = spill + (size_t)g * AMX_RG * 256;
                    /* one token group keeps its sums in the tiles across panels */
                    if (first)
                        AMX_EACH(ng, _tile_zero(0), _tile_zero(1), _tile_zero(2), _tile_zero(3));
                    else if (G > 1)
                        AMX_EACH(ng, _tile_loadd(0, sp, 64), _tile_loadd(1, sp + 256, 64), _tile_loadd(2, sp + 512, 64),
                                 _tile_loadd(3, sp + 768, 64));
                    const uint16_t *bt = xp + ((size_t)g * KB + k0 / 32) * 1024;
                    for (int j = 0; j < nkb; j++) {
                        _tile_loadd(5, bt + j * 1024, 64);
                        _tile_loadd(6, bt + j * 1024 + 512, 64);
                        AMX_DP(0);
                        if (ng > 1) AMX_DP(1);
                        if (ng > 2) AMX_DP(2);
                        if (ng > 3) AMX_DP(3);
                    }
                    if (!last) {
                        if (G > 1)
                            AMX_EACH(ng, _tile_stored(0, sp, 64), _tile_stored(1, sp + 256, 64),
                                     _tile_stored(2, sp + 512, 64), _tile_stored(3, sp + 768, 64));
                        continue;
                    }
                    for (int q = 0; q < ng; q++) {
                        switch (q) {
                        case 0: _tile_stored(0, cbuf, 64); break;
                        case 1: _tile_stored(1, cbuf, 64); break;
                        case 2: _tile_stored(2, cbuf, 64); break;
                        default: _tile_stored(3, cbuf, 64); break;
                        }
                        int64_t rq = r + q * 16;
                        int nr = r1 - rq < 16 ? (int)(r1 - rq) : 16;
                        int nt = n - g * 16 < 16 ? n - g * 16 : 16;
                        /* column m of the tile is token m's 16 outputs */
                        __mmask16 mr = (__mmask16)((1u << nr) - 1);
                        __m512i col = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                         _mm512_set1_epi32(16));
                        for (int m = 0; m < nt; m++)
                            _mm512_mask_storeu_ps(y + (int64_t)(g * 16 + m) * ldy + rq, mr,
                                                  _mm512_i32gather_ps(col, cbuf + m, 4));
                    }
                }
            }
        }
    }
    _tile_release();
}
