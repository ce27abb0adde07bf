// Internal: small dense linear algebra for the CPU reference codecs and their
// profile builders. Everything here is deterministic: the same inputs give the
// same bits on every run (fixed summation orders, no threads, no RNG).
//
// The arithmetic that decides encoded bytes (DotF32, MatchingPursuit) has a
// specified fp32 evaluation order, written next to each function, so a CUDA
// kernel can reproduce it with __fmul_rn/__fadd_rn (no FMA contraction).
#ifndef STRATA_CODECS_INTERNAL_LINALG_H_
#define STRATA_CODECS_INTERNAL_LINALG_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace strata::codecs::internal {

// <a, b> in fp32: eight lane sums, lane i adding a[e]*b[e] for e ≡ i (mod 8)
// in increasing e (each product rounded, then added), combined as
// ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)).
float DotF32(const float* a, const float* b, size_t n);

// Eigendecomposition of the symmetric n×n row-major matrix `a` (destroyed) by
// cyclic Jacobi rotations. On return `values` holds the n eigenvalues in
// decreasing order (ties keep index order) and `vectors` the matching unit
// eigenvectors as COLUMNS of a row-major n×n matrix, each signed so that its
// largest-magnitude component (the first, on ties) is positive.
void SymmetricEigen(std::vector<double>& a, size_t n,
                    std::vector<double>* values, std::vector<double>* vectors);

// A dictionary of `count` atoms of `dim` floats (row-major, not owned) with
// their squared norms and inverse norms (0 for a zero atom).
struct AtomSet {
  const float* atoms = nullptr;
  uint32_t count = 0;
  uint32_t dim = 0;
  std::vector<float> norm2;     // DotF32(a_i, a_i).
  std::vector<float> inv_norm;  // 1 / sqrtf(norm2), 0 for a zero atom.

  AtomSet(const float* atoms, uint32_t count, uint32_t dim);
  const float* atom(uint32_t i) const {
    return atoms + static_cast<size_t>(i) * dim;
  }
};

// Matching pursuit with `s` iterations over `dict` for the vector `x`
// (dict.dim floats). Iteration j:
//   p_i = DotF32(r, a_i); the winner i* maximises |p_i| * inv_norm_i over the
//   non-zero atoms (strictly greater: the lowest index wins a tie; none →
//   index 0, coefficient 0);
//   c = p_i* / norm2_i*, clamped to ±65504, rounded to fp16 → (index, code);
//   r[e] = r[e] - half(c) * a_i*[e]   (product rounded, then subtracted).
// Writes s indices and fp16 codes; `residual` (dict.dim floats, may be null)
// receives the final residual.
void MatchingPursuit(const float* x, const AtomSet& dict, uint32_t s,
                     uint16_t* indices, uint16_t* coefficients,
                     float* residual);

// Spherical k-means on the unit vectors `x` (n × dim, row-major) into `k`
// unit centroids (k × dim, row-major), sign-invariant (unlike the labelling
// k-means of internal/kmeans.h, matching pursuit's use): a vector joins the
// centroid of largest |cos| and counts with that sign. Initialised with the
// vectors at positions floor(i·n/k); an empty cluster is re-seeded with the
// vector that is worst represented (smallest best |cos|, lowest index on
// ties) among those not used as a seed in that iteration. Requires n >= k.
std::vector<float> SignInvariantKMeans(const std::vector<float>& x, size_t n,
                                       uint32_t dim, uint32_t k,
                                       uint32_t iterations);

}  // namespace strata::codecs::internal

#endif  // STRATA_CODECS_INTERNAL_LINALG_H_
