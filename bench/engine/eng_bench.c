/* eng_bench.c — engine speed on this CPU, each figure beside a reference
 * measured in the same run.
 *
 *   eng_bench decode  [--model DIR] [--threads N] [--tokens N]
 *       decode tokens/s at batch 1 against the memory roofline: bandwidth
 *       divided by the weight bytes one token reads (attention, router, top-k
 *       + shared experts or dense MLP of every layer, lm_head).  Two
 *       bandwidths, each measured on the same threads in every round: a
 *       STREAM-style triad (2 reads + 1 write, STREAM's byte count) and a
 *       pure read (sum of a 1 GB array on 2 MB pages), the closer match to a
 *       decode, which only reads weights.  Then 2N pairs of one read pass
 *       beside one decoded token, and the median of the pairs' ratios: on a
 *       shared host the bandwidth moves within a round, and a pair is ~50 ms.
 *   eng_bench prefill [--model DIR] [--threads N] [--tokens N]
 *       prefill tokens/s and achieved GFLOP/s (2 x active parameters per
 *       token) against OpenBLAS sgemm on the same number of threads.
 *
 *   eng_bench context [--model DIR] [--threads N]
 *       time per output token (batch 1) at 1k, 8k and 32k tokens of context:
 *       the KV cache is filled with synthetic rows (attention's cost depends
 *       on the length, not the values), then single-token decodes are timed,
 *       rounds interleaved, medians and the same-round ratio to 1k.
 *   eng_bench streams [--model DIR] [--threads N]
 *       decode tokens/s with 1, 4, 16 and 64 sequences in each forward call
 *       (each at 256 tokens of context), rounds interleaved; the same-round
 *       ratio to one stream; and the step time of 16 decoding streams alone
 *       and beside a prefill piece of 16, 32, 64 and 512 tokens.
 *   eng_bench ttft [--model DIR] [--threads N]
 *       time to first token of a 2,024-token prompt cold (prefilled in
 *       512-token chunks, as the server does) and with its first 2,016
 *       tokens cached (eng_seq_prefix), rounds interleaved.
 *
 * Without --model the synthetic DeepSeek-V3-shaped "bench" preset (bf16,
 * about 1.1 GB read per token, a 163,840-token context) is generated once
 * under build/bench/. */
#include <cblas.h>
#include <fcntl.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "eng.h"
#include "eng_cmd.h"
#include "eng_model_int.h"

extern void openblas_set_num_threads(int);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- STREAM triad a = b + s*c over n floats, split between threads ---------- */

typedef struct {
    float *a, *b, *c;
    size_t lo, hi;
    pthread_barrier_t *bar;
    int reps;
    double best;
} triad_arg_t;

static void *triad_thread(void *p) {
    triad_arg_t *t = p;
    for (size_t i = t->lo; i < t->hi; i++) t->a[i] = 0, t->b[i] = 1, t->c[i] = 2; /* first touch */
    for (int r = 0; r < t->reps; r++) {
        pthread_barrier_wait(t->bar);
        for (size_t i = t->lo; i < t->hi; i++) t->a[i] = t->b[i] + 3.0f * t->c[i];
        pthread_barrier_wait(t->bar);
    }
    return NULL;
}

static double triad_gbs(int threads) {
    size_t n = 64u << 20; /* 3 x 256 MB */
    float *a = malloc(n * 4), *b = malloc(n * 4), *c = malloc(n * 4);
    if (!a || !b || !c) return 0;
    int reps = 6;
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, threads + 1);
    triad_arg_t *ta = calloc(threads, sizeof *ta);
    pthread_t *th = calloc(threads, sizeof *th);
    for (int i = 0; i < threads; i++) {
        ta[i] = (triad_arg_t){a, b, c, n * i / threads, n * (i + 1) / threads, &bar, reps, 0};
        pthread_create(&th[i], NULL, triad_thread, &ta[i]);
    }
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        pthread_barrier_wait(&bar);
        double t0 = now();
        pthread_barrier_wait(&bar);
        double dt = now() - t0;
        if (r && dt < best) best = dt; /* the first rep warms up */
    }
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&bar);
    free(ta);
    free(th);
    free(a);
    free(b);
    free(c);
    return 3.0 * n * 4 / best / 1e9; /* STREAM counts 2 reads + 1 write */
}

