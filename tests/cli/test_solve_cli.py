"""`apr solve` end to end on a freshly initialised tiny checkpoint (random weights: the answer is
not expected to be right; the command must run the runtime and report tree, answer and metrics)."""

import json
import os
import subprocess
import sys

import pytest

from apr.model import ModelConfig
from apr.model.hf import build_for_tokenizer, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model = build_for_tokenizer(ModelConfig("t", 32, 1, 2, None, 64, 256), tokenizer, seed=0)
    save_checkpoint(model, tokenizer, path)
    return path


def solve_cli(*args):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "apr.cli.main", "solve", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_solve_json(checkpoint):
    r = solve_cli("--model", str(checkpoint), "--numbers", "22", "26", "31", "53", "--target", "27",
                  "--max-thread-tokens", "64", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["problem"] == {"numbers": [22, 26, 31, 53], "target": 27}
    assert out["correct"] in (True, False) and out["metrics"]["num_threads"] >= 1
    root = out["tree"]["threads"][0]
    assert root["text"].startswith("<bos>node 0 27:[22,26,31,53] []\n") and root["num_tokens"] <= 64


def test_solve_human_output(checkpoint):
    r = solve_cli("--model", str(checkpoint), "--numbers", "3", "5", "8", "--target", "39", "--max-thread-tokens", "48")
    assert r.returncode == 0, r.stderr
    assert "=== thread 0" in r.stdout and "answer:" in r.stdout and "metrics:" in r.stdout


def test_solve_missing_model_is_one_clear_line(tmp_path):
    r = solve_cli("--model", str(tmp_path / "none"), "--numbers", "1", "2", "--target", "3")
    assert r.returncode == 2 and "no config.json" in r.stderr and "Traceback" not in r.stderr
