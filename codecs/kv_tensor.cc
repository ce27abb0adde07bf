#include "codecs/kv_tensor.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace strata::codecs {

KvTensor KvTensor::Zeros(const BlockShape& shape) {
  KvTensor t;
  t.shape = shape;
  t.data.assign(shape.ElementCount(), 0.0f);
  return t;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
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
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t FloatToHalf(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7FFFFFFF;
  if (abs >= 0x7F800000) {  // Inf or NaN.
    return sign | (abs > 0x7F800000 ? 0x7E00 : 0x7C00);
  }
  if (abs >= 0x477FF000) return sign | 0x7C00;  // Rounds to >= 65520: inf.
  if (abs < 0x38800000) {  // Below the smallest normal half: subnormal.
    // Value in units of 2^-24, rounded to nearest even.
    const float a = std::bit_cast<float>(abs);
    const float scaled = a * 16777216.0f;  // 2^24; exact.
    const uint32_t q = static_cast<uint32_t>(std::nearbyint(scaled));
    return sign | static_cast<uint16_t>(q);
  }
  const uint32_t mant = abs & 0x7FFFFF;
  const uint32_t exp = (abs >> 23) - 127 + 15;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // Carry is correct.
  return sign | static_cast<uint16_t>(h);
}

float BFloat16ToFloat(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

uint16_t FloatToBFloat16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  x += 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

// e4m3 "fn" (as in CUDA __nv_fp8_e4m3): bias 7, no infinities, 0x7F/0xFF NaN,
// max finite 448.
float Fp8E4M3ToFloat(uint8_t v) {
  const float sign = (v & 0x80) ? -1.0f : 1.0f;
  const int exp = (v >> 3) & 0xF;
  const int mant = v & 0x7;
  if (exp == 0xF && mant == 0x7) return std::nanf("");
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -9);
  return sign * std::ldexp(1.0f + mant / 8.0f, exp - 7);
}

uint8_t FloatToFp8E4M3(float f) {
  if (std::isnan(f)) return 0x7F;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7E;  // Saturate (no infinities).
  if (a < 0.015625f) {
    // Subnormal range, steps of 2^-9; 8 steps is the smallest normal (0x08).
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  }
  int e;
  const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1).
  int biased = e - 1 + 7;
  // Mantissa in eighths, round to nearest even (nearbyint's default mode).
  int mant = static_cast<int>(std::nearbyint((2.0f * m - 1.0f) * 8.0f));
  if (mant == 8) {
    mant = 0;
    ++biased;
  }
  if (biased > 15 || (biased == 15 && mant == 7)) return sign | 0x7E;
  return sign | static_cast<uint8_t>((biased << 3) | mant);
}

float RoundToDtype(float v, DType dtype) {
  constexpr float kHalfMax = 65504.0f;
  constexpr float kBFloat16Max = 3.38953139e38f;  // bf16 0x7F7F.
  switch (dtype) {
    case DType::kFloat16:
      return HalfToFloat(FloatToHalf(std::clamp(v, -kHalfMax, kHalfMax)));
    case DType::kBFloat16:
      return BFloat16ToFloat(
          FloatToBFloat16(std::clamp(v, -kBFloat16Max, kBFloat16Max)));
    case DType::kFloat8E4M3:
      return Fp8E4M3ToFloat(FloatToFp8E4M3(v));
    case DType::kFloat32:
      return v;
  }
  return v;
}

absl::StatusOr<KvTensor> KvTensorFromRaw(const BlockShape& shape,
                                         absl::Span<const uint8_t> payload) {
  if (auto s = shape.Validate(); !s.ok()) return s;
  if (payload.size() != shape.RawBytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload: ", payload.size(), " bytes, shape needs ", shape.RawBytes()));
  }
  KvTensor t = KvTensor::Zeros(shape);
  const uint8_t* p = payload.data();
  for (size_t i = 0; i < t.data.size(); ++i) {
    switch (shape.dtype) {
      case DType::kFloat16: {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        t.data[i] = HalfToFloat(h);
        break;
      }
      case DType::kBFloat16: {
        uint16_t b;
        std::memcpy(&b, p + 2 * i, 2);
        t.data[i] = BFloat16ToFloat(b);
        break;
      }
      case DType::kFloat8E4M3:
        t.data[i] = Fp8E4M3ToFloat(p[i]);
        break;
      case DType::kFloat32:
        std::memcpy(&t.data[i], p + 4 * i, 4);
        break;
    }
  }
  return t;
}

std::vector<uint8_t> KvTensorToRaw(const KvTensor& kv) {
  std::vector<uint8_t> out(kv.shape.RawBytes());
  uint8_t* p = out.data();
  for (size_t i = 0; i < kv.data.size(); ++i) {
    switch (kv.shape.dtype) {
      case DType::kFloat16: {
        const uint16_t h = FloatToHalf(kv.data[i]);
        std::memcpy(p + 2 * i, &h, 2);
        break;
      }
      case DType::kBFloat16: {
        const uint16_t b = FloatToBFloat16(kv.data[i]);
        std::memcpy(p + 2 * i, &b, 2);
        break;
      }
      case DType::kFloat8E4M3:
        p[i] = FloatToFp8E4M3(kv.data[i]);
        break;
      case DType::kFloat32:
        std::memcpy(p + 4 * i, &kv.data[i], 4);
        break;
    }
  }
  return out;
}

double RelativeMse(absl::Span<const float> reference,
                   absl::Span<const float> approx) {
  double num = 0, den = 0;
  for (size_t i = 0; i < reference.size(); ++i) {
    const double d = static_cast<double>(reference[i]) - approx[i];
    num += d * d;
    den += static_cast<double>(reference[i]) * reference[i];
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return num / den;
}

}  // namespace strata::codecs
