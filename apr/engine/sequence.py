"""Owns the per-sequence state: one `Sequence` object per live thread of tokens.

A sequence outlives its request: a request with `keep_cache=True` leaves its sequence
SUSPENDED (KV kept in its slot) and a later request with `resume_id` adopts it. The last
sampled token of a suspended sequence is *pending*: like every decoding step it is fed
to the model only when the sequence next runs.

While it runs, its decode steps are recorded in the engine's `RunningRows` (whole-batch array
ops, no Python per sequence and step) and copied in when read: `token_ids`, `output_ids`, `logprobs`
and `num_cached` are always current.

    >>> s = Sequence("a", [2, 5, 9], None, keep_cache=False, seed=0)
    >>> s.status, s.num_tokens, s.num_pending
    (<SeqStatus.WAITING: 1>, 3, 3)
"""

from __future__ import annotations

import enum
import time

from apr.engine.base import Completion, FinishReason, SamplingParams


class SeqStatus(enum.Enum):
    WAITING = 1  # queued: needs a prefill (new, resumed, or n-sample follower)
    RUNNING = 2  # in the decode batch, KV in slot `slot` == its row
    SUSPENDED = 3  # finished with keep_cache: KV kept (slot set) or evicted (slot None)
    FINISHED = 4  # done and released


class Sequence:
    """One sequence of tokens and the request currently driving it (identity equality, like a dataclass(eq=False))."""

    def __init__(self, seq_id: str, token_ids: list[int], params: SamplingParams | None, keep_cache: bool,
                 seed: int, request_id: str = "") -> None:
        self.seq_id = seq_id  # id of the current request's completion (`request_id/i` for n-samples)
        self._token_ids = token_ids  # prompt + generated + appended, the whole context
        self.params = params
        self.keep_cache = keep_cache
        # the request's effective seed: token k is drawn with `sampler.uniforms(seed_key(seed), k)`
        self.seed = seed
        self.status = SeqStatus.WAITING
        self.slot: int | None = None
        self._num_cached = 0  # leading positions of token_ids whose KV is in the slot
        self.rows = None  # the engine's `RunningRows` while running (it holds decode steps not yet copied here)
        self.row = -1  # its row there (== slot, except in the middle of a move)
        # the current request
        self.request_id = request_id  # the Request's own id (== seq_id unless n > 1)
        self.is_continuation = False  # the current request resumed this sequence
        self.num_prompt_tokens = 0
        self.num_cached_at_start = 0
        self._output_ids: list[int] = []
        self._logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.is_abort_requested = False
        self.submit_time = time.perf_counter()
        self.first_token_time = float("nan")
        self.last_used = 0  # step count when it last ran (eviction picks the least recent)

    # ---- state recorded by `RunningRows` while running: copied in on read ------------------------
    def _pulled(self) -> Sequence:
        if self.rows is not None:
            self.rows.pull(self)
        return self


    @property
    def token_ids(self) -> list[int]:
        return self._pulled()._token_ids

    @property
    def output_ids(self) -> list[int]:
        return self._pulled()._output_ids

    @property
    def logprobs(self) -> list[float]:
        return self._pulled()._logprobs

    @property
    def num_cached(self) -> int:
        return self._pulled()._num_cached

    @num_cached.setter
    def num_cached(self, value: int) -> None:
        if self.rows is not None:
            self.rows.pull(self)
        self._num_cached = value

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_pending(self) -> int:
        """Tokens to feed the model before the next logits (1 while decoding)."""
        return len(self.token_ids) - self.num_cached

    @property
    def num_generated(self) -> int:
        return len(self.output_ids)

    def start_request(self, seq_id: str, appended_ids: list[int], params: SamplingParams, keep_cache: bool,
                      seed: int) -> None:
        """Adopt a continuation request: append its ids and reset per-request state."""
        self.seq_id = self.request_id = seq_id
        self.token_ids.extend(appended_ids)
        self.params = params
        self.keep_cache = keep_cache
        self.seed = seed
        self.status = SeqStatus.WAITING
        self.is_continuation = True
        self.num_prompt_tokens = len(appended_ids)  # recounted at prefill if the KV was evicted
        self.num_cached_at_start = self.num_cached
        self._output_ids, self._logprobs = [], []
        self.finish_reason = None
        self.is_abort_requested = False
        self.submit_time = time.perf_counter()
        self.first_token_time = float("nan")

    def append_sampled(self, token: int, logprob: float) -> None:
        """Record a token sampled from a prefill's logits (finish rules: `RunningRows.record`)."""
        out = self._output_ids  # not the property: the rows hold nothing of this token
        if not out:
            self.first_token_time = time.perf_counter()
        self._token_ids.append(token)
        out.append(token)
        self._logprobs.append(logprob)

    def extend_decoded(self, tokens: list[int], logprobs: list[float]) -> None:
        """Take decode steps recorded by `RunningRows`: each fed one pending token (now cached) and sampled one."""
        self._token_ids.extend(tokens)
        self._output_ids.extend(tokens)
        self._logprobs.extend(logprobs)
        self._num_cached += len(tokens)

    def to_completion(self) -> Completion:
        now = time.perf_counter()
        return Completion(
            request_id=self.seq_id,
            output_ids=list(self.output_ids),
            logprobs=list(self.logprobs),
            finish_reason=self.finish_reason or FinishReason.ABORT,
            num_prompt_tokens=self.num_prompt_tokens,
            num_cached_tokens=self.num_cached_at_start,
            first_token_s=self.first_token_time - self.submit_time,
            finished_s=now - self.submit_time,
        )
