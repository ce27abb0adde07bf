// Kernel tests that need no GPU: the host API's validation (INVALID_ARGUMENT
// naming the field, before anything is launched), and the kernels' scalar
// arithmetic and thread decomposition run on the host (kernels/internal/
// numeric.h compiled by g++) against the CPU reference codecs.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "codecs/bitpack.h"
#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "codecs/quant_codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/blend_kernels.h"
#include "kernels/internal/numeric.h"
#include "kernels/kernel_errors.h"
#include "kernels/paged_kv_kernels.h"
#include "kernels/quant_kernels.h"
#include "kernels/rope_kernels.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::KvTensor;
using codecs::QuantParams;
using testing::Describe;
using testing::FirstDifference;
using ::testing::StartsWith;
using testing::TestSeed;

uint32_t Bits(float f) { return internal::FloatBits(f); }

// Aligned fake device addresses: Validate never dereferences pointers.
void* FakeDevice(uintptr_t address) { return reinterpret_cast<void*>(address); }

// A float with random bits, biased towards the ranges the converters split.
float RandomFloat(std::mt19937& rng) {
  const uint32_t r = rng();
  switch (r % 4) {
    case 0:
      return internal::BitsToFloat(rng());  // Anything, NaN and inf too.
    case 1:  // Around the fp16 range, its subnormals and rounding points.
      return std::ldexp(static_cast<float>(rng() % 65536) / 1024.0f,
                        static_cast<int>(rng() % 48) - 30) *
             ((r & 8) ? -1.0f : 1.0f);
    case 2:  // fp8 range.
      return std::ldexp(static_cast<float>(rng() % 4096) / 256.0f,
                        static_cast<int>(rng() % 24) - 14) *
             ((r & 8) ? -1.0f : 1.0f);
    default:  // Exact halfway points between fp16 values.
      return internal::HalfToFloat(static_cast<uint16_t>(rng())) +
             std::ldexp(1.0f, -25);
  }
}

// ---- Dtype conversions: the device functions, compiled for the host, equal
// codecs' conversions bit for bit.

TEST(KernelNumeric, HalfToFloatMatchesCodecsForEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = internal::HalfToFloat(static_cast<uint16_t>(h));
    const float want = codecs::HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(Bits(got), Bits(want)) << "half 0x" << std::hex << h;
    }
  }
}

TEST(KernelNumeric, FloatConversionsMatchCodecsOnRandomFloats) {
  std::mt19937 rng(TestSeed("FloatConversionsMatchCodecsOnRandomFloats"));
  for (int i = 0; i < 2000000; ++i) {
    const float f = RandomFloat(rng);
    ASSERT_EQ(internal::FloatToHalf(f), codecs::FloatToHalf(f)) << f;
    ASSERT_EQ(internal::FloatToBFloat16(f), codecs::FloatToBFloat16(f)) << f;
    ASSERT_EQ(internal::FloatToFp8E4M3(f), codecs::FloatToFp8E4M3(f)) << f;
    if (std::isnan(f)) continue;
    // The traits' FromFloat is KvTensorToRaw(RoundToDtype(v)).
    ASSERT_EQ(internal::Fp16Traits::FromFloat(f),
              codecs::FloatToHalf(codecs::RoundToDtype(f, DType::kFloat16)))
        << f;
    ASSERT_EQ(
        internal::BFloat16Traits::FromFloat(f),
        codecs::FloatToBFloat16(codecs::RoundToDtype(f, DType::kBFloat16)))
        << f;
    ASSERT_EQ(
        internal::Fp8E4M3Traits::FromFloat(f),
        codecs::FloatToFp8E4M3(codecs::RoundToDtype(f, DType::kFloat8E4M3)))
        << f;
  }
}

