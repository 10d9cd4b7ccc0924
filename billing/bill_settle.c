/* bill_settle.c — settlement of finished requests: one usage row and one
 * ledger debit per request_id, exactly once.
 *
 * bill_settle() validates the row, appends it to the write-ahead journal
 * (metering/mtr_journal.h: the current spool file, write() — no fsync on the
 * event loop) and queues a copy tagged with that file; one batch (up to BATCH rows) at
 * a time goes to PostgreSQL in one transaction: a batch of fresh rows by COPY
 * (copy_build: every row or none, the rollups summed here), any other batch
 * (re-sent, replayed, or refused by COPY) as ONE statement (SETTLE_SQL):
 * insert the usage rows whose request_id is not there yet (a probe of its
 * primary key; the key refuses a second one) and debit the ledger only for
 * the rows actually inserted, so re-sending a row is harmless.
 *
 * The journal (metering/ owns it: files, sync timer, rotation, deletion,
 * replay reads) is told when each row commits (mtr_journal_done).  So a
 * killed process (SIGKILL, crash) loses nothing: the kernel keeps what was
 * written; a machine crash (power, kernel panic) loses at most the rows of
 * the journal's last sync interval (50 ms).
 *
 * When a batch fails for a reason other than the rows themselves (PostgreSQL
 * down, timeout, shutdown), the memory queue is emptied (rows the journal
 * could not take are appended to the spool and fsync'd first); spool files
 * are replayed (read back into the queue, tagged with their file) when a
 * connection comes back and on a 1 s retry timer, and at start, which also
 * replays the journals a killed process left.  A replay that fails half way
 * simply happens again later: rows already written are skipped by
 * request_id.  A batch rejected for its data (SQLSTATE class 22/23) is
 * retried row by row; a row rejected on its own is written to
 * <spool_dir>/rejected.jsonl and logged, never retried forever. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <event2/event.h>

#include "tg_clock.h"
#include "tg_hex.h"
#include "bill-int.h"
#include "mtr.h"
#include "mtr_journal.h"
#include "tg_json.h"

#define BATCH BILL_SETTLE_BATCH
#define QUEUE_MAX 100000 /* beyond this, new rows are only in the journal */
#define REPLAY_BELOW (QUEUE_MAX / 4) /* rows on disk only are read back once fewer are queued */
/* A batch waits up to LINGER_US after its oldest row was pushed for more rows,
 * unless LINGER_ROWS are queued: a statement costs PostgreSQL about as much
 * CPU as 70 rows (1.4 ms: triggers, plan, commit), so a lone row per statement
 * costs 2-3x what it costs in a batch of hundreds, and 256 rows 1.2x what
 * 1024 do (billing/README.md, "Settlement throughput").  Rows are in the journal before they are queued:
 * the wait delays when a row shows in PostgreSQL, never whether it does. */
#define LINGER_US 100000
#define LINGER_ROWS BATCH

#define COST_MODELS 64 /* models with their own settled-cost counter; the rest share one */

typedef struct {
    char *model;            /* NULL: "other" */
    unsigned __int128 pico; /* exact: a sum of int64 costs */
} model_cost_t;

typedef struct item {
    TAILQ_ENTRY(item) link;
    bill_usage_t u;
    int64_t cost;
    int64_t pushed_us; /* tg_mono_us() when bill_settle queued it; 0: replayed or re-sent, no wait */
    mtr_jfile_t *src;  /* the journal/spool file it is in, or NULL: memory only */
    mtr_jfile_t *prov; /* its stream's provisional record (streams journal) until the row is safe, or NULL */
    int earlier;       /* an earlier run's stream's provisional row (counted in nearlier) */
} item_t;

TAILQ_HEAD(item_q, item);

struct bill_settler {
    struct event_base *base;
    bill_pg_t *pg;
    char *dir;
    struct item_q queue, inflight;
    int nqueue, ninflight;
    long nmem;       /* of those, rows whose only copy is this memory (memory_only) */
    mtr_journal_t *journal; /* the write-ahead journal: every row's file */
    mtr_journal_t *streams; /* <spool>/streams: provisional rows of the streams under way */
    int streams_replay;     /* 1 until an earlier run's provisional rows are read back (after its rows) */
    long nearlier;          /* of the queue, such rows not committed yet */
    struct prov_row *prov;  /* an earlier run's provisional rows being read (stream_row), with their files */
    size_t nprov, cprov;
    bill_pg_job_t *job;
    struct event *kick, *retry, *linger;
    int single;      /* rows to send one by one after a data error */
    int need_replay; /* spool files may hold rows that are not queued */
    int dup_retry;   /* the batch in flight is sent again after a 23505 (SETTLE_SQL) */
    uint64_t nsettled, ninserted, ndebited, nrejected; /* bill_settle_stats_t */
    uint64_t nunjournaled; /* rows whose journal write failed (memory-only from then on) */
    uint64_t ncopied, ncopy_fallbacks; /* rows inserted by the COPY path; its batches re-sent by SETTLE_SQL */
    model_cost_t costs[COST_MODELS + 1]; /* cost of the rows inserted, per model; the last: the rest */
    int ncosts;
    void (*commit_cb)(const char *request_id, void *arg);
    void *commit_arg;
};

/* The batch's rows arrive as 19 one-dimensional arrays in PostgreSQL's binary
 * format (below), one per column; NULL elements where a column is NULL (no
 * key, no first byte, no price or override id).  A row is inserted when its
 * request id is not in usage yet (a probe of usage's primary key, below), once
 * per batch (DISTINCT ON).
 * ON CONFLICT DO NOTHING did the same with a speculative insertion per row (a
 * lock-table entry, a unique pre-check, a second WAL record): 4-5 % more of
 * PostgreSQL's CPU per row (billing/README.md, "Settlement throughput").  The
 * one case it handled that the probe does not: another session inserting the
 * same id, uncommitted, when the statement runs (a killed gateway's statement
 * still running while its successor replays the journal; the shutdown drain
 * beside a cancelled batch).  The primary key then makes the statement wait
 * for that session and, once it commits, fail with 23505 (unique_violation):
 * batch_cb sends the batch again once (its probe now sees the row), then
 * row by row as for any data error; drain_sync tries once more.  The arrays
 * are unnested in the select list (one ProjectSet, the 19 in lockstep, all n
 * long), not in FROM: unnest(a, b, ...) in FROM is a function scan that first
 * copies every row into a tuplestore (0.91-0.93x PostgreSQL CPU per row
 * without it, same rounds).  The rollups' hour and day are
 * date_bin from the Unix epoch: the UTC hour and day of received_at, as
 * date_trunc(..., 'UTC') gives them, in integer arithmetic (a time zone looked
 * up by name, twice per row, was 1.5 % of the statement).
 *
 * The probe is a correlated scalar subquery, not NOT EXISTS: PostgreSQL may
 * turn NOT EXISTS into a hash anti-join that reads usage whole, and a
 * prepared statement keeps its generic plan until usage's statistics change.
 * A session whose generic plan was made while usage was nearly empty (a new
 * database: bench/gateway's, a fresh deployment's) hashed the whole table at
 * every batch until autovacuum next analyzed it: 134-243 ms per batch a
 * minute in, 12-37 million rows of usage read per bench run (auto_explain,
 * pg_stat_user_tables.seq_tup_read).  A scalar subquery is never made a join,
 * so it stays an index probe per row (tests/billing/test_money.py,
 * test_settle_probe_whatever_the_first_plan).  The led CTE has no RETURNING
 * and the statement's counts come from the groups g, so ins is read once, by
 * g (and by led). */
