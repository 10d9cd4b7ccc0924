/* tollgatectl — the admin CLI: a small HTTP/1.1 client (plain sockets) for
 * the admin API that bill_new serves (billing/README.md lists the endpoints).
 *
 *   server: $TOLLGATE_ADMIN_URL, default http://127.0.0.1:8444
 *   token:  $TOLLGATE_ADMIN_TOKEN, else the file var/admin.token (from the
 *           current directory, then from the directory above the binary's)
 *
 * Read commands take --json to print the server's JSON instead of text.
 * Errors go to stderr with the server's message; the exit status is 1 for an
 * error reported by the server or the network, 2 for a usage error.
 * Money is never parsed as a number here: the server sends decimal strings. */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "tg_b64.h"
#include "tg_file.h"
#include "tg_json.h"

static const char USAGE[] =
    "usage: tollgatectl [--json] COMMAND ...\n"
    "\n"
    "  customer create NAME [--credit-usd AMOUNT]\n"
    "  customer list\n"
    "  customer show NAME\n"
    "  customer close NAME   (final: its keys and dashboard logins revoked, its keys refused everywhere)\n"
    "  customer spending-limits NAME [--daily-usd AMOUNT|none] [--monthly-usd AMOUNT|none]\n"
    "  customer limits NAME [--rpm N] [--tpm N] [--concurrency N]   (over all its keys; 0: none;\n"
    "                                   without options: show them)\n"
    "  key create --customer NAME [--name LABEL] [--expires-in DURATION | --expires-at T]\n"
    "             [--models m1,m2] [--rpm N] [--tpm N] [--concurrency N]\n"
    "             [--daily-limit-usd AMOUNT] [--monthly-limit-usd AMOUNT]   (spending limits, UTC periods)\n"
    "                                  (prints the key alone on the last line; it is shown once;\n"
    "                                   with --json one JSON document, the key in its \"key\")\n"
    "  key list --customer NAME        (state: active, expiring, expired, revoked; last use)\n"
    "  key update KEY_ID [--name LABEL] [--models m1,m2|all] [--rpm N] [--tpm N] [--concurrency N]\n"
    "             [--daily-limit-usd AMOUNT|none] [--monthly-limit-usd AMOUNT|none]\n"
    "             [--expires-in DURATION | --expires-at T | --no-expiry]\n"
    "  key rotate KEY_ID [--grace DURATION] [--expires-in DURATION | --expires-at T]\n"
    "                                  (a new key with the same name, limits and models; the old one\n"
    "                                   works for the grace period, default 24h; new key last line)\n"
    "  key revoke KEY_ID\n"
    "  credit add --customer NAME --usd AMOUNT [--reason TEXT]\n"
    "  credit adjust --customer NAME --usd [-]AMOUNT --reason TEXT   (a correction, either sign)\n"
    "  credit refund --customer NAME --usd AMOUNT --reason TEXT      (unused credit paid back)\n"
    "  credit list --customer NAME [--from T --to T] [--limit N]      (the ledger)\n"
    "  balance --customer NAME\n"
    "  usage --customer NAME [--from T --to T] [--limit N]\n"
    "  invoice --customer NAME --month YYYY-MM [--csv]   (a finalized invoice, or the draft of an open month;\n"
    "                                  --json/--csv print the stored document byte for byte)\n"
    "  invoice finalize --month YYYY-MM [--customer NAME] (store the month's invoices: never change again)\n"
    "  invoice list --month YYYY-MM\n"
    "  reconcile [--from T --to T]     (usage vs ledger, balances, invoices, rollups; exit 0 when all\n"
    "                                   agree, 3 with each difference named)\n"
    "  price set --model M --input-miss MICRO --input-hit MICRO --output MICRO [--effective-from T]\n"
    "            [--band HH:MM-HH:MM]      (a UTC time-of-day band on top of the current base price)\n"
    "  price list [--history]\n"
    "  report usage --customer NAME [--by hour|day] [--from T --to T] [--split key|model|key,model]\n"
    "                                  (usage and cost per hour or UTC day, from the hourly rollups)\n"
    "  report top [--from T --to T] [--limit N]\n"
    "                                  (customers by spend; default: this UTC month, top 20)\n"
    "  report balance --customer NAME [--by hour|day] [--from T --to T]\n"
    "                                  (balance at the end of each period, from the ledger)\n"
    "  price override --customer NAME --model M (--percent P | --input-miss MICRO --input-hit MICRO\n"
    "                 --output MICRO | --base) [--effective-from T]\n"
    "                                  (a customer's own price: P percent of the base price, explicit\n"
    "                                   prices, or back to the base price book)\n"
    "  price overrides --customer NAME [--history]\n"
    "  token create NAME [--role admin|readonly]   (an admin token, alone on the last line, shown once)\n"
    "  token list\n"
    "  token revoke NAME\n"
    "  user create LOGIN (--customer NAME | --operator)   (a dashboard login; its password alone on the last\n"
    "                                                    line, shown once)\n"
    "  user list | user revoke LOGIN\n"
    "  receipt verify RECEIPT [--pubkey FILE] [--offline]\n"
    "                                  (checks a usage receipt's Ed25519 signature with FILE, default\n"
    "                                   var/receipt.pub, then that it equals its usage row through the\n"
    "                                   admin API unless --offline; RECEIPT - reads it from stdin)\n"
    "\n"
    "AMOUNT is USD as a decimal (\"5\", \"5.00\", \"0.000001\"); MICRO is integer micro-USD per\n"
    "1M tokens; T is a timestamp PostgreSQL understands (2026-11-01, 2026-11-01T12:00:00Z,\n"
    "20261101) or Unix seconds (1793491200); without a zone, UTC.  A period runs from --from up to\n"
    "--to: a --to that is a date alone includes that whole UTC day (--from 2026-11-01 --to 2026-11-30\n"
    "is all of November, as the dashboard's To), a --to with a time or in Unix seconds is the end,\n"
    "not included;\n"
    "DURATION is seconds or 90s, 15m, 24h, 7d, 2w, 1h30m.\n"
    "Options go before or after NAME and KEY_ID, as --option VALUE or --option=VALUE.\n"
    "--json prints the server's JSON.  --idempotency-key KEY sends an Idempotency-Key header:\n"
    "the same write sent again with the same key is done once (its first answer is replayed).\n"
    "Server: $TOLLGATE_ADMIN_URL (default\n"
    "http://127.0.0.1:8444; a URL ending in /admin/v1 is the same); token: $TOLLGATE_ADMIN_TOKEN or\n"
    "var/admin.token.\n";

static int json_out;

static void die(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void die(int code, const char *fmt, ...) {
    va_list ap;
    /* what stdout already holds goes out first: a sanitizer's exit handler
     * that fails (LeakSanitizer under load) must not swallow it */
    fflush(stdout);
    va_start(ap, fmt);
    fputs("tollgatectl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

/* ---- configuration ------------------------------------------------------ */

static char host[300], port[8], base[512], hostport[320]; /* hostport: "h:p" or "[v6]:p", for Host and messages */
static int timeout_s = 30; /* $TOLLGATE_ADMIN_TIMEOUT: seconds to connect, send and wait for the answer */

static void parse_url(const char *url) {
    if (strncmp(url, "http://", 7) != 0) die(2, "TOLLGATE_ADMIN_URL must start with http:// (got %s)", url);
    const char *h = url + 7, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    char hp[300];
    if (hl == 0 || hl >= sizeof hp) die(2, "bad admin URL %s", url);
    memcpy(hp, h, hl);
    hp[hl] = 0;
    char *colon = strrchr(hp, ':');
    if (hp[0] == '[') { /* [::1]:8444 */
        char *rb = strchr(hp, ']');
        if (!rb) die(2, "bad admin URL %s", url);
        *rb = 0;
        snprintf(host, sizeof host, "%s", hp + 1);
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        if (colon) *colon = 0;
        snprintf(host, sizeof host, "%s", hp);
    }
    const char *p = colon ? colon + 1 : "80";
    if (!*p || strspn(p, "0123456789") != strlen(p) || strlen(p) > 5 || atoi(p) < 1 || atoi(p) > 65535)
        die(2, "bad port in TOLLGATE_ADMIN_URL %s (want 1 to 65535)", url);
    snprintf(port, sizeof port, "%s", p);
    snprintf(hostport, sizeof hostport, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
    snprintf(base, sizeof base, "%s", slash ? slash : "");
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/') base[--bl] = 0;
    /* the admin API's own root, as DESIGN and the README write it
     * (http://127.0.0.1:8444/admin/v1/...), names the same server: the
     * paths below are added to what is left */
    static const char *const roots[] = {"/admin/v1", "/admin"};
    for (int i = 0; i < 2; i++) {
        size_t rl = strlen(roots[i]);
        if (bl >= rl && !strcmp(base + bl - rl, roots[i])) {
            base[bl -= rl] = 0;
            break;
        }
    }
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == '\t')) s[--n] = 0;
    return s;
}

/* The trimmed text of path, or NULL; valid until the next call. */
static char *read_token_file(const char *path) {
    static char *buf;
    free(buf);
    buf = tg_file_read(path, 1 << 16, NULL);
    return buf ? trim(buf) : NULL;
}

static const char *admin_token(const char *argv0) {
    const char *t = getenv("TOLLGATE_ADMIN_TOKEN");
    if (t && *t) return t;
    char *r = read_token_file("var/admin.token");
    if (r && *r) return r;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *s = strrchr(exe, '/');
        if (s) {
            *s = 0;
            char path[4200];
            snprintf(path, sizeof path, "%s/../var/admin.token", exe);
            if ((r = read_token_file(path)) && *r) return r;
        }
    }
    die(1, "no admin token: set TOLLGATE_ADMIN_TOKEN or run where var/admin.token is");
}

/* ---- HTTP ------------------------------------------------------------------ */

/* tg_json's growing byte buffer (NUL-terminated); here running out of
 * memory ends the program. */
typedef tg_buf_t buf_t;

static void bput(buf_t *b, const void *s, size_t n) {
    if (tg_buf_put(b, s, n)) die(1, "out of memory");
}

static void bprintf(buf_t *b, const char *fmt, ...) {
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) die(1, "argument too long");
    bput(b, tmp, n);
}

