/* gw_mail.c — wake-ups of an event loop from other threads: a loop's mailbox
 * (an eventfd, read by the loop, and the events to activate, under a mutex).
 * The loops' bases take no lock (gw_event_base_new), so another thread never
 * touches one: it names an event of that base here, and the loop activates
 * it on its own thread.  Used by the shutdown (gw_server.c) and the metrics
 * gathering (gw_admin.c); calls nothing of either. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "gw-int.h"

static void gw_loop_on_mail(evutil_socket_t fd, short what, void *arg) {
    gw_loop_t *l = arg;
    uint64_t n;
    while (read(l->mail_fd, &n, sizeof n) == (ssize_t)sizeof n) {}
    struct event *ev[4];
    pthread_mutex_lock(&l->mail_mu);
    int k = l->nmail;
    memcpy(ev, l->mail, (size_t)k * sizeof *ev);
    l->nmail = 0;
    pthread_mutex_unlock(&l->mail_mu);
    for (int i = 0; i < k; i++) event_active(ev[i], EV_TIMEOUT, 1);
}

void gw_loop_wake(gw_loop_t *l, struct event *ev) {
    pthread_mutex_lock(&l->mail_mu);
    int i = 0;
    while (i < l->nmail && l->mail[i] != ev) i++;
    if (i == l->nmail && l->nmail < (int)(sizeof l->mail / sizeof l->mail[0])) l->mail[l->nmail++] = ev;
    pthread_mutex_unlock(&l->mail_mu);
    uint64_t one = 1;
    if (write(l->mail_fd, &one, sizeof one) < 0) { /* the counter at its maximum: a wake-up is pending */
    }
}

int gw_loop_mail_init(gw_loop_t *l) {
    pthread_mutex_init(&l->mail_mu, NULL);
    l->mail_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->mail_fd < 0) return GW_ERROR;
    l->mail_ev = event_new(l->base, l->mail_fd, EV_READ | EV_PERSIST, gw_loop_on_mail, l);
    return l->mail_ev && event_add(l->mail_ev, NULL) == 0 ? GW_OK : GW_ERROR;
}

void gw_loop_mail_release(gw_loop_t *l) {
    if (l->mail_ev) event_free(l->mail_ev);
    l->mail_ev = NULL;
    if (l->mail_fd >= 0) close(l->mail_fd);
    l->mail_fd = -1;
    pthread_mutex_destroy(&l->mail_mu);
}
