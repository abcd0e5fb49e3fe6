"""`runs/quickstart/REPORT.md`: APR vs SoS+ by context window, what the quickstart trained and measured,
plots, one solved thread tree as a timeline, and what toy scale can and cannot show.

    >>> # path = write_quickstart_report("runs/quickstart")   # after data, sft, sft_sosp, rl and eval have run
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

# the windows the quickstart evaluates at (the Makefile's eval.windows); the solver columns fall back to them
WINDOWS = (192, 256, 320, 384, 512)
HEADLINE_WINDOW = 256  # the window of the one-line APR - SoS+ difference (the aim)
SOLVERS = (("sosp", "SoS+"), ("apr", "APR"))  # <data>/<split>/<name>.jsonl traces
LEARNED = (("sosp", "SoS+ (learned)"), ("apr", "APR (learned)"), ("apr_rl", "APR after GRPO"))
TIMELINE = "timeline.png"  # under <root>/eval/, written by the "one solved problem" section


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def solver_stats(data_dir: str | Path, split: str = "test", num_problems: int | None = None,
                 windows: Sequence[int] = WINDOWS) -> dict[str, dict]:
    """`apr.datagen.stats.summarize_records` of each solver's traces on the first `num_problems` problems of
    `split` (the ones evaluated), at `windows`; a solver whose traces are missing is left out."""
    from apr.datagen.build import read_records
    from apr.datagen.stats import summarize_records

    out = {}
    for name, _ in SOLVERS:
        path = Path(data_dir) / split / f"{name}.jsonl"
        if path.is_file():
            out[name] = summarize_records(read_records(path)[:num_problems], tuple(windows))
    return out


def learned_by_window(summary: dict, name: str) -> dict[str, float] | None:
    """A model's greedy accuracy per window (`accuracy_vs_window`), None if it was not evaluated."""
    from apr.eval.report import greedy

    model = summary.get("models", {}).get(name)
    setting = greedy(model["settings"]) if model else None
    return None if setting is None else setting["accuracy_vs_window"]


