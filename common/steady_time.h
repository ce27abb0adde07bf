// SteadyNow: the time base of the UCX data plane's timers (deadlines,
// retries, orphan release, the loop's next tick).
//
// absl::Now() is the wall clock, which NTP or a resumed VM can step: a step
// forward would expire every call in flight, a step back would hold one
// past its deadline. The data plane therefore keeps its times on the
// monotonic clock, as absl::Time values counted from the Unix epoch plus
// the steady clock's reading (so absl::Time arithmetic and comparisons
// work). Such a value is only meaningful next to another SteadyNow() value:
// never compare it with absl::Now() or pass it to an API expecting the wall
// clock. Callers hand in wall-clock deadlines; SteadyFromWall converts one
// at the boundary.
//
// Thread-safe (both read clocks only).
#ifndef STRATA_COMMON_STEADY_TIME_H_
#define STRATA_COMMON_STEADY_TIME_H_

#include <chrono>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace strata {

inline absl::Time SteadyNow() {
  return absl::UnixEpoch() +
         absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

// The steady-clock time as far from now as the wall-clock `wall` is; the
// infinite past and future stay infinite.
inline absl::Time SteadyFromWall(absl::Time wall) {
  if (wall == absl::InfiniteFuture() || wall == absl::InfinitePast()) {
    return wall;
  }
  return SteadyNow() + (wall - absl::Now());
}

}  // namespace strata

#endif  // STRATA_COMMON_STEADY_TIME_H_
