// The lowrank (PCA) codec: planted low-rank structure is recovered to the
// noise level, error falls with rank, quantized latents trade bits for error,
// profiles and payloads are validated, partial decodes equal slices, and
// everything is deterministic.
#include "codecs/lowrank_codec.h"

#include <cmath>
#include <cstdio>
#include <random>

#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/codecs/codec_test_support.h"

namespace strata::codecs {
namespace {

using testing::MeasureRoundTrip;
using testing::PartialDecodeEqualsSlice;
using ::testing::StartsWith;
using testing::StatusIs;
using testing::WithByte;

// Per (kv, layer, head): x = μ + U·(σ ⊙ g) + noise·n with U a random d×rank
// orthonormal-ish basis (the same "model" for every seed), g, n ~ N(0, I).
KvTensor PlantedKv(const BlockShape& shape, uint32_t rank, float noise,
                   uint32_t seed) {
  const uint32_t d = shape.head_dim;
  std::mt19937 model_rng(4321);
  std::normal_distribution<float> n(0, 1);
  const size_t heads = size_t{2} * shape.num_layers * shape.num_kv_heads;
  std::vector<float> mean(heads * d), basis(heads * d * rank);
  for (float& m : mean) m = n(model_rng);
  for (float& b : basis) b = n(model_rng) / std::sqrt(static_cast<float>(d));
  KvTensor t = KvTensor::Zeros(shape);
  std::mt19937 rng(seed);
  std::vector<float> g(rank);
  for (int kv = 0; kv < 2; ++kv)
    for (uint32_t l = 0; l < shape.num_layers; ++l)
      for (uint32_t tok = 0; tok < shape.num_tokens; ++tok)
        for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
          const size_t m = (static_cast<size_t>(kv) * shape.num_layers + l) *
                               shape.num_kv_heads +
                           h;
          for (uint32_t j = 0; j < rank; ++j)
            g[j] = n(rng) * 4.0f / (1.0f + 0.2f * j);
          float* x = t.vec(kv, l, tok, h);
          for (uint32_t e = 0; e < d; ++e) {
            float s = mean[m * d + e];
            for (uint32_t j = 0; j < rank; ++j)
              s += basis[(m * d + e) * rank + j] * g[j];
            x[e] = s + noise * n(rng);
          }
        }
  return t;
}

CodecParams Params(uint16_t rank_k, uint16_t rank_v,
                   LatentFormat format = LatentFormat::kFloat16,
                   bool whiten = false) {
  LowRankParams p;
  p.rank_k = rank_k;
  p.rank_v = rank_v;
  p.format = format;
  p.flags = whiten ? LowRankParams::kFlagWhiten : 0;
  return p.ToBytes();
}

double RoundTripRelMse(const KvTensor& kv, const CodecParams& params,
                       const CodecProfile& profile, double* bits = nullptr) {
  return testing::RoundTripRelMse(kv, CodecId::kLowRank, params, profile, bits);
}

struct SmallSetup {
  BlockShape shape{DType::kFloat16, 3, 32, 2, 32};
  CodecProfile profile{"test/lowrank"};
  KvTensor kv;

