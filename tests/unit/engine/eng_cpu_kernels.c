/* tests/unit/engine/eng_cpu_kernels.c — the matmul kernels of every ISA level
 * (engine/cpu/eng_cpu_kernels.c, eng_cpu_amx.c) against a double-precision
 * reference on random bf16 and f32 weights, ragged shapes (row, column and
 * token tails), and bit-exact invariance: a token's outputs alone equal its
 * outputs in a batch, and rows computed in two chunks equal one call.  On the
 * amx and avx512bf16 levels the bf16 weights are also re-laid into AMX tiles or
 * T16 groups (as the backend's upload does) and checked the same way (T16: the
 * same bits as in rows), and their rows read back exactly.
 *
 * The ISA is chosen once per process, so the test runs itself once per level
 * (a child per TOLLGATE_ENGINE_ISA value); a level this CPU lacks is a
 * recorded skip. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../tg_test.h"
#include "eng_cpu.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double urand(void) { /* [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / (double)(1ull << 52) - 1.0;
}

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

/* Y [n, R] through the public path, rows [0, split) and [split, R) as two
 * chunks (split 0: one call) */
static int run_mm(const eng_w_t *w, const float *x, int n, float *y, int64_t split) {
    size_t xb = eng_cpu_xprep_bytes(w, n);
    void *xp = NULL;
    float *rb = malloc(eng_cpu_rowbuf_floats(w, n) * sizeof(float));
    if (xb && !(xp = aligned_alloc(64, (xb + 63) / 64 * 64))) return -1;
    if (!rb) return -1;
    if (xp) eng_cpu_xprep(w, x, n, xp);
    if (split > 0 && split < w->rows) {
        eng_cpu_matmul_rows(w, x, xp, n, y, 0, split, rb);
        eng_cpu_matmul_rows(w, x, xp, n, y, split, w->rows, rb);
    } else {
        eng_cpu_matmul_rows(w, x, xp, n, y, 0, w->rows, rb);
    }
    free(xp);
    free(rb);
    return 0;
}

static int tiled_checked; /* shapes checked with re-laid weights (amx, avx512bf16) */

/* w against the double-precision reference Wf, then rows in two chunks and
 * each token alone against the whole batch, bit for bit */
static void check_w(const eng_w_t *w, const float *Wf, const float *x, int n) {
    int64_t R = w->rows, C = w->cols;
    float *y = malloc((size_t)n * R * sizeof(float)), *y2 = malloc((size_t)n * R * sizeof(float));
    float *y1 = malloc((size_t)R * sizeof(float));
    CHECK_EQ_I(run_mm(w, x, n, y, 0), 0);
    double worst = 0;
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < R; r++) {
            double ref = 0, mag = 0;
            for (int64_t k = 0; k < C; k++) {
                ref += (double)Wf[r * C + k] * x[(int64_t)t * C + k];
                mag += fabs((double)Wf[r * C + k] * x[(int64_t)t * C + k]);
            }
            double e = fabs(y[(int64_t)t * R + r] - ref) / (mag > 0 ? mag : 1);
            worst = e > worst ? e : worst;
        }
    /* fp32 accumulation of exact products: ~1e-7 of sum |w x|; the AMX split
     * of x into bf16 hi + lo adds ~2^-17 per product */
    if (worst >= 3e-5)
        fprintf(stderr, "%s dt %d layout %d R %lld C %lld n %d: error %.3g of sum |w x|\n", eng_cpu_isa(), w->dt,
                w->layout, (long long)R, (long long)C, n, worst);
    CHECK(worst < 3e-5);
    /* rows in two chunks (at a multiple of 16, as the pool cuts them) */
    int64_t split = R > 16 ? (R / 2 + 15) / 16 * 16 : 0;
    CHECK_EQ_I(run_mm(w, x, n, y2, split), 0);
    CHECK(!memcmp(y, y2, (size_t)n * R * sizeof(float)));
    /* each token alone gives its batched outputs bit for bit */
    int same = 1;
    for (int t = 0; t < n; t++) {
        CHECK_EQ_I(run_mm(w, x + (int64_t)t * C, 1, y1, 0), 0);
        same &= !memcmp(y1, y + (int64_t)t * R, (size_t)R * sizeof(float));
    }
    CHECK(same);
    free(y);
    free(y1);
    free(y2);
}

