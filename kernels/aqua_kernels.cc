// Host side of the aqua kernels: profile packing, params checks (the CPU
// codec's AquaParams::FromBytes with the shape), the payload layout (as
// codecs/aqua_codec.cc's MakeLayout), the workspace split and the launches.
#include "kernels/aqua_kernels.h"

#include "absl/strings/str_cat.h"
#include "codecs/aqua_codec.h"
#include "codecs/bitpack.h"
#include "common/status_macros.h"
#include "kernels/internal/aqua_layout.h"
#include "kernels/internal/host_checks.h"

namespace strata::kernels {
namespace internal {

AquaArgs MakeAquaArgs(const kvstore::BlockShape& shape,
                      const codecs::AquaParams& p) {
  AquaArgs a;
  a.dtype = static_cast<int>(shape.dtype);
  a.dsize = static_cast<uint32_t>(kvstore::DTypeSize(shape.dtype));
  a.layers = shape.num_layers;
  a.tokens = shape.num_tokens;
  a.n_sink = p.n_sink;
  a.hd = shape.num_kv_heads * shape.head_dim;
  a.sink_bytes = uint64_t{p.n_sink} * a.hd * a.dsize;
  for (int pos = 0; pos < 2; ++pos) {
    for (int kv = 0; kv < 2; ++kv) {
      AquaSlab& s = a.slab[pos][kv];
      s.tq = shape.num_tokens - p.n_sink;
      s.hd = a.hd;
      s.bits = pos == 0 ? p.l0_bits : (kv == 0 ? p.k_bits : p.v_bits);
      s.group = kv == 0 ? p.k_group : p.v_group;
      s.per_token = kv == 1 || (pos == 1 && p.keys_per_token);
      s.num_groups = s.per_token
                         ? uint64_t{s.tq} * s.hd / s.group
                         : (uint64_t{s.tq} + s.group - 1) / s.group * s.hd;
      s.bytes = 4 * s.num_groups +
                codecs::PackedBytes(uint64_t{s.tq} * s.hd, s.bits);
    }
  }
  a.first = 2 * a.sink_bytes + a.slab[0][0].bytes + a.slab[0][1].bytes;
  a.rest = 2 * a.sink_bytes + a.slab[1][0].bytes + a.slab[1][1].bytes;
  a.total = a.first + uint64_t{shape.num_layers - 1} * a.rest;
  a.layer_floats = 3 * uint64_t{a.hd} * a.hd + 2 * uint64_t{a.hd};
  return a;
}

namespace {
constexpr uint64_t kAlign = 256;
uint64_t AlignUp(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
}  // namespace

size_t AquaWorkspaceBytes(const AquaArgs& a, bool encode) {
  const uint64_t n = uint64_t{a.tokens - a.n_sink} * a.hd;
  if (n == 0) return 0;
  return 5 * AlignUp(4 * n) + (encode ? AlignUp(n) : 0);
}

void AquaSplitWorkspace(void* workspace, bool encode, AquaArgs* a) {
  const uint64_t n = uint64_t{a->tokens - a->n_sink} * a->hd;
  if (n == 0) return;
  uint8_t* p = static_cast<uint8_t*>(workspace);
  for (int parity = 0; parity < 2; ++parity) {
    for (int kv = 0; kv < 2; ++kv) {
      a->recon[parity][kv] = reinterpret_cast<float*>(p);
      p += AlignUp(4 * n);
    }
  }
  a->pred = reinterpret_cast<float*>(p);
  p += AlignUp(4 * n);
  a->codes = encode ? p : nullptr;
}

}  // namespace internal

namespace {

using codecs::AquaParams;
using codecs::AquaTensorName;
using internal::AquaArgs;
using kvstore::BlockShape;

absl::Status CheckPayloadBytes(uint64_t got, uint64_t want) {
  if (got != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload_bytes: ", got, " bytes, shape and params need ", want));
  }
  return absl::OkStatus();
}

// The CPU codec's checks, the packed profile against the shape, and the GPU
// layout invariants.
absl::StatusOr<AquaArgs> Plan(const BlockShape& shape,
                              const codecs::CodecParams& bytes,
                              const AquaProfileLayout& lay,
                              const float* profile) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(AquaParams p, AquaParams::FromBytes(bytes, shape));
  AquaArgs a = internal::MakeAquaArgs(shape, p);
  if (lay.num_layers != shape.num_layers ||
      lay.num_kv_heads != shape.num_kv_heads ||
      lay.head_dim != shape.head_dim || lay.layer_floats != a.layer_floats ||
      lay.total_floats != uint64_t{shape.num_layers - 1} * a.layer_floats) {
    return absl::InvalidArgumentError(absl::StrCat(
        "profile_layout: packed for ", lay.num_layers, " layers x ",
        lay.num_kv_heads, " heads x ", lay.head_dim, ", the block is ",
        shape.num_layers, " x ", shape.num_kv_heads, " x ", shape.head_dim));
  }
  if (lay.total_floats > 0) {
    STRATA_RETURN_IF_ERROR(
        internal::CheckDevicePointer("profile", profile, 4));
  }
  // head_dim is a multiple of v_group (>= 32): hd is a multiple of 32 (the
  // prediction tile's k step), and every slab and sink region is a multiple
  // of 4 bytes (record words and code words stay aligned).
  if (a.hd % internal::kAquaTk != 0 || a.sink_bytes % 4 != 0 ||
      a.slab[0][0].bytes % 4 != 0 || a.slab[0][1].bytes % 4 != 0 ||
      a.slab[1][0].bytes % 4 != 0 || a.slab[1][1].bytes % 4 != 0) {
    return absl::InternalError("aqua: GPU layout invariant violated");
  }
  a.profile = profile;
  return a;
}

absl::Status CheckWorkspace(const AquaArgs& a, bool encode, void* workspace) {
  if (internal::AquaWorkspaceBytes(a, encode) == 0) return absl::OkStatus();
  return internal::CheckDevicePointer("workspace", workspace, 256);
}

// Depends only on the shape and params (0 when they are invalid).
size_t WorkspaceFor(const BlockShape& shape, const codecs::CodecParams& bytes,
                    bool encode) {
  if (!shape.Validate().ok()) return 0;
  auto p = AquaParams::FromBytes(bytes, shape);
  if (!p.ok()) return 0;
  return internal::AquaWorkspaceBytes(internal::MakeAquaArgs(shape, *p),
                                      encode);
}

absl::StatusOr<AquaArgs> PlanEncode(const AquaEncodeParams& p) {
  STRATA_ASSIGN_OR_RETURN(
      AquaArgs a, Plan(p.shape, p.codec_params, p.profile_layout, p.profile));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 4));
  STRATA_RETURN_IF_ERROR(CheckPayloadBytes(p.payload_bytes, a.total));
  STRATA_RETURN_IF_ERROR(internal::CheckDisjoint(
      "payload", p.payload, p.payload_bytes, p.kv, p.shape.RawBytes()));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  a.raw_in = p.kv;
  a.payload_out = p.payload;
  a.error_flags = p.error_flags;
  return a;
}

absl::StatusOr<AquaArgs> PlanDecode(const AquaDecodeParams& p) {
  STRATA_ASSIGN_OR_RETURN(
      AquaArgs a, Plan(p.shape, p.codec_params, p.profile_layout, p.profile));
  STRATA_ASSIGN_OR_RETURN(AquaParams ap, AquaParams::FromBytes(p.codec_params));
  if (ap.profile_id != p.profile_layout.profile_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: the block was encoded with profile ", ap.profile_id,
        ", the packed profile is ", p.profile_layout.profile_id));
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 4));
  STRATA_RETURN_IF_ERROR(CheckPayloadBytes(p.payload_bytes, a.total));
  const uint32_t L = p.shape.num_layers;
  if (p.layer_count == 0 ? p.layer_begin != 0
                         : (p.layer_begin >= L ||
                            p.layer_count > L - p.layer_begin)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer_begin: layers [", p.layer_begin, ", +", p.layer_count,
        ") are not a range of the block's ", L, " layers"));
  }
  const uint32_t count = p.layer_count == 0 ? L : p.layer_count;
  const uint64_t kv_bytes = p.shape.RawBytes() / L * count;
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(
      internal::CheckDisjoint("kv", p.kv, kv_bytes, p.payload, p.payload_bytes));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  a.payload_in = p.payload;
  a.raw_out = p.kv;
  a.out_begin = p.layer_begin;
  a.out_count = count;
  a.error_flags = p.error_flags;
  return a;
}

}  // namespace

absl::StatusOr<PackedAquaProfile> PackAquaProfile(
    const codecs::CodecProfile& profile, const kvstore::BlockShape& shape) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(const codecs::ProfileTensor* meta,
                          profile.Require("aqua.meta", {3}));
  if (meta->data[0] != static_cast<float>(shape.num_layers) ||
      meta->data[1] != static_cast<float>(shape.num_kv_heads) ||
      meta->data[2] != static_cast<float>(shape.head_dim)) {
    return absl::FailedPreconditionError(
        absl::StrCat("profile: \"", profile.model_id(), "\" was fitted for ",
                     meta->data[0], " layers x ", meta->data[1], " heads x ",
                     meta->data[2], " dims, the block has ", shape.num_layers,
                     " x ", shape.num_kv_heads, " x ", shape.head_dim));
  }
  const uint32_t hd = shape.num_kv_heads * shape.head_dim;
  PackedAquaProfile out;
  AquaProfileLayout& lay = out.layout;
  lay.num_layers = shape.num_layers;
  lay.num_kv_heads = shape.num_kv_heads;
  lay.head_dim = shape.head_dim;
  lay.layer_floats = 3 * uint64_t{hd} * hd + 2 * uint64_t{hd};
  lay.total_floats = uint64_t{shape.num_layers - 1} * lay.layer_floats;
  lay.profile_id = profile.id();
  out.data.reserve(lay.total_floats);
  for (uint32_t l = 1; l < shape.num_layers; ++l) {
    STRATA_ASSIGN_OR_RETURN(const codecs::ProfileTensor* A,
                            profile.Require(AquaTensorName('A', l), {hd, hd}));
    STRATA_ASSIGN_OR_RETURN(const codecs::ProfileTensor* a,
                            profile.Require(AquaTensorName('a', l), {hd}));
    STRATA_ASSIGN_OR_RETURN(
        const codecs::ProfileTensor* B,
        profile.Require(AquaTensorName('B', l), {hd, 2 * hd}));
    STRATA_ASSIGN_OR_RETURN(const codecs::ProfileTensor* b,
                            profile.Require(AquaTensorName('b', l), {hd}));
    for (const codecs::ProfileTensor* t : {A, a, B, b}) {
      out.data.insert(out.data.end(), t->data.begin(), t->data.end());
    }
  }
  if (out.data.size() != lay.total_floats) {
    return absl::InternalError("aqua: packed profile size mismatch");
  }
  return out;
}

absl::StatusOr<uint64_t> AquaPayloadBytes(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(AquaParams p,
                          AquaParams::FromBytes(codec_params, shape));
  return internal::MakeAquaArgs(shape, p).total;
}

codecs::CodecParams EncodedCodecParams(const AquaEncodeParams& params) {
  auto p = AquaParams::FromBytes(params.codec_params);
  if (!p.ok()) return params.codec_params;
  p->profile_id = params.profile_layout.profile_id;
  return p->ToBytes();
}

absl::Status Validate(const AquaEncodeParams& params) {
  return PlanEncode(params).status();
}

size_t WorkspaceBytes(const AquaEncodeParams& params) {
  return WorkspaceFor(params.shape, params.codec_params, /*encode=*/true);
}

absl::Status Launch(const AquaEncodeParams& params, void* workspace,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(AquaArgs a, PlanEncode(params));
  STRATA_RETURN_IF_ERROR(CheckWorkspace(a, /*encode=*/true, workspace));
  internal::AquaSplitWorkspace(workspace, /*encode=*/true, &a);
  return internal::CudaStatus(internal::LaunchAquaEncode(a, stream),
                              "aqua encode");
}

absl::Status Validate(const AquaDecodeParams& params) {
  return PlanDecode(params).status();
}

size_t WorkspaceBytes(const AquaDecodeParams& params) {
  return WorkspaceFor(params.shape, params.codec_params, /*encode=*/false);
}

absl::Status Launch(const AquaDecodeParams& params, void* workspace,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(AquaArgs a, PlanDecode(params));
  STRATA_RETURN_IF_ERROR(CheckWorkspace(a, /*encode=*/false, workspace));
  internal::AquaSplitWorkspace(workspace, /*encode=*/false, &a);
  return internal::CudaStatus(internal::LaunchAquaDecode(a, stream),
                              "aqua decode");
}

}  // namespace strata::kernels
