// The ClusterKV encode kernels on a GPU against the CPU codec: identical
// payload bytes (centroids, cluster ends, token ids, inner params, raw K/V)
// on fresh random blocks of every dtype and several cluster counts, on
// degenerate keys (the k-means++ fallback and empty-cluster re-seeding), on
// the real SmolLM2 fixture (post-RoPE keys, 256-token blocks), and end to
// end: a GPU-encoded payload drives the GPU selection to SelectTokens'
// answer. Skips without a device.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codecs/cluster_codec.h"
#include "codecs/codec.h"
#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "gtest/gtest.h"
#include "kernels/cluster_encode_kernels.h"
#include "kernels/cluster_kernels.h"
#include "kernels/kernel_errors.h"
#include "kvstore/block_format.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::BudgetScope;
using codecs::ClusterParams;
using codecs::KvTensor;
using kvstore::BlockShape;
using kvstore::DType;
using testing::DeviceBuffer;
using testing::ErrorWord;
using testing::FirstDifference;

constexpr uint8_t kPoison = 0xA5;
constexpr DType kDtypes[] = {DType::kFloat16, DType::kBFloat16,
                             DType::kFloat8E4M3, DType::kFloat32};

std::string Name(const BlockShape& s, const ClusterParams& p) {
  return absl::StrCat("dtype ", static_cast<int>(s.dtype), " ", s.num_layers,
                      "x", s.num_tokens, "x", s.num_kv_heads, "x", s.head_dim,
                      " C ", p.num_clusters, " iters ",
                      static_cast<int>(p.iterations), " seed 0x",
                      absl::Hex(p.seed));
}

// Keys with `distinct` different values per (layer, head): token t, head h
// gets key (7t + h) % distinct -- with `one_hot`, (src + 1) e_src, whose
// dots are exact (k-means++ then runs out of distance and takes its "next
// row" fallback); else a random key, or zero for src 0.
KvTensor FewDistinctKeys(const BlockShape& shape, std::mt19937& rng,
                         uint32_t distinct, bool one_hot) {
  KvTensor kv = testing::RandomKv(shape, rng);
  const KvTensor orig = kv;
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    for (uint32_t t = 0; t < shape.num_tokens; ++t) {
      for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
        const uint32_t src = (t * 7 + h) % distinct;
        for (uint32_t e = 0; e < shape.head_dim; ++e) {
          if (one_hot) {
            kv.at(0, l, t, h, e) =
                e == src % shape.head_dim ? static_cast<float>(src + 1) : 0.0f;
          } else {
            kv.at(0, l, t, h, e) = src == 0 ? 0.0f : orig.at(0, l, src, 0, e);
          }
        }
      }
    }
  }
  return kv;
}

class ClusterEncodeGpuTest : public testing::GpuTest {
 protected:
  // The CPU block of kv rounded to its dtype (the kernels read the raw
  // block), or an empty vector after a failed assertion.
  std::vector<uint8_t> CpuBlock(const KvTensor& kv_in, const ClusterParams& p,
                                std::vector<uint8_t>* raw) {
    *raw = testing::RawOf(kv_in);
    auto kv = codecs::KvTensorFromRaw(kv_in.shape, *raw);
    EXPECT_TRUE(kv.ok()) << kv.status();
    if (!kv.ok()) return {};
    auto block =
        codecs::EncodeKvBlock(*kv, codecs::CodecId::kCluster, p.ToBytes());
    EXPECT_TRUE(block.ok()) << block.status();
    return block.ok() ? *block : std::vector<uint8_t>{};
  }

  // GPU encode of `raw`; the payload is left in *payload (device).
  void GpuEncode(const BlockShape& shape, const ClusterParams& p,
                 const std::vector<uint8_t>& raw, DeviceBuffer* payload,
                 uint32_t* flags_out, const std::string& what) {
    auto bytes = ClusterPayloadBytes(shape, p.ToBytes());
    ASSERT_TRUE(bytes.ok()) << bytes.status() << " " << what;
    DeviceBuffer in(raw.size());
    in.Upload(raw, stream_);
    *payload = DeviceBuffer(*bytes);
    payload->Fill(kPoison, stream_);
    ErrorWord flags(stream_);
    ClusterEncodeParams e;
    e.shape = shape;
    e.codec_params = p.ToBytes();
    e.kv = in.get();
    e.payload = payload->get();
    e.payload_bytes = *bytes;
    e.error_flags = flags.get();
    ASSERT_TRUE(Validate(e).ok()) << Validate(e) << " " << what;
    // Poisoned: the kernels must not depend on the workspace's contents.
    DeviceBuffer workspace(std::max<size_t>(WorkspaceBytes(e), 256));
    workspace.Fill(kPoison, stream_);
    const absl::Status s = Launch(e, workspace.get(), stream_);
    ASSERT_TRUE(s.ok()) << s << " " << what;
    Sync();
    *flags_out = flags.Read();
  }

