"""Owns the `/generate` wire format and the per-sequence state: a `Request` as SGLang's body, its answer as a `Completion`.

The body (SGLang's `GenerateReqInput` and `SamplingParams`, `sglang/srt/managers/io_struct.py` and
`sglang/srt/sampling/sampling_params.py`): token ids in, stop ids kept in the output, output log-probs only:

    >>> from apr.engine.base import SamplingParams
    >>> body = payload([2, 5], SamplingParams(temperature=0.0, max_new_tokens=3), 3, seed=7)
    >>> body["sampling_params"]["sampling_seed"], body["return_logprob"], body["sampling_params"]["top_k"]
    (7, True, -1)
"""

from __future__ import annotations

import enum
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from apr.engine.base import Completion, FinishReason, SamplingParams
from apr.engine.sglang.config import SGLangError

# every key `payload` puts in sampling_params; SGLang rejects unknown keys (HTTP 400 "unknown field" from 0.5.22,
# a plain 500 before: its SamplingParams(**sampling_params) raises TypeError), so a new key must exist in all
# supported versions
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "stop_token_ids", "skip_special_tokens",
                 "no_stop_trim", "sampling_seed")


class SeqStatus(enum.Enum):
    INFLIGHT = 1  # handed to the pool: waiting for a worker or in a /generate call
    KEPT = 2  # finished with keep_cache: its full ids wait for a `resume_id` or `release`


@dataclass(eq=False)
class Seq:
    """One sequence: the ids sent as the next request's `input_ids`, and its server."""

    seq_id: str  # the current request's completion id
    request_id: str  # the Request's own id (== seq_id unless n > 1)
    token_ids: list[int]  # prompt + generated + appended: the whole context
    url: str  # the server whose radix cache holds this sequence's prefix
    payload: dict  # the /generate body of the current request
    keep_cache: bool
    status: SeqStatus = SeqStatus.INFLIGHT
    future: Future | None = None
    rid: str = ""  # SGLang request id of the current attempt, for /abort_request
    expected_version: str | None = None  # the weight version its answer must carry (None: before any sync)
    stop: threading.Event = field(default_factory=threading.Event)  # abort requested
    submit_s: float = field(default_factory=time.perf_counter)


def payload(input_ids: list[int], params: SamplingParams, max_new_tokens: int, seed: int) -> dict:
    """The /generate body. `seed` always goes out: servers started deterministic use it (else they use 42)."""
    sampling = {"max_new_tokens": max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
                "top_k": params.top_k if params.top_k > 0 else -1, "stop_token_ids": list(params.stop_token_ids),
                "skip_special_tokens": False, "no_stop_trim": True, "sampling_seed": seed}
    return {"input_ids": list(input_ids), "sampling_params": sampling, "return_logprob": True,
            "logprob_start_len": -1}


def completion(seq_id: str, body: dict, elapsed_s: float, url: str) -> Completion:
    """A /generate answer as a `Completion` (SGLang's `meta_info` shapes)."""
    meta = body.get("meta_info", {})
    entries = meta.get("output_token_logprobs") or []  # [[logprob, token_id, text | None], ...]
    output_ids = list(body.get("output_ids", [e[1] for e in entries]))
    if len(entries) == len(output_ids) + 1:  # a server that trimmed the stop token from output_ids anyway
        output_ids = [e[1] for e in entries]
    logprobs = [float(e[0]) for e in entries]
    if len(logprobs) != len(output_ids):  # rollouts train on these: never guess them
        raise SGLangError(f"{url}/generate: {len(output_ids)} output ids but {len(logprobs)} log-probs in "
                          "meta_info.output_token_logprobs (the request sets return_logprob: true)")
    reason = (meta.get("finish_reason") or {}).get("type", FinishReason.ABORT)
    if reason not in (FinishReason.STOP, FinishReason.LENGTH):
        reason = FinishReason.ABORT
    cached = int(meta.get("cached_tokens", 0))
    prompt = int(meta.get("prompt_tokens", 0))
    return Completion(seq_id, output_ids, logprobs, reason, max(prompt - cached, 0), cached, finished_s=elapsed_s)
