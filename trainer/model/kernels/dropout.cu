// Philox4x32-10 dropout: the CUDA twin of trainer/model/src/ops/dropout.rs (CPU kernel) and
// shared/src/philox.rs (the generator). Element i of a tensor takes word i of the stream keyed by
// (k0, k1): word i is word (i mod 4) of philox4x32_10(counter = [i/4 low, i/4 high, 0, 0], key).
// An element is dropped when its word is below `threshold` (= p * 2^32), else multiplied by `keep`
// (= 1 / (1 - p)) in f32 and rounded to the tensor's type: the CPU kernel's arithmetic exactly.
// Compiled to PTX at build time (trainer/model/build.rs) with the `cuda` feature.

#include <stdint.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "philox.cuh"

// Known-answer check: cases[6 j .. 6 j + 6] = counter (4 words), key (2 words); out[4 j ..] the
// block.
extern "C" __global__ void philox_blocks(const uint32_t *cases, uint32_t *out, uint32_t n) {
    const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    uint32_t c[4] = {cases[6 * j], cases[6 * j + 1], cases[6 * j + 2], cases[6 * j + 3]};
    philox4x32_10(c, cases[6 * j + 4], cases[6 * j + 5]);
    for (int w = 0; w < 4; w++) out[4 * j + w] = c[w];
}

// One thread per Philox block (four elements), grid-stride.
#define DROPOUT_KERNEL(NAME, T, TO_F32, FROM_F32)                                             \
    extern "C" __global__ void NAME(const T *x, T *y, uint64_t n, uint32_t k0, uint32_t k1,  \
                                    uint32_t threshold, float keep) {                         \
        const uint64_t blocks = (n + 3) / 4;                                                  \
        for (uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; b < blocks;        \
             b += (uint64_t)gridDim.x * blockDim.x) {                                         \
            uint32_t c[4] = {(uint32_t)b, (uint32_t)(b >> 32), 0u, 0u};                       \
            philox4x32_10(c, k0, k1);                                                         \
            for (int w = 0; w < 4; w++) {                                                     \
                const uint64_t i = 4 * b + w;                                                 \
                if (i < n) {                                                                  \
                    const float factor = c[w] < threshold ? 0.0f : keep;                      \
                    y[i] = FROM_F32(TO_F32(x[i]) * factor);                                   \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

__device__ __forceinline__ float f32_id(float v) { return v; }

DROPOUT_KERNEL(dropout_f32, float, f32_id, f32_id)
DROPOUT_KERNEL(dropout_bf16, __nv_bfloat16, __bfloat162float, __float2bfloat16_rn)
DROPOUT_KERNEL(dropout_f16, __half, __half2float, __float2half_rn)

// Residual + dropout: y = r + x * factor, the sum in f32 and rounded once (the CPU kernel's
// drop_add_slice); the mask is dropout's, element for element.
#define DROPOUT_ADD_KERNEL(NAME, T, TO_F32, FROM_F32)                                         \
    extern "C" __global__ void NAME(const T *r, const T *x, T *y, uint64_t n, uint32_t k0,   \
                                    uint32_t k1, uint32_t threshold, float keep) {            \
        const uint64_t blocks = (n + 3) / 4;                                                  \
        for (uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; b < blocks;        \
             b += (uint64_t)gridDim.x * blockDim.x) {                                         \
            uint32_t c[4] = {(uint32_t)b, (uint32_t)(b >> 32), 0u, 0u};                       \
            philox4x32_10(c, k0, k1);                                                         \
            for (int w = 0; w < 4; w++) {                                                     \
                const uint64_t i = 4 * b + w;                                                 \
                if (i < n) {                                                                  \
                    const float factor = c[w] < threshold ? 0.0f : keep;                      \
                    y[i] = FROM_F32(TO_F32(r[i]) + TO_F32(x[i]) * factor);                    \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

DROPOUT_ADD_KERNEL(dropout_add_f32, float, f32_id, f32_id)
DROPOUT_ADD_KERNEL(dropout_add_bf16, __nv_bfloat16, __bfloat162float, __float2bfloat16_rn)
DROPOUT_ADD_KERNEL(dropout_add_f16, __half, __half2float, __float2half_rn)