static const char SETTLE_SQL[] =
    "WITH ins AS (INSERT INTO usage (request_id, customer_id, key_id, model, prompt_tokens,"
    " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens,"
    " price_input_cache_miss, price_input_cache_hit, price_output, cost_pico, http_status, stream,"
    " received_at, first_byte_at, finished_at, price_id, override_id)"
    " SELECT DISTINCT ON (request_id) request_id, customer_id, key_id, model, prompt, hit, prompt - hit,"
    " completion, reasoning, p_miss, p_hit, p_out, cost, status, stream, recv, first, fin, price_id, override_id"
    " FROM (SELECT unnest($1::uuid[]) AS request_id, unnest($2::bigint[]) AS key_id,"
    " unnest($3::bigint[]) AS customer_id, unnest($4::text[]) AS model, unnest($5::bigint[]) AS prompt,"
    " unnest($6::bigint[]) AS hit, unnest($7::bigint[]) AS completion, unnest($8::bigint[]) AS reasoning,"
    " unnest($9::bigint[]) AS p_miss, unnest($10::bigint[]) AS p_hit, unnest($11::bigint[]) AS p_out,"
    " unnest($12::bigint[]) AS cost, unnest($13::int[]) AS status, unnest($14::bool[]) AS stream,"
    " unnest($15::timestamptz[]) AS recv, unnest($16::timestamptz[]) AS first, unnest($17::timestamptz[]) AS fin,"
    " unnest($18::bigint[]) AS price_id, unnest($19::bigint[]) AS override_id) t"
    " WHERE (SELECT true FROM usage u WHERE u.request_id = t.request_id) IS NULL RETURNING request_id, customer_id, key_id, model,"
    " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico,"
    " http_status, received_at),"
    " led AS (INSERT INTO ledger (customer_id, kind, amount_pico, request_id)"
    " SELECT customer_id, 'usage', -cost_pico, request_id FROM ins WHERE cost_pico > 0),"
    /* the rows inserted, summed per hourly rollup row (and from those, per daily row) */
    " g AS (SELECT customer_id, date_bin('1 hour', received_at, timestamptz 'epoch') AS hour,"
    " coalesce(key_id, 0) AS key_id, model, count(*) AS requests, sum(prompt_cache_hit_tokens) AS hit,"
    " sum(prompt_cache_miss_tokens) AS miss, sum(completion_tokens) AS completion,"
    " sum(reasoning_tokens) AS reasoning, sum(cost_pico) AS cost,"
    " count(*) FILTER (WHERE http_status >= 500) AS failed,"
    " count(*) FILTER (WHERE cost_pico > 0) AS debited FROM ins GROUP BY 1, 2, 3, 4),"
    /* the hourly rollups of the rows inserted, in the same transaction; in
     * primary-key order, so that concurrent batches lock rows in one order */
    " roll AS (INSERT INTO usage_hourly AS h (customer_id, hour, key_id, model, requests,"
    " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico,"
    " failed_5xx)"
    " SELECT customer_id, hour, key_id, model, requests, hit, miss, completion, reasoning, cost, failed"
    " FROM g ORDER BY 1, 2, 3, 4"
    " ON CONFLICT (customer_id, hour, key_id, model) DO UPDATE SET requests = h.requests + excluded.requests,"
    " prompt_cache_hit_tokens = h.prompt_cache_hit_tokens + excluded.prompt_cache_hit_tokens,"
    " prompt_cache_miss_tokens = h.prompt_cache_miss_tokens + excluded.prompt_cache_miss_tokens,"
    " completion_tokens = h.completion_tokens + excluded.completion_tokens,"
    " reasoning_tokens = h.reasoning_tokens + excluded.reasoning_tokens,"
    " cost_pico = h.cost_pico + excluded.cost_pico, failed_5xx = h.failed_5xx + excluded.failed_5xx RETURNING 1),"
    /* and the daily rollups (migration 0015), after the hourly ones (read
     * after roll below: the lock order of every rollup writer) */
    " droll AS (INSERT INTO usage_daily AS d (customer_id, day, requests, prompt_cache_hit_tokens,"
    " prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico, failed_5xx)"
    " SELECT customer_id, date_bin('1 day', hour, timestamptz 'epoch'), sum(requests), sum(hit), sum(miss),"
    " sum(completion), sum(reasoning), sum(cost), sum(failed) FROM g GROUP BY 1, 2 ORDER BY 1, 2"
    " ON CONFLICT (customer_id, day) DO UPDATE SET requests = d.requests + excluded.requests,"
    " prompt_cache_hit_tokens = d.prompt_cache_hit_tokens + excluded.prompt_cache_hit_tokens,"
    " prompt_cache_miss_tokens = d.prompt_cache_miss_tokens + excluded.prompt_cache_miss_tokens,"
    " completion_tokens = d.completion_tokens + excluded.completion_tokens,"
    " reasoning_tokens = d.reasoning_tokens + excluded.reasoning_tokens,"
    " cost_pico = d.cost_pico + excluded.cost_pico, failed_5xx = d.failed_5xx + excluded.failed_5xx RETURNING 1)"
    /* one row per model inserted (or one row of NULLs): counts, then cost per model; all from
     * the groups g (ins read once: by g; led inserts one debit per row of ins with a cost) */
    " SELECT (SELECT coalesce(sum(requests), 0) FROM g), (SELECT coalesce(sum(debited), 0) FROM g),"
    " (SELECT count(*) FROM roll), m.model, m.cost, (SELECT count(*) FROM droll)"
    " FROM (SELECT 1) one LEFT JOIN (SELECT model, sum(cost) AS cost FROM g GROUP BY model) m ON true";

enum { NCOL = 19 };

/* ---- building the statement's array parameters ------------------------- */

/* Each column goes as a binary array (paramFormats 1): PostgreSQL reads it
 * with array_recv and each element with its type's recv function, where the
 * text literals ("{1,2,...}") were parsed character by character (array_in,
 * int8in, uuid_in: ~5 % of the statement).  The format, every integer
 * big-endian:
 *
 *   offset  size  field
 *   0       4     ndim = 1
 *   4       4     flags: 1 = may hold NULLs (array_recv takes 0 or 1)
 *   8       4     element type OID (must be the array's: uuid 2950, int8 20,
 *                 int4 23, bool 16, text 25, timestamptz 1184)
 *   12      4     number of elements n
 *   16      4     lower bound = 1
 *   20      ...   n elements: int32 length (-1: NULL, no bytes follow), then
 *                 the bytes: int8 8 (two's complement), int4 4, bool 1 (0/1),
 *                 uuid its 16 bytes, text the UTF-8 bytes (no NUL),
 *                 timestamptz int8 microseconds since 2000-01-01 00:00 UTC
 *
 * The buffers are the tree's byte buffer (common/tg_buf.h: grows, remembers
 * a failed allocation in .oom). */
enum { OID_BOOL = 16, OID_INT8 = 20, OID_INT4 = 23, OID_TEXT = 25, OID_TIMESTAMPTZ = 1184, OID_UUID = 2950 };

/* Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC). */
#define PG_EPOCH_US 946684800000000LL

static void be32(tg_buf_t *b, uint32_t v) {
    unsigned char x[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                          (unsigned char)v};
    tg_buf_put(b, x, 4);
}

static void be64(tg_buf_t *b, uint64_t v) {
    be32(b, (uint32_t)(v >> 32));
    be32(b, (uint32_t)v);
}

static void arr_head(tg_buf_t *b, uint32_t oid, int n) {
    be32(b, 1);
    be32(b, 1);
    be32(b, oid);
    be32(b, (uint32_t)n);
    be32(b, 1);
}

static void el_i64(tg_buf_t *b, int64_t v) {
    be32(b, 8);
    be64(b, (uint64_t)v);
}

static void el_null(tg_buf_t *b) { be32(b, 0xffffffffu); }

/* v, or NULL when it is 0 (no key, no price id, no first byte). */
static void el_i64_nz(tg_buf_t *b, int64_t v) {
    if (v) el_i64(b, v);
    else el_null(b);
}

/* A Unix time in microseconds as a timestamptz; NULL when it is 0. */
static void el_ts_nz(tg_buf_t *b, int64_t unix_us) {
    if (unix_us) el_i64(b, unix_us - PG_EPOCH_US);
    else el_null(b);
}

/* A request id (36 characters, checked by item_new) as its 16 bytes. */
static void el_uuid(tg_buf_t *b, const char *s) {
    unsigned char x[16];
    char hex[32];
    int n = 0;
    for (int i = 0; i < 36; i++)
        if (s[i] != '-') hex[n++] = s[i];
    if (tg_hex_decode(hex, 16, x) != 0) memset(x, 0, sizeof x); /* cannot happen: uuid_ok */
    be32(b, 16);
    tg_buf_put(b, x, 16);
}

/* The column of each parameter, its element type. */
static const uint32_t COL_OID[NCOL] = {OID_UUID, OID_INT8, OID_INT8, OID_TEXT, OID_INT8, OID_INT8, OID_INT8,
                                       OID_INT8, OID_INT8, OID_INT8, OID_INT8, OID_INT8, OID_INT4, OID_BOOL,
                                       OID_TIMESTAMPTZ, OID_TIMESTAMPTZ, OID_TIMESTAMPTZ, OID_INT8, OID_INT8};

