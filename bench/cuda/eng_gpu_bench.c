/* eng_gpu_bench.c — decode tokens/s of a model on a backend, against the
 * roofline of the bytes of weights a step must read at the backend's measured
 * copy bandwidth.
 *
 *   eng_gpu_bench --model DIR [--device cuda:0] [--batch 1,64] [--steps 32] [--prompt 32] [--copy-mib 1024]
 *
 * Bandwidth: a device-to-device copy between two 1 GiB buffers through the
 * backend, counted as read + write bytes (what the memory moved).  Bytes per
 * step: every weight the step reads — attention, dense MLPs, routers, the
 * shared experts, the lm_head rows, and exactly the routed experts the step's
 * tokens chose (from the routing trace, each distinct expert once).  Roofline
 * tokens/s = batch x bandwidth / bytes per step.  Each batch size: B
 * sequences prefilled with the same-length prompts, 3 warm-up steps, then
 * --steps timed decode steps (logits copied to the host each step, as a
 * server does); the median step is reported.  The bytes per step come from 4
 * more (traced, untimed) steps.  Then, where the backend samples, --steps more
 * steps with the token sampled on the backend (temperature 0.8, top_p 0.95:
 * the serving path of a request that needs nothing but the logits; no logits
 * copy), their median too.  One JSON line per batch size on stdout after the
 * human-readable lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng.h"
#include "eng_model_int.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static size_t wbytes(const eng_w_t *w) {
    if (!w->data) return 0;
    size_t es = w->dt == ENG_DT_F32 ? 4 : w->dt == ENG_DT_BF16 || w->dt == ENG_DT_F16 ? 2 : 1;
    size_t n = (size_t)w->rows * w->cols * es;
    if (w->scale) n += (w->dt == ENG_DT_F8_E4M3 ? (size_t)((w->rows + 127) / 128) : (size_t)w->rows) * w->scale_cols * 4;
    return n;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* bytes read by one step whose routed choices are trace [n_layers][T][K] */
static double step_bytes(const eng_model_t *m, const int32_t *trace, int T, int K, int nlogits) {
    const eng_cfg_t *c = &m->cfg;
    double b = (double)nlogits / m->lm_head.rows * wbytes(&m->lm_head);
    b += (double)T / m->embed.rows * wbytes(&m->embed);
    char *seen = calloc(c->E > 0 ? c->E : 1, 1);
    for (int l = 0; l < c->n_layers; l++) {
        const eng_layer_t *L = &m->layers[l];
        const eng_w_t *ws[] = {&L->q_proj, &L->q_a, &L->q_b, &L->kv_a, &L->kv_b, &L->wq, &L->wk, &L->wv, &L->o_proj,
                               &L->gate, &L->up, &L->down, &L->router, &L->sg, &L->su, &L->sd};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) b += wbytes(ws[i]);
        if (!L->moe || !trace) continue;
        memset(seen, 0, c->E);
        for (int i = 0; i < T * K; i++) {
            int e = trace[(size_t)l * T * K + i];
            if (e >= 0 && e < c->E && !seen[e]) {
                seen[e] = 1;
                b += wbytes(&L->eg[e]) + wbytes(&L->eu[e]) + wbytes(&L->ed[e]);
            }
        }
    }
    free(seen);
    return b;
}

/* read + write bytes per second of a device-to-device copy on the backend */
static double copy_bw(eng_backend_t *be, size_t n) {
    void *a = be->ops->alloc(be, n), *b = be->ops->alloc(be, n);
    double best = 0;
    if (!a || !b) goto out;
    int32_t probe;
    memset(&probe, 0, sizeof probe);
    be->ops->copy(be, b, a, n); /* first touch */
    be->ops->get(be, &probe, b, sizeof probe);
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        for (int i = 0; i < 4; i++) be->ops->copy(be, i & 1 ? a : b, i & 1 ? b : a, n);
        be->ops->get(be, &probe, a, sizeof probe); /* waits for the copies */
        double bw = 2.0 * 4 * n / (now() - t0);
        if (bw > best) best = bw;
    }
