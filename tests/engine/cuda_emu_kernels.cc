/* cuda_emu_kernels.cc — CUDA kernels whose source runs on the host
 * (tests/engine/cuda_emu.h) against the CPU backend's ops, on every machine:
 * the router (k_route: V3 sigmoid + bias + groups with 64 and 256 experts, V2
 * softmax + groups, Mixtral softmax top-2; 13 tokens, so the last block has
 * idle warps), MLA absorbed attention (k_mla_qlat, k_mla_core, k_mla_out; bf16
 * and fp8 kv_b) and GQA (k_gqa) over a paged cache with shuffled blocks, a
 * prefilling and a decoding sequence; the FMA matmul kernel (k_mm: f32, bf16,
 * f16, fp8 with block scales, int8; columns a multiple of 8 and not; 1 and 5
 * tokens) and the MoE FMA path (k_moe_sort, k_moe_gather, k_moe_mm gate+up
 * with SwiGLU and down, the shared expert by k_mm_swiglu + k_mm,
 * k_moe_combine; bf16 and fp8); the per-token kernels (embed of every dtype,
 * RMSNorm strided and in place, add + RMSNorm, RoPE interleaved and half,
 * KV store, SwiGLU, gather, argmax with ties), launched as eng_cuda.cu does.  Routed ids must be equal; weights and
 * outputs within 1e-5 of their scale (only the fp32 summation order
 * differs).  The host side of the ops (pages_up, the launches) is not run
 * here: the GPU run checks it (eng_ops_test compare on cuda:0). */
#include "cuda_emu.h"

#include <type_traits>

extern "C" {
#include "eng_model_int.h"
}

#include "../../engine/cuda/eng_cuda_w.h"
#include "../../engine/cuda/eng_cuda_attn_kernel.h"
#include "../../engine/cuda/eng_cuda_route_kernel.h"
#include "../../engine/cuda/eng_cuda_mm_kernel.h"
#include "../../engine/cuda/eng_cuda_glue_kernel.h"

static int checks, fails;
static void check(int ok, const char *what) {
    checks++;
    if (!ok) {
        fails++;
        fprintf(stderr, "cuda_emu_kernels: FAIL: %s\n", what);
    }
}

static uint64_t rs = 77;
static float rnd(void) { /* [-1, 1) */
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((double)(rs >> 11) * 0x1.0p-52 - 1.0);
}

static eng_backend_t *cpu;

/* worst |a - b| / max |b| */
static double rel_err(const float *a, const float *b, size_t n) {
    double mx = 0, sc = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= mx)) mx = d; /* NaN counts */
        if (fabs(b[i]) > sc) sc = fabs(b[i]);
    }
    return mx / (sc > 0 ? sc : 1);
}

