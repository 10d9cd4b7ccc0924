/* eng_cpu.c — the CPU backend: the ops table of eng_model_int.h over a thread
 * pool.  Matmuls split output rows between threads; attention splits heads.
 * Every output value is computed by one thread in an order fixed by the
 * shapes alone, so results do not depend on the thread count or the batch.
 * Backend memory is host memory: uploads are zero-copy (weights stay in the
 * mapping; on the amx level bf16 weights are re-laid once into AMX tiles), the
 * KV pool is one anonymous mapping.  The per-token glue (norms,
 * RoPE, routing, SwiGLU, the combine) runs on the calling thread: O(hidden)
 * per token. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "eng_cpu.h"

typedef struct {
    eng_backend_t base;
    eng_cpu_pool_t *pool;
    float **rowbuf;     /* [n_threads] per-thread row buffers, grown on demand */
    size_t *rowcap;
    void *arena;        /* the MoE op's scratch, grown on demand (never shrinks) */
    size_t arena_cap;
    char desc[64];
    void *xbuf;         /* prepared activations of one matmul step (eng_cpu_xprep), grown on demand */
    size_t xcap;
    struct cpu_wbuf { void *p; size_t n, used; } *wbufs; /* slabs of weights re-laid at upload (amx tiles), unmapped at free */
    int n_wbufs, cap_wbufs;
} cpu_be_t;

static eng_cpu_pool_t *pool_of(eng_backend_t *be) { return ((cpu_be_t *)be)->pool; }

/* ---- element-wise work split between the threads --------------------------- */

/* fn(ctx, a, b) over [0, n) in chunks taken from a shared counter; each
 * element's value is computed the same way whichever thread takes it.  At
 * 256 tokens a MoE layer's SwiGLU (2M expf), its gather and its combine took
 * ~14% of a prefill on the calling thread alone. */
typedef struct {
    size_t n, chunk, next;
    void (*fn)(void *ctx, size_t a, size_t b);
    void *ctx;
} par_job_t;

static void par_worker(void *arg, int t, int nt) {
    par_job_t *p = arg;
    for (;;) {
        size_t a = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED) * p->chunk;
        if (a >= p->n) break;
        p->fn(p->ctx, a, a + p->chunk < p->n ? a + p->chunk : p->n);
    }
}

static void par_for(eng_backend_t *be, size_t n, size_t chunk, void (*fn)(void *, size_t, size_t), void *ctx) {
    if (n <= chunk) {
        if (n) fn(ctx, 0, n);
        return;
    }
    par_job_t p = {n, chunk, 0, fn, ctx};
    eng_cpu_pool_run_any(pool_of(be), par_worker, &p);
}

/* ---- matmul ---------------------------------------------------------------- */

typedef struct {
    const eng_mm_t *jobs;
    int njobs;
    const int64_t *chunk_rows;  /* [njobs] rows per chunk of each job (a multiple of 16) */
    const int64_t *first;       /* [njobs + 1] index of each job's first chunk; first[njobs] = all */
    const void **xp;            /* [njobs] each job's prepared activations, or NULL */
    int64_t next;               /* the next chunk to take (atomic) */
    int failed;                 /* a thread could not get its row buffer (atomic) */
    cpu_be_t *be;
} mm_job_t;

/* Threads take chunks of rows from all jobs in order, each the next free one
 * (an atomic counter): one parallel step for a whole MoE layer's experts
 * instead of one per matrix, and a thread that the host slows down takes
 * fewer chunks instead of holding the others at the barrier.  Which thread
 * computes a row never changes its value: each output element is one dot
 * product by one thread, in an order fixed by the shapes. */
static void mm_worker(void *arg, int t, int nt) {
    mm_job_t *J = arg;
    int j = 0;
    for (;;) {
        int64_t c = __atomic_fetch_add(&J->next, 1, __ATOMIC_RELAXED);
        if (c >= J->first[J->njobs]) break;
        while (c >= J->first[j + 1]) j++; /* chunks are taken in increasing order */
        const eng_mm_t *m = &J->jobs[j];
        int64_t R = m->w->rows, r0 = (c - J->first[j]) * J->chunk_rows[j];
        int64_t r1 = r0 + J->chunk_rows[j] < R ? r0 + J->chunk_rows[j] : R;
        size_t need = eng_cpu_rowbuf_floats(m->w, m->n);
        if (need > J->be->rowcap[t]) {
            free(J->be->rowbuf[t]);
            J->be->rowbuf[t] = eng_alloc(need * sizeof(float));
            J->be->rowcap[t] = J->be->rowbuf[t] ? need : 0;
            if (!J->be->rowbuf[t]) {
                __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
                continue; /* take the remaining chunks off the counter, compute nothing */
            }
        }
        eng_cpu_matmul_rows(m->w, m->x, J->xp[j], m->n, m->y, r0, r1, J->be->rowbuf[t]);
    }
}

typedef struct {
    const eng_mm_t *jobs;
    const int32_t *const *xrows; /* [njobs] the rows of x each job's tokens are (NULL: all in order), or NULL */
    const void **xp;
    const int *own;      /* the jobs that prepare their x (the others share one) */
    const int *first;    /* [nown + 1] each one's first unit: a group of 16 tokens */
    int nown;
} prep_job_t;

static void prep_units(void *ctx, size_t a, size_t b) {
    prep_job_t *p = ctx;
    int k = 0;
    for (size_t u = a; u < b; u++) {
        while ((size_t)p->first[k + 1] <= u) k++;
        const eng_mm_t *m = &p->jobs[p->own[k]];
        int g = (int)u - p->first[k];
        eng_cpu_xprep_groups(m->w, m->x, p->xrows ? p->xrows[p->own[k]] : NULL, m->n, (void *)p->xp[p->own[k]], g,
                             g + 1);
    }
}

/* The activations some kernels want prepared (eng_cpu_xprep), once per
 * distinct x of the step, into the backend's buffer: xp[j] for each job.
 * xrows (or NULL): job j's token i is row xrows[j][i] of its x. */
