/* eng_cuda_route.cu — the MoE gate on the device, one warp per token: scores
 * (sigmoid, or softmax), + e_score_correction_bias for selection, group-limited
 * top-k (group score = sum of the top 2 biased scores with a bias, max without),
 * top-k by biased score with ties to the lower id, weights from the unbiased
 * scores, renormalised and scaled.  The same rules, in the same order, as the
 * CPU's route1 (engine/cpu/eng_cpu.c); NaN scores take the lowest unused id. */
#include "eng_cuda-int.h"

#include "eng_cuda_route_kernel.h"

int eng_cuda_route(eng_backend_t *be, const eng_route_t *r, const float *logits, int T, int32_t *sel, float *wts) {
    cu_be_t *b = (cu_be_t *)be;
    if (T <= 0) return 0;
    if (r->topk > 32 || r->n_group > 256 || r->E <= 0) {
        fprintf(stderr, "cuda: %s:%d: router shape not supported (E %d, top-k %d, groups %d)\n", __FILE__, __LINE__,
                r->E, r->topk, r->n_group);
        return -1;
    }
    size_t smem = (size_t)RT_WARPS * (2 * r->E + r->n_group) * sizeof(float);
    CU_LAUNCH(k_route, (T + RT_WARPS - 1) / RT_WARPS, RT_WARPS * 32, smem, b->st, *r, logits, T, sel, wts);
    CU_LAUNCHED();
    return 0;
}
