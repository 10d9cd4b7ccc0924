/* eng_cuda_w.h — a weight on the device as kernels see it (cu_w_t) and one
 * element widened to fp32 (bf16, f16, fp8 e4m3 with 128x128 block scales,
 * int8 with row-block scales).  Device code only on CUDA built-ins and
 * cuda_fp16's __half conversion, so tests/engine/cuda_emu.h can compile it on
 * the host.  Needs eng_model_int.h (eng_w_t, the dtypes) before it. */
#ifndef ENG_CUDA_W_H
#define ENG_CUDA_W_H

/* ---- weights on the device: one element widened to fp32 ------------------------ */

typedef struct {
    int dt;                 /* eng_dtype_t */
    const void *data;
    const float *scale;
    int64_t rows, cols, scale_cols;
    int qblk;
} cu_w_t;

static inline cu_w_t cu_w(const eng_w_t *w) {
    cu_w_t c = {(int)w->dt, w->data, w->scale, w->rows, w->cols, w->scale_cols, w->qblk};
    return c;
}

__device__ __forceinline__ float cu_bf16(uint16_t v) { return __uint_as_float((uint32_t)v << 16); }

__device__ __forceinline__ float cu_f16(uint16_t v) {
    __half_raw r;
    r.x = v;
    return __half2float(__half(r));
}

/* fp8 e4m3 (no infinities; S.1111.111 is NaN) -> fp32, exact */
__device__ __forceinline__ float cu_f8(uint8_t v) {
    uint32_t s = (uint32_t)(v & 0x80) << 24, e = (v >> 3) & 15, m = v & 7;
    if (e == 15 && m == 7) return __uint_as_float(0x7fc00000u | s);
    if (e == 0) { /* subnormal: m * 2^-9 */
        float f = (float)m * 0.001953125f;
        return s ? -f : f;
    }
    return __uint_as_float(s | ((e + 120) << 23) | (m << 20));
}

__device__ __forceinline__ float cu_wval(const cu_w_t &w, int64_t r, int64_t c) {
    int64_t i = r * w.cols + c;
    switch (w.dt) {
    case ENG_DT_F32: return ((const float *)w.data)[i];
    case ENG_DT_BF16: return cu_bf16(((const uint16_t *)w.data)[i]);
    case ENG_DT_F16: return cu_f16(((const uint16_t *)w.data)[i]);
    case ENG_DT_F8_E4M3: return cu_f8(((const uint8_t *)w.data)[i]) * w.scale[(r / 128) * w.scale_cols + c / 128];
    case ENG_DT_I8: return (float)((const int8_t *)w.data)[i] * w.scale[r * w.scale_cols + c / w.qblk];
    default: return 0.0f;
    }
}

#endif
