/* mtr_journal.c — the write-ahead journal of usage records (mtr_journal.h):
 * which file of the spool directory holds which records not yet committed,
 * appends, the sync timer, rotation, deletion of done files, and replay
 * reads, with fdatasync and reads on a worker thread.
 *
 * Invariants: a file is deleted only when it is closed, loaded (every one of
 * its records went through the owner's memory since it was last found or
 * dropped) and has no pending record; the open journal is the last file
 * records are appended to, so a torn record (a failed write) is always the
 * last of its file — the journal is closed after any failed write. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "tg_clock.h"
#include "mtr_journal.h"
#include "tg_work.h"

#define SYNC_MS 50
#define ROTATE_ROWS 8192
#define ROTATE_US 1000000
#define REPLAY_BYTES (16 << 20) /* about 95,000 records of ~175 bytes */
#define PROBE_BYTES 65536       /* a failing journal is trusted again once this much could be written */
#define PROBE_EVERY_US 1000000
/* the bits of a disk's shared flag (mtr_journal_share_disk) */
#define DISK_WRITE 1 /* a journal's write failed: a journal on the disk writes once to trust it */
#define DISK_SYNC 2  /* a journal's fdatasync failed: a probe must write and sync */

struct mtr_jfile {
    TAILQ_ENTRY(mtr_jfile) link;
    char *name;
    long pending; /* records of this file not yet committed */
    int loaded;   /* its records are in the owner's memory */
    int open;     /* the journal: records are still being appended */
    int corrupt;
    int reading;  /* a replay is reading it on the worker thread */
    int found;    /* found in the directory by a replay, not opened by this journal (an earlier run's) */
};

TAILQ_HEAD(jfile_q, mtr_jfile);

struct mtr_journal {
    struct event_base *base;
    char *dir;
    mtr_journal_opts_t o;
    struct jfile_q files;
    mtr_spool_t *spool; /* the open journal file */
    mtr_jfile_t *jf;    /* its entry in files */
    long jrows;
    int64_t jopened_us;
    int jdirty;         /* written since the last fdatasync */
    struct event *sync;
    tg_work_t *work;    /* fdatasync and replay reads, off the loop; NULL: inline */
    int syncing;        /* fdatasyncs on the worker thread */
    int replaying;      /* a replay's reads are on the worker thread */
    /* o.group: records appended to jf, encoded, not yet written (mtr_journal_flush) */
    uint8_t *gbuf;
    size_t glen, gcap;
    void **gcookie;     /* the caller's name of each, in order */
    size_t gn, gncap;
    mtr_journal_unwritten_fn unwritten;
    void *unwritten_arg;
    /* records held in memory after a failed write, not yet logged (log_unwritten) */
    long unlogged;
    int64_t logged_us; /* tg_mono_us() of the last such line; 0: none yet */
    int unlogged_err;  /* errno of the last failure */
    const char *unlogged_what;
    int failing;       /* the last write failed (mtr_journal_writable) */
    int sync_failed;   /* an fdatasync failed: cleared by a probe that writes and syncs, not by a write */
    int probing;       /* that probe is on the worker thread */
    int *disk_failing; /* shared with the process's other journals on the disk (DISK_WRITE |
                        * DISK_SYNC, atomics); NULL: none */
    int64_t probed_us; /* tg_mono_us() of the last probe write while failing */
};


/* ---- files ------------------------------------------------------------------ */

#define LOG_EVERY_US 1000000

/* n records could not be written (errno says why; last, when not NULL, names
 * the request of one): they are
 * in the caller's memory only.  One line a second at most, with the count
 * since the last line: a full disk fails every record, and a line per record
 * would flood the log (itself on a disk, perhaps that one). */
