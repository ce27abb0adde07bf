// Host side of the sparse kernels: profile packing (norms by the CPU codec's
// own AtomSet), params checks (the CPU codec's FromBytes/ValidateParams), the
// payload geometry (as codecs/sparse_codec.cc's SparseLayout), the tiling of
// the encode into GEMM-sized ranges of chunks, and the launches.
#include "kernels/sparse_kernels.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "codecs/internal/linalg.h"
#include "codecs/sparse_codec.h"
#include "common/status_macros.h"
#include "kernels/internal/host_checks.h"
#include "kernels/internal/sparse_launch.h"

namespace strata::kernels {

using BlockShape = kvstore::BlockShape;
using CodecParams = codecs::CodecParams;

namespace {

using codecs::SparseParams;

constexpr char kMetaTensor[] = "csr.meta";
constexpr char kLayerGroupTensor[] = "csr.layer_group";
constexpr const char* kDictTensor[2] = {"csr.k.dict", "csr.v.dict"};
constexpr uint32_t kMaxAtoms = 65536;
constexpr uint64_t kDefaultScoreBytes = uint64_t{256} << 20;

uint64_t Align256(uint64_t n) { return (n + 255) / 256 * 256; }

struct Geometry {
  uint64_t online_bytes = 0;  // [2][L][M][C] fp16.
  uint64_t chunks = 0;        // 2 * L * T * H * s_n.
  uint64_t total = 0;
};

Geometry MakeGeometry(const BlockShape& shape, const SparseParams& p) {
  Geometry g;
  const uint64_t dim = shape.head_dim / p.chunks_per_head;
  g.online_bytes = 2ull * shape.num_layers * p.online_atoms * dim * 2;
  g.chunks = 2ull * shape.num_layers * shape.num_tokens * shape.num_kv_heads *
             p.chunks_per_head;
  g.total = g.online_bytes + g.chunks * p.atoms_per_chunk * 4;
  return g;
}

// The checks shared by encode and decode; returns the parsed params.
absl::StatusOr<SparseParams> Plan(const BlockShape& shape,
                                  const CodecParams& bytes,
                                  const SparseProfileLayout& lay,
                                  const float* profile) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(const codecs::Codec* codec,
                          codecs::FindCodec(codecs::CodecId::kSparse));
  STRATA_RETURN_IF_ERROR(codec->ValidateParams(shape, bytes));
  STRATA_ASSIGN_OR_RETURN(SparseParams p, SparseParams::FromBytes(bytes));
  if (lay.num_layers != shape.num_layers ||
      lay.num_kv_heads != shape.num_kv_heads ||
      lay.head_dim != shape.head_dim || lay.total_floats == 0 ||
      lay.group_of_layer.size() != shape.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "profile_layout: packed for ", lay.num_layers, " layers x ",
        lay.num_kv_heads, " heads x ", lay.head_dim, ", the block is ",
        shape.num_layers, " x ", shape.num_kv_heads, " x ", shape.head_dim));
  }
  if (lay.atom_dim * p.chunks_per_head != shape.head_dim) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: atoms have ", lay.atom_dim, " channels; head_dim ",
        shape.head_dim, " in ", static_cast<int>(p.chunks_per_head),
        " chunks needs ", shape.head_dim / p.chunks_per_head));
  }
  if (lay.num_atoms == 0 || lay.num_atoms + p.online_atoms > kMaxAtoms) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: ", lay.num_atoms, " atoms + ",
        static_cast<int>(p.online_atoms), " online atoms do not fit u16 indices"));
  }
  for (uint32_t g : lay.group_of_layer) {
    if (g >= lay.num_groups) {
      return absl::InvalidArgumentError(absl::StrCat(
          "profile_layout: layer group ", g, " of ", lay.num_groups));
    }
  }
  if (lay.atom_dim > kSparseMaxGpuAtomDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunks_per_head: atoms of ", lay.atom_dim,
        " channels are above the GPU kernels' ", kSparseMaxGpuAtomDim,
        " (use more chunks per head, or the CPU codec)"));
  }
  const uint64_t total = MakeGeometry(shape, p).total;
  if (total > kvstore::kMaxPayloadBytes) {
    return absl::InvalidArgumentError(
        "kv: the sparse payload would exceed 4 GiB");
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("profile", profile, 4));
  return p;
}

