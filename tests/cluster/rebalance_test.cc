// The daemon side of the cluster end to end: a real etcd and 3-4 stratad
// processes on 127.0.0.1 that register themselves (no sidecar), R = 2, all
// started and stopped by the tests. Background re-replication after a
// kill -9 under a mixed load, rebalancing on a join, a drain that moves
// every block before the node exits, and an etcd restart that loses its
// data. Waits are event-driven (etcd watch) or poll a condition with a
// deadline. Plus TieredStore::SnapshotKeys and the cluster config checks.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/strata_client.h"
#include "cluster/config_store/config_store.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/member.h"
#include "cluster/membership/membership.h"
#include "cluster/placement/cluster_client.h"
#include "cluster/placement/rendezvous.h"
#include "cluster/rebalance/rate_limiter.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "kvstore/tiered_store.h"
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
using ::strata::testing::DaemonProcess;
using ::strata::testing::EtcdProcess;
using ::strata::testing::RunCommand;
using ::testing::HasSubstr;

constexpr int kTtlS = 3;
constexpr absl::Duration kMargin = absl::Seconds(3);
constexpr size_t kR = 2;
// Re-replication / rebalancing of a few thousand 4 KiB blocks on a loaded
// 2-core machine: generous, the tests print what they took.
constexpr absl::Duration kPlaceDeadline = absl::Seconds(90);

std::vector<uint8_t> BlockFor(uint64_t i) {
  return MakeBlock(ShapeForBytes(4 << 10), i);
}

std::vector<BlockKey> Keys(int begin, int end) {
  std::vector<BlockKey> keys;
  for (int i = begin; i < end; ++i) keys.push_back(KeyFor(i));
  return keys;
}

ClusterClientOptions ClientOptions() {
  ClusterClientOptions o;
  o.replication = kR;
  o.client.data_plane = "grpc";
  o.client.default_deadline = absl::Seconds(10);
  o.attempt_timeout = absl::Seconds(2);
  return o;
}

// A value from a daemon's /metrics; -1 when absent or unreachable.
double Metric(const DaemonProcess& d, const std::string& name) {
  const std::string& addr = d.metrics_address();
  httplib::Client http(addr.substr(0, addr.rfind(':')),
                       std::stoi(addr.substr(addr.rfind(':') + 1)));
  auto res = http.Get("/metrics");
  if (!res || res->status != 200) return -1;
  for (absl::string_view line : absl::StrSplit(res->body, '\n')) {
    if (absl::ConsumePrefix(&line, name + " ")) {
      double v = 0;
      if (absl::SimpleAtod(line, &v)) return v;
    }
  }
  return -1;
}

