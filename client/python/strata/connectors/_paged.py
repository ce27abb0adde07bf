"""Gather/scatter between an engine's paged KV tensors and Strata chunk blocks (torch only).

A Strata KV block holds one chunk of `chunk_tokens` tokens for every layer, laid out
[num_layers, 2, tokens, kv_heads, head_dim] (docs/python.md, strata.encode_kv).

vLLM keeps one tensor per attention layer, [2, num_blocks, ...] with the per-block part either
  "NHD": [block_size, kv_heads, head_dim]   (FlashAttention and most GPU backends)
  "HND": [kv_heads, block_size, head_dim]   (the CPU backend, FlashInfer HND)
and a token at position t of a request lives in slot block_ids[t // block_size] * block_size +
t % block_size. When the attention kernel splits a KV block into smaller kernel blocks, the
tensor's block dimension is the kernel block size; the slot arithmetic is unchanged.

Threading: the functions are pure; callers make sure no two threads write the same slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch


@dataclass(frozen=True)
class PagedGeometry:
    """Shape facts about one engine's per-layer KV tensors (all layers alike)."""

    layout: str           # "NHD" or "HND"
    kernel_block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


def detect_geometry(kv: torch.Tensor, num_kv_heads: int, head_dim: int,
                    prefer: str | None = None) -> PagedGeometry:
    """Infers the layout of a [2, num_blocks, a, b, head_dim] paged KV tensor.

    `prefer` ("NHD"/"HND") decides when the shape alone cannot (kernel block size equal to the
    head count). Raises ValueError for any other shape (MLA caches are [num_blocks, bs, dim]).
    """
    if kv.dim() != 5 or kv.shape[0] != 2 or kv.shape[4] != head_dim:
        raise ValueError(f"kv cache shape {tuple(kv.shape)} is not [2, blocks, ., ., {head_dim}] "
                         "(MLA and other layouts are not supported)")
    a, b = int(kv.shape[2]), int(kv.shape[3])
    nhd = b == num_kv_heads
    hnd = a == num_kv_heads
    if nhd and hnd:
        layout = prefer or "NHD"
    elif nhd:
        layout = "NHD"
    elif hnd:
        layout = "HND"
    else:
        raise ValueError(f"kv cache shape {tuple(kv.shape)} has no dimension equal to "
                         f"num_kv_heads={num_kv_heads}")
    if layout not in ("NHD", "HND"):
        raise ValueError(f"kv_layout must be NHD or HND, got {layout!r}")
    kbs = a if layout == "NHD" else b
    return PagedGeometry(layout, kbs, num_kv_heads, head_dim, kv.dtype, kv.device)


class SlotIndex(NamedTuple):
    """Where a run of tokens lives: per token (kernel block, offset), and, when the run is
    made of whole kernel blocks, those blocks in order (then whole-block copies are used)."""

    blk: torch.Tensor
    off: torch.Tensor
    whole_blocks: Optional[torch.Tensor]


def slot_indices(block_ids: list[int], block_size: int, first_token: int, num_tokens: int,
                 geo: PagedGeometry) -> SlotIndex:
    """The slots of tokens [first_token, first_token + num_tokens).

    `block_ids` are the engine's KV block ids covering tokens from 0 of the span they index
    (block_ids[i] holds tokens [i*block_size, (i+1)*block_size) of that span).
    """
    t = torch.arange(first_token, first_token + num_tokens, dtype=torch.int64)
    blocks = torch.as_tensor(block_ids, dtype=torch.int64)
    needed = (first_token + num_tokens + block_size - 1) // block_size
    if blocks.numel() < needed:
        raise ValueError(f"block_ids: {blocks.numel()} blocks cover fewer than "
                         f"{first_token + num_tokens} tokens at block_size={block_size}")
    slots = blocks[t // block_size] * block_size + t % block_size
    kbs = geo.kernel_block_size
    blk, off = slots // kbs, slots % kbs
    whole = None
    if num_tokens % kbs == 0 and bool((off.view(-1, kbs) == torch.arange(kbs)).all()):
        whole = blk[::kbs].to(geo.device)
    return SlotIndex(blk.to(geo.device), off.to(geo.device), whole)


def gather_layer(kv: torch.Tensor, idx: SlotIndex, geo: PagedGeometry) -> torch.Tensor:
    """The [2, tokens, heads, dim] KV of the given slots of one layer (a new tensor)."""
    if idx.whole_blocks is not None:
        x = kv[:, idx.whole_blocks]                      # [2, n, kbs, H, D] or [2, n, H, kbs, D]
        if geo.layout == "HND":
            x = x.permute(0, 1, 3, 2, 4)
        return x.reshape(2, -1, geo.num_kv_heads, geo.head_dim)
    if geo.layout == "NHD":
        return kv[:, idx.blk, idx.off]                          # [2, T, H, D]
    return kv[:, idx.blk, :, idx.off].permute(1, 0, 2, 3)     # [T, 2, H, D] -> [2, T, H, D]


def scatter_layer(kv: torch.Tensor, idx: SlotIndex, src: torch.Tensor,
                  geo: PagedGeometry) -> None:
    """Writes src [2, tokens, heads, dim] into the given slots of one layer."""
    src = src.to(device=kv.device, dtype=kv.dtype)
    if idx.whole_blocks is not None:
        x = src.reshape(2, -1, geo.kernel_block_size, geo.num_kv_heads, geo.head_dim)
        kv[:, idx.whole_blocks] = x if geo.layout == "NHD" else x.permute(0, 1, 3, 2, 4)
    elif geo.layout == "NHD":
        kv[:, idx.blk, idx.off] = src
    else:
        kv[:, idx.blk, :, idx.off] = src.permute(1, 0, 2, 3)
