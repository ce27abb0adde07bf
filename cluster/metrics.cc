#include "cluster/metrics.h"

#include "cluster/prometheus_text.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata::cluster {
namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

void Header(std::string* out, const char* name, const char* type,
            const char* help) {
  AppendMetricHeader(out, name, type, help);
}

void Sample(std::string* out, const std::string& name,
            const std::string& labels, double value) {
  AppendMetricSample(out, name, labels, value);
}

}  // namespace

const char* RpcName(Rpc rpc) {
  static constexpr const char* kNames[] = {
      "put", "batch_put", "get", "batch_get", "exists", "leading_hits",
      "prefix_lookup", "remove", "pin", "unpin", "stats", "evict", "drain",
      "get_config", "hello"};
  return kNames[static_cast<int>(rpc)];
}

void LatencyHistogram::Observe(absl::Duration d) {
  const double s = absl::ToDoubleSeconds(d);
  size_t i = 0;
  while (i < kBounds.size() && s > kBounds[i]) ++i;
  buckets_[i].fetch_add(1, kRelaxed);
  count_.fetch_add(1, kRelaxed);
  sum_nanos_.fetch_add(static_cast<uint64_t>(absl::ToInt64Nanoseconds(d)),
                       kRelaxed);
}

void LatencyHistogram::Render(const std::string& name,
                              const std::string& labels,
                              std::string* out) const {
  uint64_t cumulative = 0;
  const std::string sep = labels.empty() ? "" : ",";
  for (size_t i = 0; i <= kBounds.size(); ++i) {
    cumulative += buckets_[i].load(kRelaxed);
    const std::string le =
        i < kBounds.size() ? absl::StrFormat("%g", kBounds[i]) : "+Inf";
    Sample(out, name + "_bucket", absl::StrCat(labels, sep, "le=\"", le, "\""),
           static_cast<double>(cumulative));
  }
  Sample(out, name + "_sum", labels, sum_nanos_.load(kRelaxed) / 1e9);
  Sample(out, name + "_count", labels,
         static_cast<double>(count_.load(kRelaxed)));
}

void ServiceMetrics::RecordRpc(Rpc rpc, absl::StatusCode code,
                               absl::Duration latency, uint64_t bytes_in,
                               uint64_t bytes_out) {
  PerRpc& r = rpcs_[static_cast<size_t>(rpc)];
  r.requests.fetch_add(1, kRelaxed);
  if (code != absl::StatusCode::kOk && code != absl::StatusCode::kNotFound) {
    r.errors.fetch_add(1, kRelaxed);
  }
  r.bytes_in.fetch_add(bytes_in, kRelaxed);
  r.bytes_out.fetch_add(bytes_out, kRelaxed);
  r.latency.Observe(latency);
}

void ServiceMetrics::AddSocketConnections(int delta, bool local) {
  socket_connections_[local ? 1 : 0].fetch_add(delta, kRelaxed);
}

void ServiceMetrics::RecordRefusedSocketConnection(bool local) {
  socket_connections_refused_[local ? 1 : 0].fetch_add(1, kRelaxed);
}

void ServiceMetrics::RecordLookup(uint64_t keys, uint64_t hits,
                                  uint64_t hit_tokens) {
  lookup_requests_.fetch_add(1, kRelaxed);
  lookup_keys_.fetch_add(keys, kRelaxed);
  lookup_hit_keys_.fetch_add(hits, kRelaxed);
  lookup_hit_tokens_.fetch_add(hit_tokens, kRelaxed);
}

