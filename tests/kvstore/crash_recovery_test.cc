// Crash recovery of the SSD tier: a child process (put_storm_child.cc) puts
// blocks durably from several threads and acknowledges each on a pipe; the
// test SIGKILLs it mid-storm, then opens the same RocksDB directory and
// checks that
//   - every acknowledged block is readable with exactly the bytes written,
//   - every block that may have been in flight is either a clean miss
//     (NOT_FOUND) or exactly right: never DATA_LOSS, another error or wrong
//     bytes, and no checksum failure is counted,
//   - no block the child never started is there, and the SSD tier's block
//     count and usage match the blocks found,
//   - the recovered store takes new puts.
//
// Index ranges: round r's child puts indexes from (r + 1) << 32 upwards and
// the test's own post-recovery puts use (r + 1) << 32 | 1 << 31 upwards, so
// no two writers ever share a key and kAlreadyPresent only appears where a
// test asks for it. Block i is MakeBlock(shapes[i % #shapes], seed ^ i), the
// shapes drawn from the seed (2 KiB, inline in the SST, to 2 MiB, in blob
// files; all four dtypes) and passed to the child on its command line.
//
// No sleeps: the test blocks on the ack pipe (poll has a generous watchdog
// timeout only so a hung child fails the test instead of hanging it), and
// after the kill reads the pipe to EOF, which comes once the child is dead.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/tiered_store.h"
#include "tests/kvstore/test_blocks.h"

#ifndef STRATA_PUT_STORM_CHILD
#error "STRATA_PUT_STORM_CHILD must name the kvstore_put_storm_child binary"
#endif

extern char** environ;

namespace strata::kvstore {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::strata::kvstore::testing::TestSeed;

constexpr uint64_t kReadyMagic = 0x2159444145525453ull;  // As in the child.
constexpr int kWriterThreads = 3;
constexpr int kRounds = 3;
constexpr int kShapes = 13;
// Indexes past the last one the child can have claimed that must be misses.
constexpr uint64_t kAbsentProbes = 8;
// Watchdog for one ack; a healthy child acks within milliseconds.
constexpr int kAckTimeoutMs = 60'000;
// The child's DRAM tier is small enough that the storm evicts from it
// constantly (and fragments it with mixed sizes) while every durable put also
// lands on the SSD tier.
constexpr uint64_t kChildDramBytes = 8 << 20;

uint64_t ChildStart(int round) { return uint64_t(round + 1) << 32; }
uint64_t TestPutStart(int round) {
  return ChildStart(round) | (uint64_t{1} << 31);
}

// Everything needed to recompute any block of the storm.
struct StormModel {
  uint64_t seed = 0;
  std::vector<BlockShape> shapes;