/* ---- pure read: sum a large array (2 MB pages, like the weights), same threads ---- */

typedef struct {
    const float *p;
    size_t lo, hi;
    pthread_barrier_t *bar;
    int reps;
    float sink;
} read_arg_t;

__attribute__((target("avx512f"))) static float sum512(const float *p, size_t lo, size_t hi) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = lo;
    for (; i + 64 <= hi; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < hi; i++) s += p[i];
    return s;
}

static float sum_plain(const float *p, size_t lo, size_t hi) {
    float a[8] = {0};
    size_t i = lo;
    for (; i + 8 <= hi; i += 8)
        for (int k = 0; k < 8; k++) a[k] += p[i + k];
    for (; i < hi; i++) a[0] += p[i];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

static void *read_thread(void *q) {
    read_arg_t *t = q;
    int v512 = __builtin_cpu_supports("avx512f");
    for (int r = 0; r < t->reps; r++) {
        pthread_barrier_wait(t->bar);
        t->sink += v512 ? sum512(t->p, t->lo, t->hi) : sum_plain(t->p, t->lo, t->hi);
        pthread_barrier_wait(t->bar);
    }
    return NULL;
}

static float *read_buf;
static size_t read_n;

/* reps passes over the 1 GB array; GB/s of the fastest pass after the first
 * (reps > 1), or of the one pass (reps == 1: the paired decode rounds) */
static double read_gbs_reps(int threads, int reps) {
    if (!read_buf) { /* 1 GB on 2 MB pages where the kernel grants them, kept between rounds */
        read_n = 256u << 20;
        read_buf = aligned_alloc(2u << 20, read_n * 4);
        if (!read_buf) return 0;
        madvise(read_buf, read_n * 4, MADV_HUGEPAGE);
        for (size_t i = 0; i < read_n; i++) read_buf[i] = (float)(i & 7);
    }
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, threads + 1);
    read_arg_t *ra = calloc(threads, sizeof *ra);
    pthread_t *th = calloc(threads, sizeof *th);
    for (int i = 0; i < threads; i++) {
        ra[i] = (read_arg_t){read_buf, read_n * i / threads, read_n * (i + 1) / threads, &bar, reps, 0};
        pthread_create(&th[i], NULL, read_thread, &ra[i]);
    }
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        pthread_barrier_wait(&bar);
        double t0 = now();
        pthread_barrier_wait(&bar);
        double dt = now() - t0;
        if ((r || reps == 1) && dt < best) best = dt;
    }
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&bar);
    free(ra);
    free(th);
    return read_n * 4.0 / best / 1e9;
}

/* MB of this process's file mappings held by 2 MB page-table entries, and in
 * all; the same for its anonymous memory (where the amx level's re-laid
 * weights live) */
static void file_pmd_mb(double *pmd, double *rss, double *apmd, double *arss) {
    *pmd = *rss = *apmd = *arss = 0;
    const char *files[] = {"/proc/self/smaps_rollup", "/proc/self/status"};
    for (int f = 0; f < 2; f++) {
        FILE *fp = fopen(files[f], "r");
        if (!fp) continue;
        char line[256];
        double kb;
        while (fgets(line, sizeof line, fp)) {
            if (sscanf(line, "FilePmdMapped: %lf kB", &kb) == 1) *pmd = kb / 1024;
            if (sscanf(line, "RssFile: %lf kB", &kb) == 1) *rss = kb / 1024;
            if (sscanf(line, "AnonHugePages: %lf kB", &kb) == 1) *apmd = kb / 1024;
            if (sscanf(line, "RssAnon: %lf kB", &kb) == 1) *arss = kb / 1024;
        }
        fclose(fp);
    }
}

static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    double *c = malloc(n * sizeof *c);
    memcpy(c, v, n * sizeof *c);
    qsort(c, n, sizeof *c, cmp_dbl);
    double m = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
    free(c);
    return m;
}

