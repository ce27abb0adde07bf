// The socket data plane's framing, version 1 (docs/protocol.md, "Socket data
// plane"). Shared by the daemon (cluster/tcp_data_plane.h) and the client
// (client/tcp_transport.h).
//
// The socket plane carries the UCX data plane's messages (common/
// ucx_protocol.h: RequestHeader + labels, ReplyHeader + status message) over
// one plain TCP stream per connection, each message framed as
//
//   TcpFrame (16 bytes) | header_length header bytes | data_length data bytes
//
// Requests and replies alternate on a connection: a client sends one
// request, then reads its reply, then may send the next. PUT data is the
// encoded block; a GET reply that hit carries the block. A receiver that
// finds a bad magic or an impossible header_length cannot trust the stream
// any more and closes the connection.
#ifndef STRATA_COMMON_TCP_PROTOCOL_H_
#define STRATA_COMMON_TCP_PROTOCOL_H_

#include <cstddef>
#include <cstdint>

#include "common/ucx_protocol.h"

namespace strata::tcp {

// "STK1" read as a little-endian uint32: the framing's version 1.
inline constexpr uint32_t kFrameMagic = 0x314B5453;
// A frame with this magic and no header or data is a doorbell: it wakes the
// other end of a local connection to read the message channel
// (common/local_channel.h). Readers skip doorbells wherever they read a
// frame; elsewhere it is broken framing.
inline constexpr uint32_t kDoorbellMagic = 0x4C4C4244;  // "DBLL"

struct TcpFrame {
  uint32_t magic;          // kFrameMagic.
  uint32_t header_length;  // Header bytes after the frame.
  uint64_t data_length;    // Data bytes after the header.
};
static_assert(sizeof(TcpFrame) == 16);

inline bool IsDoorbell(const TcpFrame& f) {
  return f.magic == kDoorbellMagic && f.header_length == 0 &&
         f.data_length == 0;
}

// The largest header either side accepts: a request header with two
// maximal labels (tenant and model lengths are uint16).
inline constexpr size_t kMaxHeaderBytes =
    sizeof(ucx::RequestHeader) + 2 * size_t{UINT16_MAX};

}  // namespace strata::tcp

#endif  // STRATA_COMMON_TCP_PROTOCOL_H_
