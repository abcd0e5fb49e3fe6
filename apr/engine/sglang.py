"""Owns the `sglang` engine: the `Engine` interface over stock SGLang servers' native HTTP API.

Token ids both ways (`POST /generate` with `input_ids`, read `output_ids` and
`meta_info.output_token_logprobs`); no text round trip. SGLang has no suspended sequence, so
the engine keeps each kept request's full ids (prompt + generated) until `release`, and a
continuation sends them all again plus the appended ids: the server's radix cache reuses the
prefix (reported as `num_cached_tokens`), and a resumed sequence stays on the server that holds
it. Requests run on a thread pool, at most `max_inflight` at once; `submit` never blocks.

    # start a server (GPU):  python -m sglang.launch_server --model-path DIR --port 30000 --skip-tokenizer-init
    >>> from apr.engine.base import Request, SamplingParams
    >>> engine = SGLangEngine(SGLangEngineConfig(urls=["http://127.0.0.1:30000"]))  # doctest: +SKIP
    >>> engine.submit(Request("a", [2, 5, 9], SamplingParams(temperature=0.0, max_new_tokens=4)))  # doctest: +SKIP
    >>> [c.finish_reason for c in engine.run_until_done()]  # doctest: +SKIP
    ['length']

Or let it launch the servers: `SGLangEngine.from_pretrained(DIR, urls=[...], launch=True)`.
RL weight updates (`load_weights`) go through the disk (`update_weights_from_disk`) or, with
`weight_sync="distributed"`, over a process group with the servers (`broadcast_weights`).
Differences from `local`: SGLang also stops at the model's own eos id (`ignore_eos` would turn
`stop_token_ids` off too), and its log-probs are of the raw distribution only when the server
runs with `SGLANG_RETURN_ORIGINAL_LOGPROB=1` (set by `launch_server`; otherwise they are taken
after temperature scaling, which is the same thing at temperature 0 or 1).
"""

from __future__ import annotations

import atexit
import enum
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from apr.config import ConfigError, check, from_dict
from apr.engine.base import Completion, EngineStats, FinishReason, Request

_RETURN_ORIGINAL_LOGPROB = {"SGLANG_RETURN_ORIGINAL_LOGPROB": "1", "RETURN_ORIGINAL_LOGPROB": "1"}


class SGLangError(RuntimeError):
    """A server did not answer (after retries) or rejected a request; the message names the URL."""


