// strata._native: the pybind11 extension of the strata package
// (docs/python.md). The pure-Python package (client/python/strata) re-exports
// it; import `strata`, not this module.
#include "client/python/native/module.h"

#include "kvstore/block_format.h"

namespace py = pybind11;

PYBIND11_MODULE(_native, m) {
  m.doc() = "Strata native bindings (docs/python.md)";
  m.attr("BLOCK_HEADER_SIZE") = strata::kvstore::kBlockHeaderSize;
  m.attr("BLOCK_FORMAT_VERSION") = strata::kvstore::kBlockFormatVersion;
  strata::python::RegisterStatus(m);
  strata::python::RegisterKeys(m);
  strata::python::RegisterBlocks(m);
  strata::python::RegisterStores(m);
}
