// TieredStore under faults: corrupted DRAM and SSD bytes, injected read
// errors and ENOSPC through the SSD tier's file-system seam, and restarts.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/fault_injection_file_system.h"
#include "kvstore/tiered_store.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::kvstore {
namespace {

using ::strata::kvstore::testing::FlipDramPayloadByte;
using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

const BlockShape k64K = ShapeForBytes(64 << 10);

uint64_t ChecksumFailures(const TieredStore& store) {
  uint64_t n = 0;
  for (const TierStats& t : store.Stats().tiers) n += t.checksum_failures;
  return n;
}

// DRAM for a few blocks, every put also written to an SSD tier in `dir`.
std::unique_ptr<TieredStore> OpenWriteThrough(const ScratchDir& dir) {
  TieredStoreOptions o;
  o.dram_capacity_bytes = 4 << 20;
  o.ssd_path = dir.Sub("ssd");
  o.write_through = true;
  auto store = TieredStore::Open(o);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

TEST(TieredStoreFaults, FlippedDramByteIsDataLossCountedDroppedNeverReturned) {
  TieredStoreOptions o;
  o.dram_capacity_bytes = 4 << 20;
  auto store = *TieredStore::Open(o);
  ASSERT_TRUE(store->Put(KeyFor(1), MakeBlock(k64K, 1)).ok());
  ASSERT_TRUE(store->Put(KeyFor(2), MakeBlock(k64K, 2)).ok());
  FlipDramPayloadByte(*store, KeyFor(1));

  auto lease = store->Get(KeyFor(1));
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Msg(lease.status()), HasSubstr("checksum"));
  EXPECT_EQ(ChecksumFailures(*store), 1u);
  EXPECT_FALSE(store->Exists(KeyFor(1)));  // Dropped.
  EXPECT_EQ(store->Get(KeyFor(1)).status().code(), absl::StatusCode::kNotFound);
  std::vector<uint8_t> dst(EncodedBlockSize(k64K.RawBytes()));
  EXPECT_EQ(store->GetInto(KeyFor(1), absl::MakeSpan(dst)).status().code(),
            absl::StatusCode::kNotFound);
  // The neighbour is untouched.
  auto other = store->Get(KeyFor(2));
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(std::ranges::equal(other->bytes(), MakeBlock(k64K, 2)));
}

TEST(TieredStoreFaults, GetIntoDetectsAFlippedDramByte) {
  auto store = *TieredStore::Open(TieredStoreOptions{.dram_capacity_bytes = 4 << 20});
  ASSERT_TRUE(store->Put(KeyFor(1), MakeBlock(k64K, 1)).ok());
  FlipDramPayloadByte(*store, KeyFor(1));
  std::vector<uint8_t> dst(EncodedBlockSize(k64K.RawBytes()));
  auto n = store->GetInto(KeyFor(1), absl::MakeSpan(dst));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ChecksumFailures(*store), 1u);
  EXPECT_FALSE(store->Exists(KeyFor(1)));
}

