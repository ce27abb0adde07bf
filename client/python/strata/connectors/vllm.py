"""StrataConnector: a vLLM KV connector (KVConnectorBase_V1) backed by Strata.

Load it with (docs/connectors.md):

    --kv-transfer-config '{"kv_connector": "StrataConnector",
        "kv_connector_module_path": "strata.connectors.vllm", "kv_role": "kv_both",
        "kv_connector_extra_config": {"store": "127.0.0.1:7070", "chunk_tokens": 256}}'

How it works
- Keys: a prompt is cut into chunks of `chunk_tokens` tokens (a multiple of vLLM's block
  size); chunk i's key is strata.chunk_keys over the key namespace (model, layers, heads,
  dtype, chunk size, TP rank, tenant salt + the request's cache_salt). Only full prompt chunks
  are stored, one Strata block per chunk holding every layer ([layers, 2, tokens, heads, dim]).
- Scheduler side (no blocking I/O): get_num_new_matched_tokens starts a `leading_hits` lookup
  on a background thread and answers None ("ask again") until it lands; the hit is capped so
  at least one prompt token is computed. update_state_after_alloc turns a hit into a load
  plan; build_connector_meta ships the loads plus the save plan (prompt chunks completed by
  this step) to the workers.
- Worker side: loads run on background threads (async by default: the request waits in
  WAITING_FOR_REMOTE_KVS and is reported by get_finished); a missing or corrupt block is
  reported through get_block_ids_with_load_errors, never raised, so vLLM recomputes from the
  first bad block. save_kv_layer copies each saved chunk's slots out of the paged tensors
  during the forward; wait_for_save hands the staged chunks to background threads that
  encode and put them, so the forward never waits for the store.
- Counters: StrataConnector.counters() (lookup/hit/load/save tokens and failures), vLLM's
  KV-connector stats (build_kv_connector_stats) and Prometheus counters
  vllm:strata_<counter>_total (build_prom_metrics), INFO log lines "Strata: loaded N tokens";
  with a stratad the daemon's strata:get_hits_total / strata:lookup_hit_keys_total count the
  same hits.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)

import strata
from strata.connectors import _common, _paged

if TYPE_CHECKING:
    from vllm.attention.backends.abstract import AttentionMetadata
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

# Under "vllm." so the lines follow vLLM's own log configuration (VLLM_LOGGING_LEVEL, handlers).
logger = logging.getLogger("vllm.strata_connector")

COUNTER_NAMES = ("lookups", "lookup_errors", "lookup_hit_tokens", "load_requests",
                 "loaded_tokens", "load_failed_blocks", "saved_chunks", "saved_tokens",
                 "duplicate_chunks", "save_failures", "save_dropped")


# ---------------------------------------------------------------------------------------------
# Metadata shipped from the scheduler to the workers (picklable plain data).


@dataclass
class LoadChunk:
    key: bytes             # rank-0 chunk key (workers of rank > 0 re-derive from tokens)
    chunk_index: int
    skip_tokens: int       # leading tokens of the chunk already computed locally
    block_ids: list[int]   # the request's KV blocks covering this chunk's tokens


@dataclass
class LoadSpec:
    req_id: str
    salt: str
    chunks: list[LoadChunk]
    is_async: bool
    tokens: Optional[list[int]] = None  # prompt prefix, sent only when tensor_parallel > 1


@dataclass
class SaveSpec:
    req_id: str
    salt: str
    key: bytes
    chunk_index: int
    block_ids: list[int]
    tokens: Optional[list[int]] = None


@dataclass
class StrataConnectorMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)
    # Requests that finished while their async load was in flight: the scheduler kept their
    # blocks (request_finished returned True); report them in finished_sending once idle.
    free_after_load: list[str] = field(default_factory=list)


@dataclass
class StrataKVConnectorStats(KVConnectorStats):
    """Counter deltas since the last collection; sums across workers and intervals."""

    def reset(self):
        self.data = {}

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for k, v in (other.data or {}).items():
            self.data[k] = self.data.get(k, 0) + v
        return self

    def reduce(self) -> dict[str, int | float]:
        return {f"strata_{k}": v for k, v in self.data.items()}

    def is_empty(self) -> bool:
        return not any(self.data.values())


class StrataPromMetrics(KVConnectorPromMetrics):
    """vLLM Prometheus counters `vllm:strata_<counter>_total` (per engine), fed by the stats."""

    def __init__(self, vllm_config, metric_types, labelnames, per_engine_labelvalues):
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters = {
            name: self.make_per_engine(self._counter_cls(
                name=f"vllm:strata_{name}", labelnames=labelnames,
                documentation=f"Strata KV connector: {name.replace('_', ' ')}"))
            for name in COUNTER_NAMES}

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0):
        for name, value in (transfer_stats_data or {}).items():
            per_engine = self._counters.get(name)
            if per_engine is not None and value > 0 and engine_idx in per_engine:
                per_engine[engine_idx].inc(value)


# ---------------------------------------------------------------------------------------------


def _layer_sort_key(name: str) -> tuple[int, str]:
    nums = re.findall(r"\.(\d+)\.", f".{name}.")
    return (int(nums[-1]) if nums else 1 << 30, name)


@dataclass
class _ReqState:
    tokens: list[int]
    salt: str
    block_ids: list[int]
    saved_chunks: int = 0  # chunks [0, saved_chunks) are in Strata or queued for saving
    keys: list[bytes] = field(default_factory=list)  # chunk keys computed so far


class StrataConnector(KVConnectorBase_V1):
    """vLLM KV connector over a Strata store (see the module docstring)."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: Optional["KVCacheConfig"] = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = dict(self._kv_transfer_config.kv_connector_extra_config or {})
        self._cfg = _common.settings(extra)
        mc, pc = vllm_config.model_config, vllm_config.parallel_config
        self._block_size = int(vllm_config.cache_config.block_size)
        chunk = int(self._cfg.get("chunk_tokens") or 0)
        if chunk <= 0:
            chunk = max(1, 256 // self._block_size) * self._block_size
        if chunk % self._block_size != 0:
            raise ValueError(f"chunk_tokens={chunk} must be a multiple of vLLM's block_size="
                             f"{self._block_size}")
        self._chunk = chunk
        self._blocks_per_chunk = chunk // self._block_size
        served = getattr(mc, "served_model_name", None)
        if isinstance(served, (list, tuple)):
            served = served[0] if served else None
        # Keys must not depend on where the weights sit on disk: the served name comes first.
        self._model_id = str(self._cfg.get("model_id") or served or mc.model)
        self._num_layers = int(mc.get_num_layers(pc))
        self._num_kv_heads = int(mc.get_num_kv_heads(pc))
        self._head_dim = int(mc.get_head_size())
        self._dtype_name = _common.strata_dtype_name(mc.dtype)
        self._tp_size = int(getattr(pc, "tensor_parallel_size", 1) or 1)
        self._tp_rank = 0
        self._async_load = bool(self._cfg.get("async_load", True))
        self._codec = str(self._cfg["codec"])
        self._max_pending_saves = int(self._cfg.get("max_pending_saves", 64))
        self._namespaces: dict[tuple[str, int], Any] = {}
        self._counters = _common.Counters(*COUNTER_NAMES)
        self._stats_lock = threading.Lock()
        self._reported: dict[str, int] = {}
        self._store = _common.open_store(self._cfg)
        io_threads = max(1, int(self._cfg["io_threads"]))
        self._pool = cf.ThreadPoolExecutor(io_threads, thread_name_prefix="strata-io")
        self._closed = False
        if role == KVConnectorRole.SCHEDULER:
            self._init_scheduler()
        else:
            self._init_worker()
        logger.info("Strata: %s connector on store=%s chunk_tokens=%d codec=%s async_load=%s",
                    role.name.lower(), self._cfg["store"], chunk, self._codec, self._async_load)

    # -- shared ---------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """This process's connector counters (monotonic)."""
        return self._counters.snapshot()

    def _namespace(self, salt: str, tp_rank: int):
        ns = self._namespaces.get((salt, tp_rank))
        if ns is None:
            ns = strata.KeyNamespace(
                model_id=self._model_id, tenant_salt=salt, num_layers=self._num_layers,
                num_kv_heads=self._num_kv_heads, head_dim=self._head_dim,
                dtype=self._dtype_name, chunk_tokens=self._chunk, tp_rank=tp_rank,
                tp_size=self._tp_size)
            self._namespaces[(salt, tp_rank)] = ns
        return ns

    def _chunk_keys(self, salt: str, tokens: list[int], n_chunks: int,
                    tp_rank: int) -> list[bytes]:
        if n_chunks <= 0:
            return []
        ns = self._namespace(salt, tp_rank)
        return [c.key for c in strata.chunk_keys(ns, tokens[: n_chunks * self._chunk])]

    def _salt_of(self, request: "Request") -> str:
        salt = str(self._cfg.get("tenant_salt") or "")
        cache_salt = getattr(request, "cache_salt", None)
        return f"{salt}|{cache_salt}" if cache_salt else salt

    def get_kv_connector_stats(self) -> Optional[KVConnectorStats]:
        now = self._counters.snapshot()
        with self._stats_lock:
            delta = {k: v - self._reported.get(k, 0) for k, v in now.items()}
            self._reported = now
        delta = {k: v for k, v in delta.items() if v}
        return StrataKVConnectorStats(data=delta) if delta else None

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None
                                 ) -> Optional[KVConnectorStats]:
        return StrataKVConnectorStats(data=dict(data or {}))

    @classmethod
    def build_prom_metrics(cls, vllm_config, metric_types, labelnames,
                           per_engine_labelvalues) -> Optional[KVConnectorPromMetrics]:
        return StrataPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)

    def shutdown(self):
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=False)
        c = self._counters.snapshot()
        logger.info("Strata: %s connector shut down; counters %s", self._role.name.lower(), c)

    # -- scheduler side -------------------------------------------------------------------

    def _init_scheduler(self) -> None:
        self._lookups: dict[str, cf.Future] = {}
        self._hit_chunks: dict[str, int] = {}
        self._reqs: dict[str, _ReqState] = {}
        self._pending_loads: list[LoadSpec] = []
        self._loading: set[str] = set()
        self._free_after_load: list[str] = []
        self._req_salts: dict[str, str] = {}  # set by the lookup, taken by build_connector_meta
        # Per request with a load: (chunk index, its block ids), to re-save chunks whose load
        # failed once vLLM has recomputed them.
        self._load_blocks: dict[str, list[tuple[int, set[int]]]] = {}

    def _lookup(self, keys: list[bytes]) -> int:
        return int(self._store.leading_hits(keys))

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int
                                   ) -> tuple[int | None, bool]:
        tokens = request.prompt_token_ids
        if not tokens:
            return 0, False
        self._req_salts[request.request_id] = self._salt_of(request)
        max_chunks = (len(tokens) - 1) // self._chunk  # leave >= 1 prompt token to compute
        if max_chunks * self._chunk <= num_computed_tokens:
            return 0, False
        req_id = request.request_id
        fut = self._lookups.get(req_id)
        if fut is None and req_id not in self._hit_chunks:
            keys = self._chunk_keys(self._salt_of(request), list(tokens), max_chunks, 0)
            fut = self._pool.submit(self._lookup, keys)
            self._lookups[req_id] = fut
            self._counters.add("lookups")
        if fut is not None and not fut.done():
            return None, False
        if req_id not in self._hit_chunks:
            try:
                hits = min(fut.result(), max_chunks)
            except Exception as e:  # the store is down: no hit, the engine computes
                logger.warning("Strata: lookup for request %s failed (%s); computing instead",
                               req_id, _common.error_text(e))
                self._counters.add("lookup_errors")
                hits = 0
            self._hit_chunks[req_id] = hits
            if hits:
                self._counters.add("lookup_hit_tokens", hits * self._chunk)
                logger.info("Strata: request %s: %d of %d prompt tokens hit in Strata",
                            req_id, hits * self._chunk, len(tokens))
        hit_tokens = self._hit_chunks[req_id] * self._chunk
        if hit_tokens <= num_computed_tokens:
            return 0, False
        return hit_tokens - num_computed_tokens, self._async_load

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int):
        req_id = request.request_id
        self._lookups.pop(req_id, None)
        hits = self._hit_chunks.get(req_id, 0)
        if num_external_tokens <= 0 or hits == 0:
            return
        block_ids = list(blocks.get_block_ids()[0])
        tokens = list(request.prompt_token_ids or [])
        salt = self._salt_of(request)
        end = hits * self._chunk
        start = end - num_external_tokens
        keys = self._chunk_keys(salt, tokens, hits, 0)
        chunks = []
        for c in range(start // self._chunk, hits):
            b0 = c * self._blocks_per_chunk
            chunks.append(LoadChunk(key=keys[c], chunk_index=c,
                                    skip_tokens=max(0, start - c * self._chunk),
                                    block_ids=block_ids[b0: b0 + self._blocks_per_chunk]))
        self._load_blocks[req_id] = [(c.chunk_index, set(c.block_ids)) for c in chunks]
        self._pending_loads.append(LoadSpec(
            req_id=req_id, salt=salt, chunks=chunks, is_async=self._async_load,
            tokens=tokens[:end] if self._tp_size > 1 else None))
        if self._async_load:
            self._loading.add(req_id)
        self._counters.add("load_requests")

    def _save_specs(self, req_id: str, st: _ReqState, computed: int) -> list[SaveSpec]:
        done_chunks = min(computed, len(st.tokens)) // self._chunk
        if done_chunks <= st.saved_chunks:
            return []
        if len(st.keys) < done_chunks:  # chained keys: computed once per request
            st.keys = self._chunk_keys(st.salt, st.tokens, done_chunks, 0)
        keys = st.keys
        specs = []
        for c in range(st.saved_chunks, done_chunks):
            b0 = c * self._blocks_per_chunk
            blocks = st.block_ids[b0: b0 + self._blocks_per_chunk]
            if len(blocks) < self._blocks_per_chunk:
                break
            specs.append(SaveSpec(req_id=req_id, salt=st.salt, key=keys[c], chunk_index=c,
                                  block_ids=blocks,
                                  tokens=st.tokens[: (c + 1) * self._chunk]
                                  if self._tp_size > 1 else None))
            st.saved_chunks = c + 1
        return specs

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = StrataConnectorMetadata(loads=self._pending_loads,
                                       free_after_load=self._free_after_load)
        self._pending_loads, self._free_after_load = [], []
        sched = scheduler_output.num_scheduled_tokens
        base_salt = str(self._cfg.get("tenant_salt") or "")  # NewRequestData has no cache_salt
        for new in scheduler_output.scheduled_new_reqs:
            if not new.prompt_token_ids:
                continue
            st = _ReqState(tokens=list(new.prompt_token_ids),
                           salt=self._req_salts.pop(new.req_id, base_salt),
                           block_ids=list(new.block_ids[0]),
                           saved_chunks=self._hit_chunks.get(new.req_id, 0))
            self._reqs[new.req_id] = st
            meta.saves += self._save_specs(new.req_id, st,
                                           new.num_computed_tokens + sched.get(new.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self._reqs.get(req_id)
            if st is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                st.block_ids = list(new_blocks[0]) if new_blocks else []
            elif new_blocks:
                st.block_ids.extend(new_blocks[0])
            meta.saves += self._save_specs(
                req_id, st, cached.num_computed_tokens[i] + sched.get(req_id, 0))
        return meta

    def update_connector_output(self, connector_output: "KVConnectorOutput"):
        invalid = set(getattr(connector_output, "invalid_block_ids", None) or ())
        if invalid:
            # vLLM recomputes from the first failed block; save those chunks again afterwards.
            for req_id, chunks in self._load_blocks.items():
                bad = [c for c, blocks in chunks if blocks & invalid]
                if not bad:
                    continue
                first = min(bad)
                self._hit_chunks[req_id] = min(self._hit_chunks.get(req_id, first), first)
                st = self._reqs.get(req_id)
                if st is not None:
                    st.saved_chunks = min(st.saved_chunks, first)
        for req_id in connector_output.finished_recving or ():
            self._loading.discard(req_id)

    def request_finished(self, request: "Request", block_ids: list[int]
                         ) -> tuple[bool, dict[str, Any] | None]:
        req_id = request.request_id
        self._reqs.pop(req_id, None)
        self._hit_chunks.pop(req_id, None)
        self._req_salts.pop(req_id, None)
        self._load_blocks.pop(req_id, None)
        fut = self._lookups.pop(req_id, None)
        if fut is not None:
            fut.cancel()
        if req_id in self._loading:
            # The worker may still be writing into this request's blocks: keep them until it
            # reports the request in finished_sending.
            self._loading.discard(req_id)
            self._free_after_load.append(req_id)
            return True, None
        return False, None

    def take_events(self):
        return ()

    # -- worker side ----------------------------------------------------------------------

    def _init_worker(self) -> None:
        self._kv: dict[str, torch.Tensor] = {}
        self._layers: list[str] = []
        self._layer_index: dict[str, int] = {}
        self._geo: Optional[_paged.PagedGeometry] = None
        self._inflight: dict[str, list[tuple[LoadSpec, cf.Future]]] = {}
        self._sync_futs: list[tuple[LoadSpec, cf.Future]] = []
        self._finished_loading: set[str] = set()
        self._free_pending: set[str] = set()
        self._load_errors: set[int] = set()
        self._staged: list[dict] = []
        self._staged_meta_id: Optional[int] = None
        self._pending_saves: set[cf.Future] = set()
        self._saves_lock = threading.Lock()
        self._tls = threading.local()  # per io thread: fetch buffers + decode staging
        self._no_save_reqs: set[str] = set()  # requests whose sync load failed this step
        self._load_batch = max(1, int(self._cfg.get("load_batch", 8)))

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        names = sorted(kv_caches, key=_layer_sort_key)
        if len(names) != self._num_layers:
            raise ValueError(f"Strata: {len(names)} KV cache layers registered, the model "
                             f"config says {self._num_layers} (hybrid models unsupported)")
        prefer = self._cfg.get("kv_layout")
        if prefer is None:
            from vllm.platforms import current_platform
            prefer = "HND" if current_platform.is_cpu() else "NHD"
        self._geo = _paged.detect_geometry(kv_caches[names[0]], self._num_kv_heads,
                                           self._head_dim, prefer)
        self._kv = dict(kv_caches)
        self._layers = names
        self._layer_index = {n: i for i, n in enumerate(names)}
        if self._tp_size > 1:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
            self._tp_rank = int(get_tensor_model_parallel_rank())
        logger.info("Strata: registered %d KV layers, layout %s, kernel block %d, dtype %s",
                    len(names), self._geo.layout, self._geo.kernel_block_size, self._geo.dtype)

    def _keys_for(self, salt: str, tokens: Optional[list[int]], keys: list[bytes],
                  indices: list[int]) -> list[bytes]:
        if self._tp_rank == 0 or tokens is None:
            return keys
        mine = self._chunk_keys(salt, tokens, max(indices) + 1, self._tp_rank)
        return [mine[i] for i in indices]

    def _load_buffers(self, n: int) -> tuple[list[bytearray], torch.Tensor]:
        """This thread's reusable fetch buffers (>= n) and decode staging tensor."""
        tls = self._tls
        geo = self._geo
        if getattr(tls, "staging", None) is None:
            shape = (len(self._layers), 2, self._chunk, geo.num_kv_heads, geo.head_dim)
            tls.staging = torch.empty(shape, dtype=geo.dtype, device="cpu")
            raw = tls.staging.numel() * tls.staging.element_size()
            tls.cap = strata.BLOCK_HEADER_SIZE + raw + (64 << 10)  # lossless codecs <= raw
            tls.bufs = []
        while len(tls.bufs) < n:
            tls.bufs.append(bytearray(tls.cap))
        return tls.bufs[:n], tls.staging

    def _fetch(self, keys: list[bytes]) -> list[Optional[memoryview]]:
        """The blocks of `keys` (None: missing), fetched into this thread's buffers."""
        bufs, _ = self._load_buffers(len(keys))
        try:
            sizes = self._store.batch_get_into(keys, bufs)
        except strata.OutOfRange:  # a block larger than the buffers: fetch it as bytes
            blobs = self._store.prefetch(keys).result()
            return [None if b is None else memoryview(b) for b in blobs]
        return [None if n is None else memoryview(b)[:n] for b, n in zip(bufs, sizes)]

    def _run_load(self, spec: LoadSpec) -> tuple[int, set[int], str]:
        """Fetches, verifies and scatters a request's chunks (background thread).

        Chunks go `load_batch` at a time through reusable buffers: one batch_get_into, then
        each block is decoded in place into a staging tensor (decode_kv verifies it and its
        shape) and scattered into the paged tensors. Returns (tokens loaded, block ids that
        failed, error text). Never raises.
        """
        geo = self._geo
        keys = self._keys_for(spec.salt, spec.tokens, [c.key for c in spec.chunks],
                              [c.chunk_index for c in spec.chunks])
        loaded, failed_from, why = 0, None, ""
        for b0 in range(0, len(keys), self._load_batch):
            try:
                blobs = self._fetch(keys[b0: b0 + self._load_batch])
            except Exception as e:
                failed_from, why = b0, _common.error_text(e)
                break
            _, staging = self._load_buffers(0)
            out = _common.as_numpy(staging)
            for i, blob in enumerate(blobs, start=b0):
                c = spec.chunks[i]
                if blob is None:
                    failed_from, why = i, f"chunk {c.chunk_index} missing (evicted since lookup?)"
                    break
                try:
                    strata.decode_kv(blob, out=out)
                    n = self._chunk - c.skip_tokens
                    idx = _paged.slot_indices(c.block_ids, self._block_size, c.skip_tokens, n,
                                              geo)
                    for li, name in enumerate(self._layers):
                        _paged.scatter_layer(self._kv[name], idx,
                                             staging[li, :, c.skip_tokens:], geo)
                    loaded += n
                except Exception as e:
                    failed_from, why = i, f"chunk {c.chunk_index}: {_common.error_text(e)}"
                    break
            if failed_from is not None:
                break
        failed: set[int] = set()
        if failed_from is not None:
            for c in spec.chunks[failed_from:]:
                first_block = c.skip_tokens // self._block_size
                failed.update(c.block_ids[first_block:])
        return loaded, failed, why

    def _collect(self, spec: LoadSpec, fut: cf.Future) -> None:
        loaded, failed, why = fut.result()
        self._counters.add("loaded_tokens", loaded)
        if failed and not spec.is_async:
            # This step computes the request's later tokens over the bad prefix: none of its
            # chunks may be saved (vLLM recomputes them; the scheduler re-plans their saves).
            self._no_save_reqs.add(spec.req_id)
        if failed:
            self._counters.add("load_failed_blocks", len(failed))
            self._load_errors |= failed
            logger.warning("Strata: request %s: load failed after %d tokens (%s); %d blocks "
                           "reported for recompute", spec.req_id, loaded, why, len(failed))
        else:
            logger.info("Strata: loaded %d tokens for request %s from Strata (%d chunks)",
                        loaded, spec.req_id, len(spec.chunks))

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, StrataConnectorMetadata):
            return
        self._free_pending.update(meta.free_after_load)
        self._no_save_reqs = set()
        for spec in meta.loads:
            fut = self._pool.submit(self._run_load, spec)
            if spec.is_async:
                self._inflight.setdefault(spec.req_id, []).append((spec, fut))
            else:
                self._sync_futs.append((spec, fut))

    def _drain_sync_loads(self) -> None:
        futs, self._sync_futs = self._sync_futs, []
        for spec, fut in futs:
            self._collect(spec, fut)

    def wait_for_layer_load(self, layer_name: str) -> None:
        # Chunks hold every layer, so the first layer waits for the whole synchronous load.
        if self._sync_futs:
            self._drain_sync_loads()

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: "AttentionMetadata", **kwargs: Any) -> None:
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, StrataConnectorMetadata) or not meta.saves:
            return
        li = self._layer_index.get(layer_name)
        if li is None:
            return
        if self._staged_meta_id != id(meta):
            self._stage(meta)
        for st in self._staged:
            st["buf"][li].copy_(_paged.gather_layer(kv_layer, st["idx"], self._geo))
            st["layers"] += 1

    def _stage(self, meta: StrataConnectorMetadata) -> None:
        geo = self._geo
        self._staged_meta_id = id(meta)
        self._staged = []
        with self._saves_lock:
            room = self._max_pending_saves - len(self._pending_saves)
        for spec in meta.saves:
            if room <= 0:
                self._counters.add("save_dropped")
                continue
            room -= 1
            idx = _paged.slot_indices(spec.block_ids, self._block_size, 0, self._chunk, geo)
            buf = torch.empty((len(self._layers), 2, self._chunk, geo.num_kv_heads,
                               geo.head_dim), dtype=geo.dtype, device="cpu")
            self._staged.append({"spec": spec, "idx": idx, "buf": buf, "layers": 0})

    def _run_save(self, spec: SaveSpec, buf: torch.Tensor) -> None:
        try:
            key = self._keys_for(spec.salt, spec.tokens, [spec.key], [spec.chunk_index])[0]
            blob = strata.encode_kv(_common.as_numpy(buf), codec=self._codec,
                                    model=self._model_id)
            if self._store.put(key, blob):
                self._counters.add("saved_chunks")
                self._counters.add("saved_tokens", self._chunk)
            else:
                self._counters.add("duplicate_chunks")
        except Exception as e:
            self._counters.add("save_failures")
            logger.warning("Strata: saving chunk %d of request %s failed: %s",
                           spec.chunk_index, spec.req_id, _common.error_text(e))

    def wait_for_save(self):
        # The KV was copied out of the paged tensors during the forward; encoding and the put
        # run in the background, so nothing here waits for the store.
        staged, self._staged, self._staged_meta_id = self._staged, [], None
        if self._sync_futs:
            self._drain_sync_loads()
        for st in staged:
            if st["layers"] != len(self._layers) or st["spec"].req_id in self._no_save_reqs:
                self._counters.add("save_dropped")
                continue
            fut = self._pool.submit(self._run_save, st["spec"], st["buf"])
            with self._saves_lock:
                self._pending_saves.add(fut)
            fut.add_done_callback(self._save_done)

    def _save_done(self, fut: cf.Future) -> None:
        with self._saves_lock:
            self._pending_saves.discard(fut)

    def wait_for_pending_saves(self, timeout_s: float | None = None) -> bool:
        """Blocks until the background saves queued so far are stored (tests, shutdown)."""
        with self._saves_lock:
            futs = list(self._pending_saves)
        done, not_done = cf.wait(futs, timeout=timeout_s)
        return not not_done

    def get_finished(self, finished_req_ids: set[str]
                     ) -> tuple[set[str] | None, set[str] | None]:
        if self._sync_futs:
            self._drain_sync_loads()
        done_recving: set[str] = set()
        for req_id, items in list(self._inflight.items()):
            if all(f.done() for _, f in items):
                for spec, fut in items:
                    self._collect(spec, fut)
                del self._inflight[req_id]
                done_recving.add(req_id)
        done_sending = {r for r in self._free_pending if r not in self._inflight}
        self._free_pending -= done_sending
        return (done_sending or None), (done_recving or None)

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors
