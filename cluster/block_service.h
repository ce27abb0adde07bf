// The gRPC services of stratad over one TieredStore: DataService (blocks)
// and AdminService (stats, evict, drain, config). proto/strata/v1/*.proto
// define them; docs/protocol.md describes status codes and limits.
//
// Every handler validates its request before touching the store and answers
// with the store's absl::Status code unchanged (absl and gRPC share the
// numbering) and a message naming the offending field.
//
// Thread safety: handlers run concurrently on gRPC's threads; the services
// keep no state of their own beyond atomics (the drain flag, metrics).
#ifndef STRATA_CLUSTER_BLOCK_SERVICE_H_
#define STRATA_CLUSTER_BLOCK_SERVICE_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/time/time.h"
#include "cluster/metrics.h"
#include "kvstore/tiered_store.h"
#include "strata/v1/admin.grpc.pb.h"
#include "strata/v1/data.grpc.pb.h"

namespace strata::cluster {

// Batch limits: more items, or duplicate keys within one batch, are
// INVALID_ARGUMENT naming "items" / "keys".
inline constexpr size_t kMaxBatchItems = 4096;

// State the two services share.
struct ServiceContext {
  kvstore::TieredStore* store = nullptr;
  ServiceMetrics* metrics = nullptr;
  std::atomic<bool> draining{false};
  absl::Time started = absl::Now();
  uint64_t max_message_bytes = 0;  // Bound for a batch response.
  std::string config_text;         // Effective configuration.
  // Called once when a drain starts (the daemon flips its health to
  // NOT_SERVING). May be empty.
  std::function<void()> on_drain;
  // Cluster nodes (cluster/rebalance/cluster_node.h): fills the drain's
  // progress into every Drain answer. Empty in single-node mode. Set before
  // the gRPC server starts.
  std::function<void(strata::v1::DrainResponse*)> drain_status;
  // The UCX data plane's "host:port" (Hello); empty when it is off. Set
  // before the gRPC server starts, constant afterwards.
  std::string ucx_address;
  bool ucx_peer_error_handling = false;
  // The socket data plane's "host:port"; empty when it is off. As above.
  std::string tcp_address;
  // Its local connections' Unix socket path; empty when off. As above.
  std::string local_path;
  // A random number that names this daemon process: Hello announces it and
  // MAP_ARENA answers it, so a client maps only the arena of the daemon it
  // reached over gRPC (another could own the same path on its host).
  uint64_t instance_token = 0;
};

// Shared by the gRPC handlers and the UCX data plane, so both answer the same
// codes and messages.
//
// UNAVAILABLE ("draining: ...") while the daemon is draining.
absl::Status CheckAcceptingBlocks(const ServiceContext* ctx);
// A put whose key another write is still storing (engines sharing a prefix
// store the same keys at once) waits at most this long for that write's
// outcome: "already present" only once the block is there, else it stores
// its own. Past it (the other writer's transfer stalled) it answers ABORTED
// naming "key", and the serving thread is free again.
inline constexpr absl::Duration kInFlightWriteWait = absl::Seconds(10);

// The drain check, then TieredStore::Put, waiting at most kInFlightWriteWait
// for another write of the key.
absl::StatusOr<kvstore::PutOutcome> StoreBlock(ServiceContext* ctx,
                                               const kvstore::BlockKey& key,
                                               absl::Span<const uint8_t> block,
                                               const kvstore::PutOptions& options);

class DataServiceImpl final : public strata::v1::DataService::Service {
 public:
  explicit DataServiceImpl(ServiceContext* ctx) : ctx_(ctx) {}

  grpc::Status Put(grpc::ServerContext*, const strata::v1::PutRequest*,
                   strata::v1::PutResponse*) override;
  grpc::Status BatchPut(grpc::ServerContext*,
                        const strata::v1::BatchPutRequest*,
                        strata::v1::BatchPutResponse*) override;
  grpc::Status Get(grpc::ServerContext*, const strata::v1::GetRequest*,
                   strata::v1::GetResponse*) override;
  grpc::Status BatchGet(grpc::ServerContext*,
                        const strata::v1::BatchGetRequest*,
                        strata::v1::BatchGetResponse*) override;
  grpc::Status Exists(grpc::ServerContext*, const strata::v1::ExistsRequest*,
                      strata::v1::ExistsResponse*) override;
  grpc::Status LeadingHits(grpc::ServerContext*,
                           const strata::v1::LeadingHitsRequest*,
                           strata::v1::LeadingHitsResponse*) override;
  grpc::Status PrefixLookup(grpc::ServerContext*,
                            const strata::v1::PrefixLookupRequest*,
                            strata::v1::PrefixLookupResponse*) override;
  grpc::Status Remove(grpc::ServerContext*, const strata::v1::RemoveRequest*,
                      strata::v1::RemoveResponse*) override;
  grpc::Status Pin(grpc::ServerContext*, const strata::v1::PinRequest*,
                   strata::v1::PinResponse*) override;
  grpc::Status Unpin(grpc::ServerContext*, const strata::v1::UnpinRequest*,
                     strata::v1::UnpinResponse*) override;
  // Data-plane discovery: the UCX address when the client offers "ucx".
  grpc::Status Hello(grpc::ServerContext*, const strata::v1::HelloRequest*,
                     strata::v1::HelloResponse*) override;

 private:
  ServiceContext* const ctx_;
};

class AdminServiceImpl final : public strata::v1::AdminService::Service {
 public:
  explicit AdminServiceImpl(ServiceContext* ctx) : ctx_(ctx) {}

  grpc::Status Stats(grpc::ServerContext*, const strata::v1::StatsRequest*,
                     strata::v1::StatsResponse*) override;
  grpc::Status Evict(grpc::ServerContext*, const strata::v1::EvictRequest*,
                     strata::v1::EvictResponse*) override;
  grpc::Status Drain(grpc::ServerContext*, const strata::v1::DrainRequest*,
                     strata::v1::DrainResponse*) override;
  grpc::Status GetConfig(grpc::ServerContext*,
                         const strata::v1::ConfigRequest*,
                         strata::v1::ConfigResponse*) override;

 private:
  ServiceContext* const ctx_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_BLOCK_SERVICE_H_
