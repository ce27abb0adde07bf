// The sparse (CSR) kernels on a GPU against the CPU codec: identical payload
// bytes (encode through cuBLAS candidate scores + exact re-scoring) and
// identical decoded bytes, on fresh random blocks of every dtype (printed
// seed), on tie-making dictionaries, with small GEMM tiles, and on the real
// SmolLM2 fixture; data errors reported as the CPU's statuses. Skips without
// a device.
#include <cublas_v2.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codecs/codec.h"
#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "codecs/sparse_codec.h"
#include "gtest/gtest.h"
#include "kernels/kernel_errors.h"
#include "kernels/sparse_kernels.h"
#include "kvstore/block_format.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/sparse_test_util.h"

namespace strata::kernels {
namespace {

using codecs::CodecProfile;
using codecs::KvTensor;
using codecs::SparseParams;
using kvstore::BlockShape;
using kvstore::DType;
using testing::DeviceBuffer;
using testing::ErrorWord;
using testing::FirstDifference;
using testing::kPoison;
using testing::ProfileEncodeParams;
using testing::ProfileLaunchParams;

class SparseGpuTest : public testing::GpuTest {
 protected:
  void SetUp() override {
    testing::GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_EQ(cublasCreate(&cublas_), CUBLAS_STATUS_SUCCESS);
  }
  void TearDown() override {
    if (cublas_ != nullptr) {
      if (stream_ != nullptr) {
        EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
      }
      EXPECT_EQ(cublasDestroy(cublas_), CUBLAS_STATUS_SUCCESS);
    }
    testing::GpuTest::TearDown();
  }

  // GPU encode of `kv` and GPU decode of the CPU payload; both must equal
  // the CPU codec's bytes. For online_atoms > 0 only the decode runs.
  void ExpectMatchesCpu(const KvTensor& kv, const CodecProfile& profile,
                        const SparseParams& p, uint32_t tile,
                        const std::string& what) {
    codecs::CodecParams cpu_params = p.ToBytes();
    auto cpu =
        testing::CpuEncode(codecs::CodecId::kSparse, kv, &cpu_params, &profile);
    ASSERT_TRUE(cpu.ok()) << cpu.status() << " " << what;
    auto packed = PackSparseProfile(profile, kv.shape);
    ASSERT_TRUE(packed.ok()) << packed.status();
    DeviceBuffer prof(packed->data.size() * 4);
    prof.Upload(packed->data, stream_);
    const std::vector<uint8_t> raw = testing::RawOf(kv);
    DeviceBuffer in(raw.size()), payload(cpu->size());
    in.Upload(raw, stream_);
    if (p.online_atoms == 0) {
      payload.Fill(kPoison, stream_);
      ErrorWord flags(stream_);
      auto enc = ProfileEncodeParams<SparseEncodeParams>(
          kv.shape, p.ToBytes(), packed->layout, prof, in, payload, cpu->size(),
          flags.get());
      enc.cublas = cublas_;
      enc.max_tile_chunks = tile;
      ASSERT_TRUE(Validate(enc).ok()) << Validate(enc) << " " << what;
      DeviceBuffer work(WorkspaceBytes(enc));
      const absl::Status launched = Launch(enc, work.get(), stream_);
      ASSERT_TRUE(launched.ok()) << launched << " " << what;
      Sync();
      EXPECT_EQ(flags.Read(), 0u) << what;
      EXPECT_EQ(EncodedCodecParams(enc), cpu_params) << what;
      const std::vector<uint8_t> got = payload.Download(stream_);
      const int64_t diff = FirstDifference(got, *cpu);
      if (diff != -1) {
        uint64_t same = 0;
        for (size_t i = 0; i < got.size(); ++i) same += got[i] == (*cpu)[i];
        ADD_FAILURE() << what << ": first differing payload byte " << diff
                      << " of " << cpu->size() << " (record "
                      << diff / 4 << "); identical bytes "
                      << 100.0 * same / got.size() << "%";
        return;
      }
    } else {
      payload.Upload(*cpu, stream_);
    }
    auto cpu_raw = testing::CpuDecodeRaw(codecs::CodecId::kSparse, kv.shape,
                                         cpu_params, *cpu, &profile);
    ASSERT_TRUE(cpu_raw.ok()) << cpu_raw.status();
    ExpectDecodeEquals(
        ProfileLaunchParams<SparseDecodeParams>(
            kv.shape, cpu_params, packed->layout, prof, payload, cpu->size()),
        *cpu_raw, /*workspace_min=*/0, what);
  }

