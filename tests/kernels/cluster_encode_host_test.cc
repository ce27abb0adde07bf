// Host-side tests of the ClusterKV encode kernels (no GPU needed):
//   - payload size, recorded params and raw offset equal the CPU codec's;
//     Validate names the field at fault before anything is launched;
//   - the kernels' computation, emulated on the host in their thread
//     decomposition (256 threads per (layer, head) slot, row-strided loops,
//     the warp-shuffle argmin of the re-seeding, warp 0's match_any stable
//     partition) with the kernels' own arithmetic
//     (kernels/internal/cluster_encode.h), gives the CPU codec's payload
//     bytes on random blocks of every dtype, on degenerate ones (identical
//     and zero keys: the k-means++ fallback and the empty-cluster paths) and
//     on the real SmolLM2 fixture.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codecs/cluster_codec.h"
#include "codecs/codec.h"
#include "codecs/kv_fixture.h"
#include "codecs/kv_tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cluster_encode_kernels.h"
#include "kernels/internal/cluster_encode.h"
#include "kernels/internal/cluster_encode_plan.h"
#include "kvstore/block_format.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::ClusterParams;
using codecs::KvTensor;
using internal::ClusterEncodeArgs;
using internal::kNoRow;
using kvstore::BlockShape;
using kvstore::DType;
using testing::ExpectField;
using testing::FakeDevice;

constexpr uint32_t kThreads = internal::kClusterEncodeThreads;
constexpr uint32_t kWarps = kThreads / 32;

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

// ---- The kernels on the host.

struct Slot {
  float* unit;
  float* cent;
  uint32_t* labels;
  float* sim;
  double* dist;
  uint32_t* count;
  uint32_t* starts;
  uint32_t* cursor;
  uint32_t* pos;
};

Slot SlotOf(const ClusterEncodeArgs& a, uint32_t slot) {
  uint8_t* w = a.workspace + uint64_t{slot} * a.ws.slot_bytes;
  return {reinterpret_cast<float*>(w + a.ws.unit),
          reinterpret_cast<float*>(w + a.ws.cent),
          reinterpret_cast<uint32_t*>(w + a.ws.labels),
          reinterpret_cast<float*>(w + a.ws.sim),
          reinterpret_cast<double*>(w + a.ws.dist),
          reinterpret_cast<uint32_t*>(w + a.ws.count),
          reinterpret_cast<uint32_t*>(w + a.ws.starts),
          reinterpret_cast<uint32_t*>(w + a.ws.cursor),
          reinterpret_cast<uint32_t*>(w + a.ws.pos)};
}

void CountLabels(const ClusterEncodeArgs& a, const Slot& s) {
  for (uint32_t j = 0; j < a.clusters; ++j) s.count[j] = 0;
  for (uint32_t i = 0; i < a.members; ++i) {
    ASSERT_LT(s.labels[i], a.clusters);
    ++s.count[s.labels[i]];
  }
}

// Warp 0's scan and match_any partition, lane by lane.
void StablePartition(const ClusterEncodeArgs& a, const Slot& s) {
  uint32_t carry = 0;
  for (uint32_t j = 0; j < a.clusters; ++j) {
    s.starts[j] = s.cursor[j] = carry;
    carry += s.count[j];
  }
  s.starts[a.clusters] = carry;
  for (uint32_t base = 0; base < a.members; base += 32) {
    uint32_t lab[32], rank[32], peers[32];
    for (uint32_t lane = 0; lane < 32; ++lane) {
      const uint32_t i = base + lane;
      lab[lane] = i < a.members ? s.labels[i] : kNoRow;
      if (lab[lane] >= a.clusters) lab[lane] = kNoRow;
    }
    for (uint32_t lane = 0; lane < 32; ++lane) {
      rank[lane] = peers[lane] = 0;
      for (uint32_t o = 0; o < 32; ++o) {
        if (lab[o] != lab[lane]) continue;
        ++peers[lane];
        if (o < lane) ++rank[lane];
      }
    }
    for (uint32_t lane = 0; lane < 32; ++lane) {
      if (lab[lane] == kNoRow) continue;
      const uint32_t p = s.cursor[lab[lane]] + rank[lane];
      ASSERT_LT(p, a.members);
      s.pos[p] = base + lane;
    }
    for (uint32_t lane = 0; lane < 32; ++lane) {
      if (lab[lane] != kNoRow && rank[lane] == 0) {
        s.cursor[lab[lane]] += peers[lane];
      }
    }
  }
}