TEST(KernelNumeric, NarrowToFloatMatchesCodecsForEveryValue) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float got = internal::BFloat16ToFloat(static_cast<uint16_t>(b));
    const float want = codecs::BFloat16ToFloat(static_cast<uint16_t>(b));
    ASSERT_TRUE(Bits(got) == Bits(want) ||
                (std::isnan(got) && std::isnan(want)))
        << b;
  }
  for (uint32_t v = 0; v < 256; ++v) {
    const float got = internal::Fp8E4M3ToFloat(static_cast<uint8_t>(v));
    const float want = codecs::Fp8E4M3ToFloat(static_cast<uint8_t>(v));
    ASSERT_TRUE(Bits(got) == Bits(want) ||
                (std::isnan(got) && std::isnan(want)))
        << v;
    EXPECT_EQ(internal::Fp8E4M3Traits::IsFinite(static_cast<uint8_t>(v)),
              !std::isnan(want))
        << v;
  }
}

TEST(KernelNumeric, PackWordAndReadCodeMatchBitpack) {
  std::mt19937 rng(TestSeed("PackWordAndReadCodeMatchBitpack"));
  for (int bits : {2, 3, 4, 8}) {
    for (uint32_t n : {32u, 96u, 128u * 13, 4096u}) {
      std::vector<uint8_t> codes(n);
      std::vector<uint32_t> wide(n);
      for (uint32_t i = 0; i < n; ++i) {
        codes[i] = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
        wide[i] = codes[i];
      }
      std::vector<uint8_t> want(codecs::PackedBytes(n, bits), 0);
      ASSERT_TRUE(codecs::PackBits(wide, bits, 0, absl::MakeSpan(want)));
      std::vector<uint8_t> got((want.size() + 3) / 4 * 4, 0);
      for (uint32_t w = 0; w < got.size() / 4; ++w) {
        const uint32_t word = internal::PackWord(codes.data(), n, bits, w);
        for (int b = 0; b < 4; ++b)
          got[4 * w + b] = static_cast<uint8_t>(word >> (8 * b));
      }
      got.resize(want.size());
      EXPECT_EQ(got, want) << bits << " bits, " << n << " codes";
      for (uint32_t i = 0; i < n; ++i) {
        ASSERT_EQ(internal::ReadCode(want.data(), i, bits), codes[i]);
      }
    }
  }
}

// ---- The quant layout and the kernels' decomposition, on the host.

using testing::QuantCase;
using testing::QuantCases;

TEST(KernelQuantLayout, PayloadBytesMatchTheCpuCodec) {
  std::mt19937 rng(TestSeed("PayloadBytesMatchTheCpuCodec"));
  for (QuantCase c : QuantCases()) {
    for (uint16_t outlier_bp : {0, 100}) {
      c.params.outlier_bp = outlier_bp;
      const KvTensor kv = testing::RandomKv(c.shape, rng);
      auto cpu = testing::CpuQuantEncode(kv, c.params);
      ASSERT_TRUE(cpu.ok()) << cpu.status();
      auto bytes = QuantPayloadBytes(c.shape, c.params.ToBytes());
      ASSERT_TRUE(bytes.ok()) << bytes.status();
      EXPECT_EQ(*bytes, cpu->size()) << Describe(c.shape, c.params);
    }
  }
}

TEST(KernelQuantEmulation, EncodeAndDecodeMatchTheCpuCodecByteForByte) {
  std::mt19937 rng(TestSeed("EncodeAndDecodeMatchTheCpuCodecByteForByte"));
  int cases = 0;
  for (const QuantCase& c : QuantCases()) {
    const KvTensor kv = testing::RandomKv(c.shape, rng, 3.0f);
    auto cpu = testing::CpuQuantEncode(kv, c.params);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    const std::vector<uint8_t> got =
        testing::EmulateQuantEncode(c.shape, c.params, testing::RawOf(kv));
    ASSERT_EQ(FirstDifference(got, *cpu), -1) << Describe(c.shape, c.params);
    auto cpu_raw = testing::CpuQuantDecodeRaw(c.shape, c.params, *cpu);
    ASSERT_TRUE(cpu_raw.ok()) << cpu_raw.status();
    ASSERT_EQ(
        FirstDifference(testing::EmulateQuantDecode(c.shape, c.params, *cpu),
                        *cpu_raw),
        -1)
        << Describe(c.shape, c.params);
    ++cases;
  }
  EXPECT_GT(cases, 200);
}

