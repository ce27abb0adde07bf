// Host-side checks of the lowrank, cluster-selection, tokensparse and
// layer-range quant-decode APIs (no GPU needed): payload sizes and recorded
// params equal the CPU codecs', and Validate names the field at fault before
// anything is launched.
#include <random>
#include <string>
#include <vector>

#include "codecs/cluster_codec.h"
#include "codecs/codec.h"
#include "codecs/lowrank_codec.h"
#include "codecs/quant_codec.h"
#include "codecs/tokensparse_codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cluster_kernels.h"
#include "kernels/lowrank_kernels.h"
#include "kernels/quant_kernels.h"
#include "kernels/tokensparse_kernels.h"
#include "kvstore/block_format.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::ClusterParams;
using codecs::LatentFormat;
using codecs::LowRankParams;
using codecs::TokenSparseParams;
using kvstore::BlockShape;
using kvstore::DType;
using testing::ExpectField;
using testing::FakeDevice;

TEST(LowRankKernelHost, PayloadSizeAndParamsEqualTheCpuCodec) {
  std::mt19937 rng(5);
  const BlockShape shape{DType::kBFloat16, 2, 11, 2, 32};
  auto profile = codecs::FitLowRankProfile(
      {testing::RandomKv({DType::kFloat32, 2, 80, 2, 32}, rng)}, 20, "host");
  ASSERT_TRUE(profile.ok());
  auto packed = PackLowRankProfile(*profile, shape);
  ASSERT_TRUE(packed.ok()) << packed.status();
  EXPECT_EQ(packed->data.size(), packed->layout.total_floats);
  EXPECT_EQ(packed->layout.r_max[0], 20u);
  const codecs::KvTensor kv = testing::RandomKv(shape, rng);
  for (LatentFormat f :
       {LatentFormat::kFloat16, LatentFormat::kInt8, LatentFormat::kInt4}) {
    for (uint16_t rank : {1, 7, 20}) {
      LowRankParams p;
      p.format = f;
      p.rank_k = rank;
      p.rank_v = static_cast<uint16_t>(21 - rank);
      codecs::CodecParams params = p.ToBytes();
      auto block = codecs::EncodeKvBlock(kv, codecs::CodecId::kLowRank, params,
                                         &*profile);
      ASSERT_TRUE(block.ok()) << block.status();
      auto view = kvstore::ParseBlock(*block);
      ASSERT_TRUE(view.ok());
      auto bytes = LowRankPayloadBytes(shape, p.ToBytes());
      ASSERT_TRUE(bytes.ok());
      EXPECT_EQ(*bytes, view->payload.size());
      LowRankEncodeParams e;
      e.shape = shape;
      e.codec_params = p.ToBytes();
      e.profile_layout = packed->layout;
      EXPECT_EQ(EncodedCodecParams(e), view->header.codec_params);
    }
  }
}

TEST(LowRankKernelHost, ValidateNamesTheField) {
  std::mt19937 rng(6);
  const BlockShape shape{DType::kFloat16, 1, 8, 1, 32};
  auto profile = codecs::FitLowRankProfile(
      {testing::RandomKv({DType::kFloat32, 1, 40, 1, 32}, rng)}, 8, "host");
  ASSERT_TRUE(profile.ok());
  auto packed = PackLowRankProfile(*profile, shape);
  ASSERT_TRUE(packed.ok());
  LowRankParams lp;
  lp.rank_k = 4;
  lp.rank_v = 8;
  LowRankEncodeParams p;
  p.shape = shape;
  p.codec_params = lp.ToBytes();
  p.profile_layout = packed->layout;
  p.profile = static_cast<const float*>(FakeDevice(0x200000));
  p.kv = FakeDevice(0x100000);
  p.payload = FakeDevice(0x800000);
  p.payload_bytes = *LowRankPayloadBytes(shape, lp.ToBytes());
  EXPECT_TRUE(Validate(p).ok()) << Validate(p);
  EXPECT_EQ(WorkspaceBytes(p), 0u);
  LowRankEncodeParams bad = p;
  bad.payload_bytes += 1;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "payload_bytes");
  bad = p;
  lp.rank_v = 9;  // Above the profile's r_max of 8.
  bad.codec_params = lp.ToBytes();
  ExpectField(Validate(bad), absl::StatusCode::kFailedPrecondition, "profile");
  bad = p;
  bad.profile_layout.num_layers = 2;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "profile_layout");
  bad = p;
  bad.kv = FakeDevice(0x100004);
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument, "kv");
  // Decode needs the block's profile id to be the packed profile's.
  LowRankDecodeParams d;
  d.shape = shape;
  d.codec_params = p.codec_params;  // profile_id 0: not the packed one.
  d.profile_layout = packed->layout;
  d.profile = p.profile;
  d.payload = p.payload;
  d.payload_bytes = p.payload_bytes;
  d.kv = FakeDevice(0x100000);
  ExpectField(Validate(d), absl::StatusCode::kFailedPrecondition, "profile");
  d.codec_params = EncodedCodecParams(p);
  EXPECT_TRUE(Validate(d).ok()) << Validate(d);
}

