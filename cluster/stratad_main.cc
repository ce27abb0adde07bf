// stratad: the Strata cache daemon (single node).
//
//   stratad [--config=FILE] [--FIELD=VALUE ...]
//
// Every field of the config file (proto/strata/v1/config.proto, documented in
// docs/stratad.md) is also a flag; a flag overrides the file, the file
// overrides the embedded defaults. With no arguments stratad serves on
// 127.0.0.1:7070 (gRPC) and 127.0.0.1:9464 (/metrics), data in ./strata-data.
//
// When serving, it prints one line on stdout:
//   stratad ready grpc=HOST:PORT metrics=HOST:PORT ucx=HOST:PORT tcp=HOST:PORT
//   local=PATH pid=PID
// (ports resolved, so port 0 in the config picks free ones; "off" for a
// disabled endpoint), then logs to stderr, and points stdout there too (UCX
// writes its own log lines to stdout). The UCX data plane
// (cluster/ucx_data_plane.h) honours the UCX_* environment of this process.
// SIGTERM or SIGINT: stop accepting RPCs, finish those in flight (5 s grace),
// close the store (flushing the SSD tier), exit 0.
//
// Cluster mode (--cluster_etcd=..., --cluster_node_id=...; docs/cluster.md):
// it also registers itself in etcd under a lease, watches the member set,
// re-replicates and rebalances its blocks in the background (bounded by
// rebalance_bytes_per_s / rebalance_blocks_per_s), and on Drain moves every
// block to its new owners, deregisters and exits 0. SIGTERM deregisters
// first (the lease is revoked) without moving blocks.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cluster/block_service.h"
#include "cluster/log.h"
#include "cluster/metrics.h"
#include "cluster/rebalance/node_config.h"
#include "cluster/server_config.h"
#include "cluster/tcp_data_plane.h"
#include "cluster/ucx_data_plane.h"
#include "google/protobuf/text_format.h"
#include "httplib.h"
#ifdef STRATA_WITH_CLUSTER
#include "cluster/config_store/config_follower.h"
#include "cluster/rebalance/cluster_node.h"
#endif

namespace strata::cluster {
namespace {

using strata::v1::StratadConfig;

int Usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--config=FILE] [--FIELD=VALUE ...]\nfields:\n",
               argv0);
  const auto* d = StratadConfig::descriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    std::fprintf(stderr, "  --%s\n", d->field(i)->name().c_str());
  }
  return 2;
}

// Applies `--name=value` to the config via reflection (text-format value
// syntax; strings need no quotes). INVALID_ARGUMENT naming the flag.
absl::Status ApplyFlag(const std::string& arg, StratadConfig* config) {
  const size_t eq = arg.find('=');
  if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("flags: \"", arg, "\" is not --field=value"));
  }
  const std::string name = arg.substr(2, eq - 2);
  std::string value = arg.substr(eq + 1);
  const auto* field = StratadConfig::descriptor()->FindFieldByName(name);
  if (field == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": unknown flag (see --help)"));
  }
  if (field->type() == google::protobuf::FieldDescriptor::TYPE_STRING) {
    config->GetReflection()->SetString(config, field, value);
    return absl::OkStatus();
  }
  if (!google::protobuf::TextFormat::ParseFieldValueFromString(value, field,
                                                               config)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": cannot parse \"", value, "\""));
  }
  return absl::OkStatus();
}

// Block-sized buffers (a RocksDB blob read and its copy, gRPC messages:
// MiBs each) are above glibc's default mmap threshold, so each one is
// mapped, faulted in page by page and unmapped again, on every request.
// Keeping them in the heap made 32 MiB SSD reads 3.8x faster (47 -> 11 ms,
// bench/results/kvstore.md); the heap may keep up to the trim threshold of
// freed memory. glibc's own settings (MALLOC_MMAP_THRESHOLD_,
// MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES) take precedence.
void KeepBlockBuffersInTheHeap() {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr ||
      std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr ||
      std::getenv("GLIBC_TUNABLES") != nullptr) {
    return;
  }
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

// Debian's Abseil is built with absl::Mutex's deadlock detection on: every
// lock of a Mutex updates a lock-order graph (GraphCycles::GetId alone was
// 1% of all samples, about a twentieth of the daemon's CPU, in a profile of
// 256 KiB local puts with 4 clients). A release build of the daemon leaves
// it off; debug builds and the in-process tests keep it.
void NoMutexDeadlockDetectionInReleaseBuilds() {
#ifdef NDEBUG
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
}