class RebalanceTest : public ::testing::Test {
 protected:
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
  }

  void TearDown() override {
    cluster_.reset();
    watcher_.reset();
    daemons_.clear();  // SIGKILL what is left.
  }

  static std::string Id(int i) { return absl::StrCat("n", i); }

  absl::Status AddNode(int i) {
    const std::string id = Id(i);
    auto d = std::make_unique<DaemonProcess>(dir_.Sub(id), [&] {
      std::vector<std::string> flags = {
          "--dram_capacity=64MiB", "--ssd_capacity=0",
          "--cluster_etcd=" + etcd_->endpoint(), "--cluster_node_id=" + id,
          "--cluster_zone=z" + std::to_string(i), "--cluster_capacity=64MiB",
          absl::StrCat("--cluster_lease_ttl_s=", kTtlS),
          absl::StrCat("--cluster_replication=", kR),
          "--rebalance_settle_ms=200", "--rebalance_bytes_per_s=32MiB",
          "--rebalance_blocks_per_s=5000"};
      for (const auto& f : extra_flags_[i]) flags.push_back(f);
      return flags;
    }());
    absl::Status s = d->Start();
    if (s.ok()) daemons_[id] = std::move(d);
    return s;
  }

  bool WaitMembers(const std::set<std::string>& ids, absl::Duration timeout) {
    return watcher_->WaitUntil(
        [&](const MemberList& m) {
          std::set<std::string> got;
          for (const Member& x : m) got.insert(x.node_id);
          return got == ids;
        },
        timeout);
  }

  std::set<std::string> RunningIds() const {
    std::set<std::string> ids;
    for (const auto& [id, d] : daemons_) {
      if (d->running()) ids.insert(id);
    }
    return ids;
  }

  // Starts nodes 0..n-1, waits until all are members, connects the client.
  void StartCluster(int n) {
    for (int i = 0; i < n; ++i) ASSERT_TRUE(AddNode(i).ok());
    ASSERT_TRUE(WaitMembers(RunningIds(), absl::Seconds(kTtlS) + kMargin))
        << "the daemons did not register themselves";
    auto c = ClusterClient::Create(watcher_.get(), ClientOptions());
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
  }

  void PutAll(int begin, int end) {
    for (int i = begin; i < end; ++i) {
      auto put = cluster_->Put(KeyFor(i), BlockFor(i));
      ASSERT_TRUE(put.ok()) << i << ": " << put.status();
      ASSERT_EQ(put->acked.size(), kR) << i;
    }
  }

  // For every running daemon, which of `keys` it holds (Exists).
  std::map<std::string, std::vector<bool>> Holdings(const std::vector<BlockKey>& keys) {
    std::map<std::string, std::vector<bool>> out;
    for (const auto& [id, d] : daemons_) {
      if (!d->running()) continue;
      client::ClientOptions o;
      o.address = d->grpc_address();
      o.data_plane = "grpc";
      auto c = client::Client::Connect(o);
      EXPECT_TRUE(c.ok()) << c.status();
      if (!c.ok()) continue;
      std::vector<bool> held;
      for (size_t b = 0; b < keys.size(); b += 1000) {
        const size_t n = std::min<size_t>(1000, keys.size() - b);
        auto e = (*c)->Exists(absl::MakeConstSpan(keys).subspan(b, n));
        EXPECT_TRUE(e.ok()) << id << ": " << e.status();
        if (!e.ok()) return {};
        held.insert(held.end(), e->begin(), e->end());
      }
      out[id] = std::move(held);
    }
    return out;
  }

  // Owners of each key under `members`, computed by the test itself.
  static std::vector<std::set<std::string>> OwnersOf(
      const std::vector<BlockKey>& keys, const MemberList& members,
      size_t r = kR) {
    std::vector<PlacementNode> nodes;
    for (const Member& m : members) {
      nodes.push_back({m.node_id, static_cast<double>(m.capacity_bytes), m.zone});
    }
    RendezvousPlacement placement(nodes);
    std::vector<std::set<std::string>> out;
    for (const BlockKey& k : keys) {
      std::set<std::string> ids;
      for (size_t o : placement.Owners(k, r)) ids.insert(nodes[o].id);
      out.push_back(std::move(ids));
    }
    return out;
  }

  // Holders of key i: the daemons whose Exists says so.
  static std::set<std::string> HoldersOf(
      const std::map<std::string, std::vector<bool>>& h, size_t i) {
    std::set<std::string> ids;
    for (const auto& [id, held] : h) {
      if (held[i]) ids.insert(id);
    }
    return ids;
  }

  // Polls until every key is held by exactly its owners under the current
  // member set. Returns the keys still misplaced at the deadline.
  int WaitPlaced(const std::vector<BlockKey>& keys, absl::Duration timeout,
                 absl::Duration* took, size_t r = kR) {
    const absl::Time start = absl::Now();
    const absl::Time deadline = start + timeout;
    int wrong = 0;
    while (true) {
      const auto owners = OwnersOf(keys, watcher_->Members(), r);
      const auto held = Holdings(keys);
      wrong = 0;
      for (size_t i = 0; i < keys.size(); ++i) {
        if (HoldersOf(held, i) != owners[i]) ++wrong;
      }
      if (wrong == 0 || absl::Now() >= deadline) break;
      absl::SleepFor(absl::Milliseconds(100));  // Poll interval.
    }
    *took = absl::Now() - start;
    return wrong;
  }

  double SumMetric(const std::string& name) {
    double sum = 0;
    for (const auto& [id, d] : daemons_) {
      if (d->running()) sum += std::max(0.0, Metric(*d, name));
    }
    return sum;
  }

  ScratchDir dir_;
  std::unique_ptr<EtcdProcess> etcd_;
  std::unique_ptr<EtcdClient> etcd_client_;
  std::unique_ptr<MemberWatcher> watcher_;
  std::map<std::string, std::unique_ptr<DaemonProcess>> daemons_;
  std::unique_ptr<ClusterClient> cluster_;
  std::map<int, std::vector<std::string>> extra_flags_;  // Per node, last.
};

