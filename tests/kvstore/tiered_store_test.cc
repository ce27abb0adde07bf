// TieredStore semantics: round trips, idempotent puts, prefix lookup,
// capacity, eviction order, demotion/promotion, pins and leases.
#include "kvstore/tiered_store.h"

#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/dram_arena.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::kvstore {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::strata::kvstore::testing::TestSeed;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// 64 KiB payload blocks; DRAM sized to hold exactly `blocks` of them, and
// watermarks at 1.0 so eviction happens only when a block does not fit.
TieredStoreOptions DramOnly(size_t blocks, EvictionPolicyKind policy) {
  TieredStoreOptions o;
  o.dram_capacity_bytes =
      blocks * DramArena::Footprint(EncodedBlockSize(64 << 10));
  o.dram_policy = policy;
  o.high_watermark = 1.0;
  o.low_watermark = 1.0;
  return o;
}

const BlockShape k64K = ShapeForBytes(64 << 10);

std::vector<uint8_t> Read(TieredStore& store, const BlockKey& key) {
  auto lease = store.Get(key);
  EXPECT_TRUE(lease.ok()) << lease.status();
  if (!lease.ok()) return {};
  return {lease->bytes().begin(), lease->bytes().end()};
}

class EveryDType : public ::testing::TestWithParam<DType> {};

TEST_P(EveryDType, PutThenGetRoundTripsThroughDramAndSsd) {
  ScratchDir dir;
  TieredStoreOptions o;
  o.dram_capacity_bytes = 8 << 20;
  o.ssd_path = dir.Sub("ssd");
  auto store = TieredStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status();
  const BlockShape shape{GetParam(), 4, 256, 2, 64};
  const auto block = MakeBlock(shape, 42);
  ASSERT_EQ(*(*store)->Put(KeyFor(1), block, {.durable = true}),
            PutOutcome::kStored);

  EXPECT_EQ(Read(**store, KeyFor(1)), block);
  std::vector<uint8_t> dst(block.size());
  auto n = (*store)->GetInto(KeyFor(1), absl::MakeSpan(dst));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, block.size());
  EXPECT_EQ(dst, block);

  // Reopen: the DRAM copy is gone, the SSD copy serves the same bytes.
  store->reset();
  store = TieredStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status();
  auto lease = (*store)->Get(KeyFor(1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->served_from(), TierKind::kSsd);
  EXPECT_EQ(lease->header().shape, shape);
  EXPECT_TRUE(std::equal(block.begin(), block.end(), lease->bytes().begin(),
                         lease->bytes().end()));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EveryDType,
                         ::testing::ValuesIn(testing::kAllDTypes),
                         testing::DTypeParamName);

TEST(TieredStore, PutIsIdempotentAndTheFirstWriteWins) {
  auto store = *TieredStore::Open(DramOnly(4, EvictionPolicyKind::kLru));
  const auto first = MakeBlock(k64K, 1);
  const auto second = MakeBlock(k64K, 2);
  EXPECT_EQ(*store->Put(KeyFor(7), first), PutOutcome::kStored);
  EXPECT_EQ(*store->Put(KeyFor(7), second), PutOutcome::kAlreadyPresent);
  EXPECT_EQ(*store->Put(KeyFor(7), first), PutOutcome::kAlreadyPresent);
  EXPECT_EQ(Read(*store, KeyFor(7)), first);
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.puts, 1u);
  EXPECT_EQ(stats.duplicate_puts, 2u);
}

TEST(TieredStore, PutRejectsMalformedBlocksNamingTheFieldAndStoresNothing) {
  auto store = *TieredStore::Open(DramOnly(4, EvictionPolicyKind::kLru));
  auto block = MakeBlock(k64K, 1);

  auto empty = store->Put(KeyFor(1), {});
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(empty.status()), StartsWith("header:"));

  auto bad_magic = block;
  bad_magic[0] ^= 0xFF;
  EXPECT_THAT(Msg(store->Put(KeyFor(1), bad_magic).status()),
              StartsWith("magic:"));

  auto wrong_shape = block;
  wrong_shape[16] = 3;  // num_tokens no longer matches payload_length.
  auto s = store->Put(KeyFor(1), wrong_shape).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), StartsWith("payload_length:"));

  auto truncated = absl::MakeConstSpan(block).first(block.size() - 1);
  EXPECT_THAT(Msg(store->Put(KeyFor(1), truncated).status()),
              StartsWith("payload_length:"));

  auto flipped = block;
  flipped.back() ^= 1;
  s = store->Put(KeyFor(1), flipped).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Msg(s), StartsWith("checksum:"));

  EXPECT_FALSE(store->Exists(KeyFor(1)));
  EXPECT_EQ(store->Stats().rejected_puts, 5u);
  EXPECT_EQ(store->Stats().tiers[0].used_bytes, 0u);
}

