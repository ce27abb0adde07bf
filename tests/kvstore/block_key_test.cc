// Tests for block key derivation (docs/keys.md, format version 1).
//
// The expected keys in KeysMatchPythonReferenceVectors come from
// tools/keys_reference.py, an independent Python implementation of the spec
// on top of the PyPI `xxhash` package; they are also listed in docs/keys.md.
// If a vector here changes, the key format changed: that needs a new format
// version, not a new vector.
#include "kvstore/block_key.h"

#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/dtype.h"

namespace strata::kvstore {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// The Llama-3-8B-like namespace of the reference vectors.
KeyNamespace Llama3Namespace() {
  KeyNamespace ns;
  ns.tenant_salt = "";
  ns.model_id = "meta-llama/Meta-Llama-3-8B";
  ns.dtype = DType::kBFloat16;
  ns.num_layers = 32;
  ns.num_kv_heads = 8;
  ns.head_dim = 128;
  ns.chunk_tokens = 256;
  ns.tp_rank = 0;
  ns.tp_size = 1;
  return ns;
}

std::vector<uint32_t> Iota(uint32_t n, uint32_t first = 0) {
  std::vector<uint32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

BlockKey Hex(const char* hex) {
  absl::StatusOr<BlockKey> k = BlockKey::FromHex(hex);
  EXPECT_TRUE(k.ok()) << k.status();
  return k.value_or(BlockKey{});
}

BlockKey RootOf(const KeyNamespace& ns) {
  absl::StatusOr<BlockKey> root = ns.Root();
  EXPECT_TRUE(root.ok()) << root.status();
  return root.value_or(BlockKey{});
}

std::vector<ChunkKey> KeysOf(const KeyNamespace& ns,
                             const std::vector<uint32_t>& tokens,
                             PartialChunk partial = PartialChunk::kDrop) {
  absl::StatusOr<std::vector<ChunkKey>> keys = ChunkKeys(ns, tokens, partial);
  EXPECT_TRUE(keys.ok()) << keys.status();
  return keys.value_or(std::vector<ChunkKey>{});
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST(BlockKeyTest, KeysMatchPythonReferenceVectors) {
  const KeyNamespace llama = Llama3Namespace();
  const BlockKey root = RootOf(llama);
  EXPECT_EQ(root.ToHex(), "6993158acbe901c89c08049bb199baa8");
  EXPECT_EQ(root, (BlockKey{0x6993158acbe901c8u, 0x9c08049bb199baa8u}));

  KeyNamespace acme = llama;
  acme.tenant_salt = "acme";
  acme.tp_rank = 1;
  acme.tp_size = 2;
  EXPECT_EQ(RootOf(acme).ToHex(), "7f1aad6ca5898a2a3a32201522fcdb94");

  const std::vector<ChunkKey> keys =
      KeysOf(llama, Iota(600), PartialChunk::kInclude);
  ASSERT_EQ(keys.size(), 3u);
  EXPECT_EQ(keys[0].key.ToHex(), "c481d715dc2237c1d6c882253782d49d");
  EXPECT_EQ(keys[1].key.ToHex(), "0359d3868a25f0dc9b8f54694c899966");
  EXPECT_EQ(keys[2].key.ToHex(), "dd3d3350ea875ca013b6477bb30900ca");
  EXPECT_EQ(keys[0].begin_token, 0u);
  EXPECT_EQ(keys[1].begin_token, 256u);
  EXPECT_EQ(keys[2].begin_token, 512u);
  EXPECT_EQ(keys[0].num_tokens, 256u);
  EXPECT_EQ(keys[1].num_tokens, 256u);
  EXPECT_EQ(keys[2].num_tokens, 88u);
  EXPECT_FALSE(keys[0].is_partial);
  EXPECT_FALSE(keys[1].is_partial);
  EXPECT_TRUE(keys[2].is_partial);

  const std::vector<uint32_t> one_two_three = {1, 2, 3};
  EXPECT_EQ(SegmentKey(root, one_two_three).ToHex(),
            "7cb753286cdd198554e3ca271fb0c780");
  EXPECT_EQ(ChainKey(root, one_two_three).ToHex(),
            "1790bb509cdc2ab1be4a8155605e5512");
  EXPECT_EQ(ChainKey(BlockKey{}, {}).ToHex(),
            "7f84c36c08ab627d4d52e35f5425dc8b");
}

TEST(BlockKeyTest, ChunkKeysEqualIncrementalChainKeys) {
  const KeyNamespace ns = Llama3Namespace();
  const std::vector<uint32_t> tokens = Iota(600, 1000);
  const std::vector<ChunkKey> keys = KeysOf(ns, tokens, PartialChunk::kInclude);
  ASSERT_EQ(keys.size(), 3u);
  const absl::Span<const uint32_t> all(tokens);
  BlockKey k = RootOf(ns);
  k = ChainKey(k, all.subspan(0, 256));
  EXPECT_EQ(keys[0].key, k);
  k = ChainKey(k, all.subspan(256, 256));
  EXPECT_EQ(keys[1].key, k);
  k = ChainKey(k, all.subspan(512));
  EXPECT_EQ(keys[2].key, k);
}

TEST(BlockKeyTest, SameInputsGiveSameKeysAcrossCalls) {
  const std::vector<uint32_t> tokens = Iota(1000, 7);
  const std::vector<ChunkKey> a = KeysOf(Llama3Namespace(), tokens);
  const std::vector<ChunkKey> b = KeysOf(Llama3Namespace(), tokens);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].key, b[i].key) << i;
}

TEST(BlockKeyTest, ChainedKeysMakeHitsPrefixOnly) {
  const KeyNamespace ns = Llama3Namespace();
  std::vector<uint32_t> tokens = Iota(3 * 256);
  const std::vector<ChunkKey> before = KeysOf(ns, tokens);
  tokens[300] += 1;  // A token in chunk 1.
  const std::vector<ChunkKey> after = KeysOf(ns, tokens);
  ASSERT_EQ(before.size(), 3u);
  ASSERT_EQ(after.size(), 3u);
  EXPECT_EQ(before[0].key, after[0].key);  // The shared prefix still hits.
  EXPECT_NE(before[1].key, after[1].key);
  // Chunk 2's tokens are unchanged, but its key depends on the whole prefix.
  EXPECT_NE(before[2].key, after[2].key);

  // The same chunk content after a different prefix never gets the same key.
  const std::vector<uint32_t> x = Iota(256, 5000);
  std::vector<uint32_t> a = Iota(256, 0);
  std::vector<uint32_t> b = Iota(256, 1);
  a.insert(a.end(), x.begin(), x.end());
  b.insert(b.end(), x.begin(), x.end());
  EXPECT_NE(KeysOf(ns, a)[1].key, KeysOf(ns, b)[1].key);
}

TEST(BlockKeyTest, PartialChunkKeyDiffersFromFullChunkKey) {
  KeyNamespace ns = Llama3Namespace();
  ns.chunk_tokens = 4;
  // A partial chunk [5, 6] and a full chunk [5, 6, 0, 0] that zero-pads it.
  const std::vector<ChunkKey> partial =
      KeysOf(ns, {1, 2, 3, 4, 5, 6}, PartialChunk::kInclude);
  const std::vector<ChunkKey> padded =
      KeysOf(ns, {1, 2, 3, 4, 5, 6, 0, 0}, PartialChunk::kInclude);
  ASSERT_EQ(partial.size(), 2u);
  ASSERT_EQ(padded.size(), 2u);
  EXPECT_EQ(partial[0].key, padded[0].key);
  EXPECT_NE(partial[1].key, padded[1].key);
  EXPECT_TRUE(partial[1].is_partial);
  EXPECT_EQ(partial[1].begin_token, 4u);
  EXPECT_EQ(partial[1].num_tokens, 2u);
  EXPECT_FALSE(padded[1].is_partial);
  EXPECT_EQ(padded[1].num_tokens, 4u);

  // The count is hashed, so a partial chunk that is a prefix of a full one
  // differs from it, and [] differs from [0].
  const BlockKey root = RootOf(ns);
  EXPECT_NE(ChainKey(root, {}), ChainKey(root, {0}));
  EXPECT_NE(ChainKey(root, {5, 6}), ChainKey(root, {5, 6, 7}));
}

TEST(BlockKeyTest, DropPartialOmitsTail) {
  const KeyNamespace ns = Llama3Namespace();
  const std::vector<uint32_t> tokens = Iota(600);
  const std::vector<ChunkKey> dropped = KeysOf(ns, tokens, PartialChunk::kDrop);
  const std::vector<ChunkKey> included =
      KeysOf(ns, tokens, PartialChunk::kInclude);
  ASSERT_EQ(dropped.size(), 2u);
  ASSERT_EQ(included.size(), 3u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(dropped[i].key, included[i].key) << i;
    EXPECT_FALSE(dropped[i].is_partial) << i;
  }
  // kDrop is the default.
  absl::StatusOr<std::vector<ChunkKey>> by_default = ChunkKeys(ns, tokens);
  ASSERT_TRUE(by_default.ok()) << by_default.status();
  EXPECT_EQ(by_default->size(), 2u);

  // Fewer tokens than one chunk: nothing to store.
  EXPECT_TRUE(KeysOf(ns, Iota(255)).empty());
  // An exact multiple has no tail, so kInclude adds nothing.
  EXPECT_EQ(KeysOf(ns, Iota(512), PartialChunk::kInclude).size(), 2u);
}

TEST(BlockKeyTest, EmptyTokensGiveNoKeys) {
  const KeyNamespace ns = Llama3Namespace();
  EXPECT_TRUE(KeysOf(ns, {}, PartialChunk::kDrop).empty());
  EXPECT_TRUE(KeysOf(ns, {}, PartialChunk::kInclude).empty());
}

TEST(BlockKeyTest, SegmentKeyIndependentOfPositionAndDiffersFromChainKey) {
  const KeyNamespace ns = Llama3Namespace();
  const BlockKey root = RootOf(ns);
  const std::vector<uint32_t> segment = Iota(100, 42);

  // The same segment found at different offsets of different prompts.
  std::vector<uint32_t> prompt_a = Iota(17, 9000);
  prompt_a.insert(prompt_a.end(), segment.begin(), segment.end());
  std::vector<uint32_t> prompt_b = Iota(300, 1);
  prompt_b.insert(prompt_b.end(), segment.begin(), segment.end());
  const BlockKey from_a =
      SegmentKey(root, absl::MakeConstSpan(prompt_a).subspan(17, 100));
  const BlockKey from_b =
      SegmentKey(root, absl::MakeConstSpan(prompt_b).subspan(300, 100));
  EXPECT_EQ(from_a, from_b);
  EXPECT_EQ(from_a, SegmentKey(root, segment));

  // Domain separation: never the chain key of the same root and tokens.
  EXPECT_NE(SegmentKey(root, segment), ChainKey(root, segment));
  EXPECT_NE(SegmentKey(root, {}), ChainKey(root, {}));
  // Still scoped by namespace and content.
  KeyNamespace other = ns;
  other.model_id = "other/model";
  EXPECT_NE(SegmentKey(RootOf(other), segment), SegmentKey(root, segment));
  EXPECT_NE(SegmentKey(root, Iota(100, 43)), SegmentKey(root, segment));
}

TEST(BlockKeyTest, NamespaceFieldsAllChangeRoot) {
  const KeyNamespace base = Llama3Namespace();
  const std::vector<std::pair<const char*, std::function<void(KeyNamespace&)>>>
      mutations = {
          {"tenant_salt", [](KeyNamespace& n) { n.tenant_salt = "acme"; }},
          {"model_id", [](KeyNamespace& n) { n.model_id += "@rev2"; }},
          {"dtype", [](KeyNamespace& n) { n.dtype = DType::kFloat16; }},
          {"num_layers", [](KeyNamespace& n) { n.num_layers = 33; }},
          {"num_kv_heads", [](KeyNamespace& n) { n.num_kv_heads = 4; }},
          {"head_dim", [](KeyNamespace& n) { n.head_dim = 64; }},
          {"chunk_tokens", [](KeyNamespace& n) { n.chunk_tokens = 128; }},
          {"tp_rank",
           [](KeyNamespace& n) {
             n.tp_size = 2;  // Compared with tp 0/2 below.
             n.tp_rank = 1;
           }},
          {"tp_size", [](KeyNamespace& n) { n.tp_size = 2; }},
      };
  std::set<BlockKey> roots = {RootOf(base)};
  for (const auto& [field, mutate] : mutations) {
    KeyNamespace ns = base;
    mutate(ns);
    const BlockKey root = RootOf(ns);
    EXPECT_TRUE(roots.insert(root).second)
        << field << " did not change the root";
    // And so every chunk key.
    EXPECT_NE(KeysOf(ns, Iota(512))[0].key, KeysOf(base, Iota(512))[0].key)
        << field;
  }
  EXPECT_EQ(roots.size(), mutations.size() + 1);

  // Length prefixes keep the two strings apart: moving a byte from
  // tenant_salt to model_id changes the root.
  KeyNamespace ab_c = base, a_bc = base;
  ab_c.tenant_salt = "ab";
  ab_c.model_id = "c";
  a_bc.tenant_salt = "a";
  a_bc.model_id = "bc";
  EXPECT_NE(RootOf(ab_c), RootOf(a_bc));
}

TEST(BlockKeyTest, InvalidNamespaceRejectedNamingField) {
  struct Case {
    std::function<void(KeyNamespace&)> mutate;
    std::string message_prefix;
  };
  const std::vector<Case> cases = {
      {[](KeyNamespace& n) { n.model_id = ""; }, "model_id: must not be empty"},
      {[](KeyNamespace& n) { n.model_id = std::string(4097, 'm'); },
       "model_id: "},
      {[](KeyNamespace& n) { n.tenant_salt = std::string(4097, 's'); },
       "tenant_salt: "},
      {[](KeyNamespace& n) { n.dtype = static_cast<DType>(0); }, "dtype: "},
      {[](KeyNamespace& n) { n.dtype = static_cast<DType>(5); }, "dtype: "},
      {[](KeyNamespace& n) { n.num_layers = 0; }, "num_layers: must be > 0"},
      {[](KeyNamespace& n) { n.num_kv_heads = 0; },
       "num_kv_heads: must be > 0"},
      {[](KeyNamespace& n) { n.head_dim = 0; }, "head_dim: must be > 0"},
      {[](KeyNamespace& n) { n.chunk_tokens = 0; },
       "chunk_tokens: must be > 0"},
      {[](KeyNamespace& n) { n.tp_size = 0; }, "tp_size: must be > 0"},
      {[](KeyNamespace& n) {
         n.tp_rank = 4;
         n.tp_size = 4;
       },
       "tp_rank: 4 must be < tp_size 4"},
  };
  for (const Case& c : cases) {
    KeyNamespace ns = Llama3Namespace();
    c.mutate(ns);
    absl::StatusOr<BlockKey> root = ns.Root();
    ASSERT_FALSE(root.ok()) << c.message_prefix;
    EXPECT_EQ(root.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(root.status()), StartsWith(c.message_prefix));
    // ChunkKeys reports the same error, even with no tokens.
    absl::StatusOr<std::vector<ChunkKey>> keys = ChunkKeys(ns, Iota(300));
    ASSERT_FALSE(keys.ok()) << c.message_prefix;
    EXPECT_EQ(keys.status(), root.status());
    EXPECT_FALSE(ChunkKeys(ns, {}).ok()) << c.message_prefix;
  }

  // The limits are inclusive: 4096-byte strings are fine.
  KeyNamespace longest = Llama3Namespace();
  longest.tenant_salt = std::string(4096, 's');
  longest.model_id = std::string(4096, 'm');
  EXPECT_TRUE(longest.Root().ok());
  // Every DType value is accepted.
  for (DType d : {DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3,
                  DType::kFloat32}) {
    KeyNamespace ns = Llama3Namespace();
    ns.dtype = d;
    EXPECT_TRUE(ns.Root().ok()) << DTypeName(d);
  }
}

TEST(BlockKeyTest, TokenListLongerThanU32MaxRejectedNamingTokens) {
  if constexpr (sizeof(size_t) <= sizeof(uint32_t)) {
    GTEST_SKIP() << "size_t cannot hold more than 2^32-1 tokens";
  } else {
    // ChunkKeys checks the length before reading any token, so a span that
    // claims 2^32 tokens over one real token is enough (16 GiB not needed).
    const uint32_t one_token = 0;
    const absl::Span<const uint32_t> huge(
        &one_token, size_t{std::numeric_limits<uint32_t>::max()} + 1);
    absl::StatusOr<std::vector<ChunkKey>> keys =
        ChunkKeys(Llama3Namespace(), huge, PartialChunk::kInclude);
    ASSERT_FALSE(keys.ok());
    EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(keys.status()), StartsWith("tokens: "));
  }
}

