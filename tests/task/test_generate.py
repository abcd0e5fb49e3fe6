"""Generators, configuration errors and hash-stable splits."""

from __future__ import annotations

import itertools

import pytest

from apr.config import ConfigError, from_dict
from apr.task import (
    CountdownConfig,
    Problem,
    generate_problems,
    is_solvable,
    iter_problems,
    make_splits,
    split_of,
)


@pytest.mark.parametrize("generator", ["target_first", "construct"])
@pytest.mark.parametrize("n", [3, 4, 5])
def test_generated_problems_are_valid(generator, n):
    cfg = CountdownConfig(num_numbers=n, min_number=2, max_number=40, min_target=20, max_target=90,
                          generator=generator)
    problems = generate_problems(cfg, 40 if n < 5 else 15, seed=1)
    assert len({p.key for p in problems}) == len(problems)
    for p in problems:
        assert len(p.numbers) == n
        assert all(2 <= x <= 40 for x in p.numbers)
        assert 20 <= p.target <= 90
        assert is_solvable(p), p


@pytest.mark.parametrize("generator", ["target_first", "construct"])
def test_generation_is_deterministic_per_seed(generator):
    cfg = CountdownConfig(num_numbers=4, generator=generator)
    a = generate_problems(cfg, 50, seed=5)
    assert a == generate_problems(cfg, 50, seed=5)
    assert a != generate_problems(cfg, 50, seed=6)
    assert generate_problems(cfg, 20, seed=5) == a[:20]  # a prefix: size does not reshuffle
    stream = list(itertools.islice(iter_problems(cfg, 5), 30))
    assert stream == list(itertools.islice(iter_problems(cfg, 5), 30))


def test_target_first_targets_cover_the_range():
    # The paper's distribution draws the target first: every target in range should appear.
    cfg = CountdownConfig(num_numbers=3, min_target=10, max_target=30)
    targets = {p.target for p in generate_problems(cfg, 400, seed=0)}
    assert targets == set(range(10, 31))


def test_generators_differ():
    a = generate_problems(CountdownConfig(num_numbers=4, generator="target_first"), 30, seed=0)
    b = generate_problems(CountdownConfig(num_numbers=4, generator="construct"), 30, seed=0)
    assert {p.key for p in a} != {p.key for p in b}


def test_config_from_dict():
    cfg = from_dict(CountdownConfig, {"num_numbers": 3, "generator": "construct"}, "task")
    assert cfg.num_numbers == 3 and cfg.generator == "construct" and cfg.max_number == 99


