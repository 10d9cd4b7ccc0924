/* bill_pg.c — a small pool of PostgreSQL connections driven by libpq's
 * non-blocking API from a libevent loop.
 *
 * Jobs (one statement with text or binary parameters each, or a simple
 * query whose COPY ... FROM STDIN statements are fed from memory:
 * bill_pg_copy) wait in one FIFO and go to
 * the first idle connection.  Each connection runs one job at a time:
 * PQsendQueryParams, PQflush while the socket is writable, PQconsumeInput /
 * PQisBusy / PQgetResult while it is readable.  An idle connection keeps a
 * read event so a server restart is noticed at once; a broken connection is
 * closed and reconnected (PQconnectStartParams + PQconnectPoll) with backoff
 * 100 ms .. 2 s.  Every job has a deadline: a queued job that misses it fails
 * with "timeout"; a running one also costs its connection (closed; the
 * server notices that only when it next writes to it, so the sessions run
 * with lock_timeout under the deadline: session_options).  When every connection is down, a new job
 * triggers an immediate reconnect (at most every 100 ms) and fails as soon as
 * that fails, so requests neither wait out an outage nor the backoff after it.
 *
 * Invariants: a job's callback runs exactly once unless cancelled, always
 * from the loop, never from inside bill_pg_query; a job whose connection
 * broke mid-flight is failed, never silently re-run (it may have committed). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "bill-int.h"

enum { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };

typedef struct pg_conn {
    bill_pg_t *pg;
    PGconn *conn;
    int st;
    int sock;                /* socket the events watch */
    struct event *rev, *wev; /* connected: persistent read, one-shot write */
    struct event *cev;       /* connecting: one-shot on the current socket */
    struct event *timer;     /* connect deadline / reconnect backoff */
    int backoff_ms;
    bill_pg_job_t *job;
    PGresult *res;
    int preparing;            /* the job's statement is being prepared first */
    const char *prepared[8];  /* statement names prepared on this session */
    int nprepared;
} pg_conn_t;

struct bill_pg_job {
    TAILQ_ENTRY(bill_pg_job) link;
    bill_pg_t *pg;
    char *sql;
    int nparams;
    char **params;
    int *lengths;  /* binary parameters (bill_pg_query_binary): their sizes; NULL: text */
    int *formats;  /* binary: all 1 */
    bill_pg_cb cb;
    void *arg;
    struct event *timer;
    pg_conn_t *on; /* running there, or NULL while queued */
    int failfast;
    int retry_ok; /* read-only: runs left when its connection breaks under it */
    int doomed;   /* conn_fail: to be failed */
    const char *stmt; /* name of a prepared statement for sql, or NULL */
    int copy;         /* bill_pg_copy: sql is a simple query; params[i] (lengths[i] bytes) feed its i-th COPY */
    int ncopied;      /* COPYs fed so far */
};

TAILQ_HEAD(job_q, bill_pg_job);

struct bill_pg {
    struct event_base *base;
    char *conninfo;
    char *options; /* the sessions' `options`: the conninfo's (or PGOPTIONS) + lock_timeout */
    int timeout_ms;
    int nconn;
    int nup; /* connections IDLE or BUSY */
    pg_conn_t *conns;
    struct job_q queue;
    bill_pg_up_cb up_cb;
    void *up_arg;
    struct event *kick; /* runs dispatch() from the loop */
    int force_reconnect;  /* kick: reconnect the DOWN connections now */
    int64_t last_forced_ms;
};

static void conn_start(pg_conn_t *c);
static void conn_send_job(pg_conn_t *c);
static void conn_flush(pg_conn_t *c);

static int64_t mono_ms(void) { return tg_mono_us() / 1000; }
static void conn_fail(pg_conn_t *c, const char *why);
static void dispatch(bill_pg_t *pg);

static void job_free(bill_pg_job_t *j) {
    if (!j) return;
    if (j->timer) event_free(j->timer);
    for (int i = 0; i < j->nparams; i++) free(j->params[i]);
    free(j->params);
    free(j->lengths);
    free(j->formats);
    free(j->sql);
    free(j);
}

/* Run the callback of a finished job and free it.  res may be NULL. */
static void job_finish(bill_pg_job_t *j, PGresult *res, const char *err) {
    if (j->cb) j->cb(res, err, j->arg);
    job_free(j);
}

