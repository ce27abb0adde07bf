// Cluster config and codec profiles in a real etcd (started by each test on
// a free loopback port): versioned puts (a stale version is refused), the
// watcher seeing config and profile changes and surviving an etcd restart
// that lost its data, profile integrity checks, and a ClusterClient
// following the config's replication factor.
//
// Waits are event-driven (ClusterConfigWatcher::WaitUntil is woken by each
// change) and bounded.
#include "cluster/config_store/config_store.h"

#include <unistd.h>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster/config_store/config_follower.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/member.h"
#include "cluster/placement/cluster_client.h"
#include "codecs/codec_profile.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/cluster/cluster_processes.h"
#include "tests/cluster/stratad_process.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::cluster {
namespace {

using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::KeyFor;
using ::strata::testing::EtcdProcess;
using ::strata::testing::StratadProcess;

constexpr absl::Duration kWait = absl::Seconds(10);
constexpr char kPrefix[] = "/strata/test/";

codecs::CodecProfile MakeProfile(const std::string& model, float base) {
  codecs::CodecProfile p(model);
  std::vector<float> data(64);
  for (size_t i = 0; i < data.size(); ++i) data[i] = base + 0.5f * i;
  EXPECT_TRUE(p.Put("basis", {8, 8}, data).ok());
  return p;
}

class ConfigStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/bin/etcd", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/etcd";
    etcd_ = std::make_unique<EtcdProcess>(dir_.Sub("etcd"));
    ASSERT_TRUE(etcd_->Start().ok());
    EtcdOptions o;
    o.endpoints = etcd_->endpoint();
    auto c = EtcdClient::Create(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
    store_ = std::make_unique<ClusterConfigStore>(client_.get(), kPrefix);
  }

  std::unique_ptr<ClusterConfigWatcher> StartWatcher() {
    ConfigWatcherOptions o;
    o.prefix = kPrefix;
    auto w = std::make_unique<ClusterConfigWatcher>(client_.get(), o);
    w->Start();
    EXPECT_TRUE(w->WaitUntil(
        [](const ClusterConfigSnapshot& s) { return s.generation >= 1; },
        kWait));
    return w;
  }

  ScratchDir dir_;
  std::unique_ptr<EtcdProcess> etcd_;
  std::unique_ptr<EtcdClient> client_;
  std::unique_ptr<ClusterConfigStore> store_;
};

TEST_F(ConfigStoreTest, AbsentConfigReadsAsVersionZeroWithDefaults) {
  auto got = store_->GetConfig();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->version, 0);
  EXPECT_FALSE(got->config.has_replication_factor());
  const ClusterConfig eff = EffectiveClusterConfig(got->config);
  EXPECT_EQ(eff.replication_factor(), 2u);
  EXPECT_EQ(eff.default_codec(), "raw");
}

TEST_F(ConfigStoreTest, VersionedPutRejectsStaleVersion) {
  ClusterConfig c;
  c.set_replication_factor(3);
  auto v1 = store_->PutConfig(c, 0);
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_GT(*v1, 0);

  // A second "create" (expected 0) is stale now.
  c.set_replication_factor(1);
  auto again = store_->PutConfig(c, 0);
  EXPECT_TRUE(absl::IsAborted(again.status())) << again.status();

  // Two operators read v1; the first write wins, the second is refused
  // and names the current version.
  c.set_default_codec("kivi2");
  auto v2 = store_->PutConfig(c, *v1);
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_GT(*v2, *v1);
  ClusterConfig other;
  other.set_replication_factor(4);
  auto stale = store_->PutConfig(other, *v1);
  ASSERT_TRUE(absl::IsAborted(stale.status())) << stale.status();
  EXPECT_NE(stale.status().message().find(absl::StrCat(*v2)), std::string::npos)
      << stale.status();

  auto got = store_->GetConfig();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->version, *v2);
  EXPECT_EQ(got->config.replication_factor(), 1u);
  EXPECT_EQ(got->config.default_codec(), "kivi2");
}

