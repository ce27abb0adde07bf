#include "kvstore/dram_arena.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::kvstore {
namespace {

using ::testing::HasSubstr;

constexpr size_t kA = DramArena::kAlignment;
constexpr size_t kMiB = size_t{1} << 20;

// Seed from STRATA_TEST_SEED when set, else random; always printed so a
// failure can be replayed.
uint64_t TestSeed(const char* test_name) {
  uint64_t seed;
  if (const char* env = std::getenv("STRATA_TEST_SEED"); env && *env) {
    seed = std::strtoull(env, nullptr, 10);
  } else {
    std::random_device rd;
    seed = (uint64_t{rd()} << 32) | rd();
  }
  std::cout << "[ SEED     ] " << test_name << ": STRATA_TEST_SEED=" << seed
            << std::endl;
  testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

std::unique_ptr<DramArena> MakeArena(size_t capacity) {
  auto arena = DramArena::Create(capacity);
  EXPECT_TRUE(arena.ok()) << arena.status();
  return arena.ok() ? std::move(*arena) : nullptr;
}

// Live allocations by offset (value: footprint). Checks a new range is
// aligned, inside the arena and disjoint from every live one.
class LiveSet {
 public:
  explicit LiveSet(size_t capacity) : capacity_(capacity) {}

  ::testing::AssertionResult Add(uint64_t off, size_t footprint) {
    if (off % kA != 0) return Fail("misaligned offset", off);
    if (off + footprint > capacity_) return Fail("past capacity", off);
    auto next = live_.lower_bound(off);
    if (next != live_.end() && next->first < off + footprint) {
      return Fail("overlaps the next live range", off);
    }
    if (next != live_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second > off) {
        return Fail("overlaps the previous live range", off);
      }
    }
    live_.emplace(off, footprint);
    total_ += footprint;
    return ::testing::AssertionSuccess();
  }
  void Remove(uint64_t off) {
    auto it = live_.find(off);
    total_ -= it->second;
    live_.erase(it);
  }
  size_t total() const { return total_; }
  const std::map<uint64_t, size_t>& ranges() const { return live_; }

 private:
  static ::testing::AssertionResult Fail(const char* why, uint64_t off) {
    return ::testing::AssertionFailure() << why << " at offset " << off;
  }
  const size_t capacity_;
  std::map<uint64_t, size_t> live_;
  size_t total_ = 0;
};

// Writes `tag` at the start of every kAlignment granule of [p, p + size), so
// any two overlapping allocations share at least one tagged word.
void WritePattern(uint8_t* p, size_t size, uint64_t tag) {
  for (size_t pos = 0; pos < size; pos += kA) {
    std::memcpy(p + pos, &tag, std::min<size_t>(sizeof(tag), size - pos));
  }
}
bool PatternIntact(const uint8_t* p, size_t size, uint64_t tag) {
  for (size_t pos = 0; pos < size; pos += kA) {
    if (std::memcmp(p + pos, &tag, std::min<size_t>(sizeof(tag), size - pos))) {
      return false;
    }
  }
  return true;
}

TEST(DramArenaTest, CreateRejectsCapacityBelowAlignmentNamingCapacityBytes) {
  for (size_t capacity : {size_t{0}, size_t{1}, kA - 1}) {
    auto arena = DramArena::Create(capacity);
    EXPECT_EQ(arena.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(arena.status().message(), HasSubstr("capacity_bytes"));
  }
}

TEST(DramArenaTest, CreateRejectsCapacityAbove2To46NamingCapacityBytes) {
  for (size_t capacity :
       {(size_t{1} << 46) + kA, std::numeric_limits<size_t>::max()}) {
    auto arena = DramArena::Create(capacity);
    EXPECT_EQ(arena.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(arena.status().message(), HasSubstr("capacity_bytes"));
  }
}

// In a child process: caps the address space at 4 GiB, asks for an 8 GiB
// arena and exits 0 when that is RESOURCE_EXHAUSTED naming the arena.
void CreateBeyondAnAddressSpaceLimitAndExit() {
  const rlimit limit{size_t{4} << 30, size_t{4} << 30};
  if (setrlimit(RLIMIT_AS, &limit) != 0) std::_Exit(2);
  auto arena = DramArena::Create(size_t{8} << 30);
  const bool ok =
      arena.status().code() == absl::StatusCode::kResourceExhausted &&
      std::string(arena.status().message()).find("dram arena") !=
          std::string::npos;
  std::_Exit(ok ? 0 : 1);
}

// A mapping the OS refuses is RESOURCE_EXHAUSTED naming the arena, not a
// crash.
TEST(DramArenaTest, RefusedMappingIsResourceExhaustedNamingTheArena) {
  EXPECT_EXIT(CreateBeyondAnAddressSpaceLimitAndExit(),
              ::testing::ExitedWithCode(0), "");
}

TEST(DramArenaTest, CreateRoundsCapacityDownAndWholeRegionIsWritable) {
  auto arena = MakeArena(10 * kA + 17);
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->capacity(), 10 * kA);
  EXPECT_EQ(arena->allocated_bytes(), 0u);
  EXPECT_EQ(arena->largest_free_range(), 10 * kA);
  ASSERT_NE(arena->base(), nullptr);
  std::memset(arena->base(), 0xAB, arena->capacity());
  EXPECT_EQ(arena->base()[arena->capacity() - 1], 0xAB);
}

// The arena starts on a 2 MiB boundary, so every whole 2 MiB of it can be a
// transparent huge page; a capacity that is not a page multiple still maps
// and is writable to its last byte.
TEST(DramArenaTest, TheRegionStartsOnAHugePageBoundary) {
  for (size_t capacity : {size_t{3} << 20, (size_t{5} << 20) + 3 * kA}) {
    auto arena = MakeArena(capacity);
    ASSERT_NE(arena, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(arena->base()) % (size_t{2} << 20),
              0u);
    std::memset(arena->base(), 0x5A, arena->capacity());
    EXPECT_EQ(arena->base()[arena->capacity() - 1], 0x5A);
  }
}

// A shared arena is a memfd: another mapping of it (a local client's) sees
// the arena's bytes and writes into it land there; a private arena has none.
TEST(DramArenaTest, ASharedArenasMemfdMapsTheSameBytes) {
  auto priv = DramArena::Create(size_t{3} << 20);
  ASSERT_TRUE(priv.ok()) << priv.status();
  EXPECT_EQ((*priv)->shared_fd(), -1);
  auto shared = DramArena::Create((size_t{3} << 20) + 3 * kA, /*shared=*/true);
  ASSERT_TRUE(shared.ok()) << shared.status();
  DramArena& a = **shared;
  ASSERT_GE(a.shared_fd(), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.base()) % (size_t{2} << 20), 0u);
  struct stat st{};
  ASSERT_EQ(fstat(a.shared_fd(), &st), 0);
  ASSERT_GE(static_cast<size_t>(st.st_size), a.capacity());
  void* p = mmap(nullptr, a.capacity(), PROT_READ | PROT_WRITE, MAP_SHARED,
                 a.shared_fd(), 0);
  ASSERT_NE(p, MAP_FAILED);
  auto* other = static_cast<uint8_t*>(p);
  a.base()[a.capacity() - 1] = 0x3C;
  EXPECT_EQ(other[a.capacity() - 1], 0x3C);
  other[0] = 0xC3;
  EXPECT_EQ(a.base()[0], 0xC3);
  munmap(p, a.capacity());
}

TEST(DramArenaTest, FootprintRoundsUpToAlignmentWithoutOverflow) {
  EXPECT_EQ(DramArena::Footprint(1), kA);
  EXPECT_EQ(DramArena::Footprint(kA), kA);
  EXPECT_EQ(DramArena::Footprint(kA + 1), 2 * kA);
  EXPECT_GE(DramArena::Footprint(std::numeric_limits<size_t>::max()),
            std::numeric_limits<size_t>::max() - kA);
}

TEST(DramArenaTest, AllocateReturnsAlignedDisjointRangesWithinCapacity) {
  auto arena = MakeArena(1 * kMiB);
  ASSERT_NE(arena, nullptr);
  LiveSet live(arena->capacity());
  for (size_t size : {1ul, 255ul, 256ul, 257ul, 1000ul, 4096ul, 65537ul, 3ul}) {
    auto off = arena->Allocate(size);
    ASSERT_TRUE(off.ok()) << off.status();
    EXPECT_TRUE(live.Add(*off, DramArena::Footprint(size)));
  }
  EXPECT_EQ(arena->allocated_bytes(), live.total());
  for (const auto& [off, fp] : live.ranges()) arena->Free(off);
}

TEST(DramArenaTest, AllocateRejectsZeroSizeNamingSize) {
  auto arena = MakeArena(4 * kA);
  ASSERT_NE(arena, nullptr);
  auto off = arena->Allocate(0);
  EXPECT_EQ(off.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(off.status().message(), HasSubstr("size"));
  EXPECT_EQ(arena->allocated_bytes(), 0u);
}

TEST(DramArenaTest, AllocateLargerThanCapacityIsResourceExhaustedNotOverflow) {
  auto arena = MakeArena(4 * kA);
  ASSERT_NE(arena, nullptr);
  for (size_t size : {4 * kA + 1, std::numeric_limits<size_t>::max(),
                      std::numeric_limits<size_t>::max() - kA + 2}) {
    auto off = arena->Allocate(size);
    EXPECT_EQ(off.status().code(), absl::StatusCode::kResourceExhausted)
        << size;
  }
  EXPECT_EQ(arena->allocated_bytes(), 0u);
  auto whole = arena->Allocate(4 * kA);
  ASSERT_TRUE(whole.ok()) << whole.status();
  arena->Free(*whole);
}

TEST(DramArenaTest, ExhaustionIsResourceExhaustedAndFreeingMakesRoomAgain) {
  auto arena = MakeArena(8 * kA);
  ASSERT_NE(arena, nullptr);
  std::vector<uint64_t> offs;
  for (int i = 0; i < 8; ++i) {
    auto off = arena->Allocate(kA);
    ASSERT_TRUE(off.ok()) << off.status();
    offs.push_back(*off);
  }
  auto full = arena->Allocate(1);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.status().message(),
              HasSubstr("no free range of 256 bytes (allocated 2048 of 2048)"));
  EXPECT_EQ(arena->largest_free_range(), 0u);

  arena->Free(offs[3]);
  auto again = arena->Allocate(kA);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, offs[3]);
  // Two non-adjacent free granules do not make a two-granule range.
  arena->Free(offs[1]);
  arena->Free(offs[5]);
  EXPECT_EQ(arena->Allocate(2 * kA).status().code(),
            absl::StatusCode::kResourceExhausted);
  arena->Free(offs[6]);  // Adjacent to 5: now they coalesce.
  auto pair = arena->Allocate(2 * kA);
  ASSERT_TRUE(pair.ok()) << pair.status();
  EXPECT_EQ(*pair, offs[5]);
  for (int i : {0, 2, 4, 7}) arena->Free(offs[i]);
  arena->Free(*again);
  arena->Free(*pair);
  EXPECT_EQ(arena->allocated_bytes(), 0u);
  EXPECT_EQ(arena->largest_free_range(), arena->capacity());
}

