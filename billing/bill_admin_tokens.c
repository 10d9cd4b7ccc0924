/* bill_admin_tokens.c — named admin tokens in the admin API: create (the
 * token shown once: "tga_" + 48 hex digits), list, revoke.  Role `admin`
 * reads and writes; `readonly` only reads (bill_admin.c refuses its other
 * methods with 403).  Stored as HMAC-SHA256(server secret, token), like API
 * keys.  The bootstrap token is the root admin and is not listed here. */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "bill_admin-int.h"

#define TOKJ                                                                                    \
    "json_build_object('name', t.name, 'role', t.role, 'prefix', t.prefix, 'created_by', t.created_by," \
    " 'created_at', t.created_at, 'revoked_at', t.revoked_at, 'active', t.revoked_at IS NULL)"

/* $1 name, $2 role, $3 hash, $4 prefix */
static const char SQL_TOKEN_CREATE[] =
    "WITH t AS (INSERT INTO admin_tokens (name, role, token_hash, prefix, created_by)"
    "   VALUES ($1, $2, $3, $4, $actor::text) RETURNING *),"
    ADM_AUDIT("a", "'token.create'", "'token:' || t.name", "NULL", "to_jsonb(t) - 'token_hash'", "t")
    ", resp AS (SELECT " TOKJ "::text AS body FROM t)";

static const char SQL_TOKEN_REVOKE[] =
    "WITH old AS (SELECT * FROM admin_tokens WHERE name = $1 FOR UPDATE),"
    " t AS (UPDATE admin_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = (SELECT id FROM old)"
    "   RETURNING *),"
    ADM_AUDIT("a", "'token.revoke'", "'token:' || t.name", "to_jsonb(old) - 'token_hash'",
              "to_jsonb(t) - 'token_hash'", "old, t")
    ", resp AS (SELECT " TOKJ "::text AS body FROM t)";

static const char SQL_TOKEN_LIST[] =
    "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg(" TOKJ " ORDER BY t.id), '[]'))::text"
    " FROM admin_tokens t";

static void token_create(adm_req_t *r) {
    tg_json_t *j = adm_body(r);
    if (!j) return;
    const char *name, *role;
    if (adm_str_field(r, j, "name", 64, 1, &name) == 0 && adm_str_field(r, j, "role", 16, 0, &role) == 0) {
        if (!role) role = "admin";
        char tok[53], hash[65], prefix[16];
        if (!adm_name_ok(name) || !strcmp(name, "root")) {
            adm_field_error(r, "invalid_name", "name",
                            "name must be 1-64 characters of letters, digits and ._@+- (starting with a letter or digit), "
                            "not \"root\" (the bootstrap token)");
        } else if (strcmp(role, "admin") && strcmp(role, "readonly")) {
            adm_field_error(r, "invalid_value", "role", "role must be \"admin\" or \"readonly\"");
        } else if (adm_secret_new(r, "tga_", 24, tok, sizeof tok, hash) == 0) { /* "tga_" + 48 hex */
            snprintf(prefix, sizeof prefix, "%.12s", tok);
            const char *p[] = {name, role, hash, prefix};
            adm_write(r, SQL_TOKEN_CREATE, 4, p, NULL, 201, "token", tok);
            OPENSSL_cleanse(tok, sizeof tok);
        }
    }
    tg_json_free(j);
}

static const adm_named_t tokens = {"tokens", SQL_TOKEN_LIST, token_create, SQL_TOKEN_REVOKE, "no such admin token"};

int bill_admin_tokens_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q) {
    (void)q;
    return adm_named_route(r, seg, nseg, &tokens);
}
