// The quant kernels on a GPU against the CPU codec: identical payload bytes
// on random blocks (every dtype, bit width, group size, key mode, sinks, a
// short last group) and on the real SmolLM2 fixture; decode identical to the
// CPU decode; data errors reported through the error word. Skips without a
// device.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "codecs/quant_codec.h"
#include "gtest/gtest.h"
#include "kernels/internal/launch.h"
#include "kernels/internal/quant_layout.h"
#include "kernels/kernel_errors.h"
#include "kernels/quant_kernels.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::KvTensor;
using codecs::QuantParams;
using testing::Describe;
using testing::DeviceBuffer;
using testing::ErrorWord;
using testing::FirstDifference;

constexpr uint8_t kPoison = 0xA5;

class QuantGpuTest : public testing::GpuTest {
 protected:
  struct Encoded {
    std::vector<uint8_t> payload;
    uint32_t flags = 0;
  };

  // GPU encode of `raw` into a poisoned payload buffer.
  Encoded Encode(const BlockShape& shape, const QuantParams& p,
                 const std::vector<uint8_t>& raw) {
    Encoded out;
    auto bytes = QuantPayloadBytes(shape, p.ToBytes());
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    if (!bytes.ok()) return out;
    DeviceBuffer kv(raw.size()), payload(*bytes);
    kv.Upload(raw, stream_);
    payload.Fill(kPoison, stream_);
    ErrorWord flags(stream_);
    QuantEncodeParams params;
    params.shape = shape;
    params.codec_params = p.ToBytes();
    params.kv = kv.get();
    params.payload = payload.get();
    params.payload_bytes = *bytes;
    params.error_flags = flags.get();
    EXPECT_EQ(WorkspaceBytes(params), 0u);
    const absl::Status s = Launch(params, nullptr, stream_);
    EXPECT_TRUE(s.ok()) << s;
    Sync();
    out.payload = payload.Download(stream_);
    out.flags = flags.Read();
    return out;
  }

  struct Decoded {
    std::vector<uint8_t> raw;
    uint32_t flags = 0;
  };

  Decoded Decode(const BlockShape& shape, const QuantParams& p,
                 const std::vector<uint8_t>& payload_bytes) {
    Decoded out;
    DeviceBuffer payload(payload_bytes.size()), kv(shape.RawBytes());
    payload.Upload(payload_bytes, stream_);
    kv.Fill(kPoison, stream_);
    ErrorWord flags(stream_);
    QuantDecodeParams params;
    params.shape = shape;
    params.codec_params = p.ToBytes();
    params.payload = payload.get();
    params.payload_bytes = payload_bytes.size();
    params.kv = kv.get();
    params.error_flags = flags.get();
    const absl::Status s = Launch(params, nullptr, stream_);
    EXPECT_TRUE(s.ok()) << s;
    Sync();
    out.raw = kv.Download(stream_);
    out.flags = flags.Read();
    return out;
  }

  // Encode and decode on the GPU; both must equal the CPU codec's bytes.
  void ExpectMatchesCpu(const KvTensor& kv, const QuantParams& p) {
    const std::string what = Describe(kv.shape, p);
    auto cpu = testing::CpuQuantEncode(kv, p);
    ASSERT_TRUE(cpu.ok()) << cpu.status() << " " << what;
    const Encoded gpu = Encode(kv.shape, p, testing::RawOf(kv));
    EXPECT_EQ(gpu.flags, 0u) << what;
    ASSERT_EQ(gpu.payload.size(), cpu->size()) << what;
    const int64_t diff = FirstDifference(gpu.payload, *cpu);
    ASSERT_EQ(diff, -1) << what << ": first differing payload byte " << diff
                        << " of " << cpu->size() << " (gpu "
                        << int{gpu.payload[diff]} << ", cpu "
                        << int{(*cpu)[diff]} << ")";
    auto cpu_raw = testing::CpuQuantDecodeRaw(kv.shape, p, *cpu);
    ASSERT_TRUE(cpu_raw.ok()) << cpu_raw.status() << " " << what;
    const Decoded dec = Decode(kv.shape, p, *cpu);
    EXPECT_EQ(dec.flags, 0u) << what;
    const int64_t raw_diff = FirstDifference(dec.raw, *cpu_raw);
    ASSERT_EQ(raw_diff, -1) << what << ": first differing decoded byte "
                            << raw_diff << " of " << cpu_raw->size();
  }
};