static void test_route(void) {
    struct {
        const char *name;
        int E, K, G, TG, sigmoid, norm, after, bias;
        float scale;
    } cs[] = {{"v3-64", 64, 8, 8, 4, 1, 1, 1, 1, 2.5f},
              {"v3-256", 256, 8, 8, 4, 1, 1, 1, 1, 2.5f},
              {"v2-groups", 64, 6, 8, 3, 0, 0, 0, 0, 16.0f},
              {"mixtral", 8, 2, 1, 1, 0, 1, 0, 0, 1.0f}};
    for (auto &c : cs) {
        const int T = 13;
        float *lg = (float *)malloc((size_t)T * c.E * sizeof(float)), *bias = (float *)malloc(c.E * sizeof(float));
        for (int i = 0; i < T * c.E; i++) lg[i] = rnd() * 3;
        for (int e = 0; e < c.E; e++) bias[e] = rnd() * 0.1f;
        lg[5 * c.E + 1] = lg[5 * c.E + 3] = 5; /* a tie at the top (ids 1 and 3 of token 5; biases equal too) */
        bias[1] = bias[3];
        eng_route_t r = {c.E, c.K, c.G, c.TG, c.sigmoid, c.norm, c.scale, c.after, c.bias ? bias : NULL};
        int32_t *s_cpu = (int32_t *)calloc((size_t)T * c.K, 4), *s_emu = (int32_t *)calloc((size_t)T * c.K, 4);
        float *w_cpu = (float *)calloc((size_t)T * c.K, 4), *w_emu = (float *)calloc((size_t)T * c.K, 4);
        check(cpu->ops->route(cpu, &r, lg, T, s_cpu, w_cpu) == 0, "cpu route");
        size_t smem = (size_t)RT_WARPS * (2 * c.E + c.G) * sizeof(float);
        emu_launch((T + RT_WARPS - 1) / RT_WARPS, RT_WARPS * 32, smem, [&] { k_route(r, lg, T, s_emu, w_emu); });
        char what[96];
        snprintf(what, sizeof what, "route %s: ids", c.name);
        check(!memcmp(s_cpu, s_emu, (size_t)T * c.K * 4), what);
        double e = rel_err(w_emu, w_cpu, (size_t)T * c.K);
        snprintf(what, sizeof what, "route %s: weights (error %.2e)", c.name, e);
        check(e <= 1e-5, what);
        printf("cuda_emu_kernels: route %-9s %d tokens: ids %s, weights error %.2e\n", c.name, T,
               memcmp(s_cpu, s_emu, (size_t)T * c.K * 4) ? "DIFFER" : "equal", e);
        free(lg), free(bias), free(s_cpu), free(s_emu), free(w_cpu), free(w_emu);
    }
}

/* A paged cache of NB blocks of B rows of `row` floats (shuffled block
 * order); two sequences: one prefilling 5 tokens from position 0, one
 * decoding 1 token at position 37. */
struct cache_t {
    int B = 16, NB = 8, row;
    float *k = NULL, *v = NULL;
    int32_t blk[2][4];
    eng_attn_seq_t seqs[2];
    int T = 6, maxlen = 38;
    int32_t *tab = NULL; /* pages_up's table: [T][2] (len, block-table offset), then the block tables */
};

static void cache_init(cache_t &C, int row, int has_v) {
    C.row = row;
    size_t n = (size_t)C.NB * C.B * row;
    C.k = (float *)malloc(n * sizeof(float));
    C.v = has_v ? (float *)malloc(n * sizeof(float)) : NULL;
    for (size_t i = 0; i < n; i++) {
        C.k[i] = rnd();
        if (has_v) C.v[i] = rnd();
    }
    int32_t a[2][4] = {{5, 2, 0, 0}, {7, 1, 3, 6}};
    memcpy(C.blk, a, sizeof a);
    C.seqs[0] = eng_attn_seq_t{0, 5, 0, C.blk[0], C.B, (size_t)C.B * row, C.k, C.v};
    C.seqs[1] = eng_attn_seq_t{5, 1, 37, C.blk[1], C.B, (size_t)C.B * row, C.k, C.v};
    /* as pages_up (eng_cuda_attn.cu) builds it */
    int nbl[2] = {1, 3};
    C.tab = (int32_t *)malloc((2 * C.T + 4) * sizeof(int32_t));
    int off = 2 * C.T;
    for (int i = 0; i < 2; i++) {
        const eng_attn_seq_t *s = &C.seqs[i];
        for (int k = 0; k < s->n; k++) {
            C.tab[2 * (s->tok0 + k)] = s->pos0 + k + 1;
            C.tab[2 * (s->tok0 + k) + 1] = off - 2 * C.T;
        }
        memcpy(C.tab + off, s->blocks, nbl[i] * sizeof(int32_t));
        off += nbl[i];
    }
}

static pages_t cache_pages(const cache_t &C) {
    pages_t P;
    P.tokinfo = C.tab;
    P.blocks = C.tab + 2 * C.T;
    P.k = C.k;
    P.v = C.v;
    P.B = C.B;
    P.stride = (int64_t)C.B * C.row;
    return P;
}

