/* eng_sample.h — token sampling for the serving path (private to engine/).
 *
 * A deterministic per-request RNG (xoshiro256** seeded through splitmix64)
 * and a sampler that turns one row of logits into a token id: greedy argmax at
 * temperature 0, otherwise softmax(logits / T) restricted to the top-p nucleus.
 * Only ids < n_allowed are ever produced (the model's lm_head may have more
 * rows than the tokenizer has ids).  Same seed + same logits = same id. */
#ifndef ENG_SAMPLE_H
#define ENG_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t s[4];
} eng_rng_t;

void eng_rng_seed(eng_rng_t *r, uint64_t seed);
uint64_t eng_rng_next(eng_rng_t *r);
/* Uniform double in [0, 1) with 53 random bits. */
double eng_rng_uniform(eng_rng_t *r);

typedef struct {
    int32_t id;
    float bias;
} eng_bias_t;

typedef struct {
    float temperature;       /* 0: greedy */
    float top_p;             /* (0, 1]; 1: whole distribution */
    float presence_penalty;  /* OpenAI: logit -= presence * (count > 0) */
    float frequency_penalty; /* OpenAI: logit -= frequency * count */
    int top_k;               /* 0: off; else only the k most likely ids (before top_p) */
    const eng_bias_t *bias;  /* logit_bias: logit += bias (ids outside the range ignored) */
    int n_bias;
} eng_sample_params_t;

typedef struct eng_sampler eng_sampler_t;

/* A sampler with scratch space for n_allowed ids; one sampler per thread.
 * Returns NULL on out of memory. */
eng_sampler_t *eng_sampler_new(int32_t n_allowed);
void eng_sampler_free(eng_sampler_t *s); /* accepts NULL */

/* Pick the next id from logits[0 .. n_allowed-1] (the row may be longer; the
 * rest is ignored).  prev/n_prev are the ids generated so far (for the
 * penalties; may be NULL/0).  logits is modified (penalties applied in
 * place).  Returns the id, or -1 when n_allowed is 0. */
int32_t eng_sample(eng_sampler_t *s, float *logits, const eng_sample_params_t *p, eng_rng_t *rng,
                   const int32_t *prev, size_t n_prev);

/* eng_sample in two halves, so that a caller can mask the logits in between
 * (constrained decoding): eng_sample_prepare applies the penalties and the
 * logit bias in place; eng_sample_pick chooses (greedy, or top-k, then top-p,
 * then the seeded draw).  Ids whose logit is -inf are never chosen unless
 * every logit is. */
void eng_sample_prepare(eng_sampler_t *s, float *logits, const eng_sample_params_t *p, const int32_t *prev,
                        size_t n_prev);
int32_t eng_sample_pick(eng_sampler_t *s, const float *logits, const eng_sample_params_t *p, eng_rng_t *rng);
/* eng_sample_pick with the uniform draw u in [0, 1) given instead of taken
 * from an RNG: *used is 1 when the pick consumed it (0: greedy, where
 * eng_sample_pick draws nothing).  The semantics a backend's sampler follows
 * (eng_forward_sample). */
int32_t eng_sample_pick_u(eng_sampler_t *s, const float *logits, const eng_sample_params_t *p, double u, int *used);
/* 1 when p needs nothing but the logits (no penalties, no logit bias), so
 * that a backend can sample where the logits are. */
int eng_sample_on_backend(const eng_sample_params_t *p);

#define ENG_MAX_TOP_LOGPROBS 20

/* Log-probabilities of one generated token (log-softmax of the logits after
 * penalties, before temperature, over the ids the tokenizer knows). */
typedef struct {
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_id[ENG_MAX_TOP_LOGPROBS];
    float top_logprob[ENG_MAX_TOP_LOGPROBS]; /* descending */
} eng_logprob_t;

/* Fill lp for the chosen id from logits[0 .. n): one pass for the
 * normaliser, one for the n_top best ids (ties: lower id first). */
void eng_logprob_compute(const float *logits, int32_t n, int32_t id, int n_top, eng_logprob_t *lp);

#endif
