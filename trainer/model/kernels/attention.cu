// Attention for short rows (L <= 1024), forward and backward: the CUDA twin of
// trainer/model/src/ops/attention_rows.rs, whose CPU kernel does the same f32 arithmetic in the
// same order (no contraction: build.rs compiles with -fmad=false; exp is vmath's polynomial).
//
// qkv [B, L, 3H] holds the query, key and value blocks (heads of dh = H / heads columns); rule
// [B, L, 2] f32 holds each token's additive key bias and its segment id. Query i sees key j when
// |i - j| <= radius (0xFFFFFFFF: no window) and, with use_segments, both have the same segment:
// the visibility rule as index arithmetic, no dense mask. Scores s = (q . k) * scale + bias[j]
// (-inf where hidden), p = softmax(s), w = p * dropout factor of element ((b heads + h) L + i) L + j
// (Philox, the dropout op's rule, so the masks equal the composed path's), context = w V.
//
// One warp per row (query row forward, key row in the second backward kernel), WARPS warps per
// block, the row's L values in shared memory. Lane l takes keys (or queries) l, l + 32, ...:
// its partial sums run in that order, then a butterfly over lanes (xor 16, 8, 4, 2, 1); dot
// products and the value/key products run sequentially over their index with fmaf.
// The backward recomputes the probabilities: bwd_q writes dQ and each query row's (max, sum,
// D = sum_j p_j dp_j); bwd_kv recomputes p_ij from them and writes dK and dV, each key row by one
// warp, so no atomics and the same bits every run.
// Compiled to PTX at build time (trainer/model/build.rs) with the `cuda` feature.

#include <stdint.h>
#include <cuda_bf16.h>

#include "philox.cuh"
#include "vmath.cuh"

#define WARPS 4
#define FULL 0xFFFFFFFFu
#define NO_WINDOW 0xFFFFFFFFu

__device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, off));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v = v + __shfl_xor_sync(FULL, v, off);
    return v;
}

// sum_d a[d] * b[d], sequential fmaf from 0.
template <typename T>
__device__ __forceinline__ float dot_shared(const float *a, const T *b, uint32_t dh) {
    float acc = 0.0f;
    for (uint32_t d = 0; d < dh; d++) acc = fmaf(a[d], f32_of(b[d]), acc);
    return acc;
}

// The row's layout and rule.
struct Rows {
    uint32_t len, hidden, heads, dh, radius, use_segments;
    float scale;
};

__device__ __forceinline__ bool sees(const Rows &r, const float *rule_b, uint32_t i, uint32_t j) {
    const uint32_t gap = i > j ? i - j : j - i;
    if (r.radius != NO_WINDOW && gap > r.radius) return false;
    return !r.use_segments || rule_b[2 * i + 1] == rule_b[2 * j + 1];
}

// The score of query i for key j from the dot product.
__device__ __forceinline__ float score(const Rows &r, const float *rule_b, uint32_t i, uint32_t j,
                                       float dot) {
    if (!sees(r, rule_b, i, j)) return -INFINITY;
    return dot * r.scale + rule_b[2 * j];
}

// Probability from a score and its row's (max, sum); 0 for a row with no visible key.
__device__ __forceinline__ float prob(float s, float m, float sum) {
    return m == -INFINITY ? 0.0f : exp_poly(s - m) / sum;
}

__device__ __forceinline__ Rows rows_of(uint32_t len, uint32_t hidden, uint32_t heads,
                                        uint32_t radius, uint32_t use_segments) {
    Rows r;
    r.len = len;
    r.hidden = hidden;
    r.heads = heads;
    r.dh = hidden / heads;
    r.radius = radius;
    r.use_segments = use_segments;
    r.scale = 1.0f / sqrtf((float)r.dh);
    return r;
}

// Query row i of (b, h): its scores into w[0..L); returns (max, sum) and leaves exp(s - max) in
// w. q is the row's query in shared memory.
template <typename T>
__device__ __forceinline__ float2 softmax_row(const Rows &r, const T *qkv_b, const float *rule_b,
                                              uint32_t h, uint32_t i, const float *q, float *w,
                                              uint32_t lane) {
    const uint64_t row = 3 * (uint64_t)r.hidden;
    float m = -INFINITY;
    for (uint32_t j = lane; j < r.len; j += 32) {
        const float s =
            score(r, rule_b, i, j, dot_shared(q, qkv_b + j * row + r.hidden + h * r.dh, r.dh));
        w[j] = s;
        m = fmaxf(m, s);
    }
    m = warp_max(m);
    float part = 0.0f;
    for (uint32_t j = lane; j < r.len; j += 32) {
        const float e = m == -INFINITY ? 0.0f : exp_poly(w[j] - m);
        w[j] = e;
        part = part + e;
    }
    return make_float2(m, warp_sum(part));
}