struct Best {
  float sim = 0;
  uint32_t row = kNoRow;
};

// The block argmin of the re-seeding: per-thread strided scans, the warp
// shuffle-down tree, thread 0 over the warps.
Best ReseedArgmin(const ClusterEncodeArgs& a, const Slot& s) {
  Best local[kThreads];
  for (uint32_t tid = 0; tid < kThreads; ++tid) {
    for (uint32_t i = tid; i < a.members; i += kThreads) {
      const uint32_t lab = s.labels[i];
      if (lab >= a.clusters || s.count[lab] < 2) continue;
      if (internal::ReseedBetter(s.sim[i], i, local[tid].sim, local[tid].row)) {
        local[tid] = {s.sim[i], i};
      }
    }
  }
  Best warp_best[kWarps];
  for (uint32_t w = 0; w < kWarps; ++w) {
    Best v[32];
    std::copy_n(local + 32 * w, 32, v);
    for (uint32_t o = 16; o > 0; o >>= 1) {
      Best next[32];
      for (uint32_t lane = 0; lane < 32; ++lane) {
        const Best other = lane + o < 32 ? v[lane + o] : v[lane];
        next[lane] = v[lane];
        if (internal::ReseedBetter(other.sim, other.row, v[lane].sim,
                                   v[lane].row)) {
          next[lane] = other;
        }
      }
      std::copy_n(next, 32, v);
    }
    warp_best[w] = v[0];
  }
  Best b = warp_best[0];
  for (uint32_t w = 1; w < kWarps; ++w) {
    if (internal::ReseedBetter(warp_best[w].sim, warp_best[w].row, b.sim,
                               b.row)) {
      b = warp_best[w];
    }
  }
  return b;
}

// How often the rare paths ran (so that the degenerate test can show it
// reached them).
struct Coverage {
  uint64_t seed_fallbacks = 0;  // k-means++ found no distance left.
  uint64_t reseeds = 0;         // An empty cluster took a row.
  uint64_t reseed_give_ups = 0;  // No row could move.
  uint64_t early_stops = 0;     // No label changed.
};

