#include "common/ucx_worker_loop.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/steady_time.h"

namespace strata::ucx {
namespace {

// Whether UCX_TLS leaves the TCP transport in (unset: all transports).
bool TlsIncludeTcp() {
  const char* env = std::getenv("UCX_TLS");
  if (env == nullptr) return true;
  absl::string_view tls(env);
  const bool negated = absl::ConsumePrefix(&tls, "^");
  bool named = false;
  for (absl::string_view name : absl::StrSplit(tls, ',')) {
    absl::ConsumePrefix(&name, "\\");
    if (name == "tcp" || name == "all") named = true;
  }
  return negated ? !named : named;
}

absl::Duration MicrosFromEnv(const char* name, int fallback) {
  const char* env = std::getenv(name);
  return absl::Microseconds(env != nullptr ? std::atoi(env) : fallback);
}

// STRATA_UCX_TCP_EAGER_MAX_BYTES, or nullopt (read once per process).
std::optional<size_t> TcpEagerOverride() {
  static const std::optional<size_t> value = []() -> std::optional<size_t> {
    const char* env = std::getenv("STRATA_UCX_TCP_EAGER_MAX_BYTES");
    if (env == nullptr) return std::nullopt;
    return static_cast<size_t>(std::strtoull(env, nullptr, 10));
  }();
  return value;
}

// Callers driving a worker in this process (any worker). A caller spins
// only while it is the only one: with several, spinning took cores from the
// daemon and from each other on a small machine (bench/results/service.md,
// "caller-driven progress").
std::atomic<int> callers_driving{0};

int PollTimeoutMs(absl::Time next, absl::Time now) {
  if (next == absl::InfiniteFuture()) return -1;
  return static_cast<int>(std::clamp<int64_t>(
      absl::ToInt64Milliseconds(absl::Ceil(next - now, absl::Milliseconds(1))),
      1, 60'000));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerLoop>> WorkerLoop::Create(
    bool loopback_only, bool callers_drive) {
  std::unique_ptr<WorkerLoop> loop(new WorkerLoop());
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) {
    return absl::UnavailableError(
        absl::StrCat("ucx: reading the UCX configuration: ",
                     ucs_status_string(s)));
  }
  if (loopback_only && std::getenv("UCX_NET_DEVICES") == nullptr) {
    ucp_config_modify(config, "NET_DEVICES", "lo");
  }
  for (const DefaultSetting& d : kDefaultSettings) {
    // All of them are TCP's: UCX warns about settings no transport took.
    if (std::getenv(d.env) != nullptr || !TlsIncludeTcp()) continue;
    // UCX keeps transport settings and applies them to the transports that
    // have them (it warns about one that none has).
    ucp_config_modify(config, d.key, d.value);
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 0;
  s = ucp_init(&params, config, &loop->context_);
  ucp_config_release(config);
  if (s != UCS_OK) {
    loop->context_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("ucx: ucp_init: ", ucs_status_string(s)));
  }
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  // Callers that drive take turns with the loop thread (drive_mu_).
  wp.thread_mode =
      callers_drive ? UCS_THREAD_MODE_SERIALIZED : UCS_THREAD_MODE_SINGLE;
  s = ucp_worker_create(loop->context_, &wp, &loop->worker_);
  if (s != UCS_OK) {
    loop->worker_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("ucx: ucp_worker_create: ", ucs_status_string(s)));
  }
  ucp_worker_attr_t attr{};
  attr.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
  if (ucp_worker_query(loop->worker_, &attr) == UCS_OK) {
    loop->max_am_header_ = attr.max_am_header;
  }
  s = ucp_worker_get_efd(loop->worker_, &loop->efd_);
  if (s != UCS_OK) {
    return absl::UnavailableError(
        absl::StrCat("ucx: ucp_worker_get_efd: ", ucs_status_string(s)));
  }
  return loop;
}

WorkerLoop::~WorkerLoop() {
  if (thread_.joinable()) {
    Post([this] { RequestExit(); });
    Join();
  }
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    posted_.clear();
  }
  if (leak_on_destroy_) {
    ABSL_RAW_LOG(WARNING,
                 "ucx: an endpoint did not finish closing; leaving its worker "
                 "undestroyed (UCX would abort)");
    return;
  }
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

void WorkerLoop::Start(absl::AnyInvocable<absl::Time()> tick,
                       absl::AnyInvocable<bool()> idle) {
  tick_ = std::move(tick);
  idle_ = std::move(idle);
  spin_ = MicrosFromEnv("STRATA_UCX_SPIN_US", 0);
  caller_spin_ = MicrosFromEnv("STRATA_UCX_CALLER_SPIN_US",
                               absl::ToInt64Microseconds(kCallerSpin));
  thread_ = std::thread([this] { Run(); });
}

bool WorkerLoop::Post(absl::AnyInvocable<void()> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return false;
    posted_.push_back(std::move(fn));
  }
  // Safe from any thread, whatever the worker's thread mode.
  ucp_worker_signal(worker_);
  WakeParkedLoop();
  return true;
}

void WorkerLoop::WakeParkedLoop() {
  absl::MutexLock lock(&park_mu_);
  park_wake_ = true;
  park_cv_.Signal();
}

bool WorkerLoop::HasPosted() {
  absl::MutexLock lock(&mu_);
  return !posted_.empty();
}

void WorkerLoop::AcquireOrPark() {
  for (;;) {
    {
      absl::MutexLock lock(&park_mu_);
      park_wake_ = false;  // Wakes from here on are seen below or kept.
    }
    drive_mu_.Lock();  // A caller driving hands it back first.
    if (!driven_ || loop_needed_ || exit_ || HasPosted()) {
      driven_ = false;
      loop_needed_ = false;
      return;
    }
    // A caller drove the worker since this thread slept and left nothing
    // for it: park, off the event fd, until a Post or a caller leaving work.
    drive_mu_.Unlock();
    absl::MutexLock lock(&park_mu_);
    while (!park_wake_) park_cv_.Wait(&park_mu_);
  }
}

void WorkerLoop::RequestExit() {
  exit_ = true;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  // From a caller driving the worker, the loop thread is asleep: wake it.
  ucp_worker_signal(worker_);
}

void WorkerLoop::Join() {
  if (thread_.joinable()) thread_.join();
}

bool WorkerLoop::RunPosted() {
  std::deque<absl::AnyInvocable<void()>> batch;
  {
    absl::MutexLock lock(&mu_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
  return !batch.empty();
}

void WorkerLoop::SleepOnEvents(int timeout_ms) {
  pollfd pfd{efd_, POLLIN, 0};
  poll(&pfd, 1, timeout_ms);
}

std::optional<int> WorkerLoop::Step(absl::Time& idle_since,
                                    absl::Duration spin) {
  while (ucp_worker_progress(worker_) != 0) {
  }
  const bool ran = RunPosted();
  const absl::Time next = tick_();
  next_tick_ = next;
  if (exit_ || ran) return std::nullopt;  // Closures may have started work.
  const absl::Time now = SteadyNow();
  if (next <= now) return std::nullopt;
  if (spin > absl::ZeroDuration()) {
    if (idle_since == absl::InfiniteFuture()) idle_since = now;
    if (now - idle_since < spin) {
      std::this_thread::yield();  // Runnable threads first.
      return std::nullopt;
    }
  }
  idle_since = absl::InfiniteFuture();
  const ucs_status_t armed = ucp_worker_arm(worker_);
  if (armed == UCS_ERR_BUSY) return std::nullopt;  // Events pending.
  {
    // A Post that raced with arming: its signal may have been consumed.
    absl::MutexLock lock(&mu_);
    if (!posted_.empty()) return std::nullopt;
  }
  if (armed != UCS_OK) return 1;  // Cannot sleep on events: poll.
  return PollTimeoutMs(next, now);
}

void WorkerLoop::Run() {
  absl::Time idle_since = absl::InfiniteFuture();
  drive_mu_.Lock();
  while (!exit_) {
    const std::optional<int> timeout = Step(idle_since, spin_);
    if (!timeout.has_value()) continue;
    loop_wakes_by_ = next_tick_;
    drive_mu_.Unlock();
    SleepOnEvents(*timeout);
    // A caller may be driving the worker, woken by the same event.
    AcquireOrPark();
    loop_wakes_by_ = absl::InfinitePast();  // Awake.
  }
  while (ucp_worker_progress(worker_) != 0) {
  }
  drive_mu_.Unlock();
}

bool WorkerLoop::TryDrive(absl::FunctionRef<void()> start,
                          absl::FunctionRef<bool()> done) {
  if (!drive_mu_.TryLock()) return false;  // Another thread progresses it.
  if (exit_ || !thread_.joinable()) {
    drive_mu_.Unlock();
    return false;
  }
  driven_ = true;
  start();
  absl::Time idle_since = absl::InfiniteFuture();
  callers_driving.fetch_add(1, std::memory_order_relaxed);
  while (!exit_ && !done()) {
    const bool alone = callers_driving.load(std::memory_order_relaxed) == 1;
    const std::optional<int> timeout =
        Step(idle_since, alone ? caller_spin_ : absl::ZeroDuration());
    if (!timeout.has_value() || done()) continue;
    SleepOnEvents(*timeout);
  }
  callers_driving.fetch_sub(1, std::memory_order_relaxed);
  // Hand the worker back as the loop thread expects to find it when it
  // sleeps: idle, armed (so events wake it), nothing posted. A few rounds at
  // most: under other threads' traffic there is always more to do, and this
  // caller's answer is ready.
  std::optional<int> armed;
  for (int round = 0; round < kHandBackRounds && !exit_ && !armed.has_value();
       ++round) {
    armed = Step(idle_since, absl::ZeroDuration());
  }
  // The loop thread sleeps until events or loop_wakes_by_, or is parked
  // (AcquireOrPark). It must run when the worker is not armed, when tick
  // wants it, when the owner awaits events (calls this thread started for
  // others, replies still due), or to exit; otherwise it stays parked.
  // Signalled before unlocking: once unlocked, an exiting loop may be
  // destroyed at any moment.
  loop_needed_ = exit_ || !armed.has_value() ||
                 next_tick_ != absl::InfiniteFuture() || idle_ == nullptr ||
                 !idle_();
  if (exit_ || !armed.has_value() || next_tick_ < loop_wakes_by_) {
    ucp_worker_signal(worker_);
  }
  if (loop_needed_) WakeParkedLoop();
  drive_mu_.Unlock();
  return true;
}

void WorkerLoop::Drain(std::vector<void*>* requests, absl::Duration timeout) {
  const absl::Time until = SteadyNow() + timeout;
  auto pending = [&] {
    requests->erase(std::remove_if(requests->begin(), requests->end(),
                                   [](void* r) {
                                     if (ucp_request_check_status(r) ==
                                         UCS_INPROGRESS) {
                                       return false;
                                     }
                                     ucp_request_free(r);
                                     return true;
                                   }),
                    requests->end());
    return !requests->empty();
  };
  while (pending() && SteadyNow() < until) {
    if (ucp_worker_progress(worker_) != 0) continue;
    if (ucp_worker_arm(worker_) != UCS_OK) continue;
    SleepOnEvents(10);
  }
  if (!requests->empty()) leak_on_destroy_ = true;
  for (void* r : *requests) ucp_request_free(r);  // Released on completion.
  requests->clear();
}

size_t TcpEagerPutMaxBytes() {
  return TcpEagerOverride().value_or(kTcpEagerPutMaxBytes);
}

size_t TcpEagerReplyMaxBytes() {
  return TcpEagerOverride().value_or(kTcpEagerReplyMaxBytes);
}

bool IsTcpOnly(ucp_ep_h ep) { return DescribeLanes(ep) == "tcp"; }

absl::Status ParseSockAddr(const std::string& field, const std::string& text,
                           sockaddr_storage* out, socklen_t* len) {
  const size_t colon = text.rfind(':');
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": \"", text, "\" ", why));
  };
  if (colon == std::string::npos) return bad("is not host:port");
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  uint32_t port = 0;
  if (!absl::SimpleAtoi(text.substr(colon + 1), &port) || port > 65535) {
    return bad("has no valid port");
  }
  if (host.empty()) return bad("has no host");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) {
    return bad(absl::StrCat("does not resolve: ", gai_strerror(rc)));
  }
  std::memset(out, 0, sizeof(*out));
  std::memcpy(out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  if (out->ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(out)->sin_port = htons(port);
  } else if (out->ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(out)->sin6_port = htons(port);
  } else {
    return bad("is not an IP address");
  }
  return absl::OkStatus();
}

