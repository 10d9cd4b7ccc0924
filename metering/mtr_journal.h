/* mtr_journal.h — the write-ahead journal of usage records over one spool
 * directory (the files and record format of mtr.h), driven from an event
 * loop.
 *
 * A record is written (write(2), no fsync on the loop) to the open journal
 * file when it is made, and its file counts it as pending until the owner
 * says it committed (mtr_journal_done).  A timer fdatasyncs the journal
 * sync_ms after the first unsynced record; the journal is rotated (closed,
 * the next record opens a new file) after rotate_rows records or rotate_us;
 * a closed file whose records all committed is deleted (or kept as
 * `*.corrupt` when a replay found a corrupt record in it).  So a killed
 * process loses nothing (the kernel keeps what was written) and a machine
 * crash at most the records of the last sync_ms.
 *
 * Files whose records are not (all) in the owner's memory — left by a killed
 * process, written while the database was down, or dropped from memory —
 * are read back by mtr_journal_replay, which hands each record to the owner
 * tagged with its file.  fdatasync and replay reads run on a worker thread
 * (common/tg_work.h): the loop only lists the directory and appends.
 *
 * One journal per directory and process (mtr_spool_lock); not thread-safe:
 * every call from the loop of `base`. */
#ifndef MTR_JOURNAL_H
#define MTR_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mtr.h"

struct event_base;

typedef struct mtr_journal mtr_journal_t;
/* A journal or spool file of the directory; records point at it until they
 * are done.  Owned by the journal. */
typedef struct mtr_jfile mtr_jfile_t;

typedef struct {
    int sync_ms;       /* fdatasync this long after the first unsynced record; 0: 50 */
    long rotate_rows;  /* rotate after this many records; 0: 8192 */
    int64_t rotate_us; /* rotate a journal this old; 0: 1 s */
    int inline_io;     /* 1: fdatasync and replay reads on the loop (tests); 0: on a worker thread */
    int group;         /* 1: mtr_journal_append keeps records until mtr_journal_flush (one write for
                          the records of a loop iteration); 0: every append writes at once */
    int64_t replay_bytes; /* a replay reads files (oldest first) until they hold this many bytes, at
                             least one file; the rest wait for the next replay; 0: 16 MiB */
} mtr_journal_opts_t;

typedef struct {
    long files;            /* journal and spool files not yet deleted (the open journal too) */
    long found_files;      /* of those, the ones a replay found in the directory (an earlier run's, or
                              one this run could not delete): not opened by this journal */
    long pending;          /* their records not yet committed */
    int64_t bytes;         /* their size */
    long journal_rows;     /* records in the open journal (0 when none is open) */
    int64_t journal_bytes; /* its size */
    int unloaded;          /* 1 when some file's records are on disk only (a replay must read it) */
    int replaying;         /* 1 while a replay reads */
    int dirty;             /* written since the last fdatasync */
} mtr_journal_stats_t;

/* A journal over dir (created when needed; it must be writable: an empty
 * probe file is made, which the first replay deletes).  o may be NULL.
 * Returns NULL with err saying why. */
mtr_journal_t *mtr_journal_new(struct event_base *base, const char *dir, const mtr_journal_opts_t *o, char *err,
                               size_t errlen);
/* End the worker thread: a replay's records are delivered and the syncs
 * done before this returns; from then on I/O runs on the loop.  Call it
 * before freeing what the replay callbacks touch.  Accepts NULL. */
void mtr_journal_quiesce(mtr_journal_t *j);
/* Quiesce, sync and close the journal (files stay for the next run).
 * Accepts NULL. */
void mtr_journal_free(mtr_journal_t *j);

/* Append u to the journal.  Returns its file, where u now counts as pending
 * until mtr_journal_done or mtr_journal_drop; NULL (logged) when it could
 * not be written: u is then in the caller's memory only. */
mtr_jfile_t *mtr_journal_write(mtr_journal_t *j, const mtr_usage_t *u);

/* Grouped appends (opts.group): a loop iteration's records in one write(2).
 *
 * mtr_journal_append encodes u into the journal's group and returns its file
 * (u counts as pending there, as after mtr_journal_write) without a system
 * call; mtr_journal_flush writes the group.  Until then the record is in
 * this process's memory only: the caller must flush before anything that
 * relies on the record being in the file (before the database sees it,
 * before the client is answered), and before it passes the record's file to
 * mtr_journal_done or mtr_journal_drop or frees what `cookie` names.  Every
 * other journal call (write, spool, drop_all, rotate, tick, replay, free)
 * flushes first.  When a group's write fails, its records leave their file's
 * count, the journal is rotated (a torn record stays the last of its file)
 * and the unwritten callback gets each record's cookie, in order: those
 * records are in the caller's memory only, as after a failed
 * mtr_journal_write.  Without opts.group, append is mtr_journal_write. */
