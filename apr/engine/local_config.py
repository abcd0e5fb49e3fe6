"""Owns the local engine's config: sizes, placement, dtype, each field validated (errors name `engine.<field>`).

Split from `local` so the engine loop stays one file's read; `apr.engine.local` re-exports both names.

    >>> LocalEngineConfig(max_batch_size=8).dtype  # CPU: fp32 (CUDA: bf16)
    'float32'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apr.config import check, fail
from apr.engine import kv_budget

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_device_available(device: str, field: str) -> None:
    """A CUDA device asked for where this torch cannot use one is a config error, not an AssertionError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        fail(field, device, "a torch device string such as cpu, cuda or cuda:0")
    if dev.type != "cuda" or torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count():
        return
    why = ("this torch is a CPU-only build (install a CUDA build of torch)" if torch.version.cuda is None
           else f"torch sees {torch.cuda.device_count()} CUDA device(s)")
    fail(field, device, f"cpu here: {why}")


@dataclass
class LocalEngineConfig:
    """Sizes and placement of the local engine (validated; errors name `engine.<field>`).

    KV memory is a budget (`kv_memory`, see `apr.engine.kv_budget`): one position costs
    layers x 2 x kv_heads x head_dim x dtype bytes (tiny preset, fp32: 4 KiB), and sequences
    hold rows as long as the longest live one needs, not `max_seq_len` each (`kv_cache`).
    """

    max_batch_size: int = 64  # sequences decoded together in one forward
    # positions per sequence (prompt + generated + appended); None: the command's thread window, filled
    # in by `apr.engine.config.with_window` before an engine is built
    max_seq_len: int | None = 2048
    # KV budget: None (num_slots x max_seq_len, at most half the free memory), a fraction of the
    # free memory in (0, 1], or bytes (int, or a string such as "8GiB")
    kv_memory: float | int | str | None = None
    num_slots: int | None = None  # most sequences holding KV (running + suspended); None: what kv_memory holds
    max_prefill_tokens: int = 4096  # padded tokens per prefill forward (more requests wait a step)
    device: str = "cpu"  # any torch device string: cpu, cuda, cuda:1
    # float32 | bfloat16 | float16 (weights, activations and KV); None: bfloat16 on CUDA, float32 on CPU
    dtype: str | None = None
    # replay decode steps from CUDA graphs captured per batch-size bucket (CUDA only; CPU ignores it)
    cuda_graphs: bool = True
    compile: bool = False  # torch.compile the layer stack (dynamic shapes; slow first steps)
    # decode attention runs on chunks of this many rows, each reading only its own longest context;
    # rows are regrouped by length when that saves enough (0: one chunk, never regroup)
    attention_chunk_rows: int = 16
    seed: int = 0  # seeds requests that carry no seed, so whole runs are reproducible

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_seq_len", "max_prefill_tokens"):
            value = getattr(self, name)
            if name == "max_seq_len" and value is None:
                continue
            check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                  f"engine.{name}", value, "a positive integer")
        slots = self.num_slots
        check(slots is None or (isinstance(slots, int) and not isinstance(slots, bool) and slots > 0),
              "engine.num_slots", slots, "a positive integer or None (as many as engine.kv_memory holds)")
        check(kv_budget.is_valid(self.kv_memory), "engine.kv_memory", self.kv_memory, kv_budget.ACCEPTED)
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            fail("engine.device", self.device, "a torch device string such as cpu, cuda or cuda:0")
        if self.dtype is None:
            self.dtype = "bfloat16" if device.type == "cuda" else "float32"
        check(self.dtype in DTYPES, "engine.dtype", self.dtype, ", ".join(DTYPES) + " or None")
        check(isinstance(self.cuda_graphs, bool), "engine.cuda_graphs", self.cuda_graphs, "true or false")
        check(isinstance(self.compile, bool), "engine.compile", self.compile, "true or false")
        rows = self.attention_chunk_rows
        check(isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0, "engine.attention_chunk_rows",
              rows, "a non-negative integer (0: no chunking)")
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool), "engine.seed", self.seed,
              "an integer")
