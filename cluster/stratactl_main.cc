// stratactl: the admin CLI of stratad.
//
//   stratactl [--addr=HOST:PORT] [--deadline=DURATION] COMMAND [ARGS] [FLAGS]
//
// Commands (docs/stratactl.md has examples):
//   status                      health, version, uptime, usage per tier
//   capacity                    capacity and usage per tier
//   stats [--json]              every counter, per tier
//   evict [--tenant=T] [--model=M] [--key-prefix=HEX] [--min-age=DUR]
//         [--dry-run] [--include-pinned]
//   pin KEY TTL | unpin KEY | remove KEY
//   put KEY FILE [--durable] [--tenant=T] [--model=M]   FILE: an encoded block
//   get KEY FILE                                        writes the block
//   make-block FILE [--dtype=bf16] [--shape=LAYERS,TOKENS,HEADS,DIM] [--seed=N]
//   lookup --tokens-file=F [namespace flags]   longest cached prefix
//   fill-prompt --tokens-file=F [namespace flags] [--seed=N]
//         store synthetic KV for every full chunk of a prompt (demos, tests)
//   drain | config
//   cluster members|usage|evict|pin|unpin|owners|config|profiles
//         [--etcd=HOST:PORT] [--prefix=/strata/v1/] [--json]  the whole
//         cluster, found in etcd (stratactl_cluster.cc)
//   bench [--op=put|get|mixed] [--size=1MiB] [--clients=4] [--ops=200]
//         [--warmup=0] [--durable] [--keep] [--latency-file=PATH]  GB/s and
//         latency percentiles (every call's to PATH: client, microseconds);
//         afterwards (untimed) removes the blocks it stored unless --keep
// Every command: --data-plane=grpc|ucx|tcp|local|auto (default grpc;
//   ClientOptions::data_plane), --ucx-min-bytes=SIZE
//   (ClientOptions::ucx_min_bytes) and --local-daemon-uid=UID
//   (ClientOptions::local_daemon_uid).
// Namespace flags: --model=ID --dtype=bf16 --layers=N --kv-heads=N
//   --head-dim=N --chunk=256 --tenant-salt=S
// Exit status: 0 on success, 1 when the daemon answered an error, 2 on usage.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <latch>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/strata_client.h"
#include "cluster/rebalance/drain_cli.h"
#include "cluster/server_config.h"
#include "cluster/stratactl_cli.h"
#include "kvstore/block_format.h"
#include "kvstore/block_key.h"

namespace strata::cluster {
namespace {

using client::Client;
using kvstore::BlockKey;

using ctl::Args;
using ctl::Fail;
using ctl::ParseDurationFlag;
using ctl::UsageError;

int Usage() {
  std::fputs(
      "usage: stratactl [--addr=HOST:PORT] [--deadline=10s] COMMAND ...\n"
      "commands: status capacity stats evict pin unpin remove put get "
      "make-block lookup fill-prompt drain config bench\n"
      "cluster commands (etcd): stratactl [--etcd=HOST:PORT] cluster "
      "members|usage|evict|pin|unpin|owners|config|profiles ...\n"
      "see docs/stratactl.md\n",
      stderr);
  return 2;
}

absl::StatusOr<std::vector<uint8_t>> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("file: cannot open ", path));
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

absl::Status WriteFile(const std::string& path, absl::Span<const uint8_t> b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), b.size());
  if (!out) return absl::UnavailableError(absl::StrCat("file: cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<kvstore::DType> ParseDType(const std::string& s) {
  for (auto d : {kvstore::DType::kFloat16, kvstore::DType::kBFloat16,
                 kvstore::DType::kFloat8E4M3, kvstore::DType::kFloat32}) {
    if (s == kvstore::DTypeName(d)) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype: \"", s, "\" (want fp16, bf16, fp8_e4m3, fp32)"));
}

absl::StatusOr<uint32_t> ParseU32(const std::string& field,
                                  const std::string& s) {
  uint32_t v;
  if (!absl::SimpleAtoi(s, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": \"", s, "\" is not a number"));
  }
  return v;
}

