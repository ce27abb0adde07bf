#include "codecs/kv_fixture.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "xxhash.h"

#ifndef STRATA_FIXTURE_DIR
#error "STRATA_FIXTURE_DIR must be defined by the build (codecs/CMakeLists.txt)"
#endif

namespace strata::codecs {
namespace {

// Header and per-passage field sizes (docs/fixtures.md).
constexpr size_t kModelNameBytes = 32;
constexpr size_t kPassageNameBytes = 16;
constexpr size_t kChecksumBytes = 8;
constexpr uint32_t kMaxQHeads = 4096;
constexpr uint32_t kMaxPassages = 1024;

// A bounds-checked little-endian reader that names what it reads.
class Reader {
 public:
  explicit Reader(absl::Span<const uint8_t> data) : data_(data) {}

  size_t offset() const { return off_; }

  absl::Status Need(uint64_t n, const std::string& field) const {
    if (n > data_.size() - off_) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": truncated (needs ", n, " bytes at offset ", off_,
          ", the data without its checksum has ", data_.size(), ")"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<uint32_t> U32(const std::string& field) {
    STRATA_RETURN_IF_ERROR(Need(4, field));
    uint32_t v;
    std::memcpy(&v, data_.data() + off_, 4);  // Little-endian host.
    off_ += 4;
    return v;
  }
  absl::StatusOr<float> F32(const std::string& field) {
    STRATA_ASSIGN_OR_RETURN(uint32_t bits, U32(field));
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  absl::StatusOr<std::string> Name(size_t n, const std::string& field) {
    STRATA_RETURN_IF_ERROR(Need(n, field));
    const char* p = reinterpret_cast<const char*>(data_.data() + off_);
    off_ += n;
    const size_t len = strnlen(p, n);
    if (len == n) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": not NUL-terminated"));
    }
    return std::string(p, len);
  }
  template <typename T>
  absl::Status Array(uint64_t count, const std::string& field,
                     std::vector<T>* out) {
    STRATA_RETURN_IF_ERROR(Need(count * sizeof(T), field));
    out->resize(count);
    std::memcpy(out->data(), data_.data() + off_, count * sizeof(T));
    off_ += count * sizeof(T);
    return absl::OkStatus();
  }

