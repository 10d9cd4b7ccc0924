/* bill_admin_keys.c — API keys in the admin API: create (the key shown once),
 * list, update (name, limits, model scope, expiry), rotate with a grace
 * period, revoke.  Every write is audited with the row before and after,
 * without its key_hash.  An idempotent replay of a create or rotate answers
 * the stored key object without the key itself: it is never stored. */
#include <stdio.h>
#include <string.h>

#include <event2/http.h>
#include <openssl/crypto.h>

#include "bill_admin-int.h"

/* A key as the admin API shows it (k: an api_keys row, c: its customer). */
#define KEYJ                                                                                    \
    "json_build_object('id', k.id, 'customer', c.name, 'prefix', k.prefix, 'name', k.name,"     \
    " 'state', tg_key_state(k.revoked_at, k.expires_at, k.replaced_by),"                        \
    " 'active', tg_key_state(k.revoked_at, k.expires_at, k.replaced_by) IN ('active', 'expiring')," \
    " 'rpm', k.rpm, 'tpm', k.tpm, 'concurrency', k.concurrency, 'models', k.models,"           \
    " 'expires_at', k.expires_at, 'created_at', k.created_at, 'revoked_at', k.revoked_at,"      \
    " 'last_used_at', k.last_used_at, 'last_used_ip', host(k.last_used_ip),"                    \
    " 'rotated_from', k.rotated_from, 'replaced_by', k.replaced_by,"                            \
    " 'daily_limit_pico', k.daily_limit_pico::text, 'daily_limit_usd', tg_usd(k.daily_limit_pico),"   \
    " 'monthly_limit_pico', k.monthly_limit_pico::text, 'monthly_limit_usd', tg_usd(k.monthly_limit_pico))"

/* Every key write also appends to admin_audit: who, what, before, after
 * (the row without its key_hash). */
#define AUDIT(action, target, before, after, from) ADM_AUDIT("a", "'" action "'", target, before, after, from)

/* A JSON array of model names ($n::json) as text[]. */
#define MODELS_ARR(n) "(SELECT array_agg(x) FROM json_array_elements_text(" n "::json) x)"

static const char SQL_KEY_LIST[] =
    "SELECT json_build_object('object', 'list', 'customer', c.name, 'data', coalesce((SELECT"
    " json_agg(" KEYJ " ORDER BY k.id) FROM api_keys k WHERE k.customer_id = c.id), '[]'))::text"
    " FROM customers c WHERE c.name = $1";

/* $1 customer, $2 hash, $3 prefix, $4-$6 limits, $7 name, $8 expires_at,
 * $9 expires_in_seconds, $10 models (JSON array or NULL), $11/$12 daily/monthly
 * spending limits in pico-USD (NULL: none) */
static const char SQL_KEY_CREATE[] =
    "WITH k AS (INSERT INTO api_keys (customer_id, key_hash, prefix, rpm, tpm, concurrency, name,"
    "   expires_at, models, daily_limit_pico, monthly_limit_pico)"
    "   SELECT c.id, $2, $3, $4::int, $5::int, $6::int, coalesce($7, ''),"
    "   tg_key_expiry($8::timestamptz, $9::bigint), " MODELS_ARR("$10") ", $11::bigint, $12::bigint"
    "   FROM customers c WHERE c.name = $1 RETURNING *),"
    AUDIT("key.create", "'key:' || k.id", "NULL", "to_jsonb(k) - 'key_hash'", "k")
    ", resp AS (SELECT " KEYJ "::text AS body FROM k JOIN customers c ON c.id = k.customer_id)";

/* $1 id, $2 name, $3-$5 limits, $6 models: 'keep'|'all'|'set', $7 models JSON,
 * $8 expiry: 'keep'|'never'|'set', $9 expires_at, $10 expires_in_seconds,
 * $11/$13 daily/monthly spending limit: 'keep'|'set' with $12/$14 (NULL: none) */
static const char SQL_KEY_UPDATE[] =
    "WITH old AS (SELECT * FROM api_keys WHERE id = $1::bigint AND revoked_at IS NULL FOR UPDATE),"
    " k AS (UPDATE api_keys SET name = coalesce($2, name), rpm = coalesce($3::int, rpm),"
    "   tpm = coalesce($4::int, tpm), concurrency = coalesce($5::int, concurrency),"
    "   models = CASE $6 WHEN 'keep' THEN models WHEN 'all' THEN NULL ELSE " MODELS_ARR("$7") " END,"
    "   expires_at = CASE $8 WHEN 'keep' THEN expires_at WHEN 'never' THEN NULL"
    "     ELSE tg_key_expiry($9::timestamptz, $10::bigint) END,"
    "   daily_limit_pico = CASE $11 WHEN 'keep' THEN daily_limit_pico ELSE $12::bigint END,"
    "   monthly_limit_pico = CASE $13 WHEN 'keep' THEN monthly_limit_pico ELSE $14::bigint END"
    "   WHERE id = (SELECT id FROM old) RETURNING *),"
    AUDIT("key.update", "'key:' || k.id", "to_jsonb(old) - 'key_hash'", "to_jsonb(k) - 'key_hash'", "old, k")
    ", resp AS (SELECT " KEYJ "::text AS body FROM k JOIN customers c ON c.id = k.customer_id)";

