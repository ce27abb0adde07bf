// The tokensparse codec: BUZZ selection (sinks + one heavy hitter per segment
// + recent window), dense and kept-token decode, the LESS-style summary, and
// corrupt payloads. Quality tests use fixed seeds (stated in each test) so
// their numbers are reproducible; they print what they measure.
#include "codecs/tokensparse_codec.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>

#include "codecs/codec.h"
#include "codecs/internal/registry.h"
#include "codecs/kv_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/codecs/codec_test_support.h"

namespace strata::codecs {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing::RandomKv;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// Reference softmax attention of one query over rows [n][d] (double).
std::vector<float> Attend(const float* q, const std::vector<const float*>& keys,
                          const std::vector<const float*>& values, uint32_t d) {
  std::vector<double> s(keys.size());
  for (size_t j = 0; j < keys.size(); ++j) {
    double dot = 0;
    for (uint32_t i = 0; i < d; ++i) dot += double{q[i]} * keys[j][i];
    s[j] = dot / std::sqrt(static_cast<double>(d));
  }
  const double m = *std::max_element(s.begin(), s.end());
  std::vector<double> acc(d, 0);
  double den = 0;
  for (size_t j = 0; j < keys.size(); ++j) {
    const double e = std::exp(s[j] - m);
    den += e;
    for (uint32_t i = 0; i < d; ++i) acc[i] += e * values[j][i];
  }
  std::vector<float> out(d);
  for (uint32_t i = 0; i < d; ++i) out[i] = static_cast<float>(acc[i] / den);
  return out;
}

double RelErr(const std::vector<float>& ref, const std::vector<float>& x) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double{ref[i]} - x[i]) * (ref[i] - x[i]);
    den += double{ref[i]} * ref[i];
  }
  return std::sqrt(num / den);
}

// Attention of `q` over the kept tokens of (layer 0 of) `kept`, head h.
std::vector<float> AttendKept(const float* q, const TokenSparseLayer& kept,
                              uint32_t h, bool with_summary) {
  const size_t n = kept.kept_per_head, d = kept.head_dim;
  auto keys = absl::MakeConstSpan(kept.keys).subspan(h * n * d, n * d);
  auto values = absl::MakeConstSpan(kept.values).subspan(h * n * d, n * d);
  auto o =
      AttendWithSummary(absl::MakeConstSpan(q, d), keys, values, kept.head_dim,
                        with_summary ? &kept.summaries[h] : nullptr);
  EXPECT_TRUE(o.ok()) << o.status();
  return o.ok() ? *o : std::vector<float>(d);
}

TokenSparseParams Stride(uint16_t sinks, uint16_t window, uint16_t stride) {
  TokenSparseParams p;
  p.n_sink = sinks;
  p.window = window;
  p.stride = stride;
  return p;
}

TEST(TokenSparse, KeepsSinksWindowAndTheHeaviestTokenOfEverySegmentPerHead) {
  const BlockShape shape{DType::kFloat16, 2, 100, 3, 8};
  const KvTensor kv = RandomKv(shape, 1);
  std::vector<float> scores(2 * 100 * 3);
  std::mt19937 rng(2);
  for (float& s : scores) s = std::uniform_real_distribution<float>(0, 1)(rng);
  // mid = 100 - 4 - 16 = 80 tokens, 10 segments of 8.
  auto block = EncodeTokenSparse(kv, Stride(4, 16, 8), scores);
  ASSERT_TRUE(block.ok()) << block.status();
  for (uint32_t l = 0; l < 2; ++l) {
    auto kept = DecodeKept(*block, l);
    ASSERT_TRUE(kept.ok()) << kept.status();
    ASSERT_EQ(kept->kept_per_head, 4u + 10 + 16);
    for (uint32_t h = 0; h < 3; ++h) {
      std::vector<uint32_t> want = {0, 1, 2, 3};
      for (uint32_t s = 0; s < 10; ++s) {
        uint32_t best = 4 + 8 * s;
        for (uint32_t t = best; t < 12 + 8 * s; ++t) {
          if (scores[(l * 100 + t) * 3 + h] > scores[(l * 100 + best) * 3 + h])
            best = t;
        }
        want.push_back(best);
      }
      for (uint32_t t = 84; t < 100; ++t) want.push_back(t);
      const std::vector<uint32_t> got(kept->positions.begin() + h * 30,
                                      kept->positions.begin() + (h + 1) * 30);
      EXPECT_EQ(got, want) << "layer " << l << " head " << h;
      for (uint32_t i = 0; i < 30; ++i) {
        for (uint32_t c = 0; c < 8; ++c) {
          EXPECT_EQ(kept->keys[(h * 30 + i) * 8 + c],
                    HalfToFloat(FloatToHalf(kv.at(0, l, want[i], h, c))));
          EXPECT_EQ(kept->values[(h * 30 + i) * 8 + c],
                    HalfToFloat(FloatToHalf(kv.at(1, l, want[i], h, c))));
        }
      }
    }
    EXPECT_TRUE(kept->summaries.empty());
  }
}

