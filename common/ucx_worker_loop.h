// WorkerLoop: one UCX context, one worker and the thread that progresses it.
// The daemon's data plane and the client's transport are both built on it.
//
// Configuration: UCX reads its UCX_* environment variables (UCX_TLS,
// UCX_NET_DEVICES, ...) when Create() runs, so each process honours its own
// environment. docs/protocol.md lists the settings that select TCP or shared
// memory. Create() also applies the tuned defaults of kDefaultSettings to
// every setting the environment leaves unset (the environment always wins).
//
// Threading: one thread at a time progresses the worker, holding the drive
// lock: the loop thread, or (TryDrive) a caller that waits for its own call
// while the loop thread sleeps. Every UCX callback (active messages,
// completions, endpoint errors, connection requests), posted closure and
// tick runs on that thread, under that lock, so state they share needs no
// other lock; "the loop" below means whichever thread holds it. Other
// threads hand work over with Post(), which is thread-safe and wakes the
// loop (ucp_worker_signal). Between events the loop sleeps on the worker's
// event file descriptor (no busy polling: cores are shared with the store's
// work). The worker's thread mode is SINGLE, or SERIALIZED when callers may
// drive.
//
// Why callers drive: a round trip handed to a progress thread costs the
// client three thread wake-ups on its critical path (caller -> loop thread
// to send; reply -> loop thread -> caller); a caller that sends and sleeps
// on the worker's events itself has one (reply -> caller).
// bench/results/service.md measured wake-ups at about a third of a 256 KiB
// request's client CPU.
#ifndef STRATA_COMMON_UCX_WORKER_LOOP_H_
#define STRATA_COMMON_UCX_WORKER_LOOP_H_

#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata::ucx {

// A UCX setting this project gives its own default: the environment
// variable that overrides it, the name ucp_config_modify knows it by (a
// transport's setting goes without the transport's prefix: UCX applies it to
// every transport that has a field of that name, here TCP only), the value.
struct DefaultSetting {
  const char* env;
  const char* key;
  const char* value;
};

// Measured on loopback (bench/results/service.md, "tuned UCX defaults",
// "TCP segment size" and session 7): with eager sends (TcpEagerPutMaxBytes)
// larger TCP segments let a block travel in one fragment instead of 128 or
// more (UCX 1.13 defaults: 8 KiB / 64 KiB), so the receiver gets it in
// place, without UCX's reassembly copy. 1100 KiB holds the largest eager
// put (a 1 MiB payload) with its headers. UCX requires RX >= TX and
// allocates receive buffers of twice RX. Only the TCP transport reads them.
inline constexpr DefaultSetting kDefaultSettings[] = {
    {"UCX_TCP_TX_SEG_SIZE", "TX_SEG_SIZE", "1100K"},
    {"UCX_TCP_RX_SEG_SIZE", "RX_SEG_SIZE", "1100K"},
};

// Blocks up to these sizes are sent eagerly (UCP_AM_SEND_FLAG_EAGER: the
// bytes go with the message, no rendezvous round trips) on an endpoint whose
// lanes are TCP only: PUT requests by the client, GET replies by the
// daemon. Larger ones, and every block over shared memory (where the
// rendezvous is a single cma copy), follow UCX's own threshold. A 1 MiB put
// eagerly beat the rendezvous (RTS, RTR, data, ATP: three round trips) once
// it went in one fragment and was packed from the caller's block: 4-client
// 1 MiB puts 1.9-2.7 -> 2.5-3.8 GB/s (bench/results/service.md, session 7);
// 1 MiB GET replies showed no clear difference and stay at 512 KiB. The
// environment variable STRATA_UCX_TCP_EAGER_MAX_BYTES overrides both (0:
// never force eager; for measurements).
inline constexpr size_t kTcpEagerPutMaxBytes = (size_t{1} << 20) + 4096;
inline constexpr size_t kTcpEagerReplyMaxBytes = size_t{512} << 10;

// How long a caller driving its worker (WorkerLoop::TryDrive) keeps
// progressing it, yielding the core between polls, before it sleeps on its
// events: a reply that comes within it skips the sleep and the wake-up. A
// caller spins only while no other caller in the process is driving a worker
// (several spinners starve a small machine). STRATA_UCX_CALLER_SPIN_US
// overrides it (0: never spin). Measured in bench/results/service.md
// ("caller-driven progress").
inline constexpr absl::Duration kCallerSpin = absl::Microseconds(100);
// kTcpEagerPutMaxBytes / kTcpEagerReplyMaxBytes or the override (read once
// per process).
size_t TcpEagerPutMaxBytes();
size_t TcpEagerReplyMaxBytes();