/* ---- model bytes and flops per token -------------------------------------------- */

static double w_bytes(const eng_w_t *w) {
    if (!w->data) return 0;
    double es = w->dt == ENG_DT_F32 ? 4 : w->dt == ENG_DT_BF16 || w->dt == ENG_DT_F16 ? 2 : 1;
    double b = (double)w->rows * w->cols * es;
    if (w->scale) b += (double)w->rows / (w->dt == ENG_DT_I8 ? 1 : 128) * w->scale_cols * 4;
    return b;
}

static double w_params(const eng_w_t *w) { return w->data ? (double)w->rows * w->cols : 0; }

static double read_gbs(int threads) { return read_gbs_reps(threads, 5); }

/* bytes read and multiply-adds per decoded token */
static void per_token(const eng_model_t *m, double *bytes, double *macs) {
    const eng_cfg_t *c = &m->cfg;
    double B = 0, P = 0;
    B += w_bytes(&m->lm_head);
    P += w_params(&m->lm_head);
    for (int l = 0; l < c->n_layers; l++) {
        const eng_layer_t *L = &m->layers[l];
        const eng_w_t *ws[] = {&L->q_proj, &L->q_a, &L->q_b, &L->kv_a, &L->kv_b, &L->wq, &L->wk, &L->wv, &L->o_proj,
                               &L->gate, &L->up, &L->down, &L->router, &L->sg, &L->su, &L->sd};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            B += w_bytes(ws[i]);
            P += w_params(ws[i]);
        }
        if (L->moe) {
            B += c->topk * (w_bytes(&L->eg[0]) + w_bytes(&L->eu[0]) + w_bytes(&L->ed[0]));
            P += c->topk * (w_params(&L->eg[0]) + w_params(&L->eu[0]) + w_params(&L->ed[0]));
        }
    }
    *bytes = B;
    *macs = P;
}

/* keep the context short so every round decodes at the same length */
static void eng_truncate_to_fit(eng_seq_t *s, int len) {
    if (eng_seq_len(s) > len) eng_seq_truncate(s, 20);
}

static const char *ensure_model(const char *dir) {
    if (dir) return dir;
    static const char *def = "build/bench/engine/v3-bench";
    char cfg[256];
    snprintf(cfg, sizeof cfg, "%s/config.json", def);
    struct stat sb;
    if (stat(cfg, &sb) == 0) return def;
    fprintf(stderr, "eng_bench: generating %s (once)...\n", def);
    char *argv[] = {"--arch", "deepseek_v3", "--preset", "bench", "--dtype", "bf16", "--seed", "7", "--out",
                    (char *)def, "--tokenizer", "none"};
    if (eng_cmd_gen_model(12, argv)) return NULL;
    /* a file just written sits in the page cache in 4 KB pages; drop it so the
     * engine reads it back the way a server reads a model at start-up (in
     * 2 MB folios, mapped with 2 MB pages) */
    snprintf(cfg, sizeof cfg, "%s/model.safetensors", def);
    int fd = open(cfg, O_RDONLY);
    if (fd >= 0) {
        fdatasync(fd);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
    return def;
}

/* A sequence of len tokens whose KV rows are synthetic (written, so that
 * reads hit real memory): for timing attention at a context length. */
static eng_seq_t *fake_seq(eng_model_t *m, int len, unsigned seed) {
    eng_seq_t *s = eng_seq_new(m, 0);
    if (!s || eng_seq_reserve(s, len + 64)) {
        fprintf(stderr, "eng_bench: no KV for %d tokens\n", len);
        exit(1);
    }
    int gqa = m->info.arch == ENG_ARCH_MIXTRAL, row = gqa ? m->cfg.kvh * m->cfg.hd : m->cfg.c + m->cfg.dr;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < len; p++)
            for (int v = 0; v <= gqa; v++) {
                float *r = eng_seq_row(s, l, p, v);
                for (int i = 0; i < row; i++) r[i] = (float)((int)((seed + p * 31u + i * 7u + l) % 17u) - 8) * 0.05f;
            }
    s->len = len;
    return s;
}

