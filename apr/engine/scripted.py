"""A scripted engine: the `Engine` interface over a deterministic next-token function.

For tests of the runtime (no model): each sequence's next token is `script(prompt, context)`,
where `prompt` is the ids the sequence started from and `context` everything so far. It keeps
kept sequences for `resume_id` like a real engine keeps KV caches, and counts prefill tokens.

    >>> from apr.engine.base import SamplingParams
    >>> eng = ScriptedEngine(lambda prompt, ctx: 7 if len(ctx) < 5 else 3)
    >>> eng.submit(Request("a", [1, 2], SamplingParams(max_new_tokens=9, stop_token_ids=(3,))))
    >>> [c.output_ids for c in eng.run_until_done()]
    [[7, 7, 7, 3]]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from apr.engine.base import Completion, EngineStats, FinishReason, Request

Script = Callable[[tuple[int, ...], list[int]], int]


@dataclass
class _Seq:
    sample_id: str
    prompt: tuple[int, ...]
    context: list[int]
    request: Request
    output: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    aborted: bool = False


class ScriptedEngine:
    """Generates `script(prompt, context)` for every running sequence, one token per step."""

    def __init__(self, script: Script, max_batch_size: int = 256, step_sleep_s: float = 0.0) -> None:
        self.script = script
        self.max_batch_size = max_batch_size
        self.step_sleep_s = step_sleep_s
        self.stats = EngineStats()
        self.batch_sizes: list[int] = []  # running sequences per step: shows cross-problem batching
        self._queue: list[_Seq] = []
        self._running: list[_Seq] = []
        self._kept: dict[str, tuple[tuple[int, ...], list[int]]] = {}

    def submit(self, request: Request) -> None:
        if request.resume_id is not None:
            prompt, context = self._kept.pop(request.resume_id)
            seq = _Seq(request.request_id, prompt, context + request.prompt_ids, request,
                       num_prompt_tokens=len(request.prompt_ids), num_cached_tokens=len(context))
            self._queue.append(seq)
            return
        for i, sid in enumerate(request.sample_ids()):
            self._queue.append(_Seq(sid, tuple(request.prompt_ids), list(request.prompt_ids), request,
                                    num_prompt_tokens=len(request.prompt_ids) if i == 0 else 0,
                                    num_cached_tokens=0 if i == 0 else len(request.prompt_ids)))

    def has_work(self) -> bool:
        return bool(self._queue or self._running)

    def step(self) -> list[Completion]:
        t0 = time.perf_counter()
        while self._queue and len(self._running) < self.max_batch_size:
            seq = self._queue.pop(0)
            self.stats.num_prefill_tokens += seq.num_prompt_tokens
            self._running.append(seq)
        self.stats.num_steps += 1
        self.batch_sizes.append(len(self._running))
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        done, still = [], []
        for seq in self._running:
            if not seq.aborted:
                token = self.script(seq.prompt, seq.context)
                seq.context.append(token)
                seq.output.append(token)
                self.stats.num_generated_tokens += 1
            finished = self._finish_reason(seq)
            (done if finished else still).append((seq, finished))
        self._running = [s for s, _ in still]
        out = []
        for seq, reason in done:
            if seq.request.keep_cache and reason != FinishReason.ABORT:
                self._kept[seq.sample_id] = (seq.prompt, seq.context)
            out.append(Completion(seq.sample_id, seq.output, [-(t % 7) / 10 for t in seq.output], reason,
                                  seq.num_prompt_tokens, seq.num_cached_tokens))
        self.stats.step_s += time.perf_counter() - t0
        return out

    @staticmethod
    def _finish_reason(seq: _Seq) -> str | None:
        if seq.aborted:
            return FinishReason.ABORT
        if seq.output and seq.output[-1] in seq.request.params.stop_token_ids:
            return FinishReason.STOP
        if len(seq.output) >= seq.request.params.max_new_tokens:
            return FinishReason.LENGTH
        return None

    def release(self, request_id: str) -> None:
        self._kept.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        for seq in self._queue + self._running:
            if seq.sample_id == request_id:
                seq.aborted = True
        # queued sequences are aborted at their first step
        self._running += [s for s in self._queue if s.aborted]
        self._queue = [s for s in self._queue if not s.aborted]

    def run_until_done(self) -> list[Completion]:
        out = []
        while self.has_work():
            out += self.step()
        return out

    @property
    def num_kept(self) -> int:
        return len(self._kept)
