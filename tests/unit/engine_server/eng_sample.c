/* Unit tests for engine/sched/eng_sample.c: RNG determinism, greedy, the vocab
 * restriction, top-p nucleus, temperature and penalties. */
#include "../../../engine/sched/eng_sample.c"

#include <stdlib.h>

#include "tg_test.h"

static void test_rng_deterministic(void) {
    eng_rng_t a, b, c;
    eng_rng_seed(&a, 42);
    eng_rng_seed(&b, 42);
    eng_rng_seed(&c, 43);
    int same = 1, diff = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = eng_rng_next(&a), y = eng_rng_next(&b), z = eng_rng_next(&c);
        same &= x == y;
        diff += x != z;
    }
    CHECK(same);
    CHECK(diff > 95);
    double lo = 1, hi = 0;
    for (int i = 0; i < 10000; i++) {
        double u = eng_rng_uniform(&a);
        CHECK(u >= 0 && u < 1);
        if (u < lo) lo = u;
        if (u > hi) hi = u;
    }
    CHECK(lo < 0.01 && hi > 0.99);
}

static void test_greedy_and_restriction(void) {
    float lg[10] = {0, 1, 5, 2, 5, 0, 0, 0, 100, 100}; /* ids 8, 9 are beyond the tokenizer */
    eng_sampler_t *s = eng_sampler_new(8);
    eng_sample_params_t p = {.temperature = 0, .top_p = 1};
    eng_rng_t r;
    eng_rng_seed(&r, 1);
    CHECK_EQ_I(eng_sample(s, lg, &p, &r, NULL, 0), 2); /* ties go to the lower id */
    p.temperature = 1.0f;
    for (int i = 0; i < 2000; i++) {
        float l2[10];
        memcpy(l2, lg, sizeof l2);
        int32_t id = eng_sample(s, l2, &p, &r, NULL, 0);
        CHECK(id >= 0 && id < 8);
    }
    eng_sampler_free(s);
}

static void test_seeded_sampling_repeats(void) {
    enum { V = 1000 };
    float *lg = malloc(V * sizeof *lg), *l2 = malloc(V * sizeof *l2);
    for (int i = 0; i < V; i++) lg[i] = (float)((i * 7919) % 1000) / 200.0f;
    eng_sampler_t *s = eng_sampler_new(V);
    eng_sample_params_t p = {.temperature = 0.9f, .top_p = 0.95f};
    int32_t seq1[50], seq2[50], seq3[50];
    for (int run = 0; run < 3; run++) {
        eng_rng_t r;
        eng_rng_seed(&r, run == 2 ? 8 : 7);
        int32_t *out = run == 0 ? seq1 : run == 1 ? seq2 : seq3;
        for (int i = 0; i < 50; i++) {
            memcpy(l2, lg, V * sizeof *lg);
            out[i] = eng_sample(s, l2, &p, &r, NULL, 0);
        }
    }
    CHECK(!memcmp(seq1, seq2, sizeof seq1));
    CHECK(memcmp(seq1, seq3, sizeof seq1) != 0);
    eng_sampler_free(s);
    free(lg);
    free(l2);
}

