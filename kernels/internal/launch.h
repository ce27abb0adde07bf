// The seam between the host API (kernels/*.cc, g++, Abseil) and the device
// code (kernels/*.cu, nvcc, no Abseil): plain argument structs, already
// validated, and one launcher per op that enqueues its kernels on a stream and
// returns the launch error (cudaGetLastError), never synchronising.
//
// Not a public header.
#ifndef STRATA_KERNELS_INTERNAL_LAUNCH_H_
#define STRATA_KERNELS_INTERNAL_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace strata::kernels::internal {

// ---- quant

struct QuantSideArgs {
  int bits = 2;
  uint32_t group = 32;
  bool per_token = false;
  uint64_t side_offset = 0;  // Payload offset of this side's layer-0 slab.
  uint64_t slab_bytes = 0;   // One layer's slab (sinks + groups + codes).
  uint64_t sink_bytes = 0;   // n_sink * hd * dsize.
  uint64_t num_groups = 0;   // Group records per slab.
};

struct QuantArgs {
  int dtype = 1;  // kvstore::DType value.
  uint32_t dsize = 2;
  uint32_t layers = 0;
  // Layers of the raw block that src (encode) / dst (decode) points into;
  // 0: `layers`. A layer-range decode into a whole block sets it.
  uint32_t raw_layers = 0;
  uint32_t tokens = 0;  // All tokens of the block, sinks included.
  uint32_t n_sink = 0;
  uint32_t hd = 0;  // kv_heads * head_dim, a multiple of 32.
  QuantSideArgs side[2];
  // Encode: src = raw block, dst = payload. Decode: src = payload, dst = raw.
  const void* src = nullptr;
  void* dst = nullptr;
  uint32_t* error_flags = nullptr;
};

cudaError_t LaunchQuantEncode(const QuantArgs& args, cudaStream_t stream);
cudaError_t LaunchQuantDecode(const QuantArgs& args, cudaStream_t stream);
// The fp16 fast-path encoder (quant_encode_fp16.cu): both sides in one
// launch, sinks excluded. It applies to fp16, groups of 32 with 2/4/8-bit
// codes on both sides, tokens after the sinks a multiple of 32, hd a
// multiple of 256 and 16-byte-aligned buffers and slabs; LaunchQuantEncode
// uses it whenever it applies.
bool QuantFp16FastPathApplies(const QuantArgs& args);
cudaError_t LaunchQuantEncodeFp16Fast(const QuantArgs& args,
                                      cudaStream_t stream);

// ---- paged gather / scatter

inline constexpr uint32_t kMaxPagedLayers = 1024;  // kvstore::kMaxLayers

// Passed by value (8 KiB kernel parameter; CUDA >= 12.1 allows 32 KiB).
struct PagedArgs {
  uint32_t layers = 0;
  uint32_t tokens = 0;
  uint32_t row_bytes = 0;  // kv_heads * head_dim * dsize, multiple of 16.
  uint32_t page_size = 0;
  uint32_t num_pages = 0;
  bool kv_major = false;
  const int32_t* page_ids = nullptr;
  uint8_t* block = nullptr;
  uint32_t* error_flags = nullptr;
  uint8_t* caches[kMaxPagedLayers] = {};
};

cudaError_t LaunchPagedGather(const PagedArgs& args, cudaStream_t stream);
cudaError_t LaunchPagedScatter(const PagedArgs& args, cudaStream_t stream);

// ---- RoPE shift

inline constexpr uint32_t kMaxRopePairs = 2048;  // kvstore::kMaxHeadDim / 2

// Passed by value (16 KiB kernel parameter).
struct RopeArgs {
  int dtype = 1;
  uint32_t head_dim = 0;
  uint64_t num_vectors = 0;
  bool neox = false;
  const void* src = nullptr;
  void* dst = nullptr;
  float cos[kMaxRopePairs];
  float sin[kMaxRopePairs];
};

cudaError_t LaunchRopeShift(const RopeArgs& args, cudaStream_t stream);

// ---- CacheBlend selection

struct BlendArgs {
  int dtype = 1;
  uint32_t tokens = 0;
  uint32_t hd = 0;  // Multiple of 8.
  uint32_t k = 0;
  const void* fresh = nullptr;
  const void* cached = nullptr;
  float* deviations = nullptr;  // [tokens], caller's output or workspace.
  int32_t* selected = nullptr;  // [k]
};

cudaError_t LaunchBlendSelect(const BlendArgs& args, cudaStream_t stream);


// ---- lowrank (PCA) encode / decode

struct LowRankArgs {
  int dtype = 1;
  uint32_t layers = 0, tokens = 0, heads = 0, dim = 0;
  int format = 0;  // codecs::LatentFormat: 0 fp16, 1 int8, 2 int4.
  bool whiten = false;
  uint32_t rank[2] = {0, 0};
  uint32_t record[2] = {0, 0};  // Bytes per (layer, token, head) record.
  uint64_t offset[2] = {0, 0};  // Payload offset of each half.
  uint32_t r_max[2] = {0, 0};
  uint64_t mean[2] = {0, 0}, basis[2] = {0, 0}, basis_t[2] = {0, 0},
           stddev[2] = {0, 0};  // Float offsets into `profile`.
  const float* profile = nullptr;
  // Encode: src = raw block, dst = payload. Decode: the reverse.
  const void* src = nullptr;
  void* dst = nullptr;
  uint32_t* error_flags = nullptr;
};

cudaError_t LaunchLowRankEncode(const LowRankArgs& args, cudaStream_t stream);
cudaError_t LaunchLowRankDecode(const LowRankArgs& args, cudaStream_t stream);

// ---- cluster (ClusterKV) query scoring and token selection

struct ClusterSelectArgs {
  uint32_t tokens = 0, heads = 0, dim = 0;
  uint32_t sinks = 0, members = 0, clusters = 0;
  uint32_t q_heads = 0, budget = 0;
  bool total_scope = false;  // BudgetScope::kTotal.
  bool select_all = false;   // Unclustered layer or budget >= tokens.
  uint64_t slot_bytes = 0;   // One (layer, head) of the index.
  const uint8_t* layer_index = nullptr;  // Head 0's slot of the layer.
  const float* queries = nullptr;        // [q_heads][dim]
  double* scores = nullptr;              // Workspace [q_heads][clusters]
  uint32_t* ranked = nullptr;            // Workspace [q_heads][clusters]
  uint8_t* chosen = nullptr;             // Workspace [tokens]
  uint32_t* selected = nullptr;          // Out [tokens]
  uint32_t* num_selected = nullptr;      // Out, one word
  uint32_t* error_flags = nullptr;
};

cudaError_t LaunchClusterSelect(const ClusterSelectArgs& args,
                                cudaStream_t stream);

// ---- tokensparse (BUZZ heavy hitters) encode without a summary

struct TokenSparseArgs {
  int dtype = 1;
  uint32_t layers = 0, tokens = 0, heads = 0, dim = 0;
  uint32_t sinks = 0, window = 0, mid = 0, stride = 1, segments = 0,
           kept = 0;
  bool high_norm = false;
  // Caller scores: null (key-norm proxy), [layers][tokens][heads]
  // (per_head_scores) or [layers][tokens].
  const float* scores = nullptr;
  bool per_head_scores = false;
  uint64_t layer_bytes = 0;  // [positions][keys][values] of one layer.
  const void* kv = nullptr;
  uint8_t* payload = nullptr;
  uint32_t* error_flags = nullptr;
};

cudaError_t LaunchTokenSparseEncode(const TokenSparseArgs& args,
                                    cudaStream_t stream);

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_LAUNCH_H_
