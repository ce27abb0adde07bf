// stratactl's cluster commands (docs/stratactl.md, "Cluster commands"): the
// member set, per-node usage and hit rates, evict fanned out to every node,
// pin/unpin on a key's owners, the cluster config and codec profiles in
// etcd.
//
//   stratactl [--etcd=HOST:PORT] [--prefix=/strata/v1/] cluster SUBCOMMAND
//     members                     node, address, zone, capacity, lease TTL
//                                 left, health
//     usage                       capacity and usage per tier per node, hits
//     evict [filters] [--dry-run] [--include-pinned]   on every node, summed
//     pin KEY TTL | unpin KEY     on the key's R owners (placement)
//     owners KEY                  the key's owners, best first
//     config get | config set FIELD=VALUE... [--expect-version=N]
//     profiles list | put FILE | get ID FILE | rm ID
//     bench --op=put|get|lookup ...  load through the ClusterClient
//                                 (stratactl_cluster_bench.cc)
//   Every subcommand: --json for machine-readable output. --replication=R
//   overrides the cluster config's replication factor for pin/unpin/owners.
//
// Members are read from etcd once per command; per-node calls run
// concurrently, each with the command's --deadline.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cluster/config_store/config_store.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/member.h"
#include "cluster/placement/rendezvous.h"
#include "cluster/stratactl_cli.h"
#include "codecs/codec_profile.h"
#include "google/protobuf/util/json_util.h"
#include "kvstore/block_key.h"

