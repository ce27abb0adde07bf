// RoPE re-rotation of cached keys by a position delta.
//
// A cached post-RoPE key at position p moved to position p + delta (a prefix
// reused at another offset, CacheBlend's position recovery) is its rotation
// by delta: R(p + delta) = R(delta) R(p). For each pair (x0, x1) of a head
// vector, with inv_freq_i = theta^(-2i / head_dim) and angle = delta *
// inv_freq_i in double, c = (float)cos(angle), s = (float)sin(angle):
//   x0' = x0*c - x1*s,  x1' = x0*s + x1*c   (fp32, separate rounded products)
// exactly as codecs::ApplyRope (codecs/kv_fixture.h) rotates a vector to a
// position. The cos/sin table is computed on the host with the same double
// math, so in fp32 the GPU result is bit-identical to ApplyRope(vec, delta)
// (for delta >= 0); against ApplyRope at the new position it differs by the
// rounding of two rotations instead of one (docs/kernels.md gives the bound).
//
// Pair layouts: kInterleaved rotates (2i, 2i+1) -- llama.cpp's NORM RoPE, the
// fixture's layout; kNeoxHalves rotates (i, i + head_dim/2) -- Hugging Face
// and vLLM's neox style. Outputs are rounded to the dtype (nearest even,
// saturating like codecs::RoundToDtype).
//
// Host API (docs/kernels.md): Validate / WorkspaceBytes (0) / Launch.
#ifndef STRATA_KERNELS_ROPE_KERNELS_H_
#define STRATA_KERNELS_ROPE_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kvstore/dtype.h"

namespace strata::kernels {

enum class RopeStyle : uint8_t {
  kInterleaved = 0,  // pairs (2i, 2i+1)
  kNeoxHalves = 1,   // pairs (i, i + head_dim/2)
};

struct RopeShiftParams {
  kvstore::DType dtype = kvstore::DType::kFloat16;
  // Length of each head vector: even, a multiple of 8, <= 4096.
  uint32_t head_dim = 0;
  // Number of head vectors, contiguous: e.g. the K half of a Strata block is
  // layers * tokens * kv_heads vectors starting at the block.
  uint64_t num_vectors = 0;
  RopeStyle style = RopeStyle::kInterleaved;
  float theta = 10000.0f;  // RoPE base, finite and > 1.
  int32_t delta = 0;       // New position minus old position.
  // Device, num_vectors * head_dim elements of `dtype`, 16-byte aligned.
  // dst == src rotates in place; otherwise the ranges must not overlap.
  const void* src = nullptr;
  void* dst = nullptr;
};

[[nodiscard]] absl::Status Validate(const RopeShiftParams& params);
[[nodiscard]] size_t WorkspaceBytes(const RopeShiftParams& params);
[[nodiscard]] absl::Status Launch(const RopeShiftParams& params,
                                  void* workspace, cudaStream_t stream);

// The (cos, sin) of pair i for `delta`: the table the kernel uses (host
// double math, as codecs::ApplyRope). Exposed for tests.
void RopeShiftCosSin(uint32_t head_dim, float theta, int32_t delta,
                     uint32_t pair, float* c, float* s);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_ROPE_KERNELS_H_