static void cache_free(cache_t &C) { free(C.k), free(C.v), free(C.tab); }

static void test_mla(eng_dtype_t dt) {
    const int H = 4, dn = 16, dr = 8, dv = 16, c = 32, R = H * (dn + dv);
    const float scale = 0.17f;
    cache_t C;
    cache_init(C, c + dr, 0);
    /* kv_b [R, c] in dt (bf16, or fp8 e4m3 with one 128x128 block scale) */
    eng_w_t w = {};
    w.dt = dt, w.rows = R, w.cols = c, w.name = "kv_b";
    if (dt == ENG_DT_BF16) {
        uint16_t *d = (uint16_t *)malloc((size_t)R * c * 2);
        for (int i = 0; i < R * c; i++) d[i] = (uint16_t)(__float_as_uint(rnd() * 0.5f) >> 16);
        w.data = d;
    } else {
        uint8_t *d = (uint8_t *)malloc((size_t)R * c);
        for (int i = 0; i < R * c; i++) d[i] = (uint8_t)((rs = rs * 6364136223846793005ull + 1) >> 57) & 0x77;
        float *s = (float *)malloc(sizeof(float));
        s[0] = 0.03f;
        w.data = d, w.scale = s, w.scale_cols = 1;
    }
    float *q = (float *)malloc((size_t)C.T * H * (dn + dr) * sizeof(float));
    for (int i = 0; i < C.T * H * (dn + dr); i++) q[i] = rnd();
    float *o_cpu = (float *)calloc((size_t)C.T * H * dv, 4), *o_emu = (float *)calloc((size_t)C.T * H * dv, 4);
    eng_w_t wc = w; /* the CPU's copy (its upload may re-lay the weight) */
    check(cpu->ops->upload_w(cpu, &wc) == 0, "cpu upload_w");
    check(cpu->ops->attn_mla(cpu, &wc, H, dn, dr, dv, c, scale, q, C.seqs, 2, o_cpu) == 0, "cpu attn_mla");
    float *qlat = (float *)calloc((size_t)C.T * H * c, 4), *olat = (float *)calloc((size_t)C.T * H * c, 4);
    float *sc = (float *)calloc((size_t)C.T * H * C.maxlen, 4);
    cu_w_t cw = cu_w(&w);
    pages_t P = cache_pages(C);
    int G = C.T * H;
    emu_launch(G, AT_THREADS, dn * sizeof(float), [&] { k_mla_qlat(cw, q, H, dn, dr, dv, c, qlat); });
    emu_launch(G, AT_THREADS, (c + dr) * sizeof(float),
               [&] { k_mla_core(P, q, qlat, H, dn, dr, c, scale, C.maxlen, sc, olat); });
    emu_launch(G, AT_THREADS, 0, [&] { k_mla_out(cw, olat, H, dn, dv, c, o_emu); });
    double e = rel_err(o_emu, o_cpu, (size_t)C.T * H * dv);
    char what[96];
    snprintf(what, sizeof what, "mla %s (error %.2e)", dt == ENG_DT_BF16 ? "bf16" : "fp8", e);
    check(e <= 1e-5, what);
    printf("cuda_emu_kernels: mla %-4s kv_b, a prefill of 5 and a decode at 37: error %.2e of scale\n",
           dt == ENG_DT_BF16 ? "bf16" : "fp8", e);
    free((void *)w.data), free((void *)w.scale), free(q), free(o_cpu), free(o_emu), free(qlat), free(olat), free(sc);
    cache_free(C);
}

