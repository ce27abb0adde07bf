// DramArena: an mmap'd host region plus a TLSF allocator whose metadata lives
// outside the region.
//
// Units: the allocator works in granules of kAlignment bytes; every offset and
// size below is in granules unless a name ends in `_bytes`.
//
// Invariants (all under mu_):
//  * blocks_ holds exactly one Block per physical block; the blocks tile
//    [0, capacity) without gaps, each key is the block's start, and a block's
//    physical successor starts at key + size (none at the end of the arena).
//  * prev_phys is the start of the physical predecessor (kNil for block 0).
//  * No two physically adjacent blocks are both free (coalescing is eager).
//  * A free block is in exactly one free list, heads_[fl][sl] with
//    (fl, sl) = Mapping(size); allocated blocks are in none.
//  * Bit sl of sl_bitmap_[fl] is set iff heads_[fl][sl] is non-empty; bit fl
//    of fl_bitmap_ is set iff sl_bitmap_[fl] != 0.
//  * allocated_ is the sum of the sizes of the allocated blocks.
//  * A free block joins its list at the front if it is at least as large as
//    the head, else second, so a head is never smaller than a block inserted
//    while it was head. largest_free_range() reports the head of the highest
//    non-empty class: exactly the largest size Allocate can satisfy (see
//    below), though a block behind it in that class may be up to one class
//    width (1/16 of its size) larger until it becomes head.
//
// Allocate first searches from Mapping(size rounded up to the next class
// boundary), so any block found fits (good fit, two bit scans). If that finds
// nothing it checks the head of the request's own class, which is O(1) and
// makes the whole free range allocatable when it is not a class boundary.
#include "kvstore/dram_arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/huge_pages.h"
#include "common/sealed_memfd.h"

namespace strata::kvstore {
namespace {

constexpr uint64_t kMaxCapacityBytes = uint64_t{1} << 46;
constexpr uint64_t kMaxGranules = kMaxCapacityBytes / DramArena::kAlignment;
constexpr int kSlLog2 = 4;                 // 16 second-level classes.
constexpr uint64_t kSlCount = 1u << kSlLog2;
// Highest first-level index is floor(log2(kMaxGranules)) - kSlLog2 + 1.
constexpr int kFlCount = std::bit_width(kMaxGranules) - kSlLog2 + 1;
static_assert(kFlCount <= 64, "first-level bitmap is one uint64_t");
constexpr uint64_t kNil = ~uint64_t{0};

struct Class {
  int fl;
  int sl;
};

// Sizes below kSlCount granules get an exact class each (fl 0). Larger sizes
// n in [2^t, 2^(t+1)) get fl = t - kSlLog2 + 1 and one of kSlCount equal
// subdivisions of that power-of-two range.
Class Mapping(uint64_t n) {
  if (n < kSlCount) return {0, static_cast<int>(n)};
  const int t = std::bit_width(n) - 1;
  return {t - kSlLog2 + 1,
          static_cast<int>((n >> (t - kSlLog2)) - kSlCount)};
}

// The class from which every block is at least n granules.
Class MappingSearch(uint64_t n) {
  if (n >= kSlCount) {
    const int t = std::bit_width(n) - 1;
    n += (uint64_t{1} << (t - kSlLog2)) - 1;  // n <= 2^38: cannot overflow.
  }
  return Mapping(n);
}

}  // namespace

class DramArena::Impl {
 public:
  explicit Impl(uint64_t capacity_granules) : capacity_(capacity_granules) {
    for (auto& row : heads_) {
      for (uint64_t& head : row) head = kNil;
    }
    Block& whole = blocks_[0];
    whole.size = capacity_;
    whole.prev_phys = kNil;
    InsertFree(0, whole);
  }