  const BlockShape& ShapeOf(uint64_t i) const {
    return shapes[i % shapes.size()];
  }
  std::vector<uint8_t> BlockOf(uint64_t i) const {
    return MakeBlock(ShapeOf(i), seed ^ i);
  }
  uint64_t SizeOf(uint64_t i) const {
    return EncodedBlockSize(ShapeOf(i).RawBytes());
  }
  uint64_t MaxBlockSize() const {
    uint64_t m = 0;
    for (const BlockShape& s : shapes) {
      m = std::max(m, EncodedBlockSize(s.RawBytes()));
    }
    return m;
  }
};

StormModel MakeModel(uint64_t seed) {
  StormModel model;
  model.seed = seed;
  std::mt19937_64 rng(seed);
  // Fixed extremes: under RocksDB's 4 KiB blob threshold (the value stays in
  // the SST), just over it, and 2 MiB.
  model.shapes.push_back(BlockShape{DType::kFloat8E4M3, 1, 1, 8, 128});
  model.shapes.push_back(ShapeForBytes(4096));
  model.shapes.push_back(ShapeForBytes(2 << 20, DType::kFloat32));
  std::uniform_real_distribution<double> unit(0, 1);
  while (model.shapes.size() < kShapes) {
    const auto dtype = static_cast<DType>(1 + rng() % 4);
    const uint32_t heads = 1u << (rng() % 4);             // 1..8
    const uint32_t dim = 64u << (rng() % 3);              // 64..256
    const uint32_t layers = 1u << (rng() % 6);            // 1..32
    const double target = std::exp2(12 + 9 * unit(rng));  // 4 KiB..2 MiB
    const uint64_t per_token = 2ull * layers * heads * dim * DTypeSize(dtype);
    const uint64_t tokens =
        std::max<uint64_t>(1, static_cast<uint64_t>(target) / per_token);
    model.shapes.push_back(
        BlockShape{dtype, layers, static_cast<uint32_t>(tokens), heads, dim});
  }
  std::shuffle(model.shapes.begin(), model.shapes.end(), rng);
  return model;
}

std::string ShapeArg(const BlockShape& s) {
  return std::to_string(static_cast<int>(s.dtype)) + ":" +
         std::to_string(s.num_layers) + ":" + std::to_string(s.num_tokens) +
         ":" + std::to_string(s.num_kv_heads) + ":" +
         std::to_string(s.head_dim);
}

PutOptions DurablePut() {
  PutOptions options;
  options.durable = true;
  return options;
}

// The test's view of the child's store: the same SSD tier. Reads are not
// promoted, so every check reads the SSD copy, and the test's own few puts
// fit the DRAM tier without evicting.
TieredStoreOptions StoreOptions(const std::string& dir) {
  TieredStoreOptions options;
  options.ssd_path = dir;
  options.ssd_capacity_bytes = uint64_t{4} << 30;
  options.dram_capacity_bytes = uint64_t{8} << 20;
  options.promote_on_read = false;
  options.write_through = true;
  return options;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) {
    return "exited with code " + std::to_string(WEXITSTATUS(status)) +
           " (see its stderr above)";
  }
  if (WIFSIGNALED(status)) {
    return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  }
  return "wait status " + std::to_string(status);
}

// Reads the child's 8-byte records from the read end of its stdout pipe.
class RecordReader {
 public:
  enum Result { kRecord, kEof, kTimeout, kTornRecord, kError };

  explicit RecordReader(int fd) : fd_(fd) {}

  // Blocks until a record, EOF or (with timeout_ms >= 0) the timeout.
  Result Next(uint64_t* value, int timeout_ms) {
    while (buf_.size() < sizeof(uint64_t)) {
      if (timeout_ms >= 0) {
        pollfd p{fd_, POLLIN, 0};
        const int r = ::poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return kError;
        if (r == 0) return kTimeout;
      }
      uint8_t tmp[4096];
      const ssize_t n = ::read(fd_, tmp, sizeof(tmp));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return kError;
      if (n == 0) return buf_.empty() ? kEof : kTornRecord;
      buf_.insert(buf_.end(), tmp, tmp + n);
    }
    std::memcpy(value, buf_.data(), sizeof(uint64_t));
    buf_.erase(buf_.begin(), buf_.begin() + sizeof(uint64_t));
    return kRecord;
  }

 private:
  int fd_;
  std::vector<uint8_t> buf_;
};

// Kills and reaps a child and closes the pipe on any early exit.
struct ChildGuard {
  pid_t pid = -1;
  int fd = -1;
  ~ChildGuard() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (fd >= 0) ::close(fd);
  }
};

struct RoundResult {
  uint64_t start = 0;
  uint64_t recovered_blocks = 0;  // SSD blocks the child found at open.
  std::set<uint64_t> acked;       // Acknowledged-durable indexes.
  uint64_t acked_after_kill = 0;  // Acks drained from the pipe after the kill.
  // The child claims indexes from one counter and each writer holds at most
  // one unacknowledged index, so every index it may have written is in
  // [start, claim_end).
  uint64_t claim_end = 0;
};