/* Fill params[NCOL] (malloc'ed binary arrays) and len[NCOL] for n items.
 * Returns 0 or -1 (out of memory: nothing to free). */
static int build_params(item_t **it, int n, char *params[NCOL], int len[NCOL]) {
    tg_buf_t col[NCOL];
    memset(col, 0, sizeof col);
    /* Each column's size is known before a byte is written (the header, then
     * per element its length word and at most 16 bytes; the text column its
     * model names): one allocation per column, where doubling from 64 bytes
     * took about 7 reallocs per item of a batch. */
    size_t text = 0;
    for (int i = 0; i < n; i++) text += 4 + strlen(it[i]->u.model);
    for (int c = 0; c < NCOL; c++) {
        size_t el = COL_OID[c] == OID_UUID ? 4 + 16 : COL_OID[c] == OID_INT4 ? 4 + 4 : COL_OID[c] == OID_BOOL ? 4 + 1 : 4 + 8;
        tg_buf_reserve(&col[c], 20 + (COL_OID[c] == OID_TEXT ? text : (size_t)n * el));
        arr_head(&col[c], COL_OID[c], n);
    }
    for (int i = 0; i < n; i++) {
        const bill_usage_t *u = &it[i]->u;
        size_t mlen = strlen(u->model);
        el_uuid(&col[0], u->request_id);
        el_i64_nz(&col[1], u->key_id);
        el_i64(&col[2], u->customer_id);
        be32(&col[3], (uint32_t)mlen);
        tg_buf_put(&col[3], u->model, mlen);
        el_i64(&col[4], u->prompt_tokens);
        el_i64(&col[5], u->prompt_cache_hit_tokens);
        el_i64(&col[6], u->completion_tokens);
        el_i64(&col[7], u->reasoning_tokens);
        el_i64(&col[8], u->price.input_cache_miss);
        el_i64(&col[9], u->price.input_cache_hit);
        el_i64(&col[10], u->price.output);
        el_i64(&col[11], it[i]->cost);
        be32(&col[12], 4);
        be32(&col[12], (uint32_t)u->http_status);
        be32(&col[13], 1);
        tg_buf_put(&col[13], u->stream ? "\1" : "\0", 1);
        el_i64(&col[14], u->received_us - PG_EPOCH_US);
        el_ts_nz(&col[15], u->first_byte_us > 0 ? u->first_byte_us : 0);
        el_i64(&col[16], u->finished_us - PG_EPOCH_US);
        el_i64_nz(&col[17], u->price.price_id);
        el_i64_nz(&col[18], u->price.override_id);
    }
    int oom = 0;
    for (int c = 0; c < NCOL; c++) {
        oom |= col[c].oom || col[c].len > 0x7fffffff;
        params[c] = col[c].p;
        len[c] = (int)col[c].len;
    }
    if (oom) {
        for (int c = 0; c < NCOL; c++) free(params[c]);
        return -1;
    }
    return 0;
}

/* ---- the COPY path: a batch of fresh rows ------------------------------- */

static void u128_dec(unsigned __int128 v, char *out);

/* A batch whose rows are all fresh (pushed by bill_settle in this process,
 * none re-sent or replayed) and distinct goes as ONE simple query, one
 * transaction (copy_build):
 *
 *   COPY usage (...) FROM STDIN (FORMAT binary);          every row
 *   INSERT INTO usage_hourly ... ON CONFLICT DO UPDATE;   the batch's sums per
 *   INSERT INTO usage_daily ... ON CONFLICT DO UPDATE;    rollup row, from C
 *   COPY ledger (...) FROM STDIN (FORMAT binary)          a debit per row with a cost
 *
 * COPY writes a page's rows as one heap record (heap_multi_insert) and has
 * no ProjectSet, sort, probe or CTE tuplestores; the same triggers run (the
 * references, the balance per customer).  It inserts every row or none: a
 * row already in usage (a request settled twice, a journal replayed) fails
 * the whole transaction with 23505, and any data error (class 22 or 23)
 * rolls it back too; the batch is then sent again through SETTLE_SQL, which
 * skips rows already there and isolates a bad row (copy_cb; the rows are
 * re-queued as re-sent, so they never take this path again).  So the rollups
 * and the debits are those of exactly the rows inserted, as with SETTLE_SQL.
 * Lock order as SETTLE_SQL's: usage (its insert first: a locked usage table
 * stops the batch before it holds any rollup row, which the refusal counters
 * and other batches need), hourly rows, daily rows (each in primary-key
 * order: the server sorts them), then customers (the ledger's statement
 * trigger, at the end of the ledger COPY).  (With the rollups first, a test
 * that holds usage locked while a customer's credit runs out got a 503: the
 * refusal counters' upsert waited on the rollup row, and the admissions
 * behind it on the pool.) */

static const char COPY_USAGE[] =
    "COPY usage (request_id, customer_id, key_id, model, prompt_tokens, prompt_cache_hit_tokens,"
    " prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, price_input_cache_miss, price_input_cache_hit,"
    " price_output, cost_pico, http_status, stream, received_at, first_byte_at, finished_at, price_id, override_id)"
    " FROM STDIN (FORMAT binary)";
static const char COPY_LEDGER[] = "COPY ledger (customer_id, kind, amount_pico, request_id) FROM STDIN (FORMAT binary)";

