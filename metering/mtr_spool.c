/* mtr_spool.c — the settlement spool: record encoding (byte table in mtr.h),
 * fsync'd appends, and reading files back for replay.  Pure functions for the
 * bytes, plain POSIX I/O for the files; nothing here knows about PostgreSQL. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "mtr.h"
#include "tg_grow.h"

struct mtr_spool {
    int fd;
    char *path;
};

/* CRC-32 (IEEE 802.3, reflected, as zlib's crc32), eight bytes a step
 * ("slicing-by-8": eight tables, so the eight lookups of a step do not wait
 * on each other as the byte-at-a-time loop's did, ~6 cycles a byte); the
 * same values as the byte-at-a-time table loop, which the unit test keeps as
 * its reference. */
static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xFF];
}

uint32_t mtr_crc32(const void *p, size_t n) {
    pthread_once(&crc_once, crc_init);
    const uint8_t *b = p;
    uint32_t c = 0xFFFFFFFFu;
    for (; n >= 8; n -= 8, b += 8) {
        uint32_t lo = c ^ ((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
        uint32_t hi = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
        c = crc_tab[7][lo & 0xFF] ^ crc_tab[6][(lo >> 8) & 0xFF] ^ crc_tab[5][(lo >> 16) & 0xFF] ^ crc_tab[4][lo >> 24] ^
            crc_tab[3][hi & 0xFF] ^ crc_tab[2][(hi >> 8) & 0xFF] ^ crc_tab[1][(hi >> 16) & 0xFF] ^ crc_tab[0][hi >> 24];
    }
    while (n--) c = crc_tab[0][(c ^ *b++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void put_u(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

size_t mtr_spool_encode(const mtr_usage_t *u, uint8_t *buf, size_t cap) {
    size_t m = u->model ? strlen(u->model) : 0;
    if (m == 0 || m > MTR_MODEL_MAX) return 0;
    int v2 = u->price.price_id != 0 || u->price.override_id != 0; /* TGS2: with the price version */
    size_t n = 139 + m + (v2 ? 16 : 0);
    if (cap < MTR_REC_HDR + n) return 0;
    uint8_t *p = buf + MTR_REC_HDR;
    memset(p, 0, 36);
    memcpy(p, u->request_id, strnlen(u->request_id, 36));
    put_u(p + 36, (uint64_t)u->key_id, 8);
    put_u(p + 44, (uint64_t)u->customer_id, 8);
    put_u(p + 52, (uint64_t)u->price.input_cache_miss, 8);
    put_u(p + 60, (uint64_t)u->price.input_cache_hit, 8);
    put_u(p + 68, (uint64_t)u->price.output, 8);
    put_u(p + 76, (uint64_t)u->prompt_tokens, 8);
    put_u(p + 84, (uint64_t)u->prompt_cache_hit_tokens, 8);
    put_u(p + 92, (uint64_t)u->completion_tokens, 8);
    put_u(p + 100, (uint64_t)u->reasoning_tokens, 8);
    put_u(p + 108, (uint32_t)u->http_status, 4);
    p[112] = u->stream ? 1 : 0;
    put_u(p + 113, (uint64_t)u->received_us, 8);
    put_u(p + 121, (uint64_t)u->first_byte_us, 8);
    put_u(p + 129, (uint64_t)u->finished_us, 8);
    put_u(p + 137, m, 2);
    memcpy(p + 139, u->model, m);
    if (v2) {
        put_u(p + 139 + m, (uint64_t)u->price.price_id, 8);
        put_u(p + 147 + m, (uint64_t)u->price.override_id, 8);
    }
    memcpy(buf, v2 ? "TGS2" : "TGS1", 4);
    put_u(buf + 4, n, 4);
    put_u(buf + 8, mtr_crc32(p, n), 4);
    return MTR_REC_HDR + n;
}

int mtr_spool_decode(const uint8_t *b, size_t n, mtr_usage_t *u, char *model, size_t *used) {
    if (n < MTR_REC_HDR)
        return memcmp(b, "TGS1", n < 4 ? n : 4) == 0 || memcmp(b, "TGS2", n < 4 ? n : 4) == 0 ? 0 : -1;
    int v2 = memcmp(b, "TGS2", 4) == 0;
    if (!v2 && memcmp(b, "TGS1", 4) != 0) return -1;
    uint32_t len = (uint32_t)get_u(b + 4, 4);
    if (len < MTR_REC_MIN || len > MTR_REC_MAX) return -1;
    if (n < MTR_REC_HDR + (size_t)len) return 0;
    const uint8_t *p = b + MTR_REC_HDR;
    if (mtr_crc32(p, len) != (uint32_t)get_u(b + 8, 4)) return -1;
    size_t m = get_u(p + 137, 2);
    if (m == 0 || m > MTR_MODEL_MAX || 139 + m + (v2 ? 16 : 0) != len) return -1;
    memset(u, 0, sizeof *u);
    memcpy(u->request_id, p, 36);
    u->request_id[36] = 0;
    u->key_id = (int64_t)get_u(p + 36, 8);
    u->customer_id = (int64_t)get_u(p + 44, 8);
    u->price.input_cache_miss = (int64_t)get_u(p + 52, 8);
    u->price.input_cache_hit = (int64_t)get_u(p + 60, 8);
    u->price.output = (int64_t)get_u(p + 68, 8);
    u->prompt_tokens = (int64_t)get_u(p + 76, 8);
    u->prompt_cache_hit_tokens = (int64_t)get_u(p + 84, 8);
    u->completion_tokens = (int64_t)get_u(p + 92, 8);
    u->reasoning_tokens = (int64_t)get_u(p + 100, 8);
    u->http_status = (int32_t)get_u(p + 108, 4);
    if (p[112] > 1) return -1;
    u->stream = p[112];
    u->received_us = (int64_t)get_u(p + 113, 8);
    u->first_byte_us = (int64_t)get_u(p + 121, 8);
    u->finished_us = (int64_t)get_u(p + 129, 8);
    if (v2) {
        u->price.price_id = (int64_t)get_u(p + 139 + m, 8);
        u->price.override_id = (int64_t)get_u(p + 147 + m, 8);
        if (u->price.price_id == 0 && u->price.override_id == 0) return -1; /* written as TGS1 */
    }
    memcpy(model, p + 139, m);
    model[m] = 0;
    u->model = model;
    *used = MTR_REC_HDR + len;
    return 1;
}

static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

static int mkdir_p(const char *dir) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) return errno = ENAMETOOLONG, -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST) return -1;
    return 0;
}

static mtr_spool_t *spool_open(const char *dir) {
    if (mkdir_p(dir) != 0) return NULL;
    mtr_spool_t *sp = calloc(1, sizeof *sp);
    if (!sp) return NULL;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    long long us = (long long)tv.tv_sec * 1000000 + tv.tv_usec;
    size_t len = strlen(dir) + 64;
    sp->path = malloc(len);
    if (!sp->path) goto fail_sp;
    /* O_EXCL: two files opened in the same microsecond get different names */
    for (int i = 0;; i++) {
        snprintf(sp->path, len, "%s/settle-%016lld-%d.spool", dir, us + i, (int)getpid());
        sp->fd = open(sp->path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
        if (sp->fd >= 0 || errno != EEXIST || i == 1000) break;
    }
    if (sp->fd < 0) goto fail_path;
    if (fsync_dir(dir) != 0) goto fail_fd;
    return sp;
fail_fd:
    close(sp->fd);
    unlink(sp->path);
fail_path:
    free(sp->path);
fail_sp:
    free(sp);
    return NULL;
}

int mtr_spool_write(mtr_spool_t **spp, const char *dir, const mtr_usage_t *const *u, size_t n) {
    if (!*spp && !(*spp = spool_open(dir))) return -1;
    mtr_spool_t *sp = *spp;
    uint8_t rec[MTR_REC_HDR + MTR_REC_MAX];
    for (size_t i = 0; i < n; i++) {
        size_t len = mtr_spool_encode(u[i], rec, sizeof rec);
        if (len == 0) continue; /* not representable: the caller validated it */
        if (mtr_spool_write_bytes(sp, rec, len) != 0) return -1;
    }
    return 0;
}

int mtr_spool_write_bytes(mtr_spool_t *sp, const void *p, size_t n) {
    const uint8_t *b = p;
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(sp->fd, b + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w == 0) errno = ENOSPC;
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    return 0;
}

int mtr_spool_fd(const mtr_spool_t *sp) { return sp->fd; }

int mtr_spool_sync(mtr_spool_t *sp) { return sp ? fdatasync(sp->fd) : 0; }

const char *mtr_spool_name(const mtr_spool_t *sp) {
    const char *slash = strrchr(sp->path, '/');
    return slash ? slash + 1 : sp->path;
}

int mtr_spool_append(mtr_spool_t **spp, const char *dir, const mtr_usage_t *const *u, size_t n) {
    if (mtr_spool_write(spp, dir, u, n) != 0) return -1;
    return fsync((*spp)->fd);
}

void mtr_spool_close(mtr_spool_t *sp) {
    if (!sp) return;
    close(sp->fd);
    free(sp->path);
    free(sp);
}

/* The offset of the next byte at or after from that could start a record
 * (a 'T': "TGS1", "TGS2"), or n. */
static size_t next_start(const uint8_t *b, size_t from, size_t n) {
    const uint8_t *t = from < n ? memchr(b + from, 'T', n - from) : NULL;
    return t ? (size_t)(t - b) : n;
}

/* Records are read in order.  Where the bytes at a record boundary are not a
 * record (bad magic, length or CRC: garbage, a damaged sector, a torn record
 * with records behind it), the file is corrupt, and the reader scans on for
 * the next offset where a whole record decodes, magic, length and CRC, so
 * that every intact record is delivered, not only those before the damage
 * (a replayed record is harmless: its request_id is its usage row's key).
 * At the end of the file, bytes that are not a whole record are a torn last
 * record: not corruption, unless a record is found behind them. */
long mtr_spool_read(const char *path, mtr_record_fn fn, void *arg, int *corrupt) {
    *corrupt = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return -1;
    }
    long count = 0;
    int scanning = 0; /* looking for the next record past bytes that are none */
    char model[MTR_MODEL_MAX + 1];
    for (;;) {
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        size_t off = 0;
        while (off < len) {
            mtr_usage_t u;
            size_t used;
            int d = mtr_spool_decode(buf + off, len - off, &u, model, &used);
            if (d == 1) {
                if (scanning) *corrupt = 1; /* what was skipped was not a torn last record */
                scanning = 0;
                fn(&u, arg);
                count++;
                off += used;
                continue;
            }
            if (d == 0 && r != 0) break; /* part of a record: read on */
            /* no record here (d == 0 at the end: a torn record, or bytes that only start like one) */
            if (d < 0 && !scanning) *corrupt = 1;
            scanning = 1;
            off = next_start(buf, off + 1, len);
        }
        memmove(buf, buf + off, len - off);
        len -= off;
        if (r == 0) break; /* EOF (or a read error, below) */
    }
    if (ferror(f)) count = -1;
    free(buf);
    fclose(f);
    return count;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int mtr_spool_list(const char *dir, char ***names) {
    *names = NULL;
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : -1;
    int n = 0;
    size_t cap = 0;
    char **v = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, "settle-", 7) != 0 || l < 13 || strcmp(e->d_name + l - 6, ".spool") != 0)
            continue;
        char **nv = tg_grow(v, (size_t)n, &cap, sizeof *v, 8);
        if (!nv) goto fail;
        v = nv;
        if (!(v[n] = strdup(e->d_name))) goto fail;
        n++;
    }
    closedir(d);
    if (n) qsort(v, n, sizeof *v, name_cmp);
    *names = v;
    return n;
fail:
    closedir(d);
    mtr_names_free(v, n);
    return -1;
}

int mtr_spool_adopt(const char *from, const char *to, char *err, size_t errlen) {
    char **names;
    int n = mtr_spool_list(from, &names);
    if (n < 0) {
        snprintf(err, errlen, "spool directory %s: %s", from, strerror(errno));
        return -1;
    }
    if (n && mkdir(to, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "spool directory %s: %s", to, strerror(errno));
        mtr_names_free(names, n);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char a[4200], b[4200];
        struct stat sb;
        snprintf(a, sizeof a, "%s/%s", from, names[i]);
        snprintf(b, sizeof b, "%s/%s", to, names[i]);
        if (lstat(b, &sb) == 0) snprintf(b, sizeof b, "%s/settle-adopted-%s", to, names[i] + 7);
        if (rename(a, b) != 0) {
            snprintf(err, errlen, "cannot move spool file %s to %s: %s", a, b, strerror(errno));
            rc = -1;
        }
    }
    mtr_names_free(names, n);
    return rc;
}

void mtr_names_free(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}
