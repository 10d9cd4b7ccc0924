/* Unit tests for engine/sched/eng_sched_text.c: stop strings matched across token
 * boundaries (never emitted, nothing after them), and <think> splitting. */
#include "../../../engine/sched/eng_sched_text.c"

#include "tg_test.h"

/* Push the pieces one by one; return the emitted text, *matched set. */
static char *run_stop(const char *const *stops, int n_stop, const char *const *pieces, int n, int *matched) {
    size_t lens[ENG_MAX_STOP];
    for (int i = 0; i < n_stop; i++) lens[i] = strlen(stops[i]);
    eng_stop_t st;
    eng_stop_init(&st, stops, lens, n_stop);
    tg_buf_t out = {0};
    *matched = 0;
    for (int i = 0; i < n; i++)
        if (eng_stop_push(&st, pieces[i], strlen(pieces[i]), &out) == 1) *matched = 1;
    if (!*matched) eng_stop_flush(&st, &out);
    eng_stop_free(&st);
    tg_buf_put(&out, "", 0);
    return out.p;
}

static void test_stop_across_tokens(void) {
    const char *stops[] = {"END"};
    const char *p1[] = {"hello E", "N", "D world"};
    int m;
    char *s = run_stop(stops, 1, p1, 3, &m);
    CHECK(m);
    CHECK_EQ_S(s, "hello ");
    free(s);
    /* a partial match that fails is released in order */
    const char *p2[] = {"a E", "N", "x", "EN"};
    s = run_stop(stops, 1, p2, 4, &m);
    CHECK(!m);
    CHECK_EQ_S(s, "a ENxEN");
    free(s);
}

static void test_stop_holds_back_only_prefixes(void) {
    const char *stops[] = {"\n\nUser:"};
    size_t len = strlen(stops[0]);
    eng_stop_t st;
    eng_stop_init(&st, stops, &len, 1);
    tg_buf_t out = {0};
    eng_stop_push(&st, "abc\n", 4, &out);
    CHECK_EQ_I(out.len, 3); /* "\n" may start the stop string */
    eng_stop_push(&st, "\nUs", 3, &out);
    CHECK_EQ_I(out.len, 3);
    CHECK_EQ_I(eng_stop_push(&st, "er: more", 8, &out), 1);
    CHECK_EQ_S(out.p, "abc");
    CHECK_EQ_I(eng_stop_push(&st, "ignored", 7, &out), 1);
    CHECK_EQ_S(out.p, "abc");
    eng_stop_free(&st);
    tg_buf_free(&out);
}

static void test_stop_earliest_of_several(void) {
    const char *stops[] = {"world", "lo w", "zzz", "o"};
    const char *p[] = {"hel", "lo wor", "ld"};
    int m;
    char *s = run_stop(stops, 4, p, 3, &m);
    CHECK(m);
    CHECK_EQ_S(s, "hel"); /* "lo w" starts at 3, before "o" at 4 */
    free(s);
    const char *none[] = {""};
    s = run_stop(none, 1, p, 3, &m); /* an empty stop string never matches */
    CHECK(!m);
    CHECK_EQ_S(s, "hello world");
    free(s);
}

static void test_stop_utf8(void) {
    const char *stops[] = {"世界"};
    const char *p[] = {"你好", "世", "界!"};
    int m;
    char *s = run_stop(stops, 1, p, 3, &m);
    CHECK(m);
    CHECK_EQ_S(s, "你好");
    free(s);
}

static void split(eng_think_mode_t mode, const char *const *pieces, int n, char **content, char **reasoning) {
    eng_think_t th;
    eng_think_init(&th, mode);
    tg_buf_t c = {0}, r = {0};
    for (int i = 0; i < n; i++) eng_think_push(&th, pieces[i], strlen(pieces[i]), &c, &r);
    eng_think_flush(&th, &c, &r);
    eng_think_free(&th);
    tg_buf_put(&c, "", 0);
    tg_buf_put(&r, "", 0);
    *content = c.p;
    *reasoning = r.p;
}

static void test_think_split(void) {
    char *c, *r;
    const char *p1[] = {"Let me ", "think.</th", "ink>\n\nThe answer", " is 4."};
    split(ENG_THINK_IN, p1, 4, &c, &r);
    CHECK_EQ_S(r, "Let me think.");
    CHECK_EQ_S(c, "The answer is 4.");
    free(c), free(r);
    const char *p2[] = {"<thi", "nk>\nhmm\n", "</think>ok"};
    split(ENG_THINK_DETECT, p2, 3, &c, &r);
    CHECK_EQ_S(r, "hmm");
    CHECK_EQ_S(c, "ok");
    free(c), free(r);
    const char *p4[] = {"never closed </thi"};
    split(ENG_THINK_IN, p4, 1, &c, &r);
    CHECK_EQ_S(r, "never closed </thi");
    CHECK_EQ_S(c, "");
    free(c), free(r);
    const char *p5[] = {"a</think>b"};
    split(ENG_THINK_OFF, p5, 1, &c, &r);
    CHECK_EQ_S(c, "a</think>b");
    CHECK_EQ_S(r, "");
    free(c), free(r);
    /* one byte at a time gives the same split */
    const char *whole = "\nstep 1\nstep 2\n</think>\n\nfinal answer";
    const char *bytes[64];
    char one[64][2];
    int n = 0;
    for (const char *q = whole; *q; q++, n++) {
        one[n][0] = *q, one[n][1] = 0;
        bytes[n] = one[n];
    }
    split(ENG_THINK_IN, bytes, n, &c, &r);
    CHECK_EQ_S(r, "step 1\nstep 2");
    CHECK_EQ_S(c, "final answer");
    free(c), free(r);
}

static void test_think_state(void) {
    eng_think_t th;
    eng_think_init(&th, ENG_THINK_IN);
    tg_buf_t c = {0}, r = {0};
    CHECK(eng_think_in_reasoning(&th));
    eng_think_push(&th, "x</think>", 9, &c, &r);
    CHECK(!eng_think_in_reasoning(&th));
    eng_think_free(&th);
    eng_think_init(&th, ENG_THINK_OFF);
    CHECK(!eng_think_in_reasoning(&th));
    eng_think_free(&th);
    tg_buf_free(&c);
    tg_buf_free(&r);
}

TG_TEST_MAIN(test_stop_across_tokens, test_stop_holds_back_only_prefixes, test_stop_earliest_of_several,
             test_stop_utf8, test_think_split, test_think_state)
