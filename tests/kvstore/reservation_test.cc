// TieredStore::Reserve / Commit: receiving a block in place in the DRAM
// arena (tiered_store.h, "Reserve / commit").
#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/dram_arena.h"
#include "kvstore/tiered_store.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::kvstore {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::strata::kvstore::testing::TestSeed;
using ::testing::HasSubstr;

const BlockShape k64K = ShapeForBytes(64 << 10);
const uint64_t kBlockBytes = EncodedBlockSize(64 << 10);
const uint64_t kFootprint = DramArena::Footprint(kBlockBytes);

// DRAM for exactly `blocks` 64 KiB blocks; evicts only when one does not fit.
TieredStoreOptions DramFor(size_t blocks) {
  TieredStoreOptions o;
  o.dram_capacity_bytes = blocks * kFootprint;
  o.high_watermark = 1.0;
  o.low_watermark = 1.0;
  return o;
}

std::unique_ptr<TieredStore> Open(const TieredStoreOptions& o) {
  auto store = TieredStore::Open(o);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

uint64_t DramUsed(TieredStore& store) {
  return store.Stats().tiers[0].used_bytes;
}

// Reserves `key`, writes `block` into the reservation and commits it.
absl::Status ReserveWriteCommit(TieredStore& store, const BlockKey& key,
                                const std::vector<uint8_t>& block,
                                const PutOptions& put = {}) {
  auto r = store.Reserve(key, block.size(), put);
  if (!r.ok()) return r.status();
  std::memcpy(r->data().data(), block.data(), block.size());
  return store.Commit(*std::move(r));
}

TEST(Reservation, CommittedBlockIsServedFromTheReservedBytes) {
  auto store = Open(DramFor(4));
  const auto block = MakeBlock(k64K, 7);
  auto r = store->Reserve(KeyFor(1), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->data().size(), block.size());
  EXPECT_EQ(DramUsed(*store), kFootprint);  // Charged from Reserve on.
  EXPECT_FALSE(store->Exists(KeyFor(1)));   // Invisible until Commit.
  EXPECT_TRUE(absl::IsNotFound(store->Get(KeyFor(1)).status()));
  std::memcpy(r->data().data(), block.data(), block.size());
  const uint8_t* where = r->data().data();
  ASSERT_TRUE(store->Commit(*std::move(r)).ok());

  EXPECT_TRUE(store->Exists(KeyFor(1)));
  auto lease = store->Get(KeyFor(1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  // No copy: the lease reads the very bytes the caller wrote.
  EXPECT_EQ(lease->bytes().data(), where);
  EXPECT_TRUE(std::equal(block.begin(), block.end(), lease->bytes().begin(),
                         lease->bytes().end()));
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.puts, 1u);
  EXPECT_EQ(stats.tiers[0].blocks, 1u);
  EXPECT_EQ(stats.tiers[0].used_bytes, kFootprint);
}

TEST(Reservation, ChecksumMismatchAtCommitIsDataLossAndStoresNothing) {
  auto store = Open(DramFor(4));
  auto block = MakeBlock(k64K, 8);
  block[block.size() / 2] ^= 0x40;  // A payload byte: the checksum fails.
  const absl::Status s = ReserveWriteCommit(*store, KeyFor(2), block);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("checksum"));
  EXPECT_FALSE(store->Exists(KeyFor(2)));
  EXPECT_TRUE(absl::IsNotFound(store->Get(KeyFor(2)).status()));
  EXPECT_EQ(DramUsed(*store), 0u);  // The range is free again.
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.puts, 0u);
  EXPECT_EQ(stats.rejected_puts, 1u);
  // The key is free: a good block under it is stored.
  EXPECT_TRUE(ReserveWriteCommit(*store, KeyFor(2), MakeBlock(k64K, 8)).ok());
}