static void test_gqa(void) {
    const int H = 4, kvh = 2, hd = 16;
    const float scale = 0.25f;
    cache_t C;
    cache_init(C, kvh * hd, 1);
    float *q = (float *)malloc((size_t)C.T * H * hd * sizeof(float));
    for (int i = 0; i < C.T * H * hd; i++) q[i] = rnd();
    float *o_cpu = (float *)calloc((size_t)C.T * H * hd, 4), *o_emu = (float *)calloc((size_t)C.T * H * hd, 4);
    float *sc = (float *)calloc((size_t)C.T * H * C.maxlen, 4);
    check(cpu->ops->attn_gqa(cpu, H, kvh, hd, scale, q, C.seqs, 2, o_cpu) == 0, "cpu attn_gqa");
    pages_t P = cache_pages(C);
    emu_launch(C.T * H, AT_THREADS, hd * sizeof(float), [&] { k_gqa(P, q, H, kvh, hd, scale, C.maxlen, sc, o_emu); });
    double e = rel_err(o_emu, o_cpu, (size_t)C.T * H * hd);
    char what[64];
    snprintf(what, sizeof what, "gqa (error %.2e)", e);
    check(e <= 1e-5, what);
    printf("cuda_emu_kernels: gqa, a prefill of 5 and a decode at 37: error %.2e of scale\n", e);
    free(q), free(o_cpu), free(o_emu), free(sc);
    cache_free(C);
}

/* a random weight [R, C] of type dt (finite values), with its scales */
static eng_w_t rand_w(eng_dtype_t dt, int R, int C) {
    eng_w_t w = {};
    w.dt = dt, w.rows = R, w.cols = C, w.name = "w";
    size_t n = (size_t)R * C;
    switch (dt) {
    case ENG_DT_F32: {
        float *d = (float *)malloc(n * 4);
        for (size_t i = 0; i < n; i++) d[i] = rnd() * 0.5f;
        w.data = d;
        break;
    }
    case ENG_DT_BF16:
    case ENG_DT_F16: {
        uint16_t *d = (uint16_t *)malloc(n * 2);
        for (size_t i = 0; i < n; i++) {
            if (dt == ENG_DT_BF16) {
                d[i] = (uint16_t)(__float_as_uint(rnd() * 0.5f) >> 16);
            } else { /* sign, exponent 8..15 (2^-7 .. 1), any mantissa */
                unsigned r = __float_as_uint(rnd());
                d[i] = (uint16_t)((r & 0x8000u) | ((8 + (r >> 3) % 8) << 10) | (r >> 12 & 1023));
            }
        }
        w.data = d;
        break;
    }
    case ENG_DT_F8_E4M3:
    case ENG_DT_I8: {
        uint8_t *d = (uint8_t *)malloc(n);
        for (size_t i = 0; i < n; i++) {
            unsigned r = __float_as_uint(rnd()) >> 8;
            d[i] = dt == ENG_DT_F8_E4M3 ? (uint8_t)((r & 0x80) | (r & 0x77)) : (uint8_t)r;
        }
        int qb = dt == ENG_DT_I8 ? 32 : 128, sr = dt == ENG_DT_I8 ? R : (R + 127) / 128;
        w.qblk = dt == ENG_DT_I8 ? qb : 0;
        w.scale_cols = (C + qb - 1) / qb;
        float *sc = (float *)malloc((size_t)sr * w.scale_cols * 4);
        for (int i = 0; i < sr * w.scale_cols; i++) sc[i] = 0.01f + 0.02f * (rnd() + 1);
        w.data = d, w.scale = sc;
        break;
    }
    default:
        break;
    }
    return w;
}
static void free_w(eng_w_t *w) { free((void *)w->data), free((void *)w->scale); }
static const char *dtn(eng_dtype_t dt) {
    return dt == ENG_DT_F32 ? "f32" : dt == ENG_DT_BF16 ? "bf16" : dt == ENG_DT_F16 ? "f16" : dt == ENG_DT_F8_E4M3 ? "fp8" : "i8";
}

/* the kernels are templates on the dtype: one switch for each */
template <typename F> static void by_dt(int dt, F f) {
    switch (dt) {
    case ENG_DT_F32: f(std::integral_constant<int, ENG_DT_F32>()); break;
    case ENG_DT_BF16: f(std::integral_constant<int, ENG_DT_BF16>()); break;
    case ENG_DT_F16: f(std::integral_constant<int, ENG_DT_F16>()); break;
    case ENG_DT_F8_E4M3: f(std::integral_constant<int, ENG_DT_F8_E4M3>()); break;
    default: f(std::integral_constant<int, ENG_DT_I8>()); break;
    }
}

