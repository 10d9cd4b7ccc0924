/* eng_sched.c — continuous batching over a paged KV cache, on one scheduler
 * thread.
 *
 * Each step: admit queued jobs (oldest first) while the batch has room and
 * the KV pool has the blocks for the job's whole prompt (after the prefix
 * cache gave what it holds), drop cancelled ones, then call eng_forward once
 * with the active sequences — the last sampled token of every decoding one,
 * and the next prompt chunk of those still in prefill, within a per-step
 * prefill budget (prefill_chunk, or while some stream is decoding a piece
 * sized by time so that their step grows at most 1 + decode_stall times, at
 * most decode_prefill tokens: eng_sched_piece.c) — sample one token for each sequence whose context is
 * complete, run it through the text pipeline, and queue one event per job.
 *
 * Preemption: when the step needs more blocks than the pool can give, the
 * youngest running job (last admitted by arrival) gives its blocks back and
 * returns to the head of the queue, keeping what it generated; re-admitted,
 * it recomputes prompt + generated tokens (the prefix cache usually holds
 * most of them) and goes on as if nothing happened: the forward pass gives
 * the same numbers however a context is cut into calls, and the sampler's
 * state stays with the job.  A job alone always fits (the server refuses,
 * with a 400, a request whose prompt + max_tokens exceed the pool).
 *
 * Invariants: only this thread touches a job's model state (seq, sampler,
 * decoder) and the KV pool; the mutex guards the waiting queue, the event
 * FIFO and the counters; active[] and the queue are in arrival order; a job
 * is freed by whoever frees its last event, and the scheduler never touches a
 * job after queueing that event. */
#include "eng_sched.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct eng_job {
    eng_job_t *next_wait; /* waiting-queue link (under mutex) */
    void *user;
    atomic_int cancelled;
    eng_job_spec_t spec;
    /* scheduler-thread state */
    uint64_t arrival;   /* submission order (under mutex) */
    eng_seq_t *seq;
    int32_t *ctx;       /* (n_prompt + max_tokens) the prompt, then the generated ids */
    int32_t *gen;       /* = ctx + n_prompt */
    int n_gen, n_reasoning;
    int started;        /* admitted at least once (sampler, decoder set up) */
    int cached;         /* prompt tokens reused at the first admission */
    int counted;        /* the first admission was counted */
    eng_rng_t rng;
    tok_stream_t *dec;
    eng_stop_t stop;
    eng_think_t think;
    int slot;           /* index of its logits buffer */
    int gram_on;        /* the grammar masks the logits */
    int in_tools;       /* generated tokens are a tool-call block */
    int dev_sample;     /* this step's token is sampled by the backend into sreq */
    eng_sample_req_t sreq;
    eng_rng_t rng_after; /* rng after sreq.u was drawn: kept when the backend used it */
    eng_ev_t *last;     /* its last event, allocated at submit (finish_job takes it: no wait there) */
    /* logprobs entries of tokens whose text the stop matcher still holds
     * (eng_ev_t.lp): lp_hold[i]'s text starts at byte lp_at[i] of the text the
     * matcher was given */
    eng_logprob_t *lp_hold;
    size_t *lp_at;
    int n_hold, cap_hold;
};

struct eng_sched {
    eng_model_t *model;
    const tok_t *tok;
    eng_sched_opts_t o;
    int32_t vocab_rows, n_allowed, eos_tok, eos_model;
    void (*wake)(void *);
    void *wake_arg;

    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int quit, closed, cancel_all;
    eng_job_t *wait_head, *wait_tail;
    int n_wait;
    eng_ev_t *ev_head, *ev_tail;
    atomic_int n_active;
    atomic_ulong steps, forward_ns;
    atomic_long kv_tokens; /* tokens held in the KV caches of active sequences */
    uint64_t next_arrival;                  /* under mu */
    eng_kv_stats_t kv_snap;                 /* under mu: the pool after the last step */
    uint64_t preemptions, adm_prompt, adm_cached; /* under mu */

    /* scheduler-thread state */
    eng_job_t **active;   /* (max_batch) */
    int n_act;
    float **logits;       /* (max_batch) rows of vocab_rows floats */
    int *slot_used;       /* (max_batch) */
    eng_sampler_t *sampler;
    /* per-step scratch */
    eng_seq_t **b_seq;
    eng_job_t **b_job;
    const int32_t **b_ids;
    int *b_n;
    float **b_logits;
    eng_sample_req_t **b_sample; /* NULL where the host samples from b_logits */
    eng_piece_t piece;    /* the prefill piece's time model (eng_sched_piece.c) */
};

