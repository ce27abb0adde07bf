"""Pieces shared by the engine connectors: store opening, dtype views, counters.

Threading: `open_store` and `Counters` are safe to call from any thread. A store returned by
`open_store` is shared by every connector in the process that asks for the same settings (the
`strata` stores release the GIL and are thread-safe per docs/python.md).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

import strata

# Settings every connector understands (kv_connector_extra_config for vLLM,
# hicache_storage_backend_extra_config for SGLang). Defaults in DEFAULTS.
DEFAULTS: dict[str, Any] = {
    "store": "local",            # "local" (in-process LocalStore) or "HOST:PORT" of a stratad
    "local_name": "default",     # LocalStores are shared per process by name (+ sizes)
    "local_dram_bytes": 1 << 30,  # LocalStore DRAM tier
    "local_ssd_path": None,      # LocalStore SSD tier directory (None: DRAM only)
    "local_ssd_bytes": 0,
    "deadline_ms": 5000,         # RemoteStore per-call deadline
    "data_plane": "auto",        # RemoteStore data plane: auto | local | ucx | tcp | grpc
    "codec": "raw",              # strata.encode_kv codec spec (docs/codecs.md)
    "model_id": None,            # key namespace model id (default: the engine's model name)
    "tenant_salt": "",           # key namespace salt (vLLM: a request's cache_salt is appended)
    "io_threads": 2,             # background threads for loads and saves
}

_stores_lock = threading.Lock()
_local_stores: dict[tuple, Any] = {}


def settings(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULTS overridden by `extra`; unknown keys are kept (each connector reads its own)."""
    out = dict(DEFAULTS)
    for k, v in (extra or {}).items():
        out[k] = v
    return out


def open_store(cfg: Mapping[str, Any]):
    """Opens the store named by cfg["store"].

    "local" returns one LocalStore per (local_name, sizes, ssd path) per process, so a vLLM
    scheduler-role and worker-role connector in one process (uniprocess executor) share it.
    Anything else is a stratad address for strata.RemoteStore. Raises strata.Error when the
    store cannot be opened.
    """
    where = str(cfg.get("store") or "local")
    if where == "local":
        key = (str(cfg.get("local_name")), int(cfg["local_dram_bytes"]),
               cfg.get("local_ssd_path"), int(cfg.get("local_ssd_bytes") or 0))
        with _stores_lock:
            store = _local_stores.get(key)
            if store is None:
                store = strata.LocalStore(dram_bytes=key[1], ssd_path=key[2], ssd_bytes=key[3])
                _local_stores[key] = store
            return store
    return strata.RemoteStore(where, deadline_ms=int(cfg["deadline_ms"]),
                              data_plane=str(cfg["data_plane"]))


def strata_dtype_name(torch_dtype) -> str:
    """The KeyNamespace / block dtype name of a torch dtype; ValueError for unsupported ones."""
    import torch
    if torch_dtype == torch.float16:
        return "float16"
    if torch_dtype == torch.bfloat16:
        return "bfloat16"
    raise ValueError(f"kv cache dtype {torch_dtype} is not supported by Strata blocks "
                     "(float16 or bfloat16 only)")


def as_numpy(t) -> np.ndarray:
    """A numpy view (no copy) of a contiguous CPU torch tensor; bfloat16 as uint16."""
    import torch
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def error_text(e: BaseException) -> str:
    code = getattr(e, "code", None)
    return f"{code}: {e}" if code else f"{type(e).__name__}: {e}"


class Counters:
    """Monotonic counters (thread-safe). `snapshot()` returns a copy."""

    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._values = {n: 0 for n in names}

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + int(value)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
