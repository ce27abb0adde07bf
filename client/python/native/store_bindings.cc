// strata.Store (the shared interface), strata.LocalStore, strata.RemoteStore
// and strata.Prefetch over the StoreBackend interface (stores.h).
//
// Every call resolves its Python arguments (keys, buffers) with the GIL held,
// then runs the backend with the GIL released; a miss (NOT_FOUND) becomes
// None / False, every other error the strata exception of its code.
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/python/native/buffers.h"
#include "client/python/native/keys.h"
#include "client/python/native/module.h"
#include "client/python/native/status.h"
#include "client/python/native/stores.h"
#include "pybind11/stl.h"

namespace py = pybind11;

namespace strata::python {
namespace {

bool IsMiss(const absl::Status& s) { return s.code() == absl::StatusCode::kNotFound; }

// Copies a held block into a new bytes object (the copy without the GIL).
py::bytes ToBytes(const HeldBlock& block) {
  const absl::Span<const uint8_t> b = block.bytes();
  py::bytes out = py::reinterpret_steal<py::bytes>(
      PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(b.size())));
  if (!out) throw py::error_already_set();
  char* dst = PyBytes_AsString(out.ptr());
  {
    py::gil_scoped_release release;
    std::memcpy(dst, b.data(), b.size());
  }
  return out;
}

class PyPrefetch {
 public:
  explicit PyPrefetch(std::shared_ptr<PrefetchHandle> handle)
      : handle_(std::move(handle)) {}

  bool Done() {
    std::shared_ptr<PrefetchHandle> h = handle_;
    return h == nullptr || h->Wait(absl::ZeroDuration());
  }

  bool Wait(std::optional<double> timeout_s) {
    std::shared_ptr<PrefetchHandle> h = handle_;  // result() may drop handle_.
    if (h == nullptr) return true;
    const absl::Duration timeout = TimeoutOf(timeout_s);
    py::gil_scoped_release release;
    return h->Wait(timeout);
  }

  py::object Result(std::optional<double> timeout_s) {
    if (cached_) return cached_;
    std::shared_ptr<PrefetchHandle> h = handle_;
    const absl::Duration timeout = TimeoutOf(timeout_s);
    bool done = false;
    std::vector<BlockResult> results;
    {
      py::gil_scoped_release release;
      done = h->Wait(timeout);
      if (done) results = h->Take();
    }
    if (!done) {
      throw StatusError(absl::DeadlineExceededError(absl::StrCat(
          "timeout_s: the prefetch is not done after ", *timeout_s, " s")));
    }
    if (cached_) return cached_;  // Another thread finished meanwhile.
    py::list out;
    for (const BlockResult& r : results) {
      if (r.ok()) {
        out.append(ToBytes(**r));
      } else if (IsMiss(r.status())) {
        out.append(py::none());
      } else {
        throw StatusError(r.status());
      }
    }
    cached_ = out;
    // The bytes are copied: drop the handle (its leases / buffers), so
    // nothing here keeps a closed store open.
    handle_.reset();
    return out;
  }

 private:
  static absl::Duration TimeoutOf(std::optional<double> timeout_s) {
    if (!timeout_s.has_value()) return absl::InfiniteDuration();
    if (*timeout_s < 0) ThrowInvalidArgument("timeout_s", "negative");
    return absl::Seconds(*timeout_s);
  }

  // Read and replaced only under the GIL; copied before any wait.
  std::shared_ptr<PrefetchHandle> handle_;
  py::object cached_;  // The result list, once built.
};

// The Python-facing store: a backend until close().
class PyStore {
 public:
  explicit PyStore(std::shared_ptr<StoreBackend> backend)
      : backend_(std::move(backend)) {}
  virtual ~PyStore() = default;

