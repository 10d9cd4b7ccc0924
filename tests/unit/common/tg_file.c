/* Unit tests for common/tg_file.c: empty, small, NUL-holding and multi-chunk
 * files round-trip with a trailing NUL; the size limit is exact; a missing
 * file, a directory and a pipe behave as documented. */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "tg_file.h"
#include "tg_test.h"

static char dir[] = "/tmp/tg_file_test.XXXXXX";

static const char *tmp_with(const char *name, const char *data, size_t n) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return path;
    CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
    return path;
}

static void test_small_and_empty(void) {
    size_t n = 99;
    char *b = tg_file_read(tmp_with("empty", "", 0), 0, &n);
    CHECK(b != NULL);
    CHECK_EQ_I(n, 0);
    CHECK(b && b[0] == 0);
    free(b);

    b = tg_file_read(tmp_with("nul", "a\0b", 3), 0, &n);
    CHECK_EQ_I(n, 3);
    CHECK(b && !memcmp(b, "a\0b", 4));
    free(b);

    b = tg_file_read(tmp_with("text", "hello\n", 6), 0, NULL);
    CHECK_EQ_S(b, "hello\n");
    free(b);
}

static void test_large(void) {
    size_t big = (1 << 18) + 7; /* beyond the first 64 KiB buffer */
    char *data = malloc(big);
    for (size_t i = 0; i < big; i++) data[i] = (char)(i * 31 + 7);
    size_t n = 0;
    char *b = tg_file_read(tmp_with("big", data, big), 0, &n);
    CHECK_EQ_I(n, big);
    CHECK(b && !memcmp(b, data, big) && b[big] == 0);
    free(b);
    free(data);
}

static void test_limit(void) {
    const char *p = tmp_with("ten", "0123456789", 10);
    size_t n = 0;
    char *b = tg_file_read(p, 10, &n);
    CHECK(b != NULL);
    CHECK_EQ_I(n, 10);
    free(b);
    errno = 0;
    b = tg_file_read(p, 9, &n);
    CHECK(b == NULL);
    CHECK_EQ_I(errno, EFBIG);
}

static void test_errors(void) {
    char path[256];
    snprintf(path, sizeof path, "%s/missing", dir);
    errno = 0;
    CHECK(tg_file_read(path, 0, NULL) == NULL);
    CHECK_EQ_I(errno, ENOENT);
    errno = 0;
    CHECK(tg_file_read(dir, 0, NULL) == NULL); /* a directory: fopen or fread fails */
    CHECK(errno != 0);
}

static void test_pipe(void) {
    int fds[2];
    CHECK(pipe(fds) == 0);
    CHECK(write(fds[1], "piped", 5) == 5);
    close(fds[1]);
    char path[64];
    snprintf(path, sizeof path, "/dev/fd/%d", fds[0]);
    size_t n = 0;
    char *b = tg_file_read(path, 0, &n);
    CHECK_EQ_I(n, 5);
    CHECK_EQ_S(b, "piped");
    free(b);
    close(fds[0]);
}

static void setup(void) { CHECK(mkdtemp(dir) != NULL); }

static void cleanup(void) {
    const char *names[] = {"empty", "nul", "text", "big", "ten"};
    char path[256];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

TG_TEST_MAIN(setup, test_small_and_empty, test_large, test_limit, test_errors, test_pipe, cleanup)
