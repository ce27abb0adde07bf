// The lowrank, cluster-selection and tokensparse kernels on a GPU against the
// CPU codecs: identical payload bytes, decoded bytes and token selections on
// fresh random inputs (every dtype) and on the real SmolLM2 fixture. Skips
// without a device.
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codecs/cluster_codec.h"
#include "codecs/codec.h"
#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "codecs/lowrank_codec.h"
#include "codecs/tokensparse_codec.h"
#include "gtest/gtest.h"
#include "kernels/cluster_kernels.h"
#include "kernels/kernel_errors.h"
#include "kernels/lowrank_kernels.h"
#include "kernels/tokensparse_kernels.h"
#include "kvstore/block_format.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::BudgetScope;
using codecs::ClusterParams;
using codecs::CodecProfile;
using codecs::KvTensor;
using codecs::LatentFormat;
using codecs::LowRankParams;
using codecs::TokenSparseParams;
using kvstore::BlockShape;
using kvstore::DType;
using testing::DeviceBuffer;
using testing::ErrorWord;
using testing::kPoison;
using testing::ProfileEncodeParams;
using testing::ProfileLaunchParams;
using testing::SameBytes;

constexpr DType kDtypes[] = {DType::kFloat16, DType::kBFloat16,
                             DType::kFloat8E4M3, DType::kFloat32};

std::string Name(const BlockShape& s) {
  return absl::StrCat("dtype ", static_cast<int>(s.dtype), " ", s.num_layers,
                      "x", s.num_tokens, "x", s.num_kv_heads, "x",
                      s.head_dim);
}

// ---- lowrank

class LowRankGpuTest : public testing::GpuTest {
 protected:
  // GPU encode and decode of `kv`; both must equal the CPU codec's bytes.
  void ExpectMatchesCpu(const KvTensor& kv, const CodecProfile& profile,
                        const LowRankParams& p, const std::string& what) {
    codecs::CodecParams cpu_params = p.ToBytes();
    auto cpu = testing::CpuEncode(codecs::CodecId::kLowRank, kv, &cpu_params,
                                  &profile);
    ASSERT_TRUE(cpu.ok()) << cpu.status() << " " << what;
    auto packed = PackLowRankProfile(profile, kv.shape);
    ASSERT_TRUE(packed.ok()) << packed.status();
    DeviceBuffer prof(packed->data.size() * 4);
    prof.Upload(packed->data, stream_);
    const std::vector<uint8_t> raw = testing::RawOf(kv);
    DeviceBuffer in(raw.size()), payload(cpu->size());
    in.Upload(raw, stream_);
    payload.Fill(kPoison, stream_);
    ErrorWord flags(stream_);
    const auto enc = ProfileEncodeParams<LowRankEncodeParams>(
        kv.shape, p.ToBytes(), packed->layout, prof, in, payload, cpu->size(),
        flags.get());
    auto bytes = LowRankPayloadBytes(kv.shape, p.ToBytes());
    ASSERT_TRUE(bytes.ok());
    ASSERT_EQ(*bytes, cpu->size()) << what;
    ASSERT_TRUE(Launch(enc, nullptr, stream_).ok()) << what;
    Sync();
    EXPECT_EQ(flags.Read(), 0u) << what;
    EXPECT_EQ(EncodedCodecParams(enc), cpu_params) << what;
    ASSERT_TRUE(SameBytes(payload.Download(stream_), *cpu, "payload")) << what;
    // Decode the CPU payload.
    auto cpu_raw = testing::CpuDecodeRaw(codecs::CodecId::kLowRank, kv.shape,
                                         cpu_params, *cpu, &profile);
    ASSERT_TRUE(cpu_raw.ok()) << cpu_raw.status();
    ExpectDecodeEquals(
        ProfileLaunchParams<LowRankDecodeParams>(
            kv.shape, cpu_params, packed->layout, prof, payload, cpu->size()),
        *cpu_raw, /*workspace_min=*/0, what);
  }
};

