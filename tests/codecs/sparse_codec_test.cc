// The sparse (CSR) codec: dictionary learning recovers planted dictionaries,
// error falls with the number of atoms, the payload is validated, partial
// decodes equal slices, and everything is deterministic.
#include "codecs/sparse_codec.h"

#include <cmath>
#include <cstdio>
#include <cstring>
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

using ::testing::HasSubstr;
using testing::MeasureRoundTrip;
using testing::PartialDecodeEqualsSlice;
using ::testing::StartsWith;
using testing::StatusIs;
using testing::WithByte;

// `count` random unit vectors of `dim` floats.
std::vector<float> RandomAtoms(uint32_t count, uint32_t dim,
                               std::mt19937& rng) {
  std::normal_distribution<float> n(0, 1);
  std::vector<float> atoms(size_t{count} * dim);
  for (uint32_t i = 0; i < count; ++i) {
    double norm = 0;
    for (uint32_t e = 0; e < dim; ++e) {
      atoms[i * dim + e] = n(rng);
      norm += atoms[i * dim + e] * atoms[i * dim + e];
    }
    for (uint32_t e = 0; e < dim; ++e) atoms[i * dim + e] /= std::sqrt(norm);
  }
  return atoms;
}

// Every chunk of `dim` channels is a sum of `k` distinct atoms of `atoms[kv]`
// with coefficients of magnitude in [1, 2] and random sign.
KvTensor SparseKv(const BlockShape& shape, uint32_t dim,
                  const std::vector<float> atoms[2], uint32_t k,
                  uint32_t seed) {
  KvTensor t = KvTensor::Zeros(shape);
  std::mt19937 rng(seed);
  const uint32_t count = static_cast<uint32_t>(atoms[0].size() / dim);
  std::uniform_int_distribution<uint32_t> pick(0, count - 1);
  std::uniform_real_distribution<float> mag(1, 2);
  const size_t half = t.data.size() / 2;
  for (int kv = 0; kv < 2; ++kv) {
    for (size_t c = 0; c < half / dim; ++c) {
      float* x = &t.data[kv * half + c * dim];
      std::vector<uint32_t> used;
      while (used.size() < k) {
        const uint32_t a = pick(rng);
        if (std::find(used.begin(), used.end(), a) != used.end()) continue;
        used.push_back(a);
        const float coef = mag(rng) * (rng() % 2 ? 1.0f : -1.0f);
        for (uint32_t e = 0; e < dim; ++e)
          x[e] += coef * atoms[kv][a * dim + e];
      }
    }
  }
  return t;
}

// Correlated Gaussian head vectors: x = M·g with a power-law spectrum and a
// random rotation per (kv, layer, head), plus a mean.
KvTensor CorrelatedGaussianKv(const BlockShape& shape, uint32_t seed) {
  std::mt19937 mix_rng(1234);  // Same mixing for every tensor: one "model".
  std::normal_distribution<float> n(0, 1);
  const uint32_t d = shape.head_dim;
  std::vector<std::vector<float>> mix;
  for (uint32_t m = 0; m < 2 * shape.num_layers * shape.num_kv_heads; ++m) {
    std::vector<float> a(size_t{d} * d);
    for (uint32_t i = 0; i < d; ++i) {
      for (uint32_t j = 0; j < d; ++j)
        a[i * d + j] = n(mix_rng) / std::sqrt(1.0f + j);
    }
    mix.push_back(std::move(a));
  }
  KvTensor t = KvTensor::Zeros(shape);
  std::mt19937 rng(seed);
  std::vector<float> g(d);
  for (int kv = 0; kv < 2; ++kv)
    for (uint32_t l = 0; l < shape.num_layers; ++l)
      for (uint32_t tok = 0; tok < shape.num_tokens; ++tok)
        for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
          const auto& a =
              mix[(kv * shape.num_layers + l) * shape.num_kv_heads + h];
          for (float& v : g) v = n(rng);
          float* x = t.vec(kv, l, tok, h);
          for (uint32_t i = 0; i < d; ++i) {
            float s = 0;
            for (uint32_t j = 0; j < d; ++j) s += a[i * d + j] * g[j];
            x[i] = s;
          }
        }
  return t;
}

CodecParams Params(uint8_t s, uint8_t s_n, uint8_t online = 0) {
  SparseParams p;
  p.atoms_per_chunk = s;
  p.chunks_per_head = s_n;
  p.online_atoms = online;
  return p.ToBytes();
}

