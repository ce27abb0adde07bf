// A raw connection to the daemon's socket data plane (cluster/
// tcp_data_plane.h) for byte-level tests: it sends whatever a test builds
// and reads replies (and a descriptor passed with one) off the stream.
// Header-only: test code. Not thread-safe.
#ifndef STRATA_TESTS_CLUSTER_RAW_DATA_PLANE_CONNECTION_H_
#define STRATA_TESTS_CLUSTER_RAW_DATA_PLANE_CONNECTION_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/tcp_protocol.h"
#include "common/ucx_protocol.h"
#include "gtest/gtest.h"
#include "kvstore/block_key.h"

namespace strata::testing {

// A reply as read off the stream.
struct Reply {
  ucx::ReplyHeader header{};
  std::string message;
  std::vector<uint8_t> data;
  absl::StatusCode code() const {
    return static_cast<absl::StatusCode>(header.status);
  }
};

// One raw connection to the plane: TCP to "host:port" (loopback), or to a
// Unix socket path (one that starts with '/').
class RawConnection {
 public:
  explicit RawConnection(const std::string& address) {
    if (!address.empty() && address[0] == '/') {
      fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::memcpy(addr.sun_path, address.data(),
                  std::min(address.size(), sizeof(addr.sun_path) - 1));
      connected_ =
          connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
      return;
    }
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(
        std::stoi(address.substr(address.rfind(':') + 1))));
    connected_ =
        connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() {
    close(fd_);
    if (passed_fd_ >= 0) close(passed_fd_);
  }

  bool connected() const { return connected_; }

  bool SendBytes(const void* p, size_t n) {
    return send(fd_, p, n, MSG_NOSIGNAL) == static_cast<ssize_t>(n);
  }

  // A request: frame, header (with `key`'s bytes and `flags`), then `data`;
  // `claimed_data` overrides the frame's data_length.
  bool SendRequest(ucx::Op op, uint64_t request_id, const kvstore::BlockKey& key,
                   const std::vector<uint8_t>& data,
                   std::optional<uint64_t> claimed_data = std::nullopt,
                   uint16_t version = ucx::kProtocolVersion,
                   uint32_t flags = 0) {
    ucx::RequestHeader h{};
    h.version = version;
    h.op = static_cast<uint16_t>(op);
    h.flags = flags;
    h.request_id = request_id;
    const std::string k = key.ToBytesString();
    std::memcpy(h.key, k.data(), sizeof(h.key));
    tcp::TcpFrame frame{tcp::kFrameMagic, sizeof(h),
                        claimed_data.value_or(data.size())};
    return SendBytes(&frame, sizeof(frame)) && SendBytes(&h, sizeof(h)) &&
           (data.empty() || SendBytes(data.data(), data.size()));
  }

  // The next reply; nullopt when the daemon closed the connection first. A
  // descriptor that came with it is kept (passed_fd()).
  std::optional<Reply> ReadReply() {
    tcp::TcpFrame frame{};
    iovec iov{&frame, sizeof(frame)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    // Late doorbells of a message channel are skipped.
    do {
      msg.msg_controllen = sizeof(control);
      if (recvmsg(fd_, &msg, MSG_WAITALL) != sizeof(frame)) return std::nullopt;
    } while (tcp::IsDoorbell(frame));
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr;
         cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
        if (passed_fd_ >= 0) close(passed_fd_);
        std::memcpy(&passed_fd_, CMSG_DATA(cm), sizeof(int));
      }
    }
    EXPECT_EQ(frame.magic, tcp::kFrameMagic);
    Reply r;
    std::vector<char> header(frame.header_length);
    if (!RecvBytes(header.data(), header.size())) return std::nullopt;
    std::memcpy(&r.header, header.data(), sizeof(r.header));
    r.message.assign(header.data() + sizeof(r.header),
                     header.size() - sizeof(r.header));
    r.data.resize(frame.data_length);
    if (!RecvBytes(r.data.data(), r.data.size())) return std::nullopt;
    return r;
  }

  // The descriptor the last reply carried (owned here), or -1.
  int passed_fd() const { return passed_fd_; }
  int fd() const { return fd_; }

  // The next frame, whatever it is (a doorbell, a reply's first bytes),
  // read or (peek) left there.
  bool ReadFrame(tcp::TcpFrame* frame, bool peek = false) {
    return recv(fd_, frame, sizeof(*frame),
                MSG_WAITALL | (peek ? MSG_PEEK : 0)) ==
           static_cast<ssize_t>(sizeof(*frame));
  }

  // Blocks until the daemon closes the connection (true) or sends anything
  // (false).
  bool WaitForClose() {
    char c;
    return recv(fd_, &c, 1, 0) <= 0;
  }

 private:
  bool RecvBytes(void* p, size_t n) {
    return n == 0 || recv(fd_, p, n, MSG_WAITALL) == static_cast<ssize_t>(n);
  }

  int fd_ = -1;
  int passed_fd_ = -1;
  bool connected_ = false;
};

}  // namespace strata::testing

#endif  // STRATA_TESTS_CLUSTER_RAW_DATA_PLANE_CONNECTION_H_
