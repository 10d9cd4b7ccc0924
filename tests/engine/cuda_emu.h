/* cuda_emu.h — enough of CUDA's device built-ins to run a kernel's own source
 * on the host (tests/engine/cuda_emu_*.cc): a block is blockDim host threads,
 * one per CUDA thread; __syncthreads is a barrier of the block, __syncwarp one
 * of the warp, warp shuffles an exchange between two warp barriers;
 * __shared__ variables are statics (one block runs at a time), dynamic shared
 * memory (CU_DYN_SHARED) a zeroed buffer per block; atomics are host atomics.
 * A barrier that some threads of a block never reach hangs the test (make runs
 * it under a timeout).  Not emulated: the device maths library (exp etc. are
 * glibc's), memory ordering beyond barriers, launch limits (registers, shared
 * size: ptxas -v says those). */
#ifndef CUDA_EMU_H
#define CUDA_EMU_H

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <functional>

struct emu_dim3 {
    unsigned x, y, z;
};
static thread_local emu_dim3 emu_tid, emu_bid;
static emu_dim3 emu_bdim, emu_gdim;
#define threadIdx emu_tid
#define blockIdx emu_bid
#define blockDim emu_bdim
#define gridDim emu_gdim
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

static pthread_barrier_t emu_block_bar;
static pthread_barrier_t emu_warp_bar[32];
static uint64_t emu_xchg[1024];
static char *emu_dyn_smem;
#define CU_DYN_SHARED(type, name) type *name = (type *)emu_dyn_smem

static inline void __syncthreads() { pthread_barrier_wait(&emu_block_bar); }
static inline void __syncwarp(unsigned = 0xffffffffu) { pthread_barrier_wait(&emu_warp_bar[threadIdx.x / 32]); }
template <typename T> static T emu_shfl(T v, int src_lane) {
    unsigned t = threadIdx.x, w = t / 32;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    emu_xchg[t] = bits;
    pthread_barrier_wait(&emu_warp_bar[w]);
    T r = v;
    if (src_lane >= 0 && src_lane < 32) memcpy(&r, &emu_xchg[w * 32 + src_lane], sizeof r);
    pthread_barrier_wait(&emu_warp_bar[w]);
    return r;
}
template <typename T> static T __shfl_down_sync(unsigned, T v, int o) {
    int l = (int)(threadIdx.x % 32);
    return emu_shfl(v, l + o < 32 ? l + o : l);
}
template <typename T> static T __shfl_xor_sync(unsigned, T v, int o) { return emu_shfl(v, (int)(threadIdx.x % 32) ^ o); }
static inline unsigned long long atomicAdd(unsigned long long *a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
static inline unsigned long long __double2ull_rn(double d) { return (unsigned long long)nearbyint(d); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }

/* CUDA's vector types (the kernels load 16 and 8 bytes at a time) */
struct float4 {
    float x, y, z, w;
};
struct uint4 {
    unsigned x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};

/* cuda_fp16's conversion, in software */
struct __half_raw {
    unsigned short x;
};
struct __half {
    unsigned short x;
    __half(__half_raw r) : x(r.x) {}
};
static inline float __half2float(__half h) {
    unsigned s = (h.x >> 15) & 1, e = (h.x >> 10) & 31, m = h.x & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}

/* Run body as a kernel of gx x gy blocks of block threads with smem bytes of
 * dynamic shared memory.  0, or -1 for a block size it cannot run. */
static int emu_launch2(unsigned gx, unsigned gy, unsigned block, size_t smem, const std::function<void()> &body) {
    struct arg {
        const std::function<void()> *body;
        unsigned tid, bx, by;
    };
    static arg args[1024];
    static pthread_t th[1024];
    if (block < 1 || block > 1024) return -1;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 512 * 1024);
    emu_bdim = emu_dim3{block, 1, 1};
    emu_gdim = emu_dim3{gx, gy, 1};
    int rc = 0;
    for (unsigned b = 0; b < gx * gy && !rc; b++) {
        emu_dyn_smem = (char *)calloc(smem ? smem : 16, 1);
        pthread_barrier_init(&emu_block_bar, NULL, block);
        for (unsigned w = 0; w < (block + 31) / 32; w++)
            pthread_barrier_init(&emu_warp_bar[w], NULL, block - 32 * w < 32 ? block - 32 * w : 32);
        unsigned started = 0;
        for (unsigned t = 0; t < block; t++) {
            args[t] = arg{&body, t, b % gx, b / gx};
            if (pthread_create(&th[t], &at, [](void *p) -> void * {
                    arg *a = (arg *)p;
                    emu_tid = emu_dim3{a->tid, 0, 0};
                    emu_bid = emu_dim3{a->bx, a->by, 0};
                    (*a->body)();
                    return NULL;
                }, &args[t])) {
                fprintf(stderr, "cuda_emu: pthread_create failed\n");
                rc = -1;
                break;
            }
            started++;
        }
        if (rc) exit(1); /* the started threads wait at a barrier forever */
        for (unsigned t = 0; t < started; t++) pthread_join(th[t], NULL);
        pthread_barrier_destroy(&emu_block_bar);
        for (unsigned w = 0; w < (block + 31) / 32; w++) pthread_barrier_destroy(&emu_warp_bar[w]);
        free(emu_dyn_smem);
        emu_dyn_smem = NULL;
    }
    pthread_attr_destroy(&at);
    return rc;
}

static int emu_launch(unsigned grid, unsigned block, size_t smem, const std::function<void()> &body) {
    return emu_launch2(grid, 1, block, smem, body);
}

#endif
