#include "cluster/config_store/config_store.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/text_format.h"

namespace strata::cluster {
namespace {

constexpr absl::Duration kMinBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(2);

constexpr uint32_t kDefaultReplication = 2;
constexpr uint64_t kDefaultRebalanceBytesPerS = 64ull << 20;
constexpr uint64_t kDefaultRebalanceBlocksPerS = 2000;

absl::StatusOr<ClusterConfig> DecodeClusterConfig(const std::string& bytes) {
  ClusterConfig config;
  if (!config.ParseFromString(bytes)) {
    return absl::InvalidArgumentError(
        "config: the stored record does not parse");
  }
  if (absl::Status s = ValidateClusterConfig(config); !s.ok()) return s;
  return config;
}

absl::StatusOr<codecs::CodecProfile> DecodeProfile(const EtcdKeyValue& kv,
                                                   uint64_t expected_id) {
  auto profile = codecs::CodecProfile::Parse(absl::MakeConstSpan(
      reinterpret_cast<const uint8_t*>(kv.value.data()), kv.value.size()));
  if (!profile.ok()) {
    return absl::DataLossError(absl::StrCat("profile ",
                                            ProfileIdHex(expected_id), ": ",
                                            profile.status().message()));
  }
  if (profile->id() != expected_id) {
    return absl::DataLossError(
        absl::StrCat("profile ", ProfileIdHex(expected_id),
                     ": content hashes to ", ProfileIdHex(profile->id())));
  }
  return profile;
}

}  // namespace

std::string ClusterConfigKey(std::string_view prefix) {
  return std::string(prefix) + "config";
}
std::string ProfilesPrefix(std::string_view prefix) {
  return std::string(prefix) + "profiles/";
}
std::string ProfileIdHex(uint64_t profile_id) {
  return absl::StrFormat("%016x", profile_id);
}
std::string ProfileKey(std::string_view prefix, uint64_t profile_id) {
  return ProfilesPrefix(prefix) + ProfileIdHex(profile_id);
}

absl::StatusOr<uint64_t> ParseProfileId(std::string_view hex) {
  uint64_t id = 0;
  if (hex.size() != 16 ||
      !std::all_of(hex.begin(), hex.end(),
                   [](char c) { return absl::ascii_isxdigit(c); }) ||
      !absl::SimpleHexAtoi(absl::string_view(hex.data(), hex.size()), &id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "profile_id: \"", absl::string_view(hex.data(), hex.size()),
        "\" is not 16 hex digits"));
  }
  return id;
}

absl::Status ValidateClusterConfig(const ClusterConfig& c) {
  if (c.format_version() > kClusterConfigFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "format_version: ", c.format_version(), " is newer than this build's ",
        kClusterConfigFormatVersion));
  }
  if (c.has_replication_factor() &&
      (c.replication_factor() < 1 || c.replication_factor() > 16)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "replication_factor: ", c.replication_factor(), " is outside 1..16"));
  }
  if (c.has_default_codec()) {
    const std::string& codec = c.default_codec();
    const bool ok = !codec.empty() && codec.size() <= 32 &&
                    std::all_of(codec.begin(), codec.end(), [](char ch) {
                      return absl::ascii_islower(ch) ||
                             absl::ascii_isdigit(ch) || ch == '_' || ch == '-';
                    });
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "default_codec: \"", codec, "\" is not [a-z0-9_-]{1,32}"));
    }
  }
  if (c.has_default_profile_id() && !c.default_profile_id().empty()) {
    if (auto id = ParseProfileId(c.default_profile_id()); !id.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("default_profile_id: ", id.status().message()));
    }
  }
  return absl::OkStatus();
}

ClusterConfig EffectiveClusterConfig(const ClusterConfig& config) {
  ClusterConfig out = config;
  out.set_format_version(kClusterConfigFormatVersion);
  if (!out.has_replication_factor())
    out.set_replication_factor(kDefaultReplication);
  if (!out.has_rebalance_bytes_per_s()) {
    out.set_rebalance_bytes_per_s(kDefaultRebalanceBytesPerS);
  }
  if (!out.has_rebalance_blocks_per_s()) {
    out.set_rebalance_blocks_per_s(kDefaultRebalanceBlocksPerS);
  }
  if (!out.has_default_codec()) out.set_default_codec("raw");
  if (!out.has_default_profile_id()) out.set_default_profile_id("");
  return out;
}

std::string ClusterConfigText(const ClusterConfig& config) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(config, &text);
  return text;
}

