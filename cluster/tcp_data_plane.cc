#include "cluster/tcp_data_plane.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster/log.h"
#include "common/socket_io.h"
#include "common/steady_time.h"
#include "common/tcp_protocol.h"
#include "kvstore/block_format.h"

namespace strata::cluster {
namespace {

// The requests a local connection may send over its message channel: the
// small messages of in-arena puts and gets (and PING, to prove it works).
bool ServedOverChannel(const DataRequest& req) {
  switch (static_cast<ucx::Op>(req.op)) {
    case ucx::Op::kPing:
    case ucx::Op::kReserve:
    case ucx::Op::kCommit:
    case ucx::Op::kPutSpare:
    case ucx::Op::kRelease:
      return true;
    case ucx::Op::kGet:
      return (req.flags & ucx::kRequestInArena) != 0;
    default:
      return false;
  }
}

using sockio::Io;

constexpr char kListenField[] = "tcp_data_plane_listen";

// A refused request's data up to this size, or up to max_block_bytes when
// that is larger, is read and dropped, so the connection stays usable (an
// oversized block, a put while draining, an already present block); past it
// the answer goes first and the connection closes.
constexpr uint64_t kMaxDiscardBytes = uint64_t{256} << 20;

absl::Status ListenError(const std::string& listen, const std::string& what) {
  return absl::UnavailableError(
      absl::StrCat(kListenField, ": ", listen, ": ", what));
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcpDataPlane>> TcpDataPlane::Start(
    ServiceContext* ctx, const TcpDataPlaneOptions& options) {
  const size_t colon = options.listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kListenField, ": \"", options.listen, "\" is not host:port"));
  }
  std::string host = options.listen.substr(0, colon);
  const std::string port = options.listen.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kListenField, ": \"", options.listen, "\": ", gai_strerror(rc)));
  }
  std::unique_ptr<TcpDataPlane> plane(new TcpDataPlane(ctx, options));
  if (const char* env = std::getenv("STRATA_TCP_SERVE_SPIN_US")) {
    plane->options_.serve_spin = absl::Microseconds(std::atoi(env));
  }
  if (const char* env = std::getenv("STRATA_CHANNEL_SPIN_US")) {
    plane->options_.channel_spin = absl::Microseconds(std::atoi(env));
  }
  if (const char* env = std::getenv("STRATA_CHANNEL_POLLER_THREADS")) {
    plane->options_.channel_pollers = std::atoi(env);
  }
  const int threads =
      std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (plane->options_.channel_pollers <= 0) {
    plane->options_.channel_pollers = std::max(1, threads / 8);
  }
  // More pollers than hardware threads only take cores from the clients.
  plane->options_.channel_pollers =
      std::min(plane->options_.channel_pollers, threads);
  for (int i = 0; i < plane->options_.channel_pollers; ++i) {
    plane->pollers_.push_back(std::make_unique<ChannelPoller>());
  }
  int fd = socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (fd < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      bind(fd, found->ai_addr, found->ai_addrlen) != 0 || listen(fd, 128) != 0) {
    const int error = errno;
    freeaddrinfo(found);
    if (fd >= 0) close(fd);
    return ListenError(options.listen, std::strerror(error));
  }
  freeaddrinfo(found);
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  const uint16_t bound_port =
      bound.ss_family == AF_INET6
          ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
          : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  plane->address_ =
      absl::StrCat(options.listen.substr(0, colon), ":", bound_port);
  plane->listen_fd_ = fd;
  plane->wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (plane->wake_fd_ < 0) {
    return ListenError(options.listen, std::strerror(errno));
  }
  if (!options.local_path.empty()) {
    if (absl::Status s = plane->ListenLocal(); !s.ok()) {
      if (!options.local_path_optional) return s;
      // Only a default asked for local connections: serve without them.
      LogWarning("local_data_plane_default_unavailable",
                 {{"local_data_plane_path", options.local_path},
                  {"error", std::string(s.message())}});
    }
  }
  plane->acceptor_ = std::thread([p = plane.get()] { p->AcceptLoop(); });
  return plane;
}

TcpDataPlane::~TcpDataPlane() {
  Stop();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (local_listen_fd_ >= 0) close(local_listen_fd_);
  struct stat st{};
  if (!local_path_.empty() && lstat(local_path_.c_str(), &st) == 0 &&
      st.st_dev == local_dev_ && st.st_ino == local_ino_) {
    unlink(local_path_.c_str());  // Still ours, not a successor's.
  }
  if (wake_fd_ >= 0) close(wake_fd_);
}

