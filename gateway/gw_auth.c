/* gw_auth.c — what the /v1 handlers share before and after billing's
 * admission: the Bearer key of a request (401 when missing or malformed),
 * the offline shape/checksum refusal, the OpenAI errors for each admission
 * status, and the models the configured workers serve. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "gw-int.h"

int gw_model_known(const gw_config_t *cfg, const char *model) {
    for (int i = 0; i < cfg->nworkers; i++)
        for (int j = 0; j < cfg->workers[i].nmodels; j++)
            if (!strcmp(cfg->workers[i].models[j], model)) return 1;
    return 0;
}

void gw_auth_model_not_allowed(gw_req_t *r, const char *model) {
    char msg[300];
    snprintf(msg, sizeof msg, "This api key may not use the model '%.200s'", model);
    gw_req_error(r, 403, "permission_error", "model_not_allowed", "model", msg);
}

void gw_auth_error(gw_req_t *r, bill_status_t st) {
    if (st == BILL_UNAUTHORIZED || st == BILL_KEY_EXPIRED) gw_rl_auth_failed(r->loop->rl, r->conn->peer);
    switch (st) {
    case BILL_UNAUTHORIZED:
        gw_req_error(r, 401, "invalid_request_error", "invalid_api_key", NULL,
                     "Authentication Fails, Your api key is invalid or revoked");
        break;
    case BILL_KEY_EXPIRED:
        gw_req_error(r, 401, "invalid_request_error", "api_key_expired", NULL,
                     "Authentication Fails, Your api key has expired");
        break;
    case BILL_MODEL_NOT_ALLOWED:
        gw_auth_model_not_allowed(r, r->model ? r->model : "");
        break;
    case BILL_NO_BALANCE:
        gw_req_error(r, 402, "invalid_request_error", "insufficient_balance", NULL, "Insufficient Balance");
        break;
    case BILL_NO_PRICE:
        gw_req_error(r, 404, "invalid_request_error", "model_not_found", NULL, "The model has no price");
        break;
    default:
        gw_req_error(r, 503, "server_error", "service_unavailable", NULL,
                     "Accounts are temporarily unavailable, retry later");
        break;
    }
}

const char *gw_auth_bearer(gw_req_t *r) {
    int64_t retry_ms;
    if (gw_rl_auth_blocked(r->loop->rl, r->conn->peer, &retry_ms)) { /* before any key lookup */
        r->loop->m.ratelimited++;
        r->have_rl = 1;
        memset(&r->rl, 0, sizeof r->rl);
        r->rl.retry_ms = retry_ms;
        gw_req_error(r, 429, "rate_limit_error", "too_many_failed_authentications", NULL,
                     "Too many failed authentications from this address; retry later");
        return NULL;
    }
    const char *a = gw_http_header(r->http, "authorization");
    const char *msg = "Authentication Fails, no api key given (Authorization: Bearer <key>)";
    int na = 0;
    for (int i = 0; i < r->http->nhdrs; i++)
        na += r->http->hdrs[i].name_len == 13 && !strcasecmp(r->http->hdrs[i].name, "authorization");
    if (na > 1) { /* which key would pay is ambiguous (a proxy may have read the other one) */
        msg = "Authentication Fails, more than one Authorization header";
    } else if (a) {
        if (strncasecmp(a, "Bearer ", 7)) {
            msg = "Authentication Fails, malformed Authorization header (want: Bearer <key>)";
        } else {
            const char *k = a + 7;
            while (*k == ' ') k++;
            size_t n = strlen(k);
            int ok = n > 0 && n <= 256;
            for (size_t i = 0; ok && i < n; i++)
                if ((unsigned char)k[i] <= 0x20 || (unsigned char)k[i] >= 0x7f) ok = 0;
            if (ok) return k;
            msg = "Authentication Fails, malformed api key";
        }
    }
    gw_rl_auth_failed(r->loop->rl, r->conn->peer);
    gw_req_error(r, 401, "invalid_request_error", "invalid_api_key", NULL, msg);
    return NULL;
}

/* A mistyped or made-up key (wrong shape or checksum) is refused here,
 * right where it would be looked up, without touching the cache, Redis or
 * PostgreSQL. */
int gw_auth_refused_offline(gw_req_t *r, const char *key) {
    if (bill_key_shape(key) != BILL_KEY_BAD) return 0;
    r->loop->m.key_format_rejects++;
    gw_req_error(r, 401, "invalid_request_error", "invalid_api_key", NULL,
                 "Authentication Fails, Your api key is invalid (not a key this service issued: wrong shape or "
                 "checksum)");
    return 1;
}

/* The limits of the request's key (its own, else the configured defaults)
 * and of its customer (no defaults: 0 is none). */
void gw_auth_limits(gw_req_t *r, gw_rl_limits_t *key, gw_rl_limits_t *cust) {
    const gw_config_t *cfg = r->srv->cfg;
    key->rpm = r->key.rpm > 0 ? r->key.rpm : cfg->default_rpm;
    key->tpm = r->key.tpm > 0 ? r->key.tpm : cfg->default_tpm;
    key->conc = r->key.concurrency > 0 ? r->key.concurrency : cfg->default_concurrency;
    cust->rpm = r->key.cust_rpm;
    cust->tpm = r->key.cust_tpm;
    cust->conc = r->key.cust_concurrency;
}

int gw_auth_limits_any(const gw_rl_limits_t *l) { return l->rpm > 0 || l->tpm > 0 || l->conc > 0; }

/* An answer after authentication that is not an admission (a refusal by
 * billing, /v1/models) still carries the x-ratelimit-* headers: the limits'
 * state is looked at (not taken) first, then `then` answers. */
int gw_auth_peek_limits(gw_req_t *r, gw_rl_cb then) {
    gw_rl_limits_t kl, cl;
    gw_auth_limits(r, &kl, &cl);
    if (!gw_auth_limits_any(&kl) && !gw_auth_limits_any(&cl)) return GW_ERROR;
    r->rl_call = gw_rl_check(r->loop->rl, GW_RL_OP_PEEK, r->key.key_id, &kl, r->key.customer_id, &cl, 0, r->id,
                             then, r);
    return r->rl_call ? GW_OK : GW_ERROR;
}
