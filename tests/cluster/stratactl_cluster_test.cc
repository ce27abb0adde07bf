// `stratactl cluster ...` against a real etcd and 3 real stratad daemons on
// 127.0.0.1, registered by strata-member sidecars (zones z1..z3). The suite
// starts them once; each test uses its own keys (a distinct first byte) so
// the tests do not depend on each other's order.
//
// Outputs are checked through --json (and the exit status); the table form
// is checked for its header and one row.
#include <unistd.h>

#include <iostream>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/strata_client.h"
#include "cluster/config_store/config_store.h"
#include "cluster/placement/rendezvous.h"
#include "codecs/codec_profile.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "tests/cluster/cluster_processes.h"
#include "tests/cluster/stratad_process.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::cluster {
namespace {

using ::strata::kvstore::BlockKey;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::testing::CommandResult;
using ::strata::testing::EtcdProcess;
using ::strata::testing::MemberProcess;
using ::strata::testing::RunCommand;
using ::strata::testing::StratadProcess;

constexpr int kNodes = 3;
// The sidecars' etcd lease. Long enough that a loaded machine (two suites of
// eight processes on two cores) does not let a live member's lease lapse
// between renewals; ZDeadDaemon... waits this long for a dead one's to go.
constexpr int kLeaseTtlSeconds = 10;

// Every integer value of `"name":N` in `json`, in order.
std::vector<long long> JsonInts(const std::string& json,
                                const std::string& name) {
  std::vector<long long> out;
  const std::regex re("\"" + name + "\":(-?[0-9]+)");
  for (auto it = std::sregex_iterator(json.begin(), json.end(), re);
       it != std::sregex_iterator(); ++it) {
    out.push_back(std::stoll((*it)[1]));
  }
  return out;
}
std::vector<std::string> JsonStrings(const std::string& json,
                                     const std::string& name) {
  std::vector<std::string> out;
  const std::regex re("\"" + name + "\":\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(json.begin(), json.end(), re);
       it != std::sregex_iterator(); ++it) {
    out.push_back((*it)[1]);
  }
  return out;
}

std::vector<uint8_t> SmallBlock(uint64_t seed) {
  kvstore::BlockShape shape{kvstore::DType::kBFloat16, 1, 4, 2, 64};
  std::vector<uint8_t> payload(shape.RawBytes());
  for (size_t i = 0; i < payload.size(); ++i)
    payload[i] = (seed * 31 + i) & 0xff;
  return *kvstore::EncodeBlock(shape, kvstore::CodecId::kRaw, {}, payload);
}

// Key `i` of a test: its first byte names the test, for --key-prefix.
BlockKey TestKey(uint8_t test, uint64_t i) {
  return BlockKey{(uint64_t{test} << 56) | 0x00c0ffee, i};
}

class StratactlClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (access("/usr/bin/etcd", X_OK) != 0) return;
    dir_ = new ScratchDir();
    etcd_ = new EtcdProcess(dir_->Sub("etcd"));
    ASSERT_TRUE(etcd_->Start().ok());
    for (int i = 1; i <= kNodes; ++i) {
      const std::string id = absl::StrCat("n", i);
      daemons_.push_back(std::make_unique<StratadProcess>(
          dir_->Sub(id), std::vector<std::string>{"--dram_capacity=64MiB",
                                                  "--ssd_capacity=0"}));
      ASSERT_TRUE(daemons_.back()->Start().ok());
      sidecars_.push_back(
          std::make_unique<MemberProcess>(std::vector<std::string>{
              "--etcd=" + etcd_->endpoint(), "--node_id=" + id,
              "--grpc=" + daemons_.back()->grpc_address(), "--capacity=64MiB",
              absl::StrCat("--zone=z", i),
              absl::StrCat("--ttl_s=", kLeaseTtlSeconds),
              "--health_check=false"}));
      ASSERT_TRUE(sidecars_.back()->Start().ok());
    }
  }
  static void TearDownTestSuite() {
    sidecars_.clear();
    daemons_.clear();
    delete etcd_;
    etcd_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (etcd_ == nullptr) GTEST_SKIP() << "no /usr/bin/etcd";
  }

  static CommandResult Ctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {STRATACTL_PATH,
                                     "--etcd=" + etcd_->endpoint(),
                                     "--prefix=/strata/v1/", "--deadline=30s"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  }
  // Ctl with stderr in `out` too (error messages). Arguments must not need
  // shell quoting.
  static CommandResult CtlWithErrors(const std::vector<std::string>& args) {
    std::string line = absl::StrCat(STRATACTL_PATH, " --etcd=",
                                    etcd_->endpoint(),
                                    " --prefix=/strata/v1/ --deadline=30s");
    for (const std::string& a : args) absl::StrAppend(&line, " ", a);
    return RunCommand({"/bin/sh", "-c", line + " 2>&1"});
  }

  static std::unique_ptr<client::Client> ClientFor(int node) {
    client::ClientOptions o;
    o.address = daemons_[node]->grpc_address();
    auto c = client::Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  // Prints the members and each node's usage when the test has failed by the
  // time it goes out of scope: what the cluster looked like, for failures
  // seen only on loaded machines.
  class PrintClusterOnFailure {
   public:
    ~PrintClusterOnFailure() {
      if (!::testing::Test::HasFailure()) return;
      std::cerr << "cluster members: "
                << Ctl({"cluster", "members", "--json"}).out
                << "cluster usage: " << Ctl({"cluster", "usage", "--json"}).out;
    }
  };

  // The members as placement sees them (capacity 64 MiB, zones z1..z3).
  static RendezvousPlacement Placement() {
    std::vector<PlacementNode> nodes;
    for (int i = 1; i <= kNodes; ++i) {
      nodes.push_back(
          {absl::StrCat("n", i), double(64 << 20), absl::StrCat("z", i)});
    }
    return RendezvousPlacement(std::move(nodes));
  }

  static ScratchDir* dir_;
  static EtcdProcess* etcd_;
  static std::vector<std::unique_ptr<StratadProcess>> daemons_;
  static std::vector<std::unique_ptr<MemberProcess>> sidecars_;
};

