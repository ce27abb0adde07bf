// Host-side checks of the aqua kernels (no GPU needed): payload sizes,
// recorded params and the packed profile equal the CPU codec's; Validate
// names the field at fault before anything is launched; and the kernels'
// arithmetic and thread decomposition (kernels/internal/aqua_arith.h: the
// prediction tile's lane sums, the group encode, code packing, element
// decode), run on the host in the kernels' order, reproduce the CPU codec's
// payload and decode bytes.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "codecs/aqua_codec.h"
#include "codecs/codec.h"
#include "codecs/kv_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/aqua_kernels.h"
#include "kernels/internal/aqua_arith.h"
#include "kernels/internal/aqua_layout.h"
#include "kernels/kernel_errors.h"
#include "kernels/internal/numeric.h"
#include "kvstore/block_format.h"
#include "tests/kernels/aqua_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::AquaParams;
using codecs::KvTensor;
using internal::AquaArgs;
using internal::AquaSlab;
using kvstore::BlockShape;
using kvstore::DType;
using testing::ExpectField;
using testing::FakeDevice;

// ---- Host emulation of aqua_kernels.cu, launch by launch.

// AquaPredictKernel: every block (bx, by) and thread (ty, tx), staging the
// tiles exactly as the kernel (zero padding outside tq x hd).
void EmulatePredict(const float* x0, const float* x1, uint32_t in,
                    const float* w, const float* bias, float* out, uint32_t tq,
                    uint32_t hd) {
  using namespace internal;  // NOLINT: the kernel's constants.
  constexpr uint32_t kCols = kAquaTn / kAquaNt;
  std::vector<float> xs(kAquaTk * kAquaTm), ws(kAquaTk * kAquaTn);
  for (uint32_t by = 0; by * kAquaTm < tq; ++by) {
    for (uint32_t bx = 0; bx * kAquaTn < hd; ++bx) {
      const uint32_t o0 = bx * kAquaTn, t0 = by * kAquaTm;
      std::vector<float> acc(kAquaPredictThreads * kAquaMt * kAquaNt * 8, 0);
      for (uint32_t k0 = 0; k0 < in; k0 += kAquaTk) {
        const float* xsrc = k0 < hd ? x0 + k0 : x1 + (k0 - hd);
        for (uint32_t e = 0; e < kAquaTm * kAquaTk; ++e) {
          const uint32_t t = e / kAquaTk, k = e % kAquaTk;
          xs[k * kAquaTm + t] = (t0 + t < tq && k0 + k < in)
                                    ? xsrc[uint64_t{t0 + t} * hd + k]
                                    : 0.0f;
        }
        for (uint32_t e = 0; e < kAquaTn * kAquaTk; ++e) {
          const uint32_t o = e / kAquaTk, k = e % kAquaTk;
          ws[k * kAquaTn + o] = (o0 + o < hd && k0 + k < in)
                                    ? w[uint64_t{o0 + o} * in + k0 + k]
                                    : 0.0f;
        }
        for (uint32_t thread = 0; thread < kAquaPredictThreads; ++thread) {
          const uint32_t tx = thread % kCols, ty = thread / kCols;
          float a[kAquaMt][kAquaNt][8];
          std::memcpy(a, &acc[thread * sizeof(a) / 4], sizeof(a));
          for (uint32_t k = 0; k < kAquaTk; ++k) {
            float xa[kAquaMt], wa[kAquaNt];
            for (uint32_t m = 0; m < kAquaMt; ++m)
              xa[m] = xs[k * kAquaTm + ty * kAquaMt + m];
            for (uint32_t n = 0; n < kAquaNt; ++n)
              wa[n] = ws[k * kAquaTn + tx * kAquaNt + n];
            AquaMac(a, static_cast<int>(k % 8), xa, wa);
          }
          std::memcpy(&acc[thread * sizeof(a) / 4], a, sizeof(a));
        }
      }
      for (uint32_t thread = 0; thread < kAquaPredictThreads; ++thread) {
        const uint32_t tx = thread % kCols, ty = thread / kCols;
        float a[kAquaMt][kAquaNt][8];
        std::memcpy(a, &acc[thread * sizeof(a) / 4], sizeof(a));
        for (uint32_t m = 0; m < kAquaMt; ++m) {
          for (uint32_t n = 0; n < kAquaNt; ++n) {
            const uint32_t t = t0 + ty * kAquaMt + m, o = o0 + tx * kAquaNt + n;
            if (t < tq && o < hd) {
              out[uint64_t{t} * hd + o] = AquaLaneSum(a[m][n], bias[o]);
            }
          }
        }
      }
    }
  }
}

