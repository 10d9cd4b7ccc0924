/* eng_kv.c — the paged KV cache and the prefix cache.
 *
 * One budget of memory (eng_load_opts_t.kv_bytes, `serve --kv-mem`) is cut
 * into fixed-size blocks of B = TG_PREFIX_BLOCK tokens; a block holds those
 * tokens' K (and V for GQA) rows of every layer:
 *
 *   block b: [n_layers][B][row] K floats, then (GQA) [n_layers][B][row] V floats
 *
 * A sequence is a table of block ids; token p lives in block table[p / B] at
 * row p % B.  Blocks are reference counted.  A block that a sequence has
 * filled is registered under its chained key (tg_prefix.h: the hash of all
 * tokens up to its end), so another sequence whose prompt starts with the
 * same tokens attaches it instead of computing it again.  When no sequence
 * holds a registered block it stays cached, on an LRU list, until a
 * reservation needs its memory (eviction, oldest first).  Blocks never
 * registered go back to the free list at once.
 *
 * Invariants: a sequence writes only into blocks it alone holds and that are
 * not registered (a registered block is full, and eng_seq_prefix attaches at
 * most n-1 tokens, so the next write starts a fresh block); a block is on
 * exactly one of: a sequence's table (ref > 0), the LRU list (ref 0,
 * registered), the free list (ref 0, not registered).  The memory is the
 * backend's (kv_alloc: on the CPU one anonymous mapping with MAP_NORESERVE, so
 * pages cost RAM only once written; on CUDA device memory); this file only
 * does arithmetic on it and copies blocks through the backend.  Nothing here
 * allocates after eng_kv_new except a sequence's block table.
 * Not thread-safe: one thread (the scheduler) owns the pool and its sequences. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tg_err.h"
#include "tg_prefix.h"
#include "eng_model_int.h"

#define NIL (-1)

struct eng_kv {
    int B, n_layers, row, has_v;
    int n_blocks;
    size_t block_floats;   /* floats per block */
    float *mem;            /* [n_blocks][block_floats], backend memory */
    eng_backend_t *be;     /* whose memory mem is */
    size_t map_bytes;
    /* per block */
    int32_t *ref;
    uint8_t *reg;          /* registered under key[] */
    uint64_t *key, *parent;
    int32_t *toks;         /* [n_blocks][B] the tokens written into it */
    int32_t *prev, *next;  /* LRU (reg, ref 0) or free list (not reg, ref 0) links */
    int32_t *hnext;        /* hash chain */
    int32_t *bucket;       /* [n_buckets] */
    uint64_t n_buckets;
    int32_t free_head;     /* free list (singly linked through next) */
    int32_t lru_head, lru_tail;
    int n_free, n_lru, n_used;
    uint64_t evictions;
};

/* ---- lists ------------------------------------------------------------------------ */

static void lru_unlink(eng_kv_t *kv, int32_t b) {
    if (kv->prev[b] != NIL) kv->next[kv->prev[b]] = kv->next[b];
    else kv->lru_head = kv->next[b];
    if (kv->next[b] != NIL) kv->prev[kv->next[b]] = kv->prev[b];
    else kv->lru_tail = kv->prev[b];
    kv->prev[b] = kv->next[b] = NIL;
    kv->n_lru--;
}

static void lru_push(eng_kv_t *kv, int32_t b) { /* most recently used at the tail */
    kv->prev[b] = kv->lru_tail;
    kv->next[b] = NIL;
    if (kv->lru_tail != NIL) kv->next[kv->lru_tail] = b;
    else kv->lru_head = b;
    kv->lru_tail = b;
    kv->n_lru++;
}

static void free_push(eng_kv_t *kv, int32_t b) {
    kv->next[b] = kv->free_head;
    kv->prev[b] = NIL;
    kv->free_head = b;
    kv->n_free++;
}

/* ---- hash table (chained through hnext) ---------------------------------------------- */

static uint64_t slot_of(const eng_kv_t *kv, uint64_t key) { return (key * 0x9e3779b97f4a7c15ULL) >> 11 & (kv->n_buckets - 1); }

