// TieredStore implementation.
//
// Invariants (all under mu_):
// - An index entry exists while any tier holds, is receiving, or is erasing a
//   copy of its key. `resident` bit t: tier t holds a complete copy that reads
//   may use, and tier t's policy tracks the key unless an eviction picked it.
//   `incoming` bit t: a copy is being written into tier t. `erasing` bit t: a
//   copy is being erased from tier t. A bit is in at most one of the masks.
// - A key is visible (Get/Exists/LongestPrefix) iff resident != 0.
// - Tier I/O never happens under mu_. Writers claim a tier with an incoming
//   bit first, so no two threads write the same key into the same tier, and
//   Put / Remove wait (mu_.Await) for in-flight erases / writes to finish.
#include "kvstore/tiered_store.h"

#include <algorithm>
#include <bit>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvstore/dram_tier.h"
#include "kvstore/ssd_tier.h"
#include "kvstore/tiered_store_internal.h"

namespace strata::kvstore {

namespace {

using tiered_store_internal::Bit;
constexpr int kMaxReadAttempts = 128;

}  // namespace

absl::Status TieredStoreOptions::Validate() const {
  if (dram_capacity_bytes == 0) {
    return absl::InvalidArgumentError("dram_capacity_bytes: must be > 0");
  }
  if (!ssd_path.empty() && ssd_capacity_bytes == 0) {
    return absl::InvalidArgumentError("ssd_capacity_bytes: must be > 0");
  }
  if (!(high_watermark > 0 && high_watermark <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("high_watermark: ", high_watermark, " not in (0, 1]"));
  }
  if (!(low_watermark > 0 && low_watermark <= high_watermark)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "low_watermark: ", low_watermark, " not in (0, high_watermark]"));
  }
  if (max_block_bytes <= kBlockHeaderSize) {
    return absl::InvalidArgumentError(
        "max_block_bytes: must exceed the block header size");
  }
  if (default_lease_ttl <= absl::ZeroDuration() ||
      default_lease_ttl > max_lease_ttl) {
    return absl::InvalidArgumentError(
        "default_lease_ttl: must be in (0, max_lease_ttl]");
  }
  if (max_pin_ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("max_pin_ttl: must be > 0");
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- BlockLease

BlockLease::BlockLease(BlockLease&& other) noexcept { *this = std::move(other); }

BlockLease& BlockLease::operator=(BlockLease&& other) noexcept {
  if (this != &other) {
    Release();
    store_ = std::exchange(other.store_, nullptr);
    key_ = other.key_;
    generation_ = other.generation_;
    bytes_ = std::move(other.bytes_);
    header_ = other.header_;
    served_from_ = other.served_from_;
  }
  return *this;
}

BlockLease::~BlockLease() { Release(); }

void BlockLease::Release() {
  if (store_ != nullptr) {
    store_->ReleaseLease(key_, generation_);
    store_ = nullptr;
  }
  bytes_ = BlockBytes{};
}

// ---------------------------------------------------------------- Open

TieredStore::TieredStore(const TieredStoreOptions& options)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()) {
  absl::MutexLock lock(&mu_);
  InternLabels("", "");  // Id 0: unlabelled.
}

uint32_t TieredStore::InternLabels(const std::string& tenant,
                                   const std::string& model) {
  auto [it, inserted] = label_ids_.try_emplace(
      std::make_pair(tenant, model), static_cast<uint32_t>(labels_.size()));
  if (inserted) labels_.emplace_back(tenant, model);
  return it->second;
}

