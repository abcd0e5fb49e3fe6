"""Owns the running rows' per-step state: arrays indexed by batch row, and the tokens not yet copied out.

A decode step over B sequences must not cost B Python-level operations. Row i of these arrays is
`scheduler.running[i]` (which lives in KV slot i), so a step works on slices `[:B]`: next input
ids and positions (`inputs`), the sampling parameters and each row's draw (`sample_rows`), and,
once the step's one transfer brought tokens and log-probs back, `record`: counters, finish rules
(stop ids, max_new_tokens, the window) and the history, a handful of whole-batch numpy calls.

Steps are numbered in blocks of `history_steps` columns. Column c of `tokens` / `logprobs` holds
every row's token of the block's c-th step (the next step's input; a decoded token also waits
there until its sequence is read); column c of `draws` holds each row's counter-based draw
(`sampler.uniforms`) for that step's token, made for the whole block at once (`begin_step`,
`attach`), so a step reads one column. These three are stored column-major, (W, C): a column
is contiguous. The longest row and the next row to reach its length
limit are tracked as plain ints, so most steps need no array call for them.

Per-sequence Python runs only where something happens to a sequence: it joins (`attach`), leaves
(`detach`), moves to another row (`move`, `permute`), or is read (`pull`, copying its history
into the `Sequence`); and once per block for all rows (`begin_step`). A `Sequence` pulls itself
whenever its tokens or `num_cached` are read, so the scheduler and completions always see
current values.

    >>> rows = RunningRows(capacity=4, max_seq_len=64)
    >>> rows.max_num_tokens(0), rows.capacity
    (0, 4)
"""

from __future__ import annotations

import numpy as np

from apr.engine.base import FinishReason
from apr.engine.sampler import SampleRows, row_kind, seed_key, uniforms

_FAR = 1 << 62  # "no row is near its length limit"