static void job_timeout_cb(evutil_socket_t fd, short what, void *arg) {
    bill_pg_job_t *j = arg;
    bill_pg_t *pg = j->pg;
    if (j->on) {
        pg_conn_t *c = j->on;
        c->job = NULL;
        j->on = NULL;
        conn_fail(c, "statement timeout");
    } else {
        TAILQ_REMOVE(&pg->queue, j, link);
    }
    job_finish(j, NULL, j->failfast ? "database unavailable" : "database timeout");
}

static void conn_events_free(pg_conn_t *c) {
    if (c->rev) event_free(c->rev);
    if (c->wev) event_free(c->wev);
    if (c->cev) event_free(c->cev);
    c->rev = c->wev = c->cev = NULL;
}

static void conn_close(pg_conn_t *c) {
    conn_events_free(c);
    if (c->res) PQclear(c->res);
    c->res = NULL;
    if (c->conn) PQfinish(c->conn);
    c->conn = NULL;
    c->preparing = 0;
    c->nprepared = 0;
    if (c->st == C_IDLE || c->st == C_BUSY) c->pg->nup--;
    c->st = C_DOWN;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg) {
    pg_conn_t *c = arg;
    if (c->st == C_CONNECTING) { /* the connect deadline passed */
        conn_fail(c, "connect timeout");
        return;
    }
    if (c->st == C_DOWN) conn_start(c);
}

static int pool_all_down(const bill_pg_t *pg) {
    for (int i = 0; i < pg->nconn; i++)
        if (pg->conns[i].st != C_DOWN) return 0;
    return 1;
}

/* Close c, fail its job, schedule a reconnect; when no connection is left
 * alive, fail the queued jobs instead of letting them wait for the deadline. */
