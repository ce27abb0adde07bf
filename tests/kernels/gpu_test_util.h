// GPU test scaffolding: a fixture that skips without a device, device
// buffers, and the error-word helper.
#ifndef STRATA_TESTS_KERNELS_GPU_TEST_UTIL_H_
#define STRATA_TESTS_KERNELS_GPU_TEST_UTIL_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace strata::kernels::testing {

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

}  // namespace strata::kernels::testing

#endif  // STRATA_TESTS_KERNELS_GPU_TEST_UTIL_H_
