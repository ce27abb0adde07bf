// Membership against a real etcd (started and stopped by each test on free
// loopback ports): the generated etcd client, MembershipRegistry,
// MemberWatcher and the strata-member sidecar (kill -9, graceful stop, etcd
// restarts with and without its data).
//
// Waits are event-driven: a watcher's change callback signals a condition
// variable; every wait is bounded (a lease TTL plus a margin).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/member.h"
#include "cluster/membership/membership.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cluster/cluster_processes.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::cluster {
namespace {

using ::strata::kvstore::testing::ScratchDir;
using ::strata::testing::EtcdProcess;
using ::strata::testing::MemberProcess;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr int kTtlS = 3;  // etcd's minimum is 2 s; 3 leaves slack on a busy machine.
// etcd expires leases on a 500 ms tick; keepalives and the watch add a few
// hundred ms on a loaded 2-core machine.
constexpr absl::Duration kMargin = absl::Seconds(3);

std::unique_ptr<EtcdClient> Connect(const EtcdProcess& etcd) {
  EtcdOptions o;
  o.endpoints = etcd.endpoint();
  o.call_timeout = absl::Seconds(5);
  auto c = EtcdClient::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

std::set<std::string> Ids(const MemberList& members) {
  std::set<std::string> ids;
  for (const auto& m : members) ids.insert(m.node_id);
  return ids;
}

// Records every member set the watcher reports (with its time), and waits
// on them: the watcher's change callback signals a condition variable.
class ChangeLog {
 public:
  explicit ChangeLog(MemberWatcher* w) : w_(w) {
    id_ = w->AddListener([this](const MemberList& m) {
      std::lock_guard<std::mutex> lock(mu_);
      history_.push_back({absl::Now(), Ids(m)});
      cv_.notify_all();
    });
  }
  ~ChangeLog() { w_->RemoveListener(id_); }

  // Marks "now" in the history: take it before the action waited on.
  size_t Mark() {
    std::lock_guard<std::mutex> lock(mu_);
    return history_.size();
  }

  // Waits until a change reported at or after `mark` has exactly `ids`;
  // returns its time, or nullopt after `timeout`. Without a mark: until the
  // latest reported set has `ids` (so that a Mark() taken afterwards only
  // sees later changes).
  std::optional<absl::Time> WaitForIds(const std::set<std::string>& ids,
                                       absl::Duration timeout,
                                       std::optional<size_t> mark = {}) {
    std::unique_lock<std::mutex> lock(mu_);
    std::optional<absl::Time> at;
    if (!mark.has_value()) {
      cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] {
        const bool now = history_.empty() ? Ids(w_->Members()) == ids
                                          : history_.back().ids == ids;
        if (now) at = history_.empty() ? absl::Now() : history_.back().at;
        return now;
      });
      return at;
    }
    cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] {
      for (size_t i = *mark; i < history_.size(); ++i) {
        if (history_[i].ids == ids) {
          at = history_[i].at;
          return true;
        }
      }
      return false;
    });
    return at;
  }

 private:
  struct Entry {
    absl::Time at;
    std::set<std::string> ids;
  };
  MemberWatcher* w_;
  uint64_t id_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Entry> history_;
};

class MembershipTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/bin/etcd", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/etcd";
    etcd_ = std::make_unique<EtcdProcess>(dir_.Sub("etcd"));
    ASSERT_TRUE(etcd_->Start().ok());
    client_ = Connect(*etcd_);
  }

  std::unique_ptr<MemberProcess> StartMember(const std::string& id,
                                             const std::string& zone = "",
                                             int ttl_s = kTtlS) {
    auto m = std::make_unique<MemberProcess>(std::vector<std::string>{
        "--etcd=" + etcd_->endpoint(), "--node_id=" + id,
        "--grpc=127.0.0.1:" + std::to_string(7000 + id.back()),
        "--capacity=1GiB", "--zone=" + zone,
        "--ttl_s=" + std::to_string(ttl_s), "--health_check=false"});
    absl::Status s = m->Start();
    EXPECT_TRUE(s.ok()) << s;
    return m;
  }

  ScratchDir dir_;
  std::unique_ptr<EtcdProcess> etcd_;
  std::unique_ptr<EtcdClient> client_;
};

