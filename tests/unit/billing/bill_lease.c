/* Unit tests of billing/bill_lease.c without a database: PostgreSQL's
 * answers to the grant statement are made by hand (grant_done with a result
 * built by PQsetvalue), so the order of holds, top-ups and grants is exact. */
#include <stdlib.h>
#include <unistd.h>

#include "tg_test.h"

#include "../../../billing/bill_lease.c"

static char dir[] = "/tmp/bill-lease-test.XXXXXX";

typedef struct {
    int answered;
    bill_status_t st;
} outcome_t;

static void hold_cb(bill_status_t st, const bill_hold_info_t *info, void *arg) {
    outcome_t *o = arg;
    o->answered = 1;
    o->st = st;
}

/* A hold of amount for key 1 of customer 1: 1 taken now, 0 waiting. */
static int hold(bill_lease_t *L, bill_hold_t *h, int64_t amount, outcome_t *o) {
    bill_req_t *r = calloc(1, sizeof *r);
    r->key.key_id = 1;
    r->key.customer_id = 1;
    r->amount = amount;
    r->hold = h;
    r->hold_cb = hold_cb;
    r->arg = o;
    int taken = bill_lease_hold(L, r);
    if (taken) free(r); /* (taken now: the caller keeps nothing of r) */
    return taken;
}

/* Answer the grant in flight: `granted` pico-USD, a balance room `room`. */
static void answer_grant(bill_lease_t *L, int64_t granted, int64_t room) {
    lease_t *l = lease_find(L, 1);
    CHECK(l && l->grant_inflight && l->job);
    if (!l || !l->job) return;
    bill_pg_cancel(l->job);
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    PGresAttDesc att[6];
    memset(att, 0, sizeof att);
    static const char *names[6] = {"granted", "bal", "kd", "km", "cd", "cm"};
    for (int i = 0; i < 6; i++) {
        att[i].name = (char *)names[i];
        att[i].typid = 25; /* text */
        att[i].typlen = -1;
        att[i].atttypmod = -1;
    }
    PQsetResultAttrs(res, 6, att);
    char g[24], b[24];
    snprintf(g, sizeof g, "%lld", (long long)granted);
    snprintf(b, sizeof b, "%lld", (long long)room);
    PQsetvalue(res, 0, 0, g, (int)strlen(g));
    PQsetvalue(res, 0, 1, b, (int)strlen(b));
    for (int i = 2; i < 6; i++) PQsetvalue(res, 0, i, NULL, -1); /* no spending limits */
    grant_done(res, NULL, l);
    PQclear(res);
}

/* A top-up in flight when a hold does not fit: the hold is not refused by
 * the top-up's short answer (it was asked for no one); it gets a grant asked
 * with its own need, and fits. */
static void test_topup_then_waiter(void) {
    struct event_base *base = event_base_new();
    bill_t b;
    memset(&b, 0, sizeof b);
    b.base = base;
    b.pg = bill_pg_new(base, "host=127.0.0.1 port=1 dbname=x", 1, 1000, NULL, NULL);
    bill_opts_t o;
    memset(&o, 0, sizeof o);
    o.lease_chunk_pico = 1000;
    char err[256] = "";
    bill_lease_t *L = bill_lease_new(&b, dir, &o, err, sizeof err);
    CHECK(L != NULL);
    if (!L) return;
    bill_hold_t h1 = {0}, h2 = {0}, h3 = {0};
    outcome_t o1 = {0}, o2 = {0}, o3 = {0};

    CHECK_EQ_I(hold(L, &h1, 100, &o1), 0); /* an empty lease: waits for a grant */
    answer_grant(L, 1100, 100000);           /* 100 + the chunk: full */
    CHECK(o1.answered && o1.st == BILL_OK);
    CHECK_EQ_I(hold(L, &h2, 600, &o2), 1);  /* from the lease; 400 left < chunk/2: a top-up starts */
    lease_t *l = lease_find(L, 1);
    CHECK(l && l->grant_inflight && l->grant_early);
    CHECK_EQ_I(hold(L, &h3, 600, &o3), 0);  /* does not fit: waits behind the top-up */
    CHECK_EQ_I((long long)L->hold_waits, 2);
    answer_grant(L, 100, 700);               /* the top-up falls short (half a small room) */
    CHECK(!o3.answered);                     /* not refused by it ... */
    CHECK(l && l->grant_inflight && !l->grant_early); /* ... but asked for with its need */
    answer_grant(L, 100, 600);
    CHECK(o3.answered && o3.st == BILL_OK);
    CHECK_EQ_I(h3.amount, 600);

    bill_lease_release(L, &h1);
    bill_lease_release(L, &h2);
    bill_lease_release(L, &h3);
    bill_lease_free(L);
    bill_pg_free(b.pg);
    event_base_free(base);
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    test_topup_then_waiter();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 1;
    printf("%s: %d checks, %d failed\n", __FILE__, tg_test_checks, tg_test_fails);
    return tg_test_fails ? 1 : 0;
}