double RoundTripRelMse(const KvTensor& kv, const CodecParams& params,
                       const CodecProfile& profile, double* bits = nullptr) {
  return testing::RoundTripRelMse(kv, CodecId::kSparse, params, profile, bits);
}

// Max over learned atoms of |cos| with each hidden atom; the fraction above
// `threshold`.
double RecoveredFraction(const std::vector<float>& hidden,
                         const ProfileTensor& dict, uint32_t dim,
                         double threshold) {
  const size_t hidden_count = hidden.size() / dim,
               learned = dict.data.size() / dim;
  size_t found = 0;
  for (size_t i = 0; i < hidden_count; ++i) {
    double best = 0;
    for (size_t j = 0; j < learned; ++j) {
      double dot = 0;
      for (uint32_t e = 0; e < dim; ++e)
        dot += hidden[i * dim + e] * dict.data[j * dim + e];
      best = std::max(best, std::fabs(dot));
    }
    if (best > threshold) ++found;
  }
  return static_cast<double>(found) / hidden_count;
}

TEST(SparseCodec, FittedDictionaryRecoversAPlantedDictionary) {
  // Chunks of 32 channels (d = 64, s_n = 2), each a 2-sparse combination of
  // 32 hidden unit atoms (separate ones for K and V).
  constexpr uint32_t kDim = 32, kHidden = 32;
  const BlockShape shape{DType::kFloat16, 2, 128, 2, 64};
  std::mt19937 rng(7);
  const std::vector<float> hidden[2] = {RandomAtoms(kHidden, kDim, rng),
                                        RandomAtoms(kHidden, kDim, rng)};
  const std::vector<KvTensor> calibration = {
      SparseKv(shape, kDim, hidden, 2, 1), SparseKv(shape, kDim, hidden, 2, 2)};
  SparseFitOptions opt;
  opt.num_atoms = kHidden;
  opt.chunks_per_head = 2;
  opt.layers_per_group = 2;
  opt.atoms_per_chunk = 2;
  opt.refine_rounds = 10;
  auto profile = FitSparseProfile(calibration, opt, "test/planted");
  ASSERT_TRUE(profile.ok()) << profile.status();
  const double recovered_k =
      RecoveredFraction(hidden[0], *profile->Find("csr.k.dict"), kDim, 0.95);
  const double recovered_v =
      RecoveredFraction(hidden[1], *profile->Find("csr.v.dict"), kDim, 0.95);
  const KvTensor test = SparseKv(shape, kDim, hidden, 2, 3);
  const double rel = RoundTripRelMse(test, Params(2, 2), *profile);
  // The floor: matching pursuit over the hidden dictionary itself (greedy
  // picks are not always right on coherent atoms).
  CodecProfile truth("test/truth");
  ASSERT_TRUE(truth.Put("csr.meta", {3}, {2, 2, 64}).ok());
  ASSERT_TRUE(truth.Put("csr.layer_group", {2}, {0, 0}).ok());
  ASSERT_TRUE(truth.Put("csr.k.dict", {1, kHidden, kDim}, hidden[0]).ok());
  ASSERT_TRUE(truth.Put("csr.v.dict", {1, kHidden, kDim}, hidden[1]).ok());
  const double floor = RoundTripRelMse(test, Params(2, 2), truth);
  std::printf(
      "planted dictionary: recovered K %.3f V %.3f (|cos| > 0.95); "
      "relMSE at s = 2: %.5f learned, %.5f hidden dictionary\n",
      recovered_k, recovered_v, rel, floor);
  EXPECT_GE(recovered_k, 0.9);
  EXPECT_GE(recovered_v, 0.9);
  EXPECT_LT(rel, 0.03);
  EXPECT_LT(rel, 2 * floor + 0.005);
}

TEST(SparseCodec, RelMseFallsMonotonicallyWithAtomsPerChunk) {
  const BlockShape shape{DType::kFloat16, 2, 64, 2, 64};
  const std::vector<KvTensor> calibration = {CorrelatedGaussianKv(shape, 11),
                                             CorrelatedGaussianKv(shape, 12)};
  SparseFitOptions opt;
  opt.num_atoms = 128;
  opt.chunks_per_head = 2;
  opt.layers_per_group = 2;
  opt.atoms_per_chunk = 2;
  opt.refine_rounds = 3;
  auto profile = FitSparseProfile(calibration, opt, "test/gauss");
  ASSERT_TRUE(profile.ok()) << profile.status();
  const KvTensor test = CorrelatedGaussianKv(shape, 13);
  double previous = INFINITY;
  for (uint8_t s : {1, 2, 4, 8}) {
    double bits = 0;
    const double rel = RoundTripRelMse(test, Params(s, 2), *profile, &bits);
    const double nominal = 32.0 * s * 2 / 64;
    std::printf(
        "correlated gaussian, s_n = 2, s = %d: %.1f bits/element "
        "(%.3f with header), relMSE %.4f\n",
        s, nominal, bits, rel);
    EXPECT_NEAR(bits, nominal, 0.05);
    EXPECT_LT(rel, previous);
    previous = rel;
  }
}

