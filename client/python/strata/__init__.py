"""strata: the Python package of the Strata KV-cache store (docs/python.md).

Keys (KeyNamespace, chunk_keys, chain_key, segment_key, key_to_hex,
key_from_hex), blocks (encode_kv, make_block, decode_kv, block_header,
CodecProfile) and
stores (LocalStore: an in-process TieredStore; RemoteStore: a stratad) over the
C++ libraries, through the pybind11 extension strata._native.
"""
from .errors import (DataLoss, DeadlineExceeded, Error, FailedPrecondition,
                     Internal, InvalidArgument, NotFound, OutOfRange,
                     ResourceExhausted, Unavailable)
from ._native import (BLOCK_FORMAT_VERSION, BLOCK_HEADER_SIZE, ChunkKey,
                      CodecProfile, KeyNamespace, LocalStore, Prefetch,
                      RemoteStore, Store, block_header, chain_key, chunk_keys,
                      decode_kv, encode_kv, key_from_hex, key_to_hex,
                      make_block, parse_codec_spec, segment_key)

__version__ = "0.1.0"

__all__ = [
    "BLOCK_FORMAT_VERSION", "BLOCK_HEADER_SIZE", "ChunkKey", "CodecProfile",
    "DataLoss", "DeadlineExceeded", "Error", "FailedPrecondition", "Internal",
    "InvalidArgument", "KeyNamespace", "LocalStore", "NotFound", "OutOfRange",
    "Prefetch", "RemoteStore", "ResourceExhausted", "Store", "Unavailable",
    "block_header", "chain_key", "chunk_keys", "decode_kv", "encode_kv",
    "key_from_hex", "key_to_hex", "make_block", "parse_codec_spec", "segment_key",
]
