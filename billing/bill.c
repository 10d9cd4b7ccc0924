/* bill.c — the handle the gateway holds: admission (key -> keyed hash ->
 * the key cache, or one statement for key, scope, expiry and the model's
 * price on a miss), balance holds (bill_lease.c), and the wiring of the
 * PostgreSQL pool, the LISTEN connection that keeps the cache true, the
 * settlement queue, the keys' last-use writer and the admin API.
 *
 * In the steady state an admission makes no PostgreSQL round trip: the key
 * and the price are cached, and a hold is taken from a local credit lease.
 * A revocation, an expiry change or a scope change reaches every gateway
 * through NOTIFY (migrations/0011) within milliseconds; an expiry itself is
 * checked against the clock at each use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

#include <event2/event.h>

#include "bill-int.h"
#include "bill_dash-int.h"
#include "tg_json.h"
#include "mtr.h"
#include "tg_mem.h"
#include "tg_str.h"

#define POOL_SIZE 4
#define TIMEOUT_MS 5000

static const char ADMIT_SQL[] =
    "SELECT k.id, k.customer_id, k.rpm, k.tpm, k.concurrency,"
    " k.revoked_at IS NOT NULL OR c.closed_at IS NOT NULL," /* a closed customer's key: as revoked */
    " (extract(epoch FROM k.expires_at) * 1000000)::bigint, array_to_json(k.models)::text,"
    " p.input_cache_miss, p.input_cache_hit, p.output, p.price_id, p.override_id,"
    " c.rpm, c.tpm, c.concurrency"
    " FROM api_keys k JOIN customers c ON c.id = k.customer_id"
    " LEFT JOIN LATERAL tg_customer_price(k.customer_id, $2, now()) p ON true"
    " WHERE k.key_hash = $1";

static int64_t real_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static void req_free(bill_req_t *r) {
    free(r->models_json);
    free(r);
}

/* 1 when models_json (a JSON array of names, NULL: every model) holds model. */
static int scope_allows(const char *models_json, const char *model) {
    if (!models_json) return 1;
    tg_json_t *j = tg_json_parse(models_json, strlen(models_json), NULL, NULL);
    int ok = 0;
    for (size_t i = 0; j && !ok && i < tg_json_len(j); i++) {
        size_t n;
        const char *m = tg_json_str(tg_json_at(j, i), &n);
        ok = m && n == strlen(model) && !memcmp(m, model, n);
    }
    tg_json_free(j);
    return ok;
}

/* Decide admission from a key and a price (cached or just read); allowed:
 * the key's scope holds the model.  Fills r->st, r->key, r->models_json. */
static void admit_decide(bill_t *b, bill_req_t *r, const bill_cache_key_t *k, const bill_cache_price_t *p,
                         int allowed) {
    memset(&r->key, 0, sizeof r->key);
    if (k->state != BILL_OK) {
        r->st = BILL_UNAUTHORIZED;
        return;
    }
    r->key = k->key;
    r->key.models_json = NULL;
    if (k->models_json && !(r->models_json = strdup(k->models_json))) {
        r->st = BILL_ERROR;
        return;
    }
    bill_keyuse_touch(b->keyuse, k->key.key_id, r->peer);
    if (k->expires_us && real_us() >= k->expires_us) r->st = BILL_KEY_EXPIRED;
    else if (!allowed) r->st = BILL_MODEL_NOT_ALLOWED;
    else if (!p || !p->has_price) r->st = BILL_NO_PRICE;
    else {
        r->key.price = p->price;
        r->st = BILL_OK;
    }
}

static void admit_answer(bill_req_t *r) {
    bill_admit_cb cb = r->cb;
    void *arg = r->arg;
    bill_status_t st = r->st;
    bill_key_t key = r->key;
    key.models_json = r->models_json;
    cb(st, &key, arg);
    req_free(r);
}

