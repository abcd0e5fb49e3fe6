"""Owns HTTP to SGLang servers: calls with retries and the API key, and what a server says about itself.

`check_servers` reads every server's `/server_info` (older servers: `/get_server_info`) at start and
refuses one that cannot honour the configuration, naming the version and the config field:

    >>> parse_version("0.5.3rc2"), parse_version("0.4.9.post6")
    ((0, 5, 3), (0, 4, 9))
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from apr.config import ConfigError
from apr.engine.sglang.config import MIN_VERSION, SGLangEngineConfig, SGLangError

# routes SGLang guards with --admin-api-key when the server has one (AuthLevel.ADMIN_OPTIONAL), else --api-key
ADMIN_ROUTES = frozenset({"/update_weights_from_disk", "/update_weights_from_distributed", "/update_weights_from_tensor",
                          "/init_weights_update_group", "/destroy_weights_update_group", "/begin_weight_update",
                          "/end_weight_update", "/abort_request", "/flush_cache", "/pause_generation",
                          "/continue_generation"})


class HttpClient:
    """POSTs / GETs with exponential backoff on connection errors and 5xx; one session per thread."""

    def __init__(self, cfg: SGLangEngineConfig) -> None:
        self.cfg = cfg
        self._local = threading.local()

    def _session(self):
        import requests  # lazily: `import apr` stays light

        if not hasattr(self._local, "session"):
            self._local.session = session = requests.Session()
            if self.cfg.api_key is not None:  # SGLang's add_api_key_middleware: "Bearer " + api_key
                session.headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        return self._local.session

    def call(self, method: str, url: str, path: str, body=None, timeout_s: float | None = None,
             stop: threading.Event | None = None, ok_404: bool = False, retries: int | None = None) -> dict | None:
        """The JSON answer ({} if empty); None if `stop` was set before an attempt went out, or on a 404
        when `ok_404` (an endpoint the server's version does not have). `body`: a dict, or a function
        making each attempt's body. `retries`: after connection errors and 5xx (None: engine.max_retries;
        0: the first failure is raised with the server's message)."""
        import requests

        last = ""
        retries = self.cfg.max_retries if retries is None else retries
        for attempt in range(retries + 1):
            if attempt and (stop or threading.Event()).wait(self.cfg.backoff_s * 2 ** (attempt - 1)):
                return None
            if stop is not None and stop.is_set():
                return None
            is_admin = path in ADMIN_ROUTES and self.cfg.admin_api_key is not None
            headers = {"Authorization": f"Bearer {self.cfg.admin_api_key}"} if is_admin else None
            try:
                r = self._session().request(method, url + path, json=body() if callable(body) else body,
                                           timeout=timeout_s or self.cfg.timeout_s, headers=headers)
            except requests.ConnectionError as e:  # refused, reset, or the server died mid-request
                last = f"connection failed: {type(e).__name__}"
                continue
            except requests.Timeout:
                raise SGLangError(f"{url}{path}: no answer within {timeout_s or self.cfg.timeout_s} s "
                                  "(engine.timeout_s)") from None
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if not retries:
                    raise SGLangError(f"{url}{path}: {last} (not retried: this process is inside a collective)")
                continue
            if r.status_code == 401 and path in ADMIN_ROUTES:  # --admin-api-key guards these when set
                raise ConfigError(f"engine.admin_api_key: {url}{path} answered 401 Unauthorized (an admin route); "
                                  "the server runs with --admin-api-key: set engine.admin_api_key to that key"
                                  + ("" if self.cfg.admin_api_key is None else " (the one given was refused)")
                                  + ("" if self.cfg.admin_api_key is not None else
                                     ", or engine.api_key if it has no admin key"))
            if r.status_code == 401:
                raise ConfigError(f"engine.api_key: {url}{path} answered 401 Unauthorized; the server runs with "
                                  "--api-key: set engine.api_key to that key"
                                  + ("" if self.cfg.api_key is None else " (the one given was refused)"))
            if r.status_code == 404 and ok_404:
                return None
            if r.status_code >= 400:
                raise SGLangError(f"{url}{path}: HTTP {r.status_code}: {r.text[:500]}")
            return r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else {}
        raise SGLangError(f"{url}{path}: no answer after {retries + 1} attempts (last: {last}); is a "
                          "healthy SGLang server running there? (engine.urls, engine.max_retries)")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of an SGLang version string, or None if it is not one."""
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", str(text))
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def server_info(client: HttpClient, url: str) -> dict:
    """GET /server_info (SGLang >= 0.5.x), falling back to /get_server_info (older, and still served)."""
    info = client.call("GET", url, "/server_info", timeout_s=30.0, ok_404=True)
    if info is None:
        info = client.call("GET", url, "/get_server_info", timeout_s=30.0, ok_404=True)
    return info or {}


def check_servers(client: HttpClient, cfg: SGLangEngineConfig) -> dict[str, dict]:
    """Each server's info; a ConfigError naming the URL, its version and the field when one cannot serve `cfg`."""
    infos = {}
    for url in cfg.urls:
        infos[url] = info = server_info(client, url)
        version = info.get("version")
        parsed = parse_version(version) if version is not None else None
        if parsed is None:
            raise ConfigError(f"engine.urls: {url} reports no SGLang version in /server_info or /get_server_info "
                              f"(got keys {sorted(info)[:8]}); is it an SGLang server?")
        if parsed < MIN_VERSION:
            raise ConfigError(f"engine.urls: {url} runs SGLang {version}; apr needs >= "
                              f"{'.'.join(map(str, MIN_VERSION))} (every request carries "
                              "sampling_params.sampling_seed, which older servers reject with HTTP 500)")
        if cfg.deterministic and not info.get("enable_deterministic_inference"):
            raise ConfigError(f"engine.deterministic: true, but {url} (SGLang {version}) was not started with "
                              "--enable-deterministic-inference, so it ignores sampling_seed; restart it with that "
                              "flag, or set engine.deterministic=false (sampling is then not reproducible)")
        if cfg.weight_sync == "distributed":
            _check_distributed(url, version, info, cfg)
    return infos


_DTYPE_NAMES = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def check_served_dtype(infos: dict[str, dict], wanted: str, model_path: str | None) -> None:
    """Each server decodes in `wanted` (engine.dtype), read from its --dtype in /server_info; SGLang's `auto`
    is the checkpoint's dtype, except that an fp32 checkpoint is served in float16. A ConfigError names the
    field and the URL on a mismatch."""
    if wanted == "auto":
        return
    checkpoint = None
    if model_path is not None and (Path(model_path) / "config.json").is_file():
        cfg = json.loads((Path(model_path) / "config.json").read_text())
        checkpoint = cfg.get("dtype") or cfg.get("torch_dtype")
    for url, info in infos.items():
        served = info.get("dtype")
        if served is None:  # a server that does not report it: nothing to check against
            continue
        served = _DTYPE_NAMES.get(str(served), str(served))
        if served == "auto":
            if checkpoint is None:
                continue
            served = "float16" if checkpoint == "float32" else _DTYPE_NAMES.get(checkpoint, checkpoint)
        if served != wanted:
            raise ConfigError(f"engine.dtype: {wanted}, but {url} serves in {served} (its --dtype is "
                              f"{info.get('dtype')!r}); start it with --dtype {wanted}, or set engine.dtype={served} "
                              "(greedy trees and log-probs of two dtypes differ)")


def _check_distributed(url: str, version: str, info: dict, cfg: SGLangEngineConfig) -> None:
    dp_size = int(info.get("dp_size") or 1)
    if dp_size > 1 and not info.get("enable_dp_attention"):  # SGLang asserts this in the tokenizer manager
        raise ConfigError(f"engine.weight_sync: distributed needs servers with --dp-size 1, but {url} (SGLang "
                          f"{version}) runs --dp-size {dp_size}; start one server per data-parallel replica (each its "
                          "own URL in engine.urls), or use engine.weight_sync=disk")
    pp_size = int(info.get("pp_size") or 1)
    if pp_size > 1:  # SGLang joins rank_offset + tp_rank (no pipeline term): pipeline stages would share ranks
        raise ConfigError(f"engine.weight_sync: distributed needs servers with --pp-size 1, but {url} (SGLang "
                          f"{version}) runs --pp-size {pp_size}: its pipeline stages would join the weight-sync "
                          "group with the same ranks and the setup would hang; use engine.weight_sync=disk, or "
                          "serve without pipeline parallelism")
    ranks = int(info.get("tp_size") or 1)
    if ranks != cfg.ranks_per_server:
        raise ConfigError(f"engine.ranks_per_server: got {cfg.ranks_per_server}, but {url} runs on {ranks} GPU(s) "
                          f"(--tp-size); set engine.ranks_per_server={ranks}")