absl::Status TieredStore::AwaitClaimable(const BlockKey& key,
                                         absl::Duration write_wait) {
  // Read the clock only when there is something to wait for.
  absl::Time write_wait_until = absl::InfinitePast();
  for (;;) {
    auto it = index_.find(key);
    if (it == index_.end()) return absl::OkStatus();
    if (it->second.resident != 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("key: ", key.ToHex(), " is already stored"));
    }
    if (it->second.incoming != 0) {
      // Another write is in flight: its outcome decides (stored, or failed
      // and rolled back).
      auto decided = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        auto i = index_.find(key);
        return i == index_.end() || i->second.resident != 0 ||
               i->second.incoming == 0;
      };
      if (write_wait_until == absl::InfinitePast()) {
        write_wait_until = absl::Now() + write_wait;
      }
      if (!mu_.AwaitWithDeadline(absl::Condition(&decided),
                                 write_wait_until)) {
        return absl::AbortedError(absl::StrCat(
            "key: ", key.ToHex(),
            " is being stored by another write still in flight"));
      }
      continue;
    }
    // An erase, or a failed write's roll-back, is in flight (the entry goes
    // once it ends): local and short, but it may be an SSD write. A caller
    // that must not block (zero write_wait) is told ABORTED, as for a write
    // in flight; others wait for the entry to go, or for a write that got
    // in first.
    if (write_wait <= absl::ZeroDuration()) {
      return absl::AbortedError(
          absl::StrCat("key: ", key.ToHex(), " is being erased; try again"));
    }
    auto gone = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto i = index_.find(key);
      return i == index_.end() || (i->second.resident | i->second.incoming);
    };
    mu_.Await(absl::Condition(&gone));
  }
}

BlockMeta TieredStore::MetaOf(const Entry& e) const {
  const auto& [tenant, model] = labels_[e.labels];
  return BlockMeta{tenant, model, e.stored_at_unix_ms};
}

TieredStore::~TieredStore() = default;

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Open(
    const TieredStoreOptions& options) {
  STRATA_RETURN_IF_ERROR(options.Validate());
  auto store = std::unique_ptr<TieredStore>(new TieredStore(options));
  auto add_tier = [&](std::unique_ptr<Tier> tier, EvictionPolicyKind policy) {
    auto slot = std::make_unique<TierSlot>();
    slot->stats.kind = tier->kind();
    const double cap = static_cast<double>(tier->capacity_bytes());
    slot->high_bytes = static_cast<uint64_t>(cap * options.high_watermark);
    slot->low_bytes = static_cast<uint64_t>(cap * options.low_watermark);
    slot->tier = std::move(tier);
    slot->policy = MakeEvictionPolicy(policy);
    store->tiers_.push_back(std::move(slot));
  };
  STRATA_ASSIGN_OR_RETURN(auto dram,
                          DramTier::Create(options.dram_capacity_bytes,
                                           options.dram_shared));
  add_tier(std::move(dram), options.dram_policy);
  if (!options.ssd_path.empty()) {
    SsdTierOptions ssd;
    ssd.path = options.ssd_path;
    ssd.capacity_bytes = options.ssd_capacity_bytes;
    ssd.sync_writes = options.ssd_sync_writes;
    ssd.file_system = options.ssd_file_system;
    STRATA_ASSIGN_OR_RETURN(auto ssd_tier, SsdTier::Open(ssd));
    store->persistent_tier_ = store->tiers_.size();
    add_tier(std::move(ssd_tier), options.ssd_policy);
  }
  STRATA_RETURN_IF_ERROR(store->Recover());
  return store;
}

absl::Status TieredStore::Recover() {
  for (size_t t = 0; t < tiers_.size(); ++t) {
    TierSlot& slot = *tiers_[t];
    if (!slot.tier->persistent()) continue;
    STRATA_ASSIGN_OR_RETURN(auto blocks, slot.tier->ListBlocks());
    absl::MutexLock lock(&mu_);
    for (const StoredBlock& b : blocks) {
      Entry& e = index_[b.key];
      if (e.generation == 0) {
        e.generation = next_generation_++;
        e.size = b.size;
        e.labels = InternLabels(b.meta.tenant, b.meta.model);
        e.stored_at_unix_ms = b.meta.stored_at_unix_ms;
      }
      e.resident |= Bit(t);
      slot.policy->OnInsert(b.key, b.size);
      ++slot.stats.blocks;
    }
  }
  for (size_t t = 0; t < tiers_.size(); ++t) MaybeEvict(t);
  return absl::OkStatus();
}

// ---------------------------------------------------------------- Eviction

