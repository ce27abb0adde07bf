// TieredStore::Reserve / Commit: receiving a block in place in the DRAM
// arena (contract in tiered_store.h, above BlockReservation). Same
// invariants as tiered_store.cc: a reservation is an index entry whose only
// bits are `incoming` (DRAM, plus the persistent tier when durable), so
// readers do not see it, writers of the key back off, and eviction skips it.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvstore/block_format.h"
#include "kvstore/dram_tier.h"
#include "kvstore/tiered_store.h"
#include "kvstore/tiered_store_internal.h"

namespace strata::kvstore {

using tiered_store_internal::Bit;

BlockReservation::BlockReservation(BlockReservation&& other) noexcept {
  *this = std::move(other);
}

BlockReservation& BlockReservation::operator=(
    BlockReservation&& other) noexcept {
  if (this != &other) {
    Abort();
    store_ = std::exchange(other.store_, nullptr);
    key_ = other.key_;
    generation_ = other.generation_;
    range_ = std::move(other.range_);
    durable_ = other.durable_;
    meta_ = std::move(other.meta_);
    checksum_verified_ = other.checksum_verified_;
  }
  return *this;
}

absl::Status BlockReservation::CopyIn(absl::Span<const uint8_t> block) {
  checksum_verified_ = false;
  if (block.size() != range_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("block: ", block.size(), " bytes into a reservation of ",
                     range_.size()));
  }
  absl::Status s =
      CopyVerifiedBlock(block, data(), CopyDestination::kStored).status();
  checksum_verified_ = s.ok();
  return s;
}

absl::Status BlockReservation::FinishLandedCheck(
    StreamingBlockVerifier& verifier) {
  absl::Status s = verifier.Finish(data()).status();
  checksum_verified_ = s.ok();
  return s;
}

BlockReservation::~BlockReservation() { Abort(); }

void BlockReservation::Abort() {
  if (store_ != nullptr) store_->AbortReservation(*this, /*written=*/0);
}

absl::StatusOr<BlockReservation> TieredStore::Reserve(
    const BlockKey& key, uint64_t size, const PutOptions& options,
    const ReserveOptions& reserve) {
  return ClaimAndReserve(key, size, options, reserve, nullptr);
}

absl::StatusOr<BlockReservation> TieredStore::ReserveInto(
    const BlockKey& key, ArenaSpace& space, const PutOptions& options) {
  if (!space.active()) {
    return absl::FailedPreconditionError("space: not active (already used)");
  }
  return ClaimAndReserve(key, space.range_.size(), options, {}, &space);
}

absl::Status TieredStore::CheckReserveSize(uint64_t size) const {
  if (size > options_.max_block_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("block: ", size, " bytes exceed max_block_bytes ",
                     options_.max_block_bytes));
  }
  if (size < kBlockHeaderSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("size: ", size, " bytes cannot hold the ",
                     kBlockHeaderSize, "-byte block header"));
  }
  return absl::OkStatus();
}

absl::Status TieredStore::CheckFitsDram(uint64_t size) const {
  const TierSlot& dram = *tiers_[0];
  if (dram.tier->Charge(size) > dram.tier->capacity_bytes()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "block: ", size, " bytes exceed the dram tier capacity ",
        dram.tier->capacity_bytes()));
  }
  return absl::OkStatus();
}

absl::StatusOr<DramTier::Reservation> TieredStore::ReserveRange(
    uint64_t size, const ReserveOptions& reserve) {
  TierSlot& dram = *tiers_[0];
  const uint64_t charge = dram.tier->Charge(size);
  auto* dram_tier = static_cast<DramTier*>(dram.tier.get());
  int rounds = 0;
  for (;;) {
    const uint64_t releases = dram.tier->release_count();
    absl::StatusOr<DramTier::Reservation> range = dram_tier->Reserve(size);
    if (range.ok() || !absl::IsResourceExhausted(range.status()) ||
        !reserve.may_evict) {
      return range;
    }
    if (!MakeRoomForRetry(0, charge, releases, rounds)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "dram tier: no room for a ", size,
          "-byte block after evicting everything evictable (",
          dram.tier->used_bytes(), " of ", dram.tier->capacity_bytes(),
          " bytes held by pinned, leased or in-flight blocks)"));
    }
  }
}

absl::StatusOr<ArenaSpace> TieredStore::ReserveSpace(
    uint64_t size, const ReserveOptions& reserve) {
  STRATA_RETURN_IF_ERROR(CheckReserveSize(size));
  STRATA_RETURN_IF_ERROR(CheckFitsDram(size));
  ArenaSpace space;
  STRATA_ASSIGN_OR_RETURN(space.range_, ReserveRange(size, reserve));
  return space;
}