// A random encoded raw block of the given shape.
std::vector<uint8_t> RandomBlock(const kvstore::BlockShape& shape,
                                 uint64_t seed) {
  std::vector<uint8_t> payload(shape.RawBytes());
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= payload.size(); i += 8) {
    const uint64_t v = rng();
    std::memcpy(payload.data() + i, &v, 8);
  }
  return *kvstore::EncodeBlock(shape, kvstore::CodecId::kRaw, {}, payload);
}

// A bf16 shape whose payload is about `bytes` (8 KV heads of 128).
kvstore::BlockShape ShapeForBytes(uint64_t bytes) {
  kvstore::BlockShape s{kvstore::DType::kBFloat16, 1, 1, 8, 128};
  const uint64_t per_token = 2 * 8 * 128 * 2;
  uint64_t tokens = std::max<uint64_t>(1, bytes / per_token);
  while (tokens > 256 && tokens % 2 == 0) {
    s.num_layers *= 2;
    tokens /= 2;
  }
  s.num_tokens = static_cast<uint32_t>(std::min<uint64_t>(tokens, 65536));
  return s;
}

absl::StatusOr<kvstore::KeyNamespace> NamespaceFromFlags(const Args& a) {
  kvstore::KeyNamespace ns;
  ns.model_id = a.Flag("model", "demo/model");
  ns.tenant_salt = a.Flag("tenant-salt");
  auto dtype = ParseDType(a.Flag("dtype", "bf16"));
  if (!dtype.ok()) return dtype.status();
  ns.dtype = *dtype;
  auto set = [&](const char* flag, const char* def, uint32_t* out) {
    auto v = ParseU32(flag, a.Flag(flag, def));
    if (v.ok()) *out = *v;
    return v.status();
  };
  for (auto s : {set("layers", "4", &ns.num_layers),
                 set("kv-heads", "8", &ns.num_kv_heads),
                 set("head-dim", "128", &ns.head_dim),
                 set("chunk", "256", &ns.chunk_tokens)}) {
    if (!s.ok()) return s;
  }
  return ns;
}

absl::StatusOr<std::vector<uint32_t>> ReadTokens(const Args& a) {
  const std::string path = a.Flag("tokens-file");
  if (path.empty()) {
    return absl::InvalidArgumentError("tokens-file: required");
  }
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("tokens-file: cannot open ", path));
  std::vector<uint32_t> tokens;
  std::string word;
  while (in >> word) {
    uint32_t t;
    if (!absl::SimpleAtoi(word, &t)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokens-file: \"", word, "\" is not a token id"));
    }
    tokens.push_back(t);
  }
  return tokens;
}

void PrintTiers(const client::ServerStats& s, bool full) {
  if (full) {
    std::printf("%-5s %12s %12s %6s %9s %9s %9s %9s %10s %10s %9s %9s\n",
                "tier", "used", "capacity", "use%", "blocks", "hits", "misses",
                "evictions", "demotions", "promotions", "cksum_err",
                "write_err");
  } else {
    std::printf("%-5s %12s %12s %6s %9s\n", "tier", "used", "capacity", "use%",
                "blocks");
  }
  for (const auto& t : s.tiers) {
    const double pct =
        t.capacity_bytes ? 100.0 * t.used_bytes / t.capacity_bytes : 0;
    std::printf("%-5s %12llu %12llu %5.1f%% %9llu", t.tier.c_str(),
                (unsigned long long)t.used_bytes,
                (unsigned long long)t.capacity_bytes, pct,
                (unsigned long long)t.blocks);
    if (full) {
      std::printf(" %9llu %9llu %9llu %9llu %10llu %10llu %9llu",
                  (unsigned long long)t.hits, (unsigned long long)t.misses,
                  (unsigned long long)t.evictions,
                  (unsigned long long)t.demotions,
                  (unsigned long long)t.promotions,
                  (unsigned long long)t.checksum_failures,
                  (unsigned long long)t.write_failures);
    }
    std::printf("\n");
  }
}

