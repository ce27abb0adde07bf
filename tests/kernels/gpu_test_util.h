// GPU test scaffolding: a fixture that skips without a device, device
// buffers, the error-word helper, and the plumbing the profile codecs'
// kernel tests share (lowrank, sparse, aqua: their launch params have the
// same fields).
#ifndef STRATA_TESTS_KERNELS_GPU_TEST_UTIL_H_
#define STRATA_TESTS_KERNELS_GPU_TEST_UTIL_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "codecs/codec.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"

namespace strata::kernels::testing {

// Output buffers and workspaces are filled with this before a launch, so
// that a byte a kernel fails to write shows in the comparison.
inline constexpr uint8_t kPoison = 0xA5;

// Success when `got` equals `want`; else "first differing <what> byte i of
// n".
inline ::testing::AssertionResult SameBytes(const std::vector<uint8_t>& got,
                                            const std::vector<uint8_t>& want,
                                            const char* what) {
  const size_t n = std::min(got.size(), want.size());
  size_t i = 0;
  while (i < n && got[i] == want[i]) ++i;
  if (i == n && got.size() == want.size()) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "first differing " << what << " byte "
                                       << i << " of " << want.size();
}

// Every GPU test derives from this: SetUp skips the test (GTEST_SKIP, so CI
// machines pass) when there is no CUDA device, and creates a stream.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
      (void)cudaGetLastError();
      GTEST_SKIP() << "no CUDA device ("
                   << (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices")
                   << "): GPU kernel tests run on the GPU machine "
                      "(tools/gpu/run_gpu_suite.sh)";
    }
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
              cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) {
      EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
      EXPECT_EQ(cudaStreamDestroy(stream_), cudaSuccess);
    }
  }
  // Waits for the stream and checks that no kernel failed.
  void Sync() {
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess)
        << cudaGetErrorString(cudaGetLastError());
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  }

  // Runs the decode `dec` into a poisoned buffer of cpu_raw.size() bytes
  // with a fresh error word (both set here) and expects no error and the
  // decoded bytes to equal `cpu_raw`. workspace_min 0: no workspace
  // (nullptr); else a poisoned one of max(WorkspaceBytes(dec),
  // workspace_min) bytes. Defined below DeviceBuffer.
  template <class DecodeParams>
  void ExpectDecodeEquals(DecodeParams dec, const std::vector<uint8_t>& cpu_raw,
                          size_t workspace_min, const std::string& what);

  cudaStream_t stream_ = nullptr;
};

// Device memory owned by the test. Copies are synchronous on `stream`.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) {
      const cudaError_t e = cudaMalloc(&ptr_, bytes_);
      EXPECT_EQ(e, cudaSuccess) << "cudaMalloc(" << bytes_ << ")";
      if (e != cudaSuccess) ptr_ = nullptr;
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }

  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }

  void Upload(const void* src, size_t bytes, cudaStream_t stream) {
    ASSERT_LE(bytes, bytes_);
    ASSERT_EQ(cudaMemcpyAsync(ptr_, src, bytes, cudaMemcpyHostToDevice, stream),
              cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  }
  template <class T>
  void Upload(const std::vector<T>& v, cudaStream_t stream) {
    Upload(v.data(), v.size() * sizeof(T), stream);
  }
  std::vector<uint8_t> Download(cudaStream_t stream) const {
    std::vector<uint8_t> out(bytes_);
    EXPECT_EQ(cudaMemcpyAsync(out.data(), ptr_, bytes_, cudaMemcpyDeviceToHost,
                              stream),
              cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    return out;
  }
  template <class T>
  std::vector<T> DownloadAs(cudaStream_t stream) const {
    const std::vector<uint8_t> bytes = Download(stream);
    std::vector<T> out(bytes.size() / sizeof(T));
    std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
    return out;
  }
  // Poison (or zero) every byte.
  void Fill(uint8_t byte, cudaStream_t stream) {
    ASSERT_EQ(cudaMemsetAsync(ptr_, byte, bytes_, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A zeroed device error word (kernels/kernel_errors.h).
class ErrorWord {
 public:
  explicit ErrorWord(cudaStream_t stream) : buffer_(4), stream_(stream) {
    buffer_.Fill(0, stream_);
  }
  uint32_t* get() const { return buffer_.as<uint32_t>(); }
  uint32_t Read() const { return buffer_.DownloadAs<uint32_t>(stream_)[0]; }

 private:
  DeviceBuffer buffer_;
  cudaStream_t stream_;
};

// The launch params of a profile codec's kernels (LowRank/Sparse/Aqua
// EncodeParams and DecodeParams share these fields), pointing at device
// buffers; kv, error_flags and the rest stay at their defaults.
template <class Params, class Layout>
Params ProfileLaunchParams(const kvstore::BlockShape& shape,
                           const codecs::CodecParams& codec_params,
                           const Layout& profile_layout,
                           const DeviceBuffer& profile,
                           const DeviceBuffer& payload,
                           uint64_t payload_bytes) {
  Params params;
  params.shape = shape;
  params.codec_params = codec_params;
  params.profile_layout = profile_layout;
  params.profile = profile.as<float>();
  params.payload = payload.get();
  params.payload_bytes = payload_bytes;
  return params;
}

// The same for an encode, with its input block and error word.
template <class EncodeParams, class Layout>
EncodeParams ProfileEncodeParams(
    const kvstore::BlockShape& shape, const codecs::CodecParams& codec_params,
    const Layout& profile_layout, const DeviceBuffer& profile,
    const DeviceBuffer& kv, const DeviceBuffer& payload, uint64_t payload_bytes,
    uint32_t* error_flags) {
  auto enc = ProfileLaunchParams<EncodeParams>(
      shape, codec_params, profile_layout, profile, payload, payload_bytes);
  enc.kv = kv.get();
  enc.error_flags = error_flags;
  return enc;
}

template <class DecodeParams>
void GpuTest::ExpectDecodeEquals(DecodeParams dec,
                                 const std::vector<uint8_t>& cpu_raw,
                                 size_t workspace_min,
                                 const std::string& what) {
  DeviceBuffer out(cpu_raw.size());
  out.Fill(kPoison, stream_);
  ErrorWord flags(stream_);
  dec.kv = out.get();
  dec.error_flags = flags.get();
  DeviceBuffer workspace;
  if (workspace_min > 0) {
    workspace =
        DeviceBuffer(std::max<size_t>(WorkspaceBytes(dec), workspace_min));
    workspace.Fill(kPoison, stream_);
  }
  const absl::Status s = Launch(dec, workspace.get(), stream_);
  ASSERT_TRUE(s.ok()) << s << " " << what;
  Sync();
  EXPECT_EQ(flags.Read(), 0u) << what;
  ASSERT_TRUE(SameBytes(out.Download(stream_), cpu_raw, "decoded")) << what;
}

}  // namespace strata::kernels::testing

#endif  // STRATA_TESTS_KERNELS_GPU_TEST_UTIL_H_
