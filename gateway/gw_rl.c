/* gw_rl.c — per-key requests-per-minute and tokens-per-minute limits in
 * Redis, with a sliding window.  RPM is exact: a sorted set per key
 * ("tg:rpm:{k:<id>}", one Cluster hash tag per key) holds one member per
 * admitted request scored by Redis' own clock in ms; a Lua script drops
 * members older than 60 s, counts, and adds the new one only when the count
 * is below the limit.  So with limit N, N requests within any 60 s pass and
 * the N+1st is refused, whichever gateway they hit.  TPM works the same way
 * with members "<request id>:<tokens>" and a running sum beside the set
 * (expired members are subtracted as they leave); a request is admitted when
 * the sum plus its estimate fits.  Both checks and both takes are one atomic
 * script call: a request refused by one limit takes nothing from the other.  The script is loaded with SCRIPT LOAD and called with EVALSHA
 * (EVAL once when Redis answers NOSCRIPT, e.g. after a restart).
 *
 * hiredis 0.14's libevent adapter has no timeouts, so every call carries its
 * own timer; a call that times out is answered GW_RL_UNAVAILABLE and the
 * connection is dropped and re-made (Redis stuck or gone).  The connection is
 * re-made in the background with a 1 s back-off whenever it is lost.
 *
 * A call object belongs to the limiter until both its caller is done with it
 * (answered or cancelled) and hiredis has called back (reply or drop). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "gw-int.h"

const char gw_rl_script[] =
    "local rk, tk, tt = KEYS[1], KEYS[2], KEYS[3]\n"
    "local rlim, tlim, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local member, tokens = ARGV[4], tonumber(ARGV[5])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local cut = now - window\n"
    "local n, total = 0, 0\n"
    "if rlim > 0 then\n"
    "  redis.call('ZREMRANGEBYSCORE', rk, '-inf', cut)\n"
    "  n = redis.call('ZCARD', rk)\n"
    "end\n"
    "if tlim > 0 then\n"
    "  total = tonumber(redis.call('GET', tt) or '0')\n"
    "  local old = redis.call('ZRANGEBYSCORE', tk, '-inf', cut)\n"
    "  for _, m in ipairs(old) do total = total - tonumber(string.match(m, ':(%d+)$')) end\n"
    "  if #old > 0 then redis.call('ZREMRANGEBYSCORE', tk, '-inf', cut) end\n"
    "  if total < 0 or redis.call('ZCARD', tk) == 0 then total = 0 end\n"
    "end\n"
    "local rok = rlim == 0 or n < rlim\n"
    "local tok = tlim == 0 or total + tokens <= tlim\n"
    "local ok = 0\n"
    "if rok and tok then\n"
    "  ok = 1\n"
    "  if rlim > 0 then\n"
    "    redis.call('ZADD', rk, now, member)\n"
    "    redis.call('PEXPIRE', rk, window)\n"
    "    n = n + 1\n"
    "  end\n"
    "  if tlim > 0 then\n"
    "    redis.call('ZADD', tk, now, member .. ':' .. tokens)\n"
    "    total = total + tokens\n"
    "    redis.call('SET', tt, total, 'PX', window)\n"
    "    redis.call('PEXPIRE', tk, window)\n"
    "  end\n"
    "end\n"
    "local function reset(k)\n"
    "  local o = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')\n"
    "  if o[2] then return tonumber(o[2]) + window - now end\n"
    "  return 0\n"
    "end\n"
    "local rrem, trem = rlim - n, tlim - total\n"
    "if rrem < 0 then rrem = 0 end\n"
    "if trem < 0 then trem = 0 end\n"
    "local why = 0\n"
    "if not rok then why = 1 elseif not tok then why = 2 end\n"
    "return {ok, rrem, reset(rk), trem, reset(tk), why}\n";

#define GW_RL_WINDOW_MS 60000

struct gw_rl {
    struct event_base *base;
    char host[256];
    int port;
    int timeout_ms;
    redisAsyncContext *ac;
    int connected;
    char sha[41];
    struct event *reconnect;
    struct event *drop;      /* deferred redisAsyncFree after a timeout */
    struct event *connect_timer; /* a connect that hangs (packets dropped) is abandoned */
    int freeing;
};

struct gw_rl_call {
    gw_rl_t *rl;
    gw_rl_cb cb;
    void *arg;
    struct event *timer;
    int done;                /* caller answered or cancelled */
    int in_redis;            /* hiredis still holds a callback for us */
    int verdict;
    gw_rl_result_t res;
    int64_t key_id, limit, tpm, tokens;
    char member[64];
    int retried;
};

static void gw_rl_connect(gw_rl_t *rl);

static void gw_rl_call_maybe_free(gw_rl_call_t *c) {
    if (c->done && !c->in_redis) {
        if (c->timer) event_free(c->timer);
        free(c);
    }
}

/* Answer the caller now (from the loop). */
static void gw_rl_answer(gw_rl_call_t *c, int verdict) {
    if (c->done) return;
    c->done = 1;
    if (c->timer) event_del(c->timer);
    c->cb(verdict, &c->res, c->arg);
}

