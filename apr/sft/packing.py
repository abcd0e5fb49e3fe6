"""Packing sequences into fixed-length rows, and the per-step micro-batches of one process.

Each row holds several whole sequences; `position_ids` restart at 0 at every sequence, and with
no 2D attention mask transformers (>= 4.56, sdpa/eager/flash) turns that into a block-diagonal
causal mask, so no token attends across sequences. A sequence's first label is -100, so no token
is trained to predict the next sequence's `<bos>`. `tests/sft/test_packing.py` proves the packed
loss equals the per-sequence loss. The model must run with `use_cache=False` (a cache disables
the packed-sequence detection).

    >>> pack_rows([5, 3, 4, 2, 6], row_len=8)
    [[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

import gc
import math
import random
from bisect import bisect_left, insort
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from apr.config import check
from apr.sft.data import IGNORE, Sequences, TrainSequence


def pack_rows(lengths, row_len: int) -> list[list[int]]:
    """Best fit in the given order: each sequence goes into the open row with the least room
    that still holds it (the lowest-numbered such row on a tie; a new row if none does). Returns
    sequence indices per row, each row's in placement order."""
    lengths = _checked(np.asarray(lengths, dtype=np.int64).reshape(-1), row_len)  # (S,)
    return _rows(*_best_fit_runs(lengths, row_len), np.arange(len(lengths)))


@contextmanager
def _gc_paused():
    """No cyclic garbage collection inside (for code that makes many acyclic objects)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _checked(lengths: np.ndarray, row_len: int) -> np.ndarray:
    if len(lengths) and lengths.max() > row_len:
        i = int(np.argmax(lengths > row_len))
        raise ValueError(f"sequence {i} has {lengths[i]} tokens, more than a row ({row_len}); fit_to_window first")
    if len(lengths) and lengths.min() < 1:
        raise ValueError(f"sequence {int(np.argmin(lengths))} is empty; every sequence has at least one token")
    return lengths


def _rows(row_of: np.ndarray, num_rows: int, items: np.ndarray) -> list[list[int]]:
    """`items` grouped by their row in `row_of`, in their given order within a row."""
    flat = items[np.argsort(row_of, kind="stable")].tolist()
    ends = np.cumsum(np.bincount(row_of, minlength=num_rows)).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def _best_fit_runs(lengths: np.ndarray, row_len: int) -> tuple[np.ndarray, int]:
    """Best fit, one run of equal lengths at a time (longest-first input has a few hundred runs, not 138k
    sequences): within a run of length n, the open row with the least room >= n, say r, keeps that
    status until it holds r // n of the run (its leftover room is then < n), and the next such row is
    the next-lowest-numbered row of room r. So a run fills whole buckets of rows of equal room at once.
    Returns each sequence's row and the number of rows; the same rows as placing one at a time."""
    buckets: dict[int, list[int]] = {}  # room left -> rows with that room, ascending
    rooms: list[int] = []  # the rooms that have rows, ascending
    row_of = np.empty(len(lengths), dtype=np.int64)
    num_rows = 0
    starts = np.flatnonzero(np.diff(lengths, prepend=-1)) if len(lengths) else []
    for start, end in zip(starts, [*starts[1:], len(lengths)]):
        n, i, left = int(lengths[start]), int(start), int(end - start)
        while left:
            k = bisect_left(rooms, n)
            if k < len(rooms):
                room = rooms[k]
                rows = buckets[room]
            else:
                room, rows = row_len, None
            per_row = room // n
            take = -(-left // per_row)  # rows this run fills from this bucket (all it needs, at most all)
            if rows is None:
                used, num_rows = list(range(num_rows, num_rows + take)), num_rows + take
            else:
                take = min(take, len(rows))
                used = rows[:take]
                if take == len(rows):
                    del buckets[room], rooms[k]
                else:
                    buckets[room] = rows[take:]
            placed = min(left, take * per_row)
            row_of[i:i + placed] = np.repeat(used, per_row)[:placed]
            i, left = i + placed, left - placed
            last = placed - (take - 1) * per_row  # the last row may take fewer (the run ran out)
            _add(buckets, rooms, room - per_row * n, used[:-1])
            _add(buckets, rooms, room - last * n, used[-1:])
    return row_of, num_rows


def _add(buckets: dict[int, list[int]], rooms: list[int], room: int, rows: list[int]) -> None:
    if room <= 0 or not rows:
        return
    if room in buckets:
        buckets[room] = sorted(buckets[room] + rows)  # two ascending runs: a linear merge
    else:
        buckets[room] = list(rows)
        insort(rooms, room)


def pack_decreasing(seqs: Sequences | list[TrainSequence], order, row_len: int) -> list[list[int]]:
    """Best fit decreasing (longest first, ties in `order`): ~2-3 points denser than best fit in
    random order. Which sequences share a row does not change the loss (attention stays within
    each sequence); the caller shuffles the rows."""
    lengths = Sequences.of(seqs).lengths
    order = np.asarray(order, dtype=np.int64)
    by_length = order[np.argsort(-lengths[order], kind="stable")]  # stable: ties keep `order`
    return _rows(*_best_fit_runs(_checked(lengths[by_length], row_len), row_len), by_length)


@dataclass
class PackedBatch:
    """A micro-batch of packed rows, ready for `LlamaForCausalLM(**batch.model_inputs())`."""

    input_ids: object  # (B, T) int64 tensor
    position_ids: object  # (B, T) int64, restarting at 0 per sequence (and in the padding tail)
    labels: object  # (B, T) int64, -100 where not trained on; unshifted
    num_tokens: int  # non-padding tokens
    num_targets: int  # labels that are trained on

    def to(self, device) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.labels.to(device),
                           self.num_tokens, self.num_targets)

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "labels": self.labels,
                "use_cache": False}

    def inputs_for(self, model) -> dict:
        """`model_inputs()`, as one (1, B*T) row where `model` attends with flash-attention: transformers
        finds packed sequences in position_ids there only when the batch has a single row (with several,
        sequences would attend to each other). Every row starts a sequence whose first label is -100, so
        joining rows trains nothing across them."""
        inputs = self.model_inputs()
        impl = getattr(getattr(getattr(model, "module", model), "config", None), "_attn_implementation", "") or ""
        if impl.startswith("flash") and self.input_ids.shape[0] > 1:
            for key in ("input_ids", "position_ids", "labels"):
                inputs[key] = inputs[key].reshape(1, -1)
        return inputs


