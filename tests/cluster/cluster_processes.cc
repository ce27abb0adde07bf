#include "tests/cluster/cluster_processes.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace strata::testing {

pid_t SpawnProcess(const std::vector<std::string>& argv, int stdout_fd,
                   int stderr_fd) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1);
  if (stderr_fd >= 0) posix_spawn_file_actions_adddup2(&actions, stderr_fd, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) {
    pid = -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

absl::Status ReadLine(int fd, absl::Time deadline, std::string* line) {
  line->clear();
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("no line before the deadline (got \"", *line, "\")"));
    }
    pollfd p = {fd, POLLIN, 0};
    const int n = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;  // Timeout: the loop head decides.
    char c;
    const ssize_t got = read(fd, &c, 1);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return absl::OutOfRangeError(absl::StrCat("end of file after \"", *line, "\""));
    if (c == '\n') return absl::OkStatus();
    line->push_back(c);
  }
}

// ---------------------------------------------------------------- etcd

EtcdProcess::EtcdProcess(std::string dir) : dir_(std::move(dir)) {
  std::filesystem::create_directories(dir_);
}

EtcdProcess::~EtcdProcess() { Kill(); }

absl::Status EtcdProcess::Start(absl::Duration timeout) {
  if (pid_ > 0) return absl::FailedPreconditionError("etcd already running");
  if (drainer_.joinable()) drainer_.join();
  const std::string client_url =
      absl::StrCat("http://127.0.0.1:", client_port_);
  // A single-member cluster: the peer URL is never dialed; port 0 is fine.
  const std::string peer_url = "http://127.0.0.1:0";
  const std::vector<std::string> argv = {
      "/usr/bin/etcd",
      "--name=strata-test",
      "--data-dir=" + dir_ + "/data",
      "--listen-client-urls=" + client_url,
      "--advertise-client-urls=" + client_url,
      "--listen-peer-urls=" + peer_url,
      "--initial-advertise-peer-urls=" + peer_url,
      "--initial-cluster=strata-test=" + peer_url,
      "--enable-grpc-gateway=false",
  };
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  const int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  pid_ = SpawnProcess(argv, devnull, fds[1]);
  close(devnull);
  close(fds[1]);
  if (pid_ <= 0) {
    close(fds[0]);
    return absl::InternalError("spawn /usr/bin/etcd failed");
  }
  FILE* log = std::fopen((dir_ + "/etcd.log").c_str(), "a");
  const absl::Time deadline = absl::Now() + timeout;
  constexpr char kServing[] = "serving insecure client requests on ";
  std::string line;
  absl::Status s;
  while (true) {
    s = ReadLine(fds[0], deadline, &line);
    if (!s.ok()) break;
    if (log != nullptr) std::fprintf(log, "%s\n", line.c_str());
    const size_t at = line.find(kServing);
    if (at == std::string::npos) continue;
    std::string addr = line.substr(at + sizeof(kServing) - 1);
    addr = addr.substr(0, addr.find(','));
    const size_t colon = addr.rfind(':');
    int port = 0;
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(addr.substr(colon + 1), &port) || port <= 0) {
      s = absl::InternalError("cannot parse etcd's line: " + line);
      break;
    }
    client_port_ = port;
    endpoint_ = absl::StrCat("127.0.0.1:", port);
    break;
  }
  if (!s.ok()) {
    if (log != nullptr) std::fclose(log);
    close(fds[0]);
    Kill();
    return absl::InternalError(absl::StrCat(
        "etcd did not become ready: ", s.ToString(), " (log: ", dir_,
        "/etcd.log)"));
  }
  // Keep draining stderr (a full pipe would block etcd) into the log.
  const int fd = fds[0];
  drainer_ = std::thread([fd, log] {
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0 && log != nullptr) {
        std::fwrite(buf, 1, n, log);
        std::fflush(log);
      }
    }
    close(fd);
    if (log != nullptr) std::fclose(log);
  });
  return absl::OkStatus();
}

void EtcdProcess::Reap() {
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (drainer_.joinable()) drainer_.join();  // EOF once etcd is gone.
}

void EtcdProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  Reap();
}

absl::Status EtcdProcess::Stop() {
  if (pid_ <= 0) return absl::FailedPreconditionError("etcd not running");
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (drainer_.joinable()) drainer_.join();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("etcd exit status ", status));
  }
  return absl::OkStatus();
}

void EtcdProcess::WipeData() {
  std::error_code ec;
  std::filesystem::remove_all(dir_ + "/data", ec);
}

