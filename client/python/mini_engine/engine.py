"""The mini engine: prefill + greedy decode over a paged KV cache, with prefix
reuse through a Strata store (docs/engine.md).

Prefix reuse, per request:
  1. keys = strata.chunk_keys(namespace, tokens): one chained 16-byte key per
     full chunk of `chunk_tokens` tokens (a hit is always a prefix);
  2. n = store.leading_hits(keys) (capped so that at least one token is left
     to compute: the logits of the last prompt token are needed);
  3. the n hit blocks are fetched (store.batch_get_into into one reusable host
     buffer per chunk) and strata.decode_kv'd straight into the paged cache;
     a block that vanished between the lookup and the read (evicted) ends
     the loaded prefix there: the rest is recomputed, never an error;
  4. only the remaining tokens are prefilled (in chunks of `prefill_chunk`
     query tokens, attending to the loaded KV);
  5. the new full chunks are gathered from the paged cache into Strata's
     block layout [layers, 2, tokens, kv_heads, head_dim] (fp16),
     strata.encode_kv'd with the engine's codec and put.

Thread safety: an Engine is single-threaded (it owns its cache and pages).
"""

import dataclasses
import time

import numpy as np
import torch

from .paged_cache import PagedKVCache


def _strata():
    import strata
    return strata


@dataclasses.dataclass
class Sequence:
    tokens: list
    block_table: list = dataclasses.field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache


@dataclasses.dataclass
class PrefillStats:
    prompt_tokens: int = 0
    hit_tokens: int = 0       # loaded from the store
    computed_tokens: int = 0  # prefilled by the model
    lookup_s: float = 0.0
    load_s: float = 0.0       # fetch + decode into the paged cache
    compute_s: float = 0.0
    store_s: float = 0.0      # encode + put of the new chunks (after TTFT)
    stored_chunks: int = 0

    @property
    def ttft_s(self):
        return self.lookup_s + self.load_s + self.compute_s


_BLOCK_HEADER_BYTES = 96  # Block format v1 header (docs/format.md).
_PINNED = {}  # staging-buffer size -> pinned host tensors (_load_on_gpu)
_READER = []  # the one-thread pool that reads blocks for _load_on_gpu


