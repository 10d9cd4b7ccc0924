/* bill_server.c — bill.h on its own event loop, for the billing tests and for
 * trying the admin API without the gateway:
 *
 *   bill_server PG_CONNINFO ADMIN_LISTEN ADMIN_TOKEN KEY_SECRET SPOOL_DIR
 *
 * Besides the admin API it reads commands on stdin, one per line, and
 * answers one line on stdout each:
 *   admit KEY MODEL                -> "admit STATUS key_id customer_id rpm tpm conc miss hit out
 *                                      price_id override_id"
 *   settle RID KEY_ID CUST MODEL MISS HIT OUT PROMPT HIT_TOKENS COMPLETION
 *          [REASONING HTTP_STATUS RECEIVED_UNIX_US [PRICE_ID OVERRIDE_ID]]
 *                                  -> "settled" (queued)
 *   refusal CUST KEY_ID MODEL HTTP_STATUS -> "counted" (bill_refusal)
 *   quit                           -> bill_free, exit 0
 * SIGTERM/SIGINT also bill_free and exit. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "bill.h"

static bill_t *bill;
static struct event_base *base;

static const char *st_name(bill_status_t st) {
    switch (st) {
    case BILL_OK: return "ok";
    case BILL_UNAUTHORIZED: return "unauthorized";
    case BILL_KEY_EXPIRED: return "key_expired";
    case BILL_MODEL_NOT_ALLOWED: return "model_not_allowed";
    case BILL_SPEND_LIMIT: return "spend_limit";
    case BILL_NO_BALANCE: return "no_balance";
    case BILL_NO_PRICE: return "no_price";
    default: return "error";
    }
}

static void admit_cb(bill_status_t st, const bill_key_t *k, void *arg) {
    printf("admit %s %lld %lld %d %d %d %lld %lld %lld %lld %lld\n", st_name(st), (long long)k->key_id,
           (long long)k->customer_id, k->rpm, k->tpm, k->concurrency, (long long)k->price.input_cache_miss,
           (long long)k->price.input_cache_hit, (long long)k->price.output, (long long)k->price.price_id,
           (long long)k->price.override_id);
    fflush(stdout);
}

/* "hold KEY MODEL AMOUNT": admit, then hold AMOUNT pico-USD and release it
 * at once; prints "hold STATUS NEEDED AVAILABLE LIMIT". */
typedef struct {
    int64_t amount;
    bill_hold_t h;
} hold_t;

static void hold_cb(bill_status_t st, const bill_hold_info_t *info, void *arg) {
    hold_t *x = arg;
    printf("hold %s %lld %lld %d\n", st_name(st), (long long)(info ? info->needed_pico : x->amount),
           (long long)(info ? info->available_pico : -1), info ? info->limit : -1);
    fflush(stdout);
    bill_hold_release(bill, &x->h);
    free(x);
}

