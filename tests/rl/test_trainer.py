"""The RL driver end to end in one process (dist=none): updates, checkpoints, resume, PPO, failures, learning."""

from __future__ import annotations

import json
import math

import pytest
import torch

from apr.cluster.in_process import InProcessCluster
from apr.config import ConfigError
from apr.model import load_checkpoint
from apr.rl.trainer import RLError, RLTrainer
from apr.train.metrics import read_metrics
from tests.rl._setup import make_checkpoint, make_data, rl_config


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("rl_assets")
    return make_checkpoint(tokenizer, root / "init"), make_data(root / "data")


def _fit(cfg):
    return RLTrainer(cfg, InProcessCluster(cfg)).fit()


def _max_change(a, b) -> float:
    sa, sb = load_checkpoint(a)[0].state_dict(), load_checkpoint(b)[0].state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def test_grpo_run_updates_logs_and_checkpoints(tmp_path, assets):
    init, data = assets
    cfg = rl_config(tmp_path, init, data)
    summary = _fit(cfg)
    run = tmp_path / "run"
    assert summary["step"] == 3 and (run / "final" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "step_00000002" / "trainer" / "learner.pt").is_file()
    assert _max_change(init, run / "final") > 0
    rows = [r for r in read_metrics(run) if "rl/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for k in ("rl/loss", "rl/kl", "rl/clip_frac", "rl/entropy", "rl/grad_norm", "rollout/reward",
                  "rollout/mean_total_tokens", "rollout/mean_sequential_tokens", "time/rollout_s", "time/update_s",
                  "rollout/tokens_per_s"):
            assert math.isfinite(r[k]), k
        assert r["rl/policy_version"] == r["step"] and r["rl/policy_lag"] == 0
        assert r["rl/train_sequences"] >= 8  # 4 problems x G=2, every thread a sequence
    assert "eval/accuracy" in read_metrics(run)[0]  # the evaluation before training


def test_resume_continues_with_the_same_next_step(tmp_path, assets):
    init, data = assets
    straight = rl_config(tmp_path / "a", init, data, **{"train.steps": 3})
    _fit(straight)
    first = rl_config(tmp_path / "b", init, data, **{"train.steps": 2})
    _fit(first)
    resumed = rl_config(tmp_path / "b", init, data, **{"train.steps": 3, "resume": True, "resume_changed": True})
    _fit(resumed)
    a = {r["step"]: r for r in read_metrics(tmp_path / "a" / "run") if "rl/loss" in r}
    b = {r["step"]: r for r in read_metrics(tmp_path / "b" / "run") if "rl/loss" in r}
    assert sorted(b) == [1, 2, 3]  # the resumed run kept the earlier rows
    for k in ("rl/loss", "rollout/reward", "rl/train_tokens", "rl/kl"):
        assert b[3][k] == pytest.approx(a[3][k], rel=1e-5, abs=1e-7), k
    assert _max_change(tmp_path / "a" / "run" / "final", tmp_path / "b" / "run" / "final") < 1e-6


def test_fresh_run_refuses_to_replace_an_earlier_one(tmp_path, assets):
    init, data = assets
    _fit(rl_config(tmp_path, init, data, **{"train.steps": 1}))
    with pytest.raises(ConfigError, match="run_dir"):
        _fit(rl_config(tmp_path, init, data, **{"train.steps": 1}))


def test_ppo_with_critic(tmp_path, assets):
    init, data = assets
    cfg = rl_config(tmp_path, init, data, **{"algo.advantage": "gae", "algo.group_size": 1, "train.steps": 2,
                                             "rollout.eval_problems": 0, "algo.format_bonus": 0.5})
    _fit(cfg)
    rows = [r for r in read_metrics(tmp_path / "run") if "rl/loss" in r]
    assert all(math.isfinite(r["rl/value_loss"]) and math.isfinite(r["rl/critic_grad_norm"]) for r in rows)
    state = torch.load(tmp_path / "run" / "final" / "trainer" / "learner.pt", weights_only=False)
    assert "critic" in state and any(k.startswith("head") for k in state["critic"])


def test_learner_failure_exits_with_the_reason(tmp_path, assets, monkeypatch):
    init, data = assets
    cfg = rl_config(tmp_path, init, data, **{"rollout.eval_problems": 0})
    cluster = InProcessCluster(cfg)
    calls = {"n": 0}

    def broken(batch, ref):
        calls["n"] += 1
        if calls["n"] == 2:
            raise FloatingPointError("loss is nan")
        return InProcessCluster.update(cluster, batch, ref)

    monkeypatch.setattr(cluster, "update", broken)
    with pytest.raises(RLError, match="step 1 in phase 'update'.*loss is nan"):
        RLTrainer(cfg, cluster).fit()
    err = json.loads((tmp_path / "run" / "error.json").read_text())
    assert err["phase"] == "update" and err["step"] == 1


def test_bad_config_names_the_field(tmp_path, assets):
    init, data = assets
    with pytest.raises(ConfigError, match="algo.advantage"):
        rl_config(tmp_path, init, data, **{"algo.advantage": "dpo"})
    with pytest.raises(ConfigError, match="algo.group_size"):
        rl_config(tmp_path, init, data, **{"algo.group_size": 1})
    with pytest.raises(ConfigError, match="algo.reward"):
        rl_config(tmp_path, init, data, **{"algo.reward": "no_such_module:f"})
    with pytest.raises(ConfigError, match="data.dir"):
        _fit(rl_config(tmp_path, init, tmp_path / "nowhere"))


def test_reward_rises_on_a_learnable_reward(tmp_path, assets):
    """GRPO on a synthetic reward (share of small numbers among the words written) rises clearly in a few dozen steps."""
    init, data = assets
    cfg = rl_config(tmp_path, init, data, **{"algo.group_size": 4, "train.steps": 30, "loss.kl_coef": 0.0,
                                             "optim.lr": 1e-2, "rollout.eval_problems": 0,
                                             "checkpoint.every_steps": 0})
    _fit(cfg)
    rewards = [r["rollout/reward"] for r in read_metrics(tmp_path / "run") if "rollout/reward" in r]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3, (first, last)  # measured: ~0.12 -> ~0.7


def test_time_budget_ends_the_run_finished(tmp_path, assets):
    """`train.max_minutes` with a fake clock (one second per reading): 2 s of training = 2 steps of 10."""
    init, data = assets
    ticks = iter(range(1, 1000))
    cfg = rl_config(tmp_path, init, data, **{"train.steps": 10, "train.max_minutes": 2 / 60})
    summary = RLTrainer(cfg, InProcessCluster(cfg), clock=lambda: float(next(ticks))).fit()
    final = tmp_path / "run" / "final"
    state = json.loads((final / "trainer_state.json").read_text())
    assert summary["step"] == state["step"] == 2 and (final / "model.safetensors").is_file()
    assert state["budget"]["elapsed_s"] == pytest.approx(2.0)
    assert "eval/accuracy" in summary  # the final evaluation ran: a finished run, not a killed one


def test_a_finished_run_closes_its_rollout_engines(tmp_path, assets):
    """Engines hold KV memory (and, for SGLang, servers and weight-sync groups): the run releases them."""
    init, data = assets
    cfg = rl_config(tmp_path, init, data, **{"train.steps": 1})
    cluster = InProcessCluster(cfg)
    closed = []
    for w in cluster.workers:
        w.reasoner.engine.close = lambda: closed.append(True)
    RLTrainer(cfg, cluster).fit()
    assert closed == [True] * len(cluster.workers)
