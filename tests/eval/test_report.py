"""The report writes metrics.json, results.md and the PNG figures from a synthetic summary."""

import json

from apr.config import to_dict
from apr.eval import EvalConfig
from apr.eval.report import to_markdown, write_report


def setting(temperature, condition, n, accuracy, total, seq, latency, children=0.0, curve=False):
    s = {"temperature": temperature, "condition": condition, "num_samples": n, "num_problems": 10,
         "num_records": 10 * n, "accuracy": accuracy,
         "accuracy_vs_window": {"256": accuracy / 2, "512": accuracy},
         "mean_generated_tokens": total * 0.8, "mean_total_tokens": total, "mean_sequential_tokens": seq,
         "mean_longest_thread_tokens": seq, "mean_child_threads": children, "mean_latency_s": latency,
         "root_finish": {"stop": 10 * n}}
    if curve:
        s["curve"] = [{"n": k, "pass": min(1, accuracy + 0.1 * k), "cons": accuracy + 0.02 * k,
                       "mean_total_tokens": total * k, "mean_sequential_tokens": seq + k} for k in range(1, n + 1)]
    return s


def summary(with_rl=True):
    cfg = EvalConfig(max_thread_tokens=512, windows=(256, 512))
    apr = {"t0": setting(0.0, None, 1, 0.6, 900, 300, 0.5, children=3.0),
           "t1": setting(1.0, None, 1, 0.5, 950, 320, 0.6, children=3.2),
           "t0_threads-2": setting(0.0, "threads 2", 1, 0.5, 600, 320, 0.4, children=2.0),
           "t0_threads-4": setting(0.0, "threads 4", 1, 0.65, 1000, 280, 0.5, children=4.0)}
    sosp = {"t0": setting(0.0, None, 1, 0.4, 500, 500, 0.8),
            "t1_n4": setting(1.0, None, 4, 0.35, 520, 520, 0.9, curve=True),
            "t0_budget-512": setting(0.0, "budget 512", 1, 0.3, 400, 400, 0.7)}
    models = {"sosp": {"path": "runs/sosp", "settings": sosp}, "apr": {"path": "runs/apr", "settings": apr}}
    if with_rl:
        models["apr_rl"] = {"path": "runs/apr_rl", "settings": {"t0": setting(0.0, None, 1, 0.75, 1200, 260, 0.5,
                                                                               children=5.0)}}
    return {"config": to_dict(cfg), "data": {"data_dir": "d", "split": "test", "num_problems": 10}, "models": models,
            "rl_pairs": {"apr": "apr_rl"} if with_rl else {}}


def test_report_writes_json_markdown_and_plots(tmp_path):
    s = summary()
    written = write_report(s, tmp_path)
    names = {p.name for p in written}
    assert names == {"metrics.json", "results.md", "accuracy_vs_window.png", "accuracy_vs_total_tokens.png",
                     "accuracy_vs_sequential_tokens.png", "accuracy_vs_latency.png", "rl_before_after.png"}
    for p in written:
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "metrics.json").read_text()) == s
    md = (tmp_path / "results.md").read_text()
    assert "| apr | 60.0% | 50.0% |" in md  # accuracy by temperature (T=0, T=1)
    assert "| sosp | 40.0% | 35.0% |" in md  # T=1 from the 4-sample cons/pass run
    assert "| sosp | t1_n4 | 4 | " in md  # the cons@n / pass@n table
    assert "| apr -> apr_rl | 60.0% -> 75.0% | 3.00 -> 5.00 | 900 -> 1200 | 300 -> 260 |" in md


def test_report_without_pairs_or_curves(tmp_path):
    s = summary(with_rl=False)
    s["models"]["sosp"]["settings"].pop("t1_n4")
    written = write_report(s, tmp_path, plots=False)
    assert {p.name for p in written} == {"metrics.json", "results.md"}
    md = to_markdown(s)
    assert "Before / after RL" not in md and "pass@n" not in md and "| apr | t0_threads-4 |" in md