TEST(TieredStore, PutRejectsBlockAboveMaxBlockBytesNamingTheField) {
  TieredStoreOptions o = DramOnly(4, EvictionPolicyKind::kLru);
  o.max_block_bytes = 32 << 10;
  auto store = *TieredStore::Open(o);
  auto s = store->Put(KeyFor(1), MakeBlock(k64K, 1)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("max_block_bytes"));
}

TEST(TieredStore, OpenRejectsBadOptionsNamingTheField) {
  TieredStoreOptions o;
  o.dram_capacity_bytes = 0;
  EXPECT_THAT(Msg(TieredStore::Open(o).status()),
              StartsWith("dram_capacity_bytes:"));
  o = TieredStoreOptions{};
  o.low_watermark = 0.99;
  o.high_watermark = 0.5;
  EXPECT_THAT(Msg(TieredStore::Open(o).status()), StartsWith("low_watermark:"));
  o = TieredStoreOptions{};
  o.high_watermark = 1.5;
  EXPECT_THAT(Msg(TieredStore::Open(o).status()),
              StartsWith("high_watermark:"));
}

TEST(TieredStore, LongestPrefixCountsLeadingStoredChunks) {
  auto store = *TieredStore::Open(DramOnly(8, EvictionPolicyKind::kLru));
  KeyNamespace ns;
  ns.model_id = "test/model";
  ns.dtype = DType::kFloat16;
  ns.num_layers = 1;
  ns.num_kv_heads = 8;
  ns.head_dim = 128;
  ns.chunk_tokens = 16;
  std::vector<uint32_t> tokens(5 * 16);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = 1000 + i;
  auto chunks = *ChunkKeys(ns, tokens);
  ASSERT_EQ(chunks.size(), 5u);
  std::vector<BlockKey> keys;
  for (const auto& c : chunks) keys.push_back(c.key);

  EXPECT_EQ(store->LongestPrefix(keys), 0u);
  for (int i : {0, 1, 2, 4}) ASSERT_TRUE(store->Put(keys[i], MakeBlock(k64K, i)).ok());
  EXPECT_EQ(store->LongestPrefix(keys), 3u);  // Chunk 3 is missing.
  ASSERT_TRUE(store->Put(keys[3], MakeBlock(k64K, 3)).ok());
  EXPECT_EQ(store->LongestPrefix(keys), 5u);
  EXPECT_EQ(store->LongestPrefix({}), 0u);

  // A prompt that diverges in chunk 2 shares only the first two chunks.
  tokens[2 * 16 + 5] = 7;
  auto diverged = *ChunkKeys(ns, tokens);
  std::vector<BlockKey> diverged_keys;
  for (const auto& c : diverged) diverged_keys.push_back(c.key);
  EXPECT_EQ(store->LongestPrefix(diverged_keys), 2u);
}

TEST(TieredStore, LruEvictsTheLeastRecentlyUsedBlock) {
  auto store = *TieredStore::Open(DramOnly(4, EvictionPolicyKind::kLru));
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(k64K, i)).ok());
  Read(*store, KeyFor(1));  // 2 is now least recently used.
  ASSERT_TRUE(store->Put(KeyFor(5), MakeBlock(k64K, 5)).ok());
  EXPECT_FALSE(store->Exists(KeyFor(2)));
  for (int i : {1, 3, 4, 5}) EXPECT_TRUE(store->Exists(KeyFor(i))) << i;
  ASSERT_TRUE(store->Put(KeyFor(6), MakeBlock(k64K, 6)).ok());
  EXPECT_FALSE(store->Exists(KeyFor(3)));
  EXPECT_EQ(store->Stats().tiers[0].evictions, 2u);
}

