"""DDP under torchrun (2 CPU processes, gloo) takes the same steps as one process with the same rows."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apr.sft import Trainer

from ._helpers import small_cfg

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_two_processes_match_one(data_dir, data_tokenizer, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_WAIT_POLICY": "PASSIVE"}
    # 2 processes x 1 row x 2 micro-batches = the 4 rows of 1 process x 1 row x 4 micro-batches
    out = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "apr.cli.sft", f"data.dir={data_dir}",
                          "data.max_seq_len=512", "train.max_steps=2", "train.batch_rows=1", "train.grad_accum_steps=2",
                          "train.num_threads=1", f"run_dir={run_dir}", "wandb.mode=disabled", "log.progress=false",
                          "log.every_steps=1", "eval.num_problems=0", "checkpoint.every_steps=0"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ddp = [r["train/loss"] for r in rows if "train/loss" in r]
    one = Trainer(small_cfg(data_dir, tmp_path / "one", train={"max_steps": 2, "batch_rows": 1,
                                                                "grad_accum_steps": 4}), data_tokenizer).fit()
    assert ddp == pytest.approx(one["losses"], abs=1e-5)
    assert rows[-1]["val/loss"] == pytest.approx(one["val/loss"], abs=1e-5)
    assert json.loads((run_dir / "run_info.json").read_text())["world_size"] == 2
