"""Owns the preallocated KV pool: one fixed-size slot (row) per live sequence.

Each slot holds up to `max_seq_len` positions of every layer's keys and values. The
scheduler keeps running sequences in rows `[0, B)`, so a decode step reads the cache as a
strided *view* `k[l, :B, :, :T]` and never gathers it; the price is a copy of one sequence's
valid prefix when a sequence changes row (admission, suspension, compaction), which happens
once per request instead of once per token and layer.

    >>> import torch
    >>> kv = KVCache(num_layers=2, num_slots=4, num_kv_heads=2, max_seq_len=16, head_dim=8,
    ...              dtype=torch.float32, device="cpu")
    >>> kv.k.shape
    torch.Size([2, 4, 2, 16, 8])
"""

from __future__ import annotations

import torch


class KVCache:
    """`k`, `v`: (L, S, Hkv, max_seq_len, D); `owner[s]` is the object holding slot s (or None)."""

    def __init__(self, num_layers: int, num_slots: int, num_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: str | torch.device) -> None:
        shape = (num_layers, num_slots, num_kv_heads, max_seq_len, head_dim)
        # zeros, not empty: masked-out positions are read by attention (weight 0) and must be finite
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, S, Hkv, Tmax, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # (L, S, Hkv, Tmax, D)
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.owner: list[object | None] = [None] * num_slots
        self.num_copies = 0

    @staticmethod
    def bytes_per_slot(num_layers: int, num_kv_heads: int, max_seq_len: int, head_dim: int,
                       dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * max_seq_len * head_dim * torch.empty((), dtype=dtype).element_size()

    @property
    def num_free(self) -> int:
        return sum(o is None for o in self.owner)

    def free_slots(self) -> list[int]:
        return [s for s, o in enumerate(self.owner) if o is None]

    def assign(self, slot: int, owner: object) -> None:
        assert self.owner[slot] is None, f"slot {slot} is taken"
        self.owner[slot] = owner

    def free(self, slot: int) -> None:
        self.owner[slot] = None

    def copy(self, src: int, dst: int, num_positions: int) -> None:
        """Copy the first `num_positions` positions of slot `src` into slot `dst` (all layers)."""
        if num_positions > 0 and src != dst:
            self.k[:, dst, :, :num_positions] = self.k[:, src, :, :num_positions]
            self.v[:, dst, :, :num_positions] = self.v[:, src, :, :num_positions]
            self.num_copies += 1

    def swap(self, a: int, b: int, num_a: int, num_b: int) -> None:
        """Exchange the contents (valid prefixes `num_a`, `num_b`) and owners of slots a and b."""
        if a == b:
            return
        for t in (self.k, self.v):
            tmp = t[:, a, :, :num_a].clone()  # (L, Hkv, num_a, D)
            if num_b:
                t[:, a, :, :num_b] = t[:, b, :, :num_b]
            t[:, b, :, :num_a] = tmp
        self.owner[a], self.owner[b] = self.owner[b], self.owner[a]
        self.num_copies += 2

    def permute(self, sources: list[int], num_positions: int) -> None:
        """Row i of `[0, len(sources))` takes the contents of slot `sources[i]` (a permutation of those rows).

        Only rows that change are copied, and only their first `num_positions` positions.
        """
        n = len(sources)
        assert sorted(sources) == list(range(n)), "permute reorders the first rows only"
        dst = [i for i, src in enumerate(sources) if src != i]
        if not dst or num_positions == 0:
            return
        dst_idx = torch.tensor(dst, device=self.k.device)  # (m,)
        src_idx = torch.tensor([sources[i] for i in dst], device=self.k.device)  # (m,)
        for t in (self.k, self.v):
            for layer in t:  # one layer at a time: the temporary is (m, Hkv, T, D), not L times that
                layer[dst_idx, :, :num_positions] = layer[src_idx, :, :num_positions]
        owners = self.owner[:n]
        self.owner[:n] = [owners[s] for s in sources]
        self.num_copies += len(dst)