  cublasHandle_t cublas_ = nullptr;
};

TEST_F(SparseGpuTest, EncodeAndDecodeMatchTheCpuCodecOnRandomBlocks) {
  const uint32_t seed = testing::TestSeed("SparseGpuRandom");
  std::mt19937 rng(seed);
  struct Case {
    BlockShape shape;
    uint8_t chunks, s, online;
    uint32_t groups, atoms;
  };
  const Case cases[] = {
      {{DType::kFloat16, 3, 37, 2, 64}, 2, 2, 0, 2, 96},
      {{DType::kBFloat16, 2, 21, 3, 128}, 1, 4, 0, 1, 200},
      {{DType::kFloat8E4M3, 4, 9, 1, 32}, 4, 3, 0, 3, 16},
      {{DType::kFloat32, 2, 16, 2, 96}, 3, 5, 0, 2, 64},
      {{DType::kFloat16, 5, 12, 2, 64}, 2, 2, 4, 2, 50},  // Online: decode.
  };
  for (const Case& c : cases) {
    for (bool ties : {false, true}) {
      const CodecProfile profile = testing::MakeSparseProfile(
          c.shape, c.chunks, c.groups, c.atoms, ties, rng);
      KvTensor kv = testing::RandomKv(c.shape, rng);
      if (ties) testing::PlantAtomOne(profile, c.chunks, &kv);
      SparseParams p;
      p.atoms_per_chunk = c.s;
      p.chunks_per_head = c.chunks;
      p.online_atoms = c.online;
      const std::string what = absl::StrCat(
          "dtype ", static_cast<int>(c.shape.dtype), " d ", c.shape.head_dim,
          " s_n ", static_cast<int>(c.chunks), " s ", static_cast<int>(c.s),
          " N ", c.atoms, " ties ", ties, " seed ", seed);
      // Default tile (one per layer run), then small tiles that split runs.
      ExpectMatchesCpu(kv, profile, p, 0, what);
      if (HasFatalFailure()) return;
      ExpectMatchesCpu(kv, profile, p, 7, what + " tile 7");
      if (HasFatalFailure()) return;
      if (testing::QuickMode()) break;
    }
  }
  // All-zero input: every atom ties at score 0.
  const BlockShape z{DType::kFloat16, 1, 4, 1, 32};
  const CodecProfile zprofile = testing::MakeSparseProfile(z, 1, 1, 8, true, rng);
  SparseParams zp;
  zp.atoms_per_chunk = 2;
  zp.chunks_per_head = 1;
  ExpectMatchesCpu(KvTensor::Zeros(z), zprofile, zp, 0, "zeros");
}

// A Llama-sized head (d 128, s_n 2) with a large dictionary: many GEMM
// columns, many near-ties among 1024 atoms.
TEST_F(SparseGpuTest, LargeDictionaryMatchesTheCpuCodec) {
  const uint32_t seed = testing::TestSeed("SparseGpuLarge");
  std::mt19937 rng(seed);
  const BlockShape shape{DType::kFloat16, 2,
                         testing::QuickMode() ? 16u : 64u, 4, 128};
  const CodecProfile profile =
      testing::MakeSparseProfile(shape, 2, 1, 1024, false, rng);
  const KvTensor kv = testing::RandomKv(shape, rng);
  SparseParams p;
  p.atoms_per_chunk = 4;
  p.chunks_per_head = 2;
  ExpectMatchesCpu(kv, profile, p, 0, absl::StrCat("N 1024 seed ", seed));
}

TEST_F(SparseGpuTest, RealFixtureMatchesTheCpuCodec) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  const uint32_t L = fx->num_layers;
  auto calib = fx->Kv(0, 0, L, 0, fx->passages[0].num_tokens());
  ASSERT_TRUE(calib.ok());
  codecs::SparseFitOptions opt;
  opt.num_atoms = 256;
  opt.chunks_per_head = 2;
  opt.layers_per_group = 5;
  opt.atoms_per_chunk = 2;
  opt.kmeans_iterations = 4;
  opt.refine_rounds = 2;
  opt.max_training_chunks = 4096;
  auto profile = codecs::FitSparseProfile({*calib}, opt, "smollm2/gpu");
  ASSERT_TRUE(profile.ok()) << profile.status();
  // 160 held-out tokens (all 30 layers) keep the CPU reference to seconds.
  const uint32_t tokens = testing::QuickMode() ? 32 : 160;
  auto kv = fx->Kv(1, 0, L, 0, tokens);
  ASSERT_TRUE(kv.ok());
  for (uint8_t s : {1, 4}) {
    SparseParams p;
    p.atoms_per_chunk = s;
    p.chunks_per_head = 2;
    ExpectMatchesCpu(*kv, *profile, p, 0,
                     absl::StrCat("fixture s ", static_cast<int>(s)));
    if (HasFatalFailure()) return;
  }
  SparseParams online;
  online.atoms_per_chunk = 2;
  online.chunks_per_head = 2;
  online.online_atoms = 8;
  ExpectMatchesCpu(*kv, *profile, online, 0, "fixture online atoms (decode)");
}

TEST_F(SparseGpuTest, ReportsNonFiniteInputAndBadRecords) {
  std::mt19937 rng(7);
  const BlockShape shape{DType::kFloat16, 1, 8, 1, 32};
  const CodecProfile profile = testing::MakeSparseProfile(shape, 1, 1, 16, false, rng);
  auto packed = PackSparseProfile(profile, shape);
  ASSERT_TRUE(packed.ok());
  DeviceBuffer prof(packed->data.size() * 4);
  prof.Upload(packed->data, stream_);
  KvTensor kv = testing::RandomKv(shape, rng);
  kv.at(0, 0, 3, 0, 7) = INFINITY;
  const std::vector<uint8_t> raw = testing::RawOf(kv);
  const codecs::CodecParams params = testing::SparseParamsBytes(2, 1, 2);
  auto bytes = SparsePayloadBytes(shape, params);
  ASSERT_TRUE(bytes.ok());
  DeviceBuffer in(raw.size()), payload(*bytes), out(raw.size());
  in.Upload(raw, stream_);
  ErrorWord flags(stream_);
  const codecs::CodecParams enc_params = testing::SparseParamsBytes(2, 1);
  auto enc = ProfileEncodeParams<SparseEncodeParams>(
      shape, enc_params, packed->layout, prof, in, payload,
      *SparsePayloadBytes(shape, enc_params), flags.get());
  enc.cublas = cublas_;
  DeviceBuffer work(WorkspaceBytes(enc));
  ASSERT_TRUE(Launch(enc, work.get(), stream_).ok());
  Sync();
  EXPECT_EQ(ErrorFlagsToStatus(flags.Read()).code(),
            absl::StatusCode::kInvalidArgument);

  // Decode (with 2 online atoms): a zero payload is valid; then an index
  // past N + M, a non-finite coefficient, a non-finite online atom.
  SparseEncodeParams with_online = enc;
  with_online.codec_params = params;
  auto dec = ProfileLaunchParams<SparseDecodeParams>(
      shape, EncodedCodecParams(with_online), packed->layout, prof, payload,
      *bytes);
  dec.kv = out.get();
  const uint64_t records = 2ull * 1 * 2 * 32 * 2;  // Online atom bytes.
  for (int variant = 0; variant < 4; ++variant) {
    std::vector<uint8_t> data(*bytes, 0);
    if (variant == 1) data[records + 4 * 5] = 18;  // Index 18 of 16 + 2.
    if (variant == 2) data[records + 4 * 5 + 3] = 0x7C;  // Coefficient inf.
    if (variant == 3) data[2 * 40 + 1] = 0xFC;           // Online atom -inf.
    payload.Upload(data, stream_);
    ErrorWord dflags(stream_);
    dec.error_flags = dflags.get();
    ASSERT_TRUE(Launch(dec, nullptr, stream_).ok());
    Sync();
    EXPECT_EQ(ErrorFlagsToStatus(dflags.Read()).code(),
              variant == 0 ? absl::StatusCode::kOk
                           : absl::StatusCode::kDataLoss)
        << "variant " << variant;
  }
}

}  // namespace
}  // namespace strata::kernels
