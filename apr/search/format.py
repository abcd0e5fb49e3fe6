"""The compact Countdown trace format shared by the SoS+ and APR solvers.

Paper-like (node ids, current state, explored operation, goal reached / no solution) but lean,
since every token costs context. One expansion of node `0,0` reads:

    node 0,0 27:[22,26,22] [53-31=22]      current state: id, target:[numbers], operations so far
    try 26-22=4 [22,4] gen 0,0,0           explored operation, resulting numbers, new node id
    try 22*26=572 [572,22] gen 0,0,1
    try 22+4=26 [26] no                    one number left, not the target
    try 22+5=27 [27] goal                  goal reached: the thread's answer follows
    dive 0,0                               SoS+: depth-first sub search of a promising node
    fail 0,0                               the search started at 0,0 found nothing
    answer (53-31)+5                       the root's final answer (an expression `verify` accepts)

Conditioning lines may open the root prompt: `threads 6` (APR: child threads used) and
`budget 1024` (SoS+: token-budget bin).
"""

from __future__ import annotations

from collections.abc import Sequence

from apr.task.countdown import Op

# Every word the format writes; the tokenizer gives each a token.
KEYWORDS = ("node", "try", "gen", "no", "goal", "dive", "fail", "answer", "threads", "budget")
PUNCTUATION = ("[", "]", ",", ":", "=", "+", "-", "*", "/", "(", ")")

NodeId = tuple[int, ...]


def node_id(nid: NodeId) -> str:
    return ",".join(str(i) for i in nid)


def numbers(nums: Sequence[int]) -> str:
    return "[" + ",".join(str(n) for n in nums) + "]"


def node_line(nid: NodeId, target: int, nums: Sequence[int], ops: Sequence[Op]) -> str:
    return f"node {node_id(nid)} {target}:{numbers(nums)} [{','.join(str(o) for o in ops)}]\n"


def try_line(op: Op, nums: Sequence[int], outcome: str) -> str:
    """`outcome` is `gen <id>`, `no` or `goal`."""
    return f"try {op} {numbers(nums)} {outcome}\n"


def dive_line(nid: NodeId) -> str:
    return f"dive {node_id(nid)}\n"


def fail_line(nid: NodeId) -> str:
    return f"fail {node_id(nid)}\n"


def path_message(ops: Sequence[Op]) -> str:
    """What a child joins back on success: the operations from the root to the goal."""
    return ",".join(str(o) for o in ops)


def parse_path_message(message: str) -> list[Op] | None:
    """Inverse of `path_message`; None if `message` is empty or not a path."""
    ops = []
    for part in message.split(","):
        try:
            lhs, result = part.split("=")
            sym = next(c for c in "+-*/" if c in lhs[1:])
            a, b = lhs.split(sym, 1)
            ops.append(Op(int(a), sym, int(b), int(result)))
        except (ValueError, StopIteration):
            return None
    return ops or None


def threads_condition(num_child_threads: int) -> str:
    return f"threads {num_child_threads}\n"


def budget_condition(budget_tokens: int) -> str:
    return f"budget {budget_tokens}\n"
