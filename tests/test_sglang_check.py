"""launch/sglang_check.py (`make sglang-check`): its preflight here (no CUDA, no sglang), and its steps in
`--toy` mode: the same code against the CPU stand-in server, including a mismatch named by its step."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.rl._setup import make_assets

SCRIPT = Path(__file__).resolve().parents[1] / "launch" / "sglang_check.py"
spec = importlib.util.spec_from_file_location("sglang_check", SCRIPT)
sglang_check = importlib.util.module_from_spec(spec)
sys.modules["sglang_check"] = sglang_check  # dataclasses look their module up
spec.loader.exec_module(sglang_check)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("sglang_check")
    init, data = make_assets(tokenizer, root)
    (data / "test").mkdir()
    (data / "test" / "problems.jsonl").write_text((data / "val" / "problems.jsonl").read_text())
    return init, data


def _args(init, data) -> list[str]:
    return ["--model", str(init), "--data", str(data), "--toy", "--num-problems", "3", "--rl-problems", "2",
            "--max-thread-tokens", "48", "--launch-timeout-s", "120"]


def test_preflight_fails_early_naming_what_is_missing(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sglang_check.main(["--model", "x"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert sglang_check.preflight(is_toy=False).startswith("sglang-check needs SGLang in this environment")


def test_toy_run_compares_trees_syncs_weights_and_survives_a_restart(assets, capsys):
    assert sglang_check.main(_args(*assets) + ["--skip", "rl weight_sync=distributed"]) == 0
    out = capsys.readouterr().out
    assert "| greedy trees | ok | 3 problems" in out and "tokens identical" in out
    assert "| rl weight_sync=disk | ok | 2 steps; the server holds v2 = the learner's weights" in out
    assert "| server restart mid-run | ok |" in out and "| rl weight_sync=distributed | skipped |" in out


def test_a_mismatch_fails_loudly_naming_the_step(assets, tokenizer, tmp_path, capsys, monkeypatch):
    from tests.engine.test_sglang import _checkpoint

    other = _checkpoint(tmp_path / "other", tokenizer, seed=1)  # init_std 0.5: its greedy threads differ
    real = sglang_check.Check.greedy_trees

    def local_engine_on_other_weights(self):  # the server serves checkpoint A, the local engine B
        self.args.model = str(other)
        return real(self)

    monkeypatch.setattr(sglang_check.Check, "greedy_trees", local_engine_on_other_weights)
    skip = ["--skip", "rl weight_sync=disk", "--skip", "rl weight_sync=distributed", "--skip", "server restart mid-run"]
    assert sglang_check.main(_args(*assets) + skip) == 1
    captured = capsys.readouterr()
    assert "sglang-check failed at step 'greedy trees': AssertionError: problem 0" in captured.err
    assert "| greedy trees | FAILED |" in captured.out
