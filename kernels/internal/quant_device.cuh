// Device helpers of the quant kernels (kernels/quant_kernels.cu): element
// traits with hardware fp16 conversions, the encode-side group record and
// code arithmetic (the same bits as numeric.h's, argued below), input-check
// folding, and the raw/payload slab offsets.
//
// Not a public header; nvcc only.
#ifndef STRATA_KERNELS_INTERNAL_QUANT_DEVICE_CUH_
#define STRATA_KERNELS_INTERNAL_QUANT_DEVICE_CUH_

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {

// Device element traits: numeric.h's, except that fp16 <-> fp32 uses the
// hardware conversions (one instruction instead of ~10-20 integer ones per
// element). They give the same bits as HalfToFloat / FloatToHalf on every
// value the kernels can act on:
//   - fp16 -> fp32 (cvt.f32.f16, no ftz) is exact for every finite value,
//     subnormals included, and maps inf to inf and NaN to a NaN; a
//     non-finite input sets kFlagNonFinite either way (QuantInputFlags looks
//     only at the exponent), after which the output is unspecified;
//   - fp32 -> fp16 (cvt.rn.f16.f32, no ftz) rounds to nearest even like
//     FloatToHalf, subnormal results and signed zeros included; FromFloat
//     clamps to +-65504 first, so it never overflows, and decode never
//     produces a NaN (zero and scale come from finite records, q < 256).
// Group records use the hardware conversions too: MakeGroupRecordHw
// (encode) and RecordFromWordHw (decode), both below.
// Calls f(std::integral_constant<int, bits>{}) for bits in {2, 3, 4, 8}
// (any other value dispatches as 8; the params checks reject them).
template <class F>
__host__ __forceinline__ void DispatchBits(int bits, F&& f) {
  switch (bits) {
    case 2:
      f(std::integral_constant<int, 2>{});
      return;
    case 3:
      f(std::integral_constant<int, 3>{});
      return;
    case 4:
      f(std::integral_constant<int, 4>{});
      return;
    default:
      f(std::integral_constant<int, 8>{});
      return;
  }
}

template <class Tr>
struct DeviceTraits : Tr {};

template <>
struct DeviceTraits<Fp16Traits> : Fp16Traits {
  __device__ __forceinline__ static float ToFloat(Bits b) {
    return __half2float(__ushort_as_half(b));
  }
  __device__ __forceinline__ static Bits FromFloat(float v) {
    return __half_as_ushort(__float2half_rn(Clamp(v, -kHalfMax, kHalfMax)));
  }
};

// numeric.h's RecordFromWord with the hardware fp16 -> fp32 conversion,
// exact for every finite half, subnormals included (a record holding inf or
// NaN is flagged by RecordWordIsBad, and the output is then unspecified).
__device__ __forceinline__ GroupRecord RecordFromWordHw(uint32_t w) {
  GroupRecord r;
  r.scale16 = static_cast<uint16_t>(w & 0xFFFF);
  r.min16 = static_cast<uint16_t>(w >> 16);
  r.scale = __half2float(__ushort_as_half(r.scale16));
  r.zero = __half2float(__ushort_as_half(r.min16));
  return r;
}

// fp16 FromFloat of two values, packed (lo in the low half): converts both
// at once (cvt.rn.f16x2.f32) and clamps in fp16. Rounding first gives the
// same halves as FromFloat's clamp to +-65504 first: values in (65504,
// 65520) round to 65504, larger ones to inf, which the clamp brings back;
// NaN stays NaN.
__device__ __forceinline__ uint32_t PackHalf2Clamped(float lo, float hi) {
  const __half2 lim = __half2half2(__ushort_as_half(0x7BFF));  // 65504.
  const __half2 h = __hmax2_nan(__hmin2_nan(__floats2half2_rn(lo, hi), lim),
                                __hneg2(lim));
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Stores 8 decoded values in the dtype (Tr::FromFloat each), at an address
// aligned to their size; fp16 two at a time (PackHalf2Clamped).
template <class Tr>
__device__ __forceinline__ void StoreValues8(uint8_t* p, const float (&v)[8]) {
  if constexpr (std::is_same_v<Tr, DeviceTraits<Fp16Traits>>) {
    uint4 out;
    uint32_t* w = &out.x;
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = PackHalf2Clamped(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = out;
  } else {
    typename Tr::Bits b[8];
#pragma unroll
    for (int m = 0; m < 8; ++m) b[m] = Tr::FromFloat(v[m]);
    Store8(p, b);
  }
}

// fp16 output of 8 two-bit codes (bits 2m..2m+1 of `codes`) of one group:
// the 4 halves the group can decode to are computed once (PackHalf2Clamped,
// as StoreValues8, so the same bytes) and each
// output pair is a byte permutation of that 8-byte table: selector nibbles
// 2c0, 2c0+1, 2c1, 2c1+1 for codes c0, c1.
__device__ __forceinline__ void StoreFp16By2BitTable(uint8_t* p,
                                                     uint32_t codes,
                                                     const GroupRecord& r) {
  uint32_t table[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    table[i] = PackHalf2Clamped(DequantizeCode(2 * i, r.zero, r.scale),
                                DequantizeCode(2 * i + 1, r.zero, r.scale));
  }
  uint4 out;
  uint32_t* w = &out.x;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t y = codes >> (4 * i);
    const uint32_t spread = (y & 3u) | ((y << 6) & 0x300u);  // c0 | c1 << 8
    w[i] = __byte_perm(table[0], table[1], spread * 0x22u + 0x1010u);
  }
  *reinterpret_cast<uint4*>(p) = out;
}

// numeric.h's MakeGroupRecord with the hardware fp16 conversions: the same
// bits for every finite lo/hi (cvt.rn.f16.f32 rounds to nearest even and
// overflows to inf exactly where FloatToHalf saturates, at |x| >= 65520);
// non-finite or out-of-range inputs are flagged, and the output is then
// unspecified anyway.
__device__ __forceinline__ GroupRecord MakeGroupRecordHw(float lo, float hi,
                                                         int bits) {
  if (lo > hi) lo = hi = 0;
  GroupRecord r;
  r.min16 = __half_as_ushort(__float2half_rn(lo));
  r.zero = __half2float(__ushort_as_half(r.min16));
  float s = Div(Sub(hi, r.zero), Levels(bits));
  if (!(s > 0)) s = 0;
  r.scale16 = __half_as_ushort(__float2half_rn(s));
  r.scale = __half2float(__ushort_as_half(r.scale16));
  return r;
}

// The reciprocal QuantizeCodeInv multiplies by: 1/scale rounded to nearest
// (0.5 ulp), or 0 for a zero scale (every code is then 0, as QuantizeCode).
__device__ __forceinline__ float QuantInverse(float scale) {
  return scale > 0 ? __frcp_rn(scale) : 0.0f;
}

// numeric.h's QuantizeCode, clamp(rint((x - zero) / scale), 0, levels),
// without a division per element. d = (x - zero) * inv, inv = 1/scale
// rounded to nearest, is within about 1 ulp of the true quotient t (two
// roundings of 2^-24 relative each), and the CPU's IEEE quotient within 0.5
// ulp, so for |d| < 1024 the two differ by < 2.5 * 2^-13 < 2^-10. rint can
// differ only if a half-integer lies between them: when d is at least 2^-10
// from both half-integers around it (0.5 - |d - rint(d)| >= 2^-10) both
// round to the same integer; otherwise (about 0.2% of codes), or for a
// non-finite or huge quotient, QuantizeCode itself decides. Same codes as
// the CPU for every input (QuantGpuTest checks the bytes). Returns the fast
// code; *slow says QuantizeCode must decide instead.
__device__ __forceinline__ uint32_t QuantizeCodeInv(float x, float zero,
                                                    float inv, float levels,
                                                    bool* slow) {
  const float d = __fmul_rn(Sub(x, zero), inv);
  const float q = rintf(d);
  *slow = !(fabsf(d) < 1024.0f) ||
          __fsub_rn(0.5f, fabsf(__fsub_rn(d, q))) < 0.0009765625f;
  return static_cast<uint32_t>(fminf(fmaxf(q, 0.0f), levels));
}

// Input checks folded into one running maximum of |x|'s bits: non-finite
// when it reaches the exponent of inf, else out of range above 65504. When
// both kinds occur only kFlagNonFinite is reported (the status
// ErrorFlagsToStatus gives is the same: non-finite wins).
__device__ __forceinline__ uint32_t AbsBits(float x) {
  return __float_as_uint(x) & 0x7FFFFFFFu;
}
__device__ __forceinline__ uint32_t FlagsOfAbsMax(uint32_t amax) {
  return amax >= 0x7F800000u ? kFlagNonFinite
                             : (amax > 0x477FE000u ? kFlagOutOfRange : 0u);
}

__device__ __forceinline__ uint64_t RawSlabOffset(const QuantArgs& a, int side,
                                                  uint32_t layer) {
  // Element offset of token 0 of (side, layer) in the raw block.
  const uint32_t raw_layers = a.raw_layers != 0 ? a.raw_layers : a.layers;
  return ((static_cast<uint64_t>(side) * raw_layers + layer) * a.tokens) * a.hd;
}

__device__ __forceinline__ uint64_t PayloadSlabOffset(const QuantArgs& a,
                                                      int side,
                                                      uint32_t layer) {
  return a.side[side].side_offset + layer * a.side[side].slab_bytes;
}

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_QUANT_DEVICE_CUH_
