"""strata.gpu: the Strata CUDA kernels on caller-owned device memory.

Functions (docs/python.md; contracts in kernels/*.h): quant_payload_bytes,
quant_encode, quant_decode (KIVI, byte-identical to the CPU codec),
paged_gather / paged_scatter (vLLM paged caches <-> a raw block), rope_shift
(re-rotate post-RoPE keys by a position delta), blend_select (CacheBlend
top-k), check_error_flags. Pointers are CUDA torch tensors (data_ptr()) or int
device addresses; `stream` is a torch.cuda.Stream, an int cudaStream_t or None.

Built only in a CUDA build of Strata; otherwise importing this module raises
ImportError.
"""
try:
    from ._gpu import (blend_select, check_error_flags, paged_gather,
                       paged_scatter, quant_decode, quant_encode,
                       quant_payload_bytes, rope_shift)
except ImportError as e:  # A build without CUDA has no strata._gpu.
    raise ImportError(
        "strata.gpu is not available: this strata was built without CUDA "
        f"(no strata._gpu extension: {e})") from e

__all__ = ["blend_select", "check_error_flags", "paged_gather", "paged_scatter",
           "quant_decode", "quant_encode", "quant_payload_bytes", "rope_shift"]
