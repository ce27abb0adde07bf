// The quant codec (CodecId::kQuant): KIVI-style asymmetric min-max
// round-to-nearest quantization with KVQuant-style options.
//
// Keys are quantized per channel (a group is G consecutive tokens of one
// channel of one head), values per token (a group is G consecutive channels
// of one token of one head). Each group stores its scale s = (max-min)/(2^B-1)
// and its minimum as fp16; codes are q = clamp(round((x - min) / s)) computed
// from the fp16-rounded s and min, so decode is min + q*s exactly. Options:
// the first `n_sink` tokens kept in the block dtype, and the largest-|x|
// elements of each (K/V, layer, head) kept in the block dtype in a sparse
// side list (the groups' min/max are computed without them). Params and
// payload layouts: docs/codecs/quant_aqua.md.
//
// Thread safety: plain values and pure functions.
#ifndef STRATA_CODECS_QUANT_CODEC_H_
#define STRATA_CODECS_QUANT_CODEC_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codecs/codec.h"

namespace strata::codecs {

// The quant codec's codec_params (32 bytes, version 1):
//   [0] version = 1 | [1] k_bits | [2] v_bits | [3] k_group | [4] v_group |
//   [5] flags (bit 0: keys_per_token; other bits 0) | [6,8) n_sink u16 LE |
//   [8,10) outlier_bp u16 LE | [10,32) zero.
struct QuantParams {
  static constexpr uint8_t kVersion = 1;

  uint8_t k_bits = 2;  // 2, 3, 4 or 8.
  uint8_t v_bits = 2;
  uint8_t k_group = 32;  // 32, 64 or 128.
  uint8_t v_group = 32;  // Must divide head_dim.
  // Keys grouped per token like values (k_group must then divide head_dim).
  // Worse than per channel on real keys; kept for comparisons.
  bool keys_per_token = false;
  // The first n_sink tokens (<= num_tokens) are stored in the block dtype.
  uint16_t n_sink = 0;
  // Outliers: floor(n * outlier_bp / 10000) elements of each (K/V, layer,
  // head), n = its non-sink elements, kept in the block dtype. <= 10000.
  uint16_t outlier_bp = 0;

  CodecParams ToBytes() const;
  // INVALID_ARGUMENT naming the field ("version", "k_bits", "flags", ...).
  static absl::StatusOr<QuantParams> FromBytes(const CodecParams& bytes);
  // FromBytes plus the shape checks (group divides head_dim, n_sink).
  static absl::StatusOr<QuantParams> FromBytes(const CodecParams& bytes,
                                               const BlockShape& shape);
};

// ---- Shared with aqua_codec.cc (not a public API).
namespace quant_internal {

// INVALID_ARGUMENT naming `field` unless bits is 2, 3, 4 or 8.
absl::Status CheckBits(const char* field, uint8_t bits);
// INVALID_ARGUMENT naming `field` unless group is 32, 64 or 128.
absl::Status CheckGroup(const char* field, uint8_t group);

// Min-max quantization of one slab x[tokens][heads][head_dim] (one K or V of
// one layer). Bytes: NumGroups() (scale fp16, min fp16) pairs, then the
// codes packed LSB-first at `bits` each, padded to a whole byte.
// per_token = false: group (tg, h, d) = tokens [tg*G, tg*G+G) ∩ [0, tokens)
//   of channel d; groups ordered [tg][h][d], codes [tg][h][d][token].
// per_token = true: group (t, h, c) = channels [c*G, c*G+G) of token t;
//   groups ordered [t][h][c], codes [t][h][d].
struct SlabQuantizer {
  uint32_t tokens = 0;
  uint32_t heads = 0;
  uint32_t head_dim = 0;
  int bits = 2;
  uint32_t group = 32;
  bool per_token = false;

  uint64_t NumGroups() const;
  uint64_t Bytes() const;
  // Quantizes x into out[0, Bytes()). Elements with skip[i] (same layout as
  // x; skip may be empty) are left out of their group's min/max; their code
  // is their clamped quantization. INVALID_ARGUMENT naming "kv" for a
  // quantized |x| above 65504 (the fp16 range of scale and min).
  absl::Status Quantize(const float* x, absl::Span<const uint8_t> skip,
                        uint8_t* out) const;
  // The heads*head_dim values of token t from a slab of Bytes() bytes.
  // DATA_LOSS naming "payload" for a non-finite or negative scale or min.
  absl::Status DequantizeToken(absl::Span<const uint8_t> slab, uint32_t t,
                               float* dst) const;
};

// Stores v in `dtype` (saturating) at p (DTypeSize bytes, little-endian).
void StoreDtype(float v, DType dtype, uint8_t* p);
// Loads a `dtype` value; false when it is not finite.
bool LoadDtype(const uint8_t* p, DType dtype, float* v);
// INVALID_ARGUMENT naming "kv" unless kv.data matches the shape and every
// value is finite.
absl::Status CheckKvValues(const KvTensor& kv);

}  // namespace quant_internal
}  // namespace strata::codecs

#endif  // STRATA_CODECS_QUANT_CODEC_H_
