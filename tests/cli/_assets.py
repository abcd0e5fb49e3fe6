"""A tiny random checkpoint and a test split of N=3 problems, for the eval CLI tests."""

from __future__ import annotations

import json
from pathlib import Path

from apr.model import ModelConfig
from apr.model.hf import build_for_tokenizer, save_checkpoint
from apr.task import CountdownConfig, generate_problems


def eval_assets(root: Path, tokenizer, num_problems: int) -> tuple[Path, Path]:
    """(root with data/test/problems.jsonl, the checkpoint directory root/model)."""
    ckpt = root / "model"
    save_checkpoint(build_for_tokenizer(ModelConfig("t", 32, 1, 2, None, 64, 256), tokenizer, seed=0), tokenizer, ckpt)
    (root / "data" / "test").mkdir(parents=True)
    problems = generate_problems(CountdownConfig(num_numbers=3), num_problems, seed=1)
    (root / "data" / "test" / "problems.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in problems))
    return root, ckpt
