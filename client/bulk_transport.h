// Internal to the client library: a bulk data plane beside gRPC. The gRPC
// client (grpc_client.h) sends Put / Get / GetInto through one when
// ClientOptions::data_plane allows and the daemon offers one (Hello):
// UcxTransport (ucx_transport.h; TCP or shared memory through UCX) or
// TcpTransport (tcp_transport.h; plain sockets).
//
// Contract shared by both:
// - Every call has an absolute deadline and retries UNAVAILABLE with the
//   client's RetryPolicy (backoff with full jitter, never past the deadline).
// - Status codes and messages are the daemon's, as over gRPC.
// - Put reads `block` only until `done` runs, and, unless `caller_waits`,
//   only before Put returns (it is copied first).
// - GetInto writes only into [dst, dst + capacity), only before `done` runs;
//   a block larger than `capacity` answers OUT_OF_RANGE naming "capacity".
// - `caller_waits`: the caller blocks until `done` runs (the sync API), so
//   the call may run on the calling thread. Otherwise the method returns at
//   once and `done` runs on a thread of the transport.
// - `done` must be quick and must not block on another call of the same
//   transport. The destructor answers calls still pending with CANCELLED.
// Threading: every method is thread-safe.
#ifndef STRATA_CLIENT_BULK_TRANSPORT_H_
#define STRATA_CLIENT_BULK_TRANSPORT_H_

#include <cstddef>
#include <cstdint>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/strata_client.h"

namespace strata::client::internal {

class BulkTransport {
 public:
  using PutCallback = absl::AnyInvocable<void(absl::StatusOr<PutResult>)>;
  using GetCallback = absl::AnyInvocable<void(absl::StatusOr<GetResult>)>;
  using SizeCallback = absl::AnyInvocable<void(absl::StatusOr<size_t>)>;

  virtual ~BulkTransport() = default;

  virtual void Put(const BlockKey& key, absl::Span<const uint8_t> block,
                   bool caller_waits, const PutOptions& put,
                   absl::Time deadline, PutCallback done) = 0;
  virtual void Get(const BlockKey& key, bool caller_waits, absl::Time deadline,
                   GetCallback done) = 0;
  virtual void GetInto(const BlockKey& key, uint8_t* dst, size_t capacity,
                       bool caller_waits, absl::Time deadline,
                       SizeCallback done) = 0;
  // Labels (tenant + model bytes) up to this size fit a request header.
  virtual size_t max_label_bytes() const = 0;
};

}  // namespace strata::client::internal

#endif  // STRATA_CLIENT_BULK_TRANSPORT_H_
