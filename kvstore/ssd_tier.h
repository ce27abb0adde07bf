// SsdTier: blocks in a RocksDB database on local disk.
//
// Values of at least `min_blob_bytes` go to RocksDB blob files (BlobDB
// integrated into the LSM), so multi-MiB blocks are written once per flush and
// never rewritten by compaction. A second column family, "meta", maps each
// key to its block size and BlockMeta; it is written in the same WriteBatch as the block, so
// the two never disagree, and it lets ListBlocks rebuild the index at open
// without reading a single block. A "meta" record is: u8 version (1),
// u64 size, i64 stored_at_unix_ms, u16 tenant length + bytes, u16 model
// length + bytes (little-endian).
//
// Durability: a Write that returned OK is in RocksDB's write-ahead log, so it
// survives a crash of this process (kill -9). With `sync_writes` it also
// survives a crash of the machine (fsync per write).
//
// Capacity is logical: the sum of stored block sizes. Disk usage trails it
// until compaction and blob garbage collection reclaim erased blocks.
//
// All file I/O goes through `file_system`, the seam tests use to inject
// ENOSPC, read errors and corrupted bytes (fault_injection_file_system.h).
//
// Thread safety: thread-safe (see Tier).
#ifndef STRATA_KVSTORE_SSD_TIER_H_
#define STRATA_KVSTORE_SSD_TIER_H_

#include <atomic>
#include <memory>
#include <string>

#include "kvstore/tier.h"

namespace rocksdb {
class Env;
class ColumnFamilyHandle;
class DB;
class FileSystem;
}  // namespace rocksdb

namespace strata::kvstore {

struct SsdTierOptions {
  std::string path;  // Directory; created if missing.
  uint64_t capacity_bytes = uint64_t{16} << 30;
  bool sync_writes = false;
  uint64_t min_blob_bytes = 4096;
  uint64_t write_buffer_bytes = uint64_t{64} << 20;
  // Null means the real file system (rocksdb::FileSystem::Default()).
  std::shared_ptr<rocksdb::FileSystem> file_system;
};

class SsdTier final : public Tier {
 public:
  // Opens or creates the database. INVALID_ARGUMENT naming "ssd_path" or
  // "ssd_capacity_bytes"; UNAVAILABLE / DATA_LOSS when RocksDB cannot open it.
  static absl::StatusOr<std::unique_ptr<SsdTier>> Open(
      const SsdTierOptions& options);
  ~SsdTier() override;

  TierKind kind() const override { return TierKind::kSsd; }
  bool persistent() const override { return true; }
  uint64_t capacity_bytes() const override { return capacity_bytes_; }
  uint64_t used_bytes() const override {
    return used_bytes_.load(std::memory_order_relaxed);
  }
  uint64_t release_count() const override {
    return releases_.load(std::memory_order_acquire);
  }
  uint64_t Charge(uint64_t block_size) const override { return block_size; }

  // RESOURCE_EXHAUSTED when the block would exceed the capacity or the disk
  // is full (ENOSPC); UNAVAILABLE on another I/O error. After a disk error
  // the next Write first asks RocksDB to resume.
  absl::Status Write(const BlockKey& key, absl::Span<const uint8_t> block,
                     const BlockMeta& meta) override;
  absl::StatusOr<BlockBytes> Read(const BlockKey& key) override;
  absl::Status Erase(const BlockKey& key) override;
  absl::StatusOr<std::vector<StoredBlock>> ListBlocks() override;

  // Flushes memtables to SST and blob files.
  absl::Status Flush() override;

 private:
  SsdTier(std::unique_ptr<rocksdb::DB> db,
          std::vector<rocksdb::ColumnFamilyHandle*> handles,
          const SsdTierOptions& options);
  absl::Status ResumeAfterError();

  std::unique_ptr<rocksdb::Env> env_;  // Wraps file_system; outlives db_.
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyHandle* blocks_cf_;  // "default": key -> block.
  rocksdb::ColumnFamilyHandle* meta_cf_;    // "meta": key -> size + meta.
  const uint64_t capacity_bytes_;
  const bool sync_writes_;
  std::atomic<uint64_t> used_bytes_{0};
  std::atomic<uint64_t> releases_{0};  // Bumped after each used_bytes_ drop.
  std::atomic<bool> needs_resume_{false};
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_SSD_TIER_H_
