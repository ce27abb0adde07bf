// Internal: the little-endian u16 fields and the finiteness check that the
// profile-based CPU reference codecs (lowrank_codec.cc, sparse_codec.cc)
// share. Pure functions; the pointers must cover two bytes.
#ifndef STRATA_CODECS_INTERNAL_BYTES_H_
#define STRATA_CODECS_INTERNAL_BYTES_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/types/span.h"

namespace strata::codecs::internal {

inline uint16_t LoadU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

inline void StoreU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

// True when no value is NaN or infinite.
inline bool AllFinite(absl::Span<const float> v) {
  return std::all_of(v.begin(), v.end(),
                     [](float x) { return std::isfinite(x); });
}

}  // namespace strata::codecs::internal

#endif  // STRATA_CODECS_INTERNAL_BYTES_H_