  void ExpectMatchesCpu(const KvTensor& kv, const ClusterParams& p,
                        const std::string& what) {
    std::vector<uint8_t> raw;
    const std::vector<uint8_t> block = CpuBlock(kv, p, &raw);
    ASSERT_FALSE(block.empty()) << what;
    auto view = kvstore::ParseBlock(block);
    ASSERT_TRUE(view.ok()) << view.status();
    const std::vector<uint8_t> cpu(view->payload.begin(), view->payload.end());
    auto params = ClusterEncodedParams(kv.shape, p.ToBytes());
    ASSERT_TRUE(params.ok()) << params.status();
    EXPECT_EQ(*params, view->header.codec_params) << what;
    DeviceBuffer payload;
    uint32_t flags = 0;
    GpuEncode(kv.shape, p, raw, &payload, &flags, what);
    if (HasFatalFailure()) return;
    EXPECT_EQ(flags, 0u) << ErrorFlagsToStatus(flags) << " " << what;
    const std::vector<uint8_t> got = payload.Download(stream_);
    const int64_t diff = FirstDifference(got, cpu);
    ASSERT_EQ(diff, -1) << what << ": first differing payload byte " << diff
                        << " of " << cpu.size() << " (raw K/V from "
                        << *ClusterRawOffset(kv.shape, p.ToBytes()) << ")";
  }
};

TEST_F(ClusterEncodeGpuTest, EncodeMatchesTheCpuCodecOnRandomBlocks) {
  const uint32_t seed = testing::TestSeed("ClusterEncodeRandom");
  std::mt19937 rng(seed);
  // 300 tokens: two 256-row passes per thread block; d 96: not a power of
  // two; d 16 with fp8.
  const BlockShape shapes[] = {{DType::kFloat16, 4, 300, 3, 64},
                               {DType::kFloat16, 3, 61, 2, 96},
                               {DType::kFloat16, 3, 40, 1, 16}};
  for (const BlockShape& base : shapes) {
    for (DType dtype : kDtypes) {
      BlockShape shape = base;
      shape.dtype = dtype;
      const KvTensor kv = testing::RandomKv(shape, rng);
      const uint32_t members = shape.num_tokens - 4;
      for (uint16_t clusters :
           {uint16_t{0}, uint16_t{1}, uint16_t{7},
            static_cast<uint16_t>(members / 4),
            static_cast<uint16_t>(members)}) {
        for (uint8_t iterations : {uint8_t{1}, uint8_t{20}}) {
          ClusterParams p;
          p.num_clusters = clusters;
          p.iterations = iterations;
          p.seed = static_cast<uint32_t>(rng());
          ExpectMatchesCpu(kv, p, absl::StrCat(Name(shape, p), " test seed ",
                                               seed));
          if (HasFatalFailure()) return;
        }
      }
      if (testing::QuickMode()) break;
    }
  }
}