static void gw_rl_schedule_reconnect(gw_rl_t *rl) {
    if (rl->freeing) return;
    struct timeval tv = {1, 0};
    event_add(rl->reconnect, &tv);
}

static void gw_rl_on_drop(evutil_socket_t fd, short what, void *arg) {
    gw_rl_t *rl = arg;
    if (rl->ac) {
        redisAsyncContext *ac = rl->ac;
        rl->ac = NULL;
        rl->connected = 0;
        redisAsyncFree(ac); /* pending callbacks get a NULL reply */
        gw_rl_schedule_reconnect(rl);
    }
}

static void gw_rl_on_timeout(evutil_socket_t fd, short what, void *arg) {
    gw_rl_call_t *c = arg;
    gw_rl_t *rl = c->rl;
    c->verdict = GW_RL_UNAVAILABLE;
    gw_rl_answer(c, GW_RL_UNAVAILABLE);
    if (c->in_redis && rl->ac) { /* Redis is stuck: drop and reconnect, outside hiredis */
        struct timeval tv = {0, 0};
        event_add(rl->drop, &tv);
    }
    gw_rl_call_maybe_free(c);
}

static void gw_rl_send(gw_rl_call_t *c, int use_eval);

static void gw_rl_on_reply(redisAsyncContext *ac, void *r, void *priv) {
    gw_rl_call_t *c = priv;
    redisReply *rep = r;
    c->in_redis = 0;
    if (c->rl->freeing) c->done = 1; /* shutting down: nobody to answer */
    if (c->done) {
        gw_rl_call_maybe_free(c);
        return;
    }
    if (rep && rep->type == REDIS_REPLY_ERROR && !strncmp(rep->str, "NOSCRIPT", 8) && !c->retried) {
        c->retried = 1;
        gw_rl_send(c, 1);
        if (c->in_redis) return;
        gw_rl_answer(c, GW_RL_UNAVAILABLE);
        gw_rl_call_maybe_free(c);
        return;
    }
    int verdict = GW_RL_UNAVAILABLE;
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 6) {
        long long v[6];
        int ok = 1;
        for (int i = 0; i < 6; i++) {
            if (rep->element[i]->type != REDIS_REPLY_INTEGER) ok = 0;
            else v[i] = rep->element[i]->integer;
        }
        if (ok) {
            c->res.limit = c->limit;
            c->res.remaining = v[1];
            c->res.reset_ms = v[2] > 0 ? v[2] : 0;
            c->res.tpm_limit = c->tpm;
            c->res.tpm_remaining = v[3];
            c->res.tpm_reset_ms = v[4] > 0 ? v[4] : 0;
            c->res.why = (int)v[5];
            verdict = v[0] ? GW_RL_ALLOW : GW_RL_LIMITED;
        }
    } else if (rep && rep->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "tollgate: redis: %s\n", rep->str);
    }
    gw_rl_answer(c, verdict);
    gw_rl_call_maybe_free(c);
}

static void gw_rl_send(gw_rl_call_t *c, int use_eval) {
    gw_rl_t *rl = c->rl;
    if (!rl->ac || !rl->connected) return;
    char rk[64], tk[64], tt[64], lim[24], tlim[24], win[24], tokens[24];
    snprintf(rk, sizeof rk, "tg:rpm:{k:%lld}", (long long)c->key_id);
    snprintf(tk, sizeof tk, "tg:tpm:{k:%lld}", (long long)c->key_id);
    snprintf(tt, sizeof tt, "tg:tpm-sum:{k:%lld}", (long long)c->key_id);
    snprintf(lim, sizeof lim, "%lld", (long long)c->limit);
    snprintf(tlim, sizeof tlim, "%lld", (long long)c->tpm);
    snprintf(win, sizeof win, "%d", GW_RL_WINDOW_MS);
    snprintf(tokens, sizeof tokens, "%lld", (long long)c->tokens);
    const char *argv[11] = {use_eval ? "EVAL" : "EVALSHA", use_eval ? gw_rl_script : rl->sha, "3", rk, tk, tt,
                            lim, tlim, win, c->member, tokens};
    if (!use_eval && !rl->sha[0]) argv[0] = "EVAL", argv[1] = gw_rl_script;
    if (redisAsyncCommandArgv(rl->ac, gw_rl_on_reply, c, 11, argv, NULL) == REDIS_OK) c->in_redis = 1;
}

static void gw_rl_on_loaded(redisAsyncContext *ac, void *r, void *priv) {
    gw_rl_t *rl = priv;
    redisReply *rep = r;
    if (rep && rep->type == REDIS_REPLY_STRING && rep->len == 40) memcpy(rl->sha, rep->str, 41);
}