// Groups whose minimum is a zero of either sign: the payload stores the sign
// of the first zero seen, so the kernels' reductions must keep element order.
TEST(KernelQuantEmulation, SignedZeroMinimaFollowTheCpuOrder) {
  std::mt19937 rng(TestSeed("SignedZeroMinimaFollowTheCpuOrder"));
  const BlockShape shape{DType::kFloat16, 2, 96, 2, 64};
  const KvTensor kv = testing::SignedZeroKv(shape, rng);
  QuantParams p;
  int negative_minima = 0, positive_minima = 0;
  for (bool per_token : {false, true}) {
    p.keys_per_token = per_token;
    auto cpu = testing::CpuQuantEncode(kv, p);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    EXPECT_EQ(
        FirstDifference(
            testing::EmulateQuantEncode(shape, p, testing::RawOf(kv)), *cpu),
        -1);
    // Count group records (K slab of layer 0) whose min is -0 / +0.
    const uint64_t groups = per_token ? 96 * 128 / 32 : 3 * 128;
    for (uint64_t g = 0; g < groups; ++g) {
      const uint16_t min16 =
          static_cast<uint16_t>((*cpu)[4 * g + 2] | (*cpu)[4 * g + 3] << 8);
      negative_minima += min16 == 0x8000;
      positive_minima += min16 == 0x0000;
    }
  }
  EXPECT_GT(negative_minima, 10);
  EXPECT_GT(positive_minima, 10);
}

TEST(KernelQuantEmulation, RealFixtureMatchesTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  for (codecs::RopeForm form :
       {codecs::RopeForm::kPreRope, codecs::RopeForm::kPostRope}) {
    auto kv = fx->Kv(1, 0, fx->num_layers, 0, 256, form);
    ASSERT_TRUE(kv.ok()) << kv.status();
    for (uint8_t bits : {2, 4}) {
      for (uint8_t group : {32, 64}) {
        QuantParams p;
        p.k_bits = p.v_bits = bits;
        p.k_group = p.v_group = group;
        auto cpu = testing::CpuQuantEncode(*kv, p);
        ASSERT_TRUE(cpu.ok()) << cpu.status();
        EXPECT_EQ(FirstDifference(testing::EmulateQuantEncode(
                                      kv->shape, p, testing::RawOf(*kv)),
                                  *cpu),
                  -1)
            << Describe(kv->shape, p);
      }
    }
  }
}

// ---- RoPE: the kernel's table and rotation against codecs::ApplyRope.

TEST(KernelRopeEmulation, ShiftEqualsApplyRopeByDeltaAndNearlyTheNewPosition) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  const uint32_t d = fx->head_dim;
  auto kv = fx->Kv(1, 0, fx->num_layers, 0, 256, codecs::RopeForm::kPreRope);
  ASSERT_TRUE(kv.ok()) << kv.status();
  double worst_ratio = 0;
  for (uint32_t delta : {1u, 7u, 64u, 1000u, 30000u}) {
    for (uint32_t l = 0; l < fx->num_layers; l += 7) {
      for (uint32_t t = 0; t < 256; t += 5) {
        for (uint32_t h = 0; h < fx->num_kv_heads; ++h) {
          const float* x = kv->vec(0, l, t, h);
          std::vector<float> at_p(x, x + d), by_delta, at_new(x, x + d);
          codecs::ApplyRope(at_p.data(), d, t, fx->rope_theta);
          by_delta = at_p;
          codecs::ApplyRope(by_delta.data(), d, delta, fx->rope_theta);
          codecs::ApplyRope(at_new.data(), d, t + delta, fx->rope_theta);
          std::vector<uint8_t> raw(d * 4);
          std::memcpy(raw.data(), at_p.data(), raw.size());
          const std::vector<uint8_t> shifted = testing::EmulateRopeShift(
              DType::kFloat32, d, 1, false, fx->rope_theta,
              static_cast<int32_t>(delta), raw);
          std::vector<float> got(d);
          std::memcpy(got.data(), shifted.data(), raw.size());
          for (uint32_t i = 0; i < d; ++i) {
            ASSERT_EQ(Bits(got[i]), Bits(by_delta[i]));  // Bit exact.
          }
          // Against the new position: per pair, |err| <= 2^-20 * |pair|.
          for (uint32_t i = 0; i < d / 2; ++i) {
            const double norm =
                std::hypot(double{at_new[2 * i]}, double{at_new[2 * i + 1]});
            const double err =
                std::max(std::fabs(got[2 * i] - at_new[2 * i]),
                         std::fabs(got[2 * i + 1] - at_new[2 * i + 1]));
            const double ratio = err / (norm * std::ldexp(1.0, -20) + 1e-30);
            worst_ratio = std::max(worst_ratio, ratio);
          }
        }
      }
    }
  }
  std::printf("worst |shift - ApplyRope(new position)| = %.3f x 2^-20 |pair|\n",
              worst_ratio);
  EXPECT_LE(worst_ratio, 1.0);
}

