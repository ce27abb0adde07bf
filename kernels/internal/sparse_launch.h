// The seam between kernels/sparse_kernels.cc (host API, Abseil) and
// kernels/sparse_kernels.cu (device code, cuBLAS): validated plain argument
// structs and the launchers, which enqueue on a stream and never synchronise.
//
// Not a public header.
#ifndef STRATA_KERNELS_INTERNAL_SPARSE_LAUNCH_H_
#define STRATA_KERNELS_INTERNAL_SPARSE_LAUNCH_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace strata::kernels::internal {

// Atoms with 0 < norm2 below this are always re-scored exactly (their
// computed norm may not be within a few ulps of the true one).
inline constexpr float kSparseTinyNorm2 = 7.8886091e-31f;  // 2^-100

// A contiguous range of chunks coded against one dictionary: chunk g of the
// block is channels [g*C, (g+1)*C) of the raw block, and its s records start
// at payload byte records_offset + g*s*4.
struct SparseTile {
  uint64_t first_chunk = 0;
  uint32_t chunks = 0;
  const float* dict = nullptr;   // [N][C]
  const float* norm2 = nullptr;  // [N]
  const float* inv = nullptr;    // [N]
};

struct SparseEncodeArgs {
  int dtype = 1;
  uint32_t atoms = 0;  // N
  uint32_t dim = 0;    // C
  uint32_t s = 0;      // Atoms per chunk.
  uint64_t records_offset = 0;
  const void* kv = nullptr;
  uint8_t* payload = nullptr;
  float* residual = nullptr;  // Workspace [tile][C].
  float* scores = nullptr;    // Workspace [tile][N] (column-major N x tile).
  uint32_t* error_flags = nullptr;
  cublasHandle_t cublas = nullptr;
  std::vector<SparseTile> tiles;
};

struct SparseLaunchResult {
  cudaError_t cuda = cudaSuccess;
  int cublas = 0;  // cublasStatus_t; CUBLAS_STATUS_SUCCESS = 0.
  const char* what = "";
};

SparseLaunchResult LaunchSparseEncode(const SparseEncodeArgs& args,
                                      cudaStream_t stream);

struct SparseDecodeArgs {
  int dtype = 1;
  uint32_t layers = 0, tokens = 0, heads = 0;
  uint32_t atoms = 0;   // N
  uint32_t online = 0;  // M
  uint32_t dim = 0;     // C
  uint32_t chunks_per_head = 0;
  uint32_t s = 0;
  uint64_t records_offset = 0;  // = online atom bytes.
  uint64_t chunks = 0;          // 2 * L * T * H * s_n.
  const float* profile = nullptr;
  uint64_t dict[2] = {0, 0};  // Float offsets into profile.
  uint64_t groups = 0;
  const uint8_t* payload = nullptr;
  void* kv = nullptr;
  uint32_t* error_flags = nullptr;
};

cudaError_t LaunchSparseDecode(const SparseDecodeArgs& args,
                               cudaStream_t stream);

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_SPARSE_LAUNCH_H_
