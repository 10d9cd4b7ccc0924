/* gw_config.c — the gateway's configuration: one table of options with their
 * defaults and meaning; each option is read, in increasing priority, from
 * the built-in default, the JSON config file, the environment variable
 * TOLLGATE_<NAME> (upper case) and the flag --<name> (dashes or underscores).
 * "workers" is a JSON array in every source.  Numbers are integers checked
 * for range; nothing here is money. */
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "gw-int.h"
#include "tg_file.h"

enum { OPT_STR, OPT_INT, OPT_BOOL, OPT_WORKERS };

typedef struct {
    const char *name;
    int type;
    size_t off;
    const char *def;
    int64_t min, max;
    const char *doc;
} gw_opt_t;

#define S(f) OPT_STR, offsetof(gw_config_t, f)
#define I(f) OPT_INT, offsetof(gw_config_t, f)
#define B(f) OPT_BOOL, offsetof(gw_config_t, f)

static const gw_opt_t gw_opts[] = {
    {"listen", S(listen), "127.0.0.1:8443", 0, 0, "HTTPS address of the public API"},
    {"admin_listen", S(admin_listen), "127.0.0.1:8444", 0, 0, "admin API address (billing); empty: none"},
    {"tls_cert", S(tls_cert), "var/tls/cert.pem", 0, 0, "PEM certificate chain"},
    {"tls_key", S(tls_key), "var/tls/key.pem", 0, 0, "PEM private key"},
    {"postgres", S(postgres), "host=127.0.0.1 port=8432 dbname=tollgate user=tollgate", 0, 0,
     "libpq connection string"},
    {"redis", S(redis), "127.0.0.1:8379", 0, 0,
     "Redis host:port for rate limits (with redis_cluster: seed nodes, comma-separated); empty: in-process limits"},
    {"redis_cluster", B(redis_cluster), "false", 0, 1,
     "redis names Redis Cluster seed nodes: route by hash slot (CLUSTER SLOTS, MOVED/ASK)"},
    {"admin_token_file", S(admin_token_file), "var/admin.token", 0, 0, "file holding the admin bearer token"},
    {"key_secret_file", S(key_secret_file), "var/key.secret", 0, 0, "file holding the API-key hash secret (hex)"},
    {"spool_dir", S(spool_dir), "var/spool", 0, 0, "where settlements wait while PostgreSQL is down"},
    {"dashboard_dir", S(dashboard_dir), "build/web", 0, 0, "the dashboards' static files (make builds them); empty: none"},
    {"receipt_key", S(receipt_key), "var/receipt.key", 0, 0,
     "Ed25519 private key (PEM) signing usage receipts; empty or a missing file: no receipts"},
    {"access_log", S(access_log), "var/log/access.log", 0, 0, "JSON-lines access log; empty: none, - : stdout"},
    {"max_body_bytes", I(max_body_bytes), "1048576", 1, INT32_MAX, "largest request body (413 above)"},
    {"max_header_bytes", I(max_header_bytes), "32768", 256, 1 << 24,
     "largest request head, trailer section included (431 above; also above 100 fields)"},
    {"loops", I(loops), "0", 0, 256,
     "event loops serving the public port (SO_REUSEPORT), each with its own billing and Redis; 0: one per core"},
    {"max_connections", I(max_connections), "10000", 1, 1 << 24, "client connections at once (all loops); more get a 503 after the handshake"},
    {"default_rpm", I(default_rpm), "0", 0, INT32_MAX, "requests/min for keys without their own limit; 0: none"},
    {"default_tpm", I(default_tpm), "0", 0, INT32_MAX, "tokens/min for keys without their own limit; 0: none"},
    {"tokenizer", S(tokenizer), "build/data/deepseek-v3-tokenizer/tokenizer.json", 0, 0,
     "tokenizer.json for the gateway's own prompt count (TPM, cut streams); empty: none"},
    {"chat_template", S(chat_template), "deepseek_v3", 0, 0, "template for that count: deepseek_v3, deepseek_r1, mixtral"},
    {"default_concurrency", I(default_concurrency), "0", 0, INT32_MAX,
     "requests in flight per key for keys without their own limit; 0: none"},
    {"handshake_timeout_ms", I(handshake_timeout_ms), "10000", 1, INT32_MAX, "time for the TLS handshake"},
    {"header_timeout_ms", I(header_timeout_ms), "10000", 1, INT32_MAX,
     "time to receive a request's head from its first byte (408)"},
    {"body_timeout_ms", I(body_timeout_ms), "30000", 1, INT32_MAX, "longest silence while a request body arrives (408)"},
    {"idle_timeout_ms", I(idle_timeout_ms), "60000", 1, INT32_MAX, "keep-alive idle time before closing"},
    {"write_timeout_ms", I(write_timeout_ms), "30000", 1, INT32_MAX,
     "a client that reads none of its pending answer for this long is closed (its request abandoned and settled)"},
    {"max_output_bytes", I(max_output_bytes), "1048576", 4096, 1 << 30,
     "answer bytes waiting for a client above which its pipelined requests wait unread"},
    {"upstream_connect_timeout_ms", I(upstream_connect_timeout_ms), "5000", 1, INT32_MAX,
     "connecting to a worker"},
    {"upstream_timeout_ms", I(upstream_timeout_ms), "300000", 1, INT32_MAX,
     "silence from a worker before 504 (or ending the stream)"},
    {"upstream_keepalive", B(upstream_keepalive), "true", 0, 1,
     "reuse worker connections (HTTP/1.1 keep-alive, up to 16 idle per worker)"},
    {"redis_timeout_ms", I(redis_timeout_ms), "250", 1, INT32_MAX, "one Redis rate-limit call"},
    {"redis_fail_closed", B(redis_fail_closed), "false", 0, 1,
     "Redis unanswered: false decides with the in-process limiter (per instance), true answers 503"},
    {"concurrency_lease_ms", I(concurrency_lease_ms), "30000", 1000, 86400000,
     "a request's concurrency slot in Redis expires this long after its gateway stops renewing it"},
    {"auth_fail_limit", I(auth_fail_limit), "20", 0, INT32_MAX,
     "failed authentications per auth_fail_window_ms from one address before it gets 429; 0: off"},
    {"auth_fail_window_ms", I(auth_fail_window_ms), "60000", 1000, 86400000, "window of auth_fail_limit"},
    {"auth_fail_block_ms", I(auth_fail_block_ms), "60000", 1000, 86400000,
     "how long an address over auth_fail_limit is refused"},
    {"auth_fail_table", I(auth_fail_table), "16384", 64, 1 << 24,
     "addresses remembered by the failed-auth throttle (bounded memory)"},
    {"key_last_used_flush_ms", I(key_last_used_flush_ms), "60000", 100, 86400000,
     "API keys' last_used_at/last_used_ip are written at most this often (one statement for all keys)"},
    {"default_max_tokens", I(default_max_tokens), "4096", 1, 1000000000,
     "completion cap of a request that gives none (forwarded to the worker; holds and TPM are charged with it)"},
    {"max_tokens_limit", I(max_tokens_limit), "163840", 1, 1000000000,
     "the largest max_tokens (max_completion_tokens) a request may ask for; beyond it a 400 before any hold "
     "(default: DeepSeek-V3's 163,840-token context)"},
    {"key_cache_ttl_ms", I(key_cache_ttl_ms), "60000", 1, 86400000,
     "a cached API key is re-read after this (changes are pushed by PostgreSQL NOTIFY at once)"},
    {"key_cache_fallback_ms", I(key_cache_fallback_ms), "1000", 1, 86400000,
     "... and after this while the NOTIFY connection is down"},
    {"key_negative_ttl_ms", I(key_negative_ttl_ms), "5000", 1, 86400000, "an unknown API key is remembered this long"},
    {"price_cache_ms", I(price_cache_ms), "1000", 1, 86400000, "a model's price is re-read after this"},
    {"lease_chunk_pico", I(lease_chunk_pico), "50000000000", 1, INT64_MAX,
     "credit leased from the balance beyond what waiting holds need (pico-USD; default $0.05)"},
    {"lease_ttl_ms", I(lease_ttl_ms), "60000", 1000, 86400000,
     "a credit lease not renewed (its gateway died) is freed after this"},
    {"lease_idle_ms", I(lease_idle_ms), "2000", 1, 86400000, "an unused credit lease is given back after this"},
    {"invoice_finalize_after_s", I(invoice_finalize_after_s), "21600", 0, 31 * 86400,
     "finalize last month's invoices this long after it ends (UTC); 0: never (tollgatectl invoice finalize)"},
    {"shutdown_grace_ms", I(shutdown_grace_ms), "3000", 0, INT32_MAX, "on SIGTERM, time left to requests in flight"},
    {"stream_high_water", I(stream_high_water), "262144", 4096, 1 << 30,
     "client output bytes above which reading the worker pauses"},
    {"workers", OPT_WORKERS, 0, "[{\"url\":\"http://127.0.0.1:8500\",\"models\":[\"deepseek-v3-demo\"]}]", 0, 0,
     "engine workers: [{\"url\":\"http(s)://host:port\",\"models\":[...]"
     "(,\"command\":[argv],\"log\":file,\"api_key\":...,\"tls_ca\":...,\"health_path\":\"/health\","
     "\"start_timeout_ms\":300000)}]"},
};
#define NOPTS (sizeof gw_opts / sizeof gw_opts[0])