static void admit_done(PGresult *res, const char *err, void *arg) {
    bill_req_t *r = arg;
    bill_t *b = r->b;
    r->job = NULL;
    if (r->refresh) TAILQ_REMOVE(&b->refreshing, r, link);
    if (r->refresh && (!res || PQresultStatus(res) != PGRES_TUPLES_OK)) { /* the entry ages out instead */
        req_free(r);
        return;
    }
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* one write per line: the loops share stderr (PQresultErrorMessage ends with a newline, err not) */
        fprintf(stderr, "bill: admission query failed: %s%s", err ? err : PQresultErrorMessage(res), err ? "\n" : "");
        r->st = BILL_ERROR;
        memset(&r->key, 0, sizeof r->key);
        admit_answer(r);
        return;
    }
    bill_cache_key_t k = {0};
    bill_cache_price_t p = {0};
    k.fetched_us = p.fetched_us = tg_mono_us();
    if (PQntuples(res) == 0 || *PQgetvalue(res, 0, 5) == 't') {
        k.state = BILL_UNAUTHORIZED;
        if (PQntuples(res)) k.key.key_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    } else {
        k.state = BILL_OK;
        k.key.key_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        k.key.customer_id = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        k.key.rpm = (int32_t)strtol(PQgetvalue(res, 0, 2), NULL, 10);
        k.key.tpm = (int32_t)strtol(PQgetvalue(res, 0, 3), NULL, 10);
        k.key.concurrency = (int32_t)strtol(PQgetvalue(res, 0, 4), NULL, 10);
        k.expires_us = PQgetisnull(res, 0, 6) ? 0 : strtoll(PQgetvalue(res, 0, 6), NULL, 10);
        k.models_json = PQgetisnull(res, 0, 7) ? NULL : PQgetvalue(res, 0, 7);
        k.key.cust_rpm = (int32_t)strtol(PQgetvalue(res, 0, 13), NULL, 10);
        k.key.cust_tpm = (int32_t)strtol(PQgetvalue(res, 0, 14), NULL, 10);
        k.key.cust_concurrency = (int32_t)strtol(PQgetvalue(res, 0, 15), NULL, 10);
        if ((p.has_price = !PQgetisnull(res, 0, 8))) {
            p.price.input_cache_miss = strtoll(PQgetvalue(res, 0, 8), NULL, 10);
            p.price.input_cache_hit = strtoll(PQgetvalue(res, 0, 9), NULL, 10);
            p.price.output = strtoll(PQgetvalue(res, 0, 10), NULL, 10);
            p.price.price_id = PQgetisnull(res, 0, 11) ? 0 : strtoll(PQgetvalue(res, 0, 11), NULL, 10);
            p.price.override_id = PQgetisnull(res, 0, 12) ? 0 : strtoll(PQgetvalue(res, 0, 12), NULL, 10);
        }
    }
    /* A notice that arrived while the statement ran may say the row changed
     * after it was read: then what was read serves this request only. */
    if (r->gen == b->gen) {
        bill_cache_put_key(b->cache, r->hash, &k);
        if (k.state == BILL_OK) bill_cache_put_price(b->cache, k.key.customer_id, r->model, &p);
    }
    if (r->refresh) {
        req_free(r);
        return;
    }
    admit_decide(b, r, &k, &p, k.state == BILL_OK && scope_allows(k.models_json, r->model));
    admit_answer(r);
}

/* Answer the admissions decided from the cache (from the loop, never from
 * inside bill_admit). */
static void kick_cb(evutil_socket_t fd, short what, void *arg) {
    bill_t *b = arg;
    bill_req_t *r;
    while ((r = TAILQ_FIRST(&b->ready))) {
        TAILQ_REMOVE(&b->ready, r, link);
        r->queued = 0;
        if (r->kind == 0) {
            admit_answer(r);
        } else { /* a hold taken at once */
            bill_hold_cb cb = r->hold_cb;
            void *a = r->arg;
            req_free(r);
            cb(BILL_OK, NULL, a);
        }
    }
}

static void ready(bill_t *b, bill_req_t *r) {
    TAILQ_INSERT_TAIL(&b->ready, r, link);
    r->queued = 1;
    event_active(b->kick, EV_TIMEOUT, 0);
}

/* Stale while revalidating: a cached key and price older than their TTL
 * still serve for one more TTL while one statement re-reads them in the
 * background; without it every request in flight when an entry expires (the
 * price's TTL is a second) waited for its own statement, behind settlement
 * batches: a latency spike a second.  A change notice still drops an entry
 * at once, and a key past its expiry is refused whatever the cache holds. */