static void test_top_p(void) {
    /* probabilities 0.5, 0.3, 0.15, 0.05 at T=1 */
    float base[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    eng_sampler_t *s = eng_sampler_new(4);
    eng_rng_t r;
    eng_rng_seed(&r, 123);
    int counts[4] = {0};
    eng_sample_params_t p = {.temperature = 1, .top_p = 0.75f}; /* nucleus {0, 1} */
    for (int i = 0; i < 20000; i++) {
        float l[4];
        memcpy(l, base, sizeof l);
        counts[eng_sample(s, l, &p, &r, NULL, 0)]++;
    }
    CHECK_EQ_I(counts[2] + counts[3], 0);
    CHECK(counts[0] > 11500 && counts[0] < 13500); /* 0.5/0.8 = 62.5% */
    /* top_p = 1: every id appears, roughly in proportion */
    memset(counts, 0, sizeof counts);
    p.top_p = 1;
    for (int i = 0; i < 20000; i++) {
        float l[4];
        memcpy(l, base, sizeof l);
        counts[eng_sample(s, l, &p, &r, NULL, 0)]++;
    }
    CHECK(counts[3] > 700 && counts[3] < 1300);
    CHECK(counts[0] > 9500 && counts[0] < 10500);
    /* tiny top_p: only the argmax */
    p.top_p = 0.01f;
    for (int i = 0; i < 200; i++) {
        float l[4];
        memcpy(l, base, sizeof l);
        CHECK_EQ_I(eng_sample(s, l, &p, &r, NULL, 0), 0);
    }
    eng_sampler_free(s);
}

static const float *bf_p;
static int bf_cmp(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return before(bf_p, x, y) ? -1 : before(bf_p, y, x) ? 1 : 0;
}

/* nucleus() (quickselect) picks exactly the set a full sort would. */
static void test_nucleus_matches_sort(void) {
    enum { V = 3000 };
    float *p = malloc(V * sizeof *p);
    int32_t *a = malloc(V * sizeof *a), *b = malloc(V * sizeof *b);
    char *in = malloc(V);
    eng_rng_t r;
    eng_rng_seed(&r, 99);
    const double tops[] = {0.01, 0.1, 0.5, 0.9, 0.99, 0.999999};
    for (int round = 0; round < 20; round++) {
        double sum = 0;
        for (int i = 0; i < V; i++) {
            /* coarse values make many ties */
            p[i] = (float)(round % 2 ? floor(eng_rng_uniform(&r) * 8) : exp(eng_rng_uniform(&r) * 10));
            sum += p[i];
        }
        for (size_t t = 0; t < sizeof tops / sizeof tops[0]; t++) {
            double want = tops[t] * sum;
            for (int i = 0; i < V; i++) a[i] = b[i] = i;
            int32_t k = nucleus(p, a, V, want);
            bf_p = p;
            qsort(b, V, sizeof *b, bf_cmp);
            double acc = 0;
            int32_t kb = 0;
            while (kb < V) {
                acc += p[b[kb++]];
                if (acc >= want) break;
            }
            /* mass sums differ in rounding; allow the boundary to move by one */
            CHECK(k >= kb - 1 && k <= kb + 1);
            int32_t kk = k < kb ? k : kb;
            memset(in, 0, V);
            for (int32_t i = 0; i < k; i++) in[a[i]] = 1;
            int ok = 1;
            for (int32_t i = 0; i < kk; i++) ok &= in[b[i]];
            CHECK(ok);
        }
    }
    free(p), free(a), free(b), free(in);
}

/* eng_sample_pick_u with the draw the RNG would give is eng_sample_pick, and
 * it says whether it used the draw (greedy picks draw nothing); top-k/top-p
 * walk the kept set in id order: u near 0 gives its lowest id, near 1 its
 * highest. */
static void test_pick_u(void) {
    enum { V = 500 };
    float *lg = malloc(V * sizeof *lg);
    eng_sampler_t *s = eng_sampler_new(V);
    eng_rng_t r, r2;
    eng_rng_seed(&r, 77);
    const eng_sample_params_t ps[] = {
        {.temperature = 0, .top_p = 1},       {.temperature = 1, .top_p = 1, .top_k = 1},
        {.temperature = 0.7f, .top_p = 1},    {.temperature = 1, .top_p = 0.9f},
        {.temperature = 1.3f, .top_p = 1, .top_k = 20}, {.temperature = 0.8f, .top_p = 0.5f, .top_k = 50},
    };
    for (int round = 0; round < 200; round++) {
        for (int i = 0; i < V; i++) lg[i] = (float)(eng_rng_uniform(&r) * 8 - 4);
        if (round % 7 == 3) lg[round % V] = -INFINITY;
        const eng_sample_params_t *p = &ps[round % 6];
        r2 = r;
        double u = eng_rng_uniform(&r2);
        int used = -1;
        int32_t a = eng_sample_pick_u(s, lg, p, u, &used);
        eng_rng_t r3 = r;
        int32_t b = eng_sample_pick(s, lg, p, &r3);
        CHECK_EQ_I(a, b);
        CHECK_EQ_I(used, round % 6 >= 2);
        CHECK(used ? !memcmp(&r3, &r2, sizeof r2) : !memcmp(&r3, &r, sizeof r));
        r = r2;
    }
    /* the kept set {0, 1} (top_k 2) walked in id order */
    float l4[4] = {1, 2, 0, -1};
    eng_sampler_t *s4 = eng_sampler_new(4);
    eng_sample_params_t p = {.temperature = 1, .top_p = 1, .top_k = 2};
    int used;
    CHECK_EQ_I(eng_sample_pick_u(s4, l4, &p, 0.0, &used), 0);
    CHECK_EQ_I(eng_sample_pick_u(s4, l4, &p, 0.999, &used), 1);
    p.top_k = 0, p.top_p = 0.2f; /* only id 1 */
    CHECK_EQ_I(eng_sample_pick_u(s4, l4, &p, 0.0, &used), 1);
    eng_sample_params_t q = {.temperature = 1, .top_p = 1, .bias = NULL, .n_bias = 0};
    CHECK(eng_sample_on_backend(&q));
    q.presence_penalty = 0.5f;
    CHECK(!eng_sample_on_backend(&q));
    eng_sampler_free(s4);
    eng_sampler_free(s);
    free(lg);
}

static void test_low_temperature_sharpens(void) {
    float base[3] = {1.0f, 0.5f, 0.0f};
    eng_sampler_t *s = eng_sampler_new(3);
    eng_rng_t r;
    eng_rng_seed(&r, 5);
    eng_sample_params_t p = {.temperature = 0.05f, .top_p = 1};
    int top = 0;
    for (int i = 0; i < 1000; i++) {
        float l[3];
        memcpy(l, base, sizeof l);
        top += eng_sample(s, l, &p, &r, NULL, 0) == 0;
    }
    CHECK(top > 990);
    eng_sampler_free(s);
}

static void test_penalties(void) {
    float l[4] = {3, 2.5f, 0, 0};
    eng_sampler_t *s = eng_sampler_new(4);
    eng_rng_t r;
    eng_rng_seed(&r, 1);
    int32_t prev[3] = {0, 0, 1};
    eng_sample_params_t p = {.temperature = 0, .top_p = 1, .presence_penalty = 0.5f, .frequency_penalty = 0.25f};
    /* id 0: 3 - 0.5 - 2*0.25 = 2.0; id 1: 2.5 - 0.5 - 0.25 = 1.75 */
    CHECK_EQ_I(eng_sample(s, l, &p, &r, prev, 3), 0);
    CHECK(fabsf(l[0] - 2.0f) < 1e-6f && fabsf(l[1] - 1.75f) < 1e-6f);
    /* counts are left zeroed: a second call with no history changes nothing */
    float l2[4] = {1, 2, 0, 0};
    CHECK_EQ_I(eng_sample(s, l2, &p, &r, NULL, 0), 1);
    CHECK(l2[0] == 1 && l2[1] == 2);
    eng_sampler_free(s);
}

static void test_logprobs(void) {
    float l[6] = {1, 3, 3, 0, -1, NAN};
    eng_logprob_t lp;
    eng_logprob_compute(l, 5, 4, 3, &lp); /* the NaN at 5 is beyond n */
    double z = exp(1) + 2 * exp(3) + exp(0) + exp(-1);
    CHECK_EQ_I(lp.id, 4);
    CHECK(fabs(lp.logprob - (-1 - log(z))) < 1e-5);
    CHECK_EQ_I(lp.n_top, 3);
    CHECK_EQ_I(lp.top_id[0], 1); /* tie 1 vs 2: lower id first */
    CHECK_EQ_I(lp.top_id[1], 2);
    CHECK_EQ_I(lp.top_id[2], 0);
    CHECK(fabs(lp.top_logprob[0] - (3 - log(z))) < 1e-5);
    CHECK(lp.top_logprob[0] >= lp.top_logprob[1] && lp.top_logprob[1] >= lp.top_logprob[2]);
    eng_logprob_compute(l, 5, 1, 0, &lp);
    CHECK_EQ_I(lp.n_top, 0);
    eng_logprob_compute(l, 5, 1, 99, &lp); /* more than n: all of them */
    CHECK_EQ_I(lp.n_top, 5);
    CHECK_EQ_I(lp.top_id[4], 4);
    /* probabilities sum to 1 */
    double sum = 0;
    for (int i = 0; i < 5; i++) sum += exp(lp.top_logprob[i]);
    CHECK(fabs(sum - 1) < 1e-5);
}

TG_TEST_MAIN(test_logprobs, test_rng_deterministic, test_greedy_and_restriction, test_seeded_sampling_repeats,
             test_top_p, test_nucleus_matches_sort, test_pick_u, test_low_temperature_sharpens, test_penalties)
