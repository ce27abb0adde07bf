// A mixed read/write load on a ClusterClient, for the tests that kill, drain
// or add nodes under load (cluster_client_test, rebalance_test): reader
// threads Get random keys among those written so far and check their bytes,
// one writer Puts new keys. The test does the killing; this only keeps the
// load going, counts what it saw and remembers which keys were acknowledged.
//
// Ownership: the ClusterClient is not owned and must outlive the load (or its
// Stop()). Threading: every method is called from the test's thread; the
// counters are read after Stop(). Waits are event-driven (no sleeping).
#ifndef STRATA_TESTS_CLUSTER_CLUSTER_LOAD_H_
#define STRATA_TESTS_CLUSTER_CLUSTER_LOAD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cluster/placement/cluster_client.h"

namespace strata::testing {

class ClusterLoad {
 public:
  struct Options {
    // The writer puts keys first_write, first_write + 1, ... At most
    // max_writes of them: bounded, so that the daemons evict nothing and every
    // miss is a bug, not the cache doing its job.
    int first_write = 0;
    int max_writes = 0;
    // After max_writes / 2 puts the writer waits for ResumeWriter() (the test
    // kills a node in between: half of the writes before, half after).
    bool pause_halfway = false;
    // One reader thread per seed (std::mt19937 picks the keys it reads).
    std::vector<uint32_t> reader_seeds = {1, 2};
  };

  // What the threads saw (read after Stop()).
  struct Counts {
    int reads = 0;
    int read_failures = 0;
    int wrong_bytes = 0;   // A Get that returned other bytes than block_for.
    int from_replica = 0;  // Served by an owner of rank > 0.
    int writes = 0;
    int write_failures = 0;
    std::vector<std::string> failure_samples;  // The first 5 failed reads.

    // "reads R (failed F, wrong W, P served by a replica), writes ..."
    std::string ToString() const;
  };

  // `block_for(i)`: the bytes of key KeyFor(i).
  ClusterLoad(cluster::ClusterClient* cluster,
              std::function<std::vector<uint8_t>(uint64_t)> block_for,
              Options options);
  ~ClusterLoad();  // Stop().

  ClusterLoad(const ClusterLoad&) = delete;
  ClusterLoad& operator=(const ClusterLoad&) = delete;

  // Records key i as written before Start() (`acked`: the nodes that hold it).
  void AddWritten(int i, std::vector<std::string> acked = {});

  // Starts the readers and the writer. At least one key must be written.
  void Start();

  // With pause_halfway: waits until the writer is paused halfway. False when
  // it is not after `timeout`.
  bool WaitHalfway(absl::Duration timeout);
  // Lets a paused writer go on (also when it has not reached the pause yet).
  void ResumeWriter();

  // Stops the threads and joins them (a paused writer is resumed first).
  // Idempotent.
  void Stop();

  Counts counts() const;
  // Key index -> the nodes that acknowledged it (empty for AddWritten keys
  // added without), every acknowledged key, in key order. After Stop().
  std::map<int, std::vector<std::string>> written() const;

 private:
  void Read(uint32_t seed);
  void Write();

  cluster::ClusterClient* const cluster_;
  const std::function<std::vector<uint8_t>(uint64_t)> block_for_;
  const Options options_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<int> reads_{0}, read_failures_{0}, wrong_bytes_{0},
      from_replica_{0}, writes_{0}, write_failures_{0};

  mutable absl::Mutex mu_;
  std::vector<int> keys_ ABSL_GUARDED_BY(mu_);  // Written, for the readers.
  std::map<int, std::vector<std::string>> acked_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> failure_samples_ ABSL_GUARDED_BY(mu_);
  bool paused_ ABSL_GUARDED_BY(mu_) = false;   // The writer waits halfway.
  bool resumed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace strata::testing

#endif  // STRATA_TESTS_CLUSTER_CLUSTER_LOAD_H_
