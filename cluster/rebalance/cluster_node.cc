#include "cluster/rebalance/cluster_node.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster/prometheus_text.h"

namespace strata::cluster {
namespace {

void Line(std::string* out, const char* name, const char* type,
          const char* help, double value) {
  AppendMetric(out, name, type, help, value);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterNode>> ClusterNode::Start(
    kvstore::TieredStore* store, const ClusterNodeConfig& config,
    const std::string& grpc_address, const std::string& ucx_address,
    NodeLog log, std::function<void()> on_drained) {
  if (!config.enabled) {
    return absl::InvalidArgumentError("cluster_etcd: not set");
  }
  std::unique_ptr<ClusterNode> node(new ClusterNode());
  node->config_ = config;
  node->log_ = log;
  node->on_drained_ = std::move(on_drained);
  node->store_ = store;
  EtcdOptions eo;
  eo.endpoints = config.etcd;
  auto etcd = EtcdClient::Create(eo);
  if (!etcd.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster_etcd: ", etcd.status().message()));
  }
  node->etcd_ = *std::move(etcd);

  Member self;
  self.node_id = config.node_id;
  self.grpc_address = grpc_address;
  self.ucx_address = ucx_address == "off" ? "" : ucx_address;
  self.capacity_bytes = config.capacity_bytes;
  self.zone = config.zone;
  self.registered_unix_ms = absl::ToUnixMillis(absl::Now());
  self.version = STRATA_VERSION;
  if (absl::Status s = ValidateMember(self); !s.ok()) return s;

  RegistryOptions ro;
  ro.prefix = config.prefix;
  ro.ttl = config.lease_ttl;
  ro.log = log;
  node->registry_ =
      std::make_unique<MembershipRegistry>(node->etcd_.get(), self, ro);
  WatcherOptions wo;
  wo.prefix = config.prefix;
  wo.log = log;
  node->watcher_ = std::make_unique<MemberWatcher>(node->etcd_.get(), wo);

  RebalanceOptions rb;
  rb.self_id = config.node_id;
  rb.replication = config.replication;
  rb.bytes_per_s = config.bytes_per_s;
  rb.blocks_per_s = config.blocks_per_s;
  rb.settle = config.settle;
  rb.log = log;
  node->rebalancer_ =
      std::make_unique<Rebalancer>(store, node->watcher_.get(), rb);

  if (absl::Status s = node->registry_->Start(); !s.ok()) return s;
  node->watcher_->Start();
  node->rebalancer_->Start();
  return node;
}

ClusterNode::~ClusterNode() { Stop(); }

void ClusterNode::StartDrain() {
  {
    absl::MutexLock lock(&mu_);
    if (draining_ || stopped_) return;
    draining_ = true;
    const RebalanceStats s = rebalancer_->stats();
    drain_start_dropped_ = s.blocks_dropped;
    drain_start_bytes_ = s.bytes_dropped;
  }
  Member self = registry_->self();
  self.capacity_bytes = 0;  // Owns nothing: nobody places blocks here.
  if (absl::Status s = registry_->Update(self); !s.ok() && log_) {
    log_("warn", "drain_update_failed", {{"error", s.ToString()}});
  }
  rebalancer_->StartDrain();
  if (log_) log_("info", "drain_started", {{"node_id", config_.node_id}});
  drain_thread_ = std::thread([this] { DrainThread(); });
}

void ClusterNode::ApplyClusterConfig(uint32_t replication,
                                     uint64_t bytes_per_s,
                                     uint64_t blocks_per_s) {
  rebalancer_->SetReplication(replication);
  const bool paused = bytes_per_s == 0 || blocks_per_s == 0;
  rebalancer_->SetRates(bytes_per_s,
                        static_cast<uint32_t>(std::min<uint64_t>(blocks_per_s, UINT32_MAX)),
                        paused);
  if (log_) {
    log_("info", "rebalance_settings",
         {{"replication", absl::StrCat(replication)},
          {"bytes_per_s", absl::StrCat(bytes_per_s)},
          {"blocks_per_s", absl::StrCat(blocks_per_s)},
          {"paused", paused ? "true" : "false"}});
  }
}

void ClusterNode::DrainThread() {
  while (!rebalancer_->WaitDrained(absl::Seconds(1))) {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
  }
  // Every block is on its owners: leave the member set now.
  absl::Status revoked = registry_->Stop();
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
  }
  if (log_) {
    log_("info", "drain_done",
         {{"node_id", config_.node_id}, {"deregistered", revoked.ToString()}});
  }
  if (on_drained_) on_drained_();
}

void ClusterNode::FillDrainStatus(strata::v1::DrainResponse* resp) {
  const RebalanceStats s = rebalancer_->stats();
  uint64_t blocks = 0, bytes = 0;
  for (const auto& k : store_->SnapshotKeys()) {
    ++blocks;
    bytes += k.size;
  }
  absl::MutexLock lock(&mu_);
  resp->set_blocks_left(blocks);
  resp->set_bytes_left(bytes);
  resp->set_blocks_moved(s.blocks_dropped - drain_start_dropped_);
  resp->set_bytes_moved(s.bytes_dropped - drain_start_bytes_);
  resp->set_message(s.last_error);
  if (done_) {
    resp->set_state("done");
    done_observed_ = true;
  } else {
    resp->set_state(!s.last_error.empty() && s.misplaced_blocks > 0 ? "stuck"
                                                                    : "moving");
  }
}

bool ClusterNode::WaitDoneObserved(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto seen = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return done_observed_ || stopped_;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&seen), timeout);
}