@dataclass
class SGLangEngineConfig:
    """Where the servers are and how hard to try (validated; errors name `engine.<field>`)."""

    urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:30000"])  # several = data parallel
    max_inflight: int = 256  # HTTP requests in flight over all servers (more wait in a queue)
    timeout_s: float = 600.0  # one /generate call, i.e. one whole thread segment
    max_retries: int = 3  # retries of a call after a connection error or an HTTP 5xx
    backoff_s: float = 0.5  # wait before the first retry; doubles with each further retry
    # the servers' context length: prompt + new tokens are kept below it (SGLang rejects the rest);
    # None: no clamping (`from_pretrained` reads max_position_embeddings from the checkpoint)
    context_len: int | None = None
    launch: bool = False  # `from_pretrained` starts a server on every URL's port (stopped at exit)
    launch_command: list[str] = field(default_factory=list)  # []: [python, -m, sglang.launch_server]
    launch_args: list[str] = field(default_factory=list)  # extra server arguments, e.g. [--tp-size, 2]
    launch_timeout_s: float = 600.0  # wait for a launched server's /health
    # where `load_weights` writes checkpoints for the servers to read (null: the system temp dir)
    weights_dir: str | None = None
    # how `load_weights` (the RL loop's weight sync) reaches the servers: "disk" writes an HF checkpoint
    # under weights_dir and calls /update_weights_from_disk; "distributed" broadcasts the tensors over a
    # process group whose rank 0 is this client (/init_weights_update_group once, then
    # /update_weights_from_distributed per bucket): NCCL between GPUs of one node or a fast network
    weight_sync: str = "disk"
    weight_sync_backend: str = "nccl"  # nccl (CUDA tensors) or gloo (CPU tensors; what the tests use)
    # this process's address as the servers reach it for the group's rendezvous (null: 127.0.0.1 when
    # every server is local, else this host's IP)
    weight_sync_address: str | None = None
    ranks_per_server: int = 1  # each server's GPUs (its --tp-size): its ranks in the weight-sync group

    def __post_init__(self) -> None:
        urls = self.urls
        check(isinstance(urls, (list, tuple)) and len(urls) > 0 and all(
            isinstance(u, str) and urlparse(u).scheme in ("http", "https") and urlparse(u).netloc for u in urls),
              "engine.urls", urls, "a non-empty list of http(s)://host:port URLs")
        self.urls = [u.rstrip("/") for u in urls]
        check(len(set(self.urls)) == len(urls), "engine.urls", urls, "distinct URLs")
        for name, low in (("max_inflight", 1), ("max_retries", 0)):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= low, f"engine.{name}", value,
                  f"an integer >= {low}")
        for name in ("timeout_s", "launch_timeout_s", "backoff_s"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and (value > 0 or name == "backoff_s" and value == 0),
                  f"engine.{name}", value, "a positive number of seconds" + (" or 0" if name == "backoff_s" else ""))
        check(self.context_len is None or (isinstance(self.context_len, int) and self.context_len >= 2),
              "engine.context_len", self.context_len, "null or an integer >= 2")
        for name in ("launch_command", "launch_args"):
            value = getattr(self, name)
            check(isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value), f"engine.{name}",
                  value, "a list of strings")
        check(isinstance(self.launch, bool), "engine.launch", self.launch, "true or false")
        check(self.weight_sync in ("disk", "distributed"), "engine.weight_sync", self.weight_sync,
              "disk or distributed")
        check(self.weight_sync_backend in ("nccl", "gloo"), "engine.weight_sync_backend", self.weight_sync_backend,
              "nccl or gloo")
        check(isinstance(self.ranks_per_server, int) and not isinstance(self.ranks_per_server, bool)
              and self.ranks_per_server >= 1, "engine.ranks_per_server", self.ranks_per_server,
              "an integer >= 1 (each server's tensor-parallel size)")
        if self.launch:
            remote = [u for u in self.urls if urlparse(u).hostname not in ("127.0.0.1", "localhost", "0.0.0.0")]
            check(not remote and all(urlparse(u).port for u in self.urls), "engine.urls", self.urls,
                  "local URLs with explicit ports (http://127.0.0.1:PORT) when engine.launch is true")


# ---- HTTP with retries ---------------------------------------------------------------------------


class _Client:
    """POSTs / GETs with exponential backoff on connection errors and 5xx; one session per thread."""

    def __init__(self, cfg: SGLangEngineConfig) -> None:
        self.cfg = cfg
        self._local = threading.local()

    def _session(self):
        import requests  # lazily: `import apr` stays light

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def call(self, method: str, url: str, path: str, body=None, timeout_s: float | None = None,
             stop: threading.Event | None = None) -> dict | None:
        """The JSON answer ({} if empty); None if `stop` was set before an attempt went out.

        `body` is a dict, or a function making each attempt's body.
        """
        import requests

        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt and (stop or threading.Event()).wait(self.cfg.backoff_s * 2 ** (attempt - 1)):
                return None
            if stop is not None and stop.is_set():
                return None
            try:
                r = self._session().request(method, url + path, json=body() if callable(body) else body,
                                           timeout=timeout_s or self.cfg.timeout_s)
            except requests.ConnectionError as e:  # refused, reset, or the server died mid-request
                last = f"connection failed: {type(e).__name__}"
                continue
            except requests.Timeout:
                raise SGLangError(f"{url}{path}: no answer within {timeout_s or self.cfg.timeout_s} s "
                                  "(engine.timeout_s)") from None
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                continue
            if r.status_code >= 400:
                raise SGLangError(f"{url}{path}: HTTP {r.status_code}: {r.text[:500]}")
            return r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else {}
        raise SGLangError(f"{url}{path}: no answer after {self.cfg.max_retries + 1} attempts (last: {last}); is a "
                          "healthy SGLang server running there? (engine.urls, engine.max_retries)")


# ---- per-sequence state ---------------------------------------------------------------------------


class SeqStatus(enum.Enum):
    INFLIGHT = 1  # handed to the pool: waiting for a worker or in a /generate call
    KEPT = 2  # finished with keep_cache: its full ids wait for a `resume_id` or `release`


@dataclass(eq=False)
class _Seq:
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
    stop: threading.Event = field(default_factory=threading.Event)  # abort requested
    submit_s: float = field(default_factory=time.perf_counter)


