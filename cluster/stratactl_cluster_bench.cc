// `stratactl cluster bench`: closed-loop load through the ClusterClient
// (placement, R-way puts, replica fallback reads, per-owner leading hits)
// over the members in etcd. Used by bench/cluster_bench.sh (throughput,
// lookup latency) and tools/partition_test.sh (reads during a partition).
//
//   cluster bench --op=put|get|lookup [--keys=N] [--size=64KiB] [--clients=4]
//     [--seed=S] [--duration=DUR | --ops=N] [--replication=R]
//     [--min-members=N] [--members-timeout=30s] [--preload] [--verify]
//     [--report-every=DUR] [--json]
//
// Keys and blocks are a pure function of (seed, index), so one invocation
// can put a key set and a later one read and verify it (--verify compares
// every byte; the client library has already checked the block checksum).
//   put     each client puts its share of --keys (untimed --preload: none)
//   get     each client reads keys round-robin (--preload puts them first,
//           untimed); misses and errors are counted, not fatal
//   lookup  --keys/128 chains of 128 keys (put first with --preload);
//           LeadingHits of a whole chain per op; p50/p99 per lookup
// Exit 1 when any operation failed or returned wrong bytes.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cluster/config_store/config_follower.h"
#include "cluster/config_store/config_store.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/membership.h"
#include "cluster/placement/cluster_client.h"
#include "cluster/server_config.h"
#include "cluster/stratactl_cli.h"
#include "kvstore/block_format.h"
#include "kvstore/block_key.h"

namespace strata::cluster::ctl {
namespace {

using kvstore::BlockKey;

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

BlockKey KeyOf(uint64_t seed, uint64_t i) {
  return BlockKey{SplitMix(seed) ^ 0x5354524154414200ull, i};
}

// A raw bf16 block of about `bytes` (8 heads of 128 per token) whose
// payload is a function of (seed, i).
std::vector<uint8_t> BlockOf(uint64_t seed, uint64_t i, uint64_t bytes) {
  kvstore::BlockShape shape{
      kvstore::DType::kBFloat16, 1,
      static_cast<uint32_t>(std::max<uint64_t>(1, bytes / 4096)), 8, 128};
  std::vector<uint8_t> payload(shape.RawBytes());
  uint64_t x = SplitMix(seed * 0x100000001b3ull + i);
  for (size_t off = 0; off + 8 <= payload.size(); off += 8) {
    x = SplitMix(x);
    std::memcpy(payload.data() + off, &x, 8);
  }
  return *kvstore::EncodeBlock(shape, kvstore::CodecId::kRaw, {}, payload);
}

double Pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
  std::nth_element(v.begin(), v.begin() + i, v.end());
  return v[i];
}

struct Counters {
  std::atomic<uint64_t> ok{0}, not_found{0}, failed{0}, wrong{0}, replica{0},
      bytes{0};
};

}  // namespace

