"""End-to-end runs on the tiny model: parameters move, runs repeat, resume is exact, checkpoints reload."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from apr.config import ConfigError
from apr.sft import Trainer
from apr.sft.packing import eval_batches
from apr.sft.trainer import prepare_data
from apr.sft.validate import validation_loss
from apr.train.metrics import read_metrics

from ._helpers import small_cfg


@pytest.fixture(scope="module")
def four_steps(data_dir, data_tokenizer, tmp_path_factory):
    """One uninterrupted 4-step run with a checkpoint every 2 steps (shared by the tests below)."""
    run_dir = tmp_path_factory.mktemp("run") / "a"
    cfg = small_cfg(data_dir, run_dir, train={"max_steps": 4}, checkpoint={"every_steps": 2},
                    eval={"every_steps": 2})
    trainer = Trainer(cfg, data_tokenizer)
    summary = trainer.fit()
    return cfg, summary, trainer


def test_three_step_run_moves_parameters(data_dir, data_tokenizer, tmp_path):
    cfg = small_cfg(data_dir, tmp_path / "run")
    trainer = Trainer(cfg, data_tokenizer)
    summary = trainer.fit()
    assert len(summary["losses"]) == 3 and all(math.isfinite(v) for v in summary["losses"])
    assert math.isfinite(summary["val/loss"])
    from apr.model import build_for_tokenizer

    before = build_for_tokenizer(cfg.model, data_tokenizer, seed=cfg.seed).state_dict()
    after = trainer.strategy.module.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every tensor moved (the tied lm_head counts with the embedding)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "time/forward_backward_s"} <= set(rows[0])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["max_seq_len"] == 512 and saved["model"]["name"] == "tiny"
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["packing_efficiency_epoch0"] > 0.5 and info["data"]["train"]["num_dropped"] == 0


def test_same_config_same_losses(four_steps, data_dir, data_tokenizer, tmp_path):
    cfg, summary, _ = four_steps
    again = Trainer(small_cfg(data_dir, tmp_path / "b", train={"max_steps": 4}, checkpoint={"every_steps": 2},
                              eval={"every_steps": 2}), data_tokenizer).fit()
    assert again["losses"] == summary["losses"] and again["val/loss"] == summary["val/loss"]


def test_resume_continues_exactly(four_steps, data_dir, data_tokenizer, tmp_path):
    cfg, summary, _ = four_steps
    # an interrupted run: only the step-2 checkpoint exists
    run_dir = tmp_path / "interrupted"
    ckpt = Path(cfg.run_dir) / "checkpoints" / "step_00000002"
    shutil.copytree(ckpt, run_dir / "checkpoints" / ckpt.name)
    shutil.copy(Path(cfg.run_dir) / "metrics.jsonl", run_dir)  # rows of steps 3-4 were written, then lost
    assert json.loads((ckpt / "trainer_state.json").read_text())["position"] == [0, 2]
    resumed = Trainer(small_cfg(data_dir, run_dir, resume=True, train={"max_steps": 4},
                                checkpoint={"every_steps": 2}, eval={"every_steps": 2}), data_tokenizer).fit()
    assert resumed["losses"] == summary["losses"][2:]  # the next step's loss is identical, and the one after
    assert resumed["val/loss"] == summary["val/loss"]
    steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert steps == [1, 2, 3, 4]  # the interrupted run's rows after the checkpoint were dropped


def test_checkpoint_reloads_with_transformers_and_same_val_loss(four_steps, data_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, summary, trainer = four_steps
    final = summary["final"]
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.get_vocab() == data_tokenizer.get_vocab()
    batches = eval_batches(trainer.data.val, cfg.data.max_seq_len, tok.pad_token_id, cfg.train.batch_rows)
    loss = validation_loss(model, batches, precision=trainer.strategy.precision)
    assert loss == pytest.approx(summary["val/loss"], rel=1e-6)
    # keep-last: both periodic checkpoints of a 4-step run with every_steps=2 -> only step 2 (4 is final)
    names = sorted(p.name for p in (trainer.run_dir / "checkpoints").iterdir())
    assert names == ["step_00000002"]
    state = json.loads((trainer.run_dir / "final" / "trainer_state.json").read_text())
    assert state["step"] == 4


def test_window_shorter_than_data_fails_before_training(data_dir, data_tokenizer, tmp_path):
    cfg = small_cfg(data_dir, tmp_path / "bad", data={"max_seq_len": 64})
    with pytest.raises(ConfigError, match="data.max_seq_len: got 64; accepted: a window that fits most threads"):
        Trainer(cfg, data_tokenizer).fit()
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match="data.max_seq_len: got 12; accepted: more than 1[0-9] tokens"):
        prepare_data(small_cfg(data_dir, tmp_path / "bad", data={"max_seq_len": 12}), data_tokenizer)


def test_resume_refuses_another_model(four_steps, data_dir, data_tokenizer):
    cfg, _, _ = four_steps
    other = small_cfg(data_dir, cfg.run_dir, resume=True, model={"hidden_size": 64}, train={"max_steps": 5})
    with pytest.raises(ConfigError, match="^model: .*the model of the checkpoint being resumed"):
        Trainer(other, data_tokenizer).fit()


def test_fresh_run_refuses_to_clobber_an_earlier_run(four_steps, data_dir, data_tokenizer):
    cfg, _, _ = four_steps
    metrics_before = (Path(cfg.run_dir) / "metrics.jsonl").read_text()
    again = small_cfg(data_dir, cfg.run_dir, train={"max_steps": 4})
    with pytest.raises(ConfigError, match="run_dir: .*already holds a run.*resume=true"):
        Trainer(again, data_tokenizer).fit()
    assert (Path(cfg.run_dir) / "metrics.jsonl").read_text() == metrics_before  # nothing was touched


def test_compiled_training_matches_eager_and_saves_plain_weights(four_steps, data_dir, data_tokenizer, tmp_path):
    """train.compile: the same losses up to kernel rounding, checkpoints without torch.compile's prefix."""
    cfg, summary, _ = four_steps
    trainer = Trainer(small_cfg(data_dir, tmp_path / "c", train={"max_steps": 4, "compile": True},
                                checkpoint={"every_steps": 2}, eval={"every_steps": 2}), data_tokenizer)
    got = trainer.fit()
    assert trainer.strategy.model is not trainer.strategy.eager  # it really ran compiled
    assert got["losses"] == pytest.approx(summary["losses"], rel=2e-2)
    assert got["val/loss"] == pytest.approx(summary["val/loss"], rel=2e-2)
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "c" / "final" / "model.safetensors")))
    assert keys and not any("_orig_mod" in k for k in keys)


def test_compile_failure_falls_back_to_eager(data_dir, data_tokenizer, tmp_path, monkeypatch):
    import torch._dynamo.exc

    class Broken(torch.nn.Module):  # what a failed inductor build looks like at the first forward
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            raise torch._dynamo.exc.TorchRuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", Broken)
    trainer = Trainer(small_cfg(data_dir, tmp_path / "run", train={"compile": True}), data_tokenizer)
    with pytest.warns(UserWarning, match="train.compile: torch.compile failed.*training runs eager"):
        summary = trainer.fit()
    assert len(summary["losses"]) == 3 and trainer.strategy.model is trainer.strategy.eager
