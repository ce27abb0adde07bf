// Blocks of the strata package: encode_kv / decode_kv / block_header over
// codecs/codec.h and kvstore/block_format.h, and CodecProfile.
//
// Python arrays are [num_layers, 2, num_tokens, num_kv_heads, head_dim]
// (layers first, what engines hold per chunk); the block layout is
// [2][layers][tokens][heads][dim] (docs/format.md). kv_first=True takes and
// returns the block layout unchanged.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/python/native/buffers.h"
#include "client/python/native/codec_spec.h"
#include "client/python/native/keys.h"
#include "client/python/native/module.h"
#include "client/python/native/status.h"
#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_tensor.h"
#include "kvstore/block_format.h"
#include "pybind11/numpy.h"
#include "pybind11/stl.h"

namespace py = pybind11;

namespace strata::python {
namespace {

using codecs::CodecProfile;
using codecs::DecodeSelection;
using codecs::KvTensor;
using kvstore::BlockShape;
using kvstore::DType;

using ProfilePtr = std::shared_ptr<const CodecProfile>;

// Copies [2][L][rest] <-> [L][2][rest] (rest = `row` bytes); a plain copy when
// both sides share a layout.
void CopyLayout(const uint8_t* src, uint8_t* dst, uint32_t layers, size_t row,
                bool src_kv_first, bool dst_kv_first) {
  if (src_kv_first == dst_kv_first) {
    std::memcpy(dst, src, size_t{2} * layers * row);
    return;
  }
  for (uint32_t l = 0; l < layers; ++l) {
    for (uint32_t kv = 0; kv < 2; ++kv) {
      const size_t kv_first = (size_t{kv} * layers + l) * row;
      const size_t layers_first = (size_t{l} * 2 + kv) * row;
      std::memcpy(dst + (dst_kv_first ? kv_first : layers_first),
                  src + (src_kv_first ? kv_first : layers_first), row);
    }
  }
}

const char* NumpyDtypeOf(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "uint16";  // numpy has no bfloat16.
    case DType::kFloat8E4M3: return "uint8";
    case DType::kFloat32: return "float32";
  }
  return "uint8";
}

// Whether memory of element type `e` holds `dtype`'s storage bit for bit.
bool StoresDtype(const ElementType& e, DType dtype) {
  if (e.itemsize != kvstore::DTypeSize(dtype)) return false;
  switch (dtype) {
    case DType::kFloat16: return e.kind != 'b';
    case DType::kBFloat16: return e.kind != 'f';
    case DType::kFloat32: return e.kind == 'f' || e.kind == 'V';
    case DType::kFloat8E4M3: return e.kind != 'f';
  }
  return false;
}

bool IsFloat32(const ElementType& e) { return e.kind == 'f' && e.itemsize == 4; }

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

ProfilePtr ProfileFromPy(py::handle obj) {
  if (obj.is_none()) return nullptr;
  if (py::isinstance<CodecProfile>(obj)) return obj.cast<std::shared_ptr<CodecProfile>>();
  if (py::isinstance<py::str>(obj) || py::hasattr(obj, "__fspath__")) {
    const std::string path = py::str(py::module_::import("os").attr("fspath")(obj));
    return std::make_shared<CodecProfile>(ValueOrThrow(CodecProfile::ReadFile(path)));
  }
  Memory m = Memory::Readable(obj, "profile");
  return std::make_shared<CodecProfile>(ValueOrThrow(CodecProfile::Parse(m.bytes())));
}

// [begin, end) from an int, a slice/range with step 1, or a 2-tuple.
bool RangeFromPy(py::handle obj, uint32_t count, const char* field,
                 uint32_t* begin, uint32_t* end) {
  auto bounded = [&](int64_t v) -> uint32_t {
    if (v < 0 || v > int64_t{UINT32_MAX}) {
      ThrowInvalidArgument(field, absl::StrCat(v, " is out of range"));
    }
    return static_cast<uint32_t>(v);
  };
  if (py::isinstance<py::int_>(obj)) {
    int64_t i = obj.cast<int64_t>();
    if (i < 0) i += count;
    *begin = bounded(i);
    *end = *begin + 1;
    return true;
  }
  if (py::isinstance<py::slice>(obj) || py::isinstance(obj, py::module_::import("builtins").attr("range"))) {
    py::object s = py::reinterpret_borrow<py::object>(obj);
    if (!py::isinstance<py::slice>(obj)) {
      s = py::slice(obj.attr("start"), obj.attr("stop"), obj.attr("step"));
    }
    py::tuple idx = s.attr("indices")(count);
    if (idx[2].cast<int64_t>() != 1) return false;
    *begin = bounded(idx[0].cast<int64_t>());
    *end = bounded(std::max(idx[0].cast<int64_t>(), idx[1].cast<int64_t>()));
    return true;
  }
  if (py::isinstance<py::tuple>(obj) && py::len(obj) == 2) {
    *begin = bounded(obj[py::int_(0)].cast<int64_t>());
    *end = bounded(obj[py::int_(1)].cast<int64_t>());
    return true;
  }
  return false;
}

DecodeSelection SelectionFromPy(py::handle layers, py::handle tokens,
                                const BlockShape& shape) {
  DecodeSelection sel;
  if (!layers.is_none() &&
      !RangeFromPy(layers, shape.num_layers, "layers", &sel.layer_begin,
                   &sel.layer_end)) {
    ThrowInvalidArgument("layers", "must be an int, a slice/range with step 1 "
                                   "or a (begin, end) tuple");
  }
  if (!tokens.is_none() &&
      !RangeFromPy(tokens, shape.num_tokens, "tokens", &sel.token_begin,
                   &sel.token_end)) {
    // A stepped slice/range or a list/array of indices.
    py::object seq = py::reinterpret_borrow<py::object>(tokens);
    if (py::isinstance<py::slice>(tokens)) {
      seq = py::module_::import("builtins").attr("range")(
          *py::tuple(tokens.attr("indices")(shape.num_tokens)));
    }
    sel.token_indices = TokensFromPy(seq, "tokens");
  }
  return sel;
}

// A new bytes object of `size` bytes to fill in place (*data, under the GIL
// or not: nothing else sees it before it is returned).
py::bytes UninitializedBytes(size_t size, uint8_t** data) {
  py::bytes out = py::reinterpret_steal<py::bytes>(
      PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size)));
  if (!out) throw py::error_already_set();
  *data = reinterpret_cast<uint8_t*>(PyBytes_AsString(out.ptr()));
  return out;
}

