"""Rollouts for RL: a worker (an engine + the APR runtime) that turns problems into scored thread trees.

The same class runs in-process (`dist=none`) and inside a Ray actor (`apr.cluster`). What it returns
is token-exact: each `Rollout` carries the runtime's `ThreadTree` (ids, generated-mask, sampled
log-probs per thread), the reward and the policy version the engine held; with `dist.ref_placement=rollout`
the worker also holds the frozen reference and returns its log-probs of every thread.

    >>> # worker = RolloutWorker("runs/sft/n3_tiny_apr/final", RolloutConfig(), AlgoConfig())
    >>> # rollouts = worker.rollout(problems, num_samples=5, seed=17, first_index=0)
    >>> # rollouts[0].reward, rollouts[0].tree.metrics()["num_child_threads"]
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from apr.engine.config import engine_config, engine_name, engine_options, with_window
from apr.rl.algos import CREDIT, register_in
from apr.rl.config import AlgoConfig, RolloutConfig
from apr.rl.sequences import sequences_from_trees
from apr.rl.weights import load_buckets
from apr.runtime import Finish, ThreadTree
from apr.scoring import EvalRecord, score
from apr.search import child_outcome
from apr.task import Problem, reward

# reward(problem, text, algo config) -> float, chosen by `algo.reward`. `text` is what the root wrote
# itself (`ReasoningTree.own_text`: no joined results, no spawn messages); a root that did not end
# with <eos> scores 0 without calling it unless `algo.require_eos` is false.
REWARDS: dict = {}


def register_reward(name: str):
    return register_in(REWARDS, name)


@register_reward("countdown")
def countdown_reward(problem: Problem, text: str, algo: AlgoConfig) -> float:
    """1 if the root's last answer line solves the problem, `algo.format_bonus` if it is well formed."""
    return reward(problem, text, algo.format_bonus)


def resolve_reward(name: str):
    """A name in REWARDS, or "package.module:function" for a reward of your own (importable by every worker)."""
    from apr.config import ConfigError

    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"algo.reward: cannot import {name!r} ({e})") from None
    raise ConfigError(f"algo.reward: got {name!r}; accepted: {', '.join(REWARDS)} or 'package.module:function'")


@dataclass
class Rollout:
    """One sampled tree of one problem, scored."""

    problem_index: int  # position of the problem in the step's batch
    sample_index: int  # 0..G-1
    tree: ThreadTree
    reward: float
    correct: bool
    answer: str | None
    policy_version: int
    thread_outcomes: list[int] | None = None  # per thread (root 0), for credit=child_outcome
    # per thread (tree.threads() order): the reference's (T_thread,) log-prob of each of its tokens
    # (dist.ref_placement=rollout); None: scored by the learner-side reference, or no KL
    ref_logprobs: list | None = None

    @property
    def metrics(self) -> dict:
        return self.tree.metrics()


def rollout_metrics(rollouts: list[Rollout], prefix: str) -> dict:
    """`<prefix>/<name>`: the standard metrics (`apr.scoring.METRICS`), the mean reward, thread lengths, and
    the share of rollouts whose root was cut by the thread window."""
    n = max(len(rollouts), 1)
    records = [EvalRecord.from_tree(r.problem_index, r.sample_index, r.answer, r.correct, r.tree) for r in rollouts]
    lengths = [t.num_tokens for r in rollouts for t in r.tree.threads()]
    return {f"{prefix}/reward": sum(r.reward for r in rollouts) / n,
            **{f"{prefix}/{k}": v for k, v in score(records).items()},
            f"{prefix}/thread_len_mean": sum(lengths) / max(len(lengths), 1),
            f"{prefix}/thread_len_max": max(lengths, default=0),
            f"{prefix}/root_window_share": sum(r.tree.root.finish_reason == Finish.WINDOW for r in rollouts) / n}


