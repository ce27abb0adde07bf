// Host side of the lowrank kernels: profile packing, params checks (the CPU
// codec's own FromBytes/ValidateParams), the payload geometry (as
// codecs/lowrank_codec.cc's LoadHalves) and the launches.
#include "kernels/lowrank_kernels.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "codecs/lowrank_codec.h"
#include "common/status_macros.h"
#include "kernels/internal/host_checks.h"
#include "kernels/internal/launch.h"

namespace strata::kernels {

using BlockShape = kvstore::BlockShape;
using CodecParams = codecs::CodecParams;

namespace {

using codecs::LatentFormat;
using codecs::LowRankParams;

constexpr const char* kMeanTensor[2] = {"pca.k.mean", "pca.v.mean"};
constexpr const char* kBasisTensor[2] = {"pca.k.basis", "pca.v.basis"};
constexpr const char* kStddevTensor[2] = {"pca.k.stddev", "pca.v.stddev"};
constexpr uint32_t kMaxGpuRank = 1024;

uint32_t RecordBytes(LatentFormat f, uint32_t r) {
  switch (f) {
    case LatentFormat::kFloat16:
      return 2 * r;
    case LatentFormat::kInt8:
      return 4 + r;
    case LatentFormat::kInt4:
      return 4 + (r + 1) / 2;
  }
  return 0;
}

absl::StatusOr<internal::LowRankArgs> Plan(const BlockShape& shape,
                                           const CodecParams& bytes,
                                           const LowRankProfileLayout& lay,
                                           const float* profile) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(const codecs::Codec* codec,
                          codecs::FindCodec(codecs::CodecId::kLowRank));
  STRATA_RETURN_IF_ERROR(codec->ValidateParams(shape, bytes));
  STRATA_ASSIGN_OR_RETURN(LowRankParams p, LowRankParams::FromBytes(bytes));
  if (lay.num_layers != shape.num_layers ||
      lay.num_kv_heads != shape.num_kv_heads ||
      lay.head_dim != shape.head_dim || lay.total_floats == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "profile_layout: packed for ", lay.num_layers, " layers x ",
        lay.num_kv_heads, " heads x ", lay.head_dim, ", the block is ",
        shape.num_layers, " x ", shape.num_kv_heads, " x ", shape.head_dim));
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("profile", profile, 4));
  internal::LowRankArgs a;
  a.dtype = static_cast<int>(shape.dtype);
  a.layers = shape.num_layers;
  a.tokens = shape.num_tokens;
  a.heads = shape.num_kv_heads;
  a.dim = shape.head_dim;
  a.format = static_cast<int>(p.format);
  a.whiten = (p.flags & LowRankParams::kFlagWhiten) != 0;
  const uint64_t vectors =
      uint64_t{shape.num_layers} * shape.num_tokens * shape.num_kv_heads;
  for (int kv = 0; kv < 2; ++kv) {
    const uint32_t r = kv == 0 ? p.rank_k : p.rank_v;
    const char* field = kv == 0 ? "rank_k" : "rank_v";
    if (r > lay.r_max[kv]) {
      return absl::FailedPreconditionError(
          absl::StrCat("profile: ", kBasisTensor[kv], " has ", lay.r_max[kv],
                       " components, the params ask for rank ", r));
    }
    if (r > kMaxGpuRank) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", r, " is above the GPU kernels' ",
                       kMaxGpuRank, " (use the CPU codec)"));
    }
    a.rank[kv] = r;
    a.record[kv] = RecordBytes(p.format, r);
    a.r_max[kv] = lay.r_max[kv];
    a.mean[kv] = lay.mean[kv];
    a.basis[kv] = lay.basis[kv];
    a.basis_t[kv] = lay.basis_t[kv];
    a.stddev[kv] = lay.stddev[kv];
  }
  a.offset[0] = 0;
  a.offset[1] = vectors * a.record[0];
  a.profile = profile;
  return a;
}

uint64_t TotalBytes(const internal::LowRankArgs& a) {
  return a.offset[1] + uint64_t{a.layers} * a.tokens * a.heads * a.record[1];
}

absl::Status CheckPayloadBytes(uint64_t got, uint64_t want) {
  if (got != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload_bytes: ", got, " bytes, shape and params need ", want));
  }
  return absl::OkStatus();
}

absl::StatusOr<internal::LowRankArgs> PlanEncode(
    const LowRankEncodeParams& p) {
  STRATA_ASSIGN_OR_RETURN(
      internal::LowRankArgs a,
      Plan(p.shape, p.codec_params, p.profile_layout, p.profile));
  STRATA_ASSIGN_OR_RETURN(LowRankParams lp,
                          LowRankParams::FromBytes(p.codec_params));
  if (lp.profile_id != 0 && lp.profile_id != p.profile_layout.profile_id) {
    return absl::InvalidArgumentError(
        "codec_params: profile_id is not the packed profile's");
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 4));
  STRATA_RETURN_IF_ERROR(CheckPayloadBytes(p.payload_bytes, TotalBytes(a)));
  STRATA_RETURN_IF_ERROR(internal::CheckDisjoint(
      "payload", p.payload, p.payload_bytes, p.kv, p.shape.RawBytes()));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  a.src = p.kv;
  a.dst = p.payload;
  a.error_flags = p.error_flags;
  return a;
}

