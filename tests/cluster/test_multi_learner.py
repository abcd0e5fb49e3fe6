"""Data-parallel learners (`dist.num_learners=2`, gloo on CPU): the same steps as one learner, under
plain torch and DeepSpeed ZeRO-2, and exact resume; the batch sharding and the config checks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from apr.cluster import make_cluster
from apr.config import ConfigError
from apr.rl.batch import shard_rows
from apr.rl.trainer import RLTrainer
from apr.train.metrics import read_metrics
from tests.rl._setup import make_assets, rl_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
KEYS = ("rl/loss", "rl/grad_norm", "rl/kl", "rollout/reward", "rl/train_tokens", "rl/train_sequences")
TWO = {"dist.mode": "ray_local", "dist.num_learners": 2}


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    return make_assets(tokenizer, tmp_path_factory.mktemp("multi_assets"))


def _run(tmp, assets, **over):
    init, data = assets
    cfg = rl_config(tmp, init, data, **{"train.steps": 2, "rollout.eval_problems": 0, "checkpoint.every_steps": 0,
                                        "dist.learner_cpus": 1.0, **over})
    RLTrainer(cfg, make_cluster(cfg)).fit()
    return {r["step"]: r for r in read_metrics(tmp / "run") if "rl/loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, assets):
    """Two steps of one learner in one process."""
    return _run(tmp_path_factory.mktemp("one"), assets, **{"dist.mode": "none"})


@pytest.fixture(scope="module")
def two_learners_run(tmp_path_factory, ray_cluster, assets):
    """Two steps of two learners on Ray, a checkpoint after step 1 (the resume test starts from it)."""
    tmp = tmp_path_factory.mktemp("two")
    return tmp / "run", _run(tmp, assets, **TWO, **{"checkpoint.every_steps": 1})


@pytest.fixture(scope="module")
def two_learners(two_learners_run):
    return two_learners_run[1]


def _assert_same(rows, reference, steps):
    assert sorted(rows) == list(steps)
    for step in steps:
        assert all(math.isfinite(v) for v in rows[step].values() if isinstance(v, float))
        for k in KEYS:  # the float sums run in another order: equal up to rounding
            assert rows[step][k] == pytest.approx(reference[step][k], rel=1e-4, abs=1e-6), (step, k)


def test_two_torch_learners_equal_one(two_learners, reference):
    _assert_same(two_learners, reference, [1, 2])


def test_two_deepspeed_zero2_learners_equal_one_torch_learner(ray_cluster, assets, reference, tmp_path):
    pytest.importorskip("deepspeed")
    rows = _run(tmp_path, assets, **TWO, **{"train.steps": 1, "train.strategy": "deepspeed", "train.zero_stage": 2})
    _assert_same(rows, reference, [1])
    assert (tmp_path / "run" / "final" / "trainer" / "deepspeed" / "policy").is_dir()


def test_two_learners_resume_gives_the_same_next_step(ray_cluster, assets, two_learners_run, tmp_path):
    """The two-learner run as it stood after step 1's checkpoint (a copy without `final` and step 2's
    metrics), resumed: step 2 is the uninterrupted run's."""
    src, uninterrupted = two_learners_run
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=lambda d, names: ["final"] if Path(d) == src else [])
    kept = [line for line in (run / "metrics.jsonl").read_text().splitlines(keepends=True)
            if json.loads(line).get("step", 0) <= 1]
    (run / "metrics.jsonl").write_text("".join(kept))
    assert sorted(r["step"] for r in read_metrics(run) if "rl/loss" in r) == [1]
    assert not (run / "final").exists()
    assert (run / "checkpoints" / "step_00000001" / "trainer" / "rng_rank1.pt").is_file()  # rank 1's own state
    rows = _run(tmp_path, assets, **TWO, resume=True)
    assert sorted(rows) == [1, 2]
    for k in KEYS:
        assert rows[2][k] == pytest.approx(uninterrupted[2][k], rel=1e-5, abs=1e-7), k


def test_shard_rows_balances_tokens_and_needs_a_row_per_learner():
    shards = shard_rows([9, 1, 1, 1, 8, 2], 2)
    assert sorted(r for s in shards for r in s) == list(range(6))
    assert [sum([9, 1, 1, 1, 8, 2][r] for r in s) for s in shards] == [11, 11]
    with pytest.raises(ValueError, match="dist.num_learners=3"):
        shard_rows([4, 5], 3)


def test_num_learners_is_validated(assets, tmp_path):
    init, data = assets
    with pytest.raises(ConfigError, match="dist.num_learners"):
        rl_config(tmp_path, init, data, **{"dist.mode": "none", "dist.num_learners": 2})
    with pytest.raises(ConfigError, match="dist.num_learners"):
        rl_config(tmp_path, init, data, **{"dist.mode": "ray_local", "dist.num_learners": 0})


def test_deepspeed_learners_with_uneven_micro_batches_equal_one(ray_cluster, assets, tmp_path):
    """Rank 0 gets one row, rank 1 the rest, a micro-batch per row: rank 0 repeats a weight-0 micro-batch
    so that ZeRO-2's per-backward reductions stay matched, and the step is still one learner's."""
    pytest.importorskip("deepspeed")
    from apr.cluster.ray_cluster import RayCluster
    from apr.rl.algos import aggregation_denominator
    from apr.rl.learner import Learner
    from apr.rl.sequences import sequences_from_trees
    from apr.task import load_problems

    init, data = assets
    common = {"train.micro_batch_tokens": 16, "loss.kl_coef": 0.0, "rollout.eval_problems": 0}
    cluster = RayCluster(rl_config(tmp_path, init, data, **TWO, **common, **{"train.strategy": "deepspeed"}))
    try:
        rollouts = cluster.rollout([(load_problems(data, "train", 4), 1, 0)], 2)
        batch = sequences_from_trees([r.tree for r in rollouts], [r.reward for r in rollouts],
                                     [r.problem_index for r in rollouts], "grpo", "root")
        denom = aggregation_denominator("token_mean", batch.mask, batch.seq_weights)
        shards = ([0], list(range(1, len(batch))))
        got = ray.get([a.update.remote(batch.select(rows), None, denom, batch.num_tokens)
                       for a, rows in zip(cluster.learners, shards)], timeout=300)[0]
    finally:
        cluster.close()
    want = Learner(rl_config(tmp_path, init, data, **common)).update(batch)
    for k in ("rl/loss", "rl/grad_norm", "rl/kl", "rl/clip_frac", "rl/train_tokens", "rl/train_sequences"):
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
