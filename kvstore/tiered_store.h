// TieredStore: immutable KV blocks across a chain of tiers (DRAM, then SSD;
// HBM joins at the front in the kernels issue), with eviction, demotion,
// promotion, pins and read leases.
//
// Semantics
// - Put is immutable and idempotent: the first write of a key wins; a later
//   Put of the same key returns kAlreadyPresent and changes nothing. A Put
//   that meets a write of its key still in flight waits for its outcome, so
//   kAlreadyPresent means the block is there (read-your-writes). Every
//   block is validated (header + checksum) before it is stored.
// - A block is placed in the first tier (DRAM). With durable puts it is also
//   written to the last, persistent tier (SSD) before Put returns.
// - When a tier's usage passes `high_watermark` of its capacity, blocks are
//   evicted by that tier's policy (LRU or S3-FIFO) until usage is at most
//   `low_watermark`. A block evicted from a tier moves to the next tier down
//   (demotion; free when a copy is already there) or, from the last tier, is
//   dropped. A read served by a lower tier copies the block back into the
//   first tier (promotion); lower tiers keep their copy (inclusive tiers).
// - Pinned blocks (until their TTL passes or Unpin) and leased blocks (while
//   a BlockLease is held and before its TTL passes) are never evicted from any
//   tier. Pins are not reference-counted: Unpin clears all pins on a key.
// - Every read verifies the block checksum. A copy that fails is dropped from
//   its tier and counted; the read falls back to a lower tier's copy, or
//   answers DATA_LOSS when no good copy remains. Wrong bytes are never
//   returned.
// - Reserve / Commit (receiving in place): a caller that receives a block of
//   known size from elsewhere (the UCX data plane) reserves its range in the
//   DRAM tier's arena, writes the bytes straight into it, and commits; the
//   store verifies the checksum over the bytes where they lie, so the block
//   is copied zero times instead of once. See BlockReservation.
//
// Thread safety: all methods are thread-safe. One mutex guards the index,
// the policies and the counters and is held only for O(1) work per key;
// block bytes are copied, verified and written to tiers outside it.
#ifndef STRATA_KVSTORE_TIERED_STORE_H_
#define STRATA_KVSTORE_TIERED_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvstore/block_format.h"
#include "kvstore/block_key.h"
#include "kvstore/clock.h"
#include "kvstore/dram_tier.h"
#include "kvstore/eviction_policy.h"
#include "kvstore/tier.h"

namespace rocksdb {
class FileSystem;
}

namespace strata::kvstore {

struct TieredStoreOptions {
  // DRAM tier: a preallocated arena of this many bytes.
  uint64_t dram_capacity_bytes = uint64_t{1} << 30;
  // The arena is a memfd that local clients may map (SharedDramArena()),
  // instead of anonymous memory.
  bool dram_shared = false;
  EvictionPolicyKind dram_policy = EvictionPolicyKind::kLru;

  // SSD tier: RocksDB under this directory; empty disables the tier.
  std::string ssd_path;
  uint64_t ssd_capacity_bytes = uint64_t{16} << 30;
  EvictionPolicyKind ssd_policy = EvictionPolicyKind::kLru;
  bool ssd_sync_writes = false;  // fsync every SSD write (power-loss safety).
  // The SSD tier's file-system seam; null means the real file system.
  std::shared_ptr<rocksdb::FileSystem> ssd_file_system;

  // Eviction starts above high_watermark * capacity and stops at or below
  // low_watermark * capacity. 0 < low <= high <= 1.
  double high_watermark = 0.95;
  double low_watermark = 0.85;

  // Default for PutOptions::durable: write through to the SSD tier.
  bool write_through = false;
  // Copy blocks read from a lower tier into the first tier.
  bool promote_on_read = true;

  // Largest block Put accepts (header + payload).
  uint64_t max_block_bytes = uint64_t{256} << 20;
  absl::Duration default_lease_ttl = absl::Seconds(10);
  absl::Duration max_lease_ttl = absl::Minutes(5);
  absl::Duration max_pin_ttl = absl::Hours(24);

  // Time source for pins and leases; null means Clock::Real().
  Clock* clock = nullptr;

  // INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

enum class PutOutcome { kStored, kAlreadyPresent };

struct PutOptions {
  // Return only after the block is in the persistent tier. Unset means the
  // store's `write_through` option.
  std::optional<bool> durable;
  // Labels for admin filters (EvictMatching); at most kMaxLabelBytes each.
  std::string tenant;
  std::string model;
  // How long Put / Reserve wait for the outcome of another write of the key
  // still in flight (a Put or a reservation) before answering ABORTED naming
  // "key". Zero answers at once: a network progress thread, which must not
  // block, then hands the block to Put on a worker thread.
  absl::Duration in_flight_write_wait = absl::InfiniteDuration();
};

inline constexpr size_t kMaxLabelBytes = 1024;

// Selects blocks for EvictMatching. A block matches when every non-empty
// criterion matches.
struct EvictFilter {
  std::string tenant;
  std::string model;
  std::string key_prefix;  // Hex prefix of BlockKey::ToHex(), any case.
  // Stored at least this long ago by the store's (wall) clock; zero matches
  // every block, whatever its stamp.
  absl::Duration min_age = absl::ZeroDuration();
  bool dry_run = false;         // Count only.
  bool include_pinned = false;  // Otherwise pinned blocks are skipped.
};

struct EvictResult {
  uint64_t blocks = 0;  // Removed (or, dry run, that would be).
  uint64_t bytes = 0;
  uint64_t skipped_pinned = 0;
};

struct GetOptions {
  // How long the returned lease protects the block from eviction; zero means
  // the store's default_lease_ttl.
  absl::Duration lease_ttl = absl::ZeroDuration();
  // For a caller that must not block long (a network progress thread): when
  // non-zero, a block that is not in the first tier, or is larger than this,
  // is not read; Get answers FAILED_PRECONDITION naming "fast_path" and
  // counts nothing, and the caller retries without the option elsewhere.
  // Misses answer NOT_FOUND as usual.
  uint64_t fast_path_max_bytes = 0;
  // false: a first-tier copy is served after checking its header and length
  // only, without the checksum pass (it was verified when it was stored).
  // For a caller that verifies the bytes itself where they land (the UCX
  // client, end to end); on a mismatch it must read again with true, which
  // finds the corrupt copy, drops it and falls back like any read. Copies
  // from lower tiers are always verified.
  bool verify_first_tier = true;
};

class TieredStore;

// A verified block, readable for as long as this object lives (even if the
// block is removed or evicted meanwhile). While held and before its TTL, the
// block is also not evicted. Move-only; destroy it to release the lease.
class BlockLease {
 public:
  BlockLease() = default;
  BlockLease(BlockLease&& other) noexcept;
  BlockLease& operator=(BlockLease&& other) noexcept;
  BlockLease(const BlockLease&) = delete;
  BlockLease& operator=(const BlockLease&) = delete;
  ~BlockLease();

  // The whole encoded block (header + payload).
  absl::Span<const uint8_t> bytes() const { return bytes_.bytes; }
  const BlockHeader& header() const { return header_; }
  absl::Span<const uint8_t> payload() const {
    return bytes_.bytes.subspan(kBlockHeaderSize);
  }
  TierKind served_from() const { return served_from_; }

 private:
  friend class TieredStore;
  void Release();

  TieredStore* store_ = nullptr;
  BlockKey key_;
  uint64_t generation_ = 0;
  BlockBytes bytes_;
  BlockHeader header_;
  TierKind served_from_ = TierKind::kDram;
};

// ---- Reserve / commit (receiving a block in place).
//
// Contract:
// - TieredStore::Reserve(key, size) claims `key` (first write wins: a stored
//   key answers ALREADY_EXISTS; a key being put or reserved makes Reserve
//   and Put wait for that write's outcome, up to
//   PutOptions::in_flight_write_wait, then ABORTED; a holder must not Put or
//   Reserve its own reserved key) and sets aside `size` bytes of the DRAM
//   tier's arena, evicting as Put would unless told not to. The key is not
//   visible (Get / Exists / LongestPrefix) until Commit succeeds.
// - The holder writes exactly `size` bytes of an encoded block into data(),
//   from any thread, then calls TieredStore::Commit, which must happen after
//   those writes (the caller synchronises, e.g. a completion callback).
// - Commit verifies the header, the length and the checksum over the bytes in
//   place. On success the block is stored (and, for a durable reservation,
//   written to the persistent tier first). On any error nothing of it stays:
//   DATA_LOSS naming "checksum" for a checksum mismatch, INVALID_ARGUMENT for
//   a malformed header or a length that contradicts it, RESOURCE_EXHAUSTED
//   when a durable write cannot reach the persistent tier.
// - Abort(), or destroying an uncommitted reservation, frees the range and
//   releases the key; nothing is stored.
// - Until then the range counts towards the DRAM tier's usage and cannot be
//   evicted; Remove of the key waits for the reservation to end, as it waits
//   for a Put in flight. A reservation must not outlive its store.
// Move-only. Not thread-safe itself: one owner at a time.
class BlockReservation {
 public:
  BlockReservation() = default;
  BlockReservation(BlockReservation&& other) noexcept;
  BlockReservation& operator=(BlockReservation&& other) noexcept;
  BlockReservation(const BlockReservation&) = delete;
  BlockReservation& operator=(const BlockReservation&) = delete;
  ~BlockReservation();  // Abort()s if still active.