absl::StatusOr<internal::LowRankArgs> PlanDecode(
    const LowRankDecodeParams& p) {
  STRATA_ASSIGN_OR_RETURN(
      internal::LowRankArgs a,
      Plan(p.shape, p.codec_params, p.profile_layout, p.profile));
  STRATA_ASSIGN_OR_RETURN(LowRankParams lp,
                          LowRankParams::FromBytes(p.codec_params));
  if (lp.profile_id != p.profile_layout.profile_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: the block was encoded with profile ", lp.profile_id,
        ", the packed profile is ", p.profile_layout.profile_id));
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 4));
  STRATA_RETURN_IF_ERROR(CheckPayloadBytes(p.payload_bytes, TotalBytes(a)));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(internal::CheckDisjoint(
      "kv", p.kv, p.shape.RawBytes(), p.payload, p.payload_bytes));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  a.src = p.payload;
  a.dst = p.kv;
  a.error_flags = p.error_flags;
  return a;
}

}  // namespace

absl::StatusOr<PackedLowRankProfile> PackLowRankProfile(
    const codecs::CodecProfile& profile, const kvstore::BlockShape& shape) {
  const uint32_t L = shape.num_layers, H = shape.num_kv_heads,
                 d = shape.head_dim;
  PackedLowRankProfile out;
  LowRankProfileLayout& lay = out.layout;
  lay.num_layers = L;
  lay.num_kv_heads = H;
  lay.head_dim = d;
  lay.profile_id = profile.id();
  std::vector<float>& data = out.data;
  for (int kv = 0; kv < 2; ++kv) {
    STRATA_ASSIGN_OR_RETURN(const codecs::ProfileTensor* mean,
                            profile.Require(kMeanTensor[kv], {L, H, d}));
    const codecs::ProfileTensor* basis = profile.Find(kBasisTensor[kv]);
    if (basis == nullptr || basis->dims.size() != 4 || basis->dims[0] != L ||
        basis->dims[1] != H || basis->dims[2] != d || basis->dims[3] == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "profile: no tensor \"", kBasisTensor[kv], "\" of dims [", L, ", ",
          H, ", ", d, ", r_max]"));
    }
    const uint32_t r_max = basis->dims[3];
    STRATA_ASSIGN_OR_RETURN(const codecs::ProfileTensor* stddev,
                            profile.Require(kStddevTensor[kv], {L, H, r_max}));
    for (const auto* t : {mean, basis, stddev}) {
      for (float v : t->data) {
        if (!std::isfinite(v)) {
          return absl::FailedPreconditionError(absl::StrCat(
              "profile: PCA tensors of ", kv == 0 ? "K" : "V",
              " are not finite"));
        }
      }
    }
    lay.r_max[kv] = r_max;
    lay.mean[kv] = data.size();
    data.insert(data.end(), mean->data.begin(), mean->data.end());
    lay.basis[kv] = data.size();
    data.insert(data.end(), basis->data.begin(), basis->data.end());
    lay.basis_t[kv] = data.size();
    const size_t per_head = size_t{d} * r_max;
    for (size_t lh = 0; lh < size_t{L} * H; ++lh) {
      const float* P = basis->data.data() + lh * per_head;
      for (uint32_t j = 0; j < r_max; ++j) {
        for (uint32_t e = 0; e < d; ++e) data.push_back(P[size_t{e} * r_max + j]);
      }
    }
    lay.stddev[kv] = data.size();
    data.insert(data.end(), stddev->data.begin(), stddev->data.end());
  }
  lay.total_floats = data.size();
  return out;
}

absl::StatusOr<uint64_t> LowRankPayloadBytes(const kvstore::BlockShape& shape,
                                             const CodecParams& codec_params) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(const codecs::Codec* codec,
                          codecs::FindCodec(codecs::CodecId::kLowRank));
  STRATA_RETURN_IF_ERROR(codec->ValidateParams(shape, codec_params));
  STRATA_ASSIGN_OR_RETURN(LowRankParams p,
                          LowRankParams::FromBytes(codec_params));
  const uint64_t vectors =
      uint64_t{shape.num_layers} * shape.num_tokens * shape.num_kv_heads;
  return vectors * (RecordBytes(p.format, p.rank_k) +
                    RecordBytes(p.format, p.rank_v));
}

CodecParams EncodedCodecParams(const LowRankEncodeParams& params) {
  auto p = LowRankParams::FromBytes(params.codec_params);
  if (!p.ok()) return params.codec_params;
  p->profile_id = params.profile_layout.profile_id;
  return p->ToBytes();
}

absl::Status Validate(const LowRankEncodeParams& params) {
  return PlanEncode(params).status();
}
size_t WorkspaceBytes(const LowRankEncodeParams&) { return 0; }
absl::Status Launch(const LowRankEncodeParams& params, void*,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(const internal::LowRankArgs a, PlanEncode(params));
  return internal::CudaStatus(internal::LaunchLowRankEncode(a, stream),
                              "lowrank encode");
}

absl::Status Validate(const LowRankDecodeParams& params) {
  return PlanDecode(params).status();
}
size_t WorkspaceBytes(const LowRankDecodeParams&) { return 0; }
absl::Status Launch(const LowRankDecodeParams& params, void*,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(const internal::LowRankArgs a, PlanDecode(params));
  return internal::CudaStatus(internal::LaunchLowRankDecode(a, stream),
                              "lowrank decode");
}

}  // namespace strata::kernels