static void log_unwritten(mtr_journal_t *j, const char *what, long n, const char *last) {
    int e = errno;
    int64_t now = tg_mono_us();
    if (n) {
        j->unlogged += n;
        j->unlogged_err = e;
        j->unlogged_what = what;
    }
    if (!j->unlogged) return;
    if (!j->logged_us || now - j->logged_us >= LOG_EVERY_US) {
        fprintf(stderr, "metering: cannot %s the journal in %s: %s; %ld usage records held in memory%s%s%.36s%s\n",
                j->unlogged_what, j->dir, strerror(j->unlogged_err), j->unlogged,
                j->logged_us ? " since the last such line" : "", last ? " (the last: " : "", last ? last : "",
                last ? ")" : "");
        j->unlogged = 0;
        j->logged_us = now;
    } else if (!evtimer_pending(j->sync, NULL)) { /* the count is said by the timer once the second is up */
        struct timeval tv = {0, (suseconds_t)(j->logged_us + LOG_EVERY_US - now)};
        evtimer_add(j->sync, &tv);
    }
    errno = e;
}

static void file_done(mtr_journal_t *j, mtr_jfile_t *f) {
    char path[4200], bad[4300];
    snprintf(path, sizeof path, "%s/%s", j->dir, f->name);
    if (f->corrupt) {
        snprintf(bad, sizeof bad, "%s.corrupt", path);
        if (rename(path, bad) == 0)
            fprintf(stderr, "metering: spool file %s had a corrupt record; kept as %s\n", path, bad);
    } else if (unlink(path) != 0 && errno != ENOENT) {
        fprintf(stderr, "metering: cannot remove spool file %s: %s\n", path, strerror(errno));
    }
    TAILQ_REMOVE(&j->files, f, link);
    free(f->name);
    free(f);
}

void mtr_journal_done(mtr_journal_t *j, mtr_jfile_t *f) {
    if (f && --f->pending == 0 && f->loaded && !f->open) file_done(j, f);
}

void mtr_journal_drop(mtr_journal_t *j, mtr_jfile_t *f) {
    if (!f) return;
    f->pending--;
    f->loaded = 0;
}

/* ---- fdatasync on the worker thread ----------------------------------------- */

typedef struct {
    mtr_journal_t *j;
    int fd;  /* a dup of the journal's: the journal may be closed meanwhile */
    int err; /* errno of a failed fdatasync, else 0 */
} sync_job_t;

static void sync_run(void *arg) {
    sync_job_t *s = arg;
    if (fdatasync(s->fd) != 0) s->err = errno;
    close(s->fd);
}

/* An fdatasync failed (EIO: what was written may not be on the disk, and
 * after the failure the kernel may drop those pages): the journal refuses
 * work until a probe's write and fdatasync succeed (mtr_journal_writable),
 * whatever writes do meanwhile, and the next record opens a new file.  Its
 * records wait in the owner's memory until committed, as a failed write's. */
static void on_sync_error(mtr_journal_t *j, int err) {
    fprintf(stderr, "metering: cannot sync the journal in %s: %s; refusing work until the disk syncs again\n",
            j->dir, strerror(err));
    j->sync_failed = 1;
    j->probed_us = tg_mono_us(); /* the first probe a second from now */
    if (j->disk_failing) __atomic_fetch_or(j->disk_failing, DISK_SYNC, __ATOMIC_RELAXED);
}

static void sync_done(void *arg) {
    sync_job_t *s = arg;
    mtr_journal_t *j = s->j;
    j->syncing--;
    if (s->err) {
        on_sync_error(j, s->err);
        mtr_journal_rotate(j);
    }
    free(s);
}

/* fdatasync the journal without blocking the loop (synchronously when no
 * thread can take it).  Returns 0, or -1 with errno. */
static int journal_sync(mtr_journal_t *j) {
    sync_job_t *s = j->work ? calloc(1, sizeof *s) : NULL;
    if (s) {
        s->j = j;
        s->fd = dup(mtr_spool_fd(j->spool));
        if (s->fd >= 0 && tg_work_submit(j->work, sync_run, sync_done, s) == 0) {
            j->syncing++;
            return 0;
        }
        if (s->fd >= 0) close(s->fd);
        free(s);
    }
    return mtr_spool_sync(j->spool);
}

