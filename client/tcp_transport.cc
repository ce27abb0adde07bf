#include "client/tcp_transport.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/tcp_exchange.h"
#include "common/local_channel.h"
#include "common/socket_io.h"
#include "common/steady_time.h"
#include "common/tcp_protocol.h"
#include "common/ucx_protocol.h"
#include "common/ucx_worker_loop.h"
#include "kvstore/block_format.h"

namespace strata::client::internal {
namespace {

using sockio::Io;

// Socket-plane calls of this process with a request out (in Attempt), and
// 1 while one of them is polling for its reply. A call polls only when it
// is the only one out: with others in flight, polling takes the cores of a
// small machine from the daemon and from them (their p99 tripled with four
// client threads on the 2-vCPU VM). UCX's caller spin keeps its own count
// (common/ucx_worker_loop.cc).
std::atomic<int> calls_out{0};
std::atomic<int> callers_polling{0};
// Calls of this process polling their message channels (local connections;
// at most local::ChannelPollers() at once, whatever else is in flight).
std::atomic<int> channel_pollers{0};

// How long a call polls for its reply before it sleeps in recv: a reply
// that comes within it costs no sleep and no wake-up. The environment
// variable STRATA_TCP_CALLER_SPIN_US overrides it (0: never poll).
absl::Duration CallerSpin() {
  static const absl::Duration spin = [] {
    const char* env = std::getenv("STRATA_TCP_CALLER_SPIN_US");
    return env != nullptr ? absl::Microseconds(std::atoi(env))
                          : TcpTransport::kCallerSpin;
  }();
  return spin;
}

// Polls `fd` for readable bytes, yielding the core between polls, for up to
// CallerSpin() (not past `deadline`), when no other call is polling.
void PollForReply(int fd, absl::Time deadline) {
  const absl::Duration spin = CallerSpin();
  if (spin <= absl::ZeroDuration()) return;
  if (calls_out.load(std::memory_order_acquire) != 1) return;
  int idle = 0;
  if (!callers_polling.compare_exchange_strong(idle, 1,
                                               std::memory_order_acq_rel)) {
    return;  // Another call is polling.
  }
  const absl::Time until = std::min(deadline, SteadyNow() + spin);
  pollfd p{fd, POLLIN, 0};
  while (poll(&p, 1, 0) == 0 && SteadyNow() < until) sched_yield();
  callers_polling.store(0, std::memory_order_release);
}

// Reads the next frame that is not a doorbell (a late one may wait on a
// connection with a message channel).
Io RecvFrame(int fd, tcp::TcpFrame* frame, absl::Time deadline) {
  for (;;) {
    const Io io = sockio::RecvAll(fd, frame, sizeof(*frame), nullptr, deadline);
    if (io != Io::kOk || !tcp::IsDoorbell(*frame)) return io;
  }
}

// Whether an idle connection's unread bytes, if any, are only late
// doorbells (which it consumes): then the connection is still usable.
bool OnlyDoorbellsWaiting(int fd) {
  for (;;) {
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0) return true;  // Nothing there (or poll failed).
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return false;
    tcp::TcpFrame f{};
    if (recv(fd, &f, sizeof(f), MSG_PEEK | MSG_DONTWAIT) !=
            static_cast<ssize_t>(sizeof(f)) ||
        !tcp::IsDoorbell(f) ||
        recv(fd, &f, sizeof(f), MSG_DONTWAIT) !=
            static_cast<ssize_t>(sizeof(f))) {
      return false;
    }
  }
}

// Posts a request into the channel's request slot as request number `seq`
// and rings the daemon if it sleeps. First waits until the daemon has taken
// the previous request, number `previous` (at once: every request through
// the channel but RELEASE is answered, and this client sends none there).
Io PostToChannel(int fd, local::LocalChannel& channel, const iovec* iov,
                 int count, uint32_t previous, uint32_t seq,
                 absl::Time deadline) {
  local::ChannelSlot& slot = channel.request;
  for (unsigned round = 1;
       slot.taken.load(std::memory_order_acquire) != previous; ++round) {
    if (SteadyNow() >= deadline) return Io::kTimedOut;
    pollfd p{fd, POLLRDHUP, 0};
    if (round % 64 == 0 && poll(&p, 1, 0) > 0) return Io::kClosed;
    sched_yield();
  }
  size_t at = 0;
  for (int i = 0; i < count; ++i) {
    std::memcpy(slot.bytes + at, iov[i].iov_base, iov[i].iov_len);
    at += iov[i].iov_len;
  }
  slot.length.store(static_cast<uint32_t>(at), std::memory_order_relaxed);
  slot.seq.store(seq, std::memory_order_seq_cst);
  return local::RingIfAsleep(fd, slot, deadline);
}

// Waits for the reply to request `seq`: polled in the channel for
// CallerSpin(), then asleep on the socket until a doorbell. A
// reply in the channel is copied into *message and its frame into *frame;
// one that came on the socket leaves *message empty and *frame read from
// the socket (its header and data follow there).
Io AwaitChannelReply(int fd, local::LocalChannel& channel, uint32_t seq,
                     absl::Time deadline, tcp::TcpFrame* frame,
                     std::vector<uint8_t>* message) {
  local::ChannelSlot& slot = channel.reply;
  auto arrived = [&] {
    return slot.seq.load(std::memory_order_acquire) == seq;
  };
  const absl::Duration spin = CallerSpin();
  if (!arrived() && spin > absl::ZeroDuration()) {
    local::ChannelPollerSlot slot_taken(channel_pollers);
    if (slot_taken.admitted()) {
      const absl::Time until = std::min(deadline, SteadyNow() + spin);
      while (!arrived() && SteadyNow() < until) sched_yield();
    }
  }
  while (!arrived()) {
    slot.reader_asleep.store(1, std::memory_order_seq_cst);
    if (slot.seq.load(std::memory_order_seq_cst) == seq) {
      slot.reader_asleep.store(0, std::memory_order_relaxed);
      break;
    }
    const Io io = sockio::RecvAll(fd, frame, sizeof(*frame), nullptr, deadline);
    slot.reader_asleep.store(0, std::memory_order_relaxed);
    if (io != Io::kOk) return io;
    if (!tcp::IsDoorbell(*frame)) return Io::kOk;  // The reply, on the socket.
  }
  // Copied out before it is looked at (the daemon's page).
  const uint32_t length = slot.length.load(std::memory_order_relaxed);
  if (length == local::kReplyOnSocket) return RecvFrame(fd, frame, deadline);
  if (length < sizeof(*frame) || length > local::kChannelMessageBytes) {
    *frame = tcp::TcpFrame{};  // Read as a malformed reply.
    message->assign(sizeof(*frame), 0);
    return Io::kOk;
  }
  message->assign(slot.bytes, slot.bytes + length);
  std::memcpy(frame, message->data(), sizeof(*frame));
  return Io::kOk;
}

// A GET's block is received this many bytes at a time, each piece hashed as
// it lands (TcpTransport::kVerifyChunkBytes). The environment variable
// STRATA_TCP_GET_CHUNK_BYTES overrides it (measurements; 0 or unset: the
// default).
size_t VerifyChunkBytes() {
  static const size_t bytes = [] {
    const char* env = std::getenv("STRATA_TCP_GET_CHUNK_BYTES");
    const size_t v = env != nullptr ? std::strtoull(env, nullptr, 10) : 0;
    return v != 0 ? v : TcpTransport::kVerifyChunkBytes;
  }();
  return bytes;
}

// Receives exactly `size` bytes like sockio::RecvAll, and the descriptor
// that came with them (SCM_RIGHTS) into *passed (-1 when none came).
Io RecvWithDescriptor(int fd, void* dst, size_t size, int* passed,
                      absl::Time deadline) {
  *passed = -1;
  if (!sockio::LimitToDeadline(fd, SO_RCVTIMEO, deadline)) {
    return Io::kTimedOut;
  }
  iovec iov{dst, size};
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_WAITALL | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n == 0) return Io::kClosed;
  if (n < 0) return sockio::ErrnoIo(errno);
  // The first descriptor is the one; any other is closed, not leaked.
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr;
       cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd_in = -1;
      std::memcpy(&fd_in, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
      if (*passed < 0) {
        *passed = fd_in;
      } else {
        close(fd_in);
      }
    }
  }
  const size_t got = static_cast<size_t>(n);
  if (got == size) return Io::kOk;
  return sockio::RecvAll(fd, static_cast<uint8_t*>(dst) + got, size - got,
                         nullptr, deadline);
}