/* The binary COPY header: signature, flags 0, header extension length 0. */
static const char COPY_SIG[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";

static void be16(tg_buf_t *b, uint16_t v) {
    unsigned char x[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    tg_buf_put(b, x, 2);
}

/* v as a binary numeric (numeric_recv): int16 ndigits, weight, sign
 * (0x4000 negative), dscale 0, then the base-10000 digits, most significant
 * first, trailing zero digits left out (weight keeps the scale). */
static void el_numeric(tg_buf_t *b, int64_t v) {
    uint64_t m = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    uint16_t d[5];
    int n = 0, lo = 0;
    for (; m; m /= 10000) d[n++] = (uint16_t)(m % 10000);
    while (lo < n && d[lo] == 0) lo++;
    be32(b, (uint32_t)(8 + 2 * (n - lo)));
    be16(b, (uint16_t)(n - lo));
    be16(b, (uint16_t)(n ? n - 1 : 0));
    be16(b, v < 0 ? 0x4000 : 0);
    be16(b, 0);
    for (int i = n - 1; i >= lo; i--) be16(b, d[i]);
}

/* The UTC hour and day of a Unix time in microseconds, counted from the epoch. */
static int64_t hour_of(int64_t us) { return us / 3600000000LL; }

/* Rollup order: customer, hour, key (0 for none), model (bytes; the server
 * sorts again in its collation before it locks rows). */
static int roll_cmp(const void *a, const void *b) {
    const bill_usage_t *x = &(*(item_t *const *)a)->u, *y = &(*(item_t *const *)b)->u;
    if (x->customer_id != y->customer_id) return x->customer_id < y->customer_id ? -1 : 1;
    int64_t hx = hour_of(x->received_us), hy = hour_of(y->received_us);
    if (hx != hy) return hx < hy ? -1 : 1;
    if (x->key_id != y->key_id) return x->key_id < y->key_id ? -1 : 1;
    return strcmp(x->model, y->model);
}

/* 1 when the batch may take the COPY path: every row fresh, no id twice. */
static int copy_fit(item_t **it, int n) {
    enum { SLOTS = 2 * BATCH };
    int16_t slot[SLOTS];
    memset(slot, 0xff, sizeof slot);
    for (int i = 0; i < n; i++) {
        if (!it[i]->pushed_us) return 0;
        uint64_t h = 1469598103934665603ULL;
        for (const char *p = it[i]->u.request_id; *p; p++) h = (h ^ (unsigned char)(*p | 0x20)) * 1099511628211ULL;
        for (size_t k = h % SLOTS;; k = (k + 1) % SLOTS) {
            if (slot[k] < 0) {
                slot[k] = (int16_t)i;
                break;
            }
            if (!strcasecmp(it[slot[k]]->u.request_id, it[i]->u.request_id)) return 0;
        }
    }
    return 1;
}

/* A model name as an SQL string literal E'...' (backslash and quote escaped). */
static void sql_str(tg_buf_t *b, const char *s) {
    tg_buf_put(b, "E'", 2);
    for (const char *p = s; *p; p++) {
        if (*p == '\\' || *p == '\'') tg_buf_put(b, "\\", 1);
        tg_buf_put(b, p, 1);
    }
    tg_buf_put(b, "'", 1);
}

static void sql_u128(tg_buf_t *b, unsigned __int128 v) {
    char d[48];
    u128_dec(v, d);
    tg_buf_puts(b, d);
}

typedef struct {
    unsigned __int128 requests, hit, miss, completion, reasoning, cost, failed;
} sums_t;

static void sums_add(sums_t *t, const item_t *it) {
    t->requests++;
    t->hit += (uint64_t)it->u.prompt_cache_hit_tokens;
    t->miss += (uint64_t)(it->u.prompt_tokens - it->u.prompt_cache_hit_tokens);
    t->completion += (uint64_t)it->u.completion_tokens;
    t->reasoning += (uint64_t)it->u.reasoning_tokens;
    t->cost += (uint64_t)it->cost;
    t->failed += it->u.http_status >= 500;
}

static void sums_sql(tg_buf_t *b, const sums_t *t) {
    const unsigned __int128 *v[] = {&t->requests, &t->hit, &t->miss, &t->completion, &t->reasoning, &t->cost, &t->failed};
    for (int i = 0; i < 7; i++) {
        tg_buf_put(b, ",", 1);
        sql_u128(b, *v[i]);
    }
}

/* The rollup sums of the batch's rows v as two upserts. */
static void copy_rollups(tg_buf_t *q, item_t *const *v, int n) {
    item_t *it[BATCH];
    memcpy(it, v, (size_t)n * sizeof *it);
    qsort(it, n, sizeof *it, roll_cmp);
    tg_buf_puts(q, "INSERT INTO usage_hourly AS h (customer_id, hour, key_id, model, requests,"
                   " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico,"
                   " failed_5xx) SELECT c, timestamptz 'epoch' + t * interval '1 hour', k, m, r, hit, miss, comp, rea,"
                   " cost, f FROM (VALUES ");
    sums_t t;
    for (int i = 0, first = 1; i < n;) {
        memset(&t, 0, sizeof t);
        int j = i;
        for (; j < n && roll_cmp(&it[i], &it[j]) == 0; j++) sums_add(&t, it[j]);
        const bill_usage_t *u = &it[i]->u;
        tg_buf_puts(q, first ? "(" : ",(");
        first = 0;
        tg_buf_put_i64(q, u->customer_id);
        tg_buf_put(q, ",", 1);
        tg_buf_put_i64(q, hour_of(u->received_us));
        tg_buf_put(q, ",", 1);
        tg_buf_put_i64(q, u->key_id);
        tg_buf_put(q, ",", 1);
        sql_str(q, u->model);
        sums_sql(q, &t);
        tg_buf_put(q, ")", 1);
        i = j;
    }
    tg_buf_puts(q, ") v (c, t, k, m, r, hit, miss, comp, rea, cost, f) ORDER BY 1, 2, 3, 4"
                   " ON CONFLICT (customer_id, hour, key_id, model) DO UPDATE SET requests = h.requests + excluded.requests,"
                   " prompt_cache_hit_tokens = h.prompt_cache_hit_tokens + excluded.prompt_cache_hit_tokens,"
                   " prompt_cache_miss_tokens = h.prompt_cache_miss_tokens + excluded.prompt_cache_miss_tokens,"
                   " completion_tokens = h.completion_tokens + excluded.completion_tokens,"
                   " reasoning_tokens = h.reasoning_tokens + excluded.reasoning_tokens,"
                   " cost_pico = h.cost_pico + excluded.cost_pico, failed_5xx = h.failed_5xx + excluded.failed_5xx;"
                   "INSERT INTO usage_daily AS d (customer_id, day, requests, prompt_cache_hit_tokens,"
                   " prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico, failed_5xx)"
                   " SELECT c, timestamptz 'epoch' + t * interval '24 hours', r, hit, miss, comp, rea, cost, f FROM (VALUES ");
    for (int i = 0, first = 1; i < n;) { /* sorted by customer, then hour: a day's rows are together */
        memset(&t, 0, sizeof t);
        int64_t day = hour_of(it[i]->u.received_us) / 24;
        int j = i;
        for (; j < n && it[j]->u.customer_id == it[i]->u.customer_id && hour_of(it[j]->u.received_us) / 24 == day; j++)
            sums_add(&t, it[j]);
        tg_buf_puts(q, first ? "(" : ",(");
        first = 0;
        tg_buf_put_i64(q, it[i]->u.customer_id);
        tg_buf_put(q, ",", 1);
        tg_buf_put_i64(q, day);
        sums_sql(q, &t);
        tg_buf_put(q, ")", 1);
        i = j;
    }
    tg_buf_puts(q, ") v (c, t, r, hit, miss, comp, rea, cost, f) ORDER BY 1, 2"
                   " ON CONFLICT (customer_id, day) DO UPDATE SET requests = d.requests + excluded.requests,"
                   " prompt_cache_hit_tokens = d.prompt_cache_hit_tokens + excluded.prompt_cache_hit_tokens,"
                   " prompt_cache_miss_tokens = d.prompt_cache_miss_tokens + excluded.prompt_cache_miss_tokens,"
                   " completion_tokens = d.completion_tokens + excluded.completion_tokens,"
                   " reasoning_tokens = d.reasoning_tokens + excluded.reasoning_tokens,"
                   " cost_pico = d.cost_pico + excluded.cost_pico, failed_5xx = d.failed_5xx + excluded.failed_5xx;");
}

/* The COPY path's query (*sql) and data (*data: 1 or 2 buffers, *ndata) for
 * the n rows of it.  Returns 0, or -1 out of memory (nothing to free). */
static int copy_build(item_t *const *it, int n, char **sql, char ***data, int len[2], int *ndata) {
    tg_buf_t q = {0}, u = {0}, l = {0};
    size_t text = 0;
    int ndebit = 0;
    for (int i = 0; i < n; i++) {
        text += strlen(it[i]->u.model);
        ndebit += it[i]->cost > 0;
    }
    tg_buf_reserve(&u, 21 + (size_t)n * (2 + 20 * 4 + 16 + 13 * 8 + 4 + 1) + text);
    tg_buf_reserve(&l, 21 + (size_t)ndebit * (2 + 4 * 4 + 8 + 5 + 18 + 16));
    tg_buf_put(&u, COPY_SIG, sizeof COPY_SIG);
    tg_buf_put(&l, COPY_SIG, sizeof COPY_SIG);
    for (int i = 0; i < n; i++) {
        const bill_usage_t *x = &it[i]->u;
        size_t mlen = strlen(x->model);
        be16(&u, NCOL + 1);
        el_uuid(&u, x->request_id);
        el_i64(&u, x->customer_id);
        el_i64_nz(&u, x->key_id);
        be32(&u, (uint32_t)mlen);
        tg_buf_put(&u, x->model, mlen);
        el_i64(&u, x->prompt_tokens);
        el_i64(&u, x->prompt_cache_hit_tokens);
        el_i64(&u, x->prompt_tokens - x->prompt_cache_hit_tokens);
        el_i64(&u, x->completion_tokens);
        el_i64(&u, x->reasoning_tokens);
        el_i64(&u, x->price.input_cache_miss);
        el_i64(&u, x->price.input_cache_hit);
        el_i64(&u, x->price.output);
        el_i64(&u, it[i]->cost);
        be32(&u, 4);
        be32(&u, (uint32_t)x->http_status);
        be32(&u, 1);
        tg_buf_put(&u, x->stream ? "\1" : "\0", 1);
        el_i64(&u, x->received_us - PG_EPOCH_US);
        el_ts_nz(&u, x->first_byte_us > 0 ? x->first_byte_us : 0);
        el_i64(&u, x->finished_us - PG_EPOCH_US);
        el_i64_nz(&u, x->price.price_id);
        el_i64_nz(&u, x->price.override_id);
        if (it[i]->cost <= 0) continue;
        be16(&l, 4);
        el_i64(&l, x->customer_id);
        be32(&l, 5);
        tg_buf_put(&l, "usage", 5);
        el_numeric(&l, -it[i]->cost);
        el_uuid(&l, x->request_id);
    }
    be16(&u, 0xffff); /* the file trailer */
    be16(&l, 0xffff);
    tg_buf_puts(&q, COPY_USAGE);
    tg_buf_puts(&q, ";");
    copy_rollups(&q, it, n);
    if (ndebit) tg_buf_puts(&q, COPY_LEDGER);
    char **d = malloc(2 * sizeof *d);
    if (q.oom || u.oom || l.oom || !d) {
        tg_buf_free(&q);
        tg_buf_free(&u);
        tg_buf_free(&l);
        free(d);
        return -1;
    }
    d[0] = u.p;
    len[0] = (int)u.len;
    d[1] = l.p;
    len[1] = (int)l.len;
    *ndata = ndebit ? 2 : 1;
    if (!ndebit) tg_buf_free(&l);
    *data = d;
    *sql = q.p;
    return 0;
}

/* ---- items and files ---------------------------------------------------- */

static int uuid_ok(const char *s) {
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return 0;
        }
    }
    return s[36] == 0;
}