  std::shared_ptr<StoreBackend> backend() const {
    if (backend_ == nullptr) {
      throw StatusError(absl::FailedPreconditionError("store: closed"));
    }
    return backend_;
  }
  // Waits for this store's unfinished prefetches (their results stay
  // readable), then releases the backend: the TieredStore closes (its SSD
  // directory can be reopened) or the client disconnects.
  void Close() {
    std::shared_ptr<StoreBackend> b = std::move(backend_);
    std::vector<std::shared_ptr<PrefetchHandle>> pending;
    for (auto& w : prefetches_) {
      if (auto h = w.lock()) pending.push_back(std::move(h));
    }
    prefetches_.clear();
    py::gil_scoped_release release;  // Closing may flush the SSD tier.
    for (auto& h : pending) h->Wait(absl::InfiniteDuration());
    pending.clear();
    b.reset();
  }
  bool closed() const { return backend_ == nullptr; }

  bool Put(py::handle key, py::handle block, bool durable,
           const std::string& tenant, const std::string& model) {
    const BlockKey k = KeyFromPy(key);
    Memory m = Memory::Readable(block, "block");
    auto b = backend();
    absl::StatusOr<bool> r;
    {
      py::gil_scoped_release release;
      r = b->Put(k, m.bytes(), PutArgs{durable, tenant, model});
    }
    return ValueOrThrow(std::move(r));
  }

  std::vector<bool> BatchPut(py::handle keys, py::sequence blocks, bool durable,
                             const std::string& tenant, const std::string& model) {
    const std::vector<BlockKey> ks = KeysFromPy(keys);
    if (py::len(blocks) != ks.size()) {
      ThrowInvalidArgument("blocks", absl::StrCat(py::len(blocks), " blocks for ",
                                                  ks.size(), " keys"));
    }
    std::vector<Memory> mems;
    std::vector<absl::Span<const uint8_t>> spans;
    for (size_t i = 0; i < ks.size(); ++i) {
      mems.push_back(Memory::Readable(blocks[i], absl::StrCat("blocks[", i, "]")));
      spans.push_back(mems.back().bytes());
    }
    auto b = backend();
    std::vector<absl::StatusOr<bool>> rs;
    {
      py::gil_scoped_release release;
      rs = b->BatchPut(ks, spans, PutArgs{durable, tenant, model});
    }
    std::vector<bool> out;
    for (auto& r : rs) out.push_back(ValueOrThrow(std::move(r)));
    return out;
  }

  py::object Get(py::handle key) {
    const BlockKey k = KeyFromPy(key);
    auto b = backend();
    BlockResult r;
    {
      py::gil_scoped_release release;
      r = b->Get(k);
    }
    if (!r.ok() && IsMiss(r.status())) return py::none();
    return ToBytes(*ValueOrThrow(std::move(r)));
  }

  py::object GetInto(py::handle key, py::handle out) {
    const BlockKey k = KeyFromPy(key);
    Memory m = Memory::Writable(out, "out");
    auto b = backend();
    absl::StatusOr<size_t> r;
    {
      py::gil_scoped_release release;
      r = b->GetInto(k, m.writable_bytes());
    }
    if (!r.ok() && IsMiss(r.status())) return py::none();
    return py::int_(ValueOrThrow(std::move(r)));
  }

  py::list BatchGetInto(py::handle keys, py::sequence outs) {
    const std::vector<BlockKey> ks = KeysFromPy(keys);
    if (py::len(outs) != ks.size()) {
      ThrowInvalidArgument("outs", absl::StrCat(py::len(outs), " buffers for ",
                                                ks.size(), " keys"));
    }
    std::vector<Memory> mems;
    std::vector<absl::Span<uint8_t>> spans;
    for (size_t i = 0; i < ks.size(); ++i) {
      mems.push_back(Memory::Writable(outs[i], absl::StrCat("outs[", i, "]")));
      spans.push_back(mems.back().writable_bytes());
    }
    auto b = backend();
    std::vector<absl::StatusOr<size_t>> rs;
    {
      py::gil_scoped_release release;
      rs = b->BatchGetInto(ks, spans);
    }
    py::list out;
    for (auto& r : rs) {
      if (!r.ok() && IsMiss(r.status())) {
        out.append(py::none());
      } else {
        out.append(py::int_(ValueOrThrow(std::move(r))));
      }
    }
    return out;
  }

