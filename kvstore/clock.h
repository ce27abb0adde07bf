// Clock: the time seam. Pins and leases expire by this clock, so tests can
// move time forward deterministically instead of sleeping.
//
// Thread safety: all implementations are thread-safe.
#ifndef STRATA_KVSTORE_CLOCK_H_
#define STRATA_KVSTORE_CLOCK_H_

#include <atomic>
#include <cstdint>

#include "absl/time/time.h"

namespace strata::kvstore {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // The process-wide wall clock (absl::Now()). Never null, never deleted.
  static Clock* Real();
};

// A clock that only moves when told to. Starts at the Unix epoch + 1 day.
class ManualClock final : public Clock {
 public:
  absl::Time Now() const override {
    return absl::FromUnixNanos(nanos_.load(std::memory_order_acquire));
  }
  void Advance(absl::Duration d) {
    nanos_.fetch_add(absl::ToInt64Nanoseconds(d), std::memory_order_acq_rel);
  }

 private:
  std::atomic<int64_t> nanos_{absl::ToInt64Nanoseconds(absl::Hours(24))};
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_CLOCK_H_