bool TieredStore::Evictable(const Entry& e, absl::Time now) const {
  if (e.incoming != 0) return false;
  if (e.pinned_until > now) return false;
  if (e.leases > 0 && e.lease_until > now) return false;
  return true;
}

void TieredStore::MaybeEvict(size_t t) {
  TierSlot& slot = *tiers_[t];
  if (slot.tier->used_bytes() > slot.high_bytes) {
    EvictFromTier(t, slot.low_bytes);
  }
}

bool TieredStore::MakeRoomForRetry(size_t t, uint64_t charge,
                                   uint64_t releases_before, int& rounds) {
  // Each round frees at least `charge` more bytes (or everything
  // evictable), so a fragmented arena keeps evicting until a large enough
  // range coalesces.
  TierSlot& slot = *tiers_[t];
  const Tier& tier = *slot.tier;
  const uint64_t cap = tier.capacity_bytes();
  const uint64_t used = tier.used_bytes();
  uint64_t target = std::min(slot.low_bytes, cap - charge);
  if (used <= target) target = used > charge ? used - charge : 0;
  if (EvictFromTier(t, target) > 0) return true;
  // Our eviction freed nothing when a concurrent writer's eviction already
  // brought usage under the target; that writer may then take the room
  // first. Look again while others keep releasing bytes (a release count,
  // not usage: an eviction refilled by another writer leaves usage where it
  // was) or the tier has room on paper. Each retry follows someone else's
  // progress; the bound only stops a writer starved by a steady stream.
  constexpr int kMaxRounds = 64;
  return (tier.release_count() != releases_before ||
          tier.used_bytes() + charge <= cap) &&
         ++rounds <= kMaxRounds;
}

uint64_t TieredStore::EvictFromTier(size_t t, uint64_t target_bytes) {
  TierSlot& slot = *tiers_[t];
  const size_t next = t + 1;
  uint64_t freed = 0;
  for (;;) {
    BlockKey key;
    uint64_t generation = 0;
    bool demote = false;
    BlockMeta meta;
    {
      absl::MutexLock lock(&mu_);
      if (slot.tier->used_bytes() <= target_bytes) break;
      const absl::Time now = clock_->Now();
      std::optional<BlockKey> victim =
          slot.policy->NextVictim([&](const BlockKey& k) {
            auto it = index_.find(k);
            return it != index_.end() && Evictable(it->second, now);
          });
      if (!victim.has_value()) break;
      key = *victim;
      Entry& e = index_.at(key);
      generation = e.generation;
      const uint32_t busy = e.resident | e.incoming | e.erasing;
      demote = next < tiers_.size() && (busy & Bit(next)) == 0 &&
               tiers_[next]->tier->Charge(e.size) <=
                   tiers_[next]->tier->capacity_bytes();
      if (demote) {
        e.incoming |= Bit(next);  // The copy in t stays readable meanwhile.
        meta = MetaOf(e);
      } else {
        e.resident &= ~Bit(t);
        e.erasing |= Bit(t);
        --slot.stats.blocks;
        ++slot.stats.evictions;
      }
    }
    if (demote) {
      auto bytes = slot.tier->Read(key);
      absl::Status s =
          bytes.ok() ? WriteIntoTier(next, key, bytes->bytes, meta)
                     : bytes.status();
      absl::MutexLock lock(&mu_);
      Entry& e = index_.at(key);  // Remove waits for incoming == 0.
      e.incoming &= ~Bit(next);
      if (s.ok()) {
        e.resident |= Bit(next);
        tiers_[next]->policy->OnInsert(key, e.size);
        ++tiers_[next]->stats.blocks;
        ++slot.stats.demotions;
      }
      // A reader may have dropped a corrupt copy in t meanwhile.
      if ((e.resident & Bit(t)) == 0) continue;
      e.resident &= ~Bit(t);
      e.erasing |= Bit(t);
      --slot.stats.blocks;
      ++slot.stats.evictions;
    }
    const uint64_t before = slot.tier->used_bytes();
    slot.tier->Erase(key).IgnoreError();  // A failed erase only leaks space.
    const uint64_t after = slot.tier->used_bytes();
    if (before > after) freed += before - after;
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it != index_.end() && it->second.generation == generation) {
      it->second.erasing &= ~Bit(t);
      const Entry& e = it->second;
      if ((e.resident | e.incoming | e.erasing) == 0) index_.erase(it);
    }
  }
  return freed;
}