static int prep_x(cpu_be_t *b, const eng_mm_t *jobs, const int32_t *const *xrows, int njobs, const void **xp) {
    size_t need = 0, off = 0, work = 0;
    for (int j = 0; j < njobs; j++) need += (eng_cpu_xprep_bytes(jobs[j].w, jobs[j].n) + 63) / 64 * 64;
    if (need > b->xcap) {
        free(b->xbuf);
        b->xcap = 0;
        if (!(b->xbuf = eng_alloc(need + 64))) return -1;
        b->xcap = need;
    }
    int small[2 * 64 + 1], *own = small;
    if (njobs > 64 && !(own = eng_alloc((2 * (size_t)njobs + 1) * sizeof *own))) return -1;
    int *first = own + njobs, nown = 0;
    char *base = (char *)(((uintptr_t)b->xbuf + 63) / 64 * 64);
    first[0] = 0;
    for (int j = 0; j < njobs; j++) {
        size_t sz = eng_cpu_xprep_bytes(jobs[j].w, jobs[j].n);
        xp[j] = NULL;
        if (!sz) continue;
        for (int i = 0; i < j && !xp[j]; i++) /* gate and up share their x (prepared alike: AMX or VNNI's blocks) */
            if (xp[i] && jobs[i].x == jobs[j].x && (!xrows || xrows[i] == xrows[j]) && jobs[i].n == jobs[j].n &&
                jobs[i].w->cols == jobs[j].w->cols &&
                jobs[i].w->dt == jobs[j].w->dt && jobs[i].w->layout == jobs[j].w->layout &&
                jobs[i].w->qblk == jobs[j].w->qblk)
                xp[j] = xp[i];
        if (xp[j]) continue;
        xp[j] = base + off;
        off += (sz + 63) / 64 * 64;
        own[nown] = j;
        first[nown + 1] = first[nown] + (jobs[j].n + 15) / 16;
        nown++;
        work += (size_t)jobs[j].n * jobs[j].w->cols;
    }
    /* the threads share a large preparation (prefill: ~10% of it on one thread) */
    prep_job_t p = {jobs, xrows, xp, own, first, nown};
    if (work >= (64u << 10) && first[nown] > 1) par_for(&b->base, first[nown], 1, prep_units, &p);
    else if (first[nown]) prep_units(&p, 0, first[nown]);
    if (own != small) free(own);
    return 0;
}

/* xrows: as prep_x's, only for jobs whose x is prepared (the others read x in place) */
static int mm_multi(eng_backend_t *be, const eng_mm_t *jobs, const int32_t *const *xrows, int njobs) {
    int64_t small[3 * 64 + 1], *buf = small;
    if (njobs > 64 && !(buf = eng_alloc((3 * (size_t)njobs + 1) * sizeof *buf))) return -1;
    const void **xp = (const void **)(buf + 2 * njobs + 1);
    mm_job_t J = {jobs, njobs, buf, buf + njobs, xp, 0, 0, (cpu_be_t *)be};
    int64_t *cr = buf, *first = buf + njobs;
    first[0] = 0;
    for (int j = 0; j < njobs; j++) {
        int64_t R = jobs[j].w->rows, per = jobs[j].w->cols * (int64_t)jobs[j].n;
        cr[j] = eng_cpu_chunk_rows(jobs[j].w, jobs[j].n);
        first[j + 1] = first[j] + (per > 0 && R > 0 ? (R + cr[j] - 1) / cr[j] : 0);
    }
    /* one chunk (a router, a small projection at batch 1): the caller alone;
     * through the pool a worker that joins and is then descheduled before it
     * finds nothing left would hold the step for a time slice */
    if (prep_x((cpu_be_t *)be, jobs, xrows, njobs, xp)) J.failed = 1;
    else if (first[njobs] == 1) mm_worker(&J, 0, 1);
    else if (first[njobs]) eng_cpu_pool_run_any(pool_of(be), mm_worker, &J);
    if (buf != small) free(buf);
    return J.failed ? -1 : 0;
}

static int cpu_matmul_multi(eng_backend_t *be, const eng_mm_t *jobs, int njobs) {
    return mm_multi(be, jobs, NULL, njobs);
}

static int cpu_matmul(eng_backend_t *be, const eng_w_t *w, const float *x, int n, float *y) {
    eng_mm_t j = {w, x, n, y};
    return cpu_matmul_multi(be, &j, 1);
}

/* ---- attention ---------------------------------------------------------------- */

