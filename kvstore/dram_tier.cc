#include "kvstore/dram_tier.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvstore/block_format.h"

namespace strata::kvstore {

const char* TierName(TierKind kind) {
  switch (kind) {
    case TierKind::kHbm:
      return "hbm";
    case TierKind::kDram:
      return "dram";
    case TierKind::kSsd:
      return "ssd";
  }
  return "unknown";
}

// One arena range holding one block. Frees the range when the last reference
// (index entry or reader) drops.
struct DramTier::Allocation {
  Allocation(std::shared_ptr<DramArena> a, uint64_t off, uint64_t n)
      : arena(std::move(a)), offset(off), size(n) {}
  ~Allocation() { arena->Free(offset); }
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;

  uint8_t* data() const { return arena->base() + offset; }

  const std::shared_ptr<DramArena> arena;
  const uint64_t offset;
  const uint64_t size;
};

absl::StatusOr<std::unique_ptr<DramTier>> DramTier::Create(
    uint64_t capacity_bytes, bool shared) {
  auto arena = DramArena::Create(capacity_bytes, shared);
  if (!arena.ok()) {
    return absl::Status(arena.status().code(),
                        absl::StrCat("dram_capacity_bytes: ",
                                     arena.status().message()));
  }
  return std::unique_ptr<DramTier>(
      new DramTier(std::shared_ptr<DramArena>(std::move(*arena))));
}

DramTier::DramTier(std::shared_ptr<DramArena> arena)
    : arena_(std::move(arena)) {}

DramTier::~DramTier() = default;

uint64_t DramTier::capacity_bytes() const { return arena_->capacity(); }
uint64_t DramTier::used_bytes() const { return arena_->allocated_bytes(); }
uint64_t DramTier::release_count() const { return arena_->free_count(); }
uint64_t DramTier::Charge(uint64_t block_size) const {
  return DramArena::Footprint(block_size);
}

absl::Status DramTier::Write(const BlockKey& key,
                             absl::Span<const uint8_t> block,
                             const BlockMeta& /*meta: the store indexes it*/) {
  {
    absl::MutexLock lock(&mu_);
    if (blocks_.contains(key)) {
      return absl::FailedPreconditionError(
          absl::StrCat("key: ", key.ToHex(), " is already in the dram tier"));
    }
  }
  STRATA_ASSIGN_OR_RETURN(uint64_t offset, arena_->Allocate(block.size()));
  auto allocation =
      std::make_shared<const Allocation>(arena_, offset, block.size());
  // Copy and verify in one pass: the hash reads what the copy just wrote.
  STRATA_RETURN_IF_ERROR(
      CopyVerifiedBlock(block, absl::MakeSpan(allocation->data(), block.size()),
                        CopyDestination::kStored)
          .status());
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = blocks_.emplace(key, std::move(allocation));
  if (!inserted) {
    return absl::FailedPreconditionError(
        absl::StrCat("key: ", key.ToHex(), " is already in the dram tier"));
  }
  return absl::OkStatus();
}

uint8_t* DramTier::Reservation::data() const {
  return allocation_ == nullptr ? nullptr : allocation_->data();
}

size_t DramTier::Reservation::size() const {
  return allocation_ == nullptr ? 0 : allocation_->size;
}

absl::StatusOr<DramTier::Reservation> DramTier::Reserve(size_t size) {
  STRATA_ASSIGN_OR_RETURN(uint64_t offset, arena_->Allocate(size));
  Reservation r;
  r.allocation_ = std::make_shared<const Allocation>(arena_, offset, size);
  return r;
}

absl::Status DramTier::Insert(const BlockKey& key, Reservation reservation) {
  absl::MutexLock lock(&mu_);
  // try_emplace leaves the reservation untouched when the key exists; it is
  // then freed when `reservation` goes out of scope.
  auto [it, inserted] =
      blocks_.try_emplace(key, std::move(reservation.allocation_));
  if (!inserted) {
    return absl::FailedPreconditionError(
        absl::StrCat("key: ", key.ToHex(), " is already in the dram tier"));
  }
  return absl::OkStatus();
}

absl::StatusOr<BlockBytes> DramTier::Read(const BlockKey& key) {
  std::shared_ptr<const Allocation> allocation;
  {
    absl::MutexLock lock(&mu_);
    auto it = blocks_.find(key);
    if (it == blocks_.end()) {
      return absl::NotFoundError(
          absl::StrCat("key: ", key.ToHex(), " is not in the dram tier"));
    }
    allocation = it->second;
  }
  absl::Span<const uint8_t> bytes(allocation->data(), allocation->size);
  return BlockBytes{std::move(allocation), bytes};
}

absl::Status DramTier::Erase(const BlockKey& key) {
  std::shared_ptr<const Allocation> dropped;  // Freed outside the lock.
  absl::MutexLock lock(&mu_);
  auto it = blocks_.find(key);
  if (it != blocks_.end()) {
    dropped = std::move(it->second);
    blocks_.erase(it);
  }
  return absl::OkStatus();
}

}  // namespace strata::kvstore
