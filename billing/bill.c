/* bill.c — the handle the gateway holds: admission (key -> keyed hash ->
 * one query for key, its expiry and model scope, customer balance and
 * the model's price for this customer now: tg_customer_price, the base
 * price book with the customer's override applied, and their versions) and the wiring of the PostgreSQL pool, the settlement
 * queue, the keys' last-use writer and the admin API.
 *
 * No cache: every admission reads PostgreSQL, so a revocation, an expiry (or
 * the end of a rotated key's grace) or a credit counts for the very next
 * request on every gateway instance. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/event.h>

#include "bill-int.h"

#define POOL_SIZE 4
#define TIMEOUT_MS 5000

struct bill_req {
    bill_t *b;
    bill_pg_job_t *job;
    bill_admit_cb cb;
    void *arg;
    char peer[64];
};

static const char ADMIT_SQL[] =
    "SELECT k.id, k.customer_id, k.rpm, k.tpm, k.concurrency, k.revoked_at IS NOT NULL,"
    " c.balance_pico > 0, p.input_cache_miss, p.input_cache_hit, p.output,"
    " k.expires_at IS NOT NULL AND k.expires_at <= now(), k.models IS NULL OR $2 = ANY (k.models),"
    " array_to_json(k.models)::text, p.price_id, p.override_id"
    " FROM api_keys k JOIN customers c ON c.id = k.customer_id"
    " LEFT JOIN LATERAL tg_customer_price(k.customer_id, $2, now()) p ON true"
    " WHERE k.key_hash = $1";

static void admit_done(PGresult *res, const char *err, void *arg) {
    bill_req_t *r = arg;
    bill_key_t key;
    bill_status_t st = BILL_ERROR;
    memset(&key, 0, sizeof key);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "bill: admission query failed: %s", err ? err : PQresultErrorMessage(res));
        if (err) fputc('\n', stderr);
    } else if (PQntuples(res) == 0 || *PQgetvalue(res, 0, 5) == 't') {
        st = BILL_UNAUTHORIZED;
    } else if (*PQgetvalue(res, 0, 10) == 't') {
        st = BILL_KEY_EXPIRED;
    } else {
        key.key_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        key.customer_id = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        key.rpm = (int32_t)strtol(PQgetvalue(res, 0, 2), NULL, 10);
        key.tpm = (int32_t)strtol(PQgetvalue(res, 0, 3), NULL, 10);
        key.concurrency = (int32_t)strtol(PQgetvalue(res, 0, 4), NULL, 10);
        key.models_json = PQgetisnull(res, 0, 12) ? NULL : PQgetvalue(res, 0, 12);
        bill_keyuse_touch(r->b->keyuse, key.key_id, r->peer);
        if (*PQgetvalue(res, 0, 11) != 't') {
            st = BILL_MODEL_NOT_ALLOWED;
        } else if (*PQgetvalue(res, 0, 6) != 't') {
            st = BILL_NO_BALANCE;
        } else if (PQgetisnull(res, 0, 7)) {
            st = BILL_NO_PRICE;
        } else {
            key.price.input_cache_miss = strtoll(PQgetvalue(res, 0, 7), NULL, 10);
            key.price.input_cache_hit = strtoll(PQgetvalue(res, 0, 8), NULL, 10);
            key.price.output = strtoll(PQgetvalue(res, 0, 9), NULL, 10);
            key.price.price_id = PQgetisnull(res, 0, 13) ? 0 : strtoll(PQgetvalue(res, 0, 13), NULL, 10);
            key.price.override_id = PQgetisnull(res, 0, 14) ? 0 : strtoll(PQgetvalue(res, 0, 14), NULL, 10);
            st = BILL_OK;
        }
    }
    bill_admit_cb cb = r->cb;
    void *cbarg = r->arg;
    free(r);
    cb(st, &key, cbarg);
}

bill_req_t *bill_admit(bill_t *b, const char *api_key, const char *model, const char *peer, bill_admit_cb cb,
                       void *arg) {
    bill_req_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->b = b;
    snprintf(r->peer, sizeof r->peer, "%s", peer ? peer : "");
    r->cb = cb;
    r->arg = arg;
    char hash[65];
    bill_key_hash(b->key_secret, api_key ? api_key : "", hash);
    const char *params[2] = {hash, model ? model : ""};
    r->job = bill_pg_query(b->pg, ADMIT_SQL, 2, params, admit_done, r);
    if (!r->job) {
        free(r);
        return NULL;
    }
    bill_pg_job_retry_ok(r->job);
    bill_pg_job_prepared(r->job, "tg_admit");
    return r;
}

void bill_cancel(bill_req_t *r) {
    if (!r) return;
    bill_pg_cancel(r->job);
    free(r);
}

void bill_settle(bill_t *b, const bill_usage_t *u) {
    if (b && u) bill_settler_push(b->settler, u);
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

void bill_refusal(bill_t *b, int64_t customer_id, int64_t key_id, const char *model, int http_status) {
    if (b) bill_refusals_add(b->refusals, customer_id, key_id, model, http_status, (int64_t)time(NULL));
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
    b->conninfo = strdup(o->pg_conninfo);
    b->key_secret = dup_trimmed(o->key_secret);
    if (!b->conninfo) goto oom;
    if (!b->key_secret || !*b->key_secret) {
        snprintf(err, errlen, "bill_new: the API-key secret is empty");
        goto fail;
    }
    const char *spool = o->spool_dir && *o->spool_dir ? o->spool_dir : "var/spool";
    /* Sessions in UTC (libpq sends PGTZ at connect): timestamps without a zone
     * in admin queries and every timestamp in answers read the same
     * everywhere.  An explicit PGTZ wins. */
    setenv("PGTZ", "UTC", 0);
    int pool = o->pg_pool_size > 0 && o->pg_pool_size <= 64 ? o->pg_pool_size : POOL_SIZE;
    int timeout = o->pg_timeout_ms > 0 ? o->pg_timeout_ms : TIMEOUT_MS;
    b->pg = bill_pg_new(base, b->conninfo, pool, timeout, bill_settler_on_up, NULL);
    if (!b->pg) goto oom;
    if (!(b->settler = bill_settler_new(base, b->pg, spool, err, errlen))) goto fail;
    if (!(b->keyuse = bill_keyuse_new(base, b->pg, o->last_used_flush_ms))) goto oom;
    if (!(b->refusals = bill_refusals_new(base, b->pg))) goto oom;
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
    bill_settler_free(b->settler, b->conninfo);
    bill_refusals_free(b->refusals, b->conninfo);
    bill_pg_free(b->pg); /* before keyuse: a pending flush is never called back */
    bill_keyuse_free(b->keyuse);
    free(b->conninfo);
    free(b->key_secret);
    free(b);
}
