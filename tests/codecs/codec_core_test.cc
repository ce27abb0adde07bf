// The codec framework: dtype conversions, KvTensor, profiles, selections and
// whole-block encode/decode with the raw codec.
#include <cmath>
#include <random>

#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/codecs/codec_test_support.h"

namespace strata::codecs {
namespace {

using testing::RandomKv;
using ::testing::StartsWith;

TEST(DtypeConversion, EveryHalfRoundTripsThroughFloat) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToHalf(f), h) << std::hex << h;
  }
}

TEST(DtypeConversion, EveryBFloat16RoundTripsThroughFloat) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = BFloat16ToFloat(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToBFloat16(f), b) << std::hex << b;
  }
}

TEST(DtypeConversion, EveryFp8E4M3RoundTripsAndSaturates) {
  for (uint32_t v = 0; v < 256; ++v) {
    const float f = Fp8E4M3ToFloat(static_cast<uint8_t>(v));
    if (std::isnan(f)) continue;
    if (v == 0x80) continue;  // -0 maps to -0 (0x80); checked below.
    EXPECT_EQ(FloatToFp8E4M3(f), v) << v;
  }
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(FloatToFp8E4M3(1e6f), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(-1e6f), 0xFE);
}

// The closed-form fp8 encoder picks the nearest code, ties to the even code.
TEST(DtypeConversion, Fp8E4M3PicksTheNearestCodeTiesToEven) {
  std::vector<float> magnitudes;
  for (uint32_t c = 0; c <= 0x7E; ++c) magnitudes.push_back(Fp8E4M3ToFloat(c));
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0, 1);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t c = rng() % 0x7E;
    // Points between codes c and c+1, including the exact midpoint.
    const float lo = magnitudes[c], hi = magnitudes[c + 1];
    const float x = i % 100 == 0 ? (lo + hi) / 2 : lo + (hi - lo) * u(rng);
    const float dlo = x - lo, dhi = hi - x;
    uint8_t want = dlo < dhi ? c : dhi < dlo ? c + 1 : ((c & 1) ? c + 1 : c);
    ASSERT_EQ(FloatToFp8E4M3(x), want) << x;
    ASSERT_EQ(FloatToFp8E4M3(-x), want | 0x80) << -x;
  }
}

TEST(DtypeConversion, HalfRoundsToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), 0x3C00);      // Tie: even.
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048), 0x3C02);      // Tie: even up.
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(1e9f), 0x7C00);
  EXPECT_EQ(FloatToHalf(5.96046448e-08f), 0x0001);         // Smallest subnormal.
}

TEST(RawBlocks, EncodeDecodeRoundTripAndPartialDecodeEqualsTheSlice) {
  const BlockShape shape{DType::kFloat32, 4, 16, 2, 8};
  const KvTensor kv = RandomKv(shape, 1);
  auto block = EncodeKvBlock(kv, CodecId::kRaw, {});
  ASSERT_TRUE(block.ok()) << block.status();
  auto full = DecodeKvBlock(*block);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->data, kv.data);
  EXPECT_DOUBLE_EQ(BitsPerElement(*block), 32.0 + 8.0 * 96 / shape.ElementCount());

  DecodeSelection sel;
  sel.layer_begin = 1;
  sel.layer_end = 3;
  sel.token_indices = {0, 5, 15};
  auto part = DecodeKvBlock(*block, nullptr, sel);
  ASSERT_TRUE(part.ok()) << part.status();
  ASSERT_EQ(part->shape.num_layers, 2u);
  ASSERT_EQ(part->shape.num_tokens, 3u);
  for (int k = 0; k < 2; ++k)
    for (uint32_t l = 0; l < 2; ++l)
      for (uint32_t t = 0; t < 3; ++t)
        for (uint32_t h = 0; h < 2; ++h)
          for (uint32_t d = 0; d < 8; ++d)
            EXPECT_EQ(part->at(k, l, t, h, d),
                      kv.at(k, l + 1, sel.token_indices[t], h, d));
}

TEST(RawBlocks, BadSelectionsAreRejectedNamingTheField) {
  const BlockShape shape{DType::kFloat16, 2, 4, 1, 8};
  auto block = *EncodeKvBlock(RandomKv(shape, 2), CodecId::kRaw, {});
  DecodeSelection sel;
  sel.layer_begin = 2;
  EXPECT_THAT(std::string(DecodeKvBlock(block, nullptr, sel).status().message()),
              StartsWith("layer_begin:"));
  sel = {};
  sel.token_indices = {3, 1};
  EXPECT_THAT(std::string(DecodeKvBlock(block, nullptr, sel).status().message()),
              StartsWith("token_indices:"));
}

TEST(CodecProfile, SerializeParseRoundTripsAndIdTracksContent) {
  CodecProfile p("test/model");
  ASSERT_TRUE(p.Put("pca.k.l0", {2, 3}, {1, 2, 3, 4, 5, 6}).ok());
  ASSERT_TRUE(p.Put("mean.k.l0", {3}, {0.5f, 0.25f, 0}).ok());
  auto bytes = p.Serialize();
  auto parsed = CodecProfile::Parse(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->model_id(), "test/model");
  EXPECT_EQ(parsed->id(), p.id());
  EXPECT_EQ(parsed->Find("pca.k.l0")->data, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  CodecProfile q = p;
  ASSERT_TRUE(q.Put("mean.k.l0", {3}, {0.5f, 0.25f, 1}).ok());
  EXPECT_NE(q.id(), p.id());
  EXPECT_EQ(p.Require("missing", {1}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(p.Require("pca.k.l0", {3, 2}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(CodecProfile, CorruptOrTruncatedFilesAreRejected) {
  CodecProfile p("m");
  ASSERT_TRUE(p.Put("t", {4}, {1, 2, 3, 4}).ok());
  auto bytes = p.Serialize();
  auto flipped = bytes;
  flipped[20] ^= 1;
  EXPECT_EQ(CodecProfile::Parse(flipped).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(CodecProfile::Parse(absl::MakeConstSpan(bytes).first(10)).status().code(),
            absl::StatusCode::kInvalidArgument);
  bytes[0] = 'X';
  EXPECT_EQ(CodecProfile::Parse(bytes).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::codecs
