// UcxDataPlane: stratad's bulk data path over UCX active messages (TCP, or
// shared memory between processes of one host), beside gRPC, which keeps
// control and small payloads. Wire format: common/ucx_protocol.h; behaviour
// and settings: docs/protocol.md ("Data plane").
//
// One UCX context, one worker and one progress thread (ucx::WorkerLoop), a
// listener on a TCP sockaddr, and a small pool of threads for the store work
// (TieredStore::Put may evict and write RocksDB; Get may read the SSD tier):
// the progress thread only parses requests, moves bytes and sends replies.
//
// - PUT: the block is received straight into a DRAM-arena reservation
//   (TieredStore::Reserve; rendezvous for large blocks, so UCX moves it from
//   the client's memory into the arena with no copy in between), then a pool
//   thread verifies and commits it (TieredStore::Commit). A key already
//   stored or in flight is answered "already present" without receiving the
//   block. When the arena has no free range right now (reserving here never
//   evicts: eviction may write the SSD tier), the block is received into a
//   reused buffer instead and a pool thread stores it with Put, which evicts
//   or falls back to lower tiers. The reply carries the outcome.
// - GET: a pool thread takes a BlockLease; the reply's data is sent straight
//   from the lease (zero-copy from the DRAM arena) and the lease is held
//   until UCX reports the send complete or the connection is torn down.
// - Validation, status codes and messages are the gRPC path's (shared helpers
//   in block_service.h, drain flag included); RPC metrics count UCX puts and
//   gets as Rpc::kPut / kGet.
//
// Failure handling: an endpoint error (client gone) tears down its
// connection and replies for it are dropped. The operations in flight on it
// (leases of replies being sent, receive buffers) are released at once in
// peer mode, where a forced close cancels them, and after kOrphanGrace in
// mode none, where UCX 1.13 cannot force-close and a transfer the client
// still drives must not read a released lease.
//
// Threading: Start/Stop/address are for the owning thread. Everything else
// runs on the progress thread or on pool threads, which hand replies back to
// the progress thread with WorkerLoop::Post.
#ifndef STRATA_CLUSTER_UCX_DATA_PLANE_H_
#define STRATA_CLUSTER_UCX_DATA_PLANE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/block_service.h"
#include "cluster/data_plane_request.h"
#include "common/ucx_buffer_pool.h"
#include "common/ucx_protocol.h"
#include "common/ucx_worker_loop.h"
#include "kvstore/block_format.h"
#include "kvstore/tiered_store.h"

namespace strata::cluster {

struct UcxDataPlaneOptions {
  std::string listen = "127.0.0.1:7071";  // TCP "host:port"; port 0 = any.
  // UCX error-handling mode of the endpoints (clients must match; they learn
  // it from Hello). Peer mode excludes UCX 1.13's shared-memory transports.
  bool peer_error_handling = false;
  int worker_threads = 4;  // Store work; as many again commit received puts.
  // GETs of DRAM blocks and non-durable PUT commits of blocks up to this
  // size (whole blocks: the default is a 1 MiB payload and its header) run
  // on the progress thread itself (a lookup plus at most one checksum pass,
  // ~15 us for 256 KiB here) instead of hopping to a store thread and back
  // (two thread wake-ups per request). Larger blocks, SSD reads and durable
  // puts always go to the store threads. 0: never inline. The environment
  // variable STRATA_UCX_INLINE_MAX_BYTES overrides it (measurements).
  uint64_t inline_store_max_bytes =
      (uint64_t{1} << 20) + kvstore::kBlockHeaderSize;
  // Stop(): how long replies already being sent may take to finish.
  absl::Duration stop_grace = absl::Seconds(2);
};

class WorkPool;

class UcxDataPlane {
 public:
  static constexpr absl::Duration kOrphanGrace = absl::Seconds(10);

  // Creates the UCX worker and listener and starts serving `ctx` (which must
  // outlive this object; ctx->store must outlive it too, since replies hold
  // leases). UNAVAILABLE naming "data_plane_listen" when UCX cannot start or
  // listen (the message carries UCX's reason).
  static absl::StatusOr<std::unique_ptr<UcxDataPlane>> Start(
      ServiceContext* ctx, const UcxDataPlaneOptions& options);
  ~UcxDataPlane();  // Stop()s.
  UcxDataPlane(const UcxDataPlane&) = delete;
  UcxDataPlane& operator=(const UcxDataPlane&) = delete;

