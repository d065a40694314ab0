// LayerNorm over the last dimension with its affine part, forward and backward: the CUDA twin of
// trainer/model/src/ops/layer_norm.rs, whose CPU kernel does the same f32 arithmetic in the same
// order (no contraction: build.rs compiles with -fmad=false).
//
// One warp per row of n values (WARPS rows per block): lane l sums columns l, l + 32, ... in
// order, then the lanes combine by a butterfly (xor 16, 8, 4, 2, 1); mean = sum / n,
// var = sum (x - mean)^2 / n (the same layout), inv_std = 1 / sqrt(var + eps),
// y = (x - mean) * inv_std * w + b. The backward writes [rows + 2, n]: dx rows
// (inv_std * (dy w - mean(g) - xhat mean(g xhat)) for g = dy w), then d weight = sum dy xhat and
// d bias = sum dy over rows, as the CPU kernel sums them: per task of `per_task` rows in row
// order from 0, then the tasks' partial sums in task order from 0. No atomics: the same bits
// every run.
// Compiled to PTX at build time (trainer/model/build.rs) with the `cuda` feature.

#include <stdint.h>
#include <cuda_bf16.h>

#include "vmath.cuh"

#define WARPS 4
#define FULL 0xFFFFFFFFu

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v = v + __shfl_xor_sync(FULL, v, off);
    return v;
}

// The row's (mean, inv_std).
template <typename T>
__device__ __forceinline__ float2 row_stats(const T *x, uint32_t n, float eps, uint32_t lane) {
    float part = 0.0f;
    for (uint32_t c = lane; c < n; c += 32) part = part + f32_of(x[c]);
    const float mean = warp_sum(part) / (float)n;
    part = 0.0f;
    for (uint32_t c = lane; c < n; c += 32) {
        const float d = f32_of(x[c]) - mean;
        part = part + d * d;
    }
    const float var = warp_sum(part) / (float)n;
    return make_float2(mean, 1.0f / sqrtf(var + eps));
}

template <typename T>
__device__ void layer_norm_fwd(const T *x, const T *w, const T *b, T *y, uint64_t rows,
                               uint32_t n, float eps) {
    const uint32_t lane = threadIdx.x % 32;
    const uint64_t r = (uint64_t)blockIdx.x * WARPS + threadIdx.x / 32;
    if (r >= rows) return;
    const T *xr = x + r * n;
    const float2 st = row_stats(xr, n, eps, lane);
    for (uint32_t c = lane; c < n; c += 32)
        store(&y[r * n + c], (f32_of(xr[c]) - st.x) * st.y * f32_of(w[c]) + f32_of(b[c]));
}

// dx for each row, and the row's (mean, inv_std) into stats for the parameter sums.
template <typename T>
__device__ void layer_norm_bwd_rows(const T *x, const T *w, const T *dy, T *out, float *stats,
                                    uint64_t rows, uint32_t n, float eps) {
    const uint32_t lane = threadIdx.x % 32;
    const uint64_t r = (uint64_t)blockIdx.x * WARPS + threadIdx.x / 32;
    if (r >= rows) return;
    const T *xr = x + r * n;
    const T *dyr = dy + r * n;
    const float2 st = row_stats(xr, n, eps, lane);
    float sum_g = 0.0f, sum_g_xhat = 0.0f;
    for (uint32_t c = lane; c < n; c += 32) {
        const float xhat = (f32_of(xr[c]) - st.x) * st.y;
        const float g = f32_of(dyr[c]) * f32_of(w[c]);
        sum_g = sum_g + g;
        sum_g_xhat = sum_g_xhat + g * xhat;
    }
    const float mean_g = warp_sum(sum_g) / (float)n;
    const float mean_g_xhat = warp_sum(sum_g_xhat) / (float)n;
    for (uint32_t c = lane; c < n; c += 32) {
        const float xhat = (f32_of(xr[c]) - st.x) * st.y;
        store(&out[r * n + c],
              st.y * (f32_of(dyr[c]) * f32_of(w[c]) - mean_g - xhat * mean_g_xhat));
    }
    if (lane == 0) {
        stats[2 * r] = st.x;
        stats[2 * r + 1] = st.y;
    }
}

