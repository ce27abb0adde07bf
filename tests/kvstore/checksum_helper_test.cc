// CopyVerifiedBlock with CopyHelp::kHelperForLargeBlocks: the process's
// checksum helper (kvstore/checksum_helper.h) takes the hash over while the
// caller copies. Its answers must be exactly the caller-only copy's: the
// same bytes, OK for a good block, DATA_LOSS for any damaged byte, whoever
// ends up hashing which piece, with copiers racing for the helper, and in
// a forked child whose parent had a helper thread.
#include "kvstore/checksum_helper.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::kvstore {
namespace {

using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::TestSeed;

// Helped whenever the helper is free, for this test binary: every large
// copy below is helped whatever the process measures (CopyHelpChooser has
// tests of its own in copy_help_chooser_test.cc).
[[maybe_unused]] const bool kHelperTurnedOn = [] {
  ChecksumHelper::SetPolicy(ChecksumHelper::Policy::kAlways);
  return true;
}();

constexpr CopyDestination kEveryUse[] = {CopyDestination::kReadSoon,
                                         CopyDestination::kStored,
                                         CopyDestination::kStoredHashSource};

absl::Status HelpedCopy(const std::vector<uint8_t>& block,
                        std::vector<uint8_t>& dst, CopyDestination use) {
  return CopyVerifiedBlock(block, absl::MakeSpan(dst), use,
                           CopyHelp::kHelperForLargeBlocks)
      .status();
}

// Copies `block` (helped) until the helper has taken one over; false if it
// never did in `rounds` copies (each wakes it, and it stays awake between).
bool CopyUntilTakenOver(const std::vector<uint8_t>& block, int rounds) {
  const uint64_t before = ChecksumHelper::TakenOver();
  std::vector<uint8_t> dst(block.size());
  for (int i = 0; i < rounds; ++i) {
    if (!HelpedCopy(block, dst, CopyDestination::kReadSoon).ok() ||
        dst != block) {
      return false;
    }
    if (ChecksumHelper::TakenOver() > before) return true;
  }
  return false;
}

// Blocks around and past the helper's threshold: just below it (the
// caller's path), a payload of exactly 2 MiB, 37.5 pieces of 64 KiB (a
// partial last piece), and an fp8 payload of no multiple of 64 bytes (an
// unaligned tail for the non-temporal copy).
std::vector<BlockShape> ShapesAroundTheThreshold() {
  return {
      BlockShape{DType::kFloat16, 1, 511, 8, 128},
      BlockShape{DType::kFloat16, 1, 512, 8, 128},
      BlockShape{DType::kFloat16, 1, 600, 8, 128},
      BlockShape{DType::kFloat8E4M3, 1, 65521, 2, 17},
  };
}

TEST(ChecksumHelper, HelpedCopiesMatchTheCallersOwnAtEverySizeAndUse) {
  for (const BlockShape& shape : ShapesAroundTheThreshold()) {
    const std::vector<uint8_t> block = MakeBlock(shape, 11);
    // Destinations at 0 and at odd offsets (unaligned streamed stores).
    for (size_t skew : {size_t{0}, size_t{1}, size_t{13}}) {
      for (CopyDestination use : kEveryUse) {
        // Several rounds: the helper is asleep for some, awake for others,
        // and takes over at different pieces.
        for (int round = 0; round < 8; ++round) {
          std::vector<uint8_t> dst(block.size() + skew, 0xEE);
          absl::StatusOr<BlockView> view =
              CopyVerifiedBlock(block, absl::MakeSpan(dst).subspan(skew), use,
                                CopyHelp::kHelperForLargeBlocks);
          ASSERT_TRUE(view.ok())
              << block.size() << " bytes at +" << skew << ": " << view.status();
          ASSERT_TRUE(
              std::equal(block.begin(), block.end(), dst.begin() + skew))
              << block.size() << " bytes at +" << skew << " round " << round;
        }
      }
    }
  }
}

// The helper's API directly, against the checksum the block was encoded
// with: declared ready all at once, in 64 KiB pieces, in uneven pieces, or
// not at all before Finish (each reaches the copier's own hashing, the
// hand-over, or the withdrawal, as the helper's timing falls).
TEST(ChecksumHelper, EveryWayOfDeclaringBytesReadyGivesTheBlocksChecksum) {
  const std::vector<uint8_t> block =
      MakeBlock(BlockShape{DType::kFloat16, 1, 600, 8, 128}, 21);
  absl::StatusOr<BlockHeader> header =
      ParseBlockHeader(absl::MakeConstSpan(block).first(kBlockHeaderSize));
  ASSERT_TRUE(header.ok()) << header.status();
  const uint8_t* payload = block.data() + kBlockHeaderSize;
  const size_t bytes = block.size() - kBlockHeaderSize;
  const std::vector<std::vector<size_t>> patterns = {
      {},
      {bytes},
      {1, 4095, 65536, 65537, 1 << 20, bytes - 1, bytes},
  };
  std::vector<size_t> pieces;
  for (size_t at = 65536; at < bytes; at += 65536) pieces.push_back(at);
  if (!ChecksumHelper::Enabled()) GTEST_SKIP() << "one CPU: no helper";
  for (int round = 0; round < 20; ++round) {
    for (const std::vector<size_t>& ready :
         {patterns[0], patterns[1], patterns[2], pieces}) {
      ChecksumHelper* helper = ChecksumHelper::TryAcquire();
      ASSERT_NE(helper, nullptr) << "lent to nobody else in this test";
      helper->Start(block.data(), 88, payload, bytes);
      for (size_t r : ready) helper->Advance(r);
      EXPECT_EQ(helper->Finish(), header->checksum)
          << "round " << round << ", " << ready.size() << " steps";
    }
  }
}

// Over many helped copies the helper does take hashes over (so the tests
// above covered its side, not only the copier's).
TEST(ChecksumHelper, TheHelperTakesHashesOver) {
  if (!ChecksumHelper::Enabled()) GTEST_SKIP() << "one CPU: no helper";
  const std::vector<uint8_t> block =
      MakeBlock(BlockShape{DType::kFloat16, 1, 600, 8, 128}, 2);
  EXPECT_TRUE(CopyUntilTakenOver(block, 1000));
}

TEST(ChecksumHelper, HelpedCopiesCatchADamagedByteWherever) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  const std::vector<uint8_t> good =
      MakeBlock(BlockShape{DType::kFloat16, 1, 1500, 8, 128}, 5);
  const size_t payload = good.size() - kBlockHeaderSize;
  std::vector<size_t> places = {kBlockHeaderSize, good.size() - 1,
                                kBlockHeaderSize + 64 * 1024,
                                kBlockHeaderSize + 64 * 1024 - 1};
  for (int i = 0; i < 16; ++i)
    places.push_back(kBlockHeaderSize + rng() % payload);
  for (size_t at : places) {
    std::vector<uint8_t> bad = good;
    bad[at] ^= 0x10;
    for (CopyDestination use : kEveryUse) {
      std::vector<uint8_t> dst(bad.size());
      absl::Status s = HelpedCopy(bad, dst, use);
      EXPECT_TRUE(absl::IsDataLoss(s)) << "byte " << at << ": " << s;
      EXPECT_NE(s.message().find("checksum"), std::string::npos) << s;
    }
  }
}