TEST(TieredStore, S3FifoKeepsReusedBlocksThroughAScan) {
  constexpr int kCapacity = 20;
  for (auto policy : {EvictionPolicyKind::kS3Fifo, EvictionPolicyKind::kLru}) {
    auto store = *TieredStore::Open(DramOnly(kCapacity, policy));
    // A hot set of 10 blocks, each read twice.
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(k64K, i)).ok());
    for (int round = 0; round < 2; ++round) {
      for (int i = 0; i < 10; ++i) Read(*store, KeyFor(i));
    }
    // A scan of 100 blocks read never.
    for (int i = 100; i < 200; ++i) ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(k64K, 0)).ok());
    int hot_left = 0;
    for (int i = 0; i < 10; ++i) hot_left += store->Exists(KeyFor(i));
    if (policy == EvictionPolicyKind::kS3Fifo) {
      EXPECT_EQ(hot_left, 10) << "S3-FIFO lost hot blocks to a scan";
    } else {
      EXPECT_EQ(hot_left, 0) << "LRU is expected to lose them";
    }
  }
}

TEST(TieredStore, EvictedBlocksAreDemotedToSsdAndPromotedBackOnRead) {
  ScratchDir dir;
  TieredStoreOptions o = DramOnly(4, EvictionPolicyKind::kLru);
  o.ssd_path = dir.Sub("ssd");
  auto store = *TieredStore::Open(o);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(k64K, i)).ok());
  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.tiers[0].demotions, 4u);
  EXPECT_EQ(stats.tiers[0].blocks, 4u);
  EXPECT_EQ(stats.tiers[1].blocks, 4u);
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(store->Exists(KeyFor(i))) << i;

  auto lease = store->Get(KeyFor(0));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->served_from(), TierKind::kSsd);
  EXPECT_TRUE(std::ranges::equal(lease->bytes(), MakeBlock(k64K, 0)));
  lease = BlockLease();
  EXPECT_EQ(store->Stats().tiers[0].promotions, 1u);
  auto again = store->Get(KeyFor(0));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->served_from(), TierKind::kDram);
  stats = store->Stats();
  EXPECT_EQ(stats.tiers[0].hits, 1u);
  EXPECT_EQ(stats.tiers[1].hits, 1u);
  EXPECT_EQ(stats.tiers[0].misses, 1u);
}

TEST(TieredStore, PinnedBlockIsNotEvictedUntilItsTtlPasses) {
  ManualClock clock;
  TieredStoreOptions o = DramOnly(4, EvictionPolicyKind::kLru);
  o.clock = &clock;
  auto store = *TieredStore::Open(o);
  ASSERT_TRUE(store->Put(KeyFor(0), MakeBlock(k64K, 0)).ok());
  ASSERT_TRUE(store->Pin(KeyFor(0), absl::Seconds(10)).ok());
  EXPECT_EQ(store->Stats().pinned_blocks, 1u);
  for (int i = 1; i < 20; ++i) ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(k64K, i)).ok());
  EXPECT_TRUE(store->Exists(KeyFor(0)));

  clock.Advance(absl::Seconds(11));
  EXPECT_EQ(store->Stats().pinned_blocks, 0u);
  for (int i = 20; i < 24; ++i) ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(k64K, i)).ok());
  EXPECT_FALSE(store->Exists(KeyFor(0)));
}

TEST(TieredStore, UnpinMakesABlockEvictableAgain) {
  ManualClock clock;
  TieredStoreOptions o = DramOnly(2, EvictionPolicyKind::kLru);
  o.clock = &clock;
  auto store = *TieredStore::Open(o);
  ASSERT_TRUE(store->Put(KeyFor(0), MakeBlock(k64K, 0)).ok());
  ASSERT_TRUE(store->Pin(KeyFor(0), absl::Hours(1)).ok());
  ASSERT_TRUE(store->Put(KeyFor(1), MakeBlock(k64K, 1)).ok());
  ASSERT_TRUE(store->Put(KeyFor(2), MakeBlock(k64K, 2)).ok());
  EXPECT_TRUE(store->Exists(KeyFor(0)));
  ASSERT_TRUE(store->Unpin(KeyFor(0)).ok());
  ASSERT_TRUE(store->Put(KeyFor(3), MakeBlock(k64K, 3)).ok());
  EXPECT_FALSE(store->Exists(KeyFor(0)));
}

