"""Owns the running sequences' per-step state: arrays indexed by lane, and the tokens not yet copied out.

A decode step over B sequences must not cost B Python-level operations. So each running sequence
holds a *lane* (an index into these arrays, stable while it runs, whatever row it moves to), and
a step reads and writes whole arrays at once: next input ids and positions (`decode_inputs`), the
sampling rows with their counter-based draws (`sample_rows`), and, once the step's one transfer
has brought tokens and log-probs back, `record`: counters, finish rules (stop ids, max_new_tokens,
the window) and the decode history, each one vectorised numpy call over the batch.

Per-sequence Python runs only where something happens to a sequence: it joins (`attach`, one
per admitted sequence), finishes or moves (`pull`, copying its history into the `Sequence`), and
once every `history_steps` steps for all (`_flush`, when the history columns are used up). A
`Sequence` pulls itself whenever its tokens or `num_cached` are read, so the scheduler and the
completions always see current values.

    >>> lanes = Lanes(capacity=4, max_seq_len=64)
    >>> lanes.num_live, lanes.max_num_tokens()
    (0, 0)
"""

from __future__ import annotations

import numpy as np

from apr.engine.base import FinishReason
from apr.engine.sampler import SampleRows, seed_key, uniforms

_STOP, _LENGTH = 1, 2  # finish codes of `finish_codes`


