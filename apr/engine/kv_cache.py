"""Owns the KV pool: a fixed memory budget laid out as slots (rows) of one adaptive length.

The pool is `num_positions` positions of every layer's keys and values, allocated once (the
budget, see `kv_budget`). It is *viewed* as `num_slots` rows of `row_len` positions each, with
`num_slots = num_positions // row_len` (at most `max_slots`). `row_len` follows the longest live
sequence (a power of two times 64, at most `max_seq_len`), so short threads do not each cost a
full window: with a 3,072-token window and threads of ~300 tokens, rows are 512 long and the
same memory holds 6x more of them. `resize` re-lays the live rows when `row_len` changes.

The scheduler keeps running sequences in rows `[0, B)`, so a decode step reads the cache as a
strided *view* `k[l, :B, :, :T]` and never gathers it (a paged gather costs ~5x the attention on
CPU); the price is a copy of one sequence's valid prefix when it changes row (admission,
suspension, compaction), once per request instead of once per token and layer.

    >>> import torch
    >>> kv = KVCache(num_layers=2, num_kv_heads=2, head_dim=8, dtype=torch.float32, device="cpu",
    ...              num_positions=256, max_seq_len=128)
    >>> kv.k.shape, kv.num_slots
    (torch.Size([2, 4, 2, 64, 8]), 4)
    >>> kv.resize(128, [0] * 4); kv.k.shape
    torch.Size([2, 2, 2, 128, 8])
"""

from __future__ import annotations

import torch

MIN_ROW_LEN = 64  # shortest row: below this, re-laying rows costs more than the positions saved


class KVCache:
    """`k`, `v`: (L, S, Hkv, row_len, D) views of the pool; `owner[s]` is the object holding slot s (or None)."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str | torch.device, num_positions: int, max_seq_len: int,
                 max_slots: int | None = None) -> None:
        assert num_positions >= max_seq_len, "the pool must hold one sequence at max_seq_len"
        self.num_positions = num_positions
        self.max_seq_len = max_seq_len
        self.max_slots = max_slots
        self._position_size = num_kv_heads * head_dim  # elements per position per layer
        self._shape = (num_kv_heads, head_dim)
        # zeros, not empty: masked-out positions are read by attention (weight 0) and must be finite;
        # re-laying rows only moves these values around, so every element stays finite
        self._k_flat = torch.zeros(num_layers, num_positions * self._position_size, dtype=dtype,
                                   device=device)  # (L, P * Hkv * D)
        self._v_flat = torch.zeros_like(self._k_flat)  # (L, P * Hkv * D)
        self.row_len = 0
        self.num_slots = 0
        self.owner: list[object | None] = []
        self.num_live = 0  # slots with an owner
        self.num_copies = 0
        self.num_resizes = 0
        self._set_layout(self.row_len_for(1))
        self.owner = [None] * self.num_slots

    @staticmethod
    def bytes_per_position(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """Keys + values of one position in every layer."""
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    @property
    def nbytes(self) -> int:
        return self._k_flat.nbytes + self._v_flat.nbytes

    # ---- layout ------------------------------------------------------------------------------

    def row_len_for(self, num_tokens: int) -> int:
        """The row length that holds `num_tokens` positions: 64 x a power of two, at most max_seq_len."""
        row_len = MIN_ROW_LEN
        while row_len < num_tokens:
            row_len *= 2
        return min(row_len, self.max_seq_len)

    def slots_at(self, row_len: int) -> int:
        """How many rows the pool holds at `row_len` positions each."""
        num = self.num_positions // row_len
        return num if self.max_slots is None else min(num, self.max_slots)

    def _set_layout(self, row_len: int) -> None:
        self.row_len, self.num_slots = row_len, self.slots_at(row_len)
        n = self.num_slots * row_len * self._position_size
        with torch.inference_mode(False):  # plain views, writable inside and outside inference mode
            shape = (self._k_flat.shape[0], self.num_slots, self._shape[0], row_len, self._shape[1])
            self.k = self._k_flat[:, :n].view(shape)  # (L, S, Hkv, row_len, D)
            self.v = self._v_flat[:, :n].view(shape)  # (L, S, Hkv, row_len, D)

    def resize(self, row_len: int, lengths: list[int]) -> None:
        """Re-lay the pool as rows of `row_len`; `lengths[s]` = valid positions of live slot s.

        Live slots below the new slot count keep their index (so running rows stay `[0, B)`);
        the others move to the highest free indices. The caller makes room first (at most
        `slots_at(row_len)` live slots, each at most `row_len` long) and re-reads `owner`.
        """
        if row_len == self.row_len:
            return
        num_new = self.slots_at(row_len)
        live = [s for s, o in enumerate(self.owner) if o is not None]
        assert len(live) <= num_new and all(lengths[s] <= row_len for s in live), "no room to re-lay the pool"
        owner = [self.owner[s] if s < len(self.owner) else None for s in range(num_new)]
        free = [s for s in range(num_new - 1, -1, -1) if owner[s] is None]
        moves = [(s, s) for s in live if s < num_new] + [(s, free.pop(0)) for s in live if s >= num_new]
        for src, dst in moves:
            owner[dst] = self.owner[src]
        length = max((lengths[s] for s in live), default=0)
        old_k, old_v = self.k, self.v
        self._set_layout(row_len)
        if moves and length:
            device = self._k_flat.device
            src_idx = torch.tensor([m[0] for m in moves], device=device)  # (m,)
            dst_idx = torch.tensor([m[1] for m in moves], device=device)  # (m,)
            for old, new in ((old_k, self.k), (old_v, self.v)):
                for layer in range(old.shape[0]):  # old and new rows overlap in memory: copy out first
                    tmp = old[layer, src_idx, :, :length].clone()  # (m, Hkv, length, D)
                    new[layer, dst_idx, :, :length] = tmp
        self.owner = owner
        self.num_resizes += 1

    # ---- slots -------------------------------------------------------------------------------

    # short rows can mean tens of thousands of slots: counts are kept, not recounted per call

    @property
    def num_free(self) -> int:
        return self.num_slots - self.num_live

    def highest_free_slot(self) -> int:
        """The free slot least likely to be wanted by the batch rows next (scans from the top)."""
        return next(s for s in range(self.num_slots - 1, -1, -1) if self.owner[s] is None)

    def assign(self, slot: int, owner: object) -> None:
        assert self.owner[slot] is None, f"slot {slot} is taken"
        self.owner[slot] = owner
        self.num_live += 1

    def free(self, slot: int) -> None:
        if self.owner[slot] is not None:
            self.owner[slot] = None
            self.num_live -= 1

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
