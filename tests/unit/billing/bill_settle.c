/* Unit tests of billing/bill_settle.c without a database: the replay logic.
 * PostgreSQL's answers are simulated by calling batch_cb with made-up
 * results, so every path (down -> spool, replay, commit -> file deleted,
 * failure during replay -> read again, corrupt file kept) is driven by hand. */
#include <ctype.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "tg_test.h"
#include "tg_hex.h"

#include "../../../billing/bill_settle.c"

/* The replay's file reads run on the journal's worker thread in the gateway;
 * here they run inline (a journal with inline_io), so each step is checked
 * as soon as bill_settler_on_up returns. */
static bill_settler_t *settler_inline(bill_settler_t *s) {
    if (s) {
        char err[256];
        mtr_journal_opts_t o = {.inline_io = 1};
        struct event_base *base = s->base;
        mtr_journal_free(s->journal);
        s->journal = mtr_journal_new(base, s->dir, &o, err, sizeof err);
        if (!s->journal) {
            fprintf(stderr, "mtr_journal_new: %s\n", err);
            exit(1);
        }
        char streams[4200];
        snprintf(streams, sizeof streams, "%s/streams", s->dir);
        mtr_journal_free(s->streams);
        if (!(s->streams = mtr_journal_new(base, streams, &o, err, sizeof err))) {
            fprintf(stderr, "mtr_journal_new: %s\n", err);
            exit(1);
        }
    }
    return s;
}

static mtr_journal_stats_t jstats(bill_settler_t *s) {
    mtr_journal_stats_t st;
    mtr_journal_stats(s->journal, &st);
    return st;
}

static char dir[] = "/tmp/bill-settle-test.XXXXXX";
static char spool[128];

static bill_usage_t sample(int i) {
    bill_usage_t u;
    memset(&u, 0, sizeof u);
    snprintf(u.request_id, sizeof u.request_id, "0190f0e2-7a3b-7c00-8000-%012d", i);
    u.key_id = 1;
    u.customer_id = 1;
    u.model = "m";
    u.price = (bill_price_t){.input_cache_miss = 270000, .input_cache_hit = 70000, .output = 1100000};
    u.prompt_tokens = 10;
    u.prompt_cache_hit_tokens = 4;
    u.completion_tokens = 5;
    u.http_status = 200;
    u.received_us = 1;
    u.finished_us = 2;
    return u;
}

static int nfiles(void) {
    char **names;
    int n = mtr_spool_list(spool, &names);
    mtr_names_free(names, n);
    return n;
}

static void count_cb(const bill_usage_t *u, void *arg) { (*(long *)arg)++; }

static long spooled_rows(void) {
    char **names;
    int n = mtr_spool_list(spool, &names);
    long total = 0;
    for (int i = 0; i < n; i++) {
        char path[256];
        int corrupt;
        snprintf(path, sizeof path, "%s/%s", spool, names[i]);
        mtr_spool_read(path, count_cb, &total, &corrupt);
    }
    mtr_names_free(names, n);
    return total;
}

/* A settler over the test's spool, on a new event base, with a PostgreSQL
 * that never answers (port 1): answers are made by hand (answer()). */
static bill_settler_t *settler_test_new(struct event_base **base, bill_pg_t **pg) {
    char err[256] = "";
    *base = event_base_new();
    *pg = bill_pg_new(*base, "host=127.0.0.1 port=1 dbname=x", 1, 1000, NULL, NULL);
    bill_settler_t *s = settler_inline(bill_settler_new(*base, *pg, spool, 0, err, sizeof err));
    if (!s) fprintf(stderr, "bill_settler_new: %s\n", err);
    return s;
}

/* Send the next batch and answer it: ok=1 success, ok=0 database down.  The
 * rows queued so far are sent at once, as if their linger had passed. */
static int answer(bill_settler_t *s, int ok) {
    evtimer_del(s->retry);
    item_t *it;
    TAILQ_FOREACH(it, &s->queue, link) it->pushed_us = 0;
    flush(s);
    if (!s->job) return 0;
    bill_pg_cancel(s->job);
    int n = s->ninflight;
    if (ok) {
        PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
        batch_cb(r, NULL, s);
        PQclear(r);
    } else {
        batch_cb(NULL, "database unavailable: test", s);
    }
    return n;
}

/* A killed process's spool replayed by the next one on the same spool (a
 * second settler): it queues the want rows, one batch commits them all, and
 * no file is left. */