static int decode_one(eng_model_t *m, eng_seq_t **s, int nseq, int32_t tok, float **lg) {
    char err[256];
    const int32_t *ids[64];
    int n[64];
    for (int i = 0; i < nseq; i++) ids[i] = &tok, n[i] = 1;
    if (eng_forward(m, s, ids, n, nseq, lg, err, sizeof err)) {
        fprintf(stderr, "eng_bench: %s\n", err);
        exit(1);
    }
    return 0;
}

static void bench_context(eng_model_t *m) {
    static const int ctx[] = {1024, 8192, 32768};
    enum { NC = 3, ROUNDS = 3, STEPS = 6 };
    int V = eng_model_info(m)->vocab_size;
    float *lg = malloc((size_t)V * 4);
    double t[NC][ROUNDS];
    eng_seq_t *s[NC];
    for (int c = 0; c < NC; c++) s[c] = fake_seq(m, ctx[c], 3 + c);
    decode_one(m, &s[0], 1, 5, &lg); /* warm the weights */
    for (int r = 0; r < ROUNDS; r++)
        for (int c = 0; c < NC; c++) {
            double t0 = now();
            for (int k = 0; k < STEPS; k++) {
                decode_one(m, &s[c], 1, 7 + k, &lg);
                eng_seq_truncate(s[c], ctx[c]);
            }
            t[c][r] = (now() - t0) / STEPS;
            printf("round %d: context %6d: %7.1f ms/token\n", r, ctx[c], t[c][r] * 1e3);
        }
    size_t kvb = eng_model_info(m)->kv_bytes_per_token;
    printf("time per output token (batch 1), median of %d rounds of %d tokens:\n", ROUNDS, STEPS);
    for (int c = 0; c < NC; c++) {
        double ratio[ROUNDS];
        for (int r = 0; r < ROUNDS; r++) ratio[r] = t[c][r] / t[0][r];
        printf("  context %6d  %7.1f ms/token  (%.2fx the 1k time, same-round median; KV read %.0f MB/token)\n",
               ctx[c], median(t[c], ROUNDS) * 1e3, median(ratio, ROUNDS), (double)ctx[c] * kvb / 1e6);
    }
    for (int c = 0; c < NC; c++) eng_seq_free(s[c]);
    free(lg);
}