// Per task of per_task rows, each column's sum of dy xhat (partial[task][c]) and of dy
// (partial[task][n + c]), rows in order from 0: one thread per (column, task).
template <typename T>
__device__ void layer_norm_bwd_params(const T *x, const T *dy, const float *stats, float *partial,
                                      uint64_t rows, uint32_t n, uint32_t per_task) {
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    const uint64_t task = blockIdx.y;
    if (c >= n) return;
    float dw = 0.0f, db = 0.0f;
    const uint64_t end = min(rows, (task + 1) * per_task);
    for (uint64_t r = task * per_task; r < end; r++) {
        const float xhat = (f32_of(x[r * n + c]) - stats[2 * r]) * stats[2 * r + 1];
        const float g = f32_of(dy[r * n + c]);
        dw = dw + g * xhat;
        db = db + g;
    }
    partial[task * 2 * n + c] = dw;
    partial[task * 2 * n + n + c] = db;
}

// The tasks' partial sums in task order from 0 into the last two rows of out.
template <typename T>
__device__ void layer_norm_bwd_sum(const float *partial, T *out, uint64_t rows, uint32_t n,
                                   uint32_t tasks) {
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= 2 * n) return;
    float acc = 0.0f;
    for (uint32_t t = 0; t < tasks; t++) acc = acc + partial[(uint64_t)t * 2 * n + c];
    store(&out[rows * n + c], acc);
}

#define LAYER_NORM_FWD(NAME, T)                                                               \
    extern "C" __global__ void NAME(const T *x, const T *w, const T *b, T *y, uint64_t rows,  \
                                    uint32_t n, float eps) {                                  \
        layer_norm_fwd(x, w, b, y, rows, n, eps);                                             \
    }

#define LAYER_NORM_BWD_ROWS(NAME, T)                                                          \
    extern "C" __global__ void NAME(const T *x, const T *w, const T *dy, T *out,             \
                                    float *stats, uint64_t rows, uint32_t n, float eps) {     \
        layer_norm_bwd_rows(x, w, dy, out, stats, rows, n, eps);                              \
    }

#define LAYER_NORM_BWD_PARAMS(NAME, T)                                                        \
    extern "C" __global__ void NAME(const T *x, const T *dy, const float *stats,             \
                                    float *partial, uint64_t rows, uint32_t n,                \
                                    uint32_t per_task) {                                      \
        layer_norm_bwd_params(x, dy, stats, partial, rows, n, per_task);                      \
    }

#define LAYER_NORM_BWD_SUM(NAME, T)                                                           \
    extern "C" __global__ void NAME(const float *partial, T *out, uint64_t rows, uint32_t n,  \
                                    uint32_t tasks) {                                         \
        layer_norm_bwd_sum(partial, out, rows, n, tasks);                                     \
    }

LAYER_NORM_FWD(layer_norm_fwd_f32, float)
LAYER_NORM_FWD(layer_norm_fwd_bf16, __nv_bfloat16)
LAYER_NORM_BWD_ROWS(layer_norm_bwd_rows_f32, float)
LAYER_NORM_BWD_ROWS(layer_norm_bwd_rows_bf16, __nv_bfloat16)
LAYER_NORM_BWD_PARAMS(layer_norm_bwd_params_f32, float)
LAYER_NORM_BWD_PARAMS(layer_norm_bwd_params_bf16, __nv_bfloat16)
LAYER_NORM_BWD_SUM(layer_norm_bwd_sum_f32, float)
LAYER_NORM_BWD_SUM(layer_norm_bwd_sum_bf16, __nv_bfloat16)
