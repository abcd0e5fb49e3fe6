"""`make gpu-check` at toy sizes on the CPU (benchmarks/gpu_check.py --toy), and its loud failures."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    if "gpu_check" not in sys.modules:  # registered before it runs: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return sys.modules["gpu_check"]


def test_a_failing_stage_is_named_with_its_log(tmp_path):
    gc = _module()
    fail = [sys.executable, "-c", "import sys; print('the reason'); sys.exit(3)"]
    with pytest.raises(gc.StageError, match=r"FAILED at stage 'eval': eval exited with 3(.|\n)*the reason"):
        gc.run_stage("eval", {"eval": fail, "other": [sys.executable, "-c", "pass"]}, tmp_path, 60)
    assert (tmp_path / "eval.log").is_file()


def test_gpu_sizes_follow_the_one_knob():
    gc = _module()
    assert gc.gpu_sizes(8).sft_minutes == 3 and gc.gpu_sizes(10).sft_minutes == 5
    assert gc.gpu_sizes(8).windows == (512, 1024, 2048, 3072) and gc.gpu_sizes(8).num_test == 500


@pytest.mark.slow
def test_toy_check_runs_every_stage_end_to_end(tmp_path):
    out = tmp_path / "gc"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--toy", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert set(res["stage_s"]) == {"data", "sft", "eval", "grpo", "engine"} and "failed" not in res
    for solver in ("sosp", "apr"):
        sft = res["sft"][solver]
        assert sft["steps"] >= 1 and sft["final_lr"] == pytest.approx(1e-4)  # the cosine ended at the deadline
        assert set(res["eval"][solver]["accuracy_vs_window"]) == {"128", "256"}
    assert res["grpo"]["steps"] == 2 and res["grpo"]["accuracy_after"] is not None
    assert res["engine"]["local_tokens_per_s"] > 0 and res["engine"]["hf_tokens_per_s"] > 0
    assert "| engine decode |" in (out / "gpu_check.md").read_text()


@pytest.mark.parametrize("stage", ["data", "sft_sosp", "sft_apr", "eval", "grpo"])
@pytest.mark.parametrize("toy", [False, True], ids=["gpu", "toy"])
def test_stage_commands_compose_into_valid_configs(stage, toy, tmp_path):
    """Every override the check passes exists and validates (the GPU sizes cannot run here)."""
    from hydra import compose, initialize_config_dir

    from apr.cli.common import to_container
    from apr.config import from_dict
    from apr.datagen import DataConfig
    from apr.eval import EvalConfig
    from apr.rl.config import RLConfig

    gc = _module()
    s, device = (gc.toy_sizes(), "cpu") if toy else (gc.gpu_sizes(8), "cuda")
    cmd = {"data": lambda: gc.data_cmd(s, tmp_path), "sft_sosp": lambda: gc.sft_cmd(s, tmp_path, "sosp", device),
           "sft_apr": lambda: gc.sft_cmd(s, tmp_path, "apr", device), "eval": lambda: gc.eval_cmd(s, tmp_path, device),
           "grpo": lambda: gc.grpo_cmd(s, tmp_path, device)}[stage]()
    name = {"data": "data", "sft": "sft", "eval": "eval", "grpo": "rl"}[stage.split("_")[0]]
    assert cmd[2] == f"apr.cli.{name}"
    with initialize_config_dir(str(gc.ROOT / "conf"), version_base="1.3"):
        c = to_container(compose(name, overrides=cmd[3:]))
    c.pop("hydra", None)
    if name == "data":
        data = from_dict(DataConfig, c["data"], "data")
        assert (data.num_train, data.num_val, data.num_test) == (s.num_train, s.num_val, s.num_test)
    elif name == "sft":
        from apr.cli.sft import load_config

        cfg, _ = load_config(c)
        assert cfg.train.max_minutes == s.sft_minutes and cfg.train.max_steps is None and cfg.model.name == s.model
    elif name == "eval":
        assert from_dict(EvalConfig, c["eval"], "eval").max_thread_tokens == s.max_window
        assert c["engine"]["device"] == device
    else:
        cfg = from_dict(RLConfig, c, "")
        assert (cfg.dist.mode, cfg.train.steps, cfg.engine.device) == ("none", s.rl_steps, device)
        assert cfg.wandb.mode == "disabled"
