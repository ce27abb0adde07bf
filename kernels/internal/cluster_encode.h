// The seam of the ClusterKV encode kernels (kernels/cluster_encode_kernels.h):
// the validated argument struct, the per-slot workspace layout, the
// launcher, and every scalar step of the k-means written once as
// host/device functions, so that the kernels and a g++ emulation of their
// thread decomposition (tests/kernels/cluster_encode_host_test.cc) run the
// same lines against the CPU codec (codecs/cluster_codec.cc,
// codecs/internal/kmeans.cc).
//
// Exactness: every float and double operation is an explicit IEEE
// round-to-nearest-even operation (numeric.h's Add/Mul on floats, DAdd/
// DMul/DDiv/DSqrt here on doubles: __dadd_rn etc. on the device, plain
// operators and std::sqrt on the host, which compiles with
// -ffp-contract=off), each in the CPU's order. Comparisons reproduce the
// CPU's std::min/std::max/`>`/`<` forms, so ties resolve the same way.
//
// Not a public header: included by kernels/cluster_encode_kernels.{cc,cu}
// and tests/kernels/.
#ifndef STRATA_KERNELS_INTERNAL_CLUSTER_ENCODE_H_
#define STRATA_KERNELS_INTERNAL_CLUSTER_ENCODE_H_

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>

#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {

inline constexpr uint32_t kClusterEncodeThreads = 256;
inline constexpr uint32_t kNoRow = 0xFFFFFFFFu;

// Byte offsets of one slot's (clustered layer, KV head) k-means state inside
// the workspace; every part 256-byte aligned.
struct ClusterWorkspaceLayout {
  uint64_t unit = 0;     // float [members][dim]: normalised keys.
  uint64_t cent = 0;     // float [clusters][dim]: unit centroids.
  uint64_t labels = 0;   // u32 [members]
  uint64_t sim = 0;      // float [members]: similarity to own centroid.
  uint64_t dist = 0;     // double [members]: k-means++ distances.
  uint64_t count = 0;    // u32 [clusters]
  uint64_t starts = 0;   // u32 [clusters + 1]: exclusive scan of count.
  uint64_t cursor = 0;   // u32 [clusters]: stable-partition cursors.
  uint64_t pos = 0;      // u32 [members]: rows sorted by label, then row.
  uint64_t slot_bytes = 0;
};

struct ClusterEncodeArgs {
  int dtype = 1;  // kvstore::DType value.
  uint32_t layers = 0, tokens = 0, heads = 0, dim = 0;
  uint32_t sinks = 0, members = 0, clusters = 0;
  uint32_t first_layer = 0, clustered_layers = 0;
  uint32_t iterations = 1;
  uint32_t seed = 0;
  uint64_t index_slot_bytes = 0;  // One (layer, head) of the index.
  uint64_t index_bytes = 0;       // All slots; inner params follow.
  uint32_t inner_bytes = 32;      // kvstore::kCodecParamsSize zero bytes.
  uint64_t raw_bytes = 0;         // The raw K/V after the inner params.
  ClusterWorkspaceLayout ws;
  const uint8_t* kv = nullptr;  // Raw block [2][L][T][H][d], 16-aligned.
  uint8_t* payload = nullptr;   // 2-aligned.
  uint8_t* workspace = nullptr;  // slots * ws.slot_bytes, 256-aligned.
  uint32_t* error_flags = nullptr;
};

cudaError_t LaunchClusterEncode(const ClusterEncodeArgs& args,
                                cudaStream_t stream);

// ---- Double arithmetic, explicitly rounded.

