/* eng_sample.c — greedy, temperature and top-p sampling with a seeded RNG.
 *
 * top_k keeps the k most likely ids (ties: the lower id) before top-p; the
 * draw then walks the kept set in id order (the order a device sampler can
 * reproduce, engine/cuda/eng_cuda_sample.cu).
 * Invariants: only ids < n_allowed are returned; for equal inputs (logits,
 * params, RNG state) the result is the same on every run and machine with
 * IEEE floats (sums run in double, in a fixed order; ties break to the lower
 * id). */
#include "eng_sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct eng_sampler {
    int32_t n;          /* ids allowed */
    int32_t *idx;       /* (n) candidate ids, partitioned for top-p */
    float *prob;        /* (n) probabilities indexed by id */
    int32_t *counts;    /* (n) penalty counts, kept all-zero between calls */
};

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void eng_rng_seed(eng_rng_t *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t eng_rng_next(eng_rng_t *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double eng_rng_uniform(eng_rng_t *r) { return (double)(eng_rng_next(r) >> 11) * 0x1.0p-53; }

eng_sampler_t *eng_sampler_new(int32_t n_allowed) {
    eng_sampler_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->n = n_allowed > 0 ? n_allowed : 0;
    size_t n = s->n ? (size_t)s->n : 1;
    s->idx = malloc(n * sizeof *s->idx);
    s->prob = malloc(n * sizeof *s->prob);
    s->counts = calloc(n, sizeof *s->counts);
    if (!s->idx || !s->prob || !s->counts) {
        eng_sampler_free(s);
        return NULL;
    }
    return s;
}

void eng_sampler_free(eng_sampler_t *s) {
    if (!s) return;
    free(s->idx);
    free(s->prob);
    free(s->counts);
    free(s);
}

static void apply_penalties(eng_sampler_t *s, float *logits, const eng_sample_params_t *p,
                            const int32_t *prev, size_t n_prev) {
    if (!prev || !n_prev || (p->presence_penalty == 0 && p->frequency_penalty == 0)) return;
    for (size_t i = 0; i < n_prev; i++)
        if (prev[i] >= 0 && prev[i] < s->n) s->counts[prev[i]]++;
    for (size_t i = 0; i < n_prev; i++) {
        int32_t id = prev[i];
        if (id < 0 || id >= s->n || !s->counts[id]) continue;
        logits[id] -= p->frequency_penalty * (float)s->counts[id] + p->presence_penalty;
        s->counts[id] = 0; /* applied once per distinct id; leaves counts zeroed */
    }
}

static int32_t argmax(const float *logits, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best] || (isnan(logits[best]) && !isnan(logits[i]))) best = i;
    return best;
}

/* Strict total order "a comes before b": higher probability first, then the
 * lower id. */
static inline int before(const float *p, int32_t a, int32_t b) {
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}

/* Reorder idx[0..m) so that idx[0..k) holds the k first ids in `before`
 * order, for the smallest k whose probability mass reaches want; returns k.
 * Quickselect on mass, expected O(m), deterministic (middle pivot). */
static int32_t nucleus(const float *p, int32_t *idx, int32_t m, double want) {
    int32_t lo = 0, hi = m;
    while (hi - lo > 0) {
        int32_t mid = lo + (hi - lo) / 2, t;
        t = idx[mid], idx[mid] = idx[hi - 1], idx[hi - 1] = t; /* pivot to the end */
        int32_t pv = idx[hi - 1], w = lo;
        double mass = 0;
        for (int32_t i = lo; i < hi - 1; i++)
            if (before(p, idx[i], pv)) {
                mass += p[idx[i]];
                t = idx[i], idx[i] = idx[w], idx[w] = t;
                w++;
            }
        t = idx[w], idx[w] = idx[hi - 1], idx[hi - 1] = t; /* pivot at w */
        if (mass >= want) {
            hi = w; /* the answer lies strictly before the pivot */
        } else if (mass + p[pv] >= want) {
            return w + 1;
        } else {
            want -= mass + p[pv];
            lo = w + 1;
        }
    }
    return lo > 0 ? lo : 1;
}

void eng_sample_prepare(eng_sampler_t *s, float *logits, const eng_sample_params_t *p, const int32_t *prev,
                        size_t n_prev) {
    apply_penalties(s, logits, p, prev, n_prev);
    for (int i = 0; i < p->n_bias; i++)
        if (p->bias[i].id >= 0 && p->bias[i].id < s->n) logits[p->bias[i].id] += p->bias[i].bias;
}

/* Reorder idx[0..m) so that idx[0..k) are the k first ids in `before`
 * order (quickselect, deterministic middle pivot). */
static void top_k_select(const float *p, int32_t *idx, int32_t m, int32_t k) {
    int32_t lo = 0, hi = m;
    while (hi - lo > 1) {
        int32_t mid = lo + (hi - lo) / 2, t;
        t = idx[mid], idx[mid] = idx[hi - 1], idx[hi - 1] = t;
        int32_t pv = idx[hi - 1], w = lo;
        for (int32_t i = lo; i < hi - 1; i++)
            if (before(p, idx[i], pv)) t = idx[i], idx[i] = idx[w], idx[w] = t, w++;
        t = idx[w], idx[w] = idx[hi - 1], idx[hi - 1] = t;
        if (w == k || w + 1 == k) return;
        if (w > k) hi = w;
        else lo = w + 1;
    }
}

