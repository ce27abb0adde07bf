// The sparse codec (CodecId::kSparse): CSR-style sparse representation of KV
// head vectors over a learned dictionary (seed paper arXiv 2412.11741).
//
// Each head vector (keys as the engine gives them, and values, separately) is
// cut into `chunks_per_head` (s_n) chunks of d/s_n channels; matching pursuit
// codes each chunk as `atoms_per_chunk` (s) (u16 atom index, fp16
// coefficient) pairs over a dictionary of N unit atoms shared by a group of
// consecutive layers (one dictionary for K, one for V). Optionally the block
// carries `online_atoms` (M) extra fp16 atoms per (K/V, layer), taken from its
// own chunks, appended to the dictionary as indices N..N+M-1. Decoding is a
// gather-sum of s scaled atoms per chunk; every token decodes independently.
//
// Bits per element: 32·s·s_n/d (+ 16·M·(d/s_n)/(T·H·d) for online atoms,
// + 768/(2·L·T·H·d) for the header); the profile is amortised. d = 64:
// s·s_n = 2 → 1 bit, 4 → 2 bits, 8 → 4 bits.
//
// Params (32-byte codec_params, little-endian), payload and profile tensors:
// docs/codecs/sparse_lowrank.md.
//
// Thread safety: pure functions; the codec singleton is immutable.
#ifndef STRATA_CODECS_SPARSE_CODEC_H_
#define STRATA_CODECS_SPARSE_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_tensor.h"

namespace strata::codecs {

struct SparseParams {
  static constexpr uint8_t kVersion = 1;
  uint8_t atoms_per_chunk = 4;  // s: 1..255.
  uint8_t chunks_per_head = 1;  // s_n: divides head_dim.
  uint8_t online_atoms = 0;     // M per (K/V, layer): 0..255.
  uint64_t profile_id = 0;      // Written by Encode.

  CodecParams ToBytes() const;
  // INVALID_ARGUMENT naming the field for an unknown version or non-zero
  // reserved bytes (range checks against a shape: Codec::ValidateParams).
  static absl::StatusOr<SparseParams> FromBytes(const CodecParams& bytes);
};

// How FitSparseProfile learns the dictionaries.
struct SparseFitOptions {
  uint32_t num_atoms = 1024;       // N per (group, K/V); N + M <= 65536.
  uint32_t chunks_per_head = 1;    // s_n the profile serves (atom dim d/s_n).
  uint32_t layers_per_group = 5;   // Consecutive layers sharing a dictionary.
  uint32_t atoms_per_chunk = 4;    // s used to code the training chunks.
  uint32_t kmeans_iterations = 8;  // Spherical k-means initialisation.
  uint32_t refine_rounds = 4;      // Rounds of MP coding + K-SVD updates.
  uint32_t max_training_chunks = 16384;  // Per (group, K/V); evenly strided.
  // An atom with |cos| above this to an earlier atom is replaced (wasted);
  // raise it for small chunks with many atoms, where neighbours are close.
  float duplicate_cos = 0.95f;
};

// Learns one dictionary per (group of layers, K/V) from calibration KV (all
// tensors of one shape except num_tokens): chunks are normalised, spherical
// k-means (sign-invariant) gives the initial atoms, then `refine_rounds`
// rounds of (matching pursuit coding → K-SVD rank-1 atom updates by power
// iteration → unit norm; unused and near-duplicate atoms replaced by the
// residual directions of the worst-coded chunks).
// Deterministic. INVALID_ARGUMENT naming "calibration" or the option when the
// data or options cannot give a dictionary (e.g. fewer non-zero training
// chunks than atoms).
//
// Profile tensors: "csr.meta" [3] = {L, H, d} the profile was fitted for,
// "csr.layer_group" [L] (group of each layer, as floats), "csr.k.dict" and
// "csr.v.dict" [G, N, d/s_n] (unit atoms, row-major).
absl::StatusOr<CodecProfile> FitSparseProfile(
    const std::vector<KvTensor>& calibration, const SparseFitOptions& options,
    const std::string& model_id);

}  // namespace strata::codecs

#endif  // STRATA_CODECS_SPARSE_CODEC_H_