void ExpectInvalid(const absl::Status& s, const char* field) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), StartsWith(std::string(field) + ":"))
      << s;
}

// Rotating by +delta then -delta: fp32 returns within 2^-21 |pair| per
// element; fp16 within 1.25 fp16 ulps of |pair|.
TEST(KernelRopeEmulation, ShiftThereAndBackRestoresTheKeys) {
  std::mt19937 rng(TestSeed("ShiftThereAndBackRestoresTheKeys"));
  std::normal_distribution<float> n(0, 4);
  for (DType dtype : {DType::kFloat32, DType::kFloat16}) {
    for (bool neox : {false, true}) {
      const uint32_t d = 128, vectors = 200;
      KvTensor kv = KvTensor::Zeros(BlockShape{dtype, 1, vectors, 1, d / 2});
      for (float& x : kv.data) x = codecs::RoundToDtype(n(rng), dtype);
      const std::vector<uint8_t> raw = testing::RawOf(kv);
      double worst = 0;
      for (int32_t delta : {1, 100, 5000, -30000}) {
        const std::vector<uint8_t> there = testing::EmulateRopeShift(
            dtype, d, vectors, neox, 500000.0f, delta, raw);
        const std::vector<uint8_t> back = testing::EmulateRopeShift(
            dtype, d, vectors, neox, 500000.0f, -delta, there);
        auto x = codecs::KvTensorFromRaw(kv.shape, raw);
        auto y = codecs::KvTensorFromRaw(kv.shape, back);
        ASSERT_TRUE(x.ok() && y.ok());
        for (uint32_t v = 0; v < vectors; ++v) {
          for (uint32_t i = 0; i < d / 2; ++i) {
            const size_t a = v * d + (neox ? i : 2 * i);
            const size_t b = v * d + (neox ? i + d / 2 : 2 * i + 1);
            const double err = std::max(std::fabs(y->data[a] - x->data[a]),
                                        std::fabs(y->data[b] - x->data[b]));
            const double pair =
                std::hypot(double{x->data[a]}, double{x->data[b]});
            // fp32: 2^-21 |pair|; fp16: 1.25 ulp of |pair| (two roundings,
            // the first one rotated by the second shift).
            const double mag =
                dtype == DType::kFloat32
                    ? pair * std::ldexp(1.0, -21)
                    : 1.25 * std::ldexp(1.0, std::ilogb(pair) - 10);
            worst = std::max(worst, err / (mag + 1e-30));
          }
        }
      }
      std::printf("%s %s: worst there-and-back error %.3f of the bound\n",
                  kvstore::DTypeName(dtype), neox ? "neox" : "interleaved",
                  worst);
      EXPECT_LE(worst, 1.0);
    }
  }
}

// ---- The CPU reference of the CacheBlend selection.

