// The HBM tier on a GPU: the device pool's allocator, demotion (raw block or
// vLLM paged cache -> quant encode -> pinned DRAM) equal to the CPU codec's
// payload, promotion (pinned DRAM -> per-layer H2D + decode -> per-layer
// raw block or the paged cache) equal to the CPU decode, per-layer events that
// order a consumer stream, and data errors through Transfer::Wait. Skips
// without a device.
#include <cstring>
#include <random>
#include <vector>

#include "codecs/kv_tensor.h"
#include "codecs/quant_codec.h"
#include "gtest/gtest.h"
#include "kernels/hbm_tier.h"
#include "kernels/paged_kv_kernels.h"
#include "kernels/quant_kernels.h"
#include "tests/kernels/gpu_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels {
namespace {

using codecs::KvTensor;
using codecs::QuantParams;
using kvstore::BlockShape;
using kvstore::DType;
using testing::DeviceBuffer;
using testing::FirstDifference;

class HbmTierGpuTest : public testing::GpuTest {
 protected:
  void SetUp() override {
    testing::GpuTest::SetUp();
    if (IsSkipped()) return;
    auto tier = HbmTier::Create({.pool_bytes = uint64_t{64} << 20});
    ASSERT_TRUE(tier.ok()) << tier.status();
    tier_ = std::move(*tier);
  }

  PinnedBuffer Pinned(uint64_t bytes) {
    auto b = PinnedBuffer::Allocate(bytes);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : PinnedBuffer();
  }

  // Layer l of a raw block [2][L][T][HD]: its K rows then its V rows.
  static std::vector<uint8_t> LayerOf(const BlockShape& s,
                                      const std::vector<uint8_t>& raw,
                                      uint32_t l) {
    const uint64_t slab = s.RawBytes() / (2 * s.num_layers);
    std::vector<uint8_t> out(raw.begin() + l * slab,
                             raw.begin() + (l + 1) * slab);
    const uint64_t v = (s.num_layers + l) * slab;
    out.insert(out.end(), raw.begin() + v, raw.begin() + v + slab);
    return out;
  }

  std::unique_ptr<HbmTier> tier_;
};

TEST_F(HbmTierGpuTest, PoolAllocatesAlignedRangesAndCoalescesFrees) {
  DevicePool& pool = tier_->pool();
  const uint64_t cap = pool.capacity();
  auto a = pool.Allocate(1000), b = pool.Allocate(5000), c = pool.Allocate(1);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (void* p : {*a, *b, *c}) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % DevicePool::kAlignment, 0u);
  }
  EXPECT_EQ(pool.used_bytes(), 1024u + 5120u + 256u);
  EXPECT_EQ(pool.Allocate(cap).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool.Free(static_cast<uint8_t*>(*b) + 256).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(pool.Free(*b).ok());
  ASSERT_TRUE(pool.Free(*a).ok());
  ASSERT_TRUE(pool.Free(*c).ok());
  EXPECT_EQ(pool.used_bytes(), 0u);
  auto all = pool.Allocate(cap);  // Only possible once every range merged.
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_TRUE(pool.Free(*all).ok());
}

