// TcpDataPlane's local connections: the Unix socket, and in-place access to
// the shared DRAM arena (MAP_ARENA, RESERVE/COMMIT, in-arena GETs). The
// contract is in tcp_data_plane.h; the wire in docs/protocol.md, "Local
// connections".
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster/tcp_data_plane.h"
#include "common/sealed_memfd.h"
#include "common/socket_io.h"
#include "common/status_macros.h"
#include "common/steady_time.h"
#include "common/tcp_protocol.h"

namespace strata::cluster {
namespace {

using sockio::Io;

constexpr char kLocalPathField[] = "local_data_plane_path";

absl::Status LocalPathError(const std::string& path, const std::string& what) {
  return absl::UnavailableError(
      absl::StrCat(kLocalPathField, ": ", path, ": ", what));
}

std::vector<uint8_t> U64s(std::initializer_list<uint64_t> values) {
  std::vector<uint8_t> bytes(values.size() * sizeof(uint64_t));
  size_t at = 0;
  for (uint64_t v : values) {
    std::memcpy(bytes.data() + at, &v, sizeof(v));
    at += sizeof(v);
  }
  return bytes;
}

const char* OpName(ucx::Op op) {
  switch (op) {
    case ucx::Op::kMapArena:
      return "MAP_ARENA";
    case ucx::Op::kMapChannel:
      return "MAP_CHANNEL";
    case ucx::Op::kReserve:
      return "RESERVE";
    case ucx::Op::kCommit:
      return "COMMIT";
    case ucx::Op::kPutSpare:
      return "PUT_SPARE";
    default:
      return "RELEASE";
  }
}

}  // namespace

absl::Status TcpDataPlane::ListenLocal() {
  const std::string& path = options_.local_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kLocalPathField, ": \"", path, "\" is longer than ",
                     sizeof(addr.sun_path) - 1, " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  const auto* sa = reinterpret_cast<const sockaddr*>(&addr);
  // Opening the socket to a group is done only in a directory nobody else
  // may write, so the file chown'ed below is the socket this plane bound
  // (not one swapped in for it). Checked before anything there is touched.
  const bool group = options_.local_group >= 0;
  if (group) {
    const std::string dir = std::filesystem::path(path).parent_path().native();
    struct stat parent {};
    if (stat(dir.empty() ? "." : dir.c_str(), &parent) != 0 ||
        (parent.st_mode & 0022) != 0) {
      return LocalPathError(
          path,
          "its directory may be written by others, so it is not "
          "shared with local_data_plane_group");
    }
  }
  struct stat st{};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return LocalPathError(path, "exists and is not a socket");
    }
    // A live daemon answers (or its backlog is full); the file of one that
    // died refuses. Anything else (another user's socket: EACCES) is left
    // alone. Non-blocking: a peer that does not accept cannot hold us.
    const int probe =
        socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe < 0) return LocalPathError(path, std::strerror(errno));
    const int error = connect(probe, sa, sizeof(addr)) == 0 ? 0 : errno;
    close(probe);
    if (error == 0 || error == EAGAIN) {
      return LocalPathError(path, "another process serves this socket");
    }
    if (error != ECONNREFUSED) {
      return LocalPathError(
          path, absl::StrCat("cannot tell whether a process serves it: ",
                             std::strerror(error)));
    }
    unlink(path.c_str());
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, sa, sizeof(addr)) != 0) {
    const int error = errno;
    if (fd >= 0) close(fd);
    return LocalPathError(path, std::strerror(error));
  }
  // The arena goes only to clients of our user, or of local_group
  // (PeerMayMapArena); the mode keeps everyone else off the socket. The
  // mode is set before listen(): until then every connect is refused.
  if ((group && fchownat(AT_FDCWD, path.c_str(), static_cast<uid_t>(-1),
                         static_cast<gid_t>(options_.local_group),
                         AT_SYMLINK_NOFOLLOW) != 0) ||
      chmod(path.c_str(), group ? 0660 : 0600) != 0 || listen(fd, 128) != 0) {
    const int error = errno;
    close(fd);
    unlink(path.c_str());
    return LocalPathError(path, std::strerror(error));
  }
  // The file this plane made: the destructor removes it only if it is still
  // this one (a successor may have replaced it after Stop).
  if (lstat(path.c_str(), &st) == 0) {
    local_dev_ = st.st_dev;
    local_ino_ = st.st_ino;
  }
  local_listen_fd_ = fd;
  local_path_ = path;
  return absl::OkStatus();
}

