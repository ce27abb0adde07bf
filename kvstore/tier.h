// Tier: one level of storage (HBM, DRAM, SSD) behind one small interface.
//
// A tier stores encoded blocks (docs/format.md) under BlockKeys and knows its
// own capacity and usage. It does not decide what to keep: placement,
// eviction, pins and leases belong to the TieredStore, which owns one
// EvictionPolicy per tier. Tiers do not verify block checksums on read; the
// TieredStore verifies every block it hands out, from whichever tier.
//
// Thread safety: every Tier implementation is thread-safe. Concurrent Write
// and Erase of the same key are serialised by the caller (the TieredStore);
// the tier only guarantees that each call is atomic.
#ifndef STRATA_KVSTORE_TIER_H_
#define STRATA_KVSTORE_TIER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvstore/block_key.h"

namespace strata::kvstore {

enum class TierKind : uint8_t { kHbm = 0, kDram = 1, kSsd = 2 };
const char* TierName(TierKind kind);

// What a tier keeps beside a block: admin labels and the time it was stored
// (persistent tiers persist it so filters survive a restart).
struct BlockMeta {
  std::string tenant;
  std::string model;
  int64_t stored_at_unix_ms = 0;
};

// One block a persistent tier holds, as listed at open.
struct StoredBlock {
  BlockKey key;
  uint64_t size = 0;
  BlockMeta meta;
};

// Bytes of one block read from a tier. `owner` keeps them valid: for the DRAM
// tier it holds the arena range (the range is not reused while any copy of
// this object lives, even if the block was erased meanwhile); for the SSD tier
// it owns the buffer RocksDB filled.
struct BlockBytes {
  std::shared_ptr<const void> owner;
  absl::Span<const uint8_t> bytes;
};

class Tier {
 public:
  virtual ~Tier() = default;

  virtual TierKind kind() const = 0;
  // True when blocks survive a process restart (the index is rebuilt from
  // ListBlocks at open).
  virtual bool persistent() const = 0;

  // Hard capacity and current usage in bytes, as charged by Charge().
  virtual uint64_t capacity_bytes() const = 0;
  virtual uint64_t used_bytes() const = 0;
  // How many times the tier has released bytes since it opened; only grows.
  // A writer that found no room compares it across its attempt to learn
  // whether others freed room meanwhile, even when usage came back to the
  // same value (an eviction refilled by another writer).
  virtual uint64_t release_count() const = 0;
  // Bytes a block of `block_size` bytes consumes in this tier.
  virtual uint64_t Charge(uint64_t block_size) const = 0;
  // True when Write verifies the block checksum while storing it (and
  // answers DATA_LOSS, storing nothing, on a mismatch).
  virtual bool verifies_writes() const { return false; }

  // Stores `block` under `key`, replacing nothing: writing a key the tier
  // already holds is a caller bug (FAILED_PRECONDITION). RESOURCE_EXHAUSTED
  // when there is no room (nothing is written); UNAVAILABLE on an I/O error.
  // On any error the tier is unchanged.
  virtual absl::Status Write(const BlockKey& key,
                             absl::Span<const uint8_t> block,
                             const BlockMeta& meta) = 0;

  // NOT_FOUND when absent; DATA_LOSS when the medium reports corruption;
  // UNAVAILABLE on an I/O error.
  virtual absl::StatusOr<BlockBytes> Read(const BlockKey& key) = 0;

  // Removes `key`; OK when absent. Readers holding BlockBytes keep them.
  virtual absl::Status Erase(const BlockKey& key) = 0;

  // Every block the tier holds, with its size and meta, for rebuilding the
  // index at open. Volatile tiers return an empty list.
  virtual absl::StatusOr<std::vector<StoredBlock>> ListBlocks() = 0;

  // Moves buffered writes to their final files (a persistent tier's memtable
  // to SST and blob files). A no-op for volatile tiers.
  virtual absl::Status Flush() { return absl::OkStatus(); }
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_TIER_H_
