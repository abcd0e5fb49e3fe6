"""DeepSpeed ZeRO-2 on CPU (one process, gloo): two steps train, match the torch strategy, resume."""

import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from apr.sft import Trainer  # noqa: E402

from ._helpers import small_cfg  # noqa: E402


@pytest.fixture
def ds_env(monkeypatch):
    # one process, CPU accelerator; monkeypatch removes these after the test
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        monkeypatch.setenv(key, value)


@pytest.mark.slow
def test_zero2_two_steps(ds_env, data_dir, data_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    common = dict(train={"max_steps": 2, "grad_accum_steps": 2}, checkpoint={"every_steps": 1})
    ds_cfg = small_cfg(data_dir, tmp_path / "ds", **{**common, "train": {**common["train"], "strategy": "deepspeed",
                                                                         "zero_stage": 2}})
    ds = Trainer(ds_cfg, data_tokenizer).fit()
    assert len(ds["losses"]) == 2 and all(math.isfinite(v) for v in ds["losses"])
    assert (Path(ds["final"]) / "trainer" / "deepspeed").is_dir()
    AutoModelForCausalLM.from_pretrained(ds["final"])  # the HF export loads without project code

    plain = Trainer(small_cfg(data_dir, tmp_path / "torch", **common), data_tokenizer).fit()
    assert ds["losses"][0] == pytest.approx(plain["losses"][0], abs=1e-6)  # same init, batch, loss scaling
    assert ds["losses"][1] == pytest.approx(plain["losses"][1], abs=1e-4)  # same AdamW step

    # resume from the step-1 checkpoint: DeepSpeed restores its optimizer shards
    resumed_dir = tmp_path / "ds_resumed"
    shutil.copytree(tmp_path / "ds" / "checkpoints" / "step_00000001", resumed_dir / "checkpoints" / "step_00000001")
    resumed_cfg = small_cfg(data_dir, resumed_dir, resume=True, **{**common, "train": {
        **common["train"], "strategy": "deepspeed", "zero_stage": 2}})
    resumed = Trainer(resumed_cfg, data_tokenizer).fit()
    assert resumed["losses"] == ds["losses"][1:]
