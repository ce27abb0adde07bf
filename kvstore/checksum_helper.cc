#include "kvstore/checksum_helper.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstdlib>
#include <string_view>
#include <system_error>
#include <thread>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack.
#include "xxh_x86dispatch.h"     // Runtime SIMD dispatch (AVX2 when present).
#include "xxhash.h"

namespace strata::kvstore {
namespace {

// Waits until `done` holds for `word`'s value: spins with the CPU's pause
// hint for a few microseconds (the other side usually answers within a
// piece's copy), then blocks on the word (a futex; every store to it that
// a waiter may need is followed by a notify). Not sched_yield, which
// leaves it to the scheduler whether the thread waited for gets the CPU:
// on a shared CPU it may not before the next tick.
template <typename T, typename Pred>
T AwaitValue(const std::atomic<T>& word, Pred done) {
  for (int round = 0;; ++round) {
    const T v = word.load(std::memory_order_acquire);
    if (done(v)) return v;
    if (round < 1024) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    } else {
      word.wait(v, std::memory_order_acquire);
    }
  }
}

// The CPUs the process may run on: its main thread's (a copier may be
// pinned to fewer, and the helper must not inherit that).
bool ProcessCpus(cpu_set_t* set) {
  CPU_ZERO(set);
  return sched_getaffinity(getpid(), sizeof(*set), set) == 0;
}

bool MoreThanOneCpu() {
  cpu_set_t set;
  if (!ProcessCpus(&set)) return std::thread::hardware_concurrency() > 1;
  return CPU_COUNT(&set) > 1;
}

// A job's phase, with its number so a late helper cannot act on the next
// job: posted by the copier, claimed by a helper that woke up, handed over
// by the copier at its next piece, or withdrawn by a copier that finished
// first.
enum Phase : uint64_t {
  kPosted = 1,
  kClaimed = 2,
  kHandedOver = 3,
  kWithdrawn = 4,
};
constexpr uint64_t Tag(uint64_t job, Phase phase) { return job << 3 | phase; }
constexpr bool IsPosted(uint64_t tagged) { return (tagged & 7) == kPosted; }

}  // namespace

struct ChecksumHelper::Shared {
  Shared() : handle(this) {}

  // The next posted job after `handled` (spun for briefly, then waited for
  // asleep on `phase`, which Start notifies).
  uint64_t NextJob(uint64_t handled) {
    return AwaitValue(phase, [handled](uint64_t p) {
             return IsPosted(p) && (p >> 3) > handled;
           }) >>
           3;
  }

  // The helper thread: takes over each block's hash once it is awake.
  void Run() {
    pthread_setname_np(pthread_self(), "strata-hash");
    // Free to run wherever the process may, not only on its creator's CPUs.
    if (cpu_set_t set; ProcessCpus(&set)) {
      pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    }
    uint64_t handled = 0;
    for (;;) {
      const uint64_t job = NextJob(handled);
      handled = job;
      uint64_t expected = Tag(job, kPosted);
      if (!phase.compare_exchange_strong(expected, Tag(job, kClaimed),
                                         std::memory_order_acq_rel)) {
        continue;  // Withdrawn: the copier finished first.
      }
      // The copier answers at its next piece (or when it finishes).
      const uint64_t answer = AwaitValue(
          phase, [job](uint64_t p) { return p != Tag(job, kClaimed); });
      if (answer != Tag(job, kHandedOver)) continue;
      taken_over_.fetch_add(1, std::memory_order_relaxed);
      // The job's fields and the running hash are the copier's hand-over
      // (the acquire above pairs with its release of kHandedOver).
      size_t done_bytes = copier_hashed;
      while (done_bytes < bytes) {
        const size_t now = AwaitValue(
            ready, [done_bytes](size_t r) { return r > done_bytes; });
        XXH3_64bits_update(&state, data + done_bytes, now - done_bytes);
        done_bytes = now;
      }
      digest = XXH3_64bits_digest(&state);
      done.store(true, std::memory_order_release);
      done.notify_one();
    }
  }

  // Lent to one copier at a time (TryAcquire / Finish).
  std::atomic<bool> lent{false};
  std::atomic<uint64_t> phase{0};  // Tag(job, Phase).