TEST(TieredStore, PinRejectsBadTtlNamingItAndMissingKeysAsNotFound) {
  auto store = *TieredStore::Open(DramOnly(2, EvictionPolicyKind::kLru));
  ASSERT_TRUE(store->Put(KeyFor(0), MakeBlock(k64K, 0)).ok());
  for (absl::Duration ttl : {absl::ZeroDuration(), absl::Seconds(-1),
                             absl::Hours(25)}) {
    auto s = store->Pin(KeyFor(0), ttl);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Msg(s), StartsWith("ttl:"));
  }
  EXPECT_EQ(store->Pin(KeyFor(9), absl::Seconds(1)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Unpin(KeyFor(9)).code(), absl::StatusCode::kNotFound);
}

TEST(TieredStore, PutFailsWithResourceExhaustedWhenEveryBlockIsPinned) {
  auto store = *TieredStore::Open(DramOnly(2, EvictionPolicyKind::kS3Fifo));
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(k64K, i)).ok());
    ASSERT_TRUE(store->Pin(KeyFor(i), absl::Hours(1)).ok());
  }
  auto s = store->Put(KeyFor(2), MakeBlock(k64K, 2)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(s), HasSubstr("dram tier: no room"));
  EXPECT_FALSE(store->Exists(KeyFor(2)));
  EXPECT_TRUE(store->Exists(KeyFor(0)));
  EXPECT_TRUE(store->Exists(KeyFor(1)));
}

TEST(TieredStore, LeasedBlockIsNotEvictedWhileHeldAndStaysReadableAfterTtl) {
  ManualClock clock;
  TieredStoreOptions o = DramOnly(2, EvictionPolicyKind::kLru);
  o.clock = &clock;
  auto store = *TieredStore::Open(o);
  const auto block0 = MakeBlock(k64K, 0);
  ASSERT_TRUE(store->Put(KeyFor(0), block0).ok());
  auto lease = store->Get(KeyFor(0), {.lease_ttl = absl::Seconds(5)});
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(store->Stats().leased_blocks, 1u);

  // While leased, puts evict the other block, never block 0.
  for (int i = 1; i < 5; ++i) ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(k64K, i)).ok());
  EXPECT_TRUE(store->Exists(KeyFor(0)));

  // The lease expires while still held: the block becomes evictable, but
  // the holder's bytes stay valid (the arena range is not reused).
  clock.Advance(absl::Seconds(6));
  ASSERT_TRUE(store->Put(KeyFor(5), MakeBlock(k64K, 5)).ok());
  ASSERT_TRUE(store->Put(KeyFor(6), MakeBlock(k64K, 6)).ok());
  EXPECT_FALSE(store->Exists(KeyFor(0)));
  EXPECT_TRUE(std::ranges::equal(lease->bytes(), block0));
  // Its range is still charged: only one other block fits until release.
  auto s = store->Put(KeyFor(7), MakeBlock(k64K, 7));
  EXPECT_TRUE(s.ok()) << s.status();
  *lease = BlockLease();
  EXPECT_EQ(store->Stats().leased_blocks, 0u);
}

TEST(TieredStore, ReleasedLeaseMakesTheBlockEvictable) {
  auto store = *TieredStore::Open(DramOnly(2, EvictionPolicyKind::kLru));
  ASSERT_TRUE(store->Put(KeyFor(0), MakeBlock(k64K, 0)).ok());
  { auto lease = store->Get(KeyFor(0)); ASSERT_TRUE(lease.ok()); }
  ASSERT_TRUE(store->Put(KeyFor(1), MakeBlock(k64K, 1)).ok());
  ASSERT_TRUE(store->Put(KeyFor(2), MakeBlock(k64K, 2)).ok());
  EXPECT_FALSE(store->Exists(KeyFor(0)));
}