py::bytes EncodeKv(py::handle kv, const std::string& codec, py::handle profile,
                   const std::string& tenant, const std::string& model,
                   py::handle dtype, bool kv_first) {
  Memory m = Memory::Readable(kv, "kv");
  const std::vector<int64_t>& s = m.shape();
  if (s.size() != 5 || s[kv_first ? 0 : 1] != 2) {
    ThrowInvalidArgument("kv", absl::StrCat(
        "shape ", ShapeText(s), " is not ",
        kv_first ? "[2, layers, tokens, kv_heads, head_dim]"
                 : "[layers, 2, tokens, kv_heads, head_dim]"));
  }
  const ElementType e = m.element();
  DType dt;
  if (!dtype.is_none()) {
    dt = DTypeFromPy(dtype);
  } else if (e.kind == 'f' && e.itemsize == 2) {
    dt = DType::kFloat16;
  } else if (e.itemsize == 2 && e.kind != 'V') {
    dt = DType::kBFloat16;
  } else if (IsFloat32(e)) {
    dt = DType::kFloat32;
  } else if (e.itemsize == 1 && e.kind != 'V') {
    dt = DType::kFloat8E4M3;
  } else {
    ThrowInvalidArgument("kv", "element type is not float16, bfloat16 bits "
                               "(uint16), float8 bits (uint8) or float32");
  }
  const bool from_float32 = IsFloat32(e) && dt != DType::kFloat32;
  if (!from_float32 && !StoresDtype(e, dt)) {
    ThrowInvalidArgument("kv", absl::StrCat(
        "elements of ", e.itemsize, " bytes (kind '", std::string(1, e.kind),
        "') do not hold ", DTypePyName(dt), "; pass its bits or float32 values"));
  }
  BlockShape shape{dt, static_cast<uint32_t>(s[kv_first ? 1 : 0]),
                   static_cast<uint32_t>(s[2]), static_cast<uint32_t>(s[3]),
                   static_cast<uint32_t>(s[4])};
  for (int i = 0; i < 5; ++i) {
    if (s[i] <= 0 || s[i] > int64_t{UINT32_MAX}) {
      ThrowInvalidArgument("kv", "shape " + ShapeText(s) + " has an empty or huge dimension");
    }
  }
  ThrowIfError(shape.Validate());
  const CodecSpec spec = ValueOrThrow(ParseCodecSpec(codec));
  const ProfilePtr prof = ProfileFromPy(profile);
  (void)tenant;  // Labels belong to put(); blocks carry none (docs/python.md).
  (void)model;
  const size_t elements = shape.ElementCount();
  const size_t row = elements / (size_t{2} * shape.num_layers) *
                     (from_float32 ? 4 : kvstore::DTypeSize(dt));

  if (spec.id == codecs::CodecId::kRaw && !from_float32) {
    // Raw: the block is the header and the re-laid-out bytes; write it
    // straight into the returned bytes object.
    const size_t total = kvstore::EncodedBlockSize(shape.RawBytes());
    uint8_t* dst = nullptr;
    py::bytes out = UninitializedBytes(total, &dst);
    absl::Status st;
    {
      py::gil_scoped_release release;
      std::vector<uint8_t> relaid;
      absl::Span<const uint8_t> payload = m.bytes();
      if (!kv_first) {
        relaid.resize(m.size());
        CopyLayout(m.data(), relaid.data(), shape.num_layers, row, false, true);
        payload = relaid;
      }
      st = kvstore::EncodeBlockInto(shape, codecs::CodecId::kRaw, {}, payload,
                                    absl::MakeSpan(dst, total));
    }
    ThrowIfError(st);
    return out;
  }

  absl::StatusOr<std::vector<uint8_t>> block;
  {
    py::gil_scoped_release release;
    KvTensor t;
    t.shape = shape;
    if (from_float32) {
      t.data.resize(elements);
      CopyLayout(m.data(), reinterpret_cast<uint8_t*>(t.data.data()),
                 shape.num_layers, row, kv_first, true);
      block = codecs::EncodeKvBlock(t, spec.id, spec.params, prof.get());
    } else {
      std::vector<uint8_t> relaid(m.size());
      CopyLayout(m.data(), relaid.data(), shape.num_layers, row, kv_first, true);
      absl::StatusOr<KvTensor> from_raw = codecs::KvTensorFromRaw(shape, relaid);
      if (!from_raw.ok()) {
        block = from_raw.status();
      } else {
        block = codecs::EncodeKvBlock(*from_raw, spec.id, spec.params, prof.get());
      }
    }
  }
  const std::vector<uint8_t> bytes = ValueOrThrow(std::move(block));
  return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// A block from a payload that was encoded elsewhere (e.g. on the GPU by
// strata.gpu.quant_encode): header + checksum + payload, the same bytes
// encode_kv gives for the same KV and codec.
py::bytes MakeBlock(py::handle payload, py::handle shape, const std::string& codec) {
  Memory p = Memory::Readable(payload, "payload");
  const BlockShape s = BlockShapeFromPy(shape);
  const CodecSpec spec = ValueOrThrow(ParseCodecSpec(codec));
  // The params must fit the shape (as encode_kv checks them); the payload
  // itself is the encoder's, checked by the decoder when it is read.
  if (spec.id != codecs::CodecId::kRaw) {  // Raw: EncodeBlockInto checks the length.
    ThrowIfError(ValueOrThrow(codecs::FindCodec(spec.id))->ValidateParams(s, spec.params));
  }
  const size_t total = kvstore::EncodedBlockSize(p.size());
  uint8_t* dst = nullptr;
  py::bytes out = UninitializedBytes(total, &dst);
  absl::Status st;
  {
    py::gil_scoped_release release;
    st = kvstore::EncodeBlockInto(s, spec.id, spec.params, p.bytes(),
                                  absl::MakeSpan(dst, total));
  }
  ThrowIfError(st);
  return out;
}

py::object DecodeKv(py::handle blk, py::object out, py::handle layers,
                    py::handle tokens, py::handle profile, bool kv_first) {
  Memory b = Memory::Readable(blk, "block");
  const kvstore::BlockHeader hdr = ValueOrThrow(kvstore::ParseBlockHeader(b.bytes()));
  const DType dt = hdr.shape.dtype;
  const DecodeSelection sel = SelectionFromPy(layers, tokens, hdr.shape);
  const BlockShape sel_shape = ValueOrThrow(sel.Resolve(hdr.shape));
  const ProfilePtr prof = ProfileFromPy(profile);
  const std::vector<int64_t> out_shape =
      kv_first ? std::vector<int64_t>{2, sel_shape.num_layers, sel_shape.num_tokens,
                                      sel_shape.num_kv_heads, sel_shape.head_dim}
               : std::vector<int64_t>{sel_shape.num_layers, 2, sel_shape.num_tokens,
                                      sel_shape.num_kv_heads, sel_shape.head_dim};
  if (out.is_none()) {
    out = py::module_::import("numpy").attr("empty")(py::cast(out_shape),
                                                     NumpyDtypeOf(dt));
  }
  Memory o = Memory::Writable(out, "out");
  const bool to_float32 = IsFloat32(o.element()) && dt != DType::kFloat32;
  if (!to_float32 && !StoresDtype(o.element(), dt)) {
    ThrowInvalidArgument("out", absl::StrCat(
        "elements of ", o.element().itemsize, " bytes cannot hold ",
        DTypePyName(dt), " (use its bits or float32)"));
  }
  const size_t elements = sel_shape.ElementCount();
  const size_t itemsize = to_float32 ? 4 : kvstore::DTypeSize(dt);
  if (o.size() != elements * itemsize) {
    ThrowInvalidArgument("out", absl::StrCat(
        o.size(), " bytes; the selection ", ShapeText(out_shape), " needs ",
        elements * itemsize));
  }
  const size_t row = elements / (size_t{2} * sel_shape.num_layers) * itemsize;
  const bool whole = layers.is_none() && tokens.is_none();
  absl::Status st;
  {
    py::gil_scoped_release release;
    if (whole && hdr.codec == codecs::CodecId::kRaw && !to_float32) {
      absl::StatusOr<kvstore::BlockView> view = kvstore::ParseBlock(b.bytes());
      st = view.status();
      if (st.ok()) {
        CopyLayout(view->payload.data(), o.data(), sel_shape.num_layers, row,
                   true, kv_first);
      }
    } else {
      absl::StatusOr<KvTensor> t = codecs::DecodeKvBlock(b.bytes(), prof.get(), sel);
      st = t.status();
      if (st.ok() && to_float32) {
        CopyLayout(reinterpret_cast<const uint8_t*>(t->data.data()), o.data(),
                   sel_shape.num_layers, row, true, kv_first);
      } else if (st.ok()) {
        const std::vector<uint8_t> raw = codecs::KvTensorToRaw(*t);
        CopyLayout(raw.data(), o.data(), sel_shape.num_layers, row, true, kv_first);
      }
    }
  }
  ThrowIfError(st);
  return out;
}

py::dict BlockHeaderOf(py::handle blk) {
  Memory b = Memory::Readable(blk, "block");
  absl::StatusOr<kvstore::BlockView> view;
  {
    py::gil_scoped_release release;
    view = kvstore::ParseBlock(b.bytes());
  }
  ThrowIfError(view.status());
  const kvstore::BlockHeader& h = view->header;
  py::dict d;
  d["format_version"] = h.format_version;
  d["layout"] = "kv_layers_tokens_heads_dim";
  d["codec"] = CodecName(h.codec);
  absl::StatusOr<std::string> spec = FormatCodecSpec(h.codec, h.codec_params);
  d["codec_spec"] = spec.ok() ? py::object(py::str(*spec)) : py::object(py::none());
  d["codec_params"] = py::bytes(reinterpret_cast<const char*>(h.codec_params.data()),
                                h.codec_params.size());
  d["dtype"] = DTypePyName(h.shape.dtype);
  d["num_layers"] = h.shape.num_layers;
  d["num_tokens"] = h.shape.num_tokens;
  d["num_kv_heads"] = h.shape.num_kv_heads;
  d["head_dim"] = h.shape.head_dim;
  d["payload_length"] = h.payload_length;
  d["block_bytes"] = kvstore::EncodedBlockSize(h.payload_length);
  d["raw_bytes"] = h.shape.RawBytes();
  d["checksum"] = h.checksum;
  d["bits_per_element"] = codecs::BitsPerElement(b.bytes());
  return d;
}

}  // namespace

