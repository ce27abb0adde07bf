"""Times StrataConnector's save and load paths on SmolLM2-135M's KV geometry (not a test).

    .venv-vllm/bin/python tests/python/connectors/bench_connector.py [--chunks 10] [--reps 5]

Per repetition: a fresh 1,280-token prompt (10 chunks of 128 tokens, 30 layers, 3 KV heads,
head_dim 64, bf16, vLLM CPU's HND layout) is saved from one set of paged tensors (save_kv_layer
per layer + wait_for_save, then the background encode + put until stored) and loaded into
another (lookup, start_load_kv, background prefetch + decode + scatter, until get_finished
reports it). Against an in-process LocalStore and a stratad on loopback. Prints medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from types import SimpleNamespace

from connector_fixtures import SKIP_REASON, Stratad, stratad_path

if SKIP_REASON:
    sys.exit(SKIP_REASON)

import torch  # noqa: E402
from strata.connectors.vllm import StrataConnector  # noqa: E402
from vllm.config import KVTransferConfig  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.v1.core.sched.output import (CachedRequestData, NewRequestData,  # noqa: E402
                                       SchedulerOutput)

LAYERS, HEADS, HEAD_DIM, BLOCK = 30, 3, 64, 128


class _Model:
    model, served_model_name, dtype = "bench", "bench", torch.bfloat16

    def get_num_layers(self, pc):
        return LAYERS

    def get_num_kv_heads(self, pc):
        return HEADS

    def get_head_size(self):
        return HEAD_DIM


def connector(role, extra):
    ktc = KVTransferConfig(kv_connector="StrataConnector", kv_role="kv_both",
                           kv_connector_module_path="strata.connectors.vllm",
                           kv_connector_extra_config=extra)
    return StrataConnector(SimpleNamespace(
        kv_transfer_config=ktc, model_config=_Model(),
        parallel_config=SimpleNamespace(tensor_parallel_size=1),
        cache_config=SimpleNamespace(block_size=BLOCK)), role, None)


def caches(num_blocks, seed):
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.self_attn.attn":
            torch.randn((2, num_blocks, HEADS, BLOCK, HEAD_DIM), generator=g).to(torch.bfloat16)
            for i in range(LAYERS)}


def step(worker, meta, kv):
    worker.bind_connector_metadata(meta)
    worker.start_load_kv(None)
    for name, t in kv.items():
        worker.wait_for_layer_load(name)
        worker.save_kv_layer(name, t, None)
    worker.wait_for_save()
    _, recving = worker.get_finished(set())
    errors = worker.get_block_ids_with_load_errors()
    worker.clear_connector_metadata()
    assert not errors, errors
    return recving or set()


def run(extra, chunks, reps):
    sched = connector(KVConnectorRole.SCHEDULER, extra)
    w_save = connector(KVConnectorRole.WORKER, extra)
    w_load = connector(KVConnectorRole.WORKER, extra)
    blocks = list(range(chunks + 1))
    kv_a, kv_b = caches(chunks + 2, 1), caches(chunks + 2, 2)
    w_save.register_kv_caches(kv_a)
    w_load.register_kv_caches(kv_b)
    save_ms, load_ms = [], []
    for r in range(reps):
        tokens = [(r * 7919 + i) % 32000 for i in range(chunks * BLOCK + 1)]
        req = SimpleNamespace(request_id=f"a{r}-{uuid.uuid4().hex[:4]}", prompt_token_ids=tokens,
                              cache_salt=None)
        while sched.get_num_new_matched_tokens(req, 0)[0] is None:
            time.sleep(0.0005)
        new = NewRequestData(req_id=req.request_id, prompt_token_ids=tokens, mm_features=[],
                             sampling_params=None, pooling_params=None, block_ids=(blocks,),
                             num_computed_tokens=0, lora_request=None)
        out = SchedulerOutput(scheduled_new_reqs=[new],
                              scheduled_cached_reqs=CachedRequestData.make_empty(),
                              num_scheduled_tokens={req.request_id: len(tokens)},
                              total_num_scheduled_tokens=len(tokens),
                              scheduled_spec_decode_tokens={}, scheduled_encoder_inputs={},
                              num_common_prefix_blocks=[], finished_req_ids=set(),
                              free_encoder_mm_hashes=[])
        meta = sched.build_connector_meta(out)
        t0 = time.perf_counter()
        step(w_save, meta, kv_a)
        assert w_save.wait_for_pending_saves(timeout_s=120)
        save_ms.append((time.perf_counter() - t0) * 1e3)
        sched.request_finished(req, blocks)

        req_b = SimpleNamespace(request_id=f"b{r}", prompt_token_ids=tokens, cache_salt=None)
        t0 = time.perf_counter()
        while (m := sched.get_num_new_matched_tokens(req_b, 0))[0] is None:
            time.sleep(0.0005)
        assert m[0] == chunks * BLOCK, m
        sched.update_state_after_alloc(
            req_b, SimpleNamespace(get_block_ids=lambda: (blocks,)), m[0])
        meta = sched.build_connector_meta(SchedulerOutput.make_empty())
        while req_b.request_id not in step(w_load, meta, kv_b):
            meta = type(meta)()
            time.sleep(0.0005)
        load_ms.append((time.perf_counter() - t0) * 1e3)
        sched.update_connector_output(SimpleNamespace(finished_recving={req_b.request_id}))
        sched.request_finished(req_b, blocks)
    for c in (sched, w_save, w_load):
        c.shutdown()
    return statistics.median(save_ms), statistics.median(load_ms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    mib = args.chunks * BLOCK * LAYERS * 2 * HEADS * HEAD_DIM * 2 / 2**20
    targets = [("LocalStore", {"store": "local", "local_name": "bench"})]
    daemon = None
    if stratad_path() is not None:
        import pathlib
        import tempfile
        daemon = Stratad(stratad_path(), pathlib.Path(tempfile.mkdtemp()) / "data")
        targets.append(("stratad", {"store": daemon.addr}))
    try:
        for name, extra in targets:
            extra = {**extra, "chunk_tokens": BLOCK, "codec": "raw"}
            save, load = run(extra, args.chunks, args.reps)
            print(f"{name}: {args.chunks} chunks x {BLOCK} tokens ({mib:.1f} MiB of KV): "
                  f"save {save:.1f} ms ({mib / save * 1e3:.0f} MiB/s), "
                  f"lookup+load {load:.1f} ms ({mib / load * 1e3:.0f} MiB/s), "
                  f"median of {args.reps}")
    finally:
        if daemon is not None:
            daemon.kill()


if __name__ == "__main__":
    main()