static void conn_fail(pg_conn_t *c, const char *why) {
    bill_pg_t *pg = c->pg;
    bill_pg_job_t *j = c->job;
    char msg[256];
    snprintf(msg, sizeof msg, "database unavailable: %s", why);
    c->job = NULL;
    conn_close(c);
    if (c->backoff_ms == 0) c->backoff_ms = 100;
    else if ((c->backoff_ms *= 2) > 2000) c->backoff_ms = 2000;
    struct timeval tv = {c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
    if (j) {
        j->on = NULL;
        if (j->retry_ok > 0) { /* again, on another or a new connection */
            j->retry_ok--;
            TAILQ_INSERT_HEAD(&pg->queue, j, link);
            event_active(pg->kick, EV_TIMEOUT, 0);
        } else {
            job_finish(j, NULL, msg);
        }
    }
    if (!pool_all_down(pg)) return;
    /* Nothing left alive.  Read-only jobs may wait for one immediate reconnect
     * (e.g. every backend was terminated but the server is up; at most every
     * 100 ms, so a server that is really down fails them at once); every other
     * queued job fails now. */
    int64_t now = mono_ms();
    int retry = 0;
    bill_pg_job_t *q;
    TAILQ_FOREACH(q, &pg->queue, link) retry |= q->retry_ok > 0;
    if (retry && now - pg->last_forced_ms < 100) retry = 0;
    if (retry) {
        pg->force_reconnect = 1;
        pg->last_forced_ms = now;
        event_active(pg->kick, EV_TIMEOUT, 0);
    }
    TAILQ_FOREACH(q, &pg->queue, link) {
        q->doomed = !(retry && q->retry_ok > 0);
        if (!q->doomed) q->retry_ok--;
    }
    /* from the head each time: a callback may cancel or add queued jobs */
    for (;;) {
        TAILQ_FOREACH(q, &pg->queue, link) if (q->doomed) break;
        if (!q) break;
        TAILQ_REMOVE(&pg->queue, q, link);
        job_finish(q, NULL, msg);
    }
}

static void job_done(pg_conn_t *c) {
    bill_pg_job_t *j = c->job;
    PGresult *res = c->res;
    c->job = NULL;
    c->res = NULL;
    c->st = C_IDLE;
    j->on = NULL;
    evtimer_del(j->timer);
    job_finish(j, res, res ? NULL : "no result");
    if (res) PQclear(res);
    dispatch(c->pg);
}

/* Did the statement fail because the session ended (server shutdown,
 * pg_terminate_backend, connection exception) rather than because of itself? */
static int conn_lost(pg_conn_t *c) {
    if (PQstatus(c->conn) == CONNECTION_BAD) return 1;
    if (!c->res || PQresultStatus(c->res) != PGRES_FATAL_ERROR) return 0;
    const char *st = PQresultErrorField(c->res, PG_DIAG_SQLSTATE);
    return st && (!strncmp(st, "08", 2) || !strncmp(st, "57P", 3));
}

static void conn_read(pg_conn_t *c) {
    if (!PQconsumeInput(c->conn)) {
        conn_fail(c, PQerrorMessage(c->conn));
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(c->conn))) PQfreemem(n);
    if (c->st != C_BUSY) {
        if (PQstatus(c->conn) == CONNECTION_BAD) conn_fail(c, "connection closed");
        return;
    }
    while (!PQisBusy(c->conn)) {
        PGresult *r = PQgetResult(c->conn);
        if (!r) {
            if (conn_lost(c)) {
                conn_fail(c, "connection lost during a statement");
                return;
            }
            if (c->preparing && c->res && PQresultStatus(c->res) == PGRES_COMMAND_OK) {
                PQclear(c->res);
                c->res = NULL;
                c->preparing = 0;
                if (c->nprepared < (int)(sizeof c->prepared / sizeof c->prepared[0]))
                    c->prepared[c->nprepared++] = c->job->stmt;
                conn_send_job(c);
                return;
            }
            c->preparing = 0; /* a failed PREPARE is the job's answer */
            job_done(c);
            return;
        }
        if (PQresultStatus(r) == PGRES_COPY_IN) { /* a COPY of a bill_pg_copy job asks for its rows */
            PQclear(r);
            bill_pg_job_t *j = c->job;
            int k = j->copy ? j->ncopied++ : j->nparams;
            if ((k < j->nparams && j->lengths[k] > 0 && PQputCopyData(c->conn, j->params[k], j->lengths[k]) != 1) ||
                PQputCopyEnd(c->conn, k < j->nparams ? NULL : "no rows for this COPY") != 1) {
                conn_fail(c, PQerrorMessage(c->conn));
                return;
            }
            conn_flush(c);
            if (c->st != C_BUSY) return;
            continue;
        }
        /* the first result; of a multi-statement job (bill_pg_copy), its first error */
        if (!c->res || (PQresultStatus(r) == PGRES_FATAL_ERROR && PQresultStatus(c->res) != PGRES_FATAL_ERROR)) {
            if (c->res) PQclear(c->res);
            c->res = r;
        } else {
            PQclear(r);
        }
    }
    if (PQstatus(c->conn) == CONNECTION_BAD) conn_fail(c, "connection closed");
}

static void conn_flush(pg_conn_t *c) {
    int r = PQflush(c->conn);
    if (r < 0) conn_fail(c, PQerrorMessage(c->conn));
    else if (r == 1) event_add(c->wev, NULL);
}

static void conn_io_cb(evutil_socket_t fd, short what, void *arg) {
    pg_conn_t *c = arg;
    if (what & EV_READ) {
        conn_read(c);
        if (c->st == C_DOWN) return;
        /* libpq may have more to send once it read (e.g. after a full buffer) */
        if (c->st == C_BUSY && PQisnonblocking(c->conn)) conn_flush(c);
    } else if (what & EV_WRITE) {
        conn_flush(c);
    }
}

static void notice_cb(void *arg, const char *msg) { fprintf(stderr, "bill: postgres: %s", msg); }

static void conn_connected(pg_conn_t *c) {
    bill_pg_t *pg = c->pg;
    conn_events_free(c);
    evtimer_del(c->timer);
    if (PQsetnonblocking(c->conn, 1) != 0) {
        conn_fail(c, "PQsetnonblocking failed");
        return;
    }
    PQsetNoticeProcessor(c->conn, notice_cb, NULL);
    c->sock = PQsocket(c->conn);
    c->rev = event_new(pg->base, c->sock, EV_READ | EV_PERSIST, conn_io_cb, c);
    c->wev = event_new(pg->base, c->sock, EV_WRITE, conn_io_cb, c);
    if (!c->rev || !c->wev || event_add(c->rev, NULL) != 0) {
        conn_fail(c, "out of memory");
        return;
    }
    c->st = C_IDLE;
    c->backoff_ms = 0;
    if (pg->nup++ == 0 && pg->up_cb) pg->up_cb(pg->up_arg);
    dispatch(pg);
}

