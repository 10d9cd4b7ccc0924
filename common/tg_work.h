/* tg_work.h — work off an event loop: a job's `run` goes to a worker thread
 * (file I/O, fdatasync, tokenizing a large prompt), its `done` comes back on
 * the loop that submitted it (through a pipe the loop reads), so nothing the
 * loop owns is touched from another thread unless `run` is given it.
 *
 * Jobs run in submission order on each thread (one thread: strictly FIFO).
 * tg_work_free runs what is still queued, joins the threads, then calls the
 * `done` of every finished job on the caller's thread: an owner frees its
 * tg_work_t first, while what `done` touches is still alive. */
#ifndef TG_WORK_H
#define TG_WORK_H

struct event_base;
typedef struct tg_work tg_work_t;
typedef void (*tg_work_fn)(void *arg);

/* nthreads >= 1.  NULL when out of memory or threads cannot start. */
tg_work_t *tg_work_new(struct event_base *base, int nthreads);
/* run(arg) on a worker thread, then done(arg) on base's loop (done may be
 * NULL).  Returns 0, or -1 when out of memory (nothing will run). */
int tg_work_submit(tg_work_t *w, tg_work_fn run, tg_work_fn done, void *arg);
void tg_work_free(tg_work_t *w); /* accepts NULL */

#endif
