// Internal to the client library: protobuf wire decoding on raw gRPC
// buffers, for the two calls that do not use generated messages:
//  - GetInto decodes strata.v1.GetResponse straight from gRPC's receive
//    buffer into caller memory, so the block is copied once (receive slices
//    -> region) instead of twice (slices -> std::string -> region);
//  - Health speaks grpc.health.v1, whose generated code Debian's gRPC does
//    not ship; its messages are one field each.
#ifndef STRATA_CLIENT_WIRE_H_
#define STRATA_CLIENT_WIRE_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"

namespace strata::client::internal {

// Copies field 1 (`bytes block`) of the GetResponse in `response` to
// dst[0, len) and returns len. Other fields are skipped. OUT_OF_RANGE
// "capacity: block is N bytes, capacity M" when len > capacity (nothing is
// written); INTERNAL naming "response" when the bytes are not a well-formed
// message.
absl::StatusOr<size_t> CopyGetResponseBlock(const grpc::ByteBuffer& response,
                                            uint8_t* dst, size_t capacity);

// grpc.health.v1.HealthCheckResponse.ServingStatus values.
inline constexpr int kHealthUnknown = 0;
inline constexpr int kHealthServing = 1;
inline constexpr int kHealthNotServing = 2;
inline constexpr int kHealthServiceUnknown = 3;

// The `status` (field 1, enum) of a serialized HealthCheckResponse;
// kHealthUnknown when absent. INTERNAL naming "response" when malformed.
absl::StatusOr<int> ParseHealthCheckResponse(const grpc::ByteBuffer& response);

}  // namespace strata::client::internal

#endif  // STRATA_CLIENT_WIRE_H_
