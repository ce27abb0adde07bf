// Internal to the client library: the gRPC implementation of
// strata::client::Client. Callers use client/strata_client.h only.
#ifndef STRATA_CLIENT_GRPC_CLIENT_H_
#define STRATA_CLIENT_GRPC_CLIENT_H_

#include <grpcpp/channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/rpc_call.h"
#include "client/strata_client.h"
#include "client/bulk_transport.h"
#include "kvstore/block_format.h"
#include "strata/v1/admin.grpc.pb.h"
#include "strata/v1/data.grpc.pb.h"

namespace strata::client::internal {

namespace v1 = ::strata::v1;

// The smallest max_message_bytes accepted: a block header plus headroom.
inline constexpr uint64_t kMinMessageBytes = 64 << 10;
// The daemon's limit on keys or items per RPC (docs/protocol.md); larger
// requests are split.
inline constexpr size_t kMaxRpcItems = 4096;
// grpc.health.v1 (wire.h).
inline constexpr char kHealthCheckMethod[] = "/grpc.health.v1.Health/Check";

// A start function for RetryingCall: issues one attempt of `Method` on the
// stub `stub` (a std::unique_ptr member) with the callback API.
#define STRATA_RPC(stub, Method)                                         \
  [s = (stub).get()](grpc::ClientContext* ctx, const auto* req,          \
                     auto* resp, std::function<void(grpc::Status)> f) {  \
    s->async()->Method(ctx, req, resp, std::move(f));                    \
  }

template <typename T>
std::future<T> Ready(T value) {
  std::promise<T> promise;
  promise.set_value(std::move(value));
  return promise.get_future();
}

class GrpcClient final : public Client {
 public:
  explicit GrpcClient(const ClientOptions& options);
  ~GrpcClient() override;

  // Asks the daemon for its data planes (Hello) and connects to the one
  // ClientOptions::data_plane picks; UNAVAILABLE naming "data_plane" when
  // that fails. Called once, by Client::Connect, before the client is
  // shared.
  absl::Status StartDataPlane();

  std::future<absl::StatusOr<PutResult>> PutAsync(
      const BlockKey& key, absl::Span<const uint8_t> block,
      const PutOptions& put, const CallOptions& call) override;
  absl::StatusOr<PutResult> Put(const BlockKey& key,
                                absl::Span<const uint8_t> block,
                                const PutOptions& put,
                                const CallOptions& call) override;
  std::future<absl::StatusOr<GetResult>> GetAsync(
      const BlockKey& key, const CallOptions& call) override {
    return StartGet(key, call, /*caller_waits=*/false);
  }
  absl::StatusOr<GetResult> Get(const BlockKey& key,
                                const CallOptions& call) override {
    return StartGet(key, call, /*caller_waits=*/true).get();
  }
  std::future<absl::StatusOr<size_t>> GetIntoAsync(
      const BlockKey& key, BufferHandle buffer, uint64_t offset,
      uint64_t capacity, const CallOptions& call) override {
    return StartGetInto(key, buffer, offset, capacity, call,
                        /*caller_waits=*/false);
  }
  absl::StatusOr<size_t> GetInto(const BlockKey& key, BufferHandle buffer,
                                 uint64_t offset, uint64_t capacity,
                                 const CallOptions& call) override {
    return StartGetInto(key, buffer, offset, capacity, call,
                        /*caller_waits=*/true)
        .get();
  }
  std::future<std::vector<absl::StatusOr<PutResult>>> BatchPutAsync(
      absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<const uint8_t>> blocks,
      const PutOptions& put, const CallOptions& call) override;
  std::future<std::vector<absl::StatusOr<GetResult>>> BatchGetAsync(
      absl::Span<const BlockKey> keys, const CallOptions& call) override;
  std::future<absl::StatusOr<uint32_t>> LeadingHitsAsync(
      absl::Span<const BlockKey> keys, const CallOptions& call) override;
  absl::StatusOr<std::vector<bool>> Exists(absl::Span<const BlockKey> keys,
                                           const CallOptions& call) override;
  absl::StatusOr<PrefixLookupResult> PrefixLookup(
      const KeyNamespace& ns, absl::Span<const uint32_t> tokens,
      const CallOptions& call) override;
  absl::Status Remove(const BlockKey& key, const CallOptions& call) override;
  absl::Status Pin(const BlockKey& key, absl::Duration ttl,
                   const CallOptions& call) override;
  absl::Status Unpin(const BlockKey& key, const CallOptions& call) override;

  absl::StatusOr<BufferHandle> RegisterBuffer(void* data,
                                              size_t size) override;
  absl::Status UnregisterBuffer(BufferHandle buffer) override;

  absl::StatusOr<ServerStats> Stats(const CallOptions& call) override;
  absl::StatusOr<EvictResult> Evict(const EvictFilter& filter,
                                    const CallOptions& call) override;
  absl::Status Drain(const CallOptions& call) override;
  absl::StatusOr<std::string> GetConfig(const CallOptions& call) override;
  absl::Status Health(const CallOptions& call) override;
  std::string DataPlane() const override { return data_plane_; }

