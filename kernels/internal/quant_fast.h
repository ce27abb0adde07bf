// The arithmetic of the fp16 fast-path quant encoder
// (kernels/quant_encode_fp16.cu), written once for the device and for a g++
// build, so that host tests can prove it gives the CPU codec's bytes
// (codecs/quant_codec.cc) on a machine without a GPU.
//
// Two shortcuts over numeric.h's QuantizeCode, both exact:
//
// 1. Codes without a division or a float->int conversion. For a group of
//    fp16 values, zero = fp16(min) equals the minimum itself, so every
//    element has x - zero >= 0 and d = (x - zero) * inv (inv = 1/scale
//    rounded to nearest) is >= 0. Clamp d to `levels` (rint commutes with a
//    clamp to integer bounds), then m = d + 1.5 * 2^23 rounds d to the
//    nearest integer, ties to even, in one FP32 add: m's low mantissa bits
//    are the code (FloatBits(m) - FloatBits(kRoundMagic)).
// 2. When the CPU's IEEE quotient t_cpu = fl((x - zero) / scale) rounds to
//    the same integer. For t < 256: |d - t| < t * 2^-23 < 2^-15 (two
//    roundings of 2^-24 relative each) and |t_cpu - t| <= ulp(t) / 2 <=
//    2^-17, so |d - t_cpu| < 2^-14. If d is at least 2^-14 away from every
//    half-integer, t_cpu rounds like d; otherwise (about 0.012% of codes)
//    FastCode sets *near and the caller asks QuantizeCode. For t >= 256 >
//    levels + 1/2, both clamp to `levels`.
//
// The group minimum's sign: the CPU keeps the first of equal values, so a
// group whose minimum is zero stores the sign of its first zero. The
// encoder reduces with unordered fp16 min/max (any zero may win) and then
// asks FirstZeroSign16 when the minimum is zero. The sign changes only the
// stored min16: x - (+0) and x - (-0) are the same for every x that is not
// a zero, and give a zero (code 0) for one that is.
//
// Not a public header: included by kernels/*.cu and tests/kernels/.
#ifndef STRATA_KERNELS_INTERNAL_QUANT_FAST_H_
#define STRATA_KERNELS_INTERNAL_QUANT_FAST_H_

#include <cmath>
#include <cstdint>

#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {

// 1.5 * 2^23: adding it to a float in [0, 2^22) rounds to an integer, ties
// to even, and leaves that integer in the low mantissa bits.
inline constexpr float kRoundMagic = 12582912.0f;
inline constexpr uint32_t kRoundMagicBits = 0x4B400000u;
// |d - rint(d)| at or above this (0.5 - 2^-14) means d is too close to a
// half-integer for the fast code to be trusted.
inline constexpr float kNearHalf = 0.49993896484375f;

// The fast code of x: returns m with FloatBits(m) = kRoundMagicBits + code,
// and sets *near when QuantizeCode(x, zero, scale, levels) must decide
// instead. Requires x >= zero or a non-finite x (flagged by the caller).
STRATA_HD float FastCodeMagic(float x, float zero, float inv, float levels,
                              bool* near) {
  float d = Mul(Sub(x, zero), inv);
  d = fminf(d, levels);  // NaN (flagged input) becomes `levels`.
  const float m = Add(d, kRoundMagic);
  const float frac = Sub(d, Sub(m, kRoundMagic));
  *near = !(fabsf(frac) < kNearHalf);
  return m;
}

// The code FastCodeMagic stands for, or QuantizeCode's when it is near.
STRATA_HD uint32_t FastOrExactCode(float x, float zero, float inv, float scale,
                                   float levels) {
  bool near;
  const float m = FastCodeMagic(x, zero, inv, levels, &near);
  if (near) return QuantizeCode(x, zero, scale, levels);
  return FloatBits(m) - kRoundMagicBits;
}

// Packing by addition: a word of n codes of `bits` each is the sum of
// FloatBits(m_k) << (k * bits) minus this constant (mod 2^32), because each
// term is (kRoundMagicBits + code_k) << (k * bits).
STRATA_HD constexpr uint32_t MagicPackBias(int bits, int n) {
  uint32_t bias = 0;
  for (int k = 0; k < n; ++k) bias += kRoundMagicBits << (k * bits);
  return bias;
}

// The sign bit (0x8000 or 0) of the first fp16 zero among n elements read
// by at(i) in group order; 0 if there is none.
template <class At>
STRATA_HD uint16_t FirstZeroSign16(int n, At at) {
  for (int i = 0; i < n; ++i) {
    const uint16_t h = at(i);
    if ((h & 0x7FFF) == 0) return static_cast<uint16_t>(h & 0x8000);
  }
  return 0;
}

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_QUANT_FAST_H_
