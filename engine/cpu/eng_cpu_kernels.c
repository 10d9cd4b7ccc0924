/* eng_cpu_kernels.c — the CPU backend's inner loops: weight rows decoded to
 * fp32 (F32, BF16, F16, FP8 e4m3 with 128x128 block scales, int8 with row or
 * block scales), fp32 dot products and axpy.  Each exists as portable C, AVX2
 * and AVX-512 code; the widest the CPU supports is chosen once at run time.
 * Accumulation order depends only on the vector length, never on how many
 * tokens are in a batch, so batched and single results are bit-identical. */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "eng_cpu.h"
#include "eng_cpu_simd.h"

static float f8_table[256];

/* ---- portable ---------------------------------------------------------------- */

static float dot_scalar(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static void bf16_row_scalar(const uint16_t *s, float *d, int64_t n) {
    for (int64_t i = 0; i < n; i++) d[i] = eng_bf16_to_f32(s[i]);
}

static void f16_row_scalar(const uint16_t *s, float *d, int64_t n) {
    for (int64_t i = 0; i < n; i++) d[i] = eng_f16_to_f32(s[i]);
}

/* ---- AVX2 + FMA ---------------------------------------------------------------- */

__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s0 = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float s = _mm_cvtss_f32(h);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

__attribute__((target("avx2,fma"))) static void axpy_avx2(float *y, float a, const float *x, int n) {
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

__attribute__((target("avx2"))) static void bf16_row_avx2(const uint16_t *s, float *d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
        _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; i < n; i++) d[i] = eng_bf16_to_f32(s[i]);
}

__attribute__((target("avx2,f16c"))) static void f16_row_avx2(const uint16_t *s, float *d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    for (; i < n; i++) d[i] = eng_f16_to_f32(s[i]);
}

/* ---- AVX-512 ---------------------------------------------------------------- */

__attribute__((target("avx512f"))) static float dot_avx512(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

__attribute__((target("avx512f"))) static void axpy_avx512(float *y, float a, const float *x, int n) {
    __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i),
                                                       _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* nr axpys in a row, y += a[d] * rows[d] for d = 0..nr-1, each element
 * through the same fmadd as axpy_avx512 in the same order (so the same
 * result), 256 columns at a time held in registers instead of re-read and
 * re-written per row: attention's absorbed projection over a head's rows */
__attribute__((target("avx512f"))) static void axpy_rows_avx512(float *y, const float *a, const float *rows, size_t ldr,
                                                                int nr, int n) {
    for (int k0 = 0; k0 < n; k0 += 256) {
        int nk = n - k0 < 256 ? n - k0 : 256, nv = (nk + 15) / 16;
        __mmask16 mt = nk % 16 ? (__mmask16)((1u << (nk % 16)) - 1) : 0xffff;
        __m512 acc[16];
        for (int v = 0; v < 16; v++)
            if (v < nv) acc[v] = _mm512_maskz_loadu_ps(v == nv - 1 ? mt : 0xffff, y + k0 + 16 * v);
        for (int d = 0; d < nr; d++) {
            __m512 va = _mm512_set1_ps(a[d]);
            const float *x = rows + (size_t)d * ldr + k0;
            for (int v = 0; v < 16; v++)
                if (v < nv) acc[v] = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(v == nv - 1 ? mt : 0xffff, x + 16 * v), acc[v]);
        }
        for (int v = 0; v < 16; v++)
            if (v < nv) _mm512_mask_storeu_ps(y + k0 + 16 * v, v == nv - 1 ? mt : 0xffff, acc[v]);
    }
}

__attribute__((target("avx512f"))) static void bf16_row_avx512(const uint16_t *s, float *d, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + i)));
        _mm512_storeu_ps(d + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
    for (; i < n; i++) d[i] = eng_bf16_to_f32(s[i]);
}

__attribute__((target("avx512f"))) static void f16_row_avx512(const uint16_t *s, float *d, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
    for (; i < n; i++) d[i] = eng_f16_to_f32(s[i]);
}

/* d[i] = q[i] * scale, 16 at a time */
__attribute__((target("avx512f"))) static void i8_run_avx512(const int8_t *q, float *d, int64_t n, float scale) {
    __m512 vs = _mm512_set1_ps(scale);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(d + i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + i)))), vs));
    for (; i < n; i++) d[i] = (float)q[i] * scale;
}

/* d[i] = table[f8[i]] * scale via a gather */
__attribute__((target("avx512f"))) static void f8_run_avx512(const uint8_t *q, float *d, int64_t n, float scale) {
    __m512 vs = _mm512_set1_ps(scale);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + i)));
        _mm512_storeu_ps(d + i, _mm512_mul_ps(_mm512_i32gather_ps(idx, f8_table, 4), vs));
    }
    for (; i < n; i++) d[i] = f8_table[q[i]] * scale;
}

static void i8_run_scalar(const int8_t *q, float *d, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) d[i] = (float)q[i] * scale;
}

static void f8_run_scalar(const uint8_t *q, float *d, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) d[i] = f8_table[q[i]] * scale;
}

/* ---- dispatch ---------------------------------------------------------------- */

static struct {
    const char *isa;
    float (*dot)(const float *, const float *, int);
    void (*axpy)(float *, float, const float *, int);
    void (*bf16_row)(const uint16_t *, float *, int64_t);
    void (*f16_row)(const uint16_t *, float *, int64_t);
    void (*i8_run)(const int8_t *, float *, int64_t, float);
    void (*f8_run)(const uint8_t *, float *, int64_t, float);
    int amx; /* bf16 matmuls on AMX tiles (eng_cpu_amx.c) */
    int bf16dp; /* bf16 matmuls on AVX512-BF16 dot products (eng_cpu_bf16.c) */
    int vnni; /* int8-weight matmuls int8 x int8 on AVX512-VNNI (eng_cpu_vnni.c) */
} K;

static pthread_once_t k_once = PTHREAD_ONCE_INIT;