// AquaPredictSplitKernel: per block and per output position, the 8 lane
// threads' sums, then the xor-shuffle combination (lane 0's value).
void EmulatePredictSplit(const float* x0, const float* x1, uint32_t in,
                         const float* w, const float* bias, float* out,
                         uint32_t tq, uint32_t hd) {
  using namespace internal;  // NOLINT: the kernel's constants.
  constexpr uint32_t kCols = kAquaSplitTn / 2;
  std::vector<float> xs(kAquaTk * kAquaSplitTm), ws(kAquaTk * kAquaSplitTn);
  for (uint32_t by = 0; by * kAquaSplitTm < tq; ++by) {
    for (uint32_t bx = 0; bx * kAquaSplitTn < hd; ++bx) {
      const uint32_t o0 = bx * kAquaSplitTn, t0 = by * kAquaSplitTm;
      std::vector<float> acc(kAquaSplitThreads * 4, 0.0f);  // [thread][m][n]
      for (uint32_t k0 = 0; k0 < in; k0 += kAquaTk) {
        const float* xsrc = k0 < hd ? x0 + k0 : x1 + (k0 - hd);
        for (uint32_t e = 0; e < kAquaSplitTm * kAquaTk; ++e) {
          const uint32_t t = e / kAquaTk, k = e % kAquaTk;
          xs[k * kAquaSplitTm + t] = (t0 + t < tq && k0 + k < in)
                                         ? xsrc[uint64_t{t0 + t} * hd + k]
                                         : 0.0f;
        }
        for (uint32_t e = 0; e < kAquaSplitTn * kAquaTk; ++e) {
          const uint32_t o = e / kAquaTk, k = e % kAquaTk;
          ws[k * kAquaSplitTn + o] = (o0 + o < hd && k0 + k < in)
                                         ? w[uint64_t{o0 + o} * in + k0 + k]
                                         : 0.0f;
        }
        for (uint32_t thread = 0; thread < kAquaSplitThreads; ++thread) {
          const uint32_t lane = thread % 8, pos = thread / 8;
          const uint32_t tx = pos % kCols, ty = pos / kCols;
          for (uint32_t s = 0; s < kAquaTk / 8; ++s) {
            const uint32_t k = s * 8 + lane;
            for (uint32_t m = 0; m < 2; ++m) {
              for (uint32_t n = 0; n < 2; ++n) {
                float& a = acc[thread * 4 + m * 2 + n];
                a = Add(a, Mul(ws[k * kAquaSplitTn + tx * 2 + n],
                               xs[k * kAquaSplitTm + ty * 2 + m]));
              }
            }
          }
        }
      }
      for (uint32_t thread = 0; thread < kAquaSplitThreads; thread += 8) {
        const uint32_t pos = thread / 8, tx = pos % kCols, ty = pos / kCols;
        for (uint32_t m = 0; m < 2; ++m) {
          for (uint32_t n = 0; n < 2; ++n) {
            float v[8];
            for (uint32_t i = 0; i < 8; ++i) v[i] = acc[(thread + i) * 4 + m * 2 + n];
            for (uint32_t step = 1; step < 8; step <<= 1) {
              float nv[8];
              for (uint32_t i = 0; i < 8; ++i) nv[i] = Add(v[i], v[i ^ step]);
              for (uint32_t i = 0; i < 8; ++i) v[i] = nv[i];
            }
            const uint32_t t = t0 + ty * 2 + m, o = o0 + tx * 2 + n;
            if (t < tq && o < hd) out[uint64_t{t} * hd + o] = Add(v[0], bias[o]);
          }
        }
      }
    }
  }
}

