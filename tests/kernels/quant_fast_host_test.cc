// The fp16 fast-path quant encoder (kernels/quant_encode_fp16.cu) without a
// GPU: its arithmetic (kernels/internal/quant_fast.h) against the CPU
// codec's QuantizeCode on many groups, including ties and tiny scales; its
// decomposition (tiles, partial reductions with an unordered min, the
// first-zero fix-up, packing by addition, the exact re-pack) emulated on the
// host against the CPU codec's payload bytes; and when the path applies.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "codecs/quant_codec.h"
#include "gtest/gtest.h"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"
#include "kernels/internal/quant_fast.h"
#include "kernels/internal/quant_layout.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::KvTensor;
using codecs::QuantParams;
using internal::FastOrExactCode;
using internal::FloatBits;
using internal::GroupRecord;
using internal::HalfToFloat;
using internal::FloatToHalf;
using kvstore::BlockShape;
using kvstore::DType;
using testing::FirstDifference;
using testing::TestSeed;

float HostInverse(float scale) { return scale > 0 ? 1.0f / scale : 0.0f; }

// An fp16 min/max that does not keep element order: of two zeros it returns
// -0 (min) / +0 (max) whatever came first, the opposite of the CPU rule when
// a +0 comes first, so the first-zero fix-up must repair it.
float UnorderedMin(float a, float b) {
  if (a == b) return std::signbit(a) ? a : b;
  return std::min(a, b);
}
float UnorderedMax(float a, float b) {
  if (a == b) return std::signbit(a) ? b : a;
  return std::max(a, b);
}

// ---- Arithmetic.

struct GroupCheck {
  uint64_t codes = 0, near = 0, mismatches = 0;
};

void CheckGroup(const std::vector<uint16_t>& h, int bits, GroupCheck* out) {
  float lo = HalfToFloat(h[0]), hi = lo;
  for (uint16_t v : h) {
    lo = std::min(lo, HalfToFloat(v));
    hi = std::max(hi, HalfToFloat(v));
  }
  const GroupRecord r = internal::MakeGroupRecord(lo, hi, bits);
  const float levels = internal::Levels(bits);
  const float inv = HostInverse(r.scale);
  for (uint16_t v : h) {
    const float x = HalfToFloat(v);
    bool near;
    internal::FastCodeMagic(x, r.zero, inv, levels, &near);
    out->near += near;
    ++out->codes;
    const uint32_t want = internal::QuantizeCode(x, r.zero, r.scale, levels);
    if (FastOrExactCode(x, r.zero, inv, r.scale, levels) != want) {
      if (++out->mismatches <= 5) {
        std::printf("mismatch: x %a zero %a scale %a bits %d want %u\n", x,
                    r.zero, r.scale, bits, want);
      }
    }
  }
}

TEST(QuantFastArithmetic, FastCodesEqualTheCpuQuantizeCode) {
  std::mt19937 rng(TestSeed("FastCodesEqualTheCpuQuantizeCode"));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Group magnitudes from subnormal-range spreads to near fp16 max.
  const float spreads[] = {1e-7f, 3e-5f, 1e-3f, 0.05f, 1.0f, 30.0f, 2000.0f,
                           20000.0f};
  GroupCheck check, ties;
  std::vector<uint16_t> h(32);
  for (int bits : {2, 3, 4, 8}) {
    for (float spread : spreads) {
      for (int g = 0; g < 6000; ++g) {
        const float center = (g % 3 == 0) ? 0.0f : normal(rng) * spread * 4;
        for (uint16_t& v : h) {
          v = FloatToHalf(std::clamp(center + normal(rng) * spread, -65504.0f,
                                     65504.0f));
        }
        CheckGroup(h, bits, &check);
      }
    }
    // Exact ties: zero + (k + 1/2) * scale with a power-of-two scale.
    for (int g = 0; g < 2000; ++g) {
      const float levels = internal::Levels(bits);
      const float scale = std::ldexp(1.0f, static_cast<int>(rng() % 12) - 6);
      const float zero = std::ldexp(static_cast<float>(rng() % 64) - 32.0f,
                                    static_cast<int>(rng() % 6) - 4);
      h[0] = FloatToHalf(zero);
      h[1] = FloatToHalf(zero + levels * scale);
      for (size_t i = 2; i < h.size(); ++i) {
        const float k = static_cast<float>(rng() % static_cast<uint32_t>(levels));
        h[i] = FloatToHalf(zero + (k + 0.5f) * scale);
      }
      CheckGroup(h, bits, &ties);
    }
  }
  std::printf(
      "random groups: %llu codes, %.4f%% took the exact path; tie groups: "
      "%llu codes, %.1f%%\n",
      static_cast<unsigned long long>(check.codes),
      100.0 * check.near / check.codes,
      static_cast<unsigned long long>(ties.codes),
      100.0 * ties.near / ties.codes);
  EXPECT_EQ(check.mismatches, 0u);
  EXPECT_EQ(ties.mismatches, 0u);
  EXPECT_GT(ties.near, ties.codes / 2);  // The ties reached the exact path.
}

// ---- The kernel's decomposition on the host.