static void replayed_by_next(struct event_base *base, bill_pg_t *pg, int want) {
    char err[256] = "";
    bill_settler_t *s2 = settler_inline(bill_settler_new(base, pg, spool, 0, err, sizeof err));
    CHECK(s2 != NULL);
    if (!s2) return;
    bill_settler_on_up(s2);
    CHECK_EQ_I(s2->nqueue, want);
    CHECK_EQ_I(answer(s2, 1), want);
    CHECK_EQ_I(nfiles(), 0);
    bill_settler_free(s2, NULL);
}

static void test_replay(void) {
    struct event_base *base;
    bill_pg_t *pg;
    bill_settler_t *s = settler_test_new(&base, &pg);
    CHECK(s != NULL);
    if (!s) return;
    bill_settler_on_up(s); /* the empty probe file goes away */
    CHECK_EQ_I(nfiles(), 0);

    /* 1. three settlements, PostgreSQL down: all three spooled, memory empty */
    for (int i = 0; i < 3; i++) {
        bill_usage_t u = sample(i);
        bill_settler_push(s, &u, NULL);
    }
    CHECK_EQ_I(s->nqueue, 3);
    CHECK_EQ_I(answer(s, 0), 3);
    CHECK_EQ_I(s->nqueue + s->ninflight, 0);
    CHECK_EQ_I(nfiles(), 1);
    CHECK_EQ_I(spooled_rows(), 3);
    CHECK(s->need_replay);
    bill_settle_stats_t st;
    bill_settler_stats(s, &st); /* rows on disk only: not idle, whatever the memory queue says */
    CHECK_EQ_I(st.queued + st.in_flight, 0);
    CHECK_EQ_I(st.replay_pending, 1);
    CHECK_EQ_I(st.idle, 0);

    /* 2. back up: the file is read into the queue; a failure half way drops
     *    the rows from memory but keeps the file; the next replay reads it again */
    bill_settler_on_up(s);
    CHECK_EQ_I(s->nqueue, 3);
    CHECK_EQ_I(answer(s, 0), 3);
    CHECK_EQ_I(nfiles(), 1);
    CHECK_EQ_I(spooled_rows(), 3); /* not appended twice */
    bill_usage_t u4 = sample(4);
    bill_settler_push(s, &u4, NULL); /* arrives while down, before the replay */
    bill_settler_on_up(s);
    CHECK_EQ_I(s->nqueue, 4);
    CHECK_EQ_I(answer(s, 1), 4);
    CHECK_EQ_I(nfiles(), 0); /* committed: the file is deleted */
    CHECK_EQ_I(s->nqueue + s->ninflight, 0);
    bill_settler_stats(s, &st);
    CHECK_EQ_I(st.idle, 1);
    CHECK_EQ_I(st.spool_pending, 0);
    CHECK_EQ_I((long long)st.settled_total, 4);

    /* 3. a file with one good record and then garbage: the record is
     *    replayed, the file kept as *.corrupt */
    bill_usage_t u5 = sample(5);
    const bill_usage_t *v[1] = {&u5};
    mtr_spool_t *sp = NULL;
    CHECK_EQ_I(mtr_spool_append(&sp, spool, v, 1), 0);
    mtr_spool_close(sp);
    char **names;
    int n = mtr_spool_list(spool, &names);
    CHECK_EQ_I(n, 1);
    if (n == 1) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", spool, names[0]);
        FILE *f = fopen(path, "ab");
        fputs("XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", f);
        fclose(f);
    }
    mtr_names_free(names, n);
    bill_settler_on_up(s);
    CHECK_EQ_I(s->nqueue, 1);
    CHECK_EQ_I(answer(s, 1), 1);
    CHECK_EQ_I(nfiles(), 0);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "ls %s/*.spool.corrupt >/dev/null 2>&1", spool);
    CHECK_EQ_I(system(cmd), 0);

    /* 4. invalid settlements are rejected at once, never queued */
    bill_usage_t bad = sample(6);
    strcpy(bad.request_id, "not-a-uuid");
    bill_settler_push(s, &bad, NULL);
    bad = sample(7);
    bad.prompt_cache_hit_tokens = 11; /* more hits than prompt tokens */
    bill_settler_push(s, &bad, NULL);
    bad = sample(8);
    bad.completion_tokens = INT64_MAX / 2; /* cost overflows */
    bill_settler_push(s, &bad, NULL);
    bad = sample(9);
    bad.model = NULL;
    bill_settler_push(s, &bad, NULL);
    CHECK_EQ_I(s->nqueue, 0);
    snprintf(cmd, sizeof cmd, "test $(wc -l < %s/rejected.jsonl) -eq 4", spool);
    CHECK_EQ_I(system(cmd), 0);
    bill_settler_stats(s, &st);
    CHECK_EQ_I((long long)st.rejected_total, 4);
    bill_settler_stats(NULL, &st);
    CHECK_EQ_I(st.idle, 1);

    /* 5. shutting down with rows queued and PostgreSQL unreachable spools them */
    bill_usage_t u10 = sample(10);
    bill_settler_push(s, &u10, NULL);
    bill_settler_free(s, "host=127.0.0.1 port=1 dbname=x connect_timeout=1");
    CHECK_EQ_I(spooled_rows(), 1);
    bill_pg_free(pg);
    event_base_free(base);
}

