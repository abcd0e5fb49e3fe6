"""Owns the local engine loop: continuous batching of `Request`s over an HF Llama in torch.

One `step` = admit queued requests and prefill them in one padded forward (their first token
is sampled from it) + one decode forward for every sequence already running. Finished
requests leave the batch at the end of the step; queued ones join at the next.

    >>> from apr.model.config import ModelConfig, build_model
    >>> from apr.engine.base import Request, SamplingParams
    >>> model = build_model(ModelConfig.preset("tiny"), vocab_size=100)
    >>> engine = LocalEngine(model, LocalEngineConfig(max_batch_size=8, max_seq_len=64))
    >>> engine.submit(Request("a", [2, 5, 9], SamplingParams(temperature=0.0, max_new_tokens=4)))
    >>> [c.finish_reason for c in engine.run_until_done()]
    ['length']
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from apr.config import check, fail
from apr.engine import kv_budget
from apr.engine.base import Completion, EngineStats, FinishReason, Request, validate_request
from apr.engine.cuda_graph import StaticDecode
from apr.engine.kv_cache import KVCache
from apr.engine.llama import ForwardBatch, LlamaRunner
from apr.engine.sampler import sample
from apr.engine.scheduler import Scheduler
from apr.engine.sequence import SeqStatus, Sequence

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_device_available(device: str, field: str) -> None:
    """A CUDA device asked for where this torch cannot use one is a config error, not an AssertionError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        fail(field, device, "a torch device string such as cpu, cuda or cuda:0")
    if dev.type != "cuda" or torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count():
        return
    why = ("this torch is a CPU-only build (install a CUDA build of torch)" if torch.version.cuda is None
           else f"torch sees {torch.cuda.device_count()} CUDA device(s)")
    fail(field, device, f"cpu here: {why}")


@dataclass
class LocalEngineConfig:
    """Sizes and placement of the local engine (validated; errors name `engine.<field>`).

    KV memory is a budget (`kv_memory`, see `apr.engine.kv_budget`): one position costs
    layers x 2 x kv_heads x head_dim x dtype bytes (tiny preset, fp32: 4 KiB), and sequences
    hold rows as long as the longest live one needs, not `max_seq_len` each (`kv_cache`).
    """

    max_batch_size: int = 64  # sequences decoded together in one forward
    # positions per sequence (prompt + generated + appended); None: the command's thread window, filled
    # in by `apr.engine.config.with_window` before an engine is built
    max_seq_len: int | None = 2048
    # KV budget: None (num_slots x max_seq_len, at most half the free memory), a fraction of the
    # free memory in (0, 1], or bytes (int, or a string such as "8GiB")
    kv_memory: float | int | str | None = None
    num_slots: int | None = None  # most sequences holding KV (running + suspended); None: what kv_memory holds
    max_prefill_tokens: int = 4096  # padded tokens per prefill forward (more requests wait a step)
    device: str = "cpu"  # any torch device string: cpu, cuda, cuda:1
    # float32 | bfloat16 | float16 (weights, activations and KV); None: bfloat16 on CUDA, float32 on CPU
    dtype: str | None = None
    # replay decode steps from CUDA graphs captured per batch-size bucket (CUDA only; CPU ignores it)
    cuda_graphs: bool = True
    compile: bool = False  # torch.compile the layer stack (dynamic shapes; slow first steps)
    # decode attention runs on chunks of this many rows, each reading only its own longest context;
    # rows are regrouped by length when that saves enough (0: one chunk, never regroup)
    attention_chunk_rows: int = 16
    seed: int = 0  # seeds requests that carry no seed, so whole runs are reproducible

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_seq_len", "max_prefill_tokens"):
            value = getattr(self, name)
            if name == "max_seq_len" and value is None:
                continue
            check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                  f"engine.{name}", value, "a positive integer")
        slots = self.num_slots
        check(slots is None or (isinstance(slots, int) and not isinstance(slots, bool) and slots > 0),
              "engine.num_slots", slots, "a positive integer or None (as many as engine.kv_memory holds)")
        check(kv_budget.is_valid(self.kv_memory), "engine.kv_memory", self.kv_memory, kv_budget.ACCEPTED)
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            fail("engine.device", self.device, "a torch device string such as cpu, cuda or cuda:0")
        if self.dtype is None:
            self.dtype = "bfloat16" if device.type == "cuda" else "float32"
        check(self.dtype in _DTYPES, "engine.dtype", self.dtype, ", ".join(_DTYPES) + " or None")
        check(isinstance(self.cuda_graphs, bool), "engine.cuda_graphs", self.cuda_graphs, "true or false")
        check(isinstance(self.compile, bool), "engine.compile", self.compile, "true or false")
        rows = self.attention_chunk_rows
        check(isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0, "engine.attention_chunk_rows",
              rows, "a non-negative integer (0: no chunking)")
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool), "engine.seed", self.seed,
              "an integer")


