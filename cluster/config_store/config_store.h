// Cluster configuration and codec profiles in etcd (docs/cluster.md,
// "Cluster configuration and codec profiles"):
//
//   <prefix>config              binary strata.cluster.v1.ClusterConfig
//   <prefix>profiles/<id>       a codecs::CodecProfile (its file format);
//                               <id> = 16 lower-case hex digits of its
//                               content id (CodecProfile::id())
//
// The prefix names the cluster (default "/strata/v1/"), so several clusters
// share one etcd.
//
// ClusterConfigStore reads and writes them. The config is versioned by its
// etcd mod_revision: PutConfig(config, expected_version) is one etcd
// transaction (compare mod_revision == expected_version, then put), so two
// operators editing at once cannot silently overwrite each other — the
// second gets ABORTED naming the stale and the current version and must read
// again. Version 0 means "never written" (the defaults apply). Profiles are
// content-addressed and immutable: PutProfile writes once (a second put of
// the same content is a no-op), GetProfile verifies the content against the
// id in the key.
//
// ClusterConfigWatcher follows both (a list, then watches from the list's
// revision + 1; after any break it lists again, as MemberWatcher does) and
// tells listeners about each change: daemons apply a new replication factor
// or rebalance rate, and load a new profile, without a restart.
//
// Thread safety: both classes are thread-safe; the watcher runs its own
// thread. Errors keep gRPC's codes from etcd (UNAVAILABLE when it is down).
#ifndef STRATA_CLUSTER_CONFIG_STORE_CONFIG_STORE_H_
#define STRATA_CLUSTER_CONFIG_STORE_CONFIG_STORE_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/config_store/cluster_config.pb.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/membership.h"
#include "codecs/codec_profile.h"

namespace strata::cluster {

using ClusterConfig = ::strata::cluster::v1::ClusterConfig;

inline constexpr uint32_t kClusterConfigFormatVersion = 1;
// etcd refuses requests over --max-request-bytes (1.5 MiB by default); a
// profile must fit in one put with room for the request's framing.
inline constexpr size_t kMaxProfileBytes = 1400 * 1024;

// "<prefix>config", "<prefix>profiles/", "<prefix>profiles/<16 hex>".
std::string ClusterConfigKey(std::string_view prefix);
std::string ProfilesPrefix(std::string_view prefix);
std::string ProfileKey(std::string_view prefix, uint64_t profile_id);
std::string ProfileIdHex(uint64_t profile_id);
// INVALID_ARGUMENT naming "profile_id" unless 16 hex digits.
absl::StatusOr<uint64_t> ParseProfileId(std::string_view hex);

// OK, or INVALID_ARGUMENT naming the field (replication_factor outside
// 1..16, an unknown format_version, a default_profile_id that is not 16 hex
// digits, a default_codec that is not [a-z0-9_-]{1,32}).
absl::Status ValidateClusterConfig(const ClusterConfig& config);
// Every field set: the stored value, or its default.
ClusterConfig EffectiveClusterConfig(const ClusterConfig& config);
// One line per field, "name: value" (protobuf text format), fields in
// declaration order; unset fields are absent.
std::string ClusterConfigText(const ClusterConfig& config);
// Applies "field=value" (text-format value syntax; strings need no quotes)
// to `config`. INVALID_ARGUMENT naming the field for an unknown field or a
// bad value; `config` is then unchanged.
absl::Status SetClusterConfigField(std::string_view assignment,
                                   ClusterConfig* config);

struct VersionedClusterConfig {
  ClusterConfig config;  // As stored (unset fields unset).
  int64_t version = 0;   // etcd mod_revision; 0 = never written.
};

struct ProfileInfo {
  uint64_t id = 0;
  std::string model_id;
  size_t bytes = 0;  // Serialized size.
  size_t tensors = 0;
  int64_t created_revision = 0;
};

class ClusterConfigStore {
 public:
  // `etcd` must outlive the store. `prefix` ends with '/'.
  ClusterConfigStore(EtcdClient* etcd, std::string prefix);

