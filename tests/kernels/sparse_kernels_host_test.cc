// Host-side checks of the sparse (CSR) kernels (no GPU needed):
// - payload sizes, packed profile and recorded params equal the CPU codec's,
//   and Validate names the field at fault before anything is launched;
// - the kernels' arithmetic (kernels/internal/sparse_math.h) equals the CPU
//   codec's (DotF32 bit for bit), and the GEMM error bound holds with a
//   factor 2 to spare against dot products summed in other orders;
// - the encode algorithm of the kernels (GEMM candidate scores -> filter ->
//   exact re-score), emulated on the host with approximate scores from other
//   summation orders and with adversarial errors at the largest size a GEMM
//   may make, gives the CPU codec's payload byte for byte, and the decode
//   kernel's arithmetic gives the CPU decode's raw bytes (random blocks of
//   every dtype, tie-making dictionaries, the SmolLM2 fixture).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "codecs/codec.h"
#include "codecs/internal/linalg.h"
#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "codecs/sparse_codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/internal/numeric.h"
#include "kernels/internal/sparse_launch.h"
#include "kernels/internal/sparse_math.h"
#include "kernels/sparse_kernels.h"
#include "kvstore/block_format.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/sparse_test_util.h"

namespace strata::kernels {
namespace {

using codecs::KvTensor;
using codecs::SparseParams;
using kvstore::BlockShape;
using kvstore::DType;
using testing::ExpectField;
using testing::FakeDevice;

// ---- the emulation of the kernels

enum class Approx {
  kDouble,       // The real dot in double, rounded to float.
  kReverse,      // fp32, summed from the last channel down, with FMA.
  kAdversarial,  // The exact dot moved by up to 2*C*u*sum|r a| (random sign).
};

struct EmulationStats {
  uint64_t picks = 0;
  uint64_t candidates = 0;   // Atoms re-scored exactly.
  uint64_t max_candidates = 0;
  uint64_t fallbacks = 0;
};

float ApproxDot(const float* r, const float* a, uint32_t n, Approx mode,
                std::mt19937& rng) {
  switch (mode) {
    case Approx::kDouble: {
      double s = 0;
      for (uint32_t e = 0; e < n; ++e) s += double{r[e]} * a[e];
      return static_cast<float>(s);
    }
    case Approx::kReverse: {
      float s = 0;
      for (uint32_t e = n; e-- > 0;) s = std::fma(r[e], a[e], s);
      return s;
    }
    case Approx::kAdversarial: {
      const float p = internal::SparseDot(r, a, n);
      double abs = 0;
      for (uint32_t e = 0; e < n; ++e) abs += std::fabs(double{r[e]} * a[e]);
      std::uniform_real_distribution<double> u(-1.0, 1.0);
      const double delta = u(rng) * 2.0 * n * std::ldexp(1.0, -24) * abs;
      return static_cast<float>(p + delta);
    }
  }
  return 0;
}

// The select kernel's decision for one residual, as the kernel makes it
// (pass 1: best lower bound; pass 2: exact re-score of the candidates; the
// winner rule), with the fallback.
void EmulateSelect(const float* r, const float* dict, const float* norm2,
                   const float* inv, uint32_t N, uint32_t C, Approx mode,
                   std::mt19937& rng, EmulationStats* st, uint32_t* out_i,
                   float* out_p) {
  using internal::kSparseNoAtom;
  float ss = 0;
  for (uint32_t e = 0; e < C; ++e) ss += r[e] * r[e];
  const float rnorm = internal::SparseNormUpperBound(ss);
  std::vector<float> q(N);
  for (uint32_t i = 0; i < N; ++i)
    q[i] = ApproxDot(r, dict + size_t{i} * C, C, mode, rng);
  bool bad = !std::isfinite(rnorm);
  float lower = -INFINITY;
  for (uint32_t i = 0; i < N && !bad; ++i) {
    if (norm2[i] == 0 || norm2[i] < internal::kSparseTinyNorm2) continue;
    const float sc = internal::SparseScore(q[i], inv[i]);
    if (!std::isfinite(sc)) {
      bad = true;
      break;
    }
    lower = std::fmax(
        lower, sc - internal::SparseScoreSlack(sc, inv[i], rnorm, C));
  }
  float best_s = 0, best_p = 0;
  uint32_t best_i = kSparseNoAtom;
  uint64_t cands = 0;
  if (!bad) {
    for (uint32_t i = 0; i < N; ++i) {
      if (norm2[i] == 0) continue;
      if (!(norm2[i] < internal::kSparseTinyNorm2)) {
        const float sc = internal::SparseScore(q[i], inv[i]);
        if (sc + internal::SparseScoreSlack(sc, inv[i], rnorm, C) < lower)
          continue;
      }
      ++cands;
      const float p = internal::SparseDot(r, dict + size_t{i} * C, C);
      const float sc = internal::SparseScore(p, inv[i]);
      if (!std::isfinite(sc)) bad = true;
      if (internal::SparseBetter(sc, i, best_s, best_i)) {
        best_s = sc;
        best_i = i;
        best_p = p;
      }
    }
  }
  if (bad) {
    ++st->fallbacks;
    int64_t bi = -1;
    float bs = 0, bp = 0;
    for (uint32_t i = 0; i < N; ++i) {
      if (norm2[i] == 0) continue;
      const float p = internal::SparseDot(r, dict + size_t{i} * C, C);
      const float sc = internal::SparseScore(p, inv[i]);
      if (bi < 0 || sc > bs) {
        bi = i;
        bs = sc;
        bp = p;
      }
    }
    best_i = bi < 0 ? kSparseNoAtom : static_cast<uint32_t>(bi);
    best_p = bp;
  }
  ++st->picks;
  st->candidates += cands;
  st->max_candidates = std::max(st->max_candidates, cands);
  *out_i = best_i;
  *out_p = best_p;
}

// The GPU encode of `kv` (online_atoms 0) on the host: the kernels' tiles
// (as PlanEncode cuts them) do not change any chunk's result, so chunks are
// walked in payload order.
std::vector<uint8_t> EmulateSparseEncode(const KvTensor& kv,
                                         const SparseParams& p,
                                         const PackedSparseProfile& pk,
                                         Approx mode, std::mt19937& rng,
                                         EmulationStats* st) {
  const BlockShape& s = kv.shape;
  const SparseProfileLayout& lay = pk.layout;
  const uint32_t C = lay.atom_dim, N = lay.num_atoms;
  const uint64_t chunks =
      2ull * s.num_layers * s.num_tokens * s.num_kv_heads * p.chunks_per_head;
  std::vector<uint8_t> payload(chunks * p.atoms_per_chunk * 4);
  const uint64_t per_layer =
      uint64_t{s.num_tokens} * s.num_kv_heads * p.chunks_per_head;
  std::vector<float> r(C);
  for (uint64_t g = 0; g < chunks; ++g) {
    const uint64_t kl = g / per_layer;
    const int k = kl >= s.num_layers ? 1 : 0;
    const uint32_t layer = static_cast<uint32_t>(kl - k * s.num_layers);
    const uint32_t grp = lay.group_of_layer[layer];
    const float* dict = pk.data.data() + lay.dict[k] + size_t{grp} * N * C;
    const float* norm2 = pk.data.data() + lay.norm2[k] + size_t{grp} * N;
    const float* inv = pk.data.data() + lay.inv_norm[k] + size_t{grp} * N;
    std::copy_n(kv.data.data() + g * C, C, r.begin());
    for (uint32_t j = 0; j < p.atoms_per_chunk; ++j) {
      uint32_t bi;
      float bp;
      EmulateSelect(r.data(), dict, norm2, inv, N, C, mode, rng, st, &bi, &bp);
      uint16_t index = 0, code = 0;
      if (bi != internal::kSparseNoAtom) {
        index = static_cast<uint16_t>(bi);
        code = internal::SparseCoefficientCode(bp, norm2[bi]);
        const float cf = internal::HalfToFloat(code);
        for (uint32_t e = 0; e < C; ++e)
          r[e] = internal::Sub(r[e], internal::Mul(cf, dict[size_t{bi} * C + e]));
      }
      uint8_t* rec = &payload[(g * p.atoms_per_chunk + j) * 4];
      rec[0] = static_cast<uint8_t>(index);
      rec[1] = static_cast<uint8_t>(index >> 8);
      rec[2] = static_cast<uint8_t>(code);
      rec[3] = static_cast<uint8_t>(code >> 8);
    }
  }
  return payload;
}

template <class Tr>
void StoreElement(uint8_t* out, uint64_t x, float y) {
  const typename Tr::Bits b = Tr::FromFloat(y);
  std::memcpy(out + x * sizeof(b), &b, sizeof(b));
}

// The decode kernel's arithmetic per element, including online atoms.
std::vector<uint8_t> EmulateSparseDecode(const BlockShape& s,
                                         const SparseParams& p,
                                         const PackedSparseProfile& pk,
                                         const std::vector<uint8_t>& payload) {
  const SparseProfileLayout& lay = pk.layout;
  const uint32_t C = lay.atom_dim, N = lay.num_atoms, M = p.online_atoms;
  const uint64_t chunks =
      2ull * s.num_layers * s.num_tokens * s.num_kv_heads * p.chunks_per_head;
  const uint64_t per_layer =
      uint64_t{s.num_tokens} * s.num_kv_heads * p.chunks_per_head;
  const uint64_t records = 2ull * s.num_layers * M * C * 2;
  std::vector<uint8_t> out(s.RawBytes());
  for (uint64_t x = 0; x < chunks * C; ++x) {
    const uint64_t g = x / C;
    const uint32_t e = static_cast<uint32_t>(x % C);
    const uint64_t kl = g / per_layer;
    const int k = kl >= s.num_layers ? 1 : 0;
    const uint32_t layer = static_cast<uint32_t>(kl - k * s.num_layers);
    const float* dict = pk.data.data() + lay.dict[k] +
                        size_t{lay.group_of_layer[layer]} * N * C;
    float y = 0.0f;
    for (uint32_t j = 0; j < p.atoms_per_chunk; ++j) {
      const uint8_t* rec = &payload[records + (g * p.atoms_per_chunk + j) * 4];
      const uint32_t i = rec[0] | (rec[1] << 8);
      const uint16_t h = static_cast<uint16_t>(rec[2] | (rec[3] << 8));
      float av;
      if (i < N) {
        av = dict[size_t{i} * C + e];
      } else {
        const uint8_t* q = &payload[(kl * M + (i - N)) * C * 2 + e * 2];
        av = internal::HalfToFloat(static_cast<uint16_t>(q[0] | (q[1] << 8)));
      }
      y = internal::Add(y, internal::Mul(internal::HalfToFloat(h), av));
    }
    switch (s.dtype) {
      case DType::kFloat16:
        StoreElement<internal::Fp16Traits>(out.data(), x, y);
        break;
      case DType::kBFloat16:
        StoreElement<internal::BFloat16Traits>(out.data(), x, y);
        break;
      case DType::kFloat8E4M3:
        StoreElement<internal::Fp8E4M3Traits>(out.data(), x, y);
        break;
      default:
        StoreElement<internal::Fp32Traits>(out.data(), x, y);
    }
  }
  return out;
}

// CPU encode (and decode) vs the emulation, for every approximation mode.
void ExpectEmulationMatchesCpu(const KvTensor& kv,
                               const codecs::CodecProfile& profile,
                               const SparseParams& p, std::mt19937& rng,
                               const std::string& what,
                               EmulationStats* stats) {
  auto codec = codecs::FindCodec(codecs::CodecId::kSparse);
  ASSERT_TRUE(codec.ok());
  codecs::CodecParams cpu_params = p.ToBytes();
  auto cpu = (*codec)->Encode(kv, cpu_params, &profile);
  ASSERT_TRUE(cpu.ok()) << cpu.status() << " " << what;
  auto packed = PackSparseProfile(profile, kv.shape);
  ASSERT_TRUE(packed.ok()) << packed.status();
  auto bytes = SparsePayloadBytes(kv.shape, p.ToBytes());
  ASSERT_TRUE(bytes.ok());
  ASSERT_EQ(*bytes, cpu->size()) << what;
  if (p.online_atoms == 0) {
    for (Approx mode :
         {Approx::kDouble, Approx::kReverse, Approx::kAdversarial}) {
      const std::vector<uint8_t> got =
          EmulateSparseEncode(kv, p, *packed, mode, rng, stats);
      const int64_t diff = testing::FirstDifference(got, *cpu);
      ASSERT_EQ(diff, -1) << what << " approx mode " << static_cast<int>(mode)
                          << ": first differing payload byte " << diff;
    }
  }
  KvTensor dec;
  ASSERT_TRUE(
      (*codec)->Decode(kv.shape, cpu_params, *cpu, &profile, {}, &dec).ok());
  const std::vector<uint8_t> want = testing::RawOf(dec);
  const std::vector<uint8_t> got =
      EmulateSparseDecode(kv.shape, p, *packed, *cpu);
  const int64_t diff = testing::FirstDifference(got, want);
  ASSERT_EQ(diff, -1) << what << ": first differing decoded byte " << diff;
}

// ---- arithmetic

TEST(SparseKernelNumeric, DotIsTheCpuDotBitForBit) {
  const uint32_t seed = testing::TestSeed("SparseKernelNumeric.Dot");
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0, 1);
  for (uint32_t len = 1; len <= 520; len += (len < 40 ? 1 : 37)) {
    std::vector<float> a(len), b(len);
    for (int rep = 0; rep < 20; ++rep) {
      for (uint32_t e = 0; e < len; ++e) {
        a[e] = n(rng) * (rep % 4 == 3 ? 1e-20f : 1.0f);
        b[e] = n(rng);
      }
      const float want = codecs::internal::DotF32(a.data(), b.data(), len);
      const float got = internal::SparseDot(a.data(), b.data(), len);
      ASSERT_EQ(internal::FloatBits(got), internal::FloatBits(want))
          << "len " << len << " seed " << seed;
    }
  }
}

TEST(SparseKernelNumeric, ScoreSlackCoversOtherSummationOrdersTwice) {
  const uint32_t seed = testing::TestSeed("SparseKernelNumeric.Slack");
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0, 1);
  std::uniform_real_distribution<float> mag(-30, 30);
  double worst = 0;  // |approx - exact| / slack.
  for (uint32_t C : {8u, 16u, 32u, 64u, 128u, 512u}) {
    std::vector<float> r(C), a(C);
    for (int rep = 0; rep < 400; ++rep) {
      const float scale = std::exp2(mag(rng));
      double an = 0;
      for (uint32_t e = 0; e < C; ++e) {
        r[e] = n(rng) * scale;
        a[e] = n(rng);
        an += double{a[e]} * a[e];
      }
      // Cancellation-heavy residuals: r nearly orthogonal to a.
      if (rep % 2 == 1) {
        double ra = 0;
        for (uint32_t e = 0; e < C; ++e) ra += double{r[e]} * a[e];
        for (uint32_t e = 0; e < C; ++e)
          r[e] = static_cast<float>(r[e] - ra / an * a[e]);
      }
      const float norm2 = internal::SparseDot(a.data(), a.data(), C);
      const float inv = 1.0f / std::sqrt(norm2);
      float ss = 0;
      for (float v : r) ss += v * v;
      const float rnorm = internal::SparseNormUpperBound(ss);
      const float exact = internal::SparseScore(
          internal::SparseDot(r.data(), a.data(), C), inv);
      for (Approx mode : {Approx::kDouble, Approx::kReverse}) {
        const float sc = internal::SparseScore(
            ApproxDot(r.data(), a.data(), C, mode, rng), inv);
        const float slack = internal::SparseScoreSlack(sc, inv, rnorm, C);
        ASSERT_LE(std::fabs(sc - exact), slack / 2)
            << "C " << C << " seed " << seed;
        worst = std::max(worst, std::fabs(double{sc} - exact) / slack);
      }
    }
  }
  std::printf("worst |approx - exact| / slack = %.4f\n", worst);
}