  // Where the block goes: exactly the reserved size.
  absl::Span<uint8_t> data() const {
    return absl::MakeSpan(range_.data(), range_.size());
  }
  const BlockKey& key() const { return key_; }
  // Copies `block` into data() and checks its header, length and checksum in
  // the same pass (CopyVerifiedBlock), so Commit skips its own hashing pass.
  // For bytes that must be copied anyway (an eager network message). On
  // error (INVALID_ARGUMENT naming "block" when its size is not the reserved
  // size, else ParseBlock's codes) nothing is remembered and Commit checks
  // and refuses as usual. Do not write data() after it succeeds.
  absl::Status CopyIn(absl::Span<const uint8_t> block);
  // For a holder that wrote data() itself and hashed it as it landed
  // (StreamingBlockVerifier over exactly data()): finishes that check, and
  // when it passes Commit skips its own checksum pass. On an error
  // (Finish's) nothing is remembered and Commit checks and refuses as
  // usual. Do not write data() after it succeeds.
  absl::Status FinishLandedCheck(StreamingBlockVerifier& verifier);
  // For bytes written into data() by a writer that checked the block's
  // checksum as it wrote them (a local client's CopyVerifiedBlock into the
  // shared arena): Commit skips its checksum pass and checks only the
  // header and length. A writer that lied stores a block that every read
  // refuses (DATA_LOSS); nothing wrong is ever returned.
  void AcceptWritersChecksum() { checksum_verified_ = true; }
  // Neither committed nor aborted.
  bool active() const { return store_ != nullptr; }
  // Whether Commit writes the persistent tier first (a durable put, or a
  // write-through store): fixed when the reservation was made.
  bool durable() const { return durable_; }
  // Frees the range and releases the key. No-op when not active.
  void Abort();

 private:
  friend class TieredStore;

  TieredStore* store_ = nullptr;
  BlockKey key_;
  uint64_t generation_ = 0;
  DramTier::Reservation range_;
  bool durable_ = false;
  BlockMeta meta_;
  // By CopyIn, FinishLandedCheck or the writer (AcceptWritersChecksum).
  bool checksum_verified_ = false;
};

struct CommitOptions {
  // false: Commit does not evict when the block takes the tier past its high
  // watermark (eviction may write the SSD tier); the caller runs
  // TieredStore::EvictToWatermarks soon after on a thread that may block.
  bool evict = true;
};

struct ReserveOptions {
  // false: answer RESOURCE_EXHAUSTED instead of evicting when the arena has
  // no free range of the size. Eviction may demote blocks to the SSD tier
  // (RocksDB writes); a network progress thread passes false and falls back
  // to Put on a worker thread.
  bool may_evict = true;
};

// DRAM-arena space set aside before its key is known (ReserveSpace): a local
// client writes its next block there, then ReserveInto claims the key for
// those bytes, saving a round trip per put. Charged to the DRAM tier from
// ReserveSpace on; dropping it unused frees the range. Move-only; the bytes
// may be written from any thread (or process, through a shared arena).
// Must not outlive its store.
class ArenaSpace {
 public:
  ArenaSpace() = default;
  ArenaSpace(ArenaSpace&&) noexcept = default;
  ArenaSpace& operator=(ArenaSpace&&) noexcept = default;
  absl::Span<uint8_t> data() const {
    return absl::MakeSpan(range_.data(), range_.size());
  }
  bool active() const { return static_cast<bool>(range_); }

