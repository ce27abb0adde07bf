// CacheBlend token selection: which cached tokens deviate most from a fresh
// prefill of the same layer, to be recomputed (CacheBlend, arXiv 2405.16444).
//
// For one layer with fresh keys F and cached keys C, both [tokens][kv_heads]
// [head_dim] in one dtype, the deviation of token t is the squared L2
// distance over its kv_heads * head_dim channels, in fp32 with a fixed order
// (so that GPU and CPU agree bit for bit): element j = h*head_dim + d goes to
// lane (j / 8) % 32, each lane sums its squared differences (f - c)^2 in
// increasing j, and the 32 lane sums are combined by a butterfly: for m = 16,
// 8, 4, 2, 1, lane i takes s[i] + s[i ^ m]; the deviation is lane 0's value.
// The selection is the k tokens with the largest deviation (compared as the
// bits of |deviation|, so NaN ranks above +inf; ties: the lower token index),
// returned in increasing token order.
//
// Host API (docs/kernels.md): Validate / WorkspaceBytes / Launch; plus the
// CPU reference BlendSelectCpu that defines the result.
#ifndef STRATA_KERNELS_BLEND_KERNELS_H_
#define STRATA_KERNELS_BLEND_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvstore/dtype.h"

namespace strata::kernels {

struct BlendSelectParams {
  kvstore::DType dtype = kvstore::DType::kFloat16;
  uint32_t num_tokens = 0;  // 1..65536
  uint32_t kv_heads = 0;    // kv_heads * head_dim: a multiple of 8
  uint32_t head_dim = 0;
  uint32_t k = 0;  // 1..num_tokens tokens to select
  // Device, [num_tokens][kv_heads][head_dim] of `dtype`, 16-byte aligned:
  // e.g. layer l's K of two Strata blocks, at element l*tokens*heads*dim.
  const void* fresh_keys = nullptr;
  const void* cached_keys = nullptr;
  // Output, device int32[k]: the selected token indices, increasing.
  int32_t* selected = nullptr;
  // Optional output, device float[num_tokens]: every token's deviation.
  // When null the deviations live in the workspace.
  float* deviations = nullptr;
};

[[nodiscard]] absl::Status Validate(const BlendSelectParams& params);
// num_tokens * 4 bytes (rounded up to 256) when `deviations` is null, else 0.
[[nodiscard]] size_t WorkspaceBytes(const BlendSelectParams& params);
// `workspace` must hold WorkspaceBytes(params) bytes of device memory (may
// be null when that is 0) and must not be used by other work in flight.
[[nodiscard]] absl::Status Launch(const BlendSelectParams& params,
                                  void* workspace, cudaStream_t stream);

// The CPU reference: the same deviations (bit for bit) and selection, from
// host copies of the two key tensors. INVALID_ARGUMENT naming the field as
// Validate does (pointers aside), or "fresh_keys"/"cached_keys" when a span
// has the wrong size.
struct BlendSelection {
  std::vector<float> deviations;  // [num_tokens]
  std::vector<int32_t> selected;  // [k], increasing
};
absl::StatusOr<BlendSelection> BlendSelectCpu(
    kvstore::DType dtype, uint32_t num_tokens, uint32_t kv_heads,
    uint32_t head_dim, uint32_t k, absl::Span<const uint8_t> fresh_keys,
    absl::Span<const uint8_t> cached_keys);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_BLEND_KERNELS_H_
