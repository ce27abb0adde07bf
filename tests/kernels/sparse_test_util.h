// Helpers of the sparse-kernel tests (host and GPU): hand-made dictionary
// profiles (random unit atoms, with exact duplicates, negated duplicates and
// zero atoms to exercise the tie and skip rules) and the CPU codec as the
// byte reference.
#ifndef STRATA_TESTS_KERNELS_SPARSE_TEST_UTIL_H_
#define STRATA_TESTS_KERNELS_SPARSE_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_tensor.h"
#include "codecs/sparse_codec.h"
#include "kvstore/block_format.h"

namespace strata::kernels::testing {

// A sparse profile for `shape` with `groups` dictionaries of `atoms` atoms of
// head_dim / chunks_per_head channels per half; layer l is in group
// l * groups / L. Atoms are random unit vectors, except (when `ties`) atom
// 3 = atom 1 (an exact tie: the lower index must win), atom 4 = -atom 2 (a
// tie in |score|) and atom 5 all zero (never chosen). Needs atoms >= 6 for
// the ties.
inline codecs::CodecProfile MakeSparseProfile(const kvstore::BlockShape& shape,
                                              uint32_t chunks_per_head,
                                              uint32_t groups, uint32_t atoms,
                                              bool ties, std::mt19937& rng) {
  const uint32_t dim = shape.head_dim / chunks_per_head;
  codecs::CodecProfile profile(absl::StrCat("test/sparse-", groups, "x", atoms));
  (void)profile.Put("csr.meta", {3},
                    {static_cast<float>(shape.num_layers),
                     static_cast<float>(shape.num_kv_heads),
                     static_cast<float>(shape.head_dim)});
  std::vector<float> layer_group(shape.num_layers);
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    layer_group[l] = static_cast<float>(l * groups / shape.num_layers);
  }
  (void)profile.Put("csr.layer_group", {shape.num_layers}, layer_group);
  std::normal_distribution<float> n(0, 1);
  for (const char* name : {"csr.k.dict", "csr.v.dict"}) {
    std::vector<float> d(size_t{groups} * atoms * dim);
    for (uint32_t g = 0; g < groups; ++g) {
      for (uint32_t i = 0; i < atoms; ++i) {
        float* a = &d[(size_t{g} * atoms + i) * dim];
        double norm = 0;
        for (uint32_t e = 0; e < dim; ++e) {
          a[e] = n(rng);
          norm += double{a[e]} * a[e];
        }
        for (uint32_t e = 0; e < dim; ++e)
          a[e] = static_cast<float>(a[e] / std::sqrt(norm));
      }
      if (ties && atoms >= 6) {
        float* base = &d[size_t{g} * atoms * dim];
        for (uint32_t e = 0; e < dim; ++e) {
          base[3 * dim + e] = base[1 * dim + e];
          base[4 * dim + e] = -base[2 * dim + e];
          base[5 * dim + e] = 0.0f;
        }
      }
    }
    (void)profile.Put(name, {groups, atoms, dim}, d);
  }
  return profile;
}

// A chunk equal to a multiple of atom 1 of every dictionary would make the
// tie rule decisive; RandomKv alone rarely hits it. Overwrites chunk 0 of
// every (half, layer, token 0, head 0) with c * atom 1 of its group.
inline void PlantAtomOne(const codecs::CodecProfile& profile,
                         uint32_t chunks_per_head, codecs::KvTensor* kv) {
  const kvstore::BlockShape& s = kv->shape;
  const uint32_t dim = s.head_dim / chunks_per_head;
  const auto* groups = profile.Find("csr.layer_group");
  const char* names[2] = {"csr.k.dict", "csr.v.dict"};
  for (int k = 0; k < 2; ++k) {
    const auto* dict = profile.Find(names[k]);
    const uint32_t atoms = dict->dims[1];
    for (uint32_t l = 0; l < s.num_layers; ++l) {
      const uint32_t g = static_cast<uint32_t>(groups->data[l]);
      const float* a = &dict->data[(size_t{g} * atoms + 1) * dim];
      float* x = kv->vec(k, l, 0, 0);
      for (uint32_t e = 0; e < dim; ++e) {
        x[e] = codecs::RoundToDtype(1.5f * a[e], s.dtype);
      }
    }
  }
}

inline codecs::CodecParams SparseParamsBytes(uint8_t s, uint8_t chunks,
                                             uint8_t online = 0) {
  codecs::SparseParams p;
  p.atoms_per_chunk = s;
  p.chunks_per_head = chunks;
  p.online_atoms = online;
  return p.ToBytes();
}

}  // namespace strata::kernels::testing

#endif  // STRATA_TESTS_KERNELS_SPARSE_TEST_UTIL_H_