static void gw_rl_on_connect(const redisAsyncContext *ac, int status) {
    gw_rl_t *rl = ac->data;
    if (status != REDIS_OK) { /* hiredis frees ac after this */
        if (rl->ac == ac) rl->ac = NULL;
        rl->connected = 0;
        gw_rl_schedule_reconnect(rl);
        return;
    }
    rl->connected = 1;
    redisAsyncCommand(rl->ac, gw_rl_on_loaded, rl, "SCRIPT LOAD %s", gw_rl_script);
}

static void gw_rl_on_disconnect(const redisAsyncContext *ac, int status) {
    gw_rl_t *rl = ac->data;
    if (rl->ac == ac) rl->ac = NULL;
    rl->connected = 0;
    if (!rl->freeing) fprintf(stderr, "tollgate: redis connection lost; reconnecting\n");
    gw_rl_schedule_reconnect(rl);
}

static void gw_rl_on_reconnect(evutil_socket_t fd, short what, void *arg) { gw_rl_connect(arg); }

static void gw_rl_on_connect_timeout(evutil_socket_t fd, short what, void *arg) {
    gw_rl_t *rl = arg;
    if (rl->ac && !rl->connected) gw_rl_on_drop(fd, what, rl);
}

static void gw_rl_connect(gw_rl_t *rl) {
    if (rl->ac || rl->freeing) return;
    redisAsyncContext *ac = redisAsyncConnect(rl->host, rl->port);
    if (!ac) {
        gw_rl_schedule_reconnect(rl);
        return;
    }
    if (ac->err) {
        redisAsyncFree(ac);
        gw_rl_schedule_reconnect(rl);
        return;
    }
    ac->data = rl;
    redisLibeventAttach(ac, rl->base);
    redisAsyncSetConnectCallback(ac, gw_rl_on_connect);
    redisAsyncSetDisconnectCallback(ac, gw_rl_on_disconnect);
    rl->ac = ac;
    struct timeval tv = {2, 0};
    event_add(rl->connect_timer, &tv);
}

gw_rl_t *gw_rl_new(struct event_base *base, const char *hostport, int timeout_ms) {
    gw_rl_t *rl = calloc(1, sizeof *rl);
    if (!rl) return NULL;
    rl->base = base;
    rl->timeout_ms = timeout_ms;
    if (gw_split_hostport(hostport, rl->host, sizeof rl->host, &rl->port) != GW_OK) {
        free(rl);
        return NULL;
    }
    rl->reconnect = evtimer_new(base, gw_rl_on_reconnect, rl);
    rl->drop = evtimer_new(base, gw_rl_on_drop, rl);
    rl->connect_timer = evtimer_new(base, gw_rl_on_connect_timeout, rl);
    if (!rl->reconnect || !rl->drop || !rl->connect_timer) {
        gw_rl_free(rl);
        return NULL;
    }
    gw_rl_connect(rl);
    return rl;
}

void gw_rl_free(gw_rl_t *rl) {
    if (!rl) return;
    rl->freeing = 1;
    if (rl->ac) {
        redisAsyncContext *ac = rl->ac;
        rl->ac = NULL;
        redisAsyncFree(ac);
    }
    if (rl->reconnect) event_free(rl->reconnect);
    if (rl->drop) event_free(rl->drop);
    if (rl->connect_timer) event_free(rl->connect_timer);
    free(rl);
}

int gw_rl_connected(const gw_rl_t *rl) { return rl && rl->connected; }

static void gw_rl_on_immediate(evutil_socket_t fd, short what, void *arg) {
    gw_rl_call_t *c = arg;
    gw_rl_answer(c, c->verdict);
    gw_rl_call_maybe_free(c);
}

gw_rl_call_t *gw_rl_check(gw_rl_t *rl, int64_t key_id, int64_t limit, int64_t tpm, int64_t tokens,
                          const char *member, gw_rl_cb cb, void *arg) {
    gw_rl_call_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->rl = rl;
    c->cb = cb;
    c->arg = arg;
    c->key_id = key_id;
    c->limit = limit;
    c->tpm = tpm;
    c->tokens = tokens < 0 ? 0 : tokens;
    c->res.limit = limit;
    c->res.tpm_limit = tpm;
    snprintf(c->member, sizeof c->member, "%s", member);
    gw_rl_send(c, 0);
    c->timer = evtimer_new(rl->base, c->in_redis ? gw_rl_on_timeout : gw_rl_on_immediate, c);
    if (!c->timer) {
        c->done = 1; /* hiredis may still hold it; it frees on reply */
        gw_rl_call_maybe_free(c);
        return NULL;
    }
    struct timeval tv = {0, 0};
    if (c->in_redis) {
        tv.tv_sec = rl->timeout_ms / 1000;
        tv.tv_usec = (rl->timeout_ms % 1000) * 1000;
    } else {
        c->verdict = GW_RL_UNAVAILABLE;
    }
    event_add(c->timer, &tv);
    return c;
}

void gw_rl_cancel(gw_rl_call_t *c) {
    if (!c || c->done) return;
    c->done = 1;
    event_del(c->timer);
    gw_rl_call_maybe_free(c);
}