static void k_init(void) {
    for (int i = 0; i < 256; i++) f8_table[i] = eng_f8e4m3_to_f32((uint8_t)i);
    const char *force = getenv("TOLLGATE_ENGINE_ISA");
    int want = 4;
    if (force && !strcmp(force, "scalar")) want = 0;
    if (force && !strcmp(force, "avx2")) want = 1;
    if (force && !strcmp(force, "avx512")) want = 2;
    if (force && !strcmp(force, "avx512bf16")) want = 3;
    __builtin_cpu_init();
    int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    int has512 = has2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    K.isa = "scalar";
    K.dot = dot_scalar;
    K.axpy = axpy_scalar;
    K.bf16_row = bf16_row_scalar;
    K.f16_row = f16_row_scalar;
    K.i8_run = i8_run_scalar;
    K.f8_run = f8_run_scalar;
    if (want >= 1 && has2) {
        K.isa = "avx2";
        K.dot = dot_avx2;
        K.axpy = axpy_avx2;
        K.bf16_row = bf16_row_avx2;
        K.f16_row = f16_row_avx2;
    }
    if (want >= 2 && has512) {
        K.isa = "avx512";
        K.dot = dot_avx512;
        K.axpy = axpy_avx512;
        K.bf16_row = bf16_row_avx512;
        K.f16_row = f16_row_avx512;
        K.i8_run = i8_run_avx512;
        K.f8_run = f8_run_avx512;
        /* VNNI: int8-weight matmuls of every batch size quantize x too (one
         * arithmetic for all n keeps batch invariance) */
        const char *vn = getenv("TOLLGATE_ENGINE_VNNI"); /* "0": the widen-and-FMA tiles (to compare) */
        K.vnni = !(vn && !strcmp(vn, "0")) && eng_cpu_vnni_probe();
        /* AVX512-BF16, or better AMX: bf16-weight matmuls of every batch
         * size (one arithmetic for all n keeps batch invariance); everything
         * else stays AVX-512 */
        if (want >= 3 && eng_cpu_bf16_probe()) {
            K.isa = "avx512bf16";
            K.bf16dp = 1;
        }
        if (want >= 4 && eng_cpu_amx_probe()) {
            K.isa = "amx";
            K.amx = 1;
            K.bf16dp = 0;
        }
    }
}

static inline void k_ready(void) { pthread_once(&k_once, k_init); }

const char *eng_cpu_isa(void) {
    k_ready();
    return K.isa;
}

float eng_cpu_dot(const float *a, const float *b, int n) {
    k_ready();
    return K.dot(a, b, n);
}

void eng_cpu_axpy(float *y, float a, const float *x, int n) {
    k_ready();
    K.axpy(y, a, x, n);
}

/* out[k] = dot_avx512(x, rows[k]) for nr rows of stride ldr, four rows at a
 * time so that x is loaded once per four (the same sums in the same order as
 * dot_avx512: the same values) */
__attribute__((target("avx512f"))) static void dot_rows_avx512(const float *x, const float *rows, size_t ldr, int nr,
                                                              int n, float *out) {
    int k = 0;
    for (; k + 4 <= nr; k += 4) {
        const float *r0 = rows + (size_t)k * ldr, *r1 = r0 + ldr, *r2 = r1 + ldr, *r3 = r2 + ldr;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0;
        int i = 0;
        for (; i + 32 <= n; i += 32) {
            __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
            a0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r0 + i), a0), a1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r0 + i + 16), a1);
            b0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r1 + i), b0), b1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r1 + i + 16), b1);
            c0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r2 + i), c0), c1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r2 + i + 16), c1);
            d0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r3 + i), d0), d1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r3 + i + 16), d1);
        }
        if (i < n) { /* dot_avx512's tail on each row */
            for (int q = 0; q < 4; q++) {
                const float *r = rows + (size_t)(k + q) * ldr;
                __m512 *s0 = q == 0 ? &a0 : q == 1 ? &b0 : q == 2 ? &c0 : &d0;
                __m512 *s1 = q == 0 ? &a1 : q == 1 ? &b1 : q == 2 ? &c1 : &d1;
                int j = i;
                for (; j + 16 <= n; j += 16) *s0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(r + j), *s0);
                if (j < n) {
                    __mmask16 m = (__mmask16)((1u << (n - j)) - 1);
                    *s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + j), _mm512_maskz_loadu_ps(m, r + j), *s1);
                }
            }
        }
        out[k] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        out[k + 1] = _mm512_reduce_add_ps(_mm512_add_ps(b0, b1));
        out[k + 2] = _mm512_reduce_add_ps(_mm512_add_ps(c0, c1));
        out[k + 3] = _mm512_reduce_add_ps(_mm512_add_ps(d0, d1));
    }
    for (; k < nr; k++) out[k] = dot_avx512(x, rows + (size_t)k * ldr, n);
}

/* e^x for 16 floats (softmax weights, SwiGLU): x = n ln2 + r, |r| <= ln2/2,
 * e^r by its Taylor polynomial to r^7 (relative error < 2e-8 before
 * rounding, ~1 ulp after), scaled by 2^n; below -103 the result is 0, above
 * ~88.7 +inf (the scaling overflows) */
__attribute__((target("avx512f"))) static inline __m512 exp512(__m512 x) {
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-103.0f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-103.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x); /* ln2 in two parts */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
}

__attribute__((target("avx512f"))) static void exp_shift_avx512(float *s, int n, float m) {
    __m512 vm = _mm512_set1_ps(m);
    for (int k = 0; k < n; k += 16) {
        __mmask16 mk = n - k >= 16 ? 0xffff : (__mmask16)((1u << (n - k)) - 1);
        _mm512_mask_storeu_ps(s + k, mk, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + k), vm)));
    }
}

void eng_cpu_exp_shift(float *s, int n, float m) {
    k_ready();
    if (K.dot == dot_avx512) {
        exp_shift_avx512(s, n, m);
        return;
    }
    for (int k = 0; k < n; k++) s[k] = expf(s[k] - m);
}

/* g[i] = silu(g[i]) * u[i] = g / (1 + e^-g) * u, 16 at a time: e^-g by
 * exp512 (+inf above ~88.7 through the scaling, as expf: silu goes to -0; a
 * NaN g stays NaN), the division exact */
__attribute__((target("avx512f"))) static void swiglu_avx512(float *g, const float *u, size_t n) {
    __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 mk = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(mk, g + i), e = _mm512_sub_ps(_mm512_setzero_ps(), x);
        e = exp512(e);
        __m512 y = _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(mk, u + i));
        _mm512_mask_storeu_ps(g + i, mk, y);
    }
}

void eng_cpu_swiglu(float *g, const float *u, size_t n) {
    k_ready();
    if (K.dot == dot_avx512) {
        swiglu_avx512(g, u, n);
        return;
    }
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void eng_cpu_dot_rows(const float *x, const float *rows, size_t ldr, int nr, int n, float *out) {
    k_ready();
    if (K.dot == dot_avx512) {
        dot_rows_avx512(x, rows, ldr, nr, n, out);
        return;
    }
    for (int k = 0; k < nr; k++) out[k] = K.dot(x, rows + (size_t)k * ldr, n);
}

/* Attention over one tile of cache rows for several heads at once: each
 * row (and each head's vector) is loaded once per block of heads (rows)
 * instead of once per head.  Every output element is still the single-head
 * kernel's sequence of operations (dot_avx512's two accumulators and
 * reduction; axpy_rows_avx512's fmadds in row order), so the values are the
 * same bit for bit; shapes the blocks do not cover take the single-head path. */

/* The blocks' inner steps, shared by the fp32 rows here and the bf16 rows
 * read in place below.  dot4x2: vectors v[0..3] at column i against two rows
 * (columns i..i+15, i+16..i+31 of each: p0 p1 and p2 p3) into dot_avx512's
 * two sums per pair (acc[q][0..1]: row 0, acc[q][2..3]: row 1); dot4x2_out:
 * their reductions into out[q * ldo + k], out[q * ldo + k + 1].  axpy4x4: a
 * row's 64 columns r0..r3 times a[q * lda + d] into acc[q][0..3]. */
static inline __attribute__((always_inline, target("avx512f"))) void dot4x2(__m512 acc[4][4], const float *const v[4],
                                                                           int64_t i, __m512 p0, __m512 p1,
                                                                           __m512 p2, __m512 p3) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        __m512 x0 = _mm512_loadu_ps(v[q] + i), x1 = _mm512_loadu_ps(v[q] + i + 16);
        acc[q][0] = _mm512_fmadd_ps(x0, p0, acc[q][0]);
        acc[q][1] = _mm512_fmadd_ps(x1, p1, acc[q][1]);
        acc[q][2] = _mm512_fmadd_ps(x0, p2, acc[q][2]);
        acc[q][3] = _mm512_fmadd_ps(x1, p3, acc[q][3]);
    }
}