/* ---- the journal -------------------------------------------------------------- */

/* Sync and close the journal; the file goes once all its records committed. */
void mtr_journal_rotate(mtr_journal_t *j) {
    if (!j || !j->spool) return;
    mtr_journal_flush(j);
    if (!j->spool) return; /* the flush failed and rotated */
    if (j->jdirty && journal_sync(j) != 0) on_sync_error(j, errno);
    mtr_spool_close(j->spool);
    j->spool = NULL;
    j->jdirty = 0;
    mtr_jfile_t *f = j->jf;
    j->jf = NULL;
    if (!f) return;
    f->open = 0;
    if (f->loaded && f->pending == 0) file_done(j, f);
}

/* The open journal, opened (and listed in files) when needed; NULL on error. */
static mtr_jfile_t *journal_open(mtr_journal_t *j) {
    if (j->spool && j->jrows >= j->o.rotate_rows) mtr_journal_rotate(j);
    if (j->spool) return j->jf;
    mtr_jfile_t *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    if (mtr_spool_write(&j->spool, j->dir, NULL, 0) != 0 || !(f->name = strdup(mtr_spool_name(j->spool)))) {
        int e = errno;
        mtr_spool_close(j->spool); /* an empty file at worst: the next replay deletes it */
        j->spool = NULL;
        free(f);
        errno = e;
        return NULL;
    }
    f->loaded = 1;
    f->open = 1;
    TAILQ_INSERT_TAIL(&j->files, f, link);
    j->jf = f;
    j->jrows = 0;
    j->jopened_us = tg_wall_us();
    return f;
}

/* This journal's writes fail (1) or succeed again (0); the journals sharing
 * the disk's flag learn it at their next mtr_journal_writable.  A write that
 * succeeds clears DISK_WRITE only: DISK_SYNC (another journal's fdatasync
 * failed) is cleared by a probe that writes and syncs, whichever journal's. */
static void set_failing(mtr_journal_t *j, int v) {
    j->failing = v;
    if (!j->disk_failing) return;
    if (v) __atomic_fetch_or(j->disk_failing, DISK_WRITE, __ATOMIC_RELAXED);
    else __atomic_fetch_and(j->disk_failing, ~DISK_WRITE, __ATOMIC_RELAXED);
}

void mtr_journal_share_disk(mtr_journal_t *j, int *flag) { j->disk_failing = flag; }

static void journal_dirty(mtr_journal_t *j) {
    j->jdirty = 1;
    if (!evtimer_pending(j->sync, NULL)) {
        struct timeval tv = {0, j->o.sync_ms * 1000};
        evtimer_add(j->sync, &tv);
    }
}

mtr_jfile_t *mtr_journal_write(mtr_journal_t *j, const mtr_usage_t *u) {
    mtr_journal_flush(j);
    mtr_jfile_t *f = journal_open(j);
    const mtr_usage_t *v[1] = {u};
    if (!f || mtr_spool_write(&j->spool, j->dir, v, 1) != 0) {
        log_unwritten(j, "write", 1, u->request_id);
        set_failing(j, 1);
        mtr_journal_rotate(j); /* a torn record stays the last of its file */
        return NULL;
    }
    set_failing(j, 0);
    j->jrows++;
    f->pending++;
    journal_dirty(j);
    return f;
}

/* ---- grouped appends ------------------------------------------------------------ */

void mtr_journal_on_unwritten(mtr_journal_t *j, mtr_journal_unwritten_fn fn, void *arg) {
    j->unwritten = fn;
    j->unwritten_arg = arg;
}

int mtr_journal_held(const mtr_journal_t *j) { return j && j->gn > 0; }