TEST_F(RebalanceTest, KillNineUnderLoadServesFromReplicasAndRestoresTwoCopies) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(4));
  constexpr int kInitial = 1500, kMaxWrites = 1000;
  PutAll(0, kInitial);
  ClusterLoad load(cluster_.get(), BlockFor,
                   {.first_write = kInitial, .max_writes = kMaxWrites,
                    .pause_halfway = true});
  for (int i = 0; i < kInitial; ++i) load.AddWritten(i);
  load.Start();
  const bool halfway = load.WaitHalfway(absl::Seconds(60));
  const std::string victim = "n1";
  const absl::Time kill_time = absl::Now();
  if (halfway) daemons_[victim]->Kill();  // kill -9: the lease expires.
  load.ResumeWriter();
  std::set<std::string> live = RunningIds();
  const bool converged =
      halfway && WaitMembers(live, absl::Seconds(kTtlS) + kMargin);
  const absl::Duration convergence = absl::Now() - kill_time;
  // Load continues while the survivors re-replicate.
  absl::SleepFor(absl::Milliseconds(500));
  load.Stop();
  ASSERT_TRUE(halfway) << "the writer did not get through its first half";
  const ClusterLoad::Counts counts = load.counts();
  std::cout << counts.ToString() << ", membership converged in "
            << absl::FormatDuration(convergence) << " (TTL " << kTtlS << " s)\n";
  ASSERT_TRUE(converged) << "the dead node is still a member";
  EXPECT_LE(convergence, absl::Seconds(kTtlS) + kMargin);
  EXPECT_EQ(counts.wrong_bytes, 0);
  EXPECT_EQ(counts.read_failures, 0)
      << ::testing::PrintToString(counts.failure_samples);
  EXPECT_EQ(counts.write_failures, 0);
  EXPECT_GT(counts.reads, 0);
  EXPECT_GT(counts.from_replica, 0);  // The dead node's keys, by their replicas.

  // Re-replication: every key is back on exactly its R owners among the
  // survivors (counted with Exists on each node).
  std::vector<BlockKey> keys;
  std::vector<int> ids;
  for (const auto& [i, acked] : load.written()) ids.push_back(i);
  for (int i : ids) keys.push_back(KeyFor(i));
  absl::Duration took;
  const int misplaced = WaitPlaced(keys, kPlaceDeadline, &took);
  const absl::Duration since_kill = absl::Now() - kill_time;
  const auto held = Holdings(keys);
  int two_copies = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (HoldersOf(held, i).size() == kR) ++two_copies;
  }
  std::cout << keys.size() << " keys, " << two_copies << " with " << kR
            << " copies on the " << live.size() << " survivors within "
            << absl::FormatDuration(since_kill) << " of the kill; pushed "
            << SumMetric("strata:rebalance_blocks_pushed_total") << " blocks, "
            << SumMetric("strata:rebalance_bytes_pushed_total") << " bytes\n";
  EXPECT_EQ(misplaced, 0);
  EXPECT_EQ(two_copies, static_cast<int>(keys.size()));
  EXPECT_GT(SumMetric("strata:rebalance_blocks_pushed_total"), 0);
  // And every key reads back byte-exact.
  for (int i : ids) {
    auto got = cluster_->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << i << ": " << got.status();
    ASSERT_EQ(got->get.block, BlockFor(i)) << i;
  }
}

