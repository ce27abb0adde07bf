// Host side of the RoPE shift kernel: checks and the (cos, sin) table.
#include "kernels/rope_kernels.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/internal/host_checks.h"
#include "kernels/internal/launch.h"
#include "kvstore/block_format.h"

namespace strata::kernels {
namespace {

absl::Status CheckRope(const RopeShiftParams& p) {
  if (!kvstore::IsValidDType(static_cast<uint8_t>(p.dtype))) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: unknown value ", static_cast<int>(p.dtype)));
  }
  if (p.head_dim < 8 || p.head_dim > kvstore::kMaxHeadDim ||
      p.head_dim % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: ", p.head_dim, " is not a multiple of 8 in [8, ",
        kvstore::kMaxHeadDim, "]"));
  }
  if (p.num_vectors == 0 || p.num_vectors > (uint64_t{1} << 36) / p.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_vectors: ", p.num_vectors, " is 0 or implausibly large"));
  }
  if (p.style != RopeStyle::kInterleaved && p.style != RopeStyle::kNeoxHalves) {
    return absl::InvalidArgumentError(
        absl::StrCat("style: unknown value ", static_cast<int>(p.style)));
  }
  if (!(p.theta > 1.0f) || !std::isfinite(p.theta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("theta: ", p.theta, " is not a finite value > 1"));
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("src", p.src, 16));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("dst", p.dst, 16));
  if (p.src != p.dst) {
    const uint64_t bytes =
        p.num_vectors * p.head_dim * kvstore::DTypeSize(p.dtype);
    STRATA_RETURN_IF_ERROR(
        internal::CheckDisjoint("dst", p.dst, bytes, p.src, bytes));
  }
  return absl::OkStatus();
}

}  // namespace

void RopeShiftCosSin(uint32_t head_dim, float theta, int32_t delta,
                     uint32_t pair, float* c, float* s) {
  // The expressions of codecs::ApplyRope, with a signed position.
  const double base = static_cast<double>(theta);
  const double inv_freq =
      std::pow(base, -2.0 * static_cast<double>(pair) / head_dim);
  const double angle = static_cast<double>(delta) * inv_freq;
  *c = static_cast<float>(std::cos(angle));
  *s = static_cast<float>(std::sin(angle));
}

absl::Status Validate(const RopeShiftParams& params) {
  return CheckRope(params);
}

size_t WorkspaceBytes(const RopeShiftParams&) { return 0; }

absl::Status Launch(const RopeShiftParams& params, void* /*workspace*/,
                    cudaStream_t stream) {
  STRATA_RETURN_IF_ERROR(CheckRope(params));
  // 16 KiB of arguments (the table travels as kernel parameters).
  internal::RopeArgs a;
  a.dtype = static_cast<int>(params.dtype);
  a.head_dim = params.head_dim;
  a.num_vectors = params.num_vectors;
  a.neox = params.style == RopeStyle::kNeoxHalves;
  a.src = params.src;
  a.dst = params.dst;
  for (uint32_t i = 0; i < params.head_dim / 2; ++i) {
    RopeShiftCosSin(params.head_dim, params.theta, params.delta, i, &a.cos[i],
                    &a.sin[i]);
  }
  return internal::CudaStatus(internal::LaunchRopeShift(a, stream),
                              "rope shift");
}

}  // namespace strata::kernels