// Spawns the child on `dir`, waits for at least `min_acks` acknowledgements,
// SIGKILLs it mid-storm, reaps it and drains the acks it wrote before dying.
void RunStormAndKill(const std::string& dir, const StormModel& model,
                     uint64_t start, uint64_t min_acks, RoundResult* out) {
  out->start = start;
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0) << std::strerror(errno);
  ChildGuard guard;
  guard.fd = fds[0];

  std::vector<std::string> args = {STRATA_PUT_STORM_CHILD, dir};
  for (uint64_t n :
       {model.seed, start, uint64_t{kWriterThreads}, kChildDramBytes}) {
    args.push_back(std::to_string(n));
  }
  for (const BlockShape& s : model.shapes) args.push_back(ShapeArg(s));
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  ASSERT_EQ(posix_spawn_file_actions_init(&actions), 0);
  // dup2 clears FD_CLOEXEC on fd 1 only; both pipe ends stay close-on-exec.
  ASSERT_EQ(posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO),
            0);
  pid_t pid = -1;
  const int spawn_rc = posix_spawn(&pid, STRATA_PUT_STORM_CHILD, &actions,
                                   nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);  // Else EOF never comes.
  ASSERT_EQ(spawn_rc, 0) << "posix_spawn " << STRATA_PUT_STORM_CHILD << ": "
                         << std::strerror(spawn_rc);
  guard.pid = pid;

  RecordReader reader(fds[0]);
  auto child_died = [&](const char* when) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    guard.pid = -1;
    return std::string("the put storm child ended ") + when + ": " +
           DescribeWaitStatus(status);
  };

  uint64_t ready[2];
  for (uint64_t& r : ready) {
    RecordReader::Result res = reader.Next(&r, kAckTimeoutMs);
    ASSERT_NE(res, RecordReader::kEof) << child_died("before it was ready");
    ASSERT_EQ(res, RecordReader::kRecord)
        << "reading the ready record: " << res;
  }
  ASSERT_EQ(ready[0], kReadyMagic) << "not a ready record";
  out->recovered_blocks = ready[1];

  auto take_ack = [&](uint64_t i) {
    EXPECT_GE(i, start) << "ack of an index the child does not own";
    EXPECT_TRUE(out->acked.insert(i).second) << "index " << i << " acked twice";
  };
  while (out->acked.size() < min_acks) {
    uint64_t i = 0;
    RecordReader::Result res = reader.Next(&i, kAckTimeoutMs);
    ASSERT_NE(res, RecordReader::kEof)
        << child_died("mid-storm, before it was killed");
    ASSERT_EQ(res, RecordReader::kRecord)
        << "reading acks (" << out->acked.size() << " so far): " << res;
    take_ack(i);
  }

  // The writers are mid-put: kill at once.
  ASSERT_EQ(::kill(pid, SIGKILL), 0) << std::strerror(errno);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid) << std::strerror(errno);
  guard.pid = -1;
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the child was supposed to die of SIGKILL but "
      << DescribeWaitStatus(status);

  // Acks written before death are acknowledged too. The child is dead, so
  // the pipe is at EOF after them: block without a timeout.
  const size_t before = out->acked.size();
  for (;;) {
    uint64_t i = 0;
    RecordReader::Result res = reader.Next(&i, /*timeout_ms=*/-1);
    if (res == RecordReader::kEof) break;
    ASSERT_EQ(res, RecordReader::kRecord) << "draining acks: " << res;
    take_ack(i);
  }
  out->acked_after_kill = out->acked.size() - before;
  out->claim_end = start + out->acked.size() + kWriterThreads;
  for (uint64_t i : out->acked) {
    EXPECT_LT(i, out->claim_end) << "acks are not a dense prefix of claims";
  }
}

::testing::AssertionResult SameBytes(absl::Span<const uint8_t> got,
                                     const std::vector<uint8_t>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure()
           << "read " << got.size() << " bytes, expected " << want.size();
  }
  auto [g, w] = std::mismatch(got.begin(), got.end(), want.begin());
  if (g == got.end()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "bytes differ first at offset " << (g - got.begin()) << " of "
         << got.size() << " (header is " << kBlockHeaderSize << " bytes)";
}

enum class Expect { kPresent, kPresentOrAbsent, kAbsent };

