// Host side of the tokensparse kernels: the CPU codec's params checks
// (TokenSparseParams::FromBytes, Codec::ValidateParams) and geometry (as
// codecs/tokensparse_codec.cc's ResolveStride and MakeGeometry), the launch.
#include "kernels/tokensparse_kernels.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "codecs/tokensparse_codec.h"
#include "common/status_macros.h"
#include "kernels/internal/host_checks.h"
#include "kernels/internal/launch.h"

namespace strata::kernels {
namespace {

using codecs::TokenSparseParams;

struct Geometry {
  TokenSparseParams params;
  internal::TokenSparseArgs args;
  uint64_t payload_bytes = 0;
};

absl::StatusOr<Geometry> MakeGeometry(const kvstore::BlockShape& shape,
                                      const codecs::CodecParams& bytes) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(const codecs::Codec* codec,
                          codecs::FindCodec(codecs::CodecId::kTokenSparse));
  STRATA_RETURN_IF_ERROR(codec->ValidateParams(shape, bytes));
  STRATA_ASSIGN_OR_RETURN(TokenSparseParams p,
                          TokenSparseParams::FromBytes(bytes));
  if (p.summary) {
    return absl::InvalidArgumentError(
        "summary: the LESS summary is not built on the GPU (encode this "
        "block with the CPU codec)");
  }
  Geometry g;
  internal::TokenSparseArgs& a = g.args;
  const uint32_t t = shape.num_tokens;
  a.dtype = static_cast<int>(shape.dtype);
  a.layers = shape.num_layers;
  a.tokens = t;
  a.heads = shape.num_kv_heads;
  a.dim = shape.head_dim;
  a.sinks = std::min<uint32_t>(p.n_sink, t);
  a.window = std::min<uint32_t>(p.window, t - a.sinks);
  a.mid = t - a.sinks - a.window;
  uint32_t stride = p.stride;
  if (stride == 0) {  // ValidateParams accepted it, so these cannot fail.
    const uint32_t bp =
        static_cast<uint32_t>(std::lround(p.budget_fraction * 10000));
    if (a.mid == 0) {
      stride = 1;
    } else {
      const uint64_t target = (uint64_t{bp} * t + 5000) / 10000;
      const uint64_t slots = target - a.sinks - a.window;
      stride = static_cast<uint32_t>((a.mid + slots - 1) / slots);
    }
  }
  a.stride = stride;
  a.segments = (a.mid + stride - 1) / stride;
  a.kept = a.sinks + a.segments + a.window;
  a.high_norm = p.proxy_high_norm;
  a.layer_bytes = uint64_t{2} * a.heads * a.kept +
                  2 * (uint64_t{2} * a.heads * a.kept * a.dim);
  g.payload_bytes = a.layer_bytes * a.layers;
  p.stride = static_cast<uint16_t>(stride);
  g.params = p;
  return g;
}

absl::StatusOr<internal::TokenSparseArgs> PlanEncode(
    const TokenSparseEncodeParams& p) {
  STRATA_ASSIGN_OR_RETURN(Geometry g, MakeGeometry(p.shape, p.codec_params));
  internal::TokenSparseArgs a = g.args;
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 2));
  if (p.payload_bytes != g.payload_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload_bytes: ", p.payload_bytes,
                     " bytes, shape and params need ", g.payload_bytes));
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDisjoint(
      "payload", p.payload, p.payload_bytes, p.kv, p.shape.RawBytes()));
  if (p.scores != nullptr) {
    const uint64_t per_token = uint64_t{a.layers} * a.tokens;
    if (p.num_scores != per_token && p.num_scores != per_token * a.heads) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scores: ", p.num_scores, " values, need ", per_token * a.heads,
          " ([layers][tokens][kv_heads]) or ", per_token,
          " ([layers][tokens])"));
    }
    STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("scores", p.scores, 4));
    a.scores = p.scores;
    a.per_head_scores = p.num_scores == per_token * a.heads;
  } else if (p.num_scores != 0) {
    return absl::InvalidArgumentError("scores: null with num_scores > 0");
  }
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  a.kv = p.kv;
  a.payload = static_cast<uint8_t*>(p.payload);
  a.error_flags = p.error_flags;
  return a;
}

}  // namespace

absl::StatusOr<codecs::CodecParams> TokenSparseEncodedParams(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params) {
  STRATA_ASSIGN_OR_RETURN(Geometry g, MakeGeometry(shape, codec_params));
  return g.params.ToBytes();
}

absl::StatusOr<uint64_t> TokenSparsePayloadBytes(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params) {
  STRATA_ASSIGN_OR_RETURN(Geometry g, MakeGeometry(shape, codec_params));
  return g.payload_bytes;
}

absl::Status Validate(const TokenSparseEncodeParams& params) {
  return PlanEncode(params).status();
}
size_t WorkspaceBytes(const TokenSparseEncodeParams&) { return 0; }
absl::Status Launch(const TokenSparseEncodeParams& params, void*,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(const internal::TokenSparseArgs a,
                          PlanEncode(params));
  return internal::CudaStatus(internal::LaunchTokenSparseEncode(a, stream),
                              "tokensparse encode");
}

}  // namespace strata::kernels
