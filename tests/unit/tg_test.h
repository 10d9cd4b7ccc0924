/* tg_test.h — the smallest unit-test harness: CHECK records a failure and
 * goes on; TG_TEST_MAIN runs the listed tests and prints one summary line.
 *
 *   static void test_x(void) { CHECK(1 + 1 == 2); CHECK_EQ_I(f(), 3); }
 *   TG_TEST_MAIN(test_x, test_y)
 *
 * TG_SKIP(why) records a skipped test: a third state, never a quiet pass.
 * The line goes to the file named by $TG_SKIP_LOG (scripts/test.sh counts
 * them; under CI an unlisted skip fails, see tests/expected-skips), and to
 * stderr.
 */
#ifndef TG_TEST_H
#define TG_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* TG_TEST_ASAN: this build runs under AddressSanitizer (gcc says so with
 * __SANITIZE_ADDRESS__, clang through __has_feature) */
#if defined(__SANITIZE_ADDRESS__)
#define TG_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TG_TEST_ASAN 1
#endif
#endif

static int tg_test_checks, tg_test_fails;

#define CHECK(c)                                                                          \
    do {                                                                                  \
        tg_test_checks++;                                                                 \
        if (!(c)) {                                                                       \
            tg_test_fails++;                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);         \
        }                                                                                 \
    } while (0)

#define CHECK_EQ_I(a, b)                                                                  \
    do {                                                                                  \
        long long a_ = (long long)(a), b_ = (long long)(b);                               \
        tg_test_checks++;                                                                 \
        if (a_ != b_) {                                                                   \
            tg_test_fails++;                                                              \
            fprintf(stderr, "%s:%d: %s == %lld, want %lld\n", __FILE__, __LINE__, #a, a_, \
                    b_);                                                                  \
        }                                                                                 \
    } while (0)

#define CHECK_EQ_S(a, b)                                                                  \
    do {                                                                                  \
        const char *a_ = (a), *b_ = (b);                                                  \
        tg_test_checks++;                                                                 \
        if (!a_ || !b_ || strcmp(a_, b_)) {                                               \
            tg_test_fails++;                                                              \
            fprintf(stderr, "%s:%d: %s == \"%s\", want \"%s\"\n", __FILE__, __LINE__, #a, \
                    a_ ? a_ : "(null)", b_ ? b_ : "(null)");                              \
        }                                                                                 \
    } while (0)

static int tg_test_skips;

static inline void tg_test_skip(const char *file, const char *fn, const char *why) {
    const char *path = getenv("TG_SKIP_LOG");
    FILE *f;
    tg_test_skips++;
    fprintf(stderr, "SKIPPED %s %s: %s\n", file, fn, why);
    if (path && (f = fopen(path, "a"))) {
        fprintf(f, "%s %s: %s\n", file, fn, why);
        fclose(f);
    }
}
#define TG_SKIP(why) tg_test_skip(__FILE__, __func__, (why))

#define TG_TEST_MAIN(...)                                                                 \
    int main(void) {                                                                      \
        void (*tests_[])(void) = {__VA_ARGS__};                                           \
        for (size_t i_ = 0; i_ < sizeof tests_ / sizeof tests_[0]; i_++) tests_[i_]();    \
        printf("%s: %d checks, %d failed, %d skipped\n", __FILE__, tg_test_checks,         \
               tg_test_fails, tg_test_skips);                                             \
        return tg_test_fails ? 1 : 0;                                                     \
    }

#endif