/* Rotate the journal as the sync timer does once its time is up (1 s). */
static void journal_expire(bill_settler_t *s) { mtr_journal_tick(s->journal, tg_wall_us() + 2000000); }

/* The write-ahead journal: rows are on disk when bill_settle returns, the
 * file goes when its rows committed and it was rotated, a second process
 * (the restart after a SIGKILL) replays it, overflow rows are read back. */
static void test_journal(void) {
    struct event_base *base;
    bill_pg_t *pg;
    bill_settler_t *s = settler_test_new(&base, &pg);
    CHECK(s != NULL);
    if (!s) return;
    bill_settler_on_up(s);
    CHECK_EQ_I(answer(s, 1), 1); /* what test_replay left spooled */
    CHECK_EQ_I(nfiles(), 0);

    /* 1. pushed rows are in the journal at once, before any batch; synced by the timer */
    for (int i = 100; i < 102; i++) {
        bill_usage_t u = sample(i);
        bill_settler_push(s, &u, NULL);
    }
    CHECK_EQ_I(nfiles(), 1);
    CHECK_EQ_I(spooled_rows(), 2);
    CHECK(jstats(s).dirty);
    mtr_journal_tick(s->journal, tg_wall_us());
    CHECK(!jstats(s).dirty);
    CHECK_EQ_I(jstats(s).journal_rows, 2); /* still young: kept open */

    /* 2. committed: the open journal stays until rotated, then goes */
    CHECK_EQ_I(answer(s, 1), 2);
    CHECK_EQ_I(nfiles(), 1);
    journal_expire(s);
    CHECK_EQ_I(jstats(s).journal_rows, 0);
    CHECK_EQ_I(nfiles(), 0);

    /* 3. rotation: a closed journal stays while its row is pending, the next
     *    row opens another; the closed one goes when its row commits (rotation
     *    by rows: tests/unit/metering/mtr_journal.c) */
    bill_usage_t u = sample(102);
    bill_settler_push(s, &u, NULL);
    mtr_journal_rotate(s->journal);
    u = sample(103);
    bill_settler_push(s, &u, NULL);
    CHECK_EQ_I(nfiles(), 2);
    CHECK_EQ_I(answer(s, 1), 2);
    CHECK_EQ_I(nfiles(), 1);
    journal_expire(s);
    CHECK_EQ_I(nfiles(), 0);

    /* 4. a killed process: its journal is replayed by the next one on the same
     *    spool (here a second settler; the first is never drained) */
    for (int i = 104; i < 107; i++) {
        u = sample(i);
        bill_settler_push(s, &u, NULL);
    }
    replayed_by_next(base, pg, 3);
    s->nqueue = 0; /* the "killed" process's memory: dropped without a trace on disk */
    items_free(s, &s->queue, 0);
    mtr_journal_rotate(s->journal);
    CHECK_EQ_I(nfiles(), 0);

    /* 5. a full queue: further rows are only in the journal, read back once
     *    the queue drains; every row is sent, every file goes */
    long pushed = 0, sent = 0;
    for (int i = 0; i < QUEUE_MAX + 5; i++) {
        u = sample(1000 + i);
        bill_settler_push(s, &u, NULL);
        pushed++;
    }
    CHECK_EQ_I(s->nqueue, QUEUE_MAX);
    CHECK_EQ_I(spooled_rows(), pushed);
    CHECK(s->need_replay);
    for (int n, guard = 0; (n = answer(s, 1)) > 0 && guard < 2000; guard++) sent += n;
    CHECK(sent >= pushed);
    CHECK_EQ_I(s->nqueue + s->ninflight, 0);
    journal_expire(s);
    CHECK_EQ_I(nfiles(), 0);

    bill_settler_free(s, NULL);
    bill_pg_free(pg);
    event_base_free(base);
}

/* A batch lingers: a lone row waits LINGER_US for company, LINGER_ROWS go at
 * once, and a waiting row is sent by the timer alone. */