static void free_workers(gw_config_t *c) {
    for (int i = 0; i < c->nworkers; i++) {
        free(c->workers[i].url);
        for (int j = 0; j < c->workers[i].nmodels; j++) free(c->workers[i].models[j]);
        free(c->workers[i].models);
        for (int j = 0; c->workers[i].command && c->workers[i].command[j]; j++) free(c->workers[i].command[j]);
        free(c->workers[i].command);
        free(c->workers[i].api_key);
        free(c->workers[i].tls_ca);
        free(c->workers[i].health_path);
        free(c->workers[i].log);
    }
    free(c->workers);
    c->workers = NULL;
    c->nworkers = 0;
}

void gw_config_free(gw_config_t *c) {
    if (!c) return;
    for (size_t i = 0; i < NOPTS; i++)
        if (gw_opts[i].type == OPT_STR) free(*(char **)((char *)c + gw_opts[i].off));
    free(c->config_file);
    free_workers(c);
    free(c);
}

int gw_split_hostport(const char *s, char *host, size_t hostlen, int *port) {
    const char *colon;
    const char *h = s;
    size_t hl;
    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':') return GW_ERROR;
        h = s + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) return GW_ERROR;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= hostlen) return GW_ERROR;
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p <= 0 || p > 65535) return GW_ERROR;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return GW_OK;
}

