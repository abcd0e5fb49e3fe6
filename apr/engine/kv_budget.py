"""Owns the KV memory budget: `engine.kv_memory` (bytes or a fraction of free memory) -> positions.

    >>> parse_bytes("1.5GiB"), parse_bytes("512MB"), parse_bytes(4096)
    (1610612736, 512000000, 4096)

`kv_memory` accepts:
- null: what `num_slots` (default 2 x max_batch_size) sequences at `max_seq_len` need, but at
  most half the free memory (the engine then never takes more than it can use);
- a fraction in (0, 1]: that share of the memory free when the engine is created, after the
  weights are placed (CUDA: `torch.cuda.mem_get_info`; CPU: the kernel's MemAvailable), like
  SGLang's `mem_fraction_static` but counting only what is still free;
- bytes: an integer, or a string with a unit ("8GiB", "500MB").
"""

from __future__ import annotations

import os
import re

import torch

from apr.config import ConfigError

DEFAULT_FREE_FRACTION = 0.5  # cap of the default budget: leave the rest to the learner, a second engine, ...
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
ACCEPTED = "null, a fraction of free memory in (0, 1], or bytes (an integer, or a string such as '8GiB')"


def parse_bytes(value: int | str) -> int:
    """Bytes from an integer or a string with a unit; ValueError if it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(value)
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def is_valid(value) -> bool:
    """Whether `value` is an accepted `engine.kv_memory` (checked in the config, before any allocation)."""
    if value is None:
        return True
    if isinstance(value, float):
        return 0 < value <= 1
    try:
        return parse_bytes(value) >= 1
    except ValueError:
        return False


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors now: the CUDA device's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # no /proc: free pages (macOS, BSD)


def budget_positions(kv_memory, num_slots: int, max_seq_len: int, bytes_per_position: int,
                     device: torch.device) -> int:
    """Positions the pool holds under `kv_memory`; ConfigError naming the field if not one full window."""
    if kv_memory is None:
        wanted = num_slots * max_seq_len * bytes_per_position
        budget = min(wanted, int(DEFAULT_FREE_FRACTION * free_memory_bytes(device)))
        how = f"the default (null: {num_slots} slots x {max_seq_len} positions, at most half the free memory)"
    elif isinstance(kv_memory, float):
        budget = int(kv_memory * free_memory_bytes(device))
        how = f"{kv_memory} of the free memory"
    else:
        budget = parse_bytes(kv_memory)
        how = f"{kv_memory!r}"
    positions = budget // bytes_per_position
    if positions < max_seq_len:
        raise ConfigError(
            f"engine.kv_memory: got {how} = {budget:,} bytes, {positions:,} positions of KV; accepted: at least "
            f"{max_seq_len * bytes_per_position:,} bytes (one sequence at engine.max_seq_len={max_seq_len}, "
            f"{bytes_per_position:,} bytes per position) - raise engine.kv_memory or lower engine.max_seq_len")
    return positions