 private:
  struct Region {
    void* data;
    size_t size;
    int bulk_inflight = 0;       // Bulk GetIntos that may write into it.
    bool unregistering = false;  // UnregisterBuffer is waiting.
  };
  struct BatchGetState;
  struct LeadingHitsState;

  // The call's absolute deadline; INVALID_ARGUMENT naming "deadline" unless
  // positive.
  absl::StatusOr<absl::Time> Deadline(const CallOptions& call,
                                      absl::Duration fallback) const;
  absl::StatusOr<absl::Time> Deadline(const CallOptions& call) const {
    return Deadline(call, options_.default_deadline);
  }
  // INVALID_ARGUMENT naming "block": empty, too large for one message, or a
  // header that does not parse or disagrees with the length.
  absl::Status ValidateBlock(absl::Span<const uint8_t> block) const;
  // Whether a put of `block` goes over the bulk data plane.
  bool PutOverBulk(absl::Span<const uint8_t> block, const PutOptions& put) const;
  // Get and GetInto; `caller_waits` for the sync calls, which over the bulk
  // data plane may then run on the calling thread (bulk_transport.h) and
  // return a ready future.
  std::future<absl::StatusOr<GetResult>> StartGet(const BlockKey& key,
                                                  const CallOptions& call,
                                                  bool caller_waits);
  std::future<absl::StatusOr<size_t>> StartGetInto(
      const BlockKey& key, BufferHandle buffer, uint64_t offset,
      uint64_t capacity, const CallOptions& call, bool caller_waits);
  // Put over the bulk data plane; `caller_waits` for the sync Put.
  std::future<absl::StatusOr<PutResult>> BulkPut(
      const BlockKey& key, absl::Span<const uint8_t> block, bool caller_waits,
      const PutOptions& put, absl::Time deadline);
  // StartDataPlane's two transports: connect, prove a round trip, and make
  // it bulk_ (replacing one already there).
  absl::Status StartUcx(const v1::HelloResponse& hello, absl::Time deadline);
  absl::Status StartTcp(const v1::HelloResponse& hello, absl::Time deadline);
  absl::Status StartLocal(const v1::HelloResponse& hello, absl::Time deadline);
  static void FillPut(v1::PutRequest* req, const BlockKey& key,
                      absl::Span<const uint8_t> block, const PutOptions& put);
  // Issues one BatchGet RPC for the keys of `state` at `indices`; re-sends
  // the keys whose blocks did not fit in its response.
  void IssueBatchGet(std::shared_ptr<BatchGetState> state,
                     std::vector<size_t> indices);
  // Asks for keys [begin, begin + kMaxRpcItems) of `state`, then for the
  // next range while every key hits.
  void IssueLeadingHits(std::shared_ptr<LeadingHitsState> state,
                        size_t begin);

  // One RPC with retries; `convert` maps the OK response to the result.
  template <typename Req, typename Resp, typename Result, typename StartFn,
            typename Convert>
  std::future<absl::StatusOr<Result>> Unary(absl::Time deadline, Req req,
                                            StartFn start, Convert convert) {
    std::promise<absl::StatusOr<Result>> promise;
    std::future<absl::StatusOr<Result>> future = promise.get_future();
    StartRetryingCall<Req, Resp>(
        policy_, tracker_, deadline, std::move(req), std::move(start),
        [promise = std::move(promise), convert = std::move(convert)](
            const absl::Status& status, Resp& resp) mutable {
          if (status.ok()) {
            promise.set_value(convert(resp));
          } else {
            promise.set_value(status);
          }
        });
    return future;
  }

  template <typename Req, typename Resp, typename StartFn>
  absl::Status UnaryStatus(absl::Time deadline, Req req, StartFn start) {
    std::promise<absl::Status> promise;
    std::future<absl::Status> future = promise.get_future();
    StartRetryingCall<Req, Resp>(
        policy_, tracker_, deadline, std::move(req), std::move(start),
        [promise = std::move(promise)](const absl::Status& status,
                                       Resp&) mutable {
          promise.set_value(status);
        });
    return future.get();
  }

  const ClientOptions options_;
  const RetryPolicy policy_;
  const std::shared_ptr<InflightTracker> tracker_;
  const std::string get_method_;  // "/strata.v1.DataService/Get".
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DataService::Stub> data_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
  // GetInto reads the response as raw bytes; Health speaks raw
  // grpc.health.v1 (wire.h).
  std::unique_ptr<grpc::TemplatedGenericStub<v1::GetRequest, grpc::ByteBuffer>>
      generic_get_;
  std::unique_ptr<grpc::GenericStub> generic_;

  // The bulk data plane (UCX or sockets), or null (gRPC only). Set before
  // the client is shared; destroyed first (it answers its pending calls).
  std::unique_ptr<BulkTransport> bulk_;
  std::string data_plane_ = "grpc";

  absl::Mutex buffers_mu_;
  // Regions are heap-allocated so UnregisterBuffer can wait on one while
  // others are registered.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Region>> buffers_
      ABSL_GUARDED_BY(buffers_mu_);
  uint64_t next_buffer_id_ ABSL_GUARDED_BY(buffers_mu_) = 1;
};

}  // namespace strata::client::internal

#endif  // STRATA_CLIENT_GRPC_CLIENT_H_
