// ClusterClient end to end: a real etcd, 3 stratad daemons and 3
// strata-member sidecars on 127.0.0.1 (all started and stopped by the test),
// R = 2. Puts land on their owners, reads fall back to replicas, kill -9 of
// a daemon under a mixed load never yields wrong bytes, and membership drops
// the dead node within the lease TTL. Plus single-node mode without etcd.
#include <unistd.h>

#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/strata_client.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/member.h"
#include "cluster/membership/membership.h"
#include "cluster/placement/cluster_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "tests/cluster/cluster_load.h"
#include "tests/cluster/cluster_processes.h"
#include "tests/cluster/stratad_process.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::cluster {
namespace {

using ::strata::kvstore::BlockKey;
using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::strata::testing::ClusterLoad;
using ::strata::testing::EtcdProcess;
using ::strata::testing::MemberProcess;
using ::strata::testing::StratadProcess;

constexpr int kTtlS = 3;
constexpr absl::Duration kMargin = absl::Seconds(3);

std::vector<uint8_t> BlockFor(uint64_t i) {
  return MakeBlock(ShapeForBytes(16 << 10), i);
}

ClusterClientOptions Options() {
  ClusterClientOptions o;
  o.replication = 2;
  o.client.data_plane = "grpc";
  o.client.default_deadline = absl::Seconds(10);
  o.attempt_timeout = absl::Seconds(2);
  return o;
}

std::unique_ptr<client::Client> Direct(const StratadProcess& d) {
  client::ClientOptions o;
  o.address = d.grpc_address();
  o.data_plane = "grpc";
  auto c = client::Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

TEST(ClusterClientSingleNode, NeedsNoEtcd) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("d"), {"--dram_capacity=64MiB", "--ssd_capacity=0"});
  ASSERT_TRUE(d.Start().ok());
  StaticMemberSource members(
      {Member{.node_id = "solo", .grpc_address = d.grpc_address(),
              .capacity_bytes = 64 << 20}});
  auto c = ClusterClient::Create(&members, Options());  // R = 2 > 1 node.
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<BlockKey> keys;
  for (int i = 0; i < 20; ++i) {
    keys.push_back(KeyFor(i));
    auto put = (*c)->Put(KeyFor(i), BlockFor(i));
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_THAT(put->acked, ::testing::ElementsAre("solo"));
  }
  auto again = (*c)->Put(KeyFor(3), BlockFor(3));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->already_present);  // First write wins.
  for (int i = 0; i < 20; ++i) {
    auto got = (*c)->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->get.block, BlockFor(i));
    EXPECT_EQ(got->node_id, "solo");
  }
  EXPECT_TRUE(absl::IsNotFound((*c)->Get(KeyFor(999)).status()));
  keys.push_back(KeyFor(999));
  keys.push_back(KeyFor(5));
  EXPECT_EQ(*(*c)->LeadingHits(keys), 20u);
  // No members: a clean UNAVAILABLE, not a crash.
  members.SetMembers({});
  EXPECT_TRUE(absl::IsUnavailable((*c)->Get(KeyFor(1)).status()));
  EXPECT_TRUE(absl::IsUnavailable((*c)->Put(KeyFor(1), BlockFor(1)).status()));
}

class ClusterTest : public ::testing::Test {
 protected:
  static constexpr int kNodes = 3;

