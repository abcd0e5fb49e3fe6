"""Spawn/join inference for users: `Reasoner`.

    >>> from apr import Reasoner                                        # doctest: +SKIP
    >>> r = Reasoner.from_pretrained("runs/sft/apr_small/final")        # doctest: +SKIP
    >>> out = r.solve([22, 26, 31, 53], 27, max_thread_tokens=1024)     # doctest: +SKIP
    >>> out.answer, out.correct, out.metrics["sequential_tokens"]       # doctest: +SKIP
    ('26+((53-22)/31)', True, 512)
    >>> print(out.tree.render())                                        # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apr.config import ConfigError, fail, from_dict, to_dict
from apr.protocol import ProtocolError, ProtocolIds
from apr.runtime import Finish, Runtime, RuntimeConfig, ThreadTree
from apr.search import problem_prompt
from apr.task import Problem, extract_answer, verify_with_reason


def _load_local(path: str, **options):
    from apr.engine.local import LocalEngine

    return LocalEngine.from_pretrained(path, **options)


def _load_sglang(path: str, **options):
    from apr.engine.sglang import SGLangEngine

    return SGLangEngine.from_pretrained(path, **options)


# engine name -> loader(checkpoint dir, **engine options); the tokenizer always loads locally
_ENGINE_LOADERS = {"local": _load_local, "sglang": _load_sglang}
ENGINES = tuple(_ENGINE_LOADERS)


@dataclass
class ReasoningTree:
    """A finished thread tree with a tokenizer to read it."""

    thread_tree: ThreadTree
    tokenizer: Any
    ids: ProtocolIds | None = None  # the tokenizer's protocol ids (the Reasoner's; derived when not given)

    @property
    def threads(self):
        return self.thread_tree.threads()

    @property
    def root(self):
        """The root thread (`apr.runtime.Thread`)."""
        return self.thread_tree.root

    def text(self, thread=None) -> str:
        """A thread's whole text (prompt, generated, runtime-written), the root by default."""
        t = thread or self.root
        return self.tokenizer.decode(t.all_ids, skip_special_tokens=False)

    def own_text(self, thread=None) -> str:
        """What a thread (the root by default) wrote in its own voice: its generated spans, without the
        messages it addressed to children and without what the runtime wrote in (joined results), one
        span per line. Answers and rewards are read from this, never from `text()`."""
        t = thread or self.root
        spans = self.protocol.own_spans(t.ids, t.mask)
        return "\n".join(self.tokenizer.decode(s, skip_special_tokens=False) for s in spans)

    @property
    def protocol(self) -> ProtocolIds:
        if self.ids is None:
            self.ids = ProtocolIds.from_tokenizer(self.tokenizer)
        return self.ids

    @property
    def ended_cleanly(self) -> bool:
        """The root ended with <eos> (not cut by the window, the budget, a timeout, or malformed)."""
        return self.root.finish_reason == Finish.EOS

    def render(self) -> str:
        """Every thread, depth first, indented by depth, with how it ended and its size."""
        lines = []
        index = {id(t): t.index for t in self.threads}
        for t in self.threads:
            pad = "    " * t.depth
            origin = "" if t.parent is None else f" <- thread {index[id(t.parent)]}"
            why = t.finish_reason + (f": {t.error}" if t.error else "")
            lines.append(f"{pad}=== thread {t.index}{origin} | {why} | {t.num_tokens} tokens, {t.num_generated} generated")
            lines += [pad + line for line in self.text(t).split("\n")]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"threads": [{"index": t.index, "parent": None if t.parent is None else t.parent.index,
                             "depth": t.depth, "finish_reason": t.finish_reason, "error": t.error,
                             "text": self.text(t), "num_tokens": t.num_tokens, "num_generated": t.num_generated}
                            for t in self.threads]}


