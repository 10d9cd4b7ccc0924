/* Unit tests of gateway/gw_rl_local.c: the GCRA arithmetic (bursts of
 * exactly the limit, the wait for the next unit, refunds, a changed limit,
 * limits up to 2^31-1 without overflow), the in-process limiter table
 * (all-or-nothing takes, concurrency, the sweep) and the failed-auth
 * throttle (blocking, expiry, a bounded table that keeps blocked addresses
 * while others churn).  Time is passed in, never read. */
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "../../../gateway/gw-int.h"
#include "tg_test.h"

#define T0 1700000000000LL

/* n requests at one instant against limit lim: how many pass */
static int burst(int64_t lim, int n) {
    gw_gcra_t g = {0, T0, 0};
    int passed = 0;
    for (int i = 0; i < n; i++) {
        gw_gcra_drain(&g, lim, T0);
        if (gw_gcra_fits(&g, lim, 1)) {
            gw_gcra_charge(&g, 1);
            passed++;
        }
    }
    return passed;
}

static void test_gcra_burst(void) {
    static const int64_t lims[] = {1, 2, 3, 4, 5, 7, 13, 59, 60, 61, 97, 1000, 7919};
    for (size_t i = 0; i < sizeof lims / sizeof lims[0]; i++) CHECK_EQ_I(burst(lims[i], (int)lims[i] * 2 + 3), lims[i]);
}

static void test_gcra_wait(void) {
    gw_gcra_t g = {0, T0, 0};
    for (int i = 0; i < 5; i++) {
        gw_gcra_drain(&g, 5, T0);
        CHECK_EQ_I(gw_gcra_remaining(&g, 5), 5 - i);
        gw_gcra_charge(&g, 1);
    }
    gw_gcra_drain(&g, 5, T0);
    CHECK(!gw_gcra_fits(&g, 5, 1));
    CHECK_EQ_I(gw_gcra_retry_ms(&g, 5, 1), 12000); /* W / L */
    CHECK_EQ_I(gw_gcra_reset_ms(&g, 5), 60000);
    gw_gcra_drain(&g, 5, T0 + 11999);
    CHECK(!gw_gcra_fits(&g, 5, 1));
    CHECK_EQ_I(gw_gcra_retry_ms(&g, 5, 1), 1);
    gw_gcra_drain(&g, 5, T0 + 12000);
    CHECK(gw_gcra_fits(&g, 5, 1));
    CHECK(!gw_gcra_fits(&g, 5, 2));
    gw_gcra_drain(&g, 5, T0 + 60000);
    CHECK_EQ_I(gw_gcra_remaining(&g, 5), 5);
    CHECK_EQ_I(gw_gcra_reset_ms(&g, 5), 0);
    /* a clock step back drains nothing and breaks nothing */
    gw_gcra_charge(&g, 3);
    gw_gcra_drain(&g, 5, T0 - 5000);
    CHECK_EQ_I(gw_gcra_remaining(&g, 5), 2);
}

static void test_gcra_tokens_and_refund(void) {
    gw_gcra_t g = {0, T0, 0};
    gw_gcra_drain(&g, 100, T0);
    CHECK(gw_gcra_fits(&g, 100, 100));
    CHECK(!gw_gcra_fits(&g, 100, 101));
    CHECK_EQ_I(gw_gcra_retry_ms(&g, 100, 101), -1); /* never */
    gw_gcra_charge(&g, 52);
    CHECK_EQ_I(gw_gcra_remaining(&g, 100), 48);
    CHECK(!gw_gcra_fits(&g, 100, 52));
    gw_gcra_charge(&g, -(52 - 14)); /* the answer used 14 of its 52 */
    CHECK_EQ_I(gw_gcra_remaining(&g, 100), 86);
    CHECK(gw_gcra_fits(&g, 100, 52));
    gw_gcra_charge(&g, -1000); /* never below zero */
    CHECK_EQ_I(g.d, 0);
    gw_gcra_charge(&g, 250); /* a charge beyond the capacity (usage above the estimate) waits longer */
    CHECK_EQ_I(gw_gcra_remaining(&g, 100), 0);
    CHECK_EQ_I(gw_gcra_reset_ms(&g, 100), 150000);
    CHECK_EQ_I(gw_gcra_retry_ms(&g, 100, 1), 90600);
}

static void test_gcra_limit_change_and_big(void) {
    gw_gcra_t g = {0, T0, 0};
    gw_gcra_drain(&g, 10, T0);
    gw_gcra_charge(&g, 5); /* half full */
    gw_gcra_drain(&g, 20, T0);
    CHECK_EQ_I(gw_gcra_remaining(&g, 20), 10);
    int64_t big = INT32_MAX;
    gw_gcra_t b = {0, T0, 0};
    gw_gcra_drain(&b, big, T0);
    CHECK(gw_gcra_fits(&b, big, big));
    CHECK(!gw_gcra_fits(&b, big, big + 1));
    gw_gcra_charge(&b, big);
    CHECK_EQ_I(gw_gcra_remaining(&b, big), 0);
    gw_gcra_drain(&b, big, T0 + 1000000000LL); /* a long idle time: no overflow, empty */
    CHECK_EQ_I(b.d, 0);
    CHECK_EQ_I(gw_gcra_remaining(&b, big), big);
}