void TcpDataPlane::Stop() {
  if (stopped_ || !acceptor_.joinable()) return;
  stopped_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  // Finishes the request it serves, if any, and takes no more.
  StopChannelPollers();
  {
    absl::MutexLock lock(&mu_);
    // Idle connections end now; busy ones finish their request first.
    for (int fd : conns_) {
      if (!busy_.contains(fd)) shutdown(fd, SHUT_RDWR);
    }
  }
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (acceptor_.joinable()) acceptor_.join();
  // New connections are refused from here on, not left in the backlog.
  close(listen_fd_);
  listen_fd_ = -1;
  if (local_listen_fd_ >= 0) close(local_listen_fd_);
  local_listen_fd_ = -1;
  {
    absl::MutexLock lock(&mu_);
    auto all_gone = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return conns_.empty();
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&all_gone),
                              options_.stop_grace)) {
      for (int fd : conns_) shutdown(fd, SHUT_RDWR);
      mu_.Await(absl::Condition(&all_gone));
    }
  }
  ReapFinished();  // Every connection ended: joins them all.
  absl::MutexLock lock(&mu_);
  retired_spares_.clear();
  retired_reservations_.clear();  // Aborted: nothing partial is stored.
}

void TcpDataPlane::ReapFinished() {
  std::vector<std::thread> done;
  {
    absl::MutexLock lock(&mu_);
    for (uint64_t id : finished_) {
      auto it = threads_.find(id);
      done.push_back(std::move(it->second));
      threads_.erase(it);
    }
    finished_.clear();
  }
  for (std::thread& t : done) t.join();
}

void TcpDataPlane::AcceptLoop() {
  pollfd fds[3] = {{wake_fd_, POLLIN, 0},
                   {listen_fd_, POLLIN, 0},
                   {local_listen_fd_, POLLIN, 0}};  // fd -1: ignored.
  for (;;) {
    if (poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      LogWarning("tcp_data_plane_poll_failed", {{"error", std::strerror(errno)}});
      return;
    }
    if (fds[0].revents != 0) return;
    if (fds[1].revents != 0) AcceptOne(listen_fd_, /*local=*/false);
    if (fds[2].revents != 0) AcceptOne(local_listen_fd_, /*local=*/true);
  }
}

void TcpDataPlane::AcceptOne(int listen_fd, bool local) {
  const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    if (error == EMFILE || error == ENFILE || error == ENOBUFS ||
        error == ENOMEM) {
      // Out of descriptors or memory: the pending connection stays queued;
      // wait for Stop or 100 ms instead of spinning on it.
      LogWarning("tcp_data_plane_accept_failed",
                 {{"error", std::strerror(error)}});
      pollfd wake{wake_fd_, POLLIN, 0};
      poll(&wake, 1, 100);  // AcceptLoop sees the wake-up next.
    }
    return;  // Otherwise the client gave up first.
  }
  auto conn = std::make_shared<Connection>();
  Connection& c = *conn;
  c.fd = fd;
  c.local = local;
  const int one = 1;
  if (local) {
    c.may_map_arena = PeerMayMapArena(fd);
  } else {
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // A peer that vanished without closing (host down, partition) is found
    // by TCP keepalive within about 90 s, freeing its thread and its slot.
    const int idle_s = 60, interval_s = 10, probes = 3;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
  }
  ReapFinished();
  absl::MutexLock lock(&mu_);
  if (stopping_ ||
      conns_.size() >= static_cast<size_t>(options_.max_connections)) {
    if (!stopping_) ctx_->metrics->RecordRefusedSocketConnection(local);
    close(fd);
    return;
  }
  const uint64_t id = next_id_++;
  try {
    threads_.emplace(id, std::thread([this, id, conn]() mutable {
                       Serve(id, std::move(conn));
                     }));
  } catch (const std::system_error& e) {
    LogWarning("tcp_data_plane_thread_failed", {{"error", e.what()}});
    close(fd);
    return;
  }
  conns_.insert(fd);
  ctx_->metrics->AddSocketConnections(1, local);
}

