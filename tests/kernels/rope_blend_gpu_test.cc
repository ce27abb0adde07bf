// RoPE shift and CacheBlend selection on a GPU. Skips without a device.
//
// RoPE: the kernel equals its host emulation bit for bit (every dtype, both
// pair layouts, in place and not); in fp32 the shift of a post-RoPE key by
// delta equals codecs::ApplyRope(key, delta) exactly and ApplyRope at the
// new position within 2^-20 |pair| per element (measured on the host: 0.27 of
// that); +delta then -delta returns the input within 2^-21 |pair| (fp32) or
// 1.25 fp16 ulps of |pair| (fp16).
// Blend: deviations and the selected tokens equal BlendSelectCpu exactly.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "codecs/quant_codec.h"
#include "gtest/gtest.h"
#include "kernels/blend_kernels.h"
#include "kernels/internal/numeric.h"
#include "kernels/rope_kernels.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::KvTensor;
using kvstore::BlockShape;
using kvstore::DType;
using testing::DeviceBuffer;
using testing::FirstDifference;

std::vector<float> FloatsOf(const std::vector<uint8_t>& raw) {
  std::vector<float> f(raw.size() / 4);
  std::memcpy(f.data(), raw.data(), raw.size());
  return f;
}
std::vector<uint8_t> BytesOf(const std::vector<float>& f) {
  std::vector<uint8_t> raw(f.size() * 4);
  std::memcpy(raw.data(), f.data(), raw.size());
  return raw;
}

class RopeGpuTest : public testing::GpuTest {
 protected:
  std::vector<uint8_t> Shift(DType dtype, uint32_t head_dim, uint64_t vectors,
                             RopeStyle style, float theta, int32_t delta,
                             const std::vector<uint8_t>& raw, bool in_place) {
    DeviceBuffer src(raw.size()), dst(in_place ? 0 : raw.size());
    src.Upload(raw, stream_);
    if (!in_place) dst.Fill(0xA5, stream_);
    RopeShiftParams p;
    p.dtype = dtype;
    p.head_dim = head_dim;
    p.num_vectors = vectors;
    p.style = style;
    p.theta = theta;
    p.delta = delta;
    p.src = src.get();
    p.dst = in_place ? src.get() : dst.get();
    const absl::Status s = Launch(p, nullptr, stream_);
    EXPECT_TRUE(s.ok()) << s;
    Sync();
    return in_place ? src.Download(stream_) : dst.Download(stream_);
  }
};

TEST_F(RopeGpuTest, MatchesTheHostEmulationForEveryDtypeAndLayout) {
  std::mt19937 rng(testing::TestSeed("RopeMatchesHostEmulation"));
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32,
                      DType::kFloat8E4M3}) {
    for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kNeoxHalves}) {
      for (uint32_t head_dim : {64u, 72u, 128u}) {
        for (int32_t delta : {1, -5, 1000, -30000}) {
          const uint64_t vectors = 333;
          const BlockShape shape{dtype, 1, static_cast<uint32_t>(vectors), 1,
                                 head_dim / 2};
          const std::vector<uint8_t> raw =
              testing::RawOf(testing::RandomKv(shape, rng, 2.0f));
          const std::vector<uint8_t> want = testing::EmulateRopeShift(
              dtype, head_dim, vectors, style == RopeStyle::kNeoxHalves,
              500000.0f, delta, raw);
          for (bool in_place : {false, true}) {
            const std::vector<uint8_t> got =
                Shift(dtype, head_dim, vectors, style, 500000.0f, delta, raw,
                      in_place);
            ASSERT_EQ(FirstDifference(got, want), -1)
                << kvstore::DTypeName(dtype) << " style "
                << static_cast<int>(style) << " head_dim " << head_dim
                << " delta " << delta << (in_place ? " in place" : "");
          }
        }
      }
    }
  }
}

