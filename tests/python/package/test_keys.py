"""strata keys equal the C++ keys: the shared vectors of docs/keys.md section 9
(also hard-coded in tests/kvstore/block_key_test.cc and printed by
tools/keys_reference.py)."""
import numpy as np
import pytest

import strata

LLAMA = dict(model_id="meta-llama/Meta-Llama-3-8B", tenant_salt="", dtype="bf16",
             num_layers=32, num_kv_heads=8, head_dim=128, chunk_tokens=256,
             tp_rank=0, tp_size=1)

ROOT_L = "6993158acbe901c89c08049bb199baa8"
ROOT_A = "7f1aad6ca5898a2a3a32201522fcdb94"
CHAIN_L_600 = [("c481d715dc2237c1d6c882253782d49d", 0, 256, False),
               ("0359d3868a25f0dc9b8f54694c899966", 256, 256, False),
               ("dd3d3350ea875ca013b6477bb30900ca", 512, 88, True)]
SEGMENT_123 = "7cb753286cdd198554e3ca271fb0c780"
CHAIN_ROOT_123 = "1790bb509cdc2ab1be4a8155605e5512"
CHAIN_ZERO_EMPTY = "7f84c36c08ab627d4d52e35f5425dc8b"


def test_roots_match_reference_vectors():
    assert strata.KeyNamespace(**LLAMA).root().hex() == ROOT_L
    acme = strata.KeyNamespace(**{**LLAMA, "tenant_salt": "acme", "tp_rank": 1, "tp_size": 2})
    assert acme.root().hex() == ROOT_A
    assert len(acme.root()) == 16


def test_chunk_keys_match_reference_vectors_for_lists_and_arrays():
    ns = strata.KeyNamespace(**LLAMA)
    for tokens in (list(range(600)), np.arange(600, dtype=np.int64),
                   np.arange(600, dtype=np.uint32), range(600)):
        got = [(c.key.hex(), c.begin_token, c.num_tokens, c.is_partial)
               for c in strata.chunk_keys(ns, tokens, include_partial=True)]
        assert got == CHAIN_L_600
        dropped = strata.chunk_keys(ns, tokens)
        assert [c.key.hex() for c in dropped] == [v[0] for v in CHAIN_L_600[:2]]


def test_chain_and_segment_keys_match_reference_vectors():
    root = strata.KeyNamespace(**LLAMA).root()
    assert strata.segment_key(root, [1, 2, 3]).hex() == SEGMENT_123
    assert strata.chain_key(root, [1, 2, 3]).hex() == CHAIN_ROOT_123
    assert strata.chain_key(bytes(16), []).hex() == CHAIN_ZERO_EMPTY
    # A chain is ChainKey applied chunk by chunk.
    k = root
    for begin in (0, 256):
        k = strata.chain_key(k, list(range(begin, begin + 256)))
    assert k.hex() == CHAIN_L_600[1][0]


def test_hex_helpers_round_trip_and_key_arguments_accept_hex():
    k = strata.key_from_hex(ROOT_L.upper())
    assert strata.key_to_hex(k) == ROOT_L
    assert strata.chain_key(ROOT_L, [1, 2, 3]).hex() == CHAIN_ROOT_123
    assert strata.key_to_hex(bytearray(k)) == ROOT_L


def test_bad_key_length_raises_invalid_argument_naming_the_field():
    with pytest.raises(strata.InvalidArgument) as e:
        strata.chain_key(b"short", [1])
    assert e.value.code == "INVALID_ARGUMENT"
    assert "previous_key" in str(e.value)
    with pytest.raises(strata.InvalidArgument, match="key"):
        strata.key_to_hex(b"\x00" * 15)
    with pytest.raises(strata.InvalidArgument, match="key"):
        strata.key_from_hex("zz" * 16)


def test_bad_namespace_and_tokens_raise_invalid_argument():
    with pytest.raises(strata.InvalidArgument, match="model_id"):
        strata.KeyNamespace(**{**LLAMA, "model_id": ""})
    with pytest.raises(strata.InvalidArgument, match="tp_rank"):
        strata.KeyNamespace(**{**LLAMA, "tp_rank": 2, "tp_size": 2})
    with pytest.raises(strata.InvalidArgument, match="dtype"):
        strata.KeyNamespace(**{**LLAMA, "dtype": "int4"})
    ns = strata.KeyNamespace(**LLAMA)
    with pytest.raises(strata.InvalidArgument, match="tokens"):
        strata.chunk_keys(ns, [1, -2, 3])
    with pytest.raises(strata.InvalidArgument, match="tokens"):
        strata.chunk_keys(ns, np.array([1.5, 2.0]))
    with pytest.raises(strata.InvalidArgument, match="tokens"):
        strata.chunk_keys(ns, [1 << 32])


def test_namespace_equality_and_dtype_names():
    a = strata.KeyNamespace(**LLAMA)
    b = strata.KeyNamespace(**{**LLAMA, "dtype": "bfloat16"})
    assert a == b and hash(a) == hash(b) and a.dtype == "bfloat16"
    assert a != strata.KeyNamespace(**{**LLAMA, "dtype": "float16"})
    assert strata.KeyNamespace(**{**LLAMA, "dtype": "torch.float16"}).dtype == "float16"
