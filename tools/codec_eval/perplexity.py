#!/usr/bin/env python3
"""Perplexity and mean token KL vs fp16 with a compressed KV cache (run by
hand, not in CI; docs/codecs/eval.md records its numbers).

    python3 tools/codec_eval/perplexity.py [--build-dir build-eval]
        [--settings fp16,kivi4,...] [--prefix 256] [--tokens 192] [--markdown]

Decode-style pass on held-out text (the opening of the US Declaration of
Independence, tools/kv_fixture/make_fixture.py's EVALUATION_TEXT; the codec
profiles are fitted on the other text, Pride and Prejudice) with
SmolLM2-135M-Instruct (the numpy fp32 forward pass of make_fixture.py):
  1. the exact K/V of the first `--prefix` tokens (one Strata block) from a
     normal forward pass (pre-RoPE keys);
  2. per setting, compress + decompress that prefix K/V with the C++ codec
     through libstrata_codec_shim.so (ctypes; fp16 cache semantics: the shim
     rounds the input to fp16); token-sparse settings also return which tokens
     they keep, and dropped tokens are masked out of attention;
  3. run the next `--tokens` tokens attending to [decoded prefix (keys rotated
     at their positions, rounded to fp16) + exact K/V of the new tokens], i.e.
     what sequential decoding after loading the stored block computes;
  4. report perplexity over those tokens and the mean over them of
     KL(p_fp16 || p_setting), where fp16 = the uncompressed fp16 prefix.

Profiles come from `strata-calibrate --for-setting=NAME` (fitted on the
fixture's calibration passage, written under BUILD_DIR/codec_eval_profiles/),
so this exercises the calibrate -> profile file -> codec path.

Needs the virtualenv tools/kv_fixture/make_fixture.py creates (default
$TMPDIR/strata-kv-fixture-venv; created here with the same pinned packages if
absent) and a build of the targets strata-calibrate, strata-eval and
strata_codec_shim.
"""

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time

# Importing make_fixture must not leave __pycache__ in tools/kv_fixture/.
sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURE_TOOL = os.path.join(REPO, "tools", "kv_fixture")

DEFAULT_SETTINGS = [
    "fp16", "kivi4", "kivi3", "kivi2", "kivi2-g64", "kivi2-ktok",
    "kivi2-sink4-out1", "aqua2-g64", "aqua2-g64-s4", "aqua2-g32", "aqua3-g64",
    "aqua4-g32",
    "csr-s4", "csr-sn2-s2", "csr-s2", "csr-sn2-s1", "csr-sn2-s4",
    "pca-k32v64-int4w", "pca-k64v64-int4w",
    "evict50-recent", "evict50-random", "buzz50-proxy",
    "evict25-recent", "buzz25-proxy",
]


# ---------------------------------------------------------------------------
# Bootstrap: the fixture tool's venv (same pinned packages, same stamp), then
# re-exec inside it.

