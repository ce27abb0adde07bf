// Host side of the ClusterKV encode kernels: the CPU codec's params checks
// (Codec::ValidateParams, ClusterParams::FromBytes) and geometry (as
// codecs/cluster_codec.cc's ResolveClusters and MakeGeometry), the
// workspace layout, the launch.
#include "kernels/cluster_encode_kernels.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "codecs/cluster_codec.h"
#include "common/status_macros.h"
#include "kernels/internal/cluster_encode_plan.h"
#include "kernels/internal/host_checks.h"

namespace strata::kernels {
namespace {

constexpr uint64_t kAlign = 256;

uint64_t RoundUp(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

struct Geometry {
  codecs::ClusterParams params;  // num_clusters resolved.
  internal::ClusterEncodeArgs args;
  uint64_t payload_bytes = 0;
  uint64_t slots = 0;
};

absl::StatusOr<Geometry> MakeGeometry(const kvstore::BlockShape& shape,
                                      const codecs::CodecParams& bytes) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(const codecs::Codec* codec,
                          codecs::FindCodec(codecs::CodecId::kCluster));
  STRATA_RETURN_IF_ERROR(codec->ValidateParams(shape, bytes));
  STRATA_ASSIGN_OR_RETURN(codecs::ClusterParams p,
                          codecs::ClusterParams::FromBytes(bytes));
  Geometry g;
  internal::ClusterEncodeArgs& a = g.args;
  a.dtype = static_cast<int>(shape.dtype);
  a.layers = shape.num_layers;
  a.tokens = shape.num_tokens;
  a.heads = shape.num_kv_heads;
  a.dim = shape.head_dim;
  a.sinks = std::min<uint32_t>(p.n_sink, a.tokens);
  a.members = a.tokens - a.sinks;
  // ValidateParams accepted num_clusters <= members.
  a.clusters = p.num_clusters == 0 ? (a.members + 15) / 16 : p.num_clusters;
  a.first_layer = p.first_layer;
  a.clustered_layers =
      a.layers > a.first_layer ? a.layers - a.first_layer : 0;
  a.iterations = p.iterations;
  a.seed = p.seed;
  a.index_slot_bytes = uint64_t{2} * a.clusters * a.dim +
                       uint64_t{4} * a.clusters + uint64_t{2} * a.members;
  // The CPU writes no index at all when there is nothing to cluster.
  g.slots = a.clusters > 0 ? uint64_t{a.clustered_layers} * a.heads : 0;
  a.index_bytes = a.index_slot_bytes * g.slots;
  a.inner_bytes = static_cast<uint32_t>(kvstore::kCodecParamsSize);
  a.raw_bytes = shape.RawBytes();
  g.payload_bytes = a.index_bytes + kvstore::kCodecParamsSize + a.raw_bytes;
  internal::ClusterWorkspaceLayout& w = a.ws;
  uint64_t at = 0;
  auto part = [&](uint64_t bytes) {
    const uint64_t here = at;
    at += RoundUp(bytes);
    return here;
  };
  const uint64_t n = a.members, k = a.clusters, d = a.dim;
  w.unit = part(4 * n * d);
  w.cent = part(4 * k * d);
  w.labels = part(4 * n);
  w.sim = part(4 * n);
  w.dist = part(8 * n);
  w.count = part(4 * k);
  w.starts = part(4 * (k + 1));
  w.cursor = part(4 * k);
  w.pos = part(4 * n);
  w.slot_bytes = at;
  p.num_clusters = static_cast<uint16_t>(a.clusters);
  g.params = p;
  return g;
}

}  // namespace

namespace internal {

absl::StatusOr<ClusterEncodePlan> PlanClusterEncode(
    const ClusterEncodeParams& p) {
  STRATA_ASSIGN_OR_RETURN(Geometry g, MakeGeometry(p.shape, p.codec_params));
  ClusterEncodePlan plan;
  plan.args = g.args;
  plan.workspace_bytes = g.slots * g.args.ws.slot_bytes;
  STRATA_RETURN_IF_ERROR(CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(CheckDevicePointer("payload", p.payload, 2));
  if (p.payload_bytes != g.payload_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload_bytes: ", p.payload_bytes,
                     " bytes, shape and params need ", g.payload_bytes));
  }
  STRATA_RETURN_IF_ERROR(CheckDisjoint("payload", p.payload, p.payload_bytes,
                                       p.kv, p.shape.RawBytes()));
  STRATA_RETURN_IF_ERROR(
      CheckOptionalPointer("error_flags", p.error_flags, 4));
  plan.args.kv = static_cast<const uint8_t*>(p.kv);
  plan.args.payload = static_cast<uint8_t*>(p.payload);
  plan.args.error_flags = p.error_flags;
  return plan;
}

}  // namespace internal

absl::StatusOr<codecs::CodecParams> ClusterEncodedParams(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params) {
  STRATA_ASSIGN_OR_RETURN(Geometry g, MakeGeometry(shape, codec_params));
  return g.params.ToBytes();
}

absl::StatusOr<uint64_t> ClusterPayloadBytes(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params) {
  STRATA_ASSIGN_OR_RETURN(Geometry g, MakeGeometry(shape, codec_params));
  return g.payload_bytes;
}

absl::StatusOr<uint64_t> ClusterRawOffset(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params) {
  STRATA_ASSIGN_OR_RETURN(Geometry g, MakeGeometry(shape, codec_params));
  return g.args.index_bytes + kvstore::kCodecParamsSize;
}

absl::Status Validate(const ClusterEncodeParams& params) {
  return internal::PlanClusterEncode(params).status();
}

size_t WorkspaceBytes(const ClusterEncodeParams& params) {
  auto plan = internal::PlanClusterEncode(params);
  return plan.ok() ? plan->workspace_bytes : 0;
}

absl::Status Launch(const ClusterEncodeParams& params, void* workspace,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(internal::ClusterEncodePlan plan,
                          internal::PlanClusterEncode(params));
  if (plan.workspace_bytes > 0) {
    STRATA_RETURN_IF_ERROR(
        internal::CheckDevicePointer("workspace", workspace, kAlign));
    plan.args.workspace = static_cast<uint8_t*>(workspace);
  }
  return internal::CudaStatus(internal::LaunchClusterEncode(plan.args, stream),
                              "cluster encode");
}

}  // namespace strata::kernels