absl::Status DeadlineError() {
  return absl::DeadlineExceededError(
      "deadline: the daemon did not answer within the call's deadline "
      "(socket data plane)");
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcpTransport>> TcpTransport::Create(
    const TcpTransportOptions& options) {
  std::unique_ptr<TcpTransport> t(new TcpTransport());
  t->options_ = options;
  if (!options.local_path.empty()) {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    if (options.local_path.size() >= sizeof(un.sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "local_path: \"", options.local_path, "\" is longer than ",
          sizeof(un.sun_path) - 1, " bytes"));
    }
    std::memcpy(un.sun_path, options.local_path.data(),
                options.local_path.size());
    std::memcpy(&t->addr_, &un, sizeof(un));
    t->addr_len_ = sizeof(un);
  } else if (absl::Status s = ucx::ParseSockAddr(
                 "address", options.address, &t->addr_, &t->addr_len_);
             !s.ok()) {
    return s;
  }
  for (int i = 0; i < std::max(1, options.async_threads); ++i) {
    t->threads_.emplace_back([p = t.get()] { p->AsyncLoop(); });
  }
  return t;
}

TcpTransport::~TcpTransport() {
  std::deque<absl::AnyInvocable<void(bool)>> cancelled;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    // Calls in flight end now: their blocked I/O returns.
    for (int fd : busy_) shutdown(fd, SHUT_RDWR);
    cancelled.swap(queue_);
  }
  for (auto& fn : cancelled) fn(true);
  for (std::thread& t : threads_) t.join();
  absl::MutexLock lock(&mu_);
  for (int fd : idle_) {
    ForgetConnection(fd);
    close(fd);
  }
  idle_.clear();
  spares_.clear();
  for (auto& [fd, channel] : channels_) {
    if (channel->mapped != nullptr) {
      munmap(channel->mapped, local::kChannelBytes);
    }
  }
  channels_.clear();
  if (arena_base_ != nullptr && !arena_unmapped_.exchange(true)) {
    munmap(arena_base_, arena_bytes_);
  }
}