static void admit_refresh(bill_t *b, const char *hash, const char *model) {
    bill_req_t *r;
    TAILQ_FOREACH(r, &b->refreshing, link)
        if (!strcmp(r->hash, hash) && !strcmp(r->model, model)) return; /* already on its way */
    if (!(r = calloc(1, sizeof *r))) return;
    r->b = b;
    r->refresh = 1;
    r->gen = b->gen;
    snprintf(r->hash, sizeof r->hash, "%s", hash);
    snprintf(r->model, sizeof r->model, "%s", model);
    const char *params[2] = {r->hash, r->model};
    if (!(r->job = bill_pg_query(b->pg, ADMIT_SQL, 2, params, admit_done, r))) {
        free(r);
        return;
    }
    bill_pg_job_prepared(r->job, "tg_admit2");
    TAILQ_INSERT_TAIL(&b->refreshing, r, link);
}

bill_req_t *bill_admit(bill_t *b, const char *api_key, const char *model, const char *peer, bill_admit_cb cb,
                       void *arg) {
    bill_req_t *r = tg_zalloc(sizeof *r);
    if (!r) return NULL;
    r->b = b;
    r->cb = cb;
    r->arg = arg;
    tg_str_copy(r->peer, sizeof r->peer, peer ? peer : "");
    tg_str_copy(r->model, sizeof r->model, model ? model : "");
    if (!b->key_hmac || bill_hmac_hex(b->key_hmac, api_key ? api_key : "", r->hash) != 0)
        bill_key_hash(b->key_secret, api_key ? api_key : "", r->hash);
    int64_t now = tg_mono_us();
    const bill_cache_key_t *k = bill_cache_key(b->cache, r->hash);
    int64_t ttl = k && k->state != BILL_OK ? b->neg_ttl_us
                  : bill_listen_up(b->listen) ? b->key_ttl_us : b->fallback_ttl_us;
    int stale = 0; /* served while one statement re-reads it (admit_refresh) */
    if (k && k->state == BILL_OK && now - k->fetched_us >= ttl && now - k->fetched_us < 2 * ttl) stale = 1;
    if (k && (now - k->fetched_us < ttl || stale)) {
        const bill_cache_price_t *p =
            k->state == BILL_OK ? bill_cache_price(b->cache, k->key.customer_id, r->model) : NULL;
        if (p && now - p->fetched_us >= b->price_ttl_us && now - p->fetched_us < 2 * b->price_ttl_us) stale = 1;
        if (k->state != BILL_OK || (p && now - p->fetched_us < 2 * b->price_ttl_us)) {
            if (stale) admit_refresh(b, r->hash, r->model);
            b->cache_hits++;
            admit_decide(b, r, k, p, k->state == BILL_OK && bill_cache_key_allows(b->cache, r->hash, r->model));
            ready(b, r);
            return r;
        }
    }
    b->cache_misses++;
    r->gen = b->gen;
    const char *params[2] = {r->hash, r->model};
    r->job = bill_pg_query(b->pg, ADMIT_SQL, 2, params, admit_done, r);
    if (!r->job) {
        req_free(r);
        return NULL;
    }
    bill_pg_job_retry_ok(r->job);
    bill_pg_job_prepared(r->job, "tg_admit2");
    return r;
}

void bill_cancel(bill_req_t *r) {
    if (!r) return;
    if (r->queued) TAILQ_REMOVE(&r->b->ready, r, link);
    else if (r->kind == 1) bill_lease_cancel(r->b->lease, r);
    bill_pg_cancel(r->job);
    req_free(r);
}

/* ---- balance (GET /user/balance) -------------------------------------------- */

/* Granted (promotional) credit is not told apart from paid credit here: all
 * of it is topped up.  Available: whether a request with this key would be
 * admitted now, as tg_lease_grant decides (the least of what is left wants
 * room): some balance left, the customer not closed, and room under each
 * spending limit there is, the customer's and the key's, daily and monthly
 * (UTC days and months; before 2026-11-30 the limits were not looked at, and
 * a customer refused with 402 for its daily limit read "is_available": true).
 * $2, $3: the rows of the customer this loop has settled that PostgreSQL may
 * not hold yet (bill_settler_pending: request ids, costs); those whose usage
 * row the statement's snapshot does not see are taken off, so a client reads
 * its own requests' debits at once (a row and its debit commit together), and
 * count in the customer's spending.  $4: the key (0: none).  The month's
 * usage is summed only when there is a limit. */
