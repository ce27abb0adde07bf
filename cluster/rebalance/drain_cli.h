// `stratactl drain [NODE]`: asks one daemon to drain and, on a cluster node,
// waits until it has moved every block to its new owners and left the
// cluster (docs/cluster.md, "Drain"; docs/stratactl.md).
//
// Thread safety: a CLI helper; call from one thread.
#ifndef STRATA_CLUSTER_REBALANCE_DRAIN_CLI_H_
#define STRATA_CLUSTER_REBALANCE_DRAIN_CLI_H_

#include <string>

#include "absl/time/time.h"

namespace strata::cluster {

struct DrainCliOptions {
  std::string address;                       // The daemon's gRPC HOST:PORT.
  bool wait = true;                          // Wait for "done" (cluster nodes).
  absl::Duration timeout = absl::Hours(1);   // For the whole wait.
  absl::Duration poll = absl::Milliseconds(200);
  absl::Duration call_deadline = absl::Seconds(10);
};

// Sends Drain, then (cluster node, `wait`) repeats it to read progress,
// printing one line per change, until the state is "done". Exit status:
// 0 done (or single-node: new blocks refused), 1 error or timeout.
int RunDrainCommand(const DrainCliOptions& options);

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_REBALANCE_DRAIN_CLI_H_
