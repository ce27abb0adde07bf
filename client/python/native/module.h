// The registration functions of the strata._native submodules, called once
// from module.cc's PYBIND11_MODULE in this order (later ones use the classes
// and the exception translator of earlier ones).
#ifndef STRATA_CLIENT_PYTHON_NATIVE_MODULE_H_
#define STRATA_CLIENT_PYTHON_NATIVE_MODULE_H_

#include "pybind11/pybind11.h"

namespace strata::python {

void RegisterStatus(pybind11::module_& m);  // status.cc
void RegisterKeys(pybind11::module_& m);    // keys.cc
void RegisterBlocks(pybind11::module_& m);  // blocks.cc
void RegisterStores(pybind11::module_& m);  // store_bindings.cc

}  // namespace strata::python

#endif  // STRATA_CLIENT_PYTHON_NATIVE_MODULE_H_
