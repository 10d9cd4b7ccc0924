/* tok_bench.c — the C side of the tokenizer benchmark: load time, memory, and
 * single-thread encode throughput on a text file of documents separated by
 * \f (the same documents the JS reference encodes).  Times are CPU time of
 * the thread (the reference side measures process CPU time likewise).
 *   usage: tok_bench TOKENIZER_JSON TEXT_FILE
 * prints: "c_load_ms X", "c_mem_mib Y", "c_mb_s Z", "c_count_mb_s W", "c_tokens N" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tok.h"

/* CPU time of this thread: one core's work, whatever else the machine runs */
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s TOKENIZER_JSON TEXT_FILE\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    if (!text || fread(text, 1, (size_t)len, f) != (size_t)len) return 2;
    fclose(f);

    char err[512];
    double best_load = 1e9, best_load_wall = 1e9;
    tok_t *t = NULL;
    for (int i = 0; i < 3; i++) { /* best of 3: the file is in the page cache */
        double t0 = now(), w0 = wall();
        tok_t *x = tok_load(argv[1], err, sizeof err);
        double dt = now() - t0, dw = wall() - w0;
        if (dw < best_load_wall) best_load_wall = dw;
        if (!x) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        if (dt < best_load) best_load = dt;
        tok_free(t);
        t = x;
    }
    /* document boundaries */
    size_t ndocs = 1;
    for (long i = 0; i < len; i++) ndocs += text[i] == '\f';
    size_t *start = malloc((ndocs + 1) * sizeof *start), k = 0;
    start[k++] = 0;
    for (long i = 0; i < len; i++)
        if (text[i] == '\f') start[k++] = (size_t)i + 1;
    start[k] = (size_t)len + 1;

    long tokens = 0;
    double best = 1e9, best_count = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        long tk = 0;
        for (size_t d = 0; d < ndocs; d++) {
            int32_t *ids = NULL;
            long n = tok_encode(t, text + start[d], start[d + 1] - 1 - start[d], 1, &ids);
            if (n < 0) return 1;
            tk += n;
            free(ids);
        }
        double dt = now() - t0;
        if (dt < best) best = dt;
        tokens = tk;
        t0 = now();
        for (size_t d = 0; d < ndocs; d++) tok_count(t, text + start[d], start[d + 1] - 1 - start[d], 1);
        dt = now() - t0;
        if (dt < best_count) best_count = dt;
    }
    double mb = (double)(len - (long)ndocs + 1) / 1048576.0;
    printf("c_load_ms %.1f\n", best_load * 1000);
    printf("c_load_wall_ms %.1f\n", best_load_wall * 1000);
    printf("c_mem_mib %.1f\n", (double)tok_mem(t) / 1048576.0);
    printf("c_mb_s %.3f\n", mb / best);
    printf("c_count_mb_s %.3f\n", mb / best_count);
    printf("c_tokens %ld\n", tokens);
    tok_free(t);
    free(start);
    free(text);
    return 0;
}