/* Percent-encode s for one path segment or query value. */
static void bput_enc(buf_t *b, const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-._~", c))
            bput(b, s, 1);
        else
            bprintf(b, "%%%02X", c);
    }
}

static const char *token;
static const char *idempotency_key;

/* Send one request; returns the status, *body the response body (malloc'ed). */
static int http(const char *method, const char *path, const char *json, char **body) {
    struct addrinfo hints = {0}, *ai;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai) die(1, "cannot resolve %s: %s", host, gai_strerror(gai));
    int fd = -1, cerr = ECONNREFUSED;
    for (struct addrinfo *p = ai; p; p = p->ai_next) {
        fd = socket(p->ai_family, p->ai_socktype, p->ai_protocol);
        if (fd < 0) continue;
        struct timeval tv = {timeout_s, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, p->ai_addr, p->ai_addrlen) == 0) break;
        cerr = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0 && (cerr == EINPROGRESS || cerr == EAGAIN))
        die(1, "cannot connect to the admin API at http://%s: no answer within %d s", hostport, timeout_s);
    if (fd < 0) die(1, "cannot connect to the admin API at http://%s: %s", hostport, strerror(cerr));
    buf_t req = {0};
    bprintf(&req, "%s %s%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer ", method, base, path, hostport);
    bput(&req, token, strlen(token));
    bprintf(&req, "\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: tollgatectl\r\n");
    if (json) bprintf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n", strlen(json));
    if (idempotency_key && strcmp(method, "GET") != 0) {
        for (const char *c = idempotency_key; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) die(2, "--idempotency-key must be printable");
        bprintf(&req, "Idempotency-Key: %s\r\n", idempotency_key);
    }
    bput(&req, "\r\n", 2);
    if (json) bput(&req, json, strlen(json));
    for (size_t off = 0; off < req.len;) {
        ssize_t w = write(fd, req.p + off, req.len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            die(1, "the admin API at http://%s took no request for %d s", hostport, timeout_s);
        if (w <= 0) die(1, "sending to the admin API: %s", strerror(errno));
        off += (size_t)w;
    }
    free(req.p);
    buf_t resp = {0};
    char tmp[16384];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            die(1, "no answer from the admin API at http://%s within %d s (TOLLGATE_ADMIN_TIMEOUT)%s", hostport,
                timeout_s, strcmp(method, "GET") ? ": the write may or may not have been done" : "");
        if (r < 0) die(1, "reading from the admin API: %s", strerror(errno));
        if (r == 0) break;
        bput(&resp, tmp, r);
    }
    close(fd);
    if (!resp.p) die(1, "the admin API closed the connection without answering");
    int status = 0;
    if (sscanf(resp.p, "HTTP/1.%*d %d", &status) != 1) die(1, "not an HTTP response from the admin API");
    char *hend = strstr(resp.p, "\r\n\r\n");
    if (!hend) die(1, "truncated response from the admin API");
    *hend = 0;
    char *b = hend + 4;
    size_t blen = resp.len - (size_t)(b - resp.p);
    int chunked = 0;
    long clen = -1;
    for (char *l = strstr(resp.p, "\r\n"); l; l = strstr(l, "\r\n")) {
        l += 2;
        if (!strncasecmp(l, "Transfer-Encoding:", 18) && strcasestr(l, "chunked")) chunked = 1;
        if (!strncasecmp(l, "Content-Length:", 15)) clen = strtol(l + 15, NULL, 10);
    }
    buf_t out = {0};
    if (chunked) {
        char *p = b, *end = b + blen;
        for (;;) {
            char *e;
            long n = strtol(p, &e, 16);
            char *crlf = strstr(p, "\r\n");
            if (!crlf || n < 0 || crlf + 2 + n > end) die(1, "bad chunked response from the admin API");
            if (n == 0) break;
            bput(&out, crlf + 2, n);
            p = crlf + 2 + n + 2;
        }
    } else {
        if (clen >= 0 && (size_t)clen < blen) blen = (size_t)clen;
        bput(&out, b, blen);
    }
    free(resp.p);
    *body = out.p ? out.p : strdup("");
    return status;
}

/* Every string of j made safe for a terminal, in place: a control character
 * (C0, DEL, C1) or a bidirectional override becomes '?' (one per byte), so a
 * name a customer chose (a key's, from the dashboard) cannot move the
 * operator's cursor, retitle the terminal, clear it or forge a table row
 * (before 2026-12-01 `key list` printed "\033]0;...\a\033[2J\r\n" as it came).
 * --json output is the server's body as sent, JSON-escaped by the server. */
static void terminal_safe(cJSON *j) {
    for (cJSON *x = j; x; x = x->next) {
        if (cJSON_IsString(x) && x->valuestring) {
            unsigned char *p = (unsigned char *)x->valuestring;
            for (; *p; p++) {
                if (*p < 0x20 || *p == 0x7f) *p = '?';
                else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) p[0] = p[1] = '?';
                else if (p[0] == 0xe2 && ((p[1] == 0x80 && p[2] >= 0xaa && p[2] <= 0xae) ||
                                          (p[1] == 0x81 && p[2] >= 0xa6 && p[2] <= 0xa9)))
                    p[0] = p[1] = p[2] = '?'; /* U+202A..U+202E, U+2066..U+2069 */
            }
        }
        if (x->child) terminal_safe(x->child);
    }
}

static void print_raw(const char *raw) {
    fputs(raw, stdout);
    if (!*raw || raw[strlen(raw) - 1] != '\n') fputc('\n', stdout);
}

/* An HTTP error: the server's message on stderr, exit 1.  A write that
 * failed with a 5xx other than database_busy (rolled back for sure) may have
 * been done (a deadline, a connection broken under it): say how to retry. */
static void die_http(const char *method, int st, char *body) {
    cJSON *j = cJSON_Parse(body);
    terminal_safe(j);
    cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message"), *c = cJSON_GetObjectItemCaseSensitive(e, "code");
    int unsure = st >= 500 && strcmp(method, "GET") && !(cJSON_IsString(c) && !strcmp(c->valuestring, "database_busy"));
    const char *hint = !unsure ? ""
                       : idempotency_key ? "; it may have been done: run it again with the same --idempotency-key "
                                           "to have it done once"
                                         : "; it may have been done: look before running it again "
                                           "(with --idempotency-key KEY a retry is done once)";
    if (cJSON_IsString(m)) die(1, "%s (HTTP %d)%s", m->valuestring, st, hint);
    die(1, "HTTP %d: %s%s", st, trim(body), hint);
}

/* Run a request; on an HTTP error print the server's message and exit 1.
 * With --json, print the body as the server sent it.  Returns the parsed
 * JSON (caller frees), for the text output. */
static cJSON *call(const char *method, const char *path, const char *json) {
    char *body;
    int st = http(method, path, json, &body);
    if (st >= 300) die_http(method, st, body);
    cJSON *j = cJSON_Parse(body);
    if (!j) die(1, "the admin API sent something that is not JSON: %.200s", body);
    if (json_out) print_raw(body);
    free(body);
    terminal_safe(j);
    return j;
}

/* ---- printing JSON fields --------------------------------------------------- */

static const char *str(cJSON *o, const char *k) {
    static char tmp[8][64];
    static int i;
    cJSON *f = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsString(f)) return f->valuestring;
    if (cJSON_IsNumber(f)) {
        i = (i + 1) % 8;
        snprintf(tmp[i], sizeof tmp[i], "%.0f", f->valuedouble);
        return tmp[i];
    }
    if (cJSON_IsBool(f)) return cJSON_IsTrue(f) ? "true" : "false";
    return "-";
}

/* "2026-11-28T09:55:34.756539+00:00" -> "2026-11-28 09:55:34" */
static const char *when(cJSON *o, const char *k) {
    static char tmp[4][32];
    static int i;
    const char *s = str(o, k);
    if (strlen(s) < 19 || s[10] != 'T') return s;
    i = (i + 1) % 4;
    snprintf(tmp[i], sizeof tmp[i], "%.10s %.8s", s, s + 11);
    return tmp[i];
}

/* ---- tables ------------------------------------------------------------------
 * A list command prints a heading and a row per object; one column list says
 * both, so they cannot drift apart. */

typedef struct {
    const char *head, *field;
    int width;   /* printf's: negative left-aligned; 0 the last, unpadded */
    int max;     /* at most this many characters shown (0: all) */
    char kind;   /* 's' as it is, 'w' a time (when), 'a' "active" flag as active/revoked,
                  * 'd' as it is or "-" when empty, 'm' a key's models */
    int gap;     /* spaces before the column (0: one; none before the first) */
} col_t;

static const char *models_text(cJSON *k);

static void table_cell(int first, const col_t *c, const char *v) {
    if (!first) printf("%*s", c->gap > 0 ? c->gap : 1, "");
    if (c->max > 0) printf("%*.*s", c->width, c->max, v);
    else if (c->width) printf("%*s", c->width, v);
    else printf("%s", v);
}

static void table_head(const col_t *c, int n) {
    for (int i = 0; i < n; i++) table_cell(i == 0, &c[i], c[i].head);
    printf("\n");
}

static void table_row(cJSON *o, const col_t *c, int n) {
    for (int i = 0; i < n; i++) {
        const char *v;
        switch (c[i].kind) {
        case 'w': v = when(o, c[i].field); break;
        case 'a': v = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, c[i].field)) ? "active" : "revoked"; break;
        case 'd': v = *str(o, c[i].field) ? str(o, c[i].field) : "-"; break;
        case 'm': v = models_text(o); break;
        default: v = str(o, c[i].field);
        }
        table_cell(i == 0, &c[i], v);
    }
    printf("\n");
}

/* The heading, then a row for each object of j's "data". */
static void table(cJSON *j, const col_t *c, int n) {
    table_head(c, n);
    cJSON *o;
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(j, "data")) table_row(o, c, n);
}

#define NCOLS(c) ((int)(sizeof c / sizeof *c))

/* ---- argument helpers ------------------------------------------------------- */

