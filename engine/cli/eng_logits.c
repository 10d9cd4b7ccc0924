/* eng_logits.c — `tollgate-engine logits --model DIR [--top K] [--threads N] [--device D]`:
 * stdin one JSON array of token ids per line, each a fresh sequence; stdout
 * one JSON object per line with the last position's logits, either all of
 * them ({"logits":[...]}) or the K largest ({"top":[[id,logit],...]}, largest
 * first).  A bad line gives {"error":"..."} on stdout and exit status 1 at
 * the end; the other lines are still answered. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng.h"
#include "eng_cmd.h"

static int lg_usage(void) {
    fprintf(stderr, "usage: tollgate-engine logits --model DIR [--top K] [--threads N] [--int8] [--device cpu|cuda:N]\n");
    return 2;
}

static void print_error(const char *msg) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", msg);
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s ? s : "{\"error\":\"out of memory\"}");
    free(s);
    cJSON_Delete(o);
}

/* JSON has no NaN or infinity: those print as null (a broken checkpoint can produce them) */
static void put_num(float f) {
    if (isfinite(f)) printf("%.9g", f);
    else fputs("null", stdout);
}

int eng_cmd_logits(int argc, char **argv) {
    const char *dir = NULL, *device = "cpu";
    int top = 0, threads = 0, int8 = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--int8")) {
            int8 = 1;
            continue;
        }
        if (i + 1 >= argc) return lg_usage();
        if (!strcmp(argv[i], "--model")) dir = argv[++i];
        else if (!strcmp(argv[i], "--top")) top = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device")) device = argv[++i];
        else return lg_usage();
    }
    if (!dir || top < 0) return lg_usage();
    char err[512];
    eng_load_opts_t o = {.device = device, .n_threads = threads, .quant_int8 = int8};
    eng_model_t *m = eng_model_load(dir, &o, err, sizeof err);
    if (!m) {
        fprintf(stderr, "logits: %s\n", err);
        return 1;
    }
    const eng_model_info_t *info = eng_model_info(m);
    int V = info->vocab_size, status = 0;
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t *ids = NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (lg && (len = getline(&line, &cap, stdin)) >= 0) {
        if (len == 0 || (len == 1 && line[0] == '\n')) continue;
        cJSON *a = cJSON_ParseWithLength(line, (size_t)len);
        int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
        if (n <= 0) {
            print_error(n == 0 ? "empty id array" : "expected a JSON array of token ids");
            status = 1;
            cJSON_Delete(a);
            continue;
        }
        int32_t *ni = realloc(ids, n * sizeof *ids);
        if (!ni) {
            cJSON_Delete(a);
            break;
        }
        ids = ni;
        int k = 0, bad = 0;
        for (cJSON *e = a->child; e; e = e->next) {
            double d = cJSON_IsNumber(e) ? e->valuedouble : -1;
            if (d < 0 || d >= V || d != (int32_t)d) bad = 1;
            ids[k++] = bad ? 0 : (int32_t)d;
        }
        cJSON_Delete(a);
        if (bad) {
            snprintf(err, sizeof err, "token ids must be integers in [0,%d)", V);
            print_error(err);
            status = 1;
            continue;
        }
        eng_seq_t *s = eng_seq_new(m, 0);
        const int32_t *idp = ids;
        float *lp = lg;
        if (!s || eng_forward(m, &s, &idp, &n, 1, &lp, err, sizeof err)) {
            print_error(s ? err : "out of memory");
            status = 1;
            eng_seq_free(s);
            continue;
        }
        eng_seq_free(s);
        if (top > 0) {
            int K = top < V ? top : V;
            int *best = malloc(K * sizeof *best);
            if (!best) break;
            int nb = 0;
            for (int v = 0; v < V; v++) { /* insertion into a sorted list of K */
                if (nb == K && !(lg[v] > lg[best[K - 1]])) continue;
                int p = nb < K ? nb++ : K - 1;
                while (p > 0 && lg[v] > lg[best[p - 1]]) {
                    best[p] = best[p - 1];
                    p--;
                }
                best[p] = v;
            }
            fputs("{\"top\":[", stdout);
            for (int i = 0; i < nb; i++) {
                printf("%s[%d,", i ? "," : "", best[i]);
                put_num(lg[best[i]]);
                putchar(']');
            }
            fputs("]}\n", stdout);
            free(best);
        } else {
            fputs("{\"logits\":[", stdout);
            for (int v = 0; v < V; v++) {
                if (v) putchar(',');
                put_num(lg[v]);
            }
            fputs("]}\n", stdout);
        }
        fflush(stdout);
    }
    free(line);
    free(ids);
    free(lg);
    eng_model_free(m);
    return status;
}
