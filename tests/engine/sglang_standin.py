"""A stand-in for a stock SGLang server's native HTTP API, over apr's own engines (a test fixture).

SGLang cannot run on these CPU machines; this server speaks the part of its contract that
`apr.engine.sglang` uses, as strictly as SGLang 0.5.23 (docs/sglang.md lists every endpoint and
field with the SGLang source file that defines it): `/generate` (one request, `input_ids` only;
unknown `sampling_params` keys answer HTTP 400 from 0.5.22 and 500 before, as the wheels do),
`/health`, `/server_info` and `/get_server_info` (server args + `version`), `/get_model_info`,
`/flush_cache`, `/abort_request`, `/update_weights_from_disk`, `/begin_weight_update`,
`/end_weight_update`, `/init_weights_update_group`, `/update_weights_from_distributed` (refused
outside a weight-update session, without joining the broadcast), `/destroy_weights_update_group`.
As SGLang: `sampling_seed` is applied only when started deterministic (then a request without one
gets 42); log-probs are `log_softmax(logits / T)` unless SGLANG_RETURN_ORIGINAL_LOGPROB (or
RETURN_ORIGINAL_LOGPROB) is set in its environment; with an API key every route but /health
answers 401 without `Authorization: Bearer <key>`. `legacy=True` mimics SGLang 0.4.9.post6: no
/server_info, no sessions, no `sampling_seed`. GET `/_standin/calls` (not SGLang's) lists the POSTs.
Sessions exist from 0.5.21 (`version=`). Constructed in a test it reports the server args apr's launcher
gives (`dtype` bfloat16); run as a script its `--dtype` defaults to SGLang's `auto`. Whatever it reports,
it decodes in fp32 (the CPU engine): outputs are compared with the local fp32 engine.

One engine-loop thread owns the engine: concurrent HTTP requests are batched into the same
forward passes. A radix cache is imitated by resuming the engine's kept sequence whose ids are
the longest prefix of a new request's `input_ids`.

    python tests/engine/sglang_standin.py --model-path runs/sft/x/final --port 30000 [--enable-deterministic-inference]
    # in tests: with Standin(model_path) as server: ... server.url ...  (port 0 = any free port)
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

if __package__ in (None, ""):  # run as a script (a launched server): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from apr.engine.base import Request, SamplingParams  # noqa: E402
from apr.engine.sglang.client import parse_version  # noqa: E402
from tests.engine._standin_weights import StandinWeights  # noqa: E402

# the API fields of SGLang's SamplingParams (sglang/srt/sampling/sampling_params.py, 0.5.23)
SAMPLING_KEYS = {"max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
                 "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "json_schema",
                 "regex", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens",
                 "spaces_between_special_tokens", "no_stop_trim", "custom_params", "stream_interval", "logit_bias",
                 "sampling_seed"}
LEGACY_VERSION = "0.4.9.post6"
# routes SGLang marks ADMIN_OPTIONAL (the stand-in serves these of them)
ADMIN_ROUTES = ("/update_weights_from_disk", "/update_weights_from_distributed", "/init_weights_update_group",
                "/destroy_weights_update_group", "/begin_weight_update", "/end_weight_update", "/abort_request",
                "/flush_cache")


def load_local_engine(model_path: str):
    """(LocalEngine over the checkpoint, its eos id, its context length)."""
    from pathlib import Path

    from apr.engine.local import LocalEngine

    cfg = json.loads((Path(model_path) / "config.json").read_text())
    context_len = cfg["max_position_embeddings"]
    engine = LocalEngine.from_pretrained(model_path, max_batch_size=16, max_seq_len=context_len)
    return engine, cfg.get("eos_token_id"), context_len


@dataclass(eq=False)
class _Job:
    """One HTTP call waiting for the engine loop."""

    kind: str  # generate | abort | flush | reload | tensors
    body: dict
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 200
    answer: dict | str | None = None  # None: drop the connection (the server "crashed")
    internal_id: str = ""
    started_s: float = field(default_factory=time.perf_counter)


class Standin(StandinWeights):
    """The HTTP server and its engine loop. `engine_factory(model_path) -> (engine, eos_id, context_len)`."""

    def __init__(self, model_path: str, host: str = "127.0.0.1", port: int = 0, engine_factory=load_local_engine,
                 step_sleep_s: float = 0.0, max_kept: int = 64, deterministic: bool = False, version: str = "0.5.23",
                 api_key: str | None = None, admin_api_key: str | None = None, legacy: bool = False, return_original_logprob: bool | None = None,
                 dp_size: int = 1, tp_size: int = 1, attention_backend: str | None = None,
                 dtype: str = "bfloat16") -> None:
        self.model_path = model_path
        self.legacy = legacy
        self.version = LEGACY_VERSION if legacy else version
        self.api_key = api_key
        self.admin_api_key = admin_api_key
        if return_original_logprob is None:  # SGLang reads it from its environment
            return_original_logprob = any(os.environ.get(k, "").lower() in ("1", "true")
                                          for k in ("SGLANG_RETURN_ORIGINAL_LOGPROB", "RETURN_ORIGINAL_LOGPROB"))
        self.return_original_logprob = return_original_logprob
        self.server_args = {"model_path": model_path, "skip_tokenizer_init": True, "dp_size": dp_size,
                            "tp_size": tp_size, "pp_size": 1, "dtype": dtype, "enable_dp_attention": False,
                            "enable_deterministic_inference": deterministic, "attention_backend": attention_backend}
        self.is_session_open = False  # a weight-update session (begin_weight_update .. end_weight_update)
        # sessions (SGLang PR #28001) are in the 0.5.21 and 0.5.23 wheels, absent from 0.5.14, 0.5.15, 0.5.19
        # and 0.5.20 (shared/FACTS.md); older servers answer 404 and need none
        self.has_sessions = not legacy and parse_version(self.version) >= (0, 5, 21)
        # from 0.5.22 a schema check answers an unknown /generate field with 400; before, a plain 500
        self.checks_fields = not legacy and parse_version(self.version) >= (0, 5, 22)
        self.engine_factory = engine_factory
        self.engine, self.eos_id, self.context_len = engine_factory(model_path)
        self.weight_version = "default"
        self.step_sleep_s = step_sleep_s  # slows each engine step (to catch requests mid-flight)
        self.max_kept = max_kept
        self.num_generate = 0  # /generate calls answered
        self.num_failed = 0  # /generate calls failed on purpose (`fail_next`)
        self.calls: list[tuple[str, dict]] = []  # every POST body, by path
        self._fail: list[int] = []  # statuses of the next /generate calls to fail
        self._fail_paths: dict[str, list[int]] = {}  # the same for other routes
        self._inbox: queue.Queue[_Job] = queue.Queue()
        self._deferred: list[_Job] = []  # generate calls held while a reload waits for the engine to drain
        self._running: dict[str, _Job] = {}  # engine id -> job
        self._kept: OrderedDict[tuple[int, ...], str] = OrderedDict()  # full ids -> engine id (LRU)
        self._num_ids = 0
        self._groups: dict = {}  # weight-sync process groups by name (/init_weights_update_group)
        self._stopping = threading.Event()
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.standin = self
        self._threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True),
                         threading.Thread(target=self._loop, daemon=True)]

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Standin:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop like a crashed server: listening socket closed, in-flight calls dropped unanswered."""
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._threads[1].join(timeout=10)
        for job in list(self._running.values()) + self._deferred + _drain(self._inbox):
            job.answer = None
            job.done.set()

    def fail_next(self, count: int, status: int = 503, path: str = "/generate") -> None:
        """Answer the next `count` calls of `path` with HTTP `status` (fault injection)."""
        if path == "/generate":
            self._fail += [status] * count
        else:
            self._fail_paths.setdefault(path, []).extend([status] * count)

    def __enter__(self) -> Standin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- called from HTTP handler threads ---------------------------------------------------
    def is_authorized(self, path: str, headers) -> bool:
        """SGLang's add_api_key_middleware (0.5.23 `decide_request_auth`): /health* and /metrics are open;
        admin routes (weight updates, /abort_request, ...) need the admin key when the server has one, else
        the api key; the other routes need the api key when it has one (the admin key alone leaves them open)."""
        if path.startswith(("/health", "/metrics")):
            return True
        key = self.admin_api_key if path in ADMIN_ROUTES and self.admin_api_key is not None else self.api_key
        return key is None or headers.get("Authorization") == f"Bearer {key}"

    def info(self) -> dict:
        """GET /server_info: the server args, the scheduler's info and the version."""
        return {**self.server_args, "max_req_input_len": self.context_len - 1, "version": self.version}

    def handle(self, path: str, body: dict) -> tuple[int, dict | str | None]:
        self.calls.append((path, body))
        if self._fail_paths.get(path):
            return self._fail_paths[path].pop(0), {"success": False, "message": "injected failure: AssertionError"}
        if path == "/generate":
            if self._fail:
                self.num_failed += 1
                return self._fail.pop(0), {"error": {"message": "injected failure"}}
            known = SAMPLING_KEYS - ({"sampling_seed"} if self.legacy else set())  # sampling_seed: 0.5.3 on
            unknown = set(body.get("sampling_params") or {}) - known
            if unknown and self.checks_fields:
                return 400, {"error": {"message": f"unknown field: {sorted(unknown)[0]}"}}
            if unknown:  # SamplingParams(**sampling_params) raises TypeError: FastAPI's plain 500
                return 500, "Internal Server Error"
            error = self._check_generate(body)
            if error:
                return 400, {"error": {"message": error}}
            return self._submit(_Job("generate", body))
        if path in ("/begin_weight_update", "/end_weight_update"):
            return self._session(path) if self.has_sessions else (404, {"detail": "Not Found"})
        if path == "/destroy_weights_update_group":
            return self._destroy_group(body)
        if path == "/abort_request":
            return self._submit(_Job("abort", body))
        if path == "/flush_cache":
            return self._submit(_Job("flush", body))
        if path == "/update_weights_from_disk":
            return self._submit(_Job("reload", body))
        if path in ("/init_weights_update_group", "/update_weights_from_distributed") and self.server_args["dp_size"] > 1:
            return 500, "Internal Server Error"  # the tokenizer manager asserts dp_size == 1
        if path == "/init_weights_update_group":
            return self._join_group(body)
        if path == "/update_weights_from_distributed":
            if not self.is_session_open and self.has_sessions:  # weight_updater.py asserts an open session
                return 400, {"success": False, "message": "update_weights_from_distributed must run between "
                                                          "begin_weight_update() and end_weight_update()"}
            return self._receive(body)
        return 404, {"detail": "Not Found"}

    def model_info(self) -> dict:
        return {"model_path": self.model_path, "tokenizer_path": None, "is_generation": True,
                "weight_version": self.weight_version}

    def _submit_kind(self, kind: str, body: dict) -> tuple[int, dict | str | None]:
        return self._submit(_Job(kind, body))

    def _submit(self, job: _Job) -> tuple[int, dict | str | None]:
        self._inbox.put(job)
        while not job.done.wait(0.1):
            if self._stopping.is_set():
                return 200, None
        return job.status, job.answer

    def _check_generate(self, body: dict) -> str | None:
        ids = body.get("input_ids")
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)):
            return "this stand-in serves one request of token ids (input_ids: a non-empty list of ints)"
        max_new = body.get("sampling_params", {}).get("max_new_tokens", 128)
        if len(ids) >= self.context_len:  # SGLang's own checks and messages
            return f"The input ({len(ids)} tokens) is longer than the model's context length ({self.context_len} tokens)."
        if len(ids) + max_new >= self.context_len:
            return f"Requested token count exceeds the model's maximum context length of {self.context_len} tokens."
        return None

    # ---- the engine loop (one thread owns the engine) ----------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            idle = not self.engine.has_work()
            try:
                first = self._inbox.get(timeout=0.05) if idle else self._inbox.get_nowait()
                jobs = [first] + _drain(self._inbox)
            except queue.Empty:
                jobs = []
            for job in jobs:
                self._dispatch(job)
            reloads = [j for j in self._deferred if j.kind in ("reload", "tensors")]
            if reloads and not self.engine.has_work():
                self._reload(reloads[0])
            if self.engine.has_work():
                if self.step_sleep_s:
                    time.sleep(self.step_sleep_s)
                for c in self.engine.step():
                    self._answer(c)

    def _dispatch(self, job: _Job) -> None:
        if job.kind in ("reload", "tensors") or (
                job.kind == "generate" and any(j.kind in ("reload", "tensors") for j in self._deferred)):
            self._deferred.append(job)  # SGLang lets in-flight requests finish before it swaps weights
        elif job.kind == "generate":
            self._admit(job)
        elif job.kind == "abort":
            for iid, running in list(self._running.items()):
                if job.body.get("abort_all") or running.body.get("rid") == job.body.get("rid"):
                    self.engine.abort(iid)
            self._reply(job, 200, "")
        elif job.kind == "flush":
            self._release_kept(len(self._kept))
            self._reply(job, 200, "Cache flushed.\nPlease check backend logs for more details. ")

    def _admit(self, job: _Job) -> None:
        ids = job.body["input_ids"]
        sp = job.body.get("sampling_params", {})
        stops = tuple(sp.get("stop_token_ids") or ()) + (() if self.eos_id is None else (self.eos_id,))
        top_k = sp.get("top_k", -1)
        # sampling_batch_info.py: the seed tensor exists only under --enable-deterministic-inference (default 42)
        seed = sp.get("sampling_seed") if sp.get("sampling_seed") is not None else 42
        params = SamplingParams(float(sp.get("temperature", 1.0)), float(sp.get("top_p", 1.0)),
                                -1 if top_k in (0, -1) else top_k, sp.get("max_new_tokens", 128), stops,
                                seed if self.server_args["enable_deterministic_inference"] else None)
        self._num_ids += 1
        job.internal_id = iid = f"q{self._num_ids}"
        prefix = max((k for k in self._kept if len(k) <= len(ids) and tuple(ids[:len(k)]) == k), key=len, default=None)
        if prefix is None:
            request = Request(iid, ids, params, keep_cache=True)
        else:
            request = Request(iid, ids[len(prefix):], params, resume_id=self._kept.pop(prefix), keep_cache=True)
        self._running[iid] = job
        self.engine.submit(request)

    def _answer(self, c) -> None:
        job = self._running.pop(c.request_id)
        ids = job.body["input_ids"]
        if c.finish_reason == "abort":
            reason = {"type": "abort", "message": "Abort in waiting queue"}
        elif c.finish_reason == "stop":
            reason = {"type": "stop", "matched": c.output_ids[-1]}
            self._keep(ids + c.output_ids, c.request_id)
        else:
            reason = {"type": "length", "length": len(c.output_ids)}
            self._keep(ids + c.output_ids, c.request_id)
        logprobs = self._logprobs(ids, c.output_ids, job.body.get("sampling_params", {})) or c.logprobs
        meta = {"id": job.body.get("rid", job.internal_id), "finish_reason": reason, "prompt_tokens": len(ids),
                "completion_tokens": len(c.output_ids), "cached_tokens": c.num_cached_tokens,
                "output_token_logprobs": [[lp, t, None] for lp, t in zip(logprobs, c.output_ids)],
                "e2e_latency": time.perf_counter() - job.started_s, "weight_version": self.weight_version}
        self.num_generate += 1
        self._reply(job, 200, {"text": "", "output_ids": c.output_ids, "meta_info": meta})

    def _logprobs(self, ids: list[int], out: list[int], sp: dict) -> list[float] | None:
        """SGLang's sampler.py: log_softmax(logits / T) (T < 1e-6 counts as 1, greedy), or the raw
        log_softmax(logits) with SGLANG_RETURN_ORIGINAL_LOGPROB; recomputed with a full forward so that
        the answer does not depend on the local engine's own convention. None: a model-free engine."""
        import torch

        model = getattr(self.engine, "model", None)
        if model is None or not out:
            return None
        temperature = float(sp.get("temperature", 1.0))
        if temperature < 1e-6 or self.return_original_logprob:
            temperature = 1.0
        x = torch.tensor([ids + out[:-1]], device=next(model.parameters()).device)  # (1, T)
        with torch.no_grad():
            logits = model(x).logits[0, len(ids) - 1:].float()  # (K, V)
        target = torch.tensor(out, device=logits.device).unsqueeze(1)  # (K, 1)
        return torch.log_softmax(logits / temperature, -1).gather(1, target).squeeze(1).tolist()

    def _keep(self, full_ids: list[int], iid: str) -> None:
        self._kept[tuple(full_ids)] = iid
        self._release_kept(len(self._kept) - self.max_kept)

    def _release_kept(self, count: int) -> None:
        for _ in range(max(count, 0)):
            _, iid = self._kept.popitem(last=False)
            self.engine.release(iid)

    def _reload(self, job: _Job) -> None:
        self._deferred.remove(job)
        try:
            if job.kind == "tensors":
                self._load_tensors(job.body["tensors"])
            else:
                self.engine, self.eos_id, self.context_len = self.engine_factory(job.body["model_path"])
        except Exception as e:  # SGLang answers a failed load with success false, old weights kept
            self._reply(job, 400, {"success": False, "message": f"Failed to load weights: {e}"})
        else:
            if job.kind == "tensors":
                self._release_kept(len(self._kept))  # flush_cache: the kept KV came from the old weights
            else:
                self._kept.clear()  # a new engine: nothing cached
                self.model_path = job.body["model_path"]
            self.weight_version = str(job.body.get("weight_version", self.weight_version))
            self._reply(job, 200, {"success": True, "message": "Succeeded to update model weights.",
                                   "num_paused_requests": 0})
        held, self._deferred = self._deferred, []
        for j in held:
            self._dispatch(j)

    @staticmethod
    def _reply(job: _Job, status: int, answer) -> None:
        job.status, job.answer = status, answer
        job.done.set()