mtr_jfile_t *mtr_journal_append(mtr_journal_t *j, const mtr_usage_t *u, void *cookie) {
    if (!j->o.group) return mtr_journal_write(j, u);
    mtr_jfile_t *f = journal_open(j); /* may rotate a full journal, which writes the group first */
    if (!f) {
        log_unwritten(j, "open", 1, u->request_id);
        set_failing(j, 1);
        return NULL;
    }
    if (j->glen + MTR_REC_HDR + MTR_REC_MAX > j->gcap) {
        size_t nc = j->gcap ? j->gcap * 2 : 16384;
        while (j->glen + MTR_REC_HDR + MTR_REC_MAX > nc) nc *= 2;
        uint8_t *nb = realloc(j->gbuf, nc);
        if (!nb) return mtr_journal_write(j, u); /* short of memory: written at once */
        j->gbuf = nb;
        j->gcap = nc;
    }
    if (j->gn == j->gncap) {
        size_t nc = j->gncap ? j->gncap * 2 : 256;
        void **nv = realloc(j->gcookie, nc * sizeof *nv);
        if (!nv) return mtr_journal_write(j, u);
        j->gcookie = nv;
        j->gncap = nc;
    }
    size_t len = mtr_spool_encode(u, j->gbuf + j->glen, j->gcap - j->glen);
    if (len == 0) return mtr_journal_write(j, u); /* not representable: as the plain write says it */
    j->glen += len;
    j->gcookie[j->gn++] = cookie;
    j->jrows++;
    f->pending++;
    journal_dirty(j);
    return f;
}

int mtr_journal_flush(mtr_journal_t *j) {
    if (!j || !j->gn) return 0;
    size_t n = j->gn;
    int rc = j->spool ? mtr_spool_write_bytes(j->spool, j->gbuf, j->glen) : -1;
    j->gn = 0;
    j->glen = 0;
    if (rc == 0) {
        set_failing(j, 0);
        return 0;
    }
    log_unwritten(j, "write", (long)n, NULL);
    set_failing(j, 1);
    mtr_jfile_t *f = j->jf;
    if (f) f->pending -= (long)n;
    j->jrows -= (long)n;
    mtr_journal_rotate(j); /* a torn record stays the last of its file */
    for (size_t i = 0; i < n && j->unwritten; i++) j->unwritten(j->gcookie[i], j->unwritten_arg);
    return -1;
}

int mtr_journal_spool(mtr_journal_t *j, const mtr_usage_t *const *u, size_t n) {
    mtr_journal_flush(j);
    if (!journal_open(j)) {
        set_failing(j, 1);
        return -1;
    }
    if (!n) return 0;
    if (mtr_spool_append(&j->spool, j->dir, u, n) == 0) {
        set_failing(j, 0);
        return 0;
    }
    int e = errno;
    set_failing(j, 1);
    mtr_journal_rotate(j); /* a torn record stays the last of its file */
    errno = e;
    return -1;
}

/* Can PROBE_BYTES be written in dir now (and, sync: made durable)?  A file
 * of its own (not a spool file: no replay reads it), removed at once.  0 or
 * -1. */
static int journal_probe(const char *dir, int sync) {
    static const char zero[4096];
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, sync ? "sync-probe" : "write-probe");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    int ok = 1;
    for (int i = 0; ok && i < PROBE_BYTES / (int)sizeof zero; i++) ok = write(fd, zero, sizeof zero) == sizeof zero;
    if (ok && sync) ok = fdatasync(fd) == 0;
    close(fd);
    unlink(path);
    return ok ? 0 : -1;
}

/* The probe of a journal whose fdatasync failed, on the worker thread: an
 * fdatasync on a failing disk can take long, and the loop must not wait. */
typedef struct {
    mtr_journal_t *j;
    int ok;
} sprobe_job_t;

static void sprobe_run(void *arg) {
    sprobe_job_t *p = arg;
    p->ok = journal_probe(p->j->dir, 1) == 0;
}