absl::Status TieredStore::WriteIntoTier(size_t t, const BlockKey& key,
                                        absl::Span<const uint8_t> block,
                                        const BlockMeta& meta) {
  TierSlot& slot = *tiers_[t];
  const uint64_t charge = slot.tier->Charge(block.size());
  if (charge > slot.tier->capacity_bytes()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        TierName(slot.tier->kind()), " tier: a ", block.size(),
        "-byte block exceeds the tier capacity ",
        slot.tier->capacity_bytes()));
  }
  // Evict until the write fits; stop when nothing more can go.
  absl::Status s;
  int rounds = 0;
  for (;;) {
    const uint64_t releases = slot.tier->release_count();
    s = slot.tier->Write(key, block, meta);
    if (!absl::IsResourceExhausted(s) ||
        !MakeRoomForRetry(t, charge, releases, rounds)) {
      break;
    }
  }
  if (!s.ok() && !absl::IsDataLoss(s)) {
    absl::MutexLock lock(&mu_);
    ++slot.stats.write_failures;
    if (absl::IsResourceExhausted(s)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          TierName(slot.tier->kind()), " tier: no room for a ", block.size(),
          "-byte block after evicting everything evictable (",
          slot.tier->used_bytes(), " of ", slot.tier->capacity_bytes(),
          " bytes held by pinned, leased or in-flight blocks): ",
          s.message()));
    }
  }
  return s;
}

// ---------------------------------------------------------------- Put