std::string FormatSockAddr(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = {0};
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return absl::StrCat("[", host, "]:", ntohs(a->sin6_port));
  }
  const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
  inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
  return absl::StrCat(host, ":", ntohs(a->sin_port));
}

bool IsLoopback(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
  }
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    return IN6_IS_ADDR_LOOPBACK(&a->sin6_addr);
  }
  return false;
}

std::string DescribeLanes(ucp_ep_h ep) {
  char* text = nullptr;
  size_t size = 0;
  FILE* f = open_memstream(&text, &size);
  if (f == nullptr) return "";
  ucp_ep_print_info(ep, f);
  std::fclose(f);
  // Lines like "#  lane[1]:  1:sysv/memory.0 md[1] -> ...".
  std::set<std::string> names;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text, size), '\n')) {
    const size_t lane = line.find("lane[");
    if (lane == absl::string_view::npos) continue;
    absl::string_view rest = line.substr(lane);
    const size_t colon = rest.find("]:");
    if (colon == absl::string_view::npos) continue;
    rest = rest.substr(colon + 2);
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    if (absl::StartsWith(rest, "cm ")) continue;
    const size_t index_end = rest.find(':');
    const size_t slash = rest.find('/');
    if (index_end == absl::string_view::npos || slash == absl::string_view::npos ||
        slash < index_end) {
      continue;
    }
    names.insert(std::string(rest.substr(index_end + 1, slash - index_end - 1)));
  }
  std::free(text);
  return absl::StrJoin(names, ",");
}

void* CloseEp(ucp_ep_h ep, bool force) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void* request = ucp_ep_close_nbx(ep, &param);
  if (request == nullptr || UCS_PTR_IS_ERR(request)) return nullptr;
  return request;
}

void FreeCompletedRequests(std::vector<void*>& requests) {
  std::erase_if(requests, [](void* r) {
    if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
    ucp_request_free(r);
    return true;
  });
}

}  // namespace strata::ucx
