// Status propagation macros. Debian 12's Abseil (20220623) ships none, so
// Strata defines this one pair, here, once.
//
//   STRATA_RETURN_IF_ERROR(expr);        // expr yields absl::Status
//   STRATA_ASSIGN_OR_RETURN(lhs, expr);  // expr yields absl::StatusOr<T>
#ifndef STRATA_COMMON_STATUS_MACROS_H_
#define STRATA_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define STRATA_INTERNAL_CONCAT_IMPL(a, b) a##b
#define STRATA_INTERNAL_CONCAT(a, b) STRATA_INTERNAL_CONCAT_IMPL(a, b)

#define STRATA_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status strata_status_ = (expr);          \
    if (!strata_status_.ok()) return strata_status_; \
  } while (false)

#define STRATA_INTERNAL_ASSIGN_OR_RETURN(tmp, lhs, expr) \
  auto tmp = (expr);                                     \
  if (!tmp.ok()) return std::move(tmp).status();         \
  lhs = std::move(tmp).value()

#define STRATA_ASSIGN_OR_RETURN(lhs, expr) \
  STRATA_INTERNAL_ASSIGN_OR_RETURN(        \
      STRATA_INTERNAL_CONCAT(strata_statusor_, __LINE__), lhs, expr)

#endif  // STRATA_COMMON_STATUS_MACROS_H_
