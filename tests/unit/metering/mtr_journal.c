/* Unit tests of metering/mtr_journal.c without an owner: records are on disk
 * when written, the sync tick, rotation by rows and by age, a file deleted
 * only once closed with every record done, drop -> read again, replay by a
 * second journal (a restart) tagged with the right files, and the worker
 * thread path (fdatasync and reads off the loop) delivering the same. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "tg_test.h"

#include "../../../metering/mtr_journal.c"

/* fdatasync fails with EIO while sync_fails is set: this binary's own
 * definition, which the journal's calls (compiled in above) resolve to */
static int sync_fails;
int fdatasync(int fd) {
    if (sync_fails) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

static char dir[] = "/tmp/mtr-journal-test.XXXXXX";
static char spool[128];

/* every file of the spool removed, for the next test */
static void spool_clear(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -f %s/*", spool);
    if (system(cmd) != 0) CHECK(0);
}

static mtr_usage_t sample(int i) {
    mtr_usage_t u;
    memset(&u, 0, sizeof u);
    snprintf(u.request_id, sizeof u.request_id, "0190f0e2-7a3b-7c00-8000-%012d", i);
    u.key_id = 1;
    u.customer_id = 1;
    u.model = "m";
    u.price = (mtr_price_t){270000, 70000, 1100000, 0, 0};
    u.prompt_tokens = 10;
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

static mtr_journal_stats_t stats(mtr_journal_t *j) {
    mtr_journal_stats_t st;
    mtr_journal_stats(j, &st);
    return st;
}

/* What a replay hands over: the records (ids) and their files. */
typedef struct {
    int n, keep, done;
    long rows;
    int failed;
    char ids[64][37];
    mtr_jfile_t *files[64];
} got_t;

static int got_row(const mtr_usage_t *u, mtr_jfile_t *f, void *arg) {
    got_t *g = arg;
    if (g->n < 64) {
        memcpy(g->ids[g->n], u->request_id, 37);
        g->files[g->n] = f;
    }
    g->n++;
    return g->keep;
}

static void got_done(long rows, int failed, void *arg) {
    got_t *g = arg;
    g->done++;
    g->rows += rows;
    g->failed |= failed;
}

static void test_journal(void) {
    struct event_base *base = event_base_new();
    char err[256] = "";
    mtr_journal_opts_t o = {.rotate_rows = 2, .inline_io = 1};
    mtr_journal_t *j = mtr_journal_new(base, spool, &o, err, sizeof err);
    CHECK(j != NULL);
    if (!j) return;
    got_t g = {.keep = 1};
    CHECK_EQ_I(nfiles(), 1);                      /* the writable probe */
    CHECK_EQ_I(mtr_journal_replay(j, got_row, got_done, &g), 1);
    CHECK_EQ_I(g.done, 1);                        /* inline: done before replay returns */
    CHECK_EQ_I(g.n, 0);
    CHECK_EQ_I(nfiles(), 0);                      /* the empty probe is gone */
    CHECK_EQ_I(mtr_journal_replay(j, got_row, got_done, &g), 0); /* nothing left to read */

    /* 1. records are on disk at once; the tick syncs; by rows: two per file */
    mtr_usage_t u[5];
    mtr_jfile_t *f[5];
    for (int i = 0; i < 5; i++) {
        u[i] = sample(i);
        f[i] = mtr_journal_write(j, &u[i]);
        CHECK(f[i] != NULL);
    }
    CHECK(f[0] == f[1] && f[1] != f[2] && f[2] == f[3] && f[3] != f[4]);
    CHECK_EQ_I(nfiles(), 3);
    mtr_journal_stats_t st = stats(j);
    CHECK_EQ_I(st.files, 3);
    CHECK_EQ_I(st.pending, 5);
    CHECK_EQ_I(st.journal_rows, 1);
    CHECK(st.dirty);
    CHECK(st.bytes > 5 * MTR_REC_MIN);
    mtr_journal_tick(j, tg_wall_us()); /* young: synced, kept open */
    CHECK(!stats(j).dirty);
    CHECK_EQ_I(stats(j).journal_rows, 1);

    /* 2. a closed file goes when its last record is done; the open one stays */
    mtr_journal_done(j, f[0]);
    CHECK_EQ_I(nfiles(), 3);
    mtr_journal_done(j, f[1]);
    CHECK_EQ_I(nfiles(), 2);
    mtr_journal_done(j, f[4]);
    CHECK_EQ_I(nfiles(), 2); /* open */
    mtr_journal_tick(j, tg_wall_us() + 2000000); /* by age */
    CHECK_EQ_I(stats(j).journal_rows, 0);
    CHECK_EQ_I(nfiles(), 1);

    /* 3. a dropped record: its file is read again, tagged with that file */
    mtr_journal_drop(j, f[2]);
    CHECK(stats(j).unloaded);
    memset(&g, 0, sizeof g);
    g.keep = 1;
    CHECK_EQ_I(mtr_journal_replay(j, got_row, got_done, &g), 1);
    CHECK_EQ_I(g.n, 2); /* both records of the file (one was still in memory: harmless, sent twice) */
    CHECK(g.files[0] == f[2] && g.files[1] == f[2]);
    CHECK(!strcmp(g.ids[0], u[2].request_id) && !strcmp(g.ids[1], u[3].request_id));
    CHECK_EQ_I(stats(j).pending, 3); /* f[3]'s from memory + the two read back */
    CHECK(!stats(j).unloaded);
    mtr_journal_done(j, f[3]);
    mtr_journal_done(j, g.files[0]);
    CHECK_EQ_I(nfiles(), 1);
    mtr_journal_done(j, g.files[1]);
    CHECK_EQ_I(nfiles(), 0);

    /* 4. a restart: a second journal on the same directory reads what the
     *    first left (the first is "killed": never told anything again) */
    for (int i = 10; i < 13; i++) {
        mtr_usage_t v = sample(i);
        mtr_journal_write(j, &v);
    }
    const mtr_usage_t *sp[1] = {&u[0]};
    CHECK_EQ_I(mtr_journal_spool(j, sp, 1), 0); /* fsync'd, counted nowhere */
    CHECK_EQ_I(stats(j).pending, 3);
    mtr_journal_t *j2 = mtr_journal_new(base, spool, &o, err, sizeof err);
    CHECK(j2 != NULL);
    if (j2) {
        memset(&g, 0, sizeof g);
        g.keep = 1;
        CHECK_EQ_I(mtr_journal_replay(j2, got_row, got_done, &g), 1);
        CHECK_EQ_I(g.n, 4);
        CHECK_EQ_I(g.rows, 4);
        for (int i = 0; i < g.n && i < 64; i++) mtr_journal_done(j2, g.files[i]);
        CHECK_EQ_I(nfiles(), 0);
        mtr_journal_free(j2);
    }
    mtr_journal_free(j); /* its files are gone already; it deletes nothing else */

    /* 5. the worker thread: sync and reads off the loop, delivered on it */
    o.inline_io = 0;
    j = mtr_journal_new(base, spool, &o, err, sizeof err);
    CHECK(j != NULL);
    if (!j) return;
    for (int i = 20; i < 23; i++) {
        mtr_usage_t v = sample(i);
        mtr_journal_write(j, &v);
    }
    mtr_journal_drop_all(j); /* the database failed: everything is read again */
    memset(&g, 0, sizeof g);
    g.keep = 0; /* rejected for good: the files go at once */
    CHECK_EQ_I(mtr_journal_replay(j, got_row, got_done, &g), 1);
    CHECK_EQ_I(mtr_journal_replay(j, got_row, got_done, &g), -2); /* one at a time */
    CHECK(stats(j).replaying);
    for (int guard = 0; !g.done && guard < 2000; guard++) {
        struct timeval tv = {0, 5000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    CHECK_EQ_I(g.done, 1);
    CHECK_EQ_I(g.n, 3);
    CHECK_EQ_I(nfiles(), 0);
    mtr_journal_free(j);
    event_base_free(base);
}

/* The bytes of the open journal file. */
static long journal_size(mtr_journal_t *j) {
    struct stat sb;
    return j->spool && fstat(mtr_spool_fd(j->spool), &sb) == 0 ? (long)sb.st_size : -1;
}

static void *unwritten[8];
static int nunwritten;
static void on_unwritten_test(void *cookie, void *arg) {
    if (nunwritten < 8) unwritten[nunwritten] = cookie;
    nunwritten++;
}

/* Grouped appends: nothing written until the flush, then every record in one
 * go, counted in its file; every other call flushes first; a failed group
 * write hands back each record's cookie, in order, uncounts them, rotates. */
static void test_group(void) {
    struct event_base *base = event_base_new();
    char err[256] = "";
    mtr_journal_opts_t o = {.group = 1, .inline_io = 1};
    mtr_journal_t *j = mtr_journal_new(base, spool, &o, err, sizeof err);
    CHECK(j != NULL);
    if (!j) return;
    mtr_journal_on_unwritten(j, on_unwritten_test, NULL);
    int cookies[4];
    mtr_usage_t u0 = sample(100), u1 = sample(101), u2 = sample(102);
    mtr_jfile_t *f = mtr_journal_append(j, &u0, &cookies[0]);
    CHECK(f != NULL);
    CHECK(mtr_journal_append(j, &u1, &cookies[1]) == f);
    CHECK(mtr_journal_held(j));
    CHECK_EQ_I(journal_size(j), 0);       /* in memory only */
    CHECK_EQ_I(stats(j).pending, 2);      /* counted at once, as a write counts them */
    CHECK_EQ_I(mtr_journal_flush(j), 0);
    CHECK(!mtr_journal_held(j));
    uint8_t rec[MTR_REC_HDR + MTR_REC_MAX];
    long one = (long)mtr_spool_encode(&u0, rec, sizeof rec);
    CHECK_EQ_I(journal_size(j), 2 * one); /* both, whole */
    CHECK_EQ_I(mtr_journal_flush(j), 0);  /* nothing held: nothing written */
    CHECK_EQ_I(journal_size(j), 2 * one);
    mtr_journal_append(j, &u2, &cookies[2]);
    mtr_journal_tick(j, tg_wall_us());    /* another call flushes first */
    CHECK_EQ_I(journal_size(j), 3 * one);
    CHECK_EQ_I(nunwritten, 0);
    /* a failed group write: the journal's descriptor now writes to /dev/full */
    mtr_journal_t *jj = j;
    mtr_usage_t u3 = sample(103), u4 = sample(104);
    mtr_jfile_t *f2 = mtr_journal_append(jj, &u3, &cookies[3]);
    mtr_journal_append(jj, &u4, &cookies[0]);
    long before = stats(jj).pending;
    int full = open("/dev/full", O_WRONLY);
    CHECK(full >= 0);
    CHECK(dup2(full, mtr_spool_fd(jj->spool)) >= 0);
    close(full);
    CHECK_EQ_I(mtr_journal_flush(jj), -1);
    CHECK_EQ_I(nunwritten, 2);
    CHECK(unwritten[0] == &cookies[3] && unwritten[1] == &cookies[0]); /* in order */
    CHECK_EQ_I(stats(jj).pending, before - 2);
    CHECK(jj->spool == NULL && jj->jf == NULL); /* rotated: the next record opens a new file */
    CHECK(f2 == f);
    CHECK(!mtr_journal_held(jj));
    /* without group, append writes at once */
    jj->o.group = 0;
    mtr_usage_t u5 = sample(105);
    CHECK(mtr_journal_append(jj, &u5, NULL) != NULL);
    CHECK(!mtr_journal_held(jj));
    CHECK_EQ_I(journal_size(jj), one);
    mtr_journal_free(jj);
    event_base_free(base);
    spool_clear();
}

/* A spool append (mtr_journal_spool: rows the journal could not take) that
 * fails part way, as on a full disk, leaves a torn record: the journal is
 * rotated, so the records written after it (once the disk has room again)
 * are in a new file, not behind the torn one, where a replay would take
 * them for corruption.  The disk fills here through RLIMIT_FSIZE: a write
 * past the limit writes up to it, the next one fails (EFBIG, SIGXFSZ
 * ignored).  Before (2026-11-30) the journal stayed open: u2 went behind the
 * torn record, and the replay stopped there and kept the file as .corrupt. */
static void test_spool_torn(void) {
    struct event_base *base = event_base_new();
    char err[256] = "";
    mtr_journal_opts_t o = {.inline_io = 1};
    mtr_journal_t *j = mtr_journal_new(base, spool, &o, err, sizeof err);
    CHECK(j != NULL);
    if (!j) return;
    mtr_usage_t u0 = sample(300), u1 = sample(301), u2 = sample(302);
    const mtr_usage_t *v[1] = {&u1};
    mtr_jfile_t *f = mtr_journal_write(j, &u0);
    CHECK(f != NULL);
    uint8_t rec[MTR_REC_HDR + MTR_REC_MAX];
    long one = (long)mtr_spool_encode(&u0, rec, sizeof rec);
    CHECK_EQ_I(journal_size(j), one);
    struct rlimit old, lim;
    void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = (rlim_t)(one + one / 2); /* room for half of the next record */
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    CHECK_EQ_I(mtr_journal_spool(j, v, 1), -1);
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, oldsig);
    CHECK(j->spool == NULL); /* rotated */
    mtr_jfile_t *f2 = mtr_journal_write(j, &u2); /* the disk has room again */
    CHECK(f2 != NULL && f2 != f);
    mtr_journal_drop_all(j); /* as the settler's go_down: every file is read again */
    got_t g = {0};
    CHECK_EQ_I(mtr_journal_replay(j, got_row, got_done, &g), 1);
    CHECK_EQ_I(g.done, 1);
    CHECK_EQ_I(g.n, 2);
    CHECK(!strcmp(g.ids[0], u0.request_id));
    CHECK(g.n == 2 && !strcmp(g.ids[1], u2.request_id));
    CHECK_EQ_I(g.failed, 0);
    /* nothing kept as corrupt: each file ends where its last write failed, a torn tail */
    DIR *d = opendir(spool);
    int ncorrupt = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) ncorrupt += strstr(e->d_name, ".corrupt") != NULL;
    if (d) closedir(d);
    CHECK_EQ_I(ncorrupt, 0);
    CHECK_EQ_I(nfiles(), 0); /* kept by no one (got_row keeps none): all deleted */
    mtr_journal_free(j);
    event_base_free(base);
    spool_clear();
}

/* A long outage's spool is read a part at a time: a replay reads files,
 * oldest first, until they hold opts.replay_bytes (at least one file) and
 * says failed = 1 while files are left; the next replay reads on.  Here one
 * file per replay.  Before (2026-11-30) a replay read every file at once
 * into memory: an hour's spool of a busy gateway, gigabytes. */
static void test_replay_bounded(void) {
    struct event_base *base = event_base_new();
    char err[256] = "";
    mtr_journal_opts_t o = {.rotate_rows = 2, .inline_io = 1};
    mtr_journal_t *j = mtr_journal_new(base, spool, &o, err, sizeof err);
    CHECK(j != NULL);
    if (!j) return;
    for (int i = 0; i < 6; i++) { /* three files of two records: a killed process's */
        mtr_usage_t u = sample(400 + i);
        CHECK(mtr_journal_write(j, &u) != NULL);
    }
    mtr_journal_free(j);
    CHECK_EQ_I(nfiles(), 4); /* and the probe file */
    mtr_journal_opts_t ob = {.inline_io = 1, .replay_bytes = 1};
    j = mtr_journal_new(base, spool, &ob, err, sizeof err);
    CHECK(j != NULL);
    if (!j) return;
    got_t g = {0};
    g.keep = 1;
    int rounds = 0, ok = 1, before = 0;
    while (rounds < 10 && mtr_journal_replay(j, got_row, got_done, &g) == 1) { /* inline: read on return */
        rounds++;
        for (int k = 0; k < g.n && k < 64; k++) /* they commit before the next replay */
            if (g.files[k]) mtr_journal_done(j, g.files[k]), g.files[k] = NULL;
        if (g.n - before > 2) ok = 0;            /* at most one file's records */
        if (g.n < 6 && !g.failed) ok = 0;        /* files left: said so */
        g.failed = 0;
        before = g.n;
    }
    CHECK(ok);
    CHECK_EQ_I(g.n, 6);
    CHECK_EQ_I(g.done, rounds);
    CHECK(rounds >= 4); /* one file of two records per replay (and the probe files, empty) */
    int order = g.n == 6;
    for (int k = 0; k < 6 && order; k++) {
        char want[37];
        snprintf(want, sizeof want, "0190f0e2-7a3b-7c00-8000-%012d", 400 + k);
        order = !strcmp(g.ids[k], want);
    }
    CHECK(order); /* oldest first */
    CHECK_EQ_I(mtr_journal_replay(j, got_row, got_done, &g), 0);
    CHECK_EQ_I(nfiles(), 0);
    mtr_journal_free(j);
    event_base_free(base);
}

/* A full disk fails every record: the journal says so once a second at
 * most, with the count, not once per record (a flood, into a log that may be
 * on the same disk).  Before (2026-11-30): a line per record. */
static void test_log_rate(void) {
    struct event_base *base = event_base_new();
    char err[256] = "";
    mtr_journal_opts_t o = {.inline_io = 1};
    mtr_journal_t *j = mtr_journal_new(base, spool, &o, err, sizeof err);
    CHECK(j != NULL);
    if (!j) return;
    /* stderr into a pipe (a file could not grow either): 200 lines of the old code fit its 64 KiB */
    int p[2];
    CHECK(pipe(p) == 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(p[1], 2);
    close(p[1]);
    void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = 0; /* the disk is full */
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int64_t t0 = tg_mono_us();
    int failed = 0;
    for (int i = 0; i < 200; i++) {
        mtr_usage_t u = sample(700 + i);
        failed += mtr_journal_write(j, &u) == NULL;
    }
    int64_t elapsed_s = (tg_mono_us() - t0) / 1000000;
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, oldsig);
    j->logged_us -= LOG_EVERY_US; /* the second is up: the timer says what was not said yet */
    mtr_journal_tick(j, tg_wall_us());
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK_EQ_I(failed, 200);
    static char text[1 << 16];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof text - 1 && (r = read(p[0], text + len, sizeof text - 1 - len)) > 0) len += (size_t)r;
    close(p[0]);
    text[len] = 0;
    int lines = 0, first_ok = 0;
    long said = 0;
    for (char *q = text; (q = strstr(q, "cannot write the journal")); q++) {
        const char *c = strstr(q, "; ");
        if (!c) break;
        if (!lines) first_ok = !strncmp(c, "; 1 usage records held in memory (the last: ", 44);
        said += strtol(c + 2, NULL, 10);
        lines++;
    }
    CHECK(first_ok);                                 /* the first failure is said at once */
    CHECK(lines >= 1 && lines <= 2 + elapsed_s);     /* then once a second at most (and the timer's) */
    CHECK_EQ_I(said, 200);                           /* every failure counted in some line */
    mtr_journal_free(j);
    event_base_free(base);
    spool_clear();
}

/* Two inline journals sharing one disk flag, as two event loops' journals:
 * j in the spool, k in dir/other.  0, or -1 (checked) when one failed. */
static int two_journals(struct event_base *base, int *flag, mtr_journal_t **j, mtr_journal_t **k) {
    char err[256] = "", other[160];
    snprintf(other, sizeof other, "%s/other", dir);
    mtr_journal_opts_t o = {.inline_io = 1};
    *j = mtr_journal_new(base, spool, &o, err, sizeof err);
    *k = mtr_journal_new(base, other, &o, err, sizeof err);
    CHECK(*j && *k);
    if (!*j || !*k) return -1;
    mtr_journal_share_disk(*j, flag);
    mtr_journal_share_disk(*k, flag);
    return 0;
}

static void two_journals_free(struct event_base *base, mtr_journal_t *j, mtr_journal_t *k) {
    mtr_journal_free(j);
    mtr_journal_free(k);
    event_base_free(base);
    spool_clear();
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s/other", dir);
    if (system(cmd) != 0) CHECK(0);
}

/* mtr_journal_writable: 1 at first; 0 once a write failed (the disk full:
 * RLIMIT_FSIZE 0), in the journal that failed and in one sharing its disk
 * flag that never failed a record; while failing, a probe at most once a
 * second, which finds room again once there is some (and leaves no file). */
static void test_writable(void) {
    struct event_base *base = event_base_new();
    mtr_journal_t *j, *k;
    int flag = 0;
    if (two_journals(base, &flag, &j, &k)) return;
    CHECK_EQ_I(mtr_journal_writable(j), 1);
    CHECK_EQ_I(mtr_journal_writable(k), 1);
    fflush(stderr);
    int saved = dup(2), devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 2);
    close(devnull);
    void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = 0; /* the disk is full */
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    mtr_usage_t u = sample(900);
    CHECK(mtr_journal_write(j, &u) == NULL);
    CHECK_EQ_I(flag, 1);
    CHECK_EQ_I(mtr_journal_writable(j), 0); /* its probe fails too */
    CHECK_EQ_I(mtr_journal_writable(k), 0); /* the other loop's journal: the same disk */
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, oldsig);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK_EQ_I(mtr_journal_writable(j), 0); /* room again, but the probe waits for its second */
    j->probed_us -= PROBE_EVERY_US;
    CHECK_EQ_I(mtr_journal_writable(j), 1);
    CHECK_EQ_I(flag, 0);
    CHECK_EQ_I(mtr_journal_writable(k), 1); /* its own writes never failed: trusted with the flag down */
    char probe[200];
    snprintf(probe, sizeof probe, "%s/write-probe", spool);
    CHECK(access(probe, F_OK) != 0);
    u = sample(901);
    CHECK(mtr_journal_write(j, &u) != NULL);
    two_journals_free(base, j, k);
}

