// Memory of Python objects, without copies: the buffer protocol (bytes,
// bytearray, memoryview, numpy arrays), __array_interface__, and CPU torch
// tensors (data_ptr / element_size / is_contiguous), in that order.
//
// A Memory keeps the object (and, for the buffer protocol, its exported
// Py_buffer, which stops e.g. a bytearray from being resized) alive until it
// is destroyed; its bytes may be read or written with the GIL released while
// it lives. Construct and destroy it with the GIL held.
#ifndef STRATA_CLIENT_PYTHON_NATIVE_BUFFERS_H_
#define STRATA_CLIENT_PYTHON_NATIVE_BUFFERS_H_

#include <Python.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "pybind11/pybind11.h"

namespace strata::python {

// The element type of a memory region: numpy-like kind ('f' float, 'u'
// unsigned, 'i' signed, 'b' bfloat16 (torch), 'V' anything else) and size.
struct ElementType {
  char kind = 'u';
  size_t itemsize = 1;
};

class Memory {
 public:
  Memory() = default;
  Memory(Memory&&) noexcept;
  Memory& operator=(Memory&&) noexcept;
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;
  ~Memory();

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const ElementType& element() const { return element_; }
  // Dimensions in elements ({size / itemsize} when the object has none).
  const std::vector<int64_t>& shape() const { return shape_; }
  absl::Span<const uint8_t> bytes() const { return {data_, size_}; }
  absl::Span<uint8_t> writable_bytes() const { return {data_, size_}; }

  // Resolve `obj` as C-contiguous memory. INVALID_ARGUMENT naming `field` for
  // an object that exposes none, non-contiguous memory, a read-only object
  // when writable, or a tensor that is not on the CPU.
  static Memory Readable(pybind11::handle obj, const std::string& field);
  static Memory Writable(pybind11::handle obj, const std::string& field);

 private:
  static Memory Resolve(pybind11::handle obj, const std::string& field,
                        bool writable);

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  ElementType element_;
  std::vector<int64_t> shape_;
  std::unique_ptr<Py_buffer> view_;  // Set for the buffer protocol.
  pybind11::object keep_;
};

}  // namespace strata::python

#endif  // STRATA_CLIENT_PYTHON_NATIVE_BUFFERS_H_
