// The lowrank codec (PCA projection, CodecId::kLowRank) on the GPU: encode a
// raw KV block in device memory into the lowrank payload and decode it back,
// producing exactly the bytes of the CPU reference (codecs/lowrank_codec.h;
// layout in docs/codecs/sparse_lowrank.md).
//
// Byte equality needs the CPU's reduction order: every latent is
//   z_j = (((0 + c_0 P_0j) + c_1 P_1j) + ...) + c_{d-1} P_{d-1,j},
// c_e = x_e - mu_e, in fp32 with separately rounded products and sums (no
// FMA), and every decoded element mu_e + (((0 + z_0 P_e0) + z_1 P_e1) + ...).
// cuBLAS (tensor cores, FMA, split-K) reduces in another order, so the
// kernels keep this order themselves: one thread owns one latent of four
// tokens (encode) or one channel of four tokens (decode) and walks the
// dimension sequentially. The projections are 2*d*r flops per vector, well
// under the fp32 rate; docs/kernels.md gives the roofline.
//
// The profile goes to the device once, packed by PackLowRankProfile: the
// PCA mean, basis (as the CPU stores it, [d][r_max], for encode) and its
// transpose ([r_max][d], for decode: coalesced reads), and the standard
// deviations, for K and V, in one float array.
//
// Host API in the CUB/CUTLASS style (docs/kernels.md): Validate /
// WorkspaceBytes (0) / Launch on the caller's stream; no allocation, no
// synchronisation; every pointer is a device pointer owned by the caller.
// GPU scope: every dtype, format (fp16, int8, int4), whiten, ranks up to
// 1024; whole blocks (no token or layer selections).
//
// Thread safety: pure functions.
#ifndef STRATA_KERNELS_LOWRANK_KERNELS_H_
#define STRATA_KERNELS_LOWRANK_KERNELS_H_

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

// Where each PCA tensor sits in the packed profile (float offsets).
struct LowRankProfileLayout {
  uint32_t num_layers = 0, num_kv_heads = 0, head_dim = 0;
  uint32_t r_max[2] = {0, 0};  // K, V.
  uint64_t mean[2] = {0, 0};     // [L][H][d]
  uint64_t basis[2] = {0, 0};    // [L][H][d][r_max]
  uint64_t basis_t[2] = {0, 0};  // [L][H][r_max][d]
  uint64_t stddev[2] = {0, 0};   // [L][H][r_max]
  uint64_t total_floats = 0;
  uint64_t profile_id = 0;  // CodecProfile::id(), checked against params.
};

struct PackedLowRankProfile {
  LowRankProfileLayout layout;
  std::vector<float> data;  // layout.total_floats values; upload as is.
};

// Packs the PCA tensors of `profile` (FitLowRankProfile) for blocks of
// `shape`'s layers, heads and head_dim. FAILED_PRECONDITION naming "profile"
// when a tensor is missing, of other dims, or not finite (as the CPU codec).
absl::StatusOr<PackedLowRankProfile> PackLowRankProfile(
    const codecs::CodecProfile& profile, const kvstore::BlockShape& shape);

// Exact payload size of a lowrank block, or INVALID_ARGUMENT naming the field.
absl::StatusOr<uint64_t> LowRankPayloadBytes(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params);

struct LowRankEncodeParams {
  kvstore::BlockShape shape;
  // codecs::LowRankParams::ToBytes(); profile_id 0 or the profile's. The
  // block records EncodedCodecParams(...) (profile_id set), as the CPU
  // Encode returns.
  codecs::CodecParams codec_params{};
  LowRankProfileLayout profile_layout;
  const float* profile = nullptr;  // Device copy of the packed data, 4-aligned.
  const void* kv = nullptr;        // Raw block, 16-byte aligned.
  void* payload = nullptr;         // LowRankPayloadBytes bytes, 4-aligned.
  uint64_t payload_bytes = 0;
  // Optional: kErrorNonFiniteInput for a non-finite input value (the CPU
  // codec's "kv" INVALID_ARGUMENT).
  uint32_t* error_flags = nullptr;
};

struct LowRankDecodeParams {
  kvstore::BlockShape shape;
  codecs::CodecParams codec_params{};  // From the block; profile_id must match.
  LowRankProfileLayout profile_layout;
  const float* profile = nullptr;
  const void* payload = nullptr;  // 4-byte aligned.
  uint64_t payload_bytes = 0;
  void* kv = nullptr;  // Raw block out (KvTensorToRaw of the CPU decode).
  // Optional: kErrorBadGroupRecord for an inconsistent record (the CPU
  // codec's "payload" DATA_LOSS).
  uint32_t* error_flags = nullptr;
};

// The params a block records after encode: codec_params with profile_id set.
codecs::CodecParams EncodedCodecParams(const LowRankEncodeParams& params);

[[nodiscard]] absl::Status Validate(const LowRankEncodeParams& params);
[[nodiscard]] size_t WorkspaceBytes(const LowRankEncodeParams& params);
[[nodiscard]] absl::Status Launch(const LowRankEncodeParams& params,
                                  void* workspace, cudaStream_t stream);

[[nodiscard]] absl::Status Validate(const LowRankDecodeParams& params);
[[nodiscard]] size_t WorkspaceBytes(const LowRankDecodeParams& params);
[[nodiscard]] absl::Status Launch(const LowRankDecodeParams& params,
                                  void* workspace, cudaStream_t stream);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_LOWRANK_KERNELS_H_
