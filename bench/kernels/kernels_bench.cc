// Bandwidth of the CUDA kernels (kernels/) on the device they run on.
//
//   kernels_bench [--iters N] [--warmup N] [--blocks N]
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

namespace strata::kernels {
namespace {

constexpr double kDeviceCeiling = 3.0e12;  // B/s, measured D2D read+write.
constexpr double kPinnedCeiling = 55e9;    // B/s, measured each way.
constexpr double kMiB = 1024.0 * 1024.0;

#define CUDA_CHECK(expr)                                                 \
  do {                                                                   \
    const cudaError_t e_ = (expr);                                       \
    if (e_ != cudaSuccess) {                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(e_));                              \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

void StatusCheck(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

struct Options {
  int iters = 20;
  int warmup = 3;
  int blocks = 8;  // Llama-3-8B blocks of 32 MiB (fp16): 256 MiB.
};

struct Row {
  std::string op;
  double bytes = 0;  // Read + written per iteration.
  double median_us = 0;
  double ceiling = kDeviceCeiling;
  bool pinned = false;
};

class Bench {
 public:
  explicit Bench(const Options& o) : o_(o) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }

  // Median time of `fn` (which enqueues work on stream_) in microseconds.
  double Time(const std::function<void()>& fn) {
    for (int i = 0; i < o_.warmup; ++i) fn();
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<double> us;
    for (int i = 0; i < o_.iters; ++i) {
      CUDA_CHECK(cudaEventRecord(start_, stream_));
      fn();
      CUDA_CHECK(cudaEventRecord(stop_, stream_));
      CUDA_CHECK(cudaEventSynchronize(stop_));
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
      us.push_back(ms * 1000.0);
    }
    CUDA_CHECK(cudaGetLastError());
    std::sort(us.begin(), us.end());
    return us[us.size() / 2];
  }

  void Add(const std::string& op, double bytes, double us,
           bool pinned = false) {
    Row r;
    r.op = op;
    r.bytes = bytes;
    r.median_us = us;
    r.pinned = pinned;
    r.ceiling = pinned ? kPinnedCeiling : kDeviceCeiling;
    rows_.push_back(r);
    std::printf("  %-44s %8.3f ms  %8.1f GB/s\n", op.c_str(), us / 1000.0,
                bytes / us / 1000.0);
    std::fflush(stdout);
  }

  void Print(double d2d_bps) const {
    std::printf("\n%-46s %10s %11s %9s %12s %8s\n", "op", "MiB/iter",
                "median us", "GB/s", "of ceiling", "of D2D");
    for (const Row& r : rows_) {
      const double bps = r.bytes / (r.median_us * 1e-6);
      char of_d2d[16] = "-";
      if (!r.pinned)
        std::snprintf(of_d2d, sizeof(of_d2d), "%.0f%%", 100 * bps / d2d_bps);
      std::printf("%-46s %10.1f %11.1f %9.1f %6.0f%% %-5s %8s\n", r.op.c_str(),
                  r.bytes / kMiB, r.median_us, bps / 1e9, 100 * bps / r.ceiling,
                  r.pinned ? "PCIe" : "HBM", of_d2d);
    }
  }

  cudaStream_t stream() const { return stream_; }
  const Options& options() const { return o_; }

 private:
  Options o_;
  cudaStream_t stream_;
  cudaEvent_t start_, stop_;
  std::vector<Row> rows_;
};

void* DeviceAlloc(size_t bytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
}

// Random fp16 values in [-4, 4), so that no kernel runs on zeros. One pool
// of 17M values is generated once; each fill copies from a seed-dependent
// offset.
void FillRandomHalf(void* dst, size_t elements, uint32_t seed,
                    cudaStream_t stream) {
  constexpr size_t kChunk = size_t{1} << 24;
  static const std::vector<uint16_t> pool = [] {
    std::vector<uint16_t> v(kChunk + (size_t{1} << 20));
    std::mt19937 rng(42);
    std::uniform_real_distribution<float> u(-4.0f, 4.0f);
    for (uint16_t& h : v) {
      const float f = u(rng);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      // fp32 -> fp16 by truncation (tiny values flush to zero).
      const uint32_t exp = (bits >> 23) & 0xFF;
      const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
      h = exp < 113 ? sign
                    : static_cast<uint16_t>(sign | ((exp - 112) << 10) |
                                            ((bits >> 13) & 0x3FF));
    }
    return v;
  }();
  const uint16_t* src = pool.data() + seed % (size_t{1} << 20);
  size_t done = 0;
  while (done < elements) {
    const size_t n = std::min(kChunk, elements - done);
    CUDA_CHECK(cudaMemcpyAsync(static_cast<uint16_t*>(dst) + done, src, n * 2,
                               cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    done += n;
  }
}

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

const kvstore::BlockShape kLlama{kvstore::DType::kFloat16, 32, 256, 8, 128};

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
    } else {
      std::fprintf(stderr, "usage: %s [--iters N] [--warmup N] [--blocks N]\n",
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
  BenchD2D(b, &d2d);
  BenchQuant(b, 2);
  BenchQuant(b, 4);
  BenchPaged(b, PagedLayout::kPageMajor);
  BenchPaged(b, PagedLayout::kKvMajor);
  BenchRopeAndBlend(b);
  b.Print(d2d);
  std::printf("\ndevice: %s\ncommand: %s\n", prop.name, command.c_str());
  return 0;
}

}  // namespace
}  // namespace strata::kernels

int main(int argc, char** argv) { return strata::kernels::Main(argc, argv); }