absl::StatusOr<PutOutcome> TieredStore::Put(const BlockKey& key,
                                            absl::Span<const uint8_t> block,
                                            const PutOptions& options) {
  auto reject = [&](absl::Status s) {
    absl::MutexLock lock(&mu_);
    ++counters_.rejected_puts;
    return s;
  };
  if (block.size() > options_.max_block_bytes) {
    return reject(absl::InvalidArgumentError(
        absl::StrCat("block: ", block.size(), " bytes exceed max_block_bytes ",
                     options_.max_block_bytes)));
  }
  // The header and length now; the checksum while the block is copied into
  // a tier that verifies as it writes (DRAM), else just before the write.
  if (auto s = ValidateBlockFrame(block); !s.ok()) return reject(s);
  bool verified = false;
  auto verify_for = [&](size_t t) -> absl::Status {
    if (verified || tiers_[t]->tier->verifies_writes()) return absl::OkStatus();
    absl::Status s = ParseBlock(block).status();
    verified = s.ok();
    return s;
  };
  if (options.tenant.size() > kMaxLabelBytes ||
      options.model.size() > kMaxLabelBytes) {
    return reject(absl::InvalidArgumentError(absl::StrCat(
        options.tenant.size() > kMaxLabelBytes ? "tenant" : "model",
        ": label longer than ", kMaxLabelBytes, " bytes")));
  }
  const BlockMeta meta{options.tenant, options.model,
                       absl::ToUnixMillis(clock_->Now())};

  const bool durable = Durable(options);
  if (durable && persistent_tier_ == SIZE_MAX) {
    return reject(absl::FailedPreconditionError(
        "durable: no persistent tier is configured (set ssd_path)"));
  }
  // Tiers to write: the first tier (or, if it cannot ever hold the block, the
  // first that can), plus the persistent tier for a durable put.
  std::vector<size_t> targets;
  for (size_t t = 0; t < tiers_.size(); ++t) {
    if (tiers_[t]->tier->Charge(block.size()) <=
        tiers_[t]->tier->capacity_bytes()) {
      targets.push_back(t);
      break;
    }
  }
  if (durable && (targets.empty() || targets[0] != persistent_tier_)) {
    targets.push_back(persistent_tier_);
  }
  if (targets.empty()) {
    return reject(absl::ResourceExhaustedError(absl::StrCat(
        "block: ", block.size(), " bytes exceed every tier's capacity")));
  }
  uint32_t claim = 0;
  for (size_t t : targets) claim |= Bit(t);

  uint64_t generation;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = AwaitClaimable(key, options.in_flight_write_wait);
        !s.ok()) {
      if (!absl::IsAlreadyExists(s)) return s;
      ++counters_.duplicate_puts;
      return PutOutcome::kAlreadyPresent;
    }
    Entry& e = index_[key];
    e.generation = generation = next_generation_++;
    e.size = block.size();
    e.incoming = claim;
    e.labels = InternLabels(meta.tenant, meta.model);
    e.stored_at_unix_ms = meta.stored_at_unix_ms;
  }

  uint32_t written = 0;
  absl::Status failure;
  for (size_t i = 0; i < targets.size(); ++i) {
    absl::Status s = verify_for(targets[i]);
    if (s.ok()) s = WriteIntoTier(targets[i], key, block, meta);
    if (s.ok()) {
      written |= Bit(targets[i]);
      verified = true;
      continue;
    }
    if (absl::IsDataLoss(s)) {
      failure = s;
      break;
    }
    // A durable put needs only the persistent tier: a full first tier is
    // skipped when the persistent write is still to come.
    if (durable && absl::IsResourceExhausted(s) && i + 1 < targets.size()) {
      continue;
    }
    // A non-durable put may fall back to lower tiers.
    if (!durable && absl::IsResourceExhausted(s)) {
      bool stored = false;
      for (size_t t = targets[i] + 1; t < tiers_.size() && !stored; ++t) {
        {
          absl::MutexLock lock(&mu_);
          index_.at(key).incoming |= Bit(t);
        }
        if (verify_for(t).ok() && WriteIntoTier(t, key, block, meta).ok()) {
          written |= Bit(t);
          stored = true;
        } else {
          absl::MutexLock lock(&mu_);
          index_.at(key).incoming &= ~Bit(t);
        }
      }
      if (stored) continue;
    }
    failure = s;
    break;
  }

  if (!failure.ok()) {
    // Roll back: nothing of a failed put stays.
    {
      absl::MutexLock lock(&mu_);
      Entry& e = index_.at(key);
      e.incoming = 0;
      e.erasing = written;
      ++counters_.rejected_puts;
    }
    for (size_t t = 0; t < tiers_.size(); ++t) {
      if (written & Bit(t)) tiers_[t]->tier->Erase(key).IgnoreError();
    }
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it != index_.end() && it->second.generation == generation) {
      index_.erase(it);
    }
    return failure;
  }

  {
    absl::MutexLock lock(&mu_);
    Entry& e = index_.at(key);
    e.incoming = 0;
    e.resident = written;
    for (size_t t = 0; t < tiers_.size(); ++t) {
      if (written & Bit(t)) {
        tiers_[t]->policy->OnInsert(key, e.size);
        ++tiers_[t]->stats.blocks;
      }
    }
    ++counters_.puts;
  }
  for (size_t t = 0; t < tiers_.size(); ++t) {
    if (written & Bit(t)) MaybeEvict(t);
  }
  return PutOutcome::kStored;
}

// ---------------------------------------------------------------- Reads

absl::StatusOr<BlockLease> TieredStore::Get(const BlockKey& key,
                                            const GetOptions& options) {
  return Read(key, options.lease_ttl, options.fast_path_max_bytes,
              options.verify_first_tier, nullptr);
}

absl::StatusOr<size_t> TieredStore::GetInto(const BlockKey& key,
                                            absl::Span<uint8_t> dst) {
  STRATA_ASSIGN_OR_RETURN(BlockLease lease,
                          Read(key, absl::ZeroDuration(), 0,
                               /*verify_first_tier=*/true, &dst));
  return lease.bytes().size();
}