typedef void (*mtr_journal_unwritten_fn)(void *cookie, void *arg);
void mtr_journal_on_unwritten(mtr_journal_t *j, mtr_journal_unwritten_fn fn, void *arg);
mtr_jfile_t *mtr_journal_append(mtr_journal_t *j, const mtr_usage_t *u, void *cookie);
/* Write the group: 0 (nothing was held, or it is written), -1 when the write
 * failed (logged; the callback ran). */
int mtr_journal_flush(mtr_journal_t *j);
/* 1 when records wait in the group. */
int mtr_journal_held(const mtr_journal_t *j);
/* Append n records held only in memory (their journal write failed) and
 * fsync before returning; they count nowhere, a replay reads them back.
 * Returns 0, or -1 with errno: the journal is then rotated, as after any
 * failed write (a part of a record may have been written: it stays the last
 * of its file, so the records appended later are not behind it). */
int mtr_journal_spool(mtr_journal_t *j, const mtr_usage_t *const *u, size_t n);
/* 1 while some record is on disk only (a file found by a replay, an earlier
 * run's, not yet done, or a dropped one) or a replay reads; no system call. */
int mtr_journal_earlier(const mtr_journal_t *j);
/* 1 while records can be written: 0 once a write failed (a full or failing
 * disk: write, grouped flush, spool), until a later write succeeds or a
 * probe does (writing 64 KiB to a file of its own in the directory, removed
 * at once; tried by this call at most once a second while failing); and 0
 * once an fdatasync failed (EIO), until a probe's write and fdatasync both
 * succeed (a write alone does not say the disk keeps what it is given).  The
 * owner refuses work whose records it could not journal. */
int mtr_journal_writable(mtr_journal_t *j);
/* Journals of one process whose directories are on one disk (the gateway's
 * event loops) share flag (an int they all outlive, 0 at first, read and
 * written with atomics): a failed write in any of them makes every one
 * probe before mtr_journal_writable says 1 again, so the other journals
 * need not fail a record of their own first; a failed fdatasync in any of
 * them makes every one pass a probe that writes and syncs. */
void mtr_journal_share_disk(mtr_journal_t *j, int *flag);
/* One record of f committed (or was given up for good). */
void mtr_journal_done(mtr_journal_t *j, mtr_jfile_t *f);
/* One record of f leaves memory uncommitted: f is read again by the next replay. */
void mtr_journal_drop(mtr_journal_t *j, mtr_jfile_t *f);
/* Every record left memory uncommitted (the database failed): every file is
 * read again by the next replay; the journal is rotated. */
void mtr_journal_drop_all(mtr_journal_t *j);
/* Close the open journal (its fdatasync follows on the worker thread); the
 * next record opens a new file. */
void mtr_journal_rotate(mtr_journal_t *j);
/* What the sync timer does at time now_us (CLOCK_REALTIME µs): fdatasync
 * what was written, rotate a full or old journal.  Exposed for tests. */
void mtr_journal_tick(mtr_journal_t *j, int64_t now_us);

/* A replayed record, tagged with its file; returns 1 when the caller keeps
 * it (it counts as pending in f until done or dropped), 0 when not (the
 * caller rejected it for good). */
typedef int (*mtr_journal_row_fn)(const mtr_usage_t *u, mtr_jfile_t *f, void *arg);
/* The replay ended: rows records were read; failed = 1 when some file is
 * left for the next replay: it could not be read (the records read before
 * the failure were delivered), or this replay had read replay_bytes. */
typedef void (*mtr_journal_replayed_fn)(long rows, int failed, void *arg);

/* Rotate the journal and read back the files of the directory whose
 * records are not all in memory (found there now, or dropped), oldest
 * first, up to opts.replay_bytes (so that memory holds a bounded part of a
 * long outage's spool: the owner replays again for the rest once it has
 * sent what it got), on the worker thread; row and done are called on the loop (before this returns
 * with inline_io).  Returns 1 when reading (done will be called), 0 when
 * there was nothing to read, -1 when the directory cannot be listed or
 * memory is short (try again later), -2 while another replay reads
 * (try again when its done has run). */
int mtr_journal_replay(mtr_journal_t *j, mtr_journal_row_fn row, mtr_journal_replayed_fn done, void *arg);

void mtr_journal_stats(const mtr_journal_t *j, mtr_journal_stats_t *st); /* j may be NULL: zeros */

#endif