class SGLangEngine:
    """The `Engine` interface over one or more SGLang servers (see the module docstring)."""

    def __init__(self, config: SGLangEngineConfig | None = None, vocab_size: int | None = None,
                 servers: Sequence[ServerHandle] = (), model_path: str | None = None) -> None:
        self.config = cfg = config or SGLangEngineConfig()
        self.model_path = model_path  # the checkpoint served: `load_weights` copies its config files
        self.vocab_size = vocab_size  # prompt ids are checked against it when known
        self.servers = list(servers)  # launched by `from_pretrained`, stopped by `close`
        self.stats = EngineStats()
        self.policy_version = 0  # the weight version the servers hold (`update_weights_*`)
        self._client = _Client(cfg)
        self._check_health()
        self._pool = ThreadPoolExecutor(cfg.max_inflight, thread_name_prefix="apr-sglang")
        self._done: queue.SimpleQueue = queue.SimpleQueue()  # (seq, response | None | exception) from workers
        self._live: dict[str, _Seq] = {}  # in flight
        self._kept: dict[str, _Seq] = {}
        self._ready: list[Completion] = []  # finished without a call (abort, too long), returned next step
        self._load = dict.fromkeys(cfg.urls, 0)  # requests in flight per server
        self._next_url = 0
        self._tag = uuid.uuid4().hex[:8]  # makes rids unique across clients sharing a server
        self._update_group = None  # the weight-sync process group (`weight_sync=distributed`), made on first use

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
                    servers.append(launch_server(path, urlparse(url).port, cfg.launch_args, host=urlparse(url).hostname,
                                                 command=cfg.launch_command or None, timeout_s=cfg.launch_timeout_s))
            return cls(cfg, model_cfg.get("vocab_size"), servers, str(path))
        except BaseException:
            for s in servers:
                s.stop()
            raise

    # ---- the Engine interface --------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request for the thread pool and return at once. Bad requests raise `ConfigError`."""
        self._validate(request)
        if request.resume_id is not None:
            seq = self._kept.pop(request.resume_id)
            seq.seq_id = seq.request_id = request.request_id
            seq.token_ids += request.prompt_ids
            seq.keep_cache, seq.status, seq.stop, seq.submit_s = (request.keep_cache, SeqStatus.INFLIGHT,
                                                                 threading.Event(), time.perf_counter())
            group = [seq]
        else:  # n samples: n requests to one server (its radix cache shares the prompt), seeds seed + i
            url = self._pick_url()
            group = [_Seq(sid, request.request_id, list(request.prompt_ids), url, {}, request.keep_cache)
                     for sid in request.sample_ids()]
        for i, seq in enumerate(group):
            seed = None if request.params.seed is None else request.params.seed + i
            max_new = self._max_new_tokens(len(seq.token_ids), request.params.max_new_tokens)
            if max_new < 1:  # no room left below the context length: as the local engine, "length"
                self._ready.append(Completion(seq.seq_id, [], [], FinishReason.LENGTH, 0, 0))
                continue
            seq.payload = _payload(seq.token_ids, request.params, max_new, seed)
            self._live[seq.seq_id] = seq
            self._load[seq.url] += 1
            seq.future = self._pool.submit(self._work, seq)

    def step(self) -> list[Completion]:
        """Wait until at least one request finished (or return [] if none is in flight)."""
        start = time.perf_counter()
        out, self._ready = self._ready, []
        if not out and self._live:
            out.append(self._collect(self._next_done()))
        while True:
            try:
                out.append(self._collect(self._done.get_nowait()))
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

    def _abort_on_server(self, seq: _Seq) -> None:
        if not seq.rid:  # its worker has not sent it yet, and now never will
            return
        try:
            self._client.call("POST", seq.url, "/abort_request", {"rid": seq.rid}, timeout_s=10.0)
        except SGLangError:
            pass  # it may have finished meanwhile; its completion arrives either way

    # ---- weights -----------------------------------------------------------------------------

    def update_weights_from_disk(self, path: str | Path, version: int) -> None:
        """Load an HF checkpoint directory (readable by every server) in place; flushes the caches."""
        body = {"model_path": str(path), "flush_cache": True, "weight_version": str(version)}
        for url in self.config.urls:
            self._check_success(url, "/update_weights_from_disk", self._client.call(
                "POST", url, "/update_weights_from_disk", body, timeout_s=self.config.timeout_s))
        self.policy_version = version

    def load_weights(self, buckets: list[dict], version: int) -> None:
        """Weights from the learner (name -> tensor dicts, `apr.rl.weights.to_buckets`) into every server.

        `weight_sync=disk`: written as an HF checkpoint (this engine's config files +
        model.safetensors) under `weights_dir`, which every server must be able to read, then
        `update_weights_from_disk`; the previous version's directory is removed.
        `weight_sync=distributed`: broadcast over the weight-sync group (`broadcast_weights`).
        """
        if self.config.weight_sync == "distributed":
            self.broadcast_weights(buckets, version)
            return
        import shutil

        from safetensors.torch import save_file

        if self.model_path is None:
            raise ConfigError("engine: load_weights needs the served checkpoint's directory for its config files; "
                              "build the engine with SGLangEngine.from_pretrained(path, ...)")
        root = self._weights_root
        out = root / f"v{version}"
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "generation_config.json"):
            if (Path(self.model_path) / name).is_file():
                shutil.copy(Path(self.model_path) / name, out / name)
        tensors = {name: t.detach().cpu().contiguous() for bucket in buckets for name, t in bucket.items()}
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        self.update_weights_from_disk(out, version)
        for old in root.iterdir():
            if old != out:
                shutil.rmtree(old, ignore_errors=True)

    def init_weights_update_group(self, master_address: str, master_port: int, world_size: int,
                                  group_name: str = "apr_weights", backend: str = "nccl",
                                  ranks_per_server: int = 1) -> Future:
        """Join every server to a process group whose rank 0 is the trainer (NCCL weight sync).

        The calls block until the trainer joins too, so they run in the background: call this,
        then `torch.distributed.init_process_group(..., rank=0, world_size=world_size)` in the
        trainer, then `.result()`. Server i's ranks start at 1 + i * ranks_per_server (its tp size).
        """
        bodies = {url: {"master_address": master_address, "master_port": master_port, "world_size": world_size,
                        "rank_offset": 1 + i * ranks_per_server, "group_name": group_name, "backend": backend}
                  for i, url in enumerate(self.config.urls)}
        return self._post_all_async("/init_weights_update_group", bodies)

    def update_weights_from_distributed(self, names: list[str], dtypes: list[str], shapes: list[list[int]],
                                        version: int, group_name: str = "apr_weights") -> Future:
        """Announce a broadcast of tensors `names` from trainer rank 0; the servers receive them.

        Call it, broadcast each tensor in order from the trainer, then `.result()`; the servers'
        caches are flushed and `policy_version` is set once every server acknowledged.
        """
        body = {"names": names, "dtypes": dtypes, "shapes": shapes, "group_name": group_name, "flush_cache": True,
                "weight_version": str(version)}
        future = self._post_all_async("/update_weights_from_distributed", dict.fromkeys(self.config.urls, body))
        future.add_done_callback(lambda f: f.exception() is None and setattr(self, "policy_version", version))
        return future

    def broadcast_weights(self, buckets: list[dict], version: int) -> None:
        """Send the weights to every server over a process group whose rank 0 is this client.

        The group is made on first use (`init_weights_update_group`: server i's ranks start at
        1 + i * ranks_per_server). Then, per bucket, `update_weights_from_distributed` announces
        the names, dtypes and shapes and this client broadcasts each tensor in that order; the
        servers load them and flush their caches. `policy_version` is `version` once every server
        acknowledged every bucket.
        """
        import torch

        cfg = self.config
        if cfg.weight_sync_backend == "nccl" and not torch.cuda.is_available():
            raise ConfigError("engine.weight_sync_backend: nccl broadcasts CUDA tensors and this process sees no "
                              "GPU; give the rollout worker one (dist.worker_gpus), or use gloo or weight_sync=disk")
        if self._update_group is None:
            self._update_group = self._join_update_group()
        device = torch.device("cuda") if cfg.weight_sync_backend == "nccl" else torch.device("cpu")
        for bucket in buckets:
            names = list(bucket)
            tensors = [bucket[n].detach().to(device).contiguous() for n in names]
            future = self.update_weights_from_distributed(
                names, [str(t.dtype).removeprefix("torch.") for t in tensors], [list(t.shape) for t in tensors],
                version, group_name=self._update_group_name)
            for t in tensors:
                torch.distributed.broadcast(t, src=0, group=self._update_group)
            future.result(timeout=cfg.timeout_s)
        self.policy_version = version

    def _join_update_group(self):
        import socket

        from apr.sft.strategy import free_port

        cfg = self.config
        local = all(urlparse(u).hostname in ("127.0.0.1", "localhost") for u in cfg.urls)
        address = cfg.weight_sync_address or ("127.0.0.1" if local else socket.gethostbyname(socket.gethostname()))
        port = free_port("")
        world = 1 + len(cfg.urls) * cfg.ranks_per_server
        joined = self.init_weights_update_group(address, port, world, self._update_group_name,
                                                cfg.weight_sync_backend, cfg.ranks_per_server)
        try:
            group = new_update_group(cfg.weight_sync_backend, address, port, world, 0, self._update_group_name,
                                     cfg.timeout_s)
        except Exception as e:
            raise SGLangError(f"engine.weight_sync=distributed: could not form the weight-sync group at "
                              f"{address}:{port} with {cfg.urls}: {e}; set engine.weight_sync_address to an "
                              f"address the servers reach, or use engine.weight_sync=disk") from e
        joined.result(timeout=cfg.timeout_s)
        return group

    @property
    def _update_group_name(self) -> str:
        return f"apr_weights_{self._tag}"

    @property
    def _weights_root(self) -> Path:
        return Path(self.config.weights_dir or tempfile.gettempdir()) / f"apr-sglang-weights-{self._tag}"

    def close(self) -> None:
        """Cancel queued requests, stop launched servers, remove `load_weights` files (idempotent)."""
        import shutil

        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._update_group is not None:
            import torch.distributed

            torch.distributed.destroy_process_group(self._update_group)
            self._update_group = None
        for s in self.servers:
            s.stop()
        shutil.rmtree(self._weights_root, ignore_errors=True)

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

    def _validate(self, request: Request) -> None:
        if not isinstance(request, Request):
            raise ConfigError(f"request: got {type(request).__name__}; accepted: an apr.engine.Request")
        for sid in request.sample_ids():
            is_kept = sid in self._kept and sid != request.resume_id
            check(sid not in self._live and not is_kept, "request.request_id", sid,
                  "an id not used by a queued, in-flight or kept request")
        if request.resume_id is not None:
            check(request.resume_id in self._kept, "request.resume_id", request.resume_id,
                  "the id of a finished request that had keep_cache=True and was not released")
        if self.vocab_size is not None:
            bad = [i for i in request.prompt_ids if i >= self.vocab_size]
            check(not bad, "request.prompt_ids", bad[:5], f"token ids below the vocabulary size {self.vocab_size}")

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

    def _work(self, seq: _Seq) -> None:
        """On a pool thread: one /generate call (with retries); always reports to `_done`."""
        try:
            self._done.put((seq, self._client.call("POST", seq.url, "/generate", lambda: self._fresh_rid(seq),
                                                   stop=seq.stop)))
        except BaseException as e:  # noqa: B036 - `step` re-raises it on the caller's thread
            self._done.put((seq, e))

    def _fresh_rid(self, seq: _Seq) -> dict:
        """The /generate body with a new rid: a retry must not collide with a half-dead first attempt."""
        seq.rid = f"{self._tag}-{seq.seq_id}-{uuid.uuid4().hex[:6]}"
        return {**seq.payload, "rid": seq.rid}

    def _next_done(self):
        while True:  # a timeout keeps Ctrl-C working while waiting
            try:
                return self._done.get(timeout=0.5)
            except queue.Empty:
                continue

    def _finish(self, seq: _Seq) -> None:
        self._live.pop(seq.seq_id, None)
        self._load[seq.url] -= 1

    def _collect(self, item) -> Completion:
        seq, body = item
        self._finish(seq)
        if isinstance(body, BaseException):
            if not seq.stop.is_set():
                raise body
            body = None  # aborted: a rejected or dropped call is just the end of it
        if body is None:
            return Completion(seq.seq_id, [], [], FinishReason.ABORT, 0, 0, finished_s=time.perf_counter() - seq.submit_s)
        c = _completion(seq.seq_id, body, time.perf_counter() - seq.submit_s, seq.url)
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

    def _check_success(self, url: str, path: str, body: dict | None) -> None:
        if body and body.get("success") is False:
            raise SGLangError(f"{url}{path}: {body.get('message', 'failed')}")

    def _post_all_async(self, path: str, bodies: dict[str, dict]) -> Future:
        """POST to every server concurrently in the background; the future holds their answers by URL."""
        future: Future = Future()

        def run() -> None:
            try:
                with ThreadPoolExecutor(len(bodies)) as pool:
                    calls = {url: pool.submit(self._client.call, "POST", url, path, body) for url, body in bodies.items()}
                    out = {url: f.result() for url, f in calls.items()}
                for url, body in out.items():
                    self._check_success(url, path, body)
                future.set_result(out)
            except BaseException as e:  # noqa: B036 - delivered through the future
                future.set_exception(e)

        threading.Thread(target=run, name=f"apr-sglang{path}", daemon=True).start()
        return future