TEST_F(LowRankGpuTest, EncodeAndDecodeMatchTheCpuCodecOnRandomBlocks) {
  const uint32_t seed = testing::TestSeed("LowRankRandom");
  std::mt19937 rng(seed);
  // head_dim 96 and 32: channel loops that do not fill a warp evenly; rank
  // 96 with int4: an odd nibble count never, 5/33: odd ones.
  const BlockShape shapes[] = {{DType::kFloat16, 2, 37, 2, 64},
                               {DType::kFloat16, 1, 70, 3, 96},
                               {DType::kFloat16, 3, 9, 1, 32}};
  for (const BlockShape& base : shapes) {
    BlockShape cal = base;
    cal.num_tokens = 200;
    cal.dtype = DType::kFloat32;
    auto profile = codecs::FitLowRankProfile(
        {testing::RandomKv(cal, rng)}, base.head_dim, "test/gpu-lowrank");
    ASSERT_TRUE(profile.ok()) << profile.status();
    for (DType dtype : kDtypes) {
      BlockShape shape = base;
      shape.dtype = dtype;
      const KvTensor kv = testing::RandomKv(shape, rng);
      for (LatentFormat f :
           {LatentFormat::kFloat16, LatentFormat::kInt8, LatentFormat::kInt4}) {
        for (int whiten = 0; whiten < (f == LatentFormat::kFloat16 ? 1 : 2);
             ++whiten) {
          LowRankParams p;
          p.format = f;
          p.flags = whiten ? LowRankParams::kFlagWhiten : 0;
          p.rank_k = static_cast<uint16_t>(std::min<uint32_t>(5, base.head_dim));
          p.rank_v = static_cast<uint16_t>(
              std::min<uint32_t>(33, base.head_dim));
          ExpectMatchesCpu(kv, *profile, p,
                           absl::StrCat(Name(shape), " format ",
                                        static_cast<int>(f), " whiten ",
                                        whiten, " seed ", seed));
          if (HasFatalFailure()) return;
          p.rank_k = static_cast<uint16_t>(base.head_dim);  // Full rank.
          p.rank_v = 1;
          ExpectMatchesCpu(kv, *profile, p, absl::StrCat(Name(shape), " full"));
          if (HasFatalFailure()) return;
        }
      }
      if (testing::QuickMode()) break;
    }
  }
}

TEST_F(LowRankGpuTest, RealFixtureMatchesTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  auto calib = fx->Kv(0, 0, fx->num_layers, 0, fx->passages[0].num_tokens());
  ASSERT_TRUE(calib.ok());
  auto profile = codecs::FitLowRankProfile({*calib}, 64, "smollm2/gpu");
  ASSERT_TRUE(profile.ok()) << profile.status();
  auto kv = fx->Kv(1, 0, fx->num_layers, 0, fx->passages[1].num_tokens());
  ASSERT_TRUE(kv.ok());
  for (LatentFormat f :
       {LatentFormat::kFloat16, LatentFormat::kInt8, LatentFormat::kInt4}) {
    LowRankParams p;
    p.format = f;
    p.rank_k = 16;
    p.rank_v = 32;
    p.flags = f == LatentFormat::kFloat16 ? 0 : LowRankParams::kFlagWhiten;
    ExpectMatchesCpu(*kv, *profile, p,
                     absl::StrCat("fixture format ", static_cast<int>(f)));
    if (HasFatalFailure()) return;
  }
}

