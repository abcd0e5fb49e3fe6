"""Trace-generation throughput for N=4 target-first Countdown, per core.

    python benchmarks/bench_datagen.py [--problems 300] [--repeats 3]     # ~1-2 minutes on one core
    (make bench-data)

Measures, in one process (one core), problems/s of: drawing solvable problems, SoS+ traces,
APR traces, and rendering both to token ids. Medians over repeats, sides interleaved.
Writes runs/bench/datagen.json and runs/bench/datagen.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

from apr.protocol import render_tree
from apr.search import SearchConfig, solve
from apr.task import CountdownConfig, generate_problems
from apr.tokenizer import build_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    task = CountdownConfig(num_numbers=4)
    tok = build_tokenizer()
    sosp, apr = SearchConfig("sosp", promising_prob=0.5), SearchConfig("apr", promising_prob=0.9)
    times: dict[str, list[float]] = {k: [] for k in ("problems", "sosp", "apr", "render")}
    for rep in range(args.repeats):
        t = time.perf_counter()
        problems = generate_problems(task, args.problems, seed=1000 + rep)
        times["problems"].append(time.perf_counter() - t)
        traces = []
        for name, cfg in (("sosp", sosp), ("apr", apr)):
            t = time.perf_counter()
            traces += [solve(p, cfg, seed=i).trace for i, p in enumerate(problems)]
            times[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        num_tokens = sum(len(th.ids) for tr in traces for th in render_tree(tr, tok))
        times["render"].append(time.perf_counter() - t)
    rate = {k: round(args.problems / statistics.median(v), 1) for k, v in times.items()}
    rate["render"] = round(2 * args.problems / statistics.median(times["render"]), 1)  # traces/s
    end_to_end = 1.0 / sum(1.0 / rate[k] for k in ("problems", "sosp", "apr")) if all(rate.values()) else 0.0
    result = {
        "problems_per_s_per_core": rate,
        "end_to_end_problems_per_s_per_core_without_render": round(end_to_end, 1),
        "tokens_rendered_last_repeat": num_tokens,
        "problems": args.problems, "repeats": args.repeats,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": f"{platform.machine()} {platform.python_version()}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "datagen.json").write_text(json.dumps(result, indent=2))
    md = ["| stage (N=4, one core) | rate |", "|---|---|",
          f"| draw solvable target-first problems | {rate['problems']} problems/s |",
          f"| SoS+ traces (K=5, p=0.5) | {rate['sosp']} problems/s |",
          f"| APR traces (K=5, Ks=5, p=0.9) | {rate['apr']} problems/s |",
          f"| render to token ids (both) | {rate['render']} traces/s |",
          f"| problem + SoS+ + APR | {result['end_to_end_problems_per_s_per_core_without_render']} problems/s |"]
    (out / "datagen.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