void ClusterNode::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  if (rebalancer_) rebalancer_->Stop();
  if (drain_thread_.joinable() &&
      drain_thread_.get_id() != std::this_thread::get_id()) {
    drain_thread_.join();
  }
  if (registry_) {
    absl::Status s = registry_->Stop();
    if (log_) log_("info", "deregistered", {{"status", s.ToString()}});
  }
}

std::string ClusterNode::RenderMetrics() const {
  const RebalanceStats s = rebalancer_->stats();
  std::string out;
  const double members = watcher_ ? watcher_->Members().size() : 0;
  Line(&out, "strata:cluster_members", "gauge",
       "Live members this daemon sees (itself included).", members);
  Line(&out, "strata:cluster_registered", "gauge",
       "1 while this daemon's record is in etcd under a live lease.",
       registry_->registered() ? 1 : 0);
  Line(&out, "strata:cluster_registrations_total", "counter",
       "Registrations under a new lease (1 + re-registrations).",
       static_cast<double>(registry_->registrations()));
  Line(&out, "strata:cluster_member_changes_total", "counter",
       "Changes of the member set seen.", static_cast<double>(s.member_changes));
  Line(&out, "strata:rebalance_passes_total", "counter",
       "Rebalance passes over the local blocks that ran to the end.",
       static_cast<double>(s.passes));
  Line(&out, "strata:rebalance_passes_aborted_total", "counter",
       "Passes restarted because the member set changed.",
       static_cast<double>(s.passes_aborted));
  Line(&out, "strata:rebalance_blocks_checked_total", "counter",
       "Local blocks whose owners were checked.",
       static_cast<double>(s.blocks_checked));
  Line(&out, "strata:rebalance_blocks_pushed_total", "counter",
       "Blocks copied to an owner that lacked them.",
       static_cast<double>(s.blocks_pushed));
  Line(&out, "strata:rebalance_bytes_pushed_total", "counter",
       "Bytes copied to owners that lacked them.",
       static_cast<double>(s.bytes_pushed));
  Line(&out, "strata:rebalance_blocks_dropped_total", "counter",
       "Blocks removed here after every owner confirmed them.",
       static_cast<double>(s.blocks_dropped));
  Line(&out, "strata:rebalance_bytes_dropped_total", "counter",
       "Bytes removed here after every owner confirmed them.",
       static_cast<double>(s.bytes_dropped));
  Line(&out, "strata:rebalance_errors_total", "counter",
       "Exists or push calls to owners that failed.",
       static_cast<double>(s.push_errors));
  Line(&out, "strata:rebalance_misplaced_blocks", "gauge",
       "After the last pass: local blocks not owned here, not yet confirmed "
       "by all their owners.",
       static_cast<double>(s.misplaced_blocks));
  Line(&out, "strata:rebalance_under_replicated_blocks", "gauge",
       "After the last pass: local blocks some owner still lacks.",
       static_cast<double>(s.under_replicated));
  Line(&out, "strata:drain_active", "gauge", "1 while draining.",
       s.draining ? 1 : 0);
  return out;
}

}  // namespace strata::cluster