void RegisterBlocks(py::module_& m) {
  py::class_<CodecProfile, std::shared_ptr<CodecProfile>>(
      m, "CodecProfile", "Per-model calibration data (codecs/codec_profile.h).")
      .def_static("load", [](const std::string& path) {
        return std::make_shared<CodecProfile>(ValueOrThrow(CodecProfile::ReadFile(path)));
      }, py::arg("path"))
      .def_static("from_bytes", [](py::handle data) {
        Memory mem = Memory::Readable(data, "data");
        return std::make_shared<CodecProfile>(ValueOrThrow(CodecProfile::Parse(mem.bytes())));
      }, py::arg("data"))
      .def_property_readonly("model_id", &CodecProfile::model_id)
      .def_property_readonly("id", &CodecProfile::id)
      .def_property_readonly("tensor_names", [](const CodecProfile& p) {
        std::vector<std::string> names;
        for (const auto& [name, t] : p.tensors()) names.push_back(name);
        return names;
      })
      .def("to_bytes", [](const CodecProfile& p) {
        const std::vector<uint8_t> b = p.Serialize();
        return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
      });

  m.def("encode_kv", &EncodeKv, py::arg("kv"), py::arg("codec") = "raw",
        py::arg("profile") = py::none(), py::arg("tenant") = "",
        py::arg("model") = "", py::kw_only(), py::arg("dtype") = py::none(),
        py::arg("kv_first") = false,
        "Encodes a KV array into a checksummed block (docs/python.md).");
  m.def("make_block", &MakeBlock, py::arg("payload"), py::arg("shape"),
        py::arg("codec"),
        "A checksummed block from an already encoded payload (docs/python.md).");
  m.def("decode_kv", &DecodeKv, py::arg("blk"), py::arg("out") = py::none(),
        py::arg("layers") = py::none(), py::arg("tokens") = py::none(),
        py::kw_only(), py::arg("profile") = py::none(),
        py::arg("kv_first") = false,
        "Verifies and decodes (a selection of) a block into a numpy array or "
        "`out`.");
  m.def("block_header", &BlockHeaderOf, py::arg("blk"),
        "The verified header of a block, as a dict.");
  m.def("parse_codec_spec", [](const std::string& spec) {
    const CodecSpec s = ValueOrThrow(ParseCodecSpec(spec));
    return py::make_tuple(CodecName(s.id),
                          py::bytes(reinterpret_cast<const char*>(s.params.data()),
                                    s.params.size()));
  }, py::arg("spec"), "(codec name, 32 params bytes) of a codec spec string.");
}

}  // namespace strata::python
