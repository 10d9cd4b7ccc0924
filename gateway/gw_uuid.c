/* gw_uuid.c — UUIDv7 request ids (RFC 9562): 48-bit Unix milliseconds,
 * version 7, 12-bit rand_a used as a counter within one millisecond (method 1
 * of §6.2), variant 10, 62 random bits.  Ids made by one process are strictly
 * increasing as strings and as bytes, even when the clock steps back. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "gw-int.h"
#include "tg_hex.h"

/* one sequence per process, every loop's thread takes from it */
static pthread_mutex_t gw_uuid_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t gw_uuid_last_ms;
static unsigned gw_uuid_seq;

/* Random bytes come from a per-thread pool filled 4 KiB at a time from the
 * kernel's CSPRNG: one getrandom call per 256 ids, not one per id. */
static __thread unsigned char gw_uuid_pool[4096];
static __thread size_t gw_uuid_pool_fill, gw_uuid_pool_left;

static void gw_uuid_random(unsigned char *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        if (!gw_uuid_pool_left) {
            ssize_t r = getrandom(gw_uuid_pool, sizeof gw_uuid_pool, 0);
            if (r <= 0) break;
            gw_uuid_pool_fill = gw_uuid_pool_left = (size_t)r;
        }
        size_t k = n - got < gw_uuid_pool_left ? n - got : gw_uuid_pool_left;
        unsigned char *src = gw_uuid_pool + gw_uuid_pool_fill - gw_uuid_pool_left;
        memcpy(p + got, src, k);
        memset(src, 0, k); /* a byte is used once */
        gw_uuid_pool_left -= k;
        got += k;
    }
    if (got < n) { /* never expected; still produce a valid id */
        uint64_t x = (uint64_t)tg_wall_us() * 6364136223846793005ULL + 1442695040888963407ULL;
        for (size_t i = got; i < n; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            p[i] = (unsigned char)(x >> 56);
        }
    }
}

void gw_uuid_random_bytes(unsigned char *p, size_t n) { gw_uuid_random(p, n); }

void gw_uuid7_at(char out[37], uint64_t ms) {
    unsigned char b[16];
    gw_uuid_random(b, sizeof b);
    pthread_mutex_lock(&gw_uuid_lock);
    if (ms > gw_uuid_last_ms) {
        gw_uuid_last_ms = ms;
        gw_uuid_seq = ((unsigned)b[6] << 4 | b[7] >> 4) & 0x3ff; /* random start, room to count */
    } else {
        ms = gw_uuid_last_ms;
        if (++gw_uuid_seq > 0xfff) { /* counter exhausted: borrow the next millisecond */
            ms = ++gw_uuid_last_ms;
            gw_uuid_seq = 0;
        }
    }
    for (int i = 0; i < 6; i++) b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (gw_uuid_seq >> 8));
    b[7] = (unsigned char)(gw_uuid_seq & 0xff);
    pthread_mutex_unlock(&gw_uuid_lock);
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
    /* 8-4-4-4-12 */
    tg_hex_encode(b, 4, out);
    out[8] = '-';
    tg_hex_encode(b + 4, 2, out + 9);
    out[13] = '-';
    tg_hex_encode(b + 6, 2, out + 14);
    out[18] = '-';
    tg_hex_encode(b + 8, 2, out + 19);
    out[23] = '-';
    tg_hex_encode(b + 10, 6, out + 24);
}

void gw_uuid7(char out[37]) { gw_uuid7_at(out, (uint64_t)(tg_wall_us() / 1000)); }