// Whether an endpoint carries data over TCP only, from DescribeLanes: the
// callers cache it per connection. The loop only.
bool IsTcpOnly(ucp_ep_h ep);

class WorkerLoop {
 public:
  // Creates the context (UCP_FEATURE_AM | UCP_FEATURE_WAKEUP) and the worker,
  // with kDefaultSettings applied where the environment sets nothing.
  // `loopback_only`: when UCX_NET_DEVICES is unset, use only the loopback
  // network device ("lo"), so that a loopback daemon's UCX TCP transport
  // opens no socket on other interfaces. UNAVAILABLE naming "ucx" when UCX
  // cannot start (e.g. no usable transport in UCX_TLS). Starts no thread.
  // `callers_drive`: TryDrive may be used (the worker is SERIALIZED).
  static absl::StatusOr<std::unique_ptr<WorkerLoop>> Create(
      bool loopback_only = false, bool callers_drive = false);
  // Joins the thread if still running (asking it to exit), drops closures
  // never run, then destroys the worker and the context. Owners tear down
  // their endpoints and listeners on the loop thread before that.
  ~WorkerLoop();
  WorkerLoop(const WorkerLoop&) = delete;
  WorkerLoop& operator=(const WorkerLoop&) = delete;

  ucp_worker_h worker() const { return worker_; }
  // The largest AM header this worker can send.
  size_t max_am_header() const { return max_am_header_; }

  // Starts the loop thread. Each iteration progresses the worker until it is
  // idle, runs posted closures, then calls `tick` (on the loop thread), which
  // returns when it next wants to run without an event, on the SteadyNow()
  // time base (common/steady_time.h; absl::InfiniteFuture(): only on
  // events).
  // `idle` (optional; run by whichever thread drives, under the drive lock)
  // says that the owner awaits no event: no operation of its own is in
  // flight. After a caller drives the worker (TryDrive) and finds it idle,
  // armed and with no tick due, the loop thread stays parked, off the
  // worker's event fd, until work is posted or a later caller hands it work:
  // back-to-back sync calls then wake only their own thread. Without `idle`
  // the loop thread runs after every caller.
  void Start(absl::AnyInvocable<absl::Time()> tick,
             absl::AnyInvocable<bool()> idle = nullptr);
  // Thread-safe: runs `fn` on the loop soon. Returns false, dropping `fn`,
  // once the loop has exited.
  bool Post(absl::AnyInvocable<void()> fn);
  // Thread-safe; for a thread about to wait for work it hands the loop.
  // When no other thread progresses the worker right now (the loop thread
  // asleep on events), takes the drive lock, runs `start`, then does the
  // loop's work on the calling thread (progress, posted closures, tick,
  // sleeping on events in between) until `done()` holds, hands the worker
  // back armed and returns true. Otherwise returns false at once without
  // running `start` (then Post it). `done` is evaluated under the lock, so
  // it may read state the loop's callbacks write. The loop thread waits
  // meanwhile, and stays parked afterwards when the owner is idle (Start).
  // Only on a loop made with `callers_drive`. Once `done()` holds it
  // returns after a bounded hand-back, whatever other traffic there is.
  // After it returns true the caller must not assume the loop still exists
  // unless it owns it (a concurrent destructor may have stopped it).
  bool TryDrive(absl::FunctionRef<void()> start,
                absl::FunctionRef<bool()> done);
  // The loop only: the loop exits after this iteration; later Posts fail.
  void RequestExit();
  // Waits for the loop thread to exit (after something called RequestExit).
  void Join();
  // The loop only: progresses the worker (sleeping on its events) until
  // every request in `requests` has completed or `timeout` passed, then
  // frees them all and clears the vector. For close requests at shutdown.
  // When some did not complete (a peer too busy or gone to answer a flushing
  // close), the destructor leaves the worker and context undestroyed: UCX
  // 1.13 aborts the process ("pending request ... should have been
  // flushed") when a worker is destroyed under an endpoint still closing.
  void Drain(std::vector<void*>* requests, absl::Duration timeout);