TEST_F(HbmTierGpuTest, DemoteAndPromoteMatchTheCpuCodecLayerByLayer) {
  const uint32_t seed = testing::TestSeed("HbmTierDemotePromote");
  std::mt19937 rng(seed);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    const BlockShape shape{dtype, 19, 96, 2, 64};  // Chunks 1,1,2,4,8,3.
    const KvTensor kv = testing::RandomKv(shape, rng);
    QuantParams qp;
    qp.n_sink = 4;
    auto cpu = testing::CpuQuantEncode(kv, qp);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    auto cpu_raw = testing::CpuQuantDecodeRaw(shape, qp, *cpu);
    ASSERT_TRUE(cpu_raw.ok());
    const std::vector<uint8_t> raw = testing::RawOf(kv);

    // Down: a raw block produced on the caller's stream.
    DeviceBuffer block(raw.size());
    block.Upload(raw, stream_);
    PinnedBuffer host = Pinned(cpu->size());
    std::memset(host.data(), 0xA5, host.size());
    HbmTier::DemoteRequest down;
    down.shape = shape;
    down.quant_params = qp.ToBytes();
    down.kv = block.get();
    down.host_payload = host.data();
    down.host_capacity = host.size();
    down.after = stream_;
    auto t = tier_->Demote(down);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE((*t)->Wait().ok()) << (*t)->Wait();
    EXPECT_EQ((*t)->bytes_moved(), cpu->size());
    ASSERT_EQ(std::memcmp(host.data(), cpu->data(), cpu->size()), 0)
        << "seed " << seed;
    EXPECT_EQ(tier_->pool().used_bytes(), 0u);  // Scratch released.

    // Up: into a raw block, each layer read by a consumer stream that waits
    // only for that layer's event.
    const uint64_t slab = shape.RawBytes() / (2 * shape.num_layers);
    DeviceBuffer out(shape.RawBytes());
    out.Fill(0x5A, stream_);
    HbmTier::PromoteRequest up;
    up.shape = shape;
    up.quant_params = qp.ToBytes();
    up.host_payload = host.data();
    up.payload_bytes = cpu->size();
    up.kv = out.get();
    auto u = tier_->Promote(up);
    ASSERT_TRUE(u.ok()) << u.status();
    ASSERT_EQ((*u)->num_layers(), shape.num_layers);
    std::vector<PinnedBuffer> seen;
    for (uint32_t l = 0; l < shape.num_layers; ++l) {
      ASSERT_TRUE((*u)->WaitLayerOn(l, stream_).ok());
      seen.push_back(Pinned(2 * slab));
      for (uint32_t kvi = 0; kvi < 2; ++kvi) {
        ASSERT_EQ(cudaMemcpyAsync(
                      seen.back().data() + kvi * slab,
                      out.as<uint8_t>() + (kvi * shape.num_layers + l) * slab,
                      slab, cudaMemcpyDeviceToHost, stream_),
                  cudaSuccess);
      }
    }
    Sync();
    for (uint32_t l = 0; l < shape.num_layers; ++l) {
      EXPECT_TRUE((*u)->LayerReady(l));
      const std::vector<uint8_t> want = LayerOf(shape, *cpu_raw, l);
      ASSERT_EQ(std::memcmp(seen[l].data(), want.data(), 2 * slab), 0)
          << "layer " << l << " seed " << seed;
    }
    EXPECT_TRUE((*u)->Wait().ok());
    EXPECT_EQ((*u)->WaitLayerOn(shape.num_layers, stream_).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(HbmTierGpuTest, PagedCacheDownAndBackUp) {
  const uint32_t seed = testing::TestSeed("HbmTierPaged");
  std::mt19937 rng(seed);
  for (PagedLayout layout : {PagedLayout::kPageMajor, PagedLayout::kKvMajor}) {
    PagedCacheDesc desc;
    desc.shape = BlockShape{DType::kFloat16, 11, 77, 2, 64};
    desc.layout = layout;
    desc.num_pages = 12;
    desc.page_size = 16;
    const KvTensor kv = testing::RandomKv(desc.shape, rng);
    QuantParams qp;
    qp.k_bits = qp.v_bits = 4;
    auto cpu = testing::CpuQuantEncode(kv, qp);
    ASSERT_TRUE(cpu.ok());
    auto cpu_raw = testing::CpuQuantDecodeRaw(desc.shape, qp, *cpu);
    ASSERT_TRUE(cpu_raw.ok());
    // vLLM's caches, filled from the block by the scatter kernel.
    const uint64_t cache_bytes =
        PagedRowOffset(desc, 1, desc.num_pages - 1, desc.page_size - 1) +
        desc.shape.num_kv_heads * desc.shape.head_dim * 2;
    std::vector<DeviceBuffer> caches;
    std::vector<void*> ptrs;
    for (uint32_t l = 0; l < desc.shape.num_layers; ++l) {
      caches.emplace_back(cache_bytes);
      caches.back().Fill(0, stream_);
      ptrs.push_back(caches.back().get());
    }
    const std::vector<int32_t> pages = {7, 2, 11, 0, 5};  // ceil(77 / 16).
    DeviceBuffer ids(pages.size() * 4), block(desc.shape.RawBytes());
    ids.Upload(pages, stream_);
    block.Upload(testing::RawOf(kv), stream_);
    PagedScatterParams fill;
    fill.cache = desc;
    fill.layer_caches = ptrs.data();
    fill.page_ids = ids.as<int32_t>();
    fill.block = block.get();
    ASSERT_TRUE(Launch(fill, nullptr, stream_).ok());

    PinnedBuffer host = Pinned(cpu->size());
    HbmTier::DemoteRequest down;
    down.shape = desc.shape;
    down.quant_params = qp.ToBytes();
    down.gather.cache = desc;
    down.gather.layer_caches = ptrs.data();
    down.gather.page_ids = ids.as<int32_t>();
    down.host_payload = host.data();
    down.host_capacity = host.size();
    down.after = stream_;
    auto t = tier_->Demote(down);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE((*t)->Wait().ok());
    ASSERT_EQ(std::memcmp(host.data(), cpu->data(), cpu->size()), 0)
        << "seed " << seed;

    for (DeviceBuffer& c : caches) c.Fill(0x5A, stream_);
    HbmTier::PromoteRequest up;
    up.shape = desc.shape;
    up.quant_params = qp.ToBytes();
    up.host_payload = host.data();
    up.payload_bytes = cpu->size();
    up.paged.cache = desc;
    up.paged.layer_caches = ptrs.data();
    up.paged.page_ids = ids.as<int32_t>();
    auto u = tier_->Promote(up);
    ASSERT_TRUE(u.ok()) << u.status();
    ASSERT_TRUE((*u)->WaitOn(stream_).ok());
    block.Fill(0, stream_);
    PagedGatherParams back;
    back.cache = desc;
    back.layer_caches = ptrs.data();
    back.page_ids = ids.as<int32_t>();
    back.block = block.get();
    ASSERT_TRUE(Launch(back, nullptr, stream_).ok());
    Sync();
    ASSERT_TRUE((*u)->Wait().ok());
    EXPECT_EQ(FirstDifference(block.Download(stream_), *cpu_raw), -1)
        << "seed " << seed;
  }
}

TEST_F(HbmTierGpuTest, DataErrorsComeFromWait) {
  std::mt19937 rng(3);
  const BlockShape shape{DType::kFloat16, 2, 64, 1, 64};
  KvTensor kv = testing::RandomKv(shape, rng);
  kv.at(1, 1, 30, 0, 3) = NAN;
  QuantParams qp;
  auto bytes = QuantPayloadBytes(shape, qp.ToBytes());
  ASSERT_TRUE(bytes.ok());
  DeviceBuffer block(shape.RawBytes());
  block.Upload(testing::RawOf(kv), stream_);
  PinnedBuffer host = Pinned(*bytes);
  HbmTier::DemoteRequest down;
  down.shape = shape;
  down.quant_params = qp.ToBytes();
  down.kv = block.get();
  down.host_payload = host.data();
  down.host_capacity = host.size();
  auto t = tier_->Demote(down);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->Wait().code(), absl::StatusCode::kInvalidArgument);
  // Too small a host buffer is refused before anything is enqueued.
  down.host_capacity = *bytes - 1;
  EXPECT_EQ(tier_->Demote(down).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier_->pool().used_bytes(), 0u);
}

}  // namespace
}  // namespace strata::kernels