static void sprobe_done(void *arg) {
    sprobe_job_t *p = arg;
    p->j->probing = 0;
    if (p->ok) { /* it wrote and synced: trusted again from the next mtr_journal_writable */
        p->j->sync_failed = 0;
        if (p->j->disk_failing) __atomic_fetch_and(p->j->disk_failing, ~DISK_SYNC, __ATOMIC_RELAXED);
        set_failing(p->j, 0);
    }
    free(p);
}

int mtr_journal_earlier(const mtr_journal_t *j) {
    const mtr_jfile_t *f;
    TAILQ_FOREACH(f, &j->files, link)
        if (f->found || !f->loaded) return 1;
    return j->replaying;
}

int mtr_journal_writable(mtr_journal_t *j) {
    if (!j) return 0;
    int disk = j->disk_failing ? __atomic_load_n(j->disk_failing, __ATOMIC_RELAXED) : 0;
    if (!j->failing && !j->sync_failed && !disk) return 1;
    int64_t now = tg_mono_us();
    if (j->probed_us && now - j->probed_us < PROBE_EVERY_US) return 0;
    j->probed_us = now;
    /* this journal's fdatasync failed, or another's on the same disk: the
     * disk may drop what it was given, so a write alone proves nothing */
    if (j->sync_failed || (disk & DISK_SYNC)) { /* write and fdatasync, off the loop; this call still says 0 */
        sprobe_job_t *p = j->probing ? NULL : calloc(1, sizeof *p);
        if (p) {
            p->j = j;
            if (j->work && tg_work_submit(j->work, sprobe_run, sprobe_done, p) == 0) {
                j->probing = 1;
                return 0;
            }
            sprobe_run(p); /* no worker thread: here */
            sprobe_done(p);
        }
        return !j->sync_failed && !(j->disk_failing && (__atomic_load_n(j->disk_failing, __ATOMIC_RELAXED) & DISK_SYNC));
    }
    if (journal_probe(j->dir, 0) != 0) return 0;
    set_failing(j, 0);
    return 1;
}

void mtr_journal_drop_all(mtr_journal_t *j) {
    mtr_journal_flush(j);
    mtr_jfile_t *f;
    TAILQ_FOREACH(f, &j->files, link) f->loaded = 0, f->pending = 0;
    mtr_journal_rotate(j); /* records from now on go to a new journal, loaded */
}

void mtr_journal_tick(mtr_journal_t *j, int64_t now) {
    mtr_journal_flush(j);
    log_unwritten(j, NULL, 0, NULL); /* failures not yet said, once their second is up */
    if (!j->spool) return;
    if (j->jdirty && !j->syncing) { /* one at a time: a slow disk gets one more call later */
        if (journal_sync(j) != 0) on_sync_error(j, errno);
        j->jdirty = 0;
    }
    if (j->jrows >= j->o.rotate_rows || now - j->jopened_us >= j->o.rotate_us) {
        mtr_journal_rotate(j);
        return;
    }
    struct timeval tv = {0, j->o.sync_ms * 1000};
    evtimer_add(j->sync, &tv); /* again, to rotate the journal when its time is up */
}

static void sync_cb(evutil_socket_t fd, short what, void *arg) { mtr_journal_tick(arg, tg_wall_us()); }

/* ---- replay ------------------------------------------------------------------- */

/* The files' records are read on the worker thread (the loop does no file
 * reads), then handed to the owner on the loop. */
typedef struct {
    mtr_jfile_t *f;
    char *path;
    mtr_usage_t *rows; /* models strdup'ed */
    long n, cap;
    long got;          /* mtr_spool_read's result */
    int err, corrupt;
} rfile_t;

typedef struct {
    mtr_journal_t *j;
    rfile_t *v;
    int n;
    mtr_journal_row_fn row;
    mtr_journal_replayed_fn done;
    void *arg;
    int more; /* files left for the next replay (replay_bytes reached) */
} replay_job_t;

