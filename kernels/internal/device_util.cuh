// Device-side helpers shared by the kernels: 8-element vector loads and
// stores of any dtype, dtype dispatch, error-flag reporting, warp reductions.
//
// Not a public header; nvcc only.
#ifndef STRATA_KERNELS_INTERNAL_DEVICE_UTIL_CUH_
#define STRATA_KERNELS_INTERNAL_DEVICE_UTIL_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {

inline constexpr unsigned kFullMask = 0xFFFFFFFFu;

// 8 consecutive elements (8, 16 or 32 bytes), from an address aligned to
// their size (at least 8 bytes).
template <class Bits>
union Pack8 {
  uint2 u2;
  uint4 u4[2];
  Bits b[8];
};

template <class Bits>
__device__ __forceinline__ void Load8(const uint8_t* p, Bits (&out)[8]) {
  Pack8<Bits> w;
  if constexpr (sizeof(Bits) == 1) {
    w.u2 = *reinterpret_cast<const uint2*>(p);
  } else if constexpr (sizeof(Bits) == 2) {
    w.u4[0] = *reinterpret_cast<const uint4*>(p);
  } else {
    w.u4[0] = reinterpret_cast<const uint4*>(p)[0];
    w.u4[1] = reinterpret_cast<const uint4*>(p)[1];
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = w.b[i];
}

template <class Bits>
__device__ __forceinline__ void Store8(uint8_t* p, const Bits (&in)[8]) {
  Pack8<Bits> w;
#pragma unroll
  for (int i = 0; i < 8; ++i) w.b[i] = in[i];
  if constexpr (sizeof(Bits) == 1) {
    *reinterpret_cast<uint2*>(p) = w.u2;
  } else if constexpr (sizeof(Bits) == 2) {
    *reinterpret_cast<uint4*>(p) = w.u4[0];
  } else {
    reinterpret_cast<uint4*>(p)[0] = w.u4[0];
    reinterpret_cast<uint4*>(p)[1] = w.u4[1];
  }
}

// Writes the low n bytes (n = 2, 3, 4 or 8: the packed codes of 8 elements
// at `bits` = n) of v at p, which is aligned to n when n is 2 or 4 and to 4
// when n is 8.
__device__ __forceinline__ void StorePackedCodes(uint8_t* p, uint64_t v,
                                                 int n) {
  switch (n) {
    case 2:
      *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(v);
      return;
    case 4:
      *reinterpret_cast<uint32_t*>(p) = static_cast<uint32_t>(v);
      return;
    case 8:
      reinterpret_cast<uint32_t*>(p)[0] = static_cast<uint32_t>(v);
      reinterpret_cast<uint32_t*>(p)[1] = static_cast<uint32_t>(v >> 32);
      return;
    default:
      for (int i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
  }
}

// Reads what StorePackedCodes wrote.
__device__ __forceinline__ uint64_t LoadPackedCodes(const uint8_t* p, int n) {
  switch (n) {
    case 2:
      return *reinterpret_cast<const uint16_t*>(p);
    case 4:
      return *reinterpret_cast<const uint32_t*>(p);
    case 8:
      return static_cast<uint64_t>(reinterpret_cast<const uint32_t*>(p)[0]) |
             (static_cast<uint64_t>(reinterpret_cast<const uint32_t*>(p)[1])
              << 32);
    default: {
      uint64_t v = 0;
      for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
      return v;
    }
  }
}

__device__ __forceinline__ void ReportFlags(uint32_t* error_flags,
                                            uint32_t flags) {
  if (flags != 0 && error_flags != nullptr) atomicOr(error_flags, flags);
}

// Calls f(Traits{}) with the traits of a kvstore::DType value.
template <class F>
__host__ __forceinline__ void DispatchDtype(int dtype, F&& f) {
  switch (dtype) {
    case kDtypeF16:
      f(Fp16Traits{});
      return;
    case kDtypeBF16:
      f(BFloat16Traits{});
      return;
    case kDtypeFp8E4M3:
      f(Fp8E4M3Traits{});
      return;
    default:
      f(Fp32Traits{});
      return;
  }
}

inline unsigned CeilDiv(uint64_t a, uint64_t b) {
  return static_cast<unsigned>((a + b - 1) / b);
}

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_DEVICE_UTIL_CUH_