bool TcpDataPlane::HandleLocalOp(Connection& c, const DataRequest& req,
                                 uint64_t data_length, absl::Time start) {
  const auto op = static_cast<ucx::Op>(req.op);
  const uint64_t expected =
      op == ucx::Op::kReserve || op == ucx::Op::kPutSpare ? sizeof(uint64_t)
                                                          : 0;
  if (data_length != expected) {
    // Not worth reading: answer, then close (as for any broken framing).
    if (op != ucx::Op::kRelease) {
      AnswerStatus(c, req,
                   absl::InvalidArgumentError(absl::StrCat(
                       "block: ", OpName(op), " carries ", expected,
                       " data bytes, not ", data_length)),
                   0);
    }
    shutdown(c.fd, SHUT_WR);
    return false;
  }
  uint64_t block_length = 0;
  if (expected != 0 && c.from_channel) {
    std::memcpy(&block_length, c.channel_data.data(), sizeof(block_length));
  } else if (expected != 0 &&
             sockio::RecvAll(c.fd, &block_length, sizeof(block_length)) !=
                 Io::kOk) {
    return false;
  }
  if (op == ucx::Op::kRelease) return true;  // The lease went; no reply.
  if (!c.local) {
    return AnswerStatus(
        c, req,
        absl::FailedPreconditionError(absl::StrCat(
            "op: ", OpName(op),
            " is served on local connections only (local_data_plane_path)")),
        0);
  }
  switch (op) {
    case ucx::Op::kMapArena:
      return SendArena(c, req);
    case ucx::Op::kMapChannel:
      return SendChannel(c, req);
    case ucx::Op::kReserve:
      return HandleReserve(c, req, block_length, start);
    case ucx::Op::kPutSpare:
      return HandlePutSpare(c, req, block_length, start);
    default:
      return HandleCommit(c, req, start);
  }
}

bool TcpDataPlane::PeerMayMapArena(int fd) const {
  ucred peer{};
  socklen_t len = sizeof(peer);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) return false;
  if (peer.uid == geteuid()) return true;
  if (options_.local_group < 0) return false;
  const auto group = static_cast<gid_t>(options_.local_group);
  if (peer.gid == group) return true;
  // The peer's supplementary groups, as they were at connect.
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 2; ++attempt) {
    socklen_t bytes = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &bytes) == 0) {
      groups.resize(bytes / sizeof(gid_t));
      return std::find(groups.begin(), groups.end(), group) != groups.end();
    }
    if (errno != ERANGE) return false;
    groups.resize(bytes / sizeof(gid_t));  // The size it needs.
  }
  return false;
}

absl::Status TcpDataPlane::ArenaAccess(const Connection& c) const {
  if (ctx_->store->SharedDramArena().fd < 0) {
    return absl::FailedPreconditionError(
        "dram_shared: this daemon's DRAM arena is private");
  }
  if (!c.may_map_arena) {
    return absl::PermissionDeniedError(absl::StrCat(
        kLocalPathField,
        ": the shared arena goes only to clients running as the daemon's "
        "user",
        options_.local_group >= 0 ? " or in its local_data_plane_group" : ""));
  }
  return absl::OkStatus();
}

