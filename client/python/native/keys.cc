#include "client/python/native/keys.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/python/native/buffers.h"
#include "client/python/native/status.h"
#include "pybind11/numpy.h"
#include "pybind11/stl.h"

namespace py = pybind11;

namespace strata::python {

using kvstore::BlockKey;
using kvstore::DType;
using kvstore::KeyNamespace;

BlockKey KeyFromPy(py::handle obj, const std::string& field) {
  absl::StatusOr<BlockKey> key;
  if (py::isinstance<py::str>(obj)) {
    key = BlockKey::FromHex(obj.cast<std::string>());
  } else if (py::isinstance<py::bytes>(obj)) {
    key = BlockKey::FromBytes(obj.cast<std::string>());
  } else if (PyObject_CheckBuffer(obj.ptr())) {
    Memory m = Memory::Readable(obj, field);
    key = BlockKey::FromBytes(
        std::string(reinterpret_cast<const char*>(m.data()), m.size()));
  } else {
    ThrowInvalidArgument(field, "must be 16 bytes or 32 hex digits, got " +
                                    std::string(py::str(obj.get_type().attr("__name__"))));
  }
  if (!key.ok()) {
    // The C++ message names "key"; name the argument the caller passed.
    if (field == "key") throw StatusError(key.status());
    ThrowInvalidArgument(field, std::string(key.status().message()));
  }
  return *key;
}

std::vector<BlockKey> KeysFromPy(py::handle seq, const std::string& field) {
  if (py::isinstance<py::str>(seq) || py::isinstance<py::bytes>(seq)) {
    ThrowInvalidArgument(field, "must be a sequence of keys, not one key");
  }
  std::vector<BlockKey> keys;
  size_t i = 0;
  for (py::handle k : py::iterable(py::reinterpret_borrow<py::object>(seq))) {
    keys.push_back(KeyFromPy(k, absl::StrCat(field, "[", i, "]")));
    ++i;
  }
  return keys;
}

py::bytes KeyToPy(const BlockKey& key) {
  uint8_t b[16];
  key.ToBytes(b);
  return py::bytes(reinterpret_cast<const char*>(b), 16);
}

std::vector<uint32_t> TokensFromPy(py::handle obj, const std::string& field) {
  py::module_ np = py::module_::import("numpy");
  py::array arr = np.attr("asarray")(obj);
  if (arr.size() == 0) return {};
  if (arr.ndim() != 1) ThrowInvalidArgument(field, "must be 1-D");
  const char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u') {
    ThrowInvalidArgument(field, "must be integers, got dtype " +
                                    std::string(py::str(arr.dtype())));
  }
  std::vector<uint32_t> tokens(arr.size());
  if (kind == 'u' && arr.itemsize() <= 4) {
    auto a = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    std::copy(a.data(), a.data() + a.size(), tokens.begin());
    return tokens;
  }
  if (kind == 'u') {
    auto a = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    for (py::ssize_t i = 0; i < a.size(); ++i) {
      if (a.data()[i] > UINT32_MAX) {
        ThrowInvalidArgument(field, absl::StrCat("token ", i, " = ", a.data()[i],
                                                 " is not in [0, 2^32)"));
      }
      tokens[i] = static_cast<uint32_t>(a.data()[i]);
    }
    return tokens;
  }
  auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
  for (py::ssize_t i = 0; i < a.size(); ++i) {
    const int64_t t = a.data()[i];
    if (t < 0 || t > int64_t{UINT32_MAX}) {
      ThrowInvalidArgument(field, absl::StrCat("token ", i, " = ", t,
                                               " is not in [0, 2^32)"));
    }
    tokens[i] = static_cast<uint32_t>(t);
  }
  return tokens;
}

DType DTypeFromPy(py::handle obj, const std::string& field) {
  std::string name = absl::AsciiStrToLower(std::string(py::str(obj)));
  if (name.rfind("torch.", 0) == 0) name = name.substr(6);
  if (name == "float16" || name == "fp16" || name == "half") return DType::kFloat16;
  if (name == "bfloat16" || name == "bf16") return DType::kBFloat16;
  if (name == "float8_e4m3" || name == "fp8_e4m3" || name == "float8_e4m3fn" ||
      name == "fp8") {
    return DType::kFloat8E4M3;
  }
  if (name == "float32" || name == "fp32" || name == "float") return DType::kFloat32;
  ThrowInvalidArgument(field, "unknown dtype \"" + name +
                                  "\" (float16, bfloat16, float8_e4m3, float32)");
}

