"""`runs/quickstart/REPORT.md`: what the quickstart trained and measured, plots, and one solved thread tree.

    >>> # path = write_quickstart_report("runs/quickstart")   # after data, sft, rl and eval have run
"""

from __future__ import annotations

import json
from pathlib import Path

LIMITS = (
    "At N=3 nothing binds the context: every SoS+ trace fits ~470 tokens, so a serial model loses nothing "
    "to the window and APR's spawn/join only adds overhead (more total tokens, fewer sequential ones). "
    "APR's advantage over SoS+ at a fixed context window is where searches outgrow the window: N=4 with "
    "768-1,024-token threads (`make repro-small`, hours on CPU). A tiny model after ~10 CPU minutes of SFT "
    "and a few GRPO steps shows that the whole pipeline works and that the model learned the task and the "
    "protocol; it cannot show the paper's effect sizes."
)


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _sft_section(sft: Path) -> list[str]:
    rows = _rows(sft / "metrics.jsonl")
    evals = [r for r in rows if "eval/accuracy" in r]
    train = [r for r in rows if "train/loss" in r]
    out = ["## 1. Supervised training (APR traces)", ""]
    if not rows:
        return out + ["(no SFT metrics found)", ""]
    info = json.loads((sft / "run_info.json").read_text()) if (sft / "run_info.json").is_file() else {}
    params = info.get("parameters", {}).get("non_embedding")
    seconds = sum(r.get("time/step_s", 0.0) for r in train) * (train[-1]["step"] / max(len(train), 1)) if train else 0
    out.append(f"{train[-1]['step'] if train else '?'} steps"
               + (f", {params:,} non-embedding parameters" if params else "")
               + (f", ~{seconds / 60:.0f} min of training" if seconds else "") + ".")
    if evals:
        out += ["", "| step | validation loss | greedy accuracy (validation) |", "|---|---|---|"]
        out += [f"| {r['step']} | {r.get('val/loss', float('nan')):.3f} | {r['eval/accuracy']:.1%} |" for r in evals]
    return out + [""]


def _rl_section(rl: Path) -> list[str]:
    rows = [r for r in _rows(rl / "metrics.jsonl") if "rollout/reward" in r]
    out = ["## 2. GRPO (spawn/join rollouts on Ray)", ""]
    if not rows:
        return out + ["(no RL metrics found)", ""]
    out += ["| step | reward | child threads | total tokens | sequential tokens | KL | rollout tokens/s | step s |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['step']} | {r['rollout/reward']:.3f} | {r['rollout/mean_child_threads']:.1f} | "
                   f"{r['rollout/mean_total_tokens']:.0f} | {r['rollout/mean_sequential_tokens']:.0f} | "
                   f"{r['rl/kl']:.4f} | {r['rollout/tokens_per_s']:.0f} | {r['time/step_s']:.1f} |")
    phases = [k for k in rows[-1] if k.startswith("time/") and k.endswith("_s") and k != "time/step_s"]
    total = {k: sum(r.get(k, 0.0) for r in rows) for k in phases}
    whole = sum(r["time/step_s"] for r in rows)
    split = ", ".join(f"{k[5:-2]} {v / max(whole, 1e-9):.0%}" for k, v in sorted(total.items(), key=lambda x: -x[1]))
    return out + ["", f"Step time by phase: {split}.", ""]


def _tree_section(model: Path, data_dir: Path, max_tries: int = 50) -> list[str]:
    from apr.api import Reasoner
    from apr.task import load_problems, problems_path

    out = ["## 4. One solved problem, as the runtime ran it", ""]
    if not (model / "config.json").is_file() or not problems_path(data_dir, "test").is_file():
        return out + ["(model or problems missing)", ""]
    problems = load_problems(data_dir, "test", max_tries)
    reasoner = Reasoner.from_pretrained(model, max_seq_len=1024)
    results = reasoner.solve_batch(problems, max_thread_tokens=512)
    solved = [r for r in results if r.correct]
    if not solved:
        return out + [f"(none of the first {len(problems)} test problems was solved greedily)", ""]
    best = max(solved, key=lambda r: r.metrics["num_child_threads"])  # show the parallel search
    p, m = best.problem, best.metrics
    out += [f"Numbers {p.numbers}, target {p.target}: answer `{best.answer}` ({best.reason}); "
            f"{m['num_child_threads']} child threads, {m['total_tokens']} total tokens, "
            f"{m['sequential_tokens']} sequential.", "", "```", best.tree.render(), "```", ""]
    return out


def write_quickstart_report(root: str | Path, model: str | Path | None = None) -> Path:
    """Assemble `<root>/REPORT.md` from `<root>/{data,sft,rl,eval}`; returns its path."""
    root = Path(root)
    eval_dir = root / "eval"
    model = Path(model) if model else (root / "rl" / "final" if (root / "rl" / "final").is_dir() else root / "sft" / "final")
    lines = ["# Quickstart report", "",
             "`make quickstart`: Countdown with 3 numbers, a tiny Llama trained from scratch on APR spawn/join "
             "traces, a few GRPO steps with spawn/join rollouts on a local Ray cluster, evaluation on held-out "
             "test problems. Everything below was measured by this run on this machine.", ""]
    if (root / "data" / "stats.md").is_file():
        lines += ["## 0. Data", "", "See [data/stats.md](data/stats.md) (problems, solver traces, token counts).", ""]
    lines += _sft_section(root / "sft") + _rl_section(root / "rl")
    lines += ["## 3. Evaluation on held-out test problems", ""]
    if (eval_dir / "results.md").is_file():
        body = (eval_dir / "results.md").read_text().split("\n", 1)[-1]  # without its title
        lines += [body.replace("## ", "### "), ""]
        lines += [f"![{p.stem}](eval/{p.name})" for p in sorted(eval_dir.glob("*.png"))] + [""]
    else:
        lines += ["(no evaluation found)", ""]
    lines += _tree_section(model, root / "data")
    lines += ["## What toy scale can and cannot show", "", LIMITS, ""]
    path = root / "REPORT.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