static void item_free(item_t *it) { free(it); } /* its model name is in the same allocation */

static void reject(bill_settler_t *s, const bill_usage_t *u, const char *why) {
    s->nrejected++;
    fprintf(stderr, "bill: settlement of request %.36s rejected: %s\n", u->request_id, why);
    char path[4200];
    snprintf(path, sizeof path, "%s/rejected.jsonl", s->dir);
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f,
            "{\"request_id\":\"%.36s\",\"key_id\":%lld,\"customer_id\":%lld,\"prompt_tokens\":%lld,"
            "\"prompt_cache_hit_tokens\":%lld,\"completion_tokens\":%lld,\"reasoning_tokens\":%lld,"
            "\"price\":[%lld,%lld,%lld],\"http_status\":%d,\"why\":\"",
            u->request_id, (long long)u->key_id, (long long)u->customer_id, (long long)u->prompt_tokens,
            (long long)u->prompt_cache_hit_tokens, (long long)u->completion_tokens,
            (long long)u->reasoning_tokens, (long long)u->price.input_cache_miss,
            (long long)u->price.input_cache_hit, (long long)u->price.output, u->http_status);
    for (const char *p = why; *p; p++)
        if (*p >= 0x20 && *p != '"' && *p != '\\') fputc(*p, f);
    fputs("\"}\n", f);
    fclose(f);
}

/* A copy of u, or NULL (rejected as invalid or out of memory). */
static item_t *item_new(bill_settler_t *s, const bill_usage_t *u, mtr_jfile_t *src) {
    const char *why = NULL;
    int64_t cost = -1;
    size_t mlen = u->model ? strlen(u->model) : 0;
    if (!uuid_ok(u->request_id)) why = "request_id is not a UUID";
    else if (mlen == 0 || mlen > MTR_MODEL_MAX) why = "model name empty or too long";
    else if (u->customer_id <= 0 || u->key_id < 0) why = "no customer";
    else if (u->prompt_cache_hit_tokens < 0 || u->prompt_cache_hit_tokens > u->prompt_tokens ||
             u->reasoning_tokens < 0 || u->reasoning_tokens > u->completion_tokens)
        why = "inconsistent token counts";
    else if ((cost = bill_cost_pico(&u->price, u->prompt_tokens - u->prompt_cache_hit_tokens,
                                    u->prompt_cache_hit_tokens, u->completion_tokens)) < 0)
        why = "cost overflows or is negative";
    if (why) {
        reject(s, u, why);
        return NULL;
    }
    item_t *it = malloc(sizeof *it + mlen + 1); /* the row and its model name: one allocation */
    if (!it) {
        fprintf(stderr, "bill: out of memory settling %.36s\n", u->request_id);
        return NULL;
    }
    memset(it, 0, sizeof *it);
    char *model = (char *)(it + 1);
    memcpy(model, u->model, mlen + 1);
    it->u = *u;
    it->u.model = model;
    it->cost = cost;
    it->src = src;
    if (it->u.finished_us <= 0) it->u.finished_us = tg_wall_us();
    if (it->u.received_us <= 0) it->u.received_us = it->u.finished_us;
    if (it->u.first_byte_us < 0) it->u.first_byte_us = 0;
    return it;
}

/* ---- settled cost per model (for /metrics) -------------------------------- */

/* Add pico (a decimal string of digits, the batch's sum for model) to the
 * model's counter; models past COST_MODELS share the last slot. */
static void cost_add_v(bill_settler_t *s, const char *model, unsigned __int128 v) {
    int i;
    for (i = 0; i < s->ncosts; i++)
        if (s->costs[i].model && !strcmp(s->costs[i].model, model)) break;
    if (i == s->ncosts) {
        if (s->ncosts < COST_MODELS && (s->costs[i].model = strdup(model))) s->ncosts++;
        else i = COST_MODELS; /* "other" */
    }
    s->costs[i].pico += v;
}

static void cost_add(bill_settler_t *s, const char *model, const char *pico) {
    unsigned __int128 v = 0;
    for (const char *p = pico; *p >= '0' && *p <= '9'; p++) v = v * 10 + (unsigned)(*p - '0');
    cost_add_v(s, model, v);
}

/* The decimal digits of v into out (at least 40 bytes). */
static void u128_dec(unsigned __int128 v, char *out) {
    char t[48];
    int n = 0;
    do {
        t[n++] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++) out[i] = t[n - 1 - i];
    out[n] = 0;
}

int bill_settler_cost(const bill_settler_t *s, int i, const char **model, char usd[48]) {
    if (!s || i < 0) return -1;
    if (i > s->ncosts || (i == s->ncosts && s->costs[COST_MODELS].pico == 0)) return -1;
    const model_cost_t *c = i < s->ncosts ? &s->costs[i] : &s->costs[COST_MODELS];
    *model = c->model ? c->model : "other";
    /* USD with all 12 decimals: exact */
    char d[48];
    u128_dec(c->pico, d);
    size_t n = strlen(d);
    if (n <= 12) snprintf(usd, 48, "0.%.*s%s", (int)(12 - n), "000000000000", d);
    else snprintf(usd, 48, "%.*s.%s", (int)(n - 12), d, d + n - 12);
    return 0;
}

/* ---- the queue ---------------------------------------------------------- */

/* it is committed in PostgreSQL (or rejected for good) and off its queue:
 * its spool file is done once all of its rows are; free it. */
static void item_settled(bill_settler_t *s, item_t *it) {
    if (s->commit_cb) s->commit_cb(it->u.request_id, s->commit_arg);
    if (it->src) mtr_journal_done(s->journal, it->src);
    else s->nmem--;
    if (it->prov) mtr_journal_done(s->streams, it->prov);
    if (it->earlier) s->nearlier--;
    item_free(it);
}

/* Free every item of q: spooled (on_disk: each row is in a journal or spool
 * file, so its stream's provisional record is not needed any more), or given
 * up at shutdown (its provisional record stays for the next run). */
static void items_free(bill_settler_t *s, struct item_q *q, int on_disk) {
    item_t *it;
    while ((it = TAILQ_FIRST(q))) {
        TAILQ_REMOVE(q, it, link);
        if (on_disk && it->prov) mtr_journal_done(s->streams, it->prov);
        if (it->earlier) s->nearlier--; /* (dropped: read back as any row of this run, edge left) */
        item_free(it);
    }
}

/* The batch in flight goes back to the head of the queue, in order. */
static void inflight_requeue(bill_settler_t *s) {
    item_t *it;
    while ((it = TAILQ_LAST(&s->inflight, item_q))) {
        TAILQ_REMOVE(&s->inflight, it, link);
        it->pushed_us = 0;
        TAILQ_INSERT_HEAD(&s->queue, it, link);
    }
    s->nqueue += s->ninflight;
    s->ninflight = 0;
}

static void flush(bill_settler_t *s);

/* Rows queued or in flight whose only copy is this process's memory: their
 * journal write failed and no spool append has taken them yet.  Counted as
 * they come and go (a walk of a queue of up to QUEUE_MAX rows, at every lease
 * tick and scrape, was 0.8% of the gateway's CPU with PostgreSQL behind). */
static long memory_only(const bill_settler_t *s) { return s->nmem; }

static void streams_replay(bill_settler_t *s);

