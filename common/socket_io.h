// Blocking whole-buffer socket I/O for the socket data plane (daemon:
// cluster/tcp_data_plane.cc, client: client/tcp_transport.cc). Timeouts come
// from SO_RCVTIMEO / SO_SNDTIMEO on the socket (SetIoTimeout): one recv with
// MSG_WAITALL or one sendmsg moves a whole block with no wake-up per
// segment. Header-only.
//
// Thread safety: one thread per socket and direction at a time.
#ifndef STRATA_COMMON_SOCKET_IO_H_
#define STRATA_COMMON_SOCKET_IO_H_

#include <errno.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "absl/time/time.h"

namespace strata::sockio {

// How a transfer ended.
enum class Io {
  kOk,        // Every byte moved.
  kClosed,    // The peer closed the connection (EOF) or reset it.
  kTimedOut,  // The socket's timeout passed (EAGAIN).
  kError,     // Another errno.
};

// Sets SO_RCVTIMEO and SO_SNDTIMEO to `timeout` (at least 1 ms; an infinite
// duration clears them). False when setsockopt fails.
inline bool SetIoTimeout(int fd, absl::Duration timeout) {
  timeval tv{};
  if (timeout != absl::InfiniteDuration()) {
    timeout = std::max(timeout, absl::Milliseconds(1));
    tv = absl::ToTimeval(timeout);
  }
  return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
         setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0;
}

inline Io ErrnoIo(int error) {
  if (error == EAGAIN || error == EWOULDBLOCK) return Io::kTimedOut;
  if (error == ECONNRESET || error == EPIPE || error == ENOTCONN ||
      error == ESHUTDOWN) {
    return Io::kClosed;
  }
  return Io::kError;
}

// Receives exactly `size` bytes into `dst`. `*received` (optional) counts
// the bytes that arrived, also when it fails.
inline Io RecvAll(int fd, void* dst, size_t size, size_t* received = nullptr) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  size_t done = 0;
  Io result = Io::kOk;
  while (done < size) {
    const ssize_t n = recv(fd, p + done, size - done, MSG_WAITALL);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n == 0) {
      result = Io::kClosed;
      break;
    } else if (errno != EINTR) {
      result = ErrnoIo(errno);
      break;
    }
  }
  if (received != nullptr) *received = done;
  return result;
}

// Receives exactly `size` bytes into `dst`, `chunk` bytes at a time, and
// calls on_chunk(span of what just landed) after each piece: the caller
// works on bytes still in the cache while the sender goes on sending.
template <typename OnChunk>
Io RecvInChunks(int fd, uint8_t* dst, size_t size, size_t chunk,
                OnChunk on_chunk, size_t* received = nullptr) {
  chunk = std::max<size_t>(chunk, 1);
  size_t done = 0;
  Io result = Io::kOk;
  while (done < size && result == Io::kOk) {
    const size_t n = std::min(chunk, size - done);
    size_t got = 0;
    result = RecvAll(fd, dst + done, n, &got);
    if (result == Io::kOk) on_chunk(dst + done, n);
    done += got;
  }
  if (received != nullptr) *received = done;
  return result;
}

// Receives and drops `size` bytes (a refused block), through a small buffer.
inline Io Discard(int fd, uint64_t size) {
  uint8_t scratch[64 << 10];
  while (size > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, sizeof(scratch)));
    if (Io r = RecvAll(fd, scratch, n); r != Io::kOk) return r;
    size -= n;
  }
  return Io::kOk;
}

// Sends every byte of iov[0, count) (which it advances), without SIGPIPE.
inline Io SendAll(int fd, iovec* iov, int count) {
  while (count > 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(count);
    const ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoIo(errno);
    }
    size_t left = static_cast<size_t>(n);
    while (count > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return Io::kOk;
}

}  // namespace strata::sockio

#endif  // STRATA_COMMON_SOCKET_IO_H_
