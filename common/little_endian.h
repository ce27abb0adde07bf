// Little-endian scalar access for packed formats (block headers, codec
// payloads, profiles). Unaligned-safe (memcpy); Strata's formats are
// little-endian and the build asserts a little-endian host.
#ifndef STRATA_COMMON_LITTLE_ENDIAN_H_
#define STRATA_COMMON_LITTLE_ENDIAN_H_

#include <bit>
#include <cstdint>
#include <cstring>
#include <vector>

namespace strata {

static_assert(std::endian::native == std::endian::little,
              "Strata's formats are little-endian; add byte swaps to port");

template <typename T>
T LoadLE(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void StoreLE(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

template <typename T>
void AppendLE(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}

}  // namespace strata

#endif  // STRATA_COMMON_LITTLE_ENDIAN_H_