// ClusterKMeansKernel for one slot; returns its error bits.
uint32_t EmulateSlot(const ClusterEncodeArgs& a, uint32_t slot,
                     Coverage* cov) {
  const uint32_t layer = a.first_layer + slot / a.heads, head = slot % a.heads;
  const uint32_t n = a.members, k = a.clusters, d = a.dim;
  const Slot s = SlotOf(a, slot);
  uint32_t flags = 0;
  for (uint32_t i = 0; i < n; ++i) {
    flags |= internal::LoadUnitRow(a, layer, head, i, s.unit + uint64_t{i} * d);
    s.labels[i] = kNoRow;
  }
  internal::DeviceSplitMix64 rng{internal::SlotSeed(a.seed, layer, head)};
  uint32_t pick = static_cast<uint32_t>(rng.Next() % n);
  for (uint32_t j = 0; j < k; ++j) {
    float* c = s.cent + uint64_t{j} * d;
    std::copy_n(s.unit + uint64_t{pick} * d, d, c);
    for (uint32_t i = 0; i < n; ++i) {
      s.dist[i] = internal::SeedDistance(s.unit + uint64_t{i} * d, c, d,
                                         j == 0, j == 0 ? 0.0 : s.dist[i]);
    }
    if (j + 1 < k) {
      if (std::all_of(s.dist, s.dist + n, [](double x) { return x == 0; })) {
        ++cov->seed_fallbacks;
      }
      pick = internal::SeedNextPick(&rng, s.dist, n, pick);
    }
  }
  for (uint32_t it = 0; it < a.iterations; ++it) {
    bool changed = false;
    for (uint32_t i = 0; i < n; ++i) {
      uint32_t best;
      float best_sim;
      internal::AssignRow(s.unit + uint64_t{i} * d, s.cent, k, d, &best,
                          &best_sim);
      changed |= s.labels[i] != best;
      s.labels[i] = best;
      s.sim[i] = best_sim;
    }
    if (!changed) {
      ++cov->early_stops;
      break;
    }
    CountLabels(a, s);
    for (uint32_t j = 0; j < k; ++j) {
      if (s.count[j] != 0) continue;
      const Best b = ReseedArgmin(a, s);
      if (b.row == kNoRow) {
        ++cov->reseed_give_ups;
        break;
      }
      ++cov->reseeds;
      --s.count[s.labels[b.row]];
      s.labels[b.row] = j;
      s.count[j] = 1;
      s.sim[b.row] = 1.0f;
    }
    StablePartition(a, s);
    for (uint32_t p = 0; p < k * d; ++p) {
      const uint32_t j = p / d, t = p % d;
      s.cent[p] = internal::CentroidSum(s.unit, s.pos, s.starts[j],
                                        s.starts[j + 1], d, t);
    }
    for (uint32_t j = 0; j < k; ++j) {
      internal::NormaliseVec(s.cent + uint64_t{j} * d, d);
    }
  }
  CountLabels(a, s);
  StablePartition(a, s);
  uint8_t* out = a.payload + uint64_t{slot} * a.index_slot_bytes;
  uint8_t* ends = out + 2ull * k * d;
  uint8_t* tokens = ends + 4ull * k;
  for (uint32_t p = 0; p < k * d; ++p) {
    const uint32_t j = p / d, t = p % d;
    internal::StoreU16(out + 2ull * p,
                       internal::CentroidMeanHalf(a, layer, head, s.pos,
                                                  s.starts[j], s.starts[j + 1],
                                                  t, &flags));
  }
  for (uint32_t j = 0; j < k; ++j) internal::StoreU32(ends + 4ull * j, s.starts[j + 1]);
  for (uint32_t m = 0; m < n; ++m) {
    internal::StoreU16(tokens + 2ull * m, static_cast<uint16_t>(a.sinks + s.pos[m]));
  }
  return flags;
}

// The whole launch on the host; *flags gets the error word.
std::vector<uint8_t> EmulateEncode(const BlockShape& shape,
                                   const ClusterParams& p,
                                   const std::vector<uint8_t>& raw,
                                   uint32_t* flags, Coverage* cov) {
  ClusterEncodeParams e;
  e.shape = shape;
  e.codec_params = p.ToBytes();
  e.kv = FakeDevice(0x100000);
  e.payload = FakeDevice(0x200000000ull);
  auto bytes = ClusterPayloadBytes(shape, e.codec_params);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return {};
  e.payload_bytes = *bytes;
  auto plan = internal::PlanClusterEncode(e);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return {};
  std::vector<uint8_t> payload(*bytes, 0xA5);
  std::vector<double> workspace((plan->workspace_bytes + 7) / 8);
  ClusterEncodeArgs a = plan->args;
  a.kv = raw.data();
  a.payload = payload.data();
  a.workspace = reinterpret_cast<uint8_t*>(workspace.data());
  *flags = 0;
  if (a.clusters > 0) {
    for (uint32_t slot = 0; slot < a.clustered_layers * a.heads; ++slot) {
      *flags |= EmulateSlot(a, slot, cov);
    }
  }
  std::fill_n(payload.data() + a.index_bytes, a.inner_bytes, 0);
  const uint64_t dsize = kvstore::DTypeSize(shape.dtype);
  for (uint64_t e2 = 0; e2 < a.raw_bytes / dsize; ++e2) {
    internal::RoundTripElement(a.dtype, raw.data(),
                               payload.data() + a.index_bytes + a.inner_bytes,
                               e2);
  }
  return payload;
}