absl::Status SetClusterConfigField(std::string_view assignment,
                                   ClusterConfig* config) {
  const size_t eq = assignment.find('=');
  if (eq == std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config: \"", absl::string_view(assignment.data(), assignment.size()),
        "\" is not field=value"));
  }
  const std::string name(assignment.substr(0, eq));
  const std::string value(assignment.substr(eq + 1));
  const auto* field = ClusterConfig::descriptor()->FindFieldByName(name);
  if (field == nullptr || name == "format_version") {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": not a cluster config field"));
  }
  ClusterConfig updated = *config;  // `config` changes only on success.
  if (field->type() == google::protobuf::FieldDescriptor::TYPE_STRING) {
    updated.GetReflection()->SetString(&updated, field, value);
  } else if (!google::protobuf::TextFormat::ParseFieldValueFromString(
                 value, field, &updated)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": cannot parse \"", value, "\""));
  }
  if (absl::Status s = ValidateClusterConfig(updated); !s.ok()) return s;
  *config = std::move(updated);
  return absl::OkStatus();
}

// ---- ClusterConfigStore.

ClusterConfigStore::ClusterConfigStore(EtcdClient* etcd, std::string prefix)
    : etcd_(etcd), prefix_(std::move(prefix)) {}

absl::StatusOr<VersionedClusterConfig> ClusterConfigStore::GetConfig() const {
  auto got = etcd_->Get(ClusterConfigKey(prefix_));
  if (!got.ok()) return got.status();
  VersionedClusterConfig out;
  if (got->kvs.empty()) return out;
  auto config = DecodeClusterConfig(got->kvs[0].value);
  if (!config.ok()) return config.status();
  out.config = *std::move(config);
  out.version = got->kvs[0].mod_revision;
  return out;
}

absl::StatusOr<int64_t> ClusterConfigStore::PutConfig(
    const ClusterConfig& config, int64_t expected_version) {
  if (absl::Status s = ValidateClusterConfig(config); !s.ok()) return s;
  if (expected_version < 0) {
    return absl::InvalidArgumentError("expected_version: must be >= 0");
  }
  ClusterConfig stored = config;
  stored.set_format_version(kClusterConfigFormatVersion);
  auto cas = etcd_->PutIfModRevision(
      ClusterConfigKey(prefix_), stored.SerializeAsString(), expected_version);
  if (!cas.ok()) return cas.status();
  if (!cas->succeeded) {
    return absl::AbortedError(absl::StrCat("config: version ", expected_version,
                                           " is stale (the stored version is ",
                                           cas->current_mod_revision,
                                           "); read it again and retry"));
  }
  return cas->revision;
}

absl::StatusOr<uint64_t> ClusterConfigStore::PutProfile(
    const codecs::CodecProfile& profile) {
  const std::vector<uint8_t> bytes = profile.Serialize();
  if (bytes.size() > kMaxProfileBytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("profile: ", bytes.size(), " bytes is over the ",
                     kMaxProfileBytes, "-byte limit of one etcd request"));
  }
  const uint64_t id = profile.id();
  auto put = etcd_->PutIfAbsent(
      ProfileKey(prefix_, id),
      std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  if (!put.ok()) return put.status();
  return id;
}

absl::StatusOr<codecs::CodecProfile> ClusterConfigStore::GetProfile(
    uint64_t id) const {
  auto got = etcd_->Get(ProfileKey(prefix_, id));
  if (!got.ok()) return got.status();
  if (got->kvs.empty()) {
    return absl::NotFoundError(
        absl::StrCat("profile ", ProfileIdHex(id), ": not in etcd"));
  }
  return DecodeProfile(got->kvs[0], id);
}

