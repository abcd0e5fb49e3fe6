# Engine throughput: apr's LocalEngine vs HF `generate` (static batch, and one sequence at a time).
#
#   .venv/bin/python benchmarks/bench_engine.py           # ~13 min on an idle 2-core CPU, ~5 GB RAM
#   .venv/bin/python benchmarks/bench_engine.py --quick   # ~1.5 min: 8 problems, half-length threads
#   .venv/bin/python benchmarks/bench_engine.py --device cuda   # both sides on the GPU (make bench-engine DEVICE=cuda)
#
# Writes runs/bench/engine.json (every measurement), engine.md (table), engine.png (bars).
# Models: presets `tiny` (~1M) and `small` (~6M non-embedding params), random weights, vocab 2100,
# the same weights for every side. All sides sample at temperature 1 (no top-k/top-p) with
# lengths forced (no EOS), so they generate the same token counts. Sides alternate A B A B and
# each figure is the median over repeats. On a shared machine each run first waits (up to
# --max-wait-s) for other processes to leave the CPU, and is redone if they came back during it.
"""Decode throughput at fixed concurrency, and an APR-shaped rollout (spawn / join waves)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from apr.engine import LocalEngine, LocalEngineConfig, Request, SamplingParams
from apr.model.config import ModelConfig, build_model

VOCAB = 2100
MAX_BATCH = 64  # local engine batch cap == HF static batch chunk: same concurrency for both
OUT_DIR = Path("runs/bench")


# ---- workloads --------------------------------------------------------------------------------

@dataclass
class Problem:
    """One APR rollout: root thread, its children, then the root resumed with the joined results."""

    root_prompt: list[int]
    root_new: int
    children: list[tuple[list[int], int]]  # (prompt ids, tokens to generate)
    join_ids: list[int]  # written into the parent on resume
    final_new: int
    root_out: list[int] = field(default_factory=list)  # filled by whichever side runs it

    @property
    def num_tokens(self) -> int:
        return self.root_new + sum(n for _, n in self.children) + self.final_new


def make_problems(num: int, scale: float, seed: int = 0) -> list[Problem]:
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(4, VOCAB) for _ in range(n)]

    def length(lo: int, hi: int) -> int:
        return max(1, round(rng.randint(lo, hi) * scale))

    return [Problem(ids(rng.randint(18, 22)), length(250, 350),
                    [(ids(rng.randint(20, 30)), length(200, 700)) for _ in range(rng.randint(3, 6))],
                    ids(rng.randint(35, 45)), length(40, 60))
            for _ in range(num)]


def sampling(n: int, seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.0, max_new_tokens=n, seed=seed)


# ---- local engine -----------------------------------------------------------------------------

def new_engine(model, max_seq_len: int) -> LocalEngine:
    return LocalEngine(model, LocalEngineConfig(max_batch_size=MAX_BATCH, max_seq_len=max_seq_len,
                                                device=str(model.device)))


def _sync(model) -> None:
    """Wait for queued GPU work, so that wall times are of finished work."""
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def local_decode(model, prompts: list[list[int]], num_new: int) -> dict:
    engine = new_engine(model, 256 + num_new)
    start = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.submit(Request(f"r{i}", p, sampling(num_new, i)))
    out = engine.run_until_done()
    _sync(model)
    wall = time.perf_counter() - start
    assert sum(len(c.output_ids) for c in out) == len(prompts) * num_new
    return {"tokens": len(prompts) * num_new, "wall_s": wall, "forward_s": engine.stats.forward_s}


def local_apr(model, problems: list[Problem]) -> dict:
    """Roots run, suspend (KV kept) and spawn children; a root resumes once its children all finish."""
    engine = new_engine(model, 1024)
    waiting_children = {}
    start = time.perf_counter()
    for i, pr in enumerate(problems):
        engine.submit(Request(f"p{i}", pr.root_prompt, sampling(pr.root_new, i), keep_cache=True))
    tokens = 0
    while engine.has_work():
        for c in engine.step():
            tokens += len(c.output_ids)
            kind, _, rest = c.request_id.partition("/")
            i = int(kind[1:])
            pr = problems[i]
            if kind.startswith("p") and not rest:  # root phase done: spawn
                waiting_children[i] = len(pr.children)
                for j, (prompt, n) in enumerate(pr.children):
                    engine.submit(Request(f"c{i}/{j}", prompt, sampling(n, 1000 * i + j)))
            elif kind.startswith("c"):  # a child joined
                waiting_children[i] -= 1
                if waiting_children[i] == 0:
                    engine.submit(Request(f"p{i}/final", pr.join_ids, sampling(pr.final_new, i),
                                          resume_id=f"p{i}"))
    _sync(model)
    wall = time.perf_counter() - start
    assert tokens == sum(pr.num_tokens for pr in problems), tokens
    s = engine.stats
    return {"tokens": tokens, "wall_s": wall, "forward_s": s.forward_s, "step_s": s.step_s,
            "prefill_tokens": s.num_prefill_tokens, "cached_tokens": s.num_cached_tokens,
            "evictions": s.num_evictions, "kv_copies": s.num_kv_copies, "regroups": s.num_regroups, "forward_calls": s.num_forward_calls}


# ---- HF generate ------------------------------------------------------------------------------

def hf_generate(model, prompts: list[list[int]], num_new: int) -> list[list[int]]:
    """One static batch, left-padded; every row generates `num_new` tokens (no EOS)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)  # (B, T)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    with torch.inference_mode():
        out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=num_new, min_new_tokens=num_new,
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0,
                             eos_token_id=None)  # (B, T + num_new)
    assert out.shape[1] == width + num_new
    return out[:, width:].tolist()


