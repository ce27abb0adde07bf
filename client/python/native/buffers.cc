#include "client/python/native/buffers.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/python/native/status.h"

namespace py = pybind11;

namespace strata::python {
namespace {

// A struct-module format character ("e", "<H", "=f", ...) as an ElementType.
ElementType FromFormat(const char* format, size_t itemsize) {
  ElementType t{'V', itemsize};
  if (format == nullptr) return ElementType{'u', itemsize};
  const char* f = format;
  while (*f == '@' || *f == '=' || *f == '<' || *f == '>' || *f == '!') ++f;
  if (f[0] == '\0' || f[1] != '\0') return t;
  switch (f[0]) {
    case 'e': case 'f': case 'd': t.kind = 'f'; break;
    case 'B': case 'H': case 'I': case 'L': case 'Q': case 'c': t.kind = 'u'; break;
    case 'b': case 'h': case 'i': case 'l': case 'q': t.kind = 'i'; break;
    default: break;
  }
  return t;
}

// torch dtype names (str(tensor.dtype)) as ElementTypes.
ElementType FromTorchDtype(const std::string& name, size_t itemsize) {
  if (name == "torch.float16" || name == "torch.float32" ||
      name == "torch.float64") {
    return {'f', itemsize};
  }
  if (name == "torch.bfloat16") return {'b', itemsize};
  if (name == "torch.uint8" || name == "torch.uint16" ||
      name == "torch.uint32" || name == "torch.uint64") {
    return {'u', itemsize};
  }
  if (name == "torch.int8" || name == "torch.int16" || name == "torch.int32" ||
      name == "torch.int64") {
    return {'i', itemsize};
  }
  return {'V', itemsize};
}

}  // namespace

Memory::Memory(Memory&& other) noexcept { *this = std::move(other); }

Memory& Memory::operator=(Memory&& other) noexcept {
  if (this != &other) {
    if (view_ != nullptr) PyBuffer_Release(view_.get());
    data_ = other.data_;
    size_ = other.size_;
    element_ = other.element_;
    shape_ = std::move(other.shape_);
    view_ = std::move(other.view_);
    keep_ = std::move(other.keep_);
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

Memory::~Memory() {
  if (view_ != nullptr) PyBuffer_Release(view_.get());
}

Memory Memory::Readable(py::handle obj, const std::string& field) {
  return Resolve(obj, field, /*writable=*/false);
}

Memory Memory::Writable(py::handle obj, const std::string& field) {
  return Resolve(obj, field, /*writable=*/true);
}

Memory Memory::Resolve(py::handle obj, const std::string& field,
                       bool writable) {
  Memory m;
  m.keep_ = py::reinterpret_borrow<py::object>(obj);
  if (obj.is_none()) ThrowInvalidArgument(field, "is None");

  // 1. The buffer protocol.
  if (PyObject_CheckBuffer(obj.ptr())) {
    auto view = std::make_unique<Py_buffer>();
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                      (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), view.get(), flags) != 0) {
      PyErr_Clear();
      ThrowInvalidArgument(
          field, writable ? "not a writable C-contiguous buffer"
                          : "not a C-contiguous buffer");
    }
    m.data_ = static_cast<uint8_t*>(view->buf);
    m.size_ = static_cast<size_t>(view->len);
    m.element_ = FromFormat(view->format, static_cast<size_t>(view->itemsize));
    if (view->ndim > 0 && view->shape != nullptr) {
      m.shape_.assign(view->shape, view->shape + view->ndim);
    }
    m.view_ = std::move(view);
    if (m.shape_.empty()) {
      m.shape_ = {static_cast<int64_t>(m.size_ / m.element_.itemsize)};
    }
    return m;
  }

  // 2. __array_interface__ (numpy-compatible objects).
  if (py::hasattr(obj, "__array_interface__")) {
    py::dict ai = obj.attr("__array_interface__");
    py::tuple data = ai["data"];
    if (writable && data[1].cast<bool>()) ThrowInvalidArgument(field, "read-only");
    const std::string typestr = ai["typestr"].cast<std::string>();
    if (typestr.size() < 3) ThrowInvalidArgument(field, "bad typestr " + typestr);
    ElementType t{typestr[1], std::stoul(typestr.substr(2))};
    if (t.kind == 'c' || t.kind == 'V' || t.kind == 'b') t.kind = 'V';
    size_t count = 1;
    for (py::handle d : py::tuple(ai["shape"])) {
      m.shape_.push_back(d.cast<int64_t>());
      count *= d.cast<size_t>();
    }
    if (ai.contains("strides") && !ai["strides"].is_none()) {
      // Accept explicit strides only when they are the C-contiguous ones.
      py::tuple strides = ai["strides"];
      int64_t expect = static_cast<int64_t>(t.itemsize);
      for (size_t i = m.shape_.size(); i-- > 0;) {
        if (m.shape_[i] > 1 && strides[i].cast<int64_t>() != expect) {
          ThrowInvalidArgument(field, "not C-contiguous");
        }
        expect *= m.shape_[i];
      }
    }
    m.data_ = reinterpret_cast<uint8_t*>(data[0].cast<uintptr_t>());
    m.size_ = count * t.itemsize;
    m.element_ = t;
    if (m.shape_.empty()) m.shape_ = {1};
    return m;
  }

  // 3. torch tensors (no buffer protocol): CPU and contiguous only.
  if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "element_size") &&
      py::hasattr(obj, "is_contiguous") && py::hasattr(obj, "device")) {
    const std::string device = py::str(obj.attr("device").attr("type"));
    if (device != "cpu") {
      ThrowInvalidArgument(field, "a " + device +
                                      " tensor; pass a CPU tensor (stores "
                                      "move host memory)");
    }
    if (!obj.attr("is_contiguous")().cast<bool>()) {
      ThrowInvalidArgument(field, "tensor is not contiguous");
    }
    const size_t itemsize = obj.attr("element_size")().cast<size_t>();
    const size_t numel = obj.attr("numel")().cast<size_t>();
    m.element_ = FromTorchDtype(py::str(obj.attr("dtype")), itemsize);
    for (py::handle d : py::iterable(obj.attr("shape"))) {
      m.shape_.push_back(d.cast<int64_t>());
    }
    if (m.shape_.empty()) m.shape_ = {1};
    m.data_ = reinterpret_cast<uint8_t*>(obj.attr("data_ptr")().cast<uintptr_t>());
    m.size_ = numel * itemsize;
    return m;
  }

  ThrowInvalidArgument(
      field, absl::StrCat("a ", std::string(py::str(obj.get_type().attr("__name__"))),
                          " exposes no memory (buffer protocol, "
                          "__array_interface__ or a CPU torch tensor)"));
}

}  // namespace strata::python
