/* eng_cpu.c — the CPU backend: the ops table of eng_model_int.h over a thread
 * pool.  Matmuls split output rows between threads; attention splits heads.
 * Every output value is computed by one thread in an order fixed by the
 * shapes alone, so results do not depend on the thread count or the batch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_cpu.h"

typedef struct {
    eng_backend_t base;
    eng_cpu_pool_t *pool;
    float **rowbuf;     /* [n_threads] per-thread row buffers, grown on demand */
    size_t *rowcap;
} cpu_be_t;

static eng_cpu_pool_t *pool_of(eng_backend_t *be) { return ((cpu_be_t *)be)->pool; }

/* ---- matmul ---------------------------------------------------------------- */

typedef struct {
    const eng_mm_t *jobs;
    int njobs;
    const int64_t *chunk_rows;  /* [njobs] rows per chunk of each job (a multiple of 16) */
    const int64_t *first;       /* [njobs + 1] index of each job's first chunk; first[njobs] = all */
    int64_t next;               /* the next chunk to take (atomic) */
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
        size_t need = 4 * (size_t)m->w->cols;
        if (need > J->be->rowcap[t]) {
            free(J->be->rowbuf[t]);
            J->be->rowbuf[t] = malloc(need * sizeof(float));
            J->be->rowcap[t] = need;
            if (!J->be->rowbuf[t]) abort();
        }
        eng_cpu_matmul_rows(m->w, m->x, m->n, m->y, r0, r1, J->be->rowbuf[t]);
    }
}

/* a chunk holds about this many weight elements x tokens (256 KB of bf16 at
 * batch 1): large enough that the atomic and the prefetch running past a
 * chunk's end cost little, small enough to balance two threads */
#define MM_CHUNK_COST (128 << 10)

static void cpu_matmul_multi(eng_backend_t *be, const eng_mm_t *jobs, int njobs) {
    int64_t small[2 * 64 + 1], *buf = small;
    if (njobs > 64 && !(buf = malloc((2 * (size_t)njobs + 1) * sizeof *buf))) abort();
    mm_job_t J = {jobs, njobs, buf, buf + njobs, 0, (cpu_be_t *)be};
    int64_t *cr = buf, *first = buf + njobs;
    first[0] = 0;
    for (int j = 0; j < njobs; j++) {
        int64_t R = jobs[j].w->rows, per = jobs[j].w->cols * (int64_t)jobs[j].n;
        int64_t rows = per > 0 ? MM_CHUNK_COST / per : R;
        rows = (rows + 15) / 16 * 16;
        if (rows < 16) rows = 16;
        cr[j] = rows;
        first[j + 1] = first[j] + (per > 0 && R > 0 ? (R + rows - 1) / rows : 0);
    }
    if (first[njobs]) eng_cpu_pool_run(pool_of(be), mm_worker, &J);
    if (buf != small) free(buf);
}