static void bench_streams(eng_model_t *m) {
    static const int B[] = {1, 4, 16, 64};
    enum { NB = 4, ROUNDS = 5, STEPS = 8, CTX = 256 };
    int V = eng_model_info(m)->vocab_size;
    float **lg = malloc(64 * sizeof *lg);
    for (int i = 0; i < 64; i++) lg[i] = malloc((size_t)V * 4);
    eng_seq_t *s[64];
    for (int i = 0; i < 64; i++) s[i] = fake_seq(m, CTX, 11 + i);
    decode_one(m, s, 1, 5, lg);
    static const int PF[] = {0, 16, 32, 64, 512};
    enum { NP = 5 };
    double tps[NB][ROUNDS], step_t[NP][ROUNDS];
    int32_t *chunk = malloc(512 * sizeof *chunk);
    for (int i = 0; i < 512; i++) chunk[i] = 2 + (int32_t)((i * 7919u) % (unsigned)(V - 2));
    for (int r = 0; r < ROUNDS; r++) {
        for (int b = 0; b < NB; b++) {
            double t0 = now();
            for (int k = 0; k < STEPS; k++) {
                /* a different token per sequence, as real streams have */
                char err[256];
                const int32_t *ids[64];
                int n[64];
                int32_t tok[64];
                for (int i = 0; i < B[b]; i++) tok[i] = 2 + (int32_t)(((unsigned)(i * 131 + k * 17 + r)) % (unsigned)(V - 2)), ids[i] = &tok[i], n[i] = 1;
                if (eng_forward(m, s, ids, n, B[b], lg, err, sizeof err)) {
                    fprintf(stderr, "eng_bench: %s\n", err);
                    exit(1);
                }
                for (int i = 0; i < B[b]; i++) eng_seq_truncate(s[i], CTX);
            }
            tps[b][r] = B[b] * STEPS / (now() - t0);
            printf("round %d: %2d streams: %7.2f tokens/s\n", r, B[b], tps[b][r]);
        }
        /* 16 decoding streams alone, then with a prefill piece of PF[p] tokens
         * in the same step (each stream its own token, as real streams: one
         * token for all would route them alike and read fewer experts) */
        for (int p = 0; p < NP; p++) {
            char err[256];
            eng_seq_t *ss[17];
            const int32_t *ids[17];
            int n[17];
            float *ll[17];
            int32_t tok[16];
            for (int i = 0; i < 16; i++)
                tok[i] = 2 + (int32_t)(((unsigned)(i * 131 + p * 29 + r * 7 + 3)) % (unsigned)(V - 2)), ss[i] = s[i],
                ids[i] = &tok[i], n[i] = 1, ll[i] = lg[i];
            eng_seq_t *pf = eng_seq_new(m, 0);
            ss[16] = pf, ids[16] = chunk, n[16] = PF[p], ll[16] = NULL;
            double t0 = now();
            if (eng_forward(m, ss, ids, n, PF[p] ? 17 : 16, ll, err, sizeof err)) {
                fprintf(stderr, "eng_bench: %s\n", err);
                exit(1);
            }
            step_t[p][r] = now() - t0;
            for (int i = 0; i < 16; i++) eng_seq_truncate(s[i], CTX);
            eng_seq_free(pf);
        }
        printf("round %d: 16 streams' step", r);
        for (int p = 0; p < NP; p++) printf(" %s%.1f ms%s", p ? "+" : "", step_t[p][r] * 1e3, p ? "" : " alone,");
        printf(" (beside a prefill piece of");
        for (int p = 1; p < NP; p++) printf(" %d", PF[p]);
        printf(" tokens)\n");
    }
    printf("decode tokens/s by concurrent streams (context %d), median of %d rounds:\n", CTX, ROUNDS);
    for (int b = 0; b < NB; b++) {
        double ratio[ROUNDS];
        for (int r = 0; r < ROUNDS; r++) ratio[r] = tps[b][r] / tps[0][r];
        printf("  %2d streams  %8.2f tokens/s  (%.2fx one stream, same-round median)\n", B[b], median(tps[b], ROUNDS),
               median(ratio, ROUNDS));
    }
    printf("  16 streams' step: %.1f ms alone (median); beside a prefill piece (the server's budget while streams\n"
           "  decode is --decode-prefill tokens):\n", median(step_t[0], ROUNDS) * 1e3);
    for (int p = 1; p < NP; p++) {
        double ratio[ROUNDS];
        for (int r = 0; r < ROUNDS; r++) ratio[r] = step_t[p][r] / step_t[0][r];
        printf("    %3d-token piece  %7.1f ms  (%.2fx the step alone, same-round median)\n", PF[p],
               median(step_t[p], ROUNDS) * 1e3, median(ratio, ROUNDS));
    }
    for (int i = 0; i < 64; i++) eng_seq_free(s[i]), free(lg[i]);
    free(lg);
    free(chunk);
}

