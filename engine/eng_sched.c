/* eng_sched.c — continuous batching on one scheduler thread.
 *
 * Each step: admit queued jobs up to max_batch (a new KV sequence each), drop
 * cancelled ones, then call eng_forward once with the active sequences — the
 * last sampled token of every decoding one, and the next prompt chunk of
 * those still in prefill, within a per-step prefill budget — sample one token
 * for each sequence whose prompt is complete, run it through the text
 * pipeline, and queue one event per job.
 *
 * Invariants: only this thread touches a job's model state (seq, sampler,
 * decoder); the mutex guards the waiting queue, the event FIFO and the
 * counters; a job is freed by whoever frees its last event, and the scheduler
 * never touches a job after queueing that event. */
#include "eng_sched.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct eng_job {
    eng_job_t *next_wait; /* waiting-queue link (under mutex) */
    void *user;
    atomic_int cancelled;
    eng_job_spec_t spec;
    /* scheduler-thread state */
    eng_seq_t *seq;
    int n_fed;          /* prompt tokens already in the sequence */
    int32_t *gen;       /* (max_tokens) generated ids */
    int n_gen, n_reasoning;
    eng_rng_t rng;
    tok_stream_t *dec;
    eng_stop_t stop;
    eng_think_t think;
    int slot;           /* index of its logits buffer */
    int gram_on;        /* the grammar masks the logits */
    int in_tools;       /* generated tokens are a tool-call block */
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
};

int64_t eng_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

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
    free(j->gen);
    tok_stream_free(j->dec);
    eng_stop_free(&j->stop);
    eng_think_free(&j->think);
    free(j);
}

void eng_ev_free(eng_ev_t *ev) {
    if (!ev) return;
    eng_buf_free(&ev->content);
    eng_buf_free(&ev->reasoning);
    eng_buf_free(&ev->tool);
    if (ev->finish != ENG_FINISH_NONE) job_free(ev->job);
    free(ev->lp);
    free(ev);
}

/* ---- loop-thread API -------------------------------------------------------- */

