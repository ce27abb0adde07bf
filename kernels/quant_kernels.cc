// Host side of the quant kernels: params checks, the payload layout (the
// same arithmetic as codecs/quant_codec.cc's MakeLayout) and the launches.
#include "kernels/quant_kernels.h"

#include "absl/strings/str_cat.h"
#include "codecs/bitpack.h"
#include "codecs/quant_codec.h"
#include "common/status_macros.h"
#include "kernels/internal/host_checks.h"
#include "kernels/internal/launch.h"
#include "kernels/internal/quant_layout.h"

namespace strata::kernels {
namespace internal {

QuantArgs MakeQuantArgs(const BlockShape& shape, const codecs::QuantParams& p) {
  QuantArgs a;
  a.dtype = static_cast<int>(shape.dtype);
  a.dsize = static_cast<uint32_t>(kvstore::DTypeSize(shape.dtype));
  a.layers = shape.num_layers;
  a.tokens = shape.num_tokens;
  a.n_sink = p.n_sink;
  a.hd = shape.num_kv_heads * shape.head_dim;
  const uint64_t tq = shape.num_tokens - p.n_sink;
  uint64_t offset = 0;
  for (int kv = 0; kv < 2; ++kv) {
    QuantSideArgs& s = a.side[kv];
    s.bits = kv == 0 ? p.k_bits : p.v_bits;
    s.group = kv == 0 ? p.k_group : p.v_group;
    s.per_token = kv == 1 || p.keys_per_token;
    s.sink_bytes = uint64_t{p.n_sink} * a.hd * a.dsize;
    s.num_groups =
        s.per_token ? tq * a.hd / s.group : (tq + s.group - 1) / s.group * a.hd;
    const uint64_t index_space = tq * shape.head_dim;
    const uint64_t outliers = index_space * p.outlier_bp / 10000;
    const uint64_t list_bytes =
        codecs::PackedBytes(outliers, codecs::IndexWidth(index_space)) +
        outliers * a.dsize;
    s.slab_bytes = s.sink_bytes + 4 * s.num_groups +
                   codecs::PackedBytes(tq * a.hd, s.bits) +
                   uint64_t{shape.num_kv_heads} * list_bytes;
    s.side_offset = offset;
    offset += s.slab_bytes * shape.num_layers;
  }
  return a;
}

uint64_t QuantTotalBytes(const QuantArgs& a) {
  return a.side[1].side_offset + a.side[1].slab_bytes * a.layers;
}

}  // namespace internal

namespace {

using codecs::QuantParams;
using internal::MakeQuantArgs;
using internal::QuantTotalBytes;

// Shape and params checks shared by encode and decode; the GPU's own limits.
absl::StatusOr<internal::QuantArgs> CheckQuant(const BlockShape& shape,
                                               const CodecParams& bytes) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(QuantParams p, QuantParams::FromBytes(bytes, shape));
  if (p.outlier_bp != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "outlier_bp: ", p.outlier_bp,
        " basis points: outliers are not supported on the GPU (encode and "
        "decode this block with the CPU codec)"));
  }
  // head_dim is a multiple of v_group (>= 32), so hd is a multiple of 32 and
  // every slab starts 4-byte aligned (docs/kernels.md). Re-checked here.
  const internal::QuantArgs a = MakeQuantArgs(shape, p);
  if (a.hd % 32 != 0 || a.side[0].slab_bytes % 4 != 0 ||
      a.side[1].slab_bytes % 4 != 0) {
    return absl::InternalError("quant: GPU layout invariant violated");
  }
  return a;
}

absl::Status CheckPayloadBytes(uint64_t got, uint64_t want) {
  if (got != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload_bytes: ", got, " bytes, shape and params need ", want));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint64_t> QuantPayloadBytes(const BlockShape& shape,
                                           const CodecParams& codec_params) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_ASSIGN_OR_RETURN(QuantParams p,
                          QuantParams::FromBytes(codec_params, shape));
  return QuantTotalBytes(MakeQuantArgs(shape, p));
}

namespace {

absl::StatusOr<internal::QuantArgs> PlanEncode(const QuantEncodeParams& p) {
  STRATA_ASSIGN_OR_RETURN(internal::QuantArgs a,
                          CheckQuant(p.shape, p.codec_params));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 4));
  STRATA_RETURN_IF_ERROR(
      CheckPayloadBytes(p.payload_bytes, QuantTotalBytes(a)));
  STRATA_RETURN_IF_ERROR(internal::CheckDisjoint(
      "payload", p.payload, p.payload_bytes, p.kv, p.shape.RawBytes()));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  a.src = p.kv;
  a.dst = p.payload;
  a.error_flags = p.error_flags;
  return a;
}

absl::StatusOr<internal::QuantArgs> PlanDecode(const QuantDecodeParams& p) {
  STRATA_ASSIGN_OR_RETURN(internal::QuantArgs a,
                          CheckQuant(p.shape, p.codec_params));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("payload", p.payload, 4));
  STRATA_RETURN_IF_ERROR(
      CheckPayloadBytes(p.payload_bytes, QuantTotalBytes(a)));
  const uint32_t L = p.shape.num_layers;
  if (p.layer_count == 0 ? p.layer_begin != 0
                         : (p.layer_begin >= L ||
                            p.layer_count > L - p.layer_begin)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer_begin: layers [", p.layer_begin, ", +", p.layer_count,
        ") are not a range of the block's ", L, " layers"));
  }
  const uint32_t count = p.layer_count == 0 ? L : p.layer_count;
  const uint64_t kv_bytes =
      p.kv_whole_block ? p.shape.RawBytes() : p.shape.RawBytes() / L * count;
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("kv", p.kv, 16));
  STRATA_RETURN_IF_ERROR(
      internal::CheckDisjoint("kv", p.kv, kv_bytes, p.payload, p.payload_bytes));
  // The selected layers: their slabs, written as a [2][count] raw block.
  for (internal::QuantSideArgs& s : a.side) {
    s.side_offset += uint64_t{p.layer_begin} * s.slab_bytes;
  }
  a.layers = count;
  if (p.kv_whole_block) {
    // The range's layers at their place in the whole block.
    a.raw_layers = L;
    a.dst = static_cast<uint8_t*>(p.kv) +
            uint64_t{p.layer_begin} * p.shape.num_tokens * a.hd * a.dsize;
  }
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", p.error_flags, 4));
  a.src = p.payload;
  if (!p.kv_whole_block) a.dst = p.kv;
  a.error_flags = p.error_flags;
  return a;
}

}  // namespace

absl::Status Validate(const QuantEncodeParams& params) {
  return PlanEncode(params).status();
}

size_t WorkspaceBytes(const QuantEncodeParams&) { return 0; }

absl::Status Launch(const QuantEncodeParams& params, void* /*workspace*/,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(const internal::QuantArgs a, PlanEncode(params));
  return internal::CudaStatus(internal::LaunchQuantEncode(a, stream),
                              "quant encode");
}

absl::Status Validate(const QuantDecodeParams& params) {
  return PlanDecode(params).status();
}

size_t WorkspaceBytes(const QuantDecodeParams&) { return 0; }

absl::Status Launch(const QuantDecodeParams& params, void* /*workspace*/,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(const internal::QuantArgs a, PlanDecode(params));
  return internal::CudaStatus(internal::LaunchQuantDecode(a, stream),
                              "quant decode");
}

}  // namespace strata::kernels
