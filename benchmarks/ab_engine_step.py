# A/B of two checkouts of the local engine on small CPU workloads: wall time and host ms per step.
#
#   git archive 6a71273 apr | (mkdir -p /tmp/base && tar -x -C /tmp/base)     # the baseline's apr/
#   git archive HEAD apr | (mkdir -p /tmp/new && tar -x -C /tmp/new)           # this commit's apr/
#   OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ab_engine_step.py /tmp/base /tmp/new --rounds 6
#   # ~2 min on an idle 2-core CPU (~12 processes of ~10 s); more on a shared one
#
# Each side runs in its own process (its tree first on PYTHONPATH), alternating A B A B; a process
# warms up, then runs every workload 3 times and keeps the fastest (the run least disturbed by other
# processes). Printed: per workload, the median over rounds of wall s and of host ms per step
# ((step_s - forward_s) / steps: the engine's own work outside model forwards). Workloads (random
# weights, vocab 2100, temperature 1 seeded unless said): `tiny` 64 rows x 24 tokens; the same with a
# third greedy and a third top-p 0.9 at T 0.7; a 1-layer 32-wide model, 256 rows x 16 tokens (little
# forward, so the host's share shows); bench_engine's APR rollout, 2 problems at 0.15 length.
"""A/B the local engine's per-step host cost between two source trees (CPU)."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def worker(tree: str) -> dict:
    import torch

    import apr
    assert apr.__file__.startswith(tree), apr.__file__
    sys.path.insert(0, str(BENCH))
    from bench_engine import local_apr, make_problems

    from apr.engine import LocalEngine, LocalEngineConfig, Request, SamplingParams
    from apr.model.config import ModelConfig, build_model

    torch.set_num_threads(1)
    tiny = build_model(ModelConfig.preset("tiny"), vocab_size=2100, seed=0).eval()
    micro = build_model(ModelConfig("micro", 32, 1, 2, None, 64, 2048), vocab_size=2100, seed=0).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(4, 2100) for _ in range(rng.randint(18, 22))] for _ in range(256)]

    def decode(model, batch: int, new: int, mixed: bool = False) -> tuple[float, float]:
        engine = LocalEngine(model, LocalEngineConfig(max_batch_size=batch, max_seq_len=256 + new))
        for i, p in enumerate(prompts[:batch]):
            sp = SamplingParams(temperature=1.0, max_new_tokens=new, seed=i)
            if mixed and i % 3:
                sp = (SamplingParams(temperature=0.0, max_new_tokens=new) if i % 3 == 1 else
                      SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=new, seed=i))
            engine.submit(Request(f"r{i}", p, sp))
        start = time.perf_counter()
        engine.run_until_done()
        s = engine.stats
        return time.perf_counter() - start, (s.step_s - s.forward_s) / s.num_steps * 1e3

    def apr_rollout() -> tuple[float, float]:
        r = local_apr(tiny, make_problems(2, 0.15))
        return r["wall_s"], (r["step_s"] - r["forward_s"]) / r["forward_calls"] * 1e3

    work = {"decode_tiny_b64": lambda: decode(tiny, 64, 24), "decode_tiny_b64_mixed": lambda: decode(tiny, 64, 24, True),
            "decode_micro_b256": lambda: decode(micro, 256, 16), "apr_tiny": apr_rollout}
    decode(tiny, 8, 2), decode(micro, 8, 2), decode(tiny, 8, 2, True)  # warm-up: lazy inits
    out = {}
    for name, fn in work.items():
        runs = [fn() for _ in range(3)]
        out[name] = [min(r[0] for r in runs), min(r[1] for r in runs)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("trees", nargs=2, help="A and B: directories that contain an apr/ package")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.trees[0])))
        return
    results: dict[str, list[dict]] = {t: [] for t in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, __file__, tree, tree, "--worker"], env=env, check=True,
                                 capture_output=True, text=True).stdout
            results[tree].append(json.loads(out.strip().splitlines()[-1]))
            print(tree, os.getloadavg()[0], results[tree][-1], flush=True)
    print(f"{'workload':24s}" + "".join(f" | {t} wall s, host ms/step" for t in args.trees))
    for name in results[args.trees[0]][0]:
        cells = [f"{statistics.median(r[name][0] for r in results[t]):.3f}, "
                 f"{statistics.median(r[name][1] for r in results[t]):.2f}" for t in args.trees]
        print(f"{name:24s}" + "".join(f" | {c}" for c in cells))


if __name__ == "__main__":
    main()