/* A worker entry's pool fields: "command" (argv array: the gateway starts
 * it), "log" (its output), "api_key" (an external upstream's key), "tls_ca"
 * (its CA file). */
static int gw_config_worker_extra(gw_worker_t *wk, const cJSON *w, int i, char *err, size_t errlen) {
    const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(w, "command");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(w, "api_key");
    const cJSON *ca = cJSON_GetObjectItemCaseSensitive(w, "tls_ca");
    const cJSON *log = cJSON_GetObjectItemCaseSensitive(w, "log");
    if (log && (!cJSON_IsString(log) || !*log->valuestring || !cmd)) {
        snprintf(err, errlen, "workers[%d].log: want a file name (with a command)", i);
        return GW_ERROR;
    }
    if (log && !(wk->log = strdup(log->valuestring))) return GW_ERROR;
    if (cmd) {
        int n = cJSON_GetArraySize(cmd);
        if (!cJSON_IsArray(cmd) || n == 0) {
            snprintf(err, errlen, "workers[%d].command: want a non-empty array of strings (argv)", i);
            return GW_ERROR;
        }
        if (!(wk->command = calloc((size_t)n + 1, sizeof(char *)))) return GW_ERROR;
        for (int j = 0; j < n; j++) {
            const cJSON *a = cJSON_GetArrayItem(cmd, j);
            if (!cJSON_IsString(a) || (j == 0 && !*a->valuestring)) {
                snprintf(err, errlen, "workers[%d].command[%d]: want a string", i, j);
                return GW_ERROR;
            }
            if (!(wk->command[j] = strdup(a->valuestring))) return GW_ERROR;
        }
    }
    if (key && (!cJSON_IsString(key) || !*key->valuestring || strpbrk(key->valuestring, "\r\n"))) {
        snprintf(err, errlen, "workers[%d].api_key: want a non-empty string", i);
        return GW_ERROR;
    }
    if (key && !(wk->api_key = strdup(key->valuestring))) return GW_ERROR;
    if (ca && (!cJSON_IsString(ca) || !*ca->valuestring)) {
        snprintf(err, errlen, "workers[%d].tls_ca: want a file name", i);
        return GW_ERROR;
    }
    if (ca && !(wk->tls_ca = strdup(ca->valuestring))) return GW_ERROR;
    const cJSON *hp = cJSON_GetObjectItemCaseSensitive(w, "health_path");
    if (hp && (!cJSON_IsString(hp) || hp->valuestring[0] != '/' || strpbrk(hp->valuestring, " \t\r\n") ||
               strlen(hp->valuestring) > 512)) {
        snprintf(err, errlen, "workers[%d].health_path: want a path such as \"/health\" or \"/v1/models\"", i);
        return GW_ERROR;
    }
    if (!(wk->health_path = strdup(hp ? hp->valuestring : "/health"))) return GW_ERROR;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(w, "start_timeout_ms");
    if (st && (!cJSON_IsNumber(st) || st->valuedouble < 100 || st->valuedouble > 86400000.0 ||
               st->valuedouble != (double)(int)st->valuedouble || !cmd)) {
        snprintf(err, errlen, "workers[%d].start_timeout_ms: want 100..86400000 (with a command)", i);
        return GW_ERROR;
    }
    wk->start_timeout_ms = st ? (int)st->valuedouble : 300000;
    return GW_OK;
}