const std::string& TcpTransport::Peer() const {
  return options_.local_path.empty() ? options_.address : options_.local_path;
}

// ---- Connections.

absl::StatusOr<int> TcpTransport::TakeConnection(absl::Time deadline) {
  for (;;) {
    int fd = -1;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        return absl::CancelledError("client: the client is being destroyed");
      }
      if (idle_.empty()) break;
      fd = idle_.back();
      idle_.pop_back();
      busy_.insert(fd);
    }
    // An idle connection has nothing to read but late doorbells: anything
    // else there (the daemon closed it, restarted, or dropped it) means it
    // is not usable. Skipping it here saves the call a failed attempt and a
    // retry's backoff.
    if (OnlyDoorbellsWaiting(fd)) return fd;
    CloseConnection(fd);
  }
  const int fd = socket(addr_.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("data_plane: socket: ", std::strerror(errno)));
  }
  const int one = 1;
  if (addr_.ss_family != AF_UNIX) {
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  // connect() honours SO_SNDTIMEO.
  sockio::SetIoTimeout(fd, deadline - SteadyNow());
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr_), addr_len_) != 0) {
    const int error = errno;
    close(fd);
    if (error == EINPROGRESS || error == EAGAIN) return DeadlineError();
    return absl::UnavailableError(absl::StrCat(
        "data_plane: connecting to ", Peer(), ": ", std::strerror(error)));
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    close(fd);
    return absl::CancelledError("client: the client is being destroyed");
  }
  busy_.insert(fd);
  return fd;
}