  // The job and its running hash: written by the copier, which hashes into
  // `state` until it hands it over (phase kHandedOver, release); read and
  // written by the helper after (acquire), never before.
  uint64_t job = 0;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
  XXH3_state_t state;
  size_t copier_hashed = 0;  // Bytes of data in `state` (the copier's).
  std::atomic<size_t> ready{0};
  std::atomic<bool> done{false};
  uint64_t digest = 0;  // Written by the helper before `done`.
  bool handed_over = false;

  ChecksumHelper handle;
};

// In a forked child the parent's helper has no thread (and its mutex may be
// held by a thread that is not there): it is left alone, never freed, and
// the child starts its own.
std::atomic<ChecksumHelper::Shared*> ChecksumHelper::process_helper_{nullptr};
std::atomic<uint64_t> ChecksumHelper::taken_over_{0};

std::atomic<int> ChecksumHelper::policy_{-1};

ChecksumHelper::Policy ChecksumHelper::CurrentPolicy() {
  int p = policy_.load(std::memory_order_acquire);
  if (p < 0) {
    const Policy read =
        PolicyFromEnvironment(std::getenv("STRATA_CHECKSUM_HELPER"));
    // A SetPolicy that came meanwhile wins.
    policy_.compare_exchange_strong(p, static_cast<int>(read),
                                    std::memory_order_acq_rel);
    p = policy_.load(std::memory_order_acquire);
  }
  return static_cast<Policy>(p);
}

ChecksumHelper::Policy ChecksumHelper::PolicyFromEnvironment(
    const char* value) {
  const std::string_view v = value == nullptr ? "" : value;
  if (v == "0") return Policy::kOff;
  if (v == "always") return Policy::kAlways;
  return Policy::kMeasured;
}

void ChecksumHelper::SetPolicy(Policy policy) {
  policy_.store(static_cast<int>(policy), std::memory_order_release);
}

const bool ChecksumHelper::more_than_one_cpu_ = MoreThanOneCpu();
// A forked child starts a helper of its own (the parent's thread is not
// there).
const bool ChecksumHelper::fork_handler_registered_ =
    pthread_atfork(nullptr, nullptr, ForgetInForkedChild) == 0;

bool ChecksumHelper::Enabled() {
  return more_than_one_cpu_ && CurrentPolicy() != Policy::kOff;
}

uint64_t ChecksumHelper::TakenOver() {
  return taken_over_.load(std::memory_order_relaxed);
}

void ChecksumHelper::ForgetInForkedChild() {
  process_helper_.store(nullptr, std::memory_order_relaxed);
}

ChecksumHelper* ChecksumHelper::TryAcquire() {
  if (!Enabled()) return nullptr;
  Shared* shared = process_helper_.load(std::memory_order_acquire);
  if (shared == nullptr) {
    auto* fresh = new Shared;
    if (process_helper_.compare_exchange_strong(shared, fresh,
                                                std::memory_order_acq_rel)) {
      shared = fresh;
      // Detached: it sleeps between blocks for the life of the process.
      try {
        std::thread([fresh] { fresh->Run(); }).detach();
      } catch (const std::system_error&) {
        // No thread (EAGAIN): never lent, so copiers hash on their own.
        fresh->lent.store(true, std::memory_order_release);
      }
    } else {
      delete fresh;  // Another caller's went in first; `shared` is it.
    }
  }
  bool expected = false;
  if (!shared->lent.compare_exchange_strong(expected, true,
                                            std::memory_order_acquire)) {
    return nullptr;
  }
  return &shared->handle;
}

void ChecksumHelper::Start(const uint8_t* prefix, size_t prefix_bytes,
                           const uint8_t* data, size_t bytes) {
  Shared& h = *shared_;
  h.data = data;
  h.bytes = bytes;
  h.copier_hashed = 0;
  h.handed_over = false;
  XXH3_64bits_reset(&h.state);
  XXH3_64bits_update(&h.state, prefix, prefix_bytes);
  h.ready.store(0, std::memory_order_relaxed);
  h.done.store(false, std::memory_order_relaxed);
  ++h.job;  // One copier at a time: numbered 1, 2, ... per process.
  h.phase.store(Tag(h.job, kPosted), std::memory_order_release);
  h.phase.notify_one();
}