  void SetUp() override {
    if (access("/usr/bin/etcd", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/etcd";
    etcd_ = std::make_unique<EtcdProcess>(dir_.Sub("etcd"));
    ASSERT_TRUE(etcd_->Start().ok());
    EtcdOptions eo;
    eo.endpoints = etcd_->endpoint();
    auto e = EtcdClient::Create(eo);
    ASSERT_TRUE(e.ok());
    etcd_client_ = *std::move(e);
    watcher_ = std::make_unique<MemberWatcher>(etcd_client_.get(), WatcherOptions{});
    watcher_->Start();
    for (int i = 0; i < kNodes; ++i) {
      const std::string id = absl::StrCat("n", i);
      daemons_.push_back(std::make_unique<StratadProcess>(
          dir_.Sub(id), std::vector<std::string>{"--dram_capacity=64MiB",
                                                 "--ssd_capacity=0"}));
      ASSERT_TRUE(daemons_.back()->Start().ok());
      ids_.push_back(id);
      sidecars_.push_back(std::make_unique<MemberProcess>(std::vector<std::string>{
          "--etcd=" + etcd_->endpoint(), "--node_id=" + id,
          "--grpc=" + daemons_.back()->grpc_address(), "--capacity=64MiB",
          "--zone=z" + std::to_string(i), "--ttl_s=" + std::to_string(kTtlS)}));
      ASSERT_TRUE(sidecars_.back()->Start().ok());
    }
    ASSERT_TRUE(watcher_->WaitUntil(
        [](const MemberList& m) { return m.size() == kNodes; }, absl::Seconds(10)));
    auto c = ClusterClient::Create(watcher_.get(), Options());
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    ASSERT_EQ(cluster_->members().size(), static_cast<size_t>(kNodes));
  }

  void TearDown() override {
    cluster_.reset();
    watcher_.reset();
  }

  int IndexOf(const std::string& id) {
    for (int i = 0; i < kNodes; ++i) {
      if (ids_[i] == id) return i;
    }
    return -1;
  }

  ScratchDir dir_;
  std::unique_ptr<EtcdProcess> etcd_;
  std::unique_ptr<EtcdClient> etcd_client_;
  std::unique_ptr<MemberWatcher> watcher_;
  std::vector<std::unique_ptr<StratadProcess>> daemons_;
  std::vector<std::unique_ptr<MemberProcess>> sidecars_;
  std::vector<std::string> ids_;
  std::unique_ptr<ClusterClient> cluster_;
};

TEST_F(ClusterTest, PutsLandOnTheirTwoOwnersAndReadsAreByteExact) {
  constexpr int kKeys = 300;
  std::map<std::string, int> held;
  for (int i = 0; i < kKeys; ++i) {
    auto put = cluster_->Put(KeyFor(i), BlockFor(i));
    ASSERT_TRUE(put.ok()) << put.status();
    ASSERT_EQ(put->acked.size(), 2u) << i;
    EXPECT_FALSE(put->already_present);
    for (const auto& id : put->acked) ++held[id];
  }
  // Each daemon holds exactly the keys it owns.
  for (int n = 0; n < kNodes; ++n) {
    auto direct = Direct(*daemons_[n]);
    std::vector<BlockKey> keys;
    for (int i = 0; i < kKeys; ++i) keys.push_back(KeyFor(i));
    auto exists = direct->Exists(keys);
    ASSERT_TRUE(exists.ok()) << exists.status();
    for (int i = 0; i < kKeys; ++i) {
      const auto owners = cluster_->Owners(KeyFor(i));
      const bool owner =
          std::find(owners.begin(), owners.end(), ids_[n]) != owners.end();
      ASSERT_EQ((*exists)[i], owner) << "key " << i << " node " << ids_[n];
    }
    // R = 2 of 3 equal nodes: each holds about 2/3 of the keys.
    EXPECT_NEAR(held[ids_[n]], kKeys * 2 / 3, kKeys * 2 / 3 * 0.25) << ids_[n];
  }
  for (int i = 0; i < kKeys; ++i) {
    auto got = cluster_->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->get.block, BlockFor(i));
    EXPECT_EQ(got->owner_rank, 0u);
  }
  // First write wins: a second put of other bytes leaves the first.
  auto again = cluster_->Put(KeyFor(0), BlockFor(12345));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->already_present);
  EXPECT_EQ(cluster_->Get(KeyFor(0))->get.block, BlockFor(0));
}

TEST_F(ClusterTest, ReadsFallBackToTheReplicaAndLeadingHitsCombineOwners) {
  constexpr int kChain = 40, kStored = 25;
  std::vector<BlockKey> keys;
  for (int i = 0; i < kChain; ++i) keys.push_back(KeyFor(1000 + i));
  for (int i = 0; i < kStored; ++i) {
    ASSERT_TRUE(cluster_->Put(keys[i], BlockFor(1000 + i)).ok());
  }
  EXPECT_EQ(*cluster_->LeadingHits(keys), static_cast<uint32_t>(kStored));
  EXPECT_EQ(*cluster_->LeadingHits(absl::MakeSpan(keys).subspan(0, 10)), 10u);
  // Remove key 5 from its primary only: reads and lookups use the replica.
  const auto owners = cluster_->Owners(keys[5]);
  ASSERT_EQ(owners.size(), 2u);
  ASSERT_TRUE(Direct(*daemons_[IndexOf(owners[0])])->Remove(keys[5]).ok());
  auto got = cluster_->Get(keys[5]);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->get.block, BlockFor(1005));
  EXPECT_EQ(got->node_id, owners[1]);
  EXPECT_EQ(got->owner_rank, 1u);
  EXPECT_EQ(*cluster_->LeadingHits(keys), static_cast<uint32_t>(kStored));
  // Gone from both owners: the run ends there.
  ASSERT_TRUE(Direct(*daemons_[IndexOf(owners[1])])->Remove(keys[5]).ok());
  EXPECT_EQ(*cluster_->LeadingHits(keys), 5u);
  EXPECT_TRUE(absl::IsNotFound(cluster_->Get(keys[5]).status()));
}

