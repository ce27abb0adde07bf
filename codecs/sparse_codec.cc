// The sparse (CSR) codec: matching pursuit over per-layer-group dictionaries.
// Layouts: docs/codecs/sparse_lowrank.md. Dictionary learning lives in
// internal/sparse_fit.cc.
#include "codecs/sparse_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "codecs/internal/bytes.h"
#include "codecs/internal/linalg.h"
#include "codecs/internal/registry.h"
#include "common/status_macros.h"

namespace strata::codecs {
namespace {

constexpr char kMetaTensor[] = "csr.meta";
constexpr char kLayerGroupTensor[] = "csr.layer_group";
constexpr const char* kDictTensor[2] = {"csr.k.dict", "csr.v.dict"};
constexpr size_t kRecordBytes = 4;  // u16 atom index, u16 fp16 coefficient.
constexpr uint32_t kMaxAtoms = 65536;

using internal::AllFinite;
using internal::LoadU16;
using internal::StoreU16;

// The profile's dictionaries, checked against a block shape and params.
struct Dictionaries {
  std::vector<uint32_t> group_of_layer;
  uint32_t atoms = 0;                         // N.
  uint32_t dim = 0;                           // d / s_n.
  const float* dict[2] = {nullptr, nullptr};  // [G][N][dim].

  const float* Group(int kv, uint32_t layer) const {
    return dict[kv] + static_cast<size_t>(group_of_layer[layer]) * atoms * dim;
  }
};

absl::StatusOr<Dictionaries> LoadDictionaries(const CodecProfile* profile,
                                              const BlockShape& shape,
                                              const SparseParams& p) {
  if (profile == nullptr) {
    return absl::FailedPreconditionError(
        "profile: the sparse codec needs a profile (FitSparseProfile)");
  }
  STRATA_ASSIGN_OR_RETURN(const ProfileTensor* meta,
                          profile->Require(kMetaTensor, {3}));
  if (meta->data != std::vector<float>{static_cast<float>(shape.num_layers),
                                       static_cast<float>(shape.num_kv_heads),
                                       static_cast<float>(shape.head_dim)}) {
    return absl::FailedPreconditionError(
        absl::StrCat("profile: \"", profile->model_id(),
                     "\" was fitted for another shape "
                     "(csr.meta is not [",
                     shape.num_layers, ", ", shape.num_kv_heads, ", ",
                     shape.head_dim, "])"));
  }
  STRATA_ASSIGN_OR_RETURN(
      const ProfileTensor* groups,
      profile->Require(kLayerGroupTensor, {shape.num_layers}));
  const ProfileTensor* dicts[2];
  for (int kv = 0; kv < 2; ++kv) {
    dicts[kv] = profile->Find(kDictTensor[kv]);
    if (dicts[kv] == nullptr || dicts[kv]->dims.size() != 3) {
      return absl::FailedPreconditionError(
          absl::StrCat("profile: \"", profile->model_id(),
                       "\" has no 3-d tensor \"", kDictTensor[kv], "\""));
    }
  }
  if (dicts[0]->dims != dicts[1]->dims) {
    return absl::FailedPreconditionError(
        "profile: csr.k.dict and csr.v.dict have different dims");
  }
  Dictionaries d;
  const uint32_t num_groups = dicts[0]->dims[0];
  d.atoms = dicts[0]->dims[1];
  d.dim = dicts[0]->dims[2];
  if (d.dim * p.chunks_per_head != shape.head_dim) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: atoms have ", d.dim, " channels; head_dim ", shape.head_dim,
        " in ", static_cast<int>(p.chunks_per_head), " chunks needs ",
        shape.head_dim / p.chunks_per_head));
  }
  if (d.atoms == 0 || d.atoms + p.online_atoms > kMaxAtoms) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: ", d.atoms, " atoms + ", static_cast<int>(p.online_atoms),
        " online atoms do not fit u16 indices"));
  }
  for (float g : groups->data) {
    if (!(g >= 0 && g < num_groups && g == std::floor(g))) {
      return absl::FailedPreconditionError(
          absl::StrCat("profile: csr.layer_group entry ", g,
                       " is not a group of ", num_groups));
    }
    d.group_of_layer.push_back(static_cast<uint32_t>(g));
  }
  for (int kv = 0; kv < 2; ++kv) {
    if (!AllFinite(dicts[kv]->data)) {
      return absl::FailedPreconditionError(
          absl::StrCat("profile: ", kDictTensor[kv], " has non-finite atoms"));
    }
    d.dict[kv] = dicts[kv]->data.data();
  }
  return d;
}

