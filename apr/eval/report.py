"""metrics.json, a markdown table and the accuracy-vs-window plot of an evaluation run."""

from __future__ import annotations

import json
import os
from pathlib import Path


def to_markdown(summaries: dict, windows) -> str:
    head = ("| model | problems | accuracy | " + " | ".join(f"acc @{w}" for w in windows)
            + " | mean total tokens | mean sequential tokens | mean child threads | mean latency (s) |")
    lines = [head, "|---" * (7 + len(windows)) + "|"]
    for name, s in summaries.items():
        accs = " | ".join(f"{s['accuracy_vs_window'][str(w)]:.1%}" for w in windows)
        lines.append(f"| {name} | {s['num_problems']} | {s['accuracy']:.1%} | {accs} | {s['mean_total_tokens']:.0f} | "
                     f"{s['mean_sequential_tokens']:.0f} | {s['mean_child_threads']:.2f} | {s['mean_latency_s']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_window(summaries: dict, windows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, s in summaries.items():
        ax.plot(list(windows), [100 * s["accuracy_vs_window"][str(w)] for w in windows], marker="o", label=name)
    ax.set_xlabel("per-thread context window (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs context window")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(summaries: dict, cfg, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(summaries, indent=2))
    os.replace(tmp, out / "metrics.json")
    (out / "results.md").write_text(to_markdown(summaries, cfg.windows))
    plot_accuracy_vs_window(summaries, cfg.windows, out / "accuracy_vs_window.png")
    print(to_markdown(summaries, cfg.windows))
    print(f"wrote {out}/metrics.json, results.md, accuracy_vs_window.png")