  SmallSetup() {
    BlockShape cal = shape;
    cal.num_tokens = 256;
    profile =
        *FitLowRankProfile({PlantedKv(cal, 6, 0.1f, 1)}, 16, "test/lowrank");
    kv = PlantedKv(shape, 6, 0.1f, 2);
  }
};

TEST(LowRankCodec, PlantedRankStructureIsRecoveredToTheNoiseLevel) {
  constexpr uint32_t kRank = 8;
  constexpr float kNoise = 0.05f;
  BlockShape shape{DType::kFloat16, 2, 512, 2, 64};
  auto profile = FitLowRankProfile({PlantedKv(shape, kRank, kNoise, 1)}, 32,
                                   "test/planted");
  ASSERT_TRUE(profile.ok()) << profile.status();
  shape.num_tokens = 64;
  const KvTensor test = PlantedKv(shape, kRank, kNoise, 2);
  // Rank r keeps the noise inside the planted subspace: the error is the
  // noise outside it, (d - r)·noise² per vector.
  double energy = 0;
  for (float x : test.data) energy += double{x} * x;
  const double vectors = static_cast<double>(test.data.size()) / shape.head_dim;
  const double expected =
      (shape.head_dim - kRank) * kNoise * kNoise * vectors / energy;
  const double rel = RoundTripRelMse(test, Params(kRank, kRank), *profile);
  const double below =
      RoundTripRelMse(test, Params(kRank - 1, kRank - 1), *profile);
  std::printf(
      "planted rank %u + noise: relMSE %.3g at rank %u (noise floor %.3g), "
      "%.3g at rank %u\n",
      kRank, rel, kRank, expected, below, kRank - 1);
  EXPECT_GT(rel, 0.8 * expected);
  EXPECT_LT(rel, 1.25 * expected);
  EXPECT_GT(below, 5 * rel);
}

TEST(LowRankCodec, ErrorFallsWithRank) {
  BlockShape shape{DType::kFloat16, 1, 512, 2, 32};
  auto profile =
      FitLowRankProfile({PlantedKv(shape, 24, 0.05f, 3)}, 32, "test/ranks");
  ASSERT_TRUE(profile.ok()) << profile.status();
  shape.num_tokens = 64;
  const KvTensor test = PlantedKv(shape, 24, 0.05f, 4);
  double previous = INFINITY;
  for (uint16_t r : {1, 2, 4, 8, 16, 24, 32}) {
    double bits = 0;
    const double rel = RoundTripRelMse(test, Params(r, r), *profile, &bits);
    std::printf("rank %2u (fp16 latents, %.2f bits/element): relMSE %.3g\n", r,
                bits, rel);
    EXPECT_LT(rel, previous) << r;
    previous = rel;
  }
  EXPECT_LT(previous, 1e-5);  // Full rank: only fp16 rounding of the latents.
}

TEST(LowRankCodec, QuantizedLatentsTradeBitsForError) {
  BlockShape shape{DType::kFloat16, 1, 512, 2, 64};
  auto profile =
      FitLowRankProfile({PlantedKv(shape, 12, 0.05f, 5)}, 16, "test/quant");
  ASSERT_TRUE(profile.ok()) << profile.status();
  shape.num_tokens = 64;
  const KvTensor test = PlantedKv(shape, 12, 0.05f, 6);
  struct Case {
    LatentFormat format;
    bool whiten;
    const char* name;
  };
  double rel[5], bits[5];
  const Case cases[5] = {{LatentFormat::kFloat16, false, "fp16"},
                         {LatentFormat::kInt8, false, "int8"},
                         {LatentFormat::kInt8, true, "int8 whitened"},
                         {LatentFormat::kInt4, false, "int4"},
                         {LatentFormat::kInt4, true, "int4 whitened"}};
  for (int i = 0; i < 5; ++i) {
    rel[i] =
        RoundTripRelMse(test, Params(12, 12, cases[i].format, cases[i].whiten),
                        *profile, &bits[i]);
    std::printf("rank 12, %-14s: %.3f bits/element, relMSE %.4g\n",
                cases[i].name, bits[i], rel[i]);
  }
  EXPECT_NEAR(bits[0], 16.0 * 12 / 64, 0.05);
  EXPECT_NEAR(bits[1], (32 + 8.0 * 12) / 64, 0.05);
  EXPECT_NEAR(bits[3], (32 + 4.0 * 12) / 64, 0.05);
  EXPECT_LT(rel[1], 1.1 * rel[0]);  // int8 ≈ fp16: the rank dominates.
  EXPECT_GT(rel[3], rel[1]);
  EXPECT_LT(rel[4], rel[3]);  // Whitening helps 4-bit latents.
  EXPECT_LT(rel[4], 0.05);
}

TEST(LowRankCodec, ProfileMissingOrMismatchedIsFailedPrecondition) {
  SmallSetup setup;
  const CodecParams params = Params(4, 8);
  const auto profile_error =
      StatusIs(absl::StatusCode::kFailedPrecondition, StartsWith("profile"));
  EXPECT_THAT(
      EncodeKvBlock(setup.kv, CodecId::kLowRank, params, nullptr).status(),
      profile_error);
  // More components than the profile has.
  EXPECT_THAT(
      EncodeKvBlock(setup.kv, CodecId::kLowRank, Params(17, 4), &setup.profile)
          .status(),
      profile_error);
  // A profile of a model with other heads.
  BlockShape other = setup.shape;
  other.num_kv_heads = 3;
  EXPECT_THAT(EncodeKvBlock(KvTensor::Zeros(other), CodecId::kLowRank, params,
                            &setup.profile)
                  .status(),
              profile_error);

  auto block =
      EncodeKvBlock(setup.kv, CodecId::kLowRank, params, &setup.profile);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_THAT(DecodeKvBlock(*block, nullptr).status(), profile_error);
  CodecProfile changed = setup.profile;
  std::vector<float> mean = changed.Find("pca.v.mean")->data;
  mean[3] += 1;
  ASSERT_TRUE(
      changed.Put("pca.v.mean", changed.Find("pca.v.mean")->dims, mean).ok());
  EXPECT_THAT(DecodeKvBlock(*block, &changed).status(), profile_error);
}

TEST(LowRankCodec, CorruptPayloadsAreDataLoss) {
  SmallSetup setup;
  const Codec* codec = *FindCodec(CodecId::kLowRank);
  for (LatentFormat format :
       {LatentFormat::kFloat16, LatentFormat::kInt8, LatentFormat::kInt4}) {
    SCOPED_TRACE(static_cast<int>(format));
    CodecParams params = Params(5, 7, format);
    auto payload = codec->Encode(setup.kv, params, &setup.profile);
    ASSERT_TRUE(payload.ok()) << payload.status();
    KvTensor out;
    auto decode = [&](absl::Span<const uint8_t> p) {
      return codec->Decode(setup.shape, params, p, &setup.profile, {}, &out);
    };
    ASSERT_TRUE(decode(*payload).ok());
    testing::ExpectTruncatedAndPaddedAreDataLoss(
        decode, *payload, {payload->size() - 1}, "payload");
    // First record: fp16 latent 0, or the fp16 min, is +inf.
    std::vector<uint8_t> inf = *payload;
    inf[0] = 0x00;
    inf[1] = 0x7C;
    EXPECT_EQ(decode(inf).code(), absl::StatusCode::kDataLoss);
    if (format == LatentFormat::kFloat16) continue;
    std::vector<uint8_t> negative_scale = *payload;
    negative_scale[3] |= 0x80;
    negative_scale[2] |= 1;  // Non-zero magnitude.
    EXPECT_EQ(decode(negative_scale).code(), absl::StatusCode::kDataLoss);
    if (format == LatentFormat::kInt4) {
      // rank 5: 3 code bytes, the high nibble of the last must be zero.
      std::vector<uint8_t> pad = *payload;
      pad[4 + 2] |= 0x10;
      EXPECT_EQ(decode(pad).code(), absl::StatusCode::kDataLoss);
    }
  }
}

TEST(LowRankCodec, PartialDecodeEqualsTheSliceOfAFullDecode) {
  SmallSetup setup;
  for (DType dtype : testing::kAllDtypes) {
    SCOPED_TRACE(static_cast<int>(dtype));
    setup.kv.shape.dtype = dtype;
    for (const CodecParams& params :
         {Params(3, 5), Params(5, 3, LatentFormat::kInt8),
          Params(7, 4, LatentFormat::kInt4, true)}) {
      auto block =
          EncodeKvBlock(setup.kv, CodecId::kLowRank, params, &setup.profile);
      ASSERT_TRUE(block.ok()) << block.status();
      auto full = DecodeKvBlock(*block, &setup.profile);
      ASSERT_TRUE(full.ok()) << full.status();
      for (const DecodeSelection& sel :
           {DecodeSelection{.layer_begin = 1, .token_indices = {0, 3, 4, 31}},
            DecodeSelection{
                .layer_begin = 2, .token_begin = 9, .token_end = 20}}) {
        ASSERT_TRUE(
            PartialDecodeEqualsSlice(*block, &setup.profile, *full, sel));
      }
    }
  }
}

TEST(LowRankCodec, FittingAndEncodingAreDeterministic) {
  SmallSetup a, b;
  EXPECT_EQ(a.profile.id(), b.profile.id());
  for (const CodecParams& params :
       {Params(4, 8), Params(4, 8, LatentFormat::kInt4, true)}) {
    auto x = EncodeKvBlock(a.kv, CodecId::kLowRank, params, &a.profile);
    auto y = EncodeKvBlock(a.kv, CodecId::kLowRank, params, &b.profile);
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_EQ(*x, *y);
    auto header = kvstore::ParseBlockHeader(*x);
    ASSERT_TRUE(header.ok());
    EXPECT_EQ(LowRankParams::FromBytes(header->codec_params)->profile_id,
              a.profile.id());
  }
  // The basis is orthonormal and its columns come by decreasing variance.
  const ProfileTensor& basis = *a.profile.Find("pca.k.basis");
  const ProfileTensor& stddev = *a.profile.Find("pca.k.stddev");
  const uint32_t d = 32, r = 16;
  for (uint32_t i = 0; i < r; ++i) {
    if (i > 0) {
      EXPECT_GE(stddev.data[i - 1], stddev.data[i]);
    }
    for (uint32_t j = 0; j < r; ++j) {
      double dot = 0;
      for (uint32_t e = 0; e < d; ++e)
        dot += basis.data[e * r + i] * basis.data[e * r + j];
      EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-5);
    }
  }
}

