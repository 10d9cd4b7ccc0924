/* tests/unit/engine/eng_cpu_vnni.c — int8 x int8 matmuls on AVX512-VNNI
 * (engine/cpu/eng_cpu_vnni.c) against a straightforward scalar reference of
 * the same arithmetic: x quantized per block (bytes and scales equal), the
 * int32 block sums exact (checked directly where the scales are 1), the
 * outputs bit equal when the reference combines the blocks in the same order;
 * and bit-exact invariance over the batch (n = 1, 3, 16, 37, 70), row ranges
 * and the threads' preparation in groups of 16 tokens.  A CPU without VNNI is
 * a recorded skip. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tg_test.h"
#include "eng_cpu.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;

static double urand(void) { /* [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / (double)(1ull << 52) - 1.0;
}

typedef struct {
    eng_w_t w;
    int8_t *q;
    float *s;
} qw_t;

/* R x C int8 weights in [-127, 127], one scale per qblk columns of a row */
static void qw_make(qw_t *m, int64_t R, int64_t C, int qblk, int unit_scales) {
    int64_t nb = (C + qblk - 1) / qblk;
    m->q = malloc((size_t)(R * C));
    m->s = malloc((size_t)(R * nb) * sizeof(float));
    for (int64_t i = 0; i < R * C; i++) m->q[i] = (int8_t)lrint(urand() * 127);
    for (int64_t i = 0; i < R * nb; i++) m->s[i] = unit_scales ? 1.0f : (float)(0.002 + 0.001 * fabs(urand()));
    memset(&m->w, 0, sizeof m->w);
    m->w.dt = ENG_DT_I8;
    m->w.rows = R;
    m->w.cols = C;
    m->w.data = m->q;
    m->w.scale = m->s;
    m->w.scale_cols = nb;
    m->w.qblk = qblk;
}

static void qw_free(qw_t *m) {
    free(m->q);
    free(m->s);
}

/* the reference quantization of one token: sx = amax / 127 per block, u = round(x / sx) + 128 */
static void ref_quant(const float *x, int64_t C, int qblk, uint8_t *u, float *sx) {
    for (int64_t c0 = 0, b = 0; c0 < C; c0 += qblk, b++) {
        int64_t c1 = c0 + qblk < C ? c0 + qblk : C;
        float amax = 0;
        for (int64_t c = c0; c < c1; c++) amax = fmaxf(amax, fabsf(x[c]));
        float s = amax / 127.0f, inv = s > 0 ? 1.0f / s : 0;
        sx[b] = s;
        for (int64_t c = c0; c < c1; c++) {
            long q = lrintf(x[c] * inv);
            u[c] = (uint8_t)((q > 127 ? 127 : q < -127 ? -127 : q) + 128);
        }
    }
}

/* one output: exact int32 block sums of signed products, combined in block order */
static float ref_out(const qw_t *m, int64_t r, const uint8_t *u, const float *sx, int32_t *sums) {
    int64_t C = m->w.cols, nb = m->w.scale_cols;
    int qb = m->w.qblk;
    float y = 0;
    for (int64_t b = 0; b < nb; b++) {
        int32_t S = 0;
        for (int64_t c = b * qb; c < (b + 1) * qb && c < C; c++) S += (int32_t)m->q[r * C + c] * ((int32_t)u[c] - 128);
        if (sums) sums[b] = S;
        y = fmaf((float)S, m->s[r * nb + b] * sx[b], y);
    }
    return y;
}

/* Y [n, R] through the public path (eng_cpu_xprep, or its groups of 16
 * tokens when groups), rows cut at the given points (cuts[0..k), ascending) */
static int run_mm(const eng_w_t *w, const float *x, int n, float *y, const int64_t *cuts, int k, int groups) {
    size_t xb = eng_cpu_xprep_bytes(w, n);
    void *xp = xb ? aligned_alloc(64, (xb + 63) / 64 * 64) : NULL;
    float *rb = malloc(eng_cpu_rowbuf_floats(w, n) * sizeof(float));
    if ((xb && !xp) || !rb) {
        free(xp);
        free(rb);
        return -1;
    }
    if (xp && groups)
        for (int g = (n + 15) / 16 - 1; g >= 0; g--) eng_cpu_xprep_groups(w, x, NULL, n, xp, g, g + 1);
    else if (xp)
        eng_cpu_xprep(w, x, n, xp);
    int64_t r0 = 0;
    for (int i = 0; i <= k; i++) {
        int64_t r1 = i < k ? cuts[i] : w->rows;
        eng_cpu_matmul_rows(w, x, xp, n, y, r0, r1, rb);
        r0 = r1;
    }
    free(xp);
    free(rb);
    return 0;
}

/* activations over several binades; token 1's first block all zeros (scale 0) */
static float *x_make(int n, int64_t C, int qblk) {
    float *x = malloc((size_t)n * C * sizeof(float));
    for (int64_t i = 0; i < (int64_t)n * C; i++) x[i] = (float)(urand() * ldexp(1.0, (int)(urand() * 6)));
    if (n > 1)
        for (int64_t c = 0; c < qblk && c < C; c++) x[C + c] = 0;
    return x;
}

