// ClusterConfigFollower: a daemon's view of the cluster config and codec
// profiles in etcd (docs/cluster.md, "Cluster configuration and codec
// profiles"). It owns an etcd client and a ClusterConfigWatcher, logs every
// change it applies ("cluster_config_applied", "codec_profile_loaded"),
// hands each new snapshot to `on_change`, and renders what it holds as
// Prometheus lines for /metrics. A new profile or config is in effect as soon
// as the watch delivers it: no restart.
//
// Thread safety: thread-safe. `on_change` runs on the watcher's threads, one
// call at a time, in order; it must not destroy the follower.
#ifndef STRATA_CLUSTER_CONFIG_STORE_CONFIG_FOLLOWER_H_
#define STRATA_CLUSTER_CONFIG_STORE_CONFIG_FOLLOWER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cluster/config_store/config_store.h"

namespace strata::cluster {

class ClusterClient;  // cluster/placement/cluster_client.h

class ClusterConfigFollower {
 public:
  using OnChange = std::function<void(const ClusterConfigSnapshot&)>;

  // Starts following `prefix` on the etcd at `endpoints` and returns at
  // once (it keeps retrying while etcd is unreachable). INVALID_ARGUMENT
  // naming "endpoints" for a malformed list.
  static absl::StatusOr<std::unique_ptr<ClusterConfigFollower>> Start(
      const std::string& endpoints, const std::string& prefix,
      MembershipLog log, OnChange on_change = nullptr);
  ~ClusterConfigFollower();  // Stops watching.

  ClusterConfigSnapshot Snapshot() const { return watcher_->Snapshot(); }
  // The profile with `id`, or null when this node has not loaded it.
  std::shared_ptr<const codecs::CodecProfile> Profile(uint64_t id) const;

  // strata:cluster_config_version, strata:cluster_config_replication_factor,
  // strata:cluster_config_rebalance_{bytes,blocks}_per_s,
  // strata:codec_profiles_loaded and one strata:codec_profile{id,model} 1
  // per loaded profile.
  std::string RenderMetrics() const;

  ClusterConfigWatcher& watcher() { return *watcher_; }

  // A follower that keeps `client`'s R equal to the config's
  // replication_factor once the config has been written (version > 0; until
  // then the client keeps the R it was created with), so clients place keys
  // as the daemons' rebalancers do. Destroy the follower before `client`.
  static absl::StatusOr<std::unique_ptr<ClusterConfigFollower>> StartForClient(
      const std::string& endpoints, const std::string& prefix,
      MembershipLog log, ClusterClient* client);

 private:
  ClusterConfigFollower() = default;

  std::unique_ptr<EtcdClient> etcd_;
  std::unique_ptr<ClusterConfigWatcher> watcher_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_CONFIG_STORE_CONFIG_FOLLOWER_H_
