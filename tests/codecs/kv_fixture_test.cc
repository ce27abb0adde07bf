// The real-KV fixture (tests/fixtures/smollm2_kv_v1.bin, docs/fixtures.md):
// reading and verifying it, RoPE matching the generator, the structure of
// real keys, and the attention reference.
#include "codecs/kv_fixture.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::codecs {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Loaded once: the file is 15 MB.
const KvFixture& Fixture() {
  static const KvFixture* fx = [] {
    absl::StatusOr<KvFixture> f = LoadKvFixture(DefaultFixturePath());
    if (!f.ok()) {
      ADD_FAILURE() << f.status();
      return new KvFixture();
    }
    return new KvFixture(*std::move(f));
  }();
  return *fx;
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

double Norm(absl::Span<const float> v) {
  double s = 0;
  for (float x : v) s += double{x} * x;
  return std::sqrt(s);
}

double RelDiff(absl::Span<const float> a, absl::Span<const float> b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d += (double{a[i]} - b[i]) * (a[i] - b[i]);
  return std::sqrt(d) / Norm(a);
}

TEST(KvFixture, HeaderDescribesSmolLM2) {
  const KvFixture& fx = Fixture();
  EXPECT_EQ(fx.version, 1u);
  EXPECT_EQ(fx.num_layers, 30u);
  EXPECT_EQ(fx.num_kv_heads, 3u);
  EXPECT_EQ(fx.num_q_heads, 9u);
  EXPECT_EQ(fx.head_dim, 64u);
  EXPECT_EQ(fx.rope_theta, 100000.0f);
  EXPECT_NEAR(fx.rms_eps, 1e-5f, 1e-9f);
  EXPECT_EQ(fx.model, "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_THAT(fx.rope_check_layers, ::testing::ElementsAre(0u, 29u));
  ASSERT_EQ(fx.passages.size(), 2u);
  EXPECT_EQ(fx.passages[0].name, "calibration");
  EXPECT_EQ(fx.passages[0].num_tokens(), 256u);
  EXPECT_EQ(fx.passages[1].name, "evaluation");
  EXPECT_EQ(fx.passages[1].num_tokens(), 320u);
  for (const KvFixturePassage& p : fx.passages) {
    EXPECT_EQ(p.num_queries, 32u);
    EXPECT_EQ(p.first_query_position, p.num_tokens() - 32);
    for (uint32_t id : p.token_ids) ASSERT_LT(id, 49152u);
  }
  // "It is a truth universally acknowledged" (the generator prints these).
  EXPECT_THAT(std::vector<uint32_t>(fx.passages[0].token_ids.begin(),
                                    fx.passages[0].token_ids.begin() + 6),
              ::testing::ElementsAre(1589, 314, 253, 4569, 21902, 14494));
}

TEST(KvFixture, RejectsCorruptAndTruncatedFiles) {
  const std::vector<uint8_t> good = ReadFile(DefaultFixturePath());
  ASSERT_GT(good.size(), 1000000u);
  kvstore::testing::ScratchDir dir;

  std::vector<uint8_t> flipped = good;
  flipped[flipped.size() / 2] ^= 0x10;  // Inside the arrays.
  WriteFile(dir.Sub("flipped.bin"), flipped);
  absl::StatusOr<KvFixture> f = LoadKvFixture(dir.Sub("flipped.bin"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << f.status();
  EXPECT_THAT(Msg(f.status()), StartsWith("checksum"));

  std::vector<uint8_t> bad_sum = good;
  bad_sum.back() ^= 1;
  WriteFile(dir.Sub("bad_sum.bin"), bad_sum);
  f = LoadKvFixture(dir.Sub("bad_sum.bin"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << f.status();

  std::vector<uint8_t> truncated(good.begin(), good.end() - 4096);
  WriteFile(dir.Sub("truncated.bin"), truncated);
  f = LoadKvFixture(dir.Sub("truncated.bin"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.status()), StartsWith("passages[1].keys_post_check"));

  truncated.resize(100);
  WriteFile(dir.Sub("short.bin"), truncated);
  f = LoadKvFixture(dir.Sub("short.bin"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.status()), StartsWith("passages[0]."));

  std::vector<uint8_t> padded = good;
  padded.insert(padded.end() - 8, 4, 0);
  WriteFile(dir.Sub("padded.bin"), padded);
  f = LoadKvFixture(dir.Sub("padded.bin"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.status()), StartsWith("checksum"));

  std::vector<uint8_t> bad_magic = good;
  bad_magic[0] = 'X';
  WriteFile(dir.Sub("magic.bin"), bad_magic);
  f = LoadKvFixture(dir.Sub("magic.bin"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.status()), StartsWith("magic"));

  std::vector<uint8_t> bad_version = good;
  bad_version[4] = 2;
  WriteFile(dir.Sub("version.bin"), bad_version);
  f = LoadKvFixture(dir.Sub("version.bin"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.status()), StartsWith("version"));

  std::vector<uint8_t> bad_heads = good;
  bad_heads[12] = 4;  // num_kv_heads 3 -> 4: 9 q heads no longer divide.
  WriteFile(dir.Sub("heads.bin"), bad_heads);
  f = LoadKvFixture(dir.Sub("heads.bin"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.status()), StartsWith("num_q_heads"));

  f = LoadKvFixture(dir.Sub("missing.bin"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

TEST(ApplyRope, IdentityAtZeroAndNormPreserving) {
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0, 1);
  std::vector<float> v(64);
  for (float& x : v) x = n(rng);
  std::vector<float> r = v;
  ApplyRope(r.data(), 64, 0, 1e5f);
  EXPECT_EQ(r, v);
  ApplyRope(r.data(), 64, 1000, 1e5f);
  EXPECT_NEAR(Norm(r), Norm(v), 1e-4 * Norm(v));
  // Pair 0 turns by exactly `position` radians.
  std::vector<float> e(64, 0.0f);
  e[0] = 1;
  ApplyRope(e.data(), 64, 3, 1e5f);
  EXPECT_FLOAT_EQ(e[0], static_cast<float>(std::cos(3.0)));
  EXPECT_FLOAT_EQ(e[1], static_cast<float>(std::sin(3.0)));
  EXPECT_EQ(e[2], 0.0f);
}

// The C++ RoPE on the stored pre-RoPE keys reproduces the post-RoPE keys the
// generator stored (both round to fp16; float cos/sin details may move a
// value by one fp16 step, nothing more).
TEST(KvFixture, CppRopeMatchesStoredPostRopeKeys) {
  const KvFixture& fx = Fixture();
  ASSERT_FALSE(fx.passages.empty());
  size_t total = 0, exact = 0;
  double worst_ulps = 0;
  for (uint32_t p = 0; p < fx.passages.size(); ++p) {
    const uint32_t T = fx.passages[p].num_tokens();
    for (uint32_t c = 0; c < fx.rope_check_layers.size(); ++c) {
      const uint32_t layer = fx.rope_check_layers[c];
      absl::StatusOr<KvTensor> kv =
          fx.Kv(p, layer, layer + 1, 0, T, RopeForm::kPostRope);
      ASSERT_TRUE(kv.ok()) << kv.status();
      absl::StatusOr<std::vector<float>> stored = fx.StoredPostRopeKeys(p, c);
      ASSERT_TRUE(stored.ok()) << stored.status();
      ASSERT_EQ(stored->size(), size_t{T} * fx.num_kv_heads * fx.head_dim);
      const float* ours = kv->vec(0, 0, 0, 0);
      for (size_t i = 0; i < stored->size(); ++i) {
        ++total;
        if (ours[i] == (*stored)[i]) {
          ++exact;
          continue;
        }
        // One fp16 step at this magnitude.
        const float mag = std::max(std::fabs(ours[i]), std::fabs((*stored)[i]));
        const float ulp = std::max(std::ldexp(1.0f, std::ilogb(mag) - 10),
                                   std::ldexp(1.0f, -24));
        worst_ulps = std::max(
            worst_ulps, std::fabs(double{ours[i]} - (*stored)[i]) / ulp);
      }
      // RoPE did move the keys (beyond position 0).
      absl::StatusOr<KvTensor> pre = fx.Kv(p, layer, layer + 1, 0, T);
      ASSERT_TRUE(pre.ok());
      EXPECT_EQ(pre->data[0], kv->data[0]);
      EXPECT_GT(RelDiff(pre->data, kv->data), 0.1);
    }
  }
  std::printf("RoPE check: %zu of %zu keys bit-exact, worst %.1f fp16 steps\n",
              exact, total, worst_ulps);
  EXPECT_GE(exact, total * 999 / 1000);
  EXPECT_LE(worst_ulps, 1.0);
}

TEST(KvFixture, KvSelectionsAreSlices) {
  const KvFixture& fx = Fixture();
  absl::StatusOr<KvTensor> all = fx.Kv(1, 0, 30, 0, 320, RopeForm::kPostRope);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->shape.dtype, DType::kFloat16);
  EXPECT_EQ(all->shape.num_layers, 30u);
  EXPECT_EQ(all->shape.num_tokens, 320u);
  absl::StatusOr<KvTensor> part = fx.Kv(1, 5, 7, 100, 164, RopeForm::kPostRope);
  ASSERT_TRUE(part.ok()) << part.status();
  for (int kv = 0; kv < 2; ++kv) {
    for (uint32_t l = 0; l < 2; ++l) {
      for (uint32_t t = 0; t < 64; ++t) {
        for (uint32_t h = 0; h < 3; ++h) {
          for (uint32_t d = 0; d < 64; ++d) {
            ASSERT_EQ(part->at(kv, l, t, h, d), all->at(kv, 5 + l, 100 + t, h, d));
          }
        }
      }
    }
  }
  // Every value is an fp16 value.
  for (float x : all->data) ASSERT_EQ(HalfToFloat(FloatToHalf(x)), x);
  EXPECT_THAT(Msg(fx.Kv(2, 0, 1, 0, 1).status()), StartsWith("passage"));
  EXPECT_THAT(Msg(fx.Kv(0, 0, 31, 0, 1).status()), StartsWith("layer_end"));
  EXPECT_THAT(Msg(fx.Kv(0, 3, 3, 0, 1).status()), StartsWith("layer_begin"));
  EXPECT_THAT(Msg(fx.Kv(0, 0, 1, 0, 257).status()), StartsWith("token_end"));
  EXPECT_THAT(Msg(fx.Kv(0, 0, 1, 9, 9).status()), StartsWith("token_begin"));
  EXPECT_THAT(Msg(fx.Queries(0, 30).status()), StartsWith("layer"));
}

// Real keys have a few outlier channels (why KIVI quantizes K per channel);
// values much less so.
TEST(KvFixture, KeysHaveOutlierChannels) {
  const KvFixture& fx = Fixture();
  for (uint32_t p = 0; p < fx.passages.size(); ++p) {
    absl::StatusOr<KvTensor> kv = fx.Kv(p, 0, fx.num_layers, 0,
                                        fx.passages[p].num_tokens());
    ASSERT_TRUE(kv.ok());
    const BlockShape& s = kv->shape;
    // Per (layer, head): max over channels / median over channels of the
    // mean |x| over tokens.
    std::vector<double> ratio[2];
    for (int k = 0; k < 2; ++k) {
      for (uint32_t l = 0; l < s.num_layers; ++l) {
        for (uint32_t h = 0; h < s.num_kv_heads; ++h) {
          std::vector<double> ch(s.head_dim, 0.0);
          for (uint32_t t = 0; t < s.num_tokens; ++t) {
            const float* v = kv->vec(k, l, t, h);
            for (uint32_t d = 0; d < s.head_dim; ++d) ch[d] += std::fabs(v[d]);
          }
          const double mx = *std::max_element(ch.begin(), ch.end());
          std::nth_element(ch.begin(), ch.begin() + ch.size() / 2, ch.end());
          ratio[k].push_back(mx / ch[ch.size() / 2]);
        }
      }
    }
    for (auto& r : ratio) std::sort(r.begin(), r.end());
    const double k_med = ratio[0][ratio[0].size() / 2];
    const double v_med = ratio[1][ratio[1].size() / 2];
    std::printf(
        "%s: channel max/median of mean|x| over (layer, head): keys median "
        "%.1f (min %.1f, max %.1f), values median %.1f (max %.1f)\n",
        fx.passages[p].name.c_str(), k_med, ratio[0].front(), ratio[0].back(),
        v_med, ratio[1].back());
    EXPECT_GT(k_med, 5.0);
    EXPECT_GT(k_med, 1.5 * v_med);
  }
}

TEST(AttentionOutput, CausalMaskAndGqaMapping) {
  // 4 query heads over 2 KV heads, head_dim 2, three keys at positions 10-12.
  const std::vector<float> keys = {1, 0, 0, 1,   0, 1, 1, 0,   5, 5, 5, 5};
  const std::vector<float> values = {1, 2, 3, 4,  5, 6, 7, 8,  9, 10, 11, 12};
  std::vector<float> q(2 * 4 * 2, 0.0f);  // All-zero queries: uniform weights.
  absl::StatusOr<std::vector<float>> o =
      AttentionOutput(q, {10, 11}, keys, values, 4, 2, 2, 10);
  ASSERT_TRUE(o.ok()) << o.status();
  // Query at position 10 sees key 0 only; heads 0-1 use KV head 0, 2-3 head 1.
  EXPECT_THAT(std::vector<float>(o->begin(), o->begin() + 8),
              ::testing::ElementsAre(1, 2, 1, 2, 3, 4, 3, 4));
  // Position 11: the mean of keys 0 and 1.
  EXPECT_THAT(std::vector<float>(o->begin() + 8, o->end()),
              ::testing::ElementsAre(3, 4, 3, 4, 5, 6, 5, 6));
  // A query before every key sees nothing.
  o = AttentionOutput(std::vector<float>(8, 1.0f), {9}, keys, values, 4, 2, 2, 10);
  ASSERT_TRUE(o.ok());
  EXPECT_THAT(*o, ::testing::Each(0.0f));
  // Softmax with scale 1/sqrt(2): one head, two keys.
  o = AttentionOutput({1, 1}, {1}, {1, 1, 0, 0}, {1, 0, 0, 1}, 1, 1, 2);
  ASSERT_TRUE(o.ok());
  const double w = 1.0 / (1.0 + std::exp(-2.0 / std::sqrt(2.0)));
  EXPECT_NEAR((*o)[0], w, 1e-6);
  EXPECT_NEAR((*o)[1], 1 - w, 1e-6);
  EXPECT_THAT(Msg(AttentionOutput(q, {10}, keys, values, 4, 2, 2).status()),
              StartsWith("queries"));
  EXPECT_THAT(Msg(AttentionOutput(q, {10, 11}, keys, {1}, 4, 2, 2).status()),
              StartsWith("values"));
  EXPECT_THAT(Msg(AttentionOutput(q, {10, 11}, keys, values, 3, 2, 2).status()),
              StartsWith("num_q_heads"));
}

// On the real cache: outputs are finite and non-zero, the KvTensor overload
// agrees with the span one, and zeroing the last half of the keys changes the
// outputs of the queries that can see them.
TEST(AttentionOutput, RealQueriesAndKeys) {
  const KvFixture& fx = Fixture();
  const uint32_t p = 1;
  const uint32_t T = fx.passages[p].num_tokens();
  absl::StatusOr<KvTensor> kv = fx.Kv(p, 0, fx.num_layers, 0, T, RopeForm::kPostRope);
  ASSERT_TRUE(kv.ok());
  double min_change = 1e9, max_change = 0;
  for (uint32_t layer = 0; layer < fx.num_layers; ++layer) {
    absl::StatusOr<FixtureQueries> q = fx.Queries(p, layer);
    ASSERT_TRUE(q.ok()) << q.status();
    ASSERT_EQ(q->positions.size(), 32u);
    EXPECT_EQ(q->positions.back(), T - 1);
    absl::StatusOr<std::vector<float>> full = AttentionOutput(*q, *kv, layer);
    ASSERT_TRUE(full.ok()) << full.status();
    ASSERT_EQ(full->size(), 32u * 9 * 64);
    for (float x : *full) ASSERT_TRUE(std::isfinite(x));
    EXPECT_GT(Norm(*full), 0.0);

    const size_t row = size_t{fx.num_kv_heads} * fx.head_dim;
    std::vector<float> keys(kv->vec(0, layer, 0, 0), kv->vec(0, layer, 0, 0) + T * row);
    const std::vector<float> values(kv->vec(1, layer, 0, 0),
                                    kv->vec(1, layer, 0, 0) + T * row);
    absl::StatusOr<std::vector<float>> same = AttentionOutput(
        q->data, q->positions, keys, values, fx.num_q_heads, fx.num_kv_heads,
        fx.head_dim);
    ASSERT_TRUE(same.ok());
    EXPECT_EQ(*same, *full);

    std::fill(keys.begin() + (T / 2) * row, keys.end(), 0.0f);
    absl::StatusOr<std::vector<float>> zeroed = AttentionOutput(
        q->data, q->positions, keys, values, fx.num_q_heads, fx.num_kv_heads,
        fx.head_dim);
    ASSERT_TRUE(zeroed.ok());
    const double change = RelDiff(*full, *zeroed);
    min_change = std::min(min_change, change);
    max_change = std::max(max_change, change);
    EXPECT_GT(change, 1e-3) << "layer " << layer;
  }
  std::printf("zeroing the last half of the keys: ||o - o'|| / ||o|| from %.3f "
              "to %.3f over layers\n", min_change, max_change);
}

}  // namespace
}  // namespace strata::codecs
