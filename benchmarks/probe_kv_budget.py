# The same KV memory, two layouts: 16 full-window slots vs a budget in rows the threads need.
#
#   .venv/bin/python benchmarks/probe_kv_budget.py slots    # ~25 s on a 2-core CPU: 16 slots x 2,048
#   .venv/bin/python benchmarks/probe_kv_budget.py budget   # ~25 s: kv_memory = the same 128 MiB
#
# 64 threads of 20 + 280 tokens, window 2,048, random-weight `tiny`, temperature 1. Prints how many
# ran at once, the steps taken and the tokens/s. With `slots` the engine holds 16 sequences (what
# the engine did before budgets: num_slots x max_seq_len); with `budget` rows are 512 long.
"""How many ~300-token threads a fixed KV memory runs at once (engine.kv_memory vs engine.num_slots)."""

from __future__ import annotations

import sys
import time

import torch

from apr.engine import LocalEngine, LocalEngineConfig, Request, SamplingParams
from apr.engine.kv_cache import KVCache
from apr.model.config import ModelConfig, build_model


def main(side: str) -> None:
    torch.set_num_threads(2)
    model = build_model(ModelConfig.preset("tiny"), vocab_size=2100)
    cfg = {"max_batch_size": 64, "max_seq_len": 2048}
    if side == "budget":
        c = model.config
        per_position = KVCache.bytes_per_position(c.num_hidden_layers, c.num_key_value_heads,
                                                  c.hidden_size // c.num_attention_heads, torch.float32)
        cfg["kv_memory"] = 16 * 2048 * per_position
    else:
        cfg["num_slots"] = 16
    engine = LocalEngine(model, LocalEngineConfig(**cfg))
    g = torch.Generator().manual_seed(0)
    for i in range(64):
        engine.submit(Request(f"r{i}", torch.randint(4, 2100, (20,), generator=g).tolist(),
                              SamplingParams(temperature=1.0, max_new_tokens=280, seed=i)))
    peak, start, out = 0, time.perf_counter(), []
    while engine.has_work():
        out += engine.step()
        peak = max(peak, len(engine.scheduler.running))
    wall = time.perf_counter() - start
    tokens = sum(len(c.output_ids) for c in out)
    print(f"{side}: KV {engine.kv.nbytes / 2**20:.0f} MiB, row length {engine.kv.row_len}, peak running {peak}, "
          f"steps {engine.stats.num_steps}, {tokens} tokens in {wall:.1f} s ({tokens / wall:.0f} tokens/s)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "budget")
