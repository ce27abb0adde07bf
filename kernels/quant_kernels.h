// The quant codec (KIVI, CodecId::kQuant) on the GPU: encode a raw KV block
// that is in device memory into the quant payload, and decode a payload back
// into a raw block, producing exactly the bytes of the CPU reference codec
// (codecs/quant_codec.h; layout in docs/codecs/quant_aqua.md).
//
// Host API in the CUB/CUTLASS style (docs/kernels.md): for each op a params
// struct; Validate(params) checks everything the host can see and returns
// INVALID_ARGUMENT naming the field; WorkspaceBytes(params) is the scratch the
// caller must provide (0 for both ops); Launch(params, workspace, stream)
// validates, then enqueues the kernels on `stream` and returns. Launch never
// allocates and never synchronises; every pointer in the params is a device
// pointer owned by the caller, which keeps it valid until the stream work is
// done. Data-dependent errors are reported through `error_flags`
// (kernels/kernel_errors.h).
//
// GPU scope: every bit width (2, 3, 4, 8), group size (32, 64, 128), both key
// modes (per channel, keys_per_token), sink tokens, a short last token group,
// and every block dtype (fp16, bf16, fp8 e4m3, fp32). Not on the GPU:
// outliers (outlier_bp > 0 is INVALID_ARGUMENT naming "outlier_bp": encode or
// decode such blocks with the CPU codec) and token selections (decode writes
// every token of a layer range).
//
// Thread safety: pure functions; concurrent launches on different streams
// are independent.
#ifndef STRATA_KERNELS_QUANT_KERNELS_H_
#define STRATA_KERNELS_QUANT_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "codecs/codec.h"
#include "kvstore/block_format.h"

namespace strata::kernels {

using kvstore::BlockShape;
using kvstore::DType;
using CodecParams = codecs::CodecParams;

// Exact payload size of a quant block (the same number the CPU codec
// produces), or INVALID_ARGUMENT naming the field for a bad shape or params.
absl::StatusOr<uint64_t> QuantPayloadBytes(const BlockShape& shape,
                                           const CodecParams& codec_params);

struct QuantEncodeParams {
  // The block: dtype and dimensions of `kv` (BlockShape::Validate rules).
  BlockShape shape;
  // codecs::QuantParams::ToBytes(); validated as the CPU codec does
  // (QuantParams::FromBytes with the shape), plus outlier_bp == 0.
  CodecParams codec_params{};
  // Input: the raw block [2][layers][tokens][kv_heads][head_dim] in
  // shape.dtype (shape.RawBytes() bytes), 16-byte aligned. Every value must
  // be finite and every quantized |x| <= 65504 (else kErrorNonFiniteInput /
  // kErrorOutOfRange).
  const void* kv = nullptr;
  // Output: the payload, exactly QuantPayloadBytes(shape, codec_params)
  // bytes (`payload_bytes` must say so), 4-byte aligned. Every byte is
  // written.
  void* payload = nullptr;
  uint64_t payload_bytes = 0;
  // Optional device word for data errors (kernels/kernel_errors.h).
  uint32_t* error_flags = nullptr;
};

struct QuantDecodeParams {
  BlockShape shape;            // From the block header.
  CodecParams codec_params{};  // From the block header; outlier_bp == 0.
  // Input: the payload, payload_bytes == QuantPayloadBytes(...), 4-byte
  // aligned (a block's payload starts 96 bytes into the block).
  const void* payload = nullptr;
  uint64_t payload_bytes = 0;
  // Output: the raw block in shape.dtype, 16-byte aligned; every value is
  // codecs' decode rounded to the dtype (KvTensorToRaw of the CPU decode).
  // With a layer range (below) it holds only the selected layers:
  // [2][layer_count][tokens][kv_heads][head_dim], as the CPU decode of a
  // DecodeSelection layer range.
  void* kv = nullptr;
  // Partial decode of layers [layer_begin, layer_begin + layer_count) (the
  // HBM tier decodes layer by layer as slabs arrive); layer_count 0 decodes
  // every layer (layer_begin must then be 0). Only the selected layers'
  // slabs of `payload` are read.
  uint32_t layer_begin = 0;
  uint32_t layer_count = 0;
  // With a layer range: true when `kv` is the whole raw block [2][layers]
  // [tokens][kv_heads][head_dim] (shape.RawBytes() bytes), of which only
  // the range's layers are written.
  bool kv_whole_block = false;
  // Optional: kErrorBadGroupRecord / kErrorBadSink for a corrupt payload.
  uint32_t* error_flags = nullptr;
};

[[nodiscard]] absl::Status Validate(const QuantEncodeParams& params);
[[nodiscard]] size_t WorkspaceBytes(const QuantEncodeParams& params);
// Enqueues the encode on `stream`. INVALID_ARGUMENT (nothing launched) for
// bad params; FAILED_PRECONDITION naming "cuda" when there is no usable
// device, INTERNAL naming "cuda" when a launch fails otherwise.
[[nodiscard]] absl::Status Launch(const QuantEncodeParams& params,
                                  void* workspace, cudaStream_t stream);

[[nodiscard]] absl::Status Validate(const QuantDecodeParams& params);
[[nodiscard]] size_t WorkspaceBytes(const QuantDecodeParams& params);
[[nodiscard]] absl::Status Launch(const QuantDecodeParams& params,
                                  void* workspace, cudaStream_t stream);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_QUANT_KERNELS_H_