TEST_F(RopeGpuTest, ShiftedFixtureKeysMatchApplyRopeAtTheNewPosition) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  const uint32_t d = fx->head_dim, heads = fx->num_kv_heads;
  const uint32_t tokens = fx->passages[1].num_tokens();
  auto kv = fx->Kv(1, 0, fx->num_layers, 0, tokens, codecs::RopeForm::kPreRope);
  ASSERT_TRUE(kv.ok()) << kv.status();
  const uint64_t vectors = uint64_t{fx->num_layers} * tokens * heads;
  // Post-RoPE keys at positions t, in fp32.
  std::vector<float> post(vectors * d);
  std::memcpy(post.data(), kv->vec(0, 0, 0, 0), post.size() * 4);
  for (uint64_t v = 0; v < vectors; ++v) {
    const uint32_t t = static_cast<uint32_t>((v / heads) % tokens);
    codecs::ApplyRope(&post[v * d], d, t, fx->rope_theta);
  }
  for (int32_t delta : {3, 500, 20000}) {
    const std::vector<float> got =
        FloatsOf(Shift(DType::kFloat32, d, vectors, RopeStyle::kInterleaved,
                       fx->rope_theta, delta, BytesOf(post), true));
    double worst = 0;
    for (uint64_t v = 0; v < vectors; ++v) {
      const uint32_t t = static_cast<uint32_t>((v / heads) % tokens);
      std::vector<float> by_delta(post.begin() + v * d,
                                  post.begin() + (v + 1) * d);
      codecs::ApplyRope(by_delta.data(), d, delta, fx->rope_theta);
      std::vector<float> at_new(kv->vec(0, 0, 0, 0) + v * d,
                                kv->vec(0, 0, 0, 0) + (v + 1) * d);
      codecs::ApplyRope(at_new.data(), d, t + delta, fx->rope_theta);
      for (uint32_t i = 0; i < d; ++i) {
        ASSERT_EQ(internal::FloatBits(got[v * d + i]),
                  internal::FloatBits(by_delta[i]))
            << "vector " << v << " element " << i << " delta " << delta;
      }
      for (uint32_t i = 0; i < d / 2; ++i) {
        const double pair =
            std::hypot(double{at_new[2 * i]}, double{at_new[2 * i + 1]});
        const double err =
            std::max(std::fabs(got[v * d + 2 * i] - at_new[2 * i]),
                     std::fabs(got[v * d + 2 * i + 1] - at_new[2 * i + 1]));
        worst = std::max(worst, err / (pair * std::ldexp(1.0, -20) + 1e-30));
      }
    }
    std::printf(
        "delta %d: worst |shift - ApplyRope(t + delta)| = %.3f x "
        "2^-20 |pair|\n",
        delta, worst);
    EXPECT_LE(worst, 1.0) << "delta " << delta;
  }
}

TEST_F(RopeGpuTest, ShiftThereAndBackRestoresTheKeys) {
  std::mt19937 rng(testing::TestSeed("RopeThereAndBack"));
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kNeoxHalves}) {
    const uint32_t d = 128, vectors = 4096;
    const BlockShape shape{DType::kFloat32, 1, vectors, 1, d / 2};
    const std::vector<uint8_t> raw =
        testing::RawOf(testing::RandomKv(shape, rng, 4.0f));
    const std::vector<uint8_t> there =
        Shift(DType::kFloat32, d, vectors, style, 10000.0f, 777, raw, false);
    const std::vector<float> back = FloatsOf(
        Shift(DType::kFloat32, d, vectors, style, 10000.0f, -777, there, true));
    const std::vector<float> x = FloatsOf(raw);
    for (uint32_t v = 0; v < vectors; ++v) {
      for (uint32_t i = 0; i < d / 2; ++i) {
        const bool neox = style == RopeStyle::kNeoxHalves;
        const size_t a = size_t{v} * d + (neox ? i : 2 * i);
        const size_t b = size_t{v} * d + (neox ? i + d / 2 : 2 * i + 1);
        const double bound =
            std::hypot(double{x[a]}, double{x[b]}) * std::ldexp(1.0, -21);
        ASSERT_LE(std::fabs(back[a] - x[a]), bound) << v << " " << i;
        ASSERT_LE(std::fabs(back[b] - x[b]), bound) << v << " " << i;
      }
    }
  }
}

// ---- CacheBlend selection.

