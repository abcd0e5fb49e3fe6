"""The DeepSpeed learner on CPU (one process, gloo): the same update as plain torch under ZeRO 0-3,
an RL run that trains and matches torch's first step, and exact resume under ZeRO-2."""

from __future__ import annotations

import copy
import math

import pytest
import torch

pytest.importorskip("deepspeed")

from apr.cluster.in_process import InProcessCluster
from apr.model import load_checkpoint  # noqa: E402
from apr.rl.learner import Learner  # noqa: E402
from apr.rl.sequences import sequences_from_trees  # noqa: E402
from apr.rl.trainer import RLTrainer  # noqa: E402
from apr.train.metrics import read_metrics  # noqa: E402
from tests.rl._setup import make_checkpoint, make_data, rl_config  # noqa: E402

DS = {"train.strategy": "deepspeed", "train.zero_stage": 2}


@pytest.fixture(autouse=True)
def ds_env(monkeypatch):
    # one process, CPU accelerator; monkeypatch restores the environment after each test
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)  # the learner sets them; removed again afterwards


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ds_rl_assets")
    return make_checkpoint(tokenizer, root / "init"), make_data(root / "data")


@pytest.fixture(scope="module")
def rollout_batch(tmp_path_factory, assets):
    """One step's sequences (4 problems x G=2, every thread), from the initial policy."""
    init, data = assets
    cfg = rl_config(tmp_path_factory.mktemp("batch"), init, data, **{"rollout.eval_problems": 0})
    cluster = InProcessCluster(cfg)
    trainer = RLTrainer(cfg, cluster)
    problems = trainer.stream.batch(0, 4)
    rollouts = cluster.workers[0].rollout(problems, 2, seed=3)
    return sequences_from_trees([r.tree for r in rollouts], [r.reward for r in rollouts],
                                [r.problem_index for r in rollouts], "grpo", "root")


def _fit(cfg):
    return RLTrainer(cfg, InProcessCluster(cfg)).fit()


def _rows(run_dir):
    return {r["step"]: r for r in read_metrics(run_dir) if "rl/loss" in r}


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_update_equals_torch_under_every_zero_stage(tmp_path, assets, rollout_batch, stage):
    """Two inner steps over several micro-batches: gradients accumulate to the same single AdamW step."""
    init, data = assets
    over = {"train.micro_batch_tokens": 96, "loss.kl_coef": 0.0, "optim.grad_clip": 0.5}
    plain = Learner(rl_config(tmp_path, init, data, **over))
    ds = Learner(rl_config(tmp_path, init, data, **over, **{"train.strategy": "deepspeed", "train.zero_stage": stage}))
    assert ds.policy.model is not ds.policy.module  # the DeepSpeed engine runs forward
    a, b = plain.update(copy.deepcopy(rollout_batch)), ds.update(copy.deepcopy(rollout_batch))
    for k in ("rl/loss", "rl/grad_norm", "rl/kl", "rl/clip_frac", "rl/lr"):
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
    wa, wb = plain.policy.state_dict(), ds.policy.state_dict()
    assert sorted(wa) == sorted(wb)
    assert max(float((wa[k] - wb[k].float()).abs().max()) for k in wa) < 1e-5
    assert sum(b.values()) == sum(b.values())  # no NaN anywhere
    buckets = ds.export_weights(0.01)  # full tensors for the rollout workers (gathered under ZeRO-3)
    assert all(t.shape == wa[n].shape for bucket in buckets for n, t in bucket.items())


@pytest.mark.slow
def test_zero2_run_trains_and_matches_torch(tmp_path, assets):
    init, data = assets
    common = {"train.steps": 2, "rollout.eval_problems": 0, "checkpoint.every_steps": 0}
    _fit(rl_config(tmp_path / "torch", init, data, **common))
    _fit(rl_config(tmp_path / "ds", init, data, **common, **DS))
    plain, ds = _rows(tmp_path / "torch" / "run"), _rows(tmp_path / "ds" / "run")
    assert sorted(ds) == [1, 2]
    for row in ds.values():
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    # the same rollouts (the weights start equal), the same two inner steps
    for k in ("rl/loss", "rl/grad_norm", "rl/kl", "rollout/reward", "rl/train_tokens"):
        assert ds[1][k] == pytest.approx(plain[1][k], rel=1e-4, abs=1e-6), k
    final = tmp_path / "ds" / "run" / "final"
    assert (final / "trainer" / "deepspeed" / "policy").is_dir()
    start, end = load_checkpoint(init)[0].state_dict(), load_checkpoint(final)[0].state_dict()
    assert max(float((start[k] - end[k]).abs().max()) for k in start) > 0


@pytest.mark.slow
def test_zero2_resume_continues_with_the_same_next_step(tmp_path, assets):
    init, data = assets
    _fit(rl_config(tmp_path / "a", init, data, **{"train.steps": 3, "rollout.eval_problems": 0}, **DS))
    _fit(rl_config(tmp_path / "b", init, data, **{"train.steps": 2, "rollout.eval_problems": 0}, **DS))
    _fit(rl_config(tmp_path / "b", init, data, **{"train.steps": 3, "rollout.eval_problems": 0, "resume": True,
                                                       "resume_changed": True},
                   **DS))
    a, b = _rows(tmp_path / "a" / "run"), _rows(tmp_path / "b" / "run")
    assert sorted(b) == [1, 2, 3]
    for k in ("rl/loss", "rl/grad_norm", "rollout/reward", "rl/train_tokens", "rl/kl"):
        assert b[3][k] == pytest.approx(a[3][k], rel=1e-5, abs=1e-7), k
    wa = load_checkpoint(tmp_path / "a" / "run" / "final")[0].state_dict()
    wb = load_checkpoint(tmp_path / "b" / "run" / "final")[0].state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6


def test_ppo_critic_under_deepspeed_saves_and_loads(tmp_path, assets, rollout_batch):
    init, data = assets
    cfg = rl_config(tmp_path, init, data, **{"algo.advantage": "gae", "algo.group_size": 1, **DS})
    learner = Learner(cfg)
    metrics = learner.update(copy.deepcopy(rollout_batch))  # GAE rewrites the batch's advantages
    assert math.isfinite(metrics["rl/value_loss"]) and math.isfinite(metrics["rl/critic_grad_norm"])
    learner.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "trainer" / "deepspeed" / "critic").is_dir()
    again = Learner(cfg)
    assert again.load(tmp_path / "ckpt") == 1
    ca, cb = learner.critic.state_dict(), again.critic.state_dict()
    assert max(float((ca[k] - cb[k]).abs().max()) for k in ca) == 0
    torch.testing.assert_close(learner.policy.state_dict(), again.policy.state_dict(), rtol=0, atol=0)