absl::Status TcpDataPlane::CommitInPlace(Connection& c,
                                         kvstore::BlockReservation reservation,
                                         uint32_t request_flags) {
  // Commit hashes what landed, unless the client checked the checksum as it
  // wrote: a block written wrong is refused (and nothing of it stored).
  if (request_flags & ucx::kRequestVerifiedInPlace) {
    reservation.AcceptWritersChecksum();
  }
  STRATA_RETURN_IF_ERROR(CheckAcceptingBlocks(ctx_));
  if (!c.on_poller) return ctx_->store->Commit(std::move(reservation));
  // Eviction may write the SSD tier: the connection's thread runs it.
  absl::Status status = ctx_->store->Commit(
      std::move(reservation), kvstore::CommitOptions{.evict = false});
  if (ctx_->store->NeedsEviction()) c.evict_after = true;
  return status;
}

bool TcpDataPlane::CommitMayBlock(bool durable, uint32_t request_flags,
                                  uint64_t size) {
  // The daemon's own checksum pass over more than this stays off the poller
  // (about 40 us at the dev VM's 25 GB/s of hashing).
  constexpr uint64_t kPollerHashMaxBytes = uint64_t{1} << 20;
  return durable || ((request_flags & ucx::kRequestVerifiedInPlace) == 0 &&
                     size > kPollerHashMaxBytes);
}

bool TcpDataPlane::SendArena(Connection& c, const DataRequest& req) {
  if (absl::Status s = ArenaAccess(c); !s.ok()) {
    return AnswerStatus(c, req, s, 0);
  }
  // The memfd rides on the reply's first bytes; the data is the daemon's
  // instance token.
  return SendFramed(
      c.fd, ReplyHeaderBytes(req.op, req.request_id, absl::OkStatus(), 0),
      U64s({ctx_->instance_token}), ctx_->store->SharedDramArena().fd);
}

bool TcpDataPlane::HandleReserve(Connection& c, const DataRequest& req,
                                 uint64_t block_length, absl::Time start) {
  const kvstore::TieredStore::SharedArena arena =
      ctx_->store->SharedDramArena();
  auto answer = [&](const absl::Status& status, uint32_t flags) {
    // RESOURCE_EXHAUSTED is followed by the client's plain PUT, counted
    // there.
    if (!absl::IsResourceExhausted(status)) {
      ctx_->metrics->RecordRpc(Rpc::kPut, status.code(), SteadyNow() - start,
                               0, 0);
    }
    return AnswerStatus(c, req, status, flags);
  };
  if (absl::Status s = ArenaAccess(c); !s.ok()) return answer(s, 0);
  if (Stopping()) {
    return answer(
        absl::UnavailableError("data_plane: the daemon is shutting down"), 0);
  }
  if (absl::Status s = CheckPutAdmissible(ctx_, block_length); !s.ok()) {
    return answer(s, 0);
  }
  // The client took its record of a spare of another size: free it.
  if (c.spare.active() && c.spare.data().size() != block_length) DropSpare(c);
  // On the poller: no waiting for another write of the key, no eviction
  // (either hands the request back to the connection's thread).
  absl::StatusOr<kvstore::BlockReservation> reservation =
      ctx_->store->Reserve(req.key, block_length,
                           PutOptionsFor(req, c.on_poller ? absl::ZeroDuration()
                                                          : kInFlightWriteWait),
                           kvstore::ReserveOptions{.may_evict = !c.on_poller});
  if (absl::IsAlreadyExists(reservation.status())) {
    return answer(absl::OkStatus(), ucx::kReplyAlreadyPresent);
  }
  if (c.on_poller && (absl::IsAborted(reservation.status()) ||
                      absl::IsResourceExhausted(reservation.status()))) {
    return HandBack(c);
  }
  // RESOURCE_EXHAUSTED (the arena cannot hold it now): the client sends the
  // block with a plain PUT, which may place it in a lower tier.
  if (!reservation.ok()) return answer(reservation.status(), 0);
  const uint64_t offset = static_cast<uint64_t>(
      reservation->data().data() - arena.base);
  c.reservation = *std::move(reservation);
  c.reservation_bytes = block_length;
  // Counted with its COMMIT. The token names the arena the offset is in: a
  // client whose mapping is of another daemon's (this one restarted) must
  // not write there.
  return Answer(c,
                ReplyHeaderBytes(req.op, req.request_id, absl::OkStatus(), 0),
                U64s({offset, ctx_->instance_token}));
}

