"""StrataConnector (strata.connectors.vllm) against real Strata stores.

The connector runs its real scheduler-side and worker-side code; vLLM's part is played by the
test: it builds real vLLM SchedulerOutput objects, holds fake vLLM-shaped paged KV tensors
(random bf16, kernel blocks smaller than vLLM blocks) and calls the worker hooks in the order
vLLM's model runner does (bind metadata, start_load_kv, per layer wait_for_layer_load +
save_kv_layer, wait_for_save, get_finished, get_block_ids_with_load_errors).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from connector_fixtures import SKIP_REASON

if SKIP_REASON:
    pytest.skip(SKIP_REASON, allow_module_level=True)
torch = pytest.importorskip("torch", reason="torch is not installed (tools/vllm_demo.sh --test)")
pytest.importorskip("vllm", reason="vllm is not installed (tools/vllm_demo.sh --test)")

import strata  # noqa: E402
from strata.connectors import _paged  # noqa: E402
from strata.connectors.vllm import StrataConnector, StrataConnectorMetadata  # noqa: E402
from vllm.config import KVTransferConfig  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.v1.core.sched.output import (CachedRequestData, NewRequestData,  # noqa: E402
                                       SchedulerOutput)
from vllm.v1.outputs import KVConnectorOutput  # noqa: E402

LAYERS, HEADS, HEAD_DIM = 3, 2, 8
BLOCK, KERNEL_BLOCK, NUM_BLOCKS = 16, 8, 16
CHUNK = 32
PROMPT = 100  # -> (100 - 1) // 32 = 3 loadable chunks = 96 tokens


class _ModelConfig:
    model = "test/connector-model"
    dtype = torch.bfloat16

    def get_num_layers(self, parallel_config):
        return LAYERS

    def get_num_kv_heads(self, parallel_config):
        return HEADS

    def get_head_size(self):
        return HEAD_DIM


def make_connector(role, extra):
    ktc = KVTransferConfig(kv_connector="StrataConnector",
                           kv_connector_module_path="strata.connectors.vllm",
                           kv_role="kv_both", kv_connector_extra_config=extra)
    cfg = SimpleNamespace(kv_transfer_config=ktc, model_config=_ModelConfig(),
                          parallel_config=SimpleNamespace(tensor_parallel_size=1),
                          cache_config=SimpleNamespace(block_size=BLOCK))
    return StrataConnector(cfg, role, None)


def make_caches(layout: str, seed: int | None):
    """vLLM-shaped per-layer KV tensors; random when seeded, zeros otherwise."""
    shape = ((2, NUM_BLOCKS * BLOCK // KERNEL_BLOCK, KERNEL_BLOCK, HEADS, HEAD_DIM)
             if layout == "NHD" else
             (2, NUM_BLOCKS * BLOCK // KERNEL_BLOCK, HEADS, KERNEL_BLOCK, HEAD_DIM))
    g = torch.Generator().manual_seed(seed or 0)
    return {f"model.layers.{i}.self_attn.attn":
            (torch.randn(shape, generator=g) if seed is not None else torch.zeros(shape))
            .to(torch.bfloat16) for i in range(LAYERS)}


def tokens_at(caches, block_ids, n):
    """[layers, 2, n, heads, dim] of a request's first n tokens, read slot by slot."""
    out = []
    for name in sorted(caches, key=lambda s: int(s.split(".")[2])):
        kv = caches[name]
        rows = []
        for t in range(n):
            slot = block_ids[t // BLOCK] * BLOCK + t % BLOCK
            kb, ko = divmod(slot, KERNEL_BLOCK)
            rows.append(kv[:, kb, ko] if kv.shape[2] == KERNEL_BLOCK else kv[:, kb, :, ko])
        out.append(torch.stack(rows, dim=1))
    return torch.stack(out)


@dataclass
class _Request:
    request_id: str
    prompt_token_ids: list[int]
    cache_salt: str | None = None


class _Blocks:
    def __init__(self, ids):
        self.ids = ids

    def get_block_ids(self):
        return (list(self.ids),)


def sched_output(req, block_ids, num_tokens, finished=()):
    new = NewRequestData(req_id=req.request_id, prompt_token_ids=req.prompt_token_ids,
                         mm_features=[], sampling_params=None, pooling_params=None,
                         block_ids=(list(block_ids),), num_computed_tokens=0, lora_request=None)
    return SchedulerOutput(scheduled_new_reqs=[new] if req else [],
                           scheduled_cached_reqs=CachedRequestData.make_empty(),
                           num_scheduled_tokens={req.request_id: num_tokens},
                           total_num_scheduled_tokens=num_tokens,
                           scheduled_spec_decode_tokens={}, scheduled_encoder_inputs={},
                           num_common_prefix_blocks=[], finished_req_ids=set(finished),
                           free_encoder_mm_hashes=[])


def empty_output(finished=()):
    out = SchedulerOutput.make_empty()
    out.finished_req_ids = set(finished)
    return out


def worker_step(worker, meta, caches, finished=()):
    """One model-runner step: the hooks in vLLM's order. Returns (sending, recving, errors)."""
    worker.bind_connector_metadata(meta)
    worker.start_load_kv(None)
    for name in caches:
        worker.wait_for_layer_load(name)
        worker.save_kv_layer(name, caches[name], None)
    worker.wait_for_save()
    sending, recving = worker.get_finished(set(finished))
    errors = worker.get_block_ids_with_load_errors()
    worker.clear_connector_metadata()
    return sending or set(), recving or set(), errors


def matched_tokens(sched, req, computed=0, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        n, is_async = sched.get_num_new_matched_tokens(req, computed)
        if n is not None:
            return n, is_async
        assert time.monotonic() < deadline, "lookup never completed"
        time.sleep(0.001)


def store_prefix(sched, worker, caches, tokens, block_ids):
    """Request A computes its prompt: the connector saves its full chunks."""
    a = _Request(f"A-{uuid.uuid4().hex[:6]}", tokens)
    assert matched_tokens(sched, a) == (0, False)
    sched.update_state_after_alloc(a, _Blocks(block_ids), 0)
    meta = sched.build_connector_meta(sched_output(a, block_ids, len(tokens)))
    assert [s.chunk_index for s in meta.saves] == [0, 1, 2]
    worker_step(worker, meta, caches)
    assert worker.wait_for_pending_saves(timeout_s=30)
    sched.request_finished(a, block_ids)
    return a


def plan_load(sched, tokens, block_ids):
    """Request B shares A's prompt: lookup, allocation, and the step that ships the load."""
    b = _Request(f"B-{uuid.uuid4().hex[:6]}", tokens)
    n, is_async = matched_tokens(sched, b)
    assert (n, is_async) == (3 * CHUNK, True)
    sched.update_state_after_alloc(b, _Blocks(block_ids), n)
    meta = sched.build_connector_meta(empty_output())
    assert isinstance(meta, StrataConnectorMetadata) and len(meta.loads) == 1
    return b, meta


def run_until_received(worker, meta, caches, req_id, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    sending, recving, errors = worker_step(worker, meta, caches)
    all_errors = set(errors)
    while req_id not in recving:
        assert time.monotonic() < deadline, "the load never finished"
        time.sleep(0.002)
        sending, recving, errors = worker_step(worker, StrataConnectorMetadata(), caches)
        all_errors |= errors
    return all_errors


def local_extra(**kw):
    return {"store": "local", "local_name": uuid.uuid4().hex, "local_dram_bytes": 64 << 20,
            "chunk_tokens": CHUNK, **kw}


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("first,count,whole", [(5, 40, False), (16, 48, True)])
def test_paged_gather_scatter_match_slot_by_slot_reads(layout, first, count, whole):
    src = make_caches(layout, seed=1)
    name = next(iter(src))
    geo = _paged.detect_geometry(src[name], HEADS, HEAD_DIM, prefer=layout)
    assert (geo.layout, geo.kernel_block_size) == (layout, KERNEL_BLOCK)
    blocks = [7, 3, 12, 0]
    idx = _paged.slot_indices(blocks, BLOCK, first, count, geo)
    assert (idx.whole_blocks is not None) == whole
    got = _paged.gather_layer(src[name], idx, geo)
    want = tokens_at({name: src[name]}, blocks, first + count)[0][:, first:]
    assert torch.equal(got, want)
    dst = make_caches(layout, seed=None)
    _paged.scatter_layer(dst[name], idx, got, geo)
    assert torch.equal(tokens_at({name: dst[name]}, blocks, first + count)[0][:, first:], want)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_saved_prefix_loads_into_other_blocks_bit_exact_through_stratad(stratad, layout):
    extra = {"store": stratad.addr, "chunk_tokens": CHUNK, "kv_layout": layout,
             "deadline_ms": 5000}
    sched = make_connector(KVConnectorRole.SCHEDULER, extra)
    worker_a = make_connector(KVConnectorRole.WORKER, extra)
    worker_b = make_connector(KVConnectorRole.WORKER, extra)
    caches_a, caches_b = make_caches(layout, seed=7), make_caches(layout, seed=None)
    worker_a.register_kv_caches(caches_a)
    worker_b.register_kv_caches(caches_b)
    tokens = [random.Random(3).randrange(32000) for _ in range(PROMPT)]
    blocks_a, blocks_b = [5, 9, 2, 11, 3, 7, 1], [14, 0, 8, 6, 13, 4, 10]

    store_prefix(sched, worker_a, caches_a, tokens, blocks_a)
    assert worker_a.counters()["saved_chunks"] == 3
    b, meta = plan_load(sched, tokens, blocks_b)
    errors = run_until_received(worker_b, meta, caches_b, b.request_id)
    sched.update_connector_output(KVConnectorOutput(finished_recving={b.request_id}))

    assert errors == set()
    assert torch.equal(tokens_at(caches_b, blocks_b, 96), tokens_at(caches_a, blocks_a, 96))
    assert worker_b.counters()["loaded_tokens"] == 96
    assert sched.counters()["lookup_hit_tokens"] == 96
    m = stratad.metrics()
    assert m["strata:get_hits_total"] >= 3 and m["strata:lookup_hit_keys_total"] >= 3
    assert sched.request_finished(b, blocks_b) == (False, None)
    for c in (sched, worker_a, worker_b):
        c.shutdown()


def test_store_killed_after_lookup_reports_failed_blocks_instead_of_raising(stratad):
    extra = {"store": stratad.addr, "chunk_tokens": CHUNK, "deadline_ms": 1000}
    sched = make_connector(KVConnectorRole.SCHEDULER, extra)
    worker = make_connector(KVConnectorRole.WORKER, extra)
    caches = make_caches("HND", seed=2)
    worker.register_kv_caches(caches)
    tokens = list(range(1000, 1000 + PROMPT))
    store_prefix(sched, worker, caches, tokens, [0, 1, 2, 3, 4, 5, 6])
    blocks_b = [9, 10, 11, 12, 13, 14, 15]
    b, meta = plan_load(sched, tokens, blocks_b)
    stratad.kill()

    errors = run_until_received(worker, meta, caches, b.request_id)

    assert errors == set(blocks_b[:6])  # every block the 3 chunks were to fill
    assert worker.counters()["load_failed_blocks"] == 6
    # A lookup against the dead store is a miss, not an exception.
    c = _Request("C", tokens)
    assert matched_tokens(sched, c) == (0, False)
    assert sched.counters()["lookup_errors"] == 1
    for conn in (sched, worker):
        conn.shutdown()


def test_foreign_block_in_the_middle_loads_the_prefix_and_reports_the_rest():
    extra = local_extra()
    sched = make_connector(KVConnectorRole.SCHEDULER, extra)
    worker = make_connector(KVConnectorRole.WORKER, extra)
    caches = make_caches("HND", seed=4)
    worker.register_kv_caches(caches)
    tokens = list(range(50, 50 + PROMPT))
    blocks_a = [0, 1, 2, 3, 4, 5, 6]
    store_prefix(sched, worker, caches, tokens, blocks_a)
    # Chunk 1's block is replaced by a valid block of another shape (a different model).
    ns = sched._namespace("", 0)
    key1 = strata.chunk_keys(ns, tokens[:2 * CHUNK])[1].key
    store = sched._store
    store.remove(key1)
    import numpy as np
    store.put(key1, strata.encode_kv(np.zeros((LAYERS, 2, CHUNK, HEADS, 4), np.float16)))
    blocks_b = [8, 9, 10, 11, 12, 13, 14]
    b, meta = plan_load(sched, tokens, blocks_b)

    errors = run_until_received(worker, meta, caches, b.request_id)

    assert errors == set(blocks_b[2:6])  # chunks 1 and 2
    assert torch.equal(tokens_at(caches, blocks_b, CHUNK), tokens_at(caches, blocks_a, CHUNK))
    assert worker.counters()["loaded_tokens"] == CHUNK


def test_request_aborted_while_loading_keeps_blocks_until_the_worker_is_done():
    extra = local_extra()
    sched = make_connector(KVConnectorRole.SCHEDULER, extra)
    worker = make_connector(KVConnectorRole.WORKER, extra)
    caches = make_caches("NHD", seed=5)
    worker.register_kv_caches(caches)
    tokens = list(range(7, 7 + PROMPT))
    store_prefix(sched, worker, caches, tokens, [0, 1, 2, 3, 4, 5, 6])
    blocks_b = [8, 9, 10, 11, 12, 13, 14]
    b, load_meta = plan_load(sched, tokens, blocks_b)

    assert sched.request_finished(b, blocks_b) == (True, None)  # delay the free
    free_meta = sched.build_connector_meta(empty_output(finished=[b.request_id]))
    assert free_meta.free_after_load == [b.request_id]

    run_until_received(worker, load_meta, caches, b.request_id)
    sending, _, _ = worker_step(worker, free_meta, caches, finished=[b.request_id])
    assert sending == {b.request_id}


def test_chunks_already_in_strata_are_not_saved_again():
    extra = local_extra()
    sched = make_connector(KVConnectorRole.SCHEDULER, extra)
    worker = make_connector(KVConnectorRole.WORKER, extra)
    caches = make_caches("HND", seed=6)
    worker.register_kv_caches(caches)
    tokens = list(range(300, 300 + 4 * CHUNK + 5))  # 4 full chunks + 5 tokens
    store_prefix(sched, worker, caches, tokens[:PROMPT], [0, 1, 2, 3, 4, 5, 6])
    b = _Request("B-long", tokens)
    n, _ = matched_tokens(sched, b)
    assert n == 3 * CHUNK
    blocks = [8, 9, 10, 11, 12, 13, 14, 15, 7]
    sched.update_state_after_alloc(b, _Blocks(blocks), n)
    sched.build_connector_meta(empty_output())
    # The request is scheduled after its load: only chunk 3 is new.
    out = sched_output(b, blocks, len(tokens) - n)
    out.scheduled_new_reqs[0].num_computed_tokens = n
    meta = sched.build_connector_meta(out)
    assert [s.chunk_index for s in meta.saves] == [3]


def test_counters_reach_vllm_stats_and_prometheus():
    from functools import partial

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    extra = local_extra()
    sched = make_connector(KVConnectorRole.SCHEDULER, extra)
    worker = make_connector(KVConnectorRole.WORKER, extra)
    caches = make_caches("HND", seed=8)
    worker.register_kv_caches(caches)
    tokens = list(range(900, 900 + PROMPT))
    store_prefix(sched, worker, caches, tokens, [0, 1, 2, 3, 4, 5, 6])
    b, meta = plan_load(sched, tokens, [8, 9, 10, 11, 12, 13, 14])
    run_until_received(worker, meta, caches, b.request_id)

    stats = worker.get_kv_connector_stats().aggregate(sched.get_kv_connector_stats())
    assert stats.data["loaded_tokens"] == 96 and stats.data["lookup_hit_tokens"] == 96
    assert worker.get_kv_connector_stats() is None  # deltas: nothing new since
    reg = CollectorRegistry()
    types = {Counter: partial(Counter, registry=reg), Gauge: partial(Gauge, registry=reg),
             Histogram: partial(Histogram, registry=reg)}
    prom = StrataConnector.build_prom_metrics(
        SimpleNamespace(kv_transfer_config=None), types, ["engine"], {0: ["0"]})
    prom.observe(StrataConnector.build_kv_connector_stats(stats.data).data, 0)
    assert reg.get_sample_value("vllm:strata_loaded_tokens_total", {"engine": "0"}) == 96
    assert reg.get_sample_value("vllm:strata_saved_chunks_total", {"engine": "0"}) == 3


def test_synchronous_load_completes_within_the_step_that_needs_it():
    extra = local_extra(async_load=False)
    sched = make_connector(KVConnectorRole.SCHEDULER, extra)
    worker = make_connector(KVConnectorRole.WORKER, extra)
    caches = make_caches("NHD", seed=9)
    worker.register_kv_caches(caches)
    tokens = list(range(4000, 4000 + PROMPT))
    blocks_a, blocks_b = [0, 1, 2, 3, 4, 5, 6], [8, 9, 10, 11, 12, 13, 14]
    store_prefix(sched, worker, caches, tokens, blocks_a)
    b = _Request("B-sync", tokens)
    n, is_async = matched_tokens(sched, b)
    assert (n, is_async) == (96, False)
    sched.update_state_after_alloc(b, _Blocks(blocks_b), n)
    out = sched_output(b, blocks_b, PROMPT - n)
    out.scheduled_new_reqs[0].num_computed_tokens = n
    meta = sched.build_connector_meta(out)
    assert len(meta.loads) == 1 and not meta.loads[0].is_async and meta.saves == []

    sending, recving, errors = worker_step(worker, meta, caches)

    assert (sending, recving, errors) == (set(), set(), set())
    assert torch.equal(tokens_at(caches, blocks_b, 96), tokens_at(caches, blocks_a, 96))


def test_load_after_local_prefix_hit_writes_only_the_tokens_vllm_lacks():
    extra = local_extra()
    sched = make_connector(KVConnectorRole.SCHEDULER, extra)
    worker = make_connector(KVConnectorRole.WORKER, extra)
    caches = make_caches("HND", seed=10)
    worker.register_kv_caches(caches)
    tokens = list(range(6000, 6000 + PROMPT))
    blocks_a, blocks_b = [0, 1, 2, 3, 4, 5, 6], [8, 9, 10, 11, 12, 13, 14]
    store_prefix(sched, worker, caches, tokens, blocks_a)
    local_block_before = tokens_at(caches, blocks_b, BLOCK).clone()
    b = _Request("B-local", tokens)
    n, is_async = matched_tokens(sched, b, computed=BLOCK)  # vLLM's cache holds block 0
    assert (n, is_async) == (96 - BLOCK, True)
    sched.update_state_after_alloc(b, _Blocks(blocks_b), n)
    meta = sched.build_connector_meta(empty_output())
    assert meta.loads[0].chunks[0].skip_tokens == BLOCK

    errors = run_until_received(worker, meta, caches, b.request_id)

    assert errors == set()
    assert torch.equal(tokens_at(caches, blocks_b, BLOCK), local_block_before)
    assert torch.equal(tokens_at(caches, blocks_b, 96)[:, :, BLOCK:],
                       tokens_at(caches, blocks_a, 96)[:, :, BLOCK:])
    assert worker.counters()["loaded_tokens"] == 96 - BLOCK


def test_failed_synchronous_load_saves_nothing_that_step_and_resaves_after_recompute():
    extra = local_extra(async_load=False)
    sched = make_connector(KVConnectorRole.SCHEDULER, extra)
    worker = make_connector(KVConnectorRole.WORKER, extra)
    caches = make_caches("HND", seed=11)
    worker.register_kv_caches(caches)
    tokens = list(range(7000, 7000 + 4 * CHUNK + 5))  # 4 full chunks + 5 tokens
    store_prefix(sched, worker, caches, tokens[:PROMPT], [0, 1, 2, 3, 4, 5, 6])
    ns = sched._namespace("", 0)
    keys = [c.key for c in strata.chunk_keys(ns, tokens[:4 * CHUNK])]
    import numpy as np
    sched._store.remove(keys[1])
    sched._store.put(keys[1], strata.encode_kv(np.zeros((LAYERS, 2, CHUNK, HEADS, 4), np.float16)))
    b = _Request("B-sync-fail", tokens)
    n, _ = matched_tokens(sched, b)
    blocks_b = [7, 8, 9, 10, 11, 12, 13, 14, 15]
    sched.update_state_after_alloc(b, _Blocks(blocks_b), n)
    out = sched_output(b, blocks_b, len(tokens) - n)
    out.scheduled_new_reqs[0].num_computed_tokens = n
    meta = sched.build_connector_meta(out)
    assert [s.chunk_index for s in meta.saves] == [3]

    _, _, errors = worker_step(worker, meta, caches)
    assert worker.wait_for_pending_saves(timeout_s=30)

    assert errors == set(blocks_b[2:6])
    assert sched._store.exists([keys[3]]) == [False]  # computed over a bad prefix: not saved
    sched.update_connector_output(KVConnectorOutput(invalid_block_ids=errors))
    # vLLM truncates to the first failed block (token 32) and recomputes from there.
    cached = CachedRequestData(req_ids=[b.request_id], resumed_req_ids=set(),
                               new_token_ids=[[]], all_token_ids={}, new_block_ids=[None],
                               num_computed_tokens=[2 * BLOCK], num_output_tokens=[0])
    again = SchedulerOutput.make_empty()
    again.scheduled_cached_reqs = cached
    again.num_scheduled_tokens = {b.request_id: len(tokens) - 2 * BLOCK}
    assert [s.chunk_index for s in sched.build_connector_meta(again).saves] == [1, 2, 3]