static void test_linger(void) {
    struct event_base *base;
    bill_pg_t *pg;
    bill_settler_t *s = settler_test_new(&base, &pg);
    CHECK(s != NULL);
    if (!s) return;
    bill_settler_on_up(s);
    answer(s, 1); /* leftovers of the tests before */
    evtimer_del(s->retry);

    bill_usage_t u = sample(200000);
    bill_settler_push(s, &u, NULL);
    flush(s);
    CHECK(s->job == NULL); /* one row: it waits */
    CHECK_EQ_I(s->nqueue, 1);
    CHECK(evtimer_pending(s->linger, NULL));
    for (int i = 1; i < LINGER_ROWS; i++) {
        u = sample(200000 + i);
        bill_settler_push(s, &u, NULL);
    }
    flush(s);
    CHECK(s->job != NULL); /* a full batch goes now */
    CHECK_EQ_I(s->ninflight, LINGER_ROWS);
    CHECK_EQ_I(s->nqueue, 0);
    CHECK_EQ_I(answer(s, 1), LINGER_ROWS); /* (answers the batch in flight) */
    CHECK_EQ_I(s->ninflight, 0);

    u = sample(200000 + LINGER_ROWS);
    bill_settler_push(s, &u, NULL);
    int64_t t0 = tg_mono_us();
    for (int i = 0; i < 100 && !s->job; i++) event_base_loop(base, EVLOOP_ONCE);
    CHECK(s->job != NULL); /* the timer sent it alone */
    CHECK_EQ_I(s->ninflight, 1);
    CHECK(tg_mono_us() - t0 >= LINGER_US - 2000); /* not before its linger (the push's kick did not send it) */
    if (s->job) {
        bill_pg_cancel(s->job);
        PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
        batch_cb(r, NULL, s);
        PQclear(r);
    }
    bill_settle_stats_t st;
    bill_settler_stats(s, &st);
    CHECK_EQ_I(st.idle, 1);
    bill_settler_free(s, NULL);
    bill_pg_free(pg);
    event_base_free(base);
}

/* The hex of a parameter (for the comparisons below; a static buffer). */
static const char *hex(const char *p, int n) {
    static char out[2 * 512 + 1];
    if (n < 0 || n > 512) return "(too long)";
    tg_hex_encode((const unsigned char *)p, (size_t)n, out);
    return out;
}

/* The statement's array parameters, byte for byte in PostgreSQL's binary
 * array format: the header (1 dimension, NULLs allowed, element type, 2
 * elements, lower bound 1), then each element's length and bytes: uuids as
 * 16 bytes, a model name as its bytes (no quoting), booleans, int4, int8,
 * times as microseconds since 2000-01-01, and NULL (length -1) for a key,
 * first byte or price id of 0. */
static void test_params(void) {
    bill_usage_t u0 = sample(300000), u1 = sample(300001);
    u1.model = "a\"b\\c";
    u1.stream = 1;
    u1.key_id = 0;
    u1.received_us = -5; /* (not a valid row: the encoding only) */
    u1.first_byte_us = 946684800000000LL; /* 2000-01-01: 0 in PostgreSQL's epoch */
    u1.price.price_id = 9223372036854775807LL;
    item_t a = {.u = u0, .cost = 3}, b = {.u = u1, .cost = 0};
    item_t *v[2] = {&a, &b};
    char *p[NCOL];
    int len[NCOL];
    CHECK_EQ_I(build_params(v, 2, p, len), 0);
#define HEAD(oid) "00000001" "00000001" oid "00000002" "00000001"
    CHECK_EQ_S(hex(p[0], len[0]), HEAD("00000b86") "00000010" "0190f0e27a3b7c008000000000300000"
                                                   "00000010" "0190f0e27a3b7c008000000000300001");
    CHECK_EQ_S(hex(p[1], len[1]), HEAD("00000014") "00000008" "0000000000000001" "ffffffff");
    CHECK_EQ_S(hex(p[3], len[3]), HEAD("00000019") "00000001" "6d" "00000005" "6122625c63");
    CHECK_EQ_S(hex(p[6], len[6]), HEAD("00000014") "00000008" "0000000000000005" "00000008" "0000000000000005");
    CHECK_EQ_S(hex(p[11], len[11]), HEAD("00000014") "00000008" "0000000000000003" "00000008" "0000000000000000");
    CHECK_EQ_S(hex(p[12], len[12]), HEAD("00000017") "00000004" "000000c8" "00000004" "000000c8");
    CHECK_EQ_S(hex(p[13], len[13]), HEAD("00000010") "00000001" "00" "00000001" "01");
    CHECK_EQ_S(hex(p[14], len[14]), HEAD("000004a0") "00000008" "fffca2fec4c82001" "00000008" "fffca2fec4c81ffb");
    CHECK_EQ_S(hex(p[15], len[15]), HEAD("000004a0") "ffffffff" "00000008" "0000000000000000");
    CHECK_EQ_S(hex(p[17], len[17]), HEAD("00000014") "ffffffff" "00000008" "7fffffffffffffff");
#undef HEAD
    for (int c = 0; c < NCOL; c++) free(p[c]);
}