static void h_insert(eng_kv_t *kv, int32_t b) {
    uint64_t s = slot_of(kv, kv->key[b]);
    kv->hnext[b] = kv->bucket[s];
    kv->bucket[s] = b;
    kv->reg[b] = 1;
}

static void h_remove(eng_kv_t *kv, int32_t b) {
    int32_t *pp = &kv->bucket[slot_of(kv, kv->key[b])];
    while (*pp != NIL && *pp != b) pp = &kv->hnext[*pp];
    if (*pp == b) *pp = kv->hnext[b];
    kv->hnext[b] = NIL;
    kv->reg[b] = 0;
}

/* The registered block with this key whose parent key and tokens match. */
static int32_t h_find(const eng_kv_t *kv, uint64_t key, uint64_t parent, const int32_t *ids) {
    for (int32_t b = kv->bucket[slot_of(kv, key)]; b != NIL; b = kv->hnext[b])
        if (kv->key[b] == key && kv->parent[b] == parent &&
            !memcmp(kv->toks + (size_t)b * kv->B, ids, (size_t)kv->B * sizeof(int32_t)))
            return b;
    return NIL;
}

/* ---- pool --------------------------------------------------------------------------- */

size_t eng_kv_default_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    size_t ram = pages > 0 && psz > 0 ? (size_t)pages * (size_t)psz : (size_t)8 << 30;
    size_t b = ram / 4;
    if (b > ((size_t)64 << 30)) b = (size_t)64 << 30;
    return b;
}

eng_kv_t *eng_kv_new(eng_backend_t *be, int n_layers, int row, int has_v, size_t bytes, char *err, size_t errlen) {
    eng_kv_t *kv = calloc(1, sizeof *kv);
    if (!kv) goto oom;
    kv->B = TG_PREFIX_BLOCK;
    kv->n_layers = n_layers;
    kv->row = row;
    kv->has_v = has_v;
    kv->block_floats = (size_t)n_layers * kv->B * row * (has_v ? 2 : 1);
    size_t bb = kv->block_floats * sizeof(float);
    size_t nb = bb ? bytes / bb : 0;
    if (nb < 1) {
        tg_errf(err, errlen, "the KV budget of %zu bytes holds no block of %d tokens (%zu bytes)", bytes, kv->B, bb);
        free(kv);
        return NULL;
    }
    if (nb > 0x7ffffff0) nb = 0x7ffffff0;
    kv->n_blocks = (int)nb;
    kv->map_bytes = nb * bb;
    kv->be = be;
    void *p = be->ops->kv_alloc(be, kv->map_bytes);
    if (!p) {
        tg_errf(err, errlen, "cannot allocate a KV cache of %zu bytes on %s: %s", kv->map_bytes, be->ops->name,
                strerror(errno ? errno : ENOMEM));
        kv->map_bytes = 0;
        eng_kv_free(kv);
        return NULL;
    }
    kv->mem = p;
    kv->n_buckets = 16;
    while (kv->n_buckets < (uint64_t)nb) kv->n_buckets <<= 1;
    kv->ref = calloc(nb, sizeof *kv->ref);
    kv->reg = calloc(nb, 1);
    kv->key = calloc(nb, sizeof *kv->key);
    kv->parent = calloc(nb, sizeof *kv->parent);
    kv->toks = calloc(nb * kv->B, sizeof *kv->toks);
    kv->prev = malloc(nb * sizeof *kv->prev);
    kv->next = malloc(nb * sizeof *kv->next);
    kv->hnext = malloc(nb * sizeof *kv->hnext);
    kv->bucket = malloc(kv->n_buckets * sizeof *kv->bucket);
    if (!kv->ref || !kv->reg || !kv->key || !kv->parent || !kv->toks || !kv->prev || !kv->next || !kv->hnext ||
        !kv->bucket) {
        eng_kv_free(kv);
        goto oom;
    }
    for (uint64_t i = 0; i < kv->n_buckets; i++) kv->bucket[i] = NIL;
    kv->free_head = kv->lru_head = kv->lru_tail = NIL;
    for (int32_t b = kv->n_blocks - 1; b >= 0; b--) {
        kv->hnext[b] = NIL;
        free_push(kv, b); /* block 0 on top: low addresses first */
    }
    return kv;
oom:
    tg_errf(err, errlen, "out of memory for the KV cache's block index");
    return NULL;
}

