// Bandwidth of the CUDA kernels (kernels/) on the device they run on.
//
//   kernels_bench [--iters N] [--warmup N] [--blocks N] [--only GROUP]
//
// Every op works on >= 256 MiB (about 5x the H100's 50 MB L2) of random data,
// is warmed up, then timed with CUDA events per iteration; the table gives
// the median. GB/s counts bytes read + bytes written once each (the fewest a
// kernel can move) over the median time; "of 3.0 TB/s" is the ratio to the
// device-memory ceiling measured on the H100 (docs: ../shared/build-notes.md)
// and "of D2D" the ratio to a cudaMemcpyAsync device-to-device copy measured
// in the same run. Host<->device copies of compressed blocks (pinned memory)
// are compared with the measured 55 GB/s PCIe ceiling.
//
// Without a CUDA device it prints why and exits 0.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "codecs/quant_codec.h"
#include "kernels/blend_kernels.h"
#include "kernels/kernel_errors.h"
#include "kernels/paged_kv_kernels.h"
#include "kernels/quant_kernels.h"
#include "kernels/rope_kernels.h"
#include "kvstore/block_format.h"

#include "bench/kernels/bench_harness.h"

namespace strata::kernels::bench {
namespace {

void BenchD2D(Bench& b, double* d2d_bps) {
  const size_t bytes = size_t{1} << 30;
  void* src = DeviceAlloc(bytes);
  void* dst = DeviceAlloc(bytes);
  CUDA_CHECK(cudaMemsetAsync(src, 0x3C, bytes, b.stream()));
  const double us = b.Time([&] {
    CUDA_CHECK(
        cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, b.stream()));
  });
  b.Add("cudaMemcpyAsync D2D 1 GiB (ceiling)", 2.0 * bytes, us);
  *d2d_bps = 2.0 * bytes / (us * 1e-6);
  CUDA_CHECK(cudaFree(src));
  CUDA_CHECK(cudaFree(dst));
}

// Writes only: what a write-dominated kernel (a decode writes 8x the bytes
// it reads) can reach, next to the copy ceiling. Reported, not a ceiling
// the other rows are divided by.
void BenchMemset(Bench& b) {
  const size_t bytes = size_t{1} << 30;
  void* dst = DeviceAlloc(bytes);
  const double us = b.Time([&] {
    CUDA_CHECK(cudaMemsetAsync(dst, 0x3C, bytes, b.stream()));
  });
  b.Add("cudaMemsetAsync 1 GiB (writes only)", static_cast<double>(bytes), us);
  CUDA_CHECK(cudaFree(dst));
}

void BenchQuant(Bench& b, uint8_t bits) {
  const int n = b.options().blocks;
  codecs::QuantParams qp;
  qp.k_bits = qp.v_bits = bits;
  qp.k_group = qp.v_group = 32;
  const codecs::CodecParams cp = qp.ToBytes();
  const uint64_t raw = kLlama.RawBytes();
  auto payload_bytes = QuantPayloadBytes(kLlama, cp);
  StatusCheck(payload_bytes.status(), "QuantPayloadBytes");
  uint8_t* kv = static_cast<uint8_t*>(DeviceAlloc(raw * n));
  uint8_t* payload = static_cast<uint8_t*>(DeviceAlloc(*payload_bytes * n));
  uint32_t* flags = static_cast<uint32_t*>(DeviceAlloc(4));
  FillRandomHalf(kv, raw * n / 2, 1234 + bits, b.stream());
  CUDA_CHECK(cudaMemsetAsync(flags, 0, 4, b.stream()));
  const std::string name =
      "quant KIVI-" + std::to_string(bits) + " G32 32x256x8x128 fp16";
  const double us_enc = b.Time([&] {
    for (int i = 0; i < n; ++i) {
      QuantEncodeParams p;
      p.shape = kLlama;
      p.codec_params = cp;
      p.kv = kv + i * raw;
      p.payload = payload + i * *payload_bytes;
      p.payload_bytes = *payload_bytes;
      p.error_flags = flags;
      StatusCheck(Launch(p, nullptr, b.stream()), "quant encode");
    }
  });
  b.Add(name + " encode x" + std::to_string(n),
        static_cast<double>(n) * (raw + *payload_bytes), us_enc);
  const double us_dec = b.Time([&] {
    for (int i = 0; i < n; ++i) {
      QuantDecodeParams p;
      p.shape = kLlama;
      p.codec_params = cp;
      p.payload = payload + i * *payload_bytes;
      p.payload_bytes = *payload_bytes;
      p.kv = kv + i * raw;
      p.error_flags = flags;
      StatusCheck(Launch(p, nullptr, b.stream()), "quant decode");
    }
  });
  b.Add(name + " decode x" + std::to_string(n),
        static_cast<double>(n) * (raw + *payload_bytes), us_dec);
  uint32_t host_flags = 0;
  CUDA_CHECK(cudaMemcpy(&host_flags, flags, 4, cudaMemcpyDeviceToHost));
  if (host_flags != 0) {
    std::printf("  !! error flags %s\n",
                ErrorFlagsToStatus(host_flags).ToString().c_str());
  }

  // Host <-> device copies of compressed blocks from pinned memory.
  uint8_t* host = nullptr;
  CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host), *payload_bytes * n,
                           cudaHostAllocDefault));
  std::memset(host, 0x5A, *payload_bytes * n);
  const std::string block_mib =
      std::to_string(*payload_bytes / kMiB).substr(0, 4) + " MiB";
  const double us_h2d_one = b.Time([&] {
    CUDA_CHECK(cudaMemcpyAsync(payload, host, *payload_bytes,
                               cudaMemcpyHostToDevice, b.stream()));
  });
  b.Add("pinned H2D 1 KIVI-" + std::to_string(bits) + " block (" + block_mib +
            ")",
        static_cast<double>(*payload_bytes), us_h2d_one, /*pinned=*/true);
  const double us_h2d = b.Time([&] {
    for (int i = 0; i < n; ++i) {
      CUDA_CHECK(cudaMemcpyAsync(payload + i * *payload_bytes,
                                 host + i * *payload_bytes, *payload_bytes,
                                 cudaMemcpyHostToDevice, b.stream()));
    }
  });
  b.Add("pinned H2D " + std::to_string(n) + " KIVI-" + std::to_string(bits) +
            " blocks",
        static_cast<double>(n) * *payload_bytes, us_h2d, true);
  const double us_d2h = b.Time([&] {
    for (int i = 0; i < n; ++i) {
      CUDA_CHECK(cudaMemcpyAsync(host + i * *payload_bytes,
                                 payload + i * *payload_bytes, *payload_bytes,
                                 cudaMemcpyDeviceToHost, b.stream()));
    }
  });
  b.Add("pinned D2H " + std::to_string(n) + " KIVI-" + std::to_string(bits) +
            " blocks",
        static_cast<double>(n) * *payload_bytes, us_d2h, true);
  CUDA_CHECK(cudaFreeHost(host));
  CUDA_CHECK(cudaFree(kv));
  CUDA_CHECK(cudaFree(payload));
  CUDA_CHECK(cudaFree(flags));
}