static void kick_cb(evutil_socket_t fd, short what, void *arg) { flush(arg); }

static void kick(bill_settler_t *s) { event_active(s->kick, EV_TIMEOUT, 0); }

/* Append the memory-only items of q to the spool (fsync'd).  Returns 0 or -1. */
static int spool_items(bill_settler_t *s, struct item_q *q) {
    const bill_usage_t *v[BATCH];
    size_t n = 0;
    int rc = mtr_journal_spool(s->journal, NULL, 0); /* opens the journal */
    item_t *it;
    TAILQ_FOREACH(it, q, link) {
        if (rc) break;
        if (it->src) continue;
        v[n++] = &it->u;
        if (n == BATCH) {
            rc |= mtr_journal_spool(s->journal, v, n);
            n = 0;
        }
    }
    if (n && !rc) rc |= mtr_journal_spool(s->journal, v, n);
    return rc;
}

/* PostgreSQL is unusable: move everything from memory to the spool, forget
 * what was loaded from spool files (it will be read again), retry later. */
static void go_down(bill_settler_t *s, const char *why) {
    mtr_journal_flush(s->journal); /* grouped records: in the file, or memory-only */
    long nspool = s->nmem;
    if (nspool) {
        if (spool_items(s, &s->inflight) != 0 || spool_items(s, &s->queue) != 0) {
            /* Cannot spool either: keep the rows in memory and retry. */
            fprintf(stderr, "bill: cannot write the spool in %s: %s; %ld settlements held in memory\n",
                    s->dir, strerror(errno), nspool);
            inflight_requeue(s);
            goto retry;
        }
        fprintf(stderr, "bill: %s; %ld settlements spooled to %s\n", why, nspool, s->dir);
    } else if (s->nqueue + s->ninflight) {
        fprintf(stderr, "bill: %s; %d settlements wait in the journal in %s\n", why, s->nqueue + s->ninflight,
                s->dir);
    }
    items_free(s, &s->inflight, 1);
    items_free(s, &s->queue, 1);
    s->nqueue = s->ninflight = 0;
    s->nmem = 0;
    mtr_journal_drop_all(s->journal); /* every file is read again; rows from now on go to a new journal */
    s->need_replay = 1;
    s->single = 0;
retry:;
    struct timeval tv = {1, 0};
    evtimer_add(s->retry, &tv);
}

/* The batch in flight committed: inserted of its rows were new, debited of
 * those had a cost. */
static void batch_ok(bill_settler_t *s, uint64_t inserted, uint64_t debited) {
    item_t *it;
    while ((it = TAILQ_FIRST(&s->inflight))) {
        TAILQ_REMOVE(&s->inflight, it, link);
        item_settled(s, it);
    }
    s->nsettled += (uint64_t)s->ninflight;
    s->ninserted += inserted;
    s->ndebited += debited;
    s->ninflight = 0;
    /* rows wait on disk only (an outage's spool, read a part at a time; a full
     * queue): read the next part once the queue is short, not only once it is
     * empty, which a steady load may never leave it at a batch's end */
    if (s->need_replay && s->nqueue < REPLAY_BELOW) bill_settler_on_up(s);
    streams_replay(s);
    kick(s);
}

static void batch_cb(PGresult *res, const char *err, void *arg) {
    bill_settler_t *s = arg;
    s->job = NULL;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        char why[512];
        snprintf(why, sizeof why, "settlement batch failed: %s",
                 err ? err : res ? PQresultErrorMessage(res) : "?");
        why[strcspn(why, "\n")] = 0;
        if (state && !strcmp(state, "23505") && !s->dup_retry) {
            /* another session's row with one of these ids, committed while the statement
             * waited for it (SETTLE_SQL): the same batch again skips it */
            s->dup_retry = 1;
            inflight_requeue(s);
            kick(s);
            return;
        }
        s->dup_retry = 0;
        if (state && (state[0] == '2' && (state[1] == '2' || state[1] == '3'))) {
            if (s->ninflight == 1) { /* this row is bad on its own */
                item_t *it = TAILQ_FIRST(&s->inflight);
                TAILQ_REMOVE(&s->inflight, it, link);
                s->ninflight = 0;
                reject(s, &it->u, why);
                item_settled(s, it);
            } else { /* find the bad row: send them one by one */
                s->single = s->ninflight;
                inflight_requeue(s);
            }
            kick(s);
            return;
        }
        go_down(s, why);
        return;
    }
    s->dup_retry = 0;
    uint64_t inserted = 0, debited = 0;
    if (PQntuples(res) >= 1 && PQnfields(res) >= 2) {
        inserted = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
        debited = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
    }
    for (int i = 0; PQnfields(res) >= 5 && i < PQntuples(res); i++)
        if (!PQgetisnull(res, i, 3)) cost_add(s, PQgetvalue(res, i, 3), PQgetvalue(res, i, 4));
    batch_ok(s, inserted, debited);
}

/* The answer to a batch sent by the COPY path (copy_build): every row
 * inserted, or none. */
static void copy_cb(PGresult *res, const char *err, void *arg) {
    bill_settler_t *s = arg;
    if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
        s->job = NULL;
        uint64_t debited = 0;
        item_t *it;
        TAILQ_FOREACH(it, &s->inflight, link) {
            debited += it->cost > 0;
            cost_add_v(s, it->u.model, (uint64_t)it->cost);
        }
        s->ncopied += (uint64_t)s->ninflight;
        batch_ok(s, (uint64_t)s->ninflight, debited);
        return;
    }
    if (res && PQresultStatus(res) == PGRES_FATAL_ERROR) {
        /* PostgreSQL refused a statement (a row already in usage: 23505; a
         * row it refuses: class 22 or 23; a lock timeout, ...): nothing was
         * written.  The same rows again through SETTLE_SQL (re-queued as
         * re-sent, so never by this path), which skips or isolates them.
         * (bill_pg fails a job whose connection broke with res NULL.) */
        s->job = NULL;
        s->ncopy_fallbacks++;
        inflight_requeue(s);
        kick(s);
        return;
    }
    batch_cb(res, err, arg); /* PostgreSQL unreachable, a timeout: as for any batch */
}

static void flush(bill_settler_t *s) {
    if (s->job || s->nqueue == 0 || evtimer_pending(s->retry, NULL)) return;
    if (!s->single && s->nqueue < LINGER_ROWS && TAILQ_FIRST(&s->queue)->pushed_us) {
        int64_t wait = TAILQ_FIRST(&s->queue)->pushed_us + LINGER_US - tg_mono_us();
        if (wait > 0) {
            if (!evtimer_pending(s->linger, NULL)) {
                struct timeval tv = {0, (suseconds_t)wait};
                evtimer_add(s->linger, &tv);
            }
            return;
        }
    }
    mtr_journal_flush(s->journal); /* write-ahead: a row is in its file before PostgreSQL sees it */
    item_t *v[BATCH];
    int n = 0, max = s->single ? 1 : BATCH;
    item_t *it;
    TAILQ_FOREACH(it, &s->queue, link) {
        if (n == max) break;
        v[n++] = it;
    }
    char *params[NCOL], *sql, **data;
    int len[NCOL], ndata;
    if (!s->single && !s->dup_retry && copy_fit(v, n)) { /* fresh rows: COPY (see copy_build) */
        if (copy_build(v, n, &sql, &data, len, &ndata) == 0) {
            s->job = bill_pg_copy(s->pg, sql, ndata, data, len, copy_cb, s);
            free(sql);
        }
    } else if (build_params(v, n, params, len) == 0) {
        s->job = bill_pg_query_binary(s->pg, SETTLE_SQL, NCOL, (const char *const *)params, len, batch_cb, s);
        bill_pg_job_prepared(s->job, "tg_settle");
        for (int c = 0; c < NCOL; c++) free(params[c]);
    }
    if (!s->job) {
        struct timeval tv = {1, 0};
        evtimer_add(s->retry, &tv);
        return;
    }
    if (s->single) s->single--;
    for (int i = 0; i < n; i++) {
        TAILQ_REMOVE(&s->queue, v[i], link);
        TAILQ_INSERT_TAIL(&s->inflight, v[i], link);
    }
    s->nqueue -= n;
    s->ninflight = n;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg) {
    bill_settler_t *s = arg;
    if (!bill_pg_up(s->pg)) {
        /* Rows the journal could not take (a full disk) wait in memory for
         * PostgreSQL; a kill would lose them.  Try the spool again every
         * second: once the disk has room they are on it (go_down frees the
         * queue, the replay reads it all back when PostgreSQL is up). */
        if (!s->job && memory_only(s)) {
            go_down(s, "PostgreSQL still unreachable");
            return;
        }
        struct timeval tv = {1, 0};
        evtimer_add(s->retry, &tv);
        return;
    }
    if (s->need_replay) bill_settler_on_up(s);
    flush(s);
}