static void bench_ttft(eng_model_t *m) {
    enum { N = 2024, CH = 512, ROUNDS = 2 };
    int V = eng_model_info(m)->vocab_size;
    float *lg = malloc((size_t)V * 4);
    int32_t *ids = malloc(N * sizeof *ids);
    double cold[ROUNDS], warm[ROUNDS], ratio[ROUNDS];
    char err[256];
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < N; i++) ids[i] = 2 + (int32_t)(((unsigned)i * 7919u + (unsigned)r * 104729u) % (unsigned)(V - 2));
        /* cold: the whole prompt, in the server's chunks */
        eng_seq_t *s = eng_seq_new(m, 0);
        double t0 = now();
        for (int at = 0; at < N; at += CH) {
            const int32_t *p = ids + at;
            int n = N - at < CH ? N - at : CH;
            float *lp = at + n == N ? lg : NULL;
            if (eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err)) {
                fprintf(stderr, "eng_bench: %s\n", err);
                exit(1);
            }
        }
        cold[r] = now() - t0;
        eng_seq_free(s); /* its full blocks stay cached */
        /* warm: the same prompt, its cached prefix attached */
        s = eng_seq_new(m, 0);
        t0 = now();
        int hit = eng_seq_prefix(s, ids, N);
        const int32_t *p = ids + hit;
        int n = N - hit;
        float *lp = lg;
        if (eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err)) {
            fprintf(stderr, "eng_bench: %s\n", err);
            exit(1);
        }
        warm[r] = now() - t0;
        ratio[r] = cold[r] / warm[r];
        eng_seq_free(s);
        printf("round %d: time to first token, %d-token prompt: %.3f s cold, %.3f s with %d tokens cached (%.1fx)\n",
               r, N, cold[r], warm[r], hit, ratio[r]);
    }
    printf("time to first token (%d tokens): %.3f s cold, %.4f s with a cached 2,016-token prefix: %.1fx "
           "(same-round median)\n", N, median(cold, ROUNDS), median(warm, ROUNDS), median(ratio, ROUNDS));
    free(ids);
    free(lg);
}

