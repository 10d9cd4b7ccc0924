/* eng_cuda_sample.cu — sampling on the device (the `sample` op): temperature,
 * top-k, top-p and the seeded draw with the host sampler's semantics
 * (eng_sample_pick_u, engine/sched/eng_sample.c), one block per row, so the
 * scheduler gets token ids back instead of a vocab-sized logits copy.
 *
 * Per row (na = ids allowed, SNT threads):
 *  1. best = argmax over [0, na): NaN never wins, lowest id on ties, 0 if all
 *     are NaN.  Greedy (T <= 0, top_p <= 0, top_k == 1, or logit[best] not
 *     finite): id = best and the draw is not used.
 *  2. p[i] = (float)exp((double)((l[i] - mx) * (1/T))) (NaN -> 0), into a
 *     scratch row; sum in double.
 *  3. Plain (top_p >= 1 and no top-k cut): the draw walks every id in id
 *     order, first id whose running mass exceeds u * sum (and p > 0); none:
 *     best.
 *  4. Otherwise ids with p > 0 get the key (bits(p) << 32 | ~id): a larger
 *     key comes first in the host's `before` order (higher p, then lower id);
 *     keys are distinct.  top-k: the K-th largest key, by an 8-pass radix
 *     select on counts.  top-p: the key at which the mass in key order first
 *     reaches top_p * mass(kept), by a radix select on masses in fixed point
 *     (integer atomics, so the result does not depend on thread timing).  The
 *     draw walks the kept set (keys >= the threshold) in id order; none (by
 *     rounding): its largest id.
 * Every reduction has a fixed shape, so a row's result is deterministic.
 *
 * Agreement with the host (same logits, same u): the same id except when a
 * decision lies within rounding of a boundary: u * mass within ~1e-15
 * (relative) of a running sum (double sums in another order), top_p * mass
 * within ~n * 2^-(63 - bits(n)) (~4e-9 for n = 129,280) of a cumulative mass
 * in key order (the fixed-point masses), or one of the few probabilities where
 * glibc's expf (< 0.502 ulp) and the correctly rounded exp differ by an ulp.
 * Each is a ~1e-8 event per draw or rarer. */
#include <stdlib.h>

#include "eng_cuda-int.h"

#include "eng_cuda_sample_kernel.h"

int eng_cuda_sample(eng_backend_t *be, const float *logits, int n, int vocab, eng_sample_req_t *req) {
    cu_be_t *b = (cu_be_t *)be;
    if (n <= 0) return 0;
    size_t rq_bytes = ((size_t)n * sizeof(cu_sreq_t) + 255) & ~(size_t)255;
    char *d = (char *)eng_cuda_scratch(b, SCR_SAMPLE, rq_bytes + (size_t)n * 2 * sizeof(int32_t));
    float *prob = (float *)eng_cuda_scratch(b, SCR_PROB, (size_t)n * vocab * sizeof(float));
    cu_sreq_t *h = (cu_sreq_t *)malloc((size_t)n * sizeof *h);
    int32_t *o = (int32_t *)malloc((size_t)n * 2 * sizeof *o);
    int rc = -1;
    if (!d || !prob || !h || !o) goto out;
    for (int i = 0; i < n; i++) {
        int na = req[i].n_allowed < vocab ? req[i].n_allowed : vocab;
        h[i] = (cu_sreq_t){req[i].temperature, req[i].top_p, req[i].top_k, na > 0 ? na : 0, req[i].u};
    }
    if (eng_cuda_h2d(b, d, h, (size_t)n * sizeof *h)) goto out;
    CU_LAUNCH(k_sample, n, SNT, 0, b->st, logits, vocab, (const cu_sreq_t *)d, prob, (int32_t *)(d + rq_bytes));
    {
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess) e = cudaMemcpyAsync(o, d + rq_bytes, (size_t)n * 2 * sizeof(int32_t),
                                                  cudaMemcpyDeviceToHost, b->st);
        if (e == cudaSuccess) e = cudaStreamSynchronize(b->st);
        if (e != cudaSuccess) {
            fprintf(stderr, "cuda: %s:%d: k_sample (%d rows of %d): %s (%d)\n", __FILE__, __LINE__, n, vocab,
                    cudaGetErrorString(e), (int)e);
            goto out;
        }
    }
    for (int i = 0; i < n; i++) {
        req[i].id = o[2 * i];
        req[i].used_u = o[2 * i + 1];
    }
    rc = 0;
out:
    free(h);
    free(o);
    return rc;
}