// ---------------------------------------------------------------- member

MemberProcess::MemberProcess(std::vector<std::string> flags)
    : flags_(std::move(flags)) {}

MemberProcess::~MemberProcess() { Kill(); }

absl::Status MemberProcess::Start(absl::Duration timeout) {
  if (pid_ > 0) return absl::FailedPreconditionError("already running");
  std::vector<std::string> argv = {STRATA_MEMBER_PATH, "--log_format=text"};
  argv.insert(argv.end(), flags_.begin(), flags_.end());
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  pid_ = SpawnProcess(argv, fds[1], -1);
  close(fds[1]);
  if (pid_ <= 0) {
    close(fds[0]);
    return absl::InternalError("spawn strata-member failed");
  }
  std::string line;
  absl::Status s = ReadLine(fds[0], absl::Now() + timeout, &line);
  close(fds[0]);
  if (s.ok() && line.rfind("strata-member ready ", 0) != 0) {
    s = absl::InternalError("unexpected stdout line: " + line);
  }
  if (!s.ok()) {
    Kill();
    return absl::InternalError("strata-member did not become ready: " + s.ToString());
  }
  return absl::OkStatus();
}

void MemberProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

absl::Status MemberProcess::Stop() {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("strata-member exit status ", status));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- stratad
// Compiled into the tests that know where stratad is.
#ifdef STRATAD_PATH

DaemonProcess::DaemonProcess(std::string data_dir, std::vector<std::string> flags)
    : data_dir_(std::move(data_dir)), flags_(std::move(flags)) {
  std::filesystem::create_directories(data_dir_);
}

DaemonProcess::~DaemonProcess() { Kill(); }

absl::Status DaemonProcess::Start(absl::Duration timeout) {
  if (pid_ > 0) return absl::FailedPreconditionError("already running");
  std::vector<std::string> argv = {
      STRATAD_PATH, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
      "--data_plane_listen=", "--data_dir=" + data_dir_, "--log_format=text",
      "--grpc_threads=4"};
  argv.insert(argv.end(), flags_.begin(), flags_.end());
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  const int log = open((data_dir_ + "/stratad.log").c_str(),
                       O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  pid_ = SpawnProcess(argv, fds[1], log);
  close(fds[1]);
  if (log >= 0) close(log);
  if (pid_ <= 0) {
    close(fds[0]);
    return absl::InternalError("spawn stratad failed");
  }
  std::string line;
  absl::Status s = ReadLine(fds[0], absl::Now() + timeout, &line);
  close(fds[0]);
  if (s.ok() && line.rfind("stratad ready ", 0) != 0) {
    s = absl::InternalError("unexpected stdout line: " + line);
  }
  if (!s.ok()) {
    Kill();
    return absl::InternalError(absl::StrCat("stratad did not become ready: ",
                                            s.ToString(), " (log: ", data_dir_,
                                            "/stratad.log)"));
  }
  for (absl::string_view field : absl::StrSplit(line, ' ')) {
    if (absl::ConsumePrefix(&field, "grpc=")) grpc_address_ = std::string(field);
    if (absl::ConsumePrefix(&field, "metrics=")) {
      metrics_address_ = std::string(field);
    }
  }
  return absl::OkStatus();
}

void DaemonProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGCONT);
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

absl::Status DaemonProcess::Stop() {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  kill(pid_, SIGTERM);
  return WaitExit(absl::Seconds(60));
}

void DaemonProcess::Pause() {
  kill(pid_, SIGSTOP);
  // waitpid reports the stop once every thread has stopped; a signal to
  // this process must not end the wait early (EINTR).
  int status = 0;
  while (waitpid(pid_, &status, WUNTRACED) < 0 && errno == EINTR) {
  }
}

void DaemonProcess::Resume() {
  kill(pid_, SIGCONT);
  int status = 0;
  waitpid(pid_, &status, WCONTINUED);
}

absl::Status DaemonProcess::WaitExit(absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd >= 0) {
    pollfd p = {pidfd, POLLIN, 0};
    int n;
    do {
      n = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
    } while (n < 0 && errno == EINTR);
    close(pidfd);
    if (n == 0) {
      return absl::DeadlineExceededError(absl::StrCat(
          "stratad ", pid_, " still running after ",
          absl::FormatDuration(timeout)));
    }
  }
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("stratad exit status ", status));
  }
  return absl::OkStatus();
}
#endif  // STRATAD_PATH

}  // namespace strata::testing
