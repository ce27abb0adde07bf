// DramTier: blocks in a preallocated host-memory arena (see dram_arena.h).
//
// Capacity is the arena size and is never exceeded: a Write that does not fit
// fails with RESOURCE_EXHAUSTED and the caller evicts. Erased blocks still
// referenced by a reader keep their arena range until the last BlockBytes
// drops, so those bytes stay charged (and valid) until then.
//
// Thread safety: thread-safe (see Tier).
#ifndef STRATA_KVSTORE_DRAM_TIER_H_
#define STRATA_KVSTORE_DRAM_TIER_H_

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "kvstore/dram_arena.h"
#include "kvstore/tier.h"

namespace strata::kvstore {

class DramTier final : public Tier {
 public:
  // INVALID_ARGUMENT naming "dram_capacity_bytes" for a bad capacity;
  // RESOURCE_EXHAUSTED if the memory cannot be reserved. `shared`: the
  // arena is a memfd other processes may map (DramArena::Create).
  static absl::StatusOr<std::unique_ptr<DramTier>> Create(
      uint64_t capacity_bytes, bool shared = false);
  ~DramTier() override;

  TierKind kind() const override { return TierKind::kDram; }
  bool persistent() const override { return false; }
  uint64_t capacity_bytes() const override;
  uint64_t used_bytes() const override;
  uint64_t release_count() const override;
  uint64_t Charge(uint64_t block_size) const override;
  // Write copies and hashes in one pass (CopyVerifiedBlock).
  bool verifies_writes() const override { return true; }

  absl::Status Write(const BlockKey& key, absl::Span<const uint8_t> block,
                     const BlockMeta& meta) override;
  absl::StatusOr<BlockBytes> Read(const BlockKey& key) override;
  absl::Status Erase(const BlockKey& key) override;
  absl::StatusOr<std::vector<StoredBlock>> ListBlocks() override {
    return std::vector<StoredBlock>{};
  }

  // The arena, for registering its memory with a GPU runtime.
  DramArena& arena() { return *arena_; }

 private:
  struct Allocation;

 public:
  // An arena range set aside for one block that the caller writes in place
  // (e.g. a network receive) before Insert makes it the key's block. Dropping
  // it un-inserted frees the range. The range is charged to used_bytes()
  // from Reserve on. Move-only; the bytes may be written from any thread.
  class Reservation {
   public:
    Reservation() = default;
    uint8_t* data() const;
    size_t size() const;
    explicit operator bool() const { return allocation_ != nullptr; }

   private:
    friend class DramTier;
    std::shared_ptr<const Allocation> allocation_;
  };

  // A range of `size` bytes. RESOURCE_EXHAUSTED when no free range is large
  // enough (the caller evicts and retries); INVALID_ARGUMENT naming "size"
  // for 0. Does not look at any key.
  absl::StatusOr<Reservation> Reserve(size_t size);
  // Makes the reserved bytes `key`'s block, as Write would (the caller has
  // verified them). FAILED_PRECONDITION when the key is already in the tier
  // (the reservation is dropped, freeing its range).
  absl::Status Insert(const BlockKey& key, Reservation reservation);

 private:
  explicit DramTier(std::shared_ptr<DramArena> arena);

  // Shared with every Allocation so the arena outlives late readers.
  const std::shared_ptr<DramArena> arena_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<BlockKey, std::shared_ptr<const Allocation>> blocks_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_DRAM_TIER_H_
