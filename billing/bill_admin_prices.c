/* bill_admin_prices.c — the price book (model_prices: base prices and
 * time-of-day bands) and per-customer overrides (price_overrides: explicit
 * prices, a percentage of the base, or back to the base), in the admin API.
 *
 * Both tables are versioned and immutable (migration 0005's triggers): a
 * change is a new row with its effective_from; the row id is the version
 * that usage rows point to (usage.price_id, usage.override_id).  Every write
 * is audited with the new row. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "bill_admin-int.h"

/* A price row; active: whether it is the row admission uses now (a boolean). */
#define PRICEJ_(active)                                                                         \
    "json_build_object('id', id, 'model', model, 'input_cache_miss', input_cache_miss::text,"   \
    " 'input_cache_hit', input_cache_hit::text, 'output', output::text, 'effective_from', effective_from," \
    " 'band', CASE WHEN band_start IS NULL THEN NULL ELSE to_char(band_start, 'HH24:MI') || '-' ||" \
    " to_char(band_end, 'HH24:MI') END, 'active_now', " active ")"
#define PRICEJ PRICEJ_("coalesce(id = (SELECT t.id FROM tg_price(model, now()) t), false)")

/* The answer's active_now: the statement does not see the row it inserts, so
 * tg_price's choice (migration 0002) is made here over the model's rows and
 * the new one (before 2026-12-01 tg_price alone: false or null for a price in
 * force at once). */
static const char SQL_PRICE_SET[] =
    "WITH p AS (INSERT INTO model_prices (model, input_cache_miss, input_cache_hit, output, effective_from,"
    "   band_start, band_end)"
    "   VALUES ($1, $2::bigint, $3::bigint, $4::bigint, coalesce($5::timestamptz, now()), $6::time, $7::time)"
    "   RETURNING *),"
    ADM_AUDIT("a", "'price.set'", "'model:' || p.model", "NULL", "to_jsonb(p)", "p")
    ", book AS (SELECT id, effective_from, band_start, band_end FROM model_prices WHERE model = $1"
    "   AND effective_from <= now() UNION ALL SELECT id, effective_from, band_start, band_end FROM p"
    "   WHERE effective_from <= now()),"
    " now_id AS (SELECT b.id FROM book b"
    "   WHERE b.effective_from >= (SELECT max(x.effective_from) FROM book x WHERE x.band_start IS NULL)"
    "     AND tg_in_band((now() AT TIME ZONE 'UTC')::time, b.band_start, b.band_end)"
    "   ORDER BY (b.band_start IS NOT NULL) DESC, b.effective_from DESC, b.id DESC LIMIT 1)"
    ", resp AS (SELECT " PRICEJ_("coalesce(id = (SELECT now_id.id FROM now_id), false)") "::text AS body FROM p)";

/* The schedule in force now: each model's latest base price and the bands
 * set after it. */
static const char SQL_PRICE_LIST[] =
    "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg(" PRICEJ
    " ORDER BY model, band_start NULLS FIRST, effective_from), '[]'))::text FROM model_prices p"
    " WHERE effective_from <= now() AND effective_from >= (SELECT max(b.effective_from) FROM model_prices b"
    "   WHERE b.model = p.model AND b.band_start IS NULL AND b.effective_from <= now())";

static const char SQL_PRICE_HISTORY[] =
    "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg(" PRICEJ
    " ORDER BY model, effective_from, id), '[]'))::text FROM model_prices";

/* An override row o of customer c. */
#define OVERJ                                                                                   \
    "json_build_object('id', o.id, 'customer', c.name, 'model', o.model, 'kind', o.kind,"        \
    " 'input_cache_miss', o.input_cache_miss::text, 'input_cache_hit', o.input_cache_hit::text," \
    " 'output', o.output::text, 'percent', o.percent::text, 'effective_from', o.effective_from,"  \
    " 'created_at', o.created_at)"