typedef struct {
    int argc;
    char **argv;
} args_t;

/* Value of --name VALUE or --name=VALUE (removed from args), or NULL. */
static const char *opt(args_t *a, const char *name) {
    size_t nl = strlen(name);
    for (int i = 0; i < a->argc; i++) {
        if (!strncmp(a->argv[i], name, nl) && a->argv[i][nl] == '=') {
            const char *v = a->argv[i] + nl + 1;
            memmove(a->argv + i, a->argv + i + 1, (a->argc - i - 1) * sizeof *a->argv);
            a->argc--;
            return v;
        }
        if (strcmp(a->argv[i], name) != 0) continue;
        if (i + 1 >= a->argc) die(2, "%s needs a value", name);
        const char *v = a->argv[i + 1];
        memmove(a->argv + i, a->argv + i + 2, (a->argc - i - 2) * sizeof *a->argv);
        a->argc -= 2;
        return v;
    }
    return NULL;
}

/* --to as the API takes it.  A date alone (2026-11-30, 20261130) is that
 * whole UTC day, as the dashboard's To and as people read "from 2026-11-01 to
 * 2026-11-30": the API's `to` is an instant the period does not include, so
 * the midnight after the day is sent.  A time or Unix seconds goes as it is
 * (an instant, not included); so does a date that is no date (2026-02-30),
 * for the API to refuse naming `to`. */
static const char *opt_to(args_t *a) {
    static char next[16];
    const char *t = opt(a, "--to");
    int y, m, d, n = 0;
    if (!t) return NULL;
    size_t len = strlen(t);
    if (len == 10 && t[4] == '-' && t[7] == '-' && strspn(t, "0123456789-") == 10)
        n = sscanf(t, "%4d-%2d-%2d", &y, &m, &d);
    else if (len == 8 && strspn(t, "0123456789") == 8)
        n = sscanf(t, "%4d%2d%2d", &y, &m, &d);
    if (n != 3) return t;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
    time_t day = timegm(&tm); /* normalizes: 2026-02-30 comes back as March */
    if (tm.tm_year != y - 1900 || tm.tm_mon != m - 1 || tm.tm_mday != d) return t;
    day += 86400;
    if (!gmtime_r(&day, &tm) || !strftime(next, sizeof next, "%Y-%m-%d", &tm)) return t;
    return next;
}

static const char *need(args_t *a, const char *name) {
    const char *v = opt(a, name);
    if (!v) die(2, "%s is required (see tollgatectl --help)", name);
    return v;
}

static void no_more(args_t *a) {
    if (a->argc > 0) die(2, "unexpected argument '%s' (see tollgatectl --help)", a->argv[0]);
}

/* The next argument that is not an option.  Commands take their options
 * (opt, need) before their positionals, so options may come before or after
 * them, as with getopt: what is left that starts with '-' is unknown. */
static const char *positional(args_t *a, const char *what) {
    if (a->argc == 0) die(2, "%s is required (see tollgatectl --help)", what);
    if (a->argv[0][0] == '-') die(2, "unexpected argument '%s' (%s expected; see tollgatectl --help)", a->argv[0], what);
    const char *v = a->argv[0];
    a->argv++;
    a->argc--;
    return v;
}

static void check_uint(const char *name, const char *v) {
    if (!*v || strspn(v, "0123456789") != strlen(v) || strlen(v) > 10 || strtoll(v, NULL, 10) > 2147483647)
        die(2, "%s must be a non-negative integer", name);
}

/* "?k=v&..." onto b: the n query parameters names[i]=vals[i] whose value is
 * not NULL, percent-encoded (nothing when every value is NULL). */
static void bput_query(buf_t *b, int n, const char *const names[], const char *const vals[]) {
    char sep = '?';
    for (int i = 0; i < n; i++) {
        if (!vals[i]) continue;
        bprintf(b, "%c%s=", sep, names[i]);
        bput_enc(b, vals[i]);
        sep = '&';
    }
}

/* "/admin/v1/customers/NAME[/SUB][?k=v&...]" (malloc'ed): bput_query's
 * parameters. */
static char *cust_path(const char *name, const char *sub, int n, const char *const names[],
                       const char *const vals[]) {
    buf_t b = {0};
    bput(&b, "/admin/v1/customers/", 20);
    bput_enc(&b, name);
    if (sub) bprintf(&b, "/%s", sub);
    bput_query(&b, n, names, vals);
    return b.p;
}

/* call() on /admin/v1/customers/NAME[/SUB]. */
static cJSON *cust_call(const char *method, const char *name, const char *sub, const char *json) {
    char *p = cust_path(name, sub, 0, NULL, NULL);
    cJSON *j = call(method, p, json);
    free(p);
    return j;
}

/* A JSON string literal for s. */
static char *jstr(const char *s) {
    cJSON *j = cJSON_CreateString(s);
    char *r = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!r) die(1, "out of memory");
    return r;
}

/* ---- commands -------------------------------------------------------------- */

static const col_t customer_cols[] = {
    {"ID", "id", -6, 0, 's', 0}, {"NAME", "name", -32, 0, 's', 0}, {"BALANCE_USD", "balance_usd", 20, 0, 's', 0},
    {"CREATED (UTC)", "created_at", 0, 0, 'w', 2},
};

static int cmd_customer(args_t *a) {
    const char *sub = positional(a, "customer subcommand (create, list, show, close, spending-limits, limits)");
    if (!strcmp(sub, "create")) {
        const char *credit = opt(a, "--credit-usd");
        const char *name = positional(a, "NAME");
        no_more(a);
        char *jn = jstr(name), body[1024];
        if (credit) {
            char *jc = jstr(credit);
            snprintf(body, sizeof body, "{\"name\":%s,\"credit_usd\":%s}", jn, jc);
            free(jc);
        } else {
            snprintf(body, sizeof body, "{\"name\":%s}", jn);
        }
        free(jn);
        cJSON *j = call("POST", "/admin/v1/customers", body);
        if (!json_out) /* USD rounded to 6 decimals, pico-USD exact */
            printf("created customer %s (id %s), balance %s USD (%s pico-USD)\n", str(j, "name"), str(j, "id"),
                   str(j, "balance_usd"), str(j, "balance_pico"));
        cJSON_Delete(j);
    } else if (!strcmp(sub, "list")) {
        no_more(a);
        cJSON *j = call("GET", "/admin/v1/customers", NULL);
        if (!json_out) table(j, customer_cols, NCOLS(customer_cols));
        cJSON_Delete(j);
    } else if (!strcmp(sub, "spending-limits")) {
        const char *d = opt(a, "--daily-usd"), *m = opt(a, "--monthly-usd");
        const char *name = positional(a, "NAME");
        no_more(a);
        if (!d && !m) die(2, "customer spending-limits: give --daily-usd and/or --monthly-usd (USD, or none)");
        buf_t b = {0};
        int n = 0;
        const char *names[] = {"daily_limit_usd", "monthly_limit_usd"}, *vals[] = {d, m};
        bput(&b, "{", 1);
        for (int i = 0; i < 2; i++) {
            if (!vals[i]) continue;
            char *j = strcmp(vals[i], "none") ? jstr(vals[i]) : strdup("null");
            bprintf(&b, "%s\"%s\":%s", n++ ? "," : "", names[i], j);
            free(j);
        }
        bput(&b, "}", 1);
        cJSON *j = cust_call("POST", name, "spending-limits", b.p);
        free(b.p);
        if (!json_out)
            printf("customer %s: daily spending limit %s USD, monthly %s USD\n", str(j, "customer"),
                   str(j, "daily_limit_usd"), str(j, "monthly_limit_usd"));
        cJSON_Delete(j);
    } else if (!strcmp(sub, "show")) {
        const char *name = positional(a, "NAME");
        no_more(a);
        cJSON *j = cust_call("GET", name, NULL, NULL);
        if (!json_out) {
            table_head(customer_cols, NCOLS(customer_cols));
            table_row(j, customer_cols, NCOLS(customer_cols));
        }
        cJSON_Delete(j);
    } else if (!strcmp(sub, "close")) {
        const char *name = positional(a, "NAME");
        no_more(a);
        cJSON *j = cust_call("POST", name, "close", "{}");
        if (!json_out)
            printf("closed customer %s at %s: %s keys and %s dashboard logins revoked, %s sessions ended\n",
                   str(j, "name"), when(j, "closed_at"), str(j, "keys_revoked"), str(j, "logins_revoked"),
                   str(j, "sessions_ended"));
        cJSON_Delete(j);
    } else if (!strcmp(sub, "limits")) {
        const char *names[] = {"rpm", "tpm", "concurrency"};
        const char *vals[] = {opt(a, "--rpm"), opt(a, "--tpm"), opt(a, "--concurrency")};
        const char *name = positional(a, "NAME");
        no_more(a);
        char body[256];
        int n = snprintf(body, sizeof body, "{");
        for (int i = 0; i < 3; i++) {
            if (!vals[i]) continue;
            check_uint(names[i], vals[i]);
            n += snprintf(body + n, sizeof body - n, "%s\"%s\":%s", n > 1 ? "," : "", names[i], vals[i]);
        }
        snprintf(body + n, sizeof body - n, "}");
        int set = vals[0] || vals[1] || vals[2];
        cJSON *j = cust_call(set ? "POST" : "GET", name, "limits", set ? body : NULL);
        if (!json_out)
            printf("customer %s: rpm %s, tpm %s, concurrency %s (0: none)\n", str(j, "customer"), str(j, "rpm"),
                   str(j, "tpm"), str(j, "concurrency"));
        cJSON_Delete(j);
    } else {
        die(2, "unknown command 'customer %s' (see tollgatectl --help)", sub);
    }
    return 0;
}

/* DURATION: a number of seconds, or parts like 90s, 15m, 24h, 7d, 2w, 1h30m.
 * Returns the seconds; dies (usage error) on anything else. */
static long long duration(const char *opt, const char *v) {
    long long total = 0;
    const char *p = v;
    if (!*p) die(2, "%s: empty duration", opt);
    while (*p) {
        if (*p < '0' || *p > '9') die(2, "%s: bad duration '%s' (e.g. 3600, 90s, 15m, 24h, 7d, 2w)", opt, v);
        long long n = 0;
        while (*p >= '0' && *p <= '9') {
            n = n * 10 + (*p++ - '0');
            if (n > 1000000000LL) die(2, "%s: duration '%s' is too long", opt, v);
        }
        long long unit = 1;
        switch (*p) {
        case 's': unit = 1, p++; break;
        case 'm': unit = 60, p++; break;
        case 'h': unit = 3600, p++; break;
        case 'd': unit = 86400, p++; break;
        case 'w': unit = 7 * 86400, p++; break;
        case 0: if (p != v + strspn(v, "0123456789")) die(2, "%s: bad duration '%s' (a unit per number)", opt, v);
                break;
        default: die(2, "%s: bad duration '%s' (units: s m h d w)", opt, v);
        }
        total += n * unit;
        if (total > 20LL * 366 * 86400) die(2, "%s: duration '%s' is over 20 years", opt, v);
    }
    return total;
}

/* Append the key fields shared by create / update / rotate that were given
 * as options: --name, --models, --rpm, --tpm, --concurrency, --expires-in,
 * --expires-at (and --no-expiry when allowed). */
static void key_fields(args_t *a, buf_t *b, int *n, int limits, int no_expiry_ok) {
    const char *name = limits ? opt(a, "--name") : NULL, *models = limits ? opt(a, "--models") : NULL;
    const char *in = opt(a, "--expires-in"), *at = opt(a, "--expires-at");
    int never = 0;
    for (int i = 0; no_expiry_ok && i < a->argc; i++)
        if (!strcmp(a->argv[i], "--no-expiry")) {
            never = 1;
            memmove(a->argv + i, a->argv + i + 1, (a->argc - i - 1) * sizeof *a->argv);
            a->argc--;
            break;
        }
    if ((in != NULL) + (at != NULL) + never > 1) die(2, "give one of --expires-in, --expires-at, --no-expiry");
    if (name) {
        char *j = jstr(name);
        bprintf(b, "%s\"name\":%s", (*n)++ ? "," : "", j);
        free(j);
    }
    if (models) {
        if (!strcmp(models, "all")) {
            bprintf(b, "%s\"models\":null", (*n)++ ? "," : "");
        } else {
            cJSON *arr = cJSON_CreateArray();
            char *copy = strdup(models), *save = NULL;
            if (!arr || !copy) die(1, "out of memory");
            for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
                if (*t) cJSON_AddItemToArray(arr, cJSON_CreateString(t));
            if (cJSON_GetArraySize(arr) == 0) die(2, "--models wants m1,m2,... (or all)");
            char *j = cJSON_PrintUnformatted(arr);
            bprintf(b, "%s\"models\":%s", (*n)++ ? "," : "", j);
            free(j);
            free(copy);
            cJSON_Delete(arr);
        }
    }
    if (limits) {
        const char *names[] = {"rpm", "tpm", "concurrency"};
        const char *vals[] = {opt(a, "--rpm"), opt(a, "--tpm"), opt(a, "--concurrency")};
        for (int i = 0; i < 3; i++) {
            if (!vals[i]) continue;
            check_uint(names[i], vals[i]);
            bprintf(b, "%s\"%s\":%s", (*n)++ ? "," : "", names[i], vals[i]);
        }
    }
    if (limits) { /* spending limits: USD, "none" clears */
        const char *names[] = {"daily_limit_usd", "monthly_limit_usd"};
        const char *vals[] = {opt(a, "--daily-limit-usd"), opt(a, "--monthly-limit-usd")};
        for (int i = 0; i < 2; i++) {
            if (!vals[i]) continue;
            if (!strcmp(vals[i], "none")) {
                bprintf(b, "%s\"%s\":null", (*n)++ ? "," : "", names[i]);
            } else {
                char *j = jstr(vals[i]);
                bprintf(b, "%s\"%s\":%s", (*n)++ ? "," : "", names[i], j);
                free(j);
            }
        }
    }
    if (in) bprintf(b, "%s\"expires_in_seconds\":%lld", (*n)++ ? "," : "", duration("--expires-in", in));
    if (at) {
        char *j = jstr(at);
        bprintf(b, "%s\"expires_at\":%s", (*n)++ ? "," : "", j);
        free(j);
    }
    if (never) bprintf(b, "%s\"expires_at\":null", (*n)++ ? "," : "");
}

static const char *key_id_arg(args_t *a) {
    const char *id = positional(a, "KEY_ID");
    if (!*id || strspn(id, "0123456789") != strlen(id) || strlen(id) > 18) die(2, "KEY_ID must be a number");
    return id;
}

/* "m1,m2" from a JSON array, or "all" for null. */
static const char *models_text(cJSON *k) {
    static char out[512];
    cJSON *m = cJSON_GetObjectItemCaseSensitive(k, "models"), *x;
    if (!cJSON_IsArray(m)) return "all";
    out[0] = 0;
    cJSON_ArrayForEach(x, m) {
        if (!cJSON_IsString(x)) continue;
        size_t l = strlen(out);
        snprintf(out + l, sizeof out - l, "%s%s", l ? "," : "", x->valuestring);
    }
    return out;
}

static void print_key_made(cJSON *j, const char *what) {
    printf("%s key id %s for customer %s (prefix %s, name \"%s\", models %s, expires %s;"
           " rpm %s, tpm %s, concurrency %s; 0 = no limit)\n",
           what, str(j, "id"), str(j, "customer"), str(j, "prefix"), str(j, "name"), models_text(j),
           when(j, "expires_at"), str(j, "rpm"), str(j, "tpm"), str(j, "concurrency"));
}

/* A create or rotate answered without the key: an idempotent replay (the
 * secret is shown only to the first request with that --idempotency-key). */
static void no_key(cJSON *j) {
    if (idempotency_key && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "id")))
        die(1, "key id %s (%s) was made by the first request with this --idempotency-key and its key was shown "
               "only to it; an idempotent replay does not show it again (key revoke %s, then a new key)",
            str(j, "id"), str(j, "prefix"), str(j, "id"));
    die(1, "the server did not return the key");
}

static int cmd_key(args_t *a) {
    const char *sub = positional(a, "key subcommand (create, list, update, rotate, revoke)");
    if (!strcmp(sub, "create")) {
        const char *cust = need(a, "--customer");
        buf_t b = {0};
        int n = 0;
        bput(&b, "{", 1);
        key_fields(a, &b, &n, 1, 0);
        bput(&b, "}", 1);
        no_more(a);
        cJSON *j = cust_call("POST", cust, "keys", b.p);
        free(b.p);
        cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "key");
        if (!cJSON_IsString(k)) no_key(j);
        if (!json_out) {
            print_key_made(j, "created");
            printf("the key is shown only now:\n");
            printf("%s\n", k->valuestring); /* with --json: inside the one JSON document printed */
        }
        cJSON_Delete(j);
    } else if (!strcmp(sub, "list")) {
        const char *cust = need(a, "--customer");
        no_more(a);
        cJSON *j = cust_call("GET", cust, "keys", NULL);
        static const col_t cols[] = {
            {"ID", "id", -6, 0, 's', 0},          {"PREFIX", "prefix", -15, 0, 's', 0},
            {"NAME", "name", -16, 16, 'd', 0},     {"STATE", "state", -8, 0, 's', 0},
            {"EXPIRES (UTC)", "expires_at", -19, 0, 'w', 0}, {"MODELS", "models", -20, 20, 'm', 0},
            {"RPM", "rpm", 8, 0, 's', 0},          {"TPM", "tpm", 10, 0, 's', 0},
            {"CONC", "concurrency", 6, 0, 's', 0}, {"LAST USED (UTC)", "last_used_at", -19, 0, 'w', 2},
            {"LAST IP", "last_used_ip", 0, 0, 's', 0},
        };
        if (!json_out) table(j, cols, NCOLS(cols));
        cJSON_Delete(j);
    } else if (!strcmp(sub, "update")) {
        buf_t b = {0};
        int n = 0;
        bput(&b, "{", 1);
        key_fields(a, &b, &n, 1, 1);
        bput(&b, "}", 1);
        const char *id = key_id_arg(a);
        no_more(a);
        if (n == 0) die(2, "key update: nothing to change (--name, --models, --rpm, --tpm, --concurrency, "
                           "--daily-limit-usd, --monthly-limit-usd, --expires-in, --expires-at, --no-expiry)");
        char p[64];
        snprintf(p, sizeof p, "/admin/v1/keys/%s", id);
        cJSON *j = call("PATCH", p, b.p);
        free(b.p);
        if (!json_out) print_key_made(j, "updated");
        cJSON_Delete(j);
    } else if (!strcmp(sub, "rotate")) {
        const char *grace = opt(a, "--grace");
        buf_t b = {0};
        int n = 0;
        bput(&b, "{", 1);
        if (grace) bprintf(&b, "\"grace_seconds\":%lld", duration("--grace", grace)), n++;
        key_fields(a, &b, &n, 0, 0);
        bput(&b, "}", 1);
        const char *id = key_id_arg(a);
        no_more(a);
        char p[64];
        snprintf(p, sizeof p, "/admin/v1/keys/%s/rotate", id);
        cJSON *j = call("POST", p, b.p);
        free(b.p);
        cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "key");
        if (!cJSON_IsString(k)) no_key(j);
        if (!json_out) {
            cJSON *old = cJSON_GetObjectItemCaseSensitive(j, "old");
            print_key_made(j, "rotated: new");
            printf("the old key %s (%s) works until %s UTC\n", str(old, "id"), str(old, "prefix"),
                   when(old, "expires_at"));
            printf("the new key is shown only now:\n");
            printf("%s\n", k->valuestring); /* with --json: inside the one JSON document printed */
        }
        cJSON_Delete(j);
    } else if (!strcmp(sub, "revoke")) {
        const char *id = key_id_arg(a);
        no_more(a);
        char p[64];
        snprintf(p, sizeof p, "/admin/v1/keys/%s/revoke", id);
        cJSON *j = call("POST", p, "{}");
        if (!json_out) printf("revoked key %s (%s) at %s\n", str(j, "id"), str(j, "prefix"), when(j, "revoked_at"));
        cJSON_Delete(j);
    } else {
        die(2, "unknown command 'key %s' (see tollgatectl --help)", sub);
    }
    return 0;
}

