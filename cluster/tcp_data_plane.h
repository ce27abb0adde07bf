// TcpDataPlane: stratad's bulk data path over plain TCP sockets, beside the
// UCX data plane (cluster/ucx_data_plane.h) and gRPC. Same messages as UCX
// (common/ucx_protocol.h), framed on a byte stream (common/tcp_protocol.h);
// docs/protocol.md, "Socket data plane".
//
// Why it exists: over TCP, UCX 1.13 copies every block once more on each
// side (packing into its send buffer, unpacking from its receive buffer).
// Here the kernel's socket copy is the only one: a PUT's block is received
// straight into a DRAM-arena reservation (TieredStore::Reserve), and a GET's
// reply is sent straight from the block's lease. Clients pick it over UCX
// when UCX would run over TCP (client/strata_client.h, data_plane "auto");
// bench/results/service.md has the measurement.
//
// One thread per connection, blocking I/O: requests on a connection are
// served in order, one at a time (the client opens more connections for
// concurrency). Engines hold a few long-lived connections, so threads are
// cheap next to the copies they save. At most `max_connections` are served;
// more are closed at accept.
//
// - PUT: validation (drain, max_block_bytes) first; then Reserve, which may
//   evict and waits at most kInFlightWriteWait for another write of the key;
//   the block is received into the reservation in pieces, each hashed as it
//   lands (verify_chunk_bytes), and committed without a second pass.
//   "Already present" and refused puts read and discard the block, so the
//   connection stays usable and the client reads its answer. When the arena
//   cannot hold the block at all, it is received into a buffer and stored with
//   Put (which falls back to lower tiers).
// - GET: TieredStore::Get, then the reply and the block leave in one
//   sendmsg from the lease.
// - A connection that breaks mid-message (client gone, deadline closed it)
//   aborts its reservation: nothing partial is stored. A receive or send
//   that moves nothing for `stall_timeout` mid-message drops the
//   connection; TCP keepalive drops one whose peer vanished.
//
// Local connections (options.local_path, a Unix socket; docs/protocol.md,
// "Local connections") speak the same messages, plus in-place access to a
// shared DRAM arena (TieredStoreOptions::dram_shared) for clients of the
// daemon's own user (SO_PEERCRED): MAP_ARENA hands the client the arena's
// memfd; a PUT is RESERVE (the daemon answers where), the client's copy into
// the arena, then COMMIT (the daemon commits what landed, hashing it unless
// the client checked it as it copied: kRequestVerifiedInPlace); a GET
// with kRequestInArena answers where the block lies and holds its lease
// until the connection's next message. The client's one copy is the only
// copy of either. After a COMMIT or PUT_SPARE the connection may keep a spare
// range of the same size (kRequestSpareNext), into which the client writes its
// next block and stores it with one PUT_SPARE round trip. A connection holds at
// most one reservation (dropped by any message but its COMMIT; kept however
// long the connection idles, since its client may still be writing the
// range), one spare and one lease; all go when it closes. A local
// connection may also get a message channel (MAP_CHANNEL; common/
// local_channel.h): shared memory through which those small messages and
// their replies go instead of the socket, with doorbells on the socket to
// wake an end that went to sleep.
//
// The channel pollers: a few threads of the plane (channel_pollers; one on
// up to 8 cores) each poll their share of the connections' channels and
// serve what they find there, so a request in a channel waits for one
// poller rather than for its own connection's thread to get a core (with 4
// local clients on 2 vCPUs, eight pollers yielding to each other cost more
// than the requests; bench/results/service.md, session 15). A new channel
// goes to the poller with the fewest. A poller never blocks: what would
// (another write of the key in flight, room only by evicting, a durable
// commit, a block not in the arena, a long checksum pass, a doorbell the
// socket cannot take now) it hands back to the connection's own thread,
// which serves it as before; eviction past the watermark after a commit
// goes there too. A request a poller took keeps its connection busy (Stop
// lets it finish) until it is answered, through any hand-back. After
// channel_spin without a request a poller marks its channels asleep and
// sleeps; a client then rings, the connection's thread serves that request
// and wakes the poller.
//
// Threading: Start/Stop/address are for the owning thread. Connection
// threads share only the ServiceContext (thread-safe), the connection
// set (mu_) and, once a connection has a channel, that connection with its
// poller (the connection's serve_mu; the poller's mu for its list).
#ifndef STRATA_CLUSTER_TCP_DATA_PLANE_H_
#define STRATA_CLUSTER_TCP_DATA_PLANE_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cluster/block_service.h"
#include "cluster/data_plane_request.h"
#include "common/local_channel.h"
#include "common/tcp_protocol.h"
#include "common/ucx_buffer_pool.h"