@pytest.mark.parametrize("kwargs, field", [
    ({"num_numbers": 1}, "task.num_numbers"),
    ({"num_numbers": True}, "task.num_numbers"),
    ({"num_numbers": 3.0}, "task.num_numbers"),
    ({"min_number": -1}, "task.min_number"),
    ({"min_number": 50, "max_number": 10}, "task.max_number"),
    ({"min_target": -5}, "task.min_target"),
    ({"min_target": 100, "max_target": 10}, "task.max_target"),
    ({"generator": "random"}, "task.generator"),
    ({"name": ""}, "task.name"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field}: got "):
        CountdownConfig(**kwargs)


def test_config_error_message_format():
    with pytest.raises(ConfigError, match=r"^task.num_numbers: got 1; accepted: an integer >= 2$"):
        CountdownConfig(num_numbers=1)


TINY = CountdownConfig(num_numbers=2, min_number=1, max_number=2, min_target=1, max_target=4)


def test_too_small_problem_space():
    assert len(generate_problems(TINY, 5, seed=0)) == 5
    with pytest.raises(ConfigError, match="^n: got 50;.*too small"):
        generate_problems(TINY, 50, seed=0)
    with pytest.raises(ConfigError, match="^data.num_train: got 100;.*problem space is too small"):
        make_splits(TINY, {"train": 100}, seed=0, fractions={"val": 0.0, "test": 0.0})
    with pytest.raises(ConfigError, match="^data.num_val: got 30;.*problem space is too small"):
        make_splits(TINY, {"train": 1, "val": 30}, seed=0, fractions={"val": 0.5, "test": 0.0})


def test_unsatisfiable_generator_raises():
    cfg = CountdownConfig(num_numbers=2, min_number=1, max_number=1, min_target=50, max_target=60)
    with pytest.raises(ConfigError, match="^task.generator"):
        generate_problems(cfg, 1, seed=0)


SPLIT_CFG = CountdownConfig(num_numbers=2, min_number=1, max_number=30, min_target=10, max_target=100)
FRACTIONS = {"val": 0.2, "test": 0.2}


def _check_splits(splits, sizes, fractions):
    assert {k: len(v) for k, v in splits.items()} == sizes
    keys = [p.key for ps in splits.values() for p in ps]
    assert len(keys) == len(set(keys))  # disjoint and unique
    for name, ps in splits.items():
        assert all(split_of(p, fractions) == name for p in ps)


def test_splits_exact_disjoint_and_stable_across_seeds():
    sizes1 = {"train": 300, "val": 60, "test": 60}
    sizes2 = {"train": 150, "val": 90, "test": 40}
    s1 = make_splits(SPLIT_CFG, sizes1, seed=1, fractions=FRACTIONS)
    s2 = make_splits(SPLIT_CFG, sizes2, seed=2, fractions=FRACTIONS)
    _check_splits(s1, sizes1, FRACTIONS)
    _check_splits(s2, sizes2, FRACTIONS)
    assert s1 == make_splits(SPLIT_CFG, sizes1, seed=1, fractions=FRACTIONS)
    where1 = {p.key: name for name, ps in s1.items() for p in ps}
    where2 = {p.key: name for name, ps in s2.items() for p in ps}
    shared = where1.keys() & where2.keys()
    assert len(shared) > 50  # the problem space is small, so the runs overlap a lot
    assert all(where1[k] == where2[k] for k in shared)
    # Generator settings do not move problems either.
    s3 = make_splits(CountdownConfig(num_numbers=2, max_number=30, generator="construct"),
                     {"val": 30, "test": 30}, seed=3, fractions=FRACTIONS)
    assert all(where1.get(p.key, name) == name for name, ps in s3.items() for p in ps)


def test_default_fractions_and_order_invariance():
    problems = [Problem([a, b, c], t) for a, b, c, t in itertools.product(range(1, 8), range(1, 8), [5], range(60))]
    counts = {"train": 0, "val": 0, "test": 0}
    for p in problems:
        counts[split_of(p)] += 1
        assert split_of(p) == split_of(Problem(list(reversed(p.numbers)), p.target))
    total = len(problems)
    assert abs(counts["val"] / total - 0.05) < 0.01 and abs(counts["test"] / total - 0.05) < 0.01
    assert split_of(Problem([1, 2], 3), {"val": 0.0, "test": 1.0}) == "test"
    assert split_of(Problem([1, 2], 3), {"val": 0.0, "test": 0.0}) == "train"


def test_default_splits_n4():
    sizes = {"train": 200, "val": 10, "test": 10}
    splits = make_splits(CountdownConfig(), sizes, seed=0)
    _check_splits(splits, sizes, None)


@pytest.mark.parametrize("sizes, fractions, field", [
    ({"train": -1}, None, "data.num_train"),
    ({"val": 2.5}, None, "data.num_val"),
    ({"dev": 3}, None, "data.num_dev"),
    ({"test": 3}, {"val": 0.1, "test": 0.0}, "data.num_test"),
    ({"train": 3}, {"val": 0.6, "test": 0.6}, "fractions"),
    ({"train": 3}, {"val": -0.1}, "fractions.val"),
    ({"train": 3}, {"train": 0.9}, "fractions.train"),
])
def test_split_config_errors(sizes, fractions, field):
    with pytest.raises(ConfigError, match=rf"^{field}: got "):
        make_splits(SPLIT_CFG, sizes, seed=0, fractions=fractions)