/* The COPY path (copy_fit, copy_build): which batches take it, the binary
 * numeric of a debit, the rows' bytes, the rollups' SQL. */
static void test_copy(void) {
    tg_buf_t b = {0};
    struct { int64_t v; const char *hex; } num[] = {
        {-1, "0000000a" "0001" "0000" "4000" "0000" "0001"},
        {-10000, "0000000a" "0001" "0001" "4000" "0000" "0001"},                  /* trailing zero digit left out */
        {-123456789, "0000000e" "0003" "0002" "4000" "0000" "0001" "0929" "1a85"}, /* 1 2345 6789 */
        {-9223372036854775807LL, "00000012" "0005" "0004" "4000" "0000" "039a" "0d2c" "0170" "1565" "16af"}, /* 922 3372 0368 5477 5807 */
        {0, "00000008" "0000" "0000" "0000" "0000"},
    };
    for (size_t i = 0; i < sizeof num / sizeof num[0]; i++) {
        b.len = 0;
        el_numeric(&b, num[i].v);
        CHECK_EQ_S(hex(b.p, b.len), num[i].hex);
    }
    tg_buf_free(&b);

    bill_usage_t u0 = sample(400000), u1 = sample(400001), u2 = sample(400002);
    u1.model = "it's\\";
    u1.received_us = 3600000000LL * 48 + 5; /* hour 48, day 2 */
    u1.http_status = 503;
    u2.customer_id = 7;
    item_t a = {.u = u0, .cost = 30000, .pushed_us = 1}, c = {.u = u1, .cost = 0, .pushed_us = 1},
           d = {.u = u2, .cost = 5, .pushed_us = 1};
    item_t *v[3] = {&d, &a, &c};
    CHECK_EQ_I(copy_fit(v, 3), 1);
    c.pushed_us = 0; /* re-sent: SETTLE_SQL */
    CHECK_EQ_I(copy_fit(v, 3), 0);
    c.pushed_us = 1;
    item_t twin = a; /* the same id twice in a batch (upper case too): SETTLE_SQL */
    for (char *p = twin.u.request_id; *p; p++) *p = (char)toupper((unsigned char)*p);
    item_t *w[4] = {&d, &a, &c, &twin};
    CHECK_EQ_I(copy_fit(w, 4), 0);

    char *sql, **data;
    int len[2], ndata;
    CHECK_EQ_I(copy_build(v, 3, &sql, &data, len, &ndata), 0);
    CHECK_EQ_I(ndata, 2);
    CHECK(v[0] == &d && v[1] == &a && v[2] == &c); /* the batch's order is left alone */
    /* hourly groups in (customer, hour, key, model) order; the quote and backslash escaped */
    CHECK(strstr(sql, "FROM (VALUES (1,0,1,E'm',1,4,6,5,0,30000,0),(1,48,1,E'it\\'s\\\\',1,4,6,5,0,0,1),"
                      "(7,0,1,E'm',1,4,6,5,0,5,0)) v") != NULL);
    CHECK(strstr(sql, "FROM (VALUES (1,0,1,4,6,5,0,30000,0),(1,2,1,4,6,5,0,0,1),(7,0,1,4,6,5,0,5,0)) v") != NULL);
    /* usage first (a locked usage table stops the batch before it holds a rollup row), the ledger last */
    CHECK(!strncmp(sql, "COPY usage (request_id,", 23));
    CHECK(strstr(sql, " FROM STDIN (FORMAT binary);INSERT INTO usage_hourly AS h") != NULL);
    CHECK(strstr(sql, ";COPY ledger (customer_id, kind, amount_pico, request_id) FROM STDIN (FORMAT binary)") != NULL);
    /* usage: the signature, then per row 20 fields (the first: its id) ... and the trailer */
    CHECK_EQ_I(len[0] > 19 + 2 + 4 + 16, 1);
    CHECK_EQ_S(hex(data[0], 19 + 2 + 4 + 16), "5047434f50590aff0d0a00" "00000000" "00000000" "0014" "00000010"
                                               "0190f0e27a3b7c008000000000400002");
    CHECK_EQ_S(hex(data[0] + len[0] - 2, 2), "ffff");
    /* ledger: a debit for each row with a cost (d, a), none for c */
    CHECK_EQ_S(hex(data[1] + 19, len[1] - 19),
               "0004" "00000008" "0000000000000007" "00000005" "7573616765" "0000000a" "0001" "0000" "4000" "0000" "0005"
               "00000010" "0190f0e27a3b7c008000000000400002"
               "0004" "00000008" "0000000000000001" "00000005" "7573616765" "0000000a" "0001" "0001" "4000" "0000" "0003"
               "00000010" "0190f0e27a3b7c008000000000400000"
               "ffff");
    free(sql);
    free(data[0]);
    free(data[1]);
    free(data);
    a.cost = d.cost = 0; /* no debit: no ledger COPY */
    CHECK_EQ_I(copy_build(v, 3, &sql, &data, len, &ndata), 0);
    CHECK_EQ_I(ndata, 1);
    CHECK(strstr(sql, "COPY ledger") == NULL);
    free(sql);
    free(data[0]);
    free(data);
}

