#include "cluster/membership/membership.h"

#include <algorithm>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace strata::cluster {
namespace {

uint64_t RandomIncarnation() {
  std::random_device rd;
  uint64_t v = 0;
  while (v == 0) v = (uint64_t{rd()} << 32) ^ rd();
  return v;
}

constexpr absl::Duration kMinBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(2);

}  // namespace

// ---------------------------------------------------------------- Registry

MembershipRegistry::MembershipRegistry(EtcdClient* etcd, Member self,
                                       RegistryOptions options)
    : etcd_(etcd),
      options_(std::move(options)),
      node_id_(self.node_id),
      key_(MemberKey(options_.prefix, self.node_id)),
      self_(std::move(self)) {
  if (self_.incarnation == 0) self_.incarnation = RandomIncarnation();
}

MembershipRegistry::~MembershipRegistry() { Stop().IgnoreError(); }

void MembershipRegistry::Log(
    const char* level, const char* event,
    std::vector<std::pair<std::string, std::string>> fields) const {
  if (!options_.log) return;
  fields.insert(fields.begin(), {"node_id", node_id_});
  options_.log(level, event, fields);
}

absl::Status MembershipRegistry::Start() {
  if (absl::Status s = ValidateMember(self_); !s.ok()) return s;
  if (options_.prefix.empty() || options_.prefix.back() != '/') {
    return absl::InvalidArgumentError("prefix: must end with '/'");
  }
  if (options_.ttl < absl::Seconds(1)) {
    return absl::InvalidArgumentError("ttl: must be >= 1 s");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (running_) return absl::FailedPreconditionError("registry already started");
  running_ = true;
  stop_ = false;
  lost_ = false;
  registered_ = false;
  lease_ = 0;
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

absl::Status MembershipRegistry::WaitRegistered(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                    [&] { return registered_ || !running_; }) ||
      !registered_) {
    return absl::DeadlineExceededError(absl::StrCat(
        "not registered in etcd within ", absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

absl::Status MembershipRegistry::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!running_) return absl::OkStatus();
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  keepalive_.reset();
  int64_t lease;
  {
    std::lock_guard<std::mutex> lock(mu_);
    lease = lease_;
    lease_ = 0;
    registered_ = false;
    running_ = false;
  }
  cv_.notify_all();
  if (lease == 0) return absl::OkStatus();
  absl::Status s = etcd_->LeaseRevoke(lease);
  if (absl::IsNotFound(s)) s = absl::OkStatus();
  Log(s.ok() ? "info" : "warning", "member_deregistered",
      {{"lease", absl::StrCat(lease)}, {"status", s.ToString()}});
  return s;
}

absl::Status MembershipRegistry::Update(const Member& self) {
  if (self.node_id != node_id_) {
    return absl::InvalidArgumentError("node_id: cannot change");
  }
  if (absl::Status s = ValidateMember(self); !s.ok()) return s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    self_ = self;
    if (self_.incarnation == 0) self_.incarnation = RandomIncarnation();
    dirty_ = true;
  }
  cv_.notify_all();
  return absl::OkStatus();
}

bool MembershipRegistry::registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registered_;
}
int64_t MembershipRegistry::lease_id() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lease_;
}
uint64_t MembershipRegistry::registrations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registrations_;
}
Member MembershipRegistry::self() const {
  std::lock_guard<std::mutex> lock(mu_);
  return self_;
}

absl::Status MembershipRegistry::RegisterOnce() {
  Member self;
  int64_t lease;
  {
    std::lock_guard<std::mutex> lock(mu_);
    self = self_;
    lease = lost_ ? 0 : lease_;
  }
  self.registered_unix_ms = absl::ToUnixMillis(absl::Now());
  const bool new_lease = lease == 0;
  if (new_lease) {
    auto granted = etcd_->LeaseGrant(options_.ttl);
    if (!granted.ok()) return granted.status();
    lease = granted->id;
  }
  absl::StatusOr<int64_t> put = etcd_->Put(key_, EncodeMember(self), lease);
  if (!put.ok()) {
    if (new_lease) etcd_->LeaseRevoke(lease).IgnoreError();
    if (absl::IsNotFound(put.status())) {  // Our lease is gone.
      std::lock_guard<std::mutex> lock(mu_);
      lost_ = true;
    }
    return put.status();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    lease_ = lease;
    lost_ = false;
    dirty_ = false;
    registered_ = true;
    if (new_lease) ++registrations_;
  }
  cv_.notify_all();
  Log("info", new_lease ? "member_registered" : "member_updated",
      {{"key", key_},
       {"lease", absl::StrCat(lease)},
       {"ttl_s", absl::StrCat(absl::ToInt64Seconds(options_.ttl))},
       {"revision", absl::StrCat(*put)},
       {"member", MemberDebugString(self)}});
  return absl::OkStatus();
}