// The CPU codec's payload and recorded params for kv (rounded to its dtype
// first: the kernels read the raw block).
struct CpuResult {
  std::vector<uint8_t> raw, payload;
  codecs::CodecParams params{};
};
CpuResult CpuEncode(const KvTensor& kv_in, const ClusterParams& p) {
  CpuResult r;
  r.raw = testing::RawOf(kv_in);
  auto kv = codecs::KvTensorFromRaw(kv_in.shape, r.raw);
  EXPECT_TRUE(kv.ok()) << kv.status();
  auto block = codecs::EncodeKvBlock(*kv, codecs::CodecId::kCluster, p.ToBytes());
  EXPECT_TRUE(block.ok()) << block.status();
  if (!block.ok()) return r;
  auto view = kvstore::ParseBlock(*block);
  EXPECT_TRUE(view.ok()) << view.status();
  r.payload.assign(view->payload.begin(), view->payload.end());
  r.params = view->header.codec_params;
  return r;
}

void ExpectEmulationMatchesCpu(const KvTensor& kv, const ClusterParams& p,
                               const std::string& what,
                               Coverage* cov = nullptr) {
  Coverage unused;
  if (cov == nullptr) cov = &unused;
  const CpuResult cpu = CpuEncode(kv, p);
  ASSERT_FALSE(cpu.payload.empty()) << what;
  auto params = ClusterEncodedParams(kv.shape, p.ToBytes());
  ASSERT_TRUE(params.ok()) << params.status();
  EXPECT_EQ(*params, cpu.params) << what;
  uint32_t flags = 0;
  const std::vector<uint8_t> got = EmulateEncode(kv.shape, p, cpu.raw, &flags, cov);
  EXPECT_EQ(flags, 0u) << what;
  const int64_t diff = testing::FirstDifference(got, cpu.payload);
  ASSERT_EQ(diff, -1) << what << ": first differing payload byte " << diff
                      << " of " << cpu.payload.size();
}

std::string Name(const BlockShape& s, const ClusterParams& p) {
  return absl::StrCat("dtype ", static_cast<int>(s.dtype), " ", s.num_layers,
                      "x", s.num_tokens, "x", s.num_kv_heads, "x", s.head_dim,
                      " C ", p.num_clusters, " sinks ", p.n_sink, " iters ",
                      static_cast<int>(p.iterations), " first_layer ",
                      p.first_layer);
}

TEST(ClusterEncodeHost, EmulatedKernelsMatchTheCpuCodecOnRandomBlocks) {
  const uint32_t seed = testing::TestSeed("ClusterEncodeHostRandom");
  std::mt19937 rng(seed);
  const BlockShape shapes[] = {{DType::kFloat16, 3, 300, 2, 64},
                               {DType::kBFloat16, 3, 77, 1, 32},
                               {DType::kFloat8E4M3, 3, 40, 2, 16},
                               {DType::kFloat32, 4, 37, 1, 24}};
  for (const BlockShape& shape : shapes) {
    const KvTensor kv = testing::RandomKv(shape, rng);
    const uint32_t members = shape.num_tokens - 4;
    for (uint16_t clusters :
         {uint16_t{0}, uint16_t{1}, uint16_t{5}, static_cast<uint16_t>(members / 3),
          static_cast<uint16_t>(members)}) {
      for (uint8_t iterations : {uint8_t{1}, uint8_t{20}}) {
        ClusterParams p;
        p.num_clusters = clusters;
        p.iterations = iterations;
        p.seed = static_cast<uint32_t>(rng());
        ExpectEmulationMatchesCpu(
            kv, p, absl::StrCat(Name(shape, p), " seed ", seed));
        if (HasFatalFailure()) return;
      }
      if (testing::QuickMode()) break;
    }
  }
}

