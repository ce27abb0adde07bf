// Rebalancer: a daemon's background mover of its own blocks
// (docs/cluster.md, "Rebalancing and re-replication").
//
// Whenever the member set changes (and has then been stable for `settle`),
// and periodically, it runs a pass over a snapshot of the local store
// (TieredStore::SnapshotKeys). For every block it computes the R owners
// under the current placement (RendezvousPlacement, as every client does),
// asks each other owner whether it holds the block (one Exists per owner per
// page of keys), and pushes the block to the owners that lack it (a plain
// Put: daemons keep the first write, so a push racing a client's write or
// another holder's push is harmless). A block this daemon no longer owns is
// removed locally only once every owner has confirmed it (Exists true or the
// push acknowledged); otherwise it stays and the pass is retried.
// Pushes are paced by two token buckets (bytes/s and blocks/s).
//
// Drain: StartDrain() gives this daemon weight 0 in its own placement, so
// every block is pushed to its owners among the others and then dropped;
// the drain is complete when the local store is empty.
//
// A pass is skipped while this daemon is absent from the member set (not yet
// registered, or etcd lost its data and the set is being rebuilt) unless it
// is draining: placing keys as if it were gone would push everything away.
// A pass that sees the member set change stops and starts over.
//
// Thread safety: thread-safe; one background thread.
#ifndef STRATA_CLUSTER_REBALANCE_REBALANCER_H_
#define STRATA_CLUSTER_REBALANCE_REBALANCER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/strata_client.h"
#include "cluster/membership/member.h"
#include "cluster/rebalance/rate_limiter.h"
#include "kvstore/tiered_store.h"

namespace strata::cluster {

struct RebalanceOptions {
  std::string self_id;                  // This daemon's node_id.
  size_t replication = 2;               // R, as the clients use.
  uint64_t bytes_per_s = 64ull << 20;   // 0 = unlimited.
  uint32_t blocks_per_s = 2000;         // 0 = unlimited.
  absl::Duration settle = absl::Seconds(1);
  absl::Duration retry_after = absl::Seconds(1);  // After an incomplete pass.
  absl::Duration full_pass_every = absl::Minutes(1);
  size_t page_keys = 512;               // Keys per Exists round.
  absl::Duration call_timeout = absl::Seconds(5);
  // Receives log events (level, event, fields). May be empty.
  std::function<void(const char*, const char*,
                     const std::vector<std::pair<std::string, std::string>>&)>
      log;
};

struct RebalanceStats {
  uint64_t passes = 0;            // Completed passes (any outcome).
  uint64_t passes_aborted = 0;    // Stopped by a member-set change.
  uint64_t blocks_checked = 0;    // Blocks examined.
  uint64_t blocks_pushed = 0;     // Pushed to an owner that lacked them.
  uint64_t bytes_pushed = 0;
  uint64_t blocks_dropped = 0;    // Removed here after every owner confirmed.
  uint64_t bytes_dropped = 0;
  uint64_t push_errors = 0;       // Pushes or Exists calls that failed.
  uint64_t misplaced_blocks = 0;  // Left after the last pass (not owned here
                                  // but not yet confirmed by every owner).
  uint64_t under_replicated = 0;  // Last pass: blocks an owner still lacks.
  uint64_t member_changes = 0;
  bool draining = false;
  bool drained = false;           // Draining and the store is empty.
  uint64_t local_blocks = 0;      // Last pass's snapshot size.
  uint64_t local_bytes = 0;
  std::string last_error;         // Of the last incomplete pass.
};

class Rebalancer {
 public:
  // `store` and `members` must outlive the Rebalancer.
  Rebalancer(kvstore::TieredStore* store, MemberSource* members,
             RebalanceOptions options);
  ~Rebalancer();  // Stop().

  void Start();  // Listens to `members` and starts the thread.
  void Stop();   // Idempotent; interrupts a pass.

  // From now on this daemon owns nothing in its own placement.
  void StartDrain();
  // Blocks until drained, Stop(), or `timeout`; returns whether drained.
  bool WaitDrained(absl::Duration timeout);

  // Run-time settings (the cluster config in etcd overrides the daemon's
  // flags): a new R starts a pass; new rates apply to the next push
  // (0 = unlimited); `paused` holds every push until unpaused.
  void SetReplication(size_t replication);
  void SetRates(uint64_t bytes_per_s, uint32_t blocks_per_s, bool paused);
  size_t replication() const;
  RebalanceStats stats() const;

 private:
  struct PassResult {
    bool aborted = false;
    bool complete = false;  // Nothing misplaced or under-replicated left.
    std::string error;
  };

  void Run();
  PassResult Pass(uint64_t generation);
  std::shared_ptr<client::Client> PeerClient(const Member& m);
  bool Changed(uint64_t generation) const;
  void Log(const char* level, const char* event,
           std::vector<std::pair<std::string, std::string>> fields) const;

  kvstore::TieredStore* const store_;
  MemberSource* const members_;
  const RebalanceOptions options_;  // replication: see replication_.
  RateLimiter bytes_limiter_;
  RateLimiter blocks_limiter_;
  uint64_t listener_ = 0;

  mutable absl::Mutex mu_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 1;  // Bumped per change.
  absl::Time changed_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool kick_ ABSL_GUARDED_BY(mu_) = false;  // Run a pass now (drain).
  size_t replication_ ABSL_GUARDED_BY(mu_);
  RebalanceStats stats_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> draining_{false};

  absl::Mutex peers_mu_;
  std::map<std::string, std::pair<std::string, std::shared_ptr<client::Client>>>
      peers_ ABSL_GUARDED_BY(peers_mu_);  // node_id -> (address, client)
  std::thread thread_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_REBALANCE_REBALANCER_H_