void TcpDataPlane::PollForRequest(int fd) {
  if (options_.serve_spin <= absl::ZeroDuration()) return;
  // Only while no connection is being served: polling would take a core
  // from it (and from its client) on a small machine.
  if (busy_count_.load(std::memory_order_acquire) != 0) return;
  int idle = 0;
  if (!polling_.compare_exchange_strong(idle, 1, std::memory_order_acq_rel)) {
    return;  // Another connection's thread is polling.
  }
  const absl::Time until = SteadyNow() + options_.serve_spin;
  pollfd p{fd, POLLIN, 0};
  while (poll(&p, 1, 0) == 0 && SteadyNow() < until) sched_yield();
  polling_.store(0, std::memory_order_release);
}

void TcpDataPlane::Serve(uint64_t id, std::shared_ptr<Connection> conn) {
  Connection& c = *conn;
  const int fd = c.fd;
  sockio::SetIoTimeout(fd, options_.stall_timeout);
  std::vector<uint8_t> header;
  for (;;) {
    // Once MAP_CHANNEL gave the connection a channel, it is served with the
    // channel poller (tcp_data_plane_channel.cc).
    if (c.channel != nullptr) {
      if (!ServeChannelConnection(c)) break;
      continue;
    }
    // Between messages a connection may stay idle for as long as it likes.
    // So may a local one holding a reservation: its client may still be
    // writing the block into the arena range, which therefore stays the
    // reservation's until the client commits or its connection closes (a
    // client stopped mid-put holds its key: other writers of the key wait
    // kInFlightWriteWait, then ABORTED naming "key").
    PollForRequest(fd);
    tcp::TcpFrame frame{};
    size_t got = 0;
    Io r = sockio::RecvAll(fd, &frame, sizeof(frame), &got);
    while (r == Io::kTimedOut && got == 0) {
      r = sockio::RecvAll(fd, &frame, sizeof(frame), &got);
    }
    if (r != Io::kOk) break;
    // Held from here: a MAP_CHANNEL shares the connection with the poller
    // before this request is done.
    absl::MutexLock lock(&c.serve_mu);
    if (!ServeSocketRequest(c, frame, header)) break;
  }
  if (c.channel != nullptr) RemoveChannel(&c);  // The poller lets go of it.
  bool evict = false;
  {
    absl::MutexLock lock(&c.serve_mu);
    c.closed = true;
    evict = c.evict_after;  // A commit's eviction not run yet.
    DropReservation(c);     // Aborts: nothing partial is stored.
    c.lease.reset();
    DropSpare(c);
    if (c.channel != nullptr) munmap(c.channel, local::kChannelBytes);
    c.channel = nullptr;
    if (c.handback_fd >= 0) close(c.handback_fd);
    c.handback_fd = -1;
  }
  if (evict) ctx_->store->EvictToWatermarks();
  absl::MutexLock lock(&mu_);
  conns_.erase(fd);
  // A request handed back but never served (the connection broke first).
  if (busy_.erase(fd) != 0) {
    busy_count_.fetch_sub(1, std::memory_order_acq_rel);
  }
  close(fd);
  finished_.push_back(id);
  ctx_->metrics->AddSocketConnections(-1, c.local);
}

bool TcpDataPlane::BeginRequest(int fd) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  busy_.insert(fd);
  busy_count_.fetch_add(1, std::memory_order_acq_rel);
  return true;
}

void TcpDataPlane::EndRequest(int fd) {
  absl::MutexLock lock(&mu_);
  busy_.erase(fd);
  busy_count_.fetch_sub(1, std::memory_order_acq_rel);
}

bool TcpDataPlane::ServeSocketRequest(Connection& c, const tcp::TcpFrame& frame,
                                      std::vector<uint8_t>& header) {
  // A doorbell: the next request is in the channel (or was, and this
  // doorbell came late).
  if (c.channel != nullptr && tcp::IsDoorbell(frame)) {
    ServeChannelRequest(c, /*on_poller=*/false);
    return !c.broken;
  }
  c.from_channel = false;
  c.lease.reset();  // An in-arena GET's lease lasts until this message.
  c.lease_seq = 0;
  if (!BeginRequest(c.fd)) return false;
  const absl::Time start = SteadyNow();
  bool keep = false;
  DataRequest req;
  if (frame.magic == tcp::kFrameMagic &&
      frame.header_length >= kMinAnswerableHeaderBytes &&
      frame.header_length <= tcp::kMaxHeaderBytes) {
    header.resize(frame.header_length);
    if (sockio::RecvAll(c.fd, header.data(), header.size()) == Io::kOk) {
      const absl::Status header_status = ParseDataRequest(header, &req);
      keep = HandleRequest(c, req, header_status, frame.data_length, start);
    }
  }
  // else: a stream that is not ours, or lost its framing: nothing in it
  // can be trusted or answered.
  EndRequest(c.fd);
  return keep && !Stopping();
}