namespace {

uint32_t U32(py::handle v, const std::string& field) {
  const int64_t x = v.cast<int64_t>();
  if (x < 0 || x > int64_t{UINT32_MAX}) {
    ThrowInvalidArgument(field, absl::StrCat(x, " is not in [0, 2^32)"));
  }
  return static_cast<uint32_t>(x);
}

}  // namespace

kvstore::BlockShape BlockShapeFromPy(py::handle shape, const std::string& field) {
  if (!py::isinstance<py::dict>(shape)) {
    ThrowInvalidArgument(field, "must be a dict with dtype, num_layers, "
                                "num_tokens, num_kv_heads, head_dim");
  }
  py::dict d = py::reinterpret_borrow<py::dict>(shape);
  kvstore::BlockShape s;
  for (const char* k : {"dtype", "num_layers", "num_tokens", "num_kv_heads", "head_dim"}) {
    if (!d.contains(k)) ThrowInvalidArgument(absl::StrCat(field, ".", k), "missing");
  }
  s.dtype = DTypeFromPy(d["dtype"], field + ".dtype");
  s.num_layers = U32(d["num_layers"], field + ".num_layers");
  s.num_tokens = U32(d["num_tokens"], field + ".num_tokens");
  s.num_kv_heads = U32(d["num_kv_heads"], field + ".num_kv_heads");
  s.head_dim = U32(d["head_dim"], field + ".head_dim");
  ThrowIfError(s.Validate());
  return s;
}

const char* DTypePyName(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat8E4M3: return "float8_e4m3";
    case DType::kFloat32: return "float32";
  }
  return "invalid";
}

namespace {

std::string NamespaceRepr(const KeyNamespace& ns) {
  return absl::StrCat(
      "KeyNamespace(model_id='", ns.model_id, "', tenant_salt=",
      ns.tenant_salt.empty() ? "''" : "<set>", ", num_layers=", ns.num_layers,
      ", num_kv_heads=", ns.num_kv_heads, ", head_dim=", ns.head_dim,
      ", dtype='", DTypePyName(ns.dtype), "', chunk_tokens=", ns.chunk_tokens,
      ", tp_rank=", ns.tp_rank, ", tp_size=", ns.tp_size, ")");
}

bool SameNamespace(const KeyNamespace& a, const KeyNamespace& b) {
  return a.tenant_salt == b.tenant_salt && a.model_id == b.model_id &&
         a.dtype == b.dtype && a.num_layers == b.num_layers &&
         a.num_kv_heads == b.num_kv_heads && a.head_dim == b.head_dim &&
         a.chunk_tokens == b.chunk_tokens && a.tp_rank == b.tp_rank &&
         a.tp_size == b.tp_size;
}

}  // namespace