void BenchPaged(Bench& b, PagedLayout layout) {
  const int n = b.options().blocks;
  PagedCacheDesc d;
  d.shape = kLlama;
  d.layout = layout;
  d.page_size = 16;
  const uint32_t pages_per_block = kLlama.num_tokens / d.page_size;
  d.num_pages = pages_per_block * n;
  const uint64_t row = uint64_t{kLlama.num_kv_heads} * kLlama.head_dim * 2;
  const uint64_t cache_bytes = 2ull * d.num_pages * d.page_size * row;
  std::vector<void*> caches;
  for (uint32_t l = 0; l < kLlama.num_layers; ++l) {
    caches.push_back(DeviceAlloc(cache_bytes));
    FillRandomHalf(caches.back(), cache_bytes / 2, 77 + l, b.stream());
  }
  std::vector<const void*> const_caches(caches.begin(), caches.end());
  std::vector<int32_t> ids(d.num_pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(5));
  int32_t* page_ids = static_cast<int32_t*>(DeviceAlloc(ids.size() * 4));
  CUDA_CHECK(
      cudaMemcpy(page_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  const uint64_t raw = kLlama.RawBytes();
  uint8_t* blocks = static_cast<uint8_t*>(DeviceAlloc(raw * n));
  const char* lname = layout == PagedLayout::kPageMajor
                          ? "[pages][2][16][8][128]"
                          : "[2][pages][16][8][128]";
  const double us_g = b.Time([&] {
    for (int i = 0; i < n; ++i) {
      PagedGatherParams p;
      p.cache = d;
      p.layer_caches = const_caches.data();
      p.page_ids = page_ids + i * pages_per_block;
      p.block = blocks + i * raw;
      StatusCheck(Launch(p, nullptr, b.stream()), "paged gather");
    }
  });
  b.Add(std::string("paged gather ") + lname + " x" + std::to_string(n),
        2.0 * n * raw, us_g);
  const double us_s = b.Time([&] {
    for (int i = 0; i < n; ++i) {
      PagedScatterParams p;
      p.cache = d;
      p.layer_caches = caches.data();
      p.page_ids = page_ids + i * pages_per_block;
      p.block = blocks + i * raw;
      StatusCheck(Launch(p, nullptr, b.stream()), "paged scatter");
    }
  });
  b.Add(std::string("paged scatter ") + lname + " x" + std::to_string(n),
        2.0 * n * raw, us_s);
  for (void* c : caches) CUDA_CHECK(cudaFree(c));
  CUDA_CHECK(cudaFree(page_ids));
  CUDA_CHECK(cudaFree(blocks));
}

void BenchRopeAndBlend(Bench& b) {
  const int n = b.options().blocks;
  const uint64_t raw = kLlama.RawBytes();
  uint8_t* blocks = static_cast<uint8_t*>(DeviceAlloc(raw * n));
  FillRandomHalf(blocks, raw * n / 2, 99, b.stream());
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kNeoxHalves}) {
    const double us = b.Time([&] {
      for (int i = 0; i < n; ++i) {
        RopeShiftParams p;
        p.dtype = kLlama.dtype;
        p.head_dim = kLlama.head_dim;
        p.num_vectors = uint64_t{kLlama.num_layers} * kLlama.num_tokens *
                        kLlama.num_kv_heads;  // The K half.
        p.style = style;
        p.theta = 500000.0f;
        p.delta = 4096;
        p.src = p.dst = blocks + i * raw;
        StatusCheck(Launch(p, nullptr, b.stream()), "rope shift");
      }
    });
    b.Add(std::string("rope shift K in place ") +
              (style == RopeStyle::kInterleaved ? "interleaved" : "neox") +
              " x" + std::to_string(n),
          static_cast<double>(n) * raw, us);  // K half read + written.
  }
  // CacheBlend: 64K tokens x 8 x 128 fp16 = 128 MiB per side.
  BlendSelectParams p;
  p.dtype = kvstore::DType::kFloat16;
  p.num_tokens = 65536;
  p.kv_heads = 8;
  p.head_dim = 128;
  p.k = p.num_tokens * 15 / 100;
  p.fresh_keys = blocks;
  p.cached_keys = blocks + raw * n / 2;
  p.selected = static_cast<int32_t*>(DeviceAlloc(p.k * 4));
  void* ws = DeviceAlloc(WorkspaceBytes(p));
  const double us =
      b.Time([&] { StatusCheck(Launch(p, ws, b.stream()), "blend select"); });
  b.Add("blend select 65536x8x128 fp16, k=15%", 2.0 * 65536 * 1024 * 2, us);
  // One layer of a Llama block: launch-latency bound.
  p.num_tokens = 256;
  p.k = 38;
  const double us_small =
      b.Time([&] { StatusCheck(Launch(p, ws, b.stream()), "blend select"); });
  b.Add("blend select 256x8x128 fp16 (one layer)", 2.0 * 256 * 1024 * 2,
        us_small);
  CUDA_CHECK(cudaFree(p.selected));
  CUDA_CHECK(cudaFree(ws));
  CUDA_CHECK(cudaFree(blocks));
}

