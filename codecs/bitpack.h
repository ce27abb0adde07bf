// Bit packing of fixed-width unsigned codes, shared by the quantizing codecs
// (quant, aqua) and their outlier index lists. The CUDA kernels must produce
// and read exactly these bytes.
//
// Bit order (LSB-first, little-endian; docs/codecs/quant_aqua.md): a packed
// stream is a sequence of bits where stream bit k is bit (k mod 8) -- the bit
// of value 2^(k mod 8) -- of byte floor(k / 8). Value i of width w, written at
// `bit_offset`, occupies stream bits [bit_offset + i*w, bit_offset + (i+1)*w),
// its bit j (value 2^j) at stream bit bit_offset + i*w + j. A value may
// straddle bytes (3-bit codes do: code 2 is bits 6-7 of byte 0 and bit 0 of
// byte 1). Example: 3-bit codes 1,2,3,4,5,6,7,0 pack to D1 58 1F.
//
// Thread safety: pure functions.
#ifndef STRATA_CODECS_BITPACK_H_
#define STRATA_CODECS_BITPACK_H_

#include <cstdint>

#include "absl/types/span.h"

namespace strata::codecs {

inline constexpr int kMaxPackWidth = 32;

// Bytes that hold `count` values of `width` bits starting at bit 0.
constexpr uint64_t PackedBytes(uint64_t count, int width) {
  return (count * static_cast<uint64_t>(width) + 7) / 8;
}

// Number of bits needed to write any value in [0, n), at least 1.
int IndexWidth(uint64_t n);

// Writes `values` at `bit_offset` of `out`, leaving every other bit of `out`
// unchanged. False (and nothing written) when width is outside [1, 32], a
// value does not fit in `width` bits, or `out` is too short.
[[nodiscard]] bool PackBits(absl::Span<const uint32_t> values, int width,
                            uint64_t bit_offset, absl::Span<uint8_t> out);

// Reads out.size() values of `width` bits starting at `bit_offset`. False
// (and `out` unspecified) when width is outside [1, 32] or `in` is too short.
[[nodiscard]] bool UnpackBits(absl::Span<const uint8_t> in, int width,
                              uint64_t bit_offset, absl::Span<uint32_t> out);

// One value; false when width is outside [1, 32] or `in` is too short.
[[nodiscard]] bool ReadBits(absl::Span<const uint8_t> in, int width,
                            uint64_t bit_offset, uint32_t* value);

}  // namespace strata::codecs

#endif  // STRATA_CODECS_BITPACK_H_