int Run(int argc, char** argv) {
  KeepBlockBuffersInTheHeap();
  NoMutexDeadlockDetectionInReleaseBuilds();
  StratadConfig config;
  std::vector<std::string> overrides;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return Usage(argv[0]);
    if (arg == "--version") {
      std::printf("stratad %s\n", STRATA_VERSION);
      return 0;
    }
    if (arg.rfind("--config=", 0) == 0) {
      auto loaded = LoadConfigFile(arg.substr(9));
      if (!loaded.ok()) {
        LogError("bad_config", {{"error", std::string(loaded.status().message())}});
        return 2;
      }
      config.MergeFrom(*loaded);
    } else {
      overrides.push_back(arg);
    }
  }
  for (const std::string& arg : overrides) {
    if (absl::Status s = ApplyFlag(arg, &config); !s.ok()) {
      LogError("bad_flag", {{"error", std::string(s.message())}});
      return 2;
    }
  }
  auto resolved = ResolveConfig(config);
  if (!resolved.ok()) {
    LogError("bad_config", {{"error", std::string(resolved.status().message())}});
    return 2;
  }
  SetLogFormat(resolved->log_format == "text" ? LogFormat::kText
                                              : LogFormat::kJson);
  // Cluster mode (cluster_* fields; docs/cluster.md): resolved here so the
  // effective configuration shows its defaults.
  auto cluster_config =
      ResolveClusterConfig(&resolved->effective, resolved->store);
  if (!cluster_config.ok()) {
    LogError("bad_config",
             {{"error", std::string(cluster_config.status().message())}});
    return 2;
  }
#ifndef STRATA_WITH_CLUSTER
  if (cluster_config->enabled) {
    LogError("bad_config", {{"error", "cluster_etcd: this stratad was built "
                                      "without etcd support"}});
    return 2;
  }
#endif

  // Signals are taken synchronously by the main thread: block them before
  // any other thread exists so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const absl::Time opening = absl::Now();
  auto store = kvstore::TieredStore::Open(resolved->store);
  if (!store.ok()) {
    LogError("store_open_failed",
             {{"error", std::string(store.status().message())},
              {"data_dir", resolved->data_dir}});
    return 1;
  }
  const kvstore::StoreStats opened = (*store)->Stats();
  LogInfo("store_opened",
          {{"data_dir", resolved->data_dir},
           {"dram_capacity_bytes", absl::StrCat(opened.tiers[0].capacity_bytes)},
           {"ssd_blocks_recovered",
            absl::StrCat(opened.tiers.size() > 1 ? opened.tiers[1].blocks : 0)},
           {"open_ms", absl::StrCat(absl::ToInt64Milliseconds(absl::Now() - opening))}});

  ServiceMetrics metrics;
  ServiceContext ctx;
  ctx.store = store->get();
  ctx.metrics = &metrics;
  ctx.max_message_bytes = resolved->max_message_bytes;
  ctx.config_text = ConfigText(resolved->effective);
  // The data plane first: Hello must know its address from the first RPC.
  std::unique_ptr<UcxDataPlane> data_plane;
  std::string ucx_addr = "off";
  if (!resolved->data_plane_listen.empty()) {
    UcxDataPlaneOptions ucx_options;
    ucx_options.listen = resolved->data_plane_listen;
    ucx_options.peer_error_handling = resolved->data_plane_peer_errors;
    ucx_options.worker_threads =
        static_cast<int>(std::clamp<uint32_t>(resolved->grpc_threads, 2, 8));
    auto started = UcxDataPlane::Start(&ctx, ucx_options);
    if (!started.ok()) {
      LogError("data_plane_listen_failed",
               {{"data_plane_listen", resolved->data_plane_listen},
                {"error", std::string(started.status().message())}});
      return 1;
    }
    data_plane = *std::move(started);
    ucx_addr = data_plane->address();
    ctx.ucx_address = ucx_addr;
    ctx.ucx_peer_error_handling = resolved->data_plane_peer_errors;
  }
  std::unique_ptr<TcpDataPlane> tcp_plane;
  std::string tcp_addr = "off";
  std::string local_path = "off";
  // Before the plane starts: its connection threads answer it (MAP_ARENA).
  ctx.instance_token = absl::Uniform<uint64_t>(absl::BitGen());
  if (!resolved->tcp_data_plane_listen.empty()) {
    TcpDataPlaneOptions tcp_options;
    tcp_options.listen = resolved->tcp_data_plane_listen;
    tcp_options.max_connections =
        static_cast<int>(resolved->tcp_data_plane_max_connections);
    tcp_options.local_path = resolved->local_data_plane_path;
    tcp_options.verify_chunk_bytes =
        resolved->tcp_data_plane_verify_piece_bytes;
    tcp_options.local_group = resolved->local_data_plane_gid;
    if (resolved->local_data_plane_by_default) {
      // The default socket lies in the data directory, which a daemon
      // without an SSD tier has not made yet.
      std::error_code error;
      std::filesystem::create_directories(
          std::filesystem::path(tcp_options.local_path).parent_path(), error);
    }
    // Only the default asked for local connections: where its socket cannot
    // be made (another daemon serves this data directory's), the plane
    // serves without them. The arena stays shared memory.
    tcp_options.local_path_optional = resolved->local_data_plane_by_default;
    auto started = TcpDataPlane::Start(&ctx, tcp_options);
    if (started.ok() && resolved->local_data_plane_by_default &&
        (*started)->local_path().empty()) {
      resolved->effective.set_local_data_plane_path("");
      ctx.config_text = ConfigText(resolved->effective);
    }
    if (!started.ok()) {
      LogError("tcp_data_plane_listen_failed",
               {{"tcp_data_plane_listen", resolved->tcp_data_plane_listen},
                {"error", std::string(started.status().message())}});
      return 1;
    }
    tcp_plane = *std::move(started);
    tcp_addr = tcp_plane->address();
    ctx.tcp_address = tcp_addr;
    if (!tcp_plane->local_path().empty()) {
      local_path = tcp_plane->local_path();
      ctx.local_path = local_path;
    }
  }
  if (!resolved->local_data_plane_default_off.empty()) {
    LogInfo("local_data_plane_off",
            {{"reason", resolved->local_data_plane_default_off}});
  }