void ChecksumHelper::Advance(size_t ready) {
  Shared& h = *shared_;
  assert(ready >= h.copier_hashed && ready <= h.bytes);
  if (h.handed_over) {
    h.ready.store(ready, std::memory_order_release);
    h.ready.notify_one();
    return;
  }
  // Handed over only while there is copying left to overlap with.
  if (ready < h.bytes &&
      h.phase.load(std::memory_order_acquire) == Tag(h.job, kClaimed)) {
    // The helper is awake and waiting: it goes on from here.
    h.ready.store(ready, std::memory_order_relaxed);
    h.phase.store(Tag(h.job, kHandedOver), std::memory_order_release);
    h.phase.notify_one();
    h.handed_over = true;
    return;
  }
  XXH3_64bits_update(&h.state, h.data + h.copier_hashed,
                     ready - h.copier_hashed);
  h.copier_hashed = ready;
}

uint64_t ChecksumHelper::Finish() {
  Shared& h = *shared_;
  uint64_t digest;
  if (h.handed_over) {
    h.ready.store(h.bytes, std::memory_order_release);
    h.ready.notify_one();
    AwaitValue(h.done, [](bool d) { return d; });
    digest = h.digest;
  } else {
    // Nothing left to overlap: the rest is hashed here, and the job
    // withdrawn, so a helper waking now leaves it (and `state`) alone.
    XXH3_64bits_update(&h.state, h.data + h.copier_hashed,
                       h.bytes - h.copier_hashed);
    h.copier_hashed = h.bytes;
    uint64_t p = h.phase.load(std::memory_order_acquire);
    while ((p == Tag(h.job, kPosted) || p == Tag(h.job, kClaimed)) &&
           !h.phase.compare_exchange_weak(p, Tag(h.job, kWithdrawn),
                                          std::memory_order_acq_rel)) {
    }
    h.phase.notify_one();  // A helper waiting for its claim's answer.
    digest = XXH3_64bits_digest(&h.state);
  }
  h.lent.store(false, std::memory_order_release);
  return digest;
}

// ---- CopyHelpChooser.

namespace {

// Holds the chooser's try-lock for a scope, if it was free.
class TryLock {
 public:
  explicit TryLock(std::atomic<bool>& busy) : busy_(busy) {
    held_ = !busy_.exchange(true, std::memory_order_acquire);
  }
  ~TryLock() {
    if (held_) busy_.store(false, std::memory_order_release);
  }
  bool held() const { return held_; }

 private:
  std::atomic<bool>& busy_;
  bool held_;
};

using Mode = CopyHelpChooser::Mode;

Mode Other(Mode m) { return m == Mode::kAlone ? Mode::kHelped : Mode::kAlone; }
int Index(Mode m) { return m == Mode::kAlone ? 0 : 1; }

// The process's choosers: constant-initialized, so no thread can be inside
// a first-use guard when another forks.
constinit CopyHelpChooser process_choosers[CopyHelpChooser::kKinds];

}  // namespace

// A forked child measures afresh (and may have forked while another thread
// held a try-lock). Registered at start-up, before any thread forks.
[[maybe_unused]] static const bool kChooserForkHandlerRegistered =
    pthread_atfork(nullptr, nullptr, &CopyHelpChooser::ResetAllInChild) == 0;

CopyHelpChooser& CopyHelpChooser::Process(int kind) {
  assert(kind >= 0 && kind < kKinds);
  return process_choosers[kind];
}

void CopyHelpChooser::ResetAllInChild() {
  for (CopyHelpChooser& chooser : process_choosers) chooser.Reset();
}

void CopyHelpChooser::Reset() {
  busy_.store(false, std::memory_order_relaxed);
  favoured_.store(Mode::kAlone, std::memory_order_relaxed);
  last_ns_per_byte_[0] = last_ns_per_byte_[1] = 0;
  trial_active_ = false;
  trials_until_explore_ = kMinExploreEvery;
  explore_every_ = kMinExploreEvery;
  last_trial_empty_ = false;
}

