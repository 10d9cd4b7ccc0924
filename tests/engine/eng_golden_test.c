/* eng_golden_test.c — the engine against the PyTorch reference's goldens.
 *
 *   eng_golden_test GOLDEN_DIR WORK_DIR
 *
 * For every model of GOLDEN_DIR/models.txt: generate it with gen-model (same
 * seed, same bytes as when the goldens were made), then check
 *  - logits after a 64-token prefill (v3-long: 3000 tokens, fed in 512-token
 *    chunks as the server does, across the attention's 1024-position spans;
 *    and the same bits from one call) and after each of 32 single-token
 *    decode steps: max |engine - reference| <= 1e-3 * max(1, max |reference|)
 *    (the same bound for f32, bf16, f16 and fp8 weights: the reference
 *    computes in fp32 on exactly the dequantized weights the engine reads);
 *  - the routed expert ids of every token at every MoE layer, exactly;
 *  - 64 tokens of greedy generation, exactly;
 *  - batch invariance: a sequence's logits computed alongside other
 *    sequences (prefills and decodes mixed) equal its logits alone, exactly;
 *  - thread count invariance (1 thread vs all cores), exactly.
 * It fails loudly: each mismatch prints the model, step and sizes.
 *
 * Every line names the instruction set the kernels ran on, and the run fails
 * when that is not the one asked for: TOLLGATE_ENGINE_ISA=amx|avx512|avx2|scalar,
 * or, unset, the best this CPU has.  A set ISA this CPU lacks is a recorded
 * skip (TG_SKIP), never a silent fallback; any other value fails. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../unit/tg_test.h"
#include "eng.h"
#include "eng_cmd.h"

#define TOL_REL 1e-3
#define CHUNK 512 /* the server's prefill chunk: long prompts are fed this way */

static const char *gdir, *wdir;
static char want_backend[32]; /* "cpu/<isa>": what eng_model_backend must report */

/* The ISA levels the kernels dispatch to (engine/cpu/eng_cpu_kernels.c k_init)
 * and the CPU features each needs. */
static bool cpu_has(const char *isa) {
    __builtin_cpu_init();
    bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (!strcmp(isa, "scalar")) return true;
    if (!strcmp(isa, "avx2")) return has2;
    bool has512 = has2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl");
    if (!strcmp(isa, "avx512")) return has512;
    if (!strcmp(isa, "avx512bf16")) return has512 && __builtin_cpu_supports("avx512bf16");
    /* amx: the tiles, and Linux's permission to use them (once per process) */
    return has512 && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
           syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
}

/* Sets want_backend from TOLLGATE_ENGINE_ISA.  0: run; 1: skip (recorded);
 * -1: a value the engine does not know (a failure). */
static int want_isa(void) {
    const char *isa = getenv("TOLLGATE_ENGINE_ISA");
    if (isa && strcmp(isa, "amx") && strcmp(isa, "avx512bf16") && strcmp(isa, "avx512") && strcmp(isa, "avx2") &&
        strcmp(isa, "scalar")) {
        fprintf(stderr, "TOLLGATE_ENGINE_ISA=%s: not one of amx, avx512bf16, avx512, avx2, scalar\n", isa);
        return -1;
    }
    if (!isa)
        isa = cpu_has("amx")          ? "amx"
              : cpu_has("avx512bf16") ? "avx512bf16"
              : cpu_has("avx512")     ? "avx512"
              : cpu_has("avx2")       ? "avx2"
                                      : "scalar";
    snprintf(want_backend, sizeof want_backend, "cpu/%s", isa);
    if (!cpu_has(isa)) {
        char why[96];
        snprintf(why, sizeof why, "TOLLGATE_ENGINE_ISA=%s: this CPU lacks it", isa);
        TG_SKIP(why);
        return 1;
    }
    return 0;
}

