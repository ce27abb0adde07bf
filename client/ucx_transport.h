// Internal to the client library: the UCX data plane's client end. The gRPC
// client (grpc_client.h) sends Put / Get / GetInto through it when
// ClientOptions::data_plane allows and the daemon offers a UCX address
// (Hello). Wire format: common/ucx_protocol.h; docs/protocol.md.
//
// One UCX context, worker and progress thread (ucx::WorkerLoop) and at most
// one endpoint to the daemon, created on demand from its sockaddr and
// re-created after it fails. Every call has an absolute deadline and retries
// UNAVAILABLE like the gRPC path (RetryPolicy: backoff with full jitter, never
// past the deadline); each attempt carries a fresh request_id, and replies
// whose request_id is no longer waited for (late, or for an abandoned
// attempt) are dropped.
//
// Failures: an endpoint error (daemon gone, connection reset) fails every
// attempt in flight on it with UNAVAILABLE and closes it; the next attempt
// reconnects.
//
// Deadlines and memory. What happens when a deadline passes while a call's
// bytes are still moving depends on the UCX error-handling mode, which the
// daemon dictates (HelloResponse.ucx_peer_error_handling):
// - peer (TCP only with UCX 1.13): the endpoint is force-closed, which
//   cancels the transfer, and the call answers DEADLINE_EXCEEDED on time;
//   the other calls on the endpoint retry on a new one. Put may send
//   straight from the caller's memory.
// - none (the default; needed by the shared-memory transports): UCX cannot
//   cancel a transfer, so Put always sends from a private copy of the block,
//   and a Get's receive buffer is owned by the transport: both stay alive
//   until UCX reports the operation complete, and the call answers
//   DEADLINE_EXCEEDED on time. GetInto, whose receive lands in the caller's
//   region, answers DEADLINE_EXCEEDED only once that receive has ended (the
//   daemon had answered before the deadline and the bytes were already
//   moving); with shared memory (cma) the client pulls the bytes itself, so
//   this cannot wait on a stalled daemon.
// After a connection failure in mode none, buffers of operations UCX never
// completed are released after kOrphanGrace.
//
// Memory: Put reads `block` only until its callback runs (and only before it
// returns, unless `caller_waits`). GetInto writes only into
// [dst, dst + capacity), only before its callback runs; a block larger than
// `capacity` is discarded and answers OUT_OF_RANGE naming "capacity". For
// rendezvous replies UCX places the block there directly (zero-copy); eager
// (small) replies are copied from UCX's receive buffer.
//
// Threading: every method is thread-safe. A call made with `caller_waits`
// (the sync API) is sent and waited for on the calling thread when the
// progress thread is asleep (ucx::WorkerLoop::TryDrive): the method returns
// once its callback has run. Otherwise it is handed to the progress thread
// and the method returns at once. Callbacks run on whichever thread
// progresses the worker (the progress thread or a caller waiting for its
// own call); they must be quick and must not block on another call of this
// transport. The destructor answers calls still pending with CANCELLED.
#ifndef STRATA_CLIENT_UCX_TRANSPORT_H_
#define STRATA_CLIENT_UCX_TRANSPORT_H_

#include <sys/socket.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/bulk_transport.h"
#include "client/rpc_call.h"
#include "client/strata_client.h"
#include "common/ucx_buffer_pool.h"
#include "common/ucx_protocol.h"
#include "common/ucx_worker_loop.h"

namespace strata::client::internal {

struct UcxTransportOptions {
  std::string address;  // The daemon's UCX "host:port" (HelloResponse).
  // Must equal the daemon's mode (HelloResponse.ucx_peer_error_handling).
  bool peer_error_handling = false;
  RetryPolicy retry;
};

class UcxTransport final : public BulkTransport {
 public:
  using StatusCallback = absl::AnyInvocable<void(absl::Status)>;

  // Starts UCX (reading this process's UCX_* environment) and the progress
  // thread; connects on the first call. INVALID_ARGUMENT naming "address",
  // UNAVAILABLE naming "ucx" when UCX cannot start.
  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(
      const UcxTransportOptions& options);
  ~UcxTransport() override;
  UcxTransport(const UcxTransport&) = delete;
  UcxTransport& operator=(const UcxTransport&) = delete;

  // An empty round trip: OK once the daemon answered over UCX.
  void Ping(absl::Time deadline, StatusCallback done);
  // `caller_waits`: the caller blocks until `done` runs (the sync API): the
  // call may run on the calling thread (Threading above), and for Put the
  // caller keeps `block` valid until then, so in peer mode UCX sends
  // straight from it, and in mode none an eager send over TCP is packed
  // straight from it (a send still unfinished when the call ends goes on
  // from a copy). Otherwise a Put's block is first copied into a pooled
  // buffer that lives until UCX is done with it.
  void Put(const BlockKey& key, absl::Span<const uint8_t> block,
           bool caller_waits, const PutOptions& put, absl::Time deadline,
           PutCallback done) override;
  void Get(const BlockKey& key, bool caller_waits, absl::Time deadline,
           GetCallback done) override;
  void GetInto(const BlockKey& key, uint8_t* dst, size_t capacity,
               bool caller_waits, absl::Time deadline,
               SizeCallback done) override;