absl::Status CheckPayloadBytes(uint64_t got, uint64_t want) {
  if (got != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload_bytes: ", got, " bytes, shape and params need ", want));
  }
  return absl::OkStatus();
}

uint32_t TileChunks(const SparseEncodeParams& p, const SparseParams& sp) {
  const uint64_t per_half = MakeGeometry(p.shape, sp).chunks / 2;
  const uint64_t C = p.profile_layout.atom_dim, N = p.profile_layout.num_atoms;
  uint64_t tile = p.max_tile_chunks;
  if (tile == 0) tile = std::max<uint64_t>(1, kDefaultScoreBytes / (4 * (N + C)));
  // cuBLAS takes int dimensions and leading dimensions.
  tile = std::min<uint64_t>({tile, per_half, uint64_t{1} << 30});
  return static_cast<uint32_t>(std::max<uint64_t>(tile, 1));
}

absl::StatusOr<internal::SparseEncodeArgs> PlanEncode(
    const SparseEncodeParams& p, void* workspace) {
  STRATA_ASSIGN_OR_RETURN(
      SparseParams sp,
      Plan(p.shape, p.codec_params, p.profile_layout, p.profile));
  if (sp.online_atoms != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "online_atoms: ", static_cast<int>(sp.online_atoms),
        "; the GPU encode codes without online atoms (use the CPU codec)"));
  }
  if (sp.profile_id != 0 && sp.profile_id != p.profile_layout.profile_id) {
    return absl::InvalidArgumentError(
        "codec_params: profile_id is not the packed profile's");
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 4));
  const Geometry geo = MakeGeometry(p.shape, sp);
  STRATA_RETURN_IF_ERROR(CheckPayloadBytes(p.payload_bytes, geo.total));
  STRATA_RETURN_IF_ERROR(internal::CheckDisjoint(
      "payload", p.payload, p.payload_bytes, p.kv, p.shape.RawBytes()));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  if (p.cublas == nullptr) {
    return absl::InvalidArgumentError("cublas: null handle");
  }
  const SparseProfileLayout& lay = p.profile_layout;
  const uint32_t tile = TileChunks(p, sp);
  const uint64_t residual_bytes = Align256(uint64_t{tile} * lay.atom_dim * 4);
  internal::SparseEncodeArgs a;
  a.dtype = static_cast<int>(p.shape.dtype);
  a.atoms = lay.num_atoms;
  a.dim = lay.atom_dim;
  a.s = sp.atoms_per_chunk;
  a.records_offset = geo.online_bytes;
  a.kv = p.kv;
  a.payload = static_cast<uint8_t*>(p.payload);
  a.error_flags = p.error_flags;
  a.cublas = p.cublas;
  if (workspace != nullptr) {
    a.residual = static_cast<float*>(workspace);
    a.scores = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) +
                                        residual_bytes);
  }
  // Runs of consecutive layers that share a dictionary are contiguous
  // chunks of the raw block; each run is cut into tiles.
  const uint32_t L = p.shape.num_layers;
  const uint64_t per_layer = uint64_t{p.shape.num_tokens} *
                             p.shape.num_kv_heads * sp.chunks_per_head;
  const uint64_t group_floats = uint64_t{lay.num_atoms} * lay.atom_dim;
  for (int kv = 0; kv < 2; ++kv) {
    for (uint32_t l0 = 0; l0 < L;) {
      const uint32_t g = lay.group_of_layer[l0];
      uint32_t l1 = l0 + 1;
      while (l1 < L && lay.group_of_layer[l1] == g) ++l1;
      const uint64_t first = (uint64_t{static_cast<uint32_t>(kv)} * L + l0) *
                             per_layer;
      const uint64_t count = uint64_t{l1 - l0} * per_layer;
      for (uint64_t done = 0; done < count; done += tile) {
        internal::SparseTile t;
        t.first_chunk = first + done;
        t.chunks = static_cast<uint32_t>(std::min<uint64_t>(tile, count - done));
        t.dict = p.profile + lay.dict[kv] + g * group_floats;
        t.norm2 = p.profile + lay.norm2[kv] + uint64_t{g} * lay.num_atoms;
        t.inv = p.profile + lay.inv_norm[kv] + uint64_t{g} * lay.num_atoms;
        a.tiles.push_back(t);
      }
      l0 = l1;
    }
  }
  return a;
}

