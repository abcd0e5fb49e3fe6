"""Run a model on problems in one setting through the runtime, one `EvalRecord` per sample, resumably.

    >>> # records = evaluate(reasoner, problems, EvalConfig(), "runs/eval/apr/records_apr_t0.jsonl",
    >>> #                    Setting(temperature=0.0, condition="threads 4"))
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apr.config import check, from_dict
from apr.runtime.config import RuntimeConfig
from apr.scoring import EvalRecord, solve_and_score

# the runtime limits an evaluation sets (`eval.<name>`); their defaults, meaning and checks are RuntimeConfig's
LIMITS = ("max_thread_tokens", "max_total_tokens", "max_children")


@dataclass
class EvalConfig:
    """What an evaluation run measures; `conf/eval.yaml`'s `eval:` section."""

    max_thread_tokens: int = RuntimeConfig.max_thread_tokens  # the largest per-thread window evaluated
    windows: tuple[int, ...] = (256, 512, 768, 1024)  # cumulative accuracy at these windows
    max_total_tokens: int | None = RuntimeConfig.max_total_tokens
    max_children: int = RuntimeConfig.max_children
    temperatures: tuple[float, ...] = (0.0, 0.5, 1.0)  # one single-sample setting each, unconditioned
    # condition lines per model name (`<name>_rl` falls back to `<name>`'s), each run greedily
    conditions: dict[str, list[str]] = field(default_factory=dict)
    cons_pass_n: int = 8  # samples per problem for the cons@n / pass@n curves (0: off)
    cons_pass_temperature: float = 1.0
    cons_pass_models: tuple[str, ...] = ("sosp",)  # model names that get the curves (and their `_rl`)
    batch_size: int = 32  # problems per runtime call (their threads share engine batches)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check(len(self.windows) > 0 and all(w > 0 for w in self.windows), "eval.windows", list(self.windows),
              "a non-empty list of positive token counts, e.g. [256, 512, 1024]")
        check(self.max_thread_tokens >= max(self.windows, default=0), "eval.max_thread_tokens",
              self.max_thread_tokens, f">= the largest of eval.windows ({max(self.windows, default=0)})")
        check(all(t >= 0 for t in self.temperatures), "eval.temperatures", list(self.temperatures),
              "a list of numbers >= 0 (0 = greedy)")
        check(self.cons_pass_temperature > 0, "eval.cons_pass_temperature", self.cons_pass_temperature,
              "a number > 0 (n greedy samples would all agree)")
        check(self.cons_pass_n >= 0, "eval.cons_pass_n", self.cons_pass_n, "0 (off) or a positive integer")
        for name, lines in self.conditions.items():
            check(isinstance(lines, (list, tuple)) and all(isinstance(c, str) and c.strip() for c in lines),
                  f"eval.conditions.{name}", lines, 'a list of condition lines, e.g. ["threads 2", "threads 4"]')
        check(self.batch_size >= 1, "eval.batch_size", self.batch_size, "a positive integer")
        from_dict(RuntimeConfig, self.limits, "eval")  # RuntimeConfig's checks, naming eval.<field>

    @property
    def limits(self) -> dict:
        """Runtime limits shared by every setting (`LIMITS`)."""
        return {name: getattr(self, name) for name in LIMITS}


@dataclass(frozen=True)
class Setting:
    """One way of running a model: sampling temperature, optional condition line, samples per problem."""

    temperature: float = 0.0
    condition: str | None = None
    num_samples: int = 1

    def __post_init__(self) -> None:
        check(self.temperature >= 0, "setting.temperature", self.temperature, "a number >= 0 (0 = greedy)")
        check(self.num_samples >= 1, "setting.num_samples", self.num_samples, "a positive integer")

    @property
    def name(self) -> str:
        """A file-name-safe label: `t0`, `t0.5`, `t0_threads-4`, `t1_n8`.

        >>> Setting(1.0, None, 8).name, Setting(0.0, "budget 512").name
        ('t1_n8', 't0_budget-512')
        """
        out = f"t{self.temperature:g}"
        if self.condition:
            out += "_" + re.sub(r"[^\w.]+", "-", self.condition.strip())
        return out + (f"_n{self.num_samples}" if self.num_samples > 1 else "")

    def to_dict(self) -> dict:
        return asdict(self)


def _load_done(path: Path, num_samples: int) -> list[EvalRecord]:
    """Records of problems with all their samples; a torn or partial tail is dropped (redone)."""
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(EvalRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                break  # a torn last line from an interrupted run: redo from there
    count = Counter(r.problem_index for r in out)
    return [r for r in out if count[r.problem_index] == num_samples]


def evaluate(reasoner, problems: Sequence, cfg: EvalConfig, records_path: str | Path,
             setting: Setting | None = None, desc: str | None = None) -> list[EvalRecord]:
    """Evaluate every problem in `setting` (greedy, one sample by default), skipping problems already
    in `records_path` and appending as it goes; returns the records of `problems`, in order."""
    from tqdm import tqdm

    setting = setting or Setting()
    path = Path(records_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _load_done(path, setting.num_samples)
    # rewrite the file without a torn tail so appends stay valid JSONL
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in done))
    os.replace(tmp, path)
    finished = {r.problem_index for r in done}
    todo = [i for i in range(len(problems)) if i not in finished]
    n = setting.num_samples
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=desc or path.stem,
               disable=not cfg.progress, unit="problem")
    with open(path, "a") as f:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            # the runtime seeds by position in the batch: offset by the first problem so batches differ
            limits = {**cfg.limits, "temperature": setting.temperature, "seed": cfg.seed + batch[0]}
            records, _ = solve_and_score(reasoner, [problems[i] for i in batch], limits, num_samples=n,
                                         condition=setting.condition, indices=batch)
            done += records
            f.write("".join(json.dumps(r.to_dict()) + "\n" for r in records))
            f.flush()
            bar.update(len(batch))
            bar.set_postfix(acc=f"{sum(r.correct for r in done) / max(1, len(done)):.1%}")
    bar.close()
    return sorted((r for r in done if r.problem_index < len(problems)), key=lambda r: (r.problem_index, r.sample_index))
