// How a client maps a daemon's shared arena (ClientOptions::
// populate_arena_max_bytes, client/tcp_transport_local.cc): an arena within
// the limit is mapped in at Connect; a larger one chunk by chunk as copies
// first touch it, and blocks still round-trip byte-exact across chunk
// boundaries, in both directions and between clients; with
// ClientOptions::local_daemon_uid, only a daemon of that user's. Real
// stratad processes on loopback, whose embedded default serves local
// connections.
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "client/strata_client.h"
#include "gtest/gtest.h"
#include "tests/cluster/arena_mappings.h"
#include "tests/cluster/stratad_process.h"
#include "tests/kvstore/test_blocks.h"

namespace strata {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::strata::testing::DataDirForLocalSocket;
using ::strata::testing::StratadProcess;

constexpr uint64_t kArenaBytes = uint64_t{256} << 20;

uint64_t ArenaResidentBytes() {
  return testing::ReadArenaMappings().resident_bytes;
}

class LocalArenaMapping : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<StratadProcess>(
        DataDirForLocalSocket(dir_),
        std::vector<std::string>{"--ssd_capacity=0", "--dram_capacity=256MiB"});
    ASSERT_TRUE(daemon_->Start().ok());
    ASSERT_NE(daemon_->local_path(), "off");
  }

  std::unique_ptr<client::Client> Connect(uint64_t populate_max_bytes) {
    client::ClientOptions o;
    o.address = daemon_->grpc_address();
    o.data_plane = "local";
    o.populate_arena_max_bytes = populate_max_bytes;
    auto c = client::Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  ScratchDir dir_;
  std::unique_ptr<StratadProcess> daemon_;
};

TEST_F(LocalArenaMapping, AnArenaWithinTheLimitIsMappedInAtConnect) {
  const uint64_t before = ArenaResidentBytes();
  auto c = Connect(kArenaBytes);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(ArenaResidentBytes() - before, kArenaBytes);
}

TEST_F(LocalArenaMapping, ALargerArenaIsMappedInOnlyWhereCopiesTouchIt) {
  ASSERT_EQ(ArenaResidentBytes(), 0u);
  auto writer = Connect(kArenaBytes - 1);
  ASSERT_NE(writer, nullptr);
  EXPECT_EQ(ArenaResidentBytes(), 0u);  // Connect mapped nothing in.
  // Sizes that straddle 2 MiB chunks wherever the daemon places them.
  const std::vector<uint64_t> sizes = {1 << 10, 256 << 10, 1 << 20,
                                       (2 << 20) + 4096, 5 << 20};
  uint64_t stored = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const auto block = MakeBlock(ShapeForBytes(sizes[i]), 100 + i);
    ASSERT_TRUE(writer->Put(KeyFor(100 + i), block).ok());
    auto got = writer->Get(KeyFor(100 + i));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(got->block == block) << sizes[i];
    stored += block.size();
  }
  const uint64_t written = ArenaResidentBytes();
  EXPECT_GE(written, stored);
  // Each block maps in at most the chunks it overlaps (plus the spare
  // range the daemon sets aside for the connection's next put).
  EXPECT_LE(written, stored + 2 * sizes.size() * (uint64_t{4} << 20));
  EXPECT_LT(written, kArenaBytes / 4);

  // Another client reads what the first wrote, through chunks it maps in
  // only now.
  auto reader = Connect(0);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(ArenaResidentBytes(), written);
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto got = reader->Get(KeyFor(100 + i));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(got->block == MakeBlock(ShapeForBytes(sizes[i]), 100 + i))
        << sizes[i];
  }
  EXPECT_GT(ArenaResidentBytes(), written);
}

// A client that names the user its daemon must run as maps no arena of a
// daemon of another: "local" fails Connect naming the option, "auto" takes
// the next plane. Named right, the arena is mapped as before.
TEST_F(LocalArenaMapping, ADaemonOfAnotherUserThanTheNamedOneIsRefused) {
  client::ClientOptions o;
  o.address = daemon_->grpc_address();
  o.data_plane = "local";
  o.local_daemon_uid = geteuid() + 1;
  auto refused = client::Client::Connect(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable)
      << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "local_daemon_uid"))
      << refused.status();
  o.data_plane = "auto";
  auto fallback = client::Client::Connect(o);
  ASSERT_TRUE(fallback.ok()) << fallback.status();
  EXPECT_NE((*fallback)->DataPlane(), "local");
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 9);
  ASSERT_TRUE((*fallback)->Put(KeyFor(9), block).ok());
  o.data_plane = "local";
  o.local_daemon_uid = geteuid();
  auto named = client::Client::Connect(o);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ((*named)->DataPlane(), "local");
  auto got = (*named)->Get(KeyFor(9));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->block == block);
}

}  // namespace
}  // namespace strata
