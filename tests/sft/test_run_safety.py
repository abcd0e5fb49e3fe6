"""Runs never mix with older runs: overwrite, changed settings on resume, damaged checkpoints (issue 15)."""

import json
import shutil
from pathlib import Path

import pytest

from apr.api import Reasoner
from apr.config import ConfigError
from apr.model import load_checkpoint
from apr.sft import Trainer
from apr.train import checkpoint as ckpt
from apr.train.metrics import read_metrics

from ._helpers import small_cfg


@pytest.fixture(scope="module")
def four_steps(data_dir, data_tokenizer, tmp_path_factory):
    """A finished 4-step run with a checkpoint at step 2 (copied, never changed, by the tests below)."""
    run_dir = tmp_path_factory.mktemp("safety") / "a"
    summary = Trainer(_cfg(data_dir, run_dir), data_tokenizer).fit()
    return run_dir, summary


def _cfg(data_dir, run_dir, **over):
    base = {"train": {"max_steps": 4}, "checkpoint": {"every_steps": 2}, "eval": {"every_steps": 2}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return small_cfg(data_dir, run_dir, **base)


def _copy(four_steps, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(four_steps[0], run_dir)
    return run_dir


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_checkpoints_carry_a_manifest_of_sizes_and_hashes(four_steps):
    run_dir, _ = four_steps
    for cp in (run_dir / "final", run_dir / "checkpoints" / "step_00000002"):
        files = json.loads((cp / "manifest.json").read_text())["files"]
        assert {"model.safetensors", "trainer_state.json", "config.json"} <= set(files)
        assert files["model.safetensors"]["size"] == (cp / "model.safetensors").stat().st_size
        assert len(files["model.safetensors"]["sha256"]) == 64


def test_loading_a_truncated_checkpoint_names_the_file(four_steps, tmp_path):
    run_dir = _copy(four_steps, tmp_path)
    _truncate(run_dir / "final" / "model.safetensors")
    with pytest.raises(ConfigError, match=r"model: .*final' is damaged: model.safetensors: \d+ bytes, but \d+ were"):
        Reasoner.from_pretrained(run_dir / "final")
    with pytest.raises(ConfigError, match="checkpoint: .*is damaged: model.safetensors"):
        load_checkpoint(run_dir / "final")


def test_loading_a_truncated_checkpoint_without_manifest_names_the_file(four_steps, tmp_path):
    run_dir = _copy(four_steps, tmp_path)
    (run_dir / "final" / "manifest.json").unlink()  # e.g. a plain HF directory from elsewhere
    _truncate(run_dir / "final" / "model.safetensors")
    with pytest.raises(ConfigError, match="model: .*is damaged: model.safetensors: .*truncated"):
        Reasoner.from_pretrained(run_dir / "final")
    (run_dir / "final" / "config.json").write_text('{"vocab_size": 1')
    with pytest.raises(ConfigError, match="is damaged: config.json: not valid JSON"):
        Reasoner.from_pretrained(run_dir / "final")


def test_resume_falls_back_to_the_newest_intact_checkpoint(four_steps, data_dir, data_tokenizer, tmp_path, capsys):
    _, summary = four_steps
    run_dir = _copy(four_steps, tmp_path)
    weights = run_dir / "final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, one flipped byte: only the hash shows it
    weights.write_bytes(bytes(data))
    resumed = Trainer(_cfg(data_dir, run_dir, resume=True), data_tokenizer).fit()
    out = capsys.readouterr()
    text = out.out + out.err
    assert "final is damaged: model.safetensors: contents differ" in text
    assert "resuming from" in text and "step_00000002" in text
    assert resumed["losses"] == summary["losses"][2:]  # continued exactly from step 2
    assert (run_dir / "damaged" / "final" / "model.safetensors").is_file()  # moved aside, not deleted
    assert json.loads((run_dir / "final" / "trainer_state.json").read_text())["step"] == 4


def test_resume_refuses_when_every_checkpoint_is_damaged(four_steps, data_dir, data_tokenizer, tmp_path):
    run_dir = _copy(four_steps, tmp_path)
    for cp in (run_dir / "final", run_dir / "checkpoints" / "step_00000002"):
        (cp / "trainer_state.json").write_text("{")
    with pytest.raises(ConfigError, match="resume: every checkpoint .* is damaged: .*final \\(trainer_state.json"):
        Trainer(_cfg(data_dir, run_dir, resume=True), data_tokenizer).fit()


def test_overwrite_sets_the_earlier_run_aside(four_steps, data_dir, data_tokenizer, tmp_path, capsys):
    run_dir = _copy(four_steps, tmp_path)  # step_00000002 and final (step 4) of the earlier run
    Trainer(_cfg(data_dir, run_dir, overwrite=True, train={"max_steps": 1}), data_tokenizer).fit()
    assert "overwrite=true: moved the earlier run's checkpoints, final, metrics.jsonl" in capsys.readouterr().out
    # only the new run's checkpoints remain: a later resume cannot pick the earlier run's step 2
    assert [(p.name, json.loads((p / "trainer_state.json").read_text())["step"]) for p in ckpt.candidates(run_dir)] \
        == [("final", 1)]
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == [1]
    (aside,) = (run_dir / "replaced").iterdir()  # moved, not deleted
    assert json.loads((aside / "final" / "trainer_state.json").read_text())["step"] == 4
    assert (aside / "checkpoints" / "step_00000002" / "model.safetensors").is_file()
    assert [r["step"] for r in read_metrics(aside) if "train/loss" in r] == [1, 2, 3, 4]


def test_resume_refuses_changed_settings_and_names_them(four_steps, data_dir, data_tokenizer, tmp_path):
    run_dir = _copy(four_steps, tmp_path)
    (run_dir / "final").rename(run_dir / "interrupted")  # an interrupted run: step 2 is the newest
    with pytest.raises(ConfigError, match=r"resume: .*step_00000002' was made with other settings: optim.lr "
                                          r"0.001 -> 0.002; steps \(train.max_steps, num_epochs\) 4 -> 5; accepted: .*"
                                          r"resume_changed=true"):
        Trainer(_cfg(data_dir, run_dir, resume=True, optim={"lr": 2e-3}, train={"max_steps": 5}), data_tokenizer).fit()
    with pytest.raises(ConfigError, match="; data.solver 'sosp' -> 'apr'"):
        Trainer(_cfg(data_dir, run_dir, resume=True, data={"solver": "apr"}), data_tokenizer).fit()
    regenerated = tmp_path / "data"
    shutil.copytree(data_dir, regenerated)
    with open(regenerated / "train" / "sosp.jsonl", "a") as f:  # e.g. data regenerated with more problems
        f.write((data_dir / "train" / "sosp.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match="other settings: data.dir contents [0-9a-f']+ -> "):
        Trainer(_cfg(regenerated, run_dir, resume=True), data_tokenizer).fit()
    # probe (issue 26 item 3): the same traces beside another data set's tokenizer resumed, and final/ was
    # written with that tokenizer beside weights of the first one's vocabulary
    retokenized = tmp_path / "data2"
    shutil.copytree(data_dir, retokenized)
    tok_file = retokenized / "tokenizer" / "tokenizer.json"
    tok_file.write_text(tok_file.read_text().replace('"<pad>"', '"<PAD>"', 1))
    with pytest.raises(ConfigError, match="other settings: data.dir tokenizer [0-9a-f']+ -> "):
        Trainer(_cfg(retokenized, run_dir, resume=True), data_tokenizer).fit()
    with pytest.raises(ConfigError, match="optim.embed_lr_scale 1.0 -> 5.0; optim.weight_decay 0.1 -> 0.0"):
        Trainer(_cfg(data_dir, run_dir, resume=True, optim={"embed_lr_scale": 5.0, "weight_decay": 0.0}),
                data_tokenizer).fit()
    assert not (run_dir / "final").exists()  # nothing was trained or written by the refused runs


def test_resume_changed_continues_with_the_new_settings(four_steps, data_dir, data_tokenizer, tmp_path, capsys):
    run_dir = _copy(four_steps, tmp_path)
    summary = Trainer(_cfg(data_dir, run_dir, resume=True, resume_changed=True, train={"max_steps": 5}),
                      data_tokenizer).fit()
    assert summary["step"] == 5 and len(summary["losses"]) == 1
    assert "resume_changed=true: continuing" in capsys.readouterr().out


def test_weights_with_nan_are_never_saved_and_the_last_good_checkpoint_is_named(four_steps, tmp_path, capsys):
    # probe (issue 26 item 1): optim.lr=inf ran to "done" and saved NaN weights as final/
    import torch

    from apr.cli.common import run_clean
    from apr.train.strategy import STRATEGIES

    run_dir = _copy(four_steps, tmp_path)
    model, tokenizer = load_checkpoint(run_dir / "final")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, :3] = float("nan")
    strategy = STRATEGIES["torch"](torch.device("cpu"), "fp32")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy.setup(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
    target = run_dir / "checkpoints" / "step_00000006"
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())

    def save():
        ckpt.save(target, lambda d: ckpt.save_model(d, strategy, tokenizer), {"step": 6})

    capsys.readouterr()  # transformers' loading bars
    with pytest.raises(ckpt.NonFiniteWeights, match=r"model.layers.1.mlp.up_proj.weight\) at step 6: .*step_00000006 "
                                                     r"was not written; the last good checkpoint is .*final"):
        save()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before  # no staging left either
    with pytest.raises(SystemExit) as e:  # the CLIs: one line, non-zero
        run_clean(save)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the weights hold NaN or inf")


def test_rl_learning_rates_must_be_finite():
    from apr.config import from_dict
    from apr.rl.config import RLConfig

    for field in ("lr", "critic_lr"):
        with pytest.raises(ConfigError, match=f"^optim.{field}: got inf; accepted: a positive finite number"):
            from_dict(RLConfig, {"init": "x", "optim": {field: float("inf")}})