TEST_F(MembershipTest, EtcdClientKvLeaseAndWatch) {
  EtcdClient& c = *client_;
  ASSERT_TRUE(c.Put("/t/a", "1").ok());
  ASSERT_TRUE(c.Put("/t/b", "2").ok());
  ASSERT_TRUE(c.Put("/u", "3").ok());
  auto got = c.GetPrefix("/t/");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs.size(), 2u);
  EXPECT_EQ(got->kvs[0].key, "/t/a");
  EXPECT_EQ(got->kvs[1].value, "2");
  EXPECT_GT(got->revision, 0);
  EXPECT_EQ(*c.PutIfAbsent("/t/a", "x"), false);
  EXPECT_EQ(*c.PutIfAbsent("/t/c", "x"), true);
  EXPECT_EQ(*c.Delete("/t/c"), 1);
  EXPECT_THAT(c.Get("/t/c")->kvs, IsEmpty());

  // A key under a lease goes with the lease.
  auto lease = c.LeaseGrant(absl::Seconds(kTtlS));
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(c.Put("/t/leased", "v", lease->id).ok());
  EXPECT_EQ(c.Get("/t/leased")->kvs.at(0).lease, lease->id);
  EXPECT_GT(*c.LeaseTimeToLive(lease->id), 0);

  // Watch from the current revision: a put and the lease's delete arrive.
  std::mutex mu;
  std::condition_variable cv;
  std::vector<EtcdEvent> events;
  auto watch = c.WatchPrefix(
      "/t/", c.Get("/t/")->revision + 1,
      [&](const std::vector<EtcdEvent>& batch, int64_t) {
        std::lock_guard<std::mutex> lock(mu);
        events.insert(events.end(), batch.begin(), batch.end());
        cv.notify_all();
      },
      [](const absl::Status& s) { ADD_FAILURE() << "reset: " << s; });
  ASSERT_TRUE(c.Put("/t/d", "4").ok());
  ASSERT_TRUE(c.Put("/v", "not watched").ok());
  ASSERT_TRUE(c.LeaseRevoke(lease->id).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10),
                            [&] { return events.size() >= 2; }));
    EXPECT_EQ(events[0].type, EtcdEvent::Type::kPut);
    EXPECT_EQ(events[0].kv.key, "/t/d");
    EXPECT_EQ(events[0].kv.value, "4");
    EXPECT_EQ(events[1].type, EtcdEvent::Type::kDelete);
    EXPECT_EQ(events[1].kv.key, "/t/leased");
  }
  EXPECT_TRUE(absl::IsNotFound(c.LeaseTimeToLive(lease->id).status()));
  EXPECT_TRUE(absl::IsNotFound(c.LeaseRevoke(lease->id)));
  EXPECT_THAT(c.Get("/t/leased")->kvs, IsEmpty());
}

// A Put retried while the client reconnects to a restarted etcd (bounded).
absl::Status PutRetrying(EtcdClient& c, const std::string& key,
                         const std::string& value) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  absl::Status s;
  do {
    s = c.Put(key, value).status();
  } while (absl::IsUnavailable(s) && absl::Now() < deadline);
  return s;
}

TEST_F(MembershipTest, EtcdWatchResumesAcrossARestartAndResetsOnANewCluster) {
  EtcdClient& c = *client_;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> keys;
  std::optional<absl::Status> reset;
  const int64_t from = c.Get("/w/")->revision + 1;
  auto watch = c.WatchPrefix(
      "/w/", from,
      [&](const std::vector<EtcdEvent>& batch, int64_t) {
        std::lock_guard<std::mutex> lock(mu);
        for (const auto& e : batch) keys.push_back(e.kv.key);
        cv.notify_all();
      },
      [&](const absl::Status& s) {
        std::lock_guard<std::mutex> lock(mu);
        reset = s;
        cv.notify_all();
      });
  auto wait_keys = [&](size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(10),
                       [&] { return keys.size() >= n; });
  };
  ASSERT_TRUE(c.Put("/w/1", "a").ok());
  ASSERT_TRUE(wait_keys(1));
  etcd_->Kill();
  ASSERT_TRUE(etcd_->Start().ok());  // Same data: the watch resumes.
  ASSERT_TRUE(PutRetrying(c, "/w/2", "b").ok());
  ASSERT_TRUE(wait_keys(2));
  EXPECT_THAT(keys, ElementsAre("/w/1", "/w/2"));
  etcd_->Kill();
  etcd_->WipeData();
  ASSERT_TRUE(etcd_->Start().ok());  // A new, empty cluster: a gap. Reset.
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10),
                          [&] { return reset.has_value(); }));
  EXPECT_TRUE(absl::IsAborted(*reset)) << *reset;
}

