"""Owns the engine's RL-facing methods: weight updates (thin calls into `weights.py`) and the log-prob check (`probe.py`).

A mixin of `SGLangEngine`; it uses the engine's `config`, `model_path`, `policy_version` and `_weights`.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from apr.config import ConfigError


class RLMethods:
    """Weight sync and log-prob checks of `SGLangEngine` (see `apr.engine.sglang.weights`)."""

    def update_weights_from_disk(self, path: str | Path, version: int) -> None:
        """Load an HF checkpoint directory (readable by every server) in place, in a weight-update session."""
        self._weights.from_disk(path, version)
        self._synced(version, str(path))

    def load_weights(self, buckets: list[dict], version: int) -> None:
        """Weights from the learner (name -> tensor dicts, `apr.rl.weights.to_buckets`) into every server.

        `weight_sync=disk`: written as an HF checkpoint under `weights_dir` (which every server must
        read), then `update_weights_from_disk`; the previous version's directory is removed.
        `weight_sync=distributed`: broadcast over the weight-sync group (`broadcast_weights`).
        """
        if self.config.weight_sync == "distributed":
            self.broadcast_weights(buckets, version)
            return
        out = self._weights.write_checkpoint(buckets, version, self.model_path)
        self.update_weights_from_disk(out, version)
        self._weights.remove_old_checkpoints(out)

    def broadcast_weights(self, buckets: list[dict], version: int) -> None:
        """Send the weights over a process group whose rank 0 is this client (made on first use: server i's
        ranks start at 1 + i * ranks_per_server), bucket by bucket, in one weight-update session;
        `policy_version` is `version` once every server acknowledged every bucket."""
        self._weights.broadcast(buckets, version)
        self._synced(version)

    def init_weights_update_group(self, master_address: str, master_port: int, world_size: int,
                                  group_name: str = "apr_weights", backend: str = "nccl",
                                  ranks_per_server: int = 1) -> Future:
        """Join every server to a group whose rank 0 is the caller (the servers block until it joins: make
        the caller's group, then `.result()`)."""
        return self._weights.init_group(master_address, master_port, world_size, group_name, backend,
                                        ranks_per_server)

    def update_weights_from_distributed(self, names: list[str], dtypes: list[str], shapes: list[list[int]],
                                        version: int, group_name: str = "apr_weights") -> Future:
        """Announce a broadcast of tensors `names` from rank 0 (call it inside `weight_update_session()`),
        broadcast them, then `.result()`; `policy_version` is set once every server acknowledged."""
        future = self._weights.announce(names, dtypes, shapes, version, group_name)
        future.add_done_callback(lambda f: f.exception() is None and self._synced(version))
        return future

    def weight_update_session(self):
        """`with engine.weight_update_session(): ...` brackets hand-made updates (begin / end_weight_update)."""
        return self._weights.session()

    def check_logprobs(self, temperature: float) -> str:
        """What the servers' log-probs are ("tempered" | "original"); refuses raw ones at a temperature
        other than 0 or 1, where the learner's log_softmax(logits / T) would differ from them.
        `engine.server_logprobs=check` finds out with one probe request (`probe.py`)."""
        mode = self.config.server_logprobs
        if mode == "check":
            if self.model_path is None:
                raise ConfigError("engine.server_logprobs: check needs the checkpoint on this machine "
                                  "(SGLangEngine.from_pretrained); or set it to tempered or original")
            from apr.engine.sglang.probe import probe_server_logprobs

            mode = probe_server_logprobs(self, self.model_path)
        if mode == "original" and temperature not in (0.0, 1.0):
            raise ConfigError(f"engine.server_logprobs: the servers {self.config.urls} return raw log-probs "
                              "(SGLANG_RETURN_ORIGINAL_LOGPROB=1 or RETURN_ORIGINAL_LOGPROB=1 in their environment), "
                              f"but rollouts sample at temperature {temperature} and the learner scores "
                              "log_softmax(logits / T); restart them without that variable, or sample at 1")
        return mode

    @property
    def _update_group(self):
        return self._weights.group
