// Paged KV gather/scatter on a GPU: gather equals a CPU gather, scatter
// writes exactly the named slots (and nothing else), and gather(scatter(x))
// == x, for both vLLM layouts and every dtype. Skips without a device.
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernel_errors.h"
#include "kernels/paged_kv_kernels.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using kvstore::BlockShape;
using kvstore::DType;
using testing::DeviceBuffer;
using testing::ErrorWord;
using testing::FirstDifference;

constexpr uint8_t kBlockPoison = 0xA5;
constexpr uint8_t kCachePoison = 0x5A;

std::vector<uint8_t> RandomBytes(size_t n, std::mt19937& rng) {
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

uint64_t CacheBytes(const PagedCacheDesc& c) {
  return uint64_t{2} * c.num_pages * c.page_size * c.shape.num_kv_heads *
         c.shape.head_dim * kvstore::DTypeSize(c.shape.dtype);
}

class PagedKvGpuTest : public testing::GpuTest {
 protected:
  // Random caches and distinct random page ids for `desc`.
  void Setup(const PagedCacheDesc& desc, std::mt19937& rng) {
    desc_ = desc;
    host_caches_.clear();
    caches_.clear();
    for (uint32_t l = 0; l < desc.shape.num_layers; ++l) {
      host_caches_.push_back(RandomBytes(CacheBytes(desc), rng));
      caches_.emplace_back(CacheBytes(desc));
      caches_.back().Upload(host_caches_.back(), stream_);
    }
    const uint32_t used =
        (desc.shape.num_tokens + desc.page_size - 1) / desc.page_size;
    std::vector<int32_t> all(desc.num_pages);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    page_ids_.assign(all.begin(), all.begin() + used);
    device_ids_ = DeviceBuffer(used * sizeof(int32_t));
    device_ids_.Upload(page_ids_, stream_);
  }

  std::vector<void*> CachePointers() const {
    std::vector<void*> p;
    for (const DeviceBuffer& b : caches_) p.push_back(b.get());
    return p;
  }

  std::vector<uint8_t> Gather(uint32_t* flags_out = nullptr) {
    DeviceBuffer block(desc_.shape.RawBytes());
    block.Fill(kBlockPoison, stream_);
    ErrorWord flags(stream_);
    const std::vector<void*> ptrs = CachePointers();
    std::vector<const void*> cptrs(ptrs.begin(), ptrs.end());
    PagedGatherParams g;
    g.cache = desc_;
    g.layer_caches = cptrs.data();
    g.page_ids = device_ids_.as<int32_t>();
    g.block = block.get();
    g.error_flags = flags.get();
    const absl::Status s = Launch(g, nullptr, stream_);
    EXPECT_TRUE(s.ok()) << s;
    Sync();
    if (flags_out != nullptr) {
      *flags_out = flags.Read();
    } else {
      EXPECT_EQ(flags.Read(), 0u);
    }
    return block.Download(stream_);
  }

  void Scatter(const std::vector<uint8_t>& block_bytes) {
    DeviceBuffer block(block_bytes.size());
    block.Upload(block_bytes, stream_);
    ErrorWord flags(stream_);
    const std::vector<void*> ptrs = CachePointers();
    PagedScatterParams s;
    s.cache = desc_;
    s.layer_caches = ptrs.data();
    s.page_ids = device_ids_.as<int32_t>();
    s.block = block.get();
    s.error_flags = flags.get();
    const absl::Status st = Launch(s, nullptr, stream_);
    EXPECT_TRUE(st.ok()) << st;
    Sync();
    EXPECT_EQ(flags.Read(), 0u);
  }

  void RoundTrip(const PagedCacheDesc& desc, std::mt19937& rng) {
    SCOPED_TRACE(::testing::Message()
                 << "layout " << static_cast<int>(desc.layout) << " dtype "
                 << kvstore::DTypeName(desc.shape.dtype) << " layers "
                 << desc.shape.num_layers << " tokens " << desc.shape.num_tokens
                 << " row " << desc.shape.num_kv_heads << "x"
                 << desc.shape.head_dim << " pages " << desc.num_pages << "x"
                 << desc.page_size);
    Setup(desc, rng);
    // Gather equals the CPU gather.
    std::vector<uint8_t> want(desc.shape.RawBytes(), kBlockPoison);
    testing::CpuPagedGather(desc, host_caches_, page_ids_, &want);
    const std::vector<uint8_t> got = Gather();
    ASSERT_EQ(FirstDifference(got, want), -1);
    // Scatter a fresh random block into poisoned caches: exactly the named
    // slots change.
    const std::vector<uint8_t> block = RandomBytes(want.size(), rng);
    std::vector<std::vector<uint8_t>> expect;
    for (size_t l = 0; l < caches_.size(); ++l) {
      caches_[l].Fill(kCachePoison, stream_);
      expect.emplace_back(CacheBytes(desc), kCachePoison);
    }
    const uint64_t row = uint64_t{desc.shape.num_kv_heads} *
                         desc.shape.head_dim *
                         kvstore::DTypeSize(desc.shape.dtype);
    for (int kv = 0; kv < 2; ++kv) {
      for (uint32_t l = 0; l < desc.shape.num_layers; ++l) {
        for (uint32_t t = 0; t < desc.shape.num_tokens; ++t) {
          const uint64_t dst = PagedRowOffset(
              desc, kv, page_ids_[t / desc.page_size], t % desc.page_size);
          const uint64_t src =
              ((uint64_t{static_cast<uint32_t>(kv)} * desc.shape.num_layers +
                l) *
                   desc.shape.num_tokens +
               t) *
              row;
          std::copy(block.begin() + src, block.begin() + src + row,
                    expect[l].begin() + dst);
        }
      }
    }
    Scatter(block);
    for (size_t l = 0; l < caches_.size(); ++l) {
      ASSERT_EQ(FirstDifference(caches_[l].Download(stream_), expect[l]), -1)
          << "layer " << l;
    }
    // And back.
    ASSERT_EQ(FirstDifference(Gather(), block), -1);
  }

  PagedCacheDesc desc_;
  std::vector<std::vector<uint8_t>> host_caches_;
  std::vector<DeviceBuffer> caches_;
  std::vector<int32_t> page_ids_;
  DeviceBuffer device_ids_;
};

TEST_F(PagedKvGpuTest, GatherEqualsCpuAndScatterRoundTripsEveryLayoutAndDtype) {
  std::mt19937 rng(testing::TestSeed("PagedGatherScatter"));
  for (PagedLayout layout : {PagedLayout::kPageMajor, PagedLayout::kKvMajor}) {
    for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32,
                        DType::kFloat8E4M3}) {
      PagedCacheDesc d;
      d.shape = BlockShape{dtype, 3, 77, 2, 64};  // 77: a partial last page.
      d.layout = layout;
      d.num_pages = 20;
      d.page_size = 16;
      RoundTrip(d, rng);
      if (HasFatalFailure()) return;
      d.shape = BlockShape{dtype, 2, 40, 3, 32};  // Odd head count.
      d.num_pages = 7;
      d.page_size = 8;
      RoundTrip(d, rng);
      if (HasFatalFailure()) return;
    }
  }
}

