#include "kernels/kernel_errors.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/internal/numeric.h"

namespace strata::kernels {

static_assert(kErrorNonFiniteInput == internal::kFlagNonFinite);
static_assert(kErrorOutOfRange == internal::kFlagOutOfRange);
static_assert(kErrorBadGroupRecord == internal::kFlagBadGroupRecord);
static_assert(kErrorBadSink == internal::kFlagBadSink);
static_assert(kErrorBadPageId == internal::kFlagBadPageId);
static_assert(kErrorBadIndex == internal::kFlagBadIndex);

absl::Status ErrorFlagsToStatus(uint32_t flags) {
  if (flags == 0) return absl::OkStatus();
  if (flags & (kErrorBadGroupRecord | kErrorBadSink)) {
    std::string what;
    if (flags & kErrorBadGroupRecord) {
      what = "a group has a non-finite or negative scale/min";
    }
    if (flags & kErrorBadSink) {
      absl::StrAppend(&what, what.empty() ? "" : "; ",
                      "a sink token value is not finite");
    }
    return absl::DataLossError(absl::StrCat("payload: ", what));
  }
  if (flags & kErrorBadIndex) {
    return absl::DataLossError(
        "index: a cluster end or token id is outside the block");
  }
  if (flags & kErrorNonFiniteInput) {
    return absl::InvalidArgumentError("kv: a value is not finite");
  }
  if (flags & kErrorOutOfRange) {
    return absl::InvalidArgumentError(
        "kv: a quantized value is outside the fp16 range of the quantizer "
        "(|x| > 65504)");
  }
  if (flags & kErrorBadPageId) {
    return absl::InvalidArgumentError(
        "page_ids: a page id is outside [0, num_pages)");
  }
  return absl::InternalError(
      absl::StrCat("error_flags: unknown bits 0x", absl::Hex(flags)));
}

}  // namespace strata::kernels
