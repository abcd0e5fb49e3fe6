"""Statistics of a generated data set: success, lengths, child threads, fit within windows."""

from __future__ import annotations

import json
import os
from pathlib import Path

PERCENTILES = (10, 50, 90, 99)


def percentiles(values: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles plus mean and max (empty -> zeros)."""
    if not values:
        return {**{f"p{q}": 0 for q in PERCENTILES}, "mean": 0.0, "max": 0}
    s = sorted(values)
    out = {f"p{q}": s[min(len(s) - 1, max(0, -(-q * len(s) // 100) - 1))] for q in PERCENTILES}
    out["mean"] = round(sum(s) / len(s), 1)
    out["max"] = s[-1]
    return out


def summarize_records(recs: list, windows: tuple[int, ...]) -> dict:
    """Statistics of one solver's records on one split."""
    n = len(recs)
    solved = [r for r in recs if r.solved]
    stats = {
        "num_problems": n,
        "success_rate": round(len(solved) / n, 4) if n else 0.0,
        "root_tokens": percentiles([r.thread_tokens[0] for r in recs]),
        "longest_thread_tokens": percentiles([r.longest_thread for r in recs]),
        "total_tokens": percentiles([r.total_tokens for r in recs]),
        "child_threads": percentiles([r.num_child_threads for r in recs]),
        # Solved with every thread inside the window: what a model with that context could reach.
        "solved_within_window": {str(w): round(sum(r.longest_thread <= w for r in solved) / n, 4) if n else 0.0
                                 for w in windows},
    }
    return stats


def summarize(records: dict[str, dict[str, list]], windows: tuple[int, ...]) -> dict:
    """{split: {solver: stats}} for every split and solver."""
    return {split: {name: summarize_records(recs, windows) for name, recs in per.items()}
            for split, per in records.items()}


def to_markdown(stats: dict) -> str:
    """One table per split: a row per solver."""
    lines = []
    for split, per in stats.items():
        if not per or not next(iter(per.values()))["num_problems"]:
            continue
        windows = list(next(iter(per.values()))["solved_within_window"])
        lines += [f"### {split}", "",
                  "| solver | problems | solved | root p50/p90 | longest thread p50/p90 | total p50/p90 | children mean | "
                  + " | ".join(f"solved within {w}" for w in windows) + " |",
                  "|---" * (7 + len(windows)) + "|"]
        for name, s in per.items():
            def pct(k: str, s: dict = s) -> str:
                return f"{s[k]['p50']}/{s[k]['p90']}"

            lines.append(
                f"| {name} | {s['num_problems']} | {s['success_rate']:.1%} | {pct('root_tokens')} | "
                f"{pct('longest_thread_tokens')} | {pct('total_tokens')} | {s['child_threads']['mean']} | "
                + " | ".join(f"{s['solved_within_window'][w]:.1%}" for w in windows) + " |")
        lines.append("")
    return "\n".join(lines)


def write_stats(stats: dict, out_dir: str | Path) -> None:
    out = Path(out_dir)
    for name, text in (("stats.json", json.dumps(stats, indent=2)), ("stats.md", to_markdown(stats))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
