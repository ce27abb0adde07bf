// The cluster codec's encode (CodecId::kCluster, ClusterKV) on the GPU: a
// raw KV block in device memory becomes exactly the CPU payload
// (codecs/cluster_codec.h; layout in docs/codecs/tokensparse_cluster.md):
// per (layer >= first_layer, KV head) the spherical k-means index of the
// non-sink keys (fp16 centroids = raw-key means, u32 cluster ends, u16 token
// ids sorted by cluster, then token), 32 zero inner-params bytes, the raw
// K/V. The query side is kernels/cluster_kernels.h.
//
// Byte equality: k-means is iterative and its assignments hinge on float
// comparisons, so the kernels run the CPU's algorithm
// (codecs/internal/kmeans.cc) step for step with its arithmetic:
//   - rows normalised with a double sum of squares in order and one float
//     inverse; dots as float sums of separately rounded float products in
//     order (no FMA);
//   - k-means++ from the same SplitMix64 stream (seed << 32 | layer * 1024
//     + head), its running double sums in order on one thread;
//   - Lloyd rounds: each row to the centroid of largest dot (ties: lower
//     cluster), early stop when no label changes, empty clusters re-seeded
//     in order with the least similar eligible row (ties: lowest row), and
//     centroids as float sums of member rows in row order, then normalised;
//   - stored centroids: double means of the raw keys in row order.
// Nothing is approximated, so there is no tolerance: tests compare bytes.
// The raw K/V is written as the CPU writes it (the dtype's float round
// trip: infinities saturate, NaNs are canonical).
//
// Decode needs no kernel: the block keeps its K/V raw, so a decode is a copy
// of ClusterRawOffset.. of the payload (cudaMemcpyAsync), and a recall of
// selected tokens (kernels/cluster_kernels.h) reads their rows in place.
//
// Decomposition: one thread block per (clustered layer, KV head), rows
// split over its threads; the k-means++ sums run on one thread (the CPU's
// order is sequential), which bounds the speed for long blocks
// (docs/kernels.md). The k-means state lives in the caller's workspace.
//
// Host API (docs/kernels.md): Validate / WorkspaceBytes / Launch on the
// caller's stream; no allocation, no synchronisation; every pointer is a
// device pointer owned by the caller.
//
// Errors (kernels/kernel_errors.h, optional error word): a non-finite key
// of a clustered token sets kErrorNonFiniteInput (the CPU codec would write
// an index that ClusterIndex::Parse rejects); a centroid mean beyond fp16
// sets kErrorOutOfRange (the same). The payload bytes still equal the
// CPU's for finite inputs, flagged or not.
//
// Thread safety: pure functions.
#ifndef STRATA_KERNELS_CLUSTER_ENCODE_KERNELS_H_
#define STRATA_KERNELS_CLUSTER_ENCODE_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "codecs/codec.h"
#include "kvstore/block_format.h"

namespace strata::kernels {

// The params a block records (num_clusters resolved: 0 becomes
// ceil((T - sinks) / 16)), as the CPU Encode returns them; INVALID_ARGUMENT
// naming the field (the CPU codec's ValidateParams).
absl::StatusOr<codecs::CodecParams> ClusterEncodedParams(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params);

// Exact payload size, or INVALID_ARGUMENT naming the field.
absl::StatusOr<uint64_t> ClusterPayloadBytes(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params);

// Byte offset of the raw K/V (shape.RawBytes() bytes) in the payload.
absl::StatusOr<uint64_t> ClusterRawOffset(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params);

struct ClusterEncodeParams {
  kvstore::BlockShape shape;
  // codecs::ClusterParams::ToBytes() (num_clusters 0 or explicit). The
  // block records ClusterEncodedParams(shape, codec_params).
  codecs::CodecParams codec_params{};
  // Raw block [K, V][layers][tokens][kv_heads][head_dim] in shape.dtype,
  // 16-byte aligned. The cluster codec clusters what it is given: the
  // engine passes post-RoPE keys.
  const void* kv = nullptr;
  void* payload = nullptr;  // ClusterPayloadBytes bytes, 2-byte aligned,
  uint64_t payload_bytes = 0;  // not overlapping kv.
  uint32_t* error_flags = nullptr;  // Optional (see above).
};

[[nodiscard]] absl::Status Validate(const ClusterEncodeParams& params);
// The k-means state of every (clustered layer, KV head): per slot about
// 4 * members * (head_dim + 5) + 4 * clusters * (head_dim + 3) bytes, parts
// 256-byte aligned; 0 when nothing is clustered.
[[nodiscard]] size_t WorkspaceBytes(const ClusterEncodeParams& params);
// The workspace must be 256-byte aligned; its contents on entry do not
// matter.
[[nodiscard]] absl::Status Launch(const ClusterEncodeParams& params,
                                  void* workspace, cudaStream_t stream);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_CLUSTER_ENCODE_KERNELS_H_