void PrintStatsJson(const client::ServerStats& s) {
  std::printf(
      "{\"version\":\"%s\",\"uptime_ms\":%llu,\"draining\":%s,\"puts\":%llu,"
      "\"duplicate_puts\":%llu,\"rejected_puts\":%llu,\"gets\":%llu,"
      "\"get_hits\":%llu,\"get_misses\":%llu,\"removes\":%llu,"
      "\"pinned_blocks\":%llu,\"leased_blocks\":%llu,\"tiers\":[",
      s.version.c_str(), (unsigned long long)s.uptime_ms,
      s.draining ? "true" : "false", (unsigned long long)s.puts,
      (unsigned long long)s.duplicate_puts, (unsigned long long)s.rejected_puts,
      (unsigned long long)s.gets, (unsigned long long)s.get_hits,
      (unsigned long long)s.get_misses, (unsigned long long)s.removes,
      (unsigned long long)s.pinned_blocks, (unsigned long long)s.leased_blocks);
  for (size_t i = 0; i < s.tiers.size(); ++i) {
    const auto& t = s.tiers[i];
    std::printf(
        "%s{\"tier\":\"%s\",\"capacity_bytes\":%llu,\"used_bytes\":%llu,"
        "\"blocks\":%llu,\"hits\":%llu,\"misses\":%llu,\"evictions\":%llu,"
        "\"demotions\":%llu,\"promotions\":%llu,\"checksum_failures\":%llu,"
        "\"write_failures\":%llu}",
        i ? "," : "", t.tier.c_str(), (unsigned long long)t.capacity_bytes,
        (unsigned long long)t.used_bytes, (unsigned long long)t.blocks,
        (unsigned long long)t.hits, (unsigned long long)t.misses,
        (unsigned long long)t.evictions, (unsigned long long)t.demotions,
        (unsigned long long)t.promotions,
        (unsigned long long)t.checksum_failures,
        (unsigned long long)t.write_failures);
  }
  std::printf("]}\n");
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
  std::nth_element(v.begin(), v.begin() + i, v.end());
  return v[i];
}

