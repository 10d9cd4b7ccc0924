/* tests/unit/engine/eng_cpu_pool.c — the thread pool (engine/cpu/eng_cpu_pool.c):
 * eng_cpu_pool_run calls every thread index once per job; eng_cpu_pool_run_any
 * returns only when every item of a shared-counter job is done, each exactly
 * once, whichever workers joined (many short jobs back to back, as a decode
 * hands them over, with a worker that sleeps now and then to be left out). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../tg_test.h"
#include "eng_cpu.h"

enum { ITEMS = 97 };

typedef struct {
    int64_t next;
    int done[ITEMS];   /* times each item ran */
    int calls[8];      /* times each thread index ran */
    int nap;           /* workers (i > 0) sleep this many us before taking work */
    int lag;           /* the caller (i == 0) sleeps this many us before taking work */
} job_t;

static void any_fn(void *arg, int i, int n) {
    job_t *j = arg;
    __atomic_add_fetch(&j->calls[i], 1, __ATOMIC_RELAXED);
    if (i > 0 && j->nap) nanosleep(&(struct timespec){0, j->nap * 1000L}, NULL);
    if (i == 0 && j->lag) nanosleep(&(struct timespec){0, j->lag * 1000L}, NULL);
    for (;;) {
        int64_t k = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (k >= ITEMS) break;
        for (volatile int spin = 0; spin < 2000; spin++) {} /* an item takes a while: some are in flight at the end */
        if (i > 0 && j->lag) nanosleep(&(struct timespec){0, 50000L}, NULL); /* a worker's item outlasts the caller's */
        __atomic_add_fetch(&j->done[k], 1, __ATOMIC_RELAXED);
    }
}

static void static_fn(void *arg, int i, int n) {
    job_t *j = arg;
    __atomic_add_fetch(&j->calls[i], 1, __ATOMIC_RELAXED);
    for (int k = i; k < ITEMS; k += n) j->done[k]++;
}

static void test_pool(void) {
    for (int nt = 1; nt <= 4; nt++) {
        eng_cpu_pool_t *p = eng_cpu_pool_new(nt);
        CHECK(p != NULL);
        if (!p) return;
        int bad_any = 0, bad_static = 0, left_out = 0;
        for (int r = 0; r < 400; r++) {
            job_t j;
            memset(&j, 0, sizeof j);
            j.nap = r % 10 == 0 ? 200 : 0;
            j.lag = r % 10 == 5 ? 200 : 0;
            eng_cpu_pool_run_any(p, any_fn, &j);
            for (int k = 0; k < ITEMS; k++) bad_any += j.done[k] != 1;
            bad_any += j.calls[0] != 1;
            for (int i = 1; i < nt; i++) bad_any += j.calls[i] > 1, left_out += j.calls[i] == 0;
            if (bad_any) break; /* a job returned early: its workers still run; the pool is unusable */
            memset(&j, 0, sizeof j);
            eng_cpu_pool_run(p, static_fn, &j);
            for (int k = 0; k < ITEMS; k++) bad_static += j.done[k] != 1;
            for (int i = 0; i < nt; i++) bad_static += j.calls[i] != 1;
        }
        printf("pool of %d: 400 shared-counter jobs (a worker left out %d times), 400 indexed jobs\n", nt, left_out);
        CHECK_EQ_I(bad_any, 0);
        CHECK_EQ_I(bad_static, 0);
        eng_cpu_pool_free(p);
    }
}

TG_TEST_MAIN(test_pool)