void TcpTransport::ReturnConnection(int fd) {
  absl::MutexLock lock(&mu_);
  busy_.erase(fd);
  if (stopping_ || idle_.size() >= options_.max_idle_connections) {
    ForgetConnection(fd);
    close(fd);
  } else {
    idle_.push_back(fd);
  }
}

void TcpTransport::CloseConnection(int fd) {
  absl::MutexLock lock(&mu_);
  busy_.erase(fd);
  ForgetConnection(fd);
  close(fd);
}

void TcpTransport::ForgetConnection(int fd) {
  spares_.erase(fd);  // The daemon frees it with the connection.
  auto it = channels_.find(fd);
  if (it == channels_.end()) return;
  if (it->second->mapped != nullptr) {
    munmap(it->second->mapped, local::kChannelBytes);
  }
  channels_.erase(it);
}

// ---- One exchange.

absl::Status TcpTransport::Attempt(Exchange& x) {
  if (x.deadline <= SteadyNow()) return DeadlineError();
  calls_out.fetch_add(1, std::memory_order_acq_rel);
  absl::Cleanup out = [] { calls_out.fetch_sub(1, std::memory_order_acq_rel); };
  absl::StatusOr<int> taken = TakeConnection(x.deadline);
  if (!taken.ok()) return taken.status();
  const int fd = *taken;
  bool broken = false;
  absl::Status s;
  // A user of the arena from before it looks at arena_stale_ until the end
  // of the call (the order LeaveArena's unmapping relies on).
  const bool mapped = arena_base_ != nullptr;
  if (mapped) arena_users_.fetch_add(1, std::memory_order_seq_cst);
  absl::Cleanup leave_arena = [this, mapped] {
    if (mapped) LeaveArena();
  };
  const bool in_arena = mapped && !arena_stale_.load(std::memory_order_seq_cst);
  x.flags &= ~ucx::kRequestInArena;  // Only GetInArena asks for it.
  if (in_arena && x.op == ucx::Op::kPut) {
    s = PutInArena(fd, x, &broken);
  } else if (in_arena && x.op == ucx::Op::kGet) {
    s = GetInArena(fd, x, &broken);
  } else {
    s = RoundTrip(fd, x, &broken);
  }
  if (broken) {
    CloseConnection(fd);
  } else {
    ReturnConnection(fd);
  }
  return s;
}

