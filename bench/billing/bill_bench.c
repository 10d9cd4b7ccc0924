/* bill_bench.c — the billing figures of billing/README.md, against a
 * PostgreSQL that bench/billing/gen.sql filled (5 million usage rows):
 *
 *   settle   rows per second into PostgreSQL through the real settler
 *            (bill_settle: journal write, batches of up to BILL_SETTLE_BATCH in
 *            one statement with the ledger debits and the hourly and daily
 *            rollups), from the first bill_settle to an idle queue; request
 *            ids are UUIDv7 as the gateway makes them (BENCH_IDS=random: random
 *            leading bits, as this bench used before; both: one run of each)
 *   admit    admissions per second through bill_admit (today's admission
 *            statement; BENCH_ADMIT_INFLIGHT at once, default 64)
 *   receipt  microseconds to build and sign one usage receipt (Ed25519)
 *   reports  median (and first) time of a month's per-customer usage report
 *            (by day, split by key and model) for the biggest and a median
 *            customer, and of the operator's top 20 for the month: the very
 *            statements the admin API runs (BILL_REPORT_*_SQL)
 *
 *   bill_bench CONNINFO MONTH(YYYY-MM)
 *
 * Holds: when admission takes a balance hold, the admit figure is the one to
 * watch; this bench calls bill_admit and needs no change for it. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <postgresql/libpq-fe.h>

#include "bill-int.h"

static double secs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static PGresult *exec(PGconn *c, const char *sql, int n, const char *const *p) {
    PGresult *r = PQexecParams(c, sql, n, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "bill_bench: %s\n%s", sql, PQresultErrorMessage(r));
        exit(1);
    }
    return r;
}

static int dcmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- CPU time: what a row costs, whatever else runs on the machine ------- */

/* The parent of pid, 0 when unknown. */
static long ppid_of(long pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    long ppid = 0;
    if (!rp || sscanf(rp + 2, "%*c %ld", &ppid) != 1) return 0;
    return ppid;
}

/* The postmaster serving c on this machine: the process whose command line
 * is `postgres ... -p PORT` (how tests/billing/pg.sh starts it) and whose
 * parent is not (a backend just forked has that command line too), or
 * $BENCH_PG_PID; 0 when not found. */
static long postmaster_pid(PGconn *c) {
    if (getenv("BENCH_PG_PID")) return atol(getenv("BENCH_PG_PID"));
    const char *port = PQport(c);
    DIR *d = opendir("/proc");
    long found = 0;
    struct dirent *e;
    while (d && !found && (e = readdir(d))) {
        long pid = atol(e->d_name);
        char path[64], cmd[4096];
        if (pid <= 0) continue;
        snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(cmd, 1, sizeof cmd - 1, f);
        fclose(f);
        cmd[n] = 0;
        const char *a0 = strrchr(cmd, '/') ? strrchr(cmd, '/') + 1 : cmd;
        if (strcmp(a0, "postgres")) continue;
        for (size_t i = 0; i + 1 < n; i += strlen(cmd + i) + 1)
            if (!strcmp(cmd + i, "-p") && !strcmp(cmd + i + 3, port)) found = pid;
    }
    if (d) closedir(d);
    for (long up; found > 1 && (up = ppid_of(found)) > 1;) { /* a backend: climb to the postmaster */
        char path[64], comm[64] = "";
        snprintf(path, sizeof path, "/proc/%ld/comm", up);
        FILE *f = fopen(path, "r");
        if (!f || !fgets(comm, sizeof comm, f) || strncmp(comm, "postgres", 8)) {
            if (f) fclose(f);
            break;
        }
        fclose(f);
        found = up;
    }
    return found;
}

/* CPU seconds used so far by the PostgreSQL server of c (the postmaster and
 * its children: the backends, checkpointer, WAL writer, ...), from /proc;
 * -1 when it cannot be found (another machine). */
