// ClusterNode: what makes a stratad a member of a cluster (docs/cluster.md):
// it registers itself in etcd under a lease (MembershipRegistry: keepalive,
// re-registration after the lease is lost or etcd restarted), watches the
// member set (MemberWatcher), moves its blocks when that set changes
// (Rebalancer), and runs the drain protocol:
//
//   1. StartDrain(): the daemon refuses new blocks (the caller's flag), its
//      record is rewritten with capacity 0 (clients and the other daemons
//      place nothing on it any more), and the Rebalancer pushes every local
//      block to its owners among the others, dropping each once they all
//      confirm it.
//   2. When the store is empty the lease is revoked (the node leaves the
//      member set at once) and `on_drained` runs once, on the node's thread;
//      stratad then exits.
//
// Without etcd configuration there is no ClusterNode (single-node mode).
//
// Thread safety: thread-safe. Start/Stop from one thread.
#ifndef STRATA_CLUSTER_REBALANCE_CLUSTER_NODE_H_
#define STRATA_CLUSTER_REBALANCE_CLUSTER_NODE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/membership.h"
#include "cluster/rebalance/node_config.h"
#include "cluster/rebalance/rebalancer.h"
#include "kvstore/tiered_store.h"
#include "strata/v1/admin.pb.h"

namespace strata::cluster {

using NodeLog = std::function<void(
    const char* level, const char* event,
    const std::vector<std::pair<std::string, std::string>>& fields)>;

class ClusterNode {
 public:
  // Creates the etcd client, starts registering `self` (grpc_address,
  // ucx_address filled by the caller; node_id, zone, capacity from
  // `config`) and watching, and starts the Rebalancer. Returns at once:
  // registration keeps retrying while etcd is unreachable, and the daemon
  // serves meanwhile. `store` must outlive the node. INVALID_ARGUMENT for a
  // bad config.
  static absl::StatusOr<std::unique_ptr<ClusterNode>> Start(
      kvstore::TieredStore* store, const ClusterNodeConfig& config,
      const std::string& grpc_address, const std::string& ucx_address,
      NodeLog log, std::function<void()> on_drained);
  ~ClusterNode();  // Stop().

  // Begins the drain (idempotent).
  void StartDrain();
  // The cluster config in etcd (cluster/config_store), once written,
  // overrides the daemon's cluster_replication / rebalance_* flags: R, and
  // the rates per node, where 0 pauses rebalancing (and drains).
  void ApplyClusterConfig(uint32_t replication, uint64_t bytes_per_s,
                          uint64_t blocks_per_s);

  // Drain progress for the admin Drain RPC; marks "done" as seen.
  void FillDrainStatus(strata::v1::DrainResponse* resp);
  // Waits (at most `timeout`) until a caller has seen the drain done.
  bool WaitDoneObserved(absl::Duration timeout);

  // Stops the Rebalancer and the watcher and revokes the lease (the node
  // leaves at once). Blocks stay in the store (a restart with an SSD tier
  // brings them back).
  void Stop();

  // Prometheus lines: strata:cluster_* and strata:rebalance_*.
  std::string RenderMetrics() const;

  const MemberWatcher& watcher() const { return *watcher_; }

 private:
  ClusterNode() = default;
  void DrainThread();

  ClusterNodeConfig config_;
  kvstore::TieredStore* store_ = nullptr;
  NodeLog log_;
  std::function<void()> on_drained_;
  std::unique_ptr<EtcdClient> etcd_;
  std::unique_ptr<MembershipRegistry> registry_;
  std::unique_ptr<MemberWatcher> watcher_;
  std::unique_ptr<Rebalancer> rebalancer_;

  mutable absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool done_observed_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t drain_start_dropped_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t drain_start_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread drain_thread_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_REBALANCE_CLUSTER_NODE_H_