TEST_F(RebalanceTest, JoiningNodeTakesAboutOneNthAndTheRestStayPut) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(3));
  constexpr int kKeys = 2000;
  PutAll(0, kKeys);
  const std::vector<BlockKey> keys = Keys(0, kKeys);
  const auto before = Holdings(keys);
  ASSERT_TRUE(AddNode(3).ok());
  ASSERT_TRUE(WaitMembers(RunningIds(), absl::Seconds(kTtlS) + kMargin));
  absl::Duration took;
  EXPECT_EQ(WaitPlaced(keys, kPlaceDeadline, &took), 0);
  const auto after = Holdings(keys);
  const auto owners = OwnersOf(keys, watcher_->Members());
  int taken = 0, primary = 0, stayed = 0, moved_off = 0, moved_between_old = 0;
  std::vector<PlacementNode> nodes;
  for (const Member& m : watcher_->Members()) {
    nodes.push_back({m.node_id, static_cast<double>(m.capacity_bytes), m.zone});
  }
  RendezvousPlacement placement(nodes);
  for (size_t i = 0; i < keys.size(); ++i) {
    const auto old_holders = HoldersOf(before, i);
    auto new_holders = HoldersOf(after, i);
    if (new_holders.count("n3")) ++taken;
    if (nodes[placement.Primary(keys[i])].id == "n3") ++primary;
    if (new_holders == old_holders) ++stayed;
    new_holders.erase("n3");
    for (const auto& id : new_holders) {
      if (!old_holders.count(id)) ++moved_between_old;
    }
    for (const auto& id : old_holders) {
      if (!new_holders.count(id)) ++moved_off;
    }
  }
  const double dropped = SumMetric("strata:rebalance_blocks_dropped_total");
  std::cout << "n3 took " << taken << " of " << kKeys << " keys (" << primary
            << " as primary), " << stayed << " stayed put, " << moved_off
            << " copies left old nodes (dropped counter " << dropped
            << "), placement settled in " << absl::FormatDuration(took) << "\n";
  // R = 2 over 4 equal nodes: the newcomer owns about 2/4 of the keys and is
  // primary of about 1/4.
  EXPECT_NEAR(taken, kKeys * kR / 4.0, kKeys * kR / 4.0 * 0.1);
  EXPECT_NEAR(primary, kKeys / 4.0, kKeys / 4.0 * 0.1);
  // The rest stay put: no copy moves between old nodes, and every key the
  // newcomer took left exactly one old node.
  EXPECT_EQ(moved_between_old, 0);
  EXPECT_EQ(stayed, kKeys - taken);
  EXPECT_EQ(moved_off, taken);
  // Blocks actually moved: pushed to n3, then dropped by the old holder.
  EXPECT_EQ(dropped, moved_off);
  EXPECT_GE(Metric(*daemons_["n3"], "strata:puts_total"), taken);
}

// Blocks a joining node receives keep their labels (tenant, model: admin
// filters find them there) and their pins (the pushed copy is pinned too).
TEST_F(RebalanceTest, PushedBlocksKeepTheirLabelsAndPins) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(3));
  constexpr int kKeys = 200, kPinned = 60;
  client::PutOptions labels;
  labels.tenant = "tenant-a";
  labels.model = "model-b";
  for (int i = 0; i < kKeys; ++i) {
    auto put = cluster_->Put(KeyFor(i), BlockFor(i), labels);
    ASSERT_TRUE(put.ok()) << i << ": " << put.status();
  }
  auto connect = [&](const std::string& id) {
    client::ClientOptions o;
    o.address = daemons_[id]->grpc_address();
    o.data_plane = "grpc";
    auto c = client::Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  };
  for (int i = 0; i < kPinned; ++i) {  // Pinned on every holder.
    for (const std::string& id : cluster_->Owners(KeyFor(i))) {
      ASSERT_TRUE(connect(id)->Pin(KeyFor(i), absl::Minutes(30)).ok()) << i;
    }
  }
  ASSERT_TRUE(AddNode(3).ok());
  ASSERT_TRUE(WaitMembers(RunningIds(), absl::Seconds(kTtlS) + kMargin));
  const std::vector<BlockKey> keys = Keys(0, kKeys);
  absl::Duration took;
  ASSERT_EQ(WaitPlaced(keys, kPlaceDeadline, &took), 0);
  const std::vector<bool> held = Holdings(keys)["n3"];
  ASSERT_EQ(held.size(), keys.size());
  int taken = 0, taken_pinned = 0;
  for (int i = 0; i < kKeys; ++i) {
    taken += held[i];
    taken_pinned += held[i] && i < kPinned;
  }
  ASSERT_GT(taken_pinned, 0);
  auto n3 = connect("n3");
  client::EvictFilter f;
  f.tenant = "tenant-a";
  f.model = "model-b";
  f.dry_run = true;
  auto r = n3->Evict(f);
  ASSERT_TRUE(r.ok()) << r.status();
  std::cout << "n3 took " << taken << " blocks (" << taken_pinned
            << " pinned); the label filter matches " << r->blocks
            << " unpinned + " << r->skipped_pinned << " pinned\n";
  EXPECT_EQ(r->blocks + r->skipped_pinned, static_cast<uint64_t>(taken));
  EXPECT_EQ(r->skipped_pinned, static_cast<uint64_t>(taken_pinned));
  EXPECT_EQ(Metric(*daemons_["n3"], "strata:pinned_blocks"), taken_pinned);
}