  // The bound "host:port" (the port resolved when the config said 0).
  const std::string& address() const { return address_; }

  // Refuses new puts, finishes the store work already queued, gives replies
  // in flight `stop_grace`, then closes every endpoint and the listener and
  // joins the threads. Idempotent.
  void Stop();

 private:
  // A parsed request (DataRequest), carried from the progress thread to a
  // pool thread and back with the reply.
  struct Request : DataRequest {
    uint64_t conn_id = 0;
    uint64_t bytes_in = 0;
    absl::Time start;  // SteadyNow() when it arrived (for latency).
  };
  // One UCX operation in flight: receiving a PUT's block, or sending a reply.
  struct Pending {
    uint64_t conn_id = 0;
    std::optional<Request> put;  // Receiving.
    // Where the block lands: an arena reservation, else `buffer`.
    std::optional<kvstore::BlockReservation> reservation;
    ucx::PoolBuffer buffer;
    size_t capacity = 0;  // Of `buffer` (BufferPool).
    size_t size = 0;
    std::vector<uint8_t> header;  // Sending.
    std::optional<kvstore::BlockLease> lease;
    // Its connection is gone (mode none): released at this time.
    absl::Time release_at = absl::InfiniteFuture();
  };

  UcxDataPlane(ServiceContext* ctx, const UcxDataPlaneOptions& options);
  absl::Status Listen();  // Progress thread.
  absl::Time Tick();      // Progress thread.

  static void OnConnRequest(ucp_conn_request_h request, void* arg);
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t OnRequest(void* arg, const void* header,
                                size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);
  static void OnPutData(void* request, ucs_status_t status, size_t length,
                        void* user_data);
  static void OnReplySent(void* request, ucs_status_t status, void* user_data);

  ucs_status_t HandleRequest(const void* header, size_t header_length,
                             void* data, size_t length,
                             const ucp_am_recv_param_t* param);
  void SubmitGet(Request req);
  void SubmitPut(Request req, ucx::PoolBuffer buffer,
                 size_t capacity, size_t size);
  void SubmitCommit(Request req, kvstore::BlockReservation reservation);
  // Commits here (progress thread) when small and not durable, else
  // SubmitCommit.
  void CommitOrSubmit(Request req, kvstore::BlockReservation reservation);
  // Progress thread: a GET answered without a store thread; false when the
  // block must be read by one.
  bool TryInlineGet(const Request& req);
  // From pool threads.
  void PostReply(Request req, absl::Status status, uint32_t flags,
                 std::optional<kvstore::BlockLease> lease);
  // Progress thread: records metrics and sends the reply (dropped when the
  // connection is gone).
  void Reply(const Request& req, const absl::Status& status, uint32_t flags,
             std::optional<kvstore::BlockLease> lease);
  void Teardown(uint64_t conn_id);
  void CloseEverything();

  ServiceContext* const ctx_;
  UcxDataPlaneOptions options_;  // Fixed after Start.
  // An EvictToWatermarks job is queued (after inline commits).
  std::atomic<bool> eviction_queued_{false};
  std::string address_;
  bool stopped_ = false;  // Owning thread.

  // Progress thread only (declared before loop_: UCX may run completion
  // callbacks while the worker is destroyed).
  ucp_listener_h listener_ = nullptr;
  absl::flat_hash_map<uint64_t, ucp_ep_h> conns_;
  absl::flat_hash_map<ucp_ep_h, uint64_t> conn_of_ep_;
  // Per connection, once a block was answered on it: whether its lanes are
  // TCP only (blocks up to ucx::TcpEagerReplyMaxBytes() then go eagerly).
  absl::flat_hash_map<uint64_t, bool> tcp_only_;
  std::vector<uint64_t> failed_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Pending>> pending_;
  std::vector<void*> closing_;
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  bool finishing_ = false;
  absl::Time finish_by_;

  std::unique_ptr<ucx::BufferPool> buffers_;  // Thread-safe.
  // Gets, puts (which may wait for another write of their key) and
  // eviction; commits of received reservations, which never wait for
  // another write, have their own threads so a waiting put cannot starve the
  // commit it waits for.
  std::unique_ptr<WorkPool> pool_;
  std::unique_ptr<WorkPool> commit_pool_;
  std::unique_ptr<ucx::WorkerLoop> loop_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_UCX_DATA_PLANE_H_
