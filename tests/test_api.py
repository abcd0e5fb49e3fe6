"""Reasoner over a scripted engine: answers, verification, trees, limits, errors."""

import pytest

from apr.api import Reasoner
from apr.config import ConfigError
from apr.engine.scripted import ScriptedEngine
from apr.protocol import render_tree
from apr.search import SearchConfig, solve
from apr.task import CountdownConfig, Problem, generate_problems


def replay(tokenizer, traces):
    full = {}
    for trace in traces:
        for t in render_tree(trace, tokenizer):
            full[tuple(t.ids[:t.mask.index(1)])] = t.ids
    return ScriptedEngine(lambda prompt, ctx: full[prompt][len(ctx)])


def test_solve_batch_returns_verified_answers_and_trees(tokenizer):
    problems = generate_problems(CountdownConfig(num_numbers=4), 8, seed=3)
    results = [solve(p, SearchConfig("apr", promising_prob=0.9), seed=i) for i, p in enumerate(problems)]
    reasoner = Reasoner(replay(tokenizer, [r.trace for r in results]), tokenizer)
    out = reasoner.solve_batch([(p.numbers, p.target) for p in problems], max_thread_tokens=100_000)
    assert [o.answer for o in out] == [r.answer for r in results]
    assert [o.correct for o in out] == [r.solved for r in results]
    for o, r in zip(out, results):
        assert o.metrics["num_threads"] == r.trace.num_threads
        assert o.tree.text().startswith("<bos>node 0 ")
        rendered = o.tree.render()
        assert rendered.count("=== thread") == r.trace.num_threads
        d = o.to_dict()
        assert d["tree"]["threads"][0]["parent"] is None and d["correct"] == o.correct


def test_solve_single_and_wrong_answer_reason(tokenizer):
    p = Problem([22, 26, 31, 53], 27)
    script = "<bos>node 0 27:[22,26,31,53] []\nanswer 22+26+31+53\n<eos>"
    ids = tokenizer.encode(script, add_special_tokens=False)
    engine = ScriptedEngine(lambda prompt, ctx: ids[len(ctx)])
    out = Reasoner(engine, tokenizer).solve(p.numbers, p.target)
    assert out.answer == "22+26+31+53" and not out.correct and "132" in out.reason


def test_generate_is_task_agnostic(tokenizer):
    script = tokenizer.encode("<bos>try\n<spawn>node\n</spawn><result>1</result>goal\n<eos>", add_special_tokens=False)
    child = tokenizer.encode("<bos>node\n<join>1</join>", add_special_tokens=False)
    full = {tuple(script[:3]): script, tuple(child[:3]): child}
    engine = ScriptedEngine(lambda prompt, ctx: full[prompt][len(ctx)])
    (tree,) = Reasoner(engine, tokenizer).generate(["try\n"])
    assert tree.text().endswith("goal\n<eos>") and len(tree.threads) == 2


def test_bad_limits_and_problems_are_clear(tokenizer):
    reasoner = Reasoner(ScriptedEngine(lambda p, c: 3), tokenizer)
    with pytest.raises(ConfigError, match="runtime.max_thread_tokens"):
        reasoner.solve([1, 2], 3, max_thread_tokens=0)
    with pytest.raises(ConfigError, match="runtime.max_widgets"):
        reasoner.solve([1, 2], 3, max_widgets=3)
    with pytest.raises(ConfigError, match="problems\\[0\\]"):
        reasoner.solve_batch(["1 2 3"])
    with pytest.raises(ConfigError, match="problem.numbers"):
        reasoner.solve([1], 3)


def test_missing_model_dir_and_bad_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        Reasoner.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        Reasoner.from_pretrained(tmp_path)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, "<unk>")),
                                    unk_token="<unk>")
    with pytest.raises(ConfigError, match="tokenizer: .*lacks the protocol token"):
        Reasoner(ScriptedEngine(lambda p, c: 0), plain)


def test_lazy_top_level_import():
    import apr

    assert apr.Reasoner is Reasoner
