// The aqua (AQUA-KV) kernels on a GPU against the CPU codec: identical
// payload bytes and decoded bytes (whole block and layer ranges) on fresh
// random inputs (every dtype, the settings of AquaCases) and on the real
// SmolLM2 fixture; data errors reported through the error word. Skips
// without a device.
#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codecs/aqua_codec.h"
#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "gtest/gtest.h"
#include "kernels/aqua_kernels.h"
#include "kernels/internal/aqua_arith.h"
#include "kernels/kernel_errors.h"
#include "kvstore/block_format.h"
#include "tests/kernels/aqua_test_util.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::AquaParams;
using codecs::CodecProfile;
using codecs::KvTensor;
using kvstore::BlockShape;
using kvstore::DType;
using testing::DeviceBuffer;
using testing::ErrorWord;
using testing::kPoison;
using testing::ProfileEncodeParams;
using testing::ProfileLaunchParams;
using testing::SameBytes;

class AquaGpuTest : public testing::GpuTest {
 protected:
  // GPU encode of kv and GPU decode of the CPU payload (whole block and two
  // layer ranges) must equal the CPU codec's bytes.
  // all_ranges = false: the whole-block decode only (each CPU decode walks
  // every layer; the fixture's 30 layers take seconds on the CPU).
  void ExpectMatchesCpu(const KvTensor& kv, const CodecProfile& profile,
                        const AquaParams& p, const std::string& what,
                        bool all_ranges = true) {
    codecs::CodecParams cpu_params;
    auto cpu = testing::CpuAquaEncode(kv, p, profile, &cpu_params);
    ASSERT_TRUE(cpu.ok()) << cpu.status() << " " << what;
    auto packed = PackAquaProfile(profile, kv.shape);
    ASSERT_TRUE(packed.ok()) << packed.status();
    DeviceBuffer prof(std::max<size_t>(packed->data.size() * 4, 16));
    if (!packed->data.empty()) prof.Upload(packed->data, stream_);
    const std::vector<uint8_t> raw = testing::RawOf(kv);
    DeviceBuffer in(raw.size()), payload(cpu->size());
    in.Upload(raw, stream_);
    payload.Fill(kPoison, stream_);
    ErrorWord flags(stream_);
    const auto enc = ProfileEncodeParams<AquaEncodeParams>(
        kv.shape, p.ToBytes(), packed->layout, prof, in, payload, cpu->size(),
        flags.get());
    auto bytes = AquaPayloadBytes(kv.shape, p.ToBytes());
    ASSERT_TRUE(bytes.ok());
    ASSERT_EQ(*bytes, cpu->size()) << what;
    DeviceBuffer ws(std::max<size_t>(WorkspaceBytes(enc), 256));
    ws.Fill(kPoison, stream_);
    const absl::Status launched = Launch(enc, ws.get(), stream_);
    ASSERT_TRUE(launched.ok()) << launched << " " << what;
    Sync();
    EXPECT_EQ(flags.Read(), 0u) << what;
    EXPECT_EQ(EncodedCodecParams(enc), cpu_params) << what;
    ASSERT_TRUE(SameBytes(payload.Download(stream_), *cpu, "payload")) << what;
    // Decode the CPU payload: all layers, the last one, the upper half.
    payload.Upload(*cpu, stream_);
    const uint32_t L = kv.shape.num_layers;
    const uint32_t ranges[][2] = {{0, 0}, {L - 1, 1}, {L / 2, L - L / 2}};
    for (const auto& r : ranges) {
      if (!all_ranges && r[1] != 0) continue;
      auto cpu_raw = testing::CpuAquaDecodeRaw(kv.shape, cpu_params, *cpu,
                                               profile, r[0], r[1]);
      ASSERT_TRUE(cpu_raw.ok()) << cpu_raw.status() << " " << what;
      auto dec = ProfileLaunchParams<AquaDecodeParams>(
          kv.shape, cpu_params, packed->layout, prof, payload, cpu->size());
      dec.layer_begin = r[0];
      dec.layer_count = r[1];
      ExpectDecodeEquals(dec, *cpu_raw, /*workspace_min=*/256,
                         absl::StrCat(what, " layers ", r[0], "+", r[1]));
      if (HasFatalFailure()) return;
    }
  }
};

TEST_F(AquaGpuTest, EncodeAndDecodeMatchTheCpuCodecOnRandomBlocks) {
  const uint32_t seed = testing::TestSeed("AquaRandom");
  std::mt19937 rng(seed);
  for (const testing::AquaCase& c : testing::AquaCases()) {
    auto profile = testing::RandomAquaProfile(c.shape, rng);
    ASSERT_TRUE(profile.ok()) << profile.status();
    for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3,
                        DType::kFloat32}) {
      BlockShape shape = c.shape;
      shape.dtype = dtype;
      ExpectMatchesCpu(testing::RandomKv(shape, rng), *profile, c.params,
                       absl::StrCat(testing::DescribeAqua(shape, c.params),
                                    " seed ", seed));
      if (HasFatalFailure()) return;
      if (testing::QuickMode()) break;
    }
  }
}

// More tokens than one prediction tile (32 x 64) in both directions, and a
// larger scale (residuals of many fp16 binades).
TEST_F(AquaGpuTest, LargerBlocksMatchTheCpuCodec) {
  const uint32_t seed = testing::TestSeed("AquaLarger");
  std::mt19937 rng(seed);
  const BlockShape shape{DType::kBFloat16, 3, 150, 3, 64};
  auto profile = testing::RandomAquaProfile(shape, rng, 500);
  ASSERT_TRUE(profile.ok()) << profile.status();
  AquaParams p;
  p.k_bits = 3;
  p.v_bits = 2;
  p.k_group = 64;
  p.n_sink = 7;
  ExpectMatchesCpu(testing::RandomKv(shape, rng, 30.0f), *profile, p,
                   absl::StrCat("larger seed ", seed));
}