static void test_local_table(void) {
    gw_rl_local_t *t = gw_rl_local_new();
    gw_rl_limits_t l = {.rpm = 3, .tpm = 0, .conc = 2};
    gw_rl_verdict_t v;
    CHECK_EQ_I(gw_rl_local_op(t, GW_RL_OP_TAKE, 'k', 7, &l, 0, T0, &v), GW_OK);
    CHECK(v.ok);
    CHECK_EQ_I(v.rrem, 2);
    gw_rl_local_op(t, GW_RL_OP_TAKE, 'k', 7, &l, 0, T0, &v);
    CHECK(v.ok);
    CHECK_EQ_I(v.inflight, 2);
    gw_rl_local_op(t, GW_RL_OP_TAKE, 'k', 7, &l, 0, T0, &v);
    CHECK(!v.ok);
    CHECK_EQ_I(v.why, GW_RL_WHY_CONCURRENCY);
    CHECK_EQ_I(v.rrem, 1); /* a refusal takes nothing */
    gw_rl_local_op(t, GW_RL_OP_DONE, 'k', 7, &l, 0, T0, &v);
    gw_rl_local_op(t, GW_RL_OP_TAKE, 'k', 7, &l, 0, T0, &v);
    CHECK(v.ok);
    CHECK_EQ_I(v.rrem, 0);
    gw_rl_local_op(t, GW_RL_OP_DONE, 'k', 7, &l, 0, T0, &v);
    gw_rl_local_op(t, GW_RL_OP_TAKE, 'k', 7, &l, 0, T0, &v);
    CHECK(!v.ok);
    CHECK_EQ_I(v.why, GW_RL_WHY_REQUESTS);
    CHECK_EQ_I(v.retry, 20000);
    /* the customer 'c' 7 is another subject */
    gw_rl_local_op(t, GW_RL_OP_PEEK, 'c', 7, &l, 0, T0, &v);
    CHECK(v.ok);
    CHECK_EQ_I(v.rrem, 3);
    CHECK_EQ_I(gw_rl_local_size(t), 1);
    /* tokens: take, then undo gives the request and the tokens back */
    gw_rl_limits_t lt = {.rpm = 10, .tpm = 100, .conc = 0};
    gw_rl_local_op(t, GW_RL_OP_TAKE, 'c', 9, &lt, 60, T0, &v);
    CHECK(v.ok);
    CHECK_EQ_I(v.trem, 40);
    gw_rl_local_op(t, GW_RL_OP_TAKE, 'c', 9, &lt, 60, T0, &v);
    CHECK(!v.ok);
    CHECK_EQ_I(v.why, GW_RL_WHY_TOKENS);
    gw_rl_local_op(t, GW_RL_OP_UNDO, 'c', 9, &lt, 60, T0, &v);
    CHECK_EQ_I(v.trem, 100);
    CHECK_EQ_I(v.rrem, 10);
    /* the sweep keeps what holds requests or debt */
    gw_rl_local_sweep(t, T0 + 1);
    CHECK_EQ_I(gw_rl_local_size(t), 1);
    gw_rl_local_op(t, GW_RL_OP_DONE, 'k', 7, &l, 0, T0, &v);
    gw_rl_local_sweep(t, T0 + 30000);
    CHECK_EQ_I(gw_rl_local_size(t), 1); /* still in debt */
    gw_rl_local_sweep(t, T0 + 60000);
    CHECK_EQ_I(gw_rl_local_size(t), 0);
    gw_rl_local_free(t);
}

static void test_authfail(void) {
    gw_authfail_t *a = gw_authfail_new(3, 60000, 5000, 64);
    int64_t retry = 0;
    CHECK(!gw_authfail_blocked(a, "10.0.0.1", T0, &retry));
    CHECK(!gw_authfail_record(a, "10.0.0.1", T0));
    CHECK(!gw_authfail_record(a, "10.0.0.1", T0 + 10));
    CHECK(!gw_authfail_blocked(a, "10.0.0.1", T0 + 20, &retry));
    CHECK(gw_authfail_record(a, "10.0.0.1", T0 + 20)); /* the third within the window */
    CHECK(gw_authfail_blocked(a, "10.0.0.1", T0 + 21, &retry));
    CHECK_EQ_I(retry, 4999);
    CHECK(!gw_authfail_blocked(a, "10.0.0.2", T0 + 21, &retry));
    /* others churn through the small table: the blocked address stays */
    char addr[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(addr, sizeof addr, "192.168.%d.%d", i / 256, i % 256);
        gw_authfail_record(a, addr, T0 + 100);
    }
    CHECK(gw_authfail_blocked(a, "10.0.0.1", T0 + 100, &retry));
    CHECK(!gw_authfail_blocked(a, "10.0.0.1", T0 + 5020, &retry));
    /* spread out, failures do not block: 3 per minute is the budget */
    CHECK(!gw_authfail_record(a, "10.0.0.3", T0));
    CHECK(!gw_authfail_record(a, "10.0.0.3", T0 + 30000));
    CHECK(!gw_authfail_record(a, "10.0.0.3", T0 + 60000));
    CHECK(!gw_authfail_record(a, "10.0.0.3", T0 + 90000));
    gw_authfail_free(a);
    gw_authfail_t *off = gw_authfail_new(0, 60000, 5000, 64);
    for (int i = 0; i < 100; i++) CHECK(!gw_authfail_record(off, "10.0.0.1", T0));
    CHECK(!gw_authfail_blocked(off, "10.0.0.1", T0, &retry));
    gw_authfail_free(off);
}

TG_TEST_MAIN(test_gcra_burst, test_gcra_wait, test_gcra_tokens_and_refund, test_gcra_limit_change_and_big,
             test_local_table, test_authfail)
