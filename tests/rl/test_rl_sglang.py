"""RL with rollouts on the `sglang` engine (a stand-in server speaking SGLang's HTTP contract).

Weights reach the server through `update_weights_from_disk` after every step; the run must give the
same steps as rollouts on the local engine (same weights, same seeds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from apr.cluster.in_process import InProcessCluster
from apr.rl.trainer import RLTrainer
from apr.train.metrics import read_metrics
from tests.engine.sglang_standin import Standin
from tests.rl._setup import make_assets, rl_config

KEYS = ("rl/loss", "rollout/reward", "rl/train_tokens", "rollout/mean_generated_tokens")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    return make_assets(tokenizer, tmp_path_factory.mktemp("rl_sglang"))


def _rows(tmp, assets, **over):
    init, data = assets
    cfg = rl_config(tmp, init, data, **{"rollout.eval_problems": 0, "train.steps": 2, **over})
    RLTrainer(cfg, InProcessCluster(cfg)).fit()
    return {r["step"]: r for r in read_metrics(tmp / "run") if "rl/loss" in r}


def test_rl_on_sglang_matches_the_local_engine(tmp_path, assets):
    local = _rows(tmp_path / "local", assets)
    with Standin(str(assets[0]), deterministic=True) as server:
        remote = _rows(tmp_path / "sglang", assets, **{
            "engine": {"name": "sglang", "deterministic": True, "urls": [server.url], "weights_dir": str(tmp_path / "weights")}})
    assert sorted(remote) == [1, 2]
    for step in (1, 2):  # step 2 samples with the weights pushed to the server after step 1
        for k in KEYS:
            assert remote[step][k] == pytest.approx(local[step][k], rel=1e-4, abs=1e-6), (step, k)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rl_survives_a_server_restart_between_steps(tmp_path, assets):
    """The server dies after step 1 and comes back (with the SFT weights); the weight sync after the
    step pushes the learner's weights to the new server, so the run goes on exactly as before."""
    local = _rows(tmp_path / "local", assets)
    port = _free_port()
    servers = [Standin(str(assets[0]), port=port, deterministic=True).start()]
    real_sync = InProcessCluster.sync_weights
    calls = {"n": 0}

    def sync_after_a_restart(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the sync that follows step 1's update
            servers[-1].stop()
            servers.append(Standin(str(assets[0]), port=port, deterministic=True).start())
        return real_sync(self)

    try:
        InProcessCluster.sync_weights = sync_after_a_restart
        remote = _rows(tmp_path / "sglang", assets, **{
            "engine": {"name": "sglang", "deterministic": True, "urls": [servers[0].url], "weights_dir": str(tmp_path / "weights"),
                                       "max_retries": 5, "backoff_s": 0.1}})
    finally:
        InProcessCluster.sync_weights = real_sync
        servers[-1].stop()
    assert len(servers) == 2 and servers[1].num_generate > 0
    for k in KEYS:
        assert remote[2][k] == pytest.approx(local[2][k], rel=1e-4, abs=1e-6), k


def test_rl_with_an_unreachable_server_fails_before_training_naming_the_url(tmp_path, assets):
    from apr.config import ConfigError

    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ConfigError, match="engine.urls.*" + url.replace(".", r"\.")):
        _rows(tmp_path, assets, **{"engine": {"name": "sglang", "urls": [url], "max_retries": 1, "backoff_s": 0.01}})


def test_each_rollout_worker_drives_its_own_servers(tmp_path, assets):
    from apr.config import ConfigError

    with pytest.raises(ConfigError, match="engine.urls.*one server URL per rollout worker"):
        rl_config(tmp_path, *assets, **{"dist.num_rollout_workers": 2,
                                        "engine": {"name": "sglang", "urls": ["http://127.0.0.1:1"]}})
    local = _rows(tmp_path / "local", assets, **{"dist.num_rollout_workers": 2})
    with Standin(str(assets[0]), deterministic=True) as a, Standin(str(assets[0]), deterministic=True) as b:
        remote = _rows(tmp_path / "sglang", assets, **{
            "dist.num_rollout_workers": 2, "engine": {"name": "sglang", "deterministic": True, "urls": [a.url, b.url], "weights_dir": str(tmp_path / "weights")}})
        assert a.num_generate > 0 and b.num_generate > 0
    for k in KEYS:
        assert remote[2][k] == pytest.approx(local[2][k], rel=1e-4, abs=1e-6), k


def test_rl_with_distributed_weight_sync_matches_the_local_engine(tmp_path, assets):
    """`weight_sync=distributed`: after every step the rollout worker broadcasts the learner's weights
    over a process group to a server in another process (gloo here, NCCL on GPUs), nothing on disk."""
    local = _rows(tmp_path / "local", assets)
    standin = Path(__file__).parents[1] / "engine" / "sglang_standin.py"
    remote = _rows(tmp_path / "sglang", assets, **{
        "engine": {"name": "sglang", "deterministic": True, "urls": [f"http://127.0.0.1:{_free_port()}"], "launch": True,
                                   "launch_command": [sys.executable, str(standin)], "launch_timeout_s": 120,
                                   "weight_sync": "distributed", "weight_sync_backend": "gloo",
                                   "weights_dir": str(tmp_path / "weights")}})
    assert sorted(remote) == [1, 2]
    for step in (1, 2):  # step 2 samples with the weights broadcast after step 1
        for k in KEYS:
            assert remote[step][k] == pytest.approx(local[step][k], rel=1e-4, abs=1e-6), (step, k)
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").iterdir())


def test_rl_refuses_servers_with_raw_logprobs_below_temperature_1(tmp_path, assets):
    """A server started with SGLANG_RETURN_ORIGINAL_LOGPROB=1 returns log_softmax(logits), the learner scores
    log_softmax(logits / T): the worker's start-up probe finds out and the run stops before training."""
    from apr.config import ConfigError

    with Standin(str(assets[0]), return_original_logprob=True) as server:
        with pytest.raises(ConfigError, match="engine.server_logprobs: .* return raw log-probs .* temperature 0.7"):
            _rows(tmp_path, assets, **{"rollout.runtime.temperature": 0.7,
                                       "engine": {"name": "sglang", "urls": [server.url]}})
        assert server.num_generate == 1  # the probe
