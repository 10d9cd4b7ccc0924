/* eng_cpu_pool.c — a fixed pool of worker threads that run one parallel job at
 * a time: eng_cpu_pool_run(p, fn, arg) calls fn(arg, i, n) for i = 0..n-1 on n
 * threads (the caller is thread 0) and returns when all are done.  Jobs split
 * their work by the thread index only, so results never depend on timing. */
#include <pthread.h>
#include <stdlib.h>

#include "eng_cpu.h"

struct eng_cpu_pool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned gen;
    int pending;
    int quit;
    void (*fn)(void *, int, int);
    void *arg;
};

typedef struct {
    eng_cpu_pool_t *p;
    int idx;
} worker_arg_t;

static void *worker(void *a) {
    worker_arg_t wa = *(worker_arg_t *)a;
    free(a);
    eng_cpu_pool_t *p = wa.p;
    unsigned seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->gen == seen && !p->quit) pthread_cond_wait(&p->go, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->gen;
        void (*fn)(void *, int, int) = p->fn;
        void *arg = p->arg;
        pthread_mutex_unlock(&p->mu);
        fn(arg, wa.idx, p->n);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
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

void eng_cpu_pool_run(eng_cpu_pool_t *p, void (*fn)(void *arg, int i, int n), void *arg) {
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    pthread_mutex_lock(&p->mu);
    while (p->pending) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

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