absl::StatusOr<BlockLease> TieredStore::Read(const BlockKey& key,
                                             absl::Duration lease_ttl,
                                             uint64_t fast_path_max_bytes,
                                             bool verify_first_tier,
                                             absl::Span<uint8_t>* dst) {
  if (lease_ttl < absl::ZeroDuration() || lease_ttl > options_.max_lease_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_ttl: ", absl::FormatDuration(lease_ttl),
                     " not in [0, max_lease_ttl]"));
  }
  if (lease_ttl == absl::ZeroDuration()) lease_ttl = options_.default_lease_ttl;

  absl::Status last_error;  // Why the most recent copy could not be used.
  uint32_t skip = 0;        // Tiers that failed to read (not corrupt).
  bool first_attempt = true;
  for (int attempt = 0; attempt < kMaxReadAttempts; ++attempt) {
    size_t t = 0;
    uint64_t generation = 0;
    {
      absl::MutexLock lock(&mu_);
      auto it = index_.find(key);
      const uint32_t usable =
          it == index_.end() ? 0 : (it->second.resident & ~skip);
      if (fast_path_max_bytes != 0 && usable != 0 &&
          ((usable & Bit(0)) == 0 || it->second.size > fast_path_max_bytes)) {
        // Not read here: the caller asks again without the fast path.
        return absl::FailedPreconditionError(absl::StrCat(
            "fast_path: ", key.ToHex(), " is not a first-tier block of at "
            "most ", fast_path_max_bytes, " bytes"));
      }
      if (first_attempt) ++counters_.gets;
      if (usable == 0) {
        if (first_attempt) {
          for (auto& slot : tiers_) ++slot->stats.misses;
        }
        ++counters_.get_misses;
        if (!last_error.ok()) return last_error;
        return absl::NotFoundError(
            absl::StrCat("key: ", key.ToHex(), " is not stored"));
      }
      t = static_cast<size_t>(std::countr_zero(usable));
      if (first_attempt) {
        for (size_t above = 0; above < t; ++above) ++tiers_[above]->stats.misses;
      }
      Entry& e = it->second;
      generation = e.generation;
      ++e.leases;
      e.lease_until = std::max(e.lease_until, clock_->Now() + lease_ttl);
      tiers_[t]->policy->OnAccess(key);
    }
    first_attempt = false;

    BlockLease lease;
    lease.store_ = this;  // From here on, leaving the scope releases.
    lease.key_ = key;
    lease.generation_ = generation;
    lease.served_from_ = tiers_[t]->tier->kind();

    auto bytes = tiers_[t]->tier->Read(key);
    if (!bytes.ok()) {
      if (absl::IsDataLoss(bytes.status())) {
        lease.Release();
        DropCopy(t, key, generation, /*corrupt=*/true);
        last_error = bytes.status();
      } else if (!absl::IsNotFound(bytes.status())) {
        skip |= Bit(t);  // I/O error: try another copy, keep this one.
        last_error = bytes.status();
      }
      continue;  // NOT_FOUND: erased under us; look again.
    }
    absl::StatusOr<BlockView> view =
        dst != nullptr ? CopyVerifiedBlock(bytes->bytes, *dst)
        : verify_first_tier || t != 0 ? ParseBlock(bytes->bytes)
                                      : ParseBlockFrame(bytes->bytes);
    if (!view.ok()) {
      if (absl::IsOutOfRange(view.status())) return view.status();  // dst.
      lease.Release();
      DropCopy(t, key, generation, /*corrupt=*/true);
      last_error = absl::DataLossError(absl::StrCat(
          TierName(tiers_[t]->tier->kind()), " tier copy of ", key.ToHex(),
          " is corrupt and was dropped: ", view.status().message()));
      continue;
    }
    lease.header_ = view->header;
    lease.bytes_ = dst == nullptr
                       ? *std::move(bytes)
                       : BlockBytes{nullptr, dst->first(bytes->bytes.size())};
    {
      absl::MutexLock lock(&mu_);
      ++tiers_[t]->stats.hits;
      ++counters_.get_hits;
    }
    if (t > 0 && options_.promote_on_read) Promote(key, generation, *bytes);
    return lease;
  }
  return absl::UnavailableError(
      absl::StrCat("key: ", key.ToHex(), " kept moving between tiers"));
}