bool TcpDataPlane::HandleRequest(Connection& c, const DataRequest& req,
                                 const absl::Status& header_status,
                                 uint64_t data_length, absl::Time start) {
  const int fd = c.fd;
  const uint64_t bytes_in =
      req.op == static_cast<uint16_t>(ucx::Op::kPut) ? data_length : 0;
  absl::Status status = header_status;
  uint32_t flags = 0;
  if (c.from_channel && status.ok() && !ServedOverChannel(req)) {
    status = absl::InvalidArgumentError(absl::StrCat(
        "op: operation ", req.op,
        " is not served over the message channel (only RESERVE, COMMIT, "
        "PUT_SPARE, RELEASE, PING and GET with kRequestInArena)"));
  }
  // A reservation lasts until its COMMIT, the next message.
  if (req.op != static_cast<uint16_t>(ucx::Op::kCommit) || !status.ok()) {
    c.reservation.reset();
  }
  // RELEASE has no reply: one that cannot be parsed closes the connection
  // (an answer would be taken for the next request's).
  if (!status.ok() && req.op == static_cast<uint16_t>(ucx::Op::kRelease)) {
    return false;
  }
  if (status.ok()) {
    switch (static_cast<ucx::Op>(req.op)) {
      case ucx::Op::kPing:
        break;
      case ucx::Op::kMapArena:
      case ucx::Op::kMapChannel:
      case ucx::Op::kReserve:
      case ucx::Op::kCommit:
      case ucx::Op::kRelease:
      case ucx::Op::kPutSpare:
        return HandleLocalOp(c, req, data_length, start);
      case ucx::Op::kGet:
        if (data_length == 0 && (req.flags & ucx::kRequestInArena) != 0) {
          return HandleGetInArena(c, req, start);
        }
        if (data_length == 0) return HandleGet(fd, req, start);
        status = absl::InvalidArgumentError(
            "block: a GET request carries no data");
        break;
      case ucx::Op::kPut:
        if (!HandlePut(fd, req, &data_length, &status, &flags)) {
          Record(req, status, start, bytes_in, 0);
          return false;
        }
        break;
      default:
        status = absl::InvalidArgumentError(
            absl::StrCat("op: unknown data-plane operation ", req.op));
    }
  }
  // A refused request's data is read and dropped: the stream stays framed.
  // Past any block this daemon accepts (and kMaxDiscardBytes) the answer
  // goes first and the connection closes; the client reads that answer
  // even when its send failed.
  if (c.from_channel) data_length = 0;  // It came in the message.
  if (data_length >
      std::max(kMaxDiscardBytes, ctx_->store->options().max_block_bytes)) {
    Record(req, status, start, bytes_in, 0);
    SendReply(fd, req, status, flags);
    shutdown(fd, SHUT_WR);
    return false;
  }
  if (data_length != 0 && sockio::Discard(fd, data_length) != Io::kOk) {
    Record(req, status, start, 0, 0);
    return false;
  }
  Record(req, status, start, bytes_in, 0);
  return AnswerStatus(c, req, status, flags);
}