TEST_F(LowRankGpuTest, ReportsNonFiniteInputAndBadRecords) {
  std::mt19937 rng(7);
  const BlockShape shape{DType::kFloat16, 1, 8, 1, 32};
  auto profile = codecs::FitLowRankProfile(
      {testing::RandomKv({DType::kFloat32, 1, 64, 1, 32}, rng)}, 32, "t");
  ASSERT_TRUE(profile.ok());
  auto packed = PackLowRankProfile(*profile, shape);
  ASSERT_TRUE(packed.ok());
  DeviceBuffer prof(packed->data.size() * 4);
  prof.Upload(packed->data, stream_);
  KvTensor kv = testing::RandomKv(shape, rng);
  kv.at(0, 0, 3, 0, 7) = INFINITY;
  std::vector<uint8_t> raw = testing::RawOf(kv);
  LowRankParams p;
  p.format = LatentFormat::kInt8;
  auto bytes = LowRankPayloadBytes(shape, p.ToBytes());
  ASSERT_TRUE(bytes.ok());
  DeviceBuffer in(raw.size()), payload(*bytes), out(raw.size());
  in.Upload(raw, stream_);
  ErrorWord flags(stream_);
  const auto enc = ProfileEncodeParams<LowRankEncodeParams>(
      shape, p.ToBytes(), packed->layout, prof, in, payload, *bytes,
      flags.get());
  ASSERT_TRUE(Launch(enc, nullptr, stream_).ok());
  Sync();
  EXPECT_EQ(ErrorFlagsToStatus(flags.Read()).code(),
            absl::StatusCode::kInvalidArgument);
  // A record with a negative scale.
  std::vector<uint8_t> bad(*bytes, 0);
  bad[2] = 0x00;
  bad[3] = 0xBC;  // fp16 -1.0 as the scale of record 0.
  payload.Upload(bad, stream_);
  ErrorWord dflags(stream_);
  auto dec = ProfileLaunchParams<LowRankDecodeParams>(
      shape, EncodedCodecParams(enc), packed->layout, prof, payload, *bytes);
  dec.kv = out.get();
  dec.error_flags = dflags.get();
  ASSERT_TRUE(Launch(dec, nullptr, stream_).ok());
  Sync();
  EXPECT_EQ(ErrorFlagsToStatus(dflags.Read()).code(),
            absl::StatusCode::kDataLoss);
}

// ---- cluster selection

class ClusterGpuTest : public testing::GpuTest {
 protected:
  // The GPU selection for `block` (a cluster block) must equal SelectTokens.
  void ExpectMatchesCpu(const std::vector<uint8_t>& block, uint32_t layer,
                        const std::vector<float>& queries, uint32_t q_heads,
                        uint32_t budget, BudgetScope scope,
                        const std::string& what) {
    auto cpu = codecs::SelectTokens(block, layer, queries, q_heads, budget,
                                    scope);
    ASSERT_TRUE(cpu.ok()) << cpu.status() << " " << what;
    auto view = kvstore::ParseBlock(block);
    ASSERT_TRUE(view.ok());
    const BlockShape& shape = view->header.shape;
    DeviceBuffer dblock(block.size()), q(queries.size() * 4),
        selected(shape.num_tokens * 4), count(4);
    dblock.Upload(block, stream_);
    q.Upload(queries, stream_);
    selected.Fill(kPoison, stream_);
    count.Fill(kPoison, stream_);
    ErrorWord flags(stream_);
    ClusterSelectParams p;
    p.shape = shape;
    p.codec_params = view->header.codec_params;
    p.payload = dblock.as<uint8_t>() + kvstore::kBlockHeaderSize;
    p.payload_bytes = view->payload.size();
    p.layer = layer;
    p.queries = q.as<float>();
    p.q_heads = q_heads;
    p.token_budget = budget;
    p.scope = scope;
    p.selected = selected.as<uint32_t>();
    p.num_selected = count.as<uint32_t>();
    p.error_flags = flags.get();
    DeviceBuffer workspace(std::max<size_t>(WorkspaceBytes(p), 1));
    const absl::Status s = Launch(p, workspace.get(), stream_);
    ASSERT_TRUE(s.ok()) << s << " " << what;
    Sync();
    EXPECT_EQ(flags.Read(), 0u) << what;
    const uint32_t n = count.DownloadAs<uint32_t>(stream_)[0];
    ASSERT_EQ(n, cpu->size()) << what;
    std::vector<uint32_t> got = selected.DownloadAs<uint32_t>(stream_);
    got.resize(n);
    EXPECT_EQ(got, *cpu) << what;
  }
};

