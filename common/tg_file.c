/* tg_file.c — read a whole file into one malloc'd, NUL-terminated buffer
 * (see tg_file.h).  The buffer doubles from 64 KiB, or starts at the size
 * fstat reports for a regular file, so a large file costs one allocation. */
#include "tg_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

char *tg_file_read(const char *path, size_t max, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    struct stat sb;
    size_t cap = 1 << 16, n = 0, got;
    if (fstat(fileno(f), &sb) == 0 && S_ISREG(sb.st_mode) && (size_t)sb.st_size + 1 > cap)
        cap = (size_t)sb.st_size + 1; /* + 1: EOF is seen without a regrowth */
    if (max && max < cap) cap = max + 1;
    char *buf = malloc(cap + 1);
    if (!buf) goto fail_nomem;
    /* cap bytes of data, +1 for the NUL; reading max + 1 bytes tells "over max" */
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (max && n > max) {
            errno = EFBIG;
            goto fail_buf;
        }
        if (n == cap) {
            size_t ncap = cap * 2;
            if (max && max < ncap) ncap = max + 1;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) goto fail_nomem;
            buf = nb;
            cap = ncap;
        }
    }
    if (ferror(f)) {
        if (!errno) errno = EIO;
        goto fail_buf;
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;

fail_nomem:
    errno = ENOMEM;
fail_buf:
    free(buf);
    {
        int e = errno;
        fclose(f);
        errno = e;
    }
    return NULL;
}