static void spec_free(eng_job_spec_t *sp) {
    free(sp->prompt);
    sp->prompt = NULL;
    free(sp->bias);
    sp->bias = NULL;
    eng_gram_free(sp->gram);
    sp->gram = NULL;
    for (int i = 0; i < ENG_MAX_STOP; i++) {
        free(sp->stop[i]);
        sp->stop[i] = NULL;
    }
}

static void job_free(eng_job_t *j) {
    if (!j) return;
    spec_free(&j->spec);
    eng_seq_free(j->seq);
    free(j->ctx);
    tok_stream_free(j->dec);
    eng_stop_free(&j->stop);
    eng_think_free(&j->think);
    free(j->last);
    free(j->lp_hold);
    free(j->lp_at);
    free(j);
}

void eng_ev_free(eng_ev_t *ev) {
    if (!ev) return;
    tg_buf_free(&ev->content);
    tg_buf_free(&ev->reasoning);
    tg_buf_free(&ev->tool);
    if (ev->finish != ENG_FINISH_NONE) job_free(ev->job);
    free(ev->lp);
    free(ev);
}

/* ---- loop-thread API -------------------------------------------------------- */

int eng_sched_submit(eng_sched_t *s, eng_job_spec_t *spec, void *user, eng_job_t **out) {
    eng_job_t *j = calloc(1, sizeof *j);
    eng_ev_t *last = j ? calloc(1, sizeof *last) : NULL;
    if (!last) {
        free(j);
        spec_free(spec);
        return ENG_SUBMIT_NOMEM;
    }
    j->last = last;
    j->spec = *spec;
    memset(spec, 0, sizeof *spec);
    j->user = user;
    j->slot = -1;
    pthread_mutex_lock(&s->mu);
    int rc = s->closed ? ENG_SUBMIT_CLOSED : s->n_wait >= s->o.max_queue ? ENG_SUBMIT_FULL : 0;
    if (rc == 0) {
        j->arrival = s->next_arrival++;
        if (s->wait_tail)
            s->wait_tail->next_wait = j;
        else
            s->wait_head = j;
        s->wait_tail = j;
        s->n_wait++;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        job_free(j);
        return rc;
    }
    *out = j;
    return ENG_SUBMIT_OK;
}

