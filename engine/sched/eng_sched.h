/* eng_sched.h — the serving scheduler (private to engine/): one thread that
 * owns the model and runs continuous batching over submitted jobs, plus the
 * pure text pipeline each job's tokens go through (stream decode -> stop
 * strings -> <think> split).
 *
 * Threads: eng_sched_submit/cancel/take/stats are called from the server's
 * event-loop thread; everything else about a running job happens on the
 * scheduler thread.  Events flow back through a mutex-protected FIFO; the
 * scheduler calls the wake callback after queueing events (the server makes
 * it an event_active()). */
#ifndef ENG_SCHED_H
#define ENG_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "eng.h"
#include "tg_buf.h"
#include "tg_clock.h"
#include "eng_gram.h"
#include "eng_sample.h"
#include "tok.h"

/* Text is gathered in tg_buf_t (common/tg_buf.h). */

/* ---- stop strings, matched across token boundaries ------------------------ */

#define ENG_MAX_STOP 16 /* = API_MAX_STOP */

/* Text pushed in is emitted as soon as no stop string can start inside it;
 * the tail that is a prefix of some stop string is held back.  When a stop
 * string appears, the text before it is emitted and the matcher is done (the
 * stop string itself is never emitted). */
typedef struct {
    const char *stop[ENG_MAX_STOP]; /* borrowed, not owned */
    size_t stop_len[ENG_MAX_STOP];
    int n_stop;
    tg_buf_t hold;
    int matched;
    size_t in_total, out_total; /* bytes pushed in, and emitted (the text before a match, at most) */
} eng_stop_t;

void eng_stop_init(eng_stop_t *st, const char *const *stop, const size_t *len, int n);
/* Returns 1 when a stop string matched (now or before), else 0; -1 on OOM. */
int eng_stop_push(eng_stop_t *st, const char *text, size_t len, tg_buf_t *out);
/* End of generation: emit whatever is held back (nothing once matched). */
int eng_stop_flush(eng_stop_t *st, tg_buf_t *out);
void eng_stop_free(eng_stop_t *st);

/* ---- DeepSeek-R1 <think> ... </think> splitting --------------------------- */

/* A thin streaming wrapper over the tokenizer's R1 splitter (tok_r1_feed):
 * text before "</think>" is reasoning (an optional leading "<think>" and the
 * surrounding newlines dropped), text after it is content. */
typedef enum {
    ENG_THINK_OFF = 0,  /* no splitting: everything is content */
    ENG_THINK_DETECT,   /* R1, the prompt did not open <think> (a leading one is dropped) */
    ENG_THINK_IN,       /* R1, the prompt already opened <think> */
} eng_think_mode_t;

typedef struct {
    int on;
    tok_r1_state_t st;
    char *rbuf, *cbuf;  /* scratch for tok_r1_feed */
    size_t cap;
} eng_think_t;

void eng_think_init(eng_think_t *th, eng_think_mode_t mode);
/* Route text to reasoning or content. Returns 0 or -1 on OOM. */
int eng_think_push(eng_think_t *th, const char *text, size_t len, tg_buf_t *content,
                   tg_buf_t *reasoning);
/* End of generation: release what is held back. */
int eng_think_flush(eng_think_t *th, tg_buf_t *content, tg_buf_t *reasoning);
/* Nonzero while generated text still goes to reasoning. */
int eng_think_in_reasoning(const eng_think_t *th);
void eng_think_free(eng_think_t *th);

/* ---- jobs and the scheduler ---------------------------------------------- */

typedef enum {
    ENG_FINISH_NONE = 0,
    ENG_FINISH_STOP,      /* EOS or a stop string */
    ENG_FINISH_LENGTH,    /* max_tokens reached */
    ENG_FINISH_CANCELLED, /* eng_sched_cancel or shutdown */
    ENG_FINISH_ERROR,     /* the model failed; message in the event */
    ENG_FINISH_TOOL_CALLS, /* (the server's name for a STOP that ended a tool-call block) */
} eng_finish_t;

/* What to run.  eng_sched_submit takes ownership of prompt, stop[], bias
 * and gram (malloc'd) whether it succeeds or not. */
typedef struct {
    int32_t *prompt;
    int n_prompt;
    int max_tokens; /* >= 1; n_prompt + max_tokens <= the model's context */
    eng_sample_params_t sp;
    uint64_t seed;
    char *stop[ENG_MAX_STOP];
    size_t stop_len[ENG_MAX_STOP];
    int n_stop;
    eng_think_mode_t think;
    int logprobs;      /* report per-token logprobs */
    int top_logprobs;  /* 0..ENG_MAX_TOP_LOGPROBS alternatives per token */
    eng_bias_t *bias;  /* logit_bias (malloc'd), n_bias entries; sp.bias points here */
    int n_bias;
    /* Constrained decoding: gram (malloc'd by eng_gram_*) masks every step
     * from the first, or, with gram_trigger >= 0 (tool_choice "auto"), from
     * the moment the model samples gram_trigger (which the grammar accepts
     * as its first token).  tool_trigger >= 0: from that id on, generated
     * tokens are a tool-call block: their raw bytes go to eng_ev_t.tool, not
     * through the text pipeline. */
    eng_gram_t *gram;
    int32_t gram_trigger;
    int32_t tool_trigger;
    uint64_t cache_root; /* the prefix cache's namespace (tg_prefix_root); 0: the default one */
} eng_job_spec_t;

