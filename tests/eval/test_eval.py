import json

import pytest

from apr.api import Reasoner
from apr.config import ConfigError
from apr.engine.scripted import ScriptedEngine
from apr.eval import (
    EvalConfig,
    EvalRecord,
    accuracy_vs_window,
    cons_at_n,
    evaluate,
    pass_at_n,
    summarize_records,
)
from apr.task import CountdownConfig, generate_problems
from tests._replay import solver_replay


def rec(p, s, answer, correct, longest=100):
    return EvalRecord(p, s, answer, correct, 10, 10, longest, 20, 0, 0.1)


def test_pass_and_cons_at_n_by_hand():
    recs = [rec(0, 0, "a", False), rec(0, 1, "b", True), rec(0, 2, "a", False),  # majority wrong, pass right
            rec(1, 0, None, False), rec(1, 1, "c", True), rec(1, 2, None, False),  # one valid vote: right
            rec(2, 0, None, False), rec(2, 1, None, False), rec(2, 2, None, False)]  # nothing
    assert pass_at_n(recs, 1) == 0.0
    assert pass_at_n(recs, 2) == pytest.approx(2 / 3)
    assert cons_at_n(recs, 1) == 0.0
    assert cons_at_n(recs, 2) == pytest.approx(1 / 3)  # problem 0: a/b tie -> earliest (a): wrong; 1: c
    assert cons_at_n(recs, 3) == pytest.approx(1 / 3)  # problem 0: a wins 2-1 (wrong); problem 1: c right


def test_accuracy_vs_window_is_cumulative():
    recs = [rec(0, 0, "x", True, 300), rec(1, 0, "y", True, 900), rec(2, 0, None, False, 50)]
    acc = accuracy_vs_window(recs, [256, 512, 1024])
    assert acc == {"256": 0.0, "512": pytest.approx(1 / 3), "1024": pytest.approx(2 / 3)}
    s = summarize_records(recs, [512])
    assert s["accuracy"] == pytest.approx(2 / 3) and s["num_problems"] == 3


def test_evaluate_matches_solver_and_resumes(tmp_path, tokenizer):
    problems = generate_problems(CountdownConfig(num_numbers=4), 6, seed=9)
    traces, script = solver_replay(problems, tokenizer)
    engine = ScriptedEngine(script)
    reasoner = Reasoner(engine, tokenizer)
    cfg = EvalConfig(max_thread_tokens=100_000, windows=(512, 1024), batch_size=4, progress=False)
    path = tmp_path / "greedy.jsonl"
    first = evaluate(reasoner, problems[:3], cfg, path)
    assert len(first) == 3
    with open(path, "a") as f:
        f.write('{"torn": ')  # an interrupted write
    steps_before = engine.stats.num_steps
    out = evaluate(reasoner, problems, cfg, path)
    assert [r.problem_index for r in out] == list(range(6))
    assert [r.correct for r in out] == [t.solved for t in traces]
    assert [r.num_child_threads for r in out] == [t.trace.num_child_threads for t in traces]
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(x) for x in lines)
    # resuming evaluated only the 3 missing problems
    assert engine.stats.num_steps > steps_before
    again = evaluate(reasoner, problems, cfg, path)
    assert again == out


def test_bad_eval_config():
    with pytest.raises(ConfigError, match="eval.max_thread_tokens"):
        EvalConfig(max_thread_tokens=512, windows=(1024,))
