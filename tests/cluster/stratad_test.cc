// stratad end to end: real daemon processes on 127.0.0.1, driven through the
// client library, raw gRPC stubs (for requests the client refuses to send),
// HTTP /metrics and the stratactl binary.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "client/strata_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "kvstore/block_format.h"
#include "strata/v1/data.grpc.pb.h"
#include "tests/cluster/stratad_process.h"
#include "tests/kvstore/test_blocks.h"

namespace strata {
namespace {

using ::strata::kvstore::BlockKey;
using ::strata::kvstore::BlockShape;
using ::strata::kvstore::DType;
using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::strata::testing::RunCommand;
using ::strata::testing::StratadProcess;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;


std::unique_ptr<client::Client> Connect(const StratadProcess& d,
                                        absl::Duration deadline = absl::Seconds(20)) {
  client::ClientOptions o;
  o.address = d.grpc_address();
  o.default_deadline = deadline;
  auto c = client::Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

std::string Metrics(const StratadProcess& d) {
  const std::string& a = d.metrics_address();
  httplib::Client http(a.substr(0, a.rfind(':')),
                       std::atoi(a.substr(a.rfind(':') + 1).c_str()));
  auto res = http.Get("/metrics");
  return res ? res->body : "";
}

TEST(Stratad, RoundTripsFrom1KiBTo64MiBAreByteExact) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), {"--dram_capacity=512MiB"});
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d);
  const std::vector<BlockShape> shapes = {
      {DType::kFloat16, 1, 1, 4, 64},        // 1 KiB payload.
      ShapeForBytes(64 << 10),
      ShapeForBytes(1 << 20, DType::kBFloat16),
      ShapeForBytes(8 << 20, DType::kFloat32),
      {DType::kFloat8E4M3, 32, 256, 8, 128},  // 16 MiB.
      {DType::kBFloat16, 64, 256, 8, 128},    // 64 MiB.
  };
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto block = MakeBlock(shapes[i], i);
    auto put = c->Put(KeyFor(i), block);
    ASSERT_TRUE(put.ok()) << shapes[i].RawBytes() << ": " << put.status();
    EXPECT_FALSE(put->already_present);
    auto got = c->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->block, block) << "payload " << shapes[i].RawBytes();
    // GetInto a registered buffer at an offset.
    std::vector<uint8_t> region(block.size() + 4096);
    auto handle = c->RegisterBuffer(region.data(), region.size());
    ASSERT_TRUE(handle.ok());
    auto n = c->GetInto(KeyFor(i), *handle, 4096, block.size());
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, block.size());
    EXPECT_TRUE(std::equal(block.begin(), block.end(), region.begin() + 4096));
  }
  EXPECT_TRUE(c->Put(KeyFor(0), MakeBlock(shapes[0], 0))->already_present);
  EXPECT_TRUE(d.Stop().ok());
}

TEST(Stratad, LeadingHitsAndPrefixLookupFindTheCachedPrefix) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"));
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d);
  kvstore::KeyNamespace ns;
  ns.model_id = "test/model";
  ns.dtype = DType::kFloat16;
  ns.num_layers = 2;
  ns.num_kv_heads = 2;
  ns.head_dim = 64;
  ns.chunk_tokens = 32;
  std::vector<uint32_t> tokens(32 * 6 + 5);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = 7 + i;
  auto chunks = *kvstore::ChunkKeys(ns, tokens);
  std::vector<BlockKey> keys;
  for (const auto& ch : chunks) keys.push_back(ch.key);
  for (int i : {0, 1, 2, 3, 5}) {
    BlockShape shape{ns.dtype, ns.num_layers, 32, ns.num_kv_heads, ns.head_dim};
    ASSERT_TRUE(c->Put(keys[i], MakeBlock(shape, i)).ok());
  }
  EXPECT_EQ(*c->LeadingHits(keys), 4u);
  auto lookup = c->PrefixLookup(ns, tokens);
  ASSERT_TRUE(lookup.ok()) << lookup.status();
  EXPECT_EQ(lookup->hit_chunks, 4u);
  EXPECT_EQ(lookup->hit_tokens, 128u);
  EXPECT_EQ(lookup->keys, keys);  // Server-side keys equal the client's.
  auto exists = c->Exists(keys);
  ASSERT_TRUE(exists.ok());
  EXPECT_EQ(*exists, (std::vector<bool>{true, true, true, true, false, true}));
  EXPECT_THAT(Metrics(d), HasSubstr("strata:lookup_hit_keys_total 8"));
}

