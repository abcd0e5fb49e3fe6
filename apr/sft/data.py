"""Solver traces -> one training sequence per thread (ids + labels), fitted to the window.

Every thread of a trace (the root and each child) is its own sequence. Labels are the ids
where the thread generated the token and -100 on the prompt and on runtime-written results;
`LlamaForCausalLM` shifts labels itself, so they are NOT shifted here.

    >>> from apr.search.trace import Segment, ThreadTrace
    >>> from apr.tokenizer import build_tokenizer
    >>> tok = build_tokenizer()
    >>> (s,) = trace_sequences(ThreadTrace("node 0 5:[2,3] []\\n", [Segment.text_("answer 2+3\\n")]), tok)
    >>> len(s.ids), s.num_prompt, int((s.labels != -100).sum())
    (19, 13, 6)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apr.config import ConfigError, check
from apr.datagen import token_cache
from apr.datagen.build import read_records
from apr.datagen.token_cache import IGNORE, thread_arrays
from apr.protocol import render_tree
from apr.search.trace import ThreadTrace
from apr.sft.config import SFTDataConfig


@dataclass
class TrainSequence:
    """One thread as a training sequence."""

    ids: np.ndarray  # (T,) int32 token ids, starting with <bos> (int32: half the memory of int64)
    labels: np.ndarray  # (T,) int32: ids where generated, IGNORE elsewhere (unshifted)
    num_prompt: int  # tokens before the first generated one

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE).sum())


class Sequences:
    """Training sequences as views into flat arrays: sequence i is `ids[starts[i]:starts[i] + lengths[i]]`.

    The token cache's memory maps are read this way without one Python object per thread (138k threads
    of 20k N=4 traces: ~1 s as objects, ~ms as arrays); `seqs[i]` is a `TrainSequence` of views.

        >>> s = Sequences.of([TrainSequence(np.array([2, 7, 8]), np.array([-100, -100, 8]), 2)])
        >>> len(s), s.lengths.tolist(), s[0].ids.tolist()
        (1, [3], [2, 7, 8])
    """

    def __init__(self, ids: np.ndarray, labels: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 num_prompt: np.ndarray) -> None:
        self.ids, self.labels = ids, labels  # (N,) int32 each: every sequence's tokens, flat
        self.starts = np.asarray(starts, dtype=np.int64)  # (S,)
        self.lengths = np.asarray(lengths, dtype=np.int64)  # (S,)
        self.num_prompt = np.asarray(num_prompt, dtype=np.int64)  # (S,)

    @classmethod
    def of(cls, seqs: Iterable[TrainSequence]) -> Sequences:
        """`Sequences` holding copies of `seqs` (a `Sequences` is returned as it is)."""
        if isinstance(seqs, Sequences):
            return seqs
        seqs = list(seqs)
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        starts = np.zeros(len(seqs), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(_flat([s.ids for s in seqs]), _flat([s.labels for s in seqs]), starts, lengths,
                   np.array([s.num_prompt for s in seqs], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        a, n = int(self.starts[i]), int(self.lengths[i])
        return TrainSequence(self.ids[a:a + n], self.labels[a:a + n], int(self.num_prompt[i]))

    def __iter__(self) -> Iterator[TrainSequence]:
        return (self[i] for i in range(len(self)))

    def select(self, index: np.ndarray) -> Sequences:
        """The sequences at `index` (integer positions or a boolean mask), sharing the flat arrays."""
        return Sequences(self.ids, self.labels, self.starts[index], self.lengths[index], self.num_prompt[index])

    def truncated(self, window: int) -> Sequences:
        """Every sequence cut to its first `window` tokens."""
        return Sequences(self.ids, self.labels, self.starts, np.minimum(self.lengths, window), self.num_prompt)


def _flat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


@dataclass
class FitReport:
    """How a split fared against `data.max_seq_len`."""

    num_sequences: int
    num_overlong: int
    num_dropped: int
    num_truncated: int
    longest: int
    longest_prompt: int
    drills: dict = field(default_factory=dict)  # arithmetic drill sequences added (apr.sft.drills)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def thread_sequence(ids: list[int], mask: list[int]) -> TrainSequence:
    return TrainSequence(*thread_arrays(ids, mask))


def trace_sequences(trace: ThreadTrace, tokenizer) -> list[TrainSequence]:
    """Every thread of `trace`, depth first, as a `TrainSequence`."""
    return [thread_sequence(t.ids, t.mask) for t in render_tree(trace, tokenizer)]


def load_split(cfg: SFTDataConfig, split: str, tokenizer, max_records: int | None) -> Sequences:
    """The sequences of `<dir>/<split>/<solver>.jsonl` (first `max_records` traces), read from the
    token cache beside the file (`apr.datagen.token_cache`, built on first use), or rendered here
    when `data.token_cache=false`. With the cache, their arrays are views of its memory maps."""
    path = Path(cfg.dir) / split / f"{cfg.solver}.jsonl"
    if not path.is_file():
        raise ConfigError(f"data.dir: {str(path)!r} does not exist; accepted: a directory written by "
                          f"`python -m apr.cli.data ... data.out_dir={cfg.dir}` (with the {cfg.solver} solver)")
    if not cfg.token_cache:
        records = read_records(path)
        if cfg.solved_only:
            records = [r for r in records if r.solved]
        records = records[:max_records] if max_records else records
        return Sequences.of(s for r in records for s in trace_sequences(ThreadTrace.from_dict(r.trace), tokenizer))
    arrays = token_cache.load_or_build(path, tokenizer, cfg.num_workers)
    kept = np.array(arrays.record_solved) if cfg.solved_only else np.ones(len(arrays.record_solved), bool)
    if max_records:
        kept &= np.cumsum(kept) <= max_records  # the first max_records of the kept records
    threads = np.flatnonzero(kept[arrays.thread_record])  # (S,)
    offsets = arrays.offsets
    return Sequences(arrays.ids, arrays.labels, offsets[threads], (offsets[1:] - offsets[:-1])[threads],
                     arrays.num_prompt[threads])


def fit_to_window(seqs: Sequences | list[TrainSequence], cfg: SFTDataConfig,
                  split: str) -> tuple[Sequences, FitReport]:
    """Apply `data.overlong` to sequences longer than `data.max_seq_len`; fail if the window is too short."""
    seqs = Sequences.of(seqs)
    window = cfg.max_seq_len
    check(len(seqs) > 0, "data.dir", cfg.dir, f"a data set with {split} traces for solver {cfg.solver!r}")
    longest_prompt = int(seqs.num_prompt.max())
    check(longest_prompt < window, "data.max_seq_len", window,
          f"more than {longest_prompt} tokens (the longest {split} prompt)")
    overlong = seqs.lengths > window  # (S,)
    num_overlong = int(overlong.sum())
    frac = num_overlong / len(seqs)
    lengths = np.sort(seqs.lengths)
    p50, p90, longest = int(lengths[len(lengths) // 2]), int(lengths[int(0.9 * (len(lengths) - 1))]), int(lengths[-1])
    if cfg.overlong == "error":
        check(not num_overlong, "data.max_seq_len", window,
              f"at least {longest} tokens (longest {split} thread; data.overlong=error), "
              "or data.overlong=drop|truncate")
    check(frac <= cfg.max_dropped_frac, "data.max_seq_len", window,
          f"a window that fits most threads: {num_overlong} of {len(seqs)} {split} threads "
          f"({frac:.0%}) are longer (p50 {p50}, p90 {p90}, max {longest} tokens; "
          f"data.max_dropped_frac={cfg.max_dropped_frac})")
    kept = seqs.truncated(window) if cfg.overlong == "truncate" else seqs.select(~overlong)
    dropped = len(seqs) - len(kept)
    report = FitReport(len(seqs), num_overlong, dropped, num_overlong - dropped, longest, longest_prompt)
    return kept, report