/* y [n, R] = x @ W^T by k_mm (one job) */
static void emu_mm(const eng_w_t *w, const float *x, int n, float *y) {
    mm_batch_t mb;
    mb.nj = 1;
    mb.j[0].w = cu_w(w), mb.j[0].x = x, mb.j[0].y = y, mb.j[0].n = n;
    by_dt(w->dt, [&](auto D) {
        emu_launch2((unsigned)((w->rows + MM_WARPS - 1) / MM_WARPS), 1, MM_WARPS * 32, 0,
                    [&] { k_mm<decltype(D)::value>(mb); });
    });
}

static void test_matmul(void) {
    eng_dtype_t dts[] = {ENG_DT_F32, ENG_DT_BF16, ENG_DT_F16, ENG_DT_F8_E4M3, ENG_DT_I8};
    int shapes[][2] = {{40, 64}, {33, 50}};
    for (eng_dtype_t dt : dts)
        for (auto &sh : shapes)
            for (int n : {1, 5}) {
                int R = sh[0], C = sh[1];
                eng_w_t w = rand_w(dt, R, C), wc = w;
                float *x = (float *)malloc((size_t)n * C * 4), *yc = (float *)calloc((size_t)n * R, 4),
                      *ye = (float *)calloc((size_t)n * R, 4);
                for (int i = 0; i < n * C; i++) x[i] = rnd();
                check(cpu->ops->upload_w(cpu, &wc) == 0 && cpu->ops->matmul(cpu, &wc, x, n, yc) == 0, "cpu matmul");
                emu_mm(&w, x, n, ye);
                double e = rel_err(ye, yc, (size_t)n * R);
                char what[96];
                snprintf(what, sizeof what, "matmul %s %dx%d n%d (error %.2e)", dtn(dt), R, C, n, e);
                check(e <= 1e-5, what);
                if (!(e <= 1e-5) || (n == 5 && sh[0] == 33))
                    printf("cuda_emu_kernels: matmul %-4s %dx%d, %d tokens: error %.2e\n", dtn(dt), R, C, n, e);
                free(x), free(yc), free(ye);
                free_w(&w);
            }
}

