// The aqua codec (CodecId::kAqua): AQUA-KV (arXiv 2501.19392) cross-layer
// prediction with a quantized residual.
//
// For layer l >= 1 two linear predictors from the model's CodecProfile act on
// each token's concatenated kv_heads*head_dim vectors:
//   K̂_l = A_l·K̃_{l-1} + a_l,     V̂_l = B_l·[K̃_l ; Ṽ_{l-1}] + b_l,
// where tilde marks the decoder's reconstruction; only the residual x - x̂ is
// quantized, with the quant codec's min-max groups (docs/codecs/quant_aqua.md).
// Layer 0 has no predictor and is plain KIVI (per-channel keys, per-token
// values) at l0_bits. The first n_sink tokens of every layer are stored
// exactly in the block dtype instead (attention sinks; they feed no
// prediction). Decoding walks the layers in order, so decoding layers
// [a, b) reconstructs layers [0, b) of the selected tokens internally; token
// selections cost nothing extra (the predictors act per token). The codec is
// agnostic to RoPE: it compresses the keys it is given (pre-RoPE keys predict
// better across layers).
//
// Thread safety: plain values and pure functions.
#ifndef STRATA_CODECS_AQUA_CODEC_H_
#define STRATA_CODECS_AQUA_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_tensor.h"

namespace strata::codecs {

// The aqua codec's codec_params (32 bytes, version 1):
//   [0] version = 1 | [1] k_bits | [2] v_bits | [3] k_group | [4] v_group |
//   [5] flags (bit 0: keys_per_token; other bits 0) | [6] l0_bits | [7] 0 |
//   [8,16) profile_id u64 LE (written by Encode) | [16,18) n_sink u16 LE |
//   [18,32) zero. n_sink = 0 (all version-1 blocks written before it existed)
//   means no sink tokens.
struct AquaParams {
  static constexpr uint8_t kVersion = 1;

  uint8_t k_bits = 2;  // Residual bits of layers >= 1: 2, 3, 4 or 8.
  uint8_t v_bits = 2;
  uint8_t k_group = 32;  // 32, 64 or 128 (also layer 0's groups).
  uint8_t v_group = 32;  // Must divide head_dim.
  // Key residuals grouped per token (k_group must divide head_dim) instead of
  // per channel. Layer 0 keys are always per channel.
  bool keys_per_token = false;
  uint8_t l0_bits = 4;  // Layer 0 (plain KIVI): 2, 3, 4 or 8.
  // The first n_sink tokens (<= num_tokens) of every layer are stored exactly
  // in the block dtype, outside prediction and quantization (attention sinks;
  // docs/codecs/quant_aqua.md).
  uint16_t n_sink = 0;
  uint64_t profile_id = 0;

  CodecParams ToBytes() const;
  // INVALID_ARGUMENT naming the field ("version", "k_bits", ...).
  static absl::StatusOr<AquaParams> FromBytes(const CodecParams& bytes);
  // FromBytes plus the shape checks (groups dividing head_dim, n_sink).
  static absl::StatusOr<AquaParams> FromBytes(const CodecParams& bytes,
                                              const BlockShape& shape);
};

// Names of the profile tensors (HD = kv_heads * head_dim; weights [out, in]
// row-major; l = 1 .. num_layers-1):
//   "aqua.meta"   [3]          num_layers, num_kv_heads, head_dim
//   "aqua.A.l{l}" [HD, HD]     key predictor, input K̃_{l-1}
//   "aqua.a.l{l}" [HD]         its intercept
//   "aqua.B.l{l}" [HD, 2*HD]   value predictor, input [K̃_l ; Ṽ_{l-1}]
//   "aqua.b.l{l}" [HD]         its intercept
std::string AquaTensorName(char which, uint32_t layer);

// Fits the predictors by closed-form ridge regression on calibration KV
// (every tensor of the same layers/heads/head_dim; tokens may differ), one
// row per token: W = C_yx (C_xx + λ·mean(diag C_xx)·I)^-1 on centered data,
// intercept = mean(y) - W·mean(x); λ is relative to the input energy, so
// ridge_lambda = 1e-3 suits any scale. Inputs are the exact previous-layer
// values, not reconstructions (the paper fits on reconstructions; see
// docs/codecs/quant_aqua.md). INVALID_ARGUMENT naming "calibration" or
// "ridge_lambda" for bad input or a singular system (use λ > 0).
absl::StatusOr<CodecProfile> FitAquaProfile(
    const std::vector<KvTensor>& calibration, float ridge_lambda,
    const std::string& model_id);

}  // namespace strata::codecs

#endif  // STRATA_CODECS_AQUA_CODEC_H_