template <typename T>
__device__ void attention_fwd(const T *qkv, const float *rule, T *ctx, Rows r, uint32_t k0,
                              uint32_t k1, uint32_t threshold, float keep) {
    extern __shared__ float smem[];
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t i = blockIdx.x * WARPS + warp, h = blockIdx.y, b = blockIdx.z;
    if (i >= r.len) return;
    float *w = smem + warp * (r.len + r.dh);
    float *q = w + r.len;
    const uint64_t row = 3 * (uint64_t)r.hidden;
    const T *qkv_b = qkv + (uint64_t)b * r.len * row;
    const float *rule_b = rule + (uint64_t)b * r.len * 2;
    for (uint32_t d = lane; d < r.dh; d += 32) q[d] = f32_of(qkv_b[i * row + h * r.dh + d]);
    __syncwarp();
    const float2 ms = softmax_row(r, qkv_b, rule_b, h, i, q, w, lane);
    const uint64_t first = (((uint64_t)b * r.heads + h) * r.len + i) * r.len;
    for (uint32_t j = lane; j < r.len; j += 32) {
        const float p = ms.x == -INFINITY ? 0.0f : w[j] / ms.y;
        w[j] = p * dropout_factor(first + j, k0, k1, threshold, keep);
    }
    __syncwarp();
    const T *v = qkv_b + 2 * r.hidden + h * r.dh;
    T *out = ctx + ((uint64_t)b * r.len + i) * r.hidden + h * r.dh;
    for (uint32_t d = lane; d < r.dh; d += 32) {
        float acc = 0.0f;
        for (uint32_t j = 0; j < r.len; j++) acc = fmaf(w[j], f32_of(v[j * row + d]), acc);
        store(&out[d], acc);
    }
}

// dQ for query row i, and the row's (max, sum, D) into stats[3 (row index)].
template <typename T>
__device__ void attention_bwd_q(const T *qkv, const float *rule, const T *dctx, T *dqkv,
                                float *stats, Rows r, uint32_t k0, uint32_t k1, uint32_t threshold,
                                float keep) {
    extern __shared__ float smem[];
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t i = blockIdx.x * WARPS + warp, h = blockIdx.y, b = blockIdx.z;
    if (i >= r.len) return;
    float *p = smem + warp * (2 * r.len + 2 * r.dh);
    float *ds = p + r.len;
    float *q = ds + r.len;
    float *g = q + r.dh;
    const uint64_t row = 3 * (uint64_t)r.hidden;
    const T *qkv_b = qkv + (uint64_t)b * r.len * row;
    const float *rule_b = rule + (uint64_t)b * r.len * 2;
    const T *dout = dctx + ((uint64_t)b * r.len + i) * r.hidden + h * r.dh;
    for (uint32_t d = lane; d < r.dh; d += 32) {
        q[d] = f32_of(qkv_b[i * row + h * r.dh + d]);
        g[d] = f32_of(dout[d]);
    }
    __syncwarp();
    const float2 ms = softmax_row(r, qkv_b, rule_b, h, i, q, p, lane);
    const uint64_t first = (((uint64_t)b * r.heads + h) * r.len + i) * r.len;
    const T *v = qkv_b + 2 * r.hidden + h * r.dh;
    float part = 0.0f;
    for (uint32_t j = lane; j < r.len; j += 32) {
        const float pj = ms.x == -INFINITY ? 0.0f : p[j] / ms.y;
        const float f = dropout_factor(first + j, k0, k1, threshold, keep);
        const float dp = dot_shared(g, v + j * row, r.dh) * f;
        p[j] = pj;
        ds[j] = dp;
        part = fmaf(pj, dp, part);
    }
    const float big_d = warp_sum(part);
    for (uint32_t j = lane; j < r.len; j += 32) ds[j] = p[j] * (ds[j] - big_d);
    __syncwarp();
    const T *k = qkv_b + r.hidden + h * r.dh;
    T *dq = dqkv + ((uint64_t)b * r.len + i) * row + h * r.dh;
    for (uint32_t d = lane; d < r.dh; d += 32) {
        float acc = 0.0f;
        for (uint32_t j = 0; j < r.len; j++) acc = fmaf(ds[j], f32_of(k[j * row + d]), acc);
        store(&dq[d], acc * r.scale);
    }
    if (lane == 0) {
        float *st = stats + 3 * (((uint64_t)b * r.heads + h) * r.len + i);
        st[0] = ms.x;
        st[1] = ms.y;
        st[2] = big_d;
    }
}

