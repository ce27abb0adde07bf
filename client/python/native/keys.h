// Keys of the strata package: KeyNamespace, chunk_keys, chain_key,
// segment_key and the hex helpers over kvstore/block_key.h, and the argument
// conversions shared by the other bindings. Needs the GIL.
#ifndef STRATA_CLIENT_PYTHON_NATIVE_KEYS_H_
#define STRATA_CLIENT_PYTHON_NATIVE_KEYS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kvstore/block_format.h"
#include "kvstore/block_key.h"
#include "kvstore/dtype.h"
#include "pybind11/pybind11.h"

namespace strata::python {

// A key argument: 16 bytes (bytes, bytearray, memoryview, ...) or 32 hex
// digits (str). INVALID_ARGUMENT naming `field` otherwise.
kvstore::BlockKey KeyFromPy(pybind11::handle obj,
                            const std::string& field = "key");
std::vector<kvstore::BlockKey> KeysFromPy(pybind11::handle seq,
                                          const std::string& field = "keys");
pybind11::bytes KeyToPy(const kvstore::BlockKey& key);

// Token ids: a sequence of ints or a 1-D integer array, each in [0, 2^32).
// INVALID_ARGUMENT naming `field` otherwise.
std::vector<uint32_t> TokensFromPy(pybind11::handle obj,
                                   const std::string& field = "tokens");

// "float16"/"fp16"/"torch.float16", "bfloat16"/"bf16", "float8_e4m3"/
// "fp8_e4m3"/"float8_e4m3fn", "float32"/"fp32" (or a numpy/torch dtype whose
// str() is one of them). INVALID_ARGUMENT naming `field` otherwise.
kvstore::DType DTypeFromPy(pybind11::handle obj,
                           const std::string& field = "dtype");
// A block shape from a dict with dtype, num_layers, num_tokens,
// num_kv_heads, head_dim (strata.block_header() returns one).
// INVALID_ARGUMENT naming `field` (or the shape field) otherwise.
kvstore::BlockShape BlockShapeFromPy(pybind11::handle shape,
                                     const std::string& field = "shape");
// The package's name of a dtype: "float16", "bfloat16", "float8_e4m3",
// "float32".
const char* DTypePyName(kvstore::DType dtype);

void RegisterKeys(pybind11::module_& m);

}  // namespace strata::python

#endif  // STRATA_CLIENT_PYTHON_NATIVE_KEYS_H_