TEST_F(ConfigStoreTest, InvalidConfigIsRefusedNamingTheField) {
  ClusterConfig c;
  c.set_replication_factor(0);
  auto put = store_->PutConfig(c, 0);
  ASSERT_TRUE(absl::IsInvalidArgument(put.status()));
  EXPECT_NE(put.status().message().find("replication_factor"),
            std::string::npos);
  ClusterConfig d;
  EXPECT_FALSE(SetClusterConfigField("default_codec=Bad Codec", &d).ok());
  EXPECT_FALSE(SetClusterConfigField("no_such_field=1", &d).ok());
  EXPECT_FALSE(SetClusterConfigField("default_profile_id=xyz", &d).ok());
  ASSERT_TRUE(SetClusterConfigField("rebalance_bytes_per_s=1000", &d).ok());
  EXPECT_EQ(d.rebalance_bytes_per_s(), 1000u);
  // Nothing was written.
  auto got = store_->GetConfig();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->version, 0);
}

TEST_F(ConfigStoreTest, WatcherSeesConfigChanges) {
  auto w = StartWatcher();
  EXPECT_EQ(w->Snapshot().config.version, 0);
  ClusterConfig c;
  c.set_replication_factor(3);
  auto v1 = store_->PutConfig(c, 0);
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_TRUE(w->WaitUntil(
      [&](const ClusterConfigSnapshot& s) {
        return s.config.version == *v1 &&
               s.config.config.replication_factor() == 3;
      },
      kWait));
  // A listener gets the next change.
  std::mutex mu;
  std::vector<int64_t> seen;
  const uint64_t id = w->AddListener([&](const ClusterConfigSnapshot& s) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(s.config.version);
  });
  c.set_rebalance_bytes_per_s(1 << 20);
  auto v2 = store_->PutConfig(c, *v1);
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_TRUE(w->WaitUntil(
      [&](const ClusterConfigSnapshot& s) { return s.config.version == *v2; },
      kWait));
  w->RemoveListener(id);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back(), *v2);
  // A key that merely starts with "config" is not the config.
  ASSERT_TRUE(client_->Put(absl::StrCat(kPrefix, "config2"), "junk").ok());
  ASSERT_TRUE(
      client_->Put(absl::StrCat(kPrefix, "config"), "not a proto").ok());
  auto still = store_->GetConfig();
  EXPECT_TRUE(absl::IsInvalidArgument(still.status())) << still.status();
  EXPECT_EQ(w->Snapshot().config.version, *v2);  // Kept the last valid one.
}

