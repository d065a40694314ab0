// Device twins of trainer/model/src/ops/vmath.rs's scalar functions, and f32 loads and
// round-to-nearest stores of the storage types: shared by the kernels that compute as their CPU
// twins do.
#pragma once
#include <stdint.h>
#include <cuda_bf16.h>

#define EXP_MIN (-87.3f)
#define EXP_MAX (88.3f)

// vmath::exp: e^x, 0 below -87.3, capped at e^88.3, NaN passed through.
__device__ __forceinline__ float exp_poly(float x) {
    const float xc = fminf(fmaxf(x, EXP_MIN), EXP_MAX);
    const float n = floorf(fmaf(xc, 1.44269504088896341f, 0.5f));
    const float r = fmaf(n, 2.1219444e-4f, fmaf(n, -0.6933594f, xc));
    float p = 1.9875691e-4f;
    p = fmaf(p, r, 1.3981999e-3f);
    p = fmaf(p, r, 8.333452e-3f);
    p = fmaf(p, r, 4.1665796e-2f);
    p = fmaf(p, r, 1.6666665e-1f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r * r, r) + 1.0f;
    const int bits = ((int)n + 127) << 23;
    float v = p * __int_as_float(bits);
    if (x < EXP_MIN) v = 0.0f;
    return isnan(x) ? x : v;
}

__device__ __forceinline__ float f32_of(float v) { return v; }
__device__ __forceinline__ float f32_of(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float *p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }
