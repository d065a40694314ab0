// Philox4x32-10 (Random123), the device twin of shared/src/philox.rs, and the dropout rule every
// kernel shares: element i of a stream keyed by (k0, k1) takes word (i mod 4) of the block at
// counter [i/4 low, i/4 high, 0, 0]; it is dropped when that word is below `threshold`
// (= p * 2^32), else multiplied by `keep` (= 1 / (1 - p)).
#pragma once
#include <stdint.h>

__device__ __forceinline__ void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
#pragma unroll
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
        const uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0;
        const uint32_t n1 = (uint32_t)p1;
        const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        const uint32_t n3 = (uint32_t)p0;
        c[0] = n0;
        c[1] = n1;
        c[2] = n2;
        c[3] = n3;
    }
}

// The dropout factor of element i (0 or keep); threshold 0 (no dropout) gives 1 without drawing.
__device__ __forceinline__ float dropout_factor(uint64_t i, uint32_t k0, uint32_t k1,
                                                uint32_t threshold, float keep) {
    if (threshold == 0) return 1.0f;
    const uint64_t b = i / 4;
    uint32_t c[4] = {(uint32_t)b, (uint32_t)(b >> 32), 0u, 0u};
    philox4x32_10(c, k0, k1);
    return c[i % 4] < threshold ? 0.0f : keep;
}