void MembershipRegistry::Run() {
  absl::Duration backoff = kMinBackoff;
  const absl::Duration interval = options_.ttl / 3;
  while (true) {
    bool need_write;
    bool lost;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      lost = lost_;
      need_write = lease_ == 0 || lost_ || dirty_;
    }
    if (lost && keepalive_ != nullptr) {
      keepalive_.reset();  // Joins its thread (which set lost_).
      std::lock_guard<std::mutex> lock(mu_);
      Log("warning", "member_lease_lost", {{"lease", absl::StrCat(lease_)}});
      registered_ = false;
      lease_ = 0;
    }
    if (need_write) {
      const bool had_lease = keepalive_ != nullptr;
      absl::Status s = RegisterOnce();
      if (!s.ok()) {
        Log("warning", "member_register_failed", {{"status", s.ToString()}});
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, absl::ToChronoNanoseconds(backoff),
                     [&] { return stop_; });
        backoff = std::min(backoff * 2, kMaxBackoff);
        continue;
      }
      backoff = kMinBackoff;
      if (!had_lease) {
        const int64_t lease = lease_id();
        keepalive_ = etcd_->KeepAlive(lease, interval, [this] {
          {
            std::lock_guard<std::mutex> lock(mu_);
            lost_ = true;
          }
          cv_.notify_all();
        });
      }
      continue;
    }
    // Registered: wake on stop / lease loss / update, or every ttl to check
    // that our key is still there.
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.ttl),
                       [&] { return stop_ || lost_ || dirty_; })) {
        continue;
      }
    }
    auto got = etcd_->Get(key_);
    if (!got.ok()) continue;  // etcd unreachable: the keepalive copes.
    const Member self = this->self();
    const int64_t lease = lease_id();
    const bool intact = got->kvs.size() == 1 && got->kvs[0].lease == lease &&
                        [&] {
                          auto m = DecodeMember(got->kvs[0].value);
                          return m.ok() && m->node_id == self.node_id &&
                                 m->incarnation == self.incarnation;
                        }();
    if (!intact) {
      Log("warning", "member_key_missing",
          {{"key", key_}, {"found", absl::StrCat(got->kvs.size())}});
      std::lock_guard<std::mutex> lock(mu_);
      dirty_ = true;
    }
  }
}

// ---------------------------------------------------------------- Watcher

MemberWatcher::MemberWatcher(EtcdClient* etcd, WatcherOptions options)
    : etcd_(etcd),
      options_(std::move(options)),
      members_prefix_(MembersPrefix(options_.prefix)) {}

MemberWatcher::~MemberWatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void MemberWatcher::Log(
    const char* level, const char* event,
    std::vector<std::pair<std::string, std::string>> fields) const {
  if (options_.log) options_.log(level, event, fields);
}

void MemberWatcher::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) return;
  started_ = true;
  thread_ = std::thread([this] { Run(); });
}

bool MemberWatcher::WaitSynced(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                      [&] { return synced_; });
}

bool MemberWatcher::WaitUntil(
    const std::function<bool(const MemberList&)>& pred,
    absl::Duration timeout) {
  const auto deadline =
      std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    MemberList members;
    members.reserve(by_key_.size());
    for (const auto& [key, m] : by_key_) members.push_back(m);
    if (pred(members)) return true;
    const uint64_t gen = generation_;
    if (!cv_.wait_until(lock, deadline,
                        [&] { return generation_ != gen || stop_; })) {
      return false;
    }
    if (stop_) return false;
  }
}

MemberList MemberWatcher::Members() const {
  std::lock_guard<std::mutex> lock(mu_);
  MemberList members;
  members.reserve(by_key_.size());
  // Keys are "<members_prefix><node_id>": map order is node_id order.
  for (const auto& [key, m] : by_key_) members.push_back(m);
  return members;
}