TEST(Reservation, MalformedHeaderAtCommitIsInvalidArgumentAndStoresNothing) {
  auto store = Open(DramFor(4));
  auto block = MakeBlock(k64K, 9);
  block[0] ^= 0xff;  // Magic.
  const absl::Status s = ReserveWriteCommit(*store, KeyFor(3), block);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_FALSE(store->Exists(KeyFor(3)));
  EXPECT_EQ(DramUsed(*store), 0u);
}

TEST(Reservation, AbortAndDestructionFreeTheRangeAndReleaseTheKey) {
  auto store = Open(DramFor(4));
  const auto block = MakeBlock(k64K, 10);
  {
    auto r = store->Reserve(KeyFor(4), block.size());
    ASSERT_TRUE(r.ok()) << r.status();
    std::memcpy(r->data().data(), block.data(), block.size());
    EXPECT_EQ(DramUsed(*store), kFootprint);
    r->Abort();
    EXPECT_FALSE(r->active());
    EXPECT_EQ(DramUsed(*store), 0u);
    EXPECT_FALSE(store->Exists(KeyFor(4)));
    // Committing an aborted reservation is refused.
    const absl::Status s = store->Commit(*std::move(r));
    EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("reservation"));
  }
  {
    auto r = store->Reserve(KeyFor(4), block.size());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(DramUsed(*store), kFootprint);
  }  // Dropped uncommitted: aborted.
  EXPECT_EQ(DramUsed(*store), 0u);
  EXPECT_FALSE(store->Exists(KeyFor(4)));
  EXPECT_EQ(*store->Put(KeyFor(4), block), PutOutcome::kStored);
  EXPECT_EQ(store->Stats().puts, 1u);
}

TEST(Reservation, DuplicateKeyReserveIsAlreadyExistsFirstWriteWins) {
  auto store = Open(DramFor(4));
  const auto first = MakeBlock(k64K, 11);
  const auto second = MakeBlock(k64K, 12);
  ASSERT_EQ(*store->Put(KeyFor(5), first), PutOutcome::kStored);
  auto dup = store->Reserve(KeyFor(5), second.size());
  EXPECT_TRUE(absl::IsAlreadyExists(dup.status())) << dup.status();
  EXPECT_THAT(std::string(dup.status().message()), HasSubstr("key"));
  EXPECT_EQ(*store->Put(KeyFor(5), second), PutOutcome::kAlreadyPresent);
  auto lease = store->Get(KeyFor(5));
  ASSERT_TRUE(lease.ok());
  EXPECT_TRUE(std::equal(first.begin(), first.end(), lease->bytes().begin(),
                         lease->bytes().end()));
  EXPECT_EQ(store->Stats().duplicate_puts, 2u);
  EXPECT_EQ(DramUsed(*store), kFootprint);  // No leaked range.
}

TEST(Reservation, WritesOfAReservedKeyThatMayNotWaitAreAbortedNamingTheKey) {
  auto store = Open(DramFor(4));
  const auto first = MakeBlock(k64K, 11);
  const auto second = MakeBlock(k64K, 12);
  auto r = store->Reserve(KeyFor(6), first.size());
  ASSERT_TRUE(r.ok()) << r.status();
  PutOptions no_wait;
  no_wait.in_flight_write_wait = absl::ZeroDuration();
  auto dup = store->Reserve(KeyFor(6), second.size(), no_wait);
  EXPECT_TRUE(absl::IsAborted(dup.status())) << dup.status();
  EXPECT_THAT(std::string(dup.status().message()), HasSubstr("key"));
  PutOptions brief;
  brief.in_flight_write_wait = absl::Milliseconds(20);
  auto put = store->Put(KeyFor(6), second, brief);
  EXPECT_TRUE(absl::IsAborted(put.status())) << put.status();
  std::memcpy(r->data().data(), first.data(), first.size());
  ASSERT_TRUE(store->Commit(*std::move(r)).ok());
  auto lease = store->Get(KeyFor(6));
  ASSERT_TRUE(lease.ok());
  EXPECT_TRUE(std::equal(first.begin(), first.end(), lease->bytes().begin(),
                         lease->bytes().end()));
  EXPECT_EQ(store->Stats().duplicate_puts, 0u);  // Nothing was answered yet.
  EXPECT_EQ(DramUsed(*store), kFootprint);
}