void eng_kv_free(eng_kv_t *kv) {
    if (!kv) return;
    if (kv->mem) kv->be->ops->kv_release(kv->be, kv->mem, kv->map_bytes);
    free(kv->ref);
    free(kv->reg);
    free(kv->key);
    free(kv->parent);
    free(kv->toks);
    free(kv->prev);
    free(kv->next);
    free(kv->hnext);
    free(kv->bucket);
    free(kv);
}

int eng_kv_block_tokens(const eng_kv_t *kv) { return kv->B; }
int eng_kv_blocks_total(const eng_kv_t *kv) { return kv->n_blocks; }
int eng_kv_available(const eng_kv_t *kv) { return kv->n_free + kv->n_lru; }
size_t eng_kv_block_floats(const eng_kv_t *kv) { return kv->block_floats; }
float *eng_kv_mem(const eng_kv_t *kv) { return kv->mem; }

void eng_kv_get_stats(const eng_kv_t *kv, eng_kv_stats_t *o) {
    memset(o, 0, sizeof *o);
    o->block_tokens = kv->B;
    o->blocks_total = kv->n_blocks;
    o->blocks_used = kv->n_used;
    o->blocks_cached = kv->n_lru;
    o->blocks_free = kv->n_free;
    o->bytes_per_block = kv->block_floats * sizeof(float);
    o->evictions = kv->evictions;
}

/* Take a block for writing: a free one, else the least recently used cached
 * one (its key is forgotten).  NIL when every block is held. */
static int32_t take_block(eng_kv_t *kv) {
    int32_t b = kv->free_head;
    if (b != NIL) {
        kv->free_head = kv->next[b];
        kv->next[b] = NIL;
        kv->n_free--;
    } else if ((b = kv->lru_head) != NIL) {
        lru_unlink(kv, b);
        h_remove(kv, b);
        kv->evictions++;
    } else {
        return NIL;
    }
    kv->ref[b] = 1;
    kv->n_used++;
    return b;
}

static void hold(eng_kv_t *kv, int32_t b) {
    if (kv->ref[b]++ == 0) {
        lru_unlink(kv, b); /* only registered blocks are found, and they sit on the LRU */
        kv->n_used++;
    }
}

static void drop(eng_kv_t *kv, int32_t b) {
    if (--kv->ref[b] > 0) return;
    kv->n_used--;
    if (kv->reg[b]) lru_push(kv, b);
    else free_push(kv, b);
}

/* ---- sequences ------------------------------------------------------------------------ */

eng_seq_t *eng_seq_new(eng_model_t *m, int max_len) {
    eng_seq_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->m = m;
    s->kv = m->kv;
    s->max_len = max_len > 0 && max_len < m->info.max_seq_len ? max_len : m->info.max_seq_len;
    s->cap_blocks = (s->max_len + s->kv->B - 1) / s->kv->B;
    s->blocks = malloc((size_t)s->cap_blocks * sizeof *s->blocks);
    s->key = s->root = TG_PREFIX_ROOT;
    if (!s->blocks) {
        free(s);
        return NULL;
    }
    return s;
}

void eng_seq_free(eng_seq_t *s) {
    if (!s) return;
    for (int i = s->n_blocks - 1; i >= 0; i--) drop(s->kv, s->blocks[i]); /* the tail is evicted first */
    free(s->blocks);
    free(s);
}

int eng_seq_len(const eng_seq_t *s) { return s->len; }
int eng_seq_blocks(const eng_seq_t *s) { return s->n_blocks; }

int eng_seq_blocks_needed(const eng_seq_t *s, int len) {
    int need = (len + s->kv->B - 1) / s->kv->B - s->n_blocks;
    return need > 0 ? need : 0;
}