void eng_sched_cancel(eng_sched_t *s, eng_job_t *job) {
    atomic_store(&job->cancelled, 1);
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void eng_sched_close(eng_sched_t *s) {
    pthread_mutex_lock(&s->mu);
    s->closed = 1;
    pthread_mutex_unlock(&s->mu);
}

void eng_sched_cancel_all(eng_sched_t *s) {
    pthread_mutex_lock(&s->mu);
    s->cancel_all = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

eng_ev_t *eng_sched_take(eng_sched_t *s) {
    pthread_mutex_lock(&s->mu);
    eng_ev_t *l = s->ev_head;
    s->ev_head = s->ev_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    return l;
}

void eng_sched_stats(eng_sched_t *s, eng_sched_stats_t *out) {
    pthread_mutex_lock(&s->mu);
    out->queued = s->n_wait;
    out->kv = s->kv_snap;
    out->preemptions = s->preemptions;
    out->admitted_prompt_tokens = s->adm_prompt;
    out->cached_prompt_tokens = s->adm_cached;
    pthread_mutex_unlock(&s->mu);
    out->active = atomic_load(&s->n_active);
    out->steps = atomic_load(&s->steps);
    out->kv_tokens = atomic_load(&s->kv_tokens);
    out->forward_ns = atomic_load(&s->forward_ns);
}

/* ---- scheduler thread ------------------------------------------------------- */

/* Queue events (a list linked by next) and wake the loop. */
static void post(eng_sched_t *s, eng_ev_t *head, eng_ev_t *tail) {
    if (!head) return;
    pthread_mutex_lock(&s->mu);
    if (s->ev_tail)
        s->ev_tail->next = head;
    else
        s->ev_head = head;
    s->ev_tail = tail;
    pthread_mutex_unlock(&s->mu);
    s->wake(s->wake_arg);
}

typedef struct {
    eng_ev_t *head, *tail;
} ev_list_t;

/* ev, for job j, at the end of l */
static eng_ev_t *ev_append(ev_list_t *l, eng_ev_t *ev, eng_job_t *j) {
    ev->job = j;
    ev->user = j->user;
    if (l->tail)
        l->tail->next = ev;
    else
        l->head = ev;
    l->tail = ev;
    return ev;
}

static eng_ev_t *ev_new(ev_list_t *l, eng_job_t *j) {
    eng_ev_t *ev = calloc(1, sizeof *ev);
    return ev ? ev_append(l, ev, j) : NULL;
}

/* The job's last event: counts and finish reason; the job leaves the
 * scheduler's hands here.  ev NULL: the one allocated at submit (the server
 * waits for a last event, so there must be one without allocating). */
static void finish_job(ev_list_t *l, eng_ev_t *ev, eng_job_t *j, eng_finish_t why,
                       const char *err) {
    if (!ev) {
        ev = ev_append(l, j->last, j);
        j->last = NULL;
    } else {
        free(j->last); /* not needed: ev is the last */
        j->last = NULL;
    }
    ev->finish = why;
    ev->prompt_tokens = j->spec.n_prompt;
    ev->completion_tokens = j->n_gen;
    ev->reasoning_tokens = j->n_reasoning;
    ev->cached_tokens = j->cached;
    if (err) snprintf(ev->err, sizeof ev->err, "%s", err);
    eng_seq_free(j->seq); /* free the KV cache now, not when the loop gets to it */
    j->seq = NULL;
}

/* Run finished text through stop -> think into the event's buffers. */
static int pipe_text(eng_job_t *j, eng_ev_t *ev, const char *t, size_t n, int *stopped) {
    tg_buf_t mid = {0};
    int rc = eng_stop_push(&j->stop, t, n, &mid);
    if (rc < 0) goto out;
    if (rc == 1) *stopped = 1;
    if (*stopped) {
        rc = eng_think_push(&j->think, mid.p ? mid.p : "", mid.len, &ev->content, &ev->reasoning);
        if (!rc) rc = eng_think_flush(&j->think, &ev->content, &ev->reasoning);
    } else {
        rc = eng_think_push(&j->think, mid.p ? mid.p : "", mid.len, &ev->content, &ev->reasoning);
    }
out:
    tg_buf_free(&mid);
    return rc < 0 ? -1 : 0;
}

/* End of generation without a stop match: flush decoder, matcher, splitter. */
static int pipe_flush(eng_job_t *j, eng_ev_t *ev) {
    size_t n = 0;
    const char *t = tok_stream_flush(j->dec, &n);
    int stopped = 0;
    if (t && n && pipe_text(j, ev, t, n, &stopped)) return -1;
    if (stopped) return 0;
    tg_buf_t mid = {0};
    int rc = eng_stop_flush(&j->stop, &mid);
    if (!rc) rc = eng_think_push(&j->think, mid.p ? mid.p : "", mid.len, &ev->content, &ev->reasoning);
    if (!rc) rc = eng_think_flush(&j->think, &ev->content, &ev->reasoning);
    tg_buf_free(&mid);
    return rc;
}

/* First admission: the job's context buffer, decoder, sampler state. */
static int job_start(eng_sched_t *s, eng_job_t *j, char *err, size_t errlen) {
    j->ctx = malloc(((size_t)j->spec.n_prompt + j->spec.max_tokens) * sizeof *j->ctx);
    j->dec = tok_stream_new(s->tok, 1);
    if (!j->ctx || !j->dec) {
        snprintf(err, errlen, "out of memory for a new sequence");
        return -1;
    }
    memcpy(j->ctx, j->spec.prompt, (size_t)j->spec.n_prompt * sizeof *j->ctx);
    j->gen = j->ctx + j->spec.n_prompt;
    eng_rng_seed(&j->rng, j->spec.seed);
    j->spec.sp.bias = j->spec.bias;
    j->spec.sp.n_bias = j->spec.n_bias;
    j->gram_on = j->spec.gram && j->spec.gram_trigger < 0;
    eng_stop_init(&j->stop, (const char *const *)j->spec.stop, j->spec.stop_len, j->spec.n_stop);
    eng_think_init(&j->think, j->spec.think);
    j->started = 1;
    return 0;
}

enum { ADMIT_OK = 0, ADMIT_AGAIN = 1, ADMIT_ERROR = -1 };

/* Admit the job at the head of the queue if the pool can hold its context
 * (prompt, plus what it had generated before a preemption) beside the running
 * ones: its cached prefix is attached, the rest must be free or evictable,
 * with a block of headroom per running sequence.  Called with s->mu held. */
static int try_admit(eng_sched_t *s, eng_job_t *j, char *err, size_t errlen) {
    if (!j->started && job_start(s, j, err, errlen)) return ADMIT_ERROR;
    if (!j->seq) {
        if (!(j->seq = eng_seq_new(s->model, j->spec.n_prompt + j->spec.max_tokens))) {
            snprintf(err, errlen, "out of memory for a new sequence");
            return ADMIT_ERROR;
        }
        eng_seq_namespace(j->seq, j->spec.cache_root);
    }
    int n_ctx = j->spec.n_prompt + j->n_gen;
    int hit = eng_seq_prefix(j->seq, j->ctx, n_ctx);
    int need = eng_seq_blocks_needed(j->seq, n_ctx) + s->n_act;
    if (need > eng_kv_available_blocks(s->model)) {
        if (s->n_act > 0) {
            eng_seq_truncate(j->seq, 0); /* the attached blocks go back to the cache */
            return ADMIT_AGAIN;
        }
        /* alone: everything not attached is free or cached, and the server
         * refused what the pool cannot hold, so this cannot happen */
        snprintf(err, errlen, "the KV cache cannot hold %d tokens", n_ctx);
        return ADMIT_ERROR;
    }
    if (j->slot < 0)
        for (int i = 0; i < s->o.max_batch; i++)
            if (!s->slot_used[i]) {
                s->slot_used[i] = 1;
                j->slot = i;
                break;
            }
    if (!j->counted) {
        j->counted = 1;
        j->cached = hit < j->spec.n_prompt ? hit : j->spec.n_prompt;
        s->adm_prompt += (uint64_t)j->spec.n_prompt;
        s->adm_cached += (uint64_t)j->cached;
    }
    return ADMIT_OK;
}

/* Remove active[i], keeping the others in arrival order. */
static void remove_active(eng_sched_t *s, int i) {
    eng_job_t *j = s->active[i];
    if (j->slot >= 0) s->slot_used[j->slot] = 0;
    j->slot = -1;
    memmove(s->active + i, s->active + i + 1, (size_t)(s->n_act - i - 1) * sizeof *s->active);
    s->n_act--;
    atomic_store(&s->n_active, s->n_act);
}

/* Send the youngest running job back to the queue (in arrival order) with
 * its blocks given back. */
static void preempt_youngest(eng_sched_t *s) {
    eng_job_t *j = s->active[s->n_act - 1];
    remove_active(s, s->n_act - 1);
    eng_seq_free(j->seq);
    j->seq = NULL;
    pthread_mutex_lock(&s->mu);
    eng_job_t **pp = &s->wait_head, *prev = NULL;
    while (*pp && (*pp)->arrival < j->arrival) prev = *pp, pp = &(*pp)->next_wait;
    j->next_wait = *pp;
    *pp = j;
    if (!j->next_wait) s->wait_tail = j;
    (void)prev;
    s->n_wait++;
    s->preemptions++;
    pthread_mutex_unlock(&s->mu);
}

/* Hold the logprobs entry lp of a token whose text starts at byte `at` of
 * the matcher's input; 0 or -1 out of memory. */
static int lp_hold(eng_job_t *j, const eng_logprob_t *lp, size_t at) {
    if (j->n_hold == j->cap_hold) {
        int nc = j->cap_hold ? j->cap_hold * 2 : 8;
        eng_logprob_t *a = realloc(j->lp_hold, (size_t)nc * sizeof *a);
        if (!a) return -1;
        j->lp_hold = a;
        size_t *b = realloc(j->lp_at, (size_t)nc * sizeof *b);
        if (!b) return -1;
        j->lp_at = b;
        j->cap_hold = nc;
    }
    j->lp_hold[j->n_hold] = *lp;
    j->lp_at[j->n_hold++] = at;
    return 0;
}

/* Move the held entries whose text starts before byte `upto` of the
 * matcher's input (all: upto SIZE_MAX) into ev, in order; the rest stay held
 * unless drop (a stop string matched: their text is never returned).
 * 0 or -1 out of memory. */
static int lp_release(eng_job_t *j, eng_ev_t *ev, size_t upto, int drop) {
    int k = 0;
    while (k < j->n_hold && j->lp_at[k] < upto) k++;
    if (k) {
        eng_logprob_t *a = realloc(ev->lp, (size_t)(ev->n_lp + k) * sizeof *a);
        if (!a) return -1;
        ev->lp = a;
        memcpy(ev->lp + ev->n_lp, j->lp_hold, (size_t)k * sizeof *a);
        ev->n_lp += k;
        memmove(j->lp_hold, j->lp_hold + k, (size_t)(j->n_hold - k) * sizeof *j->lp_hold);
        memmove(j->lp_at, j->lp_at + k, (size_t)(j->n_hold - k) * sizeof *j->lp_at);
        j->n_hold -= k;
    }
    if (drop) j->n_hold = 0;
    return 0;
}

/* Sample and process one token for job j; returns the finish reason. */
static eng_finish_t take_token(eng_sched_t *s, eng_job_t *j, eng_ev_t *ev, char *err, size_t errlen) {
    float *lg = s->logits[j->slot];
    int32_t id;
    if (j->dev_sample) { /* the backend sampled (plan_sample): same draw, same id */
        j->dev_sample = 0;
        id = j->sreq.id;
        if (j->sreq.used_u) j->rng = j->rng_after;
    } else {
        eng_sample_prepare(s->sampler, lg, &j->spec.sp, j->gen, (size_t)j->n_gen);
        if (j->gram_on) eng_gram_mask(j->spec.gram, j->spec.max_tokens - j->n_gen, lg, s->n_allowed);
        id = eng_sample_pick(s->sampler, lg, &j->spec.sp, &j->rng);
    }
    if (id < 0) {
        snprintf(err, errlen, "sampler produced no token");
        return ENG_FINISH_ERROR;
    }
    if (!j->gram_on && j->spec.gram && id == j->spec.gram_trigger) j->gram_on = 1; /* tool_choice auto */
    if (j->gram_on && id != s->eos_tok && id != s->eos_model && eng_gram_accept(j->spec.gram, id)) {
        snprintf(err, errlen, "token %d breaks the grammar", (int)id);
        return ENG_FINISH_ERROR;
    }
    int was_reasoning = eng_think_in_reasoning(&j->think);
    j->gen[j->n_gen++] = id;
    ev->new_tokens = 1;
    ev->first_token = j->n_gen == 1;
    eng_finish_t fin = ENG_FINISH_NONE;
    int stopped = 0;
    if (id == s->eos_tok || id == s->eos_model) {
        fin = ENG_FINISH_STOP; /* the EOS is counted, never shown */
    } else {
        if (j->spec.logprobs) { /* held until its text is let through (lp_release) */
            eng_logprob_t lp;
            eng_logprob_compute(lg, s->n_allowed, id, j->spec.top_logprobs, &lp);
            if (lp_hold(j, &lp, j->stop.in_total)) goto oom;
        }
        if (!j->in_tools && id == j->spec.tool_trigger) {
            /* the text before the block is complete: flush the pipeline */
            j->in_tools = 1;
            if (pipe_flush(j, ev)) goto oom;
        }
        if (j->in_tools && lp_release(j, ev, SIZE_MAX, 0)) goto oom; /* a tool block's tokens: at once */
        if (j->in_tools) {
            size_t n = 0;
            const char *b = tok_token_bytes(s->tok, id, &n);
            if (!b || tg_buf_put(&ev->tool, b, n)) goto oom;
        } else {
            size_t n = 0;
            const char *t = tok_stream_push(j->dec, id, &n);
            if (!t) { /* a sampled id is the tokenizer's: only memory can lack */
                snprintf(err, errlen, "%s %d", id < tok_n_vocab(s->tok) ? "out of memory decoding token"
                                                                         : "cannot decode token", (int)id);
                return ENG_FINISH_ERROR;
            }
            if (n && pipe_text(j, ev, t, n, &stopped)) goto oom;
            if (stopped) fin = ENG_FINISH_STOP;
            /* the tokens whose text begins in what the matcher let through; on a match, those
             * wholly inside or after the stop string are dropped */
            if (lp_release(j, ev, j->stop.n_stop ? j->stop.out_total : SIZE_MAX, stopped)) goto oom;
        }
    }
    if (was_reasoning || eng_think_in_reasoning(&j->think)) j->n_reasoning++;
    if (fin == ENG_FINISH_NONE && j->n_gen >= j->spec.max_tokens) fin = ENG_FINISH_LENGTH;
    if (fin != ENG_FINISH_NONE && !stopped && !j->in_tools && pipe_flush(j, ev)) goto oom;
    if (fin != ENG_FINISH_NONE && lp_release(j, ev, j->stop.matched ? j->stop.out_total : SIZE_MAX, 1)) goto oom;
    return fin;
oom:
    snprintf(err, errlen, "out of memory");
    return ENG_FINISH_ERROR;
}

/* The smallest prefill piece beside decoding streams: one KV block (the
 * measured step growth of a 16-token piece beside 16 streams is within noise
 * of none, engine/README.md), so a prompt always progresses. */
#define MIN_PIECE 16

/* Tokens job j feeds in this step: the rest of its context's current chunk
 * (prefill, or recompute after a preemption; a chunk never crosses a multiple
 * of prefill_chunk), or its last sampled token.  *budget: prefill tokens left
 * for this step; the first prefill always goes, cut to the budget when
 * streams are decoding (the budget is then decode_prefill, so their next
 * token is not held up by a long chunk: the forward pass gives the same
 * numbers however a context is cut).  0: it sits this step out. */
static int plan_tokens(eng_sched_t *s, eng_job_t *j, int *budget, int *any_prefill, int decoding) {
    int len = eng_seq_len(j->seq), rest = j->spec.n_prompt + j->n_gen - len, C = s->o.prefill_chunk;
    if (rest <= 1) return rest;
    int n = C - len % C;
    if (n > rest) n = rest;
    if (*any_prefill && n > *budget) return 0;
    if (decoding && n > *budget) n = *budget > 0 ? *budget : 1;
    *any_prefill = 1;
    *budget -= n;
    return n;
}

/* The sampling request for job j's next token when the backend can sample
 * it (no penalties, bias, grammar or logprobs: nothing but the logits),
 * else NULL.  The draw is taken from a copy of the job's RNG, which
 * take_token keeps only if the backend used it, so the job's RNG advances
 * exactly as the host sampler's would. */
static eng_sample_req_t *plan_sample(eng_sched_t *s, eng_job_t *j) {
    const eng_job_spec_t *sp = &j->spec;
    j->dev_sample = 0;
    if (!eng_model_can_sample(s->model) || !eng_sample_on_backend(&sp->sp) || sp->gram ||
        sp->logprobs)
        return NULL;
    j->rng_after = j->rng;
    j->sreq = (eng_sample_req_t){.temperature = sp->sp.temperature,
                                 .top_p = sp->sp.top_p,
                                 .top_k = sp->sp.top_k,
                                 .n_allowed = s->n_allowed,
                                 .u = eng_rng_uniform(&j->rng_after),
                                 .id = -1};
    j->dev_sample = 1;
    return &j->sreq;
}

/* Run one forward call over b_*[0..nb); on an error that is not the pool's,
 * find the jobs that fail alone (each is run alone once) so that one
 * request's failure (say, scratch memory for its long chunk) does not end its
 * batch mates.  failed[i] = 1 for those; returns the forward's status. */
static int forward_isolating(eng_sched_t *s, int nb, char *failed, char *err, size_t errlen) {
    memset(failed, 0, (size_t)nb);
    int rc = eng_forward_sample(s->model, s->b_seq, s->b_ids, s->b_n, nb, s->b_logits, s->b_sample, err, errlen);
    if (rc != -1 || nb == 1) {
        if (rc == -1) failed[0] = 1;
        return rc;
    }
    for (int i = 0; i < nb; i++) {
        char e2[160];
        int r = eng_forward_sample(s->model, &s->b_seq[i], &s->b_ids[i], &s->b_n[i], 1, &s->b_logits[i],
                                   &s->b_sample[i], e2, sizeof e2);
        if (r) {
            failed[i] = 1;
            snprintf(err, errlen, "%s", e2);
        }
    }
    return 0;
}

static void step(eng_sched_t *s) {
    ev_list_t l = {0};
    char err[160];
    /* drop cancelled jobs */
    for (int i = 0; i < s->n_act;) {
        eng_job_t *j = s->active[i];
        if (atomic_load(&j->cancelled)) {
            remove_active(s, i);
            finish_job(&l, NULL, j, ENG_FINISH_CANCELLED, NULL);
        } else {
            i++;
        }
    }
    /* plan the step; while the pool cannot hold it, preempt the youngest */
    int nb, n_dec, n_prompt; /* sequences decoding, prompt (or recomputed) tokens */
    for (;;) {
        int any_prefill = 0, need = 0, decoding = 0;
        n_dec = n_prompt = 0;
        for (int i = 0; i < s->n_act && !decoding; i++)
            decoding = s->active[i]->spec.n_prompt + s->active[i]->n_gen - eng_seq_len(s->active[i]->seq) == 1;
        /* beside decoding streams, a piece sized by time: their step grows at most 1 + decode_stall */
        int budget = decoding ? eng_piece_size(&s->piece, s->o.decode_stall, MIN_PIECE, s->o.decode_prefill)
                              : s->o.prefill_chunk;
        nb = 0;
        for (int i = 0; i < s->n_act; i++) {
            eng_job_t *j = s->active[i];
            int n = plan_tokens(s, j, &budget, &any_prefill, decoding);
            if (n <= 0) continue;
            int len = eng_seq_len(j->seq);
            if (j->spec.n_prompt + j->n_gen - len == 1) n_dec++;
            else n_prompt += n;
            s->b_ids[nb] = j->ctx + len;
            s->b_n[nb] = n;
            int last = len + n == j->spec.n_prompt + j->n_gen;
            s->b_sample[nb] = last ? plan_sample(s, j) : NULL;
            s->b_logits[nb] = last && !s->b_sample[nb] ? s->logits[j->slot] : NULL;
            s->b_seq[nb] = j->seq;
            s->b_job[nb] = j;
            need += eng_seq_blocks_needed(j->seq, len + n);
            nb++;
        }
        if (need <= eng_kv_available_blocks(s->model) || s->n_act <= 1) break;
        preempt_youngest(s);
    }
    if (nb) {
        char failed[nb];
        int64_t t0 = tg_mono_ns();
        int rc = forward_isolating(s, nb, failed, err, sizeof err);
        int64_t t1 = tg_mono_ns();
        if (rc == 0 && !memchr(failed, 1, (size_t)nb))
            eng_piece_observe(&s->piece, (double)(t1 - t0) * 1e-9, n_dec, n_prompt);
        atomic_fetch_add(&s->steps, 1);
        atomic_fetch_add(&s->forward_ns, (unsigned long)(t1 - t0));
        if (rc == ENG_KV_FULL) { /* one job alone beyond the pool: the server should have refused it */
            for (int i = 0; i < nb; i++) finish_job(&l, NULL, s->b_job[i], ENG_FINISH_ERROR, err);
        } else {
            /* finished jobs leave active[] after this loop */
            for (int i = 0; i < nb; i++) {
                eng_job_t *j = s->b_job[i];
                if (failed[i]) {
                    finish_job(&l, NULL, j, ENG_FINISH_ERROR, err);
                    continue;
                }
                if (eng_seq_len(j->seq) < j->spec.n_prompt + j->n_gen) continue; /* more prefill to come */
                /* a token's event: retried while memory may come back, for
                 * mem_wait_ms; then the job fails (before, it waited forever) */
                eng_ev_t *ev;
                int64_t t_give_up = tg_mono_ns() + (int64_t)s->o.mem_wait_ms * 1000000;
                while (!(ev = ev_new(&l, j)) && tg_mono_ns() < t_give_up) {
                    struct timespec ts = {0, 1000000};
                    nanosleep(&ts, NULL);
                }
                if (!ev) {
                    snprintf(err, sizeof err, "out of memory: the engine could not allocate for %d ms",
                             s->o.mem_wait_ms);
                    finish_job(&l, NULL, j, ENG_FINISH_ERROR, err);
                    continue;
                }
                ev->t_ns = t1;
                eng_finish_t fin = take_token(s, j, ev, err, sizeof err);
                if (fin != ENG_FINISH_NONE)
                    finish_job(&l, ev, j, fin, fin == ENG_FINISH_ERROR ? err : NULL);
            }
        }
        for (int i = 0; i < s->n_act;) {
            if (!s->active[i]->seq) /* finish_job freed it */
                remove_active(s, i);
            else
                i++;
        }
    }
    long kv = 0;
    for (int i = 0; i < s->n_act; i++) kv += eng_seq_len(s->active[i]->seq);
    atomic_store(&s->kv_tokens, kv);
    pthread_mutex_lock(&s->mu);
    eng_kv_stats(s->model, &s->kv_snap);
    pthread_mutex_unlock(&s->mu);
    post(s, l.head, l.tail);
}

static void *sched_main(void *arg) {
    eng_sched_t *s = arg;
    for (;;) {
        ev_list_t l = {0};
        pthread_mutex_lock(&s->mu);
        while (!s->quit && !s->cancel_all && s->n_act == 0 && !s->wait_head)
            pthread_cond_wait(&s->cv, &s->mu);
        int quit = s->quit, all = s->cancel_all || s->quit;
        s->cancel_all = 0;
        /* cancelled waiting jobs leave the queue at once */
        eng_job_t **pp = &s->wait_head, *prev = NULL;
        while (*pp) {
            eng_job_t *j = *pp;
            if (all || atomic_load(&j->cancelled)) {
                *pp = j->next_wait;
                s->n_wait--;
                j->next_wait = NULL;
                finish_job(&l, NULL, j, ENG_FINISH_CANCELLED, NULL);
            } else {
                prev = j;
                pp = &j->next_wait;
            }
        }
        s->wait_tail = prev;
        if (all)
            for (int i = 0; i < s->n_act; i++) atomic_store(&s->active[i]->cancelled, 1);
        /* admit in arrival order while the batch and the pool have room */
        while (!all && s->wait_head && s->n_act < s->o.max_batch) {
            char err[160];
            eng_job_t *j = s->wait_head;
            int r = try_admit(s, j, err, sizeof err);
            if (r == ADMIT_AGAIN) break;
            s->wait_head = j->next_wait;
            if (!s->wait_head) s->wait_tail = NULL;
            s->n_wait--;
            j->next_wait = NULL;
            if (r == ADMIT_ERROR) {
                finish_job(&l, NULL, j, ENG_FINISH_ERROR, err);
                continue;
            }
            s->active[s->n_act++] = j;
            atomic_store(&s->n_active, s->n_act);
        }
        pthread_mutex_unlock(&s->mu);
        post(s, l.head, l.tail);
        step(s);
        if (quit && s->n_act == 0) {
            pthread_mutex_lock(&s->mu);
            int empty = !s->wait_head;
            pthread_mutex_unlock(&s->mu);
            if (empty) break;
        }
    }
    return NULL;
}

eng_sched_t *eng_sched_new(eng_model_t *m, const tok_t *t, const eng_sched_opts_t *o,
                           void (*wake)(void *), void *wake_arg, char *err, size_t errlen) {
    eng_sched_t *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    const eng_model_info_t *mi = eng_model_info(m);
    s->model = m;
    s->tok = t;
    s->o.max_batch = o && o->max_batch > 0 ? o->max_batch : 64;
    s->o.max_queue = o && o->max_queue > 0 ? o->max_queue : 256;
    s->o.prefill_chunk = o && o->prefill_chunk > 0 ? o->prefill_chunk : 512;
    s->o.decode_prefill = o && o->decode_prefill > 0 ? o->decode_prefill : s->o.prefill_chunk / 8;
    if (s->o.decode_prefill < 1) s->o.decode_prefill = 1;
    s->o.decode_stall = o && o->decode_stall > 0 ? o->decode_stall : 0.5;
    s->o.mem_wait_ms = o && o->mem_wait_ms > 0 ? o->mem_wait_ms : 30000;
    eng_piece_init(&s->piece);
    s->vocab_rows = mi->vocab_size;
    s->n_allowed = tok_n_vocab(t) < mi->vocab_size ? tok_n_vocab(t) : mi->vocab_size;
    s->eos_tok = tok_eos(t);
    s->eos_model = mi->eos_id >= 0 ? mi->eos_id : s->eos_tok;
    s->wake = wake;
    s->wake_arg = wake_arg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int b = s->o.max_batch;
    s->active = calloc((size_t)b, sizeof *s->active);
    s->logits = calloc((size_t)b, sizeof *s->logits);
    s->slot_used = calloc((size_t)b, sizeof *s->slot_used);
    s->b_seq = calloc((size_t)b, sizeof *s->b_seq);
    s->b_job = calloc((size_t)b, sizeof *s->b_job);
    s->b_ids = calloc((size_t)b, sizeof *s->b_ids);
    s->b_n = calloc((size_t)b, sizeof *s->b_n);
    s->b_logits = calloc((size_t)b, sizeof *s->b_logits);
    s->b_sample = calloc((size_t)b, sizeof *s->b_sample);
    s->sampler = eng_sampler_new(s->n_allowed);
    if (!s->active || !s->logits || !s->slot_used || !s->b_seq || !s->b_job || !s->b_ids || !s->b_n ||
        !s->b_logits || !s->b_sample || !s->sampler)
        goto oom;
    for (int i = 0; i < b; i++)
        if (!(s->logits[i] = malloc((size_t)s->vocab_rows * sizeof(float)))) goto oom;
    eng_kv_stats(m, &s->kv_snap);
    if (pthread_create(&s->thread, NULL, sched_main, s)) {
        snprintf(err, errlen, "cannot start the scheduler thread");
        eng_sched_free(s);
        return NULL;
    }
    s->started = 1;
    return s;
oom:
    snprintf(err, errlen, "out of memory for the scheduler");
    eng_sched_free(s);
    return NULL;
}

void eng_sched_free(eng_sched_t *s) {
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->quit = 1;
        s->closed = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    /* events nobody took: free them (and their jobs) */
    eng_ev_t *ev = s->ev_head;
    while (ev) {
        eng_ev_t *nx = ev->next;
        eng_ev_free(ev);
        ev = nx;
    }
    if (s->logits)
        for (int i = 0; i < s->o.max_batch; i++) free(s->logits[i]);
    free(s->logits);
    free(s->active);
    free(s->slot_used);
    free(s->b_seq);
    free(s->b_job);
    free(s->b_ids);
    free(s->b_n);
    free(s->b_logits);
    free(s->b_sample);
    eng_sampler_free(s->sampler);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
