// The HBM tier (kernels/hbm_tier.h): device pool, pinned buffers, and the
// demote / promote pipelines on three streams.
#include "kernels/hbm_tier.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "codecs/quant_codec.h"
#include "common/status_macros.h"
#include "kernels/internal/host_checks.h"
#include "kernels/internal/launch.h"
#include "kernels/internal/quant_layout.h"
#include "kernels/kernel_errors.h"
#include "kernels/quant_kernels.h"

namespace strata::kernels {
namespace {

using internal::CudaStatus;

// Promote's largest chunk of layers per copy + decode.
constexpr uint32_t kMaxChunkLayers = 16;

uint64_t RoundUp(uint64_t x) {
  return (x + DevicePool::kAlignment - 1) / DevicePool::kAlignment *
         DevicePool::kAlignment;
}

}  // namespace

// ---- DevicePool

DevicePool::DevicePool(uint8_t* base, uint64_t capacity)
    : base_(base), capacity_(capacity) {
  free_[0] = capacity;
}

absl::StatusOr<std::unique_ptr<DevicePool>> DevicePool::Create(
    uint64_t capacity_bytes) {
  if (capacity_bytes == 0) {
    return absl::InvalidArgumentError("capacity_bytes: 0");
  }
  const uint64_t capacity = RoundUp(capacity_bytes);
  void* base = nullptr;
  const cudaError_t e = cudaMalloc(&base, capacity);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cuda: cudaMalloc of a ", capacity, "-byte pool: out of memory"));
    }
    return CudaStatus(e, "device pool cudaMalloc");
  }
  return std::unique_ptr<DevicePool>(
      new DevicePool(static_cast<uint8_t*>(base), capacity));
}

DevicePool::~DevicePool() { cudaFree(base_); }

absl::StatusOr<void*> DevicePool::Allocate(uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("bytes: 0");
  const uint64_t need = RoundUp(bytes);
  absl::MutexLock lock(&mu_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const uint64_t offset = it->first, size = it->second;
    free_.erase(it);
    if (size > need) free_[offset + need] = size - need;
    live_[offset] = need;
    used_ += need;
    return static_cast<void*>(base_ + offset);
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("pool: no free range of ", need, " bytes (", used_, " of ",
                   capacity_, " in use)"));
}

absl::Status DevicePool::Free(void* ptr) {
  if (ptr == nullptr) return absl::OkStatus();
  const uint8_t* p = static_cast<const uint8_t*>(ptr);
  absl::MutexLock lock(&mu_);
  if (p < base_ || p >= base_ + capacity_) {
    return absl::InvalidArgumentError("ptr: not in this pool");
  }
  const uint64_t offset = static_cast<uint64_t>(p - base_);
  auto it = live_.find(offset);
  if (it == live_.end()) {
    return absl::InvalidArgumentError("ptr: not a live allocation");
  }
  uint64_t start = offset, size = it->second;
  used_ -= size;
  live_.erase(it);
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == start + size) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      size += prev->second;
      free_.erase(prev);
    }
  }
  free_[start] = size;
  return absl::OkStatus();
}

uint64_t DevicePool::used_bytes() const {
  absl::MutexLock lock(&mu_);
  return used_;
}

bool DevicePool::Contains(const void* ptr) const {
  const uint8_t* p = static_cast<const uint8_t*>(ptr);
  return p >= base_ && p < base_ + capacity_;
}

// ---- PinnedBuffer

absl::StatusOr<PinnedBuffer> PinnedBuffer::Allocate(uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("bytes: 0");
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return CudaStatus(e, "cudaHostAlloc");
  }
  PinnedBuffer b;
  b.data_ = static_cast<uint8_t*>(p);
  b.size_ = bytes;
  return b;
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  std::swap(data_, other.data_);
  std::swap(size_, other.size_);
  return *this;
}

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

// ---- Transfer

