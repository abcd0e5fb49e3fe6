"""Owns the `sglang` engine's typed config (`SGLangEngineConfig`, errors name `engine.<field>`) and its error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlparse

from apr.config import check

# the oldest SGLang the client talks to: it always sends `sampling_params.sampling_seed`, which servers
# before 0.5.3 reject with HTTP 500 (their SamplingParams(**sampling_params) raises TypeError)
MIN_VERSION = (0, 5, 3)
SERVER_LOGPROBS = ("check", "tempered", "original")
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0")


class SGLangError(RuntimeError):
    """A server did not answer (after retries) or rejected a request; the message names the URL."""


SERVED_DTYPES = ("bfloat16", "float16", "float32", "auto")

@dataclass
class SGLangEngineConfig:
    """Where the servers are, how to reach and launch them, how weights reach them (conf/engine/sglang.yaml).

    >>> SGLangEngineConfig(urls=["http://gpu-1:30000"], deterministic=True).deterministic
    True
    """

    urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:30000"])  # several = data parallel
    max_inflight: int = 256  # HTTP requests in flight over all servers (more wait in a queue)
    timeout_s: float = 600.0  # one /generate call, i.e. one whole thread segment
    max_retries: int = 3  # retries of a call after a connection error or an HTTP 5xx
    backoff_s: float = 0.5  # wait before the first retry; doubles with each further retry
    # the servers' context length: prompt + new tokens are kept below it (SGLang rejects the rest);
    # None: no clamping (`from_pretrained` reads max_position_embeddings from the checkpoint)
    context_len: int | None = None
    # sent as `Authorization: Bearer <api_key>` (servers started with --api-key answer 401 without it);
    # launched servers get --api-key
    api_key: str | None = None
    # servers started with --admin-api-key need it on their admin routes (weight updates, /abort_request,
    # /flush_cache); None: those routes get api_key. Launched servers get --admin-api-key
    admin_api_key: str | None = None
    # the dtype the servers decode in: launched servers get --dtype; given servers must report it in /server_info.
    # Default bfloat16, the local CUDA engine's default, so the two engines agree (SGLang's own default, auto,
    # serves an fp32 checkpoint in float16). auto: whatever the servers chose, unchecked
    dtype: str = "bfloat16"
    # seeds honoured: SGLang applies `sampling_seed` only on servers started with
    # --enable-deterministic-inference (launched servers get it; other servers must report it)
    deterministic: bool = False
    # what the servers' log-probs are: "tempered" (SGLang's default, log_softmax(logits / T)), "original"
    # (the server runs with SGLANG_RETURN_ORIGINAL_LOGPROB=1: raw log_softmax(logits)), or "check": RL probes
    # the servers at start against the local checkpoint (`SGLangEngine.check_logprobs`)
    server_logprobs: str = "check"
    launch: bool = False  # `from_pretrained` starts a server on every URL's port (stopped at exit)
    launch_command: list[str] = field(default_factory=list)  # []: [python, -m, sglang.launch_server]
    launch_args: list[str] = field(default_factory=list)  # extra server arguments, e.g. [--tp-size, 2]
    launch_timeout_s: float = 600.0  # wait for a launched server's /health
    # launched servers' --attention-backend (e.g. triton for head_dim 32 models); None: SGLang's choice
    attention_backend: str | None = None
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
        for name, low in (("max_inflight", 1), ("max_retries", 0), ("ranks_per_server", 1)):
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
        for name in ("launch", "deterministic"):
            check(isinstance(getattr(self, name), bool), f"engine.{name}", getattr(self, name), "true or false")
        for name in ("api_key", "admin_api_key", "attention_backend"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, str) and value.strip() == value and value != ""),
                  f"engine.{name}", "***" if name.endswith("api_key") else value, "null or a non-empty string")
        check(self.dtype in SERVED_DTYPES, "engine.dtype", self.dtype, ", ".join(SERVED_DTYPES))
        check(self.server_logprobs in SERVER_LOGPROBS, "engine.server_logprobs", self.server_logprobs,
              " | ".join(SERVER_LOGPROBS))
        check(self.weight_sync in ("disk", "distributed"), "engine.weight_sync", self.weight_sync,
              "disk or distributed")
        check(self.weight_sync_backend in ("nccl", "gloo"), "engine.weight_sync_backend", self.weight_sync_backend,
              "nccl or gloo")
        if self.launch:
            remote = [u for u in self.urls if urlparse(u).hostname not in _LOCAL_HOSTS]
            check(not remote and all(urlparse(u).port for u in self.urls), "engine.urls", self.urls,
                  "local URLs with explicit ports (http://127.0.0.1:PORT) when engine.launch is true")

    @property
    def is_local(self) -> bool:
        """Every server on this host."""
        return all(urlparse(u).hostname in _LOCAL_HOSTS for u in self.urls)