// A writer that found the arena full tells "someone freed room meanwhile"
// by the free count, which an evict-then-refill leaves changed even though
// allocated_bytes() is back where it was.
TEST(DramArenaTest, FreeCountGrowsOnEveryFreeEvenWhenUsageReturnsToTheSame) {
  auto arena = MakeArena(2 * kA);
  ASSERT_NE(arena, nullptr);
  auto a = arena->Allocate(kA);
  auto b = arena->Allocate(kA);
  ASSERT_TRUE(a.ok() && b.ok());
  const uint64_t used = arena->allocated_bytes();
  const uint64_t frees = arena->free_count();
  arena->Free(*a);
  auto refill = arena->Allocate(kA);
  ASSERT_TRUE(refill.ok()) << refill.status();
  EXPECT_EQ(arena->allocated_bytes(), used);
  EXPECT_EQ(arena->free_count(), frees + 1);
  arena->Free(*refill);
  arena->Free(*b);
  EXPECT_EQ(arena->free_count(), frees + 3);
}

TEST(DramArenaTest, FreeingShuffledPiecesCoalescesIntoOneFullCapacityRange) {
  // A capacity that is not a size-class boundary, cut into uneven pieces.
  const uint64_t seed = TestSeed("Coalescing");
  std::mt19937_64 rng(seed);
  for (int round = 0; round < 20; ++round) {
    auto arena = MakeArena(12345 * kA);
    ASSERT_NE(arena, nullptr);
    std::vector<uint64_t> offs;
    size_t left = arena->capacity();
    while (left > 0) {
      const size_t size = std::min<size_t>(
          left, std::uniform_int_distribution<size_t>(1, 40 * kA)(rng));
      auto off = arena->Allocate(size);
      ASSERT_TRUE(off.ok()) << off.status();
      offs.push_back(*off);
      left -= DramArena::Footprint(size);
    }
    ASSERT_EQ(arena->allocated_bytes(), arena->capacity());
    EXPECT_EQ(arena->largest_free_range(), 0u);
    std::shuffle(offs.begin(), offs.end(), rng);
    for (uint64_t off : offs) arena->Free(off);
    EXPECT_EQ(arena->allocated_bytes(), 0u);
    EXPECT_EQ(arena->largest_free_range(), arena->capacity());
    auto whole = arena->Allocate(arena->capacity());
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_EQ(*whole, 0u);
    arena->Free(*whole);
  }
}

