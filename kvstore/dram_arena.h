// DramArena: a preallocated host-memory region with an O(1) allocator.
//
// The arena reserves and pre-faults its whole capacity once, at Create(), and
// never grows: its size is the DRAM tier's hard byte capacity. Allocation is a
// two-level segregated fit (TLSF): free ranges live in per-size-class lists
// indexed by two bitmaps, so Allocate and Free are O(1) (a constant number of
// bit scans and list operations) and free neighbours coalesce immediately.
// Allocator metadata lives outside the arena, so a stray write into block
// bytes can never corrupt the allocator.
//
// Registration is separate from allocation: base() and capacity() describe one
// contiguous range that a GPU runtime may page-lock (cudaHostRegister) after
// Create() without the arena knowing.
//
// Thread safety: all methods are thread-safe (one internal mutex; each call
// holds it for O(1) work). Memory returned by Allocate may be read and written
// by any thread without the lock.
#ifndef STRATA_KVSTORE_DRAM_ARENA_H_
#define STRATA_KVSTORE_DRAM_ARENA_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"

namespace strata::kvstore {

class DramArena {
 public:
  // Every allocation starts at a multiple of kAlignment bytes from base() and
  // its footprint is rounded up to a multiple of kAlignment.
  static constexpr size_t kAlignment = 256;

  // Reserves `capacity_bytes` (rounded down to kAlignment) of memory
  // starting on a 2 MiB boundary, asks for transparent huge pages
  // (STRATA_ARENA_HUGE_PAGES=0: not) and pre-faults it. Anonymous memory, or
  // with `shared` a memfd (shared_fd()) that other processes may map: the
  // socket plane's local connections read and write blocks in place through
  // it (docs/protocol.md, "Local connections"); its memory is allocated at
  // Create and mapped in by a background thread. INVALID_ARGUMENT
  // naming "capacity_bytes" when it is smaller than kAlignment or larger than
  // 2^46; RESOURCE_EXHAUSTED naming "dram arena" when the OS refuses the
  // mapping or its pages.
  static absl::StatusOr<std::unique_ptr<DramArena>> Create(
      size_t capacity_bytes, bool shared = false);

  ~DramArena();  // Unmaps the region; all allocations must be freed first.
  DramArena(const DramArena&) = delete;
  DramArena& operator=(const DramArena&) = delete;

  // Returns the offset from base() of a range of at least `size` bytes, or
  // RESOURCE_EXHAUSTED when no free range is large enough (the caller evicts
  // and retries). INVALID_ARGUMENT naming "size" when size == 0.
  absl::StatusOr<uint64_t> Allocate(size_t size);

  // Returns a range obtained from Allocate. Freeing anything else, or freeing
  // twice, is a programming error and aborts.
  void Free(uint64_t offset);

  uint8_t* base() const { return base_; }
  size_t capacity() const { return capacity_; }
  // The memfd behind a shared arena (owned by the arena: dup it to keep it
  // past the arena's life; mapping it from offset 0 gives base()'s bytes);
  // -1 when the arena is private.
  int shared_fd() const { return shared_fd_; }
  // Bytes currently allocated, counting rounding to kAlignment.
  size_t allocated_bytes() const;
  // How many Free calls have returned; only grows.
  uint64_t free_count() const;
  // The footprint Allocate(size) would consume (size rounded up).
  static size_t Footprint(size_t size);
  // Largest size a single Allocate could satisfy right now.
  size_t largest_free_range() const;

 private:
  class Impl;
  DramArena(uint8_t* base, size_t capacity, int shared_fd,
            std::unique_ptr<Impl> impl);

  uint8_t* const base_;
  const size_t capacity_;
  const int shared_fd_;
  std::unique_ptr<Impl> impl_;
  // Shared arenas: maps the pages in after Create (see MapPrefaulted).
  std::atomic<bool> stop_populate_{false};
  std::thread populate_;
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_DRAM_ARENA_H_