static double secs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Not a check: the cost of bill_settle with the journal (validate, copy,
 * write(2) one record, queue) beside the same without the journal write
 * (what it was before), in the same run.  Printed for billing/README.md. */
static void measure_cost(void) {
    enum { N = 20000 };
    struct event_base *base;
    bill_pg_t *pg;
    bill_settler_t *s = settler_test_new(&base, &pg);
    if (!s) return;
    bill_settler_on_up(s);
    answer(s, 1); /* leftovers of the tests before */
    double best_j = 1e9, best_m = 1e9;
    for (int round = 0; round < 3; round++) {
        double t0 = secs();
        for (int i = 0; i < N; i++) {
            bill_usage_t u = sample(100000 + i);
            bill_settler_push(s, &u, NULL);
        }
        double t1 = secs();
        if (t1 - t0 < best_j) best_j = t1 - t0;
        while (answer(s, 1) > 0) {}
        mtr_journal_rotate(s->journal);
        t0 = secs();
        for (int i = 0; i < N; i++) { /* memory only: item_new + queue */
            bill_usage_t u = sample(100000 + i);
            item_t *it = item_new(s, &u, NULL);
            TAILQ_INSERT_TAIL(&s->queue, it, link);
            s->nqueue++;
        }
        t1 = secs();
        if (t1 - t0 < best_m) best_m = t1 - t0;
        while (answer(s, 1) > 0) {}
    }
    mtr_journal_tick(s->journal, tg_wall_us());
    printf("bill_settle cost: %.2f us per settlement with the journal (write(2) per row), %.2f us memory only"
           " (best of 3 x %d)\n", best_j * 1e6 / N, best_m * 1e6 / N, N);
    bill_settler_free(s, NULL);
    bill_pg_free(pg);
    event_base_free(base);
}

/* The disk is full (no file may grow: RLIMIT_FSIZE 0, SIGXFSZ ignored) and
 * PostgreSQL is down: rows settled meanwhile are in memory only, counted as
 * such.  The retry timer tries the spool again every second while
 * PostgreSQL stays down, so once the disk has room they are on it, before
 * PostgreSQL is back: a process killed then loses none (a second settler
 * replays them).  Before (2026-11-30) they stayed in memory until PostgreSQL
 * came back: killed meanwhile, lost although the disk had room. */
static void set_fsize(rlim_t cur) {
    struct rlimit lim;
    if (getrlimit(RLIMIT_FSIZE, &lim) != 0) CHECK(0);
    lim.rlim_cur = cur;
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0) CHECK(0);
}