// A ClusterClient started with R = 2 keeps it while the config was never
// written, then places every key on the config's R (3, then 1) once the
// follower has applied it; the owners under R = 1 are the first of those
// under R = 3 (a ranking). No daemons: placement needs only the members.
TEST_F(ConfigStoreTest, ClientFollowsTheConfigReplicationFactor) {
  MemberList four;
  for (int i = 0; i < 4; ++i) {
    four.push_back(Member{.node_id = absl::StrCat("n", i),
                          .grpc_address = absl::StrCat("127.0.0.1:", 1 + i),
                          .capacity_bytes = uint64_t{1} << 30});
  }
  StaticMemberSource members(four);
  ClusterClientOptions co;
  co.replication = 2;
  auto client = ClusterClient::Create(&members, co);
  ASSERT_TRUE(client.ok()) << client.status();
  auto follower = ClusterConfigFollower::StartForClient(
      etcd_->endpoint(), kPrefix, nullptr, client->get());
  ASSERT_TRUE(follower.ok()) << follower.status();
  // Registered after the follower's own listener, so it runs after it.
  std::mutex mu;
  std::condition_variable cv;
  int64_t applied = -1;
  (*follower)->watcher().AddListener([&](const ClusterConfigSnapshot& s) {
    std::lock_guard<std::mutex> lock(mu);
    applied = s.config.version;
    cv.notify_all();
  });
  auto wait_applied = [&](int64_t version) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, absl::ToChronoNanoseconds(kWait),
                       [&] { return applied == version; });
  };
  ASSERT_TRUE((*follower)->watcher().WaitUntil(
      [](const ClusterConfigSnapshot& s) { return s.generation >= 1; }, kWait));
  EXPECT_EQ((*client)->replication(), 2u);  // Never written: its own R.
  EXPECT_EQ((*client)->Owners(KeyFor(7)).size(), 2u);

  ClusterConfig c;
  c.set_replication_factor(3);
  auto v1 = store_->PutConfig(c, 0);
  ASSERT_TRUE(v1.ok()) << v1.status();
  ASSERT_TRUE(wait_applied(*v1));
  EXPECT_EQ((*client)->replication(), 3u);
  std::vector<std::vector<std::string>> three;
  for (int k = 0; k < 50; ++k) {
    three.push_back((*client)->Owners(KeyFor(k)));
    ASSERT_EQ(three.back().size(), 3u);
  }
  c.set_replication_factor(1);
  auto v2 = store_->PutConfig(c, *v1);
  ASSERT_TRUE(v2.ok()) << v2.status();
  ASSERT_TRUE(wait_applied(*v2));
  for (int k = 0; k < 50; ++k) {
    EXPECT_THAT((*client)->Owners(KeyFor(k)), ::testing::ElementsAre(three[k][0]));
  }
  EXPECT_TRUE(absl::IsInvalidArgument((*client)->SetReplication(0)));
  follower->reset();  // Before the client (the contract).
}

TEST_F(ConfigStoreTest, ProfilesAreContentAddressedAndVerified) {
  const codecs::CodecProfile p = MakeProfile("m/a", 1.0f);
  auto id = store_->PutProfile(p);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, p.id());
  auto again = store_->PutProfile(p);  // Idempotent.
  ASSERT_TRUE(again.ok()) << again.status();
  auto got = store_->GetProfile(*id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->id(), p.id());
  EXPECT_EQ(got->model_id(), "m/a");
  EXPECT_TRUE(absl::IsNotFound(store_->GetProfile(*id + 1).status()));

  // Bytes that hash to another id than the key's are refused.
  const codecs::CodecProfile q = MakeProfile("m/b", 2.0f);
  const std::vector<uint8_t> qb = q.Serialize();
  ASSERT_TRUE(
      client_
          ->Put(ProfileKey(kPrefix, 0x1234), std::string(qb.begin(), qb.end()))
          .ok());
  EXPECT_TRUE(absl::IsDataLoss(store_->GetProfile(0x1234).status()));

  auto list = store_->ListProfiles();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 1u);  // The mislabelled record is skipped.
  EXPECT_EQ((*list)[0].id, p.id());
  EXPECT_EQ((*list)[0].tensors, 1u);

  auto deleted = store_->DeleteProfile(*id);
  ASSERT_TRUE(deleted.ok());
  EXPECT_TRUE(*deleted);
}

TEST_F(ConfigStoreTest, WatcherLoadsNewProfilesAndDropsDeletedOnes) {
  auto w = StartWatcher();
  const codecs::CodecProfile p = MakeProfile("m/a", 1.0f);
  ASSERT_TRUE(store_->PutProfile(p).ok());
  ASSERT_TRUE(w->WaitUntil(
      [&](const ClusterConfigSnapshot& s) {
        return s.profiles.contains(p.id());
      },
      kWait));
  EXPECT_EQ(w->Snapshot().profiles.at(p.id())->model_id(), "m/a");
  ASSERT_TRUE(store_->DeleteProfile(p.id()).ok());
  EXPECT_TRUE(w->WaitUntil(
      [&](const ClusterConfigSnapshot& s) { return s.profiles.empty(); },
      kWait));
}