TEST(BlockKeyDeathTest, ChainAndSegmentKeysAbortOnMoreThanU32MaxTokens) {
  if constexpr (sizeof(size_t) <= sizeof(uint32_t)) {
    GTEST_SKIP() << "size_t cannot hold more than 2^32-1 tokens";
  } else {
    // The hashed count is a u32; wrapping it silently could alias two token
    // lists, so these status-less functions abort before reading any token.
    const uint32_t one_token = 0;
    const absl::Span<const uint32_t> huge(
        &one_token, size_t{std::numeric_limits<uint32_t>::max()} + 1);
    EXPECT_DEATH(ChainKey(BlockKey{}, huge), "4294967295");
    EXPECT_DEATH(SegmentKey(BlockKey{}, huge), "4294967295");
  }
}

TEST(BlockKeyTest, HexAndBytesRoundTrip) {
  const BlockKey k{0x0123456789abcdefu, 0xfedcba9876543210u};
  EXPECT_EQ(k.ToHex(), "0123456789abcdeffedcba9876543210");
  EXPECT_EQ(BlockKey{}.ToHex(), std::string(32, '0'));

  uint8_t bytes[16];
  k.ToBytes(bytes);
  const uint8_t expected[16] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                                0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98,
                                0x76, 0x54, 0x32, 0x10};
  EXPECT_EQ(std::string(reinterpret_cast<char*>(bytes), 16),
            std::string(reinterpret_cast<const char*>(expected), 16));
  EXPECT_EQ(k.ToBytesString(),
            std::string(reinterpret_cast<const char*>(expected), 16));

  for (const BlockKey& key :
       {k, BlockKey{}, BlockKey{~uint64_t{0}, ~uint64_t{0}},
        RootOf(Llama3Namespace())}) {
    absl::StatusOr<BlockKey> from_hex = BlockKey::FromHex(key.ToHex());
    ASSERT_TRUE(from_hex.ok()) << from_hex.status();
    EXPECT_EQ(*from_hex, key);
    absl::StatusOr<BlockKey> from_bytes =
        BlockKey::FromBytes(key.ToBytesString());
    ASSERT_TRUE(from_bytes.ok()) << from_bytes.status();
    EXPECT_EQ(*from_bytes, key);
  }

  // Upper-case and mixed-case hex parse to the same key.
  EXPECT_EQ(Hex("0123456789ABCDEFFEDCBA9876543210"), k);
  EXPECT_EQ(Hex("0123456789AbCdEfFeDcBa9876543210"), k);

  // Byte strings, hex strings and keys sort the same way.
  const std::vector<BlockKey> keys = {
      {0, 1}, {0, ~uint64_t{0}}, {1, 0}, {0x8000000000000000u, 0}};
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    EXPECT_LT(keys[i], keys[i + 1]);
    EXPECT_LT(keys[i].ToBytesString(), keys[i + 1].ToBytesString());
    EXPECT_LT(keys[i].ToHex(), keys[i + 1].ToHex());
  }
}