// dK and dV for key row j, from bwd_q's stats.
template <typename T>
__device__ void attention_bwd_kv(const T *qkv, const float *rule, const T *dctx, T *dqkv,
                                 const float *stats, Rows r, uint32_t k0, uint32_t k1,
                                 uint32_t threshold, float keep) {
    extern __shared__ float smem[];
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t j = blockIdx.x * WARPS + warp, h = blockIdx.y, b = blockIdx.z;
    if (j >= r.len) return;
    float *w = smem + warp * (2 * r.len + 2 * r.dh);
    float *ds = w + r.len;
    float *kk = ds + r.len;
    float *vv = kk + r.dh;
    const uint64_t row = 3 * (uint64_t)r.hidden;
    const T *qkv_b = qkv + (uint64_t)b * r.len * row;
    const float *rule_b = rule + (uint64_t)b * r.len * 2;
    const T *dctx_b = dctx + (uint64_t)b * r.len * r.hidden + h * r.dh;
    for (uint32_t d = lane; d < r.dh; d += 32) {
        kk[d] = f32_of(qkv_b[j * row + r.hidden + h * r.dh + d]);
        vv[d] = f32_of(qkv_b[j * row + 2 * r.hidden + h * r.dh + d]);
    }
    __syncwarp();
    const T *q = qkv_b + h * r.dh;
    const float *st_bh = stats + 3 * (((uint64_t)b * r.heads + h) * r.len);
    for (uint32_t i = lane; i < r.len; i += 32) {
        // The same operands in the same order as bwd_q's (q . k and dO . v).
        float qk = 0.0f, gv = 0.0f;
        for (uint32_t d = 0; d < r.dh; d++) {
            qk = fmaf(f32_of(q[i * row + d]), kk[d], qk);
            gv = fmaf(f32_of(dctx_b[(uint64_t)i * r.hidden + d]), vv[d], gv);
        }
        const float *st = st_bh + 3 * i;
        const float pij = prob(score(r, rule_b, i, j, qk), st[0], st[1]);
        const uint64_t e = (((uint64_t)b * r.heads + h) * r.len + i) * r.len + j;
        const float f = dropout_factor(e, k0, k1, threshold, keep);
        w[i] = pij * f;
        ds[i] = pij * (gv * f - st[2]);
    }
    __syncwarp();
    T *dk = dqkv + ((uint64_t)b * r.len + j) * row + r.hidden + h * r.dh;
    T *dv = dk + r.hidden;
    for (uint32_t d = lane; d < r.dh; d += 32) {
        float acc_k = 0.0f, acc_v = 0.0f;
        for (uint32_t i = 0; i < r.len; i++) {
            acc_k = fmaf(ds[i], f32_of(q[i * row + d]), acc_k);
            acc_v = fmaf(w[i], f32_of(dctx_b[(uint64_t)i * r.hidden + d]), acc_v);
        }
        store(&dk[d], acc_k * r.scale);
        store(&dv[d], acc_v);
    }
}

#define ATTENTION_FWD(NAME, T)                                                                \
    extern "C" __global__ void NAME(const T *qkv, const float *rule, T *ctx, uint32_t len,    \
                                    uint32_t hidden, uint32_t heads, uint32_t radius,         \
                                    uint32_t use_segments, uint32_t k0, uint32_t k1,          \
                                    uint32_t threshold, float keep) {                         \
        attention_fwd(qkv, rule, ctx, rows_of(len, hidden, heads, radius, use_segments), k0,  \
                      k1, threshold, keep);                                                   \
    }

#define ATTENTION_BWD_Q(NAME, T)                                                              \
    extern "C" __global__ void NAME(const T *qkv, const float *rule, const T *dctx, T *dqkv,  \
                                    float *stats, uint32_t len, uint32_t hidden,              \
                                    uint32_t heads, uint32_t radius, uint32_t use_segments,   \
                                    uint32_t k0, uint32_t k1, uint32_t threshold, float keep) { \
        attention_bwd_q(qkv, rule, dctx, dqkv, stats,                                         \
                        rows_of(len, hidden, heads, radius, use_segments), k0, k1, threshold, \
                        keep);                                                                \
    }

#define ATTENTION_BWD_KV(NAME, T)                                                             \
    extern "C" __global__ void NAME(const T *qkv, const float *rule, const T *dctx, T *dqkv,  \
                                    const float *stats, uint32_t len, uint32_t hidden,        \
                                    uint32_t heads, uint32_t radius, uint32_t use_segments,   \
                                    uint32_t k0, uint32_t k1, uint32_t threshold, float keep) { \
        attention_bwd_kv(qkv, rule, dctx, dqkv, stats,                                        \
                         rows_of(len, hidden, heads, radius, use_segments), k0, k1, threshold, \
                         keep);                                                               \
    }

ATTENTION_FWD(attention_fwd_f32, float)
ATTENTION_FWD(attention_fwd_bf16, __nv_bfloat16)
ATTENTION_BWD_Q(attention_bwd_q_f32, float)
ATTENTION_BWD_Q(attention_bwd_q_bf16, __nv_bfloat16)
ATTENTION_BWD_KV(attention_bwd_kv_f32, float)
ATTENTION_BWD_KV(attention_bwd_kv_bf16, __nv_bfloat16)
