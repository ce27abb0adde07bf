#include "client/python/native/status.h"

#include <exception>

#include "absl/strings/str_cat.h"

namespace py = pybind11;

namespace strata::python {

void ThrowInvalidArgument(const std::string& field, const std::string& what) {
  throw StatusError(absl::InvalidArgumentError(absl::StrCat(field, ": ", what)));
}

py::object ExceptionFor(const absl::Status& status) {
  py::module_ errors = py::module_::import("strata.errors");
  return errors.attr("from_status")(
      std::string(absl::StatusCodeToString(status.code())),
      std::string(status.message()));
}

void RegisterStatus(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      py::object exc = ExceptionFor(e.status());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())),
                      exc.ptr());
    }
  });
  m.def(
      "_raise_status",
      [](int code, const std::string& message) {
        ThrowIfError(absl::Status(static_cast<absl::StatusCode>(code), message));
      },
      "Raises the strata error of an absl status code (tests).");
}

}  // namespace strata::python
