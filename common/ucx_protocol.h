// The UCX data plane's wire format, version 1 (docs/protocol.md, "Data
// plane"). Shared by the daemon (cluster/ucx_data_plane.h) and the client
// (client/ucx_transport.h).
//
// Every message is one UCX active message (ucp_am_send_nbx): a small header
// in the AM header, the block (if any) as the AM data, which UCX moves eagerly
// or by rendezvous (zero-copy) as it sees fit. Integers are little-endian
// (the static_assert below pins the host order instead of swapping).
//
//   client -> daemon, AM id kRequestAmId, sent with UCP_AM_SEND_FLAG_REPLY:
//     RequestHeader, then tenant_length + model_length label bytes;
//     data: the encoded block for PUT, nothing for GET and PING.
//   daemon -> client, AM id kReplyAmId, on the endpoint the request came on:
//     ReplyHeader, then message_length bytes of status message;
//     data: the verified block for a GET that hit, nothing otherwise.
#ifndef STRATA_COMMON_UCX_PROTOCOL_H_
#define STRATA_COMMON_UCX_PROTOCOL_H_

#include <bit>
#include <cstddef>
#include <cstdint>

namespace strata::ucx {

static_assert(std::endian::native == std::endian::little,
              "the data-plane headers are little-endian host structs");

inline constexpr uint16_t kProtocolVersion = 1;

// Active-message ids.
inline constexpr unsigned kRequestAmId = 1;  // Handled by the daemon.
inline constexpr unsigned kReplyAmId = 2;    // Handled by the client.

enum class Op : uint16_t {
  kGet = 1,
  kPut = 2,
  kPing = 3,  // Empty round trip: proves the connection works.
  // Local connections of the socket plane only (a Unix socket; docs/
  // protocol.md, "Local connections"); other connections answer
  // FAILED_PRECONDITION naming "op".
  kMapArena = 4,    // The reply carries the shared DRAM arena's memfd.
  kReserve = 5,     // PUT, step 1: data = u64 block length; reply data = u64
                    // arena offset where the client writes the block.
  kCommit = 6,      // PUT, step 2: the reserved block was written; commit it.
  kRelease = 7,     // Drops the lease of an in-arena GET. No reply.
  kPutSpare = 8,    // PUT in one step: data = u64 block length; the block was
                    // written into the connection's spare range (below).
  kMapChannel = 9,  // The reply carries the connection's message channel, a
                    // memfd (common/local_channel.h).
};

// RequestHeader::flags.
inline constexpr uint32_t kRequestDurable = 1u << 0;  // Unset: daemon default.
// GET: the client verifies the block's checksum where it lands, so the
// daemon may serve a DRAM copy without its own pass. On a mismatch the
// client asks again without it.
inline constexpr uint32_t kRequestClientVerifies = 1u << 1;
// GET on a local connection: answer with where the block lies in the shared
// arena (reply data = u64 offset, u64 length; kReplyInArena) and hold its
// lease until the connection's next message, instead of sending its bytes.
inline constexpr uint32_t kRequestInArena = 1u << 2;
// COMMIT: the client checked the block's checksum while it copied it into
// the arena, so the daemon checks only its header and length.
inline constexpr uint32_t kRequestVerifiedInPlace = 1u << 3;
// COMMIT or PUT_SPARE: afterwards set aside a spare range of the same size
// for this connection's next put (kReplySpare).
inline constexpr uint32_t kRequestSpareNext = 1u << 4;

// ReplyHeader::flags.
inline constexpr uint32_t kReplyAlreadyPresent = 1u << 0;  // PUT.
inline constexpr uint32_t kReplyServedFromSsd = 1u << 1;   // GET hit.
inline constexpr uint32_t kReplyInArena = 1u << 2;  // GET hit: see above.
// COMMIT or PUT_SPARE: the connection holds a spare range; reply data = u64
// offset, u64 arena token. Without it the connection holds none (the
// daemon dropped any it held).
inline constexpr uint32_t kReplySpare = 1u << 3;

struct RequestHeader {
  uint16_t version;     // kProtocolVersion.
  uint16_t op;          // Op.
  uint32_t flags;       // kRequest*.
  uint64_t request_id;  // Echoed in the reply; unique per connection.
  uint8_t key[16];      // Big-endian block key (docs/keys.md).
  uint16_t tenant_length;  // Label bytes after this header (PUT only).
  uint16_t model_length;
  uint32_t reserved;       // Zero.
};
static_assert(sizeof(RequestHeader) == 40);

struct ReplyHeader {
  uint16_t version;     // kProtocolVersion.
  uint16_t op;          // The request's op.
  int32_t status;       // absl::StatusCode (= gRPC code); 0 = OK.
  uint64_t request_id;  // The request's.
  uint32_t message_length;  // Status message bytes after this header.
  uint32_t flags;           // kReply*.
};
static_assert(sizeof(ReplyHeader) == 24);

// Status messages longer than this are truncated (they travel in the AM
// header, which UCX bounds at about 8 KiB on the transports we use).
inline constexpr size_t kMaxMessageBytes = 1024;

}  // namespace strata::ucx

#endif  // STRATA_COMMON_UCX_PROTOCOL_H_
