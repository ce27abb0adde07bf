// Scalar arithmetic shared by the CUDA kernels and their host-side tests:
// dtype conversions, the quant codec's group arithmetic and bit packing,
// written once so that the device code and a g++ build of the same lines can
// be compared with the CPU reference codecs (codecs/kv_tensor.cc,
// codecs/quant_codec.cc, codecs/bitpack.cc) on a machine without a GPU.
//
// Every float operation is an explicit IEEE round-to-nearest-even operation:
// __fadd_rn/__fsub_rn/__fmul_rn/__fdiv_rn on the device (never contracted
// into an FMA), plain operators on the host (the project compiles with
// -ffp-contract=off). Comparisons reproduce std::min/std::max exactly,
// including which of +0/-0 survives (the first one seen), because the sign of
// a group's minimum is stored in the payload.
//
// Not a public header: included by kernels/*.cu and tests/kernels/.
#ifndef STRATA_KERNELS_INTERNAL_NUMERIC_H_
#define STRATA_KERNELS_INTERNAL_NUMERIC_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define STRATA_HD __host__ __device__ __forceinline__
#else
#define STRATA_HD inline
#endif

namespace strata::kernels::internal {

// kvstore::DType values (kvstore/dtype.h), repeated so that device code
// needs no project headers.
inline constexpr int kDtypeF16 = 1;
inline constexpr int kDtypeBF16 = 2;
inline constexpr int kDtypeFp8E4M3 = 3;
inline constexpr int kDtypeF32 = 4;

inline constexpr float kHalfMax = 65504.0f;
inline constexpr float kBFloat16Max = 3.38953139e38f;  // bf16 0x7F7F.

STRATA_HD uint32_t FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

STRATA_HD float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

STRATA_HD float Add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
STRATA_HD float Sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
STRATA_HD float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
STRATA_HD float Div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
// Round to the nearest integer, ties to even (std::nearbyint in the default
// rounding mode).
STRATA_HD float RoundEven(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

// std::min(a, b) and std::max(a, b) with `a` the value seen first: on equal
// values (+0 == -0) the first one is kept. Both are associative, so a
// reduction that always combines an earlier range (left) with a later one
// (right) gives the sequential result.
STRATA_HD float OrderedMin(float earlier, float later) {
  return (later < earlier) ? later : earlier;
}
STRATA_HD float OrderedMax(float earlier, float later) {
  return (earlier < later) ? later : earlier;
}
// std::clamp(v, lo, hi).
STRATA_HD float Clamp(float v, float lo, float hi) {
  return (v < lo) ? lo : ((hi < v) ? hi : v);
}

// ---- Dtype conversions: the same functions as codecs/kv_tensor.cc.

STRATA_HD float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // Subnormal: normalise.
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) |
             ((mant & 0x3FF) << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return BitsToFloat(bits);
}

STRATA_HD uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // Inf or NaN.
    return static_cast<uint16_t>(sign | (abs > 0x7F800000u ? 0x7E00 : 0x7C00));
  }
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00);
  if (abs < 0x38800000u) {  // Subnormal half: units of 2^-24, nearest even.
    const float scaled = Mul(BitsToFloat(abs), 16777216.0f);  // Exact.
    const uint32_t q = static_cast<uint32_t>(RoundEven(scaled));
    return static_cast<uint16_t>(sign | q);
  }
  const uint32_t mant = abs & 0x7FFFFF;
  const uint32_t exp = (abs >> 23) - 127 + 15;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

STRATA_HD float BFloat16ToFloat(uint16_t b) {
  return BitsToFloat(static_cast<uint32_t>(b) << 16);
}

STRATA_HD uint16_t FloatToBFloat16(float f) {
  uint32_t x = FloatBits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40);
  }
  x += 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

// e4m3 "fn": bias 7, no infinities, 0x7F/0xFF NaN, max finite 448.
STRATA_HD float Fp8E4M3ToFloat(uint8_t v) {
  const uint32_t sign = (v & 0x80) ? 0x80000000u : 0u;
  const uint32_t exp = (v >> 3) & 0xF;
  const uint32_t mant = v & 0x7;
  if (exp == 0xF && mant == 0x7) return BitsToFloat(0x7FC00000u);
  if (exp == 0) {  // mant * 2^-9, exact.
    return BitsToFloat(FloatBits(Mul(static_cast<float>(mant), 0.001953125f)) |
                       sign);
  }
  return BitsToFloat(sign | ((exp - 7 + 127) << 23) | (mant << 20));
}

