"""Owns the local engine loop: continuous batching of `Request`s over an HF Llama in torch.

One `step` = admit queued requests and prefill them in one padded forward (their first token
is sampled from it) + one decode forward for every sequence already running. Finished
requests leave the batch at the end of the step; queued ones join at the next.

Per-step host work does not grow with the batch: the running sequences' state lives in
`RunningRows` arrays (row i = running[i] = KV slot i), sampling runs on the logits' device for the
whole batch, and one device -> host transfer brings back every token and log-prob; only
sequences that join, finish or move cost Python.

    >>> from apr.model.config import ModelConfig, build_model
    >>> from apr.engine.base import Request, SamplingParams
    >>> model = build_model(ModelConfig.preset("tiny"), vocab_size=100)
    >>> engine = LocalEngine(model, LocalEngineConfig(max_batch_size=8, max_seq_len=64))
    >>> engine.submit(Request("a", [2, 5, 9], SamplingParams(temperature=0.0, max_new_tokens=4)))
    >>> [c.finish_reason for c in engine.run_until_done()]
    ['length']
"""

from __future__ import annotations

import copy
import random
import time

import numpy as np
import torch

from apr.config import check
from apr.engine import kv_budget
from apr.engine.base import Completion, EngineStats, FinishReason, Request, validate_request
from apr.engine.cuda_graph import StaticDecode
from apr.engine.kv_cache import KVCache
from apr.engine.llama import ForwardBatch, LlamaRunner
from apr.engine.local_config import DTYPES, LocalEngineConfig, check_device_available
from apr.engine.rows import RunningRows
from apr.engine.sampler import Sampled, SampleRows, fetch, sample, to_device
from apr.engine.scheduler import Scheduler
from apr.engine.sequence import SeqStatus, Sequence

__all__ = ["LocalEngine", "LocalEngineConfig", "check_device_available"]


