/* gw_tls.c — the TLS profile of the public port and its certificate reload.
 *
 * Profile: Mozilla's "intermediate" configuration (v5.7): TLS 1.2 and 1.3
 * only; for 1.2 only ECDHE/DHE key exchange with AEAD ciphers (AES-GCM,
 * ChaCha20-Poly1305) — no CBC, no static RSA, no SHA-1 MAC; the client's
 * preference among those (all strong); groups X25519, P-256, P-384; no
 * renegotiation, no compression; read-ahead; ALPN selects http/1.1, else http/1.0 (a client
 * that offers ALPN without either, h2 alone, is refused with no_application_protocol).
 *
 * Reload (SIGHUP): a new SSL_CTX is built from the same files; if it loads,
 * it replaces the old one for connections accepted from then on.  Open
 * connections keep the context they were made with (an SSL holds a reference
 * to its SSL_CTX), so nothing is dropped.  If it does not load, the old one
 * stays and the error is logged.  The pointer is swapped under a lock that
 * every loop takes to make an SSL. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "gw-int.h"

static const char gw_tls12_ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305";
static const char gw_tls13_suites[] = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

static pthread_mutex_t gw_tls_lock = PTHREAD_MUTEX_INITIALIZER;

static int gw_tls_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
    /* http/1.1 first; http/1.0 for a client that offers only it (curl --http1.0):
     * the parser serves HTTP/1.0 (close-delimited answers) */
    static const unsigned char h1[] = "\x08http/1.1\x08http/1.0";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, h1, sizeof h1 - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *gw_tls_ctx_new(const gw_config_t *cfg, char *err, size_t errlen) {
    *err = '\0';
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) goto fail;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(ctx, gw_tls12_ciphers) != 1 || SSL_CTX_set_ciphersuites(ctx, gw_tls13_suites) != 1 ||
        SSL_CTX_set1_groups_list(ctx, "X25519:prime256v1:secp384r1") != 1) {
        snprintf(err, errlen, "TLS profile: %s", ERR_reason_error_string(ERR_get_error()));
        goto fail;
    }
    SSL_CTX_set_dh_auto(ctx, 1); /* DHE-RSA: the built-in ffdhe groups */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* one read(2) per TLS record, not one for its 5-byte header and one for
     * the rest (nginx does the same); the records OpenSSL then holds are read
     * out by gw_conn.c (gw_conn_read_buffered) */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, gw_tls_alpn, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        snprintf(err, errlen, "tls_cert %s: %s", cfg->tls_cert, ERR_reason_error_string(ERR_get_error()));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "tls_key %s: %s", cfg->tls_key, ERR_reason_error_string(ERR_get_error()));
        goto fail;
    }
    return ctx;
fail:
    if (!*err) snprintf(err, errlen, "TLS set-up failed");
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

SSL *gw_tls_new_ssl(gw_server_t *s) {
    pthread_mutex_lock(&gw_tls_lock);
    SSL *ssl = SSL_new(s->ssl);
    pthread_mutex_unlock(&gw_tls_lock);
    return ssl;
}

int gw_tls_reload(gw_server_t *s) {
    char err[512];
    SSL_CTX *ctx = gw_tls_ctx_new(s->cfg, err, sizeof err);
    if (!ctx) {
        fprintf(stderr, "tollgate: SIGHUP: certificate not reloaded, the old one stays: %s\n", err);
        return GW_ERROR;
    }
    pthread_mutex_lock(&gw_tls_lock);
    SSL_CTX *old = s->ssl;
    s->ssl = ctx;
    pthread_mutex_unlock(&gw_tls_lock);
    SSL_CTX_free(old); /* open connections hold their own references */
    fprintf(stderr, "tollgate: SIGHUP: certificate and key reloaded (%s)\n", s->cfg->tls_cert);
    return GW_OK;
}