TEST(TieredStoreFaults, CorruptDramCopyFallsBackToTheGoodSsdCopy) {
  ScratchDir dir;
  auto store = OpenWriteThrough(dir);
  ASSERT_NE(store, nullptr);
  const auto block = MakeBlock(k64K, 1);
  ASSERT_TRUE(store->Put(KeyFor(1), block).ok());
  FlipDramPayloadByte(*store, KeyFor(1));
  auto lease = store->Get(KeyFor(1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->served_from(), TierKind::kSsd);
  EXPECT_TRUE(std::ranges::equal(lease->bytes(), block));
  EXPECT_EQ(store->Stats().tiers[0].checksum_failures, 1u);
}

// verify_first_tier = false (a caller that verifies where the bytes land):
// a DRAM copy is served without the checksum pass, lower tiers are still
// verified, and the caller's verified read afterwards drops the bad copy.
TEST(TieredStoreFaults, UnverifiedDramReadsLeaveTheCheckToTheCallerOnly) {
  ScratchDir dir;
  auto store = OpenWriteThrough(dir);
  ASSERT_NE(store, nullptr);
  const auto block = MakeBlock(k64K, 1);
  ASSERT_TRUE(store->Put(KeyFor(1), block).ok());
  FlipDramPayloadByte(*store, KeyFor(1));
  GetOptions unverified;
  unverified.verify_first_tier = false;
  auto lease = store->Get(KeyFor(1), unverified);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->served_from(), TierKind::kDram);
  EXPECT_FALSE(ParseBlock(lease->bytes()).ok());  // The caller's check fails.
  EXPECT_EQ(ChecksumFailures(*store), 0u);
  lease = store->Get(KeyFor(1));  // Asked again, verified.
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->served_from(), TierKind::kSsd);
  EXPECT_TRUE(std::ranges::equal(lease->bytes(), block));
  EXPECT_EQ(store->Stats().tiers[0].checksum_failures, 1u);
  // The SSD copy is verified even unasked (the DRAM copy was dropped, and
  // promotion put back a good one).
  lease = store->Get(KeyFor(1), unverified);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(std::ranges::equal(lease->bytes(), block));
  // A header that no longer parses is refused even unverified.
  auto dram = store->Get(KeyFor(1));
  ASSERT_TRUE(dram.ok());
  ASSERT_EQ(dram->served_from(), TierKind::kDram);
  const_cast<uint8_t*>(dram->bytes().data())[0] ^= 0xFF;  // The magic.
  dram = absl::StatusOr<BlockLease>(absl::UnknownError("released"));
  lease = store->Get(KeyFor(1), unverified);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->served_from(), TierKind::kSsd);
  EXPECT_TRUE(std::ranges::equal(lease->bytes(), block));
}

// Opens a store whose SSD tier writes through `fs`.
struct FaultyStore {
  explicit FaultyStore(const std::string& path, bool write_through = true) {
    fs = std::make_shared<FaultInjectionFileSystem>();
    options.dram_capacity_bytes = 4 << 20;
    options.ssd_path = path;
    options.ssd_file_system = fs;
    options.write_through = write_through;
    auto opened = TieredStore::Open(options);
    EXPECT_TRUE(opened.ok()) << opened.status();
    store = *std::move(opened);
  }
  std::shared_ptr<FaultInjectionFileSystem> fs;
  TieredStoreOptions options;
  std::unique_ptr<TieredStore> store;
};

// Reopens `path` with a tiny DRAM tier and no promotion, so reads hit SSD.
std::unique_ptr<TieredStore> ReopenSsdOnly(
    const std::string& path, std::shared_ptr<rocksdb::FileSystem> fs = nullptr) {
  TieredStoreOptions o;
  o.dram_capacity_bytes = 4 << 20;
  o.ssd_path = path;
  o.ssd_file_system = std::move(fs);
  o.promote_on_read = false;
  auto store = TieredStore::Open(o);
  EXPECT_TRUE(store.ok()) << store.status();
  return *std::move(store);
}