static double pg_cpu(PGconn *c) {
    long pm = postmaster_pid(c);
    if (pm <= 0) return -1;
    DIR *d = opendir("/proc");
    if (!d) return -1;
    double ticks = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid = atol(e->d_name);
        if (pid <= 0) continue;
        char sp[64], buf[1024];
        snprintf(sp, sizeof sp, "/proc/%ld/stat", pid);
        FILE *sf = fopen(sp, "r");
        if (!sf) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, sf);
        fclose(sf);
        buf[n] = 0;
        char *rp = strrchr(buf, ')'); /* the fields after the command name */
        long ppid;
        unsigned long ut, st;
        if (!rp || sscanf(rp + 2, "%*c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ppid, &ut, &st) != 3) continue;
        if (pid == pm || ppid == pm) ticks += (double)(ut + st);
    }
    closedir(d);
    return ticks / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu(void) { /* this process, every thread */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---- settle ------------------------------------------------------------ */

static struct event_base *base;
static bill_t *bill;

static void idle_cb(evutil_socket_t fd, short what, void *arg) {
    bill_settle_stats_t st;
    bill_settle_stats(bill, &st);
    if (st.idle && st.settled_total >= *(uint64_t *)arg) event_base_loopbreak(base);
}

static void bench_settle(PGconn *c, int64_t n, int64_t cust, int64_t key, int random_ids) {
    bill_usage_t u;
    memset(&u, 0, sizeof u);
    u.key_id = key;
    u.customer_id = cust;
    u.model = "bench-v3";
    u.price = (bill_price_t){270000, 70000, 1100000, 0, 0};
    u.http_status = 200;
    unsigned seed = (unsigned)now_us();
    struct event *t = event_new(base, -1, EV_PERSIST, idle_cb, &n);
    struct timeval tv = {0, 2000};
    /* the queue settles while later rows are still being pushed: push in slices from a timer */
    double pg0 = pg_cpu(c), me0 = self_cpu();
    double t0 = secs();
    int64_t pushed = 0;
    while (pushed < n) {
        for (int i = 0; i < 5000 && pushed < n; i++, pushed++) {
            if (random_ids) { /* random leading bits: every row lands on a random page of each id index */
                snprintf(u.request_id, sizeof u.request_id, "%08x-%04x-7%03x-8%03x-%012llx", rand_r(&seed),
                         rand_r(&seed) & 0xffff, rand_r(&seed) & 0xfff, rand_r(&seed) & 0xfff, (long long)pushed);
            } else { /* UUIDv7 as the gateway makes them: unix ms first, so ids grow with time */
                unsigned long long ms = (unsigned long long)(now_us() / 1000);
                snprintf(u.request_id, sizeof u.request_id, "%08llx-%04llx-7%03x-%04x-%012llx", (ms >> 16) & 0xffffffffULL,
                         ms & 0xffff, (unsigned)(pushed >> 20) & 0xfff, 0x8000 | (rand_r(&seed) & 0x3fff),
                         (((unsigned long long)rand_r(&seed) << 20) | ((unsigned long long)pushed & 0xfffff)) &
                             0xffffffffffffULL);
            }
            u.prompt_tokens = 1000 + pushed % 3000;
            u.prompt_cache_hit_tokens = u.prompt_tokens / 3;
            u.completion_tokens = 100 + pushed % 500;
            u.received_us = u.finished_us = now_us();
            bill_settle(bill, &u, NULL);
        }
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    event_add(t, &tv);
    event_base_dispatch(base);
    double dt = secs() - t0;
    double pgc = pg0 >= 0 ? pg_cpu(c) - pg0 : -1, mec = self_cpu() - me0;
    event_free(t);
    bill_settle_stats_t st;
    bill_settle_stats(bill, &st);
    printf("settle:  %lld usage rows (+ ledger debits + hourly and daily rollups) in %.2f s = %.0f rows/s through"
           " bill_settle (journal, batches of up to %d), %s request ids, %llu inserted\n",
           (long long)n, dt, n / dt, BILL_SETTLE_BATCH, random_ids ? "random" : "UUIDv7",
           (unsigned long long)st.inserted_total);
    if (pgc >= 0)
        printf("         CPU per row: PostgreSQL %.1f us, bill_bench (journal, queue, statements) %.1f us:"
               " %.0f rows per CPU-second (moved less by the machine's load than rows/s)\n",
               pgc * 1e6 / n, mec * 1e6 / n, n / (pgc + mec));
    char cs[24];
    snprintf(cs, sizeof cs, "%lld", (long long)cust);
    const char *p[] = {cs};
    PGresult *r = exec(c, "SELECT count(*) FROM usage_hourly_mismatch WHERE customer_id = $1", 1, p);
    printf("         rollup of that customer vs its usage rows: %s mismatches\n", PQgetvalue(r, 0, 0));
    PQclear(r);
    r = exec(c, "SELECT count(*) FROM usage_daily_mismatch WHERE customer_id = $1", 1, p);
    printf("         daily rollup of that customer vs its hourly rows: %s mismatches\n", PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* ---- admit ------------------------------------------------------------- */

static int64_t admit_left, admit_done_n, admit_bad;
static const char *admit_key;

static void admit_cb(bill_status_t st, const bill_key_t *k, void *arg);

static void admit_one(void) {
    if (admit_left <= 0) return;
    admit_left--;
    if (!bill_admit(bill, admit_key, "bench-v3", "127.0.0.1", admit_cb, NULL)) {
        fprintf(stderr, "bill_bench: bill_admit: out of memory\n");
        exit(1);
    }
}

static void admit_cb(bill_status_t st, const bill_key_t *k, void *arg) {
    admit_done_n++;
    admit_bad += st != BILL_OK;
    admit_one();
}

static void admit_check(evutil_socket_t fd, short what, void *arg) {
    if (admit_done_n >= *(int64_t *)arg) event_base_loopbreak(base);
}

static void bench_admit(PGconn *c, const char *secret, int64_t cust, int64_t n, int inflight) {
    char key[BILL_KEY_LEN + 1], prefix[16], hash[65], cs[24];
    bill_key_generate(key, prefix);
    bill_key_hash(secret, key, hash);
    snprintf(cs, sizeof cs, "%lld", (long long)cust);
    const char *p[] = {cs, hash};
    PQclear(exec(c, "INSERT INTO api_keys (customer_id, key_hash, prefix, name) VALUES ($1, $2, 'sk-bench', 'bench')",
                 2, p));
    admit_key = key;
    admit_left = 200; /* warm up: prepared statements on every pool connection */
    admit_done_n = 0;
    for (int i = 0; i < 4; i++) admit_one();
    int64_t warm = 200;
    struct event *t = event_new(base, -1, EV_PERSIST, admit_check, &warm);
    struct timeval tv = {0, 1000};
    event_add(t, &tv);
    event_base_dispatch(base);
    admit_left = n;
    admit_done_n = admit_bad = 0;
    double t0 = secs();
    for (int i = 0; i < inflight; i++) admit_one();
    event_free(t);
    t = event_new(base, -1, EV_PERSIST, admit_check, &n);
    event_add(t, &tv);
    event_base_dispatch(base);
    double dt = secs() - t0;
    event_free(t);
    printf("admit:   %lld admissions in %.2f s = %.0f/s (bill_admit, %d in flight, 4 connections), %lld not OK\n",
           (long long)n, dt, n / dt, inflight, (long long)admit_bad);
}

/* ---- receipts ----------------------------------------------------------- */

static void bench_receipt(void) {
    char path[] = "/tmp/bill-bench-key.XXXXXX";
    int fd = mkstemp(path);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!k || !f) return;
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    char err[256];
    bill_receipts_t *r = bill_receipts_new(path, err, sizeof err);
    unlink(path);
    EVP_PKEY_free(k);
    if (!r) return;
    bill_usage_t u;
    memset(&u, 0, sizeof u);
    snprintf(u.request_id, sizeof u.request_id, "0190f0e2-7a3b-7c00-8000-000000000001");
    u.key_id = 1;
    u.customer_id = 1;
    u.model = "bench-v3";
    u.price = (bill_price_t){270000, 70000, 1100000, 0, 0};
    u.prompt_tokens = 3000;
    u.prompt_cache_hit_tokens = 1000;
    u.completion_tokens = 500;
    u.http_status = 200;
    u.received_us = now_us();
    char out[BILL_RECEIPT_MAX];
    enum { N = 20000 };
    double t0 = secs();
    for (int i = 0; i < N; i++) bill_receipts_sign(r, &u, NULL, out, sizeof out);
    double dt = secs() - t0;
    printf("receipt: %.1f us to build and sign one receipt (Ed25519, %zu bytes)\n", dt * 1e6 / N, strlen(out));
    bill_receipts_free(r);
}

/* ---- reports ------------------------------------------------------------ */

static void timed(PGconn *c, const char *what, const char *sql, int n, const char *const *p) {
    enum { RUNS = 7 };
    double t[RUNS];
    size_t bytes = 0;
    for (int i = 0; i < RUNS; i++) {
        double t0 = secs();
        PGresult *r = exec(c, sql, n, p);
        t[i] = secs() - t0;
        if (PQntuples(r) == 1) bytes = strlen(PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    double first = t[0];
    qsort(t, RUNS, sizeof t[0], dcmp);
    printf("report:  %-52s median %7.1f ms (first %7.1f ms, %d runs, %zu bytes of JSON)\n", what, t[RUNS / 2] * 1e3,
           first * 1e3, RUNS, bytes);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CONNINFO MONTH(YYYY-MM)\n", argv[0]);
        return 2;
    }
    const char *conninfo = argv[1], *month = argv[2];
    setenv("PGTZ", "UTC", 0);
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "bill_bench: %s", PQerrorMessage(c));
        return 1;
    }
    PGresult *r = exec(c, "SELECT (SELECT count(*) FROM usage), (SELECT count(*) FROM usage_hourly),"
                          " (SELECT count(*) FROM customers WHERE name LIKE 'bench-c%')", 0, NULL);
    printf("database: %s usage rows, %s rollup rows, %s customers\n", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1),
           PQgetvalue(r, 0, 2));
    PQclear(r);
    /* the biggest and the median spender of the month, and a key of the biggest */
    char from[40], to[40];
    snprintf(from, sizeof from, "%s-01T00:00:00Z", month);
    const char *pm[] = {from};
    r = exec(c, "SELECT ($1::timestamptz + interval '1 month')::text", 1, pm);
    snprintf(to, sizeof to, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *pr[] = {from, to};
    r = exec(c, "WITH s AS (SELECT c.name, c.id, sum(h.cost_pico) AS cost FROM usage_hourly h JOIN customers c"
                " ON c.id = h.customer_id WHERE h.hour >= $1 AND h.hour < $2 GROUP BY 1, 2)"
                " SELECT (SELECT name FROM s ORDER BY cost DESC LIMIT 1), (SELECT id FROM s ORDER BY cost DESC LIMIT 1),"
                " (SELECT name FROM s ORDER BY cost DESC OFFSET (SELECT count(*) / 2 FROM s) LIMIT 1)",
             2, pr);
    if (PQgetisnull(r, 0, 0)) {
        fprintf(stderr, "bill_bench: no usage in %s: run bench/billing/gen.sql first\n", month);
        return 1;
    }
    char big[80], mid[80];
    snprintf(big, sizeof big, "%s", PQgetvalue(r, 0, 0));
    snprintf(mid, sizeof mid, "%s", PQgetvalue(r, 0, 2));
    int64_t big_id = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    char bs[24];
    snprintf(bs, sizeof bs, "%lld", (long long)big_id);
    const char *pk[] = {bs};
    r = exec(c, "SELECT min(id) FROM api_keys WHERE customer_id = $1", 1, pk);
    int64_t big_key = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);

    /* reports first (before the settle bench adds rows to the month) */
    const char *pu1[] = {big, from, to, "day", "t", "t"}, *pu2[] = {mid, from, to, "day", "t", "t"};
    char what[200];
    snprintf(what, sizeof what, "usage %s by day, split key+model (biggest)", month);
    timed(c, what, BILL_REPORT_USAGE_SQL, 6, pu1);
    snprintf(what, sizeof what, "usage %s by day, split key+model (median)", month);
    timed(c, what, BILL_REPORT_USAGE_SQL, 6, pu2);
    const char *pu3[] = {big, from, to, "hour", "f", "f"};
    snprintf(what, sizeof what, "usage %s by hour (biggest)", month);
    timed(c, what, BILL_REPORT_USAGE_SQL, 6, pu3);
    const char *pt[] = {from, to, "20"};
    snprintf(what, sizeof what, "top 20 customers by spend, %s", month);
    timed(c, what, BILL_REPORT_TOP_SQL, 3, pt);
    const char *pb[] = {big, from, to, "day"};
    snprintf(what, sizeof what, "balance %s by day (biggest: rollups + credits)", month);
    timed(c, what, BILL_REPORT_BALANCE_SQL, 4, pb);

    bench_receipt();

    base = event_base_new();
    char spool[] = "/tmp/bill-bench-spool.XXXXXX";
    if (!mkdtemp(spool)) return 1;
    const char *secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    bill_opts_t o = {.pg_conninfo = conninfo, .key_secret = secret, .spool_dir = spool};
    char err[256];
    if (!(bill = bill_new(base, &o, err, sizeof err))) {
        fprintf(stderr, "bill_bench: bill_new: %s\n", err);
        return 1;
    }
    int64_t nsettle = getenv("BENCH_SETTLE_ROWS") ? atoll(getenv("BENCH_SETTLE_ROWS")) : 100000;
    int64_t nadmit = getenv("BENCH_ADMIT") ? atoll(getenv("BENCH_ADMIT")) : 50000;
    int inflight = getenv("BENCH_ADMIT_INFLIGHT") ? atoi(getenv("BENCH_ADMIT_INFLIGHT")) : 64;
    const char *ids = getenv("BENCH_IDS"); /* v7 (default: the gateway's), random, or both */
    if (!ids || strcmp(ids, "random")) bench_settle(c, nsettle, big_id, big_key, 0);
    if (ids && (!strcmp(ids, "random") || !strcmp(ids, "both"))) bench_settle(c, nsettle, big_id, big_key, 1);
    bench_admit(c, secret, big_id, nadmit, inflight);
    bill_free(bill);
    event_base_free(base);
    char lock[128];
    snprintf(lock, sizeof lock, "%s/gateway.lock", spool);
    unlink(lock);
    rmdir(spool);
    PQfinish(c);
    return 0;
}
