// The quant codec (KIVI min-max with sinks and outliers) and bit packing.
#include "codecs/quant_codec.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include "codecs/bitpack.h"
#include "codecs/codec.h"
#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/codecs/codec_test_support.h"

namespace strata::codecs {
namespace {

using ::testing::HasSubstr;
using testing::kAllDtypes;
using testing::MeasureRoundTrip;
using testing::RelMseOf;
using ::testing::StartsWith;
using testing::StatusIs;
using testing::WithByte;

// Values as a cache of `dtype` holds them.
float RoundToDtypeForTest(float v, DType dtype) {
  return RoundToDtype(v, dtype);
}

// RandomKv rounded to shape.dtype.
KvTensor GaussianKv(const BlockShape& shape, uint32_t seed) {
  KvTensor t = testing::RandomKv(shape, seed);
  for (float& x : t.data) x = RoundToDtypeForTest(x, shape.dtype);
  return t;
}

const Codec& Quant() { return **FindCodec(CodecId::kQuant); }

KvTensor RoundTrip(const KvTensor& kv, const QuantParams& p) {
  auto block = EncodeKvBlock(kv, CodecId::kQuant, p.ToBytes());
  EXPECT_TRUE(block.ok()) << block.status();
  auto out = DecodeKvBlock(*block);
  EXPECT_TRUE(out.ok()) << out.status();
  return *out;
}

QuantParams Kivi(uint8_t bits, uint8_t group) {
  QuantParams p;
  p.k_bits = p.v_bits = bits;
  p.k_group = p.v_group = group;
  return p;
}

// ---- Bit packing.

TEST(BitPack, RoundTripsEveryWidthOnRandomCodesAtEveryOffset) {
  const uint32_t seed = std::random_device{}();
  std::printf("BitPack seed %u\n", seed);
  std::mt19937 rng(seed);
  for (int width : {2, 3, 4, 8, 1, 5, 7, 11, 13, 16, 21, 31, 32}) {
    for (uint64_t offset : {0, 1, 3, 7, 8, 13}) {
      const size_t count = 1 + rng() % 1000;
      std::vector<uint32_t> codes(count);
      const uint64_t mask = (uint64_t{1} << width) - 1;
      for (uint32_t& c : codes) c = static_cast<uint32_t>(rng() & mask);
      std::vector<uint8_t> bytes(PackedBytes(count * width + offset, 1) + 2);
      for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
      const std::vector<uint8_t> before = bytes;
      ASSERT_TRUE(PackBits(codes, width, offset, absl::MakeSpan(bytes)));
      std::vector<uint32_t> back(count);
      ASSERT_TRUE(UnpackBits(bytes, width, offset, absl::MakeSpan(back)));
      EXPECT_EQ(back, codes)
          << "width " << width << " offset " << offset << " seed " << seed;
      // Bits outside [offset, offset + count*width) are untouched.
      for (uint64_t bit = 0; bit < bytes.size() * 8; ++bit) {
        if (bit >= offset && bit < offset + count * width) continue;
        ASSERT_EQ((bytes[bit / 8] >> (bit % 8)) & 1,
                  (before[bit / 8] >> (bit % 8)) & 1)
            << "width " << width << " bit " << bit << " seed " << seed;
      }
      uint32_t one;
      ASSERT_TRUE(ReadBits(bytes, width, offset + (count - 1) * width, &one));
      EXPECT_EQ(one, codes.back());
    }
  }
}

TEST(BitPack, BitOrderIsLsbFirstAcrossByteBoundaries) {
  std::vector<uint8_t> out(3, 0);
  ASSERT_TRUE(PackBits({1, 2, 3, 4, 5, 6, 7, 0}, 3, 0, absl::MakeSpan(out)));
  EXPECT_EQ(out, (std::vector<uint8_t>{0xD1, 0x58, 0x1F}));
  std::vector<uint8_t> two(1, 0);
  ASSERT_TRUE(PackBits({0, 1, 2, 3}, 2, 0, absl::MakeSpan(two)));
  EXPECT_EQ(two[0], 0xE4);
}

TEST(BitPack, RejectsOverflowingValuesBadWidthsAndShortBuffers) {
  std::vector<uint8_t> out(1, 0);
  EXPECT_FALSE(PackBits({4}, 2, 0, absl::MakeSpan(out)));
  EXPECT_FALSE(PackBits({1}, 0, 0, absl::MakeSpan(out)));
  EXPECT_FALSE(PackBits({1}, 33, 0, absl::MakeSpan(out)));
  EXPECT_FALSE(PackBits({1, 1, 1}, 3, 0, absl::MakeSpan(out)));
  std::vector<uint32_t> back(3);
  EXPECT_FALSE(UnpackBits(out, 3, 0, absl::MakeSpan(back)));
  uint32_t v;
  EXPECT_FALSE(ReadBits(out, 2, 7, &v));
  EXPECT_TRUE(ReadBits(out, 2, 6, &v));
}

// ---- Accuracy.

// Min-max quantization of one group in fp32 (scale and min not rounded).
double Fp32GroupError(const std::vector<float>& x, int bits) {
  const float lo = *std::min_element(x.begin(), x.end());
  const float hi = *std::max_element(x.begin(), x.end());
  const float levels = static_cast<float>((1 << bits) - 1);
  const float s = (hi - lo) / levels;
  double err = 0;
  for (float v : x) {
    const float q =
        std::min(std::max(std::nearbyint((v - lo) / s), 0.0f), levels);
    err += std::pow(v - (lo + q * s), 2);
  }
  return err;
}

TEST(QuantCodec, GaussianRelMseMatchesKiviTargets) {
  // head_dim 128 so that values can use G = 128; tokens a multiple of 128.
  const BlockShape shape{DType::kFloat32, 2, 1024, 2, 128};
  const KvTensor kv = GaussianKv(shape, 7);
  const double targets[3][3] = {
      {0.154, 0.028, 0.0061}, {0.203, 0.037, 0.0080}, {0.251, 0.046, 0.0099}};
  const uint8_t groups[3] = {32, 64, 128};
  for (int gi = 0; gi < 3; ++gi) {
    for (int bits : {2, 3, 4, 8}) {
      const KvTensor out = RoundTrip(kv, Kivi(bits, groups[gi]));
      const double k = RelMseOf(kv, out, 0), v = RelMseOf(kv, out, 1);
      // The same quantizer in fp32 (no fp16 rounding of scale/min), keys.
      double err = 0, energy = 0;
      std::vector<float> group;
      for (uint32_t l = 0; l < shape.num_layers; ++l)
        for (uint32_t h = 0; h < shape.num_kv_heads; ++h)
          for (uint32_t d = 0; d < shape.head_dim; ++d)
            for (uint32_t t0 = 0; t0 < shape.num_tokens; t0 += groups[gi]) {
              group.clear();
              for (uint32_t t = t0; t < t0 + groups[gi]; ++t) {
                group.push_back(kv.at(0, l, t, h, d));
                energy += std::pow(kv.at(0, l, t, h, d), 2);
              }
              err += Fp32GroupError(group, bits);
            }
      std::printf("G=%3d B=%d relMSE K %.5f V %.5f (fp32 scale/min K %.5f)\n",
                  groups[gi], bits, k, v, err / energy);
      if (bits == 8) {
        EXPECT_LT(k, 1e-4);
        EXPECT_LT(v, 1e-4);
        continue;
      }
      const double target = targets[gi][bits - 2];
      EXPECT_NEAR(k, target, 0.1 * target)
          << "G " << int{groups[gi]} << " B " << bits;
      EXPECT_NEAR(v, target, 0.1 * target)
          << "G " << int{groups[gi]} << " B " << bits;
      // fp16 scale/min change the error by well under 1%.
      EXPECT_NEAR(k, err / energy, 0.01 * target);
    }
  }
}

TEST(QuantCodec, PerChannelKeysBeatPerTokenKeysOnOutlierChannels) {
  const BlockShape shape{DType::kFloat16, 2, 256, 2, 64};
  KvTensor kv = GaussianKv(shape, 11);
  for (uint32_t l = 0; l < 2; ++l)
    for (uint32_t t = 0; t < shape.num_tokens; ++t)
      for (uint32_t h = 0; h < 2; ++h)
        for (uint32_t d : {3u, 17u, 40u}) {
          float& x = kv.at(0, l, t, h, d);
          x = RoundToDtypeForTest(8.0f + 4.0f * x, shape.dtype);
        }
  QuantParams per_channel = Kivi(2, 32), per_token = Kivi(2, 32);
  per_token.keys_per_token = true;
  const double kc = RelMseOf(kv, RoundTrip(kv, per_channel), 0);
  const double kt = RelMseOf(kv, RoundTrip(kv, per_token), 0);
  std::printf(
      "2-bit keys with 3 outlier channels: per-channel %.4f, per-token %.4f\n",
      kc, kt);
  EXPECT_LT(kc, 0.25 * kt);
}

TEST(QuantCodec, ShortLastGroupAndSinksAndOutliersRoundTrip) {
  // 77 tokens: with 5 sinks, 72 quantized tokens = key groups 32, 32, 8.
  const BlockShape shape{DType::kFloat16, 2, 77, 2, 64};
  KvTensor kv = GaussianKv(shape, 5);
  std::mt19937 rng(5);
  for (int i = 0; i < 40; ++i) {  // Planted spikes.
    kv.data[rng() % kv.data.size()] = (rng() % 2 ? 1 : -1) * 60.0f;
  }
  QuantParams plain = Kivi(4, 32);
  QuantParams opts = plain;
  opts.n_sink = 5;
  opts.outlier_bp = 100;  // 1%.
  const KvTensor a = RoundTrip(kv, plain), b = RoundTrip(kv, opts);
  for (int k = 0; k < 2; ++k) {
    for (uint32_t l = 0; l < 2; ++l) {
      for (uint32_t t = 0; t < 5; ++t)
        for (uint32_t j = 0; j < 128; ++j)
          EXPECT_EQ(b.vec(k, l, t, 0)[j], kv.vec(k, l, t, 0)[j]) << "sink";
      for (uint32_t t = 5; t < 77; ++t)
        for (uint32_t j = 0; j < 128; ++j)
          if (std::fabs(kv.vec(k, l, t, 0)[j]) == 60.0f) {
            EXPECT_EQ(b.vec(k, l, t, 0)[j], kv.vec(k, l, t, 0)[j]) << "outlier";
          }
    }
    const double plain_err = RelMseOf(kv, a, k), opts_err = RelMseOf(kv, b, k);
    std::printf(
        "%c 4-bit with 40 spikes: plain %.5f, sinks+1%% outliers %.5f\n",
        "KV"[k], plain_err, opts_err);
    EXPECT_LT(opts_err, 0.5 * plain_err);
  }
}

TEST(QuantCodec, DecodeIsExactlyMinPlusCodeTimesScaleOfTheStoredFp16) {
  // One head of 32 channels, 32 tokens; every key channel holds 0..31.
  const BlockShape shape{DType::kFloat32, 1, 32, 1, 32};
  KvTensor kv = KvTensor::Zeros(shape);
  for (uint32_t t = 0; t < 32; ++t)
    for (uint32_t d = 0; d < 32; ++d)
      kv.at(0, 0, t, 0, d) = static_cast<float>(t);
  CodecParams params = Kivi(2, 32).ToBytes();
  auto payload = Quant().Encode(kv, params, nullptr);
  ASSERT_TRUE(payload.ok()) << payload.status();
  // K slab: 32 groups (scale, min) then 32*32 2-bit codes; V slab alike.
  ASSERT_EQ(payload->size(), 2u * (32 * 4 + 32 * 32 * 2 / 8));
  const uint16_t scale = FloatToHalf(31.0f / 3);
  EXPECT_EQ((*payload)[0] | ((*payload)[1] << 8), scale);
  EXPECT_EQ((*payload)[2] | ((*payload)[3] << 8), 0);  // min 0.
  // Channel 0 codes of tokens 4..7: round(t / 10.336) = 0, 0, 1, 1.
  EXPECT_EQ((*payload)[128 + 1], 0x50);
  KvTensor out;
  ASSERT_TRUE(Quant().Decode(shape, params, *payload, nullptr, {}, &out).ok());
  const float s = HalfToFloat(scale);
  for (uint32_t t = 0; t < 32; ++t) {
    const float q = std::nearbyint(t / s);
    EXPECT_EQ(out.at(0, 0, t, 0, 0), q * s) << t;
  }
}

// ---- Partial decode, determinism, accounting.

TEST(QuantCodec, PartialDecodeEqualsTheSliceOfAFullDecodeForEveryDtype) {
  const uint32_t seed = std::random_device{}();
  std::printf("PartialDecode seed %u\n", seed);
  std::mt19937 rng(seed);
  for (DType dtype : kAllDtypes) {
    const BlockShape shape{dtype, 3, static_cast<uint32_t>(70 + rng() % 60), 2,
                           64};
    const KvTensor kv = GaussianKv(shape, rng());
    QuantParams p = Kivi(2 + rng() % 3, 32);
    p.v_bits = 8;
    p.k_group = 64;
    p.keys_per_token = rng() % 2;
    p.n_sink = rng() % 4;
    p.outlier_bp = 150;
    auto block = EncodeKvBlock(kv, CodecId::kQuant, p.ToBytes());
    ASSERT_TRUE(block.ok()) << block.status();
    auto full = DecodeKvBlock(*block);
    ASSERT_TRUE(full.ok()) << full.status();
    for (int trial = 0; trial < 20; ++trial) {
      // By indices (1 in 5, else token 0) or a token range.
      const DecodeSelection sel = testing::RandomSelection(
          rng, 3, shape.num_tokens, trial % 2, /*one_in=*/5,
          /*fallback_token=*/0);
      ASSERT_TRUE(
          testing::PartialDecodeEqualsSlice(*block, nullptr, *full, sel))
          << DTypeName(dtype) << " seed " << seed;
    }
  }
}

TEST(QuantCodec, EncodingIsDeterministic) {
  const BlockShape shape{DType::kBFloat16, 2, 100, 3, 64};
  const KvTensor kv = GaussianKv(shape, 3);
  QuantParams p = Kivi(3, 64);
  p.n_sink = 4;
  p.outlier_bp = 50;
  EXPECT_EQ(*EncodeKvBlock(kv, CodecId::kQuant, p.ToBytes()),
            *EncodeKvBlock(kv, CodecId::kQuant, p.ToBytes()));
}

TEST(QuantCodec, Kivi2AtGroup32IsThreeBitsPlusTheHeader) {
  const BlockShape shape{DType::kFloat16, 2, 64, 2, 64};
  auto block = EncodeKvBlock(GaussianKv(shape, 1), CodecId::kQuant,
                             Kivi(2, 32).ToBytes());
  ASSERT_TRUE(block.ok());
  const double n = static_cast<double>(shape.ElementCount());
  EXPECT_EQ(block->size(), 96 + n * 3 / 8);
  EXPECT_DOUBLE_EQ(BitsPerElement(*block), 3.0 + 8.0 * 96 / n);
}

TEST(QuantCodec, BitsPerElementOfTheSettings) {
  // SmolLM2-135M: 30 layers x 3 KV heads x 64 dims, a 256-token fp16 block.
  const BlockShape shape{DType::kFloat16, 30, 256, 3, 64};
  const KvTensor kv = GaussianKv(shape, 2);
  struct Setting {
    const char* name;
    QuantParams p;
  };
  QuantParams sink = Kivi(2, 32);
  sink.n_sink = 4;
  QuantParams outl = Kivi(2, 32);
  outl.outlier_bp = 100;
  QuantParams k4v2 = Kivi(2, 32);
  k4v2.k_bits = 4;
  QuantParams g128 = Kivi(2, 128);  // Values: G = 64, the most head_dim allows.
  g128.v_group = 64;
  QuantParams g128_4 = g128;
  g128_4.k_bits = g128_4.v_bits = 4;
  const Setting settings[] = {
      {"KIVI-2 G32", Kivi(2, 32)},   {"KIVI-2 G64", Kivi(2, 64)},
      {"KIVI-2 K G128 V G64", g128}, {"KIVI-3 G32", Kivi(3, 32)},
      {"KIVI-4 G32", Kivi(4, 32)},   {"KIVI-4 K G128 V G64", g128_4},
      {"KIVI-8 G32", Kivi(8, 32)},   {"K4V2 G32", k4v2},
      {"KIVI-2 G32 +4 sinks", sink}, {"KIVI-2 G32 +1% outliers", outl}};
  const double expected[] = {3.0, 2.5, 2.375, 4.0, 5.0, 4.375, 9.0, 4.0};
  int i = 0;
  for (const Setting& s : settings) {
    auto block = EncodeKvBlock(kv, CodecId::kQuant, s.p.ToBytes());
    ASSERT_TRUE(block.ok()) << block.status();
    const double bits = BitsPerElement(*block);
    std::printf("%-26s %.4f bits/element\n", s.name, bits);
    const double header = 8.0 * 96 / shape.ElementCount();
    if (i < 8) {
      EXPECT_NEAR(bits, expected[i] + header, 1e-9) << s.name;
    }
    ++i;
  }
}

// ---- Bad input.

TEST(QuantCodec, BadParamsAreInvalidArgumentNamingTheField) {
  const BlockShape shape{DType::kFloat16, 1, 40, 1, 64};
  const KvTensor kv = GaussianKv(shape, 4);
  auto expect_bad = [&](const CodecParams& params, const std::string& field) {
    const auto named =
        StatusIs(absl::StatusCode::kInvalidArgument, StartsWith(field + ":"));
    EXPECT_THAT(Quant().ValidateParams(shape, params), named);
    EXPECT_THAT(
        std::string(
            EncodeKvBlock(kv, CodecId::kQuant, params).status().message()),
        StartsWith(field + ":"));
    KvTensor out;
    EXPECT_THAT(Quant().Decode(shape, params, std::vector<uint8_t>(100),
                               nullptr, {}, &out),
                named);
  };
  const CodecParams good = Kivi(2, 32).ToBytes();
  expect_bad(WithByte(good, 1, 5), "k_bits");
  expect_bad(WithByte(good, 2, 1), "v_bits");
  expect_bad(WithByte(good, 3, 48), "k_group");
  // Does not divide head_dim 64.
  expect_bad(WithByte(good, 4, 128), "v_group");
  expect_bad(WithByte(good, 0, 2), "version");
  expect_bad(CodecParams{}, "version");
  expect_bad(WithByte(good, 5, 2), "flags");
  expect_bad(WithByte(good, 20, 1), "reserved");
  QuantParams p = Kivi(2, 32);
  p.n_sink = 41;
  expect_bad(p.ToBytes(), "n_sink");
  p = Kivi(2, 32);
  p.outlier_bp = 10001;
  expect_bad(p.ToBytes(), "outlier_bp");
}

TEST(QuantCodec, NonFiniteOrOutOfRangeInputIsInvalidArgument) {
  const BlockShape shape{DType::kFloat32, 1, 32, 1, 32};
  KvTensor kv = GaussianKv(shape, 4);
  kv.data[7] = NAN;
  EXPECT_THAT(
      std::string(EncodeKvBlock(kv, CodecId::kQuant, Kivi(2, 32).ToBytes())
                      .status()
                      .message()),
      StartsWith("kv:"));
  kv.data[7] = 1e6f;  // Beyond the fp16 scale/min...
  EXPECT_EQ(
      EncodeKvBlock(kv, CodecId::kQuant, Kivi(2, 32).ToBytes()).status().code(),
      absl::StatusCode::kInvalidArgument);
  QuantParams p = Kivi(2, 32);
  p.outlier_bp = 10;  // ...unless it is kept as an outlier.
  auto block = EncodeKvBlock(kv, CodecId::kQuant, p.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(DecodeKvBlock(*block)->data[7], 1e6f);
}

TEST(QuantCodec, TruncatedOrPaddedPayloadIsDataLoss) {
  const BlockShape shape{DType::kFloat16, 2, 50, 2, 64};
  QuantParams p = Kivi(3, 32);
  p.outlier_bp = 100;
  CodecParams params = p.ToBytes();
  auto payload = Quant().Encode(GaussianKv(shape, 9), params, nullptr);
  ASSERT_TRUE(payload.ok());
  KvTensor out;
  testing::ExpectTruncatedAndPaddedAreDataLoss(
      [&](absl::Span<const uint8_t> p) {
        return Quant().Decode(shape, params, p, nullptr, {}, &out);
      },
      *payload, {size_t{0}, payload->size() - 1, payload->size() / 2},
      "payload:");
}

TEST(QuantCodec, CorruptedPayloadsGiveAnErrorOrAFiniteDecode) {
  const uint32_t seed = std::random_device{}();
  std::printf("Corruption seed %u\n", seed);
  std::mt19937 rng(seed);
  int errors = 0, decodes = 0;
  for (DType dtype : kAllDtypes) {
    const BlockShape shape{dtype, 2, 45, 2, 64};
    QuantParams p = Kivi(3, 32);
    p.n_sink = 3;
    p.outlier_bp = 200;
    CodecParams params = p.ToBytes();
    auto payload = Quant().Encode(GaussianKv(shape, rng()), params, nullptr);
    ASSERT_TRUE(payload.ok());
    ASSERT_NO_FATAL_FAILURE(testing::ExpectCorruptionsFailOrDecodeFinite(
        [&](absl::Span<const uint8_t> bad, KvTensor* out) {
          return Quant().Decode(shape, params, bad, nullptr, {}, out);
        },
        *payload, 200, rng, seed, &errors, &decodes));
  }
  std::printf("corrupted payloads: %d errors, %d finite decodes\n", errors,
              decodes);
}

// ---- Real KV.

TEST(QuantCodec, RealSmolLM2KvAtFourBitsIsNearLossless) {
  auto fx = LoadKvFixture(DefaultFixturePath());
  if (!fx.ok()) GTEST_SKIP() << fx.status();
  auto kv = fx->Kv(1, 0, fx->num_layers, 0, 256);
  ASSERT_TRUE(kv.ok()) << kv.status();
  for (int bits : {2, 4}) {
    for (bool per_token : {false, true}) {
      QuantParams p = Kivi(bits, 32);
      p.keys_per_token = per_token;
      auto e = MeasureRoundTrip(*kv, CodecId::kQuant, p.ToBytes(), nullptr);
      ASSERT_TRUE(e.ok()) << e.status();
      const double k = e->k, v = e->v;
      std::printf("SmolLM2 KIVI-%d G32 keys per %s: K %.5f V %.5f, %.3f bits\n",
                  bits, per_token ? "token  " : "channel", k, v, e->bits);
      if (bits == 4 && !per_token) {
        EXPECT_LT(k, 0.01);
        EXPECT_LT(v, 0.01);
      }
    }
  }
}

}  // namespace
}  // namespace strata::codecs
