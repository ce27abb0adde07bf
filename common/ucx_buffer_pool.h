// BufferPool: reused heap buffers for blocks in flight on the UCX data plane
// (the daemon's put receive buffers, the client's put copies).
//
// A fresh allocation of a large block is a fresh mmap, and touching it costs
// a page fault per 4 KiB (about 10 ms for 32 MiB on the development machine)
// on top of the transfer; reusing buffers removes that.
//
// Thread-safe. Buffers are plain heap arrays; the pool caches at most
// `max_cached_bytes` of free ones (oldest dropped first).
#ifndef STRATA_COMMON_UCX_BUFFER_POOL_H_
#define STRATA_COMMON_UCX_BUFFER_POOL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace strata::ucx {

class BufferPool {
 public:
  explicit BufferPool(size_t max_cached_bytes) : max_cached_(max_cached_bytes) {}

  // A buffer of at least `size` bytes (contents undefined); its capacity in
  // *capacity, to hand back to Release.
  std::unique_ptr<uint8_t[]> Acquire(size_t size, size_t* capacity) {
    size = std::max<size_t>(size, 1);
    {
      absl::MutexLock lock(&mu_);
      // The smallest cached buffer that fits without wasting over a quarter.
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second >= size && it->second <= size + size / 4 &&
            (best == free_.end() || it->second < best->second)) {
          best = it;
        }
      }
      if (best != free_.end()) {
        std::unique_ptr<uint8_t[]> b = std::move(best->first);
        *capacity = best->second;
        cached_ -= best->second;
        free_.erase(best);
        return b;
      }
    }
    *capacity = size;
    // Default-initialized: no memset of bytes about to be overwritten.
    return std::unique_ptr<uint8_t[]>(new uint8_t[size]);
  }

  void Release(std::unique_ptr<uint8_t[]> buffer, size_t capacity) {
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
  const size_t max_cached_;
  absl::Mutex mu_;
  std::deque<std::pair<std::unique_ptr<uint8_t[]>, size_t>> free_
      ABSL_GUARDED_BY(mu_);
  size_t cached_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace strata::ucx

#endif  // STRATA_COMMON_UCX_BUFFER_POOL_H_
