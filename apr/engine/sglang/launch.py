"""Owns launching SGLang servers: the command line from the engine config, the process, its log, its stop.

The launcher does not set `SGLANG_RETURN_ORIGINAL_LOGPROB` (and removes it, and the older
`RETURN_ORIGINAL_LOGPROB`, from the environment it passes on unless `env` names it): a launched
server returns SGLang's default log-probs, those of the distribution it sampled from
(`log_softmax(logits / temperature)`), which is the engine contract (`apr.engine.base.Completion`).

    >>> server_args(SGLangEngineConfig(deterministic=True, attention_backend="triton"))
    ['--enable-deterministic-inference', '--attention-backend', 'triton']
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apr.engine.sglang.config import SGLangEngineConfig, SGLangError

ORIGINAL_LOGPROB_ENV = ("SGLANG_RETURN_ORIGINAL_LOGPROB", "RETURN_ORIGINAL_LOGPROB")


def server_args(cfg: SGLangEngineConfig) -> list[str]:
    """The server flags the config asks for, after nothing but `cfg.launch_args` (which the user controls)."""
    args = ["--enable-deterministic-inference"] if cfg.deterministic else []
    if cfg.dtype != "auto":
        args += ["--dtype", cfg.dtype]
    if cfg.attention_backend is not None:
        args += ["--attention-backend", cfg.attention_backend]
    if cfg.api_key is not None:
        args += ["--api-key", cfg.api_key]
    if cfg.admin_api_key is not None:
        args += ["--admin-api-key", cfg.admin_api_key]
    return args + list(cfg.launch_args)


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
    for its /health (which needs no API key). `command` replaces `[python, -m, sglang.launch_server]`
    (another python, a stand-in); `env` adds to this process's environment.

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
    child_env = {k: v for k, v in os.environ.items() if k not in ORIGINAL_LOGPROB_ENV} | dict(env or {})
    with open(log_path, "w") as log:  # a file, not a pipe: a chatty server never blocks on a full pipe
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=child_env)
    handle = ServerHandle(f"http://{host}:{port}", process, log_path, is_temp_log)
    atexit.register(handle.stop)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            handle.is_temp_log = False  # keep the log: it says why
            raise SGLangError(f"{handle.url}: the server exited with code {process.returncode} while starting "
                              f"({' '.join(_redact(argv))}); log {log_path}:\n{handle.log_tail()}")
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


def _redact(argv: list[str]) -> list[str]:
    """The command line with the API key hidden (it goes into error messages and logs)."""
    return ["***" if i and argv[i - 1] == "--api-key" else a for i, a in enumerate(argv)]
