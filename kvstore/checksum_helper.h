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
  // The process's helper, now lent to the caller; nullptr when another
  // caller has it, or when !Enabled() (on one CPU a helper would only take
  // turns with the copier). The caller must call Start
  // and then Finish, which gives the helper back.
  static ChecksumHelper* TryAcquire();

  // Whether TryAcquire can lend a helper here: the environment says
  // STRATA_CHECKSUM_HELPER=1, and the process may run on more than one CPU.
  // Off by default: on the 2-vCPU dev VM, helped copies ran 3-5x slower
  // than unhelped ones for whole processes at a time (2 MiB p50 ~870 us
  // against ~170; the unhelped copy in the same process unaffected; ~10%
  // of benchmark processes in some phases, all of them in others), for a
  // reason not yet found (bench/results/kvstore.md, session 12).
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
  static std::atomic<uint64_t> taken_over_;
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_CHECKSUM_HELPER_H_
