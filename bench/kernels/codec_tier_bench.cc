// Benchmarks of the lowrank, tokensparse and cluster-selection kernels
// (against their memory or compute roofline) and of the HBM tier (PCIe
// demotion of compressed blocks; end-to-end paged KV <-> compressed block in
// pinned DRAM, in GB/s of fp16 KV). Part of kernels_bench.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/kernels/bench_harness.h"
#include "codecs/cluster_codec.h"
#include "codecs/codec_profile.h"
#include "codecs/lowrank_codec.h"
#include "codecs/quant_codec.h"
#include "codecs/tokensparse_codec.h"
#include "kernels/cluster_kernels.h"
#include "kernels/hbm_tier.h"
#include "kernels/kernel_errors.h"
#include "kernels/lowrank_kernels.h"
#include "kernels/paged_kv_kernels.h"
#include "kernels/quant_kernels.h"
#include "kernels/tokensparse_kernels.h"

namespace strata::kernels::bench {
namespace {

// Separately rounded fp32 multiply and add per multiply-accumulate (the
// CPU codec's order forbids FMA): SMs x 128 lanes x clock instructions/s.
double Fp32InstructionRate() {
  int sms = 0, khz = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
  return static_cast<double>(sms) * 128.0 * khz * 1e3;
}

void CheckFlags(uint32_t* flags, const char* what) {
  uint32_t host = 0;
  CUDA_CHECK(cudaMemcpy(&host, flags, 4, cudaMemcpyDeviceToHost));
  if (host != 0) {
    std::printf("  !! %s: error flags %s\n", what,
                ErrorFlagsToStatus(host).ToString().c_str());
  }
}

// Median wall time (us) of `fn`, which must finish its own work.
double WallTime(const Options& o, const std::function<void()>& fn) {
  for (int i = 0; i < o.warmup; ++i) fn();
  std::vector<double> us;
  for (int i = 0; i < o.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    us.push_back(std::chrono::duration<double, std::micro>(
                     std::chrono::steady_clock::now() - t0)
                     .count());
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// A synthetic PCA profile for kLlama (the kernels' speed does not depend on
// the values; fitting one on the CPU would take minutes).
codecs::CodecProfile SyntheticProfile(uint32_t r_max) {
  const uint32_t L = kLlama.num_layers, H = kLlama.num_kv_heads,
                 d = kLlama.head_dim;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  codecs::CodecProfile profile("bench/synthetic");
  for (const char* half : {"k", "v"}) {
    std::vector<float> mean(size_t{L} * H * d), basis(size_t{L} * H * d * r_max),
        sd(size_t{L} * H * r_max, 1.0f);
    for (float& x : mean) x = 0.1f * normal(rng);
    for (float& x : basis) x = normal(rng) / 11.3f;
    const std::string p = std::string("pca.") + half;
    StatusCheck(profile.Put(p + ".mean", {L, H, d}, std::move(mean)), "put");
    StatusCheck(profile.Put(p + ".basis", {L, H, d, r_max}, std::move(basis)),
                "put");
    StatusCheck(profile.Put(p + ".stddev", {L, H, r_max}, std::move(sd)),
                "put");
  }
  return profile;
}

}  // namespace

void BenchLowRank(Bench& b) {
  const int n = b.options().blocks;
  const double rate = Fp32InstructionRate();
  const codecs::CodecProfile profile = SyntheticProfile(64);
  auto packed = PackLowRankProfile(profile, kLlama);
  StatusCheck(packed.status(), "PackLowRankProfile");
  float* prof = static_cast<float*>(DeviceAlloc(packed->data.size() * 4));
  CUDA_CHECK(cudaMemcpy(prof, packed->data.data(), packed->data.size() * 4,
                        cudaMemcpyHostToDevice));
  const uint64_t raw = kLlama.RawBytes();
  uint8_t* kv = static_cast<uint8_t*>(DeviceAlloc(raw * n));
  FillRandomHalf(kv, raw * n / 2, 555, b.stream());
  uint32_t* flags = static_cast<uint32_t*>(DeviceAlloc(4));
  CUDA_CHECK(cudaMemset(flags, 0, 4));
  const double vectors =
      static_cast<double>(kLlama.num_layers) * kLlama.num_tokens *
      kLlama.num_kv_heads;
  for (codecs::LatentFormat f :
       {codecs::LatentFormat::kFloat16, codecs::LatentFormat::kInt8}) {
    codecs::LowRankParams lp;
    lp.format = f;
    lp.rank_k = 32;
    lp.rank_v = 64;
    auto pbytes = LowRankPayloadBytes(kLlama, lp.ToBytes());
    StatusCheck(pbytes.status(), "LowRankPayloadBytes");
    uint8_t* payload = static_cast<uint8_t*>(DeviceAlloc(*pbytes * n));
    LowRankEncodeParams enc;
    enc.shape = kLlama;
    enc.codec_params = lp.ToBytes();
    enc.profile_layout = packed->layout;
    enc.profile = prof;
    enc.payload_bytes = *pbytes;
    enc.error_flags = flags;
    const double us_enc = b.Time([&] {
      for (int i = 0; i < n; ++i) {
        enc.kv = kv + i * raw;
        enc.payload = payload + i * *pbytes;
        StatusCheck(Launch(enc, nullptr, b.stream()), "lowrank encode");
      }
    });
    const double bytes = static_cast<double>(n) * (raw + *pbytes);
    const double instr = 2.0 * n * vectors * kLlama.head_dim *
                         (lp.rank_k + lp.rank_v);
    const double mem_us = bytes / kDeviceCeiling * 1e6;
    const double fp_us = instr / rate * 1e6;
    const std::string name =
        std::string("lowrank ") +
        (f == codecs::LatentFormat::kFloat16 ? "fp16" : "int8") +
        " r32/64 32x256x8x128";
    b.AddRoofline(name + " encode x" + std::to_string(n), bytes, us_enc,
                  std::max(mem_us, fp_us), fp_us > mem_us ? "FP32" : "HBM");
    LowRankDecodeParams dec;
    dec.shape = kLlama;
    dec.codec_params = EncodedCodecParams(enc);
    dec.profile_layout = packed->layout;
    dec.profile = prof;
    dec.payload_bytes = *pbytes;
    dec.error_flags = flags;
    const double us_dec = b.Time([&] {
      for (int i = 0; i < n; ++i) {
        dec.payload = payload + i * *pbytes;
        dec.kv = kv + i * raw;
        StatusCheck(Launch(dec, nullptr, b.stream()), "lowrank decode");
      }
    });
    b.AddRoofline(name + " decode x" + std::to_string(n), bytes, us_dec,
                  std::max(mem_us, fp_us), fp_us > mem_us ? "FP32" : "HBM");
    CUDA_CHECK(cudaFree(payload));
  }
  CheckFlags(flags, "lowrank");
  CUDA_CHECK(cudaFree(prof));
  CUDA_CHECK(cudaFree(kv));
  CUDA_CHECK(cudaFree(flags));
}

void BenchTokenSparse(Bench& b) {
  const int n = b.options().blocks;
  const uint64_t raw = kLlama.RawBytes();
  uint8_t* kv = static_cast<uint8_t*>(DeviceAlloc(raw * n));
  FillRandomHalf(kv, raw * n / 2, 777, b.stream());
  codecs::TokenSparseParams tp;  // 4 sinks, window 32, keep 25%.
  auto pbytes = TokenSparsePayloadBytes(kLlama, tp.ToBytes());
  StatusCheck(pbytes.status(), "TokenSparsePayloadBytes");
  uint8_t* payload = static_cast<uint8_t*>(DeviceAlloc(*pbytes * n));
  TokenSparseEncodeParams p;
  p.shape = kLlama;
  p.codec_params = tp.ToBytes();
  p.payload_bytes = *pbytes;
  const double us = b.Time([&] {
    for (int i = 0; i < n; ++i) {
      p.kv = kv + i * raw;
      p.payload = payload + i * *pbytes;
      StatusCheck(Launch(p, nullptr, b.stream()), "tokensparse encode");
    }
  });
  // Keys read once for the norms, the kept rows read again, payload written.
  const double kept_rows = static_cast<double>(*pbytes) / 2;  // ~ K/V rows.
  const double bytes = n * (raw / 2.0 + kept_rows + *pbytes);
  b.AddRoofline("tokensparse 25% key-norm 32x256x8x128 x" + std::to_string(n),
                bytes, us, bytes / kDeviceCeiling * 1e6, "HBM");
  CUDA_CHECK(cudaFree(kv));
  CUDA_CHECK(cudaFree(payload));
}

void BenchClusterSelect(Bench& b) {
  // A hand-built index (k-means of 32K tokens on the CPU would take far
  // longer than the selection): 8 KV heads x 128, 32 query heads, clusters
  // of 16 tokens; layer 2 is the clustered one.
  for (uint32_t T : {4096u, 32768u}) {
    const kvstore::BlockShape shape{kvstore::DType::kFloat16, 3, T, 8, 128};
    const uint32_t H = 8, d = 128, sinks = 4, members = T - sinks;
    const uint32_t C = members / 16;
    codecs::ClusterParams cp;
    cp.num_clusters = static_cast<uint16_t>(C);
    std::mt19937 rng(T);
    std::vector<uint8_t> index;
    for (uint32_t h = 0; h < H; ++h) {
      for (uint32_t i = 0; i < C * d; ++i) {
        const uint16_t half = static_cast<uint16_t>(0x3000 + rng() % 0x0C00) |
                              static_cast<uint16_t>((rng() & 1) << 15);
        index.push_back(static_cast<uint8_t>(half));
        index.push_back(static_cast<uint8_t>(half >> 8));
      }
      for (uint32_t j = 0; j < C; ++j) {
        const uint32_t end = j + 1 == C ? members : (j + 1) * 16;
        for (int k = 0; k < 4; ++k) index.push_back(static_cast<uint8_t>(end >> (8 * k)));
      }
      std::vector<uint32_t> perm(members);
      std::iota(perm.begin(), perm.end(), sinks);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (uint32_t j = 0; j < C; ++j) {
        const uint32_t begin = j * 16, end = j + 1 == C ? members : begin + 16;
        std::sort(perm.begin() + begin, perm.begin() + end);
      }
      for (uint32_t t : perm) {
        index.push_back(static_cast<uint8_t>(t));
        index.push_back(static_cast<uint8_t>(t >> 8));
      }
    }
    const uint64_t payload_bytes =
        index.size() + kvstore::kCodecParamsSize + shape.RawBytes();
    uint8_t* payload = static_cast<uint8_t*>(DeviceAlloc(payload_bytes + 256));
    CUDA_CHECK(cudaMemcpy(payload + 96, index.data(), index.size(),
                          cudaMemcpyHostToDevice));
    std::vector<float> q(32 * d);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& x : q) x = normal(rng);
    float* dq = static_cast<float*>(DeviceAlloc(q.size() * 4));
    CUDA_CHECK(cudaMemcpy(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
    uint32_t* selected = static_cast<uint32_t*>(DeviceAlloc(T * 4 + 256));
    ClusterSelectParams p;
    p.shape = shape;
    p.codec_params = cp.ToBytes();
    p.payload = payload + 96;
    p.payload_bytes = payload_bytes;
    p.layer = 2;
    p.queries = dq;
    p.q_heads = 32;
    p.selected = selected;
    p.num_selected = selected + T;
    void* ws = DeviceAlloc(std::max<size_t>(WorkspaceBytes(p), 256) + 4096);
    for (codecs::BudgetScope scope :
         {codecs::BudgetScope::kPerQueryHead, codecs::BudgetScope::kTotal}) {
      p.scope = scope;
      p.token_budget = T / 16;
      const double us =
          b.Time([&] { StatusCheck(Launch(p, ws, b.stream()), "cluster"); });
      // Read: one layer's centroids, ends and token ids, the queries.
      const double bytes = static_cast<double>(index.size()) + q.size() * 4;
      b.AddRoofline("cluster select T=" + std::to_string(T) + " C=" +
                        std::to_string(C) + " 32q/8kv budget " +
                        std::to_string(T / 16) +
                        (scope == codecs::BudgetScope::kTotal ? " total"
                                                              : " per-head"),
                    bytes, us, bytes / kDeviceCeiling * 1e6, "HBM");
    }
    CUDA_CHECK(cudaFree(payload));
    CUDA_CHECK(cudaFree(dq));
    CUDA_CHECK(cudaFree(selected));
    CUDA_CHECK(cudaFree(ws));
  }
}

void BenchHbmTier(Bench& b) {
  const int n = b.options().blocks;
  const Options& o = b.options();
  auto tier_or = HbmTier::Create(
      {.pool_bytes = static_cast<uint64_t>(n) * (kLlama.RawBytes() + (16 << 20)) +
                     (64 << 20)});
  StatusCheck(tier_or.status(), "HbmTier::Create");
  HbmTier& tier = **tier_or;
  codecs::QuantParams qp;  // KIVI-2, G32.
  qp.k_group = qp.v_group = 32;
  const codecs::CodecParams cp = qp.ToBytes();
  auto pbytes_or = QuantPayloadBytes(kLlama, cp);
  StatusCheck(pbytes_or.status(), "QuantPayloadBytes");
  const uint64_t pbytes = *pbytes_or, raw = kLlama.RawBytes();
  auto host_or = PinnedBuffer::Allocate(pbytes * n);
  StatusCheck(host_or.status(), "PinnedBuffer");
  PinnedBuffer host = std::move(*host_or);
  std::memset(host.data(), 0, host.size());

  // 1. Demotion of compressed blocks already in HBM (pool allocations).
  std::vector<void*> resident;
  for (int i = 0; i < n; ++i) {
    auto p = tier.pool().Allocate(pbytes);
    StatusCheck(p.status(), "pool");
    resident.push_back(*p);
    CUDA_CHECK(cudaMemset(*p, 0x11 * i, pbytes));
  }
  const double us_copy = WallTime(o, [&] {
    std::vector<std::unique_ptr<Transfer>> ts;
    for (int i = 0; i < n; ++i) {
      auto t = tier.CopyToHost(resident[i], pbytes, host.data() + i * pbytes,
                               nullptr);
      StatusCheck(t.status(), "CopyToHost");
      ts.push_back(std::move(*t));
    }
    for (auto& t : ts) StatusCheck(t->Wait(), "CopyToHost wait");
  });
  b.Add("tier demote " + std::to_string(n) + " KIVI-2 blocks HBM->DRAM",
        static_cast<double>(n) * pbytes, us_copy, /*pinned=*/true);
  for (void* p : resident) StatusCheck(tier.pool().Free(p), "free");

  // Sources: n raw blocks, and vLLM page-major caches holding the same KV.
  uint8_t* blocks = static_cast<uint8_t*>(DeviceAlloc(raw * n));
  FillRandomHalf(blocks, raw * n / 2, 4242, b.stream());
  PagedCacheDesc desc;
  desc.shape = kLlama;
  desc.layout = PagedLayout::kPageMajor;
  desc.page_size = 16;
  const uint32_t per_block = kLlama.num_tokens / desc.page_size;
  desc.num_pages = per_block * n;
  const uint64_t row = uint64_t{kLlama.num_kv_heads} * kLlama.head_dim * 2;
  std::vector<void*> caches;
  for (uint32_t l = 0; l < kLlama.num_layers; ++l) {
    caches.push_back(DeviceAlloc(2ull * desc.num_pages * desc.page_size * row));
  }
  std::vector<const void*> const_caches(caches.begin(), caches.end());
  std::vector<int32_t> ids(desc.num_pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(9));
  int32_t* page_ids = static_cast<int32_t*>(DeviceAlloc(ids.size() * 4));
  CUDA_CHECK(cudaMemcpy(page_ids, ids.data(), ids.size() * 4,
                        cudaMemcpyHostToDevice));
  for (int i = 0; i < n; ++i) {  // Fill the caches from the blocks.
    PagedScatterParams s;
    s.cache = desc;
    s.layer_caches = caches.data();
    s.page_ids = page_ids + i * per_block;
    s.block = blocks + i * raw;
    StatusCheck(Launch(s, nullptr, b.stream()), "fill caches");
  }
  CUDA_CHECK(cudaStreamSynchronize(b.stream()));

  // 2. End to end down: raw block / paged cache -> encode -> pinned DRAM.
  for (bool paged : {false, true}) {
    const double us = WallTime(o, [&] {
      std::vector<std::unique_ptr<Transfer>> ts;
      for (int i = 0; i < n; ++i) {
        HbmTier::DemoteRequest r;
        r.shape = kLlama;
        r.quant_params = cp;
        if (paged) {
          r.gather.cache = desc;
          r.gather.layer_caches = const_caches.data();
          r.gather.page_ids = page_ids + i * per_block;
        } else {
          r.kv = blocks + i * raw;
        }
        r.host_payload = host.data() + i * pbytes;
        r.host_capacity = pbytes;
        auto t = tier.Demote(r);
        StatusCheck(t.status(), "Demote");
        ts.push_back(std::move(*t));
      }
      for (auto& t : ts) StatusCheck(t->Wait(), "Demote wait");
    });
    const std::string what = paged ? "paged KV" : "raw block";
    b.Add("tier down " + what + "->KIVI-2 DRAM x" + std::to_string(n) +
              " (fp16 KV)",
          static_cast<double>(n) * raw, us, true);
    b.Add("tier down " + what + " x" + std::to_string(n) + " (PCIe bytes)",
          static_cast<double>(n) * pbytes, us, true);
  }

  // 3. End to end up: pinned DRAM -> H2D + decode in layer chunks -> raw
  // block / paged cache.
  for (bool paged : {false, true}) {
    const double us = WallTime(o, [&] {
      std::vector<std::unique_ptr<Transfer>> ts;
      for (int i = 0; i < n; ++i) {
        HbmTier::PromoteRequest r;
        r.shape = kLlama;
        r.quant_params = cp;
        r.host_payload = host.data() + i * pbytes;
        r.payload_bytes = pbytes;
        if (paged) {
          r.paged.cache = desc;
          r.paged.layer_caches = caches.data();
          r.paged.page_ids = page_ids + i * per_block;
        } else {
          r.kv = blocks + i * raw;
        }
        auto t = tier.Promote(r);
        StatusCheck(t.status(), "Promote");
        ts.push_back(std::move(*t));
      }
      for (auto& t : ts) StatusCheck(t->Wait(), "Promote wait");
    });
    const std::string what = paged ? "paged KV" : "raw block";
    b.Add("tier up KIVI-2 DRAM->" + what + " x" + std::to_string(n) +
              " (fp16 KV)",
          static_cast<double>(n) * raw, us, true);
    b.Add("tier up " + what + " x" + std::to_string(n) + " (PCIe bytes)",
          static_cast<double>(n) * pbytes, us, true);
  }

  // 4. Layer-wise pipelining: time until layer 0 is usable vs the block.
  std::vector<double> first, whole;
  for (int it = 0; it < o.iters; ++it) {
    HbmTier::PromoteRequest r;
    r.shape = kLlama;
    r.quant_params = cp;
    r.host_payload = host.data();
    r.payload_bytes = pbytes;
    r.paged.cache = desc;
    r.paged.layer_caches = caches.data();
    r.paged.page_ids = page_ids;
    const auto t0 = std::chrono::steady_clock::now();
    auto t = tier.Promote(r);
    StatusCheck(t.status(), "Promote");
    while (!(*t)->LayerReady(0)) {
    }
    const auto t1 = std::chrono::steady_clock::now();
    StatusCheck((*t)->Wait(), "Promote wait");
    const auto t2 = std::chrono::steady_clock::now();
    first.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    whole.push_back(std::chrono::duration<double, std::micro>(t2 - t0).count());
  }
  std::sort(first.begin(), first.end());
  std::sort(whole.begin(), whole.end());
  std::printf(
      "  tier up one block to paged KV: layer 0 usable after %.1f us, all %u "
      "layers after %.1f us (median of %d)\n",
      first[first.size() / 2], kLlama.num_layers, whole[whole.size() / 2],
      o.iters);
  b.Add("tier up 1 block, until layer 0 usable (fp16 KV of layer 0)",
        static_cast<double>(raw) / kLlama.num_layers, first[first.size() / 2],
        true);
  b.Add("tier up 1 block, all layers (fp16 KV)", static_cast<double>(raw),
        whole[whole.size() / 2], true);
  for (void* c : caches) CUDA_CHECK(cudaFree(c));
  CUDA_CHECK(cudaFree(page_ids));
  CUDA_CHECK(cudaFree(blocks));
}

}  // namespace strata::kernels::bench