class ProblemStream:
    """Problems in a seeded order, reshuffled every epoch; position = problems consumed so far.

    The order is a pure function of (seed, position), so a resumed run sees the same batches.

    >>> s = ProblemStream([Problem([1, 2], 3), Problem([2, 2], 4), Problem([3, 1], 2)], seed=0)
    >>> first = s.batch(0, 2); again = s.batch(0, 2)
    >>> first == again, len(s.batch(2, 4))
    (True, 4)
    """

    def __init__(self, problems: list[Problem], seed: int) -> None:
        self.problems = problems
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.problems)))
            random.Random(f"{self.seed}|{epoch}").shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time is all a step needs (two at a boundary)
        return self._orders[epoch]

    def batch(self, position: int, size: int) -> list[Problem]:
        n = len(self.problems)
        out = []
        for k in range(position, position + size):
            epoch, i = divmod(k, n)
            out.append(self.problems[self._order(epoch)[i]])
        return out


def worker_engine_config(engine, index: int, num_workers: int):
    """Rollout worker `index`'s share of the engine: with `sglang`, its own servers (urls[index::n]),
    because a worker also pushes the new weights to the servers it drives.

    >>> from apr.engine.config import engine_config
    >>> e = engine_config({"name": "sglang", "urls": ["http://a:1", "http://b:1", "http://c:1"]})
    >>> worker_engine_config(e, 0, 2).urls, worker_engine_config(e, 1, 2).urls
    (['http://a:1', 'http://c:1'], ['http://b:1'])
    """
    from dataclasses import replace

    if engine_name(engine) != "sglang" or num_workers == 1:
        return engine
    return replace(engine, urls=list(engine.urls)[index::num_workers])


def worker_device(engine) -> str:
    """Where a rollout worker's reference runs (`dist.ref_placement=rollout`): on its local engine's device;
    CPU beside a server-backed engine (SGLang), whose model lives in the server.

    >>> from apr.engine.config import engine_config
    >>> worker_device(engine_config({"device": "cpu"})), worker_device(engine_config({"name": "sglang", "urls": ["http://a:1"]}))
    ('cpu', 'cpu')
    """
    return str(getattr(engine, "device", None) or "cpu")


def ref_logprobs_of(rollouts: list[Rollout], shape: tuple[int, int]):
    """(N, T) reference log-probs of a step's batch (`shape`: its ids'), from the per-thread ones the
    rollout workers returned; row order is `sequences_from_trees`' (rollout-major, then thread)."""
    import torch

    if any(r.ref_logprobs is None for r in rollouts):
        raise ValueError("dist.ref_placement=rollout, but some rollouts carry no reference log-probs (generated "
                         "with dist.ref_placement=learner before a resume?); accepted: the placement they had")
    rows = [lp for r in rollouts for lp in r.ref_logprobs]
    if len(rows) != shape[0]:
        raise ValueError(f"the rollouts carry reference log-probs of {len(rows)} threads; the batch has {shape[0]}")
    out = torch.zeros(shape)  # (N, T)
    for i, lp in enumerate(rows):
        out[i, :len(lp)] = lp
    return out


def rollout_seed(seed: int, step: int, first_index: int) -> int:
    """The runtime seed of one shard: fixed by the run seed, the step and the shard's first problem."""
    import hashlib

    key = f"{seed}|{step}|{first_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") >> 1


