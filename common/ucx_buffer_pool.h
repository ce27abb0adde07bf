// BufferPool: reused heap buffers for blocks in flight on the UCX data plane
// (the daemon's put receive buffers, the client's put copies).
//
// A fresh allocation of a large block is a fresh mmap, and touching it costs
// a page fault per 4 KiB (about 10 ms for 32 MiB on the development machine)
// on top of the transfer; reusing buffers removes that.
//
// Buffers of 2 MiB and more start at a 2 MiB boundary and ask for
// transparent huge pages (MADV_HUGEPAGE, honoured when the kernel's THP mode
// is "madvise" or "always"): the peer's cma read of a put copy pins every
// page of it, and with 2 MiB pages 8 MiB shared-memory puts were about 1.3x
// faster on average, in noisy A/B runs (bench/results/service.md, session
// 8). STRATA_POOL_HUGE_PAGES=0 turns the advice off (common/huge_pages.h).
//
// Thread-safe. The pool caches at most `max_cached_bytes` of free buffers
// (oldest dropped first).
#ifndef STRATA_COMMON_UCX_BUFFER_POOL_H_
#define STRATA_COMMON_UCX_BUFFER_POOL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <new>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/huge_pages.h"

namespace strata::ucx {

// Pool buffers come from posix_memalign: free() them.
struct PoolBufferFree {
  void operator()(uint8_t* p) const { std::free(p); }
};
using PoolBuffer = std::unique_ptr<uint8_t[], PoolBufferFree>;

class BufferPool {
 public:
  explicit BufferPool(size_t max_cached_bytes) : max_cached_(max_cached_bytes) {}

  // A buffer of at least `size` bytes (contents undefined); its capacity in
  // *capacity, to hand back to Release. Throws std::bad_alloc when memory
  // runs out, as new[] does.
  PoolBuffer Acquire(size_t size, size_t* capacity) {
    const size_t want = CapacityFor(std::max<size_t>(size, 1));
    {
      absl::MutexLock lock(&mu_);
      // The smallest cached buffer that fits without wasting over a quarter.
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second >= want && it->second <= want + want / 4 &&
            (best == free_.end() || it->second < best->second)) {
          best = it;
        }
      }
      if (best != free_.end()) {
        PoolBuffer b = std::move(best->first);
        *capacity = best->second;
        cached_ -= best->second;
        free_.erase(best);
        return b;
      }
    }
    *capacity = want;
    const bool huge = want >= kHugePageBytes;
    void* p = nullptr;
    if (posix_memalign(&p, huge ? kHugePageBytes : 64, want) != 0) {
      throw std::bad_alloc();
    }
    if (huge) AdviseHugePages(p, want, "STRATA_POOL_HUGE_PAGES");
    return PoolBuffer(static_cast<uint8_t*>(p));
  }

  void Release(PoolBuffer buffer, size_t capacity) {
    absl::MutexLock lock(&mu_);
    if (capacity > max_cached_) return;
    while (cached_ + capacity > max_cached_ && !free_.empty()) {
      cached_ -= free_.front().second;
      free_.pop_front();
    }
    cached_ += capacity;
    free_.emplace_back(std::move(buffer), capacity);
  }

 private:
  // Whole pages from 2 MiB up (the last, partial 2 MiB stays in 4 KiB
  // pages: a block of 2^k bytes plus its header does not double), whole
  // cache lines below.
  static size_t CapacityFor(size_t size) {
    const size_t unit = size >= kHugePageBytes ? 4096 : 64;
    if (size > SIZE_MAX - unit) throw std::bad_alloc();  // No wrap to 0.
    return (size + unit - 1) / unit * unit;
  }

  const size_t max_cached_;
  absl::Mutex mu_;
  std::deque<std::pair<PoolBuffer, size_t>> free_
      ABSL_GUARDED_BY(mu_);
  size_t cached_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace strata::ucx

#endif  // STRATA_COMMON_UCX_BUFFER_POOL_H_