def collate(seqs: Sequences | list[TrainSequence], rows: list[list[int]], row_len: int, pad_id: int) -> PackedBatch:
    """Rows of sequence indices -> a `PackedBatch` of shape (len(rows), row_len)."""
    import torch

    ids = np.full((len(rows), row_len), pad_id, dtype=np.int64)  # (B, T)
    pos = np.zeros((len(rows), row_len), dtype=np.int64)  # (B, T)
    labels = np.full((len(rows), row_len), IGNORE, dtype=np.int64)  # (B, T)
    num_tokens = 0
    for b, row in enumerate(rows):
        t = 0
        for i in row:
            s = seqs[i]
            n = len(s)
            ids[b, t:t + n] = s.ids
            labels[b, t:t + n] = s.labels
            pos[b, t:t + n] = np.arange(n)
            t += n
        pos[b, t:] = np.arange(row_len - t)  # padding is its own "sequence"
        num_tokens += t
    return PackedBatch(torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(labels), num_tokens,
                       int((labels != IGNORE).sum()))


class PackedLoader:
    """Micro-batches of one process for each optimizer step, resumable at (epoch, step in epoch).

    An epoch shuffles the sequences (seeded by `seed` and the epoch), packs them best-fit and
    shuffles the rows; a step takes `batch_rows * grad_accum_steps * world_size` rows, and
    process `rank` gets every `world_size`-th micro-batch. Leftover rows of an epoch are skipped.
    """

    def __init__(self, seqs: Sequences | list[TrainSequence], row_len: int, pad_id: int, batch_rows: int,
                 grad_accum_steps: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.seqs, self.row_len, self.pad_id = Sequences.of(seqs), row_len, pad_id
        self.batch_rows, self.grad_accum_steps = batch_rows, grad_accum_steps
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def rows_per_step(self) -> int:
        return self.batch_rows * self.grad_accum_steps * self.world_size

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        if self._cache is None or self._cache[0] != epoch:
            with _gc_paused():  # ~20k new lists would start full collections over torch's objects (~0.2 s)
                rng = random.Random(self.seed * 1_000_003 + epoch)
                order = list(range(len(self.seqs)))
                rng.shuffle(order)
                rows = pack_decreasing(self.seqs, order, self.row_len)
                rng.shuffle(rows)
            self._cache = (epoch, rows)
        return self._cache[1]

    def steps_in_epoch(self, epoch: int) -> int:
        n = len(self.epoch_rows(epoch)) // self.rows_per_step
        check(n >= 1, "train.batch_rows", self.batch_rows,
              f"a batch that fits the data: an epoch packs into {len(self.epoch_rows(epoch))} rows, fewer than "
              f"batch_rows x grad_accum_steps x processes = {self.rows_per_step}")
        return n

    def step_batches(self, epoch: int, step: int) -> list[PackedBatch]:
        """This process's `grad_accum_steps` micro-batches of step `step` of `epoch`."""
        rows = self.epoch_rows(epoch)
        base = step * self.rows_per_step
        out = []
        for j in range(self.grad_accum_steps):
            start = base + (j * self.world_size + self.rank) * self.batch_rows
            out.append(collate(self.seqs, rows[start:start + self.batch_rows], self.row_len, self.pad_id))
        return out

    def iterate(self, epoch: int, step: int) -> Iterator[tuple[int, int, list[PackedBatch]]]:
        """(epoch, step in epoch, micro-batches) from a data position on, across epochs, forever."""
        while True:
            while step < self.steps_in_epoch(epoch):
                yield epoch, step, self.step_batches(epoch, step)
                step += 1
            epoch, step = epoch + 1, 0


def eval_batches(seqs: Sequences | list[TrainSequence], row_len: int, pad_id: int, batch_rows: int, rank: int = 0,
                 world_size: int = 1) -> list[PackedBatch]:
    """Validation micro-batches of this process (fixed order, every row used once across processes).

    Every process gets the same number of batches (ZeRO-3 forwards are collective): a process
    short of rows gets an all-padding row, which carries no targets."""
    rows = pack_decreasing(seqs, list(range(len(seqs))), row_len)
    mine = rows[rank::world_size]
    num_batches = math.ceil(math.ceil(len(rows) / world_size) / batch_rows)
    out = [collate(seqs, mine[i:i + batch_rows], row_len, pad_id) for i in range(0, len(mine), batch_rows)]
    return out + [collate(seqs, [[]], row_len, pad_id) for _ in range(num_batches - len(out))]