static inline __attribute__((always_inline, target("avx512f"))) void dot4x2_out(__m512 acc[4][4], float *out,
                                                                               size_t ldo, int k) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        out[q * ldo + k] = _mm512_reduce_add_ps(_mm512_add_ps(acc[q][0], acc[q][1]));
        out[q * ldo + k + 1] = _mm512_reduce_add_ps(_mm512_add_ps(acc[q][2], acc[q][3]));
    }
}

static inline __attribute__((always_inline, target("avx512f"))) void axpy4x4(__m512 acc[4][4], const float *a,
                                                                            size_t lda, int d, __m512 r0, __m512 r1,
                                                                            __m512 r2, __m512 r3) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        __m512 va = _mm512_set1_ps(a[q * lda + d]);
        acc[q][0] = _mm512_fmadd_ps(va, r0, acc[q][0]);
        acc[q][1] = _mm512_fmadd_ps(va, r1, acc[q][1]);
        acc[q][2] = _mm512_fmadd_ps(va, r2, acc[q][2]);
        acc[q][3] = _mm512_fmadd_ps(va, r3, acc[q][3]);
    }
}

/* y[h * ldy + e] += a[h * lda + d] * rows[d * ldr + e], d in order: 4 heads x 64 columns in registers */
__attribute__((target("avx512f"))) static void axpy_rows_multi_avx512(float *y, size_t ldy, const float *a, size_t lda,
                                                                     int nh, const float *rows, size_t ldr, int nr,
                                                                     int n) {
    int h = 0;
    if (n % 64 == 0)
        for (; h + 4 <= nh; h += 4)
            for (int e = 0; e < n; e += 64) {
                __m512 acc[4][4];
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++) acc[q][v] = _mm512_loadu_ps(y + (h + q) * ldy + e + 16 * v);
                for (int d = 0; d < nr; d++) {
                    const float *r = rows + (size_t)d * ldr + e;
                    axpy4x4(acc, a + h * lda, lda, d, _mm512_loadu_ps(r), _mm512_loadu_ps(r + 16),
                            _mm512_loadu_ps(r + 32), _mm512_loadu_ps(r + 48));
                }
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++) _mm512_storeu_ps(y + (h + q) * ldy + e + 16 * v, acc[q][v]);
            }
    for (; h < nh; h++) axpy_rows_avx512(y + h * ldy, a + h * lda, rows, ldr, nr, n);
}


void eng_cpu_axpy_rows_multi(float *y, size_t ldy, const float *a, size_t lda, int nh, const float *rows, size_t ldr,
                             int nr, int n) {
    k_ready();
    if (K.axpy == axpy_avx512) {
        axpy_rows_multi_avx512(y, ldy, a, lda, nh, rows, ldr, nr, n);
        return;
    }
    for (int h = 0; h < nh; h++) eng_cpu_axpy_rows(y + h * ldy, a + h * lda, rows, ldr, nr, n);
}

/* Attention over one tile of cache rows for up to 16 heads at once, head h
 * in lane h (eng_cpu.h).  The scores take one fma per row and column with
 * the row's element broadcast, so the 16 heads' sums of a row build up in one
 * register with no horizontal reduction (the one-head dot products spent as
 * long reducing as multiplying, and reloaded each head's vector per pair of
 * rows); the running softmax then works on all heads in each instruction.
 * Rows past nr repeat row 0 and are dropped (score -inf, weight 0). */
__attribute__((target("avx512f"))) static void attn_tile16_avx512(const float *qT, int nh, int n, int c, float scale,
                                                                 const float *rows, size_t ldr, int nr, float *part,
                                                                 size_t ldp, float *pbuf, const char *next,
                                                                 size_t next_bytes) {
    __m512 S[16];
    for (int k0 = 0; k0 < 16; k0 += 8) { /* 8 rows a pass: their pointers stay in registers */
        const float *r[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) r[k] = rows + (k0 + k < nr ? (size_t)(k0 + k) * ldr : 0);
        __m512 a[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) a[k] = _mm512_setzero_ps();
        for (int d = 0; d < n; d++) {
            /* into L2: the tile, the queries and the partials already fill L1 (a 75 MB cache
             * streamed at ~240 ns a row into L2, ~275 into L1; median of 8 alternated runs) */
            if (64 * (size_t)d < next_bytes) _mm_prefetch(next + 64 * (size_t)d, _MM_HINT_T1);
            __m512 q = _mm512_loadu_ps(qT + (size_t)16 * d);
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) a[k] = _mm512_fmadd_ps(_mm512_set1_ps(r[k][d]), q, a[k]);
        }
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) S[k0 + k] = a[k];
        next += 64 * (size_t)n, next_bytes = next_bytes > 64 * (size_t)n ? next_bytes - 64 * (size_t)n : 0;
        if (nr <= 8) {
#pragma GCC unroll 8
            for (int k = 8; k < 16; k++) S[k] = _mm512_setzero_ps();
            break;
        }
    }
    __m512 vs = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY), mx = ninf, zero = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) {
        S[k] = k < nr ? _mm512_mul_ps(S[k], vs) : ninf;
        mx = _mm512_max_ps(mx, S[k]);
    }
    __mmask16 hm = nh >= 16 ? 0xffff : (__mmask16)((1u << nh) - 1);
    __m512i at = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                    _mm512_set1_epi32((int)ldp));
    __m512 m_old = _mm512_mask_i32gather_ps(ninf, hm, at, part + c, 4);
    __m512 l_old = _mm512_mask_i32gather_ps(zero, hm, at, part + c + 1, 4);
    __m512 m_new = _mm512_max_ps(m_old, mx), lsum = zero;
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) { /* e^-inf: 0 (exp512 below -103), the rows past nr */
        S[k] = exp512(_mm512_sub_ps(S[k], m_new));
        lsum = _mm512_add_ps(lsum, S[k]);
    }
    __m512 corr = exp512(_mm512_sub_ps(m_old, m_new)); /* 1 where the max held, 0 from -inf */
    _mm512_mask_i32scatter_ps(part + c, hm, at, m_new, 4);
    _mm512_mask_i32scatter_ps(part + c + 1, hm, at, _mm512_fmadd_ps(l_old, corr, lsum), 4);
    float cf[16];
    _mm512_storeu_ps(cf, corr);
    for (unsigned rs = _mm512_mask_cmp_ps_mask(hm, corr, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ); rs; rs &= rs - 1) {
        int h = __builtin_ctz(rs);
        float *o = part + (size_t)h * ldp;
        __m512 f = _mm512_set1_ps(cf[h]);
        for (int e = 0; e < c; e += 16) {
            __mmask16 me = c - e >= 16 ? 0xffff : (__mmask16)((1u << (c - e)) - 1);
            _mm512_mask_storeu_ps(o + e, me, _mm512_mul_ps(_mm512_maskz_loadu_ps(me, o + e), f));
        }
    }
    /* the weights per head (pbuf [h][k]), then o_h += p_hk row_k in row order */
    __m512i P[16];
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) P[k] = _mm512_castps_si512(S[k]);
    eng_transpose16_epi32(P);