static void conn_poll_cb(evutil_socket_t fd, short what, void *arg);

static void conn_poll(pg_conn_t *c, PostgresPollingStatusType ps) {
    if (c->cev) event_free(c->cev);
    c->cev = NULL;
    switch (ps) {
    case PGRES_POLLING_OK:
        conn_connected(c);
        return;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        c->sock = PQsocket(c->conn);
        c->cev = event_new(c->pg->base, c->sock, ps == PGRES_POLLING_READING ? EV_READ : EV_WRITE,
                           conn_poll_cb, c);
        if (!c->cev || event_add(c->cev, NULL) != 0) conn_fail(c, "out of memory");
        return;
    default:
        conn_fail(c, PQerrorMessage(c->conn));
        return;
    }
}

static void conn_poll_cb(evutil_socket_t fd, short what, void *arg) {
    pg_conn_t *c = arg;
    conn_poll(c, PQconnectPoll(c->conn));
}

static void conn_start(pg_conn_t *c) {
    const char *keys[] = {"dbname", "application_name", "options", NULL};
    const char *vals[] = {c->pg->conninfo, "tollgate", c->pg->options, NULL};
    c->conn = PQconnectStartParams(keys, vals, 1);
    c->st = C_CONNECTING;
    if (!c->conn || PQstatus(c->conn) == CONNECTION_BAD) {
        conn_fail(c, c->conn ? PQerrorMessage(c->conn) : "out of memory");
        return;
    }
    struct timeval tv = {5, 0};
    evtimer_add(c->timer, &tv);
    conn_poll(c, PGRES_POLLING_WRITING);
}

static void conn_send(pg_conn_t *c, bill_pg_job_t *j) {
    if (j->failfast) { /* a connection came back before the job was failed: give it its time */
        struct timeval tv = {c->pg->timeout_ms / 1000, (c->pg->timeout_ms % 1000) * 1000};
        j->failfast = 0;
        evtimer_add(j->timer, &tv);
    }
    c->job = j;
    j->on = c;
    c->st = C_BUSY;
    conn_send_job(c);
}

static int conn_has(const pg_conn_t *c, const char *stmt) {
    for (int i = 0; i < c->nprepared; i++)
        if (!strcmp(c->prepared[i], stmt)) return 1;
    return 0;
}

/* Send c->job: PREPARE first when its statement is new to this session (the
 * EXECUTE follows when the PREPARE's result arrives), else run it. */
static void conn_send_job(pg_conn_t *c) {
    bill_pg_job_t *j = c->job;
    const char *const *params = (const char *const *)j->params;
    int ok;
    if (j->copy) {
        ok = PQsendQuery(c->conn, j->sql);
    } else if (!j->stmt) {
        ok = PQsendQueryParams(c->conn, j->sql, j->nparams, NULL, params, j->lengths, j->formats, 0);
    } else if (conn_has(c, j->stmt)) {
        ok = PQsendQueryPrepared(c->conn, j->stmt, j->nparams, params, j->lengths, j->formats, 0);
    } else {
        c->preparing = 1;
        ok = PQsendPrepare(c->conn, j->stmt, j->sql, j->nparams, NULL);
    }
    if (!ok) {
        /* Nothing of this job ran: it may go to another connection. */
        c->job = NULL;
        j->on = NULL;
        TAILQ_INSERT_HEAD(&c->pg->queue, j, link);
        conn_fail(c, PQerrorMessage(c->conn));
        return;
    }
    conn_flush(c);
}

static void dispatch(bill_pg_t *pg) {
    for (int i = 0; i < pg->nconn && !TAILQ_EMPTY(&pg->queue); i++) {
        pg_conn_t *c = &pg->conns[i];
        if (c->st != C_IDLE) continue;
        bill_pg_job_t *j = TAILQ_FIRST(&pg->queue);
        TAILQ_REMOVE(&pg->queue, j, link);
        conn_send(c, j);
    }
}