def _reader_pool():
    if not _READER:
        import concurrent.futures
        _READER.append(concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="strata-load"))
    return _READER[0]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Engine:
    """model: a LlamaModel. store: a strata.LocalStore / strata.RemoteStore
    (or None: no reuse). codec: the strata codec spec for stored blocks."""

    def __init__(self, model, store=None, codec="raw", chunk_tokens=256, block_size=16,
                 num_blocks=None, max_tokens=8192, cache_dtype=torch.float16,
                 prefill_chunk=2048, tenant_salt="", model_id=None):
        self.model = model
        self.cfg = model.cfg
        self.device = model.device
        self.store = store
        self.codec = codec
        self.chunk_tokens = chunk_tokens
        self.prefill_chunk = prefill_chunk
        if chunk_tokens % block_size:
            raise ValueError("chunk_tokens: must be a multiple of block_size")
        if num_blocks is None:
            num_blocks = -(-max_tokens // block_size)
        self.cache = PagedKVCache(self.cfg, num_blocks, block_size, cache_dtype, self.device)
        self.namespace = None
        if store is not None:
            strata = _strata()
            mid = model_id or (self.cfg.name if codec == "raw" else f"{self.cfg.name}@{codec}")
            self.namespace = strata.KeyNamespace(
                model_id=mid, tenant_salt=tenant_salt, num_layers=self.cfg.num_layers,
                num_kv_heads=self.cfg.num_kv_heads, head_dim=self.cfg.head_dim,
                dtype="float16", chunk_tokens=chunk_tokens, tp_rank=0, tp_size=1)

    # ---- sequences

    def new_sequence(self, tokens):
        return Sequence(tokens=list(tokens))

    def release(self, seq):
        self.cache.release(seq.block_table)
        seq.block_table = []
        seq.num_computed = 0

    # ---- the forward pass over the paged cache

    @torch.inference_mode()
    def forward(self, seq, new_tokens):
        """Runs `new_tokens` (appended to seq.tokens' computed prefix) through
        the model, writing their K/V into the cache. Returns the logits of the
        last new token [vocab] (float32)."""
        m = self.model
        start = seq.num_computed
        end = start + len(new_tokens)
        self.cache.ensure_capacity(seq.block_table, end)
        logits = None
        for cb in range(0, len(new_tokens), self.prefill_chunk):
            part = new_tokens[cb:cb + self.prefill_chunk]
            p0 = start + cb
            pos = torch.arange(p0, p0 + len(part), device=self.device)
            kpos = torch.arange(0, p0 + len(part), device=self.device)
            new_slots = self.cache.slots(seq.block_table, pos)
            ctx_slots = self.cache.slots(seq.block_table, kpos)
            cos, sin = m.rope(range(p0, p0 + len(part)))
            x = m.embed_tokens(part)
            for l in range(self.cfg.num_layers):
                q, k, v = m.qkv(l, x, cos, sin)
                self.cache.write(l, new_slots, k, v)
                kc, vc = self.cache.read(l, ctx_slots)
                x = m.finish_layer(l, x, m.attention(q, kc, vc, pos, kpos))
            logits = m.logits(x[-1:])[0]
        seq.num_computed = end
        return logits

    # ---- Strata block I/O

    def gather_kv(self, seq, begin, num_tokens):
        """[layers, 2, num_tokens, kv_heads, head_dim] numpy fp16 of the
        sequence's cached tokens [begin, begin + num_tokens)."""
        slots = self.cache.slots(seq.block_table, range(begin, begin + num_tokens))
        out = torch.empty((self.cfg.num_layers, 2, num_tokens, self.cfg.num_kv_heads,
                           self.cfg.head_dim), dtype=torch.float16, device=self.device)
        for l in range(self.cfg.num_layers):
            k, v = self.cache.read(l, slots)
            out[l, 0], out[l, 1] = k, v
        return out.cpu().numpy()

    def scatter_kv(self, seq, begin, kv):
        """Writes a [layers, 2, T, kv_heads, head_dim] array (numpy or
        tensor) into the sequence's cache at positions [begin, begin + T)."""
        if isinstance(kv, np.ndarray) and not kv.flags.writeable:
            kv = kv.copy()  # torch wants writable memory
        t = torch.as_tensor(kv).to(self.device)
        n = t.shape[2]
        self.cache.ensure_capacity(seq.block_table, begin + n)
        slots = self.cache.slots(seq.block_table, range(begin, begin + n))
        for l in range(self.cfg.num_layers):
            self.cache.write(l, slots, t[l, 0], t[l, 1])

    def chunk_keys(self, tokens):
        return _strata().chunk_keys(self.namespace, tokens, include_partial=False)

    def _load_prefix(self, seq, keys, stats):
        """Fetches the leading hits into the cache; returns tokens loaded."""
        strata = _strata()
        t0 = time.perf_counter()
        usable = keys[:(len(seq.tokens) - 1) // self.chunk_tokens]
        n = self.store.leading_hits([k.key for k in usable]) if usable else 0
        stats.lookup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = 0
        if n and self._gpu_codec_path():
            loaded = self._load_on_gpu(seq, [k.key for k in usable[:n]])
        elif n:
            blocks = self._fetch([k.key for k in usable[:n]])
            for i, blk in enumerate(blocks):
                if blk is None:  # Evicted after the lookup: recompute from here.
                    break
                self.scatter_kv(seq, i * self.chunk_tokens, strata.decode_kv(blk))
                loaded += self.chunk_tokens
        _sync(self.device)
        stats.load_s = time.perf_counter() - t0
        return loaded

    def _raw_payload_bytes(self):
        """Bytes of one chunk's fp16 K and V: [2][L][T][H][D]."""
        c = self.cfg
        return 2 * c.num_layers * self.chunk_tokens * c.num_kv_heads * c.head_dim * 2

    def _gpu_codec_path(self):
        if self.device.type != "cuda" or not (self.codec == "raw" or
                                              self.codec.startswith("quant:")):
            return False
        if self.cache.dtype != torch.float16:  # Blocks are fp16; scatter copies bytes.
            return False
        try:
            import strata.gpu  # noqa: F401
        except ImportError:
            return False
        return True

    def _gpu_block_layout(self):
        """(shape dict for strata.gpu, raw bytes, payload bytes) of one chunk's
        block with the engine's codec (the GPU load and store paths)."""
        import strata.gpu as sg
        c = self.cfg
        shape = dict(dtype="float16", num_layers=c.num_layers, num_tokens=self.chunk_tokens,
                     num_kv_heads=c.num_kv_heads, head_dim=c.head_dim)
        raw = self._raw_payload_bytes()
        payload = raw if self.codec == "raw" else sg.quant_payload_bytes(shape, self.codec)
        return shape, raw, payload

    def _load_on_gpu(self, seq, keys):
        """The GPU load path, pipelined: the blocks are read (checksum-verified,
        several threads) into pinned host buffers group by group on a reader
        thread, while the main thread enqueues, for each block of the previous
        group, an async H2D copy, the KIVI decode (strata.gpu.quant_decode;
        raw blocks are used in place) and one paged scatter of all layers
        (strata.gpu.paged_scatter) on the current stream. Host reads of group
        g+1 overlap the PCIe copies of group g. Returns tokens loaded."""
        import strata.gpu as sg
        t = self.chunk_tokens
        h = _BLOCK_HEADER_BYTES
        shape, raw, payload = self._gpu_block_layout()
        cap = -(-(h + payload) // 4096) * 4096
        # Pinned staging buffers live for the process (like an engine's
        # staging pool): pinning gigabytes takes seconds.
        pinned = _PINNED.setdefault(cap, [])
        while len(pinned) < len(keys):
            pinned.append(torch.empty(cap, dtype=torch.uint8, pin_memory=True))
        host = [p.numpy() for p in pinned[:len(keys)]]
        g = getattr(self, "_gpu_load", None)
        if g is None or g["cap"] != cap:
            g = self._gpu_load = dict(
                # One staging block on the device: everything runs in order on
                # one stream, so block i+1's copy waits for block i's kernels.
                cap=cap, dev=torch.empty(cap, dtype=torch.uint8, device=self.device),
                kv=torch.empty(raw // 2, dtype=torch.float16, device=self.device),
                flags=torch.zeros(1, dtype=torch.int32, device=self.device),
                layers=[x.data_ptr() for x in self.cache.layers])
        self.cache.ensure_capacity(seq.block_table, len(keys) * t)
        pages_per_chunk = t // self.cache.block_size
        table = torch.as_tensor(seq.block_table[:len(keys) * pages_per_chunk],
                                dtype=torch.int32).to(self.device, non_blocking=True)
        g["flags"].zero_()
        # ~256 MiB per read group: enough blocks for the reader's threads.
        group = max(1, min(len(keys), (256 << 20) // cap))
        groups = [range(i, min(i + group, len(keys))) for i in range(0, len(keys), group)]
        reader = _reader_pool()
        futures = [reader.submit(self.store.batch_get_into, [keys[i] for i in r],
                                 [host[i] for i in r]) for r in groups]
        loaded = 0
        try:
            for r, fut in zip(groups, futures):
                if loaded < r[0] * t:  # A miss ended the prefix in an earlier group.
                    break
                for i, n in zip(r, fut.result()):
                    if n is None:  # Evicted after the lookup: recompute from here.
                        break
                    dev = g["dev"]
                    dev[:n].copy_(pinned[i][:n], non_blocking=True)
                    if self.codec == "raw":
                        block = dev[h:h + raw]
                    else:
                        sg.quant_decode(dev[h:n], g["kv"], shape, self.codec,
                                        error_flags=g["flags"])
                        block = g["kv"]
                    sg.paged_scatter(block, g["layers"],
                                     table[i * pages_per_chunk:(i + 1) * pages_per_chunk],
                                     shape, layout="page_major",
                                     num_pages=self.cache.num_blocks,
                                     page_size=self.cache.block_size,
                                     error_flags=g["flags"])
                    loaded += t
        finally:
            for fut in futures:  # The pinned buffers must not be written after we return.
                fut.cancel() or fut.exception()
            _sync(self.device)
        # Outside `finally`: a data error must not hide a read error in flight.
        sg.check_error_flags(int(g["flags"].item()) & 0xFFFFFFFF)
        return loaded

    def _fetch(self, keys):
        """Blocks (bytes-like) for keys, None for a miss."""
        bufs = getattr(self, "_bufs", [])
        if self.codec == "raw":
            # Raw blocks have a known size: read straight into reused buffers.
            size = _BLOCK_HEADER_BYTES + self._raw_payload_bytes()
            while len(bufs) < len(keys):
                bufs.append(np.empty(size, np.uint8))
            self._bufs = bufs
            got = self.store.batch_get_into(keys, bufs[:len(keys)])
            return [None if g is None else bufs[i][:g] for i, g in enumerate(got)]
        return [self.store.get(k) for k in keys]

    def _store_on_gpu(self, seq, chunks):
        """The GPU store path: per chunk, one paged gather of all layers into a
        raw block on the device (strata.gpu.paged_gather), the KIVI encode
        there (strata.gpu.quant_encode; raw blocks go as they are), a copy of
        the (compressed) payload into a pinned buffer, the data-error check,
        then strata.make_block (header and checksum on the host) and a put:
        the bytes encode_kv gives on the CPU. Returns the chunks stored."""
        import strata.gpu as sg
        strata = _strata()
        t = self.chunk_tokens
        shape, raw, payload = self._gpu_block_layout()
        s = getattr(self, "_gpu_store", None)
        if s is None or s["payload"] != payload:
            s = self._gpu_store = dict(
                payload=payload,
                raw=torch.empty(raw, dtype=torch.uint8, device=self.device),
                enc=None if self.codec == "raw" else
                torch.empty(payload, dtype=torch.uint8, device=self.device),
                host=torch.empty(payload, dtype=torch.uint8, pin_memory=True),
                flags=torch.zeros(1, dtype=torch.int32, device=self.device),
                layers=[x.data_ptr() for x in self.cache.layers])
        pages = t // self.cache.block_size
        table = torch.as_tensor(seq.block_table, dtype=torch.int32).to(self.device)
        stored = 0
        for ck in chunks:
            p0 = ck.begin_token // self.cache.block_size
            s["flags"].zero_()
            sg.paged_gather(s["layers"], table[p0:p0 + pages], s["raw"], shape,
                            layout="page_major", num_pages=self.cache.num_blocks,
                            page_size=self.cache.block_size, error_flags=s["flags"])
            src = s["raw"]
            if s["enc"] is not None:
                sg.quant_encode(s["raw"], s["enc"], shape, self.codec, error_flags=s["flags"])
                src = s["enc"]
            s["host"].copy_(src, non_blocking=True)
            _sync(self.device)
            # Non-finite KV fails here as encode_kv fails on the CPU: nothing is put.
            sg.check_error_flags(int(s["flags"].item()) & 0xFFFFFFFF)
            self.store.put(ck.key, strata.make_block(s["host"].numpy(), shape, self.codec))
            stored += 1
        return stored

    def _store_chunks(self, seq, keys, first, stats):
        strata = _strata()
        t0 = time.perf_counter()
        if keys[first:] and self._gpu_codec_path():
            stats.stored_chunks += self._store_on_gpu(seq, keys[first:])
            stats.store_s = time.perf_counter() - t0
            return
        for ck in keys[first:]:
            blk = strata.encode_kv(self.gather_kv(seq, ck.begin_token, ck.num_tokens),
                                   codec=self.codec)
            self.store.put(ck.key, blk)
            stats.stored_chunks += 1
        stats.store_s = time.perf_counter() - t0

    # ---- requests

    def prefill(self, seq, use_store=True, save=True):
        """Computes the prompt's K/V (reusing the store's prefix when
        use_store) and returns (logits of the last prompt token, PrefillStats)."""
        stats = PrefillStats(prompt_tokens=len(seq.tokens))
        reuse = use_store and self.store is not None
        keys = self.chunk_keys(seq.tokens) if reuse or (save and self.store is not None) else []
        if reuse:
            seq.num_computed = self._load_prefix(seq, keys, stats)
        stats.hit_tokens = seq.num_computed
        t0 = time.perf_counter()
        logits = self.forward(seq, seq.tokens[seq.num_computed:])
        _sync(self.device)
        stats.compute_s = time.perf_counter() - t0
        stats.computed_tokens = len(seq.tokens) - stats.hit_tokens
        if save and self.store is not None:
            self._store_chunks(seq, keys, stats.hit_tokens // self.chunk_tokens, stats)
        return logits, stats

    def decode_step(self, seq, token):
        seq.tokens.append(int(token))
        return self.forward(seq, [int(token)])

    def generate(self, prompt, max_new_tokens, use_store=True, eos=None):
        """Greedy decode. Returns (new token ids, PrefillStats)."""
        seq = self.new_sequence(prompt)
        logits, stats = self.prefill(seq, use_store=use_store)
        out = []
        try:
            for _ in range(max_new_tokens):
                nxt = int(torch.argmax(logits))
                if eos is not None and nxt == eos:
                    break
                out.append(nxt)
                logits = self.decode_step(seq, nxt)
        finally:
            self.release(seq)
        return out, stats