#pragma GCC unroll 16
    for (int h = 0; h < 16; h++) _mm512_storeu_si512(pbuf + 16 * h, P[h]);
    axpy_rows_multi_avx512(part, ldp, pbuf, 16, nh, rows, ldr, nr, c);
}

static void attn_tile16_plain(const float *qT, int nh, int n, int c, float scale, const float *rows, size_t ldr,
                              int nr, float *part, size_t ldp, float *pbuf, const char *next, size_t next_bytes) {
    for (int h = 0; h < nh; h++) {
        float *o = part + (size_t)h * ldp, *p = pbuf + 16 * h, mx = -INFINITY;
        for (int k = 0; k < nr; k++) {
            float acc = 0;
            for (int d = 0; d < n; d++) acc = fmaf(rows[(size_t)k * ldr + d], qT[16 * d + h], acc);
            p[k] = acc * scale;
            mx = p[k] > mx ? p[k] : mx;
        }
        float m_new = mx > o[c] ? mx : o[c], corr = expf(o[c] - m_new), lsum = 0;
        for (int k = 0; k < nr; k++) lsum += p[k] = expf(p[k] - m_new);
        if (corr != 1.0f)
            for (int e = 0; e < c; e++) o[e] *= corr;
        o[c] = m_new;
        o[c + 1] = fmaf(o[c + 1], corr, lsum);
    }
    eng_cpu_axpy_rows_multi(part, ldp, pbuf, 16, nh, rows, ldr, nr, c);
}

void eng_cpu_attn_tile16(const float *qT, int nh, int n, int c, float scale, const float *rows, size_t ldr, int nr,
                         float *part, size_t ldp, float *pbuf, const void *next, size_t next_bytes) {
    k_ready();
    if (K.dot == dot_avx512) attn_tile16_avx512(qT, nh, n, c, scale, rows, ldr, nr, part, ldp, pbuf, next, next_bytes);
    else attn_tile16_plain(qT, nh, n, c, scale, rows, ldr, nr, part, ldp, pbuf, next, next_bytes);
}

/* row r of re-laid bf16 weights (AMX tiles or T16 groups): its first 32
 * columns; *step: elements to its next 32 */
static inline const uint16_t *w_row_at(const eng_w_t *w, int64_t r, int64_t *step) {
    return w->layout == ENG_W_T16 ? eng_cpu_bf16_t16_row_at(w->data, w->cols, r, step)
                                  : eng_cpu_amx_row_at(w->data, w->rows, w->cols, r, step);
}

/* 32 bf16 -> two vectors of 16 floats (exact) */
static inline __attribute__((always_inline, target("avx512f,avx512bw"))) void bf16x32(const uint16_t *p, __m512 *lo,
                                                                                      __m512 *hi) {
    __m512i v = _mm512_loadu_si512(p);
    *lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)), 16));
    *hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(v, 1)), 16));
}

/* eng_cpu_w_axpy_rows on tiled bf16, C % 32 == 0: axpy_rows_avx512's fmadds, the rows read in place */
__attribute__((target("avx512f,avx512bw"))) static void w_axpy_rows_tiled(const eng_w_t *w, int64_t r0, int nr,
                                                                         const float *a, float *y) {
    int64_t C = w->cols;
    for (int64_t k0 = 0; k0 < C; k0 += 256) {
        int nb = (int)((C - k0 < 256 ? C - k0 : 256) / 32); /* 32-column blocks in this pass */
        __m512 acc[16];
        for (int v = 0; v < 16; v++)
            if (v < 2 * nb) acc[v] = _mm512_loadu_ps(y + k0 + 16 * v);
        for (int d = 0; d < nr; d++) {
            int64_t step;
            const uint16_t *p = w_row_at(w, r0 + d, &step) + (k0 / 32) * step;
            __m512 va = _mm512_set1_ps(a[d]);
            for (int b = 0; b < 8; b++)
                if (b < nb) {
                    __m512 lo, hi;
                    bf16x32(p + b * step, &lo, &hi);
                    acc[2 * b] = _mm512_fmadd_ps(va, lo, acc[2 * b]);
                    acc[2 * b + 1] = _mm512_fmadd_ps(va, hi, acc[2 * b + 1]);
                }
        }
        for (int v = 0; v < 16; v++)
            if (v < 2 * nb) _mm512_storeu_ps(y + k0 + 16 * v, acc[v]);
    }
}

/* eng_cpu_w_dot_rows on tiled bf16, C % 32 == 0: dot_avx512's two sums (even and odd 16-column
 * halves of each 32), the rows read in place */
__attribute__((target("avx512f,avx512bw"))) static void w_dot_rows_tiled(const eng_w_t *w, int64_t r0, int nr,
                                                                        const float *x, float *out) {
    int64_t C = w->cols;
    for (int d = 0; d < nr; d++) {
        int64_t step;
        const uint16_t *p = w_row_at(w, r0 + d, &step);
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        for (int64_t k = 0; k < C; k += 32, p += step) {
            __m512 lo, hi;
            bf16x32(p, &lo, &hi);
            s0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + k), s0);
            s1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + k + 16), s1);
        }
        out[d] = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    }
}

/* The two above for nt tokens at once (attention's per-head projections over
 * a prefill): each row is read and widened once per 4 tokens.  Per output
 * element the same fmadds in the same order as the one-token forms, so the
 * same values; fewer than 4 tokens left take the one-token forms. */
