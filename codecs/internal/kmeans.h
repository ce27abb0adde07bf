// Internal: small deterministic numerics shared by the token codecs — a
// portable seeded generator and spherical k-means.
//
// Determinism: every function here is a pure function of its arguments and
// is sequential, so the same inputs give the same outputs on the same
// platform. SplitMix64's integer stream is identical everywhere; Gaussian()
// goes through std::log/std::cos, so a GPU encoder that needs the same
// Gaussians takes them from this generator on the host.
#ifndef STRATA_CODECS_INTERNAL_KMEANS_H_
#define STRATA_CODECS_INTERNAL_KMEANS_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace strata::codecs::internal {

// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by a
// constant, output through a fixed mixing function.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform in [0, 1) with 53 random bits.
  double Uniform();
  // Standard normal by Box–Muller (one output per call; the sine half is
  // discarded so the stream depends only on the call count).
  double Gaussian();

 private:
  uint64_t state_;
};

// Spherical k-means: clusters `n` rows of `dim` floats (`rows`, row-major) by
// direction (cosine similarity; rows are normalised first, a zero row has
// similarity 0 to every centroid) into `k` clusters, 1 <= k <= n.
//
// Init: k-means++ on the distance 1 - cos, the first centre and every draw
// from SplitMix64(seed). Then at most `iterations` Lloyd rounds (assign each
// row to the centroid of largest cosine, ties to the lower cluster; centroid
// = normalised mean of its rows), stopping early when no label changes. A
// cluster left empty is re-seeded with the row least similar to its own
// centroid (ties: lowest row), which then moves to it.
//
// Returns the label of each row, in [0, k).
std::vector<uint32_t> SphericalKMeans(absl::Span<const float> rows, uint32_t n,
                                      uint32_t dim, uint32_t k,
                                      uint32_t iterations, uint64_t seed);

}  // namespace strata::codecs::internal

#endif  // STRATA_CODECS_INTERNAL_KMEANS_H_