  // `n` is a footprint in granules, 1 <= n <= capacity.
  absl::StatusOr<uint64_t> Allocate(uint64_t n) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    uint64_t off = FindSuitable(MappingSearch(n));
    if (off == kNil) {
      const Class c = Mapping(n);
      const uint64_t head = heads_[c.fl][c.sl];
      if (head != kNil && Get(head).size >= n) off = head;
    }
    if (off == kNil) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "dram arena: no free range of ", n * kAlignment,
          " bytes (allocated ", allocated_ * kAlignment, " of ",
          capacity_ * kAlignment, ")"));
    }
    Block& block = Get(off);
    RemoveFree(off, block);
    block.free = false;
    const uint64_t rest_size = block.size - n;
    if (rest_size > 0) {
      block.size = n;
      const uint64_t rest = off + n;
      const uint64_t after = rest + rest_size;
      if (after < capacity_) Get(after).prev_phys = rest;
      // May rehash: `block` is not used past this point.
      Block& rest_block = blocks_[rest];
      rest_block.size = rest_size;
      rest_block.prev_phys = off;
      // Its successor is allocated (no adjacent free blocks), so no merge.
      InsertFree(rest, rest_block);
    }
    allocated_ += n;
    return off;
  }

  void Free(uint64_t off) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = blocks_.find(off);
    if (it == blocks_.end() || it->second.free) {
      ABSL_RAW_LOG(FATAL,
                   "DramArena::Free: offset %llu bytes is not an allocated "
                   "range (never allocated, or already freed)",
                   static_cast<unsigned long long>(off * kAlignment));
    }
    Block* block = &it->second;
    allocated_ -= block->size;
    ++frees_;

    // Merge with the physical successor. Erasing from a flat_hash_map never
    // moves the other elements, so `block` stays valid.
    const uint64_t next = off + block->size;
    if (next < capacity_) {
      auto next_it = blocks_.find(next);
      Block& next_block = next_it->second;
      if (next_block.free) {
        RemoveFree(next, next_block);
        block->size += next_block.size;
        blocks_.erase(next_it);
        const uint64_t after = off + block->size;
        if (after < capacity_) Get(after).prev_phys = off;
      }
    }
    // Merge into the physical predecessor.
    if (block->prev_phys != kNil) {
      const uint64_t prev = block->prev_phys;
      Block& prev_block = Get(prev);
      if (prev_block.free) {
        RemoveFree(prev, prev_block);
        prev_block.size += block->size;
        blocks_.erase(off);
        off = prev;
        block = &prev_block;
        const uint64_t after = off + block->size;
        if (after < capacity_) Get(after).prev_phys = off;
      }
    }
    InsertFree(off, *block);
  }

  uint64_t allocated() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return allocated_;
  }

  uint64_t frees() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return frees_;
  }

  uint64_t largest_free() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (fl_bitmap_ == 0) return 0;
    const int fl = std::bit_width(fl_bitmap_) - 1;
    const int sl = std::bit_width(sl_bitmap_[fl]) - 1;
    return blocks_.find(heads_[fl][sl])->second.size;
  }

 private:
  struct Block {
    uint64_t size = 0;          // Granules.
    uint64_t prev_phys = kNil;  // Start of the physical predecessor.
    uint64_t prev_free = kNil;  // Free-list links (meaningful when free).
    uint64_t next_free = kNil;
    bool free = false;
  };

  Block& Get(uint64_t off) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = blocks_.find(off);
    ABSL_RAW_CHECK(it != blocks_.end(), "DramArena: allocator metadata lost");
    return it->second;
  }

  // Head of the first non-empty class at or above `c`, or kNil.
  uint64_t FindSuitable(Class c) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (c.fl >= kFlCount) return kNil;
    uint32_t sl_map = sl_bitmap_[c.fl] & (~uint32_t{0} << c.sl);
    int fl = c.fl;
    if (sl_map == 0) {
      if (fl + 1 >= kFlCount) return kNil;
      const uint64_t fl_map = fl_bitmap_ & (~uint64_t{0} << (fl + 1));
      if (fl_map == 0) return kNil;
      fl = std::countr_zero(fl_map);
      sl_map = sl_bitmap_[fl];
    }
    return heads_[fl][std::countr_zero(sl_map)];
  }

  void InsertFree(uint64_t off, Block& block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Class c = Mapping(block.size);
    uint64_t& head = heads_[c.fl][c.sl];
    block.free = true;
    if (head == kNil) {
      block.prev_free = block.next_free = kNil;
      head = off;
      sl_bitmap_[c.fl] |= uint32_t{1} << c.sl;
      fl_bitmap_ |= uint64_t{1} << c.fl;
      return;
    }
    Block& head_block = Get(head);
    if (block.size >= head_block.size) {  // New head.
      block.prev_free = kNil;
      block.next_free = head;
      head_block.prev_free = off;
      head = off;
    } else {  // Second, keeping the larger head.
      block.prev_free = head;
      block.next_free = head_block.next_free;
      if (head_block.next_free != kNil) {
        Get(head_block.next_free).prev_free = off;
      }
      head_block.next_free = off;
    }
  }

  void RemoveFree(uint64_t off, Block& block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Class c = Mapping(block.size);
    if (block.prev_free != kNil) {
      Get(block.prev_free).next_free = block.next_free;
    } else {
      heads_[c.fl][c.sl] = block.next_free;
    }
    if (block.next_free != kNil) {
      Get(block.next_free).prev_free = block.prev_free;
    }
    block.prev_free = block.next_free = kNil;
    block.free = false;
    if (heads_[c.fl][c.sl] == kNil) {
      sl_bitmap_[c.fl] &= ~(uint32_t{1} << c.sl);
      if (sl_bitmap_[c.fl] == 0) fl_bitmap_ &= ~(uint64_t{1} << c.fl);
    }
  }

  const uint64_t capacity_;  // Granules.
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Block> blocks_ ABSL_GUARDED_BY(mu_);
  uint64_t heads_[kFlCount][kSlCount] ABSL_GUARDED_BY(mu_);
  uint32_t sl_bitmap_[kFlCount] ABSL_GUARDED_BY(mu_) = {};
  uint64_t fl_bitmap_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t allocated_ ABSL_GUARDED_BY(mu_) = 0;  // Granules.
  uint64_t frees_ ABSL_GUARDED_BY(mu_) = 0;      // Free calls so far.
};

