"""A paged KV cache laid out like vLLM's: one tensor per layer shaped
[num_blocks, 2, block_size, kv_heads, head_dim] (K at index 0, V at 1), a free
list of pages, and per-sequence block tables.

Not thread-safe: one engine (one thread) owns a cache.
"""

import torch


class OutOfPages(RuntimeError):
    pass


class PagedKVCache:
    def __init__(self, config, num_blocks, block_size=16, dtype=torch.float16, device="cpu"):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks/block_size: must be positive")
        self.cfg = config
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_blocks, 2, block_size, config.num_kv_heads, config.head_dim)
        self.layers = [torch.zeros(shape, dtype=dtype, device=self.device)
                       for _ in range(config.num_layers)]
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def free_blocks(self):
        return len(self._free)

    def allocate(self, n):
        if n > len(self._free):
            raise OutOfPages(f"need {n} pages, {len(self._free)} free")
        return [self._free.pop() for _ in range(n)]

    def release(self, block_ids):
        self._free.extend(reversed(block_ids))

    def ensure_capacity(self, block_table, num_tokens):
        """Appends pages to `block_table` (a list, in place) until it holds
        `num_tokens` tokens."""
        need = -(-num_tokens // self.block_size) - len(block_table)
        if need > 0:
            block_table.extend(self.allocate(need))

    def slots(self, block_table, positions):
        """(page ids, offsets) long tensors for token positions of a
        sequence whose pages are `block_table`."""
        pos = torch.as_tensor(positions, dtype=torch.long, device=self.device)
        table = torch.as_tensor(block_table, dtype=torch.long, device=self.device)
        return table[pos // self.block_size], pos % self.block_size

    def write(self, layer, slots, k, v):
        blk, off = slots
        cache = self.layers[layer]
        cache[blk, 0, off] = k.to(self.dtype)
        cache[blk, 1, off] = v.to(self.dtype)

    def read(self, layer, slots):
        """K, V [n, kv_heads, head_dim] in the cache dtype."""
        blk, off = slots
        cache = self.layers[layer]
        return cache[blk, 0, off], cache[blk, 1, off]