static void check_shape(int dt, int64_t R, int64_t C, int n) {
    eng_w_t w;
    memset(&w, 0, sizeof w);
    w.dt = dt;
    w.rows = R;
    w.cols = C;
    size_t es = dt == ENG_DT_BF16 ? 2 : 4;
    void *W = malloc((size_t)R * C * es);
    float *Wf = malloc((size_t)R * C * sizeof(float)), *x = malloc((size_t)n * C * sizeof(float));
    for (int64_t i = 0; i < R * C; i++) {
        float f = (float)urand();
        if (dt == ENG_DT_BF16) {
            ((uint16_t *)W)[i] = to_bf16(f);
            Wf[i] = eng_bf16_to_f32(((uint16_t *)W)[i]);
        } else {
            ((float *)W)[i] = Wf[i] = f;
        }
    }
    /* activations over several binades, as hidden states are */
    for (int64_t i = 0; i < (int64_t)n * C; i++) x[i] = (float)(urand() * ldexp(1.0, (int)(urand() * 6)));
    w.data = W;
    check_w(&w, Wf, x, n);
    size_t tb = eng_cpu_w_relaid_bytes(&w);
    if (tb) { /* amx, avx512bf16: the weight re-laid, as the backend's upload does */
        uint16_t *T = aligned_alloc(64, (tb + 63) / 64 * 64);
        float *row = malloc((size_t)C * sizeof(float));
        eng_w_t wt = w;
        wt.data = T;
        wt.layout = eng_cpu_w_relay(&w, T);
        CHECK_EQ_I(wt.layout, !strcmp(eng_cpu_isa(), "amx") ? ENG_W_AMX : ENG_W_T16);
        CHECK(!eng_cpu_w_relaid_bytes(&wt));
        check_w(&wt, Wf, x, n);
        /* the same bits as the weight in rows (avx512bf16 runs both) */
        if (wt.layout == ENG_W_T16) {
            float *yr = malloc((size_t)n * R * sizeof(float)), *yt = malloc((size_t)n * R * sizeof(float));
            CHECK_EQ_I(run_mm(&w, x, n, yr, 0), 0);
            CHECK_EQ_I(run_mm(&wt, x, n, yt, 0), 0);
            CHECK(!memcmp(yr, yt, (size_t)n * R * sizeof(float)));
            for (int t = 0; t < n && t < 3; t++) { /* and one token alone */
                CHECK_EQ_I(run_mm(&w, x + (int64_t)t * C, 1, yr, 0), 0);
                CHECK_EQ_I(run_mm(&wt, x + (int64_t)t * C, 1, yt, 0), 0);
                CHECK(!memcmp(yr, yt, (size_t)R * sizeof(float)));
            }
            free(yr), free(yt);
        }
        /* rows read back out of the tiles (attention's kv_b, the embedding) */
        int rows_ok = 1;
        for (int64_t r = 0; r < R; r++) {
            eng_cpu_row_f32(&wt, r, row);
            rows_ok &= !memcmp(row, Wf + r * C, (size_t)C * sizeof(float));
        }
        CHECK(rows_ok);
        /* several tokens' row projections equal one call per token, bit for bit
         * (rows from a third of the way: spans cross 64-row groups of different widths) */
        enum { NT = 6 };
        int64_t r0 = R / 3, nr = R - r0 < 70 ? R - r0 : 70;
        float *a = malloc((size_t)NT * 80 * sizeof(float)), *y1 = malloc((size_t)NT * C * sizeof(float));
        float *y2 = malloc((size_t)NT * C * sizeof(float)), *o1 = malloc((size_t)NT * 80 * sizeof(float));
        float *o2 = malloc((size_t)NT * 80 * sizeof(float)), *xs = malloc((size_t)NT * C * sizeof(float));
        for (int i = 0; i < NT * 80; i++) a[i] = (float)urand();
        for (int64_t i = 0; i < NT * C; i++) y1[i] = y2[i] = (float)urand(), xs[i] = (float)urand();
        eng_cpu_w_axpy_rows_multi(&wt, r0, (int)nr, a, 80, NT, y1, C, row);
        for (int t = 0; t < NT; t++) eng_cpu_w_axpy_rows(&wt, r0, (int)nr, a + t * 80, y2 + t * C, row);
        CHECK(!memcmp(y1, y2, (size_t)NT * C * sizeof(float)));
        eng_cpu_w_dot_rows_multi(&wt, r0, (int)nr, xs, C, NT, o1, 80, row);
        for (int t = 0; t < NT; t++) eng_cpu_w_dot_rows(&wt, r0, (int)nr, xs + t * C, o2 + t * 80, row);
        int dots_ok = 1;
        for (int t = 0; t < NT; t++) dots_ok &= !memcmp(o1 + t * 80, o2 + t * 80, (size_t)nr * sizeof(float));
        CHECK(dots_ok);
        free(a), free(y1), free(y2), free(o1), free(o2), free(xs);
        free(row);
        free(T);
        tiled_checked++;
    }
    free(W);
    free(Wf);
    free(x);
}

static void test_matmul(void) {
    static const struct {
        int64_t R, C;
        int n;
    } shapes[] = {{1, 1, 1},    {5, 31, 3},    {17, 33, 17},   {70, 100, 5},  {64, 257, 40},
                  {33, 2053, 1}, {130, 600, 33}, {16, 4096, 16}, {200, 64, 70}, {96, 2048, 2},
                  {40, 4200, 20}, {70, 2100, 18}, {37, 70, 2}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        check_shape(ENG_DT_BF16, shapes[i].R, shapes[i].C, shapes[i].n);
        check_shape(ENG_DT_F32, shapes[i].R, shapes[i].C, shapes[i].n);
    }
    /* the amx and avx512bf16 levels re-lay every bf16 weight; no other level does */
    int relays = !strcmp(eng_cpu_isa(), "amx") || !strcmp(eng_cpu_isa(), "avx512bf16");
    CHECK_EQ_I(tiled_checked, relays ? (int)(sizeof shapes / sizeof shapes[0]) : 0);
}

static const char *isa_want;

static void test_isa(void) {
    CHECK_EQ_S(eng_cpu_isa(), isa_want);
    printf("kernels on %s\n", eng_cpu_isa());
}

/* eng_cpu_attn_tile16 against the running softmax in double precision, on
 * full and partial tiles and head groups, a first tile (m = -inf) and later
 * ones (the max moves for some heads, not for others); and a head's numbers
 * are its lane's alone: heads 0..15 in one call equal heads 0..6 and 7..15 in
 * two, bit for bit. */
static void test_attn_tile(void) {
    enum { LD = 300, NRMAX = 16, CMAX = 256 };
    static float rows[NRMAX * LD], qT[LD * 16], qT2[LD * 16], part[16 * (CMAX + 2)], part2[16 * (CMAX + 2)], pbuf[256];
    static double ref[16 * (CMAX + 2)];
    int shapes[][3] = {{288, 256, 16}, {288, 256, 7}, {288, 256, 1}, {33, 20, 16}, {64, 64, 5}, {300, 256, 16}};
    int nhs[] = {16, 5, 1};
    double worst = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t hi = 0; hi < sizeof nhs / sizeof nhs[0]; hi++)
            for (int later = 0; later < 2; later++) {
                int n = shapes[si][0], c = shapes[si][1], nr = shapes[si][2], nh = nhs[hi];
                size_t ldp = c + 2;
                float scale = 0.3f;
                for (int i = 0; i < NRMAX * LD; i++) rows[i] = (float)urand();
                for (int i = 0; i < LD * 16; i++) qT[i] = (float)urand();
                double sc[16][NRMAX], smax[16];
                for (int h = 0; h < 16; h++) {
                    smax[h] = -INFINITY;
                    for (int k = 0; k < nr; k++) {
                        double a = 0;
                        for (int d = 0; d < n; d++) a += (double)rows[k * LD + d] * qT[16 * d + h];
                        sc[h][k] = a * scale;
                        smax[h] = sc[h][k] > smax[h] ? sc[h][k] : smax[h];
                    }
                }
                for (int h = 0; h < 16; h++) {
                    float *o = part + h * ldp;
                    for (int e = 0; e < c; e++) o[e] = later ? (float)urand() : 0.0f;
                    /* later tiles: the running max above this tile's scores for even heads (it
                     * holds), 1 below for odd ones (it moves: o and l scale by 1/e) */
                    o[c] = !later ? -INFINITY : (float)(h % 2 ? smax[h] - 1 : smax[h] + 0.5);
                    o[c + 1] = later ? 3.0f : 0.0f;
                    for (size_t e = 0; e < ldp; e++) ref[h * ldp + e] = o[e];
                }
                for (int h = 0; h < nh; h++) {
                    double *s = sc[h], mx = smax[h], *o = ref + h * ldp;
                    double m = o[c] > mx ? o[c] : mx, corr = exp(o[c] - m);
                    for (int e = 0; e < c; e++) o[e] *= corr;
                    o[c + 1] *= corr;
                    for (int k = 0; k < nr; k++) {
                        double p = exp(s[k] - m);
                        o[c + 1] += p;
                        for (int e = 0; e < c; e++) o[e] += p * rows[k * LD + e];
                    }
                    o[c] = m;
                }
                memcpy(part2, part, sizeof part);
                eng_cpu_attn_tile16(qT, nh, n, c, scale, rows, LD, nr, part, ldp, pbuf, rows, sizeof rows);
                for (int h = 0; h < 16; h++)
                    for (size_t e = 0; e < ldp; e++) {
                        double want = ref[h * ldp + e], got = part[h * ldp + e];
                        double err = fabs(got - want) / (fabs(want) > 1 ? fabs(want) : 1);
                        if (h >= nh) err = memcmp(&part[h * ldp + e], &part2[h * ldp + e], 4) ? 1 : 0; /* untouched */
                        worst = err > worst ? err : worst;
                    }
                if (nh == 16) { /* lanes 0..6 and 7..15 as two calls */
                    for (int d = 0; d < n; d++)
                        for (int l = 0; l < 16; l++) qT2[16 * d + l] = l < 9 ? qT[16 * d + 7 + l] : 0;
                    eng_cpu_attn_tile16(qT, 7, n, c, scale, rows, LD, nr, part2, ldp, pbuf, NULL, 0);
                    eng_cpu_attn_tile16(qT2, 9, n, c, scale, rows, LD, nr, part2 + 7 * ldp, ldp, pbuf, NULL, 0);
                    CHECK(!memcmp(part, part2, 16 * ldp * sizeof(float)));
                }
            }
    printf("attn_tile16: worst relative error %.2e against double\n", worst);
    CHECK(worst < 2e-5);
}

/* The row helpers give the values of the plain kernels they replace
 * (eng_cpu_dot / eng_cpu_axpy one row at a time), bit for bit, on ragged
 * lengths; eng_cpu_exp_shift stays within a few ulp of expf. */