/* ---- replay ------------------------------------------------------------- */

/* A row read back from a spool file (on the loop): validated and queued. */
static int replay_row(const bill_usage_t *u, mtr_jfile_t *f, void *arg) {
    bill_settler_t *s = arg;
    item_t *it = item_new(s, u, f);
    if (!it) return 0;
    TAILQ_INSERT_TAIL(&s->queue, it, link);
    s->nqueue++;
    return 1;
}

static void replay_done(long rows, int failed, void *arg) {
    bill_settler_t *s = arg;
    if (failed) { /* files left (a bounded replay, or a failed read): read once the queue drains */
        s->need_replay = 1;
        if (s->nqueue == 0 && !s->job && !evtimer_pending(s->retry, NULL)) { /* no batch's end will */
            struct timeval tv = {1, 0};
            evtimer_add(s->retry, &tv);
        }
    }
    if (rows) fprintf(stderr, "bill: replaying %ld spooled settlements from %s\n", rows, s->dir);
    streams_replay(s);
    kick(s);
}

void bill_settler_on_up(void *arg) {
    bill_settler_t *s = arg;
    s->need_replay = 0;
    switch (mtr_journal_replay(s->journal, replay_row, replay_done, s)) {
    case 0: /* nothing to read */
        streams_replay(s);
        kick(s);
        break;
    case -1: /* cannot list the directory, or short of memory: later */
    case -2: /* one at a time; this one is looked at again when it is done */
        s->need_replay = 1;
        break;
    }
}

/* ---- public ------------------------------------------------------------- */

static int pending_q(const struct item_q *q, int64_t customer_id, tg_buf_t *ids, tg_buf_t *costs) {
    const item_t *it;
    int rc = 0;
    TAILQ_FOREACH(it, q, link) {
        if (it->u.customer_id != customer_id) continue;
        if (ids->len > 1) rc |= tg_buf_puts(ids, ",") | tg_buf_puts(costs, ",");
        rc |= tg_buf_puts(ids, it->u.request_id) | tg_buf_put_i64(costs, it->cost);
    }
    return rc;
}

int bill_settler_pending(const bill_settler_t *s, int64_t customer_id, tg_buf_t *ids, tg_buf_t *costs) {
    int rc = tg_buf_puts(ids, "{") | tg_buf_puts(costs, "{");
    if (s) rc |= pending_q(&s->inflight, customer_id, ids, costs) | pending_q(&s->queue, customer_id, ids, costs);
    rc |= tg_buf_puts(ids, "}") | tg_buf_puts(costs, "}");
    return rc ? -1 : 0;
}

void bill_settler_stats(const bill_settler_t *s, bill_settle_stats_t *st) {
    memset(st, 0, sizeof *st);
    st->idle = 1;
    if (!s) return;
    st->queued = s->nqueue;
    st->in_flight = s->ninflight;
    mtr_journal_stats_t js;
    mtr_journal_stats(s->journal, &js);
    st->spool_files = js.files;
    st->spool_pending = js.pending;
    st->spool_bytes = js.bytes;
    st->journal_rows = js.journal_rows;
    st->journal_bytes = js.journal_bytes;
    st->replay_pending = js.unloaded || s->need_replay; /* also while a read is on the worker thread */
    st->settled_total = s->nsettled;
    st->inserted_total = s->ninserted;
    st->copied_total = s->ncopied;
    st->copy_fallbacks_total = s->ncopy_fallbacks;
    st->debited_total = s->ndebited;
    st->rejected_total = s->nrejected;
    st->memory_only = memory_only(s);
    st->found_files = js.found_files;
    st->unjournaled_total = s->nunjournaled;
    st->earlier_streams = s->streams_replay || s->nearlier > 0;
    /* idle: an earlier run's streams' provisional rows read too (they wait for its other rows' commit) */
    st->idle = !s->nqueue && !s->ninflight && !s->job && !st->replay_pending && !s->streams_replay;
}

/* Grouped journal records (journal_group): a row's record may wait in the
 * journal's memory (mtr_journal_append) until mtr_journal_flush.  Such a row
 * is always the newest of the queue's, never sent, dropped or freed before a
 * flush: flush() and go_down() flush first, and the drop below too; a failed
 * flush makes the rows memory-only (on_unwritten), as a failed write does. */
int bill_settler_journal_held(const bill_settler_t *s) { return s && mtr_journal_held(s->journal); }

int bill_settler_journal_flush(bill_settler_t *s) { return s ? mtr_journal_flush(s->journal) : 0; }

int bill_settler_journal_writable(bill_settler_t *s) { return s && mtr_journal_writable(s->journal); }

void bill_settler_journal_share_disk(bill_settler_t *s, int *flag) { mtr_journal_share_disk(s->journal, flag); }

void bill_settler_push(bill_settler_t *s, const bill_usage_t *u, mtr_jfile_t *prov) {
    item_t *it = item_new(s, u, NULL);
    if (!it) { /* rejected (logged, rejected.jsonl) or no memory: the stream's own row decided */
        if (prov) mtr_journal_done(s->streams, prov);
        return;
    }
    it->prov = prov;
    mtr_jfile_t *f = it->src = mtr_journal_append(s->journal, &it->u, it);
    if (!f) s->nunjournaled++; /* in memory only: logged by the journal */
    if (!f) s->nmem++;         /* (a grouped record that fails later: on_unwritten) */
    if (f && s->nqueue >= QUEUE_MAX) { /* on disk only: its file is read again once the queue drains */
        mtr_journal_flush(s->journal);
        if (it->src) { /* written (else held in memory, queued, as a failed write leaves it) */
            mtr_journal_drop(s->journal, f);
            s->need_replay = 1;
            if (prov) mtr_journal_done(s->streams, prov);
            item_free(it);
            return;
        }
    }
    it->pushed_us = tg_mono_us();
    TAILQ_INSERT_TAIL(&s->queue, it, link);
    s->nqueue++;
    kick(s);
}

/* A grouped journal record could not be written: the row is in memory only. */
static void on_unwritten(void *cookie, void *arg) {
    item_t *it = cookie;
    bill_settler_t *s = arg;
    it->src = NULL;
    s->nunjournaled++;
    s->nmem++;
}

/* ---- streams' provisional rows ------------------------------------------------
 *
 * A stream's client holds part of an answer from its head on, long before
 * the stream's own row is settled (at its end).  So when the head is about to
 * go out the gateway journals a provisional row (bill_stream_begin: the
 * gateway's prompt count, no completion) in a journal of its own,
 * <spool>/streams, written at once (write(2), no group).  It is done (and its
 * file deleted in time) once the stream's own row is safe: committed,
 * rejected, or left memory for a journal or spool file.  Only a process that
 * dies in between leaves it: the next run reads such files once its own
 * replay of the earlier run's rows has committed (so a stream's own row, when
 * it was journaled, is in PostgreSQL first and the provisional one is
 * skipped by its request id), writes each row into its journal and sends it
 * as any other.  So a stream cut by a crash is billed once: its prompt. */

mtr_jfile_t *bill_settler_stream_begin(bill_settler_t *s, const bill_usage_t *u) {
    return s && s->streams ? mtr_journal_write(s->streams, u) : NULL;
}

void bill_settler_stream_done(bill_settler_t *s, mtr_jfile_t *prov) {
    if (s && prov) mtr_journal_done(s->streams, prov);
}

/* An earlier run's provisional rows are read, kept (pending in their files)
 * and sorted by request id: a stream may have several (the gateway writes a
 * newer one as chunks go out), the one with the most completion is billed. */
struct prov_row {
    item_t *it;
    mtr_jfile_t *f;
};

