// Rotary position embeddings on the query and key blocks of fused [tokens, 3H] projections: the
// CUDA twin of trainer/model/src/ops/rotary.rs's CPU kernel. Within each head of dh columns,
// columns i and i + dh/2 (i < dh/2) are rotated by the token's (cos, sin)[i]; with sign = -1 the
// inverse rotation (the backward). The value block is copied. The same f32 arithmetic as the CPU
// kernel (no contraction: build.rs compiles with -fmad=false); bf16 storage rounds to nearest.
// Compiled to PTX at build time (trainer/model/build.rs) with the `cuda` feature.

#include <stdint.h>

#include "vmath.cuh"

// One thread per output value, grid-stride; width = 3H, qk = 2H, cos/sin [tokens, dh/2].
#define ROTARY(NAME, T)                                                                       \
    extern "C" __global__ void NAME(const T *x, const float *cos, const float *sin, T *y,     \
                                    uint64_t tokens, uint64_t width, uint64_t qk, uint64_t dh, \
                                    float sign) {                                             \
        const uint64_t n = tokens * width, half = dh / 2;                                     \
        for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;             \
             e += (uint64_t)gridDim.x * blockDim.x) {                                         \
            const uint64_t token = e / width, col = e % width;                                \
            if (col >= qk) {                                                                  \
                y[e] = x[e];                                                                  \
                continue;                                                                     \
            }                                                                                 \
            const uint64_t j = col % dh;                                                      \
            const uint64_t i = j < half ? j : j - half;                                       \
            const float c = cos[token * half + i], s = sign * sin[token * half + i];          \
            if (j < half) {                                                                   \
                const float a = f32_of(x[e]), b = f32_of(x[e + half]);                        \
                store(&y[e], a * c - b * s);                                                  \
            } else {                                                                          \
                const float a = f32_of(x[e - half]), b = f32_of(x[e]);                        \
                store(&y[e], b * c + a * s);                                                  \
            }                                                                                 \
        }                                                                                     \
    }

ROTARY(rotary_f32, float)
ROTARY(rotary_bf16, __nv_bfloat16)