static int cmd_credit(args_t *a) {
    const char *sub = positional(a, "credit subcommand (add, adjust, refund, list)");
    if (!strcmp(sub, "list")) {
        const char *cust = need(a, "--customer");
        const char *from = opt(a, "--from"), *to = opt_to(a), *limit = opt(a, "--limit");
        no_more(a);
        if (limit) check_uint("--limit", limit);
        const char *names[] = {"from", "to", "limit"}, *vals[] = {from, to, limit};
        char *p = cust_path(cust, "ledger", 3, names, vals);
        cJSON *j = call("GET", p, NULL);
        free(p);
        static const col_t cols[] = {
            {"ID", "id", -8, 0, 's', 0},   {"CREATED (UTC)", "created_at", -19, 0, 'w', 0},
            {"KIND", "kind", -10, 0, 's', 0}, {"AMOUNT_USD", "amount_usd", 16, 0, 's', 0},
            {"REQUEST_ID", "request_id", -36, 0, 's', 2}, {"REASON", "reason", 0, 0, 's', 0},
        };
        if (!json_out) table(j, cols, NCOLS(cols));
        cJSON_Delete(j);
        return 0;
    }
    const char *path = !strcmp(sub, "add") ? "credits" : !strcmp(sub, "adjust") ? "adjustments"
                       : !strcmp(sub, "refund") ? "refunds" : NULL;
    if (!path) die(2, "unknown command 'credit %s' (see tollgatectl --help)", sub);
    const char *cust = need(a, "--customer"), *usd = need(a, "--usd");
    const char *reason = opt(a, "--reason"), *note = opt(a, "--note");
    no_more(a);
    if (!reason) reason = note;
    if (!reason && strcmp(sub, "add") != 0) die(2, "--reason is required for credit %s", sub);
    char *ju = jstr(usd), *jn = jstr(reason ? reason : "credit");
    buf_t body = {0};
    bprintf(&body, "{\"usd\":%s,\"reason\":", ju);
    bput(&body, jn, strlen(jn));
    bput(&body, "}", 1);
    free(ju);
    free(jn);
    cJSON *j = cust_call("POST", cust, path, body.p);
    free(body.p);
    if (!json_out)
        printf("%s %s USD (%s pico-USD) for %s (ledger %s, %s); balance %s USD (%s pico-USD)\n",
               !strcmp(sub, "add") ? "added" : !strcmp(sub, "adjust") ? "adjusted by" : "refunded",
               str(j, "amount_usd"), str(j, "amount_pico"), str(j, "customer"), str(j, "ledger_id"), str(j, "reason"),
               str(j, "balance_usd"), str(j, "balance_pico"));
    cJSON_Delete(j);
    return 0;
}

/* A collection of named things (admin tokens, dashboard logins) that are
 * listed and revoked by name. */
typedef struct {
    const char *cmd, *path, *what, *field, *arg;
    const col_t *cols;
    int ncols;
} named_t;

/* `<cmd> list` and `<cmd> revoke NAME`; anything else is a usage error. */
static void named_list_revoke(args_t *a, const char *sub, const named_t *n) {
    if (!strcmp(sub, "list")) {
        no_more(a);
        cJSON *j = call("GET", n->path, NULL);
        if (!json_out) table(j, n->cols, n->ncols);
        cJSON_Delete(j);
    } else if (!strcmp(sub, "revoke")) {
        const char *name = positional(a, n->arg);
        no_more(a);
        buf_t p = {0};
        bput(&p, n->path, strlen(n->path));
        bput(&p, "/", 1);
        bput_enc(&p, name);
        bput(&p, "/revoke", 7);
        cJSON *j = call("POST", p.p, "{}");
        free(p.p);
        if (!json_out) printf("revoked %s %s at %s\n", n->what, str(j, n->field), when(j, "revoked_at"));
        cJSON_Delete(j);
    } else {
        die(2, "unknown command '%s %s' (see tollgatectl --help)", n->cmd, sub);
    }
}

static int cmd_token(args_t *a) {
    const char *sub = positional(a, "token subcommand (create, list, revoke)");
    if (!strcmp(sub, "create")) {
        const char *role = opt(a, "--role"), *name = positional(a, "NAME");
        no_more(a);
        if (role && strcmp(role, "admin") && strcmp(role, "readonly")) die(2, "--role must be admin or readonly");
        char *jn = jstr(name), body[512];
        snprintf(body, sizeof body, "{\"name\":%s,\"role\":\"%s\"}", jn, role ? role : "admin");
        free(jn);
        cJSON *j = call("POST", "/admin/v1/tokens", body);
        if (!json_out) {
            cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "token");
            printf("created admin token %s (role %s); it is shown only now:\n", str(j, "name"), str(j, "role"));
            printf("%s\n", cJSON_IsString(t) ? t->valuestring : "(not shown again: an idempotent replay)");
        }
        cJSON_Delete(j);
    } else {
        static const col_t cols[] = {
            {"NAME", "name", -32, 0, 's', 0},   {"ROLE", "role", -9, 0, 's', 0},
            {"PREFIX", "prefix", -13, 0, 's', 0}, {"STATE", "active", -8, 0, 'a', 0},
            {"CREATED (UTC)", "created_at", -19, 0, 'w', 0}, {"CREATED BY", "created_by", 0, 0, 's', 0},
        };
        static const named_t tokens = {"token", "/admin/v1/tokens", "admin token", "name", "NAME", cols, NCOLS(cols)};
        named_list_revoke(a, sub, &tokens);
    }
    return 0;
}

static int cmd_user(args_t *a) {
    const char *sub = positional(a, "user subcommand (create, list, revoke)");
    if (!strcmp(sub, "create")) {
        int op = 0;
        for (int i = 0; i < a->argc; i++)
            if (!strcmp(a->argv[i], "--operator")) {
                op = 1;
                memmove(a->argv + i, a->argv + i + 1, (size_t)(a->argc - i - 1) * sizeof *a->argv);
                a->argc--;
                break;
            }
        const char *cust = opt(a, "--customer"), *login = positional(a, "LOGIN");
        no_more(a);
        if (!op == !cust) die(2, "user create LOGIN needs --customer NAME or --operator (one of them)");
        char *jl = jstr(login), *jc = cust ? jstr(cust) : NULL, body[512];
        if (cust) snprintf(body, sizeof body, "{\"login\":%s,\"customer\":%s}", jl, jc);
        else snprintf(body, sizeof body, "{\"login\":%s,\"role\":\"operator\"}", jl);
        free(jl);
        free(jc);
        cJSON *j = call("POST", "/admin/v1/dashboard-users", body);
        if (!json_out) {
            cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "password");
            printf("created dashboard login %s (%s%s%s); sign in at https://<gateway>/dashboard/ with the password "
                   "below, shown only now:\n",
                   str(j, "login"), str(j, "role"), cust ? " of " : "", cust ? str(j, "customer") : "");
            printf("%s\n", cJSON_IsString(p) ? p->valuestring : "(not shown again: an idempotent replay)");
        }
        cJSON_Delete(j);
    } else {
        static const col_t cols[] = {
            {"LOGIN", "login", -32, 0, 's', 0}, {"ROLE", "role", -9, 0, 's', 0},
            {"CUSTOMER", "customer", -24, 0, 's', 0}, {"STATE", "active", -8, 0, 'a', 0},
            {"CREATED (UTC)", "created_at", 0, 0, 'w', 0},
        };
        static const named_t users = {"user", "/admin/v1/dashboard-users", "dashboard login", "login", "LOGIN", cols,
                                      NCOLS(cols)};
        named_list_revoke(a, sub, &users);
    }
    return 0;
}

static int cmd_balance(args_t *a) {
    const char *cust = need(a, "--customer");
    no_more(a);
    cJSON *j = cust_call("GET", cust, "balance", NULL);
    if (!json_out) printf("%s: %s USD (%s pico-USD)\n", str(j, "customer"), str(j, "balance_usd"), str(j, "balance_pico"));
    cJSON_Delete(j);
    return 0;
}

static int cmd_usage(args_t *a) {
    const char *cust = need(a, "--customer");
    const char *from = opt(a, "--from"), *to = opt_to(a), *limit = opt(a, "--limit");
    no_more(a);
    if (limit) check_uint("--limit", limit);
    const char *names[] = {"from", "to", "limit"}, *vals[] = {from, to, limit};
    char *p = cust_path(cust, "usage", 3, names, vals);
    cJSON *j = call("GET", p, NULL);
    free(p);
    if (!json_out) {
        static const col_t cols[] = {
            {"REQUEST_ID", "request_id", -36, 0, 's', 0}, {"RECEIVED (UTC)", "received_at", -19, 0, 'w', 0},
            {"MODEL", "model", -20, 0, 's', 0},          {"MISS", "prompt_cache_miss_tokens", 8, 0, 's', 0},
            {"HIT", "prompt_cache_hit_tokens", 8, 0, 's', 0}, {"OUTPUT", "completion_tokens", 8, 0, 's', 0},
            {"STATUS", "http_status", 6, 0, 's', 0},     {"COST_USD", "cost_usd", 14, 0, 's', 0},
        };
        table(j, cols, NCOLS(cols));
        cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "totals");
        printf("total: %s requests, %s prompt tokens (%s cache hit, %s cache miss), %s completion tokens"
               " (%s reasoning), %s USD (%s pico-USD)\n",
               str(t, "requests"), str(t, "prompt_tokens"), str(t, "prompt_cache_hit_tokens"),
               str(t, "prompt_cache_miss_tokens"), str(t, "completion_tokens"), str(t, "reasoning_tokens"),
               str(t, "cost_usd"), str(t, "cost_pico"));
        int shown = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "data"));
        if (shown < atoll(str(t, "requests")))
            printf("(rows: the newest %d of %s; the total is of them all; --limit N shows more)\n", shown,
                   str(t, "requests"));
    }
    cJSON_Delete(j);
    return 0;
}