static int stream_row(const bill_usage_t *u, mtr_jfile_t *f, void *arg) {
    bill_settler_t *s = arg;
    if (s->nprov == s->cprov) {
        size_t nc = s->cprov ? s->cprov * 2 : 64;
        struct prov_row *nv = realloc(s->prov, nc * sizeof *nv);
        if (!nv) return 1; /* short of memory: left pending, read again by the next run */
        s->prov = nv;
        s->cprov = nc;
    }
    item_t *it = item_new(s, u, NULL);
    if (!it) return 0; /* rejected for good (logged) */
    s->prov[s->nprov++] = (struct prov_row){it, f};
    return 1;
}

static int prov_cmp(const void *a, const void *b) {
    const item_t *x = ((const struct prov_row *)a)->it, *y = ((const struct prov_row *)b)->it;
    int c = strcmp(x->u.request_id, y->u.request_id);
    if (c) return c;
    if (x->u.completion_tokens != y->u.completion_tokens) return x->u.completion_tokens < y->u.completion_tokens ? -1 : 1;
    return x->u.finished_us < y->u.finished_us ? -1 : x->u.finished_us > y->u.finished_us;
}

/* The rows read: each stream's latest goes into this run's journal and the
 * queue (or, when the journal cannot take it, stays pending in its stream
 * file until it commits); the others are let go. */
static void stream_replayed(long rows, int failed, void *arg) {
    bill_settler_t *s = arg;
    long billed = 0;
    if (s->nprov) qsort(s->prov, s->nprov, sizeof *s->prov, prov_cmp); /* (prov is NULL when none was read) */
    for (size_t i = 0; i < s->nprov;) {
        size_t j = i + 1;
        while (j < s->nprov && !strcmp(s->prov[j].it->u.request_id, s->prov[i].it->u.request_id)) j++;
        item_t *it = s->prov[j - 1].it; /* the most completion */
        it->src = mtr_journal_write(s->journal, &it->u);
        if (!it->src) { /* its stream file keeps it until it commits */
            s->nunjournaled++;
            s->nmem++;
            it->prov = s->prov[j - 1].f;
        }
        it->earlier = 1;
        s->nearlier++;
        TAILQ_INSERT_TAIL(&s->queue, it, link);
        s->nqueue++;
        billed++;
        for (size_t k = i; k < j; k++) {
            if (k != j - 1) item_free(s->prov[k].it);
            if (k != j - 1 || it->src) mtr_journal_done(s->streams, s->prov[k].f);
        }
        i = j;
    }
    s->nprov = 0;
    s->streams_replay = failed; /* 1: the rest later */
    if (billed)
        fprintf(stderr, "bill: %ld streams cut by an earlier run's end, billed what was sent (%ld rows read)\n",
                billed, rows);
    kick(s);
}

/* Once the earlier run's rows (the journal's files found at start) have all
 * committed: read its streams' provisional rows.  Looked at when a replay
 * part was read and when a batch committed (start-up only: no system call). */
static void streams_replay(bill_settler_t *s) {
    if (s->streams_replay != 1 || s->need_replay || mtr_journal_earlier(s->journal)) return;
    s->streams_replay = 2; /* reading: stream_replayed ends it */
    switch (mtr_journal_replay(s->streams, stream_row, stream_replayed, s)) {
    case 0: /* nothing to read */
        s->streams_replay = 0;
        break;
    case 1:
        break;
    default: /* later */
        s->streams_replay = 1;
        break;
    }
}

bill_settler_t *bill_settler_new(struct event_base *base, bill_pg_t *pg, const char *spool_dir, int journal_group,
                                 char *err, size_t errlen) {
    bill_settler_t *s = calloc(1, sizeof *s);
    if (!s) goto fail;
    s->base = base;
    s->pg = pg;
    TAILQ_INIT(&s->queue);
    TAILQ_INIT(&s->inflight);
    s->dir = strdup(spool_dir);
    s->kick = event_new(base, -1, 0, kick_cb, s);
    s->retry = evtimer_new(base, retry_cb, s);
    s->linger = evtimer_new(base, kick_cb, s);
    if (!s->dir || !s->kick || !s->retry || !s->linger) goto fail;
    /* Writable spool or nothing: find out now, not during an outage. */
    mtr_journal_opts_t jo = {.group = journal_group};
    if (!(s->journal = mtr_journal_new(base, spool_dir, &jo, err, errlen))) {
        bill_settler_free(s, NULL);
        return NULL;
    }
    mtr_journal_on_unwritten(s->journal, on_unwritten, s);
    char streams[4200];
    snprintf(streams, sizeof streams, "%s/streams", spool_dir);
    mtr_journal_opts_t so = {.group = 0}; /* one write per stream: before its head goes out */
    if (!(s->streams = mtr_journal_new(base, streams, &so, err, errlen))) {
        bill_settler_free(s, NULL);
        return NULL;
    }
    s->need_replay = 1;
    s->streams_replay = 1;
    return s;
fail:
    snprintf(err, errlen, "out of memory");
    bill_settler_free(s, NULL);
    return NULL;
}

/* Send q's items synchronously over conn; returns 0 when all committed. */
static int drain_sync(bill_settler_t *s, PGconn *conn, struct item_q *q) {
    item_t *it;
    while ((it = TAILQ_FIRST(q))) {
        item_t *v[BATCH];
        int n = 0;
        TAILQ_FOREACH(it, q, link) {
            if (n == BATCH) break;
            v[n++] = it;
        }
        char *params[NCOL];
        int len[NCOL], fmt[NCOL];
        for (int c = 0; c < NCOL; c++) fmt[c] = 1;
        if (build_params(v, n, params, len) != 0) return -1;
        PGresult *r = PQexecParams(conn, SETTLE_SQL, NCOL, NULL, (const char *const *)params, len, fmt, 0);
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (state && !strcmp(state, "23505")) { /* another session's row, committed meanwhile: once more */
            PQclear(r);
            r = PQexecParams(conn, SETTLE_SQL, NCOL, NULL, (const char *const *)params, len, fmt, 0);
        }
        for (int c = 0; c < NCOL; c++) free(params[c]);
        int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        if (!ok) fprintf(stderr, "bill: final settlement failed: %s", PQresultErrorMessage(r));
        PQclear(r);
        if (!ok) return -1;
        for (int i = 0; i < n; i++) {
            TAILQ_REMOVE(q, v[i], link);
            item_settled(s, v[i]);
        }
        *(q == &s->inflight ? &s->ninflight : &s->nqueue) -= n; /* else: "unreachable", the files replayed */
        s->nsettled += (uint64_t)n;
    }
    return 0;
}

void bill_settler_free(bill_settler_t *s, const char *conninfo) {
    if (!s) return;
    mtr_journal_quiesce(s->journal); /* a replay's rows are queued, syncs done: before anything is flushed */
    mtr_journal_quiesce(s->streams); /* the same for an earlier run's streams' rows */
    if (s->job) bill_pg_cancel(s->job); /* may still commit: its rows are re-sent, harmlessly */
    s->job = NULL;
    mtr_journal_rotate(s->journal); /* deleted now if all committed, else when the drain commits its rows */
    if (conninfo && (s->nqueue || s->ninflight)) {
        const char *keys[] = {"dbname", "connect_timeout", "options", "application_name", NULL};
        const char *vals[] = {conninfo, "2", "-c statement_timeout=5000", "tollgate-drain", NULL};
        PGconn *conn = PQconnectdbParams(keys, vals, 1);
        if (PQstatus(conn) == CONNECTION_OK && drain_sync(s, conn, &s->inflight) == 0)
            drain_sync(s, conn, &s->queue);
        PQfinish(conn);
    }
    if ((s->nqueue || s->ninflight) && s->journal) go_down(s, "shutting down with PostgreSQL unreachable");
    items_free(s, &s->inflight, 0);
    items_free(s, &s->queue, 0);
    mtr_journal_free(s->journal); /* closes the journal go_down may have reopened; files stay */
    mtr_journal_free(s->streams);
    for (size_t i = 0; i < s->nprov; i++) item_free(s->prov[i].it);
    free(s->prov);
    for (int i = 0; i < s->ncosts; i++) free(s->costs[i].model);
    if (s->kick) event_free(s->kick);
    if (s->retry) event_free(s->retry);
    if (s->linger) event_free(s->linger);
    free(s->dir);
    free(s);
}

void bill_settler_on_commit(bill_settler_t *s, void (*cb)(const char *request_id, void *arg), void *arg) {
    s->commit_cb = cb;
    s->commit_arg = arg;
}