absl::StatusOr<std::vector<ProfileInfo>> ClusterConfigStore::ListProfiles()
    const {
  auto got = etcd_->GetPrefix(ProfilesPrefix(prefix_));
  if (!got.ok()) return got.status();
  std::vector<ProfileInfo> out;
  const std::string profiles_prefix = ProfilesPrefix(prefix_);
  for (const auto& kv : got->kvs) {
    auto id =
        ParseProfileId(std::string_view(kv.key).substr(profiles_prefix.size()));
    if (!id.ok()) continue;
    auto profile = DecodeProfile(kv, *id);
    if (!profile.ok()) continue;
    ProfileInfo info;
    info.id = *id;
    info.model_id = profile->model_id();
    info.bytes = kv.value.size();
    info.tensors = profile->tensors().size();
    info.created_revision = kv.create_revision;
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<bool> ClusterConfigStore::DeleteProfile(uint64_t id) {
  auto deleted = etcd_->Delete(ProfileKey(prefix_, id));
  if (!deleted.ok()) return deleted.status();
  return *deleted > 0;
}

// ---- ClusterConfigWatcher.

ClusterConfigWatcher::ClusterConfigWatcher(EtcdClient* etcd,
                                           ConfigWatcherOptions options)
    : etcd_(etcd),
      options_(std::move(options)),
      config_key_(ClusterConfigKey(options_.prefix)),
      profiles_prefix_(ProfilesPrefix(options_.prefix)) {}

ClusterConfigWatcher::~ClusterConfigWatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ClusterConfigWatcher::Log(
    const char* level, const char* event,
    std::vector<std::pair<std::string, std::string>> fields) const {
  if (options_.log) options_.log(level, event, fields);
}

void ClusterConfigWatcher::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) return;
  started_ = true;
  thread_ = std::thread([this] { Run(); });
}

bool ClusterConfigWatcher::WaitUntil(
    const std::function<bool(const ClusterConfigSnapshot&)>& pred,
    absl::Duration timeout) {
  const auto deadline =
      std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (pred(snapshot_)) return true;
    const uint64_t gen = snapshot_.generation;
    if (!cv_.wait_until(lock, deadline,
                        [&] { return snapshot_.generation != gen || stop_; })) {
      return false;
    }
    if (stop_) return false;
  }
}

ClusterConfigSnapshot ClusterConfigWatcher::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return snapshot_;
}

uint64_t ClusterConfigWatcher::AddListener(Listener listener) {
  std::lock_guard<std::mutex> lock(listeners_mu_);
  const uint64_t id = next_listener_++;
  listeners_.emplace(id, std::move(listener));
  return id;
}

void ClusterConfigWatcher::RemoveListener(uint64_t id) {
  std::lock_guard<std::mutex> lock(listeners_mu_);
  listeners_.erase(id);
}

bool ClusterConfigWatcher::ApplyConfigPut(const EtcdKeyValue& kv) {
  if (kv.key != config_key_) return false;  // E.g. "<prefix>config2".
  auto config = DecodeClusterConfig(kv.value);
  if (!config.ok()) {
    Log("warning", "cluster_config_invalid",
        {{"key", kv.key}, {"status", config.status().ToString()}});
    return false;  // Keep applying the last valid config.
  }
  // Same revision and bytes: already applied. (An etcd that came back
  // without its data reuses revisions, so the revision alone is not enough.)
  if (snapshot_.config.version == kv.mod_revision &&
      snapshot_.config.config.SerializeAsString() ==
          config->SerializeAsString()) {
    return false;
  }
  snapshot_.config.config = *std::move(config);
  snapshot_.config.version = kv.mod_revision;
  Log("info", "cluster_config_changed",
      {{"version", absl::StrCat(kv.mod_revision)}});
  return true;
}

bool ClusterConfigWatcher::ApplyProfilePut(const EtcdKeyValue& kv) {
  auto id =
      ParseProfileId(std::string_view(kv.key).substr(profiles_prefix_.size()));
  if (!id.ok()) {
    Log("warning", "codec_profile_invalid",
        {{"key", kv.key}, {"status", id.status().ToString()}});
    return false;
  }
  if (snapshot_.profiles.contains(*id)) return false;  // Immutable.
  auto profile = DecodeProfile(kv, *id);
  if (!profile.ok()) {
    Log("warning", "codec_profile_invalid",
        {{"key", kv.key}, {"status", profile.status().ToString()}});
    return false;
  }
  Log("info", "codec_profile_loaded",
      {{"profile_id", ProfileIdHex(*id)}, {"model_id", profile->model_id()}});
  snapshot_.profiles.emplace(
      *id, std::make_shared<const codecs::CodecProfile>(*std::move(profile)));
  return true;
}

void ClusterConfigWatcher::Notify(bool changed) {
  ClusterConfigSnapshot snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!changed) return;
    ++snapshot_.generation;
    snapshot = snapshot_;
  }
  cv_.notify_all();
  for (auto& [id, listener] : listeners_) listener(snapshot);
}

