// RoPE shift kernel (docs/kernels.md). The (cos, sin) table arrives in the
// kernel parameters (computed on the host with ApplyRope's double math); each
// block copies it to shared memory, then every thread rotates 4 pairs: 8
// consecutive elements (interleaved pairs) or 4 + 4 elements half a vector
// apart (neox halves).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {
namespace {

constexpr int kThreads = 256;

template <class Bits>
union Pack4 {
  uint32_t u1;
  uint2 u2;
  uint4 u4;
  Bits b[4];
};

template <class Bits>
__device__ __forceinline__ void Load4(const uint8_t* p, Bits (&out)[4]) {
  Pack4<Bits> w;
  if constexpr (sizeof(Bits) == 1) {
    w.u1 = *reinterpret_cast<const uint32_t*>(p);
  } else if constexpr (sizeof(Bits) == 2) {
    w.u2 = *reinterpret_cast<const uint2*>(p);
  } else {
    w.u4 = *reinterpret_cast<const uint4*>(p);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = w.b[i];
}

template <class Bits>
__device__ __forceinline__ void Store4(uint8_t* p, const Bits (&in)[4]) {
  Pack4<Bits> w;
#pragma unroll
  for (int i = 0; i < 4; ++i) w.b[i] = in[i];
  if constexpr (sizeof(Bits) == 1) {
    *reinterpret_cast<uint32_t*>(p) = w.u1;
  } else if constexpr (sizeof(Bits) == 2) {
    *reinterpret_cast<uint2*>(p) = w.u2;
  } else {
    *reinterpret_cast<uint4*>(p) = w.u4;
  }
}

template <class Tr>
__global__ void __launch_bounds__(kThreads)
    RopeShiftKernel(const __grid_constant__ RopeArgs a) {
  using Bits = typename Tr::Bits;
  __shared__ float cos_table[kMaxRopePairs];
  __shared__ float sin_table[kMaxRopePairs];
  const uint32_t pairs = a.head_dim / 2;
  for (uint32_t i = threadIdx.x; i < pairs; i += kThreads) {
    cos_table[i] = a.cos[i];
    sin_table[i] = a.sin[i];
  }
  __syncthreads();
  const uint32_t per_vector = a.head_dim / 8;  // Items of 4 pairs.
  const uint64_t items = a.num_vectors * per_vector;
  const uint8_t* src = static_cast<const uint8_t*>(a.src);
  uint8_t* dst = static_cast<uint8_t*>(a.dst);
  for (uint64_t item =
           blockIdx.x * static_cast<uint64_t>(kThreads) + threadIdx.x;
       item < items; item += static_cast<uint64_t>(gridDim.x) * kThreads) {
    const uint64_t vector = item / per_vector;
    const uint32_t p = static_cast<uint32_t>(item - vector * per_vector);
    const uint64_t base = vector * a.head_dim;  // Element offset.
    if (!a.neox) {
      const uint64_t off = (base + 8 * p) * sizeof(Bits);
      Bits b[8];
      Load8(src + off, b);
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        float x0 = Tr::ToFloat(b[2 * m]), x1 = Tr::ToFloat(b[2 * m + 1]);
        RopeRotate(x0, x1, cos_table[4 * p + m], sin_table[4 * p + m]);
        b[2 * m] = Tr::FromFloat(x0);
        b[2 * m + 1] = Tr::FromFloat(x1);
      }
      Store8(dst + off, b);
    } else {
      const uint64_t lo_off = (base + 4 * p) * sizeof(Bits);
      const uint64_t hi_off = (base + pairs + 4 * p) * sizeof(Bits);
      Bits lo[4], hi[4];
      Load4(src + lo_off, lo);
      Load4(src + hi_off, hi);
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        float x0 = Tr::ToFloat(lo[m]), x1 = Tr::ToFloat(hi[m]);
        RopeRotate(x0, x1, cos_table[4 * p + m], sin_table[4 * p + m]);
        lo[m] = Tr::FromFloat(x0);
        hi[m] = Tr::FromFloat(x1);
      }
      Store4(dst + lo_off, lo);
      Store4(dst + hi_off, hi);
    }
  }
}

}  // namespace

cudaError_t LaunchRopeShift(const RopeArgs& a, cudaStream_t stream) {
  const uint64_t items = a.num_vectors * (a.head_dim / 8);
  const uint64_t want = (items + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(want < 4096 ? want : 4096);
  DispatchDtype(a.dtype, [&](auto traits) {
    RopeShiftKernel<decltype(traits)><<<blocks, kThreads, 0, stream>>>(a);
  });
  return cudaGetLastError();
}

}  // namespace strata::kernels::internal
