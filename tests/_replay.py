"""A model-free engine for tests: the APR solver's traces replayed token by token."""

from apr.protocol import ProtocolIds, render_tree
from apr.search import SearchConfig, solve


def solver_replay(problems, tokenizer):
    """(the APR solver's results for `problems`, a `ScriptedEngine` script replaying their threads); a prompt
    the solver never wrote (e.g. one opened by a condition line) ends at once with <eos>."""
    results = [solve(p, SearchConfig("apr", promising_prob=0.9), seed=i) for i, p in enumerate(problems)]
    full = {}
    for r in results:
        for t in render_tree(r.trace, tokenizer):
            full[tuple(t.ids[:t.mask.index(1)])] = t.ids
    eos = ProtocolIds.from_tokenizer(tokenizer).eos

    def script(prompt, ctx):
        return full[prompt][len(ctx)] if prompt in full else eos

    return results, script
