#include "codecs/internal/linalg.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "codecs/kv_tensor.h"

namespace strata::codecs::internal {

float DotF32(const float* a, const float* b, size_t n) {
  float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t e = 0;
  for (; e + 8 <= n; e += 8) {
    for (int i = 0; i < 8; ++i) l[i] += a[e + i] * b[e + i];
  }
  for (int i = 0; e + i < n; ++i) l[i] += a[e + i] * b[e + i];
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

void SymmetricEigen(std::vector<double>& a, size_t n,
                    std::vector<double>* values, std::vector<double>* vectors) {
  std::vector<double> v(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) v[i * n + i] = 1.0;
  auto at = [&](size_t r, size_t c) -> double& { return a[r * n + c]; };
  double total = 0;
  for (double x : a) total += x * x;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (size_t p = 0; p < n; ++p) {
      for (size_t q = p + 1; q < n; ++q) off += at(p, q) * at(p, q);
    }
    if (off <= 1e-30 * total || off == 0) break;
    for (size_t p = 0; p < n; ++p) {
      for (size_t q = p + 1; q < n; ++q) {
        const double apq = at(p, q);
        if (apq == 0) continue;
        const double theta = (at(q, q) - at(p, p)) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) /
                         (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1);
        const double s = t * c;
        for (size_t k = 0; k < n; ++k) {
          if (k == p || k == q) continue;
          const double akp = at(k, p), akq = at(k, q);
          at(k, p) = at(p, k) = c * akp - s * akq;
          at(k, q) = at(q, k) = s * akp + c * akq;
        }
        at(p, p) -= t * apq;
        at(q, q) += t * apq;
        at(p, q) = at(q, p) = 0;
        for (size_t k = 0; k < n; ++k) {
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return at(x, x) > at(y, y); });
  values->assign(n, 0);
  vectors->assign(n * n, 0);
  for (size_t j = 0; j < n; ++j) {
    const size_t src = order[j];
    (*values)[j] = at(src, src);
    size_t big = 0;
    for (size_t k = 1; k < n; ++k) {
      if (std::fabs(v[k * n + src]) > std::fabs(v[big * n + src])) big = k;
    }
    const double sign = v[big * n + src] < 0 ? -1.0 : 1.0;
    for (size_t k = 0; k < n; ++k)
      (*vectors)[k * n + j] = sign * v[k * n + src];
  }
}

AtomSet::AtomSet(const float* atoms_in, uint32_t count_in, uint32_t dim_in)
    : atoms(atoms_in),
      count(count_in),
      dim(dim_in),
      norm2(count_in),
      inv_norm(count_in) {
  for (uint32_t i = 0; i < count; ++i) {
    norm2[i] = DotF32(atom(i), atom(i), dim);
    inv_norm[i] = norm2[i] > 0 ? 1.0f / std::sqrt(norm2[i]) : 0.0f;
  }
}

void MatchingPursuit(const float* x, const AtomSet& dict, uint32_t s,
                     uint16_t* indices, uint16_t* coefficients,
                     float* residual) {
  std::vector<float> local;
  float* r = residual;
  if (r == nullptr) {
    local.resize(dict.dim);
    r = local.data();
  }
  std::copy_n(x, dict.dim, r);
  for (uint32_t j = 0; j < s; ++j) {
    int64_t best = -1;
    float best_score = 0, best_p = 0;
    for (uint32_t i = 0; i < dict.count; ++i) {
      if (dict.norm2[i] == 0) continue;
      const float p = DotF32(r, dict.atom(i), dict.dim);
      const float score = std::fabs(p) * dict.inv_norm[i];
      if (best < 0 || score > best_score) {
        best = i;
        best_score = score;
        best_p = p;
      }
    }
    if (best < 0) {
      indices[j] = 0;
      coefficients[j] = 0;
      continue;
    }
    float c = best_p / dict.norm2[best];
    c = std::clamp(c, -65504.0f, 65504.0f);
    const uint16_t h = FloatToHalf(c);
    const float cf = HalfToFloat(h);
    const float* a = dict.atom(static_cast<uint32_t>(best));
    for (uint32_t e = 0; e < dict.dim; ++e) r[e] = r[e] - cf * a[e];
    indices[j] = static_cast<uint16_t>(best);
    coefficients[j] = h;
  }
}

std::vector<float> SignInvariantKMeans(const std::vector<float>& x, size_t n,
                                       uint32_t dim, uint32_t k,
                                       uint32_t iterations) {
  std::vector<float> centroids(static_cast<size_t>(k) * dim);
  for (uint32_t c = 0; c < k; ++c) {
    const size_t src = static_cast<size_t>(c) * n / k;
    std::copy_n(&x[src * dim], dim, &centroids[static_cast<size_t>(c) * dim]);
  }
  std::vector<double> sums(static_cast<size_t>(k) * dim);
  std::vector<uint32_t> members(k);
  std::vector<float> best_cos(n);
  for (uint32_t it = 0; it < iterations; ++it) {
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(members.begin(), members.end(), 0);
    for (size_t i = 0; i < n; ++i) {
      const float* xi = &x[i * dim];
      uint32_t best = 0;
      float best_abs = -1, best_dot = 0;
      for (uint32_t c = 0; c < k; ++c) {
        const float p =
            DotF32(xi, &centroids[static_cast<size_t>(c) * dim], dim);
        if (std::fabs(p) > best_abs) {
          best = c;
          best_abs = std::fabs(p);
          best_dot = p;
        }
      }
      best_cos[i] = best_abs;
      const double sign = best_dot < 0 ? -1.0 : 1.0;
      double* sum = &sums[static_cast<size_t>(best) * dim];
      for (uint32_t e = 0; e < dim; ++e) sum[e] += sign * xi[e];
      ++members[best];
    }
    std::vector<size_t> worst(n);
    std::iota(worst.begin(), worst.end(), 0);
    std::stable_sort(worst.begin(), worst.end(), [&](size_t a, size_t b) {
      return best_cos[a] < best_cos[b];
    });
    size_t next_seed = 0;
    for (uint32_t c = 0; c < k; ++c) {
      float* cen = &centroids[static_cast<size_t>(c) * dim];
      const double* sum = &sums[static_cast<size_t>(c) * dim];
      double norm = 0;
      for (uint32_t e = 0; e < dim; ++e) norm += sum[e] * sum[e];
      if (members[c] == 0 || norm == 0) {
        std::copy_n(&x[worst[next_seed++ % n] * dim], dim, cen);
        continue;
      }
      const double inv = 1 / std::sqrt(norm);
      for (uint32_t e = 0; e < dim; ++e)
        cen[e] = static_cast<float>(sum[e] * inv);
    }
  }
  return centroids;
}

}  // namespace strata::codecs::internal