static void hold_admit_cb(bill_status_t st, const bill_key_t *k, void *arg) {
    hold_t *x = arg;
    if (st != BILL_OK || !bill_hold(bill, k, x->amount, &x->h, hold_cb, x)) {
        printf("hold %s %lld -1 -1\n", st == BILL_OK ? "oom" : st_name(st), (long long)x->amount);
        fflush(stdout);
        free(x);
    }
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void line(char *l) {
    char *argv[20];
    int argc = 0;
    for (char *s = NULL, *t = strtok_r(l, " \t\r\n", &s); t && argc < 20; t = strtok_r(NULL, " \t\r\n", &s))
        argv[argc++] = t;
    if (argc == 0) return;
    if (!strcmp(argv[0], "quit")) {
        event_base_loopbreak(base);
    } else if (!strcmp(argv[0], "admit") && argc == 3) {
        if (!bill_admit(bill, argv[1], argv[2], "127.0.0.1", admit_cb, NULL)) puts("admit oom");
    } else if (!strcmp(argv[0], "refusal") && argc == 5) {
        bill_refusal(bill, atoll(argv[1]), atoll(argv[2]), argv[3], atoi(argv[4]));
        puts("counted");
    } else if (!strcmp(argv[0], "hold") && argc == 4) {
        hold_t *x = calloc(1, sizeof *x);
        if (x) x->amount = atoll(argv[3]);
        if (!x || !bill_admit(bill, argv[1], argv[2], "127.0.0.1", hold_admit_cb, x)) puts("hold oom");
    } else if (!strcmp(argv[0], "stats") && argc == 1) {
        bill_hold_stats_t hs;
        bill_hold_stats(bill, &hs);
        printf("stats %llu %d %lld %lld\n", (unsigned long long)hs.invalidations, hs.listening,
               (long long)hs.open_holds, (long long)hs.leases);
    } else if (!strcmp(argv[0], "settle") && (argc == 11 || argc == 14 || argc == 16)) {
        bill_usage_t u;
        memset(&u, 0, sizeof u);
        snprintf(u.request_id, sizeof u.request_id, "%s", argv[1]);
        u.key_id = atoll(argv[2]);
        u.customer_id = atoll(argv[3]);
        u.model = argv[4];
        u.price.input_cache_miss = atoll(argv[5]);
        u.price.input_cache_hit = atoll(argv[6]);
        u.price.output = atoll(argv[7]);
        u.prompt_tokens = atoll(argv[8]);
        u.prompt_cache_hit_tokens = atoll(argv[9]);
        u.completion_tokens = atoll(argv[10]);
        u.http_status = 200;
        u.received_us = now_us() - 1000;
        u.first_byte_us = now_us() - 500;
        u.finished_us = now_us();
        if (argc >= 14) {
            u.reasoning_tokens = atoll(argv[11]);
            u.http_status = atoi(argv[12]);
            u.received_us = atoll(argv[13]);
            u.first_byte_us = 0;
            u.finished_us = u.received_us + 1000;
        }
        if (argc == 16) {
            u.price.price_id = atoll(argv[14]);
            u.price.override_id = atoll(argv[15]);
        }
        bill_settle(bill, &u, NULL);
        puts("settled");
    } else {
        puts("error unknown command");
    }
    fflush(stdout);
}

static void stdin_cb(struct bufferevent *bev, void *arg) {
    struct evbuffer *in = bufferevent_get_input(bev);
    char *l;
    size_t n;
    while ((l = evbuffer_readln(in, &n, EVBUFFER_EOL_LF))) {
        line(l);
        free(l);
    }
}

static void stdin_ev(struct bufferevent *bev, short what, void *arg) {
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) event_base_loopbreak(base);
}

static void sig_cb(evutil_socket_t fd, short what, void *arg) { event_base_loopbreak(base); }

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PG_CONNINFO ADMIN_LISTEN ADMIN_TOKEN KEY_SECRET SPOOL_DIR\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    bill_opts_t o = {.pg_conninfo = argv[1], .admin_listen = argv[2], .admin_token = argv[3],
                     .key_secret = argv[4], .spool_dir = argv[5]};
    /* the tests change prices and read them back at once */
    const char *pc = getenv("TG_BILL_PRICE_CACHE_MS");
    o.price_cache_ms = pc ? atoi(pc) : 1;
    const char *inv = getenv("BILL_INVOICE_AFTER_S"); /* automatic invoice finalization (off by default) */
    if (inv) o.invoice_finalize_after_s = atoi(inv);
    char err[256];
    bill = bill_new(base, &o, err, sizeof err);
    if (!bill) {
        fprintf(stderr, "bill_new: %s\n", err);
        return 1;
    }
    struct bufferevent *bev = bufferevent_socket_new(base, 0, 0);
    bufferevent_setcb(bev, stdin_cb, NULL, stdin_ev, NULL);
    bufferevent_enable(bev, EV_READ);
    struct event *s1 = evsignal_new(base, SIGTERM, sig_cb, NULL), *s2 = evsignal_new(base, SIGINT, sig_cb, NULL);
    event_add(s1, NULL);
    event_add(s2, NULL);
    fprintf(stderr, "bill_server: ready\n");
    event_base_dispatch(base);
    bill_free(bill);
    bufferevent_free(bev);
    event_free(s1);
    event_free(s2);
    event_base_free(base);
    return 0;
}
