// The sparse codec's byte-deciding arithmetic, for the CUDA kernels and their
// host-side tests (one definition, compiled by nvcc and g++): the CPU's dot
// product order (codecs/internal/linalg.h DotF32), the fp16 coefficient of a
// matching-pursuit pick, and the error bound that decides which GEMM
// candidates are re-scored exactly (docs/kernels.md, "Sparse (CSR)").
//
// Not a public header.
#ifndef STRATA_KERNELS_INTERNAL_SPARSE_MATH_H_
#define STRATA_KERNELS_INTERNAL_SPARSE_MATH_H_

#include <cstdint>

#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {

// codecs::internal::DotF32: eight lane sums, lane i adding the rounded
// products a[e]*b[e] for e = i (mod 8) in increasing e, combined as
// ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)).
STRATA_HD float SparseDot(const float* a, const float* b, uint32_t n) {
  float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t e = 0;
  for (; e + 8 <= n; e += 8) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int i = 0; i < 8; ++i) l[i] = Add(l[i], Mul(a[e + i], b[e + i]));
  }
  for (uint32_t i = 0; e + i < n; ++i) l[i] = Add(l[i], Mul(a[e + i], b[e + i]));
  return Add(Add(Add(l[0], l[1]), Add(l[2], l[3])),
             Add(Add(l[4], l[5]), Add(l[6], l[7])));
}

// The fp16 code of the coefficient p / norm2 (clamped to +-65504), as
// codecs::internal::MatchingPursuit stores it.
STRATA_HD uint16_t SparseCoefficientCode(float p, float norm2) {
  return FloatToHalf(Clamp(Div(p, norm2), -kHalfMax, kHalfMax));
}

// |p| * inv: the matching-pursuit score of an atom.
STRATA_HD float SparseScore(float p, float inv) {
  return Mul(p < 0 ? -p : p, inv);
}

// A bound E on |approx_score - exact_score| for an atom with inverse norm
// `inv` (1/||a|| up to rounding), where approx_score = SparseScore(q, inv)
// of a correlation q computed in ANY order (a GEMM: tiles, split-K, FMA) and
// exact_score = SparseScore(SparseDot(r, a), inv), given rnorm_up >= ||r||.
//
// Both q and the exact dot are within gamma_C * sum|r_e a_e| <= gamma_C *
// ||r|| ||a|| of the real dot (gamma_C = C u / (1 - C u), u = 2^-24), so
// |q - p| <= 2 gamma_C ||r|| ||a||; times inv (||a|| inv <= 1 + 2^-20) that is
// ~2 C u ||r||. The bound takes 4 C u ||r|| (a factor 2 to spare), plus
// 8 u |approx_score| for the roundings of the two scores and of the
// lower/upper sums computed from E, plus an absolute term for subnormal
// products flushed to zero inside the GEMM (each at most 2^-126 * max(|r_e|,
// |a_e|, 1), C of them, times inv).
STRATA_HD float SparseScoreSlack(float approx_score, float inv, float rnorm_up,
                                 uint32_t dim) {
  const float c = static_cast<float>(dim);
  const float u = 5.9604645e-08f;  // 2^-24
  const float tiny = 7.5231638e-37f;  // 2^-120 (> 64 * 2^-126 per channel)
  const float rel = Mul(Mul(4.0f * u, c), rnorm_up);
  const float abs_term =
      Mul(Mul(tiny, c), Mul(Add(1.0f, rnorm_up), Add(1.0f, inv)));
  return Add(Add(rel, abs_term), Mul(8.0f * u, approx_score));
}

// An upper bound on ||r|| from sum_sq, a sum of the squares r_e^2 in any
// order: the sum's relative error is below C u, so ||r|| <= sqrt(sum_sq *
// (1 + C u)) * (1 + u); 1 + 2^-10 covers C <= 512 with room.
STRATA_HD float SparseNormUpperBound(float sum_sq) {
  return Mul(sqrtf(sum_sq), 1.0009765625f);
}

// The winner rule of matching pursuit for (score, index) pairs: higher score,
// then lower index (the CPU's strictly-greater scan in index order). An index
// of kSparseNoAtom loses to everything.
inline constexpr uint32_t kSparseNoAtom = 0xFFFFFFFFu;
STRATA_HD bool SparseBetter(float score_a, uint32_t index_a, float score_b,
                            uint32_t index_b) {
  if (index_a == kSparseNoAtom) return false;
  if (index_b == kSparseNoAtom) return true;
  return score_a > score_b || (score_a == score_b && index_a < index_b);
}

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_SPARSE_MATH_H_