class BlendGpuTest : public testing::GpuTest {
 protected:
  // Runs the GPU selection and compares it with BlendSelectCpu.
  void ExpectMatchesCpu(DType dtype, uint32_t tokens, uint32_t heads,
                        uint32_t dim, uint32_t k,
                        const std::vector<uint8_t>& fresh,
                        const std::vector<uint8_t>& cached,
                        bool deviations_out) {
    SCOPED_TRACE(::testing::Message()
                 << kvstore::DTypeName(dtype) << " tokens " << tokens
                 << " heads " << heads << " dim " << dim << " k " << k);
    auto cpu = BlendSelectCpu(dtype, tokens, heads, dim, k, fresh, cached);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    DeviceBuffer f(fresh.size()), c(cached.size()), sel(k * 4),
        dev(deviations_out ? tokens * 4 : 0);
    f.Upload(fresh, stream_);
    c.Upload(cached, stream_);
    sel.Fill(0xFF, stream_);  // -1 everywhere.
    BlendSelectParams p;
    p.dtype = dtype;
    p.num_tokens = tokens;
    p.kv_heads = heads;
    p.head_dim = dim;
    p.k = k;
    p.fresh_keys = f.get();
    p.cached_keys = c.get();
    p.selected = sel.as<int32_t>();
    p.deviations = deviations_out ? dev.as<float>() : nullptr;
    DeviceBuffer workspace(WorkspaceBytes(p));
    if (workspace.size() > 0) workspace.Fill(0xA5, stream_);
    const absl::Status s = Launch(p, workspace.get(), stream_);
    ASSERT_TRUE(s.ok()) << s;
    Sync();
    EXPECT_EQ(sel.DownloadAs<int32_t>(stream_), cpu->selected);
    std::vector<float> got = deviations_out
                                 ? dev.DownloadAs<float>(stream_)
                                 : workspace.DownloadAs<float>(stream_);
    got.resize(tokens);  // The workspace is rounded up to 256 bytes.
    ASSERT_EQ(got.size(), cpu->deviations.size());
    for (uint32_t t = 0; t < tokens; ++t) {
      ASSERT_EQ(internal::FloatBits(got[t]),
                internal::FloatBits(cpu->deviations[t]))
          << "token " << t;
    }
  }
};

TEST_F(BlendGpuTest, SelectionMatchesTheCpuReference) {
  std::mt19937 rng(testing::TestSeed("BlendSelectionMatchesCpu"));
  struct Shape {
    uint32_t tokens, heads, dim;
  };
  const bool quick = testing::QuickMode();
  const std::vector<Shape> shapes = {
      {1, 1, 8},     {77, 3, 64},   {256, 8, 128},
      {1000, 2, 64}, {4096, 1, 64}, {quick ? 8192u : 65536u, 1, 32}};
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32,
                      DType::kFloat8E4M3}) {
    for (const Shape& s : shapes) {
      const BlockShape shape{dtype, 1, s.tokens, s.heads, s.dim / 2};
      KvTensor fresh = testing::RandomKv(shape, rng);
      KvTensor cached = testing::RandomKv(shape, rng);
      // Ties: every 10th token unchanged (deviation 0), every 7th a copy
      // of token 0's pair (equal deviations).
      const size_t row = size_t{s.heads} * s.dim;
      for (uint32_t t = 0; t < s.tokens; ++t) {
        for (size_t j = 0; j < row; ++j) {
          if (t % 10 == 3) cached.data[t * row + j] = fresh.data[t * row + j];
          if (t % 7 == 5) {
            fresh.data[t * row + j] = fresh.data[j];
            cached.data[t * row + j] = cached.data[j];
          }
        }
      }
      const std::vector<uint8_t> f = testing::RawOf(fresh);
      const std::vector<uint8_t> c = testing::RawOf(cached);
      for (uint32_t k : {1u, (s.tokens + 2) / 3, s.tokens}) {
        ExpectMatchesCpu(dtype, s.tokens, s.heads, s.dim, k, f, c,
                         /*deviations_out=*/k == 1);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_F(BlendGpuTest, SelectsTheKeysQuantizationDisturbedMostOnTheFixture) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  const uint32_t tokens = fx->passages[1].num_tokens();
  auto kv =
      fx->Kv(1, 0, fx->num_layers, 0, tokens, codecs::RopeForm::kPostRope);
  ASSERT_TRUE(kv.ok()) << kv.status();
  codecs::QuantParams p;  // KIVI-2, G = 32.
  auto payload = testing::CpuQuantEncode(*kv, p);
  ASSERT_TRUE(payload.ok());
  auto decoded = testing::CpuQuantDecodeRaw(kv->shape, p, *payload);
  ASSERT_TRUE(decoded.ok());
  const std::vector<uint8_t> fresh = testing::RawOf(*kv);
  const size_t layer_bytes =
      size_t{tokens} * fx->num_kv_heads * fx->head_dim * 2;
  for (uint32_t layer : {0u, 7u, 29u}) {
    const std::vector<uint8_t> f(fresh.begin() + layer * layer_bytes,
                                 fresh.begin() + (layer + 1) * layer_bytes);
    const std::vector<uint8_t> c(decoded->begin() + layer * layer_bytes,
                                 decoded->begin() + (layer + 1) * layer_bytes);
    ExpectMatchesCpu(DType::kFloat16, tokens, fx->num_kv_heads, fx->head_dim,
                     tokens * 15 / 100, f, c, /*deviations_out=*/false);
  }
}

}  // namespace
}  // namespace strata::kernels