STRATA_HD uint8_t FloatToFp8E4M3(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7F;  // NaN.
  const uint8_t sign = (x & 0x80000000u) ? 0x80 : 0;
  const float a = BitsToFloat(x & 0x7FFFFFFFu);
  if (a >= 448.0f) return static_cast<uint8_t>(sign | 0x7E);
  if (a < 0.015625f) {  // Subnormal range, steps of 2^-9.
    return static_cast<uint8_t>(
        sign | static_cast<uint8_t>(RoundEven(Mul(a, 512.0f))));
  }
  // frexp: a = m * 2^e with m in [0.5, 1); a is a normal float here.
  const uint32_t abits = FloatBits(a);
  const int e = static_cast<int>(abits >> 23) - 126;
  const float m = BitsToFloat((abits & 0x807FFFFFu) | (126u << 23));
  int biased = e - 1 + 7;
  int mant = static_cast<int>(RoundEven(Mul(Sub(Mul(2.0f, m), 1.0f), 8.0f)));
  if (mant == 8) {
    mant = 0;
    ++biased;
  }
  if (biased > 15 || (biased == 15 && mant == 7)) {
    return static_cast<uint8_t>(sign | 0x7E);
  }
  return static_cast<uint8_t>(sign |
                              static_cast<uint8_t>((biased << 3) | mant));
}

// ---- Per-dtype element traits: the stored bits, their fp32 value, whether
// they are finite, and fp32 -> stored bits as codecs' RoundToDtype +
// KvTensorToRaw do (saturating; fp8 saturates by itself).

struct Fp16Traits {
  using Bits = uint16_t;
  static constexpr int kDtype = kDtypeF16;
  STRATA_HD static float ToFloat(Bits b) { return HalfToFloat(b); }
  STRATA_HD static bool IsFinite(Bits b) { return (b & 0x7C00) != 0x7C00; }
  STRATA_HD static Bits FromFloat(float v) {
    return FloatToHalf(Clamp(v, -kHalfMax, kHalfMax));
  }
};
struct BFloat16Traits {
  using Bits = uint16_t;
  static constexpr int kDtype = kDtypeBF16;
  STRATA_HD static float ToFloat(Bits b) { return BFloat16ToFloat(b); }
  STRATA_HD static bool IsFinite(Bits b) { return (b & 0x7F80) != 0x7F80; }
  STRATA_HD static Bits FromFloat(float v) {
    return FloatToBFloat16(Clamp(v, -kBFloat16Max, kBFloat16Max));
  }
};
struct Fp8E4M3Traits {
  using Bits = uint8_t;
  static constexpr int kDtype = kDtypeFp8E4M3;
  STRATA_HD static float ToFloat(Bits b) { return Fp8E4M3ToFloat(b); }
  STRATA_HD static bool IsFinite(Bits b) { return (b & 0x7F) != 0x7F; }
  STRATA_HD static Bits FromFloat(float v) { return FloatToFp8E4M3(v); }
};
struct Fp32Traits {
  using Bits = uint32_t;
  static constexpr int kDtype = kDtypeF32;
  STRATA_HD static float ToFloat(Bits b) { return BitsToFloat(b); }
  STRATA_HD static bool IsFinite(Bits b) {
    return (b & 0x7F800000u) != 0x7F800000u;
  }
  STRATA_HD static Bits FromFloat(float v) { return FloatBits(v); }
};

// ---- The quant codec's group arithmetic (docs/codecs/quant_aqua.md).

struct GroupRecord {
  uint16_t scale16 = 0;
  uint16_t min16 = 0;
  float scale = 0;  // float(scale16)
  float zero = 0;   // float(min16)
  // The 4 payload bytes: u16 scale | u16 min, little-endian.
  STRATA_HD uint32_t Word() const {
    return static_cast<uint32_t>(scale16) |
           (static_cast<uint32_t>(min16) << 16);
  }
};

STRATA_HD float Levels(int bits) {
  return static_cast<float>((1u << bits) - 1);
}

// The record of a group whose elements have minimum lo and maximum hi.
STRATA_HD GroupRecord MakeGroupRecord(float lo, float hi, int bits) {
  if (lo > hi) lo = hi = 0;  // Empty group (not reachable without outliers).
  GroupRecord r;
  r.min16 = FloatToHalf(lo);
  r.zero = HalfToFloat(r.min16);
  float s = Div(Sub(hi, r.zero), Levels(bits));
  if (!(s > 0)) s = 0;  // fp16(min) may round above max.
  r.scale16 = FloatToHalf(s);
  r.scale = HalfToFloat(r.scale16);
  return r;
}