static void replay_collect(const mtr_usage_t *u, void *arg) {
    rfile_t *rf = arg;
    if (rf->n == rf->cap) {
        long cap = rf->cap ? rf->cap * 2 : 64;
        mtr_usage_t *nv = realloc(rf->rows, (size_t)cap * sizeof *nv);
        if (!nv) return; /* dropped here, read again: the file stays until all of its records commit */
        rf->rows = nv;
        rf->cap = cap;
    }
    mtr_usage_t *c = &rf->rows[rf->n];
    *c = *u;
    if (!(c->model = u->model ? strdup(u->model) : NULL) && u->model) return;
    rf->n++;
}

static void replay_run(void *arg) {
    replay_job_t *r = arg;
    for (int i = 0; i < r->n; i++) {
        rfile_t *rf = &r->v[i];
        errno = 0;
        rf->got = mtr_spool_read(rf->path, replay_collect, rf, &rf->corrupt);
        rf->err = errno;
        if (rf->got >= 0 && rf->n < rf->got) { /* out of memory part way: read it again later */
            rf->got = -1;
            rf->err = ENOMEM;
        }
    }
}

static void replay_done(void *arg) {
    replay_job_t *r = arg;
    mtr_journal_t *j = r->j;
    long total = 0;
    int failed = 0;
    j->replaying = 0;
    for (int i = 0; i < r->n; i++) {
        rfile_t *rf = &r->v[i];
        mtr_jfile_t *f = rf->f;
        f->reading = 0;
        f->corrupt |= rf->corrupt;
        for (long k = 0; k < rf->n; k++) { /* records read before a failure stay with the owner */
            if (r->row(&rf->rows[k], f, r->arg)) f->pending++;
            free((char *)rf->rows[k].model);
        }
        free(rf->rows);
        if (rf->got < 0) {
            fprintf(stderr, "metering: cannot read spool file %s: %s\n", rf->path, strerror(rf->err));
            failed = 1; /* read again later */
        } else {
            f->loaded = 1;
            total += rf->got;
            if (f->pending == 0) file_done(j, f);
        }
        free(rf->path);
    }
    mtr_journal_replayed_fn done = r->done;
    void *darg = r->arg;
    failed |= r->more;
    free(r->v);
    free(r);
    done(total, failed, darg);
}

int mtr_journal_replay(mtr_journal_t *j, mtr_journal_row_fn row, mtr_journal_replayed_fn done, void *arg) {
    if (j->replaying) return -2; /* one at a time */
    /* Close the journal (it may hold records not in memory); the next record starts a new one. */
    mtr_journal_rotate(j);
    char **names;
    int n = mtr_spool_list(j->dir, &names);
    if (n < 0) {
        fprintf(stderr, "metering: cannot list the spool %s: %s\n", j->dir, strerror(errno));
        return -1;
    }
    replay_job_t *r = calloc(1, sizeof *r);
    if (!r || (n && !(r->v = calloc((size_t)n, sizeof *r->v)))) {
        free(r);
        mtr_names_free(names, n);
        return -1;
    }
    r->j = j;
    r->row = row;
    r->done = done;
    r->arg = arg;
    int short_of_memory = 0;
    int64_t bytes = 0;
    for (int i = 0; i < n; i++) {
        mtr_jfile_t *f;
        TAILQ_FOREACH(f, &j->files, link) if (!strcmp(f->name, names[i])) break;
        if (f && (f->loaded || f->reading)) continue;
        char path[4200];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", j->dir, names[i]);
        int64_t size = stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
        if (r->n && bytes + size > j->o.replay_bytes) { /* enough for now: the rest next time */
            r->more = 1;
            break;
        }
        bytes += size;
        if (!f) {
            if (!(f = calloc(1, sizeof *f)) || !(f->name = strdup(names[i]))) {
                free(f);
                short_of_memory = 1;
                continue;
            }
            f->found = 1;
            TAILQ_INSERT_TAIL(&j->files, f, link);
        }
        rfile_t *rf = &r->v[r->n];
        if (!(rf->path = strdup(path))) {
            short_of_memory = 1;
            continue;
        }
        rf->f = f;
        f->reading = 1; /* pending: records of f already in memory (kept over a failed read) count too */
        r->n++;
    }
    mtr_names_free(names, n);
    if (!r->n) {
        free(r->v);
        free(r);
        return short_of_memory ? -1 : 0;
    }
    j->replaying = 1;
    if (!j->work || tg_work_submit(j->work, replay_run, replay_done, r) != 0) { /* no thread: read here */
        replay_run(r);
        replay_done(r);
    }
    return short_of_memory ? -1 : 1;
}

