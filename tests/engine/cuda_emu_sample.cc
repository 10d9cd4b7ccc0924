/* cuda_emu_sample.cc — the CUDA sampling kernel (engine/cuda/eng_cuda_sample_kernel.h)
 * run on the host, against the host sampler (eng_sample_pick_u), on every
 * machine (no GPU or nvcc needed).
 *
 * Emulation (tests/engine/cuda_emu.h): a block is 512 host threads running the
 * kernel's own source, barriers and shuffles emulated.  What this does not
 * check: the device's own maths library (exp), memory ordering beyond
 * barriers, launch limits (registers: ptxas -v reports 62 per thread at 512
 * threads), which the GPU run (eng_ops_test compare on cuda:0, "sample/ids")
 * covers.
 *
 * Cases: rows of 5, 37, 1,000 and 129,280 ids (fewer ids than threads, chunk
 * boundaries), flat and peaked logits, -inf and NaN entries, ties, all -inf,
 * every parameter path; ids and "draw used" must equal the host's. */
#include "cuda_emu.h"

extern "C" {
#include "eng_sample.h"
}

#include "../../engine/cuda/eng_cuda_sample_kernel.h"

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
    if (emu_launch(rows, SNT, 0, [&] { k_sample(l, V, rq, prob, out); })) exit(1);
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
