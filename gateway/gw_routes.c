/* gw_routes.c — which handler answers which path of the public port: the
 * only file that knows every handler.  Matching ignores the query string;
 * /v1/models/{id} leaves the percent-decoded id in r->model (%00 kept as
 * written, so the id has no NUL and matches no model).  Operator
 * endpoints (/metrics) are not here: they are on the admin listener
 * (gw_admin.c). */
#include <string.h>

#include "gw-int.h"

static int gw_hexdigit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The /v1 paths answer pages of any origin (CORS: their answers carry
 * Access-Control-Allow-Origin *, and a browser's preflight OPTIONS is
 * answered without a key); the dashboard, which signs in with a cookie, does
 * not. */
static const gw_handler_t *gw_routes_v1(gw_req_t *r, const gw_handler_t *h) {
    r->cors = 1;
    return strcmp(r->http->method, "OPTIONS") ? h : &gw_preflight_handler;
}

const gw_handler_t *gw_routes_match(gw_req_t *r) {
    const char *t = r->http->target;
    size_t n = strcspn(t, "?");
    /* "OPTIONS *" (the parser takes "*" only with OPTIONS): about the server, not a path */
    if (!strcmp(t, "*")) return &gw_options_star_handler;
    /* /beta/chat/completions: DeepSeek's beta base_url serves chat too (a client
     * set up for FIM on .../beta calls chat there) */
    if ((n == 20 && !strncmp(t, "/v1/chat/completions", n)) || (n == 22 && !strncmp(t, "/beta/chat/completions", n)))
        return gw_routes_v1(r, &gw_chat_handler);
    /* OpenAI's legacy completions and DeepSeek's FIM completion (beta): one handler */
    if ((n == 15 && !strncmp(t, "/v1/completions", n)) || (n == 17 && !strncmp(t, "/beta/completions", n)))
        return gw_routes_v1(r, &gw_completions_handler);
    /* DeepSeek's own base_url is the root (https://api.deepseek.com; ".../v1"
     * is its alias "for compatibility with OpenAI"): a client set up that way
     * calls /chat/completions and /models (/user/balance: below).  They are
     * the /v1 routes under a second name. */
    if (n == 17 && !strncmp(t, "/chat/completions", n)) return gw_routes_v1(r, &gw_chat_handler);
    if (n == 12 && !strncmp(t, "/completions", n)) return gw_routes_v1(r, &gw_completions_handler);
    size_t mp = n >= 7 && !strncmp(t, "/models", 7) ? 7 : n >= 10 && !strncmp(t, "/v1/models", 10) ? 10 : 0;
    if (mp && (n == mp || (n > mp + 1 && t[mp] == '/'))) {
        if (n > mp) { /* one model; its id percent-decoded */
            char *id = gw_palloc(r->pool, n - (mp + 1) + 1);
            size_t k = 0;
            for (size_t i = mp + 1; id && i < n; i++) {
                int hi, lo;
                /* %00 stays as it is: a NUL would end the id early ("m%00x" taken for "m") */
                if (t[i] == '%' && i + 2 < n && (hi = gw_hexdigit(t[i + 1])) >= 0 && (lo = gw_hexdigit(t[i + 2])) >= 0 &&
                    (hi | lo)) {
                    id[k++] = (char)(hi * 16 + lo);
                    i += 2;
                } else {
                    id[k++] = t[i];
                }
            }
            if (id) id[k] = '\0';
            r->model = id ? id : "";
        }
        return gw_routes_v1(r, &gw_models_handler);
    }
    if (n >= 10 && !strncmp(t, "/dashboard", 10) && (n == 10 || t[10] == '/')) return &gw_dash_handler;
    if (n == 15 && !strncmp(t, "/v1/receipt-key", n)) return gw_routes_v1(r, &gw_receipt_key_handler);
    if ((n == 13 && !strncmp(t, "/user/balance", n)) || (n == 16 && !strncmp(t, "/v1/user/balance", n)))
        return gw_routes_v1(r, &gw_balance_handler);
    if (n == 7 && !strncmp(t, "/health", n)) return &gw_health_handler;
    /* an unknown /v1 (or /beta) path is the API's 404: a page reads it too
     * (its preflight answered, the 404 with Access-Control-Allow-Origin) */
    if ((n >= 3 && !strncmp(t, "/v1", 3) && (n == 3 || t[3] == '/')) || (n >= 6 && !strncmp(t, "/beta/", 6)))
        return gw_routes_v1(r, &gw_notfound_handler);
    return &gw_notfound_handler;
}
