// Host-only: the validated launch arguments of the ClusterKV encode
// (kernels/cluster_encode_kernels.h), shared by Launch and the host-side
// emulation of the kernels in tests/kernels/.
//
// Not a public header; g++ only.
#ifndef STRATA_KERNELS_INTERNAL_CLUSTER_ENCODE_PLAN_H_
#define STRATA_KERNELS_INTERNAL_CLUSTER_ENCODE_PLAN_H_

#include "absl/status/statusor.h"
#include "kernels/cluster_encode_kernels.h"
#include "kernels/internal/cluster_encode.h"

namespace strata::kernels::internal {

// Everything Validate checks; args.workspace is left null (Launch sets it).
// workspace_bytes: the whole workspace (slots * ws.slot_bytes).
struct ClusterEncodePlan {
  ClusterEncodeArgs args;
  uint64_t workspace_bytes = 0;
};
absl::StatusOr<ClusterEncodePlan> PlanClusterEncode(
    const ClusterEncodeParams& params);

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_CLUSTER_ENCODE_PLAN_H_
