"""ClusterKV decode (arXiv 2412.03213) with the context held in Strata.

Design (docs/engine.md, "ClusterKV"):
  * After prefill, every full chunk of the prompt (the "context", tokens
    [0, Tc)) is encoded with Strata's `cluster` codec from the paged cache's
    post-RoPE keys and put under its own key space (model id + "@cluster").
    The codec builds the index in C++ (spherical k-means per layer >=
    first_layer and KV head, centroid = mean of the members' raw keys,
    token ids grouped by cluster) and keeps the whole K/V losslessly.
    Chunk 0 keeps `n_sink` attention-sink tokens out of the clustering; later
    chunks have none.
  * The engine reads each block once (store.get) and keeps the bytes on the
    host: the index (a prefix of the payload, ~4% of it) is parsed here in
    numpy from the documented layout (docs/codecs/tokensparse_cluster.md);
    the K/V stay encoded. The context's rows of the paged cache are then
    poisoned with NaN for the clustered layers: decode must not read them.
  * Each decode step, per layer >= first_layer: the layer's post-RoPE query
    heads score every cluster of every chunk by q.centroid (query head h reads
    KV head h / group); heads take clusters round-robin by rank until the
    union of selected tokens reaches the budget (budget_fraction x Tc,
    sinks included: the codec's "total" scope), the last cluster cut to fit.
    Only those tokens are recalled, per chunk, by strata.decode_kv(block,
    layers=l, tokens=[...]) (a partial decode that touches only their bytes)
    and attended together with the local tokens (positions >= Tc: the prompt
    tail and everything decoded so far, which stay in the paged cache).
    Layers below first_layer attend to the whole context (ClusterKV does not
    cluster them; they stay in the paged cache).
  * Recalled bytes per step and layer = budget x 2 x kv_heads x head_dim x 2 B
    (10% of the context's K/V) plus the index, read once.
The store API has no byte-range read, so the blocks come to the host whole
once; the per-step recall is the host->device decode of the selected tokens
(what a GPU engine would copy over PCIe).

Thread safety: one ClusterKVDecoder per sequence, single-threaded.
"""

import dataclasses
import math
import time

import numpy as np
import torch

from .engine import _strata

HEADER_BYTES = 96


@dataclasses.dataclass
class ClusterIndex:
    num_layers: int
    num_tokens: int
    num_kv_heads: int
    head_dim: int
    n_sink: int
    num_clusters: int
    first_layer: int
    # Per clustered layer l (key: l) and head: (centroids [C, d] float32,
    # ends [C] int64, token ids [N] int64 grouped by cluster).
    heads: dict


def parse_cluster_index(blk):
    """The index of a `cluster` block, from its bytes (layout in
    docs/codecs/tokensparse_cluster.md). ValueError for another codec."""
    b = memoryview(blk).cast("B")
    hdr = np.frombuffer(b, np.uint8, HEADER_BYTES)
    u32 = lambda off: int(np.frombuffer(hdr, "<u4", 1, off)[0])
    u16 = lambda off: int(np.frombuffer(hdr, "<u2", 1, off)[0])
    if bytes(hdr[:4]) != b"STKV" or hdr[10] != 6:
        raise ValueError("blk: not a cluster-codec (id 6) Strata block")
    L, T, H, D = u32(12), u32(16), u32(20), u32(24)
    n_sink, C, first = u16(40 + 2), u16(40 + 4), u16(40 + 6)
    S = min(n_sink, T)
    N = T - S
    off = HEADER_BYTES
    heads = {}
    for l in range(first, L):
        per = []
        for _ in range(H):
            cent = np.frombuffer(b, "<f2", C * D, off).reshape(C, D).astype(np.float32)
            off += 2 * C * D
            ends = np.frombuffer(b, "<u4", C, off).astype(np.int64)
            off += 4 * C
            toks = np.frombuffer(b, "<u2", N, off).astype(np.int64)
            off += 2 * N
            per.append((cent, ends, toks))
        heads[l] = per
    return ClusterIndex(L, T, H, D, S, C, first, heads)


@dataclasses.dataclass
class _LayerClusters:
    """All clusters of one (layer, KV head) over every context chunk."""
    centroids: torch.Tensor   # [Ctot, d] float32
    log_sizes: torch.Tensor   # [Ctot] float32, log(members)
    members: list             # Ctot arrays of (chunk, token-in-chunk) as int64 [n, 2]