/* $1 old id, $2 new hash, $3 new prefix, $4 grace seconds, $5 new expires_at,
 * $6 new expires_in_seconds.  The new key copies name, limits, spending limits
 * and scope; the
 * old one works until now + grace (or its own earlier expiry). */
static const char SQL_KEY_ROTATE[] =
    "WITH old AS (SELECT * FROM api_keys WHERE id = $1::bigint AND revoked_at IS NULL AND replaced_by IS NULL"
    "   AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE),"
    " n AS (INSERT INTO api_keys (customer_id, key_hash, prefix, rpm, tpm, concurrency, name, models,"
    "   daily_limit_pico, monthly_limit_pico, expires_at, rotated_from)"
    "   SELECT customer_id, $2, $3, rpm, tpm, concurrency, name, models, daily_limit_pico, monthly_limit_pico,"
    "   tg_key_expiry($5::timestamptz, $6::bigint), id FROM old RETURNING *),"
    " o AS (UPDATE api_keys k SET replaced_by = n.id,"
    "   expires_at = least(coalesce(k.expires_at, 'infinity'), now() + $4::bigint * interval '1 second')"
    "   FROM n WHERE k.id = n.rotated_from RETURNING k.*),"
    AUDIT("key.rotate", "'key:' || old.id", "to_jsonb(old) - 'key_hash'",
          "jsonb_build_object('old', to_jsonb(o) - 'key_hash', 'new', to_jsonb(n) - 'key_hash')", "old, o, n")
    ", resp AS (SELECT (jsonb_build_object('old', (SELECT " KEYJ " FROM o k JOIN customers c ON c.id = k.customer_id))"
    "   || (SELECT " KEYJ "::jsonb FROM n k JOIN customers c ON c.id = k.customer_id))::text AS body)";

static const char SQL_KEY_REVOKE[] =
    "WITH old AS (SELECT * FROM api_keys WHERE id = $1::bigint FOR UPDATE),"
    " k AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = (SELECT id FROM old)"
    "   RETURNING *),"
    AUDIT("key.revoke", "'key:' || k.id", "to_jsonb(old) - 'key_hash'", "to_jsonb(k) - 'key_hash'", "old, k")
    ", resp AS (SELECT " KEYJ "::text AS body FROM k JOIN customers c ON c.id = k.customer_id)";


/* "name": optional string of at most 200 bytes, no control character.  *out:
 * the name, or NULL when absent.  Returns 0 or -1 after replying 400. */
static int name_field(adm_req_t *req, tg_json_t *j, const char **out) {
    tg_json_t *f = tg_json_get(j, "name");
    *out = NULL;
    if (!f || adm_jnull(f)) return 0;
    const char *s = adm_jstr(f);
    if (!s || strlen(s) > 200 || !adm_text_plain(s)) {
        adm_field_error(req, "invalid_value", "name",
                        "name must be a string of at most 200 bytes without control characters");
        return -1;
    }
    *out = s;
    return 0;
}

/* "models": absent (*mode "keep"), null ("all": every model) or an array of
 * 1-64 model names of 1-200 bytes ("set"; *json: that array, malloc'ed).
 * Returns 0 or -1 after replying 400. */
static int models_field(adm_req_t *req, tg_json_t *j, const char **mode, char **json) {
    tg_json_t *f = tg_json_get(j, "models"), *m;
    *json = NULL;
    *mode = !f ? "keep" : adm_jnull(f) ? "all" : "set";
    if (!f || adm_jnull(f)) return 0;
    size_t n = tg_json_type(f) == TG_JSON_ARRAY ? tg_json_len(f) : 0;
    int ok = n >= 1 && n <= 64;
    tg_buf_t b = {0};
    TG_JSON_FOREACH(m, f) ok &= adm_jstr(m) && adm_jstr(m)[0] && strlen(adm_jstr(m)) <= 200;
    if (!ok) {
        adm_field_error(req, "invalid_value", "models",
                        "models must be null (every model) or an array of 1 to 64 model names (1-200 bytes each)");
        return -1;
    }
    if (tg_json_write(&b, f) != 0) {
        tg_buf_free(&b);
        adm_error(req, 500, NULL, "out of memory");
        return -1;
    }
    *json = b.p;
    return 0;
}

