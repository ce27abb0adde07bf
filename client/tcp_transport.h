// Internal to the client library: the socket data plane's client end
// (BulkTransport over plain TCP; the daemon's end is
// cluster/tcp_data_plane.h; framing: common/tcp_protocol.h).
//
// Connections: a pool of idle TCP connections to the daemon. A call takes
// one (or opens one), sends its request and reads its reply on it, and
// gives it back; concurrent calls use separate connections. A connection
// that failed, or that a deadline interrupted mid-message, is closed, never
// reused: closing is what cancels a transfer here, so a deadline answers on
// time and the caller's memory is never touched after its call ended.
//
// Deadlines: the caller's wall-clock deadline is converted once, at entry,
// to the monotonic clock (common/steady_time.h); every syscall of the call
// (connect, each send and receive) is limited to the time left
// (common/socket_io.h), and backoff waits for it too.
//
// Copies: the sync Put sends straight from the caller's memory (one
// sendmsg of frame, header and block); GetInto receives straight into the
// caller's region; Get into a vector of the block's size. The kernel's
// socket copy is the only one on this side.
//
// Calls with `caller_waits` run on the calling thread. The others run on
// `async_threads` threads of the transport (PutAsync copies the block
// first), each with connections of its own from the pool.
//
// Retries: UNAVAILABLE (refused, reset, closed by the daemon, e.g. an idle
// pooled connection the daemon dropped) retries on a new connection with
// the RetryPolicy's backoff while the deadline allows. GET checksums are
// verified where the block landed; on a mismatch the GET is asked again
// with the daemon verifying its copy, as over UCX.
#ifndef STRATA_CLIENT_TCP_TRANSPORT_H_
#define STRATA_CLIENT_TCP_TRANSPORT_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/bulk_transport.h"
#include "client/rpc_call.h"

namespace strata::local {
struct LocalChannel;
}  // namespace strata::local

namespace strata::client::internal {

struct TcpTransportOptions {
  std::string address;  // The daemon's socket plane "host:port" (Hello).
  // Instead of `address`: the daemon's local connections, a Unix socket path
  // (Hello's local_path). Then MapSharedArena may map the daemon's arena.
  std::string local_path;
  RetryPolicy retry;
  int async_threads = 4;   // Threads for calls made without caller_waits.
  size_t max_idle_connections = 16;
  // ClientOptions::populate_arena_max_bytes.
  uint64_t populate_arena_max_bytes = uint64_t{4} << 30;
  // ClientOptions::local_daemon_uid.
  std::optional<uid_t> local_daemon_uid;
};

class TcpTransport final : public BulkTransport {
 public:
  // Resolves the address and starts the async threads; connects on the
  // first call. INVALID_ARGUMENT naming "address".
  static absl::StatusOr<std::unique_ptr<TcpTransport>> Create(
      const TcpTransportOptions& options);
  ~TcpTransport() override;
  TcpTransport(const TcpTransport&) = delete;
  TcpTransport& operator=(const TcpTransport&) = delete;

  // An empty round trip on this thread: OK once the daemon answered.
  absl::Status Ping(absl::Time deadline);
  // Local connections only, before any other call: maps the daemon's shared
  // DRAM arena (MAP_ARENA) after checking that the daemon on the socket is
  // the one whose Hello announced `token`. From then on PUTs are written
  // straight into the arena (RESERVE, copy, COMMIT) and GETs copied (and
  // verified) straight out of it. FAILED_PRECONDITION naming "local_path"
  // (not local, or another daemon), or the daemon's refusal
  // (FAILED_PRECONDITION naming "dram_shared", PERMISSION_DENIED naming
  // "local_data_plane_path"); then the transport still works, sending
  // blocks through the socket. Every RESERVE and in-arena GET reply names
  // its arena's token too: once one names another (the daemon restarted),
  // blocks go through the socket for the rest of the transport's life.
  // Each connection's first in-arena call also maps its message channel
  // (MAP_CHANNEL; common/local_channel.h), through which that connection's
  // in-arena messages then go (none from a daemon without channels, or
  // with STRATA_LOCAL_CHANNEL=0 in the environment).
  absl::Status MapSharedArena(uint64_t token, absl::Time deadline);

  void Put(const BlockKey& key, absl::Span<const uint8_t> block,
           bool caller_waits, const PutOptions& put, absl::Time deadline,
           PutCallback done) override;
  void Get(const BlockKey& key, bool caller_waits, absl::Time deadline,
           GetCallback done) override;
  void GetInto(const BlockKey& key, uint8_t* dst, size_t capacity,
               bool caller_waits, absl::Time deadline,
               SizeCallback done) override;
  size_t max_label_bytes() const override { return 2 * size_t{UINT16_MAX}; }

  // How long a call polls for its reply (yielding the core between polls)
  // before it sleeps in recv, when it is the only socket-plane call of the
  // process in flight; STRATA_TCP_CALLER_SPIN_US overrides it (0: never).
  static constexpr absl::Duration kCallerSpin = absl::Microseconds(100);
  // A GET's block is received this many bytes at a time, each piece hashed
  // as it lands (64 KiB was no better for 1 MiB GETs; the daemon receives
  // PUTs in 64 KiB pieces: bench/results/service.md, session 9).
  static constexpr size_t kVerifyChunkBytes = 256 << 10;

 private:
  // One request and where its reply goes.
  struct Exchange;

