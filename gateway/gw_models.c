/* gw_models.c — the small handlers: GET /v1/models and /v1/models/{id}, GET /user/balance
 * (Bearer key checked through bill_admit; a key with no balance may still
 * list; a key's model scope narrows the list), GET /health, and the 404 for
 * anything else (/metrics included: it is on the admin listener). */
#include <stdio.h>
#include <string.h>

#include "gw-int.h"
#include "tg_json.h"

/* 1 when the key's scope (a parsed JSON array of model names, NULL: every
 * model) holds model. */
static int gw_scope_allows(const tg_json_t *scope, const char *model) {
    if (!scope) return 1;
    for (size_t i = 0; i < tg_json_len(scope); i++) {
        size_t n;
        const char *m = tg_json_str(tg_json_at(scope, i), &n);
        if (m && n == strlen(model) && !memcmp(m, model, n)) return 1;
    }
    return 0;
}

/* scope: the key's allowed models (NULL: all); /v1/models lists only those. */
static void gw_models_answer(gw_req_t *r, const tg_json_t *scope) {
    const gw_config_t *cfg = r->srv->cfg;
    tg_buf_t b = {0};
    if (r->model) { /* GET /v1/models/{id} */
        if (!gw_model_known(cfg, r->model)) {
            char msg[300];
            snprintf(msg, sizeof msg, "The model `%.200s` does not exist or you do not have access to it.", r->model);
            gw_req_error(r, 404, "invalid_request_error", "model_not_found", NULL, msg); /* param null, as OpenAI */
            return;
        }
        if (!gw_scope_allows(scope, r->model)) {
            gw_auth_model_not_allowed(r, r->model);
            return;
        }
        tg_buf_printf(&b, "{\"id\":\"");
        tg_json_write_chars(&b, r->model, strlen(r->model));
        tg_buf_printf(&b, "\",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"tollgate\"}\n",
                      (long long)r->srv->started);
    } else {
        tg_buf_printf(&b, "{\"object\":\"list\",\"data\":[");
        int first = 1;
        for (int i = 0; i < cfg->nworkers; i++)
            for (int j = 0; j < cfg->workers[i].nmodels; j++) {
                const char *m = cfg->workers[i].models[j];
                int dup = 0; /* the same model on several workers is listed once */
                for (int k = 0; k <= i && !dup; k++)
                    for (int l = 0; l < (k == i ? j : cfg->workers[k].nmodels); l++)
                        if (!strcmp(cfg->workers[k].models[l], m)) dup = 1;
                if (dup || !gw_scope_allows(scope, m)) continue;
                tg_buf_printf(&b, "%s{\"id\":\"", first ? "" : ",");
                tg_json_write_chars(&b, m, strlen(m));
                tg_buf_printf(&b, "\",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"tollgate\"}",
                              (long long)r->srv->started);
                first = 0;
            }
        tg_buf_printf(&b, "]}\n");
    }
    if (!b.p) gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
    else gw_req_answer(r, 200, "application/json", b.p, b.len);
    tg_buf_free(&b);
}

static void gw_models_answer_scoped(gw_req_t *r) {
    tg_json_t *scope = NULL;
    if (r->scope_json) {
        tg_json_err_t jerr;
        scope = tg_json_parse(r->scope_json, strlen(r->scope_json), NULL, &jerr);
        if (!scope) {
            gw_req_error(r, 500, "server_error", NULL, NULL, "the key's model scope is unreadable");
            return;
        }
    }
    gw_models_answer(r, scope);
    tg_json_free(scope);
}

/* GET /user/balance (DeepSeek's path; /v1/user/balance as well): the balance
 * of the key's customer, read from PostgreSQL (billing's bill_balance). */
static void gw_balance_got(const char *json, void *arg) {
    gw_req_t *r = arg;
    r->admit = NULL;
    if (!json) gw_auth_error(r, BILL_ERROR);
    else gw_req_answer(r, 200, "application/json", json, strlen(json));
}

static void gw_balance_read(gw_req_t *r) {
    if (!(r->admit = bill_balance(r->loop->bill, r->key.customer_id, r->key.key_id, gw_balance_got, r)))
        gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
}

/* ---- the GETs that need a key, not an admission: /v1/models, /user/balance ----
 * Any key that authenticates may ask, with or without balance left.  The
 * answer waits for a look at the key's limits (the x-ratelimit-* headers;
 * nothing is taken), then the handler's own step answers. */

static void gw_keyed_answer(gw_req_t *r) {
    if (r->handler == &gw_balance_handler) gw_balance_read(r);
    else gw_models_answer_scoped(r);
}

static void gw_keyed_limits(int verdict, const gw_rl_result_t *res, void *arg) {
    gw_req_t *r = arg;
    r->have_rl = verdict != GW_RL_UNAVAILABLE;
    r->rl = *res;
    gw_keyed_answer(r);
}

