/* gw_admin.c — operator endpoints, served on the admin listener (billing's,
 * on the first loop), never on the public port: GET /metrics.
 *
 * Every loop keeps its own counters and billing; a scrape gathers them
 * without locks and without blocking a loop: the first loop asks each loop
 * (its `snap` event, through gw_loop_wake) to copy its numbers into its
 * snapshot slot; the last one to finish wakes the first loop (`gathered`),
 * which sums the slots, renders the text and answers every scrape that
 * waited meanwhile. */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "gw-int.h"

struct gw_scrape {
    struct gw_scrape *next;
    bill_page_t *pg;
    int settlement;            /* GET /admin/v1/settlement, else /metrics */
};

/* On loop l's thread: copy its numbers into its slot. */
static void gw_admin_on_snap(evutil_socket_t fd, short what, void *arg) {
    gw_loop_t *l = arg;
    gw_server_t *s = l->srv;
    gw_loop_snap_t *sn = &l->snap;
    sn->m = l->m;
    bill_hold_stats(l->bill, &sn->holds);
    sn->redis_up = gw_rl_connected(l->rl);
    gw_rl_snapshot(l->rl, &sn->rl);
    sn->m.redis_errors = sn->rl.st.redis_errors;
    gw_metrics_money_snap(l->bill, &sn->money);
    for (int i = 0; i < s->cfg->nworkers; i++) {
        sn->up[i].outstanding = l->up[i].outstanding;
        sn->up[i].failures = l->up[i].failures;
    }
    if (__atomic_sub_fetch(&s->scrape_pending, 1, __ATOMIC_ACQ_REL) == 0) gw_loop_wake(&s->loops[0], s->gathered);
}

static void gw_metrics_add(gw_metrics_t *a, const gw_metrics_t *b) {
    for (int r = 0; r < GW_ROUTE_N; r++)
        for (int c = 0; c < 600; c++) a->requests[r][c] += b->requests[r][c];
    for (int i = 0; i < 12; i++) {
        a->dur_buckets[i] += b->dur_buckets[i];
        a->ttfb_buckets[i] += b->ttfb_buckets[i];
    }
    a->dur_count += b->dur_count;
    a->dur_sum += b->dur_sum;
    a->ttfb_count += b->ttfb_count;
    a->ttfb_sum += b->ttfb_sum;
#define ADD(f) a->f += b->f
    ADD(tokens_prompt), ADD(tokens_cache_hit), ADD(tokens_completion), ADD(tokens_reasoning);
    ADD(upstream_errors), ADD(upstream_timeouts), ADD(ratelimited), ADD(redis_errors), ADD(client_aborts);
    ADD(key_format_rejects), ADD(refused_balance), ADD(refused_journal), ADD(upstream_connects), ADD(upstream_reuses);
    ADD(upstream_usage_disagreements);
    ADD(connections_total), ADD(connections_refused), ADD(write_timeouts), ADD(connections), ADD(inflight);
#undef ADD
}

static void gw_holds_add(bill_hold_stats_t *a, const bill_hold_stats_t *b, int first) {
#define ADD(f) a->f += b->f
    ADD(leases), ADD(leased_pico), ADD(open_holds), ADD(held_pico), ADD(holds_total), ADD(grants);
    ADD(grant_refusals), ADD(hold_waits), ADD(overruns), ADD(cache_hits), ADD(cache_misses), ADD(invalidations);
#undef ADD
    a->listening = first ? b->listening : a->listening && b->listening;
    /* the time by which every loop had its latest notice: the slowest loop's */
    if (first || b->last_invalidation_ms < a->last_invalidation_ms) a->last_invalidation_ms = b->last_invalidation_ms;
}