static void softmax_inplace(float *s, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = s[i] > mx ? s[i] : mx;
    float sum = 0;
    for (int i = 0; i < n; i++) {
        s[i] = expf(s[i] - mx);
        sum += s[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < n; i++) s[i] *= inv;
}

/* MLA, absorbed, in three parallel steps per layer:
 *  1. q_lat [T][H][c]: q_lat_h = W_k_h^T q_nope_h          (threads split heads)
 *  2. o_lat [T][H][c]: for each token, ONE pass over its latent cache for all
 *     heads: each row ckv_t|kpe_t is loaded once per tile of positions and
 *     used by every head for the score s_h = (q_lat_h.ckv_t + q_pe_h.kpe_t) *
 *     scale and for the sum o_h += p_h ckv_t, with a running (online) softmax.
 *     Positions are cut into spans of ATT_SPAN fixed by position (0, SPAN,
 *     2 SPAN, ...); each span's partial (max, sum, o) is computed alone and the
 *     partials are folded in span order.  So a token's numbers depend only on
 *     its position and its cache, never on the batch, the chunking of a
 *     prompt or the threads: work items are (token, span) pairs when there
 *     are few tokens (one long-context decode uses every thread), else
 *     whole tokens, and both fold the same partials the same way.
 *  3. out [T][H][dv]: out_h = W_v_h o_lat_h                  (threads split heads) */

#define ATT_SPAN 1024 /* positions per span (a multiple of every block size) */

typedef struct {
    const eng_w_t *kv_b;
    int H, dn, dr, dv, c;
    float scale;
    const float *q;
    const eng_attn_seq_t *seqs;
    int nseq, T, maxlen;
    float *out;
    int kvh, hd; /* GQA */
    /* MLA */
    float *qlat, *olat;      /* [T][H][c] */
    int32_t *tok_seq;        /* [T] sequence of each token */
    int32_t *item_tok, *item_span; /* work slots (token, span; span -1 = all spans) */
    int hg;                  /* head groups per slot: item = slot * hg + group */
    int n_items;
    float *part;             /* [slots][H][c+2] partials, span mode */
    float **scratch;         /* per thread: two [H][c+2] partials, [2 H][B] scores (latent parts, rope parts) */
    int64_t next;            /* next work item (atomic) */
    int next_h[2];           /* next head of the q_lat / out step (atomic) */
    int failed;
} attn_job_t;

static int spans_of(int len) { return (len + ATT_SPAN - 1) / ATT_SPAN; }

/* A head's rows of kv_b against each token's vectors: bf16 rows in AMX tiles
 * are read in place (a head's 64 rows are 32 KB: they stay in L1 across the
 * tokens), other weights are decoded row by row into the thread's scratch.
 * With one pass over the rows per token inside the row loop, a prefill of
 * 256 tokens re-read 256 KB of q_lat (or o_lat) from L2 per row. */
static void mla_qlat_worker(void *arg, int t, int nt) {
    attn_job_t *j = arg;
    int c = j->c, dn = j->dn, dv = j->dv, T = j->T, H = j->H, qs = j->dn + j->dr;
    /* heads from a shared counter: any subset of the threads completes the step */
    for (int h; (h = __atomic_fetch_add(&j->next_h[0], 1, __ATOMIC_RELAXED)) < H;) {
        for (int i = 0; i < T; i++) memset(j->qlat + ((size_t)i * H + h) * c, 0, c * sizeof(float));
        eng_cpu_w_axpy_rows_multi(j->kv_b, (int64_t)h * (dn + dv), dn, j->q + h * qs, (size_t)H * qs, T,
                                  j->qlat + (size_t)h * c, (size_t)H * c, j->scratch[t]);
    }
}

static void mla_out_worker(void *arg, int t, int nt) {
    attn_job_t *j = arg;
    int c = j->c, dn = j->dn, dv = j->dv, T = j->T, H = j->H;
    for (int h; (h = __atomic_fetch_add(&j->next_h[1], 1, __ATOMIC_RELAXED)) < H;)
        eng_cpu_w_dot_rows_multi(j->kv_b, (int64_t)h * (dn + dv) + dn, dv, j->olat + (size_t)h * c, (size_t)H * c, T,
                                 j->out + h * dv, (size_t)H * dv, j->scratch[t]);
}

/* The partial of token i over positions [p0, p1): per head m (running max),
 * l (sum of exp) and o [c] (sum of exp * ckv), into part [H][c+2] laid out as
 * o[c], m, l.  qT: [ceil((h1 - h0) / 16)][c + dr][16] scratch for the queries
 * transposed (head h in lane (h - h0) % 16: q_lat_h, then q_pe_h), pbuf: 256
 * floats.  The cache is read in tiles of at most 16 rows within a block
 * (contiguous in memory), every group of 16 heads over each tile. */
static void mla_span(const attn_job_t *j, int i, int p0, int p1, int h0, int h1, float *part, float *qT,
                     float *pbuf) {
    const eng_attn_seq_t *s = &j->seqs[j->tok_seq[i]];
    int c = j->c, dr = j->dr, H = j->H, qs = j->dn + j->dr, W = c + dr, B = s->B;
    const float *qlat = j->qlat + (size_t)i * H * c;
    const float *q = j->q + (size_t)i * H * qs;
    for (int h = h0; h < h1; h++) {
        float *o = part + (size_t)h * (c + 2);
        memset(o, 0, c * sizeof(float));
        o[c] = -INFINITY;
        o[c + 1] = 0;
        float *t = qT + (size_t)(h - h0) / 16 * 16 * W + (h - h0) % 16;
        for (int d = 0; d < c; d++) t[16 * d] = qlat[(size_t)h * c + d];
        for (int d = 0; d < dr; d++) t[16 * (c + d)] = q[h * qs + j->dn + d];
    }
    for (int t0 = p0; t0 < p1;) {
        /* one tile: the rest of t0's block, at most 16 rows */
        int nj = B - t0 % B;
        if (nj > p1 - t0) nj = p1 - t0;
        if (nj > 16) nj = 16;
        const float *rows = eng_attn_row(s, s->k, t0, W), *next = NULL;
        int nn = 0; /* the next tile, fetched while this one is scored: the blocks lie anywhere in the pool */
        if (t0 + nj < p1) {
            next = eng_attn_row(s, s->k, t0 + nj, W);
            nn = B - (t0 + nj) % B < p1 - (t0 + nj) ? B - (t0 + nj) % B : p1 - (t0 + nj);
            nn = nn < 16 ? nn : 16;
        }
        for (int g = h0; g < h1; g += 16)
            eng_cpu_attn_tile16(qT + (size_t)(g - h0) * W, h1 - g < 16 ? h1 - g : 16, W, c, j->scale, rows, W, nj,
                                part + (size_t)g * (c + 2), c + 2, pbuf, g == h0 ? next : NULL,
                                g == h0 ? (size_t)nn * W * sizeof(float) : 0);
        t0 += nj;
    }
}

/* acc (heads h0..h1-1 of H partials) = fold(acc, part) */
static void mla_fold(float *acc, const float *part, int h0, int h1, int c) {
    for (int h = h0; h < h1; h++) {
        float *a = acc + (size_t)h * (c + 2);
        const float *b = part + (size_t)h * (c + 2);
        float m = a[c] > b[c] ? a[c] : b[c];
        float fa = expf(a[c] - m), fb = expf(b[c] - m);
        for (int e = 0; e < c; e++) a[e] = a[e] * fa + b[e] * fb;
        a[c + 1] = a[c + 1] * fa + b[c + 1] * fb;
        a[c] = m;
    }
}

static void mla_finish(const attn_job_t *j, int i, int h0, int h1, const float *acc) {
    int c = j->c, H = j->H;
    for (int h = h0; h < h1; h++) {
        const float *a = acc + (size_t)h * (c + 2);
        float inv = 1.0f / a[c + 1], *o = j->olat + ((size_t)i * H + h) * c;
        for (int e = 0; e < c; e++) o[e] = a[e] * inv;
    }
}

static int tok_len(const attn_job_t *j, int i) {
    const eng_attn_seq_t *s = &j->seqs[j->tok_seq[i]];
    return s->pos0 + (i - s->tok0) + 1;
}

static void mla_scores_worker(void *arg, int t, int nt) {
    attn_job_t *j = arg;
    int H = j->H, c = j->c;
    float *mine = j->scratch[t], *acc = mine + (size_t)H * (c + 2), *qT = acc + (size_t)H * (c + 2);
    float *pbuf = qT + (size_t)(H + 15) / 16 * 16 * (c + j->dr);
    for (;;) {
        int64_t it = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (it >= j->n_items) break;
        int64_t slot = it / j->hg;
        int hg = (int)(it % j->hg), h0 = H * hg / j->hg, h1 = H * (hg + 1) / j->hg;
        int i = j->item_tok[slot], sp = j->item_span[slot], len = tok_len(j, i);
        if (sp >= 0) { /* one span into its own partial slot (these heads' part of it) */
            int p0 = sp * ATT_SPAN, p1 = p0 + ATT_SPAN < len ? p0 + ATT_SPAN : len;
            mla_span(j, i, p0, p1, h0, h1, j->part + (size_t)slot * H * (c + 2), qT, pbuf);
            continue;
        }
        for (int k = 0, ns = spans_of(len); k < ns; k++) { /* the whole token, spans in order */
            int p0 = k * ATT_SPAN, p1 = p0 + ATT_SPAN < len ? p0 + ATT_SPAN : len;
            mla_span(j, i, p0, p1, h0, h1, k ? mine : acc, qT, pbuf);
            if (k) mla_fold(acc, mine, h0, h1, c);
        }
        mla_finish(j, i, h0, h1, acc);
    }
}

static int batch_shape(const eng_attn_seq_t *seqs, int nseq, int *maxlen) {
    int T = 0;
    *maxlen = 0;
    for (int i = 0; i < nseq; i++) {
        if (seqs[i].tok0 + seqs[i].n > T) T = seqs[i].tok0 + seqs[i].n;
        if (seqs[i].pos0 + seqs[i].n > *maxlen) *maxlen = seqs[i].pos0 + seqs[i].n;
    }
    return T;
}

static void scratch_free(attn_job_t *j, int nt) {
    for (int t = 0; j->scratch && t < nt; t++) free(j->scratch[t]);
    free(j->scratch);
    free(j->qlat);
    free(j->olat);
    free(j->tok_seq);
    free(j->item_tok);
    free(j->item_span);
    free(j->part);
}

static int cpu_attn_mla(eng_backend_t *be, const eng_w_t *kv_b, int H, int dn, int dr, int dv, int c,
                        float scale, const float *q, const eng_attn_seq_t *seqs, int nseq, float *out) {
    attn_job_t j = {.kv_b = kv_b, .H = H, .dn = dn, .dr = dr, .dv = dv, .c = c, .scale = scale, .q = q,
                    .seqs = seqs, .nseq = nseq, .out = out};
    j.T = batch_shape(seqs, nseq, &j.maxlen);
    if (!j.T) return 0;
    int nt = be->n_threads, T = j.T, rc = -1;
    /* partials, the queries transposed, the tile's weights */
    size_t per_thread = 2 * (size_t)H * (c + 2) + (size_t)(H + 15) / 16 * 16 * (c + dr) + 256;
    if (per_thread < (size_t)c) per_thread = c;
    j.scratch = calloc(nt, sizeof *j.scratch);
    j.qlat = eng_alloc((size_t)T * H * c * sizeof(float));
    j.olat = eng_alloc((size_t)T * H * c * sizeof(float));
    j.tok_seq = eng_alloc((size_t)T * sizeof(int32_t));
    if (!j.scratch || !j.qlat || !j.olat || !j.tok_seq) goto out;
    for (int t = 0; t < nt; t++)
        if (!(j.scratch[t] = eng_alloc(per_thread * sizeof(float)))) goto out;
    for (int si = 0; si < nseq; si++)
        for (int k = 0; k < seqs[si].n; k++) j.tok_seq[seqs[si].tok0 + k] = si;
    /* work items: (token, span) pairs when tokens alone cannot keep the
     * threads busy, else whole tokens */
    int64_t spans = 0;
    for (int i = 0; i < T; i++) spans += spans_of(tok_len(&j, i));
    int span_mode = T < 2 * nt && spans > T && spans * H * (c + 2) * sizeof(float) <= (64u << 20);
    int slots = span_mode ? (int)spans : T;
    /* and the heads in groups when the slots are still fewer than the threads
     * (a decode at batch 1 within one span): each head's numbers are its own */
    j.hg = slots < nt ? (nt < H ? nt : H) : 1;
    j.n_items = slots * j.hg;
    j.item_tok = eng_alloc((size_t)slots * sizeof(int32_t));
    j.item_span = eng_alloc((size_t)slots * sizeof(int32_t));
    if (!j.item_tok || !j.item_span) goto out;
    if (span_mode) {
        if (!(j.part = eng_alloc((size_t)slots * H * (c + 2) * sizeof(float)))) goto out;
        for (int i = 0, it = 0; i < T; i++)
            for (int k = 0, ns = spans_of(tok_len(&j, i)); k < ns; k++, it++) j.item_tok[it] = i, j.item_span[it] = k;
    } else {
        for (int i = 0; i < T; i++) j.item_tok[i] = i, j.item_span[i] = -1;
    }
    eng_cpu_pool_run_any(pool_of(be), mla_qlat_worker, &j);
    eng_cpu_pool_run_any(pool_of(be), mla_scores_worker, &j);
    if (span_mode) /* fold each token's span partials in order (the same fold as whole-token items) */
        for (int i = 0, it = 0; i < T; i++) {
            int ns = spans_of(tok_len(&j, i));
            float *acc = j.part + (size_t)it * H * (c + 2);
            for (int k = 1; k < ns; k++) mla_fold(acc, j.part + (size_t)(it + k) * H * (c + 2), 0, H, c);
            mla_finish(&j, i, 0, H, acc);
            it += ns;
        }
    eng_cpu_pool_run_any(pool_of(be), mla_out_worker, &j);
    rc = 0;
out:
    scratch_free(&j, nt);
    return rc;
}

/* GQA: head h reads kv head h / (H / kvh). */
static void gqa_worker(void *arg, int t, int nt) {
    attn_job_t *j = arg;
    int hd = j->hd, kvh = j->kvh, H = j->H, rep = H / kvh, W = kvh * hd;
    float *sc = j->scratch[t];
    for (int h = t; h < H; h += nt) {
        int g = h / rep;
        for (int si = 0; si < j->nseq; si++) {
            const eng_attn_seq_t *s = &j->seqs[si];
            for (int k = 0; k < s->n; k++) {
                int i = s->tok0 + k, len = s->pos0 + k + 1;
                const float *qh = j->q + (size_t)i * H * hd + h * hd;
                for (int p = 0; p < len; p++) sc[p] = eng_cpu_dot(qh, eng_attn_row(s, s->k, p, W) + g * hd, hd) * j->scale;
                softmax_inplace(sc, len);
                float *o = j->out + (size_t)i * H * hd + h * hd;
                memset(o, 0, hd * sizeof(float));
                for (int p = 0; p < len; p++) eng_cpu_axpy(o, sc[p], eng_attn_row(s, s->v, p, W) + g * hd, hd);
            }
        }
    }
}

static int cpu_attn_gqa(eng_backend_t *be, int H, int kvh, int hd, float scale, const float *q,
                        const eng_attn_seq_t *seqs, int nseq, float *out) {
    attn_job_t j = {.H = H, .kvh = kvh, .hd = hd, .scale = scale, .q = q, .seqs = seqs, .nseq = nseq,
                    .out = out};
    j.T = batch_shape(seqs, nseq, &j.maxlen);
    if (!j.T) return 0;
    int nt = be->n_threads, rc = -1;
    if (!(j.scratch = calloc(nt, sizeof *j.scratch))) return -1;
    for (int t = 0; t < nt; t++)
        if (!(j.scratch[t] = eng_alloc((j.maxlen + 1) * sizeof(float)))) goto out;
    eng_cpu_pool_run(pool_of(be), gqa_worker, &j);
    rc = 0;
out:
    scratch_free(&j, nt);
    return rc;
}

/* ---- memory ------------------------------------------------------------------ */

static const char *cpu_describe(eng_backend_t *be) {
    cpu_be_t *b = (cpu_be_t *)be;
    snprintf(b->desc, sizeof b->desc, "cpu/%s", eng_cpu_isa());
    return b->desc;
}

static void *cpu_alloc(eng_backend_t *be, size_t n) { return eng_alloc(n); }
static void cpu_release(eng_backend_t *be, void *p) { free(p); }


static int cpu_copy(eng_backend_t *be, void *dst, const void *src, size_t n) {
    if (n) memmove(dst, src, n);
    return 0;
}

/* Used in place, except bf16 weights on the amx and avx512bf16 levels:
 * re-laid once into AMX tiles (eng_cpu_amx.c) or groups of 16 rows
 * (eng_cpu_bf16.c), so that a matmul's tile loads read the weights in place
 * and a decode step streams each byte once, as one run per group.  The model
 * then drops the source's pages: one copy.
 *
 * The tiled copies are packed into slabs of WSLAB bytes (a larger weight gets
 * a slab of its own), each an anonymous mapping aligned to 2 MB and advised
 * onto transparent huge pages.  A mapping per weight left every weight under
 * 2 MB (attention's projections, the router) and the unaligned ends of the
 * larger ones on 4 KB pages: a batch-1 decode streamed those ~20% slower, and
 * a 1.5 MB projection took 188 us instead of ~100. */
#define WSLAB (64u << 20)
#define HUGE2M (2u << 20)

/* an anonymous mapping of n bytes (a multiple of 2 MB) starting on a 2 MB boundary */
static void *map_aligned(size_t n, int flags) {
    char *p = mmap(NULL, n + HUGE2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (p == MAP_FAILED) return NULL;
    char *a = (char *)(((uintptr_t)p + HUGE2M - 1) / HUGE2M * HUGE2M);
    if (a > p) munmap(p, (size_t)(a - p));
    if (a + n < p + n + HUGE2M) munmap(a + n, (size_t)(p + n + HUGE2M - (a + n)));
#ifdef MADV_HUGEPAGE
    madvise(a, n, MADV_HUGEPAGE); /* fewer TLB misses while streaming; advice only */
#endif
    return a;
}

/* The KV pool: reserved, not committed (pages arrive as blocks are first
 * written), on 2 MB pages like the weights.  On 4 KB pages attention's reads
 * of a block's rows (18 KB per layer for the bench model, blocks scattered
 * over the pool) missed the TLB on every page: with 16 decoding streams the
 * loads of the rows took 15% of a step. */
static size_t kv_map_bytes(size_t n) { return (n ? n : 1) + HUGE2M - 1 - ((n ? n : 1) + HUGE2M - 1) % HUGE2M; }

static void *cpu_kv_alloc(eng_backend_t *be, size_t n) { return map_aligned(kv_map_bytes(n), MAP_NORESERVE); }

static void cpu_kv_release(eng_backend_t *be, void *p, size_t n) {
    if (p) munmap(p, kv_map_bytes(n));
}

static int cpu_upload_w(eng_backend_t *be, eng_w_t *w) {
    cpu_be_t *b = (cpu_be_t *)be;
    size_t n = eng_cpu_w_relaid_bytes(w);
    if (!n) return 0;
    n = (n + 63) / 64 * 64;
    struct cpu_wbuf *last = b->n_wbufs ? &b->wbufs[b->n_wbufs - 1] : NULL;
    if (!last || last->n - last->used < n) { /* a new slab */
        if (b->n_wbufs == b->cap_wbufs) {
            int cap = b->cap_wbufs ? 2 * b->cap_wbufs : 16;
            struct cpu_wbuf *nb = realloc(b->wbufs, cap * sizeof *nb);
            if (!nb) return -1;
            b->wbufs = nb;
            b->cap_wbufs = cap;
        }
        size_t sz = n > WSLAB ? (n + HUGE2M - 1) / HUGE2M * HUGE2M : WSLAB;
        void *p = map_aligned(sz, 0);
        if (!p) return -1;
        b->wbufs[b->n_wbufs++] = (struct cpu_wbuf){p, sz, 0};
        last = &b->wbufs[b->n_wbufs - 1];
    }
    void *p = (char *)last->p + last->used;
    last->used += n;
    w->layout = eng_cpu_w_relay(w, p);
    w->data = p;
    return 0;
}
static const float *cpu_upload(eng_backend_t *be, const float *host, size_t n) { return host; }

/* ---- per-token glue ------------------------------------------------------------ */

static int cpu_embed(eng_backend_t *be, const eng_w_t *emb, const int32_t *ids, int T, float *x) {
    for (int t = 0; t < T; t++) eng_cpu_row_f32(emb, ids[t], x + (size_t)t * emb->cols);
    return 0;
}

/* out = x * rsqrt(mean(x^2) + eps) * w */
typedef struct {
    float *out;
    const float *x, *w, *y; /* y: added into x first (add_rmsnorm), or NULL */
    float *xa;              /* where x + y goes */
    int ldo, ldx, n;
    float eps;
} norm_job_t;

/* tokens a..b-1: [x += y,] out = x / rms(x) * w; a token's numbers are its own (the threads split tokens) */
static void norm_range(void *ctx, size_t a, size_t b) {
    norm_job_t *j = ctx;
    int n = j->n;
    for (size_t t = a; t < b; t++) {
        const float *xt = j->x + t * j->ldx;
        if (j->y) {
            float *xa = j->xa + t * j->ldx;
            const float *yt = j->y + t * j->ldx;
            for (int i = 0; i < n; i++) xa[i] += yt[i];
            xt = xa;
        }
        float *ot = j->out + t * j->ldo;
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (double)xt[i] * xt[i];
        float r = (float)(1.0 / sqrt(ss / n + j->eps));
        for (int i = 0; i < n; i++) ot[i] = xt[i] * r * j->w[i];
    }
}

static int cpu_rmsnorm(eng_backend_t *be, float *out, int ldo, const float *x, int ldx, const float *w, int T,
                       int n, float eps) {
    norm_job_t j = {out, x, w, NULL, NULL, ldo, ldx, n, eps};
    par_for(be, T, 8, norm_range, &j);
    return 0;
}

static int cpu_rope(eng_backend_t *be, float *x, int T, int ld, int nh, int hs, int off, int rd, int interleaved,
                    const int32_t *pos, const float *cos, const float *sin) {
    int half = rd / 2;
    for (int t = 0; t < T; t++) {
        const float *cs = cos + (size_t)pos[t] * half, *sn = sin + (size_t)pos[t] * half;
        for (int h = 0; h < nh; h++) {
            float *v = x + (size_t)t * ld + (size_t)h * hs + off;
            for (int i = 0; i < half; i++) {
                int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * cs[i] - x1 * sn[i];
                v[b] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
    return 0;
}

static int cpu_kv_store(eng_backend_t *be, float *cache, const int64_t *dst, const float *src, int lds, int width,
                        int T) {
    for (int t = 0; t < T; t++) memcpy(cache + dst[t], src + (size_t)t * lds, width * sizeof(float));
    return 0;
}

static int cpu_add(eng_backend_t *be, float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
    return 0;
}

static int cpu_add_rmsnorm(eng_backend_t *be, float *x, const float *y, const float *w, float *xn, int T, int n,
                           float eps) {
    norm_job_t j = {xn, x, w, y, x, n, n, n, eps};
    par_for(be, T, 8, norm_range, &j);
    return 0;
}

typedef struct {
    float *g;
    const float *u;
} swiglu_job_t;

static void swiglu_range(void *ctx, size_t a, size_t b) {
    swiglu_job_t *j = ctx;
    eng_cpu_swiglu(j->g + a, j->u + a, b - a);
}

static int cpu_swiglu(eng_backend_t *be, float *g, const float *u, size_t n) {
    swiglu_job_t j = {g, u};
    par_for(be, n, 16384, swiglu_range, &j);
    return 0;
}

static int cpu_gather(eng_backend_t *be, float *dst, const float *src, const int32_t *rows, int n, int width) {
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * width, src + (size_t)rows[i] * width, width * sizeof(float));
    return 0;
}

/* ---- routing ---------------------------------------------------------------------- */

/* Routing of one token: sel [k] expert ids, wt [k] weights; s, b [E] scratch. */
static void route1(const eng_route_t *c, const float *logit, int32_t *sel, float *wt, float *s, float *b) {
    int E = c->E, G = c->n_group, per = E / G;
    const float *bias = c->bias;
    if (c->sigmoid) {
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logit[e]));
    } else {
        float mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++) mx = fmaxf(mx, logit[e]);
        for (int e = 0; e < E; e++) sum += (s[e] = expf(logit[e] - mx));
        for (int e = 0; e < E; e++) s[e] /= sum;
    }
    for (int e = 0; e < E; e++) b[e] = bias ? s[e] + bias[e] : s[e];
    if (G > 1 && c->topk_group < G) {
        float gs[256];
        int keep[256];
        for (int g = 0; g < G; g++) {
            float m1 = -INFINITY, m2 = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (b[e] > m1) {
                    m2 = m1;
                    m1 = b[e];
                } else if (b[e] > m2) {
                    m2 = b[e];
                }
            }
            gs[g] = bias ? (per > 1 ? m1 + m2 : m1) : m1;
            keep[g] = 0;
        }
        for (int k = 0; k < c->topk_group; k++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
            keep[best] = 1;
        }
        for (int g = 0; g < G; g++)
            if (!keep[g])
                for (int e = g * per; e < (g + 1) * per; e++) b[e] = -INFINITY;
    }
    /* top-k by biased score, ties to the lower id; taken experts are marked NaN */
    for (int k = 0; k < c->topk; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!isnan(b[e]) && (best < 0 || b[e] > b[best])) best = e;
        if (best < 0) /* NaN scores (a broken checkpoint): take the lowest unused id, never crash */
            for (int e = 0; e < E && best < 0; e++) {
                int used = 0;
                for (int j = 0; j < k; j++) used |= sel[j] == e;
                if (!used) best = e;
            }
        sel[k] = best;
        b[best] = NAN;
        wt[k] = s[best];
    }
    float sum = 0;
    for (int k = 0; k < c->topk; k++) sum += wt[k];
    int normed = c->norm_topk && c->topk > 1;
    if (normed)
        for (int k = 0; k < c->topk; k++) wt[k] /= sum;
    if (c->scale_after_norm || !normed)
        for (int k = 0; k < c->topk; k++) wt[k] *= c->routed_scale;
}