std::string ServiceMetrics::Render(const kvstore::StoreStats& store,
                                   bool draining,
                                   absl::Duration uptime) const {
  std::string out;
  out.reserve(16 << 10);
  auto per_rpc = [&](const char* name, const char* help, auto field) {
    Header(&out, name, "counter", help);
    for (int i = 0; i < static_cast<int>(Rpc::kCount); ++i) {
      Sample(&out, name,
             absl::StrCat("rpc=\"", RpcName(static_cast<Rpc>(i)), "\""),
             static_cast<double>(field(rpcs_[i]).load(kRelaxed)));
    }
  };
  per_rpc("strata:rpc_requests_total", "RPCs served, by method.",
          [](const PerRpc& r) -> const auto& { return r.requests; });
  per_rpc("strata:rpc_errors_total",
          "RPCs that failed (any code but OK and NOT_FOUND), by method.",
          [](const PerRpc& r) -> const auto& { return r.errors; });
  per_rpc("strata:rpc_received_bytes_total", "Block bytes received, by method.",
          [](const PerRpc& r) -> const auto& { return r.bytes_in; });
  per_rpc("strata:rpc_sent_bytes_total", "Block bytes sent, by method.",
          [](const PerRpc& r) -> const auto& { return r.bytes_out; });
  Header(&out, "strata:rpc_latency_seconds", "histogram",
         "Server-side RPC latency, by method.");
  for (int i = 0; i < static_cast<int>(Rpc::kCount); ++i) {
    rpcs_[i].latency.Render(
        "strata:rpc_latency_seconds",
        absl::StrCat("rpc=\"", RpcName(static_cast<Rpc>(i)), "\""), &out);
  }

  auto counter = [&](const char* name, const char* help, double v) {
    Header(&out, name, "counter", help);
    Sample(&out, name, "", v);
  };
  auto gauge = [&](const char* name, const char* help, double v) {
    Header(&out, name, "gauge", help);
    Sample(&out, name, "", v);
  };
  static constexpr const char* kSocketPlanes[] = {"plane=\"tcp\"",
                                                  "plane=\"local\""};
  Header(&out, "strata:data_plane_connections", "gauge",
         "Open connections of a bulk data plane.");
  for (int i = 0; i < 2; ++i) {
    Sample(&out, "strata:data_plane_connections", kSocketPlanes[i],
           static_cast<double>(socket_connections_[i].load(kRelaxed)));
  }
  Header(&out, "strata:data_plane_refused_connections_total", "counter",
         "Connections closed at accept (over the plane's connection limit).");
  for (int i = 0; i < 2; ++i) {
    Sample(&out, "strata:data_plane_refused_connections_total",
           kSocketPlanes[i],
           static_cast<double>(socket_connections_refused_[i].load(kRelaxed)));
  }
  counter("strata:lookup_requests_total", "Leading-hits and prefix lookups.",
          lookup_requests_.load(kRelaxed));
  counter("strata:lookup_keys_total", "Keys asked about by lookups.",
          lookup_keys_.load(kRelaxed));
  counter("strata:lookup_hit_keys_total", "Leading keys found by lookups.",
          lookup_hit_keys_.load(kRelaxed));
  counter("strata:lookup_hit_tokens_total",
          "Tokens covered by prefix-lookup hits.",
          lookup_hit_tokens_.load(kRelaxed));
  counter("strata:puts_total", "Blocks stored.", store.puts);
  counter("strata:duplicate_puts_total", "Puts of keys already stored.",
          store.duplicate_puts);
  counter("strata:rejected_puts_total",
          "Puts refused (invalid, corrupt or no room).", store.rejected_puts);
  counter("strata:gets_total", "Block reads.", store.gets);
  counter("strata:get_hits_total", "Block reads that returned a block.",
          store.get_hits);
  counter("strata:get_misses_total", "Block reads that missed.",
          store.get_misses);
  counter("strata:removes_total", "Blocks removed by request.", store.removes);
  gauge("strata:pinned_blocks", "Blocks pinned now.", store.pinned_blocks);
  gauge("strata:leased_blocks", "Blocks under a read lease now.",
        store.leased_blocks);
  gauge("strata:draining", "1 while the daemon refuses new blocks.",
        draining ? 1 : 0);
  gauge("strata:uptime_seconds", "Seconds since start.",
        absl::ToDoubleSeconds(uptime));

  struct TierMetric {
    const char* name;
    const char* type;
    const char* help;
    uint64_t kvstore::TierStats::*field;
  };
  static constexpr TierMetric kTier[] = {
      {"strata:tier_capacity_bytes", "gauge", "Tier capacity.",
       &kvstore::TierStats::capacity_bytes},
      {"strata:tier_used_bytes", "gauge", "Tier bytes in use.",
       &kvstore::TierStats::used_bytes},
      {"strata:tier_blocks", "gauge", "Blocks held by the tier.",
       &kvstore::TierStats::blocks},
      {"strata:tier_hits_total", "counter", "Reads served by the tier.",
       &kvstore::TierStats::hits},
      {"strata:tier_misses_total", "counter", "Reads the tier could not serve.",
       &kvstore::TierStats::misses},
      {"strata:tier_evictions_total", "counter", "Blocks evicted from the tier.",
       &kvstore::TierStats::evictions},
      {"strata:tier_demotions_total", "counter",
       "Evicted blocks moved to the next tier.", &kvstore::TierStats::demotions},
      {"strata:tier_promotions_total", "counter",
       "Blocks copied into the tier on a read.", &kvstore::TierStats::promotions},
      {"strata:tier_checksum_failures_total", "counter",
       "Corrupt copies detected and dropped.",
       &kvstore::TierStats::checksum_failures},
      {"strata:tier_write_failures_total", "counter",
       "Writes into the tier that failed.", &kvstore::TierStats::write_failures},
  };
  for (const TierMetric& m : kTier) {
    Header(&out, m.name, m.type, m.help);
    for (const kvstore::TierStats& t : store.tiers) {
      Sample(&out, m.name,
             absl::StrCat("tier=\"", kvstore::TierName(t.kind), "\""),
             static_cast<double>(t.*m.field));
    }
  }
  return out;
}

}  // namespace strata::cluster
