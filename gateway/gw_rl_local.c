/* gw_rl_local.c — the rate limiter's pure parts: GCRA arithmetic, the
 * in-process limiter table and the failed-auth throttle.  No I/O, no clock
 * of its own (callers pass `now` in ms), so the unit tests drive time.
 *
 * GCRA, as in the Lua script of gw_rl.c (the two must agree to the unit):
 * a bucket of capacity L (the per-minute limit), one unit costing W = 60000,
 * draining L per ms; its debt d is an integer and n units fit when
 * d + n*W <= W*L.  So L requests at once pass, the L+1st waits W/L ms, and
 * the state is three integers per limit: O(1) memory per key, whatever the
 * rate.
 *
 * Invariants of the local table: an entry exists while it holds debt or
 * requests in flight (the sweep drops the others); its memory is O(1). */
#include <stdlib.h>
#include <string.h>

#include "gw-int.h"

#define W GW_RL_WINDOW_MS

/* ---- GCRA ------------------------------------------------------------------ */

void gw_gcra_drain(gw_gcra_t *g, int64_t lim, int64_t now) {
    if (lim <= 0) {
        g->d = 0;
        g->t = now;
        g->l = 0;
        return;
    }
    if (g->l > 0 && g->l != lim && g->d > 0) { /* the limit changed: same fill level */
        __int128 x = (__int128)g->d * lim;
        g->d = (int64_t)((x + g->l - 1) / g->l);
    }
    g->l = lim;
    int64_t el = now - g->t;
    if (el > 0 && g->d > 0) {
        int64_t drained;
        if (__builtin_mul_overflow(el, lim, &drained) || drained >= g->d) g->d = 0;
        else g->d -= drained;
    }
    if (now > g->t || g->d == 0) g->t = now;
}

int gw_gcra_fits(const gw_gcra_t *g, int64_t lim, int64_t n) {
    if (lim <= 0) return 1;
    if (n < 0) n = 0;
    if (n > lim) return 0;
    return g->d + n * W <= lim * W;
}

void gw_gcra_charge(gw_gcra_t *g, int64_t n) {
    if (n >= 0) {
        int64_t c;
        if (__builtin_mul_overflow(n, (int64_t)W, &c) || __builtin_add_overflow(g->d, c, &g->d)) g->d = INT64_MAX / 2;
    } else {
        int64_t c = (-n > INT64_MAX / W) ? INT64_MAX : -n * W;
        g->d = c >= g->d ? 0 : g->d - c;
    }
}

int64_t gw_gcra_remaining(const gw_gcra_t *g, int64_t lim) {
    if (lim <= 0) return 0;
    int64_t room = lim * W - g->d;
    return room > 0 ? room / W : 0;
}

int64_t gw_gcra_reset_ms(const gw_gcra_t *g, int64_t lim) {
    if (lim <= 0 || g->d <= 0) return 0;
    return (g->d + lim - 1) / lim;
}

int64_t gw_gcra_retry_ms(const gw_gcra_t *g, int64_t lim, int64_t n) {
    if (lim <= 0) return 0;
    if (n > lim) return -1;
    int64_t over = g->d + n * W - lim * W;
    return over > 0 ? (over + lim - 1) / lim : 0;
}

/* ---- the in-process limiter ------------------------------------------------ */

#define LOCAL_BUCKETS 4096

typedef struct gw_rl_entry {
    struct gw_rl_entry *next;
    char kind;
    int64_t id;
    gw_gcra_t r, t;
    int64_t inflight;
} gw_rl_entry_t;

struct gw_rl_local {
    gw_rl_entry_t *b[LOCAL_BUCKETS];
    size_t n;
};

gw_rl_local_t *gw_rl_local_new(void) { return calloc(1, sizeof(gw_rl_local_t)); }

void gw_rl_local_free(gw_rl_local_t *t) {
    if (!t) return;
    for (int i = 0; i < LOCAL_BUCKETS; i++)
        while (t->b[i]) {
            gw_rl_entry_t *e = t->b[i];
            t->b[i] = e->next;
            free(e);
        }
    free(t);
}

