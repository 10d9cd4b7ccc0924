/* failwrite.c — an LD_PRELOAD shim that makes a running process's writes into
 * one directory fail with ENOSPC on command, as a full disk does, for the
 * gateway's journal fault test (tests/billing/test_faults.py).  Not part of
 * the product: the gateway runs unchanged with
 * LD_PRELOAD=build/tests/billing/failwrite.so.
 *
 * Interposed: write, writev and pwrite.  While the file named by
 * $FAILWRITE_FLAG exists, a call on a regular file whose path starts with
 * $FAILWRITE_DIR + "/" returns -1 with errno ENOSPC and writes nothing;
 * everything else (sockets, pipes, other files, and glibc's own internal
 * writes: stdio) goes to the next definition (dlsym RTLD_NEXT: glibc's, or a
 * sanitizer's; run a sanitizer build with ASAN_OPTIONS=verify_asan_link_order=0).
 * Without both variables nothing fails.  The test touches and removes the
 * flag file: no signal, no code in the product.
 *
 * Also interposed: fsync and fdatasync.  While the file named by
 * $FAILWRITE_SYNC_FLAG exists, they fail with EIO on such a file (a disk
 * that takes writes into the page cache but cannot keep them); writes go on. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);

/* 1 when a call on fd must fail now, flag_var naming the flag file's variable. */
static int failing(int fd, const char *flag_var) {
    const char *flag = getenv(flag_var), *dir = getenv("FAILWRITE_DIR");
    if (!flag || !dir || !*dir) return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    if (access(flag, F_OK) != 0) return 0;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    size_t dl = strlen(dir);
    return !strncmp(path, dir, dl) && path[dl] == '/';
}

static int full(int fd) { return failing(fd, "FAILWRITE_FLAG"); }

ssize_t write(int fd, const void *buf, size_t n) {
    if (!real_write) real_write = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (full(fd)) {
        errno = ENOSPC;
        return -1;
    }
    return real_write(fd, buf, n);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    if (!real_writev) real_writev = (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    if (full(fd)) {
        errno = ENOSPC;
        return -1;
    }
    return real_writev(fd, iov, cnt);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    if (!real_pwrite) real_pwrite = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    if (full(fd)) {
        errno = ENOSPC;
        return -1;
    }
    return real_pwrite(fd, buf, n, off);
}

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

int fsync(int fd) {
    if (!real_fsync) real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (failing(fd, "FAILWRITE_SYNC_FLAG")) {
        errno = EIO;
        return -1;
    }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if (!real_fdatasync) real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (failing(fd, "FAILWRITE_SYNC_FLAG")) {
        errno = EIO;
        return -1;
    }
    return real_fdatasync(fd);
}