static int cpu_route(eng_backend_t *be, const eng_route_t *r, const float *logits, int T, int32_t *sel, float *wts) {
    float *s = eng_alloc(2 * (size_t)r->E * sizeof(float));
    if (!s) return -1;
    for (int t = 0; t < T; t++)
        route1(r, logits + (size_t)t * r->E, sel + (size_t)t * r->topk, wts + (size_t)t * r->topk, s, s + r->E);
    free(s);
    return 0;
}

/* ---- MoE experts ------------------------------------------------------------------- */

/* The arena carved into pieces of 64-byte-aligned sizes; NULL when it cannot grow. */
static void *arena_get(cpu_be_t *b, size_t n) {
    if (n > b->arena_cap) {
        void *p = eng_alloc(n);
        if (!p) return NULL;
        free(b->arena);
        b->arena = p;
        b->arena_cap = n;
    }
    return b->arena;
}

#define A64(n) (((n) + 63) & ~(size_t)63)

/* Group the (token, slot) pairs by expert in token order, gather each expert's
 * tokens, run every active expert's gate and up (and the shared expert's) as
 * one parallel step, SwiGLU, the downs as another, then add the weighted
 * outputs in slot order and the shared output. */
/* the MoE op's per-token glue, by ranges of slots or tokens (par_for) */
typedef struct {
    const float *x;
    float *xg;
    const int32_t *tok_of, *pos_of;
    const float *wts, *yslot, *ysh;
    float *y;
    int D, K, Is;
} moe_glue_t;

