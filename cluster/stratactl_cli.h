// What stratactl's two parts share: the parsed command line and the error
// conventions (exit 0 on success, 1 when a daemon or etcd answered an
// error, 2 on a usage error). stratactl_main.cc holds the single-daemon
// commands, stratactl_cluster.cc the `cluster` ones (docs/stratactl.md).
#ifndef STRATA_CLUSTER_STRATACTL_CLI_H_
#define STRATA_CLUSTER_STRATACTL_CLI_H_

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/strata_client.h"

namespace strata::cluster {
class EtcdClient;
}

namespace strata::cluster::ctl {

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;  // --name=value; --name -> "true".

  std::string Flag(const std::string& name, const std::string& def = "") const {
    auto it = flags.find(name);
    return it == flags.end() ? def : it->second;
  }
  bool Bool(const std::string& name) const {
    auto it = flags.find(name);
    return it != flags.end() && it->second != "false";
  }
};

// Prints "stratactl: CODE: message" on stderr; returns 1.
inline int Fail(const absl::Status& s) {
  std::fprintf(stderr, "stratactl: %s: %s\n",
               absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return 1;
}

// Prints "stratactl: msg" on stderr; returns 2.
inline int UsageError(const std::string& msg) {
  std::fprintf(stderr, "stratactl: %s\n", msg.c_str());
  return 2;
}

inline absl::StatusOr<absl::Duration> ParseDurationFlag(
    const std::string& field, const std::string& text) {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": \"", text, "\" is not a duration (e.g. 30s, 10m, 1h)"));
  }
  return d;
}

// `stratactl [--etcd=...] cluster SUBCOMMAND ...` (positional[0] is
// "cluster"). `base` carries the per-daemon client options (deadline, data
// plane); its address is replaced by each member's. Returns the exit status.
int RunClusterCommand(const Args& a, const client::ClientOptions& base);

// `cluster bench` (stratactl_cluster_bench.cc): load through the
// ClusterClient over the members under `prefix`. Returns the exit status.
int RunClusterBench(const Args& a, const client::ClientOptions& base,
                    EtcdClient* etcd, const std::string& prefix);

}  // namespace strata::cluster::ctl

#endif  // STRATA_CLUSTER_STRATACTL_CLI_H_