/* $1 customer, $2 model, $3 kind, $4-$6 prices, $7 percent, $8 effective_from */
static const char SQL_OVERRIDE_SET[] =
    "WITH o AS (INSERT INTO price_overrides (customer_id, model, kind, input_cache_miss, input_cache_hit, output,"
    "   percent, effective_from)"
    "   SELECT c.id, $2, $3, $4::bigint, $5::bigint, $6::bigint, $7::numeric, coalesce($8::timestamptz, now())"
    "   FROM customers c WHERE c.name = $1 RETURNING *),"
    ADM_AUDIT("a", "'price.override'", "'customer:' || $1", "NULL", "to_jsonb(o)", "o")
    ", resp AS (SELECT " OVERJ "::text AS body FROM o JOIN customers c ON c.id = o.customer_id)";

/* Overrides in force now (the latest row per model, kind base included), each
 * with the price the customer pays now (tg_customer_price). */
static const char SQL_OVERRIDE_LIST[] =
    "SELECT json_build_object('object', 'list', 'customer', c.name, 'data', coalesce((SELECT json_agg("
    "   (" OVERJ "::jsonb || jsonb_build_object('now', (SELECT json_build_object('price_id', t.price_id,"
    "     'override_id', t.override_id, 'input_cache_miss', t.input_cache_miss::text,"
    "     'input_cache_hit', t.input_cache_hit::text, 'output', t.output::text)"
    "     FROM tg_customer_price(c.id, o.model, now()) t))) ORDER BY o.model)"
    "   FROM (SELECT DISTINCT ON (model) * FROM price_overrides WHERE customer_id = c.id AND effective_from <= now()"
    "     ORDER BY model, effective_from DESC, id DESC) o), '[]'))::text"
    " FROM customers c WHERE c.name = $1";

static const char SQL_OVERRIDE_HISTORY[] =
    "SELECT json_build_object('object', 'list', 'customer', c.name, 'data', coalesce((SELECT json_agg(" OVERJ
    "   ORDER BY o.model, o.effective_from, o.id) FROM price_overrides o WHERE o.customer_id = c.id), '[]'))::text"
    " FROM customers c WHERE c.name = $1";

static void prices_set(adm_req_t *r) {
    tg_json_t *j = adm_body(r);
    if (!j) return;
    tg_json_t *m = tg_json_get(j, "model");
    tg_json_t *eff = tg_json_get(j, "effective_from");
    tg_json_t *band = tg_json_get(j, "band");
    char miss[24], hit[24], out[24], bs[8] = "", be[8] = "";
    if (band && !adm_jnull(band)) {
        unsigned h1, m1, h2, m2;
        char tail;
        if (!adm_jstr(band) ||
            sscanf(adm_jstr(band), "%2u:%2u-%2u:%2u%c", &h1, &m1, &h2, &m2, &tail) != 4 ||
            strlen(adm_jstr(band)) != 11 || h1 > 23 || h2 > 24 || m1 > 59 || m2 > 59 ||
            (h2 == 24 && m2 != 0) || (h1 == h2 % 24 && m1 == m2)) {
            adm_field_error(r, "invalid_value", "band",
                            "band must be \"HH:MM-HH:MM\" (UTC, start inclusive, end exclusive, may wrap midnight)");
            tg_json_free(j);
            return;
        }
        snprintf(bs, sizeof bs, "%02u:%02u", h1, m1);
        snprintf(be, sizeof be, "%02u:%02u", h2 % 24, m2);
    }
    if (!adm_jstr(m) || !adm_jstr(m)[0] || strlen(adm_jstr(m)) > 200) {
        adm_field_error(r, "invalid_value", "model", "model must be a non-empty string of at most 200 bytes");
    } else if (eff && !adm_jnull(eff) && (!adm_jstr(eff) || !adm_time_valid(adm_jstr(eff)))) {
        adm_field_error(r, "invalid_value", "effective_from", "effective_from %s", ADM_TIME_RULE);
    } else if (adm_digits_field(r, j, "input_cache_miss", miss) == 0 &&
               adm_digits_field(r, j, "input_cache_hit", hit) == 0 && adm_digits_field(r, j, "output", out) == 0) {
        char iso[40]; /* Unix seconds, as in a query's from/to */
        const char *p[] = {adm_jstr(m), miss, hit, out, adm_epoch_to_iso(adm_jstr(eff), iso),
                           bs[0] ? bs : NULL, be[0] ? be : NULL};
        adm_write(r, SQL_PRICE_SET, 7, p, NULL, 200, NULL, NULL);
    }
    tg_json_free(j);
}

