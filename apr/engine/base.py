"""The engine interface: token ids in, token ids out (no torch import here).

Every backend (`local`, `sglang`) takes `Request`s and hands back `Completion`s; the APR
runtime drives it with `submit` / `step` and never sees tensors, text or the KV cache.

    >>> params = SamplingParams(temperature=0.0, max_new_tokens=8, stop_token_ids=(3,))
    >>> req = Request("root", prompt_ids=[2, 17, 42], params=params, keep_cache=True)
    >>> req.params.is_greedy
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from apr.config import ConfigError, check


class FinishReason:
    """Why a request ended (plain strings, as in SGLang's `finish_reason.type`)."""

    STOP = "stop"  # sampled one of `stop_token_ids` (the stop id is the last output token)
    LENGTH = "length"  # `max_new_tokens` reached, or the sequence hit the engine's `max_seq_len`
    ABORT = "abort"  # `Engine.abort` was called


@dataclass
class SamplingParams:
    """How to pick tokens for one request; every field is validated on construction.

    Filters apply in HF order: temperature, then top-k, then top-p. `seed` makes a request
    reproducible whatever else shares the batch; with `n > 1`, sample `i` uses seed `seed + i`.
    The `local` engine always keeps that promise (its k-th token of seed s is the inverse CDF at
    `apr.engine.sampler.uniforms(seed_key(s), k)`, a counter-based draw); `sglang` only with `engine.deterministic=true`
    (servers started with `--enable-deterministic-inference`, which alone apply `sampling_seed`:
    other servers ignore it and sampling is not reproducible; the engine warns once).

    >>> SamplingParams(temperature=1.0, top_p=0.9, seed=7).seed
    7
    """

    temperature: float = 1.0  # 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    top_k: int = -1  # -1 or 0 = no top-k
    max_new_tokens: int = 256  # counts only this request's generated tokens (continuations too)
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None  # None: drawn from the engine's own generator

    def __post_init__(self) -> None:
        t = self.temperature
        check(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0,
              "sampling.temperature", t, "a finite number >= 0 (0 = greedy)")
        p = self.top_p
        check(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p <= 1,
              "sampling.top_p", p, "a number in (0, 1]")
        k = self.top_k
        check(isinstance(k, int) and not isinstance(k, bool) and k >= -1,
              "sampling.top_k", k, "a positive integer, or -1 / 0 for no top-k")
        m = self.max_new_tokens
        check(isinstance(m, int) and not isinstance(m, bool) and m >= 1,
              "sampling.max_new_tokens", m, "a positive integer")
        stops = self.stop_token_ids
        check(isinstance(stops, (tuple, list)) and all(isinstance(s, int) and not isinstance(s, bool)
                                                       and s >= 0 for s in stops),
              "sampling.stop_token_ids", stops, "a tuple of non-negative token ids")
        self.stop_token_ids = tuple(stops)
        s = self.seed
        check(s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 0),
              "sampling.seed", s, "None or a non-negative integer")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_top_k_or_p(self) -> bool:
        return self.top_k > 0 or self.top_p < 1


