// The tokensparse codec (CodecId::kTokenSparse): BUZZ segmented heavy hitters
// for a stored block, with an optional LESS-style low-rank summary of the
// tokens it drops. Payload layout and the summary's derivation:
// docs/codecs/tokensparse_cluster.md.
//
// Per layer and KV head the codec keeps
//   - the first n_sink tokens (attention sinks),
//   - the last `window` tokens (the recent window),
//   - from the middle, cut into consecutive segments of `stride` tokens
//     starting after the sinks (the last segment may be shorter), the one
//     token of largest importance in each segment (ties: the earliest).
// Selection is per head (the payload stores each head's positions), so every
// head keeps the same number of tokens, K = sinks + window + segments.
//
// Importance: EncodeTokenSparse takes caller scores (accumulated attention
// from the engine). Codec::Encode (EncodeKvBlock) has no score input and uses
// a key-norm proxy: by default a SMALLER key L2 norm is more important (keys
// with low norm attract attention: Devoto et al. 2024, arXiv 2406.11430);
// kProxyHighNorm flips it.
//
// Decode (DecodeKvBlock) returns the full token range with dropped tokens
// zero-filled; a token-range or token-index selection returns zeros for the
// dropped tokens it covers. Attention kernels use DecodeKept, which returns
// what is really stored: per head, the kept positions, their K and V, and the
// summary.
//
// Thread safety: all functions are pure and thread-safe.
#ifndef STRATA_CODECS_TOKENSPARSE_CODEC_H_
#define STRATA_CODECS_TOKENSPARSE_CODEC_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codecs/codec.h"
#include "codecs/kv_tensor.h"

namespace strata::codecs {

// The codec's parameters; they travel in the block header's codec_params.
struct TokenSparseParams {
  uint16_t n_sink = 4;
  uint16_t window = 32;
  // Segment length of the middle. 0: derive at encode from budget_fraction
  // (the smallest stride whose kept count fits the budget; the derived value
  // is what the block records).
  uint16_t stride = 0;
  // Fraction of the block's tokens to keep, in (0, 1]; recorded in steps of
  // 1/10000. Used only when stride == 0.
  float budget_fraction = 0.25f;
  // Importance proxy of Codec::Encode: false keeps the smallest key norms.
  bool proxy_high_norm = false;
  // Append a LESS-style summary of each head's dropped tokens.
  bool summary = false;
  uint8_t summary_rank = 32;       // Random features r, 1..255.
  uint32_t summary_seed = 0x5EED;  // Seeds the feature matrix W.

  CodecParams ToBytes() const;
  // INVALID_ARGUMENT naming the field for a bad version, unknown flag bits,
  // non-zero reserved bytes or an out-of-range value.
  static absl::StatusOr<TokenSparseParams> FromBytes(const CodecParams& bytes);
};

// Encodes `kv` into a complete block (header + payload, as EncodeKvBlock),
// choosing tokens by `scores`: [layers][tokens][kv_heads] (per head) or
// [layers][tokens] (one score per token, used for every head); empty: the
// key-norm proxy. The block records the derived stride. INVALID_ARGUMENT
// naming "scores" for another size or a NaN, or the parameter at fault.
absl::StatusOr<std::vector<uint8_t>> EncodeTokenSparse(
    const KvTensor& kv, const TokenSparseParams& params,
    absl::Span<const float> scores);

// LESS-style state of one (layer, KV head)'s dropped tokens D, stored in
// normalised form. With x = alpha * q / d^(1/4), y_j = (k_j - key_mean) /
// (alpha * d^(1/4)) and positive random features
// phi_i(x) = exp(w_i.x - |x|^2/2) / sqrt(r), psi_i(y) likewise,
//   exp(q.k_j / sqrt(d)) = exp(q.key_mean / sqrt(d)) * E[phi(x).psi(y_j)],
// and the state H = sum_j psi(y_j) v_j^T, z = sum_j psi(y_j) is kept as
// log_z[i] = log z_i and value_mean[i] = H_i / z_i (a convex combination of
// the dropped values, so it fits fp16).
struct LessSummary {
  uint32_t rank = 0;              // r.
  uint32_t head_dim = 0;          // d.
  uint32_t dropped = 0;           // |D|.
  float alpha = 1;                // Balances |x| and |y| (docs).
  std::vector<float> features;    // W, [r][d], regenerated from the seed.
  std::vector<float> key_mean;    // [d].
  std::vector<float> log_z;       // [r].
  std::vector<float> value_mean;  // [r][d].
};

// What one layer of a tokensparse block really stores.
struct TokenSparseLayer {
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t kept_per_head = 0;       // K.
  std::vector<uint32_t> positions;  // [heads][K], strictly increasing per head.
  std::vector<float> keys;          // [heads][K][d].
  std::vector<float> values;        // [heads][K][d].
  std::vector<LessSummary> summaries;  // [heads]; empty without a summary.
};

// Decodes layer `layer` of a tokensparse block (checksum verified).
// INVALID_ARGUMENT for another codec or a layer out of range, DATA_LOSS for
// a bad payload (as Decode).
absl::StatusOr<TokenSparseLayer> DecodeKept(absl::Span<const uint8_t> block,
                                            uint32_t layer);

// Softmax attention of one query head over `keys`/`values` ([n][d] each,
// n >= 0) plus, when `summary` is not null, the summary's estimate of the
// dropped tokens:
//   o = (sum_i e^{a_i} value_mean_i + sum_j e^{s_j} v_j)
//       / (sum_i e^{a_i} + sum_j e^{s_j}),
// s_j = q.k_j / sqrt(d), a_i = q.key_mean/sqrt(d) + w_i.x - |x|^2/2
// - log(r)/2 + log_z_i: both are estimates of unnormalised e^{s} on one
// scale (docs). Returns d values. INVALID_ARGUMENT naming the argument whose
// size disagrees, or when there is nothing to attend to.
absl::StatusOr<std::vector<float>> AttendWithSummary(
    absl::Span<const float> query, absl::Span<const float> keys,
    absl::Span<const float> values, uint32_t head_dim,
    const LessSummary* summary);

}  // namespace strata::codecs

#endif  // STRATA_CODECS_TOKENSPARSE_CODEC_H_
