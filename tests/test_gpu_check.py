"""`make gpu-check` at toy sizes on the CPU (benchmarks/gpu_check.py --toy), and its loud failures."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
