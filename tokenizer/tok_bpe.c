/* tok_bpe.c — byte-pair merging of one pre-tokenized piece, exactly as Hugging
 * Face's BPE::merge_word: start from one symbol per byte, repeatedly apply the
 * pair with the lowest merge rank (leftmost first on ties), using a min-heap
 * keyed (rank, position) and skipping stale entries.  Words are also kept in a
 * small per-thread cache (each thread owns its cache, so nothing is shared). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tok-int.h"

int tok_out_push(tok_out_t *o, int32_t id) {
    if (o->ids) {
        if (o->n >= o->cap) {
            if (o->fixed) { /* past the prefix the caller wants: counted */
                o->n++;
                return 0;
            }
            size_t nc = o->cap * 2 + 16;
            int32_t *v = realloc(o->ids, nc * sizeof *v);
            if (!v) return -1;
            o->ids = v;
            o->cap = nc;
        }
        o->ids[o->n] = id;
    }
    o->n++;
    return 0;
}

static inline const tok_pair_t *pair_find(const tok_t *t, int32_t a, int32_t b) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t h = k;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    for (uint32_t i = (uint32_t)h & t->pmask;; i = (i + 1) & t->pmask) {
        const tok_pair_t *p = &t->pairs[i];
        if (p->key == k) return p;
        if (p->key == UINT64_MAX) return NULL;
    }
}

/* min-heap of (rank << 32 | pos) */
static inline void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static inline uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1] < h[c]) c++;
        if (last <= h[c]) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = last;
    return top;
}

/* ---- per-thread word cache ------------------------------------------------- */

#define TOK_CACHE_SLOTS 4096 /* power of two */
#define TOK_CACHE_WORD 24    /* longest cached word, bytes */
#define TOK_CACHE_IDS 8      /* most ids of a cached word */

typedef struct {
    uint64_t owner; /* tok_t serial, 0: empty */
    uint8_t len, nids;
    char word[TOK_CACHE_WORD];
    int32_t ids[TOK_CACHE_IDS];
} cache_ent_t;

static __thread cache_ent_t *tls_cache;
static __thread int tls_cache_failed;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_key_make(void) { pthread_key_create(&cache_key, free); }

static cache_ent_t *cache_get(void) {
    if (tls_cache || tls_cache_failed) return tls_cache;
    if (getenv("TOK_NO_CACHE")) {
        tls_cache_failed = 1;
        return NULL;
    }
    pthread_once(&cache_once, cache_key_make);
    tls_cache = calloc(TOK_CACHE_SLOTS, sizeof *tls_cache);
    if (!tls_cache) {
        tls_cache_failed = 1;
        return NULL;
    }
    pthread_setspecific(cache_key, tls_cache); /* freed at thread exit */
    return tls_cache;
}

