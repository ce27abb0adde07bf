#include "codecs/bitpack.h"

namespace strata::codecs {
namespace {

bool Fits(uint64_t bytes, int width, uint64_t bit_offset, uint64_t count) {
  if (width < 1 || width > kMaxPackWidth) return false;
  // bytes * 8 cannot overflow: spans are far below 2^61 bytes.
  const uint64_t bits = bytes * 8;
  if (bit_offset > bits) return false;
  return count <= (bits - bit_offset) / static_cast<uint64_t>(width);
}

// The w-bit value at stream bit `pos`; the caller has checked the bounds.
uint32_t Extract(const uint8_t* p, uint64_t pos, int w) {
  const uint64_t byte = pos >> 3;
  const int shift = static_cast<int>(pos & 7);
  const int need = (shift + w + 7) / 8;  // At most 5 bytes.
  uint64_t acc = 0;
  for (int i = 0; i < need; ++i) {
    acc |= static_cast<uint64_t>(p[byte + i]) << (8 * i);
  }
  return static_cast<uint32_t>((acc >> shift) & ((uint64_t{1} << w) - 1));
}

}  // namespace

int IndexWidth(uint64_t n) {
  int w = 1;
  while (w < 64 && (uint64_t{1} << w) < n) ++w;
  return w;
}

bool PackBits(absl::Span<const uint32_t> values, int width, uint64_t bit_offset,
              absl::Span<uint8_t> out) {
  if (!Fits(out.size(), width, bit_offset, values.size())) return false;
  const uint64_t mask = (uint64_t{1} << width) - 1;
  for (uint32_t v : values) {
    if (v > mask) return false;
  }
  uint8_t* p = out.data();
  uint64_t pos = bit_offset;
  for (uint32_t v : values) {
    const uint64_t byte = pos >> 3;
    const int shift = static_cast<int>(pos & 7);
    const uint64_t bits = static_cast<uint64_t>(v) << shift;
    const uint64_t keep = ~(mask << shift);
    const int need = (shift + width + 7) / 8;
    for (int i = 0; i < need; ++i) {
      const int s = 8 * i;
      p[byte + i] = static_cast<uint8_t>((p[byte + i] & (keep >> s)) |
                                         ((bits >> s) & 0xFF));
    }
    pos += static_cast<uint64_t>(width);
  }
  return true;
}

bool UnpackBits(absl::Span<const uint8_t> in, int width, uint64_t bit_offset,
                absl::Span<uint32_t> out) {
  if (!Fits(in.size(), width, bit_offset, out.size())) return false;
  uint64_t pos = bit_offset;
  for (uint32_t& v : out) {
    v = Extract(in.data(), pos, width);
    pos += static_cast<uint64_t>(width);
  }
  return true;
}

bool ReadBits(absl::Span<const uint8_t> in, int width, uint64_t bit_offset,
              uint32_t* value) {
  if (!Fits(in.size(), width, bit_offset, 1)) return false;
  *value = Extract(in.data(), bit_offset, width);
  return true;
}

}  // namespace strata::codecs
