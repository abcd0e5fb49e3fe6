"""Run a model on problems through the runtime and record one `EvalRecord` per sample, resumably.

    >>> # records = evaluate(reasoner, problems, EvalConfig(max_thread_tokens=1024), "runs/eval/apr/greedy.jsonl")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apr.config import check
from apr.eval.metrics import EvalRecord


@dataclass
class EvalConfig:
    max_thread_tokens: int = 1024  # the largest per-thread window evaluated
    windows: tuple[int, ...] = (256, 512, 768, 1024)  # cumulative accuracy at these windows
    max_total_tokens: int | None = None
    max_children: int = 16
    temperature: float = 0.0
    num_samples: int = 1
    batch_size: int = 32  # problems per runtime call (their threads share engine batches)
    condition: str | None = None  # a first prompt line for conditioned models, e.g. "threads 6"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.max_thread_tokens >= max(self.windows, default=0), "eval.max_thread_tokens",
              self.max_thread_tokens, f">= the largest of eval.windows ({max(self.windows, default=0)})")
        check(self.num_samples >= 1, "eval.num_samples", self.num_samples, "a positive integer")
        check(self.batch_size >= 1, "eval.batch_size", self.batch_size, "a positive integer")


def _load_done(path: Path) -> list[EvalRecord]:
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(EvalRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                break  # a torn last line from an interrupted run: redo from there
    return out


def evaluate(reasoner, problems: Sequence, cfg: EvalConfig, records_path: str | Path) -> list[EvalRecord]:
    """Evaluate every problem (skipping those already in `records_path`), appending as it goes."""
    from tqdm import tqdm

    path = Path(records_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _load_done(path)
    # rewrite the file without a torn tail so appends stay valid JSONL
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in done))
    os.replace(tmp, path)
    finished = {r.problem_index for r in done}
    todo = [i for i in range(len(problems)) if i not in finished]
    limits = dict(max_thread_tokens=cfg.max_thread_tokens, max_total_tokens=cfg.max_total_tokens,
                  max_children=cfg.max_children, temperature=cfg.temperature, seed=cfg.seed)
    bar = tqdm(total=len(problems), initial=len(finished), desc=path.stem, disable=not cfg.progress, unit="problem")
    with open(path, "a") as f:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            results = reasoner.solve_batch([problems[i] for i in batch], num_samples=cfg.num_samples,
                                           condition=cfg.condition, **limits)
            for k, res in enumerate(results):
                m = res.metrics
                rec = EvalRecord(batch[k // cfg.num_samples], k % cfg.num_samples, res.answer, res.correct,
                                 m["generated_tokens"], m["sequential_tokens"], m["longest_thread_tokens"],
                                 m["total_tokens"], m["num_child_threads"], m["latency_s"],
                                 res.tree.tree.root.finish_reason or "")
                done.append(rec)
                f.write(json.dumps(rec.to_dict()) + "\n")
            f.flush()
            bar.update(len(batch))
            acc = sum(r.correct for r in done) / max(1, len(done))
            bar.set_postfix(acc=f"{acc:.1%}")
    bar.close()
    return sorted(done, key=lambda r: (r.problem_index, r.sample_index))
