/* eng_cuda_attn.cu — attention over the paged KV cache on the device.
 *
 * MLA, absorbed (decode and prefill alike; REFERENCE-DEEPSEEK.md):
 *   1. q_lat [T][H][c] = W_k_h^T q_nope_h            one block per (token, head)
 *   2. s_p = (q_lat . ckv_p + q_pe . kpe_p) * scale, p < len (causal), softmax in
 *      fp32, o_lat = sum_p prob_p ckv_p               one block per (token, head)
 *   3. out [T][H][dv] = W_v_h o_lat_h                one block per (token, head)
 * GQA: one block per (token, head): scores, softmax, weighted sum of values.
 * The cache is read through each token's block table (copied to the device
 * once per call with the tokens' lengths). */
#include <stdlib.h>
#include <string.h>

#include "eng_cuda-int.h"
#include "eng_cuda_attn_kernel.h"

/* Build the token table on the host and copy it (with the block tables) to the
 * device; checks that all sequences share one cache layout. */
static int pages_up(cu_be_t *b, const eng_attn_seq_t *seqs, int nseq, int *T_out, int *maxlen, pages_t *P) {
    int T = 0, nb = 0;
    *maxlen = 0;
    for (int i = 0; i < nseq; i++) {
        if (seqs[i].tok0 + seqs[i].n > T) T = seqs[i].tok0 + seqs[i].n;
        int len = seqs[i].pos0 + seqs[i].n;
        if (len > *maxlen) *maxlen = len;
        nb += (len + seqs[i].B - 1) / seqs[i].B;
        if (seqs[i].B != seqs[0].B || seqs[i].stride != seqs[0].stride || seqs[i].k != seqs[0].k ||
            seqs[i].v != seqs[0].v) {
            fprintf(stderr, "cuda: %s:%d: sequences of one call must share the cache layout\n", __FILE__, __LINE__);
            return -1;
        }
    }
    *T_out = T;
    if (!T) return 0;
    size_t n = 2 * (size_t)T + nb;
    int32_t *h = (int32_t *)malloc(n * sizeof(int32_t));
    if (!h) return -1;
    for (int i = 0, off = 2 * T; i < nseq; i++) {
        const eng_attn_seq_t *s = &seqs[i];
        int len = s->pos0 + s->n, nbl = (len + s->B - 1) / s->B;
        for (int k = 0; k < s->n; k++) {
            h[2 * (s->tok0 + k)] = s->pos0 + k + 1;
            h[2 * (s->tok0 + k) + 1] = off - 2 * T;
        }
        memcpy(h + off, s->blocks, nbl * sizeof(int32_t));
        off += nbl;
    }
    /* every layer of a forward passes the same tables: upload only when they change */
    int32_t *d = (int32_t *)eng_cuda_scratch(b, SCR_ATT2, n * sizeof(int32_t));
    if (!d) {
        free(h);
        return -1;
    }
    if (!(b->pages_h && b->pages_n == n && !memcmp(b->pages_h, h, n * sizeof(int32_t)))) {
        if (eng_cuda_h2d(b, d, h, n * sizeof(int32_t))) {
            free(h);
            return -1;
        }
        free(b->pages_h);
        b->pages_h = h; /* kept: the next call compares against it */
        b->pages_n = n;
    } else {
        free(h);
    }
    P->tokinfo = d;
    P->blocks = d + 2 * T;
    P->k = seqs[0].k;
    P->v = seqs[0].v;
    P->B = seqs[0].B;
    P->stride = (int64_t)seqs[0].stride;
    return 0;
}

int eng_cuda_attn_mla(eng_backend_t *be, const eng_w_t *kv_b, int H, int dn, int dr, int dv, int c, float scale,
                      const float *q, const eng_attn_seq_t *seqs, int nseq, float *out) {
    cu_be_t *b = (cu_be_t *)be;
    int T, maxlen;
    pages_t P;
    if (pages_up(b, seqs, nseq, &T, &maxlen, &P)) return -1;
    if (!T) return 0;
    size_t lat = (size_t)T * H * c * sizeof(float), scn = (size_t)T * H * maxlen * sizeof(float);
    char *p = (char *)eng_cuda_scratch(b, SCR_ATT, 2 * lat + scn);
    if (!p) return -1;
    float *qlat = (float *)p, *olat = (float *)(p + lat), *sc = (float *)(p + 2 * lat);
    cu_w_t w = cu_w(kv_b);
    CU_LAUNCH(k_mla_qlat, T * H, AT_THREADS, dn * sizeof(float), b->st, w, q, H, dn, dr, dv, c, qlat);
    CU_LAUNCHED();
    CU_LAUNCH(k_mla_core, T * H, AT_THREADS, (c + dr) * sizeof(float), b->st, P, q, qlat, H, dn, dr, c, scale, maxlen, sc, olat);
    CU_LAUNCHED();
    CU_LAUNCH(k_mla_out, T * H, AT_THREADS, 0, b->st, w, olat, H, dn, dv, c, out);
    CU_LAUNCHED();
    return 0;
}

int eng_cuda_attn_gqa(eng_backend_t *be, int H, int kvh, int hd, float scale, const float *q,
                      const eng_attn_seq_t *seqs, int nseq, float *out) {
    cu_be_t *b = (cu_be_t *)be;
    int T, maxlen;
    pages_t P;
    if (pages_up(b, seqs, nseq, &T, &maxlen, &P)) return -1;
    if (!T) return 0;
    float *sc = (float *)eng_cuda_scratch(b, SCR_ATT, (size_t)T * H * maxlen * sizeof(float));
    if (!sc) return -1;
    CU_LAUNCH(k_gqa, T * H, AT_THREADS, hd * sizeof(float), b->st, P, q, H, kvh, hd, scale, maxlen, sc, out);
    CU_LAUNCHED();
    return 0;
}