 private:
  absl::Span<const uint8_t> data_;
  size_t off_ = 0;
};

absl::Status CheckRange(const char* field, uint32_t value, uint32_t lo,
                        uint32_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": ", value, " is outside [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<KvFixture> Parse(absl::Span<const uint8_t> file) {
  if (file.size() < 4 || std::memcmp(file.data(), kKvFixtureMagic, 4) != 0) {
    return absl::InvalidArgumentError("magic: not an STKF file");
  }
  if (file.size() < kChecksumBytes) {
    return absl::InvalidArgumentError("checksum: truncated");
  }
  Reader r(file.subspan(0, file.size() - kChecksumBytes));
  STRATA_RETURN_IF_ERROR(r.Need(4, "magic"));
  (void)r.U32("magic");
  KvFixture fx;
  STRATA_ASSIGN_OR_RETURN(fx.version, r.U32("version"));
  if (fx.version != kKvFixtureVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "version: ", fx.version, " is not the supported ", kKvFixtureVersion));
  }
  STRATA_ASSIGN_OR_RETURN(fx.num_layers, r.U32("num_layers"));
  STRATA_ASSIGN_OR_RETURN(fx.num_kv_heads, r.U32("num_kv_heads"));
  STRATA_ASSIGN_OR_RETURN(fx.num_q_heads, r.U32("num_q_heads"));
  STRATA_ASSIGN_OR_RETURN(fx.head_dim, r.U32("head_dim"));
  STRATA_ASSIGN_OR_RETURN(fx.rope_theta, r.F32("rope_theta"));
  STRATA_ASSIGN_OR_RETURN(fx.rms_eps, r.F32("rms_eps"));
  STRATA_ASSIGN_OR_RETURN(uint32_t num_passages, r.U32("num_passages"));
  STRATA_ASSIGN_OR_RETURN(uint32_t num_check, r.U32("num_rope_check_layers"));
  STRATA_ASSIGN_OR_RETURN(fx.model, r.Name(kModelNameBytes, "model"));

  STRATA_RETURN_IF_ERROR(
      CheckRange("num_layers", fx.num_layers, 1, kvstore::kMaxLayers));
  STRATA_RETURN_IF_ERROR(
      CheckRange("num_kv_heads", fx.num_kv_heads, 1, kvstore::kMaxKvHeads));
  STRATA_RETURN_IF_ERROR(
      CheckRange("num_q_heads", fx.num_q_heads, 1, kMaxQHeads));
  if (fx.num_q_heads % fx.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_q_heads: ", fx.num_q_heads,
                     " is not a multiple of num_kv_heads ", fx.num_kv_heads));
  }
  STRATA_RETURN_IF_ERROR(
      CheckRange("head_dim", fx.head_dim, 2, kvstore::kMaxHeadDim));
  if (fx.head_dim % 2 != 0) {
    return absl::InvalidArgumentError("head_dim: odd (RoPE rotates pairs)");
  }
  if (!(fx.rope_theta > 1.0f) || !std::isfinite(fx.rope_theta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope_theta: ", fx.rope_theta, " is not a finite value > 1"));
  }
  if (!(fx.rms_eps >= 0.0f) || !std::isfinite(fx.rms_eps)) {
    return absl::InvalidArgumentError("rms_eps: not a finite value >= 0");
  }
  STRATA_RETURN_IF_ERROR(
      CheckRange("num_passages", num_passages, 1, kMaxPassages));
  STRATA_RETURN_IF_ERROR(
      CheckRange("num_rope_check_layers", num_check, 0, fx.num_layers));
  STRATA_RETURN_IF_ERROR(
      r.Array(num_check, "rope_check_layers", &fx.rope_check_layers));
  for (uint32_t layer : fx.rope_check_layers) {
    STRATA_RETURN_IF_ERROR(
        CheckRange("rope_check_layers", layer, 0, fx.num_layers - 1));
  }

  const uint64_t kv_row = uint64_t{fx.num_kv_heads} * fx.head_dim;
  const uint64_t q_row = uint64_t{fx.num_q_heads} * fx.head_dim;
  fx.passages.resize(num_passages);
  for (uint32_t p = 0; p < num_passages; ++p) {
    KvFixturePassage& ps = fx.passages[p];
    const std::string at = absl::StrCat("passages[", p, "].");
    STRATA_ASSIGN_OR_RETURN(ps.name, r.Name(kPassageNameBytes, at + "name"));
    STRATA_ASSIGN_OR_RETURN(uint32_t num_tokens, r.U32(at + "num_tokens"));
    STRATA_ASSIGN_OR_RETURN(ps.num_queries, r.U32(at + "num_queries"));
    STRATA_ASSIGN_OR_RETURN(ps.first_query_position,
                            r.U32(at + "first_query_position"));
    STRATA_RETURN_IF_ERROR(CheckRange((at + "num_tokens").c_str(), num_tokens,
                                      1, kvstore::kMaxTokens));
    STRATA_RETURN_IF_ERROR(CheckRange((at + "num_queries").c_str(),
                                      ps.num_queries, 0, num_tokens));
    STRATA_RETURN_IF_ERROR(
        CheckRange((at + "first_query_position").c_str(),
                   ps.first_query_position, 0, num_tokens - ps.num_queries));
    const uint64_t kv_count = uint64_t{fx.num_layers} * num_tokens * kv_row;
    STRATA_RETURN_IF_ERROR(r.Array(num_tokens, at + "token_ids", &ps.token_ids));
    STRATA_RETURN_IF_ERROR(r.Array(kv_count, at + "keys_pre", &ps.keys_pre));
    STRATA_RETURN_IF_ERROR(r.Array(kv_count, at + "values", &ps.values));
    STRATA_RETURN_IF_ERROR(
        r.Array(uint64_t{fx.num_layers} * ps.num_queries * q_row,
                at + "queries_pre", &ps.queries_pre));
    STRATA_RETURN_IF_ERROR(r.Array(uint64_t{num_check} * num_tokens * kv_row,
                                   at + "keys_post_check",
                                   &ps.keys_post_check));
  }
  if (r.offset() + kChecksumBytes != file.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checksum: the file has ", file.size() - r.offset() - kChecksumBytes,
        " unexpected bytes before its checksum"));
  }
  uint64_t want;
  std::memcpy(&want, file.data() + r.offset(), kChecksumBytes);
  const uint64_t got = XXH3_64bits(file.data(), r.offset());
  if (got != want) {
    return absl::DataLossError(absl::StrCat(
        "checksum: XXH3-64 of the contents is ", absl::Hex(got),
        ", the file says ", absl::Hex(want)));
  }
  return fx;
}