 private:
  friend class TieredStore;
  DramTier::Reservation range_;
};

struct TierStats {
  TierKind kind = TierKind::kDram;
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t blocks = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;         // Blocks this tier gave up.
  uint64_t demotions = 0;         // Evicted blocks copied to the next tier.
  uint64_t promotions = 0;        // Blocks copied into this tier on a read.
  uint64_t checksum_failures = 0; // Copies dropped because they were corrupt.
  uint64_t write_failures = 0;    // Writes into this tier that failed.
};

struct StoreStats {
  uint64_t puts = 0;            // Blocks stored.
  uint64_t duplicate_puts = 0;  // Puts of a key already present.
  uint64_t rejected_puts = 0;   // Puts that failed validation or capacity.
  uint64_t gets = 0;
  uint64_t get_hits = 0;
  uint64_t get_misses = 0;
  uint64_t removes = 0;
  uint64_t pinned_blocks = 0;
  uint64_t leased_blocks = 0;
  std::vector<TierStats> tiers;  // Fastest first.
};

class TieredStore {
 public:
  // Creates the tiers; with an SSD tier, reopens the blocks it already holds.
  // INVALID_ARGUMENT naming a bad option; errors from opening the tiers.
  static absl::StatusOr<std::unique_ptr<TieredStore>> Open(
      const TieredStoreOptions& options);
  // Outstanding BlockLeases stay readable; they must not outlive the store.
  ~TieredStore();
  TieredStore(const TieredStore&) = delete;
  TieredStore& operator=(const TieredStore&) = delete;

  // Stores an encoded block. kAlreadyPresent when the key is stored; when
  // another write of the key is in flight (a Put or an open reservation),
  // waits for its outcome first (up to options.in_flight_write_wait, then
  // ABORTED naming "key"), so kAlreadyPresent always means a later Get finds
  // the block. A thread must not Put a key it holds a reservation for.
  // INVALID_ARGUMENT (field named) for a malformed
  // block or one above max_block_bytes; DATA_LOSS when its checksum does not
  // match; RESOURCE_EXHAUSTED when no tier has room even after eviction, or a
  // durable put cannot reach the persistent tier (disk full). On error nothing
  // is stored.
  absl::StatusOr<PutOutcome> Put(const BlockKey& key,
                                 absl::Span<const uint8_t> block,
                                 const PutOptions& options = {});

  // Claims `key` and reserves `size` bytes for its block in the DRAM tier
  // (contract above BlockReservation). ALREADY_EXISTS when the key is
  // stored (counted as a duplicate put). When another write of the key is
  // in flight (a Put or a reservation), waits for its outcome as Put does
  // (ABORTED naming "key" after options.in_flight_write_wait);
  // INVALID_ARGUMENT naming "block" above max_block_bytes, "size" below the
  // block header, "tenant" / "model" for labels over kMaxLabelBytes;
  // FAILED_PRECONDITION naming "durable" without a persistent tier;
  // RESOURCE_EXHAUSTED when the DRAM tier cannot hold the block (larger than
  // the tier, or no room after evicting everything evictable, or
  // !may_evict and no free range): the caller may use Put instead, which can
  // fall back to lower tiers.
  absl::StatusOr<BlockReservation> Reserve(
      const BlockKey& key, uint64_t size, const PutOptions& options = {},
      const ReserveOptions& reserve = {});
  // `size` bytes of the DRAM arena for a block whose key comes later
  // (ArenaSpace), evicting as Reserve does unless reserve.may_evict is
  // false. INVALID_ARGUMENT naming "block" or "size" as Reserve (not counted:
  // no put was refused); RESOURCE_EXHAUSTED when there is no room.
  absl::StatusOr<ArenaSpace> ReserveSpace(uint64_t size,
                                          const ReserveOptions& reserve = {});
  // As Reserve for data().size() bytes, but the block is the bytes already
  // written into `space`, which the reservation takes on success (then
  // `space` is inactive). On any error `space` is left as it was (still the
  // caller's), e.g. ALREADY_EXISTS when the key is stored.
  absl::StatusOr<BlockReservation> ReserveInto(const BlockKey& key,
                                               ArenaSpace& space,
                                               const PutOptions& options = {});
  // Verifies the reserved bytes and stores them as the key's block (contract
  // above BlockReservation). FAILED_PRECONDITION naming "reservation" when it
  // is not active. The reservation is consumed either way.
  absl::Status Commit(BlockReservation reservation,
                      const CommitOptions& commit = {});
  // Whether some tier is above its high watermark (cheap; any thread).
  bool NeedsEviction() const;
  // Evicts every tier above its high watermark down to its low watermark
  // (what Put does after writing). May demote to the SSD tier: blocking.
  void EvictToWatermarks();