TEST(TokenSparse, BudgetFractionDerivesTheStrideAndTheBlockRecordsIt) {
  const BlockShape shape{DType::kFloat16, 1, 256, 2, 16};
  TokenSparseParams p;  // n_sink 4, window 32, budget 0.25.
  auto block =
      EncodeKvBlock(RandomKv(shape, 3), CodecId::kTokenSparse, p.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  auto header = kvstore::ParseBlockHeader(*block);
  ASSERT_TRUE(header.ok());
  auto recorded = TokenSparseParams::FromBytes(header->codec_params);
  ASSERT_TRUE(recorded.ok());
  // Target 64 tokens: 28 middle slots for 220 middle tokens -> stride 8.
  EXPECT_EQ(recorded->stride, 8);
  EXPECT_FLOAT_EQ(recorded->budget_fraction, 0.25f);
  auto kept = DecodeKept(*block, 0);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->kept_per_head, 64u);
  std::printf("tokensparse fp16 at budget 0.25: %.3f bits/element\n",
              BitsPerElement(*block));

  p.budget_fraction = 0.1f;  // 26 tokens < 4 + 32 + 1.
  EXPECT_THAT(
      Msg(EncodeKvBlock(RandomKv(shape, 3), CodecId::kTokenSparse, p.ToBytes())
              .status()),
      StartsWith("budget_fraction:"));
  p.budget_fraction = 0;
  EXPECT_EQ(
      EncodeKvBlock(RandomKv(shape, 3), CodecId::kTokenSparse, p.ToBytes())
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(EncodeTokenSparse(RandomKv(shape, 3), Stride(4, 32, 8),
                                    std::vector<float>(7))
                      .status()),
              StartsWith("scores:"));
  CodecParams bad = Stride(4, 32, 8).ToBytes();
  bad[20] = 1;
  EXPECT_EQ(EncodeKvBlock(RandomKv(shape, 3), CodecId::kTokenSparse, bad)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TokenSparse, PlantedHeavyTokensAreKeptAndOneScorePerTokenServesEveryHead) {
  const BlockShape shape{DType::kFloat32, 1, 200, 2, 8};
  std::vector<float> scores(200, 0.0f);  // [layers][tokens]: every head.
  const std::vector<uint32_t> planted = {7, 29, 30 + 16, 101, 150};
  for (uint32_t t : planted) scores[t] = 100;
  auto block = EncodeTokenSparse(RandomKv(shape, 4), Stride(2, 8, 16), scores);
  ASSERT_TRUE(block.ok()) << block.status();
  auto kept = DecodeKept(*block, 0);
  ASSERT_TRUE(kept.ok());
  for (uint32_t h = 0; h < 2; ++h) {
    auto begin = kept->positions.begin() + h * kept->kept_per_head;
    for (uint32_t t : planted) {
      EXPECT_TRUE(std::binary_search(begin, begin + kept->kept_per_head, t))
          << t;
    }
  }
}

TEST(TokenSparse, KeyNormProxyKeepsTheSmallestOrLargestKeysOfEachSegment) {
  const BlockShape shape{DType::kFloat32, 1, 40, 1, 4};
  KvTensor kv = RandomKv(shape, 5);
  for (uint32_t t = 0; t < 40; ++t) {
    for (uint32_t c = 0; c < 4; ++c) kv.at(0, 0, t, 0, c) = 1.0f + (t * 7 % 10);
  }
  for (bool high : {false, true}) {
    TokenSparseParams p = Stride(0, 0, 10);
    p.proxy_high_norm = high;
    auto block = EncodeKvBlock(kv, CodecId::kTokenSparse, p.ToBytes());
    ASSERT_TRUE(block.ok()) << block.status();
    auto kept = DecodeKept(*block, 0);
    ASSERT_TRUE(kept.ok());
    for (uint32_t s = 0; s < 4; ++s) {
      const uint32_t t = kept->positions[s];
      EXPECT_EQ(t * 7 % 10, high ? 9u : 0u) << "segment " << s << " kept " << t;
    }
  }
}

TEST(TokenSparse, DenseDecodeZeroFillsDroppedTokensAndPartialDecodeIsTheSlice) {
  const BlockShape shape{DType::kBFloat16, 3, 64, 2, 8};
  const KvTensor kv = RandomKv(shape, 6);
  TokenSparseParams p = Stride(2, 6, 4);
  p.summary = true;
  auto block = EncodeKvBlock(kv, CodecId::kTokenSparse, p.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  auto full = DecodeKvBlock(*block);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->shape, shape);
  for (uint32_t l = 0; l < 3; ++l) {
    auto kept = DecodeKept(*block, l);
    ASSERT_TRUE(kept.ok());
    for (uint32_t h = 0; h < 2; ++h) {
      auto begin = kept->positions.begin() + h * kept->kept_per_head;
      for (uint32_t t = 0; t < 64; ++t) {
        const bool is_kept =
            std::binary_search(begin, begin + kept->kept_per_head, t);
        for (int which = 0; which < 2; ++which) {
          const float want =
              is_kept ? HalfToFloat(FloatToHalf(kv.at(which, l, t, h, 0))) : 0;
          EXPECT_EQ(full->at(which, l, t, h, 0), want)
              << l << " " << t << " " << h;
        }
      }
    }
  }
  DecodeSelection range;
  range.layer_begin = 1;
  range.token_begin = 10;
  range.token_end = 50;
  DecodeSelection picks;
  picks.layer_end = 2;
  picks.token_indices = {0, 3, 17, 18, 40, 63};
  for (const DecodeSelection& sel : {range, picks}) {
    auto part = DecodeKvBlock(*block, nullptr, sel);
    ASSERT_TRUE(part.ok()) << part.status();
    for (int which = 0; which < 2; ++which)
      for (uint32_t l = 0; l < part->shape.num_layers; ++l)
        for (uint32_t t = 0; t < part->shape.num_tokens; ++t)
          for (uint32_t h = 0; h < 2; ++h)
            for (uint32_t c = 0; c < 8; ++c)
              ASSERT_EQ(
                  part->at(which, l, t, h, c),
                  full->at(which, sel.layer_begin + l, sel.Token(t), h, c));
  }
}

TEST(TokenSparse, EncodingIsDeterministic) {
  const BlockShape shape{DType::kFloat16, 2, 128, 2, 16};
  const KvTensor kv = RandomKv(shape, 7);
  TokenSparseParams p = Stride(4, 16, 6);
  p.summary = true;
  p.summary_rank = 16;
  std::vector<float> scores(2 * 128 * 2);
  std::iota(scores.begin(), scores.end(), 0.0f);
  EXPECT_EQ(*EncodeTokenSparse(kv, p, scores),
            *EncodeTokenSparse(kv, p, scores));
  EXPECT_EQ(*EncodeTokenSparse(kv, p, {}), *EncodeTokenSparse(kv, p, {}));
  EXPECT_EQ(*EncodeKvBlock(kv, CodecId::kTokenSparse, p.ToBytes()),
            *EncodeTokenSparse(kv, p, {}));
}

// Re-frames a modified payload as a block with a valid checksum.
std::vector<uint8_t> Reframe(const std::vector<uint8_t>& block,
                             std::vector<uint8_t> payload) {
  auto view = kvstore::ParseBlock(block);
  return *kvstore::EncodeBlock(view->header.shape, view->header.codec,
                               view->header.codec_params, payload);
}

std::vector<uint8_t> PayloadOf(const std::vector<uint8_t>& block) {
  auto view = kvstore::ParseBlock(block);
  return std::vector<uint8_t>(view->payload.begin(), view->payload.end());
}

TEST(TokenSparse, TruncatedPayloadsBadPositionsAndBadSummariesAreDataLoss) {
  const BlockShape shape{DType::kFloat16, 2, 40, 1, 4};
  TokenSparseParams p = Stride(2, 4, 8);  // K = 2 + 5 + 4 = 11 per head.
  p.summary = true;
  p.summary_rank = 4;
  auto block =
      EncodeKvBlock(RandomKv(shape, 8), CodecId::kTokenSparse, p.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  const std::vector<uint8_t> payload = PayloadOf(*block);

  std::vector<uint8_t> cut(payload.begin(), payload.end() - 1);
  EXPECT_EQ(DecodeKvBlock(Reframe(*block, cut)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_THAT(Msg(DecodeKept(Reframe(*block, cut), 0).status()),
              StartsWith("payload:"));

  const size_t layer1 = payload.size() / 2;
  for (uint16_t bad : {uint16_t{40}, uint16_t{1000}, uint16_t{10}}) {
    // Entry 2 of layer 1 is segment 0's pick: it must lie in [2, 9].
    std::vector<uint8_t> corrupt = payload;
    std::memcpy(&corrupt[layer1 + 2 * 2], &bad, 2);
    const auto framed = Reframe(*block, corrupt);
    EXPECT_THAT(Msg(DecodeKvBlock(framed).status()), StartsWith("positions:"))
        << bad;
    EXPECT_EQ(DecodeKept(framed, 1).status().code(),
              absl::StatusCode::kDataLoss);
    EXPECT_TRUE(DecodeKept(framed, 0).ok());  // Layer 0 is intact.
  }
  // Summary of layer 0 starts after 11 positions, 11 keys and 11 values.
  std::vector<uint8_t> corrupt = payload;
  const float nan = std::nanf("");
  std::memcpy(&corrupt[2 * 11 + 2 * 2 * 11 * 4], &nan, 4);  // alpha.
  EXPECT_THAT(Msg(DecodeKept(Reframe(*block, corrupt), 0).status()),
              StartsWith("summary:"));

  CodecParams bad_params = p.ToBytes();
  bad_params[6] = 0;  // stride 0 cannot be decoded.
  bad_params[7] = 0;
  auto framed =
      kvstore::EncodeBlock(shape, CodecId::kTokenSparse, bad_params, payload);
  EXPECT_THAT(Msg(DecodeKvBlock(*framed).status()),
              StartsWith("codec_params:"));
  EXPECT_EQ(DecodeKept(*framed, 0).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(TokenSparse, ValuesBeyondFp16ThatBreakTheSummaryAreRejectedAtEncode) {
  const BlockShape shape{DType::kFloat32, 1, 40, 1, 4};
  KvTensor kv = RandomKv(shape, 9);
  kv.at(1, 0, 11, 0, 0) = INFINITY;  // Dropped: ties keep the earliest.
  std::vector<float> scores(40, 0);
  TokenSparseParams p = Stride(2, 4, 8);
  p.summary = true;
  EXPECT_THAT(Msg(EncodeTokenSparse(kv, p, scores).status()),
              StartsWith("kv:"));
  p.summary = false;  // Without a summary the value is simply not kept.
  EXPECT_TRUE(EncodeTokenSparse(kv, p, scores).ok());
}

TEST(TokenSparse, AttendWithSummaryRejectsInconsistentArguments) {
  std::vector<float> q(4, 1), k(8, 1), v(8, 1);
  EXPECT_THAT(Msg(AttendWithSummary(q, k, v, 5, nullptr).status()),
              StartsWith("query:"));
  EXPECT_THAT(
      Msg(AttendWithSummary(q, k, std::vector<float>(4), 4, nullptr).status()),
      StartsWith("keys:"));
  EXPECT_THAT(Msg(AttendWithSummary(q, {}, {}, 4, nullptr).status()),
              StartsWith("keys:"));
  LessSummary s;
  s.rank = 2;
  s.head_dim = 4;
  s.dropped = 3;
  EXPECT_THAT(Msg(AttendWithSummary(q, k, v, 4, &s).status()),
              StartsWith("summary:"));
  auto plain = AttendWithSummary(q, k, v, 4, nullptr);
  ASSERT_TRUE(plain.ok());
  EXPECT_THAT(*plain, ::testing::Each(1.0f));
}

// Seed 11. Keys N(0, 1) in d = 32; 24 planted heavy tokens have keys 4u +
// N(0, 0.5) for a unit direction u, and queries are 8u + N(0, 1), so the
// heavy tokens draw most of the attention. Scores = attention accumulated
// over 16 past queries. BUZZ (4 sinks, window 16, stride 8: 50 of 256 tokens)
// against 50 tokens drawn uniformly (20 draws), on 16 fresh queries.
TEST(TokenSparseQuality, BuzzBeatsARandomSubsetOfTheSameSize) {
  const uint32_t T = 256, d = 32;
  const BlockShape shape{DType::kFloat32, 1, T, 1, d};
  std::mt19937 rng(11);
  std::normal_distribution<float> n(0, 1);
  KvTensor kv = RandomKv(shape, 12);
  std::vector<float> u(d);
  for (float& x : u) x = n(rng);
  const float un =
      std::sqrt(std::inner_product(u.begin(), u.end(), u.begin(), 0.0f));
  for (float& x : u) x /= un;
  std::vector<uint32_t> heavy(T - 20);
  std::iota(heavy.begin(), heavy.end(), 4);
  std::shuffle(heavy.begin(), heavy.end(), rng);
  heavy.resize(24);
  for (uint32_t t : heavy)
    for (uint32_t c = 0; c < d; ++c)
      kv.at(0, 0, t, 0, c) = 4 * u[c] + 0.5f * n(rng);
  auto query = [&] {
    std::vector<float> q(d);
    for (uint32_t c = 0; c < d; ++c) q[c] = 8 * u[c] + n(rng);
    return q;
  };
  std::vector<const float*> all_k, all_v;
  for (uint32_t t = 0; t < T; ++t) {
    all_k.push_back(kv.vec(0, 0, t, 0));
    all_v.push_back(kv.vec(1, 0, t, 0));
  }
  std::vector<float> scores(T, 0);
  for (int i = 0; i < 16; ++i) {
    const std::vector<float> q = query();
    std::vector<double> s(T);
    for (uint32_t t = 0; t < T; ++t)
      s[t] = std::inner_product(q.begin(), q.end(), all_k[t], 0.0) /
             std::sqrt(static_cast<double>(d));
    const double m = *std::max_element(s.begin(), s.end());
    double z = 0;
    for (double& x : s) z += (x = std::exp(x - m));
    for (uint32_t t = 0; t < T; ++t) scores[t] += static_cast<float>(s[t] / z);
  }
  auto block = EncodeTokenSparse(kv, Stride(4, 16, 8), scores);
  ASSERT_TRUE(block.ok()) << block.status();
  auto kept = DecodeKept(*block, 0);
  ASSERT_TRUE(kept.ok());
  ASSERT_EQ(kept->kept_per_head, 50u);
  double buzz = 0, random = 0;
  const int queries = 16, draws = 20;
  for (int i = 0; i < queries; ++i) {
    const std::vector<float> q = query();
    const std::vector<float> ref = Attend(q.data(), all_k, all_v, d);
    buzz += RelErr(ref, AttendKept(q.data(), *kept, 0, false)) / queries;
    for (int r = 0; r < draws; ++r) {
      std::vector<uint32_t> pick(T);
      std::iota(pick.begin(), pick.end(), 0);
      std::shuffle(pick.begin(), pick.end(), rng);
      std::vector<const float*> k, v;
      for (int j = 0; j < 50; ++j) {
        k.push_back(all_k[pick[j]]);
        v.push_back(all_v[pick[j]]);
      }
      random += RelErr(ref, Attend(q.data(), k, v, d)) / (queries * draws);
    }
  }
  std::printf(
      "attention error at 50/256 tokens: BUZZ %.4f, random subset %.4f\n", buzz,
      random);
  EXPECT_LT(buzz, 0.5 * random);
}

// Mean attention-output error of eviction alone and eviction + summary over
// `queries` N(0, 1) queries and every head, on a block whose middle is a
// background of keys mean + key_noise * N(0, 1) (mean ~ N(0, 1) per channel)
// and values c + N(0, 1) (a shared c ~ N(0, 1)). 4 sinks, window 32, stride 16
// (66 of 512 tokens kept), importance = the key-norm proxy.
struct SummaryErrors {
  double evict = 0, summary = 0;
};
SummaryErrors MeasureSummary(float key_noise, uint32_t rank, uint32_t seed) {
  const uint32_t T = 512, d = 64, H = 2;
  const BlockShape shape{DType::kFloat16, 1, T, H, d};
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0, 1);
  KvTensor kv = KvTensor::Zeros(shape);
  for (uint32_t h = 0; h < H; ++h) {
    std::vector<float> mean(d), common(d);
    for (uint32_t c = 0; c < d; ++c) {
      mean[c] = n(rng);
      common[c] = n(rng);
    }
    for (uint32_t t = 0; t < T; ++t) {
      for (uint32_t c = 0; c < d; ++c) {
        kv.at(0, 0, t, h, c) = mean[c] + key_noise * n(rng);
        kv.at(1, 0, t, h, c) = common[c] + n(rng);
      }
    }
  }
  // The reference sees the fp16-rounded cache, as the codec stores it.
  for (float& x : kv.data) x = HalfToFloat(FloatToHalf(x));
  TokenSparseParams p = Stride(4, 32, 16);
  p.summary = true;
  p.summary_rank = static_cast<uint8_t>(rank);
  auto block = EncodeKvBlock(kv, CodecId::kTokenSparse, p.ToBytes());
  auto kept = DecodeKept(*block, 0);
  SummaryErrors e;
  if (!kept.ok()) {
    ADD_FAILURE() << kept.status();
    return e;
  }
  const int queries = 32;
  for (uint32_t h = 0; h < H; ++h) {
    std::vector<const float*> all_k, all_v;
    for (uint32_t t = 0; t < T; ++t) {
      all_k.push_back(kv.vec(0, 0, t, h));
      all_v.push_back(kv.vec(1, 0, t, h));
    }
    for (int i = 0; i < queries; ++i) {
      std::vector<float> q(d);
      for (float& x : q) x = n(rng);
      const std::vector<float> ref = Attend(q.data(), all_k, all_v, d);
      e.evict +=
          RelErr(ref, AttendKept(q.data(), *kept, h, false)) / (queries * H);
      e.summary +=
          RelErr(ref, AttendKept(q.data(), *kept, h, true)) / (queries * H);
    }
  }
  return e;
}

// Where the summary helps: 446 of 512 tokens are dropped and their keys are
// near-duplicates (noise 0.3 around a shared mean), so together they hold
// most of the attention mass and plain eviction misses it. Seed 21.
TEST(TokenSparseQuality,
     SummaryBeatsPlainEvictionWhenDroppedTokensCarryTheMass) {
  const SummaryErrors e = MeasureSummary(0.3f, 32, 21);
  std::printf(
      "near-duplicate background (key noise 0.3), r = 32: eviction %.4f, "
      "eviction + summary %.4f\n",
      e.evict, e.summary);
  EXPECT_LT(e.summary, 0.8 * e.evict);
}

// Where it does not: with diverse dropped keys the positive random-feature
// estimate of sum exp(q.k/sqrt(d)) has a relative variance that grows like
// exp(|x + y|^2) (docs), and the summary is as likely to hurt as to help
// (r = 8 to 128 behave alike: docs). Reported over seeds 100-104; the
// assertion is the weak, true one: the output stays finite and within 1.5x
// of eviction's error.
TEST(TokenSparseQuality, SummaryOnDiverseDroppedKeysIsReportedNotClaimed) {
  for (float noise : {0.7f, 1.0f, 1.5f}) {
    SummaryErrors mean;
    int worse = 0;
    for (uint32_t seed = 100; seed < 105; ++seed) {
      const SummaryErrors e = MeasureSummary(noise, 32, seed);
      EXPECT_TRUE(std::isfinite(e.summary));
      EXPECT_LT(e.summary, 1.5 * e.evict);
      mean.evict += e.evict / 5;
      mean.summary += e.summary / 5;
      worse += e.summary > e.evict;
    }
    std::printf(
        "diverse background (key noise %.1f), r = 32, 5 seeds: eviction %.4f, "
        "eviction + summary %.4f, summary worse in %d of 5\n",
        noise, mean.evict, mean.summary, worse);
  }
}

// ---- Real SmolLM2 KV (tests/fixtures/smollm2_kv_v1.bin, docs/fixtures.md).

const KvFixture* Fixture() {
  static const KvFixture* fx = [] {
    absl::StatusOr<KvFixture> f = LoadKvFixture(DefaultFixturePath());
    return f.ok() ? new KvFixture(*std::move(f)) : nullptr;
  }();
  return fx;
}

// Evaluation passage (320 tokens): the block is tokens [0, 288) with
// post-RoPE keys; queries 0-15 (positions 288-303) accumulate the scores
// (attention over the block, summed over each KV head's query heads), and
// queries 16-31 (positions 304-319) are evaluated. Each evaluated query
// attends to the block's kept tokens plus, exactly, its own recent tokens
// [288, position]. Compared at the same kept count per head: BUZZ with
// accumulated scores, BUZZ with the key-norm proxy, and plain eviction
// (sinks + the most recent tokens, StreamingLLM-style).
TEST(TokenSparseRealKv, BuzzAgainstPlainEvictionOnSmolLM2) {
  const KvFixture* fx = Fixture();
  if (fx == nullptr) GTEST_SKIP() << "no fixture at " << DefaultFixturePath();
  const uint32_t P = 1, B = 288, L = fx->num_layers, H = fx->num_kv_heads,
                 QH = fx->num_q_heads, d = fx->head_dim, group = QH / H;
  auto all = fx->Kv(P, 0, L, 0, 320, RopeForm::kPostRope);
  ASSERT_TRUE(all.ok()) << all.status();
  auto block_kv = fx->Kv(P, 0, L, 0, B, RopeForm::kPostRope);
  ASSERT_TRUE(block_kv.ok());
  std::vector<FixtureQueries> queries;
  for (uint32_t l = 0; l < L; ++l) queries.push_back(*fx->Queries(P, l));
  auto logits = [&](uint32_t l, uint32_t qi, uint32_t qh, uint32_t upto) {
    std::vector<double> s(upto);
    const float* q = &queries[l].data[(size_t{qi} * QH + qh) * d];
    for (uint32_t t = 0; t < upto; ++t) {
      const float* k = all->vec(0, l, t, qh / group);
      s[t] = std::inner_product(q, q + d, k, 0.0) /
             std::sqrt(static_cast<double>(d));
    }
    return s;
  };
  std::vector<float> scores(size_t{L} * B * H, 0);
  for (uint32_t l = 0; l < L; ++l) {
    for (uint32_t qi = 0; qi < 16; ++qi) {
      for (uint32_t qh = 0; qh < QH; ++qh) {
        std::vector<double> s = logits(l, qi, qh, B);
        const double m = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (double& x : s) z += (x = std::exp(x - m));
        for (uint32_t t = 0; t < B; ++t)
          scores[(size_t{l} * B + t) * H + qh / group] += s[t] / z;
      }
    }
  }
  // 4 sinks + window 16 + stride 8 -> 4 + 34 + 16 = 54 of 288 tokens (19%).
  TokenSparseParams p = Stride(4, 16, 8);
  auto proxy = EncodeTokenSparse(*block_kv, p, {});
  p.proxy_high_norm = true;
  auto proxy_high = EncodeTokenSparse(*block_kv, p, {});
  p.summary = true;  // r = 32.
  auto buzz = EncodeTokenSparse(*block_kv, p, scores);
  ASSERT_TRUE(buzz.ok() && proxy.ok() && proxy_high.ok());
  // With `summary`, the block's dropped tokens enter through the summary.
  auto error_of = [&](const std::vector<uint8_t>* blk, uint32_t l,
                      bool summary = false) {
    std::vector<std::vector<uint32_t>> kept(H);
    absl::StatusOr<TokenSparseLayer> k;
    if (blk != nullptr) {
      k = DecodeKept(*blk, l);
      for (uint32_t h = 0; h < H; ++h)
        kept[h].assign(k->positions.begin() + h * k->kept_per_head,
                       k->positions.begin() + (h + 1) * k->kept_per_head);
    } else {  // Plain eviction: sinks + the 50 most recent block tokens.
      for (uint32_t h = 0; h < H; ++h) {
        for (uint32_t t = 0; t < 4; ++t) kept[h].push_back(t);
        for (uint32_t t = B - 50; t < B; ++t) kept[h].push_back(t);
      }
    }
    double err = 0;
    for (uint32_t qi = 16; qi < 32; ++qi) {
      const uint32_t pos = queries[l].positions[qi];
      for (uint32_t qh = 0; qh < QH; ++qh) {
        const float* q = &queries[l].data[(size_t{qi} * QH + qh) * d];
        std::vector<const float*> fk, fv, ck, cv;
        for (uint32_t t = 0; t <= pos; ++t) {
          fk.push_back(all->vec(0, l, t, qh / group));
          fv.push_back(all->vec(1, l, t, qh / group));
        }
        for (uint32_t t : kept[qh / group]) {
          ck.push_back(fk[t]);
          cv.push_back(fv[t]);
        }
        for (uint32_t t = B; t <= pos; ++t) {
          ck.push_back(fk[t]);
          cv.push_back(fv[t]);
        }
        std::vector<float> approx;
        if (summary) {
          std::vector<float> sk, sv;
          for (size_t j = 0; j < ck.size(); ++j) {
            sk.insert(sk.end(), ck[j], ck[j] + d);
            sv.insert(sv.end(), cv[j], cv[j] + d);
          }
          approx = *AttendWithSummary(absl::MakeConstSpan(q, d), sk, sv, d,
                                      &k->summaries[qh / group]);
        } else {
          approx = Attend(q, ck, cv, d);
        }
        err += RelErr(Attend(q, fk, fv, d), approx) / (16 * QH);
      }
    }
    return err;
  };
  double e_buzz = 0, e_summary = 0, e_proxy = 0, e_high = 0, e_evict = 0;
  for (uint32_t l = 0; l < L; ++l) {
    e_buzz += error_of(&*buzz, l) / L;
    e_summary += error_of(&*buzz, l, true) / L;
    e_proxy += error_of(&*proxy, l) / L;
    e_high += error_of(&*proxy_high, l) / L;
    e_evict += error_of(nullptr, l) / L;
  }
  std::printf(
      "SmolLM2 attention error, 54/288 block tokens, mean of 30 layers: BUZZ "
      "(accumulated attention) %.4f, + LESS summary r=32 %.4f; BUZZ "
      "(low-key-norm "
      "proxy) %.4f, (high-key-norm proxy) %.4f; plain eviction %.4f\n",
      e_buzz, e_summary, e_proxy, e_high, e_evict);
  EXPECT_LT(e_buzz, e_evict);
  EXPECT_LT(e_proxy, e_evict);
}

}  // namespace
}  // namespace strata::codecs