/* Render the sum of every loop's slot. */
static void gw_admin_render(gw_server_t *s, tg_buf_t *out) {
    const gw_config_t *cfg = s->cfg;
    gw_metrics_t *m = calloc(1, sizeof *m);
    gw_upstream_t *up = calloc((size_t)cfg->nworkers, sizeof *up);
    if (!m || !up) {
        free(m);
        free(up);
        return;
    }
    bill_hold_stats_t hs;
    memset(&hs, 0, sizeof hs);
    gw_rl_snap_t rls;
    memset(&rls, 0, sizeof rls);
    int redis_up = 1;
    for (int i = 0; i < s->nloops; i++) {
        const gw_loop_snap_t *sn = &s->loops[i].snap;
        gw_metrics_add(m, &sn->m);
        gw_holds_add(&hs, &sn->holds, i == 0);
        redis_up = redis_up && sn->redis_up;
        gw_rl_snapshot_add(&rls, &sn->rl);
        for (int w = 0; w < cfg->nworkers; w++) {
            up[w].outstanding += sn->up[w].outstanding;
            up[w].failures += sn->up[w].failures;
        }
    }
    gw_metrics_render(m, cfg, up, redis_up, out);
    gw_metrics_render_holds(m, &hs, out);
    gw_rl_metrics_snap(&rls, out);
    gw_sup_metrics(s, out);
    /* settlement and cost: each loop has its own settler */
    gw_money_t *money = malloc(sizeof *money);
    if (money) {
        for (int i = 0; i < s->nloops; i++) gw_metrics_money_add(money, &s->loops[i].snap.money, i == 0);
        gw_metrics_render_money(money, out);
        free(money);
    }
    tg_buf_printf(out, "# HELP tollgate_event_loops Event loops serving the public port.\n"
                       "# TYPE tollgate_event_loops gauge\ntollgate_event_loops %d\n", s->nloops);
    tg_buf_printf(out, "# HELP tollgate_loop_connections_total Client connections accepted, per event loop.\n"
                       "# TYPE tollgate_loop_connections_total counter\n");
    for (int i = 0; i < s->nloops; i++)
        tg_buf_printf(out, "tollgate_loop_connections_total{loop=\"%d\"} %llu\n", i,
                      (unsigned long long)s->loops[i].snap.m.connections_total);
    tg_buf_printf(out, "# HELP tollgate_loop_requests_total Requests answered, per event loop.\n"
                       "# TYPE tollgate_loop_requests_total counter\n");
    for (int i = 0; i < s->nloops; i++) {
        unsigned long long n = 0;
        for (int r = 0; r < GW_ROUTE_N; r++)
            for (int c = 0; c < 600; c++) n += s->loops[i].snap.m.requests[r][c];
        tg_buf_printf(out, "tollgate_loop_requests_total{loop=\"%d\"} %llu\n", i, n);
    }
    free(m);
    free(up);
}

static void gw_admin_on_gathered(evutil_socket_t fd, short what, void *arg) {
    gw_server_t *s = arg;
    tg_buf_t b = {0};
    struct gw_scrape *w = s->scrapes;
    s->scrapes = NULL;
    s->scraping = 0;
    int metrics = 0;
    for (struct gw_scrape *x = w; x; x = x->next) metrics |= !x->settlement;
    if (metrics) gw_admin_render(s, &b);
    /* the settlement queues of every loop: one answer, as one settler's */
    char js[512] = "";
    gw_money_t *money = malloc(sizeof *money);
    if (money) {
        for (int i = 0; i < s->nloops; i++) gw_metrics_money_add(money, &s->loops[i].snap.money, i == 0);
        bill_settle_stats_json(&money->st, js, sizeof js);
        free(money);
    }
    while (w) {
        struct gw_scrape *n = w->next;
        if (w->settlement && *js) bill_page_reply(w->pg, 200, "application/json", js, strlen(js));
        else if (!w->settlement && b.p) bill_page_reply(w->pg, 200, "text/plain; version=0.0.4", b.p, b.len);
        else bill_page_reply(w->pg, 500, "text/plain", "out of memory\n", 14);
        free(w);
        w = n;
    }
    tg_buf_free(&b);
}

static void gw_admin_gather(bill_page_t *pg, gw_server_t *s, int settlement) {
    struct gw_scrape *w = calloc(1, sizeof *w);
    if (!w) {
        bill_page_reply(pg, 500, "text/plain", "out of memory\n", 14);
        return;
    }
    w->settlement = settlement;
    w->pg = pg;
    w->next = s->scrapes;
    s->scrapes = w;
    if (s->scraping) return; /* joins the gathering under way */
    s->scraping = 1;
    __atomic_store_n(&s->scrape_pending, s->nloops, __ATOMIC_RELEASE);
    for (int i = 0; i < s->nloops; i++) gw_loop_wake(&s->loops[i], s->loops[i].snap_ev);
}

static void gw_admin_metrics(bill_page_t *pg, void *arg) { gw_admin_gather(pg, arg, 0); }

static void gw_admin_settlement(bill_page_t *pg, void *arg) { gw_admin_gather(pg, arg, 1); }

int gw_admin_loop_init(gw_loop_t *l) {
    l->snap.up = calloc((size_t)l->srv->cfg->nworkers, sizeof *l->snap.up);
    l->snap_ev = event_new(l->base, -1, 0, gw_admin_on_snap, l);
    return l->snap.up && l->snap_ev ? GW_OK : GW_ERROR;
}

void gw_admin_loop_release(gw_loop_t *l) {
    if (l->snap_ev) event_free(l->snap_ev);
    free(l->snap.up);
}

int gw_admin_start(gw_server_t *s) {
    gw_loop_t *l0 = &s->loops[0];
    if (!(s->gathered = event_new(l0->base, -1, 0, gw_admin_on_gathered, s))) return GW_ERROR;
    bill_admin_page(l0->bill, "/metrics", gw_admin_metrics, s); /* no admin listener: no /metrics */
    bill_admin_settlement(l0->bill, gw_admin_settlement, s);      /* every loop's settler */
    return GW_OK;
}

void gw_admin_stop(gw_server_t *s) {
    while (s->scrapes) { /* the loops have stopped: answer what still waits */
        struct gw_scrape *n = s->scrapes->next;
        bill_page_reply(s->scrapes->pg, 503, "text/plain", "shutting down\n", 14);
        free(s->scrapes);
        s->scrapes = n;
    }
    if (s->gathered) event_free(s->gathered);
    s->gathered = NULL;
}