TEST(TieredStore, RemoveDeletesEveryCopyButLeaseHoldersKeepTheirBytes) {
  ScratchDir dir;
  TieredStoreOptions o = DramOnly(4, EvictionPolicyKind::kLru);
  o.ssd_path = dir.Sub("ssd");
  o.write_through = true;
  auto store = *TieredStore::Open(o);
  const auto block = MakeBlock(k64K, 3);
  ASSERT_TRUE(store->Put(KeyFor(3), block).ok());
  auto lease = store->Get(KeyFor(3));
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(store->Remove(KeyFor(3)).ok());
  EXPECT_FALSE(store->Exists(KeyFor(3)));
  EXPECT_EQ(store->Get(KeyFor(3)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Remove(KeyFor(3)).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(std::ranges::equal(lease->bytes(), block));
  EXPECT_EQ(store->Stats().tiers[1].used_bytes, 0u);
  // The key can be stored again.
  EXPECT_EQ(*store->Put(KeyFor(3), block), PutOutcome::kStored);
}

TEST(TieredStore, GetIntoRejectsSmallDestinationNamingDstAndKeepsBlock) {
  auto store = *TieredStore::Open(DramOnly(2, EvictionPolicyKind::kLru));
  const auto block = MakeBlock(k64K, 0);
  ASSERT_TRUE(store->Put(KeyFor(0), block).ok());
  std::vector<uint8_t> small(block.size() - 1);
  auto n = store->GetInto(KeyFor(0), absl::MakeSpan(small));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(Msg(n.status()), StartsWith("dst:"));
  EXPECT_TRUE(store->Exists(KeyFor(0)));
  EXPECT_EQ(store->Get(KeyFor(1)).status().code(), absl::StatusCode::kNotFound);
}

TEST(TieredStore, DescribeReportsSizeLabelsAndPinOfAStoredBlock) {
  auto store = *TieredStore::Open(DramOnly(4, EvictionPolicyKind::kLru));
  const auto block = MakeBlock(k64K, 3);
  PutOptions put;
  put.tenant = "acme";
  put.model = "llama";
  ASSERT_TRUE(store->Put(KeyFor(3), block, put).ok());
  auto info = store->Describe(KeyFor(3));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size, block.size());
  EXPECT_EQ(info->meta.tenant, "acme");
  EXPECT_EQ(info->meta.model, "llama");
  EXPECT_EQ(info->pinned_for, absl::ZeroDuration());
  ASSERT_TRUE(store->Pin(KeyFor(3), absl::Minutes(5)).ok());
  info = store->Describe(KeyFor(3));
  ASSERT_TRUE(info.ok());
  EXPECT_GT(info->pinned_for, absl::Minutes(4));
  auto missing = store->Describe(KeyFor(4));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(missing.status()), StartsWith("key:"));
}

TEST(TieredStore, BatchGetAnswersEachKeyInOrder) {
  auto store = *TieredStore::Open(DramOnly(4, EvictionPolicyKind::kLru));
  ASSERT_TRUE(store->Put(KeyFor(0), MakeBlock(k64K, 0)).ok());
  ASSERT_TRUE(store->Put(KeyFor(2), MakeBlock(k64K, 2)).ok());
  std::vector<BlockKey> keys = {KeyFor(0), KeyFor(1), KeyFor(2)};
  auto results = store->BatchGet(keys);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_TRUE(results[0].ok());
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(results[2].ok());
  EXPECT_TRUE(std::ranges::equal(results[2]->bytes(), MakeBlock(k64K, 2)));
}

// 24 blocks of 1 MiB read on 4 threads, on the caller's only, and on the
// size-picked count. Each result is its own key's: exact bytes, a miss, or a
// too-small destination.
TEST(TieredStore, BatchGetIntoAnswersEachKeyInOrderOnSeveralThreads) {
  const BlockShape k1M = ShapeForBytes(1 << 20);
  constexpr size_t kBlocks = 24;
  TieredStoreOptions o;
  o.dram_capacity_bytes =
      (kBlocks + 1) * DramArena::Footprint(EncodedBlockSize(1 << 20));
  auto store = *TieredStore::Open(o);
  std::vector<BlockKey> keys;
  std::vector<std::vector<uint8_t>> blocks, dst_bytes;
  for (size_t i = 0; i < kBlocks; ++i) {
    keys.push_back(KeyFor(i));
    blocks.push_back(MakeBlock(k1M, i));
    if (i != 5) {
      ASSERT_TRUE(store->Put(keys[i], blocks[i]).ok());
    }
    dst_bytes.emplace_back(i == 9 ? 100 : blocks[i].size());
  }
  std::vector<absl::Span<uint8_t>> dsts;
  for (auto& d : dst_bytes) dsts.push_back(absl::MakeSpan(d));
  for (size_t threads : {size_t{4}, size_t{1}, size_t{0}}) {
    auto results = store->BatchGetInto(keys, dsts, threads);
    ASSERT_EQ(results.size(), kBlocks);
    for (size_t i = 0; i < kBlocks; ++i) {
      SCOPED_TRACE(absl::StrCat("block ", i, ", threads ", threads));
      if (i == 5) {
        EXPECT_EQ(results[i].status().code(), absl::StatusCode::kNotFound);
      } else if (i == 9) {
        EXPECT_EQ(results[i].status().code(), absl::StatusCode::kOutOfRange);
      } else {
        ASSERT_TRUE(results[i].ok()) << results[i].status();
        EXPECT_EQ(*results[i], blocks[i].size());
        EXPECT_TRUE(std::ranges::equal(dst_bytes[i], blocks[i]));
      }
    }
  }
  // A mismatched batch is refused for every key, naming the field.
  auto refused = store->BatchGetInto(keys, absl::MakeSpan(dsts).subspan(1));
  ASSERT_EQ(refused.size(), kBlocks);
  EXPECT_EQ(refused[0].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(refused[0].status()), StartsWith("dsts:"));
}