// A write that meets another write of its key in flight answers only once
// that write's outcome is known: "already present" means a Get finds the
// block (read-your-writes), and when the first write fails the second one
// stores its own. Whichever thread gets there first, both hold.
TEST(Reservation, APutThatMeetsAReservationWaitsForItsOutcome) {
  auto store = Open(DramFor(8));
  const auto first = MakeBlock(k64K, 21);
  const auto second = MakeBlock(k64K, 22);
  for (bool commit : {true, false}) {
    SCOPED_TRACE(commit ? "committed" : "aborted");
    const BlockKey key = KeyFor(commit ? 30 : 31);
    auto r = store->Reserve(key, first.size());
    ASSERT_TRUE(r.ok()) << r.status();
    absl::StatusOr<PutOutcome> outcome;
    absl::StatusOr<BlockLease> seen = absl::UnknownError("not read");
    std::thread other([&] {
      outcome = store->Put(key, second);
      seen = store->Get(key);  // Right after the answer, same thread.
    });
    std::memcpy(r->data().data(), first.data(), first.size());
    if (commit) {
      ASSERT_TRUE(store->Commit(*std::move(r)).ok());
    } else {
      r->Abort();
    }
    other.join();
    ASSERT_TRUE(outcome.ok()) << outcome.status();
    EXPECT_EQ(*outcome,
              commit ? PutOutcome::kAlreadyPresent : PutOutcome::kStored);
    ASSERT_TRUE(seen.ok()) << seen.status();
    const auto& want = commit ? first : second;
    EXPECT_TRUE(std::equal(want.begin(), want.end(), seen->bytes().begin(),
                           seen->bytes().end()));
  }
}