Transfer::~Transfer() {
  (void)Wait();
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

bool Transfer::LayerReady(uint32_t layer) const {
  if (layer >= layer_event_.size()) return false;
  return cudaEventQuery(events_[layer_event_[layer]]) == cudaSuccess;
}

absl::Status Transfer::WaitLayerOn(uint32_t layer, cudaStream_t stream) const {
  if (layer >= layer_event_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: ", layer, " of ", layer_event_.size()));
  }
  return CudaStatus(
      cudaStreamWaitEvent(stream, events_[layer_event_[layer]], 0),
                    "cudaStreamWaitEvent");
}

absl::Status Transfer::WaitOn(cudaStream_t stream) const {
  return CudaStatus(cudaStreamWaitEvent(stream, events_.back(), 0),
                    "cudaStreamWaitEvent");
}

absl::Status Transfer::Wait() {
  if (waited_) return result_;
  waited_ = true;
  for (cudaEvent_t e : events_) {
    const cudaError_t err = cudaEventSynchronize(e);
    if (err != cudaSuccess && result_.ok()) {
      result_ = CudaStatus(err, "transfer");
    }
  }
  if (error_word_ != nullptr && result_.ok()) {
    uint32_t flags = 0;
    const cudaError_t err =
        cudaMemcpy(&flags, error_word_, 4, cudaMemcpyDeviceToHost);
    result_ = err != cudaSuccess ? CudaStatus(err, "transfer error word")
                                 : ErrorFlagsToStatus(flags);
  }
  for (void* p : scratch_) (void)pool_->Free(p);
  scratch_.clear();
  return result_;
}

// ---- HbmTier

absl::StatusOr<std::unique_ptr<HbmTier>> HbmTier::Create(
    const Options& options) {
  std::unique_ptr<HbmTier> tier(new HbmTier());
  STRATA_ASSIGN_OR_RETURN(tier->pool_, DevicePool::Create(options.pool_bytes));
  for (cudaStream_t* s : {&tier->compute_, &tier->d2h_, &tier->h2d_}) {
    STRATA_RETURN_IF_ERROR(
        CudaStatus(cudaStreamCreateWithFlags(s, cudaStreamNonBlocking),
                   "cudaStreamCreate"));
  }
  return tier;
}

HbmTier::~HbmTier() {
  for (cudaStream_t s : {compute_, d2h_, h2d_}) {
    if (s != nullptr) {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }
}

absl::StatusOr<std::unique_ptr<Transfer>> HbmTier::NewTransfer(
    uint32_t events, uint32_t layers) {
  std::unique_ptr<Transfer> t(new Transfer(pool_.get()));
  for (uint32_t i = 0; i < events; ++i) {
    cudaEvent_t e;
    STRATA_RETURN_IF_ERROR(CudaStatus(
        cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "event"));
    t->events_.push_back(e);
  }
  t->layer_event_.assign(layers, events - 1);
  return t;
}

absl::Status HbmTier::After(cudaStream_t after, cudaStream_t stream) {
  cudaEvent_t e;
  STRATA_RETURN_IF_ERROR(CudaStatus(
      cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "event"));
  absl::Status s = CudaStatus(cudaEventRecord(e, after), "cudaEventRecord");
  if (s.ok()) {
    s = CudaStatus(cudaStreamWaitEvent(stream, e, 0), "cudaStreamWaitEvent");
  }
  cudaEventDestroy(e);  // Released once the recorded work completes.
  return s;
}

void HbmTier::DrainAfterFailure() {
  // Work enqueued before the failure may still use the transfer's scratch,
  // which is released when the Transfer is destroyed: let it finish.
  for (cudaStream_t s : {compute_, d2h_, h2d_}) cudaStreamSynchronize(s);
  (void)cudaGetLastError();
}

absl::StatusOr<std::unique_ptr<Transfer>> HbmTier::Demote(
    const DemoteRequest& r) {
  STRATA_ASSIGN_OR_RETURN(const uint64_t payload_bytes,
                          QuantPayloadBytes(r.shape, r.quant_params));
  if (r.host_payload == nullptr || r.host_capacity < payload_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host_payload: need ", payload_bytes, " bytes, have ",
        r.host_payload == nullptr ? 0 : r.host_capacity));
  }
  if (r.kv == nullptr && !(r.gather.cache.shape == r.shape)) {
    return absl::InvalidArgumentError(
        "gather: the paged cache's shape is not the block's");
  }
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Transfer> t, NewTransfer(1, 1));
  // Scratch: [error word][payload][raw block when gathering].
  const uint64_t word = DevicePool::kAlignment;
  const uint64_t raw = r.kv == nullptr ? RoundUp(r.shape.RawBytes()) : 0;
  STRATA_ASSIGN_OR_RETURN(void* scratch,
                          pool_->Allocate(word + RoundUp(payload_bytes) + raw));
  t->scratch_.push_back(scratch);
  uint8_t* base = static_cast<uint8_t*>(scratch);
  t->error_word_ = reinterpret_cast<uint32_t*>(base);
  void* payload = base + word;
  const void* kv = r.kv;
  if (kv == nullptr) kv = base + word + RoundUp(payload_bytes);

  QuantEncodeParams enc;
  enc.shape = r.shape;
  enc.codec_params = r.quant_params;
  enc.kv = kv;
  enc.payload = payload;
  enc.payload_bytes = payload_bytes;
  enc.error_flags = t->error_word_;
  PagedGatherParams gather = r.gather;
  gather.block = const_cast<void*>(kv);
  gather.error_flags = t->error_word_;
  // Validate everything before enqueueing anything.
  if (r.kv == nullptr) STRATA_RETURN_IF_ERROR(Validate(gather));
  STRATA_RETURN_IF_ERROR(Validate(enc));

  const absl::Status status = [&]() -> absl::Status {
    if (r.after != nullptr) STRATA_RETURN_IF_ERROR(After(r.after, compute_));
    STRATA_RETURN_IF_ERROR(CudaStatus(
        cudaMemsetAsync(t->error_word_, 0, 4, compute_), "cudaMemsetAsync"));
    if (r.kv == nullptr) {
      STRATA_RETURN_IF_ERROR(Launch(gather, nullptr, compute_));
    }
    STRATA_RETURN_IF_ERROR(Launch(enc, nullptr, compute_));
    // The copy engine starts when the encode is done.
    STRATA_RETURN_IF_ERROR(CudaStatus(
        cudaEventRecord(t->events_[0], compute_), "cudaEventRecord"));
    STRATA_RETURN_IF_ERROR(
        CudaStatus(cudaStreamWaitEvent(d2h_, t->events_[0], 0),
                   "cudaStreamWaitEvent"));
    STRATA_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpyAsync(r.host_payload, payload, payload_bytes,
                                   cudaMemcpyDeviceToHost, d2h_),
                   "demote D2H"));
    return CudaStatus(cudaEventRecord(t->events_[0], d2h_),
                      "cudaEventRecord");
  }();
  if (!status.ok()) {
    DrainAfterFailure();
    return status;
  }
  t->bytes_moved_ = payload_bytes;
  return t;
}

