"""RL with rollouts on the `sglang` engine (a stand-in server speaking SGLang's HTTP contract).

Weights reach the server through `update_weights_from_disk` after every step; the run must give the
same steps as rollouts on the local engine (same weights, same seeds)."""

from __future__ import annotations

import pytest

from apr.rl.trainer import InProcessCluster, RLTrainer
from apr.sft.metrics import read_metrics
from tests.engine.sglang_standin import Standin
from tests.rl._setup import make_checkpoint, make_data, rl_config

KEYS = ("rl/loss", "rollout/reward", "rl/train_tokens", "rollout/generated_tokens")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("rl_sglang")
    return make_checkpoint(tokenizer, root / "init"), make_data(root / "data")


def _rows(tmp, assets, **over):
    init, data = assets
    cfg = rl_config(tmp, init, data, **{"rollout.eval_problems": 0, "train.steps": 2, **over})
    RLTrainer(cfg, InProcessCluster(cfg)).fit()
    return {r["step"]: r for r in read_metrics(tmp / "run") if "rl/loss" in r}


def test_rl_on_sglang_matches_the_local_engine(tmp_path, assets):
    local = _rows(tmp_path / "local", assets)
    with Standin(str(assets[0])) as server:
        remote = _rows(tmp_path / "sglang", assets, **{
            "rollout.engine": "sglang",
            "rollout.engine_options": {"urls": [server.url], "weights_dir": str(tmp_path / "weights")}})
    assert sorted(remote) == [1, 2]
    for step in (1, 2):  # step 2 samples with the weights pushed to the server after step 1
        for k in KEYS:
            assert remote[step][k] == pytest.approx(local[step][k], rel=1e-4, abs=1e-6), (step, k)
