/* eng_cpu_pool.c — a fixed pool of worker threads that run one parallel job at
 * a time: eng_cpu_pool_run(p, fn, arg) calls fn(arg, i, n) for i = 0..n-1 on n
 * threads (the caller is thread 0) and returns when all are done.  Jobs split
 * their work by the thread index only, so results never depend on timing.
 *
 * eng_cpu_pool_run_any is for jobs whose threads take their work from a
 * shared counter, so that any subset of the threads (the caller alone
 * included) completes the job: when the caller has run out of work, it
 * closes the job, and a worker that has not joined it by then is left out
 * instead of waited for.  On a host whose cores are shared with other
 * processes a worker is often not running when a step is handed over; a
 * decode hands over ~60 steps per token, and each would otherwise wait
 * for the scheduler to run that worker once, only to find nothing left. */
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <stdint.h>
#include <stdlib.h>

#include "tg_clock.h"
#include "eng_cpu.h"

struct eng_cpu_pool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned gen;        /* bumped for each job: wakes the workers */
    uint64_t join;       /* gen << 32 | JOIN_CLOSED | the workers that joined this job */
    unsigned finished;   /* workers that joined this job and returned */
    int quit;
    void (*fn)(void *, int, int);
    void *arg;
};

typedef struct {
    eng_cpu_pool_t *p;
    int idx;
} worker_arg_t;

/* A thread waits for the next step (or for the others to finish one) by
 * spinning on a flag for up to POOL_SPIN_US microseconds before it sleeps on
 * the condition variable.  At batch 1 a decode step hands work over ~60 times
 * per token with gaps of tens of microseconds (norms, routing), and on this
 * KVM guest a futex wake-up costs more than that: spinning 200 us instead of
 * 0 took decode from ~25 to ~31 tokens/s.  Every 256 spins the thread yields
 * the core, so on an oversubscribed host it does not starve the thread that
 * it waits for. */
#ifndef POOL_SPIN_US
#define POOL_SPIN_US 200
#endif

static double mono_us(void) { return (double)tg_mono_ns() * 1e-3; }

/* spin until (*v == x) == eq (returns 1) or the time is up (returns 0) */
static int spin_until(const unsigned *v, unsigned x, int eq) {
    double t0 = 0;
    for (unsigned i = 1;; i++) {
        if ((__atomic_load_n(v, __ATOMIC_ACQUIRE) == x) == eq) return 1;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (i % 256 == 0) {
            double t = mono_us();
            if (!t0) t0 = t;
            else if (t - t0 > POOL_SPIN_US) return 0;
            sched_yield();
        }
    }
}

#define JOIN_CLOSED (1ull << 31)

static void *worker(void *a) {
    worker_arg_t wa = *(worker_arg_t *)a;
    free(a);
    eng_cpu_pool_t *p = wa.p;
    unsigned seen = 0;
    for (;;) {
        if (!spin_until(&p->gen, seen, 0)) {
            pthread_mutex_lock(&p->mu);
            while (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen && !p->quit) pthread_cond_wait(&p->go, &p->mu);
            int quit = p->quit;
            pthread_mutex_unlock(&p->mu);
            if (quit) return NULL;
        }
        seen = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
        /* join the job unless it is already closed (or over) */
        uint64_t j = __atomic_load_n(&p->join, __ATOMIC_ACQUIRE);
        int in = 0;
        while ((unsigned)(j >> 32) == seen && !(j & JOIN_CLOSED))
            if (__atomic_compare_exchange_n(&p->join, &j, j + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                in = 1;
                break;
            }
        if (!in) continue;
        p->fn(p->arg, wa.idx, p->n);
        __atomic_add_fetch(&p->finished, 1, __ATOMIC_ACQ_REL);
        pthread_mutex_lock(&p->mu);
        pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

eng_cpu_pool_t *eng_cpu_pool_new(int n) {
    eng_cpu_pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    if (n < 1) n = 1;
    p->n = n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->th = calloc(n, sizeof *p->th);
    if (!p->th) goto fail;
    for (int i = 1; i < n; i++) {
        worker_arg_t *wa = malloc(sizeof *wa);
        if (!wa) goto fail_threads;
        wa->p = p;
        wa->idx = i;
        if (pthread_create(&p->th[i], NULL, worker, wa)) {
            free(wa);
            p->n = i;
            goto fail_threads;
        }
    }
    return p;
fail_threads:
    eng_cpu_pool_free(p);
    return NULL;
fail:
    free(p);
    return NULL;
}

int eng_cpu_pool_size(const eng_cpu_pool_t *p) { return p ? p->n : 1; }

static void run(eng_cpu_pool_t *p, void (*fn)(void *arg, int i, int n), void *arg, int any) {
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    __atomic_store_n(&p->finished, 0, __ATOMIC_RELAXED);
    unsigned g = p->gen + 1;
    __atomic_store_n(&p->join, (uint64_t)g << 32, __ATOMIC_RELAXED);
    __atomic_store_n(&p->gen, g, __ATOMIC_RELEASE); /* publishes fn, arg, finished, join */
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    /* every worker runs a job split by thread index; a shared-counter job is
     * closed now, and only those that joined it are waited for */
    unsigned want = any ? (unsigned)(__atomic_fetch_or(&p->join, JOIN_CLOSED, __ATOMIC_ACQ_REL) & (JOIN_CLOSED - 1))
                        : (unsigned)p->n - 1;
    if (!spin_until(&p->finished, want, 1)) {
        pthread_mutex_lock(&p->mu);
        while (__atomic_load_n(&p->finished, __ATOMIC_ACQUIRE) != want) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

void eng_cpu_pool_run(eng_cpu_pool_t *p, void (*fn)(void *arg, int i, int n), void *arg) { run(p, fn, arg, 0); }

void eng_cpu_pool_run_any(eng_cpu_pool_t *p, void (*fn)(void *arg, int i, int n), void *arg) { run(p, fn, arg, 1); }

void eng_cpu_pool_free(eng_cpu_pool_t *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->th);
    free(p);
}