/* "expires_at" (a timestamp string, or null: never) and "expires_in_seconds"
 * (1 to 20 years), at most one of them.  *mode: "keep" when both are absent,
 * "never" for expires_at null, else "set" with *at or *in (a decimal string
 * in in[24]) filled.  Returns 0 or -1 after replying 400. */
static int expiry_fields(adm_req_t *req, tg_json_t *j, const char **mode, const char **at, char in[24],
                         char iso[40]) {
    tg_json_t *fa = tg_json_get(j, "expires_at");
    tg_json_t *fi = tg_json_get(j, "expires_in_seconds");
    long secs = -1;
    *mode = "keep";
    *at = NULL;
    in[0] = 0;
    if (fa && fi && !adm_jnull(fi)) {
        adm_field_error(req, "invalid_value", "expires_in_seconds", "give expires_at or expires_in_seconds, not both");
        return -1;
    }
    if (fa) {
        if (adm_jnull(fa)) {
            *mode = "never";
            return 0;
        }
        if (!adm_jstr(fa) || !adm_jstr(fa)[0] || strlen(adm_jstr(fa)) > 64 || !adm_time_valid(adm_jstr(fa))) {
            adm_field_error(req, "invalid_value", "expires_at",
                            "expires_at must be a timestamp string (2026-12-31T00:00:00Z)");
            return -1;
        }
        *mode = "set";
        *at = adm_epoch_to_iso(adm_jstr(fa), iso); /* Unix seconds, as in a query's from/to */
        return 0;
    }
    if (adm_int_field(req, j, "expires_in_seconds", 20L * 366 * 86400, &secs) != 0) return -1;
    if (secs == 0) {
        adm_field_error(req, "invalid_value", "expires_in_seconds", "expires_in_seconds must be at least 1");
        return -1;
    }
    if (secs > 0) {
        *mode = "set";
        snprintf(in, 24, "%ld", secs);
    }
    return 0;
}

/* An optional spending limit: absent (*mode "keep"), null (none: "set" with
 * *out "") or a USD decimal string ("set", *out its pico-USD).  Returns 0 or
 * -1 after replying 400. */
int adm_limit_field(adm_req_t *req, tg_json_t *j, const char *name, const char **mode, char out[24]) {
    tg_json_t *f = tg_json_get(j, name);
    int64_t pico;
    *mode = "keep";
    out[0] = 0;
    if (!f) return 0;
    *mode = "set";
    if (adm_jnull(f)) return 0;
    if (!adm_jstr(f) || bill_usd_parse(adm_jstr(f), &pico) != 0) {
        adm_field_error(req, "invalid_amount", name,
                        "%s must be null (no limit) or a decimal string of USD, e.g. \"25.00\"", name);
        return -1;
    }
    snprintf(out, 24, "%lld", (long long)pico);
    return 0;
}

/* A new key's secret, keyed hash and display prefix.  Returns 0 or -1 after
 * replying 500. */
static int new_key(adm_req_t *req, char key[BILL_KEY_LEN + 1], char hash[65], char prefix[16]) {
    if (bill_key_generate(key, prefix) != 0) {
        adm_error(req, 500, NULL, "no random bytes");
        return -1;
    }
    bill_key_hash(req->secret, key, hash);
    return 0;
}

static void keys_create(adm_req_t *req, const char *cust) {
    tg_json_t *j = adm_body(req);
    if (!j) return;
    long rpm = 0, tpm = 0, conc = 0;
    const char *name, *mmode, *emode, *at, *dmode, *mmode2;
    char *models = NULL, in[24], dl[24], ml[24], iso[40];
    if (adm_int_field(req, j, "rpm", 2147483647L, &rpm) == 0 && adm_int_field(req, j, "tpm", 2147483647L, &tpm) == 0 &&
        adm_int_field(req, j, "concurrency", 2147483647L, &conc) == 0 && name_field(req, j, &name) == 0 &&
        models_field(req, j, &mmode, &models) == 0 && expiry_fields(req, j, &emode, &at, in, iso) == 0 &&
        adm_limit_field(req, j, "daily_limit_usd", &dmode, dl) == 0 &&
        adm_limit_field(req, j, "monthly_limit_usd", &mmode2, ml) == 0) {
        char key[BILL_KEY_LEN + 1], hash[65], prefix[16], s1[16], s2[16], s3[16];
        if (!strcmp(emode, "never")) emode = "keep"; /* a new key without expiry */
        if (new_key(req, key, hash, prefix) == 0) {
            snprintf(s1, sizeof s1, "%ld", rpm);
            snprintf(s2, sizeof s2, "%ld", tpm);
            snprintf(s3, sizeof s3, "%ld", conc);
            const char *p[] = {cust, hash, prefix, s1, s2, s3, name, at, in[0] ? in : NULL, models,
                               dl[0] ? dl : NULL, ml[0] ? ml : NULL};
            adm_write(req, SQL_KEY_CREATE, 12, p, "no such customer", 201, "key", key);
            OPENSSL_cleanse(key, sizeof key);
        }
    }
    free(models);
    tg_json_free(j);
}

