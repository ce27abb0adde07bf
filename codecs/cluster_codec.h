// The cluster codec (CodecId::kCluster): ClusterKV's semantic index for
// query-driven partial recall. Not a size codec: the block keeps the full K
// and V (the "inner" payload, today raw in the block's dtype, so decoding is
// lossless) plus an index that says which tokens a query will attend to.
// Payload layout: docs/codecs/tokensparse_cluster.md.
//
// Index: for every layer >= first_layer and every KV head, the keys of the
// non-sink tokens are clustered by direction (spherical k-means, k-means++
// init from a seeded generator, at most `iterations` rounds). Stored per
// (layer, head): each cluster's centroid = the mean of its members' raw keys
// (so q.centroid is the cluster's mean attention logit times sqrt(d)), the
// cluster end offsets, and the token ids sorted by cluster, then by token.
// The codec clusters what it is given: the engine passes POST-RoPE keys for
// this codec (selection compares post-RoPE queries with them).
//
// Recall: SelectTokens picks tokens for a query from the index alone; then
// DecodeKvBlock with DecodeSelection.token_indices reads only those tokens.
//
// Thread safety: all functions are pure and thread-safe; a ClusterIndex is an
// immutable value after parsing.
#ifndef STRATA_CODECS_CLUSTER_CODEC_H_
#define STRATA_CODECS_CLUSTER_CODEC_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codecs/codec.h"

namespace strata::codecs {

struct ClusterParams {
  // The codec of the K/V part. Only CodecId::kRaw (the block's dtype) exists
  // today; the field lets a quantized inner payload come later (docs).
  CodecId inner_codec = CodecId::kRaw;
  uint16_t n_sink = 4;  // Tokens [0, n_sink): never clustered, always selected.
  uint16_t num_clusters = 0;  // C per (layer, head); 0: ceil((T - sinks) / 16).
  uint16_t first_layer = 2;   // Layers below are not clustered.
  uint8_t iterations = 20;    // Lloyd rounds, 1..255.
  uint32_t seed = 0xC1u;      // k-means++ draws.

  CodecParams ToBytes() const;
  // INVALID_ARGUMENT naming the field for a bad version, inner codec,
  // iteration count or non-zero reserved bytes.
  static absl::StatusOr<ClusterParams> FromBytes(const CodecParams& bytes);
};

// The parsed, validated index of a cluster block.
class ClusterIndex {
 public:
  // Parses the index of a whole block (checksum verified). INVALID_ARGUMENT
  // for another codec; DATA_LOSS for a bad index (a token id out of range or
  // repeated, cluster ends not increasing or not summing to T - sinks, a
  // non-finite centroid, a wrong payload size).
  static absl::StatusOr<ClusterIndex> Parse(absl::Span<const uint8_t> block);

  const BlockShape& shape() const { return shape_; }
  const ClusterParams& params() const { return params_; }
  uint32_t num_sinks() const { return sinks_; }
  uint32_t num_clusters() const { return clusters_; }
  bool clustered(uint32_t layer) const {
    return layer >= params_.first_layer && layer < shape_.num_layers;
  }
  // For a clustered layer: centroids [C][d], cluster end offsets [C] (into
  // tokens()), token ids [T - sinks] sorted by cluster.
  absl::Span<const float> centroids(uint32_t layer, uint32_t head) const;
  absl::Span<const uint32_t> ends(uint32_t layer, uint32_t head) const;
  absl::Span<const uint32_t> tokens(uint32_t layer, uint32_t head) const;

 private:
  friend class ClusterIndexBuilder;  // cluster_codec.cc: fills it from a
                                     // payload.
  size_t Slot(uint32_t layer, uint32_t head) const {
    return static_cast<size_t>(layer - params_.first_layer) *
               shape_.num_kv_heads +
           head;
  }
  BlockShape shape_;
  ClusterParams params_;
  uint32_t sinks_ = 0, clusters_ = 0;
  std::vector<float> centroids_;  // [clustered layers][heads][C][d]
  std::vector<uint32_t> ends_;    // [clustered layers][heads][C]
  std::vector<uint32_t> tokens_;  // [clustered layers][heads][T - sinks]
};

// How SelectTokens spends its token budget.
enum class BudgetScope : uint8_t {
  // ClusterKV: every query head fills its own budget of `token_budget` tokens
  // (sinks included) and the union over heads is returned, so the result may
  // hold up to q_heads * token_budget tokens.
  kPerQueryHead,
  // The union itself holds at most `token_budget` tokens: the heads take
  // clusters round-robin (every head's best, then every head's second best,
  // ...).
  kTotal,
};

// The tokens layer `layer` should recall for one decode step.
//   queries: [q_heads][head_dim], post-RoPE; q_heads a multiple of kv_heads,
//   query head h reads KV head h / (q_heads / kv_heads) (GQA).
// Per query head, clusters are ranked by q.centroid (ties: lower cluster) and
// their tokens taken in that order until the budget (see BudgetScope) is
// filled; the last cluster is cut to fit, keeping its lowest token ids.
// Sinks are always returned and count against every budget. A layer below
// first_layer, or a budget >= T, returns every token. Returns sorted,
// distinct token ids < T. INVALID_ARGUMENT naming "layer", "q_heads" or
// "queries".
absl::StatusOr<std::vector<uint32_t>> SelectTokens(
    const ClusterIndex& index, uint32_t layer, absl::Span<const float> queries,
    uint32_t q_heads, uint32_t token_budget,
    BudgetScope scope = BudgetScope::kPerQueryHead);

// Same, parsing the index from a whole block first.
absl::StatusOr<std::vector<uint32_t>> SelectTokens(
    absl::Span<const uint8_t> block, uint32_t layer,
    absl::Span<const float> queries, uint32_t q_heads, uint32_t token_budget,
    BudgetScope scope = BudgetScope::kPerQueryHead);

}  // namespace strata::codecs

#endif  // STRATA_CODECS_CLUSTER_CODEC_H_
