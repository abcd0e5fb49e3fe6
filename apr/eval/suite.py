"""Which settings each model runs, running them all resumably, and the summaries the report reads.

    >>> cfg = EvalConfig(temperatures=(0.0, 1.0), conditions={"apr": ["threads 2"]}, cons_pass_n=4)
    >>> [s.name for s in plan_settings("apr_rl", cfg)]
    ['t0', 't1', 't0_threads-2']
    >>> [s.name for s in plan_settings("sosp", cfg)]   # t1 comes from the 4-sample run
    ['t0', 't1_n4']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from apr.config import ConfigError, to_dict
from apr.eval.metrics import EvalRecord, sample_curve, summarize_records
from apr.eval.run import EvalConfig, Setting, evaluate
from apr.model.integrity import weights_hash

RL_SUFFIX = "_rl"


def base_name(model: str) -> str:
    """`apr_rl` -> `apr`: an RL model inherits its SFT model's conditioning and curves."""
    return model.removesuffix(RL_SUFFIX) if model.endswith(RL_SUFFIX) and model != RL_SUFFIX else model


def plan_settings(model: str, cfg: EvalConfig) -> list[Setting]:
    """Temperatures (one sample), condition lines (greedy), then cons@n/pass@n samples if the model gets them.

    A single-sample setting is dropped when a many-sample one has the same temperature and condition:
    its accuracy is read from the many-sample records (the mean over all samples).
    """
    conditions = cfg.conditions.get(model, cfg.conditions.get(base_name(model), []))
    settings = [Setting(t) for t in cfg.temperatures] + [Setting(0.0, c) for c in conditions]
    if cfg.cons_pass_n > 0 and (model in cfg.cons_pass_models or base_name(model) in cfg.cons_pass_models):
        settings.append(Setting(cfg.cons_pass_temperature, None, cfg.cons_pass_n))
    most = {}
    for s in settings:
        key = (s.temperature, s.condition)
        if key not in most or s.num_samples > most[key].num_samples:
            most[key] = s
    out = []
    for s in settings:
        if most[(s.temperature, s.condition)] is s and s not in out:
            out.append(s)
    return out


def summarize_setting(records: Sequence[EvalRecord], setting: Setting, windows: Sequence[int]) -> dict:
    out = {**setting.to_dict(), **summarize_records(records, windows)}
    if setting.num_samples > 1:
        out["curve"] = sample_curve(records, setting.num_samples)
    return out


def rl_pairs(models: Sequence[str]) -> dict[str, str]:
    """`{"apr": "apr_rl"}` for every model whose `<name>_rl` is also evaluated."""
    return {m: m + RL_SUFFIX for m in models if m + RL_SUFFIX in models}


def fingerprint_of(models: dict[str, str], problems: Sequence, cfg: EvalConfig, data: dict | None) -> dict:
    """What the records in an out_dir were made from: data, limits, checkpoints (paths and weights), problems."""
    return {"data": data or {}, "limits": {**cfg.limits, "seed": cfg.seed}, "models": dict(models),
            "weights": {name: weights_hash(path) for name, path in models.items()},
            "problems": problem_hashes(problems)}


def check_settings(models: Sequence[str], cfg: EvalConfig) -> None:
    """Every model runs at least one setting (else its report would be silently empty), and no model name in
    `eval.conditions` or `eval.cons_pass_models` is a misspelling of one of this run's (a name close to a
    model's that matches none: its settings would be silently missing; names of models not in this run, like
    the defaults' `sosp` when only `apr` is evaluated, are fine)."""
    import difflib

    known = sorted(set(models) | {base_name(m) for m in models})
    named = [(f"eval.conditions.{n}", n) for n in cfg.conditions]
    named += [("eval.cons_pass_models", n) for n in cfg.cons_pass_models] if cfg.cons_pass_n > 0 else []
    for field, name in named:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if name not in known and close:
            raise ConfigError(f"{field}: got {name!r}, no model of this run (did you mean {close[0]!r}?); accepted: "
                              f"names among {', '.join(sorted(models))}")
    for name in models:
        if not plan_settings(name, cfg):
            raise ConfigError(f"eval.temperatures: got {list(cfg.temperatures)}, so model {name!r} runs no setting "
                              "(it has no eval.conditions, and no cons@n curve: eval.cons_pass_n="
                              f"{cfg.cons_pass_n}, eval.cons_pass_models={list(cfg.cons_pass_models)}); accepted: "
                              "at least one temperature, e.g. eval.temperatures=[0.0]")