TEST(Stratad, EvictionUnderPressureShowsInStatsAndMetrics) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), {"--dram_capacity=8MiB",
                                     "--ssd_capacity=256MiB"});
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d);
  for (int i = 0; i < 24; ++i) {
    ASSERT_TRUE(c->Put(KeyFor(i), MakeBlock(ShapeForBytes(1 << 20), i)).ok());
  }
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->tiers.size(), 2u);
  EXPECT_GT(stats->tiers[0].evictions, 0u);
  EXPECT_EQ(stats->tiers[0].demotions, stats->tiers[0].evictions);
  EXPECT_LE(stats->tiers[0].used_bytes, stats->tiers[0].capacity_bytes);
  const std::string metrics = Metrics(d);
  EXPECT_THAT(metrics, HasSubstr("# TYPE strata:tier_evictions_total counter"));
  EXPECT_THAT(metrics, HasSubstr(absl::StrCat(
                           "strata:tier_evictions_total{tier=\"dram\"} ",
                           stats->tiers[0].evictions)));
  EXPECT_THAT(metrics, HasSubstr("strata:rpc_latency_seconds_bucket{rpc=\"put\",le=\"+Inf\"} 24"));
  // A demoted block reads back from the SSD tier.
  auto got = c->Get(KeyFor(0));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->served_from, "ssd");
  EXPECT_EQ(got->block, MakeBlock(ShapeForBytes(1 << 20), 0));
}

TEST(Stratad, RestartKeepsTheSsdTier) {
  ScratchDir dir;
  {
    StratadProcess d(dir.Sub("data"), {"--write_through=true"});
    ASSERT_TRUE(d.Start().ok());
    auto c = Connect(d);
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(c->Put(KeyFor(i), MakeBlock(ShapeForBytes(256 << 10), i)).ok());
    }
    ASSERT_TRUE(d.Stop().ok());
  }
  StratadProcess d(dir.Sub("data"));
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d);
  for (int i = 0; i < 10; ++i) {
    auto got = c->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << i << ": " << got.status();
    EXPECT_EQ(got->block, MakeBlock(ShapeForBytes(256 << 10), i));
    EXPECT_EQ(got->served_from, "ssd");
  }
}

TEST(Stratad, Kill9DuringAPutStormLosesNoAcknowledgedDurableBlock) {
  const uint64_t seed = kvstore::testing::TestSeed();
  ScratchDir dir;
  auto d = std::make_unique<StratadProcess>(dir.Sub("data"),
      std::vector<std::string>{"--dram_capacity=16MiB"});
  ASSERT_TRUE(d->Start().ok());
  std::mutex mu;
  std::condition_variable acked_cv;
  std::vector<uint64_t> acked;
  std::atomic<bool> stop{false};
  auto shape_of = [&](uint64_t i) { return ShapeForBytes((16 + (seed + i) % 5 * 100) << 10); };
  std::vector<std::thread> writers;
  std::atomic<uint64_t> next{0};
  for (int w = 0; w < 3; ++w) {
    writers.emplace_back([&] {
      auto c = Connect(*d, absl::Seconds(5));
      client::PutOptions put;
      put.durable = true;
      while (!stop.load()) {
        const uint64_t i = next.fetch_add(1);
        if (c->Put(KeyFor(i), MakeBlock(shape_of(i), i), put).ok()) {
          std::lock_guard<std::mutex> lock(mu);
          acked.push_back(i);
          acked_cv.notify_all();
        } else {
          return;  // The daemon died.
        }
      }
    });
  }
  // Kill once enough puts were acknowledged (woken by the writers).
  {
    std::unique_lock<std::mutex> lock(mu);
    acked_cv.wait(lock, [&] { return acked.size() >= 60; });
  }
  d->Kill();
  stop.store(true);
  for (auto& t : writers) t.join();
  const uint64_t claimed = next.load();

  StratadProcess restarted(dir.Sub("data"));
  ASSERT_TRUE(restarted.Start().ok());
  auto c = Connect(restarted);
  std::vector<bool> is_acked(claimed, false);
  for (uint64_t i : acked) is_acked[i] = true;
  for (uint64_t i = 0; i < claimed; ++i) {
    auto got = c->Get(KeyFor(i));
    if (is_acked[i]) {
      ASSERT_TRUE(got.ok()) << "acknowledged block " << i << ": " << got.status();
    }
    if (got.ok()) {
      EXPECT_EQ(got->block, MakeBlock(shape_of(i), i)) << "wrong bytes for " << i;
    } else {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
    }
  }
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  for (const auto& t : stats->tiers) EXPECT_EQ(t.checksum_failures, 0u);
}