typedef struct eng_job eng_job_t;

/* One event per job per scheduler step that produced something.  The event
 * with finish != ENG_FINISH_NONE is the job's last; freeing it also frees the
 * job (so the server may call eng_sched_cancel until it has seen that event). */
typedef struct eng_ev {
    struct eng_ev *next;
    eng_job_t *job;
    void *user;           /* as given to eng_sched_submit */
    tg_buf_t content;    /* new content text (complete UTF-8) */
    tg_buf_t reasoning;  /* new reasoning text */
    tg_buf_t tool;       /* new bytes of the tool-call block (markers as their text) */
    int new_tokens;       /* tokens generated in this step (0 or 1) */
    int first_token;      /* this event carries the job's first generated token */
    /* Logprobs when asked for: the entries of the tokens whose text this
     * event's content starts (in order; malloc'd, n_lp of them).  With stop
     * strings a token's entry waits while its text is held back, and the
     * tokens whose text lies wholly inside or after a matched stop string
     * are never listed (the one straddling the cut is: some of its text was
     * returned).  EOS has none. */
    eng_logprob_t *lp;
    int n_lp;
    int64_t t_ns;         /* monotonic time the token(s) were sampled */
    eng_finish_t finish;
    int prompt_tokens, completion_tokens, reasoning_tokens; /* set on the last event */
    int cached_tokens;    /* prompt tokens whose KV came from the prefix cache (last event) */
    char err[160];
} eng_ev_t;

void eng_ev_free(eng_ev_t *ev); /* accepts NULL; frees the job with the last event */

typedef struct {
    int max_batch;     /* sequences in one forward call (default 64) */
    int max_queue;     /* waiting jobs before submit refuses (default 256) */
    int prefill_chunk; /* prompt chunk size and per-step prefill budget (default 512) */
    int decode_prefill; /* the most prompt tokens a step takes while some stream decodes (default prefill_chunk/8) */
    double decode_stall; /* ... sized so that the streams' step grows at most this much (default 0.5: 1.5x) */
    int mem_wait_ms;   /* a token's event that cannot be allocated is retried this long, then the job
                          fails (ENG_FINISH_ERROR, "out of memory ..."); default 30000.  A job's last
                          event is allocated at submit, so a job can always end. */
} eng_sched_opts_t;

/* The prefill piece beside decoding streams (eng_sched_piece.c): a step's
 * time modelled as a + b * prompt tokens, a and b learned from the steps run.
 * eng_piece_size: tokens for the next step, stall * a / b within [lo, hi]
 * (lo while a or b is unknown).  eng_piece_observe: one step's forward time
 * with n_decode decoding streams and n_prompt prompt tokens. */
typedef struct {
    double dec_s;  /* a: seconds of the decoding streams' step alone (< 0: unknown) */
    double tok_s;  /* b: seconds one prompt token adds (< 0: unknown) */
} eng_piece_t;
void eng_piece_init(eng_piece_t *p);
void eng_piece_observe(eng_piece_t *p, double step_s, int n_decode, int n_prompt);
int eng_piece_size(const eng_piece_t *p, double stall, int lo, int hi);

typedef struct eng_sched eng_sched_t;

/* Start the scheduler thread.  The model and tokenizer are borrowed and must
 * outlive the scheduler.  wake(arg) is called from the scheduler thread after
 * events are queued.  NULL with a message in err on failure. */
eng_sched_t *eng_sched_new(eng_model_t *m, const tok_t *t, const eng_sched_opts_t *o,
                           void (*wake)(void *), void *wake_arg, char *err, size_t errlen);
/* Stop the thread (cancelling every job, each gets its last event, which the
 * caller must still take and free) and free the scheduler.  Accepts NULL. */
void eng_sched_free(eng_sched_t *s);

enum { ENG_SUBMIT_OK = 0, ENG_SUBMIT_FULL = -1, ENG_SUBMIT_CLOSED = -2, ENG_SUBMIT_NOMEM = -3 };
/* Queue a job.  On success *job is set (valid until its last event is freed).
 * Returns ENG_SUBMIT_*. */
int eng_sched_submit(eng_sched_t *s, eng_job_spec_t *spec, void *user, eng_job_t **job);
/* Ask for a job to end early; its last event says ENG_FINISH_CANCELLED
 * (unless it had already finished).  Thread-safe, idempotent. */
void eng_sched_cancel(eng_sched_t *s, eng_job_t *job);
/* Refuse new jobs from now on (submit returns ENG_SUBMIT_CLOSED). */
void eng_sched_close(eng_sched_t *s);
/* Cancel every queued and running job. */
void eng_sched_cancel_all(eng_sched_t *s);
/* Take every queued event, oldest first (a NULL-terminated list). */
eng_ev_t *eng_sched_take(eng_sched_t *s);

typedef struct {
    int active;  /* sequences in the running batch */
    int queued;  /* submitted, not yet admitted (preempted ones included) */
    uint64_t steps, forward_ns;
    long kv_tokens; /* tokens in the KV caches of running sequences */
    eng_kv_stats_t kv; /* the block pool after the last step */
    uint64_t preemptions;       /* sequences sent back to the queue for want of blocks */
    uint64_t admitted_prompt_tokens, cached_prompt_tokens; /* prompts admitted, and of those reused */
} eng_sched_stats_t;
void eng_sched_stats(eng_sched_t *s, eng_sched_stats_t *out);


#endif
