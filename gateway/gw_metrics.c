/* gw_metrics.c — the gateway's Prometheus counters and their text
 * exposition (format 0.0.4).  Counters are plain integers touched only from
 * the loop thread. */
#include <stdio.h>
#include <string.h>

#include "gw-int.h"

const double gw_metrics_bounds[12] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

static const char *const gw_route_names[GW_ROUTE_N] = {"chat_completions", "models", "metrics", "health",
                                                       "other", "completions"};

void gw_metrics_observe(gw_metrics_t *m, int route, int status, double dur_s, double ttfb_s) {
    if (route < 0 || route >= GW_ROUTE_N) route = GW_ROUTE_OTHER;
    if (status < 0 || status >= 600) status = 0;
    m->requests[route][status]++;
    if (route != GW_ROUTE_CHAT && route != GW_ROUTE_COMPLETIONS) return;
    for (int i = 0; i < 12; i++)
        if (dur_s <= gw_metrics_bounds[i]) m->dur_buckets[i]++;
    m->dur_count++;
    m->dur_sum += dur_s;
    if (ttfb_s >= 0) {
        for (int i = 0; i < 12; i++)
            if (ttfb_s <= gw_metrics_bounds[i]) m->ttfb_buckets[i]++;
        m->ttfb_count++;
        m->ttfb_sum += ttfb_s;
    }
}

static void histogram(tg_buf_t *o, const char *name, const char *help, const uint64_t *b, uint64_t count,
                      double sum) {
    tg_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < 12; i++) tg_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, gw_metrics_bounds[i],
                                               (unsigned long long)b[i]);
    tg_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)count,
                  name, sum, name, (unsigned long long)count);
}

static void counter(tg_buf_t *o, const char *name, const char *help, uint64_t v) {
    tg_buf_printf(o, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, (unsigned long long)v);
}

void gw_metrics_render(const gw_metrics_t *m, const gw_config_t *cfg, const gw_upstream_t *up, int redis_up,
                       tg_buf_t *o) {
    tg_buf_printf(o, "# HELP tollgate_http_requests_total Requests answered, by route and status.\n"
                     "# TYPE tollgate_http_requests_total counter\n");
    for (int r = 0; r < GW_ROUTE_N; r++)
        for (int s = 0; s < 600; s++)
            if (m->requests[r][s])
                tg_buf_printf(o, "tollgate_http_requests_total{route=\"%s\",code=\"%d\"} %llu\n", gw_route_names[r],
                              s, (unsigned long long)m->requests[r][s]);
    histogram(o, "tollgate_request_duration_seconds", "Chat completion time from request to last byte.",
              m->dur_buckets, m->dur_count, m->dur_sum);
    histogram(o, "tollgate_time_to_first_byte_seconds", "Chat completion time to the first upstream byte.",
              m->ttfb_buckets, m->ttfb_count, m->ttfb_sum);
    tg_buf_printf(o, "# HELP tollgate_tokens_total Tokens settled, by class.\n# TYPE tollgate_tokens_total counter\n"
                     "tollgate_tokens_total{class=\"prompt\"} %llu\n"
                     "tollgate_tokens_total{class=\"prompt_cache_hit\"} %llu\n"
                     "tollgate_tokens_total{class=\"completion\"} %llu\n"
                     "tollgate_tokens_total{class=\"reasoning\"} %llu\n",
                  (unsigned long long)m->tokens_prompt, (unsigned long long)m->tokens_cache_hit,
                  (unsigned long long)m->tokens_completion, (unsigned long long)m->tokens_reasoning);
    counter(o, "tollgate_upstream_errors_total", "Worker connections that failed or broke.", m->upstream_errors);
    counter(o, "tollgate_upstream_timeouts_total", "Workers that went silent past upstream_timeout_ms.",
            m->upstream_timeouts);
    counter(o, "tollgate_upstream_usage_disagreements_total",
            "External upstream answers whose prompt_tokens differ from the gateway's own count.",
            m->upstream_usage_disagreements);
    counter(o, "tollgate_upstream_connects_total", "New connections to workers.", m->upstream_connects);
    counter(o, "tollgate_upstream_reuses_total", "Requests sent on a kept-alive worker connection.",
            m->upstream_reuses);
    counter(o, "tollgate_ratelimited_total", "Requests refused with 429.", m->ratelimited);
    counter(o, "tollgate_redis_errors_total", "Rate-limit calls Redis did not answer.", m->redis_errors);
    counter(o, "tollgate_client_aborts_total", "Clients that went away before their answer ended.",
            m->client_aborts);
    counter(o, "tollgate_connections_total", "Client connections accepted.", m->connections_total);
    counter(o, "tollgate_connections_refused_total", "Client connections refused past max_connections.",
            m->connections_refused);
    counter(o, "tollgate_write_timeouts_total", "Clients closed for reading nothing within write_timeout_ms.",
            m->write_timeouts);
    tg_buf_printf(o, "# HELP tollgate_connections Open client connections.\n# TYPE tollgate_connections gauge\n"
                     "tollgate_connections %lld\n"
                     "# HELP tollgate_inflight_requests Chat completions in progress.\n"
                     "# TYPE tollgate_inflight_requests gauge\ntollgate_inflight_requests %lld\n"
                     "# HELP tollgate_redis_up 1 when the rate-limit Redis is connected.\n"
                     "# TYPE tollgate_redis_up gauge\ntollgate_redis_up %d\n",
                  (long long)m->connections, (long long)m->inflight, redis_up);
    tg_buf_printf(o, "# HELP tollgate_worker_outstanding Requests in flight per worker.\n"
                     "# TYPE tollgate_worker_outstanding gauge\n");
    for (int i = 0; i < cfg->nworkers; i++)
        tg_buf_printf(o, "tollgate_worker_outstanding{worker=\"%s\"} %d\n", cfg->workers[i].url,
                      up[i].outstanding);
    tg_buf_printf(o, "# HELP tollgate_worker_failures_total Failed requests per worker.\n"
                     "# TYPE tollgate_worker_failures_total counter\n");
    for (int i = 0; i < cfg->nworkers; i++)
        tg_buf_printf(o, "tollgate_worker_failures_total{worker=\"%s\"} %llu\n", cfg->workers[i].url,
                      (unsigned long long)up[i].failures);
}