// After a restart every block is on SSD only; a batch read on 8 threads
// promotes them into DRAM concurrently (the engine's load path from SSD).
// Every result is exact, and each block is promoted once.
TEST(TieredStore, BatchGetIntoFromSsdOnSeveralThreadsPromotesExactBlocks) {
  const BlockShape k1M = ShapeForBytes(1 << 20);
  constexpr size_t kBlocks = 48;
  ScratchDir dir;
  TieredStoreOptions o;
  o.dram_capacity_bytes =
      2 * kBlocks * DramArena::Footprint(EncodedBlockSize(1 << 20));
  o.ssd_path = dir.Sub("ssd");
  o.ssd_capacity_bytes = uint64_t{1} << 30;
  o.write_through = true;
  std::vector<BlockKey> keys;
  std::vector<std::vector<uint8_t>> blocks;
  {
    auto store = *TieredStore::Open(o);
    for (size_t i = 0; i < kBlocks; ++i) {
      keys.push_back(KeyFor(i));
      blocks.push_back(MakeBlock(k1M, i));
      ASSERT_TRUE(store->Put(keys[i], blocks[i]).ok());
    }
  }
  auto store = *TieredStore::Open(o);
  for (int round = 0; round < 2; ++round) {  // From SSD, then from DRAM.
    std::vector<std::vector<uint8_t>> dst_bytes(kBlocks);
    std::vector<absl::Span<uint8_t>> dsts;
    for (size_t i = 0; i < kBlocks; ++i) {
      dst_bytes[i].resize(blocks[i].size());
      dsts.push_back(absl::MakeSpan(dst_bytes[i]));
    }
    auto results = store->BatchGetInto(keys, dsts, 8);
    for (size_t i = 0; i < kBlocks; ++i) {
      SCOPED_TRACE(absl::StrCat("block ", i, ", round ", round));
      ASSERT_TRUE(results[i].ok()) << results[i].status();
      EXPECT_TRUE(std::ranges::equal(dst_bytes[i], blocks[i]));
    }
  }
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.tiers[0].blocks, kBlocks);
  EXPECT_EQ(stats.tiers[0].promotions, kBlocks);
}

// Random puts, gets, removes and pins of mixed sizes over DRAM + SSD. After
// every step no tier is over capacity and every read returns exact bytes.
TEST(TieredStore, CapacityIsNeverExceededUnderASeededRandomWorkload) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  ScratchDir dir;
  TieredStoreOptions o;
  o.dram_capacity_bytes = 3 << 20;
  o.ssd_path = dir.Sub("ssd");
  o.ssd_capacity_bytes = 6 << 20;
  o.dram_policy = EvictionPolicyKind::kS3Fifo;
  o.high_watermark = 0.9;
  o.low_watermark = 0.7;
  auto store = *TieredStore::Open(o);
  const uint64_t sizes[] = {4 << 10, 16 << 10, 64 << 10, 256 << 10, 512 << 10};
  auto shape_of = [&](uint64_t id) { return ShapeForBytes(sizes[id % 5]); };

  for (int step = 0; step < 3000; ++step) {
    const uint64_t id = rng() % 200;
    switch (rng() % 10) {
      case 0: case 1: case 2: case 3: {
        auto s = store->Put(KeyFor(id), MakeBlock(shape_of(id), id));
        ASSERT_TRUE(s.ok() || absl::IsResourceExhausted(s.status()))
            << "step " << step << ": " << s.status();
        break;
      }
      case 4: case 5: case 6: case 7: {
        auto lease = store->Get(KeyFor(id));
        if (lease.ok()) {
          ASSERT_TRUE(std::ranges::equal(lease->bytes(),
                                         MakeBlock(shape_of(id), id)))
              << "wrong bytes for id " << id << " at step " << step;
        } else {
          ASSERT_EQ(lease.status().code(), absl::StatusCode::kNotFound)
              << lease.status();
        }
        break;
      }
      case 8:
        store->Remove(KeyFor(id)).IgnoreError();
        break;
      case 9:
        store->Pin(KeyFor(id), absl::Milliseconds(1 + rng() % 50))
            .IgnoreError();
        break;
    }
    for (const TierStats& t : store->Stats().tiers) {
      ASSERT_LE(t.used_bytes, t.capacity_bytes)
          << TierName(t.kind) << " over capacity at step " << step;
    }
  }
  const StoreStats stats = store->Stats();
  EXPECT_GT(stats.tiers[0].evictions, 0u);
  EXPECT_GT(stats.tiers[1].evictions, 0u);
  EXPECT_EQ(stats.tiers[0].checksum_failures + stats.tiers[1].checksum_failures,
            0u);
}

