/* mtr_lock.c — one process per spool directory.  The settlement journal and
 * its replay assume they own every file of the directory: a second gateway
 * on the same directory would replay (and delete) the first one's open
 * journal while it is still being appended.  So the directory holds a lock
 * file, `<dir>/gateway.lock`, locked with flock(LOCK_EX) for the life of the
 * process (the kernel drops the lock when the process dies, however it dies,
 * so a SIGKILLed gateway never leaves a stale lock) and holding the owner's
 * pid, for the message a second process prints. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mtr.h"

/* mkdir -p, mode 0700 for what it creates. */
static int make_dirs(const char *dir) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) return errno = ENAMETOOLONG, -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

int mtr_spool_lock(const char *dir, char *err, size_t errlen) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, MTR_LOCK_NAME);
    if (make_dirs(dir) != 0) {
        snprintf(err, errlen, "spool directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "spool directory %s: cannot open %s: %s", dir, path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        if (e == EWOULDBLOCK)
            snprintf(err, errlen,
                     "spool directory %s is in use by another gateway (pid %s holds the lock %s); "
                     "one gateway per spool directory: give this one its own spool_dir",
                     dir, *pid ? pid : "?", path);
        else
            snprintf(err, errlen, "spool directory %s: cannot lock %s: %s", dir, path, strerror(e));
        close(fd);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        /* the lock holds without the pid: only the message of a second process loses it */
    }
    return fd;
}

void mtr_spool_unlock(int fd) {
    if (fd >= 0) close(fd); /* the lock goes with the descriptor; the file stays (removing it would race) */
}