static void test_disk_full(void) {
    struct event_base *base;
    bill_pg_t *pg;
    bill_settler_t *s = settler_test_new(&base, &pg);
    CHECK(s != NULL);
    if (!s) return;
    bill_settler_on_up(s);
    CHECK_EQ_I(nfiles(), 0);
    bill_usage_t u = sample(500);
    bill_settler_push(s, &u, NULL);
    CHECK_EQ_I(answer(s, 0), 1); /* PostgreSQL down: u 500 waits in its journal file */
    CHECK(evtimer_pending(s->retry, NULL));
    void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit old;
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    set_fsize(0); /* the disk is full */
    for (int i = 501; i < 504; i++) {
        u = sample(i);
        bill_settler_push(s, &u, NULL);
    }
    bill_settle_stats_t st;
    bill_settler_stats(s, &st);
    CHECK_EQ_I(st.memory_only, 3);
    CHECK_EQ_I((long long)st.unjournaled_total, 3);
    CHECK_EQ_I(spooled_rows(), 1);
    retry_cb(-1, EV_TIMEOUT, s); /* PostgreSQL still down, the disk still full: kept in memory */
    bill_settler_stats(s, &st);
    CHECK_EQ_I(st.memory_only, 3);
    CHECK_EQ_I(s->nqueue, 3);
    CHECK(evtimer_pending(s->retry, NULL));
    set_fsize(old.rlim_cur); /* room again */
    signal(SIGXFSZ, oldsig);
    retry_cb(-1, EV_TIMEOUT, s); /* PostgreSQL still down: spooled now */
    bill_settler_stats(s, &st);
    CHECK_EQ_I(st.memory_only, 0);
    CHECK_EQ_I(spooled_rows(), 4);
    CHECK(evtimer_pending(s->retry, NULL));
    CHECK(s->need_replay);
    /* killed now: the next process replays all four */
    replayed_by_next(base, pg, 4);
    items_free(s, &s->queue, 0); /* the "killed" process's memory */
    s->nqueue = 0;
    bill_settler_free(s, NULL);
    bill_pg_free(pg);
    event_base_free(base);
    CHECK_EQ_I(nfiles(), 0);
}

/* A spool read a file at a time (replay_bytes 1): the first replay queues
 * one file's rows, and each batch's end reads the next part once the queue
 * is short, until every row is sent and every file gone.  Before
 * (2026-11-30) one replay queued the whole spool. */
static void test_replay_bounded(void) {
    struct event_base *base;
    bill_pg_t *pg;
    bill_settler_t *s = settler_test_new(&base, &pg);
    CHECK(s != NULL);
    if (!s) return;
    char err[256];
    mtr_journal_opts_t o = {.inline_io = 1, .replay_bytes = 1};
    mtr_journal_free(s->journal);
    s->journal = mtr_journal_new(base, s->dir, &o, err, sizeof err);
    CHECK(s->journal != NULL);
    if (!s->journal) return;
    bill_settler_on_up(s); /* the probe file goes */
    CHECK_EQ_I(nfiles(), 0);
    for (int f = 0; f < 3; f++) { /* three files of two rows, as a killed process leaves them */
        bill_usage_t u0 = sample(600 + 2 * f), u1 = sample(601 + 2 * f);
        const bill_usage_t *v[2] = {&u0, &u1};
        mtr_spool_t *sp = NULL;
        CHECK_EQ_I(mtr_spool_append(&sp, spool, v, 2), 0);
        mtr_spool_close(sp);
    }
    CHECK_EQ_I(nfiles(), 3);
    bill_settler_on_up(s);
    CHECK_EQ_I(s->nqueue, 2);
    CHECK(s->need_replay);
    bill_settle_stats_t st;
    bill_settler_stats(s, &st);
    CHECK_EQ_I(st.replay_pending, 1);
    long sent = 0;
    int rounds = 0;
    for (int n; rounds < 10 && (n = answer(s, 1)) > 0; rounds++) sent += n;
    CHECK_EQ_I(sent, 6);
    CHECK_EQ_I(rounds, 3);
    CHECK_EQ_I(nfiles(), 0);
    CHECK(!s->need_replay);
    bill_settler_stats(s, &st);
    CHECK_EQ_I(st.idle, 1);

    /* under a steady load the queue is never empty at a batch's end: the
     * next part is read all the same (the queue is short) */
    for (int f = 0; f < 3; f++) {
        bill_usage_t u0 = sample(620 + 2 * f), u1 = sample(621 + 2 * f);
        const bill_usage_t *v[2] = {&u0, &u1};
        mtr_spool_t *sp = NULL;
        CHECK_EQ_I(mtr_spool_append(&sp, spool, v, 2), 0);
        mtr_spool_close(sp);
    }
    bill_settler_on_up(s);
    CHECK_EQ_I(s->nqueue, 2);
    sent = 0;
    for (rounds = 0; rounds < 3; rounds++) {
        evtimer_del(s->retry);
        item_t *it;
        TAILQ_FOREACH(it, &s->queue, link) it->pushed_us = 0;
        flush(s);
        CHECK(s->job != NULL);
        if (!s->job) break;
        bill_usage_t live = sample(640 + rounds); /* settled while the batch runs */
        bill_settler_push(s, &live, NULL);
        sent += s->ninflight;
        bill_pg_cancel(s->job);
        PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
        batch_cb(r, NULL, s);
        PQclear(r);
    }
    CHECK_EQ_I(sent, 8); /* the six rows of the spool and two live ones */
    CHECK_EQ_I(s->nqueue, 1); /* the last live one */
    CHECK(!s->need_replay);
    CHECK_EQ_I(answer(s, 1), 1);
    journal_expire(s);
    CHECK_EQ_I(nfiles(), 0);
    bill_settler_free(s, NULL);
    bill_pg_free(pg);
    event_base_free(base);
}

