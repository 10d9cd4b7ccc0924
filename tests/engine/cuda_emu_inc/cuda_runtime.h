/* cuda_emu_inc/cuda_runtime.h — the CUDA runtime, cuBLAS and the fp16/bf16
 * types as the CUDA backend (engine/cuda/) uses them, on the host, so that the
 * whole backend — its host code too — compiles with g++ and runs without a
 * GPU (mk/cuda.mk: test-engine-cuda-emu-backend).  The device is host memory;
 * a stream runs everything at once; a kernel launch (CU_LAUNCH) runs the
 * kernel's blocks with tests/engine/cuda_emu.h; cudaMalloc fills memory with
 * 0xff bytes (NaN floats) so that reading memory no op wrote shows.  cuBLAS:
 * plain column-major reference loops (Sgemm, GemmEx and
 * GemmGroupedBatchedEx with fp32 or bf16 inputs, fp32 output and compute), so
 * that the backend's leading dimensions and transposes are checked too. */
#ifndef CUDA_EMU_RUNTIME_H
#define CUDA_EMU_RUNTIME_H

#include "../cuda_emu.h"

/* ---- runtime ---------------------------------------------------------------------- */

typedef enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorNoDevice = 100 } cudaError_t;
typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3
} cudaMemcpyKind;
typedef struct emu_stream *cudaStream_t;
#define cudaStreamNonBlocking 1
#define cudaHostAllocDefault 0
struct cudaDeviceProp {
    char name[256];
    int major, minor;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

static inline const char *cudaGetErrorString(cudaError_t e) {
    return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory" : "emulated error";
}
static inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
static inline cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
static inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
static inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    snprintf(p->name, sizeof p->name, "host emulation");
    p->major = 9, p->minor = 0;
    return cudaSuccess;
}
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    *s = (cudaStream_t)malloc(1);
    return cudaSuccess;
}
static inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
    free(s);
    return cudaSuccess;
}
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
template <typename T> static inline cudaError_t cudaMalloc(T **p, size_t n) {
    *p = (T *)malloc(n ? n : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    memset((void *)*p, 0xff, n);
    return cudaSuccess;
}
static inline cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
static inline cudaError_t cudaHostAlloc(void **p, size_t n, unsigned) {
    *p = malloc(n ? n : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
static inline cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t) {
    memmove(d, s, n);
    return cudaSuccess;
}

static inline emu_dim3 emu_dim(dim3 d) { return emu_dim3{d.x, d.y, d.z}; }
#define CU_LAUNCH(k, grid, block, smem, st, ...)                                                         \
    do {                                                                                                 \
        dim3 g_(grid);                                                                                   \
        if (emu_launch2(g_.x, g_.y, (unsigned)(block), (size_t)(smem), [&] { k(__VA_ARGS__); })) {       \
            fprintf(stderr, "cuda_emu: %s:%d: launch of %s refused\n", __FILE__, __LINE__, #k);          \
            return -1;                                                                                   \
        }                                                                                                \
    } while (0)

/* ---- fp16 / bf16 --------------------------------------------------------------------- */

struct __nv_bfloat16 {
    unsigned short x;
};
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    unsigned u = __float_as_uint(f);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) b.x = (unsigned short)((u >> 16) | 0x40); /* NaN stays NaN */
    else b.x = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    return b;
}
static inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float((unsigned)b.x << 16); }

/* ---- cuBLAS ---------------------------------------------------------------------------- */

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType_t;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
typedef struct emu_blas *cublasHandle_t;

static inline const char *cublasGetStatusString(cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_(emulated error)";
}
static inline cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = (cublasHandle_t)malloc(1);
    return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasDestroy(cublasHandle_t h) {
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

static inline float emu_el(const void *p, cudaDataType_t t, size_t i) {
    return t == CUDA_R_16BF ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
/* C [m, n] (column-major, ldc) = alpha op(A) op(B) + beta C; beta 0 never reads C */
static inline cublasStatus_t emu_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                                      const void *A, cudaDataType_t at, int lda, const void *B, cudaDataType_t bt,
                                      int ldb, float beta, float *C, int ldc) {
    if (m < 0 || n < 0 || k < 0 || lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double acc = 0;
            for (int l = 0; l < k; l++) {
                size_t ai = ta == CUBLAS_OP_N ? (size_t)i + (size_t)l * lda : (size_t)l + (size_t)i * lda;
                size_t bi = tb == CUBLAS_OP_N ? (size_t)l + (size_t)j * ldb : (size_t)j + (size_t)l * ldb;
                acc += (double)emu_el(A, at, ai) * emu_el(B, bt, bi);
            }
            float *c = C + (size_t)i + (size_t)j * ldc;
            *c = (float)(alpha * acc + (beta != 0 ? beta * *c : 0.0));
        }
    return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                                         const float *beta, float *C, int ldc) {
    return emu_gemm(ta, tb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, *beta, C, ldc);
}
static inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void *alpha, const void *A, cudaDataType_t at, int lda,
                                          const void *B, cudaDataType_t bt, int ldb, const void *beta, void *C,
                                          cudaDataType_t ct, int ldc, cublasComputeType_t, cublasGemmAlgo_t) {
    if (ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    return emu_gemm(ta, tb, m, n, k, *(const float *)alpha, A, at, lda, B, bt, ldb, *(const float *)beta, (float *)C,
                    ldc);
}
static inline cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t, const cublasOperation_t ta[],
                                                        const cublasOperation_t tb[], const int m[], const int n[],
                                                        const int k[], const void *alpha, const void *const A[],
                                                        cudaDataType_t at, const int lda[], const void *const B[],
                                                        cudaDataType_t bt, const int ldb[], const void *beta,
                                                        void *const C[], cudaDataType_t ct, const int ldc[], int groups,
                                                        const int gsize[], cublasComputeType_t) {
    if (ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    for (int g = 0, p = 0; g < groups; g++)
        for (int q = 0; q < gsize[g]; q++, p++) {
            cublasStatus_t s = emu_gemm(ta[g], tb[g], m[g], n[g], k[g], ((const float *)alpha)[g], A[p], at, lda[g],
                                        B[p], bt, ldb[g], ((const float *)beta)[g], (float *)C[p], ldc[g]);
            if (s != CUBLAS_STATUS_SUCCESS) return s;
        }
    return CUBLAS_STATUS_SUCCESS;
}

#endif