TEST(KernelBlendReference, SelectsTheLargestDeviationsLowerIndexFirst) {
  // 6 tokens, hd 8, fp32: deviations 0, 4, 1, 4, 9, 0.
  const float fresh_dev[6] = {0, 2, 1, 2, 3, 0};
  std::vector<float> fresh(6 * 8, 0.0f), cached(6 * 8, 0.0f);
  for (int t = 0; t < 6; ++t) fresh[t * 8 + 3] = fresh_dev[t];
  auto bytes = [](const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  };
  auto sel =
      BlendSelectCpu(DType::kFloat32, 6, 1, 8, 2, bytes(fresh), bytes(cached));
  ASSERT_TRUE(sel.ok()) << sel.status();
  EXPECT_EQ(sel->selected, (std::vector<int32_t>{1, 4}));  // 9, then 4 @1.
  EXPECT_EQ(sel->deviations, (std::vector<float>{0, 4, 1, 4, 9, 0}));
  sel =
      BlendSelectCpu(DType::kFloat32, 6, 1, 8, 4, bytes(fresh), bytes(cached));
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel->selected, (std::vector<int32_t>{1, 2, 3, 4}));
  sel =
      BlendSelectCpu(DType::kFloat32, 6, 1, 8, 6, bytes(fresh), bytes(cached));
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel->selected, (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  ExpectInvalid(
      BlendSelectCpu(DType::kFloat32, 6, 1, 8, 7, bytes(fresh), bytes(cached))
          .status(),
      "k");
  ExpectInvalid(
      BlendSelectCpu(DType::kFloat32, 6, 1, 8, 2, bytes(fresh), {}).status(),
      "cached_keys");
}

// ---- Validation: INVALID_ARGUMENT naming the field, no device needed.

QuantEncodeParams GoodEncode() {
  QuantEncodeParams p;
  p.shape = BlockShape{DType::kFloat16, 2, 64, 2, 64};
  p.codec_params = QuantParams().ToBytes();
  p.kv = FakeDevice(0x100000);
  p.payload = FakeDevice(0x800000);
  p.payload_bytes = *QuantPayloadBytes(p.shape, p.codec_params);
  return p;
}

TEST(KernelValidation, QuantEncodeNamesTheBadField) {
  EXPECT_TRUE(Validate(GoodEncode()).ok()) << Validate(GoodEncode());
  EXPECT_EQ(WorkspaceBytes(GoodEncode()), 0u);
  QuantEncodeParams p = GoodEncode();
  p.shape.num_layers = 0;
  ExpectInvalid(Validate(p), "num_layers");
  p = GoodEncode();
  p.shape.dtype = static_cast<DType>(9);
  ExpectInvalid(Validate(p), "dtype");
  p = GoodEncode();
  p.shape.head_dim = 48;  // v_group 32 does not divide it.
  ExpectInvalid(Validate(p), "v_group");
  p = GoodEncode();
  p.codec_params[1] = 5;
  ExpectInvalid(Validate(p), "k_bits");
  p = GoodEncode();
  p.codec_params[3] = 16;
  ExpectInvalid(Validate(p), "k_group");
  p = GoodEncode();
  p.codec_params[0] = 2;
  ExpectInvalid(Validate(p), "version");
  p = GoodEncode();
  QuantParams q;
  q.outlier_bp = 100;
  p.codec_params = q.ToBytes();
  ExpectInvalid(Validate(p), "outlier_bp");
  q = QuantParams();
  q.n_sink = 65;
  p = GoodEncode();
  p.codec_params = q.ToBytes();
  ExpectInvalid(Validate(p), "n_sink");
  p = GoodEncode();
  p.kv = FakeDevice(0x100008);
  ExpectInvalid(Validate(p), "kv");
  p = GoodEncode();
  p.kv = nullptr;
  ExpectInvalid(Validate(p), "kv");
  p = GoodEncode();
  p.payload = FakeDevice(0x800002);
  ExpectInvalid(Validate(p), "payload");
  p = GoodEncode();
  p.payload = FakeDevice(0x100000 + 64);  // Inside kv.
  ExpectInvalid(Validate(p), "payload");
  p = GoodEncode();
  p.payload_bytes -= 1;
  ExpectInvalid(Validate(p), "payload_bytes");
  p = GoodEncode();
  p.error_flags = static_cast<uint32_t*>(FakeDevice(0x900001));
  ExpectInvalid(Validate(p), "error_flags");
  // Launch validates first: nothing reaches the (absent) device.
  p = GoodEncode();
  p.payload_bytes = 0;
  ExpectInvalid(Launch(p, nullptr, nullptr), "payload_bytes");
}