void ClusterConfigWatcher::ApplyConfigKvs(const std::vector<EtcdKeyValue>& kvs,
                                          bool is_list) {
  std::lock_guard<std::mutex> listeners_lock(listeners_mu_);
  bool changed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    bool found = false;
    for (const auto& kv : kvs) {
      if (kv.key != config_key_) continue;
      found = true;
      changed |= ApplyConfigPut(kv);
    }
    if (is_list && !found && snapshot_.config.version != 0) {
      snapshot_.config = {};  // Deleted while we were not watching.
      changed = true;
    }
    if (is_list && snapshot_.generation == 0) changed = true;  // First list.
  }
  Notify(changed);
}

void ClusterConfigWatcher::ApplyProfileKvs(const std::vector<EtcdKeyValue>& kvs,
                                           bool is_list) {
  std::lock_guard<std::mutex> listeners_lock(listeners_mu_);
  bool changed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (is_list) {
      std::map<uint64_t, bool> listed;
      for (const auto& kv : kvs) {
        changed |= ApplyProfilePut(kv);
        auto id = ParseProfileId(
            std::string_view(kv.key).substr(profiles_prefix_.size()));
        if (id.ok()) listed[*id] = true;
      }
      for (auto it = snapshot_.profiles.begin();
           it != snapshot_.profiles.end();) {
        if (listed.contains(it->first)) {
          ++it;
        } else {
          it = snapshot_.profiles.erase(it);
          changed = true;
        }
      }
    } else {
      for (const auto& kv : kvs) changed |= ApplyProfilePut(kv);
    }
  }
  Notify(changed);
}

void ClusterConfigWatcher::ApplyEvents(const std::vector<EtcdEvent>& events) {
  std::lock_guard<std::mutex> listeners_lock(listeners_mu_);
  bool changed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : events) {
      if (e.kv.key == config_key_) {
        if (e.type == EtcdEvent::Type::kDelete) {
          changed |= snapshot_.config.version != 0;
          snapshot_.config = {};
        } else {
          changed |= ApplyConfigPut(e.kv);
        }
      } else if (absl::StartsWith(e.kv.key, profiles_prefix_)) {
        if (e.type == EtcdEvent::Type::kDelete) {
          auto id = ParseProfileId(
              std::string_view(e.kv.key).substr(profiles_prefix_.size()));
          if (id.ok() && snapshot_.profiles.erase(*id) > 0) changed = true;
        } else {
          changed |= ApplyProfilePut(e.kv);
        }
      }
    }
  }
  Notify(changed);
}

void ClusterConfigWatcher::Run() {
  absl::Duration backoff = kMinBackoff;
  auto wait_backoff = [&] {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, absl::ToChronoNanoseconds(backoff),
                 [&] { return stop_; });
    backoff = std::min(backoff * 2, kMaxBackoff);
  };
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      reset_ = false;
    }
    // Two lists, each a consistent snapshot of its range; each watch starts
    // right after its own list, so neither range can miss a change.
    auto config = etcd_->Get(config_key_);
    auto profiles = config.ok()
                        ? etcd_->GetPrefix(profiles_prefix_)
                        : absl::StatusOr<EtcdRangeResult>(config.status());
    if (!config.ok() || !profiles.ok()) {
      Log("warning", "cluster_config_list_failed",
          {{"status", profiles.status().ToString()}});
      wait_backoff();
      continue;
    }
    ApplyConfigKvs(config->kvs, /*is_list=*/true);
    ApplyProfileKvs(profiles->kvs, /*is_list=*/true);
    auto on_events = [this](const std::vector<EtcdEvent>& events, int64_t) {
      ApplyEvents(events);
    };
    auto on_reset = [this](const absl::Status& why) {
      Log(absl::IsUnavailable(why) ? "info" : "warning",
          "cluster_config_watch_reset", {{"status", why.ToString()}});
      {
        std::lock_guard<std::mutex> lock(mu_);
        reset_ = true;
      }
      cv_.notify_all();
    };
    const absl::Time watch_started = absl::Now();
    auto config_watch = etcd_->WatchPrefix(config_key_, config->revision + 1,
                                           on_events, on_reset,
                                           /*resume=*/false);
    auto profiles_watch =
        etcd_->WatchPrefix(profiles_prefix_, profiles->revision + 1, on_events,
                           on_reset, /*resume=*/false);
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.resync_interval),
                   [&] { return stop_ || reset_; });
    }
    config_watch.reset();  // Joins the watch threads: no events after this.
    profiles_watch.reset();
    if (absl::Now() - watch_started < absl::Seconds(1)) {
      wait_backoff();  // A watch that keeps breaking at once backs off.
    } else {
      backoff = kMinBackoff;
    }
  }
}

}  // namespace strata::cluster
