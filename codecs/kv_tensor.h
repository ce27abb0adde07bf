// KvTensor: the fp32 working form of a block's KV, for the CPU reference
// codecs. Layout [2][layers][tokens][kv_heads][head_dim], K (kv = 0) before
// V (kv = 1), row-major, exactly like a raw block's payload.
//
// Element conversions between the block dtypes and fp32 are exact where the
// target can represent the value and round to nearest, ties to even,
// otherwise (fp8 e4m3: saturating to ±448, no infinities, NaN kept).
//
// Thread safety: plain values; conversion functions are pure.
#ifndef STRATA_CODECS_KV_TENSOR_H_
#define STRATA_CODECS_KV_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvstore/block_format.h"

namespace strata::codecs {

using kvstore::BlockShape;
using kvstore::DType;

struct KvTensor {
  // `shape.dtype` is the dtype of the cache the tensor came from (and the
  // dtype a decode converts back to); `data` is always fp32.
  BlockShape shape;
  std::vector<float> data;  // shape.ElementCount() values.

  // A zero tensor of `shape`. The shape must be valid.
  static KvTensor Zeros(const BlockShape& shape);

  size_t Index(int kv, uint32_t layer, uint32_t token, uint32_t head,
               uint32_t dim) const {
    return ((((static_cast<size_t>(kv) * shape.num_layers + layer) *
                  shape.num_tokens + token) * shape.num_kv_heads + head) *
            shape.head_dim) + dim;
  }
  float& at(int kv, uint32_t layer, uint32_t token, uint32_t head,
            uint32_t dim) {
    return data[Index(kv, layer, token, head, dim)];
  }
  float at(int kv, uint32_t layer, uint32_t token, uint32_t head,
           uint32_t dim) const {
    return data[Index(kv, layer, token, head, dim)];
  }
  // The head_dim vector of one (kv, layer, token, head).
  float* vec(int kv, uint32_t layer, uint32_t token, uint32_t head) {
    return &data[Index(kv, layer, token, head, 0)];
  }
  const float* vec(int kv, uint32_t layer, uint32_t token,
                   uint32_t head) const {
    return &data[Index(kv, layer, token, head, 0)];
  }
};

// Scalar conversions.
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToBFloat16(float f);
float Fp8E4M3ToFloat(uint8_t v);
uint8_t FloatToFp8E4M3(float f);

// Rounds v to `dtype` (saturating at its largest finite value) and back:
// what an engine cache of that dtype holds. Decoders apply it to every value.
float RoundToDtype(float v, DType dtype);

// A raw payload (shape.RawBytes() bytes in shape.dtype) as fp32.
// INVALID_ARGUMENT naming "payload" when the size does not match.
absl::StatusOr<KvTensor> KvTensorFromRaw(const BlockShape& shape,
                                         absl::Span<const uint8_t> payload);
// fp32 → shape.dtype bytes (round to nearest even).
std::vector<uint8_t> KvTensorToRaw(const KvTensor& kv);

// ||a - b||² / ||a||² over all elements (0 when a is all zero and a == b).
double RelativeMse(absl::Span<const float> reference,
                   absl::Span<const float> approx);

}  // namespace strata::codecs

#endif  // STRATA_CODECS_KV_TENSOR_H_
