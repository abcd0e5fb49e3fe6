"""metrics.json, a markdown summary (results.md) and the plots of an evaluation run.

`summary` is what `apr.eval.suite.run_suite` returns:
`{"config": {...}, "data": {...}, "models": {name: {"path", "settings": {setting: {...}}}}, "rl_pairs": {...}}`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def unconditioned(settings: dict, temperature: float) -> dict | None:
    """The setting sampled at `temperature` without a condition line, if one ran."""
    return next((s for s in settings.values() if s["condition"] is None and s["temperature"] == temperature), None)


def greedy(settings: dict) -> dict | None:
    """The greedy unconditioned setting, else the coolest unconditioned one."""
    plain = sorted((s for s in settings.values() if s["condition"] is None), key=lambda s: s["temperature"])
    return plain[0] if plain else None


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _settings_table(summary: dict, windows) -> list[str]:
    head = ["model", "setting", "temp", "condition", "samples", "problems", "accuracy",
            *(f"acc @{w}" for w in windows), "total tok", "generated tok", "sequential tok", "child threads",
            "latency (s)"]
    rows = []
    for name, m in summary["models"].items():
        for key, s in m["settings"].items():
            rows.append([name, key, f"{s['temperature']:g}", s["condition"] or "-", str(s["num_samples"]),
                         str(s["num_problems"]), f"{s['accuracy']:.1%}",
                         *(f"{s['accuracy_vs_window'][str(w)]:.1%}" for w in windows),
                         f"{s['mean_total_tokens']:.0f}", f"{s['mean_generated_tokens']:.0f}",
                         f"{s['mean_sequential_tokens']:.0f}", f"{s['mean_child_threads']:.2f}",
                         f"{s['mean_latency_s']:.2f}"])
    return _table(head, rows)


def _temperature_table(summary: dict) -> list[str]:
    temps = sorted({s["temperature"] for m in summary["models"].values() for s in m["settings"].values()
                    if s["condition"] is None})
    rows = []
    for name, m in summary["models"].items():
        cells = [unconditioned(m["settings"], t) for t in temps]
        rows.append([name, *("-" if s is None else f"{s['accuracy']:.1%}" for s in cells)])
    return _table(["model", *(f"T={t:g}" for t in temps)], rows)


def _curve_table(summary: dict) -> list[str]:
    rows = [[name, key, str(p["n"]), f"{p['pass']:.1%}", f"{p['cons']:.1%}", f"{p['mean_total_tokens']:.0f}",
             f"{p['mean_sequential_tokens']:.0f}"]
            for name, m in summary["models"].items() for key, s in m["settings"].items() for p in s.get("curve", [])]
    return _table(["model", "setting", "n", "pass@n", "cons@n", "total tok (n samples)", "sequential tok"], rows)


def _rl_table(summary: dict) -> list[str]:
    rows = []
    for before, after in summary["rl_pairs"].items():
        a, b = greedy(summary["models"][before]["settings"]), greedy(summary["models"][after]["settings"])
        if a is None or b is None:
            continue
        rows.append([f"{before} -> {after}", f"{a['accuracy']:.1%} -> {b['accuracy']:.1%}",
                     f"{a['mean_child_threads']:.2f} -> {b['mean_child_threads']:.2f}",
                     f"{a['mean_total_tokens']:.0f} -> {b['mean_total_tokens']:.0f}",
                     f"{a['mean_sequential_tokens']:.0f} -> {b['mean_sequential_tokens']:.0f}"])
    return _table(["before -> after RL", "accuracy", "child threads", "total tokens", "sequential tokens"], rows)


def to_markdown(summary: dict) -> str:
    windows = summary["config"]["windows"]
    data = summary.get("data", {})
    where = ", ".join(f"{k}={v}" for k, v in data.items())
    lines = [f"# Evaluation ({where})" if where else "# Evaluation", "",
             "Per-sample means; accuracy @w counts a sample only if every thread fits a w-token window. "
             "Latency: wall-clock seconds from a problem's start to its answer on this machine, with "
             f"{summary['config'].get('batch_size', '?')} problems (times their samples) in flight.", "",
             "## Accuracy by temperature (no condition)", "", *_temperature_table(summary), "",
             "## All settings", "", *_settings_table(summary, windows), ""]
    if any("curve" in s for m in summary["models"].values() for s in m["settings"].values()):
        lines += ["## pass@n and cons@n", "", "n samples cost the sum of their total tokens; "
                  "run side by side, the longest of their sequential tokens.", "", *_curve_table(summary), ""]
    if summary["rl_pairs"]:
        lines += ["## Before / after RL (greedy)", "", *_rl_table(summary), ""]
    return "\n".join(lines)


def write_report(summary: dict, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write metrics.json, results.md and (unless `plots=False`) the PNG figures; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "metrics.json")
    markdown = to_markdown(summary)
    (out / "results.md").write_text(markdown)
    written = [out / "metrics.json", out / "results.md"]
    if plots:
        from apr.eval.plots import plot_all

        written += plot_all(summary, out)
    print(markdown)
    print("wrote " + ", ".join(str(p) for p in written))
    return written