// Right after a join, most blocks whose primary is the newcomer are still
// on their old holders (here the daemons push 1 block/s). A lookup with
// R = 1 (only the new primary owns a key) must still count them: it asks
// the owners under the previous member set too, as Get does.
TEST_F(RebalanceTest, LeadingHitsCountsBlocksNotYetPushedAfterAJoin) {
  for (int i = 0; i < 4; ++i) extra_flags_[i] = {"--rebalance_blocks_per_s=1"};
  ASSERT_NO_FATAL_FAILURE(StartCluster(3));
  constexpr int kKeys = 120;
  PutAll(0, kKeys);
  const std::vector<BlockKey> keys = Keys(0, kKeys);
  ClusterClientOptions one = ClientOptions();
  one.replication = 1;
  auto reader = ClusterClient::Create(watcher_.get(), one);  // Before the join.
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ(*(*reader)->LeadingHits(keys), static_cast<uint32_t>(kKeys));
  ASSERT_TRUE(AddNode(3).ok());
  ASSERT_TRUE(WaitMembers(RunningIds(), absl::Seconds(kTtlS) + kMargin));
  const std::vector<bool> on_n3 = Holdings(keys)["n3"];
  ASSERT_EQ(on_n3.size(), keys.size());
  int not_yet = 0;  // Keys whose only R = 1 owner is n3, which lacks them.
  for (int i = 0; i < kKeys; ++i) {
    if ((*reader)->Owners(keys[i]) == std::vector<std::string>{"n3"} && !on_n3[i]) {
      ++not_yet;
    }
  }
  auto hits = (*reader)->LeadingHits(keys);
  ASSERT_TRUE(hits.ok()) << hits.status();
  std::cout << not_yet << " keys owned by n3 were not there yet; leading hits "
            << *hits << " of " << kKeys << "\n";
  ASSERT_GE(not_yet, 10);  // Else the test would not test the fallback.
  EXPECT_EQ(*hits, static_cast<uint32_t>(kKeys));
}

TEST_F(RebalanceTest, DrainMovesEveryBlockAwayBeforeTheNodeExits) {
  // The drained node moves at most 1000 blocks/s: the drain takes about a
  // second, during which a reader with R = 1 (only the new primary is an
  // owner) must still find every block (on the draining node: the client's
  // capacity-0 fallback).
  constexpr int kBlocksPerS = 1000;
  extra_flags_[2] = {absl::StrCat("--rebalance_blocks_per_s=", kBlocksPerS)};
  ASSERT_NO_FATAL_FAILURE(StartCluster(4));
  constexpr int kKeys = 2000;
  PutAll(0, kKeys);
  const std::vector<BlockKey> keys = Keys(0, kKeys);
  const auto before = Holdings(keys);
  const int on_victim = static_cast<int>(
      std::count(before.at("n2").begin(), before.at("n2").end(), true));
  ClusterClientOptions one = ClientOptions();
  one.replication = 1;
  auto reader_client = ClusterClient::Create(watcher_.get(), one);
  ASSERT_TRUE(reader_client.ok());
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, misses{0}, wrong{0};
  std::thread reader([&] {
    for (int i = 0; !stop; i = (i + 1) % kKeys) {
      auto got = (*reader_client)->Get(KeyFor(i));
      ++reads;
      if (!got.ok()) {
        ++misses;
      } else if (got->get.block != BlockFor(i)) {
        ++wrong;
      }
    }
  });
  const absl::Time start = absl::Now();
  auto r = RunCommand({STRATACTL_PATH, "--addr=" + daemons_["n2"]->grpc_address(),
                       "drain", "--timeout=120s"});
  const absl::Duration took = absl::Now() - start;
  stop = true;
  reader.join();
  std::cout << "stratactl drain (" << absl::FormatDuration(took) << ", "
            << reads << " reads with R = 1 meanwhile, " << misses
            << " failed):\n" << r.out;
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(misses, 0);
  EXPECT_EQ(wrong, 0);
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("drained: ", on_victim,
                                            " blocks moved, 0 left")));
  // It exits by itself, cleanly, and has left the member set.
  EXPECT_TRUE(daemons_["n2"]->WaitExit(absl::Seconds(30)).ok());
  const absl::Duration exited = absl::Now() - start;
  EXPECT_TRUE(WaitMembers(RunningIds(), absl::Seconds(5)));
  // No lost block: each is on its owners among the three that remain (the
  // drained node pushed it there before dropping it).
  absl::Duration placed;
  EXPECT_EQ(WaitPlaced(keys, kPlaceDeadline, &placed), 0);
  std::cout << "exited " << absl::FormatDuration(exited)
            << " after the drain began; placement checked in "
            << absl::FormatDuration(placed) << "\n";
  for (int i = 0; i < kKeys; ++i) {
    auto got = cluster_->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << i << ": " << got.status();
    ASSERT_EQ(got->get.block, BlockFor(i)) << i;
  }
}