static void test_moe(eng_dtype_t dt, int T) {
    const int E = 8, D = 64, I = 32, Is = 64, K = 2, NK = T * K;
    int shared = dt == ENG_DT_BF16;
    eng_w_t eg[E], eu[E], ed[E], cg[E], cu[E], cd[E];
    for (int e = 0; e < E; e++) {
        cg[e] = eg[e] = rand_w(dt, I, D);
        cu[e] = eu[e] = rand_w(dt, I, D);
        cd[e] = ed[e] = rand_w(dt, D, I);
        check(!cpu->ops->upload_w(cpu, &cg[e]) && !cpu->ops->upload_w(cpu, &cu[e]) && !cpu->ops->upload_w(cpu, &cd[e]),
              "cpu upload");
    }
    eng_w_t sg = rand_w(dt, Is, D), su = rand_w(dt, Is, D), sd = rand_w(dt, D, Is), csg = sg, csu = su, csd = sd;
    check(!cpu->ops->upload_w(cpu, &csg) && !cpu->ops->upload_w(cpu, &csu) && !cpu->ops->upload_w(cpu, &csd),
          "cpu upload");
    int32_t *sel = (int32_t *)malloc((size_t)NK * 4);
    float *wts = (float *)malloc((size_t)NK * 4), *x = (float *)malloc((size_t)T * D * 4);
    for (int t = 0; t < T; t++) {
        sel[t * K] = (int32_t)((__float_as_uint(rnd()) >> 9) % E);
        sel[t * K + 1] = (sel[t * K] + 1 + (int32_t)((__float_as_uint(rnd()) >> 9) % (E - 1))) % E;
    }
    for (int i = 0; i < NK; i++) wts[i] = rnd();
    for (int i = 0; i < T * D; i++) x[i] = rnd();
    eng_moe_t mo = {E, D, I, cg, cu, cd, shared, Is, &csg, &csu, &csd};
    float *yc = (float *)calloc((size_t)T * D, 4), *ye = (float *)calloc((size_t)T * D, 4);
    check(cpu->ops->moe(cpu, &mo, x, T, K, sel, wts, yc) == 0, "cpu moe");
    /* the device path of eng_cuda_moe below the tensor-core threshold */
    int32_t *range = (int32_t *)calloc(E + 1, 4), *tok_of = (int32_t *)calloc(NK, 4), *pos_of = (int32_t *)calloc(NK, 4);
    float *xg = (float *)calloc((size_t)NK * D, 4), *h = (float *)calloc((size_t)NK * I, 4),
          *yslot = (float *)calloc((size_t)NK * D, 4), *sh = (float *)calloc((size_t)T * Is, 4),
          *ysh = (float *)calloc((size_t)T * D, 4);
    cu_exp_t tab[E];
    for (int e = 0; e < E; e++) tab[e] = cu_exp_t{eg[e].data, eu[e].data, ed[e].data, eg[e].scale, eu[e].scale, ed[e].scale};
    emu_launch(1, 32, 0, [&] { k_moe_sort(sel, NK, E, range, tok_of, pos_of); });
    emu_launch(NK, 256, 0, [&] { k_moe_gather(x, tok_of, K, D, xg); });
    by_dt(dt, [&](auto DT) {
        constexpr int V = decltype(DT)::value;
        emu_launch2((I + MM_WARPS - 1) / MM_WARPS, E, MM_WARPS * 32, 0,
                    [&] { k_moe_mm<V>(tab, range, 0, I, D, eg[0].scale_cols, eg[0].qblk, xg, h); });
        emu_launch2((D + MM_WARPS - 1) / MM_WARPS, E, MM_WARPS * 32, 0,
                    [&] { k_moe_mm<V>(tab, range, 1, D, I, ed[0].scale_cols, ed[0].qblk, h, yslot); });
        if (shared)
            emu_launch((Is + MM_WARPS - 1) / MM_WARPS, MM_WARPS * 32, 0,
                       [&] { k_mm_swiglu<V>(cu_w(&sg), cu_w(&su), x, T, sh); });
    });
    if (shared) emu_mm(&sd, sh, T, ysh);
    emu_launch(T, 256, 0, [&] { k_moe_combine(yslot, pos_of, wts, shared ? ysh : NULL, K, D, ye); });
    double e = rel_err(ye, yc, (size_t)T * D);
    char what[96];
    snprintf(what, sizeof what, "moe %s T%d (error %.2e)", dtn(dt), T, e);
    check(e <= 1e-5, what);
    printf("cuda_emu_kernels: moe %-4s%s, %d tokens x top-%d of %d: error %.2e of scale\n", dtn(dt),
           shared ? "+shared" : "", T, K, E, e);
    for (int i = 0; i < E; i++) free_w(&eg[i]), free_w(&eu[i]), free_w(&ed[i]);
    free_w(&sg), free_w(&su), free_w(&sd);
    free(sel), free(wts), free(x), free(yc), free(ye), free(range), free(tok_of), free(pos_of), free(xg), free(h);
    free(yslot), free(sh), free(ysh);
}