class LocalEngine:
    """Continuous-batching engine over an HF `LlamaForCausalLM` (see the module docstring).

    A model already on `config.device` in `config.dtype` is used as it is: its weights are read by
    reference at every step, so in-place updates between steps take effect at once. Any other model is
    copied and the copy moved and cast (the caller's model is never changed; update the engine's copy,
    `engine.model`, e.g. with `apr.rl.weights.load_buckets`).
    """

    def __init__(self, model, config: LocalEngineConfig | None = None) -> None:
        self.config = config = config or LocalEngineConfig()
        # here, not in the config: a CPU-only head node composes and ships GPU configs to its workers
        check_device_available(config.device, "engine.device")
        check(config.max_seq_len is not None, "engine.max_seq_len", None,
              "a positive integer (null is only a placeholder the commands fill with their thread window)")
        dtype = DTYPES[config.dtype]
        self.device = torch.device(config.device)
        self.model = _engine_model(model, self.device, dtype)
        mcfg = model.config
        head_dim = getattr(mcfg, "head_dim", None) or mcfg.hidden_size // mcfg.num_attention_heads
        self.vocab_size = mcfg.vocab_size
        per_position = KVCache.bytes_per_position(mcfg.num_hidden_layers, mcfg.num_key_value_heads, head_dim, dtype)
        positions = kv_budget.budget_positions(config.kv_memory, config.num_slots or 2 * config.max_batch_size,
                                               config.max_seq_len, per_position, self.device)
        self.kv = KVCache(mcfg.num_hidden_layers, mcfg.num_key_value_heads, head_dim, dtype, self.device,
                          positions, config.max_seq_len, max_slots=config.num_slots)
        self.runner = LlamaRunner(self.model, self.kv, compile=config.compile)
        self.rows = RunningRows(config.max_batch_size, config.max_seq_len)
        self.scheduler = Scheduler(self.kv, config.max_batch_size, config.max_prefill_tokens,
                                   lambda: self.rows.max_num_tokens(len(self.scheduler.running)))
        # CUDA-graph decode: not with torch.compile (its dynamic-shape code is not captured here)
        is_graphed = config.cuda_graphs and self.device.type == "cuda" and not config.compile
        self.static_decode = StaticDecode(self.runner, self.kv, config.max_batch_size, True) if is_graphed else None
        self.stats = EngineStats()
        self._seed_rng = random.Random(config.seed)
        self._ready: list[Completion] = []  # finished outside a forward (abort, too long), returned next step
        self._aborting: list[Sequence] = []  # running sequences `abort` was called for
        self._timers: list = []  # CUDA events around this step's forwards
        self._active: set[str] = set()  # ids of queued and running sequences

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: str | None = None, **config) -> LocalEngine:
        """Load an HF Llama directory. Example: `LocalEngine.from_pretrained("runs/sft/model", max_batch_size=32)`."""
        from transformers import LlamaForCausalLM

        from apr.model.integrity import check_finite_weights

        cfg = LocalEngineConfig(device=device, dtype=dtype, **config)
        model = LlamaForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype])
        check_finite_weights(model, path, "model")
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
                              self._seed(request.params.seed, 0))
            group = [seq]
        else:
            group = []
            for i, seq_id in enumerate(request.sample_ids()):
                group.append(Sequence(seq_id, list(request.prompt_ids), request.params, request.keep_cache,
                                      self._seed(request.params.seed, i), request_id=request.request_id))
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
            completions, self._ready = self._ready, []
            aborted = sorted((s for s in self._aborting if s.status is SeqStatus.RUNNING), key=lambda s: s.slot)
            self._aborting = []
            for seq in aborted:
                seq.finish_reason = FinishReason.ABORT
            completions += [self._end(s) for s in aborted]
            self.rows.move(self.scheduler.retire(aborted))
            for seq in self.scheduler.make_room():  # preempted: recomputed later, out of the batch now
                self.rows.detach(seq)
            self._maybe_regroup_rows()
            completions += self._advance()
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
            if request_id in (seq.seq_id, seq.request_id) and not seq.is_abort_requested:
                seq.is_abort_requested = True
                self._aborting.append(seq)
        if request_id in self.scheduler.suspended:
            self.scheduler.release(request_id)

    # ---- internals -------------------------------------------------------------------------

    def _validate(self, request: Request) -> None:
        validate_request(request, self._active, self.scheduler.suspended, self.vocab_size)
        num_slots = self.kv.slots_at(self.kv.row_len_for(len(request.prompt_ids) + 1))
        check(request.n <= min(self.config.max_batch_size, num_slots), "request.n", request.n,
              f"at most engine.max_batch_size and the {num_slots} KV slots of this prompt's length "
              "(engine.num_slots, engine.kv_memory)")

    def _seed(self, seed: int | None, index: int) -> int:
        """A sample's effective seed: the request's plus its index, or a draw from the engine's seed."""
        return self._seed_rng.getrandbits(63) if seed is None else seed + index

    def _end(self, seq: Sequence) -> Completion:
        """Mark a sequence leaving the batch as suspended (KV kept) or finished."""
        if seq.rows is not None:
            self.rows.detach(seq)
        keep = seq.keep_cache and seq.finish_reason != FinishReason.ABORT
        seq.status = SeqStatus.SUSPENDED if keep else SeqStatus.FINISHED
        self._active.discard(seq.seq_id)
        return seq.to_completion()

    def _advance(self) -> list[Completion]:
        """Admit, prefill and decode; sample every row; one transfer; record, and retire what finished."""
        num_old = len(self.scheduler.running)  # rows [0, num_old) decode; admitted ones follow
        self.rows.begin_step(num_old)
        # rows [0, num_old)'s sampling rows and longest row, before admission adds rows
        decoding = self.rows.sample_rows(0, num_old, is_all=True) if num_old else None
        max_kv_len = self.rows.max_num_tokens(num_old)
        groups = self.scheduler.admit()
        parts = [self._prefill(groups, num_old)] if groups else []
        if num_old:
            parts.insert(0, self._decode(num_old, decoding, max_kv_len))
        if not parts:
            return []
        tokens, logprobs = fetch(parts)  # the step's one device -> host transfer
        self._read_timers()
        self.stats.num_generated_tokens += len(tokens)
        done = self.rows.record(num_old, len(self.scheduler.running), tokens, logprobs)
        completions = [self._end(s) for s in done]
        self.rows.move(self.scheduler.retire(done))
        return completions

    def _forward(self, batch: ForwardBatch | None, decode: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> torch.Tensor:
        """Run `batch`, or a fixed-shape decode of (token ids, positions) on `static_decode`.

        On CUDA the forward is timed with events, read after the step's transfer (`_read_timers`):
        a synchronize here would stall the host instead of letting it queue the sampling kernels.
        """
        is_cuda = self.device.type == "cuda"
        if is_cuda:
            timer = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            timer[0].record()
        start = time.perf_counter()
        if batch is None:
            logits = self.static_decode.forward(*decode)  # (B, V)
        else:
            logits = self.runner.forward(batch)  # (B, V)
        if is_cuda:
            timer[1].record()
            self._timers.append(timer)
        else:
            self.stats.forward_s += time.perf_counter() - start
        self.stats.num_forward_calls += 1
        return logits

    def _read_timers(self) -> None:
        """Add the CUDA forwards' GPU spans (launch gaps included) to `forward_s`; their events are done."""
        for begin, end in self._timers:
            self.stats.forward_s += begin.elapsed_time(end) / 1e3
        self._timers = []

    def _prefill(self, groups: list[list[Sequence]], start: int) -> Sampled:
        """Prefill the admitted groups (now rows [start, ...)) in one forward; sample their first tokens."""
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
        # batch rows: the leaders (in group order), then every group's followers (`Scheduler._place`)
        rows = list(range(len(groups)))
        for r, group in enumerate(groups):
            leader = group[0]
            if not leader.output_ids:  # else a preempted sequence, recomputed mid-request: counts stand
                # a continuation's first pending position is its last sampled token, not a prompt token
                leader.num_prompt_tokens = leader.num_pending - (1 if leader.is_continuation else 0)
            leader.num_cached = leader.num_tokens
            for follower in group[1:]:  # n samples: share the prompt KV instead of recomputing it
                self.kv.copy(leader.slot, follower.slot, leader.num_tokens)
                follower.num_cached = follower.num_cached_at_start = leader.num_tokens
            rows += [r] * (len(group) - 1)
        seqs = self.scheduler.running[start:]
        cached = sum(s.num_cached_at_start for s in seqs if not s.output_ids)  # not a preempted one again
        self.stats.num_cached_tokens += cached
        if len(rows) > len(groups):
            logits = logits[torch.tensor(rows, device=self.device)]  # (N, V): followers reuse their leader's row
        self.rows.attach(seqs, start)
        return sample(logits, self.rows.sample_rows(start, start + len(seqs)))

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
        lens = (self.rows.position[:len(running)] + 1).tolist()  # cached + the pending token
        now = sum((b - a) * n for a, b, n in self._chunks(lens))
        best = sum((b - a) * n for a, b, n in self._chunks(sorted(lens, reverse=True)))
        if now - best < 0.05 * best:
            return
        sources, num_moved = self.scheduler.plan_regroup(rows, lens)
        if 8 * (now - best) > 2 * num_moved * max(lens):
            self.scheduler.regroup(sources)
            self.rows.permute(sources)
            self.stats.num_regroups += 1

    def _decode(self, num: int, rows: SampleRows, max_kv_len: int) -> Sampled:
        """One decode forward for the running rows [0, num) (longest: max_kv_len); sample with `rows`."""
        self.stats.num_decode_tokens += num
        last, pos = self.rows.inputs(num)  # (B,) each
        if self.static_decode is not None and self.static_decode.can_run(num):
            return sample(self._forward(None, (last, pos)), rows)  # (B, V) logits
        ids = to_device(last, self.device)[:, None]  # (B, 1)
        positions = to_device(pos, self.device)[:, None]  # (B, 1)
        kv_len = positions[:, 0] + 1  # (B,)
        chunks = None
        if 0 < self.config.attention_chunk_rows < num:
            chunks = self._chunks((pos + 1).tolist())
            # extra attention calls cost ~10 us each: chunk only when it skips >10% of the KV reads
            if sum((b - a) * n for a, b, n in chunks) >= 0.9 * num * max_kv_len:
                chunks = None
        batch = ForwardBatch(ids, positions, 0, kv_len, max_kv_len,
                             torch.zeros(num, dtype=torch.long, device=self.device), chunks=chunks)
        return sample(self._forward(batch), rows)  # (B, V) logits


def _engine_model(model, device: torch.device, dtype: torch.dtype):
    """`model` itself when every parameter is on `device` in `dtype`, else a moved and cast copy."""
    def on_device(p) -> bool:  # "cuda" means the current CUDA device
        return p.device.type == device.type and (device.index is None or p.device.index == device.index)

    if all(on_device(p) and p.dtype == dtype for p in model.parameters()):
        return model
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()
