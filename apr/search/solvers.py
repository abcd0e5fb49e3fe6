"""SoS+ and APR symbolic solvers (Pan et al. 2025, Algorithms 1 and 2) writing thread-tree traces.

Both run the same heuristic beam search: pop the K best open nodes, expand each (every pair of
numbers x every `combine` move), keep the K best successors, write a line per successor (in random
order, as Pan et al.'s traces, or with `order=ranked` best first: the order they are dived into or
spawned, which a model can then copy instead of ranking the lines again). An expansion is
*promising* with probability p:
- SoS+ then explores each successor depth first, in line, in the same thread (`dive`);
- APR instead spawns one child thread per successor (when there are at least two); each child
  runs the same search with beam Ks and joins back only its successful path (or nothing).

    >>> from apr.task import Problem
    >>> r = solve(Problem([22, 26, 31, 53], 27), SearchConfig("apr", promising_prob=0.9), seed=0)
    >>> r.solved, r.answer is not None
    (True, True)
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from dataclasses import dataclass, field

from apr.search import format as fmt
from apr.search.config import SearchConfig
from apr.search.heuristics import HEURISTICS, Heuristic
from apr.search.trace import Segment, ThreadTrace
from apr.task.countdown import Op, Problem, combine, format_answer, ops_to_expression


@dataclass(order=True)
class _Node:
    h: float
    seq: int  # tie-break in creation order: deterministic heaps and sorts
    nums: tuple[int, ...] = field(compare=False)
    ops: tuple[Op, ...] = field(compare=False)
    nid: tuple[int, ...] = field(compare=False, default=(0,))


@dataclass
class SearchResult:
    """A solver run: the trace, whether it reached the target, and its answer expression."""

    trace: ThreadTrace
    solved: bool
    ops: list[Op] | None
    answer: str | None
    beam_size: int
    sub_beam_size: int
    heuristic: str


class _Searcher:
    """State shared by every thread of one trace: target, heuristic, RNG, node counter."""

    def __init__(self, problem: Problem, heuristic: Heuristic, rng: random.Random, p: float,
                 order: str = "shuffled") -> None:
        self.order = order
        self.target = problem.target
        self.heuristic = heuristic
        self.rng = rng
        self.p = p
        self.counter = itertools.count()

    def node(self, nums: tuple[int, ...], ops: tuple[Op, ...], nid: tuple[int, ...]) -> _Node:
        return _Node(self.heuristic(nums, self.target), next(self.counter), nums, ops, nid)

    def expand(self, node: _Node, beam: int, out: list[str]) -> tuple[_Node | None, list[_Node]]:
        """Write the successor lines of `node`; return (goal node or None, open successors)."""
        succ = []
        for i, j in itertools.combinations(range(len(node.nums)), 2):
            rest = tuple(node.nums[k] for k in range(len(node.nums)) if k not in (i, j))
            for op in combine(node.nums[i], node.nums[j]):
                succ.append(self.node(rest + (op.result,), node.ops + (op,), ()))
        succ.sort()
        succ = succ[:beam]
        if self.order == "shuffled":  # node ids in random order; the search still explores best first
            self.rng.shuffle(succ)
        kept: list[_Node] = []
        for s in succ:
            if len(s.nums) == 1:
                goal = s.nums[0] == self.target
                out.append(fmt.try_line(s.ops[-1], s.nums, "goal" if goal else "no"))
                if goal:
                    return s, kept
            else:
                s.nid = node.nid + (len(kept),)
                out.append(fmt.try_line(s.ops[-1], s.nums, "gen " + fmt.node_id(s.nid)))
                kept.append(s)
        return None, sorted(kept)

    def promising(self) -> bool:
        return self.rng.random() < self.p

    def line(self, node: _Node) -> str:
        return fmt.node_line(node.nid, self.target, node.nums, node.ops)


def _sosp(s: _Searcher, start: _Node, beam: int, out: list[str], first_in_prompt: bool) -> _Node | None:
    """Algorithm 1 (SoS+): beam search, diving depth first into promising expansions."""
    open_set = [start]
    first = True
    while open_set:
        batch = [heapq.heappop(open_set) for _ in range(min(beam, len(open_set)))]
        for node in batch:
            if not (first and first_in_prompt):
                out.append(s.line(node))
            first = False
            goal, kept = s.expand(node, beam, out)
            if goal is not None:
                return goal
            if s.promising():
                for child in kept:
                    out.append(fmt.dive_line(child.nid))
                    goal = _sosp(s, child, beam, out, first_in_prompt=False)
                    if goal is not None:
                        return goal
            else:
                for child in kept:
                    heapq.heappush(open_set, child)
    out.append(fmt.fail_line(start.nid))
    return None


def _apr(s: _Searcher, start: _Node, beams: tuple[int, int], level: int, max_depth: int) -> tuple[ThreadTrace, _Node | None]:
    """Algorithm 2 (APR): beam search whose promising expansions spawn one child per successor."""
    beam = beams[0] if level == 0 else beams[1]
    thread = ThreadTrace(s.line(start))
    out: list[str] = []

    def flush() -> None:
        if out:
            thread.segments.append(Segment.text_("".join(out)))
            out.clear()

    open_set = [start]
    first = True
    goal: _Node | None = None
    while open_set and goal is None:
        batch = [heapq.heappop(open_set) for _ in range(min(beam, len(open_set)))]
        for node in batch:
            if not first:
                out.append(s.line(node))
            first = False
            goal, kept = s.expand(node, beam, out)
            if goal is not None:
                break
            if level < max_depth and len(kept) > 1 and s.promising():
                flush()
                children = [_apr(s, c, beams, level + 1, max_depth) for c in kept]
                thread.segments.append(Segment.spawn_([c.prompt for c, _ in children]))
                thread.children.append([c for c, _ in children])
                results = [fmt.path_message(g.ops) if g is not None else "" for _, g in children]
                thread.segments.append(Segment.results_(results))
                goal = next((g for _, g in children if g is not None), None)
                if goal is not None:
                    break
            else:
                for child in kept:
                    heapq.heappush(open_set, child)
    if goal is None:
        out.append(fmt.fail_line(start.nid))
    flush()
    if level > 0:  # a child returns only its successful path, or nothing
        thread.segments.append(Segment.join_(fmt.path_message(goal.ops) if goal is not None else ""))
    return thread, goal


def trace_seed(seed: int, problem: Problem) -> int:
    """A per-problem seed: traces don't depend on worker count or problem order."""
    digest = hashlib.sha256(f"{seed}|{problem.key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def solve(problem: Problem, cfg: SearchConfig, seed: int = 0) -> SearchResult:
    """Run the configured solver on `problem`; the root ends with `answer <expr>` when solved."""
    rng = random.Random(trace_seed(seed, problem))
    beam = rng.randint(*cfg.beam_size)
    sub_beam = rng.randint(*cfg.sub_beam_size)
    hname = rng.choice(list(cfg.heuristics))
    s = _Searcher(problem, HEURISTICS[hname], rng, cfg.promising_prob, cfg.order)
    start = s.node(tuple(problem.numbers), (), (0,))
    if cfg.algorithm == "sosp":
        out: list[str] = []
        goal = _sosp(s, start, beam, out, first_in_prompt=True)
        root = ThreadTrace(s.line(start), [Segment.text_("".join(out))])
    else:
        root, goal = _apr(s, start, (beam, sub_beam), 0, cfg.max_depth)
    ops = list(goal.ops) if goal is not None else None
    answer = ops_to_expression(problem.numbers, ops) if ops else None
    if answer is not None:
        root.append_text(format_answer(answer) + "\n")
    if cfg.condition and cfg.algorithm == "apr":
        root = with_prompt_prefix(root, fmt.threads_condition(root.num_child_threads))
    return SearchResult(root, goal is not None, ops, answer, beam, sub_beam, hname)


def with_prompt_prefix(root: ThreadTrace, prefix: str) -> ThreadTrace:
    """The same tree with a conditioning line before the root prompt."""
    return ThreadTrace(prefix + root.prompt, list(root.segments), root.children)


def problem_prompt(problem: Problem) -> str:
    """The root prompt of a problem (what a model is given to solve it)."""
    return fmt.node_line((0,), problem.target, problem.numbers, ())
