// A thread that takes over the hashing of a block while another thread
// copies it: a large block's copy-and-verify then takes about as long as
// its copy rather than the copy plus a hash pass (CopyVerifiedBlock with
// CopyHelp::kHelperForLargeBlocks; bench/results/kvstore.md has the
// measurements).
//
// One helper per process, lent to one copier at a time; a copier that
// finds it lent hashes on its own thread. The copier starts hashing each
// piece itself and hands the running hash to the helper once the helper has
// woken up (a sleeping vCPU can take hundreds of microseconds to wake), and
// only while copying is left to overlap with, so a helped copy does not
// wait for a helper that is not there. Once handed over the hash stays
// with the helper: on CPUs oversubscribed enough that the helper is not
// scheduled, Finish waits for it (spinning briefly, then asleep on a futex).
// Between blocks the helper spins briefly, then sleeps on a futex until the
// next Start. After a fork the child starts a helper of its own on first
// use (the parent's thread does not exist there).
//
// Whether a copy is helped at all is measured (CopyHelpChooser, below):
// where the copier and the helper do not share a cache, helping is 3-5x
// slower than hashing alone, and a process falls back to that by itself.
#ifndef STRATA_KVSTORE_CHECKSUM_HELPER_H_
#define STRATA_KVSTORE_CHECKSUM_HELPER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace strata::kvstore {

// Thread-safety: TryAcquire from any thread; the other calls only by the
// thread that acquired the helper, in the order Start, Advance..., Finish.
class ChecksumHelper {
 public:
  // Whether large copies (CopyHelp::kHelperForLargeBlocks) use the helper.
  enum class Policy {
    kOff,       // Never: the caller hashes.
    kMeasured,  // As CopyHelpChooser measures, helped or alone per copy.
    kAlways,    // Whenever it is free (tests, and measuring the helper).
  };
  // The process's policy: SetPolicy's, else PolicyFromEnvironment of the
  // environment's STRATA_CHECKSUM_HELPER, read once.
  static Policy CurrentPolicy();
  // "0": kOff; "always": kAlways; unset (nullptr), "1" (which meant "on"
  // while the helper was opt-in) or anything else: kMeasured, the default.
  static Policy PolicyFromEnvironment(const char* value);
  // Overrides the environment for the rest of the process (tests,
  // benchmarks). Any thread; copies already under way keep their choice.
  static void SetPolicy(Policy policy);

  // The process's helper, now lent to the caller; nullptr when another
  // caller has it, or when !Enabled(). The caller must call Start and then
  // Finish, which gives the helper back.
  static ChecksumHelper* TryAcquire();

  // Whether TryAcquire can lend a helper here: the policy is not kOff, and
  // the process may run on more than one CPU (on one CPU a helper would
  // only take turns with the copier).
  static bool Enabled();
  // How many blocks' hashes a helper took over in this process so far
  // (inherited by a forked child): for tests and measurements.
  static uint64_t TakenOver();

  // Begins an XXH3-64 over `prefix_bytes` bytes at `prefix`, then over
  // `bytes` bytes at `data` as Advance declares them ready. Both ranges must
  // stay valid until Finish returns; bytes changed after they were declared
  // ready may or may not be in the hash (never anything outside the ranges).
  void Start(const uint8_t* prefix, size_t prefix_bytes, const uint8_t* data,
             size_t bytes);
  // Bytes [0, ready) of `data` are ready (non-decreasing, at most `bytes`):
  // hashes the new ones on the calling thread until the helper has taken
  // the hash over, and from then on only tells the helper (release
  // ordering: what the caller wrote there before is what is hashed).
  void Advance(size_t ready);
  // Declares every byte ready, waits for the hash and gives the helper back
  // (the pointer TryAcquire returned must not be used after).
  uint64_t Finish();

  ChecksumHelper(const ChecksumHelper&) = delete;
  ChecksumHelper& operator=(const ChecksumHelper&) = delete;

 private:
  struct Shared;
  explicit ChecksumHelper(Shared* shared) : shared_(shared) {}
  static void ForgetInForkedChild();

  Shared* const shared_;  // Owned by the process (never destroyed).
  static std::atomic<Shared*> process_helper_;  // Created on first use.
  static std::atomic<int> policy_;              // Policy; -1: not read yet.
  static std::atomic<uint64_t> taken_over_;
  // Set at start-up (namespace-scope initializers: no first-use guard that
  // a fork from another thread could leave held in the child).
  static const bool more_than_one_cpu_;
  static const bool fork_handler_registered_;
};

