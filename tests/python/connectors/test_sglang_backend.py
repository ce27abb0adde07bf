"""StrataHiCacheStorage (strata.connectors.sglang) against real Strata stores.

SGLang's own HiCacheStorage base class and backend factory are used (pip install --no-deps
sglang; see conftest.import_sglang_base). SGLang's host pool needs its CUDA kernels, so the
pool here is a stand-in with the same page API and buffer layouts as MHATokenToKVPoolHost
(get_data_page / get_dummy_flat_data_page / set_from_flat_data_page).
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from connector_fixtures import SKIP_REASON, import_sglang_base

if SKIP_REASON:
    pytest.skip(SKIP_REASON, allow_module_level=True)
torch = pytest.importorskip("torch", reason="torch is not installed (tools/vllm_demo.sh --test)")
_sglang_skip = import_sglang_base()
if _sglang_skip:
    pytest.skip(_sglang_skip, allow_module_level=True)

import numpy as np  # noqa: E402

import strata  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig  # noqa: E402
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402
from strata.connectors.sglang import StrataHiCacheStorage  # noqa: E402

L, P, H, D, PAGES = 3, 4, 2, 8, 8


class HostPool:
    """The page API of SGLang's MHA host pool over a real buffer (layer_first / page_first)."""

    def __init__(self, layout: str, seed: int | None = None):
        self.layout, self.layer_num, self.page_size = layout, L, P
        self.head_num, self.head_dim, self.dtype = H, D, torch.bfloat16
        size = PAGES * P
        shape = (2, L, size, H, D) if layout == "layer_first" else (2, size, L, H, D)
        g = torch.Generator().manual_seed(seed or 0)
        self.kv_buffer = (torch.randn(shape, generator=g) if seed is not None
                          else torch.zeros(shape)).to(self.dtype)

    def get_data_page(self, index, flat=True):
        page = (self.kv_buffer[:, :, index:index + P] if self.layout == "layer_first"
                else self.kv_buffer[:, index:index + P])
        return page.flatten() if flat else page

    def get_dummy_flat_data_page(self):
        return torch.zeros((2, L, P, H, D), dtype=self.dtype).flatten()

    def set_from_flat_data_page(self, index, data_page):
        if self.layout == "layer_first":
            self.kv_buffer[:, :, index:index + P] = data_page.reshape(2, L, P, H, D)
        else:
            self.kv_buffer[:, index:index + P] = data_page.reshape(2, P, L, H, D)

    def token(self, i):
        """[2, layers, heads, dim] of host slot i, whatever the layout."""
        return self.kv_buffer[:, :, i] if self.layout == "layer_first" else self.kv_buffer[:, i]


def storage_config(extra, tp_rank=0, is_mla=False, model="test/sglang-model"):
    values = dict(tp_rank=tp_rank, tp_size=2, pp_rank=0, pp_size=1, attn_cp_rank=0,
                  attn_cp_size=1, is_mla_model=is_mla, enable_storage_metrics=False,
                  is_page_first_layout=False, model_name=model, extra_config=extra)
    names = {f.name for f in dataclasses.fields(HiCacheStorageConfig)}
    return HiCacheStorageConfig(**{k: v for k, v in values.items() if k in names})


def dynamic_extra(store, **kw):
    return {"backend_name": "strata", "module_path": "strata.connectors.sglang",
            "class_name": "StrataHiCacheStorage", "interface_v1": 1, "store": store, **kw}


def make_backend(extra, pool):
    backend = StorageBackendFactory.create_backend("dynamic", storage_config(extra), pool)
    backend.register_mem_pool_host(pool)
    return backend


def page_indices(pages):
    return torch.cat([torch.arange(p * P, (p + 1) * P) for p in pages])


def page_hashes(n, salt=""):
    return [f"{salt}{i:02d}".ljust(64, "a") for i in range(n)]


def local_extra():
    return dynamic_extra("local", local_name=uuid.uuid4().hex, local_dram_bytes=16 << 20)


