// The timing harness shared by the kernel benchmarks (kernels_bench.cc,
// codec_tier_bench.cc): CUDA-event medians after warm-up, rows reported
// against a roofline, random fp16 fills. Not a library: one binary.
#ifndef STRATA_BENCH_KERNELS_BENCH_HARNESS_H_
#define STRATA_BENCH_KERNELS_BENCH_HARNESS_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kvstore/block_format.h"

namespace strata::kernels::bench {

inline constexpr double kDeviceCeiling = 3.0e12;  // B/s, measured D2D read+write.
inline constexpr double kPinnedCeiling = 55e9;    // B/s, measured each way.
inline constexpr double kMiB = 1024.0 * 1024.0;

#define CUDA_CHECK(expr)                                                 \
  do {                                                                   \
    const cudaError_t e_ = (expr);                                       \
    if (e_ != cudaSuccess) {                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(e_));                              \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

inline void StatusCheck(const absl::Status& s, const char* what) {
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
  // Roofline rows: the floor time (the larger of bytes / bandwidth and
  // operations / rate) and what binds it ("HBM", "FP32", ...); "of ceiling"
  // is then floor / median.
  double floor_us = 0;
  std::string label;
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

  // A row measured against a roofline floor (see Row).
  void AddRoofline(const std::string& op, double bytes, double us,
                   double floor_us, const std::string& label) {
    Row r;
    r.op = op;
    r.bytes = bytes;
    r.median_us = us;
    r.floor_us = floor_us;
    r.label = label;
    rows_.push_back(r);
    std::printf("  %-44s %8.3f ms  floor %8.3f ms (%s)\n", op.c_str(),
                us / 1000.0, floor_us / 1000.0, label.c_str());
    std::fflush(stdout);
  }

  void Print(double d2d_bps) const {
    std::printf("\n%-46s %10s %11s %9s %12s %8s\n", "op", "MiB/iter",
                "median us", "GB/s", "of ceiling", "of D2D");
    for (const Row& r : rows_) {
      const double bps = r.bytes / (r.median_us * 1e-6);
      if (r.floor_us > 0) {
        std::printf("%-46s %10.1f %11.1f %9.1f %6.0f%% %-5s %8s\n",
                    r.op.c_str(), r.bytes / kMiB, r.median_us, bps / 1e9,
                    100 * r.floor_us / r.median_us, r.label.c_str(), "-");
        continue;
      }
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

inline void* DeviceAlloc(size_t bytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
}

// Random fp16 values in [-4, 4), so that no kernel runs on zeros. One pool
// of 17M values is generated once; each fill copies from a seed-dependent
// offset.
inline void FillRandomHalf(void* dst, size_t elements, uint32_t seed,
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

inline const kvstore::BlockShape kLlama{kvstore::DType::kFloat16, 32, 256, 8, 128};

// The benchmarks of codec_tier_bench.cc.
void BenchLowRank(Bench& b);
void BenchTokenSparse(Bench& b);
void BenchClusterSelect(Bench& b);
void BenchHbmTier(Bench& b);
// aqua_bench.cc.
void BenchAqua(Bench& b);
void BenchSparse(Bench& b);  // sparse_bench.cc
void BenchClusterEncode(Bench& b);  // cluster_encode_bench.cc

}  // namespace strata::kernels::bench

#endif  // STRATA_BENCH_KERNELS_BENCH_HARNESS_H_