static void gauge(tg_buf_t *o, const char *name, const char *help, long long v) {
    tg_buf_printf(o, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, v);
}

void gw_metrics_render_holds(const gw_metrics_t *m, const bill_hold_stats_t *h, tg_buf_t *o) {
    gauge(o, "tollgate_open_holds", "Balance holds of requests in flight.", (long long)h->open_holds);
    gauge(o, "tollgate_open_holds_pico", "What those holds reserve, pico-USD.", (long long)h->held_pico);
    gauge(o, "tollgate_credit_leases", "Credit leases this gateway holds (one per active key).", (long long)h->leases);
    gauge(o, "tollgate_credit_leased_pico", "Credit those leases reserve in PostgreSQL, pico-USD.",
          (long long)h->leased_pico);
    counter(o, "tollgate_holds_total", "Balance holds taken.", h->holds_total);
    counter(o, "tollgate_lease_grants_total", "Credit lease statements that granted credit.", h->grants);
    counter(o, "tollgate_lease_refusals_total", "Credit lease statements refused (balance or spending limit).",
            h->grant_refusals);
    counter(o, "tollgate_hold_waits_total", "Holds that waited for a credit lease grant (PostgreSQL on the request's path).",
            h->hold_waits);
    counter(o, "tollgate_hold_overruns_total", "Settled costs above their hold (a worker counted more).",
            h->overruns);
    counter(o, "tollgate_refused_balance_total", "Requests refused with 402 (balance or spending limit).",
            m->refused_balance);
    counter(o, "tollgate_refused_journal_total",
            "Requests refused with 503 because the usage journal could not be written (a full or failing disk).",
            m->refused_journal);
    counter(o, "tollgate_key_cache_hits_total", "Admissions answered from the key cache.", h->cache_hits);
    counter(o, "tollgate_key_cache_misses_total", "Admissions that read PostgreSQL.", h->cache_misses);
    counter(o, "tollgate_key_invalidations_total", "Key-change notices received (LISTEN/NOTIFY).", h->invalidations);
    gauge(o, "tollgate_key_invalidation_last_ms",
          "Unix time (ms) by which every event loop had received its latest key-change notice (0: a loop none yet).",
          (long long)h->last_invalidation_ms);
    counter(o, "tollgate_key_format_rejects_total", "Keys refused by their shape or checksum, before any lookup.",
            m->key_format_rejects);
    gauge(o, "tollgate_key_notices_up", "1 while key-change notices flow (the LISTEN connection is up).",
          h->listening);
}

/* The money: the settlement queue, journal and spool (bill_settle_stats),
 * PostgreSQL, and the cost settled per model (exact USD, 12 decimals). */
void gw_metrics_money_snap(const struct bill *b, gw_money_t *m) {
    bill_settle_stats(b, &m->st);
    m->ncost = 0;
    const char *model;
    char usd[48];
    for (int i = 0; m->ncost < GW_COSTS && bill_settle_cost(b, i, &model, usd) == 0; i++) {
        gw_cost_t *c = &m->cost[m->ncost++];
        snprintf(c->model, sizeof c->model, "%s", model);
        c->pico = 0; /* "D.DDDDDDDDDDDD": every decimal of a pico-USD amount */
        for (const char *p = usd; *p; p++)
            if (*p >= '0' && *p <= '9') c->pico = c->pico * 10 + (unsigned)(*p - '0');
    }
}

