/* eng_cpu.h — the CPU backend's internals: thread pool and kernels.  Only
 * engine/cpu/ and the engine's tests include this. */
#ifndef ENG_CPU_H
#define ENG_CPU_H

#include <stdint.h>

#include "eng_model_int.h"

typedef struct eng_cpu_pool eng_cpu_pool_t;

/* n threads in all, the caller included (n <= 1: run inline). */
eng_cpu_pool_t *eng_cpu_pool_new(int n);
void eng_cpu_pool_free(eng_cpu_pool_t *p);
int eng_cpu_pool_size(const eng_cpu_pool_t *p);
void eng_cpu_pool_run(eng_cpu_pool_t *p, void (*fn)(void *arg, int i, int n), void *arg);

/* The instruction set the kernels chose at start-up: "avx512", "avx2" or "scalar".
 * TOLLGATE_ENGINE_ISA=scalar|avx2|avx512 forces a lower one. */
const char *eng_cpu_isa(void);

/* a [n] . b [n] in fp32, with an accumulation order that depends only on n. */
float eng_cpu_dot(const float *a, const float *b, int n);
/* y [n] += a * x [n] */
void eng_cpu_axpy(float *y, float a, const float *x, int n);

/* Y [n, rows r0..r1) = X [n, cols] @ W^T on the calling thread; ld = w->rows. */
void eng_cpu_matmul_rows(const eng_w_t *w, const float *x, int n, float *y, int64_t r0, int64_t r1,
                         float *rowbuf);

#endif