TEST(SparseCodec, TwoBitsOnCorrelatedGaussianDataIsReportedAgainstKivi) {
  // KIVI-2 costs 3 bits/element (G = 32) for relMSE 0.154 on Gaussian data;
  // CSR is expected to win only on structured data, so this test reports the
  // numbers and checks only that 2-bit CSR is a useful code (relMSE < 0.5).
  BlockShape shape{DType::kFloat16, 1, 1024, 2, 64};
  const std::vector<KvTensor> calibration = {CorrelatedGaussianKv(shape, 21)};
  shape.num_tokens = 128;
  const KvTensor test = CorrelatedGaussianKv(shape, 23);
  for (uint8_t s_n : {1, 2, 4}) {
    SparseFitOptions opt;
    opt.num_atoms = 256;
    opt.chunks_per_head = s_n;
    opt.layers_per_group = 1;
    opt.atoms_per_chunk = static_cast<uint32_t>(4 / s_n);
    opt.refine_rounds = 2;
    opt.kmeans_iterations = 4;
    auto profile = FitSparseProfile(calibration, opt, "test/gauss2");
    ASSERT_TRUE(profile.ok()) << profile.status();
    const double rel = RoundTripRelMse(
        test, Params(static_cast<uint8_t>(4 / s_n), s_n), *profile);
    std::printf(
        "2 bits/element (s_n = %d, s = %d, N = 256): relMSE %.4f "
        "(KIVI-2 at 3 bits: 0.154)\n",
        s_n, 4 / s_n, rel);
    EXPECT_LT(rel, 0.5);
  }
}

struct SmallSetup {
  BlockShape shape{DType::kFloat16, 3, 24, 2, 32};
  std::vector<float> hidden[2];
  CodecProfile profile{"test/small"};
  KvTensor kv;

  SmallSetup() {
    std::mt19937 rng(5);
    hidden[0] = RandomAtoms(24, 16, rng);
    hidden[1] = RandomAtoms(24, 16, rng);
    SparseFitOptions opt;
    opt.num_atoms = 24;
    opt.chunks_per_head = 2;
    opt.layers_per_group = 2;  // Groups {0, 1} and {2}.
    opt.atoms_per_chunk = 2;
    opt.refine_rounds = 2;
    profile = *FitSparseProfile({SparseKv(shape, 16, hidden, 2, 1)}, opt,
                                "test/small");
    kv = SparseKv(shape, 16, hidden, 3, 2);
  }
};

TEST(SparseCodec, OnlineAtomsCaptureBlockSpecificStructure) {
  // The block repeats a few directions the calibration data never showed.
  SmallSetup setup;
  std::mt19937 rng(99);
  const std::vector<float> novel = RandomAtoms(4, 16, rng);
  KvTensor kv = setup.kv;
  for (size_t c = 0; c < kv.data.size() / 16; ++c) {
    if (c % 3 != 0) continue;
    for (uint32_t e = 0; e < 16; ++e)
      kv.data[c * 16 + e] += 3 * novel[(c / 3 % 4) * 16 + e];
  }
  double bits_off = 0, bits_on = 0;
  const double off =
      RoundTripRelMse(kv, Params(2, 2, 0), setup.profile, &bits_off);
  const double on =
      RoundTripRelMse(kv, Params(2, 2, 8), setup.profile, &bits_on);
  std::printf(
      "online atoms: relMSE %.4f at %.3f bits without, %.4f at %.3f bits "
      "with 8 per layer\n",
      off, bits_off, on, bits_on);
  EXPECT_LT(on, 0.8 * off);
  EXPECT_GT(bits_on, bits_off);
}

