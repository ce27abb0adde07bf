// CopyVerifiedBlock with CopyHelp::kHelperForLargeBlocks: the process's
// checksum helper (kvstore/checksum_helper.h) takes the hash over while the
// caller copies. Its answers must be exactly the caller-only copy's: the
// same bytes, OK for a good block, DATA_LOSS for any damaged byte, whoever
// ends up hashing which piece, with copiers racing for the helper, and in
// a forked child whose parent had a helper thread.
#include "kvstore/checksum_helper.h"

#include <sys/wait.h>
#include <unistd.h>

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
using ::strata::kvstore::testing::ShapeForBytes;
using ::strata::kvstore::testing::TestSeed;

constexpr CopyDestination kEveryUse[] = {CopyDestination::kReadSoon,
                                         CopyDestination::kStored,
                                         CopyDestination::kStoredHashSource};

absl::Status HelpedCopy(const std::vector<uint8_t>& block,
                        std::vector<uint8_t>& dst, CopyDestination use) {
  return CopyVerifiedBlock(block, absl::MakeSpan(dst), use,
                           CopyHelp::kHelperForLargeBlocks)
      .status();
}

TEST(ChecksumHelper, HelpedCopiesMatchTheCallersOwnAtEverySizeAndUse) {
  // Below the threshold (the caller's path), at it, and past it by amounts
  // that leave a partial last piece.
  const uint64_t payloads[] = {kHelpedCopyMinBytes / 2, kHelpedCopyMinBytes,
                               kHelpedCopyMinBytes + 4096,
                               5 * kHelpedCopyMinBytes / 2 + 8192};
  for (uint64_t payload : payloads) {
    const std::vector<uint8_t> block = MakeBlock(ShapeForBytes(payload), 11);
    for (CopyDestination use : kEveryUse) {
      // Many rounds: the helper is asleep for some, awake for others, and
      // takes over at different pieces.
      for (int round = 0; round < 20; ++round) {
        std::vector<uint8_t> dst(block.size(), 0xEE);
        ASSERT_TRUE(HelpedCopy(block, dst, use).ok())
            << "payload " << payload << " round " << round;
        ASSERT_EQ(dst, block) << "payload " << payload << " round " << round;
      }
    }
  }
  // Not vacuous: the helper hashed some of them.
  if (ChecksumHelper::Enabled()) {
    EXPECT_GT(ChecksumHelper::TakenOver(), 0u);
  }
}

TEST(ChecksumHelper, HelpedCopiesCatchADamagedByteWherever) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  const std::vector<uint8_t> good =
      MakeBlock(ShapeForBytes(3 * kHelpedCopyMinBytes), 5);
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

TEST(ChecksumHelper, CopiersRacingForTheHelperAllGetTheRightAnswer) {
  const uint64_t seed = TestSeed();
  const std::vector<uint8_t> good =
      MakeBlock(ShapeForBytes(kHelpedCopyMinBytes + 65536), 9);
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

TEST(ChecksumHelper, AForkedChildGetsAHelperOfItsOwn) {
  if (!ChecksumHelper::Enabled()) GTEST_SKIP() << "one CPU: no helper";
  const std::vector<uint8_t> block =
      MakeBlock(ShapeForBytes(2 * kHelpedCopyMinBytes), 4);
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
