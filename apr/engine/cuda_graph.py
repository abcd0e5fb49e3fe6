"""Owns fixed-shape decode: static input buffers, batch-size buckets, one CUDA graph per shape.

A decode step of a 6M model at batch 500 is ~30 layers' worth of small kernels: launched one by
one from Python it takes ~18 ms on an H200, replayed from a CUDA graph well under 2 ms. So, as
nano-vllm's model_runner does, decode runs over static buffers sized for the largest batch:

- a step of B sequences uses the smallest bucket >= B (1, 2, 4, 8, 16, 32, 48, ...); rows
  [B, bucket) are padding: position 0, their KV write puts back what is already there (a
  read-modify-write, see `ForwardBatch.is_real`), their logits are dropped;
- attention reads each row's whole KV row (`KVCache.row_len`, masked per row), so shapes depend
  only on (bucket, row_len): one graph each, captured the first time it is needed;
- inputs go host -> device in one copy; the graph's logits buffer is read before the next replay.

On CPU (tests) the same fixed-shape forward runs eagerly (`capture=False`), so the bucketing,
padding and masking are checked there; only capture and replay need CUDA.

    >>> bucket_sizes(100)
    [1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 100]
    >>> pick_bucket(17, bucket_sizes(100))
    32
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from apr.engine.kv_cache import KVCache
from apr.engine.llama import ForwardBatch, LlamaRunner


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Batch sizes that get a graph: powers of two to 8, then every 16, then `max_batch_size`."""
    small = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    return small + list(range(16, max_batch_size, 16)) + [max_batch_size]


def pick_bucket(num: int, sizes: list[int]) -> int:
    """The smallest bucket that holds `num` rows (`num` <= sizes[-1])."""
    return sizes[bisect.bisect_left(sizes, num)]


class StaticDecode:
    """Decode forwards over fixed-shape buffers: CUDA-graph replay, or eager (CPU, tests)."""

    def __init__(self, runner: LlamaRunner, kv: KVCache, max_batch_size: int, capture: bool) -> None:
        self.runner, self.kv, self.capture = runner, kv, capture
        self.sizes = bucket_sizes(max_batch_size)
        device = kv.k.device
        n = self.sizes[-1]
        # rows: input id, position, is-real flag; pinned on CUDA so the copy is one async transfer
        self._host = torch.zeros(3, n, dtype=torch.long, pin_memory=device.type == "cuda")  # (3, Bmax)
        self._inputs = torch.zeros(3, n, dtype=torch.long, device=device)  # (3, Bmax)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._weights_version = runner.weights_version
        self._pool = None
        self.num_captures = 0
        self.num_steps = 0

    def can_run(self, num: int) -> bool:
        """Whether a batch of `num` rows has a bucket that fits in the pool's rows now."""
        return num <= self.sizes[-1] and pick_bucket(num, self.sizes) <= self.kv.num_slots

    def forward(self, token_ids: np.ndarray, positions: np.ndarray) -> torch.Tensor:
        """Next-token logits (B, V) of B decoding rows [0, B): each feeds `token_ids[i]` at `positions[i]` ((B,) int64)."""
        num = len(token_ids)
        bucket = pick_bucket(num, self.sizes)
        self.num_steps += 1
        host = self._host
        host[:, num:bucket] = 0  # padding: token 0 at position 0, not real
        host[0, :num] = torch.from_numpy(token_ids)  # (B,)
        host[1, :num] = torch.from_numpy(positions)  # (B,)
        host[2, :num] = 1
        # async: the host buffer is rewritten only next step, after sampling has synchronised
        self._inputs[:, :bucket].copy_(host[:, :bucket], non_blocking=True)
        if not self.capture:
            return self._run(bucket)[:num]  # (B, V)
        if self.runner.weights_version != self._weights_version:  # parameters replaced: graphs hold the old
            self._graphs.clear()
            self._weights_version = self.runner.weights_version
        key = (bucket, self.kv.row_len)
        if key not in self._graphs:
            self._graphs[key] = self._capture(bucket)
        graph, logits = self._graphs[key]
        graph.replay()
        return logits[:num]  # (B, V): a view of the graph's buffer, valid until the next replay

    def _run(self, bucket: int) -> torch.Tensor:
        ids = self._inputs[0, :bucket, None]  # (b, 1)
        positions = self._inputs[1, :bucket, None]  # (b, 1)
        batch = ForwardBatch(ids, positions, 0, positions[:, 0] + 1, self.kv.row_len,
                             torch.zeros_like(positions[:, 0]), is_real=self._inputs[2, :bucket] > 0)
        return self.runner.forward(batch)  # (b, V)

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # warm up on a side stream (lazy kernel init must not happen during capture); the warm-up
        # writes the same KV the replay will: real rows their new entries, padding rows their own
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._run(bucket)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._run(bucket)  # (b, V)
        self._pool = graph.pool()  # every graph shares one memory pool: only one runs at a time
        self.num_captures += 1
        return graph, logits
