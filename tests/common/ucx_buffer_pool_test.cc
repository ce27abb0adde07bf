// ucx::BufferPool: sizes, alignment and reuse of the data plane's buffers.
#include "common/ucx_buffer_pool.h"

#include <cstdint>
#include <cstring>

#include "gtest/gtest.h"

namespace strata::ucx {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(BufferPool, SmallBuffersAreCacheLineMultiples) {
  BufferPool pool(64 * kMiB);
  size_t capacity = 0;
  PoolBuffer b = pool.Acquire(1000, &capacity);
  EXPECT_EQ(capacity, 1024u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.get()) % 64, 0u);
  std::memset(b.get(), 0xab, capacity);  // All of it is usable.
}

TEST(BufferPool, BlocksFromTwoMiBStartOnAHugePageAndDoNotDouble) {
  BufferPool pool(64 * kMiB);
  size_t capacity = 0;
  // A 2 MiB payload plus its block header.
  PoolBuffer b = pool.Acquire(2 * kMiB + 96, &capacity);
  EXPECT_EQ(capacity, 2 * kMiB + 4096);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.get()) % (2 * kMiB), 0u);
  std::memset(b.get(), 0xcd, capacity);
}

TEST(BufferPool, AReleasedBufferIsReusedForASizeItFits) {
  BufferPool pool(64 * kMiB);
  size_t capacity = 0;
  PoolBuffer b = pool.Acquire(8 * kMiB + 96, &capacity);
  uint8_t* const first = b.get();
  pool.Release(std::move(b), capacity);
  size_t again = 0;
  PoolBuffer c = pool.Acquire(8 * kMiB, &again);
  EXPECT_EQ(c.get(), first);
  EXPECT_EQ(again, capacity);
  // Too small a request for it (over a quarter wasted): a new buffer.
  pool.Release(std::move(c), again);
  size_t small = 0;
  PoolBuffer d = pool.Acquire(kMiB, &small);
  EXPECT_NE(d.get(), first);
  EXPECT_EQ(small, kMiB);
}

TEST(BufferPool, ReleaseKeepsAtMostTheCachedLimit) {
  BufferPool pool(4 * kMiB);
  size_t cap_a = 0, cap_b = 0;
  PoolBuffer a = pool.Acquire(3 * kMiB, &cap_a);
  PoolBuffer b = pool.Acquire(3 * kMiB, &cap_b);
  uint8_t* const second = b.get();
  pool.Release(std::move(a), cap_a);
  pool.Release(std::move(b), cap_b);  // Drops `a`: both do not fit.
  size_t cap = 0;
  PoolBuffer c = pool.Acquire(3 * kMiB, &cap);
  EXPECT_EQ(c.get(), second);
  size_t cap2 = 0;
  PoolBuffer d = pool.Acquire(3 * kMiB, &cap2);
  EXPECT_NE(d.get(), second);
}

}  // namespace
}  // namespace strata::ucx