namespace strata::cluster {

struct TcpDataPlaneOptions {
  // TCP "host:port"; port 0 = any free port (clients learn it with Hello).
  std::string listen = "127.0.0.1:0";
  // A Unix socket path for local connections, or empty: none. Created with
  // mode 0600 (a stale socket file there, one that refuses connections, is
  // replaced; a live one, or one it cannot probe, is UNAVAILABLE naming
  // "local_data_plane_path") and removed at destruction if it is still the
  // file this plane made.
  std::string local_path;
  // A group id whose processes may use the local connections' shared arena
  // too (their primary or a supplementary group; SO_PEERCRED and
  // SO_PEERGROUPS): the socket file gets that group and mode 0660. -1: only
  // the daemon's user (mode 0600).
  int64_t local_group = -1;
  // A local_path that cannot be listened on (another daemon serves it, say)
  // leaves local connections off, logged as a warning, instead of failing
  // Start; local_path() is then empty. For a path no one asked for
  // explicitly (stratad's loopback default).
  bool local_path_optional = false;
  int max_connections = 256;
  // A message that makes no progress for this long ends its connection.
  absl::Duration stall_timeout = absl::Seconds(30);
  // Stop(): how long requests already being served may take to finish.
  absl::Duration stop_grace = absl::Seconds(2);
  // A PUT's block is received this many bytes at a time, each piece hashed
  // as it lands (the sender meanwhile sends the next); 0: one receive, then
  // Commit's checksum pass. stratad sets it from tcp_data_plane_verify_piece
  // (64 KiB below 8 hardware threads, 128 KiB from 8: bench/results/
  // service.md, sessions 9 and 17: the hash of the last piece is on the
  // critical path, and each piece costs a wake-up). Measure others with
  // stratad's --tcp_data_plane_verify_piece.
  uint64_t verify_chunk_bytes = 64 << 10;
  // After answering, a connection's thread polls for the next request for
  // this long (yielding the core between polls) before it sleeps in recv,
  // when no connection of the plane is being served: a request that comes
  // within it costs no wake-up. 0: never poll. STRATA_TCP_SERVE_SPIN_US
  // overrides it (measurements; bench/results/service.md, session 9).
  absl::Duration serve_spin = absl::Microseconds(100);
  // How long the channel poller polls the message channels (a word in
  // shared memory each, no syscall) after the last request it found, before
  // it sleeps. Longer than serve_spin: the next request of a client that
  // copies the block it just put or got comes after that copy (~80-100 us
  // for 1 MiB on the dev VM); if the poller slept by then, the client must
  // ring. 250 against 100 us (then per connection thread), one daemon
  // each, alternated: 1 MiB gets with one client faster in 12 of 14 rounds
  // (medians 10.1 against 8.6 GB/s), 256 KiB puts with 4 clients median
  // 6.9 against 5.8 GB/s, 256 KiB gets with 4 clients and 1 MiB puts
  // within noise (bench/results/service.md, session 12). 0: the poller
  // never polls (every channel request is rung and served by its
  // connection's thread). STRATA_CHANNEL_SPIN_US overrides it.
  absl::Duration channel_spin = absl::Microseconds(250);
  // Channel poller threads; 0: one per 8 hardware threads, at least one;
  // at most one per hardware thread. On a 16-core host one poller served 16
  // local clients with 2.3-9x less CPU than per-connection polling, but it
  // shares the cores with the clients' own polling threads, so many clients
  // starve a single one (bench/results/service.md, session 15).
  // STRATA_CHANNEL_POLLER_THREADS overrides it.
  int channel_pollers = 0;
};

class TcpDataPlane {
 public:
  // Binds and listens, then serves `ctx` (which, with ctx->store, must
  // outlive this object). INVALID_ARGUMENT naming "tcp_data_plane_listen"
  // for an address that is not host:port; UNAVAILABLE naming it when the
  // socket cannot be bound (the message carries errno's text).
  static absl::StatusOr<std::unique_ptr<TcpDataPlane>> Start(
      ServiceContext* ctx, const TcpDataPlaneOptions& options);
  ~TcpDataPlane();  // Stop()s.
  TcpDataPlane(const TcpDataPlane&) = delete;
  TcpDataPlane& operator=(const TcpDataPlane&) = delete;

  // The bound "host:port" (the port resolved when the config said 0).
  const std::string& address() const { return address_; }
  // options.local_path when local connections are served, else empty.
  const std::string& local_path() const { return local_path_; }

