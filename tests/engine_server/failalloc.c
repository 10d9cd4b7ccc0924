/* failalloc.c — an LD_PRELOAD shim that makes a running process's memory
 * allocations fail on command, for the worker's fault-injection tests
 * (tests/engine_server/test_faults.py).  Not part of the product: the worker
 * is run unchanged with LD_PRELOAD=build/tests/engine_server/failalloc.so.
 *
 * Interposed: malloc, calloc, realloc, posix_memalign, aligned_alloc,
 * memalign, valloc, pvalloc and mmap (anonymous or not).  A failed call
 * returns NULL (MAP_FAILED for mmap) with errno ENOMEM, as the real ones do.
 * The real functions are the next definitions (dlsym RTLD_NEXT): glibc's, or
 * a sanitizer's when the binary is built with one (run it with
 * ASAN_OPTIONS=verify_asan_link_order=0).  Until they are known (dlsym itself
 * allocates, and AddressSanitizer calls dlsym while it starts) allocations
 * come from a static buffer; free and realloc are interposed only to
 * recognise its pointers.
 *
 * Control: FAILALLOC_CTL names a file of at least 40 bytes, mapped shared, so
 * that a test changes the setting of a running process by writing the file
 * (no signal, no code in the product).  Little-endian:
 *
 *   offset  size  field
 *   0       4     gen     the test bumps it with each new setting (written
 *                         last); calls are counted from 0 again on the first
 *                         call that sees it
 *   4       4     mode    0 off; 1 every call from the nth on fails; 2 only
 *                         the nth call fails (n 0: none, calls are counted);
 *                         3 each call fails with probability ppm / 10^6
 *                         (seeded by n)
 *   8       8     n       (modes 1, 2: counted from 1; mode 3: the seed)
 *   16      4     ppm
 *   20      4     (zero)
 *   24      8     failed  written here: calls failed since the file was made
 *   32      8     calls   written here: calls since gen changed, while mode != 0
 *
 * Without FAILALLOC_CTL, or before the file is mapped, nothing fails. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
    uint32_t gen, mode;
    uint64_t n;
    uint32_t ppm, pad;
    uint64_t failed, calls;
} ctl_t;

static void *(*real_malloc)(size_t);
static void (*real_free)(void *);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static void *(*real_valloc)(size_t);
static void *(*real_pvalloc)(size_t);

static volatile ctl_t *ctl;          /* NULL: not mapped (yet) */
static uint32_t seen_gen;
static int trace;
static uint64_t calls;
/* initial-exec: no __tls_get_addr call, which a sanitizer intercepts (and may not have set up yet) */
static __thread int in_shim __attribute__((tls_model("initial-exec"))); /* dlsym, backtrace: never fail those */
static int resolving;

/* While dlsym resolves the real functions, allocations come from here (a
 * few bytes at most; never freed: free is not called on them by dlsym). */
static char boot[1 << 16] __attribute__((aligned(64)));
static size_t boot_used;

static void *boot_alloc(size_t n) {
    n = (n + 63) & ~(size_t)63;
    size_t at = __atomic_fetch_add(&boot_used, n, __ATOMIC_RELAXED);
    return at + n <= sizeof boot ? boot + at : NULL;
}

static int is_boot(const void *p) { return (const char *)p >= boot && (const char *)p < boot + sizeof boot; }

/* 1 when the real functions are known (else use boot_alloc). */
static int resolve(void) {
    if (__atomic_load_n(&real_malloc, __ATOMIC_ACQUIRE)) return 1;
    if (__atomic_exchange_n(&resolving, 1, __ATOMIC_ACQ_REL)) return 0; /* a nested call, or another thread */
    in_shim++;
    real_free = dlsym(RTLD_NEXT, "free");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    real_valloc = dlsym(RTLD_NEXT, "valloc");
    real_pvalloc = dlsym(RTLD_NEXT, "pvalloc");
    void *m = dlsym(RTLD_NEXT, "malloc");
    in_shim--;
    int ok = m && real_free && real_calloc && real_realloc && real_posix_memalign && real_aligned_alloc &&
             real_memalign && real_valloc && real_pvalloc;
    if (ok) __atomic_store_n(&real_malloc, m, __ATOMIC_RELEASE);
    __atomic_store_n(&resolving, 0, __ATOMIC_RELEASE);
    return ok;
}

static void *sys_mmap(void *a, size_t len, int prot, int flags, int fd, off_t off) {
    return (void *)syscall(SYS_mmap, a, len, prot, flags, fd, off);
}

/* Map the control file, once, when the shim is initialised (a sanitizer
 * has started by then: it starts from the program's preinit array). */
