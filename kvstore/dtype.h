// Element types of KV tensors. The numeric values are part of the block
// format (docs/format.md) and the key derivation (docs/keys.md): never
// renumber, only append.
#ifndef STRATA_KVSTORE_DTYPE_H_
#define STRATA_KVSTORE_DTYPE_H_

#include <cstddef>
#include <cstdint>

namespace strata::kvstore {

enum class DType : uint8_t {
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat8E4M3 = 3,
  kFloat32 = 4,
};

// Bytes per element; 0 for a value that is not a DType.
constexpr size_t DTypeSize(DType d) {
  switch (d) {
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat8E4M3:
      return 1;
    case DType::kFloat32:
      return 4;
  }
  return 0;
}

constexpr bool IsValidDType(uint8_t raw) { return raw >= 1 && raw <= 4; }

// A C string because Debian's Abseil has its own absl::string_view.
constexpr const char* DTypeName(DType d) {
  switch (d) {
    case DType::kFloat16:
      return "fp16";
    case DType::kBFloat16:
      return "bf16";
    case DType::kFloat8E4M3:
      return "fp8_e4m3";
    case DType::kFloat32:
      return "fp32";
  }
  return "invalid";
}

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_DTYPE_H_