def new_update_group(backend: str, address: str, port: int, world_size: int, rank: int, group_name: str,
                     timeout_s: float):
    """A process group of its own (not the default world) for weight sync, as SGLang's servers make
    theirs in `init_weights_update_group`: TCP rendezvous at address:port, keys under `group_name`.
    Works whether or not this process already belongs to another world (a DeepSpeed learner, say)."""
    from datetime import timedelta

    from torch.distributed import distributed_c10d as c10d

    timeout = timedelta(seconds=timeout_s)
    store, rank, world_size = next(c10d.rendezvous(f"tcp://{address}:{port}", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    group, _ = c10d._new_process_group_helper(world_size, rank, [], backend, c10d.PrefixStore(group_name, store),
                                              group_name=group_name, timeout=timeout)
    c10d._world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def _payload(input_ids: list[int], params, max_new_tokens: int, seed: int | None) -> dict:
    """The /generate body: token ids in, stop tokens kept in the output, output log-probs only."""
    sampling = {"max_new_tokens": max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
                "top_k": params.top_k if params.top_k > 0 else -1, "stop_token_ids": list(params.stop_token_ids),
                "skip_special_tokens": False, "no_stop_trim": True}
    if seed is not None:
        sampling["sampling_seed"] = seed
    return {"input_ids": list(input_ids), "sampling_params": sampling, "return_logprob": True,
            "logprob_start_len": -1}


def _completion(seq_id: str, body: dict, elapsed_s: float, url: str) -> Completion:
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


# ---- launching servers -----------------------------------------------------------------------


@dataclass
class ServerHandle:
    """A launched server process; `stop()` (also at exit, or leaving a `with` block) ends it."""

    url: str
    process: subprocess.Popen
    log_path: str  # the server's stdout + stderr
    is_temp_log: bool = False  # a temp file: removed by `stop` (kept when the launch failed)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group (SGLang forks schedulers), SIGKILL if it lingers."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        if self.is_temp_log:
            Path(self.log_path).unlink(missing_ok=True)

    def log_tail(self, num_chars: int = 2000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch_server(model_path: str | Path, port: int, extra_args: Sequence[str] = (), host: str = "127.0.0.1",
                  command: Sequence[str] | None = None, timeout_s: float = 600.0,
                  env: dict[str, str] | None = None, log_path: str | None = None) -> ServerHandle:
    """Start `python -m sglang.launch_server --model-path DIR --port P --skip-tokenizer-init ...` and wait
    for its /health. `command` replaces `[python, -m, sglang.launch_server]` (another python, a stand-in).

        with launch_server("runs/sft/x/final", 30000, ["--tp-size", "2"]) as server:
            engine = SGLangEngine(SGLangEngineConfig(urls=[server.url]))
    """
    import requests

    argv = list(command or [sys.executable, "-m", "sglang.launch_server"])
    argv += ["--model-path", str(model_path), "--host", host, "--port", str(port), "--skip-tokenizer-init",
             *extra_args]
    is_temp_log = log_path is None
    if is_temp_log:
        fd, log_path = tempfile.mkstemp(prefix=f"sglang-{port}-", suffix=".log")
        os.close(fd)
    with open(log_path, "w") as log:  # a file, not a pipe: a chatty server never blocks on a full pipe
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **_RETURN_ORIGINAL_LOGPROB, **(env or {})})
    handle = ServerHandle(f"http://{host}:{port}", process, log_path, is_temp_log)
    atexit.register(handle.stop)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            handle.is_temp_log = False  # keep the log: it says why
            raise SGLangError(f"{handle.url}: the server exited with code {process.returncode} while starting "
                              f"({' '.join(argv)}); log {log_path}:\n{handle.log_tail()}")
        try:
            if requests.get(handle.url + "/health", timeout=5).status_code == 200:
                return handle
        except requests.RequestException:
            pass
        time.sleep(0.25)
    handle.is_temp_log = False
    handle.stop()
    raise SGLangError(f"{handle.url}: no healthy server within {timeout_s} s (engine.launch_timeout_s); "
                      f"log {log_path}:\n{handle.log_tail()}")