TEST(BlockKeyTest, FromHexRejectsBadInput) {
  const std::string good = "0123456789abcdeffedcba9876543210";
  const std::vector<std::string> bad = {
      "",
      good.substr(1),                      // 31 digits
      good + "0",                          // 33 digits
      "0x" + good.substr(2),               // prefix
      " " + good.substr(1),                // leading space
      good.substr(0, 31) + "g",            // not a hex digit
      good.substr(0, 16) + "-" + good.substr(17),
      good.substr(0, 5) + std::string(1, '\0') + good.substr(6),
      good.substr(0, 5) + "\xc3" + good.substr(6),
  };
  for (const std::string& s : bad) {
    absl::StatusOr<BlockKey> k = BlockKey::FromHex(s);
    ASSERT_FALSE(k.ok()) << s;
    EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(Message(k.status()), StartsWith("key: ")) << s;
  }
  EXPECT_THAT(Message(BlockKey::FromHex(good.substr(1)).status()),
              HasSubstr("31"));
  EXPECT_THAT(Message(BlockKey::FromHex(good.substr(0, 31) + "g").status()),
              HasSubstr("offset 31"));
}

TEST(BlockKeyTest, FromBytesRejectsWrongLength) {
  for (size_t n : {0, 1, 15, 17, 32}) {
    absl::StatusOr<BlockKey> k = BlockKey::FromBytes(std::string(n, '\x01'));
    ASSERT_FALSE(k.ok()) << n;
    EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_THAT(Message(k.status()), StartsWith("key: ")) << n;
  }
}

}  // namespace
}  // namespace strata::kvstore
