// The HBM tier: GPU memory for KV blocks and the asynchronous movement of
// compressed blocks between HBM and pinned host DRAM (docs/kernels.md, "HBM
// tier"). GPU-only: built with the kernels when CUDA is found.
//
//   DevicePool   one cudaMalloc arena, first-fit with coalescing, 256-byte
//                aligned allocations; where HBM-resident blocks and the
//                tier's scratch live.
//   PinnedBuffer cudaHostAlloc'd host memory (DMA at PCIe speed; pageable
//                memory is ~3x slower).
//   HbmTier      three streams (compute, device->host, host->device) and:
//     Demote   raw block in HBM (or vLLM's paged cache, gathered first) ->
//              quant encode on the GPU -> compressed payload D2H into pinned
//              DRAM ("compress on the way down");
//     Promote  compressed payload in pinned DRAM -> H2D in layer chunks
//              (1, 1, 2, 4, 8, 16, 16, ... layers: the first layer is
//              usable early, and a 32-layer block needs 6 chunks, not 64
//              copies: the host enqueue, ~25 us a chunk, is the limit) ->
//              quant decode of the chunk -> the raw block or vLLM's paged
//              cache ("decompress on the way up"), with an event per chunk:
//              layer l is usable as soon as its chunk has arrived and been
//              decoded, while later chunks are still copying;
//     CopyToHost / CopyToDevice   a compressed block already in HBM <-> DRAM.
//   Transfer     the handle of one operation: per-layer readiness (query, or
//                make another stream wait), Wait() for completion and the
//                device-side data errors, and ownership of the scratch.
//
// Contract:
//   - Every device pointer a request names is owned by the caller and must
//     stay valid, and not be written by others, until the Transfer is done.
//     Sources are read after `after` (a caller stream; the tier's streams
//     wait for the work enqueued on it so far), so a producer kernel on the
//     caller's stream needs no host synchronisation.
//   - Host payload buffers must be pinned (PinnedBuffer or cudaHostRegister)
//     for the copies to be asynchronous; pageable memory still works but
//     the copy then stalls the stream.
//   - Operations on one tier are ordered per stream: demotes overlap with
//     promotes (different copy engines) and the encode of block i+1 overlaps
//     the copy of block i.
//   - Errors: INVALID_ARGUMENT naming the field (request validation, before
//     anything is enqueued; the codec kernels' own checks), RESOURCE_EXHAUSTED
//     naming "pool" when the scratch does not fit, FAILED_PRECONDITION /
//     INTERNAL naming "cuda" for CUDA failures; data errors found by the
//     kernels come from Transfer::Wait (kernels/kernel_errors.h).
//
// Integration: the DRAM tier (kvstore/dram_tier.h) stores the payload bytes
// a Demote writes; for DMA speed its arena must be pinned. TieredStore is
// not wired to this class yet (docs/kernels.md).
//
// Thread safety: DevicePool is thread-safe. HbmTier's methods may be called
// from several threads (CUDA orders the work per stream). A Transfer belongs
// to one thread.
#ifndef STRATA_KERNELS_HBM_TIER_H_
#define STRATA_KERNELS_HBM_TIER_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "codecs/codec.h"
#include "kernels/paged_kv_kernels.h"
#include "kvstore/block_format.h"

namespace strata::kernels {

class DevicePool {
 public:
  static constexpr uint64_t kAlignment = 256;

  // RESOURCE_EXHAUSTED / FAILED_PRECONDITION naming "cuda" when the arena
  // cannot be allocated; INVALID_ARGUMENT naming "capacity_bytes" for 0.
  static absl::StatusOr<std::unique_ptr<DevicePool>> Create(
      uint64_t capacity_bytes);
  // Frees the arena; every allocation must have been freed (outstanding
  // ones become dangling).
  ~DevicePool();
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // A device pointer to `bytes` (> 0) bytes, kAlignment-aligned.
  // RESOURCE_EXHAUSTED naming "pool" when no free range is large enough.
  absl::StatusOr<void*> Allocate(uint64_t bytes);
  // Returns an allocation; null is ignored. INVALID_ARGUMENT naming "ptr"
  // for a pointer that is not a live allocation.
  absl::Status Free(void* ptr);

  uint64_t capacity() const { return capacity_; }
  uint64_t used_bytes() const;
  bool Contains(const void* ptr) const;

 private:
  DevicePool(uint8_t* base, uint64_t capacity);
  uint8_t* const base_;
  const uint64_t capacity_;
  mutable absl::Mutex mu_;
  std::map<uint64_t, uint64_t> free_ ABSL_GUARDED_BY(mu_);  // offset -> size
  std::map<uint64_t, uint64_t> live_ ABSL_GUARDED_BY(mu_);  // offset -> size
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
};

// Page-locked host memory (cudaHostAlloc); move-only.
class PinnedBuffer {
 public:
  static absl::StatusOr<PinnedBuffer> Allocate(uint64_t bytes);
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  ~PinnedBuffer();
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

class HbmTier;

// One demote / promote / copy in flight.
class Transfer {
 public:
  ~Transfer();  // Waits for the work if Wait() was not called.
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;