  std::vector<bool> Exists(py::handle keys) {
    const std::vector<BlockKey> ks = KeysFromPy(keys);
    auto b = backend();
    absl::StatusOr<std::vector<bool>> r;
    {
      py::gil_scoped_release release;
      r = b->Exists(ks);
    }
    return ValueOrThrow(std::move(r));
  }

  size_t LeadingHits(py::handle keys) {
    const std::vector<BlockKey> ks = KeysFromPy(keys);
    auto b = backend();
    absl::StatusOr<size_t> r;
    {
      py::gil_scoped_release release;
      r = b->LeadingHits(ks);
    }
    return ValueOrThrow(std::move(r));
  }

  std::shared_ptr<PyPrefetch> Prefetch(py::handle keys) {
    std::vector<BlockKey> ks = KeysFromPy(keys);
    auto b = backend();
    std::shared_ptr<PrefetchHandle> h;
    {
      py::gil_scoped_release release;
      h = b->Prefetch(std::move(ks));
    }
    std::erase_if(prefetches_, [](const auto& w) { return w.expired(); });
    prefetches_.push_back(h);
    return std::make_shared<PyPrefetch>(std::move(h));
  }

  // True when done, False on a miss.
  template <typename F>
  bool KeyCall(py::handle key, F f) {
    const BlockKey k = KeyFromPy(key);
    auto b = backend();
    absl::Status s;
    {
      py::gil_scoped_release release;
      s = f(*b, k);
    }
    if (IsMiss(s)) return false;
    ThrowIfError(s);
    return true;
  }

  py::dict Stats() {
    auto b = backend();
    absl::StatusOr<StatsValue> r;
    {
      py::gil_scoped_release release;
      r = b->Stats();
    }
    const StatsValue v = ValueOrThrow(std::move(r));
    py::dict d;
    for (const auto& [name, value] : v.counters) d[py::str(name)] = value;
    for (const auto& [name, value] : v.labels) d[py::str(name)] = value;
    py::list tiers;
    for (const auto& [tier, counters] : v.tiers) {
      py::dict t;
      t["tier"] = tier;
      for (const auto& [name, value] : counters) t[py::str(name)] = value;
      tiers.append(t);
    }
    d["tiers"] = tiers;
    return d;
  }

  std::string DataPlane() const { return backend()->DataPlane(); }

 private:
  std::shared_ptr<StoreBackend> backend_;
  std::vector<std::weak_ptr<PrefetchHandle>> prefetches_;  // For close().
};

class PyLocalStore : public PyStore {
 public:
  using PyStore::PyStore;
};
class PyRemoteStore : public PyStore {
 public:
  using PyStore::PyStore;
};

}  // namespace