absl::Status TcpTransport::RoundTrip(int fd, Exchange& x, bool* broken,
                                     Channel* channel) {
  // Any failure below leaves the stream mid-message: the connection closes
  // (which is also what cancels the transfer at the daemon).
  auto fail = [&](Io io, absl::string_view what) {
    const int error = errno;
    *broken = true;
    if (io == Io::kTimedOut) return DeadlineError();
    return absl::UnavailableError(absl::StrCat(
        "data_plane: ", what, " ", Peer(),
        io == Io::kClosed ? ": the daemon closed the connection"
                          : absl::StrCat(": ", std::strerror(error))));
  };
  auto malformed = [&](absl::string_view what) {
    *broken = true;
    return absl::InternalError(
        absl::StrCat("data_plane: ", Peer(), " answered with ", what));
  };

  ucx::RequestHeader h{};
  h.version = ucx::kProtocolVersion;
  h.op = static_cast<uint16_t>(x.op);
  h.flags = x.flags;
  h.request_id = x.request_id;
  const std::string key = x.key.ToBytesString();
  std::memcpy(h.key, key.data(), sizeof(h.key));
  h.tenant_length = static_cast<uint16_t>(x.tenant.size());
  h.model_length = static_cast<uint16_t>(x.model.size());
  std::string header(reinterpret_cast<const char*>(&h), sizeof(h));
  header += x.tenant;
  header += x.model;
  absl::Span<const uint8_t> data = x.block;
  if (x.op == ucx::Op::kReserve || x.op == ucx::Op::kPutSpare) {
    data = absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&x.block_length),
                               sizeof(x.block_length));
  }
  tcp::TcpFrame frame{tcp::kFrameMagic, static_cast<uint32_t>(header.size()),
                      data.size()};
  iovec iov[3] = {{&frame, sizeof(frame)},
                  {header.data(), header.size()},
                  {const_cast<uint8_t*>(data.data()), data.size()}};
  const int iov_count = data.empty() ? 2 : 3;
  const bool via_channel = channel != nullptr && channel->mapped != nullptr &&
                           sizeof(frame) + header.size() + data.size() <=
                               local::kChannelMessageBytes;
  uint32_t seq = 0;
  const uint32_t previous = via_channel ? channel->seq : 0;
  if (via_channel) seq = channel->seq = local::NextRequestNumber(previous);
  const Io sent = via_channel
                      ? PostToChannel(fd, *channel->mapped, iov, iov_count,
                                      previous, seq, x.deadline)
                      : sockio::SendAll(fd, iov, iov_count, x.deadline);
  if (sent == Io::kTimedOut) return fail(sent, "sending the request to");
  if (x.op == ucx::Op::kRelease) {  // No reply.
    return sent == Io::kOk ? absl::OkStatus()
                           : fail(sent, "sending the request to");
  }
  // A daemon that refused a large block may answer before it read it all,
  // then close: its answer may still be waiting here, so read it.
  const int send_errno = errno;
  // The daemon closes the connection after such an answer.
  if (sent != Io::kOk) *broken = true;

  tcp::TcpFrame reply{};
  // A reply that came in the channel: its bytes, read through `read`.
  std::vector<uint8_t> in_channel;
  size_t channel_at = sizeof(reply);
  auto read = [&](void* dst, size_t n) {
    if (in_channel.empty()) {
      return sockio::RecvAll(fd, dst, n, nullptr, x.deadline);
    }
    // Within the message: its lengths were checked against it.
    std::memcpy(dst, in_channel.data() + channel_at, n);
    channel_at += n;
    return Io::kOk;
  };
  Io got_frame;
  if (via_channel) {
    got_frame = sent == Io::kOk
                    ? AwaitChannelReply(fd, *channel->mapped, seq, x.deadline,
                                        &reply, &in_channel)
                    : sent;
  } else {
    if (sent == Io::kOk) PollForReply(fd, x.deadline);
    got_frame = x.op == ucx::Op::kMapArena || x.op == ucx::Op::kMapChannel
                    ? RecvWithDescriptor(fd, &reply, sizeof(reply),
                                         &x.passed_fd, x.deadline)
                    : RecvFrame(fd, &reply, x.deadline);
  }
  if (got_frame != Io::kOk) {
    if (sent != Io::kOk) {
      errno = send_errno;
      return fail(sent, "sending the request to");
    }
    return fail(got_frame, "reading the reply from");
  }
  ucx::ReplyHeader r{};
  if (reply.magic != tcp::kFrameMagic || reply.header_length < sizeof(r) ||
      reply.header_length > sizeof(r) + ucx::kMaxMessageBytes) {
    return malformed(absl::StrCat("a malformed frame (magic ", reply.magic,
                                  ", header_length ", reply.header_length,
                                  ")"));
  }
  if (!in_channel.empty() &&
      sizeof(reply) + reply.header_length + reply.data_length !=
          in_channel.size()) {
    return malformed(absl::StrCat(
        "a ", in_channel.size(), "-byte message in the channel framed as ",
        reply.header_length, " + ", reply.data_length, " bytes"));
  }
  std::string reply_header(reply.header_length, '\0');
  if (Io io = read(reply_header.data(), reply_header.size()); io != Io::kOk) {
    return fail(io, "reading the reply from");
  }
  std::memcpy(&r, reply_header.data(), sizeof(r));
  if (r.version != ucx::kProtocolVersion || r.op != h.op ||
      r.request_id != x.request_id ||
      r.message_length != reply.header_length - sizeof(r)) {
    return malformed(absl::StrCat(
        "a reply that does not match its request (version ", r.version,
        ", op ", r.op, ", id ", r.request_id, " for op ", h.op, " id ",
        x.request_id, ", message_length ", r.message_length, ")"));
  }
  // Which data the reply must carry: a block with GETs that hit; a few
  // words with RESERVE's offset, an in-arena GET and MAP_ARENA's token.
  const bool ok = r.status == 0;
  if ((r.flags & ucx::kReplyInArena) && !(x.flags & ucx::kRequestInArena)) {
    return malformed("an in-arena reply to a request that did not ask for one");
  }
  // RESERVE: offset, token; in-arena GET: offset, length, token.
  size_t words = 0;
  if (ok && x.op == ucx::Op::kGet && (r.flags & ucx::kReplyInArena)) words = 3;
  if (ok && x.op == ucx::Op::kReserve && !(r.flags & ucx::kReplyAlreadyPresent)) {
    words = 2;
  }
  if (ok && x.op == ucx::Op::kMapArena) words = 1;
  // COMMIT and PUT_SPARE: the connection's spare range, offset and token.
  if ((x.op == ucx::Op::kCommit || x.op == ucx::Op::kPutSpare) &&
      (r.flags & ucx::kReplySpare)) {
    words = 2;
  }
  const bool block_reply = ok && x.op == ucx::Op::kGet && words == 0;
  if (block_reply && !in_channel.empty()) {
    return malformed(
        "a block in the message channel (blocks come on the socket)");
  }
  if (words != 0 ? reply.data_length != words * sizeof(uint64_t)
                 : ((reply.data_length != 0) != block_reply ||
                    reply.data_length >
                        kvstore::kMaxPayloadBytes + kvstore::kBlockHeaderSize)) {
    return malformed(absl::StrCat("data_length ", reply.data_length,
                                  " for op ", h.op, " status ", r.status));
  }
  x.reply_flags = r.flags;
  if (words != 0) {
    if (Io io = read(x.words, words * sizeof(uint64_t)); io != Io::kOk) {
      return fail(io, "reading the reply from");
    }
  } else if (reply.data_length != 0) {
    uint8_t* dst = x.dst;
    if (dst != nullptr && reply.data_length > x.capacity) {
      // The block is not read: the connection closes instead.
      *broken = true;
      return absl::OutOfRangeError(absl::StrCat(
          "capacity: block is ", reply.data_length, " bytes, capacity ",
          x.capacity));
    }
    if (dst == nullptr) {
      x.landed.resize(reply.data_length);
      dst = x.landed.data();
    }
    // Each piece is hashed as it lands, while the daemon sends the next.
    kvstore::StreamingBlockVerifier verifier;
    if (Io io = sockio::RecvInChunks(
            fd, dst, reply.data_length, VerifyChunkBytes(),
            [&](const uint8_t* p, size_t n) {
              verifier.Update(absl::MakeConstSpan(p, n));
            },
            &x.received, x.deadline);
        io != Io::kOk) {
      return fail(io, "reading the block from");
    }
    x.landed_check = verifier.Finish(x.LandedBytes()).status();
  }
  if (r.status == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(r.status),
                      reply_header.substr(sizeof(r)));
}

