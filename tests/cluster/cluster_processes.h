// Child processes for the cluster tests: a real single-node etcd and
// strata-member sidecars, on 127.0.0.1, started and stopped by the tests.
// No sleeps: each waits for its process's own ready line on a pipe (with a
// bounded deadline), and stops it by PID.
#ifndef STRATA_TESTS_CLUSTER_CLUSTER_PROCESSES_H_
#define STRATA_TESTS_CLUSTER_CLUSTER_PROCESSES_H_

#include <sys/types.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace strata::testing {

// etcd (the Debian `etcd` binary) with its data in DIR/data and its log in
// DIR/etcd.log. The first Start() takes free ports (port 0) and learns the
// client port from etcd's "serving insecure client requests on HOST:PORT"
// line on stderr; later Start()s reuse that client port, so clients
// reconnect to the same endpoint after a restart.
class EtcdProcess {
 public:
  explicit EtcdProcess(std::string dir);
  ~EtcdProcess();  // SIGKILLs a running etcd.

  absl::Status Start(absl::Duration timeout = absl::Seconds(30));
  void Kill();            // SIGKILL + wait.
  absl::Status Stop();    // SIGTERM + wait; OK iff exit status 0.
  void WipeData();        // rm -rf the data directory (while stopped).

  // "127.0.0.1:PORT" (empty before the first Start).
  const std::string& endpoint() const { return endpoint_; }
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }

 private:
  void Reap();
  std::string dir_;
  std::string endpoint_;
  int client_port_ = 0;
  pid_t pid_ = -1;
  std::thread drainer_;  // Copies the rest of etcd's stderr to the log.
};

// A strata-member sidecar; blocks in Start() until it prints its
// "strata-member ready" line (i.e. it is registered in etcd).
class MemberProcess {
 public:
  explicit MemberProcess(std::vector<std::string> flags);
  ~MemberProcess();  // SIGKILLs a running process.

  absl::Status Start(absl::Duration timeout = absl::Seconds(30));
  void Kill();          // SIGKILL + wait: the lease is not revoked.
  absl::Status Stop();  // SIGTERM + wait: revokes the lease.
  pid_t pid() const { return pid_; }

 private:
  std::vector<std::string> flags_;
  pid_t pid_ = -1;
};

// A stratad in cluster mode (it registers itself in etcd: no sidecar), on
// free loopback ports, with the UCX data plane off. Its stderr goes to
// DIR/stratad.log. Start() blocks until the "stratad ready" line.
class DaemonProcess {
 public:
  // `flags`: extra --field=value, after the defaults (later flags win).
  DaemonProcess(std::string data_dir, std::vector<std::string> flags);
  ~DaemonProcess();  // SIGKILLs a running daemon.

  absl::Status Start(absl::Duration timeout = absl::Seconds(30));
  void Kill();          // SIGKILL + wait.
  absl::Status Stop();  // SIGTERM + wait; OK iff exit status 0.
  // Waits (pidfd + poll, no sleeping) until the daemon exits by itself, e.g.
  // after a drain. Returns its exit status (OK iff 0); DEADLINE_EXCEEDED
  // when it is still running after `timeout`.
  absl::Status WaitExit(absl::Duration timeout);
  void Pause();   // SIGSTOP; returns once the daemon is stopped.
  void Resume();  // SIGCONT; returns once it runs again.

  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

 private:
  std::string data_dir_;
  std::vector<std::string> flags_;
  pid_t pid_ = -1;
  std::string grpc_address_;
  std::string metrics_address_;
};

// Spawns argv (argv[0] a path) with the given fds as stdout / stderr (-1:
// inherit). Returns the pid or -1.
pid_t SpawnProcess(const std::vector<std::string>& argv, int stdout_fd,
                   int stderr_fd);

// Reads one '\n'-terminated line from fd, waiting at most until `deadline`.
// DEADLINE_EXCEEDED on timeout, OUT_OF_RANGE at end of file.
absl::Status ReadLine(int fd, absl::Time deadline, std::string* line);

}  // namespace strata::testing

#endif  // STRATA_TESTS_CLUSTER_CLUSTER_PROCESSES_H_
