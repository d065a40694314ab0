// Embedding lookup and its gradient: the CUDA twin of trainer/model/src/ops/embedding.rs.
// Forward: y[t, c] = table[ids[t], c] (an id outside the table gives NaN, so the step's next read
// stops the run instead of reading out of bounds). Backward: d table[ids[t], c] += dy[t, c] by
// f32 atomic adds into a zeroed table: the sums are the CPU twin's (tokens in order) up to the
// order of the additions, which atomics do not fix, so results may differ in the last bits from
// run to run.
// Compiled to PTX at build time (trainer/model/build.rs) with the `cuda` feature.

#include <stdint.h>
#include <cuda_bf16.h>

#include "vmath.cuh"

// One thread per output value, grid-stride.
#define EMBEDDING_FWD(NAME, T)                                                                \
    extern "C" __global__ void NAME(const T *table, const uint32_t *ids, T *y, uint64_t tokens, \
                                    uint32_t rows, uint32_t width) {                          \
        const uint64_t n = tokens * width;                                                    \
        for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;             \
             i += (uint64_t)gridDim.x * blockDim.x) {                                         \
            const uint32_t id = ids[i / width];                                               \
            y[i] = id < rows ? table[(uint64_t)id * width + i % width] : (T)NAN;              \
        }                                                                                     \
    }

// d table (zeroed by the caller) += dy rows at their ids: one thread per dy value, grid-stride.
extern "C" __global__ void embedding_bwd_f32(const uint32_t *ids, const float *dy, float *dtable,
                                             uint64_t tokens, uint32_t rows, uint32_t width) {
    const uint64_t n = tokens * width;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t id = ids[i / width];
        if (id < rows) atomicAdd(&dtable[(uint64_t)id * width + i % width], dy[i]);
    }
}

EMBEDDING_FWD(embedding_fwd_f32, float)
EMBEDDING_FWD(embedding_fwd_bf16, __nv_bfloat16)