absl::Status TcpTransport::Run(Exchange& x) {
  static std::atomic<uint64_t> next_request_id{1};
  const bool verify_here = x.op == ucx::Op::kGet;
  if (verify_here) x.flags |= ucx::kRequestClientVerifies;
  for (int attempt = 1;; ++attempt) {
    x.request_id = next_request_id.fetch_add(1, std::memory_order_relaxed);
    x.received = 0;
    x.landed_check = absl::OkStatus();
    absl::Status s = Attempt(x);
    if (s.ok() && verify_here) {
      const absl::Status landed = x.landed_check;
      if (!landed.ok() && (x.flags & ucx::kRequestClientVerifies) != 0) {
        // Ask again with the daemon verifying: it drops a corrupt copy.
        x.flags &= ~ucx::kRequestClientVerifies;
        continue;
      }
      if (!landed.ok()) {
        return absl::DataLossError(absl::StrCat(
            "checksum: the block of ", x.key.ToHex(),
            " failed its check where it landed, also after the daemon "
            "verified its copy (damaged in transit): ",
            landed.message()));
      }
    }
    if (!absl::IsUnavailable(s) || attempt >= options_.retry.max_attempts) {
      return s;
    }
    const absl::Time when = SteadyNow() + options_.retry.Backoff(attempt + 1);
    if (when >= x.deadline) return s;
    // The backoff, cut short if the transport is destroyed meanwhile.
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), when - SteadyNow());
    if (stopping_) {
      return absl::CancelledError("client: the client is being destroyed");
    }
  }
}