std::vector<float> RandomQueries(uint32_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(n);
  for (float& x : q) x = normal(rng);
  return q;
}

TEST_F(ClusterGpuTest, SelectionMatchesSelectTokensOnRandomBlocks) {
  const uint32_t seed = testing::TestSeed("ClusterRandom");
  std::mt19937 rng(seed);
  struct Case {
    BlockShape shape;
    uint16_t clusters;
  };
  const Case cases[] = {{{DType::kFloat16, 4, 300, 2, 64}, 0},
                        {{DType::kBFloat16, 3, 97, 1, 32}, 7},
                        {{DType::kFloat32, 3, 1100, 2, 32}, 0}};
  for (const Case& c : cases) {
    ClusterParams cp;
    cp.num_clusters = c.clusters;
    cp.iterations = 4;
    auto block = codecs::EncodeKvBlock(testing::RandomKv(c.shape, rng),
                                       codecs::CodecId::kCluster,
                                       cp.ToBytes());
    ASSERT_TRUE(block.ok()) << block.status();
    for (uint32_t group : {1u, 3u}) {
      const uint32_t q_heads = c.shape.num_kv_heads * group;
      const std::vector<float> q =
          RandomQueries(q_heads * c.shape.head_dim, rng);
      for (uint32_t layer = 0; layer < c.shape.num_layers; ++layer) {
        if (testing::QuickMode() && layer + 1 < c.shape.num_layers) continue;
        for (uint32_t budget : {1u, 4u, 20u, c.shape.num_tokens / 3,
                                c.shape.num_tokens - 1, c.shape.num_tokens}) {
          for (BudgetScope scope :
               {BudgetScope::kPerQueryHead, BudgetScope::kTotal}) {
            ExpectMatchesCpu(*block, layer, q, q_heads, budget, scope,
                             absl::StrCat(Name(c.shape), " layer ", layer,
                                          " q_heads ", q_heads, " budget ",
                                          budget, " scope ",
                                          static_cast<int>(scope), " seed ",
                                          seed));
            if (HasFatalFailure()) return;
          }
        }
      }
    }
  }
}

TEST_F(ClusterGpuTest, RealFixtureSelectionMatchesSelectTokens) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  const uint32_t T = fx->passages[1].num_tokens();
  auto kv = fx->Kv(1, 0, fx->num_layers, 0, T, codecs::RopeForm::kPostRope);
  ASSERT_TRUE(kv.ok());
  auto block = codecs::EncodeKvBlock(*kv, codecs::CodecId::kCluster,
                                     ClusterParams{}.ToBytes());
  ASSERT_TRUE(block.ok()) << block.status();
  const uint32_t step = testing::QuickMode() ? 7 : 1;
  for (uint32_t layer = 0; layer < fx->num_layers; layer += step) {
    auto q = fx->Queries(1, layer);
    ASSERT_TRUE(q.ok());
    const uint32_t per_query = q->num_q_heads * q->head_dim;
    const std::vector<float> last(q->data.end() - per_query, q->data.end());
    for (uint32_t budget : {32u, 64u, 128u}) {
      for (BudgetScope scope :
           {BudgetScope::kPerQueryHead, BudgetScope::kTotal}) {
        ExpectMatchesCpu(*block, layer, last, q->num_q_heads, budget, scope,
                         absl::StrCat("fixture layer ", layer, " budget ",
                                      budget));
        if (HasFatalFailure()) return;
      }
    }
  }
}

// ---- tokensparse