// Closed-loop load: `clients` threads, each with its own connection, taking
// the run's `ops` x `clients` operations one at a time, back to back.
int Bench(const client::ClientOptions& base, const Args& a) {
  const std::string op = a.Flag("op", "mixed");
  if (op != "put" && op != "get" && op != "mixed") {
    return UsageError("op: want put, get or mixed");
  }
  auto size = ParseByteSize("size", a.Flag("size", "1MiB"));
  auto clients = ParseU32("clients", a.Flag("clients", "4"));
  auto ops = ParseU32("ops", a.Flag("ops", "200"));
  auto warmup = ParseU32("warmup", a.Flag("warmup", "0"));
  if (!warmup.ok()) return Fail(warmup.status());
  if (!size.ok()) return Fail(size.status());
  if (!clients.ok() || *clients == 0) return UsageError("clients: want >= 1");
  if (!ops.ok()) return Fail(ops.status());
  // Put keys are indexed by call below 2^31, warm-up keys from 2^31 up.
  if (uint64_t{*ops} * *clients > (uint64_t{1} << 30)) {
    return UsageError("ops: ops x clients must be at most 2^30");
  }
  if (*warmup > (uint32_t{1} << 30)) {
    return UsageError("warmup: must be at most 2^30");
  }
  // Opened before the run: a path that cannot be written fails at once,
  // not after the load ran.
  std::FILE* latency_file = nullptr;
  if (const std::string path = a.Flag("latency-file"); !path.empty()) {
    latency_file = std::fopen(path.c_str(), "w");
    if (latency_file == nullptr) {
      return UsageError(absl::StrCat("latency-file: cannot write ", path, ": ",
                                     std::strerror(errno)));
    }
  }
  absl::Cleanup close_latency_file = [latency_file] {
    if (latency_file != nullptr) std::fclose(latency_file);
  };
  const kvstore::BlockShape shape = ShapeForBytes(*size);
  const std::vector<uint8_t> block = RandomBlock(shape, 1);
  const uint64_t run = std::random_device{}();
  auto key_of = [&](uint32_t c, uint32_t i) {
    return BlockKey{run, (uint64_t{c} << 32) | i};
  };
  client::PutOptions put;
  put.durable = a.Bool("durable");

  // Each client's GET destination (declared first: it outlives the
  // connections it is registered with).
  std::vector<std::vector<uint8_t>> dsts(*clients);
  // get: preload what the readers will read (not timed).
  std::vector<std::unique_ptr<Client>> conns;
  for (uint32_t c = 0; c < *clients; ++c) {
    auto conn = Client::Connect(base);
    if (!conn.ok()) return Fail(conn.status());
    conns.push_back(*std::move(conn));
  }
  // The run is ops x clients calls that the clients take one at a time, as
  // redis-benchmark's clients do, so all of them stay busy to the end (with
  // a fixed share each, the first to finish would leave the others a tail
  // run with fewer clients, which lowers short runs' GB/s). A put's key is
  // indexed by its call, unique across clients. Per call: who took it and
  // its latency (each written by that client only, read after the join).
  constexpr uint32_t kNoClient = UINT32_MAX;
  const uint64_t total_calls = uint64_t{*ops} * *clients;
  std::vector<uint32_t> taken_by(total_calls, kNoClient);
  std::vector<double> latency(total_calls, 0);
  const uint32_t preload = op == "put" ? 0 : std::min<uint32_t>(*ops, 64);
  auto is_put = [&](uint64_t call) {
    return op == "put" || (op == "mixed" && call % 2 == 0);
  };
  // Untimed, however the run ends: remove what it may have stored, so
  // back-to-back runs against one daemon each start from the same store (a
  // load generator's blocks would otherwise fill the cache and make later
  // runs measure eviction; Redis, which the benchmark compares against,
  // overwrites one key).
  absl::Cleanup remove_stored = [&] {
    if (a.Bool("keep")) return;
    std::fflush(stdout);
    std::atomic<uint64_t> not_removed{0};
    std::vector<std::thread> removers;
    for (uint32_t c = 0; c < *clients; ++c) {
      removers.emplace_back([&, c] {
        std::vector<BlockKey> keys;
        for (uint32_t i = 0; i < preload; ++i) keys.push_back(key_of(c, i));
        for (uint32_t i = 0; i < *warmup && op != "get"; ++i) {
          keys.push_back(key_of(c, 0x80000000u + i));
        }
        for (uint64_t call = 0; call < total_calls; ++call) {
          if (taken_by[call] == c && is_put(call)) {
            keys.push_back(key_of(c, preload + static_cast<uint32_t>(call)));
          }
        }
        for (const BlockKey& key : keys) {
          const absl::Status s = conns[c]->Remove(key);
          if (!s.ok() && !absl::IsNotFound(s)) not_removed.fetch_add(1);
        }
      });
    }
    for (auto& t : removers) t.join();
    if (not_removed.load() != 0) {
      std::fprintf(stderr,
                   "bench: %llu of the run's blocks could not be removed "
                   "(they stay in the daemon)\n",
                   static_cast<unsigned long long>(not_removed.load()));
    }
  };
  for (uint32_t c = 0; c < *clients; ++c) {
    for (uint32_t i = 0; i < preload; ++i) {
      auto r = conns[c]->Put(key_of(c, i), block, put);
      if (!r.ok()) return Fail(r.status());
    }
  }
  // The GET destinations are allocated, registered and touched before the
  // clock starts (a fresh 32 MiB buffer faults in 8192 pages on its first
  // GET), and reused by the warm-up and the timed calls alike.
  std::vector<client::BufferHandle> handles;
  for (uint32_t c = 0; c < *clients && op != "put"; ++c) {
    dsts[c].assign(block.size(), 0);
    auto handle = conns[c]->RegisterBuffer(dsts[c].data(), dsts[c].size());
    if (!handle.ok()) return Fail(handle.status());
    handles.push_back(*handle);
  }
  // Untimed warm-up: first-touch page faults and buffers on both sides.
  for (uint32_t c = 0; c < *clients; ++c) {
    for (uint32_t i = 0; i < *warmup; ++i) {
      absl::Status s =
          op == "get"
              ? conns[c]
                    ->GetInto(key_of(c, i % std::max<uint32_t>(preload, 1)),
                              handles[c], 0, block.size())
                    .status()
              : conns[c]->Put(key_of(c, 0x80000000u + i), block, put).status();
      if (!s.ok()) return Fail(s);
    }
  }
  std::vector<absl::Status> errors(*clients);
  std::atomic<uint64_t> next_call{0};
  // The clock starts once every client thread is up and waiting, and the
  // threads go only after it started.
  std::latch arrived(*clients);
  std::latch go(1);
  std::vector<std::thread> threads;
  for (uint32_t c = 0; c < *clients; ++c) {
    threads.emplace_back([&, c] {
      arrived.count_down();
      go.wait();
      while (errors[c].ok()) {
        const uint64_t call = next_call.fetch_add(1, std::memory_order_relaxed);
        if (call >= total_calls) break;
        const auto i = static_cast<uint32_t>(call);
        taken_by[call] = c;
        const auto t0 = std::chrono::steady_clock::now();
        absl::Status s;
        if (is_put(call)) {
          s = conns[c]->Put(key_of(c, preload + i), block, put).status();
        } else {
          s = conns[c]
                  ->GetInto(key_of(c, i % std::max<uint32_t>(preload, 1)),
                            handles[c], 0, block.size())
                  .status();
        }
        latency[call] =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                .count();
        if (!s.ok()) errors[c] = s;
      }
    });
  }
  arrived.wait();
  const auto start = std::chrono::steady_clock::now();
  go.count_down();
  for (auto& t : threads) t.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  for (size_t c = 0; c < handles.size(); ++c) {
    (void)conns[c]->UnregisterBuffer(handles[c]);
  }
  for (const auto& e : errors) {
    if (!e.ok()) return Fail(e);
  }
  std::vector<double> sorted = latency;  // Every call was made.
  const double bytes = static_cast<double>(total_calls) * block.size();
  const double mean =
      total_calls == 0
          ? 0
          : std::accumulate(latency.begin(), latency.end(), 0.0) / total_calls;
  std::printf(
      "op=%s size=%llu clients=%u ops=%llu data_plane=%s  %.3f GB/s  "
      "%.0f ops/s  p50=%.1f us  p99=%.1f us  mean=%.1f us  p90=%.1f us  "
      "max=%.1f us\n",
      op.c_str(), (unsigned long long)block.size(), *clients,
      (unsigned long long)total_calls, conns[0]->DataPlane().c_str(),
      bytes / secs / 1e9, total_calls / secs, Percentile(sorted, 0.50) * 1e6,
      Percentile(sorted, 0.99) * 1e6, mean * 1e6,
      Percentile(sorted, 0.90) * 1e6, Percentile(sorted, 1.0) * 1e6);
  // Every call's latency in call order, with the client that made it, for a
  // distribution the summary hides.
  for (uint64_t call = 0; call < total_calls && latency_file != nullptr;
       ++call) {
    std::fprintf(latency_file, "%u %.1f\n", taken_by[call],
                 latency[call] * 1e6);
  }
  return 0;
}

