// TcpTransport's local connections (client/tcp_transport.h): the daemon's
// shared DRAM arena (MAP_ARENA; puts written and gets copied in place,
// spare ranges) and each connection's message channel (MAP_CHANNEL;
// common/local_channel.h). The wire is in docs/protocol.md, "Local
// connections".
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/local_socket_trust.h"
#include "client/tcp_exchange.h"
#include "client/tcp_transport.h"
#include "common/local_channel.h"
#include "common/sealed_memfd.h"
#include "common/socket_io.h"
#include "common/steady_time.h"
#include "common/tcp_protocol.h"
#include "common/ucx_protocol.h"
#include "kvstore/block_format.h"

#ifndef MADV_POPULATE_WRITE  // Headers older than Linux 5.14's.
#define MADV_POPULATE_WRITE 23
#endif

namespace strata::client::internal {
namespace {

// Releases the lease of in-arena GET number `seq` (the channel's release
// word), ringing the daemon if it sleeps so the lease goes now; false when
// the doorbell could not be sent.
bool ReleaseInChannel(int fd, local::LocalChannel& channel, uint32_t seq,
                      absl::Time deadline) {
  channel.release.store(seq, std::memory_order_seq_cst);
  return local::RingIfAsleep(fd, channel.request, deadline) == sockio::Io::kOk;
}

}  // namespace

// ---- The shared arena (local connections).

absl::Status TcpTransport::PutInArena(int fd, Exchange& x, bool* broken) {
  absl::StatusOr<Channel*> channel = ChannelOf(fd, x, broken);
  if (!channel.ok()) return channel.status();
  // The connection's spare range, when it fits: one round trip, PUT_SPARE.
  std::optional<Spare> spare = TakeSpare(fd);
  if (spare.has_value() && spare->bytes == x.block.size() &&
      spare->token == arena_token_ && InArena(spare->offset, x.block.size())) {
    Exchange put = x.Step(ucx::Op::kPutSpare);
    put.flags |= ucx::kRequestSpareNext;
    if (CopyIntoArena(x.block, spare->offset)) {
      put.flags |= ucx::kRequestVerifiedInPlace;
    }
    absl::Status s = RoundTrip(fd, put, broken, *channel);
    x.reply_flags = put.reply_flags;
    if (!*broken) KeepSpare(fd, put);
    // FAILED_PRECONDITION naming "op": the daemon holds no such spare;
    // reserve instead. Any other answer is the put's.
    if (*broken || !absl::IsFailedPrecondition(s) ||
        !absl::StartsWith(s.message(), "op:")) {
      return s;
    }
  }
  Exchange reserve = x.Step(ucx::Op::kReserve);
  absl::Status s = RoundTrip(fd, reserve, broken, *channel);
  x.reply_flags = reserve.reply_flags;
  if (absl::IsResourceExhausted(s) && !*broken) {
    // The arena cannot hold it now: a plain PUT may place it in a lower tier.
    return RoundTrip(fd, x, broken);
  }
  if (!s.ok() || (reserve.reply_flags & ucx::kReplyAlreadyPresent)) return s;
  if (reserve.words[1] != arena_token_) {
    *broken = true;  // Aborts the reservation in the other arena.
    return StaleArena();
  }
  const uint64_t offset = reserve.words[0];
  if (!InArena(offset, x.block.size())) {
    *broken = true;
    return absl::InternalError(absl::StrCat(
        "data_plane: ", Peer(), " reserved [", offset, ", +", x.block.size(),
        ") outside its ", arena_bytes_, "-byte arena"));
  }
  Exchange commit = x.Step(ucx::Op::kCommit);
  commit.flags = ucx::kRequestSpareNext;
  commit.block_length = x.block.size();  // The spare asked for (not sent).
  if (CopyIntoArena(x.block, offset)) {
    commit.flags |= ucx::kRequestVerifiedInPlace;
  }
  s = RoundTrip(fd, commit, broken, *channel);
  x.reply_flags = commit.reply_flags;
  if (!*broken) KeepSpare(fd, commit);
  return s;
}

bool TcpTransport::CopyIntoArena(absl::Span<const uint8_t> block,
                                 uint64_t offset) {
  // The only copy of the block: straight into its place in the store, its
  // checksum checked on the way (so the daemon need not read it again).
  // (1 MiB puts 10.3-11.1 GB/s against 9.3-9.9 with the daemon hashing the
  // arena's copy; 256 KiB within noise: bench/results/service.md, session 10.)
  // A large block's hash is taken over by the checksum helper thread while
  // this one copies (kvstore/checksum_helper.h).
  PopulateArena(offset, block.size());
  absl::StatusOr<kvstore::BlockView> copied = kvstore::CopyVerifiedBlock(
      block, absl::MakeSpan(arena_base_ + offset, block.size()),
      kvstore::CopyDestination::kStoredHashSource,
      kvstore::CopyHelp::kHelperForLargeBlocks);
  // A block that failed here is committed unverified: the daemon's own
  // check refuses it (and counts it), with the same codes as elsewhere.
  if (!copied.ok() && !absl::IsDataLoss(copied.status())) {
    // Not a block (bad header or length): copy it all, so the daemon's
    // check sees the caller's bytes.
    kvstore::CopyAroundTheCache(arena_base_ + offset, block.data(),
                                block.size());
  }
  return copied.ok();
}

std::optional<TcpTransport::Spare> TcpTransport::TakeSpare(int fd) {
  absl::MutexLock lock(&mu_);
  auto it = spares_.find(fd);
  if (it == spares_.end()) return std::nullopt;
  Spare spare = it->second;
  spares_.erase(it);
  return spare;
}

void TcpTransport::KeepSpare(int fd, const Exchange& reply) {
  if (!(reply.reply_flags & ucx::kReplySpare)) return;
  absl::MutexLock lock(&mu_);
  spares_[fd] = Spare{reply.words[0], reply.block_length, reply.words[1]};
}

absl::Status TcpTransport::GetInArena(int fd, Exchange& x, bool* broken) {
  absl::StatusOr<Channel*> channel = ChannelOf(fd, x, broken);
  if (!channel.ok()) return channel.status();
  x.flags |= ucx::kRequestInArena;
  const uint32_t seq_before = *channel != nullptr ? (*channel)->seq : 0;
  absl::Status s = RoundTrip(fd, x, broken, *channel);
  if (!s.ok() || !(x.reply_flags & ucx::kReplyInArena)) return s;
  // The GET went through the channel (it fits, unless its labels do not).
  Channel* const released_in_channel =
      *channel != nullptr && (*channel)->seq != seq_before ? *channel : nullptr;
  // The daemon holds the block's lease until RELEASE (or this connection's
  // next message): the range stays the block's while it is copied.
  const uint64_t offset = x.words[0], length = x.words[1];
  if (x.words[2] != arena_token_) {
    *broken = true;  // Drops the lease; the retry reads the bytes instead.
    return StaleArena();
  }
  if (!InArena(offset, length)) {
    *broken = true;
    return absl::InternalError(
        absl::StrCat("data_plane: ", Peer(), " answered [", offset, ", +",
                     length, ") outside its ", arena_bytes_, "-byte arena"));
  }
  PopulateArena(offset, length);
  const absl::Span<const uint8_t> src(arena_base_ + offset, length);
  if (x.dst != nullptr && length > x.capacity) {
    s = absl::OutOfRangeError(absl::StrCat("capacity: block is ", length,
                                           " bytes, capacity ", x.capacity));
  } else {
    uint8_t* dst = x.dst;
    if (dst == nullptr) {
      x.landed.resize(length);
      dst = x.landed.data();
    }
    // One pass: copied and verified where it lands (a large block's hash
    // taken over by the checksum helper thread while this one copies).
    x.landed_check =
        kvstore::CopyVerifiedBlock(src, absl::MakeSpan(dst, length),
                                   kvstore::CopyDestination::kReadSoon,
                                   kvstore::CopyHelp::kHelperForLargeBlocks)
            .status();
    x.received = length;
  }
  if (released_in_channel != nullptr) {
    // Through the channel's release word: no message, so the connection's
    // next request need not wait for the daemon to take one. (A doorbell
    // is tried even when the copy used up the call's deadline.)
    if (!ReleaseInChannel(
            fd, *released_in_channel->mapped, released_in_channel->seq,
            std::max(x.deadline, SteadyNow() + absl::Milliseconds(100)))) {
      *broken = true;
    }
    return s;
  }
  if (*channel != nullptr) {
    // A GET that went on the socket (its labels did not fit the channel)
    // on a connection with a channel: no RELEASE, which could be overtaken
    // by (and then drop the lease of) a later request through the channel;
    // the lease goes with the connection's next message.
    return s;
  }
  Exchange release = x.Step(ucx::Op::kRelease);
  if (absl::Status r = RoundTrip(fd, release, broken); !r.ok()) {
    *broken = true;
  }
  return s;
}

absl::StatusOr<TcpTransport::Channel*> TcpTransport::ChannelOf(
    int fd, const Exchange& x, bool* broken) {
  {
    absl::MutexLock lock(&mu_);
    auto it = channels_.find(fd);
    if (it != channels_.end()) {
      return it->second->mapped != nullptr ? it->second.get() : nullptr;
    }
  }
  // STRATA_LOCAL_CHANNEL=0: no channel (measurements).
  static const bool enabled = [] {
    const char* env = std::getenv("STRATA_LOCAL_CHANNEL");
    return env == nullptr || std::atoi(env) != 0;
  }();
  auto channel = std::make_unique<Channel>();
  if (enabled) {
    Exchange map;
    map.op = ucx::Op::kMapChannel;
    map.deadline = x.deadline;
    map.request_id = x.request_id;
    absl::Status s = RoundTrip(fd, map, broken);
    absl::Cleanup close_passed = [&map] {
      if (map.passed_fd >= 0) close(map.passed_fd);
    };
    if (*broken)
      return s.ok() ? absl::UnavailableError(
                          "data_plane: MAP_CHANNEL broke the connection")
                    : s;
    // Refused (a daemon without channels answers "op"): none, and not
    // asked again on this connection.
    struct stat st {};
    if (s.ok() && map.passed_fd >= 0 && fstat(map.passed_fd, &st) == 0 &&
        static_cast<size_t>(st.st_size) >= local::kChannelBytes &&
        SizeCannotShrink(map.passed_fd)) {
      void* mapped = mmap(nullptr, local::kChannelBytes, PROT_READ | PROT_WRITE,
                          MAP_SHARED, map.passed_fd, 0);
      if (mapped != MAP_FAILED) {
        auto* c = static_cast<local::LocalChannel*>(mapped);
        if (c->magic == local::kChannelMagic &&
            c->version == local::kChannelVersion) {
          channel->mapped = c;
        } else {
          munmap(mapped, local::kChannelBytes);
        }
      }
    }
  }
  absl::MutexLock lock(&mu_);
  Channel* result = channel->mapped != nullptr ? channel.get() : nullptr;
  channels_[fd] = std::move(channel);
  return result;
}

bool TcpTransport::InArena(uint64_t offset, uint64_t length) const {
  return offset <= arena_bytes_ && length <= arena_bytes_ - offset;
}

void TcpTransport::PopulateArena(uint64_t offset, uint64_t length) {
  if (arena_populated_ == nullptr || length == 0) return;  // All mapped in.
  const uint64_t first = offset / kArenaPopulateChunk;
  const uint64_t last = (offset + length - 1) / kArenaPopulateChunk;
  for (uint64_t chunk = first; chunk <= last; ++chunk) {
    std::atomic<uint64_t>& word = arena_populated_[chunk / 64];
    const uint64_t bit = uint64_t{1} << (chunk % 64);
    if ((word.load(std::memory_order_relaxed) & bit) != 0) continue;
    const uint64_t at = chunk * kArenaPopulateChunk;
    // Before Linux 5.14 (EINVAL) the copy faults the pages in instead.
    madvise(arena_base_ + at, std::min(kArenaPopulateChunk, arena_bytes_ - at),
            MADV_POPULATE_WRITE);
    word.fetch_or(bit, std::memory_order_relaxed);
  }
}

absl::Status TcpTransport::StaleArena() {
  // The daemon on the socket is not the one whose arena is mapped here (it
  // restarted): from now on blocks go through the socket. The old mapping
  // goes once no call uses it (another may still be copying): LeaveArena.
  arena_stale_.store(true, std::memory_order_seq_cst);
  return absl::UnavailableError(absl::StrCat(
      "data_plane: the daemon at ", Peer(),
      " is not the one whose arena this client mapped (it restarted); "
      "blocks go through the socket until the client reconnects"));
}

void TcpTransport::LeaveArena() {
  // Only a user sets arena_stale_, so the last user to leave after that
  // sees it; arena_unmapped_ makes the unmapping happen once.
  if (arena_users_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
      arena_stale_.load(std::memory_order_seq_cst) &&
      !arena_unmapped_.exchange(true, std::memory_order_acq_rel)) {
    munmap(arena_base_, arena_bytes_);
  }
}

absl::Status TcpTransport::MapSharedArena(uint64_t token, absl::Time deadline) {
  if (options_.local_path.empty()) {
    return absl::FailedPreconditionError(
        "local_path: the shared arena needs a local connection");
  }
  Exchange x;
  x.op = ucx::Op::kMapArena;
  x.deadline = SteadyFromWall(deadline);
  x.request_id = 1;
  absl::StatusOr<int> taken = TakeConnection(x.deadline);
  if (!taken.ok()) return taken.status();
  // Blocks go only into an arena of a daemon of our own user, or of one
  // that shared its local connections with our group on purpose.
  ucred peer{};
  socklen_t peer_len = sizeof(peer);
  if (getsockopt(*taken, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0) {
    CloseConnection(*taken);
    return absl::FailedPreconditionError(absl::StrCat(
        "local_path: ", options_.local_path, ": cannot tell who serves it"));
  }
  if (options_.local_daemon_uid.has_value() &&
      peer.uid != *options_.local_daemon_uid) {
    CloseConnection(*taken);
    return absl::FailedPreconditionError(absl::StrCat(
        "local_daemon_uid: ", options_.local_path, " is served by uid ",
        peer.uid, ", not ", *options_.local_daemon_uid));
  }
  if (peer.uid != geteuid()) {
    if (absl::Status s = CheckSocketSharedWithUs(options_.local_path, peer.uid);
        !s.ok()) {
      CloseConnection(*taken);
      return s;
    }
  }
  bool broken = false;
  absl::Status s = RoundTrip(*taken, x, &broken);
  if (broken) {
    CloseConnection(*taken);
  } else {
    ReturnConnection(*taken);
  }
  absl::Cleanup close_passed = [&x] {
    if (x.passed_fd >= 0) close(x.passed_fd);
  };
  if (!s.ok()) return s;
  if (x.words[0] != token) {
    // Another daemon owns this path on this host (the one Hello reached is
    // elsewhere): its arena is not the one to use.
    return absl::FailedPreconditionError(absl::StrCat(
        "local_path: ", options_.local_path,
        " is served by another daemon than the one Hello reached"));
  }
  struct stat st {};
  if (x.passed_fd < 0 || fstat(x.passed_fd, &st) != 0 || st.st_size <= 0 ||
      !SizeCannotShrink(x.passed_fd)) {
    return absl::InternalError(absl::StrCat(
        "data_plane: ", Peer(),
        " answered MAP_ARENA without a usable arena (a memfd sealed at "
        "its size)"));
  }
  const size_t bytes = static_cast<size_t>(st.st_size);
  // Mapped in now, up to populate_arena_max_bytes: a page first touched by
  // a copy costs a fault in the copy (fresh 256 KiB puts ran at 3.2-3.4
  // GB/s populating 2 MiB at a time, against 11-20 with the arena mapped
  // in). Populating is 0.3-0.6 s per 3 GiB on the dev VM (4 KiB pages), so
  // a larger arena is left to PopulateArena, chunk by chunk.
  const bool populate = bytes <= options_.populate_arena_max_bytes;
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                    MAP_SHARED | (populate ? MAP_POPULATE : 0), x.passed_fd, 0);
  if (base == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("data_plane: mapping the daemon's ", bytes,
                     "-byte arena: ", std::strerror(errno)));
  }
  arena_base_ = static_cast<uint8_t*>(base);
  arena_bytes_ = bytes;
  if (!populate) {
    const size_t chunks =
        (bytes + kArenaPopulateChunk - 1) / kArenaPopulateChunk;
    // Value-initialized: no chunk mapped in yet.
    arena_populated_ =
        std::make_unique<std::atomic<uint64_t>[]>((chunks + 63) / 64);
  }
  arena_token_ = token;
  return absl::OkStatus();
}

}  // namespace strata::client::internal
