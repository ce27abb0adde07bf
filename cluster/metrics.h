// Prometheus metrics of stratad, in the text exposition format (0.0.4).
//
// Names follow LMCache's `lmcache:*` set in spirit, prefixed `strata:`:
// request counters and latency histograms per RPC, bytes in and out, lookup
// keys and hits, and, read from the TieredStore at scrape time, per-tier
// usage, capacity, blocks, hits, misses, evictions, demotions, promotions and
// checksum failures. docs/stratad.md lists every metric.
//
// Thread safety: Record* are lock-free (atomics) and may be called from any
// thread; Render is thread-safe.
#ifndef STRATA_CLUSTER_METRICS_H_
#define STRATA_CLUSTER_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kvstore/tiered_store.h"

namespace strata::cluster {

enum class Rpc : int {
  kPut, kBatchPut, kGet, kBatchGet, kExists, kLeadingHits, kPrefixLookup,
  kRemove, kPin, kUnpin, kStats, kEvict, kDrain, kGetConfig, kHello,
  kCount,
};
const char* RpcName(Rpc rpc);

// A fixed-bucket latency histogram (seconds).
class LatencyHistogram {
 public:
  static constexpr std::array<double, 16> kBounds = {
      25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
      10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 5.0};
  void Observe(absl::Duration d);
  // Appends `name_bucket{...,le=...}`, `name_sum`, `name_count` lines.
  void Render(const std::string& name, const std::string& labels,
              std::string* out) const;

 private:
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_nanos_{0};
};

class ServiceMetrics {
 public:
  // One finished RPC: its outcome, latency and payload bytes.
  void RecordRpc(Rpc rpc, absl::StatusCode code, absl::Duration latency,
                 uint64_t bytes_in, uint64_t bytes_out);
  // A leading-hits / prefix lookup over `keys` keys that found `hits`.
  void RecordLookup(uint64_t keys, uint64_t hits, uint64_t hit_tokens);
  // The socket data plane: a connection opened (+1) or closed (-1); one
  // refused at accept (over its connection limit). `local`: one of its
  // local connections (Unix socket), else TCP; exported as plane="local"
  // or plane="tcp".
  void AddSocketConnections(int delta, bool local);
  void RecordRefusedSocketConnection(bool local);

  // The whole exposition: service metrics plus the store's statistics.
  std::string Render(const kvstore::StoreStats& store, bool draining,
                     absl::Duration uptime) const;

 private:
  struct PerRpc {
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> errors{0};
    std::atomic<uint64_t> bytes_in{0};
    std::atomic<uint64_t> bytes_out{0};
    LatencyHistogram latency;
  };
  std::array<PerRpc, static_cast<size_t>(Rpc::kCount)> rpcs_;
  std::atomic<uint64_t> lookup_requests_{0};
  std::atomic<uint64_t> lookup_keys_{0};
  std::atomic<uint64_t> lookup_hit_keys_{0};
  std::atomic<uint64_t> lookup_hit_tokens_{0};
  // By plane: [0] TCP, [1] local connections.
  std::array<std::atomic<int64_t>, 2> socket_connections_{};
  std::array<std::atomic<uint64_t>, 2> socket_connections_refused_{};
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_METRICS_H_
