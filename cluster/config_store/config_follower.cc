#include "cluster/config_store/config_follower.h"

#include <utility>

#include "cluster/placement/cluster_client.h"
#include "cluster/prometheus_text.h"
#include "absl/strings/str_cat.h"

namespace strata::cluster {

absl::StatusOr<std::unique_ptr<ClusterConfigFollower>>
ClusterConfigFollower::Start(const std::string& endpoints,
                             const std::string& prefix, MembershipLog log,
                             OnChange on_change) {
  EtcdOptions eo;
  eo.endpoints = endpoints;
  auto etcd = EtcdClient::Create(eo);
  if (!etcd.ok()) return etcd.status();
  std::unique_ptr<ClusterConfigFollower> f(new ClusterConfigFollower());
  f->etcd_ = *std::move(etcd);
  ConfigWatcherOptions wo;
  wo.prefix = prefix;
  wo.log = log;
  f->watcher_ = std::make_unique<ClusterConfigWatcher>(f->etcd_.get(), wo);
  // Logs what each change brought, then hands the snapshot on.
  auto last_version = std::make_shared<int64_t>(-1);
  f->watcher_->AddListener([log, on_change,
                            last_version](const ClusterConfigSnapshot& s) {
    if (log && s.config.version != *last_version) {
      *last_version = s.config.version;
      const ClusterConfig eff = EffectiveClusterConfig(s.config.config);
      log("info", "cluster_config_applied",
          {{"version", absl::StrCat(s.config.version)},
           {"replication_factor", absl::StrCat(eff.replication_factor())},
           {"rebalance_bytes_per_s", absl::StrCat(eff.rebalance_bytes_per_s())},
           {"rebalance_blocks_per_s",
            absl::StrCat(eff.rebalance_blocks_per_s())},
           {"default_codec", eff.default_codec()},
           {"default_profile_id", eff.default_profile_id()},
           {"profiles", absl::StrCat(s.profiles.size())}});
    }
    if (on_change) on_change(s);
  });
  f->watcher_->Start();
  return f;
}

absl::StatusOr<std::unique_ptr<ClusterConfigFollower>>
ClusterConfigFollower::StartForClient(const std::string& endpoints,
                                      const std::string& prefix,
                                      MembershipLog log, ClusterClient* client) {
  if (client == nullptr) return absl::InvalidArgumentError("client: null");
  return Start(endpoints, prefix, log,
               [client, log](const ClusterConfigSnapshot& s) {
                 if (s.config.version == 0) return;  // Never written.
                 const size_t r =
                     EffectiveClusterConfig(s.config.config).replication_factor();
                 absl::Status st = client->SetReplication(r);
                 if (!st.ok() && log) {
                   log("warn", "cluster_config_replication_refused",
                       {{"replication_factor", absl::StrCat(r)},
                        {"error", std::string(st.message())}});
                 }
               });
}

ClusterConfigFollower::~ClusterConfigFollower() {
  watcher_.reset();  // Joins its threads before the etcd client goes.
}

std::shared_ptr<const codecs::CodecProfile> ClusterConfigFollower::Profile(
    uint64_t id) const {
  const ClusterConfigSnapshot s = watcher_->Snapshot();
  auto it = s.profiles.find(id);
  return it == s.profiles.end() ? nullptr : it->second;
}

std::string ClusterConfigFollower::RenderMetrics() const {
  const ClusterConfigSnapshot s = watcher_->Snapshot();
  const ClusterConfig eff = EffectiveClusterConfig(s.config.config);
  std::string out;
  auto gauge = [&](const char* name, const char* help, auto value) {
    AppendMetric(&out, name, "gauge", help, static_cast<double>(value));
  };
  gauge("strata:cluster_config_version",
        "etcd mod_revision of the applied cluster config (0 = defaults).",
        s.config.version);
  gauge("strata:cluster_config_replication_factor",
        "Replication factor of the applied cluster config.",
        eff.replication_factor());
  gauge("strata:cluster_config_rebalance_bytes_per_s",
        "Rebalance byte rate of the applied cluster config.",
        eff.rebalance_bytes_per_s());
  gauge("strata:cluster_config_rebalance_blocks_per_s",
        "Rebalance block rate of the applied cluster config.",
        eff.rebalance_blocks_per_s());
  gauge("strata:codec_profiles_loaded", "Codec profiles loaded from etcd.",
        s.profiles.size());
  AppendMetricHeader(&out, "strata:codec_profile", "gauge",
                     "A codec profile loaded from etcd, by content id.");
  for (const auto& [id, profile] : s.profiles) {
    std::string model;
    for (char c : profile->model_id()) {
      if (c == '"' || c == '\\') model += '\\';
      if (c == '\n') {
        model += "\\n";
        continue;
      }
      model += c;
    }
    absl::StrAppend(&out, "strata:codec_profile{id=\"", ProfileIdHex(id),
                    "\",model=\"", model, "\"} 1\n");
  }
  return out;
}

}  // namespace strata::cluster