void PutLe(std::vector<uint8_t>* out, uint64_t at, uint32_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) (*out)[at + i] = static_cast<uint8_t>(v >> 8 * i);
}

// Codes of n elements at bit k * bits: the fast sum, or the exact re-pack
// when any element is near a half-integer (the kernel's two paths).
uint32_t PackLikeTheKernel(const float* x, int n, const GroupRecord& r,
                           int bits) {
  const float levels = internal::Levels(bits);
  const float inv = HostInverse(r.scale);
  uint32_t word = 0;
  bool any_near = false;
  for (int k = 0; k < n; ++k) {
    bool near;
    const float m = internal::FastCodeMagic(x[k], r.zero, inv, levels, &near);
    any_near |= near;
    word += FloatBits(m) << (k * bits);
  }
  word -= internal::MagicPackBias(bits, n);
  if (!any_near) return word;
  word = 0;
  for (int k = 0; k < n; ++k) {
    word |= FastOrExactCode(x[k], r.zero, inv, r.scale, levels) << (k * bits);
  }
  return word;
}

GroupRecord RecordLikeTheKernel(float lo, float hi, int bits,
                                const std::vector<uint16_t>& in_order) {
  GroupRecord r = internal::MakeGroupRecord(lo, hi, bits);
  if (lo == 0.0f) {
    r.min16 = internal::FirstZeroSign16(
        static_cast<int>(in_order.size()), [&](int i) { return in_order[i]; });
  }
  return r;
}

std::vector<uint8_t> EmulateFastEncode(const BlockShape& shape,
                                       const QuantParams& p,
                                       const std::vector<uint8_t>& raw) {
  const internal::QuantArgs a = internal::MakeQuantArgs(shape, p);
  std::vector<uint8_t> out(internal::QuantTotalBytes(a), 0);
  auto half_at = [&](uint64_t element) {
    return static_cast<uint16_t>(raw[2 * element] | raw[2 * element + 1] << 8);
  };
  const uint32_t tq = a.tokens - a.n_sink, hd = a.hd;
  for (int side = 0; side < 2; ++side) {
    const internal::QuantSideArgs& s = a.side[side];
    const int bits = s.bits;
    for (uint32_t layer = 0; layer < a.layers; ++layer) {
      const uint64_t raw0 = (static_cast<uint64_t>(side) * a.layers + layer) * a.tokens * hd;
      const uint64_t slab = s.side_offset + layer * s.slab_bytes;
      std::memcpy(&out[slab], &raw[2 * raw0], s.sink_bytes);  // Sinks.
      const uint64_t records = slab + s.sink_bytes;
      const uint64_t codes = records + 4 * s.num_groups;
      const uint64_t first = raw0 + uint64_t{a.n_sink} * hd;
      if (s.per_token) {
        for (uint64_t g = 0; g < uint64_t{tq} * hd / 32; ++g) {
          std::vector<uint16_t> h(32);
          float x[32];
          for (int i = 0; i < 32; ++i) {
            h[i] = half_at(first + g * 32 + i);
            x[i] = HalfToFloat(h[i]);
          }
          float lo = x[31], hi = x[31];  // Reduced in a different order.
          for (int i = 30; i >= 0; --i) {
            lo = UnorderedMin(lo, x[i]);
            hi = UnorderedMax(hi, x[i]);
          }
          const GroupRecord r = RecordLikeTheKernel(lo, hi, bits, h);
          PutLe(&out, records + 4 * g, r.Word(), 4);
          const int per = 32 / bits;
          for (int w = 0; w < 32 / per; ++w) {
            PutLe(&out, codes + g * 4 * bits + 4 * w,
                  PackLikeTheKernel(x + w * per, per, r, bits), 4);
          }
        }
        continue;
      }
      for (uint32_t tg = 0; tg < tq / 32; ++tg) {
        for (uint32_t c = 0; c < hd; ++c) {
          std::vector<uint16_t> h(32);
          float x[32];
          for (int t = 0; t < 32; ++t) {
            h[t] = half_at(first + (uint64_t{tg} * 32 + t) * hd + c);
            x[t] = HalfToFloat(h[t]);
          }
          // Warp partials over 4 rows, then the 8 partials.
          float lo = 0, hi = 0;
          for (int w = 0; w < 8; ++w) {
            float plo = x[4 * w], phi = x[4 * w];
            for (int r = 1; r < 4; ++r) {
              plo = UnorderedMin(plo, x[4 * w + r]);
              phi = UnorderedMax(phi, x[4 * w + r]);
            }
            lo = w == 0 ? plo : UnorderedMin(lo, plo);
            hi = w == 0 ? phi : UnorderedMax(hi, phi);
          }
          const GroupRecord r = RecordLikeTheKernel(lo, hi, bits, h);
          PutLe(&out, records + 4 * (uint64_t{tg} * hd + c), r.Word(), 4);
          const uint64_t channel_codes =
              codes + (uint64_t{tg} * 32 * hd + uint64_t{c} * 32) * bits / 8;
          for (int w = 0; w < 8; ++w) {  // One 4*bits-bit piece per warp.
            PutLe(&out, channel_codes + w * bits / 2,
                  PackLikeTheKernel(x + 4 * w, 4, r, bits), bits / 2);
          }
        }
      }
    }
  }
  return out;
}

