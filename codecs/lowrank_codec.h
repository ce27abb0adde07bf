// The lowrank codec (CodecId::kLowRank): PCA projection per (layer, KV head),
// separately for K and V.
//
// A profile holds, per (K/V, layer, head), the calibration mean μ (d) and the
// top r_max principal directions P (d × r_max, columns by decreasing
// variance) with their standard deviations σ. A block stores, per (K/V,
// layer, token, head), the latent z = (x − μ)·P[:, :r] for r = rank_k (keys)
// or rank_v (values), as fp16 or quantized to 8 or 4 bits with a per-vector
// min-max (optionally after dividing each latent by its σ, "whiten").
// Decoding is x' = μ + z·P[:, :r]ᵀ; every token decodes independently.
//
// Bits per element (d = head_dim, per K/V half): fp16 16·r/d; int8
// (32 + 8·r)/d; int4 (32 + 8·ceil(r/2))/d; plus the 96-byte header.
//
// Params, payload and profile tensors: docs/codecs/sparse_lowrank.md.
//
// Thread safety: pure functions; the codec singleton is immutable.
#ifndef STRATA_CODECS_LOWRANK_CODEC_H_
#define STRATA_CODECS_LOWRANK_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_tensor.h"

namespace strata::codecs {

enum class LatentFormat : uint8_t {
  kFloat16 = 0,  // r fp16 latents.
  kInt8 = 1,     // fp16 min, fp16 scale, r u8 codes.
  kInt4 = 2,     // fp16 min, fp16 scale, ceil(r/2) bytes of u4 codes.
};

struct LowRankParams {
  static constexpr uint8_t kVersion = 1;
  static constexpr uint8_t kFlagWhiten =
      1;  // Quantize z_j / σ_j (int formats).
  LatentFormat format = LatentFormat::kFloat16;
  uint8_t flags = 0;
  uint16_t rank_k = 16;  // 1..min(head_dim, profile r_max).
  uint16_t rank_v = 32;
  uint64_t profile_id = 0;  // Written by Encode.

  CodecParams ToBytes() const;
  // INVALID_ARGUMENT naming the field for an unknown version, format or flag,
  // or non-zero reserved bytes (ranks vs shape: Codec::ValidateParams).
  static absl::StatusOr<LowRankParams> FromBytes(const CodecParams& bytes);
};

// PCA of calibration KV (tensors of one shape except num_tokens): per (K/V,
// layer, head) the mean and the eigendecomposition (cyclic Jacobi, in double)
// of the covariance of all tokens, keeping the top `r_max` (1..head_dim)
// eigenvectors, each signed so its largest component is positive.
// Deterministic. INVALID_ARGUMENT naming "calibration" or "r_max".
//
// Profile tensors: "pca.k.mean" / "pca.v.mean" [L, H, d], "pca.k.basis" /
// "pca.v.basis" [L, H, d, r_max] (P[e][j] at e·r_max + j), "pca.k.stddev" /
// "pca.v.stddev" [L, H, r_max] (sqrt of the eigenvalues, >= 0).
absl::StatusOr<CodecProfile> FitLowRankProfile(
    const std::vector<KvTensor>& calibration, uint32_t r_max,
    const std::string& model_id);

}  // namespace strata::codecs

#endif  // STRATA_CODECS_LOWRANK_CODEC_H_