/* An fdatasync failed in one journal (the disk took writes it may drop): a
 * journal sharing its disk flag whose own records never failed is not
 * trusted on a write alone either; it refuses until a probe of its own
 * writes and syncs, and that probe's success lowers the flag.  Before, its
 * write probe cleared the flag and a second event loop served on the failing
 * disk (tests/billing/test_faults.py test_journal_sync_fails, 2026-12-02 CI). */
static void test_sync_shared(void) {
    struct event_base *base = event_base_new();
    mtr_journal_t *j, *k;
    int flag = 0;
    if (two_journals(base, &flag, &j, &k)) return;
    CHECK_EQ_I(mtr_journal_writable(k), 1);
    fflush(stderr);
    int saved = dup(2), devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 2);
    close(devnull);
    sync_fails = 1;
    on_sync_error(j, EIO); /* what j's sync job reports */
    CHECK_EQ_I(flag, DISK_SYNC);
    CHECK_EQ_I(mtr_journal_writable(j), 0); /* its probe waits for its second */
    CHECK_EQ_I(mtr_journal_writable(k), 0); /* k's probe writes, and its sync fails */
    CHECK_EQ_I(flag, DISK_SYNC);
    mtr_usage_t u = sample(950);
    CHECK(mtr_journal_write(k, &u) != NULL); /* a write that works lowers no sync failure */
    CHECK_EQ_I(flag, DISK_SYNC);
    k->probed_us -= PROBE_EVERY_US;
    CHECK_EQ_I(mtr_journal_writable(k), 0);
    sync_fails = 0;
    CHECK_EQ_I(mtr_journal_writable(k), 0); /* the disk syncs again; the probe waits for its second */
    k->probed_us -= PROBE_EVERY_US;
    CHECK_EQ_I(mtr_journal_writable(k), 1);
    CHECK_EQ_I(flag, 0);
    CHECK_EQ_I(mtr_journal_writable(j), 0); /* j's own failure: its own probe, a second after it */
    j->probed_us -= PROBE_EVERY_US;
    CHECK_EQ_I(mtr_journal_writable(j), 1);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    two_journals_free(base, j, k);
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    snprintf(spool, sizeof spool, "%s/spool", dir);
    test_journal();
    test_group();
    test_spool_torn();
    test_replay_bounded();
    test_log_rate();
    test_writable();
    test_sync_shared();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 1;
    printf("%s: %d checks, %d failed\n", __FILE__, tg_test_checks, tg_test_fails);
    return tg_test_fails ? 1 : 0;
}
