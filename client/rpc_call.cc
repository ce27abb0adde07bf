#include "client/rpc_call.h"

#include <algorithm>
#include <cstdint>

#include "absl/random/random.h"

namespace strata::client::internal {

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

absl::Duration RetryPolicy::Backoff(int next_attempt) const {
  absl::Duration cap = initial_backoff;
  for (int i = 2; i < next_attempt && cap < max_backoff; ++i) cap *= 2;
  cap = std::min(cap, max_backoff);
  const int64_t cap_ns = absl::ToInt64Nanoseconds(cap);
  if (cap_ns <= 0) return absl::ZeroDuration();
  thread_local absl::BitGen bitgen;
  return absl::Nanoseconds(
      absl::Uniform<int64_t>(absl::IntervalClosed, bitgen, 0, cap_ns));
}

void InflightTracker::Add() {
  absl::MutexLock lock(&mu_);
  ++inflight_;
}

void InflightTracker::Done() {
  absl::MutexLock lock(&mu_);
  --inflight_;
}

void InflightTracker::WaitIdle() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int64_t* n) { return *n == 0; }, &inflight_));
}

}  // namespace strata::client::internal