static void test_row_helpers(void) {
    enum { NR = 7, LD = 301 };
    static float rows[NR * LD], x[LD], y1[LD], y2[LD], a[NR], out[NR];
    for (int i = 0; i < NR * LD; i++) rows[i] = (float)urand();
    for (int i = 0; i < LD; i++) x[i] = (float)urand();
    for (int i = 0; i < NR; i++) a[i] = (float)urand();
    int lens[] = {1, 15, 16, 17, 31, 32, 33, 256, 288, 300};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int n = lens[li], same = 1;
        eng_cpu_dot_rows(x, rows, LD, NR, n, out);
        for (int k = 0; k < NR; k++) same &= out[k] == eng_cpu_dot(x, rows + k * LD, n);
        CHECK(same);
        for (int i = 0; i < n; i++) y1[i] = y2[i] = (float)urand();
        eng_cpu_axpy_rows(y1, a, rows, LD, NR, n);
        for (int k = 0; k < NR; k++) eng_cpu_axpy(y2, a[k], rows + k * LD, n);
        CHECK(!memcmp(y1, y2, n * sizeof(float)));
    }
    /* the several-heads axpy equals one call per head, bit for bit, on the
     * shapes its blocks cover (n a multiple of 64, 4 heads) and on ragged
     * ones (7 heads, 5 rows, n = 33) */
    {
        enum { NH = 7, NRM = 5, LDX = 300, LDO = 9 };
        static float ys1[NH * LDX], ys2[NH * LDX], as[NH * LDO];
        for (int i = 0; i < NH * LDX; i++) ys1[i] = ys2[i] = (float)urand();
        for (int i = 0; i < NH * LDO; i++) as[i] = (float)urand();
        int ns[] = {32, 33, 64, 256, 288};
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            int n = ns[ni];
            for (int nh = 1; nh <= NH; nh += 3) { /* 1, 4, 7 */
                eng_cpu_axpy_rows_multi(ys1, LDX, as, LDO, nh, rows, LD, NRM, n);
                for (int h = 0; h < nh; h++) eng_cpu_axpy_rows(ys2 + h * LDX, as + h * LDO, rows, LD, NRM, n);
                CHECK(!memcmp(ys1, ys2, sizeof ys1));
            }
        }
    }
    static float s[1000];
    double worst = 0;
    for (int i = 0; i < 1000; i++) s[i] = i < 990 ? (float)(-90.0 * (i / 990.0)) : -(float)(i - 989) * 1e-7f;
    float m = 0.5f;
    for (int i = 0; i < 1000; i++) s[i] += m;
    static float ref[1000];
    for (int i = 0; i < 1000; i++) ref[i] = expf(s[i] - m);
    eng_cpu_exp_shift(s, 1000, m);
    for (int i = 0; i < 1000; i++) {
        double e = fabs((double)s[i] - ref[i]) / (ref[i] > 1e-30f ? ref[i] : 1e-30f);
        worst = e > worst ? e : worst;
    }
    printf("exp_shift: worst relative error %.2e against expf\n", worst);
    CHECK(worst < 5e-7);
    float big[3] = {-200.0f, 0.0f, -1e-3f};
    eng_cpu_exp_shift(big, 3, 0.0f);
    CHECK(big[0] == 0.0f && big[1] == 1.0f && fabs(big[2] - expf(-1e-3f)) < 1e-7);

    /* SwiGLU: within a few ulp of g / (1 + expf(-g)) * u over [-100, 100]
     * (both tails: e^-g overflowing and vanishing), a ragged length, and the
     * edges: silu(-inf) = -0 ... (-inf / inf is NaN in both forms), NaN stays NaN */
    enum { NS = 1003 };
    static float g[NS], u[NS], want[NS];
    for (int i = 0; i < NS; i++) {
        g[i] = (float)(-100.0 + 200.0 * i / (NS - 1));
        u[i] = (float)urand();
        want[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
    eng_cpu_swiglu(g, u, NS);
    worst = 0;
    int signs = 1;
    for (int i = 0; i < NS; i++) {
        double scale = fabs(want[i]) > 1e-30 ? fabs(want[i]) : 1e-30;
        double e = fabs((double)g[i] - want[i]) / scale;
        worst = e > worst ? e : worst;
        signs &= signbit(g[i]) == signbit(want[i]);
    }
    printf("swiglu: worst relative error %.2e against the expf form\n", worst);
    CHECK(worst < 1e-6);
    CHECK(signs);
    float eg[4] = {-1000.0f, 1000.0f, NAN, 0.0f}, eu[4] = {1, 1, 1, 1};
    eng_cpu_swiglu(eg, eu, 4);
    CHECK(eg[0] == 0.0f && signbit(eg[0]) && eg[1] == 1000.0f && isnan(eg[2]) && eg[3] == 0.0f);
}

/* the levels engine/cpu/eng_cpu_kernels.c dispatches to, best first */
static const char *levels[] = {"amx", "avx512bf16", "avx512", "avx2", "scalar"};

int main(int argc, char **argv) {
    if (argc == 2) { /* a child: one level */
        isa_want = argv[1];
        setenv("TOLLGATE_ENGINE_ISA", isa_want, 1);
        if (strcmp(eng_cpu_isa(), isa_want)) {
            char why[96];
            snprintf(why, sizeof why, "TOLLGATE_ENGINE_ISA=%s: this CPU lacks it (kernels on %s)", isa_want,
                     eng_cpu_isa());
            TG_SKIP(why);
            return 0;
        }
        test_isa();
        test_matmul();
        test_row_helpers();
        test_attn_tile();
        printf("%s (%s): %d checks, %d failed, %d skipped\n", __FILE__, isa_want, tg_test_checks, tg_test_fails,
               tg_test_skips);
        return tg_test_fails ? 1 : 0;
    }
    int failed = 0;
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        const char *lv = levels[i];
        fflush(stdout);
        pid_t p = fork();
        if (p == 0) {
            execl("/proc/self/exe", argv[0], lv, (char *)NULL);
            _exit(127);
        }
        int st = 0;
        if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "%s: level %s failed\n", __FILE__, lv);
            failed = 1;
        }
    }
    return failed;
}