// The default policy: each copy goes helped or alone as the process's
// chooser says. Over enough copies for both modes' trials, good blocks
// arrive exact and damaged ones are refused, whichever mode each ran in.
TEST(ChecksumHelper, MeasuredCopiesAreExactOrRefusedInEitherMode) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  ChecksumHelper::SetPolicy(ChecksumHelper::Policy::kMeasured);
  const std::vector<uint8_t> good =
      MakeBlock(BlockShape{DType::kFloat16, 1, 1024, 8, 128}, seed);
  for (CopyDestination use : kEveryUse) {
    // Trials of 4: helped (the helper is free: this thread lends it, and
    // hashes itself until the helper claims the job), alone, then the
    // favoured one with the other retried; 48 copies cover several trials
    // of each mode.
    for (int i = 0; i < 48; ++i) {
      std::vector<uint8_t> block = good;
      const bool damage = i % 3 == 2;
      if (damage) {
        block[kBlockHeaderSize + rng() % (good.size() - kBlockHeaderSize)] ^=
            0x01;
      }
      std::vector<uint8_t> dst(block.size());
      absl::Status s = HelpedCopy(block, dst, use);
      if (damage) {
        EXPECT_TRUE(absl::IsDataLoss(s)) << "copy " << i << ": " << s;
      } else {
        EXPECT_TRUE(s.ok()) << "copy " << i << ": " << s;
        EXPECT_TRUE(dst == good) << "copy " << i;
      }
    }
  }
  ChecksumHelper::SetPolicy(ChecksumHelper::Policy::kAlways);
}

TEST(ChecksumHelper, CopiersRacingForTheHelperAllGetTheRightAnswer) {
  const uint64_t seed = TestSeed();
  const std::vector<uint8_t> good =
      MakeBlock(BlockShape{DType::kFloat16, 1, 600, 8, 128}, 9);
  constexpr int kThreads = 4, kCopies = 40;
  std::vector<std::thread> threads;
  std::vector<int> wrong(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      std::vector<uint8_t> dst(good.size());
      for (int i = 0; i < kCopies; ++i) {
        std::vector<uint8_t> block = good;
        const bool damage = rng() % 2 == 0;
        if (damage) {
          block[kBlockHeaderSize + rng() % (block.size() - kBlockHeaderSize)] ^=
              1;
        }
        const absl::Status s =
            HelpedCopy(block, dst, kEveryUse[rng() % std::size(kEveryUse)]);
        if (damage ? !absl::IsDataLoss(s) : (!s.ok() || dst != block)) {
          ++wrong[t];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(wrong[t], 0) << "thread " << t;
}

TEST(ChecksumHelper, AForkedChildGetsAHelperOfItsOwn) {
  if (!ChecksumHelper::Enabled()) GTEST_SKIP() << "one CPU: no helper";
  const std::vector<uint8_t> block =
      MakeBlock(BlockShape{DType::kFloat16, 1, 1024, 8, 128}, 4);
  // The parent's helper thread exists and has taken a hash over.
  ASSERT_TRUE(CopyUntilTakenOver(block, 1000));
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    alarm(60);  // Whatever happens, the child ends.
    // The parent's thread is not here: only a helper of the child's own
    // can take a hash over.
    _exit(CopyUntilTakenOver(block, 1000) ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status))
      << "child killed by signal "
      << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "no helper took a hash over in the child";
}

}  // namespace
}  // namespace strata::kvstore