TEST_F(RebalanceTest, EtcdRestartWithoutDataDaemonsKeepServingAndReRegister) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(3));
  constexpr int kKeys = 500;
  PutAll(0, kKeys);
  etcd_->Kill();
  etcd_->WipeData();
  // etcd is gone: the data path does not need it.
  for (int i = 0; i < kKeys; ++i) {
    auto got = cluster_->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << i << ": " << got.status();
    ASSERT_EQ(got->get.block, BlockFor(i));
  }
  PutAll(kKeys, kKeys + 50);
  ASSERT_TRUE(etcd_->Start().ok());
  const absl::Time restarted = absl::Now();
  // The daemons register themselves again (their leases are gone with the
  // data) and their own watchers list the new etcd: poll etcd's member keys
  // and the daemons' metrics.
  const absl::Time deadline = restarted + absl::Seconds(kTtlS) + kMargin;
  std::string state;
  bool back = false;
  while (!back && absl::Now() < deadline) {
    auto listed = etcd_client_->GetPrefix(MembersPrefix(kDefaultEtcdPrefix));
    back = listed.ok() && listed->kvs.size() == daemons_.size();
    state = absl::StrCat("etcd lists ", listed.ok() ? listed->kvs.size() : 0);
    for (const auto& [id, d] : daemons_) {
      const double registrations =
          Metric(*d, "strata:cluster_registrations_total");
      const double registered = Metric(*d, "strata:cluster_registered");
      const double members = Metric(*d, "strata:cluster_members");
      absl::StrAppend(&state, "; ", id, ": registrations ", registrations,
                      " registered ", registered, " sees ", members);
      back = back && registrations >= 2 && registered == 1 &&
             members == static_cast<double>(daemons_.size());
    }
    if (!back) absl::SleepFor(absl::Milliseconds(50));  // Poll interval.
  }
  ASSERT_TRUE(back) << "the daemons did not re-register: " << state;
  std::cout << "all daemons re-registered and see each other "
            << absl::FormatDuration(absl::Now() - restarted)
            << " after etcd restarted empty\n";
  ASSERT_TRUE(WaitMembers(RunningIds(), absl::Seconds(kTtlS) + kMargin));
  const std::vector<BlockKey> keys = Keys(0, kKeys + 50);
  absl::Duration took;
  EXPECT_EQ(WaitPlaced(keys, kPlaceDeadline, &took), 0);
  for (int i = 0; i < kKeys + 50; ++i) {
    auto got = cluster_->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << i << ": " << got.status();
    ASSERT_EQ(got->get.block, BlockFor(i));
  }
  // SIGTERM: the daemon revokes its lease and exits 0; the others see it
  // leave at once, not after the TTL.
  const absl::Time stopping = absl::Now();
  ASSERT_TRUE(daemons_["n0"]->Stop().ok());
  EXPECT_TRUE(WaitMembers(RunningIds(), absl::Seconds(kTtlS)));
  std::cout << "n0 stopped and left in "
            << absl::FormatDuration(absl::Now() - stopping) << "\n";
}