int gw_config_set_workers(gw_config_t *c, const char *json, char *err, size_t errlen) {
    cJSON *a = cJSON_Parse(json);
    int rc = GW_ERROR;
    free_workers(c);
    if (!cJSON_IsArray(a)) {
        snprintf(err, errlen, "workers: want a JSON array of {\"url\",\"models\"}");
        goto out;
    }
    int n = cJSON_GetArraySize(a);
    c->workers = calloc((size_t)(n ? n : 1), sizeof(gw_worker_t));
    if (!c->workers) goto out;
    for (int i = 0; i < n; i++) {
        cJSON *w = cJSON_GetArrayItem(a, i);
        cJSON *url = cJSON_GetObjectItemCaseSensitive(w, "url");
        cJSON *models = cJSON_GetObjectItemCaseSensitive(w, "models");
        gw_worker_t *wk = &c->workers[c->nworkers++];
        if (!cJSON_IsString(url) || (strncmp(url->valuestring, "http://", 7) && strncmp(url->valuestring, "https://", 8))) {
            snprintf(err, errlen, "workers[%d].url: want \"http://host:port\" or \"https://host:port\"", i);
            goto out;
        }
        wk->tls = url->valuestring[4] == 's';
        wk->url = strdup(url->valuestring);
        char hp[300];
        snprintf(hp, sizeof hp, "%s", url->valuestring + (wk->tls ? 8 : 7));
        char *slash = strchr(hp, '/');
        if (slash) *slash = '\0';
        if (!strchr(hp, ':') || hp[strlen(hp) - 1] == ']')
            strncat(hp, wk->tls ? ":443" : ":80", sizeof hp - strlen(hp) - 1);
        if (gw_config_worker_extra(wk, w, i, err, errlen) != GW_OK) goto out;
        if (!wk->url || gw_split_hostport(hp, wk->host, sizeof wk->host, &wk->port) != GW_OK) {
            snprintf(err, errlen, "workers[%d].url: bad host:port in %s", i, url->valuestring);
            goto out;
        }
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
        char ps[8];
        snprintf(ps, sizeof ps, "%d", wk->port);
        int gai = getaddrinfo(wk->host, ps, &hints, &ai);
        if (gai || !ai) {
            snprintf(err, errlen, "workers[%d].url: cannot resolve %s: %s", i, wk->host, gai_strerror(gai));
            goto out;
        }
        struct addrinfo *pick = ai; /* IPv4 first: "localhost" workers usually listen on 127.0.0.1 */
        for (struct addrinfo *x = ai; x; x = x->ai_next)
            if (x->ai_family == AF_INET) {
                pick = x;
                break;
            }
        memcpy(&wk->addr, pick->ai_addr, pick->ai_addrlen);
        wk->addrlen = pick->ai_addrlen;
        freeaddrinfo(ai);
        int nm = cJSON_GetArraySize(models);
        if (!cJSON_IsArray(models) || nm == 0) {
            snprintf(err, errlen, "workers[%d].models: want a non-empty array of model names", i);
            goto out;
        }
        wk->models = calloc((size_t)nm, sizeof(char *));
        if (!wk->models) goto out;
        for (int j = 0; j < nm; j++) {
            cJSON *m = cJSON_GetArrayItem(models, j);
            if (!cJSON_IsString(m) || !*m->valuestring || strlen(m->valuestring) > 200) {
                snprintf(err, errlen, "workers[%d].models[%d]: want a model name", i, j);
                goto out;
            }
            if (!(wk->models[wk->nmodels++] = strdup(m->valuestring))) goto out;
        }
    }
    rc = GW_OK;
out:
    if (rc != GW_OK && !*err) snprintf(err, errlen, "workers: out of memory");
    cJSON_Delete(a);
    return rc;
}