absl::StatusOr<BlockReservation> TieredStore::ClaimAndReserve(
    const BlockKey& key, uint64_t size, const PutOptions& options,
    const ReserveOptions& reserve, ArenaSpace* space) {
  auto reject = [&](absl::Status s) {
    absl::MutexLock lock(&mu_);
    ++counters_.rejected_puts;
    return s;
  };
  if (absl::Status s = CheckReserveSize(size); !s.ok()) return reject(s);
  if (options.tenant.size() > kMaxLabelBytes ||
      options.model.size() > kMaxLabelBytes) {
    return reject(absl::InvalidArgumentError(absl::StrCat(
        options.tenant.size() > kMaxLabelBytes ? "tenant" : "model",
        ": label longer than ", kMaxLabelBytes, " bytes")));
  }
  const bool durable = Durable(options);
  if (durable && persistent_tier_ == SIZE_MAX) {
    return reject(absl::FailedPreconditionError(
        "durable: no persistent tier is configured (set ssd_path)"));
  }
  STRATA_RETURN_IF_ERROR(CheckFitsDram(size));
  BlockReservation r;
  r.key_ = key;
  r.durable_ = durable;
  r.meta_ = BlockMeta{options.tenant, options.model,
                      absl::ToUnixMillis(clock_->Now())};
  const uint32_t claim =
      Bit(0) | (durable ? Bit(persistent_tier_) : uint32_t{0});
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = AwaitClaimable(key, options.in_flight_write_wait);
        !s.ok()) {
      if (absl::IsAlreadyExists(s)) ++counters_.duplicate_puts;
      return s;
    }
    Entry& e = index_[key];
    e.generation = r.generation_ = next_generation_++;
    e.size = size;
    e.incoming = claim;
    e.labels = InternLabels(r.meta_.tenant, r.meta_.model);
    e.stored_at_unix_ms = r.meta_.stored_at_unix_ms;
  }
  r.store_ = this;  // From here on, dropping `r` releases the key.
  if (space != nullptr) {
    r.range_ = std::move(space->range_);
    space->range_ = DramTier::Reservation();
    return r;
  }
  STRATA_ASSIGN_OR_RETURN(r.range_, ReserveRange(size, reserve));
  return r;
}

bool TieredStore::NeedsEviction() const {
  for (const auto& slot : tiers_) {
    if (slot->tier->used_bytes() > slot->high_bytes) return true;
  }
  return false;
}

void TieredStore::EvictToWatermarks() {
  for (size_t t = 0; t < tiers_.size(); ++t) MaybeEvict(t);
}

absl::Status TieredStore::Commit(BlockReservation r,
                                 const CommitOptions& commit) {
  if (!r.active() || r.store_ != this) {
    return absl::FailedPreconditionError(
        "reservation: not active (already committed or aborted, or another "
        "store's)");
  }
  const absl::Span<const uint8_t> block = r.data();
  // Header, length and checksum over the bytes where they lie (hashed
  // already when CopyIn put them there).
  if (absl::Status s = r.checksum_verified_ ? ValidateBlockFrame(block)
                                            : ParseBlock(block).status();
      !s.ok()) {
    AbortReservation(r, 0);
    absl::MutexLock lock(&mu_);
    ++counters_.rejected_puts;
    return s;
  }
  uint32_t written = 0;
  if (r.durable_) {
    absl::Status s = WriteIntoTier(persistent_tier_, r.key_, block, r.meta_);
    if (!s.ok()) {
      AbortReservation(r, 0);
      absl::MutexLock lock(&mu_);
      ++counters_.rejected_puts;
      return s;
    }
    written |= Bit(persistent_tier_);
  }
  auto* dram_tier = static_cast<DramTier*>(tiers_[0]->tier.get());
  // The incoming bit keeps every other writer of the key out of DRAM.
  if (absl::Status s = dram_tier->Insert(r.key_, std::move(r.range_));
      !s.ok()) {
    AbortReservation(r, written);
    absl::MutexLock lock(&mu_);
    ++counters_.rejected_puts;
    return s;
  }
  written |= Bit(0);
  {
    absl::MutexLock lock(&mu_);
    Entry& e = index_.at(r.key_);
    e.incoming = 0;
    e.resident = written;
    for (size_t t = 0; t < tiers_.size(); ++t) {
      if (written & Bit(t)) {
        tiers_[t]->policy->OnInsert(r.key_, e.size);
        ++tiers_[t]->stats.blocks;
      }
    }
    ++counters_.puts;
  }
  r.store_ = nullptr;  // Committed: nothing to abort.
  if (!commit.evict) return absl::OkStatus();
  for (size_t t = 0; t < tiers_.size(); ++t) {
    if (written & Bit(t)) MaybeEvict(t);
  }
  return absl::OkStatus();
}

void TieredStore::AbortReservation(BlockReservation& r, uint32_t written) {
  r.store_ = nullptr;
  r.range_ = DramTier::Reservation();  // Frees the arena range.
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(r.key_);
    if (it == index_.end() || it->second.generation != r.generation_) return;
    it->second.incoming = 0;
    it->second.erasing = written;
  }
  for (size_t t = 0; t < tiers_.size(); ++t) {
    if (written & Bit(t)) tiers_[t]->tier->Erase(r.key_).IgnoreError();
  }
  absl::MutexLock lock(&mu_);
  auto it = index_.find(r.key_);
  if (it != index_.end() && it->second.generation == r.generation_) {
    index_.erase(it);
  }
}

}  // namespace strata::kvstore