TEST(Stratad, DeadlinesFireAgainstAStoppedDaemonAndTheClientRecovers) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"));
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d);
  const auto block = MakeBlock(ShapeForBytes(64 << 10), 1);
  ASSERT_TRUE(c->Put(KeyFor(1), block).ok());
  d.Pause();
  client::CallOptions short_call;
  short_call.deadline = absl::Milliseconds(300);
  auto got = c->Get(KeyFor(1), short_call);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded)
      << got.status();
  auto put = c->Put(KeyFor(2), block, {}, short_call);
  EXPECT_EQ(put.status().code(), absl::StatusCode::kDeadlineExceeded);
  d.Resume();
  got = c->Get(KeyFor(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->block, block);
}

TEST(Stratad, BadRequestsAreRejectedNamingTheFieldAndTheDaemonKeepsServing) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), {"--max_block_size=1MiB"});
  ASSERT_TRUE(d.Start().ok());
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(
      d.grpc_address(), grpc::InsecureChannelCredentials(), args);
  auto stub = strata::v1::DataService::NewStub(channel);
  auto call = [&](auto method, const auto& req, auto* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return (stub.get()->*method)(&ctx, req, resp);
  };
  const auto good = MakeBlock(ShapeForBytes(64 << 10), 1);
  strata::v1::PutRequest put;
  strata::v1::PutResponse put_resp;

  put.set_key("short");
  put.set_block(std::string(good.begin(), good.end()));
  grpc::Status s = call(&strata::v1::DataService::Stub::Put, put, &put_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), StartsWith("key:"));

  put.set_key(KeyFor(1).ToBytesString());
  std::string corrupt(good.begin(), good.end());
  corrupt[corrupt.size() / 2] ^= 1;
  put.set_block(corrupt);
  s = call(&strata::v1::DataService::Stub::Put, put, &put_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(s.error_message(), StartsWith("checksum:"));

  std::string bad_header(good.begin(), good.end());
  bad_header[9] = 42;  // dtype
  put.set_block(bad_header);
  s = call(&strata::v1::DataService::Stub::Put, put, &put_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), StartsWith("dtype:"));

  put.set_block("");
  s = call(&strata::v1::DataService::Stub::Put, put, &put_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), StartsWith("header:"));

  const auto big = MakeBlock(ShapeForBytes(4 << 20), 2);  // Above 1 MiB.
  put.set_block(std::string(big.begin(), big.end()));
  s = call(&strata::v1::DataService::Stub::Put, put, &put_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), StartsWith("block:"));

  put.set_block(std::string(40 << 20, 'x'));  // Above the message limit.
  s = call(&strata::v1::DataService::Stub::Put, put, &put_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  strata::v1::BatchPutRequest batch;
  strata::v1::BatchPutResponse batch_resp;
  for (int i = 0; i < 2; ++i) {
    auto* item = batch.add_items();
    item->set_key(KeyFor(9).ToBytesString());
    item->set_block(std::string(good.begin(), good.end()));
  }
  s = call(&strata::v1::DataService::Stub::BatchPut, batch, &batch_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("duplicate key"));

  strata::v1::LeadingHitsRequest hits;
  strata::v1::LeadingHitsResponse hits_resp;
  for (int i = 0; i < 5000; ++i) hits.add_keys(KeyFor(i).ToBytesString());
  s = call(&strata::v1::DataService::Stub::LeadingHits, hits, &hits_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), StartsWith("keys:"));

  strata::v1::PinRequest pin;
  strata::v1::PinResponse pin_resp;
  pin.set_key(KeyFor(1).ToBytesString());
  pin.set_ttl_ms(0);
  s = call(&strata::v1::DataService::Stub::Pin, pin, &pin_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), StartsWith("ttl_ms:"));

  // Nothing above was stored, and the daemon still serves.
  auto c = Connect(d);
  EXPECT_EQ(c->Get(KeyFor(1)).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(c->Put(KeyFor(1), good).ok());
  EXPECT_EQ(c->Get(KeyFor(1))->block, good);
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->puts, 1u);
  EXPECT_GE(stats->rejected_puts, 4u);
}