static char *slurp(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *b = malloc(n + 1);
    if (b && fread(b, 1, n, fp) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(fp);
    if (b) b[n] = 0;
    if (len) *len = n;
    return b;
}

static double max_err(const float *a, const float *ref, int n, double *scale) {
    double e = 0, s = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= e)) e = d; /* NaN counts as an error */
        if (fabs(ref[i]) > s) s = fabs(ref[i]);
    }
    *scale = s;
    return e;
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* Compare the trace of the last forward (nt tokens at positions pos0..) with the golden. */
static int check_experts(const char *name, eng_model_t *m, const cJSON *experts, int pos0, int *checked) {
    int nt, k, bad = 0;
    const int32_t *tr = eng_model_trace(m, &nt, &k);
    if (!tr) return 1;
    int L = eng_model_info(m)->n_layers;
    for (int l = 0; l < L; l++) {
        const cJSON *gl = cJSON_GetArrayItem(experts, l);
        if (cJSON_IsNull(gl)) continue;
        for (int t = 0; t < nt; t++) {
            int32_t got[64];
            const cJSON *gt = cJSON_GetArrayItem(gl, pos0 + t);
            if (k > 64 || cJSON_GetArraySize(gt) != k) return 1;
            memcpy(got, tr + ((size_t)l * nt + t) * k, k * sizeof(int32_t));
            qsort(got, k, sizeof(int32_t), cmp_i32);
            int j = 0;
            for (const cJSON *e = gt->child; e; e = e->next, j++)
                if ((int)e->valuedouble != got[j]) {
                    if (!bad)
                        fprintf(stderr, "%s: layer %d position %d: expert %d, reference %d\n", name, l, pos0 + t,
                                got[j], (int)e->valuedouble);
                    bad = 1;
                }
            (*checked)++;
        }
    }
    return bad;
}

/* eng_forward must succeed: a failed run leaves the logits unwritten, and an
 * invariance check on them would compare garbage (or pass by luck). */
#define FWD_OK(mod, seqs, ids, n, nseq, logits)                                        \
    do {                                                                               \
        int rc_ = eng_forward((mod), (seqs), (ids), (n), (nseq), (logits), err, sizeof err); \
        if (rc_) fprintf(stderr, "%s: line %d: eng_forward: %s\n", name, __LINE__, err);   \
        CHECK_EQ_I(rc_, 0);                                                            \
    } while (0)

