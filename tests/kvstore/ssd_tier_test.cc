// SsdTier on a real RocksDB directory: writes, reads, capacity, erase,
// listing after reopen, and status mapping.
#include "kvstore/ssd_tier.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/fault_injection_file_system.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::kvstore {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::testing::StartsWith;

std::unique_ptr<SsdTier> OpenTier(const std::string& path, uint64_t capacity,
                                  std::shared_ptr<rocksdb::FileSystem> fs = nullptr) {
  SsdTierOptions o;
  o.path = path;
  o.capacity_bytes = capacity;
  o.file_system = std::move(fs);
  auto tier = SsdTier::Open(o);
  EXPECT_TRUE(tier.ok()) << tier.status();
  return *std::move(tier);
}

TEST(SsdTier, OpenRejectsMissingPathAndZeroCapacityNamingTheField) {
  SsdTierOptions o;
  EXPECT_THAT(std::string(SsdTier::Open(o).status().message()),
              StartsWith("ssd_path:"));
  ScratchDir dir;
  o.path = dir.path();
  o.capacity_bytes = 0;
  EXPECT_THAT(std::string(SsdTier::Open(o).status().message()),
              StartsWith("ssd_capacity_bytes:"));
}

TEST(SsdTier, WriteReadEraseRoundTripAndUsageTracksSizes) {
  ScratchDir dir;
  auto tier = OpenTier(dir.path(), 1 << 20);
  const auto a = MakeBlock(ShapeForBytes(64 << 10), 1);
  const auto b = MakeBlock(ShapeForBytes(16 << 10), 2);
  ASSERT_TRUE(tier->Write(KeyFor(1), a, {}).ok());
  ASSERT_TRUE(tier->Write(KeyFor(2), b, {}).ok());
  EXPECT_EQ(tier->used_bytes(), a.size() + b.size());
  auto read = tier->Read(KeyFor(1));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(std::ranges::equal(read->bytes, a));
  EXPECT_EQ(tier->Write(KeyFor(1), a, {}).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(tier->Erase(KeyFor(1)).ok());
  EXPECT_TRUE(tier->Erase(KeyFor(1)).ok());  // Absent is fine.
  EXPECT_EQ(tier->Read(KeyFor(1)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tier->used_bytes(), b.size());
  // The reader's bytes outlive the erase.
  EXPECT_TRUE(std::ranges::equal(read->bytes, a));
}

TEST(SsdTier, ReleaseCountGrowsOnEraseAndOnARefusedWrite) {
  ScratchDir dir;
  const auto block = MakeBlock(ShapeForBytes(64 << 10), 1);
  auto tier = OpenTier(dir.path(), 1 << 20);
  ASSERT_TRUE(tier->Write(KeyFor(1), block, {}).ok());
  const uint64_t releases = tier->release_count();
  ASSERT_TRUE(tier->Erase(KeyFor(1)).ok());
  EXPECT_EQ(tier->release_count(), releases + 1);
  ASSERT_TRUE(tier->Write(KeyFor(1), block, {}).ok());
  // A duplicate write reserved its bytes first and gives them back.
  EXPECT_EQ(tier->Write(KeyFor(1), block, {}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(tier->release_count(), releases + 2);
  EXPECT_EQ(tier->used_bytes(), block.size());
}

TEST(SsdTier, WriteBeyondCapacityIsResourceExhaustedAndWritesNothing) {
  ScratchDir dir;
  const auto block = MakeBlock(ShapeForBytes(64 << 10), 1);
  auto tier = OpenTier(dir.path(), block.size() + 10);
  ASSERT_TRUE(tier->Write(KeyFor(1), block, {}).ok());
  auto s = tier->Write(KeyFor(2), block, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(tier->Read(KeyFor(2)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tier->used_bytes(), block.size());
}

TEST(SsdTier, ListBlocksMetaAndUsageSurviveReopen) {
  ScratchDir dir;
  uint64_t total = 0;
  {
    auto tier = OpenTier(dir.path(), 64 << 20);
    for (int i = 0; i < 10; ++i) {
      const auto block = MakeBlock(ShapeForBytes((i + 1) << 12), i);
      BlockMeta meta{"tenant-" + std::to_string(i % 2), "model-x", 1000 + i};
      ASSERT_TRUE(tier->Write(KeyFor(i), block, meta).ok());
      total += block.size();
    }
  }
  auto tier = OpenTier(dir.path(), 64 << 20);
  EXPECT_EQ(tier->used_bytes(), total);
  auto blocks = tier->ListBlocks();
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(blocks->size(), 10u);
  for (const StoredBlock& b : *blocks) {
    auto read = tier->Read(b.key);
    ASSERT_TRUE(read.ok());
    EXPECT_EQ(read->bytes.size(), b.size);
    const uint64_t i = b.key.lo;  // KeyFor(i).lo == i.
    EXPECT_EQ(b.meta.tenant, "tenant-" + std::to_string(i % 2));
    EXPECT_EQ(b.meta.model, "model-x");
    EXPECT_EQ(b.meta.stored_at_unix_ms, static_cast<int64_t>(1000 + i));
  }
}

TEST(SsdTier, InjectedEnospcIsResourceExhaustedAndTheTierResumesAfterwards) {
  ScratchDir dir;
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  auto tier = OpenTier(dir.path(), 64 << 20, fs);
  const auto block = MakeBlock(ShapeForBytes(16 << 10), 1);
  fs->SetNoSpace(true, ".log");
  auto s = tier->Write(KeyFor(1), block, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(tier->used_bytes(), 0u);
  fs->SetNoSpace(false);
  ASSERT_TRUE(tier->Write(KeyFor(1), block, {}).ok());
  auto read = tier->Read(KeyFor(1));
  ASSERT_TRUE(read.ok());
  EXPECT_TRUE(std::ranges::equal(read->bytes, block));
}

}  // namespace
}  // namespace strata::kvstore
