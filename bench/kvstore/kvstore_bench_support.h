// Shared support for the kvstore benchmark (bench/kvstore/): block pools,
// pre-faulted buffers, the one-store-at-a-time fixture slot, latency
// percentiles. The method is described in kvstore_bench_main.cc.
#ifndef STRATA_BENCH_KVSTORE_KVSTORE_BENCH_SUPPORT_H_
#define STRATA_BENCH_KVSTORE_KVSTORE_BENCH_SUPPORT_H_

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/types/span.h"
#include "kvstore/block_format.h"
#include "kvstore/block_key.h"
#include "kvstore/dram_arena.h"
#include "kvstore/tiered_store.h"

namespace strata::bench {

namespace kv = strata::kvstore;
using SteadyClock = std::chrono::steady_clock;

constexpr int64_t kKiB = int64_t{1} << 10;
constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kGiB = int64_t{1} << 30;

constexpr uint64_t kWorkingSetBytes = 512 * kMiB;  // DRAM-resident sets.
constexpr uint64_t kSsdWorkingSetBytes = 1 * kGiB;
constexpr size_t kMinBlocks = 8;
constexpr size_t kChunkBytes = 64 * kKiB;  // CopyVerifiedBlock's chunk.

// Aborts the process with a message: setup failures are bugs, not results.
#define BENCH_CHECK(cond, ...)                                     \
  do {                                                             \
    if (!(cond)) {                                                 \
      std::fprintf(stderr, "kvstore_benchmark: %s:%d: check %s failed: ", \
                   __FILE__, __LINE__, #cond);                     \
      std::fprintf(stderr, __VA_ARGS__);                           \
      std::fprintf(stderr, "\n");                                  \
      std::abort();                                                \
    }                                                              \
  } while (false)

inline uint64_t Mix(uint64_t x) {  // SplitMix64 finaliser.
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A key that is a pure function of (space, i).
inline kv::BlockKey KeyFor(uint64_t space, uint64_t i) {
  return kv::BlockKey{Mix(space * 0x100000001B3ull + i), Mix(~i) ^ space};
}

// One TP rank of Llama-3-8B: bf16, 32 layers, 8 KV heads, head_dim 128, so a
// token is 2 * 32 * 8 * 128 * 2 = 128 KiB of K+V and 256 tokens are 32 MiB.
inline kv::BlockShape ShapeForPayload(uint64_t payload_bytes) {
  constexpr uint64_t kBytesPerToken = 2 * 32 * 8 * 128 * 2;
  BENCH_CHECK(payload_bytes % kBytesPerToken == 0 && payload_bytes > 0,
              "payload %llu is not a whole number of tokens",
              static_cast<unsigned long long>(payload_bytes));
  kv::BlockShape shape;
  shape.dtype = kv::DType::kBFloat16;
  shape.num_layers = 32;
  shape.num_tokens = static_cast<uint32_t>(payload_bytes / kBytesPerToken);
  shape.num_kv_heads = 8;
  shape.head_dim = 128;
  return shape;
}

inline std::string ShapeLabel(const kv::BlockShape& s) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%uL x %uT x %uH x %uD %s", s.num_layers,
                s.num_tokens, s.num_kv_heads, s.head_dim,
                kv::DTypeName(s.dtype));
  return buf;
}

inline void FillRandom(absl::Span<uint8_t> out, uint64_t seed) {
  uint64_t s = Mix(seed);
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    s += 0x9E3779B97F4A7C15ull;
    uint64_t v = Mix(s);
    std::memcpy(out.data() + i, &v, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<uint8_t>(Mix(s + i));
}

// Anonymous, pre-faulted memory: 4 KiB pages, like the DRAM tier's arena
// (transparent huge pages are madvise-only on this machine and neither side
// asks for them), so memcpy and the store see the same TLB behaviour.
class Buffer {
 public:
  explicit Buffer(size_t size) : size_(size) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    BENCH_CHECK(p != MAP_FAILED, "mmap of %zu bytes: %s", size,
                std::strerror(errno));
    data_ = static_cast<uint8_t*>(p);
    std::memset(data_, 0x5A, size_);  // Touch: no first-use faults later.
  }
  ~Buffer() { munmap(data_, size_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  absl::Span<uint8_t> span() const { return {data_, size_}; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Distinct encoded blocks of one size, back to back (4 KiB aligned), filling
// at least kWorkingSetBytes: the sources every bandwidth benchmark cycles.
class BlockPool {
 public:
  explicit BlockPool(uint64_t payload_bytes)
      : payload_bytes_(payload_bytes),
        shape_(ShapeForPayload(payload_bytes)),
        block_bytes_(kv::EncodedBlockSize(payload_bytes)),
        stride_((block_bytes_ + 4095) / 4096 * 4096),
        count_(std::max<size_t>(kMinBlocks, kWorkingSetBytes / stride_)),
        mem_(count_ * stride_) {
    std::vector<uint8_t> payload(payload_bytes);
    for (size_t i = 0; i < count_; ++i) {
      FillRandom(absl::MakeSpan(payload), payload_bytes * 1000003 + i);
      absl::Status s = kv::EncodeBlockInto(
          shape_, kv::CodecId::kRaw, {}, payload,
          absl::MakeSpan(mem_.data() + i * stride_, block_bytes_));
      BENCH_CHECK(s.ok(), "EncodeBlockInto: %s", s.ToString().c_str());
    }
  }

  uint64_t payload_bytes() const { return payload_bytes_; }
  const kv::BlockShape& shape() const { return shape_; }
  size_t block_bytes() const { return block_bytes_; }
  size_t count() const { return count_; }
  uint64_t working_set_bytes() const { return count_ * block_bytes_; }
  absl::Span<const uint8_t> block(size_t i) const {
    return {mem_.data() + (i % count_) * stride_, block_bytes_};
  }

 private:
  const uint64_t payload_bytes_;
  const kv::BlockShape shape_;
  const size_t block_bytes_;
  const size_t stride_;
  const size_t count_;
  Buffer mem_;
};

// The one source pool alive, rebuilt when a benchmark asks for another size.
inline const BlockPool& Pool(uint64_t payload_bytes) {
  static std::unique_ptr<BlockPool> pool;
  if (pool == nullptr || pool->payload_bytes() != payload_bytes) {
    pool.reset();  // Free before allocating the next one.
    pool = std::make_unique<BlockPool>(payload_bytes);
  }
  return *pool;
}

// Waits (up to 20 s) until the process has been nearly idle for 200 ms, so
// RocksDB flushes and compactions started by a fixture's writes do not run
// on the benchmark's two cores during the timed loop.
inline void WaitForQuiescence() {
  auto cpu = [] {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 + u.ru_utime.tv_usec +
           u.ru_stime.tv_usec;
  };
  const auto deadline = SteadyClock::now() + std::chrono::seconds(20);
  while (SteadyClock::now() < deadline) {
    const double before = cpu();
    usleep(200 * 1000);
    if (cpu() - before < 10 * 1000) return;  // < 5% of one core.
  }
}

// ------------------------------------------------------------ fixtures

struct Fixture {
  virtual ~Fixture() = default;
};

// The one store fixture alive (stores hold up to ~600 MiB of arena or a
// 1 GiB database): built on first use, reused while benchmarks ask for the
// same key, destroyed before the next one is built.
inline std::unique_ptr<Fixture>& FixtureSlot() {
  static auto* slot = new std::unique_ptr<Fixture>;
  return *slot;
}
inline std::string& FixtureKey() {
  static auto* key = new std::string;
  return *key;
}

template <typename F>
inline F& AcquireFixture(const std::string& key,
                  const std::function<std::unique_ptr<F>()>& make) {
  if (FixtureSlot() == nullptr || FixtureKey() != key) {
    FixtureSlot().reset();
    FixtureKey() = key;
    FixtureSlot() = make();
  }
  return static_cast<F&>(*FixtureSlot());
}

inline std::string& TmpRoot() {
  static auto* root = [] {
    const char* env = std::getenv("STRATA_BENCH_TMPDIR");
    std::string base = env != nullptr && env[0] != '\0' ? env : STRATA_BENCH_TMPDIR;
    return new std::string(base + "/kvstore-" + std::to_string(getpid()));
  }();
  return *root;
}

// DRAM capacity that holds `blocks` blocks of `block_bytes` below the default
// high watermark (0.95), so nothing is evicted.
inline uint64_t DramCapacityFor(size_t blocks, size_t block_bytes) {
  const uint64_t footprint = kv::DramArena::Footprint(block_bytes);
  return static_cast<uint64_t>(static_cast<double>(blocks * footprint) / 0.9) +
         kv::DramArena::kAlignment;
}

inline std::unique_ptr<kv::TieredStore> OpenStore(const kv::TieredStoreOptions& o) {
  auto store = kv::TieredStore::Open(o);
  BENCH_CHECK(store.ok(), "TieredStore::Open: %s",
              store.status().ToString().c_str());
  return *std::move(store);
}

inline void MustPut(kv::TieredStore& store, const kv::BlockKey& key,
             absl::Span<const uint8_t> block) {
  auto r = store.Put(key, block);
  BENCH_CHECK(r.ok() && *r == kv::PutOutcome::kStored, "Put: %s",
              r.ok() ? "already present" : r.status().ToString().c_str());
}

// ------------------------------------------------------------ latency

class Latencies {
 public:
  explicit Latencies(const benchmark::State& state) {
    ns_.reserve(static_cast<size_t>(
        std::min<benchmark::IterationCount>(state.max_iterations, 1 << 24)));
  }
  void Add(SteadyClock::time_point begin, SteadyClock::time_point end) {
    ns_.push_back(
        std::chrono::duration<double, std::nano>(end - begin).count());
  }
  double last_seconds() const { return ns_.back() * 1e-9; }
  // p50 / p99 of the recorded iterations, in microseconds.
  void Report(benchmark::State& state) {
    if (ns_.empty()) return;
    std::sort(ns_.begin(), ns_.end());
    auto at = [&](double q) {
      size_t i = static_cast<size_t>(std::ceil(q * ns_.size()));
      return ns_[std::min(ns_.size() - 1, i == 0 ? 0 : i - 1)] * 1e-3;
    };
    state.counters["p50_us"] = at(0.50);
    state.counters["p99_us"] = at(0.99);
  }

 private:
  std::vector<double> ns_;
};

// "<shape>, ws <MiB>": the bytes the benchmark cycles through.
inline void SetLabel(benchmark::State& state, const BlockPool& pool,
              uint64_t working_set_bytes, const std::string& extra = "") {
  char buf[64];
  std::snprintf(buf, sizeof(buf), ", ws %.0f MiB",
                static_cast<double>(working_set_bytes) / kMiB);
  state.SetLabel(ShapeLabel(pool.shape()) + buf + extra);
}

// Block sizes every bandwidth benchmark runs: 256 KiB, 2 MiB, 32 MiB payloads.
inline void Sizes(benchmark::internal::Benchmark* b) {
  b->ArgName("bytes")->Arg(256 * kKiB)->Arg(2 * kMiB)->Arg(32 * kMiB);
  b->Unit(benchmark::kMicrosecond);
}

}  // namespace strata::bench

#endif  // STRATA_BENCH_KVSTORE_KVSTORE_BENCH_SUPPORT_H_
