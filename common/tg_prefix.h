/* tg_prefix.h — what a "prefix" of a prompt is, for the engine's prefix cache
 * and the gateway's prefix-affinity routing alike.
 *
 * A prompt (the token ids of the rendered chat template, BOS included) is cut
 * into blocks of TG_PREFIX_BLOCK tokens.  Block i's key is a chained hash:
 *   key(-1) = TG_PREFIX_ROOT
 *   key(i)  = tg_prefix_block_hash(key(i-1), ids + i*B, B)
 * so two prompts share block i's key exactly when (up to a 64-bit collision)
 * they share their first (i+1)*B tokens.  The engine caches the KV of full
 * blocks under these keys (engine/model/eng_kv.c); the gateway sends prompts whose
 * first TG_PREFIX_AFFINITY_BLOCKS keys agree to the same worker
 * (gateway/gw_proxy.c, via api_chat_prefix_key).
 *
 * Namespaces: a chain may start from another root, tg_prefix_root(ns), so
 * that equal prompts of different namespaces never share a key.  The gateway
 * names each customer's namespace (header X-Cache-Namespace to its workers):
 * one customer's prompts are never served from, nor reported as hits on,
 * another's cache (as OpenAI and DeepSeek keep caches apart per account),
 * which would tell a customer what another one asked. */
#ifndef TG_PREFIX_H
#define TG_PREFIX_H

#include <stddef.h>
#include <stdint.h>

#define TG_PREFIX_BLOCK 16            /* tokens per block (the engine's KV block) */
#define TG_PREFIX_AFFINITY_BLOCKS 1   /* blocks that decide a prompt's worker */
#define TG_PREFIX_ROOT 0x9e3779b97f4a7c15ULL

/* The root of namespace ns (n bytes): TG_PREFIX_ROOT for the empty one,
 * else a hash of the bytes; never 0. */
uint64_t tg_prefix_root(const char *ns, size_t n);

/* The key of a block of n token ids following the block whose key is parent.
 * Never 0. */
uint64_t tg_prefix_block_hash(uint64_t parent, const int32_t *ids, int n);

/* The key of the first nblocks full blocks of ids[0..n), or 0 when the prompt
 * has fewer than nblocks full blocks. */
uint64_t tg_prefix_key(const int32_t *ids, size_t n, int nblocks);

/* The key a prompt of n ids is routed by: its first TG_PREFIX_AFFINITY_BLOCKS
 * blocks' key, or for a shorter prompt the hash of all its ids (the same
 * prompt still meets the same worker); 0 when n <= 0. */
uint64_t tg_prefix_affinity_key(const int32_t *ids, long n);

#endif