bool TcpDataPlane::HandleCommit(Connection& c, const DataRequest& req,
                                absl::Time start) {
  absl::Status status;
  uint64_t bytes_in = 0;
  if (!c.reservation.has_value() || c.reservation->key() != req.key) {
    status = absl::FailedPreconditionError(
        "op: COMMIT must follow a RESERVE of its key on the same connection");
    c.reservation.reset();
  } else {
    // Durability was fixed by the RESERVE (the COMMIT carries no such flag).
    if (c.on_poller && CommitMayBlock(c.reservation->durable(), req.flags,
                                      c.reservation_bytes)) {
      return HandBack(c);
    }
    bytes_in = c.reservation_bytes;
    status = CommitInPlace(c, *std::move(c.reservation), req.flags);
    c.reservation.reset();
  }
  ctx_->metrics->RecordRpc(Rpc::kPut, status.code(), SteadyNow() - start,
                           bytes_in, 0);
  return ReplyWithSpare(c, req, status, 0, bytes_in);
}

bool TcpDataPlane::HandlePutSpare(Connection& c, const DataRequest& req,
                                  uint64_t block_length, absl::Time start) {
  auto answer = [&](const absl::Status& status, uint32_t flags,
                    uint64_t bytes_in) {
    ctx_->metrics->RecordRpc(Rpc::kPut, status.code(), SteadyNow() - start,
                             bytes_in, 0);
    return ReplyWithSpare(c, req, status, flags, block_length);
  };
  if (Stopping()) {  // The reply drops the spare.
    return answer(
        absl::UnavailableError("data_plane: the daemon is shutting down"), 0,
        0);
  }
  if (!ArenaAccess(c).ok() || !c.spare.active() ||
      c.spare.data().size() != block_length) {
    // Not counted: the client goes on with RESERVE (on "op:" only).
    DropSpare(c);
    return AnswerStatus(c, req,
                        absl::FailedPreconditionError(absl::StrCat(
                            "op: PUT_SPARE without a spare range of ",
                            block_length, " bytes on this connection")),
                        0);
  }
  if (absl::Status s = CheckPutAdmissible(ctx_, block_length); !s.ok()) {
    return answer(s, 0, 0);
  }
  // The PUT_SPARE makes its own reservation, durable as the store will
  // make it.
  const kvstore::PutOptions put_options = PutOptionsFor(
      req, c.on_poller ? absl::ZeroDuration() : kInFlightWriteWait);
  if (c.on_poller && CommitMayBlock(ctx_->store->Durable(put_options),
                                    req.flags, block_length)) {
    return HandBack(c);
  }
  // The spare becomes the key's reservation (or stays the connection's when
  // the key cannot be claimed). On the poller, a key with another write in
  // flight is handed back rather than waited for.
  absl::StatusOr<kvstore::BlockReservation> reservation =
      ctx_->store->ReserveInto(req.key, c.spare, put_options);
  if (absl::IsAlreadyExists(reservation.status())) {
    return answer(absl::OkStatus(), ucx::kReplyAlreadyPresent, 0);
  }
  if (c.on_poller && absl::IsAborted(reservation.status())) {
    return HandBack(c);
  }
  if (!reservation.ok()) return answer(reservation.status(), 0, 0);
  return answer(CommitInPlace(c, *std::move(reservation), req.flags), 0,
                block_length);
}

