// FitSparseProfile: dictionary learning for the sparse (CSR) codec.
// Spherical k-means initialisation, then rounds of matching-pursuit coding and
// K-SVD rank-1 atom updates (power iteration), all deterministic.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "codecs/internal/linalg.h"
#include "codecs/sparse_codec.h"
#include "common/status_macros.h"

namespace strata::codecs {
namespace {

constexpr int kPowerIterations = 4;

absl::Status CheckCalibration(const std::vector<KvTensor>& calibration) {
  if (calibration.empty()) {
    return absl::InvalidArgumentError("calibration: no tensors");
  }
  const BlockShape& s0 = calibration[0].shape;
  for (size_t i = 0; i < calibration.size(); ++i) {
    const BlockShape& s = calibration[i].shape;
    STRATA_RETURN_IF_ERROR(s.Validate());
    if (s.num_layers != s0.num_layers || s.num_kv_heads != s0.num_kv_heads ||
        s.head_dim != s0.head_dim ||
        calibration[i].data.size() != s.ElementCount()) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration: tensor ", i,
                       " differs in layers/heads/head_dim or size"));
    }
    for (float x : calibration[i].data) {
      if (!std::isfinite(x)) {
        return absl::InvalidArgumentError(
            absl::StrCat("calibration: tensor ", i, " has a non-finite value"));
      }
    }
  }
  return absl::OkStatus();
}

// The non-zero training chunks of (kv, layers [lb, le)): all chunks of all
// calibration tensors in (tensor, layer, token, head, chunk) order, evenly
// strided down to `max_chunks`.
std::vector<float> TrainingChunks(const std::vector<KvTensor>& calibration,
                                  int kv, uint32_t lb, uint32_t le,
                                  uint32_t dim, uint32_t max_chunks,
                                  size_t* n_out) {
  std::vector<const float*> all;
  for (const KvTensor& t : calibration) {
    const size_t per_layer = size_t{t.shape.num_tokens} * t.shape.num_kv_heads *
                             t.shape.head_dim / dim;
    for (uint32_t l = lb; l < le; ++l) {
      const float* base = t.vec(kv, l, 0, 0);
      for (size_t c = 0; c < per_layer; ++c) all.push_back(base + c * dim);
    }
  }
  std::vector<const float*> picked;
  if (all.size() > max_chunks) {
    for (size_t i = 0; i < max_chunks; ++i)
      picked.push_back(all[i * all.size() / max_chunks]);
  } else {
    picked = std::move(all);
  }
  std::vector<float> x;
  size_t n = 0;
  for (const float* c : picked) {
    if (internal::DotF32(c, c, dim) == 0) continue;
    x.insert(x.end(), c, c + dim);
    ++n;
  }
  *n_out = n;
  return x;
}

// One K-SVD pass over the atoms of `dict` (N × dim) for the training chunks
// `x` (n × dim) coded by matching pursuit with `s` atoms each. Atoms no chunk
// uses, and atoms within `duplicate_cos` of an earlier atom, are replaced by
// the normalised residuals of the worst-coded chunks.
void RefineDictionary(const std::vector<float>& x, size_t n, uint32_t dim,
                      uint32_t s, uint32_t num_atoms, float duplicate_cos,
                      std::vector<float>& dict) {
  std::vector<uint16_t> idx(n * s), codes(n * s);
  std::vector<float> residual(n * dim);
  {
    const internal::AtomSet set(dict.data(), num_atoms, dim);
    for (size_t i = 0; i < n; ++i) {
      internal::MatchingPursuit(&x[i * dim], set, s, &idx[i * s], &codes[i * s],
                                &residual[i * dim]);
    }
  }
  // Users of each atom with the total coefficient it has in each user.
  struct Use {
    size_t vec;
    double coef;
  };
  std::vector<std::vector<Use>> users(num_atoms);
  for (size_t i = 0; i < n; ++i) {
    for (uint32_t j = 0; j < s; ++j) {
      const uint16_t a = idx[i * s + j];
      const double c = HalfToFloat(codes[i * s + j]);
      auto& u = users[a];
      if (!u.empty() && u.back().vec == i) {
        u.back().coef += c;
      } else {
        u.push_back({i, c});
      }
    }
  }
  std::vector<uint32_t> unused;
  std::vector<double> e, v(dim), w(dim);
  for (uint32_t k = 0; k < num_atoms; ++k) {
    auto& u = users[k];
    if (u.empty()) {
      unused.push_back(k);
      continue;
    }
    float* atom = &dict[size_t{k} * dim];
    // e_i = residual_i + coef_i · atom_k: the part atom k should explain.
    e.assign(u.size() * dim, 0);
    for (size_t q = 0; q < u.size(); ++q) {
      const float* r = &residual[u[q].vec * dim];
      for (uint32_t d = 0; d < dim; ++d)
        e[q * dim + d] = r[d] + u[q].coef * atom[d];
    }
    for (uint32_t d = 0; d < dim; ++d) v[d] = atom[d];
    for (int it = 0; it < kPowerIterations; ++it) {
      std::fill(w.begin(), w.end(), 0.0);
      for (size_t q = 0; q < u.size(); ++q) {
        const double* eq = &e[q * dim];
        double dot = 0;
        for (uint32_t d = 0; d < dim; ++d) dot += eq[d] * v[d];
        for (uint32_t d = 0; d < dim; ++d) w[d] += dot * eq[d];
      }
      double norm = 0;
      for (double z : w) norm += z * z;
      if (norm == 0) break;
      norm = std::sqrt(norm);
      for (uint32_t d = 0; d < dim; ++d) v[d] = w[d] / norm;
    }
    for (size_t q = 0; q < u.size(); ++q) {
      const double* eq = &e[q * dim];
      double c = 0;
      for (uint32_t d = 0; d < dim; ++d) c += eq[d] * v[d];
      float* r = &residual[u[q].vec * dim];
      for (uint32_t d = 0; d < dim; ++d)
        r[d] = static_cast<float>(eq[d] - c * v[d]);
    }
    for (uint32_t d = 0; d < dim; ++d) atom[d] = static_cast<float>(v[d]);
  }
  // Near-duplicates of an earlier atom are wasted too.
  for (uint32_t k = 0; k < num_atoms; ++k) {
    if (users[k].empty()) continue;
    const float* a = &dict[size_t{k} * dim];
    for (uint32_t j = 0; j < k; ++j) {
      if (std::fabs(internal::DotF32(a, &dict[size_t{j} * dim], dim)) >
          duplicate_cos) {
        unused.push_back(k);
        break;
      }
    }
  }
  if (unused.empty()) return;
  // Unused atoms take the directions of the worst-coded chunks' residuals.
  std::vector<double> energy(n);
  for (size_t i = 0; i < n; ++i) {
    double z = 0;
    for (uint32_t d = 0; d < dim; ++d)
      z += double{residual[i * dim + d]} * residual[i * dim + d];
    energy[i] = z;
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return energy[a] > energy[b]; });
  for (size_t q = 0; q < unused.size() && q < n && energy[order[q]] > 0; ++q) {
    const float* r = &residual[order[q] * dim];
    const double inv = 1 / std::sqrt(energy[order[q]]);
    float* atom = &dict[size_t{unused[q]} * dim];
    for (uint32_t d = 0; d < dim; ++d) atom[d] = static_cast<float>(r[d] * inv);
  }
}

}  // namespace

