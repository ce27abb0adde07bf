// The tokensparse codec's heavy-hitter selection (BUZZ segmented top-1,
// CodecId::kTokenSparse) on the GPU: encode a raw KV block in device memory
// into exactly the CPU payload (codecs/tokensparse_codec.h; layout in
// docs/codecs/tokensparse_cluster.md), without the optional LESS summary.
//
// Per (layer, KV head): the n_sink first tokens, the `window` last ones, and
// from each segment of `stride` middle tokens the one of largest importance
// (ties: the earliest). Importance is the caller's score ([layers][tokens]
// [kv_heads] or [layers][tokens], e.g. accumulated attention) or, without
// scores, the key-norm proxy -|k| (or +|k| with proxy_high_norm), |k| the
// square root of the double sum of squares in order, rounded to float -- the
// CPU's arithmetic, so the same tokens win. One thread owns one segment;
// then one warp per kept row converts K and V to fp16 into the payload.
//
// Host API (docs/kernels.md): Validate / WorkspaceBytes (0) / Launch on the
// caller's stream; no allocation, no synchronisation. Not on the GPU: the
// summary (params with summary set are INVALID_ARGUMENT naming "summary").
//
// Thread safety: pure functions.
#ifndef STRATA_KERNELS_TOKENSPARSE_KERNELS_H_
#define STRATA_KERNELS_TOKENSPARSE_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "codecs/codec.h"
#include "kvstore/block_format.h"

namespace strata::kernels {

// The params a block records (stride resolved from budget_fraction when 0),
// as codecs' Encode writes them; INVALID_ARGUMENT naming the field.
absl::StatusOr<codecs::CodecParams> TokenSparseEncodedParams(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params);

// Exact payload size, or INVALID_ARGUMENT naming the field.
absl::StatusOr<uint64_t> TokenSparsePayloadBytes(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params);

struct TokenSparseEncodeParams {
  kvstore::BlockShape shape;
  // codecs::TokenSparseParams::ToBytes(), summary off.
  codecs::CodecParams codec_params{};
  // Optional device scores, 4-byte aligned, num_scores = layers * tokens *
  // kv_heads or layers * tokens (no NaN: kErrorNonFiniteInput). Null: the
  // key-norm proxy (codecs' Codec::Encode).
  const float* scores = nullptr;
  uint64_t num_scores = 0;
  const void* kv = nullptr;  // Raw block, 16-byte aligned.
  void* payload = nullptr;   // TokenSparsePayloadBytes bytes, 2-aligned.
  uint64_t payload_bytes = 0;
  uint32_t* error_flags = nullptr;  // Optional.
};

[[nodiscard]] absl::Status Validate(const TokenSparseEncodeParams& params);
[[nodiscard]] size_t WorkspaceBytes(const TokenSparseEncodeParams& params);
[[nodiscard]] absl::Status Launch(const TokenSparseEncodeParams& params,
                                  void* workspace, cudaStream_t stream);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_TOKENSPARSE_KERNELS_H_
