/* bill_cache.c — what admission learned from PostgreSQL, kept in memory so
 * that the steady state makes no round trip: API keys by their keyed hash
 * (including unknown keys: a negative entry) and prices by (customer, model).
 *
 * The cache decides nothing about freshness: each lookup returns the entry
 * and its age, and bill.c applies the TTLs (long while the LISTEN connection
 * is up, because every change is then pushed and evicts the entry at once;
 * short while it is down).  Entries are owned here; a lookup copies what the
 * caller keeps.  Memory is bounded: past BILL_CACHE_MAX entries of a kind the
 * table of that kind is emptied (the next requests refill it). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bill-int.h"
#include "tg_json.h"

#define BILL_CACHE_MAX 200000

typedef struct kent {
    struct kent *next;
    char hash[65];
    bill_cache_key_t v; /* v.models_json owned */
    char **models;      /* parsed scope, NULL: every model */
    int nmodels;
} kent_t;

typedef struct pent {
    struct pent *next;
    int64_t customer_id;
    char *model;
    bill_cache_price_t v;
} pent_t;

struct bill_cache {
    kent_t **kb;
    size_t kcap, kn;
    pent_t **pb;
    size_t pcap, pn;
};


static uint64_t fnv(const char *s, uint64_t h) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

static void kent_free(kent_t *e) {
    for (int i = 0; i < e->nmodels; i++) free(e->models[i]);
    free(e->models);
    free(e->v.models_json);
    free(e);
}

static void pent_free(pent_t *e) {
    free(e->model);
    free(e);
}

bill_cache_t *bill_cache_new(void) {
    bill_cache_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->kcap = c->pcap = 1024;
    c->kb = calloc(c->kcap, sizeof *c->kb);
    c->pb = calloc(c->pcap, sizeof *c->pb);
    if (!c->kb || !c->pb) {
        bill_cache_free(c);
        return NULL;
    }
    return c;
}

static void clear_keys(bill_cache_t *c) {
    for (size_t i = 0; i < c->kcap; i++) {
        kent_t *e = c->kb[i], *n;
        for (; e; e = n) {
            n = e->next;
            kent_free(e);
        }
        c->kb[i] = NULL;
    }
    c->kn = 0;
}

static void clear_prices(bill_cache_t *c) {
    for (size_t i = 0; i < c->pcap; i++) {
        pent_t *e = c->pb[i], *n;
        for (; e; e = n) {
            n = e->next;
            pent_free(e);
        }
        c->pb[i] = NULL;
    }
    c->pn = 0;
}

void bill_cache_clear(bill_cache_t *c) {
    if (!c) return;
    clear_keys(c);
    clear_prices(c);
}

void bill_cache_free(bill_cache_t *c) {
    if (!c) return;
    if (c->kb && c->pb) bill_cache_clear(c);
    free(c->kb);
    free(c->pb);
    free(c);
}

/* Grow a chained table to twice its buckets once it holds as many entries. */
#define GROW(c, B, CAP, N, T, HASHOF)                                                         \
    do {                                                                                      \
        if ((c)->N < (c)->CAP) break;                                                        \
        size_t ncap_ = (c)->CAP * 2;                                                          \
        T **nb_ = calloc(ncap_, sizeof *nb_);                                                 \
        if (!nb_) break;                                                                      \
        for (size_t i_ = 0; i_ < (c)->CAP; i_++) {                                            \
            T *e_ = (c)->B[i_], *n_;                                                          \
            for (; e_; e_ = n_) {                                                             \
                n_ = e_->next;                                                                \
                size_t h_ = (size_t)(HASHOF(e_)) & (ncap_ - 1);                               \
                e_->next = nb_[h_];                                                           \
                nb_[h_] = e_;                                                                 \
            }                                                                                 \
        }                                                                                     \
        free((c)->B);                                                                         \
        (c)->B = nb_;                                                                         \
        (c)->CAP = ncap_;                                                                     \
    } while (0)

#define KHASH(e) fnv((e)->hash, 0xcbf29ce484222325ULL)
#define PHASH(e) fnv((e)->model, 0xcbf29ce484222325ULL ^ (uint64_t)(e)->customer_id * 0x9E3779B97F4A7C15ULL)

static kent_t **kslot(bill_cache_t *c, const char *hash) {
    kent_t **p = &c->kb[fnv(hash, 0xcbf29ce484222325ULL) & (c->kcap - 1)];
    while (*p && strcmp((*p)->hash, hash)) p = &(*p)->next;
    return p;
}

