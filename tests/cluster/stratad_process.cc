#include "tests/cluster/stratad_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace strata::testing {
namespace {

// Spawns argv with stdout on a pipe; returns the read end. `env` adds to or
// overrides this process's environment.
pid_t Spawn(const std::vector<std::string>& argv, int* out_fd,
            const std::map<std::string, std::string>& env = {}) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var = *e;
    if (!env.contains(var.substr(0, var.find('=')))) vars.push_back(var);
  }
  for (const auto& [name, value] : env) vars.push_back(name + "=" + value);
  std::vector<char*> envp;
  for (auto& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, args[0], &actions, nullptr, args.data(),
                  envp.data()) != 0) {
    pid = -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  *out_fd = fds[0];
  return pid;
}

}  // namespace

StratadProcess::StratadProcess(std::string data_dir,
                               std::vector<std::string> flags,
                               std::map<std::string, std::string> env)
    : data_dir_(std::move(data_dir)),
      flags_(std::move(flags)),
      env_(std::move(env)) {}

StratadProcess::~StratadProcess() {
  if (pid_ > 0) Kill();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

absl::Status StratadProcess::Start() {
  std::vector<std::string> argv = {
      STRATAD_PATH, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
      "--data_plane_listen=127.0.0.1:0", "--data_dir=" + data_dir_,
      "--log_format=text"};
  argv.insert(argv.end(), flags_.begin(), flags_.end());
  int fd = -1;
  pid_ = Spawn(argv, &fd, env_);
  if (pid_ <= 0) return absl::InternalError("spawn stratad failed");
  // Read until the ready line; the daemon prints nothing else on stdout.
  std::string line;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') line.push_back(c);
  if (hold_stdout_) {
    if (stdout_fd_ >= 0) close(stdout_fd_);
    stdout_fd_ = fd;
  } else {
    close(fd);
  }
  if (line.rfind("stratad ready ", 0) != 0) {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return absl::InternalError(
        absl::StrCat("stratad did not become ready (stdout: \"", line,
                     "\", exit status ", status, ")"));
  }
  for (absl::string_view field : absl::StrSplit(line, ' ')) {
    if (absl::ConsumePrefix(&field, "grpc=")) grpc_address_ = std::string(field);
    if (absl::ConsumePrefix(&field, "metrics=")) {
      metrics_address_ = std::string(field);
    }
    if (absl::ConsumePrefix(&field, "ucx=")) ucx_address_ = std::string(field);
    if (absl::ConsumePrefix(&field, "tcp=")) tcp_address_ = std::string(field);
    if (absl::ConsumePrefix(&field, "local=")) local_path_ = std::string(field);
  }
  return absl::OkStatus();
}

absl::Status StratadProcess::Stop() {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("stratad exit status ", status));
  }
  return absl::OkStatus();
}

void StratadProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGCONT);
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

// SIGSTOP is asynchronous: wait until the daemon is stopped (a fast data
// plane answers a call sent right after kill() otherwise), and running again.
void StratadProcess::Pause() {
  kill(pid_, SIGSTOP);
  // waitpid reports the stop once every thread has stopped; a signal to
  // this process must not end the wait early (EINTR).
  int status = 0;
  while (waitpid(pid_, &status, WUNTRACED) < 0 && errno == EINTR) {
  }
}

void StratadProcess::Resume() {
  kill(pid_, SIGCONT);
  int status = 0;
  waitpid(pid_, &status, WCONTINUED);
}

CommandResult RunCommand(const std::vector<std::string>& argv) {
  CommandResult result;
  int fd = -1;
  const pid_t pid = Spawn(argv, &fd);
  if (pid <= 0) return result;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) result.out.append(buf, n);
  close(fd);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

}  // namespace strata::testing