bool TcpDataPlane::HandlePut(int fd, const DataRequest& req,
                             uint64_t* unread, absl::Status* status,
                             uint32_t* flags) {
  const uint64_t data_length = *unread;
  // Refused (or already present): the block stays unread; HandleRequest
  // reads and drops it, then answers.
  auto refuse = [&](absl::Status why) {
    *status = std::move(why);
    return true;
  };
  if (Stopping()) {
    return refuse(absl::UnavailableError(
        "data_plane: the daemon is shutting down"));
  }
  if (absl::Status s = CheckPutAdmissible(ctx_, data_length); !s.ok()) {
    return refuse(s);
  }
  const kvstore::PutOptions put_options =
      PutOptionsFor(req, kInFlightWriteWait);
  absl::StatusOr<kvstore::BlockReservation> reservation =
      ctx_->store->Reserve(req.key, data_length, put_options);
  if (absl::IsAlreadyExists(reservation.status())) {
    *flags = ucx::kReplyAlreadyPresent;  // First write wins.
    return refuse(absl::OkStatus());
  }
  if (reservation.ok()) {
    *unread = 0;  // Read here, or the connection closes.
    // The kernel's copy lands the block in the arena: the only copy. Each
    // piece is hashed as it lands, while the client still sends the next.
    Io io;
    if (options_.verify_chunk_bytes == 0) {
      io = sockio::RecvAll(fd, reservation->data().data(), data_length);
    } else {
      kvstore::StreamingBlockVerifier verifier;
      io = sockio::RecvInChunks(
          fd, reservation->data().data(), data_length,
          options_.verify_chunk_bytes, [&](const uint8_t* p, size_t n) {
            verifier.Update(absl::MakeConstSpan(p, n));
          });
      // A block that fails is refused by Commit, with the same status.
      if (io == Io::kOk) reservation->FinishLandedCheck(verifier).IgnoreError();
    }
    if (io != Io::kOk) {
      *status = absl::UnavailableError(
          "data_plane: the connection broke while receiving the block");
      return false;  // The reservation aborts: nothing partial is stored.
    }
    *status = CheckAcceptingBlocks(ctx_);
    if (status->ok()) {
      *status = ctx_->store->Commit(*std::move(reservation));
    }
    return true;
  }
  if (!absl::IsResourceExhausted(reservation.status())) {
    return refuse(reservation.status());
  }
  // The arena cannot hold it now: Put may place it in a lower tier. The
  // block goes through a reused buffer (not zeroed first).
  *unread = 0;
  size_t capacity = 0;
  ucx::PoolBuffer buffer = buffers_.Acquire(data_length, &capacity);
  const Io io = sockio::RecvAll(fd, buffer.get(), data_length);
  absl::StatusOr<kvstore::PutOutcome> outcome = absl::UnavailableError(
      "data_plane: the connection broke while receiving the block");
  if (io == Io::kOk) {
    outcome = StoreBlock(ctx_, req.key,
                         absl::MakeConstSpan(buffer.get(), data_length),
                         put_options);
  }
  buffers_.Release(std::move(buffer), capacity);  // The store copied it.
  if (io != Io::kOk) {
    *status = outcome.status();
    return false;
  }
  *status = outcome.status();
  if (outcome.ok() && *outcome == kvstore::PutOutcome::kAlreadyPresent) {
    *flags = ucx::kReplyAlreadyPresent;
  }
  return true;
}

bool TcpDataPlane::HandleGet(int fd, const DataRequest& req, absl::Time start) {
  absl::StatusOr<kvstore::BlockLease> lease =
      ctx_->store->Get(req.key, GetOptionsFor(req.flags));
  if (!lease.ok()) {
    Record(req, lease.status(), start, 0, 0);
    return SendReply(fd, req, lease.status(), 0);
  }
  const absl::Span<const uint8_t> block = lease->bytes();
  Record(req, absl::OkStatus(), start, 0, block.size());
  // Straight from the lease, which is held until the kernel has the bytes.
  return SendFramed(fd,
                     ReplyHeaderBytes(req.op, req.request_id, absl::OkStatus(),
                                      ReplyFlagsFor(*lease)),
                     block);
}

bool TcpDataPlane::SendFramed(int fd, const std::vector<uint8_t>& header,
                              absl::Span<const uint8_t> data, int pass_fd) {
  tcp::TcpFrame frame{tcp::kFrameMagic, static_cast<uint32_t>(header.size()),
                      data.size()};
  iovec iov[3] = {{&frame, sizeof(frame)},
                  {const_cast<uint8_t*>(header.data()), header.size()},
                  {const_cast<uint8_t*>(data.data()), data.size()}};
  return sockio::SendAll(fd, iov, data.empty() ? 2 : 3,
                         absl::InfiniteFuture(), pass_fd) == Io::kOk;
}

bool TcpDataPlane::Stopping() {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

bool TcpDataPlane::SendReply(int fd, const DataRequest& req,
                             const absl::Status& status, uint32_t flags) {
  return SendFramed(
      fd, ReplyHeaderBytes(req.op, req.request_id, status, flags), {});
}

void TcpDataPlane::Record(const DataRequest& req, const absl::Status& status,
                          absl::Time start, uint64_t bytes_in,
                          uint64_t bytes_out) {
  if (!IsBlockOp(req.op)) return;
  ctx_->metrics->RecordRpc(
      req.op == static_cast<uint16_t>(ucx::Op::kPut) ? Rpc::kPut : Rpc::kGet,
      status.code(), SteadyNow() - start, bytes_in, bytes_out);
}

}  // namespace strata::cluster
