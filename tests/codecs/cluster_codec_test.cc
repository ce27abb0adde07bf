// The cluster codec: the ClusterKV index (spherical k-means of post-RoPE
// keys), query-driven token selection, lossless partial recall, and corrupt
// indexes. Quality tests use fixed seeds (stated) and print what they measure.
#include "codecs/cluster_codec.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>

#include "codecs/codec.h"
#include "codecs/kv_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/codecs/codec_test_support.h"

namespace strata::codecs {
namespace {

using ::testing::StartsWith;
using testing::RandomKv;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

std::vector<float> UnitVector(uint32_t d, std::mt19937& rng) {
  std::normal_distribution<float> n(0, 1);
  std::vector<float> u(d);
  for (float& x : u) x = n(rng);
  const float norm =
      std::sqrt(std::inner_product(u.begin(), u.end(), u.begin(), 0.0f));
  for (float& x : u) x /= norm;
  return u;
}

// Keys of layers >= 2: token t >= sinks belongs to cluster (t * 7) % k (the
// same for every head) and has key scale * u_{head, cluster} + noise * N(0, 1).
KvTensor ClusteredKv(const BlockShape& shape, uint32_t sinks, uint32_t k,
                     float scale, float noise, uint32_t seed,
                     std::vector<std::vector<float>>* directions) {
  KvTensor kv = RandomKv(shape, seed);
  std::mt19937 rng(seed + 1);
  std::normal_distribution<float> n(0, 1);
  directions->clear();
  for (uint32_t h = 0; h < shape.num_kv_heads; ++h)
    for (uint32_t c = 0; c < k; ++c)
      directions->push_back(UnitVector(shape.head_dim, rng));
  for (uint32_t l = 2; l < shape.num_layers; ++l)
    for (uint32_t t = sinks; t < shape.num_tokens; ++t)
      for (uint32_t h = 0; h < shape.num_kv_heads; ++h)
        for (uint32_t i = 0; i < shape.head_dim; ++i)
          kv.at(0, l, t, h, i) =
              scale * (*directions)[h * k + (t * 7) % k][i] + noise * n(rng);
  return kv;
}

// Softmax over the block's tokens of one query head reading KV head `kvh`.
std::vector<double> Softmax(const KvTensor& kv, uint32_t layer, uint32_t kvh,
                            const float* q) {
  const uint32_t T = kv.shape.num_tokens, d = kv.shape.head_dim;
  std::vector<double> s(T);
  for (uint32_t t = 0; t < T; ++t) {
    const float* k = kv.vec(0, layer, t, kvh);
    s[t] = std::inner_product(q, q + d, k, 0.0) /
           std::sqrt(static_cast<double>(d));
  }
  const double m = *std::max_element(s.begin(), s.end());
  double z = 0;
  for (double& x : s) z += (x = std::exp(x - m));
  for (double& x : s) x /= z;
  return s;
}

double Mass(const std::vector<double>& probs,
            const std::vector<uint32_t>& selected) {
  double covered = 0;
  for (uint32_t t : selected) covered += probs[t];
  return covered;
}

// Attention mass that `selected` covers, for one query head reading KV head
// `kvh` of `layer`.
double CoveredMass(const KvTensor& kv, uint32_t layer, uint32_t kvh,
                   const float* q, const std::vector<uint32_t>& selected) {
  return Mass(Softmax(kv, layer, kvh, q), selected);
}

TEST(ClusterCodec, SelectionReturnsTheClusterAlignedWithTheQuery) {
  const BlockShape shape{DType::kFloat16, 3, 256, 2, 32};
  std::vector<std::vector<float>> dirs;
  const KvTensor kv = ClusteredKv(shape, 4, 8, 5, 0.3f, 1, &dirs);
  ClusterParams p;
  p.num_clusters = 8;
  auto block = EncodeKvBlock(kv, CodecId::kCluster, p.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  // 4 query heads (2 per KV head), all aligned with cluster 3 of their head.
  std::vector<float> q;
  for (uint32_t qh = 0; qh < 4; ++qh)
    for (float x : dirs[(qh / 2) * 8 + 3]) q.push_back(4 * x);
  std::vector<uint32_t> want = {0, 1, 2, 3};
  for (uint32_t t = 4; t < 256; ++t)
    if ((t * 7) % 8 == 3) want.push_back(t);
  std::sort(want.begin(), want.end());
  auto sel = SelectTokens(*block, 2, q, 4, static_cast<uint32_t>(want.size()));
  ASSERT_TRUE(sel.ok()) << sel.status();
  EXPECT_EQ(*sel, want);

  EXPECT_EQ(*SelectTokens(*block, 2, q, 4, static_cast<uint32_t>(want.size()),
                          BudgetScope::kTotal),
            want);

  // A bigger budget adds the next-best cluster's lowest tokens: 5 per query
  // head (the two KV heads may prefer different clusters), or 5 in all.
  const uint32_t budget = static_cast<uint32_t>(want.size()) + 5;
  for (BudgetScope scope : {BudgetScope::kPerQueryHead, BudgetScope::kTotal}) {
    sel = SelectTokens(*block, 2, q, 4, budget, scope);
    ASSERT_TRUE(sel.ok());
    EXPECT_TRUE(
        std::includes(sel->begin(), sel->end(), want.begin(), want.end()));
    if (scope == BudgetScope::kTotal) {
      EXPECT_EQ(sel->size(), budget);
    } else {
      EXPECT_GE(sel->size(), budget);
      EXPECT_LE(sel->size(), budget + 5);
    }
  }
  // Sinks always, even beyond the budget.
  EXPECT_EQ(*SelectTokens(*block, 2, q, 4, 2),
            (std::vector<uint32_t>{0, 1, 2, 3}));
  // Layers 0-1 are not clustered, and a budget >= T: every token.
  EXPECT_EQ(SelectTokens(*block, 1, q, 4, 10)->size(), 256u);
  EXPECT_EQ(SelectTokens(*block, 2, q, 4, 256)->size(), 256u);
  EXPECT_THAT(Msg(SelectTokens(*block, 3, q, 4, 10).status()),
              StartsWith("layer:"));
  EXPECT_THAT(Msg(SelectTokens(*block, 2, q, 3, 10).status()),
              StartsWith("q_heads:"));
  EXPECT_THAT(Msg(SelectTokens(*block, 2, q, 2, 10).status()),
              StartsWith("queries:"));
}

TEST(ClusterCodec, IndexRecordsClustersSortedTokensAndTheDerivedClusterCount) {
  const BlockShape shape{DType::kFloat32, 4, 100, 1, 16};
  std::vector<std::vector<float>> dirs;
  const KvTensor kv = ClusteredKv(shape, 4, 6, 5, 0.2f, 2, &dirs);
  ClusterParams p;  // num_clusters 0: ceil(96 / 16) = 6.
  auto block = EncodeKvBlock(kv, CodecId::kCluster, p.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  auto index = ClusterIndex::Parse(*block);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->num_clusters(), 6u);
  EXPECT_EQ(index->params().num_clusters, 6);
  EXPECT_FALSE(index->clustered(1));
  for (uint32_t l = 2; l < 4; ++l) {
    auto ends = index->ends(l, 0);
    auto tokens = index->tokens(l, 0);
    ASSERT_EQ(ends.size(), 6u);
    ASSERT_EQ(tokens.size(), 96u);
    EXPECT_EQ(ends.back(), 96u);
    // The planted clusters are recovered exactly: each cluster's tokens share
    // one residue (t * 7) % 6, and its centroid is its members' mean key.
    for (uint32_t j = 0; j < 6; ++j) {
      const uint32_t begin = j ? ends[j - 1] : 0;
      ASSERT_EQ(ends[j] - begin, 16u) << "cluster " << j;
      for (uint32_t i = begin; i < ends[j]; ++i) {
        EXPECT_EQ((tokens[i] * 7) % 6, (tokens[begin] * 7) % 6);
        if (i > begin) {
          EXPECT_LT(tokens[i - 1], tokens[i]);
        }
      }
      for (uint32_t c = 0; c < 16; ++c) {
        double mean = 0;
        for (uint32_t i = begin; i < ends[j]; ++i)
          mean += kv.at(0, l, tokens[i], 0, c) / 16.0;
        EXPECT_NEAR(index->centroids(l, 0)[j * 16 + c], mean, 2e-3);
      }
    }
  }
  const double bits = BitsPerElement(*block);
  std::printf(
      "cluster fp32 block, C = T/16: %.3f bits/element (raw 32 + index)\n",
      bits);

  p.num_clusters = 97;
  EXPECT_THAT(Msg(EncodeKvBlock(kv, CodecId::kCluster, p.ToBytes()).status()),
              StartsWith("num_clusters:"));
  CodecParams quant_inner = ClusterParams{}.ToBytes();
  quant_inner[1] = static_cast<uint8_t>(CodecId::kQuant);
  EXPECT_THAT(Msg(EncodeKvBlock(kv, CodecId::kCluster, quant_inner).status()),
              StartsWith("inner_codec:"));
}

TEST(ClusterCodec, DecodeIsLosslessAndPartialRecallIsTheSliceOfAFullDecode) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3,
                      DType::kFloat32}) {
    const BlockShape shape{dtype, 4, 64, 2, 8};
    KvTensor kv = RandomKv(shape, 3);
    auto block =
        EncodeKvBlock(kv, CodecId::kCluster, ClusterParams{}.ToBytes());
    ASSERT_TRUE(block.ok()) << block.status();
    auto raw = KvTensorFromRaw(shape, KvTensorToRaw(kv));
    auto full = DecodeKvBlock(*block);
    ASSERT_TRUE(full.ok()) << full.status();
    EXPECT_EQ(full->data, raw->data) << DTypeName(dtype);
    std::vector<float> q(4 * 8, 0.5f);
    auto picks = SelectTokens(*block, 3, q, 4, 12);
    ASSERT_TRUE(picks.ok());
    DecodeSelection sel;
    sel.layer_begin = 3;
    sel.token_indices = *picks;
    auto part = DecodeKvBlock(*block, nullptr, sel);
    ASSERT_TRUE(part.ok()) << part.status();
    ASSERT_EQ(part->shape.num_tokens, picks->size());
    for (int which = 0; which < 2; ++which)
      for (uint32_t t = 0; t < picks->size(); ++t)
        for (uint32_t h = 0; h < 2; ++h)
          for (uint32_t c = 0; c < 8; ++c)
            ASSERT_EQ(part->at(which, 0, t, h, c),
                      full->at(which, 3, (*picks)[t], h, c));
  }
}