// The victim's daemon dies alone (its sidecar's health check deregisters it)
// or with its sidecar (the whole node: its lease expires).
class ClusterKillTest : public ClusterTest,
                        public ::testing::WithParamInterface<bool> {};

INSTANTIATE_TEST_SUITE_P(Victim, ClusterKillTest, ::testing::Bool(),
                         [](const auto& info) {
                           return info.param ? "DaemonAndSidecar" : "DaemonOnly";
                         });

TEST_P(ClusterKillTest, KillOfOneNodeUnderLoadNeverReturnsWrongBytes) {
  const bool whole_node = GetParam();
  // Keys written before the storm. Then half of the writes before the kill,
  // half right after it (while the dead node is still a member).
  constexpr int kInitial = 200, kMaxWrites = 2000;
  ClusterLoad load(cluster_.get(), BlockFor,
                   {.first_write = kInitial, .max_writes = kMaxWrites,
                    .pause_halfway = true});
  for (int i = 0; i < kInitial; ++i) {
    auto put = cluster_->Put(KeyFor(i), BlockFor(i));
    ASSERT_TRUE(put.ok()) << put.status();
    load.AddWritten(i, put->acked);
  }
  load.Start();
  if (!load.WaitHalfway(absl::Seconds(60))) {
    FAIL() << "the writer did not get through its first half";
  }
  const std::string victim = "n1";
  const absl::Time killed = absl::Now();
  daemons_[IndexOf(victim)]->Kill();  // kill -9.
  if (whole_node) sidecars_[IndexOf(victim)]->Kill();
  load.ResumeWriter();
  // Membership converges: the sidecar's health check fails, it revokes the
  // lease, the watcher drops the node.
  const bool converged = watcher_->WaitUntil(
      [&](const MemberList& m) {
        return m.size() == kNodes - 1 &&
               std::none_of(m.begin(), m.end(),
                            [&](const Member& x) { return x.node_id == victim; });
      },
      absl::Seconds(kTtlS) + kMargin);
  const absl::Duration convergence = absl::Now() - killed;
  absl::SleepFor(absl::Milliseconds(500));  // Load after convergence.
  load.Stop();
  const ClusterLoad::Counts counts = load.counts();
  std::cout << counts.ToString() << ", membership converged in "
            << absl::FormatDuration(convergence) << " ("
            << (whole_node ? "lease expiry" : "sidecar health check")
            << ", TTL " << kTtlS << " s)\n";
  ASSERT_TRUE(converged) << "the dead node is still a member";
  EXPECT_LE(convergence, absl::Seconds(kTtlS) + kMargin);
  EXPECT_EQ(counts.wrong_bytes, 0);
  EXPECT_EQ(counts.read_failures, 0)
      << ::testing::PrintToString(counts.failure_samples);
  EXPECT_GT(counts.reads, 0);
  EXPECT_EQ(counts.write_failures, 0);
  EXPECT_EQ(cluster_->members().size(), static_cast<size_t>(kNodes - 1));

  // Every key acknowledged by a surviving node is served, byte-exact (by its
  // replica when the victim was its primary).
  const std::map<int, std::vector<std::string>> written = load.written();
  int served_by_replica = 0, lost = 0;
  for (const auto& [i, acked] : written) {
    const bool survives = std::any_of(acked.begin(), acked.end(),
                                      [&](const auto& id) { return id != victim; });
    auto got = cluster_->Get(KeyFor(i));
    if (!survives) {
      ++lost;
      EXPECT_TRUE(absl::IsNotFound(got.status())) << got.status();
      continue;
    }
    ASSERT_TRUE(got.ok()) << "key " << i << ": " << got.status();
    ASSERT_EQ(got->get.block, BlockFor(i));
    if (std::find(acked.begin(), acked.end(), victim) != acked.end()) {
      ++served_by_replica;
    }
  }
  std::cout << written.size() << " keys checked, " << served_by_replica
            << " acknowledged by the dead node too, " << lost
            << " only by it\n";
  EXPECT_GT(served_by_replica, 0);
  EXPECT_EQ(lost, 0);
  // New writes go to the two live nodes.
  for (int i = 100000; i < 100050; ++i) {
    auto put = cluster_->Put(KeyFor(i), BlockFor(i));
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->acked.size(), 2u);
    EXPECT_THAT(put->acked, ::testing::Not(::testing::Contains(victim)));
  }
}

}  // namespace
}  // namespace strata::cluster