#ifdef STRATA_WITH_CLUSTER
  // Set once the node starts (after the gRPC port is known); read by the
  // Drain handler.
  std::unique_ptr<ClusterNode> cluster_node;
  std::atomic<ClusterNode*> cluster_node_ptr{nullptr};
  ctx.drain_status = [&cluster_node_ptr](strata::v1::DrainResponse* resp) {
    if (ClusterNode* n = cluster_node_ptr.load()) n->FillDrainStatus(resp);
  };
#endif
  DataServiceImpl data_service(&ctx);
  AdminServiceImpl admin_service(&ctx);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(resolved->listen, grpc::InsecureServerCredentials(),
                           &grpc_port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(resolved->max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(resolved->max_message_bytes));
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS,
                              static_cast<int>(resolved->grpc_threads));
  builder.RegisterService(&data_service);
  builder.RegisterService(&admin_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    LogError("listen_failed", {{"listen", resolved->listen}});
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  grpc::Server* raw_server = server.get();
  ctx.on_drain = [raw_server
#ifdef STRATA_WITH_CLUSTER
                  , &cluster_node_ptr
#endif
  ] {
    raw_server->GetHealthCheckService()->SetServingStatus(false);
    LogInfo("draining");
#ifdef STRATA_WITH_CLUSTER
    if (ClusterNode* n = cluster_node_ptr.load()) n->StartDrain();
#endif
  };
  const std::string grpc_host =
      resolved->listen.substr(0, resolved->listen.rfind(':'));
  const std::string grpc_addr = absl::StrCat(grpc_host, ":", grpc_port);

#ifdef STRATA_WITH_CLUSTER
  // Cluster mode: register in etcd, watch the members, rebalance, drain.
  if (cluster_config->enabled) {
    auto advertise = AdvertisedAddress(*cluster_config, grpc_host, grpc_port);
    if (!advertise.ok()) {
      LogError("bad_config", {{"error", std::string(advertise.status().message())}});
      server->Shutdown();
      return 2;
    }
    auto node = ClusterNode::Start(
        store->get(), *cluster_config, *advertise, ucx_addr,
        [](const char* level, const char* event, const LogFields& fields) {
          LogEvent(level, event, fields);
        },
        [&cluster_node_ptr] {
          // The drain finished and the node left the member set: let the
          // operator's `stratactl drain` see "done" (5 s at most), then exit
          // through the normal SIGTERM path.
          if (ClusterNode* n = cluster_node_ptr.load()) {
            n->WaitDoneObserved(absl::Seconds(5));
          }
          kill(getpid(), SIGTERM);
        });
    if (!node.ok()) {
      LogError("cluster_start_failed", {{"error", std::string(node.status().message())}});
      server->Shutdown();
      return 1;
    }
    cluster_node = *std::move(node);
    cluster_node_ptr.store(cluster_node.get());
    LogInfo("cluster_member", {{"node_id", cluster_config->node_id},
                               {"advertise", *advertise},
                               {"etcd", cluster_config->etcd}});
  }
#endif

#ifdef STRATA_WITH_CLUSTER
  // Cluster config and codec profiles from etcd (cluster/config_store): a
  // change or a new profile is applied as the watch delivers it, without a
  // restart; /metrics shows what is in effect (strata:cluster_config_*,
  // strata:codec_profile*).
  std::unique_ptr<ClusterConfigFollower> config_follower;
  if (cluster_config->enabled) {
    auto follower = ClusterConfigFollower::Start(
        cluster_config->etcd, cluster_config->prefix,
        [](const char* level, const char* event, const LogFields& fields) {
          LogEvent(level, event, fields);
        },
        // Once written, the cluster config's R and rebalance rates override
        // this daemon's flags (cluster/rebalance/cluster_node.h).
        [&cluster_node_ptr](const ClusterConfigSnapshot& snapshot) {
          ClusterNode* n = cluster_node_ptr.load();
          if (n == nullptr || snapshot.config.version == 0) return;
          const auto c = EffectiveClusterConfig(snapshot.config.config);
          n->ApplyClusterConfig(c.replication_factor(),
                                c.rebalance_bytes_per_s(),
                                c.rebalance_blocks_per_s());
        });
    if (!follower.ok()) {
      LogError("cluster_config_follow_failed",
               {{"error", std::string(follower.status().message())}});
      server->Shutdown();
      return 1;
    }
    config_follower = *std::move(follower);
  }
#endif

  httplib::Server http;
  std::thread http_thread;
  std::string metrics_addr = "off";
  if (!resolved->metrics_listen.empty()) {
    const std::string& m = resolved->metrics_listen;
    const std::string host = m.substr(0, m.rfind(':'));
    const int port = std::atoi(m.substr(m.rfind(':') + 1).c_str());
    http.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
      std::string text = metrics.Render(ctx.store->Stats(), ctx.draining.load(),
                                        absl::Now() - ctx.started);
#ifdef STRATA_WITH_CLUSTER
      if (ClusterNode* n = cluster_node_ptr.load()) text += n->RenderMetrics();
      if (config_follower != nullptr) text += config_follower->RenderMetrics();
#endif
      res.set_content(text, "text/plain; version=0.0.4");
    });
    http.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
      res.set_content(ctx.draining.load() ? "draining\n" : "ok\n", "text/plain");
    });
    const int bound = port == 0 ? http.bind_to_any_port(host)
                                : (http.bind_to_port(host, port) ? port : -1);
    if (bound <= 0) {
      LogError("metrics_listen_failed", {{"metrics_listen", m}});
      server->Shutdown();
      return 1;
    }
    metrics_addr = absl::StrCat(host, ":", bound);
    http_thread = std::thread([&http] { http.listen_after_bind(); });
  }

  LogInfo("serving", {{"grpc", grpc_addr}, {"metrics", metrics_addr},
                      {"ucx", ucx_addr}, {"tcp", tcp_addr},
                      {"local", local_path}, {"version", STRATA_VERSION}});
  std::printf(
      "stratad ready grpc=%s metrics=%s ucx=%s tcp=%s local=%s pid=%d\n",
      grpc_addr.c_str(), metrics_addr.c_str(), ucx_addr.c_str(),
      tcp_addr.c_str(), local_path.c_str(), static_cast<int>(getpid()));
  std::fflush(stdout);
  // stdout carries only that line. Whoever started us may stop reading it
  // (a pipe), and UCX prints its own log lines to stdout: once a pipe's
  // buffer filled, the thread printing would block for good (the UCX
  // progress thread: every data-plane request). From here on fd 1 is the
  // log stream, like stderr.
  if (dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
    LogError("stdout_redirect_failed", {{"errno", absl::StrCat(errno)}});
  }

  int sig = 0;
  sigwait(&signals, &sig);
  LogInfo("shutting_down", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
  ctx.draining.store(true);
#ifdef STRATA_WITH_CLUSTER
  // Leave the member set first (lease revoked), so clients stop routing here.
  if (cluster_node != nullptr) cluster_node->Stop();
#endif
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (http_thread.joinable()) {
    http.stop();
    http_thread.join();
  }
  if (data_plane != nullptr) data_plane->Stop();
  if (tcp_plane != nullptr) tcp_plane->Stop();
  server.reset();
#ifdef STRATA_WITH_CLUSTER
  config_follower.reset();  // Its callback reaches the node.
  cluster_node_ptr.store(nullptr);
  cluster_node.reset();  // Before the store it rebalances.
#endif
  data_plane.reset();  // Releases its leases before the store closes.
  tcp_plane.reset();
  store->reset();  // Closes RocksDB cleanly.
  LogInfo("stopped");
  return 0;
}

}  // namespace
}  // namespace strata::cluster

int main(int argc, char** argv) { return strata::cluster::Run(argc, argv); }
