#!/usr/bin/env python3
"""Reference implementation of Strata block keys, format version 1.

An independent, deliberately plain transcription of docs/keys.md; it prints the
test vectors that docs/keys.md lists and tests/kvstore/block_key_test.cc
hard-codes. It is not used by the default build or tests. Needs the PyPI
`xxhash` package (>= 2.0, which provides xxh3_128):

    python3 -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install xxhash
    /tmp/kvenv/bin/python tools/keys_reference.py
"""
import struct

import xxhash

VERSION = 1
TAG_ROOT, TAG_CHAIN, TAG_SEGMENT = 0x4E, 0x43, 0x53  # 'N', 'C', 'S'
DTYPES = {"fp16": 1, "bf16": 2, "fp8_e4m3": 3, "fp32": 4}


def h(message: bytes) -> bytes:
    """XXH3-128, seed 0, as 16 bytes big-endian (high 64 bits first)."""
    return xxhash.xxh3_128(message, seed=0).digest()


def lp(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def root(tenant_salt, model_id, dtype, num_layers, num_kv_heads, head_dim,
         chunk_tokens, tp_rank, tp_size) -> bytes:
    msg = bytes([TAG_ROOT, VERSION]) + lp(tenant_salt.encode()) + lp(model_id.encode())
    msg += bytes([DTYPES[dtype]])
    msg += struct.pack("<6I", num_layers, num_kv_heads, head_dim, chunk_tokens,
                       tp_rank, tp_size)
    return h(msg)


def _step(tag: int, key: bytes, tokens) -> bytes:
    return h(bytes([tag, VERSION]) + key + struct.pack(f"<I{len(tokens)}I", len(tokens), *tokens))


def chain_key(prev: bytes, tokens) -> bytes:
    return _step(TAG_CHAIN, prev, tokens)


def segment_key(root_key: bytes, tokens) -> bytes:
    return _step(TAG_SEGMENT, root_key, tokens)


def chunk_keys(root_key: bytes, chunk_tokens: int, tokens, include_partial=False):
    """Returns [(key, begin_token, num_tokens, is_partial)]."""
    out, key = [], root_key
    for begin in range(0, len(tokens), chunk_tokens):
        chunk = tokens[begin:begin + chunk_tokens]
        partial = len(chunk) < chunk_tokens
        if partial and not include_partial:
            break
        key = chain_key(key, chunk)
        out.append((key, begin, len(chunk), partial))
    return out


def main():
    llama = dict(tenant_salt="", model_id="meta-llama/Meta-Llama-3-8B", dtype="bf16",
                 num_layers=32, num_kv_heads=8, head_dim=128, chunk_tokens=256,
                 tp_rank=0, tp_size=1)
    r = root(**llama)
    print("root_llama3_8b_tp0of1 =", r.hex())
    print("root_acme_tp1of2      =", root(**{**llama, "tenant_salt": "acme",
                                                "tp_rank": 1, "tp_size": 2}).hex())
    for i, (key, begin, n, partial) in enumerate(
            chunk_keys(r, 256, list(range(600)), include_partial=True)):
        print(f"chain[{i}] begin={begin} tokens={n} partial={partial} = {key.hex()}")
    print("segment([1,2,3])      =", segment_key(r, [1, 2, 3]).hex())
    print("chain(root,[1,2,3])   =", chain_key(r, [1, 2, 3]).hex())
    print("chain(zero,[])        =", chain_key(bytes(16), []).hex())


if __name__ == "__main__":
    main()
