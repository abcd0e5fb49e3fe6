"""A tiny random checkpoint and a Countdown data directory for RL tests, and a config builder."""

from __future__ import annotations

import json
from pathlib import Path

from apr.config import from_dict
from apr.model import ModelConfig
from apr.model.hf import build_for_tokenizer, save_checkpoint
from apr.rl.config import RLConfig
from apr.task import CountdownConfig, generate_problems


def make_checkpoint(tokenizer, path: Path, seed: int = 0) -> Path:
    model = build_for_tokenizer(ModelConfig("t", 32, 2, 2, None, 64, 512), tokenizer, seed=seed)
    save_checkpoint(model, tokenizer, path)
    return path


def make_data(path: Path, n_train: int = 40, n_val: int = 6) -> Path:
    problems = generate_problems(CountdownConfig(num_numbers=3), n_train + n_val, seed=0)
    for split, chunk in (("train", problems[:n_train]), ("val", problems[n_train:])):
        (path / split).mkdir(parents=True, exist_ok=True)
        (path / split / "problems.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in chunk))
    return path


def make_assets(tokenizer, root: Path) -> tuple[Path, Path]:
    """(initial checkpoint, data directory) under `root`."""
    return make_checkpoint(tokenizer, root / "init"), make_data(root / "data")


def rl_config(tmp: Path, init: Path, data: Path, **over) -> RLConfig:
    """A few-second run: 4 problems x G=2 per step, threads of <= 48 tokens."""
    c = {"init": str(init), "run_dir": str(tmp / "run"), "name": "t", "progress": False,
         "data": {"dir": str(data)},
         # a random model seldom ends with <eos>: the synthetic reward is paid either way
         "algo": {"group_size": 2, "reward": DIGITS, "require_eos": False},
         "optim": {"lr": 1e-3},
         # fp32: these runs compare numbers across code paths (one learner vs two, Ray vs in-process, SGLang
         # vs local, resume vs straight), exact only in fp32; a test of `auto` or bf16 says so itself
         "train": {"steps": 3, "batch_problems": 4, "inner_steps": 2, "micro_batch_tokens": 256,
                   "precision": "fp32"},
         "rollout": {"runtime": {"max_thread_tokens": 48, "temperature": 1.0}, "eval_problems": 4},
         "engine": {"max_seq_len": 64, "max_batch_size": 16},
         "checkpoint": {"every_steps": 2},
         "dist": {"mode": "none", "num_rollout_workers": 1},
         "wandb": {"mode": "disabled"}}
    for key, value in over.items():  # "train.steps": 5
        *parents, leaf = key.split(".")
        d = c
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value
    return from_dict(RLConfig, c, "")


def digit_share(problem, text: str, algo) -> float:
    """A synthetic reward a random tiny model can learn: the share of the words it wrote that are numbers
    below 250 (about a quarter of the vocabulary, so a random model starts near 0.25)."""
    words = text.split()  # `text` is what the root wrote itself (no prompt, no joined results)
    return sum(w.isdigit() and int(w) < 250 for w in words) / max(len(words), 1)


DIGITS = "tests.rl._setup:digit_share"