class ClusterKVDecoder:
    def __init__(self, engine, budget_fraction=0.10, n_sink=4, first_layer=2,
                 clusters_per_chunk=None, seed=0xC1, score="mean", scope="total"):
        if scope not in ("total", "per_kv_head"):
            raise ValueError(f"scope: {scope!r} is not total|per_kv_head")
        self.scope = scope
        if score not in ("mass", "mean"):
            raise ValueError(f"score: {score!r} is not mass|mean")
        self.score = score
        if engine.store is None:
            raise ValueError("engine: needs a store")
        self.engine = engine
        self.budget_fraction = budget_fraction
        self.n_sink = n_sink
        self.first_layer = first_layer
        self.clusters_per_chunk = clusters_per_chunk or engine.chunk_tokens // 16
        self.seed = seed
        strata = _strata()
        c = engine.cfg
        self.namespace = strata.KeyNamespace(
            model_id=f"{c.name}@cluster", tenant_salt="", num_layers=c.num_layers,
            num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, dtype="float16",
            chunk_tokens=engine.chunk_tokens, tp_rank=0, tp_size=1)
        self.seq = None
        self.recalled_tokens = []  # per step: mean over clustered layers

    def codec_spec(self, chunk_index):
        sinks = self.n_sink if chunk_index == 0 else 0
        return (f"cluster:n_sink={sinks},num_clusters={self.clusters_per_chunk},"
                f"first_layer={self.first_layer},iterations=20,seed={self.seed}")

    @torch.inference_mode()
    def prefill(self, prompt):
        """Full prefill, then the context goes to the store as cluster blocks.
        Returns (logits of the last prompt token, seconds spent encoding +
        putting + fetching + parsing)."""
        strata = _strata()
        e, c = self.engine, self.engine.cfg
        self.seq = e.new_sequence(prompt)
        logits, _ = e.prefill(self.seq, use_store=True)
        t0 = time.perf_counter()
        keys = strata.chunk_keys(self.namespace, prompt, include_partial=False)
        if len(keys) * e.chunk_tokens >= len(prompt):
            keys = keys[:-1]  # Keep at least one local token.
        for i, ck in enumerate(keys):
            if not e.store.exists([ck.key])[0]:
                kv = e.gather_kv(self.seq, ck.begin_token, ck.num_tokens)
                e.store.put(ck.key, strata.encode_kv(kv, codec=self.codec_spec(i)))
        self.blocks = [e.store.get(ck.key) for ck in keys]
        if any(b is None for b in self.blocks):
            raise RuntimeError("a cluster block was not readable right after its put")
        self.context_tokens = len(keys) * e.chunk_tokens
        self.budget = max(1, math.ceil(self.budget_fraction * self.context_tokens))
        self._build_layers([parse_cluster_index(b) for b in self.blocks])
        # The clustered layers' context now lives only in the store's blocks.
        slots = e.cache.slots(self.seq.block_table, range(self.context_tokens))
        nan = torch.full((self.context_tokens, c.num_kv_heads, c.head_dim), float("nan"))
        for l in range(self.first_layer, c.num_layers):
            e.cache.write(l, slots, nan, nan)
        return logits, time.perf_counter() - t0

    def _build_layers(self, indexes):
        e, c = self.engine, self.engine.cfg
        self.sinks = []  # (chunk, token) pairs, always recalled
        self.layers = {}
        for ci, idx in enumerate(indexes):
            self.sinks += [(ci, t) for t in range(idx.n_sink)]
        for l in range(self.first_layer, c.num_layers):
            per_head = []
            for h in range(c.num_kv_heads):
                cents, members = [], []
                for ci, idx in enumerate(indexes):
                    cent, ends, toks = idx.heads[l][h]
                    starts = np.concatenate(([0], ends[:-1]))
                    for k in range(len(ends)):
                        mem = toks[starts[k]:ends[k]]
                        if len(mem):
                            cents.append(cent[k])
                            members.append(np.stack((np.full_like(mem, ci), mem), 1))
                sizes = torch.tensor([len(mm) for mm in members], dtype=torch.float32)
                per_head.append(_LayerClusters(torch.from_numpy(np.stack(cents)),
                                               torch.log(sizes), members))
            self.layers[l] = per_head

    def _fill(self, chosen, qheads, orders, layer):
        """Query heads `qheads` take clusters round-robin by rank into the
        set `chosen` of (chunk, token) until it holds the budget."""
        c = self.engine.cfg
        rank, longest = 0, max(len(orders[qh]) for qh in qheads)
        while len(chosen) < self.budget and rank < longest:
            for qh in qheads:
                if rank >= len(orders[qh]) or len(chosen) >= self.budget:
                    continue
                lc = self.layers[layer][qh // c.group]
                for ci, t in lc.members[orders[qh][rank]].tolist():
                    if len(chosen) >= self.budget:
                        break
                    chosen.add((ci, t))
            rank += 1
        return chosen

    def select(self, layer, q):
        """For one layer, q [QH, D] post-RoPE: (union {chunk: sorted token
        ids}, per KV head the set of (chunk, token) it may attend to)."""
        c = self.engine.cfg
        orders = []
        for qh in range(c.num_q_heads):
            lc = self.layers[layer][qh // c.group]
            s = (lc.centroids @ q[qh].float()) / math.sqrt(c.head_dim)
            if self.score == "mass":
                s = s + lc.log_sizes
            orders.append(torch.argsort(s, descending=True).tolist())
        if self.scope == "total":
            chosen = self._fill(set(self.sinks), range(c.num_q_heads), orders, layer)
            per_head = [chosen] * c.num_kv_heads
        else:
            per_head = [self._fill(set(self.sinks), range(h * c.group, (h + 1) * c.group),
                                   orders, layer) for h in range(c.num_kv_heads)]
            chosen = set().union(*per_head)
        by_chunk = {}
        for ci, t in chosen:
            by_chunk.setdefault(ci, []).append(t)
        return {ci: sorted(ts) for ci, ts in sorted(by_chunk.items())}, per_head

    @torch.inference_mode()
    def step(self, token):
        """Appends `token`, returns the next-token logits [vocab]."""
        strata = _strata()
        e, m, c = self.engine, self.engine.model, self.engine.cfg
        seq = self.seq
        seq.tokens.append(int(token))
        p = seq.num_computed
        e.cache.ensure_capacity(seq.block_table, p + 1)
        pos = torch.tensor([p], device=m.device)
        cos, sin = m.rope([p])
        x = m.embed_tokens([int(token)])
        new_slot = e.cache.slots(seq.block_table, [p])
        all_pos = torch.arange(p + 1, device=m.device)
        local_pos = torch.arange(self.context_tokens, p + 1, device=m.device)
        all_slots = e.cache.slots(seq.block_table, all_pos)
        local_slots = e.cache.slots(seq.block_table, local_pos)
        recalled = []
        for l in range(c.num_layers):
            q, k, v = m.qkv(l, x, cos, sin)
            e.cache.write(l, new_slot, k, v)
            if l < self.first_layer:
                kc, vc = e.cache.read(l, all_slots)
                attn = m.attention(q, kc, vc, pos, all_pos)
            else:
                sel, per_head = self.select(l, q[0])
                ks, vs, ps, keys = [], [], [], []
                for ci, toks in sel.items():
                    keys += [(ci, t) for t in toks]
                    kv = strata.decode_kv(self.blocks[ci], layers=l, tokens=toks)
                    kv = torch.from_numpy(kv[0].copy()).to(m.device)  # [2, n, H, D]
                    ks.append(kv[0])
                    vs.append(kv[1])
                    ps.append(torch.tensor(toks, device=m.device) + ci * e.chunk_tokens)
                kl, vl = e.cache.read(l, local_slots)
                kk = torch.cat(ks + [kl])
                vv = torch.cat(vs + [vl])
                kp = torch.cat(ps + [local_pos])
                recalled.append(len(keys))
                if self.scope == "total":
                    attn = m.attention(q, kk, vv, pos, kp)
                else:
                    allowed = torch.ones((c.num_kv_heads, len(kp)), dtype=torch.bool)
                    for h, mine in enumerate(per_head):
                        allowed[h, :len(keys)] = torch.tensor([kt in mine for kt in keys])
                    attn = self._attend(q, kk, vv, allowed.to(m.device))
            x = m.finish_layer(l, x, attn)
        seq.num_computed = p + 1
        self.recalled_tokens.append(float(np.mean(recalled)) if recalled else 0.0)
        return m.logits(x)[0]

    def _attend(self, q, k, v, allowed):
        """One query token, q [1, QH, D]; k, v [S, KVH, D]; allowed [KVH, S]:
        which keys each KV head's query heads may see."""
        m, c = self.engine.model, self.engine.cfg
        qh = q.to(m.dtype).transpose(0, 1)[None]                     # [1, QH, 1, D]
        kh = k.to(m.dtype).repeat_interleave(c.group, 1).transpose(0, 1)[None]
        vh = v.to(m.dtype).repeat_interleave(c.group, 1).transpose(0, 1)[None]
        mask = allowed.repeat_interleave(c.group, 0)[None, :, None, :]  # [1, QH, 1, S]
        o = torch.nn.functional.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=mask, scale=1.0 / math.sqrt(c.head_dim))
        return o[0].transpose(0, 1).reshape(1, -1)

    def release(self):
        if self.seq is not None:
            self.engine.release(self.seq)
            self.seq = None
