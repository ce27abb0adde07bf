#include "tests/kvstore/test_blocks.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

namespace strata::kvstore::testing {

BlockShape ShapeForBytes(uint64_t payload_bytes, DType dtype) {
  BlockShape s;
  s.dtype = dtype;
  s.num_layers = 1;
  s.num_kv_heads = 8;
  s.head_dim = 128;
  const uint64_t per_token = 2 * s.num_kv_heads * s.head_dim * DTypeSize(dtype);
  uint64_t tokens = std::max<uint64_t>(1, payload_bytes / per_token);
  while (tokens > 256) {  // Keep chunks realistic: spread over layers.
    s.num_layers *= 2;
    tokens /= 2;
  }
  s.num_tokens = static_cast<uint32_t>(tokens);
  return s;
}

std::vector<uint8_t> MakeBlock(const BlockShape& shape, uint64_t seed) {
  std::vector<uint8_t> payload(shape.RawBytes());
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 1);
  size_t i = 0;
  for (; i + 8 <= payload.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(payload.data() + i, &v, 8);
  }
  for (; i < payload.size(); ++i) payload[i] = static_cast<uint8_t>(rng());
  auto block = EncodeBlock(shape, CodecId::kRaw, {}, payload);
  if (!block.ok()) {
    std::fprintf(stderr, "MakeBlock: %s\n", block.status().ToString().c_str());
    std::abort();
  }
  return *std::move(block);
}

BlockKey KeyFor(uint64_t i) {
  return BlockKey{0x5354524154410000ull ^ (i * 0x9E3779B97F4A7C15ull), i};
}

void FlipDramPayloadByte(TieredStore& store, const BlockKey& key) {
  auto lease = store.Get(key);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_EQ(lease->served_from(), TierKind::kDram);
  auto* p = const_cast<uint8_t*>(lease->payload().data());
  p[lease->payload().size() / 3] ^= 0x10;
}

uint64_t TestSeed() {
  uint64_t seed;
  if (const char* env = std::getenv("STRATA_TEST_SEED")) {
    seed = std::strtoull(env, nullptr, 10);
  } else {
    seed = (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
  }
  std::printf("[ seed     ] STRATA_TEST_SEED=%llu\n",
              static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  return seed;
}

ScratchDir::ScratchDir() {
  const char* root = std::getenv("STRATA_TEST_TMPDIR");
  std::string base = root != nullptr ? root : "/tmp";
  std::filesystem::create_directories(base);
  std::string templ = base + "/strata-test-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = buf.data();
}

std::string ScratchDir::SocketPath(const std::string& name) {
  std::string path = Sub(name);
  if (path.size() <= 107) return path;
  if (short_dir_.empty()) {
    char templ[] = "/tmp/strata-sock-XXXXXX";
    if (mkdtemp(templ) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    short_dir_ = templ;
  }
  return short_dir_ + "/" + name;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (!short_dir_.empty()) std::filesystem::remove_all(short_dir_, ec);
}

}  // namespace strata::kvstore::testing