@dataclass
class SolveResult:
    """The outcome of one Countdown problem: answer, whether it verifies, the tree, its costs."""

    problem: Problem
    answer: str | None
    correct: bool
    reason: str  # why the answer is (in)correct, from the verifier
    tree: ReasoningTree
    metrics: dict

    def to_dict(self) -> dict:
        return {"problem": self.problem.to_dict(), "answer": self.answer, "correct": self.correct,
                "reason": self.reason, "metrics": self.metrics, "tree": self.tree.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class Reasoner:
    """Runs a model that speaks the spawn/join protocol on an engine, through the APR runtime."""

    def __init__(self, engine, tokenizer, runtime: RuntimeConfig | None = None, child_prefix: str = "") -> None:
        try:
            self.protocol = ProtocolIds.from_tokenizer(tokenizer)
        except ProtocolError as e:
            raise ConfigError(f"tokenizer: {e}") from None
        vocab_size = getattr(engine, "vocab_size", None)  # the model the engine serves
        top_id = max(vars(self.protocol).values())
        if vocab_size is not None and top_id >= vocab_size:
            raise ConfigError(f"model: its vocabulary has {vocab_size} ids but the tokenizer's protocol tokens reach "
                              f"id {top_id}; load the tokenizer saved with this model")
        self.engine = engine
        self.tokenizer = tokenizer
        self.runtime = runtime or RuntimeConfig()
        self.child_prefix_ids = self._encode(child_prefix)

    @classmethod
    def from_pretrained(cls, path: str | Path, engine: str = "local", runtime: RuntimeConfig | None = None,
                        **engine_options) -> Reasoner:
        """Load a checkpoint directory (HF model + tokenizer) onto an engine: `local` or `sglang`.

        `sglang` talks to servers that serve the same checkpoint (`urls=[...]`, or `launch=True`);
        the tokenizer is still read from `path`. Engine options: `LocalEngineConfig` /
        `SGLangEngineConfig` fields, e.g. `from_pretrained(d, engine="sglang", urls=["http://h:30000"])`.
        """
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model: {str(path)!r} is not a model directory (no config.json); pass the directory "
                              "of an HF checkpoint written by `python -m apr.cli.sft` (e.g. runs/sft/<name>/final)")
        if not (path / "tokenizer.json").is_file():
            raise ConfigError(f"model: {str(path)!r} has no tokenizer.json; save the project tokenizer with the "
                              "model (tokenizer.save_pretrained(dir)) or copy data/<task>/tokenizer/* into it")
        if engine not in ENGINES:
            fail("engine", engine, ", ".join(ENGINES))
        from transformers import AutoTokenizer

        from apr.model.integrity import check_checkpoint, check_window

        check_checkpoint(path, "model")
        if runtime is not None:
            check_window(path, runtime.max_thread_tokens, "max_thread_tokens (--max-thread-tokens, runtime)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(_ENGINE_LOADERS[engine](str(path), **engine_options), tokenizer, runtime)

    @classmethod
    def from_model(cls, model, tokenizer, runtime: RuntimeConfig | None = None, **engine_options) -> Reasoner:
        """Wrap an in-memory HF model (e.g. during training) with a local engine."""
        from apr.engine.local import LocalEngine, LocalEngineConfig

        cfg = from_dict(LocalEngineConfig, engine_options, "engine")
        return cls(LocalEngine(model, cfg), tokenizer, runtime)

    # ---- generic spawn/join generation -----------------------------------------------------------
    def generate(self, prompts: Sequence[str], num_samples: int = 1, **limits) -> list[ReasoningTree]:
        """Run root prompts (text, without <bos>) through the runtime; one tree per prompt and sample."""
        ids = [[self.protocol.bos] + self._encode(p) for p in prompts]
        return [ReasoningTree(t, self.tokenizer, self.protocol) for t in self._runtime(limits).run(ids, num_samples)]

    # ---- Countdown ------------------------------------------------------------------------------------
    def solve(self, numbers: Sequence[int], target: int, condition: str | None = None, **limits) -> SolveResult:
        """Solve one Countdown problem; `condition` is an optional first prompt line (e.g. 'threads 6')."""
        return self.solve_batch([Problem(list(numbers), target)], condition=condition, **limits)[0]

    def solve_batch(self, problems: Iterable[Problem | tuple | dict], num_samples: int = 1,
                    condition: str | None = None, require_eos: bool = True, **limits) -> list[SolveResult]:
        """Solve many problems at once (their threads share engine batches); prompt-major order.

        The answer is the last answer line the root wrote itself (`ReasoningTree.own_text`); with
        `require_eos` (the default) it counts only if the root then ended with <eos>."""
        probs = [_as_problem(p, i) for i, p in enumerate(problems)]
        prefix = (condition.rstrip("\n") + "\n") if condition else ""
        trees = self.generate([prefix + problem_prompt(p) for p in probs], num_samples, **limits)
        results = []
        for k, tree in enumerate(trees):
            problem = probs[k // num_samples]
            answer = extract_answer(tree.own_text())
            ok, reason = verify_with_reason(problem, answer) if answer is not None else (False, "no answer line")
            if ok and require_eos and not tree.ended_cleanly:
                ok, reason = False, f"the root ended by {tree.root.finish_reason}, not eos"
            results.append(SolveResult(problem, answer, ok, reason, tree, tree.thread_tree.metrics()))
        return results

    # ---- helpers --------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _runtime(self, limits: dict) -> Runtime:
        cfg = from_dict(RuntimeConfig, {**to_dict(self.runtime), **limits}, "runtime") if limits else self.runtime
        return Runtime(self.engine, self.protocol, cfg, self.child_prefix_ids)


def _as_problem(p, i: int) -> Problem:
    if isinstance(p, Problem):
        return p
    if isinstance(p, dict):
        return Problem.from_dict(p)
    if isinstance(p, (tuple, list)) and len(p) == 2:
        return Problem(list(p[0]), p[1])
    raise ConfigError(f"problems[{i}]: got {p!r}; accepted: a Problem, (numbers, target) or "
                      "{'numbers': [...], 'target': n}")