/* ---- the handle ------------------------------------------------------------------ */

void mtr_journal_stats(const mtr_journal_t *j, mtr_journal_stats_t *st) {
    memset(st, 0, sizeof *st);
    if (!j) return;
    const mtr_jfile_t *f;
    TAILQ_FOREACH(f, &j->files, link) {
        st->files++;
        st->found_files += f->found;
        st->pending += f->pending;
        if (!f->loaded) st->unloaded = 1; /* also while its read is on the worker thread */
        char path[4200];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", j->dir, f->name);
        if (stat(path, &sb) == 0) {
            st->bytes += sb.st_size;
            if (f == j->jf) st->journal_bytes = sb.st_size;
        }
    }
    if (j->spool) st->journal_rows = j->jrows;
    st->replaying = j->replaying;
    st->dirty = j->jdirty;
}

mtr_journal_t *mtr_journal_new(struct event_base *base, const char *dir, const mtr_journal_opts_t *o, char *err,
                               size_t errlen) {
    mtr_journal_t *j = calloc(1, sizeof *j);
    if (!j) goto oom;
    j->base = base;
    if (o) j->o = *o;
    if (j->o.sync_ms <= 0) j->o.sync_ms = SYNC_MS;
    if (j->o.rotate_rows <= 0) j->o.rotate_rows = ROTATE_ROWS;
    if (j->o.rotate_us <= 0) j->o.rotate_us = ROTATE_US;
    if (j->o.replay_bytes <= 0) j->o.replay_bytes = REPLAY_BYTES;
    TAILQ_INIT(&j->files);
    if (!(j->dir = strdup(dir)) || !(j->sync = evtimer_new(base, sync_cb, j))) goto oom;
    if (!j->o.inline_io && !(j->work = tg_work_new(base, 1))) goto oom;
    /* Writable spool or nothing: find out now, not during an outage. */
    mtr_spool_t *sp = NULL;
    if (mtr_spool_append(&sp, dir, NULL, 0) != 0) {
        snprintf(err, errlen, "spool directory %s is not writable: %s", dir, strerror(errno));
        mtr_journal_free(j);
        return NULL;
    }
    mtr_spool_close(sp); /* an empty file: the first replay deletes it */
    return j;
oom:
    snprintf(err, errlen, "out of memory");
    mtr_journal_free(j);
    return NULL;
}

void mtr_journal_quiesce(mtr_journal_t *j) {
    if (!j) return;
    tg_work_free(j->work); /* a replay's records are delivered, syncs done */
    j->work = NULL;
}

void mtr_journal_free(mtr_journal_t *j) {
    if (!j) return;
    mtr_journal_quiesce(j);
    mtr_journal_rotate(j);
    if (j->unlogged) { /* failures not yet said: now */
        j->logged_us = tg_mono_us() - LOG_EVERY_US;
        log_unwritten(j, NULL, 0, NULL);
    }
    mtr_jfile_t *f;
    while ((f = TAILQ_FIRST(&j->files))) {
        TAILQ_REMOVE(&j->files, f, link);
        free(f->name);
        free(f);
    }
    if (j->sync) event_free(j->sync);
    free(j->gbuf);
    free(j->gcookie);
    free(j->dir);
    free(j);
}
