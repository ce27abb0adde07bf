// The sparse (CSR) encode and decode kernels on Llama-3-8B blocks
// (32x256x8x128 fp16), `kernels_bench --only sparse`. Rows are reported
// against the roofline of the op itself: encode is 2*N*C flops per chunk and
// matching-pursuit iteration (the correlations with every atom; 60 TFLOP/s
// fp32 non-tensor, H100 SXM) or the raw block + payload at 3.0 TB/s,
// whichever is larger; decode is the raw block + payload at 3.0 TB/s. The
// encode's own extra traffic (the N x chunks score matrix written by the
// GEMM and read by the select kernel, per iteration) is printed separately:
// it is the design's memory floor (docs/kernels.md, "Sparse (CSR)").
#include <cublas_v2.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench/kernels/bench_harness.h"
#include "codecs/codec_profile.h"
#include "codecs/sparse_codec.h"
#include "kernels/kernel_errors.h"
#include "kernels/sparse_kernels.h"

namespace strata::kernels::bench {
namespace {

constexpr double kFp32Flops = 60e12;  // H100 SXM, fp32 non-tensor (FMA = 2).

// Random unit atoms, 5-layer groups, for `shape` with atoms of head_dim /
// chunks channels.
codecs::CodecProfile SyntheticSparseProfile(const kvstore::BlockShape& shape,
                                            uint32_t chunks, uint32_t atoms) {
  const uint32_t dim = shape.head_dim / chunks;
  const uint32_t groups = (shape.num_layers + 4) / 5;
  codecs::CodecProfile profile("bench/sparse");
  StatusCheck(profile.Put("csr.meta", {3},
                          {static_cast<float>(shape.num_layers),
                           static_cast<float>(shape.num_kv_heads),
                           static_cast<float>(shape.head_dim)}),
              "csr.meta");
  std::vector<float> layer_group(shape.num_layers);
  for (uint32_t l = 0; l < shape.num_layers; ++l)
    layer_group[l] = static_cast<float>(l / 5);
  StatusCheck(profile.Put("csr.layer_group", {shape.num_layers}, layer_group),
              "csr.layer_group");
  std::mt19937 rng(99);
  std::normal_distribution<float> n(0, 1);
  for (const char* name : {"csr.k.dict", "csr.v.dict"}) {
    std::vector<float> d(size_t{groups} * atoms * dim);
    for (size_t a = 0; a < size_t{groups} * atoms; ++a) {
      double norm = 0;
      for (uint32_t e = 0; e < dim; ++e) {
        d[a * dim + e] = n(rng);
        norm += double{d[a * dim + e]} * d[a * dim + e];
      }
      for (uint32_t e = 0; e < dim; ++e)
        d[a * dim + e] = static_cast<float>(d[a * dim + e] / std::sqrt(norm));
    }
    StatusCheck(profile.Put(name, {groups, atoms, dim}, d), name);
  }
  return profile;
}

void BenchSparseCase(Bench& b, cublasHandle_t cublas, uint32_t atoms,
                     uint8_t s, uint8_t chunks) {
  const int n = b.options().blocks;
  const kvstore::BlockShape shape = kLlama;
  const codecs::CodecProfile profile =
      SyntheticSparseProfile(shape, chunks, atoms);
  auto packed = PackSparseProfile(profile, shape);
  StatusCheck(packed.status(), "PackSparseProfile");
  float* prof = static_cast<float*>(DeviceAlloc(packed->data.size() * 4));
  CUDA_CHECK(cudaMemcpy(prof, packed->data.data(), packed->data.size() * 4,
                        cudaMemcpyHostToDevice));
  const uint64_t raw = shape.RawBytes();
  uint8_t* kv = static_cast<uint8_t*>(DeviceAlloc(raw * n));
  FillRandomHalf(kv, raw * n / 2, 777, b.stream());
  uint32_t* flags = static_cast<uint32_t*>(DeviceAlloc(4));
  CUDA_CHECK(cudaMemset(flags, 0, 4));
  codecs::SparseParams sp;
  sp.atoms_per_chunk = s;
  sp.chunks_per_head = chunks;
  auto pbytes = SparsePayloadBytes(shape, sp.ToBytes());
  StatusCheck(pbytes.status(), "SparsePayloadBytes");
  uint8_t* payload = static_cast<uint8_t*>(DeviceAlloc(*pbytes * n));
  SparseEncodeParams enc;
  enc.shape = shape;
  enc.codec_params = sp.ToBytes();
  enc.profile_layout = packed->layout;
  enc.profile = prof;
  enc.payload_bytes = *pbytes;
  enc.cublas = cublas;
  enc.error_flags = flags;
  enc.kv = kv;
  enc.payload = payload;
  StatusCheck(Validate(enc), "sparse encode");
  void* work = DeviceAlloc(WorkspaceBytes(enc));
  const double us_enc = b.Time([&] {
    for (int i = 0; i < n; ++i) {
      enc.kv = kv + i * raw;
      enc.payload = payload + i * *pbytes;
      StatusCheck(Launch(enc, work, b.stream()), "sparse encode");
    }
  });
  const uint32_t C = shape.head_dim / chunks;
  const double chunk_count = 2.0 * shape.num_layers * shape.num_tokens *
                             shape.num_kv_heads * chunks;
  const double bytes = static_cast<double>(n) * (raw + *pbytes);
  const double flops = 2.0 * n * chunk_count * s * atoms * C;
  const double mem_us = bytes / kDeviceCeiling * 1e6;
  const double fp_us = flops / kFp32Flops * 1e6;
  // GEMM writes the scores once, the select kernel reads them twice.
  const double score_us =
      3.0 * n * chunk_count * s * atoms * 4 / kDeviceCeiling * 1e6;
  const std::string name = "sparse N" + std::to_string(atoms) + " s" +
                           std::to_string(s) + " s_n" +
                           std::to_string(chunks) + " 32x256x8x128";
  b.AddRoofline(name + " encode x" + std::to_string(n), bytes, us_enc,
                std::max(mem_us, fp_us), fp_us > mem_us ? "FP32" : "HBM");
  std::printf("    (score-matrix traffic alone: %.3f ms at 3.0 TB/s; GEMM "
              "flops %.3f ms at 60 TFLOP/s)\n",
              score_us / 1000.0, fp_us / 1000.0);
  SparseDecodeParams dec;
  dec.shape = shape;
  dec.codec_params = EncodedCodecParams(enc);
  dec.profile_layout = packed->layout;
  dec.profile = prof;
  dec.payload_bytes = *pbytes;
  dec.error_flags = flags;
  const double us_dec = b.Time([&] {
    for (int i = 0; i < n; ++i) {
      dec.payload = payload + i * *pbytes;
      dec.kv = kv + i * raw;
      StatusCheck(Launch(dec, nullptr, b.stream()), "sparse decode");
    }
  });
  b.AddRoofline(name + " decode x" + std::to_string(n), bytes, us_dec, mem_us,
                "HBM");
  uint32_t host = 0;
  CUDA_CHECK(cudaMemcpy(&host, flags, 4, cudaMemcpyDeviceToHost));
  if (host != 0) {
    std::printf("  !! sparse: error flags %s\n",
                ErrorFlagsToStatus(host).ToString().c_str());
  }
  CUDA_CHECK(cudaFree(work));
  CUDA_CHECK(cudaFree(payload));
  CUDA_CHECK(cudaFree(flags));
  CUDA_CHECK(cudaFree(kv));
  CUDA_CHECK(cudaFree(prof));
}

}  // namespace

void BenchSparse(Bench& b) {
  cublasHandle_t cublas = nullptr;
  if (cublasCreate(&cublas) != CUBLAS_STATUS_SUCCESS) {
    std::printf("  sparse: cublasCreate failed, skipped\n");
    return;
  }
  BenchSparseCase(b, cublas, 1024, 2, 2);  // 1 bit/element.
  BenchSparseCase(b, cublas, 256, 4, 2);   // 2 bits/element.
  CUDA_CHECK(cudaStreamSynchronize(b.stream()));
  cublasDestroy(cublas);
}

}  // namespace strata::kernels::bench