  // Stops accepting, lets requests being served finish for `stop_grace`
  // (idle connections close at once), then closes every connection and
  // waits for their threads, which release their leases and reservations.
  // Idempotent.
  void Stop();

 private:
  TcpDataPlane(ServiceContext* ctx, const TcpDataPlaneOptions& options)
      : ctx_(ctx), options_(options) {}
  struct ChannelPoller;
  // One connection's state, owned by its thread until it has a message
  // channel; from then on the channel poller serves it too, and whoever
  // serves it (or touches any field) holds serve_mu.
  struct Connection : std::enable_shared_from_this<Connection> {
    int fd = -1;
    bool local = false;        // Accepted on the Unix socket.
    // Local, and its peer runs as our user or in options.local_group: it
    // may map the shared arena.
    bool may_map_arena = false;
    // RESERVE's reservation until its COMMIT (or any other message).
    std::optional<kvstore::BlockReservation> reservation;
    uint64_t reservation_bytes = 0;
    // An in-arena GET's lease until the connection's next message (or, for
    // a GET from the channel, number lease_seq, until the channel's release
    // word names it).
    std::optional<kvstore::BlockLease> lease;
    uint32_t lease_seq = 0;
    // Arena space for the connection's next put (kRequestSpareNext), kept
    // until a PUT_SPARE uses it or the connection closes.
    kvstore::ArenaSpace spare;
    // The message channel (MAP_CHANNEL), mapped until the connection
    // closes, and the number of its last request.
    local::LocalChannel* channel = nullptr;
    uint32_t channel_seq = 0;
    // The request being served came over the channel: its data is
    // channel_data, and its reply goes back there when it fits, else on
    // the socket with the channel told first (Answer, AnswerOnSocket: every
    // reply to a channel request goes through them).
    bool from_channel = false;
    std::vector<uint8_t> channel_message;    // The request, copied out.
    absl::Span<const uint8_t> channel_data;  // Its data, in channel_message.
    std::vector<uint8_t> channel_header;     // Its header (and reused).