TEST(KernelValidation, QuantDecodeNamesTheBadField) {
  QuantDecodeParams p;
  p.shape = BlockShape{DType::kBFloat16, 1, 100, 4, 128};
  p.codec_params = QuantParams().ToBytes();
  p.payload = FakeDevice(0x100000);
  p.payload_bytes = *QuantPayloadBytes(p.shape, p.codec_params);
  p.kv = FakeDevice(0x800000);
  EXPECT_TRUE(Validate(p).ok()) << Validate(p);
  QuantDecodeParams bad = p;
  bad.kv = FakeDevice(0x800004);
  ExpectInvalid(Validate(bad), "kv");
  bad = p;
  bad.payload = nullptr;
  ExpectInvalid(Validate(bad), "payload");
  bad = p;
  bad.payload_bytes += 4;
  ExpectInvalid(Validate(bad), "payload_bytes");
  bad = p;
  bad.shape.num_tokens = 70000;
  ExpectInvalid(Validate(bad), "num_tokens");
  ExpectInvalid(Launch(bad, nullptr, nullptr), "num_tokens");
}

TEST(KernelValidation, PagedGatherAndScatterNameTheBadField) {
  std::vector<const void*> caches = {FakeDevice(0x1000000),
                                     FakeDevice(0x2000000)};
  PagedGatherParams g;
  g.cache.shape = BlockShape{DType::kFloat16, 2, 256, 8, 128};
  g.cache.layout = PagedLayout::kPageMajor;
  g.cache.num_pages = 16;
  g.cache.page_size = 16;
  g.layer_caches = caches.data();
  g.page_ids = static_cast<const int32_t*>(FakeDevice(0x3000000));
  g.block = FakeDevice(0x4000000);
  EXPECT_TRUE(Validate(g).ok()) << Validate(g);
  EXPECT_EQ(WorkspaceBytes(g), 0u);
  PagedGatherParams bad = g;
  bad.cache.shape.num_kv_heads = 1;
  bad.cache.shape.head_dim = 4;  // 8-byte rows.
  ExpectInvalid(Validate(bad), "num_kv_heads");
  bad = g;
  bad.cache.page_size = 0;
  ExpectInvalid(Validate(bad), "page_size");
  bad = g;
  bad.cache.num_pages = 0;
  ExpectInvalid(Validate(bad), "num_pages");
  bad = g;
  bad.cache.layout = static_cast<PagedLayout>(7);
  ExpectInvalid(Validate(bad), "layout");
  bad = g;
  bad.layer_caches = nullptr;
  ExpectInvalid(Validate(bad), "layer_caches");
  std::vector<const void*> misaligned = {caches[0], FakeDevice(0x2000008)};
  bad = g;
  bad.layer_caches = misaligned.data();
  ExpectInvalid(Validate(bad), "layer_caches[1]");
  bad = g;
  bad.page_ids = nullptr;
  ExpectInvalid(Validate(bad), "page_ids");
  bad = g;
  bad.block = FakeDevice(0x1000000 + 4096);  // Inside layer 0's cache.
  ExpectInvalid(Validate(bad), "block");
  ExpectInvalid(Launch(bad, nullptr, nullptr), "block");

  std::vector<void*> writable = {FakeDevice(0x1000000), FakeDevice(0x2000000)};
  PagedScatterParams s;
  s.cache = g.cache;
  s.layer_caches = writable.data();
  s.page_ids = g.page_ids;
  s.block = g.block;
  EXPECT_TRUE(Validate(s).ok()) << Validate(s);
  s.block = FakeDevice(0x4000001);
  ExpectInvalid(Validate(s), "block");
}

TEST(KernelValidation, PagedRowOffsetFollowsBothLayouts) {
  PagedCacheDesc c;
  c.shape = BlockShape{DType::kFloat16, 1, 32, 2, 64};  // 256-byte rows.
  c.num_pages = 10;
  c.page_size = 16;
  c.layout = PagedLayout::kPageMajor;  // [page][kv][slot]
  EXPECT_EQ(PagedRowOffset(c, 1, 3, 5), ((3 * 2 + 1) * 16 + 5) * 256u);
  c.layout = PagedLayout::kKvMajor;  // [kv][page][slot]
  EXPECT_EQ(PagedRowOffset(c, 1, 3, 5), ((1 * 10 + 3) * 16 + 5) * 256u);
}