TEST(ClusterCodec, ABlockOfOnlySinksHasAnEmptyIndex) {
  const BlockShape shape{DType::kFloat16, 3, 4, 1, 8};
  const KvTensor kv = RandomKv(shape, 9);
  auto block = EncodeKvBlock(kv, CodecId::kCluster, ClusterParams{}.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  auto index = ClusterIndex::Parse(*block);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->num_clusters(), 0u);
  EXPECT_EQ(*SelectTokens(*index, 2, std::vector<float>(8, 1), 1, 2),
            (std::vector<uint32_t>{0, 1, 2, 3}));
  EXPECT_TRUE(DecodeKvBlock(*block).ok());
}

TEST(ClusterCodec, EncodingIsDeterministic) {
  const BlockShape shape{DType::kFloat16, 3, 128, 2, 16};
  const KvTensor kv = RandomKv(shape, 4);
  ClusterParams p;
  p.num_clusters = 9;
  EXPECT_EQ(*EncodeKvBlock(kv, CodecId::kCluster, p.ToBytes()),
            *EncodeKvBlock(kv, CodecId::kCluster, p.ToBytes()));
}

std::vector<uint8_t> Reframe(const std::vector<uint8_t>& block,
                             const std::vector<uint8_t>& payload) {
  auto view = kvstore::ParseBlock(block);
  return *kvstore::EncodeBlock(view->header.shape, view->header.codec,
                               view->header.codec_params, payload);
}

