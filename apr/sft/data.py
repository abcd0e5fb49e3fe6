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

from dataclasses import dataclass
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


@dataclass
class FitReport:
    """How a split fared against `data.max_seq_len`."""

    num_sequences: int
    num_overlong: int
    num_dropped: int
    num_truncated: int
    longest: int
    longest_prompt: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def thread_sequence(ids: list[int], mask: list[int]) -> TrainSequence:
    return TrainSequence(*thread_arrays(ids, mask))


def trace_sequences(trace: ThreadTrace, tokenizer) -> list[TrainSequence]:
    """Every thread of `trace`, depth first, as a `TrainSequence`."""
    return [thread_sequence(t.ids, t.mask) for t in render_tree(trace, tokenizer)]


def load_split(cfg: SFTDataConfig, split: str, tokenizer, max_records: int | None) -> list[TrainSequence]:
    """The sequences of `<dir>/<split>/<solver>.jsonl` (first `max_records` traces), read from the
    token cache beside the file (`apr.datagen.token_cache`, built on first use), or rendered here
    when `data.token_cache=false`. Their arrays are views of the cache's memory maps."""
    path = Path(cfg.dir) / split / f"{cfg.solver}.jsonl"
    if not path.is_file():
        raise ConfigError(f"data.dir: {str(path)!r} does not exist; accepted: a directory written by "
                          f"`python -m apr.cli.data ... data.out_dir={cfg.dir}` (with the {cfg.solver} solver)")
    if not cfg.token_cache:
        records = read_records(path)
        if cfg.solved_only:
            records = [r for r in records if r.solved]
        records = records[:max_records] if max_records else records
        return [s for r in records for s in trace_sequences(ThreadTrace.from_dict(r.trace), tokenizer)]
    arrays = token_cache.load_or_build(path, tokenizer, cfg.num_workers)
    kept = np.array(arrays.record_solved) if cfg.solved_only else np.ones(len(arrays.record_solved), bool)
    if max_records:
        kept &= np.cumsum(kept) <= max_records  # the first max_records of the kept records
    threads = np.flatnonzero(kept[arrays.thread_record]).tolist()
    offsets, num_prompt, ids, labels = arrays.offsets.tolist(), arrays.num_prompt.tolist(), arrays.ids, arrays.labels
    return [TrainSequence(ids[offsets[i]:offsets[i + 1]], labels[offsets[i]:offsets[i + 1]], num_prompt[i]) for i in threads]


def fit_to_window(seqs: list[TrainSequence], cfg: SFTDataConfig, split: str) -> tuple[list[TrainSequence], FitReport]:
    """Apply `data.overlong` to sequences longer than `data.max_seq_len`; fail if the window is too short."""
    window = cfg.max_seq_len
    check(bool(seqs), "data.dir", cfg.dir, f"a data set with {split} traces for solver {cfg.solver!r}")
    longest_prompt = max(s.num_prompt for s in seqs)
    check(longest_prompt < window, "data.max_seq_len", window,
          f"more than {longest_prompt} tokens (the longest {split} prompt)")
    overlong = [s for s in seqs if len(s) > window]
    frac = len(overlong) / len(seqs)
    lengths = sorted(len(s) for s in seqs)
    p50, p90 = lengths[len(lengths) // 2], lengths[int(0.9 * (len(lengths) - 1))]
    if cfg.overlong == "error":
        check(not overlong, "data.max_seq_len", window,
              f"at least {lengths[-1]} tokens (longest {split} thread; data.overlong=error), "
              "or data.overlong=drop|truncate")
    check(frac <= cfg.max_dropped_frac, "data.max_seq_len", window,
          f"a window that fits most threads: {len(overlong)} of {len(seqs)} {split} threads "
          f"({frac:.0%}) are longer (p50 {p50}, p90 {p90}, max {lengths[-1]} tokens; "
          f"data.max_dropped_frac={cfg.max_dropped_frac})")
    if cfg.overlong == "truncate":
        kept = [s if len(s) <= window else TrainSequence(s.ids[:window], s.labels[:window], s.num_prompt)
                for s in seqs]
    else:
        kept = [s for s in seqs if len(s) <= window]
    dropped = len(seqs) - len(kept)
    report = FitReport(len(seqs), len(overlong), dropped, len(overlong) - dropped, lengths[-1], longest_prompt)
    return kept, report