void TieredStore::Promote(const BlockKey& key, uint64_t generation,
                          const BlockBytes& bytes) {
  BlockMeta meta;
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end() || it->second.generation != generation) return;
    Entry& e = it->second;
    if (((e.resident | e.incoming | e.erasing) & Bit(0)) != 0) return;
    e.incoming |= Bit(0);
    meta = MetaOf(e);
  }
  absl::Status s = WriteIntoTier(0, key, bytes.bytes, meta);
  {
    absl::MutexLock lock(&mu_);
    Entry& e = index_.at(key);  // Remove waits for incoming == 0.
    e.incoming &= ~Bit(0);
    if (s.ok()) {
      e.resident |= Bit(0);
      tiers_[0]->policy->OnInsert(key, e.size);
      ++tiers_[0]->stats.blocks;
      ++tiers_[0]->stats.promotions;
    }
  }
  if (s.ok()) MaybeEvict(0);
}

void TieredStore::DropCopy(size_t t, const BlockKey& key, uint64_t generation,
                           bool corrupt) {
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end() || it->second.generation != generation) return;
    Entry& e = it->second;
    if (corrupt) ++tiers_[t]->stats.checksum_failures;
    if ((e.resident & Bit(t)) == 0) return;
    e.resident &= ~Bit(t);
    e.erasing |= Bit(t);
    tiers_[t]->policy->OnRemove(key);
    --tiers_[t]->stats.blocks;
  }
  tiers_[t]->tier->Erase(key).IgnoreError();
  FinishErase(t, key, generation);
}

void TieredStore::FinishErase(size_t t, const BlockKey& key,
                              uint64_t generation) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end() || it->second.generation != generation) return;
  it->second.erasing &= ~Bit(t);
  const Entry& e = it->second;
  if ((e.resident | e.incoming | e.erasing) == 0) index_.erase(it);
}

void TieredStore::ReleaseLease(const BlockKey& key, uint64_t generation) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it != index_.end() && it->second.generation == generation &&
      it->second.leases > 0) {
    --it->second.leases;
  }
}

bool TieredStore::Exists(const BlockKey& key) const {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  return it != index_.end() && it->second.resident != 0;
}

size_t TieredStore::LongestPrefix(absl::Span<const BlockKey> keys) const {
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  for (const BlockKey& key : keys) {
    auto it = index_.find(key);
    if (it == index_.end() || it->second.resident == 0) break;
    ++n;
  }
  return n;
}

std::vector<TieredStore::KeySize> TieredStore::SnapshotKeys() const {
  absl::MutexLock lock(&mu_);
  std::vector<KeySize> out;
  out.reserve(index_.size());
  for (const auto& [key, e] : index_) {
    if (e.resident != 0) out.push_back(KeySize{key, e.size});
  }
  return out;
}

// ---------------------------------------------------------------- Admin

absl::Status TieredStore::Remove(const BlockKey& key) {
  uint32_t mask = 0;
  uint64_t generation = 0;
  {
    absl::MutexLock lock(&mu_);
    auto settled = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto i = index_.find(key);
      return i == index_.end() || i->second.incoming == 0;
    };
    mu_.Await(absl::Condition(&settled));
    auto it = index_.find(key);
    if (it == index_.end() || it->second.resident == 0) {
      return absl::NotFoundError(
          absl::StrCat("key: ", key.ToHex(), " is not stored"));
    }
    Entry& e = it->second;
    generation = e.generation;
    mask = e.resident;
    e.resident = 0;
    e.erasing |= mask;
    e.pinned_until = absl::InfinitePast();
    for (size_t t = 0; t < tiers_.size(); ++t) {
      if (mask & Bit(t)) {
        tiers_[t]->policy->OnRemove(key);
        --tiers_[t]->stats.blocks;
      }
    }
    ++counters_.removes;
  }
  absl::Status result;
  for (size_t t = 0; t < tiers_.size(); ++t) {
    if ((mask & Bit(t)) == 0) continue;
    absl::Status s = tiers_[t]->tier->Erase(key);
    if (!s.ok() && result.ok()) result = s;
    FinishErase(t, key, generation);
  }
  return result;
}

