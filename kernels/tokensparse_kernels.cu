// Tokensparse (BUZZ) selection and kept-row gather (kernels/tokensparse_
// kernels.h has the contract).
//
// Layer payload: [heads][kept] u16 positions, [heads][kept][dim] fp16 keys,
// then values. 1. SelectKernel: one warp per (layer, head, kept entry):
// sinks and window entries are fixed; a segment entry scans its stride
// tokens, its lanes sharing the tokens. 2. GatherKernel: one warp per (layer, K/V, head, entry) row.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint64_t VecIndex(const TokenSparseArgs& a,
                                             int side, uint32_t l, uint32_t t,
                                             uint32_t h) {
  return (((static_cast<uint64_t>(side) * a.layers + l) * a.tokens + t) *
              a.heads +
          h) *
         a.dim;
}

__device__ __forceinline__ uint16_t* Positions(const TokenSparseArgs& a,
                                               uint32_t l, uint32_t h) {
  return reinterpret_cast<uint16_t*>(a.payload + a.layer_bytes * l) +
         static_cast<uint64_t>(h) * a.kept;
}

template <class Tr>
__device__ __forceinline__ float Importance(const TokenSparseArgs& a,
                                            uint32_t l, uint32_t t, uint32_t h,
                                            uint32_t* flags) {
  if (a.scores != nullptr) {
    const uint64_t i = static_cast<uint64_t>(l) * a.tokens + t;
    const float s = a.per_head_scores ? a.scores[i * a.heads + h] : a.scores[i];
    if (isnan(s)) *flags |= kFlagNonFinite;
    return s;
  }
  using Bits = typename Tr::Bits;
  const Bits* k = static_cast<const Bits*>(a.kv) + VecIndex(a, 0, l, t, h);
  double sum = 0;
  for (uint32_t e = 0; e < a.dim; ++e) {
    const double x = static_cast<double>(Tr::ToFloat(k[e]));
    sum = __dadd_rn(sum, __dmul_rn(x, x));
  }
  const float norm = __double2float_rn(__dsqrt_rn(sum));
  return a.high_norm ? norm : Mul(-1.0f, norm);
}

// One warp per (layer, head, kept entry). A segment's tokens are spread
// over the lanes (lane i: tokens begin + i, begin + i + 32, ...); each lane
// keeps its first maximum, then a butterfly keeps the larger value, and on
// equal values the lower token: the first maximum of the segment, as the
// CPU's sequential scan (strict >) finds it.
template <class Tr>
__global__ void __launch_bounds__(kThreads) SelectKernel(TokenSparseArgs a) {
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t n = static_cast<uint64_t>(a.layers) * a.heads * a.kept;
  const uint64_t warps = static_cast<uint64_t>(gridDim.x) * (kThreads / 32);
  uint32_t flags = 0;
  for (uint64_t idx = (blockIdx.x * static_cast<uint64_t>(kThreads) +
                       threadIdx.x) / 32;
       idx < n; idx += warps) {
    const uint32_t i = static_cast<uint32_t>(idx % a.kept);
    const uint32_t h = static_cast<uint32_t>(idx / a.kept % a.heads);
    const uint32_t l = static_cast<uint32_t>(idx / a.kept / a.heads);
    uint32_t pos;
    if (i < a.sinks) {
      pos = i;
    } else if (i < a.sinks + a.segments) {
      const uint32_t begin = a.sinks + (i - a.sinks) * a.stride;
      const uint32_t limit = a.sinks + a.mid;
      const uint32_t end = limit - begin < a.stride ? limit : begin + a.stride;
      float best = 0;
      uint32_t best_t = UINT32_MAX;
      for (uint32_t t = begin + lane; t < end; t += 32) {
        const float v = Importance<Tr>(a, l, t, h, &flags);
        if (!isfinite(v) && a.scores == nullptr) flags |= kFlagNonFinite;
        if (best_t == UINT32_MAX || v > best) {
          best = v;
          best_t = t;
        }
      }
#pragma unroll
      for (int m = 16; m >= 1; m >>= 1) {
        const float ov = __shfl_xor_sync(kFullMask, best, m);
        const uint32_t ot = __shfl_xor_sync(kFullMask, best_t, m);
        const bool other = ot != UINT32_MAX &&
                           (best_t == UINT32_MAX || ov > best ||
                            (!(ov < best) && ot < best_t));
        if (other) {
          best = ov;
          best_t = ot;
        }
      }
      pos = best_t;
    } else {
      pos = a.tokens - a.kept + i;
    }
    if (lane == 0) Positions(a, l, h)[i] = static_cast<uint16_t>(pos);
  }
  ReportFlags(a.error_flags, flags);
}

template <class Tr>
__global__ void __launch_bounds__(kThreads) GatherKernel(TokenSparseArgs a) {
  using Bits = typename Tr::Bits;
  const uint32_t lane = threadIdx.x & 31;
  const uint64_t rows = static_cast<uint64_t>(a.layers) * 2 * a.heads * a.kept;
  const uint64_t warps = static_cast<uint64_t>(gridDim.x) * (kThreads / 32);
  for (uint64_t row = (blockIdx.x * static_cast<uint64_t>(kThreads) +
                       threadIdx.x) / 32;
       row < rows; row += warps) {
    const uint32_t i = static_cast<uint32_t>(row % a.kept);
    const uint32_t h = static_cast<uint32_t>(row / a.kept % a.heads);
    const int side = static_cast<int>(row / a.kept / a.heads % 2);
    const uint32_t l = static_cast<uint32_t>(row / a.kept / a.heads / 2);
    const uint32_t pos = Positions(a, l, h)[i];
    const Bits* x = static_cast<const Bits*>(a.kv) + VecIndex(a, side, l, pos, h);
    uint16_t* out =
        reinterpret_cast<uint16_t*>(a.payload + a.layer_bytes * l +
                                    2ull * a.heads * a.kept) +
        ((static_cast<uint64_t>(side) * a.heads + h) * a.kept + i) * a.dim;
    for (uint32_t e = lane; e < a.dim; e += 32) {
      out[e] = FloatToHalf(Tr::ToFloat(x[e]));
    }
  }
}

}  // namespace

cudaError_t LaunchTokenSparseEncode(const TokenSparseArgs& a,
                                    cudaStream_t st) {
  const uint64_t entries = static_cast<uint64_t>(a.layers) * a.heads * a.kept;
  const uint64_t rows = entries * 2;
  const unsigned select_blocks =
      CeilDiv(entries * 32, kThreads) < 65535 ? CeilDiv(entries * 32, kThreads)
                                              : 65535;
  const unsigned gather_blocks =
      CeilDiv(rows * 32, kThreads) < 65535 ? CeilDiv(rows * 32, kThreads)
                                           : 65535;
  DispatchDtype(a.dtype, [&](auto traits) {
    using Tr = decltype(traits);
    SelectKernel<Tr><<<select_blocks, kThreads, 0, st>>>(a);
    GatherKernel<Tr><<<gather_blocks, kThreads, 0, st>>>(a);
  });
  return cudaGetLastError();
}

}  // namespace strata::kernels::internal
