// GELU (erf form) forward and backward: the CUDA twin of trainer/model/src/ops/gelu.rs, whose CPU
// kernel computes with trainer/model/src/ops/vmath.rs. The same arithmetic in the same order:
// Cephes' exp polynomial and Abramowitz & Stegun 7.1.26's erf with explicit fused multiply-adds
// (fmaf = Rust's mul_add), IEEE division, and no other contraction (build.rs compiles with
// -fmad=false), so f32 results equal the CPU kernel's bit for bit. bf16 storage computes in f32
// and rounds to nearest even, as the CPU twin's f32 result cast to bf16.
// Compiled to PTX at build time (trainer/model/build.rs) with the `cuda` feature.

#include <stdint.h>
#include <cuda_bf16.h>

#include "vmath.cuh"

// vmath::erf: Abramowitz & Stegun 7.1.26.
__device__ __forceinline__ float erf_as(float x) {
    const float a = fabsf(x);
    const float t = 1.0f / fmaf(0.3275911f, a, 1.0f);
    float p = 1.0614054f;
    p = fmaf(p, t, -1.4531521f);
    p = fmaf(p, t, 1.4214138f);
    p = fmaf(p, t, -0.28449672f);
    p = fmaf(p, t, 0.2548296f);
    const float y = 1.0f - p * t * exp_poly(-a * a);
    return copysignf(y, x);
}

// Φ(x) = (1 + erf(x/√2)) / 2.
__device__ __forceinline__ float phi(float x) {
    return 0.5f * (1.0f + erf_as(x * 0.70710678118654752f));
}

__device__ __forceinline__ float gelu_f(float v) { return v * phi(v); }

__device__ __forceinline__ float gelu_grad_f(float v, float g) {
    return g * (phi(v) + v * 0.3989423f * exp_poly(-0.5f * v * v));
}

// y = gelu(x), grid-stride.
#define GELU_FWD(NAME, T)                                                                     \
    extern "C" __global__ void NAME(const T *x, T *y, uint64_t n) {                           \
        for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;             \
             i += (uint64_t)gridDim.x * blockDim.x)                                           \
            store(&y[i], gelu_f(f32_of(x[i])));                                               \
    }

// dx = dy · (Φ(x) + x · φ(x)), grid-stride.
#define GELU_BWD(NAME, T)                                                                     \
    extern "C" __global__ void NAME(const T *x, const T *dy, T *dx, uint64_t n) {             \
        for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;             \
             i += (uint64_t)gridDim.x * blockDim.x)                                           \
            store(&dx[i], gelu_grad_f(f32_of(x[i]), f32_of(dy[i])));                          \
    }

GELU_FWD(gelu_fwd_f32, float)
GELU_FWD(gelu_fwd_bf16, __nv_bfloat16)
GELU_BWD(gelu_bwd_f32, float)
GELU_BWD(gelu_bwd_bf16, __nv_bfloat16)

// GeGLU, the twin of trainer/model/src/ops/geglu.rs: x is rows of [a | g] (2 * half values),
// y = GELU(a) * g (rows of half), one thread per output value, grid-stride.
#define GEGLU_FWD(NAME, T)                                                                    \
    extern "C" __global__ void NAME(const T *x, T *y, uint64_t rows, uint64_t half) {         \
        const uint64_t n = rows * half;                                                       \
        for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;             \
             i += (uint64_t)gridDim.x * blockDim.x) {                                         \
            const uint64_t r = i / half, j = i % half;                                        \
            const float a = f32_of(x[2 * half * r + j]), g = f32_of(x[2 * half * r + half + j]); \
            store(&y[i], gelu_f(a) * g);                                                      \
        }                                                                                     \
    }

// GeGLU's backward: dx = [da | dg] with dg = GELU(a) * dy and da = GELU'(a) * (dy * g), in the
// CPU kernel's order (its dy * g is rounded to f32 before GELU's backward takes it).
#define GEGLU_BWD(NAME, T)                                                                    \
    extern "C" __global__ void NAME(const T *x, const T *dy, T *dx, uint64_t rows,           \
                                    uint64_t half) {                                          \
        const uint64_t n = rows * half;                                                       \
        for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;             \
             i += (uint64_t)gridDim.x * blockDim.x) {                                         \
            const uint64_t r = i / half, j = i % half;                                        \
            const uint64_t ia = 2 * half * r + j, ig = ia + half;                             \
            const float a = f32_of(x[ia]), g = f32_of(x[ig]), d = f32_of(dy[i]);              \
            store(&dx[ia], gelu_grad_f(a, d * g));                                            \
            store(&dx[ig], gelu_f(a) * d);                                                    \
        }                                                                                     \
    }

GEGLU_FWD(geglu_fwd_f32, float)
GEGLU_FWD(geglu_fwd_bf16, __nv_bfloat16)
GEGLU_BWD(geglu_bwd_f32, float)
GEGLU_BWD(geglu_bwd_bf16, __nv_bfloat16)

// Bias + GELU, the twin of trainer/model/src/ops/bias_gelu.rs: y = GELU(x + b[column]) over rows
// of `width` values, the sum in f32 and never stored (one pass instead of the bias add's and
// GELU's two), one thread per value, grid-stride.
#define BIAS_GELU_FWD(NAME, T)                                                                \
    extern "C" __global__ void NAME(const T *x, const T *b, T *y, uint64_t n, uint64_t width) { \
        for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;             \
             i += (uint64_t)gridDim.x * blockDim.x)                                           \
            store(&y[i], gelu_f(f32_of(x[i]) + f32_of(b[i % width])));                        \
    }

// Its backward's dx = dy · GELU'(x + b), the pre-activation recomputed (the bias gradient is the
// column sums of dx, taken after).
#define BIAS_GELU_BWD(NAME, T)                                                                \
    extern "C" __global__ void NAME(const T *x, const T *b, const T *dy, T *dx, uint64_t n,   \
                                    uint64_t width) {                                         \
        for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;             \
             i += (uint64_t)gridDim.x * blockDim.x)                                           \
            store(&dx[i], gelu_grad_f(f32_of(x[i]) + f32_of(b[i % width]), f32_of(dy[i])));   \
    }

BIAS_GELU_FWD(bias_gelu_fwd_f32, float)
BIAS_GELU_FWD(bias_gelu_fwd_bf16, __nv_bfloat16)
BIAS_GELU_BWD(bias_gelu_bwd_f32, float)
BIAS_GELU_BWD(bias_gelu_bwd_bf16, __nv_bfloat16)