static void run_model(const char *name, const char *arch, const char *preset, const char *dtype, const char *seed,
                      const char *shards) {
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/%s", wdir, name);
    char *argv[] = {"--arch", (char *)arch, "--preset", (char *)preset, "--dtype", (char *)dtype, "--seed",
                    (char *)seed, "--shards", (char *)shards, "--out", dir, "--tokenizer", "none"};
    CHECK_EQ_I(eng_cmd_gen_model(14, argv), 0);
    snprintf(path, sizeof path, "%s/%s.json", gdir, name);
    char *js = slurp(path, NULL);
    CHECK(js != NULL);
    cJSON *g = cJSON_Parse(js ? js : "");
    free(js);
    snprintf(path, sizeof path, "%s/%s.logits.f32", gdir, name);
    size_t glen = 0;
    float *gl = (float *)slurp(path, &glen);
    CHECK(g && gl);
    if (!g || !gl) {
        fprintf(stderr, "%s: golden files missing (make engine-golden)\n", name);
        cJSON_Delete(g);
        free(gl);
        return;
    }
    char err[512];
    eng_load_opts_t o = {0};
    eng_model_t *m = eng_model_load(dir, &o, err, sizeof err);
    if (!m) fprintf(stderr, "%s: %s\n", name, err);
    CHECK(m != NULL);
    if (!m) goto out;
    const char *backend = eng_model_backend(m);
    if (strcmp(backend, want_backend))
        fprintf(stderr, "%s: ran on %s, asked for %s (TOLLGATE_ENGINE_ISA=%s)\n", name, backend, want_backend,
                getenv("TOLLGATE_ENGINE_ISA") ? getenv("TOLLGATE_ENGINE_ISA") : "");
    CHECK_EQ_S(backend, want_backend);
    int V = eng_model_info(m)->vocab_size;
    int P = cJSON_GetObjectItem(g, "prefill")->valueint, Dn = cJSON_GetObjectItem(g, "decode")->valueint;
    CHECK_EQ_I(glen, (size_t)(Dn + 1) * V * sizeof(float));
    const cJSON *jids = cJSON_GetObjectItem(g, "ids"), *experts = cJSON_GetObjectItem(g, "experts");
    const cJSON *greedy = cJSON_GetObjectItem(g, "greedy");
    int N = cJSON_GetArraySize(jids);
    int32_t *ids = malloc(N * sizeof *ids);
    for (int i = 0; i < N; i++) ids[i] = cJSON_GetArrayItem(jids, i)->valueint;
    float *lg = malloc((size_t)V * sizeof(float));
    eng_model_set_trace(m, 1);

    /* prefill + decode, logits and experts */
    eng_seq_t *s = eng_seq_new(m, 0);
    double worst = 0;
    int bad_steps = 0, exp_checked = 0, exp_bad = 0, chunk_pos0 = 0;
    for (int step = 0; step <= Dn; step++) {
        const int32_t *p = step ? ids + P + step - 1 : ids;
        int n = step ? 1 : P;
        float *lp = lg;
        int rc = 0;
        if (!step && P > CHUNK) { /* a long prompt in chunks, as the scheduler feeds it */
            for (int at = 0; at < P && !rc; at += CHUNK) {
                const int32_t *pc = ids + at;
                int nc = P - at < CHUNK ? P - at : CHUNK;
                rc = eng_forward(m, &s, &pc, &nc, 1, at + nc == P ? &lp : NULL, err, sizeof err);
                if (!rc && at + nc < P) exp_bad += check_experts(name, m, experts, at, &exp_checked);
                if (!rc) chunk_pos0 = at;
            }
        } else {
            rc = eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err);
        }
        CHECK_EQ_I(rc, 0);
        if (rc) {
            fprintf(stderr, "%s: %s\n", name, err);
            break;
        }
        double scale, e = max_err(lg, gl + (size_t)step * V, V, &scale);
        double tol = TOL_REL * (scale > 1 ? scale : 1);
        if (e / (scale > 1 ? scale : 1) > worst) worst = e / (scale > 1 ? scale : 1);
        if (!(e <= tol)) {
            if (!bad_steps) fprintf(stderr, "%s: step %d: max abs error %.3g > %.3g\n", name, step, e, tol);
            bad_steps++;
        }
        exp_bad += check_experts(name, m, experts, step ? P + step - 1 : chunk_pos0, &exp_checked);
    }
    CHECK_EQ_I(bad_steps, 0);
    CHECK_EQ_I(exp_bad, 0);
    eng_seq_free(s);
    if (P > CHUNK) { /* the chunks cut nothing: one call over the whole prompt, bit for bit */
        float *l1 = malloc((size_t)V * 4);
        eng_seq_t *s1 = eng_seq_new(m, 0);
        const int32_t *p = ids;
        int n = P;
        FWD_OK(m, &s1, &p, &n, 1, &l1);
        double sc, e = max_err(l1, gl, V, &sc);
        CHECK(e <= TOL_REL * (sc > 1 ? sc : 1));
        /* against the chunked prefill's logits: recompute them */
        eng_seq_t *s2 = eng_seq_new(m, 0);
        float *l2 = malloc((size_t)V * 4);
        for (int at = 0; at < P; at += CHUNK) {
            const int32_t *pc = ids + at;
            int nc = P - at < CHUNK ? P - at : CHUNK;
            FWD_OK(m, &s2, &pc, &nc, 1, at + nc == P ? &l2 : NULL);
        }
        CHECK(memcmp(l1, l2, (size_t)V * 4) == 0);
        if (memcmp(l1, l2, (size_t)V * 4)) fprintf(stderr, "%s: chunked prefill differs from one call\n", name);
        eng_seq_free(s1);
        eng_seq_free(s2);
        free(l1);
        free(l2);
    }

    /* greedy generation */
    s = eng_seq_new(m, 0);
    int G = cJSON_GetArraySize(greedy), gen_bad = -1;
    const int32_t *p = ids;
    int n = P;
    float *lp = lg;
    CHECK_EQ_I(eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err), 0);
    for (int i = 0; i < G; i++) {
        int32_t t = argmax(lg, V);
        if (t != cJSON_GetArrayItem(greedy, i)->valueint && gen_bad < 0) gen_bad = i;
        p = &t;
        n = 1;
        if (i + 1 < G) CHECK_EQ_I(eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err), 0);
    }
    if (gen_bad >= 0) fprintf(stderr, "%s: greedy token %d differs from the reference\n", name, gen_bad);
    CHECK_EQ_I(gen_bad, -1);
    eng_seq_free(s);

    /* batch invariance: A alone vs A decoding beside B's prefill and C's decode */
    eng_model_set_trace(m, 0);
    {
        eng_seq_t *a = eng_seq_new(m, 0), *b = eng_seq_new(m, 0), *c = eng_seq_new(m, 0), *a2 = eng_seq_new(m, 0);
        float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4), *lc = malloc((size_t)V * 4),
              *la2 = malloc((size_t)V * 4);
        const int32_t *pa = ids, *pc = ids + 7;
        int na = 20, nc = 9;
        float *la_p = la;
        FWD_OK(m, &a, &pa, &na, 1, &la_p);
        float *lc_p = lc;
        FWD_OK(m, &c, &pc, &nc, 1, &lc_p);
        /* alone: one more token */
        const int32_t *pa1 = ids + 20;
        int n1 = 1;
        FWD_OK(m, &a, &pa1, &n1, 1, &la_p);
        /* batched: a2 = the same 21 tokens as A, the last one beside B (prefill 33) and C (decode) */
        FWD_OK(m, &a2, &pa, &na, 1, NULL);
        eng_seq_t *bs[3] = {b, a2, c};
        const int32_t *bp[3] = {ids + 30, ids + 20, ids + 40};
        int bn[3] = {33, 1, 1};
        float *bl[3] = {lb, la2, lc};
        FWD_OK(m, bs, bp, bn, 3, bl);
        double sc, e = max_err(la2, la, V, &sc);
        if (e != 0) fprintf(stderr, "%s: batch invariance: max abs difference %.3g\n", name, e);
        CHECK(e == 0);
        /* B's prefill alone */
        eng_seq_t *b2 = eng_seq_new(m, 0);
        const int32_t *pb = ids + 30;
        int nb = 33;
        float *lb2 = malloc((size_t)V * 4), *lb2p = lb2;
        FWD_OK(m, &b2, &pb, &nb, 1, &lb2p);
        e = max_err(lb, lb2, V, &sc);
        if (e != 0) fprintf(stderr, "%s: batch invariance (prefill): max abs difference %.3g\n", name, e);
        CHECK(e == 0);
        free(lb2);
        eng_seq_free(b2);
        free(la);
        free(lb);
        free(lc);
        free(la2);
        eng_seq_free(a);
        eng_seq_free(b);
        eng_seq_free(c);
        eng_seq_free(a2);
    }
    /* one thread gives the same numbers as all cores */
    {
        eng_load_opts_t o1 = {.n_threads = 1};
        eng_model_t *m1 = eng_model_load(dir, &o1, err, sizeof err);
        CHECK(m1 != NULL);
        if (m1) {
            eng_seq_t *s1 = eng_seq_new(m1, 0), *s2 = eng_seq_new(m, 0);
            float *l1 = malloc((size_t)V * 4), *l2 = malloc((size_t)V * 4);
            const int32_t *pp = ids;
            int nn = 40;
            FWD_OK(m1, &s1, &pp, &nn, 1, &l1);
            FWD_OK(m, &s2, &pp, &nn, 1, &l2);
            double sc;
            CHECK(max_err(l1, l2, V, &sc) == 0);
            free(l1);
            free(l2);
            eng_seq_free(s1);
            eng_seq_free(s2);
            eng_model_free(m1);
        }
    }
    printf("%-14s %-22s %-10s worst logit error %.2e of scale (tolerance %.0e), %d expert choices, greedy %d tokens%s\n",
           name, eng_model_info(m)->arch_name, eng_model_backend(m), worst, TOL_REL, exp_checked, G,
           tg_test_fails ? "  [failures above]" : "");
    free(ids);
    free(lg);
    eng_model_free(m);
