/* gw_rl_redis.c — the rate limiter's Redis client: hiredis 0.14 async
 * connections on the gateway's libevent loop, to one server or to the
 * masters of a Redis Cluster (hiredis 0.14 has no cluster support).
 *
 * Cluster routing: a command goes to the master of the slot of its first key
 * (CRC16-XMODEM of the {hash tag} mod 16384, as Redis computes it), from a
 * slot map read with CLUSTER SLOTS from any reachable node: at start, every
 * 10 s, after a connection is lost and after a MOVED.  A MOVED reply updates
 * that slot at once and the command is sent again to the node named; an ASK
 * reply sends ASKING and the command to the node named, once, without
 * touching the map.  At most 5 redirections per command.  One connection per
 * node, made (and re-made with a 1 s back-off) in the background; a connect
 * that does not finish within 2 s is abandoned.
 *
 * Every command is the limiter's Lua script: EVALSHA (loaded with SCRIPT LOAD
 * on each node as it connects), EVAL when a node answers NOSCRIPT.
 *
 * Ownership: an op belongs to this module until hiredis has called back;
 * the caller may detach it (no callback then).  Callbacks never run inside
 * gw_redis_eval.  Timeouts are the caller's (hiredis' libevent adapter has
 * none): a caller that gives up on a command detaches it with drop=1, which
 * closes that node's connection (stuck or gone) and makes it again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "gw-int.h"

#define NSLOTS 16384
#define MAX_NODES 64
#define MAX_REDIRECTS 5
#define MAX_ARGS 20
#define REFRESH_MS 10000

typedef struct {
    gw_redis_t *r;
    int idx;
    char host[256];
    int port;
    redisAsyncContext *ac;
    int connected;
    struct event *reconnect, *drop, *connect_timer;
} gw_redis_node_t;

struct gw_redis {
    struct event_base *base;
    int cluster;
    const char *script;
    char sha[41];
    gw_redis_node_t *nodes[MAX_NODES];
    int nnodes;
    int16_t slots[NSLOTS];     /* cluster: node index per slot, -1 unknown */
    int refreshing;
    struct event *refresh;     /* periodic, or soon after a MOVED / lost node */
    int freeing;
    gw_redis_stats_t st;
};

struct gw_redis_op {
    gw_redis_t *r;
    gw_redis_cb cb;
    void *arg;
    int detached;
    int node;                  /* where it was last sent */
    int redirects;
    int use_eval;
    int argc;                  /* with the two leading slots (command, script/sha) */
    char *argv[MAX_ARGS];
    size_t argvlen[MAX_ARGS];
};

/* ---- slots ----------------------------------------------------------------- */

static uint16_t crc16(const char *buf, size_t len) { /* CRC16-CCITT (XMODEM), Redis' cluster.c */
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int k = 0; k < 8; k++) crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned gw_redis_slot(const char *key, size_t len) {
    size_t s, e;
    for (s = 0; s < len; s++)
        if (key[s] == '{') break;
    if (s < len) {
        for (e = s + 1; e < len; e++)
            if (key[e] == '}') break;
        if (e < len && e != s + 1) return crc16(key + s + 1, e - s - 1) & (NSLOTS - 1);
    }
    return crc16(key, len) & (NSLOTS - 1);
}

/* ---- nodes ----------------------------------------------------------------- */

static void node_connect(gw_redis_node_t *n);
static void refresh_soon(gw_redis_t *r, int ms);

static void node_reconnect_later(gw_redis_node_t *n) {
    if (n->r->freeing) return;
    struct timeval tv = {1, 0};
    event_add(n->reconnect, &tv);
}

static void node_on_drop(evutil_socket_t fd, short what, void *arg) {
    gw_redis_node_t *n = arg;
    if (!n->ac) return;
    redisAsyncContext *ac = n->ac;
    n->ac = NULL;
    n->connected = 0;
    redisAsyncFree(ac); /* pending callbacks get a NULL reply */
    node_reconnect_later(n);
}

static void node_on_script(redisAsyncContext *ac, void *reply, void *priv) {
    gw_redis_t *r = priv;
    redisReply *rep = reply;
    if (!r->freeing && rep && rep->type == REDIS_REPLY_STRING && rep->len == 40) memcpy(r->sha, rep->str, 41);
}