/* the quantized x the kernels prepare equals the reference's, byte for byte */
static void check_quant(const qw_t *m, const float *x, int n) {
    int64_t C = m->w.cols, nb = m->w.scale_cols;
    int qb = m->w.qblk;
    size_t xb = eng_cpu_xprep_bytes(&m->w, n);
    void *xp = aligned_alloc(64, (xb + 63) / 64 * 64);
    uint8_t *u = malloc((size_t)C);
    float *sx = malloc((size_t)nb * sizeof(float));
    eng_cpu_xprep(&m->w, x, n, xp);
    int same = 1;
    for (int t = 0; t < n; t++) {
        ref_quant(x + (int64_t)t * C, C, qb, u, sx);
        same &= !memcmp(u, eng_cpu_vnni_xq(xp, n, C, qb, t), (size_t)C);
        same &= !memcmp(sx, eng_cpu_vnni_xs(xp, n, C, qb, t), (size_t)nb * sizeof(float));
    }
    CHECK(same);
    if (n > 1) CHECK(eng_cpu_vnni_xs(xp, n, C, qb, 1)[0] == 0.0f);
    free(xp);
    free(u);
    free(sx);
}

/* the kernel's outputs equal the reference's bit for bit */
static void check_exact(int64_t R, int64_t C, int qblk, int n) {
    qw_t m;
    qw_make(&m, R, C, qblk, 0);
    float *x = x_make(n, C, qblk), *y = malloc((size_t)n * R * sizeof(float));
    int64_t nb = m.w.scale_cols;
    uint8_t *u = malloc((size_t)C);
    float *sx = malloc((size_t)nb * sizeof(float));
    CHECK(eng_cpu_vnni_uses(&m.w));
    check_quant(&m, x, n);
    CHECK_EQ_I(run_mm(&m.w, x, n, y, NULL, 0, 0), 0);
    int64_t bad = 0;
    for (int t = 0; t < n; t++) {
        ref_quant(x + (int64_t)t * C, C, qblk, u, sx);
        for (int64_t r = 0; r < R; r++) {
            float ref = ref_out(&m, r, u, sx, NULL), got = y[(int64_t)t * R + r];
            bad += memcmp(&ref, &got, sizeof ref) != 0;
        }
    }
    if (bad) fprintf(stderr, "R %lld C %lld qblk %d n %d: %lld outputs differ\n", (long long)R, (long long)C, qblk, n,
                     (long long)bad);
    CHECK_EQ_I(bad, 0);
    free(u);
    free(sx);
    free(x);
    free(y);
    qw_free(&m);
}

/* One block (C <= qblk), unit weight scales, x integers with a 127 in each
 * token: sx = 1, so y = (float)S, the exact int32 block sum (|S| < 2^24). */
static void test_block_sums(void) {
    int64_t R = 37, C = 128;
    int n = 5;
    qw_t m;
    qw_make(&m, R, C, 128, 1);
    float *x = malloc((size_t)n * C * sizeof(float)), *y = malloc((size_t)n * R * sizeof(float));
    for (int64_t i = 0; i < n * C; i++) x[i] = (float)lrint(urand() * 127);
    for (int t = 0; t < n; t++) x[t * C + (t * 7) % C] = t % 2 ? -127.0f : 127.0f;
    CHECK_EQ_I(run_mm(&m.w, x, n, y, NULL, 0, 0), 0);
    int64_t bad = 0;
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < R; r++) {
            int32_t S = 0;
            for (int64_t c = 0; c < C; c++) S += (int32_t)m.q[r * C + c] * (int32_t)x[t * C + c];
            bad += y[t * R + r] != (float)S;
        }
    CHECK_EQ_I(bad, 0);
    free(x);
    free(y);
    qw_free(&m);
}

static void test_exact(void) {
    check_exact(37, 300, 128, 7);  /* a 44-column tail block */
    check_exact(64, 896, 128, 70); /* 7 full blocks */
    check_exact(20, 40, 40, 3);    /* one block narrower than a 64-byte load */
    check_exact(33, 1000, 128, 1);
    check_exact(17, 200, 100, 2);  /* blocks not a multiple of 64 */
    check_exact(21, 130, 50, 5);   /* blocks not a multiple of 4 bytes apart: quads straddle nothing */
}

/* a token's outputs do not depend on the batch, on the row ranges or on the
 * preparation in groups */
static void test_invariance(void) {
    int64_t R = 100, C = 520;
    int N = 70, ns[] = {1, 3, 16, 37, 70};
    qw_t m;
    qw_make(&m, R, C, 128, 0);
    float *x = x_make(N, C, 128), *ya = malloc((size_t)N * R * sizeof(float)),
          *yb = malloc((size_t)N * R * sizeof(float));
    CHECK_EQ_I(run_mm(&m.w, x, N, ya, NULL, 0, 0), 0);
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        int n = ns[i];
        /* the last n tokens, so each sits at another place in its tile */
        CHECK_EQ_I(run_mm(&m.w, x + (int64_t)(N - n) * C, n, yb, NULL, 0, 0), 0);
        CHECK(!memcmp(yb, ya + (int64_t)(N - n) * R, (size_t)n * R * sizeof(float)));
    }
    static const int64_t cuts[][3] = {{16, 48, 64}, {5, 37, 99}, {1, 2, 3}};
    for (int k = 0; k < 3; k++) {
        memset(yb, 0, (size_t)N * R * sizeof(float));
        CHECK_EQ_I(run_mm(&m.w, x, N, yb, cuts[k], 3, k == 1), 0);
        CHECK(!memcmp(yb, ya, (size_t)N * R * sizeof(float)));
    }
    free(x);
    free(ya);
    free(yb);
    qw_free(&m);
}

int main(void) {
    if (!eng_cpu_vnni_on()) {
        char why[96];
        snprintf(why, sizeof why, "int8 x int8 on VNNI: off on this CPU (kernels on %s)", eng_cpu_isa());
        TG_SKIP(why);
        return 0;
    }
    test_block_sums();
    test_exact();
    test_invariance();
    printf("%s (%s): %d checks, %d failed, %d skipped\n", __FILE__, eng_cpu_isa(), tg_test_checks, tg_test_fails,
           tg_test_skips);
    return tg_test_fails ? 1 : 0;
}