__attribute__((constructor)) static void ctl_map(void) {
    in_shim++;
    const char *path = getenv("FAILALLOC_CTL");
    trace = getenv("FAILALLOC_TRACE") != NULL;
    /* raw system calls: a sanitizer may not have set up its open and close yet */
    int fd = path && *path ? (int)syscall(SYS_openat, AT_FDCWD, path, O_RDWR | O_CLOEXEC) : -1;
    if (fd >= 0) {
        void *p = sys_mmap(NULL, sizeof(ctl_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        syscall(SYS_close, fd);
        if (p != MAP_FAILED) __atomic_store_n(&ctl, (volatile ctl_t *)p, __ATOMIC_RELEASE);
    }
    in_shim--;
}

/* xorshift64* of (seed, call number): the same calls fail on every run
 * with the same setting and the same order of calls. */
static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

/* 1 when this call is to fail. */
static int should_fail(void) {
    if (in_shim) return 0;
    volatile ctl_t *c = __atomic_load_n(&ctl, __ATOMIC_ACQUIRE);
    if (!c) return 0;
    uint32_t gen = __atomic_load_n(&c->gen, __ATOMIC_ACQUIRE);
    if (gen != __atomic_load_n(&seen_gen, __ATOMIC_RELAXED)) {
        __atomic_store_n(&seen_gen, gen, __ATOMIC_RELAXED);
        __atomic_store_n(&calls, 0, __ATOMIC_RELAXED);
    }
    uint32_t mode = c->mode;
    if (mode == 0) return 0;
    uint64_t k = __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED), n = c->n;
    c->calls = k; /* a gauge for the test: may lag by a racing call, never by a quiet process */
    int fail = mode == 1 ? k >= n : mode == 2 ? k == n : mode == 3 ? mix(n ^ mix(k)) % 1000000 < c->ppm : 0;
    if (fail) {
        __atomic_add_fetch(&c->failed, 1, __ATOMIC_RELAXED);
        if (trace) { /* FAILALLOC_TRACE: where each failure struck, on stderr */
            void *bt[24];
            in_shim++;
            int nb = backtrace(bt, 24);
            static const char hdr[] = "failalloc: failing this call:\n";
            if (write(2, hdr, sizeof hdr - 1) < 0) nb = 0;
            backtrace_symbols_fd(bt, nb, 2);
            in_shim--;
        }
        errno = ENOMEM;
    }
    return fail;
}

void *malloc(size_t n) {
    if (!resolve()) return boot_alloc(n);
    return should_fail() ? NULL : real_malloc(n);
}

void *calloc(size_t a, size_t b) {
    if (!resolve()) return b && a > (size_t)-1 / b ? NULL : boot_alloc(a * b); /* static: zeroed */
    return should_fail() ? NULL : real_calloc(a, b);
}

void free(void *p) {
    if (!p || is_boot(p)) return;
    if (resolve()) real_free(p);
}

void *realloc(void *p, size_t n) {
    if (p && is_boot(p)) { /* rare: a start-up block grows; the old size is unknown, copy what fits */
        void *q = malloc(n);
        size_t room = (size_t)(boot + sizeof boot - (char *)p);
        if (q) memcpy(q, p, n < room ? n : room);
        return q;
    }
    if (!resolve()) return p ? NULL : boot_alloc(n);
    return should_fail() ? NULL : real_realloc(p, n);
}

int posix_memalign(void **out, size_t al, size_t n) {
    if (!resolve()) return (*out = al <= 64 ? boot_alloc(n) : NULL) ? 0 : ENOMEM;
    return should_fail() ? ENOMEM : real_posix_memalign(out, al, n);
}

void *aligned_alloc(size_t al, size_t n) {
    if (!resolve()) return al <= 64 ? boot_alloc(n) : NULL;
    return should_fail() ? NULL : real_aligned_alloc(al, n);
}

void *memalign(size_t al, size_t n) {
    if (!resolve()) return al <= 64 ? boot_alloc(n) : NULL;
    return should_fail() ? NULL : real_memalign(al, n);
}

void *valloc(size_t n) {
    if (!resolve()) return NULL;
    return should_fail() ? NULL : real_valloc(n);
}

void *pvalloc(size_t n) {
    if (!resolve()) return NULL;
    return should_fail() ? NULL : real_pvalloc(n);
}

void *mmap(void *a, size_t len, int prot, int flags, int fd, off_t off) {
    return should_fail() ? MAP_FAILED : sys_mmap(a, len, prot, flags, fd, off);
}

void *mmap64(void *a, size_t len, int prot, int flags, int fd, off_t off) __attribute__((alias("mmap")));