TEST_F(ConfigStoreTest, WatcherRelistsAfterEtcdRestartWithoutData) {
  ClusterConfig c;
  c.set_replication_factor(3);
  ASSERT_TRUE(store_->PutConfig(c, 0).ok());
  auto w = StartWatcher();
  ASSERT_TRUE(w->WaitUntil(
      [](const ClusterConfigSnapshot& s) { return s.config.version > 0; },
      kWait));
  etcd_->Kill();
  etcd_->WipeData();
  ASSERT_TRUE(etcd_->Start().ok());
  // The new etcd is empty: a fresh config written there must be seen even
  // though its revision is lower than the one the watcher knew.
  ClusterConfig d;
  d.set_replication_factor(1);
  absl::StatusOr<int64_t> v = absl::UnavailableError("not tried");
  const absl::Time deadline = absl::Now() + kWait;
  while (!v.ok() && absl::Now() < deadline) {
    v = store_->PutConfig(d, 0);  // UNAVAILABLE while the channel reconnects.
  }
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(w->WaitUntil(
      [&](const ClusterConfigSnapshot& s) {
        return s.config.version == *v &&
               s.config.config.replication_factor() == 1;
      },
      kWait));
}

// GET /metrics of a daemon ("" when it does not answer).
std::string Metrics(const std::string& address) {
  const size_t colon = address.rfind(':');
  httplib::Client http(address.substr(0, colon),
                       std::stoi(address.substr(colon + 1)));
  auto res = http.Get("/metrics");
  return res && res->status == 200 ? res->body : "";
}

// Polls the daemon's /metrics until `pred` holds (bounded).
bool WaitForMetrics(const std::string& address,
                    const std::function<bool(const std::string&)>& pred) {
  const absl::Time deadline = absl::Now() + kWait;
  std::string text;
  do {
    text = Metrics(address);
    if (pred(text)) return true;
  } while (absl::Now() < deadline);
  ADD_FAILURE() << "last /metrics:\n" << text;
  return false;
}

bool Contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

TEST_F(ConfigStoreTest, DaemonPicksUpNewConfigAndProfileWithoutRestart) {
  StratadProcess daemon(
      dir_.Sub("d1"),
      {"--dram_capacity=16MiB", "--ssd_capacity=0", "--data_plane_listen=",
       "--cluster_etcd=" + etcd_->endpoint(), "--cluster_node_id=d1",
       std::string("--cluster_prefix=") + kPrefix, "--cluster_lease_ttl_s=3"});
  ASSERT_TRUE(daemon.Start().ok());
  const pid_t pid = daemon.pid();
  const std::string m = daemon.metrics_address();
  ASSERT_TRUE(WaitForMetrics(m, [](const std::string& t) {
    return Contains(t, "strata:cluster_config_version 0\n") &&
           Contains(t, "strata:codec_profiles_loaded 0\n");
  }));

  ClusterConfig c;
  c.set_replication_factor(3);
  c.set_rebalance_bytes_per_s(12345);
  auto v = store_->PutConfig(c, 0);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(WaitForMetrics(m, [&](const std::string& t) {
    return Contains(t,
                    absl::StrCat("strata:cluster_config_version ", *v, "\n")) &&
           Contains(t, "strata:cluster_config_replication_factor 3\n") &&
           Contains(t, "strata:cluster_config_rebalance_bytes_per_s 12345\n");
  }));

  const codecs::CodecProfile p = MakeProfile("org/model-x", 3.0f);
  ASSERT_TRUE(store_->PutProfile(p).ok());
  EXPECT_TRUE(WaitForMetrics(m, [&](const std::string& t) {
    return Contains(t, "strata:codec_profiles_loaded 1\n") &&
           Contains(t, absl::StrCat("strata:codec_profile{id=\"",
                                    ProfileIdHex(p.id()),
                                    "\",model=\"org/model-x\"} 1"));
  }));
  EXPECT_EQ(daemon.pid(), pid);  // The same process: no restart.
  EXPECT_TRUE(daemon.Stop().ok());
}

}  // namespace
}  // namespace strata::cluster
