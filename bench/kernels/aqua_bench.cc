// Benchmark of the aqua (AQUA-KV) kernels against their roofline. Part of
// kernels_bench (`kernels_bench --only aqua`).
//
// Every prediction output is a sequential fp32 sum in the CPU codec's order
// (8 lanes, separately rounded multiply and add: no FMA, no tensor cores),
// 3*HD^2 multiply-adds per token and layer >= 1. For a Llama-3-8B block
// (HD = 1024) that is ~770 multiply-adds per byte of fp16 KV, so the ops are
// compute-bound: the floor is max(bytes / 3.0 TB/s, 2 x MACs / (SMs x 128
// lanes x clock)), and the table gives the binding one ("FP32" or "HBM").
#include <algorithm>
#include <functional>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench/kernels/bench_harness.h"
#include "codecs/aqua_codec.h"
#include "kernels/aqua_kernels.h"
#include "kernels/kernel_errors.h"

namespace strata::kernels::bench {
namespace {

double AquaFp32Rate() {
  int sms = 0, khz = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
  return static_cast<double>(sms) * 128.0 * khz * 1e3;
}

void CheckAquaFlags(uint32_t* flags, const char* what) {
  uint32_t host = 0;
  CUDA_CHECK(cudaMemcpy(&host, flags, 4, cudaMemcpyDeviceToHost));
  if (host != 0) {
    std::printf("  !! %s: error flags %s\n", what,
                ErrorFlagsToStatus(host).ToString().c_str());
  }
}

// A synthetic packed profile (the kernels' speed does not depend on the
// values; fitting one on the CPU would take minutes): A ~ 0.5 I + noise, B
// mixes both inputs, so predictions stay in the inputs' range.
PackedAquaProfile SyntheticAquaProfile(const kvstore::BlockShape& shape) {
  const uint32_t hd = shape.num_kv_heads * shape.head_dim;
  PackedAquaProfile p;
  p.layout.num_layers = shape.num_layers;
  p.layout.num_kv_heads = shape.num_kv_heads;
  p.layout.head_dim = shape.head_dim;
  p.layout.layer_floats = 3 * uint64_t{hd} * hd + 2 * uint64_t{hd};
  p.layout.total_floats = (shape.num_layers - 1) * p.layout.layer_floats;
  p.layout.profile_id = 0x5eed;
  p.data.resize(p.layout.total_floats);
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const float noise = 0.5f / static_cast<float>(hd);
  for (size_t i = 0; i < p.data.size(); ++i) p.data[i] = noise * u(rng);
  for (uint32_t l = 1; l < shape.num_layers; ++l) {
    float* w = p.data.data() + (l - 1) * p.layout.layer_floats;
    for (uint32_t o = 0; o < hd; ++o) {
      w[uint64_t{o} * hd + o] += 0.5f;                                 // A
      w[uint64_t{hd} * hd + hd + uint64_t{o} * 2 * hd + o] += 0.25f;   // B·K
      w[uint64_t{hd} * hd + hd + uint64_t{o} * 2 * hd + hd + o] += 0.25f;
    }
  }
  return p;
}

// n blocks of `shape`, encoded then decoded, spread over `streams` streams.
void BenchAquaShape(Bench& b, const kvstore::BlockShape& shape, int n,
                    int streams, const std::string& label) {
  const double rate = AquaFp32Rate();
  const PackedAquaProfile packed = SyntheticAquaProfile(shape);
  float* prof = static_cast<float*>(
      DeviceAlloc(std::max<size_t>(packed.data.size() * 4, 16)));
  CUDA_CHECK(cudaMemcpy(prof, packed.data.data(), packed.data.size() * 4,
                        cudaMemcpyHostToDevice));
  const uint64_t raw = shape.RawBytes();
  uint8_t* kv = static_cast<uint8_t*>(DeviceAlloc(raw * n));
  FillRandomHalf(kv, raw * n / 2, 777, b.stream());
  uint8_t* out = static_cast<uint8_t*>(DeviceAlloc(raw * n));
  uint32_t* flags = static_cast<uint32_t*>(DeviceAlloc(4));
  CUDA_CHECK(cudaMemset(flags, 0, 4));
  const uint32_t hd = shape.num_kv_heads * shape.head_dim;
  for (int bits : {2, 4}) {
    codecs::AquaParams ap;
    ap.k_bits = static_cast<uint8_t>(bits);
    ap.v_bits = static_cast<uint8_t>(bits);
    auto pbytes = AquaPayloadBytes(shape, ap.ToBytes());
    StatusCheck(pbytes.status(), "AquaPayloadBytes");
    uint8_t* payload = static_cast<uint8_t*>(DeviceAlloc(*pbytes * n));
    AquaEncodeParams enc;
    enc.shape = shape;
    enc.codec_params = ap.ToBytes();
    enc.profile_layout = packed.layout;
    enc.profile = prof;
    enc.payload_bytes = *pbytes;
    enc.error_flags = flags;
    enc.kv = kv;
    enc.payload = payload;
    const size_t ws_enc = WorkspaceBytes(enc);
    AquaDecodeParams dec;
    dec.shape = shape;
    dec.codec_params = EncodedCodecParams(enc);
    dec.profile_layout = packed.layout;
    dec.profile = prof;
    dec.payload_bytes = *pbytes;
    dec.error_flags = flags;
    dec.payload = payload;
    dec.kv = out;
    const size_t ws_dec = WorkspaceBytes(dec);
    // One workspace per stream: blocks in flight at once need their own.
    const size_t ws_bytes = std::max<size_t>(std::max(ws_enc, ws_dec), 256);
    std::vector<uint8_t*> ws(streams);
    std::vector<cudaStream_t> st(streams);
    std::vector<cudaEvent_t> join(streams);
    cudaEvent_t fork;
    CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    for (int s = 0; s < streams; ++s) {
      ws[s] = static_cast<uint8_t*>(DeviceAlloc(ws_bytes));
      CUDA_CHECK(cudaStreamCreateWithFlags(&st[s], cudaStreamNonBlocking));
      CUDA_CHECK(cudaEventCreateWithFlags(&join[s], cudaEventDisableTiming));
    }
    // Block i on stream i % streams; the timed stream waits for all.
    auto run = [&](const std::function<void(int, cudaStream_t, void*)>& one) {
      if (streams == 1) {
        for (int i = 0; i < n; ++i) one(i, b.stream(), ws[0]);
        return;
      }
      CUDA_CHECK(cudaEventRecord(fork, b.stream()));
      for (int s = 0; s < streams; ++s) {
        CUDA_CHECK(cudaStreamWaitEvent(st[s], fork, 0));
      }
      for (int i = 0; i < n; ++i) one(i, st[i % streams], ws[i % streams]);
      for (int s = 0; s < streams; ++s) {
        CUDA_CHECK(cudaEventRecord(join[s], st[s]));
        CUDA_CHECK(cudaStreamWaitEvent(b.stream(), join[s], 0));
      }
    };
    const double us_enc = b.Time([&] {
      run([&](int i, cudaStream_t stream, void* w) {
        AquaEncodeParams e = enc;
        e.kv = kv + i * raw;
        e.payload = payload + i * *pbytes;
        StatusCheck(Launch(e, w, stream), "aqua encode");
      });
    });
    const double us_dec = b.Time([&] {
      run([&](int i, cudaStream_t stream, void* w) {
        AquaDecodeParams d = dec;
        d.payload = payload + i * *pbytes;
        d.kv = out + i * raw;
        StatusCheck(Launch(d, w, stream), "aqua decode");
      });
    });
    for (int s = 0; s < streams; ++s) {
      CUDA_CHECK(cudaFree(ws[s]));
      CUDA_CHECK(cudaStreamDestroy(st[s]));
      CUDA_CHECK(cudaEventDestroy(join[s]));
    }
    CUDA_CHECK(cudaEventDestroy(fork));
    const double bytes = static_cast<double>(n) * (raw + *pbytes);
    const double macs = static_cast<double>(n) * (shape.num_layers - 1) *
                        shape.num_tokens * 3.0 * hd * hd;
    const double mem_us = bytes / kDeviceCeiling * 1e6;
    const double fp_us = 2.0 * macs / rate * 1e6;
    const std::string name =
        "aqua K" + std::to_string(bits) + "V" + std::to_string(bits) +
        " G32 " + label +
        (streams > 1 ? " " + std::to_string(streams) + "str" : std::string());
    b.AddRoofline(name + " encode x" + std::to_string(n), bytes, us_enc,
                  std::max(mem_us, fp_us), fp_us > mem_us ? "FP32" : "HBM");
    b.AddRoofline(name + " decode x" + std::to_string(n), bytes, us_dec,
                  std::max(mem_us, fp_us), fp_us > mem_us ? "FP32" : "HBM");
    std::printf("    (%s: floors HBM %.3f ms, FP32 %.3f ms, ratio %.1fx)\n",
                name.c_str(), mem_us / 1000, fp_us / 1000,
                fp_us / std::max(mem_us, 1e-9));
    CUDA_CHECK(cudaFree(payload));
  }
  CheckAquaFlags(flags, "aqua");
  CUDA_CHECK(cudaFree(prof));
  CUDA_CHECK(cudaFree(kv));
  CUDA_CHECK(cudaFree(out));
  CUDA_CHECK(cudaFree(flags));
}

}  // namespace

void BenchAqua(Bench& b) {
  BenchAquaShape(b, kLlama, b.options().blocks, 1, "32x256x8x128");
  // The SmolLM2-135M fixture's geometry (HD = 192): 30 layers x 256 tokens.
  // One block cannot fill the GPU (launch- and latency-bound): one stream,
  // then 8 streams with a workspace each.
  const kvstore::BlockShape smol{kvstore::DType::kFloat16, 30, 256, 3, 64};
  BenchAquaShape(b, smol, 32, 1, "30x256x3x64");
  BenchAquaShape(b, smol, 32, 8, "30x256x3x64");
}

}  // namespace strata::kernels::bench