STRATA_HD double DAdd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
STRATA_HD double DSub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
STRATA_HD double DMul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
STRATA_HD double DDiv(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
STRATA_HD double DSqrt(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
STRATA_HD float DoubleToFloat(double a) {
#if defined(__CUDA_ARCH__)
  return __double2float_rn(a);
#else
  return static_cast<float>(a);
#endif
}

// ---- codecs::internal::SplitMix64 (integer stream and Uniform()).

struct DeviceSplitMix64 {
  uint64_t state;
  STRATA_HD uint64_t Next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  STRATA_HD double Uniform() {
    return DMul(static_cast<double>(Next() >> 11), 0x1.0p-53);
  }
};

// The k-means seed of (layer, head): the CPU codec's
// (seed << 32) | (layer * 1024 + head).
STRATA_HD uint64_t SlotSeed(uint32_t seed, uint32_t layer, uint32_t head) {
  return (static_cast<uint64_t>(seed) << 32) |
         (static_cast<uint64_t>(layer) * 1024 + head);
}

// ---- Input.

// Key element (layer, token, head, t) of the raw block, as a float (the
// CPU's RawToKvTensor value); sets *finite to false for a non-finite one.
STRATA_HD float ReadKey(const ClusterEncodeArgs& a, uint32_t layer,
                        uint32_t token, uint32_t head, uint32_t t,
                        bool* finite) {
  const uint64_t e =
      ((static_cast<uint64_t>(layer) * a.tokens + token) * a.heads + head) *
          a.dim +
      t;
  float v = 0;
  switch (a.dtype) {
    case kDtypeF16: {
      const uint16_t b = static_cast<uint16_t>(a.kv[2 * e] | (a.kv[2 * e + 1] << 8));
      v = HalfToFloat(b);
      break;
    }
    case kDtypeBF16: {
      const uint16_t b = static_cast<uint16_t>(a.kv[2 * e] | (a.kv[2 * e + 1] << 8));
      v = BFloat16ToFloat(b);
      break;
    }
    case kDtypeFp8E4M3:
      v = Fp8E4M3ToFloat(a.kv[e]);
      break;
    default: {
      const uint32_t b = static_cast<uint32_t>(a.kv[4 * e]) |
                         (static_cast<uint32_t>(a.kv[4 * e + 1]) << 8) |
                         (static_cast<uint32_t>(a.kv[4 * e + 2]) << 16) |
                         (static_cast<uint32_t>(a.kv[4 * e + 3]) << 24);
      v = BitsToFloat(b);
      break;
    }
  }
  // Non-finite <=> the exponent field is all ones (NaN compares false).
  if (!(v - v == 0.0f)) *finite = false;
  return v;
}

// ---- k-means steps (codecs/internal/kmeans.cc).

// kmeans.cc's Dot: float sum of float products, in order.
STRATA_HD float Dot(const float* x, const float* y, uint32_t dim) {
  float s = 0;
  for (uint32_t i = 0; i < dim; ++i) s = Add(s, Mul(x[i], y[i]));
  return s;
}

// kmeans.cc's Normalise: double sum of squares in order, one float inverse.
STRATA_HD void NormaliseVec(float* v, uint32_t dim) {
  double n = 0;
  for (uint32_t i = 0; i < dim; ++i) {
    const double x = static_cast<double>(v[i]);
    n = DAdd(n, DMul(x, x));
  }
  if (n == 0) return;
  const float inv = DoubleToFloat(DDiv(1.0, DSqrt(n)));
  for (uint32_t i = 0; i < dim; ++i) v[i] = Mul(v[i], inv);
}

// Row i of a slot: the raw key of token sinks + i, normalised into `unit`.
// Returns kFlagNonFinite for a non-finite key element.
STRATA_HD uint32_t LoadUnitRow(const ClusterEncodeArgs& a, uint32_t layer,
                               uint32_t head, uint32_t i, float* unit) {
  bool finite = true;
  for (uint32_t t = 0; t < a.dim; ++t) {
    unit[t] = ReadKey(a, layer, a.sinks + i, head, t, &finite);
  }
  NormaliseVec(unit, a.dim);
  return finite ? 0u : kFlagNonFinite;
}

// k-means++: row i's distance to its nearest centre once centre j (`c`) is
// added: std::min(prev, std::max(0.0, 1.0 - Dot)) (prev unused for j == 0).
STRATA_HD double SeedDistance(const float* row, const float* c, uint32_t dim,
                              bool first, double prev) {
  const double x = DSub(1.0, static_cast<double>(Dot(row, c, dim)));
  const double d = (0.0 < x) ? x : 0.0;  // std::max(0.0, x)
  if (first) return d;
  return (d < prev) ? d : prev;  // std::min(prev, d)
}

// k-means++: the row that becomes the next centre, given the distances
// after centre `pick` was added (one thread, in order, as SeedCentroids).
// The scan reads 8 distances ahead of its sequential subtractions so that
// the loads overlap; the arithmetic and the exit are the CPU's.
STRATA_HD uint32_t SeedNextPick(DeviceSplitMix64* rng, const double* dist,
                                uint32_t n, uint32_t pick) {
  double total = 0;
  for (uint32_t i = 0; i < n; ++i) total = DAdd(total, dist[i]);
  if (total <= 0) return (pick + 1) % n;
  double target = DMul(rng->Uniform(), total);
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    double v[8];
    for (uint32_t u = 0; u < 8; ++u) v[u] = dist[i + u];
    for (uint32_t u = 0; u < 8; ++u) {
      target = DSub(target, v[u]);
      if (target < 0 && v[u] > 0) return i + u;
    }
  }
  for (; i < n; ++i) {
    target = DSub(target, dist[i]);
    if (target < 0 && dist[i] > 0) return i;
  }
  return n - 1;
}

// Lloyd assignment of one row: the centroid of largest Dot, ties (and NaN)
// to the lower cluster. Four centroids' dots run interleaved (independent
// chains, each summed in the CPU's order), then are compared in cluster
// order.
STRATA_HD void AssignRow(const float* row, const float* cent, uint32_t k,
                         uint32_t dim, uint32_t* best_out, float* sim_out) {
  uint32_t best = 0;
  float best_sim = 0;
  auto consider = [&](uint32_t j, float s) {
    if (j == 0 || s > best_sim) {
      best_sim = s;
      best = j;
    }
  };
  uint32_t j = 0;
  for (; j + 4 <= k; j += 4) {
    const float* c0 = cent + static_cast<uint64_t>(j) * dim;
    const float* c1 = c0 + dim;
    const float* c2 = c1 + dim;
    const float* c3 = c2 + dim;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (uint32_t t = 0; t < dim; ++t) {
      const float x = row[t];
      s0 = Add(s0, Mul(x, c0[t]));
      s1 = Add(s1, Mul(x, c1[t]));
      s2 = Add(s2, Mul(x, c2[t]));
      s3 = Add(s3, Mul(x, c3[t]));
    }
    consider(j, s0);
    consider(j + 1, s1);
    consider(j + 2, s2);
    consider(j + 3, s3);
  }
  for (; j < k; ++j) {
    consider(j, Dot(row, cent + static_cast<uint64_t>(j) * dim, dim));
  }
  *best_out = best;
  *sim_out = best_sim;
}

// Empty-cluster re-seeding: the CPU takes the first eligible row of
// strictly smallest similarity, i.e. the least (sim, row) pair. True when
// candidate (sa, ia) beats the current (sb, ib) (ib == kNoRow: none yet).
// A total order on finite sims, so any reduction tree gives the sequential
// answer.
STRATA_HD bool ReseedBetter(float sa, uint32_t ia, float sb, uint32_t ib) {
  if (ia == kNoRow) return false;
  if (ib == kNoRow) return true;
  if (sa < sb) return true;
  if (sb < sa) return false;
  return ia < ib;
}

// Centroid element (j, t) before normalising: the float sum, in row order,
// of the unit rows of cluster j (pos[begin, end)); +0 for an empty one.
STRATA_HD float CentroidSum(const float* unit, const uint32_t* pos,
                            uint32_t begin, uint32_t end, uint32_t dim,
                            uint32_t t) {
  float s = 0;
  for (uint32_t m = begin; m < end; ++m) {
    s = Add(s, unit[static_cast<uint64_t>(pos[m]) * dim + t]);
  }
  return s;
}

// Stored centroid element (j, t): the double mean of the raw keys of
// cluster j in row order (0 when empty), rounded to float, then to fp16.
// Sets kFlagOutOfRange when the mean overflows fp16 (the CPU writes the
// same infinity, which ClusterIndex::Parse then rejects).
STRATA_HD uint16_t CentroidMeanHalf(const ClusterEncodeArgs& a, uint32_t layer,
                                    uint32_t head, const uint32_t* pos,
                                    uint32_t begin, uint32_t end, uint32_t t,
                                    uint32_t* flags) {
  double s = 0;
  bool finite = true;
  for (uint32_t m = begin; m < end; ++m) {
    s = DAdd(s, static_cast<double>(
                    ReadKey(a, layer, a.sinks + pos[m], head, t, &finite)));
  }
  const double mean =
      end > begin ? DDiv(s, static_cast<double>(end - begin)) : 0.0;
  const uint16_t h = FloatToHalf(DoubleToFloat(mean));
  if ((h & 0x7C00) == 0x7C00) *flags |= kFlagOutOfRange;
  return h;
}

// Little-endian stores into the (2-byte aligned) payload, byte by byte.
STRATA_HD void StoreU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
STRATA_HD void StoreU32(uint8_t* p, uint32_t v) {
  StoreU16(p, static_cast<uint16_t>(v));
  StoreU16(p + 2, static_cast<uint16_t>(v >> 16));
}

// Raw element e of the block as the CPU writes it back
// (KvTensorToRaw(RawToKvTensor(raw))): the dtype's float round trip, which
// saturates infinities and canonicalises NaNs.
STRATA_HD void RoundTripElement(int dtype, const uint8_t* src, uint8_t* dst,
                                uint64_t e) {
  switch (dtype) {
    case kDtypeF16: {
      const uint16_t b = static_cast<uint16_t>(src[2 * e] | (src[2 * e + 1] << 8));
      StoreU16(dst + 2 * e, Fp16Traits::FromFloat(Fp16Traits::ToFloat(b)));
      return;
    }
    case kDtypeBF16: {
      const uint16_t b = static_cast<uint16_t>(src[2 * e] | (src[2 * e + 1] << 8));
      StoreU16(dst + 2 * e,
               BFloat16Traits::FromFloat(BFloat16Traits::ToFloat(b)));
      return;
    }
    case kDtypeFp8E4M3:
      dst[e] = Fp8E4M3Traits::FromFloat(Fp8E4M3Traits::ToFloat(src[e]));
      return;
    default: {
      const uint32_t b = static_cast<uint32_t>(src[4 * e]) |
                         (static_cast<uint32_t>(src[4 * e + 1]) << 8) |
                         (static_cast<uint32_t>(src[4 * e + 2]) << 16) |
                         (static_cast<uint32_t>(src[4 * e + 3]) << 24);
      StoreU32(dst + 4 * e, Fp32Traits::FromFloat(Fp32Traits::ToFloat(b)));
      return;
    }
  }
}

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_CLUSTER_ENCODE_H_
