// Status -> Python exception mapping of the strata package (docs/python.md).
//
// C++ code of the extension reports errors by throwing StatusError (never a
// bare std::exception); a translator registered by RegisterStatus turns it
// into the strata.errors class of its code (strata.InvalidArgument, ...),
// whose .code is the absl code name and whose message is the status message.
// Throw only while holding the GIL or from code whose exception crosses back
// into a GIL-holding frame (pybind11 re-acquires it before translating).
#ifndef STRATA_CLIENT_PYTHON_NATIVE_STATUS_H_
#define STRATA_CLIENT_PYTHON_NATIVE_STATUS_H_

#include <stdexcept>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pybind11/pybind11.h"

namespace strata::python {

class StatusError : public std::runtime_error {
 public:
  explicit StatusError(absl::Status status)
      : std::runtime_error(std::string(status.message())),
        status_(std::move(status)) {}
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

// Throws StatusError unless `status` is OK.
inline void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw StatusError(status);
}

// The value, or throws StatusError.
template <typename T>
T ValueOrThrow(absl::StatusOr<T> value) {
  if (!value.ok()) throw StatusError(value.status());
  return *std::move(value);
}

// INVALID_ARGUMENT "<field>: <what>".
[[noreturn]] void ThrowInvalidArgument(const std::string& field,
                                       const std::string& what);

// The Python exception object for `status` (an instance of the strata.errors
// class of its code). Needs the GIL.
pybind11::object ExceptionFor(const absl::Status& status);

// Registers the StatusError translator. Call once from the module init.
void RegisterStatus(pybind11::module_& m);

}  // namespace strata::python

#endif  // STRATA_CLIENT_PYTHON_NATIVE_STATUS_H_