/* The job of bill_pg_query (lengths NULL) or bill_pg_query_binary, its
 * parameters copied; NULL on ENOMEM. */
static bill_pg_job_t *job_new(bill_pg_t *pg, const char *sql, int nparams, const char *const *params,
                              const int *lengths, bill_pg_cb cb, void *arg) {
    bill_pg_job_t *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->pg = pg;
    j->cb = cb;
    j->arg = arg;
    j->sql = strdup(sql);
    j->params = calloc(nparams ? nparams : 1, sizeof *j->params);
    j->timer = evtimer_new(pg->base, job_timeout_cb, j);
    if (!j->sql || !j->params || !j->timer) goto fail;
    if (lengths) {
        j->lengths = calloc(nparams ? nparams : 1, sizeof *j->lengths);
        j->formats = calloc(nparams ? nparams : 1, sizeof *j->formats);
        if (!j->lengths || !j->formats) goto fail;
    }
    for (j->nparams = 0; j->nparams < nparams; j->nparams++) {
        const char *v = params[j->nparams];
        if (!v) continue;
        if (!lengths) {
            if (!(j->params[j->nparams] = strdup(v))) goto fail;
            continue;
        }
        size_t n = lengths[j->nparams] > 0 ? (size_t)lengths[j->nparams] : 0;
        if (!(j->params[j->nparams] = malloc(n ? n : 1))) goto fail;
        memcpy(j->params[j->nparams], v, n);
        j->lengths[j->nparams] = (int)n;
        j->formats[j->nparams] = 1;
    }
    return j;
fail:
    job_free(j);
    return NULL;
}

/* Queue a new job (bill_pg_query's rest). */
static bill_pg_job_t *job_queue(bill_pg_t *pg, bill_pg_job_t *j) {
    if (!j) return NULL;
    struct timeval tv = {pg->timeout_ms / 1000, (pg->timeout_ms % 1000) * 1000};
    if (pool_all_down(pg)) {
        /* Every connection is down and waiting for its backoff.  Try to
         * reconnect now (PostgreSQL may be back), at most every 100 ms; the
         * job fails as soon as that attempt fails.  In between, fail at once. */
        int64_t now = mono_ms();
        if (now - pg->last_forced_ms >= 100) {
            pg->last_forced_ms = now;
            pg->force_reconnect = 1;
        } else {
            j->failfast = 1;
            tv.tv_sec = tv.tv_usec = 0;
        }
    }
    evtimer_add(j->timer, &tv);
    TAILQ_INSERT_TAIL(&pg->queue, j, link);
    /* Send from the loop, not from here: a send that fails may fail jobs,
     * and callbacks never run inside bill_pg_query. */
    if (!j->failfast) event_active(pg->kick, EV_TIMEOUT, 0);
    return j;
}

bill_pg_job_t *bill_pg_query(bill_pg_t *pg, const char *sql, int nparams, const char *const *params,
                             bill_pg_cb cb, void *arg) {
    return job_queue(pg, job_new(pg, sql, nparams, params, NULL, cb, arg));
}

bill_pg_job_t *bill_pg_query_binary(bill_pg_t *pg, const char *sql, int nparams, const char *const *params,
                                    const int *lengths, bill_pg_cb cb, void *arg) {
    return job_queue(pg, job_new(pg, sql, nparams, params, lengths, cb, arg));
}

bill_pg_job_t *bill_pg_copy(bill_pg_t *pg, const char *sql, int ncopy, char **data, const int *lengths,
                            bill_pg_cb cb, void *arg) {
    bill_pg_job_t *j = job_new(pg, sql, 0, NULL, NULL, cb, arg);
    if (j) {
        free(j->params);
        j->params = data;
        j->lengths = malloc((ncopy ? ncopy : 1) * sizeof *j->lengths);
        if (!j->lengths) {
            j->params = NULL;
            job_free(j);
            j = NULL;
        } else {
            memcpy(j->lengths, lengths, ncopy * sizeof *j->lengths);
            j->nparams = ncopy;
            j->copy = 1;
        }
    }
    if (!j) {
        for (int i = 0; i < ncopy; i++) free(data[i]);
        free(data);
        return NULL;
    }
    return job_queue(pg, j);
}