// The whole launch sequence of LaunchAquaEncode / LaunchAquaDecode with a
// host workspace. Returns the error bits the kernels would report.
template <class Tr>
uint32_t EmulateAqua(AquaArgs a, bool decode) {
  using Bits = typename Tr::Bits;
  const uint32_t tq = a.tokens - a.n_sink;
  const uint64_t n = uint64_t{tq} * a.hd;
  std::vector<uint8_t> workspace(internal::AquaWorkspaceBytes(a, !decode) + 256);
  uint8_t* base = workspace.data();
  base += (256 - reinterpret_cast<uintptr_t>(base) % 256) % 256;
  internal::AquaSplitWorkspace(base, !decode, &a);
  uint32_t flags = 0;
  const uint32_t end = decode ? a.out_begin + a.out_count : a.layers;
  const uint32_t raw_layers = decode ? a.out_count : a.layers;
  auto raw_offset = [&](int kv, uint32_t l) {
    return (uint64_t{static_cast<uint32_t>(kv)} * raw_layers + l) * a.tokens *
           a.hd;
  };
  // AquaSinkKernel.
  for (uint32_t l = 0; l < end; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const uint64_t pay = internal::AquaSlabOffset(a, l, kv);
      for (uint64_t i = 0; i < uint64_t{a.n_sink} * a.hd; ++i) {
        if (decode) {
          const Bits b = reinterpret_cast<const Bits*>(
              static_cast<const uint8_t*>(a.payload_in) + pay)[i];
          if (!Tr::IsFinite(b)) flags |= internal::kFlagBadSink;
          if (l >= a.out_begin) {
            static_cast<Bits*>(a.raw_out)[raw_offset(kv, l - a.out_begin) + i] =
                b;
          }
        } else {
          const Bits b =
              static_cast<const Bits*>(a.raw_in)[raw_offset(kv, l) + i];
          if (!Tr::IsFinite(b)) flags |= internal::kFlagNonFinite;
          reinterpret_cast<Bits*>(static_cast<uint8_t*>(a.payload_out) +
                                  pay)[i] = b;
        }
      }
    }
  }
  if (tq == 0) return flags;
  for (uint32_t l = 0; l < end; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const AquaSlab& s = internal::AquaSlabOf(a, l, kv);
      if (l > 0) {  // LaunchPredict.
        const uint64_t hh = uint64_t{a.hd} * a.hd;
        const float* w = a.profile + (l - 1) * a.layer_floats;
        auto predict = internal::AquaUseSplitPredict(tq, a.hd)
                           ? EmulatePredictSplit
                           : EmulatePredict;
        if (kv == 0) {
          predict(a.recon[(l - 1) & 1][0], nullptr, a.hd, w, w + hh, a.pred,
                  tq, a.hd);
        } else {
          predict(a.recon[l & 1][0], a.recon[(l - 1) & 1][1], 2 * a.hd,
                  w + hh + a.hd, w + 3 * hh + a.hd, a.pred, tq, a.hd);
        }
      }
      const float* pred = l > 0 ? a.pred : nullptr;
      if (decode) {  // AquaDecodeKernel.
        const uint8_t* slab = static_cast<const uint8_t*>(a.payload_in) +
                              internal::AquaQuantOffset(a, l, kv);
        Bits* out = l >= a.out_begin
                        ? static_cast<Bits*>(a.raw_out) +
                              raw_offset(kv, l - a.out_begin) +
                              uint64_t{a.n_sink} * a.hd
                        : nullptr;
        for (uint64_t i = 0; i < n; ++i) {
          float v;
          flags |= internal::AquaDecodeElement(
              s, static_cast<uint32_t>(i / s.hd),
              static_cast<uint32_t>(i % s.hd), slab,
              pred != nullptr ? pred[i] : 0.0f, &v);
          a.recon[l & 1][kv][i] = v;
          if (out != nullptr) out[i] = Tr::FromFloat(v);
        }
      } else {  // AquaEncodeGroupsKernel, AquaPackKernel.
        const Bits* x = static_cast<const Bits*>(a.raw_in) + raw_offset(kv, l) +
                        uint64_t{a.n_sink} * a.hd;
        uint8_t* records = static_cast<uint8_t*>(a.payload_out) +
                           internal::AquaQuantOffset(a, l, kv);
        uint32_t* dst = reinterpret_cast<uint32_t*>(records + 4 * s.num_groups);
        const bool aligned = internal::AquaGroupCodesAligned(s);
        for (uint64_t g = 0; g < s.num_groups; ++g) {
          flags |= internal::AquaEncodeGroup<Tr>(
              s, g, x, pred, a.recon[l & 1][kv], records,
              aligned ? nullptr : a.codes, aligned ? dst : nullptr);
        }
        if (!aligned) {
          const uint64_t words = (s.bytes - 4 * s.num_groups) / 4;
          for (uint64_t w = 0; w < words; ++w) {
            dst[w] = internal::AquaPackWord(a.codes, n, s.bits, w);
          }
        }
      }
    }
  }
  return flags;
}

