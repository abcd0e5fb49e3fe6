"""`train.max_minutes`: the schedule follows a (fake) clock, the run ends finished at the deadline,
and a resumed run continues the same budget. No timing assertions: the clock is injected."""

import json
import shutil
from pathlib import Path

import pytest

from apr.config import ConfigError
from apr.sft import Trainer
from apr.train.metrics import read_metrics

from ._helpers import small_cfg

LR, MIN_RATIO = 1e-3, 0.1


class Ticks:
    """A clock that advances one second per reading (the trainer reads it once per step)."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def budget_cfg(data_dir, run_dir, **over):
    # 0.1 minutes = 6 ticks: six steps of the fake clock; no max_steps, so only the clock ends the run
    base = dict(train={"max_steps": None, "max_minutes": 0.1}, optim={"lr": LR, "min_lr_ratio": MIN_RATIO},
                checkpoint={"every_steps": 2})
    return small_cfg(data_dir, run_dir, **{**base, **over})


@pytest.fixture(scope="module")
def budget_run(data_dir, data_tokenizer, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("budget") / "a"
    summary = Trainer(budget_cfg(data_dir, run_dir), data_tokenizer, clock=Ticks()).fit()
    return run_dir, summary


def test_run_ends_finished_at_the_deadline_with_the_schedule_at_its_end(budget_run):
    run_dir, summary = budget_run
    final = run_dir / "final"
    state = json.loads((final / "trainer_state.json").read_text())
    assert (final / "model.safetensors").is_file() and summary["final"] == str(final)
    assert state["budget"]["elapsed_s"] >= 6.0 and state["step"] == len(summary["losses"]) == 6
    lrs = [r["train/lr"] for r in read_metrics(run_dir) if "train/lr" in r]
    assert lrs[-1] == pytest.approx(LR * MIN_RATIO)  # the cosine reached its end at the deadline
    after_warmup = lrs[1:]  # warmup_steps=2; then the cosine over the clock: 2 of 6 s gone -> 0.775 of the peak
    assert after_warmup[0] == pytest.approx(LR * (0.1 + 0.9 * 0.75)) and after_warmup == sorted(after_warmup)[::-1]


def test_the_warmup_caps_the_clock_schedule(data_dir, data_tokenizer, tmp_path):
    """A budget shorter than the warmup: the run still ends at the deadline, never above the cosine."""
    run = tmp_path / "short"
    summary = Trainer(budget_cfg(data_dir, run, optim={"lr": LR, "min_lr_ratio": MIN_RATIO, "warmup_steps": 100}),
                      data_tokenizer, clock=Ticks()).fit()
    lrs = [r["train/lr"] for r in read_metrics(run) if "train/lr" in r]
    assert len(lrs) == 6 and Path(summary["final"]).is_dir()
    assert lrs == pytest.approx([LR * (s + 1) / 100 for s in range(1, 7)])  # warming up: min(warmup, cosine)
    assert lrs[-1] <= LR * MIN_RATIO


def test_resume_continues_the_same_budget(budget_run, data_dir, data_tokenizer, tmp_path):
    run_dir, summary = budget_run
    interrupted = tmp_path / "interrupted"
    ckpt = run_dir / "checkpoints" / "step_00000004"
    shutil.copytree(ckpt, interrupted / "checkpoints" / ckpt.name)
    # another process, another clock origin: only the 4 s of training already done count
    resumed = Trainer(budget_cfg(data_dir, interrupted, resume=True), data_tokenizer, clock=Ticks(1e6)).fit()
    assert resumed["losses"] == summary["losses"][4:]  # same steps, same learning rates, same losses
    state = json.loads((Path(resumed["final"]) / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["budget"]["elapsed_s"] == pytest.approx(6.0)


def test_max_steps_still_caps_a_budgeted_run(data_dir, data_tokenizer, tmp_path):
    summary = Trainer(budget_cfg(data_dir, tmp_path / "r", train={"max_steps": 3, "max_minutes": 0.1}),
                      data_tokenizer, clock=Ticks()).fit()
    assert len(summary["losses"]) == 3 and Path(summary["final"]).is_dir()


def test_bad_budget_names_the_field(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="train.max_minutes"):
        budget_cfg(data_dir, tmp_path, train={"max_minutes": 0})
