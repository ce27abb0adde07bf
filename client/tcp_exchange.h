// TcpTransport's per-call record (client/tcp_transport.h), shared by its
// source files: tcp_transport.cc (connections, round trips, calls) and
// tcp_transport_local.cc (the shared arena and the message channel of local
// connections). Internal to the client library.
#ifndef STRATA_CLIENT_TCP_EXCHANGE_H_
#define STRATA_CLIENT_TCP_EXCHANGE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/tcp_transport.h"
#include "common/ucx_protocol.h"

namespace strata::client::internal {

struct TcpTransport::Exchange {
  ucx::Op op = ucx::Op::kPing;
  BlockKey key;
  uint32_t flags = 0;
  std::string tenant, model;
  absl::Span<const uint8_t> block;  // PUT.
  std::vector<uint8_t> copy;        // PUT without caller_waits: the block.
  uint64_t block_length = 0;        // RESERVE: sent as its data.
  // GET: into [dst, dst + capacity) when dst is set, else into `landed`.
  uint8_t* dst = nullptr;
  size_t capacity = 0;
  std::vector<uint8_t> landed;
  absl::Time deadline;
  uint64_t request_id = 0;
  // The reply.
  uint32_t reply_flags = 0;
  size_t received = 0;
  // The data of replies that carry a few words, not a block: RESERVE's
  // offset, an in-arena GET's offset and length, MAP_ARENA's token.
  uint64_t words[3] = {0, 0, 0};
  int passed_fd = -1;  // MAP_ARENA: the arena's memfd (owned by the caller).
  // GET: the checksum check of the block, hashed as it landed.
  absl::Status landed_check;

  absl::Span<const uint8_t> LandedBytes() const {
    return dst != nullptr ? absl::MakeConstSpan(dst, received)
                          : absl::MakeConstSpan(landed);
  }

  // A step of this call on the shared arena (RESERVE, COMMIT, PUT_SPARE,
  // RELEASE): its key, id and deadline; for RESERVE and PUT_SPARE also the
  // flags, labels and the block's length.
  Exchange Step(ucx::Op step_op) const {
    Exchange e;
    e.op = step_op;
    e.key = key;
    e.deadline = deadline;
    e.request_id = request_id;
    if (step_op == ucx::Op::kReserve || step_op == ucx::Op::kPutSpare) {
      e.flags = flags;
      e.tenant = tenant;
      e.model = model;
      e.block_length = block.size();
    }
    return e;
  }
};

}  // namespace strata::client::internal

#endif  // STRATA_CLIENT_TCP_EXCHANGE_H_
