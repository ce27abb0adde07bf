"""CacheBlend (arXiv 2405.16444) over Strata segment blocks.

A prompt is a list of independently cached segments followed by fresh tokens
(the question). Each segment's K/V is computed once, alone, at positions
0..n-1, and stored under strata.segment_key(root, tokens): a key that does not
depend on what comes before the segment, so it hits at any position.

A request:
  1. fetches each segment's block (a miss is computed alone and put first);
  2. re-rotates the cached post-RoPE keys to their new positions: RoPE is a
     rotation, R(p + d) = R(d) R(p), so k' = R(offset) k (torch, float32);
  3. layer 0: every token is recomputed (Q, K, V and attention) — its K/V are
     the fresh ones;
  4. layer `check_layer` (1): fresh K/V of every token are computed from the
     now-correct hidden states; per cached token the deviation
     ||K_fresh - K_cached||^2 + ||V_fresh - V_cached||^2 (all heads) picks the
     top `recompute_ratio` share of the cached tokens; they and the fresh
     tokens form the recompute set S (this layer keeps every fresh K/V, which
     it has computed anyway);
  5. layers > check_layer: only S's hidden states go through the layer; S's
     K/V are fresh, everyone else's are the (re-rotated) cached ones;
  6. the logits of the last token (always in S) are the first output token's.
The blended K/V of every layer land in the engine's paged cache, so decoding
can go on from the returned sequence.

mode="reuse" is the no-recompute baseline ("full KV reuse"): cached K/V in
every layer, only the fresh tokens computed.
"""

import dataclasses
import math
import time

import torch

from .engine import _strata, _sync
from .model import apply_rope


@dataclasses.dataclass
class BlendStats:
    total_tokens: int = 0
    cached_tokens: int = 0
    recomputed_cached_tokens: int = 0  # cached tokens picked for recompute
    fresh_tokens: int = 0
    segments_missed: int = 0
    load_s: float = 0.0
    compute_s: float = 0.0

    @property
    def ttft_s(self):
        return self.load_s + self.compute_s


def segment_key(engine, tokens):
    return _strata().segment_key(engine.namespace.root(), list(tokens))


@torch.inference_mode()
def cache_segment(engine, tokens):
    """Computes `tokens` alone (positions 0..n-1) and puts its K/V under its
    segment key unless already stored. Returns the key."""
    strata = _strata()
    key = segment_key(engine, tokens)
    if engine.store.exists([key])[0]:
        return key
    seq = engine.new_sequence(tokens)
    try:
        engine.forward(seq, list(tokens))
        blk = strata.encode_kv(engine.gather_kv(seq, 0, len(tokens)), codec="raw")
    finally:
        engine.release(seq)
    engine.store.put(key, blk)
    return key


def _load_segments(engine, segments, stats):
    """[layers, 2, sum(len), H, D] float32 of the segments' cached K/V with
    keys re-rotated to their offsets in the concatenation."""
    strata = _strata()
    m = engine.model
    parts, offset = [], 0
    for seg in segments:
        blk = engine.store.get(segment_key(engine, seg))
        if blk is None:
            stats.segments_missed += 1
            cache_segment(engine, seg)
            blk = engine.store.get(segment_key(engine, seg))
            if blk is None:
                raise RuntimeError("segment block vanished right after its put")
        kv = torch.from_numpy(strata.decode_kv(blk).copy()).to(m.device, torch.float32)
        if offset:
            cos, sin = m.rope([offset] * kv.shape[2])
            for l in range(kv.shape[0]):
                kv[l, 0] = apply_rope(kv[l, 0], cos, sin, m.cfg.rope_style)
        parts.append(kv)
        offset += len(seg)
    return torch.cat(parts, dim=2)


@torch.inference_mode()
def blend_prefill(engine, segments, query, recompute_ratio=0.15, check_layer=1, mode="blend"):
    """Returns (logits of the last token [vocab], Sequence holding the blended
    K/V (release it with engine.release), BlendStats)."""
    if mode not in ("blend", "reuse"):
        raise ValueError(f"mode: {mode!r} is not blend|reuse")
    if not query:
        raise ValueError("query: needs at least one fresh token")
    m, cfg, cache = engine.model, engine.cfg, engine.cache
    stats = BlendStats()
    t0 = time.perf_counter()
    ckv = _load_segments(engine, segments, stats)          # [L, 2, Nc, H, D]
    _sync(m.device)
    stats.load_s = time.perf_counter() - t0
    t0 = time.perf_counter()

    tokens = [t for s in segments for t in s] + list(query)
    n, nc = len(tokens), ckv.shape[2]
    stats.total_tokens, stats.cached_tokens, stats.fresh_tokens = n, nc, n - nc
    seq = engine.new_sequence(tokens)
    cache.ensure_capacity(seq.block_table, n)
    slots = cache.slots(seq.block_table, range(n))
    pos = torch.arange(n, device=m.device)
    fresh_idx = torch.arange(nc, n, device=m.device)
    cos, sin = m.rope(range(n))
    x = m.embed_tokens(tokens)
    active = None  # None: every token goes through the layer.
    if mode == "reuse":
        active = fresh_idx
        x = x[active]
    half = lambda t: t.to(cache.dtype).to(m.dtype)  # what a cache read gives back

    for l in range(cfg.num_layers):
        if active is None:
            q, k, v = m.qkv(l, x, cos, sin)
            k, v = half(k), half(v)
            if l < check_layer:
                x = m.finish_layer(l, x, m.attention(q, k, v, pos, pos))
            else:  # The check layer: pick the tokens to recompute.
                dev = ((k[:nc] - ckv[l, 0]) ** 2).sum((1, 2)) + ((v[:nc] - ckv[l, 1]) ** 2).sum((1, 2))
                n_sel = min(nc, math.ceil(recompute_ratio * nc))
                top = torch.topk(dev, n_sel).indices if n_sel else fresh_idx[:0]
                active = torch.sort(torch.cat((top, fresh_idx))).values
                stats.recomputed_cached_tokens = n_sel
                x = m.finish_layer(l, x[active], m.attention(q[active], k, v, active, pos))
        else:
            q, k_a, v_a = m.qkv(l, x, cos[active], sin[active])
            k = torch.empty((n, cfg.num_kv_heads, cfg.head_dim), dtype=m.dtype, device=m.device)
            v = torch.empty_like(k)
            k[:nc], v[:nc] = half(ckv[l, 0]), half(ckv[l, 1])
            k[active], v[active] = half(k_a), half(v_a)
            x = m.finish_layer(l, x, m.attention(q, k, v, active, pos))
        cache.write(l, slots, k, v)
    logits = m.logits(x[-1:])[0]
    seq.num_computed = n
    _sync(m.device)
    stats.compute_s = time.perf_counter() - t0
    return logits, seq, stats


def first_token_kl(ref_logits, logits):
    """KL(P_ref || P) in nats of the next-token distributions."""
    lp = torch.log_softmax(ref_logits.double(), -1)
    lq = torch.log_softmax(logits.double(), -1)
    return float((lp.exp() * (lp - lq)).sum())
