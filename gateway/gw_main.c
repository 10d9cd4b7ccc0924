/* gw_main.c — build/tollgate: load the configuration, start the gateway on
 * N libevent loops (one per core by default, each on its thread), stop cleanly on SIGINT/SIGTERM (stop accepting, let
 * requests in flight finish for shutdown_grace_ms, flush settlements through
 * bill_free, exit 0). */
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "gw-int.h"

static void on_hup(evutil_socket_t sig, short what, void *arg) { gw_server_reload(arg); }

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    gw_server_t *s = arg;
    fprintf(stderr, "tollgate: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    gw_server_shutdown(s);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            gw_config_usage();
            return 0;
        }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl; /* one descriptor per client and per worker request: take what we may */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    char err[512];
    gw_config_t *cfg = gw_config_load(argc, argv, err, sizeof err);
    if (!cfg) {
        fprintf(stderr, "tollgate: config: %s\n", err);
        return 2;
    }
    event_set_mem_functions(gw_ev_malloc, gw_ev_realloc, gw_ev_free); /* before libevent allocates anything */
    evthread_use_pthreads(); /* libevent's shared state (its debug map, logging); the loops' bases take no
                                lock: they wake each other through gw_loop_wake */
    struct event_base *base = gw_event_base_new();
    if (!base) {
        fprintf(stderr, "tollgate: event_base_new failed\n");
        gw_config_free(cfg);
        return 1;
    }
    gw_server_t *s = gw_server_new(base, cfg, err, sizeof err);
    if (!s) {
        fprintf(stderr, "tollgate: %s\n", err);
        event_base_free(base);
        gw_config_free(cfg);
        return 1;
    }
    struct event *si = evsignal_new(base, SIGINT, on_signal, s);
    struct event *st = evsignal_new(base, SIGTERM, on_signal, s);
    if (si) event_add(si, NULL);
    if (st) event_add(st, NULL);
    struct event *sh = evsignal_new(base, SIGHUP, on_hup, s);
    if (sh) event_add(sh, NULL);
    if (gw_server_start(s, err, sizeof err) != GW_OK) fprintf(stderr, "tollgate: %s\n", err);
    fprintf(stderr, "tollgate: listening on https://%s (%d worker%s, %d event loop%s)\n", cfg->listen,
            cfg->nworkers, cfg->nworkers == 1 ? "" : "s", gw_server_loops(s), gw_server_loops(s) == 1 ? "" : "s");
    event_base_dispatch(base); /* the first loop; the others run on their threads */
    gw_server_join(s);
    if (si) event_free(si);
    if (st) event_free(st);
    if (sh) event_free(sh);
    gw_server_free(s);
    event_base_free(base);
    gw_config_free(cfg);
    fprintf(stderr, "tollgate: stopped\n");
    return 0;
}
