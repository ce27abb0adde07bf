// strata-eval: evaluates every codec setting on the real SmolLM2-135M KV
// fixture (bits/element, relMSE, attention-output error with the real
// queries, CPU throughput). docs/codecs/eval.md has the table and the method.
//
//   strata-eval [--fixture=PATH] [--settings=all|NAME|GROUP,...] [--markdown]
//               [--profile=PATH ...] [--block-tokens=N] [--layers=A:B]
//               [--no-timing] [--reps=N] [--min-seconds=S] [--per-layer]
//               [--list]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "codecs/codec_profile.h"
#include "tools/codec_eval/eval_lib.h"

namespace strata::codec_eval {
namespace {

int Usage(const char* argv0) {
  std::fprintf(
      stderr,
      "usage: %s [--fixture=PATH] [--settings=all|NAME|GROUP,...] "
      "[--markdown]\n"
      "          [--profile=PATH ...] [--block-tokens=N] [--layers=A:B]\n"
      "          [--no-timing] [--reps=N] [--min-seconds=S] [--per-layer] "
      "[--list]\n"
      "          [--exact=keys|values]  (diagnostic: that side stays exact)\n"
      "Profiles are fitted on the calibration passage unless a --profile "
      "file (strata-calibrate) serves the setting.\n"
      "Groups: quant, aqua, sparse, lowrank, tokensparse, cluster.\n",
      argv0);
  return 2;
}

bool Flag(const std::string& arg, const char* name, std::string* value) {
  const std::string prefix = std::string(name) + "=";
  if (arg.rfind(prefix, 0) != 0) return false;
  *value = arg.substr(prefix.size());
  return true;
}

int Main(int argc, char** argv) {
  EvalOptions options;
  std::string settings_arg = "all";
  std::vector<std::string> profile_paths;
  bool markdown = false, per_layer = false, list = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string v;
    uint32_t n = 0;
    double d = 0;
    if (arg == "--help" || arg == "-h") return Usage(argv[0]);
    if (Flag(arg, "--fixture", &v)) {
      options.fixture_path = v;
    } else if (Flag(arg, "--settings", &v)) {
      settings_arg = v;
    } else if (arg == "--markdown") {
      markdown = true;
    } else if (Flag(arg, "--profile", &v)) {
      profile_paths.push_back(v);
    } else if (Flag(arg, "--block-tokens", &v) && absl::SimpleAtoi(v, &n)) {
      options.block_tokens = n;
    } else if (Flag(arg, "--layers", &v)) {
      std::vector<std::string> ab = absl::StrSplit(v, ':');
      if (ab.size() != 2 || !absl::SimpleAtoi(ab[0], &options.layer_begin) ||
          !absl::SimpleAtoi(ab[1], &options.layer_end)) {
        return Usage(argv[0]);
      }
    } else if (arg == "--no-timing") {
      options.timing = false;
    } else if (Flag(arg, "--reps", &v) && absl::SimpleAtoi(v, &n) && n > 0) {
      options.min_reps = static_cast<int>(n);
      options.max_reps = std::max<int>(options.max_reps, n);
    } else if (Flag(arg, "--min-seconds", &v) && absl::SimpleAtod(v, &d)) {
      options.min_seconds = d;
    } else if (arg == "--exact=keys" || arg == "--exact=values") {
      options.exact_side = arg == "--exact=keys" ? 0 : 1;
    } else if (arg == "--per-layer") {
      per_layer = true;
    } else if (arg == "--list") {
      list = true;
    } else {
      std::fprintf(stderr, "unknown or malformed flag: %s\n", arg.c_str());
      return Usage(argv[0]);
    }
  }
  if (list) {
    for (const Setting& s : AllSettings()) {
      std::printf("%-22s %-12s %s%s%s\n", s.name.c_str(), s.group.c_str(),
                  s.label.c_str(),
                  s.profile.kind != ProfileKind::kNone ? "  [profile: " : "",
                  s.profile.kind != ProfileKind::kNone
                      ? (s.profile.Key() + "]").c_str()
                      : "");
    }
    return 0;
  }
  std::vector<Setting> settings;
  {
    std::set<std::string> seen;
    for (absl::string_view part : absl::StrSplit(settings_arg, ',')) {
      const std::string name(part);
      bool found = false;
      for (const Setting& s : AllSettings()) {
        if (name == "all" || s.name == name || s.group == name) {
          found = true;
          if (seen.insert(s.name).second) settings.push_back(s);
        }
      }
      if (!found) {
        std::fprintf(stderr, "unknown setting or group \"%s\" (--list)\n",
                     name.c_str());
        return 2;
      }
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto evaluator = Evaluator::Create(options);
  if (!evaluator.ok()) {
    std::fprintf(stderr, "strata-eval: %s\n",
                 evaluator.status().ToString().c_str());
    return 1;
  }
  Evaluator& e = **evaluator;
  for (const std::string& path : profile_paths) {
    auto p = codecs::CodecProfile::ReadFile(path);
    if (!p.ok()) {
      std::fprintf(stderr, "strata-eval: %s: %s\n", path.c_str(),
                   p.status().ToString().c_str());
      return 1;
    }
    std::fprintf(stderr, "[profile] %s: %s profile %016llx\n", path.c_str(),
                 KindName(KindOf(*p)),
                 static_cast<unsigned long long>(p->id()));
    e.AddProfile(*std::move(p), path);
  }
  const codecs::KvFixture& fx = e.fixture();
  std::fprintf(stderr,
               "[fixture] %s: %s, block = layers [%u, %u) x tokens [0, %u) of "
               "passage %u \"%s\" (%u tokens), %u queries per layer\n",
               options.fixture_path.empty()
                   ? codecs::DefaultFixturePath().c_str()
                   : options.fixture_path.c_str(),
               fx.model.c_str(), options.layer_begin,
               std::min(options.layer_end, fx.num_layers),
               options.block_tokens, options.evaluation_passage,
               fx.passages[options.evaluation_passage].name.c_str(),
               fx.passages[options.evaluation_passage].num_tokens(),
               fx.passages[options.evaluation_passage].num_queries);
  std::vector<SettingResult> results;
  int failures = 0;
  for (const Setting& s : settings) {
    const auto s0 = std::chrono::steady_clock::now();
    auto r = e.Run(s);
    const double secs = std::chrono::duration<double>(
                            std::chrono::steady_clock::now() - s0)
                            .count();
    if (!r.ok()) {
      std::fprintf(stderr, "[%s] FAILED: %s\n", s.name.c_str(),
                   r.status().ToString().c_str());
      ++failures;
      continue;
    }
    std::printf("%s  (%.1f s)\n", TextLine(*r).c_str(), secs);
    if (per_layer) {
      std::printf("  per layer:");
      for (double x : r->attn_per_layer) std::printf(" %.4f", x);
      std::printf("\n");
    }
    std::fflush(stdout);
    results.push_back(*std::move(r));
  }
  const double total = std::chrono::duration<double>(
                           std::chrono::steady_clock::now() - t0)
                           .count();
  if (markdown) {
    const uint64_t per_token =
        2ull * fx.num_layers * fx.num_kv_heads * fx.head_dim;
    std::printf("\n%s", MarkdownReport(results, e.profile_infos(),
                                       options.block_tokens, per_token)
                            .c_str());
  }
  std::fprintf(stderr, "[done] %zu settings in %.1f s, %d failed\n",
               results.size(), total, failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace strata::codec_eval

int main(int argc, char** argv) {
  return strata::codec_eval::Main(argc, argv);
}