TEST(LowRankCodec, InvalidParamsAreRejectedNamingTheField) {
  SmallSetup setup;
  auto check = [&](const CodecParams& params, const char* field) {
    EXPECT_THAT(
        EncodeKvBlock(setup.kv, CodecId::kLowRank, params, &setup.profile)
            .status(),
        StatusIs(absl::StatusCode::kInvalidArgument, StartsWith(field)));
  };
  check(Params(0, 4), "rank_k");
  check(Params(4, 33), "rank_v");
  check(Params(4, 4, LatentFormat::kFloat16, true), "flags");
  check(CodecParams{}, "version");
  check(WithByte(Params(4, 4), 1, 3), "format");
  check(WithByte(Params(4, 4), 30, 1), "reserved");
  EXPECT_EQ(FitLowRankProfile({setup.kv}, 33, "m").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Real SmolLM2-135M KV: PCA fitted on the calibration passage, evaluated on
// the held-out one. Pre-RoPE keys are much lower-rank than values.
TEST(LowRankCodec, RealSmolLm2KeysAreLowerRankThanValues) {
  auto fixture = LoadKvFixture(DefaultFixturePath());
  if (!fixture.ok()) GTEST_SKIP() << "no KV fixture: " << fixture.status();
  const uint32_t L = fixture->num_layers;
  auto calibration = fixture->Kv(0, 0, L, 0, fixture->passages[0].num_tokens());
  auto evaluation = fixture->Kv(1, 0, L, 0, fixture->passages[1].num_tokens());
  ASSERT_TRUE(calibration.ok() && evaluation.ok());
  auto profile = FitLowRankProfile({*calibration}, 32, fixture->model);
  ASSERT_TRUE(profile.ok()) << profile.status();
  for (uint16_t r : {8, 16, 32}) {
    auto e = MeasureRoundTrip(*evaluation, CodecId::kLowRank, Params(r, r),
                              &*profile);
    ASSERT_TRUE(e.ok()) << e.status();
    std::printf(
        "SmolLM2 held-out, rank %2u fp16 (%.2f bits/element): relMSE K %.4f "
        "V %.4f\n",
        r, e->bits, e->k, e->v);
    EXPECT_LT(e->k, e->v) << r;
  }
  for (bool whiten : {false, true}) {
    auto e = MeasureRoundTrip(*evaluation, CodecId::kLowRank,
                              Params(16, 32, LatentFormat::kInt4, whiten),
                              &*profile);
    ASSERT_TRUE(e.ok()) << e.status();
    std::printf(
        "SmolLM2 held-out, rank K 16 / V 32, int4%s (%.2f bits/element): "
        "relMSE K %.4f V %.4f\n",
        whiten ? " whitened" : "", e->bits, e->k, e->v);
  }
}

}  // namespace
}  // namespace strata::codecs