def test_dynamic_backend_round_trip_across_layouts_through_stratad(stratad):
    src, dst = HostPool("layer_first", seed=1), HostPool("page_first")
    writer = make_backend(dynamic_extra(stratad.addr), src)
    reader = make_backend(dynamic_extra(stratad.addr), dst)
    assert isinstance(writer, StrataHiCacheStorage)
    keys = page_hashes(3)

    assert writer.batch_set_v1(keys, page_indices([2, 5, 1])) == [True, True, True]
    assert reader.batch_exists(keys + page_hashes(1, salt="missing")) == 3
    assert reader.batch_get_v1(keys, page_indices([0, 3, 6])) == [True, True, True]

    for s, d in zip([2, 5, 1], [0, 3, 6]):
        for t in range(P):
            assert torch.equal(dst.token(d * P + t), src.token(s * P + t))
    m = stratad.metrics()
    assert m["strata:get_hits_total"] >= 3 and m["strata:lookup_hit_keys_total"] >= 3
    assert reader.get_stats().prefetch_pgs == [3]


def test_generic_get_set_and_exists():
    pool = HostPool("page_first", seed=2)
    backend = make_backend(local_extra(), pool)
    k_hit, k_miss = page_hashes(2, salt="g")
    page = pool.get_data_page(P, flat=True)

    assert backend.set(k_hit, page) is True
    assert backend.set(k_hit, page) is True  # already stored: still a success
    target = pool.get_dummy_flat_data_page()
    got = backend.get(k_hit, target)
    assert got is target and torch.equal(target, page)
    assert backend.exists(k_hit) and not backend.exists(k_miss)
    both = backend.batch_get([k_hit, k_miss], [pool.get_dummy_flat_data_page()] * 2)
    assert torch.equal(both[0], page) and both[1] is None
    assert backend.batch_set([k_miss], [pool.get_data_page(0)]) is True
    assert backend.batch_exists([k_hit, k_miss]) == 2


def test_foreign_block_reads_as_a_miss():
    pool = HostPool("layer_first", seed=3)
    backend = make_backend(local_extra(), pool)
    key = page_hashes(1, salt="f")[0]
    wrong = strata.encode_kv(np.zeros((L, 2, P, H, 4), np.float16))  # another model's page
    backend._store.put(backend.strata_key(key), wrong)

    assert backend.batch_get_v1([key], page_indices([0])) == [False]
    assert backend.get(key, pool.get_dummy_flat_data_page()) is None
    assert backend.counters()["get_errors"] == 2


def test_store_down_gives_misses_and_failed_writes_not_exceptions(stratad):
    pool = HostPool("page_first", seed=4)
    backend = make_backend(dynamic_extra(stratad.addr, deadline_ms=1000), pool)
    keys = page_hashes(2, salt="d")
    assert backend.batch_set_v1(keys, page_indices([0, 1])) == [True, True]
    stratad.kill()

    assert backend.batch_exists(keys) == 0
    assert backend.batch_get_v1(keys, page_indices([2, 3])) == [False, False]
    assert backend.batch_set_v1(page_hashes(1, salt="e"), page_indices([4])) == [False]


def test_keys_are_deterministic_and_scoped_by_model_and_rank():
    extra = local_extra()
    a = StrataHiCacheStorage(storage_config(extra, tp_rank=0))
    a2 = StrataHiCacheStorage(storage_config(extra, tp_rank=0))
    b = StrataHiCacheStorage(storage_config(extra, tp_rank=1))
    mla0 = StrataHiCacheStorage(storage_config(extra, tp_rank=0, is_mla=True))
    mla1 = StrataHiCacheStorage(storage_config(extra, tp_rank=1, is_mla=True))
    other = StrataHiCacheStorage(storage_config(extra, model="other/model"))
    k = page_hashes(1)[0]
    assert a.strata_key(k) == a2.strata_key(k) and len(a.strata_key(k)) == 16
    assert a.strata_key(k) != b.strata_key(k)
    assert mla0.strata_key(k) == mla1.strata_key(k)
    assert a.strata_key(k) != other.strata_key(k)


def test_unsupported_host_pool_is_rejected_at_registration():
    pool = HostPool("layer_first")
    pool.layout = "some_new_layout"
    backend = StrataHiCacheStorage(storage_config(local_extra()))
    with pytest.raises(ValueError, match="MHA host pools"):
        backend.register_mem_pool_host(pool)


def test_clear_removes_the_pages_this_backend_stored():
    pool = HostPool("layer_first", seed=5)
    backend = make_backend(local_extra(), pool)
    keys = page_hashes(2, salt="c")
    assert backend.batch_set_v1(keys, page_indices([0, 1])) == [True, True]
    assert backend.batch_exists(keys) == 2
    backend.clear()
    assert backend.batch_exists(keys) == 0