static const char BALANCE_SQL[] =
    "SELECT json_build_object('is_available', b.bal > 0 AND c.closed_at IS NULL"
    " AND (c.daily_limit_pico IS NULL OR s.cd + b.pend < c.daily_limit_pico)"
    " AND (c.monthly_limit_pico IS NULL OR s.cm + b.pend < c.monthly_limit_pico)"
    " AND (k.daily_limit_pico IS NULL OR s.kd < k.daily_limit_pico)"
    " AND (k.monthly_limit_pico IS NULL OR s.km < k.monthly_limit_pico),"
    " 'balance_infos', json_build_array(json_build_object('currency', 'USD',"
    " 'total_balance', tg_usd(b.bal), 'granted_balance', tg_usd(0),"
    " 'topped_up_balance', tg_usd(b.bal), 'total_balance_pico', b.bal::text)))::text"
    " FROM customers c LEFT JOIN api_keys k ON k.id = $4::bigint AND k.customer_id = c.id,"
    " LATERAL (SELECT coalesce((SELECT sum(p.cost) FROM unnest($2::uuid[], $3::bigint[]) AS p(id, cost)"
    "   WHERE NOT EXISTS (SELECT 1 FROM usage u WHERE u.request_id = p.id)), 0) AS pend) pe,"
    " LATERAL (SELECT c.balance_pico - pe.pend AS bal, pe.pend) b,"
    " LATERAL (SELECT coalesce(sum(u.cost_pico) FILTER (WHERE u.received_at >= date_trunc('day', now(), 'UTC')), 0) AS cd,"
    "   coalesce(sum(u.cost_pico), 0) AS cm,"
    "   coalesce(sum(u.cost_pico) FILTER (WHERE u.key_id = k.id"
    "     AND u.received_at >= date_trunc('day', now(), 'UTC')), 0) AS kd,"
    "   coalesce(sum(u.cost_pico) FILTER (WHERE u.key_id = k.id), 0) AS km"
    "   FROM usage u WHERE u.customer_id = c.id AND u.received_at >= date_trunc('month', now(), 'UTC')"
    "   AND coalesce(c.daily_limit_pico, c.monthly_limit_pico, k.daily_limit_pico, k.monthly_limit_pico)"
    "     IS NOT NULL) s"
    " WHERE c.id = $1::bigint";

static void balance_done(PGresult *res, const char *err, void *arg) {
    bill_req_t *r = arg;
    r->job = NULL;
    const char *body = NULL;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) body = PQgetvalue(res, 0, 0);
    else if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
        fprintf(stderr, "bill: balance query failed: %s%s", err ? err : PQresultErrorMessage(res), err ? "\n" : "");
    r->balance_cb(body, r->arg);
    req_free(r);
}

bill_req_t *bill_balance(bill_t *b, int64_t customer_id, int64_t key_id, bill_balance_cb cb, void *arg) {
    bill_req_t *r = tg_zalloc(sizeof *r);
    if (!r) return NULL;
    char id[24], kid[24];
    tg_buf_t ids = {0}, costs = {0};
    snprintf(id, sizeof id, "%lld", (long long)customer_id);
    snprintf(kid, sizeof kid, "%lld", (long long)key_id);
    if (bill_settler_pending(b->settler, customer_id, &ids, &costs) != 0) goto fail;
    const char *params[4] = {id, ids.p, costs.p, kid};
    r->b = b;
    r->kind = 2;
    r->balance_cb = cb;
    r->arg = arg;
    if (!(r->job = bill_pg_query(b->pg, BALANCE_SQL, 4, params, balance_done, r))) goto fail;
    bill_pg_job_retry_ok(r->job); /* it only reads */
    tg_buf_free(&costs);
    tg_buf_free(&ids);
    return r;
fail:
    tg_buf_free(&costs);
    tg_buf_free(&ids);
    free(r);
    return NULL;
}