__attribute__((target("avx512f,avx512bw"))) static void w_axpy_rows_tiled_multi(const eng_w_t *w, int64_t r0, int nr,
                                                                               const float *a, size_t lda, int nt,
                                                                               float *y, size_t ldy) {
    int64_t C = w->cols, step[256]; /* a row's step: its 64-row group's (the last group may be narrower) */
    int t = 0;
    if (C % 64 == 0 && nr <= 256) {
        const uint16_t *row[256];
        for (int d = 0; d < nr; d++) row[d] = w_row_at(w, r0 + d, &step[d]);
        for (; t + 4 <= nt; t += 4)
            for (int64_t k0 = 0; k0 < C; k0 += 64) {
                __m512 acc[4][4];
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++) acc[q][v] = _mm512_loadu_ps(y + (t + q) * ldy + k0 + 16 * v);
                int64_t kb = k0 / 32;
                for (int d = 0; d < nr; d++) {
                    __m512 w0, w1, w2, w3;
                    bf16x32(row[d] + kb * step[d], &w0, &w1);
                    bf16x32(row[d] + (kb + 1) * step[d], &w2, &w3);
                    axpy4x4(acc, a + t * lda, lda, d, w0, w1, w2, w3);
                }
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++)
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++) _mm512_storeu_ps(y + (t + q) * ldy + k0 + 16 * v, acc[q][v]);
            }
    }
    for (; t < nt; t++) w_axpy_rows_tiled(w, r0, nr, a + t * lda, y + t * ldy);
}

__attribute__((target("avx512f,avx512bw"))) static void w_dot_rows_tiled_multi(const eng_w_t *w, int64_t r0, int nr,
                                                                              const float *x, size_t ldx, int nt,
                                                                              float *out, size_t ldo) {
    int64_t C = w->cols;
    int t = 0;
    for (; t + 4 <= nt; t += 4) {
        const float *xt[4] = {x + t * ldx, x + (t + 1) * ldx, x + (t + 2) * ldx, x + (t + 3) * ldx};
        int d = 0;
        for (; d + 2 <= nr; d += 2) {
            int64_t s0, s1; /* the two rows' steps (they may be in different 64-row groups) */
            const uint16_t *p0 = w_row_at(w, r0 + d, &s0);
            const uint16_t *p1 = w_row_at(w, r0 + d + 1, &s1);
            __m512 acc[4][4];
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = _mm512_setzero_ps();
            for (int64_t k = 0; k < C; k += 32, p0 += s0, p1 += s1) {
                __m512 lo0, hi0, lo1, hi1;
                bf16x32(p0, &lo0, &hi0);
                bf16x32(p1, &lo1, &hi1);
                dot4x2(acc, xt, k, lo0, hi0, lo1, hi1);
            }
            dot4x2_out(acc, out + t * ldo, ldo, d);
        }
        if (d < nr)
            for (int q = 0; q < 4; q++) w_dot_rows_tiled(w, r0 + d, nr - d, xt[q], out + (t + q) * ldo + d);
    }
    for (; t < nt; t++) w_dot_rows_tiled(w, r0, nr, x + t * ldx, out + t * ldo);
}

static int w_in_place(const eng_w_t *w) {
    return w->dt == ENG_DT_BF16 && (w->layout == ENG_W_AMX || w->layout == ENG_W_T16) && w->cols % 32 == 0 &&
           K.axpy == axpy_avx512;
}

void eng_cpu_w_axpy_rows(const eng_w_t *w, int64_t r0, int nr, const float *a, float *y, float *buf) {
    k_ready();
    if (w_in_place(w)) {
        w_axpy_rows_tiled(w, r0, nr, a, y);
        return;
    }
    for (int d = 0; d < nr; d++) {
        eng_cpu_row_f32(w, r0 + d, buf);
        eng_cpu_axpy_rows(y, a + d, buf, w->cols, 1, (int)w->cols);
    }
}

void eng_cpu_w_dot_rows(const eng_w_t *w, int64_t r0, int nr, const float *x, float *out, float *buf) {
    k_ready();
    if (w_in_place(w)) {
        w_dot_rows_tiled(w, r0, nr, x, out);
        return;
    }
    for (int d = 0; d < nr; d++) {
        eng_cpu_row_f32(w, r0 + d, buf);
        out[d] = K.dot(buf, x, (int)w->cols);
    }
}

void eng_cpu_w_axpy_rows_multi(const eng_w_t *w, int64_t r0, int nr, const float *a, size_t lda, int nt, float *y,
                               size_t ldy, float *buf) {
    k_ready();
    if (w_in_place(w)) {
        w_axpy_rows_tiled_multi(w, r0, nr, a, lda, nt, y, ldy);
        return;
    }
    for (int t = 0; t < nt; t++) eng_cpu_w_axpy_rows(w, r0, nr, a + t * lda, y + t * ldy, buf);
}

void eng_cpu_w_dot_rows_multi(const eng_w_t *w, int64_t r0, int nr, const float *x, size_t ldx, int nt, float *out,
                              size_t ldo, float *buf) {
    k_ready();
    if (w_in_place(w)) {
        w_dot_rows_tiled_multi(w, r0, nr, x, ldx, nt, out, ldo);
        return;
    }
    for (int t = 0; t < nt; t++) eng_cpu_w_dot_rows(w, r0, nr, x + t * ldx, out + t * ldo, buf);
}

void eng_cpu_axpy_rows(float *y, const float *a, const float *rows, size_t ldr, int nr, int n) {
    k_ready();
    if (K.axpy == axpy_avx512) {
        axpy_rows_avx512(y, a, rows, ldr, nr, n);
        return;
    }
    for (int d = 0; d < nr; d++) K.axpy(y, a[d], rows + (size_t)d * ldr, n);
}

void eng_cpu_row_f32(const eng_w_t *w, int64_t r, float *out) {
    k_ready();
    int64_t C = w->cols;
    switch (w->dt) {
    case ENG_DT_F32:
        memcpy(out, (const float *)w->data + r * C, C * sizeof(float));
        break;
    case ENG_DT_BF16:
        if (w->layout != ENG_W_ROWS) { /* 32 columns at a time out of the tiles or groups */
            int64_t step;
            const uint16_t *p = w_row_at(w, r, &step);
            for (int64_t kb = 0; kb * 32 < C; kb++, p += step)
                K.bf16_row(p, out + kb * 32, C - kb * 32 < 32 ? C - kb * 32 : 32);
        }
        else
            K.bf16_row((const uint16_t *)w->data + r * C, out, C);
        break;
    case ENG_DT_F16:
        K.f16_row((const uint16_t *)w->data + r * C, out, C);
        break;
    case ENG_DT_F8_E4M3: {
        const uint8_t *s = (const uint8_t *)w->data + r * C;
        const float *sc = w->scale + (r / 128) * w->scale_cols;
        for (int64_t c0 = 0; c0 < C; c0 += 128) K.f8_run(s + c0, out + c0, C - c0 < 128 ? C - c0 : 128, sc[c0 / 128]);
        break;
    }
    case ENG_DT_I8: {
        const int8_t *s = (const int8_t *)w->data + r * C;
        const float *sc = w->scale + r * w->scale_cols;
        for (int64_t c0 = 0; c0 < C; c0 += w->qblk)
            K.i8_run(s + c0, out + c0, C - c0 < w->qblk ? C - c0 : w->qblk, sc[c0 / w->qblk]);
        break;
    }
    default:
        memset(out, 0, C * sizeof(float));
    }
}

