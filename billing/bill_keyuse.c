/* bill_keyuse.c — the last use of each API key (last_used_at, last_used_ip),
 * remembered in memory at admission and written to PostgreSQL in one
 * statement per flush interval, never as a write per request.
 *
 * Invariants: a key is written at most once per interval by this process
 * (the table holds only keys used since the last flush and is emptied when
 * the flush is sent); several gateways writing the same key keep the latest
 * time (greatest), and its address with it.  A flush that fails is not
 * retried: the next use of the key records it again (last use is advisory,
 * not money).  Memory: one 64-byte slot per key used within an interval. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/event.h>

#include "bill-int.h"

typedef struct {
    int64_t key_id;   /* 0: empty slot */
    int64_t at_ms;    /* Unix ms of the latest use */
    char ip[48];      /* client address, "" when unknown */
} slot_t;

struct bill_keyuse {
    bill_pg_t *pg;
    struct event *timer;
    slot_t *slots;
    size_t cap, n;    /* cap is a power of two; n < cap/2 */
    int inflight;     /* a flush statement is running */
    uint64_t writes;  /* rows sent to PostgreSQL */
};

static const char FLUSH_SQL[] =
    "UPDATE api_keys k SET last_used_at = greatest(k.last_used_at, to_timestamp(v.ms / 1000.0)),"
    " last_used_ip = CASE WHEN k.last_used_at IS NULL OR to_timestamp(v.ms / 1000.0) >= k.last_used_at"
    "   THEN coalesce(nullif(v.ip, '')::inet, k.last_used_ip) ELSE k.last_used_ip END"
    " FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS v(id, ms, ip) WHERE k.id = v.id";

static int64_t now_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static size_t slot_of(const bill_keyuse_t *u, int64_t id) {
    uint64_t h = (uint64_t)id * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 17) & (u->cap - 1);
}

static int grow(bill_keyuse_t *u) {
    size_t ncap = u->cap ? u->cap * 2 : 64;
    slot_t *old = u->slots, *ns = calloc(ncap, sizeof *ns);
    size_t ocap = u->cap;
    if (!ns) return -1;
    u->slots = ns;
    u->cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (!old[i].key_id) continue;
        size_t j = slot_of(u, old[i].key_id);
        while (ns[j].key_id) j = (j + 1) & (ncap - 1);
        ns[j] = old[i];
    }
    free(old);
    return 0;
}

void bill_keyuse_touch(bill_keyuse_t *u, int64_t key_id, const char *peer) {
    if (!u || key_id <= 0) return;
    if ((u->n + 1) * 2 > u->cap && grow(u) != 0) return;
    size_t i = slot_of(u, key_id);
    while (u->slots[i].key_id && u->slots[i].key_id != key_id) i = (i + 1) & (u->cap - 1);
    slot_t *s = &u->slots[i];
    if (!s->key_id) {
        s->key_id = key_id;
        u->n++;
    }
    s->at_ms = now_ms();
    /* an address PostgreSQL's inet reads: no zone suffix ("fe80::1%lo") */
    size_t n = peer ? strcspn(peer, "%") : 0;
    if (n >= sizeof s->ip || (peer && strspn(peer, "0123456789abcdefABCDEF.:") < n)) n = 0;
    memcpy(s->ip, peer ? peer : "", n);
    s->ip[n] = 0;
}

static void flush_done(PGresult *res, const char *err, void *arg) {
    bill_keyuse_t *u = arg;
    u->inflight = 0;
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
        fprintf(stderr, "bill: writing keys' last use failed: %s\n",
                err ? err : PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
}

/* Append to *p (a growing string) with room checks; returns -1 on ENOMEM. */
static int put(char **p, size_t *len, size_t *cap, const char *s) {
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap ? *cap : 256);
        while (*len + n + 1 > nc) nc *= 2;
        char *q = realloc(*p, nc);
        if (!q) return -1;
        *p = q;
        *cap = nc;
    }
    memcpy(*p + *len, s, n + 1);
    *len += n;
    return 0;
}

static void flush_cb(evutil_socket_t fd, short what, void *arg) {
    bill_keyuse_t *u = arg;
    if (u->inflight || u->n == 0) return;
    char *a[3] = {NULL, NULL, NULL};
    size_t len[3] = {0}, cap[3] = {0};
    int bad = 0;
    for (int k = 0; k < 3; k++) bad |= put(&a[k], &len[k], &cap[k], "{");
    int first = 1;
    for (size_t i = 0; i < u->cap && !bad; i++) {
        const slot_t *s = &u->slots[i];
        char v[64];
        if (!s->key_id) continue;
        snprintf(v, sizeof v, "%s%lld", first ? "" : ",", (long long)s->key_id);
        bad |= put(&a[0], &len[0], &cap[0], v);
        snprintf(v, sizeof v, "%s%lld", first ? "" : ",", (long long)s->at_ms);
        bad |= put(&a[1], &len[1], &cap[1], v);
        snprintf(v, sizeof v, "%s\"%s\"", first ? "" : ",", s->ip); /* ip holds [0-9a-fA-F.:] only */
        bad |= put(&a[2], &len[2], &cap[2], v);
        first = 0;
    }
    for (int k = 0; k < 3; k++) bad |= put(&a[k], &len[k], &cap[k], "}");
    if (!bad) {
        const char *params[3] = {a[0], a[1], a[2]};
        if (bill_pg_query(u->pg, FLUSH_SQL, 3, params, flush_done, u)) {
            u->inflight = 1;
            u->writes += u->n;
            memset(u->slots, 0, u->cap * sizeof *u->slots);
            u->n = 0;
        }
    }
    for (int k = 0; k < 3; k++) free(a[k]);
}

bill_keyuse_t *bill_keyuse_new(struct event_base *base, bill_pg_t *pg, int flush_ms) {
    bill_keyuse_t *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->pg = pg;
    if (grow(u) != 0 || !(u->timer = event_new(base, -1, EV_PERSIST, flush_cb, u))) {
        bill_keyuse_free(u);
        return NULL;
    }
    if (flush_ms <= 0) flush_ms = 60000;
    struct timeval tv = {flush_ms / 1000, (flush_ms % 1000) * 1000};
    event_add(u->timer, &tv);
    return u;
}

uint64_t bill_keyuse_writes(const bill_keyuse_t *u) { return u ? u->writes : 0; }

void bill_keyuse_free(bill_keyuse_t *u) {
    if (!u) return;
    if (u->timer) event_free(u->timer);
    free(u->slots);
    free(u);
}