void RegisterStores(py::module_& m) {
  py::class_<PyPrefetch, std::shared_ptr<PyPrefetch>>(
      m, "Prefetch", "An asynchronous batch read started by Store.prefetch().")
      .def("done", &PyPrefetch::Done, "True once every read finished.")
      .def("wait", &PyPrefetch::Wait, py::arg("timeout_s") = py::none(),
           "Waits (GIL released); True once done, False on timeout.")
      .def("result", &PyPrefetch::Result, py::arg("timeout_s") = py::none(),
           "list[bytes | None], one per key; waits. Raises the first error "
           "that is not a miss; DeadlineExceeded on timeout.");

  py::class_<PyStore>(m, "Store", "The interface of LocalStore and RemoteStore.")
      .def("put", &PyStore::Put, py::arg("key"), py::arg("block"),
           py::arg("durable") = false, py::kw_only(), py::arg("tenant") = "",
           py::arg("model") = "")
      .def("batch_put", &PyStore::BatchPut, py::arg("keys"), py::arg("blocks"),
           py::arg("durable") = false, py::kw_only(), py::arg("tenant") = "",
           py::arg("model") = "")
      .def("get", &PyStore::Get, py::arg("key"))
      .def("get_into", &PyStore::GetInto, py::arg("key"), py::arg("out"))
      .def("batch_get_into", &PyStore::BatchGetInto, py::arg("keys"),
           py::arg("outs"))
      .def("exists", &PyStore::Exists, py::arg("keys"))
      .def("leading_hits", &PyStore::LeadingHits, py::arg("keys"))
      .def("prefetch", &PyStore::Prefetch, py::arg("keys"))
      .def("remove", [](PyStore& s, py::handle key) {
        return s.KeyCall(key, [](StoreBackend& b, const BlockKey& k) {
          return b.Remove(k);
        });
      }, py::arg("key"))
      .def("pin", [](PyStore& s, py::handle key, double ttl_s) {
        return s.KeyCall(key, [ttl_s](StoreBackend& b, const BlockKey& k) {
          return b.Pin(k, absl::Seconds(ttl_s));
        });
      }, py::arg("key"), py::arg("ttl_s"))
      .def("unpin", [](PyStore& s, py::handle key) {
        return s.KeyCall(key, [](StoreBackend& b, const BlockKey& k) {
          return b.Unpin(k);
        });
      }, py::arg("key"))
      .def("stats", &PyStore::Stats)
      .def("close", &PyStore::Close)
      .def_property_readonly("closed", &PyStore::closed)
      .def_property_readonly("data_plane", &PyStore::DataPlane)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyStore& s, py::args) {
        s.Close();
        return false;
      });

  py::class_<PyLocalStore, PyStore>(m, "LocalStore",
                                    "An in-process TieredStore (DRAM + optional SSD).")
      .def(py::init([](uint64_t dram_bytes, std::optional<std::string> ssd_path,
                       uint64_t ssd_bytes, bool write_through, bool ssd_sync_writes,
                       const std::string& dram_policy, const std::string& ssd_policy) {
             LocalStoreArgs a;
             a.dram_bytes = dram_bytes;
             a.ssd_path = ssd_path.value_or("");
             a.ssd_bytes = ssd_bytes;
             a.write_through = write_through;
             a.ssd_sync_writes = ssd_sync_writes;
             a.dram_policy = dram_policy;
             a.ssd_policy = ssd_policy;
             absl::StatusOr<std::shared_ptr<StoreBackend>> b;
             {
               py::gil_scoped_release release;
               b = OpenLocalStore(a);
             }
             return std::make_unique<PyLocalStore>(ValueOrThrow(std::move(b)));
           }),
           py::arg("dram_bytes") = uint64_t{1} << 30, py::arg("ssd_path") = py::none(),
           py::arg("ssd_bytes") = 0, py::kw_only(), py::arg("write_through") = false,
           py::arg("ssd_sync_writes") = false, py::arg("dram_policy") = "lru",
           py::arg("ssd_policy") = "lru");

  py::class_<PyRemoteStore, PyStore>(m, "RemoteStore",
                                     "A stratad, through client::Client.")
      .def(py::init([](const std::string& address, int64_t deadline_ms,
                       const std::string& data_plane, int max_attempts,
                       uint64_t ucx_min_bytes,
                       std::optional<int64_t> local_daemon_uid) {
             RemoteStoreArgs a{address,      deadline_ms,   data_plane,
                               max_attempts, ucx_min_bytes, local_daemon_uid};
             absl::StatusOr<std::shared_ptr<StoreBackend>> b;
             {
               py::gil_scoped_release release;
               b = ConnectRemoteStore(a);
             }
             return std::make_unique<PyRemoteStore>(ValueOrThrow(std::move(b)));
           }),
           py::arg("address"), py::arg("deadline_ms") = 5000,
           py::arg("data_plane") = "auto", py::kw_only(),
           py::arg("max_attempts") = 4, py::arg("ucx_min_bytes") = 0,
           py::arg("local_daemon_uid") = py::none());
}

}  // namespace strata::python