/* ---- matmul tiles --------------------------------------------------------------
 * out[t][r] = W[r] . X[t] for nr <= 4 rows and nt <= TN tokens.  Every dot
 * product uses one vector accumulator over the columns in order (then the
 * masked or scalar tail, then a horizontal sum), whatever the tile's shape,
 * so a token's results never depend on its neighbours in the batch. */

#define TILE_R 4
#ifndef PF_DIST
#define PF_DIST 512       /* bytes ahead in the next tile's rows */
#define PF_HINT _MM_HINT_T1 /* into L2: 20% faster decode than into L1 (T0) here */
#endif

static inline __attribute__((always_inline, target("avx512f"))) __m512 ld_w512(const void *w, int bf16, int64_t k) {
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k))), 16));
    return _mm512_loadu_ps((const float *)w + k);
}

static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl"))) __m512 ld_w512m(const void *w, int bf16, int64_t k,
                                                                                 __mmask16 m) {
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)w + k)), 16));
    return _mm512_maskz_loadu_ps(m, (const float *)w + k);
}

static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl"))) void
tile512(const void *W, int bf16, int64_t ldw, const float *X, int64_t ldx, int nr, int nt, int C, float *out,
        int64_t ldo, int pfr) {
    __m512 acc[TILE_R][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[i][t] = _mm512_setzero_ps();
    size_t es = bf16 ? 2 : 4;
    int k = 0;
    for (; k + 16 <= C; k += 16) {
        __m512 w[TILE_R], x[4];
        /* the next tile's rows (the next nr rows, pfr of them this call's):
         * rows are a page apart, beyond the hardware prefetcher */
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++) if (i < pfr) _mm_prefetch((const char *)W + (i + nr) * ldw * es + k * es + PF_DIST, PF_HINT);
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++) w[i] = ld_w512((const char *)W + i * ldw * es, bf16, k);
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) x[t] = _mm512_loadu_ps(X + t * ldx + k);
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[i][t] = _mm512_fmadd_ps(w[i], x[t], acc[i][t]);
    }
    if (k < C) {
        __mmask16 m = (__mmask16)((1u << (C - k)) - 1);
        __m512 w[TILE_R], x[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++) w[i] = ld_w512m((const char *)W + i * ldw * es, bf16, k, m);
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) x[t] = _mm512_maskz_loadu_ps(m, X + t * ldx + k);
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[i][t] = _mm512_fmadd_ps(w[i], x[t], acc[i][t]);
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) out[t * ldo + i] = _mm512_reduce_add_ps(acc[i][t]);
}

#define TILE_CASES(F, ...)                                                                         \
    switch (nr * 8 + nt) {                                                                         \
    case 8 + 1: F(__VA_ARGS__, 1, 1); break;                                                       \
    case 8 + 2: F(__VA_ARGS__, 1, 2); break;                                                       \
    case 8 + 3: F(__VA_ARGS__, 1, 3); break;                                                       \
    case 8 + 4: F(__VA_ARGS__, 1, 4); break;                                                       \
    case 16 + 1: F(__VA_ARGS__, 2, 1); break;                                                      \
    case 16 + 2: F(__VA_ARGS__, 2, 2); break;                                                      \
    case 16 + 3: F(__VA_ARGS__, 2, 3); break;                                                      \
    case 16 + 4: F(__VA_ARGS__, 2, 4); break;                                                      \
    case 24 + 1: F(__VA_ARGS__, 3, 1); break;                                                      \
    case 24 + 2: F(__VA_ARGS__, 3, 2); break;                                                      \
    case 24 + 3: F(__VA_ARGS__, 3, 3); break;                                                      \
    case 24 + 4: F(__VA_ARGS__, 3, 4); break;                                                      \
    case 32 + 1: F(__VA_ARGS__, 4, 1); break;                                                      \
    case 32 + 2: F(__VA_ARGS__, 4, 2); break;                                                      \
    case 32 + 3: F(__VA_ARGS__, 4, 3); break;                                                      \
    default: F(__VA_ARGS__, 4, 4); break;                                                          \
    }

#define CALL512(W, bf, ldw, X, ldx, C, out, ldo, pfr, NR, NT) tile512(W, bf, ldw, X, ldx, NR, NT, C, out, ldo, pfr)

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void tile_avx512(const void *W, int bf16, int64_t ldw,
                                                                    const float *X, int64_t ldx, int nr, int nt,
                                                                    int C, float *out, int64_t ldo, int pfr) {
    if (bf16) {
        TILE_CASES(CALL512, W, 1, ldw, X, ldx, C, out, ldo, pfr)
    } else {
        TILE_CASES(CALL512, W, 0, ldw, X, ldx, C, out, ldo, pfr)
    }
}

/* int8 rows with one scale per qblk columns, widened and scaled in registers:
 * w = (float)q * scale, the same values eng_cpu_row_f32 produces, so the
 * results equal the widen-then-dot path bit for bit. */
static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl"))) __m512 ld_q512(__m128i v, int f8) {
    if (!f8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
    /* e4m3 -> f32: sign to bit 31, exponent and mantissa to bits 26..20, then
     * x 2^120 rebiases the exponent (and turns f32 denormals into e4m3
     * subnormals) exactly.  The NaN code 0x7f reads as 480 here; checkpoints
     * never hold it. */
    __m512i x = _mm512_cvtepu8_epi32(v);
    __m512i b = _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24),
                                _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x7f)), 20));
    return _mm512_mul_ps(_mm512_castsi512_ps(b), _mm512_set1_ps(0x1p120f));
}

static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl"))) void
tile512_i8(const int8_t *W, const float *S, int64_t ldw, int64_t lds, int qblk, const float *X, int64_t ldx, int nr,
           int nt, int C, float *out, int64_t ldo, int f8) {
    __m512 acc[TILE_R][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[i][t] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= C; k += 16) {
        __m512 w[TILE_R], x[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++) {
            _mm_prefetch((const char *)(W + (i + TILE_R) * ldw + k) + 256, _MM_HINT_T0);
            __m512 q = ld_q512(_mm_loadu_si128((const __m128i *)(W + i * ldw + k)), f8);
            w[i] = _mm512_mul_ps(q, _mm512_set1_ps(S[i * lds + k / qblk]));
        }
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) x[t] = _mm512_loadu_ps(X + t * ldx + k);
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[i][t] = _mm512_fmadd_ps(w[i], x[t], acc[i][t]);
    }
    if (k < C) {
        __mmask16 m = (__mmask16)((1u << (C - k)) - 1);
        __m512 w[TILE_R], x[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++) {
            __m512 q = ld_q512(_mm_maskz_loadu_epi8(m, W + i * ldw + k), f8);
            w[i] = _mm512_mul_ps(q, _mm512_set1_ps(S[i * lds + k / qblk]));
        }
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) x[t] = _mm512_maskz_loadu_ps(m, X + t * ldx + k);
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[i][t] = _mm512_fmadd_ps(w[i], x[t], acc[i][t]);
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) out[t * ldo + i] = _mm512_reduce_add_ps(acc[i][t]);
}

