// The sparse codec (CSR: dictionary + matching pursuit, CodecId::kSparse) on
// the GPU: encode a raw KV block in device memory into the sparse payload and
// decode it back, producing exactly the bytes of the CPU reference
// (codecs/sparse_codec.h; layout and the matching-pursuit specification in
// docs/codecs/sparse_lowrank.md; the GPU design in docs/kernels.md, "Sparse
// (CSR)").
//
// Encode. Every matching-pursuit iteration needs the correlations of the
// residual with all N atoms. They are computed for a tile of chunks at once
// as one fp32 cuBLAS GEMM (S = D^T R, CUBLAS_COMPUTE_32F_PEDANTIC), which
// reduces in its own order, so S is only a *candidate* score: a warp per
// chunk bounds the GEMM's error (|S - p| <= 2 gamma_C ||r|| ||a_i||, any
// summation order, FMA or not), keeps every atom whose score interval can
// reach the best lower bound, and re-scores those atoms exactly in the CPU's
// order (eight fp32 lane sums, separately rounded products, no FMA). The
// winner, its fp16 coefficient and the residual update are then the CPU's
// arithmetic, so the payload is the CPU's payload byte for byte; no
// tolerance is needed. A chunk whose GEMM scores or residual norm are not
// finite is re-scored exactly over every atom (the CPU's sequential loop).
//
// Decode is a gather-sum (s scaled atoms per chunk) in the CPU's order: no
// GEMM (the codes are sparse), byte-identical.
//
// GPU scope: every dtype, 1..255 atoms per chunk, atoms of up to 512
// channels (d / s_n), dictionaries of up to 65536 atoms. Encode with online
// atoms (online_atoms > 0) is INVALID_ARGUMENT naming "online_atoms" (use
// the CPU codec); decode handles them. Whole blocks (no selections).
//
// Host API in the CUB/CUTLASS style (docs/kernels.md): Validate /
// WorkspaceBytes / Launch on the caller's stream; no allocation, no
// synchronisation; every pointer is a device pointer owned by the caller.
// The cuBLAS handle is the caller's (cublasCreate'd on the current device):
// Launch binds it to `stream` for the GEMMs (cublasSetStream) and sets host
// pointer mode, and restores the previous stream and pointer mode before it
// returns; it must not be used from another thread during Launch. cuBLAS
// runs in the handle's own workspace (allocated by cublasCreate).
//
// Thread safety: pure functions (apart from the handle, above).
#ifndef STRATA_KERNELS_SPARSE_KERNELS_H_
#define STRATA_KERNELS_SPARSE_KERNELS_H_

#include <cublas_v2.h>
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

// Largest atom (chunk) size the GPU kernels take: d / s_n <= 512.
inline constexpr uint32_t kSparseMaxGpuAtomDim = 512;

// Where each dictionary tensor sits in the packed profile (float offsets).
struct SparseProfileLayout {
  uint32_t num_layers = 0, num_kv_heads = 0, head_dim = 0;  // csr.meta
  uint32_t num_groups = 0;  // G
  uint32_t num_atoms = 0;   // N
  uint32_t atom_dim = 0;    // C = d / s_n
  std::vector<uint32_t> group_of_layer;  // [L], host copy (tile planning).
  uint64_t dict[2] = {0, 0};      // [G][N][C] atoms as the profile holds them.
  uint64_t norm2[2] = {0, 0};     // [G][N] dot(a, a) in the CPU's order.
  uint64_t inv_norm[2] = {0, 0};  // [G][N] 1/sqrtf(norm2), 0 for a zero atom.
  uint64_t groups = 0;            // [L] group of each layer, as floats.
  uint64_t total_floats = 0;
  uint64_t profile_id = 0;  // CodecProfile::id(), checked against params.
};

struct PackedSparseProfile {
  SparseProfileLayout layout;
  std::vector<float> data;  // layout.total_floats values; upload as is.
};

// Packs the dictionaries of `profile` (FitSparseProfile) for blocks of
// `shape`, with the atoms' norms computed on the host exactly as the CPU
// codec computes them (codecs::internal::AtomSet). FAILED_PRECONDITION naming
// "profile" for what the CPU codec refuses: another csr.meta, a missing or
// misshapen tensor, a group out of range, non-finite atoms.
absl::StatusOr<PackedSparseProfile> PackSparseProfile(
    const codecs::CodecProfile& profile, const kvstore::BlockShape& shape);

// Exact payload size of a sparse block, or INVALID_ARGUMENT naming the field.
absl::StatusOr<uint64_t> SparsePayloadBytes(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params);

struct SparseEncodeParams {
  kvstore::BlockShape shape;
  // codecs::SparseParams::ToBytes(); profile_id 0 or the profile's. The
  // block records EncodedCodecParams(...) (profile_id set), as the CPU
  // Encode returns.
  codecs::CodecParams codec_params{};
  SparseProfileLayout profile_layout;
  const float* profile = nullptr;  // Device copy of the packed data, 4-aligned.
  const void* kv = nullptr;        // Raw block, 16-byte aligned.
  void* payload = nullptr;         // SparsePayloadBytes bytes, 4-aligned.
  uint64_t payload_bytes = 0;
  cublasHandle_t cublas = nullptr;  // Caller's handle (see above).
  // Chunks coded per GEMM (the workspace holds their residuals and scores);
  // 0 picks a tile whose score matrix is at most 256 MiB.
  uint32_t max_tile_chunks = 0;
  // Optional: kErrorNonFiniteInput for a non-finite input value (the CPU
  // codec's "kv" INVALID_ARGUMENT).
  uint32_t* error_flags = nullptr;
};

struct SparseDecodeParams {
  kvstore::BlockShape shape;
  codecs::CodecParams codec_params{};  // From the block; profile_id must match.
  SparseProfileLayout profile_layout;
  const float* profile = nullptr;
  const void* payload = nullptr;  // 4-byte aligned.
  uint64_t payload_bytes = 0;
  void* kv = nullptr;  // Raw block out (KvTensorToRaw of the CPU decode).
  // Optional: kErrorBadGroupRecord for an atom index >= N + M, a non-finite
  // coefficient or a non-finite online atom (the CPU codec's "payload"
  // DATA_LOSS).
  uint32_t* error_flags = nullptr;
};

// The params a block records after encode: codec_params with profile_id set.
codecs::CodecParams EncodedCodecParams(const SparseEncodeParams& params);

// The tile (chunks per GEMM) Launch uses for `params` (after Validate).
uint32_t SparseTileChunks(const SparseEncodeParams& params);

[[nodiscard]] absl::Status Validate(const SparseEncodeParams& params);
// Residuals and scores of one tile: 256-aligned tile*C*4 + tile*N*4 bytes.
[[nodiscard]] size_t WorkspaceBytes(const SparseEncodeParams& params);
// `workspace`: WorkspaceBytes(params) bytes of device memory, 256-aligned.
[[nodiscard]] absl::Status Launch(const SparseEncodeParams& params,
                                  void* workspace, cudaStream_t stream);

[[nodiscard]] absl::Status Validate(const SparseDecodeParams& params);
[[nodiscard]] size_t WorkspaceBytes(const SparseDecodeParams& params);
[[nodiscard]] absl::Status Launch(const SparseDecodeParams& params,
                                  void* workspace, cudaStream_t stream);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_SPARSE_KERNELS_H_