int eng_sched_submit(eng_sched_t *s, eng_job_spec_t *spec, void *user, eng_job_t **out) {
    eng_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        spec_free(spec);
        return ENG_SUBMIT_NOMEM;
    }
    j->spec = *spec;
    memset(spec, 0, sizeof *spec);
    j->user = user;
    j->slot = -1;
    pthread_mutex_lock(&s->mu);
    int rc = s->closed ? ENG_SUBMIT_CLOSED : s->n_wait >= s->o.max_queue ? ENG_SUBMIT_FULL : 0;
    if (rc == 0) {
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

static eng_ev_t *ev_new(ev_list_t *l, eng_job_t *j) {
    eng_ev_t *ev = calloc(1, sizeof *ev);
    if (!ev) return NULL;
    ev->job = j;
    ev->user = j->user;
    if (l->tail)
        l->tail->next = ev;
    else
        l->head = ev;
    l->tail = ev;
    return ev;
}

/* The job's last event: counts and finish reason; the job leaves the
 * scheduler's hands here.  Allocation of the last event must not fail
 * silently (the server waits for it), so on OOM we retry. */
static void finish_job(ev_list_t *l, eng_ev_t *ev, eng_job_t *j, eng_finish_t why,
                       const char *err) {
    while (!ev && !(ev = ev_new(l, j))) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    ev->finish = why;
    ev->prompt_tokens = j->spec.n_prompt;
    ev->completion_tokens = j->n_gen;
    ev->reasoning_tokens = j->n_reasoning;
    if (err) snprintf(ev->err, sizeof ev->err, "%s", err);
    eng_seq_free(j->seq); /* free the KV cache now, not when the loop gets to it */
    j->seq = NULL;
}

/* Run finished text through stop -> think into the event's buffers. */
static int pipe_text(eng_job_t *j, eng_ev_t *ev, const char *t, size_t n, int *stopped) {
    eng_buf_t mid = {0};
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
    eng_buf_free(&mid);
    return rc < 0 ? -1 : 0;
}

/* End of generation without a stop match: flush decoder, matcher, splitter. */
static int pipe_flush(eng_job_t *j, eng_ev_t *ev) {
    size_t n = 0;
    const char *t = tok_stream_flush(j->dec, &n);
    int stopped = 0;
    if (t && n && pipe_text(j, ev, t, n, &stopped)) return -1;
    if (stopped) return 0;
    eng_buf_t mid = {0};
    int rc = eng_stop_flush(&j->stop, &mid);
    if (!rc) rc = eng_think_push(&j->think, mid.p ? mid.p : "", mid.len, &ev->content, &ev->reasoning);
    if (!rc) rc = eng_think_flush(&j->think, &ev->content, &ev->reasoning);
    eng_buf_free(&mid);
    return rc;
}

static int admit(eng_sched_t *s, eng_job_t *j, char *err, size_t errlen) {
    j->seq = eng_seq_new(s->model, j->spec.n_prompt + j->spec.max_tokens);
    j->gen = malloc((size_t)j->spec.max_tokens * sizeof *j->gen);
    j->dec = tok_stream_new(s->tok, 1);
    if (!j->seq || !j->gen || !j->dec) {
        snprintf(err, errlen, "out of memory for a new sequence");
        return -1;
    }
    eng_rng_seed(&j->rng, j->spec.seed);
    j->spec.sp.bias = j->spec.bias;
    j->spec.sp.n_bias = j->spec.n_bias;
    j->gram_on = j->spec.gram && j->spec.gram_trigger < 0;
    eng_stop_init(&j->stop, (const char *const *)j->spec.stop, j->spec.stop_len, j->spec.n_stop);
    eng_think_init(&j->think, j->spec.think);
    for (int i = 0; i < s->o.max_batch; i++)
        if (!s->slot_used[i]) {
            s->slot_used[i] = 1;
            j->slot = i;
            break;
        }
    return 0;
}

static void remove_active(eng_sched_t *s, int i) {
    eng_job_t *j = s->active[i];
    if (j->slot >= 0) s->slot_used[j->slot] = 0;
    s->active[i] = s->active[--s->n_act];
    atomic_store(&s->n_active, s->n_act);
}

/* Sample and process one token for job j; returns the finish reason. */
static eng_finish_t take_token(eng_sched_t *s, eng_job_t *j, eng_ev_t *ev, char *err, size_t errlen) {
    float *lg = s->logits[j->slot];
    eng_sample_prepare(s->sampler, lg, &j->spec.sp, j->gen, (size_t)j->n_gen);
    if (j->spec.ban_id >= 0 && j->spec.ban_id < s->n_allowed) lg[j->spec.ban_id] = -INFINITY;
    if (j->gram_on) eng_gram_mask(j->spec.gram, j->spec.max_tokens - j->n_gen, lg, s->n_allowed);
    int32_t id = eng_sample_pick(s->sampler, lg, &j->spec.sp, &j->rng);
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
        if (j->spec.logprobs) {
            if (!(ev->lp = malloc(sizeof *ev->lp))) goto oom;
            eng_logprob_compute(lg, s->n_allowed, id, j->spec.top_logprobs, ev->lp);
        }
        if (!j->in_tools && id == j->spec.tool_trigger) {
            /* the text before the block is complete: flush the pipeline */
            j->in_tools = 1;
            if (pipe_flush(j, ev)) goto oom;
        }
        if (j->in_tools) {
            size_t n = 0;
            const char *b = tok_token_bytes(s->tok, id, &n);
            if (!b || eng_buf_add(&ev->tool, b, n)) goto oom;
        } else {
            size_t n = 0;
            const char *t = tok_stream_push(j->dec, id, &n);
            if (!t) {
                snprintf(err, errlen, "token %d cannot be decoded", (int)id);
                return ENG_FINISH_ERROR;
            }
            if (n && pipe_text(j, ev, t, n, &stopped)) goto oom;
            if (stopped) fin = ENG_FINISH_STOP;
        }
    }
    if (was_reasoning || eng_think_in_reasoning(&j->think)) j->n_reasoning++;
    if (fin == ENG_FINISH_NONE && j->n_gen >= j->spec.max_tokens) fin = ENG_FINISH_LENGTH;
    if (fin != ENG_FINISH_NONE && !stopped && !j->in_tools && pipe_flush(j, ev)) goto oom;
    return fin;
oom:
    snprintf(err, errlen, "out of memory");
    return ENG_FINISH_ERROR;
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
    /* Prefill chunks have fixed boundaries (multiples of prefill_chunk, so a
     * prompt is cut the same way whatever runs beside it); at most
     * prefill_chunk prompt tokens go into one step, except that the first
     * chunk always goes, so running sequences keep a steady decode pace. */
    int nb = 0, budget = s->o.prefill_chunk, any_prefill = 0;
    for (int i = 0; i < s->n_act; i++) {
        eng_job_t *j = s->active[i];
        if (j->n_fed < j->spec.n_prompt) {
            int n = j->spec.n_prompt - j->n_fed;
            if (n > s->o.prefill_chunk) n = s->o.prefill_chunk;
            if (any_prefill && n > budget) continue; /* waits for a later step */
            any_prefill = 1;
            budget -= n;
            s->b_ids[nb] = j->spec.prompt + j->n_fed;
            s->b_n[nb] = n;
            s->b_logits[nb] = j->n_fed + n == j->spec.n_prompt ? s->logits[j->slot] : NULL;
        } else {
            s->b_ids[nb] = &j->gen[j->n_gen - 1];
            s->b_n[nb] = 1;
            s->b_logits[nb] = s->logits[j->slot];
        }
        s->b_seq[nb] = j->seq;
        s->b_job[nb] = j;
        nb++;
    }
    if (nb) {
        int64_t t0 = eng_now_ns();
        int rc = eng_forward(s->model, s->b_seq, s->b_ids, s->b_n, nb, s->b_logits, err, sizeof err);
        int64_t t1 = eng_now_ns();
        atomic_fetch_add(&s->steps, 1);
        atomic_fetch_add(&s->forward_ns, (unsigned long)(t1 - t0));
        if (rc) { /* every job of this step fails; those that sat it out go on */
            for (int i = 0; i < nb; i++) finish_job(&l, NULL, s->b_job[i], ENG_FINISH_ERROR, err);
        } else {
            /* finished jobs leave active[] after this loop */
            for (int i = 0; i < nb; i++) {
                eng_job_t *j = s->b_job[i];
                if (j->n_fed < j->spec.n_prompt) {
                    j->n_fed += s->b_n[i];
                    if (j->n_fed < j->spec.n_prompt) continue;
                }
                eng_ev_t *ev;
                while (!(ev = ev_new(&l, j))) {
                    struct timespec ts = {0, 1000000};
                    nanosleep(&ts, NULL);
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
    post(s, l.head, l.tail);
}

static void *sched_main(void *arg) {
    eng_sched_t *s = arg;
    for (;;) {
        ev_list_t l = {0};
        eng_job_t *admitted[64];
        int n_adm = 0;
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
        while (s->wait_head && s->n_act + n_adm < s->o.max_batch && n_adm < 64) {
            eng_job_t *j = s->wait_head;
            s->wait_head = j->next_wait;
            if (!s->wait_head) s->wait_tail = NULL;
            s->n_wait--;
            j->next_wait = NULL;
            admitted[n_adm++] = j;
        }
        pthread_mutex_unlock(&s->mu);
        if (all)
            for (int i = 0; i < s->n_act; i++) atomic_store(&s->active[i]->cancelled, 1);
        for (int i = 0; i < n_adm; i++) {
            char err[160];
            eng_job_t *j = admitted[i];
            if (admit(s, j, err, sizeof err)) {
                finish_job(&l, NULL, j, ENG_FINISH_ERROR, err);
                continue;
            }
            s->active[s->n_act++] = j;
            atomic_store(&s->n_active, s->n_act);
        }
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
    s->o.max_batch = o && o->max_batch > 0 ? o->max_batch : 8;
    s->o.max_queue = o && o->max_queue > 0 ? o->max_queue : 64;
    s->o.prefill_chunk = o && o->prefill_chunk > 0 ? o->prefill_chunk : 512;
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
    s->sampler = eng_sampler_new(s->n_allowed);
    if (!s->active || !s->logits || !s->slot_used || !s->b_seq || !s->b_job || !s->b_ids || !s->b_n ||
        !s->b_logits || !s->sampler)
        goto oom;
    for (int i = 0; i < b; i++)
        if (!(s->logits[i] = malloc((size_t)s->vocab_rows * sizeof(float)))) goto oom;
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
    eng_sampler_free(s->sampler);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
