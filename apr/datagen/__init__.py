"""Data sets of Countdown problems and solver traces, with their statistics."""

from apr.datagen.build import DataConfig, TraceRecord, generate_dataset, trace_problem
from apr.datagen.stats import summarize

__all__ = ["DataConfig", "TraceRecord", "generate_dataset", "summarize", "trace_problem"]
