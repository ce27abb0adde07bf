// This process's mappings of daemons' shared arenas (the memfd named
// "strata-dram-arena"), read from /proc/self/smaps: how many there are and
// how many of their bytes are resident (mapped in). Header-only test code.
#ifndef STRATA_TESTS_CLUSTER_ARENA_MAPPINGS_H_
#define STRATA_TESTS_CLUSTER_ARENA_MAPPINGS_H_

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace strata::testing {

struct ArenaMappings {
  int count = 0;
  uint64_t resident_bytes = 0;
};

inline ArenaMappings ReadArenaMappings() {
  ArenaMappings out;
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_arena = false;
  while (std::getline(smaps, line)) {
    const std::vector<std::string> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    // A mapping's header starts with its address range ("7f..-7f.. rw-s").
    if (!fields.empty() && absl::StrContains(fields[0], '-') &&
        !absl::EndsWith(fields[0], ":")) {
      in_arena = absl::StrContains(line, "strata-dram-arena");
      if (in_arena) ++out.count;
      continue;
    }
    uint64_t kib = 0;
    if (in_arena && fields.size() >= 2 && fields[0] == "Rss:" &&
        absl::SimpleAtoi(fields[1], &kib)) {
      out.resident_bytes += kib << 10;
    }
  }
  return out;
}

}  // namespace strata::testing

#endif  // STRATA_TESTS_CLUSTER_ARENA_MAPPINGS_H_