// ---- the emulated kernels vs the CPU codec

TEST(SparseKernelEmulation, EncodeAndDecodeMatchTheCpuCodec) {
  const uint32_t seed = testing::TestSeed("SparseKernelEmulation.Random");
  std::mt19937 rng(seed);
  EmulationStats stats;
  struct Case {
    BlockShape shape;
    uint8_t chunks, s, online;
    uint32_t groups, atoms;
  };
  const Case cases[] = {
      {{DType::kFloat16, 3, 9, 2, 32}, 1, 4, 0, 2, 24},
      {{DType::kBFloat16, 2, 7, 3, 64}, 2, 2, 0, 1, 40},
      {{DType::kFloat8E4M3, 4, 5, 1, 32}, 4, 3, 0, 3, 16},
      {{DType::kFloat32, 2, 6, 2, 16}, 1, 5, 0, 2, 64},
      {{DType::kFloat16, 2, 8, 2, 32}, 2, 2, 3, 1, 20},  // Online atoms.
  };
  for (const Case& c : cases) {
    for (bool ties : {false, true}) {
      const codecs::CodecProfile profile = testing::MakeSparseProfile(
          c.shape, c.chunks, c.groups, c.atoms, ties, rng);
      KvTensor kv = testing::RandomKv(c.shape, rng);
      if (ties) testing::PlantAtomOne(profile, c.chunks, &kv);
      SparseParams p;
      p.atoms_per_chunk = c.s;
      p.chunks_per_head = c.chunks;
      p.online_atoms = c.online;
      ExpectEmulationMatchesCpu(
          kv, profile, p, rng,
          absl::StrCat("dtype ", static_cast<int>(c.shape.dtype), " d ",
                       c.shape.head_dim, " s_n ", static_cast<int>(c.chunks),
                       " s ", static_cast<int>(c.s), " ties ", ties, " seed ",
                       seed),
          &stats);
      if (HasFatalFailure()) return;
    }
  }
  // An all-zero block: every score is 0, every atom a candidate, and the
  // lowest non-zero atom wins with coefficient 0.
  const BlockShape zshape{DType::kFloat16, 1, 3, 1, 32};
  const codecs::CodecProfile zprofile =
      testing::MakeSparseProfile(zshape, 1, 1, 8, true, rng);
  SparseParams zp;
  zp.atoms_per_chunk = 2;
  zp.chunks_per_head = 1;
  ExpectEmulationMatchesCpu(KvTensor::Zeros(zshape), zprofile, zp, rng,
                            "zeros", &stats);
  std::printf("picks %llu, exactly re-scored atoms %.2f per pick (max %llu), "
              "fallbacks %llu\n",
              static_cast<unsigned long long>(stats.picks),
              double(stats.candidates) / std::max<uint64_t>(1, stats.picks),
              static_cast<unsigned long long>(stats.max_candidates),
              static_cast<unsigned long long>(stats.fallbacks));
}