static void node_on_connect(const redisAsyncContext *ac, int status) {
    gw_redis_node_t *n = ac->data;
    event_del(n->connect_timer);
    if (status != REDIS_OK) { /* hiredis frees ac after this */
        if (n->ac == ac) n->ac = NULL;
        n->connected = 0;
        node_reconnect_later(n);
        return;
    }
    n->connected = 1;
    gw_redis_t *r = n->r;
    redisAsyncCommand(n->ac, node_on_script, r, "SCRIPT LOAD %s", r->script);
    if (r->cluster) refresh_soon(r, 0);
}

static void node_on_disconnect(const redisAsyncContext *ac, int status) {
    gw_redis_node_t *n = ac->data;
    if (n->ac == ac) n->ac = NULL;
    int was = n->connected;
    n->connected = 0;
    if (n->r->freeing) return;
    if (was) fprintf(stderr, "tollgate: redis %s:%d: connection lost; reconnecting\n", n->host, n->port);
    node_reconnect_later(n);
    if (n->r->cluster) refresh_soon(n->r, 200);
}

static void node_on_reconnect(evutil_socket_t fd, short what, void *arg) { node_connect(arg); }

static void node_on_connect_timeout(evutil_socket_t fd, short what, void *arg) {
    gw_redis_node_t *n = arg;
    if (n->ac && !n->connected) node_on_drop(fd, what, n);
}

static void node_connect(gw_redis_node_t *n) {
    if (n->ac || n->r->freeing) return;
    redisAsyncContext *ac = redisAsyncConnect(n->host, n->port);
    if (!ac || ac->err) {
        if (ac) redisAsyncFree(ac);
        node_reconnect_later(n);
        return;
    }
    ac->data = n;
    redisLibeventAttach(ac, n->r->base);
    redisAsyncSetConnectCallback(ac, node_on_connect);
    redisAsyncSetDisconnectCallback(ac, node_on_disconnect);
    n->ac = ac;
    struct timeval tv = {2, 0};
    event_add(n->connect_timer, &tv);
}

static void node_free(gw_redis_node_t *n) {
    if (!n) return;
    if (n->ac) {
        redisAsyncContext *ac = n->ac;
        n->ac = NULL;
        redisAsyncFree(ac);
    }
    if (n->reconnect) event_free(n->reconnect);
    if (n->drop) event_free(n->drop);
    if (n->connect_timer) event_free(n->connect_timer);
    free(n);
}

/* The node host:port (made and connecting when new); -1 when the table is
 * full or out of memory. */
static int node_get(gw_redis_t *r, const char *host, int port) {
    for (int i = 0; i < r->nnodes; i++)
        if (r->nodes[i]->port == port && !strcasecmp(r->nodes[i]->host, host)) return i;
    if (r->nnodes >= MAX_NODES || strlen(host) >= sizeof r->nodes[0]->host) return -1;
    gw_redis_node_t *n = calloc(1, sizeof *n);
    if (!n) return -1;
    n->r = r;
    n->idx = r->nnodes;
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    n->reconnect = evtimer_new(r->base, node_on_reconnect, n);
    n->drop = evtimer_new(r->base, node_on_drop, n);
    n->connect_timer = evtimer_new(r->base, node_on_connect_timeout, n);
    if (!n->reconnect || !n->drop || !n->connect_timer) {
        node_free(n);
        return -1;
    }
    r->nodes[r->nnodes++] = n;
    node_connect(n);
    return n->idx;
}

/* ---- the cluster's slot map ---------------------------------------------------- */

static void refresh_on_reply(redisAsyncContext *ac, void *reply, void *priv) {
    gw_redis_t *r = priv;
    redisReply *rep = reply;
    r->refreshing = 0;
    if (r->freeing) return;
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep && rep->type == REDIS_REPLY_ERROR) fprintf(stderr, "tollgate: redis CLUSTER SLOTS: %s\n", rep->str);
        refresh_soon(r, 1000);
        return;
    }
    const char *asked = ((gw_redis_node_t *)ac->data)->host;
    int16_t map[NSLOTS];
    for (int i = 0; i < NSLOTS; i++) map[i] = -1;
    for (size_t i = 0; i < rep->elements; i++) {
        redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2 || e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
            continue;
        long long s0 = e->element[0]->integer, s1 = e->element[1]->integer;
        const char *host = e->element[2]->element[0]->str;
        if (!*host || !strcmp(host, "?")) host = asked; /* the node does not know its own address */
        int idx = node_get(r, host, (int)e->element[2]->element[1]->integer);
        if (idx < 0 || s0 < 0 || s1 >= NSLOTS || s0 > s1) continue;
        for (long long s = s0; s <= s1; s++) map[s] = (int16_t)idx;
    }
    memcpy(r->slots, map, sizeof map);
    r->st.refreshes++;
}

