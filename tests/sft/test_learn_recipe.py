"""What the speedrun recipe adds to SFT: the Muon optimizer, a budget in training tokens, and the
cumulative tokens/seconds that time-to-accuracy is read against (benchmarks/bench_learn.py)."""

import importlib.util
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from apr.config import ConfigError
from apr.model import ModelConfig, build_model
from apr.sft import Trainer
from apr.train.metrics import read_metrics
from apr.train.optim import build_optimizer, orthogonalize, orthogonalize_batch

from ._helpers import small_cfg

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_learn.py"


def _optim(**over):
    from apr.sft import OptimConfig

    return OptimConfig(**{"name": "muon", "lr": 1e-2, **over})


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = build_model(ModelConfig(name="tiny", num_layers=2), vocab_size=64, seed=0)
    opt = build_optimizer(model, _optim())
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    for name, p in model.named_parameters():
        is_hidden = p.dim() == 2 and "embed" not in name and "lm_head" not in name
        assert (id(p) in muon) == is_hidden, name
    assert any(g["use_muon"] for g in opt.param_groups) and any(not g["use_muon"] for g in opt.param_groups)
    assert {g["lr"] for g in opt.param_groups if not g["use_muon"] and g["weight_decay"] > 0} == {1e-2}
    scaled = build_optimizer(model, _optim(embed_lr_scale=5.0))
    embed = [g for g in scaled.param_groups if not g["use_muon"] and g["weight_decay"] > 0]
    assert embed and all(g["lr"] == 5e-2 for g in embed)
    assert all(g["lr"] == 1e-2 for g in scaled.param_groups if g["use_muon"] or g["weight_decay"] == 0.0)
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    assert no_decay and all(p.dim() < 2 for g in no_decay for p in g["params"])  # norms are not decayed


def test_orthogonalize_flattens_the_spectrum_of_tall_and_wide_matrices():
    for shape in ((48, 16), (16, 48)):
        torch.manual_seed(0)
        g = torch.randn(*shape) @ torch.diag(torch.logspace(0, 2, 16)) if shape[0] > shape[1] else \
            torch.diag(torch.logspace(0, 2, 16)) @ torch.randn(*shape)
        s = torch.linalg.svdvals(orthogonalize(g))
        before = torch.linalg.svdvals(g)
        assert s.shape == (16,) and s.max() < 1.3 and s.min() > 0.3  # every direction gets a similar step
        assert before.max() / before.min() > 100 and s.max() / s.min() < 4


def test_muon_lowers_a_loss_and_its_state_round_trips():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny", num_layers=2), vocab_size=64, seed=0)
    opt = build_optimizer(model, _optim(lr=3e-3))
    ids = torch.randint(3, 64, (4, 32))
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.5
    again = build_optimizer(model, _optim(lr=3e-3))
    again.load_state_dict(opt.state_dict())
    for a, b in zip(opt.state.values(), again.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_sft_run_with_muon_resumes_exactly(data_dir, data_tokenizer, tmp_path):
    over = {"optim": {"name": "muon", "lr": 5e-3}, "train": {"max_steps": 4}, "checkpoint": {"every_steps": 2}}
    straight = Trainer(small_cfg(data_dir, tmp_path / "a", **over), data_tokenizer).fit()
    assert all(math.isfinite(v) for v in straight["losses"]) and straight["losses"][-1] < straight["losses"][0]
    ckpt = tmp_path / "a" / "checkpoints" / "step_00000002"  # an interrupted run: only step 2's checkpoint
    shutil.copytree(ckpt, tmp_path / "b" / "checkpoints" / ckpt.name)
    resumed = Trainer(small_cfg(data_dir, tmp_path / "b", resume=True, **over), data_tokenizer).fit()
    assert resumed["losses"] == straight["losses"][2:]  # Muon's momentum buffers came back too


def test_max_tokens_sets_the_steps_and_evaluations_carry_cumulative_tokens(data_dir, data_tokenizer, tmp_path):
    cfg = small_cfg(data_dir, tmp_path / "run", train={"max_steps": None, "max_tokens": 2500},
                    eval={"every_steps": 2})
    trainer = Trainer(cfg, data_tokenizer)
    summary = trainer.fit()
    per_step = int(trainer.loader.seqs.lengths.sum()) / trainer.loader.steps_in_epoch(0)
    assert trainer.total_steps == summary["step"] == math.ceil(2500 / per_step) >= 2
    rows = read_metrics(tmp_path / "run")
    trained = [r["train/tokens"] for r in rows if "train/loss" in r]  # log.every_steps=1: every step
    evals = [r for r in rows if "val/loss" in r]
    assert evals and all(r["train/tokens_seen"] == sum(trained[:r["step"]]) for r in evals)
    assert all(r["train/seconds"] > 0 for r in evals)
    capped = small_cfg(data_dir, tmp_path / "capped", train={"max_steps": 1, "max_tokens": 1e9})
    assert Trainer(capped, data_tokenizer).fit()["step"] == 1
    with pytest.raises(ConfigError, match="train.max_tokens"):
        small_cfg(data_dir, tmp_path / "bad", train={"max_tokens": -5})
    with pytest.raises(ConfigError, match="optim.lr"):
        small_cfg(data_dir, tmp_path / "bad", optim={"lr": float("inf")})
    with pytest.raises(ConfigError, match="optim.name.*deepspeed"):
        small_cfg(data_dir, tmp_path / "bad", optim={"name": "muon"}, train={"strategy": "deepspeed", "zero_stage": 2})


def _bench():
    spec = importlib.util.spec_from_file_location("bench_learn", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_learn"] = module
    spec.loader.exec_module(module)
    return module


def test_time_to_accuracy_reads_the_first_evaluation_reaching_each_threshold():
    bench = _bench()
    rows = [{"step": 5, "eval/accuracy": 0.0, "train/tokens_seen": 100, "train/seconds": 1.0},
            {"step": 10, "eval/accuracy": 0.25, "train/tokens_seen": 200, "train/seconds": 2.0},
            {"step": 12, "train/loss": 1.0},
            {"step": 15, "eval/accuracy": 0.2, "train/tokens_seen": 300, "train/seconds": 3.0},
            {"step": 20, "eval/accuracy": 0.4, "train/tokens_seen": 400, "train/seconds": 4.0}]
    t = bench.time_to_accuracy(rows)
    assert t[0.1] == t[0.2] == {"step": 10, "tokens": 200, "seconds": 2.0}
    assert t[0.3]["tokens"] == t[0.4]["tokens"] == 400 and t[0.5] is None
    assert bench.cpu_kind().split(" (")[0] in ("AMX", "AVX512-BF16", "AVX512, no BF16", "AVX2 only", "no AVX2")


def test_orthogonalizing_a_stack_equals_one_matrix_at_a_time():
    g = torch.Generator().manual_seed(3)
    for shape in ((5, 64, 32), (3, 32, 96), (1, 16, 16)):
        stack = torch.randn(*shape, generator=g)
        batched = orthogonalize_batch(stack)
        for i in range(shape[0]):
            torch.testing.assert_close(batched[i], orthogonalize(stack[i]), atol=1e-5, rtol=1e-4)