#define CALL512I8(W, S, ldw, lds, qb, X, ldx, C, out, ldo, f8, NR, NT) tile512_i8(W, S, ldw, lds, qb, X, ldx, NR, NT, C, out, ldo, f8)

/* int8 (f8 = 0) or fp8 e4m3 (f8 = 1) rows; row i's scale for column k is S[i * lds + k / qblk] */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void tile_q_avx512(const int8_t *W, const float *S,
                                                                               int64_t ldw, int64_t lds, int qblk,
                                                                               const float *X, int64_t ldx, int nr,
                                                                               int nt, int C, float *out, int64_t ldo,
                                                                               int f8) {
    if (f8) {
        TILE_CASES(CALL512I8, W, S, ldw, lds, qblk, X, ldx, C, out, ldo, 1)
    } else {
        TILE_CASES(CALL512I8, W, S, ldw, lds, qblk, X, ldx, C, out, ldo, 0)
    }
}

static inline __attribute__((always_inline, target("avx2,fma"))) __m256 ld_w256(const void *w, int bf16, int64_t k) {
    if (bf16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + k))), 16));
    return _mm256_loadu_ps((const float *)w + k);
}

static inline __attribute__((always_inline, target("avx2,fma"))) void
tile256(const void *W, int bf16, int64_t ldw, const float *X, int64_t ldx, int nr, int nt, int C, float *out,
        int64_t ldo) {
    __m256 acc[TILE_R][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[i][t] = _mm256_setzero_ps();
    size_t es = bf16 ? 2 : 4;
    int k = 0;
    for (; k + 8 <= C; k += 8) {
        __m256 w[TILE_R], x[4];
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++) w[i] = ld_w256((const char *)W + i * ldw * es, bf16, k);
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) x[t] = _mm256_loadu_ps(X + t * ldx + k);
        _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[i][t] = _mm256_fmadd_ps(w[i], x[t], acc[i][t]);
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < nr; i++)
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) {
            __m256 a = acc[i][t];
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_movehdup_ps(h));
            float s = _mm_cvtss_f32(h);
            const char *wr = (const char *)W + i * ldw * es;
            for (int kk = k; kk < C; kk++)
                s += (bf16 ? eng_bf16_to_f32(((const uint16_t *)wr)[kk]) : ((const float *)wr)[kk]) * X[t * ldx + kk];
            out[t * ldo + i] = s;
        }
}

#define CALL256(W, bf, ldw, X, ldx, C, out, ldo, pfr, NR, NT) tile256(W, bf, ldw, X, ldx, NR, NT, C, out, ldo)

__attribute__((target("avx2,fma"))) static void tile_avx2(const void *W, int bf16, int64_t ldw, const float *X,
                                                          int64_t ldx, int nr, int nt, int C, float *out,
                                                          int64_t ldo, int pfr) {
    if (bf16) {
        TILE_CASES(CALL256, W, 1, ldw, X, ldx, C, out, ldo, pfr)
    } else {
        TILE_CASES(CALL256, W, 0, ldw, X, ldx, C, out, ldo, pfr)
    }
}

static void tile_scalar(const void *W, int bf16, int64_t ldw, const float *X, int64_t ldx, int nr, int nt, int C,
                        float *out, int64_t ldo, int pfr) {
    float row[4096];
    for (int i = 0; i < nr; i++) {
        const float *wr;
        if (bf16 && C <= 4096) {
            bf16_row_scalar((const uint16_t *)W + i * ldw, row, C);
            wr = row;
        } else if (!bf16) {
            wr = (const float *)W + i * ldw;
        } else {
            wr = NULL;
        }
        for (int t = 0; t < nt; t++) {
            if (wr) {
                out[t * ldo + i] = dot_scalar(wr, X + t * ldx, C);
            } else { /* very long bf16 rows: convert on the fly, same order as dot_scalar */
                float acc[8] = {0}, s;
                int k = 0;
                const uint16_t *w = (const uint16_t *)W + i * ldw;
                for (; k + 8 <= C; k += 8)
                    for (int q = 0; q < 8; q++) acc[q] += eng_bf16_to_f32(w[k + q]) * X[t * ldx + k + q];
                s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
                for (; k < C; k++) s += eng_bf16_to_f32(w[k]) * X[t * ldx + k];
                out[t * ldo + i] = s;
            }
        }
    }
}

typedef void (*tile_fn)(const void *, int, int64_t, const float *, int64_t, int, int, int, float *, int64_t, int);

/* bf16 weights re-laid into tiles (the backend's upload) run on AMX; a bf16
 * weight used in place (never the model's) runs on the AVX-512 tiles */
static int uses_amx(const eng_w_t *w) { return K.amx && w->dt == ENG_DT_BF16 && w->layout == ENG_W_AMX; }

/* bf16 weights on a CPU with AVX512-BF16 and no AMX: re-laid into T16
 * groups (the backend's upload), or in place */
static int uses_bf16dp(const eng_w_t *w) {
    return K.bf16dp && w->dt == ENG_DT_BF16 && (w->layout == ENG_W_ROWS || w->layout == ENG_W_T16);
}

static int uses_vnni(const eng_w_t *w) { return K.vnni && w->dt == ENG_DT_I8 && w->qblk > 0 && w->scale; }

int eng_cpu_vnni_on(void) {
    k_ready();
    return K.vnni;
}

int eng_cpu_vnni_uses(const eng_w_t *w) {
    k_ready();
    return uses_vnni(w);
}

size_t eng_cpu_w_relaid_bytes(const eng_w_t *w) {
    k_ready();
    if (w->dt != ENG_DT_BF16 || w->layout != ENG_W_ROWS) return 0;
    size_t ne = K.amx ? eng_cpu_amx_tiled_elems(w->rows, w->cols)
                : K.bf16dp ? eng_cpu_bf16_t16_elems(w->rows, w->cols) : 0;
    return ne * sizeof(uint16_t);
}

int eng_cpu_w_relay(const eng_w_t *w, void *dst) {
    k_ready();
    if (K.amx) {
        eng_cpu_amx_tile_w(w->data, w->rows, w->cols, dst);
        return ENG_W_AMX;
    }
    eng_cpu_bf16_t16_w(w->data, w->rows, w->cols, dst);
    return ENG_W_T16;
}

size_t eng_cpu_xprep_bytes(const eng_w_t *w, int n) {
    k_ready();
    if (n <= 0) return 0;
    if (uses_vnni(w)) return eng_cpu_vnni_xbytes(n, w->cols, w->qblk);
    if (uses_bf16dp(w)) return eng_cpu_bf16_xbytes(n, w->cols);
    return uses_amx(w) ? eng_cpu_amx_xbytes(n, w->cols) : 0;
}

