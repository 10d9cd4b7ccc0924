/* tg_work: jobs run off the loop's thread, in order, and come back on the
 * loop; tg_work_free runs what is queued and delivers every `done`. */
#include <pthread.h>
#include <unistd.h>

#include <event2/event.h>

#include "tg_test.h"
#include "tg_work.h"

#define N 2000

static pthread_t loop_thread;
static int ran[N], nran, ndone, order_ok = 1, off_loop = 1, on_loop = 1;
static struct event_base *base;

static void run(void *arg) {
    int i = (int)(long)arg;
    if (pthread_equal(pthread_self(), loop_thread)) off_loop = 0;
    if (nran != i) order_ok = 0; /* one thread: strictly in submission order */
    ran[nran++] = i;
}

static void done(void *arg) {
    if (!pthread_equal(pthread_self(), loop_thread)) on_loop = 0;
    if (++ndone == N) event_base_loopbreak(base);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) { event_base_loopbreak(arg); }

static void slow(void *arg) { usleep(20000); }

static void test_jobs_come_back_on_the_loop(void) {
    loop_thread = pthread_self();
    base = event_base_new();
    tg_work_t *w = tg_work_new(base, 1);
    CHECK(w != NULL);
    for (long i = 0; i < N; i++) CHECK_EQ_I(tg_work_submit(w, run, done, (void *)i), 0);
    struct event *deadline = evtimer_new(base, on_deadline, base);
    struct timeval tv = {60, 0};
    evtimer_add(deadline, &tv); /* a generous deadline: the test fails, never hangs */
    event_base_dispatch(base);
    CHECK_EQ_I(ndone, N);
    CHECK_EQ_I(nran, N);
    CHECK(order_ok);
    CHECK(off_loop);
    CHECK(on_loop);
    /* queued at free: run, then their done delivered before tg_work_free returns */
    ndone = 0;
    nran = 0;
    CHECK_EQ_I(tg_work_submit(w, slow, NULL, NULL), 0);
    for (long i = 0; i < N; i++) CHECK_EQ_I(tg_work_submit(w, run, done, (void *)i), 0);
    tg_work_free(w);
    CHECK_EQ_I(nran, N);
    CHECK_EQ_I(ndone, N);
    event_free(deadline);
    event_base_free(base);
}

TG_TEST_MAIN(test_jobs_come_back_on_the_loop)
