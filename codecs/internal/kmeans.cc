#include "codecs/internal/kmeans.h"

#include <cmath>
#include <numbers>

#include "absl/base/internal/raw_logging.h"

namespace strata::codecs::internal {

uint64_t SplitMix64::Next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double SplitMix64::Uniform() {
  return static_cast<double>(Next() >> 11) * 0x1.0p-53;
}

double SplitMix64::Gaussian() {
  const double u1 = 1.0 - Uniform();  // (0, 1]: log is finite.
  const double u2 = Uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

namespace {

float Dot(const float* a, const float* b, uint32_t dim) {
  float s = 0;
  for (uint32_t i = 0; i < dim; ++i) s += a[i] * b[i];
  return s;
}

void Normalise(float* v, uint32_t dim) {
  double n = 0;
  for (uint32_t i = 0; i < dim; ++i) n += static_cast<double>(v[i]) * v[i];
  if (n == 0) return;
  const float inv = static_cast<float>(1.0 / std::sqrt(n));
  for (uint32_t i = 0; i < dim; ++i) v[i] *= inv;
}

// k-means++ seeding on 1 - cos.
std::vector<float> SeedCentroids(const std::vector<float>& unit, uint32_t n,
                                 uint32_t dim, uint32_t k, SplitMix64& rng) {
  std::vector<float> c(static_cast<size_t>(k) * dim);
  std::vector<double> dist(n, 0);
  uint32_t pick = static_cast<uint32_t>(rng.Next() % n);
  for (uint32_t j = 0; j < k; ++j) {
    std::copy_n(&unit[static_cast<size_t>(pick) * dim], dim, &c[j * dim]);
    double total = 0;
    for (uint32_t i = 0; i < n; ++i) {
      const double d = std::max(
          0.0,
          1.0 - Dot(&unit[static_cast<size_t>(i) * dim], &c[j * dim], dim));
      dist[i] = (j == 0) ? d : std::min(dist[i], d);
      total += dist[i];
    }
    if (j + 1 == k) break;
    if (total <= 0) {  // Every row coincides with a centre: take the next row.
      pick = (pick + 1) % n;
      continue;
    }
    double target = rng.Uniform() * total;
    pick = n - 1;
    for (uint32_t i = 0; i < n; ++i) {
      target -= dist[i];
      if (target < 0 && dist[i] > 0) {
        pick = i;
        break;
      }
    }
  }
  return c;
}

}  // namespace

std::vector<uint32_t> SphericalKMeans(absl::Span<const float> rows, uint32_t n,
                                      uint32_t dim, uint32_t k,
                                      uint32_t iterations, uint64_t seed) {
  ABSL_RAW_CHECK(k >= 1 && k <= n, "SphericalKMeans: need 1 <= k <= n");
  ABSL_RAW_CHECK(rows.size() == static_cast<size_t>(n) * dim,
                 "SphericalKMeans: rows.size() != n * dim");
  std::vector<float> unit(rows.begin(), rows.end());
  for (uint32_t i = 0; i < n; ++i)
    Normalise(&unit[static_cast<size_t>(i) * dim], dim);

  SplitMix64 rng(seed);
  std::vector<float> centroids = SeedCentroids(unit, n, dim, k, rng);
  std::vector<uint32_t> labels(n, UINT32_MAX);
  std::vector<float> sim(n, 0);
  std::vector<uint32_t> count(k);
  for (uint32_t it = 0; it < std::max(iterations, 1u); ++it) {
    bool changed = false;
    for (uint32_t i = 0; i < n; ++i) {
      const float* x = &unit[static_cast<size_t>(i) * dim];
      uint32_t best = 0;
      float best_sim = Dot(x, &centroids[0], dim);
      for (uint32_t j = 1; j < k; ++j) {
        const float s = Dot(x, &centroids[static_cast<size_t>(j) * dim], dim);
        if (s > best_sim) {
          best_sim = s;
          best = j;
        }
      }
      changed |= labels[i] != best;
      labels[i] = best;
      sim[i] = best_sim;
    }
    if (!changed) break;
    // Re-seed empty clusters with the worst-fitting rows.
    std::fill(count.begin(), count.end(), 0);
    for (uint32_t i = 0; i < n; ++i) ++count[labels[i]];
    for (uint32_t j = 0; j < k; ++j) {
      if (count[j] != 0) continue;
      uint32_t worst = UINT32_MAX;
      for (uint32_t i = 0; i < n; ++i) {
        if (count[labels[i]] < 2) continue;  // Never empty another cluster.
        if (worst == UINT32_MAX || sim[i] < sim[worst]) worst = i;
      }
      if (worst == UINT32_MAX) break;  // Fewer distinct rows than clusters.
      --count[labels[worst]];
      labels[worst] = j;
      count[j] = 1;
      sim[worst] = 1;
    }
    std::fill(centroids.begin(), centroids.end(), 0.0f);
    for (uint32_t i = 0; i < n; ++i) {
      float* c = &centroids[static_cast<size_t>(labels[i]) * dim];
      const float* x = &unit[static_cast<size_t>(i) * dim];
      for (uint32_t t = 0; t < dim; ++t) c[t] += x[t];
    }
    for (uint32_t j = 0; j < k; ++j)
      Normalise(&centroids[static_cast<size_t>(j) * dim], dim);
  }
  return labels;
}

}  // namespace strata::codecs::internal
