// Errors that the Strata CUDA kernels find in device data while they run.
//
// Launch() validates everything the host can see (shapes, dtypes, sizes,
// pointer alignment) and returns INVALID_ARGUMENT before anything is launched.
// What only the device can see -- a non-finite input value, a corrupt group
// record in a payload, a page id outside the cache -- is reported
// asynchronously: each op takes an optional `uint32_t* error_flags`, a device
// word that the caller zeroes (cudaMemsetAsync) before the launch; the
// kernels OR these bits into it (atomicOr), and the caller reads it after the
// stream work completes and turns it into a Status with ErrorFlagsToStatus.
// When any bit is set the op's output is unspecified and must not be used.
// With error_flags == nullptr nothing is reported (the output is still
// unspecified for bad data).
//
// Thread safety: pure functions.
#ifndef STRATA_KERNELS_KERNEL_ERRORS_H_
#define STRATA_KERNELS_KERNEL_ERRORS_H_

#include <cstdint>

#include "absl/status/status.h"

namespace strata::kernels {

// Bits of the error word (stable values; never renumber).
inline constexpr uint32_t kErrorNonFiniteInput = 1u << 0;  // encode: "kv"
inline constexpr uint32_t kErrorOutOfRange = 1u << 1;      // encode: "kv"
inline constexpr uint32_t kErrorBadGroupRecord = 1u << 2;  // decode: "payload"
inline constexpr uint32_t kErrorBadSink = 1u << 3;         // decode: "payload"
inline constexpr uint32_t kErrorBadPageId = 1u << 4;       // paged: "page_ids"
// cluster selection: a token id or cluster end outside the block ("index").
inline constexpr uint32_t kErrorBadIndex = 1u << 5;

// OK for 0. Otherwise the status the CPU reference would have returned for
// the same data: INVALID_ARGUMENT naming "kv" (a non-finite input, or a
// quantized |x| above 65504, as codecs' quant Encode) or "page_ids";
// DATA_LOSS naming "payload" (a group with a non-finite or negative scale or
// a non-finite min, or a non-finite sink value, as codecs' quant Decode; a
// lowrank record that is not finite) or "index" (a cluster index entry out
// of range).
// DATA_LOSS wins when both kinds are set.
absl::Status ErrorFlagsToStatus(uint32_t flags);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_KERNEL_ERRORS_H_
