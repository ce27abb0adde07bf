#include "cluster/rebalance/node_config.h"

#include "absl/strings/str_cat.h"
#include "cluster/membership/member.h"
#include "cluster/server_config.h"
#include "common/status_macros.h"

namespace strata::cluster {

absl::StatusOr<ClusterNodeConfig> ResolveClusterConfig(
    strata::v1::StratadConfig* c, const kvstore::TieredStoreOptions& store) {
  if (!c->has_cluster_etcd()) c->set_cluster_etcd("");
  if (!c->has_cluster_node_id()) c->set_cluster_node_id("");
  if (!c->has_cluster_zone()) c->set_cluster_zone("");
  if (!c->has_cluster_advertise()) c->set_cluster_advertise("");
  if (!c->has_cluster_lease_ttl_s()) c->set_cluster_lease_ttl_s(10);
  if (!c->has_cluster_prefix()) c->set_cluster_prefix("/strata/v1/");
  if (!c->has_cluster_capacity()) {
    c->set_cluster_capacity(absl::StrCat(
        store.dram_capacity_bytes +
        (store.ssd_path.empty() ? 0 : store.ssd_capacity_bytes)));
  }
  if (!c->has_cluster_replication()) c->set_cluster_replication(2);
  if (!c->has_rebalance_bytes_per_s()) c->set_rebalance_bytes_per_s("64MiB");
  if (!c->has_rebalance_blocks_per_s()) c->set_rebalance_blocks_per_s(2000);
  if (!c->has_rebalance_settle_ms()) c->set_rebalance_settle_ms(1000);

  ClusterNodeConfig out;
  out.enabled = !c->cluster_etcd().empty();
  out.etcd = c->cluster_etcd();
  out.node_id = c->cluster_node_id();
  out.zone = c->cluster_zone();
  out.advertise = c->cluster_advertise();
  out.prefix = c->cluster_prefix();
  if (c->cluster_lease_ttl_s() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster_lease_ttl_s: ", c->cluster_lease_ttl_s(),
        " is below etcd's minimum of 2"));
  }
  out.lease_ttl = absl::Seconds(c->cluster_lease_ttl_s());
  if (out.prefix.empty() || out.prefix.back() != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster_prefix: \"", out.prefix, "\" must end with '/'"));
  }
  STRATA_ASSIGN_OR_RETURN(out.capacity_bytes,
                          ParseByteSize("cluster_capacity", c->cluster_capacity()));
  if (c->cluster_replication() == 0) {
    return absl::InvalidArgumentError("cluster_replication: must be >= 1");
  }
  out.replication = c->cluster_replication();
  STRATA_ASSIGN_OR_RETURN(
      out.bytes_per_s,
      ParseByteSize("rebalance_bytes_per_s", c->rebalance_bytes_per_s()));
  out.blocks_per_s = c->rebalance_blocks_per_s();
  out.settle = absl::Milliseconds(c->rebalance_settle_ms());
  if (out.enabled) {
    if (absl::Status s = ValidateNodeId(out.node_id); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cluster_node_id: \"", out.node_id,
          "\" is required with cluster_etcd and must match "
          "[A-Za-z0-9._-]{1,128}"));
    }
    if (!out.advertise.empty() && out.advertise.find(':') == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cluster_advertise: \"", out.advertise, "\" is not host:port"));
    }
  }
  return out;
}

absl::StatusOr<std::string> AdvertisedAddress(const ClusterNodeConfig& config,
                                              const std::string& listen_host,
                                              int bound_port) {
  if (!config.advertise.empty()) return config.advertise;
  if (listen_host.empty() || listen_host == "0.0.0.0" || listen_host == "::" ||
      listen_host == "[::]") {
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster_advertise: required when listen is a wildcard (\"",
        listen_host, "\"): clients cannot dial it"));
  }
  return absl::StrCat(listen_host, ":", bound_port);
}

}  // namespace strata::cluster