def _drain(q: queue.Queue) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        standin = self.server.standin
        if not standin.is_authorized(self.path, self.headers):
            return self._send(401, {"error": "Unauthorized"})
        if self.path == "/health":
            self._send(200, "")
        elif self.path == "/get_model_info":
            self._send(200, standin.model_info())
        elif self.path in ("/server_info", "/get_server_info") and not (standin.legacy and self.path == "/server_info"):
            self._send(200, standin.info())
        elif self.path == "/_standin/calls":
            self._send(200, [path for path, _ in standin.calls])
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if not self.server.standin.is_authorized(self.path, self.headers):
            self.rfile.read(length)
            return self._send(401, {"error": "Unauthorized"})
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as e:
            return self._send(400, {"error": {"message": f"invalid JSON: {e}"}})
        status, answer = self.server.standin.handle(self.path, body)
        if answer is None:  # crashed mid-request: close without an answer
            self.close_connection = True
            return
        self._send(status, answer)

    def _send(self, status: int, answer) -> None:
        data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain" if isinstance(answer, str) else "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--enable-deterministic-inference", action="store_true")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--admin-api-key", default=None)
    parser.add_argument("--attention-backend", default=None)
    parser.add_argument("--dp-size", type=int, default=1)
    parser.add_argument("--dtype", default="auto")  # SGLang's default
    args, _ = parser.parse_known_args()  # SGLang's other options (--skip-tokenizer-init, ...) are ignored
    import torch

    torch.set_num_threads(1)
    server = Standin(args.model_path, args.host, args.port, deterministic=args.enable_deterministic_inference,
                     api_key=args.api_key, admin_api_key=args.admin_api_key, attention_backend=args.attention_backend, dp_size=args.dp_size,
                     dtype=args.dtype).start()
    print(f"stand-in SGLang server on {server.url}", flush=True)
    try:
        server._threads[0].join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
