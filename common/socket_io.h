// Blocking whole-buffer socket I/O for the socket data plane (daemon:
// cluster/tcp_data_plane.cc, client: client/tcp_transport.cc). One recv with
// MSG_WAITALL or one sendmsg moves a whole block with no wake-up per
// segment. Header-only.
//
// Time limits. Linux applies SO_RCVTIMEO / SO_SNDTIMEO to each syscall, and
// a syscall that moved some bytes before its timeout returns them without an
// error, so a loop of syscalls can outlast any one timeout. Hence:
// - With a finite `deadline` (on the SteadyNow() clock) every syscall that
//   may wait is limited to the time left until it (the socket's timeouts
//   are set before each one), and once it has passed the transfer ends
//   kTimedOut, however much moved. The client's calls use this. Each call
//   first moves what it can without waiting (MSG_DONTWAIT, no timeout to
//   set): a reply that is already there, or a request the socket buffer
//   takes whole, costs one syscall instead of two.
// - With an infinite deadline the socket's own timeouts apply to each
//   syscall: the transfer ends kTimedOut only when one syscall moved
//   nothing in that time ("no progress"). The daemon uses this.
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
#include <cstring>

#include "absl/time/time.h"
#include "common/steady_time.h"

namespace strata::sockio {

// How a transfer ended.
enum class Io {
  kOk,        // Every byte moved.
  kClosed,    // The peer closed the connection (EOF) or reset it.
  kTimedOut,  // The deadline passed, or a syscall made no progress.
  kError,     // Another errno (in errno).
};

inline timeval TimevalOf(absl::Duration timeout) {
  timeval tv{};  // Zero: no timeout.
  if (timeout != absl::InfiniteDuration()) {
    tv = absl::ToTimeval(std::max(timeout, absl::Milliseconds(1)));
  }
  return tv;
}

// Sets SO_RCVTIMEO and SO_SNDTIMEO to `timeout` (at least 1 ms; an infinite
// duration clears them). False when setsockopt fails.
inline bool SetIoTimeout(int fd, absl::Duration timeout) {
  const timeval tv = TimevalOf(timeout);
  return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
         setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0;
}

// Before one syscall: false when `deadline` has passed; else limits the
// socket's `option` (SO_RCVTIMEO or SO_SNDTIMEO) to the time left.
inline bool LimitToDeadline(int fd, int option, absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return true;
  const absl::Duration left = deadline - SteadyNow();
  if (left <= absl::ZeroDuration()) return false;
  const timeval tv = TimevalOf(left);
  setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv));
  return true;
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
inline Io RecvAll(int fd, void* dst, size_t size, size_t* received = nullptr,
                  absl::Time deadline = absl::InfiniteFuture()) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  size_t done = 0;
  Io result = Io::kOk;
  bool without_waiting = deadline != absl::InfiniteFuture();
  while (done < size) {
    if (without_waiting ? SteadyNow() >= deadline
                        : !LimitToDeadline(fd, SO_RCVTIMEO, deadline)) {
      result = Io::kTimedOut;
      break;
    }
    const ssize_t n = recv(fd, p + done, size - done,
                           without_waiting ? MSG_DONTWAIT : MSG_WAITALL);
    const bool tried_without_waiting = without_waiting;
    without_waiting = false;
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n == 0) {
      result = Io::kClosed;
      break;
    } else if (tried_without_waiting &&
               (errno == EAGAIN || errno == EWOULDBLOCK)) {
      continue;  // Nothing there yet: wait for it, within the deadline.
    } else if (errno != EINTR) {
      result = ErrnoIo(errno);
      break;
    }
  }
  if (received != nullptr) *received = done;
  return result;
}

// Receives exactly `size` bytes into `dst`, `chunk` bytes at a time, and
// calls on_chunk(start, length) for each piece once it landed: the caller
// works on bytes still in the cache while the sender goes on sending.
template <typename OnChunk>
Io RecvInChunks(int fd, uint8_t* dst, size_t size, size_t chunk,
                OnChunk on_chunk, size_t* received = nullptr,
                absl::Time deadline = absl::InfiniteFuture()) {
  chunk = std::max<size_t>(chunk, 1);
  size_t done = 0;
  Io result = Io::kOk;
  while (done < size && result == Io::kOk) {
    const size_t n = std::min(chunk, size - done);
    size_t got = 0;
    result = RecvAll(fd, dst + done, n, &got, deadline);
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
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(size, sizeof(scratch)));
    if (Io r = RecvAll(fd, scratch, n); r != Io::kOk) return r;
    size -= n;
  }
  return Io::kOk;
}

// Sends every byte of iov[0, count) (which it advances), without SIGPIPE.
// `pass_fd` >= 0: that descriptor rides on the first bytes sent (SCM_RIGHTS,
// Unix sockets), once.
inline Io SendAll(int fd, iovec* iov, int count,
                  absl::Time deadline = absl::InfiniteFuture(),
                  int pass_fd = -1) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  bool without_waiting = deadline != absl::InfiniteFuture();
  while (count > 0) {
    if (without_waiting ? SteadyNow() >= deadline
                        : !LimitToDeadline(fd, SO_SNDTIMEO, deadline)) {
      return Io::kTimedOut;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(count);
    if (pass_fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
    }
    const ssize_t n =
        sendmsg(fd, &msg, MSG_NOSIGNAL | (without_waiting ? MSG_DONTWAIT : 0));
    const bool tried_without_waiting = without_waiting;
    without_waiting = false;
    if (n < 0) {
      if (errno == EINTR) continue;
      // The socket buffer is full: wait for room, within the deadline.
      if (tried_without_waiting && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        continue;
      }
      return ErrnoIo(errno);
    }
    pass_fd = -1;  // Sent with those bytes.
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
