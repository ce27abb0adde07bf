// strata-member: registers a running stratad in etcd and keeps it registered
// (docs/cluster.md). A sidecar until stratad registers itself.
//
//   strata-member --etcd=127.0.0.1:2379 --node_id=n1 --grpc=127.0.0.1:7070
//     --capacity=64GiB --zone=z1 --ttl_s=10
//
// It writes <prefix>members/<node_id> under a lease of ttl_s seconds, renews
// the lease every ttl_s/3 and re-registers when etcd says the lease is gone.
// With --health_check (the default) it registers only while the daemon
// answers its gRPC health check (every ttl_s/3): after --unhealthy_after
// failed checks in a row it revokes the lease, so clients drop the node at
// once; when the daemon answers again it registers with a new incarnation
// (the daemon restarted: its DRAM tier is empty).
//
// stdout: exactly one line once registered the first time,
//   strata-member ready node_id=N key=KEY lease=ID
// stderr: structured logs (JSON by default). SIGTERM / SIGINT: revoke the
// lease, exit 0. Bad flags: exit 2.
#include <signal.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/strata_client.h"
#include "cluster/membership/etcd_client.h"
#include "cluster/membership/member.h"
#include "cluster/membership/membership.h"

namespace strata::cluster {
namespace {

bool g_json_logs = true;
std::mutex g_log_mu;

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  return out;
}

void Log(const char* level, const char* event,
         const std::vector<std::pair<std::string, std::string>>& fields) {
  const std::string ts =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone());
  std::string line;
  if (g_json_logs) {
    line = absl::StrCat("{\"ts\":\"", ts, "\",\"level\":\"", level,
                        "\",\"event\":\"", event, "\"");
    for (const auto& [k, v] : fields) {
      absl::StrAppend(&line, ",\"", JsonEscape(k), "\":\"", JsonEscape(v), "\"");
    }
    line += "}\n";
  } else {
    line = absl::StrCat("ts=", ts, " level=", level, " event=", event);
    for (const auto& [k, v] : fields) {
      const bool quote = v.find(' ') != std::string::npos || v.empty();
      absl::StrAppend(&line, " ", k, "=", quote ? "\"" : "", v, quote ? "\"" : "");
    }
    line += "\n";
  }
  std::lock_guard<std::mutex> lock(g_log_mu);
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

// "123", "64GiB", "1.5TB": B, KiB, MiB, GiB, TiB (and KB, MB, GB, TB =
// powers of 1000), as stratad's capacities.
bool ParseBytes(std::string s, uint64_t* out) {
  s = std::string(absl::StripAsciiWhitespace(s));
  size_t i = 0;
  while (i < s.size() && (absl::ascii_isdigit(s[i]) || s[i] == '.')) ++i;
  double value;
  if (i == 0 || !absl::SimpleAtod(s.substr(0, i), &value) || value < 0) return false;
  static const std::map<std::string, double> kUnits = {
      {"", 1},         {"B", 1},           {"KiB", 1024.0},
      {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
      {"KB", 1e3},     {"MB", 1e6},        {"GB", 1e9},
      {"TB", 1e12}};
  auto it = kUnits.find(s.substr(i));
  if (it == kUnits.end()) return false;
  const double bytes = value * it->second;
  if (bytes >= 1.8e19) return false;
  *out = static_cast<uint64_t>(bytes);
  return true;
}

int Usage(const std::string& error) {
  std::cerr << "strata-member: " << error << "\n"
            << "usage: strata-member --etcd=HOST:PORT[,HOST:PORT] --node_id=ID "
               "--grpc=HOST:PORT [--ucx=HOST:PORT] [--capacity=BYTES] "
               "[--zone=ZONE] [--ttl_s=10] [--prefix=/strata/v1/] "
               "[--health_check=true|false] [--unhealthy_after=2] "
               "[--log_format=json|text]\n";
  return 2;
}

int Main(int argc, char** argv) {
  std::map<std::string, std::string> flags = {
      {"etcd", "127.0.0.1:2379"}, {"node_id", ""},        {"grpc", ""},
      {"ucx", ""},                {"capacity", "1GiB"},   {"zone", ""},
      {"ttl_s", "10"},            {"prefix", std::string(kDefaultEtcdPrefix)},
      {"health_check", "true"},   {"unhealthy_after", "2"},
      {"log_format", "json"},     {"version", ""},
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) return Usage("unexpected argument " + arg);
    arg = arg.substr(2);
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    if (!flags.contains(name)) return Usage("unknown flag --" + name);
    flags[name] = eq == std::string::npos ? "true" : arg.substr(eq + 1);
  }
  if (flags["log_format"] != "json" && flags["log_format"] != "text") {
    return Usage("log_format: json or text");
  }
  g_json_logs = flags["log_format"] == "json";

  Member self;
  self.node_id = flags["node_id"];
  self.grpc_address = flags["grpc"];
  self.ucx_address = flags["ucx"];
  self.zone = flags["zone"];
  self.version = flags["version"];
  if (!ParseBytes(flags["capacity"], &self.capacity_bytes)) {
    return Usage("capacity: \"" + flags["capacity"] + "\" is not a size");
  }
  if (absl::Status s = ValidateMember(self); !s.ok()) {
    return Usage(std::string(s.message()));
  }
  int ttl_s = 0;
  if (!absl::SimpleAtoi(flags["ttl_s"], &ttl_s) || ttl_s < 2) {
    return Usage("ttl_s: an integer >= 2 (etcd's minimum lease TTL)");
  }
  int unhealthy_after = 0;
  if (!absl::SimpleAtoi(flags["unhealthy_after"], &unhealthy_after) ||
      unhealthy_after < 1) {
    return Usage("unhealthy_after: an integer >= 1");
  }
  if (flags["health_check"] != "true" && flags["health_check"] != "false") {
    return Usage("health_check: true or false");
  }
  const bool health_check = flags["health_check"] == "true";
  if (flags["prefix"].empty() || flags["prefix"].back() != '/') {
    return Usage("prefix: must end with '/'");
  }

  // stdout may be a pipe its reader closed after the ready line.
  signal(SIGPIPE, SIG_IGN);
  // Signals are taken synchronously by the main loop (sigtimedwait); block
  // them before any thread starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  EtcdOptions etcd_options;
  etcd_options.endpoints = flags["etcd"];
  etcd_options.call_timeout = absl::Seconds(ttl_s) / 3;
  auto etcd = EtcdClient::Create(etcd_options);
  if (!etcd.ok()) return Usage(std::string(etcd.status().message()));

  RegistryOptions registry_options;
  registry_options.prefix = flags["prefix"];
  registry_options.ttl = absl::Seconds(ttl_s);
  registry_options.log = Log;
  MembershipRegistry registry(etcd->get(), self, registry_options);

  const absl::Duration interval = absl::Seconds(ttl_s) / 3;
  std::unique_ptr<client::Client> daemon;
  if (health_check) {
    client::ClientOptions o;
    o.address = self.grpc_address;
    o.data_plane = "grpc";
    o.default_deadline = interval;
    o.max_attempts = 1;
    auto c = client::Client::Connect(o);
    if (!c.ok()) return Usage(std::string(c.status().message()));
    daemon = *std::move(c);
  }
  Log("info", "member_agent_started",
      {{"etcd", flags["etcd"]},
       {"member", MemberDebugString(registry.self())},
       {"ttl_s", flags["ttl_s"]},
       {"health_check", flags["health_check"]}});

  bool running = false;
  bool printed_ready = false;
  bool deregistered_unhealthy = false;
  int failures = 0;
  while (true) {
    bool healthy = true;
    if (health_check) {
      absl::Status h = daemon->Health();
      healthy = h.ok();
      if (healthy) {
        failures = 0;
      } else {
        ++failures;
        Log("warning", "daemon_unhealthy",
            {{"grpc", self.grpc_address},
             {"failures", absl::StrCat(failures)},
             {"status", h.ToString()}});
      }
    }
    if (healthy && !running) {
      if (deregistered_unhealthy) {
        Member again = registry.self();
        again.incarnation = 0;  // A new one: the daemon restarted.
        registry.Update(again).IgnoreError();
        deregistered_unhealthy = false;
      }
      if (absl::Status s = registry.Start(); !s.ok()) {
        Log("error", "member_start_failed", {{"status", s.ToString()}});
        return 1;
      }
      running = true;
    } else if (running && failures >= unhealthy_after) {
      registry.Stop().IgnoreError();
      running = false;
      deregistered_unhealthy = true;
      Log("warning", "member_deregistered_unhealthy",
          {{"failures", absl::StrCat(failures)}});
    }
    if (running && !printed_ready &&
        registry.WaitRegistered(interval).ok()) {
      std::cout << "strata-member ready node_id=" << self.node_id
                << " key=" << registry.key()
                << " lease=" << registry.lease_id() << std::endl;
      printed_ready = true;
    }
    const timespec wait = {static_cast<time_t>(absl::ToInt64Seconds(interval)),
                           static_cast<long>(absl::ToInt64Nanoseconds(
                               interval % absl::Seconds(1)))};
    const int sig = sigtimedwait(&signals, nullptr, &wait);
    if (sig == SIGTERM || sig == SIGINT) {
      Log("info", "member_agent_stopping", {{"signal", absl::StrCat(sig)}});
      break;
    }
  }
  absl::Status s = registry.Stop();
  return s.ok() ? 0 : 1;
}

}  // namespace
}  // namespace strata::cluster

int main(int argc, char** argv) { return strata::cluster::Main(argc, argv); }