TEST_F(MembershipTest, EtcdClientReportsAnUnreachableEtcd) {
  EtcdOptions o;
  o.endpoints = "127.0.0.1:1";  // Nothing listens there.
  o.call_timeout = absl::Seconds(2);
  auto c = EtcdClient::Create(o);
  ASSERT_TRUE(c.ok());
  auto got = (*c)->Get("/x");
  EXPECT_TRUE(absl::IsUnavailable(got.status())) << got.status();
  EXPECT_TRUE(absl::IsInvalidArgument(
      EtcdClient::Create({.endpoints = "nonsense"}).status()));
}

TEST_F(MembershipTest, MemberRecordRoundTripsAndRejectsGarbage) {
  Member m{"n1", "127.0.0.1:7070", "127.0.0.1:7071", 1 << 30, "z1", 42, 1000, "0.1.0"};
  auto back = DecodeMember(EncodeMember(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  EXPECT_FALSE(DecodeMember("\xff\xff garbage").ok());
  m.node_id = "bad/id";
  EXPECT_TRUE(absl::IsInvalidArgument(ValidateMember(m)));
  EXPECT_EQ(MemberKey("/strata/v1/", "n1"), "/strata/v1/members/n1");
}

TEST_F(MembershipTest, ThreeRegisteredMembersAppearInTheWatcher) {
  MemberWatcher watcher(client_.get(), {});
  watcher.Start();
  ASSERT_TRUE(watcher.WaitSynced(absl::Seconds(10)));
  ChangeLog log(&watcher);
  auto m1 = StartMember("n1", "za");
  auto m2 = StartMember("n2", "zb");
  auto m3 = StartMember("n3", "zc");
  ASSERT_TRUE(log.WaitForIds({"n1", "n2", "n3"}, absl::Seconds(10)));
  const MemberList members = watcher.Members();
  ASSERT_EQ(members.size(), 3u);
  EXPECT_EQ(members[1].node_id, "n2");
  EXPECT_EQ(members[1].grpc_address, "127.0.0.1:7050");  // 7000 + '2'.
  EXPECT_EQ(members[1].capacity_bytes, uint64_t{1} << 30);
  EXPECT_EQ(members[1].zone, "zb");
  EXPECT_NE(members[1].incarnation, 0u);
  // A second watcher that starts later lists the same set.
  MemberWatcher late(client_.get(), {});
  late.Start();
  ASSERT_TRUE(late.WaitSynced(absl::Seconds(10)));
  EXPECT_EQ(late.Members(), members);
}

TEST_F(MembershipTest, KilledMemberIsDroppedWithinTheLeaseTtl) {
  MemberWatcher watcher(client_.get(), {});
  watcher.Start();
  ChangeLog log(&watcher);
  auto m1 = StartMember("n1");
  auto m2 = StartMember("n2");
  auto m3 = StartMember("n3");
  ASSERT_TRUE(log.WaitForIds({"n1", "n2", "n3"}, absl::Seconds(10)));
  const size_t mark = log.Mark();
  const absl::Time killed = absl::Now();
  m2->Kill();  // kill -9: the lease is not renewed, not revoked.
  const auto dropped =
      log.WaitForIds({"n1", "n3"}, absl::Seconds(kTtlS) + kMargin, mark);
  ASSERT_TRUE(dropped.has_value()) << "n2 still listed after TTL + margin";
  std::cout << "n2 dropped " << absl::FormatDuration(*dropped - killed)
            << " after kill -9 (lease TTL " << kTtlS << " s)\n";
  EXPECT_LE(*dropped - killed, absl::Seconds(kTtlS) + kMargin);
  // Long enough that the others' renewals clearly work.
  EXPECT_FALSE(log.WaitForIds({"n1"}, absl::Seconds(2 * kTtlS)).has_value());
  EXPECT_EQ(Ids(watcher.Members()), (std::set<std::string>{"n1", "n3"}));
}

TEST_F(MembershipTest, GracefulStopDeregistersAtOnce) {
  MemberWatcher watcher(client_.get(), {});
  watcher.Start();
  ChangeLog log(&watcher);
  // A long TTL: only the revoke can remove it quickly.
  auto m1 = StartMember("n1", "", /*ttl_s=*/60);
  ASSERT_TRUE(log.WaitForIds({"n1"}, absl::Seconds(10)));
  const size_t mark = log.Mark();
  const absl::Time stopped = absl::Now();
  ASSERT_TRUE(m1->Stop().ok());
  const auto gone = log.WaitForIds({}, absl::Seconds(5), mark);
  ASSERT_TRUE(gone.has_value());
  EXPECT_LT(*gone - stopped, absl::Seconds(5));
}

TEST_F(MembershipTest, RegistrationsSurviveAnEtcdRestart) {
  MemberWatcher watcher(client_.get(), {});
  watcher.Start();
  ChangeLog log(&watcher);
  auto m1 = StartMember("n1");
  auto m2 = StartMember("n2");
  auto m3 = StartMember("n3");
  ASSERT_TRUE(log.WaitForIds({"n1", "n2", "n3"}, absl::Seconds(10)));
  etcd_->Kill();
  ASSERT_TRUE(etcd_->Start().ok());  // Same data, same port.
  // The watcher kept the set while etcd was away, and its watch resumed:
  // a member that joins now is seen.
  EXPECT_EQ(Ids(watcher.Members()), (std::set<std::string>{"n1", "n2", "n3"}));
  auto m4 = StartMember("n4");
  ASSERT_TRUE(log.WaitForIds({"n1", "n2", "n3", "n4"}, absl::Seconds(10)));
  // Leases were restored and are renewed: nobody drops out over 2 TTLs.
  EXPECT_FALSE(log.WaitForIds({"n1", "n2", "n4"}, absl::Seconds(2 * kTtlS)));
  EXPECT_EQ(client_->GetPrefix("/strata/v1/members/")->kvs.size(), 4u);
}

TEST_F(MembershipTest, RegistrationsComeBackAfterEtcdLosesItsData) {
  MemberWatcher watcher(client_.get(), {});
  watcher.Start();
  ChangeLog log(&watcher);
  auto m1 = StartMember("n1");
  auto m2 = StartMember("n2");
  auto m3 = StartMember("n3");
  ASSERT_TRUE(log.WaitForIds({"n1", "n2", "n3"}, absl::Seconds(10)));
  etcd_->Kill();
  etcd_->WipeData();
  const int64_t wiped_ms = absl::ToUnixMillis(absl::Now());
  ASSERT_TRUE(etcd_->Start().ok());  // An empty etcd on the same port.
  // Each sidecar's keepalive learns its lease is gone and registers again
  // (a new registration time); the watcher lists again after its watch
  // broke.
  ASSERT_TRUE(watcher.WaitUntil(
      [&](const MemberList& m) {
        if (m.size() != 3) return false;
        for (const auto& x : m) {
          if (x.registered_unix_ms < wiped_ms) return false;
        }
        return true;
      },
      absl::Seconds(kTtlS) + kMargin))
      << "registrations did not come back";
  auto listed = client_->GetPrefix("/strata/v1/members/");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->kvs.size(), 3u);
  // And they stay.
  EXPECT_FALSE(log.WaitForIds({"n1", "n2"}, absl::Seconds(2 * kTtlS)));
}

TEST_F(MembershipTest, RegistryRegistersAgainWhenItsLeaseIsRevoked) {
  MemberWatcher watcher(client_.get(), {});
  watcher.Start();
  ChangeLog log(&watcher);
  RegistryOptions ro;
  ro.ttl = absl::Seconds(kTtlS);
  MembershipRegistry registry(
      client_.get(), Member{.node_id = "self", .grpc_address = "127.0.0.1:9"},
      ro);
  ASSERT_TRUE(registry.Start().ok());
  ASSERT_TRUE(registry.WaitRegistered(absl::Seconds(10)).ok());
  ASSERT_TRUE(log.WaitForIds({"self"}, absl::Seconds(10)));
  const int64_t first_lease = registry.lease_id();
  const uint64_t incarnation = registry.self().incarnation;
  // Someone else revokes our lease: the key goes, and comes back.
  size_t mark = log.Mark();
  ASSERT_TRUE(client_->LeaseRevoke(first_lease).ok());
  ASSERT_TRUE(log.WaitForIds({}, absl::Seconds(5), mark));
  ASSERT_TRUE(log.WaitForIds({"self"}, absl::Seconds(kTtlS) + kMargin, mark));
  auto again = client_->Get(registry.key());
  ASSERT_TRUE(again.ok() && again->kvs.size() == 1);
  EXPECT_NE(again->kvs[0].lease, first_lease);  // Under a new lease.
  EXPECT_EQ(watcher.Members().at(0).incarnation, incarnation);  // Same process.

  // Someone deletes our key (the lease lives): it is written again.
  mark = log.Mark();
  ASSERT_EQ(*client_->Delete(registry.key()), 1);
  ASSERT_TRUE(log.WaitForIds({}, absl::Seconds(5), mark));
  ASSERT_TRUE(log.WaitForIds({"self"}, absl::Seconds(kTtlS) + kMargin, mark));

  // An update (e.g. drain: capacity 0) reaches the watchers.
  Member drained = registry.self();
  drained.capacity_bytes = 0;
  ASSERT_TRUE(registry.Update(drained).ok());
  ASSERT_TRUE(watcher.WaitUntil(
      [](const MemberList& m) { return m.size() == 1 && m[0].capacity_bytes == 0; },
      absl::Seconds(5)));

  const int64_t lease = registry.lease_id();
  mark = log.Mark();
  ASSERT_TRUE(registry.Stop().ok());
  ASSERT_TRUE(log.WaitForIds({}, absl::Seconds(5), mark));
  EXPECT_TRUE(absl::IsNotFound(client_->LeaseTimeToLive(lease).status()));
  EXPECT_EQ(registry.registrations(), 2u);  // The first, and after the revoke.
}

TEST_F(MembershipTest, WatcherIgnoresRecordsItCannotRead) {
  MemberWatcher watcher(client_.get(), {});
  watcher.Start();
  ChangeLog log(&watcher);
  ASSERT_TRUE(client_->Put("/strata/v1/members/junk", "not a member").ok());
  Member wrong{.node_id = "other", .grpc_address = "127.0.0.1:1"};
  ASSERT_TRUE(client_->Put("/strata/v1/members/mismatch", EncodeMember(wrong)).ok());
  auto m1 = StartMember("n1");
  ASSERT_TRUE(log.WaitForIds({"n1"}, absl::Seconds(10)));
  EXPECT_EQ(Ids(watcher.Members()), std::set<std::string>{"n1"});
}

TEST(MembershipFlags, StrataMemberRejectsBadFlags) {
  for (const std::vector<std::string>& flags :
       {std::vector<std::string>{"--node_id=bad/id", "--grpc=127.0.0.1:1"},
        {"--node_id=n", "--grpc=nonsense"},
        {"--node_id=n", "--grpc=127.0.0.1:1", "--ttl_s=1"},
        {"--node_id=n", "--grpc=127.0.0.1:1", "--capacity=12XB"},
        {"--bogus=1"}}) {
    std::vector<std::string> argv = {STRATA_MEMBER_PATH};
    argv.insert(argv.end(), flags.begin(), flags.end());
    const int devnull = open("/dev/null", O_WRONLY);
    const pid_t pid = strata::testing::SpawnProcess(argv, devnull, devnull);
    close(devnull);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << flags[0];
  }
}

}  // namespace
}  // namespace strata::cluster
