// kvstore_put_storm_child: the victim process of crash_recovery_test.
//
//   kvstore_put_storm_child DIR SEED START THREADS DRAM_BYTES SHAPE...
//
// Opens a TieredStore with its SSD tier in DIR (4 GiB, never full here) and a
// DRAM tier of DRAM_BYTES, and runs THREADS writer threads that put blocks
// forever, durably, until the process is killed: block i (i = START,
// START+1, ..., claimed from one shared counter) has key KeyFor(i) and
// content MakeBlock(SHAPE[i % #SHAPES], SEED ^ i). Each SHAPE is
// "dtype:layers:tokens:heads:dim" with dtype the numeric DType value; the
// parent chooses them, so it can recompute every block the child may write.
// A DRAM_BYTES below the smallest block keeps every put SSD-only.
//
// Protocol on stdout (fd 1, which the parent makes a pipe), all records
// little-endian u64s written with one write(2) each (<= PIPE_BUF, so atomic):
//   - once, after the store is open: kReadyMagic, then the number of blocks
//     the SSD tier held at open (what recovery found);
//   - then, for every Put that returned kStored: the index i, written right
//     after Put returned. An index on the pipe is an acknowledged-durable
//     block (in RocksDB's WAL before Put returned).
// Errors go to stderr and end the process: exit 2 (bad arguments or open
// failure), 3 (a Put failed), 4 (a Put found the key already present: the
// parent reused an index range), 5 (writing an ack failed, e.g. the parent
// is gone). If the parent dies, the next ack raises SIGPIPE, which also ends
// the child, so a storm never outlives its test.
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kvstore/block_format.h"
#include "kvstore/tiered_store.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::kvstore {
namespace {

constexpr uint64_t kReadyMagic = 0x2159444145525453ull;  // "STREADY!"

[[noreturn]] void Die(int code, const std::string& msg) {
  std::fprintf(stderr, "kvstore_put_storm_child: %s\n", msg.c_str());
  std::fflush(stderr);
  std::_Exit(code);
}

// Writes all of `buf` to fd 1 in one write(2) (records are at most 16 bytes,
// so the pipe never splits them). Retries only on EINTR.
void WriteRecord(const void* buf, size_t n) {
  for (;;) {
    ssize_t w = ::write(STDOUT_FILENO, buf, n);
    if (w == static_cast<ssize_t>(n)) return;
    if (w < 0 && errno == EINTR) continue;
    Die(5, w < 0 ? std::string("ack write: ") + std::strerror(errno)
                 : "ack write: short write to the pipe");
  }
}

bool ParseU64(const char* s, uint64_t* out) {
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParseShape(const char* s, BlockShape* shape) {
  unsigned dtype, layers, tokens, heads, dim;
  char tail;
  if (std::sscanf(s, "%u:%u:%u:%u:%u%c", &dtype, &layers, &tokens, &heads, &dim,
                  &tail) != 5) {
    return false;
  }
  if (!IsValidDType(static_cast<uint8_t>(dtype)) || dtype > 255) return false;
  shape->dtype = static_cast<DType>(dtype);
  shape->num_layers = layers;
  shape->num_tokens = tokens;
  shape->num_kv_heads = heads;
  shape->head_dim = dim;
  return shape->Validate().ok();
}

int Main(int argc, char** argv) {
  if (argc < 7) {
    Die(2,
        "usage: kvstore_put_storm_child DIR SEED START THREADS DRAM_BYTES "
        "DTYPE:LAYERS:TOKENS:HEADS:DIM...");
  }
  const std::string dir = argv[1];
  uint64_t seed = 0, start = 0, threads = 0, dram_bytes = 0;
  if (!ParseU64(argv[2], &seed)) Die(2, "bad SEED");
  if (!ParseU64(argv[3], &start)) Die(2, "bad START");
  if (!ParseU64(argv[4], &threads) || threads == 0 || threads > 64) {
    Die(2, "bad THREADS");
  }
  if (!ParseU64(argv[5], &dram_bytes)) Die(2, "bad DRAM_BYTES");
  std::vector<BlockShape> shapes;
  for (int a = 6; a < argc; ++a) {
    BlockShape shape;
    if (!ParseShape(argv[a], &shape)) {
      Die(2, std::string("bad SHAPE ") + argv[a]);
    }
    shapes.push_back(shape);
  }

  TieredStoreOptions options;
  options.ssd_path = dir;
  options.dram_capacity_bytes = dram_bytes;
  options.ssd_capacity_bytes = uint64_t{4} << 30;  // Never evicts here.
  options.write_through = true;
  auto store = TieredStore::Open(options);
  if (!store.ok()) Die(2, "open: " + store.status().ToString());

  StoreStats stats = (*store)->Stats();
  const uint64_t ready[2] = {kReadyMagic, stats.tiers.back().blocks};
  WriteRecord(ready, sizeof(ready));

  PutOptions put_options;
  put_options.durable = true;
  std::atomic<uint64_t> next{start};
  auto writer = [&] {
    for (;;) {
      const uint64_t i = next.fetch_add(1, std::memory_order_relaxed);
      const BlockShape& shape = shapes[i % shapes.size()];
      const std::vector<uint8_t> block = testing::MakeBlock(shape, seed ^ i);
      auto put = (*store)->Put(testing::KeyFor(i), block, put_options);
      if (!put.ok()) {
        Die(3, "put " + std::to_string(i) + ": " + put.status().ToString());
      }
      if (*put != PutOutcome::kStored) {
        Die(4, "put " + std::to_string(i) + ": key already present");
      }
      WriteRecord(&i, sizeof(i));
    }
  };
  std::vector<std::thread> pool;
  for (uint64_t t = 0; t < threads; ++t) pool.emplace_back(writer);
  for (auto& th : pool) th.join();  // Never returns: writers loop until killed.
  return 0;
}

}  // namespace
}  // namespace strata::kvstore

int main(int argc, char** argv) { return strata::kvstore::Main(argc, argv); }
