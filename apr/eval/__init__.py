"""Evaluation: accuracy against context window, total tokens, sequential tokens and latency."""

from apr.eval.metrics import EvalRecord, accuracy_vs_window, cons_at_n, pass_at_n, summarize_records
from apr.eval.run import EvalConfig, evaluate

__all__ = ["EvalConfig", "EvalRecord", "accuracy_vs_window", "cons_at_n", "evaluate", "pass_at_n",
           "summarize_records"]
