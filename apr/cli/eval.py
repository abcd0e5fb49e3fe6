"""Evaluate SoS+/APR checkpoints on held-out Countdown problems: the paper's accuracy/cost measurements.

    python -m apr.cli.eval models.apr=runs/sft/apr/final models.sosp=runs/sft/sosp/final \
        data_dir=data/countdown_n4 num_problems=500 out_dir=runs/eval/n4
    python -m apr.cli.eval ... +models.apr_rl=runs/rl/apr/final         # adds a before/after-RL table
    python -m apr.cli.eval ... 'eval.conditions.apr=[threads 2,threads 4]' 'eval.conditions.sosp=[budget 512]'
    make eval MODEL=runs/sft/apr/final NAME=apr                       # one model
    python -m apr.cli.eval ... engine.device=cuda                     # on a GPU (conf/engine/local.yaml)
    python -m apr.cli.eval models.apr=DIR models.sosp=null ... engine=sglang 'engine.urls=[http://h:30000]'
    # SGLang servers that serve DIR (or engine.launch=true starts one per URL from each checkpoint)
    # per model, one pass over the problems per setting: 3 temperatures (+ conditions) + 8 samples for
    # SoS+ cons@n. A ~6M model: ~1-3 min per 100 N=4 problems per pass on 2 CPU cores, so 500 problems
    # x 2 models ~1-2 h. Resumable: re-run the same command to continue; finished problems are kept.
Writes <out_dir>/records_<model>_<setting>.jsonl, metrics.json, results.md and accuracy_vs_*.png.
"""

from __future__ import annotations

import hydra

from apr.cli.common import check_writable_dir, config_dir, run_clean, to_container


def inputs(c: dict) -> tuple:
    """(EvalConfig, {name: checkpoint dir}, problems, engine config) from the composed config, every field checked."""
    from apr.config import ConfigError, check, from_dict
    from apr.engine.config import engine_config, with_window
    from apr.eval import EvalConfig
    from apr.task import load_problems

    cfg = from_dict(EvalConfig, c["eval"], "eval")
    engine = with_window(engine_config(c.get("engine") or {}), cfg.max_thread_tokens)
    models = {name: path for name, path in (c["models"] or {}).items() if path}
    if not models:
        raise ConfigError("models: empty; add checkpoints with models.<name>=<dir>, e.g. models.apr=runs/sft/apr/final")
    n = c["num_problems"]
    check(n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1), "num_problems", n,
          "a positive integer, or null for the whole split")
    return cfg, models, load_problems(c["data_dir"], c["split"], n, field="data_dir"), engine


def preflight(c: dict) -> None:
    """What can refuse the run, checked before Hydra writes into out_dir (`apr.cli.common.Preflight`)."""
    from pathlib import Path

    from apr.config import ConfigError
    from apr.eval.suite import check_fingerprint, check_settings, fingerprint_of
    from apr.model.integrity import check_checkpoint, check_window

    cfg, models, problems, _ = inputs(c)
    for name, path in models.items():
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"models.{name}: {path!r} is not a model directory (no config.json); accepted: a "
                              "checkpoint directory, e.g. runs/sft/<name>/final")
        check_checkpoint(path, f"models.{name}")
    check_settings(list(models), cfg)
    for path in models.values():
        check_window(path, cfg.max_thread_tokens, "eval.max_thread_tokens")
    check_writable_dir(c["out_dir"], "out_dir")
    data = {"data_dir": str(c["data_dir"]), "split": c["split"]}
    check_fingerprint(Path(c["out_dir"]), fingerprint_of(models, problems, cfg, data), write=False)


def run(c: dict) -> dict:
    from apr.api import Reasoner
    from apr.engine.config import engine_name, engine_options
    from apr.eval import run_suite
    from apr.eval.report import write_report

    cfg, models, problems, engine = inputs(c)
    kind, options = engine_name(engine), engine_options(engine)
    summary = run_suite(models, lambda path: Reasoner.from_pretrained(path, engine=kind, **options), problems, cfg,
                        c["out_dir"], data={"data_dir": str(c["data_dir"]), "split": c["split"]})
    write_report(summary, c["out_dir"], plots=c.get("plots", True))
    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg) -> None:
    run_clean(lambda: run(to_container(cfg)))


if __name__ == "__main__":
    main()
