/* tg_work.c — worker threads for an event loop (tg_work.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include <event2/event.h>

#include "tg_work.h"

typedef struct job {
    struct job *next;
    tg_work_fn run, done;
    void *arg;
} job_t;

struct tg_work {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *head, **tail;     /* waiting to run */
    job_t *dhead, **dtail;   /* ran, waiting for `done` on the loop */
    int stopping;
    int nthreads;
    pthread_t *threads;
    int pipe[2];             /* a byte: `done`s are waiting */
    struct event *ev;
};

static void *worker(void *arg) {
    tg_work_t *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->head && !w->stopping) pthread_cond_wait(&w->cv, &w->mu);
        job_t *j = w->head;
        if (!j) break; /* stopping, and nothing left to run */
        if (!(w->head = j->next)) w->tail = &w->head;
        pthread_mutex_unlock(&w->mu);
        j->run(j->arg);
        j->next = NULL;
        pthread_mutex_lock(&w->mu);
        int wake = !w->dhead;
        *w->dtail = j;
        w->dtail = &j->next;
        if (wake && !w->stopping) {
            char c = 1;
            ssize_t n = write(w->pipe[1], &c, 1); /* full pipe: a wake-up is already pending */
            (void)n;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Call the `done` of every finished job (on the loop, or in tg_work_free). */
static void deliver(tg_work_t *w) {
    pthread_mutex_lock(&w->mu);
    job_t *j = w->dhead;
    w->dhead = NULL;
    w->dtail = &w->dhead;
    pthread_mutex_unlock(&w->mu);
    while (j) {
        job_t *n = j->next;
        if (j->done) j->done(j->arg);
        free(j);
        j = n;
    }
}

static void on_pipe(evutil_socket_t fd, short what, void *arg) {
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    deliver(arg);
}

tg_work_t *tg_work_new(struct event_base *base, int nthreads) {
    tg_work_t *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    if (nthreads < 1) nthreads = 1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->tail = &w->head;
    w->dtail = &w->dhead;
    w->pipe[0] = w->pipe[1] = -1;
    if (pipe2(w->pipe, O_NONBLOCK | O_CLOEXEC) != 0) goto fail;
    if (!(w->ev = event_new(base, w->pipe[0], EV_READ | EV_PERSIST, on_pipe, w)) || event_add(w->ev, NULL) != 0)
        goto fail;
    if (!(w->threads = calloc((size_t)nthreads, sizeof *w->threads))) goto fail;
    for (; w->nthreads < nthreads; w->nthreads++)
        if (pthread_create(&w->threads[w->nthreads], NULL, worker, w) != 0) goto fail;
    return w;
fail:
    tg_work_free(w);
    return NULL;
}

int tg_work_submit(tg_work_t *w, tg_work_fn run, tg_work_fn done, void *arg) {
    job_t *j = calloc(1, sizeof *j);
    if (!j) return -1;
    j->run = run;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&w->mu);
    *w->tail = j;
    w->tail = &j->next;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

void tg_work_free(tg_work_t *w) {
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->nthreads; i++) pthread_join(w->threads[i], NULL);
    deliver(w);
    if (w->ev) event_free(w->ev);
    if (w->pipe[0] >= 0) close(w->pipe[0]);
    if (w->pipe[1] >= 0) close(w->pipe[1]);
    free(w->threads);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
