"""RL runs never mix with older runs: changed settings on resume, overwrite, damaged checkpoints (issue 15)."""

from __future__ import annotations

import json
import shutil

import pytest

from apr.cluster.in_process import InProcessCluster
from apr.config import ConfigError
from apr.rl.trainer import RLTrainer
from apr.train.metrics import read_metrics
from tests.rl._setup import make_checkpoint, make_data, rl_config


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, tokenizer):
    """A finished 2-step run (checkpoints at steps 1 and 2): (root, init, data)."""
    root = tmp_path_factory.mktemp("rl_safety")
    init, data = make_checkpoint(tokenizer, root / "init"), make_data(root / "data")
    _fit(rl_config(root, init, data, **{"train.steps": 2, "checkpoint.every_steps": 1, "rollout.eval_problems": 0}))
    return root, init, data


def _fit(cfg):
    return RLTrainer(cfg, InProcessCluster(cfg)).fit()


def _copy(two_steps, tmp_path):
    root, init, data = two_steps
    shutil.copytree(root / "run", tmp_path / "run")
    return init, data


def _cfg(tmp_path, init, data, **over):
    return rl_config(tmp_path, init, data, **{"train.steps": 2, "checkpoint.every_steps": 1,
                                              "rollout.eval_problems": 0, **over})


def test_resume_refuses_changed_settings_and_names_them(two_steps, tmp_path, tokenizer):
    init, data = _copy(two_steps, tmp_path)
    with pytest.raises(ConfigError, match=r"resume: .*final' was made with other settings: optim.lr 0.001 -> "
                                          r"0.002; train.steps 2 -> 3; accepted: .*resume_changed=true"):
        _fit(_cfg(tmp_path, init, data, resume=True, **{"optim.lr": 2e-3, "train.steps": 3}))
    other = make_checkpoint(tokenizer, tmp_path / "other_init", seed=1)
    with pytest.raises(ConfigError, match="other settings: init weights '[0-9a-f]+' -> '[0-9a-f]+'"):
        _fit(_cfg(tmp_path, other, data, resume=True))
    regenerated = make_data(tmp_path / "data", n_train=41)
    with pytest.raises(ConfigError, match="other settings: data.dir contents "):
        _fit(_cfg(tmp_path, init, regenerated, resume=True))
    # probe (issue 26 item 6): grpo -> rloo, KL 0.001 -> 0.5, temperature 1.0 -> 0.7, window 512 -> 256 resumed
    # without a word
    with pytest.raises(ConfigError, match=r"other settings: algo.advantage 'grpo' -> 'rloo'; loss.kl_coef 0.001 -> "
                                          r"0.5; rollout.runtime.temperature 1.0 -> 0.7; rollout.runtime."
                                          r"max_thread_tokens 48 -> 40; accepted"):
        _fit(_cfg(tmp_path, init, data, resume=True, **{"algo.advantage": "rloo", "loss.kl_coef": 0.5,
                                                       "rollout.runtime.temperature": 0.7,
                                                       "rollout.runtime.max_thread_tokens": 40}))
    summary = _fit(_cfg(tmp_path, init, data, resume=True, resume_changed=True, **{"train.steps": 3}))
    assert summary["step"] == 3


def test_a_local_cluster_is_never_asked_for_gpus_the_machine_lacks(two_steps, tmp_path):
    # probe (issue 26 item 5): dist.worker_gpus=1 on a CPU-only machine: Ray repeated "No available node types
    # can fulfill {GPU: 1}" until killed
    from apr.rl.trainer import check_local_gpus

    _, init, data = two_steps
    cfg = _cfg(tmp_path, init, data, **{"dist.mode": "ray_local", "dist.worker_gpus": 1.0,
                                        "dist.num_rollout_workers": 2, "dist.learner_gpus": 0.5})
    with pytest.raises(ConfigError, match=r"^dist: the run asks a local Ray cluster for 2.5 GPUs \(dist.worker_gpus=2, "
                                          r"dist.learner_gpus=0.5, .*\) but this machine has 1; accepted: at most 1"):
        check_local_gpus(cfg, available=1)
    check_local_gpus(cfg, available=3)  # enough
    check_local_gpus(_cfg(tmp_path, init, data, **{"dist.mode": "ray_cluster", "dist.worker_gpus": 1.0}), available=0)


def test_overwrite_sets_the_earlier_run_aside(two_steps, tmp_path):
    init, data = _copy(two_steps, tmp_path)
    _fit(_cfg(tmp_path, init, data, overwrite=True, **{"train.steps": 1}))
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    assert [r["step"] for r in read_metrics(run) if "rl/loss" in r] == [1]
    (aside,) = (run / "replaced").iterdir()
    assert json.loads((aside / "final" / "trainer_state.json").read_text())["step"] == 2
    assert (aside / "checkpoints" / "step_00000001" / "trainer" / "learner.pt").is_file()


def test_resume_falls_back_from_a_damaged_checkpoint(two_steps, tmp_path, capsys):
    init, data = _copy(two_steps, tmp_path)
    run = tmp_path / "run"
    learner = run / "final" / "trainer" / "learner.pt"
    learner.write_bytes(learner.read_bytes()[:100])  # a torn write, e.g. a full disk
    summary = _fit(_cfg(tmp_path, init, data, resume=True))
    out = capsys.readouterr().out
    assert "final is damaged: trainer/learner.pt: 100 bytes, but" in out and "resuming at step 1 from" in out
    assert summary["step"] == 2 and (run / "damaged" / "final" / "trainer" / "learner.pt").is_file()