uint32_t EmulateAquaAnyDtype(const AquaArgs& a, bool decode) {
  switch (a.dtype) {
    case internal::kDtypeF16:
      return EmulateAqua<internal::Fp16Traits>(a, decode);
    case internal::kDtypeBF16:
      return EmulateAqua<internal::BFloat16Traits>(a, decode);
    case internal::kDtypeFp8E4M3:
      return EmulateAqua<internal::Fp8E4M3Traits>(a, decode);
    default:
      return EmulateAqua<internal::Fp32Traits>(a, decode);
  }
}

// Emulated GPU encode and decode (whole block and a layer range) of kv must
// equal the CPU codec's bytes.
void ExpectEmulationMatchesCpu(const KvTensor& kv, const AquaParams& p,
                               const codecs::CodecProfile& profile,
                               const std::string& what) {
  codecs::CodecParams cpu_params;
  auto cpu = testing::CpuAquaEncode(kv, p, profile, &cpu_params);
  ASSERT_TRUE(cpu.ok()) << cpu.status() << " " << what;
  auto packed = PackAquaProfile(profile, kv.shape);
  ASSERT_TRUE(packed.ok()) << packed.status();
  AquaArgs a = internal::MakeAquaArgs(kv.shape, p);
  ASSERT_EQ(a.total, cpu->size()) << what;
  std::vector<uint8_t> raw = testing::RawOf(kv);
  std::vector<uint8_t> payload(a.total + 4, 0xA5);
  std::vector<uint32_t> payload_words((a.total + 3) / 4 + 1);
  a.profile = packed->data.data();
  a.raw_in = raw.data();
  a.payload_out = payload_words.data();
  std::memset(payload_words.data(), 0xA5, payload_words.size() * 4);
  ASSERT_EQ(EmulateAquaAnyDtype(a, /*decode=*/false), 0u) << what;
  std::memcpy(payload.data(), payload_words.data(), a.total);
  payload.resize(a.total);
  const int64_t diff = testing::FirstDifference(payload, *cpu);
  ASSERT_EQ(diff, -1) << what << ": first differing payload byte " << diff
                      << " of " << cpu->size();
  const uint32_t L = kv.shape.num_layers;
  const uint32_t ranges[][2] = {{0, 0}, {L - 1, 1}, {L / 2, L - L / 2}};
  for (const auto& r : ranges) {
    auto cpu_raw = testing::CpuAquaDecodeRaw(kv.shape, cpu_params, *cpu,
                                             profile, r[0], r[1]);
    ASSERT_TRUE(cpu_raw.ok()) << cpu_raw.status();
    AquaArgs d = internal::MakeAquaArgs(kv.shape, p);
    d.profile = packed->data.data();
    d.payload_in = payload_words.data();
    d.out_begin = r[0];
    d.out_count = r[1] == 0 ? L : r[1];
    std::vector<uint32_t> out_words(cpu_raw->size() / 4 + 1, 0xA5A5A5A5u);
    d.raw_out = out_words.data();
    ASSERT_EQ(EmulateAquaAnyDtype(d, /*decode=*/true), 0u) << what;
    std::vector<uint8_t> out(cpu_raw->size());
    std::memcpy(out.data(), out_words.data(), out.size());
    const int64_t rdiff = testing::FirstDifference(out, *cpu_raw);
    ASSERT_EQ(rdiff, -1) << what << " layers " << r[0] << "+" << r[1]
                         << ": first differing decoded byte " << rdiff;
  }
}