void RegisterKeys(py::module_& m) {
  py::class_<KeyNamespace>(m, "KeyNamespace",
                           "Everything that must differ for two caches to be "
                           "incompatible (kvstore/block_key.h, docs/keys.md).")
      .def(py::init([](const std::string& model_id, const std::string& tenant_salt,
                       py::handle num_layers, py::handle num_kv_heads,
                       py::handle head_dim, py::handle dtype,
                       py::handle chunk_tokens, py::handle tp_rank,
                       py::handle tp_size) {
             KeyNamespace ns;
             ns.model_id = model_id;
             ns.tenant_salt = tenant_salt;
             ns.num_layers = U32(num_layers, "num_layers");
             ns.num_kv_heads = U32(num_kv_heads, "num_kv_heads");
             ns.head_dim = U32(head_dim, "head_dim");
             ns.dtype = DTypeFromPy(dtype);
             ns.chunk_tokens = U32(chunk_tokens, "chunk_tokens");
             ns.tp_rank = U32(tp_rank, "tp_rank");
             ns.tp_size = U32(tp_size, "tp_size");
             ThrowIfError(ns.Root().status());  // Validate eagerly.
             return ns;
           }),
           py::kw_only(), py::arg("model_id"), py::arg("tenant_salt") = "",
           py::arg("num_layers"), py::arg("num_kv_heads"), py::arg("head_dim"),
           py::arg("dtype") = "float16", py::arg("chunk_tokens") = 256,
           py::arg("tp_rank") = 0, py::arg("tp_size") = 1)
      .def_readonly("model_id", &KeyNamespace::model_id)
      .def_readonly("tenant_salt", &KeyNamespace::tenant_salt)
      .def_readonly("num_layers", &KeyNamespace::num_layers)
      .def_readonly("num_kv_heads", &KeyNamespace::num_kv_heads)
      .def_readonly("head_dim", &KeyNamespace::head_dim)
      .def_property_readonly("dtype", [](const KeyNamespace& ns) {
        return DTypePyName(ns.dtype);
      })
      .def_readonly("chunk_tokens", &KeyNamespace::chunk_tokens)
      .def_readonly("tp_rank", &KeyNamespace::tp_rank)
      .def_readonly("tp_size", &KeyNamespace::tp_size)
      .def("root", [](const KeyNamespace& ns) {
        return KeyToPy(ValueOrThrow(ns.Root()));
      }, "The 16-byte namespace digest: the root of every key chain.")
      .def("__repr__", &NamespaceRepr)
      .def("__eq__", [](const KeyNamespace& a, py::object b) {
        return py::isinstance<KeyNamespace>(b) &&
               SameNamespace(a, b.cast<const KeyNamespace&>());
      })
      .def("__hash__", [](const KeyNamespace& ns) {
        return py::hash(KeyToPy(ValueOrThrow(ns.Root())));
      });

  py::class_<kvstore::ChunkKey>(m, "ChunkKey", "One chunk's key and extent.")
      .def_property_readonly("key", [](const kvstore::ChunkKey& c) {
        return KeyToPy(c.key);
      })
      .def_readonly("begin_token", &kvstore::ChunkKey::begin_token)
      .def_readonly("num_tokens", &kvstore::ChunkKey::num_tokens)
      .def_readonly("is_partial", &kvstore::ChunkKey::is_partial)
      .def("__repr__", [](const kvstore::ChunkKey& c) {
        return absl::StrCat("ChunkKey(key=", c.key.ToHex(), ", begin_token=",
                            c.begin_token, ", num_tokens=", c.num_tokens,
                            ", is_partial=", c.is_partial ? "True" : "False", ")");
      });

  m.def("chunk_keys",
        [](const KeyNamespace& ns, py::handle tokens, bool include_partial) {
          const std::vector<uint32_t> t = TokensFromPy(tokens);
          std::vector<kvstore::ChunkKey> keys;
          {
            py::gil_scoped_release release;
            auto r = kvstore::ChunkKeys(
                ns, t,
                include_partial ? kvstore::PartialChunk::kInclude
                                : kvstore::PartialChunk::kDrop);
            if (!r.ok()) {
              py::gil_scoped_acquire acquire;
              throw StatusError(r.status());
            }
            keys = *std::move(r);
          }
          return keys;
        },
        py::arg("ns"), py::arg("tokens"), py::kw_only(),
        py::arg("include_partial") = false,
        "Chained prefix keys of `tokens` (docs/keys.md).");
  m.def("chain_key",
        [](py::handle previous, py::handle tokens) {
          const BlockKey prev = KeyFromPy(previous, "previous_key");
          const std::vector<uint32_t> t = TokensFromPy(tokens);
          return KeyToPy(kvstore::ChainKey(prev, t));
        },
        py::arg("previous_key"), py::arg("tokens"), "One chain step.");
  m.def("segment_key",
        [](py::handle root, py::handle tokens) {
          const BlockKey r = KeyFromPy(root, "root");
          const std::vector<uint32_t> t = TokensFromPy(tokens);
          return KeyToPy(kvstore::SegmentKey(r, t));
        },
        py::arg("root"), py::arg("tokens"),
        "Position-independent segment key (CacheBlend).");
  m.def("key_to_hex",
        [](py::handle key) { return KeyFromPy(key).ToHex(); }, py::arg("key"),
        "32 lower-case hex digits.");
  m.def("key_from_hex",
        [](const std::string& hex) {
          return KeyToPy(ValueOrThrow(BlockKey::FromHex(hex)));
        },
        py::arg("hex"), "16 bytes from 32 hex digits.");
}

}  // namespace strata::python