absl::Status TcpTransport::Ping(absl::Time deadline) {
  Exchange x;
  x.op = ucx::Op::kPing;
  x.deadline = SteadyFromWall(deadline);
  return Run(x);
}

// ---- Calls.

template <typename Fn, typename Callback>
void TcpTransport::Dispatch(bool caller_waits, Fn run, Callback done) {
  if (caller_waits) {
    run(done);
    return;
  }
  RunAsync([run = std::move(run), done = std::move(done)](
               bool cancelled) mutable {
    if (cancelled) {
      done(absl::CancelledError("client: the client is being destroyed"));
    } else {
      run(done);
    }
  });
}

void TcpTransport::Put(const BlockKey& key, absl::Span<const uint8_t> block,
                       bool caller_waits, const PutOptions& put,
                       absl::Time deadline, PutCallback done) {
  auto x = std::make_shared<Exchange>();
  x->op = ucx::Op::kPut;
  x->key = key;
  if (put.durable) x->flags |= ucx::kRequestDurable;
  x->tenant = put.tenant;
  x->model = put.model;
  x->deadline = SteadyFromWall(deadline);
  auto run = [this, x](PutCallback& done) {
    const absl::Status s = Run(*x);
    if (!s.ok()) {
      done(s);
    } else {
      done(PutResult{(x->reply_flags & ucx::kReplyAlreadyPresent) != 0});
    }
  };
  if (caller_waits) {
    x->block = block;  // Sent straight from the caller's memory.
  } else {
    // The caller may free its block on return: send from a copy, which the
    // exchange keeps.
    x->copy.assign(block.begin(), block.end());
    x->block = absl::MakeConstSpan(x->copy);
  }
  Dispatch(caller_waits, std::move(run), std::move(done));
}

void TcpTransport::Get(const BlockKey& key, bool caller_waits,
                       absl::Time deadline, GetCallback done) {
  auto run = [this, key, deadline = SteadyFromWall(deadline)](
                 GetCallback& done) {
    Exchange x;
    x.op = ucx::Op::kGet;
    x.key = key;
    x.deadline = deadline;
    const absl::Status s = Run(x);
    if (!s.ok()) {
      done(s);
      return;
    }
    GetResult r;
    r.block = std::move(x.landed);
    r.served_from = (x.reply_flags & ucx::kReplyServedFromSsd) ? "ssd" : "dram";
    done(std::move(r));
  };
  Dispatch(caller_waits, std::move(run), std::move(done));
}

void TcpTransport::GetInto(const BlockKey& key, uint8_t* dst, size_t capacity,
                           bool caller_waits, absl::Time deadline,
                           SizeCallback done) {
  auto run = [this, key, dst, capacity, deadline = SteadyFromWall(deadline)](
                 SizeCallback& done) {
    Exchange x;
    x.op = ucx::Op::kGet;
    x.key = key;
    x.dst = dst;
    x.capacity = capacity;
    x.deadline = deadline;
    const absl::Status s = Run(x);
    if (!s.ok()) {
      done(s);
    } else {
      done(x.received);
    }
  };
  Dispatch(caller_waits, std::move(run), std::move(done));
}

// ---- Async threads.

void TcpTransport::RunAsync(absl::AnyInvocable<void(bool cancelled)> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      queue_.push_back(std::move(fn));
      return;
    }
  }
  fn(true);
}

void TcpTransport::AsyncLoop() {
  for (;;) {
    absl::AnyInvocable<void(bool)> fn;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // Stopping.
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn(false);
  }
}

}  // namespace strata::client::internal
