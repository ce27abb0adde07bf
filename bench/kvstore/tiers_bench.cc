// kvstore benchmark: DRAM and SSD tier put / get throughput and latency.
#include <fcntl.h>

#include <filesystem>

#include "bench/kvstore/kvstore_bench_support.h"

namespace strata::bench {
namespace {

// ------------------------------------------------------------ fixtures

// A store whose DRAM tier holds the whole pool: the DRAM read fixture.
struct DramReadFixture : Fixture {
  std::unique_ptr<kv::TieredStore> store;
  size_t count = 0;
};

DramReadFixture& DramRead(const BlockPool& pool) {
  return AcquireFixture<DramReadFixture>(
      "dram-read/" + std::to_string(pool.payload_bytes()), [&] {
        auto f = std::make_unique<DramReadFixture>();
        kv::TieredStoreOptions o;
        o.dram_capacity_bytes =
            DramCapacityFor(pool.count(), pool.block_bytes());
        f->store = OpenStore(o);
        f->count = pool.count();
        for (size_t i = 0; i < f->count; ++i) {
          MustPut(*f->store, KeyFor(1, i), pool.block(i));
        }
        auto st = f->store->Stats();
        BENCH_CHECK(st.tiers[0].blocks == f->count && st.tiers[0].evictions == 0,
                    "dram read fixture: %llu blocks, %llu evictions",
                    static_cast<unsigned long long>(st.tiers[0].blocks),
                    static_cast<unsigned long long>(st.tiers[0].evictions));
        return f;
      });
}

// A DRAM-only store sized like the read fixture, filled past its eviction
// watermark so every further Put evicts in steady state.
struct PutFixture : Fixture {
  std::unique_ptr<kv::TieredStore> store;
  std::string dir;  // SSD directory, if any; removed with the fixture.
  uint64_t next_key = 0;
  size_t next_src = 0;
  ~PutFixture() override {
    store.reset();
    if (!dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }
};

void FillUntilEviction(PutFixture& f, const BlockPool& pool, size_t tier) {
  for (;;) {
    MustPut(*f.store, KeyFor(2, f.next_key++), pool.block(f.next_src++));
    if (f.store->Stats().tiers[tier].evictions > 0) break;
  }
}

PutFixture& DramPutStore(const BlockPool& pool) {
  return AcquireFixture<PutFixture>(
      "dram-put/" + std::to_string(pool.payload_bytes()), [&] {
        auto f = std::make_unique<PutFixture>();
        kv::TieredStoreOptions o;
        o.dram_capacity_bytes =
            DramCapacityFor(pool.count(), pool.block_bytes());
        f->store = OpenStore(o);
        FillUntilEviction(*f, pool, 0);
        return f;
      });
}

kv::TieredStoreOptions SsdOptions(const std::string& dir, uint64_t capacity) {
  kv::TieredStoreOptions o;
  o.dram_capacity_bytes = 4 * kKiB;  // Below every block: Put goes to SSD.
  o.ssd_path = dir;
  o.ssd_capacity_bytes = capacity;
  o.promote_on_read = false;
  return o;
}

PutFixture& SsdPutStore(const BlockPool& pool) {
  return AcquireFixture<PutFixture>(
      "ssd-put/" + std::to_string(pool.payload_bytes()), [&] {
        auto f = std::make_unique<PutFixture>();
        f->dir = TmpRoot() + "/ssd-put-" + std::to_string(pool.payload_bytes());
        std::filesystem::remove_all(f->dir);
        f->store = OpenStore(SsdOptions(f->dir, kSsdWorkingSetBytes));
        FillUntilEviction(*f, pool, 1);
        WaitForQuiescence();
        return f;
      });
}

// An SSD-resident working set of kSsdWorkingSetBytes (at least 8 blocks),
// written, then reopened so RocksDB flushes memtables into blob files.
struct SsdReadFixture : Fixture {
  std::unique_ptr<kv::TieredStore> store;
  std::string dir;
  size_t count = 0;
  ~SsdReadFixture() override {
    store.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

SsdReadFixture& SsdRead(const BlockPool& pool) {
  return AcquireFixture<SsdReadFixture>(
      "ssd-read/" + std::to_string(pool.payload_bytes()), [&] {
        auto f = std::make_unique<SsdReadFixture>();
        f->dir = TmpRoot() + "/ssd-read-" + std::to_string(pool.payload_bytes());
        std::filesystem::remove_all(f->dir);
        f->count = std::max<size_t>(kMinBlocks,
                                    kSsdWorkingSetBytes / pool.block_bytes());
        const auto options = SsdOptions(f->dir, 2 * kSsdWorkingSetBytes);
        f->store = OpenStore(options);
        for (size_t i = 0; i < f->count; ++i) {
          MustPut(*f->store, KeyFor(3, i), pool.block(i));
        }
        f->store.reset();
        f->store = OpenStore(options);
        WaitForQuiescence();
        auto st = f->store->Stats();
        BENCH_CHECK(st.tiers.size() == 2 && st.tiers[1].blocks == f->count &&
                        st.tiers[0].blocks == 0,
                    "ssd read fixture: dram %llu, ssd %llu blocks",
                    static_cast<unsigned long long>(st.tiers[0].blocks),
                    static_cast<unsigned long long>(st.tiers[1].blocks));
        return f;
      });
}

// Drops the page cache of every file under `dir` (written back first).
void DropPageCache(const std::string& dir) {
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    int fd = open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

// ------------------------------------------------------------ DRAM tier

// GetInto: copy + checksum verify (fused) into a pre-touched destination,
// cycling keys over a 512 MiB DRAM-resident working set. The "DRAM get".
void BM_DramGetInto(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  DramReadFixture& f = DramRead(pool);
  const size_t n = pool.block_bytes();
  Buffer dst(n);
  Latencies lat(state);
  size_t i = 0;
  for (auto _ : state) {
    auto t0 = SteadyClock::now();
    auto got = f.store->GetInto(KeyFor(1, i++ % f.count), dst.span());
    lat.Add(t0, SteadyClock::now());
    if (!got.ok() || *got != n) {
      state.SkipWithError(got.ok() ? "short read"
                                   : got.status().ToString().c_str());
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  SetLabel(state, pool, pool.working_set_bytes());
}

// Get: a zero-copy lease; the checksum is verified in place (one read pass).
// The lease is released inside the timed region.
void BM_DramGetLease(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  DramReadFixture& f = DramRead(pool);
  const size_t n = pool.block_bytes();
  Latencies lat(state);
  size_t i = 0;
  for (auto _ : state) {
    auto t0 = SteadyClock::now();
    bool ok;
    {
      auto lease = f.store->Get(KeyFor(1, i++ % f.count));
      ok = lease.ok() && lease->bytes().size() == n;
      if (ok) benchmark::DoNotOptimize(lease->payload().data());
    }
    lat.Add(t0, SteadyClock::now());
    if (!ok) {
      state.SkipWithError("Get failed");
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  SetLabel(state, pool, pool.working_set_bytes());
}

// Put of fresh keys into a full DRAM-only store (steady-state LRU eviction,
// which drops: there is no lower tier). Cost: validate (XXH3 of the source)
// + copy into the arena + amortised eviction.
void PutLoop(benchmark::State& state, const BlockPool& pool, PutFixture& f,
             size_t tier) {
  const size_t n = pool.block_bytes();
  const uint64_t evictions_before = f.store->Stats().tiers[tier].evictions;
  Latencies lat(state);
  for (auto _ : state) {
    const kv::BlockKey key = KeyFor(2, f.next_key++);
    auto src = pool.block(f.next_src++);
    auto t0 = SteadyClock::now();
    auto r = f.store->Put(key, src);
    lat.Add(t0, SteadyClock::now());
    if (!r.ok() || *r != kv::PutOutcome::kStored) {
      state.SkipWithError(r.ok() ? "already present"
                                 : r.status().ToString().c_str());
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  const uint64_t evicted =
      f.store->Stats().tiers[tier].evictions - evictions_before;
  state.counters["evict_per_put"] =
      state.iterations() > 0
          ? static_cast<double>(evicted) / static_cast<double>(state.iterations())
          : 0.0;
  SetLabel(state, pool, f.store->Stats().tiers[tier].capacity_bytes,
           ", ws = tier capacity");
}

void BM_DramPut(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  PutLoop(state, pool, DramPutStore(pool), 0);
}

// ------------------------------------------------------------ SSD tier

// Put into the SSD tier (RocksDB, blob files, no fsync: ssd_sync_writes off,
// the default), 1 GiB capacity pre-filled to its watermark, so eviction drops
// the oldest blocks in steady state.
void BM_SsdPut(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  PutLoop(state, pool, SsdPutStore(pool), 1);
}

// GetInto from the SSD tier with promote_on_read = false, cycling a 1 GiB
// working set. Blob files are in the page cache: this is a page-cache read
// through RocksDB plus the fused copy + verify.
void BM_SsdGetInto(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  SsdReadFixture& f = SsdRead(pool);
  const size_t n = pool.block_bytes();
  const uint64_t hits_before = f.store->Stats().tiers[1].hits;
  Buffer dst(n);
  Latencies lat(state);
  size_t i = 0;
  for (auto _ : state) {
    auto t0 = SteadyClock::now();
    auto got = f.store->GetInto(KeyFor(3, i++ % f.count), dst.span());
    lat.Add(t0, SteadyClock::now());
    if (!got.ok() || *got != n) {
      state.SkipWithError(got.ok() ? "short read"
                                   : got.status().ToString().c_str());
      break;
    }
  }
  const auto st = f.store->Stats();
  if (st.tiers[1].hits - hits_before != static_cast<uint64_t>(state.iterations()) ||
      st.tiers[0].hits != 0) {
    state.SkipWithError("reads were not served by the SSD tier");
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  SetLabel(state, pool, f.count * n);
}

// As BM_SsdGetInto, but every read starts with the database's files dropped
// from the page cache (untimed; manual time covers only GetInto), so the
// blob bytes come from the device.
void BM_SsdGetIntoCold(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  SsdReadFixture& f = SsdRead(pool);
  const size_t n = pool.block_bytes();
  Buffer dst(n);
  Latencies lat(state);
  size_t i = 0;
  for (auto _ : state) {
    DropPageCache(f.dir);
    auto t0 = SteadyClock::now();
    auto got = f.store->GetInto(KeyFor(3, (i++ * 7919) % f.count), dst.span());
    lat.Add(t0, SteadyClock::now());
    state.SetIterationTime(lat.last_seconds());
    if (!got.ok() || *got != n) {
      state.SkipWithError(got.ok() ? "short read"
                                   : got.status().ToString().c_str());
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  SetLabel(state, pool, f.count * n, ", page cache dropped");
}

BENCHMARK(BM_DramGetInto)->Apply(Sizes);
BENCHMARK(BM_DramGetLease)->Apply(Sizes);
BENCHMARK(BM_DramPut)->Apply(Sizes);
// Steady-state SSD puts are slow and bursty (flush stalls): 1.5 s minimum.
// SSD benchmarks wait on I/O and RocksDB's background threads, so their
// rates use wall-clock time (UseRealTime), not the main thread's CPU time.
BENCHMARK(BM_SsdPut)->Apply(Sizes)->MinTime(1.5)->UseRealTime();
// Warm and cold SSD reads share a fixture (1 GiB written per size), so they
// are registered per size, side by side.
BENCHMARK(BM_SsdGetInto)->ArgName("bytes")->Arg(256 * kKiB)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SsdGetIntoCold)->ArgName("bytes")->Arg(256 * kKiB)->Iterations(200)
    ->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SsdGetInto)->ArgName("bytes")->Arg(2 * kMiB)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SsdGetIntoCold)->ArgName("bytes")->Arg(2 * kMiB)->Iterations(100)
    ->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SsdGetInto)->ArgName("bytes")->Arg(32 * kMiB)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SsdGetIntoCold)->ArgName("bytes")->Arg(32 * kMiB)->Iterations(20)
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace strata::bench