class RolloutWorker:
    """An engine loaded from `init`, the runtime, and the Countdown reward; with `ref` (the keyword
    arguments of `apr.rl.learner.RefPolicy`, `ref_kwargs`) also the frozen reference, which scores the
    threads of training rollouts (`rollout(..., with_ref=True)`) right after they are generated."""

    def __init__(self, init: str, rollout: RolloutConfig, algo: AlgoConfig, condition: str | None = None,
                 num_threads: int = 0, engine=None, reasoner=None, ref: dict | None = None) -> None:
        import torch

        from apr.api import Reasoner

        if num_threads:
            torch.set_num_threads(num_threads)
        self.cfg = rollout
        self.algo = algo
        self.condition = condition
        self.reward_fn = resolve_reward(algo.reward)
        if reasoner is None:
            # engine: a LocalEngineConfig | SGLangEngineConfig (RLConfig.engine); None: the local defaults
            engine = with_window(engine_config(engine or {}), rollout.runtime.max_thread_tokens)
            reasoner = Reasoner.from_pretrained(init, engine=engine_name(engine), runtime=rollout.runtime,
                                                **engine_options(engine))
        self.reasoner = reasoner
        check_logprobs = getattr(self.reasoner.engine, "check_logprobs", None)
        if check_logprobs is not None:  # a server's log-probs must be those the learner recomputes
            check_logprobs(rollout.runtime.temperature)
        self.policy_version = 0
        self.ref = None
        if ref is not None:
            from apr.rl.learner import RefPolicy

            self.ref = RefPolicy(**ref)

    # ---- weights ----------------------------------------------------------------------------------
    def set_weights(self, buckets: list[dict], version: int) -> int:
        """Load the learner's weights (a list of name -> tensor buckets); returns the version now held."""
        engine = self.reasoner.engine
        if hasattr(engine, "load_weights"):  # e.g. a server-backed engine
            engine.load_weights(buckets, version)
        else:
            load_buckets(engine.model, buckets)
        self.policy_version = version
        return version

    # ---- rollouts ---------------------------------------------------------------------------------
    def rollout(self, problems: list[Problem], num_samples: int, seed: int, first_index: int = 0,
                temperature: float | None = None, with_ref: bool = False) -> list[Rollout]:
        """`num_samples` trees per problem (prompt-major), scored with the task reward.

        `first_index` numbers the problems within the step's batch; `with_ref`: the worker's
        reference scores every thread too (`Rollout.ref_logprobs`)."""
        limits = {"seed": seed} if temperature is None else {"seed": seed, "temperature": temperature}
        results = self.reasoner.solve_batch(problems, num_samples=num_samples, condition=self.condition,
                                            require_eos=self.algo.require_eos, **limits)
        out = []
        for k, r in enumerate(results):
            i, s = divmod(k, num_samples)
            counts = r.tree.ended_cleanly or not self.algo.require_eos
            score = self.reward_fn(problems[i], r.tree.own_text(), self.algo) if counts else 0.0
            outcomes = self._thread_outcomes(problems[i], r) if CREDIT[self.algo.credit].needs_outcomes else None
            out.append(Rollout(first_index + i, s, r.tree.thread_tree, score, r.correct, r.answer, self.policy_version,
                               outcomes))
        if with_ref:
            self._score_ref(out)
        return out

    def _score_ref(self, rollouts: list[Rollout]) -> None:
        """Fill `Rollout.ref_logprobs`: the reference's log-probs of every thread, in one batched pass."""
        if self.ref is None:
            raise RuntimeError("with_ref=True, but this rollout worker holds no reference (dist.ref_placement)")
        trees = [r.tree for r in rollouts]
        if not trees:
            return
        # the very rows the learner's batch will have (ids only matter here: the reward and credit are unused)
        batch = sequences_from_trees(trees, [0.0] * len(trees), list(range(len(trees))), advantage="gae")
        logp = self.ref.logprobs(batch)  # (N, T)
        k = 0
        for r in rollouts:
            r.ref_logprobs = []
            for t in r.tree.threads():
                r.ref_logprobs.append(logp[k, :len(t.all_ids)].clone())  # (T_thread,)
                k += 1

    def _thread_outcomes(self, problem: Problem, result) -> list[int]:
        """Each child's join checked against its own start state (`apr.search.child_outcome`); root 0."""
        decode = lambda ids: self.reasoner.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
        answer = result.answer if result.correct else None
        out = []
        for t in result.tree.threads:
            if t.parent is None:
                out.append(0)
                continue
            joined = decode(t.join_message or []) if t.finish_reason == Finish.JOIN else None
            out.append(child_outcome(problem, decode(t.prompt_ids[1:]), joined, answer))
        return out

    def close(self) -> None:
        """Release the engine: its KV memory; for SGLang, the weight-sync group on the servers and any
        server it launched."""
        close = getattr(self.reasoner.engine, "close", None)
        if close is not None:
            close()