TEST(AquaKernelHost, EmulationMatchesTheCpuCodecOnRandomBlocks) {
  const uint32_t seed = testing::TestSeed("AquaHostRandom");
  std::mt19937 rng(seed);
  for (const testing::AquaCase& c : testing::AquaCases()) {
    auto profile = testing::RandomAquaProfile(c.shape, rng);
    ASSERT_TRUE(profile.ok()) << profile.status();
    for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3,
                        DType::kFloat32}) {
      BlockShape shape = c.shape;
      shape.dtype = dtype;
      const KvTensor kv = testing::RandomKv(shape, rng);
      ExpectEmulationMatchesCpu(
          kv, c.params, *profile,
          testing::DescribeAqua(shape, c.params) + " seed " +
              std::to_string(seed));
      if (::testing::Test::HasFatalFailure()) return;
      if (testing::QuickMode()) break;
    }
  }
}

TEST(AquaKernelHost, EmulationMatchesTheCpuCodecOnTheFixture) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  // 6 layers, 70 tokens: the real cross-layer structure, host-sized.
  auto calib = fx->Kv(0, 0, 6, 0, fx->passages[0].num_tokens());
  ASSERT_TRUE(calib.ok()) << calib.status();
  auto profile = codecs::FitAquaProfile({*calib}, 1e-3f, "smollm2/host");
  ASSERT_TRUE(profile.ok()) << profile.status();
  auto kv = fx->Kv(1, 0, 6, 0, 70);
  ASSERT_TRUE(kv.ok()) << kv.status();
  AquaParams p;
  p.n_sink = 4;
  ExpectEmulationMatchesCpu(*kv, p, *profile, "fixture K2V2 sink 4");
  if (::testing::Test::HasFatalFailure()) return;
  p.k_bits = 4;
  p.v_bits = 3;
  p.keys_per_token = true;
  p.n_sink = 0;
  ExpectEmulationMatchesCpu(*kv, p, *profile, "fixture K4V3 per-token");
  if (::testing::Test::HasFatalFailure()) return;
  p = AquaParams{};
  p.k_bits = 3;
  p.n_sink = 6;  // 64 quantized tokens: whole key groups.
  ExpectEmulationMatchesCpu(*kv, p, *profile, "fixture K3V2 sink 6");
}

// A grid large enough for the tile kernel (AquaUseSplitPredict false): HD 512,
// 353 quantized tokens, a synthetic profile.
TEST(AquaKernelHost, EmulationOfTheTileKernelMatchesTheCpuCodec) {
  const uint32_t seed = testing::TestSeed("AquaHostTile");
  std::mt19937 rng(seed);
  const BlockShape shape{DType::kFloat16, 2, 356, 4, 128};
  ASSERT_FALSE(internal::AquaUseSplitPredict(353, 512));
  const codecs::CodecProfile profile =
      testing::SyntheticAquaProfile(shape, rng);
  AquaParams p;
  p.n_sink = 3;
  p.k_bits = 4;
  ExpectEmulationMatchesCpu(testing::RandomKv(shape, rng), p, profile,
                            "tile seed " + std::to_string(seed));
}