  // The verified block, leased. NOT_FOUND on a miss; DATA_LOSS when every
  // copy was corrupt (all are dropped); UNAVAILABLE when a tier failed to
  // read and no other copy exists.
  absl::StatusOr<BlockLease> Get(const BlockKey& key,
                                 const GetOptions& options = {});

  // Copies the verified block into `dst` and returns its size. As Get, plus
  // OUT_OF_RANGE naming "dst" when it is too small (nothing is dropped).
  absl::StatusOr<size_t> GetInto(const BlockKey& key, absl::Span<uint8_t> dst);

  // Get for each key, in order.
  std::vector<absl::StatusOr<BlockLease>> BatchGet(
      absl::Span<const BlockKey> keys, const GetOptions& options = {});

  // GetInto for each key, in order: result i is key i's size or error, and
  // one key's error does not stop the others. Large batches are copied and
  // verified on several threads (one thread moves ~10-15 GB/s; an engine's
  // load path feeding PCIe at ~55 GB/s needs more): `threads` 0 picks by
  // size (one thread below 16 MiB, else up to half the cores, at most 8 and
  // one per 4 MiB); N uses N (at most one per key), the calling thread
  // among them, so 1 reads on the calling thread only. INVALID_ARGUMENT
  // naming "dsts" for every key when the spans differ in length. The
  // destinations must not overlap; the call returns after every copy.
  std::vector<absl::StatusOr<size_t>> BatchGetInto(
      absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<uint8_t>> dsts, size_t threads = 0);

  // Whether a block is stored (in any tier). Does not read or verify it.
  bool Exists(const BlockKey& key) const;

  // What the index knows of a stored block, without reading it: its size,
  // labels and store time, and how much longer it is pinned by the store's
  // clock (zero when it is not). NOT_FOUND naming "key" when it is not
  // stored. For copying a block elsewhere with its labels and pin (cluster
  // rebalancing).
  struct BlockInfo {
    uint64_t size = 0;
    BlockMeta meta;
    absl::Duration pinned_for = absl::ZeroDuration();
  };
  absl::StatusOr<BlockInfo> Describe(const BlockKey& key) const;

  // The number of leading keys of `keys` that are stored: with chained keys
  // (block_key.h), the length in chunks of the longest cached prefix.
  size_t LongestPrefix(absl::Span<const BlockKey> keys) const;

  // Enumeration (cluster rebalancing, docs/cluster.md): every key stored in
  // some tier at the moment of the call, with its block size, in no
  // particular order. A snapshot: blocks put, removed or evicted afterwards
  // are not reflected, so a caller acting on an entry must expect NOT_FOUND.
  // O(number of blocks) under the index mutex (about 50 ms per million
  // blocks); the result holds 24 bytes per block.
  struct KeySize {
    BlockKey key;
    uint64_t size = 0;
  };
  std::vector<KeySize> SnapshotKeys() const;

  // Removes a block from every tier. NOT_FOUND when absent. Readers holding
  // a BlockLease keep their bytes.
  absl::Status Remove(const BlockKey& key);

  // Removes every block matching `filter` from every tier (readers holding a
  // lease keep their bytes). INVALID_ARGUMENT naming "key_prefix" for a
  // prefix that is not 0-32 hex digits, "min_age" for a negative age.
  absl::StatusOr<EvictResult> EvictMatching(const EvictFilter& filter);

  // Protects a stored block from eviction until now + ttl (extending, never
  // shortening, an existing pin). NOT_FOUND when absent; INVALID_ARGUMENT
  // naming "ttl" unless 0 < ttl <= max_pin_ttl.
  absl::Status Pin(const BlockKey& key, absl::Duration ttl);
  // Clears every pin on the block. NOT_FOUND when absent.
  absl::Status Unpin(const BlockKey& key);

  // Flushes every tier's buffered writes to their final files (see
  // Tier::Flush). Durability does not depend on it; files on disk do.
  absl::Status Flush();

  StoreStats Stats() const;
  const TieredStoreOptions& options() const { return options_; }
  // Whether a Put or Reserve with `options` writes the persistent tier
  // before it answers: options.durable, else the store's write_through.
  bool Durable(const PutOptions& options) const {
    return options.durable.value_or(options_.write_through);
  }

  // The DRAM tier's arena when it is shared (options.dram_shared): its memfd
  // (owned by the store), where it is mapped here, and its size. Every DRAM
  // reservation's data() and every DRAM lease's bytes() lie inside it.
  // fd == -1 when the arena is private.
  struct SharedArena {
    int fd = -1;
    const uint8_t* base = nullptr;
    size_t bytes = 0;
  };
  SharedArena SharedDramArena() const;