TEST(SparseKernelEmulation, RealFixtureMatchesTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  if (!fx.ok()) GTEST_SKIP() << "no KV fixture: " << fx.status();
  const uint32_t L = fx->num_layers;
  auto calib = fx->Kv(0, 0, L, 0, fx->passages[0].num_tokens());
  ASSERT_TRUE(calib.ok());
  codecs::SparseFitOptions opt;
  opt.num_atoms = 64;
  opt.chunks_per_head = 2;
  opt.layers_per_group = 5;
  opt.atoms_per_chunk = 2;
  opt.kmeans_iterations = 2;
  opt.refine_rounds = 1;
  opt.max_training_chunks = 2048;
  auto profile = codecs::FitSparseProfile({*calib}, opt, "smollm2/host");
  ASSERT_TRUE(profile.ok()) << profile.status();
  // A slice of the held-out passage keeps the host test fast.
  auto kv = fx->Kv(1, 0, L, 0, 24);
  ASSERT_TRUE(kv.ok());
  // The profile's csr.meta names all layers: the slice has them all.
  std::mt19937 rng(11);
  EmulationStats stats;
  SparseParams p;
  p.atoms_per_chunk = 2;
  p.chunks_per_head = 2;
  ExpectEmulationMatchesCpu(*kv, *profile, p, rng, "fixture", &stats);
  std::printf("fixture: exactly re-scored atoms %.2f per pick (max %llu)\n",
              double(stats.candidates) / std::max<uint64_t>(1, stats.picks),
              static_cast<unsigned long long>(stats.max_candidates));
}