absl::StatusOr<internal::SparseDecodeArgs> PlanDecode(
    const SparseDecodeParams& p) {
  STRATA_ASSIGN_OR_RETURN(
      SparseParams sp,
      Plan(p.shape, p.codec_params, p.profile_layout, p.profile));
  if (sp.profile_id != p.profile_layout.profile_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: the block was encoded with profile ", sp.profile_id,
        ", the packed profile is ", p.profile_layout.profile_id));
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 4));
  const Geometry geo = MakeGeometry(p.shape, sp);
  STRATA_RETURN_IF_ERROR(CheckPayloadBytes(p.payload_bytes, geo.total));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(internal::CheckDisjoint(
      "kv", p.kv, p.shape.RawBytes(), p.payload, p.payload_bytes));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  const SparseProfileLayout& lay = p.profile_layout;
  internal::SparseDecodeArgs a;
  a.dtype = static_cast<int>(p.shape.dtype);
  a.layers = p.shape.num_layers;
  a.tokens = p.shape.num_tokens;
  a.heads = p.shape.num_kv_heads;
  a.atoms = lay.num_atoms;
  a.online = sp.online_atoms;
  a.dim = lay.atom_dim;
  a.chunks_per_head = sp.chunks_per_head;
  a.s = sp.atoms_per_chunk;
  a.records_offset = geo.online_bytes;
  a.chunks = geo.chunks;
  a.profile = p.profile;
  a.dict[0] = lay.dict[0];
  a.dict[1] = lay.dict[1];
  a.groups = lay.groups;
  a.payload = static_cast<const uint8_t*>(p.payload);
  a.kv = p.kv;
  a.error_flags = p.error_flags;
  return a;
}

}  // namespace

absl::StatusOr<PackedSparseProfile> PackSparseProfile(
    const codecs::CodecProfile& profile, const kvstore::BlockShape& shape) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(const codecs::ProfileTensor* meta,
                          profile.Require(kMetaTensor, {3}));
  if (meta->data != std::vector<float>{static_cast<float>(shape.num_layers),
                                       static_cast<float>(shape.num_kv_heads),
                                       static_cast<float>(shape.head_dim)}) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: \"", profile.model_id(),
        "\" was fitted for another shape (csr.meta is not [", shape.num_layers,
        ", ", shape.num_kv_heads, ", ", shape.head_dim, "])"));
  }
  STRATA_ASSIGN_OR_RETURN(
      const codecs::ProfileTensor* groups,
      profile.Require(kLayerGroupTensor, {shape.num_layers}));
  const codecs::ProfileTensor* dicts[2];
  for (int kv = 0; kv < 2; ++kv) {
    dicts[kv] = profile.Find(kDictTensor[kv]);
    if (dicts[kv] == nullptr || dicts[kv]->dims.size() != 3) {
      return absl::FailedPreconditionError(
          absl::StrCat("profile: \"", profile.model_id(),
                       "\" has no 3-d tensor \"", kDictTensor[kv], "\""));
    }
  }
  if (dicts[0]->dims != dicts[1]->dims) {
    return absl::FailedPreconditionError(
        "profile: csr.k.dict and csr.v.dict have different dims");
  }
  PackedSparseProfile out;
  SparseProfileLayout& lay = out.layout;
  lay.num_layers = shape.num_layers;
  lay.num_kv_heads = shape.num_kv_heads;
  lay.head_dim = shape.head_dim;
  lay.num_groups = dicts[0]->dims[0];
  lay.num_atoms = dicts[0]->dims[1];
  lay.atom_dim = dicts[0]->dims[2];
  lay.profile_id = profile.id();
  if (lay.num_groups == 0 || lay.num_atoms == 0 || lay.atom_dim == 0 ||
      lay.num_atoms > kMaxAtoms) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: dictionaries of dims [", lay.num_groups, ", ", lay.num_atoms,
        ", ", lay.atom_dim, "]"));
  }
  for (float g : groups->data) {
    if (!(g >= 0 && g < lay.num_groups && g == std::floor(g))) {
      return absl::FailedPreconditionError(
          absl::StrCat("profile: csr.layer_group entry ", g,
                       " is not a group of ", lay.num_groups));
    }
    lay.group_of_layer.push_back(static_cast<uint32_t>(g));
  }
  std::vector<float>& data = out.data;
  for (int kv = 0; kv < 2; ++kv) {
    for (float v : dicts[kv]->data) {
      if (!std::isfinite(v)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "profile: ", kDictTensor[kv], " has non-finite atoms"));
      }
    }
    lay.dict[kv] = data.size();
    data.insert(data.end(), dicts[kv]->data.begin(), dicts[kv]->data.end());
  }
  const uint64_t group_floats = uint64_t{lay.num_atoms} * lay.atom_dim;
  for (int kv = 0; kv < 2; ++kv) {
    std::vector<float> norm2, inv;
    for (uint32_t g = 0; g < lay.num_groups; ++g) {
      const codecs::internal::AtomSet set(
          dicts[kv]->data.data() + g * group_floats, lay.num_atoms,
          lay.atom_dim);
      norm2.insert(norm2.end(), set.norm2.begin(), set.norm2.end());
      inv.insert(inv.end(), set.inv_norm.begin(), set.inv_norm.end());
    }
    lay.norm2[kv] = data.size();
    data.insert(data.end(), norm2.begin(), norm2.end());
    lay.inv_norm[kv] = data.size();
    data.insert(data.end(), inv.begin(), inv.end());
  }
  lay.groups = data.size();
  for (uint32_t g : lay.group_of_layer) data.push_back(static_cast<float>(g));
  lay.total_floats = data.size();
  return out;
}