def hf_threads(model, threads: list[tuple[list[int], int]], batch: int) -> tuple[int, list[list[int]]]:
    """Run (prompt, num_new) threads in arrival order, `batch` at a time; a batch runs to its longest."""
    useful, outs = 0, []
    for k in range(0, len(threads), batch):
        chunk = threads[k:k + batch]
        longest = max(n for _, n in chunk)
        rows = hf_generate(model, [p for p, _ in chunk], longest)
        outs += [row[:n] for row, (_, n) in zip(rows, chunk)]
        useful += sum(n for _, n in chunk)
    return useful, outs


def hf_apr(model, problems: list[Problem], batch: int) -> dict:
    """Waves: all roots, then all children, then every root re-prefilled with its joined results."""
    start = time.perf_counter()
    tokens, roots = hf_threads(model, [(pr.root_prompt, pr.root_new) for pr in problems], batch)
    children = [c for pr in problems for c in pr.children]
    tokens += hf_threads(model, children, batch)[0]
    finals = [(pr.root_prompt + out + pr.join_ids, pr.final_new) for pr, out in zip(problems, roots)]
    tokens += hf_threads(model, finals, batch)[0]
    _sync(model)
    return {"tokens": tokens, "wall_s": time.perf_counter() - start}


def hf_decode(model, prompts: list[list[int]], num_new: int, batch: int) -> dict:
    start = time.perf_counter()
    tokens = hf_threads(model, [(p, num_new) for p in prompts], batch)[0]
    _sync(model)
    return {"tokens": tokens, "wall_s": time.perf_counter() - start}


# ---- driver -----------------------------------------------------------------------------------

def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _num_cpus() -> int:
    return os.cpu_count() or 1


def others_cores(fn) -> tuple[dict, float]:
    """Run fn; also return how many cores *other* processes kept busy meanwhile (0 = clean)."""
    busy0, total0 = _cpu_busy()
    own0 = time.process_time()
    result = fn()
    busy1, total1 = _cpu_busy()
    own = time.process_time() - own0
    wall_cores = (total1 - total0) / os.sysconf("SC_CLK_TCK")  # core-seconds elapsed
    busy_cores_s = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
    return result, max(0.0, busy_cores_s - own) / max(wall_cores / _num_cpus(), 1e-9)


def wait_quiet(max_wait_s: float, threshold: float = 0.2) -> float:
    """Wait (up to max_wait_s) until other processes use under `threshold` cores; return the wait."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        busy0, total0 = _cpu_busy()
        time.sleep(1.0)
        busy1, total1 = _cpu_busy()
        if (busy1 - busy0) / max(total1 - total0, 1) * _num_cpus() < threshold:
            break
    return time.perf_counter() - start


def measure(runs: dict, repeats: int, bar, max_wait_s: float, attempts: int = 3) -> dict:
    """Run each side `repeats` times, alternating sides (A B A B); keep every run.

    The machine is shared: two OpenMP threads on a core another process holds stall at every
    barrier (10-50x slower). So each run first waits for the other processes to go quiet, and
    a run during which they took more than 0.25 core is redone (up to `attempts` times).
    """
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            bar.set_postfix_str(name)
            waited, tries = 0.0, 0
            while True:
                waited += wait_quiet(max_wait_s)
                run, others = others_cores(fn)
                tries += 1
                if others <= 0.25 or tries == attempts:
                    break
            run.update(others_cores=round(others, 3), attempts=tries, waited_s=round(waited, 1))
            results[name].append(run)
            bar.update(1)
    return results


def summary(runs: list[dict]) -> dict:
    rates = [r["tokens"] / r["wall_s"] for r in runs]
    out = {"tokens_per_s": statistics.median(rates), "runs": runs,
           "max_others_cores": max(r["others_cores"] for r in runs)}
    if "forward_s" in runs[0]:
        out["outside_forward_share"] = statistics.median(1 - r["forward_s"] / r["wall_s"] for r in runs)
    return out


def bench_model(preset: str, args, bar) -> dict:
    model = build_model(ModelConfig.preset(preset), vocab_size=VOCAB).eval().to(args.device)
    rng = random.Random(1)
    report = {}
    for conc in (1, 16, 64):
        prompts = [[rng.randrange(4, VOCAB) for _ in range(20)] for _ in range(conc)]
        serial = prompts[:min(conc, 4)]  # one-at-a-time rate does not depend on concurrency
        res = measure({
            "local": lambda p=prompts: local_decode(model, p, args.decode_tokens),
            "hf_batch": lambda p=prompts: hf_decode(model, p, args.decode_tokens, MAX_BATCH),
            "hf_serial": lambda p=serial: hf_decode(model, p, args.decode_tokens, 1),
        }, args.repeats, bar, args.max_wait_s)
        report[f"decode@{conc}"] = {k: summary(v) for k, v in res.items()}
    problems = make_problems(args.problems[preset], args.scale)
    serial = problems[:args.serial_problems]
    res = measure({
        "local": lambda: local_apr(model, problems),
        "hf_batch": lambda: hf_apr(model, problems, MAX_BATCH),
        "hf_serial": lambda: hf_apr(model, serial, 1),
    }, args.apr_repeats, bar, args.max_wait_s)
    report["apr"] = {k: summary(v) for k, v in res.items()}
    report["apr"]["workload"] = {
        "problems": len(problems), "threads": sum(2 + len(p.children) for p in problems),
        "generated_tokens": sum(p.num_tokens for p in problems), "serial_problems": len(serial)}
    return report


def write_outputs(results: dict, meta: dict) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "engine.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = ["| model | workload | local tok/s | HF generate batched tok/s | HF generate one-at-a-time tok/s "
             "| local / batched | local / one-at-a-time | local time outside forward |",
             "|---|---|---|---|---|---|---|---|"]
    for preset, report in results.items():
        for scenario, r in report.items():
            loc, bat, ser = (r[k]["tokens_per_s"] for k in ("local", "hf_batch", "hf_serial"))
            noisy = max(r[k]["max_others_cores"] for k in ("local", "hf_batch", "hf_serial")) > 0.25
            lines.append(f"| {preset} | {scenario}{' (noisy)' if noisy else ''} | {loc:,.0f} | {bat:,.0f} "
                         f"| {ser:,.0f} | {loc / bat:.2f}x | {loc / ser:.1f}x "
                         f"| {r['local']['outside_forward_share']:.1%} |")
    (OUT_DIR / "engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    sides = [("local", "apr LocalEngine"), ("hf_batch", "HF generate, batched"),
             ("hf_serial", "HF generate, one at a time")]
    for ax, (preset, report) in zip(axes[0], results.items()):
        names = list(report)
        for j, (key, label) in enumerate(sides):
            vals = [report[n][key]["tokens_per_s"] for n in names]
            ax.bar([i + 0.27 * (j - 1) for i in range(len(names))], vals, width=0.27, label=label)
        ax.set_xticks(range(len(names)), names)
        ax.set_yscale("log")
        ax.set_ylabel("generated tokens / s")
        ax.set_title(f"{preset} (random weights, vocab {VOCAB})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT_DIR / "engine.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 problems, half-length threads, one repeat")
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: the local engine and HF generate both")
    parser.add_argument("--max-wait-s", type=float, default=120.0,
                        help="per run, how long to wait for other processes to leave the CPU")
    args = parser.parse_args()
    full = not args.quick
    args.decode_tokens = 128 if full else 64
    args.repeats = 3 if full else 1
    args.apr_repeats = 2 if full else 1
    # small: 32 problems, so the whole run stays within ~15 min (HF batched takes ~4 min for 64)
    args.problems = {"tiny": 64, "small": 32} if full else {"tiny": 8, "small": 8}
    args.scale = 1.0 if full else 0.5
    args.serial_problems = 3 if full else 1
    if args.device == "cpu":
        torch.set_num_threads(2)
    else:  # the CPU-quiet wait guards CPU timings; a GPU run does not wait for other processes
        args.max_wait_s = 0.0
        torch.device(args.device)  # a bad device string fails here, before any work
    from tqdm import tqdm

    load_before = os.getloadavg()

    presets = args.presets.split(",")
    total = len(presets) * 3 * (3 * args.repeats + args.apr_repeats)
    with tqdm(total=total, desc="bench_engine") as bar:
        results = {p: bench_model(p, args, bar) for p in presets}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"command": "python benchmarks/bench_engine.py" + (" --quick" if args.quick else "")
            + f" --device {args.device}", "device": args.device,
            "gpu": torch.cuda.get_device_name(torch.device(args.device)) if args.device != "cpu" else None,
            "commit": commit, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor()} cpus={torch.get_num_threads()}",
            "max_batch": MAX_BATCH, "decode_tokens": args.decode_tokens, "repeats": args.repeats,
            "apr_repeats": args.apr_repeats, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    write_outputs(results, meta)


if __name__ == "__main__":
    main()