// ---- host API

TEST(SparseKernelHost, PackedProfileAndPayloadSizeEqualTheCpuCodec) {
  std::mt19937 rng(21);
  const BlockShape shape{DType::kFloat16, 3, 5, 2, 64};
  const codecs::CodecProfile profile =
      testing::MakeSparseProfile(shape, 2, 2, 12, true, rng);
  auto packed = PackSparseProfile(profile, shape);
  ASSERT_TRUE(packed.ok()) << packed.status();
  const SparseProfileLayout& lay = packed->layout;
  EXPECT_EQ(packed->data.size(), lay.total_floats);
  EXPECT_EQ(lay.num_atoms, 12u);
  EXPECT_EQ(lay.atom_dim, 32u);
  EXPECT_EQ(lay.group_of_layer, (std::vector<uint32_t>{0, 0, 1}));
  EXPECT_EQ(lay.profile_id, profile.id());
  // Norms: the CPU's AtomSet; the zero atom has 0 and 0.
  const auto* dict = profile.Find("csr.v.dict");
  const codecs::internal::AtomSet set(dict->data.data() + 12 * 32, 12, 32);
  for (uint32_t i = 0; i < 12; ++i) {
    EXPECT_EQ(packed->data[lay.norm2[1] + 12 + i], set.norm2[i]);
    EXPECT_EQ(packed->data[lay.inv_norm[1] + 12 + i], set.inv_norm[i]);
  }
  EXPECT_EQ(packed->data[lay.norm2[0] + 5], 0.0f);
  EXPECT_EQ(packed->data[lay.groups + 2], 1.0f);
  auto codec = codecs::FindCodec(codecs::CodecId::kSparse);
  ASSERT_TRUE(codec.ok());
  const KvTensor kv = testing::RandomKv(shape, rng);
  for (uint8_t s : {1, 3}) {
    for (uint8_t online : {0, 2}) {
      codecs::CodecParams params = testing::SparseParamsBytes(s, 2, online);
      auto cpu = (*codec)->Encode(kv, params, &profile);
      ASSERT_TRUE(cpu.ok()) << cpu.status();
      auto bytes =
          SparsePayloadBytes(shape, testing::SparseParamsBytes(s, 2, online));
      ASSERT_TRUE(bytes.ok());
      EXPECT_EQ(*bytes, cpu->size());
      SparseEncodeParams enc;
      enc.codec_params = testing::SparseParamsBytes(s, 2, online);
      enc.profile_layout = lay;
      EXPECT_EQ(EncodedCodecParams(enc), params);
    }
  }
  // Another shape's meta, or a profile without dictionaries.
  BlockShape other = shape;
  other.num_kv_heads = 3;
  EXPECT_EQ(PackSparseProfile(profile, other).status().code(),
            absl::StatusCode::kFailedPrecondition);
  codecs::CodecProfile empty("x");
  ExpectField(PackSparseProfile(empty, shape).status(),
              absl::StatusCode::kFailedPrecondition, "profile");
}