int main(int argc, char **argv) {
    static const char *modes[] = {"decode", "prefill", "context", "streams", "ttft"};
    int mode = -1;
    for (int i = 0; argc >= 2 && i < 5; i++)
        if (!strcmp(argv[1], modes[i])) mode = i;
    if (mode < 0) {
        fprintf(stderr, "usage: eng_bench decode|prefill|context|streams|ttft [--model DIR] [--threads N] [--tokens N] [--int8]\n");
        return 2;
    }
    int decode = !strcmp(argv[1], "decode");
    const char *dir = NULL;
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), ntok = decode ? 32 : 256, int8 = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--int8")) int8 = 1;
        else if (i + 1 < argc && !strcmp(argv[i], "--model")) dir = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--tokens")) ntok = atoi(argv[++i]);
    }
    if (!(dir = ensure_model(dir))) return 1;
    char err[512];
    eng_load_opts_t o = {.n_threads = threads, .quant_int8 = int8};
    eng_model_t *m = eng_model_load(dir, &o, err, sizeof err);
    if (!m) {
        fprintf(stderr, "eng_bench: %s\n", err);
        return 1;
    }
    int V = eng_model_info(m)->vocab_size;
    double bytes, macs;
    per_token(m, &bytes, &macs);
    float *lg = malloc((size_t)V * 4);
    int32_t *ids = malloc((ntok + 64) * sizeof *ids);
    for (int i = 0; i < ntok + 64; i++) ids[i] = 2 + (int32_t)((i * 7919u) % (unsigned)(V - 2));
    printf("model %s (%s), %d threads, kernels %s\n", dir, eng_model_info(m)->arch_name, threads,
           eng_model_backend(m));
    if (mode >= 2) {
        if (mode == 2) bench_context(m);
        if (mode == 3) bench_streams(m);
        if (mode == 4) bench_ttft(m);
    } else if (decode) {
        /* warm: touch every weight once through a prefill, then decode */
        eng_seq_t *s = eng_seq_new(m, 0);
        const int32_t *p = ids;
        int n = 16;
        float *lp = lg;
        eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err);
        for (int w = 0; w < 4; w++) {
            p = ids + 16 + w;
            n = 1;
            eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err);
        }
        /* this machine's bandwidth varies from moment to moment (shared host):
         * alternate triad, read and decode rounds; report best and median */
        enum { ROUNDS = 5 };
        double tri[ROUNDS], rd[ROUNDS], dec[ROUNDS];
        for (int round = 0; round < ROUNDS; round++) {
            tri[round] = triad_gbs(threads);
            rd[round] = read_gbs(threads);
            double t0 = now();
            for (int i = 0; i < ntok; i++) {
                p = ids + 20 + i % 40;
                n = 1;
                if (eng_truncate_to_fit(s, 64), eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err)) {
                    fprintf(stderr, "eng_bench: %s\n", err);
                    return 1;
                }
            }
            dec[round] = ntok / (now() - t0);
            printf("round %d: triad %5.2f GB/s, read %5.2f GB/s, decode %5.2f tokens/s = %5.2f GB/s "
                   "(%3.0f%% of this round's triad, %3.0f%% of its read)\n",
                   round, tri[round], rd[round], dec[round], dec[round] * bytes / 1e9,
                   100 * dec[round] * bytes / 1e9 / tri[round], 100 * dec[round] * bytes / 1e9 / rd[round]);
        }
        double bw = 0, rbw = 0, tps = 0;
        for (int r = 0; r < ROUNDS; r++) {
            bw = tri[r] > bw ? tri[r] : bw;
            rbw = rd[r] > rbw ? rd[r] : rbw;
            tps = dec[r] > tps ? dec[r] : tps;
        }
        double bw_med = median(tri, ROUNDS), rbw_med = median(rd, ROUNDS), tps_med = median(dec, ROUNDS);
        double pmd, rss, apmd, arss;
        file_pmd_mb(&pmd, &rss, &apmd, &arss);
        printf("weights mapped in 2 MB pages %7.0f MB of %.0f MB of file pages resident (bf16 weights used in place)\n",
               pmd, rss);
        printf("anonymous 2 MB pages         %7.0f MB of %.0f MB anonymous resident (the weights re-laid at load on\n"
               "                             the amx and avx512bf16 levels, and the 1 GB read buffer)\n", apmd, arss);
        printf("weight bytes read per token %8.1f MB\n", bytes / 1e6);
        printf("                             best of %d   median\n", ROUNDS);
        printf("STREAM triad bandwidth      %8.2f  %8.2f GB/s\n", bw, bw_med);
        printf("pure read bandwidth (sum)   %8.2f  %8.2f GB/s\n", rbw, rbw_med);
        printf("decode, batch 1             %8.2f  %8.2f tokens/s (%.1f / %.1f ms/token)\n", tps, tps_med,
               1e3 / tps, 1e3 / tps_med);
        printf("decode weight stream        %8.2f  %8.2f GB/s\n", tps * bytes / 1e9, tps_med * bytes / 1e9);
        printf("roofline, triad (bw/bytes)  %8.2f  %8.2f tokens/s\n", bw * 1e9 / bytes, bw_med * 1e9 / bytes);
        printf("roofline, read              %8.2f  %8.2f tokens/s\n", rbw * 1e9 / bytes, rbw_med * 1e9 / bytes);
        printf("fraction of triad roofline  %8.1f  %8.1f %%\n", 100 * tps * bytes / 1e9 / bw,
               100 * tps_med * bytes / 1e9 / bw_med);
        printf("fraction of read roofline   %8.1f  %8.1f %%\n", 100 * tps * bytes / 1e9 / rbw,
               100 * tps_med * bytes / 1e9 / rbw_med);
        double rt[ROUNDS], rr[ROUNDS];
        for (int r = 0; r < ROUNDS; r++) rt[r] = dec[r] * bytes / 1e9 / tri[r], rr[r] = dec[r] * bytes / 1e9 / rd[r];
        printf("same-round ratio, median    %8.1f %% of triad, %.1f %% of read\n", 100 * median(rt, ROUNDS),
               100 * median(rr, ROUNDS));
        /* Paired: one pass of the pure read beside one decoded token, ntok
         * pairs (the order swapped every pair, 0.5 ms apart so the pool's
         * spinning workers are asleep), the median of the pairs' ratios.
         * The rounds above set ntok tokens' mean against the fastest of four
         * reads seconds away; on this shared host the bandwidth moves within
         * a second (a round's read 16-93 GB/s), and a pair is ~50 ms. */
        double *pr = malloc((size_t)ntok * 4 * sizeof *pr), *pd = pr + ntok * 2;
        int np = 0;
        for (int i = 0; i < ntok * 2; i++) {
            double rgb = 0, t0, dt;
            struct timespec gap = {0, 500000};
            if (i % 2 == 0) rgb = read_gbs_reps(threads, 1), nanosleep(&gap, NULL);
            p = ids + 20 + i % 40;
            n = 1;
            eng_truncate_to_fit(s, 64);
            t0 = now();
            if (eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err)) {
                fprintf(stderr, "eng_bench: %s\n", err);
                return 1;
            }
            dt = now() - t0;
            if (i % 2) nanosleep(&gap, NULL), rgb = read_gbs_reps(threads, 1);
            pd[np] = bytes / dt / 1e9;
            pr[np] = pd[np] / rgb;
            np++;
        }
        double *pq = malloc((size_t)np * sizeof *pq);
        for (int i = 0; i < np; i++) pq[i] = pd[i] / pr[i];
        qsort(pq, np, sizeof *pq, cmp_dbl);
        printf("paired reads                %8.2f GB/s median, %.2f-%.2f across pairs\n", median(pq, np),
               pq[0], pq[np - 1]);
        free(pq);
        printf("paired, %d pairs: read beside one token, median ratio %.1f %% of read (decode %.2f GB/s, "
               "%.2f tokens/s, medians)\n", np, 100 * median(pr, np), median(pd, np), median(pd, np) * 1e9 / bytes);
        free(pr);
        free(read_buf);
        eng_seq_free(s);
    } else {
        openblas_set_num_threads(threads);
        int N = 2048;
        float *A = malloc((size_t)N * N * 4), *B = malloc((size_t)N * N * 4), *C = malloc((size_t)N * N * 4);
        for (size_t i = 0; i < (size_t)N * N; i++) A[i] = (float)(i % 13) * 0.01f, B[i] = (float)(i % 7) * 0.01f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, N, 1, A, N, B, N, 0, C, N);
        eng_seq_t *s = eng_seq_new(m, 0);
        const int32_t *p = ids;
        int n = 8;
        float *lp = lg;
        eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err); /* warm the weights */
        eng_seq_free(s);
        /* the host is shared and noisy: alternate sgemm and prefill rounds;
         * best, median and the median of the same-round ratios */
        enum { PR = 5 };
        double best = 1e9, peak = 0, sg[PR], pt[PR], ratio[PR];
        /* lm_head runs for the last token only */
        double flops = 2.0 * ntok * (macs - w_params(&m->lm_head)) + 2.0 * w_params(&m->lm_head);
        for (int r = 0; r < PR; r++) {
            double t0 = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, N, 1, A, N, B, N, 0, C, N);
            double g = 2.0 * N * N * N / (now() - t0) / 1e9;
            if (g > peak) peak = g;
            s = eng_seq_new(m, 0);
            n = ntok;
            t0 = now();
            if (eng_forward(m, &s, &p, &n, 1, &lp, err, sizeof err)) {
                fprintf(stderr, "eng_bench: %s\n", err);
                return 1;
            }
            double dt = now() - t0;
            if (dt < best) best = dt;
            eng_seq_free(s);
            sg[r] = g, pt[r] = flops / dt / 1e9, ratio[r] = pt[r] / g;
            printf("round %d: sgemm %.1f GFLOP/s, prefill %.2f s = %.1f GFLOP/s (%.0f%% of this round's sgemm)\n", r, g,
                   dt, pt[r], 100 * ratio[r]);
        }
        free(A);
        free(B);
        free(C);
        double gf = flops / best / 1e9;
        printf("                             best of %d   median\n", PR);
        printf("OpenBLAS sgemm %dx%dx%d %8.1f  %8.1f GFLOP/s\n", N, N, N, peak, median(sg, PR));
        printf("prefill %d tokens          %8.1f  %8.1f tokens/s\n", ntok, ntok / best,
               median(pt, PR) * 1e9 / flops * ntok);
        printf("prefill achieved            %8.1f  %8.1f GFLOP/s\n", gf, median(pt, PR));
        printf("prefill / sgemm, same-round median %.2fx (%.0f%%)\n", median(ratio, PR), 100 * median(ratio, PR));
    }
    free(lg);
    free(ids);
    eng_model_free(m);
    return 0;
}
