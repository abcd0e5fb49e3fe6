"""Evaluate SoS+/APR checkpoints on held-out Countdown problems: accuracy against window and costs.

    python -m apr.cli.eval models.apr=runs/sft/apr/final models.sosp=runs/sft/sosp/final \
        data_dir=data/countdown_n4 num_problems=500 out_dir=runs/eval/n4
    # a ~6M model: ~1-3 minutes per 100 N=4 problems on 2 CPU cores; resumable (re-run to continue)
"""

from __future__ import annotations

import hydra

from apr.cli.common import run_clean, to_container


def run(c: dict) -> dict:
    import json
    from pathlib import Path

    from apr.api import Reasoner
    from apr.config import ConfigError, from_dict
    from apr.eval import EvalConfig, evaluate, summarize_records
    from apr.eval.report import write_report
    from apr.task import Problem

    cfg = from_dict(EvalConfig, c["eval"], "eval")
    models = {name: path for name, path in (c["models"] or {}).items() if path}
    if not models:
        raise ConfigError("models: empty; add checkpoints with models.<name>=<dir>, e.g. models.apr=runs/sft/apr/final")
    problems_path = Path(c["data_dir"]) / c["split"] / "problems.jsonl"
    if not problems_path.is_file():
        raise ConfigError(f"data_dir: {str(problems_path)!r} not found; generate data with python -m apr.cli.data")
    problems = [Problem.from_dict(json.loads(line)) for line in open(problems_path)]
    problems = problems[: c["num_problems"]] if c["num_problems"] else problems
    out = Path(c["out_dir"])
    summaries = {}
    for name, path in models.items():
        reasoner = Reasoner.from_pretrained(path, **(c["engine"] or {}))
        records = evaluate(reasoner, problems, cfg, out / f"records_{name}.jsonl")
        summaries[name] = {"model": path, **summarize_records(records, cfg.windows)}
    write_report(summaries, cfg, out)
    return summaries


@hydra.main(version_base="1.3", config_path="../../conf", config_name="eval")
def main(cfg) -> None:
    run_clean(lambda: run(to_container(cfg)))


if __name__ == "__main__":
    main()