ScratchDir* StratactlClusterTest::dir_ = nullptr;
EtcdProcess* StratactlClusterTest::etcd_ = nullptr;
std::vector<std::unique_ptr<StratadProcess>> StratactlClusterTest::daemons_;
std::vector<std::unique_ptr<MemberProcess>> StratactlClusterTest::sidecars_;

TEST_F(StratactlClusterTest,
       MembersListsEveryNodeWithZoneCapacityLeaseAndHealth) {
  CommandResult r = Ctl({"cluster", "members", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(JsonStrings(r.out, "node_id"),
            (std::vector<std::string>{"n1", "n2", "n3"}));
  EXPECT_EQ(JsonStrings(r.out, "zone"),
            (std::vector<std::string>{"z1", "z2", "z3"}));
  EXPECT_EQ(JsonStrings(r.out, "health"),
            (std::vector<std::string>{"serving", "serving", "serving"}));
  for (long long cap : JsonInts(r.out, "capacity_bytes"))
    EXPECT_EQ(cap, 64 << 20);
  const auto ttl = JsonInts(r.out, "lease_ttl_left_s");
  ASSERT_EQ(ttl.size(), 3u);
  for (long long t : ttl) {
    EXPECT_GE(t, 0);
    EXPECT_LE(t, kLeaseTtlSeconds);
  }
  for (size_t i = 0; i < daemons_.size(); ++i) {
    EXPECT_NE(r.out.find(daemons_[i]->grpc_address()), std::string::npos);
  }
  CommandResult table = Ctl({"cluster", "members"});
  ASSERT_EQ(table.exit_code, 0);
  EXPECT_NE(table.out.find("LEASE_TTL"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("3 members"), std::string::npos) << table.out;
}

TEST_F(StratactlClusterTest, UsageShowsPerNodeTiersAndHitRates) {
  PrintClusterOnFailure print_cluster_on_failure;
  auto c = ClientFor(1);  // n2
  const auto block = SmallBlock(1);
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(c->Put(TestKey(0x11, i), block).ok());
  }
  ASSERT_TRUE(c->Get(TestKey(0x11, 0)).ok());
  ASSERT_TRUE(c->Get(TestKey(0x11, 1)).ok());
  EXPECT_FALSE(c->Get(TestKey(0x11, 99)).ok());  // A miss.
  CommandResult r = Ctl({"cluster", "usage", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  // n2's record: its own gets/hits and a dram tier holding the 4 blocks.
  const size_t n2 = r.out.find("\"node_id\":\"n2\"");
  const size_t n3 = r.out.find("\"node_id\":\"n3\"");
  ASSERT_NE(n2, std::string::npos);
  ASSERT_NE(n3, std::string::npos);
  const std::string rec = r.out.substr(n2, n3 - n2);
  EXPECT_GE(JsonInts(rec, "gets")[0], 3);
  EXPECT_GE(JsonInts(rec, "get_hits")[0], 2);
  EXPECT_GE(JsonInts(rec, "blocks")[0], 4);
  EXPECT_GE(JsonInts(rec, "used_bytes")[0],
            4 * static_cast<long long>(block.size()));
  EXPECT_EQ(JsonStrings(rec, "tier")[0], "dram");
  CommandResult table = Ctl({"cluster", "usage"});
  ASSERT_EQ(table.exit_code, 0);
  EXPECT_NE(table.out.find("HIT%"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("(cluster)"), std::string::npos) << table.out;
}

TEST_F(StratactlClusterTest, EvictFansOutToEveryNodeAndSums) {
  PrintClusterOnFailure print_cluster_on_failure;
  const auto block = SmallBlock(2);
  // 1, 2 and 3 blocks on n1, n2, n3.
  for (int node = 0; node < kNodes; ++node) {
    auto c = ClientFor(node);
    for (int i = 0; i <= node; ++i) {
      const auto put = c->Put(TestKey(0x22, node * 10 + i), block);
      ASSERT_TRUE(put.ok()) << "node " << node << " block " << i << ": " << put.status();
    }
  }
  const std::string filter = "--key-prefix=22";
  CommandResult dry = Ctl({"cluster", "evict", filter, "--dry-run", "--json"});
  ASSERT_EQ(dry.exit_code, 0) << dry.out;
  ASSERT_EQ(JsonStrings(dry.out, "node_id"),
            (std::vector<std::string>{"n1", "n2", "n3"}))
      << dry.out;
  std::vector<long long> blocks = JsonInts(dry.out, "blocks");
  ASSERT_EQ(blocks.size(), 4u) << dry.out;  // 3 nodes + the total.
  EXPECT_EQ(blocks[0], 1);
  EXPECT_EQ(blocks[1], 2);
  EXPECT_EQ(blocks[2], 3);
  EXPECT_EQ(blocks[3], 6);
  EXPECT_EQ(JsonInts(dry.out, "failed_nodes")[0], 0);
  // The dry run removed nothing; the real one removes all 6.
  CommandResult real = Ctl({"cluster", "evict", filter});
  ASSERT_EQ(real.exit_code, 0) << real.out;
  EXPECT_NE(real.out.find("evicted 6 blocks"), std::string::npos) << real.out;
  CommandResult again =
      Ctl({"cluster", "evict", filter, "--dry-run", "--json"});
  ASSERT_EQ(again.exit_code, 0) << again.out;
  EXPECT_EQ(JsonInts(again.out, "blocks").back(), 0) << again.out;
}

TEST_F(StratactlClusterTest, EvictWithMoreMinMembersThanListedEvictsNothing) {
  PrintClusterOnFailure print_cluster_on_failure;
  auto c = ClientFor(0);
  ASSERT_TRUE(c->Put(TestKey(0x44, 1), SmallBlock(4)).ok());
  CommandResult refused =
      CtlWithErrors({"cluster", "evict", "--key-prefix=44", "--min-members=4"});
  EXPECT_EQ(refused.exit_code, 1) << refused.out;
  EXPECT_NE(refused.out.find("FAILED_PRECONDITION: min-members: 3 members "
                             "listed, fewer than 4"),
            std::string::npos)
      << refused.out;
  EXPECT_TRUE(c->Get(TestKey(0x44, 1)).ok());
  // With the cluster's real size it goes ahead.
  CommandResult done =
      Ctl({"cluster", "evict", "--key-prefix=44", "--min-members=3"});
  ASSERT_EQ(done.exit_code, 0) << done.out;
  EXPECT_NE(done.out.find("evicted 1 blocks"), std::string::npos) << done.out;
}

TEST_F(StratactlClusterTest, PinGoesToTheKeysOwnersByPlacement) {
  PrintClusterOnFailure print_cluster_on_failure;
  const BlockKey key = TestKey(0x33, 7);
  const auto block = SmallBlock(3);
  for (int node = 0; node < kNodes; ++node) {
    ASSERT_TRUE(ClientFor(node)->Put(key, block).ok());
  }
  // R = 2 for this command; the owners are placement's first two.
  const std::vector<size_t> owners = Placement().Owners(key, 2);
  ASSERT_EQ(owners.size(), 2u);
  CommandResult r =
      Ctl({"cluster", "pin", key.ToHex(), "10m", "--replication=2", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(JsonStrings(r.out, "node_id"),
            (std::vector<std::string>{absl::StrCat("n", owners[0] + 1),
                                      absl::StrCat("n", owners[1] + 1)}));
  EXPECT_EQ(JsonStrings(r.out, "status"),
            (std::vector<std::string>{"ok", "ok"}));
  // Exactly the two owners skip it as pinned.
  CommandResult dry =
      Ctl({"cluster", "evict", "--key-prefix=33", "--dry-run", "--json"});
  ASSERT_EQ(dry.exit_code, 0) << dry.out;
  EXPECT_EQ(JsonInts(dry.out, "skipped_pinned").back(), 2) << dry.out;
  EXPECT_EQ(JsonInts(dry.out, "blocks").back(), 1) << dry.out;
  // unpin releases both.
  CommandResult un = Ctl({"cluster", "unpin", key.ToHex(), "--replication=2"});
  ASSERT_EQ(un.exit_code, 0) << un.out;
  CommandResult after =
      Ctl({"cluster", "evict", "--key-prefix=33", "--dry-run", "--json"});
  EXPECT_EQ(JsonInts(after.out, "skipped_pinned").back(), 0) << after.out;
  EXPECT_EQ(JsonInts(after.out, "blocks").back(), 3) << after.out;
}

TEST_F(StratactlClusterTest, ConfigSetIsVersionedAndDrivesTheReplicationOfPin) {
  CommandResult get = Ctl({"cluster", "config", "get", "--json"});
  ASSERT_EQ(get.exit_code, 0) << get.out;
  const long long v0 = JsonInts(get.out, "version")[0];
  CommandResult set = Ctl({"cluster", "config", "set", "replication_factor=3",
                           "default_codec=kivi2", "--json"});
  ASSERT_EQ(set.exit_code, 0) << set.out;
  const long long v1 = JsonInts(set.out, "version")[0];
  EXPECT_GT(v1, v0);
  // A writer that read v0 is refused (exit 1) and nothing changes.
  CommandResult stale = Ctl({"cluster", "config", "set", "replication_factor=1",
                             absl::StrCat("--expect-version=", v0)});
  EXPECT_EQ(stale.exit_code, 1);
  CommandResult bad = Ctl({"cluster", "config", "set", "replication_factor=0"});
  EXPECT_EQ(bad.exit_code, 1);
  get = Ctl({"cluster", "config", "get", "--json"});
  EXPECT_EQ(JsonInts(get.out, "version")[0], v1) << get.out;
  EXPECT_EQ(JsonInts(get.out, "replication_factor")[0], 3) << get.out;
  // owners without --replication follow the stored R = 3.
  CommandResult owners =
      Ctl({"cluster", "owners", TestKey(0x44, 1).ToHex(), "--json"});
  ASSERT_EQ(owners.exit_code, 0) << owners.out;
  EXPECT_EQ(JsonStrings(owners.out, "node_id").size(), 3u) << owners.out;
  // Back to R = 2 for whoever runs next.
  CommandResult reset = Ctl({"cluster", "config", "set", "replication_factor=2",
                             absl::StrCat("--expect-version=", v1)});
  EXPECT_EQ(reset.exit_code, 0) << reset.out;
}

TEST_F(StratactlClusterTest, ProfilesPutListGetRemove) {
  codecs::CodecProfile p("org/model-a");
  ASSERT_TRUE(p.Put("pca_basis", {4, 4}, std::vector<float>(16, 0.25f)).ok());
  const std::string file = dir_->Sub("profile.stkp");
  ASSERT_TRUE(p.WriteFile(file).ok());
  const std::string id = ProfileIdHex(p.id());
  CommandResult put = Ctl({"cluster", "profiles", "put", file, "--json"});
  ASSERT_EQ(put.exit_code, 0) << put.out;
  EXPECT_EQ(JsonStrings(put.out, "id"), std::vector<std::string>{id});
  CommandResult list = Ctl({"cluster", "profiles", "list", "--json"});
  ASSERT_EQ(list.exit_code, 0) << list.out;
  EXPECT_NE(list.out.find(id), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("org/model-a"), std::string::npos) << list.out;
  const std::string back = dir_->Sub("back.stkp");
  CommandResult get = Ctl({"cluster", "profiles", "get", id, back});
  ASSERT_EQ(get.exit_code, 0) << get.out;
  auto read = codecs::CodecProfile::ReadFile(back);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->id(), p.id());
  EXPECT_EQ(Ctl({"cluster", "profiles", "rm", id}).exit_code, 0);
  EXPECT_EQ(Ctl({"cluster", "profiles", "rm", id}).exit_code, 1);  // Gone.
}

TEST_F(StratactlClusterTest, UnknownSubcommandAndBadFlagsAreUsageErrors) {
  EXPECT_EQ(Ctl({"cluster", "nonsense"}).exit_code, 2);
  EXPECT_EQ(Ctl({"cluster", "pin", TestKey(1, 1).ToHex()}).exit_code, 2);
  EXPECT_EQ(Ctl({"cluster", "members", "--prefix=no-slash"}).exit_code, 2);
}

TEST_F(StratactlClusterTest, BenchPutsThenReadsBackEveryKeyOnItsOwners) {
  CommandResult put =
      Ctl({"cluster", "bench", "--op=put", "--keys=64", "--size=8KiB",
           "--seed=55", "--replication=2", "--min-members=3", "--json"});
  ASSERT_EQ(put.exit_code, 0) << put.out;
  EXPECT_EQ(JsonInts(put.out, "ok")[0], 64) << put.out;
  // A later invocation reads the same key set and compares every byte.
  CommandResult get =
      Ctl({"cluster", "bench", "--op=get", "--keys=64", "--size=8KiB",
           "--seed=55", "--replication=2", "--verify", "--json"});
  ASSERT_EQ(get.exit_code, 0) << get.out;
  EXPECT_EQ(JsonInts(get.out, "ok")[0], 64) << get.out;
  EXPECT_EQ(JsonInts(get.out, "wrong")[0], 0) << get.out;
  EXPECT_EQ(JsonInts(get.out, "replica")[0], 0) << get.out;  // Primaries.
  // Another seed was never written: every read is a miss, and exit 1.
  CommandResult miss = Ctl({"cluster", "bench", "--op=get", "--keys=8",
                            "--size=8KiB", "--seed=56", "--json"});
  EXPECT_EQ(miss.exit_code, 1);
  EXPECT_EQ(JsonInts(miss.out, "not_found")[0], 8) << miss.out;
  // 128-key leading-hits lookups over preloaded chains: all fully cached.
  CommandResult look =
      Ctl({"cluster", "bench", "--op=lookup", "--keys=256", "--size=4KiB",
           "--seed=57", "--preload", "--ops=20", "--clients=1", "--json"});
  ASSERT_EQ(look.exit_code, 0) << look.out;
  EXPECT_EQ(JsonInts(look.out, "ok")[0], 20) << look.out;
}

// Keep last: it kills a daemon (the suite's other tests need all three).
TEST_F(StratactlClusterTest, ZDeadDaemonShowsUnreachableUntilItsLeaseGoes) {
  daemons_[2]->Kill();  // n3's sidecar keeps its lease (no health check).
  CommandResult r = Ctl({"cluster", "members", "--json", "--deadline=2s"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(JsonStrings(r.out, "health"),
            (std::vector<std::string>{"serving", "serving", "unreachable"}));
  CommandResult usage = Ctl({"cluster", "usage", "--json", "--deadline=2s"});
  EXPECT_EQ(usage.exit_code, 1);  // One node could not answer...
  EXPECT_NE(usage.out.find("\"error\""), std::string::npos) << usage.out;
  EXPECT_NE(usage.out.find("\"node_id\":\"n1\",\"gets\""), std::string::npos)
      << usage.out;  // ... the others still did.
  // Once its sidecar dies too, the lease expires and n3 leaves the list.
  sidecars_[2]->Kill();
  const absl::Time deadline = absl::Now() + absl::Seconds(kLeaseTtlSeconds + 5);
  std::vector<std::string> ids;
  do {
    ids = JsonStrings(Ctl({"cluster", "members", "--json"}).out, "node_id");
  } while (ids.size() == 3 && absl::Now() < deadline);
  EXPECT_EQ(ids, (std::vector<std::string>{"n1", "n2"}));
}

}  // namespace
}  // namespace strata::cluster