void bill_pg_job_prepared(bill_pg_job_t *j, const char *name) {
    if (j) j->stmt = name;
}

void bill_pg_job_retry_ok(bill_pg_job_t *j) {
    if (j) j->retry_ok = j->pg->nconn + 1; /* every connection may be stale at once */
}

void bill_pg_cancel(bill_pg_job_t *j) {
    if (!j) return;
    if (j->on) { /* let it finish on its connection, quietly */
        j->cb = NULL;
        return;
    }
    TAILQ_REMOVE(&j->pg->queue, j, link);
    job_free(j);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg) {
    bill_pg_t *pg = arg;
    if (pg->force_reconnect) {
        pg->force_reconnect = 0;
        for (int i = 0; i < pg->nconn; i++) {
            pg_conn_t *c = &pg->conns[i];
            if (c->st != C_DOWN) continue;
            evtimer_del(c->timer);
            conn_start(c);
        }
    }
    dispatch(pg);
}

int bill_pg_up(const bill_pg_t *pg) { return pg && pg->nup > 0; }

void bill_pg_set_up_arg(bill_pg_t *pg, void *up_arg) { pg->up_arg = up_arg; }

/* The sessions' `options` (malloc'ed, NULL when out of memory): those of the
 * conninfo, else $PGOPTIONS (the keyword given here replaces both), plus
 * lock_timeout at nine tenths of the deadline.  A statement waiting for a
 * lock (a customer row under a long finalization, a locked table) past it is
 * cancelled by the server, so it fails before its caller's deadline and never
 * commits after the caller was told it failed; before, the closed connection
 * went unnoticed by the waiting backend, which committed once the lock came
 * (an admin credit answered 503 was applied: run again, it was applied twice). */
static char *session_options(const char *conninfo, int timeout_ms) {
    const char *own = getenv("PGOPTIONS");
    PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", NULL);
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (!strcmp(o->keyword, "options") && o->val) own = o->val;
    int lock_ms = timeout_ms - timeout_ms / 10;
    size_t n = (own ? strlen(own) : 0) + 48;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s%s-c lock_timeout=%d", own ? own : "", own && *own ? " " : "", lock_ms > 0 ? lock_ms : 1);
    PQconninfoFree(opts);
    return s;
}

bill_pg_t *bill_pg_new(struct event_base *base, const char *conninfo, int nconn, int timeout_ms,
                       bill_pg_up_cb up_cb, void *up_arg) {
    bill_pg_t *pg = calloc(1, sizeof *pg);
    if (!pg) return NULL;
    pg->base = base;
    pg->timeout_ms = timeout_ms;
    pg->up_cb = up_cb;
    pg->up_arg = up_arg;
    TAILQ_INIT(&pg->queue);
    pg->conninfo = strdup(conninfo ? conninfo : "");
    pg->options = session_options(conninfo, timeout_ms);
    pg->conns = calloc(nconn, sizeof *pg->conns);
    pg->kick = event_new(base, -1, 0, kick_cb, pg);
    if (!pg->conninfo || !pg->options || !pg->conns || !pg->kick) goto fail;
    pg->nconn = nconn;
    for (int i = 0; i < nconn; i++) {
        pg_conn_t *c = &pg->conns[i];
        c->pg = pg;
        c->st = C_DOWN;
        if (!(c->timer = evtimer_new(base, retry_cb, c))) goto fail;
    }
    for (int i = 0; i < nconn; i++) conn_start(&pg->conns[i]);
    return pg;
fail:
    bill_pg_free(pg);
    return NULL;
}

void bill_pg_free(bill_pg_t *pg) {
    if (!pg) return;
    bill_pg_job_t *j;
    while ((j = TAILQ_FIRST(&pg->queue))) {
        TAILQ_REMOVE(&pg->queue, j, link);
        job_free(j);
    }
    for (int i = 0; i < pg->nconn; i++) {
        pg_conn_t *c = &pg->conns[i];
        if (c->job) job_free(c->job);
        c->job = NULL;
        conn_close(c);
        if (c->timer) event_free(c->timer);
    }
    if (pg->kick) event_free(pg->kick);
    free(pg->conns);
    free(pg->conninfo);
    free(pg->options);
    free(pg);
}