static int bpe_merge(const tok_t *t, const uint8_t *s, size_t n, tok_out_t *out) {
    int32_t id_buf[128], next_buf[128], prev_buf[128];
    uint64_t heap_buf[3 * 128];
    int32_t *id = id_buf, *nx = next_buf, *pv = prev_buf;
    uint64_t *heap = heap_buf;
    void *big = NULL;
    if (n > 128) {
        big = malloc(n * (3 * sizeof(int32_t) + 3 * sizeof(uint64_t)));
        if (!big) return -1;
        heap = big;
        id = (int32_t *)(heap + 3 * n);
        nx = id + n;
        pv = nx + n;
    }
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        id[i] = t->byte_id[s[i]];
        nx[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        pv[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const tok_pair_t *p = pair_find(t, id[i], id[i + 1]);
        if (p) heap_push(heap, &hn, (uint64_t)(uint32_t)p->rank << 32 | i);
    }
    while (hn) {
        uint64_t top = heap_pop(heap, &hn);
        int32_t pos = (int32_t)(uint32_t)top, rank = (int32_t)(top >> 32);
        if (id[pos] < 0) continue; /* merged into its left neighbour */
        int32_t r = nx[pos];
        if (r < 0) continue;
        const tok_pair_t *p = pair_find(t, id[pos], id[r]);
        if (!p || p->rank != rank) continue; /* stale */
        id[pos] = p->merged;
        id[r] = -1;
        nx[pos] = nx[r];
        if (nx[r] >= 0) pv[nx[r]] = pos;
        int32_t l = pv[pos];
        if (l >= 0 && (p = pair_find(t, id[l], id[pos])))
            heap_push(heap, &hn, (uint64_t)(uint32_t)p->rank << 32 | (uint32_t)l);
        if (nx[pos] >= 0 && (p = pair_find(t, id[pos], id[nx[pos]])))
            heap_push(heap, &hn, (uint64_t)(uint32_t)p->rank << 32 | (uint32_t)pos);
    }
    int rc = 0;
    for (int32_t i = 0; i >= 0 && i < (int32_t)n; i = nx[i])
        if (id[i] >= 0 && tok_out_push(out, id[i])) {
            rc = -1;
            break;
        }
    free(big);
    return rc;
}

int tok_bpe_piece(const tok_t *t, const uint8_t *s, size_t n, tok_out_t *out) {
    if (!n) return 0;
    if (n == 1) return t->byte_id[s[0]] >= 0 ? tok_out_push(out, t->byte_id[s[0]]) : 0;
    if (t->ignore_merges) {
        int32_t w = tok_vocab_find(t, (const char *)s, n);
        if (w >= 0) return tok_out_push(out, w);
    }
    for (size_t i = 0; i < n; i++)
        if (t->byte_id[s[i]] < 0) goto slow; /* a byte with no token */
    cache_ent_t *c = n <= TOK_CACHE_WORD ? cache_get() : NULL;
    cache_ent_t *e = NULL;
    if (c) {
        uint32_t h = tok_hash((const char *)s, n) ^ (uint32_t)t->serial * 0x9E3779B1u;
        e = &c[h & (TOK_CACHE_SLOTS - 1)];
        if (e->owner == t->serial && e->len == n && !memcmp(e->word, s, n)) {
            for (size_t i = 0; i < e->nids; i++)
                if (tok_out_push(out, e->ids[i])) return -1;
            return 0;
        }
    }
    size_t before = out->n;
    int32_t *saved = out->ids;
    if (!saved || out->fixed) { /* count mode (or a fixed prefix): still need the ids for the cache */
        int32_t tmpids[TOK_CACHE_WORD];
        tok_out_t tmp = {tmpids, 0, TOK_CACHE_WORD, 0};
        /* n <= TOK_CACHE_WORD bytes give at most n ids: no realloc of tmpids */
        if (e && bpe_merge(t, s, n, &tmp) == 0) {
            if (tmp.n <= TOK_CACHE_IDS) {
                e->owner = t->serial;
                e->len = (uint8_t)n;
                memcpy(e->word, s, n);
                e->nids = (uint8_t)tmp.n;
                memcpy(e->ids, tmpids, tmp.n * sizeof *tmpids);
            }
            if (!saved) out->n += tmp.n;
            else
                for (size_t i = 0; i < tmp.n; i++) tok_out_push(out, tmpids[i]); /* fixed: cannot fail */
            return 0;
        }
        return bpe_merge(t, s, n, out);
    }
    if (bpe_merge(t, s, n, out)) return -1;
    if (e && out->n - before <= TOK_CACHE_IDS) {
        e->owner = t->serial;
        e->len = (uint8_t)n;
        memcpy(e->word, s, n);
        e->nids = (uint8_t)(out->n - before);
        memcpy(e->ids, out->ids + before, e->nids * sizeof *e->ids);
    }
    return 0;
slow:;
    /* pieces with unmapped bytes: merge the mapped runs separately */
    size_t i = 0;
    while (i < n) {
        while (i < n && t->byte_id[s[i]] < 0) i++;
        size_t j = i;
        while (j < n && t->byte_id[s[j]] >= 0) j++;
        if (j > i && bpe_merge(t, s + i, j - i, out)) return -1;
        i = j;
    }
    return 0;
}
