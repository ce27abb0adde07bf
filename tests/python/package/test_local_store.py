"""LocalStore: an in-process TieredStore over a real RocksDB SSD directory."""
import threading

import numpy as np
import pytest

import strata
import store_cases


@pytest.fixture
def store(scratch_dir):
    s = strata.LocalStore(dram_bytes=64 << 20, ssd_path=str(scratch_dir / "ssd"),
                          ssd_bytes=256 << 20)
    yield s
    s.close()


@pytest.mark.parametrize("case", store_cases.ALL_CASES, ids=lambda c: c.__name__)
def test_store_contract(store, case):
    case(store)


def test_reopen_keeps_durable_blocks_on_ssd(scratch_dir):
    keys, blocks = store_cases.make_blocks(3)
    path = str(scratch_dir / "ssd")
    with strata.LocalStore(dram_bytes=16 << 20, ssd_path=path) as s:
        assert s.batch_put(keys, blocks, durable=True) == [True] * 3
        assert s.data_plane == "local"
    assert s.closed
    with pytest.raises(strata.FailedPrecondition, match="closed"):
        s.get(keys[0])
    with strata.LocalStore(dram_bytes=16 << 20, ssd_path=path) as s:
        assert s.stats()["tiers"][1]["blocks"] == 3
        assert s.leading_hits(keys) == 3
        out = np.empty(len(blocks[0]), np.uint8)
        assert s.get_into(keys[0], out) == len(blocks[0]) and out.tobytes() == blocks[0]
        p = s.prefetch(keys[1:])  # SSD -> DRAM.
        assert p.result(timeout_s=30) == blocks[1:]
        assert s.stats()["tiers"][0]["promotions"] >= 2


def test_close_waits_for_a_pending_prefetch_and_frees_the_ssd_dir(scratch_dir):
    keys, blocks = store_cases.make_blocks(8)
    path = str(scratch_dir / "ssd")
    s = strata.LocalStore(dram_bytes=16 << 20, ssd_path=path)
    s.batch_put(keys, blocks, durable=True)
    p = s.prefetch(keys)
    s.close()  # Waits for the prefetch; its results stay readable.
    assert p.done()
    with strata.LocalStore(dram_bytes=16 << 20, ssd_path=path) as again:
        assert again.leading_hits(keys) == 8
    assert p.result() == blocks


def test_dram_only_store_evicts_instead_of_failing():
    keys, blocks = store_cases.make_blocks(64, tokens=64)  # 64 x ~32 KiB.
    with strata.LocalStore(dram_bytes=1 << 20) as s:
        assert all(s.batch_put(keys, blocks))
        st = s.stats()
        assert len(st["tiers"]) == 1 and st["tiers"][0]["evictions"] > 0
        assert s.get(keys[-1]) == blocks[-1]


def test_threads_share_one_store(store):
    # Calls release the GIL and the C++ store is thread-safe: four Python
    # threads reading and writing at once all see their own blocks.
    keys, blocks = store_cases.make_blocks(32)
    errors = []

    def worker(part):
        try:
            ks, bs = keys[part::4], blocks[part::4]
            assert store.batch_put(ks, bs) == [True] * len(ks)
            for k, b in zip(ks, bs):
                out = np.empty(len(b), np.uint8)
                assert store.get_into(k, out) == len(b) and out.tobytes() == b
        except Exception as e:  # Reported below, with the thread's part.
            errors.append((part, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.leading_hits(keys) == 32


def test_bad_options_raise_invalid_argument_naming_the_python_argument():
    with pytest.raises(strata.InvalidArgument, match="dram_bytes"):
        strata.LocalStore(dram_bytes=0)
    with pytest.raises(strata.InvalidArgument, match="eviction_policy"):
        strata.LocalStore(dram_bytes=1 << 20, dram_policy="fifo")
    with strata.LocalStore(dram_bytes=1 << 20) as s:
        keys, blocks = store_cases.make_blocks(1)
        with pytest.raises(strata.FailedPrecondition, match="durable"):
            s.put(keys[0], blocks[0], durable=True)  # No SSD tier.
        s.put(keys[0], blocks[0])
        with pytest.raises(strata.InvalidArgument, match="ttl"):
            s.pin(keys[0], 0)