/* Like call(), the body as text (a CSV document); exits on an HTTP error. */
static char *call_text(const char *method, const char *path, const char *json) {
    char *body;
    int st = http(method, path, json, &body);
    if (st >= 300) die_http(method, st, body);
    return body;
}

static int opt_flag(args_t *a, const char *name) {
    for (int i = 0; i < a->argc; i++)
        if (!strcmp(a->argv[i], name)) {
            memmove(a->argv + i, a->argv + i + 1, (a->argc - i - 1) * sizeof *a->argv);
            a->argc--;
            return 1;
        }
    return 0;
}

static void print_invoice(cJSON *j) {
    printf("INVOICE %s  customer %s  month %s (UTC)  %s  currency USD\n", str(j, "id"), str(j, "customer"),
           str(j, "month"), str(j, "status"));
    if (!strcmp(str(j, "status"), "finalized"))
        printf("finalized %s by %s\n", when(j, "finalized_at"), str(j, "finalized_by"));
    printf("\nopening balance %40s USD\n", str(j, "opening_balance_usd"));
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(j, "credits")) {
        printf("  %-10s %-19s %26s USD  %s\n", str(c, "kind"), when(c, "created_at"), str(c, "amount_usd"),
               str(c, "reason"));
    }
    printf("\n%-4s %-7s %-24s %-17s %14s %16s %16s\n", "LINE", "PERIOD", "MODEL", "TOKEN CLASS", "QUANTITY",
           "PRICE/1M (uUSD)", "AMOUNT_USD");
    cJSON *l;
    cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(j, "lines")) {
        int late = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(l, "late"));
        printf("%-4s %-7s %-24s %-17s %14s %16s %16s%s\n", str(l, "line"), str(l, "period"), str(l, "model"),
               str(l, "token_class"), str(l, "quantity"), str(l, "unit_price_micro_usd_per_1m"), str(l, "amount_usd"),
               late ? "  (late: usage of an earlier period)" : "");
    }
    printf("\nrequests: %s (%s late)\nusage:           %s USD (%s pico-USD)\nclosing balance: %s USD (%s pico-USD)\n",
           str(j, "requests"), str(j, "late_requests"), str(j, "usage_usd"), str(j, "usage_pico"),
           str(j, "closing_balance_usd"), str(j, "closing_balance_pico"));
}

static int cmd_invoice(args_t *a) {
    if (a->argc && !strcmp(a->argv[0], "finalize")) {
        a->argv++, a->argc--;
        const char *month = need(a, "--month"), *cust = opt(a, "--customer");
        no_more(a);
        char *jm = jstr(month), *jc = cust ? jstr(cust) : strdup("null"), body[512];
        snprintf(body, sizeof body, "{\"month\":%s,\"customer\":%s}", jm, jc);
        free(jm);
        free(jc);
        cJSON *j = call("POST", "/admin/v1/invoices/finalize", body);
        if (!json_out) {
            printf("month %s: %s invoices finalized now, %s before\n", str(j, "month"), str(j, "finalized"),
                   str(j, "already_finalized"));
            cJSON *i;
            cJSON_ArrayForEach(i, cJSON_GetObjectItemCaseSensitive(j, "invoices"))
                printf("  invoice %s  %s\n", str(i, "invoice_id"), str(i, "customer"));
        }
        cJSON_Delete(j);
        return 0;
    }
    if (a->argc && !strcmp(a->argv[0], "list")) {
        a->argv++, a->argc--;
        const char *month = need(a, "--month");
        no_more(a);
        buf_t p = {0};
        bput(&p, "/admin/v1/invoices?month=", 25);
        bput_enc(&p, month);
        cJSON *j = call("GET", p.p, NULL);
        free(p.p);
        static const col_t cols[] = {
            {"ID", "id", -8, 0, 's', 0},       {"CUSTOMER", "customer", -32, 0, 's', 0},
            {"OPENING_PICO", "opening_balance_pico", 16, 0, 's', 0}, {"USAGE_USD", "usage_usd", 16, 0, 's', 0},
            {"CLOSING_PICO", "closing_balance_pico", 16, 0, 's', 0}, {"REQUESTS", "requests", 9, 0, 's', 0},
        };
        if (!json_out) table(j, cols, NCOLS(cols));
        cJSON_Delete(j);
        return 0;
    }
    const char *cust = need(a, "--customer"), *month = need(a, "--month");
    int csv = opt_flag(a, "--csv");
    no_more(a);
    const char *names[] = {"month", "format"}, *vals[] = {month, csv ? "csv" : NULL};
    char *p = cust_path(cust, "invoice", 2, names, vals);
    if (csv || json_out) { /* the document exactly as the server keeps it */
        char *body = call_text("GET", p, NULL);
        fputs(body, stdout);
        free(body);
        free(p);
        return 0;
    }
    cJSON *j = call("GET", p, NULL);
    free(p);
    print_invoice(j);
    cJSON_Delete(j);
    return 0;
}

static int cmd_reconcile(args_t *a) {
    const char *from = opt(a, "--from"), *to = opt_to(a);
    no_more(a);
    buf_t p = {0};
    bput(&p, "/admin/v1/reconcile", 19);
    const char *names[] = {"from", "to"}, *vals[] = {from, to};
    char sep = '?';
    for (int i = 0; i < 2; i++) {
        if (!vals[i]) continue;
        bprintf(&p, "%c%s=", sep, names[i]);
        bput_enc(&p, vals[i]);
        sep = '&';
    }
    cJSON *j = call("GET", p.p, NULL);
    free(p.p);
    cJSON *ok = cJSON_GetObjectItemCaseSensitive(j, "ok");
    cJSON *diffs = cJSON_GetObjectItemCaseSensitive(j, "differences"), *d;
    cJSON *chk = cJSON_GetObjectItemCaseSensitive(j, "checked");
    if (!json_out) {
        printf("checked %s usage rows, %s customers, %s invoices%s, from %s to %s\n", str(chk, "usage_rows"),
               str(chk, "customers"), str(chk, "invoices"),
               cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(chk, "rollups")) ? ", hourly rollups" : "",
               str(j, "from"), str(j, "to"));
        cJSON_ArrayForEach(d, diffs) {
            printf("DIFFERENCE %s: %s: expected %s, found %s\n", str(d, "check"), str(d, "subject"),
                   str(d, "expected"), str(d, "actual"));
        }
        printf("%s\n", cJSON_IsTrue(ok) ? "reconcile: everything agrees" : "reconcile: differences found");
    }
    int rc = cJSON_IsTrue(ok) ? 0 : 3;
    if (rc) { /* the exit status says it, stderr too (stdout holds the report or the JSON) */
        fflush(stdout);
        fprintf(stderr, "tollgatectl: reconcile: %d difference%s found:", cJSON_GetArraySize(diffs),
                cJSON_GetArraySize(diffs) == 1 ? "" : "s");
        cJSON_ArrayForEach(d, diffs) fprintf(stderr, "\n  %s: %s", str(d, "check"), str(d, "subject"));
        fputc('\n', stderr);
    }
    cJSON_Delete(j);
    return rc;
}

