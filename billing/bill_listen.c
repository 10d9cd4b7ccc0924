/* bill_listen.c — one PostgreSQL connection that LISTENs for the changes
 * admission caches (channels tg_key and tg_customer, announced by triggers,
 * migrations/0011), driven by libevent like the pool (bill_pg.c).
 *
 * Invariant the key cache relies on: while this connection is up, every
 * committed change to a key or a customer's limits reaches notify_cb within
 * the time PostgreSQL takes to deliver it (milliseconds).  The state callback
 * says when that guarantee starts (up: after LISTEN succeeded — anything
 * before may have been missed, so the cache must be emptied) and when it ends
 * (down: the cache must stop trusting entries older than its short fallback
 * TTL).  The connection is re-made with a 100 ms .. 2 s back-off. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "bill-int.h"

enum { L_IDLE, L_CONNECTING, L_LISTENING, L_UP };

struct bill_listen {
    struct event_base *base;
    char *conninfo;
    PGconn *conn;
    int st;
    struct event *ev, *timer;
    int backoff_ms;
    bill_listen_cb notify_cb;
    bill_listen_state_cb state_cb;
    void *arg;
};

static void l_start(bill_listen_t *l);

static void l_down(bill_listen_t *l, const char *why) {
    int was_up = l->st == L_UP;
    char line[300]; /* why may live in l->conn: copied before PQfinish */
    snprintf(line, sizeof line, "%s", why ? why : "connection closed");
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    if (l->ev) event_free(l->ev);
    l->ev = NULL;
    if (l->conn) PQfinish(l->conn);
    l->conn = NULL;
    l->st = L_IDLE;
    if (was_up) {
        fprintf(stderr, "bill: key-change listener lost: %s\n", line);
        l->state_cb(0, l->arg);
    }
    l->backoff_ms = l->backoff_ms ? (l->backoff_ms * 2 > 2000 ? 2000 : l->backoff_ms * 2) : 100;
    struct timeval tv = {l->backoff_ms / 1000, (l->backoff_ms % 1000) * 1000};
    evtimer_add(l->timer, &tv);
}

static void l_watch(bill_listen_t *l, short what, event_callback_fn fn) {
    if (l->ev) event_free(l->ev);
    l->ev = event_new(l->base, PQsocket(l->conn), what, fn, l);
    if (!l->ev || event_add(l->ev, NULL) != 0) l_down(l, "out of memory");
}

static void l_read_cb(evutil_socket_t fd, short what, void *arg) {
    bill_listen_t *l = arg;
    if (!PQconsumeInput(l->conn)) {
        l_down(l, PQerrorMessage(l->conn));
        return;
    }
    if (l->st == L_LISTENING) { /* the LISTEN statements' results */
        while (!PQisBusy(l->conn)) {
            PGresult *res = PQgetResult(l->conn);
            if (!res) {
                l->st = L_UP;
                l->backoff_ms = 0;
                evtimer_del(l->timer);
                l->state_cb(1, l->arg);
                break;
            }
            int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
            PQclear(res);
            if (!ok) {
                l_down(l, PQerrorMessage(l->conn));
                return;
            }
        }
    }
    PGnotify *n;
    while ((n = PQnotifies(l->conn))) {
        if (l->st == L_UP) l->notify_cb(n->relname, n->extra, l->arg);
        PQfreemem(n);
    }
}

static void l_poll_cb(evutil_socket_t fd, short what, void *arg);

/* Server notices (a shutdown's FATAL) go to the log as the pool's do. */
static void l_notice(void *arg, const char *msg) { fprintf(stderr, "bill: postgres: %s", msg); }

static void l_poll(bill_listen_t *l, PostgresPollingStatusType ps) {
    switch (ps) {
    case PGRES_POLLING_READING: l_watch(l, EV_READ, l_poll_cb); return;
    case PGRES_POLLING_WRITING: l_watch(l, EV_WRITE, l_poll_cb); return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(l->conn, 1) != 0 ||
            !PQsendQuery(l->conn, "LISTEN tg_key; LISTEN tg_customer")) {
            l_down(l, PQerrorMessage(l->conn));
            return;
        }
        l->st = L_LISTENING;
        PQflush(l->conn);
        l_watch(l, EV_READ | EV_PERSIST, l_read_cb);
        return;
    default: l_down(l, PQerrorMessage(l->conn)); return;
    }
}

static void l_poll_cb(evutil_socket_t fd, short what, void *arg) {
    bill_listen_t *l = arg;
    l_poll(l, PQconnectPoll(l->conn));
}

/* The timer: a re-connect after back-off, or a connect/LISTEN that hangs. */
static void l_timer_cb(evutil_socket_t fd, short what, void *arg) {
    bill_listen_t *l = arg;
    if (l->st == L_IDLE) l_start(l);
    else if (l->st != L_UP) l_down(l, "connect timed out");
}

static void l_start(bill_listen_t *l) {
    const char *keys[] = {"dbname", "application_name", NULL};
    const char *vals[] = {l->conninfo, "tollgate-listen", NULL};
    l->conn = PQconnectStartParams(keys, vals, 1);
    if (l->conn) PQsetNoticeProcessor(l->conn, l_notice, NULL);
    if (!l->conn || PQstatus(l->conn) == CONNECTION_BAD) {
        l_down(l, l->conn ? PQerrorMessage(l->conn) : "out of memory");
        return;
    }
    l->st = L_CONNECTING;
    struct timeval tv = {5, 0};
    evtimer_add(l->timer, &tv);
    l_poll(l, PGRES_POLLING_WRITING);
}

bill_listen_t *bill_listen_new(struct event_base *base, const char *conninfo, bill_listen_cb notify_cb,
                               bill_listen_state_cb state_cb, void *arg) {
    bill_listen_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->base = base;
    l->notify_cb = notify_cb;
    l->state_cb = state_cb;
    l->arg = arg;
    l->conninfo = strdup(conninfo);
    l->timer = evtimer_new(base, l_timer_cb, l);
    if (!l->conninfo || !l->timer) {
        bill_listen_free(l);
        return NULL;
    }
    l_start(l);
    return l;
}

int bill_listen_up(const bill_listen_t *l) { return l && l->st == L_UP; }

void bill_listen_free(bill_listen_t *l) {
    if (!l) return;
    if (l->ev) event_free(l->ev);
    if (l->timer) event_free(l->timer);
    if (l->conn) PQfinish(l->conn);
    free(l->conninfo);
    free(l);
}
