"""The runtime's spawn/join bookkeeping, driven by a scripted engine (no model)."""

import pytest

from apr.config import ConfigError
from apr.engine.scripted import ScriptedEngine
from apr.protocol import ProtocolIds, render_tree
from apr.runtime import Finish, Runtime, RuntimeConfig, Status
from apr.search import SearchConfig, solve
from apr.task import CountdownConfig, generate_problems


@pytest.fixture(scope="module")
def pid(tokenizer):
    return ProtocolIds.from_tokenizer(tokenizer)


def replay_script(rendered_trees):
    """Each thread generates exactly its rendered ids, looked up by the prompt it started from."""
    full = {}
    for threads in rendered_trees:
        for t in threads:
            n_prompt = t.mask.index(1)
            full[tuple(t.ids[:n_prompt])] = t.ids
    return lambda prompt, ctx: full[prompt][len(ctx)]


def text_script(tokenizer, scripts):
    """Threads given as {prompt text: whole thread text}; generates the thread's next token."""
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    assert all(whole.startswith(p) for p, whole in scripts.items())
    full = {tuple(enc(p)): enc(whole) for p, whole in scripts.items()}
    return lambda prompt, ctx: full[prompt][len(ctx)] if len(ctx) < len(full[prompt]) else enc(" 1")[0]


def solver_trees(n, cfg, num_numbers=4):
    problems = generate_problems(CountdownConfig(num_numbers=num_numbers), n, seed=5)
    return [solve(p, cfg, seed=i).trace for i, p in enumerate(problems)]


@pytest.mark.parametrize("cfg,max_depth,num_numbers", [
    (SearchConfig("apr", promising_prob=0.9), 1, 4),
    (SearchConfig("apr", promising_prob=1.0, max_depth=2), 2, 5),
    (SearchConfig("sosp"), 1, 3),
])
def test_runtime_reproduces_solver_trees_token_exact(tokenizer, pid, cfg, max_depth, num_numbers):
    traces = solver_trees(12, cfg, num_numbers)
    rendered = [render_tree(t, tokenizer) for t in traces]
    engine = ScriptedEngine(replay_script(rendered))
    rt = Runtime(engine, pid, RuntimeConfig(max_depth=max_depth, max_thread_tokens=100_000))
    trees = rt.run([r[0].ids[:r[0].mask.index(1)] for r in rendered])
    assert len(trees) == len(traces)
    for tree, threads in zip(trees, rendered):
        got = tree.threads()
        assert [t.all_ids for t in got] == [t.ids for t in threads]  # ids, in depth-first order
        assert [t.full_mask for t in got] == [t.mask for t in threads]  # generated-token masks
        assert all(t.status == Status.FINISHED for t in got)
        assert tree.root.finish_reason == Finish.EOS
        assert all(t.finish_reason == Finish.JOIN for t in got[1:])
        for t in got:
            # resume reuses the KV: only the prompt, then each results block, is prefilled
            written = len(t.mask) - sum(t.mask)
            assert t.num_prefill_tokens == len(t.prompt_ids) + written
            assert len(t.logprobs) == len(t.ids)
        m = tree.metrics()
        assert m["num_threads"] == len(threads)
        assert m["generated_tokens"] == sum(sum(t.mask) for t in threads)
        assert m["longest_thread_tokens"] == max(len(t.ids) for t in threads)
    assert engine.num_kept == 0  # every kept cache was released
    if max_depth >= 1 and cfg.algorithm == "apr":
        # children of different problems ran in the same engine steps
        assert max(engine.batch_sizes) > len(traces)


