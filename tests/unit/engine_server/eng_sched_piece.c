/* Unit tests for engine/sched/eng_sched_piece.c: the prefill piece beside
 * decoding streams is sized so that their step grows at most 1 + stall times,
 * within [lo, hi], learned from observed steps. */
#include "../../../engine/sched/eng_sched_piece.c"

#include <math.h>

#include "tg_test.h"

static void test_unknown_and_clamps(void) {
    eng_piece_t p;
    eng_piece_init(&p);
    CHECK_EQ_I(eng_piece_size(&p, 0.5, 16, 64), 16); /* nothing known: the smallest piece */
    eng_piece_observe(&p, 1.0, 16, 0);               /* a = 1 s */
    CHECK_EQ_I(eng_piece_size(&p, 0.5, 16, 64), 16); /* b still unknown */
    eng_piece_observe(&p, 5.12, 0, 512);             /* b = 10 ms a token */
    CHECK_EQ_I(eng_piece_size(&p, 0.5, 16, 64), 50); /* 0.5 s / 10 ms */
    CHECK_EQ_I(eng_piece_size(&p, 2.0, 16, 64), 64); /* capped at hi */
    CHECK_EQ_I(eng_piece_size(&p, 0.1, 16, 64), 16); /* at least lo */
    CHECK_EQ_I(eng_piece_size(&p, 0.5, 80, 64), 64); /* lo above hi: hi */
    eng_piece_observe(&p, NAN, 16, 0);               /* ignored */
    CHECK_EQ_I(eng_piece_size(&p, 0.5, 16, 64), 50);
    /* a mixed step moves a by what is left once b's share is taken off */
    eng_piece_observe(&p, 2.5, 16, 50); /* a' = 2.5 - 0.5 = 2.0: a = 0.75 + 0.5 = 1.25 */
    CHECK(fabs(p.dec_s - 1.25) < 1e-12);
    CHECK_EQ_I(eng_piece_size(&p, 0.5, 16, 256), 62);
}

/* A host whose steps take a + b n: from nothing known, the scheduler's loop
 * settles on the piece that keeps the streams' step within 1 + stall, and
 * follows a change in a (more streams, a slower host). */
static void test_settles(void) {
    eng_piece_t p;
    eng_piece_init(&p);
    double a = 0.8, b = 0.02, worst = 0;
    eng_piece_observe(&p, a, 16, 0);
    for (int step = 0; step < 40; step++) {
        int n = eng_piece_size(&p, 0.5, 16, 512);
        double t = a + b * n;
        if (step >= 10) worst = t / a > worst ? t / a : worst;
        eng_piece_observe(&p, t, 16, n);
    }
    CHECK(worst <= 1.5 + 1e-9);
    CHECK_EQ_I(eng_piece_size(&p, 0.5, 16, 512), 20); /* 0.5 * 0.8 / 0.02 */
    a = 2.0;                                           /* four times the streams */
    for (int step = 0; step < 40; step++) {
        int n = eng_piece_size(&p, 0.5, 16, 512);
        eng_piece_observe(&p, a + b * n, 64, n);
    }
    int n = eng_piece_size(&p, 0.5, 16, 512);
    CHECK(n >= 48 && n <= 50);
    CHECK((a + b * n) / a <= 1.5 + 1e-9);
}

int main(void) {
    test_unknown_and_clamps();
    test_settles();
    printf("%s: %d checks, %d failed, %d skipped\n", __FILE__, tg_test_checks, tg_test_fails, tg_test_skips);
    return tg_test_fails ? 1 : 0;
}
