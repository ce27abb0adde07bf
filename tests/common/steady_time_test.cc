// SteadyNow / SteadyFromWall: the data plane's monotonic time base.
#include "common/steady_time.h"

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(SteadyTime, AWallDeadlineKeepsItsDistanceFromNow) {
  const absl::Time steady = SteadyFromWall(absl::Now() + absl::Seconds(5));
  const absl::Duration left = steady - SteadyNow();
  EXPECT_GT(left, absl::Seconds(4));
  EXPECT_LE(left, absl::Seconds(5));
  // A deadline already passed stays passed.
  EXPECT_LT(SteadyFromWall(absl::Now() - absl::Seconds(1)), SteadyNow());
}

TEST(SteadyTime, InfiniteDeadlinesStayInfinite) {
  EXPECT_EQ(SteadyFromWall(absl::InfiniteFuture()), absl::InfiniteFuture());
  EXPECT_EQ(SteadyFromWall(absl::InfinitePast()), absl::InfinitePast());
}

TEST(SteadyTime, NeverGoesBack) {
  absl::Time last = SteadyNow();
  for (int i = 0; i < 100000; ++i) {
    const absl::Time now = SteadyNow();
    ASSERT_GE(now, last);
    last = now;
  }
}

}  // namespace
}  // namespace strata