namespace strata::cluster::ctl {
namespace {

using client::Client;

struct MemberRow {
  Member member;
  int64_t lease = 0;
  int64_t ttl_left_s = -1;  // -1: unknown (no lease, or the query failed).
};

struct Cluster {
  std::unique_ptr<EtcdClient> etcd;
  std::string prefix;
  client::ClientOptions base;
  bool json = false;
};

std::string Json(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string Bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(b, " B")
                : absl::StrFormat("%.1f %s", v, units[u]);
}

std::string Percent(uint64_t part, uint64_t whole) {
  return whole == 0 ? "-" : absl::StrFormat("%.1f%%", 100.0 * part / whole);
}

absl::StatusOr<std::vector<MemberRow>> ListMembers(const Cluster& c) {
  auto listed = c.etcd->GetPrefix(MembersPrefix(c.prefix));
  if (!listed.ok()) return listed.status();
  std::vector<MemberRow> rows;
  for (const auto& kv : listed->kvs) {
    auto m = DecodeMember(kv.value);
    if (!m.ok() || kv.key != MemberKey(c.prefix, m->node_id)) {
      std::fprintf(stderr, "stratactl: skipping member record %s: %s\n",
                   kv.key.c_str(),
                   m.ok() ? "node_id does not match the key"
                          : std::string(m.status().message()).c_str());
      continue;
    }
    rows.push_back({*std::move(m), kv.lease, -1});
  }
  std::sort(rows.begin(), rows.end(),
            [](const MemberRow& x, const MemberRow& y) {
              return x.member.node_id < y.member.node_id;
            });
  return rows;
}

// Runs fn(client) against every member concurrently; results in order.
template <typename T>
std::vector<absl::StatusOr<T>> FanOut(
    const Cluster& c, const std::vector<MemberRow>& rows,
    const std::function<absl::StatusOr<T>(Client&)>& fn) {
  std::vector<absl::StatusOr<T>> results(rows.size(),
                                         absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < rows.size(); ++i) {
    threads.emplace_back([&, i] {
      client::ClientOptions o = c.base;
      o.address = rows[i].member.grpc_address;
      // One retry, 20 ms on (initial_backoff): a live node's connection can
      // fail once ("failed to connect to all addresses ... No such file or
      // directory" in a CI run, session 12). A dead node costs that much
      // more and a cut-off one no more than the deadline, so neither
      // stalls the whole view.
      o.max_attempts = 2;
      auto conn = Client::Connect(o);
      if (!conn.ok()) {
        results[i] = conn.status();
        return;
      }
      results[i] = fn(**conn);
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

std::string StatusWord(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s)
             ? "unreachable"
             : absl::StatusCodeToString(s.code());
}

// ---- members

int Members(const Cluster& c) {
  auto rows = ListMembers(c);
  if (!rows.ok()) return Fail(rows.status());
  for (auto& r : *rows) {
    if (r.lease == 0) continue;
    auto ttl = c.etcd->LeaseTimeToLive(r.lease);
    if (ttl.ok()) r.ttl_left_s = *ttl;
  }
  // The health probe answers in milliseconds from a live node: cap it so a
  // cut-off node does not hold the whole view for the full --deadline.
  client::CallOptions probe;
  probe.deadline = std::min(c.base.default_deadline, absl::Seconds(3));
  auto health = FanOut<bool>(c, *rows, [&](Client& cl) -> absl::StatusOr<bool> {
    auto stats = cl.Stats(probe);
    if (!stats.ok()) return stats.status();
    return stats->draining;
  });
  auto health_word = [&](size_t i) -> std::string {
    if (!health[i].ok()) return StatusWord(health[i].status());
    return *health[i] ? "draining" : "serving";
  };
  if (c.json) {
    std::printf("[");
    for (size_t i = 0; i < rows->size(); ++i) {
      const auto& r = (*rows)[i];
      std::printf(
          "%s{\"node_id\":%s,\"grpc_address\":%s,\"ucx_address\":%s,"
          "\"zone\":%s,\"capacity_bytes\":%llu,\"lease\":%lld,"
          "\"lease_ttl_left_s\":%lld,\"incarnation\":%llu,\"version\":%s,"
          "\"health\":%s}",
          i ? "," : "", Json(r.member.node_id).c_str(),
          Json(r.member.grpc_address).c_str(),
          Json(r.member.ucx_address).c_str(), Json(r.member.zone).c_str(),
          (unsigned long long)r.member.capacity_bytes, (long long)r.lease,
          (long long)r.ttl_left_s, (unsigned long long)r.member.incarnation,
          Json(r.member.version).c_str(), Json(health_word(i)).c_str());
    }
    std::printf("]\n");
    return 0;
  }
  std::printf("%-16s %-22s %-10s %12s %9s %-11s\n", "NODE", "ADDRESS", "ZONE",
              "CAPACITY", "LEASE_TTL", "HEALTH");
  for (size_t i = 0; i < rows->size(); ++i) {
    const auto& r = (*rows)[i];
    std::printf(
        "%-16s %-22s %-10s %12s %9s %-11s\n", r.member.node_id.c_str(),
        r.member.grpc_address.c_str(),
        r.member.zone.empty() ? "-" : r.member.zone.c_str(),
        Bytes(r.member.capacity_bytes).c_str(),
        r.ttl_left_s < 0 ? "-" : absl::StrCat(r.ttl_left_s, "s").c_str(),
        health_word(i).c_str());
  }
  std::printf("%zu members\n", rows->size());
  return 0;
}

// ---- usage

int Usage(const Cluster& c) {
  auto rows = ListMembers(c);
  if (!rows.ok()) return Fail(rows.status());
  auto stats = FanOut<client::ServerStats>(
      c, *rows, [](Client& cl) { return cl.Stats(); });
  bool failed = false;
  if (c.json) {
    std::printf("[");
    for (size_t i = 0; i < rows->size(); ++i) {
      std::printf("%s{\"node_id\":%s,", i ? "," : "",
                  Json((*rows)[i].member.node_id).c_str());
      if (!stats[i].ok()) {
        failed = true;
        std::printf("\"error\":%s}",
                    Json(stats[i].status().ToString()).c_str());
        continue;
      }
      const auto& s = *stats[i];
      std::printf(
          "\"gets\":%llu,\"get_hits\":%llu,\"puts\":%llu,"
          "\"draining\":%s,\"tiers\":[",
          (unsigned long long)s.gets, (unsigned long long)s.get_hits,
          (unsigned long long)s.puts, s.draining ? "true" : "false");
      for (size_t t = 0; t < s.tiers.size(); ++t) {
        const auto& tier = s.tiers[t];
        std::printf(
            "%s{\"tier\":%s,\"capacity_bytes\":%llu,\"used_bytes\":%llu,"
            "\"blocks\":%llu,\"hits\":%llu,\"misses\":%llu,"
            "\"evictions\":%llu}",
            t ? "," : "", Json(tier.tier).c_str(),
            (unsigned long long)tier.capacity_bytes,
            (unsigned long long)tier.used_bytes,
            (unsigned long long)tier.blocks, (unsigned long long)tier.hits,
            (unsigned long long)tier.misses,
            (unsigned long long)tier.evictions);
      }
      std::printf("]}");
    }
    std::printf("]\n");
    return failed ? 1 : 0;
  }
  std::printf("%-16s %-5s %11s %11s %6s %9s %10s %10s %6s\n", "NODE", "TIER",
              "USED", "CAPACITY", "USE%", "BLOCKS", "HITS", "MISSES", "HIT%");
  std::map<std::string, client::TierStats> totals;  // By tier name.
  uint64_t gets = 0, get_hits = 0;
  for (size_t i = 0; i < rows->size(); ++i) {
    const std::string& node = (*rows)[i].member.node_id;
    if (!stats[i].ok()) {
      failed = true;
      std::printf("%-16s %s\n", node.c_str(),
                  stats[i].status().ToString().c_str());
      continue;
    }
    for (const auto& t : stats[i]->tiers) {
      std::printf("%-16s %-5s %11s %11s %6s %9llu %10llu %10llu %6s\n",
                  node.c_str(), t.tier.c_str(), Bytes(t.used_bytes).c_str(),
                  Bytes(t.capacity_bytes).c_str(),
                  Percent(t.used_bytes, t.capacity_bytes).c_str(),
                  (unsigned long long)t.blocks, (unsigned long long)t.hits,
                  (unsigned long long)t.misses,
                  Percent(t.hits, t.hits + t.misses).c_str());
      auto& sum = totals[t.tier];
      sum.tier = t.tier;
      sum.used_bytes += t.used_bytes;
      sum.capacity_bytes += t.capacity_bytes;
      sum.blocks += t.blocks;
      sum.hits += t.hits;
      sum.misses += t.misses;
    }
    gets += stats[i]->gets;
    get_hits += stats[i]->get_hits;
  }
  for (const auto& [name, t] : totals) {
    std::printf("%-16s %-5s %11s %11s %6s %9llu %10llu %10llu %6s\n",
                "(cluster)", name.c_str(), Bytes(t.used_bytes).c_str(),
                Bytes(t.capacity_bytes).c_str(),
                Percent(t.used_bytes, t.capacity_bytes).c_str(),
                (unsigned long long)t.blocks, (unsigned long long)t.hits,
                (unsigned long long)t.misses,
                Percent(t.hits, t.hits + t.misses).c_str());
  }
  std::printf("gets=%llu get_hits=%llu get hit rate %s over %zu nodes\n",
              (unsigned long long)gets, (unsigned long long)get_hits,
              Percent(get_hits, gets).c_str(), rows->size());
  return failed ? 1 : 0;
}

// ---- evict

int Evict(const Cluster& c, const Args& a) {
  client::EvictFilter f;
  f.tenant = a.Flag("tenant");
  f.model = a.Flag("model");
  f.key_prefix = a.Flag("key-prefix");
  if (a.flags.count("min-age")) {
    auto d = ParseDurationFlag("min-age", a.Flag("min-age"));
    if (!d.ok()) return Fail(d.status());
    f.min_age = *d;
  }
  f.dry_run = a.Bool("dry-run");
  f.include_pinned = a.Bool("include-pinned");
  size_t min_members = 0;
  if (a.flags.count("min-members") &&
      !absl::SimpleAtoi(a.Flag("min-members"), &min_members)) {
    return UsageError("min-members: want a number");
  }
  auto rows = ListMembers(c);
  if (!rows.ok()) return Fail(rows.status());
  // A member whose lease lapsed is not listed: its blocks would silently
  // stay. An operator who knows the cluster's size can refuse that.
  if (rows->size() < min_members) {
    return Fail(absl::FailedPreconditionError(absl::StrCat(
        "min-members: ", rows->size(), " members listed, fewer than ",
        min_members, "; nothing evicted")));
  }
  auto results = FanOut<client::EvictResult>(
      c, *rows, [&](Client& cl) { return cl.Evict(f); });
  client::EvictResult total;
  size_t failed = 0;
  for (const auto& r : results) {
    if (!r.ok()) {
      ++failed;
      continue;
    }
    total.blocks += r->blocks;
    total.bytes += r->bytes;
    total.skipped_pinned += r->skipped_pinned;
  }
  if (c.json) {
    std::printf("{\"dry_run\":%s,\"nodes\":[", f.dry_run ? "true" : "false");
    for (size_t i = 0; i < rows->size(); ++i) {
      std::printf("%s{\"node_id\":%s,", i ? "," : "",
                  Json((*rows)[i].member.node_id).c_str());
      if (!results[i].ok()) {
        std::printf("\"error\":%s}",
                    Json(results[i].status().ToString()).c_str());
      } else {
        std::printf("\"blocks\":%llu,\"bytes\":%llu,\"skipped_pinned\":%llu}",
                    (unsigned long long)results[i]->blocks,
                    (unsigned long long)results[i]->bytes,
                    (unsigned long long)results[i]->skipped_pinned);
      }
    }
    std::printf(
        "],\"blocks\":%llu,\"bytes\":%llu,\"skipped_pinned\":%llu,"
        "\"failed_nodes\":%zu}\n",
        (unsigned long long)total.blocks, (unsigned long long)total.bytes,
        (unsigned long long)total.skipped_pinned, failed);
    return failed ? 1 : 0;
  }
  for (size_t i = 0; i < rows->size(); ++i) {
    const std::string& node = (*rows)[i].member.node_id;
    if (!results[i].ok()) {
      std::printf("%-16s %s\n", node.c_str(),
                  results[i].status().ToString().c_str());
    } else {
      std::printf("%-16s %llu blocks (%s), %llu pinned skipped\n", node.c_str(),
                  (unsigned long long)results[i]->blocks,
                  Bytes(results[i]->bytes).c_str(),
                  (unsigned long long)results[i]->skipped_pinned);
    }
  }
  std::printf(
      "%s %llu blocks (%llu bytes) on %zu nodes; %llu pinned blocks "
      "skipped%s\n",
      f.dry_run ? "would evict" : "evicted", (unsigned long long)total.blocks,
      (unsigned long long)total.bytes, rows->size() - failed,
      (unsigned long long)total.skipped_pinned,
      failed ? absl::StrCat("; ", failed, " nodes failed").c_str() : "");
  return failed ? 1 : 0;
}

// ---- pin / unpin / owners

absl::StatusOr<size_t> Replication(const Cluster& c, const Args& a) {
  if (a.flags.count("replication")) {
    uint32_t r = 0;
    if (!absl::SimpleAtoi(a.Flag("replication"), &r) || r == 0) {
      return absl::InvalidArgumentError("replication: want a number >= 1");
    }
    return r;
  }
  ClusterConfigStore store(c.etcd.get(), c.prefix);
  auto config = store.GetConfig();
  if (!config.ok()) return config.status();
  return EffectiveClusterConfig(config->config).replication_factor();
}

int KeyOwners(const Cluster& c, const Args& a) {
  const auto& p = a.positional;
  const std::string& sub = p[1];
  if (p.size() < 3) return UsageError(absl::StrCat("cluster ", sub, " KEY"));
  if (sub == "pin" && p.size() != 4) return UsageError("cluster pin KEY TTL");
  auto key = kvstore::BlockKey::FromHex(p[2]);
  if (!key.ok()) return Fail(key.status());
  absl::Duration ttl;
  if (sub == "pin") {
    auto d = ParseDurationFlag("ttl", p[3]);
    if (!d.ok()) return Fail(d.status());
    ttl = *d;
  }
  auto r = Replication(c, a);
  if (!r.ok()) return Fail(r.status());
  auto rows = ListMembers(c);
  if (!rows.ok()) return Fail(rows.status());
  std::vector<PlacementNode> nodes;
  for (const auto& row : *rows) {
    nodes.push_back({row.member.node_id,
                     static_cast<double>(row.member.capacity_bytes),
                     row.member.zone});
  }
  const RendezvousPlacement placement(std::move(nodes));
  std::vector<MemberRow> owners;
  for (size_t i : placement.Owners(*key, *r)) owners.push_back((*rows)[i]);
  if (owners.empty())
    return Fail(absl::UnavailableError("no live members own keys"));
  std::vector<absl::StatusOr<bool>> results(owners.size(), true);
  if (sub != "owners") {
    results = FanOut<bool>(c, owners, [&](Client& cl) -> absl::StatusOr<bool> {
      absl::Status s = sub == "pin" ? cl.Pin(*key, ttl) : cl.Unpin(*key);
      if (!s.ok()) return s;
      return true;
    });
  }
  // An owner that does not hold the key (NOT_FOUND: never written there,
  // or evicted) is reported but is not a failure while another owner pinned
  // it; any other error is.
  size_t failed = 0, done = 0;
  for (const auto& res : results) {
    if (res.ok()) {
      ++done;
    } else if (!absl::IsNotFound(res.status())) {
      ++failed;
    }
  }
  if (done == 0) failed = std::max<size_t>(failed, 1);
  if (c.json) {
    std::printf("{\"key\":%s,\"replication\":%zu,\"owners\":[",
                Json(key->ToHex()).c_str(), *r);
    for (size_t i = 0; i < owners.size(); ++i) {
      std::printf(
          "%s{\"node_id\":%s,\"grpc_address\":%s,\"rank\":%zu,"
          "\"status\":%s}",
          i ? "," : "", Json(owners[i].member.node_id).c_str(),
          Json(owners[i].member.grpc_address).c_str(), i,
          Json(results[i].ok() ? "ok" : results[i].status().ToString())
              .c_str());
    }
    std::printf("]}\n");
    return failed ? 1 : 0;
  }
  for (size_t i = 0; i < owners.size(); ++i) {
    std::printf(
        "%s %s on %s (%s, %s): %s\n", sub.c_str(), key->ToHex().c_str(),
        owners[i].member.node_id.c_str(), owners[i].member.grpc_address.c_str(),
        i == 0 ? "primary" : absl::StrCat("replica ", i).c_str(),
        results[i].ok() ? "ok" : results[i].status().ToString().c_str());
  }
  if (owners.size() < *r) {
    std::printf("warning: %zu of R=%zu owners (too few live members)\n",
                owners.size(), *r);
  }
  return failed ? 1 : 0;
}

// ---- config

std::string ConfigJson(const ClusterConfig& config) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(config, &out, o);
  return out;
}

int Config(const Cluster& c, const Args& a) {
  const auto& p = a.positional;
  if (p.size() < 3 || (p[2] != "get" && p[2] != "set")) {
    return UsageError("cluster config get | set FIELD=VALUE...");
  }
  ClusterConfigStore store(c.etcd.get(), c.prefix);
  auto current = store.GetConfig();
  if (!current.ok()) return Fail(current.status());
  if (p[2] == "get") {
    const ClusterConfig eff = EffectiveClusterConfig(current->config);
    if (c.json) {
      std::printf("{\"version\":%lld,\"effective\":%s,\"stored\":%s}\n",
                  (long long)current->version, ConfigJson(eff).c_str(),
                  ConfigJson(current->config).c_str());
    } else {
      std::printf("# version %lld%s (unset fields show their defaults)\n%s",
                  (long long)current->version,
                  current->version == 0 ? " (never written)" : "",
                  ClusterConfigText(eff).c_str());
    }
    return 0;
  }
  if (p.size() < 4) return UsageError("cluster config set FIELD=VALUE...");
  int64_t expected = current->version;
  if (a.flags.count("expect-version") &&
      !absl::SimpleAtoi(a.Flag("expect-version"), &expected)) {
    return UsageError("expect-version: want a number");
  }
  ClusterConfig updated = current->config;
  for (size_t i = 3; i < p.size(); ++i) {
    if (absl::Status s = SetClusterConfigField(p[i], &updated); !s.ok()) {
      return Fail(s);
    }
  }
  auto version = store.PutConfig(updated, expected);
  if (!version.ok()) return Fail(version.status());
  if (c.json) {
    std::printf("{\"previous_version\":%lld,\"version\":%lld,\"stored\":%s}\n",
                (long long)expected, (long long)*version,
                ConfigJson(updated).c_str());
  } else {
    std::printf("config version %lld -> %lld\n", (long long)expected,
                (long long)*version);
  }
  return 0;
}

// ---- profiles

int Profiles(const Cluster& c, const Args& a) {
  const auto& p = a.positional;
  const std::string sub = p.size() > 2 ? p[2] : "";
  ClusterConfigStore store(c.etcd.get(), c.prefix);
  if (sub == "list") {
    auto list = store.ListProfiles();
    if (!list.ok()) return Fail(list.status());
    if (c.json) {
      std::printf("[");
      for (size_t i = 0; i < list->size(); ++i) {
        const auto& info = (*list)[i];
        std::printf(
            "%s{\"id\":%s,\"model_id\":%s,\"bytes\":%zu,\"tensors\":%zu}",
            i ? "," : "", Json(ProfileIdHex(info.id)).c_str(),
            Json(info.model_id).c_str(), info.bytes, info.tensors);
      }
      std::printf("]\n");
      return 0;
    }
    std::printf("%-16s %-40s %11s %7s\n", "ID", "MODEL", "SIZE", "TENSORS");
    for (const auto& info : *list) {
      std::printf("%-16s %-40s %11s %7zu\n", ProfileIdHex(info.id).c_str(),
                  info.model_id.c_str(), Bytes(info.bytes).c_str(),
                  info.tensors);
    }
    return 0;
  }
  if (sub == "put") {
    if (p.size() != 4) return UsageError("cluster profiles put FILE");
    auto profile = codecs::CodecProfile::ReadFile(p[3]);
    if (!profile.ok()) return Fail(profile.status());
    auto id = store.PutProfile(*profile);
    if (!id.ok()) return Fail(id.status());
    if (c.json) {
      std::printf("{\"id\":%s,\"model_id\":%s}\n",
                  Json(ProfileIdHex(*id)).c_str(),
                  Json(profile->model_id()).c_str());
    } else {
      std::printf("profile %s (%s) stored\n", ProfileIdHex(*id).c_str(),
                  profile->model_id().c_str());
    }
    return 0;
  }
  if (sub == "get" || sub == "rm") {
    if ((sub == "get" && p.size() != 5) || (sub == "rm" && p.size() != 4)) {
      return UsageError(sub == "get" ? "cluster profiles get ID FILE"
                                     : "cluster profiles rm ID");
    }
    auto id = ParseProfileId(p[3]);
    if (!id.ok()) return Fail(id.status());
    if (sub == "rm") {
      auto deleted = store.DeleteProfile(*id);
      if (!deleted.ok()) return Fail(deleted.status());
      if (!*deleted) {
        return Fail(absl::NotFoundError(
            absl::StrCat("profile ", p[3], ": not in etcd")));
      }
      std::printf("profile %s removed\n", p[3].c_str());
      return 0;
    }
    auto profile = store.GetProfile(*id);
    if (!profile.ok()) return Fail(profile.status());
    if (absl::Status s = profile->WriteFile(p[4]); !s.ok()) return Fail(s);
    std::printf("profile %s (%s) written to %s\n", p[3].c_str(),
                profile->model_id().c_str(), p[4].c_str());
    return 0;
  }
  return UsageError("cluster profiles list | put FILE | get ID FILE | rm ID");
}

}  // namespace

int RunClusterCommand(const Args& a, const client::ClientOptions& base) {
  if (a.positional.size() < 2) {
    return UsageError(
        "cluster members|usage|evict|pin|unpin|owners|config|profiles|bench");
  }
  Cluster c;
  c.prefix = a.Flag("prefix", std::string(kDefaultEtcdPrefix));
  if (c.prefix.empty() || c.prefix.back() != '/') {
    return UsageError("prefix: must end with '/'");
  }
  c.base = base;
  c.json = a.Bool("json");
  EtcdOptions eo;
  eo.endpoints = a.Flag("etcd", "127.0.0.1:2379");
  eo.call_timeout = base.default_deadline;
  auto etcd = EtcdClient::Create(eo);
  if (!etcd.ok()) return Fail(etcd.status());
  c.etcd = *std::move(etcd);
  const std::string& sub = a.positional[1];
  if (sub == "members") return Members(c);
  if (sub == "usage") return Usage(c);
  if (sub == "evict") return Evict(c, a);
  if (sub == "pin" || sub == "unpin" || sub == "owners") return KeyOwners(c, a);
  if (sub == "config") return Config(c, a);
  if (sub == "profiles") return Profiles(c, a);
  if (sub == "bench") return RunClusterBench(a, c.base, c.etcd.get(), c.prefix);
  return UsageError(absl::StrCat("cluster ", sub, ": unknown subcommand"));
}

}  // namespace strata::cluster::ctl