int RunClusterBench(const Args& a, const client::ClientOptions& base,
                    EtcdClient* etcd, const std::string& prefix) {
  const std::string op = a.Flag("op", "get");
  if (op != "put" && op != "get" && op != "lookup") {
    return UsageError("op: want put, get or lookup");
  }
  auto size = ParseByteSize("size", a.Flag("size", "64KiB"));
  if (!size.ok()) return Fail(size.status());
  uint64_t keys = 0, seed = 0, clients = 0, ops = 0, min_members = 0;
  if (!absl::SimpleAtoi(a.Flag("keys", "1024"), &keys) || keys == 0) {
    return UsageError("keys: want >= 1");
  }
  if (!absl::SimpleAtoi(a.Flag("seed", "1"), &seed))
    return UsageError("seed: want a number");
  if (!absl::SimpleAtoi(a.Flag("clients", "4"), &clients) || clients == 0) {
    return UsageError("clients: want >= 1");
  }
  if (!absl::SimpleAtoi(a.Flag("ops", "0"), &ops))
    return UsageError("ops: want a number");
  if (!absl::SimpleAtoi(a.Flag("min-members", "1"), &min_members)) {
    return UsageError("min-members: want a number");
  }
  absl::Duration duration = absl::ZeroDuration(),
                 report_every = absl::ZeroDuration();
  if (a.flags.count("duration")) {
    auto d = ParseDurationFlag("duration", a.Flag("duration"));
    if (!d.ok()) return Fail(d.status());
    duration = *d;
  }
  if (a.flags.count("report-every")) {
    auto d = ParseDurationFlag("report-every", a.Flag("report-every"));
    if (!d.ok()) return Fail(d.status());
    report_every = *d;
  }
  const bool verify = a.Bool("verify");
  const bool json = a.Bool("json");
  constexpr uint64_t kChain = 128;
  if (op == "lookup" && keys < kChain)
    return UsageError("keys: lookup needs >= 128");
  if (op != "put" && ops == 0 && duration == absl::ZeroDuration()) ops = keys;
  if (op == "put") ops = keys;

  size_t r = 0;
  if (a.flags.count("replication")) {
    if (!absl::SimpleAtoi(a.Flag("replication"), &r) || r == 0) {
      return UsageError("replication: want >= 1");
    }
  } else {
    ClusterConfigStore store(etcd, prefix);
    auto config = store.GetConfig();
    if (!config.ok()) return Fail(config.status());
    r = EffectiveClusterConfig(config->config).replication_factor();
  }

  WatcherOptions wo;
  wo.prefix = prefix;
  MemberWatcher watcher(etcd, wo);
  watcher.Start();
  absl::Duration members_timeout = absl::Seconds(30);
  if (a.flags.count("members-timeout")) {
    auto d = ParseDurationFlag("members-timeout", a.Flag("members-timeout"));
    if (!d.ok()) return Fail(d.status());
    members_timeout = *d;
  }
  if (!watcher.WaitUntil(
          [&](const MemberList& m) { return m.size() >= min_members; },
          members_timeout)) {
    return Fail(absl::UnavailableError(
        absl::StrCat("members: fewer than ", min_members, " after ",
                     absl::FormatDuration(members_timeout))));
  }
  ClusterClientOptions co;
  co.replication = r;
  co.client = base;
  co.client.max_attempts = 2;
  co.attempt_timeout = std::min(base.default_deadline, absl::Seconds(2));
  auto cc = ClusterClient::Create(&watcher, co);
  if (!cc.ok()) return Fail(cc.status());
  ClusterClient& cluster = **cc;
  // Without --replication, R follows the cluster config for the whole run
  // (as the daemons' rebalancers do). Declared after `cc`: destroyed first.
  std::unique_ptr<ClusterConfigFollower> follower;
  if (!a.flags.count("replication")) {
    auto f = ClusterConfigFollower::StartForClient(
        a.Flag("etcd", "127.0.0.1:2379"), prefix, nullptr, &cluster);
    if (!f.ok()) return Fail(f.status());
    follower = *std::move(f);
  }

  // Untimed preload (get, lookup): every key, R-way.
  if (op != "put" && a.Bool("preload")) {
    std::vector<std::thread> threads;
    std::atomic<bool> bad{false};
    for (uint64_t c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        for (uint64_t i = c; i < keys && !bad; i += clients) {
          if (!cluster.Put(KeyOf(seed, i), BlockOf(seed, i, *size)).ok())
            bad = true;
        }
      });
    }
    for (auto& t : threads) t.join();
    if (bad) return Fail(absl::UnavailableError("preload: a put failed"));
  }

  Counters n;
  std::vector<std::vector<double>> lat(clients);
  std::atomic<bool> stop{false};
  const auto start = std::chrono::steady_clock::now();
  const absl::Time end = absl::Now() + duration;
  auto run_client = [&](uint64_t c) {
    std::mt19937_64 rng(SplitMix(seed ^ (c + 1)));
    std::vector<BlockKey> chain(kChain);
    for (uint64_t k = 0; !stop; ++k) {
      uint64_t i = c + k * clients;
      if (ops > 0 && i >= ops) break;
      if (duration > absl::ZeroDuration() && absl::Now() >= end) break;
      const auto t0 = std::chrono::steady_clock::now();
      if (op == "put") {
        auto res = cluster.Put(KeyOf(seed, i), BlockOf(seed, i, *size));
        lat[c].push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                .count());
        if (res.ok()) {
          ++n.ok;
          n.bytes += *size;
          if (!res->unreachable.empty()) ++n.replica;  // Fewer than R copies.
        } else {
          ++n.failed;
        }
      } else if (op == "get") {
        i %= keys;
        auto res = cluster.Get(KeyOf(seed, i));
        lat[c].push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                .count());
        if (res.ok()) {
          ++n.ok;
          n.bytes += res->get.block.size();
          if (res->owner_rank > 0) ++n.replica;
          if (verify && res->get.block != BlockOf(seed, i, *size)) ++n.wrong;
        } else if (absl::IsNotFound(res.status())) {
          ++n.not_found;
        } else {
          ++n.failed;
        }
      } else {
        const uint64_t chains = keys / kChain;
        const uint64_t ch = rng() % chains;
        for (uint64_t j = 0; j < kChain; ++j)
          chain[j] = KeyOf(seed, ch * kChain + j);
        const auto t1 = std::chrono::steady_clock::now();
        auto hits = cluster.LeadingHits(chain);
        lat[c].push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t1)
                .count());
        if (!hits.ok()) {
          ++n.failed;
        } else if (*hits == kChain) {
          ++n.ok;
        } else {
          ++n.not_found;  // A chain that is not wholly cached.
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (uint64_t c = 0; c < clients; ++c) threads.emplace_back(run_client, c);
  // Progress lines (partition runs): every `report_every`, the counts so far.
  std::thread reporter;
  std::mutex report_mu;
  std::condition_variable report_cv;
  bool done = false;
  if (report_every > absl::ZeroDuration()) {
    reporter = std::thread([&] {
      std::unique_lock<std::mutex> lock(report_mu);
      while (!report_cv.wait_for(lock, absl::ToChronoNanoseconds(report_every),
                                 [&] { return done; })) {
        const double t = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - start)
                             .count();
        std::printf(
            "t=%.1fs ok=%llu not_found=%llu failed=%llu wrong=%llu "
            "replica=%llu members=%zu\n",
            t, (unsigned long long)n.ok.load(),
            (unsigned long long)n.not_found.load(),
            (unsigned long long)n.failed.load(),
            (unsigned long long)n.wrong.load(),
            (unsigned long long)n.replica.load(), cluster.members().size());
        std::fflush(stdout);
      }
    });
  }
  for (auto& t : threads) t.join();
  {
    std::lock_guard<std::mutex> lock(report_mu);
    done = true;
  }
  report_cv.notify_all();
  if (reporter.joinable()) reporter.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  const double p50 = Pct(all, 0.50) * 1e6, p99 = Pct(all, 0.99) * 1e6;
  const size_t members = cluster.members().size();
  if (json) {
    std::printf(
        "{\"op\":\"%s\",\"members\":%zu,\"replication\":%zu,\"clients\":%llu,"
        "\"size\":%llu,\"ops\":%zu,\"seconds\":%.3f,\"ops_per_s\":%.1f,"
        "\"gb_per_s\":%.4f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"ok\":%llu,"
        "\"not_found\":%llu,\"failed\":%llu,\"wrong\":%llu,\"replica\":%llu}\n",
        op.c_str(), members, cluster.replication(), (unsigned long long)clients,
        (unsigned long long)*size, all.size(), secs, all.size() / secs,
        n.bytes.load() / secs / 1e9, p50, p99, (unsigned long long)n.ok.load(),
        (unsigned long long)n.not_found.load(),
        (unsigned long long)n.failed.load(), (unsigned long long)n.wrong.load(),
        (unsigned long long)n.replica.load());
  } else {
    std::printf(
        "op=%s members=%zu R=%zu clients=%llu size=%llu ops=%zu  %.0f ops/s  "
        "%.3f GB/s  p50=%.1f us  p99=%.1f us  ok=%llu not_found=%llu "
        "failed=%llu wrong=%llu replica=%llu\n",
        op.c_str(), members, cluster.replication(), (unsigned long long)clients,
        (unsigned long long)*size, all.size(), all.size() / secs,
        n.bytes.load() / secs / 1e9, p50, p99, (unsigned long long)n.ok.load(),
        (unsigned long long)n.not_found.load(),
        (unsigned long long)n.failed.load(), (unsigned long long)n.wrong.load(),
        (unsigned long long)n.replica.load());
  }
  // Misses are failures for get (the keys were put); for lookup, a chain
  // not wholly cached is.
  return n.failed == 0 && n.wrong == 0 && n.not_found == 0 ? 0 : 1;
}

}  // namespace strata::cluster::ctl