bool TcpDataPlane::ReplyWithSpare(Connection& c, const DataRequest& req,
                                  const absl::Status& status, uint32_t flags,
                                  uint64_t size) {
  if (!(req.flags & ucx::kRequestSpareNext) || size == 0 ||
      !ArenaAccess(c).ok() || Stopping() || !CheckAcceptingBlocks(ctx_).ok()) {
    DropSpare(c);  // The client keeps no record of one: none is held.
    return AnswerStatus(c, req, status, flags);
  }
  if (c.spare.active() && c.spare.data().size() != size) {
    DropSpare(c);  // Sizes changed: one of the new size.
  }
  // Spares are a guess at the next put: never worth evicting a block for,
  // and all of them together take at most a quarter of the DRAM tier.
  const uint64_t cap = ctx_->store->options().dram_capacity_bytes / 4;
  if (!c.spare.active() &&
      spare_bytes_.load(std::memory_order_relaxed) + size <= cap) {
    kvstore::ReserveOptions no_eviction;
    no_eviction.may_evict = false;
    absl::StatusOr<kvstore::ArenaSpace> space =
        ctx_->store->ReserveSpace(size, no_eviction);
    if (space.ok()) {
      c.spare = *std::move(space);
      spare_bytes_.fetch_add(size, std::memory_order_relaxed);
    }
  }
  if (!c.spare.active()) return AnswerStatus(c, req, status, flags);
  const uint64_t offset = static_cast<uint64_t>(
      c.spare.data().data() - ctx_->store->SharedDramArena().base);
  return Answer(c,
                ReplyHeaderBytes(req.op, req.request_id, status,
                                 flags | ucx::kReplySpare),
                U64s({offset, ctx_->instance_token}));
}

void TcpDataPlane::DropSpare(Connection& c) {
  if (!c.spare.active()) return;
  spare_bytes_.fetch_sub(c.spare.data().size(), std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    retired_spares_.push_back(std::move(c.spare));
  }
  c.spare = kvstore::ArenaSpace();
}

void TcpDataPlane::DropReservation(Connection& c) {
  if (!c.reservation.has_value()) return;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) retired_reservations_.push_back(*std::move(c.reservation));
  }
  c.reservation.reset();
}

bool TcpDataPlane::HandleGetInArena(Connection& c, const DataRequest& req,
                                    absl::Time start) {
  if (!c.local || !ArenaAccess(c).ok()) {
    // (Not from a channel, which needs the arena; the poller never sends
    // a block on the socket.)
    if (c.on_poller) return HandBack(c);
    return HandleGet(c.fd, req, start);
  }
  const kvstore::TieredStore::SharedArena arena =
      ctx_->store->SharedDramArena();
  kvstore::GetOptions options = GetOptionsFor(req.flags);
  if (c.on_poller) {
    // Only a DRAM copy (no SSD read, no reply on the socket), and no long
    // checksum pass: else FAILED_PRECONDITION, and the connection's thread
    // serves it.
    options.fast_path_max_bytes =
        options.verify_first_tier ? uint64_t{1} << 20 : ~uint64_t{0};
  }
  absl::StatusOr<kvstore::BlockLease> lease =
      ctx_->store->Get(req.key, options);
  if (c.on_poller && absl::IsFailedPrecondition(lease.status())) {
    return HandBack(c);
  }
  if (!lease.ok()) {
    Record(req, lease.status(), start, 0, 0);
    return AnswerStatus(c, req, lease.status(), 0);
  }
  const absl::Span<const uint8_t> block = lease->bytes();
  Record(req, absl::OkStatus(), start, 0, block.size());
  const uint32_t flags = ReplyFlagsFor(*lease);
  if (block.data() < arena.base ||
      block.data() + block.size() > arena.base + arena.bytes) {
    // Not in the arena (served from the SSD tier): the bytes, as usual, on
    // the socket (a request from the channel is told so there).
    return AnswerOnSocket(
        c, ReplyHeaderBytes(req.op, req.request_id, absl::OkStatus(), flags),
        block);
  }
  const uint64_t offset = static_cast<uint64_t>(block.data() - arena.base);
  c.lease = *std::move(lease);  // Until the connection's next message.
  c.lease_seq = c.from_channel ? c.channel_seq : 0;
  // A release word left from an earlier GET cannot name this one (request
  // numbers wrap): cleared before the client learns where the block is.
  if (c.from_channel) c.channel->release.store(0, std::memory_order_relaxed);
  return Answer(c,
                ReplyHeaderBytes(req.op, req.request_id, absl::OkStatus(),
                                 flags | ucx::kReplyInArena),
                U64s({offset, block.size(), ctx_->instance_token}));
}

}  // namespace strata::cluster
