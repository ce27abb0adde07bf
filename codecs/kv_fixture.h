// KvFixture: real KV from a small model, for testing and evaluating codecs.
//
// tests/fixtures/smollm2_kv_v1.bin holds the keys, values and queries that
// SmolLM2-135M-Instruct (Llama architecture: 30 layers, 9 query heads, 3 KV
// heads, head_dim 64, RoPE theta 1e5) computes on two public-domain passages:
// passage 0 "calibration" (256 tokens), passage 1 "evaluation" (320 tokens,
// held out). tools/kv_fixture/make_fixture.py regenerates it; the format
// ("STKF", version 1) is specified in docs/fixtures.md.
//
// Stored per passage, for every layer: pre-RoPE keys and values of every
// token, pre-RoPE queries of the last tokens, all fp16 (the model's cache
// dtype); post-RoPE keys are derived here with ApplyRope (which is exactly the
// generator's RoPE, checked against post-RoPE keys stored for two layers).
// Positions are token indices within the passage (each passage is its own
// sequence, starting at position 0).
//
// RoPE layout: the model's weights come from a llama.cpp GGUF, whose Q/K rows
// are permuted so that RoPE rotates adjacent pairs (2i, 2i+1) of each head
// vector (llama.cpp's "NORM" RoPE), not the halves (i, i + head_dim/2) of the
// Hugging Face layout. Channel c of a head here is channel (c % 2) *
// head_dim/2 + c / 2 of the same head in the Hugging Face layout.
//
// Thread safety: a loaded KvFixture is an immutable value; its const methods
// and the free functions are thread-safe.
#ifndef STRATA_CODECS_KV_FIXTURE_H_
#define STRATA_CODECS_KV_FIXTURE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codecs/kv_tensor.h"

namespace strata::codecs {

inline constexpr char kKvFixtureMagic[4] = {'S', 'T', 'K', 'F'};
inline constexpr uint32_t kKvFixtureVersion = 1;

// Which keys (or queries) an accessor returns.
enum class RopeForm { kPreRope, kPostRope };

struct KvFixturePassage {
  std::string name;                    // "calibration", "evaluation".
  std::vector<uint32_t> token_ids;     // [num_tokens], the model's vocab.
  uint32_t num_queries = 0;
  uint32_t first_query_position = 0;   // Queries are for positions
                                       // [first, first + num_queries).
  // fp16 bit patterns, row-major:
  std::vector<uint16_t> keys_pre;      // [layers][tokens][kv_heads][head_dim]
  std::vector<uint16_t> values;        // [layers][tokens][kv_heads][head_dim]
  std::vector<uint16_t> queries_pre;   // [layers][queries][q_heads][head_dim]
  std::vector<uint16_t> keys_post_check;  // [check layers][tokens][kv_heads]
                                          // [head_dim], post-RoPE.
  uint32_t num_tokens() const {
    return static_cast<uint32_t>(token_ids.size());
  }
};

// Queries of one layer as fp32, with their positions.
struct FixtureQueries {
  uint32_t num_q_heads = 0;
  uint32_t head_dim = 0;
  std::vector<uint32_t> positions;  // [nq]
  std::vector<float> data;          // [nq][q_heads][head_dim]
};

struct KvFixture {
  uint32_t version = 0;
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;
  uint32_t num_q_heads = 0;
  uint32_t head_dim = 0;
  float rope_theta = 0;
  float rms_eps = 0;
  std::string model;                       // "SmolLM2-135M-Instruct.Q4_1".
  std::vector<uint32_t> rope_check_layers; // Layers with stored post-RoPE keys.
  std::vector<KvFixturePassage> passages;

  // K and V of layers [layer_begin, layer_end) and tokens [token_begin,
  // token_end) of a passage as a KvTensor (shape.dtype kFloat16; layer 0 of
  // the tensor is `layer_begin`, token 0 is `token_begin`). kPostRope applies
  // ApplyRope at each token's position in the passage and rounds the result
  // to fp16, so the tensor holds what an fp16 post-RoPE cache would.
  // INVALID_ARGUMENT naming "passage", "layer_begin"/"layer_end" or
  // "token_begin"/"token_end" for an empty or out-of-range selection.
  absl::StatusOr<KvTensor> Kv(uint32_t passage, uint32_t layer_begin,
                              uint32_t layer_end, uint32_t token_begin,
                              uint32_t token_end,
                              RopeForm keys = RopeForm::kPreRope) const;

  // The stored queries of one layer (fp32 of the fp16 values); kPostRope
  // applies ApplyRope at each query's position (no fp16 rounding: queries
  // are not cached). INVALID_ARGUMENT naming "passage" or "layer".
  absl::StatusOr<FixtureQueries> Queries(
      uint32_t passage, uint32_t layer,
      RopeForm form = RopeForm::kPostRope) const;

  // The stored post-RoPE keys of check layer `check_index` (an index into
  // rope_check_layers) of a passage, fp32 [tokens][kv_heads][head_dim].
  absl::StatusOr<std::vector<float>> StoredPostRopeKeys(
      uint32_t passage, uint32_t check_index) const;
};

// Reads and verifies a fixture. NOT_FOUND when the file cannot be opened;
// INVALID_ARGUMENT naming the field for a bad magic/version/header value or a
// file whose size does not match its header (truncated or padded); DATA_LOSS
// when the trailing XXH3-64 checksum does not match.
absl::StatusOr<KvFixture> LoadKvFixture(const std::string& path);

// The committed fixture: <source dir>/tests/fixtures/smollm2_kv_v1.bin (the
// directory is compiled in by CMake).
std::string DefaultFixturePath();

// Rotates one head_dim vector in place for `position`, exactly as the
// generator does (tools/kv_fixture/stkf.py rope()): for i < head_dim / 2,
//   a = position * theta^(-2i / head_dim)   (double), c = (float)cos(a),
//   s = (float)sin(a);  (x[2i], x[2i+1]) <- (x[2i]*c - x[2i+1]*s,
//                                            x[2i]*s + x[2i+1]*c)  in float.
// head_dim must be even.
void ApplyRope(float* vec, uint32_t head_dim, uint32_t position, float theta);

// Causal GQA attention, the reference for attention-output error:
//   queries [nq][q_heads][head_dim] (post-RoPE) at `query_positions` [nq],
//   keys (post-RoPE) and values [T][kv_heads][head_dim], key t at position
//   key_position_begin + t.
// Query head h uses KV head h / (q_heads / kv_heads); a query sees the keys
// whose position <= its own; scores are scaled by 1/sqrt(head_dim); softmax
// in double. Returns [nq][q_heads][head_dim]; a query that sees no key gets
// zeros. INVALID_ARGUMENT naming the argument whose size is inconsistent.
absl::StatusOr<std::vector<float>> AttentionOutput(
    absl::Span<const float> queries, absl::Span<const uint32_t> query_positions,
    absl::Span<const float> keys, absl::Span<const float> values,
    uint32_t num_q_heads, uint32_t num_kv_heads, uint32_t head_dim,
    uint32_t key_position_begin = 0);

// AttentionOutput for layer `layer` of a (post-RoPE) KvTensor, e.g. a decoded
// block, whose token 0 is at position `key_position_begin`.
absl::StatusOr<std::vector<float>> AttentionOutput(
    const FixtureQueries& queries, const KvTensor& kv_post_rope,
    uint32_t layer, uint32_t key_position_begin = 0);

}  // namespace strata::codecs

#endif  // STRATA_CODECS_KV_FIXTURE_H_