  // The stored config and its version; {defaults-unset, 0} when absent.
  // INVALID_ARGUMENT when the stored record does not parse or is invalid.
  absl::StatusOr<VersionedClusterConfig> GetConfig() const;
  // Writes `config` if the stored version is still `expected_version` (0:
  // only if never written). Returns the new version. INVALID_ARGUMENT for a
  // bad config (nothing written); ABORTED when the version is stale (the
  // message names both versions; read again and retry).
  absl::StatusOr<int64_t> PutConfig(const ClusterConfig& config,
                                    int64_t expected_version);

  // Stores `profile` under its content id; returns the id. A profile that is
  // already there is left alone (same id = same bytes). RESOURCE_EXHAUSTED
  // naming "profile" when its serialized form exceeds kMaxProfileBytes.
  absl::StatusOr<uint64_t> PutProfile(const codecs::CodecProfile& profile);
  // NOT_FOUND when absent; DATA_LOSS when the stored bytes fail their
  // checksum or hash to another id than the key's.
  absl::StatusOr<codecs::CodecProfile> GetProfile(uint64_t id) const;
  // Every stored profile, by id; records that do not parse are skipped.
  absl::StatusOr<std::vector<ProfileInfo>> ListProfiles() const;
  // Returns whether it existed.
  absl::StatusOr<bool> DeleteProfile(uint64_t id);

  const std::string& prefix() const { return prefix_; }

 private:
  EtcdClient* const etcd_;
  const std::string prefix_;
};

// What a ClusterConfigWatcher currently knows.
struct ClusterConfigSnapshot {
  VersionedClusterConfig config;
  // Profiles by id; immutable, shared with whoever still uses them.
  std::map<uint64_t, std::shared_ptr<const codecs::CodecProfile>> profiles;
  uint64_t generation = 0;  // Changes applied so far (1 after the first list).
};

struct ConfigWatcherOptions {
  std::string prefix = std::string(kDefaultEtcdPrefix);  // Ends with '/'.
  absl::Duration resync_interval = absl::Minutes(1);
  MembershipLog log;
};

class ClusterConfigWatcher {
 public:
  using Listener = std::function<void(const ClusterConfigSnapshot&)>;

  // `etcd` must outlive the watcher.
  ClusterConfigWatcher(EtcdClient* etcd, ConfigWatcherOptions options);
  ~ClusterConfigWatcher();  // Stops and joins the thread.

  // Starts the thread (idempotent); returns at once. It keeps retrying
  // (backoff 100 ms .. 2 s) while etcd is unreachable, keeping what it knew.
  void Start();
  // Blocks until `pred(snapshot)` holds or `timeout` passes; returns whether
  // it holds. Woken by every change (no polling).
  bool WaitUntil(const std::function<bool(const ClusterConfigSnapshot&)>& pred,
                 absl::Duration timeout);
  ClusterConfigSnapshot Snapshot() const;

  // Called with the new snapshot after each change, on the watcher's
  // threads, one call at a time, in order. Listeners must not call
  // AddListener/RemoveListener. Returns an id for RemoveListener.
  uint64_t AddListener(Listener listener);
  // Once it returns, `id`'s listener is not running and will not run again.
  void RemoveListener(uint64_t id);

 private:
  void Run();
  // Apply a list / watch events, then notify if anything changed. Take
  // listeners_mu_ first, then mu_.
  void ApplyConfigKvs(const std::vector<EtcdKeyValue>& kvs, bool is_list);
  void ApplyProfileKvs(const std::vector<EtcdKeyValue>& kvs, bool is_list);
  void ApplyEvents(const std::vector<EtcdEvent>& events);
  bool ApplyConfigPut(const EtcdKeyValue& kv);   // Under mu_.
  bool ApplyProfilePut(const EtcdKeyValue& kv);  // Under mu_.
  void Notify(bool changed);                     // Under listeners_mu_.
  void Log(const char* level, const char* event,
           std::vector<std::pair<std::string, std::string>> fields) const;

  EtcdClient* const etcd_;
  const ConfigWatcherOptions options_;
  const std::string config_key_;
  const std::string profiles_prefix_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  ClusterConfigSnapshot snapshot_;  // Guarded by mu_.
  bool started_ = false;
  bool stop_ = false;
  bool reset_ = false;
  std::mutex listeners_mu_;  // Held while listeners run; before mu_.
  std::map<uint64_t, Listener> listeners_;
  uint64_t next_listener_ = 1;
  std::thread thread_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_CONFIG_STORE_CONFIG_STORE_H_