/* Set option o from text (defaults, env, flags). */
static int set_text(gw_config_t *c, const gw_opt_t *o, const char *v, const char *src, char *err, size_t errlen) {
    void *f = (char *)c + o->off;
    switch (o->type) {
    case OPT_STR: {
        char *d = strdup(v);
        if (!d) return GW_ERROR;
        free(*(char **)f);
        *(char **)f = d;
        return GW_OK;
    }
    case OPT_INT: {
        char *end;
        errno = 0;
        long long n = strtoll(v, &end, 10);
        if (errno || end == v || *end || n < o->min || n > o->max) {
            snprintf(err, errlen, "%s: %s: want an integer in [%lld, %lld], got \"%s\"", src, o->name,
                     (long long)o->min, (long long)o->max, v);
            return GW_ERROR;
        }
        *(int64_t *)f = n;
        return GW_OK;
    }
    case OPT_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes")) *(int64_t *)f = 1;
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no")) *(int64_t *)f = 0;
        else {
            snprintf(err, errlen, "%s: %s: want true or false, got \"%s\"", src, o->name, v);
            return GW_ERROR;
        }
        return GW_OK;
    case OPT_WORKERS: {
        char e2[200] = "";
        if (gw_config_set_workers(c, v, e2, sizeof e2) != GW_OK) {
            snprintf(err, errlen, "%s: %s", src, e2);
            return GW_ERROR;
        }
        return GW_OK;
    }
    }
    return GW_ERROR;
}

static int set_json(gw_config_t *c, const gw_opt_t *o, cJSON *v, const char *src, char *err, size_t errlen) {
    char num[32];
    switch (o->type) {
    case OPT_STR:
        if (!cJSON_IsString(v)) break;
        return set_text(c, o, v->valuestring, src, err, errlen);
    case OPT_INT:
        /* range first: converting a double outside int64 is undefined */
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= -0x1p63 && v->valuedouble < 0x1p63) ||
            v->valuedouble != (double)(int64_t)v->valuedouble)
            break;
        snprintf(num, sizeof num, "%lld", (long long)v->valuedouble);
        return set_text(c, o, num, src, err, errlen);
    case OPT_BOOL:
        if (!cJSON_IsBool(v)) break;
        return set_text(c, o, cJSON_IsTrue(v) ? "true" : "false", src, err, errlen);
    case OPT_WORKERS: {
        char *t = cJSON_PrintUnformatted(v);
        if (!t) return GW_ERROR;
        int rc = set_text(c, o, t, src, err, errlen);
        free(t);
        return rc;
    }
    }
    snprintf(err, errlen, "%s: %s: wrong type (want %s)", src, o->name,
             o->type == OPT_STR ? "string" : o->type == OPT_INT ? "integer" : o->type == OPT_BOOL ? "boolean"
                                                                                                : "array");
    return GW_ERROR;
}