/* "80", "92.5", "0.0001": 0 to 1000 with at most 4 decimals. */
static int percent_ok(const char *s) {
    size_t i = strspn(s, "0123456789");
    if (i == 0 || i > 4) return 0;
    if (s[i] == '.') {
        size_t d = strspn(s + i + 1, "0123456789");
        if (d == 0 || d > 4 || s[i + 1 + d]) return 0;
    } else if (s[i]) {
        return 0;
    }
    return strtod(s, NULL) <= 1000.0; /* only a range check: the value goes to SQL as text */
}

static void override_set(adm_req_t *r, const char *cust) {
    tg_json_t *j = adm_body(r);
    if (!j) return;
    tg_json_t *m = tg_json_get(j, "model");
    tg_json_t *eff = tg_json_get(j, "effective_from");
    tg_json_t *pct = tg_json_get(j, "percent");
    tg_json_t *base = tg_json_get(j, "base");
    int has_prices = tg_json_get(j, "input_cache_miss") || tg_json_get(j, "input_cache_hit") || tg_json_get(j, "output");
    int nkinds = has_prices + (pct != NULL) + tg_json_is_true(base);
    char miss[24], hit[24], out[24];
    if (!adm_jstr(m) || !adm_jstr(m)[0] || strlen(adm_jstr(m)) > 200) {
        adm_field_error(r, "invalid_value", "model", "model must be a non-empty string of at most 200 bytes");
    } else if (eff && !adm_jnull(eff) && (!adm_jstr(eff) || !adm_time_valid(adm_jstr(eff)))) {
        adm_field_error(r, "invalid_value", "effective_from", "effective_from %s", ADM_TIME_RULE);
    } else if (nkinds != 1) {
        adm_error(r, 400, "invalid_value",
                  "give exactly one of: input_cache_miss + input_cache_hit + output (explicit prices), "
                  "percent (of the base price), or \"base\": true (back to the base price)");
    } else if (pct && (!adm_jstr(pct) || !percent_ok(adm_jstr(pct)))) {
        adm_field_error(r, "invalid_value", "percent",
                        "percent must be a decimal string from 0 to 1000 with at most 4 decimals");
    } else if (!has_prices || (adm_digits_field(r, j, "input_cache_miss", miss) == 0 &&
                               adm_digits_field(r, j, "input_cache_hit", hit) == 0 &&
                               adm_digits_field(r, j, "output", out) == 0)) {
        char iso[40]; /* Unix seconds, as in a query's from/to */
        const char *p[] = {cust,
                           adm_jstr(m),
                           has_prices ? "price" : pct ? "percent" : "base",
                           has_prices ? miss : NULL,
                           has_prices ? hit : NULL,
                           has_prices ? out : NULL,
                           pct ? adm_jstr(pct) : NULL,
                           adm_epoch_to_iso(adm_jstr(eff), iso)};
        adm_write(r, SQL_OVERRIDE_SET, 8, p, "no such customer", 200, NULL, NULL);
    }
    tg_json_free(j);
}

int bill_admin_prices_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q) {
    const char *h = evhttp_find_header(q, "history");
    int history = h && !strcmp(h, "1");
    if (nseg == 1 && !strcmp(seg[0], "prices")) {
        if (r->method == EVHTTP_REQ_GET) adm_read(r, history ? SQL_PRICE_HISTORY : SQL_PRICE_LIST, 0, NULL, NULL);
        else if (r->method == EVHTTP_REQ_POST || r->method == EVHTTP_REQ_PUT) prices_set(r);
        else adm_bad_method(r, "GET, POST, PUT");
        return 1;
    }
    if (nseg == 3 && !strcmp(seg[0], "customers") && !strcmp(seg[2], "prices")) {
        const char *p[] = {seg[1]};
        if (!adm_name_ok(seg[1])) adm_error(r, 404, "not_found", "no such customer");
        else if (r->method == EVHTTP_REQ_GET)
            adm_read(r, history ? SQL_OVERRIDE_HISTORY : SQL_OVERRIDE_LIST, 1, p, "no such customer");
        else if (r->method == EVHTTP_REQ_POST || r->method == EVHTTP_REQ_PUT) override_set(r, seg[1]);
        else adm_bad_method(r, "GET, POST, PUT");
        return 1;
    }
    return 0;
}