// HD 1024 (Llama-3-8B's) and 192 tokens: the tile prediction kernel (the
// other tests' grids are small enough for the split kernel).
TEST_F(AquaGpuTest, WideBlocksUseTheTileKernelAndMatchTheCpuCodec) {
  const uint32_t seed = testing::TestSeed("AquaWide");
  std::mt19937 rng(seed);
  const BlockShape shape{DType::kFloat16, 2, 192, 8, 128};
  ASSERT_FALSE(internal::AquaUseSplitPredict(192, 1024));
  const CodecProfile profile = testing::SyntheticAquaProfile(shape, rng);
  AquaParams p;
  p.v_bits = 4;
  ExpectMatchesCpu(testing::RandomKv(shape, rng), profile, p,
                   absl::StrCat("wide seed ", seed), /*all_ranges=*/false);
  if (HasFatalFailure() || testing::QuickMode()) return;
  p.n_sink = 5;  // A short last key group.
  p.keys_per_token = true;
  p.k_bits = 3;
  ExpectMatchesCpu(testing::RandomKv(shape, rng), profile, p,
                   absl::StrCat("wide sinks seed ", seed),
                   /*all_ranges=*/false);
}

TEST_F(AquaGpuTest, RealFixtureMatchesTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  auto calib = fx->Kv(0, 0, fx->num_layers, 0, fx->passages[0].num_tokens());
  ASSERT_TRUE(calib.ok());
  auto profile = codecs::FitAquaProfile({*calib}, 1e-3f, "smollm2/gpu");
  ASSERT_TRUE(profile.ok()) << profile.status();
  const uint32_t T = std::min<uint32_t>(fx->passages[1].num_tokens(), 256);
  auto kv = fx->Kv(1, 0, fx->num_layers, 0, T);
  ASSERT_TRUE(kv.ok());
  struct Setting {
    uint8_t k_bits, v_bits, k_group;
    bool keys_per_token;
    uint16_t n_sink;
  };
  const Setting settings[] = {{2, 2, 32, false, 0},
                              {2, 2, 32, false, 4},
                              {3, 3, 64, false, 1},
                              {4, 4, 32, true, 0},
                              {8, 2, 128, false, 4}};
  bool first = true;
  for (const Setting& s : settings) {
    AquaParams p;
    p.k_bits = s.k_bits;
    p.v_bits = s.v_bits;
    p.k_group = s.k_group;
    p.keys_per_token = s.keys_per_token;
    p.n_sink = s.n_sink;
    ExpectMatchesCpu(*kv, *profile, p,
                     absl::StrCat("fixture ", fx->num_layers, "x", T, " ",
                                  testing::DescribeAqua(kv->shape, p)),
                     /*all_ranges=*/first);
    first = false;
    if (HasFatalFailure()) return;
    if (testing::QuickMode()) break;
  }
}

TEST_F(AquaGpuTest, ReportsNonFiniteInputAndBadPayloads) {
  std::mt19937 rng(7);
  const BlockShape shape{DType::kFloat16, 2, 12, 1, 32};
  auto profile = testing::RandomAquaProfile(shape, rng, 64);
  ASSERT_TRUE(profile.ok());
  auto packed = PackAquaProfile(*profile, shape);
  ASSERT_TRUE(packed.ok());
  DeviceBuffer prof(packed->data.size() * 4);
  prof.Upload(packed->data, stream_);
  AquaParams p;
  p.n_sink = 2;
  auto bytes = AquaPayloadBytes(shape, p.ToBytes());
  ASSERT_TRUE(bytes.ok());
  for (uint32_t token : {1u, 5u}) {  // A sink and a quantized token.
    KvTensor kv = testing::RandomKv(shape, rng);
    kv.at(1, 1, token, 0, 7) = INFINITY;
    const std::vector<uint8_t> raw = testing::RawOf(kv);
    DeviceBuffer in(raw.size()), payload(*bytes);
    in.Upload(raw, stream_);
    ErrorWord flags(stream_);
    const auto enc = ProfileEncodeParams<AquaEncodeParams>(
        shape, p.ToBytes(), packed->layout, prof, in, payload, *bytes,
        flags.get());
    DeviceBuffer ws(WorkspaceBytes(enc));
    ASSERT_TRUE(Launch(enc, ws.get(), stream_).ok());
    Sync();
    EXPECT_EQ(ErrorFlagsToStatus(flags.Read()).code(),
              absl::StatusCode::kInvalidArgument)
        << "token " << token;
  }
  // A payload of 0xFF bytes: records with a NaN scale and non-finite sinks.
  const std::vector<uint8_t> bad(*bytes, 0xFF);
  DeviceBuffer payload(*bytes), out(shape.RawBytes());
  payload.Upload(bad, stream_);
  ErrorWord dflags(stream_);
  AquaParams recorded = p;
  recorded.profile_id = profile->id();
  auto dec = ProfileLaunchParams<AquaDecodeParams>(
      shape, recorded.ToBytes(), packed->layout, prof, payload, *bytes);
  dec.kv = out.get();
  dec.error_flags = dflags.get();
  DeviceBuffer ws(WorkspaceBytes(dec));
  ASSERT_TRUE(Launch(dec, ws.get(), stream_).ok());
  Sync();
  const uint32_t f = dflags.Read();
  EXPECT_NE(f & kErrorBadGroupRecord, 0u);
  EXPECT_NE(f & kErrorBadSink, 0u);
  EXPECT_EQ(ErrorFlagsToStatus(f).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace strata::kernels