absl::StatusOr<EvictResult> TieredStore::EvictMatching(
    const EvictFilter& filter) {
  std::string prefix = absl::AsciiStrToLower(filter.key_prefix);
  if (prefix.size() > 32 ||
      prefix.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key_prefix: \"", filter.key_prefix, "\" is not 0-32 hex digits"));
  }
  if (filter.min_age < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("min_age: must not be negative");
  }
  EvictResult result;
  std::vector<BlockKey> victims;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    const int64_t newest = absl::ToUnixMillis(now - filter.min_age);
    for (const auto& [key, e] : index_) {
      if (e.resident == 0) continue;
      const auto& [tenant, model] = labels_[e.labels];
      if (!filter.tenant.empty() && tenant != filter.tenant) continue;
      if (!filter.model.empty() && model != filter.model) continue;
      // Without a minimum age every block matches, also one whose wall-clock
      // stamp is ahead of `now` (the clock stepped back since its put).
      if (filter.min_age > absl::ZeroDuration() &&
          e.stored_at_unix_ms > newest) {
        continue;
      }
      if (!prefix.empty() && !absl::StartsWith(key.ToHex(), prefix)) continue;
      if (e.pinned_until > now && !filter.include_pinned) {
        ++result.skipped_pinned;
        continue;
      }
      victims.push_back(key);
      ++result.blocks;
      result.bytes += e.size;
    }
  }
  if (filter.dry_run) return result;
  result.blocks = result.bytes = 0;
  for (const BlockKey& key : victims) {
    uint64_t size = 0;
    {
      absl::MutexLock lock(&mu_);
      auto it = index_.find(key);
      if (it == index_.end()) continue;
      size = it->second.size;
    }
    absl::Status s = Remove(key);
    if (s.ok() || !absl::IsNotFound(s)) {
      ++result.blocks;
      result.bytes += size;
    }
  }
  return result;
}

absl::Status TieredStore::Pin(const BlockKey& key, absl::Duration ttl) {
  if (ttl <= absl::ZeroDuration() || ttl > options_.max_pin_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl: ", absl::FormatDuration(ttl),
                     " not in (0, max_pin_ttl ",
                     absl::FormatDuration(options_.max_pin_ttl), "]"));
  }
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end() || it->second.resident == 0) {
    return absl::NotFoundError(
        absl::StrCat("key: ", key.ToHex(), " is not stored"));
  }
  it->second.pinned_until =
      std::max(it->second.pinned_until, clock_->Now() + ttl);
  return absl::OkStatus();
}

absl::Status TieredStore::Unpin(const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end() || it->second.resident == 0) {
    return absl::NotFoundError(
        absl::StrCat("key: ", key.ToHex(), " is not stored"));
  }
  it->second.pinned_until = absl::InfinitePast();
  return absl::OkStatus();
}

absl::Status TieredStore::Flush() {
  for (auto& slot : tiers_) STRATA_RETURN_IF_ERROR(slot->tier->Flush());
  return absl::OkStatus();
}

TieredStore::SharedArena TieredStore::SharedDramArena() const {
  DramArena& arena = static_cast<DramTier*>(tiers_[0]->tier.get())->arena();
  if (arena.shared_fd() < 0) return {};
  return {arena.shared_fd(), arena.base(), arena.capacity()};
}

StoreStats TieredStore::Stats() const {
  absl::MutexLock lock(&mu_);
  StoreStats out = counters_;
  const absl::Time now = clock_->Now();
  for (const auto& [key, e] : index_) {
    if (e.resident == 0) continue;
    if (e.pinned_until > now) ++out.pinned_blocks;
    if (e.leases > 0 && e.lease_until > now) ++out.leased_blocks;
  }
  for (const auto& slot : tiers_) {
    TierStats s = slot->stats;
    s.capacity_bytes = slot->tier->capacity_bytes();
    s.used_bytes = slot->tier->used_bytes();
    out.tiers.push_back(s);
  }
  return out;
}

}  // namespace strata::kvstore