@dataclass
class Request:
    """One generation request: a new sequence, or the continuation of a suspended one.

    A new sequence prefills `prompt_ids`. With `resume_id`, the request continues the sequence
    left by the finished request `resume_id` (which had `keep_cache=True`): its KV cache is
    reused and only `prompt_ids` (the appended ids, possibly none) are prefilled, after the last
    token that request sampled. With `n > 1` the prompt is prefilled once and completions come
    back as `f"{request_id}/{i}"`.

    >>> Request("child-0", [5, 6, 7], SamplingParams(max_new_tokens=4), n=2).n
    2
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    resume_id: str | None = None
    keep_cache: bool = False  # keep this sequence's KV after it finishes, for a later `resume_id`
    n: int = 1

    def __post_init__(self) -> None:
        check(isinstance(self.request_id, str) and self.request_id != "", "request.request_id",
              self.request_id, "a non-empty string")
        ids = self.prompt_ids
        check(isinstance(ids, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool)
                                                     and i >= 0 for i in ids),
              "request.prompt_ids", ids, "a list of non-negative token ids")
        self.prompt_ids = list(ids)
        check(self.resume_id is not None or len(self.prompt_ids) > 0, "request.prompt_ids", ids,
              "a non-empty list for a new sequence (only a continuation may append nothing)")
        check(isinstance(self.params, SamplingParams), "request.params", self.params, "a SamplingParams")
        check(self.resume_id is None or (isinstance(self.resume_id, str) and self.resume_id != ""),
              "request.resume_id", self.resume_id, "None or the id of a finished request kept with keep_cache")
        check(isinstance(self.n, int) and not isinstance(self.n, bool) and self.n >= 1, "request.n", self.n,
              "a positive integer")
        check(self.n == 1 or self.resume_id is None, "request.n", self.n,
              "1 when resume_id is set (a suspended sequence continues as one sequence)")

    def sample_ids(self) -> list[str]:
        """Ids of the completions this request produces."""
        if self.n == 1:
            return [self.request_id]
        return [f"{self.request_id}/{i}" for i in range(self.n)]


@dataclass
class Completion:
    """A finished request.

    `logprobs[i]` is the log-probability of `output_ids[i]` under the distribution the token was
    sampled from, before any top-k / top-p filtering: `log_softmax(logits / temperature)` for
    temperature > 0, plain `log_softmax(logits)` for temperature 0 (greedy). This is what a
    learner recomputes with a full forward at the rollout temperature (as verl does). It is
    also SGLang's default (`sglang/srt/layers/sampler.py`: log-probs after temperature, before
    top-k / top-p; a server started with `SGLANG_RETURN_ORIGINAL_LOGPROB=1` returns raw ones
    instead, which `apr.engine.sglang` detects or refuses, see `engine.server_logprobs`).
    """

    request_id: str
    output_ids: list[int]  # generated tokens, including the matched stop token
    logprobs: list[float]
    finish_reason: str  # FinishReason.STOP | LENGTH | ABORT
    # prompt positions this request prefilled: a new sequence its prompt (an n-sample follower 0:
    # its prompt KV is copied from sample 0), a continuation its appended ids (plus, if its kept
    # KV was evicted for room, the re-prefilled context)
    num_prompt_tokens: int
    num_cached_tokens: int  # positions whose KV came from a kept or shared cache
    first_token_s: float = float("nan")  # submit -> first generated token, seconds
    finished_s: float = float("nan")  # submit -> finished, seconds


@dataclass
class EngineStats:
    """Counters for tests and benchmarks; they only grow (`reset` to zero them)."""

    num_steps: int = 0
    num_forward_calls: int = 0  # model forwards (a step makes up to one prefill and one decode)
    num_prefill_tokens: int = 0  # positions fed through prefill forwards (incl. a resumed sequence's last sampled token)
    num_decode_tokens: int = 0  # positions fed through decode forwards
    num_generated_tokens: int = 0  # tokens sampled and returned
    num_cached_tokens: int = 0  # prompt positions reused from kept or shared KV
    num_kv_copies: int = 0  # sequence KV moved between slots (row compaction, n-sample sharing)
    num_evictions: int = 0  # suspended caches dropped for room (re-prefilled on resume)
    num_preemptions: int = 0  # running sequences whose KV was dropped for room (recomputed, nothing lost)
    num_kv_resizes: int = 0  # KV pool re-laid to another row length (local engine)
    num_regroups: int = 0  # batch rows regrouped by length for chunked attention
    # time inside model forwards (embedding to logits): wall time on CPU, the GPU timeline's span on CUDA
    forward_s: float = 0.0
    step_s: float = 0.0  # wall time inside `step` (forward + sampling + scheduling)

    @property
    def overhead_share(self) -> float:
        """Share of step time spent outside model forwards."""
        return 0.0 if self.step_s == 0 else 1.0 - self.forward_s / self.step_s

    def reset(self) -> None:
        for name, value in EngineStats().__dict__.items():
            setattr(self, name, value)


def validate_request(request: Request, active_ids, kept_ids, vocab_size: int | None = None) -> None:
    """The checks every engine makes in `submit`, before it touches any state (errors name the field).

    `active_ids`: ids of queued and running requests; `kept_ids`: ids of finished requests kept
    for a `resume_id` (any container supporting `in`); `vocab_size`: None when unknown.

    >>> validate_request(Request("a", [1, 2]), active_ids={"a"}, kept_ids={})
    Traceback (most recent call last):
    ...
    apr.config.ConfigError: request.request_id: got 'a'; accepted: an id not used by a queued, running or kept request
    """
    if not isinstance(request, Request):
        raise ConfigError(f"request: got {type(request).__name__}; accepted: an apr.engine.Request")
    for sample_id in request.sample_ids():
        is_kept = sample_id in kept_ids and sample_id != request.resume_id
        check(sample_id not in active_ids and not is_kept, "request.request_id", sample_id,
              "an id not used by a queued, running or kept request")
    if request.resume_id is not None:
        check(request.resume_id in kept_ids, "request.resume_id", request.resume_id,
              "the id of a finished request that had keep_cache=True and was not released")
    if vocab_size is not None:
        bad = [i for i in request.prompt_ids if i >= vocab_size]
        check(not bad, "request.prompt_ids", bad[:5], f"token ids below the vocabulary size {vocab_size}")


class Engine(Protocol):
    """What the runtime drives. One `step` = admit queued requests (prefill) + one decode step.

        engine.submit(Request("a", [2, 5, 9], SamplingParams(max_new_tokens=4)))
        while engine.has_work():
            for c in engine.step():
                print(c.request_id, c.output_ids, c.finish_reason)
    """

    def submit(self, request: Request) -> None: ...

    def step(self) -> list[Completion]: ...

    def has_work(self) -> bool: ...

    def release(self, request_id: str) -> None: ...

    def abort(self, request_id: str) -> None: ...

    def run_until_done(self) -> list[Completion]: ...
