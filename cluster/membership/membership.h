// Cluster membership over etcd (docs/cluster.md):
//
// MembershipRegistry registers one node under <prefix>members/<node_id>
// (value: the binary Member proto) attached to a lease with a TTL, keeps the
// lease alive (renewing every ttl/3 over a LeaseKeepAlive stream), and
// registers again — a new lease, the same incarnation — whenever etcd says the
// lease is gone (it expired while the node was cut off, it was revoked, or
// etcd restarted without its data). It also checks its key every `ttl` and
// writes it again when it has vanished (e.g. `etcdctl del`). Stop() revokes
// the lease, so the key disappears at once instead of after the TTL.
//
// MemberWatcher keeps the live member set: a Get of the prefix, then a Watch
// from the next revision. Whenever the watch ends — the stream broke (etcd
// restarted, the connection dropped), the revision was compacted, etcd came
// back as a new cluster — it lists again and watches from there, so no
// change can fall into a gap; it also lists again every `resync_interval`.
// While etcd is unreachable it keeps the last set it knew (the data path has
// its own failover: replicas).
//
// A member whose process dies without Stop() stays listed until its lease
// expires: at most `ttl` after its last renewal (plus etcd's expiry tick,
// 500 ms).
//
// Thread safety: both classes are thread-safe and run their own thread.
#ifndef STRATA_CLUSTER_MEMBERSHIP_MEMBERSHIP_H_
#define STRATA_CLUSTER_MEMBERSHIP_MEMBERSHIP_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/member.h"

namespace strata::cluster {

// Receives the components' structured log events (event name + key/value
// fields). Unset = silent.
using MembershipLog = std::function<void(
    const char* level, const char* event,
    const std::vector<std::pair<std::string, std::string>>& fields)>;

struct RegistryOptions {
  std::string prefix = std::string(kDefaultEtcdPrefix);  // Ends with '/'.
  absl::Duration ttl = absl::Seconds(10);  // Lease TTL; etcd's minimum is 2 s.
  MembershipLog log;
};

class MembershipRegistry {
 public:
  // `etcd` must outlive the registry. A zero self.incarnation gets a random
  // one; it stays the same across re-registrations of this object.
  MembershipRegistry(EtcdClient* etcd, Member self, RegistryOptions options);
  ~MembershipRegistry();  // Stop().

  // INVALID_ARGUMENT for a bad member or options; FAILED_PRECONDITION when
  // already started. Starts the registration thread and returns at once: it
  // keeps trying (backoff 100 ms .. 2 s) until etcd answers.
  absl::Status Start();
  // Waits until registered; DEADLINE_EXCEEDED after `timeout`.
  absl::Status WaitRegistered(absl::Duration timeout);
  // Stops the thread and revokes the lease (the key goes at once). Returns
  // the revoke's status (OK when there was nothing to revoke). The registry
  // may be started again.
  absl::Status Stop();
  // Replaces the advertised record (same node_id; e.g. a new capacity or a
  // new incarnation after the daemon restarted) and writes it.
  absl::Status Update(const Member& self);

  bool registered() const;
  int64_t lease_id() const;
  // Successful (re-)registrations so far: 1 after the first.
  uint64_t registrations() const;
  Member self() const;
  const std::string& key() const { return key_; }

 private:
  void Run();
  absl::Status RegisterOnce();  // Called without mu_.
  void Log(const char* level, const char* event,
           std::vector<std::pair<std::string, std::string>> fields) const;

  EtcdClient* const etcd_;
  const RegistryOptions options_;
  const std::string node_id_;
  const std::string key_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Member self_;
  bool running_ = false;
  bool stop_ = false;
  bool lost_ = false;   // The keepalive reported the lease gone.
  bool dirty_ = false;  // self_ changed: write it again.
  bool registered_ = false;
  int64_t lease_ = 0;
  uint64_t registrations_ = 0;
  std::unique_ptr<EtcdKeepAlive> keepalive_;  // Registry thread only.
  std::thread thread_;
};

struct WatcherOptions {
  std::string prefix = std::string(kDefaultEtcdPrefix);  // Ends with '/'.
  absl::Duration resync_interval = absl::Minutes(1);
  MembershipLog log;
};

class MemberWatcher : public MemberSource {
 public:
  // `etcd` must outlive the watcher.
  MemberWatcher(EtcdClient* etcd, WatcherOptions options);
  ~MemberWatcher() override;

  // Starts the thread (idempotent); returns at once.
  void Start();
  // True once the first list succeeded (within `timeout`).
  bool WaitSynced(absl::Duration timeout);
  // Blocks until `pred(members)` holds or `timeout` passes; returns whether
  // it holds. Woken by every change (no polling).
  bool WaitUntil(const std::function<bool(const MemberList&)>& pred,
                 absl::Duration timeout);

  MemberList Members() const override;
  uint64_t AddListener(Listener listener) override;
  void RemoveListener(uint64_t id) override;
  // Changes of the member set seen so far.
  uint64_t generation() const;

 private:
  void Run();
  // Replace the whole set (after a list) / apply watch events, then notify.
  void ApplyList(const std::vector<EtcdKeyValue>& kvs);
  void ApplyEvents(const std::vector<EtcdEvent>& events);
  // Under listeners_mu_: if `changed`, bump the generation and notify.
  void Notify(bool changed);
  bool ApplyPut(const EtcdKeyValue& kv);  // Under mu_. True if changed.
  void Log(const char* level, const char* event,
           std::vector<std::pair<std::string, std::string>> fields) const;

  EtcdClient* const etcd_;
  const WatcherOptions options_;
  const std::string members_prefix_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // Changes, sync, reset, stop.
  std::map<std::string, Member> by_key_;
  uint64_t generation_ = 0;
  bool synced_ = false;
  bool started_ = false;
  bool stop_ = false;
  bool reset_ = false;
  std::mutex listeners_mu_;  // Held while listeners run; before mu_.
  std::map<uint64_t, Listener> listeners_;
  uint64_t next_listener_ = 1;
  std::thread thread_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_MEMBERSHIP_MEMBERSHIP_H_
