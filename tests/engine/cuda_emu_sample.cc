/* cuda_emu_sample.cc — the CUDA sampling kernel (engine/cuda/eng_cuda_sample_kernel.h)
 * run on the host, against the host sampler (eng_sample_pick_u), on every
 * machine (no GPU or nvcc needed).
 *
 * Emulation: a block is 512 host threads (one per CUDA thread) running the
 * kernel's own source; __syncthreads is a barrier of the block,
 * __shfl_down_sync an exchange with a barrier of the warp, __shared__
 * variables are statics (one block runs at a time), atomicAdd a host atomic.
 * A barrier the kernel reaches on some threads only would hang: the test runs
 * under a timeout (make).  What this does not check: the device's own maths
 * library (exp), memory ordering beyond barriers, launch limits (registers:
 * ptxas -v reports 62 per thread at 512 threads), which the GPU run
 * (eng_ops_test compare on cuda:0, "sample/ids") covers.
 *
 * Cases: rows of 5, 37, 1,000 and 129,280 ids (fewer ids than threads, chunk
 * boundaries), flat and peaked logits, -inf and NaN entries, ties, all -inf,
 * every parameter path; ids and "draw used" must equal the host's. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "eng_sample.h"
}

/* ---- the CUDA built-ins the kernel uses ------------------------------------------ */

struct emu_dim3 {
    unsigned x, y, z;
};
static thread_local emu_dim3 emu_tid;
static emu_dim3 emu_bid;
#define threadIdx emu_tid
#define blockIdx emu_bid
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

static pthread_barrier_t emu_block_bar;
static pthread_barrier_t emu_warp_bar[32];
static uint64_t emu_xchg[1024];

static inline void __syncthreads() { pthread_barrier_wait(&emu_block_bar); }
template <typename T> static T __shfl_down_sync(unsigned, T v, int o) {
    unsigned t = threadIdx.x, w = t / 32, l = t % 32;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    emu_xchg[t] = bits;
    pthread_barrier_wait(&emu_warp_bar[w]);
    T r = v;
    if (l + o < 32) memcpy(&r, &emu_xchg[t + o], sizeof r);
    pthread_barrier_wait(&emu_warp_bar[w]);
    return r;
}
static inline unsigned long long atomicAdd(unsigned long long *a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline unsigned long long __double2ull_rn(double d) { return (unsigned long long)nearbyint(d); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }

#include "../../engine/cuda/eng_cuda_sample_kernel.h"

/* ---- a launch: one block at a time, SNT threads ------------------------------------ */

struct emu_args {
    const float *logits;
    int ld;
    const cu_sreq_t *rq;
    float *prob;
    int32_t *out;
    unsigned tid;
};

static void *emu_thread(void *a) {
    emu_args *e = (emu_args *)a;
    emu_tid.x = e->tid;
    k_sample(e->logits, e->ld, e->rq, e->prob, e->out);
    return NULL;
}

static int emu_launch(int rows, const float *logits, int ld, const cu_sreq_t *rq, float *prob, int32_t *out) {
    static emu_args args[SNT];
    static pthread_t th[SNT];
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 256 * 1024);
    for (int b = 0; b < rows; b++) {
        emu_bid.x = (unsigned)b;
        pthread_barrier_init(&emu_block_bar, NULL, SNT);
        for (int w = 0; w < SNT / 32; w++) pthread_barrier_init(&emu_warp_bar[w], NULL, 32);
        for (int t = 0; t < SNT; t++) {
            args[t] = emu_args{logits, ld, rq, prob, out, (unsigned)t};
            if (pthread_create(&th[t], &at, emu_thread, &args[t])) {
                fprintf(stderr, "cuda_emu_sample: pthread_create failed\n");
                return -1;
            }
        }
        for (int t = 0; t < SNT; t++) pthread_join(th[t], NULL);
        pthread_barrier_destroy(&emu_block_bar);
        for (int w = 0; w < SNT / 32; w++) pthread_barrier_destroy(&emu_warp_bar[w]);
    }
    pthread_attr_destroy(&at);
    return 0;
}

/* ---- cases ---------------------------------------------------------------------------- */

static uint64_t rs = 0x1234567;
static double urand(void) { /* [0, 1) */
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}

static int checks, fails;

static void run(int rows, int V, int na, float scale, int special) {
    static const struct {
        float t, p;
        int k;
    } pr[10] = {{0, 1, 0},    {1, 1, 0},      {0.7f, 1, 40},   {1, 0.9f, 0},   {0.8f, 0.95f, 50},
                {1.2f, 1e-4f, 0}, {1, 0.5f, 1 << 30}, {0.6f, 1, 1}, {2, 0.3f, 3}, {0.9f, 1, 7}};
    float *l = (float *)malloc((size_t)rows * V * sizeof(float));
    float *prob = (float *)malloc((size_t)rows * V * sizeof(float));
    cu_sreq_t *rq = (cu_sreq_t *)malloc((size_t)rows * sizeof *rq);
    int32_t *out = (int32_t *)malloc((size_t)rows * 2 * sizeof(int32_t));
    for (int r = 0; r < rows; r++) {
        float *row = l + (size_t)r * V;
        for (int i = 0; i < V; i++) row[i] = (float)(urand() * 2 - 1) * scale;
        if (special == 1) /* coarse values: many ties */
            for (int i = 0; i < V; i++) row[i] = floorf(row[i]);
        if (special == 2 && r % 3 == 0)
            for (int i = 0; i < V; i += 3) row[i] = -INFINITY;
        if (special == 2 && r % 4 == 1) row[r % V] = NAN;
        if (special == 3 && r % 5 == 0) /* all -inf, or NaN then -inf: greedy by the NaN rule */
            for (int i = 0; i < V; i++) row[i] = i == 0 && r % 2 ? NAN : -INFINITY;
        rq[r] = cu_sreq_t{pr[r % 10].t, pr[r % 10].p, pr[r % 10].k, na, urand()};
    }
    memset(out, 0xff, (size_t)rows * 2 * sizeof(int32_t));
    if (emu_launch(rows, l, V, rq, prob, out)) exit(1);
    eng_sampler_t *s = eng_sampler_new(na);
    int bad = 0;
    for (int r = 0; r < rows; r++) {
        eng_sample_params_t p = {};
        p.temperature = rq[r].temperature;
        p.top_p = rq[r].top_p;
        p.top_k = rq[r].top_k;
        int used = -1;
        int32_t id = eng_sample_pick_u(s, l + (size_t)r * V, &p, rq[r].u, &used);
        checks++;
        if (id != out[2 * r] || used != out[2 * r + 1]) {
            bad++;
            fprintf(stderr, "cuda_emu_sample: V=%d na=%d row %d (T=%g top_p=%g top_k=%d u=%.17g): host %d/%d, kernel %d/%d\n",
                    V, na, r, rq[r].temperature, rq[r].top_p, rq[r].top_k, rq[r].u, id, used, out[2 * r],
                    out[2 * r + 1]);
        }
    }
    fails += bad;
    printf("cuda_emu_sample: %d rows of %d ids (%d allowed, scale %g, case %d): %d differ\n", rows, V, na, scale,
           special, bad);
    eng_sampler_free(s);
    free(l), free(prob), free(rq), free(out);
}

int main(void) {
    run(10, 5, 5, 2, 0);
    run(10, 37, 30, 3, 2);
    run(10, 1000, 1000, 4, 1);
    run(20, 1000, 997, 8, 2);
    run(10, 1000, 1000, 1, 3);
    run(10, 129280, 129000, 6, 2);
    run(10, 129280, 129280, 20, 0);
    printf("cuda_emu_sample: %d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}