TEST(SparseCodec, MissingOrMismatchedProfileIsFailedPrecondition) {
  SmallSetup setup;
  const CodecParams params = Params(2, 2);
  const auto profile_error =
      StatusIs(absl::StatusCode::kFailedPrecondition, StartsWith("profile"));
  EXPECT_THAT(
      EncodeKvBlock(setup.kv, CodecId::kSparse, params, nullptr).status(),
      profile_error);

  // Atoms of 16 channels cannot code chunks of 32 (s_n = 1).
  EXPECT_THAT(
      EncodeKvBlock(setup.kv, CodecId::kSparse, Params(2, 1), &setup.profile)
          .status(),
      profile_error);

  // A profile of a model with another layer count.
  BlockShape other = setup.shape;
  other.num_layers = 4;
  KvTensor other_kv = KvTensor::Zeros(other);
  EXPECT_THAT(EncodeKvBlock(other_kv, CodecId::kSparse, params, &setup.profile)
                  .status(),
              profile_error);
  // ... or other heads (the dictionaries would fit, the model does not).
  other = setup.shape;
  other.num_kv_heads = 3;
  EXPECT_THAT(EncodeKvBlock(KvTensor::Zeros(other), CodecId::kSparse, params,
                            &setup.profile)
                  .status(),
              profile_error);

  auto block =
      EncodeKvBlock(setup.kv, CodecId::kSparse, params, &setup.profile);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_THAT(DecodeKvBlock(*block, nullptr).status(), profile_error);
  CodecProfile changed = setup.profile;
  std::vector<float> dict = changed.Find("csr.k.dict")->data;
  dict[0] = -dict[0];
  ASSERT_TRUE(
      changed.Put("csr.k.dict", changed.Find("csr.k.dict")->dims, dict).ok());
  EXPECT_THAT(DecodeKvBlock(*block, &changed).status(), profile_error);
}

