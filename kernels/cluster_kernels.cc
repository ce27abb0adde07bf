// Host side of the ClusterKV selection kernels: params checks (the CPU
// codec's ClusterParams::FromBytes and geometry) and the launch.
#include "kernels/cluster_kernels.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/internal/host_checks.h"
#include "kernels/internal/launch.h"

namespace strata::kernels {
namespace {

constexpr uint64_t kAlign = 256;

uint64_t RoundUp(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

struct Plan {
  internal::ClusterSelectArgs args;
  uint64_t scores_bytes = 0, ranked_bytes = 0, chosen_bytes = 0;
  uint64_t workspace_bytes() const {
    return args.select_all ? 0 : scores_bytes + ranked_bytes + chosen_bytes;
  }
};

absl::StatusOr<Plan> MakePlan(const ClusterSelectParams& p) {
  const kvstore::BlockShape& shape = p.shape;
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(codecs::ClusterParams cp,
                          codecs::ClusterParams::FromBytes(p.codec_params));
  const uint32_t T = shape.num_tokens, H = shape.num_kv_heads,
                 d = shape.head_dim;
  const uint32_t sinks = std::min<uint32_t>(cp.n_sink, T);
  const uint32_t members = T - sinks;
  const uint32_t C = cp.num_clusters;
  if (members > 0 ? (C == 0 || C > members) : C != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("codec_params: num_clusters ", C, " for ", members,
                     " non-sink tokens (a stored block records it resolved)"));
  }
  if (p.layer >= shape.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: ", p.layer, " of ", shape.num_layers));
  }
  if (p.q_heads == 0 || p.q_heads % H != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "q_heads: ", p.q_heads, " is not a positive multiple of ", H,
        " KV heads"));
  }
  const uint32_t clustered_layers =
      shape.num_layers > cp.first_layer ? shape.num_layers - cp.first_layer
                                        : 0;
  const uint64_t slot_bytes =
      uint64_t{2} * C * d + uint64_t{4} * C + uint64_t{2} * members;
  const uint64_t need = slot_bytes * clustered_layers * H +
                        kvstore::kCodecParamsSize + shape.RawBytes();
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 2));
  if (p.payload_bytes != need) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload_bytes: ", p.payload_bytes, " bytes, params and shape need ",
        need));
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("queries", p.queries, 4));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("selected", p.selected, 4));
  STRATA_RETURN_IF_ERROR(
      internal::CheckDevicePointer("num_selected", p.num_selected, 4));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  Plan plan;
  internal::ClusterSelectArgs& a = plan.args;
  a.tokens = T;
  a.heads = H;
  a.dim = d;
  a.sinks = sinks;
  a.members = members;
  a.clusters = C;
  a.q_heads = p.q_heads;
  a.budget = p.token_budget;
  a.total_scope = p.scope == codecs::BudgetScope::kTotal;
  a.select_all = p.layer < cp.first_layer || p.token_budget >= T || C == 0;
  a.slot_bytes = slot_bytes;
  if (!a.select_all) {
    a.layer_index = static_cast<const uint8_t*>(p.payload) +
                    slot_bytes * (p.layer - cp.first_layer) * H;
  }
  a.queries = p.queries;
  a.selected = p.selected;
  a.num_selected = p.num_selected;
  a.error_flags = p.error_flags;
  plan.scores_bytes = RoundUp(uint64_t{8} * p.q_heads * C);
  plan.ranked_bytes = RoundUp(uint64_t{4} * p.q_heads * C);
  plan.chosen_bytes = RoundUp(T);
  return plan;
}

}  // namespace

absl::Status Validate(const ClusterSelectParams& params) {
  return MakePlan(params).status();
}

size_t WorkspaceBytes(const ClusterSelectParams& params) {
  auto plan = MakePlan(params);
  return plan.ok() ? plan->workspace_bytes() : 0;
}

absl::Status Launch(const ClusterSelectParams& params, void* workspace,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(Plan plan, MakePlan(params));
  internal::ClusterSelectArgs a = plan.args;
  if (!a.select_all) {
    STRATA_RETURN_IF_ERROR(
        internal::CheckDevicePointer("workspace", workspace, kAlign));
    uint8_t* w = static_cast<uint8_t*>(workspace);
    a.scores = reinterpret_cast<double*>(w);
    a.ranked = reinterpret_cast<uint32_t*>(w + plan.scores_bytes);
    a.chosen = w + plan.scores_bytes + plan.ranked_bytes;
  }
  return internal::CudaStatus(internal::LaunchClusterSelect(a, stream),
                              "cluster select");
}

}  // namespace strata::kernels