def test_sequential_tokens_wait_for_slowest_child(tokenizer, pid):
    enc = lambda s: len(tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
    scripts = {
        "<bos>node 0 27:[1] []\n": "<bos>node 0 27:[1] []\ntry 1+1=2 [2] no\n<spawn>node 0,0 a\n<sep>node 0,1 b\n</spawn>"
                                   "<result>1+1=2<sep></result>answer 1\n<eos>",
        "<bos>node 0,0 a\n": "<bos>node 0,0 a\ntry 1+1=2 [2] goal\n<join>1+1=2</join>",
        "<bos>node 0,1 b\n": "<bos>node 0,1 b\ntry 1+1=2 [2] no\ntry 1+1=2 [2] no\ntry 1+1=2 [2] no\nfail 0,1\n<join></join>",
    }
    engine = ScriptedEngine(text_script(tokenizer, scripts))
    (tree,) = Runtime(engine, pid, RuntimeConfig()).run([tokenizer.encode("<bos>node 0 27:[1] []\n", add_special_tokens=False)])
    root, fast, slow = tree.threads()
    assert [c.join_message for c in (fast, slow)] == [tokenizer.encode("1+1=2", add_special_tokens=False), []]
    assert tokenizer.decode(root.all_ids).endswith("<result>1+1=2<sep></result>answer 1\n<eos>")
    root_generated = enc("try 1+1=2 [2] no\n<spawn>node 0,0 a\n<sep>node 0,1 b\n</spawn>answer 1\n<eos>")
    assert root.num_generated == root_generated
    slow_generated = enc("try 1+1=2 [2] no\ntry 1+1=2 [2] no\ntry 1+1=2 [2] no\nfail 0,1\n<join></join>")
    assert tree.metrics()["sequential_tokens"] == root_generated + slow_generated
    assert tree.metrics()["generated_tokens"] == root_generated + slow_generated + fast.num_generated


def run_scripts(tokenizer, pid, scripts, cfg, root="<bos>node 0\n"):
    engine = ScriptedEngine(text_script(tokenizer, scripts))
    (tree,) = Runtime(engine, pid, cfg).run([tokenizer.encode(root, add_special_tokens=False)])
    return tree, engine


def test_malformed_child_spawn_gives_parent_an_empty_result(tokenizer, pid):
    scripts = {
        "<bos>node 0\n": "<bos>node 0\n<spawn>node 1\n<sep>node 2\n</spawn><result>1+1=2<sep></result>answer 1\n<eos>",
        "<bos>node 1\n": "<bos>node 1\n<join>1+1=2</join>",
        "<bos>node 2\n": "<bos>node 2\n<spawn>node 3\n</spawn>",  # depth 1 may not spawn (max_depth=1)
    }
    tree, engine = run_scripts(tokenizer, pid, scripts, RuntimeConfig(max_depth=1))
    root, c0, c1 = tree.threads()
    assert c1.finish_reason == Finish.MALFORMED and "depth exceeded" in c1.error
    assert root.finish_reason == Finish.EOS
    assert tokenizer.decode(root.all_ids).endswith("<result>1+1=2<sep></result>answer 1\n<eos>")
    assert engine.num_kept == 0


@pytest.mark.parametrize("generated,error", [
    ("<spawn></spawn>", "empty spawn"),
    ("try\n</spawn>", "without <spawn>"),
    ("<spawn>node 1\n<join>2</spawn>", "markup inside"),
    ("<spawn>1<sep>2<sep>3</spawn>", "too many children"),
    ("<join>1<sep>2</join>", "markup inside a join"),
])
def test_malformed_root_output_is_recorded_not_raised(tokenizer, pid, generated, error):
    tree, _ = run_scripts(tokenizer, pid, {"<bos>node 0\n": "<bos>node 0\n" + generated}, RuntimeConfig(max_children=2))
    assert tree.root.finish_reason == Finish.MALFORMED
    assert error in tree.root.error
    assert tree.is_done and tree.metrics()["num_threads"] == 1


def test_window_exhausted_child_returns_empty(tokenizer, pid):
    scripts = {"<bos>node 0\n": "<bos>node 0\n<spawn>node 1\n</spawn><result></result>answer 1\n<eos>",
               "<bos>node 1\n": "<bos>node 1\n"}  # the child never stops (the script pads with " 1")
    tree, engine = run_scripts(tokenizer, pid, scripts, RuntimeConfig(max_thread_tokens=40))
    root, child = tree.threads()
    assert child.finish_reason == Finish.WINDOW and child.num_tokens == 40
    assert child.join_message is None
    assert root.finish_reason == Finish.EOS
    assert engine.num_kept == 0


def test_window_exhausted_root(tokenizer, pid):
    tree, _ = run_scripts(tokenizer, pid, {"<bos>node 0\n": "<bos>node 0\n"}, RuntimeConfig(max_thread_tokens=16))
    assert tree.root.finish_reason == Finish.WINDOW and tree.root.num_tokens == 16


def test_budget_bounds_generated_tokens(tokenizer, pid):
    scripts = {"<bos>node 0\n": "<bos>node 0\n<spawn>node 1\n<sep>node 2\n<sep>node 3\n</spawn><result><sep><sep></result>answer 1\n<eos>",
               "<bos>node 1\n": "<bos>node 1\n", "<bos>node 2\n": "<bos>node 2\n", "<bos>node 3\n": "<bos>node 3\n"}
    tree, _ = run_scripts(tokenizer, pid, scripts, RuntimeConfig(max_total_tokens=60))
    root, *children = tree.threads()
    assert all(c.finish_reason == Finish.BUDGET for c in children)
    assert tree.metrics()["generated_tokens"] <= 60
    assert root.finish_reason in (Finish.BUDGET, Finish.EOS)


def test_timeout_ends_the_tree(tokenizer, pid):
    engine = ScriptedEngine(text_script(tokenizer, {"<bos>node 0\n": "<bos>node 0\n"}), step_sleep_s=0.002)
    rt = Runtime(engine, pid, RuntimeConfig(max_thread_tokens=100_000, timeout_s=0.05))
    (tree,) = rt.run([tokenizer.encode("<bos>node 0\n", add_special_tokens=False)])
    assert tree.root.finish_reason == Finish.TIMEOUT


def test_samples_share_the_prompt_prefill(tokenizer, pid):
    traces = solver_trees(3, SearchConfig("apr", promising_prob=0.9))
    rendered = [render_tree(t, tokenizer) for t in traces]
    engine = ScriptedEngine(replay_script(rendered))
    prompts = [r[0].ids[:r[0].mask.index(1)] for r in rendered]
    trees = Runtime(engine, pid, RuntimeConfig(max_thread_tokens=100_000)).run(prompts, num_samples=4)
    assert len(trees) == 12 and [t.problem_index for t in trees] == [0] * 4 + [1] * 4 + [2] * 4
    for tree in trees:  # scripted = deterministic: every sample equals the solver tree
        assert [t.all_ids for t in tree.threads()] == [t.ids for t in rendered[tree.problem_index]]
    roots = [t.root for t in trees]
    # the prompt is prefilled once per problem; the other samples reuse it
    assert sum(r.num_cached_tokens for r in roots) >= 3 * sum(len(p) for p in prompts)


def test_prompt_longer_than_window_is_a_clear_error(tokenizer, pid):
    rt = Runtime(ScriptedEngine(lambda p, c: 0), pid, RuntimeConfig(max_thread_tokens=4))
    with pytest.raises(ConfigError, match="runtime.max_thread_tokens"):
        rt.run([[2, 5, 6, 7, 8]])


@pytest.mark.parametrize("field,value", [("max_children", 0), ("max_thread_tokens", 1), ("max_total_tokens", 0),
                                         ("timeout_s", 0), ("temperature", -1), ("top_p", 0)])
def test_bad_limits_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"runtime.{field}"):
        RuntimeConfig(**{field: value})