TEST(SparseCodec, CorruptPayloadsAreDataLoss) {
  SmallSetup setup;
  const Codec* codec = *FindCodec(CodecId::kSparse);
  CodecParams params = Params(2, 2, 4);
  auto payload = codec->Encode(setup.kv, params, &setup.profile);
  ASSERT_TRUE(payload.ok()) << payload.status();
  KvTensor out;
  auto decode = [&](absl::Span<const uint8_t> p) {
    return codec->Decode(setup.shape, params, p, &setup.profile, {}, &out);
  };
  ASSERT_TRUE(decode(*payload).ok());
  const KvTensor good = out;

  testing::ExpectTruncatedAndPaddedAreDataLoss(
      decode, *payload, {payload->size() - 1}, "payload");

  // Records follow 2 layers... of online atoms: [2][3][4][16] fp16.
  const size_t records = 2 * 3 * 4 * 16 * 2;
  for (uint16_t index : {uint16_t{24 + 4}, uint16_t{0xFFFF}}) {
    std::vector<uint8_t> bad = *payload;
    const size_t at = records + 4 * 101;
    bad[at] = static_cast<uint8_t>(index);
    bad[at + 1] = static_cast<uint8_t>(index >> 8);
    EXPECT_THAT(decode(bad),
                StatusIs(absl::StatusCode::kDataLoss, HasSubstr("atom index")))
        << index;
  }
  std::vector<uint8_t> inf_coef = *payload;
  inf_coef[records + 2] = 0x00;
  inf_coef[records + 3] = 0x7C;  // fp16 +inf.
  EXPECT_EQ(decode(inf_coef).code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> nan_atom = *payload;
  nan_atom[0] = 0x00;
  nan_atom[1] = 0x7E;  // fp16 NaN in the first online atom.
  EXPECT_EQ(decode(nan_atom).code(), absl::StatusCode::kDataLoss);
  // A failed decode leaves `out` as it was.
  EXPECT_EQ(out.data, good.data);
  // The largest valid index (the last online atom) decodes.
  std::vector<uint8_t> last = *payload;
  last[records] = 27;
  last[records + 1] = 0;
  EXPECT_TRUE(decode(last).ok());

  CodecParams bad_params = params;
  bad_params[20] = 1;
  // Bad params are the caller's error at decode as at encode.
  EXPECT_EQ(
      codec->Decode(setup.shape, bad_params, *payload, &setup.profile, {}, &out)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(SparseCodec, PartialDecodeEqualsTheSliceOfAFullDecode) {
  SmallSetup setup;
  for (DType dtype : testing::kAllDtypes) {
    SCOPED_TRACE(static_cast<int>(dtype));
    setup.kv.shape.dtype = dtype;
    auto block = EncodeKvBlock(setup.kv, CodecId::kSparse, Params(3, 2, 5),
                               &setup.profile);
    ASSERT_TRUE(block.ok()) << block.status();
    auto full = DecodeKvBlock(*block, &setup.profile);
    ASSERT_TRUE(full.ok()) << full.status();
    for (const DecodeSelection& sel :
         {DecodeSelection{.layer_begin = 1, .token_indices = {0, 7, 8, 23}},
          DecodeSelection{.layer_begin = 2,
          .layer_end = 3,
          .token_begin = 5,
          .token_end = 17}}) {
      ASSERT_TRUE(PartialDecodeEqualsSlice(*block, &setup.profile, *full, sel));
    }
  }
}

TEST(SparseCodec, FittingAndEncodingAreDeterministic) {
  SmallSetup a, b;
  EXPECT_EQ(a.profile.id(), b.profile.id());
  auto x = EncodeKvBlock(a.kv, CodecId::kSparse, Params(2, 2, 3), &a.profile);
  auto y = EncodeKvBlock(a.kv, CodecId::kSparse, Params(2, 2, 3), &b.profile);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(*x, *y);
  // The profile id travels in the params: bytes 8..15 of codec_params.
  auto header = kvstore::ParseBlockHeader(*x);
  ASSERT_TRUE(header.ok());
  auto p = SparseParams::FromBytes(header->codec_params);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->profile_id, a.profile.id());
}

TEST(SparseCodec, InvalidParamsAreRejectedNamingTheField) {
  SmallSetup setup;
  auto check = [&](const CodecParams& params, const char* field) {
    EXPECT_THAT(
        EncodeKvBlock(setup.kv, CodecId::kSparse, params, &setup.profile)
            .status(),
        StatusIs(absl::StatusCode::kInvalidArgument, StartsWith(field)));
  };
  check(Params(0, 2), "atoms_per_chunk");
  check(Params(2, 3), "chunks_per_head");
  check(CodecParams{}, "version");
  check(WithByte(Params(2, 2), 5, 1), "reserved");
  // Fit options and calibration data.
  SparseFitOptions opt;
  opt.num_atoms = 1000;  // More than the 192 chunks of layers 0-1.
  opt.chunks_per_head = 2;
  opt.layers_per_group = 2;
  EXPECT_THAT(
      FitSparseProfile({setup.kv}, opt, "m").status(),
      StatusIs(absl::StatusCode::kInvalidArgument, StartsWith("calibration")));
  opt.num_atoms = 8;
  opt.chunks_per_head = 3;
  EXPECT_THAT(
      std::string(FitSparseProfile({setup.kv}, opt, "m").status().message()),
      StartsWith("chunks_per_head"));
  EXPECT_THAT(
      std::string(
          FitSparseProfile({}, SparseFitOptions{}, "m").status().message()),
      StartsWith("calibration"));
  KvTensor nan_kv = setup.kv;
  nan_kv.data[17] = NAN;
  EXPECT_EQ(
      EncodeKvBlock(nan_kv, CodecId::kSparse, Params(2, 2), &setup.profile)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

// Real SmolLM2-135M KV (pre-RoPE keys, values): dictionaries fitted on the
// calibration passage, evaluated on the held-out one. A report, with loose
// sanity bounds; the numbers go to docs/codecs/sparse_lowrank.md.
TEST(SparseCodec, RealSmolLm2KvHeldOutReport) {
  auto fixture = LoadKvFixture(DefaultFixturePath());
  if (!fixture.ok()) GTEST_SKIP() << "no KV fixture: " << fixture.status();
  const uint32_t L = fixture->num_layers;
  auto calibration = fixture->Kv(0, 0, L, 0, fixture->passages[0].num_tokens());
  auto evaluation = fixture->Kv(1, 0, L, 0, fixture->passages[1].num_tokens());
  ASSERT_TRUE(calibration.ok() && evaluation.ok());
  SparseFitOptions opt;
  opt.num_atoms = 256;  // Small for test speed; docs report larger N.
  opt.chunks_per_head = 2;
  opt.layers_per_group = 5;
  opt.atoms_per_chunk = 2;
  opt.kmeans_iterations = 4;
  opt.refine_rounds = 2;
  opt.max_training_chunks = 4096;
  auto profile = FitSparseProfile({*calibration}, opt, fixture->model);
  ASSERT_TRUE(profile.ok()) << profile.status();
  for (uint8_t s : {1, 2}) {
    auto e = MeasureRoundTrip(*evaluation, CodecId::kSparse, Params(s, 2),
                              &*profile);
    ASSERT_TRUE(e.ok()) << e.status();
    std::printf(
        "SmolLM2 held-out, N = 256, s_n = 2, s = %d (%.3f bits/element): "
        "relMSE K %.4f V %.4f\n",
        s, e->bits, e->k, e->v);
    EXPECT_LT(e->k, 0.6);
    EXPECT_LT(e->v, 0.8);
  }
}

}  // namespace
}  // namespace strata::codecs
