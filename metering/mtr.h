/* mtr.h — metering: the durable local spool of settlements.  Every
 * settlement is appended to the current file of the spool directory when it
 * is made (the write-ahead journal: plain writes, fdatasync'd by a timer;
 * mtr_journal.h) and rows that could not be journaled are appended and
 * fsync'd when PostgreSQL fails; files are replayed at start and when the
 * database is back, and deleted once all their rows committed.  The usage
 * row's request_id makes a replayed record harmless if it was written before
 * (INSERT .. ON CONFLICT DO NOTHING).
 *
 * Spool file: `<spool_dir>/settle-<unix_us>-<pid>.spool`, a sequence of
 * records; every integer little-endian:
 *
 *   offset  size  field
 *   0       4     magic "TGS1", or "TGS2" for a record with the price version
 *   4       4     payload length N (u32, MTR_REC_MIN .. MTR_REC_MAX; 139+M, TGS2 155+M)
 *   8       4     CRC-32 (IEEE 802.3, as zlib's crc32) of the N payload bytes
 *   12      N     payload:
 *     0     36      request_id, ASCII UUID "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
 *     36    8       key_id (i64)
 *     44    8       customer_id (i64)
 *     52    8       price.input_cache_miss (i64, micro-USD per 1M tokens)
 *     60    8       price.input_cache_hit (i64)
 *     68    8       price.output (i64)
 *     76    8       prompt_tokens (i64)
 *     84    8       prompt_cache_hit_tokens (i64)
 *     92    8       completion_tokens (i64)
 *     100   8       reasoning_tokens (i64)
 *     108   4       http_status (i32)
 *     112   1       stream (0 or 1)
 *     113   8       received_us (i64, CLOCK_REALTIME microseconds)
 *     121   8       first_byte_us (i64, 0 = none)
 *     129   8       finished_us (i64)
 *     137   2       model length M (u16, 1 .. MTR_MODEL_MAX)
 *     139   M       model name bytes (no NUL)
 *   TGS2 only (a row whose price version is known; TGS1 otherwise, as before):
 *     139+M 8       price.price_id (i64, model_prices.id, 0 = none)
 *     147+M 8       price.override_id (i64, price_overrides.id, 0 = none)
 *                   (not both 0: such a row is written as TGS1)
 *
 * A torn last record (a crash in the middle of an append) is ignored on
 * replay; where a record boundary holds no record (bad magic, length or CRC:
 * garbage, damage, a torn record with records behind it) the reader scans
 * on to the next whole record, so every intact record is replayed, and the
 * file is kept as `*.corrupt` instead of being deleted once they commit. */
#ifndef MTR_H
#define MTR_H

#include <stddef.h>
#include <stdint.h>

/* Prices of one model, integer micro-USD per 1M tokens, and the version they
 * come from (kept on the usage row). */
typedef struct {
    int64_t input_cache_miss;
    int64_t input_cache_hit;
    int64_t output;
    int64_t price_id;    /* model_prices.id of the base price used; 0: none */
    int64_t override_id; /* price_overrides.id of the customer's override applied; 0: none */
} mtr_price_t;

/* The usage record: one finished (or failed) request, what a usage row holds
 * and what the spool records below encode. */
typedef struct {
    char request_id[37];        /* UUIDv7, the idempotency key of the usage row */
    int64_t key_id, customer_id;
    const char *model;
    mtr_price_t price;
    int64_t prompt_tokens;      /* = cache_hit + cache_miss */
    int64_t prompt_cache_hit_tokens;
    int64_t completion_tokens;
    int64_t reasoning_tokens;   /* counted inside completion_tokens */
    int http_status;            /* what the client got */
    int stream;                 /* 1 when streamed */
    int64_t received_us;        /* CLOCK_REALTIME microseconds */
    int64_t first_byte_us;      /* 0 when none */
    int64_t finished_us;
} mtr_usage_t;