  // The UCX transports carrying the current connection, e.g. "tcp" or
  // "sysv,cma"; empty when not connected. Blocks briefly on the progress
  // thread; do not call from a callback.
  std::string Describe();
  // Labels (tenant + model bytes) up to this size fit a request header.
  size_t max_label_bytes() const override { return max_label_bytes_; }

  // Mode none: how long buffers of operations a failed connection never
  // completed are kept before they are freed.
  static constexpr absl::Duration kOrphanGrace = absl::Seconds(10);

  // The bytes UCX packs an eager send from (through a generic datatype):
  // the sync caller's memory until its call completes, then, if UCX is not
  // done by then, a copy of its own (Detach). The loop only.
  struct PackSource {
    const uint8_t* data = nullptr;
    size_t size = 0;
    std::unique_ptr<uint8_t[]> own;
    void Detach();
  };

 private:
  struct Call;
  // Memory UCX may still use for one operation in flight: a request header
  // and the block's owner (sends), a Get's receive buffer (receives).
  struct Holder {
    uint64_t conn_id = 0;
    std::vector<uint8_t> header;
    std::shared_ptr<const void> keepalive;
    std::shared_ptr<PackSource> pack;  // A send through pack_dt_.
    absl::Time release_at = absl::InfiniteFuture();  // Orphaned: when.
  };
  struct Conn {
    uint64_t id = 0;
    ucp_ep_h ep = nullptr;
    bool failed = false;
    ucs_status_t error = UCS_OK;
    bool answered = false;  // A reply came: the lanes are final.
    // Known once answered: TCP-only lanes (puts up to
    // ucx::TcpEagerPutMaxBytes() then go eagerly).
    std::optional<bool> tcp_only;
    // Request ids sent on it whose reply has not come, abandoned ones too (a
    // late reply must still be taken: the daemon holds its block until the
    // send completes). Kept while the connection lives; a reply for an id
    // not here (another connection's) changes nothing.
    absl::flat_hash_set<uint64_t> replies_due;
  };
  // No call, send, receive or reply in flight: the progress thread may
  // park (ucx::WorkerLoop::Start).
  bool Idle() const;

  UcxTransport() = default;
  void Submit(std::unique_ptr<Call> call);
  // Points the call's block at a pooled copy of it (kept by c.keepalive).
  void SendFromPooledCopy(Call& c);
  // The loop (the progress thread, or a caller driving it) from here on.
  void Begin(std::unique_ptr<Call> call);
  void StartAttempt(Call& call);
  absl::Status EnsureConn();
  void MaybeFinishAttempt(uint64_t call_id);
  // A GET's block where it landed (empty before it did).
  static absl::Span<const uint8_t> LandedBytes(const Call& c);
  void Complete(uint64_t call_id, absl::Status status);
  void Expire(uint64_t call_id);
  void Teardown(const absl::Status& why);
  // Releases orphaned holders whose grace has passed; the next release time.
  absl::Time ReleaseOrphans(absl::Time now);
  absl::Time Tick();
  void Shutdown();

  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t OnReply(void* arg, const void* header,
                              size_t header_length, void* data, size_t length,
                              const ucp_am_recv_param_t* param);
  static void OnSent(void* request, ucs_status_t status, void* user_data);
  static void OnReceived(void* request, ucs_status_t status, size_t length,
                         void* user_data);
  ucs_status_t HandleReply(const void* header, size_t header_length,
                           void* data, size_t length,
                           const ucp_am_recv_param_t* param);

  UcxTransportOptions options_;
  sockaddr_storage addr_{};
  socklen_t addr_len_ = 0;
  size_t max_label_bytes_ = 0;
  // Put copies; shared with the copies' deleters, which may outlive this.
  std::shared_ptr<ucx::BufferPool> copies_ =
      std::make_shared<ucx::BufferPool>(size_t{256} << 20);
  // UCX's generic datatype over a PackSource (Create; destroyed last).
  ucp_datatype_t pack_dt_ = 0;
  bool pack_dt_created_ = false;

  // The loop only (declared before loop_: UCX may run completion
  // callbacks while the worker is destroyed).
  absl::flat_hash_map<uint64_t, std::unique_ptr<Call>> calls_;
  absl::flat_hash_map<uint64_t, uint64_t> by_request_;  // -> call id.
  std::set<std::pair<absl::Time, uint64_t>> deadlines_;
  std::multimap<absl::Time, uint64_t> retries_;
  std::vector<uint64_t> finished_;  // Calls whose attempt may be over.
  absl::flat_hash_map<uint64_t, Holder> sends_;  // By request id.
  absl::flat_hash_map<uint64_t, Holder> recvs_;  // By request id.
  size_t orphans_ = 0;
  std::optional<Conn> conn_;
  std::vector<void*> closing_;
  uint64_t next_id_ = 1;

  std::unique_ptr<ucx::WorkerLoop> loop_;
};

}  // namespace strata::client::internal

#endif  // STRATA_CLIENT_UCX_TRANSPORT_H_