absl::StatusOr<std::unique_ptr<Transfer>> HbmTier::Promote(
    const PromoteRequest& r) {
  STRATA_ASSIGN_OR_RETURN(const uint64_t payload_bytes,
                          QuantPayloadBytes(r.shape, r.quant_params));
  if (r.host_payload == nullptr || r.payload_bytes != payload_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload_bytes: ", r.payload_bytes,
                     " bytes, shape and params need ", payload_bytes));
  }
  const bool paged = r.kv == nullptr;
  if (paged && !(r.paged.cache.shape == r.shape)) {
    return absl::InvalidArgumentError(
        "paged: the paged cache's shape is not the block's");
  }
  const uint32_t L = r.shape.num_layers;
  const uint64_t layer_raw = r.shape.RawBytes() / L;
  // Chunks of 1, 1, 2, 4, 8, 16, 16, ... layers.
  std::vector<uint32_t> begin, count;
  for (uint32_t l = 0, size = 1; l < L; l += count.back()) {
    begin.push_back(l);
    count.push_back(std::min(size, L - l));
    if (begin.size() > 1) size = std::min<uint32_t>(size * 2, kMaxChunkLayers);
  }
  const uint32_t chunks = static_cast<uint32_t>(begin.size());
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Transfer> t,
                          NewTransfer(chunks, L));
  for (uint32_t c = 0; c < chunks; ++c) {
    for (uint32_t i = 0; i < count[c]; ++i) t->layer_event_[begin[c] + i] = c;
  }
  // Scratch: [error word][payload][the largest chunk's raw layers, paged].
  const uint64_t word = DevicePool::kAlignment;
  const uint32_t widest = *std::max_element(count.begin(), count.end());
  STRATA_ASSIGN_OR_RETURN(
      void* scratch,
      pool_->Allocate(word + RoundUp(payload_bytes) +
                      (paged ? RoundUp(layer_raw * widest) : 0)));
  t->scratch_.push_back(scratch);
  uint8_t* base = static_cast<uint8_t*>(scratch);
  t->error_word_ = reinterpret_cast<uint32_t*>(base);
  uint8_t* payload = base + word;
  uint8_t* chunk_scratch = base + word + RoundUp(payload_bytes);

  // Every chunk's decode and scatter, validated up front.
  STRATA_ASSIGN_OR_RETURN(
      const codecs::QuantParams qp,
      codecs::QuantParams::FromBytes(r.quant_params, r.shape));
  const internal::QuantArgs layout = internal::MakeQuantArgs(r.shape, qp);
  std::vector<QuantDecodeParams> decodes(chunks);
  std::vector<PagedScatterParams> scatters(paged ? chunks : 0);
  for (uint32_t c = 0; c < chunks; ++c) {
    QuantDecodeParams& d = decodes[c];
    d.shape = r.shape;
    d.codec_params = r.quant_params;
    d.payload = payload;
    d.payload_bytes = payload_bytes;
    d.kv = paged ? chunk_scratch : r.kv;
    d.kv_whole_block = !paged;
    d.layer_begin = begin[c];
    d.layer_count = count[c];
    d.error_flags = t->error_word_;
    STRATA_RETURN_IF_ERROR(Validate(d));
    if (paged) {
      PagedScatterParams& s = scatters[c];
      s = r.paged;
      s.cache.shape.num_layers = count[c];
      s.layer_caches = r.paged.layer_caches + begin[c];
      s.block = chunk_scratch;
      s.error_flags = t->error_word_;
      STRATA_RETURN_IF_ERROR(Validate(s));
    }
  }
  std::vector<cudaEvent_t> copied(chunks, nullptr);
  absl::Status status = [&]() -> absl::Status {
    for (cudaEvent_t& e : copied) {
      STRATA_RETURN_IF_ERROR(CudaStatus(
          cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "event"));
    }
    if (r.after != nullptr) {
      STRATA_RETURN_IF_ERROR(After(r.after, compute_));
      STRATA_RETURN_IF_ERROR(After(r.after, h2d_));
    }
    STRATA_RETURN_IF_ERROR(CudaStatus(
        cudaMemsetAsync(t->error_word_, 0, 4, compute_), "cudaMemsetAsync"));
    const uint8_t* host = static_cast<const uint8_t*>(r.host_payload);
    // Chunk by chunk, so that chunk 0's decode is enqueued right behind its
    // copy (a layer-major enqueue order: the first layer does not wait for
    // the host to enqueue the whole block).
    for (uint32_t c = 0; c < chunks; ++c) {
      for (const internal::QuantSideArgs& s : layout.side) {
        const uint64_t at = s.side_offset + uint64_t{begin[c]} * s.slab_bytes;
        STRATA_RETURN_IF_ERROR(CudaStatus(
            cudaMemcpyAsync(payload + at, host + at, s.slab_bytes * count[c],
                            cudaMemcpyHostToDevice, h2d_),
            "promote H2D"));
      }
      STRATA_RETURN_IF_ERROR(
          CudaStatus(cudaEventRecord(copied[c], h2d_), "cudaEventRecord"));
      STRATA_RETURN_IF_ERROR(CudaStatus(
          cudaStreamWaitEvent(compute_, copied[c], 0), "cudaStreamWaitEvent"));
      STRATA_RETURN_IF_ERROR(Launch(decodes[c], nullptr, compute_));
      if (paged) STRATA_RETURN_IF_ERROR(Launch(scatters[c], nullptr, compute_));
      STRATA_RETURN_IF_ERROR(CudaStatus(
          cudaEventRecord(t->events_[c], compute_), "cudaEventRecord"));
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) DrainAfterFailure();
  for (cudaEvent_t e : copied) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  STRATA_RETURN_IF_ERROR(status);
  t->bytes_moved_ = payload_bytes;
  return t;
}