/* The pick with the draw u either given (rng NULL) or taken from rng exactly
 * when it is needed (a greedy pick draws nothing); *used says which. */
static int32_t pick(eng_sampler_t *s, const float *logits, const eng_sample_params_t *p, eng_rng_t *rng, double u,
                    int *used) {
    int32_t n = s->n;
    *used = 0;
    if (n <= 0) return -1;
    int32_t best = argmax(logits, n);
    if (!(p->temperature > 0) || !(p->top_p > 0) || p->top_k == 1 || !isfinite(logits[best])) return best;

    /* softmax(logits / T), in double for the normaliser */
    float inv_t = 1.0f / p->temperature, mx = logits[best];
    double sum = 0;
    for (int32_t i = 0; i < n; i++) {
        float e = expf((logits[i] - mx) * inv_t); /* NaN logits: excluded below */
        s->prob[i] = e == e ? e : 0.0f;
        sum += s->prob[i];
    }
    if (rng) u = eng_rng_uniform(rng);
    *used = 1;
    if (p->top_p >= 1.0f && !(p->top_k > 0 && p->top_k < n)) {
        double target = u * sum, acc = 0;
        for (int32_t i = 0; i < n; i++) {
            acc += s->prob[i];
            if (acc > target && s->prob[i] > 0) return i;
        }
        return best;
    }
    /* top-k, then top-p: the smallest set of most likely ids whose mass
     * reaches top_p, then sample within it. */
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++)
        if (s->prob[i] > 0) s->idx[m++] = i;
    if (p->top_k > 0 && p->top_k < m) {
        top_k_select(s->prob, s->idx, m, p->top_k);
        m = p->top_k;
        sum = 0;
        for (int32_t i = 0; i < m; i++) sum += s->prob[s->idx[i]];
    }
    int32_t k = p->top_p >= 1.0f ? m : nucleus(s->prob, s->idx, m, (double)p->top_p * sum);
    /* The draw walks the set in id order (a device sampler walks it the same
     * way, engine/cuda): the set is every id up to its last member in
     * `before` order. */
    int32_t last = s->idx[0];
    for (int32_t i = 1; i < k; i++)
        if (before(s->prob, last, s->idx[i])) last = s->idx[i];
    double acc = 0;
    for (int32_t i = 0; i < n; i++)
        if (s->prob[i] > 0 && (i == last || before(s->prob, i, last))) acc += s->prob[i];
    double target = u * acc, run = 0;
    int32_t id = last;
    for (int32_t i = 0; i < n; i++)
        if (s->prob[i] > 0 && (i == last || before(s->prob, i, last))) {
            id = i;
            run += s->prob[i];
            if (run > target) return i;
        }
    return id; /* rounding: the set's largest id */
}

int32_t eng_sample_pick(eng_sampler_t *s, const float *logits, const eng_sample_params_t *p, eng_rng_t *rng) {
    int used;
    return pick(s, logits, p, rng, 0, &used);
}

int32_t eng_sample_pick_u(eng_sampler_t *s, const float *logits, const eng_sample_params_t *p, double u, int *used) {
    return pick(s, logits, p, NULL, u, used);
}

int eng_sample_on_backend(const eng_sample_params_t *p) {
    return p->presence_penalty == 0 && p->frequency_penalty == 0 && p->n_bias == 0;
}

int32_t eng_sample(eng_sampler_t *s, float *logits, const eng_sample_params_t *p, eng_rng_t *rng,
                   const int32_t *prev, size_t n_prev) {
    if (s->n <= 0) return -1;
    eng_sample_prepare(s, logits, p, prev, n_prev);
    return eng_sample_pick(s, logits, p, rng);
}

void eng_logprob_compute(const float *logits, int32_t n, int32_t id, int n_top, eng_logprob_t *lp) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int32_t i = 0; i < n; i++)
        if (!isnan(logits[i])) sum += exp((double)(logits[i] - mx));
    double lse = (double)mx + log(sum > 0 ? sum : 1);
    lp->id = id;
    lp->logprob = (float)((double)logits[id] - lse);
    if (n_top > ENG_MAX_TOP_LOGPROBS) n_top = ENG_MAX_TOP_LOGPROBS;
    if (n_top > n) n_top = n;
    /* insertion into a small sorted list: O(n) while few ids beat the tail */
    int k = 0;
    for (int32_t i = 0; i < n && n_top > 0; i++) {
        float v = logits[i];
        if (isnan(v) || (k == n_top && !(v > logits[lp->top_id[k - 1]]))) continue;
        int at = k < n_top ? k++ : n_top - 1;
        while (at > 0 && v > logits[lp->top_id[at - 1]]) {
            lp->top_id[at] = lp->top_id[at - 1];
            at--;
        }
        lp->top_id[at] = i;
    }
    lp->n_top = k;
    for (int i = 0; i < k; i++) lp->top_logprob[i] = (float)((double)logits[lp->top_id[i]] - lse);
}
