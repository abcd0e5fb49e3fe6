"""Owns who runs: the waiting queue, the running batch, suspended sequences, and slot placement.

Invariant: the running sequence at batch index i lives in KV slot i, so a decode step reads
rows `[0, B)` as one view. Admission places newcomers in rows `[B, B + k)` (group leaders
first, n-sample followers after them); retirement fills holes left by finished sequences with
the last running ones. When every slot is taken, a new request waits; if suspended sequences
hold the slots, the least recently used one is evicted (its KV dropped, its tokens kept,
re-prefilled when resumed), so a full pool never deadlocks. Slots are as long as the longest
live sequence needs (`KVCache.row_len`): when a running sequence outgrows them, rows grow and,
if the budget then holds fewer rows than the batch, the last ones are preempted (`make_room`).

    >>> sched = Scheduler(kv, max_batch_size=64, max_prefill_tokens=4096)   # doctest: +SKIP
    >>> sched.add([seq]); groups = sched.admit()                            # doctest: +SKIP
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from apr.engine.kv_cache import KVCache
from apr.engine.sequence import SeqStatus, Sequence


class Scheduler:
    """Queue -> running batch -> suspended / finished, with slots kept in row order."""

    def __init__(self, kv: KVCache, max_batch_size: int, max_prefill_tokens: int,
                 max_running_tokens: Callable[[], int] | None = None) -> None:
        self.kv = kv
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[list[Sequence]] = deque()  # groups: [leader, *n-sample followers]
        self.running: list[Sequence] = []  # running[i].slot == i
        self.suspended: dict[str, Sequence] = {}  # by the id of the request that left them
        self.num_evictions = 0
        self.num_preemptions = 0
        self.num_steps = 0
        # the longest running sequence's token count; the engine's per-row arrays answer it without a loop
        self.max_running_tokens = max_running_tokens or (
            lambda: max((s.num_tokens for s in self.running), default=0))

    # ---- admission -------------------------------------------------------------------------

    def add(self, group: list[Sequence]) -> None:
        self.waiting.append(group)

    def admit(self) -> list[list[Sequence]]:
        """Move queued groups into the batch (FIFO) while batch, KV slots and prefill budget allow.

        Slots are counted at the row length the batch would need with the group in it; kept
        caches of suspended sequences are evicted (least recently used first) to make room.
        """
        self.num_steps += 1
        self._maybe_shrink()
        chosen: list[list[Sequence]] = []
        num_rows = len(self.running)
        num_new_slots = 0
        max_pending = 0
        need = self.max_running_tokens()
        num_evictable = sum(s.slot is not None for s in self.suspended.values())
        # queued resumes that still hold their KV can give it up too (re-prefilled when placed): else a
        # head group that needs new slots waits for ever behind them (nothing running, nothing admitted)
        queued_held = sum(s.slot is not None for g in self.waiting for s in g)
        while self.waiting:
            group = self.waiting[0]
            held_here = sum(s.slot is not None for s in group)
            if num_rows + len(group) > self.max_batch_size:
                break
            pending = max(max_pending, group[0].num_pending)
            # padded prefill cost: every leader row is padded to the longest one
            if chosen and pending * (len(chosen) + 1) > self.max_prefill_tokens:
                break
            group_need = max(need, group[0].num_tokens)
            new_slots = num_new_slots + sum(s.slot is None for s in group)
            num_slots = self.kv.slots_at(max(self.kv.row_len, self.kv.row_len_for(group_need)))
            if self.kv.num_live + new_slots > num_slots + num_evictable + queued_held - held_here:
                break
            self.waiting.popleft()
            queued_held -= held_here
            chosen.append(group)
            num_rows += len(group)
            num_new_slots, max_pending, need = new_slots, pending, group_need
        if chosen:
            row_len = max(self.kv.row_len, self.kv.row_len_for(need))
            self._evict(self.kv.num_live + num_new_slots - self.kv.slots_at(row_len))
            self._resize(row_len)
            self._place(chosen)
        return chosen

    def make_room(self) -> list[Sequence]:
        """Grow rows to the running batch's longest sequence before a step's forwards.

        Longer rows mean fewer of them: kept caches are evicted first (least recently used),
        then queued resumed sequences lose theirs, and if the running batch itself no longer
        fits, its last rows are preempted: their KV is dropped and they wait at the head of
        the queue to be recomputed (tokens, log-probs and sampling state are kept). Nothing
        is lost; a sequence at the window always fits (the budget holds one). Returns the preempted.
        """
        row_len = self.kv.row_len_for(self.max_running_tokens())
        if row_len <= self.kv.row_len:
            return []
        num_slots = self.kv.slots_at(row_len)
        self._evict(self.kv.num_live - num_slots)
        queued = [s for g in self.waiting for s in g if s.slot is not None]
        for seq in queued[:max(0, self.kv.num_live - num_slots)]:
            self._drop_kv(seq)
            self.num_evictions += 1
        preempted = self.running[num_slots:]
        for seq in reversed(preempted):
            self._drop_kv(seq)
            seq.status = SeqStatus.WAITING
            self.waiting.appendleft([seq])
            self.num_preemptions += 1
        del self.running[num_slots:]
        self._resize(row_len)
        return preempted

    def _maybe_shrink(self) -> None:
        """Halve rows (or more), doubling their number, when requests wait and every live sequence fits."""
        if not self.waiting or 2 * self.kv.row_len_for(self.waiting[0][0].num_tokens) > self.kv.row_len:
            return
        kept = [s for s in self.suspended.values() if s.slot is not None]
        queued = [s for g in self.waiting for s in g if s.slot is not None]
        lengths = [self.max_running_tokens()] + [s.num_cached for s in kept + queued]
        row_len = self.kv.row_len_for(max(lengths + [self.waiting[0][0].num_tokens]))
        if 2 * row_len <= self.kv.row_len:
            self._resize(row_len)

    def _resize(self, row_len: int) -> None:
        if row_len != self.kv.row_len:
            self.kv.resize(row_len, [s.num_cached if s is not None else 0 for s in self.kv.owner])
            for slot, seq in enumerate(self.kv.owner):
                if seq is not None:
                    seq.slot = slot

    def _drop_kv(self, seq: Sequence) -> None:
        self.kv.free(seq.slot)
        seq.slot, seq.num_cached = None, 0

    def _evict(self, count: int) -> None:
        """Drop the KV of up to `count` sequences (re-prefilled when they run again): suspended ones, least
        recently used first, then queued ones that hold a slot, from the back of the queue."""
        if count <= 0:
            return
        victims = sorted((s for s in self.suspended.values() if s.slot is not None), key=lambda s: s.last_used)
        victims += [s for g in reversed(self.waiting) for s in reversed(g) if s.slot is not None]
        for seq in victims[:count]:
            self._drop_kv(seq)
            self.num_evictions += 1

    def _place(self, groups: list[list[Sequence]]) -> None:
        order = [g[0] for g in groups] + [s for g in groups for s in g[1:]]
        start = len(self.running)
        for i, seq in enumerate(order):
            self._take_row(seq, start + i)
            seq.status = SeqStatus.RUNNING
        self.running.extend(order)

    def _take_row(self, seq: Sequence, row: int) -> None:
        occupant = self.kv.owner[row]
        if occupant is seq:
            return
        if seq.slot is not None:
            self._swap(seq.slot, row)
            return
        if occupant is not None:  # a suspended (or not yet placed) sequence: move it out of the way
            # the highest free slot is the least likely to be wanted by the batch rows next
            self._swap(row, self.kv.highest_free_slot())
        self.kv.assign(row, seq)
        seq.slot = row

    def _swap(self, a: int, b: int) -> None:
        sa, sb = self.kv.owner[a], self.kv.owner[b]
        self.kv.swap(a, b, sa.num_cached if sa else 0, sb.num_cached if sb else 0)
        if sa is not None:
            sa.slot = b
        if sb is not None:
            sb.slot = a

    # ---- retirement ------------------------------------------------------------------------

    def retire(self, done: list[Sequence]) -> list[tuple[Sequence, int, int]]:
        """Take ended sequences out of the batch; each is already marked SUSPENDED or FINISHED.

        The running sequences in the last len(done) rows fill the rows freed below them, in row
        order: work in proportion to len(done), not to the batch. Returns those moves as
        (sequence, from row, to row), for state the engine keeps per row.
        """
        if not done:
            return []
        gone = {id(s) for s in done}
        size = len(self.running) - len(done)
        holes = sorted(s.slot for s in done if s.slot < size)  # running rows == slots
        movers = [s for s in self.running[size:] if id(s) not in gone]
        for seq in done:
            seq.last_used = self.num_steps
            if seq.status is SeqStatus.SUSPENDED:
                self.suspended[seq.seq_id] = seq
            else:
                self.kv.free(seq.slot)
                seq.slot = None
        moves = []
        for seq, hole in zip(movers, holes):
            moves.append((seq, seq.slot, hole))
            self._swap(seq.slot, hole)
            self.running[hole] = seq
        del self.running[size:]
        return moves

    def plan_regroup(self, rows_per_chunk: int, lengths: list[int]) -> tuple[list[int], int]:
        """Row sources that put the batch's longest sequences in chunk 0, the next ones in chunk 1, ...

        `lengths[r]`: row r's cached positions (or anything ordered alike). Only chunk membership
        matters for attention, so a sequence already in its target chunk stays; returns (sources,
        number of sequences that move).
        """
        size = len(self.running)
        ranked = sorted(range(size), key=lambda r: -lengths[r])  # rows, longest first
        target = {row: rank // rows_per_chunk for rank, row in enumerate(ranked)}
        sources = list(range(size))
        movers = [row for row in range(size) if row // rows_per_chunk != target[row]]
        free = [row for row in range(size) if row // rows_per_chunk != target[row]]  # the same rows, freed
        by_chunk: dict[int, list[int]] = {}
        for row in free:
            by_chunk.setdefault(row // rows_per_chunk, []).append(row)
        for row in movers:
            sources[by_chunk[target[row]].pop()] = row
        return sources, len(movers)

    def regroup(self, sources: list[int]) -> None:
        """Apply `plan_regroup`'s sources: row i takes the sequence now in row sources[i]."""
        moved = [self.running[src] for i, src in enumerate(sources) if src != i]
        self.kv.permute(sources, max((s.num_cached for s in moved), default=0))
        self.running = [self.running[src] for src in sources]
        for row, seq in enumerate(self.running):
            seq.slot = row

    def release(self, seq_id: str) -> Sequence:
        seq = self.suspended.pop(seq_id)
        if seq.slot is not None:
            self.kv.free(seq.slot)
        seq.slot, seq.status = None, SeqStatus.FINISHED
        return seq

    def remove_waiting(self, seq_id: str) -> list[Sequence]:
        """Take the sequences of `seq_id` (a request id or one sample id) out of the queue."""
        removed: list[Sequence] = []
        for group in list(self.waiting):
            hit = [s for s in group if seq_id in (s.seq_id, s.request_id)]
            for seq in hit:
                group.remove(seq)
                if seq.slot is not None:  # a resumed sequence waiting with its kept KV
                    self.kv.free(seq.slot)
                    seq.slot = None
                seq.status = SeqStatus.FINISHED
            removed += hit
            if not group:
                self.waiting.remove(group)
        return removed
