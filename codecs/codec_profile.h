// CodecProfile: per-model calibration data some codecs need (PCA bases,
// dictionaries, AQUA-KV predictors), built by `strata-calibrate` and loaded by
// the store, `strata-eval` and decoders. A profile is a set of named fp32
// tensors plus the model it belongs to. Its id is a 64-bit hash of its whole
// content; encoders record it in the block's codec params and decoders
// refuse a profile with another id (FAILED_PRECONDITION), so a block is never
// decoded with the wrong bases.
//
// File format (version 1, little-endian; docs/codecs.md):
//   magic "STKP" | u32 version | u32 model_id length | model_id bytes |
//   u32 tensor count | per tensor: u32 name length | name | u32 rank |
//   u32 dims[rank] | f32 data[prod(dims)] | ... | u64 XXH3-64 of all
//   preceding bytes.
//
// Thread safety: immutable after construction; const methods thread-safe.
#ifndef STRATA_CODECS_CODEC_PROFILE_H_
#define STRATA_CODECS_CODEC_PROFILE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace strata::codecs {

struct ProfileTensor {
  std::vector<uint32_t> dims;
  std::vector<float> data;  // prod(dims) values, row-major.
};

class CodecProfile;

// OK when `profile` is null (checked elsewhere) or its id is `recorded_id`,
// the id written into a block's params at encode time; otherwise
// FAILED_PRECONDITION naming "profile" with both ids.
absl::Status CheckProfileId(const CodecProfile* profile, uint64_t recorded_id);

class CodecProfile {
 public:
  explicit CodecProfile(std::string model_id) : model_id_(std::move(model_id)) {}
  CodecProfile(const CodecProfile& other)
      : model_id_(other.model_id_), tensors_(other.tensors_) {}
  CodecProfile(CodecProfile&& other) noexcept
      : model_id_(std::move(other.model_id_)),
        tensors_(std::move(other.tensors_)) {}
  CodecProfile& operator=(CodecProfile other) {
    std::swap(model_id_, other.model_id_);
    std::swap(tensors_, other.tensors_);
    ForgetId();
    return *this;
  }

  // Adds or replaces a tensor. `data.size()` must equal prod(dims).
  absl::Status Put(const std::string& name, std::vector<uint32_t> dims,
                   std::vector<float> data);
  // Null when absent.
  const ProfileTensor* Find(const std::string& name) const;
  // The tensor, or FAILED_PRECONDITION naming "profile" and `name` when it
  // is absent or its dims differ from `dims`.
  absl::StatusOr<const ProfileTensor*> Require(
      const std::string& name, const std::vector<uint32_t>& dims) const;

  const std::string& model_id() const { return model_id_; }
  const std::map<std::string, ProfileTensor>& tensors() const { return tensors_; }
  // XXH3-64 of the serialized form (minus the trailing checksum).
  uint64_t id() const;

  std::vector<uint8_t> Serialize() const;
  // INVALID_ARGUMENT for a malformed file, DATA_LOSS for a checksum mismatch.
  static absl::StatusOr<CodecProfile> Parse(absl::Span<const uint8_t> bytes);
  absl::Status WriteFile(const std::string& path) const;
  static absl::StatusOr<CodecProfile> ReadFile(const std::string& path);

 private:
  std::string model_id_;
  std::map<std::string, ProfileTensor> tensors_;  // Sorted: deterministic.
  void ForgetId();
  // id() hashes the whole content (megabytes): cached until Put changes it.
  mutable absl::Mutex id_mu_;
  mutable std::optional<uint64_t> id_ ABSL_GUARDED_BY(id_mu_);
};

}  // namespace strata::codecs

#endif  // STRATA_CODECS_CODEC_PROFILE_H_
