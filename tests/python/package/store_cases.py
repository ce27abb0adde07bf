"""Store behaviour shared by the LocalStore and RemoteStore tests: the same
calls, the same answers (docs/python.md)."""
import numpy as np

import strata

SEED = 7


def make_blocks(n, tokens=16, seed=SEED):
    """n distinct raw fp16 blocks and their chained keys."""
    ns = strata.KeyNamespace(model_id="test/model", num_layers=2, num_kv_heads=2,
                             head_dim=64, chunk_tokens=tokens)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50000, size=n * tokens)
    keys = [c.key for c in strata.chunk_keys(ns, ids)]
    blocks = [strata.encode_kv(rng.standard_normal((2, 2, tokens, 2, 64)).astype(np.float16))
              for _ in range(n)]
    return keys, blocks


def check_put_get_and_misses(store):
    print(f"seed={SEED}")
    keys, blocks = make_blocks(3)
    assert store.put(keys[0], blocks[0]) is True
    assert store.put(keys[0], blocks[0]) is False  # First write wins.
    assert store.get(keys[0]) == blocks[0]
    assert store.get(keys[1]) is None
    assert store.batch_put(keys[1:], blocks[1:]) == [True, True]
    assert [store.get(k) for k in keys] == blocks
    assert store.exists([keys[2], bytes(16), keys[0]]) == [True, False, True]


def check_get_into_any_writable_buffer(store):
    keys, blocks = make_blocks(2)
    store.batch_put(keys, blocks)
    n = len(blocks[0])
    arr = np.zeros(n + 100, np.uint8)
    assert store.get_into(keys[0], arr) == n
    assert arr[:n].tobytes() == blocks[0] and not arr[n:].any()
    ba = bytearray(n)
    assert store.get_into(keys[1], ba) == n and bytes(ba) == blocks[1]
    big = bytearray(2 * n)
    assert store.get_into(keys[1], memoryview(big)[n:]) == n and bytes(big[n:]) == blocks[1]
    f16 = np.zeros(n // 2, np.float16)  # Any dtype: bytes are bytes.
    assert store.get_into(keys[0], f16) == n and f16.tobytes() == blocks[0]
    assert store.get_into(bytes(16), arr) is None
    outs = [np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.uint8)]
    assert store.batch_get_into([keys[0], bytes(16), keys[1]], outs) == [n, None, n]
    assert outs[0].tobytes() == blocks[0] and outs[2].tobytes() == blocks[1]
    assert not outs[1].any()


def check_get_into_errors(store):
    keys, blocks = make_blocks(1)
    store.put(keys[0], blocks[0])
    try:
        store.get_into(keys[0], bytearray(10))
        raise AssertionError("a 10-byte buffer held a block")
    except strata.OutOfRange as e:
        assert e.code == "OUT_OF_RANGE"
    for bad in (bytes(len(blocks[0])), np.zeros(len(blocks[0]), np.uint8)[::-1]):
        try:
            store.get_into(keys[0], bad)  # Read-only / not contiguous.
            raise AssertionError("accepted an unwritable buffer")
        except strata.InvalidArgument as e:
            assert "out" in str(e)


def check_leading_hits_counts_the_cached_prefix(store):
    keys, blocks = make_blocks(5)
    store.batch_put(keys[:3], blocks[:3])
    assert store.leading_hits(keys) == 3
    assert store.leading_hits(keys[3:]) == 0
    assert store.leading_hits([]) == 0


def check_prefetch_returns_blocks_and_misses(store):
    keys, blocks = make_blocks(4)
    store.batch_put(keys[:3], blocks[:3])
    p = store.prefetch(keys)
    assert p.wait(timeout_s=30) is True
    assert p.done() is True
    assert p.result() == blocks[:3] + [None]
    assert p.result() == blocks[:3] + [None]  # Stable on a second call.


def check_remove_pin_unpin_and_stats(store):
    keys, blocks = make_blocks(2)
    store.batch_put(keys, blocks)
    assert store.pin(keys[0], 60) is True
    assert store.pin(bytes(16), 60) is False
    assert store.stats()["pinned_blocks"] >= 1
    assert store.unpin(keys[0]) is True
    assert store.remove(keys[1]) is True
    assert store.remove(keys[1]) is False
    assert store.get(keys[1]) is None
    s = store.stats()
    assert s["puts"] >= 2 and s["removes"] >= 1
    assert s["tiers"][0]["tier"] == "dram" and s["tiers"][0]["blocks"] >= 1


def check_bad_key_length_raises_invalid_argument(store):
    _, blocks = make_blocks(1)
    try:
        store.put(b"\x01" * 15, blocks[0])
        raise AssertionError("a 15-byte key was accepted")
    except strata.InvalidArgument as e:
        assert "key" in str(e)


def check_corrupted_put_raises_data_loss(store):
    keys, blocks = make_blocks(1)
    bad = bytearray(blocks[0])
    bad[-1] ^= 1
    try:
        store.put(keys[0], bad)
        raise AssertionError("a corrupted block was stored")
    except strata.DataLoss as e:
        assert "checksum" in str(e)
    assert store.get(keys[0]) is None


ALL_CASES = [check_put_get_and_misses, check_get_into_any_writable_buffer,
             check_get_into_errors, check_leading_hits_counts_the_cached_prefix,
             check_prefetch_returns_blocks_and_misses,
             check_remove_pin_unpin_and_stats,
             check_bad_key_length_raises_invalid_argument,
             check_corrupted_put_raises_data_loss]
