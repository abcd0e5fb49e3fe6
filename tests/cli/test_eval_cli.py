"""`python -m apr.cli.eval` end to end on a freshly initialised tiny checkpoint (random weights solve
nothing; this checks the plumbing: config, settings per model, outputs, resume)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from apr.cli.common import to_container
from apr.config import ConfigError
from tests.cli._assets import eval_assets

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    return eval_assets(tmp_path_factory.mktemp("eval_cli"), tokenizer, 3)


def overrides(root, ckpt, num_problems):
    return [f"models.apr={ckpt}", f"+models.apr_rl={ckpt}", f"models.sosp={ckpt}", f"data_dir={root / 'data'}",
            f"num_problems={num_problems}", f"out_dir={root / 'out'}", "eval.max_thread_tokens=48",
            "eval.windows=[32,48]", "eval.temperatures=[0.0,1.0]", "eval.cons_pass_n=2",
            "eval.conditions.apr=[threads 2]", "eval.batch_size=2", "eval.progress=false"]


def test_eval_cli_runs_every_setting_then_resumes(setup, monkeypatch):
    root, ckpt = setup
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-m", "apr.cli.eval", *overrides(root, ckpt, 2)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    out = root / "out"
    for name in ("metrics.json", "results.md", "accuracy_vs_window.png", "accuracy_vs_total_tokens.png",
                 "accuracy_vs_sequential_tokens.png", "accuracy_vs_latency.png", "rl_before_after.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rl_pairs"] == {"apr": "apr_rl"}
    settings = {m: list(v["settings"]) for m, v in metrics["models"].items()}
    assert settings == {"sosp": ["t0", "t1_n2"], "apr": ["t0", "t1", "t0_threads-2"],
                        "apr_rl": ["t0", "t1", "t0_threads-2"]}
    sosp = metrics["models"]["sosp"]["settings"]
    assert sosp["t1_n2"]["num_records"] == 4 and [p["n"] for p in sosp["t1_n2"]["curve"]] == [1, 2]
    assert all(s["num_problems"] == 2 and s["mean_total_tokens"] > 0 and s["mean_latency_s"] > 0
               for v in metrics["models"].values() for s in v["settings"].values())
    assert "Before / after RL" in (out / "results.md").read_text()

    # resume in process with one more problem: each setting runs only the new one
    from apr.api import Reasoner
    from apr.cli.eval import run

    calls = []
    real = Reasoner.solve_batch

    def counting(self, problems, num_samples=1, **kw):
        problems = list(problems)
        calls.append((len(problems), num_samples))
        return real(self, problems, num_samples=num_samples, **kw)

    monkeypatch.setattr(Reasoner, "solve_batch", counting)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        c = to_container(compose("eval", overrides=overrides(root, ckpt, 3) + ["plots=false"]))
    summary = run(c)
    assert sorted(calls) == sorted([(1, 1)] * 7 + [(1, 2)])  # 8 settings, one new problem each
    assert all(s["num_problems"] == 3 for v in summary["models"].values() for s in v["settings"].values())
    calls.clear()
    run(c)
    assert calls == []  # everything is on disk


def test_eval_cli_errors_name_the_field(setup, tmp_path):
    root, ckpt = setup
    with initialize_config_dir(str(CONF), version_base="1.3"):
        empty = to_container(compose("eval", overrides=[f"out_dir={tmp_path}"]))
        bad = to_container(compose("eval", overrides=[f"models.apr={ckpt}", f"data_dir={root / 'data'}",
                                                      f"out_dir={tmp_path}", "+eval.temperature=0.5"]))
    from apr.cli.eval import run

    with pytest.raises(ConfigError, match="models: empty"):
        run(empty)
    with pytest.raises(ConfigError, match="eval.temperature: unknown field"):
        run(bad)
