"""Thread timelines in decode steps: children start at their parent's spawn, the parent resumes after the
slowest child, and the root's end is the tree's sequential tokens."""

import pytest

from apr.engine.scripted import ScriptedEngine
from apr.protocol import ProtocolIds, render_tree
from apr.runtime import Runtime, RuntimeConfig, Span
from apr.search import SearchConfig, solve
from apr.task import CountdownConfig, generate_problems


@pytest.fixture(scope="module")
def pid(tokenizer):
    return ProtocolIds.from_tokenizer(tokenizer)


def run_text(tokenizer, pid, scripts, root):
    """Each thread's whole text given by its prompt text; runs one tree through the runtime."""
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    full = {tuple(enc(p)): enc(whole) for p, whole in scripts.items()}
    (tree,) = Runtime(ScriptedEngine(lambda prompt, ctx: full[prompt][len(ctx)]), pid, RuntimeConfig()).run([enc(root)])
    return tree, lambda s: len(enc(s))


def test_children_start_at_the_spawn_and_the_parent_resumes_after_the_slowest(tokenizer, pid):
    scripts = {
        "<bos>node 0\n": "<bos>node 0\ntry 1+1=2 [2] no\n<spawn>node 1\n<sep>node 2\n</spawn><result>1+1=2<sep></result>"
                         "try 2\n<spawn>node 3\n</spawn><result></result>answer 1\n<eos>",
        "<bos>node 1\n": "<bos>node 1\ntry 1+1=2 [2] goal\n<join>1+1=2</join>",
        "<bos>node 2\n": "<bos>node 2\ntry 1+1=2 [2] no\ntry 1+1=2 [2] no\ntry 1+1=2 [2] no\n<join></join>",
        "<bos>node 3\n": "<bos>node 3\n<join></join>",
    }
    tree, n = run_text(tokenizer, pid, scripts, "<bos>node 0\n")
    root, fast, slow, last = tree.threads()
    spans = tree.root.timeline()
    assert [s.index for s in spans] == [0, 1, 2, 3] and [s.parent for s in spans] == [None, 0, 0, 0]
    first_spawn = n("try 1+1=2 [2] no\n<spawn>node 1\n<sep>node 2\n</spawn>")
    assert root.spawn_offsets() == [first_spawn, first_spawn + n("try 2\n<spawn>node 3\n</spawn>")]
    s_root, s_fast, s_slow, s_last = spans
    # both children of the first spawn start where the root spawned them, and run for what they generated
    assert (s_fast.start_step, s_fast.end_step) == (first_spawn, first_spawn + fast.num_generated)
    assert (s_slow.start_step, s_slow.end_step) == (first_spawn, first_spawn + slow.num_generated)
    assert slow.num_generated > fast.num_generated
    # the root waits for the slower child, then generates up to its second spawn
    resume = first_spawn + slow.num_generated
    second_spawn = resume + n("try 2\n<spawn>node 3\n</spawn>")
    assert s_root.pauses == ((first_spawn, resume), (second_spawn, second_spawn + last.num_generated))
    assert (s_last.start_step, s_last.end_step) == (second_spawn, second_spawn + last.num_generated)
    assert s_root.running == [(0, first_spawn), (resume, second_spawn),
                              (second_spawn + last.num_generated, s_root.end_step)]
    assert s_root.end_step == root.num_generated + slow.num_generated + last.num_generated
    assert s_root.end_step == tree.metrics()["sequential_tokens"]
    assert sum(b - a for a, b in s_root.running) == root.num_generated  # the pauses cover no root token


def old_sequential(thread):
    """The sequential-token count as it was defined before timelines: own tokens plus the slowest child per spawn."""
    return thread.num_generated + sum(max((old_sequential(c) for c in g), default=0) for g in thread.children)


def test_timelines_of_nested_solver_trees(tokenizer, pid):
    problems = generate_problems(CountdownConfig(num_numbers=5), 6, seed=3)
    traces = [solve(p, SearchConfig("apr", promising_prob=1.0, max_depth=2), seed=i).trace
              for i, p in enumerate(problems)]
    rendered = [render_tree(t, tokenizer) for t in traces]
    full = {tuple(r.ids[:r.mask.index(1)]): r.ids for threads in rendered for r in threads}
    rt = Runtime(ScriptedEngine(lambda prompt, ctx: full[prompt][len(ctx)]), pid,
                 RuntimeConfig(max_depth=2, max_thread_tokens=100_000))
    trees = rt.run([r[0].ids[:r[0].mask.index(1)] for r in rendered])
    assert any(t.depth == 2 for tree in trees for t in tree.threads())  # grandchildren ran
    for tree in trees:
        spans = {s.index: s for s in tree.root.timeline()}
        assert set(spans) == {t.index for t in tree.threads()}
        for thread in tree.threads():
            s = spans[thread.index]
            assert s.end_step - s.start_step == old_sequential(thread)
            assert sum(b - a for a, b in s.running) == thread.num_generated
            for group, (spawn, resume) in zip(thread.children, s.pauses, strict=True):
                assert all(spans[c.index].start_step == spawn for c in group)
                assert resume == max(spans[c.index].end_step for c in group)
        assert spans[0].start_step == 0 and spans[0].end_step == tree.metrics()["sequential_tokens"]


def test_a_parent_cut_while_waiting_spawned_after_its_last_token():
    from apr.runtime import Thread

    parent = Thread(0, [1], ids=[5, 6, 7], mask=[1, 1, 1])
    child = Thread(1, [1], parent=parent, depth=1, ids=[8, 9], mask=[1, 1])
    parent.children.append([child])  # no results block: the parent never resumed
    assert parent.spawn_offsets() == [3]
    assert parent.timeline() == [Span(0, None, 0, 0, 5, ((3, 5),)), Span(1, 0, 1, 3, 5)]