class Lanes:
    """Per-lane state of the running sequences (host arrays; see the module docstring)."""

    def __init__(self, capacity: int, max_seq_len: int, history_steps: int = 64) -> None:
        self.max_seq_len = max_seq_len
        self.next_token = np.zeros(capacity, dtype=np.int64)  # the pending token, fed at `position`
        self.position = np.zeros(capacity, dtype=np.int64)  # position of the token whose logits come next
        self.num_generated = np.zeros(capacity, dtype=np.int64)  # this request's tokens: the draw counter
        self.max_new = np.zeros(capacity, dtype=np.int64)
        self.key = np.zeros(capacity, dtype=np.uint64)  # `seed_key` of the sequence's seed
        self.temperature = np.zeros(capacity)
        self.top_k = np.zeros(capacity, dtype=np.int64)
        self.top_p = np.ones(capacity)
        self.stop = np.full((capacity, 0), -1, dtype=np.int64)  # stop ids, -1 padded; widens on demand
        self.is_live = np.zeros(capacity, dtype=bool)
        self.seqs: list = [None] * capacity
        self._free = list(range(capacity - 1, -1, -1))
        # decode history: column c holds every live lane's token of the c-th step since the last flush
        self.tokens = np.zeros((capacity, history_steps), dtype=np.int64)
        self.logprobs = np.zeros((capacity, history_steps))
        self.first = np.zeros(capacity, dtype=np.int64)  # a lane's first column not yet in its Sequence
        self.num_columns = 0
        self._rows: tuple[int, np.ndarray] | None = None  # (scheduler version, lanes of its running rows)

    @property
    def num_live(self) -> int:
        return len(self.seqs) - len(self._free)

    def attach(self, seqs: list) -> np.ndarray:
        """Give each prefilled sequence a lane (its prefill logits are sampled next); return the lanes."""
        out = np.empty(len(seqs), dtype=np.int64)
        for i, seq in enumerate(seqs):
            lane = out[i] = self._free.pop()
            p = seq.params
            self.position[lane] = seq.num_tokens - 1  # the prefill fed up to here
            self.num_generated[lane] = seq.num_generated  # a preempted sequence keeps counting
            self.max_new[lane] = p.max_new_tokens
            self.key[lane] = seed_key(seq.seed)
            self.temperature[lane], self.top_k[lane], self.top_p[lane] = p.temperature, p.top_k, p.top_p
            stops = p.stop_token_ids
            if len(stops) > self.stop.shape[1]:
                wider = np.full((len(self.seqs), len(stops)), -1, dtype=np.int64)  # (C, S')
                wider[:, :self.stop.shape[1]] = self.stop
                self.stop = wider
            self.stop[lane] = -1
            self.stop[lane, :len(stops)] = stops
            self.is_live[lane] = True
            self.seqs[lane] = seq
            self.first[lane] = self.num_columns
            seq.lanes, seq.lane = self, lane
        return out

    def detach(self, seq) -> None:
        """The sequence leaves the batch: copy its history into it and free its lane."""
        self.pull(seq)
        lane = seq.lane
        self.is_live[lane] = False
        self.seqs[lane] = None
        self._free.append(lane)
        seq.lanes, seq.lane = None, -1

    def pull(self, seq) -> None:
        """Copy the decode tokens recorded for `seq` since its last pull into it."""
        lane = seq.lane
        start, end = int(self.first[lane]), self.num_columns
        if start < end:  # (start > end for a lane joining in the middle of `record`: nothing yet)
            seq.extend_decoded(self.tokens[lane, start:end].tolist(), self.logprobs[lane, start:end].tolist())
            self.first[lane] = end

    def rows_of(self, running: list, version: int) -> np.ndarray:
        """Lanes of the running rows, in row order (rebuilt only when the scheduler changed the batch)."""
        if self._rows is None or self._rows[0] != version:
            lanes = np.fromiter((s.lane for s in running), dtype=np.int64, count=len(running))  # (B,)
            self._rows = (version, lanes)
        return self._rows[1]

    def max_num_tokens(self) -> int:
        """The longest live sequence's token count (each holds exactly one pending token)."""
        return int(self.position[self.is_live].max()) + 1 if self.num_live else 0

    def decode_inputs(self, lanes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, positions) (B,) each that a decode step feeds."""
        return self.next_token[lanes], self.position[lanes]

    def sample_rows(self, lanes: np.ndarray) -> SampleRows:
        """The sampling rows of `lanes`, with each one's draw for its next token."""
        temperature = self.temperature[lanes]  # (N,)
        u = uniforms(self.key[lanes], self.num_generated[lanes]) if temperature.any() else np.zeros(len(lanes))
        return SampleRows(temperature, self.top_k[lanes], self.top_p[lanes], u)

    def record(self, decoded: np.ndarray, prefilled: list, tokens: np.ndarray, logprobs: np.ndarray) -> list:
        """Take one step's sampled tokens: rows `decoded` (lanes) first, then the `prefilled` sequences.

        Returns the sequences that finished, finish_reason set, in row order of this call.
        """
        num = len(decoded)
        lanes = decoded if not prefilled else np.concatenate([decoded, [s.lane for s in prefilled]])  # (N,)
        if num and self.num_columns == self.tokens.shape[1]:
            self._flush()
        # first, so that no read in between can take this step's column for a prefilled sequence's
        self.first[lanes[num:]] = self.num_columns + (1 if num else 0)
        self.next_token[lanes] = tokens
        self.position[lanes] += 1
        self.num_generated[lanes] += 1
        if num:
            self.tokens[decoded, self.num_columns] = tokens[:num]
            self.logprobs[decoded, self.num_columns] = logprobs[:num]
            self.num_columns += 1
        for seq, token, logprob in zip(prefilled, tokens[num:].tolist(), logprobs[num:].tolist()):
            seq.append_sampled(token, logprob)  # the prefill's token: straight into the Sequence
        codes = self.finish_codes(lanes, tokens)
        done = []
        for row in np.flatnonzero(codes).tolist():
            seq = self.seqs[lanes[row]]
            seq.finish_reason = FinishReason.STOP if codes[row] == _STOP else FinishReason.LENGTH
            done.append(seq)
        return done

    def finish_codes(self, lanes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Per row, after `tokens` were counted: 0 running, 1 stop id sampled, 2 length (a stop wins).

        Length: `max_new_tokens` generated, or the pending token would need position max_seq_len,
        past the slot (the sequence then holds more than max_seq_len tokens).
        """
        stop = self.stop[lanes]  # (N, S)
        is_stop = (stop == tokens[:, None]).any(axis=1) if stop.shape[1] else np.zeros(len(lanes), dtype=bool)
        is_length = (self.num_generated[lanes] >= self.max_new[lanes]) | (self.position[lanes] >= self.max_seq_len)
        return np.where(is_stop, _STOP, np.where(is_length, _LENGTH, 0))  # (N,)

    def _flush(self) -> None:
        """Every history column is used: copy all live lanes' tokens out and start again at column 0."""
        for seq in self.seqs:
            if seq is not None:
                self.pull(seq)
        self.first[:] = 0
        self.num_columns = 0