TEST(Stratad, StratactlOperatesTheDaemon) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"));
  ASSERT_TRUE(d.Start().ok());
  const std::string addr = "--addr=" + d.grpc_address();
  auto ctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {STRATACTL_PATH, addr});
    return RunCommand(args);
  };
  const std::string block_file = dir.Sub("block.bin");
  const std::string out_file = dir.Sub("out.bin");
  const std::string key = KeyFor(5).ToHex();

  auto r = ctl({"make-block", block_file, "--shape=2,16,2,64", "--dtype=fp16"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = ctl({"put", key, block_file, "--tenant=acme", "--model=m1"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("stored"));
  r = ctl({"get", key, out_file});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(RunCommand({"/usr/bin/cmp", block_file, out_file}).exit_code, 0);
  EXPECT_EQ(ctl({"pin", key, "30s"}).exit_code, 0);
  r = ctl({"evict", "--tenant=acme", "--dry-run"});
  EXPECT_THAT(r.out, HasSubstr("would evict 0 blocks"));
  EXPECT_THAT(r.out, HasSubstr("1 pinned blocks skipped"));
  EXPECT_EQ(ctl({"unpin", key}).exit_code, 0);
  r = ctl({"evict", "--tenant=acme"});
  EXPECT_THAT(r.out, HasSubstr("evicted 1 blocks"));
  r = ctl({"get", key, out_file});
  EXPECT_EQ(r.exit_code, 1);
  r = ctl({"stats", "--json"});
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("\"puts\":1"));
  r = ctl({"status"});
  EXPECT_THAT(r.out, HasSubstr("SERVING"));
  r = ctl({"config"});
  EXPECT_THAT(r.out, HasSubstr("dram_capacity: \"1GiB\""));
  r = ctl({"bench", "--op=mixed", "--size=64KiB", "--clients=2", "--ops=20",
           "--warmup=2"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("GB/s"));
  // The bench removed what it stored (the store held nothing before it);
  // with --keep it leaves its blocks.
  r = ctl({"stats", "--json"});
  EXPECT_THAT(r.out, ContainsRegex("\"tier\":\"dram\"[^}]*\"blocks\":0,"))
      << r.out;
  EXPECT_THAT(r.out, Not(HasSubstr("\"removes\":0,"))) << r.out;
  const std::string latencies = dir.Sub("latencies.txt");
  r = ctl({"bench", "--op=put", "--size=64KiB", "--clients=1", "--ops=3",
           "--keep", "--latency-file=" + latencies});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  // One "client microseconds" line per call.
  std::ifstream lines(latencies);
  int calls = 0;
  for (std::string line; std::getline(lines, line); ++calls) {
    EXPECT_THAT(line, ContainsRegex("^0 [0-9]+\\.[0-9]$")) << line;
  }
  EXPECT_EQ(calls, 3);
  // A latency file that cannot be written is a usage error before any load.
  // (Through a shell, for the message on stderr.)
  r = RunCommand({"/bin/sh", "-c",
                  std::string(STRATACTL_PATH) + " " + addr +
                      " bench --op=put --size=64KiB --clients=1 --ops=3"
                      " --latency-file=" +
                      dir.Sub("no/such/dir/l.txt") + " 2>&1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("latency-file: cannot write")) << r.out;
  // --local-daemon-uid takes a user id (the pin itself: tests/cluster/
  // local_arena_mapping_test); over gRPC it changes nothing.
  r = RunCommand({"/bin/sh", "-c",
                  std::string(STRATACTL_PATH) + " " + addr +
                      " --local-daemon-uid=strata status 2>&1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("local-daemon-uid:")) << r.out;
  r = ctl({"status", "--local-daemon-uid=" + std::to_string(geteuid())});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  r = ctl({"stats", "--json"});
  EXPECT_THAT(r.out, ContainsRegex("\"tier\":\"dram\"[^}]*\"blocks\":3,"))
      << r.out;
  r = ctl({"pin", "nothex", "1s"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(ctl({"drain"}).exit_code, 0);
  r = ctl({"put", KeyFor(6).ToHex(), block_file});
  EXPECT_EQ(r.exit_code, 1);  // Draining: refused.
  EXPECT_TRUE(d.Stop().ok());
}

}  // namespace
}  // namespace strata