 private:
  WorkerLoop() = default;
  void Run();
  // One round of the loop's work: progress until idle, run posted closures,
  // tick (progressing an idle worker for `spin`, yielding the core to
  // runnable threads in between, before sleeping).
  // Returns how long to sleep on the worker's events (poll timeout in ms,
  // -1: until one) once it is armed with nothing left to do, or nullopt
  // when there is more to do now.
  std::optional<int> Step(absl::Time& idle_since, absl::Duration spin)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(drive_mu_);
  // Runs the closures posted so far; true if there were any.
  bool RunPosted();
  // Sleeps until the worker's event fd is readable (after ucp_worker_arm or
  // a signal) or `timeout_ms` passes (-1: no limit).
  void SleepOnEvents(int timeout_ms);
  // The loop thread after a sleep on events: returns holding the drive lock
  // once it must run (no caller drove the worker meanwhile, or the last one
  // left it work, or closures are posted, or exit); until then it parks on
  // park_cv_, off the worker's event fd.
  void AcquireOrPark() ABSL_EXCLUSIVE_LOCK_FUNCTION(drive_mu_);
  // Wakes the loop thread if it is parked (or makes its next park return).
  void WakeParkedLoop();
  bool HasPosted();

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  size_t max_am_header_ = 0;
  int efd_ = -1;
  std::thread thread_;
  // Set by Start: STRATA_UCX_SPIN_US for the loop thread (0), and
  // STRATA_UCX_CALLER_SPIN_US for a caller driving (kCallerSpin).
  absl::Duration spin_;
  absl::Duration caller_spin_;

  // TryDrive's rounds of Step to hand the worker back armed before it leaves
  // that to the loop thread (signalled).
  static constexpr int kHandBackRounds = 4;
  // Held by whichever thread progresses the worker (see Threading).
  absl::Mutex drive_mu_;
  absl::AnyInvocable<absl::Time()> tick_ ABSL_GUARDED_BY(drive_mu_);
  absl::AnyInvocable<bool()> idle_ ABSL_GUARDED_BY(drive_mu_);
  // A caller drove the worker since the loop thread last ran; and whether
  // the last one left work for the loop thread (AcquireOrPark).
  bool driven_ ABSL_GUARDED_BY(drive_mu_) = false;
  bool loop_needed_ ABSL_GUARDED_BY(drive_mu_) = false;
  // Where the parked loop thread waits: park_wake_ is set by Post and by a
  // caller leaving work, cleared by the loop thread before it checks
  // whether to park (so a wake-up after the check is never lost).
  absl::Mutex park_mu_ ABSL_ACQUIRED_AFTER(drive_mu_);
  absl::CondVar park_cv_;
  bool park_wake_ ABSL_GUARDED_BY(park_mu_) = false;
  bool exit_ ABSL_GUARDED_BY(drive_mu_) = false;
  absl::Time next_tick_ ABSL_GUARDED_BY(drive_mu_);  // tick_'s last answer.
  // When the sleeping loop thread wakes without an event (InfinitePast while
  // it is awake).
  absl::Time loop_wakes_by_ ABSL_GUARDED_BY(drive_mu_) = absl::InfinitePast();
  bool leak_on_destroy_ = false;  // Set by Drain; read after Join.

  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> posted_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// "host:port" (IPv4, IPv6 in brackets, or a name) to a socket address.
// INVALID_ARGUMENT naming `field` when it does not parse or resolve.
absl::Status ParseSockAddr(const std::string& field, const std::string& text,
                           sockaddr_storage* out, socklen_t* len);

// "host:port" of a socket address.
std::string FormatSockAddr(const sockaddr_storage& addr);

// Whether the address is 127.0.0.0/8 or ::1.
bool IsLoopback(const sockaddr_storage& addr);

// The transports carrying an endpoint's lanes, e.g. "tcp" or "sysv,cma"
// (from ucp_ep_print_info; the connection-manager lane is left out).
// The loop only.
std::string DescribeLanes(ucp_ep_h ep);

// Closes `ep`. With `force` (only valid for endpoints in
// UCP_ERR_HANDLING_MODE_PEER) at once: every operation in flight on it
// completes with UCS_ERR_CANCELED and stops touching its buffers. Without
// (mode none: UCX 1.13 rejects a forced close there) the close waits for the
// operations in flight, which keep using their buffers until they end.
// Returns the close request to release with ucp_request_free once complete,
// or null.
void* CloseEp(ucp_ep_h ep, bool force);

// Frees the requests in `requests` (from CloseEp) that have completed and
// keeps the ones still in progress. Call on the worker thread.
void FreeCompletedRequests(std::vector<void*>& requests);

}  // namespace strata::ucx

#endif  // STRATA_COMMON_UCX_WORKER_LOOP_H_
