// kvstore benchmark: the ceilings the store is judged against: single-thread
// memcpy, XXH3-64, and the block parse / fused copy+verify primitives without
// the store.
#include <xxh_x86dispatch.h>
#include <xxhash.h>

#include "bench/kvstore/kvstore_bench_support.h"
#include "kvstore/checksum_helper.h"

namespace strata::bench {
namespace {

// Single-thread memcpy of a block into a pre-touched destination, cycling
// sources over the same working set as the store benchmarks: the ceiling.
void BM_Memcpy(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  const size_t n = pool.block_bytes();
  Buffer dst(n);
  Latencies lat(state);
  size_t i = 0;
  for (auto _ : state) {
    auto t0 = SteadyClock::now();
    std::memcpy(dst.data(), pool.block(i++).data(), n);
    benchmark::ClobberMemory();
    lat.Add(t0, SteadyClock::now());
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  SetLabel(state, pool, pool.working_set_bytes());
}

// The same copy done as 64 KiB memcpy calls, the way CopyVerifiedBlock copies.
// On this machine (glibc 2.36, AMD EPYC) that is markedly faster than one
// large memcpy call, which switches to another strategy above the L2 size,
// so this is the stricter ceiling for GetInto.
void BM_MemcpyChunked(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  const size_t n = pool.block_bytes();
  Buffer dst(n);
  Latencies lat(state);
  size_t i = 0;
  for (auto _ : state) {
    auto t0 = SteadyClock::now();
    const uint8_t* src = pool.block(i++).data();
    for (size_t off = 0; off < n; off += kChunkBytes) {
      std::memcpy(dst.data() + off, src + off, std::min(kChunkBytes, n - off));
    }
    benchmark::ClobberMemory();
    lat.Add(t0, SteadyClock::now());
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  SetLabel(state, pool, pool.working_set_bytes(), ", 64 KiB calls");
}

// memcpy of one 64 KiB chunk that stays in L1/L2 (source and destination).
void BM_MemcpyHot(benchmark::State& state) {
  const size_t n = state.range(0);
  Buffer src(n), dst(n);
  FillRandom(src.span(), 7);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n);
}

// XXH3-64 (runtime-dispatched SIMD, as block_format.cc uses) over blocks
// streamed from DRAM, one-shot, starting range(1) bytes past the block's
// 4 KiB-aligned start (block_bytes - 64 bytes hashed either way). Offset 0 is
// the raw hash speed. Offset 8 is where the v1 checksum's 64-byte stripes
// land in a stored block: the hashed stream is header[0, 88) ++ payload and
// the payload starts at byte 96, so stream stripe k is read from block
// address 64k + 8 -- every stripe straddles two cache lines.
void BM_Xxh3(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  const size_t offset = static_cast<size_t>(state.range(1));
  const size_t n = pool.block_bytes() - 64;
  Latencies lat(state);
  size_t i = 0;
  for (auto _ : state) {
    auto t0 = SteadyClock::now();
    XXH64_hash_t h = XXH3_64bits_dispatch(pool.block(i++).data() + offset, n);
    benchmark::DoNotOptimize(h);
    lat.Add(t0, SteadyClock::now());
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  SetLabel(state, pool, pool.working_set_bytes());
}

// XXH3-64 over one in-cache 64 KiB chunk: the hash half of the fused
// copy+verify loop, which hashes each chunk right after copying it.
void BM_Xxh3Hot(benchmark::State& state) {
  const size_t n = state.range(0);
  Buffer src(n);
  FillRandom(src.span(), 11);
  for (auto _ : state) {
    XXH64_hash_t h = XXH3_64bits_dispatch(src.data(), n);
    benchmark::DoNotOptimize(h);
  }
  state.SetBytesProcessed(state.iterations() * n);
}

// ParseBlock over blocks streamed from DRAM: header checks + XXH3 in place
// (the streaming API, as block_format.cc computes it). What Get verifies and
// what Put validates, without the store around it.
void BM_ParseBlock(benchmark::State& state) {
  const BlockPool& pool = Pool(state.range(0));
  const size_t n = pool.block_bytes();
  Latencies lat(state);
  size_t i = 0;
  for (auto _ : state) {
    auto t0 = SteadyClock::now();
    auto view = kv::ParseBlock(pool.block(i++));
    lat.Add(t0, SteadyClock::now());
    if (!view.ok()) {
      state.SkipWithError(view.status().ToString().c_str());
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  SetLabel(state, pool, pool.working_set_bytes());
}

// The fused copy + verify primitive alone (no store, no locks): the part of
// GetInto that is not bookkeeping; `help` says who hashes.
void CopyVerifiedBlockLoop(benchmark::State& state, kv::CopyHelp help) {
  const BlockPool& pool = Pool(state.range(0));
  const size_t n = pool.block_bytes();
  Buffer dst(n);
  Latencies lat(state);
  size_t i = 0;
  for (auto _ : state) {
    auto t0 = SteadyClock::now();
    auto view = kv::CopyVerifiedBlock(pool.block(i++), dst.span(),
                                      kv::CopyDestination::kReadSoon, help);
    lat.Add(t0, SteadyClock::now());
    if (!view.ok()) {
      state.SkipWithError(view.status().ToString().c_str());
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * n);
  lat.Report(state);
  SetLabel(state, pool, pool.working_set_bytes());
}

// The calling thread copies and hashes.
void BM_CopyVerifiedBlock(benchmark::State& state) {
  CopyVerifiedBlockLoop(state, kv::CopyHelp::kCallerOnly);
}

// CopyVerifiedBlockLoop with the helper offered (kHelperForLargeBlocks)
// under `policy`, restoring the process's policy after.
void HelpedLoopUnder(benchmark::State& state,
                     kv::ChecksumHelper::Policy policy) {
  const auto before = kv::ChecksumHelper::CurrentPolicy();
  kv::ChecksumHelper::SetPolicy(policy);
  CopyVerifiedBlockLoop(state, kv::CopyHelp::kHelperForLargeBlocks);
  kv::ChecksumHelper::SetPolicy(before);
}

// The process's checksum helper thread takes the hash over while the
// caller copies, whenever it is free (policy kAlways; blocks below
// kHelpedCopyMinBytes take the caller-only path, so that row is the
// control).
void BM_CopyVerifiedBlockHelped(benchmark::State& state) {
  HelpedLoopUnder(state, kv::ChecksumHelper::Policy::kAlways);
}

// Helped or alone as the process's CopyHelpChooser measures (policy
// kMeasured, the default): what a client gets.
void BM_CopyVerifiedBlockMeasured(benchmark::State& state) {
  HelpedLoopUnder(state, kv::ChecksumHelper::Policy::kMeasured);
}

// A local PUT's client copy as it runs with several clients: each thread
// copies its own hot block into the next slot of its share of a 1 GiB
// region (as puts fill the shared arena), hashing the source
// (kStoredHashSource, the caller alone). With Threads(2) on the 2-vCPU dev
// VM this is the ceiling of 256 KiB local puts with 4 clients, were the
// daemon and every hand-off free (bench/results/service.md, session 14).
void BM_CopyVerifiedBlockIntoArena(benchmark::State& state) {
  static Buffer* const region = new Buffer(size_t{1} << 30);  // Never freed.
  const uint64_t payload_bytes = state.range(0);
  const size_t n = kv::EncodedBlockSize(payload_bytes);
  std::vector<uint8_t> payload(payload_bytes), src(n);
  FillRandom(absl::MakeSpan(payload), 7919 + state.thread_index());
  const absl::Status encoded =
      kv::EncodeBlockInto(ShapeForPayload(payload_bytes), kv::CodecId::kRaw, {},
                          payload, absl::MakeSpan(src));
  BENCH_CHECK(encoded.ok(), "EncodeBlockInto: %s", encoded.ToString().c_str());
  const size_t stride = (n + 4095) / 4096 * 4096;
  const size_t share = region->size() / state.threads();
  uint8_t* const base = region->data() + state.thread_index() * share;
  const size_t slots = share / stride;
  BENCH_CHECK(slots > 0, "a block of %zu bytes is more than a thread's %zu", n,
              share);
  size_t i = 0;
  for (auto _ : state) {
    auto view = kv::CopyVerifiedBlock(
        src, absl::MakeSpan(base + (i++ % slots) * stride, n),
        kv::CopyDestination::kStoredHashSource, kv::CopyHelp::kCallerOnly);
    if (!view.ok()) {
      state.SkipWithError(view.status().ToString().c_str());
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * n);
}

BENCHMARK(BM_Memcpy)->Apply(Sizes);
BENCHMARK(BM_MemcpyChunked)->Apply(Sizes);
BENCHMARK(BM_MemcpyHot)->Arg(kChunkBytes)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Xxh3)
    ->ArgNames({"bytes", "offset"})
    ->ArgsProduct({{256 * kKiB, 2 * kMiB, 32 * kMiB}, {0, 8}})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Xxh3Hot)->Arg(kChunkBytes)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ParseBlock)->Apply(Sizes);
BENCHMARK(BM_CopyVerifiedBlock)->Apply(Sizes);
void HelpedSizes(benchmark::internal::Benchmark* b) {
  b->ArgName("bytes")
      ->Arg(1 * kMiB)
      ->Arg(2 * kMiB)
      ->Arg(4 * kMiB)
      ->Arg(8 * kMiB)
      ->Arg(32 * kMiB)
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();
}
BENCHMARK(BM_CopyVerifiedBlockIntoArena)
    ->ArgName("bytes")
    ->Arg(256 * kKiB)
    ->Arg(1 * kMiB)
    ->Threads(1)
    ->Threads(2)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_CopyVerifiedBlockHelped)->Apply(HelpedSizes);
BENCHMARK(BM_CopyVerifiedBlockMeasured)->Apply(HelpedSizes);
BENCHMARK(BM_CopyVerifiedBlock)
    ->ArgName("bytes")
    ->Arg(1 * kMiB)
    ->Arg(4 * kMiB)
    ->Arg(8 * kMiB)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace strata::bench