static void refresh_on_timer(evutil_socket_t fd, short what, void *arg) {
    gw_redis_t *r = arg;
    if (r->freeing) return;
    struct timeval tv = {REFRESH_MS / 1000, 0};
    event_add(r->refresh, &tv); /* the next periodic one */
    if (r->refreshing) return;
    for (int k = 0; k < r->nnodes; k++) {
        gw_redis_node_t *n = r->nodes[k];
        if (!n->connected) continue;
        if (redisAsyncCommand(n->ac, refresh_on_reply, r, "CLUSTER SLOTS") == REDIS_OK) {
            r->refreshing = 1;
            return;
        }
    }
}

static void refresh_soon(gw_redis_t *r, int ms) {
    if (r->freeing || !r->cluster) return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(r->refresh, &tv);
}

/* ---- commands ------------------------------------------------------------------ */

static void op_free(gw_redis_op_t *op) {
    for (int i = 2; i < op->argc; i++) free(op->argv[i]);
    free(op);
}

static void op_on_reply(redisAsyncContext *ac, void *reply, void *priv);

/* Send op to node idx (first send: only on a connected node). */
static int op_send(gw_redis_op_t *op, int idx, int asking, int need_connected) {
    gw_redis_t *r = op->r;
    if (idx < 0 || idx >= r->nnodes) return GW_ERROR;
    gw_redis_node_t *n = r->nodes[idx];
    if (!n->ac || (need_connected && !n->connected)) return GW_ERROR;
    if (asking && redisAsyncCommand(n->ac, NULL, NULL, "ASKING") != REDIS_OK) return GW_ERROR;
    int eval = op->use_eval || !r->sha[0];
    op->argv[0] = eval ? "EVAL" : "EVALSHA";
    op->argv[1] = eval ? (char *)r->script : r->sha;
    op->argvlen[0] = strlen(op->argv[0]);
    op->argvlen[1] = strlen(op->argv[1]);
    if (redisAsyncCommandArgv(n->ac, op_on_reply, op, op->argc, (const char **)op->argv, op->argvlen) != REDIS_OK)
        return GW_ERROR;
    op->node = idx;
    return GW_OK;
}

/* "MOVED 3999 127.0.0.1:6381" / "ASK ...": slot, host and port; GW_OK. */
static int parse_redirect(const char *s, int *slot, char *host, size_t hostlen, int *port) {
    const char *sp = strchr(s, ' ');
    if (!sp) return GW_ERROR;
    char *end;
    long v = strtol(sp + 1, &end, 10);
    if (end == sp + 1 || *end != ' ' || v < 0 || v >= NSLOTS) return GW_ERROR;
    *slot = (int)v;
    return gw_split_hostport(end + 1, host, hostlen, port);
}

static void op_on_reply(redisAsyncContext *ac, void *reply, void *priv) {
    gw_redis_op_t *op = priv;
    gw_redis_t *r = op->r;
    redisReply *rep = reply;
    if (r->freeing || op->detached) {
        op_free(op);
        return;
    }
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        int moved = !strncmp(rep->str, "MOVED ", 6), ask = !strncmp(rep->str, "ASK ", 4);
        if (!strncmp(rep->str, "NOSCRIPT", 8) && !op->use_eval) {
            op->use_eval = 1;
            if (op_send(op, op->node, 0, 0) == GW_OK) return;
            rep = NULL;
        } else if ((moved || ask) && op->redirects < MAX_REDIRECTS) {
            char host[256];
            int slot, port, idx = -1;
            if (parse_redirect(rep->str, &slot, host, sizeof host, &port) == GW_OK) idx = node_get(r, host, port);
            op->redirects++;
            if (moved) {
                r->st.moved++;
                if (idx >= 0) r->slots[slot] = (int16_t)idx;
                refresh_soon(r, 0);
            } else {
                r->st.ask++;
            }
            if (idx >= 0 && op_send(op, idx, ask, 0) == GW_OK) return;
            rep = NULL;
        } else {
            r->st.errors++;
            fprintf(stderr, "tollgate: redis: %s\n", rep->str);
        }
    }
    op->cb(rep, op->arg);
    op_free(op);
}