static int cmd_price(args_t *a) {
    const char *sub = positional(a, "price subcommand (set, list, override, overrides)");
    if (!strcmp(sub, "set")) {
        const char *model = need(a, "--model"), *miss = need(a, "--input-miss"), *hit = need(a, "--input-hit");
        const char *out = need(a, "--output"), *eff = opt(a, "--effective-from"), *band = opt(a, "--band");
        no_more(a);
        const char *names[] = {"--input-miss", "--input-hit", "--output"}, *vals[] = {miss, hit, out};
        for (int i = 0; i < 3; i++)
            if (!*vals[i] || strspn(vals[i], "0123456789") != strlen(vals[i]))
                die(2, "%s must be integer micro-USD per 1M tokens", names[i]);
        char *jm = jstr(model), *je = eff ? jstr(eff) : strdup("null"), *jb = band ? jstr(band) : strdup("null");
        char body[2048];
        snprintf(body, sizeof body,
                 "{\"model\":%s,\"input_cache_miss\":\"%s\",\"input_cache_hit\":\"%s\",\"output\":\"%s\","
                 "\"effective_from\":%s,\"band\":%s}",
                 jm, miss, hit, out, je, jb);
        free(jm);
        free(je);
        free(jb);
        cJSON *j = call("POST", "/admin/v1/prices", body);
        if (!json_out)
            printf("price of %s from %s%s%s: input cache miss %s, input cache hit %s, output %s micro-USD per 1M "
                   "tokens\n",
                   str(j, "model"), when(j, "effective_from"), band ? ", UTC band " : "", band ? str(j, "band") : "",
                   str(j, "input_cache_miss"), str(j, "input_cache_hit"), str(j, "output"));
        cJSON_Delete(j);
    } else if (!strcmp(sub, "list")) {
        int history = 0;
        if (a->argc && !strcmp(a->argv[0], "--history")) history = 1, a->argv++, a->argc--;
        no_more(a);
        cJSON *j = call("GET", history ? "/admin/v1/prices?history=1" : "/admin/v1/prices", NULL);
        if (!json_out) {
            printf("%-32s %16s %16s %16s  %-11s %-6s %s\n", "MODEL", "INPUT_MISS/1M", "INPUT_HIT/1M", "OUTPUT/1M",
                   "UTC_BAND", "NOW", "EFFECTIVE FROM (UTC)");
            cJSON *p;
            cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(j, "data")) {
                const char *b = str(p, "band");
                printf("%-32s %16s %16s %16s  %-11s %-6s %s\n", str(p, "model"), str(p, "input_cache_miss"),
                       str(p, "input_cache_hit"), str(p, "output"), strcmp(b, "-") ? b : "all day",
                       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "active_now")) ? "*" : "",
                       when(p, "effective_from"));
            }
            printf("(prices in micro-USD per 1M tokens)\n");
        }
        cJSON_Delete(j);
    } else if (!strcmp(sub, "override")) {
        const char *cust = need(a, "--customer"), *model = need(a, "--model"), *pct = opt(a, "--percent");
        const char *miss = opt(a, "--input-miss"), *hit = opt(a, "--input-hit"), *out = opt(a, "--output");
        const char *eff = opt(a, "--effective-from");
        int base = 0;
        for (int i = 0; i < a->argc; i++)
            if (!strcmp(a->argv[i], "--base")) {
                base = 1;
                memmove(a->argv + i, a->argv + i + 1, (a->argc - i - 1) * sizeof *a->argv);
                a->argc--;
                break;
            }
        no_more(a);
        int prices = miss || hit || out;
        if (prices + !!pct + base != 1)
            die(2, "give one of --percent P, --input-miss/--input-hit/--output, or --base");
        if (prices && !(miss && hit && out)) die(2, "explicit prices need --input-miss, --input-hit and --output");
        char *jm = jstr(model), *je = eff ? jstr(eff) : strdup("null");
        buf_t b = {0};
        bprintf(&b, "{\"model\":%s,\"effective_from\":%s,", jm, je);
        if (pct) {
            char *jp = jstr(pct);
            bprintf(&b, "\"percent\":%s}", jp);
            free(jp);
        } else if (base) {
            bprintf(&b, "\"base\":true}");
        } else {
            char *j1 = jstr(miss), *j2 = jstr(hit), *j3 = jstr(out);
            bprintf(&b, "\"input_cache_miss\":%s,\"input_cache_hit\":%s,\"output\":%s}", j1, j2, j3);
            free(j1);
            free(j2);
            free(j3);
        }
        free(jm);
        free(je);
        cJSON *j = cust_call("POST", cust, "prices", b.p);
        free(b.p);
        if (!json_out) {
            const char *k = str(j, "kind");
            printf("override %s for %s, model %s, from %s: ", str(j, "id"), str(j, "customer"), str(j, "model"),
                   when(j, "effective_from"));
            if (!strcmp(k, "percent")) printf("%s%% of the base price\n", str(j, "percent"));
            else if (!strcmp(k, "price"))
                printf("input cache miss %s, input cache hit %s, output %s micro-USD per 1M tokens\n",
                       str(j, "input_cache_miss"), str(j, "input_cache_hit"), str(j, "output"));
            else printf("the base price book\n");
        }
        cJSON_Delete(j);
    } else if (!strcmp(sub, "overrides")) {
        const char *cust = need(a, "--customer");
        int history = 0;
        if (a->argc && !strcmp(a->argv[0], "--history")) history = 1, a->argv++, a->argc--;
        no_more(a);
        const char *names[] = {"history"}, *vals[] = {history ? "1" : NULL};
        char *p = cust_path(cust, "prices", 1, names, vals);
        cJSON *j = call("GET", p, NULL);
        free(p);
        if (!json_out) {
            printf("%-8s %-32s %-8s %9s %16s %16s %16s  %s\n", "ID", "MODEL", "KIND", "PERCENT", "INPUT_MISS/1M",
                   "INPUT_HIT/1M", "OUTPUT/1M", "EFFECTIVE FROM (UTC)");
            cJSON *o;
            cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(j, "data")) {
                cJSON *now = cJSON_GetObjectItemCaseSensitive(o, "now");
                int explicit_ = !strcmp(str(o, "kind"), "price");
                cJSON *src = explicit_ || !cJSON_IsObject(now) ? o : now; /* the price paid now */
                printf("%-8s %-32s %-8s %9s %16s %16s %16s  %s\n", str(o, "id"), str(o, "model"), str(o, "kind"),
                       str(o, "percent"), str(src, "input_cache_miss"), str(src, "input_cache_hit"),
                       str(src, "output"), when(o, "effective_from"));
            }
            printf("(prices in micro-USD per 1M tokens: what the customer pays now)\n");
        }
        cJSON_Delete(j);
    } else {
        die(2, "unknown command 'price %s' (see tollgatectl --help)", sub);
    }
    return 0;
}

/* "/admin/v1/PATH?k=v&..." (malloc'ed) with the n parameters whose value is not NULL. */
static char *query_path(const char *path, int n, const char *const names[], const char *const vals[]) {
    buf_t b = {0};
    bprintf(&b, "%s", path);
    bput_query(&b, n, names, vals);
    return b.p;
}

static void print_sums_head(const char *first) {
    printf("%-20s %-8s %-20s %9s %12s %12s %12s %10s %18s %6s %6s %6s %6s\n", first, "KEY", "MODEL", "REQUESTS",
           "HIT", "MISS", "OUTPUT", "REASONING", "COST_USD", "5XX", "402", "429", "R5XX");
}

static void print_sums(const char *first, cJSON *r) {
    printf("%-20s %-8s %-20s %9s %12s %12s %12s %10s %18s %6s %6s %6s %6s\n", first, str(r, "key_id"),
           str(r, "model"), str(r, "requests"), str(r, "prompt_cache_hit_tokens"), str(r, "prompt_cache_miss_tokens"),
           str(r, "completion_tokens"), str(r, "reasoning_tokens"), str(r, "cost_usd"), str(r, "failed_5xx"),
           str(r, "refused_402"), str(r, "refused_429"), str(r, "refused_5xx"));
}

static int cmd_report(args_t *a) {
    const char *sub = positional(a, "report subcommand (usage, top, balance)");
    if (!strcmp(sub, "usage") || !strcmp(sub, "balance")) {
        const char *cust = need(a, "--customer"), *by = opt(a, "--by"), *from = opt(a, "--from"), *to = opt_to(a);
        const char *split = !strcmp(sub, "usage") ? opt(a, "--split") : NULL;
        no_more(a);
        if (by && strcmp(by, "hour") && strcmp(by, "day")) die(2, "--by must be hour or day");
        const char *names[] = {"customer", "by", "from", "to", "split"}, *vals[] = {cust, by, from, to, split};
        char *p = query_path(!strcmp(sub, "usage") ? "/admin/v1/reports/usage" : "/admin/v1/reports/balance", 5,
                             names, vals);
        cJSON *j = call("GET", p, NULL);
        free(p);
        cJSON *r;
        if (json_out) {
        } else if (!strcmp(sub, "usage")) {
            printf("usage of %s by %s (UTC), from %s to %s\n", str(j, "customer"), str(j, "by"), when(j, "from"),
                   when(j, "to"));
            print_sums_head("PERIOD (UTC)");
            cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(j, "data")) print_sums(when(r, "period"), r);
            print_sums("total", cJSON_GetObjectItemCaseSensitive(j, "totals"));
            printf("(cost in USD rounded to 6 decimals; exact pico-USD with --json)\n");
        } else {
            printf("balance of %s by %s (UTC), from %s to %s\nopening balance: %s USD\n", str(j, "customer"),
                   str(j, "by"), when(j, "from"), when(j, "to"), str(j, "opening_balance_usd"));
            static const col_t cols[] = {
                {"PERIOD (UTC)", "period", -20, 0, 'w', 0}, {"CREDITS_PICO", "credits_pico", 24, 0, 's', 0},
                {"DEBITS_PICO", "debits_pico", 24, 0, 's', 0}, {"BALANCE_USD", "balance_usd", 20, 0, 's', 0},
            };
            table(j, cols, NCOLS(cols));
            printf("balance now: %s USD\n", str(j, "balance_usd"));
        }
        cJSON_Delete(j);
    } else if (!strcmp(sub, "top")) {
        const char *from = opt(a, "--from"), *to = opt_to(a), *limit = opt(a, "--limit");
        no_more(a);
        if (limit) check_uint("--limit", limit);
        const char *names[] = {"from", "to", "limit"}, *vals[] = {from, to, limit};
        char *p = query_path("/admin/v1/reports/top", 3, names, vals);
        cJSON *j = call("GET", p, NULL);
        free(p);
        if (!json_out) {
            printf("top customers by spend from %s to %s (%s customers, %s USD in all)\n", when(j, "from"),
                   when(j, "to"), str(j, "customers"), str(j, "total_cost_usd"));
            static const col_t cols[] = {
                {"RANK", "rank", -5, 0, 's', 0},      {"CUSTOMER", "customer", -32, 0, 's', 0},
                {"REQUESTS", "requests", 9, 0, 's', 0}, {"HIT", "prompt_cache_hit_tokens", 14, 0, 's', 0},
                {"MISS", "prompt_cache_miss_tokens", 14, 0, 's', 0}, {"OUTPUT", "completion_tokens", 14, 0, 's', 0},
                {"COST_USD", "cost_usd", 18, 0, 's', 0},
            };
            table(j, cols, NCOLS(cols));
        }
        cJSON_Delete(j);
    } else {
        die(2, "unknown command 'report %s' (see tollgatectl --help)", sub);
    }
    return 0;
}

/* ---- receipt verify ----------------------------------------------------------- */

static const char *argv0;

/* The public key: FILE, else var/receipt.pub here, else ../var/receipt.pub
 * next to the binary.  Dies when none can be read. */
static EVP_PKEY *receipt_pubkey(const char *file) {
    char path[4200];
    const char *tries[2] = {file ? file : "var/receipt.pub", NULL};
    char exe[4096];
    ssize_t n = file ? -1 : readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *sl = strrchr(exe, '/');
        if (sl) {
            *sl = 0;
            snprintf(path, sizeof path, "%s/../var/receipt.pub", exe);
            tries[1] = path;
        }
    }
    for (int i = 0; i < 2 && tries[i]; i++) {
        FILE *f = fopen(tries[i], "r");
        if (!f) continue;
        EVP_PKEY *k = PEM_read_PUBKEY(f, NULL, NULL, NULL);
        fclose(f);
        if (!k || EVP_PKEY_id(k) != EVP_PKEY_ED25519) die(1, "%s: not an Ed25519 public key in PEM", tries[i]);
        return k;
    }
    die(1, "no receipt public key: give --pubkey FILE (the operator publishes it at GET /v1/receipt-key "
           "and as var/receipt.pub)");
}

/* A decimal string of a JSON member that is a string or an integer number. */
static const char *num(cJSON *o, const char *k) { return str(o, k); }