/* ---- holds ------------------------------------------------------------------ */

bill_req_t *bill_hold(bill_t *b, const bill_key_t *key, int64_t amount, bill_hold_t *h, bill_hold_cb cb, void *arg) {
    bill_req_t *r = tg_zalloc(sizeof *r);
    if (!r) return NULL;
    r->b = b;
    r->kind = 1;
    r->key = *key;
    r->key.models_json = NULL;
    r->amount = amount > 0 ? amount : 0;
    r->hold = h;
    r->hold_cb = cb;
    r->arg = arg;
    memset(h, 0, sizeof *h);
    int got = bill_lease_hold(b->lease, r);
    if (got < 0) {
        free(r);
        return NULL;
    }
    if (got) ready(b, r);
    return r;
}

void bill_hold_release(bill_t *b, bill_hold_t *h) {
    if (b && h && h->stream_rec) { /* not settled after all: nothing to bill */
        bill_settler_stream_done(b->settler, h->stream_rec);
        h->stream_rec = NULL;
    }
    if (b && h && h->taken) bill_lease_release(b->lease, h);
}

int bill_admin_page(bill_t *b, const char *path, bill_page_fn fn, void *arg) {
    return b && b->admin ? bill_admin_add_page(b->admin, path, fn, arg) : -1;
}

int bill_admin_settlement(bill_t *b, bill_page_fn fn, void *arg) {
    if (!b || !b->admin) return -1;
    bill_admin_set_settlement(b->admin, fn, arg);
    return 0;
}

void bill_hold_stats(const bill_t *b, bill_hold_stats_t *st) {
    memset(st, 0, sizeof *st);
    if (!b) return;
    bill_lease_stats_t ls;
    bill_lease_stats(b->lease, &ls);
    st->leases = ls.leases;
    st->leased_pico = ls.leased_pico;
    st->open_holds = ls.open_holds;
    st->held_pico = ls.held_pico;
    st->holds_total = ls.holds_total;
    st->grants = ls.grants;
    st->grant_refusals = ls.grant_refusals;
    st->hold_waits = ls.hold_waits;
    st->overruns = ls.overruns;
    st->cache_hits = b->cache_hits;
    st->cache_misses = b->cache_misses;
    st->invalidations = b->invalidations;
    st->last_invalidation_ms = b->last_notice_ms;
    st->listening = bill_listen_up(b->listen);
}

void bill_settle(bill_t *b, const bill_usage_t *u, bill_hold_t *h) {
    if (!b || !u) return;
    if (h && h->taken) {
        int64_t cost = bill_cost_pico(&u->price, u->prompt_tokens - u->prompt_cache_hit_tokens,
                                      u->prompt_cache_hit_tokens, u->completion_tokens);
        bill_lease_settle(b->lease, h, u->request_id, cost < 0 ? h->amount : cost);
    }
    bill_settler_push(b->settler, u, h ? h->stream_rec : NULL);
    if (h) h->stream_rec = NULL;
}

void bill_stream_begin(bill_t *b, const bill_usage_t *u, bill_hold_t *h) {
    if (b && u && h && !h->stream_rec) h->stream_rec = bill_settler_stream_begin(b->settler, u);
}

void bill_stream_update(bill_t *b, const bill_usage_t *u, bill_hold_t *h) {
    if (!b || !u || !h || !h->stream_rec) return;
    struct mtr_jfile *f = bill_settler_stream_begin(b->settler, u);
    if (!f) return;
    bill_settler_stream_done(b->settler, h->stream_rec);
    h->stream_rec = f;
}

int bill_journal_held(const bill_t *b) { return b ? bill_settler_journal_held(b->settler) : 0; }

int bill_journal_flush(bill_t *b) { return b ? bill_settler_journal_flush(b->settler) : 0; }

int bill_journal_writable(bill_t *b) { return b && bill_settler_journal_writable(b->settler); }

static void on_commit(const char *request_id, void *arg) {
    bill_t *b = arg;
    bill_lease_committed(b->lease, request_id);
}

