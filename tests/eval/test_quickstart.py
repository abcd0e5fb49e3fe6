"""The quickstart report: APR vs SoS+ by window beside the solvers, the limits text from the run's numbers, and the
timeline of a solved thread tree (a scripted engine replays solver traces: no model)."""

from apr.api import Reasoner
from apr.config import to_dict
from apr.datagen.build import TraceRecord
from apr.engine.scripted import ScriptedEngine
from apr.eval import EvalConfig
from apr.eval.plots import plot_thread_timeline
from apr.eval.quickstart import limits_text, solved_problem_lines, solver_stats, write_quickstart_report
from apr.eval.report import write_report
from apr.runtime import Span
from apr.task import CountdownConfig, Problem, generate_problems
from tests._replay import solver_replay

WINDOWS = (192, 256, 512)


def setting(by_window):
    """A greedy setting with accuracy per window (`apr.eval.suite.summarize_setting`'s fields)."""
    return {"temperature": 0.0, "condition": None, "num_samples": 1, "num_problems": 4, "num_records": 4,
            "accuracy": by_window[-1], "accuracy_vs_window": {str(w): a for w, a in zip(WINDOWS, by_window)},
            "mean_generated_tokens": 200.0, "mean_total_tokens": 300.0, "mean_sequential_tokens": 200.0,
            "mean_longest_thread_tokens": 220.0, "mean_child_threads": 1.0, "mean_latency_s": 0.1,
            "root_finish": {"eos": 4}}


def fake_summary():
    models = {"sosp": [0.25, 0.25, 0.5], "apr": [0.0, 0.5, 0.75], "apr_rl": [0.0, 0.75, 0.75]}
    return {"config": to_dict(EvalConfig(max_thread_tokens=512, windows=WINDOWS)),
            "data": {"data_dir": "d", "split": "test", "num_problems": 4},
            "models": {name: {"path": name, "settings": {"t0": setting(acc)}} for name, acc in models.items()},
            "rl_pairs": {"apr": "apr_rl"}}


def trace(algorithm, solved, thread_tokens, target):
    return TraceRecord(Problem([1, 2, 3], target), algorithm, solved, "1+2+3" if solved else None, 1, 1, "sum",
                       thread_tokens, [t - 10 for t in thread_tokens])


def write_traces(data_dir):
    """Five test problems; the report must read only the first four (the evaluated ones)."""
    sosp = [([150], True), ([250], True), ([400], True), ([100], False), ([120], True)]
    apr = [([220, 60], True), ([200, 70, 70], True), ([240, 300], True), ([230], False), ([120], True)]
    (data_dir / "test").mkdir(parents=True)
    for name, rows in (("sosp", sosp), ("apr", apr)):
        recs = [trace(name, ok, tokens, 10 + i) for i, (tokens, ok) in enumerate(rows)]
        (data_dir / "test" / f"{name}.jsonl").write_text("".join(r.to_json() + "\n" for r in recs))


def test_solver_stats_read_the_evaluated_problems_at_the_eval_windows(tmp_path):
    write_traces(tmp_path)
    stats = solver_stats(tmp_path, "test", 4, WINDOWS)
    assert stats["sosp"]["solved_within_window"] == {"192": 0.25, "256": 0.5, "512": 0.75}
    assert stats["apr"]["solved_within_window"] == {"192": 0.0, "256": 0.5, "512": 0.75}  # the longest thread counts
    assert stats["sosp"]["longest_thread_tokens"]["max"] == 400 and stats["apr"]["num_problems"] == 4


def test_report_opens_with_apr_vs_sosp_by_window(tmp_path):
    write_traces(tmp_path / "data")
    write_report(fake_summary(), tmp_path / "eval", plots=False)
    md = write_quickstart_report(tmp_path).read_text()
    table = md[md.index("## 1. APR vs SoS+ by context window"):md.index("## 3.")]
    assert md.index("## 1. APR vs SoS+") < md.index("## 3. Supervised training") < md.index("## 5. Evaluation")
    assert "| window (tokens) | SoS+ (learned) | APR (learned) | APR after GRPO | SoS+ solver | APR solver |" in table
    assert "| 192 | 25.0% | 0.0% | 0.0% | 25.0% | 0.0% |" in table
    assert "| 256 | 25.0% | 50.0% | 75.0% | 50.0% | 50.0% |" in table
    assert "| 512 | 50.0% | 75.0% | 75.0% | 75.0% | 75.0% |" in table
    assert "Learned APR minus learned SoS+ at 256 tokens: **+25.0 points** (APR after GRPO: +50.0); " \
           "the solvers alone: +0.0." in table
    assert "Greedy accuracy on 4 held-out test problems" in table
    assert "| apr -> apr_rl | 75.0% -> 75.0% |" in md  # the before/after GRPO table is kept
    limits = md[md.index("## What toy scale can and cannot show"):]
    assert "nothing binds" not in limits
    assert "solve 50.0% (SoS+) vs 50.0% (APR) within a 256-token window (25.0% vs 0.0% at 192; 75.0% vs 75.0% at " \
           "512)" in limits
    assert "up to 400 tokens here" in limits and "The order flips at 192 tokens" in limits
    assert "with 4 problems each is 25.0 points" in limits
    assert "(model or problems missing)" in md  # no checkpoint here: no tree, no timeline


def test_report_without_evaluation_still_shows_the_solvers(tmp_path):
    write_traces(tmp_path / "data")
    md = write_quickstart_report(tmp_path).read_text()
    assert "(no evaluation found: the learned columns are empty)" in md
    assert "| 256 | - | - | - | 60.0% | 60.0% |" in md  # all five problems, at the quickstart's windows
    assert "Learned APR minus" not in md


def test_limits_text_when_no_window_binds(tmp_path):
    write_traces(tmp_path)
    text = limits_text(solver_stats(tmp_path, "test", 4, (512,)), 4, (512,))
    assert text.startswith("None of the evaluated windows binds on these 4 test problems")
    assert "(75.0% SoS+, 75.0% APR)" in text and "The context window binds" not in text


def test_limits_text_states_no_numbers_without_traces():
    text = limits_text({}, None, WINDOWS)
    assert "were not found" in text and "%" not in text and "points" not in text and "The context window binds" not in text


def test_timeline_plot_of_a_solved_tree(tmp_path, tokenizer):
    problems = generate_problems(CountdownConfig(num_numbers=3), 8, seed=4)
    results, script = solver_replay(problems, tokenizer)
    assert any(r.solved and r.trace.num_child_threads for r in results)
    reasoner = Reasoner(ScriptedEngine(script), tokenizer)
    path = tmp_path / "eval" / "timeline.png"
    lines = solved_problem_lines(reasoner, problems, path, "eval/timeline.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![thread timeline](eval/timeline.png)" in lines
    # the tree with the most children among the solved ones, replayed token for token from its solver trace
    best = max((r for r in results if r.solved), key=lambda r: r.trace.num_child_threads)
    assert f"{best.trace.num_child_threads} child threads" in lines[0]
    tree_text = "\n".join(lines)
    assert tree_text.count("=== thread") == best.trace.num_threads


def test_plot_thread_timeline_writes_a_png(tmp_path):
    spans = [Span(0, None, 0, 0, 40, ((10, 30),)), Span(1, 0, 1, 10, 18), Span(2, 0, 1, 10, 30, ((12, 20),)),
             Span(3, 2, 2, 12, 20)]
    path = plot_thread_timeline(spans, tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert spans[2].running == [(10, 12), (20, 30)]