// The error word of the emulated kernels gives the CPU codec's status code:
// non-finite inputs (sink or quantized, early layer or last), a residual
// above 65504, and a corrupt payload.
TEST(AquaKernelHost, EmulatedErrorsAreTheCpuCodecsErrors) {
  std::mt19937 rng(9);
  const BlockShape shape{DType::kFloat32, 3, 12, 1, 32};
  auto profile = testing::RandomAquaProfile(shape, rng, 64);
  ASSERT_TRUE(profile.ok());
  auto packed = PackAquaProfile(*profile, shape);
  ASSERT_TRUE(packed.ok());
  AquaParams p;
  p.n_sink = 2;
  struct Bad {
    int kv;
    uint32_t layer, token;
    float value;
  };
  for (const Bad& bad : {Bad{1, 1, 1, INFINITY}, Bad{1, 2, 5, NAN},
                         Bad{0, 0, 7, INFINITY}, Bad{0, 1, 9, 1e6f}}) {
    KvTensor kv = testing::RandomKv(shape, rng);
    kv.at(bad.kv, bad.layer, bad.token, 0, 3) = bad.value;
    codecs::CodecParams params;
    auto cpu = testing::CpuAquaEncode(kv, p, *profile, &params);
    ASSERT_FALSE(cpu.ok());
    AquaArgs a = internal::MakeAquaArgs(shape, p);
    std::vector<uint8_t> raw = testing::RawOf(kv);
    std::vector<uint32_t> payload(a.total / 4 + 1);
    a.profile = packed->data.data();
    a.raw_in = raw.data();
    a.payload_out = payload.data();
    const uint32_t flags = EmulateAquaAnyDtype(a, /*decode=*/false);
    EXPECT_EQ(ErrorFlagsToStatus(flags).code(), cpu.status().code())
        << bad.kv << " " << bad.layer << " " << bad.token << ": "
        << cpu.status() << " vs flags " << flags;
  }
  // A negative scale in layer 1's K records.
  const KvTensor kv = testing::RandomKv(shape, rng);
  codecs::CodecParams params;
  auto cpu = testing::CpuAquaEncode(kv, p, *profile, &params);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  AquaArgs a = internal::MakeAquaArgs(shape, p);
  std::vector<uint8_t> corrupt = *cpu;
  corrupt[internal::AquaQuantOffset(a, 1, 0) + 1] = 0xBC;  // fp16 -1.x scale
  EXPECT_EQ(testing::CpuAquaDecodeRaw(shape, params, corrupt, *profile)
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
  std::vector<uint32_t> words(corrupt.size() / 4 + 1);
  std::memcpy(words.data(), corrupt.data(), corrupt.size());
  std::vector<uint32_t> out(shape.RawBytes() / 4 + 1);
  a.profile = packed->data.data();
  a.payload_in = words.data();
  a.raw_out = out.data();
  a.out_count = shape.num_layers;
  EXPECT_EQ(ErrorFlagsToStatus(EmulateAquaAnyDtype(a, /*decode=*/true)).code(),
            absl::StatusCode::kDataLoss);
}

// The lane order matters: a plain sequential sum gives other bits.
TEST(AquaKernelHost, PredictionLaneOrderIsTheCpuOrder) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const uint32_t hd = 64, tq = 40;
  std::vector<float> x(tq * hd), w(hd * hd), bias(hd), out(tq * hd);
  for (float& v : x) v = u(rng);
  for (float& v : w) v = u(rng);
  for (float& v : bias) v = u(rng);
  std::vector<float> split(tq * hd);
  EmulatePredict(x.data(), nullptr, hd, w.data(), bias.data(), out.data(), tq,
                 hd);
  EmulatePredictSplit(x.data(), nullptr, hd, w.data(), bias.data(),
                      split.data(), tq, hd);
  EXPECT_EQ(std::memcmp(out.data(), split.data(), out.size() * 4), 0);
  int sequential_differs = 0;
  for (uint32_t t = 0; t < tq; ++t) {
    for (uint32_t o = 0; o < hd; ++o) {
      float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      float seq = 0;
      for (uint32_t j = 0; j < hd; ++j) {
        const float prod = w[o * hd + j] * x[t * hd + j];
        lane[j % 8] = lane[j % 8] + prod;
        seq = seq + prod;
      }
      const float want = (((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                          ((lane[4] + lane[5]) + (lane[6] + lane[7]))) +
                         bias[o];
      ASSERT_EQ(internal::FloatBits(out[t * hd + o]), internal::FloatBits(want))
          << t << " " << o;
      sequential_differs += (seq + bias[o]) != want;
    }
  }
  EXPECT_GT(sequential_differs, 0);
}

// ---- Sizes, params, profile packing.

TEST(AquaKernelHost, PayloadSizeParamsAndProfileEqualTheCpuCodec) {
  std::mt19937 rng(5);
  for (const testing::AquaCase& c : testing::AquaCases()) {
    auto profile = testing::RandomAquaProfile(c.shape, rng, 80);
    ASSERT_TRUE(profile.ok()) << profile.status();
    const KvTensor kv = testing::RandomKv(c.shape, rng);
    codecs::CodecParams cpu_params;
    auto cpu = testing::CpuAquaEncode(kv, c.params, *profile, &cpu_params);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    auto bytes = AquaPayloadBytes(c.shape, c.params.ToBytes());
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(*bytes, cpu->size()) << testing::DescribeAqua(c.shape, c.params);
    auto packed = PackAquaProfile(*profile, c.shape);
    ASSERT_TRUE(packed.ok()) << packed.status();
    EXPECT_EQ(packed->data.size(), packed->layout.total_floats);
    EXPECT_EQ(packed->layout.profile_id, profile->id());
    AquaEncodeParams e;
    e.shape = c.shape;
    e.codec_params = c.params.ToBytes();
    e.profile_layout = packed->layout;
    EXPECT_EQ(EncodedCodecParams(e), cpu_params);
  }
}

TEST(AquaKernelHost, PackRejectsAProfileOfOtherDims) {
  std::mt19937 rng(8);
  const BlockShape shape{DType::kFloat16, 2, 8, 1, 32};
  auto profile = testing::RandomAquaProfile(shape, rng, 64);
  ASSERT_TRUE(profile.ok());
  BlockShape other = shape;
  other.num_layers = 3;
  ExpectField(PackAquaProfile(*profile, other).status(),
              absl::StatusCode::kFailedPrecondition, "profile");
  codecs::CodecProfile empty("empty");
  EXPECT_FALSE(PackAquaProfile(empty, shape).ok());
}

class AquaValidateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(6);
    auto profile = testing::RandomAquaProfile(shape_, rng, 64);
    ASSERT_TRUE(profile.ok());
    auto packed = PackAquaProfile(*profile, shape_);
    ASSERT_TRUE(packed.ok());
    layout_ = packed->layout;
    auto bytes = AquaPayloadBytes(shape_, AquaParams{}.ToBytes());
    ASSERT_TRUE(bytes.ok());
    payload_bytes_ = *bytes;
    enc_.shape = shape_;
    enc_.codec_params = AquaParams{}.ToBytes();
    enc_.profile_layout = layout_;
    enc_.profile = static_cast<const float*>(FakeDevice(0x100000));
    enc_.kv = FakeDevice(0x10000000);
    enc_.payload = FakeDevice(0x20000000);
    enc_.payload_bytes = payload_bytes_;
    dec_.shape = shape_;
    dec_.codec_params = EncodedCodecParams(enc_);
    dec_.profile_layout = layout_;
    dec_.profile = enc_.profile;
    dec_.payload = FakeDevice(0x20000000);
    dec_.payload_bytes = payload_bytes_;
    dec_.kv = FakeDevice(0x10000000);
  }

  const BlockShape shape_{DType::kFloat16, 3, 40, 2, 32};
  AquaProfileLayout layout_;
  uint64_t payload_bytes_ = 0;
  AquaEncodeParams enc_;
  AquaDecodeParams dec_;
};