    // ---- Shared with the channel poller once the channel is mapped.
    absl::Mutex serve_mu;
    bool closed = false;  // Its thread ended it: the poller skips it.
    // The poller gave up on it (the channel broke or a reply failed); the
    // poller shut the socket, so its thread closes it.
    bool broken = false;
    // Set while the poller serves it: nothing may block; what would calls
    // HandBack instead.
    bool on_poller = false;
    // eventfd through which the poller wakes the connection's thread for
    // the work below.
    int handback_fd = -1;
    // The request the poller took is to be served again by the thread,
    // which may block: its parsed header, header status, data and start.
    bool handed_back = false;
    DataRequest handed_request;
    absl::Status handed_header_status;
    uint64_t handed_data_length = 0;
    absl::Time handed_start;
    bool evict_after = false;  // A commit took the DRAM tier past its mark.
    size_t ring_left = 0;      // Doorbell bytes the socket could not take.
    // The poller set the channel's request.reader_asleep (it sleeps).
    bool marked_asleep = false;
    // Its poller: set by AddChannel on the connection's own thread before
    // the channel is published, read only by that thread (not serve_mu's).
    ChannelPoller* poller = nullptr;
  };
  // One channel poller thread and the channels it serves.
  struct ChannelPoller {
    absl::Mutex mu;
    std::thread thread ABSL_GUARDED_BY(mu);  // Started with its first channel.
    std::vector<std::shared_ptr<Connection>> channels ABSL_GUARDED_BY(mu);
    uint64_t version ABSL_GUARDED_BY(mu) = 0;  // Of `channels`.
    bool wake ABSL_GUARDED_BY(mu) = false;
    bool stop ABSL_GUARDED_BY(mu) = false;
    // True while it sleeps (or does not run): a thread that served a rung
    // request wakes it.
    std::atomic<bool> asleep{true};
  };
  // Binds options.local_path (Start).
  absl::Status ListenLocal();
  void AcceptLoop();
  // Accepts one connection on `listen_fd` and starts its thread.
  void AcceptOne(int listen_fd, bool local);
  // Whether the peer of local connection `fd` may map the shared arena: it
  // runs as our user, or in options_.local_group.
  bool PeerMayMapArena(int fd) const;
  void Serve(uint64_t id, std::shared_ptr<Connection> conn);
  // Reads the rest of a request whose frame came on the socket and serves
  // it; false when the connection must close.
  bool ServeSocketRequest(Connection& c, const tcp::TcpFrame& frame,
                          std::vector<uint8_t>& header);
  // Marks the connection mid-request (Stop lets it finish); false while
  // stopping (the request is not served).
  bool BeginRequest(int fd);
  void EndRequest(int fd);
  // Before a connection's thread sleeps for its next request: polls for it
  // (serve_spin).
  void PollForRequest(int fd);
  // ---- Connections with a message channel (tcp_data_plane_channel.cc).
  // One wait of the connection's thread, for its socket or the poller's
  // hand-back, and what came; false when the connection must close.
  bool ServeChannelConnection(Connection& c);
  // Serves the request waiting in c's channel, if one does (on the poller:
  // never blocking). Requires c.serve_mu. Sets c.broken (and shuts the
  // socket) when the connection must close.
  void ServeChannelRequest(Connection& c, bool on_poller);
  // The request the poller handed back and the rest of a doorbell it could
  // not send (ServeChannelConnection runs the eviction itself, without
  // serve_mu); false when the connection must close.
  bool DoHandedBack(Connection& c);
  // For HandleRequest's handlers on the poller, at what would block: leaves
  // the request to the connection's thread. Returns true (it stays open).
  static bool HandBack(Connection& c);
  // A channel poller's thread.
  void ChannelPollerLoop(ChannelPoller& poller);
  // Polls every channel once; true when it served a request.
  bool PollChannelsOnce(const std::vector<std::shared_ptr<Connection>>& all);
  // Marks every channel asleep (their clients ring from then on). False
  // when a request came meanwhile; `*all_marked` false when a channel could
  // not be marked (its thread holds it): the poller then naps, not sleeps.
  bool MarkChannelsAsleep(const std::vector<std::shared_ptr<Connection>>& all,
                          bool* all_marked);
  // Wakes the poller if it sleeps (a connection's thread served a rung
  // request).
  void WakeChannelPoller(ChannelPoller& poller);
  void StopChannelPollers();
  // Adds c (its channel mapped) to a poller's list / removes it.
  void AddChannel(std::shared_ptr<Connection> c);
  void RemoveChannel(const Connection* c);
  // Rings the client of c's reply slot if it sleeps; on the poller without
  // blocking (what the socket cannot take now is left to the thread).
  bool RingClient(Connection& c);
  // Drops c.lease when the channel's release word names its GET.
  static void DropReleasedLease(Connection& c);
  // Copies the channel's request out and splits it into frame, header and
  // data; false when it is malformed (the connection closes).
  bool TakeChannelRequest(Connection& c, tcp::TcpFrame* frame,
                          std::vector<uint8_t>* header);
  // MAP_CHANNEL: creates the connection's channel and passes its memfd.
  bool SendChannel(Connection& c, const DataRequest& req);
  // Sends a reply to `c`'s request: into the channel when the request came
  // from there and the reply fits, else on the socket (AnswerOnSocket).
  bool Answer(Connection& c, const std::vector<uint8_t>& header,
              absl::Span<const uint8_t> data, int pass_fd = -1);
  // On the socket (SendFramed); a request from the channel is first told
  // so there (kReplyOnSocket).
  bool AnswerOnSocket(Connection& c, const std::vector<uint8_t>& header,
                      absl::Span<const uint8_t> data, int pass_fd = -1);
  bool AnswerStatus(Connection& c, const DataRequest& req,
                    const absl::Status& status, uint32_t flags);
  // Joins the threads of connections that ended (the accept loop, before
  // each new one, and Stop).
  void ReapFinished();
  // One request whose frame and header were read; false when the connection
  // must close.
  bool HandleRequest(Connection& c, const DataRequest& req,
                     const absl::Status& header_status, uint64_t data_length,
                     absl::Time start);
  // MAP_ARENA, RESERVE, COMMIT and RELEASE (tcp_data_plane_local.cc).
  bool HandleLocalOp(Connection& c, const DataRequest& req,
                     uint64_t data_length, absl::Time start);
  bool HandleReserve(Connection& c, const DataRequest& req,
                     uint64_t block_length, absl::Time start);
  bool HandleCommit(Connection& c, const DataRequest& req, absl::Time start);
  // Frees a connection's spare (or reservation), or while stopping keeps it
  // until Stop has joined every connection: the client may still be
  // writing the range, and requests still being served must not get it.
  void DropSpare(Connection& c);
  void DropReservation(Connection& c);
  bool HandlePutSpare(Connection& c, const DataRequest& req,
                      uint64_t block_length, absl::Time start);
  // Answers a COMMIT or PUT_SPARE: with kRequestSpareNext, first sets aside
  // a spare range of `size` bytes (unless the connection holds one; not
  // while stopping or draining; without evicting; all spares together at
  // most a quarter of the DRAM tier) and names it in the reply
  // (kReplySpare). A reply without it leaves the connection none.
  bool ReplyWithSpare(Connection& c, const DataRequest& req,
                      const absl::Status& status, uint32_t flags,
                      uint64_t size);
  bool SendArena(Connection& c, const DataRequest& req);
  // A GET with kRequestInArena on a local connection: where the block lies,
  // or its bytes as usual when it is not in the shared arena.
  bool HandleGetInArena(Connection& c, const DataRequest& req,
                        absl::Time start);
  // Reads the block unless it refuses the put (then `*unread` stays the
  // block's length and the caller drops it); false when the connection
  // must close.
  bool HandlePut(int fd, const DataRequest& req, uint64_t* unread,
                 absl::Status* status, uint32_t* flags);
  bool HandleGet(int fd, const DataRequest& req, absl::Time start);
  // Sends frame, header and data (which may be empty); false when the
  // connection broke. `pass_fd` >= 0 rides along (SCM_RIGHTS).
  static bool SendFramed(int fd, const std::vector<uint8_t>& header,
                         absl::Span<const uint8_t> data, int pass_fd = -1);
  bool Stopping();
  // Whether `c` may use the shared arena: FAILED_PRECONDITION naming
  // "dram_shared" when the arena is private, PERMISSION_DENIED naming
  // "local_data_plane_path" for a peer of another user.
  absl::Status ArenaAccess(const Connection& c) const;
  // Commits a block written in place (COMMIT, PUT_SPARE): the daemon's
  // checksum pass unless the client did it (kRequestVerifiedInPlace).
  // On the poller (c.on_poller) the commit does not evict: c.evict_after
  // tells the connection's thread to.
  absl::Status CommitInPlace(Connection& c,
                             kvstore::BlockReservation reservation,
                             uint32_t request_flags);
  // On the poller: whether committing a block of `size` bytes could block
  // (a durable write, or the daemon's own checksum pass over a large block,
  // which a writer that checked it as it wrote, kRequestVerifiedInPlace in
  // `request_flags`, spares); such requests are handed back.
  static bool CommitMayBlock(bool durable, uint32_t request_flags,
                             uint64_t size);
  // Sends a reply without data; false when the connection broke.
  bool SendReply(int fd, const DataRequest& req, const absl::Status& status,
                 uint32_t flags);
  void Record(const DataRequest& req, const absl::Status& status,
              absl::Time start, uint64_t bytes_in, uint64_t bytes_out);

