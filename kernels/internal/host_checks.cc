#include "kernels/internal/host_checks.h"

#include "absl/strings/str_cat.h"

namespace strata::kernels::internal {

absl::Status CheckDevicePointer(const char* field, const void* p,
                                uint64_t align) {
  if (p == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": null pointer"));
  }
  return CheckOptionalPointer(field, p, align);
}

absl::Status CheckOptionalPointer(const char* field, const void* p,
                                  uint64_t align) {
  const uint64_t address = reinterpret_cast<uintptr_t>(p);
  if (address % align != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": device pointer 0x", absl::Hex(address),
                     " is not ", align, "-byte aligned"));
  }
  return absl::OkStatus();
}

absl::Status CheckDisjoint(const char* field, const void* a, uint64_t a_bytes,
                           const void* b, uint64_t b_bytes) {
  const uint64_t a0 = reinterpret_cast<uintptr_t>(a);
  const uint64_t b0 = reinterpret_cast<uintptr_t>(b);
  if (a0 < b0 + b_bytes && b0 < a0 + a_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": overlaps the input"));
  }
  return absl::OkStatus();
}

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  const std::string message =
      absl::StrCat("cuda: ", what, ": ", cudaGetErrorName(error), " (",
                   cudaGetErrorString(error), ")");
  if (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver ||
      error == cudaErrorInitializationError) {
    return absl::FailedPreconditionError(message);
  }
  return absl::InternalError(message);
}

}  // namespace strata::kernels::internal