// Membership churn under a mixed load: a join, a kill -9, a drain and
// another join, back to back, while two readers and a writer run. Every
// acknowledged key must stay readable with the right bytes, and end on
// exactly its R owners.
TEST_F(RebalanceTest, ChurnUnderLoadLosesNothingAndEndsPlaced) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(3));
  constexpr int kInitial = 1000, kMaxWrites = 1500;
  PutAll(0, kInitial);
  ClusterLoad load(cluster_.get(), BlockFor,
                   {.first_write = kInitial, .max_writes = kMaxWrites,
                    .reader_seeds = {11, 12}});
  for (int i = 0; i < kInitial; ++i) load.AddWritten(i);
  load.Start();
  const absl::Time start = absl::Now();
  ASSERT_TRUE(AddNode(3).ok());
  ASSERT_TRUE(WaitMembers(RunningIds(), absl::Seconds(kTtlS) + kMargin));
  daemons_["n0"]->Kill();
  auto drained = RunCommand({STRATACTL_PATH,
                             "--addr=" + daemons_["n1"]->grpc_address(),
                             "drain", "--timeout=120s"});
  EXPECT_EQ(drained.exit_code, 0) << drained.out;
  EXPECT_TRUE(daemons_["n1"]->WaitExit(absl::Seconds(30)).ok());
  ASSERT_TRUE(AddNode(4).ok());
  const bool converged = WaitMembers(RunningIds(), absl::Seconds(kTtlS) + kMargin);
  load.Stop();
  ASSERT_TRUE(converged);
  const ClusterLoad::Counts counts = load.counts();
  std::cout << "churn (join, kill -9, drain, join) in "
            << absl::FormatDuration(absl::Now() - start) << ": "
            << counts.ToString() << "\n";
  EXPECT_EQ(counts.wrong_bytes, 0);
  EXPECT_EQ(counts.read_failures, 0)
      << ::testing::PrintToString(counts.failure_samples);
  EXPECT_EQ(counts.write_failures, 0);
  std::vector<int> written;
  for (const auto& [i, acked] : load.written()) written.push_back(i);
  std::vector<BlockKey> keys;
  for (int i : written) keys.push_back(KeyFor(i));
  absl::Duration took;
  EXPECT_EQ(WaitPlaced(keys, kPlaceDeadline, &took), 0);
  std::cout << keys.size() << " keys on exactly their owners among "
            << RunningIds().size() << " nodes " << absl::FormatDuration(took)
            << " after the last join was seen\n";
  for (int i : written) {
    auto got = cluster_->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << i << ": " << got.status();
    ASSERT_EQ(got->get.block, BlockFor(i)) << i;
  }
}

// Both owners of a key are frozen (SIGSTOP) when it is put: the put is
// handed to the next-ranked member, reads find it there, and once the owners
// are back (after their leases expired and they registered again) the
// daemons move it to exactly its owners.
TEST_F(RebalanceTest, HandedOffPutReachesItsOwnersWhenTheyReturn) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(4));
  const BlockKey key = KeyFor(777777);
  const std::vector<std::string> owners = cluster_->Owners(key);
  ASSERT_EQ(owners.size(), kR);
  for (const auto& id : owners) daemons_[id]->Pause();
  auto put = cluster_->Put(key, BlockFor(777777));
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_TRUE(put->handed_off);
  ASSERT_EQ(put->acked.size(), 1u);
  EXPECT_THAT(owners, ::testing::Not(::testing::Contains(put->acked[0])));
  auto got = cluster_->Get(key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->get.block, BlockFor(777777));
  // The frozen owners' leases expire; then they come back.
  std::set<std::string> live = RunningIds();
  for (const auto& id : owners) live.erase(id);
  ASSERT_TRUE(WaitMembers(live, absl::Seconds(kTtlS) + kMargin));
  for (const auto& id : owners) daemons_[id]->Resume();
  ASSERT_TRUE(WaitMembers(RunningIds(), absl::Seconds(kTtlS) + kMargin));
  absl::Duration took;
  EXPECT_EQ(WaitPlaced({key}, kPlaceDeadline, &took), 0);
  std::cout << "handed to " << put->acked[0] << "; on its owners "
            << absl::FormatDuration(took) << " after they were back\n";
  got = cluster_->Get(key);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->get.block, BlockFor(777777));
}