// Few distinct keys (and a zero key): k-means++ runs out of distance,
// clusters empty out and are re-seeded.
TEST_F(ClusterEncodeGpuTest, EncodeMatchesTheCpuCodecOnDegenerateKeys) {
  const uint32_t seed = testing::TestSeed("ClusterEncodeDegenerate");
  std::mt19937 rng(seed);
  const BlockShape shape{DType::kFloat16, 3, 290, 2, 32};
  for (uint32_t distinct : {1u, 2u, 5u, 40u}) {
    for (bool one_hot : {false, true}) {
      const KvTensor kv = FewDistinctKeys(shape, rng, distinct, one_hot);
      for (uint16_t clusters : {3, 18, 100}) {
        ClusterParams p;
        p.num_clusters = clusters;
        p.seed = static_cast<uint32_t>(rng());
        ExpectMatchesCpu(kv, p,
                         absl::StrCat(Name(shape, p), " distinct ", distinct,
                                      " one-hot ", one_hot, " test seed ",
                                      seed));
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_F(ClusterEncodeGpuTest, EncodeMatchesTheCpuCodecWithNothingClustered) {
  std::mt19937 rng(3);
  const BlockShape shape{DType::kBFloat16, 2, 6, 2, 16};
  const KvTensor kv = testing::RandomKv(shape, rng);
  ClusterParams sinks_only;
  sinks_only.n_sink = 8;
  ExpectMatchesCpu(kv, sinks_only, "all sinks");
  ClusterParams shallow;
  shallow.first_layer = 5;
  ExpectMatchesCpu(kv, shallow, "no clustered layer");
}

TEST_F(ClusterEncodeGpuTest, RealFixtureMatchesTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  for (uint32_t passage = 0; passage < fx->passages.size(); ++passage) {
    const uint32_t T = fx->passages[passage].num_tokens();
    for (uint32_t begin = 0; begin < T; begin += 256) {
      const uint32_t end = std::min(T, begin + 256);
      auto kv = fx->Kv(passage, 0, fx->num_layers, begin, end,
                       codecs::RopeForm::kPostRope);
      ASSERT_TRUE(kv.ok()) << kv.status();
      for (uint16_t clusters : {uint16_t{0}, uint16_t{4}, uint16_t{32}}) {
        if (clusters > end - begin - 4) continue;
        ClusterParams p;
        p.num_clusters = clusters;
        ExpectMatchesCpu(*kv, p,
                         absl::StrCat("fixture passage ", passage, " tokens [",
                                      begin, ", ", end, ") C ", clusters));
        if (HasFatalFailure()) return;
      }
      if (testing::QuickMode()) break;
    }
  }
}

// A non-finite key of a clustered token is reported; one of a sink or of an
// unclustered layer is not (the CPU codec never clusters it).
TEST_F(ClusterEncodeGpuTest, ReportsNonFiniteClusteredKeys) {
  std::mt19937 rng(17);
  // fp32: a raw block keeps an infinity (fp16 would saturate it).
  const BlockShape shape{DType::kFloat32, 3, 40, 2, 32};
  ClusterParams p;
  p.num_clusters = 4;
  struct Case {
    uint32_t layer, token;
    float value;
    uint32_t want;
  };
  const Case cases[] = {{2, 10, NAN, kErrorNonFiniteInput},
                        {2, 39, INFINITY, kErrorNonFiniteInput},
                        {2, 1, NAN, 0},    // A sink.
                        {0, 10, NAN, 0}};  // Below first_layer.
  for (const Case& c : cases) {
    KvTensor kv = testing::RandomKv(shape, rng);
    kv.at(0, c.layer, c.token, 1, 5) = c.value;
    DeviceBuffer payload;
    uint32_t flags = 0;
    const std::string what =
        absl::StrCat("layer ", c.layer, " token ", c.token);
    GpuEncode(shape, p, testing::RawOf(kv), &payload, &flags, what);
    if (HasFatalFailure()) return;
    EXPECT_EQ(flags & kErrorNonFiniteInput, c.want) << what;
  }
}

// End to end on the GPU: encode, then select from the encoded payload;
// the tokens equal SelectTokens on the CPU block.
TEST_F(ClusterEncodeGpuTest, GpuEncodedPayloadDrivesTheGpuSelection) {
  const uint32_t seed = testing::TestSeed("ClusterEncodeSelect");
  std::mt19937 rng(seed);
  const BlockShape shape{DType::kFloat16, 3, 256, 2, 64};
  const KvTensor kv = testing::RandomKv(shape, rng);
  ClusterParams cp;
  std::vector<uint8_t> raw;
  const std::vector<uint8_t> block = CpuBlock(kv, cp, &raw);
  ASSERT_FALSE(block.empty());
  auto view = kvstore::ParseBlock(block);
  ASSERT_TRUE(view.ok());
  DeviceBuffer payload;
  uint32_t flags = 0;
  GpuEncode(shape, cp, raw, &payload, &flags, "encode");
  if (HasFatalFailure()) return;
  ASSERT_EQ(flags, 0u);
  const uint32_t q_heads = 6;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(q_heads * shape.head_dim);
  for (float& x : q) x = normal(rng);
  DeviceBuffer dq(q.size() * 4), selected(shape.num_tokens * 4), count(4);
  dq.Upload(q, stream_);
  for (uint32_t budget : {16u, 40u, 100u}) {
    for (BudgetScope scope :
         {BudgetScope::kPerQueryHead, BudgetScope::kTotal}) {
      auto cpu = codecs::SelectTokens(block, 2, q, q_heads, budget, scope);
      ASSERT_TRUE(cpu.ok()) << cpu.status();
      ClusterSelectParams s;
      s.shape = shape;
      s.codec_params = view->header.codec_params;
      s.payload = payload.get();
      s.payload_bytes = payload.size();
      s.layer = 2;
      s.queries = dq.as<float>();
      s.q_heads = q_heads;
      s.token_budget = budget;
      s.scope = scope;
      s.selected = selected.as<uint32_t>();
      s.num_selected = count.as<uint32_t>();
      DeviceBuffer ws(std::max<size_t>(WorkspaceBytes(s), 256));
      ASSERT_TRUE(Launch(s, ws.get(), stream_).ok());
      Sync();
      const uint32_t n = count.DownloadAs<uint32_t>(stream_)[0];
      ASSERT_EQ(n, cpu->size()) << "budget " << budget << " seed " << seed;
      std::vector<uint32_t> got = selected.DownloadAs<uint32_t>(stream_);
      got.resize(n);
      EXPECT_EQ(got, *cpu) << "budget " << budget << " seed " << seed;
    }
  }
}

}  // namespace
}  // namespace strata::kernels
