"""mini_engine: a reference Llama engine in PyTorch that uses Strata for
prefix reuse, CacheBlend and ClusterKV decode (docs/engine.md)."""

from .engine import Engine, PrefillStats, Sequence
from .model import LLAMA3_8B, SMOLLM2_135M, LlamaConfig, LlamaModel, apply_rope, random_weights, rope_cos_sin
from .paged_cache import OutOfPages, PagedKVCache

__all__ = ["Engine", "PrefillStats", "Sequence", "LlamaConfig", "LlamaModel", "LLAMA3_8B",
           "SMOLLM2_135M", "apply_rope", "random_weights", "rope_cos_sin", "OutOfPages",
           "PagedKVCache"]
