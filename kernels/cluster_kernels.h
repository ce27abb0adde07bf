// ClusterKV query-driven token selection on the GPU: the tokens one layer
// should recall for a decode step, computed from the cluster index of a
// cluster block (codecs/cluster_codec.h) that is in device memory. The
// result is exactly codecs::SelectTokens (both budget scopes).
//
//   1. Scoring: per query head, q . centroid for every cluster of its KV
//      head (GQA: query head qh reads KV head qh / (q_heads / kv_heads)), in
//      double, summed over the dimension in order, as the CPU does (the
//      fp32 x fp32 products are exact in double, so only the order matters).
//   2. Ranking: descending score, ties by lower cluster (the CPU's
//      stable_sort); rank of cluster j = #{i : s_i > s_j} + #{i < j : s_i ==
//      s_j}.
//   3. Selection: kPerQueryHead: each query head takes whole clusters in rank
//      order up to its budget (an exclusive scan of the ranked cluster sizes
//      gives every cluster's share at once); kTotal: one warp walks (rank,
//      query head) in order, taking a cluster's not-yet-chosen tokens (a
//      ballot per 32 tokens). Sinks are always chosen.
//   4. Compaction of the chosen-token mask into increasing token ids.
//
// The index is trusted to have passed codecs::ClusterIndex::Parse when the
// block was written (checksum and invariants); the kernels still guard every
// access: a token id >= num_tokens or a cluster end outside the block sets
// kErrorBadIndex (kernels/kernel_errors.h) and is skipped.
//
// Host API (docs/kernels.md): Validate / WorkspaceBytes / Launch on the
// caller's stream; no allocation, no synchronisation.
//
// Thread safety: pure functions.
#ifndef STRATA_KERNELS_CLUSTER_KERNELS_H_
#define STRATA_KERNELS_CLUSTER_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "codecs/cluster_codec.h"
#include "codecs/codec.h"
#include "kvstore/block_format.h"

namespace strata::kernels {

struct ClusterSelectParams {
  kvstore::BlockShape shape;           // From the block header.
  codecs::CodecParams codec_params{};  // From the block header.
  // Device copy of the block's payload (index + inner params + raw K/V; only
  // the index of `layer` is read), 2-byte aligned (a block's payload starts
  // 96 bytes in), payload_bytes as the params and shape say.
  const void* payload = nullptr;
  uint64_t payload_bytes = 0;
  uint32_t layer = 0;
  // Device [q_heads][head_dim] fp32, post-RoPE, finite (a non-finite score
  // sets kErrorNonFiniteInput), 4-byte aligned.
  const float* queries = nullptr;
  uint32_t q_heads = 0;  // A positive multiple of kv_heads.
  uint32_t token_budget = 0;
  codecs::BudgetScope scope = codecs::BudgetScope::kPerQueryHead;
  // Outputs (device): selected[0, *num_selected) are the token ids,
  // increasing; `selected` holds num_tokens entries.
  uint32_t* selected = nullptr;
  uint32_t* num_selected = nullptr;
  uint32_t* error_flags = nullptr;  // Optional.
};

[[nodiscard]] absl::Status Validate(const ClusterSelectParams& params);
// Scores (8 bytes), ranks (4 bytes) per (query head, cluster), and a byte
// per token, each part 256-byte aligned.
[[nodiscard]] size_t WorkspaceBytes(const ClusterSelectParams& params);
[[nodiscard]] absl::Status Launch(const ClusterSelectParams& params,
                                  void* workspace, cudaStream_t stream);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_CLUSTER_KERNELS_H_