// Byte sizes of the two payload sections.
struct SparseLayout {
  uint64_t online_bytes;     // [2][L][M][dim] fp16.
  uint64_t records_per_kvl;  // T·H·s_n·s.
  uint64_t total;

  SparseLayout(const BlockShape& shape, const SparseParams& p) {
    const uint64_t dim = shape.head_dim / p.chunks_per_head;
    online_bytes = 2ull * shape.num_layers * p.online_atoms * dim * 2;
    records_per_kvl = uint64_t{shape.num_tokens} * shape.num_kv_heads *
                      p.chunks_per_head * p.atoms_per_chunk;
    total =
        online_bytes + 2ull * shape.num_layers * records_per_kvl * kRecordBytes;
  }
  uint64_t OnlineOffset(int kv, uint32_t layer, uint32_t num_layers,
                        uint64_t atom_bytes) const {
    return (static_cast<uint64_t>(kv) * num_layers + layer) * atom_bytes;
  }
  // First record of (kv, layer, token, head).
  uint64_t RecordOffset(const BlockShape& shape, const SparseParams& p, int kv,
                        uint32_t layer, uint32_t token, uint32_t head) const {
    const uint64_t vec =
        ((static_cast<uint64_t>(kv) * shape.num_layers + layer) *
             shape.num_tokens +
         token) *
            shape.num_kv_heads +
        head;
    return online_bytes +
           vec * p.chunks_per_head * p.atoms_per_chunk * kRecordBytes;
  }
};

// Picks the M chunks of (kv, layer) that the offline dictionary codes worst
// (largest residual energy; lowest position on ties; zero chunks never) and
// returns them as fp16 unit atoms.
std::vector<uint16_t> PickOnlineAtoms(const KvTensor& kv_in, int kv,
                                      uint32_t layer, const SparseParams& p,
                                      const internal::AtomSet& offline) {
  const BlockShape& shape = kv_in.shape;
  const uint32_t dim = offline.dim;
  const size_t chunks =
      size_t{shape.num_tokens} * shape.num_kv_heads * p.chunks_per_head;
  std::vector<double> energy(chunks);
  std::vector<float> residual(dim);
  std::vector<uint16_t> idx(p.atoms_per_chunk), coef(p.atoms_per_chunk);
  for (size_t c = 0; c < chunks; ++c) {
    const float* x = kv_in.vec(kv, layer, 0, 0) + c * dim;
    internal::MatchingPursuit(x, offline, p.atoms_per_chunk, idx.data(),
                              coef.data(), residual.data());
    double e = 0;
    for (float r : residual) e += static_cast<double>(r) * r;
    energy[c] = internal::DotF32(x, x, dim) > 0 ? e : -1;
  }
  std::vector<size_t> order(chunks);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return energy[a] > energy[b]; });
  std::vector<uint16_t> atoms(static_cast<size_t>(p.online_atoms) * dim, 0);
  for (uint32_t m = 0; m < p.online_atoms && energy[order[m]] >= 0; ++m) {
    const float* x = kv_in.vec(kv, layer, 0, 0) + order[m] * dim;
    const float norm = std::sqrt(internal::DotF32(x, x, dim));
    for (uint32_t e = 0; e < dim; ++e)
      atoms[m * dim + e] = FloatToHalf(x[e] / norm);
  }
  return atoms;
}

class SparseCodec final : public Codec {
 public:
  CodecId id() const override { return CodecId::kSparse; }
  const char* name() const override { return "sparse"; }
  bool needs_profile() const override { return true; }