TEST(TokenSparseKernelHost, ParamsAndPayloadSizeEqualTheCpuCodec) {
  std::mt19937 rng(8);
  const BlockShape shape{DType::kFloat16, 2, 150, 3, 32};
  const codecs::KvTensor kv = testing::RandomKv(shape, rng);
  for (float fraction : {0.3f, 0.5f, 1.0f}) {
    for (uint16_t stride : {0, 1, 7}) {
      TokenSparseParams p;
      p.budget_fraction = fraction;
      p.stride = stride;
      auto block =
          codecs::EncodeKvBlock(kv, codecs::CodecId::kTokenSparse, p.ToBytes());
      ASSERT_TRUE(block.ok()) << block.status();
      auto view = kvstore::ParseBlock(*block);
      ASSERT_TRUE(view.ok());
      auto params = TokenSparseEncodedParams(shape, p.ToBytes());
      ASSERT_TRUE(params.ok()) << params.status();
      EXPECT_EQ(*params, view->header.codec_params);
      EXPECT_EQ(*TokenSparsePayloadBytes(shape, p.ToBytes()),
                view->payload.size());
    }
  }
}

TEST(TokenSparseKernelHost, ValidateNamesTheField) {
  const BlockShape shape{DType::kFloat16, 2, 150, 3, 32};
  TokenSparseParams tp;
  TokenSparseEncodeParams p;
  p.shape = shape;
  p.codec_params = tp.ToBytes();
  p.kv = FakeDevice(0x100000);
  p.payload = FakeDevice(0x800000);
  p.payload_bytes = *TokenSparsePayloadBytes(shape, tp.ToBytes());
  EXPECT_TRUE(Validate(p).ok()) << Validate(p);
  TokenSparseEncodeParams bad = p;
  bad.scores = static_cast<const float*>(FakeDevice(0x900000));
  bad.num_scores = 2 * 150 * 3 + 1;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument, "scores");
  bad.num_scores = 2 * 150;
  EXPECT_TRUE(Validate(bad).ok());
  tp.summary = true;
  bad = p;
  bad.codec_params = tp.ToBytes();
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument, "summary");
  bad = p;
  bad.payload_bytes -= 2;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "payload_bytes");
}

TEST(ClusterKernelHost, ValidateNamesTheFieldAndSizesTheWorkspace) {
  std::mt19937 rng(9);
  const BlockShape shape{DType::kFloat16, 3, 100, 2, 32};
  auto block = codecs::EncodeKvBlock(testing::RandomKv(shape, rng),
                                     codecs::CodecId::kCluster,
                                     ClusterParams{}.ToBytes());
  ASSERT_TRUE(block.ok());
  auto view = kvstore::ParseBlock(*block);
  ASSERT_TRUE(view.ok());
  ClusterSelectParams p;
  p.shape = shape;
  p.codec_params = view->header.codec_params;
  p.payload = FakeDevice(0x100000 + kvstore::kBlockHeaderSize);
  p.payload_bytes = view->payload.size();
  p.layer = 2;
  p.queries = static_cast<const float*>(FakeDevice(0x900000));
  p.q_heads = 6;
  p.token_budget = 30;
  p.selected = static_cast<uint32_t*>(FakeDevice(0xA00000));
  p.num_selected = static_cast<uint32_t*>(FakeDevice(0xB00000));
  EXPECT_TRUE(Validate(p).ok()) << Validate(p);
  // 6 clusters (96 / 16) x 6 query heads of scores and ranks, and a
  // byte per token, each rounded to 256.
  EXPECT_EQ(WorkspaceBytes(p), 512u + 256u + 256u);
  ClusterSelectParams bad = p;
  bad.q_heads = 5;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument, "q_heads");
  bad = p;
  bad.layer = 3;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument, "layer");
  bad = p;
  bad.payload_bytes += 2;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "payload_bytes");
  bad = p;
  bad.layer = 1;  // Below first_layer: every token, no workspace.
  EXPECT_EQ(WorkspaceBytes(bad), 0u);
  bad = p;
  bad.token_budget = 100;
  EXPECT_EQ(WorkspaceBytes(bad), 0u);
}

TEST(QuantKernelHost, LayerRangeDecodeIsValidated) {
  const BlockShape shape{DType::kFloat16, 4, 64, 2, 64};
  codecs::QuantParams qp;
  QuantDecodeParams p;
  p.shape = shape;
  p.codec_params = qp.ToBytes();
  p.payload = FakeDevice(0x100000);
  p.payload_bytes = *QuantPayloadBytes(shape, qp.ToBytes());
  p.kv = FakeDevice(0x4000000);
  p.layer_begin = 3;
  p.layer_count = 1;
  EXPECT_TRUE(Validate(p).ok()) << Validate(p);
  p.layer_count = 2;
  ExpectField(Validate(p), absl::StatusCode::kInvalidArgument, "layer_begin");
  p.layer_count = 0;
  ExpectField(Validate(p), absl::StatusCode::kInvalidArgument, "layer_begin");
  // One layer's output may sit right after the payload's end... but not
  // overlap it.
  p.layer_begin = 0;
  p.layer_count = 1;
  p.kv = FakeDevice(0x100000 + p.payload_bytes - 16);
  ExpectField(Validate(p), absl::StatusCode::kInvalidArgument, "kv");
}

}  // namespace
}  // namespace strata::kernels