/* slot i of the expert-sorted order gets its token's row */
static void moe_gather(void *ctx, size_t a, size_t b) {
    moe_glue_t *g = ctx;
    for (size_t i = a; i < b; i++)
        memcpy(g->xg + i * g->D, g->x + (size_t)(g->tok_of[i] / g->K) * g->D, g->D * sizeof(float));
}

/* token t's output: its K experts' rows weighted, in k order, then the shared expert's */
static void moe_combine(void *ctx, size_t a, size_t b) {
    moe_glue_t *g = ctx;
    int D = g->D, K = g->K;
    for (size_t t = a; t < b; t++) {
        float *acc = g->y + t * D;
        memset(acc, 0, D * sizeof(float));
        for (int k = 0; k < K; k++) eng_cpu_axpy(acc, g->wts[t * K + k], g->yslot + (size_t)g->pos_of[t * K + k] * D, D);
        if (g->Is) eng_cpu_axpy(acc, 1.0f, g->ysh + t * D, D); /* 1 * y is exact: a plain add */
    }
}

static int cpu_moe(eng_backend_t *be, const eng_moe_t *mo, const float *x, int T, int K, const int32_t *sel,
                   const float *wts, float *y) {
    cpu_be_t *cb = (cpu_be_t *)be;
    int E = mo->E, D = mo->D, Im = mo->inter, Is = mo->has_shared ? mo->shared_inter : 0, NK = T * K;
    size_t fT = (size_t)T, sz_cnt = A64((E + 1) * sizeof(int32_t)), sz_i = A64((size_t)NK * sizeof(int32_t));
    size_t sz_xg = A64((size_t)NK * D * sizeof(float)), sz_h = A64((size_t)NK * Im * sizeof(float));
    size_t sz_s = A64(fT * (Is ? Is : 1) * sizeof(float)), sz_ys = A64(fT * D * sizeof(float));
    size_t sz_j = A64((2 * (size_t)E + 2) * sizeof(eng_mm_t)), sz_r = A64((2 * (size_t)E + 2) * sizeof(int32_t *));
    char *p = arena_get(cb, sz_cnt + 2 * sz_i + 2 * sz_xg + 2 * sz_h + 2 * sz_s + sz_ys + sz_j + sz_r);
    if (!p) return -1;
    int32_t *cnt = (int32_t *)p, *tok_of = (int32_t *)(p += sz_cnt), *pos_of = (int32_t *)(p += sz_i);
    float *xg = (float *)(p += sz_i), *yslot = (float *)(p += sz_xg), *h1 = (float *)(p += sz_xg);
    float *h2 = (float *)(p += sz_h), *s1 = (float *)(p += sz_h), *s2 = (float *)(p += sz_s);
    float *ysh = (float *)(p += sz_s);
    eng_mm_t *jobs = (eng_mm_t *)(p += sz_ys);
    const int32_t **xrows = (const int32_t **)(p += sz_j);
    memset(cnt, 0, (E + 1) * sizeof(int32_t));
    for (int i = 0; i < NK; i++) cnt[sel[i] + 1]++;
    for (int e = 0; e < E; e++) cnt[e + 1] += cnt[e];
    for (int i = 0; i < NK; i++) tok_of[cnt[sel[i]]++] = i;
    /* cnt[e] is now the end of expert e's run; its start is cnt[e-1] */
    for (int i = 0; i < NK; i++) pos_of[tok_of[i]] = i;
    moe_glue_t gl = {x, xg, tok_of, pos_of, wts, yslot, ysh, y, D, K, Is};
    /* When every active expert's gate and up prepare their x (AMX, VNNI),
     * the preparation reads each slot's token row in place (xrows) and the
     * gathered copy is not made: 2 x NK x D floats of memory traffic less. */
    int in_place = 1;
    for (int e = 0, start = 0; e < E && in_place; start = cnt[e], e++)
        if (cnt[e] > start)
            in_place = eng_cpu_xprep_bytes(&mo->eg[e], cnt[e] - start) > 0 &&
                       eng_cpu_xprep_bytes(&mo->eu[e], cnt[e] - start) > 0;
    int32_t *row_of = (int32_t *)xg; /* in place: slot i's token */
    if (in_place)
        for (int i = 0; i < NK; i++) row_of[i] = tok_of[i] / K;
    else
        par_for(be, NK, 16, moe_gather, &gl);
    int nj = 0;
    for (int e = 0, start = 0; e < E; e++) {
        int ne = cnt[e] - start;
        if (ne > 0) {
            const float *xe = in_place ? x : xg + (size_t)start * D;
            xrows[nj] = in_place ? row_of + start : NULL;
            jobs[nj++] = (eng_mm_t){&mo->eg[e], xe, ne, h1 + (size_t)start * Im};
            xrows[nj] = xrows[nj - 1];
            jobs[nj++] = (eng_mm_t){&mo->eu[e], xe, ne, h2 + (size_t)start * Im};
        }
        start = cnt[e];
    }
    if (Is) {
        xrows[nj] = NULL;
        jobs[nj++] = (eng_mm_t){mo->sg, x, T, s1};
        xrows[nj] = NULL;
        jobs[nj++] = (eng_mm_t){mo->su, x, T, s2};
    }
    if (mm_multi(be, jobs, xrows, nj)) return -1;
    cpu_swiglu(be, h1, h2, (size_t)NK * Im);
    if (Is) cpu_swiglu(be, s1, s2, fT * Is);
    nj = 0;
    for (int e = 0, start = 0; e < E; e++) {
        int ne = cnt[e] - start;
        if (ne > 0) jobs[nj++] = (eng_mm_t){&mo->ed[e], h1 + (size_t)start * Im, ne, yslot + (size_t)start * D};
        start = cnt[e];
    }
    if (Is) jobs[nj++] = (eng_mm_t){mo->sd, s1, T, ysh};
    if (cpu_matmul_multi(be, jobs, nj)) return -1;
    par_for(be, T, 4, moe_combine, &gl);
    return 0;
}