  absl::Status ValidateParams(const BlockShape& shape,
                              const CodecParams& params) const override {
    STRATA_ASSIGN_OR_RETURN(SparseParams p, SparseParams::FromBytes(params));
    if (p.atoms_per_chunk == 0) {
      return absl::InvalidArgumentError("atoms_per_chunk: must be at least 1");
    }
    if (p.chunks_per_head == 0 || shape.head_dim % p.chunks_per_head != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunks_per_head: ", static_cast<int>(p.chunks_per_head),
                       " does not divide head_dim ", shape.head_dim));
    }
    if (p.online_atoms >
        uint64_t{shape.num_tokens} * shape.num_kv_heads * p.chunks_per_head) {
      return absl::InvalidArgumentError(
          absl::StrCat("online_atoms: ", static_cast<int>(p.online_atoms),
                       " exceeds the chunks of one layer"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<uint8_t>> Encode(
      const KvTensor& kv, CodecParams& params,
      const CodecProfile* profile) const override {
    STRATA_RETURN_IF_ERROR(kv.shape.Validate());
    STRATA_RETURN_IF_ERROR(ValidateParams(kv.shape, params));
    STRATA_ASSIGN_OR_RETURN(SparseParams p, SparseParams::FromBytes(params));
    if (kv.data.size() != kv.shape.ElementCount() || !AllFinite(kv.data)) {
      return absl::InvalidArgumentError(
          "kv: wrong size or a non-finite value (the sparse codec codes finite "
          "values)");
    }
    STRATA_ASSIGN_OR_RETURN(Dictionaries dicts,
                            LoadDictionaries(profile, kv.shape, p));
    const BlockShape& shape = kv.shape;
    const SparseLayout layout(shape, p);
    if (layout.total > kvstore::kMaxPayloadBytes) {
      return absl::InvalidArgumentError(
          "kv: the sparse payload would exceed 4 GiB");
    }
    std::vector<uint8_t> payload(layout.total);
    const uint32_t dim = dicts.dim, s = p.atoms_per_chunk, M = p.online_atoms;
    const uint64_t atom_bytes = uint64_t{M} * dim * 2;
    std::vector<uint16_t> idx(s), coef(s);
    std::vector<float> atoms;
    for (int k = 0; k < 2; ++k) {
      for (uint32_t l = 0; l < shape.num_layers; ++l) {
        const float* offline = dicts.Group(k, l);
        const float* all = offline;
        if (M > 0) {
          const std::vector<uint16_t> online = PickOnlineAtoms(
              kv, k, l, p, internal::AtomSet(offline, dicts.atoms, dim));
          uint8_t* dst =
              &payload[layout.OnlineOffset(k, l, shape.num_layers, atom_bytes)];
          atoms.assign(offline, offline + size_t{dicts.atoms} * dim);
          for (size_t i = 0; i < online.size(); ++i) {
            StoreU16(dst + 2 * i, online[i]);
            atoms.push_back(HalfToFloat(online[i]));
          }
          all = atoms.data();
        }
        const internal::AtomSet set(all, dicts.atoms + M, dim);
        for (uint32_t t = 0; t < shape.num_tokens; ++t) {
          for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
            uint8_t* rec = &payload[layout.RecordOffset(shape, p, k, l, t, h)];
            for (uint32_t c = 0; c < p.chunks_per_head; ++c) {
              internal::MatchingPursuit(kv.vec(k, l, t, h) + c * dim, set, s,
                                        idx.data(), coef.data(), nullptr);
              for (uint32_t j = 0; j < s; ++j, rec += kRecordBytes) {
                StoreU16(rec, idx[j]);
                StoreU16(rec + 2, coef[j]);
              }
            }
          }
        }
      }
    }
    p.profile_id = profile->id();
    params = p.ToBytes();
    return payload;
  }

  absl::Status Decode(const BlockShape& shape, const CodecParams& params,
                      absl::Span<const uint8_t> payload,
                      const CodecProfile* profile,
                      const DecodeSelection& selection,
                      KvTensor* out) const override {
    STRATA_RETURN_IF_ERROR(shape.Validate());
    STRATA_RETURN_IF_ERROR(ValidateParams(shape, params));
    const SparseParams p = *SparseParams::FromBytes(params);
    STRATA_ASSIGN_OR_RETURN(BlockShape sel, selection.Resolve(shape));
    STRATA_RETURN_IF_ERROR(CheckProfileId(profile, p.profile_id));
    STRATA_ASSIGN_OR_RETURN(Dictionaries dicts,
                            LoadDictionaries(profile, shape, p));
    const SparseLayout layout(shape, p);
    if (payload.size() != layout.total) {
      return absl::DataLossError(
          absl::StrCat("payload: ", payload.size(),
                       " bytes, the shape and params need ", layout.total));
    }
    const uint32_t dim = dicts.dim, s = p.atoms_per_chunk, M = p.online_atoms;
    const uint32_t count = dicts.atoms + M;
    const uint64_t atom_bytes = uint64_t{M} * dim * 2;
    KvTensor result = KvTensor::Zeros(sel);
    std::vector<float> online(size_t{M} * dim);
    for (int k = 0; k < 2; ++k) {
      for (uint32_t l = 0; l < sel.num_layers; ++l) {
        const uint32_t layer = selection.layer_begin + l;
        const float* offline = dicts.Group(k, layer);
        const uint8_t* src = &payload[layout.OnlineOffset(
            k, layer, shape.num_layers, atom_bytes)];
        for (size_t i = 0; i < online.size(); ++i) {
          online[i] = HalfToFloat(LoadU16(src + 2 * i));
          if (!std::isfinite(online[i])) {
            return absl::DataLossError(
                absl::StrCat("payload: online atom of kv ", k, " layer ", layer,
                             " is not finite"));
          }
        }
        for (uint32_t t = 0; t < sel.num_tokens; ++t) {
          const uint32_t token = selection.Token(t);
          for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
            const uint8_t* rec =
                &payload[layout.RecordOffset(shape, p, k, layer, token, h)];
            float* x = result.vec(k, l, t, h);
            for (uint32_t c = 0; c < p.chunks_per_head; ++c) {
              float* xc = x + c * dim;
              for (uint32_t j = 0; j < s; ++j, rec += kRecordBytes) {
                const uint16_t i = LoadU16(rec);
                const float cf = HalfToFloat(LoadU16(rec + 2));
                if (i >= count || !std::isfinite(cf)) {
                  return absl::DataLossError(absl::StrCat(
                      "payload: record (kv ", k, ", layer ", layer, ", token ",
                      token, ", head ", h, ") has atom index ", i, " of ",
                      count, " or a non-finite coefficient"));
                }
                const float* a = i < dicts.atoms
                                     ? offline + size_t{i} * dim
                                     : &online[size_t{i - dicts.atoms} * dim];
                for (uint32_t e = 0; e < dim; ++e) xc[e] = xc[e] + cf * a[e];
              }
            }
            for (uint32_t e = 0; e < shape.head_dim; ++e) {
              x[e] = RoundToDtype(x[e], shape.dtype);
            }
          }
        }
      }
    }
    *out = std::move(result);
    return absl::OkStatus();
  }
};

}  // namespace