  uint32_t num_layers() const {
    return static_cast<uint32_t>(layer_event_.size());
  }
  // True when layer `layer` is usable (promote; for the other operations
  // every "layer" is the whole operation). Never blocks.
  bool LayerReady(uint32_t layer) const;
  // Enqueues on `stream` a wait for layer `layer` (cudaStreamWaitEvent):
  // the stream's later work sees the layer. INVALID_ARGUMENT naming "layer".
  absl::Status WaitLayerOn(uint32_t layer, cudaStream_t stream) const;
  // Same for the whole operation.
  absl::Status WaitOn(cudaStream_t stream) const;
  // Blocks until everything is done, releases the scratch, and returns the
  // data errors the kernels found (ErrorFlagsToStatus) or a CUDA error.
  // Idempotent.
  absl::Status Wait();
  // Bytes that crossed PCIe.
  uint64_t bytes_moved() const { return bytes_moved_; }

 private:
  friend class HbmTier;
  explicit Transfer(DevicePool* pool) : pool_(pool) {}
  DevicePool* pool_;
  std::vector<cudaEvent_t> events_;     // Last one: the whole operation.
  std::vector<uint32_t> layer_event_;  // Per layer: its index in events_.
  std::vector<void*> scratch_;             // Pool allocations to release.
  uint32_t* error_word_ = nullptr;         // In scratch; may be null.
  uint64_t bytes_moved_ = 0;
  bool waited_ = false;
  absl::Status result_;
};

class HbmTier {
 public:
  struct Options {
    uint64_t pool_bytes = uint64_t{1} << 30;
  };
  static absl::StatusOr<std::unique_ptr<HbmTier>> Create(const Options& options);
  ~HbmTier();  // Synchronises the tier's streams.
  HbmTier(const HbmTier&) = delete;
  HbmTier& operator=(const HbmTier&) = delete;

  DevicePool& pool() { return *pool_; }

  struct DemoteRequest {
    kvstore::BlockShape shape;
    codecs::CodecParams quant_params{};  // codecs::QuantParams::ToBytes()
    // The source: a raw block [2][L][T][H][D] in device memory, or (when
    // `kv` is null) vLLM's paged cache, gathered into scratch first
    // (gather.cache.shape must equal `shape`; gather.block is ignored).
    const void* kv = nullptr;
    PagedGatherParams gather;
    // Pinned host memory receiving QuantPayloadBytes(shape, quant_params).
    void* host_payload = nullptr;
    uint64_t host_capacity = 0;
    cudaStream_t after = nullptr;  // The sources are ready after its work.
  };
  absl::StatusOr<std::unique_ptr<Transfer>> Demote(const DemoteRequest& r);

  struct PromoteRequest {
    kvstore::BlockShape shape;
    codecs::CodecParams quant_params{};
    const void* host_payload = nullptr;  // Pinned; the whole payload.
    uint64_t payload_bytes = 0;
    // The destination, one of:
    //  - kv: the raw block [2][L][T][H][D] in device memory, 16-byte aligned;
    //  - paged (kv null): vLLM's cache; paged.cache.shape must equal `shape`;
    //    each chunk of layers is scattered as soon as it is decoded.
    void* kv = nullptr;
    PagedScatterParams paged;
    cudaStream_t after = nullptr;  // Destinations are free after its work.
  };
  absl::StatusOr<std::unique_ptr<Transfer>> Promote(const PromoteRequest& r);

  // A payload already in HBM (e.g. a pool allocation) to pinned DRAM, and
  // back. The plain PCIe copy that a demotion of a compressed block is.
  absl::StatusOr<std::unique_ptr<Transfer>> CopyToHost(const void* device_src,
                                                       uint64_t bytes,
                                                       void* host_dst,
                                                       cudaStream_t after);
  absl::StatusOr<std::unique_ptr<Transfer>> CopyToDevice(const void* host_src,
                                                         uint64_t bytes,
                                                         void* device_dst,
                                                         cudaStream_t after);

 private:
  HbmTier() = default;
  absl::StatusOr<std::unique_ptr<Transfer>> NewTransfer(uint32_t events,
                                                        uint32_t layers);
  absl::Status After(cudaStream_t after, cudaStream_t stream);
  void DrainAfterFailure();
  std::unique_ptr<DevicePool> pool_;
  cudaStream_t compute_ = nullptr, d2h_ = nullptr, h2d_ = nullptr;
};

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_HBM_TIER_H_
