// Cross-entropy per row of logits [M, V] plus a bias [V] (the MLM decoder's, added here and never
// stored; zeros where there is none) against u32 labels, with the arg-max hit, forward and
// backward: the CUDA twin of trainer/model/src/ops/cross_entropy.rs, whose CPU kernel sums over
// vmath.rs's 16 fixed lanes (lane l takes columns l, l + 16, ... in order; then the lanes' sums
// are added in lane order from 0). Here 16 threads (half a warp) take one row in that layout, so
// the sums are the same; exp is vmath's polynomial. The logarithm is the device's logf (within an
// ulp of the CPU's ln), so the loss and logsumexp agree to an ulp, not always to the bit.
// With z = x + b (the sum in f32): forward out[3 r ..] = (logsumexp - z[label], 1 if the row's
// first arg-max is the label else 0, logsumexp); backward dx = e^(z - logsumexp) * g - [j = label] g,
// g the loss's gradient, from each row's terms (g, logsumexp, label as an f32).
// Compiled to PTX at build time (trainer/model/build.rs) with the `cuda` feature.

#include <stdint.h>
#include <cuda_bf16.h>

#include "vmath.cuh"

#define LANES 16
// Rows per block of 256 threads.
#define ROWS 16

template <typename T>
__device__ void cross_entropy_fwd(const T *x, const T *b, const uint32_t *labels, float *out,
                                  uint64_t rows, uint32_t v) {
    const uint32_t lane = threadIdx.x % LANES;
    const uint64_t r = (uint64_t)blockIdx.x * ROWS + threadIdx.x / LANES;
    // Half-warp shuffles: the group's 16 threads, within their warp.
    const uint32_t group = 0xFFFFu << (threadIdx.x % 32 / LANES * LANES);
    const bool live = r < rows;
    const T *xr = x + (live ? r : 0) * v;
    float m = -INFINITY;
    if (live)
        for (uint32_t j = lane; j < v; j += LANES) {
            const float xj = f32_of(xr[j]) + f32_of(b[j]);
            m = xj > m ? xj : m;
        }
    for (int off = LANES / 2; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(group, m, off));
    float part = 0.0f;
    uint32_t first = 0xFFFFFFFFu;
    if (live)
        for (uint32_t j = lane; j < v; j += LANES) {
            const float xj = f32_of(xr[j]) + f32_of(b[j]);
            part = part + exp_poly(xj - m);
            if (xj == m && first == 0xFFFFFFFFu) first = j;
        }
    // The lanes' sums in lane order from 0, and the first arg-max.
    const uint32_t base = threadIdx.x % 32 / LANES * LANES;
    float sum = 0.0f;
    for (uint32_t k = 0; k < LANES; k++) sum = sum + __shfl_sync(group, part, base + k);
    for (int off = LANES / 2; off > 0; off >>= 1) first = min(first, __shfl_xor_sync(group, first, off));
    if (live && lane == 0) {
        const uint32_t t = labels[r];
        const float lse = m + logf(sum);
        // A label outside the classes gives a NaN loss (the step's next read stops the run).
        out[3 * r] = t < v ? lse - (f32_of(xr[t]) + f32_of(b[t])) : NAN;
        out[3 * r + 1] = first == t ? 1.0f : 0.0f;
        out[3 * r + 2] = lse;
    }
}

// terms [M, 3]: each row's loss gradient g, logsumexp and label; one thread per logit,
// grid-stride.
template <typename T>
__device__ void cross_entropy_bwd(const T *x, const T *b, const float *terms, T *dx,
                                  uint64_t rows, uint32_t v) {
    const uint64_t n = rows * v;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t r = i / v;
        const uint32_t j = (uint32_t)(i % v);
        const float g = terms[3 * r];
        float d = exp_poly((f32_of(x[i]) + f32_of(b[j])) - terms[3 * r + 1]) * g;
        if (j == (uint32_t)terms[3 * r + 2]) d = d - g;
        store(&dx[i], d);
    }
}

#define CROSS_ENTROPY_FWD(NAME, T)                                                            \
    extern "C" __global__ void NAME(const T *x, const T *b, const uint32_t *labels,          \
                                    float *out, uint64_t rows, uint32_t v) {                  \
        cross_entropy_fwd(x, b, labels, out, rows, v);                                        \
    }

#define CROSS_ENTROPY_BWD(NAME, T)                                                            \
    extern "C" __global__ void NAME(const T *x, const T *b, const float *terms, T *dx,        \
                                    uint64_t rows, uint32_t v) {                              \
        cross_entropy_bwd(x, b, terms, dx, rows, v);                                          \
    }

CROSS_ENTROPY_FWD(cross_entropy_fwd_f32, float)
CROSS_ENTROPY_FWD(cross_entropy_fwd_bf16, __nv_bfloat16)
CROSS_ENTROPY_BWD(cross_entropy_bwd_f32, float)
CROSS_ENTROPY_BWD(cross_entropy_bwd_bf16, __nv_bfloat16)
