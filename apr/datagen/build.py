"""Problems and SoS+/APR traces for each split, tokenized for lengths, written as JSONL.

    >>> # python -m apr.cli.data task=countdown_n4 data.num_train=1000   (the CLI wraps this)
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from apr.config import check
from apr.protocol import render_tree
from apr.search import SearchConfig, SearchResult, solve, with_prompt_prefix
from apr.search import format as fmt
from apr.task import CountdownConfig, Problem, make_splits, problems_path
from apr.task.splits import DEFAULT_FRACTIONS
from apr.tokenizer import TokenizerConfig, build_tokenizer

SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    out_dir: str = "data/countdown"
    seed: int = 0
    num_train: int = 1000
    num_val: int = 100
    num_test: int = 500
    num_workers: int = 2
    windows: tuple[int, ...] = (512, 768, 1024, 2048)  # per-thread context windows for the fit statistics
    budget_bins: tuple[int, ...] = (512, 1024, 2048, 4096)  # SoS+ token-budget conditioning bins
    progress: bool = True

    def __post_init__(self) -> None:
        for split in SPLITS:
            n = getattr(self, f"num_{split}")
            check(n >= 0, f"data.num_{split}", n, "an integer >= 0")
        check(self.num_workers >= 1, "data.num_workers", self.num_workers, "an integer >= 1")
        check(len(self.windows) > 0 and all(w > 0 for w in self.windows), "data.windows", list(self.windows),
              "a non-empty list of positive token counts")
        check(list(self.budget_bins) == sorted(self.budget_bins) and len(self.budget_bins) > 0,
              "data.budget_bins", list(self.budget_bins), "a non-empty increasing list of token counts")


@dataclass
class TraceRecord:
    """One solver run on one problem, with token lengths of its threads."""

    problem: Problem
    algorithm: str
    solved: bool
    answer: str | None
    beam_size: int
    sub_beam_size: int
    heuristic: str
    thread_tokens: list[int]  # per thread, depth first; [0] is the root
    thread_generated: list[int]
    trace: dict = field(repr=False, default_factory=dict)

    @property
    def num_child_threads(self) -> int:
        return len(self.thread_tokens) - 1

    @property
    def longest_thread(self) -> int:
        return max(self.thread_tokens)

    @property
    def total_tokens(self) -> int:
        return sum(self.thread_tokens)

    def to_json(self) -> str:
        d = {"problem": self.problem.to_dict(), "algorithm": self.algorithm, "solved": self.solved,
             "answer": self.answer, "beam_size": self.beam_size, "sub_beam_size": self.sub_beam_size,
             "heuristic": self.heuristic, "thread_tokens": self.thread_tokens,
             "thread_generated": self.thread_generated, "trace": self.trace}
        return json.dumps(d, separators=(",", ":"))

    @staticmethod
    def from_json(line: str) -> TraceRecord:
        d = json.loads(line)
        d["problem"] = Problem.from_dict(d["problem"])
        return TraceRecord(**d)


def _budget_bin(tokens: int, bins: tuple[int, ...]) -> int:
    return next((b for b in bins if tokens <= b), bins[-1])


def trace_problem(problem: Problem, search: SearchConfig, tokenizer, seed: int,
                  budget_bins: tuple[int, ...] = (512, 1024, 2048, 4096)) -> TraceRecord:
    """Solve `problem`, add the conditioning prefix if configured, and measure thread lengths."""
    result: SearchResult = solve(problem, search, seed)
    trace = result.trace
    threads = render_tree(trace, tokenizer)
    if search.condition and search.algorithm == "sosp":
        trace = with_prompt_prefix(trace, fmt.budget_condition(_budget_bin(len(threads[0].ids), budget_bins)))
        threads = render_tree(trace, tokenizer)
    return TraceRecord(problem, search.algorithm, result.solved, result.answer, result.beam_size,
                       result.sub_beam_size, result.heuristic, [len(t.ids) for t in threads],
                       [t.num_generated for t in threads], trace.to_dict())


# Worker state, set once per process (fork inherits it; spawn rebuilds it).
_WORKER: dict = {}


def _init_worker(searches: dict[str, SearchConfig], tok_cfg: TokenizerConfig, seed: int, bins) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER.update(searches=searches, tokenizer=build_tokenizer(tok_cfg), seed=seed, bins=bins)


def _work(problem: Problem) -> dict[str, TraceRecord]:
    w = _WORKER
    return {name: trace_problem(problem, cfg, w["tokenizer"], w["seed"], w["bins"])
            for name, cfg in w["searches"].items()}


def iter_traces(problems: list[Problem], searches: dict[str, SearchConfig], tok_cfg: TokenizerConfig,
                seed: int, bins: tuple[int, ...], num_workers: int) -> Iterator[dict[str, TraceRecord]]:
    """Traces of every problem under every solver, in problem order, on `num_workers` processes."""
    if num_workers == 1 or len(problems) < 8:
        _init_worker(searches, tok_cfg, seed, bins)
        yield from map(_work, problems)
        return
    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(num_workers, _init_worker, (searches, tok_cfg, seed, bins)) as pool:
        yield from pool.imap(_work, problems, chunksize=8)


def generate_dataset(task: CountdownConfig, searches: dict[str, SearchConfig], data: DataConfig,
                     tok_cfg: TokenizerConfig) -> dict:
    """Write problems, traces, tokenizer and statistics under `data.out_dir`; return the statistics."""
    from tqdm import tqdm

    from apr.datagen.stats import summarize, write_stats

    check_generation(task, data)
    out = Path(data.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(tok_cfg)
    tokenizer.save_pretrained(out / "tokenizer")
    sizes = {s: getattr(data, f"num_{s}") for s in SPLITS}
    splits = make_splits(task, sizes, data.seed)
    check_windows(data, [p for ps in splits.values() for p in ps], tokenizer)
    records: dict[str, dict[str, list[TraceRecord]]] = {}
    for split in SPLITS:
        problems = splits[split]
        (out / split).mkdir(exist_ok=True)
        _write_lines(problems_path(out, split), (json.dumps(p.to_dict()) for p in problems))
        per_solver: dict[str, list[TraceRecord]] = {name: [] for name in searches}
        bar = tqdm(total=len(problems), desc=f"traces {split}", disable=not data.progress, unit="problem")
        for recs in iter_traces(problems, searches, tok_cfg, data.seed, data.budget_bins, data.num_workers):
            for name, rec in recs.items():
                per_solver[name].append(rec)
            bar.update()
        bar.close()
        for name, recs in per_solver.items():
            _write_lines(out / split / f"{name}.jsonl", (r.to_json() for r in recs))
        records[split] = per_solver
    stats = summarize(records, data.windows)
    write_stats(stats, out)
    return stats


# The solvers' traces grow ~5x per number (APR traces on one core: N=6 ~0.7 s and ~80k tokens per
# problem, N=7 ~2 s and ~300k, N=8 ~20 s and ~1.7M; N=20 does not finish): beyond this nothing fits a window.
MAX_NUM_NUMBERS = 7


def max_distinct_problems(task: CountdownConfig) -> int:
    """An upper bound on the distinct problems of `task`: multisets of numbers x targets (fewer are solvable)."""
    span = task.max_number - task.min_number + 1
    return math.comb(span + task.num_numbers - 1, task.num_numbers) * (task.max_target - task.min_target + 1)


def check_generation(task: CountdownConfig, data: DataConfig) -> None:
    """Refuse at once what would hang or fail after minutes: too many numbers, more problems than exist."""
    check(task.num_numbers <= MAX_NUM_NUMBERS, "task.num_numbers", task.num_numbers,
          f"an integer from 2 to {MAX_NUM_NUMBERS} for data generation (traces grow ~5x per number: N=7 already "
          "takes ~2 s and ~300k tokens per APR trace, N=8 ~20 s and ~1.7M)")
    bound = max_distinct_problems(task)
    shares = {"train": 1.0 - sum(DEFAULT_FRACTIONS.values()), **DEFAULT_FRACTIONS}  # what make_splits uses
    for split, share in shares.items():
        n = getattr(data, f"num_{split}")
        check(n <= bound * share, f"data.num_{split}", n,
              f"at most ~{int(bound * share):,}: {task.name} has at most {bound:,} distinct problems (numbers "
              f"{task.min_number}..{task.max_number}, {task.num_numbers} of them; targets {task.min_target}.."
              f"{task.max_target}; fewer are solvable), and about {share:.0%} of them fall in {split}")


def check_windows(data: DataConfig, problems: list[Problem], tokenizer) -> None:
    """Every window must hold the longest root prompt (plus a conditioning line)."""
    from apr.search import problem_prompt

    if not problems:
        return
    longest = max(len(tokenizer.encode(problem_prompt(p), add_special_tokens=False)) for p in problems) + 4
    small = [w for w in data.windows if w < longest]
    check(not small, "data.windows", list(data.windows),
          f"windows of at least {longest} tokens (the longest prompt of this task); {small} are too small")


def _write_lines(path: Path, lines: Iterator[str]) -> None:
    # Atomic: a crash never leaves a half-written file under the final name.
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def read_records(path: str | Path) -> list[TraceRecord]:
    """Trace records of one `<split>/<solver>.jsonl` file."""
    with open(path) as f:
        return [TraceRecord.from_json(line) for line in f if line.strip()]