void bill_settle_stats(const bill_t *b, bill_settle_stats_t *st) {
    bill_settler_stats(b ? b->settler : NULL, st);
    st->pg_up = b && bill_pg_up(b->pg);
    uint64_t added;
    long pending;
    bill_refusals_stats(b ? b->refusals : NULL, &added, &st->refusals_written, &st->refusals_dropped, &pending);
}

int bill_settle_cost(const bill_t *b, int i, const char **model, char usd[48]) {
    return bill_settler_cost(b ? b->settler : NULL, i, model, usd);
}

long bill_receipt(bill_t *b, const bill_usage_t *u, char *out, size_t cap) {
    if (!b || !b->receipts) return 0;
    /* the price version as the usage row keeps it (GET /admin/v1/usage/{id}: price_version) */
    char v[48];
    if (u->price.override_id) snprintf(v, sizeof v, "p%lld.o%lld", (long long)u->price.price_id,
                                       (long long)u->price.override_id);
    else snprintf(v, sizeof v, "p%lld", (long long)u->price.price_id);
    return bill_receipts_sign(b->receipts, u, u->price.price_id || u->price.override_id ? v : NULL, out, cap);
}

const char *bill_receipt_key_json(const bill_t *b) { return b ? bill_receipts_key_json(b->receipts) : NULL; }

void bill_refusal(bill_t *b, int64_t customer_id, int64_t key_id, const char *model, int http_status) {
    if (b) bill_refusals_add(b->refusals, customer_id, key_id, model, http_status, (int64_t)time(NULL));
}

/* ---- change notices ----------------------------------------------------------- */

static void on_notice(const char *channel, const char *payload, void *arg) {
    bill_t *b = arg;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    b->invalidations++;
    b->last_notice_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    b->gen++;
    if (!strcmp(channel, "tg_key")) { /* "<hash> <key id> <customer id>" */
        char hash[65];
        long long kid = 0, cid = 0;
        if (sscanf(payload, "%64s %lld %lld", hash, &kid, &cid) >= 1) bill_cache_evict_key(b->cache, hash);
        if (kid > 0) bill_lease_stale(b->lease, kid, 0);
    } else if (!strcmp(channel, "tg_customer")) {
        int64_t cid = strtoll(payload, NULL, 10);
        bill_cache_evict_customer(b->cache, cid);
        if (cid > 0) bill_lease_stale(b->lease, 0, cid);
    }
}

static void on_listen_state(int up, void *arg) {
    bill_t *b = arg;
    b->gen++;
    if (up) bill_cache_clear(b->cache); /* what changed while deaf is unknown */
}

static char *dup_trimmed(const char *s) {
    if (!s) return NULL;
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    return strndup(s, n);
}