absl::StatusOr<uint64_t> SparsePayloadBytes(const kvstore::BlockShape& shape,
                                            const CodecParams& codec_params) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(const codecs::Codec* codec,
                          codecs::FindCodec(codecs::CodecId::kSparse));
  STRATA_RETURN_IF_ERROR(codec->ValidateParams(shape, codec_params));
  STRATA_ASSIGN_OR_RETURN(SparseParams p,
                          SparseParams::FromBytes(codec_params));
  return MakeGeometry(shape, p).total;
}

CodecParams EncodedCodecParams(const SparseEncodeParams& params) {
  auto p = SparseParams::FromBytes(params.codec_params);
  if (!p.ok()) return params.codec_params;
  p->profile_id = params.profile_layout.profile_id;
  return p->ToBytes();
}

uint32_t SparseTileChunks(const SparseEncodeParams& params) {
  auto p = SparseParams::FromBytes(params.codec_params);
  if (!p.ok() || p->chunks_per_head == 0 || !params.shape.Validate().ok()) {
    return 0;
  }
  return TileChunks(params, *p);
}

absl::Status Validate(const SparseEncodeParams& params) {
  return PlanEncode(params, nullptr).status();
}

size_t WorkspaceBytes(const SparseEncodeParams& params) {
  if (!Validate(params).ok()) return 0;
  const uint64_t tile = SparseTileChunks(params);
  return Align256(tile * params.profile_layout.atom_dim * 4) +
         Align256(tile * uint64_t{params.profile_layout.num_atoms} * 4);
}

absl::Status Launch(const SparseEncodeParams& params, void* workspace,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(internal::SparseEncodeArgs a,
                          PlanEncode(params, workspace));
  STRATA_RETURN_IF_ERROR(
      internal::CheckDevicePointer("workspace", workspace, 256));
  const internal::SparseLaunchResult r =
      internal::LaunchSparseEncode(a, stream);
  if (r.cublas != 0) {
    return absl::InternalError(absl::StrCat("cublas: sparse encode: ", r.what,
                                            " returned status ", r.cublas));
  }
  return internal::CudaStatus(r.cuda, "sparse encode");
}

absl::Status Validate(const SparseDecodeParams& params) {
  return PlanDecode(params).status();
}
size_t WorkspaceBytes(const SparseDecodeParams&) { return 0; }
absl::Status Launch(const SparseDecodeParams& params, void*,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(const internal::SparseDecodeArgs a,
                          PlanDecode(params));
  return internal::CudaStatus(internal::LaunchSparseDecode(a, stream),
                              "sparse decode");
}

}  // namespace strata::kernels
