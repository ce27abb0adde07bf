"""StrataHiCacheStorage: an SGLang HiCache L3 storage backend backed by Strata.

Load it as SGLang's "dynamic" backend (docs/connectors.md):

    --enable-hierarchical-cache --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "strata",
        "module_path": "strata.connectors.sglang", "class_name": "StrataHiCacheStorage",
        "interface_v1": 1, "store": "127.0.0.1:7070"}'

`interface_v1: 1` makes SGLang call the batch_get_v1 / batch_set_v1 methods, which read and
write pages of the registered host pool directly (no per-page tensors handed back and forth).

Keys: SGLang names a page by a 64-hex SHA-256 chained over the page's tokens. The Strata key
is the first 16 bytes of BLAKE2b over "sglang", the model name, the TP rank/size (omitted for
MLA models, whose KV is the same on every rank) and that hash, so it is deterministic across
processes and machines.

Values: one Strata KV block per page (strata.encode_kv over [layers, 2, page, heads, dim]);
the store verifies every block, so a corrupt page reads as a miss, never as wrong KV. Only MHA
host pools (separate K and V of equal head_dim) are supported; register_mem_pool_host raises
ValueError for others (MLA, Mamba state, ...).

Threading: SGLang calls a backend from its prefetch and backup threads at once; the store is
thread-safe and this class keeps only counters (locked) and the key set for clear().
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch

from sglang.srt.mem_cache.hicache_storage import HiCacheStorage

import strata
from strata.connectors import _common

logger = logging.getLogger("strata.connectors.sglang")

# The pool page orders of SGLang's MHA host pool (get_data_page / set_from_flat_data_page),
# as (shape from (L, P, H, D), permutation to [L, 2, P, H, D], inverse permutation).
_LAYOUTS = {
    "layer_first": (lambda L, P, H, D: (2, L, P, H, D), (1, 0, 2, 3, 4), (1, 0, 2, 3, 4)),
    "page_first": (lambda L, P, H, D: (2, P, L, H, D), (2, 0, 1, 3, 4), (1, 2, 0, 3, 4)),
    "page_first_direct": (lambda L, P, H, D: (2, L, P, H, D), (1, 0, 2, 3, 4), (1, 0, 2, 3, 4)),
    "page_head": (lambda L, P, H, D: (2, H, P, L, D), (3, 0, 2, 1, 4), (1, 3, 2, 0, 4)),
}
_MAX_TRACKED_KEYS = 1 << 20


@dataclass
class StorageMetrics:
    """The fields of SGLang's StorageMetrics (used when SGLang's class is not importable)."""

    prefetch_pgs: List[int] = field(default_factory=list)
    backup_pgs: List[int] = field(default_factory=list)
    prefetch_bandwidth: List[float] = field(default_factory=list)
    backup_bandwidth: List[float] = field(default_factory=list)


def _storage_metrics_class():
    for mod in ("sglang.srt.observability.metrics_collector", "sglang.srt.metrics.collector"):
        try:
            return getattr(__import__(mod, fromlist=["StorageMetrics"]), "StorageMetrics")
        except (ImportError, AttributeError):
            continue
    return StorageMetrics


class StrataHiCacheStorage(HiCacheStorage):
    """HiCacheStorage over a Strata LocalStore or stratad (see the module docstring)."""

    def __init__(self, storage_config: Any, kwargs: Optional[dict] = None):
        extra = dict(getattr(storage_config, "extra_config", None) or {})
        self._cfg = _common.settings(extra)
        self._codec = str(self._cfg["codec"])
        model = str(self._cfg.get("model_id") or getattr(storage_config, "model_name", "") or "")
        scope = [f"sglang|{model}"]
        if not getattr(storage_config, "is_mla_model", False):
            scope.append(f"tp{storage_config.tp_rank}/{storage_config.tp_size}")
        if getattr(storage_config, "pp_size", 1) > 1:
            scope.append(f"pp{storage_config.pp_rank}/{storage_config.pp_size}")
        salt = str(self._cfg.get("tenant_salt") or "")
        if salt:
            scope.append(f"salt={salt}")
        self._scope = "|".join(scope).encode()
        self._model = model
        self._store = _common.open_store(self._cfg)
        self.mem_pool_host = None
        self._geom: Optional[tuple] = None  # (layout, L, P, H, D, dtype)
        self._lock = threading.Lock()
        self._tls = threading.local()  # per calling thread: fetch buffers + decode staging
        self._get_batch = max(1, int(self._cfg.get("get_batch", 16)))  # bounds buffer memory
        self._written: set[bytes] = set()
        self._counters = _common.Counters("gets", "get_hits", "get_errors", "sets", "set_errors",
                                          "exists_calls", "exists_hits")
        self._metrics = {"prefetch_pgs": [], "backup_pgs": [], "prefetch_bandwidth": [],
                         "backup_bandwidth": []}
        logger.info("Strata: HiCache backend on store=%s scope=%s codec=%s",
                    self._cfg["store"], self._scope.decode(), self._codec)

    # -- keys and pages -------------------------------------------------------------------

    def strata_key(self, key: str) -> bytes:
        """The 16-byte Strata key of an SGLang page hash."""
        return hashlib.blake2b(self._scope + b"|" + key.encode(), digest_size=16).digest()

    def register_mem_pool_host(self, mem_pool_host: Any):
        layout = getattr(mem_pool_host, "layout", None)
        head_num = getattr(mem_pool_host, "head_num", None)
        head_dim = getattr(mem_pool_host, "head_dim", None)
        v_head_dim = getattr(mem_pool_host, "v_head_dim", head_dim)
        if layout not in _LAYOUTS or head_num is None or head_dim is None or \
                v_head_dim != head_dim:
            raise ValueError(f"Strata HiCache backend supports MHA host pools with equal K/V "
                             f"head_dim and layouts {sorted(_LAYOUTS)}; got "
                             f"{type(mem_pool_host).__name__} layout={layout!r}")
        _common.strata_dtype_name(mem_pool_host.dtype)  # float16 / bfloat16 only
        super().register_mem_pool_host(mem_pool_host)
        self._geom = (layout, int(mem_pool_host.layer_num), int(mem_pool_host.page_size),
                      int(head_num), int(head_dim), mem_pool_host.dtype)

    def _page_to_block(self, page: torch.Tensor) -> bytes:
        layout, L, P, H, D, dtype = self._geometry()
        shape, perm, _ = _LAYOUTS[layout]
        kv = page.reshape(shape(L, P, H, D)).permute(*perm).contiguous()
        return strata.encode_kv(_common.as_numpy(kv.to(dtype)), codec=self._codec,
                                model=self._model)

    def _staging(self) -> torch.Tensor:
        """This thread's [L, 2, P, H, D] decode buffer."""
        layout, L, P, H, D, dtype = self._geometry()
        t = getattr(self._tls, "staging", None)
        if t is None or tuple(t.shape) != (L, 2, P, H, D) or t.dtype != dtype:
            t = self._tls.staging = torch.empty((L, 2, P, H, D), dtype=dtype)
        return t

    def _block_to_page(self, blob, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decodes a block into `target` (a flat page in pool order) or a new flat page.

        Raises on a malformed block or one of another shape (decode_kv checks both).
        """
        layout, L, P, H, D, _ = self._geometry()
        staging = self._staging()
        strata.decode_kv(blob, out=_common.as_numpy(staging))
        shape, _, inv = _LAYOUTS[layout]
        page = staging.permute(*inv)
        if target is not None:
            target.view(shape(L, P, H, D)).copy_(page)
            return target
        return page.contiguous().flatten()

    def _geometry(self) -> tuple:
        if self._geom is None:
            raise ValueError("no host pool registered (register_mem_pool_host not called)")
        return self._geom

    def _fetch(self, keys: List[str]) -> List[Optional[memoryview]]:
        """The blocks of `keys` (None: missing) in this thread's reusable buffers, valid until
        this thread's next fetch."""
        if not keys:
            return []
        skeys = [self.strata_key(k) for k in keys]
        staging = self._staging()
        cap = strata.BLOCK_HEADER_SIZE + staging.numel() * staging.element_size() + (64 << 10)
        bufs = getattr(self._tls, "bufs", None)
        if bufs is None or len(bufs[0]) != cap:
            bufs = self._tls.bufs = []
        while len(bufs) < len(keys):
            bufs.append(bytearray(cap))
        try:
            sizes = self._store.batch_get_into(skeys, bufs[:len(keys)])
        except strata.OutOfRange:  # a block larger than the buffers
            blobs = self._store.prefetch(skeys).result()
            return [None if b is None else memoryview(b) for b in blobs]
        return [None if n is None else memoryview(b)[:n] for b, n in zip(bufs, sizes)]

    def _remember(self, skeys: List[bytes]) -> None:
        with self._lock:
            if len(self._written) + len(skeys) <= _MAX_TRACKED_KEYS:
                self._written.update(skeys)

    # -- HiCacheStorage: generic (tensor) interface -----------------------------------------

    def get(self, key: str, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location])[0]

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[torch.Tensor | None]:
        targets = list(target_locations) if target_locations is not None else [None] * len(keys)
        t0 = time.perf_counter()
        out: List[torch.Tensor | None] = []
        nbytes = 0
        for b0 in range(0, len(keys), self._get_batch):
            batch = keys[b0: b0 + self._get_batch]
            try:
                blobs = self._fetch(batch)
            except Exception as e:
                logger.warning("Strata: batch_get of %d pages failed: %s", len(batch),
                               _common.error_text(e))
                self._counters.add("get_errors", len(batch))
                blobs = [None] * len(batch)
            for key, blob, target in zip(batch, blobs, targets[b0: b0 + len(batch)]):
                self._counters.add("gets")
                if blob is None:
                    out.append(None)
                    continue
                try:
                    page = self._block_to_page(blob, target)
                except Exception as e:
                    logger.warning("Strata: page %s unreadable: %s", key, _common.error_text(e))
                    self._counters.add("get_errors")
                    out.append(None)
                    continue
                self._counters.add("get_hits")
                nbytes += len(blob)
                out.append(page)
        self._record("prefetch", sum(p is not None for p in out), nbytes, t0)
        return out

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys: List[str], values: Optional[Any] = None,
                  target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        if values is None or len(values) != len(keys):
            return False
        return all(self._put_pages(keys, list(values)))

    def _put_pages(self, keys: List[str], pages: List[torch.Tensor]) -> List[bool]:
        t0 = time.perf_counter()
        try:
            blobs = [self._page_to_block(p) for p in pages]
            skeys = [self.strata_key(k) for k in keys]
            self._store.batch_put(skeys, blobs)  # False = already stored: still a success
        except Exception as e:
            logger.warning("Strata: storing %d pages failed: %s", len(keys),
                           _common.error_text(e))
            self._counters.add("set_errors", len(keys))
            return [False] * len(keys)
        self._remember(skeys)
        self._counters.add("sets", len(keys))
        self._record("backup", len(keys), sum(len(b) for b in blobs), t0)
        return [True] * len(keys)

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def batch_exists(self, keys: List[str], extra_info: Optional[Any] = None) -> int:
        self._counters.add("exists_calls")
        try:
            n = int(self._store.leading_hits([self.strata_key(k) for k in keys]))
        except Exception as e:
            logger.warning("Strata: lookup of %d pages failed: %s", len(keys),
                           _common.error_text(e))
            return 0
        self._counters.add("exists_hits", n)
        return n

    # -- HiCacheStorage: zero-copy interface (pages of the registered host pool) ----------------

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[Any] = None) -> List[bool]:
        return self._get_into_pool(self.mem_pool_host, keys, host_indices)

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[Any] = None) -> List[bool]:
        return self._set_from_pool(self.mem_pool_host, keys, host_indices)

    def _page_offsets(self, pool: Any, keys: List[str], host_indices: torch.Tensor) -> List[int]:
        P = int(pool.page_size)
        if host_indices is None or host_indices.numel() != len(keys) * P:
            raise ValueError(f"host_indices: {0 if host_indices is None else host_indices.numel()}"
                             f" indices for {len(keys)} pages of {P} tokens")
        return [int(host_indices[i * P].item()) for i in range(len(keys))]

    def _get_into_pool(self, pool: Any, keys: List[str], host_indices: torch.Tensor) -> List[bool]:
        try:
            offsets = self._page_offsets(pool, keys, host_indices)
        except ValueError as e:
            logger.error("Strata: batch_get_v1: %s", e)
            return [False] * len(keys)
        pages = self.batch_get(keys)
        ok = []
        for off, page in zip(offsets, pages):
            if page is not None:
                pool.set_from_flat_data_page(off, page)
            ok.append(page is not None)
        return ok

    def _set_from_pool(self, pool: Any, keys: List[str], host_indices: torch.Tensor) -> List[bool]:
        try:
            offsets = self._page_offsets(pool, keys, host_indices)
        except ValueError as e:
            logger.error("Strata: batch_set_v1: %s", e)
            return [False] * len(keys)
        pages = [pool.get_data_page(off, flat=True) for off in offsets]
        return self._put_pages(keys, pages)

    # -- HiCacheStorage: per-pool interface (newer SGLang; the KV pool only) ---------------------

    def batch_exists_v2(self, keys: List[str], pool_transfers: Optional[List[Any]] = None,
                        extra_info: Optional[Any] = None):
        from sglang.srt.mem_cache.hicache_storage import PoolTransferResult
        if pool_transfers:
            # Extra pools (Mamba / SWA state, indexers) are not stored: no usable prefix.
            return PoolTransferResult(0, {}, [])
        n = self.batch_exists(keys, extra_info)
        return PoolTransferResult(n, {"kv": n} if n else {}, list(range(1, n + 1)))

    def _v2(self, transfers: List[Any], fn) -> dict:
        out = {}
        for tr in transfers:
            keys = list(tr.keys or [])
            pool = getattr(self, "registered_pools", {}).get(tr.name, self.mem_pool_host)
            if str(tr.name) != "kv" or pool is None:
                out[tr.name] = [False] * len(keys)
                continue
            out[tr.name] = fn(pool, keys, tr.host_indices)
        return out

    def batch_get_v2(self, transfers: List[Any], extra_info: Optional[Any] = None) -> dict:
        return self._v2(transfers, self._get_into_pool)

    def batch_set_v2(self, transfers: List[Any], extra_info: Optional[Any] = None) -> dict:
        return self._v2(transfers, self._set_from_pool)

    # -- housekeeping --------------------------------------------------------------------------

    def clear(self) -> None:
        """Removes the pages this backend stored (the store may be shared: nothing else)."""
        with self._lock:
            keys, self._written = list(self._written), set()
        for k in keys:
            try:
                self._store.remove(k)
            except Exception as e:
                logger.warning("Strata: clear: remove failed: %s", _common.error_text(e))

    def counters(self) -> dict[str, int]:
        return self._counters.snapshot()

    def _record(self, kind: str, pages: int, nbytes: int, t0: float) -> None:
        if pages <= 0:
            return
        dt = max(time.perf_counter() - t0, 1e-9)
        with self._lock:
            self._metrics[f"{kind}_pgs"].append(pages)
            self._metrics[f"{kind}_bandwidth"].append(nbytes / dt / 1e9)

    def get_stats(self):
        """SGLang StorageMetrics (pages and GB/s per batch) since the last call.

        When SGLang's metrics module cannot be imported, an object with the same fields.
        """
        with self._lock:
            m = self._metrics
            self._metrics = {k: [] for k in m}
        cls = _storage_metrics_class()
        return cls(prefetch_pgs=m["prefetch_pgs"], backup_pgs=m["backup_pgs"],
                   prefetch_bandwidth=m["prefetch_bandwidth"],
                   backup_bandwidth=m["backup_bandwidth"])

    def close(self) -> None:
        pass
