"""The paper's evaluation figures (figs. 4-7 style) from an evaluation summary; matplotlib loads lazily.

accuracy_vs_window.png           cumulative accuracy against the per-thread context window (greedy)
accuracy_vs_total_tokens.png     conditioning points (APR `threads N`, SoS+ `budget B`), cons@n and pass@n
accuracy_vs_sequential_tokens.png  the same settings against the longest chain of dependent tokens
accuracy_vs_latency.png          the same settings against measured wall-clock seconds per problem
rl_before_after.png              `<name>` vs `<name>_rl`: accuracy, child threads, tokens (if pairs ran)
plot_thread_timeline             one thread tree over decode steps: a bar per thread, spawns and joins marked
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from apr.eval.report import greedy

if TYPE_CHECKING:
    from apr.runtime import Span


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(summary: dict) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(summary["models"])}


def _finish(fig, ax, path: Path, xlabel: str, title: str, log_x: bool = False) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    if log_x:
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 512, not 2^9
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.clf()
    return path


def plot_accuracy_vs_window(summary: dict, path: Path) -> Path:
    plt = _pyplot()
    windows = summary["config"]["windows"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, m in summary["models"].items():
        s = greedy(m["settings"])
        if s is not None:
            ax.plot(windows, [100 * s["accuracy_vs_window"][str(w)] for w in windows], marker="o",
                    color=_colors(summary)[name], label=name)
    out = _finish(fig, ax, path, "per-thread context window (tokens)", "Accuracy vs context window")
    plt.close(fig)
    return out


def _label(s: dict) -> str:
    return s["condition"].split()[-1] if s["condition"] else ""


def plot_accuracy_vs_cost(summary: dict, path: Path, cost: str, xlabel: str, title: str) -> Path:
    """One line per model through its conditioned settings, its greedy point, and (for total tokens) the
    cons@n / pass@n curves, `cost` being a per-setting mean (`mean_total_tokens`, `mean_latency_s`, ...)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = []
    for name, m in summary["models"].items():
        color = _colors(summary)[name]
        conditioned = sorted((s for s in m["settings"].values() if s["condition"]), key=lambda s: s[cost])
        if conditioned:
            kind = conditioned[0]["condition"].split()[0]
            x, y = [s[cost] for s in conditioned], [100 * s["accuracy"] for s in conditioned]
            ax.plot(x, y, marker="o", color=color, label=f"{name} ({kind} conditioning)")
            for s, xi, yi in zip(conditioned, x, y):
                ax.annotate(_label(s), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
            xs += x
        g = greedy(m["settings"])
        if g is not None:
            ax.plot([g[cost]], [100 * g["accuracy"]], marker="*", markersize=11, linestyle="none", color=color,
                    label=f"{name} greedy" if g["temperature"] == 0 else f"{name} T={g['temperature']:g}")
            xs.append(g[cost])
        for s in m["settings"].values():
            if cost == "mean_total_tokens" and s.get("curve"):
                x = [p["mean_total_tokens"] for p in s["curve"]]
                for metric, style, marker in (("cons", "--", "s"), ("pass", ":", "^")):
                    y = [100 * p[metric] for p in s["curve"]]
                    ax.plot(x, y, linestyle=style, marker=marker, markersize=4, color=color,
                            label=f"{name} {metric}@n (T={s['temperature']:g})")
                    ax.annotate(f"n={s['curve'][-1]['n']}", (x[-1], y[-1]), textcoords="offset points",
                                xytext=(3, -8), fontsize=6, color=color)
                xs += x
    positive = [x for x in xs if x > 0]
    log_x = bool(positive) and max(positive) / min(positive) > 4
    out = _finish(fig, ax, path, xlabel, title, log_x)
    plt.close(fig)
    return out


def plot_rl_before_after(summary: dict, path: Path) -> Path:
    plt = _pyplot()
    metrics = [("accuracy", "accuracy (%)", 100), ("mean_child_threads", "child threads", 1),
               ("mean_total_tokens", "total tokens", 1), ("mean_sequential_tokens", "sequential tokens", 1)]
    pairs = [(b, a) for b, a in summary["rl_pairs"].items()
             if greedy(summary["models"][b]["settings"]) and greedy(summary["models"][a]["settings"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 3.2))
    for ax, (key, label, scale) in zip(axes, metrics):
        for i, (before, after) in enumerate(pairs):
            values = [scale * greedy(summary["models"][n]["settings"])[key] for n in (before, after)]
            ax.bar(3 * i, values[0], color="C7", label="before RL" if i == 0 else None)
            ax.bar(3 * i + 1, values[1], color="C3", label="after RL" if i == 0 else None)
        ax.set_xticks([3 * i + 0.5 for i in range(len(pairs))], [b for b, _ in pairs])
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Before / after RL (greedy)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_thread_timeline(spans: Sequence[Span], path: Path, title: str = "Thread timeline") -> Path:
    """One row per thread (`Thread.timeline()`, root on top, children below their parent) over decode steps:
    solid where it generates, hatched while it waits for its children; a triangle where a parent spawns,
    a dot where a child joins."""
    plt = _pyplot()
    row = {s.index: i for i, s in enumerate(spans)}
    fig, ax = plt.subplots(figsize=(7, max(2.2, 0.9 + 0.32 * len(spans))))
    for s in spans:
        y, color = row[s.index], f"C{s.depth % 10}"
        ax.broken_barh([(a, b - a) for a, b in s.running], (y - 0.35, 0.7), facecolors=color)
        ax.broken_barh([(a, b - a) for a, b in s.pauses if b > a], (y - 0.35, 0.7), facecolors="none",
                       edgecolors=color, hatch="///", linewidth=0.5)
        for spawn_step, _ in s.pauses:
            ax.plot(spawn_step, y, marker="v", color="k", markersize=6, linestyle="none")
        if s.parent is not None:
            ax.plot([s.start_step, s.start_step], [row[s.parent], y], color="0.6", linewidth=0.6, zorder=0)
            ax.plot(s.end_step, y, marker="o", color="k", markersize=4, linestyle="none")
    handles = [plt.Line2D([], [], marker="v", color="k", linestyle="none", label="spawn"),
               plt.Line2D([], [], marker="o", color="k", linestyle="none", markersize=4, label="join"),
               plt.Rectangle((0, 0), 1, 1, facecolor="none", edgecolor="0.3", hatch="///", label="waiting")]
    ax.legend(handles=handles, fontsize=7, loc="lower left")  # children start after the root's first spawn
    ax.set_yticks(range(len(spans)), [_thread_label(s) for s in spans], fontsize=7)
    ax.set_ylim(len(spans) - 0.5, -0.5)  # the root on top
    ax.set_xlim(0, max((s.end_step for s in spans), default=1) * 1.02 or 1)
    ax.set_xlabel("decode step (tokens generated one after another)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _thread_label(s: Span) -> str:
    return "root" if s.parent is None else f"thread {s.index} <- {s.parent}"


def plot_all(summary: dict, out_dir: Path) -> list[Path]:
    out = Path(out_dir)
    paths = [plot_accuracy_vs_window(summary, out / "accuracy_vs_window.png"),
             plot_accuracy_vs_cost(summary, out / "accuracy_vs_total_tokens.png", "mean_total_tokens",
                                   "average total tokens per problem", "Accuracy vs total tokens"),
             plot_accuracy_vs_cost(summary, out / "accuracy_vs_sequential_tokens.png", "mean_sequential_tokens",
                                   "average sequential tokens per problem", "Accuracy vs sequential tokens"),
             plot_accuracy_vs_cost(summary, out / "accuracy_vs_latency.png", "mean_latency_s",
                                   "average latency per problem (s, this machine)", "Accuracy vs latency")]
    if summary["rl_pairs"]:
        paths.append(plot_rl_before_after(summary, out / "rl_before_after.png"))
    return paths
