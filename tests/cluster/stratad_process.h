// StratadProcess: a real stratad child process for integration tests.
// Starts it on free loopback ports (port 0; the UCX data plane too), waits for
// its "ready" line on a pipe (no sleeps), and stops it with SIGTERM, SIGKILL,
// SIGSTOP/SIGCONT.
#ifndef STRATA_TESTS_CLUSTER_STRATAD_PROCESS_H_
#define STRATA_TESTS_CLUSTER_STRATAD_PROCESS_H_

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::testing {

class StratadProcess {
 public:
  // `data_dir` is passed as --data_dir; `flags` are extra --field=value
  // (later flags win: --data_plane_listen= turns the data plane off). `env`
  // adds to or overrides the test's environment for the daemon (e.g. UCX_TLS).
  StratadProcess(std::string data_dir, std::vector<std::string> flags = {},
                 std::map<std::string, std::string> env = {});
  ~StratadProcess();  // SIGKILLs a still-running daemon.

  // Spawns the daemon and blocks until it prints its ready line (or exits).
  // The pipe on its stdout is then closed, unless HoldStdoutUnread() was
  // called before: then it stays open and is never read again (as a script
  // that keeps a fifo open does), until this object dies.
  absl::Status Start();
  void HoldStdoutUnread() { hold_stdout_ = true; }
  // SIGTERM, then waits; OK iff it exited with status 0.
  absl::Status Stop();
  // SIGKILL, then waits.
  void Kill();
  void Pause();   // SIGSTOP; returns once the daemon is stopped.
  void Resume();  // SIGCONT; returns once it runs again.

  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  // The UCX data plane's "host:port", or "off".
  const std::string& ucx_address() const { return ucx_address_; }
  // The socket data plane's address ("off" when disabled).
  const std::string& tcp_address() const { return tcp_address_; }
  // The ready line's local connections socket ("off" when none).
  const std::string& local_path() const { return local_path_; }
  pid_t pid() const { return pid_; }

 private:
  std::string data_dir_;
  std::vector<std::string> flags_;
  std::map<std::string, std::string> env_;
  pid_t pid_ = -1;
  bool hold_stdout_ = false;
  int stdout_fd_ = -1;  // Held open, unread.
  std::string grpc_address_;
  std::string metrics_address_;
  std::string ucx_address_;
  std::string tcp_address_;
  std::string local_path_;
};

// Runs a command to completion and returns its exit status and stdout.
struct CommandResult {
  int exit_code = -1;
  std::string out;
};
CommandResult RunCommand(const std::vector<std::string>& argv);

// A data directory in `dir` whose default local socket (DATA_DIR/local.sock)
// fits in sockaddr_un, so a stratad started on it serves local connections
// by default also in a deep build tree (stratad makes the directory).
inline std::string DataDirForLocalSocket(kvstore::testing::ScratchDir& dir) {
  return std::filesystem::path(dir.SocketPath("data/local.sock"))
      .parent_path()
      .native();
}

}  // namespace strata::testing

#endif  // STRATA_TESTS_CLUSTER_STRATAD_PROCESS_H_
