// strata-calibrate: fits a model's codec profile (AQUA-KV predictors, CSR
// dictionaries, PCA bases) from KV samples and writes it as a versioned
// CodecProfile file (codecs/codec_profile.h) that strata-eval, the Python shim
// and the store load.
//
//   strata-calibrate [--fixture=PATH] [--passage=calibration|evaluation|N]
//                    --codec=aqua|sparse|lowrank [codec options] --out=PROFILE
//   strata-calibrate [--fixture=PATH] --for-setting=NAME --out=PROFILE
//
// Codec options:
//   aqua:    --ridge-lambda=F (default 1)
//   sparse:  --atoms=N (1024) --chunks-per-head=N (1) --layers-per-group=N (5)
//            --train-atoms-per-chunk=N (4) --kmeans-iterations=N (8)
//            --refine-rounds=N (4) --max-training-chunks=N (16384)
//            --duplicate-cos=F (0.95)
//   lowrank: --rank-max=N (64)
// KV source: today the real-KV fixture (codecs/kv_fixture.h; all layers and
// tokens of one passage, pre-RoPE keys). Other sources come later.
#include <chrono>
#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "codecs/kv_fixture.h"
#include "tools/codec_eval/eval_lib.h"

namespace strata::codec_eval {
namespace {

int Usage(const char* argv0) {
  std::fprintf(
      stderr,
      "usage: %s [--fixture=PATH] [--passage=calibration|evaluation|N]\n"
      "         (--codec=aqua|sparse|lowrank [options] | --for-setting=NAME)\n"
      "         --out=PROFILE\n"
      "  aqua:    --ridge-lambda=F\n"
      "  sparse:  --atoms=N --chunks-per-head=N --layers-per-group=N\n"
      "           --train-atoms-per-chunk=N --kmeans-iterations=N\n"
      "           --refine-rounds=N --max-training-chunks=N --duplicate-cos=F\n"
      "  lowrank: --rank-max=N\n",
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
  std::string fixture_path, passage = "calibration", codec, out, setting;
  ProfileSpec spec;
  bool bad = false;
  auto u32 = [&](const std::string& v, uint32_t* dst) {
    if (!absl::SimpleAtoi(v, dst)) bad = true;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string v;
    if (arg == "--help" || arg == "-h") return Usage(argv[0]);
    if (Flag(arg, "--fixture", &v)) {
      fixture_path = v;
    } else if (Flag(arg, "--passage", &v)) {
      passage = v;
    } else if (Flag(arg, "--codec", &v)) {
      codec = v;
    } else if (Flag(arg, "--out", &v)) {
      out = v;
    } else if (Flag(arg, "--for-setting", &v)) {
      setting = v;
    } else if (Flag(arg, "--ridge-lambda", &v)) {
      if (!absl::SimpleAtof(v, &spec.aqua_ridge_lambda)) bad = true;
    } else if (Flag(arg, "--atoms", &v)) {
      u32(v, &spec.sparse.num_atoms);
    } else if (Flag(arg, "--chunks-per-head", &v)) {
      u32(v, &spec.sparse.chunks_per_head);
    } else if (Flag(arg, "--layers-per-group", &v)) {
      u32(v, &spec.sparse.layers_per_group);
    } else if (Flag(arg, "--train-atoms-per-chunk", &v)) {
      u32(v, &spec.sparse.atoms_per_chunk);
    } else if (Flag(arg, "--kmeans-iterations", &v)) {
      u32(v, &spec.sparse.kmeans_iterations);
    } else if (Flag(arg, "--refine-rounds", &v)) {
      u32(v, &spec.sparse.refine_rounds);
    } else if (Flag(arg, "--max-training-chunks", &v)) {
      u32(v, &spec.sparse.max_training_chunks);
    } else if (Flag(arg, "--duplicate-cos", &v)) {
      if (!absl::SimpleAtof(v, &spec.sparse.duplicate_cos)) bad = true;
    } else if (Flag(arg, "--rank-max", &v)) {
      u32(v, &spec.lowrank_r_max);
    } else {
      std::fprintf(stderr, "unknown flag: %s\n", arg.c_str());
      return Usage(argv[0]);
    }
    if (bad) {
      std::fprintf(stderr, "malformed value: %s\n", arg.c_str());
      return Usage(argv[0]);
    }
  }
  if (!setting.empty()) {
    auto s = FindSetting(setting);
    if (!s.ok()) {
      std::fprintf(stderr, "strata-calibrate: %s\n",
                   s.status().ToString().c_str());
      return 2;
    }
    if (s->profile.kind == ProfileKind::kNone) {
      std::fprintf(stderr, "strata-calibrate: setting %s needs no profile\n",
                   setting.c_str());
      return 2;
    }
    spec = s->profile;
  } else if (codec == "aqua") {
    spec.kind = ProfileKind::kAqua;
  } else if (codec == "sparse") {
    spec.kind = ProfileKind::kSparse;
  } else if (codec == "lowrank") {
    spec.kind = ProfileKind::kLowRank;
  } else {
    std::fprintf(stderr, "--codec must be aqua, sparse or lowrank\n");
    return Usage(argv[0]);
  }
  if (out.empty()) {
    std::fprintf(stderr, "--out is required\n");
    return Usage(argv[0]);
  }
  if (fixture_path.empty()) fixture_path = codecs::DefaultFixturePath();
  auto fx = codecs::LoadKvFixture(fixture_path);
  if (!fx.ok()) {
    std::fprintf(stderr, "strata-calibrate: %s\n",
                 fx.status().ToString().c_str());
    return 1;
  }
  uint32_t p = UINT32_MAX;
  for (uint32_t i = 0; i < fx->passages.size(); ++i) {
    if (fx->passages[i].name == passage) p = i;
  }
  if (p == UINT32_MAX &&
      (!absl::SimpleAtoi(passage, &p) || p >= fx->passages.size())) {
    std::fprintf(stderr, "strata-calibrate: no passage \"%s\"\n",
                 passage.c_str());
    return 2;
  }
  auto kv = fx->Kv(p, 0, fx->num_layers, 0, fx->passages[p].num_tokens());
  if (!kv.ok()) {
    std::fprintf(stderr, "strata-calibrate: %s\n",
                 kv.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr,
               "[calibrate] %s profile %s on passage %u \"%s\" (%u layers x "
               "%u tokens x %u KV heads x %u, pre-RoPE keys) of %s\n",
               KindName(spec.kind), spec.Key().c_str(), p,
               fx->passages[p].name.c_str(), fx->num_layers,
               fx->passages[p].num_tokens(), fx->num_kv_heads, fx->head_dim,
               fx->model.c_str());
  const auto t0 = std::chrono::steady_clock::now();
  auto profile = FitProfile(spec, {*kv}, fx->model);
  const double secs = std::chrono::duration<double>(
                          std::chrono::steady_clock::now() - t0)
                          .count();
  if (!profile.ok()) {
    std::fprintf(stderr, "strata-calibrate: %s\n",
                 profile.status().ToString().c_str());
    return 1;
  }
  if (absl::Status s = profile->WriteFile(out); !s.ok()) {
    std::fprintf(stderr, "strata-calibrate: %s\n", s.ToString().c_str());
    return 1;
  }
  const size_t bytes = profile->Serialize().size();
  std::printf(
      "profile %016llx  %s  %zu bytes (%.2f MB, %zu tensors)  model %s  "
      "fitted in %.1f s  -> %s\n",
      static_cast<unsigned long long>(profile->id()), spec.Key().c_str(),
      bytes, bytes / 1e6, profile->tensors().size(),
      profile->model_id().c_str(), secs, out.c_str());
  return 0;
}

}  // namespace
}  // namespace strata::codec_eval

int main(int argc, char** argv) {
  return strata::codec_eval::Main(argc, argv);
}
