// CacheBlend selection kernels (docs/kernels.md).
//
// 1. Deviation: one warp per token; lane i sums the squared differences of
//    the 8-element chunks i, i+32, ... in order, then a xor butterfly
//    (16, 8, 4, 2, 1) combines the lanes -- the order BlendSelectCpu uses.
// 2. Top-k: one block of 1024 threads. A 4-pass MSB radix select over the
//    32-bit keys (|deviation| bits) finds the k-th largest key V and how
//    many keys equal to V to take; a scan in token order then writes the
//    tokens with key > V and the first of those with key == V, increasing.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {
namespace {

constexpr int kDeviationThreads = 256;
constexpr int kTopKThreads = 1024;

template <class Tr>
__global__ void __launch_bounds__(kDeviationThreads)
    DeviationKernel(const BlendArgs a) {
  using Bits = typename Tr::Bits;
  const uint32_t lane = threadIdx.x & 31;
  const uint32_t warps = gridDim.x * (kDeviationThreads / 32);
  const uint32_t chunks = a.hd / 8;
  const uint64_t row_bytes = static_cast<uint64_t>(a.hd) * sizeof(Bits);
  for (uint32_t t = (blockIdx.x * kDeviationThreads + threadIdx.x) / 32;
       t < a.tokens; t += warps) {
    const uint8_t* f = static_cast<const uint8_t*>(a.fresh) + t * row_bytes;
    const uint8_t* c = static_cast<const uint8_t*>(a.cached) + t * row_bytes;
    float acc = 0.0f;
    for (uint32_t chunk = lane; chunk < chunks; chunk += 32) {
      Bits fb[8], cb[8];
      Load8(f + chunk * 8 * sizeof(Bits), fb);
      Load8(c + chunk * 8 * sizeof(Bits), cb);
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        const float d = Sub(Tr::ToFloat(fb[m]), Tr::ToFloat(cb[m]));
        acc = Add(acc, Mul(d, d));
      }
    }
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) {
      acc = Add(acc, __shfl_xor_sync(kFullMask, acc, m));
    }
    if (lane == 0) a.deviations[t] = acc;
  }
}

__device__ __forceinline__ uint32_t KeyOf(float deviation) {
  return FloatBits(deviation) & 0x7FFFFFFFu;
}

// Exclusive prefix sum of v over the block; *total gets the block's sum.
// Every thread must call it; `warp_sums` is shared [32].
__device__ uint32_t BlockExclusiveScan(uint32_t v, uint32_t* total,
                                       uint32_t* warp_sums) {
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  constexpr uint32_t kWarps = kTopKThreads / 32;
  uint32_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(kFullMask, x, o);
    if (lane >= static_cast<uint32_t>(o)) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t s = lane < kWarps ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(kFullMask, s, o);
      if (lane >= static_cast<uint32_t>(o)) s += y;
    }
    warp_sums[lane] = s;  // Inclusive prefix over warps.
  }
  __syncthreads();
  const uint32_t before = warp > 0 ? warp_sums[warp - 1] : 0;
  *total = warp_sums[kWarps - 1];
  __syncthreads();  // warp_sums is reused by the next call.
  return before + x - v;
}

__global__ void __launch_bounds__(kTopKThreads)
    TopKKernel(const float* deviations, uint32_t tokens, uint32_t k,
               int32_t* selected) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t warp_sums[32];
  __shared__ uint32_t s_prefix, s_remaining;
  uint32_t prefix = 0, mask = 0, remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (uint32_t i = threadIdx.x; i < 256; i += kTopKThreads) hist[i] = 0;
    __syncthreads();
    for (uint32_t t = threadIdx.x; t < tokens; t += kTopKThreads) {
      const uint32_t key = KeyOf(deviations[t]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      // The digit holding the remaining-th largest key among the candidates.
      uint32_t above = 0;
      int d = 255;
      for (; d > 0; --d) {
        if (above + hist[d] >= remaining) break;
        above += hist[d];
      }
      s_prefix = prefix | (static_cast<uint32_t>(d) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
  }
  // prefix is the k-th largest key; take every larger key and the first
  // `remaining` keys equal to it, in token order.
  uint32_t taken = 0, equal_seen = 0;
  for (uint32_t begin = 0; begin < tokens; begin += kTopKThreads) {
    const uint32_t t = begin + threadIdx.x;
    const uint32_t key = t < tokens ? KeyOf(deviations[t]) : 0;
    const bool greater = t < tokens && key > prefix;
    const bool equal = t < tokens && key == prefix;
    uint32_t equal_total, take_total;
    const uint32_t equal_before =
        BlockExclusiveScan(equal ? 1 : 0, &equal_total, warp_sums);
    const bool take =
        greater || (equal && equal_seen + equal_before < remaining);
    const uint32_t pos =
        BlockExclusiveScan(take ? 1 : 0, &take_total, warp_sums);
    if (take) selected[taken + pos] = static_cast<int32_t>(t);
    taken += take_total;
    equal_seen += equal_total;
  }
}

}  // namespace

cudaError_t LaunchBlendSelect(const BlendArgs& a, cudaStream_t stream) {
  const uint64_t want =
      (uint64_t{a.tokens} * 32 + kDeviationThreads - 1) / kDeviationThreads;
  const unsigned blocks = static_cast<unsigned>(want < 4096 ? want : 4096);
  DispatchDtype(a.dtype, [&](auto traits) {
    DeviationKernel<decltype(traits)>
        <<<blocks, kDeviationThreads, 0, stream>>>(a);
  });
  TopKKernel<<<1, kTopKThreads, 0, stream>>>(a.deviations, a.tokens, a.k,
                                             a.selected);
  return cudaGetLastError();
}

}  // namespace strata::kernels::internal