TEST_F(RebalanceTest, ReplicationFactorFromTheClusterConfigAddsCopies) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(4));
  constexpr int kKeys = 600;
  PutAll(0, kKeys);
  // The cluster config in etcd overrides the daemons' --cluster_replication.
  ClusterConfigStore store(etcd_client_.get(), std::string(kDefaultEtcdPrefix));
  ClusterConfig config;
  config.set_replication_factor(3);
  auto version = store.PutConfig(config, 0);
  ASSERT_TRUE(version.ok()) << version.status();
  absl::Duration took;
  EXPECT_EQ(WaitPlaced(Keys(0, kKeys), kPlaceDeadline, &took, 3), 0);
  std::cout << "R 2 -> 3: every key on its 3 owners after "
            << absl::FormatDuration(took) << "\n";
  // And back to 2: the third copies are dropped once the two owners hold
  // them.
  config.set_replication_factor(2);
  ASSERT_TRUE(store.PutConfig(config, *version).ok());
  EXPECT_EQ(WaitPlaced(Keys(0, kKeys), kPlaceDeadline, &took, 2), 0);
  std::cout << "R 3 -> 2: exact again after " << absl::FormatDuration(took)
            << "\n";
}

TEST(ClusterConfig, NodeIdIsRequiredWithEtcdAndSingleNodeNeedsNoEtcd) {
  ScratchDir dir;
  auto r = RunCommand({STRATAD_PATH, "--listen=127.0.0.1:0",
                       "--metrics_listen=", "--data_plane_listen=",
                       "--data_dir=" + dir.Sub("a"),
                       "--cluster_etcd=127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 2);
  r = RunCommand({STRATAD_PATH, "--cluster_lease_ttl_s=1", "--cluster_etcd=x:1",
                  "--cluster_node_id=a", "--data_dir=" + dir.Sub("b")});
  EXPECT_EQ(r.exit_code, 2);
  // No cluster flags: single-node mode, no etcd anywhere (port 1 would
  // refuse), Drain answers without a cluster state.
  DaemonProcess solo(dir.Sub("solo"), {"--dram_capacity=16MiB", "--ssd_capacity=0"});
  ASSERT_TRUE(solo.Start().ok());
  auto ctl = RunCommand({STRATACTL_PATH, "--addr=" + solo.grpc_address(), "drain"});
  EXPECT_EQ(ctl.exit_code, 0);
  EXPECT_THAT(ctl.out, HasSubstr("new blocks are refused"));
  EXPECT_EQ(Metric(solo, "strata:cluster_members"), -1);
  EXPECT_TRUE(solo.Stop().ok());
}

TEST(RateLimiter, HoldsTheAverageRateAfterOneBurst) {
  // 1000 units/s with a bucket of 100: 600 units take at least 0.5 s (the
  // first 100 pass at once). A lower bound only: a loaded machine is slower.
  RateLimiter limiter(1000, 100);
  const absl::Time start = absl::Now();
  for (int i = 0; i < 600; ++i) ASSERT_TRUE(limiter.Acquire(1));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(500));
  // A request larger than the bucket passes once it is full, then the
  // debt delays the next one by its size over the rate.
  RateLimiter bytes(1000, 100);
  ASSERT_TRUE(bytes.Acquire(300));
  const absl::Time after_big = absl::Now();
  ASSERT_TRUE(bytes.Acquire(1));
  EXPECT_GE(absl::Now() - after_big, absl::Milliseconds(190));
  // Unlimited and cancelled.
  RateLimiter unlimited(0, 1);
  for (int i = 0; i < 100000; ++i) ASSERT_TRUE(unlimited.Acquire(1e9));
  RateLimiter slow(1, 1);
  ASSERT_TRUE(slow.Acquire(1));
  std::thread canceller([&] { slow.Cancel(); });
  EXPECT_FALSE(slow.Acquire(1));  // Woken by Cancel, not after 1 s.
  canceller.join();
}

TEST(SnapshotKeys, ListsEveryStoredBlockWithItsSize) {
  kvstore::TieredStoreOptions o;
  o.dram_capacity_bytes = 8 << 20;
  auto store = kvstore::TieredStore::Open(o);
  ASSERT_TRUE(store.ok());
  std::map<BlockKey, uint64_t> want;
  for (int i = 0; i < 100; ++i) {
    const auto block = MakeBlock(ShapeForBytes((1 + i % 4) << 10), i);
    ASSERT_TRUE((*store)->Put(KeyFor(i), block).ok());
    want[KeyFor(i)] = block.size();
  }
  ASSERT_TRUE((*store)->Remove(KeyFor(7)).ok());
  want.erase(KeyFor(7));
  std::map<BlockKey, uint64_t> got;
  for (const auto& k : (*store)->SnapshotKeys()) got[k.key] = k.size;
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace strata::cluster
