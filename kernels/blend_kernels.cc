// Host side of the CacheBlend selection: checks, launch, and the CPU
// reference that defines the result.
#include "kernels/blend_kernels.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/internal/host_checks.h"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"
#include "kvstore/block_format.h"

namespace strata::kernels {
namespace {

absl::Status CheckShape(kvstore::DType dtype, uint32_t num_tokens,
                        uint32_t kv_heads, uint32_t head_dim, uint32_t k) {
  if (!kvstore::IsValidDType(static_cast<uint8_t>(dtype))) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: unknown value ", static_cast<int>(dtype)));
  }
  if (num_tokens == 0 || num_tokens > kvstore::kMaxTokens) {
    return absl::InvalidArgumentError(absl::StrCat("num_tokens: ", num_tokens,
                                                   " is outside [1, ",
                                                   kvstore::kMaxTokens, "]"));
  }
  if (kv_heads == 0 || kv_heads > kvstore::kMaxKvHeads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_heads: ", kv_heads, " is outside [1, ", kvstore::kMaxKvHeads, "]"));
  }
  if (head_dim == 0 || head_dim > kvstore::kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: ", head_dim, " is outside [1, ", kvstore::kMaxHeadDim, "]"));
  }
  if ((uint64_t{kv_heads} * head_dim) % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: kv_heads * head_dim = ", uint64_t{kv_heads} * head_dim,
        " is not a multiple of 8"));
  }
  if (k == 0 || k > num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "k: ", k, " is outside [1, num_tokens = ", num_tokens, "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckParams(const BlendSelectParams& p) {
  STRATA_RETURN_IF_ERROR(
      CheckShape(p.dtype, p.num_tokens, p.kv_heads, p.head_dim, p.k));
  STRATA_RETURN_IF_ERROR(
      internal::CheckDevicePointer("fresh_keys", p.fresh_keys, 16));
  STRATA_RETURN_IF_ERROR(
      internal::CheckDevicePointer("cached_keys", p.cached_keys, 16));
  STRATA_RETURN_IF_ERROR(
      internal::CheckDevicePointer("selected", p.selected, 4));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("deviations", p.deviations, 4));
  if (p.deviations != nullptr) {
    STRATA_RETURN_IF_ERROR(internal::CheckDisjoint(
        "deviations", p.deviations, uint64_t{p.num_tokens} * 4, p.selected,
        uint64_t{p.k} * 4));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Validate(const BlendSelectParams& params) {
  return CheckParams(params);
}

size_t WorkspaceBytes(const BlendSelectParams& params) {
  if (params.deviations != nullptr) return 0;
  return (size_t{params.num_tokens} * sizeof(float) + 255) / 256 * 256;
}

absl::Status Launch(const BlendSelectParams& params, void* workspace,
                    cudaStream_t stream) {
  STRATA_RETURN_IF_ERROR(CheckParams(params));
  internal::BlendArgs a;
  a.dtype = static_cast<int>(params.dtype);
  a.tokens = params.num_tokens;
  a.hd = params.kv_heads * params.head_dim;
  a.k = params.k;
  a.fresh = params.fresh_keys;
  a.cached = params.cached_keys;
  a.selected = params.selected;
  a.deviations = params.deviations;
  if (a.deviations == nullptr) {
    STRATA_RETURN_IF_ERROR(
        internal::CheckDevicePointer("workspace", workspace, 4));
    a.deviations = static_cast<float*>(workspace);
  }
  return internal::CudaStatus(internal::LaunchBlendSelect(a, stream),
                              "blend select");
}

absl::StatusOr<BlendSelection> BlendSelectCpu(
    kvstore::DType dtype, uint32_t num_tokens, uint32_t kv_heads,
    uint32_t head_dim, uint32_t k, absl::Span<const uint8_t> fresh_keys,
    absl::Span<const uint8_t> cached_keys) {
  STRATA_RETURN_IF_ERROR(CheckShape(dtype, num_tokens, kv_heads, head_dim, k));
  const uint64_t hd = uint64_t{kv_heads} * head_dim;
  const uint64_t dsize = kvstore::DTypeSize(dtype);
  const uint64_t bytes = uint64_t{num_tokens} * hd * dsize;
  if (fresh_keys.size() != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fresh_keys: ", fresh_keys.size(), " bytes, the shape needs ", bytes));
  }
  if (cached_keys.size() != bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("cached_keys: ", cached_keys.size(),
                     " bytes, the shape needs ", bytes));
  }
  auto load = [&](const uint8_t* p) -> float {
    switch (dtype) {
      case kvstore::DType::kFloat16:
        return internal::HalfToFloat(static_cast<uint16_t>(p[0] | p[1] << 8));
      case kvstore::DType::kBFloat16:
        return internal::BFloat16ToFloat(
            static_cast<uint16_t>(p[0] | p[1] << 8));
      case kvstore::DType::kFloat8E4M3:
        return internal::Fp8E4M3ToFloat(p[0]);
      case kvstore::DType::kFloat32:
        return internal::BitsToFloat(static_cast<uint32_t>(p[0]) |
                                     static_cast<uint32_t>(p[1]) << 8 |
                                     static_cast<uint32_t>(p[2]) << 16 |
                                     static_cast<uint32_t>(p[3]) << 24);
    }
    return 0;
  };
  BlendSelection out;
  out.deviations.resize(num_tokens);
  for (uint32_t t = 0; t < num_tokens; ++t) {
    float lanes[32] = {};
    for (uint64_t j = 0; j < hd; ++j) {
      const uint64_t at = (uint64_t{t} * hd + j) * dsize;
      const float d = load(&fresh_keys[at]) - load(&cached_keys[at]);
      float& lane = lanes[(j / 8) % 32];
      lane = lane + d * d;  // -ffp-contract=off: two roundings.
    }
    for (int m = 16; m >= 1; m >>= 1) {
      float next[32];
      for (int i = 0; i < 32; ++i) next[i] = lanes[i] + lanes[i ^ m];
      std::copy(next, next + 32, lanes);
    }
    out.deviations[t] = lanes[0];
  }
  // Independent of the GPU's radix select: a full sort by (key desc, t asc).
  std::vector<int32_t> order(num_tokens);
  std::iota(order.begin(), order.end(), 0);
  auto key = [&](int32_t t) {
    return internal::FloatBits(out.deviations[t]) & 0x7FFFFFFFu;
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return key(a) > key(b); });
  out.selected.assign(order.begin(), order.begin() + k);
  std::sort(out.selected.begin(), out.selected.end());
  return out;
}

}  // namespace strata::kernels