absl::Status CheckSelection(const KvFixture& fx, uint32_t passage,
                            uint32_t layer_begin, uint32_t layer_end,
                            uint32_t token_begin, uint32_t token_end) {
  if (passage >= fx.passages.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "passage: ", passage, " of ", fx.passages.size()));
  }
  if (layer_end > fx.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer_end: ", layer_end, " > num_layers ", fx.num_layers));
  }
  if (layer_begin >= layer_end) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer_begin: ", layer_begin, " >= layer_end ", layer_end));
  }
  const uint32_t tokens = fx.passages[passage].num_tokens();
  if (token_end > tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_end: ", token_end, " > num_tokens ", tokens));
  }
  if (token_begin >= token_end) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_begin: ", token_begin, " >= token_end ", token_end));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<KvFixture> LoadKvFixture(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("fixture: cannot open ", path));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("fixture: cannot read ", path));
  }
  absl::StatusOr<KvFixture> fx = Parse(bytes);
  if (!fx.ok()) {
    return absl::Status(fx.status().code(),
                        absl::StrCat(fx.status().message(), " (", path, ")"));
  }
  return fx;
}

std::string DefaultFixturePath() {
  return STRATA_FIXTURE_DIR "/smollm2_kv_v1.bin";
}

void ApplyRope(float* vec, uint32_t head_dim, uint32_t position, float theta) {
  const double base = static_cast<double>(theta);
  for (uint32_t i = 0; i < head_dim / 2; ++i) {
    const double inv_freq =
        std::pow(base, -2.0 * static_cast<double>(i) / head_dim);
    const double angle = static_cast<double>(position) * inv_freq;
    const float c = static_cast<float>(std::cos(angle));
    const float s = static_cast<float>(std::sin(angle));
    const float x0 = vec[2 * i];
    const float x1 = vec[2 * i + 1];
    // Separate float products, as numpy computes them (no fused multiply-add).
    const float x0c = x0 * c, x1s = x1 * s, x0s = x0 * s, x1c = x1 * c;
    vec[2 * i] = x0c - x1s;
    vec[2 * i + 1] = x0s + x1c;
  }
}

absl::StatusOr<KvTensor> KvFixture::Kv(uint32_t passage, uint32_t layer_begin,
                                       uint32_t layer_end, uint32_t token_begin,
                                       uint32_t token_end,
                                       RopeForm keys) const {
  STRATA_RETURN_IF_ERROR(CheckSelection(*this, passage, layer_begin, layer_end,
                                        token_begin, token_end));
  const KvFixturePassage& ps = passages[passage];
  BlockShape shape;
  shape.dtype = DType::kFloat16;
  shape.num_layers = layer_end - layer_begin;
  shape.num_tokens = token_end - token_begin;
  shape.num_kv_heads = num_kv_heads;
  shape.head_dim = head_dim;
  STRATA_RETURN_IF_ERROR(shape.Validate());
  KvTensor kv = KvTensor::Zeros(shape);
  const size_t row = size_t{num_kv_heads} * head_dim;
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    for (uint32_t t = 0; t < shape.num_tokens; ++t) {
      const size_t src =
          (size_t{layer_begin + l} * ps.num_tokens() + token_begin + t) * row;
      float* k = kv.vec(0, l, t, 0);
      float* v = kv.vec(1, l, t, 0);
      for (size_t i = 0; i < row; ++i) {
        k[i] = HalfToFloat(ps.keys_pre[src + i]);
        v[i] = HalfToFloat(ps.values[src + i]);
      }
      if (keys == RopeForm::kPostRope) {
        for (uint32_t h = 0; h < num_kv_heads; ++h) {
          ApplyRope(k + size_t{h} * head_dim, head_dim, token_begin + t,
                    rope_theta);
        }
        for (size_t i = 0; i < row; ++i) k[i] = HalfToFloat(FloatToHalf(k[i]));
      }
    }
  }
  return kv;
}

absl::StatusOr<FixtureQueries> KvFixture::Queries(uint32_t passage,
                                                  uint32_t layer,
                                                  RopeForm form) const {
  if (passage >= passages.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("passage: ", passage, " of ", passages.size()));
  }
  if (layer >= num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: ", layer, " of ", num_layers));
  }
  const KvFixturePassage& ps = passages[passage];
  FixtureQueries q;
  q.num_q_heads = num_q_heads;
  q.head_dim = head_dim;
  const size_t row = size_t{num_q_heads} * head_dim;
  const size_t src = size_t{layer} * ps.num_queries * row;
  q.data.resize(size_t{ps.num_queries} * row);
  for (size_t i = 0; i < q.data.size(); ++i) {
    q.data[i] = HalfToFloat(ps.queries_pre[src + i]);
  }
  for (uint32_t i = 0; i < ps.num_queries; ++i) {
    const uint32_t pos = ps.first_query_position + i;
    q.positions.push_back(pos);
    if (form == RopeForm::kPostRope) {
      for (uint32_t h = 0; h < num_q_heads; ++h) {
        ApplyRope(&q.data[(size_t{i} * num_q_heads + h) * head_dim], head_dim,
                  pos, rope_theta);
      }
    }
  }
  return q;
}