// Reads block `i` and checks it against `expect`; returns whether it was
// found with the right bytes. Acknowledged blocks are read with GetInto (the
// copy-and-verify path), possibly in-flight ones with Get (the lease path).
bool CheckBlock(TieredStore& store, const StormModel& model, uint64_t i,
                Expect expect, std::vector<uint8_t>& scratch) {
  const BlockKey key = KeyFor(i);
  switch (expect) {
    case Expect::kPresent: {
      absl::StatusOr<size_t> n = store.GetInto(key, absl::MakeSpan(scratch));
      EXPECT_TRUE(n.ok()) << "acknowledged block " << i << ": " << n.status();
      if (!n.ok()) return false;
      auto ok =
          SameBytes(absl::MakeConstSpan(scratch.data(), *n), model.BlockOf(i));
      EXPECT_TRUE(ok) << "acknowledged block " << i;
      return ok;
    }
    case Expect::kPresentOrAbsent: {
      absl::StatusOr<BlockLease> lease = store.Get(key);
      if (absl::IsNotFound(lease.status())) {
        EXPECT_FALSE(store.Exists(key)) << "block " << i;
        return false;
      }
      EXPECT_TRUE(lease.ok())
          << "in-flight block " << i
          << " must be a clean miss or intact: " << lease.status();
      if (!lease.ok()) return false;
      EXPECT_EQ(lease->served_from(), TierKind::kSsd) << "block " << i;
      auto ok = SameBytes(lease->bytes(), model.BlockOf(i));
      EXPECT_TRUE(ok) << "in-flight block " << i << " is torn";
      return ok;
    }
    case Expect::kAbsent: {
      absl::StatusOr<BlockLease> lease = store.Get(key);
      EXPECT_TRUE(absl::IsNotFound(lease.status()))
          << "block " << i << " was never put, yet: " << lease.status();
      EXPECT_FALSE(store.Exists(key)) << "block " << i;
      return false;
    }
  }
  return false;
}

// Checks one killed round: acknowledged blocks exact, possibly in-flight
// ones a clean miss or exact, later indexes misses. Adds what it found to
// `present` and the possibly in-flight misses to `missing`.
void CheckRound(TieredStore& store, const StormModel& model,
                const RoundResult& round, std::vector<uint8_t>& scratch,
                std::set<uint64_t>* present, std::vector<uint64_t>* missing) {
  for (uint64_t i = round.start; i < round.claim_end + kAbsentProbes; ++i) {
    const Expect expect = round.acked.count(i) != 0 ? Expect::kPresent
                          : i < round.claim_end     ? Expect::kPresentOrAbsent
                                                    : Expect::kAbsent;
    if (CheckBlock(store, model, i, expect, scratch)) {
      present->insert(i);
    } else if (expect == Expect::kPresentOrAbsent && missing != nullptr) {
      missing->push_back(i);
    }
  }
}

// No corruption seen, and the SSD tier holds exactly the blocks in `present`.
void CheckStats(const TieredStore& store, const StormModel& model,
                const std::set<uint64_t>& present) {
  const StoreStats stats = store.Stats();
  for (const TierStats& t : stats.tiers) {
    EXPECT_EQ(t.checksum_failures, 0u) << TierName(t.kind) << " tier";
    EXPECT_EQ(t.write_failures, 0u) << TierName(t.kind) << " tier";
  }
  ASSERT_FALSE(stats.tiers.empty());
  const TierStats& ssd = stats.tiers.back();
  ASSERT_EQ(ssd.kind, TierKind::kSsd);
  uint64_t bytes = 0;
  for (uint64_t i : present) bytes += model.SizeOf(i);
  EXPECT_EQ(ssd.blocks, present.size());
  EXPECT_EQ(ssd.used_bytes, bytes);
  EXPECT_EQ(ssd.evictions, 0u) << "the SSD tier must not evict in this test";
}

