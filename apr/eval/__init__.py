"""Evaluation: accuracy against context window, total tokens, sequential tokens and latency.

metrics  the paper's measures over per-sample records (accuracy vs window, pass@n, cons@n)
run      one model in one setting (temperature, condition line, samples) -> records, resumably, through
         `apr.scoring.solve_and_score` (the records and standard metrics SFT and RL use too)
suite    which settings each model runs; running them all; summaries
report   metrics.json and results.md;  plots: the PNG figures (matplotlib, lazily)
"""

from apr.eval.metrics import (
    EvalRecord,
    accuracy_vs_window,
    cons_at_n,
    pass_at_n,
    sample_curve,
    summarize_records,
)
from apr.eval.run import EvalConfig, Setting, evaluate
from apr.eval.suite import plan_settings, run_suite

__all__ = ["EvalConfig", "EvalRecord", "Setting", "accuracy_vs_window", "cons_at_n", "evaluate", "pass_at_n",
           "plan_settings", "run_suite", "sample_curve", "summarize_records"]