static gw_rl_entry_t **local_slot(gw_rl_local_t *t, char kind, int64_t id) {
    uint64_t h = ((uint64_t)id * 0x9E3779B97F4A7C15ULL) ^ (uint64_t)(unsigned char)kind;
    gw_rl_entry_t **pp = &t->b[(h >> 20) % LOCAL_BUCKETS];
    while (*pp && ((*pp)->id != id || (*pp)->kind != kind)) pp = &(*pp)->next;
    return pp;
}

/* The state of one subject as the Lua script reports it. */
static void local_report(const gw_rl_entry_t *e, const gw_rl_limits_t *lim, gw_rl_verdict_t *v) {
    v->rrem = gw_gcra_remaining(&e->r, lim->rpm);
    v->rreset = gw_gcra_reset_ms(&e->r, lim->rpm);
    v->trem = gw_gcra_remaining(&e->t, lim->tpm);
    v->treset = gw_gcra_reset_ms(&e->t, lim->tpm);
    v->inflight = e->inflight;
}

int gw_rl_local_op(gw_rl_local_t *t, int op, char kind, int64_t id, const gw_rl_limits_t *lim, int64_t n,
                   int64_t now, gw_rl_verdict_t *v) {
    gw_rl_verdict_t dummy;
    if (!v) v = &dummy;
    memset(v, 0, sizeof *v);
    v->ok = 1;
    gw_rl_entry_t **pp = local_slot(t, kind, id), *e = *pp;
    if (!e) {
        if (op == GW_RL_OP_DONE || op == GW_RL_OP_UNDO || op == GW_RL_OP_RENEW) return GW_OK; /* nothing held */
        static const gw_rl_entry_t empty;
        if (op == GW_RL_OP_PEEK) {
            local_report(&empty, lim, v);
            return GW_OK;
        }
        if (!(e = calloc(1, sizeof *e))) return GW_ERROR;
        e->kind = kind;
        e->id = id;
        e->r.t = e->t.t = now;
        *pp = e;
        t->n++;
    }
    gw_gcra_drain(&e->r, lim->rpm, now);
    gw_gcra_drain(&e->t, lim->tpm, now);
    if (n < 0 && (op == GW_RL_OP_TAKE || op == GW_RL_OP_PEEK || op == GW_RL_OP_FORCE)) n = 0;
    switch (op) {
    case GW_RL_OP_TAKE:
    case GW_RL_OP_PEEK:
        if (!gw_gcra_fits(&e->r, lim->rpm, 1)) {
            v->ok = 0;
            v->why = GW_RL_WHY_REQUESTS;
            v->retry = gw_gcra_retry_ms(&e->r, lim->rpm, 1);
        } else if (!gw_gcra_fits(&e->t, lim->tpm, n)) {
            v->ok = 0;
            v->why = GW_RL_WHY_TOKENS;
            v->retry = gw_gcra_retry_ms(&e->t, lim->tpm, n);
        } else if (lim->conc > 0 && e->inflight >= lim->conc) {
            v->ok = 0;
            v->why = GW_RL_WHY_CONCURRENCY;
            v->retry = 1000;
        }
        if (op == GW_RL_OP_PEEK || !v->ok) break;
        __attribute__((fallthrough)); /* take */
    case GW_RL_OP_FORCE:
        if (lim->rpm > 0) gw_gcra_charge(&e->r, 1);
        if (lim->tpm > 0) gw_gcra_charge(&e->t, n);
        e->inflight++;
        break;
    case GW_RL_OP_UNDO:
        if (lim->rpm > 0) gw_gcra_charge(&e->r, -1);
        __attribute__((fallthrough));
    case GW_RL_OP_DONE:
        if (lim->tpm > 0) gw_gcra_charge(&e->t, -n);
        if (e->inflight > 0) e->inflight--;
        break;
    default:
        break;
    }
    local_report(e, lim, v);
    return GW_OK;
}

void gw_rl_local_sweep(gw_rl_local_t *t, int64_t now) {
    for (int i = 0; i < LOCAL_BUCKETS; i++) {
        gw_rl_entry_t **pp = &t->b[i];
        while (*pp) {
            gw_rl_entry_t *e = *pp;
            gw_gcra_drain(&e->r, e->r.l, now);
            gw_gcra_drain(&e->t, e->t.l, now);
            if (e->inflight == 0 && e->r.d == 0 && e->t.d == 0) {
                *pp = e->next;
                free(e);
                t->n--;
            } else {
                pp = &e->next;
            }
        }
    }
}