class TokenSparseGpuTest : public testing::GpuTest {
 protected:
  void ExpectMatchesCpu(const KvTensor& kv, const TokenSparseParams& p,
                        const std::vector<float>& scores,
                        const std::string& what) {
    auto block = scores.empty()
                     ? codecs::EncodeKvBlock(kv, codecs::CodecId::kTokenSparse,
                                             p.ToBytes())
                     : codecs::EncodeTokenSparse(kv, p, scores);
    ASSERT_TRUE(block.ok()) << block.status() << " " << what;
    auto view = kvstore::ParseBlock(*block);
    ASSERT_TRUE(view.ok());
    auto params = TokenSparseEncodedParams(kv.shape, p.ToBytes());
    ASSERT_TRUE(params.ok()) << params.status();
    EXPECT_EQ(*params, view->header.codec_params) << what;
    const std::vector<uint8_t> cpu(view->payload.begin(), view->payload.end());
    const std::vector<uint8_t> raw = testing::RawOf(kv);
    DeviceBuffer in(raw.size()), payload(cpu.size()),
        dscores(std::max<size_t>(scores.size() * 4, 4));
    in.Upload(raw, stream_);
    if (!scores.empty()) dscores.Upload(scores, stream_);
    payload.Fill(kPoison, stream_);
    ErrorWord flags(stream_);
    TokenSparseEncodeParams e;
    e.shape = kv.shape;
    e.codec_params = p.ToBytes();
    e.scores = scores.empty() ? nullptr : dscores.as<float>();
    e.num_scores = scores.size();
    e.kv = in.get();
    e.payload = payload.get();
    e.payload_bytes = cpu.size();
    e.error_flags = flags.get();
    const absl::Status s = Launch(e, nullptr, stream_);
    ASSERT_TRUE(s.ok()) << s << " " << what;
    Sync();
    EXPECT_EQ(flags.Read(), 0u) << what;
    ASSERT_TRUE(SameBytes(payload.Download(stream_), cpu, "payload")) << what;
  }
};

TEST_F(TokenSparseGpuTest, EncodeMatchesTheCpuCodecOnRandomBlocks) {
  const uint32_t seed = testing::TestSeed("TokenSparseRandom");
  std::mt19937 rng(seed);
  const BlockShape shapes[] = {{DType::kFloat16, 2, 200, 2, 64},
                               {DType::kFloat16, 3, 41, 1, 32}};
  for (const BlockShape& base : shapes) {
    for (DType dtype : kDtypes) {
      BlockShape shape = base;
      shape.dtype = dtype;
      const KvTensor kv = testing::RandomKv(shape, rng);
      for (int variant = 0; variant < 4; ++variant) {
        TokenSparseParams p;
        p.window = 4;
        p.proxy_high_norm = variant % 2 == 1;
        if (variant >= 2) {
          p.stride = 3;
          p.n_sink = 0;
          p.window = 5;
        }
        ExpectMatchesCpu(kv, p, {},
                         absl::StrCat(Name(shape), " variant ", variant,
                                      " seed ", seed));
        if (HasFatalFailure()) return;
      }
      // Caller scores with many ties, per head and per token.
      const uint64_t per_token = uint64_t{shape.num_layers} * shape.num_tokens;
      for (uint64_t n : {per_token, per_token * shape.num_kv_heads}) {
        std::vector<float> scores(n);
        for (float& s : scores) s = static_cast<float>(rng() % 5);
        TokenSparseParams p;
        p.window = 4;
        p.budget_fraction = 0.4f;
        ExpectMatchesCpu(kv, p, scores,
                         absl::StrCat(Name(shape), " scores ", n));
        if (HasFatalFailure()) return;
      }
      if (testing::QuickMode()) break;
    }
  }
}

TEST_F(TokenSparseGpuTest, RealFixtureMatchesTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  auto kv = fx->Kv(1, 0, fx->num_layers, 0, fx->passages[1].num_tokens());
  ASSERT_TRUE(kv.ok());
  for (float fraction : {0.15f, 0.25f, 0.5f}) {
    TokenSparseParams p;
    p.budget_fraction = fraction;
    ExpectMatchesCpu(*kv, p, {}, absl::StrCat("fixture ", fraction));
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace strata::kernels
