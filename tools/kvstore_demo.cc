// strata-kvstore-demo: a single-node, in-process TieredStore with embedded
// defaults, driven through what an engine does: store a prompt's KV chunks,
// find the longest cached prefix of a second prompt, push the DRAM tier past
// its capacity (eviction + demotion to SSD), read a demoted chunk back
// (promotion), and print the per-tier statistics.
//
// Usage: strata-kvstore-demo [DATA_DIR]   (default ./strata-data)
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvstore/block_format.h"
#include "kvstore/block_key.h"
#include "kvstore/tiered_store.h"

namespace {

using namespace strata::kvstore;

// SmolLM2-135M's KV shape: 30 layers, 3 KV heads of 64, bf16; 256-token
// chunks are 5.6 MiB.
KeyNamespace SmolLm2Namespace() {
  KeyNamespace ns;
  ns.model_id = "HuggingFaceTB/SmolLM2-135M-Instruct";
  ns.dtype = DType::kBFloat16;
  ns.num_layers = 30;
  ns.num_kv_heads = 3;
  ns.head_dim = 64;
  ns.chunk_tokens = 256;
  return ns;
}

std::vector<uint8_t> FakeKv(const KeyNamespace& ns, uint32_t tokens,
                            uint64_t seed) {
  BlockShape shape{ns.dtype, ns.num_layers, tokens, ns.num_kv_heads,
                   ns.head_dim};
  std::vector<uint8_t> payload(shape.RawBytes());
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= payload.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(payload.data() + i, &v, 8);
  }
  return *EncodeBlock(shape, CodecId::kRaw, {}, payload);
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "demo failed: %s\n", s.ToString().c_str());
  return 1;
}

void PrintStats(const TieredStore& store) {
  const StoreStats s = store.Stats();
  std::printf("  %-5s %10s %10s %7s %6s %7s %9s %9s %10s %9s\n", "tier",
              "used_MiB", "cap_MiB", "blocks", "hits", "misses", "evictions",
              "demotions", "promotions", "cksum_err");
  for (const TierStats& t : s.tiers) {
    std::printf("  %-5s %10.1f %10.1f %7llu %6llu %7llu %9llu %9llu %10llu %9llu\n",
                TierName(t.kind), t.used_bytes / 1048576.0,
                t.capacity_bytes / 1048576.0, (unsigned long long)t.blocks,
                (unsigned long long)t.hits, (unsigned long long)t.misses,
                (unsigned long long)t.evictions,
                (unsigned long long)t.demotions,
                (unsigned long long)t.promotions,
                (unsigned long long)t.checksum_failures);
  }
  std::printf("  puts=%llu duplicate_puts=%llu gets=%llu hits=%llu misses=%llu\n",
              (unsigned long long)s.puts, (unsigned long long)s.duplicate_puts,
              (unsigned long long)s.gets, (unsigned long long)s.get_hits,
              (unsigned long long)s.get_misses);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "./strata-data";
  TieredStoreOptions options;
  options.dram_capacity_bytes = 64 << 20;  // Small, to show eviction.
  options.ssd_path = dir + "/ssd";
  options.ssd_capacity_bytes = uint64_t{1} << 30;
  options.dram_policy = EvictionPolicyKind::kS3Fifo;
  auto opened = TieredStore::Open(options);
  if (!opened.ok()) return Fail(opened.status());
  TieredStore& store = **opened;
  std::printf("Opened a single-node store: DRAM %llu MiB (S3-FIFO), SSD %s "
              "(RocksDB, %llu MiB); %llu blocks recovered from SSD.\n",
              (unsigned long long)(options.dram_capacity_bytes >> 20),
              options.ssd_path.c_str(),
              (unsigned long long)(options.ssd_capacity_bytes >> 20),
              (unsigned long long)store.Stats().tiers[1].blocks);

  const KeyNamespace ns = SmolLm2Namespace();
  // Prompt A: 2,000 tokens -> 7 full chunks + a 208-token tail.
  std::vector<uint32_t> prompt_a(2000);
  for (size_t i = 0; i < prompt_a.size(); ++i) prompt_a[i] = 1 + (i * 7919) % 49000;
  auto chunks = ChunkKeys(ns, prompt_a, PartialChunk::kDrop);
  if (!chunks.ok()) return Fail(chunks.status());
  std::printf("\n1. Store prompt A (%zu tokens): %zu full chunks of %u tokens "
              "(%.1f MiB each)\n", prompt_a.size(), chunks->size(),
              ns.chunk_tokens, FakeKv(ns, 1, 0).size() * 256 / 1048576.0);
  for (const ChunkKey& c : *chunks) {
    auto put = store.Put(c.key, FakeKv(ns, c.num_tokens, c.begin_token));
    if (!put.ok()) return Fail(put.status());
    std::printf("   put %s tokens [%u, %u) -> %s\n", c.key.ToHex().c_str(),
                c.begin_token, c.begin_token + c.num_tokens,
                *put == PutOutcome::kStored ? "stored" : "already present");
  }

  // Prompt B shares the first 1,300 tokens with A.
  std::vector<uint32_t> prompt_b = prompt_a;
  prompt_b[1300] = 3;
  auto chunks_b = ChunkKeys(ns, prompt_b);
  std::vector<BlockKey> keys_b;
  for (const ChunkKey& c : *chunks_b) keys_b.push_back(c.key);
  const size_t hit = store.LongestPrefix(keys_b);
  std::printf("\n2. Prompt B diverges at token 1300: longest cached prefix = "
              "%zu chunks = %zu tokens reusable, %zu to prefill\n",
              hit, hit * ns.chunk_tokens, prompt_b.size() - hit * ns.chunk_tokens);

  std::printf("\n3. Fill DRAM past its watermark with 20 more chunks (other "
              "prompts): eviction demotes blocks to SSD\n");
  for (uint32_t i = 0; i < 20; ++i) {
    std::vector<uint32_t> other(256, 60000 + i);
    auto key = ChunkKeys(ns, other);
    auto put = store.Put((*key)[0].key, FakeKv(ns, 256, 1000 + i));
    if (!put.ok()) return Fail(put.status());
  }
  PrintStats(store);

  std::printf("\n4. Read prompt A's first chunk again: served from ");
  auto lease = store.Get((*chunks)[0].key);
  if (!lease.ok()) return Fail(lease.status());
  std::printf("%s, checksum verified, %zu bytes; promoted back to DRAM\n",
              TierName(lease->served_from()), lease->bytes().size());
  *lease = BlockLease();
  PrintStats(store);
  std::printf("\nRun me again: the SSD tier survives the restart and prompt A "
              "is already present.\n");
  return 0;
}
