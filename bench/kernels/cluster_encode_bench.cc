// Benchmark of the ClusterKV encode kernels (kernels/cluster_encode_kernels.h):
// time per block (one launch per iteration, median) against the roofline
// of the k-means' arithmetic and of its memory traffic. Part of
// kernels_bench (`kernels_bench --only cluster_encode`).
//
// Work per (clustered layer, KV head) slot, n = tokens - sinks rows of d
// channels, k clusters, R Lloyd rounds (the params' cap: the CPU order stops
// early when no label moves, so the floor assumes the most work and the
// "of ceiling" ratio is an upper bound):
//   k-means++: 2 n k d flops (one dot per row per centre);
//   each round: 2 n k d (assignment) + n d (centroid sums);
//   normalising: 3 n d; stored means: n d (double).
// Flops are counted at the brief's 60 TFLOP/s fp32 (non-tensor, FMA as 2);
// the kernels may not fuse (byte equality with the CPU), so half that rate
// is the real instruction ceiling. Bytes: the keys read twice (normalise,
// means), the values once, the payload written, at 3.0 TB/s.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

#include "bench/kernels/bench_harness.h"
#include "codecs/cluster_codec.h"
#include "kernels/cluster_encode_kernels.h"
#include "kernels/kernel_errors.h"

namespace strata::kernels::bench {
namespace {

constexpr double kFp32FlopRate = 60e12;  // H100 SXM, non-tensor, FMA = 2.

struct EncodeCase {
  const char* name;
  kvstore::BlockShape shape;
  uint16_t clusters;  // 0: the codec's default, ceil(members / 16).
  uint8_t iterations;
};

void BenchOne(Bench& b, const EncodeCase& c) {
  codecs::ClusterParams cp;
  cp.num_clusters = c.clusters;
  cp.iterations = c.iterations;
  const kvstore::BlockShape& shape = c.shape;
  auto pbytes = ClusterPayloadBytes(shape, cp.ToBytes());
  StatusCheck(pbytes.status(), "ClusterPayloadBytes");
  auto recorded = codecs::ClusterParams::FromBytes(
      *ClusterEncodedParams(shape, cp.ToBytes()));
  StatusCheck(recorded.status(), "ClusterEncodedParams");
  const uint64_t raw = shape.RawBytes();
  uint8_t* kv = static_cast<uint8_t*>(DeviceAlloc(raw));
  FillRandomHalf(kv, raw / 2, 9001, b.stream());
  uint8_t* payload = static_cast<uint8_t*>(DeviceAlloc(*pbytes));
  uint32_t* flags = static_cast<uint32_t*>(DeviceAlloc(4));
  CUDA_CHECK(cudaMemset(flags, 0, 4));
  ClusterEncodeParams p;
  p.shape = shape;
  p.codec_params = cp.ToBytes();
  p.kv = kv;
  p.payload = payload;
  p.payload_bytes = *pbytes;
  p.error_flags = flags;
  StatusCheck(Validate(p), "cluster encode");
  void* ws = DeviceAlloc(std::max<size_t>(WorkspaceBytes(p), 256));
  const double us = b.Time(
      [&] { StatusCheck(Launch(p, ws, b.stream()), "cluster encode"); });
  uint32_t host_flags = 0;
  CUDA_CHECK(cudaMemcpy(&host_flags, flags, 4, cudaMemcpyDeviceToHost));
  if (host_flags != 0) {
    std::printf("  !! cluster encode: %s\n",
                ErrorFlagsToStatus(host_flags).ToString().c_str());
  }

  const double sinks = std::min<double>(cp.n_sink, shape.num_tokens);
  const double n = shape.num_tokens - sinks, k = recorded->num_clusters,
               d = shape.head_dim, rounds = c.iterations;
  const double slots =
      static_cast<double>(shape.num_layers > cp.first_layer
                              ? shape.num_layers - cp.first_layer
                              : 0) *
      shape.num_kv_heads;
  const double flops =
      slots * (2 * n * k * d + rounds * (2 * n * k * d + n * d) + 4 * n * d);
  const double bytes = raw * 1.5 + static_cast<double>(*pbytes);
  const double mem_floor_us = bytes / kDeviceCeiling * 1e6;
  const double fp_floor_us = flops / kFp32FlopRate * 1e6;
  const std::string label = fp_floor_us > mem_floor_us ? "FP32" : "HBM";
  const std::string op =
      std::string("cluster encode ") + c.name + " C=" +
      std::to_string(recorded->num_clusters) + " R<=" +
      std::to_string(c.iterations) + " /block";
  b.AddRoofline(op, bytes, us, std::max(mem_floor_us, fp_floor_us), label);
  std::printf("    %.2f GFLOP (all rounds), %.1f MiB moved, %.0f slots\n",
              flops / 1e9, bytes / kMiB, slots);
  CUDA_CHECK(cudaFree(kv));
  CUDA_CHECK(cudaFree(payload));
  CUDA_CHECK(cudaFree(flags));
  CUDA_CHECK(cudaFree(ws));
}

}  // namespace

void BenchClusterEncode(Bench& b) {
  const EncodeCase cases[] = {
      // SmolLM2-135M's block (the fixture's model), the codec's defaults.
      {"smollm2 30x256x3x64", {kvstore::DType::kFloat16, 30, 256, 3, 64}, 0,
       20},
      // Llama-3-8B's block (kLlama), defaults and a finer index.
      {"llama3 32x256x8x128", kLlama, 0, 20},
      {"llama3 32x256x8x128", kLlama, 64, 20},
      // A long block: k-means++'s sequential sums grow as n * k.
      {"llama3 32x1024x8x128", {kvstore::DType::kFloat16, 32, 1024, 8, 128},
       0, 20},
  };
  for (const EncodeCase& c : cases) BenchOne(b, c);
}

}  // namespace strata::kernels::bench