class LocalEngine:
    """Continuous-batching engine over an HF `LlamaForCausalLM` (see the module docstring).

    The model is used in place (moved to `config.device` / `config.dtype`); its weights are
    read by reference at every step, so in-place updates between steps take effect at once.
    """

    def __init__(self, model, config: LocalEngineConfig | None = None) -> None:
        self.config = config = config or LocalEngineConfig()
        # here, not in the config: a CPU-only head node composes and ships GPU configs to its workers
        check_device_available(config.device, "engine.device")
        check(config.max_seq_len is not None, "engine.max_seq_len", None,
              "a positive integer (null is only a placeholder the commands fill with their thread window)")
        dtype = _DTYPES[config.dtype]
        self.device = torch.device(config.device)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        mcfg = model.config
        head_dim = getattr(mcfg, "head_dim", None) or mcfg.hidden_size // mcfg.num_attention_heads
        self.vocab_size = mcfg.vocab_size
        per_position = KVCache.bytes_per_position(mcfg.num_hidden_layers, mcfg.num_key_value_heads, head_dim, dtype)
        positions = kv_budget.budget_positions(config.kv_memory, config.num_slots or 2 * config.max_batch_size,
                                               config.max_seq_len, per_position, self.device)
        self.kv = KVCache(mcfg.num_hidden_layers, mcfg.num_key_value_heads, head_dim, dtype, self.device,
                          positions, config.max_seq_len, max_slots=config.num_slots)
        self.runner = LlamaRunner(self.model, self.kv, compile=config.compile)
        self.scheduler = Scheduler(self.kv, config.max_batch_size, config.max_prefill_tokens)
        # CUDA-graph decode: not with torch.compile (its dynamic-shape code is not captured here)
        is_graphed = config.cuda_graphs and self.device.type == "cuda" and not config.compile
        self.static_decode = StaticDecode(self.runner, self.kv, config.max_batch_size, True) if is_graphed else None
        self.stats = EngineStats()
        self._seed_rng = random.Random(config.seed)
        self._ready: list[Completion] = []  # finished outside a forward (abort, too long), returned next step
        self._active: set[str] = set()  # ids of queued and running sequences

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: str | None = None, **config) -> LocalEngine:
        """Load an HF Llama directory. Example: `LocalEngine.from_pretrained("runs/sft/model", max_batch_size=32)`."""
        from transformers import LlamaForCausalLM

        cfg = LocalEngineConfig(device=device, dtype=dtype, **config)
        model = LlamaForCausalLM.from_pretrained(path, dtype=_DTYPES[cfg.dtype])
        return cls(model, cfg)

    # ---- the Engine interface --------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request; it joins the batch at the next `step`. Bad requests raise `ConfigError`.

        A request longer than `max_seq_len` (prompt, or kept context + appended ids) is not an
        error: it finishes at the next step with finish_reason "length" and no tokens (a resumed
        sequence is released). Runtimes treat it like any context-exhausted thread.
        """
        self._validate(request)
        if request.resume_id is not None:
            seq = self.scheduler.suspended.pop(request.resume_id)
            seq.start_request(request.request_id, request.prompt_ids, request.params, request.keep_cache,
                              self._rng(request.params.seed, 0))
            group = [seq]
        else:
            group = []
            for i, seq_id in enumerate(request.sample_ids()):
                group.append(Sequence(seq_id, list(request.prompt_ids), request.params, request.keep_cache,
                                      self._rng(request.params.seed, i), request_id=request.request_id))
        if group[0].num_tokens > self.config.max_seq_len:
            for seq in group:
                if seq.slot is not None:
                    self.kv.free(seq.slot)
                seq.slot, seq.status, seq.finish_reason = None, SeqStatus.FINISHED, FinishReason.LENGTH
                self._ready.append(seq.to_completion())
            return
        self._active.update(s.seq_id for s in group)
        self.scheduler.add(group)

    def step(self) -> list[Completion]:
        """Admit + prefill queued requests, decode one token for the running ones; return what finished."""
        start = time.perf_counter()
        with torch.inference_mode():
            aborted = [s for s in self.scheduler.running if s.is_abort_requested]
            for seq in aborted:
                seq.finish_reason = FinishReason.ABORT
            completions, self._ready = self._ready, []
            completions += [self._end(s) for s in aborted]
            self.scheduler.retire(aborted)
            self.scheduler.make_room()
            self._maybe_regroup_rows()
            num_old = len(self.scheduler.running)
            groups = self.scheduler.admit()
            if groups:
                self._prefill(groups)
            if num_old:
                self._decode(self.scheduler.running[:num_old])
            done = [s for s in self.scheduler.running if s.finish_reason is not None]
            completions += [self._end(s) for s in done]
            self.scheduler.retire(done)
        self.stats.num_steps += 1
        self.stats.num_evictions = self.scheduler.num_evictions
        self.stats.num_preemptions = self.scheduler.num_preemptions
        self.stats.num_kv_resizes = self.kv.num_resizes
        self.stats.num_kv_copies = self.kv.num_copies
        self.stats.step_s += time.perf_counter() - start
        return completions

    def has_work(self) -> bool:
        return bool(self._ready or self.scheduler.waiting or self.scheduler.running)

    def run_until_done(self) -> list[Completion]:
        """Step until nothing is queued or running; completions in finishing order."""
        out: list[Completion] = []
        while self.has_work():
            out += self.step()
        return out

    def close(self) -> None:
        """Free the KV pool (and cached CUDA blocks) now; the engine cannot step afterwards.

        Example: the eval suite closes one model's engine before it loads the next.
        """
        self.scheduler.waiting.clear()
        self.scheduler.running.clear()
        self.scheduler.suspended.clear()
        self.kv = self.runner.kv = self.scheduler.kv = self.static_decode = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def release(self, request_id: str) -> None:
        """Drop the kept KV of finished request `request_id`; a no-op if nothing is kept under that id.

        Idempotent on purpose: a runtime releases every thread it finishes, including ones
        whose request aborted (never kept) or was already resumed.
        """
        if request_id in self.scheduler.suspended:
            self.scheduler.release(request_id)

    def abort(self, request_id: str) -> None:
        """End a queued or running request (or all samples of an n-request) with "abort".

        Its completion (tokens so far) comes out of the next `step`; its KV is never kept.
        A kept cache of a finished request is released; unknown ids are ignored (it may
        have finished in the meantime).
        """
        for seq in self.scheduler.remove_waiting(request_id):
            seq.finish_reason = FinishReason.ABORT
            self._active.discard(seq.seq_id)
            self._ready.append(seq.to_completion())
        for seq in self.scheduler.running:
            if request_id in (seq.seq_id, seq.request_id):
                seq.is_abort_requested = True
        if request_id in self.scheduler.suspended:
            self.scheduler.release(request_id)

    # ---- internals -------------------------------------------------------------------------

    def _validate(self, request: Request) -> None:
        validate_request(request, self._active, self.scheduler.suspended, self.vocab_size)
        num_slots = self.kv.slots_at(self.kv.row_len_for(len(request.prompt_ids) + 1))
        check(request.n <= min(self.config.max_batch_size, num_slots), "request.n", request.n,
              f"at most engine.max_batch_size and the {num_slots} KV slots of this prompt's length "
              "(engine.num_slots, engine.kv_memory)")

    def _rng(self, seed: int | None, index: int) -> random.Random:
        return random.Random(self._seed_rng.getrandbits(63) if seed is None else seed + index)

    def _end(self, seq: Sequence) -> Completion:
        """Mark a sequence leaving the batch as suspended (KV kept) or finished."""
        keep = seq.keep_cache and seq.finish_reason != FinishReason.ABORT
        seq.status = SeqStatus.SUSPENDED if keep else SeqStatus.FINISHED
        self._active.discard(seq.seq_id)
        return seq.to_completion()

    def _forward(self, batch: ForwardBatch | None, decode: tuple[list[int], list[int]] | None = None
                 ) -> torch.Tensor:
        """Run `batch`, or a fixed-shape decode of (token ids, positions) on `static_decode`."""
        start = time.perf_counter()
        if batch is None:
            logits = self.static_decode.forward(*decode)  # (B, V)
        else:
            logits = self.runner.forward(batch)  # (B, V)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # otherwise the time lands in sampling
        self.stats.forward_s += time.perf_counter() - start
        self.stats.num_forward_calls += 1
        return logits

    def _prefill(self, groups: list[list[Sequence]]) -> None:
        leaders = [g[0] for g in groups]
        lengths = [s.num_pending for s in leaders]
        width = max(lengths)
        ids = torch.zeros(len(leaders), width, dtype=torch.long)  # (k, T) right-padded
        positions = torch.zeros(len(leaders), width, dtype=torch.long)  # (k, T)
        for r, seq in enumerate(leaders):
            n = lengths[r]
            ids[r, :n] = torch.tensor(seq.token_ids[seq.num_cached:])
            positions[r, :n] = torch.arange(seq.num_cached, seq.num_tokens)
        kv_len = torch.tensor([s.num_tokens for s in leaders])  # (k,)
        valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (k, T)
        batch = ForwardBatch(ids.to(self.device), positions.to(self.device), leaders[0].slot,
                             kv_len.to(self.device), int(kv_len.max()),
                             (torch.tensor(lengths) - 1).to(self.device), valid.to(self.device))
        logits = self._forward(batch)  # (k, V)
        self.stats.num_prefill_tokens += sum(lengths)
        rows, seqs = [], []
        for r, group in enumerate(groups):
            leader = group[0]
            if not leader.output_ids:  # else a preempted sequence, recomputed mid-request: counts stand
                # a continuation's first pending position is its last sampled token, not a prompt token
                leader.num_prompt_tokens = leader.num_pending - (1 if leader.is_continuation else 0)
            leader.num_cached = leader.num_tokens
            for follower in group[1:]:  # n samples: share the prompt KV instead of recomputing it
                self.kv.copy(leader.slot, follower.slot, leader.num_tokens)
                follower.num_cached = follower.num_cached_at_start = leader.num_tokens
            rows += [r] * len(group)
            seqs += group
        cached = sum(s.num_cached_at_start for s in seqs if not s.output_ids)  # not a preempted one again
        self.stats.num_cached_tokens += cached
        if rows != list(range(len(rows))):
            logits = logits[torch.tensor(rows, device=self.device)]  # (N, V): followers reuse their leader's row
        self._sample(logits, seqs)

    def _chunks(self, kv_lens: list[int]) -> list[tuple[int, int, int]]:
        rows = self.config.attention_chunk_rows or len(kv_lens)
        return [(a, min(a + rows, len(kv_lens)), max(kv_lens[a:a + rows])) for a in range(0, len(kv_lens), rows)]

    def _maybe_regroup_rows(self) -> None:
        """Regroup batch rows by length when the KV it saves attention from reading repays the copy.

        Moving a sequence copies its KV once (read + write); the grouping then holds for many
        steps, since every length grows by one per step. Move when 8 steps of savings cover it.
        """
        rows = self.config.attention_chunk_rows
        running = self.scheduler.running
        if not rows or len(running) <= rows or self.static_decode is not None:  # graphs read whole rows
            return
        lens = [s.num_cached + 1 for s in running]
        now = sum((b - a) * n for a, b, n in self._chunks(lens))
        best = sum((b - a) * n for a, b, n in self._chunks(sorted(lens, reverse=True)))
        if now - best < 0.05 * best:
            return
        sources, num_moved = self.scheduler.plan_regroup(rows)
        if 8 * (now - best) > 2 * num_moved * max(lens):
            self.scheduler.regroup(sources)
            self.stats.num_regroups += 1

    def _decode(self, seqs: list[Sequence]) -> None:
        num = len(seqs)
        pos = [s.num_cached for s in seqs]
        last = [s.token_ids[-1] for s in seqs]
        if self.static_decode is not None and self.static_decode.can_run(num):
            self._finish_decode(self._forward(None, (last, pos)), seqs)  # (B, V)
            return
        ids = torch.tensor(last, device=self.device).view(num, 1)  # (B, 1)
        positions = torch.tensor(pos, device=self.device).view(num, 1)  # (B, 1)
        kv_len = positions[:, 0] + 1  # (B,)
        chunks = self._chunks([p + 1 for p in pos])
        # extra attention calls cost ~10 us each: chunk only when it skips >10% of the KV reads
        is_worth = sum((b - a) * n for a, b, n in chunks) < 0.9 * num * (max(pos) + 1)
        batch = ForwardBatch(ids, positions, 0, kv_len, max(pos) + 1,
                             torch.zeros(num, dtype=torch.long, device=self.device),
                             chunks=chunks if len(chunks) > 1 and is_worth else None)
        self._finish_decode(self._forward(batch), seqs)  # (B, V)

    def _finish_decode(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        for seq in seqs:
            seq.num_cached += 1
        self.stats.num_decode_tokens += len(seqs)
        self._sample(logits, seqs)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        params = [s.params for s in seqs]
        uniforms = [0.0 if p.temperature == 0 else s.rng.random() for s, p in zip(seqs, params)]
        tokens, logprobs = sample(logits, params, uniforms)
        max_len = self.config.max_seq_len
        for seq, token, logprob in zip(seqs, tokens, logprobs):
            seq.append_token(token, logprob, max_len)
        self.stats.num_generated_tokens += len(seqs)