 private:
  struct Entry;
  struct TierSlot;
  friend class BlockLease;
  friend class BlockReservation;

  explicit TieredStore(const TieredStoreOptions& options);
  absl::Status Recover();

  // Writes a validated block into tier `t`, evicting from it as needed.
  absl::Status WriteIntoTier(size_t t, const BlockKey& key,
                             absl::Span<const uint8_t> block,
                             const BlockMeta& meta);
  // The persisted description of an entry.
  BlockMeta MetaOf(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a new write may claim `key` now: OK (no entry: claim it),
  // ALREADY_EXISTS (stored), or ABORTED when another write is still in
  // flight `write_wait` after this first had to wait for one. Until then
  // waits (releasing mu_) for an in-flight write's outcome, and without
  // limit for an erase or a failed write's roll-back to remove the entry.
  absl::Status AwaitClaimable(const BlockKey& key, absl::Duration write_wait)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t InternLabels(const std::string& tenant, const std::string& model)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Evicts from tier `t` until usage <= target_bytes or nothing is evictable;
  // returns the bytes freed.
  uint64_t EvictFromTier(size_t t, uint64_t target_bytes);
  void MaybeEvict(size_t t);
  // Reserve's parts (tiered_store_reserve.cc), in Reserve's order: the size
  // checks (INVALID_ARGUMENT; Reserve counts them as rejected puts), then
  // after the label and durability checks whether the DRAM tier could hold
  // it at all (RESOURCE_EXHAUSTED); a DRAM range, evicting unless told not
  // to; claiming the key, then a range, or `space`'s when given.
  absl::Status CheckReserveSize(uint64_t size) const;
  absl::Status CheckFitsDram(uint64_t size) const;
  absl::StatusOr<DramTier::Reservation> ReserveRange(
      uint64_t size, const ReserveOptions& reserve);
  absl::StatusOr<BlockReservation> ClaimAndReserve(
      const BlockKey& key, uint64_t size, const PutOptions& options,
      const ReserveOptions& reserve, ArenaSpace* space);
  // After a write of `charge` bytes into tier `t` found no room: evicts
  // towards room for it and says whether to try the write again (our
  // eviction freed bytes; or others released bytes of the tier since its
  // release_count() was `releases_before`, read before the failed attempt;
  // or the tier has room on paper; the last two bounded by `rounds`).
  bool MakeRoomForRetry(size_t t, uint64_t charge, uint64_t releases_before,
                        int& rounds);
  bool Evictable(const Entry& entry, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The shared read path of Get and GetInto (dst != null: copy + verify).
  absl::StatusOr<BlockLease> Read(const BlockKey& key, absl::Duration lease_ttl,
                                  uint64_t fast_path_max_bytes,
                                  bool verify_first_tier,
                                  absl::Span<uint8_t>* dst);
  // Drops `key`'s copy in tier `t` from the index and the tier.
  void DropCopy(size_t t, const BlockKey& key, uint64_t generation,
                bool corrupt);
  // Clears the erasing bit of tier `t` and forgets an entry with no copies.
  void FinishErase(size_t t, const BlockKey& key, uint64_t generation);
  void ReleaseLease(const BlockKey& key, uint64_t generation);
  void Promote(const BlockKey& key, uint64_t generation, const BlockBytes& b);
  // Undoes an uncommitted reservation (range freed, key released); `written`
  // is the tiers Commit already wrote, erased first.
  void AbortReservation(BlockReservation& r, uint32_t written);

  const TieredStoreOptions options_;
  Clock* const clock_;
  std::vector<std::unique_ptr<TierSlot>> tiers_;  // Fixed after Open.
  size_t persistent_tier_ = SIZE_MAX;             // Index, or none.

  mutable absl::Mutex mu_;
  absl::flat_hash_map<BlockKey, Entry> index_ ABSL_GUARDED_BY(mu_);
  uint64_t next_generation_ ABSL_GUARDED_BY(mu_) = 1;
  // Interned (tenant, model) label pairs; Entry::labels indexes this.
  std::vector<std::pair<std::string, std::string>> labels_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::pair<std::string, std::string>, uint32_t>
      label_ids_ ABSL_GUARDED_BY(mu_);
  mutable StoreStats counters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_TIERED_STORE_H_
