// A token bucket for the background data movers (rebalancing, drain): at
// most `rate` units per second on average, with bursts of up to `burst`
// units. A rate of 0 means unlimited. SetRate changes both at run time
// (the cluster config in etcd); Pause holds every Acquire until Resume.
//
// Thread safety: thread-safe. Acquire blocks the caller; Cancel wakes every
// waiter (used on shutdown).
#ifndef STRATA_CLUSTER_REBALANCE_RATE_LIMITER_H_
#define STRATA_CLUSTER_REBALANCE_RATE_LIMITER_H_

#include <algorithm>
#include <cstdint>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace strata::cluster {

class RateLimiter {
 public:
  // `rate` units/s (0 = unlimited); `burst` >= 1 unit, the bucket's size.
  RateLimiter(double rate, double burst)
      : rate_(rate), burst_(std::max(burst, 1.0)), tokens_(burst_) {}

  // Takes `n` units, waiting until the bucket has them. A request larger
  // than the bucket waits until it is full and then drives it negative
  // (so one large block still passes, and the average rate holds). Returns
  // false, taking nothing, when cancelled.
  bool Acquire(double n) {
    absl::MutexLock lock(&mu_);
    while (true) {
      if (cancelled_) return false;
      if (paused_) {
        auto go = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return cancelled_ || !paused_;
        };
        mu_.Await(absl::Condition(&go));
        continue;
      }
      if (rate_ <= 0) return true;
      Refill();
      const double need = std::min(n, burst_);
      if (tokens_ >= need) {
        tokens_ -= n;
        return true;
      }
      const absl::Duration wait = absl::Seconds((need - tokens_) / rate_);
      auto changed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return cancelled_ || paused_ || changed_;
      };
      changed_ = false;
      mu_.AwaitWithTimeout(absl::Condition(&changed), wait);
    }
  }

  // New rate and bucket (0 = unlimited); waiters re-evaluate at once.
  void SetRate(double rate, double burst) {
    absl::MutexLock lock(&mu_);
    Refill();
    rate_ = rate;
    burst_ = std::max(burst, 1.0);
    tokens_ = std::min(tokens_, burst_);
    changed_ = true;
  }
  void Pause() {
    absl::MutexLock lock(&mu_);
    paused_ = true;
  }
  void Resume() {
    absl::MutexLock lock(&mu_);
    paused_ = false;
  }

  void Cancel() {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }
  void Reset() {
    absl::MutexLock lock(&mu_);
    cancelled_ = false;
  }
  double rate() const {
    absl::MutexLock lock(&mu_);
    return rate_;
  }

 private:
  void Refill() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = absl::Now();
    if (rate_ > 0) {
      tokens_ = std::min(burst_, tokens_ + absl::ToDoubleSeconds(now - last_) * rate_);
    }
    last_ = now;
  }

  mutable absl::Mutex mu_;
  double rate_ ABSL_GUARDED_BY(mu_);
  double burst_ ABSL_GUARDED_BY(mu_);
  double tokens_ ABSL_GUARDED_BY(mu_);
  absl::Time last_ ABSL_GUARDED_BY(mu_) = absl::Now();
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  bool changed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_REBALANCE_RATE_LIMITER_H_
