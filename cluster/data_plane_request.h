// What the daemon's two bulk data planes (UCX: cluster/ucx_data_plane.h;
// sockets: cluster/tcp_data_plane.h) share: parsing a request header,
// building a reply header, and the store options of a GET. Both speak the
// message format of common/ucx_protocol.h, so they answer the same codes and
// messages for the same bad input.
//
// Thread safety: pure functions.
#ifndef STRATA_CLUSTER_DATA_PLANE_REQUEST_H_
#define STRATA_CLUSTER_DATA_PLANE_REQUEST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "cluster/block_service.h"
#include "common/ucx_protocol.h"
#include "kvstore/block_key.h"
#include "kvstore/tiered_store.h"

namespace strata::cluster {

// The fields of a request header (RequestHeader plus its labels).
struct DataRequest {
  uint64_t request_id = 0;
  uint16_t op = 0;
  uint32_t flags = 0;
  kvstore::BlockKey key;
  std::string tenant, model;
};

// The smallest header that can be answered: version, op, flags and
// request_id. Shorter headers are dropped (there is no id to answer).
inline constexpr size_t kMinAnswerableHeaderBytes = 16;

// Parses `header` (at least kMinAnswerableHeaderBytes long) into `out`.
// request_id, op and flags are filled even when the rest is refused, so the
// caller can answer. INVALID_ARGUMENT naming "version" (another protocol
// version) or "header" (its length disagrees with the label lengths).
absl::Status ParseDataRequest(absl::Span<const uint8_t> header,
                              DataRequest* out);

// GET and PUT are counted as the Put / Get RPCs; PING is not.
bool IsBlockOp(uint16_t op);

// The reply header for `status` (its message truncated to
// ucx::kMaxMessageBytes), followed by the message bytes.
std::vector<uint8_t> ReplyHeaderBytes(uint16_t op, uint64_t request_id,
                                      const absl::Status& status,
                                      uint32_t flags);

// Before anything is set aside for a PUT of `length` bytes: UNAVAILABLE
// ("draining: ...") while the daemon drains, INVALID_ARGUMENT naming
// "block" above max_block_bytes (the store's own message).
absl::Status CheckPutAdmissible(const ServiceContext* ctx, uint64_t length);

// The store options of a PUT: durability from the request's flags (unset:
// the daemon's default), its labels, and how long it waits for another
// write of the key in flight.
kvstore::PutOptions PutOptionsFor(const DataRequest& req,
                                  absl::Duration in_flight_write_wait);

// The store options for a GET: a client that verifies the block where it
// lands (kRequestClientVerifies) is served a DRAM copy without the daemon's
// own checksum pass.
kvstore::GetOptions GetOptionsFor(uint32_t request_flags);
// The reply flags of a hit.
uint32_t ReplyFlagsFor(const kvstore::BlockLease& lease);

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_DATA_PLANE_REQUEST_H_