absl::StatusOr<CodecProfile> FitSparseProfile(
    const std::vector<KvTensor>& calibration, const SparseFitOptions& options,
    const std::string& model_id) {
  STRATA_RETURN_IF_ERROR(CheckCalibration(calibration));
  const BlockShape& shape = calibration[0].shape;
  if (options.num_atoms == 0 || options.num_atoms > 65536) {
    return absl::InvalidArgumentError("num_atoms: must be in [1, 65536]");
  }
  if (options.chunks_per_head == 0 || options.chunks_per_head > 255 ||
      shape.head_dim % options.chunks_per_head != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunks_per_head: must be in [1, 255] and divide head_dim ",
        shape.head_dim));
  }
  if (options.layers_per_group == 0) {
    return absl::InvalidArgumentError("layers_per_group: must be at least 1");
  }
  if (options.atoms_per_chunk == 0) {
    return absl::InvalidArgumentError("atoms_per_chunk: must be at least 1");
  }
  if (options.max_training_chunks < options.num_atoms) {
    return absl::InvalidArgumentError(
        "max_training_chunks: must be at least num_atoms");
  }
  if (!(options.duplicate_cos > 0 && options.duplicate_cos <= 1)) {
    return absl::InvalidArgumentError("duplicate_cos: must be in (0, 1]");
  }
  const uint32_t dim = shape.head_dim / options.chunks_per_head;
  const uint32_t L = shape.num_layers, N = options.num_atoms;
  const uint32_t groups =
      (L + options.layers_per_group - 1) / options.layers_per_group;
  std::vector<float> layer_group(L);
  for (uint32_t l = 0; l < L; ++l) {
    layer_group[l] = static_cast<float>(l / options.layers_per_group);
  }
  CodecProfile profile(model_id);
  STRATA_RETURN_IF_ERROR(profile.Put(
      "csr.meta", {3},
      {static_cast<float>(L), static_cast<float>(shape.num_kv_heads),
       static_cast<float>(shape.head_dim)}));
  STRATA_RETURN_IF_ERROR(
      profile.Put("csr.layer_group", {L}, std::move(layer_group)));
  for (int kv = 0; kv < 2; ++kv) {
    std::vector<float> dicts;
    dicts.reserve(size_t{groups} * N * dim);
    for (uint32_t g = 0; g < groups; ++g) {
      const uint32_t lb = g * options.layers_per_group;
      const uint32_t le = std::min(L, lb + options.layers_per_group);
      size_t n = 0;
      std::vector<float> x = TrainingChunks(calibration, kv, lb, le, dim,
                                            options.max_training_chunks, &n);
      if (n < N) {
        return absl::InvalidArgumentError(absl::StrCat(
            "calibration: layers [", lb, ", ", le, ") of ", kv == 0 ? "K" : "V",
            " give ", n, " non-zero training chunks for ", N, " atoms"));
      }
      std::vector<float> unit(x.size());
      for (size_t i = 0; i < n; ++i) {
        const float* c = &x[i * dim];
        const float inv = 1 / std::sqrt(internal::DotF32(c, c, dim));
        for (uint32_t d = 0; d < dim; ++d) unit[i * dim + d] = c[d] * inv;
      }
      std::vector<float> dict = internal::SignInvariantKMeans(
          unit, n, dim, N, options.kmeans_iterations);
      for (uint32_t r = 0; r < options.refine_rounds; ++r) {
        RefineDictionary(x, n, dim, options.atoms_per_chunk, N,
                         options.duplicate_cos, dict);
      }
      dicts.insert(dicts.end(), dict.begin(), dict.end());
    }
    STRATA_RETURN_IF_ERROR(profile.Put(kv == 0 ? "csr.k.dict" : "csr.v.dict",
                                       {groups, N, dim}, std::move(dicts)));
  }
  return profile;
}

}  // namespace strata::codecs
