// The CUDA C that Quiver's kernels use, for compiling them as host C++ (the CUDA emulator,
// kernels/emu/README.md). Every CUDA thread of a block runs as a fiber on one host thread;
// barriers (__syncthreads), warp barriers (__syncwarp), votes (__any_sync) and shuffles
// (__shfl_*_sync) switch between fibers, so the kernels' own source runs unchanged, lane by
// lane, with CUDA's semantics for these operations. `__shared__` variables are the block's:
// blocks run one after another, so function-static storage serves.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace emu {

struct dim3 {
    unsigned int x, y, z;
};

// The running thread's coordinates and its block's.
dim3 thread_idx();
dim3 block_idx();
dim3 block_dim();
dim3 grid_dim();

// Barriers and warp exchanges (defined by the runtime in driver.cpp).
void sync_block();
void sync_warp();
bool vote_any(bool p);
bool vote_all(bool p);
unsigned int vote_ballot(bool p);
// Returns the 64-bit word lane `src` of the warp passed (its own word when `src` is out of
// range), after every lane has passed one.
std::uint64_t exchange(std::uint64_t mine, int src);
unsigned int lane_id();
void* dynamic_shared();

template <typename T>
T shfl(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
    std::uint64_t w = 0;
    std::memcpy(&w, &v, sizeof(T));
    w = exchange(w, src);
    T out;
    std::memcpy(&out, &w, sizeof(T));
    return out;
}

}  // namespace emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#ifdef QUIVER_EMU_BANKS
// In a section of their own, so the bank-conflict tracer knows their addresses.
#define __shared__ static __attribute__((section("emu_shared")))
#else
#define __shared__ static
#endif
#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx())
#define blockDim (emu::block_dim())
#define gridDim (emu::grid_dim())
#define __syncthreads() emu::sync_block()
#define __syncwarp(...) emu::sync_warp()
#define __any_sync(mask, p) emu::vote_any(p)
#define __all_sync(mask, p) emu::vote_all(p)
#define __ballot_sync(mask, p) emu::vote_ballot(p)
#define __shfl_sync(mask, v, src) emu::shfl((v), (int)(src))
#define __shfl_down_sync(mask, v, d) emu::shfl((v), (int)(emu::lane_id() + (d)))
#define __shfl_up_sync(mask, v, d) emu::shfl((v), (int)emu::lane_id() - (int)(d))
#define __shfl_xor_sync(mask, v, m) emu::shfl((v), (int)(emu::lane_id() ^ (m)))

struct uint2 {
    unsigned int x, y;
};
struct float2 {
    float x, y;
};
struct uint4 {
    unsigned int x, y, z, w;
};
// Single-precision operations rounded on their own (never fused): plain operations here,
// where build.py compiles with -ffp-contract=off (as NVRTC compiles with --fmad=false).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
// A fused multiply-add, rounded once: what the hardware's FFMA computes.
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// CUDA's integer min().
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
// Four bytes chosen from the eight of x (bytes 0–3) and y (4–7): result byte n is the byte
// numbered by selector nibble n (its top bit ignored, as CUDA documents).
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const std::uint64_t v = (std::uint64_t)y << 32 | x;
    unsigned int r = 0;
    for (int n = 0; n < 4; n++) {
        r |= (unsigned int)((v >> (((s >> (4 * n)) & 7u) * 8)) & 0xffu) << (8 * n);
    }
    return r;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}

// cuda_fp16.h: storage and the exact half → float conversion.
struct __half {
    std::uint16_t bits;
};
inline float __half2float(__half h) {
    const std::uint32_t sign = (std::uint32_t)(h.bits >> 15) << 31;
    std::uint32_t exp = (h.bits >> 10) & 0x1f;
    std::uint32_t man = h.bits & 0x3ff;
    std::uint32_t out;
    if (exp == 0x1f) {
        out = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        out = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        out = sign;
    } else {
        // Subnormal: normalise.
        int e = -1;
        do {
            man <<= 1;
            ++e;
        } while ((man & 0x400) == 0);
        out = sign | ((std::uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &out, 4);
    return f;
}
