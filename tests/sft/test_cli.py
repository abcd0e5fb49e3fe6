"""`python -m apr.cli.sft`: a short run end to end, and bad configs stopped with one clear line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apr.cli.sft import solve_rate_hook
from apr.model import build_for_tokenizer

from ._helpers import small_cfg

ROOT = Path(__file__).resolve().parents[2]


def sft(*overrides):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "apr.cli.sft", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_trains_two_steps_with_solve_rate(data_dir, tmp_path):
    run_dir = tmp_path / "cli"
    out = sft(f"data.dir={data_dir}", "data.max_seq_len=512", "train.max_steps=2", "train.batch_rows=2",
              "train.num_threads=1", f"run_dir={run_dir}", "wandb.mode=disabled", "log.progress=false",
              "eval.num_problems=2", "eval.limits.max_thread_tokens=48", "engine.max_seq_len=64")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final_eval = rows[-1]
    assert final_eval["step"] == 2 and "val/loss" in final_eval
    assert 0.0 <= final_eval["eval/accuracy"] <= 1.0  # apr.api.Reasoner drove the in-training model
    assert json.loads((run_dir / "config.json").read_text())["train"]["max_steps"] == 2
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "final" / "model.safetensors").is_file()


def test_cli_rejects_a_window_shorter_than_the_data(data_dir, tmp_path):
    out = sft(f"data.dir={data_dir}", "data.max_seq_len=64", f"run_dir={tmp_path / 'bad'}")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: data.max_seq_len: got 64; accepted: a window that fits most threads")
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_cli_rejects_an_unknown_model(tmp_path):
    out = sft("model=nope", f"run_dir={tmp_path / 'bad'}")
    assert out.returncode != 0
    assert "Could not find 'model/nope'" in out.stderr and "paper_228m" in out.stderr


def test_solve_rate_hook_uses_the_api(data_dir, data_tokenizer, tmp_path):
    cfg = small_cfg(data_dir, tmp_path, eval={"num_problems": 3, "limits": {"max_thread_tokens": 40}})
    hook = solve_rate_hook(cfg, {"name": "local", "max_seq_len": 48})
    assert hook is not None
    model = build_for_tokenizer(cfg.model, data_tokenizer).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = hook(model, data_tokenizer, 0)
    assert out["accuracy"] == 0.0 and out["mean_total_tokens"] > 0
    assert all((before[k] == v).all() for k, v in model.state_dict().items())  # the engine got a copy
    assert solve_rate_hook(small_cfg(data_dir, tmp_path, eval={"num_problems": 0})) is None
