#include "cluster/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace strata::cluster {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kJson};
std::mutex g_mu;

void AppendJsonString(std::string* out, const std::string& s) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

}  // namespace

void SetLogFormat(LogFormat format) { g_format.store(format); }

void LogEvent(const char* level, const char* event, const LogFields& fields) {
  const std::string ts =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone());
  std::string line;
  if (g_format.load() == LogFormat::kJson) {
    line = "{\"ts\":\"" + ts + "\",\"level\":\"" + level + "\",\"event\":";
    AppendJsonString(&line, event);
    for (const auto& [k, v] : fields) {
      line.push_back(',');
      AppendJsonString(&line, k);
      line.push_back(':');
      AppendJsonString(&line, v);
    }
    line.append("}\n");
  } else {
    line = absl::StrCat(ts, " ", level, " ", event);
    for (const auto& [k, v] : fields) absl::StrAppend(&line, " ", k, "=", v);
    line.push_back('\n');
  }
  std::lock_guard<std::mutex> lock(g_mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace strata::cluster
