/* bill_admin_users.c — dashboard logins in the admin API: create (the
 * password shown once: "tgp_" + 32 hex digits, made here), list, revoke.  A
 * login is a customer's (sees that customer's dashboard) or an operator's
 * (sees the operator's view).  Stored as HMAC-SHA256(key secret, password),
 * like API keys: the password has 128 random bits, so a keyed hash is as
 * strong as a slow one and costs the loop nothing.  Revoking a login ends its
 * sessions (they are checked against the login on every call). */
#include <string.h>

#include <openssl/crypto.h>

#include "bill_admin-int.h"

#define USERJ                                                                                   \
    "json_build_object('login', u.login, 'role', u.role, 'customer', c.name, 'created_by', u.created_by," \
    " 'created_at', u.created_at, 'revoked_at', u.revoked_at, 'active', u.revoked_at IS NULL)"

/* $1 login, $2 role, $3 customer name (NULL for an operator), $4 hash */
static const char SQL_USER_CREATE[] =
    "WITH u AS (INSERT INTO dash_users (login, role, customer_id, password_hash, created_by)"
    "   SELECT $1, $2, c.id, $4, $actor::text FROM (SELECT 1) one"
    "   LEFT JOIN customers c ON c.name = $3 WHERE $3::text IS NULL OR c.id IS NOT NULL RETURNING *),"
    ADM_AUDIT("a", "'dashboard_user.create'", "'dashboard_user:' || u.login", "NULL",
              "to_jsonb(u) - 'password_hash'", "u")
    ", resp AS (SELECT " USERJ "::text AS body FROM u LEFT JOIN customers c ON c.id = u.customer_id)";

static const char SQL_USER_REVOKE[] =
    "WITH old AS (SELECT * FROM dash_users WHERE login = $1 FOR UPDATE),"
    " u AS (UPDATE dash_users SET revoked_at = coalesce(revoked_at, now()) WHERE id = (SELECT id FROM old)"
    "   RETURNING *),"
    " s AS (DELETE FROM dash_sessions WHERE user_id = (SELECT id FROM old) RETURNING 1),"
    ADM_AUDIT("a", "'dashboard_user.revoke'", "'dashboard_user:' || u.login", "to_jsonb(old) - 'password_hash'",
              "to_jsonb(u) - 'password_hash'", "old, u")
    ", resp AS (SELECT " USERJ "::text AS body FROM u LEFT JOIN customers c ON c.id = u.customer_id)";

static const char SQL_USER_LIST[] =
    "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg(" USERJ " ORDER BY u.id), '[]'))::text"
    " FROM dash_users u LEFT JOIN customers c ON c.id = u.customer_id";

static void user_create(adm_req_t *r) {
    tg_json_t *j = adm_body(r);
    if (!j) return;
    const char *login, *role, *cust;
    if (adm_str_field(r, j, "login", 64, 1, &login) == 0 && adm_str_field(r, j, "role", 16, 0, &role) == 0 &&
        adm_str_field(r, j, "customer", 64, 0, &cust) == 0) {
        if (!role) role = cust ? "customer" : "operator";
        char pw[40], hash[65];
        if (!adm_name_ok(login)) {
            adm_field_error(r, "invalid_name", "login",
                            "login must be 1-64 characters of letters, digits and ._@+- (starting with a letter or digit)");
        } else if (strcmp(role, "customer") && strcmp(role, "operator")) {
            adm_field_error(r, "invalid_value", "role", "role must be \"customer\" or \"operator\"");
        } else if (!strcmp(role, "customer") != !!cust) {
            adm_field_error(r, "invalid_value", "customer",
                            "a customer login names its customer; an operator login names none");
        } else if (adm_secret_new(r, "tgp_", 16, pw, sizeof pw, hash) == 0) { /* "tgp_" + 32 hex */
            const char *p[] = {login, role, cust, hash};
            adm_write(r, SQL_USER_CREATE, 4, p, "no such customer", 201, "password", pw);
            OPENSSL_cleanse(pw, sizeof pw);
        }
    }
    tg_json_free(j);
}

static const adm_named_t users = {"dashboard-users", SQL_USER_LIST, user_create, SQL_USER_REVOKE,
                                  "no such dashboard login"};

int bill_admin_users_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q) {
    (void)q;
    return adm_named_route(r, seg, nseg, &users);
}
