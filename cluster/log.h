// Structured logs: one line per event on stderr, JSON (default) or
// `key=value` text. Every line has ts, level and event.
//
// Thread safety: thread-safe; lines never interleave.
#ifndef STRATA_CLUSTER_LOG_H_
#define STRATA_CLUSTER_LOG_H_

#include <string>
#include <utility>
#include <vector>

namespace strata::cluster {

enum class LogFormat { kJson, kText };
void SetLogFormat(LogFormat format);

using LogFields = std::vector<std::pair<std::string, std::string>>;
void LogEvent(const char* level, const char* event, const LogFields& fields);

inline void LogInfo(const char* event, const LogFields& fields = {}) {
  LogEvent("info", event, fields);
}
inline void LogWarning(const char* event, const LogFields& fields = {}) {
  LogEvent("warning", event, fields);
}
inline void LogError(const char* event, const LogFields& fields = {}) {
  LogEvent("error", event, fields);
}

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_LOG_H_