static void gw_keyed_admitted(bill_status_t st, const bill_key_t *key, void *arg) {
    gw_req_t *r = arg;
    r->admit = NULL;
    if (st != BILL_OK && st != BILL_NO_BALANCE && st != BILL_NO_PRICE && st != BILL_MODEL_NOT_ALLOWED) {
        gw_auth_error(r, st);
        return;
    }
    r->key = *key;
    r->key.models_json = NULL;
    if (key->models_json && !(r->scope_json = gw_pstrndup(r->pool, key->models_json, strlen(key->models_json)))) {
        gw_req_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    if (gw_auth_peek_limits(r, gw_keyed_limits) != GW_OK) gw_keyed_answer(r);
}

static void gw_keyed_cleanup(void *arg) {
    gw_req_t *r = arg;
    bill_cancel(r->admit);
    r->admit = NULL;
    gw_rl_finish(r->rl_call, 0);
    r->rl_call = NULL;
}

static void gw_keyed_run(gw_req_t *r) {
    if (strcmp(r->http->method, "GET") && !gw_req_is_head(r)) {
        gw_req_method_not_allowed(r, "GET, HEAD");
        return;
    }
    const char *key = gw_auth_bearer(r);
    if (!key) return;
    bill_t *bill = r->loop->bill;
    if (!bill || gw_pool_cleanup_add(r->pool, gw_keyed_cleanup, r) != GW_OK) {
        gw_auth_error(r, BILL_ERROR);
        return;
    }
    if (gw_auth_refused_offline(r, key)) return;
    r->admit = bill_admit(bill, key, r->srv->cfg->workers[0].models[0], r->conn->peer, gw_keyed_admitted, r);
    if (!r->admit) gw_auth_error(r, BILL_ERROR);
}

const gw_handler_t gw_models_handler = {GW_ROUTE_MODELS, gw_keyed_run, NULL, NULL, NULL};
const gw_handler_t gw_balance_handler = {GW_ROUTE_OTHER, gw_keyed_run, NULL, NULL, NULL};

static void gw_health_run(gw_req_t *r) {
    static const char ok[] = "{\"status\":\"ok\"}\n";
    if (strcmp(r->http->method, "GET") && !gw_req_is_head(r)) {
        gw_req_method_not_allowed(r, "GET, HEAD");
        return;
    }
    gw_req_answer(r, 200, "application/json", ok, sizeof ok - 1);
}

const gw_handler_t gw_health_handler = {GW_ROUTE_HEALTH, gw_health_run, NULL, NULL, NULL};

/* GET /v1/receipt-key: the key that signs usage receipts. */
static void gw_receipt_key_run(gw_req_t *r) {
    if (strcmp(r->http->method, "GET") && !gw_req_is_head(r)) {
        gw_req_method_not_allowed(r, "GET, HEAD");
        return;
    }
    const char *k = bill_receipt_key_json(r->loop->bill);
    if (!k) gw_req_error(r, 404, "invalid_request_error", "not_found", NULL, "Usage receipts are not signed here");
    else gw_req_answer(r, 200, "application/json", k, strlen(k));
}

const gw_handler_t gw_receipt_key_handler = {GW_ROUTE_OTHER, gw_receipt_key_run, NULL, NULL, NULL};

/* 1 when s is a list of header names (RFC 9110 #field-name: tokens
 * separated by commas, blanks around them, empty elements ignored; at least
 * one name), 0 otherwise ("a b" is two names without their comma). */
static int gw_preflight_names(const char *s, size_t n) {
    static const char tchar[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~";
    int names = 0;
    for (size_t i = 0; i < n;) {
        i += strspn(s + i, " \t");
        size_t k = i < n ? strspn(s + i, tchar) : 0;
        names += k > 0;
        i += k;
        i += strspn(s + i, " \t");
        if (i < n && s[i++] != ',') return 0;
    }
    return names > 0;
}

/* A browser's CORS preflight (OPTIONS with Origin and
 * Access-Control-Request-Method) on a /v1 path: 204, any origin, the methods
 * of the API, and the request headers it asked for when they are header
 * names (Authorization is never covered by a "*"), for a day.  No key: a
 * preflight carries none.  Any other OPTIONS gets the same answer. */
static void gw_preflight_run(gw_req_t *r) {
    const char *ask = gw_http_header(r->http, "Access-Control-Request-Headers");
    size_t n = ask ? strlen(ask) : 0;
    int names = n > 0 && n <= 1024 && gw_preflight_names(ask, n);
    size_t len = (names ? n : 0) + 256;
    char *h = gw_palloc(r->pool, len);
    if (h)
        snprintf(h, len,
                 "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Allow-Headers: %s\r\n"
                 "Access-Control-Max-Age: 86400\r\n",
                 names ? ask : "Authorization, Content-Type");
    r->extra_headers = h;
    gw_req_answer(r, 204, NULL, "", 0);
}

const gw_handler_t gw_preflight_handler = {GW_ROUTE_OTHER, gw_preflight_run, NULL, NULL, NULL};

/* "OPTIONS *": what the server as a whole offers (RFC 9110 §9.3.7): 200 with
 * Allow, the methods some path here serves, and Content-Length: 0. */
static void gw_options_star_run(gw_req_t *r) {
    r->extra_headers = "Allow: GET, HEAD, POST, OPTIONS\r\n";
    gw_req_answer(r, 200, NULL, "", 0);
}

const gw_handler_t gw_options_star_handler = {GW_ROUTE_OTHER, gw_options_star_run, NULL, NULL, NULL};

static void gw_notfound_run(gw_req_t *r) {
    char msg[300];
    snprintf(msg, sizeof msg, "No route for %.16s %.200s", r->http->method, r->http->target);
    gw_req_error(r, 404, "invalid_request_error", "not_found", NULL, msg);
}

const gw_handler_t gw_notfound_handler = {GW_ROUTE_OTHER, gw_notfound_run, NULL, NULL, NULL};