namespace {

#ifndef MADV_POPULATE_WRITE  // Headers older than Linux 5.14's.
#define MADV_POPULATE_WRITE 23
#endif

constexpr size_t kPageBytes = 4096;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Maps `capacity` bytes starting at a 2 MiB boundary, asks for transparent
// huge pages (honoured when the kernel's THP mode is "madvise" or "always";
// a shared arena's pages are allocated by fallocate, before any mapping
// asks, so they are huge only when its shmem_enabled mode is "always" or
// "within_size"; 4 KiB pages otherwise) and pre-faults all of it. Huge pages
// make the pre-fault several times cheaper and spare block copies into and
// out of the arena most of their TLB misses.
//
// Private arenas are anonymous memory. A shared arena is a memfd mapped
// MAP_SHARED, returned in `*shared_fd` (close-on-exec), which a local client
// may map too (the socket plane's local connections, docs/protocol.md). Its
// pages are allocated here (fallocate: the memory is the arena's from the
// start), but mapped in by DramArena's populate thread: page by page, shared
// memory without huge pages took 4-6 s for 3 GiB on the dev VM, against
// 0.7 s for the allocation.
absl::StatusOr<uint8_t*> MapPrefaulted(size_t capacity, bool shared,
                                       int* shared_fd) {
  *shared_fd = -1;
  const size_t bytes = RoundUp(capacity, kPageBytes);
  const size_t span = bytes + kHugePageBytes;
  auto fail = [&](const char* what, int err) {
    return absl::ResourceExhaustedError(
        absl::StrCat("dram arena: ", what, " of ", capacity,
                     " bytes failed: ", std::strerror(err)));
  };
  int fd = -1;
  if (shared) {
    // Sealed at its size: a client that maps it cannot shrink it under the
    // daemon.
    fd = SealedMemfd("strata-dram-arena", bytes);
    if (fd < 0) return fail("creating the shared memory", errno);
    if (fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0) {
      const int err = errno;
      close(fd);
      return fail("allocating the shared memory", err);
    }
  }
  // Reserve an aligned window first, then map the memory at its start.
  void* raw = mmap(nullptr, span, shared ? PROT_NONE : PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | (shared ? MAP_NORESERVE : 0),
                   -1, 0);
  if (raw == MAP_FAILED) {
    const int err = errno;
    if (fd >= 0) close(fd);
    return fail("mmap", err);
  }
  // Keep exactly [base, base + bytes), 2 MiB aligned.
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t base = RoundUp(start, kHugePageBytes);
  const uintptr_t end = base + bytes;
  if (base > start) munmap(raw, base - start);
  if (start + span > end) munmap(reinterpret_cast<void*>(end), start + span - end);
  auto* mem = reinterpret_cast<uint8_t*>(base);
  if (shared &&
      mmap(mem, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) ==
          MAP_FAILED) {
    const int err = errno;
    munmap(mem, bytes);
    close(fd);
    return fail("mapping the shared memory file", err);
  }
  AdviseHugePages(mem, bytes, "STRATA_ARENA_HUGE_PAGES");
  *shared_fd = fd;
  if (shared) return mem;  // Mapped in by the populate thread.
  if (madvise(mem, bytes, MADV_POPULATE_WRITE) != 0) {
    const int err = errno;
    if (err != EINVAL) {  // EINVAL: a kernel before 5.14; touch it instead.
      munmap(mem, bytes);
      return fail("pre-faulting", err);
    }
    for (uintptr_t p = base; p < end; p += kPageBytes) {
      *reinterpret_cast<volatile uint8_t*>(p) = 0;
    }
  }
  return mem;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DramArena>> DramArena::Create(
    size_t capacity_bytes, bool shared) {
  if (capacity_bytes < kAlignment) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity_bytes: must be at least ", kAlignment,
                     " bytes, got ", capacity_bytes));
  }
  if (capacity_bytes > kMaxCapacityBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity_bytes: must be at most 2^46 bytes, got ",
                     capacity_bytes));
  }
  const size_t capacity = capacity_bytes / kAlignment * kAlignment;
  int shared_fd = -1;
  auto mem = MapPrefaulted(capacity, shared, &shared_fd);
  if (!mem.ok()) return mem.status();
  auto impl = std::make_unique<Impl>(capacity / kAlignment);
  return std::unique_ptr<DramArena>(
      new DramArena(*mem, capacity, shared_fd, std::move(impl)));
}

