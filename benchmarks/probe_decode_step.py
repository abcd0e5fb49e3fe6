# Anatomy of a local-engine decode step: wall time, the forward's share, host time, and host syncs.
#
#   python benchmarks/probe_decode_step.py --device cuda                          # ~1-2 min on one H200
#   .venv/bin/python benchmarks/probe_decode_step.py --batches 8 64 --new 12      # ~30 s on 2 CPU cores (smoke)
#
# Random-weight preset (`small` by default), vocab 2100, prompts of 20 tokens, temperature 1 seeded
# (the rollout case), B in --batches, --new tokens each, CUDA graphs on. Per B, over the decode steps
# only (the prefill step and one warm-up decode step excluded): ms per step, ms inside forwards (CUDA:
# event spans), host ms outside them, and on CUDA the synchronising calls per step counted with
# torch.cuda.set_sync_debug_mode("warn") (the design's aim: 1, the step's one device -> host copy).
"""Where a decode step's time goes, per batch size (issue 14: is decode launch-bound?)."""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from apr.engine import LocalEngine, LocalEngineConfig, Request, SamplingParams
from apr.model.config import ModelConfig, build_model


def probe(model, device: str, batch: int, new: int) -> dict:
    engine = LocalEngine(model, LocalEngineConfig(max_batch_size=batch, max_seq_len=64 + new, device=device))
    g = torch.Generator().manual_seed(batch)
    for i in range(batch):
        prompt = torch.randint(4, 2100, (20,), generator=g).tolist()
        engine.submit(Request(f"r{i}", prompt, SamplingParams(temperature=1.0, max_new_tokens=new, seed=i)))
    engine.step()  # prefill + first token
    engine.step()  # first decode step: captures the bucket's graph
    engine.stats.reset()
    is_cuda = device.startswith("cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if is_cuda:
            torch.cuda.set_sync_debug_mode("warn")
        start = time.perf_counter()
        while engine.has_work():
            engine.step()
        wall = time.perf_counter() - start
        if is_cuda:
            torch.cuda.set_sync_debug_mode(0)
    s = engine.stats
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return {"batch": batch, "steps": s.num_steps, "ms_per_step": round(wall / s.num_steps * 1e3, 3),
            "forward_ms_per_step": round(s.forward_s / s.num_steps * 1e3, 3),
            "host_ms_per_step": round((s.step_s - s.forward_s) / s.num_steps * 1e3, 3),
            "syncs_per_step": round(syncs / s.num_steps, 2) if is_cuda else None,
            "tokens_per_s": round(s.num_generated_tokens / wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="small")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256, 500])
    parser.add_argument("--new", type=int, default=64)
    args = parser.parse_args()
    model = build_model(ModelConfig.preset(args.model), vocab_size=2100, seed=0).eval()
    for batch in args.batches:
        print(json.dumps(probe(model, args.device, batch, args.new)), flush=True)


if __name__ == "__main__":
    main()