TEST(DramArenaTest, AllocatedBytesAndLargestFreeRangeTrackExactly) {
  auto arena = MakeArena(100 * kA);
  ASSERT_NE(arena, nullptr);
  auto a = arena->Allocate(10 * kA);  // [0, 10)
  auto b = arena->Allocate(1);        // [10, 11), footprint one granule
  auto c = arena->Allocate(30 * kA);  // [11, 41)
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(arena->allocated_bytes(), 41 * kA);
  EXPECT_EQ(arena->largest_free_range(), 59 * kA);
  arena->Free(*a);
  EXPECT_EQ(arena->allocated_bytes(), 31 * kA);
  EXPECT_EQ(arena->largest_free_range(), 59 * kA);
  arena->Free(*c);  // Merges with the tail: [11, 100) is free.
  EXPECT_EQ(arena->allocated_bytes(), 1 * kA);
  EXPECT_EQ(arena->largest_free_range(), 89 * kA);
  arena->Free(*b);  // Merges everything.
  EXPECT_EQ(arena->allocated_bytes(), 0u);
  EXPECT_EQ(arena->largest_free_range(), 100 * kA);
}

TEST(DramArenaTest, LargestFreeRangeIsExactlyWhatOneAllocateCanSatisfy) {
  const uint64_t seed = TestSeed("LargestFreeRange");
  std::mt19937_64 rng(seed);
  auto arena = MakeArena(4 * kMiB + 7 * kA);
  ASSERT_NE(arena, nullptr);
  std::vector<uint64_t> live;
  for (int step = 0; step < 3000; ++step) {
    const size_t largest = arena->largest_free_range();
    auto over = arena->Allocate(largest + 1);
    ASSERT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted)
        << "step " << step << ": largest_free_range " << largest;
    if (largest > 0) {
      auto max = arena->Allocate(largest);
      ASSERT_TRUE(max.ok()) << "step " << step << ": " << max.status();
      arena->Free(*max);
      // Never shrinks; may grow when the freed range goes back behind a
      // larger block of its size class that is now that class's head.
      ASSERT_GE(arena->largest_free_range(), largest) << "step " << step;
    }
    if (live.empty() || rng() % 5 < 3) {
      const size_t size =
          std::uniform_int_distribution<size_t>(1, 64 * kA)(rng);
      auto off = arena->Allocate(size);
      if (off.ok()) live.push_back(*off);
    } else {
      const size_t i = rng() % live.size();
      arena->Free(live[i]);
      live[i] = live.back();
      live.pop_back();
    }
  }
  for (uint64_t off : live) arena->Free(off);
  EXPECT_EQ(arena->largest_free_range(), arena->capacity());
}