TEST_F(AquaValidateTest, GoodParamsPass) {
  EXPECT_TRUE(Validate(enc_).ok()) << Validate(enc_);
  EXPECT_TRUE(Validate(dec_).ok()) << Validate(dec_);
  const uint64_t n = uint64_t{40} * 64;
  EXPECT_GE(WorkspaceBytes(enc_), 21 * n);
  EXPECT_GE(WorkspaceBytes(dec_), 20 * n);
  dec_.layer_begin = 1;
  dec_.layer_count = 2;
  EXPECT_TRUE(Validate(dec_).ok()) << Validate(dec_);
}

TEST_F(AquaValidateTest, EncodeNamesTheField) {
  auto check = [&](auto mutate, absl::StatusCode code, const char* field) {
    AquaEncodeParams e = enc_;
    mutate(e);
    ExpectField(Validate(e), code, field);
  };
  using E = AquaEncodeParams;
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  check([](E& e) { e.codec_params[0] = 2; }, kInvalid, "version");
  check([](E& e) { e.codec_params[1] = 5; }, kInvalid, "k_bits");
  check([](E& e) { e.codec_params[4] = 64; }, kInvalid, "v_group");
  check([](E& e) { e.codec_params[6] = 1; }, kInvalid, "l0_bits");
  check([](E& e) { e.codec_params[16] = 41; }, kInvalid, "n_sink");
  check([](E& e) { e.codec_params[5] = 2; }, kInvalid, "flags");
  check([](E& e) { e.shape.num_kv_heads = 0; }, kInvalid, "num_kv_heads");
  check([](E& e) { e.profile_layout.num_layers = 4; }, kInvalid,
        "profile_layout");
  check([](E& e) { e.profile = nullptr; }, kInvalid, "profile");
  check([](E& e) { e.kv = nullptr; }, kInvalid, "kv");
  check([](E& e) { e.kv = FakeDevice(0x10000008); }, kInvalid, "kv");
  check([](E& e) { e.payload = FakeDevice(0x20000002); }, kInvalid,
        "payload");
  check([&](E& e) { e.payload_bytes = payload_bytes_ + 4; }, kInvalid,
        "payload_bytes");
  check([](E& e) { e.payload = FakeDevice(0x10000100); }, kInvalid,
        "payload");  // Overlaps kv.
  check([](E& e) { e.error_flags = static_cast<uint32_t*>(FakeDevice(0x31)); },
        kInvalid, "error_flags");
  // A misaligned workspace is refused before anything is launched.
  ExpectField(Launch(enc_, FakeDevice(0x40000010), nullptr), kInvalid,
              "workspace");
  ExpectField(Launch(enc_, nullptr, nullptr), kInvalid, "workspace");
}

