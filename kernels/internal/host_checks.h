// Host-side helpers of the kernels' Validate/Launch functions: pointer checks
// and CUDA error conversion.
//
// Not a public header.
#ifndef STRATA_KERNELS_INTERNAL_HOST_CHECKS_H_
#define STRATA_KERNELS_INTERNAL_HOST_CHECKS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace strata::kernels::internal {

// INVALID_ARGUMENT naming `field` when p is null or not `align`-byte aligned.
absl::Status CheckDevicePointer(const char* field, const void* p,
                                uint64_t align);
// Like CheckDevicePointer, but null is allowed (optional outputs).
absl::Status CheckOptionalPointer(const char* field, const void* p,
                                  uint64_t align);
// INVALID_ARGUMENT naming `field` when [a, a + a_bytes) and [b, b + b_bytes)
// overlap.
absl::Status CheckDisjoint(const char* field, const void* a, uint64_t a_bytes,
                           const void* b, uint64_t b_bytes);

// OK for cudaSuccess; FAILED_PRECONDITION naming "cuda" when there is no
// usable device (no GPU, no or too old a driver), INTERNAL naming "cuda"
// otherwise. `what` names the op.
absl::Status CudaStatus(cudaError_t error, const char* what);

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_HOST_CHECKS_H_
