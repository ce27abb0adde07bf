// The aqua codec (AQUA-KV, CodecId::kAqua) on the GPU: encode a raw KV block
// in device memory into the aqua payload and decode it back, producing
// exactly the bytes of the CPU reference (codecs/aqua_codec.h; layout in
// docs/codecs/quant_aqua.md).
//
// Byte equality needs the CPU's reduction order. Each prediction output is
// the CPU's Predict: eight lane sums (lane i adds the rounded products
// W[o][k]*x[k] for k ≡ i mod 8 in increasing k), combined as
// ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)), then + bias, in fp32 without FMA.
// The kernels keep that order (one thread owns the 8 lane sums of an output;
// no cuBLAS, no tensor cores), and the residual groups are the quant codec's
// min-max groups with the CPU's scan order. No tolerance: the GPU bytes are
// the CPU bytes (AquaGpuTest.*).
//
// The layers are a chain (layer l's keys are predicted from layer l-1's
// reconstruction, its values from its own reconstructed keys and layer
// l-1's values), so a launch enqueues, per layer and per K/V, a prediction
// kernel and a quantize (encode) or reconstruct (decode) kernel, 4 to 6
// kernels per layer. The reconstructions live in the caller's workspace, so
// blocks in flight at the same time (other streams) need their own.
//
// The profile goes to the device once, packed by PackAquaProfile.
//
// Host API in the CUB/CUTLASS style (docs/kernels.md): Validate /
// WorkspaceBytes / Launch on the caller's stream; no allocation, no
// synchronisation; every pointer is a device pointer owned by the caller,
// valid until the stream work is done. GPU scope: every dtype, bit width,
// group size, both key modes, sink tokens, and a layer range on decode
// (layers [0, end) are reconstructed internally, as the CPU does). Not on
// the GPU: token selections.
//
// Thread safety: pure functions; launches on different streams with
// different workspaces are independent.
#ifndef STRATA_KERNELS_AQUA_KERNELS_H_
#define STRATA_KERNELS_AQUA_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "kvstore/block_format.h"

namespace strata::kernels {

// The packed predictors: for l = 1 .. num_layers-1, at float
// (l-1) * layer_floats: A_l [HD][HD], a_l [HD], B_l [HD][2HD], b_l [HD]
// (HD = num_kv_heads * head_dim; the profile tensors as they are).
struct AquaProfileLayout {
  uint32_t num_layers = 0, num_kv_heads = 0, head_dim = 0;
  uint64_t layer_floats = 0;
  uint64_t total_floats = 0;
  uint64_t profile_id = 0;  // CodecProfile::id().
};

struct PackedAquaProfile {
  AquaProfileLayout layout;
  std::vector<float> data;  // layout.total_floats values; upload as is.
};

// Packs the predictors of `profile` (FitAquaProfile) for blocks of `shape`'s
// layers, heads and head_dim. FAILED_PRECONDITION naming "profile" when
// aqua.meta does not match the shape or a tensor is missing or of other dims
// (as the CPU codec).
absl::StatusOr<PackedAquaProfile> PackAquaProfile(
    const codecs::CodecProfile& profile, const kvstore::BlockShape& shape);

// Exact payload size of an aqua block (the CPU codec's), or INVALID_ARGUMENT
// naming the field for a bad shape or params.
absl::StatusOr<uint64_t> AquaPayloadBytes(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params);

struct AquaEncodeParams {
  kvstore::BlockShape shape;
  // codecs::AquaParams::ToBytes(); its profile_id is ignored (the CPU Encode
  // overwrites it too). The block records EncodedCodecParams(...).
  codecs::CodecParams codec_params{};
  AquaProfileLayout profile_layout;
  const float* profile = nullptr;  // Device copy of the packed data, 16-aligned.
  // Input: the raw block [2][layers][tokens][kv_heads][head_dim] in
  // shape.dtype, 16-byte aligned.
  const void* kv = nullptr;
  // Output: AquaPayloadBytes bytes (payload_bytes must say so), 4-byte
  // aligned; every byte is written.
  void* payload = nullptr;
  uint64_t payload_bytes = 0;
  // Optional device word (kernels/kernel_errors.h): kErrorNonFiniteInput /
  // kErrorOutOfRange for a non-finite input or a residual above 65504 (the
  // CPU's "kv" INVALID_ARGUMENT); kErrorBadGroupRecord for a reconstruction
  // that is not finite (the CPU's "payload" DATA_LOSS).
  uint32_t* error_flags = nullptr;
};

struct AquaDecodeParams {
  kvstore::BlockShape shape;
  // From the block; its profile_id must be the packed profile's.
  codecs::CodecParams codec_params{};
  AquaProfileLayout profile_layout;
  const float* profile = nullptr;
  const void* payload = nullptr;  // payload_bytes bytes, 4-byte aligned.
  uint64_t payload_bytes = 0;
  // Output, 16-byte aligned: the raw block of the selected layers,
  // [2][count][tokens][kv_heads][head_dim] (KvTensorToRaw of the CPU decode
  // of that layer range).
  void* kv = nullptr;
  // Layers [layer_begin, layer_begin + layer_count); layer_count 0 decodes
  // every layer (layer_begin must then be 0). Only the slabs of layers
  // [0, layer_begin + layer_count) are read.
  uint32_t layer_begin = 0;
  uint32_t layer_count = 0;
  // Optional: kErrorBadGroupRecord for a bad group record or a non-finite
  // reconstruction, kErrorBadSink for a non-finite sink (the CPU's
  // "payload" DATA_LOSS).
  uint32_t* error_flags = nullptr;
};

// The params a block records after encode: codec_params with profile_id set
// to the packed profile's (what the CPU Encode returns).
codecs::CodecParams EncodedCodecParams(const AquaEncodeParams& params);

[[nodiscard]] absl::Status Validate(const AquaEncodeParams& params);
// Scratch for the reconstructions: about 21 * (tokens - n_sink) * HD bytes,
// 0 when every token is a sink. Depends only on shape and codec_params (0
// when they are invalid).
[[nodiscard]] size_t WorkspaceBytes(const AquaEncodeParams& params);
// Validates (plus `workspace`: 256-byte aligned when WorkspaceBytes > 0),
// then enqueues the encode on `stream`. INVALID_ARGUMENT (nothing launched)
// for bad params; FAILED_PRECONDITION naming "profile" for a packed profile
// of other dims; FAILED_PRECONDITION naming "cuda" when there is no usable
// device, INTERNAL naming "cuda" when a launch fails otherwise.
[[nodiscard]] absl::Status Launch(const AquaEncodeParams& params,
                                  void* workspace, cudaStream_t stream);

[[nodiscard]] absl::Status Validate(const AquaDecodeParams& params);
// About 20 * (tokens - n_sink) * HD bytes.
[[nodiscard]] size_t WorkspaceBytes(const AquaDecodeParams& params);
[[nodiscard]] absl::Status Launch(const AquaDecodeParams& params,
                                  void* workspace, cudaStream_t stream);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_AQUA_KERNELS_H_