/* Streams' provisional rows: left by a killed process (two for one stream,
 * as an update leaves them until the older one's file goes; one for another
 * stream; one for a stream whose own row committed), read by the next
 * process once its journal replay is done: one row per stream, the one with
 * the most completion, counted in earlier_streams until committed; then no
 * stream file is left, nor one of a stream whose own row was rejected. */
static void test_streams(void) {
    struct event_base *base;
    bill_pg_t *pg;
    bill_settler_t *s = settler_test_new(&base, &pg);
    CHECK(s != NULL);
    if (!s) return;
    bill_usage_t a0 = sample(500), a3 = sample(500), b0 = sample(501), c0 = sample(502), c = sample(502);
    a0.completion_tokens = b0.completion_tokens = c0.completion_tokens = 0;
    a3.completion_tokens = 3;
    a3.finished_us = 3;
    CHECK(bill_settler_stream_begin(s, &a0) != NULL);
    CHECK(bill_settler_stream_begin(s, &a3) != NULL);
    CHECK(bill_settler_stream_begin(s, &b0) != NULL);
    mtr_jfile_t *pc = bill_settler_stream_begin(s, &c0);
    CHECK(pc != NULL);
    bill_settler_push(s, &c, pc); /* its own row, committed: its provisional row is done */
    CHECK_EQ_I(answer(s, 1), 1);
    bill_settler_free(s, NULL); /* "killed": the streams' files stay */
    char streams[200];
    snprintf(streams, sizeof streams, "%s/streams", spool);
    char **names;
    int n = mtr_spool_list(streams, &names);
    mtr_names_free(names, n);
    CHECK(n >= 1);
    char err[256] = "";
    bill_settler_t *s2 = settler_inline(bill_settler_new(base, pg, spool, 0, err, sizeof err));
    CHECK(s2 != NULL);
    if (!s2) return;
    bill_settle_stats_t st;
    bill_settler_stats(s2, &st);
    CHECK_EQ_I(st.earlier_streams, 1);
    CHECK_EQ_I(st.idle, 0);
    bill_settler_on_up(s2); /* nothing in the journal: the streams' rows are read at once */
    CHECK_EQ_I(s2->nqueue, 3);  /* 500 (once), 501, and 502's provisional row (skipped by PostgreSQL) */
    item_t *it;
    int seen = 0;
    TAILQ_FOREACH(it, &s2->queue, link) {
        if (!strcmp(it->u.request_id, a0.request_id)) {
            CHECK_EQ_I(it->u.completion_tokens, 3);
            seen++;
        }
        CHECK(it->src != NULL); /* written into this run's journal */
    }
    CHECK_EQ_I(seen, 1);
    bill_settler_stats(s2, &st);
    CHECK_EQ_I(st.earlier_streams, 1);
    CHECK_EQ_I(answer(s2, 1), 3);
    bill_settler_stats(s2, &st);
    CHECK_EQ_I(st.earlier_streams, 0);
    CHECK_EQ_I(st.idle, 1);
    /* a stream whose own row is rejected: its provisional row goes too (its file is not kept) */
    bill_usage_t d0 = sample(503), d = sample(503);
    d0.completion_tokens = 0;
    d.prompt_cache_hit_tokens = d.prompt_tokens + 1;
    mtr_jfile_t *pd = bill_settler_stream_begin(s2, &d0);
    CHECK(pd != NULL);
    bill_settler_push(s2, &d, pd);
    CHECK_EQ_I(s2->nqueue, 0);
    mtr_journal_rotate(s2->streams);
    n = mtr_spool_list(streams, &names);
    mtr_names_free(names, n);
    CHECK_EQ_I(n, 0);
    bill_settler_free(s2, NULL);
    bill_pg_free(pg);
    event_base_free(base);
    CHECK_EQ_I(nfiles(), 0);
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    snprintf(spool, sizeof spool, "%s/spool", dir);
    test_replay();
    test_journal();
    test_linger();
    test_params();
    test_copy();
    test_disk_full();
    test_replay_bounded();
    test_streams();
    measure_cost();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 1;
    printf("%s: %d checks, %d failed\n", __FILE__, tg_test_checks, tg_test_fails);
    return tg_test_fails ? 1 : 0;
}