uint64_t MemberWatcher::AddListener(Listener listener) {
  std::lock_guard<std::mutex> lock(listeners_mu_);
  const uint64_t id = next_listener_++;
  listeners_.emplace(id, std::move(listener));
  return id;
}

void MemberWatcher::RemoveListener(uint64_t id) {
  std::lock_guard<std::mutex> lock(listeners_mu_);
  listeners_.erase(id);
}

uint64_t MemberWatcher::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generation_;
}

bool MemberWatcher::ApplyPut(const EtcdKeyValue& kv) {
  auto m = DecodeMember(kv.value);
  if (m.ok() && kv.key != members_prefix_ + m->node_id) {
    m = absl::InvalidArgumentError(
        absl::StrCat("node_id \"", m->node_id, "\" does not match the key"));
  }
  if (!m.ok()) {
    Log("warning", "member_record_invalid",
        {{"key", kv.key}, {"status", m.status().ToString()}});
    return by_key_.erase(kv.key) > 0;
  }
  auto it = by_key_.find(kv.key);
  if (it != by_key_.end() && it->second == *m) return false;
  by_key_[kv.key] = *std::move(m);
  return true;
}

void MemberWatcher::Notify(bool changed) {
  MemberList members;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (changed) ++generation_;
    if (!changed) return;
    members.reserve(by_key_.size());
    for (const auto& [key, m] : by_key_) members.push_back(m);
  }
  cv_.notify_all();
  for (auto& [id, listener] : listeners_) listener(members);
}

void MemberWatcher::ApplyList(const std::vector<EtcdKeyValue>& kvs) {
  std::lock_guard<std::mutex> listeners_lock(listeners_mu_);
  bool changed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<std::string, Member> before = std::move(by_key_);
    by_key_.clear();
    for (const auto& kv : kvs) ApplyPut(kv);
    changed = before != by_key_;
    if (!synced_) {
      synced_ = true;
      changed = true;  // The first list is a change even when empty.
    }
  }
  Notify(changed);
}

void MemberWatcher::ApplyEvents(const std::vector<EtcdEvent>& events) {
  std::lock_guard<std::mutex> listeners_lock(listeners_mu_);
  bool changed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : events) {
      if (e.type == EtcdEvent::Type::kDelete) {
        if (by_key_.erase(e.kv.key) > 0) {
          changed = true;
          Log("info", "member_left", {{"key", e.kv.key}});
        }
      } else if (ApplyPut(e.kv)) {
        changed = true;
        Log("info", "member_joined", {{"key", e.kv.key}});
      }
    }
  }
  Notify(changed);
}

void MemberWatcher::Run() {
  absl::Duration backoff = kMinBackoff;
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      reset_ = false;
    }
    auto listed = etcd_->GetPrefix(members_prefix_);
    if (!listed.ok()) {
      Log("warning", "member_list_failed", {{"status", listed.status().ToString()}});
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, absl::ToChronoNanoseconds(backoff),
                   [&] { return stop_; });
      backoff = std::min(backoff * 2, kMaxBackoff);
      continue;
    }
    ApplyList(listed->kvs);
    const absl::Time watch_started = absl::Now();
    auto watch = etcd_->WatchPrefix(
        members_prefix_, listed->revision + 1,
        [this](const std::vector<EtcdEvent>& events, int64_t) {
          ApplyEvents(events);
        },
        [this](const absl::Status& why) {
          Log(absl::IsUnavailable(why) ? "info" : "warning",
              "member_watch_reset", {{"status", why.ToString()}});
          {
            std::lock_guard<std::mutex> lock(mu_);
            reset_ = true;
          }
          cv_.notify_all();
        },
        /*resume=*/false);  // After any break: list again (no gap possible).
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.resync_interval),
                   [&] { return stop_ || reset_; });
    }
    watch.reset();  // Joins the watch thread; no more events after this.
    // A watch that keeps breaking at once (while lists work) backs off.
    if (absl::Now() - watch_started < absl::Seconds(1)) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, absl::ToChronoNanoseconds(backoff),
                   [&] { return stop_; });
      backoff = std::min(backoff * 2, kMaxBackoff);
    } else {
      backoff = kMinBackoff;
    }
  }
}

}  // namespace strata::cluster
