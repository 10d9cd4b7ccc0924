/* eng_sched_piece.c — how many prompt tokens a step takes while streams are
 * decoding: sized by time, so that a prefill piece makes the streams' step at
 * most (1 + stall) times as long as their step alone.
 *
 * The model of a step is t = a + b * n: a, the step of the decoding streams
 * alone (memory-bound: the experts their tokens route to), b, the time one
 * prompt token adds (compute-bound).  Both are learned from the steps the
 * scheduler runs (eng_piece_observe): a from steps without prompt tokens, b
 * from steps without decoding streams (t / n: the fixed part counted in, so b
 * errs high and the piece small), and, while every step is mixed, a from t -
 * b n (or b from (t - a) / n while b is unknown).  The piece is stall * a / b
 * tokens, at least lo (a prompt always progresses) and at most hi
 * (decode_prefill); lo while a or b is unknown.  Each is a moving average
 * (weight 1/4 for the newest step), so a change in the number of streams or
 * in the host's speed is followed within a few steps.  Pure: no clock, no I/O. */
#include "eng_sched.h"

void eng_piece_init(eng_piece_t *p) {
    p->dec_s = -1;
    p->tok_s = -1;
}

static void ewma(double *v, double x) { *v = *v < 0 ? x : 0.75 * *v + 0.25 * x; }

void eng_piece_observe(eng_piece_t *p, double step_s, int n_decode, int n_prompt) {
    if (!(step_s >= 0)) return;
    if (n_decode > 0 && n_prompt == 0) {
        ewma(&p->dec_s, step_s);
    } else if (n_decode == 0 && n_prompt > 0) {
        ewma(&p->tok_s, step_s / n_prompt);
    } else if (n_decode > 0 && n_prompt > 0) {
        if (p->tok_s >= 0) {
            double a = step_s - p->tok_s * n_prompt;
            ewma(&p->dec_s, a > 0 ? a : 0);
        } else if (p->dec_s >= 0) {
            double b = (step_s - p->dec_s) / n_prompt;
            ewma(&p->tok_s, b > 0 ? b : 0);
        }
    }
}

int eng_piece_size(const eng_piece_t *p, double stall, int lo, int hi) {
    if (lo > hi) lo = hi;
    if (p->dec_s < 0 || p->tok_s < 0) return lo;
    if (p->tok_s <= 0) return hi;
    double n = stall * p->dec_s / p->tok_s;
    n += 1e-9; /* 19.999999... from the averages is 20 */
    return n <= lo ? lo : n >= hi ? hi : (int)n;
}