STRATA_HD GroupRecord RecordFromWord(uint32_t w) {
  GroupRecord r;
  r.scale16 = static_cast<uint16_t>(w & 0xFFFF);
  r.min16 = static_cast<uint16_t>(w >> 16);
  r.scale = HalfToFloat(r.scale16);
  r.zero = HalfToFloat(r.min16);
  return r;
}

// What the CPU decoder rejects as DATA_LOSS: a non-finite or negative scale,
// or a non-finite min.
STRATA_HD bool RecordWordIsBad(uint32_t w) {
  const uint32_t hs = w & 0xFFFF, hz = w >> 16;
  return (hs & 0x7C00) == 0x7C00 || (hz & 0x7C00) == 0x7C00 ||
         (hs & 0x8000) != 0;
}

STRATA_HD uint32_t QuantizeCode(float x, float zero, float scale,
                                float levels) {
  if (!(scale > 0)) return 0;
  float q = RoundEven(Div(Sub(x, zero), scale));
  q = (q < 0.0f) ? 0.0f : q;      // std::max(q, 0.0f)
  q = (levels < q) ? levels : q;  // std::min(.., levels)
  return static_cast<uint32_t>(q);
}

STRATA_HD float DequantizeCode(uint32_t q, float zero, float scale) {
#if defined(__CUDA_ARCH__)
  // float(q) for q < 2^22 without an I2F (a conversion-pipe instruction,
  // a quarter of the FP32 rate on sm_90): the low mantissa bits of
  // 1.5 * 2^23 + q, minus 1.5 * 2^23; both steps are exact.
  const float fq = __fsub_rn(__uint_as_float(0x4B400000u | q), 12582912.0f);
#else
  const float fq = static_cast<float>(q);
#endif
  return Add(zero, Mul(fq, scale));
}

// Error-word bits, equal to kernels/kernel_errors.h's (checked there).
inline constexpr uint32_t kFlagNonFinite = 1u << 0;
inline constexpr uint32_t kFlagOutOfRange = 1u << 1;
inline constexpr uint32_t kFlagBadGroupRecord = 1u << 2;
inline constexpr uint32_t kFlagBadSink = 1u << 3;
inline constexpr uint32_t kFlagBadPageId = 1u << 4;
inline constexpr uint32_t kFlagBadIndex = 1u << 5;

// The error bits of one quantized input value.
STRATA_HD uint32_t QuantInputFlags(float x) {
  const uint32_t b = FloatBits(x);
  if ((b & 0x7F800000u) == 0x7F800000u) return kFlagNonFinite;
  return (b & 0x7FFFFFFFu) > 0x477FE000u ? kFlagOutOfRange : 0u;  // > 65504
}

// ---- RoPE: (x0, x1) <- (x0*c - x1*s, x0*s + x1*c) with separately rounded
// products, as codecs::ApplyRope.
STRATA_HD void RopeRotate(float& x0, float& x1, float c, float s) {
  const float x0c = Mul(x0, c), x1s = Mul(x1, s);
  const float x0s = Mul(x0, s), x1c = Mul(x1, c);
  x0 = Sub(x0c, x1s);
  x1 = Add(x0s, x1c);
}

// ---- Bit packing (codecs/bitpack.h: LSB-first).

// Bits [32w, 32w + 32) of the stream of `n` codes of `bits` bits each
// (codes[i] < 2^bits); bits past the last code are 0.
STRATA_HD uint32_t PackWord(const uint8_t* codes, uint32_t n, int bits,
                            uint32_t w) {
  const uint32_t first_bit = 32 * w;
  const uint32_t i0 = first_bit / bits;
  uint32_t i1 = (first_bit + 32 + bits - 1) / bits;
  if (i1 > n) i1 = n;
  uint64_t acc = 0;
  for (uint32_t i = i0; i < i1; ++i) {
    const int pos = static_cast<int>(i * bits) - static_cast<int>(first_bit);
    const uint64_t c = codes[i];
    acc |= pos >= 0 ? (c << pos) : (c >> (-pos));
  }
  return static_cast<uint32_t>(acc);
}

// Code i of a stream of `bits`-bit codes; reads only the bytes holding it.
STRATA_HD uint32_t ReadCode(const uint8_t* bytes, uint32_t i, int bits) {
  const uint32_t bit = i * bits;
  const uint32_t byte = bit >> 3;
  const int shift = static_cast<int>(bit & 7);
  uint32_t v = bytes[byte];
  if (shift + bits > 8) v |= static_cast<uint32_t>(bytes[byte + 1]) << 8;
  return (v >> shift) & ((1u << bits) - 1);
}

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_NUMERIC_H_