  ServiceContext* const ctx_;
  TcpDataPlaneOptions options_;  // Fixed after Start.
  // Receive buffers of blocks the arena cannot hold now (thread-safe).
  ucx::BufferPool buffers_{size_t{256} << 20};
  std::string address_;
  std::string local_path_;
  dev_t local_dev_ = 0;  // The socket file ListenLocal made.
  ino_t local_ino_ = 0;
  int listen_fd_ = -1;
  int local_listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: wakes the accept loop at Stop.
  std::thread acceptor_;
  bool stopped_ = false;  // Owning thread.
  std::atomic<int> polling_{0};  // 1 while a connection's thread polls.
  std::atomic<uint64_t> spare_bytes_{0};  // Held by all connections' spares.
  std::atomic<int> busy_count_{0};  // busy_.size(), read without mu_.

  absl::Mutex mu_;
  // Open connections, and which of them are mid-request (busy).
  absl::flat_hash_set<int> conns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<int> busy_ ABSL_GUARDED_BY(mu_);
  // One thread per connection, by connection id; joined once it ended
  // (never detached: the plane outlives every one of them).
  absl::flat_hash_map<uint64_t, std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> finished_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Spares and reservations of connections closed while stopping (DropSpare).
  std::vector<kvstore::ArenaSpace> retired_spares_ ABSL_GUARDED_BY(mu_);
  std::vector<kvstore::BlockReservation> retired_reservations_
      ABSL_GUARDED_BY(mu_);

  // The channel pollers (options_.channel_pollers of them, made by Start;
  // the list is fixed from then on). Lock order: a connection's serve_mu,
  // then a poller's mu or mu_. A poller only TryLocks serve_mu, and holds
  // no other lock while it serves.
  std::vector<std::unique_ptr<ChannelPoller>> pollers_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_TCP_DATA_PLANE_H_
