"""Owns the per-sequence state: one `Sequence` object per live thread of tokens.

A sequence outlives its request: a request with `keep_cache=True` leaves its sequence
SUSPENDED (KV kept in its slot) and a later request with `resume_id` adopts it. The last
sampled token of a suspended sequence is *pending*: like every decoding step it is fed
to the model only when the sequence next runs.

    >>> import random
    >>> s = Sequence("a", [2, 5, 9], None, keep_cache=False, rng=random.Random(0))
    >>> s.status, s.num_tokens, s.num_pending
    (<SeqStatus.WAITING: 1>, 3, 3)
"""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass, field

from apr.engine.base import Completion, FinishReason, SamplingParams


class SeqStatus(enum.Enum):
    WAITING = 1  # queued: needs a prefill (new, resumed, or n-sample follower)
    RUNNING = 2  # in the decode batch, KV in slot `slot` == its row
    SUSPENDED = 3  # finished with keep_cache: KV kept (slot set) or evicted (slot None)
    FINISHED = 4  # done and released


@dataclass(eq=False)
class Sequence:
    """One sequence of tokens and the request currently driving it."""

    seq_id: str  # id of the current request's completion (`request_id/i` for n-samples)
    token_ids: list[int]  # prompt + generated + appended, the whole context
    params: SamplingParams | None
    keep_cache: bool
    rng: random.Random  # per-request uniform draws: batch composition never touches them
    status: SeqStatus = SeqStatus.WAITING
    slot: int | None = None
    num_cached: int = 0  # leading positions of token_ids whose KV is in the slot
    # the current request
    request_id: str = ""  # the Request's own id (== seq_id unless n > 1)
    is_continuation: bool = False  # the current request resumed this sequence
    num_prompt_tokens: int = 0
    num_cached_at_start: int = 0
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    is_abort_requested: bool = False
    submit_time: float = field(default_factory=time.perf_counter)
    first_token_time: float = float("nan")
    last_used: int = 0  # step count when it last ran (eviction picks the least recent)

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
                      rng: random.Random) -> None:
        """Adopt a continuation request: append its ids and reset per-request state."""
        self.seq_id = self.request_id = seq_id
        self.token_ids.extend(appended_ids)
        self.params = params
        self.keep_cache = keep_cache
        self.rng = rng
        self.status = SeqStatus.WAITING
        self.is_continuation = True
        self.num_prompt_tokens = len(appended_ids)  # recounted at prefill if the KV was evicted
        self.num_cached_at_start = self.num_cached
        self.output_ids, self.logprobs = [], []
        self.finish_reason = None
        self.is_abort_requested = False
        self.submit_time = time.perf_counter()
        self.first_token_time = float("nan")

    def append_token(self, token: int, logprob: float, max_seq_len: int) -> bool:
        """Record a sampled token; return True when it finishes the request (sets finish_reason)."""
        # called once per token per sequence: plain attribute access, no properties
        out = self.output_ids
        if not out:
            self.first_token_time = time.perf_counter()
        self.token_ids.append(token)
        out.append(token)
        self.logprobs.append(logprob)
        params = self.params
        if token in params.stop_token_ids:
            self.finish_reason = FinishReason.STOP
        elif len(out) >= params.max_new_tokens or len(self.token_ids) > max_seq_len:
            # more than max_seq_len tokens: the pending one would need position max_seq_len, past the slot
            self.finish_reason = FinishReason.LENGTH
        return self.finish_reason is not None

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
