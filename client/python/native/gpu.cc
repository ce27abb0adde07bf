// strata._gpu (imported as strata.gpu): the CUDA kernels of kernels/*.h on
// caller-owned device memory. Built only when CUDA is (client/python/
// CMakeLists.txt). Pointers are torch tensors (their data_ptr()) or ints;
// `stream` is a torch.cuda.Stream, an int cudaStream_t, or None (the legacy
// default stream). Launches are asynchronous on the stream, as in C++: the
// caller keeps every tensor alive until the stream has run the kernel. A
// kernel's workspace, when it needs one, is stream-ordered memory
// (cudaMallocAsync / cudaFreeAsync on the same stream). Errors the host can
// see (Validate) raise at once; device-side data errors go to `error_flags`
// (a device uint32 the caller zeroes and reads; check_error_flags turns its
// value into the exception).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/python/native/codec_spec.h"
#include "client/python/native/keys.h"
#include "client/python/native/status.h"
#include "kernels/blend_kernels.h"
#include "kernels/kernel_errors.h"
#include "kernels/paged_kv_kernels.h"
#include "kernels/quant_kernels.h"
#include "kernels/rope_kernels.h"

namespace py = pybind11;

namespace strata::python {
namespace {

using kvstore::BlockShape;

// A device address: an int, or an object with data_ptr() (torch.Tensor).
uintptr_t Ptr(py::handle obj, const char* field, bool optional = false) {
  if (obj.is_none()) {
    if (optional) return 0;
    ThrowInvalidArgument(field, "is None");
  }
  if (py::isinstance<py::int_>(obj)) return obj.cast<uintptr_t>();
  if (py::hasattr(obj, "data_ptr")) {
    if (py::hasattr(obj, "device")) {
      const std::string type = py::str(obj.attr("device").attr("type"));
      if (type != "cuda") ThrowInvalidArgument(field, "a " + type + " tensor; kernels need CUDA memory");
    }
    return obj.attr("data_ptr")().cast<uintptr_t>();
  }
  ThrowInvalidArgument(field, "must be a CUDA tensor or an int device address");
}

cudaStream_t StreamOf(py::handle stream) {
  if (stream.is_none()) return nullptr;
  if (py::hasattr(stream, "cuda_stream")) {
    return reinterpret_cast<cudaStream_t>(stream.attr("cuda_stream").cast<uintptr_t>());
  }
  return reinterpret_cast<cudaStream_t>(stream.cast<uintptr_t>());
}

// Params bytes from a spec string or 32 bytes (block_header's codec_params).
codecs::CodecParams ParamsOf(py::handle codec) {
  if (py::isinstance<py::str>(codec)) {
    const CodecSpec spec = ValueOrThrow(ParseCodecSpec(codec.cast<std::string>()));
    if (spec.id != codecs::CodecId::kQuant) ThrowInvalidArgument("codec", "must be a quant spec");
    return spec.params;
  }
  const std::string b = codec.cast<std::string>();
  codecs::CodecParams p{};
  if (b.size() != p.size()) ThrowInvalidArgument("codec", "params must be 32 bytes");
  std::copy(b.begin(), b.end(), p.begin());
  return p;
}

// Validate, workspace, Launch, with the GIL released around the launch.
template <typename Params>
void Run(const Params& params, cudaStream_t stream) {
  ThrowIfError(kernels::Validate(params));
  const size_t ws_bytes = kernels::WorkspaceBytes(params);
  absl::Status st;
  {
    py::gil_scoped_release release;
    void* ws = nullptr;
    if (ws_bytes > 0) {
      const cudaError_t e = cudaMallocAsync(&ws, ws_bytes, stream);
      if (e != cudaSuccess) {
        st = absl::ResourceExhaustedError(absl::StrCat(
            "workspace: cudaMallocAsync of ", ws_bytes, " bytes: ", cudaGetErrorString(e)));
      }
    }
    if (st.ok()) st = kernels::Launch(params, ws, stream);
    if (ws != nullptr) cudaFreeAsync(ws, stream);
  }
  ThrowIfError(st);
}

kernels::PagedCacheDesc CacheOf(py::handle shape, const std::string& layout,
                                uint32_t num_pages, uint32_t page_size) {
  kernels::PagedCacheDesc c;
  c.shape = BlockShapeFromPy(shape);
  if (layout == "page_major") {
    c.layout = kernels::PagedLayout::kPageMajor;
  } else if (layout == "kv_major") {
    c.layout = kernels::PagedLayout::kKvMajor;
  } else {
    ThrowInvalidArgument("layout", "\"" + layout + "\" is not page_major or kv_major");
  }
  c.num_pages = num_pages;
  c.page_size = page_size;
  return c;
}

std::vector<const void*> LayerPointers(py::sequence caches) {
  std::vector<const void*> out;
  for (size_t i = 0; i < py::len(caches); ++i) {
    out.push_back(reinterpret_cast<const void*>(
        Ptr(caches[i], absl::StrCat("layer_caches[", i, "]").c_str())));
  }
  return out;
}

}  // namespace

void RegisterGpu(py::module_& m) {
  m.def("quant_payload_bytes", [](py::handle shape, py::handle codec) {
    return ValueOrThrow(kernels::QuantPayloadBytes(BlockShapeFromPy(shape), ParamsOf(codec)));
  }, py::arg("shape"), py::arg("codec"));

  m.def("quant_encode", [](py::handle kv, py::handle payload, py::handle shape,
                           py::handle codec, py::handle error_flags, py::handle stream) {
    kernels::QuantEncodeParams p;
    p.shape = BlockShapeFromPy(shape);
    p.codec_params = ParamsOf(codec);
    p.kv = reinterpret_cast<const void*>(Ptr(kv, "kv"));
    p.payload = reinterpret_cast<void*>(Ptr(payload, "payload"));
    p.payload_bytes = ValueOrThrow(kernels::QuantPayloadBytes(p.shape, p.codec_params));
    p.error_flags = reinterpret_cast<uint32_t*>(Ptr(error_flags, "error_flags", true));
    Run(p, StreamOf(stream));
    return p.payload_bytes;
  }, py::arg("kv"), py::arg("payload"), py::arg("shape"), py::arg("codec"),
     py::kw_only(), py::arg("error_flags") = py::none(), py::arg("stream") = py::none(),
     "KIVI encode of a raw [2][L][T][H][D] block into its payload; returns the payload bytes.");

  m.def("quant_decode", [](py::handle payload, py::handle kv, py::handle shape,
                           py::handle codec, uint32_t layer_begin, uint32_t layer_count,
                           py::handle error_flags, py::handle stream) {
    kernels::QuantDecodeParams p;
    p.shape = BlockShapeFromPy(shape);
    p.codec_params = ParamsOf(codec);
    p.payload = reinterpret_cast<const void*>(Ptr(payload, "payload"));
    p.payload_bytes = ValueOrThrow(kernels::QuantPayloadBytes(p.shape, p.codec_params));
    p.kv = reinterpret_cast<void*>(Ptr(kv, "kv"));
    p.layer_begin = layer_begin;
    p.layer_count = layer_count;
    p.error_flags = reinterpret_cast<uint32_t*>(Ptr(error_flags, "error_flags", true));
    Run(p, StreamOf(stream));
  }, py::arg("payload"), py::arg("kv"), py::arg("shape"), py::arg("codec"),
     py::kw_only(), py::arg("layer_begin") = 0, py::arg("layer_count") = 0,
     py::arg("error_flags") = py::none(), py::arg("stream") = py::none(),
     "KIVI decode of a payload (96 bytes into a block) into raw [2][L][T][H][D].");

  m.def("paged_gather", [](py::sequence layer_caches, py::handle page_ids, py::handle block,
                           py::handle shape, const std::string& layout, uint32_t num_pages,
                           uint32_t page_size, py::handle error_flags, py::handle stream) {
    const std::vector<const void*> layers = LayerPointers(layer_caches);
    kernels::PagedGatherParams p;
    p.cache = CacheOf(shape, layout, num_pages, page_size);
    if (layers.size() != p.cache.shape.num_layers) {
      ThrowInvalidArgument("layer_caches", absl::StrCat(layers.size(), " caches for ",
                                                        p.cache.shape.num_layers, " layers"));
    }
    p.layer_caches = layers.data();
    p.page_ids = reinterpret_cast<const int32_t*>(Ptr(page_ids, "page_ids"));
    p.block = reinterpret_cast<void*>(Ptr(block, "block"));
    p.error_flags = reinterpret_cast<uint32_t*>(Ptr(error_flags, "error_flags", true));
    Run(p, StreamOf(stream));
  }, py::arg("layer_caches"), py::arg("page_ids"), py::arg("block"), py::arg("shape"),
     py::kw_only(), py::arg("layout") = "page_major", py::arg("num_pages"),
     py::arg("page_size"), py::arg("error_flags") = py::none(), py::arg("stream") = py::none(),
     "Gathers a chunk from per-layer paged caches (vLLM) into a raw block.");

  m.def("paged_scatter", [](py::handle block, py::sequence layer_caches, py::handle page_ids,
                            py::handle shape, const std::string& layout, uint32_t num_pages,
                            uint32_t page_size, py::handle error_flags, py::handle stream) {
    const std::vector<const void*> layers = LayerPointers(layer_caches);
    std::vector<void*> writable(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) writable[i] = const_cast<void*>(layers[i]);
    kernels::PagedScatterParams p;
    p.cache = CacheOf(shape, layout, num_pages, page_size);
    if (writable.size() != p.cache.shape.num_layers) {
      ThrowInvalidArgument("layer_caches", absl::StrCat(writable.size(), " caches for ",
                                                        p.cache.shape.num_layers, " layers"));
    }
    p.layer_caches = writable.data();
    p.page_ids = reinterpret_cast<const int32_t*>(Ptr(page_ids, "page_ids"));
    p.block = reinterpret_cast<const void*>(Ptr(block, "block"));
    p.error_flags = reinterpret_cast<uint32_t*>(Ptr(error_flags, "error_flags", true));
    Run(p, StreamOf(stream));
  }, py::arg("block"), py::arg("layer_caches"), py::arg("page_ids"), py::arg("shape"),
     py::kw_only(), py::arg("layout") = "page_major", py::arg("num_pages"),
     py::arg("page_size"), py::arg("error_flags") = py::none(), py::arg("stream") = py::none(),
     "Scatters a raw block into per-layer paged caches (vLLM).");

  m.def("rope_shift", [](py::handle src, py::handle dst, py::handle dtype, uint32_t head_dim,
                         uint64_t num_vectors, int32_t delta, float theta,
                         const std::string& style, py::handle stream) {
    kernels::RopeShiftParams p;
    p.dtype = DTypeFromPy(dtype);
    p.head_dim = head_dim;
    p.num_vectors = num_vectors;
    p.delta = delta;
    p.theta = theta;
    if (style == "interleaved") {
      p.style = kernels::RopeStyle::kInterleaved;
    } else if (style == "neox") {
      p.style = kernels::RopeStyle::kNeoxHalves;
    } else {
      ThrowInvalidArgument("style", "\"" + style + "\" is not interleaved or neox");
    }
    p.src = reinterpret_cast<const void*>(Ptr(src, "src"));
    p.dst = reinterpret_cast<void*>(Ptr(dst, "dst"));
    Run(p, StreamOf(stream));
  }, py::arg("src"), py::arg("dst"), py::kw_only(), py::arg("dtype"), py::arg("head_dim"),
     py::arg("num_vectors"), py::arg("delta"), py::arg("theta") = 10000.0f,
     py::arg("style") = "interleaved", py::arg("stream") = py::none(),
     "Re-rotates post-RoPE keys by `delta` positions (src may equal dst).");

  m.def("blend_select", [](py::handle fresh_keys, py::handle cached_keys, py::handle selected,
                           py::handle dtype, uint32_t num_tokens, uint32_t kv_heads,
                           uint32_t head_dim, uint32_t k, py::handle deviations,
                           py::handle stream) {
    kernels::BlendSelectParams p;
    p.dtype = DTypeFromPy(dtype);
    p.num_tokens = num_tokens;
    p.kv_heads = kv_heads;
    p.head_dim = head_dim;
    p.k = k;
    p.fresh_keys = reinterpret_cast<const void*>(Ptr(fresh_keys, "fresh_keys"));
    p.cached_keys = reinterpret_cast<const void*>(Ptr(cached_keys, "cached_keys"));
    p.selected = reinterpret_cast<int32_t*>(Ptr(selected, "selected"));
    p.deviations = reinterpret_cast<float*>(Ptr(deviations, "deviations", true));
    Run(p, StreamOf(stream));
  }, py::arg("fresh_keys"), py::arg("cached_keys"), py::arg("selected"), py::kw_only(),
     py::arg("dtype"), py::arg("num_tokens"), py::arg("kv_heads"), py::arg("head_dim"),
     py::arg("k"), py::arg("deviations") = py::none(), py::arg("stream") = py::none(),
     "CacheBlend: the k tokens whose keys deviate most (increasing indices).");

  m.def("check_error_flags", [](uint32_t flags) {
    ThrowIfError(kernels::ErrorFlagsToStatus(flags));
  }, py::arg("flags"), "Raises the strata error of a kernel error-flags word (0: OK).");
}

}  // namespace strata::python

PYBIND11_MODULE(_gpu, m) {
  m.doc() = "Strata CUDA kernels (docs/python.md, kernels/*.h)";
  strata::python::RegisterStatus(m);  // This module's own StatusError translator.
  strata::python::RegisterGpu(m);
}