int eng_seq_reserve(eng_seq_t *s, int len) {
    if (len > s->max_len) return -1;
    eng_kv_t *kv = s->kv;
    int need = eng_seq_blocks_needed(s, len);
    if (need > kv->n_free + kv->n_lru) return ENG_KV_FULL;
    for (int i = 0; i < need; i++) s->blocks[s->n_blocks++] = take_block(kv);
    return 0;
}

int eng_seq_truncate(eng_seq_t *s, int len) {
    if (len < 0 || len >= s->len) return 0;
    eng_kv_t *kv = s->kv;
    int B = kv->B, keep = (len + B - 1) / B;
    if (len % B) { /* the block that will be written again must be this sequence's alone, unregistered */
        int32_t b = s->blocks[keep - 1];
        if (kv->ref[b] > 1) {
            int32_t nb = take_block(kv);
            if (nb == NIL) return -1;
            if (kv->be->ops->copy(kv->be, kv->mem + (size_t)nb * kv->block_floats,
                                  kv->mem + (size_t)b * kv->block_floats, kv->block_floats * sizeof(float))) {
                free_push(kv, nb);
                return -1;
            }
            memcpy(kv->toks + (size_t)nb * B, kv->toks + (size_t)b * B, (size_t)B * sizeof(int32_t));
            drop(kv, b);
            s->blocks[keep - 1] = nb;
        } else if (kv->reg[b]) {
            h_remove(kv, b);
        }
    }
    while (s->n_blocks > keep) drop(kv, s->blocks[--s->n_blocks]);
    s->len = len;
    if (s->n_keyed > len / B) { /* recompute the chain key of the full blocks kept */
        s->n_keyed = len / B;
        s->key = s->root;
        for (int i = 0; i < s->n_keyed; i++) s->key = kv->key[s->blocks[i]];
    }
    return 0;
}

int eng_seq_namespace(eng_seq_t *s, uint64_t root) {
    if (s->len) return -1;
    s->key = s->root = root ? root : TG_PREFIX_ROOT;
    return 0;
}

int eng_seq_prefix(eng_seq_t *s, const int32_t *ids, int n) {
    eng_kv_t *kv = s->kv;
    if (s->len || n <= 1) return s->len;
    int B = kv->B, nb = (n - 1) / B;
    if (nb > s->cap_blocks) nb = s->cap_blocks;
    uint64_t key = s->root;
    for (int i = 0; i < nb; i++) {
        uint64_t k = tg_prefix_block_hash(key, ids + (size_t)i * B, B);
        int32_t b = h_find(kv, k, key, ids + (size_t)i * B);
        if (b == NIL) break;
        hold(kv, b);
        s->blocks[s->n_blocks++] = b;
        key = k;
    }
    s->len = s->n_keyed = s->n_blocks;
    s->len *= B;
    s->key = key;
    return s->len;
}

/* After a forward call: register the blocks the sequence has filled. */
void eng_seq_commit(eng_seq_t *s) {
    eng_kv_t *kv = s->kv;
    int B = kv->B;
    while (s->n_keyed < s->len / B) {
        int32_t b = s->blocks[s->n_keyed];
        const int32_t *t = kv->toks + (size_t)b * B;
        uint64_t k = tg_prefix_block_hash(s->key, t, B);
        if (!kv->reg[b]) {
            kv->key[b] = k; /* its chain key, registered or not (eng_seq_truncate reads it) */
            kv->parent[b] = s->key;
            if (h_find(kv, k, s->key, t) == NIL) h_insert(kv, b);
        }
        s->key = k;
        s->n_keyed++;
    }
}

/* Where token p's ids and rows live (the forward pass writes through these). */
int32_t *eng_seq_tok_slot(eng_seq_t *s, int p) {
    return s->kv->toks + (size_t)s->blocks[p / s->kv->B] * s->kv->B + p % s->kv->B;
}

float *eng_seq_row(eng_seq_t *s, int layer, int p, int v) {
    eng_kv_t *kv = s->kv;
    size_t off = (size_t)s->blocks[p / kv->B] * kv->block_floats +
                 ((size_t)(v ? kv->n_layers + layer : layer) * kv->B + p % kv->B) * kv->row;
    return kv->mem + off;
}