def bootstrap(args):
    sys.path.insert(0, FIXTURE_TOOL)
    import make_fixture  # Module level: constants and functions only.
    venv = os.path.abspath(args.venv)
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "strata-kv-fixture.stamp")
    want = "\n".join(make_fixture.PINNED + make_fixture.PINNED_NO_DEPS)
    have = open(stamp).read() if os.path.exists(stamp) else None
    if have != want:
        print(f"[setup] creating venv {venv} (as make_fixture.py does)", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", "--clear", venv])
        pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.check_call(pip + make_fixture.PINNED)
        subprocess.check_call(pip + ["--no-deps"] + make_fixture.PINNED_NO_DEPS)
        with open(stamp, "w") as f:
            f.write(want)
    else:
        print(f"[setup] reusing venv {venv}", flush=True)
    env = dict(os.environ)
    env["STRATA_PERPLEXITY_IN_VENV"] = "1"
    env["STRATA_PERPLEXITY_T0"] = repr(args.t0)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


# ---------------------------------------------------------------------------
# The shim.

class Shim:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        f = self.lib.strata_codec_roundtrip
        f.restype = ctypes.c_int
        fp = ctypes.POINTER(ctypes.c_float)
        f.argtypes = [ctypes.c_char_p, fp, fp, ctypes.c_uint32, ctypes.c_uint32,
                      ctypes.c_uint32, ctypes.c_uint32, ctypes.c_char_p, fp, fp,
                      ctypes.POINTER(ctypes.c_uint8),
                      ctypes.POINTER(ctypes.c_double)]
        self.lib.strata_codec_last_error.restype = ctypes.c_char_p
        self.lib.strata_codec_settings.restype = ctypes.c_char_p

    def settings(self):
        return self.lib.strata_codec_settings().decode().split(",")

    def roundtrip(self, setting, k, v, profile_path):
        """k, v: [L][T][H][D] float32 (pre-RoPE keys). Returns (k', v', keep
        [L][T][H] bool, bits/element)."""
        import numpy as np
        k = np.ascontiguousarray(k, np.float32)
        v = np.ascontiguousarray(v, np.float32)
        L, T, H, D = k.shape
        ko = np.empty_like(k)
        vo = np.empty_like(v)
        keep = np.empty((L, T, H), np.uint8)
        bits = ctypes.c_double(0)
        fp = ctypes.POINTER(ctypes.c_float)
        rc = self.lib.strata_codec_roundtrip(
            setting.encode(), k.ctypes.data_as(fp), v.ctypes.data_as(fp), L, T, H,
            D, (profile_path or "").encode(), ko.ctypes.data_as(fp),
            vo.ctypes.data_as(fp), keep.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
            ctypes.byref(bits))
        if rc != 0:
            raise RuntimeError(f"{setting}: {self.lib.strata_codec_last_error().decode()}")
        return ko, vo, keep.astype(bool), bits.value


# ---------------------------------------------------------------------------
# The continuation pass. A copy of make_fixture.Model.forward's layer loop
# (tools/kv_fixture/ may not be edited), changed only to attend to a given
# cache with a per-(layer, token, KV head) keep mask.

def forward_with_cache(model, ids, cache_k, cache_v, keep):
    """Logits [T][vocab] for `ids` at positions P.. after a prefix cache:
    cache_k (post-RoPE), cache_v [L][P][KVH][D], keep [L][P][KVH] bool."""
    import numpy as np
    T = len(ids)
    P = cache_k.shape[1]
    pos = np.arange(P, P + T)
    x = model.embd[np.asarray(ids)]
    group = model.QH // model.KVH
    scale = np.float32(1.0 / np.sqrt(model.D))
    causal = np.where(np.arange(T)[None, :] <= np.arange(T)[:, None], 0.0,
                      -np.inf).astype(np.float32)                  # [T][T]
    for l, lay in enumerate(model.layers):
        h = model.rmsnorm(x, lay["attn_norm"])
        q = (h @ lay["wq"].T).reshape(T, model.QH, model.D)
        k = (h @ lay["wk"].T).reshape(T, model.KVH, model.D)
        v = (h @ lay["wv"].T).reshape(T, model.KVH, model.D)
        qr = model.rope(q, pos, "norm")
        kr = model.rope(k, pos, "norm")
        att = np.empty((T, model.QH, model.D), np.float32)
        for hq in range(model.QH):
            kv = hq // group
            keys = np.concatenate([cache_k[l][:, kv], kr[:, kv]])       # [P+T][D]
            vals = np.concatenate([cache_v[l][:, kv], v[:, kv]])
            prefix_mask = np.where(keep[l][:, kv], 0.0, -np.inf).astype(np.float32)
            mask = np.concatenate([np.broadcast_to(prefix_mask, (T, P)), causal], axis=1)
            s = (qr[:, hq] @ keys.T) * scale + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            att[:, hq] = s @ vals
        x = x + att.reshape(T, -1) @ lay["wo"].T
        h = model.rmsnorm(x, lay["ffn_norm"])
        g = h @ lay["wg"].T
        x = x + ((g / (1.0 + np.exp(-g))) * (h @ lay["wu"].T)) @ lay["wd"].T
    return model.rmsnorm(x, model.out_norm) @ model.lm_head.T


def log_softmax(logits):
    import numpy as np
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------

def profile_keys(strata_eval):
    """setting -> profile key, from `strata-eval --list`."""
    out = subprocess.run([strata_eval, "--list"], check=True, capture_output=True,
                         text=True).stdout
    keys = {}
    for line in out.splitlines():
        name = line.split()[0]
        if "[profile: " in line:
            keys[name] = line.split("[profile: ")[1].rstrip("]")
    return keys


def main_in_venv(args):
    import numpy as np
    sys.path.insert(0, FIXTURE_TOOL)
    import make_fixture
    import stkf

    t0 = float(os.environ.get("STRATA_PERPLEXITY_T0", time.time()))
    build = os.path.abspath(args.build_dir)
    tools = os.path.join(build, "tools", "codec_eval")
    shim = Shim(os.path.join(tools, "libstrata_codec_shim.so"))
    known = set(shim.settings())
    settings = args.settings.split(",") if args.settings else DEFAULT_SETTINGS
    for s in settings:
        if s not in known:
            sys.exit(f"unknown setting {s} (strata-eval --list)")
    if "fp16" not in settings:
        settings = ["fp16"] + settings

    # Profiles: one strata-calibrate run per distinct profile.
    keys = profile_keys(os.path.join(tools, "strata-eval"))
    prof_dir = os.path.join(build, "codec_eval_profiles")
    os.makedirs(prof_dir, exist_ok=True)
    profiles = {}
    t_cal = time.time()
    for s in settings:
        if s not in keys:
            continue
        path = os.path.join(prof_dir, keys[s] + ".stkp")
        if not os.path.exists(path) or args.recalibrate:
            out = subprocess.run([os.path.join(tools, "strata-calibrate"),
                                  f"--for-setting={s}", f"--out={path}"],
                                 check=True, capture_output=True, text=True).stdout
            print(f"[calibrate] {out.strip()}", flush=True)
        profiles[s] = path
    t_cal = time.time() - t_cal

    t_load = time.time()
    model = make_fixture.Model(make_fixture.gguf_path())
    tok = model.tokenizer
    ids = tok.encode(make_fixture.EVALUATION_TEXT)
    P, N = args.prefix, args.tokens
    if len(ids) < P + N:
        sys.exit(f"the held-out text has {len(ids)} tokens < {P} + {N}")
    t_load = time.time() - t_load
    print(f"[model] {model.L} layers; held-out text {len(ids)} tokens: prefix "
          f"{P} (compressed), then {N} tokens scored", flush=True)

    t_prefix = time.time()
    cap = {}
    model.forward(ids[:P], capture=cap)
    k_pre = np.stack(cap["k"]).astype(np.float32)   # [L][P][KVH][D], pre-RoPE
    v_pre = np.stack(cap["v"]).astype(np.float32)
    pos = np.arange(P)
    cont = ids[P:P + N]
    targets = np.asarray(ids[P + 1:P + N + 1])
    if len(targets) < N:  # The last input token has no target.
        cont = cont[:len(targets)]
    t_prefix = time.time() - t_prefix

    def run(k, v, keep, fp16_cache=True):
        kr = np.stack([stkf.rope(k[l], pos, model.theta) for l in range(model.L)])
        vv = v
        if fp16_cache:  # What an fp16 post-RoPE cache holds.
            kr = kr.astype(np.float16).astype(np.float32)
            vv = v.astype(np.float16).astype(np.float32)
        logits = forward_with_cache(model, cont, kr, vv, keep)
        return log_softmax(logits)

    all_keep = np.ones(k_pre.shape[:3], bool)
    t_ref = time.time()
    lp32 = run(k_pre, v_pre, all_keep, fp16_cache=False)
    t_ref = time.time() - t_ref
    nll32 = -lp32[np.arange(len(targets)), targets]
    print(f"[fp32 prefix] perplexity {np.exp(nll32.mean()):.4f} "
          f"({t_ref:.1f} s per continuation pass)", flush=True)

    rows = []
    ref = None
    nll16 = None
    for s in settings:
        ts = time.time()
        k, v, keep, bits = shim.roundtrip(s, k_pre, v_pre, profiles.get(s))
        if args.exact_sinks > 0:
            # Diagnostic, not a codec: the first tokens replaced by their
            # exact values after decoding (what a codec storing them in fp16
            # would give, minus closed-loop effects); bits as if stored so.
            n = args.exact_sinks
            k[:, :n], v[:, :n], keep[:, :n] = k_pre[:, :n], v_pre[:, :n], True
            bits = bits * (P - n) / P + 16.0 * n / P
        lp = run(k, v, keep)
        nll = -lp[np.arange(len(targets)), targets]
        ppl = float(np.exp(nll.mean()))
        if s == "fp16":
            ref = lp
            nll16 = nll
        # Paired per-token NLL difference vs fp16: its mean is the log of the
        # perplexity ratio; 2 standard errors give a rough 95% interval.
        dn = nll - nll16
        d_lo = dn.mean() - 2 * dn.std(ddof=1) / np.sqrt(len(dn))
        d_hi = dn.mean() + 2 * dn.std(ddof=1) / np.sqrt(len(dn))
        p_ref = np.exp(ref)
        kl = float(np.mean(np.sum(p_ref * (ref - lp), axis=-1)))
        top1 = float(np.mean(np.argmax(lp, -1) == np.argmax(ref, -1)))
        kept = float(keep.mean())
        ci = (100 * (np.exp(d_lo) - 1), 100 * (np.exp(d_hi) - 1))
        rows.append((s, bits, ppl, kl, top1, kept, ci, time.time() - ts))
        print(f"{s:20s} bits {bits:7.3f}  ppl {ppl:8.4f} (95% CI of the change "
              f"{ci[0]:+.1f}%..{ci[1]:+.1f}%)  KL vs fp16 {kl:.5f}  top-1 agree "
              f"{top1:.3f}  kept {kept:.3f}  ({rows[-1][-1]:.1f} s)", flush=True)
    ppl16 = rows[0][2]
    total = time.time() - t0
    print(f"[time] calibrate {t_cal:.1f} s, model load {t_load:.1f} s, prefix "
          f"{t_prefix:.1f} s, {len(rows)} settings; total {total:.1f} s", flush=True)
    if args.markdown:
        print()
        sinks = (f"; first {args.exact_sinks} tokens exact after decoding "
                 f"(emulated fp16 sinks)" if args.exact_sinks else "")
        print(f"Prefix {P} tokens compressed, {len(targets)} tokens scored; "
              f"fp32-prefix perplexity {np.exp(nll32.mean()):.4f}{sinks}.")
        print()
        print("| Setting | bits/elem | perplexity | Δ vs fp16 | 95% CI of Δ | mean "
              "token KL vs fp16 | top-1 agreement | prefix tokens kept |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s, bits, ppl, kl, top1, kept, ci, _ in rows:
            print(f"| `{s}` | {bits:.3f} | {ppl:.3f} | {100 * (ppl / ppl16 - 1):+.2f}% "
                  f"| {ci[0]:+.1f}% .. {ci[1]:+.1f}% | {kl:.4f} | {top1:.3f} "
                  f"| {100 * kept:.0f}% |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build-eval"),
                    help="CMake build dir with strata-calibrate, strata-eval "
                         "and libstrata_codec_shim.so")
    ap.add_argument("--settings", default="",
                    help="comma-separated strata-eval setting names "
                         "(default: a representative list)")
    ap.add_argument("--prefix", type=int, default=256,
                    help="tokens whose KV is compressed (one block)")
    ap.add_argument("--tokens", type=int, default=192,
                    help="tokens run after the prefix and scored")
    ap.add_argument("--exact-sinks", type=int, default=0,
                    help="diagnostic: overwrite the first N prefix tokens "
                         "with their exact values after decoding")
    ap.add_argument("--recalibrate", action="store_true",
                    help="refit profiles even if their files exist")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--venv", default=os.path.join(tempfile.gettempdir(),
                                                   "strata-kv-fixture-venv"))
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads")
    args = ap.parse_args()
    args.t0 = time.time()
    if os.environ.get("STRATA_PERPLEXITY_IN_VENV") != "1":
        bootstrap(args)  # Does not return.
    main_in_venv(args)


if __name__ == "__main__":
    main()
