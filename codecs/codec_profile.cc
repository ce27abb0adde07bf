#include "codecs/codec_profile.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "xxhash.h"

namespace strata::codecs {
namespace {

constexpr char kMagic[4] = {'S', 'T', 'K', 'P'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kMaxElements = uint64_t{1} << 32;

template <typename T>
void Append(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

class Reader {
 public:
  explicit Reader(absl::Span<const uint8_t> b) : b_(b) {}
  template <typename T>
  bool Read(T* v) {
    if (b_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool ReadBytes(size_t n, const uint8_t** p) {
    if (b_.size() - pos_ < n) return false;
    *p = b_.data() + pos_;
    pos_ += n;
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  absl::Span<const uint8_t> b_;
  size_t pos_ = 0;
};

}  // namespace

absl::Status CheckProfileId(const CodecProfile* profile,
                            uint64_t recorded_id) {
  if (profile == nullptr || profile->id() == recorded_id) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "profile: id ", absl::Hex(profile->id(), absl::kZeroPad16),
      " differs from ", absl::Hex(recorded_id, absl::kZeroPad16),
      ", the profile the block was encoded with"));
}

absl::Status CodecProfile::Put(const std::string& name,
                               std::vector<uint32_t> dims,
                               std::vector<float> data) {
  uint64_t n = 1;
  for (uint32_t d : dims) n *= d;
  if (name.empty() || dims.empty() || n != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "profile: tensor \"", name, "\" has ", data.size(),
        " values for dims of ", n, " elements"));
  }
  tensors_[name] = ProfileTensor{std::move(dims), std::move(data)};
  ForgetId();
  return absl::OkStatus();
}

const ProfileTensor* CodecProfile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<const ProfileTensor*> CodecProfile::Require(
    const std::string& name, const std::vector<uint32_t>& dims) const {
  const ProfileTensor* t = Find(name);
  if (t == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: \"", model_id_, "\" has no tensor \"", name, "\""));
  }
  if (t->dims != dims) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: tensor \"", name, "\" has other dims than the block needs"));
  }
  return t;
}

std::vector<uint8_t> CodecProfile::Serialize() const {
  std::vector<uint8_t> out(kMagic, kMagic + 4);
  Append<uint32_t>(out, kVersion);
  Append<uint32_t>(out, static_cast<uint32_t>(model_id_.size()));
  out.insert(out.end(), model_id_.begin(), model_id_.end());
  Append<uint32_t>(out, static_cast<uint32_t>(tensors_.size()));
  for (const auto& [name, t] : tensors_) {
    Append<uint32_t>(out, static_cast<uint32_t>(name.size()));
    out.insert(out.end(), name.begin(), name.end());
    Append<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (uint32_t d : t.dims) Append<uint32_t>(out, d);
    const auto* p = reinterpret_cast<const uint8_t*>(t.data.data());
    out.insert(out.end(), p, p + t.data.size() * sizeof(float));
  }
  Append<uint64_t>(out, XXH3_64bits(out.data(), out.size()));
  return out;
}

void CodecProfile::ForgetId() {
  absl::MutexLock lock(&id_mu_);
  id_.reset();
}

uint64_t CodecProfile::id() const {
  absl::MutexLock lock(&id_mu_);
  if (!id_.has_value()) {
    std::vector<uint8_t> bytes = Serialize();
    uint64_t checksum;
    std::memcpy(&checksum, bytes.data() + bytes.size() - 8, 8);
    id_ = checksum;
  }
  return *id_;
}

absl::StatusOr<CodecProfile> CodecProfile::Parse(
    absl::Span<const uint8_t> bytes) {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("profile: ", what));
  };
  if (bytes.size() < 4 + 4 + 4 + 4 + 8 || std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return bad("not a Strata codec profile (bad magic or too short)");
  }
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 8, 8);
  if (XXH3_64bits(bytes.data(), bytes.size() - 8) != stored) {
    return absl::DataLossError("profile: checksum mismatch");
  }
  Reader r(bytes.first(bytes.size() - 8));
  const uint8_t* p;
  uint32_t version, len, count;
  r.ReadBytes(4, &p);
  if (!r.Read(&version) || version != kVersion) {
    return bad(absl::StrCat("version ", version, " is not supported"));
  }
  if (!r.Read(&len) || !r.ReadBytes(len, &p)) return bad("truncated model_id");
  CodecProfile profile(std::string(reinterpret_cast<const char*>(p), len));
  if (!r.Read(&count)) return bad("truncated tensor count");
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t name_len, rank;
    if (!r.Read(&name_len) || !r.ReadBytes(name_len, &p)) {
      return bad("truncated tensor name");
    }
    std::string name(reinterpret_cast<const char*>(p), name_len);
    if (!r.Read(&rank) || rank == 0 || rank > 8) return bad("bad tensor rank");
    std::vector<uint32_t> dims(rank);
    uint64_t n = 1;
    for (uint32_t& d : dims) {
      if (!r.Read(&d)) return bad("truncated dims");
      n *= d;
      if (n > kMaxElements) return bad("tensor too large");
    }
    if (!r.ReadBytes(n * sizeof(float), &p)) return bad("truncated tensor data");
    std::vector<float> data(n);
    std::memcpy(data.data(), p, n * sizeof(float));
    if (auto s = profile.Put(name, std::move(dims), std::move(data)); !s.ok()) {
      return s;
    }
  }
  if (r.pos() != bytes.size() - 8) return bad("trailing bytes");
  return profile;
}

absl::Status CodecProfile::WriteFile(const std::string& path) const {
  const std::vector<uint8_t> bytes = Serialize();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (!out) return absl::UnavailableError(absl::StrCat("profile: cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<CodecProfile> CodecProfile::ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("profile: cannot open ", path));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
  return Parse(bytes);
}

}  // namespace strata::codecs
