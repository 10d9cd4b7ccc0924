/* tg_clock.h — the one clock: wall time (for timestamps others read: request
 * ids, usage rows, logs) and monotonic time (for every interval, timeout and
 * TTL, which must not jump when the wall clock is set). */
#ifndef TG_CLOCK_H
#define TG_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t tg_wall_us(void) { /* CLOCK_REALTIME, microseconds since the Unix epoch */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t tg_mono_ns(void) { /* CLOCK_MONOTONIC, nanoseconds */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t tg_mono_us(void) { return tg_mono_ns() / 1000; }

/* UTC second sec formatted by strftime's fmt, kept in c until the second
 * changes: a loop stamps many requests a second (HTTP Date, log lines), so
 * gmtime_r and strftime run once a second per cache.  Callers keep one cache
 * per format and thread: static __thread tg_timefmt_t c = TG_TIMEFMT_INIT; */
typedef struct {
    time_t last;
    char text[40];
} tg_timefmt_t;
#define TG_TIMEFMT_INIT {(time_t)-1, {0}}

static inline const char *tg_timefmt(tg_timefmt_t *c, time_t sec, const char *fmt) {
    if (sec != c->last) {
        struct tm tm;
        gmtime_r(&sec, &tm);
        strftime(c->text, sizeof c->text, fmt, &tm);
        c->last = sec;
    }
    return c->text;
}

#endif