out:
    cJSON_Delete(g);
    free(gl);
}

static void test_goldens(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models.txt", gdir);
    FILE *fp = fopen(path, "r");
    CHECK(fp != NULL);
    if (!fp) return;
    char line[512];
    int models = 0;
    while (fgets(line, sizeof line, fp)) {
        char name[64], arch[64], preset[64], dtype[16], seed[32], shards[16];
        if (line[0] == '#' || sscanf(line, "%63s %63s %63s %15s %31s %15s", name, arch, preset, dtype, seed, shards) != 6)
            continue;
        run_model(name, arch, preset, dtype, seed, shards);
        models++;
    }
    fclose(fp);
    CHECK(models >= 7);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "gen-model")) return eng_cmd_gen_model(argc - 2, argv + 2); /* make engine-golden */
    if (argc != 3) {
        fprintf(stderr, "usage: eng_golden_test GOLDEN_DIR WORK_DIR\n");
        return 2;
    }
    gdir = argv[1];
    wdir = argv[2];
    int isa = want_isa();
    if (isa < 0) return 1;
    if (isa == 0) test_goldens();
    printf("%s (%s): %d checks, %d failed, %d skipped\n", __FILE__, want_backend, tg_test_checks, tg_test_fails,
           tg_test_skips);
    return tg_test_fails ? 1 : 0;
}