absl::StatusOr<std::unique_ptr<Transfer>> HbmTier::CopyToHost(
    const void* device_src, uint64_t bytes, void* host_dst,
    cudaStream_t after) {
  if (device_src == nullptr || host_dst == nullptr || bytes == 0) {
    return absl::InvalidArgumentError(
        "device_src: source, destination and size must be non-empty");
  }
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Transfer> t, NewTransfer(1, 1));
  if (after != nullptr) STRATA_RETURN_IF_ERROR(After(after, d2h_));
  STRATA_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, d2h_),
      "D2H"));
  STRATA_RETURN_IF_ERROR(
      CudaStatus(cudaEventRecord(t->events_[0], d2h_), "cudaEventRecord"));
  t->bytes_moved_ = bytes;
  return t;
}

absl::StatusOr<std::unique_ptr<Transfer>> HbmTier::CopyToDevice(
    const void* host_src, uint64_t bytes, void* device_dst,
    cudaStream_t after) {
  if (device_dst == nullptr || host_src == nullptr || bytes == 0) {
    return absl::InvalidArgumentError(
        "device_dst: source, destination and size must be non-empty");
  }
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Transfer> t, NewTransfer(1, 1));
  if (after != nullptr) STRATA_RETURN_IF_ERROR(After(after, h2d_));
  STRATA_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, h2d_),
      "H2D"));
  STRATA_RETURN_IF_ERROR(
      CudaStatus(cudaEventRecord(t->events_[0], h2d_), "cudaEventRecord"));
  t->bytes_moved_ = bytes;
  return t;
}

}  // namespace strata::kernels
