/* tg_prefix.c — chained block hashes of token ids (tg_prefix.h). */
#include "tg_prefix.h"

static uint64_t mix(uint64_t x) { /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t tg_prefix_block_hash(uint64_t parent, const int32_t *ids, int n) {
    uint64_t h = mix(parent ^ 0x2545f4914f6cdd1dULL);
    for (int i = 0; i < n; i++) h = mix(h ^ (uint32_t)ids[i]) + (uint64_t)i;
    h = mix(h ^ (uint64_t)n);
    return h ? h : 1;
}

uint64_t tg_prefix_root(const char *ns, size_t n) {
    if (!n) return TG_PREFIX_ROOT;
    uint64_t h = mix(TG_PREFIX_ROOT ^ 0x6a09e667f3bcc909ULL ^ (uint64_t)n);
    for (size_t i = 0; i < n; i++) h = mix(h ^ (unsigned char)ns[i]) + (uint64_t)i;
    return h && h != TG_PREFIX_ROOT ? h : 2;
}

uint64_t tg_prefix_key(const int32_t *ids, size_t n, int nblocks) {
    if (nblocks <= 0 || n < (size_t)nblocks * TG_PREFIX_BLOCK) return 0;
    uint64_t h = TG_PREFIX_ROOT;
    for (int b = 0; b < nblocks; b++) h = tg_prefix_block_hash(h, ids + (size_t)b * TG_PREFIX_BLOCK, TG_PREFIX_BLOCK);
    return h;
}

uint64_t tg_prefix_affinity_key(const int32_t *ids, long n) {
    if (n >= (long)TG_PREFIX_AFFINITY_BLOCKS * TG_PREFIX_BLOCK)
        return tg_prefix_key(ids, (size_t)n, TG_PREFIX_AFFINITY_BLOCKS);
    return n > 0 ? tg_prefix_block_hash(TG_PREFIX_ROOT, ids, (int)n) : 0;
}
