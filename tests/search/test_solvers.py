import random

import pytest

from apr.config import ConfigError
from apr.search import SearchConfig, problem_prompt, solve
from apr.search import format as fmt
from apr.search.trace import JOIN, RESULTS, SPAWN
from apr.task import CountdownConfig, Problem, apply_ops, generate_problems, verify

SOSP = SearchConfig("sosp", promising_prob=0.5)
APR = SearchConfig("apr", promising_prob=0.9)


def problems(n, num_numbers=4, generator="target_first", seed=0):
    return generate_problems(CountdownConfig(num_numbers=num_numbers, generator=generator), n, seed=seed)


@pytest.mark.parametrize("num_numbers,generator", [(3, "target_first"), (4, "target_first"), (4, "construct")])
@pytest.mark.parametrize("cfg", [SOSP, APR], ids=["sosp", "apr"])
def test_every_reported_solution_verifies(cfg, num_numbers, generator):
    n_solved = 0
    for i, p in enumerate(problems(60, num_numbers, generator)):
        r = solve(p, cfg, seed=i)
        assert r.solved == (r.answer is not None)
        if r.solved:
            n_solved += 1
            assert verify(p, r.answer), (p, r.answer)
            assert apply_ops(p.numbers, r.ops) == [p.target]
            assert r.trace.text.endswith(f"answer {r.answer}\n")
        else:
            assert "answer" not in r.trace.text
            assert r.trace.text.endswith("fail 0\n")
    assert n_solved > 20  # the solvers are not trivially failing


def test_same_pruned_tree_same_success():
    # SoS+ and APR expand the same K-pruned tree (same K and heuristic per seed): same solved set.
    for i, p in enumerate(problems(40)):
        assert solve(p, SOSP, seed=i).solved == solve(p, APR, seed=i).solved


def test_apr_tree_structure():
    num_spawns = 0
    for i, p in enumerate(problems(40)):
        r = solve(p, APR, seed=i)
        r.trace.validate()
        root = r.trace
        assert root.prompt == problem_prompt(p)
        for spawn_index, (_spawn, group) in enumerate(zip(root.spawns, root.children)):
            num_spawns += 1
            assert len(group) >= 2
            results = [s for s in root.segments if s.kind == RESULTS][spawn_index]
            assert list(results.messages) == [c.join_message for c in group]
            for child in group:
                assert child.segments[-1].kind == JOIN
                assert not child.children  # max_depth=1: children don't spawn
                msg = child.join_message
                if msg:
                    ops = fmt.parse_path_message(msg)
                    assert apply_ops(p.numbers, ops) == [p.target]
                    assert "goal" in child.text
                else:
                    assert child.text.rstrip().split("\n")[-1].startswith("fail ")
        # segment order: every spawn is followed directly by its results
        kinds = [s.kind for s in root.segments]
        for k, kind in enumerate(kinds):
            if kind == SPAWN:
                assert kinds[k + 1] == RESULTS
    assert num_spawns > 20


def test_sosp_never_spawns_and_dives():
    dives = 0
    for i, p in enumerate(problems(30)):
        r = solve(p, SOSP, seed=i)
        assert r.trace.num_threads == 1 and not r.trace.spawns
        dives += r.trace.text.count("dive ")
    assert dives > 0
    r = solve(problems(1)[0], SearchConfig("sosp", promising_prob=0.0), seed=0)
    assert "dive" not in r.trace.text


def test_promising_prob_zero_gives_no_children():
    for i, p in enumerate(problems(10)):
        assert solve(p, SearchConfig("apr", promising_prob=0.0), seed=i).trace.num_threads == 1


def test_nested_spawns_up_to_max_depth():
    cfg = SearchConfig("apr", promising_prob=1.0, max_depth=2)
    depths = set()
    for i, p in enumerate(problems(10, num_numbers=5)):
        root = solve(p, cfg, seed=i).trace

        def walk(t, d):
            depths.add(d)
            for g in t.children:
                for c in g:
                    walk(c, d + 1)

        walk(root, 0)
    assert max(depths) == 2