gw_redis_op_t *gw_redis_eval(gw_redis_t *r, int nkeys, const char *const *keys, int nargs, const char *const *args,
                             gw_redis_cb cb, void *arg) {
    if (!r || nkeys < 1 || 3 + nkeys + nargs > MAX_ARGS) return NULL;
    unsigned slot = gw_redis_slot(keys[0], strlen(keys[0]));
    int idx = r->cluster ? r->slots[slot] : 0;
    if (idx < 0 || idx >= r->nnodes || !r->nodes[idx]->connected) return NULL;
    gw_redis_op_t *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->r = r;
    op->cb = cb;
    op->arg = arg;
    op->argc = 2;
    char nk[16];
    snprintf(nk, sizeof nk, "%d", nkeys);
    const char *rest[MAX_ARGS];
    int m = 0;
    rest[m++] = nk;
    for (int i = 0; i < nkeys; i++) rest[m++] = keys[i];
    for (int i = 0; i < nargs; i++) rest[m++] = args[i];
    for (int i = 0; i < m; i++) {
        op->argvlen[op->argc] = strlen(rest[i]);
        if (!(op->argv[op->argc] = strdup(rest[i]))) {
            op_free(op);
            return NULL;
        }
        op->argc++;
    }
    if (op_send(op, idx, 0, 1) != GW_OK) {
        op_free(op);
        return NULL;
    }
    return op;
}

void gw_redis_op_detach(gw_redis_op_t *op, int drop) {
    if (!op || op->detached) return;
    op->detached = 1;
    gw_redis_t *r = op->r;
    if (drop && op->node >= 0 && op->node < r->nnodes && r->nodes[op->node]->ac) {
        struct timeval tv = {0, 0}; /* outside hiredis' own callbacks */
        event_add(r->nodes[op->node]->drop, &tv);
    }
}

/* ---- the client ------------------------------------------------------------------ */

gw_redis_t *gw_redis_new(struct event_base *base, const char *addrs, int cluster, const char *script, char *err,
                         size_t errlen) {
    gw_redis_t *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->base = base;
    r->cluster = cluster;
    r->script = script;
    for (int i = 0; i < NSLOTS; i++) r->slots[i] = cluster ? -1 : 0;
    if (!(r->refresh = evtimer_new(base, refresh_on_timer, r))) goto oom;
    const char *p = addrs;
    while (*p) {
        size_t n = strcspn(p, ", ");
        if (n) {
            char one[300], host[256];
            int port;
            if (n >= sizeof one) goto bad;
            memcpy(one, p, n);
            one[n] = '\0';
            if (gw_split_hostport(one, host, sizeof host, &port) != GW_OK) goto bad;
            if (node_get(r, host, port) < 0) goto oom;
            if (!cluster) break; /* one server */
        }
        p += n;
        while (*p == ',' || *p == ' ') p++;
    }
    if (!r->nnodes) goto bad;
    if (cluster) refresh_soon(r, REFRESH_MS);
    return r;
bad:
    snprintf(err, errlen, "redis: bad address list \"%s\" (want host:port[,host:port...])", addrs);
    gw_redis_free(r);
    return NULL;
oom:
    snprintf(err, errlen, "out of memory");
    gw_redis_free(r);
    return NULL;
}

void gw_redis_free(gw_redis_t *r) {
    if (!r) return;
    r->freeing = 1;
    for (int i = 0; i < r->nnodes; i++) node_free(r->nodes[i]);
    if (r->refresh) event_free(r->refresh);
    free(r);
}

int gw_redis_up(const gw_redis_t *r) {
    if (!r || !r->nnodes) return 0;
    if (!r->cluster) return r->nodes[0]->connected;
    for (int i = 0; i < NSLOTS; i++) {
        int idx = r->slots[i];
        if (idx < 0 || !r->nodes[idx]->connected) return 0;
    }
    return 1;
}

int gw_redis_slot_up(const gw_redis_t *r, const char *key) {
    if (!r) return 0;
    int idx = r->cluster ? r->slots[gw_redis_slot(key, strlen(key))] : 0;
    return idx >= 0 && idx < r->nnodes && r->nodes[idx]->connected;
}

void gw_redis_stats(const gw_redis_t *r, gw_redis_stats_t *st) {
    if (r) *st = r->st;
    else memset(st, 0, sizeof *st);
}