def check_fingerprint(out_dir: Path, fingerprint: dict, write: bool = True) -> None:
    """Refuse to mix records made under different limits, on other problems or from other checkpoints
    (another path, or other weights at the same path) into one run dir."""
    path = out_dir / "fingerprint.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("data", "limits"):
        if key in old and old[key] != fingerprint[key]:
            raise ConfigError(f"out_dir: {str(out_dir)!r} holds records made with {key} {old[key]}, not "
                              f"{fingerprint[key]}; use another out_dir or delete its records to start over")
    old_problems, problems = old.get("problems", []), fingerprint.get("problems", [])
    for i, (a, b) in enumerate(zip(old_problems, problems)):
        if a != b:
            raise ConfigError(f"data_dir: problem {i} differs from the one {str(out_dir)!r} holds records of (the "
                              "data was regenerated?); use another out_dir or delete its records to start over")
    for name, ckpt in fingerprint["models"].items():
        if old.get("models", {}).get(name, ckpt) != ckpt:
            raise ConfigError(f"models.{name}: {str(out_dir)!r} holds its records from {old['models'][name]!r}, "
                              f"not {ckpt!r}; use another out_dir or another model name")
        weights = fingerprint.get("weights", {}).get(name)
        if old.get("weights", {}).get(name, weights) != weights:
            raise ConfigError(f"models.{name}: {ckpt!r} holds other weights than when {str(out_dir)!r} recorded "
                              f"its results (retrained?); use another out_dir, or delete records_{name}_*.jsonl "
                              "to evaluate it afresh")
    merged = {**fingerprint, "models": {**old.get("models", {}), **fingerprint["models"]},
              "weights": {**old.get("weights", {}), **fingerprint.get("weights", {})},
              "problems": max(old_problems, problems, key=len)}
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2))


def problem_hashes(problems: Sequence) -> list[str]:
    """A short hash of each problem, so records are never matched to regenerated problems by index alone."""
    return [hashlib.sha256(json.dumps(p.to_dict() if hasattr(p, "to_dict") else repr(p), sort_keys=True)
                           .encode()).hexdigest()[:12] for p in problems]


def run_suite(models: dict[str, str], load: Callable[[str], object], problems: Sequence, cfg: EvalConfig,
              out_dir: str | Path, data: dict | None = None) -> dict:
    """Run every planned setting of every model (`load(path)` gives a Reasoner) and summarise.

    Records go to `<out_dir>/records_<model>_<setting>.jsonl`; finished problems are not redone.
    Returns what `write_report` takes: `{"config", "data", "models": {name: {"path", "settings"}}, "rl_pairs"}`.
    """
    out = Path(out_dir)
    check_settings(list(models), cfg)
    check_fingerprint(out, fingerprint_of(models, problems, cfg, data))
    summary: dict = {"config": to_dict(cfg), "data": {**(data or {}), "num_problems": len(problems)},
                     "models": {}, "rl_pairs": rl_pairs(list(models))}
    for name, path in models.items():
        reasoner = load(path)  # one engine per model, shared by all its settings
        settings = {}
        for setting in plan_settings(name, cfg):
            records = evaluate(reasoner, problems, cfg, out / f"records_{name}_{setting.name}.jsonl", setting,
                               desc=f"{name} {setting.name}")
            settings[setting.name] = summarize_setting(records, setting, cfg.windows)
        summary["models"][name] = {"path": str(path), "settings": settings}
        close = getattr(getattr(reasoner, "engine", None), "close", None)
        if close is not None:  # free this model's KV (or server) before the next model loads
            close()
        del reasoner
    return summary