TEST(TieredStore, ConcurrentPutsGetsAndRemovesNeverReturnWrongBytes) {
  const uint64_t seed = TestSeed();
  ScratchDir dir;
  TieredStoreOptions o;
  o.dram_capacity_bytes = 2 << 20;
  o.ssd_path = dir.Sub("ssd");
  o.ssd_capacity_bytes = 4 << 20;
  auto store = *TieredStore::Open(o);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      for (int step = 0; step < 1500; ++step) {
        const uint64_t id = rng() % 64;
        const BlockShape shape = ShapeForBytes(id % 2 ? 64 << 10 : 16 << 10);
        switch (rng() % 4) {
          case 0:
            store->Put(KeyFor(id), MakeBlock(shape, id)).IgnoreError();
            break;
          case 1:
            store->Remove(KeyFor(id)).IgnoreError();
            break;
          default: {
            auto lease = store->Get(KeyFor(id));
            if (lease.ok() &&
                !std::ranges::equal(lease->bytes(), MakeBlock(shape, id))) {
              ++wrong;
            } else if (!lease.ok() && !absl::IsNotFound(lease.status())) {
              ++wrong;
            }
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  for (const TierStats& t : store->Stats().tiers) {
    EXPECT_LE(t.used_bytes, t.capacity_bytes);
  }
}

}  // namespace
}  // namespace strata::kvstore

namespace strata::kvstore {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;

// The evict tests' store: 8 MiB of DRAM over an SSD tier in `dir`, stamped
// by `clock`; their blocks are 16 KiB (EvictTestShape).
TieredStoreOptions EvictTestOptions(
    const ::strata::kvstore::testing::ScratchDir& dir, ManualClock* clock) {
  TieredStoreOptions o;
  o.dram_capacity_bytes = 8 << 20;
  o.ssd_path = dir.Sub("ssd");
  o.clock = clock;
  return o;
}
BlockShape EvictTestShape() {
  return ::strata::kvstore::testing::ShapeForBytes(16 << 10);
}

TEST(TieredStoreEvict, EvictMatchingFiltersByTenantModelPrefixAndAgeAndSurvivesRestart) {
  ::strata::kvstore::testing::ScratchDir dir;
  ManualClock clock;
  TieredStoreOptions o = EvictTestOptions(dir, &clock);
  o.write_through = true;
  const BlockShape shape = EvictTestShape();
  {
    auto store = *TieredStore::Open(o);
    for (int i = 0; i < 12; ++i) {
      PutOptions put;
      put.tenant = i % 2 ? "acme" : "globex";
      put.model = i % 3 ? "llama" : "qwen";
      ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(shape, i), put).ok());
      clock.Advance(absl::Seconds(10));
    }
  }
  // Labels and ages come back from the SSD tier after a restart.
  auto store = *TieredStore::Open(o);
  auto dry = store->EvictMatching({.tenant = "acme", .dry_run = true});
  ASSERT_TRUE(dry.ok()) << dry.status();
  EXPECT_EQ(dry->blocks, 6u);
  EXPECT_EQ(store->Stats().tiers[1].blocks, 12u);  // Dry run changed nothing.

  ASSERT_TRUE(store->Pin(KeyFor(1), absl::Hours(1)).ok());
  auto acme_llama = store->EvictMatching({.tenant = "acme", .model = "llama"});
  ASSERT_TRUE(acme_llama.ok());
  // acme = odd i; llama = i % 3 != 0 -> i in {1, 5, 7, 11}; 1 is pinned.
  EXPECT_EQ(acme_llama->blocks, 3u);
  EXPECT_EQ(acme_llama->skipped_pinned, 1u);
  for (int i : {5, 7, 11}) EXPECT_FALSE(store->Exists(KeyFor(i))) << i;
  EXPECT_TRUE(store->Exists(KeyFor(1)));

  // Age: blocks stored at least 85 s before "now" (i <= 3 at 10 s spacing,
  // now = 120 s after the first put).
  auto old = store->EvictMatching({.min_age = absl::Seconds(85), .dry_run = true});
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->blocks, 3u);  // i = 0, 2, 3 (1 is pinned).

  const std::string hex = KeyFor(4).ToHex();
  auto by_prefix = store->EvictMatching({.key_prefix = hex.substr(0, 12)});
  ASSERT_TRUE(by_prefix.ok());
  EXPECT_EQ(by_prefix->blocks, 1u);
  EXPECT_FALSE(store->Exists(KeyFor(4)));

  auto bad = store->EvictMatching({.key_prefix = "xyz"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), ::testing::StartsWith("key_prefix:"));
}