/* ids[i] = the lowest id of row i's largest value; NaNs are never chosen
 * (a row of NaNs gives 0), as the samplers and the CUDA kernel do.  (A NaN
 * at id 0 used to win the whole row: nothing compares greater than it.) */
static int cpu_argmax(eng_backend_t *be, const float *logits, int n, int vocab, int32_t *ids) {
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * vocab;
        int best = -1;
        for (int v = 0; v < vocab; v++)
            if (!isnan(l[v]) && (best < 0 || l[v] > l[best])) best = v;
        ids[i] = best < 0 ? 0 : best;
    }
    return 0;
}

static void cpu_free(eng_backend_t *be) {
    if (!be) return;
    cpu_be_t *b = (cpu_be_t *)be;
    eng_cpu_pool_free(b->pool);
    for (int i = 0; b->rowbuf && i < be->n_threads; i++) free(b->rowbuf[i]);
    free(b->rowbuf);
    free(b->rowcap);
    free(b->arena);
    free(b->xbuf);
    for (int i = 0; i < b->n_wbufs; i++) munmap(b->wbufs[i].p, b->wbufs[i].n);
    free(b->wbufs);
    free(b);
}

static const eng_backend_ops_t cpu_ops = {
    .name = "cpu",
    .describe = cpu_describe,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .kv_alloc = cpu_kv_alloc,
    .kv_release = cpu_kv_release,
    .set = cpu_copy,
    .get = cpu_copy,
    .copy = cpu_copy,
    .upload_w = cpu_upload_w,
    .upload = cpu_upload,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .add = cpu_add,
    .add_rmsnorm = cpu_add_rmsnorm,
    .swiglu = cpu_swiglu,
    .gather = cpu_gather,
    .matmul = cpu_matmul,
    .matmul_multi = cpu_matmul_multi,
    .attn_mla = cpu_attn_mla,
    .attn_gqa = cpu_attn_gqa,
    .route = cpu_route,
    .moe = cpu_moe,
    .argmax = cpu_argmax,
    .free = cpu_free,
};

eng_backend_t *eng_cpu_backend_new(int n_threads, char *err, size_t errlen) {
    cpu_be_t *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errlen, "cpu backend: out of memory");
        return NULL;
    }
    b->pool = eng_cpu_pool_new(n_threads);
    b->rowbuf = calloc(n_threads, sizeof *b->rowbuf);
    b->rowcap = calloc(n_threads, sizeof *b->rowcap);
    if (!b->pool || !b->rowbuf || !b->rowcap) {
        eng_cpu_pool_free(b->pool);
        free(b->rowbuf);
        free(b->rowcap);
        snprintf(err, errlen, "cpu backend: cannot start %d threads", n_threads);
        free(b);
        return NULL;
    }
    b->base.ops = &cpu_ops;
    b->base.n_threads = n_threads;
    return &b->base;
}