// CopyIn copies and checksums in one pass (an eager network message), so
// Commit does not hash again; a block that fails CopyIn is refused by Commit
// as usual, and the header and length are checked either way.
TEST(Reservation, CommitOfBytesVerifiedWhileCopiedStillChecksTheFrame) {
  auto store = Open(DramFor(4));
  const auto block = MakeBlock(k64K, 41);
  auto r = store->Reserve(KeyFor(41), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->CopyIn(block).ok());
  ASSERT_TRUE(store->Commit(*std::move(r)).ok());
  auto lease = store->Get(KeyFor(41));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(std::equal(block.begin(), block.end(), lease->bytes().begin(),
                         lease->bytes().end()));
  // A bad magic is refused even so, and nothing is stored.
  r = store->Reserve(KeyFor(42), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  auto bad_magic = block;
  bad_magic[0] ^= 0xFF;
  EXPECT_TRUE(absl::IsInvalidArgument(r->CopyIn(bad_magic)));
  const absl::Status s = store->Commit(*std::move(r));
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_FALSE(store->Exists(KeyFor(42)));
  EXPECT_EQ(DramUsed(*store), kFootprint);
  // A payload flip is DATA_LOSS from CopyIn and from Commit, counted once.
  r = store->Reserve(KeyFor(43), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  auto flipped = block;
  flipped[flipped.size() - 1] ^= 1;
  EXPECT_TRUE(absl::IsDataLoss(r->CopyIn(flipped)));
  const uint64_t rejected = store->Stats().rejected_puts;
  EXPECT_TRUE(absl::IsDataLoss(store->Commit(*std::move(r))));
  EXPECT_EQ(store->Stats().rejected_puts, rejected + 1);
  // A block of another size is refused naming it.
  r = store->Reserve(KeyFor(44), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  const absl::Status short_copy =
      r->CopyIn(absl::MakeConstSpan(block).first(block.size() - 1));
  EXPECT_TRUE(absl::IsInvalidArgument(short_copy)) << short_copy;
  EXPECT_THAT(std::string(short_copy.message()), HasSubstr("block"));
}

// A holder that receives into data() itself and hashes each piece as it
// lands (the socket data plane) finishes that check; Commit then skips its
// own pass. A check that fails leaves Commit to refuse the block as usual.
TEST(Reservation, BytesHashedAsTheyLandedAreCommittedOrRefusedOnce) {
  auto store = Open(DramFor(4));
  const auto block = MakeBlock(k64K, 45);
  auto receive = [&](BlockReservation& r, const std::vector<uint8_t>& bytes) {
    StreamingBlockVerifier v;
    for (size_t off = 0; off < bytes.size(); off += 4096) {
      const size_t n = std::min<size_t>(4096, bytes.size() - off);
      std::memcpy(r.data().data() + off, bytes.data() + off, n);
      v.Update(r.data().subspan(off, n));
    }
    return r.FinishLandedCheck(v);
  };
  auto r = store->Reserve(KeyFor(45), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(receive(*r, block).ok());
  ASSERT_TRUE(store->Commit(*std::move(r)).ok());
  auto lease = store->Get(KeyFor(45));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(std::equal(block.begin(), block.end(), lease->bytes().begin(),
                         lease->bytes().end()));
  r = store->Reserve(KeyFor(46), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  auto flipped = block;
  flipped[flipped.size() / 2] ^= 1;
  EXPECT_TRUE(absl::IsDataLoss(receive(*r, flipped)));
  const uint64_t rejected = store->Stats().rejected_puts;
  EXPECT_TRUE(absl::IsDataLoss(store->Commit(*std::move(r))));
  EXPECT_EQ(store->Stats().rejected_puts, rejected + 1);
  EXPECT_FALSE(store->Exists(KeyFor(46)));
}

// A writer that checked the checksum as it wrote (a local client copying into
// the shared arena): Commit checks only header and length. A writer that lied
// stores a block that every read refuses: nothing wrong is returned.
TEST(Reservation, AWritersChecksumSkipsTheCommitPassButNotTheReadChecks) {
  auto store = Open(DramFor(4));
  const auto block = MakeBlock(k64K, 47);
  auto r = store->Reserve(KeyFor(47), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  std::memcpy(r->data().data(), block.data(), block.size());
  r->AcceptWritersChecksum();
  ASSERT_TRUE(store->Commit(*std::move(r)).ok());
  auto lease = store->Get(KeyFor(47));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(std::equal(block.begin(), block.end(), lease->bytes().begin(),
                         lease->bytes().end()));
  // The frame is still checked.
  r = store->Reserve(KeyFor(48), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  auto bad_magic = block;
  bad_magic[0] ^= 0xFF;
  std::memcpy(r->data().data(), bad_magic.data(), bad_magic.size());
  r->AcceptWritersChecksum();
  EXPECT_TRUE(absl::IsInvalidArgument(store->Commit(*std::move(r))));
  EXPECT_FALSE(store->Exists(KeyFor(48)));
  // A lying writer's block is stored, and refused by reads.
  r = store->Reserve(KeyFor(49), block.size());
  ASSERT_TRUE(r.ok()) << r.status();
  auto flipped = block;
  flipped[flipped.size() / 2] ^= 1;
  std::memcpy(r->data().data(), flipped.data(), flipped.size());
  r->AcceptWritersChecksum();
  ASSERT_TRUE(store->Commit(*std::move(r)).ok());
  EXPECT_TRUE(absl::IsDataLoss(store->Get(KeyFor(49)).status()));
}

// Arena space set aside before its key is known (a local connection's spare
// range): written first, then claimed for a key. A key already stored leaves
// the space with its holder; dropping it frees the range.
TEST(Reservation, SpaceReservedBeforeItsKeyIsClaimedWithTheBytesWritten) {
  auto store = Open(DramFor(4));
  const auto block = MakeBlock(k64K, 50);
  auto space = store->ReserveSpace(block.size());
  ASSERT_TRUE(space.ok()) << space.status();
  EXPECT_EQ(DramUsed(*store), kFootprint);  // Charged from here on.
  std::memcpy(space->data().data(), block.data(), block.size());
  auto r = store->ReserveInto(KeyFor(50), *space);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(space->active());
  ASSERT_TRUE(store->Commit(*std::move(r)).ok());
  auto lease = store->Get(KeyFor(50));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(std::equal(block.begin(), block.end(), lease->bytes().begin(),
                         lease->bytes().end()));
  EXPECT_EQ(DramUsed(*store), kFootprint);
  // A stored key: ALREADY_EXISTS, and the space is still the holder's.
  space = store->ReserveSpace(block.size());
  ASSERT_TRUE(space.ok()) << space.status();
  EXPECT_TRUE(absl::IsAlreadyExists(
      store->ReserveInto(KeyFor(50), *space).status()));
  EXPECT_TRUE(space->active());
  EXPECT_EQ(DramUsed(*store), 2 * kFootprint);
  *space = ArenaSpace();  // Dropped unused: freed.
  EXPECT_EQ(DramUsed(*store), kFootprint);
  EXPECT_TRUE(absl::IsFailedPrecondition(
      store->ReserveInto(KeyFor(51), *space).status()));
  // Sizes are checked as Reserve checks them.
  EXPECT_TRUE(absl::IsInvalidArgument(store->ReserveSpace(10).status()));
}

TEST(Reservation, SizeAndLabelChecksNameTheField) {
  auto o = DramFor(4);
  o.max_block_bytes = 2 * kBlockBytes;
  auto store = Open(o);
  auto big = store->Reserve(KeyFor(7), 2 * kBlockBytes + 1);
  EXPECT_TRUE(absl::IsInvalidArgument(big.status())) << big.status();
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("block:"));
  auto tiny = store->Reserve(KeyFor(7), 10);
  EXPECT_TRUE(absl::IsInvalidArgument(tiny.status())) << tiny.status();
  EXPECT_THAT(std::string(tiny.status().message()), HasSubstr("size:"));
  PutOptions labels;
  labels.tenant.assign(kMaxLabelBytes + 1, 't');
  auto bad = store->Reserve(KeyFor(7), kBlockBytes, labels);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("tenant"));
  auto durable = store->Reserve(KeyFor(7), kBlockBytes, {.durable = true});
  EXPECT_TRUE(absl::IsFailedPrecondition(durable.status()));
  EXPECT_THAT(std::string(durable.status().message()), HasSubstr("durable"));
  EXPECT_EQ(DramUsed(*store), 0u);
  EXPECT_FALSE(store->Exists(KeyFor(7)));
}

TEST(Reservation, CapacityPressureEvictsOnlyWhenAllowedAndNeverReservations) {
  auto store = Open(DramFor(4));
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_EQ(*store->Put(KeyFor(100 + i), MakeBlock(k64K, 100 + i)),
              PutOutcome::kStored);
  }
  // Full: without eviction the reservation is refused and nothing changes.
  auto no_evict = store->Reserve(KeyFor(200), kBlockBytes, {},
                                 ReserveOptions{.may_evict = false});
  EXPECT_TRUE(absl::IsResourceExhausted(no_evict.status()))
      << no_evict.status();
  EXPECT_FALSE(store->Exists(KeyFor(200)));
  EXPECT_EQ(store->Stats().tiers[0].blocks, 4u);
  // With eviction the least recently used block goes.
  ASSERT_TRUE(
      ReserveWriteCommit(*store, KeyFor(200), MakeBlock(k64K, 200)).ok());
  EXPECT_FALSE(store->Exists(KeyFor(100)));
  EXPECT_EQ(store->Stats().tiers[0].evictions, 1u);

  // Reservations in flight are not evictable: four of them fill the tier
  // and a fifth finds nothing to evict.
  std::vector<BlockReservation> held;
  for (uint64_t i = 0; i < 4; ++i) {
    auto r = store->Reserve(KeyFor(300 + i), kBlockBytes);
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
    held.push_back(*std::move(r));
  }
  auto fifth = store->Reserve(KeyFor(304), kBlockBytes);
  EXPECT_TRUE(absl::IsResourceExhausted(fifth.status())) << fifth.status();
  EXPECT_THAT(std::string(fifth.status().message()), HasSubstr("in-flight"));
  // Larger than the whole tier.
  auto huge = store->Reserve(KeyFor(305), 5 * kFootprint);
  EXPECT_TRUE(absl::IsResourceExhausted(huge.status())) << huge.status();
  held.clear();  // Aborted.
  EXPECT_EQ(DramUsed(*store), 0u);
  EXPECT_TRUE(
      ReserveWriteCommit(*store, KeyFor(304), MakeBlock(k64K, 304)).ok());
}

TEST(Reservation, DurableCommitReachesTheSsdTier) {
  ScratchDir dir;
  auto o = DramFor(4);
  o.ssd_path = dir.Sub("ssd");
  o.ssd_capacity_bytes = 64 << 20;
  const auto block = MakeBlock(k64K, 400);
  {
    auto store = Open(o);
    ASSERT_TRUE(
        ReserveWriteCommit(*store, KeyFor(400), block, {.durable = true}).ok());
    const StoreStats stats = store->Stats();
    EXPECT_EQ(stats.tiers[0].blocks, 1u);
    EXPECT_EQ(stats.tiers[1].blocks, 1u);
  }
  auto store = Open(o);  // DRAM is gone; SSD serves the same bytes.
  auto lease = store->Get(KeyFor(400));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->served_from(), TierKind::kSsd);
  EXPECT_TRUE(std::equal(block.begin(), block.end(), lease->bytes().begin(),
                         lease->bytes().end()));
}

TEST(Reservation, CommitWithoutEvictionLeavesItToEvictToWatermarks) {
  auto o = DramFor(8);
  o.high_watermark = 0.5;
  o.low_watermark = 0.25;
  auto store = Open(o);
  for (uint64_t i = 0; i < 6; ++i) {
    const auto block = MakeBlock(k64K, 500 + i);
    auto r = store->Reserve(KeyFor(500 + i), block.size());
    ASSERT_TRUE(r.ok()) << r.status();
    std::memcpy(r->data().data(), block.data(), block.size());
    ASSERT_TRUE(
        store->Commit(*std::move(r), CommitOptions{.evict = false}).ok());
  }
  EXPECT_EQ(store->Stats().tiers[0].blocks, 6u);  // Past the high watermark.
  EXPECT_TRUE(store->NeedsEviction());
  store->EvictToWatermarks();
  EXPECT_FALSE(store->NeedsEviction());
  EXPECT_EQ(store->Stats().tiers[0].blocks, 2u);  // Down to 25% of 8.
  EXPECT_TRUE(store->Exists(KeyFor(505)));  // The newest stay.
  EXPECT_FALSE(store->Exists(KeyFor(500)));
}

TEST(Reservation, FastPathGetServesSmallFirstTierBlocksOnly) {
  ScratchDir dir;
  auto o = DramFor(1);
  o.ssd_path = dir.Sub("ssd");
  o.promote_on_read = false;
  auto store = Open(o);
  const auto a = MakeBlock(k64K, 600);
  const auto b = MakeBlock(k64K, 601);
  ASSERT_EQ(*store->Put(KeyFor(600), a, {.durable = true}),
            PutOutcome::kStored);
  GetOptions fast;
  fast.fast_path_max_bytes = 1 << 20;
  auto hit = store->Get(KeyFor(600), fast);
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_EQ(hit->served_from(), TierKind::kDram);
  hit = absl::StatusOr<BlockLease>(absl::CancelledError("released"));
  const uint64_t gets = store->Stats().gets;
  // Too large for the fast path: refused, nothing counted.
  GetOptions tiny;
  tiny.fast_path_max_bytes = 1000;
  auto big = store->Get(KeyFor(600), tiny);
  EXPECT_TRUE(absl::IsFailedPrecondition(big.status())) << big.status();
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("fast_path"));
  EXPECT_EQ(store->Stats().gets, gets);
  // Only on SSD once a second block pushes it out of DRAM (one block fits).
  ASSERT_EQ(*store->Put(KeyFor(601), b), PutOutcome::kStored);
  auto ssd = store->Get(KeyFor(600), fast);
  EXPECT_TRUE(absl::IsFailedPrecondition(ssd.status())) << ssd.status();
  auto slow = store->Get(KeyFor(600));
  ASSERT_TRUE(slow.ok()) << slow.status();
  EXPECT_EQ(slow->served_from(), TierKind::kSsd);
  // A miss is a miss on the fast path too.
  EXPECT_TRUE(absl::IsNotFound(store->Get(KeyFor(602), fast).status()));
}

// Threads reserve, fill and commit (or corrupt, or abort) blocks under a
// small key space with eviction pressure, next to plain Puts and Removes.
// Whatever is readable afterwards is exactly its key's block, and the arena
// holds exactly the resident blocks (no leaked reservation).
TEST(Reservation, ConcurrentReserveCommitAbortKeepsEveryBlockExact) {
  const uint64_t seed = TestSeed();
  constexpr int kThreads = 4;
  constexpr int kOpsPerThread = 300;
  constexpr uint64_t kKeys = 24;
  // Half the keys fit, so reservations and puts keep evicting each other.
  // Equal-sized blocks make an eviction refilled by another thread leave
  // usage unchanged; the store must still see that room was freed (it
  // counts releases) and never answer a spurious RESOURCE_EXHAUSTED.
  auto store = Open(DramFor(kKeys / 2));
  std::vector<std::vector<uint8_t>> blocks;
  for (uint64_t k = 0; k < kKeys; ++k) blocks.push_back(MakeBlock(k64K, k));
  std::atomic<int> committed{0}, corrupt_refused{0}, unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      for (int i = 0; i < kOpsPerThread; ++i) {
        const uint64_t k = rng() % kKeys;
        const int action = static_cast<int>(rng() % 10);
        if (action == 0) {
          (void)store->Remove(KeyFor(k));
          continue;
        }
        if (action == 1) {
          auto p = store->Put(KeyFor(k), blocks[k]);
          if (!p.ok()) {
            ADD_FAILURE() << "put " << k << ": " << p.status();
            ++unexpected;
          }
          continue;
        }
        // Waits out another thread's reservation of the key; each thread
        // holds at most one, so the wait always ends.
        auto r = store->Reserve(KeyFor(k), kBlockBytes);
        if (absl::IsAlreadyExists(r.status())) continue;
        if (!r.ok()) {
          ADD_FAILURE() << "reserve " << k << ": " << r.status();
          ++unexpected;
          continue;
        }
        std::memcpy(r->data().data(), blocks[k].data(), kBlockBytes);
        if (action == 2) {
          r->Abort();
        } else if (action == 3) {
          r->data()[kBlockBytes - 1] ^= 1;
          const absl::Status s = store->Commit(*std::move(r));
          if (absl::IsDataLoss(s)) {
            ++corrupt_refused;
          } else {
            ADD_FAILURE() << "corrupt commit " << k << ": " << s;
            ++unexpected;
          }
        } else if (absl::Status s = store->Commit(*std::move(r)); s.ok()) {
          ++committed;
        } else {
          ADD_FAILURE() << "commit " << k << ": " << s;
          ++unexpected;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_GT(committed.load(), 0);
  EXPECT_GT(corrupt_refused.load(), 0);
  uint64_t resident = 0;
  for (uint64_t k = 0; k < kKeys; ++k) {
    auto lease = store->Get(KeyFor(k));
    if (absl::IsNotFound(lease.status())) continue;
    ASSERT_TRUE(lease.ok()) << "key " << k << ": " << lease.status();
    EXPECT_TRUE(std::equal(blocks[k].begin(), blocks[k].end(),
                           lease->bytes().begin(), lease->bytes().end()))
        << "key " << k;
    ++resident;
  }
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.tiers[0].blocks, resident);
  EXPECT_EQ(stats.tiers[0].used_bytes, resident * kFootprint);
}

}  // namespace
}  // namespace strata::kvstore