void CopyHelpChooser::StartTrial() {
  ++trial_;
  trial_active_ = true;
  trial_choices_ = 0;
  trial_all_choices_ = 0;
  trial_samples_ = 0;
  trial_explores_ = false;
  const Mode favoured = favoured_.load(std::memory_order_relaxed);
  const bool helped_unmeasured = last_ns_per_byte_[Index(Mode::kHelped)] == 0;
  const bool alone_unmeasured = last_ns_per_byte_[Index(Mode::kAlone)] == 0;
  // An unmeasured mode goes first (helped before alone), unless its last
  // trial (trial_mode_ still names it) measured nothing: then the other
  // unmeasured one.
  const bool helped_came_empty =
      last_trial_empty_ && trial_mode_ == Mode::kHelped;
  last_trial_empty_ = false;
  if (helped_unmeasured && !(helped_came_empty && alone_unmeasured)) {
    trial_mode_ = Mode::kHelped;
  } else if (alone_unmeasured) {
    trial_mode_ = Mode::kAlone;
  } else if (helped_unmeasured) {
    trial_mode_ = Mode::kHelped;
  } else if (trials_until_explore_ <= 0) {
    trial_mode_ = Other(favoured);
    trial_explores_ = true;
    trials_until_explore_ = explore_every_;
  } else {
    trial_mode_ = favoured;
    --trials_until_explore_;
  }
}

void CopyHelpChooser::FinishTrial() {
  trial_active_ = false;
  const Mode mode = trial_mode_;
  if (trial_samples_ < 2) {  // One copy's time decides nothing.
    last_trial_empty_ = last_ns_per_byte_[Index(mode)] == 0;
    return;
  }
  std::sort(samples_, samples_ + trial_samples_);
  const int mid = trial_samples_ / 2;
  const double median = trial_samples_ % 2 == 1
                            ? samples_[mid]
                            : (samples_[mid - 1] + samples_[mid]) / 2;
  last_ns_per_byte_[Index(mode)] = median;
  const double other = last_ns_per_byte_[Index(Other(mode))];
  if (other == 0) return;  // The other mode's trial comes next.
  if (mode != favoured_.load(std::memory_order_relaxed)) {
    if (median < other * kSwitchMargin) {
      // It won: the process goes over to it.
      favoured_.store(mode, std::memory_order_relaxed);
      explore_every_ = kMinExploreEvery;
    } else if (trial_explores_) {
      explore_every_ = std::min(kMaxExploreEvery, explore_every_ * 2);
    }
    trials_until_explore_ = explore_every_;
  } else if (other < median * kSwitchMargin) {
    // The favoured mode got slower than the other was: over at once.
    favoured_.store(Other(mode), std::memory_order_relaxed);
    explore_every_ = kMinExploreEvery;
    trials_until_explore_ = explore_every_;
  }
}

CopyHelpChooser::Choice CopyHelpChooser::Choose() {
  TryLock lock(busy_);
  if (!lock.held()) {
    return Choice{favoured_.load(std::memory_order_relaxed), 0, false};
  }
  // A trial whose samples have not all come within four trials' worth of
  // copies that ran in its mode (their times were dropped: the chooser was
  // busy), or within sixteen of any (the helper was lent elsewhere all
  // along), ends with what it has.
  if (trial_active_ && (trial_choices_ >= 4 * kTrialCopies ||
                        trial_all_choices_ >= 16 * kTrialCopies)) {
    FinishTrial();
  }
  if (!trial_active_) StartTrial();
  Choice choice{trial_mode_, trial_, trial_choices_ > 0};
  ++trial_choices_;
  ++trial_all_choices_;
  return choice;
}

void CopyHelpChooser::Record(const Choice& choice, size_t bytes,
                             uint64_t nanos) {
  if (!choice.counted || bytes == 0) return;
  TryLock lock(busy_);
  if (!lock.held() || !trial_active_ || choice.trial != trial_) return;
  samples_[trial_samples_++] =
      static_cast<double>(nanos) / static_cast<double>(bytes);
  if (trial_samples_ == kTrialCopies - 1) FinishTrial();
}

void CopyHelpChooser::Unused(const Choice& choice) {
  TryLock lock(busy_);
  if (!lock.held() || !trial_active_ || choice.trial != trial_ ||
      trial_choices_ == 0) {
    return;
  }
  --trial_choices_;
}

template <typename Read>
auto CopyHelpChooser::ReadLocked(Read read) const {
  for (;;) {
    TryLock lock(busy_);
    if (lock.held()) return read();
    sched_yield();
  }
}

CopyHelpChooser::Mode CopyHelpChooser::Favoured() const {
  return ReadLocked(
      [this] { return favoured_.load(std::memory_order_relaxed); });
}

int CopyHelpChooser::ExploreEvery() const {
  return ReadLocked([this] { return explore_every_; });
}

}  // namespace strata::kvstore