DramArena::DramArena(uint8_t* base, size_t capacity, int shared_fd,
                     std::unique_ptr<Impl> impl)
    : base_(base),
      capacity_(capacity),
      shared_fd_(shared_fd),
      impl_(std::move(impl)) {
  if (shared_fd_ >= 0) {
    // Maps the shared arena's pages in, 64 MiB at a time, so block copies
    // into and out of it seldom fault; a copy that comes first faults its
    // pages in itself (the memory is already allocated).
    populate_ = std::thread([this] {
      const size_t bytes = RoundUp(capacity_, kPageBytes);
      constexpr size_t kStep = size_t{64} << 20;
      for (size_t at = 0; at < bytes && !stop_populate_.load(); at += kStep) {
        madvise(base_ + at, std::min(kStep, bytes - at), MADV_POPULATE_WRITE);
      }
    });
  }
}

DramArena::~DramArena() {
  if (impl_->allocated() != 0) {
    ABSL_RAW_LOG(WARNING, "DramArena destroyed with %llu bytes still allocated",
                 static_cast<unsigned long long>(allocated_bytes()));
  }
  stop_populate_.store(true);
  if (populate_.joinable()) populate_.join();
  munmap(base_, RoundUp(capacity_, kPageBytes));
  if (shared_fd_ >= 0) close(shared_fd_);
}

absl::StatusOr<uint64_t> DramArena::Allocate(size_t size) {
  if (size == 0) return absl::InvalidArgumentError("size: must be > 0");
  if (size > capacity_) {  // Also keeps the rounding below from overflowing.
    return absl::ResourceExhaustedError(absl::StrCat(
        "dram arena: no free range of ", size, " bytes (allocated ",
        allocated_bytes(), " of ", capacity_, ")"));
  }
  absl::StatusOr<uint64_t> granule = impl_->Allocate(Footprint(size) /
                                                     kAlignment);
  if (!granule.ok()) return granule.status();
  return *granule * kAlignment;
}

void DramArena::Free(uint64_t offset) {
  if (offset % kAlignment != 0 || offset >= capacity_) {
    ABSL_RAW_LOG(FATAL,
                 "DramArena::Free: offset %llu bytes is not an allocated range "
                 "(misaligned or outside capacity %llu)",
                 static_cast<unsigned long long>(offset),
                 static_cast<unsigned long long>(capacity_));
  }
  impl_->Free(offset / kAlignment);
}

size_t DramArena::allocated_bytes() const {
  return impl_->allocated() * kAlignment;
}

uint64_t DramArena::free_count() const { return impl_->frees(); }

size_t DramArena::Footprint(size_t size) {
  const size_t granules = size / kAlignment + (size % kAlignment != 0);
  // Saturates for sizes within kAlignment of SIZE_MAX instead of wrapping.
  if (granules > ~size_t{0} / kAlignment) return ~size_t{0};
  return granules * kAlignment;
}

size_t DramArena::largest_free_range() const {
  return impl_->largest_free() * kAlignment;
}

}  // namespace strata::kvstore
