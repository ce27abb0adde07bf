// Helpers shared by the kernel tests: random blocks in any dtype, the CPU
// quant codec as a byte reference, and a host emulation of the quant
// kernels' decomposition (same helpers, same order) for machines without a
// GPU.
#ifndef STRATA_TESTS_KERNELS_KERNEL_TEST_UTIL_H_
#define STRATA_TESTS_KERNELS_KERNEL_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "codecs/codec.h"
#include "codecs/kv_tensor.h"
#include "codecs/quant_codec.h"
#include "kernels/paged_kv_kernels.h"
#include "kvstore/block_format.h"

namespace strata::kernels::testing {

using codecs::KvTensor;
using codecs::QuantParams;
using kvstore::BlockShape;
using kvstore::DType;

// A spread of quant configurations: shapes with a short last token group and
// 32- and 64-channel tiles, every dtype, bit width and group size, both key
// modes, with and without sinks.
struct QuantCase {
  BlockShape shape;
  QuantParams params;
};
std::vector<QuantCase> QuantCases();

// True when STRATA_KERNEL_TEST_QUICK is set (sanitizer runs): tests use
// fewer cases and smaller shapes.
bool QuickMode();

// A seed from the environment (STRATA_TEST_SEED) or random_device, printed
// so that a failure can be replayed.
uint32_t TestSeed(const char* test_name);

// The KV fixture: $STRATA_KV_FIXTURE when set (the GPU bundle sets it: the
// source path compiled into codecs differs there), else
// codecs::DefaultFixturePath().
std::string FixturePath();

// Values N(0, scale) rounded to shape.dtype; ~1/64 of them set to +0 or -0
// (so that group minima hit the +0/-0 tie rule).
KvTensor RandomKv(const BlockShape& shape, std::mt19937& rng,
                  float scale = 1.0f);

// Each value -0 or +0 (a quarter each) or an integer 0..6: many groups
// whose minimum is a zero of either sign (the first-zero rule).
KvTensor SignedZeroKv(const BlockShape& shape, std::mt19937& rng);

// The values of `real` in order, rounded to shape.dtype, as a block of
// `shape` (e.g. the fixture's hd-192 values as an hd-256 block).
// INVALID_ARGUMENT naming `shape` when the element counts differ.
absl::StatusOr<KvTensor> RefillKv(const KvTensor& real,
                                  const BlockShape& shape);

// The raw block bytes of kv (shape.dtype).
std::vector<uint8_t> RawOf(const KvTensor& kv);

// The payload of kv by the CPU codec `id`: *params holds the params to
// encode with and gets those the block records (e.g. the profile id).
absl::StatusOr<std::vector<uint8_t>> CpuEncode(
    codecs::CodecId id, const KvTensor& kv, codecs::CodecParams* params,
    const codecs::CodecProfile* profile);
// The CPU codec `id`'s decode of `sel` of a payload, as raw bytes.
absl::StatusOr<std::vector<uint8_t>> CpuDecodeRaw(
    codecs::CodecId id, const BlockShape& shape,
    const codecs::CodecParams& params, const std::vector<uint8_t>& payload,
    const codecs::CodecProfile* profile,
    const codecs::DecodeSelection& sel = {});

// The CPU quant codec's payload and its decode as raw bytes.
absl::StatusOr<std::vector<uint8_t>> CpuQuantEncode(const KvTensor& kv,
                                                    const QuantParams& p);
absl::StatusOr<std::vector<uint8_t>> CpuQuantDecodeRaw(
    const BlockShape& shape, const QuantParams& p,
    const std::vector<uint8_t>& payload);

// The GPU kernels' computation, run on the host with the kernels' helpers
// (kernels/internal/numeric.h) in the kernels' thread decomposition.
std::vector<uint8_t> EmulateQuantEncode(const BlockShape& shape,
                                        const QuantParams& p,
                                        const std::vector<uint8_t>& raw);
std::vector<uint8_t> EmulateQuantDecode(const BlockShape& shape,
                                        const QuantParams& p,
                                        const std::vector<uint8_t>& payload);

// The RoPE shift kernel's arithmetic on the host: the kernel's table
// (RopeShiftCosSin) and rotation (RopeRotate), rounded to the dtype.
std::vector<uint8_t> EmulateRopeShift(DType dtype, uint32_t head_dim,
                                      uint64_t num_vectors, bool neox,
                                      float theta, int32_t delta,
                                      const std::vector<uint8_t>& raw);

// A CPU gather from per-layer paged caches (host copies) into a raw block:
// the reference for the gather kernel. Tokens whose page id is out of range
// are left as they are in `block`.
void CpuPagedGather(const PagedCacheDesc& cache,
                    const std::vector<std::vector<uint8_t>>& layer_caches,
                    const std::vector<int32_t>& page_ids,
                    std::vector<uint8_t>* block);

// Index of the first differing byte, or -1.
int64_t FirstDifference(const std::vector<uint8_t>& a,
                        const std::vector<uint8_t>& b);

std::string Describe(const BlockShape& shape, const QuantParams& p);

// A device pointer for host tests that only validate params (never
// dereferenced).
inline void* FakeDevice(uintptr_t address) {
  return reinterpret_cast<void*>(address);
}

// Expects `s` to have `code` and a message naming `field` ("field:...").
void ExpectField(const absl::Status& s, absl::StatusCode code,
                 const std::string& field);

}  // namespace strata::kernels::testing

#endif  // STRATA_TESTS_KERNELS_KERNEL_TEST_UTIL_H_