class RunningRows:
    """Per-row state of the running batch (host arrays; see the module docstring)."""

    def __init__(self, capacity: int, max_seq_len: int, history_steps: int = 64) -> None:
        self.capacity = capacity
        self.max_seq_len = max_seq_len
        # both grow by one per sampled token, so one call advances them: (2, C)
        self.counters = np.zeros((2, capacity), dtype=np.int64)
        self.position = self.counters[0]  # position of the token whose logits come next
        self.num_generated = self.counters[1]  # this request's tokens: the draw counter
        # num_generated at which the row ends with "length": max_new_tokens, or the window's last position
        self.deadline = np.zeros(capacity, dtype=np.int64)
        self.key = np.zeros(capacity, dtype=np.uint64)  # `seed_key` of the sequence's seed
        self.kind = np.zeros(capacity, dtype=np.int8)  # `sampler.row_kind`
        self.kind_counts = [0] * 5  # live rows of each kind
        self.params = np.zeros((3, capacity))  # temperature (greedy: 1), top_p, top_k: `SampleRows`
        self.stop = np.full((capacity, 0), -1, dtype=np.int64)  # stop ids, -1 padded; widens on demand
        self.num_with_stops = 0  # live rows that have stop ids (0: the check is skipped)
        self.seqs: list = [None] * capacity
        self.tokens = np.zeros((history_steps, capacity), dtype=np.int64)  # the block's sampled tokens
        self.logprobs = np.zeros((history_steps, capacity))
        self.draws = np.zeros((history_steps, capacity))
        self.first = np.zeros(capacity, dtype=np.int64)  # a row's first column not yet in its Sequence
        self.num_columns = 0  # this step's column (steps done in the block)
        self._ahead = np.arange(history_steps, dtype=np.int64)  # (W,) counter offsets of a block
        self._max_position = 0  # over live rows; -1: unknown (its row left), recomputed when asked
        self._min_left = _FAR  # at most min(deadline - num_generated) over live rows

    def attach(self, seqs: list, start: int) -> None:
        """Sequences just prefilled into rows [start, start + len(seqs)); their logits are sampled next."""
        for row, seq in enumerate(seqs, start):
            p = seq.params
            position, num_generated = seq.num_tokens - 1, seq.num_generated  # a preempted one keeps counting
            self.position[row], self.num_generated[row] = position, num_generated
            deadline = min(p.max_new_tokens, num_generated + self.max_seq_len - position)
            self.deadline[row] = deadline
            self._min_left = min(self._min_left, deadline - num_generated)
            if self._max_position >= 0:
                self._max_position = max(self._max_position, position)
            self.key[row] = seed_key(seq.seed)
            kind = self.kind[row] = row_kind(p.temperature, p.top_k, p.top_p)
            self.kind_counts[kind] += 1
            self.params[:, row] = (p.temperature or 1.0, p.top_p, p.top_k)
            stops = p.stop_token_ids
            if len(stops) > self.stop.shape[1]:
                wider = np.full((self.capacity, len(stops)), -1, dtype=np.int64)  # (C, S')
                wider[:, :self.stop.shape[1]] = self.stop
                self.stop = wider
            self.stop[row] = -1
            self.stop[row, :len(stops)] = stops
            self.num_with_stops += bool(stops)
            self.seqs[row] = seq
            seq.rows, seq.row = self, row
        rows = slice(start, start + len(seqs))
        self.first[rows] = self.num_columns + 1  # this step samples their first token: not a decoded one
        self._make_draws(rows, self.num_columns)

    def detach(self, seq) -> None:
        """The sequence leaves the batch: copy its history into it; its row is free."""
        self.pull(seq)
        row = seq.row
        self.num_with_stops -= bool(seq.params.stop_token_ids)
        self.kind_counts[self.kind[row]] -= 1
        if self.position[row] >= self._max_position:
            self._max_position = -1
        self.seqs[row] = None
        seq.rows, seq.row = None, -1

    def move(self, moves: list[tuple]) -> None:
        """Apply the scheduler's (sequence, from row, to row) moves; no row is both a source and a target."""
        if not moves:
            return
        for seq, _, _ in moves:
            self.pull(seq)  # nothing of it is pending any more: its history may be overwritten
        src = [m[1] for m in moves]
        dst = [m[2] for m in moves]
        for arr in (self.deadline, self.key, self.kind, self.stop):
            arr[dst] = arr[src]
        for arr in self._column_arrays():
            arr[:, dst] = arr[:, src]
        for seq, _, row in moves:
            self.seqs[row] = seq
            self.first[row] = self.num_columns
            seq.row = row

    def permute(self, sources: list[int]) -> None:
        """Row i takes the state of row sources[i] (the scheduler regrouped its first len(sources) rows)."""
        n = len(sources)
        seqs = self.seqs[:n]
        for seq in seqs:
            self.pull(seq)
        for arr in (self.deadline, self.key, self.kind, self.stop):
            arr[:n] = arr[sources]
        for arr in self._column_arrays():
            arr[:, :n] = arr[:, sources]
        self.first[:n] = self.num_columns
        for row, src in enumerate(sources):
            self.seqs[row] = seqs[src]
            seqs[src].row = row

    def pull(self, seq) -> None:
        """Copy the decode tokens recorded for `seq` since its last pull into it."""
        row = seq.row
        start, end = int(self.first[row]), self.num_columns
        if start < end:  # (start > end for a row that joined this step: nothing yet)
            seq.extend_decoded(self.tokens[start:end, row].tolist(), self.logprobs[start:end, row].tolist())
            self.first[row] = end

    def max_num_tokens(self, num: int) -> int:
        """The longest of rows [0, num)'s token counts (each holds exactly one pending token)."""
        if not num:
            return 0
        if self._max_position < 0:
            self._max_position = int(self.position[:num].max())
        return self._max_position + 1

    def begin_step(self, num: int) -> None:
        """Before a step's sampling: at the end of a block, copy rows [0, num)'s tokens out and start the next."""
        if self.num_columns < len(self.tokens):
            return
        for seq in self.seqs[:num]:
            self.pull(seq)
        self.first[:] = 0
        self.num_columns = 0  # column -1 (the last) still holds the inputs of this step
        self._make_draws(slice(0, num), 0)

    def inputs(self, num: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, positions) (B,) each that a decode step of rows [0, num) feeds (views)."""
        return self.tokens[self.num_columns - 1, :num], self.position[:num]

    def sample_rows(self, start: int, end: int, is_all: bool = False) -> SampleRows:
        """Rows [start, end)'s sampling parameters and draws for this step's token (views).

        `is_all`: the rows are every live row, whose kinds are already counted.
        """
        kinds = self.kind[start:end]
        counts = list(self.kind_counts) if is_all else np.bincount(kinds, minlength=5).tolist()
        return SampleRows(self.draws[self.num_columns, start:end], self.params[:, start:end], kinds, counts)

    def record(self, num_decoded: int, num: int, tokens: np.ndarray, logprobs: np.ndarray) -> list:
        """Take one step's tokens for rows [0, num): rows [0, num_decoded) decoded, the rest were prefilled.

        Returns the sequences that finished, finish_reason set, in row order.
        """
        b, column = num_decoded, self.num_columns
        self.counters[:, :num] += 1  # position and num_generated
        self.tokens[column, :num] = tokens
        self.logprobs[column, :num] = logprobs
        self.num_columns += 1
        if self._max_position >= 0:
            self._max_position += 1
        if num > b:  # the prefilled rows' tokens: straight into their Sequences
            for seq, token, logprob in zip(self.seqs[b:num], tokens[b:].tolist(), logprobs[b:].tolist()):
                seq.append_sampled(token, logprob)
        self._min_left -= 1
        is_done = is_stop = None
        if self._min_left <= 0:  # some row may have reached max_new_tokens or the window
            left = self.deadline[:num] - self.num_generated[:num]  # (N,)
            is_done = left <= 0
            self._min_left = int(left.min())  # 0 while the finished rows are here; exact once they left
        if self.num_with_stops:
            is_stop = (self.stop[:num] == tokens[:, None]).any(axis=1)  # (N,)
            is_done = is_stop if is_done is None else is_done | is_stop
        if is_done is None:
            return []
        done = []
        for row in is_done.nonzero()[0].tolist():
            seq = self.seqs[row]
            # a stop id wins over length (the stop token is the last output token either way)
            seq.finish_reason = FinishReason.STOP if is_stop is not None and is_stop[row] else FinishReason.LENGTH
            done.append(seq)
        return done

    def _column_arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays whose second axis is the row."""
        return self.counters, self.params, self.tokens, self.logprobs, self.draws

    def _make_draws(self, rows: slice, column: int) -> None:
        """Draws of `rows` for the block's columns from `column` on: one vectorised call for them all."""
        ahead = self._ahead[:len(self.tokens) - column, None]  # (W - c, 1)
        if rows.stop > rows.start and len(ahead):
            counters = self.num_generated[rows] + ahead  # (W - c, R): the token each column samples
            self.draws[column:, rows] = uniforms(self.key[rows], counters)
