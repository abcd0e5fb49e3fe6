"""Train/val/test splits that depend on a problem's key only, never on a seed or run; reading a split back.

`split_of` hashes the canonical key with sha256 (stable across processes, unlike `hash`),
so a problem that lands in test in one run can never land in train in another.

    >>> from apr.task.countdown import Problem
    >>> split_of(Problem([1, 2, 3], 6)) == split_of(Problem([3, 2, 1], 6))
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from apr.config import ConfigError, check, fail
from apr.task.countdown import Problem
from apr.task.generate import MAX_DRAWS_WITHOUT_PROGRESS, CountdownConfig, iter_problems

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS: dict[str, float] = {"val": 0.05, "test": 0.05}
# <data dir>/<split>/problems.jsonl, one problem per line as JSON (`Problem.to_dict`), written by apr.cli.data
PROBLEMS_FILE = "problems.jsonl"
WRITTEN_BY_DATA_CLI = "a directory written by `python -m apr.cli.data data.out_dir=...`"


def _fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    """Shares of all three splits; `fractions` sets val/test (missing ones take defaults)."""
    given = dict(fractions or {})
    for name, v in given.items():
        check(name in ("val", "test"), f"fractions.{name}", v, "a fraction for val or test (train gets the rest)")
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0
        check(ok, f"fractions.{name}", v, "a number in [0, 1]")
    f = {**DEFAULT_FRACTIONS, **given}
    check(f["val"] + f["test"] <= 1.0, "fractions", f, "val + test <= 1")
    return {"val": float(f["val"]), "test": float(f["test"]), "train": 1.0 - f["val"] - f["test"]}


def _unit_interval(problem: Problem) -> float:
    numbers, target = problem.key
    canonical = "countdown:" + ",".join(str(n) for n in numbers) + "=" + str(target)
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(problem: Problem, fractions: Mapping[str, float] | None = None) -> str:
    """"train", "val" or "test" for `problem`, by a stable hash of its key.

    Default fractions: val 0.05, test 0.05, train the rest.

        >>> split_of(Problem([1, 2], 3), {"val": 1.0, "test": 0.0})
        'val'
    """
    shares = _fractions(fractions)
    u = _unit_interval(problem)
    if u < shares["val"]:
        return "val"
    if u < shares["val"] + shares["test"]:
        return "test"
    return "train"


def _check_sizes(sizes: Mapping[str, int], shares: dict[str, float]) -> None:
    check(isinstance(sizes, Mapping), "sizes", sizes, "a mapping of split name to size")
    for name, size in sizes.items():
        check(name in SPLITS, f"data.num_{name}", size, "a size for train, val or test only")
        field = f"data.num_{name}"
        check(isinstance(size, int) and not isinstance(size, bool) and size >= 0, field, size, "an integer >= 0")
        check(size == 0 or shares[name] > 0, field, size, f"0 (the {name} fraction is 0)")


def make_splits(cfg: CountdownConfig, sizes: Mapping[str, int], seed: int,
                fractions: Mapping[str, float] | None = None) -> dict[str, list[Problem]]:
    """Disjoint splits of exactly `sizes[name]` distinct problems each, deterministic per seed.

    Problems are drawn from `iter_problems(cfg, seed)`; each goes to its hashed split if
    that split still needs problems and is discarded otherwise. Raises `ConfigError` naming
    `data.num_<split>` if the problem space is too small to fill a split.

        >>> s = make_splits(CountdownConfig(num_numbers=3), {"train": 20, "val": 2}, seed=0)
        >>> {k: len(v) for k, v in s.items()}
        {'train': 20, 'val': 2}
    """
    shares = _fractions(fractions)
    _check_sizes(sizes, shares)
    out: dict[str, list[Problem]] = {name: [] for name in sizes}
    missing = sum(sizes.values())
    active = [shares[n] for n, s in sizes.items() if s > 0]
    # A rare split (tiny fraction) legitimately needs ~1/fraction draws per problem.
    limit = max(MAX_DRAWS_WITHOUT_PROGRESS, int(100 / min(active))) if active else 0
    seen: set = set()
    stale = 0
    stream = iter_problems(cfg, seed)
    while missing > 0:
        problem = next(stream)
        name = split_of(problem, fractions)
        if problem.key not in seen and name in out and len(out[name]) < sizes[name]:
            seen.add(problem.key)
            out[name].append(problem)
            missing -= 1
            stale = 0
            continue
        stale += 1
        if stale >= limit:
            short = next(n for n in out if len(out[n]) < sizes[n])
            fail(f"data.num_{short}", sizes[short],
                 f"at most the number of distinct {short} problems; the problem space is too small "
                 f"(found {len(out[short])}, then {stale} draws in a row brought nothing new)")
    return out


def problems_path(data_dir: str | Path, split: str) -> Path:
    """Where a data directory keeps a split's problems: `<data_dir>/<split>/problems.jsonl`."""
    return Path(data_dir) / split / PROBLEMS_FILE


def load_problems(data_dir: str | Path, split: str, max_problems: int | None = None, field: str = "data.dir",
                  purpose: str = "", accepted: str = WRITTEN_BY_DATA_CLI) -> list[Problem]:
    """The first `max_problems` problems (None or 0: all) of a split of a data directory.

    A missing file raises `ConfigError` naming `field` (the config field that holds `data_dir`), e.g.
    "data.dir: 'data/n3' has no val/problems.jsonl<purpose>; accepted: <accepted>".
    """
    path = problems_path(data_dir, split)
    if not path.is_file():
        raise ConfigError(f"{field}: {str(data_dir)!r} has no {split}/{PROBLEMS_FILE}{purpose}; accepted: {accepted}")
    with open(path) as f:
        problems = [Problem.from_dict(json.loads(line)) for line in f if line.strip()]
    return problems[:max_problems] if max_problems else problems