// Few distinct keys: k-means++ runs out of distance (its "next row"
// fallback), clusters empty out and are re-seeded (many times when there
// are fewer distinct rows than clusters). Zero keys normalise to zero.
TEST(ClusterEncodeHost, EmulatedKernelsMatchTheCpuCodecOnDegenerateKeys) {
  const uint32_t seed = testing::TestSeed("ClusterEncodeHostDegenerate");
  std::mt19937 rng(seed);
  const BlockShape shape{DType::kFloat16, 3, 70, 2, 32};
  Coverage cov;
  for (uint32_t distinct : {1u, 2u, 3u, 7u}) {
    for (bool one_hot : {false, true}) {
      const KvTensor kv = FewDistinctKeys(shape, rng, distinct, one_hot);
      for (uint16_t clusters : {1, 4, 20, 66}) {
        ClusterParams p;
        p.num_clusters = clusters;
        p.seed = static_cast<uint32_t>(rng());
        ExpectEmulationMatchesCpu(
            kv, p,
            absl::StrCat(Name(shape, p), " distinct ", distinct, " one-hot ",
                         one_hot, " seed ", seed),
            &cov);
        if (HasFatalFailure()) return;
      }
    }
  }
  EXPECT_GT(cov.seed_fallbacks, 0u);
  EXPECT_GT(cov.reseeds, 0u);
  // (A give-up needs an empty cluster while no cluster holds 2 rows: with
  // k <= n that cannot happen; the kernels handle it anyway.)
  EXPECT_EQ(cov.reseed_give_ups, 0u);
  EXPECT_GT(cov.early_stops, 0u);
  std::printf("rare paths: %llu k-means++ fallbacks, %llu re-seeds, %llu "
              "give-ups, %llu early stops\n",
              static_cast<unsigned long long>(cov.seed_fallbacks),
              static_cast<unsigned long long>(cov.reseeds),
              static_cast<unsigned long long>(cov.reseed_give_ups),
              static_cast<unsigned long long>(cov.early_stops));
}

TEST(ClusterEncodeHost, EmulatedKernelsMatchTheCpuCodecWithNothingClustered) {
  std::mt19937 rng(3);
  const BlockShape shape{DType::kFloat16, 2, 6, 2, 16};
  const KvTensor kv = testing::RandomKv(shape, rng);
  ClusterParams sinks_only;  // 6 tokens, 8 sinks: no members, no index.
  sinks_only.n_sink = 8;
  ExpectEmulationMatchesCpu(kv, sinks_only, "all sinks");
  ClusterParams shallow;  // first_layer beyond the block.
  shallow.first_layer = 5;
  ExpectEmulationMatchesCpu(kv, shallow, "no clustered layer");
}

TEST(ClusterEncodeHost, EmulatedKernelsMatchTheCpuCodecOnTheFixture) {
  auto fx = codecs::LoadKvFixture(testing::FixturePath());
  ASSERT_TRUE(fx.ok()) << fx.status();
  const uint32_t T = std::min<uint32_t>(256, fx->passages[1].num_tokens());
  auto kv = fx->Kv(1, 0, fx->num_layers, 0, T, codecs::RopeForm::kPostRope);
  ASSERT_TRUE(kv.ok()) << kv.status();
  for (uint16_t clusters : {uint16_t{0}, uint16_t{8}}) {
    ClusterParams p;
    p.num_clusters = clusters;
    ExpectEmulationMatchesCpu(*kv, p, absl::StrCat("fixture C ", clusters));
    if (HasFatalFailure()) return;
    if (testing::QuickMode()) break;
  }
}

// ---- Host API.

