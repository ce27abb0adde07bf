"""Reader and writer for Strata KV fixtures ("STKF", version 1).

The format is specified in docs/fixtures.md; codecs/kv_fixture.{h,cc} is the
C++ reader. Everything is little-endian; arrays are row-major; fp16 arrays are
IEEE binary16. The file ends with the XXH3-64 (seed 0) of every byte before it.

Needs numpy; `xxhash` is needed to write, and to verify on read (pass
verify=False to read without it).

    import stkf
    fx = stkf.read("tests/fixtures/smollm2_kv_v1.bin")
    p = fx.passages[1]
    p.keys_pre.shape     # (layers, tokens, kv_heads, head_dim), float16
    p.queries_pre.shape  # (layers, queries, q_heads, head_dim), float16
"""

import dataclasses
import struct
from typing import List

import numpy as np

MAGIC = b"STKF"
VERSION = 1
MODEL_NAME_BYTES = 32
PASSAGE_NAME_BYTES = 16
# magic, version, num_layers, num_kv_heads, num_q_heads, head_dim,
# rope_theta, rms_eps, num_passages, num_rope_check_layers, model[32].
_HEADER = struct.Struct("<4sIIIIIffII32s")
_PASSAGE = struct.Struct("<16sIII")  # name[16], tokens, queries, first query pos
assert _HEADER.size == 72 and _PASSAGE.size == 28


@dataclasses.dataclass
class Passage:
    name: str
    token_ids: np.ndarray        # uint32 [T]
    keys_pre: np.ndarray         # float16 [L][T][KVH][D]
    values: np.ndarray           # float16 [L][T][KVH][D]
    first_query_position: int
    queries_pre: np.ndarray      # float16 [L][Q][QH][D]
    keys_post_check: np.ndarray  # float16 [C][T][KVH][D]


@dataclasses.dataclass
class Fixture:
    num_layers: int
    num_kv_heads: int
    num_q_heads: int
    head_dim: int
    rope_theta: float  # float32 value
    rms_eps: float     # float32 value
    model: str
    rope_check_layers: List[int]
    passages: List[Passage]


def _pad(s: str, n: int) -> bytes:
    b = s.encode("ascii")
    if len(b) >= n:
        raise ValueError(f"{s!r} does not fit in {n - 1} bytes")
    return b + b"\0" * (n - len(b))


def _f16(a: np.ndarray, shape) -> bytes:
    a = np.ascontiguousarray(a, dtype="<f2")
    if a.shape != tuple(shape):
        raise ValueError(f"shape {a.shape} != {tuple(shape)}")
    return a.tobytes()


def serialize(fx: Fixture) -> bytes:
    import xxhash

    L, KVH, QH, D = fx.num_layers, fx.num_kv_heads, fx.num_q_heads, fx.head_dim
    out = bytearray(_HEADER.pack(
        MAGIC, VERSION, L, KVH, QH, D, fx.rope_theta, fx.rms_eps,
        len(fx.passages), len(fx.rope_check_layers),
        _pad(fx.model, MODEL_NAME_BYTES)))
    out += struct.pack(f"<{len(fx.rope_check_layers)}I", *fx.rope_check_layers)
    C = len(fx.rope_check_layers)
    for p in fx.passages:
        T = len(p.token_ids)
        Q = p.queries_pre.shape[1]
        if p.first_query_position + Q > T:
            raise ValueError("queries run past the passage")
        out += _PASSAGE.pack(_pad(p.name, PASSAGE_NAME_BYTES), T, Q,
                             p.first_query_position)
        out += np.ascontiguousarray(p.token_ids, dtype="<u4").tobytes()
        out += _f16(p.keys_pre, (L, T, KVH, D))
        out += _f16(p.values, (L, T, KVH, D))
        out += _f16(p.queries_pre, (L, Q, QH, D))
        out += _f16(p.keys_post_check, (C, T, KVH, D))
    out += struct.pack("<Q", xxhash.xxh3_64_intdigest(bytes(out)))
    return bytes(out)


def parse(data: bytes, verify: bool = True) -> Fixture:
    if len(data) < _HEADER.size + 8:
        raise ValueError("truncated header")
    (magic, version, L, KVH, QH, D, theta, eps, P, C,
     model) = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    if version != VERSION:
        raise ValueError(f"unsupported version {version}")
    if verify:
        import xxhash
        want = struct.unpack_from("<Q", data, len(data) - 8)[0]
        if xxhash.xxh3_64_intdigest(data[:-8]) != want:
            raise ValueError("checksum mismatch")
    off = _HEADER.size
    check_layers = list(struct.unpack_from(f"<{C}I", data, off))
    off += 4 * C

    def take(dtype, shape):
        nonlocal off
        n = int(np.prod(shape))
        a = np.frombuffer(data, dtype=dtype, count=n, offset=off).reshape(shape)
        off += a.nbytes
        return a

    passages = []
    for _ in range(P):
        name, T, Q, q0 = _PASSAGE.unpack_from(data, off)
        off += _PASSAGE.size
        ids = take("<u4", (T,))
        k = take("<f2", (L, T, KVH, D))
        v = take("<f2", (L, T, KVH, D))
        q = take("<f2", (L, Q, QH, D))
        kp = take("<f2", (C, T, KVH, D))
        passages.append(Passage(name.rstrip(b"\0").decode("ascii"), ids, k, v,
                                q0, q, kp))
    if off + 8 != len(data):
        raise ValueError(f"size {len(data)} != expected {off + 8}")
    return Fixture(L, KVH, QH, D, theta, eps, model.rstrip(b"\0").decode("ascii"),
                   check_layers, passages)


def read(path: str, verify: bool = True) -> Fixture:
    with open(path, "rb") as f:
        return parse(f.read(), verify)


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """RoPE as llama.cpp applies it to llama GGUF weights ("NORM" type):
    within each head_dim vector the pairs (2i, 2i+1) are rotated by the angle
    position * theta^(-2i/head_dim). x is [..., T, heads, D] (float32);
    positions is [T]. The angle, cos and sin are computed in float64 and
    rounded to float32; the rotation is in float32:
        y[2i]   = x[2i] * c - x[2i+1] * s
        y[2i+1] = x[2i] * s + x[2i+1] * c
    codecs::ApplyRope does exactly this."""
    x = np.asarray(x, dtype=np.float32)
    d = x.shape[-1]
    inv = np.power(np.float64(theta), -2.0 * np.arange(d // 2, dtype=np.float64) / d)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv[None, :]
    c = np.cos(ang).astype(np.float32)[:, None, :]  # [T, 1, D/2]
    s = np.sin(ang).astype(np.float32)[:, None, :]
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    y = np.empty_like(x)
    y[..., 0::2] = x0 * c - x1 * s
    y[..., 1::2] = x0 * s + x1 * c
    return y