// Fast-path shapes: hd 256 and 512, token counts with and without sinks.
std::vector<std::pair<BlockShape, QuantParams>> FastCases() {
  std::vector<std::pair<BlockShape, QuantParams>> cases;
  for (int kb : {2, 4, 8}) {
    for (int vb : {2, 4, 8}) {
      for (bool per_token : {false, true}) {
        for (uint16_t n_sink : {0, 16}) {
          QuantParams p;
          p.k_bits = static_cast<uint8_t>(kb);
          p.v_bits = static_cast<uint8_t>(vb);
          p.keys_per_token = per_token;
          p.n_sink = n_sink;
          const uint32_t heads = (kb + vb) % 4 == 0 ? 4 : 2;  // hd 512 or 256.
          cases.push_back({BlockShape{DType::kFloat16, 2,
                                      static_cast<uint32_t>(64 + n_sink),
                                      heads, 128},
                           p});
        }
      }
    }
  }
  return cases;
}

TEST(QuantFastEmulation, BlockEncodeMatchesTheCpuCodec) {
  std::mt19937 rng(TestSeed("QuantFastBlockEncodeMatchesTheCpuCodec"));
  for (const auto& [shape, p] : FastCases()) {
    const KvTensor kv = testing::RandomKv(shape, rng, 2.0f);
    auto cpu = testing::CpuQuantEncode(kv, p);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    ASSERT_TRUE(internal::QuantFp16FastPathApplies(
        internal::MakeQuantArgs(shape, p)))
        << testing::Describe(shape, p);
    EXPECT_EQ(FirstDifference(EmulateFastEncode(shape, p, testing::RawOf(kv)),
                              *cpu),
              -1)
        << testing::Describe(shape, p);
  }
}

TEST(QuantFastEmulation, SignedZeroMinimaFollowTheCpuOrder) {
  std::mt19937 rng(TestSeed("QuantFastSignedZeroMinima"));
  const BlockShape shape{DType::kFloat16, 2, 64, 2, 128};
  const KvTensor kv = testing::SignedZeroKv(shape, rng);
  for (bool per_token : {false, true}) {
    QuantParams p;
    p.keys_per_token = per_token;
    auto cpu = testing::CpuQuantEncode(kv, p);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    EXPECT_EQ(FirstDifference(EmulateFastEncode(shape, p, testing::RawOf(kv)),
                              *cpu),
              -1);
  }
}

TEST(QuantFastEmulation, RealKvValuesMatchTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  auto real = fx->Kv(1, 0, 2, 0, 256, codecs::RopeForm::kPostRope);
  ASSERT_TRUE(real.ok()) << real.status();
  // The fixture's hd is 192; its values, in order, refill a 4 x 64 shape.
  const BlockShape shape{DType::kFloat16, 2, 192, 4, 64};
  auto refilled = testing::RefillKv(*real, shape);
  ASSERT_TRUE(refilled.ok()) << refilled.status();
  const KvTensor& kv = *refilled;
  for (int bits : {2, 4}) {
    QuantParams p;
    p.k_bits = p.v_bits = static_cast<uint8_t>(bits);
    auto cpu = testing::CpuQuantEncode(kv, p);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    EXPECT_EQ(FirstDifference(EmulateFastEncode(shape, p, testing::RawOf(kv)),
                              *cpu),
              -1)
        << bits;
  }
}

TEST(QuantFastPath, AppliesOnlyToItsConfiguration) {
  const BlockShape llama{DType::kFloat16, 32, 256, 8, 128};
  QuantParams p;
  EXPECT_TRUE(internal::QuantFp16FastPathApplies(
      internal::MakeQuantArgs(llama, p)));
  auto applies = [](BlockShape shape, QuantParams q) {
    return internal::QuantFp16FastPathApplies(
        internal::MakeQuantArgs(shape, q));
  };
  BlockShape bf16 = llama;
  bf16.dtype = DType::kBFloat16;
  EXPECT_FALSE(applies(bf16, p));
  BlockShape smollm = llama;
  smollm.num_kv_heads = 3;
  smollm.head_dim = 64;  // hd 192.
  EXPECT_FALSE(applies(smollm, p));
  BlockShape short_group = llama;
  short_group.num_tokens = 250;
  EXPECT_FALSE(applies(short_group, p));
  QuantParams three_bits = p;
  three_bits.v_bits = 3;
  EXPECT_FALSE(applies(llama, three_bits));
  QuantParams group64 = p;
  group64.k_group = 64;
  EXPECT_FALSE(applies(llama, group64));
  QuantParams sinks = p;
  sinks.n_sink = 32;
  EXPECT_TRUE(applies(llama, sinks));
  internal::QuantArgs unaligned = internal::MakeQuantArgs(llama, p);
  unaligned.dst = reinterpret_cast<void*>(uintptr_t{4});
  EXPECT_FALSE(internal::QuantFp16FastPathApplies(unaligned));
}

}  // namespace
}  // namespace strata::kernels
