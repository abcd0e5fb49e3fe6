"""RL on a local Ray cluster: same results as one process, a killed rollout worker is replaced, resume."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import pytest

from apr.dist import make_cluster
from apr.rl.trainer import RLTrainer
from apr.sft.metrics import read_metrics
from tests.rl._setup import make_checkpoint, make_data, rl_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
KEYS = ("rl/loss", "rl/kl", "rollout/reward", "rl/train_tokens", "rollout/sequential_tokens")


@pytest.fixture(scope="module")
def ray_cluster():
    tmp = tempfile.mkdtemp(prefix="apr-ray-")  # short: Ray's socket paths live under it
    ray.init(num_cpus=4, include_dashboard=False, logging_level="warning", _temp_dir=tmp,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # workers import tests.rl._setup's reward
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ray_assets")
    return make_checkpoint(tokenizer, root / "init"), make_data(root / "data")


def _run(tmp, assets, **over):
    init, data = assets
    cfg = rl_config(tmp, init, data, **{"dist.num_rollout_workers": 2, "rollout.eval_problems": 0, **over})
    RLTrainer(cfg, make_cluster(cfg)).fit()
    return {r["step"]: r for r in read_metrics(tmp / "run") if "rl/loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, assets):
    """The same run in one process (dist=none, the same two shards per step)."""
    return _run(tmp_path_factory.mktemp("inproc"), assets, **{"dist.mode": "none"})


def test_ray_run_equals_one_process_and_survives_a_killed_worker(ray_cluster, reference, assets, tmp_path):
    rows = _run(tmp_path, assets, **{"dist.mode": "ray_local", "dist.kill_worker_at_step": 1,
                                     "dist.worker_threads": 1})
    assert sorted(rows) == [1, 2, 3]
    assert rows[2]["dist/worker_restarts"] >= 1  # worker 0 died during step 1's rollout and was replaced
    for step, row in rows.items():
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
        for k in KEYS:  # the re-run shard used the same weights and seeds: nothing changed
            assert row[k] == pytest.approx(reference[step][k], rel=1e-5, abs=1e-7), (step, k)
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "learner.pt").is_file()
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_ray_resume_gives_the_same_next_step(ray_cluster, reference, assets, tmp_path):
    _run(tmp_path, assets, **{"dist.mode": "ray_local", "train.steps": 2})
    rows = _run(tmp_path, assets, **{"dist.mode": "ray_local", "resume": True})
    assert sorted(rows) == [1, 2, 3]
    for k in KEYS:
        assert rows[3][k] == pytest.approx(reference[3][k], rel=1e-5, abs=1e-7), k