void eng_cpu_xprep(const eng_w_t *w, const float *x, int n, void *xp) {
    k_ready();
    if (uses_amx(w)) eng_cpu_amx_xprep(x, n, w->cols, xp);
    if (uses_vnni(w)) eng_cpu_vnni_xprep(x, NULL, n, w->cols, w->qblk, xp, 0, n);
    if (uses_bf16dp(w)) eng_cpu_bf16_xprep(x, NULL, n, w->cols, xp, 0, n);
}

void eng_cpu_xprep_groups(const eng_w_t *w, const float *x, const int32_t *rows, int n, void *xp, int g0, int g1) {
    k_ready();
    if (uses_amx(w)) eng_cpu_amx_xprep_groups(x, rows, n, w->cols, xp, g0, g1);
    if (uses_vnni(w)) eng_cpu_vnni_xprep(x, rows, n, w->cols, w->qblk, xp, 16 * g0, 16 * g1);
    if (uses_bf16dp(w)) eng_cpu_bf16_xprep(x, rows, n, w->cols, xp, 16 * g0, 16 * g1);
}

size_t eng_cpu_rowbuf_floats(const eng_w_t *w, int n) {
    k_ready();
    size_t a = 4 * (size_t)w->cols, b = uses_amx(w) ? eng_cpu_amx_scratch_floats(n, w->cols) : 0;
    return a > b ? a : b;
}

int64_t eng_cpu_chunk_rows(const eng_w_t *w, int n) {
    k_ready();
    if (uses_amx(w)) {
        /* whole 64-row groups of weight bytes: 256 KB up to 64 tokens (a small
         * batch streams them; threads taking turns at 128 KB chunks streamed
         * ~5% slower), 1 MB beyond, where each chunk's weights are read again
         * from L2 by every group of 16 tokens (one thread, 256 tokens: 4 MB
         * chunks of a 8192-column matrix 342 GFLOP/s, 1 MB 523; 64 tokens,
         * 2048 columns: 512 KB 552-635, 256 KB 713) */
        int64_t bytes = n > 64 ? (int64_t)1 << 20 : (int64_t)256 << 10;
        int64_t rows = bytes / (2 * (w->cols > 0 ? w->cols : 1)) / 64 * 64;
        return rows < 64 ? 64 : rows;
    }
    int64_t per = w->cols * (int64_t)n, rows = per > 0 ? ENG_CPU_CHUNK_COST / per : w->rows;
    rows = (rows + 15) / 16 * 16;
    return rows < 16 ? 16 : rows;
}

/* Y [n, rows r0..r1) = X [n, cols] @ W^T; rowbuf holds TILE_R decoded rows;
 * xp: x prepared by eng_cpu_xprep when eng_cpu_xprep_bytes(w, n) > 0. */
void eng_cpu_matmul_rows(const eng_w_t *w, const float *x, const void *xp, int n, float *y, int64_t r0, int64_t r1,
                         float *rowbuf) {
    k_ready();
    if (uses_amx(w)) { /* the pool's chunks start at multiples of 16 rows */
        eng_cpu_amx_rows_tiled(w->data, w->rows, w->cols, xp, n, y, w->rows, r0, r1, rowbuf);
        return;
    }
    if (uses_vnni(w)) { /* x quantized by eng_cpu_xprep */
        eng_cpu_vnni_rows(w, xp, n, y, r0, r1);
        return;
    }
    if (uses_bf16dp(w)) { /* x split into bf16 hi and lo by eng_cpu_xprep */
        eng_cpu_bf16_rows(w, xp, n, y, r0, r1);
        return;
    }
    tile_fn tile = !strcmp(K.isa, "avx512") || K.amx || K.bf16dp ? tile_avx512 : !strcmp(K.isa, "avx2") ? tile_avx2 : tile_scalar;
    int64_t C = w->cols, R = w->rows;
    int direct = w->dt == ENG_DT_F32 || (w->dt == ENG_DT_BF16 && w->layout == ENG_W_ROWS), bf16 = w->dt == ENG_DT_BF16;
    size_t es = w->dt == ENG_DT_F32 ? 4 : 2;
    int i8_direct = w->dt == ENG_DT_I8 && tile == tile_avx512;
    int f8_direct = w->dt == ENG_DT_F8_E4M3 && tile == tile_avx512 && r0 % 4 == 0;
    /* tokens in chunks whose activations stay in L2 (~384 KB); the weights
     * are re-read per chunk, which costs far less than L2 misses on x */
    int tc = (int)((384 << 10) / (C * 4)) / 4 * 4;
    if (tc < 4) tc = 4;
    for (int t0 = 0; t0 < n; t0 += tc) {
        int t1 = t0 + tc < n ? t0 + tc : n;
        /* one token: one row per tile, so the weights stream from one place
         * at a time (one thread streams ~10% more bf16 GB/s than with 4-row
         * tiles); an output's value is the same whatever the tile's height */
        int step = n == 1 && direct ? 1 : TILE_R;
        for (int64_t r = r0; r < r1; r += step) {
            int nr = r1 - r < step ? (int)(r1 - r) : step;
            /* rows of the next tile that are this call's (prefetch no further) */
            int pfr = r1 - r - nr < nr ? (int)(r1 - r - nr) : nr;
            const void *wp;
            int64_t ldw = C;
            if (i8_direct) {
                for (int t = t0; t < t1; t += 4) {
                    int nt = t1 - t < 4 ? t1 - t : 4;
                    tile_q_avx512((const int8_t *)w->data + r * C, w->scale + r * w->scale_cols, C, w->scale_cols,
                                  w->qblk, x + (int64_t)t * C, C, nr, nt, (int)C, y + (int64_t)t * R + r, R, 0);
                }
                continue;
            }
            if (f8_direct) { /* 4-row tiles start at multiples of 4, so never straddle a 128-row scale block */
                for (int t = t0; t < t1; t += 4) {
                    int nt = t1 - t < 4 ? t1 - t : 4;
                    tile_q_avx512((const int8_t *)w->data + r * C, w->scale + (r / 128) * w->scale_cols, C, 0, 128,
                                  x + (int64_t)t * C, C, nr, nt, (int)C, y + (int64_t)t * R + r, R, 1);
                }
                continue;
            }
            if (direct) {
                wp = (const char *)w->data + r * C * es;
            } else {
                for (int i = 0; i < nr; i++) eng_cpu_row_f32(w, r + i, rowbuf + i * C);
                wp = rowbuf;
            }
            for (int t = t0; t < t1; t += 4) {
                int nt = t1 - t < 4 ? t1 - t : 4;
                tile(wp, direct && bf16, ldw, x + (int64_t)t * C, C, nr, nt, (int)C, y + (int64_t)t * R + r, R, pfr);
            }
        }
    }
}