// The store stamps blocks with its wall clock, which may step back (NTP, a
// migrated VM). A filter without a minimum age still matches such blocks.
TEST(TieredStoreEvict, NoMinAgeMatchesBlocksStampedAheadOfAClockThatSteppedBack) {
  ::strata::kvstore::testing::ScratchDir dir;
  ManualClock clock;
  const BlockShape shape = EvictTestShape();
  auto store = *TieredStore::Open(EvictTestOptions(dir, &clock));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(store->Put(KeyFor(i), MakeBlock(shape, i)).ok());
  }
  clock.Advance(-absl::Seconds(2));
  auto dry = store->EvictMatching({.dry_run = true});
  ASSERT_TRUE(dry.ok()) << dry.status();
  EXPECT_EQ(dry->blocks, 3u);
  // A minimum age still compares stamps: none is 1 s old by this clock.
  auto aged = store->EvictMatching({.min_age = absl::Seconds(1), .dry_run = true});
  ASSERT_TRUE(aged.ok()) << aged.status();
  EXPECT_EQ(aged->blocks, 0u);
  auto real = store->EvictMatching({});
  ASSERT_TRUE(real.ok()) << real.status();
  EXPECT_EQ(real->blocks, 3u);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(store->Exists(KeyFor(i))) << i;
}

}  // namespace
}  // namespace strata::kvstore

namespace strata::kvstore {
namespace {

// Regression: mixed block sizes fragment the arena; a put must keep evicting
// until a large enough range coalesces, not stop at the byte watermark.
TEST(TieredStoreFragmentation, MixedSizePutsKeepEvictingUntilARangeFits) {
  using ::strata::kvstore::testing::KeyFor;
  using ::strata::kvstore::testing::MakeBlock;
  using ::strata::kvstore::testing::ShapeForBytes;
  const uint64_t sizes[] = {1 << 20, 2 << 20, 3 << 19};
  for (bool with_ssd : {false, true}) {
    ::strata::kvstore::testing::ScratchDir dir;
    TieredStoreOptions o;
    o.dram_capacity_bytes = 8 << 20;
    if (with_ssd) {
      o.ssd_path = dir.Sub("ssd");
      o.write_through = true;
    }
    auto store = *TieredStore::Open(o);
    for (int i = 0; i < 60; ++i) {
      auto put = store->Put(KeyFor(i), MakeBlock(ShapeForBytes(sizes[i % 3]), i));
      ASSERT_TRUE(put.ok()) << "put " << i << " (ssd=" << with_ssd
                            << "): " << put.status();
    }
    EXPECT_TRUE(store->Exists(KeyFor(59)));
    if (with_ssd) {
      for (int i = 0; i < 60; ++i) EXPECT_TRUE(store->Exists(KeyFor(i))) << i;
    }
  }
}

}  // namespace
}  // namespace strata::kvstore
