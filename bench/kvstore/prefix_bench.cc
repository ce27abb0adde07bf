// kvstore benchmark: LongestPrefix over a 128-key chain, hot and cold caches.

#include "bench/kvstore/kvstore_bench_support.h"

namespace strata::bench {
namespace {

// LongestPrefix over a 128-key chain (ChunkKeys of 128 x 256 tokens) in a
// store holding `blocks` blocks in all. range(1) is the number of leading
// keys that hit: 128 (all), or 64 (the chain diverges at chunk 64).
struct PrefixFixture : Fixture {
  std::unique_ptr<kv::TieredStore> store;
  std::vector<kv::BlockKey> all_hit;
  std::vector<kv::BlockKey> miss_at_64;
};

std::vector<kv::BlockKey> Keys(const std::vector<kv::ChunkKey>& chunks) {
  std::vector<kv::BlockKey> keys;
  for (const auto& c : chunks) keys.push_back(c.key);
  return keys;
}

PrefixFixture& Prefix(size_t blocks) {
  return AcquireFixture<PrefixFixture>(
      "prefix/" + std::to_string(blocks), [&] {
        auto f = std::make_unique<PrefixFixture>();
        // Tiny blocks: the index, not the bytes, is what is measured. 10k
        // blocks use 1 layer x 16 tokens x 1 head x 64 dim fp16 (4 KiB);
        // larger indexes a 1-token, 16-dim fp16 block (64 B) to bound memory.
        kv::BlockShape shape;
        shape.dtype = kv::DType::kFloat16;
        shape.num_layers = 1;
        shape.num_tokens = blocks <= 100000 ? 16 : 1;
        shape.num_kv_heads = 1;
        shape.head_dim = blocks <= 100000 ? 64 : 16;
        std::vector<uint8_t> payload(shape.RawBytes());
        FillRandom(absl::MakeSpan(payload), 13);
        auto block = kv::EncodeBlock(shape, kv::CodecId::kRaw, {}, payload);
        BENCH_CHECK(block.ok(), "EncodeBlock: %s",
                    block.status().ToString().c_str());

        kv::TieredStoreOptions o;
        o.dram_capacity_bytes = DramCapacityFor(blocks, block->size());
        f->store = OpenStore(o);

        kv::KeyNamespace ns;
        ns.model_id = "meta-llama/Meta-Llama-3-8B";
        ns.dtype = kv::DType::kBFloat16;
        ns.num_layers = 32;
        ns.num_kv_heads = 8;
        ns.head_dim = 128;
        ns.chunk_tokens = 256;
        std::vector<uint32_t> tokens(128 * 256);
        for (size_t t = 0; t < tokens.size(); ++t) {
          tokens[t] = static_cast<uint32_t>(Mix(t) % 128256);
        }
        auto hit = kv::ChunkKeys(ns, tokens);
        BENCH_CHECK(hit.ok() && hit->size() == 128, "ChunkKeys: %s",
                    hit.status().ToString().c_str());
        tokens[64 * 256] ^= 1;  // Diverge at chunk 64.
        auto miss = kv::ChunkKeys(ns, tokens);
        BENCH_CHECK(miss.ok() && miss->size() == 128, "ChunkKeys: %s",
                    miss.status().ToString().c_str());
        f->all_hit = Keys(*hit);
        f->miss_at_64 = Keys(*miss);

        // The chain, interleaved with unrelated blocks up to `blocks`.
        for (size_t i = 0, c = 0; i < blocks; ++i) {
          if (c < 128 && i % (blocks / 128) == 0) {
            MustPut(*f->store, f->all_hit[c++], *block);
          } else {
            MustPut(*f->store, KeyFor(4, i), *block);
          }
        }
        BENCH_CHECK(f->store->LongestPrefix(f->all_hit) == 128 &&
                        f->store->LongestPrefix(f->miss_at_64) == 64 &&
                        f->store->Stats().tiers[0].evictions == 0,
                    "prefix fixture: %zu / %zu",
                    f->store->LongestPrefix(f->all_hit),
                    f->store->LongestPrefix(f->miss_at_64));
        return f;
      });
}

void BM_LongestPrefix128(benchmark::State& state) {
  const size_t blocks = static_cast<size_t>(state.range(0));
  const size_t want = static_cast<size_t>(state.range(1));
  PrefixFixture& f = Prefix(blocks);
  const std::vector<kv::BlockKey>& keys =
      want == 128 ? f.all_hit : f.miss_at_64;
  Latencies lat(state);
  for (auto _ : state) {
    auto t0 = SteadyClock::now();
    size_t n = f.store->LongestPrefix(keys);
    lat.Add(t0, SteadyClock::now());
    benchmark::DoNotOptimize(n);
    if (n != want) {
      state.SkipWithError("wrong prefix length");
      break;
    }
  }
  // Keys looked up per call: the hits plus the first miss.
  state.SetItemsProcessed(state.iterations() *
                          static_cast<int64_t>(std::min<size_t>(want + 1, 128)));
  lat.Report(state);
}

// As BM_LongestPrefix128 with all 128 keys hitting, but every call starts with
// the caches flushed (96 MiB read, three times L3; untimed, manual time),
// as for the first lookup of a request: the index probes miss to DRAM.
void BM_LongestPrefix128Cold(benchmark::State& state) {
  const size_t blocks = static_cast<size_t>(state.range(0));
  PrefixFixture& f = Prefix(blocks);
  Buffer thrash(96 * kMiB);
  Latencies lat(state);
  for (auto _ : state) {
    uint64_t sum = 0;
    for (size_t j = 0; j < thrash.size(); j += 64) sum += thrash.data()[j];
    benchmark::DoNotOptimize(sum);
    auto t0 = SteadyClock::now();
    size_t n = f.store->LongestPrefix(f.all_hit);
    lat.Add(t0, SteadyClock::now());
    state.SetIterationTime(lat.last_seconds());
    if (n != 128) {
      state.SkipWithError("wrong prefix length");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * 128);
  lat.Report(state);
}

BENCHMARK(BM_LongestPrefix128)
    ->ArgNames({"blocks", "hits"})
    ->Args({10000, 128})
    ->Args({10000, 64})
    ->Args({1000000, 128})
    ->Args({1000000, 64})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LongestPrefix128Cold)
    ->ArgName("blocks")
    ->Arg(10000)
    ->Arg(1000000)
    ->Iterations(300)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);


}  // namespace
}  // namespace strata::bench
