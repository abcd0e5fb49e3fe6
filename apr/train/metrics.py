"""Timed phases, metrics out to `metrics.jsonl` and wandb (offline by default), a progress bar, and when a
periodic action (eval, checkpoint) is due: the same for SFT and RL.

    >>> times = {}
    >>> with timer("forward_backward", times):
    ...     pass
    >>> list(times)
    ['time/forward_backward_s']
    >>> [is_due(s, 2) for s in (1, 2)], is_due(2, 0)
    ([False, True], False)
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path

from apr.train.config import WandbConfig


@contextlib.contextmanager
def timer(name: str, times: dict):
    """Add the wall time of the block to `times["time/<name>_s"]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        key = f"time/{name}_s"
        times[key] = times.get(key, 0.0) + time.perf_counter() - start


class MetricsLog:
    """Appends one JSON object per call to `<run_dir>/metrics.jsonl` and mirrors it to wandb.

    Only the main process logs; the others get a no-op instance (`enabled=False`).
    """

    def __init__(self, run_dir: Path, wandb_cfg: WandbConfig, name: str, config: dict, enabled: bool = True,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a resumed run drops the rows the interrupted run wrote after its checkpoint
        kept = [r for r in read_metrics(run_dir) if r["step"] <= resume_step] \
            if resume_step is not None and self.path.is_file() else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if wandb_cfg.mode != "disabled":
            self._wandb = _init_wandb(Path(run_dir), wandb_cfg, name, config, resume_step is not None)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            run_dir, offline = self._wandb.dir, self._wandb.settings.mode == "offline"
            self._wandb.finish()
            self._wandb = None
            if offline:  # wandb itself is silent (its own lines are in <run_dir>/wandb/.../logs/)
                path = Path(run_dir).parent
                print(f"wandb: offline run in {path} (upload it with: wandb sync {path})", flush=True)


def _init_wandb(run_dir: Path, cfg: WandbConfig, name: str, config: dict, resume: bool):
    import wandb  # lazy: heavy, and optional for library users

    id_file = run_dir / "wandb_id.txt"  # a resumed run continues the same wandb run
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id)
    # silent: wandb's banner and ~30-line run summary go to its log files under <run_dir>/wandb/, not the
    # console (MetricsLog.close prints one line of ours); console="off": our stdout is not captured twice
    settings = wandb.Settings(silent=True, console="off")
    return wandb.init(project=cfg.project, entity=cfg.entity, name=name, mode=cfg.mode, dir=str(run_dir),
                      config=config, id=run_id, resume="allow", settings=settings)


def _plain(v):
    return v.item() if hasattr(v, "item") else v  # numpy / torch scalars


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's `metrics.jsonl`."""
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def progress_bar(total: int | None, initial: int, enabled: bool, desc: str):
    """A tqdm bar over optimizer steps (ETA from tqdm); the trainer's postfix carries its figures."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, desc=desc)


def is_due(step: int, every: int) -> bool:
    """Whether a periodic action (every `every` steps; 0: never) is due after `step` steps."""
    return every > 0 and step % every == 0


def say(prefix: str, msg: str) -> None:
    """One line to the console that keeps a progress bar intact."""
    from tqdm import tqdm

    tqdm.write(f"[{prefix}] {msg}")