TEST(SparseKernelHost, ValidateNamesTheFieldAndSizesTheWorkspace) {
  std::mt19937 rng(22);
  const BlockShape shape{DType::kFloat16, 2, 8, 2, 64};
  const codecs::CodecProfile profile =
      testing::MakeSparseProfile(shape, 2, 1, 40, false, rng);
  auto packed = PackSparseProfile(profile, shape);
  ASSERT_TRUE(packed.ok());
  SparseEncodeParams p;
  p.shape = shape;
  p.codec_params = testing::SparseParamsBytes(2, 2);
  p.profile_layout = packed->layout;
  p.profile = static_cast<const float*>(FakeDevice(0x200000));
  p.kv = FakeDevice(0x100000);
  p.payload = FakeDevice(0x800000);
  p.payload_bytes = *SparsePayloadBytes(shape, p.codec_params);
  p.cublas = reinterpret_cast<cublasHandle_t>(FakeDevice(0x1000));
  EXPECT_TRUE(Validate(p).ok()) << Validate(p);
  // Tile: every chunk of one half (2 layers x 8 tokens x 2 heads x 2).
  EXPECT_EQ(SparseTileChunks(p), 64u);
  EXPECT_EQ(WorkspaceBytes(p), 64u * 32 * 4 + 64u * 40 * 4);
  p.max_tile_chunks = 10;
  EXPECT_EQ(SparseTileChunks(p), 10u);
  EXPECT_EQ(WorkspaceBytes(p), 1280u + 1792u);  // 256-aligned parts.

  SparseEncodeParams bad = p;
  bad.payload_bytes += 4;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "payload_bytes");
  bad = p;
  bad.codec_params = testing::SparseParamsBytes(2, 2, /*online=*/1);
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "online_atoms");
  bad = p;
  bad.codec_params = testing::SparseParamsBytes(2, 1);  // Atoms of 64 != 32.
  ExpectField(Validate(bad), absl::StatusCode::kFailedPrecondition, "profile");
  bad = p;
  bad.codec_params = testing::SparseParamsBytes(0, 2);
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "atoms_per_chunk");
  bad = p;
  bad.codec_params = testing::SparseParamsBytes(2, 3);
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "chunks_per_head");
  bad = p;
  bad.cublas = nullptr;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument, "cublas");
  bad = p;
  bad.kv = FakeDevice(0x100008);
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument, "kv");
  bad = p;
  bad.payload = FakeDevice(0x100010);  // Inside the raw block.
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument, "payload");
  bad = p;
  bad.profile = nullptr;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument, "profile");
  bad = p;
  bad.profile_layout.num_layers = 3;
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "profile_layout");
  bad = p;
  bad.error_flags = static_cast<uint32_t*>(FakeDevice(0x3002));
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "error_flags");
  bad = p;
  codecs::SparseParams other_id;
  other_id.atoms_per_chunk = 2;
  other_id.chunks_per_head = 2;
  other_id.profile_id = packed->layout.profile_id + 1;
  bad.codec_params = other_id.ToBytes();
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "codec_params");
  // Launch checks the workspace after the params (no device needed).
  ExpectField(Launch(p, nullptr, nullptr), absl::StatusCode::kInvalidArgument,
              "workspace");

  // Atoms above the GPU's 512 channels.
  const BlockShape wide{DType::kFloat16, 1, 2, 1, 1024};
  const codecs::CodecProfile wide_profile =
      testing::MakeSparseProfile(wide, 1, 1, 8, false, rng);
  auto wide_packed = PackSparseProfile(wide_profile, wide);
  ASSERT_TRUE(wide_packed.ok());
  bad = p;
  bad.shape = wide;
  bad.codec_params = testing::SparseParamsBytes(1, 1);
  bad.profile_layout = wide_packed->layout;
  bad.payload_bytes = *SparsePayloadBytes(wide, bad.codec_params);
  ExpectField(Validate(bad), absl::StatusCode::kInvalidArgument,
              "chunks_per_head");

  // Decode: the block's profile id must be the packed profile's; online
  // atoms are fine.
  SparseDecodeParams d;
  d.shape = shape;
  d.codec_params = p.codec_params;  // profile_id 0.
  d.profile_layout = packed->layout;
  d.profile = p.profile;
  d.payload = p.payload;
  d.payload_bytes = p.payload_bytes;
  d.kv = FakeDevice(0x100000);
  ExpectField(Validate(d), absl::StatusCode::kFailedPrecondition, "profile");
  d.codec_params = EncodedCodecParams(p);
  EXPECT_TRUE(Validate(d).ok()) << Validate(d);
  EXPECT_EQ(WorkspaceBytes(d), 0u);
  SparseEncodeParams with_online = p;
  with_online.codec_params = testing::SparseParamsBytes(2, 2, 3);
  d.codec_params = EncodedCodecParams(with_online);
  d.payload_bytes = *SparsePayloadBytes(shape, d.codec_params);
  EXPECT_TRUE(Validate(d).ok()) << Validate(d);
  d.payload_bytes -= 4;
  ExpectField(Validate(d), absl::StatusCode::kInvalidArgument,
              "payload_bytes");
}

}  // namespace
}  // namespace strata::kernels