int Main(int argc, char** argv) {
  std::string command;
  for (int i = 0; i < argc; ++i) {
    if (i > 0) command += ' ';
    command += argv[i];
  }
  Options o;
  std::string only;  // Empty: every group.
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> int {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoi(argv[++i]);
    };
    if (a == "--iters") {
      o.iters = std::max(1, next());
    } else if (a == "--warmup") {
      o.warmup = std::max(0, next());
    } else if (a == "--blocks") {
      o.blocks = std::max(1, next());
    } else if (a == "--only") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "--only needs a value\n");
        return 2;
      }
      only = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: %s [--iters N] [--warmup N] [--blocks N] "
                   "[--only quant|paged|rope|lowrank|tokensparse|cluster|"
                   "tier|aqua|sparse|cluster_encode]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf("command: %s\n", command.c_str());
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("no CUDA device (%s): nothing to measure\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return 0;
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  int driver = 0, runtime = 0;
  CUDA_CHECK(cudaDriverGetVersion(&driver));
  CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  std::printf(
      "device: %s (sm_%d%d, %d SMs, L2 %.0f MiB, %.1f GiB), driver %d, "
      "runtime %d\n",
      prop.name, prop.major, prop.minor, prop.multiProcessorCount,
      prop.l2CacheSize / kMiB, prop.totalGlobalMem / kMiB / 1024, driver,
      runtime);
  std::printf(
      "iterations %d (median), warm-up %d, %d Llama-3-8B blocks of "
      "%.0f MiB per op\n\n",
      o.iters, o.warmup, o.blocks, kLlama.RawBytes() / kMiB);
  Bench b(o);
  double d2d = kDeviceCeiling;
  auto want = [&](const char* group) { return only.empty() || only == group; };
  if (only.empty()) BenchD2D(b, &d2d);
  if (want("quant")) {
    BenchMemset(b);
    BenchQuant(b, 2);
    BenchQuant(b, 4);
  }
  if (want("paged")) {
    BenchPaged(b, PagedLayout::kPageMajor);
    BenchPaged(b, PagedLayout::kKvMajor);
  }
  if (want("rope")) BenchRopeAndBlend(b);
  if (want("lowrank")) BenchLowRank(b);
  if (want("tokensparse")) BenchTokenSparse(b);
  if (want("cluster")) BenchClusterSelect(b);
  if (want("tier")) BenchHbmTier(b);
  if (want("aqua")) BenchAqua(b);
  if (want("sparse")) BenchSparse(b);
  if (want("cluster_encode")) BenchClusterEncode(b);
  b.Print(d2d);
  std::printf("\ndevice: %s\ncommand: %s\n", prop.name, command.c_str());
  return 0;
}

}  // namespace
}  // namespace strata::kernels::bench

int main(int argc, char** argv) {
  return strata::kernels::bench::Main(argc, argv);
}