#define MTR_MODEL_MAX 1024
#define MTR_REC_HDR 12
#define MTR_REC_MIN 140
#define MTR_REC_MAX (155 + MTR_MODEL_MAX)

uint32_t mtr_crc32(const void *p, size_t n);

/* Encode u as one record into buf (cap >= MTR_REC_HDR + MTR_REC_MAX is
 * always enough).  Returns the record's size, 0 when u's model is empty or
 * too long or buf too small. */
size_t mtr_spool_encode(const mtr_usage_t *u, uint8_t *buf, size_t cap);

/* Decode the record at p[0..n).  On 1, *u is filled (u->model points into
 * model, which needs MTR_MODEL_MAX + 1 bytes) and *used is its size.
 * Returns 0 when p holds only part of a record, -1 when it is corrupt. */
int mtr_spool_decode(const uint8_t *p, size_t n, mtr_usage_t *u, char *model, size_t *used);

/* The open spool file new records go to. */
typedef struct mtr_spool mtr_spool_t;

/* Append records to the current file of dir (creating it, and dir, when
 * needed) and fsync it before returning.  Returns 0, or -1 with errno set. */
int mtr_spool_append(mtr_spool_t **sp, const char *dir, const mtr_usage_t *const *u, size_t n);
/* The same without the fsync (the settlement journal: write() alone survives
 * a killed process; mtr_spool_sync later covers a machine crash).  n = 0
 * only opens the file.  A failed write may leave a torn record at the end:
 * close the file then, so that it stays the last one.  Returns 0 or -1. */
int mtr_spool_write(mtr_spool_t **sp, const char *dir, const mtr_usage_t *const *u, size_t n);
int mtr_spool_fd(const mtr_spool_t *sp); /* its descriptor (dup it to sync elsewhere) */
/* Write n encoded bytes (whole records) to an open file, through short
 * writes; 0, or -1 with errno (a part may have been written). */
int mtr_spool_write_bytes(mtr_spool_t *sp, const void *p, size_t n);
int mtr_spool_sync(mtr_spool_t *sp);              /* fdatasync; 0 or -1 */
const char *mtr_spool_name(const mtr_spool_t *sp); /* the file's name, without dir */
/* Close the current file (the next append starts a new one).  Accepts NULL. */
void mtr_spool_close(mtr_spool_t *sp);

/* Call fn for every record of the file at path, in order.  Returns the number
 * of records, -1 when the file cannot be read; *corrupt is set to 1 when the
 * file has a corrupt record (the ones before it were delivered). */
typedef void (*mtr_record_fn)(const mtr_usage_t *u, void *arg);
long mtr_spool_read(const char *path, mtr_record_fn fn, void *arg, int *corrupt);

/* Names (not paths) of the spool files in dir, sorted (oldest first); the
 * array and strings are malloc'ed, free with mtr_names_free.  Returns the
 * count (0 when dir does not exist), -1 on error. */
int mtr_spool_list(const char *dir, char ***names);
void mtr_names_free(char **names, int n);

/* Move the spool files of dir `from` into dir `to` (created when needed):
 * the rows a run with one spool directory left are replayed by the run that
 * gives its loops subdirectories.  The caller holds `from`'s lock.  A name
 * already taken in `to` gets the prefix "settle-adopted-".  Returns 0, or -1
 * with err saying why (files moved so far stay moved). */
int mtr_spool_adopt(const char *from, const char *to, char *err, size_t errlen);

/* One process per spool directory: lock `<dir>/gateway.lock` (flock, held
 * until mtr_spool_unlock or the process's end, even a SIGKILL), creating dir
 * when needed.  Returns the lock's descriptor, or -1 with err saying why
 * (another process holds it: its pid). */
#define MTR_LOCK_NAME "gateway.lock"
int mtr_spool_lock(const char *dir, char *err, size_t errlen);
void mtr_spool_unlock(int fd); /* accepts -1 */

#endif
