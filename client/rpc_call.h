// Internal to the client library: one unary RPC with deadline and retries,
// over gRPC's callback API. Not part of the public API.
//
// A RetryingCall owns everything one logical call needs (request, response,
// the ClientContext of the current attempt, the retry alarm and the
// completion callback) and deletes itself after delivering its result. On
// UNAVAILABLE it schedules the next attempt with a grpc::Alarm (no thread
// sleeps), each attempt with a fresh ClientContext and the same absolute
// deadline.
#ifndef STRATA_CLIENT_RPC_CALL_H_
#define STRATA_CLIENT_RPC_CALL_H_

#include <grpcpp/alarm.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata::client::internal {

// gRPC and absl share the canonical code numbering; the message is kept.
absl::Status FromGrpc(const grpc::Status& status);

struct RetryPolicy {
  int max_attempts = 4;
  absl::Duration initial_backoff = absl::Milliseconds(20);
  absl::Duration max_backoff = absl::Seconds(1);

  // The pause before attempt `next_attempt` (2, 3, ...): "full jitter",
  // uniform in [0, min(max_backoff, initial_backoff * 2^(next_attempt - 2))].
  absl::Duration Backoff(int next_attempt) const;
};

// Counts calls in flight so that the client's destructor can wait for them:
// their callbacks use the client's stubs and buffer table. Held by
// shared_ptr so that the final Done() never touches freed memory.
class InflightTracker {
 public:
  void Add();
  void Done();
  void WaitIdle();

 private:
  absl::Mutex mu_;
  int64_t inflight_ ABSL_GUARDED_BY(mu_) = 0;
};

// StartFn: void(grpc::ClientContext*, const Req*, Resp*,
//               std::function<void(grpc::Status)>) — issues one attempt.
// DoneFn: void(const absl::Status&, Resp&) — called once, with the final
//         status and (when OK) the response. It may be move-only.
template <typename Req, typename Resp, typename StartFn, typename DoneFn>
class RetryingCall {
 public:
  static void Start(const RetryPolicy& policy,
                    std::shared_ptr<InflightTracker> tracker,
                    absl::Time deadline, Req request, StartFn start,
                    DoneFn done) {
    tracker->Add();
    auto* call = new RetryingCall(policy, std::move(tracker), deadline,
                                  std::move(request), std::move(start),
                                  std::move(done));
    call->Attempt();
  }

 private:
  RetryingCall(const RetryPolicy& policy,
               std::shared_ptr<InflightTracker> tracker, absl::Time deadline,
               Req request, StartFn start, DoneFn done)
      : policy_(policy),
        tracker_(std::move(tracker)),
        deadline_(deadline),
        request_(std::move(request)),
        start_(std::move(start)),
        done_(std::move(done)) {}

  void Attempt() {
    ++attempts_;
    // A ClientContext serves one RPC only: a fresh one per attempt.
    context_ = std::make_unique<grpc::ClientContext>();
    context_->set_deadline(absl::ToChronoTime(deadline_));
    response_.Clear();
    // The completion may run (and delete `this`) before start_ returns:
    // nothing may touch `this` after this line.
    start_(context_.get(), &request_, &response_,
           [this](grpc::Status status) { OnAttemptDone(std::move(status)); });
  }

  void OnAttemptDone(grpc::Status status) {
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
        attempts_ < policy_.max_attempts) {
      const absl::Time when = absl::Now() + policy_.Backoff(attempts_ + 1);
      if (when < deadline_) {
        last_status_ = std::move(status);
        // A fresh alarm per retry. Replacing the previous one is safe even
        // if its callback is still unwinding: gRPC refcounts alarms.
        alarm_ = std::make_unique<grpc::Alarm>();
        alarm_->Set(absl::ToChronoTime(when), [this](bool fired) {
          if (fired) {
            Attempt();
          } else {
            Finish(FromGrpc(last_status_));
          }
        });
        return;
      }
    }
    Finish(FromGrpc(status));
  }

  void Finish(const absl::Status& status) {
    std::shared_ptr<InflightTracker> tracker = std::move(tracker_);
    done_(status, response_);
    delete this;
    tracker->Done();  // Last: the client may be destroyed right after.
  }

  const RetryPolicy policy_;
  std::shared_ptr<InflightTracker> tracker_;
  const absl::Time deadline_;
  Req request_;
  Resp response_;
  StartFn start_;
  DoneFn done_;
  int attempts_ = 0;
  grpc::Status last_status_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::Alarm> alarm_;
};

template <typename Req, typename Resp, typename StartFn, typename DoneFn>
void StartRetryingCall(const RetryPolicy& policy,
                       std::shared_ptr<InflightTracker> tracker,
                       absl::Time deadline, Req request, StartFn start,
                       DoneFn done) {
  RetryingCall<Req, Resp, StartFn, DoneFn>::Start(
      policy, std::move(tracker), deadline, std::move(request),
      std::move(start), std::move(done));
}

}  // namespace strata::client::internal

#endif  // STRATA_CLIENT_RPC_CALL_H_