size_t gw_rl_local_size(const gw_rl_local_t *t) { return t ? t->n : 0; }

/* ---- failed-auth throttle ---------------------------------------------------- */

#define AF_WAYS 8

typedef struct {
    uint64_t h;          /* address hash; 0: free */
    gw_gcra_t g;         /* failures, capacity `limit` per window */
    int64_t blocked_until;
    int64_t seen;
} gw_af_entry_t;

struct gw_authfail {
    int64_t limit, window_ms, block_ms;
    size_t nbuckets;     /* power of two */
    uint64_t seed;
    gw_af_entry_t *e;    /* nbuckets * AF_WAYS */
};

gw_authfail_t *gw_authfail_new(int64_t limit, int64_t window_ms, int64_t block_ms, size_t entries) {
    gw_authfail_t *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->limit = limit;
    a->window_ms = window_ms > 0 ? window_ms : W;
    a->block_ms = block_ms;
    size_t nb = 1;
    while (nb * AF_WAYS < entries && nb < ((size_t)1 << 24)) nb <<= 1;
    a->nbuckets = nb;
    a->seed = (uint64_t)(uintptr_t)a ^ 0x6a09e667f3bcc909ULL; /* varies per run; not a secret */
    if (!(a->e = calloc(nb * AF_WAYS, sizeof *a->e))) {
        free(a);
        return NULL;
    }
    return a;
}

void gw_authfail_free(gw_authfail_t *a) {
    if (!a) return;
    free(a->e);
    free(a);
}

static uint64_t af_hash(const gw_authfail_t *a, const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL ^ a->seed; /* FNV-1a, then a final mix */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h ? h : 1;
}

/* The entry of addr, or NULL when absent and !make. */
static gw_af_entry_t *af_find(gw_authfail_t *a, const char *addr, int64_t now, int make) {
    uint64_t h = af_hash(a, addr);
    gw_af_entry_t *b = a->e + (h & (a->nbuckets - 1)) * AF_WAYS, *victim = NULL;
    for (int i = 0; i < AF_WAYS; i++)
        if (b[i].h == h) return &b[i];
    if (!make) return NULL;
    /* room: a free way, else the least recently seen one that is not
     * blocked, else the one whose block ends first */
    for (int i = 0; i < AF_WAYS; i++) {
        gw_af_entry_t *x = &b[i];
        if (!x->h) {
            victim = x;
            break;
        }
        int xb = x->blocked_until > now;
        if (!victim) victim = x;
        else {
            int vb = victim->blocked_until > now;
            if (xb != vb ? !xb : xb ? x->blocked_until < victim->blocked_until : x->seen < victim->seen) victim = x;
        }
    }
    memset(victim, 0, sizeof *victim);
    victim->h = h;
    victim->g.t = now;
    return victim;
}

int gw_authfail_blocked(gw_authfail_t *a, const char *addr, int64_t now, int64_t *retry_ms) {
    if (!a || a->limit <= 0) return 0;
    gw_af_entry_t *e = af_find(a, addr, now, 0);
    if (!e || e->blocked_until <= now) return 0;
    if (retry_ms) *retry_ms = e->blocked_until - now;
    return 1;
}

int gw_authfail_record(gw_authfail_t *a, const char *addr, int64_t now) {
    if (!a || a->limit <= 0) return 0;
    gw_af_entry_t *e = af_find(a, addr, now, 1);
    e->seen = now;
    /* the bucket counts failures per window_ms: scale time so that the
     * per-minute GCRA above reads "limit per window_ms" */
    int64_t scaled = now * W / a->window_ms;
    if (e->g.t > scaled) e->g.t = scaled;
    gw_gcra_drain(&e->g, a->limit, scaled);
    gw_gcra_charge(&e->g, 1);
    if (gw_gcra_remaining(&e->g, a->limit) == 0 && e->blocked_until <= now) {
        e->blocked_until = now + a->block_ms;
        return 1;
    }
    return 0;
}