TEST(CrashRecovery, AcknowledgedDurableBlocksSurviveKill9MidPutStorm) {
  const StormModel model = MakeModel(TestSeed());
  std::mt19937_64 rng(model.seed ^ 0x6b696c6c39ull);
  std::uniform_int_distribution<uint64_t> acks(20, 200);
  ScratchDir scratch_dir;
  const std::string dir = scratch_dir.Sub("ssd");
  std::vector<uint8_t> scratch(model.MaxBlockSize() + 4096);

  // Every block the store must hold from here on (acknowledged, found after
  // a crash, or put by the test), across rounds and reopens.
  std::set<uint64_t> present;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    RoundResult r;
    ASSERT_NO_FATAL_FAILURE(
        RunStormAndKill(dir, model, ChildStart(round), acks(rng), &r));
    // The test closed the store cleanly: the child recovered all of it.
    EXPECT_EQ(r.recovered_blocks, present.size());

    auto store = TieredStore::Open(StoreOptions(dir));
    ASSERT_TRUE(store.ok()) << "reopen after kill -9: " << store.status();
    for (uint64_t i : present) {
      CheckBlock(**store, model, i, Expect::kPresent, scratch);
    }
    std::vector<uint64_t> missing;
    CheckRound(**store, model, r, scratch, &present, &missing);
    ASSERT_NO_FATAL_FAILURE(CheckStats(**store, model, present));
    std::printf(
        "[ round %d  ] %zu acked (%llu drained after the kill), %zu of <= %d "
        "in-flight found, %zu blocks in the store\n",
        round, r.acked.size(), (unsigned long long)r.acked_after_kill,
        static_cast<size_t>(r.claim_end - r.start - r.acked.size()) -
            missing.size(),
        kWriterThreads, present.size());

    // The recovered store takes puts: an acknowledged key stays put, a key
    // that was a clean miss is stored anew, and fresh keys are stored.
    const uint64_t acked = *r.acked.begin();
    auto again =
        (**store).Put(KeyFor(acked), model.BlockOf(acked), DurablePut());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(*again, PutOutcome::kAlreadyPresent);
    std::vector<uint64_t> fresh = {TestPutStart(round),
                                   TestPutStart(round) + 1};
    if (!missing.empty()) fresh.push_back(missing.front());
    for (uint64_t i : fresh) {
      auto put = (**store).Put(KeyFor(i), model.BlockOf(i), DurablePut());
      ASSERT_TRUE(put.ok())
          << "put " << i << " after recovery: " << put.status();
      EXPECT_EQ(*put, PutOutcome::kStored) << "block " << i;
      CheckBlock(**store, model, i, Expect::kPresent, scratch);
      present.insert(i);
    }
    ASSERT_NO_FATAL_FAILURE(CheckStats(**store, model, present));
  }  // The store closes here; the next round's child recovers it.

  // A clean reopen still has everything, including the last round's puts.
  auto store = TieredStore::Open(StoreOptions(dir));
  ASSERT_TRUE(store.ok()) << store.status();
  for (uint64_t i : present) {
    CheckBlock(**store, model, i, Expect::kPresent, scratch);
  }
  CheckStats(**store, model, present);
}

TEST(CrashRecovery, BlocksSurviveRepeatedKill9sWithoutACleanReopen) {
  // Each child recovers the database its killed predecessor left, then is
  // killed itself: recovery of a crashed, recovered-then-crashed database.
  const StormModel model = MakeModel(TestSeed());
  std::mt19937_64 rng(model.seed ^ 0x6261636b32ull);
  std::uniform_int_distribution<uint64_t> acks(20, 200);
  ScratchDir scratch_dir;
  const std::string dir = scratch_dir.Sub("ssd");
  std::vector<uint8_t> scratch(model.MaxBlockSize() + 4096);

  std::vector<RoundResult> rounds(kRounds);
  uint64_t acked_so_far = 0;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ASSERT_NO_FATAL_FAILURE(RunStormAndKill(dir, model, ChildStart(round),
                                            acks(rng), &rounds[round]));
    // Bounds now; the exact count is checked below, once it is known.
    EXPECT_GE(rounds[round].recovered_blocks, acked_so_far);
    acked_so_far += rounds[round].acked.size();
  }

  auto store = TieredStore::Open(StoreOptions(dir));
  ASSERT_TRUE(store.ok()) << "reopen after kill -9: " << store.status();
  std::set<uint64_t> present;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    // What the next child recovered is exactly what is there now from the
    // rounds before it: blocks recovered once never vanish later.
    EXPECT_EQ(rounds[round].recovered_blocks, present.size());
    CheckRound(**store, model, rounds[round], scratch, &present, nullptr);
    std::printf("[ round %d  ] %zu acked (%llu drained after the kill)\n",
                round, rounds[round].acked.size(),
                (unsigned long long)rounds[round].acked_after_kill);
  }
  ASSERT_NO_FATAL_FAILURE(CheckStats(**store, model, present));
  const uint64_t i = TestPutStart(0);
  auto put = (**store).Put(KeyFor(i), model.BlockOf(i), DurablePut());
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(*put, PutOutcome::kStored);
  CheckBlock(**store, model, i, Expect::kPresent, scratch);
}

}  // namespace
}  // namespace strata::kvstore