TEST_F(QuantGpuTest, EncodeAndDecodeMatchTheCpuCodecOnRandomBlocks) {
  std::mt19937 rng(testing::TestSeed("EncodeAndDecodeMatchTheCpuCodec"));
  const std::vector<testing::QuantCase> cases = testing::QuantCases();
  const size_t step = testing::QuickMode() ? 7 : 1;
  for (size_t i = 0; i < cases.size(); i += step) {
    const KvTensor kv = testing::RandomKv(cases[i].shape, rng, 3.0f);
    ExpectMatchesCpu(kv, cases[i].params);
    if (HasFatalFailure()) return;
  }
}

TEST_F(QuantGpuTest, LlamaShapedBlocksMatchTheCpuCodec) {
  std::mt19937 rng(testing::TestSeed("LlamaShapedBlocksMatchTheCpuCodec"));
  // Llama-3-8B: 32 layers x 256 tokens x 8 KV heads x 128 (quick: 4 layers).
  const uint32_t layers = testing::QuickMode() ? 4 : 32;
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    const BlockShape shape{dtype, layers, 256, 8, 128};
    const KvTensor kv = testing::RandomKv(shape, rng);
    for (uint8_t bits : {2, 4}) {
      QuantParams p;
      p.k_bits = p.v_bits = bits;
      p.k_group = p.v_group = 32;
      ExpectMatchesCpu(kv, p);
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(QuantGpuTest, RealFixtureMatchesTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status()
                       << " (set STRATA_KV_FIXTURE to the fixture's path)";
  for (codecs::RopeForm form :
       {codecs::RopeForm::kPreRope, codecs::RopeForm::kPostRope}) {
    auto kv =
        fx->Kv(1, 0, fx->num_layers, 0, fx->passages[1].num_tokens(), form);
    ASSERT_TRUE(kv.ok()) << kv.status();
    for (uint8_t bits : {2, 3, 4, 8}) {
      for (uint8_t k_group : {32, 64, 128}) {
        QuantParams p;
        p.k_bits = p.v_bits = bits;
        p.k_group = k_group;
        p.v_group = k_group == 128 ? 64 : k_group;  // head_dim is 64.
        ExpectMatchesCpu(*kv, p);
        if (HasFatalFailure()) return;
        if (testing::QuickMode()) break;
      }
    }
  }
  // Sinks and per-token keys on real data.
  auto kv = fx->Kv(0, 0, fx->num_layers, 0, fx->passages[0].num_tokens());
  ASSERT_TRUE(kv.ok());
  QuantParams p;
  p.n_sink = 4;
  p.keys_per_token = true;
  ExpectMatchesCpu(*kv, p);
}

TEST_F(QuantGpuTest, SignedZeroMinimaFollowTheCpuOrder) {
  std::mt19937 rng(testing::TestSeed("SignedZeroMinimaFollowTheCpuOrder"));
  const BlockShape shape{DType::kFloat16, 2, 96, 2, 64};
  const KvTensor kv = testing::SignedZeroKv(shape, rng);
  for (bool per_token : {false, true}) {
    QuantParams p;
    p.keys_per_token = per_token;
    ExpectMatchesCpu(kv, p);
  }
}

TEST_F(QuantGpuTest, ReportsInputTheCpuCodecRejects) {
  const BlockShape shape{DType::kBFloat16, 1, 64, 1, 64};
  std::mt19937 rng(1);
  QuantParams p;
  p.n_sink = 3;
  // A quantized value above the fp16 range of scale and min.
  KvTensor big = testing::RandomKv(shape, rng);
  big.at(1, 0, 10, 0, 5) = 131072.0f;
  EXPECT_EQ(testing::CpuQuantEncode(big, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  Encoded e = Encode(shape, p, testing::RawOf(big));
  EXPECT_EQ(e.flags, kErrorOutOfRange);
  EXPECT_EQ(ErrorFlagsToStatus(e.flags).code(),
            absl::StatusCode::kInvalidArgument);
  // A non-finite value in a sink token (bf16 +inf) and in a quantized one.
  for (uint32_t token : {1u, 40u}) {
    std::vector<uint8_t> raw = testing::RawOf(testing::RandomKv(shape, rng));
    const size_t at = (uint64_t{token} * 64 + 7) * 2;  // K, layer 0.
    raw[at] = 0x80;
    raw[at + 1] = 0x7F;
    e = Encode(shape, p, raw);
    EXPECT_EQ(e.flags, kErrorNonFiniteInput) << "token " << token;
  }
}

TEST_F(QuantGpuTest, ReportsCorruptPayloadsAsDataLoss) {
  const BlockShape shape{DType::kFloat16, 2, 64, 2, 64};
  std::mt19937 rng(2);
  const KvTensor kv = testing::RandomKv(shape, rng);
  QuantParams p;
  p.n_sink = 2;
  auto good = testing::CpuQuantEncode(kv, p);
  ASSERT_TRUE(good.ok());
  // A negative scale in the first group record after layer 0's K sinks.
  std::vector<uint8_t> bad = *good;
  const size_t sink_bytes = 2 * 128 * 2;
  bad[sink_bytes + 1] |= 0x80;
  EXPECT_EQ(testing::CpuQuantDecodeRaw(shape, p, bad).status().code(),
            absl::StatusCode::kDataLoss);
  Decoded d = Decode(shape, p, bad);
  EXPECT_EQ(d.flags, kErrorBadGroupRecord);
  EXPECT_EQ(ErrorFlagsToStatus(d.flags).code(), absl::StatusCode::kDataLoss);
  // An fp16 infinity in a sink token.
  bad = *good;
  bad[6] = 0x00;
  bad[7] = 0x7C;
  EXPECT_EQ(testing::CpuQuantDecodeRaw(shape, p, bad).status().code(),
            absl::StatusCode::kDataLoss);
  d = Decode(shape, p, bad);
  EXPECT_EQ(d.flags, kErrorBadSink);
}

TEST_F(QuantGpuTest, EveryTokenIsASinkOrNot) {
  std::mt19937 rng(3);
  const BlockShape shape{DType::kFloat16, 1, 32, 1, 64};
  const KvTensor kv = testing::RandomKv(shape, rng);
  QuantParams p;
  p.n_sink = 32;  // No quantized token at all.
  ExpectMatchesCpu(kv, p);
  const BlockShape one{DType::kFloat16, 3, 1, 2, 32};
  p.n_sink = 0;  // A single token: one short group per channel.
  ExpectMatchesCpu(testing::RandomKv(one, rng), p);
}

// Groups spanning -65504..65504: the largest codes decode above the fp16
// range (e.g. -65504 + 3 * 43680 = 65536) and must clamp to 65504 as on the
// CPU (the fp16 decode rounds two values at a time, then clamps in fp16).
TEST_F(QuantGpuTest, DecodeClampsToTheHalfRangeLikeTheCpu) {
  std::mt19937 rng(testing::TestSeed("DecodeClampsToTheHalfRange"));
  const BlockShape shape{DType::kFloat16, 2, 64, 2, 128};
  const float values[] = {-65504.0f, -40000.0f, -1.0f, 0.0f,
                          1.0f,      40000.0f,  65504.0f};
  KvTensor kv = KvTensor::Zeros(shape);
  for (float& x : kv.data) x = values[rng() % 7];
  for (uint8_t bits : {2, 4, 8}) {
    QuantParams p;
    p.k_bits = p.v_bits = bits;
    ExpectMatchesCpu(kv, p);
    if (HasFatalFailure()) return;
  }
}

// ---- The fp16 fast path (kernels/quant_encode_fp16.cu): every test first
// checks that its blocks take it.

bool TakesTheFastPath(const BlockShape& shape, const QuantParams& p) {
  return internal::QuantFp16FastPathApplies(
      internal::MakeQuantArgs(shape, p));
}

TEST_F(QuantGpuTest, Fp16FastPathMatchesTheCpuCodecForEveryBitsPairAndKeyMode) {
  std::mt19937 rng(testing::TestSeed("Fp16FastPathEveryBitsPair"));
  for (uint8_t kb : {2, 4, 8}) {
    for (uint8_t vb : {2, 4, 8}) {
      for (bool per_token : {false, true}) {
        for (uint16_t n_sink : {0, 16}) {
          QuantParams p;
          p.k_bits = kb;
          p.v_bits = vb;
          p.keys_per_token = per_token;
          p.n_sink = n_sink;
          const uint32_t heads = kb == vb ? 2 : 4;  // hd 256 or 512.
          const BlockShape shape{DType::kFloat16, 3,
                                 static_cast<uint32_t>(96 + n_sink), heads,
                                 128};
          ASSERT_TRUE(TakesTheFastPath(shape, p)) << Describe(shape, p);
          ExpectMatchesCpu(testing::RandomKv(shape, rng, 3.0f), p);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST_F(QuantGpuTest, Fp16FastPathSignedZeroMinimaFollowTheCpuOrder) {
  std::mt19937 rng(testing::TestSeed("Fp16FastPathSignedZeroMinima"));
  const BlockShape shape{DType::kFloat16, 2, 64, 2, 128};
  const KvTensor kv = testing::SignedZeroKv(shape, rng);
  for (bool per_token : {false, true}) {
    QuantParams p;
    p.keys_per_token = per_token;
    ASSERT_TRUE(TakesTheFastPath(shape, p));
    ExpectMatchesCpu(kv, p);
  }
}

// Values on a half-step grid of a power-of-two scale: most quotients are
// exact half-integers (ties to even), so the exact re-pack runs often.
TEST_F(QuantGpuTest, Fp16FastPathTiesTakeTheExactPath) {
  std::mt19937 rng(testing::TestSeed("Fp16FastPathTies"));
  const BlockShape shape{DType::kFloat16, 2, 64, 4, 128};
  for (uint8_t bits : {2, 4, 8}) {
    const uint32_t steps = 2 * ((1u << bits) - 1) + 1;
    KvTensor kv = KvTensor::Zeros(shape);
    for (float& x : kv.data) {
      x = -3.0f + 0.125f * static_cast<float>(rng() % steps);
    }
    QuantParams p;
    p.k_bits = p.v_bits = bits;
    ASSERT_TRUE(TakesTheFastPath(shape, p));
    ExpectMatchesCpu(kv, p);
    if (HasFatalFailure()) return;
  }
}

TEST_F(QuantGpuTest, Fp16FastPathRealKvValuesMatchTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  for (codecs::RopeForm form :
       {codecs::RopeForm::kPreRope, codecs::RopeForm::kPostRope}) {
    auto real = fx->Kv(1, 0, fx->num_layers, 0, 256, form);
    ASSERT_TRUE(real.ok()) << real.status();
    // The fixture's hd is 192; its values, in order, refill hd 256.
    const BlockShape shape{DType::kFloat16, fx->num_layers, 192, 4, 64};
    auto refilled = testing::RefillKv(*real, shape);
    ASSERT_TRUE(refilled.ok()) << refilled.status();
    const KvTensor& kv = *refilled;
    for (uint8_t bits : {2, 4, 8}) {
      QuantParams p;
      p.k_bits = p.v_bits = bits;
      ASSERT_TRUE(TakesTheFastPath(shape, p));
      ExpectMatchesCpu(kv, p);
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(QuantGpuTest, Fp16FastPathReportsNonFiniteInput) {
  std::mt19937 rng(4);
  const BlockShape shape{DType::kFloat16, 2, 64, 2, 128};
  QuantParams p;
  ASSERT_TRUE(TakesTheFastPath(shape, p));
  // fp16 +inf in a key (per-channel group), NaN in a value (per-token).
  for (int side : {0, 1}) {
    std::vector<uint8_t> raw = testing::RawOf(testing::RandomKv(shape, rng));
    const uint64_t element =
        ((static_cast<uint64_t>(side) * 2 + 1) * 64 + 37) * 256 + 101;  // Layer 1.
    raw[2 * element] = 0x00;
    raw[2 * element + 1] = side == 0 ? 0x7C : 0x7E;
    const Encoded e = Encode(shape, p, raw);
    EXPECT_EQ(e.flags, kErrorNonFiniteInput) << "side " << side;
  }
}

}  // namespace
}  // namespace strata::kernels