TEST(KernelValidation, RopeShiftNamesTheBadField) {
  RopeShiftParams p;
  p.dtype = DType::kFloat16;
  p.head_dim = 128;
  p.num_vectors = 1000;
  p.theta = 500000.0f;
  p.delta = -17;
  p.src = p.dst = FakeDevice(0x100000);
  EXPECT_TRUE(Validate(p).ok()) << Validate(p);
  EXPECT_EQ(WorkspaceBytes(p), 0u);
  RopeShiftParams bad = p;
  bad.head_dim = 68;
  ExpectInvalid(Validate(bad), "head_dim");
  bad = p;
  bad.theta = 1.0f;
  ExpectInvalid(Validate(bad), "theta");
  bad = p;
  bad.theta = NAN;
  ExpectInvalid(Validate(bad), "theta");
  bad = p;
  bad.num_vectors = 0;
  ExpectInvalid(Validate(bad), "num_vectors");
  bad = p;
  bad.dtype = static_cast<DType>(0);
  ExpectInvalid(Validate(bad), "dtype");
  bad = p;
  bad.style = static_cast<RopeStyle>(3);
  ExpectInvalid(Validate(bad), "style");
  bad = p;
  bad.dst = FakeDevice(0x100000 + 256);  // Overlaps src, not in place.
  ExpectInvalid(Validate(bad), "dst");
  bad = p;
  bad.src = FakeDevice(0x100002);
  bad.dst = FakeDevice(0x900000);
  ExpectInvalid(Validate(bad), "src");
  ExpectInvalid(Launch(bad, nullptr, nullptr), "src");
}

TEST(KernelValidation, BlendSelectNamesTheBadField) {
  BlendSelectParams p;
  p.dtype = DType::kBFloat16;
  p.num_tokens = 256;
  p.kv_heads = 8;
  p.head_dim = 128;
  p.k = 40;
  p.fresh_keys = FakeDevice(0x100000);
  p.cached_keys = FakeDevice(0x200000);
  p.selected = static_cast<int32_t*>(FakeDevice(0x300000));
  EXPECT_TRUE(Validate(p).ok()) << Validate(p);
  EXPECT_EQ(WorkspaceBytes(p), 1024u);
  BlendSelectParams bad = p;
  bad.k = 0;
  ExpectInvalid(Validate(bad), "k");
  bad.k = 257;
  ExpectInvalid(Validate(bad), "k");
  bad = p;
  bad.kv_heads = 1;
  bad.head_dim = 12;
  ExpectInvalid(Validate(bad), "head_dim");
  bad = p;
  bad.num_tokens = 0;
  ExpectInvalid(Validate(bad), "num_tokens");
  bad = p;
  bad.fresh_keys = FakeDevice(0x100004);
  ExpectInvalid(Validate(bad), "fresh_keys");
  bad = p;
  bad.cached_keys = nullptr;
  ExpectInvalid(Validate(bad), "cached_keys");
  bad = p;
  bad.selected = static_cast<int32_t*>(FakeDevice(0x300002));
  ExpectInvalid(Validate(bad), "selected");
  bad = p;
  bad.deviations = static_cast<float*>(FakeDevice(0x400000));
  EXPECT_EQ(WorkspaceBytes(bad), 0u);
  // The workspace is checked at launch when the deviations live there.
  ExpectInvalid(Launch(p, nullptr, nullptr), "workspace");
}

TEST(KernelErrors, FlagsMapToTheCpuCodecsCodes) {
  EXPECT_TRUE(ErrorFlagsToStatus(0).ok());
  ExpectInvalid(ErrorFlagsToStatus(kErrorNonFiniteInput), "kv");
  ExpectInvalid(ErrorFlagsToStatus(kErrorOutOfRange), "kv");
  ExpectInvalid(ErrorFlagsToStatus(kErrorBadPageId), "page_ids");
  const absl::Status loss =
      ErrorFlagsToStatus(kErrorBadGroupRecord | kErrorNonFiniteInput);
  EXPECT_EQ(loss.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(loss.message()), StartsWith("payload:"));
  EXPECT_EQ(ErrorFlagsToStatus(kErrorBadSink).code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace strata::kernels