absl::StatusOr<std::vector<float>> KvFixture::StoredPostRopeKeys(
    uint32_t passage, uint32_t check_index) const {
  if (passage >= passages.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("passage: ", passage, " of ", passages.size()));
  }
  if (check_index >= rope_check_layers.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "check_index: ", check_index, " of ", rope_check_layers.size()));
  }
  const KvFixturePassage& ps = passages[passage];
  const size_t n = size_t{ps.num_tokens()} * num_kv_heads * head_dim;
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = HalfToFloat(ps.keys_post_check[check_index * n + i]);
  }
  return out;
}

absl::StatusOr<std::vector<float>> AttentionOutput(
    absl::Span<const float> queries, absl::Span<const uint32_t> query_positions,
    absl::Span<const float> keys, absl::Span<const float> values,
    uint32_t num_q_heads, uint32_t num_kv_heads, uint32_t head_dim,
    uint32_t key_position_begin) {
  if (num_q_heads == 0 || num_kv_heads == 0 || head_dim == 0 ||
      num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_q_heads: ", num_q_heads, " is not a positive multiple of "
        "num_kv_heads ", num_kv_heads, " (head_dim ", head_dim, ")"));
  }
  const size_t q_row = size_t{num_q_heads} * head_dim;
  const size_t kv_row = size_t{num_kv_heads} * head_dim;
  const size_t nq = query_positions.size();
  if (queries.size() != nq * q_row) {
    return absl::InvalidArgumentError(absl::StrCat(
        "queries: ", queries.size(), " values for ", nq, " positions x ",
        q_row));
  }
  if (keys.size() % kv_row != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "keys: ", keys.size(), " values is not a multiple of ", kv_row));
  }
  if (values.size() != keys.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "values: ", values.size(), " values, keys have ", keys.size()));
  }
  const size_t num_keys = keys.size() / kv_row;
  const uint32_t group = num_q_heads / num_kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<float> out(queries.size(), 0.0f);
  std::vector<double> scores(num_keys);
  std::vector<double> acc(head_dim);
  for (size_t i = 0; i < nq; ++i) {
    const uint64_t pos = query_positions[i];
    // Keys at positions <= pos: t <= pos - key_position_begin.
    if (pos < key_position_begin) continue;
    const size_t visible =
        std::min<uint64_t>(num_keys, pos - key_position_begin + 1);
    if (visible == 0) continue;
    for (uint32_t h = 0; h < num_q_heads; ++h) {
      const float* q = &queries[i * q_row + size_t{h} * head_dim];
      const size_t kv_off = size_t{h / group} * head_dim;
      double max_score = -INFINITY;
      for (size_t t = 0; t < visible; ++t) {
        const float* k = &keys[t * kv_row + kv_off];
        double dot = 0;
        for (uint32_t d = 0; d < head_dim; ++d) dot += double{q[d]} * k[d];
        scores[t] = dot * scale;
        max_score = std::max(max_score, scores[t]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (size_t t = 0; t < visible; ++t) {
        const double w = std::exp(scores[t] - max_score);
        sum += w;
        const float* v = &values[t * kv_row + kv_off];
        for (uint32_t d = 0; d < head_dim; ++d) acc[d] += w * v[d];
      }
      float* o = &out[i * q_row + size_t{h} * head_dim];
      for (uint32_t d = 0; d < head_dim; ++d) {
        o[d] = static_cast<float>(acc[d] / sum);
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<float>> AttentionOutput(
    const FixtureQueries& queries, const KvTensor& kv_post_rope,
    uint32_t layer, uint32_t key_position_begin) {
  const BlockShape& s = kv_post_rope.shape;
  if (layer >= s.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: ", layer, " of ", s.num_layers));
  }
  if (s.head_dim != queries.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: keys have ", s.head_dim, ", queries ", queries.head_dim));
  }
  const size_t n = size_t{s.num_tokens} * s.num_kv_heads * s.head_dim;
  const float* k = kv_post_rope.vec(0, layer, 0, 0);
  const float* v = kv_post_rope.vec(1, layer, 0, 0);
  return AttentionOutput(queries.data, queries.positions,
                         absl::MakeConstSpan(k, n), absl::MakeConstSpan(v, n),
                         queries.num_q_heads, s.num_kv_heads, s.head_dim,
                         key_position_begin);
}

}  // namespace strata::codecs
