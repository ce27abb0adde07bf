// Helpers shared by the kvstore tests: deterministic blocks, keys and
// scratch directories.
#ifndef STRATA_TESTS_KVSTORE_TEST_BLOCKS_H_
#define STRATA_TESTS_KVSTORE_TEST_BLOCKS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/block_key.h"
#include "kvstore/tiered_store.h"

namespace strata::kvstore::testing {

// A shape whose raw payload is about `payload_bytes` (exact for multiples of
// 2 * 8 * 128 * 2 bytes), fp16.
BlockShape ShapeForBytes(uint64_t payload_bytes, DType dtype = DType::kFloat16);

// An encoded raw block whose payload bytes are a pure function of `seed`.
std::vector<uint8_t> MakeBlock(const BlockShape& shape, uint64_t seed);

// Every DType, for parameterized tests, and a readable test-name suffix.
inline constexpr DType kAllDTypes[] = {DType::kFloat16, DType::kBFloat16,
                                       DType::kFloat8E4M3, DType::kFloat32};
inline std::string DTypeParamName(
    const ::testing::TestParamInfo<DType>& info) {
  return DTypeName(info.param);
}

// A key that is a pure function of `i`.
BlockKey KeyFor(uint64_t i);

// Flips one byte of `key`'s payload where its DRAM copy lies (fails the
// test if the key has no DRAM copy): a bit rot the next verified read finds.
void FlipDramPayloadByte(TieredStore& store, const BlockKey& key);

// The seed for randomized tests: $STRATA_TEST_SEED if set, else random.
// Prints it so a failure can be replayed.
uint64_t TestSeed();

// A fresh empty directory under $STRATA_TEST_TMPDIR (or /tmp), removed by the
// destructor.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }
  // A path for a Unix socket named `name`: Sub(name) when it fits a
  // sockaddr_un (107 bytes), else one in a short directory under /tmp that
  // the destructor removes too (a deep build tree).
  std::string SocketPath(const std::string& name);

 private:
  std::string path_;
  std::string short_dir_;  // Made by SocketPath when needed.
};

}  // namespace strata::kvstore::testing

#endif  // STRATA_TESTS_KVSTORE_TEST_BLOCKS_H_