static void cpu_matmul(eng_backend_t *be, const eng_w_t *w, const float *x, int n, float *y) {
    eng_mm_t j = {w, x, n, y};
    cpu_matmul_multi(be, &j, 1);
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

typedef struct {
    const eng_w_t *kv_b;
    int H, dn, dr, dv, c;
    float scale;
    const float *q;
    const eng_attn_seq_t *seqs;
    int nseq, T, maxlen;
    float *out;
    int kvh, hd; /* GQA */
} attn_job_t;

/* MLA, absorbed:  q_lat = W_k_h^T q_nope;  s_t = (q_lat . ckv_t + q_pe . kpe_t) * scale;
 * o_lat = sum_t softmax(s)_t ckv_t;  out_h = W_v_h o_lat. */
static void mla_worker(void *arg, int t, int nt) {
    attn_job_t *j = arg;
    int c = j->c, dn = j->dn, dr = j->dr, dv = j->dv, T = j->T, qs = j->dn + j->dr;
    float *qlat = malloc((size_t)T * c * sizeof(float));
    float *olat = malloc((size_t)T * c * sizeof(float));
    float *row = malloc(c * sizeof(float));
    float *sc = malloc((j->maxlen + 1) * sizeof(float));
    if (!qlat || !olat || !row || !sc) abort();
    for (int h = t; h < j->H; h += nt) {
        memset(qlat, 0, (size_t)T * c * sizeof(float));
        for (int d = 0; d < dn; d++) {
            eng_cpu_row_f32(j->kv_b, (int64_t)h * (dn + dv) + d, row);
            for (int i = 0; i < T; i++)
                eng_cpu_axpy(qlat + (size_t)i * c, j->q[(size_t)i * j->H * qs + h * qs + d], row, c);
        }
        for (int si = 0; si < j->nseq; si++) {
            const eng_attn_seq_t *s = &j->seqs[si];
            for (int k = 0; k < s->n; k++) {
                int i = s->tok0 + k, len = s->pos0 + k + 1;
                const float *qp = j->q + (size_t)i * j->H * qs + h * qs + dn;
                for (int p = 0; p < len; p++) {
                    const float *kv = s->k + (size_t)p * (c + dr);
                    sc[p] = (eng_cpu_dot(qlat + (size_t)i * c, kv, c) + eng_cpu_dot(qp, kv + c, dr)) * j->scale;
                }
                softmax_inplace(sc, len);
                float *o = olat + (size_t)i * c;
                memset(o, 0, c * sizeof(float));
                for (int p = 0; p < len; p++) eng_cpu_axpy(o, sc[p], s->k + (size_t)p * (c + dr), c);
            }
        }
        for (int d = 0; d < dv; d++) {
            eng_cpu_row_f32(j->kv_b, (int64_t)h * (dn + dv) + dn + d, row);
            for (int i = 0; i < T; i++) j->out[(size_t)i * j->H * dv + h * dv + d] = eng_cpu_dot(row, olat + (size_t)i * c, c);
        }
    }
    free(qlat);
    free(olat);
    free(row);
    free(sc);
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

static void cpu_attn_mla(eng_backend_t *be, const eng_w_t *kv_b, int H, int dn, int dr, int dv, int c,
                         float scale, const float *q, const eng_attn_seq_t *seqs, int nseq, float *out) {
    attn_job_t j = {.kv_b = kv_b, .H = H, .dn = dn, .dr = dr, .dv = dv, .c = c, .scale = scale, .q = q,
                    .seqs = seqs, .nseq = nseq, .out = out};
    j.T = batch_shape(seqs, nseq, &j.maxlen);
    if (!j.T) return;
    eng_cpu_pool_run(pool_of(be), mla_worker, &j);
}

/* GQA: head h reads kv head h / (H / kvh). */
static void gqa_worker(void *arg, int t, int nt) {
    attn_job_t *j = arg;
    int hd = j->hd, kvh = j->kvh, H = j->H, rep = H / kvh;
    float *sc = malloc((j->maxlen + 1) * sizeof(float));
    if (!sc) abort();
    for (int h = t; h < H; h += nt) {
        int g = h / rep;
        for (int si = 0; si < j->nseq; si++) {
            const eng_attn_seq_t *s = &j->seqs[si];
            for (int k = 0; k < s->n; k++) {
                int i = s->tok0 + k, len = s->pos0 + k + 1;
                const float *qh = j->q + (size_t)i * H * hd + h * hd;
                for (int p = 0; p < len; p++)
                    sc[p] = eng_cpu_dot(qh, s->k + (size_t)p * kvh * hd + g * hd, hd) * j->scale;
                softmax_inplace(sc, len);
                float *o = j->out + (size_t)i * H * hd + h * hd;
                memset(o, 0, hd * sizeof(float));
                for (int p = 0; p < len; p++) eng_cpu_axpy(o, sc[p], s->v + (size_t)p * kvh * hd + g * hd, hd);
            }
        }
    }
    free(sc);
}

static void cpu_attn_gqa(eng_backend_t *be, int H, int kvh, int hd, float scale, const float *q,
                         const eng_attn_seq_t *seqs, int nseq, float *out) {
    attn_job_t j = {.H = H, .kvh = kvh, .hd = hd, .scale = scale, .q = q, .seqs = seqs, .nseq = nseq,
                    .out = out};
    j.T = batch_shape(seqs, nseq, &j.maxlen);
    if (!j.T) return;
    eng_cpu_pool_run(pool_of(be), gqa_worker, &j);
}

static void cpu_free(eng_backend_t *be) {
    if (!be) return;
    cpu_be_t *b = (cpu_be_t *)be;
    eng_cpu_pool_free(b->pool);
    for (int i = 0; b->rowbuf && i < be->n_threads; i++) free(b->rowbuf[i]);
    free(b->rowbuf);
    free(b->rowcap);
    free(b);
}

static const eng_backend_ops_t cpu_ops = {
    .name = "cpu",
    .matmul = cpu_matmul,
    .matmul_multi = cpu_matmul_multi,
    .attn_mla = cpu_attn_mla,
    .attn_gqa = cpu_attn_gqa,
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
