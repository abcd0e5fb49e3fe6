"""RL on a local Ray cluster: same results as one process, a killed rollout worker is replaced, resume."""

from __future__ import annotations

import math
import shutil

import pytest

from apr.cluster import make_cluster
from apr.rl.trainer import RLTrainer
from apr.train.metrics import read_metrics
from tests.rl._setup import make_assets, rl_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
KEYS = ("rl/loss", "rl/kl", "rollout/reward", "rl/train_tokens", "rollout/mean_sequential_tokens")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    return make_assets(tokenizer, tmp_path_factory.mktemp("ray_assets"))


def killing_cluster(cfg, kill_at_step: int):
    """Fault injection (tests only, not a config field): rollout worker 0 is killed while it runs step
    `kill_at_step`'s rollouts, once."""
    from apr.cluster.ray_cluster import RayCluster

    class WorkerKillingCluster(RayCluster):
        killed = False

        def launch_rollout(self, shards, num_samples, step=None, temperature=None):
            launched = super().launch_rollout(shards, num_samples, step, temperature)
            if step == kill_at_step and not self.killed:
                self.killed = True
                ray.kill(self.workers[0], no_restart=True)  # its call is in flight: collect sees it die
            return launched

    return WorkerKillingCluster(cfg)


def _run(tmp, assets, kill_at_step: int | None = None, **over):
    init, data = assets
    cfg = rl_config(tmp, init, data, **{"dist.num_rollout_workers": 2, "rollout.eval_problems": 0, **over})
    RLTrainer(cfg, make_cluster(cfg) if kill_at_step is None else killing_cluster(cfg, kill_at_step)).fit()
    return {r["step"]: r for r in read_metrics(tmp / "run") if "rl/loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, assets):
    """The same run in one process (dist=none, the same two shards per step)."""
    return _run(tmp_path_factory.mktemp("inproc"), assets, **{"dist.mode": "none"})


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, ray_cluster, assets):
    """Steps 1-2 on Ray, rollout worker 0 killed during step 1's rollouts, a checkpoint after step 1 and
    `final` after step 2; the resume test continues it to step 3 (one Ray run shared by both tests)."""
    tmp = tmp_path_factory.mktemp("killed")
    rows = _run(tmp, assets, kill_at_step=1, **{"dist.mode": "ray_local", "dist.worker_threads": 1,
                                                "train.steps": 2, "checkpoint.every_steps": 1})
    return tmp / "run", rows


def test_ray_run_equals_one_process_and_survives_a_killed_worker(killed_run, reference):
    run, rows = killed_run
    assert sorted(rows) == [1, 2]
    assert rows[2]["dist/worker_restarts"] >= 1  # worker 0 died during step 1's rollout and was replaced
    for step, row in rows.items():
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
        for k in KEYS:  # the re-run shard used the same weights and seeds: nothing changed
            assert row[k] == pytest.approx(reference[step][k], rel=1e-5, abs=1e-7), (step, k)
    assert (run / "checkpoints" / "step_00000001" / "trainer" / "learner.pt").is_file()
    assert (run / "final" / "model.safetensors").is_file()


def test_ray_resume_gives_the_same_next_step(ray_cluster, killed_run, reference, assets, tmp_path):
    """The 2-step Ray run (a copy of it) resumed from its `final` with train.steps=3: step 3 is the
    uninterrupted one-process run's."""
    shutil.copytree(killed_run[0], tmp_path / "run")
    rows = _run(tmp_path, assets, **{"dist.mode": "ray_local", "resume": True, "resume_changed": True})
    assert sorted(rows) == [1, 2, 3]  # 1-2 from the copied run, 3 from the resumed one
    for k in KEYS:
        assert rows[3][k] == pytest.approx(reference[3][k], rel=1e-5, abs=1e-7), k