def test_deterministic_per_seed_and_varies_across_seeds():
    p = Problem([22, 26, 31, 53], 27)
    for cfg in (SOSP, APR):
        a, b = solve(p, cfg, seed=3), solve(p, cfg, seed=3)
        assert a.trace.to_dict() == b.trace.to_dict()
        texts = {solve(p, cfg, seed=s).trace.to_dict().__repr__() for s in range(8)}
        assert len(texts) > 1


def test_beam_and_heuristic_drawn_per_trace():
    cfg = SearchConfig("sosp", beam_size=(1, 5), heuristics=("sum", "mult"))
    draws = {(r.beam_size, r.heuristic) for r in (solve(p, cfg, seed=i) for i, p in enumerate(problems(60)))}
    assert {b for b, _ in draws} == {1, 2, 3, 4, 5}
    assert {h for _, h in draws} == {"sum", "mult"}


def test_threads_conditioning_prefix():
    cfg = SearchConfig("apr", promising_prob=0.9, condition=True)
    for i, p in enumerate(problems(10)):
        r = solve(p, cfg, seed=i)
        first = r.trace.prompt.split("\n")[0]
        assert first == f"threads {r.trace.num_child_threads}"


def test_trace_lines_are_in_the_format():
    allowed = set(fmt.KEYWORDS)
    rng = random.Random(0)
    for i, p in enumerate(rng.sample(problems(30), 10)):
        for t in solve(p, APR, seed=i).trace.threads():
            for seg in t.segments:
                for line in seg.text.splitlines():
                    assert line.split(" ")[0] in allowed, line


@pytest.mark.parametrize("field,value", [("heuristics", ("sum", "nope")), ("beam_size", (0, 3)),
                                         ("beam_size", (4, 2)), ("promising_prob", 1.5),
                                         ("algorithm", "bfs"), ("max_depth", -1), ("order", "sorted")])
def test_bad_search_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"search.{field}"):
        SearchConfig(**{field: value})


def _gen_ids(text: str) -> list[str]:
    return [line.rsplit(" ", 1)[-1] for line in text.splitlines() if line.startswith("try ") and " gen " in line]


@pytest.mark.parametrize("algorithm", ["sosp", "apr"])
def test_ranked_order_is_the_same_search_with_lines_in_the_order_they_are_explored(algorithm):
    """order=ranked writes an expansion's lines best first: APR's spawn list and SoS+'s dives then follow
    the listing (gen 0,0, 0,1, ...); whether and how a problem is solved does not change."""
    shuffled = SearchConfig(algorithm, promising_prob=0.9 if algorithm == "apr" else 0.5)
    ranked = SearchConfig(algorithm, promising_prob=shuffled.promising_prob, order="ranked")
    num_spawns = num_dives = num_out_of_order = 0
    for i, p in enumerate(problems(40, num_numbers=3) + problems(20)):
        a, b = solve(p, shuffled, seed=i), solve(p, ranked, seed=i)
        assert a.solved == b.solved and (a.answer is None) == (b.answer is None)
        if b.solved:
            assert verify(p, b.answer)
        before = [b.trace.segments[k - 1].text for k, seg in enumerate(b.trace.segments) if seg.kind == SPAWN]
        for text, group in zip(before, b.trace.children):
            num_spawns += 1
            listed = _gen_ids(text)[-len(group):]  # the expansion that spawned: its lines end the text
            assert [c.prompt.split(" ")[1] for c in group] == listed == sorted(listed)
        dives = [line.split(" ")[1] for line in b.trace.text.splitlines() if line.startswith("dive ")]
        num_dives += len(dives)
        for group in a.trace.children:
            ids = [c.prompt.split(" ")[1] for c in group]
            num_out_of_order += ids != sorted(ids)
    assert num_spawns + num_dives > 10
    assert algorithm == "sosp" or num_out_of_order > 5  # shuffled: the spawn list is in another order