TEST(TieredStoreFaults, FlippedByteInAnSsdBlobFileIsDetectedAndDropped) {
  ScratchDir dir;
  const std::string path = dir.Sub("ssd");
  {
    FaultyStore s(path);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(s.store->Put(KeyFor(i), MakeBlock(k64K, i)).ok());
    ASSERT_TRUE(s.store->Flush().ok());
  }
  // Flip one byte inside block 2's payload where it sits in the blob file.
  std::string blob;
  for (const auto& f : std::filesystem::directory_iterator(path)) {
    if (f.path().extension() == ".blob") blob = f.path();
  }
  ASSERT_FALSE(blob.empty()) << "no .blob file under " << path;
  std::string contents;
  {
    std::ifstream in(blob, std::ios::binary);
    contents.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto victim = MakeBlock(k64K, 2);
  const std::string needle(victim.begin() + kBlockHeaderSize,
                           victim.begin() + kBlockHeaderSize + 64);
  const size_t at = contents.find(needle);
  ASSERT_NE(at, std::string::npos) << "block 2's payload is not in " << blob;
  {
    std::fstream f(blob, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(at + 1000);
    const char flipped = contents[at + 1000] ^ 0x20;
    f.write(&flipped, 1);
  }
  auto store = ReopenSsdOnly(path);
  int corrupt = 0, good = 0;
  for (int i = 0; i < 4; ++i) {
    auto lease = store->Get(KeyFor(i));
    if (lease.ok()) {
      EXPECT_NE(i, 2);
      EXPECT_TRUE(std::ranges::equal(lease->bytes(), MakeBlock(k64K, i)));
      ++good;
    } else {
      EXPECT_EQ(lease.status().code(), absl::StatusCode::kDataLoss)
          << lease.status();
      EXPECT_FALSE(store->Exists(KeyFor(i)));
      ++corrupt;
    }
  }
  EXPECT_EQ(corrupt, 1);
  EXPECT_EQ(good, 3);
  EXPECT_EQ(ChecksumFailures(*store), 1u);
}

TEST(TieredStoreFaults, InjectedReadCorruptionIsDataLossAndNeverReturned) {
  ScratchDir dir;
  const std::string path = dir.Sub("ssd");
  {
    FaultyStore s(path);
    ASSERT_TRUE(s.store->Put(KeyFor(1), MakeBlock(k64K, 1)).ok());
    ASSERT_TRUE(s.store->Flush().ok());
  }
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  auto store = ReopenSsdOnly(path, fs);
  fs->SetReadCorruption(true, ".blob");
  auto lease = store->Get(KeyFor(1));
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kDataLoss)
      << lease.status();
  EXPECT_GT(fs->injected_corruptions(), 0u);
  EXPECT_EQ(ChecksumFailures(*store), 1u);
  EXPECT_FALSE(store->Exists(KeyFor(1)));
}

TEST(TieredStoreFaults, InjectedReadErrorIsUnavailableAndKeepsTheBlock) {
  ScratchDir dir;
  const std::string path = dir.Sub("ssd");
  {
    FaultyStore s(path);
    ASSERT_TRUE(s.store->Put(KeyFor(1), MakeBlock(k64K, 1)).ok());
    ASSERT_TRUE(s.store->Flush().ok());
  }
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  auto store = ReopenSsdOnly(path, fs);
  fs->SetReadErrors(true, ".blob");
  EXPECT_EQ(store->Get(KeyFor(1)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(store->Exists(KeyFor(1)));
  fs->SetReadErrors(false);
  auto lease = store->Get(KeyFor(1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(std::ranges::equal(lease->bytes(), MakeBlock(k64K, 1)));
}

TEST(TieredStoreFaults, InjectedEnospcIsResourceExhaustedWhileDramKeepsServing) {
  ScratchDir dir;
  FaultyStore s(dir.Sub("ssd"));
  ASSERT_TRUE(s.store->Put(KeyFor(1), MakeBlock(k64K, 1)).ok());

  s.fs->SetNoSpace(true);
  auto put = s.store->Put(KeyFor(2), MakeBlock(k64K, 2));
  EXPECT_EQ(put.status().code(), absl::StatusCode::kResourceExhausted)
      << put.status();
  EXPECT_GT(s.fs->injected_write_faults(), 0u);
  EXPECT_FALSE(s.store->Exists(KeyFor(2)));  // Nothing of it stays.
  // DRAM keeps serving reads and non-durable writes.
  auto lease = s.store->Get(KeyFor(1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(std::ranges::equal(lease->bytes(), MakeBlock(k64K, 1)));
  EXPECT_TRUE(s.store->Put(KeyFor(3), MakeBlock(k64K, 3), {.durable = false}).ok());
  EXPECT_TRUE(s.store->Get(KeyFor(3)).ok());
  EXPECT_GT(s.store->Stats().tiers[1].write_failures, 0u);

  // Space returns: durable puts work again.
  s.fs->SetNoSpace(false);
  auto retry = s.store->Put(KeyFor(2), MakeBlock(k64K, 2));
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(*retry, PutOutcome::kStored);
}

TEST(TieredStoreFaults, SsdBlocksSurviveCloseAndReopen) {
  ScratchDir dir;
  const std::string path = dir.Sub("ssd");
  constexpr int kBlocks = 40;
  {
    FaultyStore s(path);
    for (int i = 0; i < kBlocks; ++i) {
      ASSERT_TRUE(s.store->Put(KeyFor(i), MakeBlock(ShapeForBytes((i % 4 + 1) << 14), i)).ok());
    }
    ASSERT_TRUE(s.store->Remove(KeyFor(0)).ok());
  }
  for (int reopen = 0; reopen < 2; ++reopen) {
    auto store = ReopenSsdOnly(path);
    const StoreStats stats = store->Stats();
    EXPECT_EQ(stats.tiers[1].blocks, kBlocks - 1u);
    EXPECT_FALSE(store->Exists(KeyFor(0)));
    for (int i = 1; i < kBlocks; ++i) {
      auto lease = store->Get(KeyFor(i));
      ASSERT_TRUE(lease.ok()) << i << ": " << lease.status();
      EXPECT_TRUE(std::ranges::equal(
          lease->bytes(), MakeBlock(ShapeForBytes((i % 4 + 1) << 14), i)));
    }
  }
}

}  // namespace
}  // namespace strata::kvstore

namespace strata::kvstore {
namespace {

// A block corrupted on its way in is refused whichever tier it would land in:
// the DRAM tier verifies while copying, the SSD tier before writing.
TEST(TieredStoreFaults, CorruptPutIsDataLossOnEveryWritePath) {
  ScratchDir dir;
  TieredStoreOptions o;
  o.dram_capacity_bytes = 16 << 10;  // Smaller than the block: SSD only.
  o.ssd_path = dir.Sub("ssd");
  auto store = *TieredStore::Open(o);
  auto block = MakeBlock(k64K, 1);
  block[block.size() / 2] ^= 4;
  for (bool durable : {false, true}) {
    auto put = store->Put(KeyFor(1), block, {.durable = durable});
    EXPECT_EQ(put.status().code(), absl::StatusCode::kDataLoss) << put.status();
    EXPECT_FALSE(store->Exists(KeyFor(1)));
  }
  EXPECT_EQ(store->Stats().tiers[1].used_bytes, 0u);
  EXPECT_EQ(store->Stats().tiers[1].write_failures, 0u);
}

// A Remove whose SSD erase is held in flight (its WAL append waits): a
// write of the key that must not wait (zero in_flight_write_wait: the
// daemon's progress and poller threads) is ABORTED naming the key at once,
// and stores nothing; once the erase ends, the same write goes through.
TEST(TieredStoreFaults, AZeroWaitWriteBehindAnEraseInFlightIsAbortedNamingKey) {
  ScratchDir dir;
  FaultyStore s(dir.Sub("ssd"));
  const auto block = MakeBlock(k64K, 7);
  ASSERT_TRUE(s.store->Put(KeyFor(7), block).ok());
  s.fs->SetHoldWrites(true, ".log");
  std::thread remover([&] { EXPECT_TRUE(s.store->Remove(KeyFor(7)).ok()); });
  while (s.fs->writes_held() == 0) std::this_thread::yield();
  PutOptions no_wait;
  no_wait.in_flight_write_wait = absl::ZeroDuration();
  absl::StatusOr<BlockReservation> r =
      s.store->Reserve(KeyFor(7), block.size(), no_wait);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "key: ")) << r.status();
  absl::StatusOr<PutOutcome> put = s.store->Put(KeyFor(7), block, no_wait);
  EXPECT_EQ(put.status().code(), absl::StatusCode::kAborted) << put.status();
  EXPECT_FALSE(s.store->Exists(KeyFor(7)));
  s.fs->SetHoldWrites(false);
  remover.join();
  put = s.store->Put(KeyFor(7), block, no_wait);
  ASSERT_TRUE(put.ok()) << put.status();
  auto got = s.store->Get(KeyFor(7));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(std::ranges::equal(got->bytes(), block));
}

}  // namespace
}  // namespace strata::kvstore
