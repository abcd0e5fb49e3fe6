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

from apr.cli.common import config_dir, run_clean, to_container


def run(c: dict) -> dict:
    import json
    from pathlib import Path

    from apr.api import Reasoner
    from apr.config import ConfigError, from_dict
    from apr.engine.config import engine_config, engine_name, engine_options, with_window
    from apr.eval import EvalConfig, run_suite
    from apr.eval.report import write_report
    from apr.task import Problem

    cfg = from_dict(EvalConfig, c["eval"], "eval")
    engine = with_window(engine_config(c.get("engine") or {}), cfg.max_thread_tokens)
    models = {name: path for name, path in (c["models"] or {}).items() if path}
    if not models:
        raise ConfigError("models: empty; add checkpoints with models.<name>=<dir>, e.g. models.apr=runs/sft/apr/final")
    problems_path = Path(c["data_dir"]) / c["split"] / "problems.jsonl"
    if not problems_path.is_file():
        raise ConfigError(f"data_dir: {str(problems_path)!r} not found; generate data with python -m apr.cli.data")
    problems = [Problem.from_dict(json.loads(line)) for line in open(problems_path) if line.strip()]
    problems = problems[: c["num_problems"]] if c["num_problems"] else problems
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