  TcpTransport() = default;
  // Runs the exchange with retries until it answers or its deadline passes.
  absl::Status Run(Exchange& x);
  // One attempt on one connection.
  absl::Status Attempt(Exchange& x);
  // A local connection's message channel (MAP_CHANNEL; common/
  // local_channel.h), mapped while the connection is open.
  struct Channel;
  // One request and its reply on `fd`, through `channel` when given (and
  // the request fits); *broken when the connection can no longer be used
  // (the caller closes it).
  absl::Status RoundTrip(int fd, Exchange& x, bool* broken,
                         Channel* channel = nullptr);
  // The channel of connection `fd`, mapped on its first in-arena call
  // (MAP_CHANNEL); nullptr when it has none (the daemon offers none, or
  // STRATA_LOCAL_CHANNEL=0). An error only when the connection broke.
  absl::StatusOr<Channel*> ChannelOf(int fd, const Exchange& x, bool* broken);
  // With the shared arena: RESERVE, the copy, COMMIT (a plain PUT when the
  // arena has no room); a GET answered in place, copied, then RELEASE.
  absl::Status PutInArena(int fd, Exchange& x, bool* broken);
  // Copies `block` to arena offset `offset`, checking its checksum on the
  // way; false when the check failed (the daemon is then left to refuse it).
  bool CopyIntoArena(absl::Span<const uint8_t> block, uint64_t offset);
  // A connection's spare arena range (kReplySpare): where its next put of
  // `bytes` bytes may go in one round trip (PUT_SPARE).
  struct Spare {
    uint64_t offset = 0;
    uint64_t bytes = 0;
    uint64_t token = 0;
  };
  std::optional<Spare> TakeSpare(int fd);
  // Remembers the spare a COMMIT or PUT_SPARE reply named (of
  // reply.block_length bytes), if any.
  void KeepSpare(int fd, const Exchange& reply);
  absl::Status GetInArena(int fd, Exchange& x, bool* broken);
  // The daemon, for messages: local_path or address.
  const std::string& Peer() const;
  // Whether [offset, offset + length) lies inside the mapped arena.
  bool InArena(uint64_t offset, uint64_t length) const;
  // Maps in the pages of the arena chunks [offset, +length) touches that
  // this process has not touched yet, one MADV_POPULATE_WRITE per 2 MiB
  // chunk instead of a page fault per 4 KiB inside the copy. The arena is
  // mapped without populating it, so Connect costs no time per GiB of
  // arena and a process maps in only the chunks it uses. Any thread; two
  // populating one chunk at once is harmless.
  void PopulateArena(uint64_t offset, uint64_t length);
  // A reply named another arena than the mapped one: marks it stale, and
  // answers UNAVAILABLE (the retry goes through the socket).
  absl::Status StaleArena();
  // Ends a call's use of the arena (Attempt); the last user of a stale
  // arena unmaps it, so a restarted daemon's old arena is not kept alive.
  void LeaveArena();
  // An idle connection, or a new one (connected before `deadline`, on the
  // SteadyNow() clock, as every deadline below).
  absl::StatusOr<int> TakeConnection(absl::Time deadline);
  void ReturnConnection(int fd);
  void CloseConnection(int fd);
  // Drops what this side keeps of a connection being closed: its spare and
  // its channel's mapping.
  void ForgetConnection(int fd) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs run(done) on this thread when the caller waits, else on an async
  // thread (done gets CANCELLED if the transport is destroyed first).
  template <typename Fn, typename Callback>
  void Dispatch(bool caller_waits, Fn run, Callback done);
  // Queues `fn` for an async thread; it gets `true` when cancelled (the
  // transport is being destroyed) instead of run.
  void RunAsync(absl::AnyInvocable<void(bool cancelled)> fn);
  void AsyncLoop();

  TcpTransportOptions options_;
  sockaddr_storage addr_{};
  socklen_t addr_len_ = 0;
  // The daemon's shared arena, mapped here (MapSharedArena; fixed after).
  uint8_t* arena_base_ = nullptr;
  size_t arena_bytes_ = 0;
  static constexpr uint64_t kArenaPopulateChunk = uint64_t{2} << 20;
  // One bit per kArenaPopulateChunk of the arena: set once this process
  // has mapped that chunk's pages in (PopulateArena). Made at the mapping,
  // only for an arena not mapped in at once (null: every chunk is).
  std::unique_ptr<std::atomic<uint64_t>[]> arena_populated_;
  uint64_t arena_token_ = 0;  // Of the daemon whose arena is mapped.
  // Set once a reply names another arena (the daemon restarted); then the
  // mapping goes once no call uses it (LeaveArena).
  std::atomic<bool> arena_stale_{false};
  // Calls that may touch the mapped arena: counted (seq_cst) before they
  // read arena_stale_, so whoever leaves a stale arena last unmaps it.
  std::atomic<int> arena_users_{0};
  std::atomic<bool> arena_unmapped_{false};

  absl::Mutex mu_;
  std::vector<int> idle_ ABSL_GUARDED_BY(mu_);
  // Spare ranges the daemon holds for connections (local only), by fd;
  // erased when the connection closes.
  absl::flat_hash_map<int, Spare> spares_ ABSL_GUARDED_BY(mu_);
  // Channels by fd (a null mapping: the connection has none; not asked
  // again); erased and unmapped when the connection closes. A channel is
  // used only by the call that holds its connection.
  absl::flat_hash_map<int, std::unique_ptr<Channel>> channels_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<int> busy_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::AnyInvocable<void(bool)>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

struct TcpTransport::Channel {
  local::LocalChannel* mapped = nullptr;
  uint32_t seq = 0;  // The number of the connection's last request in it.
};

}  // namespace strata::client::internal

#endif  // STRATA_CLIENT_TCP_TRANSPORT_H_
