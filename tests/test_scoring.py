"""One way to solve and score (`apr.scoring`): records, the standard metrics, the same names in SFT, RL
and eval; one reader of problems.jsonl."""

import json

import pytest

from apr.api import Reasoner
from apr.config import ConfigError
from apr.engine.scripted import ScriptedEngine
from apr.eval import summarize_records
from apr.scoring import METRICS, EvalRecord, score, solve_and_score
from apr.task import CountdownConfig, generate_problems, load_problems, problems_path
from tests._replay import solver_replay


@pytest.fixture(scope="module")
def replayed(tokenizer):
    """(problems, solver results, a Reasoner whose engine replays the solver's APR traces)."""
    problems = generate_problems(CountdownConfig(num_numbers=4), 4, seed=5)
    results, script = solver_replay(problems, tokenizer)
    return problems, results, Reasoner(ScriptedEngine(script), tokenizer)


def test_solve_and_score_records_and_metrics(replayed):
    problems, results, reasoner = replayed
    records, metrics = solve_and_score(reasoner, problems, {"max_thread_tokens": 100_000}, num_samples=2,
                                       indices=[10, 11, 12, 13])
    assert [(r.problem_index, r.sample_index) for r in records] == [(10 + i, s) for i in range(4) for s in (0, 1)]
    assert [r.correct for r in records[::2]] == [r.solved for r in results]
    assert [r.num_child_threads for r in records[::2]] == [r.trace.num_child_threads for r in results]
    assert tuple(metrics) == METRICS and metrics == score(records)
    assert metrics["accuracy"] == pytest.approx(sum(r.solved for r in results) / 4)
    assert metrics["mean_child_threads"] == pytest.approx(sum(r.trace.num_child_threads for r in results) / 4)


def test_score_of_nothing_is_zeros():
    assert score([]) == dict.fromkeys(METRICS, 0.0)


def test_the_same_names_in_sft_rl_and_eval(replayed, tmp_path):
    from apr.rl.rollout import Rollout
    from apr.rl.trainer import rollout_metrics

    problems, _, reasoner = replayed
    results = reasoner.solve_batch(problems, max_thread_tokens=100_000)
    rollouts = [Rollout(i, 0, r.tree.thread_tree, float(r.correct), r.correct, r.answer, 0) for i, r in enumerate(results)]
    rl = rollout_metrics(rollouts, "eval")
    records = [EvalRecord.from_tree(i, 0, r.answer, r.correct, r.tree.thread_tree) for i, r in enumerate(results)]
    assert {k: rl[f"eval/{k}"] for k in METRICS} == score(records)  # RL: eval/<name> (and rollout/<name>)
    assert set(METRICS) <= set(summarize_records(records, [1024]))  # the eval suite: <name> per setting


def test_one_reader_of_problems_jsonl(tmp_path):
    problems = generate_problems(CountdownConfig(num_numbers=3), 3, seed=0)
    path = problems_path(tmp_path, "val")
    path.parent.mkdir()
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in problems) + "\n")
    assert load_problems(tmp_path, "val") == problems and load_problems(tmp_path, "val", 2) == problems[:2]
    with pytest.raises(ConfigError, match=r"^data_dir: '.*' has no test/problems.jsonl; accepted: a directory"):
        load_problems(tmp_path, "test", field="data_dir")