void gw_metrics_money_add(gw_money_t *a, const gw_money_t *b, int first) {
    if (first) {
        *a = *b;
        return;
    }
    bill_settle_stats_t *x = &a->st;
    const bill_settle_stats_t *y = &b->st;
#define ADD(f) x->f += y->f
    ADD(queued), ADD(in_flight), ADD(spool_files), ADD(spool_pending), ADD(settled_total), ADD(inserted_total);
    ADD(debited_total), ADD(rejected_total), ADD(journal_rows), ADD(journal_bytes), ADD(spool_bytes);
    ADD(refusals_written), ADD(refusals_dropped), ADD(memory_only), ADD(unjournaled_total);
    ADD(copied_total), ADD(copy_fallbacks_total);
#undef ADD
    x->replay_pending = x->replay_pending || y->replay_pending;
    x->idle = x->idle && y->idle;
    x->pg_up = x->pg_up && y->pg_up;
    for (int i = 0; i < b->ncost; i++) {
        int j;
        for (j = 0; j < a->ncost; j++)
            if (!strcmp(a->cost[j].model, b->cost[i].model)) break;
        if (j == a->ncost) {
            if (a->ncost == GW_COSTS) continue; /* cannot happen: every loop caps "other" alike */
            a->cost[a->ncost++] = b->cost[i];
        } else a->cost[j].pico += b->cost[i].pico;
    }
}

void gw_metrics_render_money(const gw_money_t *m, tg_buf_t *o) {
    const bill_settle_stats_t st = m->st;
    gauge(o, "tollgate_settle_queue_depth", "Settlements accepted and not yet committed in PostgreSQL (queued or in flight).",
          (long long)(st.queued + st.in_flight));
    gauge(o, "tollgate_settle_replay_pending", "1 while settlements wait on disk only for a replay.", st.replay_pending);
    gauge(o, "tollgate_journal_rows", "Rows appended to the open write-ahead journal file.", (long long)st.journal_rows);
    gauge(o, "tollgate_journal_bytes", "Size of the open write-ahead journal file.", (long long)st.journal_bytes);
    gauge(o, "tollgate_spool_files", "Journal and spool files not yet deleted (the open journal too).",
          (long long)st.spool_files);
    gauge(o, "tollgate_spool_rows", "Rows of those files not yet committed.", (long long)st.spool_pending);
    gauge(o, "tollgate_spool_bytes", "Size of those files.", (long long)st.spool_bytes);
    counter(o, "tollgate_journal_write_failures_total",
            "Settlement rows the write-ahead journal could not take (a full or failing disk).", st.unjournaled_total);
    gauge(o, "tollgate_settle_memory_only_rows",
          "Settlement rows whose only copy is in memory (journal and spool writes failed): a kill loses them.",
          (long long)st.memory_only);
    counter(o, "tollgate_settled_rows_total", "Settlement rows committed (re-sent duplicates included).",
            st.settled_total);
    counter(o, "tollgate_usage_rows_inserted_total", "Usage rows inserted (a duplicate inserts none).",
            st.inserted_total);
    counter(o, "tollgate_ledger_debits_total", "Ledger debits inserted.", st.debited_total);
    counter(o, "tollgate_usage_rows_copied_total", "Of the usage rows inserted, those written by COPY (fresh batches).",
            st.copied_total);
    counter(o, "tollgate_settle_copy_fallbacks_total",
            "COPY batches PostgreSQL refused (a row already there, bad data), re-sent through the statement.",
            st.copy_fallbacks_total);
    counter(o, "tollgate_settle_rejected_total", "Settlement rows given up for their data (rejected.jsonl).",
            st.rejected_total);
    counter(o, "tollgate_refusals_written_total", "Refusals (402, 429, 5xx) counted into the hourly rollups.",
            st.refusals_written);
    counter(o, "tollgate_refusals_dropped_total", "Refusal counts given up (too many waiting).", st.refusals_dropped);
    gauge(o, "tollgate_postgres_up", "1 when a PostgreSQL connection is ready or busy.", st.pg_up);
    tg_buf_printf(o, "# HELP tollgate_cost_settled_usd_total Cost of the usage rows inserted, by model (exact USD).\n"
                     "# TYPE tollgate_cost_settled_usd_total counter\n");
    for (int i = 0; i < m->ncost; i++) {
        const char *model = m->cost[i].model;
        char d[48], t[48], usd[64];
        unsigned __int128 v = m->cost[i].pico;
        int n = 0;
        do {
            t[n++] = (char)('0' + (int)(v % 10));
            v /= 10;
        } while (v);
        for (int k = 0; k < n; k++) d[k] = t[n - 1 - k];
        d[n] = 0;
        if (n <= 12) snprintf(usd, sizeof usd, "0.%.*s%s", 12 - n, "000000000000", d);
        else snprintf(usd, sizeof usd, "%.*s.%s", n - 12, d, d + n - 12);
        tg_buf_printf(o, "tollgate_cost_settled_usd_total{model=\"");
        for (const char *p = model; *p; p++) { /* label value escapes */
            if (*p == '\\' || *p == '"') tg_buf_printf(o, "\\%c", *p);
            else if (*p == '\n') tg_buf_printf(o, "\\n");
            else tg_buf_printf(o, "%c", *p);
        }
        tg_buf_printf(o, "\"} %s\n", usd);
    }
}
