/* eng_backend.c — the backend registry: `--device` names a backend and the
 * model gets it from here, never from a backend's own constructor.
 *
 * "cpu" is always built.  "cuda:N" is built with `make CUDA=1` (engine/cuda/):
 * the registry refers to eng_cuda_backend_new weakly, so one libeng serves
 * both builds and a CPU-only binary says that it lacks CUDA instead of failing
 * to link.  Also the portable weight-row widening the model uses at load. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg_err.h"
#include "eng_model_int.h"

/* Defined by engine/cuda/eng_cuda.cu when it is linked in. */
extern eng_backend_t *eng_cuda_backend_new(int dev, char *err, size_t errlen) __attribute__((weak));

static int cuda_built(void) { return eng_cuda_backend_new != NULL; }

const char *eng_backend_list(void) { return cuda_built() ? "cpu cuda:N" : "cpu cuda:N(not built: make CUDA=1)"; }

eng_backend_t *eng_backend_open(const char *device, int n_threads, char *err, size_t errlen) {
    if (!device || !*device || !strcmp(device, "cpu")) return eng_cpu_backend_new(n_threads, err, errlen);
    if (!strncmp(device, "cuda", 4) && (device[4] == 0 || device[4] == ':')) {
        int dev = 0;
        if (device[4] == ':') {
            char *end;
            long v = strtol(device + 5, &end, 10);
            if (end == device + 5 || *end || v < 0 || v > 1024) {
                tg_errf(err, errlen, "device '%s': want cuda:N with N a device index", device);
                return NULL;
            }
            dev = (int)v;
        }
        if (!cuda_built()) {
            tg_errf(err, errlen, "device '%s': this build has no CUDA backend (build with make CUDA=1)", device);
            return NULL;
        }
        return eng_cuda_backend_new(dev, err, errlen);
    }
    tg_errf(err, errlen, "unknown device '%s' (known: %s)", device, eng_backend_list());
    return NULL;
}

void eng_w_row_f32(const eng_w_t *w, int64_t r, float *out) {
    int64_t C = w->cols;
    switch (w->dt) {
    case ENG_DT_F32:
        memcpy(out, (const float *)w->data + r * C, C * sizeof(float));
        break;
    case ENG_DT_BF16:
        for (int64_t c = 0; c < C; c++) out[c] = eng_bf16_to_f32(((const uint16_t *)w->data)[r * C + c]);
        break;
    case ENG_DT_F16:
        for (int64_t c = 0; c < C; c++) out[c] = eng_f16_to_f32(((const uint16_t *)w->data)[r * C + c]);
        break;
    case ENG_DT_F8_E4M3: {
        const uint8_t *s = (const uint8_t *)w->data + r * C;
        const float *sc = w->scale + (r / 128) * w->scale_cols;
        for (int64_t c = 0; c < C; c++) out[c] = eng_f8e4m3_to_f32(s[c]) * sc[c / 128];
        break;
    }
    case ENG_DT_I8: {
        const int8_t *s = (const int8_t *)w->data + r * C;
        const float *sc = w->scale + r * w->scale_cols;
        for (int64_t c = 0; c < C; c++) out[c] = (float)s[c] * sc[c / w->qblk];
        break;
    }
    default:
        memset(out, 0, C * sizeof(float));
    }
}