def window_section(summary: dict | None, solvers: dict[str, dict]) -> list[str]:
    """The report's first table: learned SoS+ / APR / APR after GRPO and the solvers alone, per window."""
    windows = list(summary["config"]["windows"]) if summary else list(WINDOWS)
    learned = {name: learned_by_window(summary, name) if summary else None for name, _ in LEARNED}
    n = summary["data"].get("num_problems") if summary else next(iter(solvers.values()), {}).get("num_problems")
    out = ["## 1. APR vs SoS+ by context window", "",
           f"Greedy accuracy on {n or '?'} held-out test problems, counting a problem only if every thread fits "
           "the window (SoS+ searches in one thread; for APR the window applies to its longest thread). The "
           "solver columns are the symbolic solvers' own traces on the same problems: what a model that imitated "
           "its solver perfectly would reach.", ""]
    if summary is None:
        out += ["(no evaluation found: the learned columns are empty)", ""]
    head = [label for _, label in LEARNED] + [f"{label} solver" for _, label in SOLVERS]
    out += ["| window (tokens) | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for w in windows:
        cells = [_pct((learned[name] or {}).get(str(w))) for name, _ in LEARNED]
        cells += [_pct(solvers[name]["solved_within_window"].get(str(w)) if name in solvers else None)
                  for name, _ in SOLVERS]
        out.append(f"| {w} | " + " | ".join(cells) + " |")
    return out + ["", *_difference_line(learned, solvers, HEADLINE_WINDOW), ""]


def _difference_line(learned: dict, solvers: dict, w: int) -> list[str]:
    def gap(a: dict | None, b: dict | None) -> float | None:
        if a is None or b is None or str(w) not in a or str(w) not in b:
            return None
        return 100 * (a[str(w)] - b[str(w)])

    learned_gap = gap(learned["apr"], learned["sosp"])
    if learned_gap is None:
        return []
    line = f"Learned APR minus learned SoS+ at {w} tokens: **{learned_gap:+.1f} points**"
    rl_gap = gap(learned["apr_rl"], learned["sosp"])
    if rl_gap is not None:
        line += f" (APR after GRPO: {rl_gap:+.1f})"
    solver_gap = gap(*(solvers[k]["solved_within_window"] if k in solvers else None for k in ("apr", "sosp")))
    if solver_gap is not None:
        line += f"; the solvers alone: {solver_gap:+.1f}"
    return [line + "."]


def _where_the_window_binds(solvers: dict[str, dict], windows: Sequence[int]) -> str:
    """The solvers alone at each window, on the evaluated problems: whether and where the window binds."""
    if not ({"sosp", "apr"} <= set(solvers) and windows):
        return ("The data's test traces were not found, so this report cannot say where the window binds on these "
                "problems.")
    s, a = (solvers[k]["solved_within_window"] for k in ("sosp", "apr"))
    n, longest = solvers["apr"]["num_problems"], {k: solvers[k]["longest_thread_tokens"]["max"] for k in solvers}
    sizes = (f"SoS+ keeps its whole search in one thread (up to {longest['sosp']} tokens here); APR hands "
             f"sub-searches to children, and its longest thread reaches {longest['apr']}.")
    solved = {k: solvers[k]["success_rate"] for k in ("sosp", "apr")}
    if all(s[str(w)] >= solved["sosp"] and a[str(w)] >= solved["apr"] for w in windows):
        return (f"None of the evaluated windows binds on these {n} test problems: at every one of them the solvers "
                f"alone solve all they solve at all ({solved['sosp']:.1%} SoS+, {solved['apr']:.1%} APR). {sizes}")
    w0 = HEADLINE_WINDOW if HEADLINE_WINDOW in windows else windows[0]
    others = "; ".join(f"{s[str(w)]:.1%} vs {a[str(w)]:.1%} at {w}" for w in windows if w != w0)
    out = (f"The context window binds here: on these {n} test problems the solvers alone solve {s[str(w0)]:.1%} "
           f"(SoS+) vs {a[str(w0)]:.1%} (APR) within a {w0}-token window ({others}), and {solved['sosp']:.1%} "
           f"vs {solved['apr']:.1%} with no window. {sizes}")
    flipped = [w for w in windows if s[str(w)] > a[str(w)]]
    root = solvers["apr"]["root_tokens"]["p50"]
    if flipped:
        out += f" The order flips at {', '.join(map(str, flipped))} tokens, where SoS+ solves more"
        out += (f": most APR roots (median {root} tokens) do not fit there, while short SoS+ searches do."
                if max(flipped) < root else ".")
    return out


def limits_text(solvers: dict[str, dict], num_problems: int | None, windows: Sequence[int]) -> str:
    """What toy scale can and cannot show, with this run's own numbers where it states any."""
    where = _where_the_window_binds(solvers, windows)
    can = ("What the tiny models can show: whether a model trained on each solver's traces keeps that ordering "
           "where the window binds (the first table), that the pipeline runs end to end, and whether GRPO's "
           "few steps get a reward signal (the before/after table). A model that imitates its solver's traces "
           "has about its solver's column as its ceiling; a gap to it is what the minutes of training left.")
    cannot = "What they cannot show: the paper's effect sizes, which come from N=4 Countdown with a 228M-parameter "
    cannot += "model and 1k-4k-token windows (`make repro-small` runs N=4 at small scale: hours on CPU)"
    if num_problems:
        se = 100 * math.sqrt(0.25 / num_problems)
        cannot += (f"; nor small gaps: with {num_problems} problems each is {100 / num_problems:.1f} points and "
                   f"an accuracy near 50% has a standard error of ~{se:.1f} points, so two models that differ by "
                   f"less than ~{2 * math.sqrt(2) * se:.0f} points (two standard errors of a difference) may differ "
                   "by chance")
    return "\n\n".join([where, can, cannot + "."])


def _sft_section(sft: Path, title: str) -> list[str]:
    rows = _rows(sft / "metrics.jsonl")
    evals = [r for r in rows if "eval/accuracy" in r]
    train = [r for r in rows if "train/loss" in r]
    out = [f"### {title}", ""]
    if not rows:
        return out + [f"(no SFT metrics found in {sft.name}/)", ""]
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
    out = ["## 4. GRPO of the APR model (spawn/join rollouts on Ray)", ""]
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


def solved_problem_lines(reasoner, problems: Sequence, timeline_path: Path, timeline_ref: str) -> list[str]:
    """The solved problem with the most child threads: its answer, costs, timeline plot and thread tree."""
    from apr.eval.plots import plot_thread_timeline

    results = reasoner.solve_batch(problems, max_thread_tokens=512)
    solved = [r for r in results if r.correct]
    if not solved:
        return [f"(none of the first {len(problems)} test problems was solved greedily)", ""]
    best = max(solved, key=lambda r: r.metrics["num_child_threads"])  # show the parallel search
    p, m = best.problem, best.metrics
    spans = best.tree.root.timeline()
    timeline_path.parent.mkdir(parents=True, exist_ok=True)
    plot_thread_timeline(spans, timeline_path, title=f"numbers {p.numbers}, target {p.target}: {best.answer}")
    spawns = ", ".join(str(a) for a, _ in spans[0].pauses) or "none"
    joins = ", ".join(str(b) for _, b in spans[0].pauses) or "none"
    return [f"Numbers {p.numbers}, target {p.target}: answer `{best.answer}` ({best.reason}); "
            f"{m['num_child_threads']} child threads, {m['total_tokens']} total tokens, "
            f"{m['sequential_tokens']} sequential.", "",
            f"![thread timeline]({timeline_ref})", "",
            f"One bar per thread over decode steps (tokens generated one after another). The root spawned at "
            f"step(s) {spawns}, waited (hatched) until its slowest child joined (step(s) {joins}) and ended at step "
            f"{spans[0].end_step}: its sequential tokens. All threads together generated {m['generated_tokens']}.",
            "", "```", best.tree.render(), "```", ""]


def _tree_section(model: Path, data_dir: Path, root: Path, max_tries: int = 50) -> list[str]:
    from apr.api import Reasoner
    from apr.task import load_problems, problems_path

    out = ["## 6. One solved problem, as the runtime ran it", ""]
    if not (model / "config.json").is_file() or not problems_path(data_dir, "test").is_file():
        return out + ["(model or problems missing)", ""]
    problems = load_problems(data_dir, "test", max_tries)
    reasoner = Reasoner.from_pretrained(model, max_seq_len=1024)
    return out + solved_problem_lines(reasoner, problems, root / "eval" / TIMELINE, f"eval/{TIMELINE}")


def _eval_section(eval_dir: Path) -> list[str]:
    out = ["## 5. Evaluation on held-out test problems", ""]
    if not (eval_dir / "results.md").is_file():
        return out + ["(no evaluation found)", ""]
    body = (eval_dir / "results.md").read_text().split("\n", 1)[-1]  # without its title
    out += [body.replace("## ", "### "), ""]
    return out + [f"![{p.stem}](eval/{p.name})" for p in sorted(eval_dir.glob("*.png")) if p.name != TIMELINE] + [""]


def write_quickstart_report(root: str | Path, model: str | Path | None = None) -> Path:
    """Assemble `<root>/REPORT.md` from `<root>/{data,sft,sft_sosp,rl,eval}`; returns its path."""
    root = Path(root)
    eval_dir = root / "eval"
    model = Path(model) if model else (root / "rl" / "final" if (root / "rl" / "final").is_dir() else root / "sft" / "final")
    summary = json.loads((eval_dir / "metrics.json").read_text()) if (eval_dir / "metrics.json").is_file() else None
    windows = summary["config"]["windows"] if summary else WINDOWS
    num_problems = summary["data"].get("num_problems") if summary else None
    split = summary["data"].get("split", "test") if summary else "test"
    solvers = solver_stats(root / "data", split, num_problems, windows)
    lines = ["# Quickstart report", "",
             "`make quickstart`: Countdown with 3 numbers, two tiny Llamas trained from scratch with the same recipe "
             "(one on APR spawn/join traces, one on serial SoS+ traces), a few GRPO steps of the APR model with "
             "spawn/join rollouts on a local Ray cluster, evaluation on held-out test problems at several context "
             "windows. Everything below was measured by this run on this machine.", ""]
    lines += window_section(summary, solvers)
    if (root / "data" / "stats.md").is_file():
        lines += ["## 2. Data", "", "See [data/stats.md](data/stats.md) (problems, solver traces, token counts).", ""]
    lines += ["## 3. Supervised training", ""]
    lines += _sft_section(root / "sft", "APR traces (sft/)") + _sft_section(root / "sft_sosp", "SoS+ traces (sft_sosp/)")
    lines += _rl_section(root / "rl") + _eval_section(eval_dir)
    lines += _tree_section(model, root / "data", root)
    lines += ["## What toy scale can and cannot show", "",
              limits_text(solvers, num_problems or next(iter(solvers.values()), {}).get("num_problems"), windows), ""]
    path = root / "REPORT.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