out:
    be->ops->release(be, a);
    be->ops->release(be, b);
    return best;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *dev = "cuda:0", *batches = "1,64";
    int steps = 32, prompt = 32, threads = 0, copy_mib = 1024;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--device")) dev = argv[i + 1];
        else if (!strcmp(argv[i], "--batch")) batches = argv[i + 1];
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prompt")) prompt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--copy-mib")) copy_mib = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "eng_gpu_bench: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!dir || steps < 1 || prompt < 1) {
        fprintf(stderr, "usage: eng_gpu_bench --model DIR [--device cuda:0] [--batch 1,64] [--steps 32] [--prompt 32]\n");
        return 2;
    }
    char err[512];
    eng_load_opts_t o = {.device = dev, .n_threads = threads, .kv_bytes = (size_t)4 << 30};
    double t0 = now();
    eng_model_t *m = eng_model_load(dir, &o, err, sizeof err);
    if (!m) {
        fprintf(stderr, "eng_gpu_bench: %s\n", err);
        return 1;
    }
    const eng_model_info_t *info = eng_model_info(m);
    printf("model %s (%s, %d layers) on %s, loaded in %.1f s\n", dir, info->arch_name, info->n_layers,
           eng_model_backend(m), now() - t0);
    double bw = copy_bw(m->be, (size_t)(copy_mib > 0 ? copy_mib : 1) << 20);
    printf("copy bandwidth (device to device, read + write): %.1f GB/s\n", bw / 1e9);
    int rc = 0;
    char *bl = strdup(batches);
    for (char *tok = strtok(bl, ","); tok; tok = strtok(NULL, ",")) {
        int B = atoi(tok);
        if (B < 1) continue;
        eng_seq_t **seqs = calloc(B, sizeof *seqs);
        int32_t **ids = calloc(B, sizeof *ids);
        int *n = calloc(B, sizeof *n);
        float **lg = calloc(B, sizeof *lg);
        double *dt = calloc(steps, sizeof *dt), bytes = 0;
        for (int i = 0; i < B; i++) {
            seqs[i] = eng_seq_new(m, prompt + 2 * steps + 16);
            ids[i] = calloc(prompt, sizeof(int32_t));
            lg[i] = malloc((size_t)info->vocab_size * sizeof(float));
            for (int k = 0; k < prompt; k++) ids[i][k] = (int32_t)((i * 7919 + k * 104729 + 13) % info->vocab_size);
            n[i] = prompt;
        }
        if (eng_forward(m, seqs, (const int32_t *const *)ids, n, B, lg, err, sizeof err)) {
            fprintf(stderr, "eng_gpu_bench: prefill: %s\n", err);
            rc = 1;
            break;
        }
        /* 3 warm-up steps, the timed steps (no tracing: it reads the ids back every
         * layer), then 4 traced steps whose routed experts give the bytes per step */
        for (int s = -3; s < steps + 4; s++) {
            eng_model_set_trace(m, s >= steps);
            for (int i = 0; i < B; i++) { /* greedy next token */
                int best = 0;
                for (int v = 1; v < info->vocab_size; v++)
                    if (lg[i][v] > lg[i][best]) best = v;
                ids[i][0] = best;
                n[i] = 1;
            }
            double a = now();
            if (eng_forward(m, seqs, (const int32_t *const *)ids, n, B, lg, err, sizeof err)) {
                fprintf(stderr, "eng_gpu_bench: decode: %s\n", err);
                rc = 1;
                break;
            }
            double d = now() - a;
            if (s >= 0 && s < steps) dt[s] = d;
            if (s >= steps) {
                int T, K;
                const int32_t *tr = eng_model_trace(m, &T, &K);
                bytes += step_bytes(m, tr, T, K, B);
            }
        }
        if (rc) break;
        /* the same decode with the token sampled on the backend */
        double smed = -1;
        eng_model_set_trace(m, 0);
        if (eng_model_can_sample(m)) {
            eng_sample_req_t *rq = calloc(B, sizeof *rq), **rp = calloc(B, sizeof *rp);
            float **nol = calloc(B, sizeof *nol);
            double *sdt = calloc(steps, sizeof *sdt);
            for (int s = -2; s < steps && !rc; s++) {
                for (int i = 0; i < B; i++) {
                    if (s > -2) ids[i][0] = rq[i].id;
                    rq[i] = (eng_sample_req_t){.temperature = 0.8f, .top_p = 0.95f, .n_allowed = info->vocab_size,
                                               .u = (double)(((s + 3) * 31 + i * 7) % 97) / 97.0, .id = -1};
                    rp[i] = &rq[i];
                }
                double a = now();
                if (eng_forward_sample(m, seqs, (const int32_t *const *)ids, n, B, nol, rp, err, sizeof err)) {
                    fprintf(stderr, "eng_gpu_bench: sampled decode: %s\n", err);
                    rc = 1;
                }
                if (s >= 0) sdt[s] = now() - a;
            }
            if (!rc) {
                qsort(sdt, steps, sizeof *sdt, cmp_d);
                smed = sdt[steps / 2];
            }
            free(rq), free(rp), free(nol), free(sdt);
        }
        if (rc) break;
        bytes /= 4;
        qsort(dt, steps, sizeof *dt, cmp_d);
        double med = dt[steps / 2], tps = B / med, roof = B * bw / bytes;
        printf("batch %3d: %.2f ms/step median (best %.2f), %.1f tokens/s; %.1f MB of weights read per step; "
               "roofline %.1f tokens/s; %.0f%% of roofline\n",
               B, med * 1e3, dt[0] * 1e3, tps, bytes / 1e6, roof, 100 * tps / roof);
        if (smed > 0)
            printf("batch %3d: sampled on the backend (T 0.8, top_p 0.95, no logits copy): %.2f ms/step median, "
                   "%.1f tokens/s; %.0f%% of roofline\n", B, smed * 1e3, B / smed, 100 * B / smed / roof);
        char sj[32] = "null";
        if (smed > 0) snprintf(sj, sizeof sj, "%.4f", smed * 1e3);
        printf("{\"batch\":%d,\"ms_per_step\":%.4f,\"tokens_per_s\":%.2f,\"bytes_per_step\":%.0f,\"copy_bw_gbs\":%.1f,"
               "\"roofline_tokens_per_s\":%.2f,\"fraction_of_roofline\":%.4f,\"ms_per_step_sampled\":%s,"
               "\"backend\":\"%s\"}\n",
               B, med * 1e3, tps, bytes, bw / 1e9, roof, tps / roof, sj, eng_model_backend(m));
        fflush(stdout);
        for (int i = 0; i < B; i++) {
            eng_seq_free(seqs[i]);
            free(ids[i]);
            free(lg[i]);
        }
        free(seqs);
        free(ids);
        free(n);
        free(lg);
        free(dt);
    }
    free(bl);
    eng_model_free(m);
    return rc;
}
