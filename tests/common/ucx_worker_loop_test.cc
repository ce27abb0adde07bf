// ucx::WorkerLoop: callers driving the worker (TryDrive) and the loop
// thread taking turns. A caller's event also wakes the loop thread sleeping
// on the same fd; these tests pin down when that thread parks and when it
// must run again.
#include "common/ucx_worker_loop.h"

#include <atomic>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace strata::ucx {
namespace {

// A loop whose tick counts the rounds the loop thread itself ran.
struct CountingLoop {
  std::unique_ptr<WorkerLoop> loop;
  std::atomic<std::thread::id> loop_thread{};
  std::atomic<int> loop_ticks{0};
  std::atomic<bool> drives_done{false};
  absl::Notification loop_ran_after_drives;

  void Start(bool owner_idle) {
    auto created = WorkerLoop::Create(/*loopback_only=*/true,
                                      /*callers_drive=*/true);
    ASSERT_TRUE(created.ok()) << created.status();
    loop = *std::move(created);
    loop->Start(
        [this] {
          if (std::this_thread::get_id() == loop_thread.load()) {
            loop_ticks.fetch_add(1);
            if (drives_done.load() && !loop_ran_after_drives.HasBeenNotified()) {
              loop_ran_after_drives.Notify();
            }
          }
          return absl::InfiniteFuture();
        },
        [owner_idle] { return owner_idle; });
    absl::Notification posted;
    ASSERT_TRUE(loop->Post([this, &posted] {
      loop_thread.store(std::this_thread::get_id());
      posted.Notify();
    }));
    posted.WaitForNotification();
  }

  // One caller's turn: an event on the worker's fd (the signal), which
  // also wakes a loop thread sleeping on it, then the hand-back. Retries
  // while the loop thread holds the worker.
  void Drive(bool last = false) {
    while (!loop->TryDrive(
        [this, last] {
          drives_done.store(last);  // Under the drive lock.
          ucp_worker_signal(loop->worker());
        },
        [] { return true; })) {
      std::this_thread::yield();
    }
  }

  ~CountingLoop() {
    if (loop == nullptr) return;
    loop->Post([l = loop.get()] { l->RequestExit(); });
    loop->Join();
  }
};

TEST(UcxWorkerLoop, BackToBackCallersOfAnIdleOwnerLeaveTheLoopThreadParked) {
  CountingLoop l;
  ASSERT_NO_FATAL_FAILURE(l.Start(/*owner_idle=*/true));
  constexpr int kDrives = 200;
  l.Drive();  // The loop thread wakes on this one's event, then parks.
  const int before = l.loop_ticks.load();
  for (int i = 1; i < kDrives; ++i) {
    // Callers come a little apart, as an engine's requests do: room for a
    // loop thread that was woken to take the worker (this is pacing, not
    // waiting for an event; the thread yields the core meanwhile).
    const absl::Time next = absl::Now() + absl::Microseconds(200);
    while (absl::Now() < next) std::this_thread::yield();
    l.Drive();
  }
  // Each caller's event would otherwise wake the loop thread and have it
  // run a round once the caller unlocks.
  EXPECT_LE(l.loop_ticks.load() - before, 2) << "over " << kDrives << " callers";
}

TEST(UcxWorkerLoop, APostWakesAParkedLoopThread) {
  CountingLoop l;
  ASSERT_NO_FATAL_FAILURE(l.Start(/*owner_idle=*/true));
  for (int i = 0; i < 20; ++i) l.Drive();
  absl::Notification ran;
  std::atomic<bool> on_loop_thread{false};
  ASSERT_TRUE(l.loop->Post([&] {
    on_loop_thread.store(std::this_thread::get_id() == l.loop_thread.load());
    ran.Notify();
  }));
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(on_loop_thread.load());
}

// Closures posted while callers come and go (the loop thread parking and
// unparking between them) all run, without any later call to carry them.
TEST(UcxWorkerLoop, PostsRacingCallersAllRun) {
  CountingLoop l;
  ASSERT_NO_FATAL_FAILURE(l.Start(/*owner_idle=*/true));
  constexpr int kPosts = 2000;
  std::atomic<int> ran{0};
  absl::Notification all_ran;
  std::atomic<bool> posting{true};
  std::thread caller([&] {
    while (posting.load()) l.Drive();
  });
  for (int i = 0; i < kPosts; ++i) {
    ASSERT_TRUE(l.loop->Post([&] {
      if (ran.fetch_add(1) + 1 == kPosts) all_ran.Notify();
    }));
    if (i % 8 == 0) std::this_thread::yield();
  }
  posting.store(false);
  caller.join();
  EXPECT_TRUE(all_ran.WaitForNotificationWithTimeout(absl::Seconds(20)))
      << ran.load() << " of " << kPosts << " posted closures ran";
}

TEST(UcxWorkerLoop, ALoopThreadWhoseOwnerAwaitsEventsStillWatchesThemAfterCallers) {
  CountingLoop l;
  ASSERT_NO_FATAL_FAILURE(l.Start(/*owner_idle=*/false));
  for (int i = 0; i < 20; ++i) l.Drive(/*last=*/i == 19);
  // An event (as a reply to a call in flight would be), nothing posted: the
  // loop thread must be watching the worker, not parked, to take it.
  ucp_worker_signal(l.loop->worker());
  EXPECT_TRUE(
      l.loop_ran_after_drives.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

}  // namespace
}  // namespace strata::ucx