static const gw_opt_t *find_opt(const char *name, size_t n) {
    for (size_t i = 0; i < NOPTS; i++) {
        const char *a = gw_opts[i].name;
        if (strlen(a) != n) continue;
        size_t j = 0;
        for (; j < n; j++) {
            char x = name[j] == '-' ? '_' : name[j];
            if (x != a[j]) break;
        }
        if (j == n) return &gw_opts[i];
    }
    return NULL;
}

static int load_file(gw_config_t *c, const char *path, char *err, size_t errlen) {
    size_t n;
    char *text = tg_file_read(path, 1 << 24, &n);
    if (!text) {
        snprintf(err, errlen, "%s: %s", path, errno == EFBIG ? "too large" : strerror(errno));
        return GW_ERROR;
    }
    int rc = GW_ERROR;
    cJSON *j = cJSON_ParseWithLength(text, n);
    if (!cJSON_IsObject(j)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        goto out;
    }
    for (cJSON *it = j->child; it; it = it->next) {
        const gw_opt_t *o = it->string ? find_opt(it->string, strlen(it->string)) : NULL;
        if (!o) {
            if (it->string && it->string[0] == '_') continue; /* comments: "_doc": "..." */
            snprintf(err, errlen, "%s: unknown option \"%s\"", path, it->string ? it->string : "");
            goto out;
        }
        if (set_json(c, o, it, path, err, errlen) != GW_OK) goto out;
    }
    rc = GW_OK;
out:
    cJSON_Delete(j);
    free(text);
    return rc;
}

void gw_config_usage(void) {
    printf("usage: tollgate [--config FILE] [--<option> VALUE]...\n\n"
           "Options (JSON key / --flag / TOLLGATE_<UPPER> env; flags beat env beat file):\n");
    for (size_t i = 0; i < NOPTS; i++)
        printf("  %-28s %s (default: %s)\n", gw_opts[i].name, gw_opts[i].doc, gw_opts[i].def);
}

gw_config_t *gw_config_load(int argc, char **argv, char *err, size_t errlen) {
    gw_config_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    *err = '\0';
    for (size_t i = 0; i < NOPTS; i++)
        if (set_text(c, &gw_opts[i], gw_opts[i].def, "default", err, errlen) != GW_OK) goto fail;

    /* which file */
    const char *file = getenv("TOLLGATE_CONFIG");
    int explicit_file = file && *file;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) file = argv[++i], explicit_file = 1;
        else if (!strncmp(argv[i], "--config=", 9)) file = argv[i] + 9, explicit_file = 1;
    }
    struct stat st;
    if (!explicit_file && stat("config/tollgate.json", &st) == 0) file = "config/tollgate.json";
    if (file && *file) {
        if (!(c->config_file = strdup(file))) goto fail;
        if (load_file(c, file, err, errlen) != GW_OK) goto fail;
    }

    /* environment */
    for (size_t i = 0; i < NOPTS; i++) {
        char name[64] = "TOLLGATE_";
        size_t k = strlen(name);
        for (const char *q = gw_opts[i].name; *q && k < sizeof name - 1; q++) name[k++] = (char)toupper(*q);
        name[k] = '\0';
        const char *v = getenv(name);
        if (v && set_text(c, &gw_opts[i], v, name, err, errlen) != GW_OK) goto fail;
    }

    /* flags */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2)) {
            snprintf(err, errlen, "unexpected argument \"%s\" (see --help)", a);
            goto fail;
        }
        a += 2;
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        if (nl == 6 && !strncmp(a, "config", 6)) {
            if (!eq) i++;
            continue;
        }
        const gw_opt_t *o = find_opt(a, nl);
        if (!o) {
            snprintf(err, errlen, "unknown flag --%.*s (see --help)", (int)nl, a);
            goto fail;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            snprintf(err, errlen, "flag --%s needs a value", o->name);
            goto fail;
        }
        if (set_text(c, o, v, "flag", err, errlen) != GW_OK) goto fail;
    }
    if (c->nworkers == 0) {
        snprintf(err, errlen, "no workers configured");
        goto fail;
    }
    return c;
fail:
    if (!*err) snprintf(err, errlen, "out of memory");
    gw_config_free(c);
    return NULL;
}
