// The cluster part of stratad's configuration (proto/strata/v1/config.proto,
// fields cluster_* and rebalance_*; docs/stratad.md and docs/cluster.md):
// defaults, validation and conversion. No etcd dependency: a build without
// etcd's protos still parses and rejects these fields cleanly.
//
// Thread safety: pure functions.
#ifndef STRATA_CLUSTER_REBALANCE_NODE_CONFIG_H_
#define STRATA_CLUSTER_REBALANCE_NODE_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvstore/tiered_store.h"
#include "strata/v1/config.pb.h"

namespace strata::cluster {

struct ClusterNodeConfig {
  bool enabled = false;         // cluster_etcd is not empty.
  std::string etcd;             // Endpoints, as EtcdOptions::endpoints.
  std::string node_id;
  std::string zone;
  std::string advertise;        // "" = derive from the bound listen address.
  absl::Duration lease_ttl = absl::Seconds(10);
  std::string prefix = "/strata/v1/";
  uint64_t capacity_bytes = 0;  // Placement weight.
  uint32_t replication = 2;
  uint64_t bytes_per_s = 0;     // 0 = unlimited.
  uint32_t blocks_per_s = 0;    // 0 = unlimited.
  absl::Duration settle = absl::Seconds(1);
};

// Fills every unset cluster_* / rebalance_* field of `config` with its
// default (so the effective configuration shows them) and validates them.
// `store` gives the default capacity (DRAM + SSD). INVALID_ARGUMENT naming
// the field.
absl::StatusOr<ClusterNodeConfig> ResolveClusterConfig(
    strata::v1::StratadConfig* config, const kvstore::TieredStoreOptions& store);

// The address to advertise: `advertise` when set, else `listen_host` with
// `bound_port`. INVALID_ARGUMENT naming "cluster_advertise" when the listen
// host is a wildcard (0.0.0.0, ::, [::]) and nothing was given.
absl::StatusOr<std::string> AdvertisedAddress(const ClusterNodeConfig& config,
                                              const std::string& listen_host,
                                              int bound_port);

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_REBALANCE_NODE_CONFIG_H_