static void key_update(adm_req_t *req, const char *id) {
    tg_json_t *j = adm_body(req);
    if (!j) return;
    long lim[3] = {-1, -1, -1};
    const char *names[3] = {"rpm", "tpm", "concurrency"}, *name, *mmode, *emode, *at;
    char *models = NULL, in[24], sl[3][16], iso[40];
    int ok = 1;
    for (int i = 0; i < 3 && ok; i++) {
        ok = adm_int_field(req, j, names[i], 2147483647L, &lim[i]) == 0;
        snprintf(sl[i], sizeof sl[i], "%ld", lim[i]);
    }
    const char *dmode, *mmode2;
    char dl[24], ml[24];
    if (ok && name_field(req, j, &name) == 0 && models_field(req, j, &mmode, &models) == 0 &&
        expiry_fields(req, j, &emode, &at, in, iso) == 0 && adm_limit_field(req, j, "daily_limit_usd", &dmode, dl) == 0 &&
        adm_limit_field(req, j, "monthly_limit_usd", &mmode2, ml) == 0) {
        const char *p[] = {id, name, lim[0] >= 0 ? sl[0] : NULL, lim[1] >= 0 ? sl[1] : NULL,
                           lim[2] >= 0 ? sl[2] : NULL, mmode, models, emode, at, in[0] ? in : NULL,
                           dmode, dl[0] ? dl : NULL, mmode2, ml[0] ? ml : NULL};
        adm_write(req, SQL_KEY_UPDATE, 14, p, "no such key, or it is revoked", 200, NULL, NULL);
    }
    free(models);
    tg_json_free(j);
}

#define GRACE_DEFAULT_S 86400

static void key_rotate(adm_req_t *req, const char *id) {
    tg_json_t *j = adm_body(req);
    if (!j) return;
    long grace = GRACE_DEFAULT_S;
    const char *emode, *at;
    char in[24], iso[40], gs[24], key[BILL_KEY_LEN + 1], hash[65], prefix[16];
    if (adm_int_field(req, j, "grace_seconds", 366L * 86400, &grace) == 0 &&
        expiry_fields(req, j, &emode, &at, in, iso) == 0 && new_key(req, key, hash, prefix) == 0) {
        snprintf(gs, sizeof gs, "%ld", grace);
        const char *p[] = {id, hash, prefix, gs, at, in[0] ? in : NULL};
        adm_write(req, SQL_KEY_ROTATE, 6, p, "no such key that can be rotated (revoked, expired or already rotated)",
                  201, "key", key);
        OPENSSL_cleanse(key, sizeof key);
    }
    tg_json_free(j);
}

int bill_admin_keys_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q) {
    (void)q;
    const int POST = EVHTTP_REQ_POST;
    if (nseg == 3 && !strcmp(seg[0], "customers") && !strcmp(seg[2], "keys")) {
        const char *p[] = {seg[1]};
        if (!adm_name_ok(seg[1])) adm_error(r, 404, "not_found", "no such customer");
        else if (r->method == EVHTTP_REQ_GET) adm_read(r, SQL_KEY_LIST, 1, p, "no such customer");
        else if (r->method == POST) keys_create(r, seg[1]);
        else adm_bad_method(r, "GET, POST");
        return 1;
    }
    if (nseg < 2 || nseg > 3 || strcmp(seg[0], "keys") != 0) return 0;
    const char *id = seg[1];
    if (!*id || strspn(id, "0123456789") != strlen(id) || strlen(id) > 18) return 0;
    const char *p[] = {id};
    if ((nseg == 3 && !strcmp(seg[2], "revoke") && r->method == POST) ||
        (nseg == 2 && r->method == EVHTTP_REQ_DELETE))
        adm_write(r, SQL_KEY_REVOKE, 1, p, "no such key", 200, NULL, NULL);
    else if (nseg == 3 && !strcmp(seg[2], "rotate") && r->method == POST) key_rotate(r, id);
    else if (nseg == 2 && (r->method == EVHTTP_REQ_PATCH || r->method == POST)) key_update(r, id);
    else if (nseg == 3 && strcmp(seg[2], "revoke") && strcmp(seg[2], "rotate")) return 0;
    else adm_bad_method(r, nseg == 3 ? "POST" : "POST, PATCH, DELETE");
    return 1;
}
