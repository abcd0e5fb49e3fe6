"""Owns weight updates of SGLang servers: from disk, or broadcast over a process group, inside update sessions.

Since SGLang PR #28001 (`sglang/srt/managers/scheduler_components/weight_updater.py`) a server loads
distributed (and tensor) updates only inside a weight-update session, so every update here is
bracketed: `POST /begin_weight_update {}` to every server before the first bucket, `POST
/end_weight_update {}` after the last, also when the update failed. A 404 to `begin` is an older
server that needs no session. Distributed sync needs servers with `--dp-size 1` (SGLang asserts
it; `client.check_servers` refuses them earlier). `close` calls `/destroy_weights_update_group`
so a restarted trainer leaves no stale groups on the servers. A server that restarts inside a session
has lost it (its `end` answers 4xx): a disk update is then done again, session and all, once.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from apr.config import ConfigError
from apr.engine.sglang.client import HttpClient
from apr.engine.sglang.config import SGLangEngineConfig, SGLangError

log = logging.getLogger(__name__)
# set on the trainer side of an NCCL weight-sync group, as SGLang's own test_update_weights_from_distributed does
NCCL_ENV = {"NCCL_CUMEM_ENABLE": "0", "NCCL_NVLS_ENABLE": "0"}


class SessionLost(SGLangError):
    """`/end_weight_update` was refused after the update itself went through: the server has no open
    session, i.e. it restarted inside it (a new process knows no session), so what it loaded is unknown."""


class WeightUpdater:
    """The weight-update calls of one engine's servers; `group` is the process group (distributed sync)."""

    def __init__(self, cfg: SGLangEngineConfig, client: HttpClient, tag: str) -> None:
        self.cfg = cfg
        self.client = client
        self.tag = tag
        self.group = None  # made on the first broadcast
        self.group_name = f"apr_weights_{tag}"
        self.weights_root = Path(cfg.weights_dir or tempfile.gettempdir()) / f"apr-sglang-weights-{tag}"
        self._recovered: set[str] = set()  # servers whose leftover session was ended (logged once)

    # ---- sessions ----------------------------------------------------------------------------
    @contextmanager
    def session(self, urls: list[str] | None = None):
        """Open a weight-update session on every server (or `urls`) for the block; always closed after it."""
        opened = []
        try:
            for url in urls or self.cfg.urls:
                body = self._begin(url)
                if body is not None:  # None: 404, a server from before sessions
                    opened.append(url)
                    check_success(url, "/begin_weight_update", body)
            yield
        except BaseException:
            self._end(opened, is_failing=True)  # the update's own error is the one to see
            raise
        self._end(opened)

    def _begin(self, url: str) -> dict | None:
        """POST /begin_weight_update; a session left open (by a trainer that died inside one: the server
        allows one at a time) is ended and begun again, logged once per server."""
        try:
            return self.client.call("POST", url, "/begin_weight_update", {}, ok_404=True)
        except SGLangError as e:
            if ": HTTP 400" not in str(e) or "already open" not in str(e):
                raise
        if url not in self._recovered:
            log.warning("%s had a weight-update session left open (a trainer that stopped inside one?): ending it "
                        "and beginning a new one", url)
            self._recovered.add(url)
        check_success(url, "/end_weight_update", self.client.call("POST", url, "/end_weight_update", {}))
        return self.client.call("POST", url, "/begin_weight_update", {}, ok_404=True)

    def _end(self, urls: list[str], is_failing: bool = False) -> None:
        errors, refused = [], []
        for url in urls:
            try:
                answer = self.client.call("POST", url, "/end_weight_update", {})
            except SGLangError as e:  # an HTTP 4xx answer is a refusal; no answer at all is not
                (refused if ": HTTP 4" in str(e) else errors).append(e)
                continue
            except ConfigError as e:
                errors.append(e)
                continue
            try:
                check_success(url, "/end_weight_update", answer)
            except SGLangError as e:
                refused.append(e)
        if (errors or refused) and is_failing:
            log.warning("end_weight_update after a failed update: %s", (errors + refused)[0])
        elif errors:
            raise errors[0]
        elif refused:
            raise SessionLost(f"{refused[0]} (the server restarted inside the weight-update session?)")

    # ---- disk ---------------------------------------------------------------------------------
    def from_disk(self, path: str | Path, version: int, urls: list[str] | None = None) -> None:
        """Every server (or `urls`) loads the HF checkpoint `path` (readable by all of them) in place; caches
        flushed."""
        body = {"model_path": str(path), "flush_cache": True, "weight_version": str(version)}
        urls = urls or self.cfg.urls
        for attempt in range(2):
            try:
                with self.session(urls):
                    for url in urls:
                        check_success(url, "/update_weights_from_disk", self.client.call(
                            "POST", url, "/update_weights_from_disk", body, timeout_s=self.cfg.timeout_s))
                return
            except SessionLost as e:
                if attempt:
                    raise
                log.warning("%s: updating from disk again", e)

    def write_checkpoint(self, buckets: list[dict], version: int, model_path: str | None) -> Path:
        """The learner's buckets as an HF checkpoint (the served checkpoint's config + model.safetensors)."""
        import shutil

        from safetensors.torch import save_file

        if model_path is None:
            raise ConfigError("engine: load_weights needs the served checkpoint's directory for its config files; "
                              "build the engine with SGLangEngine.from_pretrained(path, ...)")
        out = self.weights_root / f"v{version}"
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "generation_config.json"):
            if (Path(model_path) / name).is_file():
                shutil.copy(Path(model_path) / name, out / name)
        tensors = {name: t.detach().cpu().contiguous() for bucket in buckets for name, t in bucket.items()}
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return out

    def remove_old_checkpoints(self, keep: Path) -> None:
        import shutil

        for old in self.weights_root.iterdir():
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    # ---- distributed --------------------------------------------------------------------------
    def init_group(self, address: str, port: int, world_size: int, group_name: str, backend: str,
                   ranks_per_server: int) -> Future:
        """Every server joins the group (server i's ranks from 1 + i * ranks_per_server); runs in the
        background because the servers block until rank 0 (this process) joins too."""
        bodies = {url: {"master_address": address, "master_port": port, "world_size": world_size,
                        "rank_offset": 1 + i * ranks_per_server, "group_name": group_name, "backend": backend}
                  for i, url in enumerate(self.cfg.urls)}
        return post_all_async(self.client, "/init_weights_update_group", bodies, retries=0)

    def announce(self, names: list[str], dtypes: list[str], shapes: list[list[int]], version: int,
                 group_name: str) -> Future:
        """POST /update_weights_from_distributed to every server (in a session); they receive the broadcast."""
        body = {"names": names, "dtypes": dtypes, "shapes": shapes, "group_name": group_name, "flush_cache": True,
                "weight_version": str(version)}
        return post_all_async(self.client, "/update_weights_from_distributed", dict.fromkeys(self.cfg.urls, body),
                              retries=0)

    def broadcast(self, buckets: list[dict], version: int) -> None:
        """Per bucket: announce names, dtypes and shapes, broadcast each tensor from rank 0, wait for the servers."""
        import torch

        cfg = self.cfg
        if cfg.weight_sync_backend == "nccl" and not torch.cuda.is_available():
            raise ConfigError("engine.weight_sync_backend: nccl broadcasts CUDA tensors and this process sees no "
                              "GPU; give the rollout worker one (dist.worker_gpus), or use gloo or weight_sync=disk")
        if self.group is None:
            self.group = self._join_group()
        device = torch.device("cuda") if cfg.weight_sync_backend == "nccl" else torch.device("cpu")
        with self.session():
            for bucket in buckets:
                names = list(bucket)
                tensors = [bucket[n].detach().to(device).contiguous() for n in names]
                future = self.announce(names, [str(t.dtype).removeprefix("torch.") for t in tensors],
                                       [list(t.shape) for t in tensors], version, self.group_name)
                for t in tensors:
                    torch.distributed.broadcast(t, src=0, group=self.group)
                future.result(timeout=cfg.timeout_s)

    def _join_group(self):
        from apr.net import free_port

        cfg = self.cfg
        address = cfg.weight_sync_address or ("127.0.0.1" if cfg.is_local else
                                              socket.gethostbyname(socket.gethostname()))
        port = free_port("")
        world = 1 + len(cfg.urls) * cfg.ranks_per_server
        if cfg.weight_sync_backend == "nccl":
            os.environ.update(NCCL_ENV)  # read when the communicator is made, at the first broadcast
        joined = self.init_group(address, port, world, self.group_name, cfg.weight_sync_backend, cfg.ranks_per_server)
        try:
            group = new_update_group(cfg.weight_sync_backend, address, port, world, 0, self.group_name, cfg.timeout_s)
        except Exception as e:
            raise SGLangError(f"engine.weight_sync=distributed: could not form the weight-sync group at "
                              f"{address}:{port} with {cfg.urls}: {e}; set engine.weight_sync_address to an "
                              f"address the servers reach, or use engine.weight_sync=disk") from e
        joined.result(timeout=cfg.timeout_s)
        return group

    def close(self) -> None:
        """Destroy the group on the servers (best effort: a dead server has none), then here; remove checkpoints."""
        import shutil

        if self.group is not None:
            import torch.distributed

            destroyed = post_all_async(self.client, "/destroy_weights_update_group",
                                       dict.fromkeys(self.cfg.urls, {"group_name": self.group_name}))
            torch.distributed.destroy_process_group(self.group)
            self.group = None
            try:
                destroyed.result(timeout=min(self.cfg.timeout_s, 60.0))
            except Exception as e:  # noqa: BLE001 - closing must go on; the servers drop the group on restart
                log.warning("destroy_weights_update_group failed: %s", e)
        shutil.rmtree(self.weights_root, ignore_errors=True)


def check_success(url: str, path: str, body: dict | None) -> None:
    if body and body.get("success") is False:
        raise SGLangError(f"{url}{path}: {body.get('message', 'failed')}")


def post_all_async(client: HttpClient, path: str, bodies: dict[str, dict], retries: int | None = None) -> Future:
    """POST to every server concurrently in the background; the future holds their answers by URL. Calls made
    while this process sits in a collective (group setup, a broadcast) pass `retries=0`: a retry of a call the
    server failed would leave the collective waiting until its timeout, so the first error surfaces at once."""
    future: Future = Future()

    def run() -> None:
        try:
            with ThreadPoolExecutor(len(bodies)) as pool:
                calls = {url: pool.submit(client.call, "POST", url, path, body, retries=retries)
                         for url, body in bodies.items()}
                out = {url: f.result() for url, f in calls.items()}
            for url, body in out.items():
                check_success(url, path, body)
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