TEST(DramArenaTest, RandomWorkloadKeepsRangesDisjointAndRecoversCapacity) {
  const uint64_t seed = TestSeed("RandomWorkload");
  std::mt19937_64 rng(seed);
  auto arena = MakeArena(64 * kMiB);
  ASSERT_NE(arena, nullptr);
  LiveSet live(arena->capacity());
  struct Alloc {
    uint64_t off;
    size_t size;
    uint64_t tag;
  };
  std::vector<Alloc> allocs;
  std::uniform_int_distribution<size_t> size_dist(1, 4 * kMiB);
  int exhausted = 0;
  for (int op = 0; op < 20000; ++op) {
    SCOPED_TRACE(testing::Message() << "seed " << seed << " op " << op);
    if (allocs.empty() || rng() % 2 == 0) {
      const size_t size = size_dist(rng);
      const bool fits =
          DramArena::Footprint(size) <= arena->largest_free_range();
      auto off = arena->Allocate(size);
      ASSERT_EQ(off.ok(), fits) << off.status();
      if (!off.ok()) {
        ASSERT_EQ(off.status().code(), absl::StatusCode::kResourceExhausted);
        ++exhausted;
        continue;
      }
      ASSERT_TRUE(live.Add(*off, DramArena::Footprint(size)));
      const uint64_t tag = rng() | 1;
      WritePattern(arena->base() + *off, size, tag);
      allocs.push_back({*off, size, tag});
    } else {
      const size_t i = rng() % allocs.size();
      const Alloc a = allocs[i];
      ASSERT_TRUE(PatternIntact(arena->base() + a.off, a.size, a.tag))
          << "allocation at " << a.off << " was overwritten";
      arena->Free(a.off);
      live.Remove(a.off);
      allocs[i] = allocs.back();
      allocs.pop_back();
    }
    ASSERT_EQ(arena->allocated_bytes(), live.total());
    ASSERT_LE(arena->allocated_bytes(), arena->capacity());
  }
  std::cout << "[          ] " << exhausted
            << " allocations hit RESOURCE_EXHAUSTED" << std::endl;
  for (const Alloc& a : allocs) {
    ASSERT_TRUE(PatternIntact(arena->base() + a.off, a.size, a.tag));
    arena->Free(a.off);
  }
  EXPECT_EQ(arena->allocated_bytes(), 0u);
  auto whole = arena->Allocate(arena->capacity());
  ASSERT_TRUE(whole.ok()) << whole.status();
  arena->Free(*whole);
}

