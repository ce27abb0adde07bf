#include "client/wire.h"

#include <grpcpp/support/slice.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace strata::client::internal {
namespace {

// Sequential reader over the slices of a ByteBuffer.
class SliceReader {
 public:
  explicit SliceReader(std::vector<grpc::Slice> slices)
      : slices_(std::move(slices)) {
    SkipEmpty();
  }

  bool AtEnd() const { return index_ == slices_.size(); }

  bool ReadByte(uint8_t* out) {
    if (AtEnd()) return false;
    *out = slices_[index_].begin()[offset_];
    Advance(1);
    return true;
  }

  bool ReadVarint(uint64_t* out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t byte;
      if (!ReadByte(&byte)) return false;
      value |= uint64_t{byte & 0x7Fu} << shift;
      if ((byte & 0x80) == 0) {
        *out = value;
        return true;
      }
    }
    return false;  // More than 10 bytes.
  }

  // Copies (dst != nullptr) or skips the next n bytes.
  bool Consume(uint64_t n, uint8_t* dst) {
    while (n > 0) {
      if (AtEnd()) return false;
      const grpc::Slice& slice = slices_[index_];
      const size_t take =
          static_cast<size_t>(std::min<uint64_t>(n, slice.size() - offset_));
      if (dst != nullptr) {
        std::memcpy(dst, slice.begin() + offset_, take);
        dst += take;
      }
      Advance(take);
      n -= take;
    }
    return true;
  }

 private:
  void Advance(size_t n) {
    offset_ += n;
    if (offset_ == slices_[index_].size()) {
      ++index_;
      offset_ = 0;
      SkipEmpty();
    }
  }
  void SkipEmpty() {
    while (index_ < slices_.size() && slices_[index_].size() == 0) ++index_;
  }

  std::vector<grpc::Slice> slices_;
  size_t index_ = 0;
  size_t offset_ = 0;
};

absl::Status Malformed(const char* what,
                       const char* message = "GetResponse") {
  return absl::InternalError(
      absl::StrCat("response: malformed ", message, " (", what, ")"));
}

// Skips the value of a field of `wire_type` other than length-delimited
// ones, which the callers handle. False when malformed.
bool SkipScalar(SliceReader& reader, uint32_t wire_type) {
  switch (wire_type) {
    case 0: {  // Varint.
      uint64_t ignored;
      return reader.ReadVarint(&ignored);
    }
    case 1:  // 64-bit.
      return reader.Consume(8, nullptr);
    case 5:  // 32-bit.
      return reader.Consume(4, nullptr);
    default:
      return false;
  }
}

std::vector<grpc::Slice> SlicesOf(const grpc::ByteBuffer& buffer, bool* ok) {
  std::vector<grpc::Slice> slices;
  *ok = !buffer.Valid() || buffer.Dump(&slices).ok();
  return slices;
}

}  // namespace

absl::StatusOr<size_t> CopyGetResponseBlock(const grpc::ByteBuffer& response,
                                            uint8_t* dst, size_t capacity) {
  bool dumped;
  SliceReader reader(SlicesOf(response, &dumped));
  if (!dumped) return Malformed("unreadable buffer");
  size_t block_size = 0;
  while (!reader.AtEnd()) {
    uint64_t tag;
    if (!reader.ReadVarint(&tag)) return Malformed("tag");
    const uint64_t field = tag >> 3;
    const uint32_t wire_type = static_cast<uint32_t>(tag & 7);
    if (field == 0) return Malformed("field 0");
    if (wire_type != 2) {
      if (!SkipScalar(reader, wire_type)) return Malformed("scalar");
      continue;
    }
    uint64_t length;
    if (!reader.ReadVarint(&length)) return Malformed("length");
    if (field == 1) {
      if (length > capacity) {
        return absl::OutOfRangeError(absl::StrCat(
            "capacity: block is ", length, " bytes, capacity ", capacity));
      }
      if (!reader.Consume(length, dst)) return Malformed("block");
      block_size = static_cast<size_t>(length);  // Last one wins.
    } else if (!reader.Consume(length, nullptr)) {
      return Malformed("bytes");
    }
  }
  return block_size;
}

absl::StatusOr<int> ParseHealthCheckResponse(
    const grpc::ByteBuffer& response) {
  constexpr char kMessage[] = "HealthCheckResponse";
  bool dumped;
  SliceReader reader(SlicesOf(response, &dumped));
  if (!dumped) return Malformed("unreadable buffer", kMessage);
  int status = kHealthUnknown;
  while (!reader.AtEnd()) {
    uint64_t tag;
    if (!reader.ReadVarint(&tag)) return Malformed("tag", kMessage);
    const uint32_t wire_type = static_cast<uint32_t>(tag & 7);
    if (tag >> 3 == 0) return Malformed("field 0", kMessage);
    if (tag >> 3 == 1 && wire_type == 0) {
      uint64_t value;
      if (!reader.ReadVarint(&value)) return Malformed("status", kMessage);
      status = static_cast<int>(static_cast<int32_t>(value));
    } else if (wire_type == 2) {
      uint64_t length;
      if (!reader.ReadVarint(&length) || !reader.Consume(length, nullptr)) {
        return Malformed("bytes", kMessage);
      }
    } else if (!SkipScalar(reader, wire_type)) {
      return Malformed("scalar", kMessage);
    }
  }
  return status;
}

}  // namespace strata::client::internal