static int cmd_receipt(args_t *a) {
    const char *sub = positional(a, "receipt subcommand (verify)");
    if (strcmp(sub, "verify")) die(2, "unknown command 'receipt %s' (see tollgatectl --help)", sub);
    const char *pubfile = opt(a, "--pubkey");
    int offline = 0;
    for (int i = 0; i < a->argc; i++)
        if (!strcmp(a->argv[i], "--offline")) {
            offline = 1;
            memmove(a->argv + i, a->argv + i + 1, (a->argc - i - 1) * sizeof *a->argv);
            a->argc--;
            break;
        }
    if (a->argc == 0) die(2, "RECEIPT is required (see tollgatectl --help)");
    const char *rc = a->argv[0];
    a->argv++;
    a->argc--;
    no_more(a);
    char *in = NULL;
    if (!strcmp(rc, "-")) {
        if (!(in = tg_file_read("/dev/stdin", 1 << 20, NULL))) die(1, "cannot read the receipt from stdin");
        rc = trim(in);
    }
    /* tgr1.<payload>.<signature> */
    const char *dot1 = strchr(rc, '.'), *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (strncmp(rc, "tgr1.", 5) || dot1 != rc + 4 || !dot2 || strchr(dot2 + 1, '.'))
        die(1, "not a tollgate receipt (want tgr1.<payload>.<signature>)");
    size_t plen = (size_t)(dot2 - dot1 - 1), slen = strlen(dot2 + 1);
    static uint8_t *payload; /* static: reachable when die() exits */
    uint8_t sig[64 + 3];
    payload = malloc(plen + 1);
    if (!payload) die(1, "out of memory");
    long pn = tg_b64url_decode(dot1 + 1, plen, payload);
    if (pn < 0 || slen > TG_B64URL_LEN(64) || tg_b64url_decode(dot2 + 1, slen, sig) != 64)
        die(1, "receipt: malformed (bad base64url)");
    payload[pn] = 0;
    static cJSON *j; /* static: still reachable when die() exits (LeakSanitizer) */
    j = cJSON_ParseWithLength((const char *)payload, (size_t)pn);
    if (!j || !cJSON_IsObject(j)) die(1, "receipt: malformed (its payload is not JSON)");
    terminal_safe(j); /* what is printed of it (its kid even when the signature is wrong) came from anyone */
    /* the signature, over "tgr1.<payload>" exactly as received */
    EVP_PKEY *key = receipt_pubkey(pubfile);
    uint8_t raw[32], dig[32];
    size_t rawlen = sizeof raw;
    char kid[17];
    if (EVP_PKEY_get_raw_public_key(key, raw, &rawlen) != 1 || rawlen != 32) die(1, "cannot read the public key");
    SHA256(raw, sizeof raw, dig);
    for (int i = 0; i < 8; i++) snprintf(kid + 2 * i, 3, "%02x", dig[i]);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestVerify(ctx, sig, 64, (const uint8_t *)rc, (size_t)(dot2 - rc)) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    const char *rkid = str(j, "kid");
    if (!ok) {
        if (strcmp(rkid, kid))
            die(1, "receipt: INVALID signature (signed by key %s, this public key is %s)", rkid, kid);
        die(1, "receipt: INVALID signature (key %s): it was altered or not issued by this operator", kid);
    }
    if (strcmp(rkid, kid)) die(1, "receipt: INVALID: its kid %s does not name the key that signed it (%s)", rkid, kid);
    const char *rid = str(j, "request_id");
    cJSON *price = cJSON_GetObjectItemCaseSensitive(j, "price");
    if (!json_out) {
        printf("signature: valid (Ed25519, key %s)\n", kid);
        printf("request %s: customer %s, key %s, model %s, status %s, received %s\n", rid, num(j, "customer_id"),
               num(j, "key_id"), str(j, "model"), num(j, "http_status"), str(j, "received_at"));
        printf("tokens: prompt %s (cache hit %s, cache miss %s), completion %s (reasoning %s)\n",
               num(j, "prompt_tokens"), num(j, "prompt_cache_hit_tokens"), num(j, "prompt_cache_miss_tokens"),
               num(j, "completion_tokens"), num(j, "reasoning_tokens"));
        printf("price (micro-USD per 1M tokens): cache miss %s, cache hit %s, output %s; version %s\n",
               str(price, "input_cache_miss"), str(price, "input_cache_hit"), str(price, "output"),
               str(j, "price_version"));
        printf("cost: %s pico-USD\n", str(j, "cost_pico"));
    }
    int differ = 0;
    buf_t diffs = {0};
    cJSON *row = NULL;
    if (!offline) {
        fflush(stdout); /* what was found so far stays printed if the lookup fails */
        token = admin_token(argv0);
        buf_t p = {0};
        bprintf(&p, "/admin/v1/usage/");
        bput_enc(&p, rid);
        int save = json_out;
        json_out = 0;
        row = call("GET", p.p, NULL);
        json_out = save;
        free(p.p);
        static const char *const same[][2] = {
            {"customer_id", "customer_id"}, {"model", "model"}, {"prompt_tokens", "prompt_tokens"},
            {"prompt_cache_hit_tokens", "prompt_cache_hit_tokens"},
            {"prompt_cache_miss_tokens", "prompt_cache_miss_tokens"}, {"completion_tokens", "completion_tokens"},
            {"reasoning_tokens", "reasoning_tokens"}, {"cost_pico", "cost_pico"}, {"http_status", "http_status"},
            {"price_version", "price_version"}};
        for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
            const char *x = num(j, same[i][0]), *y = num(row, same[i][1]);
            if (strcmp(x, y)) bprintf(&diffs, "%s%s: receipt %s, usage row %s", differ++ ? "; " : "", same[i][0], x, y);
        }
        const char *rk = num(row, "key_id");
        if (strcmp(num(j, "key_id"), !strcmp(rk, "-") ? "0" : rk))
            bprintf(&diffs, "%skey_id: receipt %s, usage row %s", differ++ ? "; " : "", num(j, "key_id"), rk);
        static const char *const prices[][2] = {{"input_cache_miss", "price_input_cache_miss"},
                                                {"input_cache_hit", "price_input_cache_hit"},
                                                {"output", "price_output"}};
        for (int i = 0; i < 3; i++)
            if (strcmp(str(price, prices[i][0]), str(row, prices[i][1])))
                bprintf(&diffs, "%sprice.%s: receipt %s, usage row %s", differ++ ? "; " : "", prices[i][0],
                        str(price, prices[i][0]), str(row, prices[i][1]));
        if (!json_out) {
            if (differ) printf("usage row: DIFFERS: %s\n", diffs.p);
            else printf("usage row: matches (billed %s USD on the invoice of %s for customer %s)\n",
                        str(row, "cost_usd"), str(row, "invoice_month"), str(row, "customer"));
        }
    } else if (!json_out) {
        printf("usage row: not checked (--offline)\n");
    }
    if (json_out) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "signature", "valid");
        cJSON_AddStringToObject(o, "kid", kid);
        cJSON_AddStringToObject(o, "usage_row", offline ? "not_checked" : differ ? "differs" : "matches");
        if (differ) cJSON_AddStringToObject(o, "differences", diffs.p);
        if (row) cJSON_AddStringToObject(o, "invoice_month", str(row, "invoice_month"));
        cJSON_AddItemToObject(o, "receipt", j);
        char *t = cJSON_PrintUnformatted(o);
        if (t) print_raw(t);
        free(t);
        cJSON_DetachItemFromObject(o, "receipt");
        cJSON_Delete(o);
    }
    cJSON_Delete(row);
    cJSON_Delete(j);
    free(diffs.p);
    free(payload);
    free(in);
    return differ ? 1 : 0;
}

int main(int argc, char **argv) {
    args_t a = {0, argv + 1}; /* compacted in place: no allocation to free */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json_out = 1;
        else if (!strcmp(argv[i], "--idempotency-key") && i + 1 < argc) idempotency_key = argv[++i];
        else if (!strncmp(argv[i], "--idempotency-key=", 18)) idempotency_key = argv[i] + 18;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") || !strcmp(argv[i], "help")) {
            fputs(USAGE, stdout);
            return 0;
        } else a.argv[a.argc++] = argv[i];
    }
    if (a.argc == 0) {
        fputs(USAGE, stderr);
        return 2;
    }
    const char *url = getenv("TOLLGATE_ADMIN_URL"), *tmo = getenv("TOLLGATE_ADMIN_TIMEOUT");
    parse_url(url && *url ? url : "http://127.0.0.1:8444");
    if (tmo && *tmo) {
        if (strspn(tmo, "0123456789") != strlen(tmo) || strlen(tmo) > 4 || atoi(tmo) < 1)
            die(2, "TOLLGATE_ADMIN_TIMEOUT must be seconds from 1 to 9999 (got %s)", tmo);
        timeout_s = atoi(tmo);
    }
    const char *cmd = positional(&a, "COMMAND");
    static const char *const known[] = {"customer", "key",   "credit", "balance",   "usage",  "invoice",
                                        "price",    "report", "token", "reconcile", "user",   "receipt"};
    int ok = 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) ok |= !strcmp(cmd, known[i]);
    if (!ok) die(2, "unknown command '%s' (see tollgatectl --help)", cmd);
    argv0 = argv[0];
    if (!strcmp(cmd, "receipt")) return cmd_receipt(&a); /* the admin token only to compare with the usage row */
    token = admin_token(argv[0]);
    if (!strcmp(cmd, "customer")) return cmd_customer(&a);
    if (!strcmp(cmd, "key")) return cmd_key(&a);
    if (!strcmp(cmd, "credit")) return cmd_credit(&a);
    if (!strcmp(cmd, "balance")) return cmd_balance(&a);
    if (!strcmp(cmd, "usage")) return cmd_usage(&a);
    if (!strcmp(cmd, "invoice")) return cmd_invoice(&a);
    if (!strcmp(cmd, "report")) return cmd_report(&a);
    if (!strcmp(cmd, "token")) return cmd_token(&a);
    if (!strcmp(cmd, "reconcile")) return cmd_reconcile(&a);
    if (!strcmp(cmd, "user")) return cmd_user(&a);
    return cmd_price(&a);
}
