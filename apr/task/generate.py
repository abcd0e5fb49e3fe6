"""Seeded Countdown problem generators and hash-stable train/val/test splits.

Two distributions:

* ``target_first`` (the APR paper's): draw a target and the numbers uniformly, keep the
  set only if the exhaustive solver finds a solution.
* ``construct``: draw the numbers, merge random pairs with random SoS moves until one value
  is left; that value is the target (kept only if inside the target range).

Splits live in `apr.task.splits`.

    >>> cfg = CountdownConfig(num_numbers=3)
    >>> ps = generate_problems(cfg, 3, seed=0)
    >>> len({p.key for p in ps}), all(len(p.numbers) == 3 for p in ps)
    (3, True)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from apr.config import check, fail
from apr.task.countdown import Problem, combine
from apr.task.solver import is_solvable

GENERATORS = ("target_first", "construct")
# Draws in a row that may bring nothing new before we declare the problem space exhausted.
MAX_DRAWS_WITHOUT_PROGRESS = 10_000


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class CountdownConfig:
    """What problems to draw; errors name `task.<field>`.

        >>> CountdownConfig(num_numbers=1)
        Traceback (most recent call last):
        ...
        apr.config.ConfigError: task.num_numbers: got 1; accepted: an integer >= 2
    """

    num_numbers: int = 4
    min_number: int = 1
    max_number: int = 99
    min_target: int = 10
    max_target: int = 100
    generator: str = "target_first"
    name: str = "countdown"

    def __post_init__(self) -> None:
        check(_int(self.num_numbers) and self.num_numbers >= 2, "task.num_numbers", self.num_numbers,
              "an integer >= 2")
        for f in ("min_number", "min_target"):
            v = getattr(self, f)
            check(_int(v) and v >= 0, f"task.{f}", v, "an integer >= 0")
        for lo, hi in (("min_number", "max_number"), ("min_target", "max_target")):
            v = getattr(self, hi)
            check(_int(v) and v >= getattr(self, lo), f"task.{hi}", v, f"an integer >= task.{lo} ({getattr(self, lo)})")
        check(self.generator in GENERATORS, "task.generator", self.generator, "one of " + ", ".join(GENERATORS))
        check(isinstance(self.name, str) and self.name != "", "task.name", self.name, "a non-empty string")


def _draw_numbers(cfg: CountdownConfig, rng: random.Random) -> list[int]:
    return [rng.randint(cfg.min_number, cfg.max_number) for _ in range(cfg.num_numbers)]


def _target_first(cfg: CountdownConfig, rng: random.Random) -> Problem | None:
    target = rng.randint(cfg.min_target, cfg.max_target)
    problem = Problem(_draw_numbers(cfg, rng), target)
    return problem if is_solvable(problem) else None


def _construct(cfg: CountdownConfig, rng: random.Random) -> Problem | None:
    numbers = _draw_numbers(cfg, rng)
    values = list(numbers)
    while len(values) > 1:
        i, j = rng.sample(range(len(values)), 2)
        op = rng.choice(combine(values[i], values[j]))
        values = [v for k, v in enumerate(values) if k not in (i, j)] + [op.result]
    target = values[0]
    if not cfg.min_target <= target <= cfg.max_target:
        return None
    return Problem(numbers, target)


def draw_problem(cfg: CountdownConfig, rng: random.Random) -> Problem | None:
    """One attempt of `cfg.generator`: a solvable problem, or None if the draw was rejected.

        >>> rng = random.Random(3)
        >>> cfg = CountdownConfig(num_numbers=2, generator="construct")
        >>> draw_problem(cfg, rng), draw_problem(cfg, rng)
        (Problem(numbers=(31, 76), target=45), None)
    """
    return _target_first(cfg, rng) if cfg.generator == "target_first" else _construct(cfg, rng)


def iter_problems(cfg: CountdownConfig, seed: int) -> Iterator[Problem]:
    """Endless deterministic stream of solvable problems (may repeat) from `random.Random(seed)`.

    Raises `ConfigError` if `MAX_DRAWS_WITHOUT_PROGRESS` draws in a row are all rejected.

        >>> next(iter_problems(CountdownConfig(num_numbers=3), seed=1)).target
        37
    """
    rng = random.Random(seed)
    rejected = 0
    while True:
        problem = draw_problem(cfg, rng)
        if problem is not None:
            rejected = 0
            yield problem
            continue
        rejected += 1
        if rejected >= MAX_DRAWS_WITHOUT_PROGRESS:
            fail("task.generator", cfg.generator,
                 f"settings under which some draws are solvable and in range ({rejected} draws in a row "
                 "were rejected; widen the number or target ranges)")


def generate_problems(cfg: CountdownConfig, n: int, seed: int) -> list[Problem]:
    """`n` distinct problems (by `Problem.key`), in stream order; deterministic per seed.

        >>> [p.key for p in generate_problems(CountdownConfig(num_numbers=2), 2, seed=0)]
        [((70, 90), 20), ((12, 48), 60)]
    """
    check(_int(n) and n >= 0, "n", n, "an integer >= 0")
    seen: set = set()
    out: list[Problem] = []
    stale = 0
    stream = iter_problems(cfg, seed)
    while len(out) < n:
        problem = next(stream)
        if problem.key in seen:
            stale += 1
            if stale >= MAX_DRAWS_WITHOUT_PROGRESS:
                fail("n", n, f"at most the number of distinct problems (found {len(out)}; the problem space is too small)")
            continue
        stale = 0
        seen.add(problem.key)
        out.append(problem)
    return out