static void test_glue(void) {
    char what[96];
    /* embed: 3 ids of a [50, 40] table of every dtype */
    for (eng_dtype_t dt : {ENG_DT_F32, ENG_DT_BF16, ENG_DT_F16, ENG_DT_F8_E4M3, ENG_DT_I8}) {
        eng_w_t w = rand_w(dt, 50, 40), wc = w;
        int32_t ids[3] = {7, 0, 49};
        float xc[120], xe[120];
        check(!cpu->ops->upload_w(cpu, &wc) && !cpu->ops->embed(cpu, &wc, ids, 3, xc), "cpu embed");
        emu_launch(3, 256, 0, [&] { k_embed(cu_w(&w), ids, xe); });
        snprintf(what, sizeof what, "embed %s", dtn(dt));
        check(!memcmp(xc, xe, sizeof xc), what);
        free_w(&w);
    }
    /* rmsnorm: 3 rows of 300 with leading dimensions 310 -> 305, and in place */
    {
        const int T = 3, n = 300, ldx = 310, ldo = 305;
        float x[T * ldx], w[n], oc[T * ldo] = {0}, oe[T * ldo] = {0}, xi[T * ldx], xi2[T * ldx];
        for (int i = 0; i < T * ldx; i++) x[i] = rnd() * 4;
        for (int i = 0; i < n; i++) w[i] = rnd() + 1;
        check(!cpu->ops->rmsnorm(cpu, oc, ldo, x, ldx, w, T, n, 1e-6f), "cpu rmsnorm");
        emu_launch(T, 256, 0, [&] { k_rmsnorm(oe, ldo, x, ldx, w, n, 1e-6f); });
        double e = rel_err(oe, oc, sizeof oc / 4);
        snprintf(what, sizeof what, "rmsnorm strided (error %.2e)", e);
        check(e <= 1e-6, what);
        memcpy(xi, x, sizeof x), memcpy(xi2, x, sizeof x);
        check(!cpu->ops->rmsnorm(cpu, xi, ldx, xi, ldx, w, T, n, 1e-6f), "cpu rmsnorm in place");
        emu_launch(T, 256, 0, [&] { k_rmsnorm(xi2, ldx, xi2, ldx, w, n, 1e-6f); });
        e = rel_err(xi2, xi, sizeof xi / 4);
        snprintf(what, sizeof what, "rmsnorm in place (error %.2e)", e);
        check(e <= 1e-6, what);
    }
    /* add + rmsnorm: 4 rows of 200 */
    {
        const int T = 4, n = 200;
        float xc[T * n], xe[T * n], y[T * n], w[n], nc[T * n], ne[T * n];
        for (int i = 0; i < T * n; i++) xc[i] = xe[i] = rnd(), y[i] = rnd();
        for (int i = 0; i < n; i++) w[i] = rnd();
        check(!cpu->ops->add_rmsnorm(cpu, xc, y, w, nc, T, n, 1e-5f), "cpu add_rmsnorm");
        emu_launch(T, 256, 0, [&] { k_add_rmsnorm(xe, y, w, ne, n, 1e-5f); });
        double e = fmax(rel_err(xe, xc, T * n), rel_err(ne, nc, T * n));
        snprintf(what, sizeof what, "add_rmsnorm (error %.2e)", e);
        check(e <= 1e-6, what);
    }
    /* rope on 3 heads of 16 at offset 8 of 32-float head slots, rows of 100, both pairings */
    for (int il = 0; il < 2; il++) {
        const int T = 4, ld = 100, nh = 3, hs = 32, off = 8, rd = 16, half = rd / 2, S = 64;
        float xc[T * ld], xe[T * ld], cs[S * half], sn[S * half];
        for (int i = 0; i < T * ld; i++) xc[i] = xe[i] = rnd();
        for (int i = 0; i < S * half; i++) cs[i] = cosf((float)i * 0.37f), sn[i] = sinf((float)i * 0.37f);
        int32_t pos[T] = {0, 1, 40, 63};
        check(!cpu->ops->rope(cpu, xc, T, ld, nh, hs, off, rd, il, pos, cs, sn), "cpu rope");
        emu_launch(T, 128, 0, [&] { k_rope(xe, ld, nh, hs, off, rd, il, pos, cs, sn); });
        double e = rel_err(xe, xc, T * ld);
        snprintf(what, sizeof what, "rope %s (error %.2e)", il ? "interleaved" : "half", e);
        check(e <= 1e-6, what);
    }
    /* kv_store, swiglu, gather, argmax */
    {
        const int T = 4, w = 40, lds = 48;
        float src[T * lds], cc[1000] = {0}, ce[1000] = {0};
        for (int i = 0; i < T * lds; i++) src[i] = rnd();
        int64_t dst[T] = {0, 960, 480, 40};
        check(!cpu->ops->kv_store(cpu, cc, dst, src, lds, w, T), "cpu kv_store");
        emu_launch(T, 256, 0, [&] { k_kv_store(ce, dst, src, lds, w); });
        check(!memcmp(cc, ce, sizeof cc), "kv_store");
        float gc[1000], ge[1000], u[1000];
        for (int i = 0; i < 1000; i++) gc[i] = ge[i] = rnd() * 8, u[i] = rnd();
        check(!cpu->ops->swiglu(cpu, gc, u, 1000), "cpu swiglu");
        emu_launch(4, 256, 0, [&] { k_swiglu(ge, u, 1000); });
        double e = rel_err(ge, gc, 1000);
        snprintf(what, sizeof what, "swiglu (error %.2e)", e);
        check(e <= 1e-6, what);
        int32_t rows[3] = {3, 0, 3};
        float tc[3 * lds], te[3 * lds];
        check(!cpu->ops->gather(cpu, tc, src, rows, 3, lds), "cpu gather");
        emu_launch(3, 256, 0, [&] { k_gather(te, src, rows, lds); });
        check(!memcmp(tc, te, sizeof tc), "gather");
        float lg[4 * 250];
        for (int i = 0; i < 1000; i++) lg[i] = rnd();
        lg[250 + 17] = lg[250 + 200] = 2; /* a tie: the lower id */
        lg[500 + 249] = 3;                /* the last id */
        int32_t ac[4], ae[4];
        check(!cpu->ops->argmax(cpu, lg, 4, 250, ac), "cpu argmax");
        emu_launch(4, 256, 0, [&] { k_argmax(lg, 250, ae); });
        check(!memcmp(ac, ae, sizeof ac) && ae[1] == 17 && ae[2] == 249, "argmax");
        /* NaNs are never chosen: one at id 0 and at the thread strides, a row of them (id 0) */
        for (int i = 0; i < 1000; i++) lg[i] = rnd();
        lg[0] = lg[1] = lg[256 % 250] = NAN;
        lg[100] = 5;
        for (int i = 250; i < 500; i++) lg[i] = NAN;
        lg[500] = NAN, lg[500 + 3] = 4, lg[500 + 7] = NAN;
        check(!cpu->ops->argmax(cpu, lg, 4, 250, ac), "cpu argmax, NaNs");
        emu_launch(4, 256, 0, [&] { k_argmax(lg, 250, ae); });
        check(ac[0] == 100 && ac[1] == 0 && ac[2] == 3 && !memcmp(ac, ae, sizeof ac), "argmax with NaNs");
    }
    printf("cuda_emu_kernels: embed (5 dtypes), rmsnorm, add_rmsnorm, rope, kv_store, swiglu, gather, argmax: %s\n",
           fails ? "see above" : "equal to the CPU's");
}

int main(void) {
    char err[256];
    setenv("TOLLGATE_ENGINE_ISA", "scalar", 1); /* the reference in plain fp32 (no AMX hi/lo split) */
    cpu = eng_backend_open("cpu", 1, err, sizeof err);
    if (!cpu) {
        fprintf(stderr, "cuda_emu_kernels: %s\n", err);
        return 1;
    }
    test_route();
    test_mla(ENG_DT_BF16);
    test_mla(ENG_DT_F8_E4M3);
    test_gqa();
    test_matmul();
    test_moe(ENG_DT_BF16, 9);
    test_moe(ENG_DT_F8_E4M3, 3);
    test_glue();
    cpu->ops->free(cpu);
    printf("cuda_emu_kernels: %d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}
