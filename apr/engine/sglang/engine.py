"""Owns `SGLangEngine`: the `Engine` interface (submit / step) over SGLang servers' `/generate`, requests on a thread pool.

SGLang has no suspended sequence, so the engine keeps each kept request's full ids (prompt +
generated) until `release`, and a continuation sends them all again plus the appended ids: the
server's radix cache reuses the prefix (reported as `cached_tokens`), and a resumed sequence stays
on the server that holds it. Requests run on a thread pool, at most `max_inflight` at once;
`submit` never blocks.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from apr.config import ConfigError, from_dict
from apr.engine.base import Completion, EngineStats, FinishReason, Request, validate_request
from apr.engine.sglang.client import HttpClient, check_served_dtype, check_servers
from apr.engine.sglang.config import SGLangEngineConfig, SGLangError
from apr.engine.sglang.launch import ServerHandle, launch_server, server_args
from apr.engine.sglang.rl_methods import RLMethods
from apr.engine.sglang.weights import WeightUpdater
from apr.engine.sglang.wire import Seq, SeqStatus, completion, payload

log = logging.getLogger(__name__)


class SGLangEngine(RLMethods):
    """The `Engine` interface over one or more SGLang servers (see `apr.engine.sglang`)."""

    def __init__(self, config: SGLangEngineConfig | None = None, vocab_size: int | None = None,
                 servers: Sequence[ServerHandle] = (), model_path: str | None = None) -> None:
        self.config = cfg = config or SGLangEngineConfig()
        self.model_path = model_path  # the checkpoint served: `load_weights` copies its config files
        self.vocab_size = vocab_size  # prompt ids are checked against it when known
        self.servers = list(servers)  # launched by `from_pretrained`, stopped by `close`
        self.stats = EngineStats()
        self.policy_version = 0  # the weight version the servers hold (`update_weights_*`)
        self._expected_version: str | None = None  # what answers must say since the first sync
        self._synced_path: str | None = None  # the checkpoint of the last disk sync (re-sent to a restarted server)
        self.num_stale_answers = 0  # answers of a server serving other weights than the last sync's: discarded
        self._resynced: set[str] = set()  # servers loaded again since the last sync
        self._client = HttpClient(cfg)
        self._check_health()
        self.server_info = check_servers(self._client, cfg)  # by URL: version, server args
        check_served_dtype(self.server_info, cfg.dtype, model_path)
        self.honours_seeds = all(i.get("enable_deterministic_inference") for i in self.server_info.values())
        self._pool = ThreadPoolExecutor(cfg.max_inflight, thread_name_prefix="apr-sglang")
        self._done: queue.SimpleQueue = queue.SimpleQueue()  # (seq, response | None | exception) from workers
        self._live: dict[str, Seq] = {}  # in flight
        self._kept: dict[str, Seq] = {}
        self._ready: list[Completion] = []  # finished without a call (abort, too long), returned next step
        self._load = dict.fromkeys(cfg.urls, 0)  # requests in flight per server
        self._next_url = 0
        self._seeds = random.Random()  # seeds for requests without one (a server applies 42 to those)
        self._tag = uuid.uuid4().hex[:8]  # makes rids unique across clients sharing a server
        self._weights = WeightUpdater(cfg, self._client, self._tag)
        self._warned_seeds = False

    @classmethod
    def from_pretrained(cls, path: str, **options) -> SGLangEngine:
        """Serve checkpoint `path`: `SGLangEngine.from_pretrained("runs/sft/x/final", urls=[...])`.

        The servers must serve the same checkpoint (or `launch=True` starts them with it). The
        checkpoint's config.json gives the vocabulary size and the default `context_len`.
        """
        cfg = from_dict(SGLangEngineConfig, options, "engine")
        model_cfg = json.loads((Path(path) / "config.json").read_text())
        if cfg.context_len is None:
            cfg.context_len = model_cfg.get("max_position_embeddings")
        servers = []
        try:
            if cfg.launch:
                for url in cfg.urls:
                    servers.append(launch_server(path, urlparse(url).port, server_args(cfg), urlparse(url).hostname,
                                                 cfg.launch_command or None, cfg.launch_timeout_s))
            return cls(cfg, model_cfg.get("vocab_size"), servers, str(path))
        except BaseException:
            for s in servers:
                s.stop()
            raise

    # ---- the Engine interface --------------------------------------------------------------
    def submit(self, request: Request, url: str | None = None) -> None:
        """Queue a request and return at once (`url` pins a new sequence to one server). Bad requests raise
        `ConfigError`. Every request carries a seed (drawn when it has none); servers apply it only when
        started with --enable-deterministic-inference (`engine.deterministic`), else sampling is not
        reproducible, whatever the seed."""
        validate_request(request, self._live, self._kept, self.vocab_size)
        if request.params.seed is not None and request.params.temperature > 0 and not self.honours_seeds:
            self._warn_seeds()
        if request.resume_id is not None:
            seq = self._kept.pop(request.resume_id)
            seq.seq_id = seq.request_id = request.request_id
            seq.token_ids += request.prompt_ids
            seq.keep_cache, seq.status, seq.stop, seq.submit_s = (request.keep_cache, SeqStatus.INFLIGHT,
                                                                 threading.Event(), time.perf_counter())
            group = [seq]
        else:  # n samples: n requests to one server (its radix cache shares the prompt), seeds seed + i
            url = url or self._pick_url()
            group = [Seq(sid, request.request_id, list(request.prompt_ids), url, {}, request.keep_cache)
                     for sid in request.sample_ids()]
        seed = self._seeds.getrandbits(31) if request.params.seed is None else request.params.seed
        for i, seq in enumerate(group):
            max_new = self._max_new_tokens(len(seq.token_ids), request.params.max_new_tokens)
            if max_new < 1:  # no room left below the context length: as the local engine, "length"
                self._ready.append(Completion(seq.seq_id, [], [], FinishReason.LENGTH, 0, 0))
                continue
            seq.payload = payload(seq.token_ids, request.params, max_new, seed + i)
            self._dispatch(seq)

    def _dispatch(self, seq: Seq) -> None:
        seq.expected_version = self._expected_version
        self._live[seq.seq_id] = seq
        self._load[seq.url] += 1
        seq.future = self._pool.submit(self._work, seq)

    def step(self) -> list[Completion]:
        """Wait until at least one request finished (or return [] if none is in flight)."""
        start = time.perf_counter()
        out, self._ready = self._ready, []
        while not out and self._live:  # a stale answer is sent again: wait for the next one
            out += self._collect(self._next_done())
        while True:
            try:
                out += self._collect(self._done.get_nowait())
            except queue.Empty:
                break
        self.stats.num_steps += 1
        self.stats.step_s += time.perf_counter() - start
        return out

    def has_work(self) -> bool:
        return bool(self._ready or self._live)

    def run_until_done(self) -> list[Completion]:
        out: list[Completion] = []
        while self.has_work():
            out += self.step()
        return out

    def release(self, request_id: str) -> None:
        """Forget the ids kept for `request_id` (a no-op for unknown ids)."""
        self._kept.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        """End a queued or in-flight request (or all samples of an n-request) with "abort".

        A queued one is cancelled locally; an in-flight one gets `POST /abort_request`, and its
        completion (tokens so far) comes out of a later `step`. Kept ids are released.
        """
        for seq in [s for s in self._live.values() if request_id in (s.seq_id, s.request_id)]:
            seq.stop.set()
            if seq.future.cancel():  # never started
                self._finish(seq)
                self._ready.append(Completion(seq.seq_id, [], [], FinishReason.ABORT, 0, 0))
            else:  # in the background: a dead server must not stall the caller through retries
                threading.Thread(target=self._abort_on_server, args=(seq,), daemon=True).start()
        self.release(request_id)

    def close(self) -> None:
        """Cancel queued requests, destroy the weight-sync group (servers, then here), stop launched servers,
        remove `load_weights` files (idempotent)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._weights.close()
        for s in self.servers:
            s.stop()

    def __enter__(self) -> SGLangEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ---------------------------------------------------------------------------
    def _check_health(self) -> None:
        for url in self.config.urls:
            try:
                self._client.call("GET", url, "/health", timeout_s=min(self.config.timeout_s, 30.0))
            except SGLangError as e:
                raise ConfigError(f"engine.urls: {url} is not a healthy SGLang server ({e}); start one with "
                                  "`python -m sglang.launch_server --model-path DIR --port P --skip-tokenizer-init` "
                                  "or set engine.launch=true") from None

    def _warn_seeds(self) -> None:
        if not self._warned_seeds:
            self._warned_seeds = True
            warnings.warn(f"{self.config.urls}: servers without --enable-deterministic-inference ignore "
                          "sampling_seed, so seeded sampling is not reproducible (engine.deterministic)", stacklevel=3)

    def _max_new_tokens(self, num_input: int, wanted: int) -> int:
        """SGLang rejects input + max_new_tokens >= context length: clamp instead."""
        if self.config.context_len is None:
            return wanted
        return min(wanted, self.config.context_len - 1 - num_input)

    def _pick_url(self) -> str:
        """The least-loaded server; ties go round robin."""
        urls = self.config.urls
        order = urls[self._next_url:] + urls[:self._next_url]
        url = min(order, key=self._load.__getitem__)
        self._next_url = (urls.index(url) + 1) % len(urls)
        return url

    def _work(self, seq: Seq) -> None:
        """On a pool thread: one /generate call (with retries); always reports to `_done`."""
        try:
            self._done.put((seq, self._client.call("POST", seq.url, "/generate", lambda: self._fresh_rid(seq),
                                                   stop=seq.stop)))
        except BaseException as e:  # noqa: B036 - `step` re-raises it on the caller's thread
            self._done.put((seq, e))

    def _fresh_rid(self, seq: Seq) -> dict:
        """The /generate body with a new rid: a retry must not collide with a half-dead first attempt."""
        seq.rid = f"{self._tag}-{seq.seq_id}-{uuid.uuid4().hex[:6]}"
        return {**seq.payload, "rid": seq.rid}

    def _abort_on_server(self, seq: Seq) -> None:
        if not seq.rid:  # its worker has not sent it yet, and now never will
            return
        try:
            self._client.call("POST", seq.url, "/abort_request", {"rid": seq.rid}, timeout_s=10.0)
        except SGLangError:
            pass  # it may have finished meanwhile; its completion arrives either way

    def _next_done(self):
        while True:  # a timeout keeps Ctrl-C working while waiting
            try:
                return self._done.get(timeout=0.5)
            except queue.Empty:
                continue

    def _finish(self, seq: Seq) -> None:
        self._live.pop(seq.seq_id, None)
        self._load[seq.url] -= 1

    def _collect(self, item) -> list[Completion]:
        """The finished call as a completion ([] when its answer was stale and the call was sent again)."""
        seq, body = item
        self._finish(seq)
        if isinstance(body, BaseException):
            if not seq.stop.is_set():
                raise body
            body = None  # aborted: a rejected or dropped call is just the end of it
        if body is None:
            return [Completion(seq.seq_id, [], [], FinishReason.ABORT, 0, 0,
                               finished_s=time.perf_counter() - seq.submit_s)]
        served = (body.get("meta_info") or {}).get("weight_version")
        if (seq.expected_version is not None and served is not None and str(served) != seq.expected_version
                and not seq.stop.is_set()):
            self._resync(seq.url, str(served), seq.expected_version)
            self.num_stale_answers += 1
            self._dispatch(seq)  # the same request again, on the synced weights
            return []
        return [self._completed(seq, body)]

    def _resync(self, url: str, served: str, expected: str) -> None:
        """A server answered with other weights than the last sync's: it restarted (it serves its launch
        checkpoint). Disk sync: load the last synced checkpoint into it again (once; its later stale
        answers are re-sent too). Distributed sync: what it lost cannot be sent again from here."""
        if self._expected_version != expected:  # a newer sync since this call was sent: nothing to repair
            return
        if self.config.weight_sync == "disk" and self._synced_path is not None:
            if url not in self._resynced:
                log.warning("%s serves weight version %r, not %s: it restarted; loading %s into it again",
                            url, served, expected, self._synced_path)
                self._weights.from_disk(self._synced_path, int(expected), urls=[url])
                self._resynced.add(url)
            return
        raise SGLangError(f"{url} serves weight version {served!r}, but version {expected} was synced: the server "
                          "restarted and lost the broadcast weights; resume=true from the run's last checkpoint, "
                          "or use engine.weight_sync=disk (a restarted server is then synced again by itself)")

    def _synced(self, version: int, path: str | None = None) -> None:
        """Every server holds `version` now (loaded from `path`, or broadcast when None)."""
        self.policy_version = version
        self._expected_version = str(version)
        self._synced_path = None if path is None else str(path)
        self._resynced: set[str] = set()

    def _completed(self, seq: Seq, body: dict) -> Completion:
        c = completion(seq.seq_id, body, time.perf_counter() - seq.submit_s, seq.url)
        if seq.stop.is_set():  # aborted, even if the server finished it first (as the local engine does)
            c.finish_reason = FinishReason.ABORT
        if seq.keep_cache and c.finish_reason != FinishReason.ABORT:
            seq.token_ids += c.output_ids
            seq.status = SeqStatus.KEPT
            self._kept[seq.seq_id] = seq
        self.stats.num_generated_tokens += len(c.output_ids)
        self.stats.num_prefill_tokens += c.num_prompt_tokens
        self.stats.num_cached_tokens += c.num_cached_tokens
        return c