int Main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) == 0) {
      const size_t eq = s.find('=');
      if (eq == std::string::npos) {
        a.flags[s.substr(2)] = "true";
      } else {
        a.flags[s.substr(2, eq - 2)] = s.substr(eq + 1);
      }
    } else {
      a.positional.push_back(s);
    }
  }
  if (a.positional.empty() || a.Bool("help")) return Usage();
  const std::string cmd = a.positional[0];
  const auto& p = a.positional;

  client::ClientOptions options;
  options.address = a.Flag("addr", "127.0.0.1:7070");
  if (a.flags.count("deadline")) {
    auto d = ParseDurationFlag("deadline", a.Flag("deadline"));
    if (!d.ok()) return Fail(d.status());
    options.default_deadline = *d;
  }
  // The CLI talks gRPC unless asked: a UCX connection costs more to set up
  // than one command saves.
  options.data_plane = a.Flag("data-plane", "grpc");
  if (a.flags.contains("ucx-min-bytes")) {
    auto min = ParseByteSize("ucx-min-bytes", a.Flag("ucx-min-bytes"));
    if (!min.ok()) return Fail(min.status());
    options.ucx_min_bytes = *min;
  }
  if (a.flags.contains("local-daemon-uid")) {
    // Which ids name a user is ClientOptions' rule (Connect checks it).
    uint32_t uid = 0;
    if (!absl::SimpleAtoi(a.Flag("local-daemon-uid"), &uid)) {
      return UsageError(absl::StrCat("local-daemon-uid: \"",
                                     a.Flag("local-daemon-uid"),
                                     "\" is not a number from 0 to 2^32-1"));
    }
    options.local_daemon_uid = uid;
  }

  if (cmd == "cluster") {
#ifdef STRATACTL_WITH_CLUSTER
    return ctl::RunClusterCommand(a, options);
#else
    return UsageError("cluster: this stratactl was built without etcd support");
#endif
  }
  if (cmd == "make-block") {
    if (p.size() != 2) return UsageError("make-block FILE");
    auto dtype = ParseDType(a.Flag("dtype", "bf16"));
    if (!dtype.ok()) return Fail(dtype.status());
    std::vector<std::string> dims = absl::StrSplit(a.Flag("shape", "4,256,8,128"), ',');
    if (dims.size() != 4) return UsageError("shape: want LAYERS,TOKENS,HEADS,DIM");
    uint32_t v[4];
    for (int i = 0; i < 4; ++i) {
      auto d = ParseU32("shape", dims[i]);
      if (!d.ok()) return Fail(d.status());
      v[i] = *d;
    }
    kvstore::BlockShape shape{*dtype, v[0], v[1], v[2], v[3]};
    if (auto s = shape.Validate(); !s.ok()) return Fail(s);
    auto seed = ParseU32("seed", a.Flag("seed", "1"));
    if (!seed.ok()) return Fail(seed.status());
    auto block = RandomBlock(shape, *seed);
    if (auto s = WriteFile(p[1], block); !s.ok()) return Fail(s);
    std::printf("wrote %zu bytes to %s\n", block.size(), p[1].c_str());
    return 0;
  }

  auto connected = Client::Connect(options);
  if (!connected.ok()) return Fail(connected.status());
  Client& c = **connected;

  auto key_arg = [&](size_t i) -> absl::StatusOr<BlockKey> {
    if (p.size() <= i) return absl::InvalidArgumentError("key: missing");
    return BlockKey::FromHex(p[i]);
  };

  if (cmd == "status") {
    absl::Status health = c.Health();
    auto stats = c.Stats();
    if (!stats.ok()) return Fail(stats.status());
    std::printf("stratad %s at %s: %s, up %s%s\n", stats->version.c_str(),
                options.address.c_str(), health.ok() ? "SERVING" : "NOT SERVING",
                absl::FormatDuration(absl::Milliseconds(stats->uptime_ms)).c_str(),
                stats->draining ? ", DRAINING" : "");
    PrintTiers(*stats, false);
    return 0;
  }
  if (cmd == "capacity") {
    auto stats = c.Stats();
    if (!stats.ok()) return Fail(stats.status());
    PrintTiers(*stats, false);
    return 0;
  }
  if (cmd == "stats") {
    auto stats = c.Stats();
    if (!stats.ok()) return Fail(stats.status());
    if (a.Bool("json")) {
      PrintStatsJson(*stats);
      return 0;
    }
    std::printf("puts=%llu duplicate_puts=%llu rejected_puts=%llu gets=%llu "
                "hits=%llu misses=%llu removes=%llu pinned=%llu leased=%llu\n",
                (unsigned long long)stats->puts,
                (unsigned long long)stats->duplicate_puts,
                (unsigned long long)stats->rejected_puts,
                (unsigned long long)stats->gets,
                (unsigned long long)stats->get_hits,
                (unsigned long long)stats->get_misses,
                (unsigned long long)stats->removes,
                (unsigned long long)stats->pinned_blocks,
                (unsigned long long)stats->leased_blocks);
    PrintTiers(*stats, true);
    return 0;
  }
  if (cmd == "evict") {
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
    auto r = c.Evict(f);
    if (!r.ok()) return Fail(r.status());
    std::printf("%s %llu blocks (%llu bytes); %llu pinned blocks skipped\n",
                f.dry_run ? "would evict" : "evicted",
                (unsigned long long)r->blocks, (unsigned long long)r->bytes,
                (unsigned long long)r->skipped_pinned);
    return 0;
  }
  if (cmd == "pin" || cmd == "unpin" || cmd == "remove") {
    auto key = key_arg(1);
    if (!key.ok()) return Fail(key.status());
    absl::Status s;
    if (cmd == "pin") {
      if (p.size() != 3) return UsageError("pin KEY TTL");
      auto ttl = ParseDurationFlag("ttl", p[2]);
      if (!ttl.ok()) return Fail(ttl.status());
      s = c.Pin(*key, *ttl);
    } else if (cmd == "unpin") {
      s = c.Unpin(*key);
    } else {
      s = c.Remove(*key);
    }
    if (!s.ok()) return Fail(s);
    std::printf("%s %s: ok\n", cmd.c_str(), key->ToHex().c_str());
    return 0;
  }
  if (cmd == "put") {
    if (p.size() != 3) return UsageError("put KEY FILE");
    auto key = key_arg(1);
    if (!key.ok()) return Fail(key.status());
    auto bytes = ReadFile(p[2]);
    if (!bytes.ok()) return Fail(bytes.status());
    client::PutOptions put;
    put.durable = a.Bool("durable");
    put.tenant = a.Flag("tenant");
    put.model = a.Flag("model");
    auto r = c.Put(*key, *bytes, put);
    if (!r.ok()) return Fail(r.status());
    std::printf("put %s: %s (%zu bytes)\n", key->ToHex().c_str(),
                r->already_present ? "already present" : "stored", bytes->size());
    return 0;
  }
  if (cmd == "get") {
    if (p.size() != 3) return UsageError("get KEY FILE");
    auto key = key_arg(1);
    if (!key.ok()) return Fail(key.status());
    auto r = c.Get(*key);
    if (!r.ok()) return Fail(r.status());
    if (auto s = WriteFile(p[2], r->block); !s.ok()) return Fail(s);
    std::printf("get %s: %zu bytes from %s, checksum verified\n",
                key->ToHex().c_str(), r->block.size(), r->served_from.c_str());
    return 0;
  }
  if (cmd == "lookup" || cmd == "fill-prompt") {
    auto ns = NamespaceFromFlags(a);
    if (!ns.ok()) return Fail(ns.status());
    auto tokens = ReadTokens(a);
    if (!tokens.ok()) return Fail(tokens.status());
    if (cmd == "lookup") {
      auto r = c.PrefixLookup(*ns, *tokens);
      if (!r.ok()) return Fail(r.status());
      std::printf("prompt of %zu tokens: %u of %zu full chunks cached = %u "
                  "tokens reusable\n", tokens->size(), r->hit_chunks,
                  r->keys.size(), r->hit_tokens);
      return 0;
    }
    auto chunks = kvstore::ChunkKeys(*ns, *tokens);
    if (!chunks.ok()) return Fail(chunks.status());
    auto seed = ParseU32("seed", a.Flag("seed", "1"));
    if (!seed.ok()) return Fail(seed.status());
    size_t stored = 0, present = 0;
    for (const auto& chunk : *chunks) {
      kvstore::BlockShape shape{ns->dtype, ns->num_layers, chunk.num_tokens,
                                ns->num_kv_heads, ns->head_dim};
      client::PutOptions put;
      put.model = ns->model_id;
      auto r = c.Put(chunk.key, RandomBlock(shape, *seed + chunk.begin_token), put);
      if (!r.ok()) return Fail(r.status());
      (r->already_present ? present : stored) += 1;
    }
    std::printf("prompt of %zu tokens: %zu chunks stored, %zu already present\n",
                tokens->size(), stored, present);
    return 0;
  }
  if (cmd == "drain") {
    // drain [HOST:PORT] [--wait=false] [--timeout=1h]: a cluster node moves
    // its blocks to their new owners, leaves and exits; this waits for it
    // (cluster/rebalance/drain_cli.h).
    DrainCliOptions drain;
    drain.address = p.size() > 1 ? p[1] : options.address;
    drain.wait = a.Flag("wait", "true") != "false";
    if (a.flags.count("timeout")) {
      auto t = ParseDurationFlag("timeout", a.Flag("timeout"));
      if (!t.ok()) return Fail(t.status());
      drain.timeout = *t;
    }
    return RunDrainCommand(drain);
  }
  if (cmd == "config") {
    auto text = c.GetConfig();
    if (!text.ok()) return Fail(text.status());
    std::fputs(text->c_str(), stdout);
    return 0;
  }
  if (cmd == "bench") return Bench(options, a);
  return Usage();
}

}  // namespace
}  // namespace strata::cluster

int main(int argc, char** argv) { return strata::cluster::Main(argc, argv); }