static pent_t **pslot(bill_cache_t *c, int64_t customer_id, const char *model) {
    uint64_t h = fnv(model, 0xcbf29ce484222325ULL ^ (uint64_t)customer_id * 0x9E3779B97F4A7C15ULL);
    pent_t **p = &c->pb[h & (c->pcap - 1)];
    while (*p && ((*p)->customer_id != customer_id || strcmp((*p)->model, model))) p = &(*p)->next;
    return p;
}

const bill_cache_key_t *bill_cache_key(bill_cache_t *c, const char *hash) {
    kent_t *e = *kslot(c, hash);
    return e ? &e->v : NULL;
}

int bill_cache_key_allows(bill_cache_t *c, const char *hash, const char *model) {
    kent_t *e = *kslot(c, hash);
    if (!e || !e->v.models_json) return 1;
    for (int i = 0; i < e->nmodels; i++)
        if (!strcmp(e->models[i], model)) return 1;
    return 0;
}

int bill_cache_put_key(bill_cache_t *c, const char *hash, const bill_cache_key_t *v) {
    if (strlen(hash) != 64) return -1;
    if (c->kn >= BILL_CACHE_MAX) clear_keys(c);
    kent_t *e = calloc(1, sizeof *e);
    if (!e) return -1;
    memcpy(e->hash, hash, 65);
    e->v = *v;
    e->v.models_json = NULL;
    if (v->models_json) {
        tg_json_t *j = tg_json_parse(v->models_json, strlen(v->models_json), NULL, NULL);
        size_t n = j ? tg_json_len(j) : 0;
        e->v.models_json = strdup(v->models_json);
        e->models = calloc(n ? n : 1, sizeof *e->models);
        if (!j || !e->v.models_json || !e->models) {
            tg_json_free(j);
            kent_free(e);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            size_t l;
            const char *m = tg_json_str(tg_json_at(j, i), &l);
            if (m && !(e->models[e->nmodels] = strndup(m, l))) {
                tg_json_free(j);
                kent_free(e);
                return -1;
            }
            if (m) e->nmodels++;
        }
        tg_json_free(j);
    }
    kent_t **p = kslot(c, hash);
    if (*p) { /* replace */
        e->next = (*p)->next;
        kent_free(*p);
        *p = e;
        return 0;
    }
    e->next = NULL;
    *p = e;
    c->kn++;
    GROW(c, kb, kcap, kn, kent_t, KHASH);
    return 0;
}

void bill_cache_evict_key(bill_cache_t *c, const char *hash) {
    kent_t **p = kslot(c, hash), *e = *p;
    if (!e) return;
    *p = e->next;
    kent_free(e);
    c->kn--;
}

void bill_cache_evict_customer(bill_cache_t *c, int64_t customer_id) {
    for (size_t i = 0; i < c->kcap; i++) {
        kent_t **p = &c->kb[i];
        while (*p) {
            if ((*p)->v.state == BILL_OK && (*p)->v.key.customer_id == customer_id) {
                kent_t *e = *p;
                *p = e->next;
                kent_free(e);
                c->kn--;
            } else {
                p = &(*p)->next;
            }
        }
    }
    for (size_t i = 0; i < c->pcap; i++) {
        pent_t **p = &c->pb[i];
        while (*p) {
            if ((*p)->customer_id == customer_id) {
                pent_t *e = *p;
                *p = e->next;
                pent_free(e);
                c->pn--;
            } else {
                p = &(*p)->next;
            }
        }
    }
}

const bill_cache_price_t *bill_cache_price(bill_cache_t *c, int64_t customer_id, const char *model) {
    pent_t *e = *pslot(c, customer_id, model);
    return e ? &e->v : NULL;
}

int bill_cache_put_price(bill_cache_t *c, int64_t customer_id, const char *model, const bill_cache_price_t *v) {
    pent_t **p = pslot(c, customer_id, model);
    if (*p) {
        (*p)->v = *v;
        return 0;
    }
    if (c->pn >= BILL_CACHE_MAX) {
        clear_prices(c);
        p = pslot(c, customer_id, model);
    }
    pent_t *e = calloc(1, sizeof *e);
    if (!e || !(e->model = strdup(model))) {
        free(e);
        return -1;
    }
    e->customer_id = customer_id;
    e->v = *v;
    *p = e;
    c->pn++;
    GROW(c, pb, pcap, pn, pent_t, PHASH);
    return 0;
}

size_t bill_cache_size(const bill_cache_t *c) { return c ? c->kn + c->pn : 0; }