bill_t *bill_new(struct event_base *base, const bill_opts_t *o, char *err, size_t errlen) {
    char dummy[8];
    if (!err) err = dummy, errlen = sizeof dummy;
    if (!base || !o || !o->pg_conninfo) {
        snprintf(err, errlen, "bill_new: no PostgreSQL connection string");
        return NULL;
    }
    bill_t *b = calloc(1, sizeof *b);
    if (!b) goto oom;
    b->base = base;
    b->spool_lock = -1;
    b->conninfo = strdup(o->pg_conninfo);
    b->key_secret = dup_trimmed(o->key_secret);
    if (!b->conninfo) goto oom;
    if (!b->key_secret || !*b->key_secret) {
        snprintf(err, errlen, "bill_new: the API-key secret is empty");
        goto fail;
    }
    b->key_hmac = bill_hmac_new(b->key_secret); /* NULL: the slower bill_key_hash */
    const char *spool = o->spool_dir && *o->spool_dir ? o->spool_dir : "var/spool";
    /* Sessions in UTC (libpq sends PGTZ at connect): timestamps without a zone
     * in admin queries and every timestamp in answers read the same
     * everywhere.  An explicit PGTZ wins. */
    setenv("PGTZ", "UTC", 0);
    int pool = o->pg_pool_size > 0 && o->pg_pool_size <= 64 ? o->pg_pool_size : POOL_SIZE;
    int timeout = o->pg_timeout_ms > 0 ? o->pg_timeout_ms : TIMEOUT_MS;
    if ((b->spool_lock = mtr_spool_lock(spool, err, errlen)) < 0) goto fail; /* one gateway per spool */
    b->pg = bill_pg_new(base, b->conninfo, pool, timeout, bill_settler_on_up, NULL);
    if (!b->pg) goto oom;
    if (!(b->settler = bill_settler_new(base, b->pg, spool, o->journal_group, err, errlen))) goto fail;
    if (o->journal_disk_failing) bill_settler_journal_share_disk(b->settler, o->journal_disk_failing);
    bill_settler_on_commit(b->settler, on_commit, b);
    if (!(b->keyuse = bill_keyuse_new(base, b->pg, o->last_used_flush_ms))) goto oom;
    if (o->invoice_finalize_after_s > 0 &&
        !(b->invoicer = bill_invoicer_new(base, b->pg, o->invoice_finalize_after_s)))
        goto oom;
    if (!(b->refusals = bill_refusals_new(base, b->pg))) goto oom;
    TAILQ_INIT(&b->ready);
    TAILQ_INIT(&b->refreshing);
    TAILQ_INIT(&b->dash_calls);
    b->key_ttl_us = (int64_t)(o->key_cache_ttl_ms > 0 ? o->key_cache_ttl_ms : 60000) * 1000;
    b->fallback_ttl_us = (int64_t)(o->key_cache_fallback_ms > 0 ? o->key_cache_fallback_ms : 1000) * 1000;
    b->neg_ttl_us = (int64_t)(o->key_negative_ttl_ms > 0 ? o->key_negative_ttl_ms : 5000) * 1000;
    b->price_ttl_us = (int64_t)(o->price_cache_ms > 0 ? o->price_cache_ms : 1000) * 1000;
    if (!(b->cache = bill_cache_new()) || !(b->kick = event_new(base, -1, 0, kick_cb, b))) goto oom;
    if (!(b->listen = bill_listen_new(base, b->conninfo, on_notice, on_listen_state, b))) goto oom;
    if (!(b->lease = bill_lease_new(b, spool, o, err, errlen))) goto fail;
    if (o->receipt_key && *o->receipt_key && !(b->receipts = bill_receipts_new(o->receipt_key, err, errlen)))
        goto fail;
    bill_pg_set_up_arg(b->pg, b->settler);
    if (o->admin_listen && *o->admin_listen) {
        char *token = dup_trimmed(o->admin_token);
        if (!token || !*token) {
            free(token);
            snprintf(err, errlen, "bill_new: the admin API needs an admin token");
            goto fail;
        }
        b->admin = bill_admin_new(base, b->pg, b->settler, o->admin_listen, token, b->key_secret, err, errlen);
        free(token);
        if (!b->admin) goto fail;
    }
    return b;
oom:
    snprintf(err, errlen, "bill_new: out of memory");
fail:
    bill_free(b);
    return NULL;
}

void bill_free(bill_t *b) {
    if (!b) return;
    bill_admin_free(b->admin);
    bill_invoicer_free(b->invoicer); /* before the pool: cancels its statement */
    bill_dash_free_all(b);
    bill_settler_free(b->settler, b->conninfo);
    bill_refusals_free(b->refusals, b->conninfo);
    bill_receipts_free(b->receipts);
    bill_pg_free(b->pg); /* before keyuse and lease: their statements are never called back */
    bill_req_t *rr;
    while ((rr = TAILQ_FIRST(&b->refreshing))) { /* their statements went with the pool */
        TAILQ_REMOVE(&b->refreshing, rr, link);
        req_free(rr);
    }
    bill_keyuse_free(b->keyuse);
    bill_lease_free(b->lease);
    bill_listen_free(b->listen);
    bill_cache_free(b->cache);
    if (b->kick) event_free(b->kick);
    bill_req_t *r;
    while ((r = TAILQ_FIRST(&b->ready))) { /* not answered: their owners are gone too */
        TAILQ_REMOVE(&b->ready, r, link);
        req_free(r);
    }
    free(b->conninfo);
    free(b->key_secret);
    bill_hmac_free(b->key_hmac);
    mtr_spool_unlock(b->spool_lock); /* last: nothing touches the spool after this */
    free(b);
}