TEST(ClusterCodec, CorruptOrTruncatedIndexesAreDataLoss) {
  const BlockShape shape{DType::kFloat16, 3, 40, 1, 4};
  ClusterParams p;
  p.num_clusters =
      3;  // Index of layer 2: centroids 3*4*2, ends 3*4, 36 token ids.
  auto block =
      EncodeKvBlock(RandomKv(shape, 5), CodecId::kCluster, p.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  auto view = kvstore::ParseBlock(*block);
  const std::vector<uint8_t> payload(view->payload.begin(),
                                     view->payload.end());
  const size_t ends_at = 3 * 4 * 2, tokens_at = ends_at + 3 * 4;
  auto expect_loss = [&](const std::vector<uint8_t>& bad, const char* field) {
    const std::vector<uint8_t> framed = Reframe(*block, bad);
    EXPECT_THAT(Msg(ClusterIndex::Parse(framed).status()), StartsWith(field));
    EXPECT_EQ(ClusterIndex::Parse(framed).status().code(),
              absl::StatusCode::kDataLoss);
    EXPECT_EQ(DecodeKvBlock(framed).status().code(),
              absl::StatusCode::kDataLoss);
    EXPECT_EQ(
        SelectTokens(framed, 2, std::vector<float>(4, 1), 1, 8).status().code(),
        absl::StatusCode::kDataLoss);
  };
  std::vector<uint8_t> bad = payload;
  uint16_t id = 40;  // Token id >= T.
  std::memcpy(&bad[tokens_at], &id, 2);
  expect_loss(bad, "token_ids:");
  bad = payload;
  id = 2;  // A sink inside a cluster.
  std::memcpy(&bad[tokens_at], &id, 2);
  expect_loss(bad, "token_ids:");
  bad = payload;
  std::memcpy(&bad[tokens_at], &payload[tokens_at + 2], 2);  // Repeated id.
  expect_loss(bad, "token_ids:");
  bad = payload;
  uint32_t end = 35;  // Sizes sum to 35, not 36.
  std::memcpy(&bad[ends_at + 8], &end, 4);
  expect_loss(bad, "cluster_ends:");
  bad = payload;
  end = 37;
  std::memcpy(&bad[ends_at], &end, 4);  // First end beyond the tokens.
  expect_loss(bad, "cluster_ends:");
  bad = payload;
  uint16_t inf = 0x7C00;
  std::memcpy(&bad[0], &inf, 2);
  expect_loss(bad, "centroids:");
  bad.assign(payload.begin(), payload.end() - 1);
  expect_loss(bad, "payload:");
  bad = payload;
  bad[tokens_at + 36 * 2 + 5] = 1;  // Inner params must be zero for raw.
  expect_loss(bad, "inner_params:");
  CodecParams params = p.ToBytes();
  params[4] = 50;  // 50 clusters for 36 tokens.
  auto framed = kvstore::EncodeBlock(shape, CodecId::kCluster, params, payload);
  EXPECT_THAT(Msg(ClusterIndex::Parse(*framed).status()),
              StartsWith("codec_params:"));
  EXPECT_EQ(DecodeKvBlock(*framed).status().code(),
            absl::StatusCode::kDataLoss);
}

// Seed 6. 16 clusters of keys 8u + N(0, 0.5^2) (d = 64, T = 512, 4 sinks),
// queries 8u_c for one cluster per KV head: attention is concentrated on
// that cluster. At a 10% budget (51 tokens) the selection covers >= 90% of
// every query head's attention mass. On random keys and queries (N(0, 1))
// the coverage is only reported.
TEST(ClusterQuality, CoveredAttentionMassAtATenPercentBudget) {
  const BlockShape shape{DType::kFloat16, 3, 512, 2, 64};
  std::vector<std::vector<float>> dirs;
  const KvTensor kv = ClusteredKv(shape, 4, 16, 8, 0.5f, 6, &dirs);
  ClusterParams p;
  p.num_clusters = 32;  // ~T/16: more clusters than planted.
  auto block = EncodeKvBlock(kv, CodecId::kCluster, p.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  auto index = ClusterIndex::Parse(*block);
  ASSERT_TRUE(index.ok());
  for (BudgetScope scope : {BudgetScope::kPerQueryHead, BudgetScope::kTotal}) {
    double worst = 1;
    for (uint32_t target = 0; target < 16; ++target) {
      std::vector<float> q;
      for (uint32_t qh = 0; qh < 4; ++qh)
        for (float x : dirs[(qh / 2) * 16 + target]) q.push_back(8 * x);
      auto sel = SelectTokens(*index, 2, q, 4, 51, scope);
      ASSERT_TRUE(sel.ok());
      for (uint32_t qh = 0; qh < 4; ++qh) {
        worst = std::min(worst, CoveredMass(kv, 2, qh / 2, &q[qh * 64], *sel));
      }
    }
    std::printf(
        "concentrated attention, 10%% budget (%s): worst covered mass %.4f\n",
        scope == BudgetScope::kTotal ? "total" : "per query head", worst);
    EXPECT_GE(worst, 0.9);
  }

  const KvTensor noise = RandomKv(shape, 7);
  auto noise_block = EncodeKvBlock(noise, CodecId::kCluster, p.ToBytes());
  ASSERT_TRUE(noise_block.ok());
  auto noise_index = ClusterIndex::Parse(*noise_block);
  std::mt19937 rng(8);
  std::normal_distribution<float> n(0, 1);
  double mean = 0;
  for (int i = 0; i < 16; ++i) {
    std::vector<float> q(4 * 64);
    for (float& x : q) x = n(rng);
    auto sel = SelectTokens(*noise_index, 2, q, 4, 51, BudgetScope::kTotal);
    for (uint32_t qh = 0; qh < 4; ++qh) {
      mean += CoveredMass(noise, 2, qh / 2, &q[qh * 64], *sel) / 64;
    }
  }
  std::printf(
      "random keys and queries, 10%% budget (total): mean covered mass %.4f\n",
      mean);
  EXPECT_GT(mean, 0.1);  // Better than the budget fraction itself.
}

// ---- Real SmolLM2 KV (tests/fixtures/smollm2_kv_v1.bin, docs/fixtures.md).

// Evaluation passage: the block is tokens [0, 288) with post-RoPE keys (all
// 30 layers, 4 sinks); the 32 stored queries (positions 288-319, post-RoPE)
// select with a 10% budget (28 tokens, sinks included). Covered mass = the
// selected tokens' share of each query head's softmax over the block,
// averaged over clustered layers 2-29, queries and the 9 query heads (every
// head may attend to the whole recalled set). Reported for C = T/16 and T/8,
// both budget scopes, against the best possible shared set of 28 tokens
// (the tokens of largest attention summed over heads: an oracle).
struct RealCoverage {
  double mass = 0, worst_layer = 1, recalled = 0, oracle = 0, sinks = 0;
};
RealCoverage MeasureRealCoverage(const KvFixture& fx, const KvTensor& kv,
                                 uint16_t clusters, BudgetScope scope) {
  const uint32_t P = 1, B = kv.shape.num_tokens, L = fx.num_layers,
                 QH = fx.num_q_heads, H = fx.num_kv_heads, d = fx.head_dim;
  ClusterParams p;
  p.num_clusters = clusters;
  auto block = EncodeKvBlock(kv, CodecId::kCluster, p.ToBytes());
  auto index = ClusterIndex::Parse(*block);
  RealCoverage r;
  if (!index.ok()) {
    ADD_FAILURE() << index.status();
    return r;
  }
  const uint32_t budget = B / 10;
  const std::vector<uint32_t> sinks = {0, 1, 2, 3};
  const double n = (L - 2) * 32.0;
  for (uint32_t l = 2; l < L; ++l) {
    auto queries = fx.Queries(P, l);
    double layer_mass = 0;
    for (uint32_t qi = 0; qi < 32; ++qi) {
      const float* q = &queries->data[size_t{qi} * QH * d];
      auto sel = SelectTokens(*index, l, absl::MakeConstSpan(q, QH * d), QH,
                              budget, scope);
      r.recalled += sel->size() / n;
      std::vector<double> total(B, 0);
      for (uint32_t qh = 0; qh < QH; ++qh) {
        const uint32_t kvh = qh / (QH / H);
        const std::vector<double> probs = Softmax(kv, l, kvh, q + qh * d);
        layer_mass += Mass(probs, *sel) / (32 * QH);
        r.sinks += Mass(probs, sinks) / (n * QH);
        for (uint32_t t = 0; t < B; ++t) total[t] += probs[t];
      }
      std::vector<uint32_t> best(B);
      std::iota(best.begin(), best.end(), 0);
      std::sort(best.begin(), best.end(),
                [&](uint32_t a, uint32_t b) { return total[a] > total[b]; });
      for (uint32_t i = 0; i < budget; ++i)
        r.oracle += total[best[i]] / (n * QH);
    }
    r.mass += layer_mass / (L - 2);
    r.worst_layer = std::min(r.worst_layer, layer_mass);
  }
  return r;
}

TEST(ClusterRealKv, CoveredAttentionMassOnSmolLM2AtATenPercentBudget) {
  absl::StatusOr<KvFixture> fx = LoadKvFixture(DefaultFixturePath());
  if (!fx.ok()) GTEST_SKIP() << fx.status();
  auto kv = fx->Kv(1, 0, fx->num_layers, 0, 288, RopeForm::kPostRope);
  ASSERT_TRUE(kv.ok()) << kv.status();
  for (uint16_t clusters : {18, 36}) {
    for (BudgetScope scope :
         {BudgetScope::kPerQueryHead, BudgetScope::kTotal}) {
      const RealCoverage r = MeasureRealCoverage(*fx, *kv, clusters, scope);
      const bool per_head = scope == BudgetScope::kPerQueryHead;
      std::printf(
          "SmolLM2, C = %u, budget 28 of 288 %s: covered mass %.4f (worst "
          "layer "
          "%.4f), %.1f tokens recalled; sinks alone %.4f, best shared 28 "
          "%.4f\n",
          clusters, per_head ? "per query head" : "in total", r.mass,
          r.worst_layer, r.recalled, r.sinks, r.oracle);
      if (per_head) {
        EXPECT_GE(r.mass,
                  clusters == 36 ? 0.9 : 0.88);  // 0.920 and 0.900 measured.
      } else {
        EXPECT_LE(r.recalled, 28);
        EXPECT_GT(r.mass, r.sinks + 0.15);  // 0.80-0.81 against 0.59 measured.
        EXPECT_LE(r.mass, r.oracle);
      }
    }
  }
}

}  // namespace
}  // namespace strata::codecs