TEST(DramArenaTest, FourThreadsAllocatingAndFreeingKeepRangesAndAccountingConsistent) {
  const uint64_t seed = TestSeed("Threads");
  auto arena = MakeArena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      std::vector<std::pair<uint64_t, size_t>> mine;
      const uint64_t tag = 0x5eed0000ull + t;
      for (int i = 0; i < 20000; ++i) {
        if (mine.size() < 8 && (mine.empty() || rng() % 2 == 0)) {
          const size_t size = 1 + rng() % (64 * 1024);
          auto off = arena->Allocate(size);
          if (!off.ok()) {  // 4 * 8 * 64 KiB never fills 16 MiB.
            failures.fetch_add(1);
            continue;
          }
          WritePattern(arena->base() + *off, size, tag);
          mine.emplace_back(*off, size);
        } else {
          const size_t j = rng() % mine.size();
          if (!PatternIntact(arena->base() + mine[j].first, mine[j].second,
                             tag)) {
            failures.fetch_add(1);
          }
          arena->Free(mine[j].first);
          mine[j] = mine.back();
          mine.pop_back();
        }
        if (arena->allocated_bytes() > arena->capacity()) failures.fetch_add(1);
      }
      for (const auto& [off, size] : mine) arena->Free(off);
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(arena->allocated_bytes(), 0u);
  EXPECT_EQ(arena->largest_free_range(), arena->capacity());
}

TEST(DramArenaDeathTest, FreeOfNeverAllocatedOffsetAborts) {
  auto arena = MakeArena(16 * kA);
  ASSERT_NE(arena, nullptr);
  auto off = arena->Allocate(4 * kA);
  ASSERT_TRUE(off.ok());
  EXPECT_DEATH(arena->Free(*off + kA), "not an allocated range");  // Interior.
  EXPECT_DEATH(arena->Free(4 * kA), "not an allocated range");  // Free block.
  EXPECT_DEATH(arena->Free(3), "not an allocated range");       // Misaligned.
  EXPECT_DEATH(arena->Free(64 * kA), "not an allocated range");  // Outside.
  arena->Free(*off);
}

TEST(DramArenaDeathTest, DoubleFreeAborts) {
  auto arena = MakeArena(16 * kA);
  ASSERT_NE(arena, nullptr);
  auto a = arena->Allocate(kA);
  auto b = arena->Allocate(kA);  // Keeps `a` from merging away.
  ASSERT_TRUE(a.ok() && b.ok());
  arena->Free(*a);
  EXPECT_DEATH(arena->Free(*a), "already freed");
  arena->Free(*b);
}

}  // namespace
}  // namespace strata::kvstore