CodecParams SparseParams::ToBytes() const {
  CodecParams b{};
  b[0] = kVersion;
  b[1] = atoms_per_chunk;
  b[2] = chunks_per_head;
  b[3] = online_atoms;
  std::memcpy(&b[8], &profile_id, 8);
  return b;
}

absl::StatusOr<SparseParams> SparseParams::FromBytes(const CodecParams& b) {
  if (b[0] != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("version: sparse params version ", static_cast<int>(b[0]),
                     " is not ", static_cast<int>(kVersion)));
  }
  for (size_t i : {4, 5, 6, 7}) {
    if (b[i] != 0)
      return absl::InvalidArgumentError("reserved: bytes 4-7 must be 0");
  }
  for (size_t i = 16; i < b.size(); ++i) {
    if (b[i] != 0)
      return absl::InvalidArgumentError("reserved: bytes 16-31 must be 0");
  }
  SparseParams p;
  p.atoms_per_chunk = b[1];
  p.chunks_per_head = b[2];
  p.online_atoms = b[3];
  std::memcpy(&p.profile_id, &b[8], 8);
  return p;
}

namespace internal {
const Codec* SparseCodecInstance() {
  static const SparseCodec* codec = new SparseCodec();
  return codec;
}
}  // namespace internal

}  // namespace strata::codecs