TEST(ClusterEncodeHost, SizesAndParamsEqualTheCpuCodec) {
  std::mt19937 rng(11);
  const BlockShape shape{DType::kBFloat16, 3, 50, 2, 32};
  const KvTensor kv = testing::RandomKv(shape, rng);
  for (uint16_t clusters : {0, 1, 13, 46}) {
    ClusterParams p;
    p.num_clusters = clusters;
    const CpuResult cpu = CpuEncode(kv, p);
    auto bytes = ClusterPayloadBytes(shape, p.ToBytes());
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(*bytes, cpu.payload.size());
    auto params = ClusterEncodedParams(shape, p.ToBytes());
    ASSERT_TRUE(params.ok());
    EXPECT_EQ(*params, cpu.params);
    auto raw_at = ClusterRawOffset(shape, p.ToBytes());
    ASSERT_TRUE(raw_at.ok());
    ASSERT_EQ(*raw_at + shape.RawBytes(), cpu.payload.size());
    // The CPU's raw tail is exactly the block's raw bytes (finite values).
    EXPECT_TRUE(std::equal(cpu.raw.begin(), cpu.raw.end(),
                           cpu.payload.begin() + *raw_at));
  }
}

TEST(ClusterEncodeHost, ValidateNamesTheField) {
  const BlockShape shape{DType::kFloat16, 3, 50, 2, 32};
  ClusterParams cp;
  auto good = [&] {
    ClusterEncodeParams e;
    e.shape = shape;
    e.codec_params = cp.ToBytes();
    e.kv = FakeDevice(0x100000);
    e.payload = FakeDevice(0x200000000ull);
    e.payload_bytes = *ClusterPayloadBytes(shape, e.codec_params);
    return e;
  };
  ASSERT_TRUE(Validate(good()).ok()) << Validate(good());
  // 1 clustered layer x 2 heads, 46 members, 3 clusters, d 32.
  EXPECT_GT(WorkspaceBytes(good()), 2u * 4 * 46 * 32);
  EXPECT_EQ(WorkspaceBytes(good()) % 256, 0u);

  ClusterEncodeParams e = good();
  e.kv = FakeDevice(0x100008);
  ExpectField(Validate(e), absl::StatusCode::kInvalidArgument, "kv");
  e = good();
  e.kv = nullptr;
  ExpectField(Validate(e), absl::StatusCode::kInvalidArgument, "kv");
  e = good();
  e.payload = FakeDevice(0x200000001ull);
  ExpectField(Validate(e), absl::StatusCode::kInvalidArgument, "payload");
  e = good();
  e.payload_bytes += 2;
  ExpectField(Validate(e), absl::StatusCode::kInvalidArgument, "payload_bytes");
  e = good();
  e.payload = FakeDevice(0x100000 + 64);  // Inside the input.
  ExpectField(Validate(e), absl::StatusCode::kInvalidArgument, "payload");
  e = good();
  e.error_flags = static_cast<uint32_t*>(FakeDevice(0x300002));
  ExpectField(Validate(e), absl::StatusCode::kInvalidArgument, "error_flags");
  e = good();
  e.codec_params[8] = 0;  // iterations
  ExpectField(Validate(e), absl::StatusCode::kInvalidArgument, "iterations");
  e = good();
  ClusterParams too_many;
  too_many.num_clusters = 47;
  e.codec_params = too_many.ToBytes();
  ExpectField(Validate(e), absl::StatusCode::kInvalidArgument, "num_clusters");
  // A workspace is needed (and checked) only at launch.
  e = good();
  ExpectField(Launch(e, nullptr, nullptr), absl::StatusCode::kInvalidArgument,
              "workspace");
  ExpectField(Launch(e, FakeDevice(0x400010), nullptr),
              absl::StatusCode::kInvalidArgument, "workspace");

  // Nothing clustered: no workspace.
  ClusterParams shallow;
  shallow.first_layer = 3;
  e = good();
  e.codec_params = shallow.ToBytes();
  e.payload_bytes = *ClusterPayloadBytes(shape, e.codec_params);
  EXPECT_TRUE(Validate(e).ok()) << Validate(e);
  EXPECT_EQ(WorkspaceBytes(e), 0u);
}

}  // namespace
}  // namespace strata::kernels