TEST_F(AquaValidateTest, DecodeNamesTheField) {
  auto check = [&](auto mutate, absl::StatusCode code, const char* field) {
    AquaDecodeParams d = dec_;
    mutate(d);
    ExpectField(Validate(d), code, field);
  };
  using D = AquaDecodeParams;
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  check([](D& d) { d.codec_params[2] = 7; }, kInvalid, "v_bits");
  check([](D& d) { d.codec_params[3] = 16; }, kInvalid, "k_group");
  check([](D& d) { d.codec_params[8] ^= 1; },
        absl::StatusCode::kFailedPrecondition, "profile");
  check([](D& d) { d.profile_layout.head_dim = 64; }, kInvalid,
        "profile_layout");
  check([](D& d) { d.payload = nullptr; }, kInvalid, "payload");
  check([&](D& d) { d.payload_bytes = payload_bytes_ - 4; }, kInvalid,
        "payload_bytes");
  check([](D& d) { d.kv = FakeDevice(0x10000004); }, kInvalid, "kv");
  check([](D& d) { d.kv = FakeDevice(0x20000010); }, kInvalid, "kv");
  check([](D& d) { d.layer_begin = 3; d.layer_count = 1; }, kInvalid,
        "layer_begin");
  check([](D& d) { d.layer_begin = 1; d.layer_count = 3; }, kInvalid,
        "layer_begin");
  check([](D& d) { d.layer_begin = 1; }, kInvalid, "layer_begin");
  ExpectField(Launch(dec_, FakeDevice(0x40000004), nullptr), kInvalid,
              "workspace");
}

TEST_F(AquaValidateTest, AllSinkBlocksNeedNoWorkspace) {
  AquaParams p;
  p.n_sink = 40;
  enc_.codec_params = p.ToBytes();
  auto bytes = AquaPayloadBytes(shape_, p.ToBytes());
  ASSERT_TRUE(bytes.ok());
  enc_.payload_bytes = *bytes;
  EXPECT_TRUE(Validate(enc_).ok()) << Validate(enc_);
  EXPECT_EQ(WorkspaceBytes(enc_), 0u);
}

}  // namespace
}  // namespace strata::kernels
