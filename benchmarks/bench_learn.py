"""Time to accuracy of an SFT recipe: training tokens and seconds until greedy validation accuracy first
reaches 10/20/30/40/50%, tokens/s, final validation and test accuracy (the Countdown speedrun's measure).

    python benchmarks/bench_learn.py --data runs/quickstart/data            # make bench-learn
        # the quickstart's APR recipe (+sft=n3_tiny_apr): 4M tokens, greedy accuracy on the 200 validation
        # problems every --eval-every steps; ~5-8 min on 2 CPU cores (bf16 native), longer in fp32
    python benchmarks/bench_learn.py --data D --name adamw -- optim.name=adamw optim.lr=2e-3   # a variant
    python benchmarks/bench_learn.py --data D --recipe n3_tiny_sosp                              # SoS+ twin

Tokens are the machine-independent measure (non-padding tokens trained on, all processes); seconds
count training steps only (not the evaluations). The table names the CPU (AMX / AVX512-BF16 / AVX2
only) and the precision. The test split is read once, at the end (`--test`, on by default; tune
with `--no-test`). Writes <out>/learn.json and <out>/learn.md (out: runs/bench/learn/<name>).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (shared cores)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def cpu_kind() -> str:
    """AMX, AVX512-BF16, AVX512 without BF16, or AVX2 only (what decides bf16's speed on a CPU: native with
    the first two, emulated and slow with the others, where `auto` trains in fp32), from /proc/cpuinfo."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return platform.processor() or "unknown"
    words = set(flags.split())
    kind = ("AMX" if "amx_tile" in words else "AVX512-BF16" if "avx512_bf16" in words
            else "AVX512, no BF16" if "avx512f" in words else "AVX2 only" if "avx2" in words else "no AVX2")
    return f"{kind} ({os.cpu_count()} cores)"


def time_to_accuracy(rows: list[dict], thresholds=THRESHOLDS) -> dict[float, dict | None]:
    """For each threshold, the first evaluation row whose `eval/accuracy` reaches it: its step, tokens and
    training seconds (None: never reached).

        >>> rows = [{"step": 10, "eval/accuracy": 0.05, "train/tokens_seen": 1e5, "train/seconds": 9.0},
        ...         {"step": 20, "eval/accuracy": 0.35, "train/tokens_seen": 2e5, "train/seconds": 18.0}]
        >>> t = time_to_accuracy(rows, (0.1, 0.3, 0.4))
        >>> t[0.1]["tokens"], t[0.3]["step"], t[0.4]
        (200000, 20, None)
    """
    evals = sorted((r for r in rows if "eval/accuracy" in r and "train/tokens_seen" in r), key=lambda r: r["step"])
    out: dict[float, dict | None] = {}
    for th in thresholds:
        hit = next((r for r in evals if r["eval/accuracy"] >= th - 1e-9), None)
        out[th] = None if hit is None else {"step": hit["step"], "tokens": int(hit["train/tokens_seen"]),
                                            "seconds": float(hit["train/seconds"])}
    return out


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def train(args, out: Path) -> None:
    overrides = [f"+sft={args.recipe}", f"name=learn_{args.name}", f"data.dir={args.data}", f"run_dir={out / 'run'}",
                 f"train.max_tokens={args.max_tokens}", "train.max_steps=null", "train.max_minutes=null",
                 f"eval.every_steps={args.eval_every}", f"eval.num_problems={args.eval_problems}",
                 "checkpoint.every_steps=0", "wandb.mode=disabled", "log.progress=false", *args.overrides]
    cmd = [sys.executable, "-m", "apr.cli.sft", *overrides]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def test_accuracy(model_dir: Path, data: str, num_problems: int, max_thread_tokens: int) -> float:
    from apr.api import Reasoner
    from apr.scoring import solve_and_score
    from apr.task import load_problems

    reasoner = Reasoner.from_pretrained(model_dir, max_seq_len=max_thread_tokens)
    problems = load_problems(data, "test", num_problems)
    return solve_and_score(reasoner, problems, {"max_thread_tokens": max_thread_tokens}).metrics["accuracy"]


def report(args, out: Path, rows: list[dict], test_acc: float | None) -> dict:
    run = out / "run"
    ttas = time_to_accuracy(rows)
    evals = [r for r in rows if "eval/accuracy" in r]
    steps = [r for r in rows if "train/tokens_per_s" in r]
    tps = sorted(r["train/tokens_per_s"] for r in steps)
    config = json.loads((run / "config.json").read_text())
    precision = json.loads((run / "run_info.json").read_text()).get("precision")
    result = {"name": args.name, "recipe": args.recipe, "overrides": args.overrides, "cpu": cpu_kind(),
              "precision": precision or config["train"]["precision"], "max_tokens": args.max_tokens,
              "tokens_per_s_median": tps[len(tps) // 2] if tps else None,
              "time_to_accuracy": {f"{int(th * 100)}%": v for th, v in ttas.items()},
              "val_accuracy": [(r["step"], int(r.get("train/tokens_seen", 0)), r["eval/accuracy"]) for r in evals],
              "final_val_accuracy": evals[-1]["eval/accuracy"] if evals else None, "test_accuracy": test_acc}
    (out / "learn.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Time to accuracy: {args.name} ({args.recipe} {' '.join(args.overrides)})", "",
             f"CPU: {result['cpu']}; precision: {result['precision']}; median tokens/s: "
             f"{result['tokens_per_s_median'] or 0:,.0f}", "",
             "| greedy val accuracy | step | training tokens | training seconds |", "|---|---|---|---|"]
    for th, v in ttas.items():
        lines.append(f"| >= {th:.0%} | " + ("not reached | - | - |" if v is None else
                                           f"{v['step']} | {v['tokens']:,} | {v['seconds']:.0f} |"))
    lines += ["", "| step | tokens | val accuracy |", "|---|---|---|"]
    lines += [f"| {s} | {t:,} | {a:.1%} |" for s, t, a in result["val_accuracy"]]
    lines += ["", f"final validation accuracy: {result['final_val_accuracy']:.1%}" if evals else "no evaluation",
              f"test accuracy: {test_acc:.1%}" if test_acc is not None else "test accuracy: not read (--no-test)"]
    (out / "learn.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="runs/quickstart/data", help="an N=3 data directory (apr.cli.data)")
    p.add_argument("--recipe", default="n3_tiny_apr", help="conf/sft/<recipe>.yaml")
    p.add_argument("--name", default="apr")
    p.add_argument("--max-tokens", type=float, default=4.0e6)
    p.add_argument("--eval-every", type=int, default=50, help="optimizer steps between greedy evaluations")
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument("--test", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--test-problems", type=int, default=200)
    p.add_argument("--max-thread-tokens", type=int, default=512)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*", help="SFT overrides after --, e.g. optim.lr=3e-3")
    args = p.parse_args(argv)
    out = Path(args.out or f"runs/bench/learn/{args.name}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    train(args, out)
    rows = read_rows(out / "run")
    test_acc = test_accuracy(out / "run" / "final", args.data, args.test_problems, args.max_thread_tokens) \
        if args.test else None
    report(args, out, rows, test_acc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