TEST_F(PagedKvGpuTest, LlamaShapedBlockRoundTrips) {
  std::mt19937 rng(testing::TestSeed("LlamaShapedBlockRoundTrips"));
  for (PagedLayout layout : {PagedLayout::kPageMajor, PagedLayout::kKvMajor}) {
    PagedCacheDesc d;
    d.shape = BlockShape{DType::kBFloat16, testing::QuickMode() ? 4u : 32u, 256,
                         8, 128};
    d.layout = layout;
    d.num_pages = 64;
    d.page_size = 16;
    RoundTrip(d, rng);
    if (HasFatalFailure()) return;
    d.page_size = 1;  // One token per page.
    d.num_pages = 300;
    d.shape.num_layers = 2;
    RoundTrip(d, rng);
    if (HasFatalFailure()) return;
  }
}

TEST_F(PagedKvGpuTest, BadPageIdsAreReportedAndSkipped) {
  std::mt19937 rng(4);
  PagedCacheDesc d;
  d.shape = BlockShape{DType::kFloat16, 2, 48, 1, 64};
  d.num_pages = 10;
  d.page_size = 16;
  Setup(d, rng);
  page_ids_[1] = 10;  // == num_pages.
  page_ids_[2] = -1;
  device_ids_.Upload(page_ids_, stream_);
  uint32_t flags = 0;
  const std::vector<uint8_t> got = Gather(&flags);
  EXPECT_EQ(flags, kErrorBadPageId);
  EXPECT_EQ(ErrorFlagsToStatus(flags).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> want(d.shape.RawBytes(), kBlockPoison);
  testing::CpuPagedGather(d, host_caches_, page_ids_, &want);
  EXPECT_EQ(FirstDifference(got, want), -1);
}

}  // namespace
}  // namespace strata::kernels
