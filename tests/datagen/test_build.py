import json

import pytest

from apr.config import ConfigError
from apr.datagen import DataConfig, generate_dataset, trace_problem
from apr.datagen.build import read_records
from apr.datagen.stats import percentiles
from apr.search import SearchConfig
from apr.task import CountdownConfig, Problem, verify
from apr.tokenizer import TokenizerConfig

SOLVERS = {"sosp": SearchConfig("sosp", condition=True), "apr": SearchConfig("apr", promising_prob=0.9)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    data = DataConfig(out_dir=str(out), num_train=24, num_val=8, num_test=8, num_workers=2, progress=False)
    stats = generate_dataset(CountdownConfig(num_numbers=4), SOLVERS, data, TokenizerConfig())
    return out, stats


def test_files_and_records(dataset, tokenizer):
    out, stats = dataset
    keys = {}
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        problems = [json.loads(line) for line in open(out / split / "problems.jsonl")]
        assert len(problems) == n
        keys[split] = {(tuple(sorted(p["numbers"])), p["target"]) for p in problems}
        for name in SOLVERS:
            recs = read_records(out / split / f"{name}.jsonl")
            assert [r.problem.to_dict() for r in recs] == problems
            for r in recs:
                assert r.solved == (r.answer is not None)
                if r.solved:
                    assert verify(r.problem, r.answer)
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["val"]) and not (keys["val"] & keys["test"])
    assert (out / "tokenizer" / "tokenizer.json").exists()
    assert json.loads((out / "stats.json").read_text()) == stats
    assert "| sosp |" in (out / "stats.md").read_text()


def test_statistics_are_consistent(dataset):
    _, stats = dataset
    for split in ("train", "val", "test"):
        sosp, apr = stats[split]["sosp"], stats[split]["apr"]
        assert sosp["child_threads"]["max"] == 0
        # same pruned tree per seed: same success rate
        assert sosp["success_rate"] == apr["success_rate"]
        for s in (sosp, apr):
            shares = list(s["solved_within_window"].values())
            assert shares == sorted(shares) and shares[-1] <= s["success_rate"]
        assert apr["longest_thread_tokens"]["p50"] <= apr["total_tokens"]["p50"]


def test_budget_conditioning_matches_length(tokenizer):
    rec = trace_problem(Problem([22, 26, 31, 53], 27), SOLVERS["sosp"], tokenizer, seed=0)
    first = rec.trace["prompt"].split("\n")[0]
    assert first.startswith("budget ")
    budget = int(first.split()[1])
    assert rec.thread_tokens[0] - 3 <= budget  # the bin holds the unconditioned trace


def test_parallel_and_serial_generation_agree(tmp_path):
    kw = dict(num_train=16, num_val=0, num_test=0, progress=False)
    a = generate_dataset(CountdownConfig(num_numbers=3), SOLVERS, DataConfig(out_dir=str(tmp_path / "a"), num_workers=1, **kw),
                         TokenizerConfig())
    b = generate_dataset(CountdownConfig(num_numbers=3), SOLVERS, DataConfig(out_dir=str(tmp_path / "b"), num_workers=2, **kw),
                         TokenizerConfig())
    assert a == b
    assert (tmp_path / "a/train/apr.jsonl").read_text() == (tmp_path / "b/train/apr.jsonl").read_text()


def test_percentiles():
    p = percentiles(list(range(1, 101)))
    assert (p["p10"], p["p50"], p["p90"], p["p99"], p["max"]) == (10, 50, 90, 99, 100)
    assert percentiles([])["max"] == 0


@pytest.mark.parametrize("kwargs,field", [({"num_train": -1}, "data.num_train"), ({"num_workers": 0}, "data.num_workers"),
                                          ({"windows": ()}, "data.windows"), ({"budget_bins": (10, 5)}, "data.budget_bins")])
def test_bad_data_config(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DataConfig(**kwargs)


def test_window_smaller_than_prompt(tmp_path):
    data = DataConfig(out_dir=str(tmp_path), num_train=4, num_val=0, num_test=0, windows=(8, 512), progress=False)
    with pytest.raises(ConfigError, match="data.windows"):
        generate_dataset(CountdownConfig(num_numbers=4), SOLVERS, data, TokenizerConfig())