// Chooses, for each large copy-and-hash, between the helper and the calling
// thread alone, by what each took in this process lately: the helper gains
// 1.35-1.45x when the copier and the helper share a cache, and loses 3-5x
// when they do not (bench/results/kvstore.md, session 13: on the dev VM the
// two vCPUs sometimes sit on different dies, and the copier's stores then
// wait for the lines the helper read to be taken back from the other die).
// Which holds can change while a process runs, so the choice is measured
// all along.
//
// Copies are chosen in trials of kTrialCopies consecutive copies in one
// mode; a trial's first copy is not counted (it pays for the mode before
// it), the rest give the trial's median time per byte. The process runs
// the faster mode's trials, and tries the other every `explore_every`
// trials (kMinExploreEvery at first; doubled, up to kMaxExploreEvery, each
// time the other loses; back to kMinExploreEvery when it wins, by at least
// kSwitchMargin). A trial of the current mode that comes out that much
// slower than the other mode's last switches at once. The first trial is
// helped and the second alone: short trials and the helped start make a
// process that copies only a few large blocks (a client's first few gets)
// helped where that pays, and cost one trial of slow copies where it does
// not. A trial whose times do not come ends after 4 * kTrialCopies choices
// whose copies ran in its mode (their times were dropped), or after 16 *
// kTrialCopies choices of any kind (its helped copies found the helper lent
// to other threads); with fewer than two times it measures nothing, and a
// mode not yet measured that way gives its turn to the other.
//
// Thread-safety: Choose, Unused and Record from any thread. A call that
// finds the chooser busy with another thread's does not wait: Choose then
// answers the favoured mode uncounted, Unused and Record drop what they
// carry.
class CopyHelpChooser {
 public:
  enum class Mode { kAlone, kHelped };
  struct Choice {
    Mode mode = Mode::kAlone;
    uint64_t trial = 0;    // Which trial the copy belongs to.
    bool counted = false;  // Whether Record will use its time.
  };
  static constexpr int kTrialCopies = 4;
  static constexpr int kMinExploreEvery = 4;   // Trials.
  static constexpr int kMaxExploreEvery = 64;  // Trials.
  static constexpr double kSwitchMargin = 0.95;
  // With one copier at a time (no sample is then dropped), the most copies
  // that pass between the starts of two trials of a mode, whatever was
  // measured.
  static constexpr int kMaxCopiesBetweenTrials =
      (kMaxExploreEvery + 1) * kTrialCopies;

  // The process's chooser for copies of one kind (0 <= kind < kKinds; each
  // kind is measured apart, since helping pays differently for, say, a
  // copy whose helper hashes the source and one whose helper hashes what
  // landed). Constant-initialized (no first-use guard a fork could leave
  // held); reset in a forked child.
  static constexpr int kKinds = 4;
  static CopyHelpChooser& Process(int kind);

  constexpr CopyHelpChooser() = default;
  CopyHelpChooser(const CopyHelpChooser&) = delete;
  CopyHelpChooser& operator=(const CopyHelpChooser&) = delete;

  // The mode for the next copy.
  Choice Choose();
  // The chosen copy of `bytes` bytes took `nanos`. Only for a copy that ran
  // in its chosen mode.
  void Record(const Choice& choice, size_t bytes, uint64_t nanos);
  // The chosen copy did not run in its mode (it wanted the helper and found
  // it lent): it does not count toward its trial's copies.
  void Unused(const Choice& choice);

  // The mode the measurements favour now, and the trials between two tries
  // of the other: for tests and measurements (they wait for the lock).
  Mode Favoured() const;
  int ExploreEvery() const;

  // Resets every chooser of the process: the pthread_atfork child handler
  // (registered at start-up), not for other use.
  static void ResetAllInChild();

 private:
  void Reset();  // In a forked child.
  void StartTrial();
  void FinishTrial();
  // Waits for the try-lock (test accessors only) and returns read().
  template <typename Read>
  auto ReadLocked(Read read) const;

  // A try-lock (waited on only by the test accessors, so it may be left
  // held across fork only by a thread that is gone: Reset clears it in the
  // child).
  mutable std::atomic<bool> busy_{false};
  // Written under busy_; read without it by a Choose that finds it busy.
  std::atomic<Mode> favoured_{Mode::kAlone};
  // Guarded by busy_.
  double last_ns_per_byte_[2] = {0, 0};  // 0: not measured yet.
  uint64_t trial_ = 0;
  bool trial_active_ = false;
  Mode trial_mode_ = Mode::kAlone;
  bool trial_explores_ = false;
  int trial_choices_ = 0;      // Less those Unused.
  int trial_all_choices_ = 0;  // All.
  int trial_samples_ = 0;
  double samples_[kTrialCopies] = {};
  int trials_until_explore_ = kMinExploreEvery;
  int explore_every_ = kMinExploreEvery;
  // The last trial (of trial_mode_) measured nothing, its mode being
  // unmeasured: the other unmeasured mode goes first next.
  bool last_trial_empty_ = false;
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_CHECKSUM_HELPER_H_