def test_placement_group_that_cannot_be_granted_fails_clearly(ray_cluster, assets, tmp_path):
    from apr.cluster.ray_cluster import RayCluster

    init, data = assets
    cfg = rl_config(tmp_path, init, data, **{"dist.mode": "ray_local", "dist.num_rollout_workers": 2,
                                             "dist.placement": {"strategy": "STRICT_SPREAD", "timeout_s": 1.0}})
    with pytest.raises(RuntimeError, match="dist.placement: the cluster did not grant 3 bundles"):
        RayCluster(cfg)  # one node cannot hold three bundles on three different nodes


def test_placement_group_reserves_a_bundle_per_actor_and_its_deepspeed_learner_matches_one_process(
        ray_cluster, reference, assets, tmp_path):
    """dist.placement: the learner + reference and each rollout worker run inside their own CPU bundles;
    a ZeRO-2 learner actor in bundle 0 takes the torch learner's first step; the group is removed when the
    run closes the cluster. (One cluster for both: they were two tests, each starting its own actors.)"""
    from ray.util import placement_group_table

    from apr.cluster.ray_cluster import RayCluster
    from apr.task import load_problems

    try:
        import deepspeed  # noqa: F401
        strategy = "deepspeed"
    except ImportError:  # the placement checks still run, on the torch learner
        strategy = "torch"
    init, data = assets
    cfg = rl_config(tmp_path, init, data, **{"dist.mode": "ray_local", "dist.num_rollout_workers": 2,
                                             "rollout.eval_problems": 0, "train.steps": 1,
                                             "train.strategy": strategy, "train.zero_stage": 2,
                                             "dist.placement": {"strategy": "PACK", "timeout_s": 60.0}})
    cluster = RayCluster(cfg)
    try:
        assert cluster.sync_weights() == 0  # every actor is up
        pg = f"CPU_group_{cluster.pg.id.hex()}"
        assert ray.cluster_resources()[pg] == 3  # learner 1 (+ reference 0) + 2 workers x 1
        assert ray.available_resources().get(pg, 0) == 0  # all of it held by the actors in their bundles
        assert placement_group_table(cluster.pg)["strategy"] == "PACK"
        assert len(cluster.rollout([(load_problems(data, "train", 2), 1, 0)], 2)) == 4  # 2 problems x G=2
    except BaseException:
        cluster.close()
        raise
    RLTrainer(cfg, cluster).fit()  # closes the cluster
    assert placement_group_table(cluster.pg)["state"] == "REMOVED"
    rows = {r["step"]: r for r in read_metrics(tmp_path / "run") if "rl/loss" in r}
    assert sorted(rows) == [1]
    for k in KEYS + ("rl/grad_norm",):  # the torch learner's first step, from a ZeRO-2 learner actor
        assert rows[1][k] == pytest.approx(reference[1][k], rel=1e-4, abs=1e-6), k
    if strategy == "deepspeed":
        assert (tmp_path / "run" / "final" / "trainer" / "deepspeed" / "policy").is_dir()


def test_ray_ref_in_workers_and_off_policy_equal_one_process(ray_cluster, assets, tmp_path):
    """dist.ref_placement=rollout and train.off_policy_steps=1 on Ray (rollouts as futures overlapping the
    learner actor's update) give the one-process numbers, even when the worker running step 2's rollouts
    ahead dies (it is replaced with the weights they were launched on)."""
    over = {"dist.ref_placement": "rollout", "train.off_policy_steps": 1}
    one = _run(tmp_path / "one", assets, **{"dist.mode": "none", **over})
    rows = _run(tmp_path / "ray", assets, kill_at_step=1, **{"dist.mode": "ray_local", "dist.worker_threads": 1,
                                                             **over})
    assert rows[2]["dist/worker_restarts"] >= 1
    assert [rows[s]["rl/policy_lag"] for s in (1, 2, 3)] == [0, 1, 1]
    for step, row in rows.items():
        for k in KEYS:
            assert row[k] == pytest.approx(one[step][k], rel=1e-5, abs=1e-7), (step, k)
